"""The model files of the usual ComfyUI FramePack setup: which ComfyUI model folder, which name, where from.

kijai's FramePack wrapper and Comfy-Org's HunyuanVideo repackaging made these the files ComfyUI
users have. goan's default workflows, their missing-model entries, the README and the tests all
read this one table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UsualFile:
    part: str  # the goan model part it provides
    folder: str  # ComfyUI's model folder (models/<folder>/)
    name: str
    url: str  # a direct Hugging Face download


_HF = "https://huggingface.co"
_REPACKAGED = f"{_HF}/Comfy-Org/HunyuanVideo_repackaged/resolve/main/split_files"

USUAL_FILES = (
    UsualFile("transformer", "diffusion_models", "FramePackI2V_HY_fp8_e4m3fn.safetensors",
              f"{_HF}/Kijai/HunyuanVideo_comfy/resolve/main/FramePackI2V_HY_fp8_e4m3fn.safetensors"),
    UsualFile("text_encoder", "text_encoders", "llava_llama3_fp16.safetensors",
              f"{_REPACKAGED}/text_encoders/llava_llama3_fp16.safetensors"),
    UsualFile("text_encoder_2", "text_encoders", "clip_l.safetensors", f"{_REPACKAGED}/text_encoders/clip_l.safetensors"),
    UsualFile("vae", "vae", "hunyuan_video_vae_bf16.safetensors", f"{_REPACKAGED}/vae/hunyuan_video_vae_bf16.safetensors"),
    UsualFile("image_encoder", "clip_vision", "sigclip_vision_patch14_384.safetensors",
              f"{_HF}/Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors"),
)
# Alternatives that load the same way.
ALTERNATIVE_FILES = (
    UsualFile("transformer", "diffusion_models", "FramePackI2V_HY_bf16.safetensors",
              f"{_HF}/Kijai/HunyuanVideo_comfy/resolve/main/FramePackI2V_HY_bf16.safetensors"),
    UsualFile("text_encoder", "text_encoders", "llava_llama3_fp8_scaled.safetensors",
              f"{_REPACKAGED}/text_encoders/llava_llama3_fp8_scaled.safetensors"),
    UsualFile("vae", "vae", "hunyuan_video_vae_bf16.safetensors",
              f"{_HF}/Kijai/HunyuanVideo_comfy/resolve/main/hunyuan_video_vae_bf16.safetensors"),
)


def usual_file(part: str) -> UsualFile:
    """The usual file providing `part` ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")."""
    return next(f for f in USUAL_FILES if f.part == part)
