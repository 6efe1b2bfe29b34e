"""The FramePack section loop as a state machine: plan, sigma schedule, samplers, denoiser, engine, decode.

A `JobState` is advanced one denoising step at a time by `Engine.step`; between two steps it is
complete and consistent, which is what pause, autosave and resume rely on.
"""

from .decode import Decode, decode_history, section_slices, soft_append, to_uint8_frames
from .engine import Engine, StepCallback, StepEvent
from .plan import CONTEXT_FRAMES, LATENT_CHANNELS, SPATIAL_SCALE, SectionLayout, SectionPlan, section_count
from .samplers import history_length
from .state import Conditioning, JobState, SamplerState

__all__ = ["CONTEXT_FRAMES", "LATENT_CHANNELS", "SPATIAL_SCALE", "Conditioning", "Decode", "Engine", "JobState",
           "SamplerState", "SectionLayout", "SectionPlan", "StepCallback", "StepEvent", "decode_history",
           "history_length", "section_count", "section_slices", "soft_append", "to_uint8_frames"]
