"""TeaCache as FramePack does it, with its whole state explicit so that it survives pause and resume.

FramePack (`initialize_teacache` and the transformer forward of `hunyuan_video_packed.py`) keeps, per
section, a call counter, an accumulated distance, the previous modulated input (the first block's
`norm1` of the hidden states with the timestep embedding) and the previous residual (output of the
block stack minus its input). Each call measures the relative L1 change of the modulated input,
rescales it with a fixed polynomial and adds it up; while the sum stays under the threshold the
block stack is skipped and the previous residual is added instead. The first and the last call of a
section (counter 0 and steps - 1) always compute and reset the sum; the cache starts afresh with
every section.

Here that state is a value (`PassCache`, one per guidance pass: goan never mixes the positive and
the negative pass of real CFG) held by `JobState.teacache`. The model's own forward runs unchanged;
only for the time of one call its block lists are replaced by a `_Stack` that decides to compute or
reuse (nothing of diffusers is patched, and the block modules, with any hooks on them, are called as
they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# FramePack's rescale polynomial (highest power first) for the relative L1 distance.
RESCALE = (7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02)
PASSES = ("positive", "negative")
MAX_WIDTH = 4096  # hidden width goan accepts for cached tensors (FramePack's transformer: 3072)


def rescale(distance: float) -> float:
    """The polynomial evaluated the way numpy's poly1d does (Horner from zero, float64)."""
    value = 0.0
    for coefficient in RESCALE:
        value = value * distance + coefficient
    return float(value)


def packed_tokens(plan) -> int:
    """Tokens of the block stack's hidden states for one section of `plan` (patch 2x2, history packed in front).

    The noisy latent and the two clean 1x frames at 2x2, the two 2x frames at (2,4,4) and the
    sixteen 4x frames at (4,8,8), each padded up to its kernel.
    """
    h, w = plan.latent_height, plan.latent_width

    def cells(frames, kt, kh):
        return -(-frames // kt) * -(-h // kh) * -(-w // kh)

    return cells(plan.lws, 1, 2) + cells(2, 1, 2) + cells(2, 2, 4) + cells(16, 4, 8)


@dataclass(frozen=True)
class PassCache:
    """One pass's cache after `count` calls of the current section (tensors in the model dtype).

    While a job runs the tensors stay on the compute device (a copy to the host per call would cost
    more than the skipped blocks save on a GPU); `on_host` moves them back when a run ends, and the
    resume file writer copies them to the CPU for a save.
    """

    count: int
    accumulated: float
    modulated: torch.Tensor | None
    residual: torch.Tensor | None

    def on_host(self) -> "PassCache":
        """The same cache with its tensors on the CPU."""
        def host(t):
            return None if t is None else t.cpu()
        return PassCache(self.count, self.accumulated, host(self.modulated), host(self.residual))


EMPTY = PassCache(0, 0.0, None, None)


def supports(transformer) -> bool:
    """Whether `transformer` has the block stack TeaCache works on (FramePack's, patch 2x2)."""
    blocks = getattr(transformer, "transformer_blocks", None)
    config = getattr(transformer, "config", None)
    return (isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and hasattr(blocks[0], "norm1")
            and isinstance(getattr(transformer, "single_transformer_blocks", None), nn.ModuleList)
            and getattr(config, "patch_size", None) == 2 and getattr(config, "patch_size_t", None) == 1
            and int(getattr(config, "num_attention_heads", 0) * getattr(config, "attention_head_dim", 0)) <= MAX_WIDTH)


def _modulated_input(block, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """`block.norm1(hidden, emb=temb)[0]`, with its weights brought to the device if they live elsewhere."""
    norm = block.norm1
    params = dict(norm.named_parameters())
    if all(p.device == hidden.device for p in params.values()):
        return norm(hidden, emb=temb)[0]
    moved = {name: p.to(hidden.device) for name, p in params.items()}
    return torch.func.functional_call(norm, moved, (hidden,), {"emb": temb})[0]


class _Stack(nn.Module):
    """Stands in for the whole block stack during one call: computes it, or reuses the cached residual."""

    def __init__(self, blocks, singles, cache: PassCache, steps: int, threshold: float):
        super().__init__()
        self.blocks, self.singles = list(blocks), list(singles)  # plain lists: not registered as children
        self.cache, self.steps, self.threshold = cache, steps, threshold
        self.skipped = False

    def forward(self, hidden, encoder_hidden, temb, attention_mask, rotary):
        cache = self.cache
        modulated = _modulated_input(self.blocks[0], hidden, temb)
        accumulated = cache.accumulated
        if cache.count == 0 or cache.count == self.steps - 1 or cache.residual is None:
            compute, accumulated = True, 0.0
        else:
            previous = cache.modulated.to(device=modulated.device, dtype=modulated.dtype)
            distance = ((modulated - previous).abs().mean() / previous.abs().mean()).cpu().item()
            accumulated = accumulated + rescale(distance)
            compute = accumulated >= self.threshold
            if compute:
                accumulated = 0.0
        residual = cache.residual
        if compute:
            start = hidden
            for block in self.blocks + self.singles:
                hidden, encoder_hidden = block(hidden, encoder_hidden, temb, attention_mask, rotary)
            residual = (hidden - start).detach()
        else:
            hidden = hidden + residual.to(device=hidden.device, dtype=hidden.dtype)
        count = (cache.count + 1) % self.steps
        self.cache = PassCache(count, float(accumulated), modulated.detach(), residual)
        self.skipped = not compute
        return hidden, encoder_hidden


def cached_call(transformer, cache: PassCache, steps: int, threshold: float, call):
    """Run `call()` (one forward of `transformer`) under TeaCache: (its result, the new cache, skipped?)."""
    stack = _Stack(transformer.transformer_blocks, transformer.single_transformer_blocks, cache, steps, threshold)
    modules = transformer._modules
    blocks, singles = modules["transformer_blocks"], modules["single_transformer_blocks"]
    modules["transformer_blocks"], modules["single_transformer_blocks"] = nn.ModuleList([stack]), nn.ModuleList()
    try:
        result = call()
    finally:
        modules["transformer_blocks"], modules["single_transformer_blocks"] = blocks, singles
    return result, stack.cache, stack.skipped
