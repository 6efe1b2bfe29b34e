"""Writing a resume file: validated like a reader would, streamed from the tensors' own memory, crash-safe."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import stat
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..errors import InputError, ResumeFileError
from ..sampling import JobState
from ..vocabulary import FileKind
from ..sampling import SectionPlan
from .archive import decode_png, json_too_deep
from .atomic import atomic_writer, check_free_space, format_size
from .checks import (Where, check_identity, check_image_size, check_loras, check_plan, check_position, check_run_info,
                     check_teacache, check_tensor_table, check_values, image_bytes_limit, position_of)
from .format import (CHUNK_BYTES, COND_PREFIX, DTYPE_CODES, END_IMAGE, END_LATENT, FORMAT, FORMAT_VERSION,
                     GENERATOR, HISTORY, JOB_INFO, MAX_IMAGE_SIDE, MAX_JSON_DEPTH, MAX_WORKFLOW_BYTES, PARAMS, RATIO_FLOOR, SAMPLER_OUTPUTS,
                     SAMPLER_X, SOURCE_IMAGE, START, STATE, TEACACHE_PREFIX, WORKFLOW)
from .lineage import check_lineage

log = logging.getLogger("goan")


def write_resume_file(state: JobState, path: str | Path, *, source_image, workflow=None,
                      include_embeddings: bool = True, kind: FileKind | str = FileKind.PAUSE,
                      run: dict | None = None) -> Path:
    """Save `state` as a format v1 resume file at `path`, crash-safely; returns `path`.

    `source_image`: an np.uint8 HxWx3 array or PNG bytes. `workflow`: the ComfyUI graph
    (a dict) or None; a graph the reader would refuse (too large, nested too deeply, not JSON) is
    left out with a logged warning rather than costing the job its resume file. Embeddings are stored when `include_embeddings` and the state has them.
    `run` (optional, informational) notes how the run that writes the file computes (`checks.check_run_info`).
    The state is validated exactly as a reader would, so a file that is written can be read.
    Free space is checked before anything is written. The tensors are streamed from their own
    memory into the archive (no serialised copy), hashed on a second thread while zip computes
    its CRC-32 and writes; job_info.json, which carries the checksums, is written last.
    """
    path = Path(path)
    try:
        kind = FileKind(kind)
    except ValueError:
        raise InputError(f"unknown resume file kind {kind!r}: use one of {', '.join(FileKind)}") from None
    with_embeddings = include_embeddings and state.conditioning is not None
    if run is not None:
        check_run_info(run, Where(path, "not saved: "))
    others, tensors = _encode_members(state, path, source_image, workflow, with_embeddings)
    header = _safetensors_header(tensors)
    state_size = len(header) + sum(t.numel() * t.element_size() for t in tensors.values())
    check_free_space(path.parent, sum(map(len, others.values())) + state_size + 64 * 1024, path)
    stamp = datetime.now().timetuple()[:6]
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in others.items()}
    with atomic_writer(path) as fh, zipfile.ZipFile(fh, "w") as archive:
        for name, data in others.items():
            archive.writestr(_zip_entry(name, stamp, len(data)), data)
        entry = _zip_entry(STATE, stamp, state_size)
        entry.file_size = state_size
        with archive.open(entry, "w", force_zip64=state_size > 2**31) as member:
            checksums[STATE] = _write_hashed(member, [memoryview(header)] + [_raw_bytes(t) for t in tensors.values()],
                                             fh)
        job_info = {**_job_info(state, with_embeddings, kind, checksums), **({} if run is None else {"run": run})}
        data = _json_bytes(job_info)
        archive.writestr(_zip_entry(JOB_INFO, stamp, len(data)), data)
    return path


def _zip_entry(name: str, stamp, size: int) -> zipfile.ZipInfo:
    """A regular-file entry of `size` bytes; JSON is deflated, images and tensors are stored as they are.

    JSON over RATIO_FLOOR is stored too: the reader refuses large members deflated beyond MAX_RATIO
    (zip bombs), and long repetitive prompts (a lineage holds up to four) deflate that well.
    """
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    deflate = name.endswith(".json") and size <= RATIO_FLOOR
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
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


def _encode_members(state: JobState, path: Path, source_image, workflow,
                    with_embeddings: bool) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """The small members as bytes and the state tensors (validated, contiguous, in file order)."""
    tensors = _state_tensors(state, with_embeddings)
    try:
        state.params.validate()
    except InputError as exc:
        raise ResumeFileError(path, f"not saved: the job's settings are invalid: {exc}") from exc
    table = {name: (DTYPE_CODES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for name, t in tensors.items()}
    where = Where(path, "not saved, the job state is inconsistent: ")
    position = position_of(state)
    check_identity(state.job_id, state.model_identity, where)
    if state.loras:
        check_loras([use.to_dict() for use in state.loras], where)
    if state.lineage is not None:
        check_lineage(state.lineage, where)
    check_plan(state.params, state.plan, where)
    check_position(position, state.plan, state.params, where)
    check_tensor_table(table, state.plan, position, with_embeddings, state.params, where)
    check_teacache(_teacache_info(state), table, state.plan, position, state.params, where)
    check_values(tensors, where)

    others = {PARAMS: _json_bytes(state.params.to_dict()),
              SOURCE_IMAGE: _png_bytes(source_image, "source_image", path, state.plan)}
    if (state.end_image is None) != (state.end_latent is None):
        where.fail("an end frame needs both its image and its latent")
    if state.end_image is not None:
        others[END_IMAGE] = _png_bytes(state.end_image, "end_image", path, state.plan)
    if workflow is not None:
        if not isinstance(workflow, dict):
            raise InputError(f"workflow must be a dict (the ComfyUI graph), got {type(workflow).__name__}")
        encoded = _workflow_bytes(workflow, path)
        if encoded is not None:
            others[WORKFLOW] = encoded
    return others, {name: tensors[name].contiguous() for name in sorted(tensors)}


def _job_info(state: JobState, with_embeddings: bool, kind: FileKind, checksums: dict[str, str]) -> dict:
    position = position_of(state)
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
        "kind": kind.value,
        "sha256": checksums,
        **({"loras": [use.to_dict() for use in state.loras]} if state.loras else {}),
        **({} if state.teacache is None else {"teacache": _teacache_info(state)}),
        **({"skipped_calls": state.skipped_calls} if state.skipped_calls else {}),
        **({} if state.lineage is None else {"lineage": state.lineage}),
    }


def _teacache_info(state: JobState) -> dict | None:
    """job_info's optional "teacache" field: each pass's counters (its tensors go to state.safetensors)."""
    if state.teacache is None:
        return None
    return {name: {"count": cache.count, "accumulated": cache.accumulated} for name, cache in state.teacache.items()}


def _state_tensors(state: JobState, with_embeddings: bool) -> dict[str, torch.Tensor]:
    tensors = {HISTORY: state.history_latents, START: state.start_latent, GENERATOR: state.generator_state}
    if state.end_latent is not None:
        tensors[END_LATENT] = state.end_latent
    if state.sampler is not None:
        tensors[SAMPLER_X] = state.sampler.x
        if state.sampler.model_outputs:
            tensors[SAMPLER_OUTPUTS] = torch.stack([m.detach().cpu() for m in state.sampler.model_outputs])
    if with_embeddings:
        tensors.update({COND_PREFIX + k: v for k, v in state.conditioning.tensors().items()})
    for name, cache in (state.teacache or {}).items():
        tensors.update({f"{TEACACHE_PREFIX}{name}.modulated": cache.modulated,
                        f"{TEACACHE_PREFIX}{name}.residual": cache.residual})
    return {name: t.detach().cpu() for name, t in tensors.items()}


def _workflow_bytes(workflow: dict, path: Path) -> bytes | None:
    """workflow.json's bytes, or None (with a warning) for a graph the reader would refuse."""
    why = None
    if json_too_deep(workflow):
        why = f"it is nested more than {MAX_JSON_DEPTH} levels deep"
    else:
        try:
            encoded = _json_bytes(workflow)
        except (TypeError, ValueError, RecursionError) as exc:
            why = f"it is not plain JSON ({str(exc)[:80]})"
        else:
            if len(encoded) <= MAX_WORKFLOW_BYTES:
                return encoded
            why = f"it is {format_size(len(encoded))}, more than the {format_size(MAX_WORKFLOW_BYTES)} a file may embed"
    log.warning("goan: %s: saved without its workflow: %s", path, why)
    return None


def _json_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=1).encode("utf-8")


def _png_bytes(image, name: str, path: Path, plan: SectionPlan) -> bytes:
    """PNG bytes of an np.uint8 HxWx3 array, or given PNG bytes after checking they decode.

    Refused as the reader would: an image far larger than the plan's frame, or PNG bytes beyond
    what such an image needs.
    """
    where = Where(path, "not saved: ")

    def fits(width, height):
        check_image_size(width, height, plan, name, where)

    if isinstance(image, (bytes, bytearray)):
        if len(image) > image_bytes_limit(plan):
            where.fail(f"{name} is {format_size(len(image))} of PNG, more than a {plan.width}x{plan.height} job's "
                       f"{format_size(image_bytes_limit(plan))}")
        decode_png(bytes(image), name, path, fits)
        return bytes(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{name} must be an np.uint8 array of shape (H, W, 3) or PNG bytes")
    if not 0 < max(image.shape[:2]) <= MAX_IMAGE_SIDE or min(image.shape[:2]) == 0:
        raise InputError(f"{name} must be between 1 and {MAX_IMAGE_SIDE} pixels on each side")
    fits(image.shape[1], image.shape[0])
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()

