"""Measure 5, real-size GPU run (only where CUDA is present; otherwise one skipped row says why).

The real FramePackI2V_HY transformer configuration (about 13 B parameters) with random bf16 weights,
built directly on the GPU, run by goan's Engine at the 640 bucket of a 640x480 input (704x544,
lws 9, backward, real conditioning shapes) for a few timed steps after a warm-up step. Reported:
seconds per generated frame, extrapolated to FramePack's defaults (25 steps per section, 36 new
video frames per section with lws 9), and peak VRAM (torch.cuda.max_memory_allocated); then the
same with the FP32 Conv3d fallback forced (`goan_core.models.configure_precision`, policy "force"). The transformer
only: text/image encoders and the VAE decode are not part of it. FramePack's published figure,
2.5 s/frame on an RTX 4090 (without TeaCache), is set beside it, not measured here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from goan_core.models import FRAMEPACK_I2V_HY_CONFIG, configure_precision
from goan_core.sampling import Engine

from .common import Row, median, real_plan, synthetic_state

FRAMEPACK_4090_S_PER_FRAME = 2.5
FRAMEPACK_STEPS = 25


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: 13 B parameters would be 52 GB in fp32
    try:
        with torch.device(device), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = HunyuanVideoFramepackTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def time_steps(model, device, dtype, plan, cond_shapes: dict, steps: int) -> dict:
    state = synthetic_state(plan, min(2, plan.total_sections - 1), steps=FRAMEPACK_STEPS, **cond_shapes)
    engine = Engine(model, device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    engine.step(state)  # warm-up: kernels, allocator, the section's context on the device
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step(state)
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    step_s = median(times)
    frames_per_section = plan.lws * 4
    return {"step_s": step_s, "step_samples_s": times, "s_per_frame": step_s * FRAMEPACK_STEPS / frames_per_section,
            "peak_vram_GB": None if peak is None else peak / 1e9, "model_calls": engine.model_calls,
            "frame": f"{plan.width}x{plan.height}", "lws": plan.lws}


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None, *,
        device: str | None = None, config: dict | None = None) -> list[Row]:
    """`device`/`config` exist for the smoke test (tiny config on the CPU); `python -m bench` uses CUDA."""
    if device is None:
        if not torch.cuda.is_available():
            message = "no CUDA device on this machine (run `python -m bench --only gpu` where there is one)"
            print(f"bench gpu: skipped: {message}")
            return [Row("gpu: FramePackI2V_HY bf16, 640 bucket, s/frame", None, "s/frame", skipped=message),
                    Row("gpu: same with FP32 Conv3d fallback", None, "s/frame", skipped=message)]
        device = "cuda"
    device = torch.device(device)
    config = config or FRAMEPACK_I2V_HY_CONFIG
    real = config is FRAMEPACK_I2V_HY_CONFIG
    steps = repeats or (1 if quick else 3)
    dtype = torch.bfloat16
    if real:
        plan = real_plan(60, 640)
        cond = {}
    else:  # the smoke test's tiny run
        plan = real_plan(2, 64, image_hw=(48, 64), lws=2)
        cond = dict(prompt=(16, config["text_embed_dim"]), pooled=config["pooled_projection_dim"],
                    image=(16, config["image_proj_dim"]), prompt_tokens=8)
    model = build_transformer(config, device, dtype)
    params_b = sum(p.numel() for p in model.parameters()) / 1e9
    plain = time_steps(model, device, dtype, plan, cond, steps)
    configure_precision(model, "force", device, dtype)
    fp32 = time_steps(model, device, dtype, plan, cond, steps)
    del model
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    details = {"device": name, "parameters_B": params_b, "timed_steps": steps, "bf16": plain, "conv_fp32": fp32,
               "extrapolation": f"s/frame = step time x {FRAMEPACK_STEPS} steps / {plan.lws * 4} frames per section"}
    label = "FramePack README, RTX 4090 (not measured here)"
    return [
        Row(f"gpu: FramePackI2V_HY bf16, {plan.width}x{plan.height}, s/frame [{name}]", plain["s_per_frame"],
            "s/frame", baseline=FRAMEPACK_4090_S_PER_FRAME, baseline_label=label,
            ratio=plain["s_per_frame"] / FRAMEPACK_4090_S_PER_FRAME,
            details=details | {"peak_vram_GB": plain["peak_vram_GB"]}),
        Row(f"gpu: same with FP32 Conv3d fallback [{name}]", fp32["s_per_frame"], "s/frame",
            baseline=plain["s_per_frame"], baseline_label="bf16 run above", ratio=fp32["s_per_frame"] / plain["s_per_frame"],
            details={"peak_vram_GB": fp32["peak_vram_GB"], "peak_vram_bf16_GB": plain["peak_vram_GB"]}),
    ]


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
