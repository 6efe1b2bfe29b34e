"""Rolling retention: the newest K resume files of one job in `<output>/goan_resume/<job_id>/`.

Autosaves may be hidden files (`hide_autosaves`: a leading "."): inside ComfyUI the output folder is
scanned into its asset catalogue (current ComfyUI does so after every prompt; it skips hidden names),
and every rotated autosave would stay there as a "missing" asset, hashed too with
--enable-asset-hashing. They count towards `keep_last` like any other file of the job.
"""

from __future__ import annotations

import logging
import re
import stat
import time
from pathlib import Path

from ..errors import InputError, ResumeFileError
from ..sampling import JobState
from ..vocabulary import FileKind
from .atomic import PARTIAL_SUFFIX, is_partial, write_error
from .format import RESUME_SUFFIX, SAFE_NAME
from .reader import read_resume_file
from .writer import write_resume_file

RETENTION_DIR = "goan_resume"
log = logging.getLogger("goan")

HIDDEN = "."  # the prefix of a hidden file's name (a job id never starts with it)
_RETAINED = re.compile(r"\.?(?P<job>[^.].*)_(?P<seq>\d{6,})_s(?P<section>\d+)_t(?P<step>\d+)" + re.escape(RESUME_SUFFIX))
# the temp file atomic.py writes a retained file through: `.<retained name>.<8 hex>.partial`
_PARTIAL = re.compile(r"\." + _RETAINED.pattern + r"\.[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX))
STALE_PARTIAL_SECONDS = 600.0  # a live writer touches its temp file far more often than this


def _sequence(path: Path) -> int | None:
    match = _RETAINED.fullmatch(path.name)
    return int(match["seq"]) if match else None


def retained_files(folder: str | Path) -> list[Path]:
    """Complete resume files of a retention folder (hidden autosaves included), oldest first (by sequence number)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _sequence(p) is not None]
    return sorted(found, key=_sequence)


def sweep_stale_partials(root: str | Path, older_than: float = STALE_PARTIAL_SECONDS) -> list[str]:
    """Delete temp files that writers killed mid-save left in the job folders under `root`; the warnings.

    `root` is `<output>/goan_resume`. Only files named as goan names its temp files, for the job
    whose folder holds them, regular files (no links) and untouched for `older_than` seconds are
    deleted, so the file of a writer that is still writing is never touched. Nothing here raises:
    what cannot be listed or deleted is a warning.
    """
    warnings: list[str] = []
    now = time.time()
    try:
        folders = [entry for entry in Path(root).iterdir() if entry.is_dir() and not entry.is_symlink()]
    except FileNotFoundError:
        return warnings
    except OSError as exc:
        return [f"{root}: could not be listed to delete leftover temp files ({exc.strerror or exc})"]
    for folder in folders:
        try:
            names = [entry.name for entry in folder.iterdir()]
        except OSError as exc:
            warnings.append(f"{folder}: could not be listed to delete leftover temp files ({exc.strerror or exc})")
            continue
        for name in names:
            match = _PARTIAL.fullmatch(name)
            if match is None or match["job"] != folder.name:
                continue
            path = folder / name
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= older_than:
                    path.unlink()
                    log.info("goan: deleted %s, a temp file left by an interrupted save", path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                warnings.append(f"{path}: a leftover temp file could not be deleted ({exc.strerror or exc})")
    for warning in warnings:
        log.warning("goan: %s", warning)
    return warnings


def newest_complete(folder: str | Path) -> Path | None:
    """The newest file of a retention folder that reads and validates completely, or None.

    Files that fail validation (damaged, cut short by an older crash) are passed over on purpose:
    finding the newest good one is what this is for. Partial temp files are never candidates.
    """
    for candidate in reversed(retained_files(folder)):
        try:
            read_resume_file(candidate)
        except ResumeFileError:
            continue
        return candidate
    return None


class RetentionFolder:
    """`<output>/goan_resume/<job_id>/`, keeping the newest `keep_last` resume files of one job.

    Files are named `<job_id>_<seq>_s<section>_t<step>.goan_resume` with a sequence number that
    grows with every save, so name order is save order. Older files are deleted only after the new
    one is durable on disk. One writer per job folder is assumed (a job runs in one place).

    Cleaning up (old files, leftover temp files) never fails a save: a file that cannot be deleted
    (locked, antivirus, permissions) is logged as a warning and listed in `cleanup_warnings`.
    Creating one also sweeps stale temp files out of every job folder beside it (a job killed
    during its first save and never resumed leaves one; see `sweep_stale_partials`).
    With `hide_autosaves` autosaves are hidden files, `.<job_id>_<seq>_...` (see the module's docstring).
    """

    def __init__(self, output_dir: str | Path, job_id: str, keep_last: int = 3, *, hide_autosaves: bool = False):
        if not isinstance(job_id, str) or not SAFE_NAME.fullmatch(job_id):
            raise InputError(f"job id {job_id!r} cannot name a folder: use letters, digits, '.', '_' "
                             "and '-' (at most 128, not starting with '.')")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise InputError(f"keep_last must be a whole number of at least 1, got {keep_last!r}")
        self.job_id = job_id
        self.keep_last = keep_last
        self.hide_autosaves = hide_autosaves
        self.folder = Path(output_dir) / RETENTION_DIR / job_id
        self.cleanup_warnings: list[str] = sweep_stale_partials(self.folder.parent)

    def files(self) -> list[Path]:
        return retained_files(self.folder)

    def next_path(self, section: int, step: int, hidden: bool = False) -> Path:
        existing = [_sequence(p) for p in self.files()]
        seq = max(existing, default=0) + 1
        prefix = HIDDEN if hidden else ""
        return self.folder / f"{prefix}{self.job_id}_{seq:06d}_s{section:04d}_t{step:03d}{RESUME_SUFFIX}"

    def save(self, state: JobState, *, source_image, workflow=None, include_embeddings: bool = True,
             kind: FileKind | str = FileKind.AUTOSAVE, run: dict | None = None) -> Path:
        """Write `state` as the newest file, then delete the oldest beyond `keep_last`."""
        if state.job_id != self.job_id:
            raise InputError(f"state of job {state.job_id!r} cannot be saved in the folder of job {self.job_id!r}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.folder, exc) from exc
        self._remove_stale_partials()
        hidden = self.hide_autosaves and FileKind(kind) is FileKind.AUTOSAVE
        path = write_resume_file(state, self.next_path(state.section, state.step_in_section, hidden),
                                 source_image=source_image, workflow=workflow,
                                 include_embeddings=include_embeddings, kind=kind, run=run)
        self._prune()
        return path

    def newest_complete(self) -> Path | None:
        return newest_complete(self.folder)

    def _prune(self) -> None:
        try:
            old_files = self.files()[:-self.keep_last]
        except OSError as exc:
            self._warn(f"{self.folder}: could not be listed to delete old files ({exc.strerror or exc})")
            return
        for old in old_files:
            self._remove(old)

    def _remove_stale_partials(self) -> None:
        """Temp files left by a writer that was killed mid-save (never complete, never read)."""
        for leftover in self._cleanup_files():
            match = _PARTIAL.fullmatch(leftover.name)
            if match is not None and match["job"] == self.job_id and is_partial(leftover):
                self._remove(leftover)

    def _cleanup_files(self) -> list[Path]:
        try:
            return list(self.folder.iterdir())
        except OSError as exc:
            self._warn(f"{self.folder}: could not be listed for cleanup ({exc.strerror or exc})")
            return []

    def _warn(self, message: str) -> None:
        self.cleanup_warnings.append(message)
        log.warning("goan: %s", message)

    def _remove(self, path: Path) -> None:
        """Delete `path`; a failure is a warning (the save it follows or precedes is unaffected)."""
        try:
            path.unlink()
        except FileNotFoundError:
            return  # already gone: the state we wanted
        except OSError as exc:
            self._warn(f"{path}: could not be deleted ({exc.strerror or exc}); the resume files were saved, "
                       "delete this one by hand")
