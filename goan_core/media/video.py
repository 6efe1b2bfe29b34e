"""MP4 output with PyAV: h264 (libx264), yuv420p, a settable CRF, 30 fps."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..errors import InputError
from ..params import FPS


def write_mp4(frames: torch.Tensor | np.ndarray, path: str | Path, *, fps: int = FPS, crf: int = 16) -> Path:
    """Write (F,H,W,3) uint8 frames to `path`; the file appears only when complete."""
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(f"frames must be uint8 (F,H,W,3), got {array.dtype} {array.shape}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: the folder {path.parent} does not exist")
    partial = path.with_name(f".{path.name}.partial")
    try:
        with av.open(str(partial), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1))
            stream.width, stream.height = array.shape[2], array.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for image in array:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def count_frames(path: str | Path) -> int:
    """Decoded frame count of a video file (used by tests and the demo to check output)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
