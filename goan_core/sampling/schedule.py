"""The shifted flow-matching sigma schedule FramePack samples with.

sigma runs from 1 (pure noise) to 0 (clean). The schedule is `linspace(1, 0, steps + 1)` bent by a
time shift whose strength `mu` grows linearly with the token count of the latent being sampled (as
in Flux), capped at log(7): at FramePack's usual sizes the shift is 7.
"""

from __future__ import annotations

import math

import torch

SHIFT_CAP = 7.0


def shift_mu(sequence_length: int, *, low=(256, 0.5), high=(4096, 1.15), cap: float = SHIFT_CAP) -> float:
    """mu for a latent of `sequence_length` tokens (after 2x2 patching): linear in length, capped."""
    slope = (high[1] - low[1]) / (high[0] - low[0])
    mu = low[1] + slope * (sequence_length - low[0])
    return min(mu, math.log(cap))


def time_shift(t: float, mu: float) -> float:
    """exp(mu) / (exp(mu) + (1/t - 1)); maps 1 -> 1 and 0 -> 0."""
    if t <= 0.0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def sigma_schedule(steps: int, latent_shape: tuple[int, ...], patch_size: int = 2) -> torch.Tensor:
    """`steps + 1` sigmas (float32) for a latent of shape (B, C, T, H, W)."""
    _, _, frames, height, width = latent_shape
    mu = shift_mu(frames * height * width // (patch_size * patch_size))
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    return torch.tensor([time_shift(t, mu) for t in ts], dtype=torch.float32)
