"""The checks a resume file's content must pass, shared by the writer (refuse to write) and the reader.

Each check raises one ResumeFileError through a `Where`, which names the file and says whether the
problem was found while reading it or while refusing to write it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

import torch

from ..errors import InputError, ResumeFileError
from ..media import bucket_options
from ..params import FPS, MAX_LORAS, MAX_PROMPT_CHARS, MAX_SECTIONS, JobParams, LoraUse, canonical_loras
from ..sampling import LATENT_CHANNELS, PROMPT_FIELDS, JobState, SectionPlan, parse_timed_prompt, section_count
from ..sampling.plan import TEMPORAL_SCALE
from ..sampling.teacache import MAX_WIDTH, PASSES, packed_tokens
from .format import (COND_FIELDS, COND_MASKS, COND_NEGATIVE, COND_PREFIX, COND_REQUIRED, DTYPE_SIZES, END_LATENT,
                     FLOAT_CODES, GENERATOR, GENERATOR_STATE_BYTES, HISTORY, IMAGE_AREA_FACTOR, MASK_CODES,
                     MAX_ABS_EMBEDDING, MAX_ABS_LATENT, MAX_CONDITIONING_BYTES, MAX_HEADER_BYTES, MAX_IDENTITY_ENTRIES,
                     MAX_IMAGE_BYTES, MAX_JOB_INFO_BYTES, MAX_JSON_BYTES, MAX_SAMPLER_OUTPUTS, MAX_TEXT, MAX_TOTAL_BYTES,
                     MAX_WORKFLOW_BYTES, SAFE_NAME, SAMPLER_OUTPUTS, SAMPLER_X, START, TEACACHE_PREFIX,
                     TEACACHE_TENSORS, TensorTable)
from .atomic import format_size


@dataclass(frozen=True)
class Position:
    """Where the job stands: section index, step within it, whether its noise is drawn, K outputs."""

    section: int
    step: int
    in_section: bool
    outputs: int


@dataclass(frozen=True)
class Where:
    """The file a check is about, and how its failures begin (reading vs. refusing to write)."""

    path: Path
    prefix: str = ""

    def fail(self, problem: str) -> NoReturn:
        raise ResumeFileError(self.path, self.prefix + problem)


def check_identity(job_id, model_identity, where: Where) -> None:
    if not isinstance(job_id, str) or not SAFE_NAME.fullmatch(job_id):
        where.fail(f"job_id {str(job_id)[:80]!r} is not a safe name (letters, digits, '.', '_', '-'; "
                   "at most 128, not starting with '.')")
    if not isinstance(model_identity, dict) or len(model_identity) > MAX_IDENTITY_ENTRIES or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_TEXT and len(v) <= MAX_TEXT
            for k, v in model_identity.items()):
        where.fail(f"model_identity must map names to text (at most {MAX_IDENTITY_ENTRIES} entries)")


def check_loras(entries, where: Where) -> tuple[LoraUse, ...]:
    """job_info's optional "loras": 1 to MAX_LORAS entries of exactly name (a file name), sha256 and a finite,
    non-zero strength; returned in the order goan applies them."""
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_LORAS:
        where.fail(f"loras must be a list of 1 to {MAX_LORAS} LoRAs when present")
    uses = []
    for number, entry in enumerate(entries):
        try:
            uses.append(LoraUse.from_dict(entry))
        except InputError as exc:
            where.fail(f"loras[{number}]: {exc}")
        if uses[-1].strength == 0:
            where.fail(f"loras[{number}]: strength 0 is no LoRA; goan never records one")
    return canonical_loras(uses)


RUN_FIELDS = {"attention": str, "attention_backend": str, "compile": bool}


def check_run_info(run, where: Where) -> None:
    """job_info's optional, informational "run" field: how the run that wrote the file computed.

    {"attention": "sdpa", "attention_backend": "native", "compile": false}: the attention kernel (goan's
    word and diffusers' backend name) and whether the blocks ran compiled; any subset of those fields.
    """
    if not isinstance(run, dict) or not set(run) <= set(RUN_FIELDS) or not all(
            type(value) is RUN_FIELDS[key] and (key == "compile" or SAFE_NAME.fullmatch(value))
            for key, value in run.items()):
        where.fail("run must map attention and attention_backend to short names and compile to true or false")


def section_bounds(params: JobParams) -> tuple[int, int]:
    """(fewest, most) sections a job of these settings may plan.

    A new job plans exactly n = section_count(seconds, lws) = max(round(w), 1) sections, where
    w = seconds * 30 / (lws * 4) is its length in windows; a backward job can never change that.
    A forward (f1) job can be extended: each extension by s seconds adds section_count(s, lws)
    sections and s to `seconds`, rounding each piece on its own, so no exact equation survives.
    What does hold, for any sequence of extensions each at least half a window long: every piece
    of w_i windows gives max(round(w_i), 1) sections, which is >= 2/3 w_i (round(w) >= w - 1/2
    >= 2w/3 for w >= 3/2, and 1 >= 2w/3 below) and <= 2 w_i (round(w) <= w + 1/2 <= 2w for
    w >= 1/2), the first piece <= w_0 + 1. Summed: 2/3 w <= sections <= 2 w + 1.
    `check_job` refuses an extension that would leave this range (ever shorter extensions, each
    adding a whole section, are refused once they double the job), so created and extended jobs
    alike always satisfy it.
    """
    if params.mode == "backward":
        count = section_count(params.seconds, params.lws)
        return count, count
    windows = params.seconds * FPS / (params.lws * TEMPORAL_SCALE)
    return max(1, math.ceil(2 * windows / 3 - 1e-9)), max(1, math.floor(2 * windows + 1 + 1e-9))


def job_file_bytes(plan: SectionPlan) -> int:
    """The largest resume file a job of `plan` writes: its biggest state plus the largest members allowed."""
    last = plan.total_sections - 1
    biggest = max(_tensor_bytes(plan, Position(plan.total_sections, 0, False, 0)),
                  _tensor_bytes(plan, Position(last, MAX_SAMPLER_OUTPUTS, True, MAX_SAMPLER_OUTPUTS)))
    return (biggest + MAX_HEADER_BYTES + 8 + MAX_CONDITIONING_BYTES + image_bytes_limit(plan)
            + MAX_WORKFLOW_BYTES + MAX_JSON_BYTES + MAX_JOB_INFO_BYTES)


def image_pixels_limit(plan: SectionPlan) -> int:
    return IMAGE_AREA_FACTOR * plan.width * plan.height


def image_bytes_limit(plan: SectionPlan) -> int:
    """PNG bytes a source image of at most `image_pixels_limit` pixels needs (4 per pixel, 1 MiB of chunks)."""
    return min(MAX_IMAGE_BYTES, 4 * image_pixels_limit(plan) + 1024**2)


def check_image_size(width: int, height: int, plan: SectionPlan, what: str, where: Where) -> None:
    """The source image may be at most IMAGE_AREA_FACTOR times the plan's frame (in pixels)."""
    if width * height > image_pixels_limit(plan):
        where.fail(f"{what} is {width}x{height} pixels, far larger than the job's {plan.width}x{plan.height} "
                   f"frames (at most {IMAGE_AREA_FACTOR}x their pixels)")


def check_plan(params: JobParams, plan: SectionPlan, where: Where) -> None:
    """The plan must follow from the settings (mode, lws, sections, bucket) and fit goan's limits."""
    fail = where.fail
    if params.mode != plan.mode or params.lws != plan.lws:
        fail(f"params (mode {params.mode}, lws {params.lws}) disagree with the plan "
             f"(mode {plan.mode}, lws {plan.lws})")
    total = plan.total_sections
    if total > MAX_SECTIONS:
        fail(f"the job plans {total} sections, more than the {MAX_SECTIONS} goan allows "
             "(make the video shorter or the latent window larger)")
    low, high = section_bounds(params)
    if not low <= total <= high:
        made = section_count(params.seconds, params.lws)
        extended = "" if params.mode == "backward" else (
            f"; a forward (f1) job, extended or not, has between {low} and {high} (extend by at least "
            f"{params.lws * TEMPORAL_SCALE / FPS / 2:g} s at a time)")
        fail(f"the plan has {total} sections but {params.seconds:g} s at lws {params.lws} make {made}{extended}")
    buckets = bucket_options(params.resolution)
    if (plan.height, plan.width) not in buckets:
        fail(f"the frame size {plan.width}x{plan.height} is not one of the resolution {params.resolution} "
             "buckets, so the plan does not follow from the settings")
    need = job_file_bytes(plan)
    if need > MAX_TOTAL_BYTES:
        fail(f"the job's resume files would need up to {format_size(need)}, more than the "
             f"{format_size(MAX_TOTAL_BYTES)} a resume file may hold (make the video shorter or smaller)")


def check_prompts(params: JobParams, names=("prompt", "negative_prompt")) -> None:
    """Refuse prompt texts a new job or a branch cannot have: InputError naming the limit and the fix.

    Each of `names` (the texts a job or branch brings) may have at most MAX_PROMPT_CHARS characters (a
    job's files keep them, a branch's lineage its old and new text), and the prompt must be a valid
    timed prompt. Front ends call this before any model work; reading a resume file does not (older
    files stay readable).
    """
    for name in names:
        text = getattr(params, name)
        if len(text) > MAX_PROMPT_CHARS:
            raise InputError(f"the {name.replace('_', ' ')} is {len(text):,} characters long, more than the "
                             f"{MAX_PROMPT_CHARS:,} a job may have (its resume files keep it; a timed prompt's parts "
                             "count together): shorten it")
    if "prompt" in names:
        parse_timed_prompt(params.prompt)


def check_job(params: JobParams, plan: SectionPlan) -> None:
    """Refuse a job (new, or just extended) that goan could not save and read back: InputError.

    The same settings and plan checks, with the same messages, as reading a resume file applies, and
    the prompt checks of `check_prompts`; call it before the job runs (create_job, extend_job).
    """
    try:
        params.validate()
        check_prompts(params)
        check_plan(params, plan, Where(None, "cannot run this job: "))
    except ResumeFileError as exc:
        raise InputError(exc.problem) from None
    except InputError as exc:
        raise InputError(f"cannot run this job: {exc}") from None


def check_position(pos: Position, plan: SectionPlan, params: JobParams, where: Where) -> None:
    """Section/step/sampler bookkeeping must agree with the plan and the settings."""
    fail = where.fail
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


def expected_tensors(plan: SectionPlan, pos: Position) -> TensorTable:
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


def _tensor_bytes(plan: SectionPlan, pos: Position) -> int:
    return (sum(DTYPE_SIZES[code] * math.prod(shape) for code, shape in expected_tensors(plan, pos).values())
            + (teacache_bytes(plan) if pos.in_section else 0))


def teacache_bytes(plan: SectionPlan) -> int:
    """The most TeaCache's tensors of one section can take (both passes, float32, the widest model)."""
    return len(PASSES) * len(TEACACHE_TENSORS) * packed_tokens(plan) * MAX_WIDTH * 4


def expected_bytes(plan: SectionPlan, pos: Position, with_embeddings: bool) -> int:
    """Upper bound for state.safetensors, from the checked plan: the cap it is read with."""
    end_latent = 4 * LATENT_CHANNELS * plan.latent_height * plan.latent_width  # room for an optional end frame
    return (MAX_HEADER_BYTES + 8 + _tensor_bytes(plan, pos) + end_latent
            + (MAX_CONDITIONING_BYTES if with_embeddings else 0))


def check_teacache(info, table: TensorTable, plan: SectionPlan, pos: Position, params: JobParams,
                   where: Where) -> None:
    """job_info's optional "teacache" counters and the teacache.* tensors: together, and fitting the job.

    Present only mid-section (after at least one step) of a job with TeaCache on, one entry per guidance
    pass; `count` is the steps done in the section, `accumulated` below the threshold (FramePack resets it
    whenever the blocks are computed); the tensors are (1, tokens of the section, width) in a float dtype.
    """
    fail = where.fail
    names = {name for name in table if name.startswith(TEACACHE_PREFIX)}
    if info is None:
        if names:
            fail(f"it holds TeaCache tensors ({', '.join(sorted(names))[:120]}) but no TeaCache counters")
        return
    passes = PASSES if params.cfg != 1.0 else PASSES[:1]
    if not isinstance(info, dict) or sorted(info) != sorted(passes):
        fail(f"teacache must map exactly the passes {', '.join(passes)} to their counters")
    if not params.teacache or not pos.in_section or pos.step < 1:
        fail("TeaCache counters are present, but TeaCache is off or no section is under way past its first step")
    for name, entry in info.items():
        if not isinstance(entry, dict) or sorted(entry) != ["accumulated", "count"]:
            fail(f"teacache.{name} must have exactly the fields accumulated and count")
        count, accumulated = entry["count"], entry["accumulated"]
        if isinstance(count, bool) or not isinstance(count, int) or count != pos.step:
            fail(f"teacache.{name}.count must equal step_in_section ({pos.step}), got {str(count)[:40]!r}")
        if isinstance(accumulated, bool) or not isinstance(accumulated, (int, float)) or not math.isfinite(
                accumulated) or not (accumulated == 0 or 0 < accumulated < params.teacache_threshold):
            fail(f"teacache.{name}.accumulated must be 0 or between 0 and the threshold "
                 f"{params.teacache_threshold:g}, got {str(accumulated)[:40]!r}")
    wanted = {f"{TEACACHE_PREFIX}{p}.{t}" for p in passes for t in TEACACHE_TENSORS}
    if names != wanted:
        fail(f"the TeaCache tensors must be exactly {', '.join(sorted(wanted))}")
    specs = {table[name] for name in wanted}
    code, shape = next(iter(specs))
    tokens = packed_tokens(plan)
    if len(specs) != 1 or code not in FLOAT_CODES or len(shape) != 3 or shape[:2] != (1, tokens) \
            or not 1 <= shape[2] <= MAX_WIDTH:
        fail(f"the TeaCache tensors must share one float dtype and the shape [1, {tokens}, width <= {MAX_WIDTH}] "
             f"for the section plan ({plan.mode}, lws {plan.lws}, {plan.width}x{plan.height} px)")


def check_tensor_table(table: TensorTable, plan: SectionPlan, pos: Position, with_embeddings: bool,
                        params: JobParams, where: Where) -> None:
    """Every tensor present that should be, none that should not, each of the right dtype and shape."""
    fail = where.fail
    expected = expected_tensors(plan, pos)
    cond = {name[len(COND_PREFIX):]: spec for name, spec in table.items() if name.startswith(COND_PREFIX)}
    if END_LATENT in table:  # backward mode's optional end frame: a latent like the start latent
        if plan.mode != "backward" or table[END_LATENT] != expected[START]:
            fail(f"tensor {END_LATENT!r} must be {list(expected[START][1])} float32 and only in backward mode")
        expected = {**expected, END_LATENT: expected[START]}
    for name in sorted(set(table) - set(expected)):
        if not name.startswith((COND_PREFIX, TEACACHE_PREFIX)):
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
    try:
        prompts = len(parse_timed_prompt(params.prompt))
    except InputError as exc:
        fail(f"the prompt is not a valid timed prompt: {exc}")
    extra = [f"{name}.{i}" for i in range(1, prompts) for name in PROMPT_FIELDS]
    for name in sorted(set(cond) - set(COND_FIELDS) - set(extra)):
        fail(f"unknown embedding tensor {COND_PREFIX + name!r} (the prompt has {prompts} timed part(s))")
    for name in [name for name in extra if name not in cond]:
        fail(f"the embedding tensor {COND_PREFIX + name!r} is missing (the prompt has {prompts} timed parts)")
    for name in COND_REQUIRED:
        if name not in cond:
            fail(f"the embedding tensor {COND_PREFIX + name!r} is missing")
    negatives = [name in cond for name in COND_NEGATIVE]
    if any(negatives) and not all(negatives):
        fail("the negative prompt embeddings are incomplete (need embeds, mask and pooled together)")
    if params.cfg != 1.0 and not all(negatives):
        fail(f"cfg is {params.cfg} (real guidance) but the negative prompt embeddings are missing")
    for name, (code, shape) in cond.items():
        allowed = MASK_CODES if name.partition(".")[0] in COND_MASKS else FLOAT_CODES
        if code not in allowed:
            fail(f"embedding tensor {COND_PREFIX + name!r} has dtype {code}; expected one of {', '.join(allowed)}")
        if not 1 <= len(shape) <= 4:
            fail(f"embedding tensor {COND_PREFIX + name!r} has {len(shape)} dimensions")
    pairs = [("prompt_embeds", "prompt_mask"), ("negative_prompt_embeds", "negative_prompt_mask")]
    for embeds_name, mask_name in pairs + [(f"prompt_embeds.{i}", f"prompt_mask.{i}") for i in range(1, prompts)]:
        if embeds_name not in cond:
            continue
        embeds, mask = cond[embeds_name][1], cond[mask_name][1]
        if len(embeds) != 3 or mask != embeds[:2]:
            fail(f"{embeds_name} {list(embeds)} and {mask_name} {list(mask)} do not fit together")
    for i in range(1, prompts):
        if cond[f"prompt_embeds.{i}"][1][2] != cond["prompt_embeds"][1][2] or \
                cond[f"pooled.{i}"][1] != cond["pooled"][1]:
            fail(f"timed prompt {i}'s embeddings differ in shape from prompt 0's")
    if "end_image_embeds" in cond and cond["end_image_embeds"][1] != cond["image_embeds"][1]:
        fail("end_image_embeds and image_embeds differ in shape")
    if COND_NEGATIVE[0] in cond and cond[COND_NEGATIVE[0]][1][2] != cond["prompt_embeds"][1][2]:
        fail("negative and positive prompt embeddings differ in width")
    total = sum(DTYPE_SIZES[code] * math.prod(shape) for code, shape in cond.values())
    if total > MAX_CONDITIONING_BYTES:
        fail(f"the embeddings take {format_size(total)}, more than {format_size(MAX_CONDITIONING_BYTES)}")


def check_magnitude(name: str, tensor: torch.Tensor, where: Where) -> None:
    """No NaN or Inf, and nothing beyond what a real job holds (MAX_ABS_LATENT, MAX_ABS_EMBEDDING).

    Both show in the extremes (NaN propagates), found with no tensor-sized temporary.
    """
    if not tensor.is_floating_point() or not tensor.numel():
        return
    low, high = (float(v) for v in torch.aminmax(tensor))
    if not (math.isfinite(low) and math.isfinite(high)):
        where.fail(f"tensor {name!r} contains NaN or Inf values")
    bound = MAX_ABS_EMBEDDING if name.startswith((COND_PREFIX, TEACACHE_PREFIX)) else MAX_ABS_LATENT
    if max(-low, high) > bound:
        where.fail(f"tensor {name!r} holds values up to {max(-low, high):.3g} in magnitude; a real job's "
                   f"stay within {bound:g} (a damaged or crafted file)")


def check_values(tensors: dict[str, torch.Tensor], where: Where) -> None:
    """Float tensors finite and of real magnitudes, masks 0/1, and a generator state torch accepts."""
    for name, tensor in tensors.items():
        check_magnitude(name, tensor, where)
        is_mask = name.startswith(COND_PREFIX) and name[len(COND_PREFIX):].partition(".")[0] in COND_MASKS
        if is_mask and tensor.dtype != torch.bool and bool(((tensor != 0) & (tensor != 1)).any()):
            where.fail(f"mask {name!r} holds values other than 0 and 1")
    try:
        torch.Generator("cpu").set_state(tensors[GENERATOR])
    except RuntimeError as exc:
        raise ResumeFileError(where.path, where.prefix + "generator_state is not a valid torch CPU generator "
                                                         "state") from exc



def position_of(state: JobState) -> Position:
    """Where `state` stands, as a resume file records it."""
    outputs = 0 if state.sampler is None else len(state.sampler.model_outputs)
    return Position(state.section, state.step_in_section, state.sampler is not None, outputs)
