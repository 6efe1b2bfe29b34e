"""Reading a resume file: every field and tensor validated against the file's own plan before use.

Reading trusts nothing: the archive's structure, sizes and names are checked before any member is
read, members are read by name into memory (never extracted), every JSON field and every tensor
(name, dtype, shape against the plan, finiteness, magnitude) is validated, and each problem raises
one ResumeFileError naming the file and what is wrong. Files of the original goan app go to `legacy`.

Memory follows the checked plan, never a size the file declares: the plan must follow from the
settings (`checks.check_plan`), the state member's header is read and checked against the plan
before its data buffer is allocated (exactly the size the checked header needs), and the source
image's declared size is checked against the plan's frame before a pixel is decoded.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path

import torch

from ..errors import InputError, NewerFormatError, ResumeFileError
from ..params import MAX_SECTIONS, JobParams
from ..sampling import Conditioning, JobState, SamplerState, SectionPlan
from ..sampling.teacache import PassCache
from ..vocabulary import FileKind
from .archive import SafeArchive, decode_png, header_length, load_json, parse_header_table
from .checks import (Position, Where, check_identity, check_image_size, check_loras, check_plan, check_position,
                     check_run_info, check_teacache, check_tensor_table, check_values, expected_bytes,
                     image_bytes_limit)
from .format import (COND_PREFIX, END_IMAGE, END_LATENT, FORMAT, FORMAT_VERSION, GENERATOR, HISTORY,
                     IMAGE_AREA_FACTOR, JOB_INFO, MAX_ABS_EMBEDDING, MAX_ABS_LATENT, MAX_JOB_INFO_BYTES, MAX_JSON_BYTES,
                     MAX_JSON_DEPTH, MAX_SAMPLER_OUTPUTS, MAX_TEXT,
                     MAX_WORKFLOW_BYTES, OPTIONAL_MEMBERS, PARAMS, REQUIRED_MEMBERS, SAMPLER_OUTPUTS, SAMPLER_X,
                     SOURCE_IMAGE, START, STATE, TEACACHE_PREFIX, TORCH_DTYPES, WORKFLOW, ResumeData, ResumeSummary)
from .legacy import read_legacy
from .lineage import check_lineage

# What goan writes (datetime.isoformat, seconds) and what other tools commonly write (Z, fractions).
CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})?(Z|[+-]\d{2}:\d{2})")


def read_resume_file(path: str | Path, *, conditioning_required: bool = False) -> ResumeData:
    """Read and validate a resume file (format v1, or a file of the original goan app).

    `conditioning_required`: the caller has no text/image encoders, so a file without embeddings
    is an error rather than a ResumeData whose `state.conditioning` is None.
    """
    path = Path(path)
    with SafeArchive(path) as archive:
        if archive.is_legacy:
            data = read_legacy(archive)
        else:
            data = _read_v1(archive)
    if conditioning_required and data.state.conditioning is None:
        raise ResumeFileError(path, "it holds no saved prompt and image embeddings, so continuing it needs "
                                    "the text and image encoders; load them (or resume where they are available)")
    return data


CHECKED_V1 = (
    "zip structure: member names, count, sizes, compression methods and ratios; nothing extracted",
    "job_info.json: every field typed and in range; format version",
    "SHA-256 of every member against job_info.json, and each member's CRC-32",
    "params.json: every setting typed and in range",
    "plan against params: mode, lws, section count for the seconds, frame size a bucket of the resolution, "
    "sections and file size within goan's limits",
    "position (section, step, sampler outputs) against the plan and the steps",
    "state.safetensors: header read and checked before the data; every tensor's name, dtype and shape "
    "against the plan; embeddings' shapes and total size",
    f"tensor values: finite, latents within {MAX_ABS_LATENT:g}, embeddings within {MAX_ABS_EMBEDDING:g}, "
    "masks 0/1, generator state accepted by torch",
    f"source_image.png: a PNG of at most {IMAGE_AREA_FACTOR}x the plan's pixels, decoded",
    f"workflow.json: a JSON object at most {MAX_JSON_DEPTH} levels deep",
)
CHECKED_LEGACY = (
    "zip structure: member names, count, sizes, compression methods and ratios; nothing extracted",
    "torch >= 2.6 (safe weights-only unpickler), latent_history.pt read as plain tensor data; nothing run",
    f"latents: shape, dtype, finite, within {MAX_ABS_LATENT:g}",
    "params.json and job_info.json mapped onto goan's settings; plan derived from the latents and checked "
    "against the settings",
    "source_image.png: a PNG of exactly the latents' frame size, decoded",
)


def inspect_resume_file(path: str | Path) -> dict:
    """Validate `path` exactly as `read_resume_file` does, and summarise it (for `inspect`).

    `checked` lists what was verified, which is everything resume verifies: a file inspect reports
    is one resume accepts (short of the encoders that a file without embeddings needs).
    """
    path = Path(path)
    with SafeArchive(path) as archive:
        data = read_legacy(archive) if archive.is_legacy else _read_v1(archive)
        members = archive.sizes()
    return {"path": str(path), "format_version": data.job_info["format_version"], "exact": data.exact,
            "job_info": data.job_info, "params": data.state.params.to_dict(), "members": members,
            "notes": list(data.notes), "has_workflow": data.workflow is not None,
            "checked": list(CHECKED_LEGACY if not data.exact else CHECKED_V1)}


def read_resume_summary(path: str | Path) -> ResumeSummary:
    """The job_info, params and workflow of a resume file, each checked as `read_resume_file` checks
    them (zip structure, checksums, fields, plan against params), without reading the state, the
    tensors or the image: the cost of showing a file does not grow with its size. A file of the
    original goan app is read whole (its settings are derived from its latents).
    """
    path = Path(path)
    with SafeArchive(path) as archive:
        if archive.is_legacy:
            return summary_of(read_legacy(archive), validated=True)
        job_info, plan, position = _read_job_info(archive)
        params = _read_params(archive, job_info, plan, position)
        workflow = _read_workflow(archive, job_info)
    return ResumeSummary(job_info, params.to_dict(), workflow, exact=True, notes=[], validated=False)


def summary_of(data: ResumeData, *, validated: bool) -> ResumeSummary:
    """The summary of a file already read (its own copies of the dicts)."""
    return ResumeSummary(copy.deepcopy(data.job_info), data.state.params.to_dict(), copy.deepcopy(data.workflow),
                         data.exact, list(data.notes), validated)


def _read_workflow(archive: "SafeArchive", job_info: dict) -> dict | None:
    if WORKFLOW not in archive.names:
        return None
    workflow = load_json(archive.read_checked(WORKFLOW, MAX_WORKFLOW_BYTES, job_info), WORKFLOW, archive.path)
    if not isinstance(workflow, dict):
        raise ResumeFileError(archive.path, f"{WORKFLOW} must hold a JSON object (the ComfyUI graph)")
    return workflow


def _read_v1(archive: "SafeArchive") -> ResumeData:
    path = archive.path
    job_info, plan, position = _read_job_info(archive)
    params = _read_params(archive, job_info, plan, position)
    with_embeddings = job_info["has_embeddings"]
    tensors = _load_state(archive, job_info, plan, position, with_embeddings, params)

    def fits(width, height):
        check_image_size(width, height, plan, SOURCE_IMAGE, Where(path))

    source = decode_png(archive.read_checked(SOURCE_IMAGE, image_bytes_limit(plan), job_info), SOURCE_IMAGE, path,
                        fits)
    workflow = _read_workflow(archive, job_info)
    end_image = None
    if (END_IMAGE in archive.names) != (END_LATENT in tensors):
        Where(path).fail(f"an end frame needs both {END_IMAGE} and the tensor {END_LATENT!r}")
    if END_IMAGE in archive.names:
        end_image = decode_png(archive.read_checked(END_IMAGE, image_bytes_limit(plan), job_info), END_IMAGE, path,
                               fits)

    sampler = None
    if position.in_section:
        outputs = list(tensors[SAMPLER_OUTPUTS].unbind(0)) if position.outputs else []
        sampler = SamplerState(tensors[SAMPLER_X], position.step, outputs)
    conditioning = None
    if with_embeddings:
        conditioning = Conditioning.from_tensors(
            {k[len(COND_PREFIX):]: v for k, v in tensors.items() if k.startswith(COND_PREFIX)})
    teacache = None
    if job_info.get("teacache") is not None:
        teacache = {name: PassCache(entry["count"], float(entry["accumulated"]),
                                    tensors[f"{TEACACHE_PREFIX}{name}.modulated"],
                                    tensors[f"{TEACACHE_PREFIX}{name}.residual"])
                    for name, entry in job_info["teacache"].items()}
    state = JobState(job_id=job_info["job_id"], params=params, plan=plan, conditioning=conditioning,
                     start_latent=tensors[START], history_latents=tensors[HISTORY],
                     generator_state=tensors[GENERATOR], section=position.section, sampler=sampler,
                     model_identity=dict(job_info["model_identity"]), teacache=teacache,
                     loras=check_loras(job_info["loras"], Where(path)) if "loras" in job_info else (),
                     skipped_calls=job_info.get("skipped_calls", 0), lineage=copy.deepcopy(job_info.get("lineage")),
                     end_image=end_image, end_latent=tensors.get(END_LATENT))
    return ResumeData(state, source, workflow, job_info, exact=True, notes=[])


def _read_job_info(archive: "SafeArchive") -> tuple[dict, SectionPlan, Position]:
    """job_info.json, version first (a newer file may have members this goan does not know)."""
    path = archive.path
    if JOB_INFO not in archive.names:
        raise ResumeFileError(path, f"it lacks {JOB_INFO}, so it is not a goan resume file (or is incomplete)")
    info = load_json(archive.read(JOB_INFO, MAX_JOB_INFO_BYTES), JOB_INFO, path)
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


def _check_job_info(info: dict, archive: "SafeArchive") -> tuple[SectionPlan, Position]:
    """Type-check every field of job_info.json; returns the plan and position it describes."""
    path = archive.path
    fail = Where(path, f"{JOB_INFO}: ").fail

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
    for key in sorted(set(info) - known - {"teacache", "skipped_calls", "loras", "run", "lineage"}):  # optional
        fail(f"unknown field {key[:40]!r}")
    if "loras" in info:
        check_loras(info["loras"], Where(path, f"{JOB_INFO}: "))
    if "run" in info:
        check_run_info(info["run"], Where(path, f"{JOB_INFO}: "))
    if "lineage" in info:
        check_lineage(info["lineage"], Where(path, f"{JOB_INFO}: "))
    if "teacache" in info and info["teacache"] is None:
        fail("teacache must be an object when present")
    if "skipped_calls" in info:
        whole("skipped_calls", 0, 2 * MAX_SECTIONS * 200)
    check_identity(info["job_id"], info["model_identity"], Where(path, f"{JOB_INFO}: "))
    try:
        plan = SectionPlan.from_dict(info["plan"])
    except (InputError, TypeError) as exc:
        fail(f"plan: {exc}")
    if text("mode") != plan.mode:
        fail(f"mode {info['mode'][:40]!r} disagrees with the plan's mode {plan.mode!r}")
    if whole("total_sections", 1, MAX_SECTIONS) != plan.total_sections:
        fail(f"total_sections {info['total_sections']} disagrees with the plan's {plan.total_sections}")
    position = Position(whole("next_section", 0, MAX_SECTIONS), whole("step_in_section", 0, 10_000),
                         flag("in_section"), whole("sampler_outputs", 0, MAX_SAMPLER_OUTPUTS))
    if not text("producer").startswith("goan"):
        fail(f"producer {info['producer'][:40]!r} is not goan")
    created_at = text("created_at")
    if not CREATED_AT.fullmatch(created_at):  # one format on every Python (3.11 parses far more than 3.10)
        fail(f"created_at {created_at[:40]!r} is not an ISO 8601 time with a time zone (like "
             "2026-12-01T21:52:00+00:00)")
    try:
        datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        fail(f"created_at {created_at[:40]!r} is not a valid time")
    flag("has_embeddings")
    if info["kind"] not in {kind.value for kind in FileKind}:
        fail(f"kind must be one of {', '.join(FileKind)}")
    sums = info["sha256"]
    if not isinstance(sums, dict) or not all(
            isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in sums.values()):
        fail("sha256 must map member names to lowercase hex SHA-256 digests")
    if set(sums) != set(archive.names) - {JOB_INFO}:
        fail("the checksum list does not match the members of the archive "
             f"(listed: {', '.join(sorted(sums))[:200]}; present: {', '.join(sorted(set(archive.names) - {JOB_INFO}))})")
    return plan, position


def _read_params(archive: "SafeArchive", job_info: dict, plan: SectionPlan, position: Position) -> JobParams:
    path = archive.path
    raw = load_json(archive.read_checked(PARAMS, MAX_JSON_BYTES, job_info), PARAMS, path)
    try:
        if isinstance(raw, dict) and "teacache" not in raw:
            raw = {**raw, "teacache": False}  # a job saved before goan had TeaCache continues without it
        params = JobParams.from_dict(raw)
    except (InputError, TypeError) as exc:
        raise ResumeFileError(path, f"{PARAMS}: {exc}") from exc
    where = Where(path, f"{JOB_INFO} and {PARAMS}: ")
    check_plan(params, plan, where)
    check_position(position, plan, params, where)
    return params


def _load_state(archive: "SafeArchive", job_info: dict, plan: SectionPlan, pos: Position, with_embeddings: bool,
                params: JobParams) -> dict[str, torch.Tensor]:
    """Read and check the safetensors header against the plan, then read exactly the data it needs.

    The data buffer is allocated only once the header has been checked against the plan and to
    tile the member exactly, so its size is what the checked plan (and the checked embeddings)
    need. Each tensor is a view into it (no copy) at offsets known to be in range.
    """
    path = archive.path
    with archive.member(STATE, expected_bytes(plan, pos, with_embeddings), job_info["sha256"][STATE]) as member:
        if member.size < 8:
            Where(path, f"{STATE}: the safetensors header is invalid: ").fail(
                "the member is shorter than its 8-byte header length")
        length = header_length(member.read(8), member.size, STATE, path)
        header_bytes = member.read(length)
        buffer_len = member.size - 8 - length
        table = parse_header_table(header_bytes, buffer_len, STATE, path)
        check_tensor_table(table, plan, pos, with_embeddings, params, Where(path, f"{STATE}: "))
        check_teacache(job_info.get("teacache"), table, plan, pos, params, Where(path, f"{JOB_INFO} and {STATE}: "))
        data = member.read(buffer_len)
        member.finish()
    header = json.loads(bytes(header_bytes))
    view = memoryview(data)
    tensors = {}
    for name, (code, shape) in table.items():
        begin, end = header[name]["data_offsets"]
        dtype = TORCH_DTYPES[code]
        flat = torch.frombuffer(view[begin:end], dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    check_values(tensors, Where(path, f"{STATE}: "))
    return tensors
