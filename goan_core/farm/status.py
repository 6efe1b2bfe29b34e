"""`farm status`: every job of a store as its files say, readable without Ray or a running farm.

A state says `running` until the worker that wrote it ends the attempt; when that worker's process is
gone (it was killed, and Ray has not retried the job yet, or the farm run itself was stopped) and it
ran on this machine, the row says so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .record import RUNNING
from .store import Store

COLUMNS = ("job", "state", "where", "sections", "steps", "attempts", "model calls", "newest file / output")


def job_statuses(store_root: str | Path) -> list[dict]:
    """One dict per job of the store: its state.json, plus `gone` when a running worker of this machine died."""
    rows = []
    for folder in Store(store_root).jobs():
        state = folder.state() or {"id": folder.id, "state": "unknown", "message": "no state.json yet"}
        if state.get("state") == RUNNING and state.get("node") == socket.gethostname() \
                and not _alive(state.get("pid")):
            state = {**state, "gone": True}
        rows.append(state)
    return rows


def format_statuses(rows: list[dict]) -> str:
    """A plain-text table of `job_statuses`, then one line per job that has a message."""
    if not rows:
        return "no jobs in this store yet"
    table = [COLUMNS] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    for row in rows:
        if row.get("gone"):
            lines.append(f"{row['id']}: its worker (pid {row.get('pid')}) is gone: Ray retries the job from its newest "
                         "file, or, if the farm run stopped, run it again")
        if row.get("message"):
            lines.append(f"{row['id']}: {row['message']}")
    return "\n".join(lines)


def _cells(row: dict) -> tuple[str, ...]:
    attempts = row.get("attempts") or []
    where = f"{row.get('node')} pid {row.get('pid')}" if row.get("node") else "-"
    sections = f"{row['section']}/{row['total_sections']}" if "total_sections" in row else "-"
    steps = f"{row['steps_done']}/{row['total_steps']}" if "total_steps" in row else "-"
    calls = sum(attempt.get("model_calls", 0) for attempt in attempts)
    state = row.get("state", "unknown") + (" (worker gone)" if row.get("gone") else "")
    newest = row.get("output") or row.get("newest_file") or "-"
    return (row.get("id", "?"), state, where, sections, steps, str(len(attempts)), str(calls), newest)


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the pid
        return True
    return True
