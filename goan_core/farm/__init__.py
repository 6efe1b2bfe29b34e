"""The render farm: many jobs over many GPUs or machines on Ray, surviving lost and preempted workers.

`specs` reads the JOBS file, `store` lays out the shared folder every worker writes (per job: state,
autosaves, the output published once), `record` is what a worker writes while it runs a job, `worker`
runs jobs through goan's one job lifecycle, `driver` hands them to Ray actors, `status` reads the
store without Ray. Only `driver` imports Ray, and only when a farm runs.
"""

from .driver import connect, queue_jobs, run_farm
from .record import DONE, FAILED, PAUSED, QUEUED, RUNNING, AttemptRecord
from .specs import BadJob, FarmJob, read_jobs
from .status import format_statuses, job_statuses
from .store import JobFolder, Store
from .worker import FarmSettings, FarmWorker

__all__ = ["DONE", "FAILED", "PAUSED", "QUEUED", "RUNNING", "AttemptRecord", "BadJob", "FarmJob", "FarmSettings",
           "FarmWorker", "JobFolder", "Store", "connect", "format_statuses", "job_statuses", "queue_jobs", "read_jobs",
           "run_farm"]
