"""Branching a saved job: continue it with other settings for the sections still to come.

`branch_job(state, changes, encoders)` turns a snapshot of a paused job into a new job (its own id)
whose remaining sections use the changed settings; what was generated stays as it is. What may
change and what it means:

- prompt: the sections still to come use the new prompt. The job's prompt becomes the timed prompt
  that says so (the old prompt for the sections done, the new one from the branch point on, see
  `sampling.timed`), so the branched job equals a fresh job with that timed prompt.
- negative_prompt, cfg, gs, rs, teacache, teacache_threshold, crf: from the branch point on.
- seed: the job's generator (one per job, drawn once per section) is seeded anew with it at the
  branch point, so the next section's noise is the first draw of that seed.
- steps, sampler: only at a section boundary. Mid-section the sampler's state belongs to the old
  schedule (the sigmas follow from the steps, the remembered outputs from the sampler), so such a
  branch is refused with the fix: branch from a file saved at a section boundary.

The job's shape cannot change: mode, lws, resolution and (backward) seconds define the saved
latents, so changing them is refused with the reason. Without any real change nothing happens: the
job keeps its id and continues bit-exactly. The new job records `lineage` (parent and root job ids,
the section and step it branched at, {setting: [old, new]}), written to its resume files.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..params import JobParams
from ..sampling import JobState, splice_prompt
from .conditioning import Encoders, update_conditioning

BRANCHABLE = ("prompt", "negative_prompt", "seed", "steps", "cfg", "gs", "rs", "sampler", "teacache",
              "teacache_threshold", "crf")
SHAPE = {
    "mode": "the saved latents were generated in this mode's section order",
    "lws": "the saved history and sampler latents have this latent window's shape",
    "resolution": "the saved latents have this resolution's frame size",
    "seconds": "the plan's sections are fixed by it (f1 jobs grow with additional seconds instead)",
}
SECTION_BOUND = ("steps", "sampler")  # the sampler state mid-section belongs to these
# A mid-section branch that changes one of these drops TeaCache's caches of the section (they hold the
# old model inputs' residuals); the rest of that section runs without skipping.
MODEL_INPUTS = ("prompt", "negative_prompt", "cfg", "gs", "rs", "teacache", "teacache_threshold")


def branch_changes(params: JobParams, requested: dict) -> dict[str, list]:
    """{setting: [old, new]} for the requested settings that differ (the prompt as given: `branch_job` splices it).

    InputError for a setting that is not a job setting or one that defines the job's shape.
    """
    changes = {}
    for name, value in requested.items():
        if value is None or (params.prompt_source == "native" and name in ("prompt", "negative_prompt")):
            continue  # a natively conditioned job's prompt is its CONDITIONING input, never a text goan saw
        if name in SHAPE:
            if value != getattr(params, name):
                raise InputError(f"cannot change {name} ({getattr(params, name)!r} -> {value!r}) when continuing a "
                                 f"job: {SHAPE[name]}. Start a new job for another {name}")
            continue
        if name not in BRANCHABLE:
            raise InputError(f"{name!r} is not a setting a branch can change (those are {', '.join(BRANCHABLE)})")
        old = getattr(params, name)
        if isinstance(old, float) and not isinstance(value, bool):
            value = float(value)
        if value != old:
            changes[name] = [old, value]
    return changes


def branch_job(state: JobState, requested: dict, encoders: Encoders, *, job_id: str) -> dict[str, list]:
    """Apply `requested` settings to `state` (a snapshot, changed in place) from its position on.

    Returns the changes made ({} when none: `state` is untouched); a branch becomes job `job_id`. The
    new prompt and negative prompt are encoded with `encoders` (text encoders are needed only when
    these change). A state read without embeddings (conditioning None) is left for the caller to
    encode with the new settings.
    """
    params = state.params
    changes = branch_changes(params, requested)
    if "prompt" in changes:
        spliced = splice_prompt(params.prompt, changes["prompt"][1], state.plan, state.section)
        if spliced == params.prompt:
            del changes["prompt"]
        else:
            changes["prompt"][1] = spliced
    if not changes:
        return {}
    mid_section = state.sampler is not None
    bound = [name for name in SECTION_BOUND if name in changes]
    if mid_section and bound:
        raise InputError(
            f"cannot change {' and '.join(bound)} in the middle of section {state.section + 1} (step "
            f"{state.step_in_section} of {params.steps}): its sampler state belongs to the old "
            f"{' and '.join(bound)}. Branch from a resume file saved at a section boundary (autosaves are), "
            f"or keep {' and '.join(bound)}")
    new_params = JobParams.from_dict({**params.to_dict(), **{k: new for k, (_, new) in changes.items()}})
    if state.conditioning is not None:
        state.conditioning = update_conditioning(state.conditioning, params, new_params, encoders)
    if "seed" in changes:
        state.generator_state = torch.Generator("cpu").manual_seed(new_params.seed).get_state()
    if mid_section and any(name in changes for name in MODEL_INPUTS):
        state.teacache = None
    parent = state.job_id
    root = state.lineage["root"] if state.lineage else parent
    state.lineage = {"parent": parent, "root": root, "section": state.section, "step": state.step_in_section,
                     "changes": changes}
    state.params = new_params
    state.job_id = job_id
    return changes
