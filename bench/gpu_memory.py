"""Measure "gpu_memory": goan's block swapping on emulated consumer cards, beside diffusers' group offloading.

Only where CUDA is present (otherwise one skipped row says why); the smoke test runs the same code
on the CPU with the tiny configuration through a `CountingAccelerator`.

The real FramePackI2V_HY transformer with random bf16 weights is built on the host, then for each
card size (6, 8, 12, 16, 24 GB) the process is capped to that much device memory
(`torch.cuda.set_per_process_memory_fraction`) and goan runs timed steps at the 640 bucket (704x544,
lws 9, backward) with the default `gpu_memory_preservation` (6 GB), placed by `models.placed` as a
job's run places it (the planner is told the capped card's free bytes). Reported per card: s/step
and peak `torch.cuda.max_memory_allocated`. The in-run baseline is diffusers' `enable_group_offload`
(block level, one block per group, CUDA stream prefetch) on the same model and the same steps;
target: goan's s/step <= 1.0x the baseline's at every card where the baseline runs at all (on the
CPU the baseline is not run). A card where a run fails with an out-of-memory error reports that
instead of a time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from goan_core.models import (DEFAULT_GPU_MEMORY_PRESERVATION, FRAMEPACK_I2V_HY_CONFIG, GIB, Accelerator,
                              CountingAccelerator, placed, section_tokens)
from goan_core.sampling import Engine

from .common import Row, median, real_plan, synthetic_state
from .gpu import FRAMEPACK_STEPS, build_transformer

CARDS_GB = (6, 8, 12, 16, 24)
COMPUTE = torch.bfloat16


class CappedCard(Accelerator):
    """The CUDA device capped at `card_bytes`: what the planner sees as free is what the cap leaves."""

    def __init__(self, device: torch.device, card_bytes: int):
        super().__init__(device)
        self.card_bytes = card_bytes

    def free_bytes(self) -> int:
        return self.card_bytes - torch.cuda.memory_reserved(self.device)


def _time(model, device, plan, cond: dict, steps: int) -> dict:
    """s/step (median after a warm-up step) and peak device bytes; {"error": ...} on out-of-memory."""
    state = synthetic_state(plan, min(2, plan.total_sections - 1), steps=FRAMEPACK_STEPS, **cond)
    engine = Engine(model, device, COMPUTE)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        times = []
        for index in range(steps + 1):
            start = time.perf_counter()
            engine.step(state)
            if cuda:
                torch.cuda.synchronize(device)
            if index:  # the first step warms kernels, the allocator and the section's context
                times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as error:
        return {"error": f"out of memory: {str(error).splitlines()[0][:160]}"}
    finally:
        del state, engine
        if cuda:
            torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return {"step_s": median(times), "peak_GB": None if peak is None else peak / 1e9}


def _cap(device: torch.device, card_gb: float) -> Accelerator:
    """Cap the process at a card of `card_gb` GB (CUDA), or a fake card with that much free (CPU)."""
    card = int(card_gb * GIB)
    if device.type != "cuda":
        return CountingAccelerator(card)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, card / total), device)
    return CappedCard(device, card)


def _uncap(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None, *,
        device: str | None = None, config: dict | None = None, cards=CARDS_GB,
        preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION) -> list[Row]:
    """`device`/`config`/`cards`/`preservation` exist for the smoke test (tiny config on the CPU)."""
    if device is None:
        if not torch.cuda.is_available():
            message = "no CUDA device on this machine (run `python -m bench --only gpu_memory` where there is one)"
            print(f"bench gpu_memory: skipped: {message}")
            return [Row(f"gpu_memory: goan swap vs group offload, {card} GB card", None, "s/step", skipped=message)
                    for card in cards]
        device = "cuda"
    device = torch.device(device)
    config = config or FRAMEPACK_I2V_HY_CONFIG
    steps = repeats or (1 if quick else 3)
    if config is FRAMEPACK_I2V_HY_CONFIG:
        plan, cond = real_plan(60, 640), {}
    else:  # the smoke test's tiny run
        plan = real_plan(2, 64, image_hw=(48, 64), lws=2)
        cond = dict(prompt=(16, config["text_embed_dim"]), pooled=config["pooled_projection_dim"],
                    image=(16, config["image_proj_dim"]), prompt_tokens=8)
    model = build_transformer(config, torch.device("cpu"), COMPUTE)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)

    goan = {}
    for card in cards:
        accelerator = _cap(device, card)
        try:
            with placed(model, device, preservation, compute_dtype=COMPUTE, tokens=section_tokens(plan),
                        accelerator=accelerator) as placement:
                result = _time(model, device, plan, cond, steps)
                if placement is not None:
                    result["resident_blocks"] = len(placement.plan.resident)
                    result["blocks"] = len(placement.plan.block_bytes)
        except torch.OutOfMemoryError as error:  # placing the resident part itself did not fit
            result = {"error": f"out of memory while placing: {str(error).splitlines()[0][:160]}"}
        finally:
            _uncap(device)
        goan[card] = result

    baseline = {card: {"error": "not run: the baseline is a CUDA measurement"} for card in cards}
    if device.type == "cuda":  # diffusers' group offloading needs an accelerator (older versions fail on the CPU)
        model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
                                   num_blocks_per_group=1, use_stream=True)
        for card in cards:
            _cap(device, card)
            try:
                baseline[card] = _time(model, device, plan, cond, steps)
            finally:
                _uncap(device)
    del model

    rows = []
    for card in cards:
        ours, theirs = goan[card], baseline[card]
        details = {"device": name, "card_GB": card, "gpu_memory_preservation_GB": preservation, "timed_steps": steps,
                   "frame": f"{plan.width}x{plan.height}", "lws": plan.lws, "goan": ours, "group_offload": theirs}
        measure = f"gpu_memory: goan swap vs group offload, {card} GB card [{name}]"
        if "error" in ours:
            rows.append(Row(measure, None, "s/step", details=details, skipped=f"goan: {ours['error']}"))
        elif "error" in theirs:
            rows.append(Row(measure, ours["step_s"], "s/step", baseline_label=f"group offload: {theirs['error']}",
                            details=details))
        else:
            rows.append(Row.check(measure, ours["step_s"], "s/step", baseline=theirs["step_s"],
                                  baseline_label="diffusers enable_group_offload (block level, stream)",
                                  ratio=ours["step_s"] / theirs["step_s"], op="<=", limit=1.0, details=details))
    return rows


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
