"""The frontend in a real browser against a real ComfyUI: pause from the goan tab, download, restart,
drop the file on the canvas, continue, and get the same video as an uninterrupted run.

Three passes: the frontend ComfyUI pins, the newest frontend, and the newest with Vue nodes
(Comfy.VueNodes.Enabled, the default of new installs), where the node's pause and upload buttons are
DOM buttons and are clicked as such. On the newest frontend a sampler moved into a subgraph is also
run and paused from its own button. The job list uses ComfyUI's job API where the server has one.

Runs when COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON: an interpreter with ComfyUI's and
goan's requirements); skips cleanly otherwise, and when Chromium (GOAN_CHROMIUM, default
/usr/bin/chromium), node or node_modules/playwright-core are missing. Both frontends: the one
ComfyUI pins, and the newest comfyui-frontend-package, which the test downloads from the package
registry itself (`pip download`, cached under GOAN_CACHE_DIR or ~/.cache/goan/frontend) and unpacks
(a wheel is a zip). GOAN_NEW_FRONTEND_ROOT may name an unpacked frontend's static folder instead.
When no newer frontend can be had, the "newest" case fails with the reason: it is never skipped.
GOAN_E2E_WORKFLOW may name another UI-format workflow to start from (default: the example
workflows/goan_image_to_video.json, run on goan's tiny set written as the usual files; see
tests/test_comfyui_e2e.py for the stub that lets ComfyUI's loaders load them). Screenshots and per-phase
results go to tests/browser/artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from comfy_server import ComfyServer, comfy_env, tiny_model_folders

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "browser" / "e2e.mjs"
ARTIFACTS = ROOT / "tests" / "browser" / "artifacts"
WORKFLOW = Path(os.environ.get("GOAN_E2E_WORKFLOW") or ROOT / "workflows" / "goan_image_to_video.json")
CHROMIUM = os.environ.get("GOAN_CHROMIUM", "/usr/bin/chromium")
NEW_FRONTEND = os.environ.get("GOAN_NEW_FRONTEND_ROOT")
FRONTEND_PACKAGE = "comfyui-frontend-package"
CACHE = Path(os.environ.get("GOAN_CACHE_DIR") or Path.home() / ".cache" / "goan") / "frontend"
TINY = "goan_tiny"

# Small enough for a CPU, long enough to click pause mid-sampling on a quiet machine: 15 sections x
# 60 steps (a tiny step takes ~10 ms at 64 px, so sampling lasts 9 s or more; with 5 sections x 100
# steps the job sometimes finished between the first step and the click). On a busy 2-core machine a
# step can take 50x longer: hence the long timeouts below.
SAMPLER = {"seconds": 6.0, "steps": 60, "lws": 3, "resolution": 64, "seed": 1234, "cfg": 1.0, "autosave_every": 1,
           "prompt": "a red boat on a calm lake"}
WAIT_S = 1200  # the longest wait for one thing in a phase (a whole uninterrupted run, on a busy machine)
PHASE_S = 3000  # one browser phase: several runs
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
    """The tiny set's folders (for diffusers/goan_tiny)."""
    root = tmp_path_factory.mktemp("e2e_tiny") / TINY
    subprocess.run([sys.executable, "-m", "goan_core", "make-tiny", str(root)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    return root


def _wheel_version(wheel: Path) -> tuple:
    m = re.match(r"comfyui_frontend_package-([0-9][^-]*)-", wheel.name)
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.]", m.group(1))) if m else ()


def newest_frontend(cache: Path = CACHE) -> Path:
    """The static folder of the newest comfyui-frontend-package on the package registry: `pip download`
    into `cache`, unpack the wheel (a zip) next to it, once per version. Raises RuntimeError saying why
    when it cannot."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
           "--progress-bar", "off", FRONTEND_PACKAGE]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"`{' '.join(cmd)}` did not run: {e}") from e
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    m = re.search(r"(comfyui_frontend_package-[^\s/]+?\.whl)", proc.stdout + proc.stderr)
    got = wheels / m.group(1) if m and (wheels / m.group(1)).is_file() else None
    if got is None:
        found = sorted(wheels.glob("comfyui_frontend_package-*.whl"), key=_wheel_version)
        if not found:
            raise RuntimeError(f"pip download left no comfyui_frontend_package wheel in {wheels}: {proc.stdout[-1000:]}")
        got = found[-1]
    target = cache / got.name[: -len(".whl")]
    static = target / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        tmp = cache / (target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(got) as z:
                z.extractall(tmp)
        except zipfile.BadZipFile as e:
            got.unlink(missing_ok=True)
            raise RuntimeError(f"{got} is not a wheel: {e}") from e
        if not (tmp / "comfyui_frontend_package" / "static" / "index.html").is_file():
            raise RuntimeError(f"{got.name} has no comfyui_frontend_package/static/index.html")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return static


@pytest.fixture(scope="module")
def newest_frontend_root():
    """GOAN_NEW_FRONTEND_ROOT when given, else the registry's newest frontend; fails loudly otherwise."""
    if NEW_FRONTEND:
        if not Path(NEW_FRONTEND, "index.html").is_file():
            pytest.fail(f"GOAN_NEW_FRONTEND_ROOT={NEW_FRONTEND} has no index.html")
        return NEW_FRONTEND
    try:
        return str(newest_frontend())
    except RuntimeError as e:
        pytest.fail(f"could not get the newest {FRONTEND_PACKAGE} from the package registry, so the newer-frontend "
                    f"browser test cannot run (set GOAN_NEW_FRONTEND_ROOT to an unpacked frontend's static folder): {e}")


def _start_image(path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (96, 80))
    img.putdata([((x * 5) % 256, (y * 7) % 256, (x + y) % 256) for y in range(80) for x in range(96)])
    img.save(path)


def _run_phase(cfg: dict, base: Path) -> dict:
    path = base / f"e2e_{cfg['phase']}.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(["node", str(SCRIPT), str(path)], cwd=ROOT, capture_output=True, text=True, timeout=PHASE_S)
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


def _answers(server: ComfyServer, path: str, method: str = "GET") -> bool:
    """Whether the running ComfyUI has the route (anything but 404/405), as the browser finds out."""
    import urllib.error

    try:
        server.request(path, b"{}" if method == "POST" else None, method)
        return True
    except urllib.error.HTTPError as e:
        if e.code in (404, 405):
            return False
        raise


def _expected_cancels(server: ComfyServer, queued: str, running: str) -> list[str]:
    """The requests the goan tab's Cancel of a queued, then a running job sends to this ComfyUI."""
    native = [f"/api/jobs/{queued}/cancel", f"/api/jobs/{running}/cancel"]
    legacy = ["/api/queue", "/api/interrupt"]
    if not _answers(server, "/api/jobs?limit=1"):
        return legacy
    if _answers(server, "/api/jobs/00000000-0000-4000-8000-000000000000/cancel", "POST"):
        return native
    return native[:1] + legacy  # a job list without the cancel route (ComfyUI 0.12-0.26): its 404, then legacy


@pytest.mark.parametrize("frontend", ["pinned", "newest", "newest-vue"])
def test_pause_download_restart_drop_resume(frontend, tiny_models_dir, tmp_path, request):
    comfy_dir, python = comfy_env()
    newest, vue = frontend.startswith("newest"), frontend.endswith("-vue")
    root = request.getfixturevalue("newest_frontend_root") if newest else None
    base = tmp_path / "comfy"
    server = ComfyServer(comfy_dir, python, base, folders=tiny_model_folders(base / "models", tiny_models_dir))
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "Comfy.VueNodes.Enabled": vue}))
    _start_image(base / "input" / IMAGE_NAME)
    tag = f"fe-{frontend}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    common = {"artifacts": str(ARTIFACTS), "tag": tag, "chromium": CHROMIUM, "timeout_s": WAIT_S, "vue_nodes": vue}

    server.start(front_end_root=root)
    try:
        server.dismiss_first_run()
        jobs_api = _answers(server, "/api/jobs?limit=1")
        first = _run_phase({**common, "url": server.url, "phase": "pause", "workflow": str(WORKFLOW),
                            "prefer": None, "widgets": {"GoanSegmentSampler": SAMPLER, "LoadImage": {"image": IMAGE_NAME}},
                            "download_dir": str(tmp_path / "downloads"), "subgraph": newest}, base)
        cancels = _expected_cancels(server, *first["cancel"]["ids"])
    finally:
        server.stop()
    download = Path(first["download"])
    assert download.is_file() and download.suffix == ".goan_resume"
    assert first["node_pause_enabled_while_running"], "the sampler's pause button was not enabled while it ran"
    assert first["paused_run"]["status"] == "success"
    assert first["vue_nodes"] is vue
    assert first["jobs_api"] is jobs_api  # ComfyUI's job API used where the server has it, /queue elsewhere
    assert first["cancel"]["requests"] == cancels  # ComfyUI's cancel route where it has one
    if newest:
        assert first["has_action_bar_button"], "the action-bar button was not found by its class"
        sub = first["subgraph"]
        assert sub["node_id"] == sub["execution_id"] and ":" in sub["node_id"], sub
        assert sub["download"].endswith(".goan_resume") and sub["status"] == "success", sub
    if vue:
        assert first["node_pause_dom_enabled_while_running"]

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
