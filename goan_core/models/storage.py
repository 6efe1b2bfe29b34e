"""Weight storage: the transformer's matmul weights kept in a narrow dtype (fp8) and cast per layer at use.

FramePack's transformer is 12.9 B parameters; 99.9 % of them are `nn.Linear` weights. An fp8 e4m3fn
file holds those in one byte each. Upcasting them on load (what goan did before) needs 2 bytes per
parameter in bf16, more RAM than the file and more than a 24 GB GPU has. Here they stay as the file
holds them and each layer casts its weight to the compute dtype (the input's dtype) for the one
call that uses it:

    CastLinear.forward(x)  =  F.linear(x, weight.to(x.dtype), bias)
    CastConv3d.forward(x)  =  conv3d(x, weight.to(x.dtype), bias)

Casting fp8 to bf16/fp16/fp32 is exact and the matmul is the same call on the same values, so the
result is `torch.equal` to loading the same file upcast to the compute dtype (tests/test_weight_storage.py).

What is stored narrow ("matmul weights"): the `weight` of every `nn.Linear` and `nn.Conv3d` (the
patch embeds). Everything else (biases, norm weights, any 1-d tensor) is cast to the compute dtype
on load as before: together well under 0.2 % of the real model, and diffusers' norms expect their
weight in the activations' dtype.

Which dtype a matmul weight is stored in (`storage_dtype`), by the `weight_dtype` choice:
- "auto": an fp8 tensor in the file stays fp8; any other tensor takes the compute dtype, exactly as
  before (so a bf16 or fp32 file loads as it always did, and never takes more RAM than the compute
  dtype needs);
- "fp8_e4m3fn", "bf16", "fp16", "fp32": every matmul weight in that dtype. Converting to fp8 clamps
  to fp8's range first, the same rounding `tiny.write_transformer_file` uses for fp8 files.
A layer whose weight ends up in the compute dtype stays a plain nn.Linear / nn.Conv3d (no cast).

Why not diffusers' `enable_layerwise_casting`: it upcasts every leaf module's weights in place before
each forward and downcasts them after (two full copies per call, the module mutated while it runs),
and decides by name patterns; this module is stateless per call and decided per tensor. The FP32
Conv3d fallback (`precision.apply_conv_fp32`) still applies on top: it turns a CastConv3d into its
Fp32Conv3d (the weight upcast to fp32 exactly, a few MB).

Loading (`assign_weights`) goes tensor by tensor: read one tensor, convert it only when its stored
dtype differs, install it in the meta-built model, drop the reference; no state dict, no full upcast
copy. Peak RAM is the loaded model plus one tensor.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

# The user's names ("auto" keeps fp8 files fp8; see the module docstring), in widget/CLI order.
WEIGHT_DTYPES = {
    "auto": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
WEIGHT_DTYPE_CHOICES = tuple(WEIGHT_DTYPES)
_ALIASES = {"float8_e4m3fn": "fp8_e4m3fn", "fp8": "fp8_e4m3fn", "bfloat16": "bf16", "float16": "fp16",
            "float32": "fp32"}
FP8_DTYPES = (torch.float8_e4m3fn,)
_FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def resolve_weight_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The storage dtype a `weight_dtype` choice names; None for "auto" (decided per tensor)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in WEIGHT_DTYPES:
        raise InputError(f"unknown weight dtype {name!r}: use {', '.join(WEIGHT_DTYPE_CHOICES)}")
    return WEIGHT_DTYPES[key]


def storage_dtype(file_dtype: torch.dtype, weight_dtype: torch.dtype | None, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype one matmul weight is kept in: the chosen one, or for auto fp8 stays fp8, else compute."""
    if weight_dtype is not None:
        return weight_dtype
    return file_dtype if file_dtype in FP8_DTYPES else compute_dtype


def convert(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype`: itself when it already is, fp8 clamped to fp8's range (no inf/nan)."""
    if tensor.dtype == dtype:
        return tensor
    if dtype in FP8_DTYPES:
        return tensor.float().clamp(-_FP8_MAX, _FP8_MAX).to(dtype)
    return tensor.to(dtype)


# -- the casting layers ------------------------------------------------------------------------------


class _KeepsWeightDtype:
    """Mixin: `.to(dtype)`, `.half()`, `.float()` move the weight between devices but keep its storage dtype."""

    def _apply(self, fn, recurse=True):
        weight, stored = self.weight, self.weight.dtype

        def keep(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if t is weight and moved.dtype != stored:
                return t.to(device=moved.device)
            return moved

        return super()._apply(keep, recurse)


def _like(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return t if t is None or t.dtype == x.dtype else t.to(x.dtype)


class CastLinear(_KeepsWeightDtype, nn.Linear):
    """An nn.Linear whose weight is stored narrow (e.g. fp8) and cast to the input's dtype for each call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, _like(self.weight, input), _like(self.bias, input))


class CastConv3d(_KeepsWeightDtype, nn.Conv3d):
    """An nn.Conv3d whose weight is stored narrow and cast to the input's dtype for each call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, _like(self.weight, input), _like(self.bias, input))


_CAST_CLASSES = {nn.Linear: CastLinear, nn.Conv3d: CastConv3d}


def matmul_weight_names(model: nn.Module) -> set[str]:
    """State-dict names of the weights that may be stored narrow: those of nn.Linear and nn.Conv3d layers."""
    return {f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv3d))}


def enable_weight_casting(model: nn.Module, compute_dtype: torch.dtype) -> int:
    """Turn each plain Linear/Conv3d whose weight is not in `compute_dtype` into its casting class; return how many.

    Layers already converted (or already Fp32Conv3d, or other subclasses) are left alone.
    """
    changed = 0
    for module in model.modules():
        cast_class = _CAST_CLASSES.get(type(module))
        if cast_class is not None and module.weight.dtype != compute_dtype:
            module.__class__ = cast_class
            changed += 1
    return changed


# -- loading -----------------------------------------------------------------------------------------


def _install(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the (meta) parameter or buffer `key`, as load_state_dict(assign=True) does."""
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=old is not None and old.requires_grad)
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise KeyError(f"{key} is neither a parameter nor a buffer of the model")


def assign_weights(model: nn.Module, keys: Iterable[str], read: Callable[[str], torch.Tensor],
                   compute_dtype: torch.dtype, weight_dtype: str | torch.dtype | None = "auto") -> None:
    """Fill a meta-built `model` one tensor at a time from `read(key)`, then enable per-layer casting.

    Matmul weights (`matmul_weight_names`) go to `storage_dtype(...)`, everything else to the compute
    dtype; a tensor already in its dtype is installed as read (no copy). The caller checks names and
    shapes first.
    """
    chosen = resolve_weight_dtype(weight_dtype)
    matmul = matmul_weight_names(model)
    for key in keys:
        tensor = read(key)
        target = storage_dtype(tensor.dtype, chosen, compute_dtype) if key in matmul else compute_dtype
        _install(model, key, convert(tensor, target))
        del tensor
    enable_weight_casting(model, compute_dtype)


def apply_weight_dtype(model: nn.Module, weight_dtype: str | torch.dtype | None, compute_dtype: torch.dtype) -> nn.Module:
    """Store an already loaded model's matmul weights in `weight_dtype` (layer by layer); "auto" keeps them.

    For models loaded whole (diffusers folders, which diffusers loads in the compute dtype).
    """
    chosen = resolve_weight_dtype(weight_dtype)
    if chosen is not None:
        with torch.no_grad():
            for module in model.modules():
                if (isinstance(module, (nn.Linear, nn.Conv3d)) and module.weight.dtype != chosen
                        and not getattr(module, "keeps_fp32", False)):  # precision's fp32 layers stay fp32
                    stored = convert(module.weight.data, chosen)
                    module._parameters["weight"] = nn.Parameter(stored, requires_grad=module.weight.requires_grad)
    enable_weight_casting(model, compute_dtype)
    return model


# -- reporting ---------------------------------------------------------------------------------------


def weight_storage_name(model: nn.Module) -> str:
    """How the model's nn.Linear weights (the bulk of it) are stored, e.g. "float8_e4m3fn"; "a+b" when mixed.

    Layers that precision keeps fp32 (the fp32 output head) are a choice of their own and not counted.
    """
    dtypes = {module.weight.dtype for module in model.modules()
              if isinstance(module, nn.Linear) and not getattr(module, "keeps_fp32", False)}
    return "+".join(sorted(str(d).removeprefix("torch.") for d in dtypes)) or "none"


def storage_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take where they are (what it costs in RAM or VRAM)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
