"""Legacy precision: run the FramePack patch-embed Conv3d layers in fp32 where bf16 Conv3d has no kernel.

CUDA GPUs below compute capability 8.0 (Turing and older) have no bf16 Conv3d; PyTorch falls back to
`aten::slow_conv3d_forward`, which has no CUDA kernel, and the first transformer call fails with
NotImplementedError. Only the four Conv3d patch embeds of the diffusers FramePack transformer are
affected, so only they change: their weights and bias stay fp32 (also when they were stored in fp8,
see `storage.CastConv3d`: upcast exactly) (through `.to()`, `.cpu()`, `.half()`
and state-dict loads), their input is cast to fp32 and their output back to the input's dtype. The
rest of the model keeps its dtype and the state-dict keys do not change.

Also FramePack's `high_quality_fp32_output_for_inference` (`apply_fp32_output`, on by default in
the front ends): the output head (`norm_out`, an AdaLayerNormContinuous, and `proj_out`) keeps fp32
weights (upcast exactly from the stored bf16/fp16/fp8, and kept fp32 the same way) and computes in
fp32; the transformer then returns fp32 velocities, as FramePack's does.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn

from ..errors import InputError
from .storage import CastConv3d, CastLinear

CONV_FP32_POLICIES = ("auto", "force", "off")

PATCH_EMBED_CONVS = (
    "x_embedder.proj",
    "clean_x_embedder.proj",
    "clean_x_embedder.proj_2x",
    "clean_x_embedder.proj_4x",
)


class _KeepsFp32:
    """Mixin: floating-point parameters and buffers stay fp32 through `.to()`, `.half()` and state-dict loads.

    Device moves pass; a dtype conversion is undone (exactly: the fp32 original is moved instead).
    `keeps_fp32` lets `storage` leave such layers out of the weight-storage report and conversions.
    """

    keeps_fp32 = True

    def _apply(self, fn, recurse=True):
        """Let device moves through but keep floating-point tensors fp32 under any dtype conversion."""

        def keep_fp32(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if moved.is_floating_point() and moved.dtype != torch.float32:
                return t.to(device=moved.device, dtype=torch.float32)
            return moved

        return super()._apply(keep_fp32, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        """Load as usual, then restore fp32 (`load_state_dict(assign=True)` installs the given tensors)."""
        super()._load_from_state_dict(*args, **kwargs)
        self.float()


class Fp32Conv3d(_KeepsFp32, nn.Conv3d):
    """A Conv3d whose parameters stay fp32 and that computes in fp32 whatever the input dtype.

    `apply_conv_fp32` turns an existing `nn.Conv3d` into this class in place (same parameters, hooks
    and state-dict keys).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve in fp32 on the weights' device; return the result in the input's dtype."""
        x = input.to(device=self.weight.device, dtype=torch.float32).contiguous()
        return self._conv_forward(x, self.weight, self.bias).to(input.dtype)


class Fp32Linear(_KeepsFp32, nn.Linear):
    """A Linear with fp32 parameters that computes in fp32 and returns fp32 (part of the fp32 output head)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input.float(), self.weight, self.bias)


class Fp32AdaNorm(_KeepsFp32, AdaLayerNormContinuous):
    """The transformer's `norm_out` in fp32: input and conditioning cast to fp32, fp32 result."""

    def forward(self, x: torch.Tensor, conditioning_embedding: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float(), conditioning_embedding.float())


def _patch_embed_convs(transformer: nn.Module) -> dict[str, nn.Conv3d]:
    """The patch-embed Conv3d modules the transformer has, by name; InputError if it has none."""
    found = {}
    for name in PATCH_EMBED_CONVS:
        try:
            module = transformer.get_submodule(name)
        except AttributeError:
            continue  # e.g. clean_x_embedder is None in models built without it
        if not isinstance(module, nn.Conv3d):
            raise InputError(f"{name} is a {type(module).__name__}, not a Conv3d; cannot run it in fp32")
        found[name] = module
    if not found:
        raise InputError(f"{type(transformer).__name__} has none of the FramePack patch-embed Conv3d layers "
                         f"({', '.join(PATCH_EMBED_CONVS)})")
    return found


def apply_conv_fp32(transformer: nn.Module) -> list[str]:
    """Make the transformer's patch-embed Conv3d layers run in fp32; return the names changed.

    Idempotent: layers already converted are left alone (a second call returns []). Also lists the
    layers in the model's `_keep_in_fp32_modules`, so diffusers' `transformer.dtype` keeps reporting
    the dtype of the rest of the model.
    """
    changed = []
    for name, module in _patch_embed_convs(transformer).items():
        if isinstance(module, Fp32Conv3d):
            continue
        if type(module) not in (nn.Conv3d, CastConv3d):
            raise InputError(f"{name} is a {type(module).__name__} (a Conv3d subclass); only a plain "
                             "torch.nn.Conv3d (or goan's CastConv3d) can be switched to fp32")
        module.__class__ = Fp32Conv3d
        module.float()
        changed.append(name)
    keep = list(getattr(transformer, "_keep_in_fp32_modules", None) or [])
    transformer._keep_in_fp32_modules = keep + [n for n in PATCH_EMBED_CONVS if n not in keep]
    return changed


def conv_fp32_applied(transformer: nn.Module) -> bool:
    """Whether every patch-embed Conv3d layer of the transformer runs in fp32."""
    return all(isinstance(m, Fp32Conv3d) for m in _patch_embed_convs(transformer).values())


def _output_head(transformer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer's (norm_out, proj_out); InputError when it has no FramePack output head."""
    norm, proj = getattr(transformer, "norm_out", None), getattr(transformer, "proj_out", None)
    if not isinstance(norm, AdaLayerNormContinuous) or not isinstance(proj, nn.Linear):
        raise InputError(f"{type(transformer).__name__} has no FramePack output head (norm_out, proj_out); "
                         "cannot run it in fp32")
    return norm, proj


def _to_fp32_linear(module: nn.Module, name: str) -> None:
    if type(module) not in (nn.Linear, CastLinear):
        raise InputError(f"{name} is a {type(module).__name__}; only a plain torch.nn.Linear (or goan's "
                         "CastLinear) can be switched to fp32")
    module.__class__ = Fp32Linear
    module.float()  # an fp8 or bf16 weight upcasts exactly


def apply_fp32_output(transformer: nn.Module) -> list[str]:
    """FramePack's high_quality_fp32_output_for_inference: the output head in fp32; return the names changed.

    `norm_out` (its `linear` included) and `proj_out` keep fp32 weights and compute in fp32, so the
    model returns fp32. Idempotent (a second call returns []). Works on fp8-stored (CastLinear) layers.
    """
    norm, proj = _output_head(transformer)
    changed = []
    if not isinstance(norm, Fp32AdaNorm):
        if type(norm) is not AdaLayerNormContinuous:
            raise InputError(f"norm_out is a {type(norm).__name__}, not diffusers' AdaLayerNormContinuous; "
                             "cannot run it in fp32")
        _to_fp32_linear(norm.linear, "norm_out.linear")
        norm.__class__ = Fp32AdaNorm
        norm.float()
        changed.append("norm_out")
    if not isinstance(proj, Fp32Linear):
        _to_fp32_linear(proj, "proj_out")
        changed.append("proj_out")
    return changed


def fp32_output_applied(transformer: nn.Module) -> bool:
    """Whether the transformer's output head runs in fp32 (False for a model without one)."""
    return (isinstance(getattr(transformer, "norm_out", None), Fp32AdaNorm)
            and isinstance(getattr(transformer, "proj_out", None), Fp32Linear))


def _describe(device: torch.device) -> str:
    """A human name for a device, with model and compute capability for CUDA devices."""
    if device.type != "cuda":
        return f"{device.type} device"
    major, minor = torch.cuda.get_device_capability(device)
    return (f"CUDA device {device.index} ({torch.cuda.get_device_name(device)}, "
            f"compute capability {major}.{minor})")


def _probe_bf16_conv3d(device: torch.device) -> str | None:
    """Run a 1x1x1 bf16 Conv3d on the device; return the error text if it has no kernel, else None."""
    x = torch.zeros(1, 1, 1, 1, 1, device=device, dtype=torch.bfloat16)
    try:
        F.conv3d(x, torch.zeros_like(x))
    except (NotImplementedError, RuntimeError) as exc:
        if "slow_conv3d" not in str(exc):
            raise
        return str(exc).splitlines()[0]
    return None


def bf16_conv3d_missing(device: torch.device | str) -> str | None:
    """Why `device` has no bf16 Conv3d kernel (one human line), or None when it has one.

    NVIDIA CUDA: compute capability below 8.0. Any other device, the CPU included: a 1x1x1 bf16
    Conv3d probe fails for lack of a kernel. None for a CUDA device when CUDA is not available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if torch.version.hip is None:
            return f"{_describe(device)} has no bf16 Conv3d" if torch.cuda.get_device_capability(device) < (8, 0) else None
    failure = _probe_bf16_conv3d(device)
    return None if failure is None else f"{_describe(device)} has no bf16 Conv3d (probe: {failure})"


def conv_fp32_needed(policy: str, device: torch.device | str, dtype: torch.dtype) -> tuple[bool, str]:
    """Resolve a conv-fp32 policy for a device and model dtype: (apply?, human reason).

    auto: apply for bf16 on NVIDIA CUDA devices below compute capability 8.0; on other non-CPU
    devices (ROCm, MPS, XPU, ...) apply for bf16 when a tiny bf16 Conv3d probe fails for lack of a
    kernel; never on CPU. force: always. off: never.
    """
    if policy not in CONV_FP32_POLICIES:
        raise InputError(f"conv_fp32 policy {policy!r} is not one of {', '.join(CONV_FP32_POLICIES)}")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device} was requested but CUDA is not available to PyTorch")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    if policy == "off":
        return False, "conv_fp32 policy is 'off'"
    if policy == "force":
        return True, f"conv_fp32 policy 'force' for {_describe(device)}"
    if dtype != torch.bfloat16:
        return False, f"model dtype {str(dtype).removeprefix('torch.')} needs no Conv3d fallback"
    if device.type == "cpu":
        return False, "the CPU runs bf16 Conv3d"
    if device.type == "cuda" and torch.version.hip is None:
        if torch.cuda.get_device_capability(device) < (8, 0):
            return True, f"{_describe(device)} has no bf16 Conv3d"
        return False, f"{_describe(device)} runs bf16 Conv3d"
    failure = _probe_bf16_conv3d(device)
    if failure is not None:
        return True, f"{_describe(device)} has no bf16 Conv3d (probe: {failure})"
    return False, f"{_describe(device)} runs bf16 Conv3d (probe passed)"


def configure_precision(transformer: nn.Module, policy: str, device: torch.device | str, dtype: torch.dtype,
                        log: logging.Logger = logging.getLogger("goan")) -> bool:
    """Resolve the conv-fp32 policy, apply it, log one line when the fallback is on; return whether it is.

    The result is the state of the model afterwards (a model converted earlier stays converted), which
    is what the engine records as "conv_fp32" in the resume file's job info.
    """
    needed, reason = conv_fp32_needed(policy, device, dtype)
    if needed:
        apply_conv_fp32(transformer)
        count = len(_patch_embed_convs(transformer))
        log.info("goan: %s; running the %d patch-embed Conv3d layers in fp32 (the rest stays %s)",
                 reason, count, str(dtype).removeprefix("torch."))
    else:
        log.debug("goan: patch-embed Conv3d layers keep the model dtype: %s", reason)
    return conv_fp32_applied(transformer)
