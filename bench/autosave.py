"""Measure 1, autosave: what saving and loading a resume file costs, next to raw I/O of the same bytes.

For a synthetic job state of real FramePack shapes (history from `SectionPlan`, conditioning
512x4096 + 768 + 729x1152), at the largest autosave of the job (the boundary before its last
section), for a 60 s and a 10 s job (640x480 input -> the 544x704 bucket, backward, lws 9):

- blocked: the time the sampling thread loses per autosave, measured inside `sample_job` with the real
  `Engine` and its background writer around a stand-in transformer: the gap between the end of a step
  that finished a section and the start of the next step (state.snapshot() + writer.submit + the
  loop's own checks). The same gap after ordinary steps is the loop's baseline.
- write: `JobSaver.save` (what the writer thread runs) vs `open().write(same number of bytes)` +
  fsync, in the same folder, interleaved; throughput ratio = raw time / goan time.
- load: `read_resume_file` (all validation) vs `open().read()` of the same file, both from the
  page cache (the file was just written), interleaved.
- size: file size vs the raw bytes of the tensors it holds.
- memory: peak extra RSS during snapshot + save, in a fresh child process (so nothing earlier
  raised the high-water mark), from getrusage's ru_maxrss and cross-checked by sampling /proc
  every 0.5 ms on a thread; torch storage is plain malloc/mmap memory, so RSS sees it (tracemalloc
  would not).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image

from goan_core.jobs import AutosavePolicy, JobSaver, sample_job
from goan_core.resumefile import RetentionFolder, read_resume_file
from goan_core.sampling import Engine
from goan_core.vocabulary import FileKind

from .common import (
    CPU,
    F32,
    FakeTransformer,
    Row,
    bench_dir,
    maxrss_bytes,
    median,
    real_plan,
    rss_bytes,
    RssSampler,
    source_image_for,
    spread,
    state_tensor_bytes,
    synthetic_state,
    timed,
)

BLOCKED_LIMIT_S = 0.050
MB = 1e6


def sizes(quick: bool) -> list[tuple[str, dict]]:
    """(label, state kwargs) per state size measured."""
    if quick:
        return [("2 s @128", dict(seconds=2, resolution=128, small=True))]
    return [("60 s", dict(seconds=60)), ("10 s", dict(seconds=10))]


def make_state(seconds: float, resolution: int = 640, small: bool = False, steps: int = 25, back: int = 1):
    plan = real_plan(seconds, resolution)
    extra = dict(prompt=(16, 32), pooled=16, image=(16, 24), prompt_tokens=8) if small else {}
    return synthetic_state(plan, max(plan.total_sections - back, 0), steps=steps, **extra)


# -- blocked time inside sample_job -------------------------------------------------------------------

def blocked_in_sample_job(kwargs: dict, folder: Path, autosaves: int) -> dict:
    """Run the last `autosaves + 1` sections of a job through sample_job with 2 steps per section."""
    state = make_state(**kwargs, steps=2, back=autosaves + 1)
    engine = Engine(FakeTransformer(), CPU, F32)
    saved = threading.Event()
    gaps: list[tuple[bool, float]] = []
    last = {"exit": None, "finished": False}
    inner = engine.step

    def step(s):
        entered = time.perf_counter()
        if last["exit"] is not None:
            gaps.append((last["finished"], entered - last["exit"]))
        if last["finished"]:  # let the background write end before stepping on (outside the gap)
            saved.wait(120)
            saved.clear()
        event = inner(s)
        last["exit"], last["finished"] = time.perf_counter(), event.section_finished
        return event

    engine.step = step
    saver = JobSaver(RetentionFolder(folder, state.job_id, keep_last=2), source_image_for(state.plan))
    result = sample_job(engine, state, saver, autosave=AutosavePolicy(every_sections=1), save_finished=False,
                        on_saved=lambda path, kind: saved.set())
    if result.autosave_errors:
        raise RuntimeError(result.autosave_errors[0])
    blocked = [g for finished, g in gaps if finished]
    plain = [g for finished, g in gaps if not finished]
    return {"blocked": blocked, "plain": plain, "autosaves": len(result.autosaves)}


def snapshot_parts(state, repeats: int) -> dict:
    """Direct timing of the copy the sampler makes per autosave.

    (The hand-over to the writer thread, `BackgroundWriter.submit`, is not timed on its own: that class
    is not public in goan_core.jobs. It is inside the blocked gap measured through sample_job.)
    """
    snaps = []
    for _ in range(repeats):
        t, snap = timed(state.snapshot)
        snaps.append(t)
        del snap
    return {"snapshot_s": median(snaps), "snapshot_spread": spread(snaps)}


# -- write / load / size --------------------------------------------------------------------------------

def raw_write(path: Path, data) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def raw_read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def evict(path: Path) -> bool:
    """Drop the file's (clean, fsynced) pages from the page cache, so the next read comes from the disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def io_compare(state, folder: Path, repeats: int) -> dict:
    source = source_image_for(state.plan)
    saver = JobSaver(RetentionFolder(folder, state.job_id, keep_last=2), source)
    snap = state.snapshot()
    saver.save(snap, FileKind.AUTOSAVE)  # warm-up (folder creation, first-touch of the allocator)
    goan_w, raw_w, goan_r, raw_r, goan_c, raw_c = [], [], [], [], [], []
    path = None
    for i in range(repeats):
        t, path = timed(saver.save, snap, FileKind.AUTOSAVE)
        goan_w.append(t)
        data = raw_read(path)
        raw_path = folder / f"raw_{i}.bin"
        raw_w.append(timed(raw_write, raw_path, data)[0])
        os.unlink(raw_path)
        del data
        goan_r.append(timed(read_resume_file, path)[0])
        raw_r.append(timed(raw_read, path)[0])
        if evict(path):
            goan_c.append(timed(read_resume_file, path)[0])
            evict(path)
            raw_c.append(timed(raw_read, path)[0])
    file_bytes = path.stat().st_size
    return {"path": path, "file_bytes": file_bytes, "goan_write": goan_w, "raw_write": raw_w,
            "goan_read": goan_r, "raw_read": raw_r, "goan_cold": goan_c, "raw_cold": raw_c, "source": source}


# The breakdowns time the ingredients of a save and a load: each one the library call that does that work,
# on the bytes and tensors of the file just written, read back with zipfile and safetensors (not goan's code).
# goan's own helpers are not public and are not copied here; its validation logic (shapes, spans, masks, the
# generator state) is left out, so the parts add up to less than the end-to-end time, which is measured
# through the public write/read calls above.

STATE_MEMBER = "state.safetensors"  # the member names of a resume file (format v1)
SOURCE_MEMBER = "source_image.png"

SHA256 = "sha256 of the state bytes (hashlib)"
CRC32 = "crc32 of the state bytes (zlib)"
ZIP_READ = "zip read of the state member, crc32 checked (zipfile)"
FINITE = "NaN/Inf check, aminmax per float tensor (torch)"
HEADER = "safetensors header parse (json.loads)"
PNG_ENCODE = "png encode of the source image (PIL)"
PNG_DECODE = "png decode of the source image (PIL)"


def state_member(path: Path) -> tuple[bytes, bytes]:
    """(state.safetensors bytes, source_image.png bytes) of a resume file."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(STATE_MEMBER), archive.read(SOURCE_MEMBER)


def aminmax_all(tensors: dict[str, torch.Tensor]) -> list:
    return [torch.aminmax(t) for t in tensors.values() if t.is_floating_point() and t.numel()]


def pil_png_encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def pil_png_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        return np.asarray(image.convert("RGB"))


def json_header(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])


def write_breakdown(source, path: Path, repeats: int) -> dict:
    """Where a save's CPU time goes: the per-byte work of write_resume_file, each by its library call.

    The save streams the tensors' memory into the archive, so there is no serialisation step;
    SHA-256 runs on a second thread beside zip's CRC-32 and the write.
    """
    data, _ = state_member(path)
    tensors = safetensors.torch.load(data)
    parts = {name: [] for name in (FINITE, SHA256, CRC32, PNG_ENCODE)}
    for _ in range(repeats):
        parts[FINITE].append(timed(aminmax_all, tensors)[0])
        parts[SHA256].append(timed(hashlib.sha256, data)[0])
        parts[CRC32].append(timed(zlib.crc32, data)[0])
        parts[PNG_ENCODE].append(timed(pil_png_encode, source)[0])
    return {k: median(v) for k, v in parts.items()}


def read_breakdown(path: Path, repeats: int) -> dict:
    """Where a load's time goes: the per-byte work of read_resume_file, each by its library call."""
    parts = {name: [] for name in (ZIP_READ, SHA256, HEADER, FINITE, PNG_DECODE)}
    for _ in range(repeats):
        with zipfile.ZipFile(path) as archive:
            seconds, data = timed(archive.read, STATE_MEMBER)
            png = archive.read(SOURCE_MEMBER)
        parts[ZIP_READ].append(seconds)
        parts[SHA256].append(timed(hashlib.sha256, data)[0])
        parts[HEADER].append(timed(json_header, data)[0])
        tensors = safetensors.torch.load(data)
        parts[FINITE].append(timed(aminmax_all, tensors)[0])
        parts[PNG_DECODE].append(timed(pil_png_decode, png)[0])
        del data, tensors
    return {k: median(v) for k, v in parts.items()}


# -- memory (child process) ----------------------------------------------------------------------------

def memory_child(kwargs: dict, folder: str, what: str) -> dict:
    """Runs in a fresh process: peak RSS above the resting state during one autosave (or save only)."""
    state = make_state(**kwargs)
    saver = JobSaver(RetentionFolder(folder, state.job_id, keep_last=2), source_image_for(state.plan))
    state_bytes = state_tensor_bytes(state)
    rest, high_before = rss_bytes(), maxrss_bytes()
    with RssSampler() as sampler:
        if what == "autosave":
            snap = state.snapshot()
        else:
            snap = state
        saver.save(snap, FileKind.AUTOSAVE)
        del snap
    high_after = maxrss_bytes()
    trustworthy = high_before <= rest * 1.02 + 8 * 2**20  # the mark must not already sit above the rest
    return {"state_bytes": state_bytes, "rest": rest, "sampled_peak_extra": sampler.peak - rest,
            "maxrss_peak_extra": (high_after - rest) if trustworthy else None,
            "maxrss_before": high_before, "maxrss_after": high_after}


def memory_in_child(kwargs: dict, folder: Path, what: str) -> dict:
    code = ("import json,sys; from bench.autosave import memory_child; "
            "print(json.dumps(memory_child(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])))")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs), str(folder), what], cwd=root,
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the measure -------------------------------------------------------------------------------------

def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    repeats = repeats or (2 if quick else 5)
    rows: list[Row] = []
    for label, kwargs in sizes(quick):
        folder = bench_dir(base_dir, "autosave")
        state = make_state(**kwargs)
        raw_bytes = state_tensor_bytes(state)
        hist_mb = state.history_latents.numel() * 4 / MB
        what = (f"{label} job, {state.plan.width}x{state.plan.height}, section {state.section}/"
                f"{state.plan.total_sections}: {raw_bytes / MB:.0f} MB state, {hist_mb:.0f} MB history")

        # blocked time through sample_job, plus the direct part
        run_stats = blocked_in_sample_job(kwargs, folder / "run", repeats)
        parts = snapshot_parts(state, repeats)
        blocked = median(run_stats["blocked"])
        rows.append(Row.check(
            f"autosave: sampler blocked per autosave [{label}]", blocked, "s",
            baseline=median(run_stats["plain"]), baseline_label="loop gap without autosave",
            ratio=blocked / BLOCKED_LIMIT_S, op="<=", limit=1.0, noise=spread(run_stats["blocked"]),
            details={"state": what, "blocked_samples_s": run_stats["blocked"], "ratio_is": "blocked / 50 ms",
                     "autosaves": run_stats["autosaves"], **parts}))

        # write, load, size
        io = io_compare(state, folder / "io", repeats)
        file_mb = io["file_bytes"] / MB
        goan_w, raw_w = median(io["goan_write"]), median(io["raw_write"])
        wb = write_breakdown(io["source"], io["path"], max(1, repeats // 2))
        rows.append(Row.check(
            f"autosave: write throughput [{label}]", file_mb / goan_w, "MB/s",
            baseline=file_mb / raw_w, baseline_label="raw write+fsync", ratio=raw_w / goan_w, op=">=", limit=0.8,
            noise=spread(io["goan_write"]),
            details={"file_MB": file_mb, "goan_write_s": goan_w, "raw_write_s": raw_w, "breakdown_s": wb,
                     "goan_samples_s": io["goan_write"], "raw_samples_s": io["raw_write"]}))
        goan_r, raw_r = median(io["goan_read"]), median(io["raw_read"])
        rb = read_breakdown(io["path"], max(1, repeats // 2))
        rows.append(Row.check(
            f"autosave: load+validate [{label}]", goan_r, "s", baseline=raw_r, baseline_label="raw read",
            ratio=goan_r / raw_r, op="<=", limit=1.5, noise=spread(io["goan_read"]),
            details={"cache": "warm (page cache)", "breakdown_s": rb, "goan_samples_s": io["goan_read"],
                     "raw_samples_s": io["raw_read"]}))
        if io["goan_cold"]:
            goan_c, raw_c = median(io["goan_cold"]), median(io["raw_cold"])
            rows.append(Row.check(
                f"autosave: load+validate, cold cache [{label}]", goan_c, "s", baseline=raw_c,
                baseline_label="raw read, cold", ratio=goan_c / raw_c, op="<=", limit=1.5,
                noise=spread(io["goan_cold"]),
                details={"cache": "file evicted with posix_fadvise(DONTNEED) before each read (the VM host may "
                                  "still cache it)", "goan_samples_s": io["goan_cold"], "raw_samples_s": io["raw_cold"]}))
        rows.append(Row.check(
            f"autosave: file size [{label}]", file_mb, "MB", baseline=raw_bytes / MB,
            baseline_label="raw tensor bytes", ratio=io["file_bytes"] / raw_bytes, op="<=", limit=1.02))

        # memory, in fresh processes
        mem = memory_in_child(kwargs, folder / "mem", "autosave")
        mem_save = None if quick else memory_in_child(kwargs, folder / "mem2", "save")
        peak = mem["maxrss_peak_extra"] if mem["maxrss_peak_extra"] is not None else mem["sampled_peak_extra"]
        rows.append(Row.check(
            f"autosave: peak extra memory [{label}]", peak / MB, "MB", baseline=mem["state_bytes"] / MB,
            baseline_label="state size", ratio=peak / mem["state_bytes"],
            details={"snapshot_plus_save": mem, "save_only": mem_save,
                     "how": "fresh child process; ru_maxrss high-water mark minus resting RSS, "
                            "cross-checked by /proc/self/statm sampled every 0.5 ms"}))
        del io, state
        _rmtree(folder)
    return rows


def _rmtree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    from .common import markdown_table

    print(markdown_table(run(quick="--quick" in sys.argv)))
