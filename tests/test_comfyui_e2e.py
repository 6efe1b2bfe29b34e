"""End to end against a real ComfyUI: the default workflow on the usual files, queue, pause, download,
upload, resume, compare; cancel; the diffusers-folders and compare-branches workflows.

Runs only when COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON: an interpreter with ComfyUI's
requirements and the pack's; default: this one). The checkout is left untouched: the pack is linked
into a temporary custom_nodes folder named in a temporary --extra-model-paths-config YAML (which also
registers temporary model folders holding the tiny models), input/output/user/temp folders are
temporary, and bytecode writing is off. The server listens on 127.0.0.1 at a free port and is stopped
in a finally.

The model files: goan's tiny set written as the usual files, under their real names, tensor naming and
dtypes (FramePackI2V_HY_fp8_e4m3fn, clip_l, llava_llama3_fp16, hunyuan_video_vae_bf16 in Comfy-Org's
naming, sigclip_vision_patch14_384), so the default workflow runs unchanged. ComfyUI cannot build tiny
models from them by itself (it sizes each model from fixed configs and ships the real Llama tokenizer),
so the test-only custom node tests/comfy_stub/goan_tiny_loaders steps in for files marked as goan's tiny
ones: VAELoader and CLIPVisionLoader then run ComfyUI's OWN VAE and SigLIP code on the files (only the
widths of ComfyUI's fixed configs are the file's), while DualCLIPLoader returns a stand-in CLIP (tokenize,
encode_from_tokens_scheduled) over goan's loaders of the same two files and goan's tiny tokenizers. What
this proves: the default graph validates and runs in ComfyUI with the usual file names, goan's sampler
drives ComfyUI's real VAE and CLIP_VISION objects, and its CLIP calls are ComfyUI's; not proven here:
ComfyUI's real hunyuan_video text encoder at full size (see test_nodes_native.py for its layout).

    COMFYUI_DIR=/work/comfy/ComfyUI COMFYUI_PYTHON=/work/comfy/venv/bin/python \\
        .venv/bin/python -m pytest tests/test_comfyui_e2e.py -q
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
START_TIMEOUT = 180.0
RUN_TIMEOUT = 240.0

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
    reason="set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to run the e2e test",
)

# Small but long enough to pause mid-run: 3 sections x 8 steps at 48x64.
JOB = {"seconds": 0.8, "lws": 2, "steps": 8, "resolution": 64, "seed": 2026, "mode": "backward",
       "prompt": "a sunset over the sea", "autosave_every": 1, "keep_last": 3}
VISION_COPY = "sigclip_vision_patch14_384_copy.safetensors"  # another name for the same file: never cached
CORE_FILE_COMBOS = {("LoadImage", "image"), ("DualCLIPLoader", "clip_name1"), ("DualCLIPLoader", "clip_name2"),
                    ("CLIPVisionLoader", "clip_name"), ("VAELoader", "vae_name")}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_models_root):
    """A running ComfyUI with the pack; yields a dict of its URL and folders."""
    import shutil

    from comfy_server import ComfyServer, tiny_model_folders

    base = tmp_path_factory.mktemp("comfyui")
    models = base / "models"
    folders = tiny_model_folders(models, tiny_models_root)
    shutil.copy(folders["clip_vision"] / "sigclip_vision_patch14_384.safetensors", folders["clip_vision"] / VISION_COPY)
    server = ComfyServer(Path(COMFYUI_DIR), COMFYUI_PYTHON, base, folders=folders)
    # with its asset system where it has one (as users run current ComfyUI): goan's files meet its scans
    server.start(timeout=START_TIMEOUT, extra_args=["--preview-method", "latent2rgb"], assets=server.has_assets)
    try:
        dirs = {name: base / name for name in ("input", "output", "user", "temp")}
        yield {"url": server.url, "info": server.get_json("/object_info"), "log": server.log_path, "models": models,
               "assets": server.has_assets, **dirs}
    finally:
        server.stop()


# -- client helpers ---------------------------------------------------------------------------------

class Client:
    """HTTP and websocket to one ComfyUI, inside one asyncio run."""

    def __init__(self, session, url: str):
        self.session, self.url = session, url
        self.client_id = uuid.uuid4().hex
        self.messages: list[dict] = []
        self.previews = 0  # binary frames: latent previews (--preview-method latent2rgb)
        self._new = asyncio.Event()
        self._reader = None

    async def connect(self):
        ws_url = self.url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        self.ws = await self.session.ws_connect(ws_url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _read(self):
        async for message in self.ws:
            if message.type.name == "TEXT":
                self.messages.append(json.loads(message.data))
                self._new.set()
            elif message.type.name == "BINARY":
                self.previews += 1

    async def wait_for(self, predicate, timeout=RUN_TIMEOUT, what="a websocket message"):
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; last messages: {self.messages[-5:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    async def end_of(self, prompt_id):
        """The message that ends a prompt: execution_success, execution_error or execution_interrupted."""
        ends = ("execution_success", "execution_error", "execution_interrupted")
        return await self.wait_for(lambda m: m["type"] in ends and m["data"].get("prompt_id") == prompt_id,
                                   what=f"the end of prompt {prompt_id}")

    async def get_json(self, path, **params):
        async with self.session.get(self.url + path, params=params) as response:
            return response.status, await response.json()

    async def post_json(self, path, body):
        async with self.session.post(self.url + path, json=body) as response:
            return response.status, await response.json(content_type=None)

    async def queue(self, prompt: dict, workflow: dict) -> str:
        status, body = await self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id,
                                                        "extra_data": {"extra_pnginfo": {"workflow": workflow}}})
        assert status == 200 and not body.get("node_errors"), body
        return body["prompt_id"]

    async def view(self, file: dict) -> bytes:
        async with self.session.get(self.url + "/view", params=file) as response:
            assert response.status == 200, await response.text()
            return await response.read()

    async def history(self, prompt_id) -> dict:
        """The prompt's history entry; ComfyUI stores it just after the execution_success message."""
        deadline = time.monotonic() + 30
        while True:
            _, body = await self.get_json(f"/history/{prompt_id}")
            if prompt_id in body or time.monotonic() > deadline:
                return body[prompt_id]
            await asyncio.sleep(0.05)

    async def wait_until_running(self, prompt_id, section=1, step=2):
        """Poll /goan/jobs until the prompt's job has reached (section, step)."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            _, body = await self.get_json("/goan/jobs")
            for job in body["jobs"]:
                if job["prompt_id"] == prompt_id:
                    assert job["status"] == "running", job
                    if (job["section"], job["step"]) >= (section, step):
                        return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"prompt {prompt_id} never reached section {section} step {step}")

    async def upload_resume(self, data: bytes, filename: str, chunk: int = 64 * 1024) -> dict:
        upload_id = uuid.uuid4().hex[:16]
        body = None
        for offset in range(0, len(data), chunk):
            async with self.session.post(f"{self.url}/goan/upload/{upload_id}", data=data[offset:offset + chunk],
                                         params={"offset": offset, "total": len(data), "filename": filename}) as r:
                body = await r.json()
                assert r.status == 200, body
        assert body["done"] is True, body
        return body

    async def close(self):
        await self.ws.close()
        if self._reader is not None:
            await self._reader


def run(comfy, scenario):
    import aiohttp

    async def main():
        async with aiohttp.ClientSession() as session:
            client = Client(session, comfy["url"])
            await client.connect()
            try:
                return await scenario(client)
            finally:
                await client.close()

    return asyncio.run(main())


def infos(comfy) -> dict:
    return comfy["info"]


def workflow(comfy, name: str, widgets: dict | None = None) -> tuple[dict, dict]:
    """(UI workflow, API prompt) of an example workflow with the given widget values: the usual file names
    as they are (the tiny files carry them), goan's folder loaders pointed at the tiny folders."""
    from comfy_workflow import set_widget, to_api

    ui = json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))
    types = {node["type"] for node in ui["nodes"]}
    for loader in ("GoanVAELoader", "GoanTextEncoderLoader", "GoanImageEncoderLoader"):
        if loader in types:
            set_widget(ui, loader, "folder", "goan_tiny", infos(comfy))
    if "GoanVAELoader" in types:
        set_widget(ui, "GoanTransformerLoader", "model", "[diffusers] goan_tiny", infos(comfy))
    for (node_type, name_), value in (widgets or {}).items():
        set_widget(ui, node_type, name_, value, infos(comfy))
    return ui, to_api(ui, infos(comfy))


def sampler_widgets(**overrides) -> dict:
    return {("GoanSegmentSampler", k): v for k, v in {**JOB, **overrides}.items()}


def add_frames_output(prompt: dict, prefix: str) -> str:
    """A SaveImage on the gate's frames: lossless PNGs to compare pixel by pixel."""
    gate = next(k for k, v in prompt.items() if v["class_type"] == "GoanPauseGate")
    prompt["900"] = {"class_type": "SaveImage", "inputs": {"images": [gate, 0], "filename_prefix": prefix}}
    return "900"


async def frames(client, prompt_id, node_id="900") -> np.ndarray:
    from PIL import Image

    outputs = (await client.history(prompt_id))["outputs"]
    images = outputs[node_id]["images"]
    pictures = [np.array(Image.open(io.BytesIO(await client.view(image)))) for image in images]
    return np.stack(pictures)


def upload_input_image(comfy) -> str:
    import requests
    from PIL import Image

    from goan_core.media import demo_image

    buffer = io.BytesIO()
    Image.fromarray(demo_image()).save(buffer, format="PNG")
    response = requests.post(f"{comfy['url']}/upload/image", files={"image": ("goan_e2e.png", buffer.getvalue())},
                             data={"overwrite": "true"}, timeout=30)
    assert response.ok, response.text
    return response.json()["name"]


# -- the tests -------------------------------------------------------------------------------------

def test_pack_loads_with_its_nodes_routes_and_web_files(comfy):
    import requests

    from comfy_workflow import FILE_COMBOS, check_workflow

    failed = [line for line in comfy["log"].read_text(errors="replace").splitlines()
              if "IMPORT FAILED" in line and "goan" in line]  # ComfyUI's own optional nodes may lack packages
    assert not failed and "custom_nodes/goan" in comfy["log"].read_text(errors="replace")
    names = {"GoanSegmentSampler", "GoanLoadResume", "GoanSaveResume", "GoanPauseGate", "GoanTransformerLoader",
             "GoanVAELoader", "GoanTextEncoderLoader", "GoanImageEncoderLoader"}
    assert names <= set(infos(comfy))
    assert infos(comfy)["GoanSegmentSampler"]["category"] == "goan"
    assert infos(comfy)["GoanTransformerLoader"]["input"]["required"]["model"][0] == [
        "FramePackI2V_HY_fp8_e4m3fn.safetensors", "FramePackI2V_tiny.safetensors", "[diffusers] goan_tiny"]
    assert "hunyuan_video_vae_bf16.safetensors" in infos(comfy)["VAELoader"]["input"]["required"]["vae_name"][0]
    assert requests.get(f"{comfy['url']}/goan/jobs", timeout=10).json() == {"jobs": [], "queue": []}
    assert requests.get(f"{comfy['url']}/api/goan/workflows", timeout=10).json()["workflows"]
    for path in sorted(WORKFLOWS.glob("*.json")):  # the example workflows against the live node definitions
        problems = check_workflow(json.loads(path.read_text()), infos(comfy), FILE_COMBOS | CORE_FILE_COMBOS)
        assert problems == [], path.name


def test_pause_download_upload_resume_matches_an_uninterrupted_run(comfy):
    from goan_core.resumefile import read_resume_file

    image_name = upload_input_image(comfy)
    ui, prompt = workflow(comfy, "goan_image_to_video.json",
                          {**sampler_widgets(), ("LoadImage", "image"): image_name})
    add_frames_output(prompt, "goan_e2e/reference")
    sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "GoanSegmentSampler")
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "GoanSaveResume")
    video_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveVideo")

    async def scenario(client):
        # 1. run and pause it in the middle of section 2
        paused_id = await client.queue(prompt, ui)
        job = await client.wait_until_running(paused_id, section=1, step=2)
        status, body = await client.post_json("/goan/pause", {"prompt_id": paused_id})
        assert (status, body) == (200, {"status": "pausing", "prompt_id": paused_id})
        again = await client.post_json("/goan/pause", {"prompt_id": paused_id})
        assert again[0] == 200
        pausing = await client.wait_for(lambda m: m["type"] == "goan.pausing", what="goan.pausing")
        assert pausing["data"] == {"prompt_id": paused_id, "node_id": sampler_id}
        paused = await client.wait_for(lambda m: m["type"] == "goan.paused", what="goan.paused")
        end = await client.end_of(paused_id)
        assert end["type"] == "execution_success", end
        note = paused["data"]
        assert note["kind"] == "pause" and note["type"] == "output" and note["prompt_id"] == paused_id
        assert note["subfolder"] == f"goan_resume/{note['job_id']}" and note["job_id"] == job["job_id"]
        history = await client.history(paused_id)
        saved = [{k: v for k, v in item.items() if k not in ("id", "preview_id")}  # asset ids, where assets run
                 for item in history["outputs"][save_id]["goan_resume"]]
        assert saved == [{"filename": note["filename"], "subfolder": note["subfolder"], "type": "output",
                          "job_id": note["job_id"]}]
        assert video_id not in history["outputs"] and "900" not in history["outputs"]  # video branch blocked
        progress = [m for m in client.messages if m["type"] == "progress" and m["data"]["prompt_id"] == paused_id]
        assert progress and progress[-1]["data"]["max"] == 24
        assert client.previews > 0

        # 2. the same prompt again runs through (paused results are never reused from ComfyUI's cache)
        reference_id = await client.queue(prompt, ui)
        end = await client.end_of(reference_id)
        assert end["type"] == "execution_success", end
        reference = await frames(client, reference_id)
        reference_history = await client.history(reference_id)

        # 3. download the paused file through /view, upload it in chunks, inspect it
        data = await client.view({k: note[k] for k in ("filename", "subfolder", "type")})
        assert data == (comfy["output"] / note["subfolder"] / note["filename"]).read_bytes()
        stored = await client.upload_resume(data, "My paused job.goan_resume")
        assert stored["name"] == "goan_resume/My_paused_job.goan_resume" and stored["type"] == "input"
        status, info = await client.get_json("/goan/resume_info", name=stored["name"])
        assert status == 200 and info["workflow"] == ui and info["params"]["steps"] == JOB["steps"]
        # goan encoded the sampler's own prompt with DualCLIPLoader's CLIP: the file records that very text
        assert (info["params"]["prompt"], info["params"]["prompt_source"]) == (JOB["prompt"], "text")
        assert info["job_info"]["next_section"] == 1 and info["job_info"]["step_in_section"] >= 2

        # 4. resume it in the resume workflow, to the end
        # the sampler's widgets hold the job's settings, as the browser fills them from the file
        # (widgets that differ would branch the job: issue 15)
        resume_ui, resume_prompt = workflow(comfy, "goan_resume.json",
                                            {**sampler_widgets(seconds=0), ("GoanLoadResume", "resume_file"): stored["name"]})
        add_frames_output(resume_prompt, "goan_e2e/resumed")
        resumed_id = await client.queue(resume_prompt, resume_ui)
        end = await client.end_of(resumed_id)
        assert end["type"] == "execution_success", end
        resumed_note = await client.wait_for(lambda m: m["type"] == "goan.resumed", what="goan.resumed")
        assert resumed_note["data"]["job_id"] == note["job_id"] and resumed_note["data"]["section"] == 1
        resumed = await frames(client, resumed_id)
        _, jobs = await client.get_json("/goan/jobs")
        resumed_history = await client.history(resumed_id)

        # 5. the frontend's way: the original graph with a Load Resume wired into the sampler. The
        #    encoders are lazy inputs: the file carries the embeddings, so their loaders never run
        #    (their inputs are changed so that ComfyUI's cache cannot be what skips them).
        graph = json.loads(json.dumps(prompt))
        loaders = [k for k, v in graph.items() if v["class_type"] in ("DualCLIPLoader", "CLIPVisionLoader")]
        for node_id in loaders:
            if graph[node_id]["class_type"] == "DualCLIPLoader":
                graph[node_id]["inputs"]["device"] = "cpu"
            else:
                graph[node_id]["inputs"]["clip_name"] = VISION_COPY
        graph["950"] = {"class_type": "GoanLoadResume", "inputs": {"resume_file": stored["name"]}}
        graph[sampler_id]["inputs"].update(resume_state=["950", 0], image=["950", 1], seconds=0.0)
        graph["900"]["inputs"]["filename_prefix"] = "goan_e2e/frontend"
        frontend_id = await client.queue(graph, ui)
        end = await client.end_of(frontend_id)
        assert end["type"] == "execution_success", end
        ran = {m["data"]["node"] for m in client.messages
               if m["type"] == "executing" and m["data"].get("prompt_id") == frontend_id}
        assert sampler_id in ran and not ran & set(loaders), ran
        frontend = await frames(client, frontend_id)
        assert np.array_equal(frontend, reference)
        return reference, resumed, jobs["jobs"], reference_id, resumed_id, reference_history, resumed_history

    reference, resumed, jobs, reference_id, resumed_id, reference_history, resumed_history = run(comfy, scenario)
    assert reference.shape == resumed.shape and reference.shape[0] == 3 * JOB["lws"] * 4 + 1
    assert np.array_equal(reference, resumed)  # pixel for pixel

    # the finished resume files of both runs hold the same final latents
    by_prompt = {job["prompt_id"]: job for job in jobs}
    assert by_prompt[reference_id]["status"] == by_prompt[resumed_id]["status"] == "finished"
    finals = [read_resume_file(comfy["output"] / by_prompt[p]["file"]["subfolder"] / by_prompt[p]["file"]["filename"])
              for p in (reference_id, resumed_id)]
    assert finals[0].state.done and finals[1].state.done
    assert (finals[0].state.history_latents == finals[1].state.history_latents).all()

    # and SaveVideo wrote MP4s whose decoded frames agree
    import av

    def mp4_frames(history):
        video_node = next(v for v in history["outputs"].values() if v.get("animated"))
        item = video_node["images"][0]
        with av.open(str(comfy["output"] / item["subfolder"] / item["filename"])) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    # (the PNG frames above are compared exactly; ComfyUI's SaveVideo encodes with libx264, which is not
    # bit-repeatable on frames this small (README, "Reproducible MP4 files"), so its frames agree closely)
    reference_mp4, resumed_mp4 = mp4_frames(reference_history), mp4_frames(resumed_history)
    assert reference_mp4.shape == resumed_mp4.shape and reference_mp4.shape[0] == reference.shape[0]
    assert np.abs(reference_mp4.astype(int) - resumed_mp4.astype(int)).mean() < 1.0

    # every usual file went through ComfyUI's own loader node (the stub's log lines; see the module docstring)
    log = comfy["log"].read_text(errors="replace")
    for line in ("VAELoader loads goan's tiny hunyuan_video_vae_bf16.safetensors",
                 "CLIPVisionLoader loads goan's tiny sigclip_vision_patch14_384.safetensors",
                 "DualCLIPLoader loads goan's tiny clip_l.safetensors, llava_llama3_fp16.safetensors"):
        assert line in log


def test_cancel_mid_run_leaves_a_loadable_failsafe_file(comfy):
    from goan_core.resumefile import read_resume_file

    image_name = upload_input_image(comfy)
    ui, prompt = workflow(comfy, "goan_image_to_video.json",
                          {**sampler_widgets(seed=7), ("LoadImage", "image"): image_name})

    async def scenario(client):
        prompt_id = await client.queue(prompt, ui)
        await client.wait_until_running(prompt_id, section=0, step=3)
        status, _ = await client.post_json("/interrupt", {"prompt_id": prompt_id})
        assert status == 200
        end = await client.end_of(prompt_id)
        assert end["type"] == "execution_interrupted", end
        failsafe = await client.wait_for(lambda m: m["type"] == "goan.paused", what="goan.paused (failsafe)")
        _, jobs = await client.get_json("/goan/jobs")
        data = await client.view({k: failsafe["data"][k] for k in ("filename", "subfolder", "type")})
        stored = await client.upload_resume(data, "cancelled.goan_resume")
        status, info = await client.get_json("/goan/resume_info", name=stored["name"])
        return failsafe["data"], jobs["jobs"], status, info

    note, jobs, info_status, info = run(comfy, scenario)
    assert note["kind"] == "failsafe"
    job = next(j for j in jobs if j["job_id"] == note["job_id"])
    assert job["status"] == "stopped" and job["file"]["filename"] == note["filename"]
    data = read_resume_file(comfy["output"] / note["subfolder"] / note["filename"])
    assert data.job_info["kind"] == "failsafe" and (data.state.section, data.state.step_in_section) >= (0, 3)
    assert info_status == 200 and info["job_info"]["kind"] == "failsafe"


def test_diffusers_folders_workflow_runs_to_the_end(comfy):
    image_name = upload_input_image(comfy)
    ui, prompt = workflow(comfy, "goan_diffusers_folders.json",
                          {**sampler_widgets(seconds=0.3, steps=2, seed=5), ("LoadImage", "image"): image_name})
    add_frames_output(prompt, "goan_e2e/folders")

    async def scenario(client):
        prompt_id = await client.queue(prompt, ui)
        end = await client.end_of(prompt_id)
        return end, (await frames(client, prompt_id)) if end["type"] == "execution_success" else None

    end, pictures = run(comfy, scenario)
    assert end["type"] == "execution_success", end
    assert pictures.shape == (1 * JOB["lws"] * 4 + 1, 48, 64, 3)  # one section



def test_compare_workflow_branches_one_paused_job_three_ways(comfy):
    """The compare example on the usual files: one uploaded pause file, three samplers with three prompts.
    The sampler whose prompt is the file's resumes the job itself; the other two branch it (new jobs whose
    lineage names it), each to its own resume file. Each sampler is its own job in /goan/jobs (the browser's
    rows), and a pause naming the third sampler pauses that branch alone. A bad branch (a broken timed
    prompt) fails in ComfyUI with goan's message before the CLIP it would need is loaded."""
    import torch

    from comfy_workflow import to_api
    from goan_core.resumefile import read_resume_file

    image_name = upload_input_image(comfy)
    ui, prompt = workflow(comfy, "goan_image_to_video.json",
                          {**sampler_widgets(seed=41), ("LoadImage", "image"): image_name})
    prompts = [JOB["prompt"], "a storm over the sea", "a calm sea at night"]

    async def scenario(client):
        paused_id = await client.queue(prompt, ui)
        await client.wait_until_running(paused_id, section=1, step=0)
        assert (await client.post_json("/goan/pause", {"prompt_id": paused_id}))[0] == 200
        note = (await client.wait_for(lambda m: m["type"] == "goan.paused" and m["data"]["prompt_id"] == paused_id,
                                      what="goan.paused"))["data"]
        assert (await client.end_of(paused_id))["type"] == "execution_success"
        data = await client.view({k: note[k] for k in ("filename", "subfolder", "type")})
        stored = await client.upload_resume(data, "compare.goan_resume")
        compare_ui, _ = workflow(comfy, "goan_compare_branches.json",
                                 {**sampler_widgets(seed=41, seconds=0), ("GoanLoadResume", "resume_file"): stored["name"]})
        samplers = [node for node in compare_ui["nodes"] if node["type"] == "GoanSegmentSampler"]
        for node, text in zip(samplers, prompts):
            node["widgets_values"][0] = text  # the first widget (test_workflows checks the order)
        compare_id = await client.queue(to_api(compare_ui, infos(comfy)), compare_ui)
        # a row per sampler: goan's queue word names each, and a pause names its sampler; the third
        # branch is paused before it starts (or while it runs, if ComfyUI runs it first)
        first = await client.wait_until_running(compare_id, section=1, step=0)
        _, listing = await client.get_json("/goan/jobs")
        third = str(samplers[2]["id"])
        pause = await client.post_json("/goan/pause", {"prompt_id": compare_id, "node_id": third})
        end = await client.end_of(compare_id)
        assert end["type"] == "execution_success", end
        _, jobs = await client.get_json("/goan/jobs")
        resumed = [m["data"] for m in client.messages
                   if m["type"] == "goan.resumed" and m["data"]["prompt_id"] == compare_id]
        queue = [entry for entry in listing["queue"] if entry["prompt_id"] == compare_id]
        assert sorted(entry["node_id"] for entry in queue) == sorted(str(node["id"]) for node in samplers)
        assert pause == (200, {"status": "pausing", "prompt_id": compare_id}), (pause, first)
        assert sorted(m["node_id"] for m in resumed) == sorted(str(node["id"]) for node in samplers)
        mine = [job for job in jobs["jobs"] if job["prompt_id"] == compare_id]
        # read now: the bad run below may resume the parent job again, and its retention keeps the newest files
        states = {job["job_id"]: read_resume_file(comfy["output"] / job["file"]["subfolder"] / job["file"]["filename"]).state
                  for job in mine}

        # a bad branch fails in the sampler's lazy check, before ComfyUI loads the CLIP it would need
        for node, text in zip(samplers, [prompts[0], prompts[0], "[0s] a [2s] b [1s] c"]):
            node["widgets_values"][0] = text
        bad = to_api(compare_ui, infos(comfy))
        clip_id = next(k for k, v in bad.items() if v["class_type"] == "DualCLIPLoader")
        bad[clip_id]["inputs"]["device"] = "cpu"  # not in ComfyUI's cache: it would load if asked for
        bad_id = await client.queue(bad, compare_ui)
        failed = await client.end_of(bad_id)
        ran = {m["data"]["node"] for m in client.messages
               if m["type"] == "executing" and m["data"].get("prompt_id") == bad_id}
        return note["job_id"], mine, states, third, failed, clip_id, ran

    parent, jobs, states, third, failed, clip_id, ran = run(comfy, scenario)
    assert failed["type"] == "execution_error" and "timestamps must increase" in failed["data"]["exception_message"]
    assert clip_id not in ran, ran
    assert len(jobs) == 3 and len({job["node_id"] for job in jobs}) == 3
    assert {job["node_id"]: job["status"] for job in jobs if job["status"] != "finished"} == {third: "paused"}
    plain = states.pop(parent)
    assert plain.done and plain.lineage is None and plain.params.prompt == prompts[0]
    assert len(states) == 2 and all(s.lineage["parent"] == parent for s in states.values())
    assert sorted(s.done for s in states.values()) == [False, True]  # the paused branch can go on later
    assert {job["parent"] for job in jobs if job["job_id"] != parent} == {parent}  # the sidebar groups them
    assert sorted(s.lineage["changes"]["prompt"][0] for s in states.values()) == [prompts[0]] * 2
    finals = [plain.history_latents] + [s.history_latents for s in states.values() if s.done]
    assert not torch.equal(*finals)


# -- current ComfyUI (issue 17): its job API, its asset catalogue ------------------------------------------

def test_native_job_api_lists_and_cancels_goan_jobs(comfy):
    """ComfyUI's own job API (GET /api/jobs, GET /api/jobs/{id}, POST /api/jobs/{id}/cancel), as the browser
    uses it where the server has it; /goan/jobs says which queued prompts are goan jobs."""
    import requests

    if requests.get(f"{comfy['url']}/api/jobs", params={"limit": 1}, timeout=10).status_code == 404:
        pytest.skip("this ComfyUI has no job API (GET /api/jobs answers 404): the browser uses /queue and /interrupt")
    image_name = upload_input_image(comfy)
    ui, first_prompt = workflow(comfy, "goan_image_to_video.json",
                                {**sampler_widgets(seed=31), ("LoadImage", "image"): image_name})
    _, second_prompt = workflow(comfy, "goan_image_to_video.json",
                                {**sampler_widgets(seed=32), ("LoadImage", "image"): image_name})
    sampler_id = next(k for k, v in first_prompt.items() if v["class_type"] == "GoanSegmentSampler")

    async def job(client, prompt_id, want=None):
        deadline = time.monotonic() + 30
        while True:
            status, body = await client.get_json(f"/api/jobs/{prompt_id}")
            if want is None or body.get("status") == want or time.monotonic() > deadline:
                return status, body
            await asyncio.sleep(0.1)

    async def scenario(client):
        first = await client.queue(first_prompt, ui)
        second = await client.queue(second_prompt, ui)
        await client.wait_until_running(first, section=0, step=2)
        _, listing = await client.get_json("/api/jobs", status="in_progress,pending")
        states = {j["id"]: j["status"] for j in listing["jobs"]}
        _, goan = await client.get_json("/goan/jobs")
        running = await job(client, first)
        cancel_queued = await client.post_json(f"/api/jobs/{second}/cancel", {})
        cancel_running = await client.post_json(f"/api/jobs/{first}/cancel", {})
        end = await client.end_of(first)
        failsafe = await client.wait_for(lambda m: m["type"] == "goan.paused" and m["data"]["prompt_id"] == first,
                                         what="goan.paused (failsafe)")
        ended = await job(client, first, want="cancelled")
        removed = await job(client, second)
        again = await client.post_json(f"/api/jobs/{first}/cancel", {})
        return states, goan, running, cancel_queued, cancel_running, end, failsafe["data"], ended, removed, again

    states, goan, running, cancel_queued, cancel_running, end, note, ended, removed, again = run(comfy, scenario)
    first, second = note["prompt_id"], next(p for p in states if p != note["prompt_id"])
    assert states == {first: "in_progress", second: "pending"}
    assert goan["queue"] == [{"prompt_id": first, "node_id": sampler_id, "running": True},
                             {"prompt_id": second, "node_id": sampler_id, "running": False}]
    assert running[0] == 200 and running[1]["status"] == "in_progress"
    assert cancel_queued == (200, {"cancelled": True}) and cancel_running == (200, {"cancelled": True})
    assert end["type"] == "execution_interrupted"
    assert note["kind"] == "failsafe" and (comfy["output"] / note["subfolder"] / note["filename"]).is_file()
    assert ended[0] == 200 and ended[1]["status"] == "cancelled"
    assert removed[0] == 404  # left the queue before it ran: the server no longer knows it
    assert again == (200, {"cancelled": False})  # nothing left to cancel


def test_asset_catalogue_skips_autosaves(comfy):
    """Where ComfyUI has an asset system, its scan of the output folder catalogues the pause file (an output
    of Save Resume) but not the autosaves, which are hidden files (current ComfyUI rescans the output folder
    after every prompt; a rotated autosave would stay there as a missing asset, hashed with hashing on)."""
    import requests

    if not comfy["assets"]:
        pytest.skip("this ComfyUI has no asset system (neither --enable-assets nor --disable-assets)")
    image_name = upload_input_image(comfy)
    ui, prompt = workflow(comfy, "goan_image_to_video.json",
                          {**sampler_widgets(seed=41), ("LoadImage", "image"): image_name})

    async def scenario(client):
        prompt_id = await client.queue(prompt, ui)
        await client.wait_until_running(prompt_id, section=2, step=1)
        await client.post_json("/goan/pause", {"prompt_id": prompt_id})
        paused = await client.wait_for(lambda m: m["type"] == "goan.paused" and m["data"]["prompt_id"] == prompt_id,
                                       what="goan.paused")
        await client.end_of(prompt_id)
        autosaves = [m["data"] for m in client.messages
                     if m["type"] == "goan.autosaved" and m["data"]["prompt_id"] == prompt_id]
        return paused["data"], autosaves

    note, autosaves = run(comfy, scenario)
    assert len(autosaves) >= 2 and all(a["filename"].startswith(".") for a in autosaves)
    assert any((comfy["output"] / a["subfolder"] / a["filename"]).is_file() for a in autosaves)
    deadline = time.monotonic() + 120
    while True:  # a scan of the output folder (one may be running already: 409)
        answer = requests.post(f"{comfy['url']}/api/assets/seed", params={"wait": "true"}, json={"roots": ["output"]},
                               timeout=120)
        if answer.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status_code in (200, 202), answer.text
    deadline = time.monotonic() + 60
    while True:
        listed = requests.get(f"{comfy['url']}/api/assets", params={"include_tags": "output", "limit": 500}, timeout=30)
        names = {a["name"] for a in listed.json()["assets"]}
        if note["filename"] in names or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert note["filename"] in names  # the pause file: an output, catalogued
    resume_names = {n for n in names if n.endswith(".goan_resume")}
    assert not {a["filename"] for a in autosaves} & names and not any(n.startswith(".") for n in resume_names)
