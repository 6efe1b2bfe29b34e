"""Test-only ComfyUI custom node: ComfyUI's own loaders on goan's tiny files of the usual names.

The end-to-end tests (tests/comfy_server.py links this folder into a temporary custom_nodes) run the
default workflow, whose DualCLIPLoader, CLIPVisionLoader and VAELoader load
clip_l/llava_llama3_fp16, sigclip_vision_patch14_384 and hunyuan_video_vae_bf16 .safetensors.
goan writes tiny files under those names, in the real tensor naming and dtypes, marked with the
safetensors metadata key `goan_tiny` (`goan_core.models.tiny_files.write_usual_files`). ComfyUI
picks each model's config by its size (a fixed Llama-3-8B, a SigLIP found by its 27 layers, a VAE
of fixed widths) and ships the real Llama tokenizer, so it cannot build tiny ones by itself. For
files with the marker only, this module replaces what each loader builds; anything else goes to
ComfyUI's own code unchanged:

- VAELoader: ComfyUI's own `comfy.sd.VAE` on the file, with only the widths and block count of its
  fixed HunyuanVideo config replaced by the file's (read from its shapes). Everything else is ComfyUI:
  the tensor names it expects (the Comfy-Org naming), encode, decode and their video layouts.
- CLIPVisionLoader: ComfyUI's own `comfy.clip_vision.ClipVisionModel` with a SigLIP config of the file's
  size (model_type siglip_vision_model, mean/std 0.5), its weights loaded by ComfyUI's load_sd.
- DualCLIPLoader: a stand-in with CLIP's two calls (`tokenize`, `encode_from_tokens_scheduled`), over
  goan's single-file loaders of the same two files and goan's tiny tokenizers; it returns ComfyUI's
  hunyuan_video CONDITIONING layout (the user tokens' Llama states, CLIP-L's pooled output).
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import tempfile
from pathlib import Path

import comfy.clip_vision
import comfy.sd
import comfy.utils
import folder_paths
import nodes as comfy_nodes
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[3]  # the goan checkout: its goan_core reads the files
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = "goan_tiny"
NODE_CLASS_MAPPINGS: dict = {}


def is_tiny(path: str) -> bool:
    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get(MARKER) is not None


class TinyCLIP:
    """comfy.sd.CLIP's calls that CLIPTextEncode and goan make, over goan's tiny Llama and CLIP-L."""

    def __init__(self, llama_path: str, clip_path: str):
        from goan_core.models import ModelSet
        from goan_core.models.encoder_files import load_clip_file, load_llama_file
        from goan_core.models.tiny import build_clip_tokenizer, build_llama_tokenizer

        self.models = ModelSet(text_encoder=load_llama_file(llama_path), text_encoder_2=load_clip_file(clip_path),
                               tokenizer=build_llama_tokenizer(), tokenizer_2=build_clip_tokenizer())

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return {"goan_tiny_text": text}

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):
        from goan_core.models.encoders import encode_prompt

        embeds, mask, pooled = encode_prompt(self.models, tokens["goan_tiny_text"], torch.device("cpu"), torch.float32)
        return [[embeds[:, mask[0]], {"pooled_output": pooled, **add_dict}]]


def tiny_vae(path: str):
    """ComfyUI's own VAE on the file, its fixed HunyuanVideo widths replaced by the file's."""
    sd = comfy.utils.load_torch_file(path)
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    widths = [sd[f"encoder.down.{i}.block.0.conv1.conv.weight"].shape[0] for i in range(levels)]
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    original = comfy.sd.AutoencoderKL

    def sized(ddconfig, embed_dim):
        ddconfig = {**ddconfig, "ch": widths[0], "ch_mult": [w // widths[0] for w in widths], "num_res_blocks": blocks}
        return original(ddconfig=ddconfig, embed_dim=embed_dim)

    comfy.sd.AutoencoderKL = sized
    try:
        vae = comfy.sd.VAE(sd=sd)
    finally:
        comfy.sd.AutoencoderKL = original
    vae.throw_exception_if_invalid()
    return vae


def tiny_clip_vision(path: str):
    """ComfyUI's own ClipVisionModel, with a SigLIP config of the file's size."""
    from goan_core.models.encoder_files import siglip_config
    from goan_core.models.weights_file import read_header

    config = siglip_config(read_header(path, "SigLIP"))
    fields = ("num_channels", "hidden_act", "hidden_size", "image_size", "intermediate_size", "num_attention_heads",
              "num_hidden_layers", "patch_size")
    spec = {name: getattr(config, name) for name in fields}
    spec.update(model_type="siglip_vision_model", image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    model = comfy.clip_vision.ClipVisionModel(f.name)
    missing, _ = model.load_sd(comfy.utils.load_torch_file(path))
    if missing:
        raise RuntimeError(f"{path}: ComfyUI's SigLIP lacks {missing}")
    return model


def _patch(node_class, method: str, tiny_loader, folder: str, names: tuple[str, ...]) -> None:
    """Route `node_class.method` to `tiny_loader(*paths)` when every file its `names` arguments name is tiny."""
    original = getattr(node_class, method)
    signature = inspect.signature(original)

    def load(self, *args, **kwargs):
        given = signature.bind(self, *args, **kwargs).arguments
        paths = [folder_paths.get_full_path_or_raise(folder, given[name]) for name in names]
        if all(is_tiny(p) for p in paths):
            logging.info("goan_tiny_loaders: %s loads goan's tiny %s", node_class.__name__,
                         ", ".join(Path(p).name for p in paths))
            return (tiny_loader(*paths),)
        return original(self, *args, **kwargs)

    setattr(node_class, method, load)


_patch(comfy_nodes.VAELoader, "load_vae", tiny_vae, "vae", ("vae_name",))
_patch(comfy_nodes.CLIPVisionLoader, "load_clip", tiny_clip_vision, "clip_vision", ("clip_name",))
_patch(comfy_nodes.DualCLIPLoader, "load_clip", lambda clip_l, llama: TinyCLIP(llama, clip_l), "text_encoders",
       ("clip_name1", "clip_name2"))
