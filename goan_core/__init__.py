"""goan_core: the resumable FramePack engine. Plain Python + torch; never imports ComfyUI.

Submodules are imported where used so that `import goan_core` stays cheap.
"""

__version__ = "0.1.0"
