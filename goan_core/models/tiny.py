"""A tiny random-weight FramePack model set: the real architectures at toy sizes, same bytes every time.

Tests, demos and benchmarks use it where the real weights (tens of GB) are absent. Weights are
seeded; the tokenizers are trained locally on a fixed little corpus (byte-level BPE, so any text
tokenizes); nothing is downloaded. `write_tiny_models` saves the set in the real on-disk layout
so that it goes through the same loaders as real models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import diffusers
import safetensors
import tokenizers
import torch
import transformers
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from ..errors import InputError
from .encoder_files import siglip_processor
from .encoders import PROMPT_TEMPLATE
from .identity import canonical_json, public_config
from .loading import PARTS, ModelSet, missing_parts, needed_parts
from .single_file import CONFIG_METADATA_KEY

TINY_VERSION = 1
TINY_TRANSFORMER_FILE = "FramePackI2V_tiny.safetensors"
MARKER_FILE = ".goan_tiny_models.json"

TINY_TRANSFORMER_CONFIG = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_refiner_layers": 1,
    "text_embed_dim": 32,
    "pooled_projection_dim": 16,
    "rope_axes_dim": (4, 6, 6),
    "has_image_proj": True,
    "image_proj_dim": 24,
    "has_clean_x_embedder": True,
    "guidance_embeds": True,
    "patch_size": 2,
    "patch_size_t": 1,
}

# lllyasviel/FramePackI2V_HY, for benchmarks at the real size (about 13 billion parameters).
FRAMEPACK_I2V_HY_CONFIG = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "text_embed_dim": 4096,
    "pooled_projection_dim": 768,
    "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
    "has_image_proj": True,
    "image_proj_dim": 1152,
    "has_clean_x_embedder": True,
    "guidance_embeds": True,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
}

# The VAE's default four 3D down/up blocks, 8x spatial and 4x temporal compression, tiny widths.
TINY_VAE_CONFIG = {
    "latent_channels": 16,
    "block_out_channels": (8, 8, 16, 16),
    "norm_num_groups": 4,
    "layers_per_block": 1,
}

TEXT_VOCAB_SIZE = 512
LLAMA_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
)
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")

# Special tokens come first in the trained vocabularies, so their ids are their positions above.
TINY_LLAMA_CONFIG = {
    "vocab_size": TEXT_VOCAB_SIZE,
    "hidden_size": 32,  # = the transformer's text_embed_dim
    "intermediate_size": 64,
    "num_hidden_layers": 3,  # the encoder reads hidden_states[-3]
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
TINY_CLIP_CONFIG = {
    "vocab_size": TEXT_VOCAB_SIZE,
    "hidden_size": 16,  # = pooled_projection_dim
    "intermediate_size": 32,
    "projection_dim": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
TINY_SIGLIP_CONFIG = {
    "hidden_size": 24,  # = image_proj_dim
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,  # 16 image tokens
}

# Training text for the tiny tokenizers: the template's words plus common prompt words.
_PROMPT_WORDS = """
a an the of and with in on at to from by for into over under through while as is are
man woman girl boy person people child dog cat bird horse fish car train city street forest
river sea ocean beach mountain sky cloud sun moon rain snow fire water light shadow night day
walks runs dances jumps flies swims smiles looks turns waves sits stands moves slowly quickly
gently camera pan zoom tilt close up wide shot view background foreground scene motion video
red blue green yellow white black bright dark warm cold soft sharp beautiful small large tall
hair face eyes hand hands arms dress coat wind leaves trees flowers grass road house window
"""


def _corpus() -> list[str]:
    """Fixed training lines: the prompt template without its special tokens, and prompt words."""
    template = re.sub(r"<\|[a-z_]+\|>", " ", PROMPT_TEMPLATE.replace("{}", " "))
    return [template, *[line for line in _PROMPT_WORDS.splitlines() if line.strip()]]


def _train_bpe(special_tokens: tuple[str, ...], lowercase: bool) -> Tokenizer:
    """A byte-level BPE tokenizer (no unknown tokens possible) trained on the fixed corpus."""
    tokenizer = Tokenizer(tokenizers.models.BPE())
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def build_llama_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-3-style: BOS first, HunyuanVideo's header/eot tokens, pads on the right with end_of_text."""
    tokenizer = _train_bpe(LLAMA_SPECIAL_TOKENS, lowercase=False)
    bos = LLAMA_SPECIAL_TOKENS[0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
        padding_side="right",
    )


def build_clip_tokenizer() -> PreTrainedTokenizerFast:
    """CLIP-style: lowercase, wrapped in start/end of text, at most 77 tokens, padded with end_of_text."""
    tokenizer = _train_bpe(CLIP_SPECIAL_TOKENS, lowercase=True)
    bos, eos = CLIP_SPECIAL_TOKENS
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        model_max_length=TINY_CLIP_CONFIG["max_position_embeddings"],
        padding_side="right",
    )


def build_feature_extractor():
    """FramePack's SigLIP image processor at the tiny image size."""
    return siglip_processor(TINY_SIGLIP_CONFIG["image_size"])


def build_tiny_models(seed: int = 0) -> ModelSet:
    """The tiny model set on the CPU in float32, eval mode; the same weights for the same seed.

    Each model is seeded on its own (seed + position), without touching the caller's global RNG.
    """
    builders = (
        lambda: HunyuanVideoFramepackTransformer3DModel(**TINY_TRANSFORMER_CONFIG),
        lambda: AutoencoderKLHunyuanVideo(**TINY_VAE_CONFIG),
        lambda: LlamaModel(LlamaConfig(**TINY_LLAMA_CONFIG)),
        lambda: CLIPTextModel(CLIPTextConfig(**TINY_CLIP_CONFIG)),
        lambda: SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP_CONFIG)),
    )
    built = []
    with torch.random.fork_rng(devices=[]):
        for offset, build in enumerate(builders):
            torch.manual_seed(seed + offset)
            built.append(build().eval())
    transformer, vae, text_encoder, text_encoder_2, image_encoder = built
    return ModelSet(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_llama_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        image_encoder=image_encoder,
        feature_extractor=build_feature_extractor(),
    )


# -- single-file transformer -----------------------------------------------------------------------

FILE_DTYPES = (torch.float32, torch.bfloat16, torch.float8_e4m3fn)
_FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def _file_tensor(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """How one weight is stored: in fp8 files only matrices/kernels are fp8 (clamped), the rest bf16."""
    if dtype == torch.float8_e4m3fn:
        if tensor.ndim < 2:
            return tensor.to(torch.bfloat16).contiguous()
        return tensor.float().clamp(-_FP8_MAX, _FP8_MAX).to(dtype).contiguous()
    return tensor.to(dtype).contiguous()


def write_transformer_file(transformer, path: str | Path, dtype: torch.dtype = torch.bfloat16, *,
                           with_config: bool = True, metadata: dict | None = None) -> Path:
    """Save the transformer as one .safetensors file (float32, bf16 or fp8 e4m3fn), config in metadata.

    Without `with_config` the config is left out, as FramePack's own and kijai's files carry none;
    `metadata` is added as given.
    Deterministic (same model, same bytes) and atomic: a temporary file replaced into place.
    """
    if dtype not in FILE_DTYPES:
        raise InputError(
            f"cannot write a transformer file in {dtype}: use float32, bfloat16 or float8_e4m3fn"
        )
    path = Path(path)
    tensors = {key: _file_tensor(t, dtype) for key, t in sorted(transformer.state_dict().items())}
    # One metadata entry only (unless more are asked for): safetensors writes the map in no fixed order.
    if with_config:
        metadata = {**(metadata or {}), CONFIG_METADATA_KEY: canonical_json(public_config(transformer))}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


# -- the tiny models root --------------------------------------------------------------------------


def _fingerprint() -> str:
    """Changes whenever this module or a library that shapes the saved files changes."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for module in (torch, diffusers, transformers, tokenizers, safetensors):
        digest.update(f"{module.__name__}={module.__version__};".encode())
    return digest.hexdigest()


def _marker() -> dict:
    return {"format": "goan_tiny_models", "version": TINY_VERSION, "fingerprint": _fingerprint()}


def _is_complete(root: Path) -> bool:
    """Whether `root` holds a whole tiny set written by this very code."""
    try:
        marker = json.loads((root / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    complete = not missing_parts(root, needed_parts()) and (root / TINY_TRANSFORMER_FILE).is_file()
    return marker == _marker() and complete


def default_tiny_root() -> Path:
    """Where `--tiny` and the demo keep the tiny model set (written once, reused): $GOAN_TINY_DIR or ~/.cache."""
    return Path(os.environ.get("GOAN_TINY_DIR") or Path.home() / ".cache" / "goan" / "tiny-models")


def write_tiny_models(root: str | Path) -> Path:
    """Write the tiny set (seed 0) under `root` in the real layout and return `root`.

    Layout: transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/,
    image_encoder/, feature_extractor/ and the transformer again as the single float32 file
    FramePackI2V_tiny.safetensors. A root already holding a complete set from this code version
    (see the marker file) is returned untouched; the marker is written last.
    """
    root = Path(root)
    if _is_complete(root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_FILE).unlink(missing_ok=True)
    models = build_tiny_models(seed=0)
    for name in PARTS:
        getattr(models, name).save_pretrained(str(root / name))
    write_transformer_file(models.transformer, root / TINY_TRANSFORMER_FILE, torch.float32)
    (root / MARKER_FILE).write_text(json.dumps(_marker(), indent=2) + "\n", encoding="utf-8")
    return root
