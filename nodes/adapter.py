"""The one module that talks to ComfyUI; everything else in the pack goes through `HOST`.

Inside ComfyUI (`folder_paths` is already imported by the time custom nodes load) `HOST` is a
`ComfyHost` over folder_paths, comfy.utils.ProgressBar, comfy.model_management, server.PromptServer,
ExecutionBlocker and latent_preview. Anywhere else (tests, scripts) it is a `PlainHost` with plain
fallbacks: folders set by `configure`, a progress bar that records, an interrupt flag, events kept
in a list. Nothing here imports ComfyUI at module level when ComfyUI is absent.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..goan_core.models import Accelerator, is_out_of_memory, resolve_device

log = logging.getLogger("goan")

# diffusers' AutoencoderKLHunyuanVideo scaling_factor: FramePack (and goan) keep latents multiplied by it;
# ComfyUI's LATENT and VAE work on raw (unscaled) latents and apply it inside the model.
HUNYUAN_VAE_SCALE = 0.476986

# ComfyUI model folder names goan reads, and the subfolders of a plain models dir that stand for them.
MODEL_FOLDERS = {
    "diffusion_models": ("diffusion_models", "unet"),
    "diffusers": ("diffusers",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "clip_vision": ("clip_vision",),
}


GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryBudget:
    """How much of the compute device a job's transformer may take (see GoanSegmentSampler's memory claim).

    `gpu_memory_preservation`: GB kept free on the device (the sampler's widget, plus ComfyUI's
    --reserve-vram when given). `mode`: "normal" keeps as many transformer blocks resident as fit,
    "lowvram" streams every block (two slots, prefetching), "novram" streams every block through one
    slot (no prefetch): ComfyUI's --lowvram and --novram.
    """

    gpu_memory_preservation: float
    mode: str = "normal"
    source: str = "node"  # where it came from, for the log: "node" or the ComfyUI flags used

    @property
    def preservation_bytes(self) -> int:
        return int(self.gpu_memory_preservation * GIB)


class PlainInterrupt(BaseException):
    """Stands in for ComfyUI's InterruptProcessingException outside ComfyUI: a BaseException, as ComfyUI's
    is now (older ComfyUI derived it from Exception; goan catches BaseException either way)."""


class PlainBlocker:
    """Stands in for ComfyUI's ExecutionBlocker outside ComfyUI."""

    def __init__(self, message=None):
        self.message = message


class PlainProgressBar:
    """Records updates (value, total, preview) instead of drawing anything."""

    def __init__(self, total: int, node_id=None, host: "PlainHost | None" = None):
        self.total, self.node_id, self.current = total, node_id, 0
        self.updates: list[tuple[int, int, object]] = []
        self.host = host
        if host is not None:
            host.progress_bars.append(self)

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        self.updates.append((self.current, self.total, preview))
        if self.host is not None and self.host.on_progress is not None:
            self.host.on_progress(self)  # where tests pause or cancel, as a user would mid-run


class PlainHost:
    """Outside ComfyUI: folders from `configure`, events in `events`, interrupts by `request_interrupt`."""

    is_comfy = False
    server = None

    def __init__(self):
        base = Path(tempfile.gettempdir()) / "goan_nodes"
        self.dirs = {"input": base / "input", "output": base / "output", "temp": base / "temp"}
        self.models_dir = base / "models"
        self.events: list[tuple[str, dict]] = []
        self.progress_bars: list[PlainProgressBar] = []
        self.prompt_id = "local"
        self.running: dict[str, dict] = {}  # prompt_id -> API prompt, as ComfyUI's queue would know it
        self.pending: dict[str, dict] = {}  # the same for prompts waiting in the queue
        self.previews = False
        self.on_progress = None  # called with the bar after every update (tests)
        self._interrupt = threading.Event()
        self.interrupt_types: tuple[type[BaseException], ...] = (PlainInterrupt,)
        self.accelerator = None  # a stand-in compute device (tests: goan_core.models.CountingAccelerator)
        self.memory_calls: list[tuple[int, torch.device]] = []  # free_memory(bytes, device), in order

    def configure(self, *, models_dir=None, input_dir=None, output_dir=None, temp_dir=None) -> None:
        if models_dir is not None:
            self.models_dir = Path(models_dir)
        for key, value in (("input", input_dir), ("output", output_dir), ("temp", temp_dir)):
            if value is not None:
                self.dirs[key] = Path(value)

    # folders
    def folder_paths(self, kind: str) -> list[str]:
        return [str(self.models_dir / sub) for sub in MODEL_FOLDERS.get(kind, (kind,))]

    def directory(self, kind: str) -> Path:
        path = self.dirs[kind]
        path.mkdir(parents=True, exist_ok=True)
        return path

    # devices and memory
    def torch_device(self) -> torch.device:
        return resolve_device("auto")

    def release_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def memory_budget(self, gpu_memory_preservation: float) -> MemoryBudget:
        """Outside ComfyUI there are no flags: the node's (or caller's) preservation is the budget."""
        return MemoryBudget(float(gpu_memory_preservation))

    def accelerator_for(self, device: torch.device):
        """The Accelerator goan places the transformer through: the stand-in when set, else CUDA's; None on the CPU."""
        if self.accelerator is not None:
            return self.accelerator
        return Accelerator(device) if torch.device(device).type == "cuda" else None

    def obtainable_bytes(self, device: torch.device, accelerator) -> int | None:
        """Device bytes a job could have: what is free now (no other model manager to ask)."""
        return accelerator.free_bytes()

    def free_memory(self, bytes_needed: int, device: torch.device) -> None:
        """Make `bytes_needed` free on `device`: recorded (tests); on CUDA torch's cache is emptied."""
        self.memory_calls.append((int(bytes_needed), torch.device(device)))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()

    # progress, previews, interrupts
    def progress_bar(self, total: int, node_id=None) -> PlainProgressBar:
        return PlainProgressBar(total, node_id, self)

    def previewer(self):
        return (lambda latent: ("JPEG", None, 512)) if self.previews else None

    def request_interrupt(self) -> None:
        self._interrupt.set()

    def check_interrupt(self) -> None:
        if self._interrupt.is_set():
            self._interrupt.clear()
            raise PlainInterrupt("Processing interrupted")

    def is_interrupt(self, error: BaseException) -> bool:
        return isinstance(error, self.interrupt_types)

    def is_oom(self, error: BaseException) -> bool:
        return is_out_of_memory(error)

    def blocker(self):
        return PlainBlocker(None)

    # server
    def send(self, event: str, data: dict) -> None:
        self.events.append((event, dict(data)))

    def current_prompt_id(self) -> str | None:
        return self.prompt_id

    def running_prompts(self) -> dict[str, dict]:
        """prompt_id -> API-format prompt of every prompt running now."""
        return dict(self.running)

    def pending_prompts(self) -> dict[str, dict]:
        """prompt_id -> API-format prompt of every prompt waiting in the queue, in queue order."""
        return dict(self.pending)


class ComfyHost:
    """Inside ComfyUI."""

    is_comfy = True

    def __init__(self, folder_paths):
        import comfy.model_management as mm
        import comfy.utils
        from comfy_execution.graph import ExecutionBlocker

        self._fp, self._mm, self._utils, self._blocker = folder_paths, mm, comfy.utils, ExecutionBlocker
        try:
            from server import PromptServer

            self.server = getattr(PromptServer, "instance", None)
        except ImportError:
            self.server = None
        self.interrupt_types = (mm.InterruptProcessingException,)

    def folder_paths(self, kind: str) -> list[str]:
        try:
            return list(self._fp.get_folder_paths(kind))
        except KeyError:
            return []

    def directory(self, kind: str) -> Path:
        getter = {"input": self._fp.get_input_directory, "output": self._fp.get_output_directory,
                  "temp": self._fp.get_temp_directory}[kind]
        path = Path(getter())
        path.mkdir(parents=True, exist_ok=True)
        return path

    def torch_device(self) -> torch.device:
        return self._mm.get_torch_device()

    def release_memory(self) -> None:
        self._mm.soft_empty_cache()

    def _comfy_device(self, device) -> torch.device:
        """`device` as ComfyUI names it (LoadedModel.device is get_torch_device(), e.g. cuda:0, not cuda)."""
        device = torch.device(device)
        comfy = self.torch_device()
        return comfy if device.type == comfy.type and device.index in (None, comfy.index) else device

    def memory_budget(self, gpu_memory_preservation: float) -> MemoryBudget:
        """ComfyUI's flags when the user gave them, the node's preservation otherwise.

        --lowvram (vram_state LOW_VRAM) streams every transformer block, --novram (NO_VRAM) streams
        them through a single slot; --reserve-vram GB is added to the preservation (kept free too).
        """
        mm = self._mm
        states = getattr(mm, "VRAMState", None)
        state = getattr(mm, "vram_state", None)
        mode = "normal"
        if states is not None and state == getattr(states, "NO_VRAM", object()):
            mode = "novram"
        elif states is not None and state == getattr(states, "LOW_VRAM", object()):
            mode = "lowvram"
        reserve = getattr(getattr(mm, "args", None), "reserve_vram", None)
        preservation = float(gpu_memory_preservation) + (float(reserve) if reserve else 0.0)
        flags = ([f"--{mode}"] if mode != "normal" else []) + ([f"--reserve-vram {reserve:g}"] if reserve else [])
        return MemoryBudget(preservation, mode, " ".join(flags) or "node")

    def accelerator_for(self, device: torch.device):
        return Accelerator(device) if torch.device(device).type == "cuda" else None

    def obtainable_bytes(self, device: torch.device, accelerator) -> int | None:
        """Free device bytes now plus what ComfyUI's loaded models hold there (free_memory can evict them)."""
        self._mm.soft_empty_cache()  # torch's cached blocks count as free to ComfyUI, not to mem_get_info
        free = accelerator.free_bytes()
        if free is None:
            return None
        target = self._comfy_device(device)
        loaded = 0
        for model in list(getattr(self._mm, "current_loaded_models", ())):
            try:
                if model.device == target:
                    loaded += int(model.model_loaded_memory())
            except (AttributeError, ReferenceError):  # an entry whose model is gone: it holds nothing
                continue
        return free + loaded

    def free_memory(self, bytes_needed: int, device: torch.device) -> None:
        """Ask ComfyUI to make `bytes_needed` free on `device`: it unloads (or partly offloads) its own models,
        least needed first, only as far as needed; never unload_all_models."""
        self._mm.free_memory(int(bytes_needed), self._comfy_device(device))
        self._mm.soft_empty_cache()

    def progress_bar(self, total: int, node_id=None):
        return self._utils.ProgressBar(total, node_id=node_id)

    def previewer(self):
        """A function latent -> ComfyUI preview tuple, or None when previews are off (--preview-method)."""
        import comfy.latent_formats
        import latent_preview

        previewer = latent_preview.get_previewer(torch.device("cpu"), comfy.latent_formats.HunyuanVideo())
        if previewer is None:
            return None
        return lambda latent: previewer.decode_latent_to_preview_image("JPEG", latent.float().cpu())

    def check_interrupt(self) -> None:
        self._mm.throw_exception_if_processing_interrupted()

    def is_interrupt(self, error: BaseException) -> bool:
        return isinstance(error, self.interrupt_types)

    def is_oom(self, error: BaseException) -> bool:
        """ComfyUI's own classifier where it has one (`is_oom`: OutOfMemoryError and AcceleratorError OOMs),
        else its OOM_EXCEPTION and goan's check (which knows AcceleratorError too)."""
        classify = getattr(self._mm, "is_oom", None)
        if callable(classify):
            return bool(classify(error))
        oom = getattr(self._mm, "OOM_EXCEPTION", torch.OutOfMemoryError)
        return is_out_of_memory(error) or (oom is not Exception and isinstance(error, oom))

    def blocker(self):
        return self._blocker(None)

    def send(self, event: str, data: dict) -> None:
        if self.server is not None:
            self.server.send_sync(event, data, getattr(self.server, "client_id", None))

    def current_prompt_id(self) -> str | None:
        try:
            from comfy_execution.utils import get_executing_context

            context = get_executing_context()
            if context is not None:
                return context.prompt_id
        except ImportError:
            pass
        return getattr(self.server, "last_prompt_id", None)

    def _queue(self) -> tuple[list, list]:
        """ComfyUI's (running, pending) queue items: (number, prompt_id, prompt, extra_data, outputs, ...)."""
        queue = getattr(self.server, "prompt_queue", None)
        if queue is None:
            return [], []
        running, pending = queue.get_current_queue_volatile()
        return list(running), sorted(pending, key=lambda item: item[0])

    def running_prompts(self) -> dict[str, dict]:
        return {item[1]: item[2] for item in self._queue()[0]}

    def pending_prompts(self) -> dict[str, dict]:
        return {item[1]: item[2] for item in self._queue()[1]}


def _detect():
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is not None and hasattr(folder_paths, "get_folder_paths"):
        try:
            return ComfyHost(folder_paths)
        except ImportError as error:  # a module called folder_paths that is not ComfyUI's
            log.warning("goan: folder_paths found but ComfyUI is incomplete (%s); running without it", error)
    return PlainHost()


HOST = _detect()


def configure(**folders) -> None:
    """Outside ComfyUI: where models, input, output and temp files live (see PlainHost.configure)."""
    if HOST.is_comfy:
        raise RuntimeError("inside ComfyUI the folders come from ComfyUI's own settings")
    HOST.configure(**folders)


def output_relative(path: Path) -> dict:
    """{filename, subfolder, type: output} naming a file under the output folder, as /view takes it."""
    output = Path(os.path.realpath(HOST.directory("output")))
    parent = Path(os.path.realpath(path)).parent
    subfolder = parent.relative_to(output).as_posix()
    return {"filename": Path(path).name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
