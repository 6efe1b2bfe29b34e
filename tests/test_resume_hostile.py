"""Every hostile or broken file gives its one clear error, and nothing in it is ever run or extracted."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from goan_core.errors import ResumeFileError
from goan_core.resumefile import inspect_resume_file, read_resume_file

from hostile_corpus import CASES, MARKER, legacy_members, malicious_pt, write_legacy, write_valid


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_file_gives_one_clear_error(case, tmp_path):
    path = case.build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ResumeFileError) as caught:
        read_resume_file(path)
    error = caught.value
    assert type(error) is case.error
    assert case.phrase in str(error), str(error)
    assert error.path == str(path)
    assert str(error).startswith(str(path) + ": ")
    assert "\n" not in str(error) and len(str(error)) < 700
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "reading must not write or extract anything"
    assert not (tmp_path / MARKER).exists(), "a hostile pickle ran"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inspect_fails_cleanly_or_reports(case, tmp_path):
    """inspect checks less than a full read, but never fails with anything but ResumeFileError."""
    path = case.build(tmp_path)
    try:
        summary = inspect_resume_file(path)
    except ResumeFileError:
        return
    assert {"job_info", "params", "members"} <= set(summary)
    assert not (tmp_path / MARKER).exists()


def test_the_malicious_pickle_is_real(tmp_path):
    """Control: the corpus' payload does create the marker when unpickled unsafely, so the tests above
    that see no marker prove the reader refused it, not that the payload was harmless."""
    marker = tmp_path / "control_marker"
    torch.load(io.BytesIO(malicious_pt(marker)), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("base", ["v1_mid_section", "v1_f1_cfg", "legacy"])
def test_random_damage_gives_only_resume_file_errors(base, tmp_path):
    """Byte changes anywhere (and in the zip structure especially) and cuts: the reader and inspect
    either succeed or raise ResumeFileError, never anything else."""
    if base == "legacy":
        valid = write_legacy(tmp_path / "valid.goan_resume", legacy_members()).read_bytes()
    else:
        kw = {"step": 2, "outputs": 1} if base == "v1_mid_section" else {"mode": "f1", "section": 0, "cfg": 3.0}
        valid = write_valid(tmp_path / "valid.goan_resume", **kw).read_bytes()
    rng = random.Random(base)
    caught = 0
    for trial in range(200):
        raw = bytearray(valid)
        kind = trial % 4
        if kind == 0:
            raw = raw[:rng.randrange(len(raw))]
        for _ in range(rng.randint(1, 4) if kind else 0):
            region = {1: (len(raw) - 300, len(raw)), 2: (0, 400), 3: (0, len(raw))}[kind]
            raw[rng.randrange(max(region[0], 0), region[1])] = rng.randrange(256)
        path = tmp_path / "damaged.goan_resume"
        path.write_bytes(bytes(raw))
        for read in (read_resume_file, inspect_resume_file):
            try:
                read(path)
            except ResumeFileError as error:
                assert error.path == str(path)
                caught += 1
    assert caught > 200


# -- `resume` end to end over the whole corpus, with a peak-memory bound (issue 12) -----------------------

PEAK_BOUND = 64 * 1024**2  # per file, above the resident memory before it


def test_resume_runs_over_the_whole_corpus_within_a_memory_bound(tmp_path, tiny_models_root):
    """`python -m goan_core resume FILE --tiny` on every corpus file, in one fresh process: each ends with exit
    code 2 and one `goan: error:` line naming the file and the corpus' phrase; no traceback, no MP4, nothing
    run. A valid file of the same plan, resumed last in the same process, runs and writes its MP4 (so exit 2
    is the files' doing, not the harness'). Peak resident memory per file (Linux: VmHWM reset per file) stays
    under 64 MiB above what was resident before it: these plans legitimately need under 1 MiB, the attacks of
    issue 12 allocated 1.25 GB (a huge image) and 4.4 GB (a declared size). A 64 MiB calibration allocation
    must register, so the bound is not vacuous."""
    here = Path(__file__).resolve().parent
    files, jobs = tmp_path / "files", []
    files.mkdir()
    outputs = tmp_path / "out"
    outputs.mkdir()
    for case in CASES:
        folder = files / case.name
        folder.mkdir()
        jobs.append({"name": case.name, "file": str(case.build(folder)), "out": str(outputs / f"{case.name}.mp4")})
    valid = write_valid(files / "valid.goan_resume", step=2, outputs=1)
    jobs = ([{**jobs[0], "name": "warm-up"}] + jobs  # first imports (torch, diffusers) are not a file's cost
            + [{"name": "valid", "file": str(valid), "out": str(outputs / "valid.mp4")}])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, GOAN_TINY_DIR=str(tiny_models_root), PYTHONPATH=str(here.parent))
    done = subprocess.run([sys.executable, str(here / "resume_corpus_driver.py"), str(tmp_path / "jobs.json"),
                           str(tmp_path / "results.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    results = {r["name"]: r for r in report["results"]}
    cases = {case.name: case for case in CASES}
    for name, case in cases.items():
        result = results[name]
        assert result["traceback"] is None, f"{name}: escaped the CLI:\n{result['traceback']}"
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (name, result["code"], result["stderr"][-500:])
        assert len(lines) == 1 and lines[0].startswith("goan: error: "), (name, result["stderr"][-500:])
        job = next(j for j in jobs if j["name"] == name)
        assert job["file"] in lines[0] and case.phrase in lines[0], (name, lines[0])
        assert not result["wrote_mp4"] and "Traceback" not in result["stdout"] + result["stderr"]
    assert not any((files / name / MARKER).exists() for name in cases), "a hostile pickle ran"

    assert results["valid"]["code"] == 0 and results["valid"]["wrote_mp4"], results["valid"]["stderr"][-2000:]

    calibration = results["calibration"]["peak_bytes"]
    if calibration is None:  # no per-file peak on this system: bound the whole corpus run instead
        pytest.skip("per-file peak memory needs Linux's /proc/self/clear_refs")
    assert calibration >= 60 * 1024**2, f"the measurement missed a 64 MiB allocation ({calibration} bytes)"
    peaks = {name: results[name]["peak_bytes"] for name in cases}
    worst = max(peaks, key=peaks.get)
    print(f"peak per file: max {peaks[worst] / 2**20:.1f} MiB ({worst}), median "
          f"{sorted(peaks.values())[len(peaks) // 2] / 2**20:.1f} MiB; calibration {calibration / 2**20:.1f} MiB; "
          f"seconds: " + ", ".join(f"{r['name']} {r['seconds']:.1f}" for r in report["results"] if r.get("seconds", 0) > 0.3))
    assert peaks[worst] < PEAK_BOUND, f"{worst}: peak {peaks[worst] / 2**20:.1f} MiB while refusing the file"
