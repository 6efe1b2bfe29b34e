"""Which device and dtypes a job computes on, from the names users type: "auto", "cuda:1", "bf16".

Each model role has its own compute dtype, as in FramePack: on CUDA the transformer computes in
bfloat16 and the VAE, text and image encoders in float16; elsewhere (CPU, MPS, ...) everything is
float32. `model_dtypes` resolves all four from the device and the user's choices, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .precision import bf16_conv3d_missing

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


ROLES = ("transformer", "vae", "text", "image")
CUDA_DEFAULTS = {"transformer": torch.bfloat16, "vae": torch.float16, "text": torch.float16, "image": torch.float16}


@dataclass(frozen=True)
class ModelDtypes:
    """The compute dtype of each model role; `of(role)` reads one, `names()` gives them as text."""

    transformer: torch.dtype = torch.float32
    vae: torch.dtype = torch.float32
    text: torch.dtype = torch.float32
    image: torch.dtype = torch.float32

    @classmethod
    def uniform(cls, dtype: torch.dtype) -> "ModelDtypes":
        """Every role in `dtype` (what a single dtype meant before roles had their own)."""
        return cls(dtype, dtype, dtype, dtype)

    def of(self, role: str) -> torch.dtype:
        if role not in ROLES:
            raise ValueError(f"unknown model role {role!r}: one of {', '.join(ROLES)}")
        return getattr(self, role)

    def names(self) -> dict[str, str]:
        """{"transformer": "bfloat16", "vae": "float16", ...}"""
        return {role: dtype_name(self.of(role)) for role in ROLES}


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: the name used in logs and resume files."""
    return str(dtype).removeprefix("torch.")


def role_dtype(role: str, device: torch.device | str, name: str | None = None) -> torch.dtype:
    """The compute dtype of one model role: `name`, or for None/"auto" the role's default on `device`.

    Defaults: on CUDA bfloat16 for the transformer and float16 for the VAE and the encoders (as in
    FramePack); float32 on every other device. A bfloat16 VAE is refused (InputError naming the fix)
    on a device without bfloat16 Conv3d kernels (CUDA below compute capability 8.0): the VAE is made
    of Conv3d layers, and float16 has kernels there.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}: one of {', '.join(ROLES)}")
    device = torch.device(device)
    if name is None or str(name).strip().lower() in ("", "auto"):
        return CUDA_DEFAULTS[role] if device.type == "cuda" else torch.float32
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise InputError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    dtype = DTYPES[key]
    if role == "vae" and dtype == torch.bfloat16:
        missing = bf16_conv3d_missing(device)
        if missing is not None:
            raise InputError(f"the VAE cannot compute in bfloat16 here: {missing}; choose float16 or auto "
                             "for the VAE (--vae-dtype on the command line, the goan VAE loader's dtype in "
                             "ComfyUI)")
    return dtype


def resolve_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """The transformer's compute dtype for `name`; None or "auto" is bfloat16 on CUDA and float32 elsewhere."""
    return role_dtype("transformer", device, name)


def model_dtypes(device: torch.device | str, *, transformer: str | None = None, vae: str | None = None,
                 encoder: str | None = None) -> ModelDtypes:
    """Every role's compute dtype on `device` from the user's choices (None or "auto": the role's default).

    `encoder` sets both the text encoders and the image encoder.
    """
    return ModelDtypes(role_dtype("transformer", device, transformer), role_dtype("vae", device, vae),
                       role_dtype("text", device, encoder), role_dtype("image", device, encoder))


def is_on(module: torch.nn.Module, device: torch.device | str) -> bool:
    """Whether the module's first parameter is on `device` (an index-less device matches any index)."""
    device = torch.device(device)
    first = next(module.parameters(), None)
    if first is None or first.device.type != device.type:
        return False
    return device.index is None or first.device.index == device.index


# cudaErrorMemoryAllocation: the CUDA runtime's code for a failed allocation, which torch reports as an
# AcceleratorError (torch >= 2.8) when it surfaces outside the caching allocator (inside a kernel, cuBLAS).
CUDA_ERROR_MEMORY_ALLOCATION = 2


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory: torch's OutOfMemoryError, or an AcceleratorError
    carrying CUDA's allocation-failure code or an "out of memory" message. Inside ComfyUI, its own
    classifier (`comfy.model_management.is_oom`) is asked first (see nodes/adapter.py)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is None or not isinstance(error, accelerator_error):
        return False
    return getattr(error, "error_code", None) == CUDA_ERROR_MEMORY_ALLOCATION or "out of memory" in str(error).lower()
