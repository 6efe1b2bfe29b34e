"""MP4 output with PyAV: h264 (libx264), yuv420p, a settable CRF, 30 fps."""

from __future__ import annotations

import errno
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..errors import GoanError, InputError
from ..params import FPS

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def _write_failed(path: Path, exc: Exception) -> GoanError:
    """The one clear error for a failed MP4 write (disk full, no permission, an encoder error)."""
    code = getattr(exc, "errno", None)
    if code in _DISK_FULL:
        why = "the disk became full while writing it; free some space and render again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"no permission to write in {path.parent}; choose a writable output folder"
    else:
        why = str(getattr(exc, "strerror", None) or exc)[:200]
    return GoanError(f"{path}: the video could not be written: {why} (no partial file was left)")


def write_mp4(frames: torch.Tensor | np.ndarray, path: str | Path, *, fps: int = FPS, crf: int = 16) -> Path:
    """Write (F,H,W,3) uint8 frames to `path`; the file appears only when complete.

    Any failure of the file system or the encoder (a full disk above all) raises one GoanError
    naming `path`, and the partial file is removed.
    """
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
    except (av.FFmpegError, OSError) as exc:
        raise _write_failed(path, exc) from exc
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass  # the error above (or the finished file) is what matters
    return path


def count_frames(path: str | Path) -> int:
    """Decoded frame count of a video file (used by tests and the demo to check output)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
