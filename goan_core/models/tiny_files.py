"""The tiny model set as the usual single files (`usual_files`): real file names, tensor naming and dtypes.

Tests and the ComfyUI end-to-end test load these through the same loaders as the real files. Each
writer saves what the real file holds: the VAE in ComfyUI's (Comfy-Org) or HunyuanVideo's original
naming in bf16, the Llama under ComfyUI's `model.` names in fp16 or as ComfyUI's scaled fp8, CLIP-L
and SigLIP under transformers 4's `text_model.`/`vision_model.` names in fp16, and the transformer
as an fp8 file without metadata. The VAE's ComfyUI naming is written by this module's own table
(`comfy_vae_name`), independent of the reader's (`vae_file.comfy_to_diffusers`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .tiny import build_tiny_models, write_transformer_file
from .usual_files import USUAL_FILES

_FP8 = torch.float8_e4m3fn
SCALED_FP8 = "fp8_scaled"


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({key: t.contiguous() for key, t in sorted(tensors.items())}, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


def _own_prefix_free(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without transformers 4's `text_model.`/`vision_model.` module prefix (5 has none)."""
    state = model.state_dict()
    for prefix in ("text_model.", "vision_model."):
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: t for key, t in state.items()}
    return dict(state)


def comfy_vae_name(key: str, levels: int) -> str:
    """ComfyUI's name for one diffusers-named AutoencoderKLHunyuanVideo tensor (`levels` down/up blocks)."""
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key
    rest = rest.replace("conv_norm_out.", "norm_out.").replace(".conv_shortcut.", ".nin_shortcut.")
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"{side}.mid.block_{int(m.group(1)) + 1}.{m.group(2)}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", rest)
    if m:
        short = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m.group(1)]
        return f"{side}.mid.attn_1.{short}.{m.group(2)}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0|upsamplers\.0)\.(.+)", rest)
    if m:
        kind, index = m.group(1), int(m.group(2))
        level = index if kind == "down" else levels - 1 - index
        part = f"block.{m.group(4)}" if m.group(4) is not None else f"{kind}sample"
        return f"{side}.{kind}.{level}.{part}.{m.group(5)}"
    return f"{side}.{rest}"


def write_vae_file(vae, path: str | Path, *, naming: str = "comfyui", dtype: torch.dtype = torch.bfloat16,
                   metadata: dict | None = None) -> Path:
    """The VAE as hunyuan_video_vae_bf16.safetensors: `naming` "comfyui" (Comfy-Org) or "original" (Kijai)."""
    state = vae.state_dict()
    if naming == "original":
        return _save({key: t.to(dtype) for key, t in state.items()}, Path(path), metadata)
    levels = len(vae.config.block_out_channels)
    tensors = {}
    for key, t in state.items():
        name = comfy_vae_name(key, levels)
        if ".attn_1." in name and t.ndim == 2:
            t = t.reshape(*t.shape, 1, 1, 1)  # ComfyUI's attention projections are 1x1x1 convolutions
        tensors[name] = t.to(dtype)
    return _save(tensors, Path(path), metadata)


def scaled_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scale) with weight ~ fp8 * scale, as ComfyUI's scaled fp8 files store a linear layer."""
    scale = (weight.float().abs().max() / torch.finfo(_FP8).max).clamp(min=1e-12)
    return (weight.float() / scale).to(_FP8), scale.reshape(())


def write_llama_file(llama, path: str | Path, *, dtype: torch.dtype | str = torch.float16,
                     metadata: dict | None = None) -> Path:
    """The Llama as llava_llama3_fp16.safetensors (`model.` names), or `dtype` "fp8_scaled" as _fp8_scaled."""
    tensors = {}
    for key, t in llama.state_dict().items():
        name = f"model.{key}"
        if dtype == SCALED_FP8 and key.endswith("_proj.weight"):
            tensors[name], tensors[name.removesuffix(".weight") + ".scale_weight"] = scaled_fp8(t)
        else:
            tensors[name] = t.to(torch.float16 if dtype == SCALED_FP8 else dtype)
    if dtype == SCALED_FP8:
        tensors["scaled_fp8"] = torch.empty(0, dtype=_FP8)
    return _save(tensors, Path(path), metadata)


def write_prefixed_file(model, path: str | Path, prefix: str, *, dtype: torch.dtype = torch.float16,
                        metadata: dict | None = None) -> Path:
    """CLIP-L (`prefix` "text_model.") or SigLIP ("vision_model.") under transformers 4's names."""
    return _save({prefix + key: t.to(dtype) for key, t in _own_prefix_free(model).items()}, Path(path), metadata)


def write_usual_files(models_dir: str | Path, *, metadata: dict | None = None, models=None) -> dict[str, Path]:
    """The tiny set (seed 0, or `models`) as the usual files under ComfyUI's folders in `models_dir`.

    {part: path}: diffusion_models/FramePackI2V_HY_fp8_e4m3fn.safetensors, vae/, text_encoders/ (both),
    clip_vision/, each named as in `USUAL_FILES`; `metadata` goes into every file (the e2e stub's marker).
    """
    models = models or build_tiny_models(seed=0)
    paths = {f.part: Path(models_dir) / f.folder / f.name for f in USUAL_FILES}
    paths["transformer"].parent.mkdir(parents=True, exist_ok=True)
    write_transformer_file(models.transformer, paths["transformer"], _FP8, with_config=False, metadata=metadata)
    write_vae_file(models.vae, paths["vae"], metadata=metadata)
    write_llama_file(models.text_encoder, paths["text_encoder"], metadata=metadata)
    write_prefixed_file(models.text_encoder_2, paths["text_encoder_2"], "text_model.", metadata=metadata)
    write_prefixed_file(models.image_encoder, paths["image_encoder"], "vision_model.", metadata=metadata)
    return paths
