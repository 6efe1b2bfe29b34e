"""Measure 3, pause latency: from a pause request, sent from another thread at a random moment, to the
resume file on disk (written, fsynced and renamed: `Saver.save` has returned).

- tiny: the tiny models run a real job through `sample_job`; the request lands at a uniformly random
  moment of the run. Latency in seconds and in steps (steps that still started after the request:
  the sampler only looks at requests between steps, so the step in progress always finishes; no
  new step should start, so this is 0).
- real size: a 60 s 640x480 backward job near its end (the largest state, 188 MB with embeddings)
  stepped by the real Engine around a stand-in transformer that takes `STEP_S` per call (a sleep,
  as a GPU-bound step would leave the CPU free), autosave after every section: the request may
  land during a step, or while an autosave is being written (a pause first waits for it).
The time of a step is the model's; what goan adds is the save, which the rows break out.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

from goan_core.jobs import AutosavePolicy, JobControl, JobSaver, sample_job
from goan_core.media import demo_image
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder
from goan_core.sampling import Engine
from goan_core.vocabulary import FileKind, Status

from .autosave import make_state
from .common import (CPU, F32, FakeTransformer, Row, bench_dir, median, source_image_for, tiny_job,
                     tiny_models)

STEP_S = 0.25


class _TimedSaver:
    """A JobSaver that records when each file is complete on disk."""

    def __init__(self, inner: JobSaver):
        self.inner = inner
        self.done_at: dict[FileKind, float] = {}
        self.save_s: dict[FileKind, float] = {}

    def save(self, snapshot, kind):
        start = time.perf_counter()
        path = self.inner.save(snapshot, kind)
        self.done_at[kind] = time.perf_counter()
        self.save_s[kind] = self.done_at[kind] - start
        return path


def _one(make, engine, folder: Path, window: float, rng: random.Random, autosave) -> dict:
    state, source = make()
    saver = _TimedSaver(JobSaver(RetentionFolder(folder, state.job_id, keep_last=2), source))
    control = JobControl()
    steps = {"started": 0}
    inner = engine.step

    def step(s):
        steps["started"] += 1
        return inner(s)

    engine.step = step
    request = {}

    def pauser():
        time.sleep(rng.uniform(0.0, window))
        request["at"], request["steps"] = time.perf_counter(), steps["started"]
        control.request_pause()

    thread = threading.Thread(target=pauser)
    thread.start()
    result = sample_job(engine, state, saver, control=control, autosave=autosave, save_finished=False)
    thread.join()
    engine.step = inner
    if result.status != Status.PAUSED or not result.resume_file.is_file():
        return {}
    return {"latency_s": saver.done_at[FileKind.PAUSE] - request["at"], "save_s": saver.save_s[FileKind.PAUSE],
            "steps_after_request": steps["started"] - request["steps"]}


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    repeats = repeats or (2 if quick else 8)
    rng = random.Random(2026)
    folder = bench_dir(base_dir, "pause")
    rows = []

    # tiny models, real engine
    models = tiny_models()
    params = JobParams(prompt="a sunset over the sea", seconds=(2 if quick else 4) * 12 / 30, lws=3,
                       steps=3 if quick else 6, mode="backward", resolution=64, seed=5)
    image = demo_image()

    def make_tiny():
        job = tiny_job(models, params, image)
        return job.state, job.source_image

    engine = Engine(models.transformer, CPU, F32)
    state, _ = make_tiny()
    t0 = time.perf_counter()
    engine.run(state)
    job_s = time.perf_counter() - t0
    step_s = job_s / state.total_steps
    got = [r for r in (_one(make_tiny, Engine(models.transformer, CPU, F32), folder, job_s * 0.9, rng, None)
                       for _ in range(repeats)) if r]
    rows.append(_row("tiny models", got, step_s, repeats))

    # real-size state, stand-in transformer
    kwargs = dict(seconds=2, resolution=128, small=True) if quick else dict(seconds=60)

    def make_real():
        s = make_state(**kwargs, steps=4, back=3)
        return s, source_image_for(s.plan)

    fake = Engine(FakeTransformer(delay=STEP_S), CPU, F32)
    window = 3 * 4 * STEP_S * 0.8
    got = [r for r in (_one(make_real, fake, folder, window, rng, AutosavePolicy(every_sections=1))
                       for _ in range(repeats)) if r]
    rows.append(_row(f"{'2 s @128' if quick else '60 s 640x480'} state, {STEP_S:g} s steps, autosave on",
                     got, STEP_S, repeats))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return rows


def _row(label: str, got: list[dict], step_s: float, repeats: int) -> Row:
    if not got:
        return Row(f"pause: request to file on disk [{label}]", None, "s", skipped="the job ended before every pause")
    lat = [g["latency_s"] for g in got]
    steps_after = [g["steps_after_request"] for g in got]
    save = median([g["save_s"] for g in got])
    return Row(f"pause: request to file on disk [{label}; steps started after the request: max {max(steps_after)}]",
               median(lat), "s", baseline=step_s + save,
               baseline_label="one step + the pause save", ratio=median(lat) / (step_s + save),
               target="", met=None,
               details={"latency_samples_s": lat, "max_latency_s": max(lat), "steps_started_after_request": steps_after,
                        "max_steps_after_request": max(steps_after), "step_s": step_s, "pause_save_s": save,
                        "pauses_measured": len(got), "pauses_tried": repeats})


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
