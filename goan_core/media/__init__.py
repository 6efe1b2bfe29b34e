"""Pictures in and video out: loading and bucketing the start image, writing the MP4."""

from .image import bucket_options, demo_image, image_to_tensor, load_image, nearest_bucket, resize_and_center_crop
from .video import count_frames, write_mp4

__all__ = ["bucket_options", "count_frames", "demo_image", "image_to_tensor", "load_image", "nearest_bucket",
           "resize_and_center_crop", "write_mp4"]
