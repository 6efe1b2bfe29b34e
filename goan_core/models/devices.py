"""Which device and dtype a job computes on (from the names users type: "auto", "cuda:1", "bf16"), and moving models there."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import InputError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _available(device: torch.device) -> bool:
    """Whether this torch build and machine can run on `device` (index included)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return (device.index or 0) < count
    if device.type == "mps":
        return torch.backends.mps.is_available() and (device.index or 0) == 0
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return False
    return (device.index or 0) < backend.device_count()


def resolve_device(name: str | None) -> torch.device:
    """The torch.device for `name`; None or "auto" picks CUDA when present, else the CPU.

    Raises InputError when the name is not a device or the device is not available here.
    """
    if name is None or str(name).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name).strip().lower())
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if not _available(device):
        raise InputError(f"device {name!r} is not available on this machine: use auto or cpu")
    return device


def resolve_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """The compute dtype for `name`; None or "auto" is bfloat16 on CUDA and float32 elsewhere."""
    if name is None or str(name).strip().lower() in ("", "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise InputError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    return DTYPES[key]


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
