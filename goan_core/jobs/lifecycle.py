"""The one job lifecycle every front end uses: create or continue, run, render.

    create_job(params, image, encoders)        a new job at section 0
    continue_job(state, source, encoders)      a saved job made ready to go on (optionally longer)
    run_job(job, transformer, settings)        sample with pause, stop, autosave and fail-safe saves
                                               (attention and compile as `settings` say: run_attention)
    render_frames(state, vae)                  the video frames of what was generated

The CLI and the ComfyUI sampler node call exactly these; they differ only in where the models and
embeddings come from (`Encoders`) and how they report progress (the callbacks of `run_job`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..media import nearest_bucket, resize_and_center_crop
from ..models import (COMPILE_BACKEND, DEFAULT_GPU_MEMORY_PRESERVATION, AttentionChoice, Transformer, attention_for,
                      check_compiler, identity_mismatch, lora_difference)
from ..params import JobParams, LoraUse, canonical_loras
from ..resumefile import RetentionFolder, check_job
from ..sampling import (Engine, JobState, SectionPlan, StepCallback, check_end_image_mode, decode_history, section_count,
                        to_uint8_frames)
from ..vocabulary import Status
from .branch import branch_job
from .conditioning import Encoders, LatentCodec, build_conditioning
from .control import JobControl
from .runner import AutosavePolicy, JobSaver, RunResult, SavedCallback, sample_job


@dataclass
class Job:
    """A job between two steps and what its resume files carry besides the state."""

    state: JobState
    source_image: np.ndarray  # the bucketed, cropped start image
    workflow: dict | None = None  # the ComfyUI graph that made it, if any


@dataclass
class RunSettings:
    """Where a run writes its resume files and how often.

    Files go to `output_dir/goan_resume/<job id>/`, the newest `keep_last` kept, autosaves as hidden
    files with `hide_autosaves` (ComfyUI: see resumefile.retention); `pause_at`
    (section, step) pauses there (scripted runs, tests, the demo). `gpu_memory_preservation` is
    FramePack's: GB to keep free on the compute device; transformer blocks that do not fit in the
    rest stream per forward pass (`models.offload`). `accelerator` stands in for the device (the
    counting fake of tests and benches).

    Speed: `attention` (models.ATTENTION_CHOICES) is resolved per run against the transformer's device
    (`run_attention`); `compile` runs the transformer's blocks through torch.compile by
    `compile_backend` (tests and benches use "eager": the wiring without inductor's compile time).
    Neither is part of the job: a resume file notes them in job_info's informational "run" field, and
    a resumed run uses its own (another backend there gives close, not bit-identical, results).
    """

    output_dir: Path
    keep_last: int = 3
    autosave: AutosavePolicy | None = None
    include_embeddings: bool = True
    pause_at: tuple[int, int] | None = None
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION
    accelerator: object | None = None
    attention: str = "auto"
    compile: bool = False
    compile_backend: str = COMPILE_BACKEND
    hide_autosaves: bool = False


def run_attention(transformer: Transformer, settings: RunSettings) -> AttentionChoice:
    """The attention kernel a run of `transformer` under `settings` uses; InputError when the settings'
    attention or compile cannot run on its device (front ends call this before any encoding, to fail fast)."""
    if settings.compile:
        check_compiler(transformer.device, settings.compile_backend)
    return attention_for(settings.attention, transformer.device, transformer.dtype)


def new_job_id() -> str:
    """Sortable and unique: UTC time plus a random suffix, safe in file names."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def create_job(params: JobParams, image: np.ndarray, encoders: Encoders, *, identity: dict,
               loras: tuple[LoraUse, ...] = (), job_id: str | None = None, workflow: dict | None = None,
               end_image: np.ndarray | None = None) -> Job:
    """A new job at section 0 from an uint8 HxWx3 image: bucketed and cropped, encoded, seeded.

    `identity` is the transformer's (`Transformer.identity()`); with the encoders' dtypes
    (`Encoders.identity()`) it is recorded in every resume file, as are `loras`
    (`Transformer.lora_uses()`: name, sha256 and strength of each LoRA). The job's params are
    `params` as `build_conditioning` records them (native conditioning: no prompt text). `end_image`
    (backward mode only) is cropped to the start image's frame and encoded: the video ends on it
    (`sampling.endframe`).
    """
    height, width = nearest_bucket(image.shape[0], image.shape[1], params.resolution)
    source = resize_and_center_crop(image, width, height)
    plan = SectionPlan(params.mode, params.lws, section_count(params.seconds, params.lws), height, width)
    check_job(params, plan)  # refuse at once what a resume file of this job could not hold
    end, end_latent = None, None
    if end_image is not None:
        check_end_image_mode(params.mode)
        end = resize_and_center_crop(end_image, width, height)
        end_latent = encoders.require("vae", "encoding the end image").encode_start_latent(end).float()
    conditioning, params = build_conditioning(params, source, encoders, end_image=end)
    start_latent = encoders.require("vae", "encoding the start image").encode_start_latent(source).float()
    state = JobState(
        job_id=job_id or new_job_id(),
        params=params,
        plan=plan,
        conditioning=conditioning,
        start_latent=start_latent,
        history_latents=plan.initial_history(start_latent),
        generator_state=torch.Generator("cpu").manual_seed(params.seed).get_state(),
        model_identity={**identity, **encoders.identity()},
        loras=canonical_loras(loras),
        end_image=end,
        end_latent=end_latent,
    )
    return Job(state, source, workflow)


def extend_job(state: JobState, additional_seconds: float) -> None:
    """Add `additional_seconds` of video to a forward (f1) job in place; backward jobs explain why not."""
    if additional_seconds <= 0:
        return
    state.plan = state.plan.extended(section_count(additional_seconds, state.plan.lws))
    state.params.seconds = state.params.seconds + additional_seconds
    check_job(state.params, state.plan)


def continue_job(state: JobState, source_image: np.ndarray, encoders: Encoders, *, identity: dict,
                 loras: tuple[LoraUse, ...] = (), accept_lora_difference: bool = False,
                 additional_seconds: float = 0.0, needs_start_latent: bool = False,
                 workflow: dict | None = None, changes: dict | None = None) -> tuple[Job, list[str]]:
    """A saved job made ready to run on, and the warnings to show.

    Works on a snapshot, so `state` itself (perhaps cached by ComfyUI) never changes. In order: the
    job grows by `additional_seconds` (f1 only: a refusal comes before any encoder runs); the LoRAs
    loaded now (`loras`) must be those the job was made with, or it is refused with an InputError naming
    each missing file, unless `accept_lora_difference` (then it is a warning, and the job goes on with
    the LoRAs loaded now); settings in `changes` that differ from the job's branch it into a new job
    (`branch.branch_job`); embeddings a file was saved without are encoded again, a missing start latent
    (legacy files) is encoded, and the models now loaded are compared with those that made the job.
    """
    state = state.snapshot()
    extend_job(state, additional_seconds)
    warnings = []
    difference = lora_difference(state.loras, loras)
    if difference is not None and not accept_lora_difference:
        raise InputError(f"this job's LoRAs differ from those loaded now: {difference}. Load the same LoRAs at the "
                         "same strengths to continue it exactly, or accept the difference (--accept-lora-difference "
                         "on the command line, accept_lora_difference on the sampler node)")
    if difference is not None:
        warnings.append(f"continuing with other LoRAs than the job was made with ({difference}); the result will not "
                        "match an uninterrupted run")
    state.loras = canonical_loras(loras)
    branch_job(state, changes or {}, encoders, job_id=new_job_id())
    reencoded = state.conditioning is None
    if reencoded:
        state.conditioning, state.params = build_conditioning(state.params, source_image, encoders,
                                                              end_image=state.end_image)
    if needs_start_latent:
        state.start_latent = encoders.require("vae", "encoding the start image").encode_start_latent(
            source_image).float()
    loaded = {**identity, **encoders.identity(embeddings=reencoded)}
    warning = identity_mismatch(state.model_identity, loaded)
    # Embeddings read from the file keep the dtypes of the encoders that made them.
    kept = {key: state.model_identity[key] for key in ("text_dtype", "image_dtype")
            if not reencoded and key in state.model_identity}
    state.model_identity = {**kept, **loaded}
    return Job(state, source_image, workflow), warnings + ([warning] if warning else [])


def run_job(job: Job, transformer: Transformer, settings: RunSettings, *, control: JobControl | None = None,
            on_step: StepCallback | None = None, on_saved: SavedCallback | None = None) -> RunResult:
    """Sample `job.state` to its end or to a pause/stop, writing resume files as `settings` say.

    A job with nothing left to sample (a finished job continued without more length) returns at
    once and writes nothing. Exceptions propagate after a fail-safe save (see `sample_job`).
    """
    state = job.state
    if state.done:
        return RunResult(state, Status.FINISHED)
    if state.loras != transformer.lora_uses():
        raise InputError("the job's LoRAs are not the transformer's: make or continue it with this transformer "
                         "(create_job / continue_job with loras=transformer.lora_uses())")
    attention = run_attention(transformer, settings)
    folder = RetentionFolder(settings.output_dir, state.job_id, settings.keep_last,
                             hide_autosaves=settings.hide_autosaves)
    # Natively conditioned jobs keep their embeddings whatever the settings: nothing else records them.
    embeddings = settings.include_embeddings or state.params.prompt_source == "native"
    saver = JobSaver(folder, job.source_image, job.workflow, include_embeddings=embeddings,
                     run={**attention.record(), "compile": settings.compile})
    engine = Engine(transformer.model, transformer.device, transformer.dtype)
    with transformer.applied():  # before the model is placed, so block swapping moves the LoRA tensors too
        return sample_job(engine, state, saver, control=control, autosave=settings.autosave, callback=on_step,
                          pause_at=settings.pause_at, on_saved=on_saved,
                          gpu_memory_preservation=settings.gpu_memory_preservation, accelerator=settings.accelerator,
                          attention=attention, compile=settings.compile, compile_backend=settings.compile_backend)


def render_frames(state: JobState, vae: LatentCodec,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(F,H,W,3) uint8 frames of every finished section, decoded section by section with `vae`."""
    sections = min(state.section, state.plan.total_sections)
    if sections == 0:
        raise ValueError(f"job {state.job_id} has no finished section to decode yet")
    real = state.plan.real_history(state.history_latents, sections)
    with torch.no_grad(), vae.loaded():
        pixels = decode_history(state.plan, real, vae.decode, sections, progress)
    return to_uint8_frames(pixels)
