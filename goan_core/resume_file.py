"""The `.goan_resume` file, format v1: writer, reader and validator.

A zip archive with fixed member names (so other tools can read it):
  job_info.json      format, version, job id, plan, position (section, step), model identity,
                     producer, created_at, and the sha256 of every other member
  params.json        JobParams.to_dict()
  source_image.png   the input image; end_image.png when used
  workflow.json      optional: the ComfyUI graph that made the job
  state.safetensors  history_latents, start_latent, generator_state, and mid-section sampler_x and
                     sampler_outputs; with embeddings, the Conditioning tensors as cond.<field>
Reading trusts nothing: the archive's structure, sizes and names are checked before any member is
read, members are read by name into memory (never extracted), every JSON field and every tensor
(name, dtype, shape against the plan, finiteness) is validated, and each problem raises one
ResumeFileError naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import stat
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from PIL import Image

from . import __version__
from .atomic import SAFE_NAME, atomic_writer, check_free_space, format_size
from .errors import InputError, NewerFormatError, ResumeFileError
from .params import JobParams
from .plan import LATENT_CHANNELS, SectionPlan
from .state import Conditioning, JobState, SamplerState

FORMAT = "goan_resume"
FORMAT_VERSION = 1
KINDS = ("pause", "stop", "autosave", "failsafe", "finished")

JOB_INFO = "job_info.json"
PARAMS = "params.json"
SOURCE_IMAGE = "source_image.png"
END_IMAGE = "end_image.png"
WORKFLOW = "workflow.json"
STATE = "state.safetensors"
REQUIRED_MEMBERS = (JOB_INFO, PARAMS, SOURCE_IMAGE, STATE)
OPTIONAL_MEMBERS = (END_IMAGE, WORKFLOW)

HISTORY = "history_latents"
START = "start_latent"
GENERATOR = "generator_state"
SAMPLER_X = "sampler_x"
SAMPLER_OUTPUTS = "sampler_outputs"
COND_PREFIX = "cond."
COND_FIELDS = tuple(f.name for f in fields(Conditioning))
COND_REQUIRED = ("prompt_embeds", "prompt_mask", "pooled", "image_embeds")
COND_NEGATIVE = ("negative_prompt_embeds", "negative_prompt_mask", "negative_pooled")
COND_MASKS = ("prompt_mask", "negative_prompt_mask")
MAX_SAMPLER_OUTPUTS = 3  # UniPC bh1 keeps at most this many past model outputs

# Limits against hostile or broken files. A 60 s 640x480 job's history is about 145 MB in float32.
MAX_MEMBERS = 8
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_JSON_BYTES = 1024**2
MAX_WORKFLOW_BYTES = 8 * 1024**2  # ComfyUI graphs with many nodes and notes outgrow 1 MiB
MAX_IMAGE_BYTES = 64 * 1024**2
MAX_IMAGE_SIDE = 8192
MAX_CONDITIONING_BYTES = 256 * 1024**2
MAX_HEADER_BYTES = 1024**2
MAX_RATIO = 100  # deflate ratio allowed for members above RATIO_FLOOR; goan stores big members raw
RATIO_FLOOR = 1024**2
MAX_IDENTITY_ENTRIES = 64
CHUNK_BYTES = 8 * 1024**2  # streaming unit for writing, reading and hashing the state member
MAX_TEXT = 4096

GENERATOR_STATE_BYTES = torch.Generator("cpu").get_state().numel()
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1, "I32": 4, "I64": 8}
TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U8": torch.uint8,
                "BOOL": torch.bool, "I32": torch.int32, "I64": torch.int64}
DTYPE_CODES = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_CODES = ("F32", "F16", "BF16")
MASK_CODES = ("BOOL", "U8", "I32", "I64")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TensorTable = dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype code, shape)


@dataclass
class ResumeData:
    """Everything a resume file holds, validated.

    `exact` is False for files of the original goan app (no generator state), whose `notes` say
    what was approximated. When `needs_start_latent` is True, `state.start_latent` is a zero
    placeholder: encode `source_image` with the VAE and put the result there before continuing.
    `state.conditioning` is None when the file was saved without embeddings.
    """

    state: JobState
    source_image: np.ndarray
    end_image: np.ndarray | None
    workflow: dict | None
    job_info: dict
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    needs_start_latent: bool = False


# == writing =======================================================================================

def write_resume_file(state: JobState, path: str | Path, *, source_image, end_image=None, workflow=None,
                      include_embeddings: bool = True, kind: str = "pause") -> Path:
    """Save `state` as a format v1 resume file at `path`, crash-safely; returns `path`.

    `source_image`/`end_image`: np.uint8 HxWx3 arrays or PNG bytes. `workflow`: the ComfyUI graph
    (a dict) or None. Embeddings are stored when `include_embeddings` and the state has them.
    The state is validated exactly as a reader would, so a file that is written can be read.
    Free space is checked before anything is written. The tensors are streamed from their own
    memory into the archive (no serialised copy), hashed on a second thread while zip computes
    its CRC-32 and writes; job_info.json, which carries the checksums, is written last.
    """
    path = Path(path)
    if kind not in KINDS:
        raise InputError(f"unknown resume file kind {kind!r}: use one of {', '.join(KINDS)}")
    with_embeddings = include_embeddings and state.conditioning is not None
    others, tensors = _encode_members(state, path, source_image, end_image, workflow, with_embeddings)
    header = _safetensors_header(tensors)
    state_size = len(header) + sum(t.numel() * t.element_size() for t in tensors.values())
    check_free_space(path.parent, sum(map(len, others.values())) + state_size + 64 * 1024, path)
    stamp = datetime.now().timetuple()[:6]
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in others.items()}
    with atomic_writer(path) as fh, zipfile.ZipFile(fh, "w") as archive:
        for name, data in others.items():
            archive.writestr(_zip_entry(name, stamp), data)
        entry = _zip_entry(STATE, stamp)
        entry.file_size = state_size
        with archive.open(entry, "w", force_zip64=state_size > 2**31) as member:
            checksums[STATE] = _write_hashed(member, [memoryview(header)] + [_raw_bytes(t) for t in tensors.values()],
                                             fh)
        job_info = _job_info(state, with_embeddings, kind, checksums)
        archive.writestr(_zip_entry(JOB_INFO, stamp), _json_bytes(job_info))
    return path


def _zip_entry(name: str, stamp) -> zipfile.ZipInfo:
    """A regular-file entry; JSON is deflated, images and tensors are stored as they are."""
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
    return info


def _chunks(views, size: int = CHUNK_BYTES):
    for view in views:
        for start in range(0, len(view), size):
            yield view[start:start + size]


def _write_hashed(member, views, fh) -> str:
    """Write the byte views to `member` while a second thread hashes them; the SHA-256 hex digest.

    The views are the tensors' own memory, so every chunk can be queued for hashing at once;
    hashlib, zlib's CRC-32, the write and fsync all release the GIL. The data is flushed to disk
    while the hash catches up, leaving only the small job_info.json for the final fsync.
    """
    digest = hashlib.sha256()
    chunks = list(_chunks(views))
    with ThreadPoolExecutor(1, thread_name_prefix="goan-sha256") as pool:
        hashed = [pool.submit(digest.update, chunk) for chunk in chunks]
        for chunk in chunks:
            member.write(chunk)
        member.flush()
        fh.sync()
        for job in hashed:
            job.result()
    return digest.hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    elif tensor.dtype == torch.bool:
        tensor = tensor.view(torch.uint8)
    return memoryview(tensor.numpy()).cast("B")


def _safetensors_header(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors header (8-byte length + JSON padded to 8 bytes) for tensors laid out in order."""
    entries, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _encode_members(state: JobState, path: Path, source_image, end_image, workflow,
                    with_embeddings: bool) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """The small members as bytes and the state tensors (validated, contiguous, in file order)."""
    tensors = _state_tensors(state, with_embeddings)
    try:
        state.params.validate()
    except InputError as exc:
        raise ResumeFileError(path, f"not saved: the job's settings are invalid: {exc}") from exc
    table = {name: (DTYPE_CODES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for name, t in tensors.items()}
    where = _Where(path, "not saved, the job state is inconsistent: ")
    position = _position_of(state)
    _check_identity(state.job_id, state.model_identity, where)
    _check_position(position, state.plan, state.params, where)
    _check_tensor_table(table, state.plan, position, with_embeddings, state.params, where)
    _check_values(tensors, where)

    others = {PARAMS: _json_bytes(state.params.to_dict()), SOURCE_IMAGE: _png_bytes(source_image, "source_image", path)}
    if end_image is not None:
        others[END_IMAGE] = _png_bytes(end_image, "end_image", path)
    if workflow is not None:
        if not isinstance(workflow, dict):
            raise InputError(f"workflow must be a dict (the ComfyUI graph), got {type(workflow).__name__}")
        others[WORKFLOW] = _json_bytes(workflow)
        if len(others[WORKFLOW]) > MAX_WORKFLOW_BYTES:
            raise ResumeFileError(path, f"not saved: the workflow is {format_size(len(others[WORKFLOW]))}, "
                                        f"more than the {format_size(MAX_WORKFLOW_BYTES)} a resume file may embed")
    return others, {name: tensors[name].contiguous() for name in sorted(tensors)}


def _position_of(state: JobState) -> "_Position":
    outputs = 0 if state.sampler is None else len(state.sampler.model_outputs)
    return _Position(state.section, state.step_in_section, state.sampler is not None, outputs)


def _job_info(state: JobState, with_embeddings: bool, kind: str, checksums: dict[str, str]) -> dict:
    position = _position_of(state)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "job_id": state.job_id,
        "mode": state.plan.mode,
        "plan": state.plan.to_dict(),
        "next_section": state.section,
        "step_in_section": state.step_in_section,
        "in_section": position.in_section,
        "sampler_outputs": position.outputs,
        "total_sections": state.plan.total_sections,
        "model_identity": dict(state.model_identity),
        "producer": f"goan {__version__}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "has_embeddings": with_embeddings,
        "kind": kind,
        "sha256": checksums,
    }


def _state_tensors(state: JobState, with_embeddings: bool) -> dict[str, torch.Tensor]:
    tensors = {HISTORY: state.history_latents, START: state.start_latent, GENERATOR: state.generator_state}
    if state.sampler is not None:
        tensors[SAMPLER_X] = state.sampler.x
        if state.sampler.model_outputs:
            tensors[SAMPLER_OUTPUTS] = torch.stack([m.detach().cpu() for m in state.sampler.model_outputs])
    if with_embeddings:
        tensors.update({COND_PREFIX + k: v for k, v in state.conditioning.tensors().items()})
    return {name: t.detach().cpu() for name, t in tensors.items()}


def _json_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=1).encode("utf-8")


def _png_bytes(image, name: str, path: Path) -> bytes:
    """PNG bytes of an np.uint8 HxWx3 array, or given PNG bytes after checking they decode."""
    if isinstance(image, (bytes, bytearray)):
        decode_png(bytes(image), name, path)
        return bytes(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{name} must be an np.uint8 array of shape (H, W, 3) or PNG bytes")
    if not 0 < max(image.shape[:2]) <= MAX_IMAGE_SIDE or min(image.shape[:2]) == 0:
        raise InputError(f"{name} must be between 1 and {MAX_IMAGE_SIDE} pixels on each side")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


# == the checks shared by writer and reader =======================================================

@dataclass(frozen=True)
class _Position:
    """Where the job stands: section index, step within it, whether its noise is drawn, K outputs."""

    section: int
    step: int
    in_section: bool
    outputs: int


@dataclass(frozen=True)
class _Where:
    """The file a check is about, and how its failures begin (reading vs. refusing to write)."""

    path: Path
    prefix: str = ""

    def fail(self, problem: str) -> NoReturn:
        raise ResumeFileError(self.path, self.prefix + problem)


def _check_identity(job_id, model_identity, where: _Where) -> None:
    if not isinstance(job_id, str) or not SAFE_NAME.fullmatch(job_id):
        where.fail(f"job_id {str(job_id)[:80]!r} is not a safe name (letters, digits, '.', '_', '-'; "
                   "at most 128, not starting with '.')")
    if not isinstance(model_identity, dict) or len(model_identity) > MAX_IDENTITY_ENTRIES or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_TEXT and len(v) <= MAX_TEXT
            for k, v in model_identity.items()):
        where.fail(f"model_identity must map names to text (at most {MAX_IDENTITY_ENTRIES} entries)")


def _check_position(pos: _Position, plan: SectionPlan, params: JobParams, where: _Where) -> None:
    """Section/step/sampler bookkeeping must agree with the plan and the settings."""
    fail = where.fail
    if params.mode != plan.mode or params.lws != plan.lws:
        fail(f"params (mode {params.mode}, lws {params.lws}) disagree with the plan "
             f"(mode {plan.mode}, lws {plan.lws})")
    if not 0 <= pos.section <= plan.total_sections:
        fail(f"next_section {pos.section} is outside 0..{plan.total_sections} (total_sections)")
    if not 0 <= pos.step < params.steps:
        fail(f"step_in_section {pos.step} must be below the job's {params.steps} steps")
    if pos.section == plan.total_sections and pos.in_section:
        fail("the job is finished but a section is marked in progress")
    if pos.step > 0 and not pos.in_section:
        fail(f"step_in_section is {pos.step} but no section is marked in progress")
    if not 0 <= pos.outputs <= min(pos.step, MAX_SAMPLER_OUTPUTS):
        fail(f"sampler_outputs {pos.outputs} must be between 0 and min(step_in_section, {MAX_SAMPLER_OUTPUTS})")


def _expected_tensors(plan: SectionPlan, pos: _Position) -> TensorTable:
    """Names, dtypes and shapes the plan and position dictate (conditioning aside)."""
    latent = (plan.latent_height, plan.latent_width)
    expected = {
        HISTORY: ("F32", (1, LATENT_CHANNELS, plan.history_frames_after(pos.section), *latent)),
        START: ("F32", (1, LATENT_CHANNELS, 1, *latent)),
        GENERATOR: ("U8", (GENERATOR_STATE_BYTES,)),
    }
    if pos.in_section:
        expected[SAMPLER_X] = ("F32", plan.noise_shape())
    if pos.outputs:
        expected[SAMPLER_OUTPUTS] = ("F32", (pos.outputs, *plan.noise_shape()))
    return expected


def _expected_bytes(plan: SectionPlan, pos: _Position, with_embeddings: bool) -> int:
    """Upper bound for state.safetensors, from the plan: the cap it is read with."""
    tensors = sum(DTYPE_SIZES[code] * math.prod(shape) for code, shape in _expected_tensors(plan, pos).values())
    return MAX_HEADER_BYTES + 8 + tensors + (MAX_CONDITIONING_BYTES if with_embeddings else 0)


def _check_tensor_table(table: TensorTable, plan: SectionPlan, pos: _Position, with_embeddings: bool,
                        params: JobParams, where: _Where) -> None:
    """Every tensor present that should be, none that should not, each of the right dtype and shape."""
    fail = where.fail
    expected = _expected_tensors(plan, pos)
    cond = {name[len(COND_PREFIX):]: spec for name, spec in table.items() if name.startswith(COND_PREFIX)}
    for name in sorted(set(table) - set(expected)):
        if not name.startswith(COND_PREFIX):
            fail(f"unexpected tensor {name!r}")
    for name, (code, shape) in expected.items():
        if name not in table:
            why = (f" (the file says section {pos.section} is in progress at step {pos.step})"
                   if name in (SAMPLER_X, SAMPLER_OUTPUTS) else "")
            fail(f"the tensor {name!r} is missing{why}")
        if table[name][0] != code:
            fail(f"tensor {name!r} has dtype {table[name][0]}; expected {code}")
        if table[name][1] != shape:
            why = "" if name == GENERATOR else (f" for the section plan ({plan.mode}, lws {plan.lws}, "
                                                f"{plan.width}x{plan.height} px, section {pos.section})")
            fail(f"tensor {name!r} has shape {list(table[name][1])}; expected {list(shape)}{why}")
    if with_embeddings:
        _check_conditioning_table(cond, params, fail)
    elif cond:
        fail("it holds embeddings but job_info.json says it has none")


def _check_conditioning_table(cond: TensorTable, params: JobParams, fail) -> None:
    for name in sorted(set(cond) - set(COND_FIELDS)):
        fail(f"unknown embedding tensor {COND_PREFIX + name!r}")
    for name in COND_REQUIRED:
        if name not in cond:
            fail(f"the embedding tensor {COND_PREFIX + name!r} is missing")
    negatives = [name in cond for name in COND_NEGATIVE]
    if any(negatives) and not all(negatives):
        fail("the negative prompt embeddings are incomplete (need embeds, mask and pooled together)")
    if params.cfg != 1.0 and not all(negatives):
        fail(f"cfg is {params.cfg} (real guidance) but the negative prompt embeddings are missing")
    for name, (code, shape) in cond.items():
        allowed = MASK_CODES if name in COND_MASKS else FLOAT_CODES
        if code not in allowed:
            fail(f"embedding tensor {COND_PREFIX + name!r} has dtype {code}; expected one of {', '.join(allowed)}")
        if not 1 <= len(shape) <= 4:
            fail(f"embedding tensor {COND_PREFIX + name!r} has {len(shape)} dimensions")
    for prefix in ("", "negative_"):
        if prefix + "prompt_embeds" not in cond:
            continue
        embeds, mask = cond[prefix + "prompt_embeds"][1], cond[prefix + "prompt_mask"][1]
        if len(embeds) != 3 or mask != embeds[:2]:
            fail(f"{prefix}prompt_embeds {list(embeds)} and {prefix}prompt_mask {list(mask)} do not fit together")
    if COND_NEGATIVE[0] in cond and cond[COND_NEGATIVE[0]][1][2] != cond["prompt_embeds"][1][2]:
        fail("negative and positive prompt embeddings differ in width")
    total = sum(DTYPE_SIZES[code] * math.prod(shape) for code, shape in cond.values())
    if total > MAX_CONDITIONING_BYTES:
        fail(f"the embeddings take {format_size(total)}, more than {format_size(MAX_CONDITIONING_BYTES)}")


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf: both show in the extremes (NaN propagates), with no tensor-sized temporary."""
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _check_values(tensors: dict[str, torch.Tensor], where: _Where) -> None:
    """No NaN/Inf in any float tensor, masks hold 0/1, and the generator state is one torch accepts."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel() and not _finite(tensor):
            where.fail(f"tensor {name!r} contains NaN or Inf values")
        if name.startswith(COND_PREFIX) and name[len(COND_PREFIX):] in COND_MASKS and tensor.dtype != torch.bool \
                and bool(((tensor != 0) & (tensor != 1)).any()):
            where.fail(f"mask {name!r} holds values other than 0 and 1")
    try:
        torch.Generator("cpu").set_state(tensors[GENERATOR])
    except RuntimeError as exc:
        raise ResumeFileError(where.path, where.prefix + "generator_state is not a valid torch CPU generator "
                                                         "state") from exc


# == reading =======================================================================================

def read_resume_file(path: str | Path, *, conditioning_required: bool = False) -> ResumeData:
    """Read and validate a resume file (format v1, or a file of the original goan app).

    `conditioning_required`: the caller has no text/image encoders, so a file without embeddings
    is an error rather than a ResumeData whose `state.conditioning` is None.
    """
    path = Path(path)
    with SafeArchive(path) as archive:
        if archive.is_legacy:
            from .legacy import read_legacy  # legacy builds on the helpers of this module

            data = read_legacy(archive)
        else:
            data = _read_v1(archive)
    if conditioning_required and data.state.conditioning is None:
        raise ResumeFileError(path, "it holds no saved prompt and image embeddings, so continuing it needs "
                                    "the text and image encoders; load them (or resume where they are available)")
    return data


def inspect_resume_file(path: str | Path) -> dict:
    """Validated job_info and params plus member sizes, without loading the tensors (for `inspect`).

    Full validation of the tensors is `read_resume_file`'s job; legacy files are read fully,
    since only their latents tell where the job stands.
    """
    path = Path(path)
    with SafeArchive(path) as archive:
        if archive.is_legacy:
            from .legacy import read_legacy  # legacy builds on the helpers of this module

            data = read_legacy(archive)
            return {"path": str(path), "format_version": 0, "exact": False, "job_info": data.job_info,
                    "params": data.state.params.to_dict(), "members": archive.sizes(), "notes": data.notes}
        job_info, plan, position = _read_job_info(archive)
        params = _read_params(archive, job_info, plan, position)
        return {"path": str(path), "format_version": FORMAT_VERSION, "exact": True, "job_info": job_info,
                "params": params.to_dict(), "members": archive.sizes(), "notes": []}


def model_identity_mismatch(job_info: dict, identity: dict) -> str | None:
    """A warning when the models now loaded differ from those that made the file, else None.

    Only names present on both sides are compared: an unknown identity is no evidence of a change.
    """
    saved = job_info.get("model_identity") or {}
    changed = [f"{key}: file {saved[key]!r}, loaded {identity[key]!r}"
               for key in sorted(saved) if key in identity and identity[key] != saved[key]]
    if not changed:
        return None
    return ("This resume file was made with other models than the ones loaded now (" + "; ".join(changed)
            + "). It can continue, but the result will not match an uninterrupted run with the original models.")


def _read_v1(archive: "SafeArchive") -> ResumeData:
    path = archive.path
    job_info, plan, position = _read_job_info(archive)
    params = _read_params(archive, job_info, plan, position)
    with_embeddings = job_info["has_embeddings"]
    state_bytes = archive.read_checked(STATE, _expected_bytes(plan, position, with_embeddings), job_info)
    tensors = _load_state(state_bytes, plan, position, with_embeddings, params, path)
    source = decode_png(archive.read_checked(SOURCE_IMAGE, MAX_IMAGE_BYTES, job_info), SOURCE_IMAGE, path)
    end = (decode_png(archive.read_checked(END_IMAGE, MAX_IMAGE_BYTES, job_info), END_IMAGE, path)
           if END_IMAGE in archive.names else None)
    workflow = None
    if WORKFLOW in archive.names:
        workflow = load_json(archive.read_checked(WORKFLOW, MAX_WORKFLOW_BYTES, job_info), WORKFLOW, path)
        if not isinstance(workflow, dict):
            raise ResumeFileError(path, f"{WORKFLOW} must hold a JSON object (the ComfyUI graph)")

    sampler = None
    if position.in_section:
        outputs = list(tensors[SAMPLER_OUTPUTS].unbind(0)) if position.outputs else []
        sampler = SamplerState(tensors[SAMPLER_X], position.step, outputs)
    conditioning = None
    if with_embeddings:
        conditioning = Conditioning(**{k[len(COND_PREFIX):]: v for k, v in tensors.items() if k.startswith(COND_PREFIX)})
    state = JobState(job_id=job_info["job_id"], params=params, plan=plan, conditioning=conditioning,
                     start_latent=tensors[START], history_latents=tensors[HISTORY],
                     generator_state=tensors[GENERATOR], section=position.section, sampler=sampler,
                     model_identity=dict(job_info["model_identity"]))
    return ResumeData(state, source, end, workflow, job_info, exact=True, notes=[])


def _read_job_info(archive: "SafeArchive") -> tuple[dict, SectionPlan, _Position]:
    """job_info.json, version first (a newer file may have members this goan does not know)."""
    path = archive.path
    if JOB_INFO not in archive.names:
        raise ResumeFileError(path, f"it lacks {JOB_INFO}, so it is not a goan resume file (or is incomplete)")
    info = load_json(archive.read(JOB_INFO, MAX_JSON_BYTES), JOB_INFO, path)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ResumeFileError(path, f"{JOB_INFO} does not say format {FORMAT!r}: this is not a goan resume file")
    version = info.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ResumeFileError(path, f"{JOB_INFO}: format_version must be a whole number of at least 1")
    if version > FORMAT_VERSION:
        raise NewerFormatError(path, f"made by a newer goan (format {version}), please update goan "
                                     f"(this one reads format {FORMAT_VERSION})")
    archive.check_member_set(REQUIRED_MEMBERS, OPTIONAL_MEMBERS)
    plan, position = _check_job_info(info, archive)
    return info, plan, position


def _check_job_info(info: dict, archive: "SafeArchive") -> tuple[SectionPlan, _Position]:
    """Type-check every field of job_info.json; returns the plan and position it describes."""
    path = archive.path
    fail = _Where(path, f"{JOB_INFO}: ").fail

    def whole(key, low, high):
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            fail(f"{key} must be a whole number between {low} and {high}, got {str(value)[:40]!r}")
        return value

    def text(key):
        if not isinstance(info[key], str) or len(info[key]) > MAX_TEXT:
            fail(f"{key} must be text of at most {MAX_TEXT} characters")
        return info[key]

    def flag(key):
        if not isinstance(info[key], bool):
            fail(f"{key} must be true or false, got {str(info[key])[:40]!r}")
        return info[key]

    known = {"format", "format_version", "job_id", "mode", "plan", "next_section", "step_in_section",
             "in_section", "sampler_outputs", "total_sections", "model_identity", "producer", "created_at",
             "has_embeddings", "kind", "sha256"}
    for key in sorted(known - set(info)):
        fail(f"the field {key!r} is missing")
    for key in sorted(set(info) - known):
        fail(f"unknown field {key[:40]!r}")
    _check_identity(info["job_id"], info["model_identity"], _Where(path, f"{JOB_INFO}: "))
    try:
        plan = SectionPlan.from_dict(info["plan"])
    except (InputError, TypeError) as exc:
        fail(f"plan: {exc}")
    if text("mode") != plan.mode:
        fail(f"mode {info['mode'][:40]!r} disagrees with the plan's mode {plan.mode!r}")
    if whole("total_sections", 1, 10_000) != plan.total_sections:
        fail(f"total_sections {info['total_sections']} disagrees with the plan's {plan.total_sections}")
    position = _Position(whole("next_section", 0, 10_000), whole("step_in_section", 0, 10_000),
                         flag("in_section"), whole("sampler_outputs", 0, MAX_SAMPLER_OUTPUTS))
    if not text("producer").startswith("goan"):
        fail(f"producer {info['producer'][:40]!r} is not goan")
    try:
        created = datetime.fromisoformat(text("created_at"))
    except ValueError:
        fail(f"created_at {info['created_at'][:40]!r} is not an ISO 8601 time")
    if created.tzinfo is None:
        fail("created_at must carry a time zone (UTC)")
    flag("has_embeddings")
    if info["kind"] not in KINDS:
        fail(f"kind must be one of {', '.join(KINDS)}")
    sums = info["sha256"]
    if not isinstance(sums, dict) or not all(
            isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in sums.values()):
        fail("sha256 must map member names to lowercase hex SHA-256 digests")
    if set(sums) != set(archive.names) - {JOB_INFO}:
        fail("the checksum list does not match the members of the archive "
             f"(listed: {', '.join(sorted(sums))[:200]}; present: {', '.join(sorted(set(archive.names) - {JOB_INFO}))})")
    return plan, position


def _read_params(archive: "SafeArchive", job_info: dict, plan: SectionPlan, position: _Position) -> JobParams:
    path = archive.path
    raw = load_json(archive.read_checked(PARAMS, MAX_JSON_BYTES, job_info), PARAMS, path)
    try:
        params = JobParams.from_dict(raw)
    except (InputError, TypeError) as exc:
        raise ResumeFileError(path, f"{PARAMS}: {exc}") from exc
    _check_position(position, plan, params, _Where(path, f"{JOB_INFO} and {PARAMS}: "))
    return params


def _load_state(data: bytearray, plan: SectionPlan, pos: _Position, with_embeddings: bool, params: JobParams,
                path: Path) -> dict[str, torch.Tensor]:
    """Validate the safetensors header against the plan, then view the tensors in `data` and check them.

    The header has been checked to tile the data exactly, so each tensor is a view into `data`
    (no copy) at offsets known to be in range.
    """
    table = parse_safetensors_header(data, STATE, path)
    _check_tensor_table(table, plan, pos, with_embeddings, params, _Where(path, f"{STATE}: "))
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(bytes(data[8:8 + length]))
    view = memoryview(data)[8 + length:]
    tensors = {}
    for name, (code, shape) in table.items():
        begin, end = header[name]["data_offsets"]
        dtype = TORCH_DTYPES[code]
        flat = torch.frombuffer(view[begin:end], dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    _check_values(tensors, _Where(path, f"{STATE}: "))
    return tensors


# == defensive decoding helpers (also used by legacy.py) ==========================================

def parse_safetensors_header(data: bytes, member: str, path: Path) -> TensorTable:
    """Check a safetensors header (8-byte LE length + JSON) before safetensors ever sees the bytes.

    Every entry must have a known dtype, a sane shape, and offsets that lie inside the data and
    hold exactly shape x dtype-size bytes; together the entries must tile the data exactly, with
    no overlap, gap or trailing bytes.
    """
    fail = _Where(path, f"{member}: the safetensors header is invalid: ").fail

    if len(data) < 8:
        fail("the member is shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES:
        fail(f"it claims {length} bytes of header (at most {MAX_HEADER_BYTES})")
    if 8 + length > len(data):
        fail(f"it claims {length} bytes of header but the member has only {len(data) - 8} after the length")
    header = load_json(data[8:8 + length], f"{member} header", path)
    if not isinstance(header, dict):
        fail("it is not a JSON object")
    buffer_len = len(data) - 8 - length
    table: TensorTable = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                fail("__metadata__ must map text to text")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            fail(f"entry {name[:80]!r} must have exactly dtype, shape and data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in DTYPE_SIZES:
            fail(f"tensor {name[:80]!r} has an unsupported dtype {str(code)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31 for d in shape):
            fail(f"tensor {name[:80]!r} has an invalid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            fail(f"tensor {name[:80]!r} has invalid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_len:
            fail(f"tensor {name[:80]!r} lies at bytes {begin}..{end}, outside the {buffer_len} bytes of data")
        if end - begin != math.prod(shape) * DTYPE_SIZES[code]:
            fail(f"tensor {name[:80]!r} spans {end - begin} bytes but {code} x {shape} needs "
                 f"{math.prod(shape) * DTYPE_SIZES[code]}")
        table[name] = (code, tuple(shape))
        spans.append((begin, end, name))
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            fail(f"tensor {name[:80]!r} " + ("overlaps another" if begin < cursor else "leaves a gap before it"))
        cursor = end
    if cursor != buffer_len:
        fail(f"the tensors cover {cursor} of the {buffer_len} data bytes")
    return table


def load_json(data: bytes, member: str, path: Path):
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting."""
    def no_constants(name):
        raise ValueError(f"{name} is not allowed")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)[:40]!r}")
        return dict(pairs)

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as exc:
        raise ResumeFileError(path, f"{member} is not valid UTF-8 text") from exc
    except RecursionError as exc:
        raise ResumeFileError(path, f"{member} is nested too deeply to be goan's JSON") from exc
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ResumeFileError(path, f"{member} is not valid JSON: {exc}") from exc


def decode_png(data: bytes, member: str, path: Path | None) -> np.ndarray:
    """Decode a PNG (size-checked before pixels are decoded) into an np.uint8 HxWx3 array."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ResumeFileError(path, f"{member} is not a PNG image")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            width, height = image.size
            if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
                raise ResumeFileError(path, f"{member} is {width}x{height} pixels: too large "
                                            f"(at most {MAX_IMAGE_SIDE} on a side)")
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ResumeFileError(path, f"{member} is too large to decode: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ResumeFileError(path, f"{member} is not a valid PNG image: {exc}") from exc


class SafeArchive:
    """A zip opened for reading with every structural check done before any member is read.

    Checks: a real, complete zip; a bounded number of members; names that are plain, unique
    member names (no path parts, '..', backslashes, drive letters, directories or symlinks);
    stored or deflated data only, unencrypted; declared sizes within the total cap; no member
    compressed beyond a plausible ratio. Members are read by name into memory, never extracted.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(path, "rb")
        except FileNotFoundError as exc:
            raise ResumeFileError(path, "file not found") from exc
        except IsADirectoryError as exc:
            raise ResumeFileError(path, "is a folder, not a resume file") from exc
        except OSError as exc:
            raise ResumeFileError(path, f"cannot be opened: {exc.strerror or exc}") from exc
        try:
            self._zip = self._open_zip()
            self._infos = self._check_members()
        except BaseException:
            self._file.close()
            raise
        self.names = tuple(self._infos)
        self.is_legacy = "latent_history.pt" in self._infos and STATE not in self._infos

    def __enter__(self) -> "SafeArchive":
        return self

    def __exit__(self, *exc_info) -> None:
        self._zip.close()
        self._file.close()

    def sizes(self) -> dict[str, int]:
        return {name: info.file_size for name, info in self._infos.items()}

    def check_member_set(self, required, optional) -> None:
        for name in self.names:
            if name not in required and name not in optional:
                raise ResumeFileError(self.path, f"unexpected member {name!r} (this kind of resume file holds only "
                                                 f"{', '.join(required + optional)})")
        for name in required:
            if name not in self._infos:
                raise ResumeFileError(self.path, f"it is missing {name}; it is not a complete goan resume file")

    def read(self, name: str, limit: int, sha256: str | None = None) -> bytearray:
        """The bytes of member `name`, refused if it declares more than `limit` bytes.

        With `sha256`, the bytes are hashed on a second thread while zip reads them and checks
        its CRC-32, and must match.
        """
        info = self._infos[name]
        if info.file_size > limit:
            raise ResumeFileError(self.path, f"{name} is too large: {format_size(info.file_size)} "
                                             f"(at most {format_size(limit)} for this job)")
        data = bytearray(info.file_size)
        view = memoryview(data)
        digest = hashlib.sha256()
        try:
            with self._zip.open(info) as member, ThreadPoolExecutor(1, thread_name_prefix="goan-sha256") as pool:
                done, pending = 0, None
                while done < len(data):
                    got = member.readinto(view[done:done + CHUNK_BYTES])
                    if not got:
                        break
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(digest.update, view[done:done + got]) if sha256 else None
                    done += got
                if pending is not None:
                    pending.result()
                extra = member.read(1)  # also makes zip check the CRC-32 of a member that ends early
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
            raise ResumeFileError(self.path, f"{name} is damaged: {exc}") from exc
        except OSError as exc:
            raise ResumeFileError(self.path, f"{name} cannot be read: {exc.strerror or exc}") from exc
        if done != info.file_size or extra:
            raise ResumeFileError(self.path, f"{name} is damaged: it holds {done + len(extra)} bytes or more, "
                                             f"its directory entry says {info.file_size}")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ResumeFileError(self.path, f"{name} fails its checksum: the file is damaged or was edited")
        return data

    def read_checked(self, name: str, limit: int, job_info: dict) -> bytearray:
        """`read`, comparing with the SHA-256 listed in job_info.json."""
        return self.read(name, limit, job_info["sha256"][name])

    def _open_zip(self) -> zipfile.ZipFile:
        size = self._file.seek(0, io.SEEK_END)
        if size == 0:
            raise ResumeFileError(self.path, "the file is empty (an interrupted download or copy?)")
        if size > MAX_TOTAL_BYTES + 64 * 1024**2:
            raise ResumeFileError(self.path, f"the file is {format_size(size)}, larger than any goan resume file")
        self._file.seek(0)
        head = self._file.read(4)
        self._file.seek(0)
        try:
            return zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError) as exc:
            if head == b"PK\x03\x04":
                raise ResumeFileError(self.path, "the file is truncated or damaged: its zip directory is missing "
                                                 "or broken (an incomplete download or copy?)") from exc
            raise ResumeFileError(self.path, "is not a goan resume file (not a zip archive)") from exc

    def _check_members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        file_size = self._file.seek(0, io.SEEK_END)
        if len(infos) > MAX_MEMBERS:
            raise ResumeFileError(self.path, f"it has {len(infos)} members; a goan resume file has at most "
                                             f"{MAX_MEMBERS} (refusing to read it)")
        total = sum(info.file_size for info in infos)
        if total > MAX_TOTAL_BYTES:
            raise ResumeFileError(self.path, f"its members add up to {format_size(total)}, more than the "
                                             f"{format_size(MAX_TOTAL_BYTES)} allowed (a zip bomb?)")
        checked: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if name in checked:
                raise ResumeFileError(self.path, f"the member name {name!r} appears twice (a tampered archive)")
            _check_member_name(name, self.path)
            if info.header_offset < 0 or info.header_offset + info.compress_size > file_size:
                raise ResumeFileError(self.path, f"the member {name!r} lies outside the file: it is damaged "
                                                 "or truncated")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ResumeFileError(self.path, f"the member {name!r} is a symbolic link; refusing it")
            if info.flag_bits & 0x1:
                raise ResumeFileError(self.path, f"the member {name!r} is encrypted; goan never encrypts")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ResumeFileError(self.path, f"the member {name!r} uses compression method "
                                                 f"{info.compress_type}; goan writes only stored or deflated data")
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ResumeFileError(self.path, f"the member {name!r} expands {format_size(info.compress_size)} "
                                                 f"to {format_size(info.file_size)}: a compression ratio no goan file "
                                                 "has (a zip bomb?)")
            checked[name] = info
        return checked


def _check_member_name(name: str, path: Path) -> None:
    """Member names are plain file names: nothing that could mean a place on a file system."""
    unsafe = (not name or len(name) > 64 or name.startswith(("/", ".")) or "\\" in name or "/" in name
              or ":" in name or ".." in name or any(ord(c) < 32 for c in name))
    if unsafe:
        raise ResumeFileError(path, f"unsafe member name {name[:80]!r} (a path, not a plain name; a tampered archive?)")
