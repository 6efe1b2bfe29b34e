"""Block swapping under a memory budget (models/offload.py, models/swap_plan.py), proven on the CPU with a counting
fake accelerator, and the planner on the real FramePackI2V_HY config built on the meta device."""

import copy
import logging

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

from goan_core.errors import InputError
from goan_core.jobs import Job, RunSettings, run_job, sample_job
from goan_core.jobs import JobSaver
from goan_core.models import (FRAMEPACK_I2V_HY_CONFIG, CountingAccelerator, Transformer, apply_weight_dtype, placed,
                              plan_swap, storage_bytes)
from goan_core.models.offload import GIB, section_tokens, transformer_blocks
from goan_core.models.tiny import TINY_TRANSFORMER_CONFIG
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder, read_resume_file
from goan_core.sampling import Engine, SectionPlan
from goan_core.vocabulary import Status

from job_helpers import new_job_state

CPU, F32 = torch.device("cpu"), torch.float32
PRESERVE = 6.0  # GB kept free: the fake device's free bytes are this plus what each test allows
KEEP = int(PRESERVE * GIB)


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


def free_for(model, state, extra_blocks=0, slots=2, preservation=PRESERVE):
    """Free bytes that fit the non-block modules, `slots` streaming slots and `extra_blocks` blocks beside the
    preservation (which holds the activations; only a reserve above it comes out of the weight budget)."""
    full = plan_swap(model, None, preservation, compute_dtype=F32, tokens=section_tokens(state.plan))
    sizes = list(full.block_bytes.values())
    slots = sum(sorted(sizes, reverse=True)[:slots])
    return (full.preservation_bytes + max(0, full.reserve_bytes - full.preservation_bytes) + full.fixed_bytes
            + slots + sum(sizes[:extra_blocks]))


def assert_within(plan, free, peak=None):
    """The plan's (and the ledger's) weights within the weight budget, weights + activation memory within free."""
    peak = plan.peak_weight_bytes if peak is None else peak
    assert plan.budget == free - plan.preservation_bytes and not plan.fallback
    assert peak <= plan.weight_budget == plan.budget - max(0, plan.reserve_bytes - plan.preservation_bytes)
    assert plan.device_bytes() == plan.peak_weight_bytes + max(plan.preservation_bytes, plan.reserve_bytes) <= free


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
    assert len(plan.streamed) == 4 and plan.prefetch
    assert_within(plan, free)
    # exactly at the boundary (two blocks + the two largest slots): one byte less and transformer_blocks.1
    # no longer fits; the greedy pass fills the room with the smaller single blocks instead
    fewer = plan_swap(deep, free - 1, PRESERVE, compute_dtype=F32, tokens=section_tokens(state.plan))
    assert fewer.resident == ("transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1")
    assert_within(fewer, free - 1)
    blocks = sum(plan.block_bytes.values())
    assert plan.fixed_bytes + blocks == storage_bytes(deep)


def test_the_preservation_holds_the_activations(deep, tiny_models):
    """FramePack's meaning: the reserve is not taken out of the weight budget while the preservation covers it."""
    state, _ = new_job_state(tiny_models, params(), image())
    tokens = section_tokens(state.plan)
    full = plan_swap(deep, None, PRESERVE, compute_dtype=F32, tokens=tokens)
    assert 0 < full.reserve_bytes < KEEP
    free = KEEP + storage_bytes(deep)  # exactly the weights beside the preservation: all resident
    plan = plan_swap(deep, free, PRESERVE, compute_dtype=F32, tokens=tokens)
    assert plan.streamed == () and plan.device_bytes() == free and plan.weight_budget == plan.budget
    assert plan_swap(deep, free - 1, PRESERVE, compute_dtype=F32, tokens=tokens).streamed


def test_a_reserve_above_the_preservation_is_warned_about_and_budgeted(deep, tiny_models, caplog):
    state, _ = new_job_state(tiny_models, params(), image())
    tokens = section_tokens(state.plan)
    reserve = plan_swap(deep, None, compute_dtype=F32, tokens=tokens).reserve_bytes
    preservation = reserve / 3 / GIB  # GB: covers a third of the activations
    free = free_for(deep, state, extra_blocks=1, preservation=preservation)
    with caplog.at_level(logging.WARNING, logger="goan"):
        plan = plan_swap(deep, free, preservation, compute_dtype=F32, tokens=tokens)
    over = reserve - plan.preservation_bytes
    assert plan.resident == ("transformer_blocks.0",) and plan.prefetch and over > 0
    assert_within(plan, free)
    assert plan.peak_weight_bytes == plan.weight_budget == plan.budget - over  # the uncovered part is budgeted
    assert plan.device_bytes() == free  # weights + the whole reserve: exactly what is free
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{reserve / GIB:.2f} GB" in warnings[0]
    assert "raise gpu_memory_preservation if you get out-of-memory errors" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="goan"):
        plan_swap(deep, free + KEEP, PRESERVE, compute_dtype=F32, tokens=tokens)  # covered: no warning
        plan_swap(deep, free, preservation, compute_dtype=F32, tokens=tokens, warn=False)
    assert not caplog.records


def test_one_slot_left_streams_without_prefetch(tiny_models):
    model = tiny_models.transformer
    full = plan_swap(model, None)
    sizes = sorted(full.block_bytes.values(), reverse=True)
    free = KEEP + full.fixed_bytes + sizes[0]
    plan = plan_swap(model, free, PRESERVE)
    assert not plan.prefetch and plan.resident == () and len(plan.streamed) == 2
    assert_within(plan, free)
    assert plan.slot_bytes == sizes[0]


def test_short_of_one_slot_falls_back_to_the_least_and_warns(tiny_models, caplog):
    """One byte short of one slot beside the preservation: every block through one slot anyway, with a warning."""
    model = tiny_models.transformer
    full = plan_swap(model, None)
    sizes = sorted(full.block_bytes.values(), reverse=True)
    least = full.fixed_bytes + sizes[0]
    for free in (KEEP + least - 1, least + KEEP // 2, least):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="goan"):
            plan = plan_swap(model, free, PRESERVE)
        assert plan.fallback and plan.resident == () and len(plan.streamed) == 2 and not plan.prefetch
        assert plan.peak_weight_bytes == least > plan.weight_budget  # the documented minimum, above the budget
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "less than the asked-for 6 GB" in warnings[0]
        assert f"keeps only {(free - least) / GIB:.2f} GB free" in warnings[0]
    assert not plan_swap(model, KEEP + least, PRESERVE).fallback


def test_an_input_error_only_when_the_device_cannot_hold_one_slot(tiny_models):
    model = tiny_models.transformer
    full = plan_swap(model, None)
    least = full.fixed_bytes + max(full.block_bytes.values())
    with pytest.raises(InputError, match="gpu_memory_preservation 6 GB.*the transformer.*GB") as error:
        plan_swap(model, least - 1, PRESERVE)
    assert f"{least / GIB:.2f} GB" in str(error.value)
    with pytest.raises(InputError, match="gpu_memory_preservation"):
        plan_swap(model, full.fixed_bytes // 2, 0.0)  # even with nothing to keep free
    assert plan_swap(model, least, PRESERVE).fallback  # one byte more: placed


# -- the real FramePackI2V_HY transformer, built on the meta device (sizes only) -------------------------


@pytest.fixture(scope="module")
def framepack():
    """{"bf16": model, "fp8": model}: the real config's transformer on the meta device, weights stored so."""
    models = {}
    for label in ("bf16", "fp8"):
        with torch.device("meta"):
            model = HunyuanVideoFramepackTransformer3DModel.from_config(FRAMEPACK_I2V_HY_CONFIG).to(torch.bfloat16)
        models[label] = apply_weight_dtype(model, "fp8_e4m3fn", torch.bfloat16) if label == "fp8" else model
    return models


BUCKET_640 = SectionPlan("backward", 9, 4, 544, 704)


def real_plan(model, free_gib, preservation=PRESERVE):
    return plan_swap(model, int(free_gib * GIB), preservation, compute_dtype=torch.bfloat16,
                     tokens=section_tokens(BUCKET_640))


@pytest.mark.parametrize("label", ["bf16", "fp8"])
def test_an_8_gb_card_with_the_default_preservation_streams(framepack, label):
    """FramePack runs on an 8 GB card with 6 GB kept free (nearly everything streams); goan must too."""
    model = framepack[label]
    assert storage_bytes(model) == pytest.approx((24 if label == "bf16" else 12) * GIB, rel=0.01)
    plan = real_plan(model, 7.5)
    assert plan.reserve_bytes > 1.5 * GIB  # the old rule (budget - reserve) had nothing left for the weights
    assert plan.reserve_bytes < plan.preservation_bytes
    assert plan.streamed and len(plan.resident) <= 2 and not plan.fallback
    assert_within(plan, int(7.5 * GIB))


def test_a_24_gb_card_keeps_fp8_weights_resident(framepack):
    plan = real_plan(framepack["fp8"], 23)
    assert plan.streamed == () and len(plan.resident) == 60
    assert_within(plan, 23 * GIB)
    assert real_plan(framepack["bf16"], 23).streamed  # bf16 weights (24 GB) stream there


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
    assert_within(placement.plan, fake.free_bytes(), peak=fake.peak_bytes)  # the ledger within the weight budget
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
    assert_within(plan, free, peak=fake.peak_bytes)  # (c): the ledger never above the weight budget
    assert fake.uploaded_bytes > 2 * storage_bytes(model)  # streamed blocks came in pass after pass
    assert_back_on_cpu(model, before, fake)


def test_a_fallback_job_streams_through_one_slot_and_is_identical(tiny_models, tmp_path, caplog):
    """Less free than the preservation: the least goan can do (one slot), the ledger at exactly that minimum."""
    model = tiny_models.transformer
    state, source = new_job_state(tiny_models, params(), image())
    reference = state.snapshot()
    Engine(model, CPU, F32).run(reference)
    before = weights(model)
    full = plan_swap(model, None, PRESERVE)
    least = full.fixed_bytes + max(full.block_bytes.values())
    fake = CountingAccelerator(least + GIB)  # 1 GB over the minimum, 5 GB short of the preservation
    with caplog.at_level(logging.WARNING, logger="goan"):
        result = run_job(Job(state, source), Transformer(model, CPU, F32),
                         RunSettings(tmp_path, gpu_memory_preservation=PRESERVE, accelerator=fake))
    assert result.status == Status.FINISHED
    assert torch.equal(result.state.history_latents, reference.history_latents)
    assert fake.peak_bytes == least  # the documented fallback minimum
    assert any("less than the asked-for 6 GB" in r.getMessage() for r in caplog.records)
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
