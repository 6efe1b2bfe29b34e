"""Measure 2, resume cost: a job of n sections paused after k sections and resumed, vs the full run.

With the tiny models on the CPU. The full run costs S (sampling all n sections) + D (decoding the
finished history once, `render_frames`). A run resumed after k sections costs L (read and validate
the resume file) + the sampling of the n - k sections left + D. Sections cost the same (same
transformer input sizes in every section), so the expected ratio, built from parts measured in the
same run, is

    expected(k) = (L + (n - k) / n * S + D) / (S + D)

and the target is measured(k) / expected(k) within 10% of 1. The runs go in cycles (a full run,
then each resumed run), each resumed run is compared with its own cycle's full run, and the table
shows medians over the cycles. The headline uses process CPU time (one torch thread, so the
computation runs on the calling thread): on a shared machine the wall time of the same run varied
by 2x while its CPU time did not; the wall-time figures are in results.json beside it. With the tiny models the VAE decode is most of a run (the tiny
transformer is cheap, the CPU Conv3d decode is not), unlike real FramePack where sampling dominates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from goan_core.jobs import JobSaver, render_frames, sample_job
from goan_core.media import demo_image
from goan_core.models import VAE
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder, read_resume_file
from goan_core.sampling import Engine, section_count

from .common import CPU, F32, Row, bench_dir, median, spread, timed_cpu, tiny_job, tiny_models


def config(quick: bool) -> dict:
    if quick:
        return dict(sections=3, lws=2, steps=2, resolution=64, ks=(1, 2))
    return dict(sections=6, lws=3, steps=8, resolution=64, ks=(2, 3, 5))


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    cfg = config(quick)
    repeats = repeats or (1 if quick else 5)
    n, lws = cfg["sections"], cfg["lws"]
    seconds = n * lws * 4 / 30
    params = JobParams(prompt="a sunset over the sea", seconds=seconds, lws=lws, steps=cfg["steps"],
                       mode="backward", resolution=cfg["resolution"], seed=7)
    models = tiny_models()
    image = demo_image()
    folder = bench_dir(base_dir, "resume")
    assert section_count(seconds, lws) == n

    vae = VAE(models.vae, CPU, F32)

    def fresh(job_id):
        job = tiny_job(models, params, image, job_id=job_id)
        return job.state, job.source_image

    # resume files: one per k, made once (the pause itself is not part of the resumed run's cost)
    files = {}
    for k in cfg["ks"]:
        state, source = fresh(f"bench-resume-k{k}")
        files[k] = sample_job(Engine(models.transformer, CPU, F32), state,
                              JobSaver(RetentionFolder(folder, state.job_id), source), pause_at=(k, 0)).resume_file

    def full():
        state, source = fresh("bench-full")
        *s, _ = timed_cpu(sample_job, Engine(models.transformer, CPU, F32), state,
                          JobSaver(RetentionFolder(folder, state.job_id), source), save_finished=False)
        *d, _ = timed_cpu(render_frames, state, vae)
        return s, d  # each (wall s, cpu s)

    def resumed(k):
        *l, data = timed_cpu(read_resume_file, files[k])
        *s, _ = timed_cpu(sample_job, Engine(models.transformer, CPU, F32), data.state,
                          JobSaver(RetentionFolder(folder, data.state.job_id, keep_last=1), data.source_image),
                          save_finished=False)
        *d, _ = timed_cpu(render_frames, data.state, vae)
        return l, s, d

    if not quick:
        full()  # warm-up
    # Cycles of (full run, then each resumed run): every resumed run is compared with the full run of
    # its own cycle, so a change in the machine's load between cycles does not skew the ratios.
    cycles = []
    for _ in range(repeats):
        s_full, d_full = full()
        cycles.append({"S": s_full, "D": d_full, **{k: resumed(k) for k in cfg["ks"]}})
    rows = []
    for k in cfg["ks"]:
        by_clock = {}
        for clock, name in ((1, "cpu"), (0, "wall")):
            measured, expected, agreement = [], [], []
            for c in cycles:
                l, s, d = (part[clock] for part in c[k])
                S, D = c["S"][clock], c["D"][clock]
                measured.append((l + s + d) / (S + D))
                expected.append((l + (n - k) / n * S + D) / (S + D))
                agreement.append(measured[-1] / expected[-1])
            by_clock[name] = {
                "measured": median(measured), "expected": median(expected), "agreement": median(agreement),
                "S_full_sampling_s": median([c["S"][clock] for c in cycles]),
                "D_decode_s": median([c["D"][clock] for c in cycles]),
                "L_load_s": median([c[k][0][clock] for c in cycles]),
                "remaining_sampling_s": median([c[k][1][clock] for c in cycles]),
                "resumed_decode_s": median([c[k][2][clock] for c in cycles]),
                "measured_per_cycle": measured, "expected_per_cycle": expected}
        cpu = by_clock["cpu"]
        rows.append(Row.check(
            f"resume: n={n} resumed after k={k}, cost vs full run (CPU time)", cpu["measured"], "x",
            baseline=cpu["expected"], baseline_label="expected (L + (n-k)/n*S + D)/(S+D)",
            ratio=cpu["agreement"], op="within", limit=0.10,
            noise=spread([c[k][1][1] + c[k][2][1] for c in cycles]),
            details={"n": n, "k": k, "naive_(n-k)/n": (n - k) / n,
                     "decode_share_of_full": cpu["D_decode_s"] / (cpu["S_full_sampling_s"] + cpu["D_decode_s"]),
                     "cpu_time": cpu, "wall_time": by_clock["wall"],
                     "params": params.to_dict() | {"prompt": "..."}}))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return rows


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
