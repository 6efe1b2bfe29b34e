"""Measure "memory": the transformer's host bytes against its file's bytes, fp8 weights kept fp8.

The tiny transformer (seed 0) is written as an fp8 e4m3fn file and as a bf16 file
(`write_transformer_file`), then loaded from each with `weight_dtype` "auto" computing in bf16 (the
CUDA compute dtype). The value is the bytes of the loaded model's parameters and buffers
(`storage_bytes`), the baseline the file's size; target ratio <= 1.05. The bytes the old path took
(every tensor upcast to bf16, `weight_dtype` "bf16") are in the details. Biases and norms, kept in
the compute dtype, weigh more in the tiny model (1 % of its parameters) than in the real one
(0.03 %), so for files stored like goan's the real ratio is no higher than the tiny one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from goan_core.models import (TINY_TRANSFORMER_FILE, default_tiny_root, load_transformer_file, storage_bytes,
                              weight_storage_name, write_tiny_models, write_transformer_file)

from .common import Row, bench_dir

COMPUTE = torch.bfloat16
FILES = (("fp8", torch.float8_e4m3fn), ("bf16", torch.bfloat16))
TARGET = 1.05


def run(quick: bool = False, base_dir: Path | None = None, repeats: int | None = None) -> list[Row]:
    folder = bench_dir(base_dir, "memory")
    source = load_transformer_file(write_tiny_models(default_tiny_root()) / TINY_TRANSFORMER_FILE, torch.float32)
    rows = []
    for label, file_dtype in FILES:
        path = write_transformer_file(source, folder / f"tiny_{label}.safetensors", file_dtype)
        file_bytes = path.stat().st_size
        model = load_transformer_file(path, COMPUTE, "auto")
        host = storage_bytes(model)
        upcast = storage_bytes(load_transformer_file(path, COMPUTE, "bf16"))
        details = {"file_bytes": file_bytes, "host_bytes": host, "weight_dtype": weight_storage_name(model),
                   "compute_dtype": "bfloat16", "upcast_host_bytes": upcast, "upcast_ratio": upcast / file_bytes}
        print(f"bench memory: {label} file {file_bytes} B, loaded {host} B ({details['weight_dtype']}), "
              f"upcast path {upcast} B")
        rows.append(Row.check(f"memory: transformer host bytes / file bytes ({label} file, tiny, bf16 compute)",
                              host / 1e6, "MB", baseline=file_bytes / 1e6, baseline_label="file size",
                              ratio=host / file_bytes, op="<=", limit=TARGET, details=details))
    return rows
