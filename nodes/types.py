"""The values goan's custom socket types carry between nodes.

The model sockets carry goan_core.models' handles (Transformer, VAE, TextEncoders, ImageEncoder) as they
are; GOAN_STATE carries a `GoanJob`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..goan_core.errors import InputError
from ..goan_core.sampling import JobState
from ..goan_core.vocabulary import Status

CATEGORY = "goan"

TRANSFORMER = "GOAN_TRANSFORMER"
VAE = "GOAN_VAE"
TEXT_ENCODERS = "GOAN_TEXT_ENCODERS"
IMAGE_ENCODER = "GOAN_IMAGE_ENCODER"
STATE = "GOAN_STATE"


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
    status: Status
    file: dict | None = None
    path: Path | None = None
    workflow: dict | None = None
    keep_last: int = 3
    needs_start_latent: bool = False
    job_info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        """The state's tensors, for ComfyUI's RAM-pressure cache (which sizes a cached output by this hook):
        a long job's history buffer and embeddings are hundreds of MB."""
        return self.state.held_tensors()


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """The first picture of a ComfyUI IMAGE ([B,H,W,C] float 0..1) as uint8 HxWx3."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] < 1 or image.shape[-1] < 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"expected a ComfyUI IMAGE [batch, height, width, channels], got {shape}")
    pixels = image[0, :, :, :3].detach().float().cpu().clamp(0, 1)
    return (pixels * 255.0).round().to(torch.uint8).numpy()


def uint8_to_image(frames) -> torch.Tensor:
    """uint8 (H,W,3) or (F,H,W,3) -> ComfyUI IMAGE [F,H,W,3] float32 0..1."""
    tensor = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if tensor.ndim == 3:
        tensor = tensor[None]
    return tensor.to(torch.float32).div(255.0).contiguous()

