"""`farm run`: connect to Ray, queue the jobs in the store, and let a pool of worker actors take them.

One actor per worker (`--gpus-per-job` GPUs each, or none on a CPU-only cluster) loads the models
once and runs job after job. Ray restarts an actor whose process died (`max_restarts=-1`: a worker
slot always comes back while the cluster has room) and retries the job it was running up to
`max_retries` times; the retry continues from the job's newest resume file in the store. Ray is
imported here, inside the functions, and nowhere else in goan.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..errors import InputError
from .record import DONE, FAILED, QUEUED
from .specs import BadJob, FarmJob
from .store import JobFolder, Store
from .worker import FarmSettings, FarmWorker, Models

POLL_SECONDS = 0.5
GOAN_ROOT = Path(__file__).resolve().parents[2]  # the folder holding goan_core, for workers of a local cluster


def import_ray():
    """The ray module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("the render farm needs Ray: pip install 'goan[farm]' (or pip install 'ray>=2.45')") from None
    return ray


def connect(address: str = "auto", num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address` ("auto": the one `ray start` runs here; "local": start one in this
    process, with `num_cpus`; or HOST:PORT). True when this call started the connection (and should end it);
    False when Ray was already initialised in this process."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address == "local":
        path = os.pathsep.join(p for p in (str(GOAN_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    else:
        try:
            ray.init(address=address)
        except ConnectionError as error:
            raise InputError(f"no Ray cluster at --address {address} ({error}); start one with `ray start --head`, "
                             "or use --address local to run one in this process") from None
    return True


def queue_jobs(store: Store, jobs: list[FarmJob | BadJob]) -> tuple[list[FarmJob], dict[str, dict]]:
    """Put every job into the store: (the jobs to run, as workers see them; the state of every job).

    Bad lines and jobs whose input is missing fail at once with their message; done jobs stay done. A line
    whose id the store holds for another job fails without touching that job.
    """
    runnable, states = [], {}
    for job in jobs:
        folder = store.job(job.id)
        if isinstance(job, BadJob):
            states[job.id] = _set_state(folder, FAILED, job.message)
            continue
        held = folder.spec() is not None
        try:
            worker_job = folder.enqueue(job)
        except InputError as error:  # a job the store holds under this id keeps its state
            states[job.id] = ({"id": job.id, "state": FAILED, "message": str(error)} if held
                              else _set_state(folder, FAILED, str(error)))
            continue
        if folder.done:
            states[job.id] = folder.state() or _set_state(folder, DONE, None)
            continue
        states[job.id] = _set_state(folder, QUEUED, None)
        runnable.append(worker_job)
    return runnable, states


def _set_state(folder: JobFolder, status: str, message: str | None) -> dict:
    state = {**(folder.state() or {}), "state": status, "message": message}
    folder.folder.mkdir(parents=True, exist_ok=True)
    folder.write_state(state)
    return folder.state()


def run_farm(jobs: list[FarmJob | BadJob], store_root: str | Path, load_models: Callable[[], Models],
             settings: FarmSettings, *, address: str = "auto", workers: int | None = None,
             gpus_per_job: float | None = None, max_retries: int = 3, progress: bool = True) -> dict[str, dict]:
    """Run every job to its end on the Ray cluster; returns each job's final state record, by id.

    `load_models()` runs once in each worker process. Jobs already done in the store are not run again;
    jobs left paused or running by an earlier run continue from their newest resume file.
    """
    store = Store(store_root)
    runnable, states = queue_jobs(store, jobs)
    if not runnable:
        return states
    started = connect(address)
    ray = import_ray()
    actors = []
    try:
        gpus = _gpus_per_job(ray, gpus_per_job)
        count = _worker_count(ray, workers, gpus, len(runnable))
        worker_class = ray.remote(FarmWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=-1,
                                                      max_task_retries=max_retries)
        actors = [worker_class.remote(str(store.root), load_models, settings) for _ in range(count)]
        states.update(_dispatch(ray, store, actors, runnable, len(jobs) - len(runnable), progress, max_retries))
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    return states


def _gpus_per_job(ray, asked: float | None) -> float:
    available = ray.cluster_resources().get("GPU", 0)
    if asked is None:
        return 1.0 if available else 0.0
    if asked < 0:
        raise InputError(f"--gpus-per-job must be >= 0, got {asked}")
    if asked > available:
        raise InputError(f"--gpus-per-job {asked:g}: the Ray cluster has {available:g} GPU(s); use --gpus-per-job 0 "
                         "to run on CPUs")
    return float(asked)


def _worker_count(ray, asked: int | None, gpus: float, jobs: int) -> int:
    if asked is not None:
        if asked < 1:
            raise InputError(f"--workers must be at least 1, got {asked}")
        return min(asked, jobs)
    resources = ray.cluster_resources()
    slots = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1)
    return max(1, min(int(slots), jobs))


def _dispatch(ray, store: Store, actors: list, jobs: list[FarmJob], already_ended: int, progress: bool,
              max_retries: int) -> dict[str, dict]:
    """Hand the jobs to idle actors until all have ended; a tqdm bar counts jobs and steps."""
    pending, idle, running, states = collections.deque(jobs), list(actors), {}, {}
    bar = tqdm(total=len(jobs) + already_ended, initial=already_ended, unit="job", disable=not progress,
               dynamic_ncols=True)
    try:
        while pending or running:
            while pending and idle:
                actor, job = idle.pop(), pending.popleft()
                running[actor.run.remote(job.to_json())] = (actor, job)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                actor, job = running.pop(ref)
                states[job.id] = _outcome(ray, ref, store.job(job.id), max_retries)
                idle.append(actor)
                bar.update(1)
            bar.set_postfix_str(_steps_line(store, [job for _, job in running.values()]), refresh=True)
    finally:
        bar.close()
    return states


def _outcome(ray, ref, folder: JobFolder, max_retries: int) -> dict:
    """The state a finished actor call left, or the failure Ray reports (written into the store)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # the worker recorded its message before raising
        state = folder.state() or {}
        return state if state.get("state") == FAILED else _set_state(folder, FAILED, str(error.cause or error))
    except ray.exceptions.RayActorError as error:
        return _set_state(folder, FAILED, f"its worker died {max_retries + 1} times (killed, out of memory, or its "
                                          f"node was lost; Ray: {type(error).__name__}); the newest resume file "
                                          "is kept: run `farm run` again to continue from it")


def _steps_line(store: Store, running: list[FarmJob]) -> str:
    done = total = 0
    for job in running:
        state = store.job(job.id).state() or {}
        done, total = done + state.get("steps_done", 0), total + state.get("total_steps", 0)
    if not running:
        return ""
    return f"{len(running)} running, {done}/{total} of their steps" if total else f"{len(running)} starting"
