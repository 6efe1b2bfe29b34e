"""FramePack's section plan: how many sections, their order, their frame indices and context.

Two modes:
- backward: the original FramePack I2V ("inverted anti-drifting"). Sections are generated from the
  end of the video towards its start; the start latent is the 1x clean context of every section and
  the newest history (which lies *later* in time) gives the 1x/2x/4x context. Each section is told
  how far it is from the start through a block of blank indices (the latent padding).
- f1: forward generation. History is appended at the end and the last 16+2+1 latent frames give the
  4x/2x/1x context.
All of this is bookkeeping on index ranges; nothing here touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..params import FPS

LATENT_CHANNELS = 16
SPATIAL_SCALE = 8  # VAE pixels per latent pixel
TEMPORAL_SCALE = 4  # VAE pixel frames per latent frame
CONTEXT_SIZES = (1, 2, 16)  # 1x, 2x, 4x clean history frames
CONTEXT_FRAMES = sum(CONTEXT_SIZES)


def section_count(seconds: float, lws: int) -> int:
    """FramePack's rule: sections of `lws * 4` pixel frames at 30 fps, rounded, at least one."""
    return int(max(round(seconds * FPS / (lws * TEMPORAL_SCALE)), 1))


def latent_paddings(total_sections: int) -> list[int]:
    """Backward mode's padding schedule, one entry per section in generation order.

    The padding (in windows) tells the model how far the section lies from the start frame; beyond
    four sections FramePack caps it at 3 then 2, ending on 1 and 0 (0 marks the final section).
    """
    if total_sections > 4:
        return [3] + [2] * (total_sections - 3) + [1, 0]
    return list(reversed(range(total_sections)))


@dataclass(frozen=True)
class SectionLayout:
    """Frame indices (1-D, as the transformer takes them) for one section."""

    latent_indices: torch.Tensor
    clean_indices: torch.Tensor
    clean_2x_indices: torch.Tensor
    clean_4x_indices: torch.Tensor


@dataclass(frozen=True)
class SectionPlan:
    """The fixed shape of a job: mode, window, number of sections and the latent grid."""

    mode: str
    lws: int
    total_sections: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.mode not in ("backward", "f1"):
            raise InputError(f"unknown mode {self.mode!r}: use backward or f1")
        if self.lws < 1 or self.total_sections < 1:
            raise InputError("a plan needs a latent window and at least one section")
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise InputError(f"frame size must be a positive multiple of 16, got {self.width}x{self.height}")

    # -- shapes -------------------------------------------------------------------------------
    @property
    def latent_height(self) -> int:
        return self.height // SPATIAL_SCALE

    @property
    def latent_width(self) -> int:
        return self.width // SPATIAL_SCALE

    @property
    def section_frames(self) -> int:
        """Pixel frames one section window covers (`lws * 4 - 3`)."""
        return self.lws * TEMPORAL_SCALE - 3

    def noise_shape(self) -> tuple[int, ...]:
        """Shape of the latent one section samples (and of the noise drawn for it)."""
        return (1, LATENT_CHANNELS, self.lws, self.latent_height, self.latent_width)

    def initial_history_frames(self) -> int:
        """Frames in the history buffer before the first section (zero padding, plus start in f1)."""
        return CONTEXT_FRAMES + (1 if self.mode == "f1" else 0)

    def initial_history(self, start_latent: torch.Tensor) -> torch.Tensor:
        """The history buffer before the first section: zero context, plus the start latent in f1."""
        zeros = torch.zeros(1, LATENT_CHANNELS, CONTEXT_FRAMES, self.latent_height, self.latent_width)
        return torch.cat([zeros, start_latent.float()], dim=2) if self.mode == "f1" else zeros

    def generated_frames_after(self, sections_done: int) -> int:
        """Real (non-padding) latent frames in the history after `sections_done` sections."""
        if self.mode == "f1":
            return 1 + sections_done * self.lws
        done = sections_done * self.lws
        return done + 1 if sections_done == self.total_sections else done

    def history_frames_after(self, sections_done: int) -> int:
        """Size of the whole history buffer (padding included) after `sections_done` sections."""
        return self.generated_frames_after(sections_done) + CONTEXT_FRAMES

    @property
    def total_latent_frames(self) -> int:
        return self.generated_frames_after(self.total_sections)

    @property
    def total_pixel_frames(self) -> int:
        return (self.total_latent_frames - 1) * TEMPORAL_SCALE + 1

    # -- per-section layout ---------------------------------------------------------------------
    def is_last(self, section: int) -> bool:
        return section == self.total_sections - 1

    def layout(self, section: int) -> SectionLayout:
        """Index split of FramePack for `section` (0-based, in generation order)."""
        self._check_section(section)
        if self.mode == "backward":
            pad = latent_paddings(self.total_sections)[section] * self.lws
            sizes = [1, pad, self.lws, *CONTEXT_SIZES]
            pre, _blank, latent, post, two, four = torch.arange(sum(sizes)).split(sizes)
            return SectionLayout(latent, torch.cat([pre, post]), two, four)
        sizes = [1, *reversed(CONTEXT_SIZES), self.lws]
        start, four, two, one, latent = torch.arange(sum(sizes)).split(sizes)
        return SectionLayout(latent, torch.cat([start, one]), two, four)

    def context(self, history: torch.Tensor, start_latent: torch.Tensor):
        """Clean 1x (start + newest frame), 2x and 4x context latents for the next section."""
        if self.mode == "backward":
            one, two, four = history[:, :, :CONTEXT_FRAMES].split(list(CONTEXT_SIZES), dim=2)
        else:
            four, two, one = history[:, :, -CONTEXT_FRAMES:].split(list(reversed(CONTEXT_SIZES)), dim=2)
        clean = torch.cat([start_latent.to(history), one], dim=2)
        return clean, two, four

    def append(self, history: torch.Tensor, generated: torch.Tensor, start_latent: torch.Tensor,
               section: int) -> torch.Tensor:
        """History after `section` produced `generated`: prepended (backward) or appended (f1).

        The final backward section also brings the start latent in front, so the video begins on
        the input image.
        """
        generated = generated.to(history)
        if self.mode == "f1":
            return torch.cat([history, generated], dim=2)
        if self.is_last(section):
            generated = torch.cat([start_latent.to(history), generated], dim=2)
        return torch.cat([generated, history], dim=2)

    def real_history(self, history: torch.Tensor, sections_done: int) -> torch.Tensor:
        """The generated latent frames without the zero padding, in video order."""
        n = self.generated_frames_after(sections_done)
        return history[:, :, :n] if self.mode == "backward" else history[:, :, -n:]

    def extended(self, extra_sections: int) -> "SectionPlan":
        """The same plan with more sections: only forward (f1) generation can grow."""
        if self.mode != "f1":
            raise InputError(
                "backward (original FramePack) jobs generate the video from its end towards the "
                "input image, so their length is fixed when they start; resume completes the "
                "original plan. Use mode f1 to extend a video."
            )
        if extra_sections < 0:
            raise InputError("additional length must not be negative")
        return SectionPlan(self.mode, self.lws, self.total_sections + extra_sections, self.height, self.width)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "lws": self.lws, "total_sections": self.total_sections,
                "height": self.height, "width": self.width}

    @classmethod
    def from_dict(cls, data: dict) -> "SectionPlan":
        if not isinstance(data, dict):
            raise InputError("plan must be a JSON object")
        keys = ("mode", "lws", "total_sections", "height", "width")
        if sorted(data) != sorted(keys):
            raise InputError(f"plan must have exactly the keys {', '.join(keys)}")
        for key in keys[1:]:
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise InputError(f"plan.{key} must be a whole number")
        if not isinstance(data["mode"], str):
            raise InputError("plan.mode must be text")
        if data["lws"] > 33 or data["total_sections"] > 10_000 or max(data["height"], data["width"]) > 4096:
            raise InputError("plan is out of range")
        return cls(**data)

    def _check_section(self, section: int) -> None:
        if not 0 <= section < self.total_sections:
            raise InputError(f"section {section} is outside the plan's {self.total_sections} sections")
