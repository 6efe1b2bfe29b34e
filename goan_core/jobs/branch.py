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
- end frame (backward mode, `sampling.endframe`): the end image and `end_strength` condition only the
  first generated section (the video's end), so they change only until that section is done;
  `end_embeds` blends the end image's embedding into each section by its place in the video (none into
  the video's first), so it changes while a section still to come takes some of it. Otherwise, and on
  a job without an end image, a change is refused with the reason, never ignored.

The job's shape cannot change: mode, lws, resolution and (backward) seconds define the saved
latents, so changing them is refused with the reason. Every new value passes the checks a new job's
settings pass, with the same messages (`JobParams`, `resumefile.check_prompts`), in `plan_branch`,
which front ends reach through `branch_changes` before any model work. Without any real change nothing happens: the job keeps
its id and continues bit-exactly. The new job records `lineage` (parent and root job ids, the section
and step it branched at, {setting: [old, new]}), written to its resume files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputError
from ..media import resize_and_center_crop
from ..params import MAX_PROMPT_CHARS, JobParams
from ..resumefile import check_prompts
from ..sampling import Conditioning, JobState, check_end_image_mode, splice_prompt, video_fraction
from .conditioning import Encoders, update_conditioning

BRANCHABLE = ("prompt", "negative_prompt", "seed", "steps", "cfg", "gs", "rs", "sampler", "teacache",
              "teacache_threshold", "crf", "end_strength", "end_embeds")
END_IMAGE = "end_image"  # requested as an uint8 HxWx3 image; `changes` holds sha256 digests of its cropped pixels
SHAPE = {
    "mode": "the saved latents were generated in this mode's section order",
    "lws": "the saved history and sampler latents have this latent window's shape",
    "resolution": "the saved latents have this resolution's frame size",
    "seconds": "the plan's sections are fixed by it (f1 jobs grow with additional seconds instead)",
}
SECTION_BOUND = ("steps", "sampler")  # the sampler state mid-section belongs to these
FIRST_SECTION = (END_IMAGE, "end_strength")  # condition only the first generated section
# A mid-section branch that changes one of these drops TeaCache's caches of the section (they hold the
# old model inputs' residuals); the rest of that section runs without skipping.
MODEL_INPUTS = ("prompt", "negative_prompt", "cfg", "gs", "rs", "teacache", "teacache_threshold", "end_strength",
                "end_embeds", END_IMAGE)


@dataclass
class Branch:
    """A checked branch: `changes` as the lineage records them ({setting: [old, new]}, the prompt spliced),
    the job's settings after it and its end image (cropped to the frame; None: the job has none)."""

    changes: dict[str, list]
    params: JobParams
    end_image: np.ndarray | None


def _requested_changes(params: JobParams, requested: dict) -> dict[str, list]:
    """{setting: [old, new]} for the requested settings that differ (the end image aside).

    InputError for a setting that is not a job setting or one that defines the job's shape.
    """
    changes = {}
    for name, value in requested.items():
        if value is None or name == END_IMAGE:
            continue
        if params.prompt_source == "native" and name in ("prompt", "negative_prompt") and value != getattr(params, name):
            what = name.replace("_", " ")
            raise InputError(f"this job was conditioned natively (a ComfyUI CONDITIONING made elsewhere): its {what} "
                             f"is its saved embeddings, not a text goan can change or splice. Continue it without a "
                             f"{what}, or start a new job for another one")
        if name in SHAPE:
            if value != getattr(params, name):
                raise InputError(f"cannot change {name} ({getattr(params, name)!r} -> {value!r}) when continuing a "
                                 f"job: {SHAPE[name]}. Start a new job for another {name}")
            continue
        if name not in BRANCHABLE:
            raise InputError(f"{name!r} is not a setting a branch can change (those are "
                             f"{', '.join(BRANCHABLE + (END_IMAGE,))})")
        old = getattr(params, name)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value != old:
            changes[name] = [old, value]
    return changes


def _digest(image: np.ndarray | None) -> str:
    return "" if image is None else hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _end_image_change(state: JobState, image: np.ndarray) -> tuple[np.ndarray, list | None]:
    """The requested end image cropped to the job's frame (as `create_job` crops it), and [old, new]
    digests when it differs from the job's end image (None when it is the same)."""
    cropped = resize_and_center_crop(image, state.plan.width, state.plan.height)
    if state.end_image is not None and np.array_equal(cropped, state.end_image):
        return state.end_image, None
    check_end_image_mode(state.params.mode)
    return cropped, [_digest(state.end_image), _digest(cropped)]


def _check_end_frame(state: JobState, changes: dict, end_image: np.ndarray | None) -> None:
    """Refuse an end-frame change that would change nothing, with the reason."""
    touched = [name for name in (END_IMAGE, "end_strength", "end_embeds") if name in changes]
    if not touched:
        return
    if end_image is None:
        raise InputError(f"this job has no end image, so {' and '.join(touched)} would change nothing: give an end "
                         "image too (backward mode, before its first generated section is done) or start a new job")
    first = [name for name in FIRST_SECTION if name in changes]
    if first and state.section > 0:
        what = " and ".join("the end image" if name == END_IMAGE else name for name in first)
        raise InputError(f"{what} only condition{'s' if len(first) == 1 else ''} the first generated section (the "
                         f"video's end), which this job finished; start a new job for another {what}")
    remaining = range(state.section, state.plan.total_sections)
    if "end_embeds" in changes and not any(video_fraction(state.plan, k) > 0 for k in remaining):
        raise InputError("end_embeds blends the end image's embedding into each section by its place in the video "
                         "(none into the video's first), and no section left to generate takes any of it; start a "
                         "new job for another end_embeds")


def _check_mid_section(state: JobState, changes: dict) -> None:
    bound = [name for name in SECTION_BOUND if name in changes]
    if state.sampler is not None and bound:
        names = " and ".join(bound)
        raise InputError(
            f"cannot change {names} in the middle of section {state.section + 1} (step {state.step_in_section} of "
            f"{state.params.steps}): its sampler state belongs to the old {names}. Branch from a resume file saved "
            f"at a section boundary (autosaves are), or keep {names}")


def _with_new(params: JobParams, changes: dict) -> JobParams:
    """`params` with the changed settings, validated as a new job's are, with the same messages."""
    new = JobParams.from_dict({**params.to_dict(), **{k: v for k, (_, v) in changes.items() if k != END_IMAGE}})
    check_prompts(new, [name for name in ("prompt", "negative_prompt") if name in changes])
    return new


def plan_branch(state: JobState, requested: dict) -> Branch:
    """What continuing `state` with the `requested` settings changes, checked before any model work.

    `requested` maps setting names to values (None: keep the job's) and END_IMAGE to an uint8 HxWx3
    image. InputError, with the message a new job's bad setting gets where it is one, for: a setting
    that is no setting or defines the job's shape, a value out of range, a prompt too long or not a
    valid timed prompt, steps or sampler mid-section, and an end-frame change that would change nothing.
    """
    params = state.params
    changes = _requested_changes(params, requested)
    end_image = state.end_image
    if requested.get(END_IMAGE) is not None:
        end_image, change = _end_image_change(state, requested[END_IMAGE])
        if change is not None:
            changes[END_IMAGE] = change
    new_params = _with_new(params, changes)  # the values as given, the prompt before it is spliced in
    for name in ("prompt", "negative_prompt"):
        if name in changes and len(changes[name][0]) > MAX_PROMPT_CHARS:
            raise InputError(f"this job's {name.replace('_', ' ')} is {len(changes[name][0]):,} characters long, more "
                             f"than the {MAX_PROMPT_CHARS:,} a branch records of it: branch it with its {name} kept, "
                             "or start a new job")
    if "prompt" in changes:
        spliced = splice_prompt(params.prompt, changes["prompt"][1], state.plan, state.section)
        if spliced == params.prompt:
            del changes["prompt"]
        elif len(spliced) > MAX_PROMPT_CHARS:
            raise InputError(f"the branched job's prompt (the job's prompt for the sections done, then the new one) "
                             f"would be {len(spliced):,} characters long, more than the {MAX_PROMPT_CHARS:,} a job may "
                             "have: shorten the new prompt")
        else:
            changes["prompt"][1] = spliced
        new_params = _with_new(params, changes)
    _check_mid_section(state, changes)
    _check_end_frame(state, changes, end_image)
    return Branch(changes, new_params, end_image)


def branch_changes(state: JobState, requested: dict) -> dict[str, list]:
    """{setting: [old, new]} a branch of `state` with `requested` makes ({}: none), checked (`plan_branch`)."""
    return plan_branch(state, requested).changes


def _needs_end_embeds(conditioning: Conditioning, params: JobParams, new_image: bool) -> bool:
    """Whether the end image's embedding must be made anew (or dropped: end_embeds 0 with a new image)."""
    return new_image or (params.end_embeds > 0 and conditioning.end_image_embeds is None)


def branch_encoders(state: JobState, changes: dict) -> list[str]:
    """The `Encoders` pieces a branch with `changes` encodes with ("prompt", "negative_prompt", "image"), for
    a state that carries its embeddings (one without needs every encoder anyway); the VAE aside."""
    if not changes:
        return []
    new = {name: value for name, (_, value) in changes.items()}
    params = replace(state.params, **{k: v for k, v in new.items() if k != END_IMAGE})
    needed = ["prompt"] if "prompt" in changes else []
    if params.cfg != 1 and ("negative_prompt" in changes or state.conditioning.negative_prompt_embeds is None):
        needed.append("negative_prompt")
    if params.end_embeds > 0 and _needs_end_embeds(state.conditioning, params, END_IMAGE in changes):
        needed.append("image")
    return needed


def branch_job(state: JobState, requested: dict, encoders: Encoders, *, job_id: str) -> dict[str, list]:
    """Apply `requested` settings to `state` (a snapshot, changed in place) from its position on.

    Returns the changes made ({} when none: `state` is untouched); a branch becomes job `job_id`. The
    new prompt and negative prompt are encoded with `encoders` (text encoders are needed only when
    these change), a new end image with its VAE (and image encoder, when its embedding is blended in).
    A state read without embeddings (conditioning None) is left for the caller to encode with the new
    settings.
    """
    branch = plan_branch(state, requested)
    changes, new_params = branch.changes, branch.params
    if not changes:
        return {}
    new_image = END_IMAGE in changes
    if new_image:
        state.end_image = branch.end_image
        state.end_latent = encoders.require("vae", "encoding the end image").encode_start_latent(
            branch.end_image).float()
    if state.conditioning is not None:
        conditioning = update_conditioning(state.conditioning, state.params, new_params, encoders)
        if _needs_end_embeds(conditioning, new_params, new_image):
            embeds = None if new_params.end_embeds == 0 else encoders.require(
                "image", "blending in the end image's embedding (end_embeds)").encode_image(state.end_image)
            conditioning = replace(conditioning, end_image_embeds=embeds)
        state.conditioning = conditioning
    if "seed" in changes:
        state.generator_state = torch.Generator("cpu").manual_seed(new_params.seed).get_state()
    if state.sampler is not None and any(name in changes for name in MODEL_INPUTS):
        state.teacache = None
    parent = state.job_id
    root = state.lineage["root"] if state.lineage else parent
    state.lineage = {"parent": parent, "root": root, "section": state.section, "step": state.step_in_section,
                     "changes": changes}
    state.params = new_params
    state.job_id = job_id
    return changes
