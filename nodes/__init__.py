"""ComfyUI nodes: thin adapters over goan_core. Every ComfyUI-only call goes through `adapter.HOST`."""

from .adapter import HOST
from .loaders import GoanImageEncoderLoader, GoanTextEncoderLoader, GoanTransformerLoader, GoanVAELoader
from .lora import GoanLora
from .resume_nodes import GoanLoadResume, GoanPauseGate, GoanSaveResume
from .sampler import GoanSegmentSampler

NODE_CLASS_MAPPINGS = {
    "GoanTransformerLoader": GoanTransformerLoader,
    "GoanVAELoader": GoanVAELoader,
    "GoanTextEncoderLoader": GoanTextEncoderLoader,
    "GoanImageEncoderLoader": GoanImageEncoderLoader,
    "GoanLora": GoanLora,
    "GoanSegmentSampler": GoanSegmentSampler,
    "GoanPauseGate": GoanPauseGate,
    "GoanSaveResume": GoanSaveResume,
    "GoanLoadResume": GoanLoadResume,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "GoanTransformerLoader": "goan Transformer Loader (FramePack)",
    "GoanVAELoader": "goan VAE Loader (HunyuanVideo)",
    "GoanTextEncoderLoader": "goan Text Encoder Loader (HunyuanVideo)",
    "GoanImageEncoderLoader": "goan Image Encoder Loader (SigLIP)",
    "GoanLora": "goan LoRA",
    "GoanSegmentSampler": "goan Segment Sampler (FramePack I2V)",
    "GoanPauseGate": "goan Pause Gate",
    "GoanSaveResume": "goan Save Resume",
    "GoanLoadResume": "goan Load Resume",
}

if HOST.server is not None:  # inside ComfyUI: routes join PromptServer's table before it is served
    from .routes import add_routes

    add_routes(HOST.server.routes)
