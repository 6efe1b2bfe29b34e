"""Starting, extending and rendering jobs: the stages around the section loop.

`prepare_job` does the one-off work (bucket and crop the image, encode prompt and image, encode
the start latent, seed the generator); `render_frames` turns a finished (or partial) history into
frames. Both move models to the compute device only while they use them.
"""

from __future__ import annotations

import uuid
from typing import Callable
from datetime import datetime, timezone

import numpy as np
import torch

from .decode import Decode, decode_history, to_uint8_frames
from .encoders import build_conditioning, decode_latents
from .image import nearest_bucket, resize_and_center_crop
from .models import ModelSet, model_identity, on_device
from .params import JobParams
from .plan import CONTEXT_FRAMES, LATENT_CHANNELS, SectionPlan, section_count
from .state import Conditioning, JobState


def new_job_id() -> str:
    """Sortable and unique: UTC time plus a random suffix, safe in file names."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def initial_history(plan: SectionPlan, start_latent: torch.Tensor) -> torch.Tensor:
    """FramePack's history buffer before the first section: zero context (plus the start in f1)."""
    zeros = torch.zeros(1, LATENT_CHANNELS, CONTEXT_FRAMES, plan.latent_height, plan.latent_width)
    return torch.cat([zeros, start_latent.float()], dim=2) if plan.mode == "f1" else zeros


def start_job(params: JobParams, image: np.ndarray, encode: Callable[[np.ndarray], tuple[Conditioning, torch.Tensor]],
              *, model_identity: dict, job_id: str | None = None) -> tuple[JobState, np.ndarray]:
    """A fresh job at section 0, and the bucketed, cropped input image it was made from.

    `encode(cropped_image)` returns the prompt/image embeddings and the start latent; front ends
    pass their own (goan's encoders, or ComfyUI's conditioning and VAE).
    """
    height, width = nearest_bucket(image.shape[0], image.shape[1], params.resolution)
    source = resize_and_center_crop(image, width, height)
    conditioning, start_latent = encode(source)
    plan = SectionPlan(params.mode, params.lws, section_count(params.seconds, params.lws), height, width)
    generator = torch.Generator("cpu").manual_seed(params.seed)
    state = JobState(
        job_id=job_id or new_job_id(),
        params=params,
        plan=plan,
        conditioning=conditioning,
        start_latent=start_latent.float(),
        history_latents=initial_history(plan, start_latent),
        generator_state=generator.get_state(),
        model_identity=model_identity,
    )
    return state, source


def prepare_job(models: ModelSet, params: JobParams, image: np.ndarray, *, device: torch.device,
                dtype: torch.dtype, job_id: str | None = None) -> tuple[JobState, np.ndarray]:
    """`start_job` with goan's own encoders from `models`."""
    identity = model_identity(models.transformer) if models.transformer is not None else {}
    return start_job(params, image, lambda source: build_conditioning(models, params, source, device, dtype),
                     model_identity=identity, job_id=job_id)


def extend_job(state: JobState, additional_seconds: float) -> JobState:
    """Add `additional_seconds` of video to a forward (f1) job; backward jobs explain why not."""
    if additional_seconds <= 0:
        return state
    extra = section_count(additional_seconds, state.plan.lws)
    state.plan = state.plan.extended(extra)
    state.params.seconds = state.params.seconds + additional_seconds
    return state


def decode_frames(state: JobState, decode: Decode, progress=None) -> torch.Tensor:
    """(F,H,W,3) uint8 frames of everything generated so far, decoding latents with `decode`."""
    sections = min(state.section, state.plan.total_sections)
    if sections == 0:
        raise ValueError(f"job {state.job_id} has no finished section to decode yet")
    real = state.plan.real_history(state.history_latents, sections)
    with torch.no_grad():
        pixels = decode_history(state.plan, real, decode, sections, progress)
    return to_uint8_frames(pixels)


def render_frames(vae, state: JobState, *, device: torch.device, dtype: torch.dtype,
                  progress=None) -> torch.Tensor:
    """`decode_frames` with a diffusers HunyuanVideo VAE, on the compute device only while decoding."""
    with on_device(vae, device):
        return decode_frames(state, lambda z: decode_latents(vae, z, device, dtype), progress)
