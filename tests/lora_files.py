"""Tiny LoRA files for the tiny transformer in the real formats people share, all holding the same deltas.

One set of low-rank deltas is defined on the ORIGINAL HunyuanVideo modules (fused qkv, single blocks'
linear1, the final layer's modulation), then written in each format: as musubi-tuner/kohya and
ComfyUI write HunyuanVideo LoRAs (original names), and as diffusers/PEFT and musubi's FramePack
training write them (diffusers names: a fused module's `up` split among its layers, its `down` copied).
The original -> diffusers table below is written out here, apart from goan's own, so the tests compare
two statements of the mapping (and tests/test_lora.py checks this one against diffusers' converter).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 4
ALPHA = 2.0  # scale alpha / rank = 0.5

# original module -> the diffusers layers its output rows feed, in row order (one double, single, refiner block)
FUSED = {
    "double_blocks.0.img_attn_qkv": ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"),
    "double_blocks.0.txt_attn_qkv": ("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
                                     "transformer_blocks.0.attn.add_v_proj"),
    "double_blocks.0.img_attn_proj": ("transformer_blocks.0.attn.to_out.0",),
    "double_blocks.0.txt_attn_proj": ("transformer_blocks.0.attn.to_add_out",),
    "double_blocks.0.img_mlp.fc1": ("transformer_blocks.0.ff.net.0.proj",),
    "double_blocks.0.txt_mlp.fc2": ("transformer_blocks.0.ff_context.net.2",),
    "double_blocks.0.img_mod.linear": ("transformer_blocks.0.norm1.linear",),
    "double_blocks.0.txt_mod.linear": ("transformer_blocks.0.norm1_context.linear",),
    "single_blocks.0.linear1": ("single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"),
    "single_blocks.0.linear2": ("single_transformer_blocks.0.proj_out",),
    "single_blocks.0.modulation.linear": ("single_transformer_blocks.0.norm.linear",),
    "txt_in.individual_token_refiner.blocks.0.self_attn_qkv": (
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_q",
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_k",
        "context_embedder.token_refiner.refiner_blocks.0.attn.to_v"),
    "final_layer.linear": ("proj_out",),
}
SWAPPED = {"final_layer.adaLN_modulation.1": "norm_out.linear"}  # (shift, scale) -> (scale, shift)
SINGLE_PREFIX = "single_blocks."


def layers(model) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def make_deltas(model, seed: int = 0, magnitude: float = 0.2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """original module -> (down [RANK, in], up [out, RANK]), seeded; `out` is the sum of its layers' outputs."""
    linear = layers(model)
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, targets in {**FUSED, **{k: (v,) for k, v in SWAPPED.items()}}.items():
        rows = sum(linear[t].out_features for t in targets)
        down = torch.randn(RANK, linear[targets[0]].in_features, generator=generator) * magnitude
        deltas[name] = (down, torch.randn(rows, RANK, generator=generator) * magnitude)
    return deltas


def expand(model, deltas) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The same deltas on diffusers layers: each layer its slice of the up rows and a copy of the down."""
    linear = layers(model)
    out = {}
    for name, (down, up) in deltas.items():
        if name in SWAPPED:
            half = up.shape[0] // 2
            out[SWAPPED[name]] = (down.clone(), torch.cat([up[half:], up[:half]]))
            continue
        start = 0
        for target in FUSED[name]:
            rows = linear[target].out_features
            out[target] = (down.clone(), up[start:start + rows].clone())
            start += rows
    return out


def _save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _flat(name: str) -> str:
    return name.replace(".", "_")


def musubi_original(deltas, path: Path, alpha: float | None = ALPHA) -> Path:
    """musubi-tuner / kohya HunyuanVideo: lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, .alpha."""
    tensors = {}
    for name, (down, up) in deltas.items():
        tensors[f"lora_unet_{_flat(name)}.lora_down.weight"] = down
        tensors[f"lora_unet_{_flat(name)}.lora_up.weight"] = up
        if alpha is not None:
            tensors[f"lora_unet_{_flat(name)}.alpha"] = torch.tensor(alpha)
    return _save(path, tensors)


def musubi_split(model, deltas, path: Path) -> Path:
    """musubi's split_qkv form: a fused module's pairs lora_down.<i> / lora_up.<i>, one per layer it feeds."""
    linear = layers(model)
    tensors = {}
    for name, (down, up) in deltas.items():
        base = f"lora_unet_{_flat(name)}"
        tensors[f"{base}.alpha"] = torch.tensor(ALPHA)
        if name in SWAPPED or len(FUSED[name]) == 1:
            tensors[f"{base}.lora_down.weight"], tensors[f"{base}.lora_up.weight"] = down, up
            continue
        start = 0
        for part, target in enumerate(FUSED[name]):
            rows = linear[target].out_features
            tensors[f"{base}.lora_down.{part}.weight"] = down.clone()
            tensors[f"{base}.lora_up.{part}.weight"] = up[start:start + rows].clone()
            start += rows
    return _save(path, tensors)


def comfy_original(deltas, path: Path) -> Path:
    """ComfyUI-style HunyuanVideo: diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight, .alpha."""
    tensors = {}
    for name, (down, up) in deltas.items():
        tensors[f"diffusion_model.{name}.lora_A.weight"] = down
        tensors[f"diffusion_model.{name}.lora_B.weight"] = up
        tensors[f"diffusion_model.{name}.alpha"] = torch.tensor(ALPHA)
    return _save(path, tensors)


def diffusers_peft(model, deltas, path: Path, prefix: str = "transformer.", alpha: str = "keys") -> Path:
    """diffusers/PEFT: transformer.transformer_blocks.0.attn.to_q.lora_A.weight; alpha as `.alpha` keys ("keys"),
    in diffusers' lora_adapter_metadata ("metadata") or absent (None: scale 1)."""
    tensors, metadata = {}, None
    for layer, (down, up) in expand(model, deltas).items():
        tensors[f"{prefix}{layer}.lora_A.weight"] = down
        tensors[f"{prefix}{layer}.lora_B.weight"] = up
        if alpha == "keys":
            tensors[f"{prefix}{layer}.alpha"] = torch.tensor(ALPHA)
    if alpha == "metadata":
        metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(
            {"transformer.r": RANK, "transformer.lora_alpha": ALPHA, "transformer.use_rslora": False})}
    return _save(path, tensors, metadata)


def musubi_framepack(model, deltas, path: Path) -> Path:
    """musubi-tuner's FramePack training: lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight, .alpha."""
    tensors = {}
    for layer, (down, up) in expand(model, deltas).items():
        tensors[f"lora_unet_{_flat(layer)}.lora_down.weight"] = down
        tensors[f"lora_unet_{_flat(layer)}.lora_up.weight"] = up
        tensors[f"lora_unet_{_flat(layer)}.alpha"] = torch.tensor(ALPHA)
    return _save(path, tensors)


FORMATS = {
    "musubi_original": lambda model, deltas, path: musubi_original(deltas, path),
    "musubi_split": musubi_split,
    "comfy_original": lambda model, deltas, path: comfy_original(deltas, path),
    "diffusers_peft": diffusers_peft,
    "peft_no_prefix": lambda model, deltas, path: diffusers_peft(model, deltas, path, prefix=""),
    "peft_metadata_alpha": lambda model, deltas, path: diffusers_peft(model, deltas, path, alpha="metadata"),
    "musubi_framepack": musubi_framepack,
}


def write_lora(model, path: Path, fmt: str = "musubi_original", seed: int = 0, magnitude: float = 0.2) -> Path:
    """A LoRA for `model` in format `fmt` (a FORMATS name), the deltas of `seed`."""
    return FORMATS[fmt](model, make_deltas(model, seed, magnitude), path)


def merged(model, deltas, strength: float, scale: float = ALPHA / RANK):
    """A deep copy of `model` with the deltas merged into its weights: W + strength * scale * up @ down."""
    import copy

    copy_ = copy.deepcopy(model)
    linear = layers(copy_)
    with torch.no_grad():
        for layer, (down, up) in expand(model, deltas).items():
            weight = linear[layer].weight
            weight += (strength * scale * (up.double() @ down.double())).to(weight.dtype)
    return copy_
