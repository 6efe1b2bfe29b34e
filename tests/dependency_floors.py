"""Print pip constraints that pin every `package>=version` of requirements.txt to that version.

`make test` installs a second environment under these constraints and runs the suite there too,
so the floors requirements.txt declares are versions goan is tested on, not hopes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
FLOOR = re.compile(r"^([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def floors(text: str) -> dict[str, str]:
    """{package: lowest version} for each `package>=version` line (comments and other lines ignored)."""
    found = {}
    for line in text.splitlines():
        match = FLOOR.match(line.split("#", 1)[0].strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


if __name__ == "__main__":
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in floors(REQUIREMENTS.read_text()).items()))
