"""The job as a value: everything needed to continue it exactly, and nothing else.

A `JobState` is advanced one denoising step at a time by `engine.Engine`. Between two steps it is
always consistent, so it can be copied (`snapshot`), saved, and continued anywhere. Tensors are
kept on the CPU in float32 (history, latents) so that a saved state is independent of the device
and dtype the job ran with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..params import JobParams
from .plan import SectionPlan


@dataclass
class Conditioning:
    """Prompt and image embeddings, already encoded; with them a job needs no text or image encoder.

    `prompt_embeds` is the Llama hidden state cropped and padded to 512 tokens, `prompt_mask` its
    attention mask, `pooled` the CLIP pooled output, `image_embeds` the SigLIP last hidden state.
    The negative triple is present only when real CFG is on (cfg != 1). A timed prompt (`timed`) has
    one prompt triple per segment: the first in the fields above, the others in `extra_prompts`.
    """

    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor
    pooled: torch.Tensor
    image_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    negative_prompt_mask: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None
    end_image_embeds: torch.Tensor | None = None  # the end image's, when it is blended in (`endframe`)
    extra_prompts: tuple = ()  # ((embeds, mask, pooled), ...) of prompts 1, 2, ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that are set, by name; prompt i > 0 as `prompt_embeds.i`, `prompt_mask.i`, `pooled.i`."""
        found = {k: v for k, v in self.__dict__.items() if v is not None and k != "extra_prompts"}
        for index, triple in enumerate(self.extra_prompts, 1):
            found.update({f"{name}.{index}": tensor for name, tensor in zip(PROMPT_FIELDS, triple)})
        return found

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Conditioning":
        """The inverse of `tensors` (names checked by the caller)."""
        count = 1 + sum(1 for name in tensors if name.startswith("prompt_embeds."))
        extra = tuple(tuple(tensors[f"{name}.{i}"] for name in PROMPT_FIELDS) for i in range(1, count))
        return cls(**{k: v for k, v in tensors.items() if "." not in k}, extra_prompts=extra)

    def prompts(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every prompt's (embeds, mask, pooled), in segment order."""
        return [(self.prompt_embeds, self.prompt_mask, self.pooled), *self.extra_prompts]

    def for_prompt(self, index: int) -> "Conditioning":
        """The conditioning one section sees: prompt `index` as its prompt (itself for a single prompt)."""
        if not self.extra_prompts:
            return self
        embeds, mask, pooled = self.prompts()[index]
        return replace(self, prompt_embeds=embeds, prompt_mask=mask, pooled=pooled, extra_prompts=())


PROMPT_FIELDS = ("prompt_embeds", "prompt_mask", "pooled")


@dataclass
class SamplerState:
    """The sampler inside one section: where it is and what its multistep method remembers.

    `x` is the current latent (float32, CPU), `step` the number of denoising steps done in this
    section, `model_outputs` the most recent data predictions (oldest first; the last belongs to
    step `step - 1`). Their sigmas follow from the schedule and `step`, so they are not stored.
    """

    x: torch.Tensor
    step: int
    model_outputs: list[torch.Tensor] = field(default_factory=list)

    def clone(self) -> "SamplerState":
        """A copy with its own tensors (for tests that compare against an untouched original)."""
        return SamplerState(self.x.clone(), self.step, [m.clone() for m in self.model_outputs])


@dataclass
class JobState:
    """A FramePack job between two denoising steps.

    `section` is the index (in generation order) of the section in progress or next to start;
    `sampler` is None exactly when no section is in progress (a section boundary).
    `history_latents` is the whole buffer FramePack keeps, zero padding included.
    `teacache` holds TeaCache's caches mid-section (see `teacache`).
    `generator_state` is the job's one CPU torch.Generator, which is consumed once per section when
    the section's noise is drawn. `conditioning` is None for a state read from a file saved without
    embeddings, until the prompt and image are encoded again.
    """

    job_id: str
    params: JobParams
    plan: SectionPlan
    conditioning: Conditioning | None
    start_latent: torch.Tensor
    history_latents: torch.Tensor
    generator_state: torch.Tensor
    section: int = 0
    sampler: SamplerState | None = None
    model_identity: dict = field(default_factory=dict)
    # The LoRAs the job is made with (params.LoraUse, in params.canonical_loras order); () for none.
    loras: tuple = ()
    # TeaCache's per-pass caches ("positive", "negative": teacache.PassCache) mid-section; None when
    # TeaCache is off or at a section boundary. `skipped_calls`: model calls it skipped over the job.
    teacache: dict | None = None
    skipped_calls: int = 0
    lineage: dict | None = None
    # Backward mode's optional end frame: the bucketed, cropped end image (uint8 HxWx3, written to the
    # resume file) and its latent (1,16,1,h,w), the first generated section's context (`endframe`).
    end_image: np.ndarray | None = None
    end_latent: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.section >= self.plan.total_sections

    @property
    def step_in_section(self) -> int:
        return 0 if self.sampler is None else self.sampler.step

    @property
    def steps_done(self) -> int:
        """Denoising steps done over the whole job."""
        return self.section * self.params.steps + self.step_in_section

    @property
    def total_steps(self) -> int:
        return self.plan.total_sections * self.params.steps

    def held_tensors(self) -> list[torch.Tensor]:
        """Every tensor this state holds (history, latents, generator, sampler, embeddings, TeaCache):
        what it costs in memory, e.g. for ComfyUI's RAM-pressure cache (see nodes/types.py)."""
        held = [self.history_latents, self.start_latent, self.generator_state]
        if self.sampler is not None:
            held += [self.sampler.x, *self.sampler.model_outputs]
        if self.conditioning is not None:
            held += list(self.conditioning.tensors().values())
        for cache in (self.teacache or {}).values():
            held += [t for t in (cache.modulated, cache.residual) if t is not None]
        return held

    def release_device(self) -> None:
        """Move what a run kept on the compute device (TeaCache's caches) back to the CPU."""
        if self.teacache is not None:
            self.teacache = {name: cache.on_host() for name, cache in self.teacache.items()}

    def snapshot(self) -> "JobState":
        """An independent copy, made in microseconds: safe to hand to a writer thread or to advance.

        The copy shares the tensors, which is safe because no tensor of a JobState is ever
        modified in place: every step builds new tensors (noise, sampler latents, the extended
        history, the generator state) and assigns them. Only the containers are copied, so
        advancing either state never changes the other. Code that changes a state's tensors must
        assign new ones too.
        """
        return replace(
            self,
            conditioning=None if self.conditioning is None else replace(self.conditioning),
            sampler=None if self.sampler is None else replace(self.sampler, model_outputs=list(self.sampler.model_outputs)),
            params=replace(self.params),
            model_identity=dict(self.model_identity),
            teacache=None if self.teacache is None else dict(self.teacache),
            lineage=None if self.lineage is None else copy.deepcopy(self.lineage),
        )
