"""The FramePack section loop as a state machine: `Engine.step(state)` does one denoising step.

A step may open a section (draw its noise from the job's generator, which is the only consumer of
that generator) and may close it (put the clean latent into the history). Between two steps the
`JobState` is complete and consistent: that is what pause, autosave and resume rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import NonFiniteError
from .denoiser import Denoiser, SectionInputs
from .samplers import sampler_result, sampler_step
from .schedule import sigma_schedule
from .state import JobState, SamplerState
from .endframe import section_conditioning, with_end_latent
from .teacache import supports


@dataclass(frozen=True)
class StepEvent:
    """What a step callback receives after every denoising step."""

    section: int  # the section this step belonged to (generation order)
    step: int  # steps done in that section after this step (1..steps)
    steps: int
    total_sections: int
    steps_done: int  # over the whole job
    total_steps: int
    denoised: torch.Tensor  # current data prediction of the section (float32 CPU), for previews
    section_finished: bool
    skipped: int = 0  # model calls TeaCache skipped over the whole job so far


StepCallback = Callable[[StepEvent], None]


def draw_section_noise(shape: tuple[int, ...], generator_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A section's starting noise from the job's generator, and the generator's state afterwards."""
    generator = torch.Generator("cpu")
    generator.set_state(generator_state)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise, generator.get_state()


@dataclass(frozen=True)
class SectionKey:
    """What a section's denoiser and sigmas are built from; the cache holds these very objects.

    Tensors of a JobState are never changed in place (see `JobState.snapshot`), so the same
    objects (compared with `is`) mean the same values. Holding them keeps them alive, so an
    identity can never be reused by another tensor while the cache entry exists.
    """

    history: torch.Tensor
    start_latent: torch.Tensor
    conditioning: object
    section: int
    plan: object
    settings: tuple

    @classmethod
    def of(cls, state: JobState) -> "SectionKey":
        params = state.params
        return cls(state.history_latents, state.start_latent, state.conditioning, state.section, state.plan,
                   (params.steps, params.cfg, params.gs, params.rs, params.end_strength, params.end_embeds))

    def matches(self, other: "SectionKey") -> bool:
        return (self.history is other.history and self.start_latent is other.start_latent
                and self.conditioning is other.conditioning and self.section == other.section
                and self.plan == other.plan and self.settings == other.settings)


def _require_finite(state: JobState, step: int, **tensors: torch.Tensor) -> None:
    """Raise NonFiniteError when a tensor a step made holds NaN or Inf (one min/max pass, no copy)."""
    for name, tensor in tensors.items():
        if tensor.numel() and not all(math.isfinite(float(v)) for v in torch.aminmax(tensor.detach())):
            raise NonFiniteError(
                f"job {state.job_id}: step {step} of section {state.section} turned the sampler's {name} into "
                "NaN or Inf values, so sampling stopped and this step was not kept. The last good state is in "
                "the fail-safe resume file. Usual causes: a dtype that overflows (try bfloat16 or float32), "
                "damaged model weights, or extreme settings (cfg, distilled cfg).")


class Engine:
    """Runs job states on one transformer, on `device` in `dtype`."""

    def __init__(self, transformer, device: torch.device, dtype: torch.dtype):
        self.transformer = transformer
        self.device = device
        self.dtype = dtype
        self.model_calls = 0  # transformer calls made (skipped ones included)
        self.skipped_calls = 0  # of those, calls whose block stack TeaCache skipped
        self.teacache_supported = supports(transformer)
        self._cache_key: SectionKey | None = None
        self._cache = None

    def _section(self, state: JobState):
        """Denoiser and sigmas of the state's current section (rebuilt when what they depend on changes)."""
        key = SectionKey.of(state)
        if self._cache_key is None or not key.matches(self._cache_key):
            plan, params = state.plan, state.params
            clean, clean_2x, clean_4x = plan.context(state.history_latents, state.start_latent)
            if state.end_latent is not None and state.section == 0:
                clean = with_end_latent(clean, state.end_latent, params.end_strength)
            to = dict(device=self.device)
            inputs = SectionInputs(plan.layout(state.section), clean.to(**to), clean_2x.to(**to),
                                   clean_4x.to(**to))
            denoiser = Denoiser(self.transformer, section_conditioning(state), inputs, cfg=params.cfg, gs=params.gs,
                                rs=params.rs, device=self.device, dtype=self.dtype)
            sigmas = sigma_schedule(params.steps, plan.noise_shape(),
                                    getattr(self.transformer.config, "patch_size", 2))
            self._cache_key, self._cache = key, (denoiser, sigmas)
        return self._cache

    def step(self, state: JobState) -> StepEvent:
        """Advance `state` in place by one denoising step and describe what happened.

        The state is changed only after the step succeeded, so an exception (an interrupt, an
        out-of-memory error, NaN or Inf values: `NonFiniteError`) leaves it exactly as it was before
        the step: still consistent, and what the fail-safe file then holds.
        """
        if state.done:
            raise RuntimeError(f"job {state.job_id} has no sections left to sample")
        if state.conditioning is None:
            raise RuntimeError(f"job {state.job_id} has no prompt/image embeddings; encode them first")
        denoiser, sigmas = self._section(state)
        sampler, generator_state = state.sampler, state.generator_state
        if sampler is None:
            noise, generator_state = draw_section_noise(state.plan.noise_shape(), generator_state)
            sampler = SamplerState(noise, 0, [])
        params = state.params
        # TeaCache starts afresh with each section; a section begun without it goes on without it
        use_cache = params.teacache and self.teacache_supported
        denoiser.teacache = (({} if sampler.step == 0 else state.teacache) if use_cache else None)
        denoiser.teacache_steps, denoiser.teacache_threshold = params.steps, params.teacache_threshold
        calls_before, skipped_before = denoiser.calls, denoiser.skipped
        sampler = sampler_step(params.sampler, denoiser, sampler, sigmas)
        self.model_calls += denoiser.calls - calls_before
        skipped = denoiser.skipped - skipped_before
        self.skipped_calls += skipped

        section, steps = state.section, state.params.steps
        denoised = sampler.model_outputs[-1] if sampler.model_outputs else sampler.x
        finished = sampler.step == steps
        _require_finite(state, sampler.step, latent=sampler.x, prediction=denoised)
        history = None
        if finished:
            clean = sampler_result(state.params.sampler, sampler)
            _require_finite(state, sampler.step, result=clean)
            history = state.plan.append(state.history_latents, clean, state.start_latent, section)
        # every check passed: only now does the state change
        state.generator_state = generator_state
        state.skipped_calls += skipped
        if finished:
            state.history_latents, state.section, state.sampler, state.teacache = history, section + 1, None, None
        else:
            state.sampler, state.teacache = sampler, denoiser.teacache
        return StepEvent(section, sampler.step, steps, state.plan.total_sections,
                         section * steps + sampler.step, state.total_steps, denoised, finished, state.skipped_calls)

    def run(self, state: JobState, callback: StepCallback | None = None,
            should_stop: Callable[[JobState], bool] | None = None) -> JobState:
        """Step until the job is done or `should_stop(state)` says so (checked before every step)."""
        while not state.done:
            if should_stop is not None and should_stop(state):
                break
            event = self.step(state)
            if callback is not None:
                callback(event)
        return state
