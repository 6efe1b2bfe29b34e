"""torch.compile of the transformer's blocks (models/compilation.py), wired through the runner on the CPU.

Inductor's compile takes about a minute for the tiny model on these CPUs, so the runs here compile with
dynamo's "eager" backend (the graphs are captured, guarded and replayed as real compiled code would be,
with the same ops) and "aot_eager" (through AOTAutograd's decompositions: close, not identical); the
bench (`python -m bench --only speed`) runs real inductor.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from goan_core.errors import InputError
from goan_core.jobs import Job, RunSettings, run_job, sample_job
from goan_core.models import (CountingAccelerator, Transformer, check_compiler, compiled_blocks, plan_swap,
                              section_tokens)
from goan_core.sampling import Engine

from test_resume_runs import CPU, F32, FINISHED, new_state, saver

CFG = dict(cfg=2.5, negative_prompt="blurry and dark")


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def reference(models, **overrides):
    state, _ = new_state(models, "backward", **overrides)
    Engine(models.transformer, CPU, F32).run(state)
    return state


def compiled_run(models, tmp_path, backend="eager", accelerator=None, **overrides):
    state, source = new_state(models, "backward", **overrides)
    result = sample_job(Engine(models.transformer, CPU, F32), state, saver(tmp_path, state, source), compile=True,
                        compile_backend=backend, accelerator=accelerator, gpu_memory_preservation=0.0)
    assert result.status == FINISHED
    return result.state


def streaming(models, **overrides) -> CountingAccelerator:
    """A fake device with room for the non-block modules and one block: every block streams through one slot."""
    state, _ = new_state(models, "backward", **overrides)
    full = plan_swap(models.transformer, None, 0.0, compute_dtype=F32, tokens=section_tokens(state.plan))
    return CountingAccelerator(full.fixed_bytes + full.reserve_bytes + max(full.block_bytes.values()))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()  # graphs compiled by earlier tests would hide the counts
    yield
    torch._dynamo.reset()


def test_compiled_blocks_give_the_same_latents_and_compile_one_graph_per_block_class(tiny_models, tmp_path,
                                                                                     fresh_dynamo):
    before = graphs()
    state = compiled_run(tiny_models, tmp_path)
    assert graphs() - before == 2  # one double-stream, one single-stream block class
    assert torch.equal(state.history_latents, reference(tiny_models).history_latents)
    again = compiled_run(tiny_models, tmp_path / "again")  # the next job of the same shapes compiles nothing
    assert graphs() - before == 2 and torch.equal(again.history_latents, state.history_latents)


def test_block_swapping_and_teacache_cause_no_recompilation(tiny_models, tmp_path, fresh_dynamo):
    compiled_run(tiny_models, tmp_path / "warm", teacache=False)
    before = graphs()
    accelerator = streaming(tiny_models)
    swapped = compiled_run(tiny_models, tmp_path / "swap", accelerator=accelerator, teacache=False)
    assert accelerator.uploaded_bytes > 0 and accelerator.resident_bytes == 0  # blocks really streamed
    cached = compiled_run(tiny_models, tmp_path / "teacache", accelerator=streaming(tiny_models), teacache=True)
    assert graphs() == before
    assert torch.equal(swapped.history_latents, reference(tiny_models, teacache=False).history_latents)
    assert torch.equal(cached.history_latents, reference(tiny_models, teacache=True).history_latents)


def test_a_new_prompt_length_compiles_once_more_per_block_class(tiny_models, tmp_path, fresh_dynamo):
    """dynamic=False: each shape its own graph (real CFG's negative prompt is another length), never one per step."""
    before = graphs()
    state = compiled_run(tiny_models, tmp_path, **CFG)
    assert graphs() - before == 4
    assert torch.equal(state.history_latents, reference(tiny_models, **CFG).history_latents)


def test_aot_eager_compiled_blocks_stay_close_to_the_plain_model(tiny_models, tmp_path, fresh_dynamo):
    state = compiled_run(tiny_models, tmp_path, backend="aot_eager", teacache=False)
    plain = reference(tiny_models, teacache=False).history_latents
    assert torch.allclose(state.history_latents, plain, atol=1e-4, rtol=1e-4)


def test_the_model_is_uncompiled_after_a_run_even_one_that_failed(tiny_models, tmp_path):
    model = tiny_models.transformer
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    with pytest.raises(RuntimeError, match="boom"):
        with compiled_blocks(model, True, CPU, "eager"):
            assert all("forward" in block.__dict__ for block in blocks)
            raise RuntimeError("boom")
    assert not any("forward" in block.__dict__ for block in blocks)
    with compiled_blocks(model, False, CPU, "eager"):
        assert not any("forward" in block.__dict__ for block in blocks)


def test_run_job_compiles_when_asked_and_notes_it(tiny_models, tmp_path, fresh_dynamo):
    from goan_core.resumefile import read_resume_file

    state, source = new_state(tiny_models, "backward")
    transformer = Transformer(tiny_models.transformer, CPU, F32)
    before = graphs()
    result = run_job(Job(state, source), transformer, RunSettings(tmp_path, pause_at=(1, 1), compile=True,
                                                                 compile_backend="eager"))
    assert graphs() - before == 2
    assert read_resume_file(result.resume_file).job_info["run"]["compile"] is True


def test_missing_compilers_are_input_errors(monkeypatch):
    import importlib.util
    import shutil

    check_compiler(CPU, "eager")  # other backends need nothing
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="compile on the CPU needs a C\\+\\+ compiler"):
        check_compiler(CPU)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="needs triton: pip install triton"):
        check_compiler("cuda")


def test_fp8_weights_cast_per_layer_compile_too(tiny_models, fresh_dynamo):
    """storage.CastLinear (fp8 weights cast at use) inside a compiled block: the same latents as uncompiled."""
    import copy

    from goan_core.models import apply_weight_dtype

    model = apply_weight_dtype(copy.deepcopy(tiny_models.transformer), "fp8_e4m3fn", F32)
    assert type(model.transformer_blocks[0].attn.to_q).__name__ == "CastLinear"
    results = []
    for compiled in (False, True):
        state, _ = new_state(tiny_models, "backward", steps=3)
        with compiled_blocks(model, compiled, CPU, "eager"):
            Engine(model, CPU, F32).run(state)
        results.append(state.history_latents)
    assert torch.equal(*results)
