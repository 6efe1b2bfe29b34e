"""Backward mode's end frame on real tiny jobs: it conditions the first generated section and resumes exactly."""

import zipfile

import numpy as np
import pytest
import torch

from goan_core.errors import InputError
from goan_core.jobs import JobSaver, create_job, goan_encoders, sample_job
from goan_core.models import Transformer
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder, read_resume_file
from goan_core.sampling import Engine
from goan_core.vocabulary import Status

from job_helpers import CPU, F32, branch


def start_image():
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x ^ y) * 4], axis=-1).astype(np.uint8)


def end_image():
    y, x = np.mgrid[0:80, 0:96]  # another size: cropped to the start image's frame
    return np.stack([255 - x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)


def new_job(models, end=True, mode="backward", **overrides):
    params = JobParams(**{**dict(prompt="a door opens", seconds=1.2, lws=3, steps=4, mode=mode, resolution=64,
                                 seed=5), **overrides})
    return create_job(params, start_image(), goan_encoders(models, CPU, F32),
                      identity=Transformer(models.transformer, CPU, F32).identity(), job_id="endjob",
                      end_image=end_image() if end else None)


def first_section(models, job):
    engine = Engine(models.transformer, CPU, F32)
    while job.state.section == 0:
        engine.step(job.state)
    return job.state.history_latents


def test_the_end_frame_changes_the_first_generated_section(tiny_models):
    with_end = first_section(tiny_models, new_job(tiny_models))
    without = first_section(tiny_models, new_job(tiny_models, end=False))
    assert not torch.equal(with_end, without)
    # strength 0 leaves the zero context as it was: the same as no end frame
    assert torch.equal(first_section(tiny_models, new_job(tiny_models, end_strength=0.0)), without)


def test_an_end_frame_needs_backward_mode(tiny_models):
    with pytest.raises(InputError, match="end image needs mode backward"):
        new_job(tiny_models, mode="f1")


@pytest.fixture(scope="module")
def reference(tiny_models):
    job = new_job(tiny_models, end_embeds=0.5)
    Engine(tiny_models.transformer, CPU, F32).run(job.state)
    return job.state


@pytest.mark.parametrize("point", [(0, 0), (0, 2), (1, 0), (2, 3)])
def test_resume_with_an_end_frame_is_exact(tiny_models, reference, tmp_path, point):
    job = new_job(tiny_models, end_embeds=0.5)
    assert job.state.conditioning.end_image_embeds is not None
    saver = JobSaver(RetentionFolder(tmp_path, job.state.job_id, 3), job.source_image)
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), job.state, saver, pause_at=point,
                        save_finished=False)
    assert result.status is Status.PAUSED
    with zipfile.ZipFile(result.resume_file) as archive:
        assert "end_image.png" in archive.namelist()
    loaded = read_resume_file(result.resume_file).state
    assert torch.equal(loaded.end_latent, job.state.end_latent)
    assert np.array_equal(loaded.end_image, job.state.end_image) and loaded.end_image.shape == (64, 64, 3)
    Engine(tiny_models.transformer, CPU, F32).run(loaded)
    assert torch.equal(loaded.history_latents, reference.history_latents)


# -- branching the end frame: meaningful only while a section it conditions is still to come ---------

def paused(models, tmp_path, point, **overrides):
    """(resume file, job) of a 3-section backward job with an end frame, paused before `point` (section, step)."""
    job = new_job(models, **overrides)
    saver = JobSaver(RetentionFolder(tmp_path, job.state.job_id, 3), job.source_image)
    result = sample_job(Engine(models.transformer, CPU, F32), job.state, saver, pause_at=point, save_finished=False)
    assert result.status is Status.PAUSED
    return result.resume_file


def finish(models, state):
    Engine(models.transformer, CPU, F32).run(state)
    return state.history_latents


def other_end_image():
    return end_image()[::-1].copy()


def test_end_strength_and_image_branch_before_the_first_section_is_done(tiny_models, tmp_path):
    """Paused before the first generated section, a branch with another end_strength (or end image) is the
    fresh job with it, torch.equal; the lineage records the change (the image by its pixels' sha256)."""
    path = paused(tiny_models, tmp_path, (0, 0))
    weaker = branch(tiny_models, path, end_strength=0.5)
    assert weaker.lineage["changes"] == {"end_strength": [1.0, 0.5]} and weaker.job_id != "endjob"
    fresh = new_job(tiny_models, end_strength=0.5).state
    assert torch.equal(finish(tiny_models, weaker), finish(tiny_models, fresh))

    other = branch(tiny_models, path, end_image=other_end_image())
    (old, new), = other.lineage["changes"].values()
    assert list(other.lineage["changes"]) == ["end_image"] and len(old) == len(new) == 64 and old != new
    fresh = create_job(JobParams(prompt="a door opens", seconds=1.2, lws=3, steps=4, resolution=64, seed=5),
                       start_image(), goan_encoders(tiny_models, CPU, F32),
                       identity=Transformer(tiny_models.transformer, CPU, F32).identity(), end_image=other_end_image())
    assert torch.equal(other.end_latent, fresh.state.end_latent)
    assert torch.equal(finish(tiny_models, other), finish(tiny_models, fresh.state))


def test_a_mid_section_end_strength_branch_round_trips_and_resumes_exactly(tiny_models, tmp_path):
    """Mid first section the rest of it takes the new strength; the branch's own files carry it and resume
    exactly; the same settings (and the same end image) change nothing: plain resume, torch.equal."""
    path = paused(tiny_models, tmp_path, (0, 2))
    same = branch(tiny_models, path, end_strength=1.0, end_embeds=0.0, end_image=end_image())
    assert same.job_id == "endjob" and same.lineage is None
    plain = finish(tiny_models, read_resume_file(path).state)
    assert torch.equal(finish(tiny_models, same), plain)

    mid = branch(tiny_models, path, end_strength=0.25)
    assert mid.lineage["step"] == 2 and mid.teacache is None
    saver = JobSaver(RetentionFolder(tmp_path / "b", mid.job_id, 3), start_image())
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), mid, saver, pause_at=(1, 1), save_finished=False)
    reread = read_resume_file(result.resume_file).state
    assert reread.params.end_strength == 0.25 and reread.lineage == mid.lineage
    done = finish(tiny_models, branch(tiny_models, path, end_strength=0.25))
    assert torch.equal(finish(tiny_models, reread), done) and not torch.equal(done, plain)


def test_end_embeds_branch_while_a_section_still_takes_some_of_it(tiny_models, tmp_path):
    """After the first section, end_embeds still changes the sections still to come (but the video's first):
    from 0 the end image's embedding is made with the image encoder; what was generated stays."""
    path = paused(tiny_models, tmp_path, (1, 0))
    state = read_resume_file(path).state
    assert state.conditioning.end_image_embeds is None  # made without blending
    blended = branch(tiny_models, path, end_embeds=0.5)
    assert blended.lineage["changes"] == {"end_embeds": [0.0, 0.5]}
    assert blended.conditioning.end_image_embeds is not None
    plan = state.plan
    done, plain = (plan.real_history(finish(tiny_models, s), plan.total_sections) for s in (blended, state))
    end, rest = slice(-plan.lws, None), slice(None, -plan.lws)  # the first generated section: the video's end
    assert torch.equal(done[:, :, end], plain[:, :, end]) and not torch.equal(done[:, :, rest], plain[:, :, rest])


@pytest.mark.parametrize("point, change, why", [
    ((1, 0), {"end_strength": 0.5}, "end_strength only conditions the first generated section .*which this job "
                                    "finished; start a new job for another end_strength"),
    ((1, 2), {"end_image": "other"}, "the end image only conditions the first generated section"),
    ((2, 0), {"end_embeds": 0.5}, "no section left to generate takes any of it; start a new job"),
])
def test_an_end_frame_change_that_would_change_nothing_is_refused(tiny_models, tmp_path, point, change, why):
    path = paused(tiny_models, tmp_path, point)
    if change.get("end_image") == "other":
        change = {"end_image": other_end_image()}
    with pytest.raises(InputError, match=why):
        branch(tiny_models, path, **change)
    assert branch(tiny_models, path, end_image=end_image()).lineage is None  # the same image changes nothing


def test_a_job_without_an_end_image_refuses_end_frame_changes(tiny_models, tmp_path):
    job = new_job(tiny_models, end=False)
    saver = JobSaver(RetentionFolder(tmp_path, job.state.job_id, 3), job.source_image)
    path = sample_job(Engine(tiny_models.transformer, CPU, F32), job.state, saver, pause_at=(1, 0),
                      save_finished=False).resume_file
    with pytest.raises(InputError, match="this job has no end image, so end_strength would change nothing"):
        branch(tiny_models, path, end_strength=0.5)
    with pytest.raises(InputError, match="the end image only conditions the first generated section"):
        branch(tiny_models, path, end_image=end_image())
    f1 = new_job(tiny_models, end=False, mode="f1")
    saver = JobSaver(RetentionFolder(tmp_path / "f1", f1.state.job_id, 3), f1.source_image)
    path = sample_job(Engine(tiny_models.transformer, CPU, F32), f1.state, saver, pause_at=(0, 0),
                      save_finished=False).resume_file
    with pytest.raises(InputError, match="end image needs mode backward"):
        branch(tiny_models, path, end_image=end_image())
