"""What every benchmark shares: timing with medians, result rows, the table and results.json, machine info,
the tiny models, and synthetic job states of real FramePack shapes.

A measure returns `Row`s. Each row holds one number (`value`), the baseline it is compared with
(measured in the same run, side by side), their `ratio`, the target the ratio is held to, and the
spread of the repeats (`noise`: max/min of the timed repeats) so a reader can see how steady the
machine was.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from goan_core.jobs import Job, create_job, goan_encoders
from goan_core.media import bucket_options, demo_image, nearest_bucket
from goan_core.models import Transformer, default_tiny_root, load_model_set, write_tiny_models
from goan_core.params import JobParams
from goan_core.sampling import LATENT_CHANNELS, Conditioning, JobState, SamplerState, SectionPlan, section_count

CPU, F32 = torch.device("cpu"), torch.float32

# FramePack's real conditioning shapes: Llama hidden state cropped/padded to 512 tokens x 4096,
# CLIP pooled 768, SigLIP last hidden state 729 x 1152 (flux_redux_bfl's image encoder).
REAL_PROMPT = (512, 4096)
REAL_POOLED = 768
REAL_IMAGE = (729, 1152)


# == timing =========================================================================================

def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> float:
    """max/min of the repeats: 1.0 is perfectly steady."""
    values = [v for v in values if v > 0]
    return float(max(values) / min(values)) if values else float("nan")


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def timed_cpu(fn: Callable, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result). On a shared machine the CPU time of a single-threaded
    computation is steady where the wall time is not: time spent descheduled is not counted."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def repeat(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times (s) of `repeats` calls of `fn`."""
    return [timed(fn)[0] for _ in range(repeats)]


# == results ========================================================================================

@dataclass
class Row:
    """One line of the table and one entry of results.json."""

    measure: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    target: str = ""  # e.g. "<= 1.0"; empty when the row only reports
    met: bool | None = None
    noise: float | None = None  # max/min over repeats of the headline timing
    details: dict = field(default_factory=dict)
    skipped: str = ""

    @classmethod
    def check(cls, measure, value, unit, *, baseline=None, baseline_label="", ratio=None, op=None, limit=None,
              noise=None, details=None) -> "Row":
        """A row whose ratio is held to `op limit` (op one of "<=", ">=", "within")."""
        target, met = "", None
        if op is not None and ratio is not None:
            if op == "<=":
                target, met = f"<= {limit:g}", ratio <= limit
            elif op == ">=":
                target, met = f">= {limit:g}", ratio >= limit
            elif op == "within":
                target, met = f"within {limit:.0%} of 1", abs(ratio - 1.0) <= limit
        return cls(measure, value, unit, baseline, baseline_label, ratio, target, met, noise, details or {})


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "n/a"
    if unit == "s" and abs(value) < 1.0:
        return f"{value * 1000:.1f} ms"
    if unit in ("MB", "MB/s", "GB", "s", "s/frame", "ms", "steps", "x") or isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{text} {unit}".strip()
    return f"{value} {unit}".strip()


def markdown_table(rows: list[Row]) -> str:
    lines = ["| measure | value | baseline | ratio | target | met? |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.measure} | skipped: {r.skipped} | - | - | {r.target or '-'} | - |")
            continue
        baseline = _fmt(r.baseline, r.unit)
        if r.baseline_label:
            baseline = f"{baseline} ({r.baseline_label})" if r.baseline is not None else r.baseline_label
        ratio = "-" if r.ratio is None else f"{r.ratio:.3g}"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.measure} | {_fmt(r.value, r.unit)} | {baseline} | {ratio} | {r.target or '-'} | {met} |")
    return "\n".join(lines)


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def write_results(rows: list[Row], path: Path, info: dict, elapsed: float, quick: bool) -> None:
    data = {"machine": info, "quick": quick, "elapsed_s": round(elapsed, 1),
            "measures": [_jsonable(asdict(r)) for r in rows]}
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if value != value or value in (float("inf"), float("-inf")) else round(value, 6)
    return str(value)


# == memory ========================================================================================

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc; psutil elsewhere if installed)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:
            return None


def maxrss_bytes() -> int:
    """The process's RSS high-water mark (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class RssSampler:
    """Samples the RSS every `interval` seconds on a thread; `peak` is the highest sample."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.peak = rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() or 0)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)


# == tiny models =====================================================================================

_TINY = None


def tiny_models():
    """The tiny model set, float32 on the CPU: written once to the tiny root ($GOAN_TINY_DIR or ~/.cache,
    as `python -m goan_core demo` does) and loaded through the real loaders once per process."""
    global _TINY
    if _TINY is None:
        _TINY = load_model_set(write_tiny_models(default_tiny_root()), dtype=F32)
    return _TINY


def tiny_job(models, params: JobParams, image: np.ndarray, job_id: str | None = None) -> Job:
    """A new job at section 0 on the CPU in float32 (`job.state`, `job.source_image`)."""
    encoders = goan_encoders(models, CPU, F32)
    return create_job(params, image, encoders, identity=Transformer(models.transformer, CPU, F32).identity(),
                      job_id=job_id)


# == synthetic real-size states ======================================================================

def real_plan(seconds: float, resolution: int = 640, image_hw=(480, 640), lws: int = 9,
              mode: str = "backward") -> SectionPlan:
    height, width = nearest_bucket(*image_hw, resolution)
    return SectionPlan(mode, lws, section_count(seconds, lws), height, width)


def synthetic_state(plan: SectionPlan, section: int, *, step: int = 0, outputs: int = 0, seed: int = 0,
                    prompt=REAL_PROMPT, pooled=REAL_POOLED, image=REAL_IMAGE, prompt_tokens: int = 120,
                    steps: int = 25) -> JobState:
    """A JobState of the plan's real shapes at `section` (boundary when step == 0), random finite values.

    Tensors are allocated once with their final size (no temporaries), so building one does not
    leave a high-water mark above the state itself.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        out = torch.empty(*shape, dtype=torch.float32)
        out.normal_(generator=gen)
        return out

    h, w = plan.latent_height, plan.latent_width
    history = randn(1, LATENT_CHANNELS, plan.history_frames_after(section), h, w)
    mask = torch.zeros(1, prompt[0], dtype=torch.bool)
    mask[:, :prompt_tokens] = True
    conditioning = Conditioning(randn(1, *prompt), mask, randn(1, pooled), randn(1, *image))
    sampler = None
    if step > 0:
        sampler = SamplerState(randn(*plan.noise_shape()), step, [randn(*plan.noise_shape()) for _ in range(outputs)])
    seconds = plan.total_sections * plan.lws * 4 / 30
    params = JobParams(prompt="a benchmark", seconds=seconds, lws=plan.lws, steps=steps, mode=plan.mode,
                       resolution=bucket_resolution(plan))
    return JobState(job_id=f"bench-{plan.total_sections}s{section}", params=params, plan=plan,
                    conditioning=conditioning, start_latent=randn(1, LATENT_CHANNELS, 1, h, w),
                    history_latents=history, generator_state=torch.Generator().manual_seed(seed).get_state(),
                    section=section, sampler=sampler)


def bucket_resolution(plan) -> int:
    """The smallest `resolution` setting whose buckets hold the plan's frame size (what a real job had)."""
    return next(r for r in range(64, 2049, 16) if (plan.height, plan.width) in bucket_options(r))


def state_tensor_bytes(state: JobState, with_embeddings: bool = True) -> int:
    tensors = [state.history_latents, state.start_latent, state.generator_state]
    if state.sampler is not None:
        tensors += [state.sampler.x, *state.sampler.model_outputs]
    if with_embeddings and state.conditioning is not None:
        tensors += list(state.conditioning.tensors().values())
    return sum(t.numel() * t.element_size() for t in tensors)


def source_image_for(plan: SectionPlan) -> np.ndarray:
    """A smooth synthetic picture at the plan's frame size (PNG-compressible like a photo, not noise)."""
    return demo_image(plan.height, plan.width)


class FakeTransformer(torch.nn.Module):
    """Stands in for the FramePack transformer where only the engine around it is measured.

    Returns a zero velocity of the input's shape after `delay` seconds (a sleep, so it leaves the
    CPU to the writer thread as a GPU-bound model would); counts its calls.
    """

    class _Config:
        patch_size = 2

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.config = self._Config()
        self.delay = delay
        self.calls = 0

    def forward(self, hidden_states, **kwargs):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return (torch.zeros_like(hidden_states),)


def count_calls(module, method: str = "forward") -> dict:
    """Wrap `module.<method>` to count calls and sum their wall time; returns the live counter dict."""
    counter = {"calls": 0, "seconds": 0.0, "cpu": 0.0}
    inner = getattr(module, method)

    def forward(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            counter["calls"] += 1
            counter["seconds"] += time.perf_counter() - start
            counter["cpu"] += time.process_time() - cpu

    setattr(module, method, forward)
    return counter


def uncount_calls(module, method: str = "forward") -> None:
    """Undo `count_calls` (the wrapper lives in the instance's __dict__)."""
    module.__dict__.pop(method, None)


def bench_dir(base: Path | None, name: str) -> Path:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"goan-bench-{name}-", dir=base))
    return root
