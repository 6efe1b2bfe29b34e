"""The frontend in a real browser against a real ComfyUI: pause from the goan tab, download, restart,
drop the file on the canvas, continue, and get the same video as an uninterrupted run.

Runs when COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON: an interpreter with ComfyUI's and
goan's requirements); skips cleanly otherwise, and when Chromium (GOAN_CHROMIUM, default
/usr/bin/chromium), node or node_modules/playwright-core are missing. Both frontends: the one
ComfyUI pins, and a newer unpacked comfyui-frontend-package given by GOAN_NEW_FRONTEND_ROOT
(default /work/comfy/fe-new/unpacked/comfyui_frontend_package/static when present).
GOAN_E2E_WORKFLOW may name another UI-format workflow to start from (default: the example
workflows/goan_image_to_video.json). Screenshots and per-phase results go to tests/browser/artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_server import ComfyServer, comfy_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "browser" / "e2e.mjs"
ARTIFACTS = ROOT / "tests" / "browser" / "artifacts"
WORKFLOW = Path(os.environ.get("GOAN_E2E_WORKFLOW") or ROOT / "workflows" / "goan_image_to_video.json")
CHROMIUM = os.environ.get("GOAN_CHROMIUM", "/usr/bin/chromium")
NEW_FRONTEND = os.environ.get("GOAN_NEW_FRONTEND_ROOT", "/work/comfy/fe-new/unpacked/comfyui_frontend_package/static")
TINY = "goan_tiny"

# Small enough for a CPU, long enough to click pause mid-sampling on a quiet machine: 15 sections x
# 100 steps (a tiny step takes ~10 ms at 64 px, so sampling lasts 15 s or more; with 5 sections the
# job sometimes finished between the first step and the click).
SAMPLER = {"seconds": 6.0, "steps": 100, "lws": 3, "resolution": 64, "seed": 1234, "cfg": 1.0, "autosave_every": 1,
           "prompt": "a red boat on a calm lake"}
IMAGE_NAME = "goan_e2e_start.png"


def _missing() -> str | None:
    if comfy_env() is None:
        return "COMFYUI_DIR is not set to a ComfyUI checkout"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM}"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core is missing (npm install)"
    if not WORKFLOW.is_file():
        return f"{WORKFLOW.name} is missing"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("e2e_models")
    subprocess.run([sys.executable, "-m", "goan_core", "make-tiny", str(models / TINY)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    return models


def _start_image(path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (96, 80))
    img.putdata([((x * 5) % 256, (y * 7) % 256, (x + y) % 256) for y in range(80) for x in range(96)])
    img.save(path)


def _run_phase(cfg: dict, base: Path) -> dict:
    path = base / f"e2e_{cfg['phase']}.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(["node", str(SCRIPT), str(path)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(lines[-1][7:]) if lines else {}
    if proc.returncode != 0:
        fails = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL ")]
        raise AssertionError(f"browser phase {cfg['phase']} failed: {fails or proc.stderr[-3000:]}\n"
                             f"{result.get('error', '')}")
    return result


def _frames(output_dir: Path, history_outputs: dict) -> list:
    import numpy as np
    from PIL import Image

    frames = []
    for out in history_outputs.values():
        for img in out.get("images", []):
            if img.get("type") != "output" or not img["filename"].endswith(".png"):
                continue  # the SaveVideo mp4 carries run-specific metadata; its frames are the PNGs
            frames.append(np.asarray(Image.open(output_dir / img.get("subfolder", "") / img["filename"])))
    return frames


@pytest.mark.parametrize("frontend", ["pinned", "newest"])
def test_pause_download_restart_drop_resume(frontend, tiny_models_dir, tmp_path):
    comfy_dir, python = comfy_env()
    root = None
    if frontend == "newest":
        if not Path(NEW_FRONTEND, "index.html").is_file():
            pytest.skip(f"no unpacked newer frontend at {NEW_FRONTEND}")
        root = NEW_FRONTEND
    base = tmp_path / "comfy"
    server = ComfyServer(comfy_dir, python, base, models_dir=tiny_models_dir)
    _start_image(base / "input" / IMAGE_NAME)
    tag = f"fe-{frontend}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    common = {"artifacts": str(ARTIFACTS), "tag": tag, "chromium": CHROMIUM, "timeout_s": 600}

    server.start(front_end_root=root)
    try:
        server.dismiss_first_run()
        first = _run_phase({**common, "url": server.url, "phase": "pause", "workflow": str(WORKFLOW),
                            "prefer": TINY, "widgets": {"GoanSegmentSampler": SAMPLER, "LoadImage": {"image": IMAGE_NAME}},
                            "download_dir": str(tmp_path / "downloads")}, base)
    finally:
        server.stop()
    download = Path(first["download"])
    assert download.is_file() and download.suffix == ".goan_resume"
    assert first["node_pause_enabled_while_running"], "the sampler's pause button was not enabled while it ran"
    assert first["paused_run"]["status"] == "success"
    assert first["has_action_bar_button"] == (frontend == "newest")

    bad = tmp_path / "broken.goan_resume"
    bad.write_bytes(b"PK\x03\x04 this is not a real archive")
    server.start(front_end_root=root)  # a fresh server: nothing of the first run is in memory
    try:
        second = _run_phase({**common, "url": server.url, "phase": "resume", "resume_file": str(download),
                             "bad_file": str(bad)}, base)
    finally:
        server.stop()
    assert second["bad_file_toast"].startswith("error|") and "broken.goan_resume" in second["bad_file_toast"]

    output = base / "output"
    reference = _frames(output, first["reference"]["outputs"])
    resumed = _frames(output, second["resumed"]["outputs"])
    assert reference, f"the reference run saved no frames: {first['reference']['outputs']}"
    assert len(resumed) == len(reference)
    for i, (a, b) in enumerate(zip(reference, resumed)):
        assert a.shape == b.shape and (a == b).all(), f"frame {i} differs between the uninterrupted and the resumed run"
