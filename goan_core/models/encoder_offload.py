"""The text encoders, SigLIP and the VAE under the same memory budget as the transformer.

Budget, as for the transformer (`swap_plan`): free device bytes before placing minus
`gpu_memory_preservation` GiB for the weights, the preserved memory for the activations. The caller
passes the budget's two inputs (the handles carry them).

Encoders (`placed_encoder`): the same planner and hooks as the transformer (`offload.placed`), with each
model's own block lists:

    Llama (LlamaModel)          layers
    CLIP (CLIPTextModel)        text_model.encoder.layers (transformers 4) or encoder.layers (5)
    SigLIP (SiglipVisionModel)  vision_model.encoder.layers (transformers 4) or encoder.layers (5)

When the whole encoder fits (with the part of its activation reserve beyond the preservation), it is
placed whole and nothing streams; otherwise the non-block modules (embeddings, final norms, heads) stay
resident and the layers that do not fit stream through one or two slots. Back on the CPU afterwards,
exceptions included. The reserve is `encoder_activation_factor` hidden-sized tensors per token (4 for
the residual stream, norm and attention, plus 4 of the MLP's width), plus, for the Llama, the hidden
states `output_hidden_states` keeps (one per layer and the embeddings).

VAE (`placed_vae`): placed whole (its weights are a few hundred MB); when the budget is short for one
call, that call runs with diffusers' `enable_tiling()` and `enable_slicing()` (FramePack's low-VRAM
decode), and the VAE's own settings are restored after it. "Short" means that the VAE's weights and
its activations do not fit in the free memory, the activations being allowed the preserved memory (as
the transformer's are; `SwapPlan.device_bytes`):

    VAE weight bytes + max(preservation, reserve + vae_activation_bytes(...)) > free device bytes

i.e. the activations beyond the preservation must fit in the weight budget left after the weights
(the reserve is the plan's, for a VAE only a per-layer weight cast when its weights are stored narrower),
with the activation estimate (generous, documented here because it is a judgement, not a measurement):

    VAE_ACTIVATION_FACTOR (4) x C x F x H x W x itemsize  +  2 x 3 x F_all x H x W x itemsize

C = max(block_out_channels[:2]): the widest feature map at full resolution (the last upsampler's output);
H x W = the pixel size (8 x the latent's); F = the pixel frames computed at once: diffusers' framewise
decoding (on by default) runs at most tile_sample_min_num_frames + 1 of them (17), F_all = all frames of
the call; 4 tensors of that size are alive at once inside a resnet (input, GroupNorm out, causal pad copy,
conv out); the second term is the decoded chunks and their concatenation. For HunyuanVideo's VAE at the
640 bucket (704x544, a section of 18 latent frames at lws 9, fp16) that is 12.7 GiB plus 0.46 GiB of
weights, 13.2 GiB in all: a 24 GB card decodes untiled, a 12 GB card tiled, and a 16 GB card untiled
when about 13.2 GiB of it are free. Encoding one image uses the same formula (F = 1). A VAE whose
weights do not fit beside the preservation is still placed when the device holds them (the planner's
fallback, with a warning), and then always tiles.
Tiled decoding is not bit-identical to untiled (tiles are blended); unknown free memory (CPU without a
fake accelerator, or a device that cannot be asked) never tiles.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .offload import DEFAULT_GPU_MEMORY_PRESERVATION, Accelerator, Placement, placed

LLAMA_BLOCKS = ("layers",)
CLIP_BLOCKS = ("text_model.encoder.layers", "encoder.layers")  # transformers 4 wraps text_model, 5 does not
SIGLIP_BLOCKS = ("vision_model.encoder.layers", "encoder.layers")
VAE_ACTIVATION_FACTOR = 4  # full-resolution feature maps alive at once (see the module docstring)


def encoder_activation_factor(model: nn.Module, held_states: int = 0) -> int:
    """Hidden-sized tensors per token to reserve: 4 + 4 x the MLP's width ratio, plus `held_states`."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    ratio = -(-int(getattr(config, "intermediate_size", 0) or 0) // hidden) if hidden else 0
    return 4 + 4 * max(ratio, 1) + int(held_states)


@contextmanager
def placed_encoder(model: nn.Module, device: torch.device | str, containers: tuple[str, ...], what: str, *,
                   compute_dtype: torch.dtype, tokens: int,
                   gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION,
                   accelerator: Accelerator | None = None, held_states: int = 0) -> Iterator[Placement | None]:
    """`offload.placed` for a text or image encoder: whole when it fits, its `containers` streamed otherwise."""
    factor = encoder_activation_factor(model, held_states)
    with placed(model, device, gpu_memory_preservation, compute_dtype=compute_dtype, tokens=tokens,
                accelerator=accelerator, containers=containers, what=what, activation_factor=factor) as placement:
        yield placement


@contextmanager
def placed_vae(vae: nn.Module, device: torch.device | str, dtype: torch.dtype,
               gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION,
               accelerator: Accelerator | None = None) -> Iterator[Placement | None]:
    """The VAE placed whole under the budget (nested use keeps the enclosing placement)."""
    with placed(vae, device, gpu_memory_preservation, compute_dtype=dtype, containers=(),
                what="the VAE", accelerator=accelerator) as placement:
        yield placement


def vae_activation_bytes(vae: nn.Module, frames: int, height: int, width: int, dtype: torch.dtype,
                         framewise: bool = True) -> int:
    """Estimated activation bytes of one encode or decode of `frames` pixel frames of `height` x `width`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    channels = max(tuple(getattr(vae.config, "block_out_channels", (128, 256)))[:2])
    at_once = frames
    if framewise and getattr(vae, "use_framewise_decoding", False):
        at_once = min(frames, int(getattr(vae, "tile_sample_min_num_frames", frames)) + 1)
    pixels = height * width * itemsize
    return VAE_ACTIVATION_FACTOR * channels * at_once * pixels + 2 * 3 * frames * pixels


def decode_bytes(vae: nn.Module, latent_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """`vae_activation_bytes` for decoding latents of `latent_shape` (B, C, T, h, w)."""
    batch, _, frames, height, width = latent_shape
    temporal = int(getattr(vae, "temporal_compression_ratio", 4))
    spatial = int(getattr(vae, "spatial_compression_ratio", 8))
    return batch * vae_activation_bytes(vae, (frames - 1) * temporal + 1, height * spatial, width * spatial, dtype)


def short_of_memory(placement: Placement | None, activation_bytes: int) -> bool:
    """Whether a placed model's weights plus its activations (its reserve + `activation_bytes`, in the preserved
    memory as far as that reaches) need more than the free memory it was planned for (unknown: no)."""
    if placement is None or placement.plan.budget is None:
        return False
    return placement.plan.device_bytes(activation_bytes) > placement.plan.free_bytes


@contextmanager
def vae_tiling(vae: nn.Module, on: bool) -> Iterator[bool]:
    """diffusers' tiling and slicing on for one call when `on`; the VAE's own settings restored afterwards."""
    if not on:
        yield False
        return
    saved = (vae.use_tiling, vae.use_slicing)
    try:
        vae.enable_tiling()
        vae.enable_slicing()
        yield True
    finally:
        vae.use_tiling, vae.use_slicing = saved
