"""The text and image encoders from the single files ComfyUI users keep, without a config.

    llava_llama3_fp16.safetensors (or _fp8_scaled)   models/text_encoders   Llama: ComfyUI's names, `model.` + LlamaModel's
    clip_l.safetensors                               models/text_encoders   CLIP-L: transformers' `text_model.` names
    sigclip_vision_patch14_384.safetensors           models/clip_vision     SigLIP: transformers' `vision_model.` names

(Comfy-Org/HunyuanVideo_repackaged and Comfy-Org/sigclip_vision_384.) The structure (widths, layer
counts, vocabulary) is read from the tensor shapes; what shapes cannot tell (attention heads, rotary
base, norm epsilons, special token ids) comes from the known model of that width (`KNOWN_*`): the
real one, or goan's tiny test model. The SigLIP image processor is FramePack's (resize to the
encoder's input size, bicubic, mean and std 0.5), built for the size the weights were trained at.
The tokenizers are not in these files: see `loading.ModelFiles`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from transformers import (CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, SiglipVisionConfig,
                          SiglipVisionModel)
from transformers.utils import is_torchvision_available

from ..errors import ModelFolderError
from .weights_file import WeightsHeader, empty_model, load_weights, read_header

# By hidden size: HunyuanVideo's llava-llama-3-8b text encoder, and goan's tiny one.
KNOWN_LLAMA = {
    4096: {"head_dim": 128, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
           "bos_token_id": 128000, "eos_token_id": 128001},
    32: {"head_dim": 16, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 1024,
         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
}
# openai/clip-vit-large-patch14's text model (eos 2 makes transformers pool at the highest token id,
# the end-of-text token, as CLIP does), and goan's tiny one.
KNOWN_CLIP = {
    768: {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
          "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
    16: {"num_attention_heads": 2, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
         "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
}
# google/siglip-so400m-patch14-384 (FLUX Redux's and FramePack's image encoder), and goan's tiny one.
KNOWN_SIGLIP = {
    1152: {"num_attention_heads": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
    24: {"num_attention_heads": 2, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
}
# FramePack's SigLIP processor settings (lllyasviel/flux_redux_bfl feature_extractor), size aside.
SIGLIP_PROCESSOR = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}

LLAMA = "the Llama text encoder (llava_llama3_fp16.safetensors)"
CLIP = "the CLIP-L text encoder (clip_l.safetensors)"
SIGLIP = "the SigLIP image encoder (sigclip_vision_patch14_384.safetensors)"


def _count(shapes: dict, pattern: str) -> int:
    found = {int(m.group(1)) for key in shapes if (m := re.fullmatch(pattern, key))}
    return max(found) + 1 if found else 0


def _prefix(header: WeightsHeader, marker: str, prefixes: tuple[str, ...], what: str) -> str:
    """Which of `prefixes` the file's tensor names carry (found by `marker`); ModelFolderError when none."""
    for prefix in prefixes:
        if prefix + marker in header.shapes:
            return prefix
    raise ModelFolderError(f"{header.path}: not {what} (no tensor {prefixes[0] + marker!r}); "
                           f"give {what.split('(')[-1].rstrip(')')} here")


def _known(table: dict, width: int, header: WeightsHeader, what: str) -> dict:
    if width not in table:
        raise ModelFolderError(f"{header.path}: {what} of width {width} is not a model goan knows (known widths: "
                               f"{sorted(table)}); use a transformers folder with its config.json instead")
    return table[width]


def _shape(header: WeightsHeader, key: str, what: str) -> tuple[int, ...]:
    if key not in header.shapes:
        raise ModelFolderError(f"{header.path}: tensor {key!r} is missing; use a complete {what} file")
    return header.shapes[key]


def _names(model: torch.nn.Module, file_prefix: str) -> dict[str, str]:
    """model name -> file name: the file's prefix in place of the model's own.

    Files written with transformers 4 (ComfyUI's among them) name CLIP's and SigLIP's tensors
    `text_model.`/`vision_model.`...; transformers 5 names its modules and files without that prefix.
    """
    keys = list(model.state_dict())
    own = next((p for p in ("text_model.", "vision_model.") if keys and all(k.startswith(p) for k in keys)), "")
    return {key: file_prefix + key.removeprefix(own) for key in keys}


def load_llama_file(path: str | Path, dtype: torch.dtype = torch.float32) -> LlamaModel:
    """HunyuanVideo's Llama text encoder from ComfyUI's single file (fp16, bf16 or scaled fp8), computing in `dtype`."""
    header = read_header(path, LLAMA)
    prefix = _prefix(header, "embed_tokens.weight", ("model.", ""), LLAMA)
    vocab, hidden = _shape(header, f"{prefix}embed_tokens.weight", LLAMA)
    known = dict(_known(KNOWN_LLAMA, hidden, header, LLAMA))
    head_dim = known["head_dim"]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=_shape(header, f"{prefix}layers.0.mlp.gate_proj.weight", LLAMA)[0],
        num_hidden_layers=_count(header.shapes, re.escape(prefix) + r"layers\.(\d+)\..+"),
        num_attention_heads=_shape(header, f"{prefix}layers.0.self_attn.q_proj.weight", LLAMA)[0] // head_dim,
        num_key_value_heads=_shape(header, f"{prefix}layers.0.self_attn.k_proj.weight", LLAMA)[0] // head_dim,
        **known)
    model = empty_model(lambda: LlamaModel(config))
    return load_weights(model, header, _names(model, prefix), dtype, LLAMA,
                        ignored=frozenset({"lm_head.weight", "tokenizer"}))


def load_clip_file(path: str | Path, dtype: torch.dtype = torch.float32) -> CLIPTextModel:
    """The CLIP-L text encoder from one file holding transformers' `text_model.` names, computing in `dtype`."""
    header = read_header(path, CLIP)
    prefix = _prefix(header, "embeddings.token_embedding.weight", ("text_model.", ""), CLIP)
    vocab, hidden = _shape(header, f"{prefix}embeddings.token_embedding.weight", CLIP)
    config = CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=_shape(header, f"{prefix}encoder.layers.0.mlp.fc1.weight", CLIP)[0],
        num_hidden_layers=_count(header.shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\..+"),
        max_position_embeddings=_shape(header, f"{prefix}embeddings.position_embedding.weight", CLIP)[0],
        projection_dim=header.shapes.get("text_projection.weight", (hidden,))[0],
        **_known(KNOWN_CLIP, hidden, header, CLIP))
    model = empty_model(lambda: CLIPTextModel(config))
    return load_weights(model, header, _names(model, prefix), dtype, CLIP,
                        ignored=frozenset({"text_projection.weight", "logit_scale", f"{prefix}embeddings.position_ids"}))


def siglip_prefix(header: WeightsHeader) -> str:
    return _prefix(header, "embeddings.patch_embedding.weight", ("vision_model.", ""), SIGLIP)


def siglip_config(header: WeightsHeader) -> SiglipVisionConfig:
    """The SigLIP vision config of a file holding transformers' `vision_model.` names."""
    prefix = siglip_prefix(header)
    hidden, channels, patch, _ = _shape(header, f"{prefix}embeddings.patch_embedding.weight", SIGLIP)
    positions = _shape(header, f"{prefix}embeddings.position_embedding.weight", SIGLIP)[0]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ModelFolderError(f"{header.path}: {positions} position embeddings are not a square grid; "
                               f"not {SIGLIP}")
    return SiglipVisionConfig(
        hidden_size=hidden, num_channels=channels, patch_size=patch, image_size=side * patch,
        intermediate_size=_shape(header, f"{prefix}encoder.layers.0.mlp.fc1.weight", SIGLIP)[0],
        num_hidden_layers=_count(header.shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\..+"),
        vision_use_head=f"{prefix}head.probe" in header.shapes,
        **_known(KNOWN_SIGLIP, hidden, header, SIGLIP))


def load_siglip_file(path: str | Path, dtype: torch.dtype = torch.float32) -> SiglipVisionModel:
    """The SigLIP image encoder from one file holding transformers' `vision_model.` names, computing in `dtype`."""
    header = read_header(path, SIGLIP)
    config = siglip_config(header)
    model = empty_model(lambda: SiglipVisionModel(config))
    prefix = siglip_prefix(header)
    return load_weights(model, header, _names(model, prefix), dtype, SIGLIP,
                        ignored=frozenset({f"{prefix}embeddings.position_ids"}))


def siglip_processor(image_size: int):
    """FramePack's SigLIP image processor for `image_size` px inputs (torchvision backend when installed).

    transformers 5 gives the PIL backend its own class, SiglipImageProcessorPil; in 4.x the plain
    SiglipImageProcessor is that PIL backend.
    """
    import transformers

    if is_torchvision_available() or not hasattr(transformers, "SiglipImageProcessorPil"):
        processor_class = transformers.SiglipImageProcessor
    else:
        processor_class = transformers.SiglipImageProcessorPil
    return processor_class(size={"height": image_size, "width": image_size}, **SIGLIP_PROCESSOR)
