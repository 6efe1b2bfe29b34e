"""Resume files of the original goan app, read without running anything they contain.

Those files are zips of `params.json` (the app's settings under its own names), `source_image.png`,
`latent_history.pt` (the history latents, written with torch.save) and `job_info.json` (`job_id`,
`completed_segments`). The .pt is loaded from memory with torch's weights-only unpickler, which
builds plain tensor data and refuses everything else; nothing in the file is ever executed. That
unpickler could be bypassed before torch 2.6 (CVE-2025-32434), so on older torch legacy files are
refused before any of their bytes are unpickled; every other path of goan is pickle-free.

They can never be exact: they hold no generator state, no start latent and no embeddings. The
generator is re-seeded from the seed and advanced as if each completed section had drawn its noise
(one randn of the section's shape, as FramePack does); the original app may have drawn differently,
so this is best effort and marked as such.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import zipfile

import torch

from ..errors import InputError, ResumeFileError
from ..media import bucket_options
from ..params import FPS, LIMITS, JobParams
from ..sampling import CONTEXT_FRAMES, LATENT_CHANNELS, SPATIAL_SCALE, JobState, SectionPlan
from .archive import SafeArchive, decode_png, load_json
from .checks import Where, check_magnitude, check_plan, image_bytes_limit
from .format import FORMAT, JOB_INFO, MAX_JSON_BYTES, MAX_TOTAL_BYTES, PARAMS, SAFE_NAME, SOURCE_IMAGE, ResumeData

LATENTS = "latent_history.pt"
MEMBERS = (PARAMS, SOURCE_IMAGE, LATENTS, JOB_INFO)
LEGACY_FPS = 30
MAX_LATENT_SIDE = 512  # 4096 pixels
MAX_PT_RECORDS = 1000
NOT_EXACT = "not exact: no generator state"

# JobParams field -> the names the original app (its worker, its UI, FramePack) used for it.
ALIASES = {
    "prompt": ("prompt", "positive_prompt"),
    "negative_prompt": ("negative_prompt", "n_prompt"),
    "seed": ("seed",),
    "seconds": ("video_length", "total_second_length", "video_length_slider"),
    "lws": ("latent_window_size", "latent_window_size_slider"),
    "steps": ("steps", "steps_slider"),
    "cfg": ("real_cfg", "cfg", "real_cfg_slider"),
    "gs": ("distilled_cfg_start", "gs", "distilled_cfg_start_slider"),
    "rs": ("guidance_rescale", "rs", "guidance_rescale_slider"),
    "crf": ("mp4_crf", "mp4_crf_slider"),
}
FPS_KEYS = ("fps", "fps_slider")
# What torch.load raises on bytes that are not a clean tensor file (the weights-only unpickler
# reports code and foreign objects as UnpicklingError; mangled data surfaces as the others).
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, struct.error, zipfile.BadZipFile, OSError)
_TEXT_FIELDS = ("prompt", "negative_prompt")
SAFE_TORCH = (2, 6)  # torch.load(weights_only=True) is bypassable below this (CVE-2025-32434)


def torch_version() -> tuple[int, int]:
    """(major, minor) of the torch in use (a function, so tests can stand in an older one)."""
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def check_torch_is_safe(path) -> None:
    """Refuse to unpickle anything on a torch whose weights-only loader can be bypassed."""
    version = torch_version()
    if version < SAFE_TORCH:
        raise ResumeFileError(path, f"it is a file of the original goan app, whose latents are a pickle; torch "
                                    f"{version[0]}.{version[1]} cannot load those safely (CVE-2025-32434), so it "
                                    "was refused unread. Update torch to 2.6 or later to resume it.")
_WHOLE_FIELDS = ("seed", "lws", "steps", "crf", "fps")


def read_legacy(archive: SafeArchive) -> ResumeData:
    """Map an original-app file onto a JobState (exact=False; see the module docstring)."""
    path = archive.path
    archive.check_member_set(MEMBERS, ())
    check_torch_is_safe(path)
    notes: list[str] = []
    job_id, completed = _job_info(load_json(archive.read(JOB_INFO, MAX_JSON_BYTES), JOB_INFO, path), path, notes)
    history = load_latents(archive.read(LATENTS, MAX_TOTAL_BYTES), path, notes)
    params, fps = _params(load_json(archive.read(PARAMS, MAX_JSON_BYTES), PARAMS, path), history, path, notes)
    plan, section = _plan(history, params, fps, completed, path, notes)
    params = _fit_seconds(params, plan, path, notes)
    check_plan(params, plan, Where(path, f"{LATENTS} and {PARAMS}: "))

    def fits(width, height):
        if (width, height) != (plan.width, plan.height):
            raise ResumeFileError(path, f"{SOURCE_IMAGE} is {width}x{height} pixels but the latents are of "
                                        f"{plan.width}x{plan.height} frames: the image and the latents are not "
                                        "of the same job")

    source = decode_png(archive.read(SOURCE_IMAGE, image_bytes_limit(plan)), SOURCE_IMAGE, path, fits)

    generator = torch.Generator("cpu").manual_seed(params.seed)
    for _ in range(section):
        torch.randn(plan.noise_shape(), generator=generator)
    notes.insert(0, f"{NOT_EXACT}: the noise generator was re-seeded from seed {params.seed} and advanced past "
                    f"{section} section(s) as FramePack draws noise (best effort); the continuation will "
                    "differ from what the original app would have made")
    finished = section == plan.total_sections
    start = (history[:, :, :1].clone() if finished
             else torch.zeros(1, LATENT_CHANNELS, 1, plan.latent_height, plan.latent_width))
    if not finished:
        notes.append("no start latent stored: encode source_image.png with the VAE before continuing")
    notes.append("no prompt or image embeddings stored: the text and image encoders are needed")

    state = JobState(job_id=job_id, params=params, plan=plan, conditioning=None, start_latent=start,
                     history_latents=history, generator_state=generator.get_state(), section=section)
    job_info = {"format": FORMAT, "format_version": 0, "job_id": job_id, "mode": plan.mode, "plan": plan.to_dict(),
                "next_section": section, "step_in_section": 0, "in_section": False, "sampler_outputs": 0,
                "total_sections": plan.total_sections, "model_identity": {}, "producer": "goan (original app)",
                "created_at": None, "has_embeddings": False, "kind": "pause", "sha256": {},
                "completed_segments": completed}
    return ResumeData(state, source, None, job_info, exact=False, notes=notes, needs_start_latent=not finished)


def load_latents(data: bytes, path, notes: list[str]) -> torch.Tensor:
    """The history tensor from torch.save bytes, via the weights-only unpickler (nothing runs)."""
    _check_pt_container(data, path)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        refers = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it refers to {refers[1][:80]}" if refers else f"{type(exc).__name__}"
        raise ResumeFileError(path, f"{LATENTS} is not plain tensor data (it is damaged, or holds code or "
                                    f"objects: {what}); it was refused and nothing in it was run") from exc
    if type(loaded) is not torch.Tensor:
        raise ResumeFileError(path, f"{LATENTS} holds a {type(loaded).__name__}, not the one latent tensor "
                                    "the original goan app saved")
    if loaded.ndim != 5 or loaded.shape[0] != 1 or loaded.shape[1] != LATENT_CHANNELS or not (
            0 < loaded.shape[3] <= MAX_LATENT_SIDE and 0 < loaded.shape[4] <= MAX_LATENT_SIDE):
        raise ResumeFileError(path, f"{LATENTS} has shape {list(loaded.shape)}; FramePack history latents are "
                                    f"(1, {LATENT_CHANNELS}, frames, height/8, width/8)")
    if loaded.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ResumeFileError(path, f"{LATENTS} holds {loaded.dtype} values, not floating-point latents")
    if loaded.dtype != torch.float32:
        notes.append(f"history latents converted from {loaded.dtype} to float32")
        loaded = loaded.float()
    loaded = loaded.contiguous()
    check_magnitude(LATENTS, loaded, Where(path))
    return loaded


def _check_pt_container(data: bytes, path) -> None:
    """torch.save's zip container: bounded record count, stored (uncompressed) records only."""
    if not data.startswith(b"PK\x03\x04"):
        return  # the pre-1.6 torch format: read by the same weights-only unpickler, bounded by len(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            records = inner.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
        raise ResumeFileError(path, f"{LATENTS} is damaged: {exc}") from exc
    if len(records) > MAX_PT_RECORDS:
        raise ResumeFileError(path, f"{LATENTS} has {len(records)} records, far more than one tensor needs")
    if any(r.compress_type != zipfile.ZIP_STORED for r in records):
        raise ResumeFileError(path, f"{LATENTS} has compressed records, which torch.save never writes")


def _job_info(raw, path, notes: list[str]) -> tuple[str, int | None]:
    if not isinstance(raw, dict):
        raise ResumeFileError(path, f"{JOB_INFO} must hold a JSON object")
    job_id = raw.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ResumeFileError(path, f"{JOB_INFO} has no job_id")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:128].lstrip("._-") or "legacy_job"
    if not SAFE_NAME.fullmatch(safe):
        raise ResumeFileError(path, f"{JOB_INFO}: job_id {job_id[:80]!r} cannot be made into a safe name")
    if safe != job_id:
        notes.append(f"job id {job_id[:80]!r} renamed to {safe!r} (only letters, digits, '.', '_', '-' are kept)")
    completed = raw.get("completed_segments")
    if isinstance(completed, bool) or not isinstance(completed, int) or completed < 0:
        notes.append("job_info.json has no usable completed_segments; the latents tell how far the job got")
        completed = None
    return safe, completed


def _params(raw, history: torch.Tensor, path, notes: list[str]) -> tuple[JobParams, int]:
    """The app's settings mapped onto JobParams; what has no counterpart is dropped with a note."""
    if not isinstance(raw, dict):
        raise ResumeFileError(path, f"{PARAMS} must hold a JSON object")
    values, used = {}, set()
    for name, aliases in ALIASES.items():
        for alias in (a for a in aliases if a in raw):
            used.add(alias)
            value = _coerce(name, raw[alias])
            if value is None:
                notes.append(f"setting {alias!r} = {str(raw[alias])[:40]!r} not understood; using goan's default")
            else:
                values.setdefault(name, value)
    fps = LEGACY_FPS
    for key in (k for k in FPS_KEYS if k in raw):
        used.add(key)
        value = _coerce("fps", raw[key])
        if value is not None and 1 <= value <= 240:
            fps = value
    dropped = sorted(str(k)[:40] for k in set(raw) - used)
    if dropped:
        shown = ", ".join(dropped[:20]) + (f" and {len(dropped) - 20} more" if len(dropped) > 20 else "")
        notes.append(f"settings of the original app that goan has no counterpart for were dropped: {shown}")
    if "prompt" not in values:
        notes.append("no prompt found; using an empty prompt")
        values["prompt"] = ""
    values["resolution"] = _resolution(history.shape[3] * SPATIAL_SCALE, history.shape[4] * SPATIAL_SCALE)
    values["mode"] = "backward"
    try:
        return JobParams(**values), fps
    except InputError as exc:
        raise ResumeFileError(path, f"{PARAMS}: {exc}") from exc


def _resolution(height: int, width: int) -> int:
    """The resolution whose buckets hold height x width, nearest to its geometric mean side.

    The original app bucketed at 640 as FramePack does; other apps at other bases. When no base
    has such a bucket, the nearest is returned and the plan check refuses the file clearly.
    """
    low, high = LIMITS["resolution"]
    guess = min(max(round(math.sqrt(height * width) / 16) * 16, low), high)
    for base in sorted(range(low, high + 1, 16), key=lambda r: (abs(r - guess), r)):
        if (height, width) in bucket_options(base):
            return base
    return guess


def _fit_seconds(params: JobParams, plan: SectionPlan, path, notes: list[str]) -> JobParams:
    """Settings whose seconds make exactly the plan's sections (goan's rule, not the original app's)."""
    seconds = round(plan.total_sections * plan.lws * 4 / FPS, 6)
    if abs(seconds - params.seconds) > 1e-6:
        notes.append(f"length set to {seconds:g} s, what {plan.total_sections} sections of lws {plan.lws} make "
                     f"(the original app asked for {params.seconds:g} s and counted sections its own way)")
    try:
        return JobParams(**{**params.to_dict(), "seconds": seconds})
    except InputError as exc:
        raise ResumeFileError(path, f"{PARAMS}: {exc}") from exc


def _coerce(name: str, value):
    """The value as the type JobParams wants for `name`, or None when it cannot be read as one."""
    if name in _TEXT_FIELDS:
        return value if isinstance(value, str) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if name in _WHOLE_FIELDS:
        return int(value) if float(value).is_integer() else None
    return float(value)


def _plan(history: torch.Tensor, params: JobParams, fps: int, completed: int | None, path,
          notes: list[str]) -> tuple[SectionPlan, int]:
    """The backward plan the latents fit, and how many sections they hold.

    The original app counted sections as round(seconds * fps / (lws * 4 - 3)); where the latents
    hold more sections than that, the plan is widened to fit them (with a note).
    """
    lws = params.lws
    frames, latent_h, latent_w = history.shape[2], history.shape[3], history.shape[4]
    total = max(round(int(params.seconds * fps) / (lws * 4 - 3)), 1)
    done, rest = divmod(frames - CONTEXT_FRAMES, lws)
    finished = rest == 1 and done >= 1
    if frames < CONTEXT_FRAMES or (rest != 0 and not finished):
        raise ResumeFileError(path, f"{LATENTS} has {frames} latent frames, which does not fit a FramePack history "
                                    f"of windows of {lws} frames")
    if finished and done != total:
        notes.append(f"the finished history holds {done} sections, not the {total} its settings give; using {done}")
        total = done
    elif not finished and done >= total:
        notes.append(f"the history holds {done} sections, more than the {total} its settings give; the plan "
                     f"was widened to {done + 1}")
        total = done + 1
    if completed is not None and completed != done:
        notes.append(f"job_info.json says {completed} completed sections, the latents hold {done}; using {done}")
    try:
        plan = SectionPlan("backward", lws, total, latent_h * SPATIAL_SCALE, latent_w * SPATIAL_SCALE)
    except InputError as exc:
        raise ResumeFileError(path, f"{LATENTS}: {exc}") from exc
    return plan, total if finished else done
