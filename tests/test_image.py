"""Resolution buckets, resize-and-crop, image loading and the VAE tensor layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from goan_core.errors import InputError
from goan_core.media.image import (
    bucket_options,
    image_to_tensor,
    load_image,
    nearest_bucket,
    resize_and_center_crop,
)

FRAMEPACK_640 = [
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
]


def test_640_table_is_framepack_s():
    assert bucket_options(640) == FRAMEPACK_640
    assert bucket_options() == FRAMEPACK_640


@pytest.mark.parametrize("resolution", [64, 320, 480, 512, 768, 1024])
def test_other_bases_scale_the_table(resolution):
    options = bucket_options(resolution)
    assert len(options) == len(set(options))
    assert all(h % 16 == 0 and w % 16 == 0 and h >= 16 and w >= 16 for h, w in options)
    expected_first = tuple(round(side * resolution / 640 / 16) * 16 for side in (416, 960))
    assert options[0] == expected_first


def test_scaled_tables():
    assert bucket_options(320)[:3] == [(208, 480), (224, 432), (240, 416)]
    assert bucket_options(64) == [(48, 96), (48, 80), (48, 64), (64, 64), (64, 48), (80, 48), (96, 48)]


def test_square_image_takes_the_later_of_two_tied_buckets():
    # |1000*640 - 1000*608| ties for (608, 640) and (640, 608); the later one wins, as in FramePack.
    assert nearest_bucket(1000, 1000) == (640, 608)
    assert nearest_bucket(64, 64, resolution=64) == (64, 64)


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (1280, 720, (832, 480)),  # portrait 9:16
        (720, 1280, (480, 832)),  # landscape 16:9
        (1024, 768, (704, 544)),  # portrait 4:3
        (768, 1024, (544, 704)),  # landscape 4:3
        (3000, 1000, (960, 416)),  # beyond the table: the most extreme bucket
        (1000, 3000, (416, 960)),
    ],
)
def test_nearest_bucket(height, width, expected):
    assert nearest_bucket(height, width) == expected


def test_nearest_bucket_at_another_base():
    assert nearest_bucket(720, 1280, resolution=320) in bucket_options(320)
    assert nearest_bucket(720, 1280, resolution=320) == (240, 416)


@pytest.mark.parametrize("shape", [(100, 200), (200, 100), (64, 64), (37, 401), (1080, 1920)])
def test_resize_and_center_crop_size(shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = resize_and_center_crop(image, width=96, height=64)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8


def test_resize_and_center_crop_keeps_the_centre():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 100:200] = 200  # a bright centre third, dark sides
    out = resize_and_center_crop(image, width=64, height=64)
    assert out[:, 8:56].min() >= 190  # only the centre third survives the crop
    constant = np.full((50, 70, 3), 77, dtype=np.uint8)
    assert (resize_and_center_crop(constant, width=32, height=48) == 77).all()


def test_load_image_rgb(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.uint8
    assert np.array_equal(loaded, rgba[..., :3])
    assert load_image(tmp_path / "gray.png").shape == (20, 30, 3)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.png.*not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("this is text")
    with pytest.raises(InputError, match="notes.png.*not an image"):
        load_image(tmp_path / "notes.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path)


def test_image_to_tensor():
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    image[0, 0] = 255
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 1, 16, 32) and tensor.dtype == torch.float32
    assert tensor[0, :, 0, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert tensor[0, :, 0, 1, 1].tolist() == [-1.0, -1.0, -1.0]
    with pytest.raises(InputError, match="uint8 HxWx3"):
        image_to_tensor(np.zeros((16, 32), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8 HxWx3"):
        image_to_tensor(np.zeros((16, 32, 3), dtype=np.float32))
