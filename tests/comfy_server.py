"""Start and stop a real ComfyUI with this pack linked in, for end-to-end tests.

Shared by the end-to-end tests (browser and API). Everything lives under one temp base folder:
custom_nodes/ (a link to this pack, and to the test-only stub `comfy_stub/goan_tiny_loaders` that lets
ComfyUI's own loaders load goan's tiny files of the usual names), input/, output/, temp/, user/ and
models/ (`tiny_model_folders`: the tiny set as the usual single files and as diffusers folders), all
registered through one --extra-model-paths-config YAML. The first-run template dialog is switched
off through the settings file before start (and can be through POST /settings).

    server = ComfyServer(comfy_dir, python, base, folders=tiny_model_folders(base / "models", tiny_root))
    server.start(front_end_root=None)
    ...  server.url, server.get_json("/queue")
    server.stop()

Whichever ComfyUI `comfy_dir` holds, it starts with the flags that version has, read from its
comfy/cli_args.py (never from a version number): current ComfyUI runs its asset system (a database,
and a scan of the input and output folders) by default and refuses to start when the asset
requirements are missing unless given --disable-assets; ComfyUI 0.2x-0.3x ran it only with
--enable-assets; 0.3.6x has none. `start(assets=...)` turns it on or off wherever it exists.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "goan"
STUB_DIR = Path(__file__).resolve().parent / "comfy_stub" / "goan_tiny_loaders"
# ComfyUI's HunyuanVideo VAE code builds 32-group norms: the e2e VAE is tiny, but that wide.
COMFY_SIZED_VAE = {"latent_channels": 16, "block_out_channels": (32, 32, 64, 64), "norm_num_groups": 32,
                   "layers_per_block": 1}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfy_env() -> tuple[Path, str] | None:
    """(COMFYUI_DIR, COMFYUI_PYTHON) when the environment names a usable ComfyUI, else None."""
    d = os.environ.get("COMFYUI_DIR")
    if not d or not (Path(d) / "main.py").is_file():
        return None
    py = os.environ.get("COMFYUI_PYTHON") or "python3"
    return Path(d), py


MODEL_FOLDERS = ("diffusers", "diffusion_models", "vae", "text_encoders", "clip_vision")


def tiny_model_folders(models: Path, tiny_root: Path) -> dict[str, Path]:
    """ComfyUI model folders under `models`: the usual files of goan's tiny set (marked for the stub, the VAE
    at COMFY_SIZED_VAE) and diffusers/goan_tiny (the tiny folders) with FramePackI2V_tiny.safetensors."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from goan_core.models.tiny import TINY_TRANSFORMER_FILE, build_tiny_models
    from goan_core.models.tiny_files import write_usual_files

    folders = {name: models / name for name in MODEL_FOLDERS}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    (folders["diffusers"] / "goan_tiny").symlink_to(Path(tiny_root).resolve(), target_is_directory=True)
    (folders["diffusion_models"] / TINY_TRANSFORMER_FILE).symlink_to(Path(tiny_root).resolve() / TINY_TRANSFORMER_FILE)
    tiny = build_tiny_models(seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        tiny.vae = AutoencoderKLHunyuanVideo(**COMFY_SIZED_VAE).eval()
    write_usual_files(models, metadata={"goan_tiny": "1"}, models=tiny)
    return folders


def cli_flags(comfy_dir: Path) -> set[str]:
    """The command-line flags a ComfyUI checkout knows, read from its comfy/cli_args.py (nothing is run)."""
    path = Path(comfy_dir) / "comfy" / "cli_args.py"
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return set(re.findall(r"""add_argument\(\s*["'](--[a-z0-9][a-z0-9-]*)["']""", text))


def asset_flags(flags: set[str], assets: bool) -> list[str] | None:
    """The flags that turn the asset system on (`assets`) or off on a ComfyUI knowing `flags`; None when
    it is to be on but this ComfyUI has no asset system."""
    if "--disable-assets" in flags:  # on by default (--enable-assets, if present, is a no-op)
        return [] if assets else ["--disable-assets"]
    if "--enable-assets" in flags:  # off by default
        return ["--enable-assets"] if assets else []
    return None if assets else []


class ComfyServer:
    """One ComfyUI process over a temp base folder. `folders` maps ComfyUI model folder names to
    paths; by default every name in MODEL_FOLDERS points at `models_dir`."""

    def __init__(self, comfy_dir: Path, python: str, base: Path, models_dir: Path | None = None,
                 folders: dict[str, Path] | None = None):
        self.comfy_dir = Path(comfy_dir)
        self.python = python
        self.base = Path(base)
        self.models_dir = Path(models_dir) if models_dir else self.base / "models"
        self.folders = folders or {name: self.models_dir for name in MODEL_FOLDERS}
        self.flags = cli_flags(self.comfy_dir)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = self.base / "comfyui.log"
        for sub in ("custom_nodes", "input", "output", "temp", "user/default", "models"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for name, target in ((PACK_NAME, PACK_DIR), (STUB_DIR.name, STUB_DIR)):
            link = self.base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        settings = self.base / "user" / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        self.yaml_path = self.base / "extra_paths.yaml"
        self._write_yaml()

    def _write_yaml(self) -> None:
        lines = ["goan_e2e:", f"  custom_nodes: {self.base / 'custom_nodes'}"]
        lines += [f"  {name}: {path}" for name, path in self.folders.items()]
        self.yaml_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def has_assets(self) -> bool:
        """Whether this ComfyUI has an asset system (one that registers output files)."""
        return asset_flags(self.flags, True) is not None

    def start(self, front_end_root: str | None = None, timeout: float = 120.0, extra_args: list[str] | None = None,
              assets: bool = False) -> None:
        """Start it; `assets` runs its asset system (raises ValueError where it has none), off by default."""
        switch = asset_flags(self.flags, assets)
        if switch is None:
            raise ValueError(f"{self.comfy_dir} has no asset system (neither --enable-assets nor --disable-assets)")
        self.port = free_port()
        args = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--input-directory", str(self.base / "input"),
            "--output-directory", str(self.base / "output"),
            "--temp-directory", str(self.base / "temp"),
            "--user-directory", str(self.base / "user"),
            "--extra-model-paths-config", str(self.yaml_path),
            "--disable-auto-launch",
        ]
        if front_end_root:
            args += ["--front-end-root", str(front_end_root)]
        if "--database-url" in self.flags:  # the asset database too stays under the base folder
            args += ["--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}"]
        args += switch + (extra_args or [])
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # leave the ComfyUI checkout untouched
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def request(self, path: str, data: bytes | None = None, method: str | None = None, timeout: float = 30,
                content_type: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()

    def get_json(self, path: str, timeout: float = 30):
        return json.loads(self.request(path, timeout=timeout)[1])

    def post_json(self, path: str, obj, timeout: float = 30):
        return json.loads(self.request(path, json.dumps(obj).encode(), "POST", timeout)[1] or b"null")

    def dismiss_first_run(self) -> None:
        self.request("/settings/Comfy.TutorialCompleted", b"true", "POST")
