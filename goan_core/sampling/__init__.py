"""The FramePack section loop as a state machine: plan, sigma schedule, samplers, denoiser, engine, decode.

A `JobState` is advanced one denoising step at a time by `Engine.step`; between two steps it is
complete and consistent, which is what pause, autosave and resume rely on.
"""

from .decode import Decode, decode_history, section_slices, soft_append, to_uint8_frames
from .endframe import check_end_image_mode, video_fraction
from .engine import Engine, StepCallback, StepEvent
from .plan import CONTEXT_FRAMES, LATENT_CHANNELS, SPATIAL_SCALE, SectionLayout, SectionPlan, section_count
from .samplers import history_length
from .state import PROMPT_FIELDS, Conditioning, JobState, SamplerState
from .timed import format_timed_prompt, parse_timed_prompt, section_prompt, section_seconds, splice_prompt

__all__ = ["CONTEXT_FRAMES", "LATENT_CHANNELS", "PROMPT_FIELDS", "SPATIAL_SCALE", "Conditioning", "Decode", "Engine",
           "JobState", "SamplerState", "SectionLayout", "SectionPlan", "StepCallback", "StepEvent", "check_end_image_mode",
           "decode_history", "format_timed_prompt", "history_length", "parse_timed_prompt", "section_count",
           "section_prompt", "section_seconds", "section_slices", "soft_append", "splice_prompt", "to_uint8_frames",
           "video_fraction"]
