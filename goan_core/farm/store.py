"""The farm's store: one folder DIR that every worker can read and write (a shared file system path).

    DIR/jobs/<id>/job.json              the job as read from the JOBS file (written when first queued)
    DIR/jobs/<id>/input/<name>          its input picture or resume file, copied in: workers read only DIR
    DIR/jobs/<id>/state.json            queued / running / paused / done / failed, progress and attempts
    DIR/jobs/<id>/goan_resume/<job>/    autosaves, pause and fail-safe files (resumefile.RetentionFolder)
    DIR/jobs/<id>/output/               <id>.mp4 and <id>.goan_resume, published once by one atomic rename

Every file is written crash-safely (temp file, fsync, rename), so a reader (another worker, `farm
status`) sees the previous version or the new one. The output folder is filled under a temporary
name and renamed into place: the first rename wins, a second attempt can never replace it, and a job
whose output exists is done.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..resumefile import RETENTION_DIR, atomic_write_bytes, newest_complete
from .specs import FarmJob

JOBS_DIR = "jobs"
INPUT_DIR = "input"
OUTPUT_DIR = "output"


class Store:
    """The store at `root`: a folder per job under `jobs/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def job(self, job_id: str) -> "JobFolder":
        return JobFolder(self.root / JOBS_DIR / job_id, job_id)

    def jobs(self) -> list["JobFolder"]:
        """Every job folder of the store, by id."""
        folder = self.root / JOBS_DIR
        if not folder.is_dir():
            return []
        return [self.job(entry.name) for entry in sorted(folder.iterdir()) if entry.is_dir()
                and not entry.name.startswith(".")]


class JobFolder:
    """`DIR/jobs/<id>/`: one job's spec, input, state, resume files and output."""

    def __init__(self, folder: Path, job_id: str):
        self.folder = folder
        self.id = job_id

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def spec_file(self) -> Path:
        return self.folder / "job.json"

    @property
    def output(self) -> Path:
        return self.folder / OUTPUT_DIR

    @property
    def video(self) -> Path:
        return self.output / f"{self.id}.mp4"

    @property
    def final_resume(self) -> Path:
        return self.output / f"{self.id}.goan_resume"

    @property
    def done(self) -> bool:
        return self.output.is_dir()

    # -- the job and its input ----------------------------------------------------------------------------

    def enqueue(self, job: FarmJob) -> FarmJob:
        """Put the job and a copy of its input into the store (once), and return the job as workers see it:
        its input is the copy. A store that already holds a different job under this id is refused."""
        stored = self.spec()
        if stored is not None:
            if _without_line(stored.get("source")) != _without_line(job.to_json()):
                raise InputError(f"{self.folder}: the store already holds another job with the id {self.id!r} (from "
                                 f"{stored['source'].get('image') or stored['source'].get('resume')}); give this "
                                 "one another id or use another store")
            return FarmJob.from_json(stored["job"])
        source = job.input_path
        if not source.is_file():
            raise InputError(f"{source}: no such {'image' if job.image is not None else 'resume'} file")
        (self.folder / INPUT_DIR).mkdir(parents=True, exist_ok=True)
        copy = self.folder / INPUT_DIR / source.name
        temp = copy.with_name(f".{copy.name}.{secrets.token_hex(4)}.partial")
        try:
            shutil.copyfile(source, temp)
            _fsync(temp)
            os.replace(temp, copy)
        except OSError as error:
            temp.unlink(missing_ok=True)
            raise InputError(f"{source}: could not be copied into the store {self.folder} ({error})") from None
        worker_job = FarmJob.from_json({**job.to_json(), **({"image": str(copy)} if job.image is not None
                                                            else {"resume": str(copy)})})
        _write_json(self.spec_file, {"source": job.to_json(), "job": worker_job.to_json()})
        return worker_job

    def spec(self) -> dict | None:
        return _read_json(self.spec_file)

    # -- state ---------------------------------------------------------------------------------------------

    def state(self) -> dict | None:
        """The newest state written, or None before the job was queued."""
        return _read_json(self.state_file)

    def write_state(self, state: dict) -> None:
        _write_json(self.state_file, {**state, "id": self.id, "updated_at": time.time()})

    # -- resume files --------------------------------------------------------------------------------------

    @property
    def resume_root(self) -> Path:
        """The `output_dir` of the job's runs: files go to `<this>/goan_resume/<goan job id>/`."""
        return self.folder

    def newest_resume_file(self) -> Path | None:
        """The newest resume file of this job that reads and validates completely (any run, any kind)."""
        folder = self.folder / RETENTION_DIR
        if not folder.is_dir():
            return None
        found = [newest_complete(sub) for sub in folder.iterdir() if sub.is_dir()]
        found = [path for path in found if path is not None]
        return max(found, key=lambda path: path.stat().st_mtime_ns, default=None)

    # -- output --------------------------------------------------------------------------------------------

    def publish(self, write_into: Callable[[Path], None]) -> bool:
        """Make the output folder: `write_into(temp)` writes the files, then one rename publishes them.

        Returns False (and leaves the existing output untouched) when an output was already published.
        """
        if self.done:
            return False
        temp = self.folder / f".{OUTPUT_DIR}.{secrets.token_hex(4)}.partial"
        temp.mkdir()
        try:
            write_into(temp)
            for path in temp.iterdir():
                _fsync(path)
            _fsync(temp)
            os.rename(temp, self.output)  # a folder is renamed only onto nothing (or an empty folder)
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            if self.done:  # another attempt published first: its output stays
                return False
            raise
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        _fsync(self.folder)
        return True


def _without_line(job: dict | None) -> dict | None:
    """A job's identity: what it does, not where in the JOBS file it stands."""
    return None if job is None else {key: value for key, value in job.items() if key != "line"}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: the farm's file cannot be read ({error}); was the store changed by hand?") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a farm state (expected a JSON object)")
    return data
