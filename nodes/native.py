"""ComfyUI's own encoders, their outputs and its VAE, turned into what goan_core takes.

- CLIP from DualCLIPLoader(type hunyuan_video) and CLIP_VISION from CLIPVisionLoader (SigLIP): goan
  encodes with them itself, the sampler's prompt texts and the bucketed, cropped start image the job
  uses (as FramePack does: SigLIP sees the crop, resized to its input size without a second crop).
- CONDITIONING from DualCLIPLoader(type hunyuan_video) + CLIPTextEncode: a list of
  [cond, {"pooled_output": ..., optional "attention_mask": ...}], where cond is the Llama hidden
  state of the user tokens only (template removed), (1, L, 4096), and pooled_output the CLIP-L
  pooled output (1, 768). goan keeps at most 256 prompt tokens, zero-padded to 512 with a mask:
  the same crop FramePack applies to the diffusers encoders' output.
- CLIP_VISION_OUTPUT from CLIPVisionEncode with SigLIP: `last_hidden_state` (1, 729, 1152).
- VAE (comfy.sd.VAE): encode takes IMAGE [N,H,W,3] in 0..1 and returns RAW latents
  [1,16,T,h,w]; decode takes raw latents and returns [B,T,H,W,3] in 0..1. goan's latents are
  scaled by 0.476986 (FramePack's convention), so they are divided by it before decode and
  multiplied after encode.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch

from ..goan_core.models import PROMPT_EMBED_LENGTH, PROMPT_TOKENS, crop_or_pad
from ..goan_core.errors import InputError
from .adapter import HUNYUAN_VAE_SCALE

log = logging.getLogger("goan")


def _tensor(value, what: str, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"{what}: expected a {ndim}-D tensor, got {got}")
    return value.detach()


def prompt_from_conditioning(conditioning, name: str = "positive") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeds (1,512,D) float32, mask (1,512) bool, pooled (1,P) float32) from a ComfyUI CONDITIONING."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise InputError(f"{name}: expected ComfyUI CONDITIONING (a list of [tensor, dict]), got "
                         f"{type(conditioning).__name__}")
    if len(conditioning) > 1:
        log.warning("goan: %s holds %d conditionings; only the first is used", name, len(conditioning))
    entry = conditioning[0]
    if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not isinstance(entry[1], dict):
        raise InputError(f"{name}: each CONDITIONING entry must be [tensor, dict]")
    cond = _tensor(entry[0], f"{name} conditioning", 3)[:1].float().cpu()
    pooled = entry[1].get("pooled_output")
    if pooled is None:
        raise InputError(f"{name}: the CONDITIONING has no pooled_output; use DualCLIPLoader with type "
                         "hunyuan_video (CLIP-L + Llama) and CLIPTextEncode")
    pooled = _tensor(pooled, f"{name} pooled_output", 2)[:1].float().cpu()
    mask = entry[1].get("attention_mask")
    if mask is not None:
        mask = _tensor(mask, f"{name} attention_mask", 2)[:1].bool().cpu()
        if mask.shape[1] != cond.shape[1]:
            raise InputError(f"{name}: attention_mask covers {mask.shape[1]} tokens but the conditioning has "
                             f"{cond.shape[1]}")
        cond = cond[:, mask[0]]
    embeds, prompt_mask = crop_or_pad(cond[:, :PROMPT_TOKENS], PROMPT_EMBED_LENGTH)
    return embeds, prompt_mask, pooled


def image_embeds_from_clip_vision(output) -> torch.Tensor:
    """SigLIP last_hidden_state (1, N, E) float32 from a ComfyUI CLIP_VISION_OUTPUT."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        try:
            hidden = output["last_hidden_state"]
        except (KeyError, TypeError, IndexError):
            hidden = None
    if hidden is None:
        raise InputError("clip_vision_output: it has no last_hidden_state; use CLIPVisionLoader with the SigLIP "
                         "model (sigclip_vision_patch14_384) and CLIPVisionEncode")
    return _tensor(hidden, "clip_vision_output last_hidden_state", 3)[:1].float().cpu()


class ComfyTextEncoder:
    """ComfyUI's CLIP (DualCLIPLoader type hunyuan_video) as a goan prompt encoder: encodes the text it is given.

    The same calls as ComfyUI's CLIPTextEncode (tokenize, encode_from_tokens_scheduled), then the
    same crop and padding as a CONDITIONING input.
    """

    def __init__(self, clip):
        if not (hasattr(clip, "tokenize") and hasattr(clip, "encode_from_tokens_scheduled")):
            raise InputError(f"clip: expected ComfyUI's CLIP (DualCLIPLoader with type hunyuan_video), got "
                             f"{type(clip).__name__}")
        self.clip = clip

    def encode_prompt(self, text: str):
        conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return prompt_from_conditioning(conditioning, "clip")


class ComfyImageEncoder:
    """ComfyUI's CLIP_VISION (CLIPVisionLoader with SigLIP) as a goan image encoder: encodes the image it is given."""

    def __init__(self, clip_vision):
        if not hasattr(clip_vision, "encode_image"):
            raise InputError(f"clip_vision: expected ComfyUI's CLIP_VISION (CLIPVisionLoader with "
                             f"sigclip_vision_patch14_384), got {type(clip_vision).__name__}")
        self.clip_vision = clip_vision

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """SigLIP last_hidden_state of a uint8 HxWx3 image, resized whole to the encoder's input size (no crop)."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)[None]
        return image_embeds_from_clip_vision(self.clip_vision.encode_image(pixels, crop=False))


class NativePrompt:
    """A ComfyUI CONDITIONING as a goan prompt encoder: the text was encoded by ComfyUI already.

    goan never sees that text (`encodes_text` False): the job records "native" conditioning.
    """

    encodes_text = False

    def __init__(self, conditioning, which: str):
        self.conditioning, self.which = conditioning, which

    def encode_prompt(self, text: str):
        return prompt_from_conditioning(self.conditioning, self.which)


class NativeImageEmbeds:
    """A ComfyUI CLIP_VISION_OUTPUT as a goan image encoder: ComfyUI encoded some image already.

    Which image is up to the graph: FramePack's conditioning is the bucketed, cropped start image, which
    only goan knows, so a warning suggests the clip_vision input instead.
    """

    def __init__(self, output):
        self.output = output

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        log.warning("goan: clip_vision_output encodes whatever image CLIPVisionEncode got, not the %dx%d crop the job "
                    "uses; connect CLIPVisionLoader to the sampler's clip_vision input to encode that crop, as "
                    "FramePack does", image.shape[1], image.shape[0])
        return image_embeds_from_clip_vision(self.output)


class ComfyVAE:
    """A ComfyUI VAE as a goan_core LatentCodec (ComfyUI loads and offloads it itself)."""

    def __init__(self, vae):
        if not (hasattr(vae, "encode") and hasattr(vae, "decode")):
            raise InputError(f"vae: expected a ComfyUI VAE, got {type(vae).__name__}")
        self.vae = vae

    def encode_start_latent(self, image: np.ndarray) -> torch.Tensor:
        """Scaled latent (1,16,1,h,w) float32 of a uint8 HxWx3 image."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)[None]
        latent = self.vae.encode(pixels)
        latent = _tensor(latent, "VAE encode output", 5)
        return (latent[:, :, :1].float().cpu() * HUNYUAN_VAE_SCALE).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (1,3,F,H,W) in [-1,1] of scaled latents (1,16,T,h,w)."""
        pixels = self.vae.decode(latents.float() / HUNYUAN_VAE_SCALE)
        if pixels.ndim == 4:  # [F,H,W,3]
            pixels = pixels[None]
        pixels = _tensor(pixels, "VAE decode output", 5)[:1, ..., :3].float().cpu()
        return (pixels.permute(0, 4, 1, 2, 3) * 2.0 - 1.0).contiguous()

    def loaded(self):
        return nullcontext(self)
