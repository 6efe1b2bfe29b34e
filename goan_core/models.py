"""The FramePack model set: loading it from local folders and files, and moving it between devices.

Everything is read from the local disk (`local_files_only=True`, safetensors only); nothing here
ever reaches the network or unpickles a file. A models root holds diffusers/transformers folders in
the layout of the public repositories:

    transformer/        lllyasviel/FramePackI2V_HY (or give one .safetensors file instead)
    vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/     hunyuanvideo-community/HunyuanVideo
    image_encoder/ feature_extractor/                               lllyasviel/flux_redux_bfl
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
from safetensors import SafetensorError, safe_open
from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModel, LlamaModel, SiglipVisionModel

from .errors import ModelFolderError

# A single-file transformer written by goan stores its diffusers config (JSON) under this key.
CONFIG_METADATA_KEY = "goan_config"

# FramePack's own checkpoints name their class HunyuanVideoTransformer3DModelPacked.
TRANSFORMER_CLASS_NAMES = ("HunyuanVideoFramepackTransformer3DModel", "HunyuanVideoTransformer3DModelPacked")

# rope_axes_dim by attention head dim, for files without a stored config: FramePack's 128-dim heads
# and goan's tiny test model. Each entry sums to its head dim.
KNOWN_ROPE_AXES = {128: (16, 56, 56), 16: (4, 6, 6)}


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
            str(folder), local_files_only=True, use_safetensors=True, dtype=dtype, output_loading_info=True
        )
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
        raise ModelFolderError(f"{folder}: cannot load {part.what} from it ({e})") from e
    mismatched = {k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]}
    broken = sorted(set(info["missing_keys"]) | mismatched)
    if broken:
        raise ModelFolderError(
            f"{folder}: the weights do not fit {part.what}; missing or wrongly shaped: {_some(broken)}; "
            f"replace the files in {folder.name}/ with a complete copy"
        )
    return model.eval()


def _some(names: list[str], limit: int = 8) -> str:
    """A short, readable list of names."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_parts(root: str | Path, names, dtype: torch.dtype) -> ModelSet:
    """A ModelSet with the components `names` loaded from their subfolders of `root`.

    Every missing piece is listed in one ModelFolderError before anything is loaded.
    """
    root = Path(root)
    missing = missing_parts(root, list(names))
    if missing:
        raise ModelFolderError(f"{root}: models folder is incomplete, missing {', '.join(missing)}; {LAYOUT_HELP}")
    return ModelSet(**{name: load_part(root / name, name, dtype) for name in names})


def load_model_set(
    root: str | Path,
    *,
    transformer_file: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    need_text: bool = True,
    need_image: bool = True,
) -> ModelSet:
    """Load a models root (layout in the module docstring) onto the CPU in `dtype`.

    The transformer comes from `root/transformer`, or from `transformer_file` when given. Text and
    image encoders are skipped (left None) when not needed. Raises ModelFolderError listing every
    missing piece before anything is loaded.
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelFolderError(f"{root}: models folder not found or not a folder; {LAYOUT_HELP}")
    names = needed_parts(
        transformer_folder=transformer_file is None, need_text=need_text, need_image=need_image
    )
    models = load_parts(root, names, dtype)
    if transformer_file is not None:
        models.transformer = load_transformer_file(transformer_file, dtype)
    return models


# -- the transformer as one safetensors file -------------------------------------------------------


def _init_keys() -> set[str]:
    params = inspect.signature(HunyuanVideoFramepackTransformer3DModel.__init__).parameters
    return {name for name in params if name != "self"}


def _config_from_metadata(path: Path, metadata: dict[str, str]) -> dict | None:
    """The config stored by goan in the file's metadata, or None when the file carries none."""
    text = metadata.get(CONFIG_METADATA_KEY)
    if text is None:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFolderError(
            f"{path}: the stored model config is not valid JSON ({e}); re-export the file"
        ) from e
    if not isinstance(config, dict) or not set(config) <= _init_keys():
        unknown = sorted(set(config) - _init_keys()) if isinstance(config, dict) else []
        raise ModelFolderError(
            f"{path}: the stored model config is not a FramePack transformer config"
            + (f" (unknown keys: {_some(unknown)})" if unknown else "")
            + "; re-export the file"
        )
    return config


def _block_count(shapes: dict[str, tuple], prefix: str) -> int:
    """How many numbered blocks `prefix.N.` the tensor names mention (highest N + 1)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = [int(m.group(1)) for key in shapes if (m := pattern.match(key))]
    return max(found) + 1 if found else 0


def infer_transformer_config(shapes: dict[str, tuple[int, ...]], source: str | Path) -> dict:
    """A HunyuanVideoFramepackTransformer3DModel config that fits these tensor shapes.

    `source` only names the file in error messages. Raises ModelFolderError when the names do not
    belong to a FramePack transformer or the rotary axes cannot be known for its head size.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ModelFolderError(
                f"{source}: cannot work out the model config, tensor {key!r} is missing; "
                "this does not look like a FramePack (HunyuanVideo) transformer file"
            )
        return shapes[key]

    inner, in_channels, patch_t, patch, _ = shape("x_embedder.proj.weight")
    num_layers = _block_count(shapes, "transformer_blocks")
    num_single = _block_count(shapes, "single_transformer_blocks")
    first_block = "transformer_blocks.0" if num_layers else "single_transformer_blocks.0"
    head_dim = shape(f"{first_block}.attn.norm_q.weight")[0]
    if head_dim not in KNOWN_ROPE_AXES or inner % head_dim:
        raise ModelFolderError(
            f"{source}: cannot work out the rotary axes for attention head size {head_dim} "
            f"(known: {sorted(KNOWN_ROPE_AXES)}); use a diffusers transformer folder with its config.json "
            "instead"
        )
    mlp_key = (
        "transformer_blocks.0.ff.net.0.proj.weight" if num_layers
        else "single_transformer_blocks.0.proj_mlp.weight"
    )
    config = {
        "in_channels": in_channels,
        "out_channels": shape("proj_out.weight")[0] // (patch_t * patch * patch),
        "num_attention_heads": inner // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": num_layers,
        "num_single_layers": num_single,
        "num_refiner_layers": _block_count(shapes, "context_embedder.token_refiner.refiner_blocks"),
        "mlp_ratio": shape(mlp_key)[0] / inner,
        "patch_size": patch,
        "patch_size_t": patch_t,
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        "text_embed_dim": shape("context_embedder.proj_in.weight")[1],
        "pooled_projection_dim": shape("time_text_embed.text_embedder.linear_1.weight")[1],
        "rope_axes_dim": KNOWN_ROPE_AXES[head_dim],
        "has_image_proj": "image_projection.up.weight" in shapes,
        "has_clean_x_embedder": "clean_x_embedder.proj.weight" in shapes,
    }
    if config["has_image_proj"]:
        config["image_proj_dim"] = shapes["image_projection.up.weight"][1]
    return config


def load_transformer_file(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> HunyuanVideoFramepackTransformer3DModel:
    """Build the FramePack transformer from one .safetensors file, weights cast to `dtype`.

    The file may hold float32, bf16 or fp8 e4m3fn tensors (fp8 is upcast on load). The config comes
    from the file's metadata when goan wrote it, otherwise from the tensor shapes. Raises
    ModelFolderError naming the file when it is missing, not safetensors, or does not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(
            f"{path}: transformer file not found; give the path of a FramePack .safetensors file"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            config = _config_from_metadata(path, metadata) or infer_transformer_config(shapes, path)
            with torch.device("meta"):
                model = HunyuanVideoFramepackTransformer3DModel.from_config(config)
            _check_tensor_names(path, model, shapes)
            state = {key: f.get_tensor(key).to(dtype) for key in shapes}
    except SafetensorError as e:
        raise ModelFolderError(
            f"{path}: not a readable safetensors file ({e}); the transformer must be a .safetensors file "
            "(bf16 or fp8 e4m3fn, as in models/diffusion_models)"
        ) from e
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _check_tensor_names(path: Path, model: torch.nn.Module, shapes: dict[str, tuple]) -> None:
    """Raise ModelFolderError when the file's tensors are not exactly the model's, name and shape."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    labelled = (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong))
    problems = [f"{label}: {_some(keys)}" for label, keys in labelled if keys]
    if problems:
        raise ModelFolderError(
            f"{path}: does not fit a FramePack transformer ({'; '.join(problems)}); "
            "use a complete FramePackI2V_HY .safetensors file"
        )


# -- devices and identity --------------------------------------------------------------------------


def _is_on(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether the module's first parameter is on `device` (an index-less device matches any index)."""
    first = next(module.parameters(), None)
    if first is None or first.device.type != device.type:
        return False
    return device.index is None or first.device.index == device.index


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device | str) -> Iterator[torch.nn.Module]:
    """Run a block with `module` on `device`, moving it back to the CPU afterwards, even on error.

    Models live on the CPU between uses; on a CPU device nothing moves. Nested use is cheap: a
    module already on `device` stays put and the outermost block moves it back.
    """
    target = torch.device(device)
    if target.type == "cpu" or _is_on(module, target):
        yield module
        return
    try:
        module.to(device)
        yield module
    finally:
        module.to("cpu")


def public_config(model: Any) -> dict:
    """The model's diffusers/transformers config without private (`_`-prefixed) entries."""
    config = model.config if isinstance(model.config, dict) else model.config.to_dict()
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def canonical_json(data: dict) -> str:
    """Sorted-key, compact JSON: the same config always gives the same text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def model_identity(transformer: Any) -> dict:
    """{"transformer_class", "config_sha256"}: lets a resume file notice a different model."""
    digest = hashlib.sha256(canonical_json(public_config(transformer)).encode("utf-8")).hexdigest()
    return {"transformer_class": type(transformer).__name__, "config_sha256": digest}
