"""Optional torch.compile of the transformer's blocks for the time of a run ("regional" compilation).

Every block of `transformer_blocks` and `single_transformer_blocks` runs its `forward` through one
torch.compile'd function per block class: dynamo keeps compiled graphs on the function's code
object, so FramePack's 20 double- and 40 single-stream blocks compile two graphs, not sixty.

Only `forward` is compiled, not the module call, so the hooks around it stay eager and block
swapping (`offload.Placement`: a pre-hook puts a streamed block's weights on the device, a hook
drops them afterwards) works unchanged without recompiling: dynamo takes a block's parameters as
inputs and guards on their device, dtype and shape, which are the same at every call (a streamed
block's weights are on the device whenever its forward runs), not on their storage. TeaCache calls
the same blocks from its stand-in stack, so it works the same compiled or not.

Shapes: `dynamic=False`, so each shape has its own specialised graph and a block's result depends
only on its inputs, never on which shapes the process compiled before (with torch's automatic
dynamic shapes a prompt length would run a static or a symbolic-size graph depending on the
history of the process). A job compiles once per block class for its prompt's length and once
more for the negative prompt's with real CFG; a new prompt length or frame size compiles again
(inductor caches compiled graphs on disk, so a shape seen before compiles faster). For the run,
torch's recompile limit is raised from 8 to RECOMPILE_LIMIT graphs per function, so a long
ComfyUI session keeps compiling new shapes instead of falling back to uncompiled blocks.
tests/test_compile.py counts the graphs.

`compiled_blocks` sets the compiled forward on each block (an instance attribute) for a `with`
block and removes it afterwards, so a model shared by jobs with and without compile is unchanged
after each. Compiled blocks round differently from uncompiled ones (fused kernels), so results are
close to, not bit-identical with, a run without compile: pause and resume with the same setting.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import types
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import InputError
from .swap_plan import BLOCK_LISTS

COMPILE_BACKEND = "inductor"
RECOMPILE_LIMIT = 64


def check_compiler(device: torch.device | str, backend: str = COMPILE_BACKEND) -> None:
    """Raise InputError when `backend` cannot compile for `device` here (inductor needs triton or a C++ compiler)."""
    if backend != "inductor":
        return
    kind = torch.device(device).type
    if kind == "cuda" and importlib.util.find_spec("triton") is None:
        raise InputError("compile on an NVIDIA GPU needs triton: pip install triton (on Windows: pip install "
                         "triton-windows), or turn compile off")
    if kind == "cpu" and not any(shutil.which(name) for name in ("c++", "g++", "clang++", "cl")):
        raise InputError("compile on the CPU needs a C++ compiler (g++ or clang++) on the PATH, or turn compile off")


@functools.lru_cache(maxsize=None)
def _compiled_forward(block_class: type, backend: str):
    """One compiled `forward` per block class and backend, shared by every block of that class and every run."""
    return torch.compile(block_class.forward, backend=backend, dynamic=False)


def blocks_of(model) -> list[torch.nn.Module]:
    """The transformer's blocks in execution order."""
    return [block for name in BLOCK_LISTS for block in getattr(model, name)]


@contextmanager
def compiled_blocks(model, enabled: bool, device: torch.device | str, backend: str = COMPILE_BACKEND
                    ) -> Iterator[None]:
    """Run a `with` block with each transformer block's forward compiled (when `enabled`); uncompiled afterwards."""
    if not enabled:
        yield
        return
    check_compiler(device, backend)
    blocks = blocks_of(model)
    for block in blocks:
        block.forward = types.MethodType(_compiled_forward(type(block), backend), block)
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
