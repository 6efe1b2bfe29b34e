"""What each CLI command does. Imported only after the arguments parsed, since it pulls in torch."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic import RetentionFolder
from .cli import params_from_args, print_json, tiny_models_root, ctrl_c_pauses
from .control import JobControl
from .devices import resolve_device, resolve_dtype
from .encoders import encode_start_latent
from .engine import Engine
from .errors import InputError, ModelFolderError
from .image import load_image
from .job import extend_job, prepare_job, render_frames
from .models import ModelSet, load_model_set, model_identity
from .precision import configure_precision
from .resume_file import inspect_resume_file, model_identity_mismatch, read_resume_file
from .runner import FINISHED, AutosavePolicy, JobSaver, RunResult, run_job
from .state import JobState
from .tiny import write_tiny_models
from .video import write_mp4


@dataclass
class Runtime:
    models: ModelSet
    device: torch.device
    dtype: torch.dtype
    conv_fp32: bool


def load_runtime(args, *, need_text: bool, need_image: bool) -> Runtime:
    """Models, device and dtype from the CLI's model options."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    root = write_tiny_models(tiny_models_root()) if args.tiny else args.models
    if args.transformer is not None and not args.transformer.is_file():
        raise ModelFolderError(f"{args.transformer}: no such transformer file")
    models = load_model_set(root, transformer_file=args.transformer, dtype=dtype,
                            need_text=need_text, need_image=need_image)
    conv_fp32 = configure_precision(models.transformer, args.conv_fp32, device, dtype)
    return Runtime(models, device, dtype, conv_fp32)


def check_output_path(out: Path) -> None:
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out {out}: the output must be an .mp4 file")
    if not out.parent.resolve().is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")


def check_run_args(args) -> None:
    check_output_path(args.out)
    if args.autosave_every < 0 or args.autosave_minutes < 0:
        raise InputError("--autosave-every and --autosave-minutes must not be negative (0 turns them off)")
    if args.keep_last < 1:
        raise InputError("--keep-last must be at least 1")
    if args.crf is not None and not 0 <= args.crf <= 51:
        raise InputError(f"--crf must be between 0 and 51, got {args.crf}")


def resume_root(args) -> Path:
    return args.resume_dir if args.resume_dir is not None else args.out.parent


def run_with_progress(runtime: Runtime, state: JobState, source: np.ndarray, args,
                      workflow: dict | None = None) -> RunResult:
    """Run the job with a tqdm bar over steps x sections; Ctrl-C pauses and saves."""
    state.model_identity = {**model_identity(runtime.models.transformer), "conv_fp32": str(runtime.conv_fp32)}
    saver = JobSaver(RetentionFolder(resume_root(args), state.job_id, args.keep_last), source, workflow,
                     include_embeddings=not args.no_embeddings)
    policy = AutosavePolicy(args.autosave_every, args.autosave_minutes)
    engine = Engine(runtime.models.transformer, runtime.device, runtime.dtype)
    control = JobControl()
    bar = tqdm(total=state.total_steps, initial=state.steps_done, unit="step", dynamic_ncols=True)

    def progress(event):
        bar.set_description(f"section {event.section + 1}/{event.total_sections}")
        bar.update(1)

    try:
        with ctrl_c_pauses(control):
            return run_job(engine, state, saver, control=control, autosave=policy, callback=progress,
                           pause_at=args.pause_at,
                           on_autosaved=lambda path: bar.write(f"goan: autosaved {path}"))
    finally:
        bar.close()


def finish(runtime: Runtime, result: RunResult, out: Path, crf: int) -> int:
    """Write the MP4 of a finished job, or say where the resume file of a paused one is."""
    for message in result.autosave_errors:
        print(f"goan: warning: {message}", file=sys.stderr)
    if result.status != FINISHED:
        print(f"goan: {result.status}; resume file: {result.resume_file}")
        print(f"goan: continue with: python -m goan_core resume {result.resume_file} --out {out} ...")
        return 0
    frames = render_frames(runtime.models.vae, result.state, device=runtime.device, dtype=runtime.dtype)
    write_mp4(frames, out, crf=crf)
    print(f"goan: wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, 30 fps)")
    return 0


def generate(args) -> int:
    params = params_from_args(args)
    check_run_args(args)
    image = load_image(args.image)
    runtime = load_runtime(args, need_text=True, need_image=True)
    state, source = prepare_job(runtime.models, params, image, device=runtime.device, dtype=runtime.dtype)
    result = run_with_progress(runtime, state, source, args)
    return finish(runtime, result, args.out, params.crf)


def resume(args) -> int:
    check_run_args(args)
    if args.additional_seconds < 0:
        raise InputError("--additional-seconds must not be negative")
    data = read_resume_file(args.file)
    for note in data.notes:
        print(f"goan: note: {note}", file=sys.stderr)
    need_embeddings = data.state.conditioning is None
    runtime = load_runtime(args, need_text=need_embeddings, need_image=need_embeddings)
    warning = model_identity_mismatch(data.job_info, model_identity(runtime.models.transformer))
    if warning:
        print(f"goan: warning: {warning}", file=sys.stderr)
    state = data.state
    if need_embeddings:
        from .encoders import build_conditioning
        state.conditioning, _ = build_conditioning(runtime.models, state.params, data.source_image,
                                                   runtime.device, runtime.dtype)
    if data.needs_start_latent:
        state.start_latent = encode_start_latent(runtime.models.vae, data.source_image, runtime.device,
                                                 runtime.dtype)
    extend_job(state, args.additional_seconds)
    print(f"goan: resuming job {state.job_id} at section {state.section + 1}/{state.plan.total_sections}, "
          f"step {state.step_in_section}/{state.params.steps}")
    result = run_with_progress(runtime, state, data.source_image, args, data.workflow)
    return finish(runtime, result, args.out, args.crf if args.crf is not None else state.params.crf)


def inspect(args) -> int:
    print_json(inspect_resume_file(args.file))
    return 0


def make_tiny(args) -> int:
    root = write_tiny_models(args.dir)
    print(f"goan: wrote the tiny model set to {root}")
    return 0


def demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.out_dir)


def quiet_library_progress() -> None:
    """diffusers/transformers draw bars for loading tiny files; the CLI has its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def dispatch(args) -> int:
    quiet_library_progress()
    commands = {"generate": generate, "resume": resume, "inspect": inspect, "make-tiny": make_tiny, "demo": demo}
    return commands[args.command](args)
