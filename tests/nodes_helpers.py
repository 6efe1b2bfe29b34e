"""Fixtures for the node tests: the pack loaded as ComfyUI loads it, tiny models in ComfyUI's folder layout.

Import the fixtures into a test module with `from nodes_helpers import *`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodes_pack import load_pack

__all__ = ["pack", "comfy_models", "host", "loaded", "picture", "image", "sampler_args", "run_sampler",
           "JOB", "PROMPT_ID"]

PROMPT_ID = "prompt-1"
# Two sections of three steps at 48x64: the smallest job that can pause between and inside sections.
JOB = dict(prompt="a sunset over the sea", negative_prompt="", seed=2026, seconds=0.6, steps=3, cfg=1.0, gs=10.0,
           rs=0.0, lws=2, mode="backward", resolution=64, sampler="unipc", autosave_every=1, keep_last=3)


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture(scope="session")
def comfy_models(tiny_models_root, tmp_path_factory) -> Path:
    """A ComfyUI models folder: diffusers/goan_tiny (the whole tiny set) and diffusion_models/<file>."""
    from goan_core.models.tiny import TINY_TRANSFORMER_FILE

    models = tmp_path_factory.mktemp("comfy_models")
    (models / "diffusers").mkdir()
    (models / "diffusers" / "goan_tiny").symlink_to(Path(tiny_models_root).resolve(), target_is_directory=True)
    (models / "diffusion_models").mkdir()
    (models / "diffusion_models" / TINY_TRANSFORMER_FILE).symlink_to(Path(tiny_models_root) / TINY_TRANSFORMER_FILE)
    return models


@pytest.fixture
def host(pack, comfy_models, tmp_path):
    """The adapter's plain host, pointed at fresh input/output/temp folders; registry and events cleared."""
    from goan_pack.nodes import adapter, jobs

    h = adapter.HOST
    saved = (dict(h.dirs), h.models_dir)
    adapter.configure(models_dir=comfy_models, input_dir=tmp_path / "input", output_dir=tmp_path / "output",
                      temp_dir=tmp_path / "temp")
    h.events.clear()
    h.progress_bars.clear()
    h.on_progress, h.previews, h.prompt_id = None, False, PROMPT_ID
    h.running.clear()
    h.pending.clear()
    h._interrupt.clear()
    jobs.REGISTRY.clear()
    yield h
    h.dirs, h.models_dir = saved
    h.on_progress = None
    h._interrupt.clear()


@pytest.fixture(scope="session")
def loaded(pack, comfy_models):
    """(transformer, goan_vae, text_encoders, image_encoder) from the loader nodes, loaded once."""
    from goan_pack.goan_core.models.tiny import TINY_TRANSFORMER_FILE
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as N
    from goan_pack.nodes import adapter

    previous = adapter.HOST.models_dir
    adapter.configure(models_dir=comfy_models)
    try:
        (transformer,) = N["GoanTransformerLoader"]().execute(TINY_TRANSFORMER_FILE, "float32", "auto")
        (vae,) = N["GoanVAELoader"]().execute("goan_tiny", "float32")
        (text,) = N["GoanTextEncoderLoader"]().execute("goan_tiny", "float32")
        (image,) = N["GoanImageEncoderLoader"]().execute("goan_tiny", "float32")
    finally:
        adapter.HOST.models_dir = previous
    return transformer, vae, text, image


@pytest.fixture(scope="session")
def picture() -> np.ndarray:
    from goan_core.media import demo_image

    return demo_image()


@pytest.fixture(scope="session")
def image(pack, picture):
    from goan_pack.nodes.types import uint8_to_image

    return uint8_to_image(picture)


def sampler_args(loaded, image=None, **overrides) -> dict:
    transformer, vae, text, image_encoder = loaded
    args = dict(JOB, transformer=transformer, text_encoders=text, image_encoder=image_encoder, goan_vae=vae,
                unique_id="7", extra_pnginfo={"workflow": {"nodes": [], "links": [], "version": 0.4}})
    if image is not None:
        args["image"] = image
    args.update(overrides)
    return args


def run_sampler(loaded, image=None, **overrides):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as N

    return N["GoanSegmentSampler"]().execute(**sampler_args(loaded, image, **overrides))


def pause_when(host, value):
    """Ask for a pause (as POST /goan/pause does) once the step progress bar reaches `value`."""
    from goan_pack.nodes.jobs import REGISTRY

    def hook(bar):
        if bar.current == value and bar.total > 2 and REGISTRY.jobs() and REGISTRY.jobs()[0]["status"] == "running":
            assert REGISTRY.request_pause(PROMPT_ID) is not None

    host.on_progress = hook
