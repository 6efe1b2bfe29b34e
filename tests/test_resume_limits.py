"""Issue 12: one set of limits for creating and reading jobs, plans that follow from their settings,
memory that follows the checked plan, and clear messages where tracebacks used to be."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from goan_core.errors import GoanError, InputError, ResumeFileError
from goan_core.media import bucket_options, write_mp4
from goan_core.params import MAX_SECTIONS, JobParams
from goan_core.resumefile import (MAX_JSON_DEPTH, RetentionFolder, check_job, inspect_resume_file, read_resume_file,
                                  write_resume_file)
from goan_core.resumefile import legacy as legacy_module
from goan_core.resumefile.checks import section_bounds
from goan_core.sampling import SectionPlan, section_count

from hostile_corpus import CASES, legacy_members, make_state, source_image, write_legacy, write_valid

CORPUS = {case.name: case for case in CASES}


# -- item 1: one set of limits, checked when a job is created ------------------------------------------

def test_a_job_beyond_the_section_limit_is_refused_when_created():
    params = JobParams(prompt="p", seconds=3600, lws=1, resolution=64)  # 27,000 sections
    plan = SectionPlan("backward", 1, section_count(3600, 1), 64, 64)
    with pytest.raises(InputError, match=f"27000 sections, more than the {MAX_SECTIONS} goan allows"):
        check_job(params, plan)


def test_a_job_whose_files_would_be_too_large_is_refused_when_created():
    params = JobParams(prompt="p", seconds=3600, lws=9, resolution=640)  # ~8 GB of history
    plan = SectionPlan("backward", 9, section_count(3600, 9), 640, 608)
    with pytest.raises(InputError, match="resume files would need up to .* more than the 4.0 GB"):
        check_job(params, plan)


def test_check_job_and_the_reader_refuse_with_the_same_message(tmp_path):
    """A plan that does not follow from the settings: the same words at creation and on reading."""
    path = CORPUS["plan_sections_without_seconds_backward"].build(tmp_path)
    with pytest.raises(ResumeFileError) as on_read:
        read_resume_file(path)
    state = make_state()
    bad = SectionPlan(state.plan.mode, state.plan.lws, 10_000, state.plan.height, state.plan.width)
    with pytest.raises(InputError) as on_create:
        check_job(state.params, bad)
    assert str(on_create.value).startswith("cannot run this job: the plan has 10000 sections")
    assert str(on_read.value).endswith(str(on_create.value)[len("cannot run this job: "):])


def test_an_extension_beyond_the_settings_limits_is_refused():
    state = make_state(mode="f1")
    params = state.params
    params.seconds = 3599.0 + 2.0  # extend_job adds seconds without validating them
    with pytest.raises(InputError, match="seconds must be between"):
        check_job(params, state.plan.extended(10))


def test_created_jobs_pass_check_job_at_every_setting():
    for lws in (1, 2, 3, 9, 17, 33):
        for seconds in (0.001, 0.1, 0.4, 0.5, 1, 1.2, 2.5, 5, 7.3, 60, 600):
            for mode in ("backward", "f1"):
                params = JobParams(prompt="p", seconds=seconds, lws=lws, mode=mode, resolution=64)
                check_job(params, SectionPlan(mode, lws, section_count(seconds, lws), 64, 48))


# -- item 3: the plan follows from the settings, extended f1 jobs included ----------------------------

def _extend(state, seconds):
    """What jobs.lifecycle.extend_job does, followed by the check it calls."""
    state.plan = state.plan.extended(section_count(seconds, state.plan.lws))
    state.params.seconds = state.params.seconds + seconds
    check_job(state.params, state.plan)


def test_extended_f1_jobs_stay_within_the_bounds_and_round_trip(tmp_path):
    rng = random.Random(12)
    for trial in range(300):
        lws = rng.choice([1, 2, 3, 5, 9, 17, 33])
        window = lws * 4 / 30
        seconds = rng.choice([0.05, 0.5, 1.0, 2.0, 5.0, 7.7]) * rng.uniform(0.5, 2)
        params = JobParams(prompt="p", seconds=seconds, lws=lws, mode="f1", resolution=64)
        state = make_state(mode="f1", section=0)
        state.params, state.plan = params, SectionPlan("f1", lws, section_count(seconds, lws), 64, 64)
        for _ in range(rng.randint(1, 12)):
            _extend(state, rng.uniform(window / 2, 4 * window))  # at least half a window each time
            low, high = section_bounds(state.params)
            assert low <= state.plan.total_sections <= high
    state = make_state(mode="f1")
    for extra in (0.4, 0.8, 2.5, 0.2 + 0.2):
        _extend(state, extra)
    path = write_resume_file(state, tmp_path / "extended.goan_resume", source_image=source_image())
    assert read_resume_file(path).state.plan.total_sections == state.plan.total_sections


def test_many_tiny_extensions_are_refused_once_they_double_the_job():
    state = make_state(mode="f1")  # 1.2 s at lws 3: 3 sections of 0.4 s
    with pytest.raises(InputError, match="extend by at least 0.2 s at a time"):
        for _ in range(20):
            _extend(state, 0.01)  # each adds a whole 0.4 s section for 0.01 s asked


def test_the_frame_size_must_be_a_bucket_of_the_resolution():
    params = JobParams(prompt="p", seconds=1.2, lws=3, resolution=640)
    check_job(params, SectionPlan("backward", 3, 3, *bucket_options(640)[0]))
    with pytest.raises(InputError, match="not one of the resolution 640 buckets"):
        check_job(params, SectionPlan("backward", 3, 3, 64, 64))


@pytest.mark.parametrize("height, width", [(608, 640), (640, 608), (416, 960), (480, 832), (64, 64), (48, 64)])
def test_legacy_files_at_framepack_buckets_read_and_save_again(tmp_path, height, width):
    """The original app bucketed at 640; the resolution goan infers must have that bucket, and the
    legacy state, saved by goan, must read back (the writer refuses what the reader refuses)."""
    history = torch.randn(1, 16, 19 + 3, height // 8, width // 8)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    data = read_resume_file(write_legacy(tmp_path / "old.goan_resume", legacy_members(history, image=image)))
    assert (height, width) in bucket_options(data.state.params.resolution)
    data.state.start_latent = torch.zeros(1, 16, 1, height // 8, width // 8)
    data.state.conditioning = make_state().conditioning
    path = write_resume_file(data.state, tmp_path / "again.goan_resume", source_image=data.source_image)
    assert read_resume_file(path).state.plan == data.state.plan


# -- item 2: memory follows the checked plan -----------------------------------------------------------

def _peak_bytes(call) -> int:
    """Peak Python-heap bytes (bytearrays, numpy arrays) allocated while `call` runs."""
    tracemalloc.start()
    try:
        call()
    except GoanError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_declared_size_is_never_allocated_before_the_header_is_checked(tmp_path):
    """24 MB of padding behind a valid header: refused having allocated well under that."""
    path = CORPUS["state_declares_more_than_its_header"].build(tmp_path)
    with zipfile.ZipFile(path) as archive:
        declared = archive.getinfo("state.safetensors").file_size
    assert declared > 24 * 1024**2
    assert _peak_bytes(lambda: read_resume_file(path)) < 4 * 1024**2


def test_an_image_far_larger_than_the_plan_is_refused_before_decoding(tmp_path):
    path = CORPUS["image_far_larger_than_the_plan"].build(tmp_path)
    assert _peak_bytes(lambda: read_resume_file(path)) < 4 * 1024**2


def test_the_writer_refuses_an_image_the_reader_would(tmp_path):
    with pytest.raises(ResumeFileError, match="far larger than the job's 64x64 frames"):
        write_resume_file(make_state(), tmp_path / "x.goan_resume", source_image=np.zeros((1024, 1024, 3), np.uint8))
    big = io.BytesIO()
    Image.new("RGB", (2048, 2048)).save(big, format="PNG")
    with pytest.raises(ResumeFileError, match="far larger"):
        write_resume_file(make_state(), tmp_path / "x.goan_resume", source_image=big.getvalue())
    assert not (tmp_path / "x.goan_resume").exists()


def test_reading_every_corpus_file_stays_within_a_small_multiple_of_its_plan(tmp_path):
    """The corpus' plans are tiny (64x64 px, 3 sections: about 0.1 MB of state). Whatever a file
    declares, reading it costs at most a few MB (zip's own read buffers included)."""
    for case in CASES:
        path = case.build(tmp_path)
        peak = _peak_bytes(lambda: read_resume_file(path))
        assert peak < 6 * 1024**2, f"{case.name}: {peak / 1024**2:.1f} MB"


# -- item 4: magnitudes ----------------------------------------------------------------------------

def test_the_writer_refuses_latents_beyond_a_real_jobs_magnitude(tmp_path):
    state = make_state()
    state.history_latents = torch.full_like(state.history_latents, 3e38)
    with pytest.raises(ResumeFileError, match="holds values up to 3e\\+38 in magnitude; a real job's stay within 10000"):
        write_resume_file(state, tmp_path / "x.goan_resume", source_image=source_image())


# -- item 5: deep workflows, legacy sizes, the MP4 on a full disk ------------------------------------

def test_a_workflow_the_reader_would_refuse_is_left_out_not_the_save(tmp_path, caplog):
    deep: dict = {}
    node = deep
    for _ in range(1000):
        node["x"] = {}
        node = node["x"]
    with caplog.at_level(logging.WARNING, logger="goan"):
        path = write_resume_file(make_state(), tmp_path / "x.goan_resume", source_image=source_image(),
                                 workflow=deep)
    data = read_resume_file(path)
    assert data.workflow is None and "saved without its workflow" in caplog.text
    assert f"more than {MAX_JSON_DEPTH} levels" in caplog.text


def test_an_mp4_on_a_full_disk_gives_one_clear_error(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    target = tmp_path / "video.mp4"
    os.symlink("/dev/full", tmp_path / ".video.mp4.partial")  # every write there fails with ENOSPC
    with pytest.raises(GoanError) as caught:
        write_mp4(np.zeros((4, 64, 64, 3), dtype=np.uint8), target)
    assert str(caught.value).startswith(f"{target}: the video could not be written: the disk became full")
    assert os.listdir(tmp_path) == []


# -- item 8: inspect validates what resume validates -------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inspect_refuses_exactly_what_resume_refuses(case, tmp_path):
    path = case.build(tmp_path)
    with pytest.raises(ResumeFileError) as on_read:
        read_resume_file(path)
    with pytest.raises(ResumeFileError) as on_inspect:
        inspect_resume_file(path)
    assert str(on_inspect.value) == str(on_read.value)


def test_inspect_says_what_it_checked(tmp_path):
    summary = inspect_resume_file(write_valid(tmp_path / "x.goan_resume", step=2, outputs=1))
    assert summary["exact"] and summary["has_workflow"]
    assert any("tensor values" in line for line in summary["checked"])
    assert any("plan against params" in line for line in summary["checked"])
    json.dumps(summary)  # what `goan inspect` prints
    legacy = inspect_resume_file(write_legacy(tmp_path / "old.goan_resume", legacy_members()))
    assert not legacy["exact"] and any("latents" in line for line in legacy["checked"])


# -- item 10: cleanup failures are warnings ------------------------------------------------------------

def test_a_failed_cleanup_after_a_good_save_is_a_warning(tmp_path, monkeypatch, caplog):
    folder = RetentionFolder(tmp_path, "job-1", keep_last=1)
    state = make_state()
    first = folder.save(state, source_image=source_image())
    real_unlink = type(first).unlink

    def locked(self, *args, **kwargs):
        if self.name.endswith(".goan_resume"):
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(type(first), "unlink", locked)
    with caplog.at_level(logging.WARNING, logger="goan"):
        second = folder.save(state, source_image=source_image())
    assert second.exists() and read_resume_file(second).state.section == state.section
    assert first.exists() and str(first) in folder.cleanup_warnings[0]
    assert "could not be deleted" in caplog.text


# -- item 11: legacy pickles only on a torch whose weights-only loader is safe -------------------------

def test_legacy_files_are_refused_on_torch_before_2_6(tmp_path, monkeypatch):
    path = write_legacy(tmp_path / "old.goan_resume", legacy_members())
    valid = write_valid(tmp_path / "new.goan_resume")
    loads = []
    monkeypatch.setattr(legacy_module, "torch_version", lambda: (2, 5))
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    for read in (read_resume_file, inspect_resume_file):
        with pytest.raises(ResumeFileError, match=r"torch 2\.5 cannot load those safely \(CVE-2025-32434\)"):
            read(path)
    assert loads == []  # refused before anything was unpickled
    assert read_resume_file(valid).exact  # v1 files hold no pickle and read on any torch


def test_the_torch_version_is_read_from_torch():
    major, minor = legacy_module.torch_version()
    assert f"{major}.{minor}" == ".".join(torch.__version__.split(".")[:2])


@pytest.mark.parametrize("char", ["\x01", "\U0001F408"])  # the longest in JSON (\u0001), the longest in UTF-8
def test_a_branch_of_the_longest_prompts_writes_a_file_goan_reads(tmp_path, char):
    """Prompt and negative prompt at the length limit, both changed in a branch: job_info's lineage holds
    all four, and the file must still be within the reader's limits (a file goan writes, goan reads)."""
    import dataclasses

    from goan_core.params import MAX_PROMPT_CHARS

    state = make_state(cfg=2.0)
    old, new = char * MAX_PROMPT_CHARS, "b" + char * (MAX_PROMPT_CHARS - 1)
    params = dataclasses.replace(state.params, prompt=new, negative_prompt=new)
    lineage = {"parent": "job-0", "root": "job-0", "section": 1, "step": 0,
               "changes": {"prompt": [old, new], "negative_prompt": [old, new]}}
    state = dataclasses.replace(state, params=params, lineage=lineage)
    path = write_resume_file(state, tmp_path / "branch.goan_resume", source_image=source_image())
    data = read_resume_file(path)
    assert data.state.lineage == lineage and data.state.params.prompt == new
