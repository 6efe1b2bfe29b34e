"""`python -m goan_core demo`: the promise, shown end to end on the tiny built-in models.

For each mode: generate a video without interruption; generate it again but pause in the middle of
a section, which writes a `.goan_resume` file; read that file back (as another machine would) and
resume; then compare the final latents and every decoded frame with the uninterrupted run (what goan
proves: the frames it hands to the encoder are torch.equal). Both videos are written with the
deterministic encode (`--deterministic-video`), so identical frames also give byte-identical MP4 files,
which the demo checks and prints.
"""

from __future__ import annotations

import hashlib
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
        video_ref = write_mp4(frames_ref, out_dir / f"{mode}_uninterrupted.mp4", deterministic=True)
        video_res = write_mp4(frames_res, out_dir / f"{mode}_resumed.mp4", deterministic=True)
        digest_ref, digest_res = (hashlib.sha256(video.read_bytes()).hexdigest() for video in (video_ref, video_res))
        same_bytes = digest_ref == digest_res
        print(f"[{mode}] {reference.state.plan.total_sections} sections x {params.steps} steps, "
              f"{frames_ref.shape[0]} frames {frames_ref.shape[2]}x{frames_ref.shape[1]}: "
              f"max latent difference {latent_diff}, max frame difference {frame_diff}, "
              f"{'IDENTICAL' if same else 'DIFFERENT'}")
        print(f"[{mode}] wrote {video_ref} and {video_res} ({count_frames(video_res)} frames each, deterministic "
              f"encode): {'BYTE-IDENTICAL' if same_bytes else 'DIFFERENT BYTES'} (sha256 {digest_ref[:16]}"
              f"{'' if same_bytes else ' vs ' + digest_res[:16]})")
        ok = ok and same and same_bytes
    verdict = "pause/resume is bit-identical in both modes (latents, frames and MP4 bytes)" if ok else "MISMATCH"
    print(f"goan demo: {verdict} ({time.monotonic() - started:.1f} s)")
    return 0 if ok else 1
