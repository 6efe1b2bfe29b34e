"""Resume files in ComfyUI's input folder: listing them, resolving a name safely, naming uploads,
and validating each version of a file once (`VALIDATED`)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path

from ..goan_core.resumefile import (RESUME_SUFFIX, RETENTION_DIR, ResumeData, ResumeSummary, read_resume_file,
                                   read_resume_summary, summary_of)
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


# -- validate each version of a file once ------------------------------------------------------------

SAMPLE_BYTES = 64 * 1024  # hashed from each end of a file: the end holds the zip directory with every CRC-32
MAX_VALIDATED_FILES = 8
MAX_VALIDATED_BYTES = 2 * 1024**3  # by file size; the newest file is kept whatever its size


@dataclasses.dataclass(frozen=True)
class FileVersion:
    """What identifies one version of a file without reading it all.

    Any write changes ctime (which no program can set back), and the sample hash covers the zip
    directory, so a file changed in place, replaced, or given back its old size and mtime is a new
    version. Only an unchanged file compares equal.
    """

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sample: str

    def same_content_as(self, other: "FileVersion") -> bool:
        """The same file (inode), unchanged, perhaps renamed (a rename changes the path and ctime only)."""
        return (self.device, self.inode, self.size, self.mtime_ns, self.sample) == (
            other.device, other.inode, other.size, other.mtime_ns, other.sample)


def file_version(path) -> FileVersion:
    """The version of the file at `path` (stat plus a hash of its first and last 64 KiB); OSError if unreadable."""
    real = os.path.realpath(path)
    with open(real, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest = hashlib.blake2b(fh.read(SAMPLE_BYTES), digest_size=16)
        if stat.st_size > SAMPLE_BYTES:
            fh.seek(max(SAMPLE_BYTES, stat.st_size - SAMPLE_BYTES))
            digest.update(fh.read(SAMPLE_BYTES))
    return FileVersion(real, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
                       digest.hexdigest())


def _version_or_none(path) -> FileVersion | None:
    """The file's version, or None when it cannot be read (the reader then says why)."""
    try:
        return file_version(path)
    except OSError:
        return None


def _private_copy(data: ResumeData) -> ResumeData:
    """A copy a caller may change without changing the cached one (tensors are never changed in place)."""
    return dataclasses.replace(data, state=data.state.snapshot(), source_image=data.source_image.copy(),
                               workflow=copy.deepcopy(data.workflow), job_info=copy.deepcopy(data.job_info),
                               notes=list(data.notes))


class ValidatedFiles:
    """The last few resume files that passed `read_resume_file`'s full validation, by file version.

    Upload and Load Resume read through `read`, so a dropped file is read and hashed once; a file
    that changed in any way is a new version and is validated again. `/goan/resume_info` asks for
    a `summary`: the cached result when there is one, else only the file's small members. Only
    files that passed are kept, and at most `max_files` of them (`max_bytes` by file size, though
    the newest is kept whatever its size). Thread-safe: the routes read in executor threads,
    ComfyUI's nodes in its prompt thread, and readers of one path validate it one at a time, so
    two first reads of a file validate it once.
    """

    def __init__(self, max_files: int = MAX_VALIDATED_FILES, max_bytes: int = MAX_VALIDATED_BYTES):
        self.max_files, self.max_bytes = max_files, max_bytes
        self._entries: OrderedDict[str, tuple[FileVersion, ResumeData]] = OrderedDict()  # by path, oldest first
        self._busy: dict[str, list] = {}  # path -> [lock, readers]; only while some reader holds the path
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def validate(self, path) -> tuple[ResumeData, FileVersion | None]:
        """Fully validate `path` (no cache) and say which version passed: None if it changed meanwhile."""
        before = _version_or_none(path)
        data = read_resume_file(path)  # raises ResumeFileError for a missing or unreadable file too
        after = _version_or_none(path)
        return data, (before if before is not None and before == after else None)

    def read(self, path) -> ResumeData:
        """`read_resume_file(path)`, validated once per version of the file; the caller's own copy."""
        version = _version_or_none(path)
        with self._one_reader(version.path if version else os.path.realpath(path)):
            cached = self._cached(version)  # a reader that held the path before may have just validated it
            if cached is not None:
                return _private_copy(cached)
            data, validated = self.validate(path)
            if validated is not None:
                self._store(validated, data)
            return _private_copy(data)

    def summary(self, path) -> ResumeSummary:
        """What `path` says about its job: from the validated file when this version is cached, else
        from its small members only (`read_resume_summary`, which never reads the tensors)."""
        cached = self._cached(_version_or_none(path))
        if cached is not None:
            return summary_of(cached, validated=True)
        return read_resume_summary(path)

    def _cached(self, version: FileVersion | None) -> ResumeData | None:
        if version is None:
            return None
        with self._lock:
            entry = self._entries.get(version.path)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(version.path)
            return entry[1]

    @contextlib.contextmanager
    def _one_reader(self, key: str):
        """Held while `key` is looked up and validated: a second reader of the path waits for the first."""
        with self._lock:
            busy = self._busy.setdefault(key, [threading.Lock(), 0])
            busy[1] += 1
        try:
            with busy[0]:
                yield
        finally:
            with self._lock:
                busy[1] -= 1
                if busy[1] == 0:
                    del self._busy[key]

    def remember_moved(self, path, data: ResumeData, validated: FileVersion | None) -> bool:
        """Keep `data`, validated as `validated`, for the file now at `path` if it is that same file renamed."""
        if validated is None:
            return False
        try:
            version = file_version(path)
        except OSError:
            return False
        if not version.same_content_as(validated):
            return False
        self._store(version, data)
        return True

    def _store(self, version: FileVersion, data: ResumeData) -> None:
        with self._lock:
            self._entries.pop(version.path, None)  # one version per path: an older one is gone
            self._entries[version.path] = (version, data)
            while len(self._entries) > 1 and (
                    len(self._entries) > self.max_files
                    or sum(v.size for v, _ in self._entries.values()) > self.max_bytes):
                self._entries.popitem(last=False)


VALIDATED = ValidatedFiles()
