"""The FramePack transformer as a flow-matching denoiser with distilled and real guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .plan import SectionLayout
from .state import Conditioning
from .teacache import EMPTY, PassCache, cached_call


def rescale_guidance(guided: torch.Tensor, positive: torch.Tensor, amount: float) -> torch.Tensor:
    """Guidance rescale (Lin et al., 2023): pull the guided prediction's spread back to the positive one's."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return amount * rescaled + (1.0 - amount) * guided


@dataclass
class SectionInputs:
    """What the transformer sees besides the noisy latent, for one section, on the compute device."""

    layout: SectionLayout
    clean: torch.Tensor
    clean_2x: torch.Tensor
    clean_4x: torch.Tensor

    def kwargs(self, dtype: torch.dtype) -> dict:
        return {
            "indices_latents": self.layout.latent_indices,
            "latents_clean": self.clean.to(dtype),
            "indices_latents_clean": self.layout.clean_indices,
            "latents_history_2x": self.clean_2x.to(dtype),
            "indices_latents_history_2x": self.layout.clean_2x_indices,
            "latents_history_4x": self.clean_4x.to(dtype),
            "indices_latents_history_4x": self.layout.clean_4x_indices,
        }


class Denoiser:
    """`D(x, sigma) -> x0`: one or two transformer passes, combined by real CFG and rescale.

    The distilled guidance `gs` is an input of the model (scaled by 1000, as it was trained); real
    CFG (`cfg` > 1) adds a negative pass, skipped entirely at cfg == 1. Inputs and outputs are
    float32 on the CPU; the transformer runs on `device` in `dtype`.
    """

    def __init__(self, transformer, conditioning: Conditioning, section: SectionInputs, *,
                 cfg: float, gs: float, rs: float, device: torch.device, dtype: torch.dtype):
        self.transformer = transformer
        self.cfg, self.rs = cfg, rs
        self.device, self.dtype = device, dtype
        to = dict(device=device, dtype=dtype)
        self.guidance = torch.tensor([gs * 1000.0], **to)
        section_kwargs = section.kwargs(dtype)
        self.positive = dict(
            encoder_hidden_states=conditioning.prompt_embeds.to(**to),
            encoder_attention_mask=conditioning.prompt_mask.to(device),
            pooled_projections=conditioning.pooled.to(**to),
            image_embeds=conditioning.image_embeds.to(**to),
            **section_kwargs,
        )
        self.negative = None
        if cfg != 1.0:
            if conditioning.negative_prompt_embeds is None:
                raise ValueError("real CFG (cfg != 1) needs the negative prompt embeddings")
            self.negative = dict(
                self.positive,
                encoder_hidden_states=conditioning.negative_prompt_embeds.to(**to),
                encoder_attention_mask=conditioning.negative_prompt_mask.to(device),
                pooled_projections=conditioning.negative_pooled.to(**to),
            )
        self.calls = 0
        self.skipped = 0
        # TeaCache: None (off), or the caches by pass, set before and read after each step by the engine
        self.teacache: dict[str, PassCache] | None = None
        self.teacache_steps, self.teacache_threshold = 1, 0.0

    def _velocity(self, x: torch.Tensor, timestep: torch.Tensor, inputs: dict, name: str) -> torch.Tensor:
        self.calls += 1

        def call():
            return self.transformer(hidden_states=x, timestep=timestep, guidance=self.guidance,
                                    return_dict=False, **inputs)[0]

        if self.teacache is None:
            return call().float()
        out, cache, skipped = cached_call(self.transformer, self.teacache.get(name, EMPTY), self.teacache_steps,
                                          self.teacache_threshold, call)
        self.teacache = {**self.teacache, name: cache}
        self.skipped += skipped
        return out.float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        x_model = x.to(device=self.device, dtype=self.dtype)
        timestep = torch.tensor([sigma * 1000.0], device=self.device, dtype=torch.float32).to(self.dtype)
        velocity = self._velocity(x_model, timestep, self.positive, "positive")
        if self.negative is not None:
            negative = self._velocity(x_model, timestep, self.negative, "negative")
            guided = negative + self.cfg * (velocity - negative)
            velocity = rescale_guidance(guided, velocity, self.rs) if self.rs > 0 else guided
        x0 = x.to(device=self.device, dtype=torch.float32) - velocity * sigma
        return x0.cpu()
