"""End frame (backward mode): what a section sees of the end image, and each section's embeddings.

Backward mode generates the video from its end towards the start image. Its first generated section
(the last in time) has, in the "post" slot of its 1x clean context, only the zero padding of an empty
history. FramePack-derived tools (FramePack-Studio, kijai's wrapper) put an end image's latent there,
so the video ends on that image; `end_strength` scales it (1: the latent itself, 0: no end frame).
Optionally the image embedding moves from the start image's towards the end image's over the video:
a section at fraction p of the video (0 at its start, 1 at its last section) uses
lerp(start, end, end_embeds * p).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import InputError
from .plan import SectionPlan
from .state import Conditioning, JobState
from .timed import section_prompt


def check_end_image_mode(mode: str) -> None:
    """InputError unless `mode` can have an end image (backward: it generates the video's end first)."""
    if mode != "backward":
        raise InputError("an end image needs mode backward: only backward generation starts from the video's end "
                         "(f1 generates forward from the start image)")


def with_end_latent(clean: torch.Tensor, end_latent: torch.Tensor, strength: float) -> torch.Tensor:
    """The 1x clean context (start, post) with the end latent, scaled by `strength`, mixed into post."""
    post = clean[:, :, 1:2]
    mixed = strength * end_latent.to(post) + (1.0 - strength) * post
    return torch.cat([clean[:, :, :1], mixed], dim=2)


def video_fraction(plan: SectionPlan, section: int) -> float:
    """Where `section` (generation order) lies in the video: 0 for the first section in time, 1 for the last."""
    if plan.total_sections == 1:
        return 1.0
    in_video = section if plan.mode == "f1" else plan.total_sections - 1 - section
    return in_video / (plan.total_sections - 1)


def section_conditioning(state: JobState) -> Conditioning:
    """The embeddings the state's current section uses: its timed prompt, and the end image blended in."""
    params, plan = state.params, state.plan
    conditioning = state.conditioning.for_prompt(section_prompt(params.prompt, plan, state.section))
    end = conditioning.end_image_embeds
    if end is None or params.end_embeds == 0:
        return conditioning
    weight = params.end_embeds * video_fraction(plan, state.section)
    return replace(conditioning, image_embeds=torch.lerp(conditioning.image_embeds, end.to(conditioning.image_embeds),
                                                          weight))
