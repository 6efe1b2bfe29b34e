"""Measure 8, speed options on the CPU: s/step of a tiny job for each usable attention kernel, with TeaCache
off and on, and with the transformer's blocks compiled or not.

The same tiny job (float32, lws 3, 25 steps; --quick: 8) runs under every combination, the combinations
alternating within each repeat; the value is the median process CPU time per step (one torch thread).
On a CPU only SDPA applies (flash-attn, sageattention and xformers are GPU kernels: the GPU rows of
`bench/gpu.py` time those). Compiling uses inductor; its first job also compiles, and that extra
time is reported beside (`compile_s`). --quick compiles with dynamo's "eager" backend instead (the
wiring, not inductor's kernels: the smoke test's budget has no minute for inductor). On the tiny
random model the blocks are a small part of a step, so these ratios say little about a real model.
"""

from __future__ import annotations

import sys
import time

from goan_core.errors import InputError
from goan_core.media import demo_image
from goan_core.models import ATTENTION_CHOICES, attention_applied, attention_for, compiled_blocks
from goan_core.params import JobParams
from goan_core.sampling import Engine

from .common import CPU, F32, Row, median, spread, timed_cpu, tiny_job, tiny_models


def usable_kernels(device, dtype) -> dict:
    """{word: AttentionChoice} of the explicit attention choices that can run on `device` in `dtype`."""
    usable = {}
    for word in ATTENTION_CHOICES[1:]:
        try:
            usable[word] = attention_for(word, device, dtype)
        except InputError:
            continue
    return usable


def _job_cpu(models, image, steps: int, teacache: bool, attention, compile_backend: str | None) -> float:
    """Process CPU seconds of one whole tiny job under the given options."""
    params = JobParams(prompt="a cat walks", seconds=1.2, lws=3, steps=steps, resolution=64, teacache=teacache)
    state = tiny_job(models, params, image).state
    engine = Engine(models.transformer, CPU, F32)
    model = models.transformer
    with attention_applied(model, attention), compiled_blocks(model, compile_backend is not None, CPU,
                                                              compile_backend or "inductor"):
        _, cpu, _ = timed_cpu(engine.run, state)
    return cpu / state.total_steps


def run(quick: bool = False, base_dir=None, repeats: int | None = None) -> list[Row]:
    repeats = repeats or (1 if quick else 3)
    models = tiny_models()
    image = demo_image(64, 64)
    steps = 8 if quick else 25
    backend = "eager" if quick else "inductor"
    kernels = usable_kernels(CPU, F32)
    combos = [(word, teacache, compiled)
              for word in kernels for compiled in (False, True) for teacache in (False, True)]
    compile_s = {}
    for word, teacache, compiled in combos:  # warm-up (and, compiled, the compile) of every combination
        start = time.perf_counter()
        _job_cpu(models, image, steps, teacache, kernels[word], backend if compiled else None)
        compile_s[(word, teacache, compiled)] = time.perf_counter() - start
    samples = {combo: [] for combo in combos}
    for _ in range(repeats):
        for word, teacache, compiled in combos:
            samples[(word, teacache, compiled)].append(
                _job_cpu(models, image, steps, teacache, kernels[word], backend if compiled else None))
    rows = []
    for word in kernels:
        base = median(samples[(word, False, False)])
        for compiled in (False, True):
            for teacache in (False, True):
                value = median(samples[(word, teacache, compiled)])
                label = (f"speed: s/step [tiny, CPU, {word}, TeaCache {'on' if teacache else 'off'}, "
                         f"{'compiled (' + backend + ')' if compiled else 'not compiled'}]")
                details = {"steps": steps, "samples_s": samples[(word, teacache, compiled)]}
                if compiled:
                    details["compile_s"] = max(0.0, compile_s[(word, teacache, compiled)]
                                                - compile_s[(word, teacache, False)])
                first = not (teacache or compiled)
                rows.append(Row(label, value, "s", baseline=None if first else base,
                                baseline_label="" if first else f"{word}, TeaCache off, not compiled",
                                ratio=None if first else value / base,
                                noise=spread(samples[(word, teacache, compiled)]), details=details))
    return rows


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
