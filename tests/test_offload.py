"""Block swapping under a memory budget (models/offload.py), proven on the CPU with a counting fake accelerator."""

import copy

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

from goan_core.errors import InputError
from goan_core.jobs import Job, RunSettings, run_job, sample_job
from goan_core.jobs import JobSaver
from goan_core.models import CountingAccelerator, Transformer, apply_weight_dtype, placed, plan_swap, storage_bytes
from goan_core.models.offload import GIB, section_tokens, transformer_blocks
from goan_core.models.tiny import TINY_TRANSFORMER_CONFIG
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder, read_resume_file
from goan_core.sampling import Engine
from goan_core.vocabulary import Status

from job_helpers import new_job_state

CPU, F32 = torch.device("cpu"), torch.float32
PRESERVE = 6.0  # GB kept free: the fake device's free bytes are this plus what each test allows


def image():
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x ^ y) * 4], axis=-1).astype(np.uint8)


def params(mode="backward", **overrides):
    settings = dict(prompt="waves roll onto a beach", seconds=1.2, lws=3, steps=3, mode=mode, resolution=64, seed=5)
    settings.update(overrides)
    return JobParams(**settings)


@pytest.fixture(scope="module")
def deep():
    """The tiny transformer with 3 + 3 blocks, so that some blocks can stay resident while others stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return HunyuanVideoFramepackTransformer3DModel(
            **{**TINY_TRANSFORMER_CONFIG, "num_layers": 3, "num_single_layers": 3}).eval()


def free_for(model, state, extra_blocks=0, slots=2):
    """Free bytes that fit the non-block modules, the reserve, `slots` streaming slots and `extra_blocks` blocks."""
    full = plan_swap(model, None, compute_dtype=F32, tokens=section_tokens(state.plan))
    sizes = list(full.block_bytes.values())
    slots = sum(sorted(sizes, reverse=True)[:slots])
    return int(PRESERVE * GIB) + full.fixed_bytes + full.reserve_bytes + slots + sum(sizes[:extra_blocks])


def weights(model):
    """Where each weight's storage is now (data_ptr), by name: a Parameter object stays, its data is swapped."""
    return {name: t.data_ptr() for name, t in list(model.named_parameters()) + list(model.named_buffers())}


def assert_back_on_cpu(model, before, accelerator):
    assert all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    assert weights(model) == before  # the very original tensors, not copies
    assert accelerator.resident_bytes == 0
    assert not model._forward_pre_hooks and all(
        not b._forward_pre_hooks and not b._forward_hooks for _, b in transformer_blocks(model))


# -- (a) the planner -------------------------------------------------------------------------------


def test_everything_fits_nothing_streams(tiny_models):
    model = tiny_models.transformer
    plan = plan_swap(model, 40 * GIB, PRESERVE)
    assert plan.streamed == () and plan.resident == ("transformer_blocks.0", "single_transformer_blocks.0")
    assert plan.peak_weight_bytes == storage_bytes(model)
    assert plan_swap(model, None).streamed == ()  # free memory unknown: keep everything resident


def test_tight_budget_streams_and_stays_within_it(deep, tiny_models):
    state, _ = new_job_state(tiny_models, params(), image())
    free = free_for(deep, state, extra_blocks=2)
    plan = plan_swap(deep, free, PRESERVE, compute_dtype=F32, tokens=section_tokens(state.plan))
    assert plan.resident == ("transformer_blocks.0", "transformer_blocks.1")
    assert len(plan.streamed) == 4
    assert plan.peak_bytes <= plan.budget == free - int(PRESERVE * GIB)
    blocks = sum(plan.block_bytes.values())
    assert plan.fixed_bytes + blocks == storage_bytes(deep)


def test_one_slot_left_streams_without_prefetch(tiny_models):
    model = tiny_models.transformer
    full = plan_swap(model, None)
    sizes = sorted(full.block_bytes.values(), reverse=True)
    plan = plan_swap(model, int(PRESERVE * GIB) + full.fixed_bytes + full.reserve_bytes + sizes[0], PRESERVE)
    assert not plan.prefetch and plan.resident == () and len(plan.streamed) == 2
    assert plan.peak_bytes <= plan.budget and plan.slot_bytes == sizes[0]


def test_budget_below_the_non_block_modules_is_an_input_error(tiny_models):
    model = tiny_models.transformer
    fixed = plan_swap(model, None).fixed_bytes
    with pytest.raises(InputError, match="gpu_memory_preservation"):
        plan_swap(model, int(PRESERVE * GIB) + fixed // 2, PRESERVE)
    with pytest.raises(InputError, match="gpu_memory_preservation"):
        plan_swap(model, 2 * GIB, PRESERVE)  # more to keep free than there is


def test_fp8_weights_count_one_byte(deep):
    fp8 = apply_weight_dtype(copy.deepcopy(deep), "fp8_e4m3fn", F32)
    plan, wide = plan_swap(fp8, None), plan_swap(deep, None)
    assert plan.fixed_bytes + sum(plan.block_bytes.values()) == storage_bytes(fp8)
    assert sum(plan.block_bytes.values()) < 0.4 * sum(wide.block_bytes.values())


# -- (b, c, e) swapped vs resident, the ledger, and cleanup -------------------------------------------


def test_swapped_forward_is_identical_and_within_budget(deep, tiny_models):
    state, _ = new_job_state(tiny_models, params(), image())
    reference = state.snapshot()
    Engine(deep, CPU, F32).run(reference)
    before = weights(deep)
    fake = CountingAccelerator(free_for(deep, state, extra_blocks=1))
    seen = []
    block = dict(transformer_blocks(deep))["single_transformer_blocks.2"]  # a streamed one
    probe = block.register_forward_hook(lambda m, a, out: seen.append(  # runs before the swapper's own post-hook
        all(p.data_ptr() != before[f"single_transformer_blocks.2.{n}"] for n, p in m.named_parameters())))
    try:
        with placed(deep, CPU, PRESERVE, compute_dtype=F32, tokens=section_tokens(state.plan),
                    accelerator=fake) as placement:
            assert placement.plan.resident == ("transformer_blocks.0",) and len(placement.plan.streamed) == 5
            Engine(deep, CPU, F32).run(state)
    finally:
        probe.remove()
    assert torch.equal(state.history_latents, reference.history_latents)
    assert seen and all(seen)  # the streamed block computed with its device copies
    assert fake.peak_bytes + placement.plan.reserve_bytes <= placement.plan.budget
    assert fake.peak_bytes == placement.plan.peak_weight_bytes  # the ledger reaches what the plan allowed
    assert_back_on_cpu(deep, before, fake)


@pytest.mark.parametrize("which, slots, extra_blocks", [("tiny", 1, 0), ("deep", 2, 2)])
def test_whole_tiny_job_swapped_is_identical(tiny_models, deep, tmp_path, which, slots, extra_blocks):
    """tiny: both blocks stream through one slot, synchronously; deep: 2 resident, 4 streamed with prefetch."""
    model = tiny_models.transformer if which == "tiny" else deep
    state, source = new_job_state(tiny_models, params(), image())
    reference = state.snapshot()
    Engine(model, CPU, F32).run(reference)
    before = weights(model)
    free = free_for(model, state, extra_blocks=extra_blocks, slots=slots)
    plan = plan_swap(model, free, PRESERVE, compute_dtype=F32, tokens=section_tokens(state.plan))
    assert plan.prefetch == (slots == 2) and len(plan.resident) == extra_blocks and plan.streamed
    fake = CountingAccelerator(free)
    result = run_job(Job(state, source), Transformer(model, CPU, F32),
                     RunSettings(tmp_path, gpu_memory_preservation=PRESERVE, accelerator=fake))
    assert result.status == Status.FINISHED
    assert torch.equal(result.state.history_latents, reference.history_latents)
    assert fake.peak_bytes == plan.peak_weight_bytes < storage_bytes(model)
    assert fake.peak_bytes + plan.reserve_bytes <= plan.budget  # (c): the ledger never above the budget
    assert fake.uploaded_bytes > 2 * storage_bytes(model)  # streamed blocks came in pass after pass
    assert_back_on_cpu(model, before, fake)


def test_an_exception_inside_a_step_puts_everything_back(tiny_models, tmp_path):
    model = tiny_models.transformer
    state, source = new_job_state(tiny_models, params(), image())
    before = weights(model)
    fake = CountingAccelerator(free_for(model, state, slots=1))
    calls = []

    def boom(module, args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("CUDA out of memory (simulated)")

    block = dict(transformer_blocks(model))["single_transformer_blocks.0"]  # streamed: raises with copies live
    handle = block.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            sample_job(Engine(model, CPU, F32), state, JobSaver(RetentionFolder(tmp_path, state.job_id), source),
                       gpu_memory_preservation=PRESERVE, accelerator=fake)
    finally:
        handle.remove()
    assert_back_on_cpu(model, before, fake)
    assert fake.peak_bytes > 0


# -- (d) resumes cross memory modes ----------------------------------------------------------------


@pytest.mark.parametrize("first, second", [("resident", "tight"), ("tight", "resident")])
def test_resume_crosses_memory_modes(tiny_models, tmp_path, first, second):
    model = tiny_models.transformer
    state, source = new_job_state(tiny_models, params("f1"), image())
    reference = state.snapshot()
    Engine(model, CPU, F32).run(reference)
    free = {"resident": 40 * GIB, "tight": free_for(model, state, slots=1)}
    handle = Transformer(model, CPU, F32)
    fakes = {mode: CountingAccelerator(free[mode]) for mode in free}
    paused = run_job(Job(state, source), handle, RunSettings(tmp_path, pause_at=(1, 2), accelerator=fakes[first]))
    assert paused.status == Status.PAUSED
    loaded = read_resume_file(paused.resume_file)
    resumed = run_job(Job(loaded.state, loaded.source_image), handle,
                      RunSettings(tmp_path, accelerator=fakes[second]))
    assert resumed.status == Status.FINISHED
    assert torch.equal(resumed.state.history_latents, reference.history_latents)
    assert fakes["resident"].peak_bytes == fakes["resident"].uploaded_bytes == storage_bytes(model)  # moved once
    tight = fakes["tight"]
    assert tight.peak_bytes < storage_bytes(model) < tight.uploaded_bytes  # blocks streamed in, pass after pass
