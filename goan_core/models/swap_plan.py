"""The swap planner: which transformer (or encoder) blocks stay on the compute device and which stream in.

FramePack's `gpu_memory_preservation` (GB, default 6) is the memory kept FREE on the compute device
when the weights are loaded, so that inference has it: the activations live in that preserved memory
(`move_model_to_device_with_memory_preservation` loads weights while free memory exceeds it, DynamicSwap
streams the rest). goan reads it the same way. The WEIGHT budget is

    budget = free device bytes (torch.cuda.mem_get_info, before placing) - gpu_memory_preservation GiB

and the activation reserve (`activation_reserve`, an estimate) is taken out of the budget only for the
part the preservation does not cover: max(0, reserve - preservation). Then the plan keeps

    peak weight bytes + max(preservation, reserve) <= free                       (`SwapPlan.device_bytes`)

`plan_swap` spends the weight budget (bytes of parameters + buffers in their STORED dtype, so an fp8
weight counts one byte; `storage.storage_bytes`) in this order:
1. the non-block modules (embedders, refiner, norm_out, proj_out): always resident;
2. the reserve's part over the preservation (a warning says so when there is one: the estimate is
   ACTIVATION_FACTOR hidden-state sized tensors of the section's tokens in the compute dtype -- hidden
   and text streams, norm output, q, k, v, attention output, the MLP's 4x hidden: about 12 alive at
   once with SDPA attention -- plus the one transient compute-dtype copy of the largest matmul weight
   that per-layer casting (fp8 storage) makes);
3. when blocks must stream: two streaming slots of the largest blocks (the block computing and the
   next one being prefetched), or, when only one fits, one slot and no prefetch (synchronous copies);
4. then the blocks, in execution order, each kept resident when it still fits; the rest stream. When
   everything fits nothing streams.

When the budget cannot hold the non-block modules and one streamed block, goan does the least it can
(every block streams through one slot, no prefetch: weights = non-block modules + the largest block)
as long as the device has room for that at all (free >= that), and warns that it keeps less than the
asked-for preservation free (`SwapPlan.fallback`). Only when even that does not fit is it an InputError
naming gpu_memory_preservation. On an 8 GB card with the default 6 GB this is what happens to
FramePack's transformer (as in FramePack, nearly everything streams); see bench/memory.py's table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError
from .storage import storage_bytes

log = logging.getLogger("goan")

GIB = 1024 ** 3
DEFAULT_GPU_MEMORY_PRESERVATION = 6.0  # FramePack's default
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")  # in execution order
ACTIVATION_FACTOR = 12  # hidden-state sized tensors alive at once (see the module docstring)
CONTEXT_TOKENS = 512 + 729  # prompt tokens (PROMPT_EMBED_LENGTH) + SigLIP image tokens


def swap_blocks(model: nn.Module, containers: tuple[str, ...] = BLOCK_LISTS) -> list[tuple[str, nn.Module]]:
    """The swappable blocks ("layers.0", ...) of the block lists named by `containers` (dotted paths; a
    missing one holds none, so one list may name alternatives), in the order the forward pass runs them."""
    blocks, seen = [], set()
    for list_name in containers:
        owner = model
        for part in list_name.split("."):
            owner = getattr(owner, part, None)
        for index, block in enumerate(owner or ()):
            if id(block) not in seen:  # one list reachable under two names counts once
                seen.add(id(block))
                blocks.append((f"{list_name}.{index}", block))
    return blocks


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer's swappable blocks ("transformer_blocks.0", ...) in execution order."""
    return swap_blocks(model, BLOCK_LISTS)


def section_tokens(plan, patch_size: int = 2) -> int:
    """Tokens one forward pass sees, generously: twice the noisy latent's (the clean and compressed
    history latents add about 0.3x at lws 9) plus the prompt and image tokens. `plan` is a SectionPlan."""
    noise = plan.lws * (plan.latent_height // patch_size) * (plan.latent_width // patch_size)
    return 2 * noise + CONTEXT_TOKENS


def activation_reserve(model: nn.Module, compute_dtype: torch.dtype, tokens: int = 0,
                       factor: int = ACTIVATION_FACTOR) -> int:
    """Bytes kept for activations (`factor` x tokens x inner dim: heads x head dim, or the config's
    hidden_size) and the largest per-layer weight cast."""
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    cast = max((m.weight.numel() * itemsize for m in model.modules()
                if isinstance(m, (nn.Linear, nn.Conv3d)) and m.weight.dtype != compute_dtype), default=0)
    config = getattr(model, "config", None)
    inner = int(getattr(config, "num_attention_heads", 0) * getattr(config, "attention_head_dim", 0))
    inner = inner or int(getattr(config, "hidden_size", 0) or 0)
    return cast + int(factor) * int(tokens) * inner * itemsize


@dataclass(frozen=True)
class SwapPlan:
    """Which blocks stay resident and which stream, and the bytes behind that choice (budget None: unlimited).

    `budget` is the weight budget, free - preservation; `fallback` marks the least-goan-can-do plan
    (every block streamed through one slot) placed although it keeps less than the preservation free.
    """

    budget: int | None
    fixed_bytes: int  # non-block modules, always resident
    reserve_bytes: int  # the activation estimate (lives in the preserved memory as far as that reaches)
    block_bytes: dict = field(default_factory=dict)  # block name -> bytes, in execution order
    resident: tuple[str, ...] = ()
    streamed: tuple[str, ...] = ()
    prefetch: bool = True  # copy the next streamed block while the current one computes
    containers: tuple[str, ...] = BLOCK_LISTS  # the model's block lists (see `swap_blocks`)
    preservation_bytes: int = 0  # gpu_memory_preservation in bytes
    fallback: bool = False

    @property
    def slot_bytes(self) -> int:
        """Device bytes the streamed blocks take at once: the computing one (and the prefetched one)."""
        sizes = sorted((self.block_bytes[name] for name in self.streamed), reverse=True)
        return sum(sizes[:2 if self.prefetch else 1])

    @property
    def peak_weight_bytes(self) -> int:
        """The most weight bytes on the device at any moment of a run under this plan."""
        return self.fixed_bytes + sum(self.block_bytes[name] for name in self.resident) + self.slot_bytes

    @property
    def weight_budget(self) -> int | None:
        """The most weight bytes a (non-fallback) plan places: the budget less the reserve's part over the
        preservation (None: unlimited)."""
        if self.budget is None:
            return None
        return self.budget - max(0, self.reserve_bytes - self.preservation_bytes)

    @property
    def free_bytes(self) -> int | None:
        """The free device bytes the plan was made for (None: unknown)."""
        return None if self.budget is None else self.budget + self.preservation_bytes

    def device_bytes(self, activation_bytes: int = 0) -> int:
        """Device bytes a run under this plan needs free: its peak weights plus the memory its activations
        use, the preservation or the reserve (+ `activation_bytes` more) when that is larger. What goan asks
        the host (ComfyUI) to free before placing; <= free_bytes unless the plan is a fallback."""
        return self.peak_weight_bytes + max(self.preservation_bytes, self.reserve_bytes + int(activation_bytes))


def _gb(size: int) -> str:
    return f"{size / GIB:.2f} GB"


def plan_swap(model: nn.Module, free_bytes: int | None,
              gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION, *,
              compute_dtype: torch.dtype = torch.float32, tokens: int = 0,
              containers: tuple[str, ...] = BLOCK_LISTS, what: str = "the transformer",
              activation_factor: int = ACTIVATION_FACTOR, warn: bool = True) -> SwapPlan:
    """The blocks to keep resident for a device with `free_bytes` free (None: unknown, keep all resident).

    `containers`: the model's block lists; `what` names it in errors and warnings; `activation_factor`
    sizes the reserve; `warn` False plans silently (a caller that plans ahead of the runner's own plan).
    """
    if gpu_memory_preservation < 0:
        raise InputError(f"gpu_memory_preservation must be >= 0 GB, not {gpu_memory_preservation}")
    blocks = {name: storage_bytes(block) for name, block in swap_blocks(model, containers)}
    fixed = storage_bytes(model) - sum(blocks.values())
    reserve = activation_reserve(model, compute_dtype, tokens, activation_factor)
    preserve = int(gpu_memory_preservation * GIB)
    common = dict(containers=tuple(containers), preservation_bytes=preserve)
    if free_bytes is None:
        return SwapPlan(None, fixed, reserve, blocks, tuple(blocks), **common)
    budget = int(free_bytes) - preserve
    uncovered = max(0, reserve - preserve)  # the activations' part the preserved memory does not hold
    if uncovered and warn:
        log.warning("goan: %s's activations are estimated at %s, more than the %g GB of gpu_memory_preservation "
                    "(the %s over it come out of the weight budget); raise gpu_memory_preservation if you get "
                    "out-of-memory errors", what, _gb(reserve), gpu_memory_preservation, _gb(uncovered))
    available = budget - fixed - uncovered
    if available >= sum(blocks.values()):
        return SwapPlan(budget, fixed, reserve, blocks, tuple(blocks), **common)
    largest = sorted(blocks.values(), reverse=True)
    prefetch = available >= sum(largest[:2])
    slots = sum(largest[:2 if prefetch else 1])
    if available < slots:  # the least goan can do: every block through one slot, if the device holds that
        least = fixed + sum(largest[:1])
        if free_bytes < least:
            raise InputError(
                f"gpu_memory_preservation {gpu_memory_preservation:g} GB cannot be kept, and even without it "
                f"{what} does not fit: the compute device has {_gb(free_bytes)} free and {what} needs at least "
                f"{_gb(least)} there (its non-block modules {_gb(fixed)}, one streamed block "
                f"{_gb(sum(largest[:1]))}) plus room for its activations: free memory on the device")
        if warn:
            log.warning("goan: gpu_memory_preservation %g GB leaves %s of the %s free for %s's weights, which "
                        "need at least %s; streaming every block through one slot, so goan keeps only %s free, "
                        "less than the asked-for %g GB (free memory on the device if you get out-of-memory "
                        "errors)", gpu_memory_preservation, _gb(max(budget - uncovered, 0)), _gb(free_bytes),
                        what, _gb(least), _gb(free_bytes - least), gpu_memory_preservation)
        return SwapPlan(budget, fixed, reserve, blocks, (), tuple(blocks), False, fallback=True, **common)
    resident, used = [], 0
    for name, size in blocks.items():
        if used + size <= available - slots:
            resident.append(name)
            used += size
    streamed = tuple(name for name in blocks if name not in resident)
    return SwapPlan(budget, fixed, reserve, blocks, tuple(resident), streamed, prefetch, **common)
