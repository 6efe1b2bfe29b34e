"""`python -m goan_core demo`: the promise, shown end to end on the tiny built-in models.

For each mode: generate a video without interruption; generate it again but pause in the middle of
a section, which writes a `.goan_resume` file; read that file back (as another machine would) and
resume; then compare the final latents and every decoded frame with the uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..jobs import RunSettings, continue_job, create_job, goan_encoders, render_frames, run_job
from ..media import count_frames, demo_image, write_mp4
from ..models import Transformer, default_tiny_root, load_model_set, write_tiny_models
from ..params import JobParams
from ..resumefile import read_resume_file

CPU, F32 = torch.device("cpu"), torch.float32


def run_demo(out_dir: Path) -> int:
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    models = load_model_set(write_tiny_models(default_tiny_root()))
    transformer = Transformer(models.transformer, CPU, F32)
    encoders = goan_encoders(models, CPU, F32)
    image = demo_image()
    print(f"goan demo: tiny models from {default_tiny_root()}, outputs in {out_dir}/")
    ok = True
    for mode, pause_at in (("backward", (1, 3)), ("f1", (2, 2))):
        params = JobParams(prompt="a sunset over the sea, the sun sinks slowly", seconds=1.2, lws=3,
                           steps=6, mode=mode, resolution=64, seed=2026)
        identity = transformer.identity()
        reference = create_job(params, image, encoders, identity=identity, job_id=f"demo-{mode}-uninterrupted")
        run_job(reference, transformer, RunSettings(out_dir))

        paused = run_job(create_job(params, image, encoders, identity=identity, job_id=f"demo-{mode}"), transformer,
                         RunSettings(out_dir, pause_at=pause_at))
        print(f"[{mode}] paused at section {pause_at[0] + 1}, step {pause_at[1]} -> {paused.resume_file}")

        loaded = read_resume_file(paused.resume_file)  # as another machine would
        job, _ = continue_job(loaded.state, loaded.source_image, encoders, identity=identity)
        resumed = run_job(job, transformer, RunSettings(out_dir))

        frames_ref = render_frames(reference.state, encoders.vae)
        frames_res = render_frames(resumed.state, encoders.vae)
        history_ref, history_res = reference.state.history_latents, resumed.state.history_latents
        latent_diff = (history_ref - history_res).abs().max().item()
        frame_diff = (frames_ref.int() - frames_res.int()).abs().max().item()
        same = torch.equal(history_ref, history_res) and torch.equal(frames_ref, frames_res)
        video_ref = write_mp4(frames_ref, out_dir / f"{mode}_uninterrupted.mp4")
        video_res = write_mp4(frames_res, out_dir / f"{mode}_resumed.mp4")
        print(f"[{mode}] {reference.state.plan.total_sections} sections x {params.steps} steps, "
              f"{frames_ref.shape[0]} frames {frames_ref.shape[2]}x{frames_ref.shape[1]}: "
              f"max latent difference {latent_diff}, max frame difference {frame_diff}, "
              f"{'IDENTICAL' if same else 'DIFFERENT'}")
        print(f"[{mode}] wrote {video_ref} and {video_res} ({count_frames(video_res)} frames each)")
        ok = ok and same
    print(f"goan demo: {'pause/resume is bit-identical in both modes' if ok else 'MISMATCH'} "
          f"({time.monotonic() - started:.1f} s)")
    return 0 if ok else 1
