"""The FramePack transformer from one .safetensors file, as ComfyUI users keep it in models/diffusion_models.

The config comes from the file's metadata when goan wrote it, otherwise it is inferred from the
tensor shapes (FramePack's own files and kijai's repackaging carry none).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from safetensors import SafetensorError, safe_open

from ..errors import ModelFolderError, some_names
from .storage import assign_weights, resolve_weight_dtype

# rope_axes_dim by attention head dim, for files without a stored config: FramePack's 128-dim heads
# and goan's tiny test model. Each entry sums to its head dim.
KNOWN_ROPE_AXES = {128: (16, 56, 56), 16: (4, 6, 6)}

# FramePack's own checkpoints name their class HunyuanVideoTransformer3DModelPacked.
TRANSFORMER_CLASS_NAMES = ("HunyuanVideoFramepackTransformer3DModel", "HunyuanVideoTransformer3DModelPacked")

# A single-file transformer written by goan stores its diffusers config (JSON) under this key.
CONFIG_METADATA_KEY = "goan_config"


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
            + (f" (unknown keys: {some_names(unknown)})" if unknown else "")
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
    path: str | Path, dtype: torch.dtype = torch.float32, weight_dtype: str | torch.dtype | None = "auto"
) -> HunyuanVideoFramepackTransformer3DModel:
    """Build the FramePack transformer from one .safetensors file, computing in `dtype`.

    The file may hold float32, bf16 or fp8 e4m3fn tensors. `weight_dtype` says how the matmul
    weights are stored (see `storage`): "auto" keeps the file's fp8 weights fp8 (cast per layer at
    use) and casts everything else to `dtype`, as before; "fp8_e4m3fn", "bf16", "fp16" or "fp32"
    store every matmul weight so. Tensors are read and installed one at a time (peak RAM: the model
    plus one tensor). The config comes from the file's metadata when goan wrote it, otherwise from
    the tensor shapes. Raises ModelFolderError naming the file when it is missing, not safetensors,
    or does not fit the model.
    """
    path = Path(path)
    resolve_weight_dtype(weight_dtype)  # a bad name fails before the file is read
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
            assign_weights(model, shapes, f.get_tensor, dtype, weight_dtype)
    except SafetensorError as e:
        raise ModelFolderError(
            f"{path}: not a readable safetensors file ({e}); the transformer must be a .safetensors file "
            "(bf16 or fp8 e4m3fn, as in models/diffusion_models)"
        ) from e
    return model.eval()


def _check_tensor_names(path: Path, model: torch.nn.Module, shapes: dict[str, tuple]) -> None:
    """Raise ModelFolderError when the file's tensors are not exactly the model's, name and shape."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    labelled = (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong))
    problems = [f"{label}: {some_names(keys)}" for label, keys in labelled if keys]
    if problems:
        raise ModelFolderError(
            f"{path}: does not fit a FramePack transformer ({'; '.join(problems)}); "
            "use a complete FramePackI2V_HY .safetensors file"
        )


