"""Measure "memory": the transformer's host bytes against its file's bytes, fp8 weights kept fp8.

The tiny transformer (seed 0) is written as an fp8 e4m3fn file and as a bf16 file
(`write_transformer_file`), then loaded from each with `weight_dtype` "auto" computing in bf16 (the
CUDA compute dtype). The value is the bytes of the loaded model's parameters and buffers
(`storage_bytes`), the baseline the file's size; target ratio <= 1.05. The bytes the old path took
(every tensor upcast to bf16, `weight_dtype` "bf16") are in the details. Biases and norms, kept in
the compute dtype, weigh more in the tiny model (1 % of its parameters) than in the real one
(0.03 %), so for files stored like goan's the real ratio is no higher than the tiny one.

Second row, "peak compute-device bytes / weight budget": a tiny job (one section, 2 steps, fp32) runs
through `run_job` on a `CountingAccelerator`, a fake compute device whose ledger counts the weight
bytes held at each moment while the math runs on the CPU, with free memory set to the transformer's
non-block modules + its largest block + the memory its activations use (`gpu_memory_preservation`,
6 GB, which holds the activation reserve): the swap planner must stream both blocks (one slot, no
prefetch). The value is the ledger's peak, the baseline the weight budget (free - preservation, less
any reserve above the preservation); target <= 1.0.

Then "planned resident share [card, dtype]" rows: the REAL FramePackI2V_HY transformer (built on the
meta device, no weights read) with fp8 or bf16 weights, planned by `plan_swap` for cards of 6, 8, 12,
16 and 24 GB (free = card - 0.5 GB for the driver and desktop) with the default preservation (6 GB)
at the 640 bucket (544x704, lws 9): resident weight bytes (non-block modules + resident blocks) over
all weight bytes. That is the planner's accounting, not a GPU measurement.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

from goan_core.jobs import RunSettings, run_job
from goan_core.media import demo_image
from goan_core.models import (DEFAULT_GPU_MEMORY_PRESERVATION, FRAMEPACK_I2V_HY_CONFIG, GIB, TINY_TRANSFORMER_FILE,
                              CountingAccelerator, Transformer, apply_weight_dtype, default_tiny_root,
                              load_transformer_file, plan_swap, section_tokens, storage_bytes, weight_storage_name,
                              write_tiny_models, write_transformer_file)
from goan_core.params import JobParams
from goan_core.sampling import SectionPlan

from .common import CPU, F32, Row, bench_dir, tiny_job, tiny_models

COMPUTE = torch.bfloat16
FILES = (("fp8", torch.float8_e4m3fn), ("bf16", torch.bfloat16))
TARGET = 1.05
CARDS_GB = (6, 8, 12, 16, 24)
DRIVER_GB = 0.5  # taken by the driver and the desktop: free = card - this
BUCKET_640 = SectionPlan("backward", 9, 4, 544, 704)


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    folder = bench_dir(base_dir, "memory")
    source = load_transformer_file(write_tiny_models(default_tiny_root()) / TINY_TRANSFORMER_FILE, torch.float32)
    rows = []
    for label, file_dtype in FILES:
        path = write_transformer_file(source, folder / f"tiny_{label}.safetensors", file_dtype)
        file_bytes = path.stat().st_size
        model = load_transformer_file(path, COMPUTE, "auto")
        host = storage_bytes(model)
        upcast = storage_bytes(load_transformer_file(path, COMPUTE, "bf16"))
        details = {"file_bytes": file_bytes, "host_bytes": host, "weight_dtype": weight_storage_name(model),
                   "compute_dtype": "bfloat16", "upcast_host_bytes": upcast, "upcast_ratio": upcast / file_bytes}
        print(f"bench memory: {label} file {file_bytes} B, loaded {host} B ({details['weight_dtype']}), "
              f"upcast path {upcast} B")
        rows.append(Row.check(f"memory: transformer host bytes / file bytes ({label} file, tiny, bf16 compute)",
                              host / 1e6, "MB", baseline=file_bytes / 1e6, baseline_label="file size",
                              ratio=host / file_bytes, op="<=", limit=TARGET, details=details))
    rows.append(swap_row(folder))
    rows += share_rows()
    return rows


def swap_row(folder: Path) -> Row:
    """Peak compute-device bytes of a tiny job under a budget that forces streaming, over that budget."""
    models = tiny_models()
    params = JobParams(prompt="a cat walks", seconds=0.4, lws=3, steps=2, resolution=64, seed=1)
    job = tiny_job(models, params, demo_image(64, 64), job_id="bench-swap")
    model = models.transformer
    preserve = DEFAULT_GPU_MEMORY_PRESERVATION
    full = plan_swap(model, None, preserve, compute_dtype=F32, tokens=section_tokens(job.state.plan))
    free = max(full.preservation_bytes, full.reserve_bytes) + full.fixed_bytes + max(full.block_bytes.values())
    plan = plan_swap(model, free, preserve, compute_dtype=F32, tokens=section_tokens(job.state.plan))
    fake = CountingAccelerator(free)
    run_job(job, Transformer(model, CPU, F32), RunSettings(folder / "swap", gpu_memory_preservation=preserve,
                                                           accelerator=fake))
    peak, budget = fake.peak_bytes, plan.weight_budget
    details = {"free_bytes": free, "budget_bytes": plan.budget, "weight_budget_bytes": budget,
               "peak_weight_bytes": peak, "reserve_bytes": plan.reserve_bytes,
               "preservation_bytes": plan.preservation_bytes, "device_bytes": plan.device_bytes(),
               "model_bytes": storage_bytes(model), "uploaded_bytes": fake.uploaded_bytes,
               "resident": list(plan.resident), "streamed": list(plan.streamed), "prefetch": plan.prefetch,
               "left_on_device_after_bytes": fake.resident_bytes}
    print(f"bench memory: swap peak {peak} B of weight budget {budget} B, streamed {list(plan.streamed)}, "
          f"{fake.uploaded_bytes} B copied")
    return Row.check("memory: peak compute-device weight bytes / weight budget (tiny, fake device, blocks streamed)",
                     peak / 1e6, "MB", baseline=budget / 1e6, baseline_label="weight budget",
                     ratio=peak / budget, op="<=", limit=1.0, details=details)


def share_rows() -> list[Row]:
    """The planner's resident share of the real transformer's weights per card size and weight dtype."""
    rows, tokens = [], section_tokens(BUCKET_640)
    preserve = DEFAULT_GPU_MEMORY_PRESERVATION
    for label in ("fp8", "bf16"):
        with torch.device("meta"):  # sizes only: no memory, no weights read
            model = HunyuanVideoFramepackTransformer3DModel.from_config(FRAMEPACK_I2V_HY_CONFIG).to(torch.bfloat16)
        if label == "fp8":
            apply_weight_dtype(model, "fp8_e4m3fn", torch.bfloat16)
        total = storage_bytes(model)
        for card in CARDS_GB:
            free = int((card - DRIVER_GB) * GIB)
            plan = plan_swap(model, free, preserve, compute_dtype=torch.bfloat16, tokens=tokens, warn=False)
            resident = plan.fixed_bytes + sum(plan.block_bytes[name] for name in plan.resident)
            details = {"what": "the planner's accounting (plan_swap on the real config on the meta device), "
                               "not a GPU measurement",
                       "card_gb": card, "free_bytes": free, "gpu_memory_preservation_gb": preserve,
                       "weight_dtype": label, "compute_dtype": "bfloat16", "bucket": "640 (544x704, lws 9)",
                       "tokens": tokens, "weight_bytes": total, "resident_bytes": resident,
                       "reserve_bytes": plan.reserve_bytes, "peak_weight_bytes": plan.peak_weight_bytes,
                       "device_bytes": plan.device_bytes(), "blocks_resident": len(plan.resident),
                       "blocks_streamed": len(plan.streamed), "prefetch": plan.prefetch, "fallback": plan.fallback}
            print(f"bench memory: {card} GB card, {label}: {len(plan.resident)}/{len(plan.block_bytes)} blocks "
                  f"resident ({resident / total:.1%} of the weights), prefetch {plan.prefetch}, "
                  f"fallback {plan.fallback}")
            rows.append(Row.check(f"memory: planned resident share [{card} GB, {label}]", resident / GIB, "GB",
                                  baseline=total / GIB, baseline_label="all weights; planner's accounting, "
                                  "not a GPU measurement", ratio=resident / total, details=details))
    return rows
