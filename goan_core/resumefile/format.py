"""The `.goan_resume` format v1: member and tensor names, value tables and the limits a reader enforces.

A zip archive with fixed member names (so other tools can read it):
  job_info.json      format, version, job id, plan, position (section, step), model identity,
                     producer, created_at, kind, and the sha256 of every other member; optional:
                     "run", how the run that wrote it computed (attention kernel, compile): informational
                     lineage (a branched job's parent, root, branch point and changes)
  params.json        JobParams.to_dict()
  source_image.png   the input image
  workflow.json      optional: the ComfyUI graph that made the job
  end_image.png      optional: backward mode's end frame (its latent is the state's end_latent)
  state.safetensors  history_latents, start_latent, generator_state, and mid-section sampler_x and
                     sampler_outputs; optional end_latent; with embeddings, the Conditioning tensors as cond.<field>;
                     mid-section with TeaCache on, teacache.<pass>.modulated and .residual (optional
                     members of v1: job_info's optional "teacache" field holds their counters);
                     a timed prompt's prompts 1, 2, ... as cond.prompt_embeds.<i>, cond.prompt_mask.<i>,
                     cond.pooled.<i> (optional)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ..params import MAX_PROMPT_CHARS
from ..sampling import Conditioning, JobState

RESUME_SUFFIX = ".goan_resume"
# Names goan puts on the file system (job ids, retention files): no separators, no leading dot.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

FORMAT = "goan_resume"
FORMAT_VERSION = 1

JOB_INFO = "job_info.json"
PARAMS = "params.json"
SOURCE_IMAGE = "source_image.png"
WORKFLOW = "workflow.json"
STATE = "state.safetensors"
REQUIRED_MEMBERS = (JOB_INFO, PARAMS, SOURCE_IMAGE, STATE)
END_IMAGE = "end_image.png"
OPTIONAL_MEMBERS = (WORKFLOW, END_IMAGE)

HISTORY = "history_latents"
START = "start_latent"
END_LATENT = "end_latent"  # optional, with end_image.png
GENERATOR = "generator_state"
SAMPLER_X = "sampler_x"
SAMPLER_OUTPUTS = "sampler_outputs"
COND_PREFIX = "cond."
TEACACHE_PREFIX = "teacache."
TEACACHE_TENSORS = ("modulated", "residual")
COND_FIELDS = tuple(f.name for f in fields(Conditioning) if f.name != "extra_prompts")
COND_REQUIRED = ("prompt_embeds", "prompt_mask", "pooled", "image_embeds")
COND_NEGATIVE = ("negative_prompt_embeds", "negative_prompt_mask", "negative_pooled")
COND_MASKS = ("prompt_mask", "negative_prompt_mask")
MAX_SAMPLER_OUTPUTS = 3  # UniPC bh1 keeps at most this many past model outputs

# Limits against hostile or broken files. A 60 s 640x480 job's history is about 145 MB in float32.
MAX_MEMBERS = 8
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_JSON_BYTES = 1024**2  # params.json: its two prompts take at most 2 x 65,536 characters x 6 bytes
# job_info of a branch whose prompt and negative prompt both changed holds four prompts in its lineage:
# 4 x 65,536 characters, up to 6 bytes each in JSON (a control character is written as \u0001).
MAX_JOB_INFO_BYTES = 4 * 1024**2
MAX_WORKFLOW_BYTES = 8 * 1024**2  # ComfyUI graphs with many nodes and notes outgrow 1 MiB
MAX_IMAGE_BYTES = 64 * 1024**2
MAX_IMAGE_SIDE = 8192
MAX_CONDITIONING_BYTES = 256 * 1024**2
MAX_HEADER_BYTES = 1024**2
MAX_RATIO = 100  # deflate ratio allowed for members above RATIO_FLOOR; goan stores members that large raw
RATIO_FLOOR = 1024**2
MAX_IDENTITY_ENTRIES = 64
CHUNK_BYTES = 8 * 1024**2  # streaming unit for writing, reading and hashing the state member
MAX_TEXT = 4096
MAX_LINEAGE_TEXT = MAX_PROMPT_CHARS  # a changed prompt in a branched job's lineage
# Nesting depth of any JSON goan parses or writes (job_info, params, workflow, safetensors headers,
# request bodies). ComfyUI graphs, subgraphs included, stay far below; Python's recursion limit
# (about 1000) is what a deeper document would hit in json.dumps, so the limit sits well under it.
MAX_JSON_DEPTH = 64
# The largest magnitude a real job's tensors hold. Latents (VAE latents scaled by 0.477, the sampler's
# x and the model's outputs) stay within about +-10; 1e4 is three orders of magnitude of headroom while
# keeping sums of a few such values far from float32 overflow (3.4e38). Text-encoder hidden states can
# carry "massive activations" of a few thousand, so embeddings get 1e5 (all of float16's range).
MAX_ABS_LATENT = 1e4
MAX_ABS_EMBEDDING = 1e5
# A v1 file's source image is the bucketed, cropped start image: exactly the plan's frame size. Other
# tools may have saved it larger; up to 16x the plan's pixels (4x a side) is accepted, beyond that the
# decoded image alone would outweigh the whole job state of a short clip, so the file is refused.
IMAGE_AREA_FACTOR = 16

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
    workflow: dict | None
    job_info: dict
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    needs_start_latent: bool = False


@dataclass
class ResumeSummary:
    """What a resume file says about its job, read without its tensors and image: for showing a
    file (its settings and workflow), never for continuing it. `validated` is True when the whole
    file passed `read_resume_file`, False when only these members and the zip structure were checked.
    """

    job_info: dict
    params: dict
    workflow: dict | None
    exact: bool
    notes: list[str]
    validated: bool
