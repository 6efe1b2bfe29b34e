"""Loaded models with the device and dtype they compute in: what a job's stages are handed.

Each handle offers one small verb (encode a prompt, encode an image, encode or decode latents) so
the job lifecycle does not care whether the work is done by goan's own models or, inside ComfyUI,
by ComfyUI's (see `nodes/native.py` for those).

The VAE and encoder handles carry the memory budget they run under: `gpu_memory_preservation` (GB kept
free on the device, FramePack's default 6) and `accelerator` (None: the real device; the counting fake
of tests). An encoder that does not fit streams its layers, the VAE tiles when short (`encoder_offload`).

Every handle answers `_comfy_cache_tensors()` with its weights: the hook ComfyUI's RAM-pressure cache
(ComfyUI >= 0.34) calls on a cached node output to learn its size from its CPU tensors; without it a
multi-GB model counts as almost nothing and stays cached while everything else is evicted first.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ContextManager, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..params import MAX_LORAS, LoraUse, canonical_loras
from .devices import dtype_name
from .encoder_offload import placed_vae
from .encoders import decode_latents, encode_image_embeds, encode_prompt, encode_start_latent
from .identity import model_identity
from .loading import ModelSet
from .lora import Lora, loras_applied
from .offload import DEFAULT_GPU_MEMORY_PRESERVATION
from .precision import fp32_output_applied
from .storage import weight_storage_name


def _module_tensors(holders) -> list[torch.Tensor]:
    """The parameters and buffers of every torch module among `holders` (tokenizers and None hold none)."""
    found: list[torch.Tensor] = []
    for holder in holders:
        if isinstance(holder, torch.nn.Module):
            found += list(holder.parameters()) + list(holder.buffers())
    return found


class _Weights:
    """A handle's weights as memory: `model`, or every model of a ModelSet `models`."""

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        """Every weight tensor of the handle, wherever it is (the cache counts the CPU ones)."""
        models = getattr(self, "models", None)
        return _module_tensors([getattr(self, "model", None), *(vars(models).values() if models is not None else ())])


@dataclass(frozen=True)
class Transformer(_Weights):
    """The FramePack transformer, where it computes, and whether its patch embeds run in fp32.

    `dtype` is the compute dtype; the matmul weights may be stored narrower (fp8, see `storage`).
    `loras` are (LoRA, strength) pairs applied per layer while a job runs (`applied()`, see `lora`);
    `with_lora` makes a new handle sharing the same model, which no LoRA ever changes.
    """

    model: Any
    device: torch.device
    dtype: torch.dtype
    conv_fp32: bool = False
    name: str = ""
    loras: tuple[tuple[Lora, float], ...] = ()

    def with_lora(self, lora: Lora, strength: float) -> "Transformer":
        """A handle on the same model with `lora` added at `strength` (InputError: a LoRA read for another model,
        a strength out of range, too many LoRAs)."""
        use = lora.use(strength)  # validates the strength
        if lora.model_config != model_identity(self.model)["config_sha256"]:
            raise InputError(f"LoRA {lora.name!r} was read for another transformer; read it again for this one")
        if len(self.loras) >= MAX_LORAS:
            raise InputError(f"at most {MAX_LORAS} LoRAs can be chained on one transformer")
        return replace(self, loras=self.loras + ((lora, use.strength),))

    def lora_uses(self) -> tuple[LoraUse, ...]:
        """What a resume file records of the LoRAs: name, sha256 and strength, those at strength 0 left out."""
        return canonical_loras(lora.use(strength) for lora, strength in self.loras)

    def applied(self) -> ContextManager[None]:
        """The LoRAs applied to the model for the time of a `with` block (nothing to do without LoRAs)."""
        return loras_applied(self.model, self.loras)

    def identity(self) -> dict:
        """What a resume file records about this model: class, config hash and precision choices.

        "weight_dtype" is how the matmul weights are stored (e.g. "float8_e4m3fn"): fp8 storage gives
        the same results as the file upcast, but another file precision does not. "compute_dtype" is
        `dtype`; "fp32_output" whether the output head computes in fp32 (`precision.apply_fp32_output`).
        """
        return {**model_identity(self.model), "conv_fp32": str(self.conv_fp32),
                "weight_dtype": weight_storage_name(self.model), "compute_dtype": dtype_name(self.dtype),
                "fp32_output": str(fp32_output_applied(self.model))}


@dataclass(frozen=True)
class VAE(_Weights):
    """The HunyuanVideo VAE: start image to latent, latents to pixels."""

    model: Any
    device: torch.device
    dtype: torch.dtype
    name: str = ""
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION
    accelerator: Any = None

    def _budget(self) -> dict:
        return {"gpu_memory_preservation": self.gpu_memory_preservation, "accelerator": self.accelerator}

    def encode_start_latent(self, image: np.ndarray) -> torch.Tensor:
        return encode_start_latent(self.model, image, self.device, self.dtype, **self._budget())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.model, latents, self.device, self.dtype, **self._budget())

    @contextmanager
    def loaded(self) -> Iterator["VAE"]:
        """Keep the VAE on its device across many `decode` calls (one move instead of one per section);
        each call still decides for itself whether to tile."""
        with placed_vae(self.model, self.device, self.dtype, **self._budget()):
            yield self


@dataclass(frozen=True)
class TextEncoders(_Weights):
    """HunyuanVideo's Llama and CLIP text encoders with their tokenizers."""

    models: ModelSet  # text_encoder, text_encoder_2, tokenizer, tokenizer_2
    device: torch.device
    dtype: torch.dtype
    name: str = ""
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION
    accelerator: Any = None

    def encode_prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return encode_prompt(self.models, text, self.device, self.dtype,
                             gpu_memory_preservation=self.gpu_memory_preservation, accelerator=self.accelerator)


@dataclass(frozen=True)
class ImageEncoder(_Weights):
    """The SigLIP image encoder with its processor."""

    models: ModelSet  # image_encoder, feature_extractor
    device: torch.device
    dtype: torch.dtype
    name: str = ""
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION
    accelerator: Any = None

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        return encode_image_embeds(self.models, image, self.device, self.dtype,
                                   gpu_memory_preservation=self.gpu_memory_preservation, accelerator=self.accelerator)
