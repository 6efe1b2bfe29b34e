"""The benchmarks still run: every measure at its smallest size, a few seconds each (no timing asserts)."""

import json

import pytest
import torch

from bench import MEASURES
from bench.common import Row, markdown_table


# gpu, gpu_memory: CUDA rows, each with its own tiny CPU test below; farm: starts Ray and worker processes
# (a minute on 2 cores), and tests/test_farm.py runs the same farm, kill included
NOT_HERE = ("gpu", "gpu_memory", "farm")


@pytest.mark.parametrize("name", [m for m in MEASURES if m not in NOT_HERE])
def test_measure_runs(name, tmp_path):
    import importlib

    module = importlib.import_module(f"bench.{name}")
    rows = module.run(quick=True, base_dir=tmp_path, repeats=1)
    assert rows and all(isinstance(r, Row) for r in rows)
    assert not any(r.skipped for r in rows), [r.skipped for r in rows]
    assert all(r.value is not None for r in rows)
    assert markdown_table(rows).count("\n") == len(rows) + 1


def test_gpu_measure_on_tiny_config(tmp_path):
    from bench.gpu import run
    from goan_core.models.tiny import TINY_TRANSFORMER_CONFIG

    rows = run(quick=True, base_dir=tmp_path, repeats=1, device="cpu", config=TINY_TRANSFORMER_CONFIG)
    assert all(r.value and r.value > 0 for r in rows)
    measures = [r.measure for r in rows]
    assert [m.split(" [")[0] for m in measures[1:4]] == [
        "gpu: s/step, sdpa, TeaCache off", "gpu: s/step, sdpa, TeaCache on",
        "gpu: goan / diffusers HunyuanVideoFramepackPipeline, s per model call"]  # on a CPU only sdpa applies
    assert len(rows) == 5 and rows[2].details["skipped_calls"] > 0 and rows[1].details["skipped_calls"] == 0
    if not torch.cuda.is_available():
        skipped = run(quick=True)
        assert len(skipped) == 4 and all(r.skipped for r in skipped)


def test_gpu_memory_measure_on_tiny_config(tmp_path):
    """The card loop on the CPU: a fake card too small for both blocks streams them, a large one keeps them."""
    from bench.gpu_memory import run
    from goan_core.models.tiny import TINY_TRANSFORMER_CONFIG

    rows = run(quick=True, base_dir=tmp_path, repeats=1, device="cpu", config=TINY_TRANSFORMER_CONFIG,
               cards=(0.0005, 1.0), preservation=0)
    small, large = (r.details["goan"] for r in rows)
    assert all(r.value and r.value > 0 for r in rows)
    assert small["resident_blocks"] == 0 and large["resident_blocks"] == large["blocks"] > 0
    if not torch.cuda.is_available():
        assert all(r.skipped for r in run(quick=True))


def test_main_writes_table_and_json(tmp_path, capsys):
    from bench.__main__ import main

    out = tmp_path / "results.json"
    assert main(["--quick", "--only", "gpu", "--out", str(out), "--dir", str(tmp_path)]) == 0
    data = json.loads(out.read_text())
    assert {"cpu", "cores", "torch", "date"} <= set(data["machine"])
    assert data["measures"] and all("ratio" in m and "target" in m for m in data["measures"])
    assert "| measure | value |" in capsys.readouterr().out
