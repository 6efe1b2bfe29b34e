"""Tiny-model jobs for the engine and resume tests, made through goan_core's job lifecycle."""

from __future__ import annotations

import torch

from goan_core.jobs import continue_job, create_job, goan_encoders, render_frames
from goan_core.models import VAE, Transformer
from goan_core.resumefile import read_resume_file

CPU, F32 = torch.device("cpu"), torch.float32


def new_job_state(models, params, image, *, job_id=None):
    """(state, cropped source image) of a new job on the CPU in fp32, as every front end makes it."""
    job = create_job(params, image, goan_encoders(models, CPU, F32),
                     identity=Transformer(models.transformer, CPU, F32).identity(), job_id=job_id)
    return job.state, job.source_image


def render(models, state):
    """(F,H,W,3) uint8 frames of `state` decoded with the tiny VAE."""
    return render_frames(state, VAE(models.vae, CPU, F32))


def branch(models, path, **changes):
    """The state of the job in resume file `path` continued with `changes` (a branch when they differ)."""
    data = read_resume_file(path)
    job, _ = continue_job(data.state, data.source_image, goan_encoders(models, CPU, F32),
                          identity=Transformer(models.transformer, CPU, F32).identity(), changes=changes)
    return job.state
