"""The benchmarks still run: every measure at its smallest size, a few seconds each (no timing asserts)."""

import json

import pytest
import torch

from bench import MEASURES
from bench.common import Row, markdown_table


# gpu: below, on the tiny config; farm: starts Ray and worker processes (a minute on 2 cores), and
# tests/test_farm.py runs the same farm, kill included
@pytest.mark.parametrize("name", [m for m in MEASURES if m not in ("gpu", "farm")])
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
    assert len(rows) == 2 and all(r.value and r.value > 0 for r in rows)
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
