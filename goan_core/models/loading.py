"""The FramePack model set: loading it from local folders and single files.

Everything is read from the local disk (`local_files_only=True`, safetensors only); nothing here
ever reaches the network or unpickles a file. A models root holds diffusers/transformers folders in
the layout of the public repositories:

    transformer/        lllyasviel/FramePackI2V_HY (or give one .safetensors file instead)
    vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/     hunyuanvideo-community/HunyuanVideo
    image_encoder/ feature_extractor/                               lllyasviel/flux_redux_bfl

Each model may come from the single file ComfyUI users keep instead (`ModelFiles`: the VAE, Llama,
CLIP-L and SigLIP files; see `vae_file` and `encoder_files`); then no root is needed for it. Those
files hold no tokenizer: the two tokenizer folders come from the root or are named in `ModelFiles`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from safetensors import SafetensorError
from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModel, LlamaModel, SiglipVisionModel

from ..errors import ModelFolderError, some_names
from .devices import ModelDtypes, is_out_of_memory
from .encoder_files import load_clip_file, load_llama_file, load_siglip_file, siglip_processor
from .single_file import TRANSFORMER_CLASS_NAMES, load_transformer_file
from .storage import apply_weight_dtype
from .vae_file import load_vae_file


@dataclass
class ModelSet:
    """The models a FramePack job uses; a field is None when it was not loaded (or not needed)."""

    transformer: Any = None
    vae: Any = None
    text_encoder: Any = None
    text_encoder_2: Any = None
    tokenizer: Any = None
    tokenizer_2: Any = None
    image_encoder: Any = None
    feature_extractor: Any = None


@dataclass(frozen=True)
class ModelFiles:
    """Single files standing in for parts of a models root, and the tokenizer folders they lack.

    `vae`: hunyuan_video_vae_bf16.safetensors; `text_encoder`: llava_llama3_fp16 (or _fp8_scaled);
    `text_encoder_2`: clip_l; `image_encoder`: sigclip_vision_patch14_384 (its image processor is
    built from it); `tokenizer` / `tokenizer_2`: folders holding the Llama and CLIP tokenizers.
    """

    vae: Path | None = None
    text_encoder: Path | None = None
    text_encoder_2: Path | None = None
    image_encoder: Path | None = None
    tokenizer: Path | None = None
    tokenizer_2: Path | None = None

    def given(self) -> dict[str, Path]:
        """{part name: path} of what was given."""
        return {name: Path(value) for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class _Part:
    """One subfolder of a models root: how it is checked and loaded."""

    kind: str  # "diffusers", "transformers", "tokenizer" or "processor"
    loader: Any
    accepts: tuple[str, ...]  # diffusers `_class_name` or transformers `model_type` values
    what: str


PARTS = {
    "transformer": _Part("diffusers", HunyuanVideoFramepackTransformer3DModel, TRANSFORMER_CLASS_NAMES,
                         "the FramePack transformer (diffusers folder)"),
    "vae": _Part("diffusers", AutoencoderKLHunyuanVideo, ("AutoencoderKLHunyuanVideo",),
                 "the HunyuanVideo VAE"),
    "text_encoder": _Part("transformers", LlamaModel, ("llama",), "the Llama text encoder"),
    "text_encoder_2": _Part("transformers", CLIPTextModel, ("clip_text_model", "clip"),
                            "the CLIP text encoder"),
    "tokenizer": _Part("tokenizer", AutoTokenizer, (), "the Llama tokenizer"),
    "tokenizer_2": _Part("tokenizer", AutoTokenizer, (), "the CLIP tokenizer"),
    "image_encoder": _Part("transformers", SiglipVisionModel, ("siglip_vision_model", "siglip"),
                           "the SigLIP image encoder"),
    "feature_extractor": _Part("processor", AutoImageProcessor, ("SiglipImageProcessor",),
                               "the SigLIP image processor"),
}
TEXT_PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
IMAGE_PARTS = ("image_encoder", "feature_extractor")
# The model role (`devices.ROLES`) whose compute dtype each part loads in.
PART_ROLES = {"transformer": "transformer", "vae": "vae", **{name: "text" for name in TEXT_PARTS},
              **{name: "image" for name in IMAGE_PARTS}}


# The keyword each library's from_pretrained reads the dtype from: diffusers reads `torch_dtype` in every
# version (`dtype` only from 0.40); transformers reads `dtype` from 4.56 (and warns on `torch_dtype` from 5).
DTYPE_KEYWORD = {"diffusers": "torch_dtype", "transformers": "dtype"}


def _dtypes(dtype: torch.dtype | ModelDtypes) -> ModelDtypes:
    return dtype if isinstance(dtype, ModelDtypes) else ModelDtypes.uniform(dtype)

LAYOUT_HELP = (
    "expected a models folder holding transformer/ (or a single transformer .safetensors file), vae/, "
    "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, image_encoder/ and feature_extractor/, "
    "as in lllyasviel/FramePackI2V_HY, hunyuanvideo-community/HunyuanVideo and lllyasviel/flux_redux_bfl"
)


def needed_parts(
    *, transformer_folder: bool = True, need_text: bool = True, need_image: bool = True
) -> list[str]:
    """The subfolder names a models root must hold for these needs."""
    names = ["transformer"] if transformer_folder else []
    names.append("vae")
    if need_text:
        names += TEXT_PARTS
    if need_image:
        names += IMAGE_PARTS
    return names


def _missing_in_part(folder: Path, kind: str) -> list[str]:
    """What `folder` lacks for its kind, as paths relative to the models root."""
    name = folder.name
    if not folder.is_dir():
        return [f"{name}/"]
    if kind in ("diffusers", "transformers"):
        missing = [] if (folder / "config.json").is_file() else [f"{name}/config.json"]
        if not any(folder.glob("*.safetensors")):
            missing.append(f"{name}/*.safetensors (weights; .bin pickle files are never read)")
        return missing
    if kind == "tokenizer":
        missing = [] if (folder / "tokenizer_config.json").is_file() else [f"{name}/tokenizer_config.json"]
        if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
            missing.append(f"{name}/tokenizer.json (or vocab.json + merges.txt)")
        return missing
    return [] if (folder / "preprocessor_config.json").is_file() else [f"{name}/preprocessor_config.json"]


def missing_parts(root: str | Path, names: list[str]) -> list[str]:
    """The pieces of `names` (subfolders and their files) that `root` lacks; empty when complete."""
    root = Path(root)
    return [item for name in names for item in _missing_in_part(root / name, PARTS[name].kind)]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(
            f"{path}: cannot read this JSON file ({e}); restore it from the model repository"
        ) from e
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object; restore it from the model repository")
    return data


def _check_class(folder: Path, part: _Part) -> None:
    """Raise ModelFolderError when the folder's config names another model class than `part` expects."""
    if part.kind == "diffusers":
        found = _read_json(folder / "config.json").get("_class_name")
    elif part.kind == "transformers":
        found = _read_json(folder / "config.json").get("model_type")
    elif part.kind == "processor":
        found = _read_json(folder / "preprocessor_config.json").get("image_processor_type")
        if found is None or str(found).startswith("Siglip"):  # also the Fast/Pil variants
            return
    else:
        return
    if found not in part.accepts:
        raise ModelFolderError(
            f"{folder}: holds {repr(found) if found else 'no named model class'} but this folder must hold "
            f"{part.what} ({' or '.join(part.accepts)}); "
            f"put the right model in {folder.name}/"
        )


def load_part(folder: Path, name: str, dtype: torch.dtype) -> Any:
    """Load the component `name` (a key of PARTS) from `folder`, from the local disk only.

    Refuses a folder holding another model class, and missing or wrongly shaped weights.
    """
    part = PARTS[name]
    _check_class(folder, part)
    try:
        if part.kind in ("tokenizer", "processor"):
            return part.loader.from_pretrained(str(folder), local_files_only=True)
        model, info = part.loader.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, output_loading_info=True,
            **{DTYPE_KEYWORD[part.kind]: dtype},
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
        if is_out_of_memory(e):  # not a broken folder: the caller's memory handling decides
            raise
        raise ModelFolderError(f"{folder}: cannot load {part.what} from it ({e})") from e
    mismatched = {k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]}
    broken = sorted(set(info["missing_keys"]) | mismatched)
    if broken:
        raise ModelFolderError(
            f"{folder}: the weights do not fit {part.what}; missing or wrongly shaped: {some_names(broken)}; "
            f"replace the files in {folder.name}/ with a complete copy"
        )
    return model.eval()


def load_parts(root: str | Path, names, dtype: torch.dtype | ModelDtypes) -> ModelSet:
    """A ModelSet with the components `names` loaded from their subfolders of `root`.

    Each part loads in its role's dtype (`dtype` a ModelDtypes) or all in one (`dtype` a torch.dtype).
    Every missing piece is listed in one ModelFolderError before anything is loaded.
    """
    dtypes = _dtypes(dtype)
    root = Path(root)
    missing = missing_parts(root, list(names))
    if missing:
        raise ModelFolderError(f"{root}: models folder is incomplete, missing {', '.join(missing)}; {LAYOUT_HELP}")
    return ModelSet(**{name: load_part(root / name, name, dtypes.of(PART_ROLES[name])) for name in names})


# How each part is given when no models root holds it (the CLI's options).
FILE_HINTS = {
    "transformer": "--transformer FILE (FramePackI2V_HY_fp8_e4m3fn.safetensors or _bf16)",
    "vae": "--vae FILE (hunyuan_video_vae_bf16.safetensors)",
    "text_encoder": "--text-encoder FILE (llava_llama3_fp16.safetensors or _fp8_scaled)",
    "text_encoder_2": "--text-encoder-2 FILE (clip_l.safetensors)",
    "tokenizer": "--tokenizer DIR (the Llama tokenizer: ComfyUI's comfy/text_encoders/llama_tokenizer, or "
                 "hunyuanvideo-community/HunyuanVideo's tokenizer/)",
    "tokenizer_2": "--tokenizer-2 DIR (the CLIP tokenizer: ComfyUI's comfy/sd1_tokenizer, or "
                   "hunyuanvideo-community/HunyuanVideo's tokenizer_2/)",
    "image_encoder": "--image-encoder FILE (sigclip_vision_patch14_384.safetensors)",
    "feature_extractor": "--image-encoder FILE (sigclip_vision_patch14_384.safetensors)",
}
_FILE_LOADERS = {"vae": load_vae_file, "text_encoder": load_llama_file, "text_encoder_2": load_clip_file,
                 "image_encoder": load_siglip_file}


def _covered(files: ModelFiles) -> set[str]:
    """The parts `files` provides (the SigLIP file brings its image processor too)."""
    covered = set(files.given())
    return covered | {"feature_extractor"} if "image_encoder" in covered else covered


def _check_files(files: ModelFiles, names: list[str]) -> None:
    """Raise ModelFolderError naming every given file or tokenizer folder of `names` that is absent or incomplete."""
    given = {name: path for name, path in files.given().items() if name in names}
    problems = [f"{path} ({name}): not found" for name, path in given.items() if not path.exists()]
    for name in ("tokenizer", "tokenizer_2"):
        if name in given and given[name].exists():
            lacking = _missing_in_part(given[name], "tokenizer")
            if lacking:
                problems.append(f"{given[name]}: not a tokenizer folder (lacks {', '.join(lacking)}); "
                                f"give {FILE_HINTS[name]}")
    if problems:
        raise ModelFolderError("; ".join(problems))


def _load_from_files(files: ModelFiles, names: list[str], dtypes: ModelDtypes) -> dict:
    """{part: model} of the parts of `names` that `files` provides, each in its role's dtype."""
    given = files.given()
    loaded = {}
    for name in names:
        if name in _FILE_LOADERS and name in given:
            loaded[name] = _FILE_LOADERS[name](given[name], dtypes.of(PART_ROLES[name]))
        elif name in ("tokenizer", "tokenizer_2") and name in given:
            loaded[name] = load_part(given[name], name, dtypes.text)
    if "feature_extractor" in names and "image_encoder" in given:
        loaded["feature_extractor"] = siglip_processor(loaded["image_encoder"].config.image_size)
    return loaded


def load_model_set(
    root: str | Path | None,
    *,
    transformer_file: str | Path | None = None,
    files: ModelFiles = ModelFiles(),
    dtype: torch.dtype | ModelDtypes = torch.float32,
    need_text: bool = True,
    need_image: bool = True,
    weight_dtype: str | torch.dtype | None = "auto",
) -> ModelSet:
    """Load the models a job needs onto the CPU, each in its role's dtype.

    `dtype` is a ModelDtypes (`devices.model_dtypes`: transformer, VAE, text and image encoders each
    in their own) or one torch.dtype for every model.

    Each part comes from its single file when given (`transformer_file`, `files`), else from its
    folder in the models `root` (layout in the module docstring; None when the files cover every
    part). The transformer's matmul weights are stored as `weight_dtype` says (`storage`: "auto"
    keeps an fp8 file's fp8). Text and image encoders are skipped (left None) when not needed.
    Raises ModelFolderError listing every missing piece before anything is loaded.
    """
    names = needed_parts(
        transformer_folder=transformer_file is None, need_text=need_text, need_image=need_image
    )
    from_root = [name for name in names if name not in _covered(files)]
    if from_root and root is None:
        hints = dict.fromkeys(f"{name}: give {FILE_HINTS[name]}" for name in from_root if name != "feature_extractor")
        raise ModelFolderError("no models folder given, and nothing provides " + "; ".join(hints)
                               + " (or --models with the diffusers folders)")
    if from_root and not Path(root).is_dir():
        raise ModelFolderError(f"{root}: models folder not found or not a folder; {LAYOUT_HELP}")
    missing = missing_parts(root, from_root) if from_root else []
    if missing:
        raise ModelFolderError(f"{root}: models folder is incomplete, missing {', '.join(missing)}; {LAYOUT_HELP}")
    _check_files(files, names)
    dtypes = _dtypes(dtype)
    models = load_parts(root, from_root, dtypes) if from_root else ModelSet()
    for name, model in _load_from_files(files, names, dtypes).items():
        setattr(models, name, model)
    if transformer_file is not None:
        models.transformer = load_transformer_file(transformer_file, dtypes.transformer, weight_dtype)
    else:
        apply_weight_dtype(models.transformer, weight_dtype, dtypes.transformer)
    return models
