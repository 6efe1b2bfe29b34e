"""Pause and stop requests for a running job, safe to send from any thread (or from a signal handler)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable

from ..vocabulary import Request


class JobControl:
    """What the user asked of a running job. The sampler reads it between two denoising steps.

    A pause ends the run with a resume file; a stop (cancel) also writes the file, then ends.
    Requests are idempotent: asking twice returns False the second time and changes nothing,
    except that stop wins over pause.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: Request | None = None

    def request_pause(self) -> bool:
        """Ask for a pause; False when a pause or stop was already requested."""
        with self._lock:
            if self._request is not None:
                return False
            self._request = Request.PAUSE
            return True

    def request_stop(self) -> bool:
        """Ask for a stop; False when a stop was already requested."""
        with self._lock:
            if self._request is Request.STOP:
                return False
            self._request = Request.STOP
            return True

    @property
    def request(self) -> Request | None:
        with self._lock:
            return self._request

    def clear(self) -> None:
        with self._lock:
            self._request = None


@contextmanager
def signal_pauses(control: JobControl, signum: int = signal.SIGINT, on_pause: Callable[[], None] | None = None):
    """While inside, the first `signum` asks `control` for a pause (the job saves its file and ends PAUSED) and
    calls `on_pause`; a second one interrupts at once (KeyboardInterrupt: the runner still writes a fail-safe file).

    Ctrl-C (SIGINT) in the CLI; SIGTERM, the preemption notice of spot machines, in a farm worker. Enter it on
    the main thread (Python runs signal handlers there).
    """
    def handler(signum_, frame):
        if not control.request_pause():
            raise KeyboardInterrupt
        if on_pause is not None:
            on_pause()
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)
