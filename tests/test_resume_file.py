"""Format v1 round trips bit-exactly; the writer refuses what a reader would refuse; legacy files map."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from datetime import datetime

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import goan_core
from goan_core.errors import InputError, ResumeFileError
from goan_core.resumefile.legacy import NOT_EXACT
from goan_core.models import identity_mismatch
from goan_core.resumefile import inspect_resume_file, read_resume_file, write_resume_file
from goan_core.resumefile.format import (COND_PREFIX, FORMAT_VERSION, GENERATOR, HISTORY, SAMPLER_OUTPUTS, SAMPLER_X,
                                         START)

from hostile_corpus import IDENTITY, LWS, legacy_members, make_state, source_image, write_legacy

POSITIONS = {
    "start": {"section": 0},
    "boundary": {"section": 1},
    "mid_section": {"section": 1, "step": 3, "outputs": 2},
    "mid_section_step1": {"section": 2, "step": 1, "outputs": 1},
    "noise_drawn_step0": {"section": 2, "step": 0, "in_section": True},
    "mid_section_no_outputs": {"section": 0, "step": 2, "outputs": 0},
    "finished": {"section": 3},
}
WORKFLOW = {"last_node_id": 3, "nodes": [{"id": 1, "type": "GoanSegmentSampler", "widgets_values": [5, "é"]}]}


def assert_states_equal(saved, restored):
    assert restored.job_id == saved.job_id
    assert restored.params == saved.params
    assert restored.plan == saved.plan
    assert restored.section == saved.section
    assert restored.model_identity == saved.model_identity
    for name in ("history_latents", "start_latent", "generator_state"):
        a, b = getattr(saved, name), getattr(restored, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    if saved.sampler is None:
        assert restored.sampler is None
    else:
        assert restored.sampler.step == saved.sampler.step
        assert torch.equal(restored.sampler.x, saved.sampler.x)
        assert len(restored.sampler.model_outputs) == len(saved.sampler.model_outputs)
        for a, b in zip(saved.sampler.model_outputs, restored.sampler.model_outputs):
            assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("mode", ["backward", "f1"])
@pytest.mark.parametrize("position", POSITIONS, ids=str)
@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["cfg1", "cfg4"])
def test_round_trip_is_bit_exact(mode, position, cfg, tmp_path):
    state = make_state(mode=mode, cfg=cfg, **POSITIONS[position])
    image = source_image()
    path = write_resume_file(state, tmp_path / "job.goan_resume", source_image=image, workflow=WORKFLOW)
    data = read_resume_file(path)
    assert_states_equal(state, data.state)
    saved, restored = state.conditioning.tensors(), data.state.conditioning.tensors()
    assert saved.keys() == restored.keys()
    for name in saved:
        assert saved[name].dtype == restored[name].dtype and torch.equal(saved[name], restored[name]), name
    assert np.array_equal(data.source_image, image) and data.source_image.dtype == np.uint8
    assert data.workflow == WORKFLOW
    assert data.exact and data.notes == [] and not data.needs_start_latent


@pytest.mark.parametrize("mode", ["backward", "f1"])
def test_generator_continues_identically(mode, tmp_path):
    state = make_state(mode=mode, section=1, step=2, outputs=1)
    path = write_resume_file(state, tmp_path / "job.goan_resume", source_image=source_image())
    original, restored = torch.Generator(), torch.Generator()
    original.set_state(state.generator_state)
    restored.set_state(read_resume_file(path).state.generator_state)
    for _ in range(3):
        shape = state.plan.noise_shape()
        assert torch.equal(torch.randn(shape, generator=original), torch.randn(shape, generator=restored))


def test_job_info_and_members(tmp_path):
    state = make_state(section=1, step=2, outputs=2)
    path = write_resume_file(state, tmp_path / "job.goan_resume", source_image=source_image(), workflow=WORKFLOW,
                             kind="autosave")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        members = {name: archive.read(name) for name in names}
    assert names[-1] == "job_info.json"  # written last: it carries the checksums of the streamed members
    assert set(names) == {"job_info.json", "params.json", "source_image.png", "workflow.json", "state.safetensors"}
    info = json.loads(members["job_info.json"])
    assert info["format"] == "goan_resume" and info["format_version"] == FORMAT_VERSION == 1
    assert info["job_id"] == "job-1" and info["mode"] == "backward" and info["plan"] == state.plan.to_dict()
    assert (info["next_section"], info["step_in_section"], info["total_sections"]) == (1, 2, 3)
    assert info["in_section"] is True and info["sampler_outputs"] == 2 and info["kind"] == "autosave"
    assert info["model_identity"] == IDENTITY and info["has_embeddings"] is True
    assert info["producer"] == f"goan {goan_core.__version__}"
    assert datetime.fromisoformat(info["created_at"]).utcoffset().total_seconds() == 0
    assert info["sha256"] == {name: hashlib.sha256(data).hexdigest() for name, data in members.items()
                              if name != "job_info.json"}
    assert json.loads(members["params.json"]) == state.params.to_dict()
    assert json.loads(members["workflow.json"]) == WORKFLOW
    # other tools can read the state with plain safetensors
    state_file = tmp_path / "state.safetensors"
    state_file.write_bytes(members["state.safetensors"])
    with safe_open(state_file, "pt") as tensors:
        names = set(tensors.keys())
        assert tensors.get_tensor(SAMPLER_OUTPUTS).shape == (2, *state.plan.noise_shape())
        assert tensors.get_tensor(GENERATOR).dtype == torch.uint8
    assert names == {HISTORY, START, GENERATOR, SAMPLER_X, SAMPLER_OUTPUTS,
                     *(COND_PREFIX + k for k in ("prompt_embeds", "prompt_mask", "pooled", "image_embeds"))}


def test_boundary_has_no_sampler_tensors(tmp_path):
    path = write_resume_file(make_state(section=2), tmp_path / "job.goan_resume", source_image=source_image())
    data = read_resume_file(path)
    assert data.job_info["in_section"] is False and data.job_info["sampler_outputs"] == 0
    assert data.state.sampler is None and data.workflow is None


def test_embeddings_can_be_left_out(tmp_path):
    path = write_resume_file(make_state(cfg=3.0), tmp_path / "job.goan_resume", source_image=source_image(),
                             include_embeddings=False)
    data = read_resume_file(path)
    assert data.state.conditioning is None and data.job_info["has_embeddings"] is False
    with pytest.raises(ResumeFileError, match="no saved prompt and image embeddings"):
        read_resume_file(path, conditioning_required=True)


def test_state_without_conditioning_is_saved_without_embeddings(tmp_path):
    state = dataclasses.replace(make_state(), conditioning=None)
    path = write_resume_file(state, tmp_path / "job.goan_resume", source_image=source_image())
    assert read_resume_file(path).job_info["has_embeddings"] is False


def test_png_bytes_are_stored_as_given(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(source_image()).convert("RGBA").save(buffer, format="PNG")
    path = write_resume_file(make_state(), tmp_path / "job.goan_resume", source_image=buffer.getvalue())
    with zipfile.ZipFile(path) as archive:
        assert archive.read("source_image.png") == buffer.getvalue()
    assert np.array_equal(read_resume_file(path).source_image, source_image())


def test_inspect(tmp_path):
    state = make_state(section=1, step=2, outputs=1)
    path = write_resume_file(state, tmp_path / "job.goan_resume", source_image=source_image())
    summary = inspect_resume_file(path)
    assert summary["exact"] and summary["format_version"] == 1
    assert summary["params"] == state.params.to_dict()
    assert summary["job_info"]["step_in_section"] == 2
    assert set(summary["members"]) == {"job_info.json", "params.json", "source_image.png", "state.safetensors"}


def test_identity_mismatch():
    saved = dict(IDENTITY)
    assert identity_mismatch(saved, dict(IDENTITY)) is None
    assert identity_mismatch(saved, {"transformer": IDENTITY["transformer"]}) is None
    assert identity_mismatch({}, {"vae": "x"}) is None
    warning = identity_mismatch(saved, {**IDENTITY, "vae": "other-vae"})
    assert "vae" in warning and "other-vae" in warning and "transformer" not in warning


@pytest.mark.parametrize("damage, phrase", [
    (lambda s: s.history_latents.__setitem__((0, 0, 0, 0, 0), float("nan")), "contains NaN or Inf"),
    (lambda s: setattr(s, "history_latents", s.history_latents[:, :, 1:]), "'history_latents' has shape"),
    (lambda s: setattr(s, "start_latent", s.start_latent.double()), "'start_latent' has dtype"),
    (lambda s: setattr(s, "section", 4), "next_section 4 is outside"),
    (lambda s: setattr(s.sampler, "step", 5), "step_in_section 5 must be below"),
    (lambda s: s.sampler.model_outputs.extend([s.sampler.x] * 3), "sampler_outputs 4"),
    (lambda s: setattr(s, "job_id", "../x"), "job_id"),
    (lambda s: setattr(s.conditioning, "pooled", torch.zeros(1, 16, dtype=torch.int64)), "'cond.pooled' has dtype"),
])
def test_writer_refuses_an_inconsistent_state(damage, phrase, tmp_path):
    state = make_state(section=1, step=2, outputs=1)
    damage(state)
    with pytest.raises(ResumeFileError, match="not saved") as caught:
        write_resume_file(state, tmp_path / "job.goan_resume", source_image=source_image())
    assert phrase in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, phrase", [
    ({"kind": "holiday"}, "unknown resume file kind"),
    ({"workflow": [1, 2]}, "workflow must be a dict"),
    ({"source_image": np.zeros((8, 8, 3), dtype=np.float32)}, "source_image must be an np.uint8 array"),
    ({"source_image": np.zeros((8, 8), dtype=np.uint8)}, "source_image must be an np.uint8 array"),
])
def test_writer_refuses_bad_arguments(kwargs, phrase, tmp_path):
    arguments = {"source_image": source_image(), **kwargs}
    with pytest.raises(InputError, match=phrase):
        write_resume_file(make_state(), tmp_path / "job.goan_resume", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_png_bytes_that_do_not_decode(tmp_path):
    with pytest.raises(ResumeFileError, match="source_image is not a PNG image"):
        write_resume_file(make_state(), tmp_path / "job.goan_resume", source_image=b"not a png")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ResumeFileError, match="file not found"):
        read_resume_file(tmp_path / "nothing.goan_resume")
    with pytest.raises(ResumeFileError, match="is a folder"):
        read_resume_file(tmp_path)
    with pytest.raises(ResumeFileError, match="does not exist"):
        write_resume_file(make_state(), tmp_path / "no" / "job.goan_resume", source_image=source_image())


# -- files of the original goan app ---------------------------------------------------------------

def test_legacy_file_is_read_best_effort(tmp_path):
    history = torch.randn(1, 16, 19 + 2 * LWS, 8, 8)
    path = write_legacy(tmp_path / "old.goan_resume", legacy_members(history, completed=2))
    data = read_resume_file(path)
    assert not data.exact and data.notes[0].startswith(NOT_EXACT)
    assert any("use_teacache" in note and "gpu_memory_preservation" in note for note in data.notes)
    assert data.needs_start_latent and torch.equal(data.state.start_latent, torch.zeros(1, 16, 1, 8, 8))
    state = data.state
    assert state.conditioning is None and state.sampler is None and state.section == 2
    assert torch.equal(state.history_latents, history)
    assert (state.params.prompt, state.params.seed, state.params.steps, state.params.lws) == ("a cat on a boat", 99, 5, LWS)
    assert (state.params.gs, state.params.crf, state.params.mode) == (10.0, 18, "backward")
    # the original app's rule: round(int(1.2 s * 30 fps) / (3 * 4 - 3)) = 4 sections
    assert (state.plan.mode, state.plan.total_sections, state.plan.width, state.plan.height) == ("backward", 4, 64, 64)
    expected = torch.Generator().manual_seed(99)
    for _ in range(2):
        torch.randn(state.plan.noise_shape(), generator=expected)
    assert torch.equal(state.generator_state, expected.get_state())
    assert data.job_info["format_version"] == 0 and data.job_info["completed_segments"] == 2
    with pytest.raises(ResumeFileError, match="embeddings"):
        read_resume_file(path, conditioning_required=True)
    assert inspect_resume_file(path)["exact"] is False


def test_finished_legacy_file_takes_its_start_latent_from_the_history(tmp_path):
    history = torch.randn(1, 16, 19 + 4 * LWS + 1, 8, 8)
    data = read_resume_file(write_legacy(tmp_path / "old.goan_resume", legacy_members(history, completed=4)))
    assert data.state.section == data.state.plan.total_sections == 4
    assert not data.needs_start_latent and torch.equal(data.state.start_latent, history[:, :, :1])


def test_legacy_job_id_and_settings_are_made_safe(tmp_path):
    members = legacy_members(params={"positive_prompt": "x", "seed": "12", "steps_slider": 7.0,
                                     "latent_window_size": LWS, "video_length": 1.2, "real_cfg": "lots"})
    members = [(n, json.dumps({"job_id": "a/b:c", "completed_segments": 1}).encode() if n == "job_info.json" else d)
               for n, d in members]
    data = read_resume_file(write_legacy(tmp_path / "old.goan_resume", members))
    assert data.state.job_id == "a_b_c"
    assert (data.state.params.prompt, data.state.params.seed, data.state.params.steps) == ("x", 12, 7)
    assert data.state.params.cfg == 1.0 and any("'real_cfg'" in note for note in data.notes)


@pytest.mark.parametrize("created_at, ok", [
    ("2026-12-01T21:52:00+00:00", True), ("2026-12-01T21:52:00Z", True), ("2026-12-01T21:52:00.123456+01:00", True),
    ("2026-12-01T21:52:00", False), ("20261201T215200Z", False), ("2026-12-01T21:52:00.1Z", False),
    ("2026-13-01T21:52:00Z", False)])
def test_created_at_is_read_the_same_on_every_python(tmp_path, created_at, ok):
    """3.11's fromisoformat accepts far more than 3.10's: goan accepts one format on both."""
    import json
    import zipfile

    path = write_resume_file(make_state(), tmp_path / "job.goan_resume", source_image=source_image())
    edited = tmp_path / "edited.goan_resume"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "job_info.json":
                data = json.dumps({**json.loads(data), "created_at": created_at}).encode()
            dst.writestr(info, data)
    if ok:
        read_resume_file(edited)
    else:
        with pytest.raises(ResumeFileError, match="created_at"):
            read_resume_file(edited)
