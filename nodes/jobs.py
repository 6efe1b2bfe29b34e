"""Which goan jobs run, and pause requests for them: shared by the sampler (worker thread) and the routes."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from ..goan_core.jobs import JobControl
from ..goan_core.vocabulary import Status
from .adapter import HOST

SAMPLER_TYPE = "GoanSegmentSampler"
KEEP_RECENT = 20


@dataclass
class JobEntry:
    prompt_id: str
    node_id: str | None
    job_id: str | None = None
    status: Status = Status.RUNNING
    section: int = 0
    total_sections: int = 0
    step: int = 0
    steps: int = 0
    skipped: int = 0  # model calls TeaCache skipped so far
    file: dict | None = None
    error: str | None = None
    control: JobControl = field(default_factory=JobControl)
    pending: bool = False  # a pause asked for before the sampler started
    order: int = 0
    parent: str | None = None  # a branched job's parent and root job ids (its lineage)
    root: str | None = None

    @property
    def sampling_done(self) -> bool:
        """Every denoising step is done and reported: the job is decoding its video and can no longer pause.

        The runner reads the pause request after the step callback that reports the last step (and
        updates this entry), so a request accepted before that report is honoured: the run ends
        paused, with a file of the finished state. A request after it is refused (409), never lost.
        """
        return self.total_sections > 0 and (self.section, self.step) >= (self.total_sections - 1, self.steps)

    def public(self) -> dict:
        return {"prompt_id": self.prompt_id, "job_id": self.job_id, "node_id": self.node_id,
                "status": self.status.value, "section": self.section, "total_sections": self.total_sections,
                "step": self.step, "steps": self.steps, "skipped": self.skipped, "file": self.file,
                "error": self.error, "parent": self.parent, "root": self.root}


def sampler_node_ids(prompt) -> list[str]:
    """The node ids of the goan samplers in an API-format prompt (node id -> {class_type, inputs})."""
    if not isinstance(prompt, dict):
        return []
    return [str(k) for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") == SAMPLER_TYPE]


def queued_goan_prompts() -> list[dict]:
    """Each goan sampler of the prompts in ComfyUI's queue: [{prompt_id, node_id, running}], running first.

    ComfyUI's own job list (GET /api/jobs) does not say what a queued prompt contains; the frontend
    takes the job states from there and which jobs are goan jobs from here. A prompt with several
    samplers (branches of one resume file) has an entry, and a row in the job list, for each.
    """
    return [{"prompt_id": prompt_id, "node_id": node_id, "running": running}
            for running, prompts in ((True, HOST.running_prompts()), (False, HOST.pending_prompts()))
            for prompt_id, prompt in prompts.items()
            for node_id in sampler_node_ids(prompt)]


class JobRegistry:
    def __init__(self, keep: int = KEEP_RECENT):
        self._lock = threading.Lock()
        self._entries: list[JobEntry] = []
        self._counter = itertools.count(1)
        self.keep = keep
        self.generation = 0  # bumped whenever a run ends unfinished, so ComfyUI re-runs the sampler

    # -- the sampler's side ----------------------------------------------------------------------
    def start(self, prompt_id: str, node_id: str | None, job_id: str, *, section: int, step: int,
              total_sections: int, steps: int, lineage: dict | None = None) -> JobEntry:
        """Register a running job (with the parent and root of its `lineage` when it is a branch); a pause
        asked for before it started applies now."""
        with self._lock:
            entry = next((e for e in self._entries if e.prompt_id == prompt_id and e.pending and e.node_id == node_id),
                         None)
            if entry is None:
                entry = JobEntry(prompt_id, node_id)
                self._entries.append(entry)
            else:
                entry.pending = False
            entry.job_id, entry.section, entry.step = job_id, section, step
            entry.total_sections, entry.steps = total_sections, steps
            entry.parent, entry.root = (lineage["parent"], lineage["root"]) if lineage else (None, None)
            entry.order = next(self._counter)
            return entry

    def progress(self, entry: JobEntry, section: int, step: int, total_sections: int, skipped: int = 0) -> None:
        with self._lock:
            entry.section, entry.step, entry.total_sections = section, step, total_sections
            entry.skipped = skipped

    def set_file(self, entry: JobEntry, file: dict | None) -> None:
        with self._lock:
            entry.file = file

    def end(self, entry: JobEntry, status: Status, *, file: dict | None = None, error: str | None = None) -> None:
        status = Status(status)
        with self._lock:
            entry.status = status
            if file is not None:
                entry.file = file
            entry.error = error
            entry.order = next(self._counter)
            if status is not Status.FINISHED:
                self.generation += 1
            self._trim()

    # -- the routes' side ------------------------------------------------------------------------
    def request_pause(self, prompt_id: str, node_id: str | None = None) -> JobEntry | None:
        """Pause the running job of `prompt_id` (of its sampler `node_id` when given: a prompt may hold
        several); None when there is none. Idempotent.

        A job whose sampling is done is returned unchanged (still running): it cannot pause.
        """
        running = None
        with self._lock:
            known = [e for e in self._entries if e.prompt_id == prompt_id and node_id in (None, e.node_id)]
            running = next((e for e in known if e.status.active or e.status is Status.PAUSED), None)
            if running is None and known:
                return None  # its goan job already finished, failed or was cancelled
            if running is not None:
                if running.status is Status.RUNNING and not running.sampling_done:
                    running.control.request_pause()
                    running.status = Status.PAUSING
                    notify = True
                else:
                    notify = False
        if running is None:
            running, notify = self._pending_pause(prompt_id, node_id), True
            if running is None:
                return None
        if notify:
            HOST.send("goan.pausing", {"prompt_id": prompt_id, "node_id": running.node_id})
        return running

    def _pending_pause(self, prompt_id: str, node_id: str | None) -> JobEntry | None:
        """The prompt runs in ComfyUI and holds a goan sampler (`node_id`, else its first) that has not
        started yet: pause it at once."""
        samplers = sampler_node_ids(HOST.running_prompts().get(prompt_id))
        if node_id is None and samplers:
            node_id = samplers[0]
        if node_id not in samplers:
            return None
        entry = JobEntry(prompt_id, node_id, status=Status.PAUSING, pending=True)
        entry.control.request_pause()
        with self._lock:
            entry.order = next(self._counter)
            self._entries.append(entry)
        return entry

    def jobs(self) -> list[dict]:
        """Running jobs first (oldest first), then the most recent others."""
        running_prompts = set(HOST.running_prompts())
        with self._lock:
            # a pending pause whose prompt ended without running the sampler (cached, failed earlier)
            self._entries = [e for e in self._entries if not (e.pending and e.prompt_id not in running_prompts)]
            active = sorted((e for e in self._entries if e.status.active), key=lambda e: e.order)
            others = sorted((e for e in self._entries if not e.status.active), key=lambda e: -e.order)
            return [e.public() for e in active + others]

    def _trim(self) -> None:
        others = sorted((e for e in self._entries if not e.status.active), key=lambda e: -e.order)
        for old in others[self.keep:]:
            self._entries.remove(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


REGISTRY = JobRegistry()
