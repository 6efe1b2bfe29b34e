"""goan for ComfyUI: resumable FramePack image-to-video.

ComfyUI imports this folder as a package; everything below uses relative imports because ComfyUI
has a top-level module called `nodes` of its own.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
