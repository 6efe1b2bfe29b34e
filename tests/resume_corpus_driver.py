"""Run `python -m goan_core resume FILE --tiny` in-process on many files, measuring each one's peak memory.

Used by tests/test_resume_hostile.py in a fresh subprocess (so the peaks are this work's alone):
    python resume_corpus_driver.py JOBS.json RESULTS.json
JOBS.json: [{"name", "file", "out"}, ...]. For each job: exit code, stdout, stderr, a traceback if anything
escaped the CLI, whether the MP4 exists, and the peak resident memory above the resident memory just before
it (Linux: the peak counter is reset per job through /proc/self/clear_refs; elsewhere only the whole run's
peak, from getrusage, is known). A last "calibration" entry allocates and touches 64 MiB the same way, so
the test can see that the measurement does see allocations.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import json
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from goan_core.cli import main  # noqa: E402

try:
    _trim = ctypes.CDLL("libc.so.6").malloc_trim  # give freed heap back, so each job's baseline is live memory
except (OSError, AttributeError):
    _trim = None


def _status() -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # Linux >= 4.0: VmHWM := VmRSS
        return True
    except OSError:
        return False


def measured(work) -> tuple[object, int | None]:
    """work()'s result and its peak resident bytes above the resident bytes before it (None where unknown)."""
    gc.collect()
    if _trim is not None:
        _trim(0)
    per_job = _reset_peak()
    before = _status()["VmRSS"] if per_job else 0
    result = work()
    return result, (_status()["VmHWM"] - before) if per_job else None


def run_cli(job: dict) -> dict:
    stdout, stderr = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["resume", job["file"], "--tiny", "--out", job["out"], "--autosave-every", "0"])
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:  # noqa: BLE001  (what the test must never see)
            code, escaped = None, traceback.format_exc()
    return {"name": job["name"], "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "traceback": escaped, "wrote_mp4": Path(job["out"]).exists()}


def main_(jobs_file: str, results_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text())
    baseline_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results = []
    for job in jobs:
        started = time.monotonic()
        result, peak = measured(lambda: run_cli(job))
        result["peak_bytes"], result["seconds"] = peak, time.monotonic() - started
        results.append(result)

    def calibration():
        block = np.ones(64 * 1024**2, dtype=np.uint8)  # touched: resident
        return int(block[::4096].sum())

    _, peak = measured(calibration)
    results.append({"name": "calibration", "peak_bytes": peak})
    Path(results_file).write_text(json.dumps({
        "results": results, "baseline_maxrss": baseline_maxrss,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main_(*sys.argv[1:3])
