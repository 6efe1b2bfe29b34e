"""The adapter's ComfyUI side, against stand-ins for ComfyUI's modules (the real thing: test_comfyui_e2e.py).

The pack is loaded a second time, under another package name, while stand-in modules named like
ComfyUI's (folder_paths, comfy.utils, comfy.model_management, comfy.latent_formats, latent_preview,
comfy_execution.graph/utils, server) sit in sys.modules: the adapter must then pick the ComfyUI host,
route every call there, and register the routes on PromptServer.instance.routes.

The stand-ins have the shape of current ComfyUI (0.24 to 0.38): InterruptProcessingException is a BaseException and
comfy.model_management classifies out-of-memory errors with `is_oom(e)` (torch's OutOfMemoryError, and an
AcceleratorError with CUDA's allocation-failure code or an "out of memory" message); tests that need an
older ComfyUI remove what it lacked.
"""

from __future__ import annotations

import enum
import sys
import types

import pytest
import torch
from aiohttp import web

from nodes_helpers import JOB, comfy_models  # noqa: F401  (comfy_models: a fixture)
from nodes_pack import load_pack

NAME = "goan_pack_in_stub_comfy"


class Stubs:
    def __init__(self, tmp_path, models=None):
        self.sent, self.bars, self.emptied, self.unloaded, self.freed = [], [], 0, 0, []
        self.interrupt = False
        self.interrupt_at = None  # a progress value at which the stand-in ComfyUI's Cancel is pressed
        self.oom_checks = []  # what goan asked comfy.model_management.is_oom about
        self.tmp = tmp_path
        stubs = self

        class InterruptProcessingException(BaseException):  # as in ComfyUI >= 0.24 (an Exception up to 0.12)
            pass

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.node_id, self.values = total, node_id, []
                stubs.bars.append(self)

            def update_absolute(self, value, total=None, preview=None):
                self.values.append((value, total, preview))
                if stubs.interrupt_at is not None and value >= stubs.interrupt_at:
                    stubs.interrupt, stubs.interrupt_at = True, None

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
                                                          {}, [])],
                                                        [(3, "prompt-later", {"2": {"class_type": "KSampler"}}, {}, []),
                                                         (2, "prompt-next", {"8": {"class_type": "GoanSegmentSampler"}},
                                                          {}, [])]))
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

        def is_oom(error):
            stubs.oom_checks.append(error)
            if isinstance(error, torch.OutOfMemoryError):
                return True
            return isinstance(error, torch.AcceleratorError) and (
                getattr(error, "error_code", None) == 2 or "out of memory" in str(error).lower())

        def free_memory(memory_required, device, keep_loaded=()):
            stubs.freed.append((memory_required, device))
            return []

        class VRAMState(enum.Enum):
            DISABLED, NO_VRAM, LOW_VRAM, NORMAL_VRAM, HIGH_VRAM, SHARED = range(6)

        class Previewer:
            def decode_latent_to_preview_image(self, fmt, x0):
                return (fmt, tuple(x0.shape), 512)

        self.InterruptProcessingException, self.ExecutionBlocker, self.Server = (
            InterruptProcessingException, ExecutionBlocker, Server)
        models = models or tmp_path / "models"
        folders = {"diffusers": [str(models / "diffusers")], "diffusion_models": [str(models / "diffusion_models")]}
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
                soft_empty_cache=empty, unload_all_models=unload, OOM_EXCEPTION=torch.OutOfMemoryError, is_oom=is_oom,
                free_memory=free_memory, VRAMState=VRAMState, vram_state=VRAMState.NORMAL_VRAM,
                args=types.SimpleNamespace(reserve_vram=None, lowvram=False, novram=False), current_loaded_models=[]),
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


def _pack_in_stub_comfy(stubs, monkeypatch):
    for name, module in stubs.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    stubs.server = stubs.Server()
    return load_pack(NAME)


def _unload_pack():
    for name in [m for m in sys.modules if m == NAME or m.startswith(NAME + ".")]:
        del sys.modules[name]


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    stubs = Stubs(tmp_path)
    pack = _pack_in_stub_comfy(stubs, monkeypatch)
    yield stubs, pack
    _unload_pack()


@pytest.fixture
def comfy_with_models(tmp_path, monkeypatch, comfy_models):
    """The stand-in ComfyUI with the tiny models in its model folders."""
    stubs = Stubs(tmp_path, models=comfy_models)
    pack = _pack_in_stub_comfy(stubs, monkeypatch)
    yield stubs, pack
    _unload_pack()


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
    assert list(host.pending_prompts()) == ["prompt-next", "prompt-later"]  # queue order: by number
    assert sys.modules[NAME + ".nodes.jobs"].queued_goan_prompts() == [
        {"prompt_id": "prompt-run", "node_id": "5", "running": True},
        {"prompt_id": "prompt-next", "node_id": "8", "running": False}]


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
    assert stubs.emptied == 1 and stubs.unloaded == 0


# -- Cancel and out of memory through ComfyUI's own exception and classifier (issue 17) -----------------


def _run_sampler_in_stub_comfy(stubs):
    """Load the tiny models through the stub-hosted pack's loader nodes and run its sampler on JOB."""
    from goan_core.media import demo_image
    from goan_core.models.tiny import TINY_TRANSFORMER_FILE

    nodes = sys.modules[NAME + ".nodes"].NODE_CLASS_MAPPINGS
    types_ = sys.modules[NAME + ".nodes.types"]
    (transformer,) = nodes["GoanTransformerLoader"]().execute(TINY_TRANSFORMER_FILE, "float32", "auto")
    (vae,) = nodes["GoanVAELoader"]().execute("goan_tiny", "float32")
    (text,) = nodes["GoanTextEncoderLoader"]().execute("goan_tiny", "float32")
    (image_encoder,) = nodes["GoanImageEncoderLoader"]().execute("goan_tiny", "float32")
    return nodes["GoanSegmentSampler"]().execute(
        **dict(JOB, autosave_every=0), transformer=transformer, text_encoders=text, image_encoder=image_encoder,
        goan_vae=vae, image=types_.uint8_to_image(demo_image()), unique_id="7")


def _failsafe_event(stubs):
    (event,) = [data for name, data, _ in stubs.sent if name == "goan.paused"]
    assert event["kind"] == "failsafe" and event["prompt_id"] == "prompt-ctx"
    path = stubs.tmp / "out" / event["subfolder"] / event["filename"]
    assert path.is_file()
    return event, path


def test_comfyuis_cancel_a_base_exception_writes_the_failsafe_file_and_propagates(comfy_with_models):
    stubs, pack = comfy_with_models
    assert not issubclass(stubs.InterruptProcessingException, Exception)
    stubs.interrupt_at = 2  # Cancel pressed once the bar shows two steps done
    with pytest.raises(stubs.InterruptProcessingException) as caught:
        _run_sampler_in_stub_comfy(stubs)
    assert any("progress saved to" in note for note in getattr(caught.value, "__notes__", []))
    event, path = _failsafe_event(stubs)
    (job,) = sys.modules[NAME + ".nodes.jobs"].REGISTRY.jobs()
    assert job["status"] == "stopped" and job["error"] == "cancelled" and job["file"]["filename"] == path.name
    data = sys.modules[NAME + ".goan_core.resumefile"].read_resume_file(path)
    assert data.job_info["kind"] == "failsafe" and data.state.steps_done == 2


def _accelerator_oom():
    error = torch.AcceleratorError("CUDA error: out of memory")
    error.error_code = 2  # cudaErrorMemoryAllocation, as torch sets it on a real one
    return error


@pytest.mark.parametrize("make_error", [lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                        _accelerator_oom], ids=["OutOfMemoryError", "AcceleratorError"])
def test_out_of_memory_of_both_kinds_writes_the_failsafe_file_and_says_so(comfy_with_models, monkeypatch, make_error):
    stubs, pack = comfy_with_models
    engine = sys.modules[NAME + ".goan_core.sampling.engine"].Engine
    real_step, calls = engine.step, []

    def step(self, state):
        calls.append(state.steps_done)
        if len(calls) == 3:
            raise make_error()
        return real_step(self, state)

    monkeypatch.setattr(engine, "step", step)
    error_type = type(make_error())
    with pytest.raises(error_type):
        _run_sampler_in_stub_comfy(stubs)
    event, path = _failsafe_event(stubs)
    (job,) = sys.modules[NAME + ".nodes.jobs"].REGISTRY.jobs()
    assert job["status"] == "failed" and job["error"].startswith("out of memory: ") and job["file"] is not None
    assert [type(e) for e in stubs.oom_checks] == [error_type]  # ComfyUI's classifier was the one asked
    assert sys.modules[NAME + ".goan_core.resumefile"].read_resume_file(path).state.steps_done == 2


def test_older_comfyui_without_is_oom_still_knows_both_kinds(comfy, monkeypatch):
    stubs, pack = comfy
    monkeypatch.delattr(stubs.modules["comfy.model_management"], "is_oom")
    host = sys.modules[NAME + ".nodes.adapter"].HOST
    assert host.is_oom(torch.OutOfMemoryError("x")) and host.is_oom(_accelerator_oom())
    assert host.is_oom(torch.AcceleratorError("CUDA error: out of memory"))  # no code, the message says it
    assert not host.is_oom(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    assert not host.is_oom(RuntimeError("out of memory")) and not host.is_oom(stubs.InterruptProcessingException())


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


# -- memory (issue 10 point 4): ComfyUI frees what the job needs, its flags set the budget ---------------


class ToyTransformer(torch.nn.Module):
    """Two swappable blocks and a non-block head: enough for the planner."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(patch_size=2, num_attention_heads=2, attention_head_dim=4)
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(3)])
        self.proj_out = torch.nn.Linear(8, 8)


class LoadedModel:
    """What ComfyUI keeps in current_loaded_models, as far as goan reads it."""

    def __init__(self, device, loaded):
        self.device, self.loaded = device, loaded

    def model_loaded_memory(self):
        return self.loaded


def toy_job():
    transformer = types.SimpleNamespace(model=ToyTransformer(), device=torch.device("cuda"), dtype=torch.float32)
    state = types.SimpleNamespace(plan=types.SimpleNamespace(lws=1, latent_height=4, latent_width=4))
    return transformer, state


def test_comfyui_frees_the_planned_bytes_never_everything(comfy, tmp_path, monkeypatch):
    stubs, pack = comfy
    mm = stubs.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda", 0))
    models = sys.modules[NAME + ".goan_core.models"]
    jobs = sys.modules[NAME + ".goan_core.jobs"]
    sampler = sys.modules[NAME + ".nodes.sampler"]
    transformer, state = toy_job()
    sizes = models.plan_swap(transformer.model, None, 0.0, tokens=models.section_tokens(state.plan))
    # free now: room for the non-block parts only; a ComfyUI model on cuda:0 holds what the blocks need
    free_now = sizes.fixed_bytes + 2 * GIB  # the preservation (2 GB) holds the activations
    mm.current_loaded_models[:] = [LoadedModel(torch.device("cuda", 0), 3 * 16640 + 123),
                                   LoadedModel(torch.device("cpu"), 10 ** 9)]  # not on the device: not counted
    fake = models.CountingAccelerator(free_now)
    settings = jobs.RunSettings(tmp_path, gpu_memory_preservation=2.0, accelerator=fake)
    settings, plan = sampler.claim_memory(transformer, state, settings)
    obtainable = free_now + 3 * 16640 + 123
    assert plan == models.plan_swap(transformer.model, obtainable, 2.0, tokens=models.section_tokens(state.plan))
    assert plan.streamed == () and len(plan.resident) == 3  # with ComfyUI's model evicted, everything fits
    assert not models.plan_swap(transformer.model, free_now, 2.0, tokens=models.section_tokens(state.plan)).resident
    # weights + the preserved memory the activations use, on ComfyUI's device name
    assert stubs.freed == [(plan.peak_weight_bytes + 2 * GIB, torch.device("cuda", 0))]
    assert plan.device_bytes() == plan.peak_weight_bytes + max(2 * GIB, plan.reserve_bytes) <= obtainable
    assert stubs.unloaded == 0
    assert settings.gpu_memory_preservation == 2.0
    assert settings.accelerator.free_bytes() == free_now  # the runner plans with what is really free...
    fake._free = 10 * GIB
    assert settings.accelerator.free_bytes() == obtainable  # ...but never with more than was asked for
    with models.placed(transformer.model, "cuda", settings.gpu_memory_preservation,
                       tokens=models.section_tokens(state.plan), accelerator=settings.accelerator) as placement:
        assert placement.plan == plan and fake.resident_bytes == plan.peak_weight_bytes
    assert fake.resident_bytes == 0


@pytest.mark.parametrize("state, reserve, expected", [
    ("NORMAL_VRAM", None, (6.0, "normal", "node")),
    ("LOW_VRAM", None, (6.0, "lowvram", "--lowvram")),
    ("NO_VRAM", None, (6.0, "novram", "--novram")),
    ("NORMAL_VRAM", 1.5, (7.5, "normal", "--reserve-vram 1.5")),
    ("LOW_VRAM", 2.0, (8.0, "lowvram", "--lowvram --reserve-vram 2")),
])
def test_comfyui_flags_set_the_budget(comfy, monkeypatch, state, reserve, expected):
    stubs, pack = comfy
    mm = stubs.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState[state])
    monkeypatch.setattr(mm.args, "reserve_vram", reserve)
    budget = sys.modules[NAME + ".nodes.adapter"].HOST.memory_budget(6.0)
    assert (budget.gpu_memory_preservation, budget.mode, budget.source) == expected


def test_comfyui_lowvram_streams_every_block_and_asks_for_that(comfy, tmp_path, monkeypatch):
    stubs, pack = comfy
    mm = stubs.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
    monkeypatch.setattr(mm.args, "reserve_vram", 0.5)
    models = sys.modules[NAME + ".goan_core.models"]
    jobs = sys.modules[NAME + ".goan_core.jobs"]
    transformer, state = toy_job()
    fake = models.CountingAccelerator(40 * GIB)
    settings, plan = sys.modules[NAME + ".nodes.sampler"].claim_memory(
        transformer, state, jobs.RunSettings(tmp_path, gpu_memory_preservation=1.0, accelerator=fake))
    assert plan.resident == () and len(plan.streamed) == 3 and plan.prefetch
    assert settings.gpu_memory_preservation == 1.5
    activations = max(int(1.5 * GIB), plan.reserve_bytes)  # the reserve lives in the preserved memory
    assert stubs.freed == [(plan.peak_weight_bytes + activations, torch.device("cuda"))]  # get_torch_device is cpu
    assert plan.peak_weight_bytes == plan.fixed_bytes + plan.slot_bytes
    assert stubs.unloaded == 0


GIB = 1024 ** 3
