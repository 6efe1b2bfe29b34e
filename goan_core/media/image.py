"""Input images: FramePack's resolution buckets, resize-and-crop, loading, and the tensor layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

# FramePack's (height, width) buckets for a 640 px base; about 640*640 pixels each, sides multiples of 16.
BUCKETS_640 = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)


def bucket_options(resolution: int = 640) -> list[tuple[int, int]]:
    """The (height, width) buckets for a base resolution.

    640 gives FramePack's table exactly; other bases scale it by resolution/640, rounding each side
    to a multiple of 16 (at least 16) and dropping repeats.
    """
    if resolution <= 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    options: list[tuple[int, int]] = []
    for h, w in BUCKETS_640:
        scaled = tuple(max(16, round(side * resolution / 640 / 16) * 16) for side in (h, w))
        if scaled not in options:
            options.append(scaled)
    return options


def nearest_bucket(height: int, width: int, resolution: int = 640) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to height:width (minimising |h*bw - w*bh|).

    On a tie the later (taller) bucket wins, as in FramePack: a square image gets (640, 608) at 640.
    """
    best, best_metric = None, None
    for bh, bw in bucket_options(resolution):
        metric = abs(height * bw - width * bh)
        if best_metric is None or metric <= best_metric:
            best, best_metric = (bh, bw), metric
    return best


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale (Lanczos) so the image covers width x height, then cut out the centre; uint8 HxWx3."""
    if width <= 0 or height <= 0:
        raise InputError(f"target size must be positive, got {width}x{height}")
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    scale = max(width / pil.width, height / pil.height)
    new_w, new_h = max(width, round(pil.width * scale)), max(height, round(pil.height * scale))
    pil = pil.resize((new_w, new_h), Image.LANCZOS)
    left, top = round((new_w - width) / 2), round((new_h - height) / 2)
    return np.array(pil.crop((left, top, left + width, top + height)))


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; InputError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found; give the path of a PNG, JPEG or WebP image")
    try:
        with Image.open(path) as pil:
            pil.load()
            return np.array(pil.convert("RGB"))
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file; give a PNG, JPEG or WebP image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot read this image ({e}); save it again as PNG or JPEG") from e


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (1, 3, 1, H, W) in [-1, 1], the layout the VAE takes."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} with shape {image.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(image)).float() / 127.5 - 1.0
    return pixels.permute(2, 0, 1)[None, :, None]


def demo_image(height: int = 80, width: int = 96) -> np.ndarray:
    """A small synthetic picture: a sunset gradient with a disc, so the demo needs no input file."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([255 - y * 1.2, 120 + y, 200 - y * 1.5], axis=-1)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.45) ** 2) < (height * 0.2) ** 2
    sky[disc] = (255, 210, 60)
    return np.clip(sky, 0, 255).astype(np.uint8)
