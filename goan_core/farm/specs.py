"""The jobs of a farm run: a JSON-lines file, one job per line, each line checked on its own.

A line is either a new job, with the settings `generate` takes under their params.json names
(`{"image": "in.png", "prompt": "...", "seconds": 5, ...}`), or a job to continue
(`{"resume": "file.goan_resume", "additional_seconds": 2}`). Either may name itself with `"id"`
(letters, digits, `.`, `_`, `-`); otherwise it is `job<line number>`. Relative paths are relative to
the JOBS file. A bad line becomes a `BadJob` carrying its message, so it fails alone and the others run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import InputError
from ..params import LIMITS, JobParams
from ..resumefile.format import SAFE_NAME

PARAM_FIELDS = tuple(f.name for f in fields(JobParams))
GENERATE_FIELDS = ("id", "image", *PARAM_FIELDS)
RESUME_FIELDS = ("id", "resume", "additional_seconds", "crf")


@dataclass(frozen=True)
class FarmJob:
    """One job of the farm: new from `image` + `params`, or continued from the resume file `resume`."""

    id: str
    line: int
    image: Path | None = None
    params: dict = field(default_factory=dict)  # JobParams fields, validated
    resume: Path | None = None
    additional_seconds: float = 0.0
    crf: int | None = None  # resume jobs: the file's own crf unless given

    @property
    def input_path(self) -> Path:
        return self.image if self.image is not None else self.resume

    def to_json(self) -> dict:
        return {"id": self.id, "line": self.line, "image": None if self.image is None else str(self.image),
                "params": self.params, "resume": None if self.resume is None else str(self.resume),
                "additional_seconds": self.additional_seconds, "crf": self.crf}

    @classmethod
    def from_json(cls, data: dict) -> "FarmJob":
        return cls(data["id"], data["line"], None if data["image"] is None else Path(data["image"]), data["params"],
                   None if data["resume"] is None else Path(data["resume"]), data["additional_seconds"], data["crf"])


@dataclass(frozen=True)
class BadJob:
    """A line that cannot become a job, and why."""

    id: str
    line: int
    message: str


def read_jobs(path: str | Path) -> list[FarmJob | BadJob]:
    """Every non-blank line of the JOBS file as a FarmJob, or a BadJob saying what is wrong with it.

    Raises InputError only when the file itself cannot be used (missing, unreadable, no job in it).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such jobs file (JSON lines, one job per line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: the jobs file cannot be read ({error})") from None
    jobs: list[FarmJob | BadJob] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        job = _parse_line(line, number, path)
        if job.id in seen:
            job = BadJob(f"{job.id}.line{number}", number,
                         f"{path}:{number}: the id {job.id!r} is already used on line {seen[job.id]}; give each "
                         "job its own id")
        else:
            seen[job.id] = number
        jobs.append(job)
    if not jobs:
        raise InputError(f"{path}: no job in it (one JSON object per line, e.g. "
                         '{"image": "in.png", "prompt": "a cat dances", "seconds": 5})')
    return jobs


def _parse_line(line: str, number: int, path: Path) -> FarmJob | BadJob:
    default_id = f"job{number:03d}"
    where = f"{path}:{number}"
    try:
        data = json.loads(line)
    except ValueError as error:
        return BadJob(default_id, number, f"{where}: not valid JSON ({error})")
    if not isinstance(data, dict):
        return BadJob(default_id, number, f"{where}: a job must be a JSON object, got {type(data).__name__}")
    job_id = data.get("id", default_id)
    if not isinstance(job_id, str) or not SAFE_NAME.fullmatch(job_id):
        return BadJob(default_id, number, f"{where}: id {job_id!r} cannot name a folder: use letters, digits, "
                                          "'.', '_' and '-' (at most 128, not starting with '.')")
    try:
        job = _job_from(data, job_id, number, path.parent)
    except InputError as error:
        return BadJob(job_id, number, f"{where}: {error}")
    return job


def _job_from(data: dict, job_id: str, number: int, base: Path) -> FarmJob:
    if ("image" in data) == ("resume" in data):
        raise InputError('a job needs exactly one of "image" (a new job) or "resume" (a .goan_resume file '
                         "to continue)")
    known = GENERATE_FIELDS if "image" in data else RESUME_FIELDS
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; this kind of job takes {', '.join(known)}")
    if "image" in data:
        params = {key: value for key, value in data.items() if key in PARAM_FIELDS}
        JobParams.from_dict(params)  # every value checked now, with the CLI's messages
        return FarmJob(job_id, number, image=_input_path(data["image"], "image", base), params=params)
    extra = data.get("additional_seconds", 0.0)
    if isinstance(extra, bool) or not isinstance(extra, (int, float)) or not 0 <= extra <= LIMITS["seconds"][1]:
        raise InputError(f"additional_seconds must be a number from 0 to {LIMITS['seconds'][1]:g}, got {extra!r}")
    crf = data.get("crf")
    low, high = LIMITS["crf"]
    if crf is not None and (isinstance(crf, bool) or not isinstance(crf, int) or not low <= crf <= high):
        raise InputError(f"crf must be a whole number from {low} to {high}, got {crf!r}")
    return FarmJob(job_id, number, resume=_input_path(data["resume"], "resume", base),
                   additional_seconds=float(extra), crf=crf)


def _input_path(value, name: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{name} must be a file path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
