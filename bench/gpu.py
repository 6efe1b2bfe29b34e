"""Measure 5, real-size GPU run (only where CUDA is present; otherwise skipped rows say why).

The real FramePackI2V_HY transformer configuration (about 13 B parameters) with random bf16 weights,
built directly on the GPU, run by goan's Engine at the 640 bucket of a 640x480 input (704x544,
lws 9, backward, real conditioning shapes). The transformer only: text/image encoders and the VAE
decode are not part of it. Rows, in the order they run:
- s/frame with SDPA and TeaCache off, extrapolated from a few timed steps after a warm-up step to
  FramePack's defaults (25 steps per section, 36 new frames per section with lws 9), and peak VRAM
  (torch.cuda.max_memory_allocated). FramePack's published 2.5 s/frame on an RTX 4090 (without
  TeaCache) is set beside it, not measured here.
- s/step for every attention kernel usable on this GPU (`goan_core.models.attention_for`: sdpa,
  flash, sage, xformers, whichever are installed), TeaCache off (a few steps after a warm-up) and on
  (one whole section of 25 steps: which steps TeaCache skips depends on the step index), each
  against SDPA with TeaCache off.
- goan / diffusers' `HunyuanVideoFramepackPipeline`: wall time per transformer call for one section
  on the same transformer and inputs (Euler on both sides, cfg 1, TeaCache off, latents out; the
  pipeline's other components are the tiny set's and are never called: prompt embeddings are given
  and its image encoding returns goan's). Target <= 1.
- the same s/frame with the FP32 Conv3d fallback forced (`goan_core.models.configure_precision`,
  policy "force"; last, since it changes the model).
The smoke test runs all of it on the CPU with the tiny configuration (`run(device="cpu", config=...)`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from goan_core.models import SDPA, FRAMEPACK_I2V_HY_CONFIG, attention_applied, configure_precision
from goan_core.sampling import Engine, SectionPlan

from .common import Row, median, real_plan, source_image_for, spread, synthetic_state, tiny_models
from .speed import usable_kernels

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


def _sync(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_steps(model, device, dtype, plan, cond_shapes: dict, steps: int, *, teacache: bool = False,
               attention=SDPA) -> dict:
    """Seconds per step under `attention`: with TeaCache off, `steps` steps after a warm-up step; with it on,
    one whole section of FramePack's 25 steps after a warm-up step of another state (its skips depend on the
    step index, so only a whole section gives its real average)."""
    def state(cached: bool):
        made = synthetic_state(plan, min(2, plan.total_sections - 1), steps=FRAMEPACK_STEPS, **cond_shapes)
        made.params.teacache = cached
        return made

    engine = Engine(model, device, dtype)
    sync = _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    job = state(False)
    with attention_applied(model, attention):
        engine.step(job)  # warm-up: kernels, allocator, the section's context on the device
        sync()
        if teacache:
            job, steps = state(True), FRAMEPACK_STEPS
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            engine.step(job)
            sync()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    step_s = sum(times) / len(times) if teacache else median(times)
    frames_per_section = plan.lws * 4
    return {"step_s": step_s, "step_samples_s": times, "s_per_frame": step_s * FRAMEPACK_STEPS / frames_per_section,
            "peak_vram_GB": None if peak is None else peak / 1e9, "model_calls": engine.model_calls,
            "skipped_calls": engine.skipped_calls, "attention": attention.word, "teacache": teacache,
            "frame": f"{plan.width}x{plan.height}", "lws": plan.lws}


def pipeline_ratio(model, device, dtype, plan, cond_shapes: dict, steps: int, repeats: int) -> dict:
    """Wall seconds per transformer call of one section of `steps` Euler steps: goan's Engine and diffusers'
    pipeline on the same transformer and inputs, alternating after a warm-up of each (medians)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import FramepackSamplingType
    from PIL import Image

    from .engine import build_pipeline

    one = SectionPlan(plan.mode, plan.lws, 1, plan.height, plan.width)
    prepared = synthetic_state(one, 0, steps=steps, **cond_shapes)
    prepared.params.teacache, prepared.params.sampler = False, "euler"
    cond = prepared.conditioning
    pipe = build_pipeline(tiny_models(), transformer=model)  # runs on the transformer's device (diffusers 0.42)
    pipe.encode_image = lambda *a, **k: cond.image_embeds.to(device)
    pipe.prepare_image_latents = lambda *a, **k: prepared.start_latent.to(device)
    picture = Image.fromarray(source_image_for(one))
    sync = _sync(device)

    def goan() -> float:
        state = prepared.snapshot()
        engine = Engine(model, device, dtype)
        t0 = time.perf_counter()
        engine.run(state)
        sync()
        return (time.perf_counter() - t0) / engine.model_calls

    def diffusers() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(image=picture, prompt_embeds=cond.prompt_embeds.to(device),
                 pooled_prompt_embeds=cond.pooled.to(device), prompt_attention_mask=cond.prompt_mask.to(device), height=one.height, width=one.width,
                 num_frames=(one.lws - 1) * 4 + 1, latent_window_size=one.lws, num_inference_steps=steps,
                 guidance_scale=prepared.params.gs, true_cfg_scale=1.0, generator=torch.Generator().manual_seed(0),
                 output_type="latent", sampling_type=FramepackSamplingType.INVERTED_ANTI_DRIFTING)
        sync()
        return (time.perf_counter() - t0) / steps

    goan(), diffusers()  # warm-up
    pairs = []
    for i in range(repeats):  # who goes first alternates, so order effects cancel
        if i % 2:
            theirs = diffusers()
            pairs.append((goan(), theirs))
        else:
            pairs.append((goan(), diffusers()))
    return {"goan_s": median(p[0] for p in pairs), "diffusers_s": median(p[1] for p in pairs),
            "ratio": median(p[0] / p[1] for p in pairs), "steps": steps, "pairs_s": pairs}


SKIPPED = ("gpu: FramePackI2V_HY bf16, 640 bucket, s/frame", "gpu: s/step per attention kernel, TeaCache off and on",
           "gpu: goan / diffusers HunyuanVideoFramepackPipeline, s per model call",
           "gpu: same with FP32 Conv3d fallback")


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None, *,
        device: str | None = None, config: dict | None = None) -> list[Row]:
    """`device`/`config` exist for the smoke test (tiny config on the CPU); `python -m bench` uses CUDA."""
    if device is None:
        if not torch.cuda.is_available():
            message = "no CUDA device on this machine (run `python -m bench --only gpu` where there is one)"
            print(f"bench gpu: skipped: {message}")
            return [Row(measure, None, "s", skipped=message) for measure in SKIPPED]
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
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    kernels = usable_kernels(device, dtype)
    timed = {(word, cached): time_steps(model, device, dtype, plan, cond, steps, teacache=cached, attention=choice)
             for word, choice in kernels.items() for cached in (False, True)}
    plain = timed[("sdpa", False)]
    pipeline = pipeline_ratio(model, device, dtype, plan, cond, 2 if quick else 5, repeats or (1 if quick else 3))
    configure_precision(model, "force", device, dtype)
    fp32 = time_steps(model, device, dtype, plan, cond, steps)
    del model
    details = {"device": name, "parameters_B": params_b, "timed_steps": steps, "bf16": plain, "conv_fp32": fp32,
               "attention_kernels": sorted(kernels),
               "extrapolation": f"s/frame = step time x {FRAMEPACK_STEPS} steps / {plan.lws * 4} frames per section"}
    label = "FramePack README, RTX 4090 (not measured here)"
    rows = [Row(f"gpu: FramePackI2V_HY bf16, {plan.width}x{plan.height}, s/frame [{name}]", plain["s_per_frame"],
                "s/frame", baseline=FRAMEPACK_4090_S_PER_FRAME, baseline_label=label,
                ratio=plain["s_per_frame"] / FRAMEPACK_4090_S_PER_FRAME,
                details=details | {"peak_vram_GB": plain["peak_vram_GB"]})]
    for (word, cached), result in timed.items():
        first = result is plain  # the baseline of the others
        rows.append(Row(f"gpu: s/step, {word}, TeaCache {'on' if cached else 'off'} [{name}]", result["step_s"], "s",
                        baseline=None if first else plain["step_s"],
                        baseline_label="" if first else "sdpa, TeaCache off",
                        ratio=None if first else result["step_s"] / plain["step_s"],
                        noise=spread(result["step_samples_s"]),
                        details={k: result[k] for k in ("model_calls", "skipped_calls", "peak_vram_GB", "frame")}))
    rows.append(Row.check(f"gpu: goan / diffusers HunyuanVideoFramepackPipeline, s per model call [{name}, sdpa, "
                          f"TeaCache off]", pipeline["goan_s"], "s", baseline=pipeline["diffusers_s"],
                          baseline_label="diffusers pipeline, same transformer", ratio=pipeline["ratio"], op="<=",
                          limit=1.0, details=pipeline))
    rows.append(Row(f"gpu: same with FP32 Conv3d fallback [{name}]", fp32["s_per_frame"], "s/frame",
                    baseline=plain["s_per_frame"], baseline_label="bf16 run above",
                    ratio=fp32["s_per_frame"] / plain["s_per_frame"],
                    details={"peak_vram_GB": fp32["peak_vram_GB"], "peak_vram_bf16_GB": plain["peak_vram_GB"]}))
    return rows


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
