"""Running a job with pause, stop, autosave and fail-safe saves around `Engine.step`.

The sampling thread only ever does three things besides stepping: check the `JobControl`, copy the
state for an autosave (the write itself runs on a background thread), and, when it must stop, write
the resume file of the last consistent state. Any exception inside the loop (Ctrl-C, ComfyUI's
cancel, out-of-memory, a bug) first writes a fail-safe file, then propagates unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..errors import add_note
from ..models import (COMPILE_BACKEND, SDPA, AttentionChoice, DEFAULT_GPU_MEMORY_PRESERVATION, attention_applied,
                      compiled_blocks, placed, section_tokens)
from ..resumefile import RetentionFolder
from ..sampling import Engine, JobState, StepCallback, StepEvent
from ..vocabulary import FileKind, Status
from .control import JobControl

log = logging.getLogger("goan")

SavedCallback = Callable[[Path, FileKind], None]


class Saver(Protocol):
    """Writes the resume files of one job."""

    def save(self, snapshot: JobState, kind: FileKind) -> Path: ...


@dataclass
class JobSaver:
    """The Saver of one job: its retention folder plus what every file of it carries.

    `run` is job_info's informational "run" field: how this run computes (attention, compile).
    """

    folder: RetentionFolder
    source_image: np.ndarray
    workflow: dict | None = None
    include_embeddings: bool = True
    run: dict | None = None

    def save(self, snapshot: JobState, kind: FileKind) -> Path:
        return self.folder.save(snapshot, source_image=self.source_image, workflow=self.workflow,
                                include_embeddings=self.include_embeddings, kind=kind, run=self.run)


@dataclass
class AutosavePolicy:
    """Autosave every `every_sections` finished sections and/or every `every_minutes`; 0 turns either off."""

    every_sections: int = 1
    every_minutes: float = 0.0

    def due(self, event: StepEvent, since_last: float) -> bool:
        by_section = (self.every_sections > 0 and event.section_finished
                      and (event.section + 1) % self.every_sections == 0)
        by_time = self.every_minutes > 0 and since_last >= self.every_minutes * 60.0
        return by_section or by_time


@dataclass
class RunResult:
    """How a run ended: FINISHED, PAUSED or STOPPED, the file of that end, and the autosaves on the way."""

    state: JobState
    status: Status
    resume_file: Path | None = None
    autosaves: list[Path] = field(default_factory=list)
    autosave_errors: list[str] = field(default_factory=list)


class BackgroundWriter:
    """One thread that writes autosaves; if it is still busy, a newer snapshot replaces a waiting one."""

    def __init__(self, saver: Saver, on_saved: Callable[[Path], None], on_failed: Callable[[str], None]):
        self._saver, self._on_saved, self._on_failed = saver, on_saved, on_failed
        self._cond = threading.Condition()
        self._pending: JobState | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="goan-autosave", daemon=True)
        self._thread.start()

    def submit(self, snapshot: JobState) -> None:
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                snapshot, self._pending, self._busy = self._pending, None, True
            try:
                self._on_saved(self._saver.save(snapshot, FileKind.AUTOSAVE))
            except Exception as error:  # an autosave must never stop generation: report and go on
                self._on_failed(f"autosave failed, generation goes on: {error}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every submitted snapshot has been written (or has failed)."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


def sample_job(engine: Engine, state: JobState, saver: Saver, *, control: JobControl | None = None,
               autosave: AutosavePolicy | None = None, callback: StepCallback | None = None,
               pause_at: tuple[int, int] | None = None, save_finished: bool = True,
               on_saved: SavedCallback | None = None,
               gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION,
               accelerator=None, attention: AttentionChoice = SDPA, compile: bool = False,
               compile_backend: str = COMPILE_BACKEND) -> RunResult:
    """Step `state` to the end, or until a pause/stop request; write resume files as asked.

    `pause_at=(section, step)` requests a pause when the job reaches that point (for tests, demos
    and scripted runs). A request that arrives during the last step is honoured too: the run ends
    PAUSED (or STOPPED) with a file of that kind holding the finished state, because the front end
    already told the user the job is pausing. A finished job also gets a "finished" file when `save_finished` is set, so
    a forward (f1) video can be extended later. Returns the result; exceptions propagate after a
    fail-safe save. `on_saved(path, kind)` hears of every file written, autosaves (from the
    writer thread) included.

    The transformer is placed on the engine's device under `gpu_memory_preservation` (GB kept free;
    blocks that do not fit stream per forward pass, see `models.offload`) and is back on the CPU
    afterwards, exceptions included; `accelerator` replaces the device (the counting fake of tests).
    For the run, `attention` is diffusers' active attention backend (`models.attention`) and, with
    `compile`, the transformer's blocks run compiled by `compile_backend` (`models.compilation`);
    both are undone when it ends.
    """
    control = control or JobControl()
    result = RunResult(state, Status.FINISHED)

    def save(snapshot: JobState, kind: FileKind) -> Path:
        path = saver.save(snapshot, kind)
        if on_saved is not None:
            on_saved(path, kind)
        return path

    def autosaved(path: Path) -> None:
        result.autosaves.append(path)
        if on_saved is not None:
            on_saved(path, FileKind.AUTOSAVE)

    def failed(message: str) -> None:
        result.autosave_errors.append(message)
        log.warning("goan: %s", message)

    writer = BackgroundWriter(saver, autosaved, failed) if autosave is not None else None
    try:
        tokens = section_tokens(state.plan, getattr(engine.transformer.config, "patch_size", 2))
        model = engine.transformer
        with placed(model, engine.device, gpu_memory_preservation, compute_dtype=engine.dtype, tokens=tokens,
                    accelerator=accelerator), attention_applied(model, attention), compiled_blocks(
                        model, compile, engine.device, compile_backend):  # all undone afterwards, even after OOM
            return _step_until_done(engine, state, save, control, result, writer, autosave, callback,
                                    pause_at, save_finished)
    except BaseException as error:
        if writer is not None:
            writer.flush()
        try:
            path = save(state.snapshot(), FileKind.FAILSAFE)
        except Exception as save_error:
            add_note(error, f"goan: the fail-safe resume file could not be written: {save_error}")
            log.warning("goan: %s interrupted the job and its fail-safe resume file could not be written: %s",
                        type(error).__name__, save_error)
        else:
            result.resume_file = path
            add_note(error, f"goan: progress saved to {path}; resume it with `python -m goan_core resume {path}` "
                            "or drop it on ComfyUI")
            log.warning("goan: %s interrupted the job; progress saved to %s", type(error).__name__, path)
        raise
    finally:
        if writer is not None:
            writer.close()
        state.release_device()  # the GPU holds nothing of the job once the run ends


def _step_until_done(engine, state, save, control, result, writer, autosave, callback, pause_at,
                     save_finished) -> RunResult:
    """The loop of `run_job`: requests are honoured between steps; autosaves are handed to `writer`."""
    last_save = time.monotonic()
    while not state.done:
        if pause_at is not None and (state.section, state.step_in_section) >= pause_at:
            control.request_pause()
        request = control.request
        if request is not None:
            if writer is not None:
                writer.flush()
            result.status = request.status
            result.resume_file = save(state.snapshot(), request.file_kind)
            return result
        event = engine.step(state)
        if callback is not None:
            callback(event)
        if writer is not None and not state.done and autosave.due(event, time.monotonic() - last_save):
            writer.submit(state.snapshot())
            last_save = time.monotonic()
    if writer is not None:
        writer.flush()
    request = control.request
    if request is not None:  # asked for during the last step: the answer was "pausing", so keep that promise
        result.status = request.status
        result.resume_file = save(state.snapshot(), request.file_kind)
        return result
    if save_finished:
        try:
            result.resume_file = save(state.snapshot(), FileKind.FINISHED)
        except Exception as error:  # the video is done; losing only its extension point is a warning
            result.autosave_errors.append(f"the finished job's resume file could not be written: {error}")
            log.warning("goan: %s", result.autosave_errors[-1])
    return result
