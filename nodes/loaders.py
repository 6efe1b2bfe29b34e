"""Loader nodes: the FramePack transformer, the HunyuanVideo VAE and text encoders, SigLIP.

Files and folders are found through ComfyUI's model folders (`folder_paths`):
- transformer: a single .safetensors in `diffusion_models` (bf16 or fp8), or a diffusers folder in
  `diffusers` (shown as "[diffusers] NAME"), either the transformer folder itself or a root
  holding `transformer/`;
- VAE: the single file hunyuan_video_vae_bf16.safetensors in `vae` (either naming), or a diffusers
  AutoencoderKLHunyuanVideo folder (or a root holding `vae/`) in `diffusers` or `vae`;
- text encoders: a root holding text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/
  (hunyuanvideo-community/HunyuanVideo) in `diffusers` or `text_encoders`;
- image encoder: a root holding image_encoder/ and feature_extractor/ (lllyasviel/flux_redux_bfl)
  in `diffusers` or `clip_vision`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..goan_core.errors import ModelFolderError
from ..goan_core.models import (CONV_FP32_POLICIES, IMAGE_PARTS, PARTS, TEXT_PARTS, TRANSFORMER_CLASS_NAMES,
                                WEIGHT_DTYPE_CHOICES, ImageEncoder, TextEncoders, Transformer, apply_fp32_output,
                                apply_weight_dtype, configure_precision, load_part, load_parts, load_transformer_file,
                                load_vae_file, role_dtype)
from ..goan_core.models import VAE as VAEModel
from .adapter import HOST
from .types import CATEGORY, IMAGE_ENCODER, TEXT_ENCODERS, TRANSFORMER, VAE

DTYPE_CHOICES = ["auto", "bfloat16", "float16", "float32"]
DIFFUSERS_PREFIX = "[diffusers] "
SCAN_DEPTH = 3  # how deep below a model folder goan looks for diffusers folders
NONE_FOUND = "(none found)"


def _class_of(folder: Path) -> str | None:
    """The model class named in folder/config.json (diffusers `_class_name` or transformers `model_type`)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    found = data.get("_class_name") or data.get("model_type")
    return found if isinstance(found, str) else None


def _is_transformer(folder: Path) -> bool:
    return _class_of(folder) in TRANSFORMER_CLASS_NAMES or _class_of(folder / "transformer") in TRANSFORMER_CLASS_NAMES


def _is_vae(folder: Path) -> bool:
    return "AutoencoderKLHunyuanVideo" in (_class_of(folder), _class_of(folder / "vae"))


def _has_parts(names) -> Callable[[Path], bool]:
    return lambda folder: all((folder / name).is_dir() for name in names)


KINDS = {
    "transformer": (("diffusers",), _is_transformer),
    "vae": (("diffusers", "vae"), _is_vae),
    "text_encoders": (("diffusers", "text_encoders"), _has_parts(TEXT_PARTS)),
    "image_encoder": (("diffusers", "clip_vision"), _has_parts(IMAGE_PARTS)),
}


def _matching_folders(base: Path, accepts, depth: int = SCAN_DEPTH):
    """Folders below `base` (down to `depth` levels, no hidden ones) that `accepts`; never below a match."""
    if depth <= 0 or not base.is_dir():
        return
    try:
        children = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        if accepts(child):
            yield child
        else:
            yield from _matching_folders(child, accepts, depth - 1)


def list_folders(kind: str) -> list[str]:
    """Names (relative to their model folder, '/'-separated) of the folders that hold `kind`."""
    folder_kinds, accepts = KINDS[kind]
    found = []
    for folder_kind in folder_kinds:
        for base in HOST.folder_paths(folder_kind):
            for folder in _matching_folders(Path(base), accepts):
                name = folder.relative_to(base).as_posix()
                if name not in found:
                    found.append(name)
    return sorted(found)


def _inside(base: Path, name: str) -> Path | None:
    """base/name when `name` is a plain relative name (no absolute path, no '..'), else None.

    Symlinks inside model folders are followed: people link their model files there.
    """
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name or "\x00" in name:
        return None
    if any(part in ("..", ".", "") for part in name.split("/")):
        return None
    return base / name


def find_folder(kind: str, name: str) -> Path:
    """The folder a combo value names; ModelFolderError saying where goan looked otherwise."""
    folder_kinds, accepts = KINDS[kind]
    looked = []
    for folder_kind in folder_kinds:
        for base in HOST.folder_paths(folder_kind):
            looked.append(base)
            target = _inside(Path(base), name)
            if target is not None and target.is_dir() and accepts(target):
                return target
    raise ModelFolderError(f"{name!r}: no such {kind.replace('_', ' ')} folder in {', '.join(looked) or 'any model folder'}; "
                           "put it there and refresh (press R)")


def _part_folder(root: Path, name: str) -> Path:
    """A part's folder: root itself when root is that part, else root/<name>."""
    accepts = PARTS[name].accepts
    return root if accepts and _class_of(root) in accepts else root / name


WEIGHT_SUFFIXES = (".safetensors", ".sft")


def list_files(folder_kind: str) -> list[str]:
    """Names (relative, '/'-separated) of the .safetensors files in ComfyUI's `folder_kind` model folders."""
    files = set()
    for base in map(Path, HOST.folder_paths(folder_kind)):
        if base.is_dir():
            files.update(path.relative_to(base).as_posix() for path in base.rglob("*")
                         if path.suffix.lower() in WEIGHT_SUFFIXES and path.is_file())
    return sorted(files)


def transformer_choices() -> list[str]:
    return list_files("diffusion_models") + [DIFFUSERS_PREFIX + name for name in list_folders("transformer")]


def find_file(folder_kind: str, name: str, what: str) -> Path:
    """The file a combo value names in ComfyUI's `folder_kind` folders; ModelFolderError saying where goan looked."""
    looked = []
    for base in HOST.folder_paths(folder_kind):
        looked.append(base)
        target = _inside(Path(base), name)
        if target is not None and target.is_file():
            return target
    raise ModelFolderError(f"{name!r}: no such {what} file in {', '.join(looked) or folder_kind}; "
                           "put it there and refresh (press R)")


def _dtype(name: str, device, role: str):
    """The compute dtype a loader's dtype widget names; "auto" is the role's default (`models.role_dtype`)."""
    return role_dtype(role, device, None if name == "auto" else name)


ENCODER_DTYPE_TOOLTIP = "auto: float16 on a GPU, float32 on the CPU"


def _or_none(choices: list[str]) -> list[str]:
    return choices or [NONE_FOUND]


class GoanTransformerLoader:
    DESCRIPTION = ("Loads the FramePack transformer from models/diffusion_models (one .safetensors file, bf16 or "
                   "fp8) or from a diffusers folder in models/diffusers.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = (TRANSFORMER,)
    RETURN_NAMES = ("transformer",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (_or_none(transformer_choices()), {"tooltip": "FramePackI2V_HY (or F1) weights"}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "auto: bfloat16 on a GPU, float32 on the CPU"}),
            "conv_fp32": (list(CONV_FP32_POLICIES), {"default": "auto",
                          "tooltip": "run the patch-embed Conv3d layers in fp32 (needed on GPUs without bf16 Conv3d)"}),
            # Last, so saved workflows keep their widget order (a missing value takes this default).
            "weight_dtype": (list(WEIGHT_DTYPE_CHOICES), {"default": "auto",
                             "tooltip": "how the weights are stored, cast per layer to dtype at use "
                                        "(auto: an fp8 file stays fp8, about half the memory of bf16)"}),
            "fp32_output": ("BOOLEAN", {"default": True,
                            "tooltip": "compute the final norm and projection in fp32 (FramePack's "
                                       "high_quality_fp32_output_for_inference)"}),
        }}

    def execute(self, model, dtype="auto", conv_fp32="auto", weight_dtype="auto", fp32_output=True):
        device = HOST.torch_device()
        torch_dtype = _dtype(dtype, device, "transformer")
        if model.startswith(DIFFUSERS_PREFIX):
            root = find_folder("transformer", model[len(DIFFUSERS_PREFIX):])
            folder = _part_folder(root, "transformer")
            loaded = apply_weight_dtype(load_part(folder, "transformer", torch_dtype), weight_dtype, torch_dtype)
        else:
            loaded = load_transformer_file(find_file("diffusion_models", model, "FramePack transformer"), torch_dtype,
                                           weight_dtype)
        applied = configure_precision(loaded, conv_fp32, device, torch_dtype)
        if fp32_output:
            apply_fp32_output(loaded)
        return (Transformer(loaded, device, torch_dtype, applied, model),)


class GoanVAELoader:
    DESCRIPTION = ("Loads the HunyuanVideo VAE: hunyuan_video_vae_bf16.safetensors from models/vae (Comfy-Org's or "
                   "Kijai's), or a diffusers folder from models/diffusers or models/vae. Decodes as FramePack does "
                   "(diffusers' VAE).")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("goan_vae",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": (_or_none(list_files("vae") + list_folders("vae")),
                                        {"tooltip": "a .safetensors file in models/vae or a diffusers folder"}),
                             "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": ENCODER_DTYPE_TOOLTIP})}}

    def execute(self, folder, dtype="auto"):
        device = HOST.torch_device()
        torch_dtype = _dtype(dtype, device, "vae")
        if folder.lower().endswith(WEIGHT_SUFFIXES):
            vae = load_vae_file(find_file("vae", folder, "HunyuanVideo VAE"), torch_dtype)
        else:
            vae = load_part(_part_folder(find_folder("vae", folder), "vae"), "vae", torch_dtype)
        return (VAEModel(vae, device, torch_dtype, folder),)


class _EncoderLoader:
    """A loader of encoder components (`PARTS`) from a folder of the `KIND` list, wrapped as `WRAP`."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    KIND = ""
    PARTS: tuple = ()
    WRAP = None
    ROLE = ""  # the model role whose dtype "auto" means (`models.role_dtype`)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": (_or_none(list_folders(cls.KIND)),),
                             "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": ENCODER_DTYPE_TOOLTIP})}}

    def execute(self, folder, dtype="auto"):
        device = HOST.torch_device()
        torch_dtype = _dtype(dtype, device, self.ROLE)
        models = load_parts(find_folder(self.KIND, folder), self.PARTS, torch_dtype)
        return (self.WRAP(models, device, torch_dtype, folder),)


class GoanTextEncoderLoader(_EncoderLoader):
    DESCRIPTION = ("Loads HunyuanVideo's Llama and CLIP text encoders with their tokenizers from a diffusers folder "
                   "(text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/).")
    RETURN_TYPES = (TEXT_ENCODERS,)
    RETURN_NAMES = ("text_encoders",)
    KIND, PARTS, WRAP, ROLE = "text_encoders", TEXT_PARTS, TextEncoders, "text"


class GoanImageEncoderLoader(_EncoderLoader):
    DESCRIPTION = "Loads the SigLIP image encoder and its processor (image_encoder/, feature_extractor/)."
    RETURN_TYPES = (IMAGE_ENCODER,)
    RETURN_NAMES = ("image_encoder",)
    KIND, PARTS, WRAP, ROLE = "image_encoder", IMAGE_PARTS, ImageEncoder, "image"
