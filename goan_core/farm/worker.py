"""A farm worker: one per GPU (or CPU slot), loading its models once and running jobs one after another.

Each job goes through goan's one lifecycle (`jobs.create_job` / `continue_job`, `run_job`,
`render_frames`), writing its autosaves into the store. A job that was already tried continues from
its newest valid resume file there, so a retry after a lost worker redoes at most the steps since
the last autosave. SIGTERM (the preemption notice of spot machines) pauses the job: its pause file
is written, then the process exits so that Ray restarts the worker and retries the job, which then
continues from that file.

Ray runs `FarmWorker` as an actor (see `driver`); nothing here imports Ray.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..errors import GoanError, notes_of
from ..jobs import (AutosavePolicy, Encoders, Job, JobControl, RunSettings, continue_job, create_job, render_frames,
                    run_job, signal_pauses)
from ..media import load_image, write_mp4
from ..models import DEFAULT_GPU_MEMORY_PRESERVATION, Transformer
from ..params import JobParams
from ..resumefile import read_resume_file, write_resume_file
from ..vocabulary import FileKind, Status
from .record import DONE, FAILED, PAUSED, AttemptRecord
from .specs import FarmJob
from .store import JobFolder, Store

log = logging.getLogger("goan")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a process ended by SIGTERM reports


class Models(Protocol):
    """What a worker loads once: the transformer and the encoders (the VAE included), on their device."""

    transformer: Transformer
    encoders: Encoders


@dataclass(frozen=True)
class FarmSettings:
    """How every job of a farm run saves, keeps its files and writes its video (the CLI's options of the same names)."""

    autosave_every: int = 1
    autosave_minutes: float = 0.0
    keep_last: int = 3
    include_embeddings: bool = True
    gpu_memory_preservation: float = DEFAULT_GPU_MEMORY_PRESERVATION
    deterministic_video: bool = False


class CallCounter:
    """Counts the calls of a model's forward (the denoising work a job did) while attached."""

    def __init__(self, module):
        self.calls = 0
        self._handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.calls += 1

    def detach(self) -> None:
        self._handle.remove()


class FarmWorker:
    """Runs farm jobs in this process with models loaded on first use by `load_models` and kept for every later job.

    `exit_when_preempted`: after a SIGTERM has paused a job, end the process (what a Ray worker must do: Ray then
    restarts it and retries the job); off for runs inside a process that must live on.
    """

    def __init__(self, store_root: str | Path, load_models: Callable[[], Models], settings: FarmSettings,
                 exit_when_preempted: bool = True):
        self.store = Store(store_root)
        self.settings = settings
        self._load_models = load_models
        self._models: Models | None = None
        self._exit_when_preempted = exit_when_preempted

    def pid(self) -> int:
        return os.getpid()

    def run(self, job_data: dict) -> dict:
        """Run the job (a `FarmJob.to_json()`) to its end here; returns its state record.

        A job whose output exists returns at once. A bad input or any other goan error fails the job with its
        message (retrying would not help); an unexpected error is recorded, then raised.
        """
        job = FarmJob.from_json(job_data)
        folder = self.store.job(job.id)
        record = AttemptRecord(folder)
        if folder.done:
            return record.end(DONE, output=str(folder.output))
        control, preempted = JobControl(), []
        try:
            with signal_pauses(control, signal.SIGTERM, lambda: preempted.append(True)):
                return self._run(job, folder, record, control, preempted)
        except GoanError as error:
            return record.end(FAILED, " ".join([str(error), *notes_of(error)]))
        except BaseException as error:  # a second SIGTERM lands here too: its fail-safe file is the newest
            record.end(PAUSED if preempted else FAILED, f"{type(error).__name__}: {error}")
            self._exit_if(preempted)
            raise

    def _run(self, job: FarmJob, folder: JobFolder, record: AttemptRecord, control: JobControl,
             preempted: list) -> dict:
        models_loaded = self._models is None
        if self._models is None:
            self._models = self._load_models()
        models = self._models
        goan_job, start, warnings = self._job_to_run(job, folder, models)
        record.start(goan_job.state, start=start, models_loaded=models_loaded, warnings=warnings)
        counter = CallCounter(models.transformer.model)
        try:
            result = run_job(goan_job, models.transformer, self._run_settings(folder), control=control,
                             on_step=lambda event: record.step(event, counter.calls), on_saved=record.saved)
        finally:
            counter.detach()
        if result.status is not Status.FINISHED:
            ended = record.end(PAUSED, "preempted (SIGTERM): paused, continues from its pause file" if preempted
                               else f"{result.status}", result.state, newest_file=str(result.resume_file))
            self._exit_if(preempted)
            return ended
        crf = job.crf if job.crf is not None else result.state.params.crf
        folder.publish(lambda temp: self._write_outputs(temp, folder.id, goan_job, result.state, models, crf))
        return record.end(DONE, None, result.state, output=str(folder.output), autosave_errors=result.autosave_errors)

    def _job_to_run(self, job: FarmJob, folder: JobFolder, models: Models) -> tuple[Job, dict | None, list[str]]:
        """The job at its newest resume file in the store, or as the JOBS line gave it when it has none yet;
        where it starts from (`{"file", "kind"}` of the store's file, None otherwise) and the warnings."""
        identity = models.transformer.identity()
        newest = folder.newest_resume_file()
        if newest is None and job.image is not None:
            image = load_image(job.image)
            return create_job(JobParams.from_dict(job.params), image, models.encoders, identity=identity,
                              job_id=job.id), None, []
        data = read_resume_file(newest or job.resume)
        extra = 0.0 if newest is not None else job.additional_seconds  # a saved file already holds its extension
        goan_job, warnings = continue_job(data.state, data.source_image, models.encoders, identity=identity,
                                          additional_seconds=extra, needs_start_latent=data.needs_start_latent,
                                          workflow=data.workflow)
        start = None if newest is None else {"file": str(newest), "kind": data.job_info.get("kind")}
        return goan_job, start, [*data.notes, *warnings]

    def _run_settings(self, folder: JobFolder) -> RunSettings:
        s = self.settings
        return RunSettings(folder.resume_root, keep_last=s.keep_last,
                           autosave=AutosavePolicy(s.autosave_every, s.autosave_minutes),
                           include_embeddings=s.include_embeddings, gpu_memory_preservation=s.gpu_memory_preservation)

    def _write_outputs(self, temp: Path, name: str, goan_job: Job, state, models: Models, crf: int) -> None:
        frames = render_frames(state, models.encoders.require("vae", "writing the video"))
        write_mp4(frames, temp / f"{name}.mp4", crf=crf, deterministic=self.settings.deterministic_video)
        write_resume_file(state, temp / f"{name}.goan_resume", source_image=goan_job.source_image,
                          workflow=goan_job.workflow, include_embeddings=self.settings.include_embeddings,
                          kind=FileKind.FINISHED)

    def _exit_if(self, preempted: list) -> None:
        if preempted and self._exit_when_preempted:
            log.warning("goan: preempted (SIGTERM): the job's file is saved; this worker exits")
            logging.shutdown()
            os._exit(PREEMPTED_EXIT_CODE)
