"""Measure 7, TeaCache: model calls executed and CPU time with TeaCache on vs off, at FramePack's defaults.

The same tiny job (CPU, float32, 25 steps, UniPC, cfg 1, threshold 0.15) runs with TeaCache off and on,
alternating; "executed" counts the calls whose transformer blocks ran (calls minus those TeaCache
skipped). The CPU-time ratio is on/off, the median of the per-pair ratios; on the tiny random model
the blocks are a small part of a call, so the ratio says little about real-size models (see the
GPU rows for those). Exactness of pause/resume with TeaCache on is checked by tests/test_teacache.py.
"""

from __future__ import annotations

from goan_core.media import demo_image
from goan_core.params import JobParams
from goan_core.sampling import Engine

from .common import CPU, F32, Row, median, spread, timed_cpu, tiny_job, tiny_models


def _run(models, image, steps: int, teacache: bool) -> tuple[float, Engine]:
    params = JobParams(prompt="a cat walks", seconds=1.2 if steps < 25 else 2.0, lws=3, steps=steps,
                       resolution=64, teacache=teacache, teacache_threshold=0.15)
    job = tiny_job(models, params, image)
    engine = Engine(models.transformer, CPU, F32)
    _, cpu, _ = timed_cpu(engine.run, job.state)
    return cpu, engine


def run(quick: bool = False, base_dir=None, repeats: int | None = None) -> list[Row]:
    repeats = repeats or (3 if quick else 5)
    models = tiny_models()
    image = demo_image(64, 64)
    steps = 8 if quick else 25
    pairs = []
    for _ in range(repeats):
        off = _run(models, image, steps, False)
        on = _run(models, image, steps, True)
        pairs.append((off, on))
    calls = pairs[0][0][1].model_calls
    executed = calls - pairs[0][1][1].skipped_calls
    ratios = [on[0] / off[0] for off, on in pairs]
    return [Row("teacache: model calls executed, on vs off (tiny, CPU, threshold 0.15)", float(executed), "calls",
                baseline=float(calls), baseline_label="TeaCache off", ratio=executed / calls,
                details={"steps": steps, "skipped": calls - executed}),
            Row("teacache: CPU time on/off (tiny, CPU)", median(p[1][0] for p in pairs), "s",
                baseline=median(p[0][0] for p in pairs), baseline_label="TeaCache off", ratio=median(ratios),
                noise=spread([p[1][0] for p in pairs]))]
