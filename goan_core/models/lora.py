"""LoRAs on the transformer: the loaded form (`Lora`) and applying them per layer at compute time.

How a LoRA is applied, and why. Each LoRA'd Linear layer computes

    y = linear(x) + sum over its LoRA terms of  strength * scale * up @ (down @ x)

in a forward hook, for the time of a run (`loras_applied`), in a fixed order (by sha256, then
strength: the order LoRAs were chained in does not matter, so the same set always gives the same
bits). The base weights are never touched: a `Transformer` handle that carries LoRAs shares its
model with the handle it came from (ComfyUI and the CLI cache that model), and when the run ends the
hooks and LoRA tensors are gone. A strength of 0 installs nothing, so it is exactly no LoRA.

The other way, merging `W + s * up @ down` into a compute-dtype copy of the touched layers, was
rejected: a LoRA touches nearly every block's Linear layers, so the copy is nearly the whole model
in bf16 (about 24 GB for FramePack's 12.9 B parameters, where the fp8 file is 13 GB), it would be
redone for every strength change, and an fp8 model would lose its fp8 storage where it matters.
Per-layer application costs only the LoRA's own tensors and two small matmuls per layer: measured
by bench/lora.py for a rank-32 bf16 LoRA of every block Linear of the real model (a 236 MB file),
286 MB of host memory against 18.1 GB for the merged bf16 copy, and 1.5 % more multiply-adds.

How it works with the rest of the memory machinery:
- fp8 storage (`storage.CastLinear`): the hook adds to whatever the layer returns; the base weight
  is cast per call as before and the LoRA tensors are kept in the compute dtype.
- block swapping (`offload.placed`): each layer's LoRA tensors are buffers of a small child module
  (`goan_lora`) installed before the model is placed, so the swapper counts them in a block's bytes,
  keeps them resident with a resident block and streams them with a streamed one. The LoRA must
  therefore be applied OUTSIDE `placed` (`run_job` does so); a tensor found elsewhere than the input is
  moved for the call (TeaCache's probe of a streamed block's first norm does that).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..params import LoraUse

CHILD = "goan_lora"  # the child module holding one layer's LoRA tensors while LoRAs are applied


@dataclass(frozen=True)
class LoraTerm:
    """One low-rank delta of one Linear layer: `scale * up @ down` (scale: the file's alpha / rank)."""

    down: torch.Tensor  # [rank, in_features]
    up: torch.Tensor  # [out_features, rank]
    scale: float


@dataclass(frozen=True, eq=False)
class Lora:
    """A LoRA file read for one transformer: its file name, sha256, format and terms by layer name.

    `model_config` is the config hash of the transformer it was read for (`identity.model_identity`):
    its layer names and shapes were checked against that model only.
    """

    name: str
    sha256: str
    format: str
    terms: Mapping[str, tuple[LoraTerm, ...]] = field(repr=False)
    model_config: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes its tensors take (each `down` and `up` once)."""
        return sum(t.down.numel() * t.down.element_size() + t.up.numel() * t.up.element_size()
                   for terms in self.terms.values() for t in terms)

    def use(self, strength: float) -> LoraUse:
        return LoraUse(self.name, self.sha256, strength)


class LoraDelta(nn.Module):
    """The LoRA terms of one Linear layer, as buffers, and their summed delta for an input."""

    def __init__(self, terms: Sequence[tuple[LoraTerm, float]]):
        super().__init__()
        self.factors = []
        for index, (term, strength) in enumerate(terms):
            self.register_buffer(f"down{index}", term.down, persistent=False)
            self.register_buffer(f"up{index}", term.up, persistent=False)
            self.factors.append(strength * term.scale)

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = x.to(dtype)
        total = None
        for index, factor in enumerate(self.factors):
            down = getattr(self, f"down{index}").to(device=x.device, dtype=dtype)
            up = getattr(self, f"up{index}").to(device=x.device, dtype=dtype)
            delta = F.linear(F.linear(x, down), up) * factor
            total = delta if total is None else total + delta
        return total


def _add_delta(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a LoRA'd Linear: its output plus the LoRA delta, computed in the output's dtype."""
    return output + getattr(module, CHILD)(args[0], output.dtype)


def _in_order(loras: Sequence[tuple[Lora, float]]) -> list[tuple[Lora, float]]:
    """The LoRAs that change anything (strength != 0), in the order they are applied (see the docstring)."""
    return sorted(((lora, float(s)) for lora, s in loras if s != 0), key=lambda p: (p[0].sha256, p[1], p[0].name))


_APPLIED: dict[int, tuple] = {}  # id(model) -> what is applied to it now (nested loras_applied reuse it)


@contextmanager
def loras_applied(model: nn.Module, loras: Sequence[tuple[Lora, float]]) -> Iterator[None]:
    """Apply (LoRA, strength) pairs to `model` for the time of a `with` block; nothing of them stays afterwards.

    Nested use with the same LoRAs applies them once; a different set while one is applied is an
    InputError (one model cannot run two LoRA sets at once).
    """
    active = _in_order(loras)
    key = tuple((id(lora), strength) for lora, strength in active)
    if id(model) in _APPLIED:
        if _APPLIED[id(model)] != key:
            raise InputError("this transformer is running with other LoRAs right now; run one job at a time per "
                             "loaded transformer")
        yield
        return
    if not active:
        yield
        return
    by_layer: dict[str, list[tuple[LoraTerm, float]]] = {}
    for lora, strength in active:
        for name, terms in lora.terms.items():
            by_layer.setdefault(name, []).extend((term, strength) for term in terms)
    modules = dict(model.named_modules())
    installed, hooks = [], []
    _APPLIED[id(model)] = key
    try:
        for name, terms in by_layer.items():
            layer = modules[name]
            if hasattr(layer, CHILD):
                raise InputError(f"{name} already carries a LoRA: the transformer was left changed by another run")
            layer.add_module(CHILD, LoraDelta(terms))
            installed.append(layer)
            hooks.append(layer.register_forward_hook(_add_delta))
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for layer in installed:
            delattr(layer, CHILD)
        del _APPLIED[id(model)]
