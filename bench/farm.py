"""Measure 8, the render farm (`python -m goan_core farm run`) on a local Ray with 2 CPUs and the tiny models.

- scaling: the same four jobs with one worker and with two; the wall time of the whole `farm run`
  (worker processes started, models loaded once per worker, jobs sampled, videos written). With
  the tiny models a worker's start (importing torch, diffusers and transformers) is a large part of
  it, so the ratio understates what two GPUs do for real jobs, where sampling dominates.
- kill: one job whose worker is killed (SIGKILL) mid-section after its first autosave; Ray restarts
  the worker and retries the job, which continues from its newest autosave. The work lost is the
  model calls made twice (all attempts' calls, from the store's state.json, minus one full run's),
  as a share of a restart from zero (one full run); the target is the autosave interval's share
  (autosave every section: 1/sections).
Skipped when Ray is not installed (`pip install 'goan[farm]'`).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from PIL import Image

from goan_core.cli import main
from goan_core.farm import Store, connect
from goan_core.media import demo_image

from .common import Row, bench_dir


def config(quick: bool) -> dict:
    return {"sections": 3 if quick else 4, "steps": 8 if quick else 12, "lws": 3, "resolution": 64}


def _job(job_id: str, cfg: dict, seed: int) -> dict:
    return {"id": job_id, "image": "in.png", "prompt": "a sunset over the sea", "seed": seed,
            "seconds": cfg["sections"] * cfg["lws"] * 4 / 30, "lws": cfg["lws"], "steps": cfg["steps"],
            "resolution": cfg["resolution"]}


def _farm_run(folder: Path, name: str, jobs: list[dict], *extra: str) -> tuple[float, Store]:
    jobs_file = folder / f"{name}.jsonl"
    jobs_file.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    store = Store(folder / name)
    start = time.perf_counter()
    code = main(["farm", "run", str(jobs_file), "--store", str(store.root), "--tiny", *extra])
    if code != 0:
        raise RuntimeError(f"farm run {name} failed: see python -m goan_core farm status --store {store.root}")
    return time.perf_counter() - start, store


def _killed_run(folder: Path, cfg: dict) -> dict:
    """One job, its worker killed mid-section after the first autosave; its state.json afterwards."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(run=_farm_run(folder, "kill", [_job("k", cfg, 9)],
                                                                         "--workers", "1")))
    thread.start()
    state_file = Store(folder / "kill").job("k").state_file
    while thread.is_alive():
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        if (state.get("state") == "running" and state.get("newest_kind") == "autosave"
                and state["steps_done"] % cfg["steps"] and state["steps_done"] < state["total_steps"] - cfg["steps"]):
            os.kill(state["pid"], signal.SIGKILL)
            break
        time.sleep(0.01)
    thread.join()
    if "run" not in result:
        raise RuntimeError("the killed farm run failed")
    state = result["run"][1].job("k").state()
    if len(state["attempts"]) < 2:
        raise RuntimeError("the job ended before its worker could be killed mid-section")
    return state


def _sampling_span(store: Store) -> float:
    """Seconds from the first job's start (models loaded) to the last job's end: the farm's work without its
    workers' start-up."""
    states = [folder.state() for folder in store.jobs()]
    return (max(state["updated_at"] for state in states)
            - min(attempt["started_at"] for state in states for attempt in state["attempts"]))


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    try:
        import ray
    except ImportError:
        return [Row("farm: four jobs, two workers vs one", None, "", skipped="Ray is not installed (goan[farm])"),
                Row("farm: work lost to a killed worker", None, "", skipped="Ray is not installed (goan[farm])")]
    cfg = config(quick)
    folder = bench_dir(base_dir, "farm")
    Image.fromarray(demo_image()).save(folder / "in.png")
    label = f"tiny 64 px, {cfg['sections']} sections x {cfg['steps']} steps"
    started = connect("local", num_cpus=2)
    try:
        jobs = [_job(f"j{i}", cfg, i) for i in range(4)]
        one, one_store = _farm_run(folder, "one", jobs, "--workers", "1")
        two, two_store = _farm_run(folder, "two", jobs, "--workers", "2")
        state = _killed_run(folder, cfg)
    finally:
        if started:
            ray.shutdown()
    full = state["total_steps"]  # cfg 1: one model call per step
    calls = [attempt["model_calls"] for attempt in state["attempts"]]
    redone = sum(calls) - full
    span_one, span_two = _sampling_span(one_store), _sampling_span(two_store)
    return [
        Row(f"farm: four jobs, wall of `farm run` with two workers [{label}]", two, "s", baseline=one,
            baseline_label="one worker", ratio=two / one, details={"jobs": 4, "config": cfg, "cpus": 2}),
        Row(f"farm: four jobs, first start to last end (workers' start-up left out), two workers [{label}]",
            span_two, "s", baseline=span_one, baseline_label="one worker", ratio=span_two / span_one),
        Row.check(f"farm: work lost to a killed worker (model calls redone / a restart's) [{label}]", redone,
                  "calls", baseline=full, baseline_label="calls of a restart from zero", ratio=redone / full,
                  op="<=", limit=1 / cfg["sections"],
                  details={"calls_per_attempt": calls, "resumed_from": state["attempts"][-1].get("from_kind")}),
    ]
