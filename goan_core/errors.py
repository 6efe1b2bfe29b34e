"""The errors goan raises on purpose. Each carries one message that names the file and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("goan")


class GoanError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""


class InputError(GoanError):
    """A bad argument or parameter value."""


class ModelFolderError(GoanError):
    """A models folder or model file that is missing pieces or does not hold what it should."""


class NonFiniteError(GoanError):
    """Sampling produced NaN or Inf values; the step that did was not kept."""


class ResumeFileError(GoanError):
    """A `.goan_resume` file that cannot be read, validated or written."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}")


class NewerFormatError(ResumeFileError):
    """The file was written by a newer goan than this one."""


class DiskSpaceError(ResumeFileError):
    """Not enough free space to write a file; nothing was changed."""


def add_note(error: BaseException, note: str) -> None:
    """`error.add_note(note)` on Python 3.11+; on 3.10 the same `__notes__` list, and the log.

    Python 3.10 has no `BaseException.add_note` and its tracebacks do not show `__notes__`, so the
    note is also logged there. goan's own reporting reads `__notes__` on every version.
    """
    adder = getattr(error, "add_note", None)
    if callable(adder):
        adder(note)
        return
    try:
        notes = getattr(error, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            error.__notes__ = notes
        notes.append(note)
    except (AttributeError, TypeError):  # an exception type that takes no attributes: the log still has it
        pass
    log.warning("%s", note)


def notes_of(error: BaseException) -> list[str]:
    """The notes added to `error` (see `add_note`), as strings."""
    notes = getattr(error, "__notes__", None)
    return [str(note) for note in notes] if isinstance(notes, list) else []


def some_names(names: list[str], limit: int = 8) -> str:
    """A short, readable list of names for a message: the first `limit`, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
