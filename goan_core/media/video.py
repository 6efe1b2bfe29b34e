"""MP4 output with PyAV: h264 (libx264), yuv420p, a settable CRF, 30 fps.

By default libx264 runs with as many threads as the machine has (fast, and the bytes depend on the
thread count). `deterministic=True` makes the file a function of the frames, the CRF and the
libx264/FFmpeg build alone: goan converts RGB to yuv420p itself in integer arithmetic (BT.601, limited
range, tagged in the stream) instead of swscale, whose SIMD paths may round differently per CPU;
libx264 runs single-threaded (no frame, slice or lookahead threads) in its portable C code (no CPU-specific
assembly, which also read uninitialised memory on small frames);
codec and muxer are bit-exact (no version strings of their own). Two encodes of the same frames then
give the same bytes on any machine with the same PyAV wheel; with `crf=0` the encode is lossless, so
the decoded yuv420p planes equal `rgb_to_yuv420p(frames)` exactly.
"""

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


# libx264's own settings for a repeatable encode: one thread for everything, no sliced threads, x264's
# repeatable mode (non-deterministic=0, its default, stated anyway), and its portable C code instead of the
# CPU-specific assembly (asm=0): on small frames (64x48, the demo's) the assembly's macroblock-tree pass
# reads memory it never wrote, so the bytes changed from run to run even single-threaded. About 3x slower.
_DETERMINISTIC_X264 = "threads=1:lookahead-threads=1:sliced-threads=0:non-deterministic=0:asm=0"


def rgb_to_yuv420p(image: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (H*3/2, W) uint8 yuv420p planes (PyAV's layout): BT.601 limited range in
    integer arithmetic (the same on every CPU), chroma from the mean of each 2x2 block."""
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        raise InputError(f"frames must have an even width and height for yuv420p, got {width}x{height}")
    rgb = image.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    blocks = rgb.reshape(height // 2, 2, width // 2, 2, 3).sum(axis=(1, 3))  # 4x each 2x2 block's mean
    rs, gs, bs = blocks[..., 0], blocks[..., 1], blocks[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])  # Y, then U, then V, each row by row
    return planes.astype(np.uint8).reshape(height * 3 // 2, width)


def _frame(image: np.ndarray, deterministic: bool) -> av.VideoFrame:
    if not deterministic:
        return av.VideoFrame.from_ndarray(image, format="rgb24")  # swscale converts it to yuv420p
    return av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p")


def write_mp4(frames: torch.Tensor | np.ndarray, path: str | Path, *, fps: int = FPS, crf: int = 16,
              deterministic: bool = False) -> Path:
    """Write (F,H,W,3) uint8 frames to `path`; the file appears only when complete.

    `deterministic`: the same frames give the same bytes (single-threaded, slower; see the module's
    docstring). Any failure of the file system or the encoder (a full disk above all) raises one
    GoanError naming `path`, and the partial file is removed.
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
            if deterministic:
                _make_deterministic(container, stream, crf)
            for image in array:
                container.mux(stream.encode(_frame(image, deterministic)))
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


def _make_deterministic(container, stream, crf: int) -> None:
    context = stream.codec_context
    context.thread_count = 1
    context.thread_type = "NONE"
    context.flags |= av.codec.context.Flags.bitexact
    context.colorspace = av.video.reformatter.Colorspace.SMPTE170M  # what rgb_to_yuv420p computes
    context.color_range = av.video.reformatter.ColorRange.MPEG
    container.flags |= av.container.Flags.bitexact.value
    stream.options = {"crf": str(crf), "threads": "1", "x264-params": _DETERMINISTIC_X264}


def count_frames(path: str | Path) -> int:
    """Decoded frame count of a video file (used by tests and the demo to check output)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
