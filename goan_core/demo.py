"""`python -m goan_core demo`: the promise, shown end to end on the tiny built-in models.

For each mode: generate a video without interruption; generate it again but pause in the middle of
a section, which writes a `.goan_resume` file; read that file back (as another machine would) and
resume; then compare the final latents and every decoded frame with the uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .atomic import RetentionFolder
from .cli import tiny_models_root
from .engine import Engine
from .job import prepare_job, render_frames
from .models import load_model_set
from .params import JobParams
from .resume_file import read_resume_file
from .runner import JobSaver, run_job
from .tiny import write_tiny_models
from .video import count_frames, write_mp4

CPU, F32 = torch.device("cpu"), torch.float32


def demo_image(height: int = 80, width: int = 96) -> np.ndarray:
    """A small synthetic picture: a sunset gradient with a disc, so the demo needs no input file."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([255 - y * 1.2, 120 + y, 200 - y * 1.5], axis=-1)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.45) ** 2) < (height * 0.2) ** 2
    sky[disc] = (255, 210, 60)
    return np.clip(sky, 0, 255).astype(np.uint8)


def run_demo(out_dir: Path) -> int:
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    models = load_model_set(write_tiny_models(tiny_models_root()))
    image = demo_image()
    print(f"goan demo: tiny models from {tiny_models_root()}, outputs in {out_dir}/")
    ok = True
    for mode, pause_at in (("backward", (1, 3)), ("f1", (2, 2))):
        params = JobParams(prompt="a sunset over the sea, the sun sinks slowly", seconds=1.2, lws=3,
                           steps=6, mode=mode, resolution=64, seed=2026)
        engine = Engine(models.transformer, CPU, F32)

        def fresh(job_id):
            return prepare_job(models, params, image, device=CPU, dtype=F32, job_id=job_id)

        reference, source = fresh(f"demo-{mode}-uninterrupted")
        run_job(engine, reference, JobSaver(RetentionFolder(out_dir, reference.job_id), source), save_finished=False)

        paused_state, source = fresh(f"demo-{mode}")
        paused = run_job(engine, paused_state, JobSaver(RetentionFolder(out_dir, paused_state.job_id), source),
                         pause_at=pause_at)
        print(f"[{mode}] paused at section {pause_at[0] + 1}, step {pause_at[1]} -> {paused.resume_file}")

        loaded = read_resume_file(paused.resume_file)
        resumed = run_job(Engine(models.transformer, CPU, F32), loaded.state,
                          JobSaver(RetentionFolder(out_dir, loaded.state.job_id), loaded.source_image))

        frames_ref = render_frames(models.vae, reference, device=CPU, dtype=F32)
        frames_res = render_frames(models.vae, resumed.state, device=CPU, dtype=F32)
        latent_diff = (reference.history_latents - resumed.state.history_latents).abs().max().item()
        frame_diff = (frames_ref.int() - frames_res.int()).abs().max().item()
        same = torch.equal(reference.history_latents, resumed.state.history_latents) and torch.equal(frames_ref, frames_res)
        video_ref = write_mp4(frames_ref, out_dir / f"{mode}_uninterrupted.mp4")
        video_res = write_mp4(frames_res, out_dir / f"{mode}_resumed.mp4")
        print(f"[{mode}] {reference.plan.total_sections} sections x {params.steps} steps, "
              f"{frames_ref.shape[0]} frames {frames_ref.shape[2]}x{frames_ref.shape[1]}: "
              f"max latent difference {latent_diff}, max frame difference {frame_diff}, "
              f"{'IDENTICAL' if same else 'DIFFERENT'}")
        print(f"[{mode}] wrote {video_ref} and {video_res} ({count_frames(video_res)} frames each)")
        ok = ok and same
    print(f"goan demo: {'pause/resume is bit-identical in both modes' if ok else 'MISMATCH'} "
          f"({time.monotonic() - started:.1f} s)")
    return 0 if ok else 1
