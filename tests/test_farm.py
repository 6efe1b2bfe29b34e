"""The render farm on a real local Ray (2 CPUs): one farm run of six jobs on two workers, during which one
worker is killed (SIGKILL) and the other preempted (SIGTERM); the tests below check what that run left.

Every good job's output equals the same job run alone (`generate`); the killed job continued from its
newest autosave; the preempted one wrote its pause file and finished after its worker restarted; the
bad jobs failed alone with their messages. Skipped where Ray is not installed (it is goan[farm]).
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goan_core.cli import main
from goan_core.farm import Store, connect
from goan_core.resumefile import read_resume_file

ray = pytest.importorskip("ray")

STEPS = 8
LONG = {"seconds": 1.2, "lws": 3, "steps": STEPS, "resolution": 64}  # 3 sections x 8 steps: time to hit mid-section
SHORT = {"seconds": 0.8, "lws": 3, "steps": 3, "resolution": 64}
GOOD = {
    "killed": {"seed": 1, **LONG},
    "preempted": {"seed": 2, "mode": "f1", **LONG},
    "short-backward": {"seed": 3, **SHORT},
    "short-f1": {"seed": 4, "mode": "f1", **SHORT},
}
CALLS_OF_A_LONG_JOB = 3 * STEPS  # sections x steps, cfg 1: one model call per step


@pytest.fixture(scope="module")
def ray_session():
    assert connect("local", num_cpus=2)  # the farm's own way of starting a local cluster
    yield
    ray.shutdown()


def _picture(path: Path) -> Path:
    y, x = np.mgrid[0:70, 0:90]
    Image.fromarray(np.stack([x * 2, y * 3, x + y], -1).astype(np.uint8)).save(path)
    return path


def _signal_when(store: Store, targets: dict, timeout: float = 300.0) -> dict:
    """Send each job's worker its signal once the job's state satisfies its condition; {job: pid signalled}.

    `targets`: job id -> (condition on its state.json, signal). Both jobs are watched at once: they run
    side by side on the two workers.
    """
    deadline, pending, signalled, states = time.monotonic() + timeout, dict(targets), {}, {}
    while pending and time.monotonic() < deadline:
        for job_id, (condition, signum) in list(pending.items()):
            states[job_id] = store.job(job_id).state()
            if states[job_id] is not None and condition(states[job_id]):
                os.kill(states[job_id]["pid"], signum)
                signalled[job_id] = states[job_id]["pid"]
                del pending[job_id]
        time.sleep(0.01)
    assert not pending, f"never reached the moment to signal: {[(j, states.get(j)) for j in pending]}"
    return signalled


def _mid_section_after_an_autosave(state: dict) -> bool:
    return (state["state"] == "running" and state.get("newest_kind") == "autosave"
            and state["steps_done"] % STEPS != 0 and state["steps_done"] < state["total_steps"] - STEPS)


def _running_with_steps_left(state: dict) -> bool:
    return state["state"] == "running" and 0 < state.get("steps_done", 0) < state["total_steps"] - STEPS


@pytest.fixture(scope="module")
def farm(ray_session, tiny_models_root, tmp_path_factory):
    """The farm run every test here looks at: its store, its exit code and the pids it signalled."""
    root = tmp_path_factory.mktemp("farm")
    picture = _picture(root / "in.png")
    (root / "not-a-picture.png").write_text("hello")
    lines = [json.dumps({"id": name, "image": "in.png", "prompt": "a boat on a lake", **settings})
             for name, settings in GOOD.items()]
    lines += [json.dumps({"id": "bad-image", "image": "not-a-picture.png", "prompt": "x", **SHORT}),
              '{"image": "in.png", "prompt": "x", "seconds": 0.8,']  # cut short: not JSON
    jobs = root / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    store = Store(root / "store")
    argv = ["farm", "run", str(jobs), "--store", str(store.root), "--models", str(tiny_models_root),
            "--workers", "2", "--deterministic-video", "--max-retries", "2"]
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=main(argv)))
    thread.start()
    pids = _signal_when(store, {"killed": (_mid_section_after_an_autosave, signal.SIGKILL),
                                "preempted": (_running_with_steps_left, signal.SIGTERM)})
    thread.join(timeout=600)
    assert not thread.is_alive(), "the farm run did not end"
    return {"root": root, "store": store, "code": result.get("code"), "picture": picture,
            "killed_pid": pids["killed"], "preempted_pid": pids["preempted"],
            "tiny": tiny_models_root}


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_every_good_job_finishes_with_the_output_of_the_same_job_run_alone(farm, tmp_path, capsys):
    assert farm["code"] == 1  # two bad jobs
    for name, settings in GOOD.items():
        folder = farm["store"].job(name)
        assert folder.state()["state"] == "done", folder.state()
        alone = tmp_path / f"{name}.mp4"
        args = [f"--{key}={value}" for key, value in settings.items()]
        assert main(["generate", "--image", str(farm["picture"]), "--prompt", "a boat on a lake", *args,
                     "--models", str(farm["tiny"]), "--out", str(alone), "--resume-dir", str(tmp_path / name),
                     "--deterministic-video"]) == 0
        reference = read_resume_file(max((tmp_path / name).rglob("*.goan_resume"))).state
        result = read_resume_file(folder.final_resume).state
        assert torch.equal(result.history_latents, reference.history_latents), name
        ours, theirs = _frames(folder.video), _frames(alone)
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs)), name
    capsys.readouterr()


def test_a_killed_worker_costs_only_the_steps_since_the_last_autosave(farm):
    state = farm["store"].job("killed").state()
    first, *later = state["attempts"]
    assert first["pid"] == farm["killed_pid"] and first["end"] is None  # killed: it never ended its attempt
    last = later[-1]
    assert last["end"] == "done" and last["pid"] != first["pid"] and last["from_kind"] in ("autosave", "finished")
    assert 0 < last["from_step"] < CALLS_OF_A_LONG_JOB
    assert last["model_calls"] == CALLS_OF_A_LONG_JOB - last["from_step"] < CALLS_OF_A_LONG_JOB  # not a restart
    redone = sum(attempt["model_calls"] for attempt in state["attempts"]) - CALLS_OF_A_LONG_JOB
    assert 0 <= redone < STEPS  # at most the steps of the section it was killed in


def test_sigterm_pauses_the_job_which_finishes_after_its_worker_restarts(farm):
    state = farm["store"].job("preempted").state()
    first, *later = state["attempts"]
    assert first["pid"] == farm["preempted_pid"] and first["end"] == "paused"
    last = later[-1]
    assert last["end"] == "done" and last["pid"] != first["pid"]
    assert later[0]["from_kind"] == "pause" and later[0]["from_step"] == first["from_step"] + first["steps"]
    assert sum(attempt["model_calls"] for attempt in state["attempts"]) == CALLS_OF_A_LONG_JOB  # nothing redone


def test_bad_jobs_fail_alone_with_their_message(farm, capsys):
    bad = farm["store"].job("bad-image").state()
    assert bad["state"] == "failed" and "not-a-picture.png: not an image file" in bad["message"]
    cut = farm["store"].job("job006").state()
    assert cut["state"] == "failed" and "jobs.jsonl:6: not valid JSON" in cut["message"]
    assert main(["farm", "status", "--store", str(farm["store"].root)]) == 0
    table = capsys.readouterr().out
    for name in GOOD:
        assert f"{name} " in table and "done" in table.split(f"\n{name} ")[1].split("\n")[0]
    assert "bad-image: " in table and "job006: " in table


def test_each_worker_process_loads_the_models_once(farm):
    attempts = [a for folder in farm["store"].jobs() for a in (folder.state() or {}).get("attempts", [])]
    pids = {a["pid"] for a in attempts}
    loads = [a["pid"] for a in attempts if a["models_loaded"]]
    assert sorted(loads) == sorted(pids)  # each process loaded once, on its first job; later jobs reused them


def test_running_the_done_jobs_again_keeps_their_outputs_and_starts_no_worker(farm, capsys):
    video = farm["store"].job("short-f1").video
    before = video.stat().st_mtime_ns
    good = [line for line in (farm["root"] / "jobs.jsonl").read_text().splitlines() if '"bad-image"' not in line
            and line.endswith("}")]
    jobs = farm["root"] / "again.jsonl"  # beside jobs.jsonl: the relative paths name the same inputs
    jobs.write_text("\n".join(good) + "\n")
    argv = ["farm", "run", str(jobs), "--store", str(farm["store"].root), "--models", str(farm["tiny"]),
            "--address", "no-cluster-is-needed:1"]
    assert main(argv) == 0
    assert video.stat().st_mtime_ns == before
    assert "4 of 4 jobs done" in capsys.readouterr().out
    (farm["root"] / "elsewhere").mkdir()
    moved = farm["root"] / "elsewhere" / "jobs.jsonl"  # in.png now means elsewhere/in.png: another job
    moved.write_text(good[0] + "\n")
    assert main([*argv[:2], str(moved), *argv[3:]]) == 1
    assert "already holds another job with the id 'killed'" in capsys.readouterr().err
    assert farm["store"].job("killed").state()["state"] == "done"  # the job the store holds is left alone
