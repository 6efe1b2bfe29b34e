"""The /goan/ routes with aiohttp's test client: pause, jobs, chunked upload, resume_info, workflows."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hostile_corpus import read_members, write_valid, write_zip
from nodes_helpers import *  # noqa: F401,F403  (fixtures)

UPLOAD_ID = "upload-0001"


def serve(scenario):
    """Run `scenario(client)` against a fresh app holding goan's routes."""
    from goan_pack.nodes.routes import make_app

    async def main():
        async with TestClient(TestServer(make_app())) as client:
            return await scenario(client)

    return asyncio.run(main())


async def upload(client, data: bytes, filename: str, chunk: int = 1000, upload_id: str = UPLOAD_ID):
    """Send `data` in order in chunks; the last response's status and JSON."""
    offset, response = 0, None
    while offset < len(data) or offset == 0:
        part = data[offset:offset + chunk]
        response = await client.post(f"/goan/upload/{upload_id}", data=part,
                                     params={"offset": offset, "total": len(data), "filename": filename})
        if response.status != 200:
            break
        offset += len(part)
        if not part:
            break
    return response.status, await response.json()


@pytest.fixture(autouse=True)
def fresh_uploads(pack):
    from goan_pack.nodes.routes import UPLOADS

    from goan_pack.nodes.files import VALIDATED

    UPLOADS.active.clear()
    UPLOADS.locks.clear()
    UPLOADS.users.clear()
    VALIDATED.clear()
    yield
    UPLOADS.active.clear()
    VALIDATED.clear()


@pytest.fixture
def valid_file(host, tmp_path):
    return write_valid(tmp_path / "made_elsewhere.goan_resume").read_bytes()


def stored(host):
    folder = host.directory("input") / "goan_resume"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def leftovers(host):
    folder = host.directory("temp") / "goan_uploads"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


# -- pause and jobs -------------------------------------------------------------------------------

def test_pause_unknown_running_idempotent_and_finished(host):
    from goan_pack.nodes.jobs import REGISTRY

    entry = REGISTRY.start("p-run", "7", "job-a", section=0, step=0, total_sections=2, steps=3)
    finished = REGISTRY.start("p-done", "7", "job-b", section=0, step=0, total_sections=2, steps=3)
    REGISTRY.end(finished, "finished", file={"filename": "f", "subfolder": "s", "type": "output"})

    async def scenario(client):
        results = []
        for body in ({"prompt_id": "p-run"}, {"prompt_id": "p-run"}, {"prompt_id": "nope"},
                     {"prompt_id": "p-done"}, {}, "prompt"):
            response = await client.post("/goan/pause", json=body)
            results.append((response.status, await response.json()))
        bad = await client.post("/goan/pause", data=b"{not json", headers={"Content-Type": "application/json"})
        results.append((bad.status, await bad.json()))
        return results

    results = serve(scenario)
    assert results[0] == (200, {"status": "pausing", "prompt_id": "p-run"})
    assert results[1] == (200, {"status": "pausing", "prompt_id": "p-run"})
    assert results[2][0] == 404 and "not a running goan job" in results[2][1]["error"]
    assert results[3][0] == 404
    assert [status for status, _ in results[4:]] == [400, 400, 400]
    assert entry.control.request == "pause"
    assert [e for e, _ in host.events] == ["goan.pausing"]  # once, not per request
    assert host.events[0][1] == {"prompt_id": "p-run", "node_id": "7"}
    REGISTRY.end(entry, "paused", file={"filename": "x.goan_resume", "subfolder": "goan_resume/job-a",
                                        "type": "output"})
    (status, body), = serve(lambda c: _pause_once(c, "p-run"))
    assert status == 200 and body["status"] == "paused"


async def _pause_once(client, prompt_id):
    response = await client.post("/goan/pause", json={"prompt_id": prompt_id})
    return [(response.status, await response.json())]


def test_pause_after_the_last_step_is_refused_clearly(host):
    from goan_pack.nodes.jobs import REGISTRY

    entry = REGISTRY.start("p-decoding", "7", "job-c", section=0, step=0, total_sections=2, steps=3)
    REGISTRY.progress(entry, 1, 3, 2)  # the last step of the last section is done: decoding
    (status, body), = serve(lambda c: _pause_once(c, "p-decoding"))
    assert status == 409 and "decoding" in body["error"]
    assert entry.control.request is None and entry.status == "running"


def test_pause_during_the_last_step_is_kept(host, loaded, image, monkeypatch):
    """The route answers "pausing" while the last step runs; the job then ends paused, not finished."""
    from goan_pack.goan_core.resumefile import read_resume_file
    from goan_pack.nodes.jobs import REGISTRY
    from nodes_helpers import PROMPT_ID, run_sampler

    transformer = loaded[0].model
    real_forward = transformer.forward
    answers = []

    def forward(*args, **kwargs):
        (job,) = REGISTRY.jobs()
        if not answers and (job["section"], job["step"]) == (job["total_sections"] - 1, job["steps"] - 1):
            answers.extend(serve(lambda c: _pause_once(c, PROMPT_ID)))  # the last step is running
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(transformer, "forward", forward)
    job, _, _ = run_sampler(loaded, image)
    assert answers == [(200, {"status": "pausing", "prompt_id": PROMPT_ID})]
    assert job.status == "paused" and job.state.done
    assert read_resume_file(job.path).job_info["kind"] == "pause"
    assert [e for e, _ in host.events if e in ("goan.pausing", "goan.paused")] == ["goan.pausing", "goan.paused"]
    (entry,) = REGISTRY.jobs()
    assert entry["status"] == "paused" and entry["file"]["filename"] == job.path.name
    # asking again says what happened
    (status, body), = serve(lambda c: _pause_once(c, PROMPT_ID))
    assert status == 200 and body["status"] == "paused"


def test_a_chunk_is_read_whole_however_it_arrives(host, valid_file):
    """The body of one request is read to its end, not just what the first network read returned."""

    async def trickle():
        for start in range(0, len(valid_file), 16 * 1024):
            await asyncio.sleep(0.005)
            yield valid_file[start:start + 16 * 1024]

    async def scenario(client):
        response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=trickle(),
                                     params={"offset": 0, "total": len(valid_file), "filename": "slow.goan_resume"})
        return response.status, await response.json()

    status, body = serve(scenario)
    assert status == 200 and body["done"] and body["received"] == len(valid_file)


def test_pause_a_prompt_whose_sampler_has_not_started(host):
    host.running["p-queued"] = {"1": {"class_type": "LoadImage"}, "4": {"class_type": "GoanSegmentSampler"}}
    host.running["p-other"] = {"1": {"class_type": "KSampler"}}
    host.running["p-two"] = {"4": {"class_type": "GoanSegmentSampler"}, "5": {"class_type": "GoanSegmentSampler"}}
    statuses = serve(lambda c: _statuses(c, ["p-queued", "p-other", "p-two"]))
    assert statuses == [200, 404, 200]
    # without a node, the first sampler of the prompt (the action bar's button while loaders run)
    assert [e["node_id"] for _, e in host.events] == ["4", "4"]


async def _statuses(client, prompt_ids):
    return [(await client.post("/goan/pause", json={"prompt_id": p})).status for p in prompt_ids]


def test_pause_one_sampler_of_a_prompt_with_several(host):
    """Three samplers branching one file in one prompt: a pause names its sampler and reaches only that one,
    whether it runs, has not started yet (applied when it starts) or does not exist."""
    from goan_pack.nodes.jobs import REGISTRY

    host.running["p-three"] = {str(n): {"class_type": "GoanSegmentSampler"} for n in (4, 5, 6)}
    first = REGISTRY.start("p-three", "4", "job-4", section=0, step=1, total_sections=2, steps=3)

    async def scenario(client):
        out = []
        for body in ({"prompt_id": "p-three", "node_id": "6"}, {"prompt_id": "p-three", "node_id": 9},
                     {"prompt_id": "p-three", "node_id": ["4"]}):
            response = await client.post("/goan/pause", json=body)
            out.append((response.status, await response.json()))
        return out

    (ok, body), (missing, error), (bad, _) = serve(scenario)
    assert ok == 200 and body["status"] == "pausing"
    assert missing == 404 and "sampler 9" in error["error"] and bad == 400
    assert first.control.request is None and first.status == "running"  # the running branch goes on
    assert host.events == [("goan.pausing", {"prompt_id": "p-three", "node_id": "6"})]
    REGISTRY.end(first, "finished")
    second = REGISTRY.start("p-three", "5", "job-5", section=0, step=1, total_sections=2, steps=3)
    assert second.control.request is None
    REGISTRY.end(second, "finished")
    third = REGISTRY.start("p-three", "6", "job-6", section=0, step=1, total_sections=2, steps=3)
    assert third.control.request == "pause" and third.node_id == "6" and third.job_id == "job-6"


def test_jobs_lists_running_first_then_recent(host):
    from goan_pack.nodes.jobs import REGISTRY

    old = REGISTRY.start("p-old", "7", "job-old", section=0, step=0, total_sections=2, steps=3)
    REGISTRY.end(old, "finished", file={"filename": "a.goan_resume", "subfolder": "goan_resume/job-old",
                                        "type": "output"})
    failed = REGISTRY.start("p-fail", "7", "job-fail", section=0, step=0, total_sections=2, steps=3)
    REGISTRY.end(failed, "failed", error="out of memory: simulated")
    running = REGISTRY.start("p-now", "3", "job-now", section=0, step=0, total_sections=4, steps=25)
    REGISTRY.progress(running, 1, 12, 4)

    async def scenario(client):
        response = await client.get("/goan/jobs")
        return response.status, await response.json()

    status, body = serve(scenario)
    assert status == 200
    assert [j["prompt_id"] for j in body["jobs"]] == ["p-now", "p-fail", "p-old"]
    assert body["jobs"][0] == {"prompt_id": "p-now", "job_id": "job-now", "node_id": "3", "status": "running",
                               "section": 1, "total_sections": 4, "step": 12, "steps": 25, "skipped": 0, "file": None,
                               "error": None, "parent": None, "root": None}
    assert body["jobs"][1]["error"] == "out of memory: simulated"
    assert body["jobs"][2]["file"]["filename"] == "a.goan_resume"


def test_jobs_names_the_goan_prompts_in_comfyuis_queue(host):
    """What ComfyUI's native job list (GET /api/jobs) cannot say: which queued prompts hold a goan sampler."""
    host.running["p-run"] = {"1": {"class_type": "LoadImage"}, "4": {"class_type": "GoanSegmentSampler"}}
    host.pending["p-next"] = {"9": {"class_type": "GoanSegmentSampler"}}
    host.pending["p-other"] = {"1": {"class_type": "KSampler"}}
    host.pending["p-broken"] = ["not", "a", "prompt"]
    host.pending["p-branches"] = {"2": {"class_type": "GoanSegmentSampler"}, "3": {"class_type": "GoanSegmentSampler"}}

    async def scenario(client):
        response = await client.get("/goan/jobs")
        return await response.json()

    assert serve(scenario) == {"jobs": [], "queue": [{"prompt_id": "p-run", "node_id": "4", "running": True},
                                                     {"prompt_id": "p-next", "node_id": "9", "running": False},
                                                     {"prompt_id": "p-branches", "node_id": "2", "running": False},
                                                     {"prompt_id": "p-branches", "node_id": "3", "running": False}]}


def test_jobs_keeps_only_recent_ones(host):
    from goan_pack.nodes.jobs import REGISTRY

    for n in range(30):
        REGISTRY.end(REGISTRY.start(f"p{n}", "1", f"j{n}", section=0, step=0, total_sections=1, steps=1), "finished")
    jobs = REGISTRY.jobs()
    assert len(jobs) == 20 and jobs[0]["prompt_id"] == "p29"


# -- chunked upload -------------------------------------------------------------------------------

def test_chunked_upload_stores_a_validated_file(host, valid_file):
    async def scenario(client):
        first = await upload(client, valid_file, "My Job (final).goan_resume", chunk=4096)
        second = await upload(client, valid_file, "My Job (final).goan_resume", chunk=len(valid_file),
                              upload_id="upload-0002")
        info = await client.get("/goan/resume_info", params={"name": first[1]["name"]})
        return first, second, (info.status, await info.json())

    (status, body), (status2, body2), (info_status, info) = serve(scenario)
    assert status == 200 and body["done"] is True
    assert body == {"done": True, "name": "goan_resume/My_Job_final.goan_resume",
                    "filename": "My_Job_final.goan_resume", "subfolder": "goan_resume", "type": "input",
                    "received": len(valid_file)}
    assert status2 == 200 and body2["name"] == "goan_resume/My_Job_final_1.goan_resume"  # never overwritten
    assert stored(host) == ["My_Job_final.goan_resume", "My_Job_final_1.goan_resume"]
    assert (host.directory("input") / body["name"]).read_bytes() == valid_file
    assert leftovers(host) == []
    assert info_status == 200
    assert info["workflow"]["nodes"][0]["type"] == "GoanSegmentSampler"
    assert info["job_info"]["format"] == "goan_resume" and info["params"]["steps"] == 5


def test_intermediate_chunks_report_progress(host, valid_file):
    async def scenario(client):
        response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=valid_file[:100],
                                     params={"offset": 0, "total": len(valid_file), "filename": "a"})
        return response.status, await response.json()

    assert serve(scenario) == (200, {"received": 100})


@pytest.mark.parametrize("upload_id", ["short", "has space!", "../../etc", "x" * 65, "dot.dot.dot"])
def test_upload_refuses_bad_ids(host, upload_id):
    async def scenario(client):
        response = await client.post(f"/goan/upload/{upload_id}", data=b"abc",
                                     params={"offset": 0, "total": 3, "filename": "a"})
        return response.status

    assert serve(scenario) in (400, 404)  # 404: aiohttp never routes a '/' inside the id


@pytest.mark.parametrize("params, status", [
    ({"offset": "x", "total": 3}, 400), ({"offset": 0, "total": 0}, 400), ({"offset": -1, "total": 3}, 400),
    ({"offset": 0}, 400), ({"offset": 0, "total": 10**14}, 413),
])
def test_upload_refuses_bad_numbers(host, params, status):
    async def scenario(client):
        return (await client.post(f"/goan/upload/{UPLOAD_ID}", data=b"abc", params=params)).status

    assert serve(scenario) == status


def test_out_of_order_chunks_are_refused_and_the_upload_can_go_on(host, valid_file):
    total = len(valid_file)

    async def scenario(client):
        async def send(offset, data):
            response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=data,
                                         params={"offset": offset, "total": total, "filename": "job"})
            return response.status, await response.json()

        never_started = await send(500, valid_file[500:600])
        first = await send(0, valid_file[:500])
        skipped = await send(900, valid_file[900:1000])
        repeated = await send(0 + 100, valid_file[100:500])
        rest = await send(500, valid_file[500:])
        return never_started, first, skipped, repeated, rest

    never_started, first, skipped, repeated, rest = serve(scenario)
    assert never_started[0] == 409 and never_started[1]["received"] == 0
    assert first == (200, {"received": 500})
    assert skipped[0] == 409 and skipped[1]["received"] == 500 and "expected offset 500" in skipped[1]["error"]
    assert repeated[0] == 409
    assert rest[0] == 200 and rest[1]["done"] is True


def test_refused_uploads_leave_no_lock_behind(host, valid_file, monkeypatch):
    """One lock per upload id used to stay forever for every refused request (a slow leak)."""
    from goan_pack.nodes import routes

    async def scenario(client):
        statuses = []
        for n in range(40):  # chunks of uploads that never started
            response = await client.post(f"/goan/upload/never-{n:04d}", data=b"abc",
                                         params={"offset": 5, "total": 10, "filename": "a"})
            statuses.append(response.status)
        monkeypatch.setattr(routes, "_short_of_space", lambda total: "no room")
        for n in range(40):  # starts refused for lack of space
            response = await client.post(f"/goan/upload/full-{n:04d}", data=b"abc",
                                         params={"offset": 0, "total": 10, "filename": "a"})
            statuses.append(response.status)
        monkeypatch.undo()
        await client.post(f"/goan/upload/{UPLOAD_ID}", data=valid_file[:100],
                          params={"offset": 0, "total": len(valid_file), "filename": "a"})
        return statuses

    statuses = serve(scenario)
    assert set(statuses[:40]) == {409} and set(statuses[40:]) == {507}
    assert set(routes.UPLOADS.locks) == {UPLOAD_ID} == set(routes.UPLOADS.active)  # only the unfinished one
    assert routes.UPLOADS.users == {}


def test_unfinished_uploads_are_bounded(host, valid_file, monkeypatch):
    from goan_pack.nodes import routes

    monkeypatch.setattr(routes, "MAX_ACTIVE_UPLOADS", 3)

    async def scenario(client):
        statuses = []
        for n in range(5):
            response = await client.post(f"/goan/upload/upload-{n:04d}", data=valid_file[:10],
                                         params={"offset": 0, "total": len(valid_file), "filename": "a"})
            statuses.append(response.status)
        return statuses

    assert serve(scenario) == [200, 200, 200, 429, 429]
    assert len(routes.UPLOADS.locks) == len(routes.UPLOADS.active) == 3 and len(leftovers(host)) == 3


def test_too_many_bytes_for_the_announced_total(host):
    async def scenario(client):
        response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=b"x" * 10,
                                     params={"offset": 0, "total": 5, "filename": "a"})
        return response.status

    assert serve(scenario) == 400
    assert leftovers(host) == [] and stored(host) == []


def test_upload_that_cannot_fit_on_disk_is_refused_before_writing(host, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 1024**2, 5 * 1024**2))

    async def scenario(client):
        response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=b"x" * 10,
                                     params={"offset": 0, "total": 50 * 1024**2, "filename": "big"})
        return response.status, await response.json()

    status, body = serve(scenario)
    assert status == 507 and "not enough free disk space" in body["error"]
    assert leftovers(host) == []


def test_chunk_over_16_mib_is_refused(host):
    async def scenario(client):
        response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=b"\0" * (16 * 1024 * 1024 + 1),
                                     params={"offset": 0, "total": 32 * 1024 * 1024, "filename": "a"})
        return response.status

    assert serve(scenario) == 413


def _traversal_zip(tmp_path, valid_path):
    members = read_members(valid_path)
    return write_zip(tmp_path / "evil.goan_resume", members + [("../../../../tmp/evil.sh", b"#!/bin/sh\n")],
                     fix_checksums=False).read_bytes()


@pytest.mark.parametrize("build, phrase", [
    (lambda tmp, valid: b"MZ\x90\x00 this is an exe", "not a goan resume file"),
    (lambda tmp, valid: b"PK\x03\x04" + b"\0" * 100, "truncated"),
    (lambda tmp, valid: valid.read_bytes()[: len(valid.read_bytes()) // 2], "truncated"),
    (_traversal_zip, "unsafe member name"),
])
def test_hostile_uploads_are_refused_and_nothing_is_kept(host, tmp_path, build, phrase):
    valid = write_valid(tmp_path / "valid.goan_resume")
    data = build(tmp_path, valid)

    async def scenario(client):
        return await upload(client, data, "evil.goan_resume", chunk=512)

    status, body = serve(scenario)
    assert status == 400 and phrase in body["error"], body
    assert body["error"].startswith("evil.goan_resume: ")  # the client's name, not a server path
    assert str(host.directory("temp")) not in body["error"]
    assert stored(host) == [] and leftovers(host) == []


@pytest.mark.parametrize("filename, expected", [
    ("../../etc/passwd", "passwd"), ("..\\..\\windows\\system32\\x.goan_resume", "x"),
    ("/abs/path/run.goan_resume", "run"), (".hidden.goan_resume", "hidden"), ("....", "upload"),
    ("", "upload"), ("naïve café ☕.goan_resume", "na_ve_caf"), ("a" * 300, "a" * 100),
    ("x.goan_resume.goan_resume", "x.goan_resume"),
])
def test_upload_names_are_sanitised(host, valid_file, filename, expected):
    status, body = serve(lambda client: upload(client, valid_file, filename, chunk=len(valid_file)))
    assert status == 200 and body["filename"] == f"{expected}.goan_resume"
    assert stored(host) == [f"{expected}.goan_resume"]


# -- resume_info -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../secret.goan_resume", "/etc/passwd", "goan_resume/../../x.goan_resume",
                                  "other/x.goan_resume", "goan_resume\\x.goan_resume", "", "x.png",
                                  "goan_resume/a/b.goan_resume"])
def test_resume_info_resolves_names_only_inside_the_input_folder(host, name):
    async def scenario(client):
        response = await client.get("/goan/resume_info", params={"name": name})
        return response.status, await response.json()

    status, body = serve(scenario)
    assert status == 400 and body["error"]


def test_resume_info_missing_broken_and_escaping_files(host, tmp_path):
    inputs = host.directory("input")
    (inputs / "goan_resume").mkdir()
    (inputs / "goan_resume" / "broken.goan_resume").write_bytes(b"PK\x03\x04garbage")
    outside = write_valid(tmp_path / "outside.goan_resume")
    (inputs / "goan_resume" / "link.goan_resume").symlink_to(outside)

    async def scenario(client):
        out = []
        for name in ("goan_resume/missing.goan_resume", "goan_resume/broken.goan_resume",
                     "goan_resume/link.goan_resume"):
            response = await client.get("/goan/resume_info", params={"name": name})
            out.append((response.status, await response.json()))
        return out

    missing, broken, link = serve(scenario)
    assert missing[0] == 404
    assert broken[0] == 400 and broken[1]["error"].startswith("goan_resume/broken.goan_resume: ")
    assert link[0] == 400 and "outside the input folder" in link[1]["error"]


# -- example workflows ------------------------------------------------------------------------------

def test_workflows_route_serves_only_the_examples(host):
    from goan_pack.nodes.routes import WORKFLOW_NAMES, WORKFLOWS_DIR

    async def scenario(client):
        listing = await (await client.get("/goan/workflows")).json()
        bodies = {}
        for name in listing["workflows"]:
            response = await client.get(f"/goan/workflows/{name}")
            bodies[name] = (response.status, await response.json())
        refused = [(await client.get(f"/goan/workflows/{name}")).status
                   for name in ("secret.json", "..%2F__init__.py", "goan_resume", "%2e%2e%2fpyproject.toml")]
        return listing, bodies, refused

    listing, bodies, refused = serve(scenario)
    assert listing["workflows"] == list(WORKFLOW_NAMES)
    for name, (status, body) in bodies.items():
        assert status == 200 and body == json.loads((WORKFLOWS_DIR / name).read_text())
    assert set(refused) == {404}


def test_a_valid_file_larger_than_one_chunk(host, tmp_path):
    """A real-shaped resume file (embeddings at FramePack's sizes) over 16 MiB arrives in several chunks."""
    from bench.common import synthetic_state
    from goan_core.sampling.plan import SectionPlan
    from goan_core.resumefile import write_resume_file
    from hostile_corpus import source_image

    state = synthetic_state(SectionPlan("backward", 9, 3, 544, 704), 2)
    data = write_resume_file(state, tmp_path / "big.goan_resume", source_image=source_image()).read_bytes()
    assert len(data) > 16 * 2**20

    async def scenario(client):
        done = await upload(client, data, "big.goan_resume", chunk=16 * 2**20)
        info = await client.get("/goan/resume_info", params={"name": done[1]["name"]})
        return done, info.status, await info.json()

    (status, body), info_status, info = serve(scenario)
    assert status == 200 and body["done"] and body["name"] == "goan_resume/big.goan_resume"
    assert info_status == 200 and info["job_info"]["next_section"] == 2
    assert (host.directory("input") / "goan_resume" / "big.goan_resume").read_bytes() == data


# -- issue 12: deep JSON never reaches a 500 ----------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"prompt_id": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # beyond Python's recursion limit
    b'{"prompt_id": "p", "x": ' + b"[" * 200 + b"]" * 200 + b"}",  # parses, but deeper than goan allows
    b'{"prompt_id": "' + b"a" * (128 * 1024) + b'"}',  # far larger than {prompt_id}
])
def test_pause_with_a_hostile_json_body_is_a_400(host, body):
    async def scenario(client):
        response = await client.post("/goan/pause", data=body, headers={"Content-Type": "application/json"})
        return response.status, await response.json()

    status, answer = serve(scenario)
    assert status == 400 and answer["error"].startswith('send JSON {"prompt_id": "..."}'), answer


def test_resume_info_of_a_file_with_a_deeply_nested_workflow_is_a_400(host, tmp_path):
    from hostile_corpus import CASES

    build = next(c.build for c in CASES if c.name == "workflow_nested_900_deep")
    folder = host.directory("input") / "goan_resume"
    folder.mkdir(parents=True)
    build(tmp_path).replace(folder / "deep.goan_resume")

    async def scenario(client):
        response = await client.get("/goan/resume_info", params={"name": "goan_resume/deep.goan_resume"})
        return response.status, await response.json()

    status, answer = serve(scenario)
    assert status == 400 and "nested too deeply" in answer["error"], answer


# -- issue 12 item 6: disk space is reserved for every unfinished upload; a full disk is a clean 507 ------

def _fake_usage(monkeypatch, free: int):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))


def test_concurrent_uploads_reserve_their_announced_sizes(host, valid_file, monkeypatch):
    """Each start used to be checked alone, so three that fit one by one together filled the disk."""
    from goan_pack.goan_core.resumefile import FREE_SPACE_MARGIN
    from goan_pack.nodes import routes

    size = len(valid_file)
    _fake_usage(monkeypatch, FREE_SPACE_MARGIN + 2 * size + size // 2)  # room for two and a half

    async def start(client, upload_id):
        response = await client.post(f"/goan/upload/{upload_id}", data=valid_file[:10],
                                     params={"offset": 0, "total": size, "filename": upload_id})
        return response.status, await response.json()

    async def scenario(client):
        first, second = await start(client, "upload-000a"), await start(client, "upload-000b")
        third = await start(client, "upload-000c")
        reserved = dict(routes.UPLOADS.active)
        rest = await client.post("/goan/upload/upload-000a", data=valid_file[10:],
                                 params={"offset": 10, "total": size, "filename": "a"})
        finished = rest.status, await rest.json()
        again = await start(client, "upload-000c")  # the finished upload's reservation is released
        return first, second, third, reserved, finished, again

    first, second, third, reserved, finished, again = serve(scenario)
    assert first == (200, {"received": 10}) and second == (200, {"received": 10})
    assert third[0] == 507, third
    assert "not enough free disk space" in third[1]["error"] and "reserved for 2 other uploads" in third[1]["error"]
    assert set(reserved) == {"upload-000a", "upload-000b"}  # the refused start reserved nothing
    assert finished[0] == 200 and finished[1]["done"]
    assert again == (200, {"received": 10})
    assert leftovers(host) == ["upload-000b.goan_resume", "upload-000c.goan_resume"]


class _FullDisk:
    """Stands in for `open` in nodes.routes: once armed, a write stores half its bytes and then fails."""

    def __init__(self, code: int):
        self.code, self.armed, self.sizes_after_failure = code, False, []

    def __call__(self, path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        if not self.armed or "r" == mode:
            return real
        fake = self

        class File:
            def __getattr__(self, name):
                return getattr(real, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()
                fake.sizes_after_failure.append(os.path.getsize(path))

            def write(self, data):
                data = memoryview(data)
                if len(data) > 1:
                    return real.write(data[: len(data) // 2])
                raise OSError(fake.code, os.strerror(fake.code))

        return File()


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_chunk_that_finds_the_disk_full_is_a_507_and_nothing_is_left(host, valid_file, monkeypatch, code):
    """The failed write used to be a 500, and the temp file kept more bytes than `received` said."""
    import errno

    from goan_pack.nodes import routes

    if not hasattr(errno, code):
        pytest.skip(f"no {code} on this platform")
    full = _FullDisk(getattr(errno, code))
    monkeypatch.setattr(routes, "open", full, raising=False)

    async def send(client, offset, data):
        response = await client.post(f"/goan/upload/{UPLOAD_ID}", data=data,
                                     params={"offset": offset, "total": len(valid_file), "filename": "a"})
        return response.status, await response.json()

    async def scenario(client):
        first = await send(client, 0, valid_file[:100])
        full.armed = True
        failed = await send(client, 100, valid_file[100:300])
        full.armed = False
        after = await send(client, 300, valid_file[300:])
        retried = await upload(client, valid_file, "a.goan_resume", chunk=len(valid_file))
        return first, failed, after, retried

    first, failed, after, retried = serve(scenario)
    assert first == (200, {"received": 100})
    assert failed[0] == 507 and "disk filled up" in failed[1]["error"], failed
    assert full.sizes_after_failure == [100]  # cut back to what `received` says before it was removed
    assert after[0] == 409 and after[1]["received"] == 0  # the upload was dropped: start again
    assert retried[0] == 200 and retried[1]["done"]
    assert leftovers(host) == [] and stored(host) == ["a.goan_resume"]
    assert routes.UPLOADS.active == {} and routes.UPLOADS.locks == {}


def test_chunk_writes_run_off_the_event_loop(host, valid_file, monkeypatch):
    import threading

    from goan_pack.nodes import routes

    threads = []
    real = routes._write_chunk

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(routes, "_write_chunk", spy)
    loop_thread = []

    async def scenario(client):
        loop_thread.append(threading.current_thread())
        return await upload(client, valid_file, "a", chunk=len(valid_file) // 3 + 1)

    status, body = serve(scenario)
    assert status == 200 and body["done"]
    assert len(threads) == 3 and loop_thread[0] not in threads


# -- issue 12 item 12: one drop is read and validated once --------------------------------------------

@pytest.fixture
def validations(pack, monkeypatch):
    """Counts full validations of format-v1 files (what `read_resume_file` runs for each read)."""
    from goan_pack.goan_core.resumefile import reader

    calls = []
    real = reader._read_v1

    def spy(archive):
        calls.append(archive.path.name)
        return real(archive)

    monkeypatch.setattr(reader, "_read_v1", spy)
    return calls


def _info(name):
    async def scenario(client):
        response = await client.get("/goan/resume_info", params={"name": name})
        return response.status, await response.json()

    return serve(scenario)


def test_upload_resume_info_and_load_resume_validate_a_file_once(host, valid_file, validations, tmp_path):
    from goan_pack.goan_core.errors import ResumeFileError
    from goan_pack.nodes.resume_nodes import GoanLoadResume

    status, body = serve(lambda client: upload(client, valid_file, "drop.goan_resume", chunk=4096))
    assert status == 200 and body["done"]
    name = body["name"]
    info_status, info = _info(name)
    job, image, params = GoanLoadResume().execute(name)
    assert info_status == 200 and info["params"]["seed"] == 1234 and info["validated"] is True
    assert job.state.job_id == "job-1" and json.loads(params)["seed"] == 1234
    assert len(validations) == 1  # the upload's; resume_info and Load Resume reused it

    # changed in place, with its old size and mtime put back: validated again, and refused
    path = host.directory("input") / name
    stat = path.stat()
    damaged = bytearray(valid_file)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    info_status, info = _info(name)  # a new version: only its small members are read, and they are intact
    assert info_status == 200 and info["validated"] is False, info
    with pytest.raises(ResumeFileError):
        GoanLoadResume().execute(name)
    with pytest.raises(ResumeFileError):
        GoanLoadResume().execute(name)
    assert len(validations) == 3  # a refused file is never remembered

    # replaced by another valid job: validated once more (by Load Resume), then reused
    path.write_bytes(write_valid(tmp_path / "other.goan_resume", job_id="job-2").read_bytes())
    assert _info(name)[0] == 200
    job, _, _ = GoanLoadResume().execute(name)
    assert job.state.job_id == "job-2" and len(validations) == 4
    info_status, info = _info(name)
    assert info_status == 200 and info["validated"] is True and info["job_info"]["job_id"] == "job-2"
    assert len(validations) == 4


def test_resume_info_of_an_unvalidated_file_reads_only_its_small_members(host, validations, tmp_path, monkeypatch):
    """A large file nobody validated yet: resume_info answers from job_info, params and workflow
    without reading the state member; a damaged small member is still a 400."""
    from bench.common import synthetic_state
    from goan_core.sampling.plan import SectionPlan
    from goan_core.resumefile import write_resume_file
    from goan_pack.goan_core.resumefile import archive as archive_module
    from hostile_corpus import source_image

    folder = host.directory("input") / "goan_resume"
    folder.mkdir(parents=True)
    state = synthetic_state(SectionPlan("backward", 9, 3, 544, 704), 2)
    big = write_resume_file(state, folder / "big.goan_resume", source_image=source_image(),
                            workflow={"nodes": [], "extra": {"marker": 7}})
    read_members = []
    real_read = archive_module.SafeArchive.read

    def spy(self, name, *args, **kwargs):
        read_members.append(name)
        return real_read(self, name, *args, **kwargs)

    monkeypatch.setattr(archive_module.SafeArchive, "read", spy)
    status, info = _info("goan_resume/big.goan_resume")
    assert status == 200 and info["validated"] is False and info["workflow"]["extra"]["marker"] == 7
    assert info["job_info"]["next_section"] == 2 and validations == []
    assert set(read_members) == {"job_info.json", "params.json", "workflow.json"}

    damaged = bytearray(big.read_bytes())
    at = damaged.find(b'"seed"')
    damaged[at + 1] = ord("z")  # params.json no longer matches its checksum
    big.write_bytes(bytes(damaged))
    status, info = _info("goan_resume/big.goan_resume")
    assert status == 400 and "params.json" in info["error"], info


def test_two_first_reads_of_one_file_validate_it_once(host, valid_file, validations, monkeypatch):
    import threading
    import time

    from goan_pack.goan_core.resumefile import reader
    from goan_pack.nodes.files import VALIDATED

    folder = host.directory("input") / "goan_resume"
    folder.mkdir(parents=True)
    path = folder / "twice.goan_resume"
    path.write_bytes(valid_file)
    inside = threading.Event()
    counted = reader._read_v1  # the `validations` spy

    def slow(archive):
        inside.set()
        time.sleep(0.3)  # the second reader arrives while the first is validating
        return counted(archive)

    monkeypatch.setattr(reader, "_read_v1", slow)
    results = []
    first = threading.Thread(target=lambda: results.append(VALIDATED.read(path)))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=lambda: results.append(VALIDATED.read(path)))
    second.start()
    first.join(10)
    second.join(10)
    assert len(results) == 2 and all(r.state.job_id == "job-1" for r in results)
    assert len(validations) == 1 and VALIDATED._busy == {}


def test_an_upload_copied_across_file_systems_is_validated_again_once(host, valid_file, validations, monkeypatch):
    """A copy is not the file that was validated, so the first reader checks it again (and only the first)."""
    import errno

    from goan_pack.nodes import routes

    def no_rename(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    with monkeypatch.context() as patch:
        patch.setattr(routes.os, "replace", no_rename)
        status, body = serve(lambda client: upload(client, valid_file, "copied.goan_resume"))
    assert status == 200 and (host.directory("input") / body["name"]).read_bytes() == valid_file
    from goan_pack.nodes.resume_nodes import GoanLoadResume

    assert _info(body["name"])[0] == 200  # the small members only
    for _ in range(2):
        assert GoanLoadResume().execute(body["name"])[0].state.job_id == "job-1"
    assert len(validations) == 2 and leftovers(host) == []


def test_validated_files_are_bounded_and_handed_out_as_copies(host, validations, tmp_path):
    from goan_pack.nodes.files import MAX_VALIDATED_FILES, VALIDATED, ValidatedFiles

    folder = tmp_path / "many"
    folder.mkdir()
    paths = [write_valid(folder / f"f{n:02d}.goan_resume", job_id=f"job-{n}") for n in range(MAX_VALIDATED_FILES + 2)]
    for path in paths:
        VALIDATED.read(path)
    assert len(VALIDATED) == MAX_VALIDATED_FILES and len(validations) == len(paths)
    VALIDATED.read(paths[-1])  # kept
    assert len(validations) == len(paths)
    VALIDATED.read(paths[0])  # the oldest were dropped
    assert len(validations) == len(paths) + 1 and len(VALIDATED) == MAX_VALIDATED_FILES

    mine = VALIDATED.read(paths[-1])
    mine.job_info["job_id"] = "changed"
    mine.workflow["nodes"].clear()
    mine.notes.append("mine")
    mine.source_image[:] = 0
    again = VALIDATED.read(paths[-1])
    assert again.job_info["job_id"] == "job-9" and again.workflow["nodes"] and again.notes == []
    assert again.source_image.any()

    size = paths[0].stat().st_size
    small = ValidatedFiles(max_files=8, max_bytes=2 * size + size // 2)
    for path in paths[:4]:
        small.read(path)
    assert len(small) == 2
    tiny = ValidatedFiles(max_files=8, max_bytes=1)
    tiny.read(paths[0])
    assert len(tiny) == 1  # the newest is kept whatever its size
