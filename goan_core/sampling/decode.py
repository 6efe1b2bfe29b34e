"""From final latents to frames: FramePack's per-section VAE decode with a soft overlap blend.

FramePack decodes each new section together with its neighbour and cross-fades the frames they
share. The frames depend only on the finished latent history and the plan, so goan replays the same
per-section decodes once at the end; a resumed job therefore decodes to exactly the same video.
"""

from __future__ import annotations

from typing import Callable

import torch

from .plan import SectionPlan

Decode = Callable[[torch.Tensor], torch.Tensor]  # latents (1,16,T,h,w) -> pixels (1,3,F,H,W) in [-1,1]


def soft_append(history: torch.Tensor, current: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two clips along time, cross-fading the last `overlap` frames of `history` into the first of `current`."""
    if overlap <= 0:
        return torch.cat([history, current], dim=2)
    weights = torch.linspace(1.0, 0.0, overlap, dtype=history.dtype).view(1, 1, -1, 1, 1)
    blended = weights * history[:, :, -overlap:] + (1.0 - weights) * current[:, :, :overlap]
    return torch.cat([history[:, :, :-overlap], blended, current[:, :, overlap:]], dim=2)


def section_slices(plan: SectionPlan, sections_done: int | None = None) -> list[slice]:
    """For each section in generation order, the frames of the real history that FramePack decoded.

    Slices index the real (padding-free, video-ordered) history after `sections_done` sections.
    """
    done = plan.total_sections if sections_done is None else sections_done
    final = plan.generated_frames_after(done)
    slices = []
    for k in range(done):
        present = plan.generated_frames_after(k + 1)
        if k == 0:
            length = present
        elif plan.mode == "backward" and plan.is_last(k):
            length = 2 * plan.lws + 1
        else:
            length = 2 * plan.lws
        if plan.mode == "backward":
            start = final - present
            slices.append(slice(start, start + length))
        else:
            slices.append(slice(present - length, present))
    return slices


def decode_history(plan: SectionPlan, real_history: torch.Tensor, decode: Decode,
                   sections_done: int | None = None, progress: Callable[[int, int], None] | None = None
                   ) -> torch.Tensor:
    """Pixels (1,3,F,H,W) float32 in [-1,1] for the real history after `sections_done` sections."""
    overlap = plan.section_frames
    slices = section_slices(plan, sections_done)
    pixels = None
    for k, frames in enumerate(slices):
        current = decode(real_history[:, :, frames]).float().cpu()
        if pixels is None:
            pixels = current
        elif plan.mode == "backward":
            pixels = soft_append(current, pixels, overlap)
        else:
            pixels = soft_append(pixels, current, overlap)
        if progress is not None:
            progress(k + 1, len(slices))
    return pixels


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """(1,3,F,H,W) in [-1,1] -> (F,H,W,3) uint8, the way FramePack writes its MP4s."""
    scaled = pixels.float().clamp(-1.0, 1.0) * 127.5 + 127.5
    return scaled.to(torch.uint8)[0].permute(1, 2, 3, 0).contiguous()
