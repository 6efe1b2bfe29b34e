"""Full tiny generations through the real models: frame counts, MP4 output, stepping and the generator."""

import numpy as np
import pytest
import torch

from goan_core.sampling import Engine
from goan_core.params import JobParams
from goan_core.sampling.plan import CONTEXT_FRAMES
from goan_core.media import count_frames, write_mp4

from job_helpers import new_job_state, render

CPU, F32 = torch.device("cpu"), torch.float32


def demo_image(h=64, w=72):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], axis=-1).astype(np.uint8)


def tiny_params(mode, **overrides):
    settings = dict(prompt="a red fox runs through snow", seconds=1.2, lws=3, steps=4, mode=mode,
                    resolution=64, seed=7)
    settings.update(overrides)
    return JobParams(**settings)


@pytest.mark.parametrize("mode", ["backward", "f1"])
def test_full_generation_frame_counts_and_mp4(tiny_models, tmp_path, mode):
    state, source = new_job_state(tiny_models, tiny_params(mode), demo_image())
    plan = state.plan
    assert plan.total_sections == 3 and source.shape == (plan.height, plan.width, 3)
    engine = Engine(tiny_models.transformer, CPU, F32)
    events = []
    engine.run(state, callback=events.append)
    assert state.done and len(events) == 3 * 4 == state.total_steps
    assert [e.steps_done for e in events] == list(range(1, 13))
    assert engine.model_calls == 12  # cfg 1: one transformer pass per step
    assert state.history_latents.shape[2] == plan.total_latent_frames + CONTEXT_FRAMES == 3 * 3 + 1 + 19
    assert torch.isfinite(state.history_latents).all()
    frames = render(tiny_models, state)
    assert frames.dtype == torch.uint8
    assert frames.shape == (plan.total_pixel_frames, plan.height, plan.width, 3) == (37, 64, 64, 3)
    out = write_mp4(frames, tmp_path / "out.mp4")
    assert count_frames(out) == 37


def test_real_cfg_runs_two_passes(tiny_models):
    state, _ = new_job_state(tiny_models, tiny_params("f1", cfg=3.0, rs=0.5, negative_prompt="blurry"), demo_image())
    assert state.conditioning.negative_prompt_embeds is not None
    engine = Engine(tiny_models.transformer, CPU, F32)
    engine.step(state)
    assert engine.model_calls == 2


@pytest.mark.parametrize("mode,sampler", [("backward", "unipc"), ("f1", "unipc"), ("backward", "euler")])
def test_stopping_anywhere_and_continuing_on_a_new_engine_is_exact(tiny_models, mode, sampler):
    params = tiny_params(mode, sampler=sampler)
    reference, _ = new_job_state(tiny_models, params, demo_image(), job_id="ref")
    Engine(tiny_models.transformer, CPU, F32).run(reference)
    for stop_after in (1, 4, 6, 9):
        state, _ = new_job_state(tiny_models, params, demo_image(), job_id="ref")
        engine = Engine(tiny_models.transformer, CPU, F32)
        for _ in range(stop_after):
            engine.step(state)
        resumed = state.snapshot()
        Engine(tiny_models.transformer, CPU, F32).run(resumed)
        assert torch.equal(resumed.history_latents, reference.history_latents), stop_after


def test_generator_is_consumed_once_per_section(tiny_models):
    state, _ = new_job_state(tiny_models, tiny_params("backward"), demo_image())
    engine = Engine(tiny_models.transformer, CPU, F32)
    expected = torch.Generator("cpu").manual_seed(7)
    for section in range(3):
        engine.step(state)
        torch.randn(state.plan.noise_shape(), generator=expected)
        for _ in range(3):
            assert torch.equal(state.generator_state, expected.get_state())
            engine.step(state)
    assert state.done


def test_failed_step_leaves_state_unchanged(tiny_models, monkeypatch):
    state, _ = new_job_state(tiny_models, tiny_params("f1"), demo_image())
    engine = Engine(tiny_models.transformer, CPU, F32)
    engine.step(state)
    before = state.snapshot()

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(tiny_models.transformer, "forward", boom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.step(state)
    assert state.sampler.step == before.sampler.step and torch.equal(state.sampler.x, before.sampler.x)
    assert torch.equal(state.generator_state, before.generator_state)


@pytest.mark.parametrize("steps_before", [1, 3])  # mid-section; the step that closes the section
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_step_that_makes_nan_or_inf_raises_and_keeps_nothing(tiny_models, monkeypatch, steps_before, value):
    from goan_core.errors import NonFiniteError

    state, _ = new_job_state(tiny_models, tiny_params("f1"), demo_image())
    engine = Engine(tiny_models.transformer, CPU, F32)
    for _ in range(steps_before):
        engine.step(state)
    before = state.snapshot()
    real_forward = tiny_models.transformer.forward

    def poisoned(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        return (out[0] * 0 + value,) + tuple(out[1:])

    monkeypatch.setattr(tiny_models.transformer, "forward", poisoned)
    with pytest.raises(NonFiniteError, match=f"step {steps_before + 1} of section 0"):
        engine.step(state)
    assert (state.section, state.steps_done) == (before.section, before.steps_done)
    assert state.history_latents is before.history_latents and state.generator_state is before.generator_state
    assert state.sampler.x is before.sampler.x and len(state.sampler.model_outputs) == len(before.sampler.model_outputs)


def _tensors(state):
    found = {"history": state.history_latents, "start": state.start_latent, "generator": state.generator_state,
             **{f"cond.{k}": v for k, v in state.conditioning.tensors().items()}}
    if state.sampler is not None:
        found["x"] = state.sampler.x
        found.update({f"out{i}": t for i, t in enumerate(state.sampler.model_outputs)})
    return found


def test_steps_never_modify_tensors_in_place_so_snapshots_may_share_them(tiny_models):
    """The invariant that lets snapshot() share tensors instead of copying them."""
    state, _ = new_job_state(tiny_models, tiny_params("backward", cfg=2.0), demo_image())
    engine = Engine(tiny_models.transformer, CPU, F32)
    for _ in range(3):
        engine.step(state)  # mid-section, with a multistep history
    frozen = state.snapshot()
    copies = {name: t.clone() for name, t in _tensors(frozen).items()}
    for _ in range(6):  # across a section boundary
        engine.step(state)
    assert state.section == 2 and frozen.section == 0 and frozen.sampler.step == 3
    for name, tensor in _tensors(frozen).items():
        assert torch.equal(tensor, copies[name]), name


def test_one_engine_shared_by_interleaved_jobs_equals_one_engine_each(tiny_models):
    """The section cache is keyed on the objects it was built from, so jobs may share an Engine."""
    first, _ = new_job_state(tiny_models, tiny_params("backward"), demo_image())
    second, _ = new_job_state(tiny_models, tiny_params("backward", prompt="a boat at dusk", seed=8), demo_image())
    shared = Engine(tiny_models.transformer, CPU, F32)
    while not (first.done and second.done):
        for state in (first, second):
            if not state.done:
                shared.step(state)
    for params, state in ((tiny_params("backward"), first),
                          (tiny_params("backward", prompt="a boat at dusk", seed=8), second)):
        alone, _ = new_job_state(tiny_models, params, demo_image())
        Engine(tiny_models.transformer, CPU, F32).run(alone)
        assert torch.equal(alone.history_latents, state.history_latents)
