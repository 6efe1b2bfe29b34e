"""Resume files in ComfyUI's input folder: listing them, resolving a name safely, naming uploads."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from ..goan_core.resumefile import RESUME_SUFFIX, RETENTION_DIR
from ..goan_core.errors import InputError
from .adapter import HOST

UPLOAD_SUBFOLDER = RETENTION_DIR  # <input>/goan_resume/
MAX_NAME = 100


def list_input_resume_files() -> list[str]:
    """`NAME.goan_resume` at the top of the input folder and `goan_resume/NAME.goan_resume` below it."""
    root = HOST.directory("input")
    found = []
    for folder, prefix in ((root, ""), (root / UPLOAD_SUBFOLDER, UPLOAD_SUBFOLDER + "/")):
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.name.endswith(RESUME_SUFFIX) and not path.name.startswith(".") and path.is_file():
                found.append(prefix + path.name)
    return found


def resolve_input_name(name) -> Path:
    """The file `name` names inside the input folder; InputError for anything else.

    Accepted: "NAME.goan_resume" or "goan_resume/NAME.goan_resume" (also with ComfyUI's " [input]"
    annotation). Absolute paths, '..', backslashes, other folders and other suffixes are refused,
    and the resolved path (symlinks followed) must stay inside the input folder.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError("no resume file chosen: upload a .goan_resume file or pick one from the list")
    name = name.strip()
    if name.endswith(" [input]"):
        name = name[: -len(" [input]")]
    parts = name.split("/")
    unsafe = (os.path.isabs(name) or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts)
              or len(parts) > 2 or (len(parts) == 2 and parts[0] != UPLOAD_SUBFOLDER)
              or parts[-1].startswith("."))
    if unsafe:
        raise InputError(f"{name[:120]!r} is not a resume file name in the input folder "
                         f"(use NAME{RESUME_SUFFIX} or {UPLOAD_SUBFOLDER}/NAME{RESUME_SUFFIX})")
    if not name.endswith(RESUME_SUFFIX):
        raise InputError(f"{name[:120]!r} is not a {RESUME_SUFFIX} file")
    root = Path(os.path.realpath(HOST.directory("input")))
    target = Path(os.path.realpath(root / name))
    if root not in target.parents:
        raise InputError(f"{name[:120]!r} points outside the input folder")
    return target


def sanitise_upload_name(filename) -> str:
    """A safe stem for an uploaded file: no folders, only letters, digits, '.', '_' and '-'."""
    name = str(filename or "")
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").split("/")[-1]
    if name.lower().endswith(RESUME_SUFFIX):
        name = name[: -len(RESUME_SUFFIX)]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    name = re.sub(r"\.{2,}", ".", name)[:MAX_NAME].strip("._-")
    return name or "upload"


def reserve_upload_path(stem: str) -> Path:
    """A new, empty, exclusively created <input>/goan_resume/<stem>[_N].goan_resume."""
    folder = HOST.directory("input") / UPLOAD_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(0, 10_000):
        candidate = folder / f"{stem}{'' if n == 0 else f'_{n}'}{RESUME_SUFFIX}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise InputError(f"too many uploads named {stem}{RESUME_SUFFIX}; delete some")
