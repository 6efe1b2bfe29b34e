"""The farm without Ray: the JOBS file, the store, a worker running jobs in this process, `farm status`, and
that nothing but `farm run` ever imports Ray."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from goan_core.errors import InputError
from goan_core.farm import BadJob, FarmJob, FarmSettings, FarmWorker, Store, format_statuses, job_statuses, read_jobs
from goan_core.jobs import goan_encoders
from goan_core.models import Transformer

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"prompt": "a boat on a lake", "seconds": 0.8, "lws": 3, "steps": 3, "resolution": 64}


def _jobs_file(tmp_path, *lines) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_each_line_is_a_job_or_a_bad_job_with_its_message(tmp_path):
    jobs = read_jobs(_jobs_file(
        tmp_path,
        {"image": "in.png", **SHORT},
        "",
        {"id": "continued", "resume": "/abs/a.goan_resume", "additional_seconds": 2},
        {"image": "in.png", "prompt": "x", "seconds": 0},
        {"image": "in.png", "resume": "a.goan_resume", "prompt": "x"},
        {"image": "in.png", "prompt": "x", "colour": "red"},
        {"id": "continued", "resume": "b.goan_resume"},
        {"id": "../up", "image": "in.png", "prompt": "x"},
        [1, 2],
        "{nope",
        {"resume": "a.goan_resume", "crf": 99},
    ))
    first, second, *bad = jobs
    assert first == FarmJob("job001", 1, image=tmp_path / "in.png", params=SHORT)
    assert second.id == "continued" and second.resume == Path("/abs/a.goan_resume") and second.additional_seconds == 2
    assert all(isinstance(job, BadJob) for job in bad)
    messages = [job.message for job in bad]
    expected = ["seconds must be greater than 0", 'exactly one of "image"', "unknown field(s) colour",
                "already used on line 3", "cannot name a folder", "a job must be a JSON object, got list",
                "not valid JSON", "crf must be a whole number"]
    for message, words, job in zip(messages, expected, bad):
        assert words in message and message.startswith(f"{tmp_path / 'jobs.jsonl'}:{job.line}: "), message


def test_a_jobs_file_that_cannot_be_used_is_one_error(tmp_path):
    with pytest.raises(InputError, match="no such jobs file"):
        read_jobs(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="no job in it"):
        read_jobs(_jobs_file(tmp_path, "", "  "))


def test_an_output_is_published_once(tmp_path):
    folder = Store(tmp_path).job("a")
    folder.folder.mkdir(parents=True)

    def broken(temp):
        (temp / "a.mp4").write_bytes(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError):
        folder.publish(broken)
    assert not folder.done and os.listdir(folder.folder) == []  # no output, no temp folder left
    assert folder.publish(lambda temp: (temp / "a.mp4").write_bytes(b"first"))
    assert not folder.publish(lambda temp: (temp / "a.mp4").write_bytes(b"second"))
    assert folder.video.read_bytes() == b"first" and len(os.listdir(folder.folder)) == 1


def test_the_store_refuses_another_job_under_an_id_it_holds(tmp_path):
    picture = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(picture)
    folder = Store(tmp_path / "store").job("a")
    stored = folder.enqueue(FarmJob("a", 1, image=picture, params=SHORT))
    assert stored.image == folder.folder / "input" / "in.png" and stored.image.read_bytes() == picture.read_bytes()
    assert folder.enqueue(FarmJob("a", 7, image=picture, params=SHORT)) == stored  # moved in the file: same job
    with pytest.raises(InputError, match="already holds another job with the id 'a'"):
        folder.enqueue(FarmJob("a", 1, image=picture, params={**SHORT, "seed": 5}))


@pytest.fixture()
def worker(tiny_models, tmp_path):
    cpu, f32 = torch.device("cpu"), torch.float32
    models = SimpleNamespace(transformer=Transformer(tiny_models.transformer, cpu, f32),
                             encoders=goan_encoders(tiny_models, cpu, f32))
    return FarmWorker(tmp_path / "store", lambda: models, FarmSettings(), exit_when_preempted=False)


def test_a_worker_runs_a_job_once_and_a_retry_of_a_done_job_returns_at_once(worker, tmp_path):
    picture = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(picture)
    job = worker.store.job("one").enqueue(FarmJob("one", 1, image=picture, params=SHORT))
    state = worker.run(job.to_json())
    assert state["state"] == "done" and state["steps_done"] == state["total_steps"] == 6
    (attempt,) = state["attempts"]
    assert attempt["models_loaded"] and attempt["model_calls"] == 6 and attempt["from_file"] is None
    video = worker.store.job("one").video
    before = video.stat().st_mtime_ns
    again = worker.run(job.to_json())
    assert again["state"] == "done" and len(again["attempts"]) == 1 and video.stat().st_mtime_ns == before


def test_a_job_whose_input_is_bad_fails_with_its_message_and_the_worker_goes_on(worker, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    job = worker.store.job("bad").enqueue(FarmJob("bad", 1, image=text, params=SHORT))
    state = worker.run(job.to_json())
    assert state["state"] == "failed" and "notes.png: not an image file" in state["message"]


def test_status_reads_the_store_and_names_a_worker_that_is_gone(tmp_path):
    store = Store(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for job_id, state in {"a": {"state": "queued"},
                          "b": {"state": "running", "node": socket.gethostname(), "pid": dead.pid, "section": 1,
                                "total_sections": 3, "steps_done": 9, "total_steps": 24,
                                "attempts": [{"model_calls": 9}], "newest_file": "x.goan_resume"},
                          "c": {"state": "failed", "message": "in.png: not an image file"}}.items():
        store.job(job_id).folder.mkdir(parents=True)
        store.job(job_id).write_state(state)
    rows = job_statuses(tmp_path)
    assert [row["id"] for row in rows] == ["a", "b", "c"] and rows[1]["gone"]
    text = format_statuses(rows)
    assert "running (worker gone)" in text and "1/3" in text and "9/24" in text and "x.goan_resume" in text
    assert "c: in.png: not an image file" in text and f"b: its worker (pid {dead.pid}) is gone" in text
    assert format_statuses([]) == "no jobs in this store yet"


def test_farm_run_without_ray_says_how_to_install_it(monkeypatch):
    from goan_core.farm.driver import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'goan\[farm\]'"):
        import_ray()


def test_the_node_pack_and_every_other_command_never_import_ray(tmp_path):
    """Ray is an optional extra: importing the pack, the core and the farm, and `farm status`, leave it alone."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from nodes_pack import load_pack
load_pack()
import goan_core.cli.commands, goan_core.farm
from goan_core.cli import main
assert main(["farm", "status", "--store", {str(tmp_path)!r}]) == 0
assert main(["inspect", {str(tmp_path / 'missing.goan_resume')!r}]) == 2  # through the plain CLI's dispatch
assert "ray" not in sys.modules, "ray was imported"
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
