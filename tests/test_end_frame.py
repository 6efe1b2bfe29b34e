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

CPU, F32 = torch.device("cpu"), torch.float32


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
