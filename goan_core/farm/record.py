"""What a worker writes to a job's state.json while it runs it: each attempt, the progress, how it ended.

One attempt is one try at the job by one worker process. A retried job (its worker died, or was
preempted) gets a new attempt that says which resume file it started from; each attempt counts the
model calls it made, so `farm status` and the bench can show how much work a lost worker cost.
Written after every denoising step, crash-safely, so a worker killed mid-step leaves the count of
the steps it finished.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..sampling import JobState, StepEvent
from ..vocabulary import FileKind
from .store import JobFolder

QUEUED, RUNNING, PAUSED, DONE, FAILED = "queued", "running", "paused", "done", "failed"


class AttemptRecord:
    """The state.json of one job as the attempt running it now keeps it up to date."""

    def __init__(self, folder: JobFolder):
        self.folder = folder
        self.fields = dict(folder.state() or {})
        self.fields.setdefault("attempts", [])
        self.attempt: dict | None = None

    @property
    def attempts(self) -> list[dict]:
        return self.fields["attempts"]

    def start(self, state: JobState, *, start: dict | None, models_loaded: bool, warnings: list[str]) -> None:
        """A new attempt on this process at `state`: restored from the store's resume file `start` (`{"file",
        "kind"}`), or None when it starts from the JOBS line."""
        self.attempt = {"attempt": len(self.attempts) + 1, "node": socket.gethostname(), "pid": os.getpid(),
                        "started_at": time.time(), "from_file": (start or {}).get("file"),
                        "from_kind": (start or {}).get("kind"),
                        "from_step": state.steps_done, "models_loaded": models_loaded, "model_calls": 0,
                        "steps": 0, "end": None}
        self.attempts.append(self.attempt)
        self.fields.update(state=RUNNING, node=self.attempt["node"], pid=self.attempt["pid"], message=None,
                           warnings=warnings, **_progress(state))
        self._write()

    def step(self, event: StepEvent, model_calls: int) -> None:
        self.attempt.update(model_calls=model_calls, steps=self.attempt["steps"] + 1)
        self.fields.update(section=event.section + int(event.section_finished), steps_done=event.steps_done)
        self._write()

    def saved(self, path: Path, kind: FileKind) -> None:
        self.fields.update(newest_file=str(path), newest_kind=str(kind))
        self._write()

    def end(self, status: str, message: str | None = None, state: JobState | None = None, **extra) -> dict:
        """The attempt ended with `status` (done, paused, failed); returns the whole record."""
        if self.attempt is not None:
            self.attempt["end"] = status
        self.fields.update(state=status, message=message, **(_progress(state) if state is not None else {}), **extra)
        self._write()
        return dict(self.fields)

    def _write(self) -> None:
        self.folder.write_state(self.fields)


def _progress(state: JobState) -> dict:
    return {"section": min(state.section, state.plan.total_sections), "total_sections": state.plan.total_sections,
            "steps_done": state.steps_done, "total_steps": state.total_steps}
