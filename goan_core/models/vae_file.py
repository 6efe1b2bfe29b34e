"""The HunyuanVideo VAE from one .safetensors file, as ComfyUI users keep it in models/vae.

Two namings exist under the same file name `hunyuan_video_vae_bf16.safetensors`:
- HunyuanVideo's original one (Kijai/HunyuanVideo_comfy, tencent's checkpoint): the very names of
  diffusers' `AutoencoderKLHunyuanVideo` (`encoder.down_blocks.0.resnets.0.conv1.conv.weight`);
- ComfyUI's (Comfy-Org/HunyuanVideo_repackaged): the latent-diffusion layout ComfyUI's own VAE
  code uses (`encoder.down.0.block.0...`, `mid.block_1`, `mid.attn_1.q` as a 1x1x1 convolution,
  `nin_shortcut`, `norm_out`, decoder levels numbered from the bottom).
goan maps the second onto the first with its own table (`comfy_to_diffusers`). Neither file holds a
config: it is worked out from the tensor shapes (`infer_vae_config`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLHunyuanVideo

from ..errors import ModelFolderError
from .weights_file import WeightsHeader, empty_model, load_weights, read_header

WHAT = "the HunyuanVideo VAE"
COMFY_MARKER = "decoder.mid.block_1.conv1.conv.weight"  # only ComfyUI's naming has it
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.conv1.conv.weight"
# GroupNorm groups cannot be read from the weights: HunyuanVideo's VAE (and the only count ComfyUI's
# VAE code builds) is 32; goan's tiny test VAE, whose narrowest block has 8 channels, uses 4.
NORM_GROUPS_BY_NARROWEST = {8: 4}
HUNYUAN_NORM_GROUPS = 32

_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET_PARTS = {"nin_shortcut": "conv_shortcut"}


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_PARTS.get(head, head)}.{tail}"


def comfy_to_diffusers(key: str, levels: int) -> str | None:
    """The diffusers name of one ComfyUI-named VAE tensor, or None when `key` is not a VAE tensor name.

    `levels` is the number of down (and up) blocks: ComfyUI numbers the decoder's from the bottom.
    """
    for side in ("encoder", "decoder"):
        if not key.startswith(side + "."):
            continue
        rest = key[len(side) + 1:]
        if rest.startswith("norm_out."):
            return f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
        m = re.fullmatch(r"mid\.block_(\d+)\.(.+)", rest)
        if m:
            return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{_resnet_rest(m.group(2))}"
        m = re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)
        if m:
            return f"{side}.mid_block.attentions.0.{_ATTENTION[m.group(1)]}.{m.group(2)}"
        m = re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", rest)
        if m:
            kind, level, part, tail = m.group(1), int(m.group(2)), m.group(3), m.group(5)
            index = level if kind == "down" else levels - 1 - level
            prefix = f"{side}.{kind}_blocks.{index}"
            if m.group(4) is not None:
                return f"{prefix}.resnets.{m.group(4)}.{_resnet_rest(tail)}"
            return f"{prefix}.{kind}samplers.0.{tail}"
        if rest.startswith(("conv_in.", "conv_out.")):
            return key
        return None
    return key if key.split(".")[0] in ("quant_conv", "post_quant_conv") else None


def _levels(shapes: dict, pattern: str) -> int:
    found = {int(m.group(1)) for key in shapes if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def diffusers_shapes(header: WeightsHeader) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({diffusers name: shape}, {diffusers name: file name}) of the file's weights, in either naming.

    Raises ModelFolderError when the file holds neither naming, or a ComfyUI name goan does not know.
    """
    names = header.weight_names()
    if COMFY_MARKER in names:
        levels = _levels(header.shapes, r"encoder\.down\.(\d+)\.")
        mapping = {}
        for key in sorted(names):
            target = comfy_to_diffusers(key, levels)
            if target is None:
                raise ModelFolderError(f"{header.path}: tensor {key!r} is not part of ComfyUI's HunyuanVideo VAE; "
                                       "use hunyuan_video_vae_bf16.safetensors from Comfy-Org or Kijai")
            mapping[target] = key
    elif DIFFUSERS_MARKER in names:
        mapping = {key: key for key in names}
    else:
        raise ModelFolderError(
            f"{header.path}: not a HunyuanVideo VAE file (neither {COMFY_MARKER!r} nor {DIFFUSERS_MARKER!r} is in it); "
            "use hunyuan_video_vae_bf16.safetensors (Comfy-Org/HunyuanVideo_repackaged or Kijai/HunyuanVideo_comfy)")
    shapes = {}
    for target, key in mapping.items():
        shape = header.shapes[key]
        if ".attentions.0." in target and shape[2:] == (1, 1, 1):
            shape = shape[:2]  # ComfyUI's 1x1x1 convolution is diffusers' linear layer
        shapes[target] = shape
    return shapes, mapping


def infer_vae_config(shapes: dict[str, tuple[int, ...]], source: str | Path) -> dict:
    """An AutoencoderKLHunyuanVideo config that fits these (diffusers-named) tensor shapes."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ModelFolderError(f"{source}: cannot work out the VAE config, tensor {key!r} is missing; "
                                   "this does not look like a complete HunyuanVideo VAE file")
        return shapes[key]

    levels = max(_levels(shapes, r"encoder\.down_blocks\.(\d+)\."), 1)  # none: the error names block 0
    widths = tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight")[0] for i in range(levels))
    return {
        "in_channels": shape("encoder.conv_in.conv.weight")[1],
        "out_channels": shape("decoder.conv_out.conv.weight")[0],
        "latent_channels": shape("post_quant_conv.weight")[0],
        "block_out_channels": widths,
        "down_block_types": ("HunyuanVideoDownBlock3D",) * levels,
        "up_block_types": ("HunyuanVideoUpBlock3D",) * levels,
        "layers_per_block": _levels(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "norm_num_groups": NORM_GROUPS_BY_NARROWEST.get(min(widths), HUNYUAN_NORM_GROUPS),
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in shapes,
    }


def load_vae_file(path: str | Path, dtype: torch.dtype = torch.float32) -> AutoencoderKLHunyuanVideo:
    """The HunyuanVideo VAE from one .safetensors file (either naming, any float dtype), computing in `dtype`.

    Raises ModelFolderError naming the file when it is missing, unreadable, or not this VAE.
    """
    header = read_header(path, WHAT)
    shapes, mapping = diffusers_shapes(header)
    config = infer_vae_config(shapes, header.path)
    model = empty_model(lambda: AutoencoderKLHunyuanVideo(**config))
    reshaped = frozenset(key for key in mapping if shapes[key] != header.shapes[mapping[key]])
    return load_weights(model, header, mapping, dtype, WHAT, reshaped=reshaped)
