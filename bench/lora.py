"""Measure "lora": the host memory a LoRA adds, applied per layer at compute, against merging it into a copy.

A musubi-tuner-style LoRA (HunyuanVideo module names, `lora_unet_...`, bf16, alpha) of rank 32 (`--quick`: 2)
on every Linear layer of every block that musubi-tuner trains by default (double blocks: img/txt qkv, proj,
mlp fc1/fc2; single blocks: linear1, linear2) is written for the REAL FramePackI2V_HY transformer (built on
the meta device: its layer names and shapes, no weights) and read with `read_lora` for bf16 compute.

- "host bytes added": in a fresh process (so no freed memory is reused; `--quick` measures in this one), the
  resident memory (Linux RSS) after `read_lora` minus before, with the LoRA's own tensor bytes (`Lora.nbytes`)
  beside it. Baseline: what the rejected alternative would add,
  a bf16 copy of every layer the LoRA touches with the delta merged in (2 bytes per weight of those layers);
  target ratio <= 0.05.
- "host bytes / file bytes": how much more than the file goes to memory. A fused layer's `down` (qkv,
  single blocks' linear1) is copied for each diffusers layer it feeds (3 or 4), so the block swapper moves
  and counts exactly what each layer uses.
The extra matmul work per LoRA'd layer and token is rank x (in + out) multiply-adds against in x out for
the layer itself: in the details, for the real widths.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from safetensors.torch import save_file

from goan_core.models import FRAMEPACK_I2V_HY_CONFIG, read_lora

from .common import Row, bench_dir, rss_bytes

COMPUTE = torch.bfloat16
RANK, QUICK_RANK = 32, 2
# original HunyuanVideo module -> the diffusers layers whose outputs it holds, one after the other
DOUBLE = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
          "img_mlp.fc1": ("ff.net.0.proj",), "img_mlp.fc2": ("ff.net.2",),
          "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn_proj": ("attn.to_add_out",), "txt_mlp.fc1": ("ff_context.net.0.proj",),
          "txt_mlp.fc2": ("ff_context.net.2",)}
SINGLE = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear2": ("proj_out",)}
TARGET = 0.05


def musubi_shapes(model) -> dict[str, tuple[int, int]]:
    """(in, out) features of every original module musubi-tuner trains by default, from `model`'s layers."""
    layers, shapes = dict(model.named_modules()), {}
    for blocks, original, table in (("transformer_blocks", "double_blocks", DOUBLE),
                                    ("single_transformer_blocks", "single_blocks", SINGLE)):
        for index in range(len(getattr(model, blocks))):
            for name, parts in table.items():
                fed = [layers[f"{blocks}.{index}.{part}"] for part in parts]
                shapes[f"{original}.{index}.{name}"] = (fed[0].in_features, sum(m.out_features for m in fed))
    return shapes


def write_musubi_lora(model, path: Path, rank: int) -> Path:
    """A random bf16 musubi-format LoRA of `rank` on every module of `musubi_shapes`."""
    generator, tensors = torch.Generator().manual_seed(0), {}
    for name, (inputs, outputs) in musubi_shapes(model).items():
        flat = "lora_unet_" + name.replace(".", "_")
        tensors[f"{flat}.lora_down.weight"] = (torch.randn(rank, inputs, generator=generator) * 0.01).to(COMPUTE)
        tensors[f"{flat}.lora_up.weight"] = (torch.randn(outputs, rank, generator=generator) * 0.01).to(COMPUTE)
        tensors[f"{flat}.alpha"] = torch.tensor(float(rank), dtype=COMPUTE)
    save_file(tensors, str(path))
    return path


def meta_model():
    with torch.device("meta"):  # names and shapes only
        return HunyuanVideoFramepackTransformer3DModel.from_config(FRAMEPACK_I2V_HY_CONFIG).to(COMPUTE)


def read_child(path: str) -> dict:
    """Runs in a fresh process: RSS before and after reading the LoRA, and its tensor bytes."""
    model = meta_model()
    gc.collect()
    before = rss_bytes()
    lora = read_lora(path, model, COMPUTE)
    gc.collect()
    return {"before": before, "after": rss_bytes(), "nbytes": lora.nbytes}


def read_in_child(path: Path) -> dict:
    code = "import json,sys; from bench.lora import read_child; print(json.dumps(read_child(sys.argv[1])))"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    folder = bench_dir(base_dir, "lora")
    rank = QUICK_RANK if quick else RANK
    model = meta_model()
    path = write_musubi_lora(model, folder / f"rank{rank}.safetensors", rank)
    file_bytes = path.stat().st_size
    child = read_child(str(path)) if quick else read_in_child(path)  # a fresh process costs ~10 s of imports
    before, after = child["before"], child["after"]
    lora = read_lora(path, model, COMPUTE)  # here too, for the layers it touches
    assert lora.nbytes == child["nbytes"]
    layers = dict(model.named_modules())
    touched = {name: layers[name] for name in lora.terms}
    weights = sum(m.in_features * m.out_features for m in touched.values())
    merged = 2 * weights  # a bf16 copy of each touched layer
    lora_flops = sum(rank * (m.in_features + m.out_features) for m in touched.values())
    measured = None if before is None or after is None else after - before
    details = {"rank": rank, "format": lora.format, "layers": len(lora.terms), "file_bytes": file_bytes,
               "lora_tensor_bytes": lora.nbytes, "rss_added_bytes": measured, "merged_copy_bytes": merged,
               "touched_fp8_weight_bytes": weights, "compute_dtype": "bfloat16",
               "lora_multiply_adds_per_token": lora_flops, "layer_multiply_adds_per_token": weights,
               "lora_compute_share": lora_flops / weights, "model": "FramePackI2V_HY config on the meta device"}
    value = measured if measured is not None else lora.nbytes
    print(f"bench lora: rank {rank}, {len(lora.terms)} layers, file {file_bytes} B, tensors {lora.nbytes} B, "
          f"RSS +{measured} B; merged bf16 copy would be {merged} B; extra compute {lora_flops / weights:.2%}")
    rows = [Row.check(f"lora: host bytes added, applied per layer [real FramePackI2V_HY shapes, rank {rank}, "
                      "bf16, every block Linear]", value / 1e6, "MB", baseline=merged / 1e6,
                      baseline_label="bf16 copy of the touched layers, merged", ratio=value / merged, op="<=",
                      limit=TARGET, details=details),
            Row.check(f"lora: LoRA tensor bytes / file bytes [rank {rank}]", lora.nbytes / 1e6, "MB",
                      baseline=file_bytes / 1e6, baseline_label="file size", ratio=lora.nbytes / file_bytes,
                      details=details)]
    del lora
    path.unlink()
    return rows
