"""The words every part of goan uses for where a job stands and what kind of resume file it wrote.

One enum each, shared by the core, the nodes, the HTTP routes and events (which send the values),
and the frontend (`js/lib/vocabulary.js` holds the same values; a test keeps the two equal).
"""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A str enum whose str() and format() give the bare value on every Python from 3.10 on."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Status(_Word):
    """Where a job stands, from the queue to its end."""

    QUEUED = "queued"  # in ComfyUI's queue, not started (frontend only)
    LOADED = "loaded"  # read from a resume file, not continued yet
    RUNNING = "running"
    PAUSING = "pausing"  # a pause was asked for; the job stops after the current step
    PAUSED = "paused"  # ended by a pause, with a resume file
    STOPPED = "stopped"  # ended by a stop or ComfyUI's cancel, with a fail-safe resume file when possible
    FINISHED = "finished"
    FAILED = "failed"  # ended by an error (out of memory, a bug), with a fail-safe resume file when possible
    CANCELLED = "cancelled"  # removed from the queue before it ran (frontend only)

    @property
    def active(self) -> bool:
        """The job is sampling and can still be paused or stopped."""
        return self in (Status.RUNNING, Status.PAUSING)


class FileKind(_Word):
    """Why a resume file was written; stored as `kind` in its job_info.json."""

    PAUSE = "pause"
    STOP = "stop"
    AUTOSAVE = "autosave"
    FAILSAFE = "failsafe"  # written on an exception: an interrupt, out of memory, a bug
    FINISHED = "finished"  # the end of a finished job, from which an f1 job can be extended


class Request(_Word):
    """What a user can ask of a running job (see jobs.control.JobControl)."""

    PAUSE = "pause"
    STOP = "stop"

    @property
    def status(self) -> Status:
        """The status of a job that ended by this request."""
        return Status.PAUSED if self is Request.PAUSE else Status.STOPPED

    @property
    def file_kind(self) -> FileKind:
        """The kind of the resume file written when a job ends by this request."""
        return FileKind.PAUSE if self is Request.PAUSE else FileKind.STOP
