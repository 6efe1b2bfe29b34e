"""One model's weights from one .safetensors file, under the tensor names somebody else chose.

ComfyUI users keep each model as one file without a config (`models/vae`, `models/text_encoders`,
`models/clip_vision`); its tensor names are those of the project that wrote it. A loader here reads
the header, works out the config, builds the goan model on the meta device, maps each of the
model's state-dict names to the file's name (`names`), checks the two agree exactly (names and
shapes) and installs the tensors one at a time in the compute dtype, so host memory peaks at the
model plus one tensor.

ComfyUI's "scaled fp8" files (e.g. `llava_llama3_fp8_scaled.safetensors`) store each linear weight
as fp8 next to a `<layer>.scale_weight` factor (and a `scaled_fp8` marker tensor); they are
dequantized at load (fp8 weight times its scale, in float32), then cast to the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open

from ..errors import ModelFolderError, some_names
from .storage import assign_weights

SCALED_FP8_MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".scale_input")


@dataclass(frozen=True)
class WeightsHeader:
    """What a .safetensors file holds, read from its header only: tensor shapes and dtypes, metadata."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]

    @property
    def scaled_fp8(self) -> bool:
        return SCALED_FP8_MARKER in self.shapes

    def weight_names(self) -> set[str]:
        """The tensor names that are weights (scaled fp8's marker and scale factors left out)."""
        return {key for key in self.shapes if key != SCALED_FP8_MARKER and not key.endswith(SCALE_SUFFIXES)}


def _open(path: Path, what: str):
    if not path.is_file():
        raise ModelFolderError(f"{path}: {what} file not found; give the path of its .safetensors file")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise ModelFolderError(f"{path}: not a readable safetensors file ({e}); {what} must be a .safetensors file") from e


def read_header(path: str | Path, what: str) -> WeightsHeader:
    """The header of `path`; ModelFolderError naming the file (and `what` it should hold) when unreadable."""
    path = Path(path)
    with _open(path, what) as f:
        shapes, dtypes = {}, {}
        for key in f.keys():
            piece = f.get_slice(key)
            shapes[key], dtypes[key] = tuple(piece.get_shape()), str(piece.get_dtype())
        return WeightsHeader(path, shapes, dtypes, dict(f.metadata() or {}))


def _dequantized(read: Callable[[str], torch.Tensor], header: WeightsHeader) -> Callable[[str], torch.Tensor]:
    """`read` that applies scaled fp8's per-layer factor: weight * scale_weight, in float32."""

    def read_scaled(key: str) -> torch.Tensor:
        tensor = read(key)
        scale_key = key.removesuffix(".weight") + ".scale_weight"
        if not key.endswith(".weight") or scale_key not in header.shapes:
            return tensor
        scale = read(scale_key).float()
        if scale.numel() == 1:
            scale = scale.reshape(())
        elif scale.numel() == tensor.shape[0]:  # one factor per output row
            scale = scale.reshape(-1, *([1] * (tensor.ndim - 1)))
        else:
            raise ModelFolderError(
                f"{header.path}: scale {scale_key!r} of shape {tuple(scale.shape)} does not fit weight {key!r} of "
                f"shape {tuple(tensor.shape)}; use the fp16 file instead")
        return tensor.float() * scale

    return read_scaled


def check_names(header: WeightsHeader, expected: dict[str, tuple[int, ...]], names: dict[str, str],
                what: str, reshaped: frozenset[str] = frozenset(), ignored: frozenset[str] = frozenset()) -> None:
    """Raise ModelFolderError unless the file holds exactly the tensors `names` maps the model's onto.

    `expected`: the model's state-dict shapes; `names`: model name -> file name (a model name without
    one is missing, reported under the model's name; a file name mapped to no model name is
    unexpected); `reshaped`: model names whose file tensor may hold the same numbers in another shape
    (checked by element count); `ignored`: file tensors the model does not use (a language-model head).
    """
    unknown = {file_key for key, file_key in names.items() if key not in expected}
    names = {key: file_key for key, file_key in names.items() if key in expected}
    wanted = set(names.values())
    present = header.weight_names() - unknown
    missing = sorted({name for name in wanted if name not in present} | set(expected) - set(names))
    unexpected = sorted((present - wanted - ignored) | unknown)
    wrong = []
    for key, file_key in names.items():
        shape = header.shapes.get(file_key)
        if shape is None:
            continue
        fits = (torch.Size(shape).numel() == torch.Size(expected[key]).numel() if key in reshaped
                else shape == expected[key])
        if not fits:
            wrong.append(f"{file_key} {shape} (expected {expected[key]})")
    labelled = (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong))
    problems = [f"{label}: {some_names(keys)}" for label, keys in labelled if keys]
    if problems:
        raise ModelFolderError(f"{header.path}: does not fit {what} ({'; '.join(problems)}); "
                               f"use a complete {what} .safetensors file")


def empty_model(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` with its parameters on the meta device (no memory, no init) and its buffers real.

    Buffers a model computes itself and never saves (rotary frequencies, position ids) must exist
    for real; the parameters are replaced by `load_weights`.
    """
    with init_empty_weights(include_buffers=False):
        return build()


def load_weights(model: torch.nn.Module, header: WeightsHeader, names: dict[str, str], compute_dtype: torch.dtype,
                 what: str, *, reshaped: frozenset[str] = frozenset(),
                 ignored: frozenset[str] = frozenset()) -> torch.nn.Module:
    """Fill `model` (from `empty_model`) from `header`'s file through `names` (model name -> file name), eval mode.

    Every tensor is cast to `compute_dtype` (scaled fp8 dequantized first); the model names in
    `reshaped` may come as another shape of as many numbers (ComfyUI's 1x1x1 convolution kernels for
    the VAE's attention projections). Checks names and shapes first (`check_names`).
    """
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    check_names(header, expected, names, what, reshaped, ignored)
    with _open(header.path, what) as f:
        read = _dequantized(f.get_tensor, header) if header.scaled_fp8 else f.get_tensor
        assign_weights(model, list(names), lambda key: read(names[key]).reshape(expected[key]),
                       compute_dtype, compute_dtype)
    return model.eval()
