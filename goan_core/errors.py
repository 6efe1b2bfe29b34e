"""The errors goan raises on purpose. Each carries one message that names the file and the fix."""

from __future__ import annotations

from pathlib import Path


class GoanError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""


class InputError(GoanError):
    """A bad argument or parameter value."""


class ModelFolderError(GoanError):
    """A models folder or model file that is missing pieces or does not hold what it should."""


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


def some_names(names: list[str], limit: int = 8) -> str:
    """A short, readable list of names for a message: the first `limit`, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
