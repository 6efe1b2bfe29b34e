"""The adapter's ComfyUI side, against stand-ins for ComfyUI's modules (the real thing: test_comfyui_e2e.py).

The pack is loaded a second time, under another package name, while stand-in modules named like
ComfyUI's (folder_paths, comfy.utils, comfy.model_management, comfy.latent_formats, latent_preview,
comfy_execution.graph/utils, server) sit in sys.modules: the adapter must then pick the ComfyUI host,
route every call there, and register the routes on PromptServer.instance.routes.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from aiohttp import web

from nodes_pack import load_pack

NAME = "goan_pack_in_stub_comfy"


class Stubs:
    def __init__(self, tmp_path):
        self.sent, self.bars, self.emptied, self.unloaded = [], [], 0, 0
        self.interrupt = False
        self.tmp = tmp_path
        stubs = self

        class InterruptProcessingException(Exception):
            pass

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.node_id, self.values = total, node_id, []
                stubs.bars.append(self)

            def update_absolute(self, value, total=None, preview=None):
                self.values.append((value, total, preview))

        class ExecutionBlocker:
            def __init__(self, message):
                self.message = message

        class Server:
            instance = None

            def __init__(self):
                self.routes = web.RouteTableDef()
                self.client_id = "client-9"
                self.last_prompt_id = "prompt-last"
                self.prompt_queue = types.SimpleNamespace(
                    get_current_queue_volatile=lambda: ([(1, "prompt-run", {"5": {"class_type": "GoanSegmentSampler"}},
                                                          {}, [])], []))
                Server.instance = self

            def send_sync(self, event, data, sid=None):
                stubs.sent.append((event, data, sid))

        def throw():
            if stubs.interrupt:
                stubs.interrupt = False
                raise InterruptProcessingException()

        def empty():
            stubs.emptied += 1

        def unload():
            stubs.unloaded += 1

        class Previewer:
            def decode_latent_to_preview_image(self, fmt, x0):
                return (fmt, tuple(x0.shape), 512)

        self.InterruptProcessingException, self.ExecutionBlocker, self.Server = (
            InterruptProcessingException, ExecutionBlocker, Server)
        folders = {"diffusers": [str(tmp_path / "models" / "diffusers")]}
        self.modules = {
            "folder_paths": types.SimpleNamespace(
                get_folder_paths=lambda kind: folders[kind],
                get_input_directory=lambda: str(tmp_path / "in"), get_output_directory=lambda: str(tmp_path / "out"),
                get_temp_directory=lambda: str(tmp_path / "tmp")),
            "comfy": types.ModuleType("comfy"),
            "comfy.utils": types.SimpleNamespace(ProgressBar=ProgressBar),
            "comfy.model_management": types.SimpleNamespace(
                InterruptProcessingException=InterruptProcessingException,
                throw_exception_if_processing_interrupted=throw, get_torch_device=lambda: torch.device("cpu"),
                soft_empty_cache=empty, unload_all_models=unload, OOM_EXCEPTION=torch.OutOfMemoryError),
            "comfy.latent_formats": types.SimpleNamespace(HunyuanVideo=lambda: "hunyuan-format"),
            "latent_preview": types.SimpleNamespace(
                get_previewer=lambda device, fmt: Previewer() if fmt == "hunyuan-format" else None),
            "comfy_execution": types.ModuleType("comfy_execution"),
            "comfy_execution.graph": types.SimpleNamespace(ExecutionBlocker=ExecutionBlocker),
            "comfy_execution.utils": types.SimpleNamespace(
                get_executing_context=lambda: types.SimpleNamespace(prompt_id="prompt-ctx", node_id="5")),
            "server": types.SimpleNamespace(PromptServer=Server),
        }
        self.modules["comfy"].utils = self.modules["comfy.utils"]
        self.modules["comfy"].model_management = self.modules["comfy.model_management"]
        self.modules["comfy"].latent_formats = self.modules["comfy.latent_formats"]
        self.modules["comfy_execution"].graph = self.modules["comfy_execution.graph"]
        self.modules["comfy_execution"].utils = self.modules["comfy_execution.utils"]


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    stubs = Stubs(tmp_path)
    for name, module in stubs.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    stubs.server = stubs.Server()
    pack = load_pack(NAME)
    yield stubs, pack
    for name in [m for m in sys.modules if m == NAME or m.startswith(NAME + ".")]:
        del sys.modules[name]


def test_the_comfyui_host_is_chosen_and_routes_registered(comfy):
    stubs, pack = comfy
    adapter = sys.modules[NAME + ".nodes.adapter"]
    host = adapter.HOST
    assert host.is_comfy and host.server is stubs.server
    paths = {route.path for route in stubs.server.routes if isinstance(route, web.RouteDef)}
    assert {"/goan/pause", "/goan/jobs", "/goan/upload/{upload_id}", "/goan/resume_info", "/goan/workflows",
            "/goan/workflows/{name}"} <= paths
    assert host.folder_paths("diffusers") == [str(stubs.tmp / "models" / "diffusers")]
    assert host.folder_paths("unknown_kind") == []
    assert host.directory("output") == stubs.tmp / "out" and (stubs.tmp / "out").is_dir()
    assert host.torch_device() == torch.device("cpu")
    assert host.current_prompt_id() == "prompt-ctx"
    assert host.running_prompts() == {"prompt-run": {"5": {"class_type": "GoanSegmentSampler"}}}


def test_comfyui_calls_go_through_the_host(comfy):
    stubs, pack = comfy
    host = sys.modules[NAME + ".nodes.adapter"].HOST
    bar = host.progress_bar(10, "5")
    bar.update_absolute(3, 10, None)
    assert stubs.bars[0].node_id == "5" and stubs.bars[0].values == [(3, 10, None)]
    host.send("goan.paused", {"prompt_id": "p"})
    assert stubs.sent == [("goan.paused", {"prompt_id": "p"}, "client-9")]  # to the client that queued it
    assert isinstance(host.blocker(), stubs.ExecutionBlocker) and host.blocker().message is None
    preview = host.previewer()
    assert preview(torch.zeros(1, 16, 2, 4, 4)) == ("JPEG", (1, 16, 2, 4, 4), 512)
    stubs.interrupt = True
    with pytest.raises(stubs.InterruptProcessingException) as caught:
        host.check_interrupt()
    assert host.is_interrupt(caught.value) and not host.is_interrupt(ValueError())
    assert host.is_oom(torch.OutOfMemoryError("x"))
    host.release_memory()
    host.unload_other_models()  # on the CPU ComfyUI's models stay where they are
    assert stubs.emptied == 1 and stubs.unloaded == 0


def test_pause_route_finds_a_running_prompt_through_comfyui(comfy):
    stubs, pack = comfy
    registry = sys.modules[NAME + ".nodes.jobs"].REGISTRY
    entry = registry.request_pause("prompt-run")
    assert entry is not None and entry.node_id == "5" and entry.status == "pausing"
    assert stubs.sent == [("goan.pausing", {"prompt_id": "prompt-run", "node_id": "5"}, "client-9")]
    assert registry.request_pause("prompt-elsewhere") is None


def test_gate_blocks_with_comfyuis_execution_blocker(comfy):
    stubs, pack = comfy
    gate = pack.NODE_CLASS_MAPPINGS["GoanPauseGate"]()
    job_type = sys.modules[NAME + ".nodes.types"].GoanJob
    state = types.SimpleNamespace(done=False)
    paused = job_type(state=state, source_image=None, status="paused")
    images, fps, passed = gate.execute(paused, torch.zeros(1, 8, 8, 3), 30.0)
    assert isinstance(images, stubs.ExecutionBlocker) and isinstance(fps, stubs.ExecutionBlocker) and passed is paused
