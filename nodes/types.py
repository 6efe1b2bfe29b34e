"""The values goan's custom socket types carry between nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..goan_core.models import ModelSet, model_identity
from ..goan_core.state import JobState

CATEGORY = "goan"

TRANSFORMER = "GOAN_TRANSFORMER"
VAE = "GOAN_VAE"
TEXT_ENCODERS = "GOAN_TEXT_ENCODERS"
IMAGE_ENCODER = "GOAN_IMAGE_ENCODER"
STATE = "GOAN_STATE"

# What a GOAN_STATE says about its job.
NEW, LOADED, RUNNING, PAUSED, STOPPED, FINISHED = "new", "loaded", "running", "paused", "stopped", "finished"


@dataclass(frozen=True)
class GoanTransformer:
    model: Any
    device: torch.device
    dtype: torch.dtype
    conv_fp32: bool
    name: str

    def identity(self) -> dict:
        return {**model_identity(self.model), "conv_fp32": str(self.conv_fp32)}


@dataclass(frozen=True)
class GoanVAE:
    model: Any  # diffusers AutoencoderKLHunyuanVideo
    device: torch.device
    dtype: torch.dtype
    name: str


@dataclass(frozen=True)
class GoanTextEncoders:
    models: ModelSet  # text_encoder, text_encoder_2, tokenizer, tokenizer_2
    device: torch.device
    dtype: torch.dtype
    name: str


@dataclass(frozen=True)
class GoanImageEncoder:
    models: ModelSet  # image_encoder, feature_extractor
    device: torch.device
    dtype: torch.dtype
    name: str


@dataclass
class GoanJob:
    """A GOAN_STATE: a job between two steps plus what travels with it.

    ComfyUI caches node outputs and may hand the same object to several nodes, so nodes never
    change a GoanJob they receive: the sampler continues a `state.snapshot()`.
    `file` names the resume file holding exactly this state ({filename, subfolder, type}) when
    there is one; `path` is that file on disk.
    """

    state: JobState
    source_image: np.ndarray
    status: str
    file: dict | None = None
    path: Path | None = None
    workflow: dict | None = None
    keep_last: int = 3
    end_image: np.ndarray | None = None
    needs_start_latent: bool = False
    job_info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """The first picture of a ComfyUI IMAGE ([B,H,W,C] float 0..1) as uint8 HxWx3."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] < 1 or image.shape[-1] < 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected a ComfyUI IMAGE [batch, height, width, channels], got {shape}")
    pixels = image[0, :, :, :3].detach().float().cpu().clamp(0, 1)
    return (pixels * 255.0).round().to(torch.uint8).numpy()


def uint8_to_image(frames) -> torch.Tensor:
    """uint8 (H,W,3) or (F,H,W,3) -> ComfyUI IMAGE [F,H,W,3] float32 0..1."""
    tensor = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if tensor.ndim == 3:
        tensor = tensor[None]
    return tensor.to(torch.float32).div(255.0).contiguous()
