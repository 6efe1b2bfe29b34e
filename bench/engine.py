"""Measure 4, engine overhead: goan's section loop vs diffusers' HunyuanVideoFramepackPipeline.

Both run the same tiny transformer object (and, end to end, the same tiny VAE) on the CPU in
float32, at the same frame size, latent window, number of sections and steps, without real CFG
(cfg 1: one transformer pass per step on both sides), from the same precomputed prompt embeddings
and start latent (the pipeline gets `prompt_embeds`, `pooled_prompt_embeds`, `prompt_attention_mask`
and, since it insists on encoding `image` itself, its `encode_image` and `prepare_image_latents`
return goan's SigLIP embeddings and start latent for the job: both sides start from the same inputs).
The pipeline is built from the tiny ModelSet's components and a FlowMatchEulerDiscreteScheduler
(dynamic shifting, as FramePack); goan runs its Euler sampler (same order as diffusers' scheduler)
and, for reference, its default UniPC. The transformer's forward is wrapped with one counter on
both sides: calls and the seconds spent inside the model.

- loop: goan `sample_job` (no autosave) vs the pipeline with output_type="latent" (no VAE decode).
  Per model call: total / calls; overhead = (total - time inside the model) / calls.
- end to end: goan `sample_job` + `render_frames` vs the pipeline with output_type="pt" (FramePack's
  per-section VAE decodes on both sides, the same number and sizes of decodes).
Runs alternate between goan and diffusers; the ratio is the median of the per-pair ratios of
process CPU time (one torch thread: the work runs on the calling thread, and time spent
descheduled on a shared machine does not count); wall times are in results.json beside them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

from goan_core.jobs import JobSaver, render_frames, sample_job
from goan_core.media import demo_image
from goan_core.models import VAE
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder
from goan_core.sampling import Engine

from .common import (CPU, F32, Row, bench_dir, count_calls, median, spread, timed_cpu, tiny_job,
                     tiny_models, uncount_calls)


def configs(quick: bool) -> list[dict]:
    if quick:
        return [dict(label="tiny 48x64", resolution=64, sections=2, lws=2, steps=2, decode=True)]
    return [
        dict(label="tiny 48x64", resolution=64, sections=3, lws=3, steps=6, decode=True),
        dict(label="larger latent 176x208", resolution=192, sections=2, lws=5, steps=4, decode=False),
    ]


def build_pipeline(models, transformer=None):
    """diffusers' pipeline of the tiny set's components, around `transformer` (default: the tiny one)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = HunyuanVideoFramepackPipeline(
        text_encoder=models.text_encoder, tokenizer=models.tokenizer,
        transformer=models.transformer if transformer is None else transformer,
        vae=models.vae, scheduler=scheduler, text_encoder_2=models.text_encoder_2, tokenizer_2=models.tokenizer_2,
        image_encoder=models.image_encoder, feature_extractor=models.feature_extractor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _alternating(goan, diffusers, repeats: int) -> dict[str, list]:
    """Paired samples of both sides, alternating who goes first so order effects cancel."""
    samples = {"goan": [], "diffusers": []}
    for i in range(repeats):
        order = (("diffusers", diffusers), ("goan", goan)) if i % 2 else (("goan", goan), ("diffusers", diffusers))
        for name, measure in order:
            samples[name].append(measure())
    return samples


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import FramepackSamplingType

    repeats = repeats or (1 if quick else 5)
    loop_repeats = repeats if quick else max(repeats, 9)  # loop runs are short: more repeats, less noise
    models = tiny_models()
    pipe = build_pipeline(models)
    folder = bench_dir(base_dir, "engine")
    counter = count_calls(models.transformer)
    vae_counter = count_calls(models.vae, "decode")
    rows = []
    try:
        for cfg in configs(quick):
            n, lws, steps = cfg["sections"], cfg["lws"], cfg["steps"]
            base = dict(prompt="a sunset over the sea", seconds=n * lws * 4 / 30, lws=lws, steps=steps,
                        mode="backward", resolution=cfg["resolution"], seed=11, cfg=1.0, gs=10.0)
            r = cfg["resolution"]
            image = demo_image(r * 5 // 4, r * 3 // 2) if r > 64 else demo_image()
            job = tiny_job(models, JobParams(**base, sampler="euler"), image)
            prepared, source = job.state, job.source_image
            assert prepared.plan.total_sections == n
            cond = prepared.conditioning
            pil = Image.fromarray(source)
            window = (lws - 1) * 4 + 1
            # Same inputs on both sides: the pipeline refuses image and image_latents together (and cannot
            # run without image), so its two encoders are given goan's results for this job instead of
            # running: the SigLIP embeddings and the VAE start latent, as goan's create_job made them.
            pipe.encode_image = lambda *a, **k: cond.image_embeds
            pipe.prepare_image_latents = lambda *a, **k: prepared.start_latent.clone()

            def goan(sampler: str, decode: bool):
                state = prepared.snapshot()
                state.params.sampler = sampler
                engine = Engine(models.transformer, CPU, F32)
                def work():
                    with torch.no_grad():
                        sample_job(engine, state, JobSaver(RetentionFolder(folder, state.job_id, keep_last=1), source),
                                   save_finished=False)
                        if decode:
                            render_frames(state, VAE(models.vae, CPU, F32))

                return _measured(work)

            def diffusers(decode: bool):
                def work():
                    pipe(image=pil, prompt_embeds=cond.prompt_embeds, pooled_prompt_embeds=cond.pooled,
                         prompt_attention_mask=cond.prompt_mask,
                         height=prepared.plan.height, width=prepared.plan.width, num_frames=n * window,
                         latent_window_size=lws, num_inference_steps=steps, guidance_scale=base["gs"],
                         true_cfg_scale=1.0, generator=torch.Generator().manual_seed(11),
                         output_type="pt" if decode else "latent",
                         sampling_type=FramepackSamplingType.INVERTED_ANTI_DRIFTING)

                with torch.no_grad():
                    return _measured(work)

            def _measured(work) -> dict:
                before = {"calls": counter["calls"], "model_wall": counter["seconds"], "model_cpu": counter["cpu"],
                          "vae_calls": vae_counter["calls"], "vae_wall": vae_counter["seconds"],
                          "vae_cpu": vae_counter["cpu"]}
                wall, cpu, _ = timed_cpu(work)
                after = {"calls": counter["calls"], "model_wall": counter["seconds"], "model_cpu": counter["cpu"],
                         "vae_calls": vae_counter["calls"], "vae_wall": vae_counter["seconds"],
                         "vae_cpu": vae_counter["cpu"]}
                return {"wall": wall, "cpu": cpu, **{k: after[k] - before[k] for k in after}}

            goan("euler", False), diffusers(False)  # warm-up both
            samples = _alternating(lambda: goan("euler", False), lambda: diffusers(False), loop_repeats)
            samples["goan_unipc"] = [goan("unipc", False) for _ in range(loop_repeats)]
            stats = {name: _stats(s) for name, s in samples.items()}
            g, d = stats["goan"], stats["diffusers"]
            if g["calls"] != d["calls"]:
                raise RuntimeError(f"model calls differ: goan {g['calls']}, diffusers {d['calls']}")
            label = f"{cfg['label']}, {n} sections x {steps} steps, lws {lws}"
            rows.append(Row.check(
                f"engine: loop CPU time per model call [{label}]", g["per_call"], "s", baseline=d["per_call"],
                baseline_label="diffusers pipeline", ratio=_paired(samples["goan"], samples["diffusers"]), op="<=",
                limit=1.0, noise=spread([s["cpu"] for s in samples["goan"]]),
                details={"model_calls_each": g["calls"], "goan_euler": g, "diffusers": d, "goan_unipc": stats["goan_unipc"],
                         "frame": f"{prepared.plan.width}x{prepared.plan.height}"}))
            outside_g = [x["cpu"] - x["model_cpu"] for x in samples["goan"]]
            outside_d = [x["cpu"] - x["model_cpu"] for x in samples["diffusers"]]
            rows.append(Row.check(
                f"engine: CPU time outside the model per call [{label}]", median(outside_g) / g["calls"], "s",
                baseline=median(outside_d) / d["calls"], baseline_label="diffusers pipeline",
                ratio=median([a / b for a, b in zip(outside_g, outside_d)]), op="<=", limit=1.0,
                details={"what": "everything but the transformer's forward: sampler, scheduling, context, "
                                  "noise, bookkeeping (goan: sample_job and Engine; diffusers: __call__)"}))
            if cfg["decode"]:
                if not quick:
                    goan("euler", True), diffusers(True)  # warm-up of the VAE on both sides
                e2e = _alternating(lambda: goan("euler", True), lambda: diffusers(True), repeats)
                ge, de = _stats(e2e["goan"]), _stats(e2e["diffusers"])
                rows.append(Row.check(
                    f"engine: end to end with VAE decode, CPU time [{label}]", ge["total"], "s", baseline=de["total"],
                    baseline_label="diffusers pipeline", ratio=_paired(e2e["goan"], e2e["diffusers"]), op="<=",
                    limit=1.0, noise=spread([s["cpu"] for s in e2e["goan"]]), details={"goan_euler": ge, "diffusers": de}))
    finally:
        uncount_calls(models.transformer)
        uncount_calls(models.vae, "decode")
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _paired(goan: list[dict], diffusers: list[dict]) -> float:
    """Median of the per-repeat CPU-time ratios (each goan run beside the diffusers run next to it)."""
    return median([g["cpu"] / d["cpu"] for g, d in zip(goan, diffusers)])


def _stats(samples: list[dict]) -> dict:
    """Medians over repeats; headline figures in process CPU time, wall time beside them."""
    calls = samples[0]["calls"]
    out = {"calls": calls, "vae_decodes": samples[0]["vae_calls"]}
    for clock in ("cpu", "wall"):
        total = median([s[clock] for s in samples])
        model = median([s[f"model_{clock}"] for s in samples])
        vae = median([s[f"vae_{clock}"] for s in samples])
        out[clock] = {"total": total, "per_call": total / calls, "model_per_call": model / calls,
                      "overhead_per_call": (total - model - vae) / calls, "vae_decode_s": vae,
                      "outside_model_and_vae_s": median([s[clock] - s[f"model_{clock}"] - s[f"vae_{clock}"] for s in samples]),
                      "samples_s": [s[clock] for s in samples]}
    out["total"], out["per_call"] = out["cpu"]["total"], out["cpu"]["per_call"]
    return out


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
