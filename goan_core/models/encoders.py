"""Prompt, image and latent encoders: what a job needs before its first step, and pixels after it.

Each function places its model on the compute device only while it runs and returns float32 CPU
tensors, so what a job stores does not depend on where it ran. `dtype` is the dtype the models were
loaded in; inputs are cast to it and a model loaded in another dtype is refused.

Placement keeps `gpu_memory_preservation` GB free on the device (`encoder_offload`): an encoder that
does not fit whole streams its layers, the VAE tiles and slices when short; `accelerator` stands in
for the device (the counting fake of tests). On the CPU nothing moves.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..media import image_to_tensor
from .encoder_offload import (CLIP_BLOCKS, LLAMA_BLOCKS, SIGLIP_BLOCKS, decode_bytes, placed_encoder, placed_vae,
                              short_of_memory, vae_activation_bytes, vae_tiling)
from .loading import ModelSet
from .offload import DEFAULT_GPU_MEMORY_PRESERVATION

# HunyuanVideo's Llama prompt template (the text FramePack and diffusers use); "{}" is the prompt.
PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
PROMPT_TOKENS = 256  # most prompt tokens kept after the template
PROMPT_EMBED_LENGTH = 512  # the transformer gets exactly this many (zero-padded, masked) tokens
CLIP_TOKENS = 77
LLAMA_HIDDEN_LAYER = -3  # HunyuanVideo reads the Llama hidden state two layers before the last


def _require(models: ModelSet, names: tuple[str, ...], need: str) -> None:
    missing = [name for name in names if getattr(models, name) is None]
    if missing:
        raise InputError(f"{', '.join(missing)} not loaded; load the model set with {need}")


def _check_dtype(module: torch.nn.Module | None, dtype: torch.dtype, name: str) -> None:
    """Refuse a model that is absent or loaded in another dtype than the job computes in."""
    if module is None:
        raise InputError(f"the {name} is not loaded; load the model set with it")
    if module.dtype != dtype:
        raise InputError(
            f"the {name} is loaded in {module.dtype} but the job computes in {dtype}; "
            f"load the models with dtype={dtype}"
        )


def template_crop_start(tokenizer) -> int:
    """How many tokens of the template come before the prompt, BOS included.

    These are cut from the Llama output. For HunyuanVideo's Llama 3 tokenizer this is 95, the
    constant FramePack uses; computing it keeps other tokenizers (the tiny test one) aligned.
    """
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    return len(tokenizer(prefix)["input_ids"])


def crop_or_pad(embeds: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) -> (B, length, D) by cutting or zero-padding, and a bool mask (True = real token)."""
    batch, tokens, dim = embeds.shape
    if tokens >= length:
        return embeds[:, :length], torch.ones(batch, length, dtype=torch.bool)
    padded = torch.zeros(batch, length, dim, dtype=embeds.dtype)
    padded[:, :tokens] = embeds
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :tokens] = True
    return padded, mask


def encode_prompt(
    models: ModelSet, prompt: str, device: torch.device, dtype: torch.dtype, *,
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION, accelerator=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HunyuanVideo prompt encoding: (embeds (1, 512, D), mask (1, 512) bool, pooled (1, P)).

    The Llama hidden state of the templated prompt, with the template cut off and at most 256
    prompt tokens kept, zero-padded to 512; the CLIP pooled output of the bare prompt.
    """
    _require(models, ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"), "need_text=True")
    _check_dtype(models.text_encoder, dtype, "text_encoder")
    _check_dtype(models.text_encoder_2, dtype, "text_encoder_2")
    crop_start = template_crop_start(models.tokenizer)
    tokens = models.tokenizer(
        PROMPT_TEMPLATE.format(prompt),
        padding="max_length",
        max_length=PROMPT_TOKENS + crop_start,
        truncation=True,
        padding_side="right",
        return_tensors="pt",
    )
    length = int(tokens.attention_mask.sum())
    clip_ids = models.tokenizer_2(
        prompt, padding="max_length", max_length=CLIP_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    budget = dict(compute_dtype=dtype, gpu_memory_preservation=gpu_memory_preservation, accelerator=accelerator)
    llama, clip = models.text_encoder, models.text_encoder_2
    with torch.no_grad():
        with placed_encoder(llama, device, LLAMA_BLOCKS, "the Llama text encoder", tokens=tokens.input_ids.shape[1],
                            held_states=llama.config.num_hidden_layers + 1, **budget):  # output_hidden_states
            hidden = llama(
                input_ids=tokens.input_ids.to(device),
                attention_mask=tokens.attention_mask.to(device),
                output_hidden_states=True,
            ).hidden_states[LLAMA_HIDDEN_LAYER]
            embeds = hidden[:, crop_start:length].float().cpu()
        with placed_encoder(clip, device, CLIP_BLOCKS, "the CLIP text encoder", tokens=clip_ids.shape[1], **budget):
            pooled = clip(clip_ids.to(device), output_hidden_states=False).pooler_output.float().cpu()
    embeds, mask = crop_or_pad(embeds, PROMPT_EMBED_LENGTH)
    return embeds, mask, pooled


def encode_image_embeds(
    models: ModelSet, image: np.ndarray, device: torch.device, dtype: torch.dtype, *,
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION, accelerator=None,
) -> torch.Tensor:
    """SigLIP last hidden state of a uint8 HxWx3 image: (1, N, E) float32 on the CPU."""
    _require(models, ("image_encoder", "feature_extractor"), "need_image=True")
    _check_dtype(models.image_encoder, dtype, "image_encoder")
    pixels = models.feature_extractor(images=image, return_tensors="pt").pixel_values
    siglip = models.image_encoder
    patch = int(siglip.config.patch_size)
    tokens = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    with torch.no_grad(), placed_encoder(siglip, device, SIGLIP_BLOCKS, "the SigLIP image encoder",
                                         compute_dtype=dtype, tokens=tokens, accelerator=accelerator,
                                         gpu_memory_preservation=gpu_memory_preservation):
        return siglip(pixel_values=pixels.to(device, dtype)).last_hidden_state.float().cpu()


def encode_start_latent(vae, image: np.ndarray, device: torch.device, dtype: torch.dtype, *,
                        gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION,
                        accelerator=None) -> torch.Tensor:
    """VAE latent of a uint8 HxWx3 image, (1, 16, 1, H/8, W/8) float32 on the CPU, scaled.

    Uses the mode of the latent distribution, not a sample: encoding is deterministic and never
    touches a random generator (the job's generator belongs to the section noise alone). Tiled and
    sliced when the budget is short for it (`encoder_offload`).
    """
    _check_dtype(vae, dtype, "VAE")
    pixels = image_to_tensor(image)
    activations = vae_activation_bytes(vae, pixels.shape[2], pixels.shape[-2], pixels.shape[-1], dtype)
    with torch.no_grad(), placed_vae(vae, device, dtype, gpu_memory_preservation, accelerator) as placement:
        with vae_tiling(vae, short_of_memory(placement, activations)):
            latent = vae.encode(pixels.to(device, dtype)).latent_dist.mode()
        return (latent * vae.config.scaling_factor).float().cpu()


def decode_latents(vae, latents: torch.Tensor, device: torch.device, dtype: torch.dtype, *,
                   gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION,
                   accelerator=None) -> torch.Tensor:
    """Pixels (1, 3, (T-1)*4+1, 8h, 8w) of latents (1, 16, T, h, w), float32 on the CPU.

    Values are nominally in [-1, 1] but not clamped; clamp when converting to 8-bit frames. Tiled and
    sliced when the budget is short for this shape (`encoder_offload`; then not bit-identical to untiled).
    """
    _check_dtype(vae, dtype, "VAE")
    unscaled = latents.float() / vae.config.scaling_factor
    with torch.no_grad(), placed_vae(vae, device, dtype, gpu_memory_preservation, accelerator) as placement:
        with vae_tiling(vae, short_of_memory(placement, decode_bytes(vae, tuple(latents.shape), dtype))):
            return vae.decode(unscaled.to(device, dtype)).sample.float().cpu()
