"""Block swapping: placing a model on the compute device by a `SwapPlan`, streamed blocks copied in per pass.

The plan (which blocks stay resident, which stream, under FramePack's `gpu_memory_preservation`) is
`swap_plan.plan_swap`'s; its names are re-exported here. In short: the weight budget is free device
bytes minus the preservation, the activations live in the preserved memory (only an estimate beyond
it is taken out of the budget), and when even one streamed block does not fit goan streams every block
through one slot and warns, failing only when the device cannot hold that at all.

`placed(...)` applies a plan for the time of a `with` block and puts every weight back as it was
(on the CPU) afterwards, exceptions included. Streamed blocks keep their weights in host memory
(pinned on CUDA: each weight is replaced by its pinned copy, which stays for the next run, so host
RAM holds one copy) and get forward hooks: before block k runs its weights are waited for (or copied
now, if not prefetched) and block k+1 starts copying on a side CUDA stream (synchronised with an
event; `record_stream` keeps the allocator from reusing the copy early); after block k its device
copy is dropped. The model's own pre-hook prefetches the first streamed block while the embedders run.

Every transfer goes through an `Accelerator`, which keeps a ledger of the weight bytes it holds
(`resident_bytes`, `peak_bytes`). `CountingAccelerator` is a fake one for CPU tests and benches: its
"device" copies are CPU clones and its free memory is what it is told, so the whole swap sequence
(same hooks, same prefetch order) runs with real math on the CPU while the ledger proves that the
plan's peak weight bytes are what is held.

Why not diffusers' group offloading (`apply_group_offloading`, block_level, use_stream=True):
it offloads EVERY block of every ModuleList child plus an "unmatched" group of all other top-level
modules, so no resident subset can be kept (FramePack and kijai keep as many blocks resident as fit);
its stream path requires a CUDA/XPU stream, so its accounting cannot be exercised on the CPU; and it
keeps the offload hooks installed on the model (goan's handles are shared between runs with different
budgets). The hooks here are ~100 lines and do the same prefetch-on-a-side-stream scheme.

Other models share the planner and hooks: `containers` names a model's block lists (dotted paths, in execution
order) and `what` the model in errors; `encoder_offload` has the encoders' lists and the VAE's tiling.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .devices import is_on
from .swap_plan import (ACTIVATION_FACTOR, BLOCK_LISTS, CONTEXT_TOKENS, DEFAULT_GPU_MEMORY_PRESERVATION, GIB,
                        SwapPlan, activation_reserve, plan_swap, section_tokens, swap_blocks, transformer_blocks)

__all__ = ["ACTIVATION_FACTOR", "BLOCK_LISTS", "CONTEXT_TOKENS", "DEFAULT_GPU_MEMORY_PRESERVATION", "GIB", "SwapPlan",
           "activation_reserve", "plan_swap", "section_tokens", "swap_blocks", "transformer_blocks", "Accelerator",
           "CountingAccelerator", "Placement", "placed"]


# -- the device as the swapper sees it ---------------------------------------------------------------


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Accelerator:
    """The compute device: copies weights there (on a side stream on CUDA) and keeps a ledger of the bytes held."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.resident_bytes = 0  # weight bytes held on the device now
        self.peak_bytes = 0  # the most held at once
        self.uploaded_bytes = 0  # copied there in all
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None

    def free_bytes(self) -> int | None:
        """Free bytes on the device now; None where it cannot be asked (then nothing is swapped)."""
        return int(torch.cuda.mem_get_info(self.device)[0]) if self.cuda else None

    def host(self, tensor: torch.Tensor) -> torch.Tensor:
        """Where a streamed weight waits between uses: pinned host memory on CUDA (async copies need it)."""
        return tensor.pin_memory() if self.cuda and not tensor.is_pinned() else tensor

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=self.cuda)

    def upload(self, tensors: list[torch.Tensor], background: bool = False):
        """Device copies of `tensors` and the event that marks them ready (None: ready now)."""
        self.resident_bytes += _nbytes(tensors)
        self.uploaded_bytes += _nbytes(tensors)
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)
        if not self.cuda:
            return [self._copy(t) for t in tensors], None
        stream = self._stream if background else torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            copies = [self._copy(t) for t in tensors]
            event = torch.cuda.Event()
            event.record(stream)
        return copies, event

    def ready(self, copies: list[torch.Tensor], event) -> None:
        """Make the compute stream wait for `copies` and mark them used by it (so they are not freed early)."""
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for tensor in copies:
                tensor.record_stream(compute)

    def release(self, copies: list[torch.Tensor]) -> None:
        """Forget device copies (the caller drops its references)."""
        self.resident_bytes -= _nbytes(copies)


class CountingAccelerator(Accelerator):
    """A fake accelerator on the CPU (tests, benches): copies are CPU clones; free memory is as given."""

    def __init__(self, free_bytes: int):
        super().__init__("cpu")
        self._free = int(free_bytes)

    def free_bytes(self) -> int:
        return self._free

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.clone()


# -- placing a model by a plan -----------------------------------------------------------------------


def _slots_of(module: nn.Module, skip: set[int] = frozenset()) -> list[tuple[nn.Module, str, str]]:
    """(owner, "param"|"buffer", name) of every tensor under `module`, owners in `skip` (by id) left out."""
    slots = []
    for owner in module.modules():
        if id(owner) in skip:
            continue
        slots += [(owner, "param", n) for n, t in owner._parameters.items() if t is not None]
        slots += [(owner, "buffer", n) for n, t in owner._buffers.items() if t is not None]
    return slots


def _get(slot) -> torch.Tensor:
    owner, kind, name = slot
    return owner._parameters[name].data if kind == "param" else owner._buffers[name]


def _put(slot, tensor: torch.Tensor) -> None:
    owner, kind, name = slot
    if kind == "param":
        owner._parameters[name].data = tensor
    else:
        owner._buffers[name] = tensor


class Placement:
    """A model placed by a SwapPlan on an Accelerator; `restore()` puts every original tensor back."""

    def __init__(self, model: nn.Module, plan: SwapPlan, accelerator: Accelerator):
        self.model, self.plan, self.accelerator = model, plan, accelerator
        named = dict(swap_blocks(model, plan.containers))
        streamed = [named[name] for name in plan.streamed]
        skip = {id(m) for block in streamed for m in block.modules()}
        self._resident = _slots_of(model, skip)
        self._streamed = [_slots_of(block) for block in streamed]
        self._originals = {id(slot): _get(slot) for slot in self._resident}
        self._originals.update({id(slot): _get(slot) for slots in self._streamed for slot in slots})
        self._live: dict[int, tuple[list[torch.Tensor], object]] = {}  # streamed index -> (copies, event)
        self._handles = []
        self._placed = False

    def place(self) -> "Placement":
        copies, event = self.accelerator.upload([_get(s) for s in self._resident])
        self.accelerator.ready(copies, event)
        self._resident_copies = copies
        self._placed = True  # from here on restore() has something to undo
        for slot, copy in zip(self._resident, copies):
            _put(slot, copy)
        for slots in self._streamed:  # pinned once, one tensor at a time, and kept pinned (no second copy)
            for slot in slots:
                self._originals[id(slot)] = self.accelerator.host(self._originals[id(slot)])
                _put(slot, self._originals[id(slot)])
        if self._streamed:
            named = dict(swap_blocks(self.model, self.plan.containers))
            self._handles.append(self.model.register_forward_pre_hook(self._before_model))
            for index, name in enumerate(self.plan.streamed):
                block = named[name]
                self._handles.append(block.register_forward_pre_hook(self._before_block(index)))
                self._handles.append(block.register_forward_hook(self._after_block(index)))
        return self

    def _fetch(self, index: int, background: bool) -> None:
        if index < len(self._streamed) and index not in self._live:
            hosts = [self._originals[id(slot)] for slot in self._streamed[index]]
            self._live[index] = self.accelerator.upload(hosts, background)

    def _drop(self, index: int) -> None:
        copies, _ = self._live.pop(index)
        for slot in self._streamed[index]:
            _put(slot, self._originals[id(slot)])
        self.accelerator.release(copies)

    def _before_model(self, module, args):
        for index in list(self._live):  # left over from a forward pass that raised
            self._drop(index)
        if self.plan.prefetch:
            self._fetch(0, background=True)

    def _before_block(self, index: int):
        def hook(module, args):
            self._fetch(index, background=False)
            copies, event = self._live[index]
            self.accelerator.ready(copies, event)
            for slot, copy in zip(self._streamed[index], copies):
                _put(slot, copy)
            if self.plan.prefetch:
                self._fetch(index + 1, background=True)
        return hook

    def _after_block(self, index: int):
        def hook(module, args, output):
            self._drop(index)
        return hook

    def restore(self) -> None:
        """Remove the hooks, drop every device copy and put the original (CPU) tensors back; idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if not self._placed:
            return
        for index in list(self._live):
            self.accelerator.release(self._live.pop(index)[0])
        for slot in self._resident + [s for slots in self._streamed for s in slots]:
            _put(slot, self._originals[id(slot)])
        self.accelerator.release(self._resident_copies)
        self._resident_copies = []
        self._placed = False


_ACTIVE: dict[int, Placement] = {}  # id(model) -> the placement holding it now (nested `placed` reuses it)


@contextmanager
def placed(model: nn.Module, device: torch.device | str,
           gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION, *,
           compute_dtype: torch.dtype = torch.float32, tokens: int = 0,
           accelerator: Accelerator | None = None, containers: tuple[str, ...] = BLOCK_LISTS,
           what: str = "the transformer", activation_factor: int = ACTIVATION_FACTOR
           ) -> Iterator[Placement | None]:
    """Run a block with `model` placed for `device` under the budget; everything back on the CPU afterwards.

    On a CPU device (and no fake `accelerator`) nothing moves, as does a model already on the device;
    a model placed by an enclosing `placed` stays as it is (that Placement is yielded again). Yields the
    Placement (its plan and accelerator ledger), or None when nothing moved.
    """
    target = torch.device(device)
    if id(model) in _ACTIVE:
        yield _ACTIVE[id(model)]
        return
    if accelerator is None and (target.type == "cpu" or is_on(model, target)):
        yield None
        return
    accelerator = accelerator or Accelerator(target)
    plan = plan_swap(model, accelerator.free_bytes(), gpu_memory_preservation, compute_dtype=compute_dtype,
                     tokens=tokens, containers=containers, what=what, activation_factor=activation_factor)
    placement = Placement(model, plan, accelerator)
    _ACTIVE[id(model)] = placement
    try:
        yield placement.place()
    finally:
        del _ACTIVE[id(model)]
        placement.restore()
