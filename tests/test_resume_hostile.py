"""Every hostile or broken file gives its one clear error, and nothing in it is ever run or extracted."""

from __future__ import annotations

import io
import random

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
