"""`python -m goan_core`: parse, run one command, and turn every problem the user can fix into one line.

Every such problem ends with one line on stderr (plus the lines of its notes, such as where a fail-safe
file went) and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

from ..errors import GoanError, notes_of
from .parser import EXIT_USAGE, build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "farm":  # its own module: `farm run` imports Ray, `farm status` needs no model
            from .farm import farm

            return farm(args)
        from .commands import dispatch  # heavy imports (torch, diffusers) only once the arguments are fine

        return dispatch(args)
    except GoanError as error:
        print(f"goan: error: {error}", file=sys.stderr)
        for note in notes_of(error):  # e.g. where the fail-safe file of an interrupted run went
            print(note, file=sys.stderr)
        return EXIT_USAGE
