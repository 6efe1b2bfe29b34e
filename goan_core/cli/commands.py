"""What each CLI command does, over the job lifecycle. Imported only after the arguments parsed (it pulls in torch).

The CLI differs from the ComfyUI node only in how it gets its models (a models folder, the usual
single files, or the tiny set) and how it reports progress (a tqdm bar; Ctrl-C pauses).
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import InputError, ModelFolderError
from ..jobs import (END_IMAGE, AutosavePolicy, Encoders, Job, JobControl, RunResult, RunSettings, branch_changes,
                    branch_encoders, continue_job, create_job, goan_encoders, render_frames, run_attention, run_job,
                    signal_pauses)
from ..media import load_image, write_mp4
from ..models import (ModelFiles, ModelSet, Transformer, apply_fp32_output, configure_precision, default_tiny_root,
                      load_model_set, model_dtypes, read_lora, resolve_device, write_tiny_models)
from ..resumefile import check_prompts, inspect_resume_file, read_resume_file
from ..vocabulary import FileKind, Status
from .parser import branch_request, params_from_args


@dataclass
class Runtime:
    """The models of one CLI run, bound to their device and dtype."""

    transformer: Transformer
    encoders: Encoders


# ComfyUI ships the two tokenizers the single-file text encoders lack; goan finds them when it is
# installed as a custom node (<ComfyUI>/custom_nodes/<goan>/goan_core/cli/commands.py).
COMFYUI_TOKENIZERS = {"tokenizer": ("comfy", "text_encoders", "llama_tokenizer"), "tokenizer_2": ("comfy", "sd1_tokenizer")}


def comfyui_tokenizers(pack: Path = Path(__file__).resolve().parents[2]) -> dict[str, Path]:
    """{"tokenizer", "tokenizer_2": folder} of the ComfyUI whose custom_nodes hold `pack` (those present)."""
    if pack.parent.name != "custom_nodes":
        return {}
    comfy = pack.parent.parent
    found = {name: comfy.joinpath(*parts) for name, parts in COMFYUI_TOKENIZERS.items()}
    return {name: folder for name, folder in found.items() if folder.is_dir()}


def model_files(args, root: Path | None, need_text: bool) -> ModelFiles:
    """The single files given on the command line; when text is encoded, each tokenizer from --tokenizer(-2),
    else the models root's, else the enclosing ComfyUI's (said on stderr)."""
    tokenizers = {"tokenizer": args.tokenizer, "tokenizer_2": args.tokenizer_2}
    for name, folder in comfyui_tokenizers().items() if need_text else ():
        if tokenizers[name] is None and (root is None or not (Path(root) / name).is_dir()):
            tokenizers[name] = folder
            print(f"goan: using ComfyUI's tokenizer {folder}", file=sys.stderr)
    return ModelFiles(vae=args.vae, text_encoder=args.text_encoder, text_encoder_2=args.text_encoder_2,
                      image_encoder=args.image_encoder, **tokenizers)


def load_runtime(args, *, need_text: bool, need_image: bool) -> Runtime:
    """Models, device and each model's dtype from the CLI's model options; the encoders and the VAE run under
    --gpu-memory-preservation like the transformer."""
    device = resolve_device(args.device)
    dtypes = model_dtypes(device, transformer=args.dtype, vae=args.vae_dtype, encoder=args.encoder_dtype)
    root = write_tiny_models(default_tiny_root()) if args.tiny else args.models
    if args.transformer is not None and not args.transformer.is_file():
        raise ModelFolderError(f"{args.transformer}: no such transformer file")
    models: ModelSet = load_model_set(root, transformer_file=args.transformer, files=model_files(args, root, need_text),
                                      dtype=dtypes, need_text=need_text, need_image=need_image,
                                      weight_dtype=args.weight_dtype)
    conv_fp32 = configure_precision(models.transformer, args.conv_fp32, device, dtypes.transformer)
    if not args.no_fp32_output:
        apply_fp32_output(models.transformer)
    name = str(args.transformer or Path(root) / "transformer")
    transformer = Transformer(models.transformer, device, dtypes.transformer, conv_fp32, name)
    for path, strength in args.lora:
        lora = read_lora(path, models.transformer, dtypes.transformer, pin=device.type == "cuda")
        print(f"goan: LoRA {lora.name} ({lora.format}, {len(lora.terms)} layers) at strength {strength:g}")
        transformer = transformer.with_lora(lora, strength)
    return Runtime(transformer,
                   goan_encoders(models, device, dtypes, gpu_memory_preservation=args.gpu_memory_preservation))


def check_run_args(args) -> None:
    if args.out.suffix.lower() != ".mp4":
        raise InputError(f"--out {args.out}: the output must be an .mp4 file")
    if not args.out.parent.resolve().is_dir():
        raise InputError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    if args.crf is not None and not 0 <= args.crf <= 51:
        raise InputError(f"--crf must be between 0 and 51, got {args.crf}")
    check_save_args(args)


def check_save_args(args) -> None:
    """The options `generate`, `resume` and `farm run` share (parser._add_save_args)."""
    if args.autosave_every < 0 or args.autosave_minutes < 0:
        raise InputError("--autosave-every and --autosave-minutes must not be negative (0 turns them off)")
    if args.keep_last < 1:
        raise InputError("--keep-last must be at least 1")
    if args.gpu_memory_preservation < 0:
        raise InputError(f"--gpu-memory-preservation must be >= 0 GB, got {args.gpu_memory_preservation}")


def run_settings(args, runtime: Runtime) -> RunSettings:
    """Where resume files go (--resume-dir, or beside --out), how often autosaves happen, and the attention and
    compile options, checked against the transformer's device before any work is done."""
    settings = RunSettings(args.resume_dir if args.resume_dir is not None else args.out.parent,
                           keep_last=args.keep_last,
                           autosave=AutosavePolicy(args.autosave_every, args.autosave_minutes),
                           include_embeddings=not args.no_embeddings, pause_at=args.pause_at,
                           gpu_memory_preservation=args.gpu_memory_preservation, attention=args.attention,
                           compile=args.compile)
    run_attention(runtime.transformer, settings)
    return settings


def ctrl_c_pauses(control: JobControl):
    """First Ctrl-C asks the job to pause (and save); a second one interrupts at once."""
    return signal_pauses(control, signal.SIGINT, lambda: print(
        "\ngoan: pausing after this step (Ctrl-C again to stop at once)...", file=sys.stderr))


def run_with_progress(runtime: Runtime, job: Job, settings: RunSettings) -> RunResult:
    """`run_job` with a tqdm bar over steps x sections; Ctrl-C pauses and saves."""
    state = job.state
    control = JobControl()
    bar = tqdm(total=state.total_steps, initial=state.steps_done, unit="step", dynamic_ncols=True)

    def on_step(event):
        skipped = f", {event.skipped} skipped" if event.skipped else ""
        bar.set_description(f"section {event.section + 1}/{event.total_sections}{skipped}")
        bar.update(1)

    def on_saved(path, kind):
        if kind is FileKind.AUTOSAVE:
            bar.write(f"goan: autosaved {path}")

    try:
        with ctrl_c_pauses(control):
            return run_job(job, runtime.transformer, settings, control=control, on_step=on_step, on_saved=on_saved)
    finally:
        bar.close()


def finish(runtime: Runtime, result: RunResult, out: Path, crf: int, deterministic: bool = False) -> int:
    """Write the MP4 of a finished job (`deterministic`: byte-reproducible), or say where the resume file of a
    paused one is."""
    for message in result.autosave_errors:
        print(f"goan: warning: {message}", file=sys.stderr)
    if result.status is not Status.FINISHED:
        print(f"goan: {result.status}; resume file: {result.resume_file}")
        loras = "".join(f" --lora {use.name}:{use.strength:g}" for use in result.state.loras)
        print(f"goan: continue with: python -m goan_core resume {result.resume_file} --out {out}{loras} ...")
        return 0
    vae = runtime.encoders.require("vae", "writing the video")
    frames = render_frames(result.state, vae)
    write_mp4(frames, out, crf=crf, deterministic=deterministic)
    print(f"goan: wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, 30 fps)")
    return 0


def generate(args) -> int:
    params = params_from_args(args)
    check_prompts(params)  # before any model loads
    check_run_args(args)
    image = load_image(args.image)
    end = load_image(args.end_image) if args.end_image is not None else None
    runtime = load_runtime(args, need_text=True, need_image=True)
    settings = run_settings(args, runtime)
    job = create_job(params, image, runtime.encoders, identity=runtime.transformer.identity(),
                     loras=runtime.transformer.lora_uses(), end_image=end)
    return finish(runtime, run_with_progress(runtime, job, settings), args.out, params.crf, args.deterministic_video)


def resume(args) -> int:
    check_run_args(args)
    if args.additional_seconds < 0:
        raise InputError("--additional-seconds must not be negative")
    data = read_resume_file(args.file)
    for note in data.notes:
        print(f"goan: note: {note}", file=sys.stderr)
    need_embeddings = data.state.conditioning is None
    request = branch_request(args)
    if args.end_image is not None:
        request[END_IMAGE] = load_image(args.end_image)
    changes = branch_changes(data.state, request)  # a refused change or bad value fails before any model loads
    needs = [] if need_embeddings else branch_encoders(data.state, changes)
    runtime = load_runtime(args, need_text=need_embeddings or bool({"prompt", "negative_prompt"} & set(needs)),
                           need_image=need_embeddings or "image" in needs)
    settings = run_settings(args, runtime)
    job, warnings = continue_job(data.state, data.source_image, runtime.encoders,
                                 identity=runtime.transformer.identity(), loras=runtime.transformer.lora_uses(),
                                 accept_lora_difference=args.accept_lora_difference,
                                 additional_seconds=args.additional_seconds,
                                 needs_start_latent=data.needs_start_latent, workflow=data.workflow, changes=request)
    for warning in warnings:
        print(f"goan: warning: {warning}", file=sys.stderr)
    state = job.state
    if state.lineage is not None and state.job_id != data.state.job_id:
        changed = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in state.lineage["changes"].items())
        print(f"goan: branched job {data.state.job_id} as {state.job_id}: {changed}")
    print(f"goan: resuming job {state.job_id} at section {state.section + 1}/{state.plan.total_sections}, "
          f"step {state.step_in_section}/{state.params.steps}")
    result = run_with_progress(runtime, job, settings)
    return finish(runtime, result, args.out, args.crf if args.crf is not None else state.params.crf,
                  args.deterministic_video)


def inspect(args) -> int:
    print(json.dumps(inspect_resume_file(args.file), indent=2, sort_keys=True))
    return 0


def make_tiny(args) -> int:
    root = write_tiny_models(args.dir)
    print(f"goan: wrote the tiny model set to {root}")
    return 0


def demo(args) -> int:
    from .demo import run_demo  # the demo's own imports are needed by no other command

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
