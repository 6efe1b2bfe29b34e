"""The checks a resume file's content must pass, shared by the writer (refuse to write) and the reader.

Each check raises one ResumeFileError through a `Where`, which names the file and says whether the
problem was found while reading it or while refusing to write it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from ..errors import ResumeFileError
from ..params import JobParams
from ..sampling import LATENT_CHANNELS, JobState, SectionPlan
from .format import (COND_FIELDS, COND_MASKS, COND_NEGATIVE, COND_PREFIX, COND_REQUIRED, DTYPE_SIZES, FLOAT_CODES,
                     GENERATOR, GENERATOR_STATE_BYTES, HISTORY, MASK_CODES, MAX_CONDITIONING_BYTES, MAX_HEADER_BYTES,
                     MAX_IDENTITY_ENTRIES, MAX_SAMPLER_OUTPUTS, MAX_TEXT, SAFE_NAME, SAMPLER_OUTPUTS, SAMPLER_X, START,
                     TensorTable)
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


def check_position(pos: Position, plan: SectionPlan, params: JobParams, where: Where) -> None:
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


def expected_bytes(plan: SectionPlan, pos: Position, with_embeddings: bool) -> int:
    """Upper bound for state.safetensors, from the plan: the cap it is read with."""
    tensors = sum(DTYPE_SIZES[code] * math.prod(shape) for code, shape in expected_tensors(plan, pos).values())
    return MAX_HEADER_BYTES + 8 + tensors + (MAX_CONDITIONING_BYTES if with_embeddings else 0)


def check_tensor_table(table: TensorTable, plan: SectionPlan, pos: Position, with_embeddings: bool,
                        params: JobParams, where: Where) -> None:
    """Every tensor present that should be, none that should not, each of the right dtype and shape."""
    fail = where.fail
    expected = expected_tensors(plan, pos)
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


def check_values(tensors: dict[str, torch.Tensor], where: Where) -> None:
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



def position_of(state: JobState) -> Position:
    """Where `state` stands, as a resume file records it."""
    outputs = 0 if state.sampler is None else len(state.sampler.model_outputs)
    return Position(state.section, state.step_in_section, state.sampler is not None, outputs)
