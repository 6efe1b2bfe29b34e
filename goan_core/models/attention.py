"""Which attention kernel the transformer's blocks use: the user's choice, checked against this machine.

The choices are "auto", "sdpa" (PyTorch's scaled_dot_product_attention, everywhere), "flash"
(flash-attn 3 on Hopper when installed, else flash-attn 2), "sage" (sageattention) and "xformers".
They are applied through diffusers' attention dispatcher, not by patching the model: in diffusers
0.42 every block of `HunyuanVideoFramepackTransformer3DModel` (its double- and single-stream blocks)
computes attention with `HunyuanVideoAttnProcessor2_0`, which calls `dispatch_attention_fn`, and
that uses the dispatcher's active backend when the processor has none of its own (goan never gives
it one). `attention_applied(model, choice)` makes the choice the active backend with diffusers'
`attention_backend` context manager for the time of a run and puts back what was active before, so
nothing leaks into the next job or into other diffusers models in the process. The token refiner's
two self-attention layers (over the prompt's tokens only, masked) use diffusers' `AttnProcessor2_0`,
which calls PyTorch's SDPA directly: they stay on SDPA whatever is chosen (a negligible share of the
work; their mask would not suit flash-attn anyway).

`choose_attention(requested, usable, target)` is the whole decision as a pure function of what
diffusers can use here (`usable_backends()`) and the device (`AttentionTarget`), so it is tested
on the CPU with made-up machines. "auto" prefers the exact kernels (flash-attn) over sageattention, which quantizes
Q and K to int8 (faster on some GPUs, slightly different results), then xformers, then SDPA.
An explicit choice that cannot run here is an InputError naming the package to install.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from ..errors import InputError
from .devices import dtype_name

log = logging.getLogger("goan")

ATTENTION_CHOICES = ("auto", "sdpa", "flash", "sage", "xformers")
SDPA_BACKEND = "native"  # diffusers' name for PyTorch's scaled_dot_product_attention
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Kernel:
    """One attention kernel as goan offers it: the user's word, diffusers' backend name, what it needs."""

    word: str
    backend: str
    package: str  # the package's name
    install: str  # how to get it
    min_capability: tuple[int, int]  # CUDA compute capability, lowest
    max_capability: tuple[int, int] | None = None  # highest (None: any newer)
    half_only: bool = True  # fp16/bf16 only

    def unsuitable(self, target: "AttentionTarget") -> str | None:
        """Why this kernel cannot run on `target`, or None when it can."""
        if target.device_type != "cuda" or target.capability is None:
            return f"{self.package} runs on NVIDIA GPUs only, not on {target.device_type}"
        low, high = self.min_capability, self.max_capability
        if target.capability < low or (high is not None and target.capability > high):
            wanted = f"{low[0]}.{low[1]}" + (" or newer" if high is None else
                                             " (Hopper)" if high == low else f" to {high[0]}.{high[1]}")
            have = f"{target.capability[0]}.{target.capability[1]}"
            return f"{self.package} needs compute capability {wanted}, this GPU has {have}"
        if self.half_only and target.dtype not in HALF:
            return (f"{self.package} computes in float16 or bfloat16 only, the transformer computes in "
                    f"{dtype_name(target.dtype)}")
        return None


# In the order "auto" tries them.
KERNELS = (
    Kernel("flash", "_flash_3", "flash-attn 3", "build the flash_attn_3 package from flash-attention's hopper/ folder",
           (9, 0), (9, 0)),
    Kernel("flash", "flash", "flash-attn", "pip install flash-attn --no-build-isolation (2.6.3 or newer)", (8, 0)),
    Kernel("sage", "sage", "sageattention", "build sageattention 2.1.1 or newer from github.com/thu-ml/SageAttention "
           "(PyPI has only 1.x)", (8, 0)),
    Kernel("xformers", "xformers", "xformers", "pip install xformers (0.0.29 or newer, built for your torch)",
           (5, 0), half_only=False),
)


@dataclass(frozen=True)
class AttentionTarget:
    """Where attention computes: device type, CUDA compute capability (None elsewhere), compute dtype."""

    device_type: str
    capability: tuple[int, int] | None
    dtype: torch.dtype

    @classmethod
    def of(cls, device: torch.device | str, dtype: torch.dtype) -> "AttentionTarget":
        device = torch.device(device)
        capability = tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
        return cls(device.type, capability, dtype)


@dataclass(frozen=True)
class AttentionChoice:
    """What a run uses: the user's word ("sdpa", "flash", ...), diffusers' backend name, and how "auto" decided."""

    word: str
    backend: str
    reason: str = ""  # for auto: why this one (logged once per run)

    def record(self) -> dict:
        """What a resume file notes about it (informational: another machine may choose another kernel)."""
        return {"attention": self.word, "attention_backend": self.backend}


SDPA = AttentionChoice("sdpa", SDPA_BACKEND)


def choose_attention(requested: str, usable: Iterable[str], target: AttentionTarget) -> AttentionChoice:
    """The attention a run uses for `requested` (one of ATTENTION_CHOICES).

    `usable` holds diffusers' backend names whose package imports here (`usable_backends()`).
    "sdpa" always works; "auto" takes the first kernel of KERNELS that suits the target and is
    usable, else SDPA with the reasons; any other word must run here or it is an InputError that
    says what to install, or why this device cannot run it.
    """
    word = str(requested).strip().lower()
    if word not in ATTENTION_CHOICES:
        raise InputError(f"unknown attention {requested!r}: use one of {', '.join(ATTENTION_CHOICES)}")
    if word == "sdpa":
        return SDPA
    usable = frozenset(usable)
    unfit, missing = [], []  # (kernel, why) of kernels the device cannot run; kernels it could, not installed
    for kernel in (k for k in KERNELS if word in ("auto", k.word)):
        problem = kernel.unsuitable(target)
        if problem is not None:
            unfit.append((kernel, problem))
        elif kernel.backend not in usable:
            missing.append(kernel)
        else:
            reason = f"auto: {kernel.package} is installed and suits this GPU" if word == "auto" else ""
            return AttentionChoice(kernel.word, kernel.backend, reason)
    if word == "auto":
        if target.device_type != "cuda":
            return AttentionChoice("sdpa", SDPA_BACKEND, f"auto: SDPA, the one kernel for {target.device_type}")
        reasons = [problem for _, problem in unfit] + [f"{k.package} is not installed" for k in missing]
        return AttentionChoice("sdpa", SDPA_BACKEND, f"auto fell back to SDPA: {'; '.join(reasons)}")
    if missing:
        kernel = missing[-1]
        raise InputError(f"attention {word!r}: {kernel.package} is not installed (or does not import) in this "
                         f"Python: {kernel.install}; or use attention auto or sdpa")
    raise InputError(f"attention {word!r} cannot run here: {unfit[-1][1]}; use attention auto or sdpa")


@functools.lru_cache(maxsize=None)
def usable_backends() -> frozenset[str]:
    """diffusers' backend names of KERNELS whose package diffusers found and could import in this process.

    Asks diffusers itself (entering its `attention_backend` context manager checks exactly that, and
    leaves the active backend as it was), so a flash-attn built for another torch counts as missing.
    """
    from diffusers import attention_backend

    usable = set()
    for kernel in KERNELS:
        try:
            with attention_backend(kernel.backend):
                usable.add(kernel.backend)
        except (RuntimeError, ValueError):  # diffusers: package missing, too old or not importable
            pass
    return frozenset(usable)


def attention_for(requested: str, device: torch.device | str, dtype: torch.dtype) -> AttentionChoice:
    """`choose_attention` for this machine: what diffusers can use here, on `device` computing in `dtype`."""
    return choose_attention(requested, usable_backends() if torch.device(device).type == "cuda" else (),
                  AttentionTarget.of(device, dtype))


def dispatched_processors(model) -> list:
    """The attention processors of `model` that go through diffusers' dispatcher (they have `_attention_backend`)."""
    return [module.processor for module in model.modules()
            if hasattr(getattr(module, "processor", None), "_attention_backend")]


@contextmanager
def attention_applied(model, choice: AttentionChoice) -> Iterator[AttentionChoice]:
    """Run a block with `choice` as diffusers' active attention backend; the previous one is back afterwards.

    A processor with a backend of its own (`model.set_attention_backend` was called on it) would
    ignore the active one, so that is refused rather than silently not applied.
    """
    from diffusers import attention_backend

    own = {getattr(p._attention_backend, "value", str(p._attention_backend))
           for p in dispatched_processors(model) if p._attention_backend is not None}
    if own:
        raise InputError(f"the transformer has a fixed attention backend ({', '.join(sorted(own))}) set with "
                         "set_attention_backend; goan chooses attention per run: call reset_attention_backend() "
                         "on it first")
    if choice.reason:
        log.info("goan: attention %s (%s)", choice.word, choice.reason)
    with attention_backend(choice.backend):
        yield choice
