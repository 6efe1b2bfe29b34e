"""Crash-safe file writing: a reader sees the previous file or the complete new one, never half of one.

The data goes to a temporary file in the same folder (named `.<name>.<random>.partial`, so
nothing that looks for `*.goan_resume` files ever mistakes it for a finished file), is flushed and
fsynced, then `os.replace`d over the target, and the folder itself is fsynced so the rename is
durable too. On any failure the temporary file is removed and earlier files are left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import DiskSpaceError, ResumeFileError

PARTIAL_SUFFIX = ".partial"
# Room kept free beyond the file itself, so that saving a resume file never fills a disk to the brim.
FREE_SPACE_MARGIN = 16 * 1024 * 1024
_WRITE_CHUNK = 64 * 1024 * 1024  # os.write is capped at 2 GiB per call (and at int32 on Windows)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def format_size(num_bytes: int) -> str:
    """`1536` -> `1.5 KB`: sizes in messages people read."""
    if num_bytes < 1024:
        return f"{num_bytes} bytes"
    size = num_bytes / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def check_free_space(folder: str | Path, needed_bytes: int, path_for_message: str | Path) -> None:
    """Raise DiskSpaceError, before anything is written, if `folder` cannot take `needed_bytes`."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
    except FileNotFoundError as exc:
        raise ResumeFileError(path_for_message, f"cannot save it: the folder {folder} does not exist") from exc
    except OSError as exc:
        raise ResumeFileError(path_for_message, f"cannot save it: the folder {folder} cannot be read "
                                                f"({exc.strerror})") from exc
    if free < needed_bytes + FREE_SPACE_MARGIN:
        raise DiskSpaceError(
            path_for_message,
            f"not enough free disk space to save it: it needs {format_size(needed_bytes)} "
            f"(plus {format_size(FREE_SPACE_MARGIN)} kept free) but {folder} has only "
            f"{format_size(free)} free. Free some space or choose another output folder; "
            "nothing was written and earlier files are untouched.",
        )


class _FdWriter:
    """A minimal seekable binary file over a raw descriptor, written with `os.write` in a loop.

    zipfile needs write/tell/seek/flush; going through `os.write` (rather than a buffered file)
    means every byte is handed to the OS before fsync, and a failing write surfaces at once.
    """

    def __init__(self, fd: int):
        self._fd = fd
        self._pos = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:done + _WRITE_CHUNK])
        self._pos += done
        return done

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = os.lseek(self._fd, offset, whence)
        return self._pos

    def seekable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing is buffered here; durability comes from the fsync in `atomic_writer`."""

    def sync(self) -> None:
        """fsync what was written so far (lets a writer overlap the disk flush with other work)."""
        os.fsync(self._fd)


def write_error(path: Path, exc: OSError) -> ResumeFileError:
    """The one clear error for an OS failure while writing `path`."""
    if exc.errno in _DISK_FULL:
        return DiskSpaceError(path, "the disk became full while saving it; the unfinished file was "
                                    "removed and earlier files are untouched. Free some space and save again.")
    if exc.errno in _NO_PERMISSION:
        return ResumeFileError(path, f"cannot save it: no permission to write in {path.parent} "
                                     f"({exc.strerror}). Choose a writable output folder.")
    return ResumeFileError(path, f"cannot save it: {exc.strerror or exc}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); Windows cannot open folders and needs no such step."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_partial(path: str | Path) -> bool:
    return Path(path).name.endswith(PARTIAL_SUFFIX)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[_FdWriter]:
    """Yield a binary, seekable file; on a clean exit it atomically becomes `path`.

    The streaming variant: write as much as you like, nothing is visible under `path` until the
    data is on disk. OSErrors (disk full, permission) become DiskSpaceError/ResumeFileError.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(temp, flags, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from exc
    replaced = False
    try:
        yield _FdWriter(fd)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temp, path)
        replaced = True
        _fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if fd >= 0:
            os.close(fd)
        if not replaced:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` crash-safely (see `atomic_writer`), checking free space first."""
    path = Path(path)
    check_free_space(path.parent, len(data), path)
    with atomic_writer(path) as fh:
        fh.write(data)
    return path
