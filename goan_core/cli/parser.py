"""The command line's arguments: `python -m goan_core generate|resume|inspect|make-tiny|demo|farm --help`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..params import MODES, SAMPLERS, JobParams

# models.WEIGHT_DTYPE_CHOICES, spelled out: the parser must not import torch (tests/test_weight_storage.py compares).
WEIGHT_DTYPE_CHOICES = ("auto", "fp8_e4m3fn", "bf16", "fp16", "fp32")
COMPUTE_DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_CHOICES = ("auto", "sdpa", "flash", "sage", "xformers")  # models.ATTENTION_CHOICES, spelled out likewise

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other goan error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _pause_point(text: str) -> tuple[int, int]:
    try:
        section, step = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECTION:STEP (e.g. 1:3), got {text!r}") from None
    if section < 0 or step < 0:
        raise argparse.ArgumentTypeError("SECTION and STEP must not be negative")
    return section, step


def _lora(text: str) -> tuple[Path, float]:
    """FILE[:STRENGTH] -> (file, strength); the strength is 1 when the text after the last ':' is not a number."""
    name, colon, strength = text.rpartition(":")
    if colon and name:
        try:
            return Path(name), float(strength)
        except ValueError:
            pass
    return Path(text), 1.0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--models", type=Path, help="models root holding the diffusers/transformers folders "
                                                    "(not needed for the parts given as files below)")
    source.add_argument("--tiny", action="store_true", help="use the built-in tiny random-weight models")
    files = p.add_argument_group("single files, as ComfyUI keeps them (each replaces its folder in --models)")
    files.add_argument("--transformer", type=Path, metavar="FILE",
                       help="FramePack transformer: FramePackI2V_HY_fp8_e4m3fn.safetensors or _bf16")
    files.add_argument("--vae", type=Path, metavar="FILE", help="hunyuan_video_vae_bf16.safetensors (Comfy-Org or Kijai)")
    files.add_argument("--text-encoder", type=Path, metavar="FILE",
                       help="llava_llama3_fp16.safetensors or llava_llama3_fp8_scaled.safetensors")
    files.add_argument("--text-encoder-2", type=Path, metavar="FILE", help="clip_l.safetensors")
    files.add_argument("--image-encoder", type=Path, metavar="FILE", help="sigclip_vision_patch14_384.safetensors")
    files.add_argument("--tokenizer", type=Path, metavar="DIR",
                       help="the Llama tokenizer folder (default: --models' tokenizer/, else the one of the ComfyUI "
                            "goan is installed in: comfy/text_encoders/llama_tokenizer)")
    files.add_argument("--tokenizer-2", type=Path, metavar="DIR",
                       help="the CLIP tokenizer folder (default: --models' tokenizer_2/, else ComfyUI's "
                            "comfy/sd1_tokenizer)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when present)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="the transformer's compute dtype (default: bf16 on cuda)")
    p.add_argument("--weight-dtype", choices=WEIGHT_DTYPE_CHOICES, default="auto",
                   help="how the transformer's matmul weights are stored, cast per layer to --dtype at use "
                        "(auto: an fp8 file stays fp8, anything else is stored in --dtype)")
    p.add_argument("--conv-fp32", choices=("auto", "force", "off"), default="auto",
                   help="run the Conv3d patch embeds in fp32 (auto: on GPUs without bf16 Conv3d)")
    p.add_argument("--vae-dtype", choices=COMPUTE_DTYPE_CHOICES, default="auto",
                   help="the VAE's compute dtype (auto: float16 on cuda, float32 elsewhere; bfloat16 is "
                        "refused on GPUs without bf16 Conv3d)")
    p.add_argument("--encoder-dtype", choices=COMPUTE_DTYPE_CHOICES, default="auto",
                   help="the text and image encoders' compute dtype (auto: float16 on cuda, float32 elsewhere)")
    p.add_argument("--lora", type=_lora, action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="apply a HunyuanVideo/FramePack LoRA (.safetensors: diffusers/PEFT, musubi-tuner or kohya "
                        "names) at STRENGTH (default 1); repeat for several. A resumed job needs the same LoRAs")
    p.add_argument("--no-fp32-output", action="store_true",
                   help="compute the transformer's output head (final norm and projection) in --dtype instead "
                        "of fp32 (FramePack's high_quality_fp32_output_for_inference, on by default)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="the MP4 to write")
    p.add_argument("--crf", type=int, help="h264 quality (0-51, lower is better; default 16)")
    p.add_argument("--pause-at", type=_pause_point, metavar="SECTION:STEP",
                   help="pause before this step and write a resume file")
    p.add_argument("--resume-dir", type=Path, help="where resume files go (default: next to --out, goan_resume/)")
    _add_save_args(p)


def _add_save_args(p: argparse.ArgumentParser) -> None:
    """How a run saves and where it computes: `generate`, `resume` and `farm run` share these."""
    p.add_argument("--deterministic-video", action="store_true",
                   help="encode the MP4 single-threaded with fixed settings, so the same frames give a "
                        "byte-identical file on any machine (same PyAV build); slower. With --crf 0 the yuv420p "
                        "frames are stored losslessly")
    p.add_argument("--autosave-every", type=int, default=1, metavar="N", help="autosave every N sections (0: off)")
    p.add_argument("--autosave-minutes", type=float, default=0.0, metavar="M", help="also every M minutes (0: off)")
    p.add_argument("--keep-last", type=int, default=3, metavar="K", help="autosaves kept per job")
    p.add_argument("--no-embeddings", action="store_true",
                   help="leave prompt/image embeddings out of resume files (resuming then needs the encoders)")
    p.add_argument("--gpu-memory-preservation", type=float, default=6.0, metavar="GB",
                   help="GB to keep free on the compute device (FramePack's setting, default 6); transformer "
                        "blocks that do not fit stream in per step. Raise it if you run out of memory")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                   help="attention kernel of the transformer's blocks (auto: the fastest installed one that suits "
                        "the GPU, else sdpa; flash needs flash-attn, sage sageattention, xformers xformers)")
    p.add_argument("--compile", action="store_true",
                   help="run the transformer's blocks through torch.compile (needs triton on a GPU, a C++ compiler "
                        "on the CPU); the first steps of each new shape take longer")


def _add_branch_args(p: argparse.ArgumentParser) -> None:
    """Settings that branch a resumed job: each given one that differs applies to the sections still to come."""
    group = p.add_argument_group("branching", "continue as a new job with other settings for the sections still "
                                 "to come (the file's values when omitted; see README, Branching)")
    group.add_argument("--prompt", help="new prompt (may be timed: '[0s] ... [2.5s] ...')")
    group.add_argument("--negative-prompt")
    group.add_argument("--seed", type=int, help="re-seed the job's generator at the branch point")
    group.add_argument("--steps", type=int, help="only at a section boundary")
    group.add_argument("--cfg", type=float)
    group.add_argument("--gs", type=float)
    group.add_argument("--rs", type=float)
    group.add_argument("--sampler", choices=SAMPLERS, help="only at a section boundary")
    group.add_argument("--teacache", action=argparse.BooleanOptionalAction, default=None)
    group.add_argument("--teacache-threshold", type=float)
    group.add_argument("--end-image", type=Path, help="backward mode: another end image, until the first generated "
                                                      "section is done")
    group.add_argument("--end-strength", type=float, help="until the first generated section is done")
    group.add_argument("--end-embeds", type=float, help="while a section still to come blends the end image in")
    for name in ("mode", "lws", "resolution", "seconds"):  # accepted to explain why they cannot change
        group.add_argument(f"--{name}", type=str if name == "mode" else float, help=argparse.SUPPRESS)


def branch_request(args) -> dict:
    """The branching settings given to `resume` (None: keep the file's; the end image aside: a path)."""
    names = ("prompt", "negative_prompt", "seed", "steps", "cfg", "gs", "rs", "sampler", "teacache",
             "teacache_threshold", "end_strength", "end_embeds", "mode", "lws", "resolution", "seconds")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m goan_core", description="Resumable FramePack image-to-video.")
    parser.add_argument("--version", action="version", version=f"goan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="image to video")
    gen.add_argument("--image", type=Path, required=True)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seconds", type=_positive_float, default=5.0)
    gen.add_argument("--seed", type=int, default=31337)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--cfg", type=float, default=1.0, help="real CFG scale (1: off)")
    gen.add_argument("--gs", type=float, default=10.0, help="distilled guidance scale")
    gen.add_argument("--rs", type=float, default=0.0, help="guidance rescale")
    gen.add_argument("--lws", type=int, default=9, help="latent window size")
    gen.add_argument("--mode", choices=MODES, default="backward")
    gen.add_argument("--sampler", choices=SAMPLERS, default="unipc")
    gen.add_argument("--teacache", action=argparse.BooleanOptionalAction, default=True,
                     help="FramePack's TeaCache: skip transformer blocks while their input barely changes (default on)")
    gen.add_argument("--teacache-threshold", type=float, default=0.15,
                     help="TeaCache's threshold (0.1: ~1.6x, 0.15: ~2.1x faster in FramePack; 0: never skip)")
    gen.add_argument("--resolution", type=int, default=640, help="bucket base size, a multiple of 16")
    gen.add_argument("--end-image", type=Path, help="backward mode: the video ends on this image")
    gen.add_argument("--end-strength", type=float, default=1.0, help="how strongly the end image conditions (0-1)")
    gen.add_argument("--end-embeds", type=float, default=0.0,
                     help="blend the end image's embedding in, growing towards the video's end (0: off, up to 1)")
    _add_model_args(gen)
    _add_run_args(gen)

    res = sub.add_parser("resume", help="continue a job from a .goan_resume file (optionally branching it)")
    res.add_argument("file", type=Path)
    res.add_argument("--additional-seconds", type=float, default=0.0, help="extend an f1 job by this much")
    res.add_argument("--accept-lora-difference", action="store_true",
                     help="continue even though the LoRAs given differ from those the job was made with (the "
                          "result then differs from an uninterrupted run)")
    _add_branch_args(res)
    _add_model_args(res)
    _add_run_args(res)

    ins = sub.add_parser("inspect", help="validate a .goan_resume file and print its job info and params")
    ins.add_argument("file", type=Path)

    tiny = sub.add_parser("make-tiny", help="write the tiny random-weight model set as a models root")
    tiny.add_argument("dir", type=Path)

    demo = sub.add_parser("demo", help="generate, pause, resume and prove the result identical (tiny models)")
    demo.add_argument("--out-dir", type=Path, default=Path("demo_out"))
    _add_farm_parser(sub.add_parser("farm", help="many jobs on a Ray cluster that survive lost workers (goan[farm])"))
    return parser


def _add_farm_parser(farm: argparse.ArgumentParser) -> None:
    actions = farm.add_subparsers(dest="farm_command", required=True, parser_class=_Parser)
    run = actions.add_parser("run", help="run every job of a JSON-lines file on Ray, autosaving into --store")
    run.add_argument("jobs", type=Path, help='one job per line: generate\'s settings, e.g. {"image": "in.png", '
                                             '"prompt": "...", "seconds": 5}, or {"resume": "file.goan_resume"}')
    run.add_argument("--store", type=Path, required=True, help="a folder every worker can read and write (shared)")
    run.add_argument("--address", default="auto", help="auto: the cluster `ray start` runs here; local: start one "
                                                       "in this process; or HOST:PORT of a head node")
    run.add_argument("--workers", type=int, help="worker processes (default: GPUs / --gpus-per-job, or the CPUs)")
    run.add_argument("--gpus-per-job", type=float, help="GPUs per worker (default 1; 0, CPU only, without GPUs)")
    run.add_argument("--max-retries", type=int, default=3, metavar="N", help="retries of a job whose worker died")
    _add_model_args(run)
    _add_save_args(run)
    status = actions.add_parser("status", help="each job's state, progress and newest file (no Ray needed)")
    status.add_argument("--store", type=Path, required=True)


def params_from_args(args) -> JobParams:
    """JobParams from `generate` arguments (validated: bad values raise InputError)."""
    return JobParams(prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                     seconds=args.seconds, lws=args.lws, steps=args.steps, cfg=args.cfg, gs=args.gs,
                     rs=args.rs, mode=args.mode, resolution=args.resolution, sampler=args.sampler,
                     crf=16 if args.crf is None else args.crf, teacache=args.teacache,
                     teacache_threshold=args.teacache_threshold, end_strength=args.end_strength,
                     end_embeds=args.end_embeds)
