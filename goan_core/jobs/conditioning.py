"""What a job is made from besides its settings: prompt and image embeddings and the start latent.

Front ends differ only in where these come from: goan's own encoders (`goan_encoders`), or inside
ComfyUI its CONDITIONING, CLIP_VISION_OUTPUT and VAE (see `nodes/native.py`). Either way they are
`Encoders`, and `build_conditioning` is the one place that turns them into a `Conditioning`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ContextManager, Protocol

import numpy as np
import torch

from ..errors import InputError
from ..models import DEFAULT_GPU_MEMORY_PRESERVATION, VAE, ImageEncoder, ModelDtypes, ModelSet, TextEncoders, dtype_name
from ..params import JobParams
from ..sampling import Conditioning, parse_timed_prompt

PromptTriple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # embeds (1,512,D), mask (1,512), pooled (1,P)


class PromptEncoder(Protocol):
    """Encodes a prompt text. One whose `encodes_text` is False (ComfyUI CONDITIONING made elsewhere)
    returns the same embeddings whatever the text: goan never sees the text that made them."""

    def encode_prompt(self, text: str) -> PromptTriple: ...


class ImageEmbedder(Protocol):
    def encode_image(self, image: np.ndarray) -> torch.Tensor: ...


class LatentCodec(Protocol):
    """A VAE: uint8 HxWx3 image -> scaled start latent (1,16,1,h,w); scaled latents -> pixels in [-1,1]."""

    def encode_start_latent(self, image: np.ndarray) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def loaded(self) -> ContextManager: ...


# What to tell a user who lacks a piece, unless the front end says it in its own words.
DEFAULT_HINTS = {
    "prompt": "load the text encoders",
    "negative_prompt": "load the text encoders",
    "image": "load the SigLIP image encoder",
    "vae": "load the HunyuanVideo VAE",
}


@dataclass
class Encoders:
    """Where a job's embeddings and start latent come from; None where the front end has nothing.

    `hints` says, per piece, how the user supplies one that is missing.
    """

    prompt: PromptEncoder | None = None
    negative_prompt: PromptEncoder | None = None
    image: ImageEmbedder | None = None
    vae: LatentCodec | None = None
    hints: dict[str, str] = field(default_factory=dict)

    def identity(self, *, embeddings: bool = True) -> dict:
        """The compute dtypes of goan's own encoders, for the job's model identity.

        {"vae_dtype", "text_dtype", "image_dtype"}, each only where the piece has a torch `dtype`
        (ComfyUI's encoders have none); the text and image ones only with `embeddings` (when they
        make the job's embeddings).
        """
        pieces = {"vae_dtype": self.vae}
        if embeddings:
            pieces.update(text_dtype=self.prompt, image_dtype=self.image)
        found = {key: getattr(piece, "dtype", None) for key, piece in pieces.items()}
        return {key: dtype_name(dtype) for key, dtype in found.items() if isinstance(dtype, torch.dtype)}

    def require(self, piece: str, why: str):
        """The encoder for `piece` ("prompt", "negative_prompt", "image" or "vae"); InputError if absent."""
        found = getattr(self, piece)
        if found is None:
            raise InputError(f"{why} needs {self.hints.get(piece, DEFAULT_HINTS[piece])}")
        return found


def goan_encoders(models: ModelSet, device: torch.device, dtype: torch.dtype | ModelDtypes, *,
                  gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION, accelerator=None) -> Encoders:
    """Encoders over goan's own model set (the pieces it lacks stay None), each in its role's dtype.

    `dtype`: the ModelDtypes the set was loaded with, or one torch.dtype for all. Each piece runs under
    the memory budget `gpu_memory_preservation` (GB kept free on the device; `accelerator`: the counting
    fake of tests): encoders that do not fit stream their layers, the VAE tiles when short.
    """
    dtypes = dtype if isinstance(dtype, ModelDtypes) else ModelDtypes.uniform(dtype)
    budget = {"gpu_memory_preservation": gpu_memory_preservation, "accelerator": accelerator}
    text = TextEncoders(models, device, dtypes.text, **budget) if models.text_encoder is not None else None
    return Encoders(
        prompt=text,
        negative_prompt=text,
        image=ImageEncoder(models, device, dtypes.image, **budget) if models.image_encoder is not None else None,
        vae=VAE(models.vae, device, dtypes.vae, **budget) if models.vae is not None else None,
    )


def _encodes_text(encoder: PromptEncoder) -> bool:
    return getattr(encoder, "encodes_text", True)


def _prompt_triples(params: JobParams, encoders: Encoders, known: dict[str, PromptTriple]) -> list[PromptTriple]:
    """One (embeds, mask, pooled) per part of the (timed) prompt, taken from `known` by text or encoded."""
    texts = [text for _, text in parse_timed_prompt(params.prompt)]
    missing = [text for text in texts if text not in known]
    if missing:
        encoder = encoders.require("prompt", "the prompt")
        known = {**known, **{text: encoder.encode_prompt(text) for text in dict.fromkeys(missing)}}
    return [known[text] for text in texts]


def _negative(params: JobParams, encoders: Encoders) -> tuple:
    if params.cfg == 1:
        return (None, None, None)
    return encoders.require("negative_prompt", f"real CFG (cfg {params.cfg})").encode_prompt(params.negative_prompt)


def build_conditioning(params: JobParams, image: np.ndarray, encoders: Encoders,
                       end_image: np.ndarray | None = None) -> tuple[Conditioning, JobParams]:
    """Prompt and image embeddings for a job, and its params as they must be recorded.

    `image` is the bucketed, cropped start image. A timed prompt is encoded part by part. The
    negative prompt is encoded only when real CFG is on (cfg != 1); otherwise its fields stay None.
    The end image is embedded when it is blended in (`end_embeds` > 0). When the prompt encoders do
    not see the text (ComfyUI CONDITIONING: one prompt, no timing), the recorded params say so
    (`prompt_source` "native", texts empty) instead of keeping texts that did not make the video. A
    job recorded that way cannot have its text encoded again; positive and negative must come from
    the same kind of encoder.
    """
    encoder = encoders.require("prompt", "the prompt")
    if params.cfg != 1:
        negative_encoder = encoders.require("negative_prompt", f"real CFG (cfg {params.cfg})")
        if _encodes_text(encoder) != _encodes_text(negative_encoder):
            raise InputError("the prompt and the negative prompt must both come from CONDITIONING inputs or both "
                             "from text encoders; connect both positive and negative, or neither")
    native = not _encodes_text(encoder)
    if params.prompt_source == "native" and not native:
        raise InputError("this job was conditioned by ComfyUI CONDITIONING (native conditioning) whose text goan "
                         "never saw, so it cannot be encoded again from text; connect the positive (and negative) "
                         "CONDITIONING, or continue from a resume file that carries the embeddings")
    first, *others = [encoder.encode_prompt(params.prompt)] if native else _prompt_triples(params, encoders, {})
    negative = _negative(params, encoders)
    embedder = encoders.require("image", "the start image")
    end_embeds = embedder.encode_image(end_image) if end_image is not None and params.end_embeds > 0 else None
    conditioning = Conditioning(*first, embedder.encode_image(image), *negative, end_image_embeds=end_embeds,
                                extra_prompts=tuple(others))
    recorded = replace(params, prompt="", negative_prompt="", prompt_source="native") if native else params
    return conditioning, recorded


def update_conditioning(conditioning: Conditioning, old: JobParams, new: JobParams, encoders: Encoders) -> Conditioning:
    """`conditioning` of a job with settings `old`, made to fit `new`: prompts whose text is unchanged
    keep their embeddings, others are encoded; the negative prompt likewise (kept only while cfg != 1)."""
    known = dict(zip((text for _, text in parse_timed_prompt(old.prompt)), conditioning.prompts()))
    first, *others = _prompt_triples(new, encoders, known)
    negative = (conditioning.negative_prompt_embeds, conditioning.negative_prompt_mask, conditioning.negative_pooled)
    if new.cfg == 1:
        negative = (None, None, None)
    elif negative[0] is None or new.negative_prompt != old.negative_prompt:
        negative = _negative(new, encoders)
    return Conditioning(*first, conditioning.image_embeds, *negative, end_image_embeds=conditioning.end_image_embeds,
                        extra_prompts=tuple(others))
