"""Section plan, padding schedule, index split, context slicing and history update (both modes)."""

import pytest
import torch

from goan_core.sampling.decode import section_slices, soft_append
from goan_core.errors import InputError
from goan_core.sampling.plan import CONTEXT_FRAMES, SectionPlan, latent_paddings, section_count


@pytest.mark.parametrize("seconds,lws,expected", [
    (5, 9, 4), (1, 9, 1), (0.1, 9, 1), (60, 9, 50), (10, 9, 8), (5, 5, 8), (2, 3, 5), (120, 9, 100),
])
def test_section_count_follows_framepack(seconds, lws, expected):
    assert section_count(seconds, lws) == expected == int(max(round(seconds * 30 / (lws * 4)), 1))


@pytest.mark.parametrize("n", range(1, 40))
def test_padding_schedule(n):
    pads = latent_paddings(n)
    assert len(pads) == n and pads[-1] == 0
    if n <= 4:
        assert pads == list(range(n - 1, -1, -1))
    else:
        assert pads == [3] + [2] * (n - 3) + [1, 0]


@pytest.mark.parametrize("lws", [1, 3, 9, 12])
@pytest.mark.parametrize("n", [1, 2, 4, 5, 9])
def test_backward_index_split(n, lws):
    plan = SectionPlan("backward", lws, n, 64, 96)
    for k, pad in enumerate(latent_paddings(n)):
        lay = plan.layout(k)
        p = pad * lws
        assert lay.clean_indices.tolist() == [0, 1 + p + lws]
        assert lay.latent_indices.tolist() == list(range(1 + p, 1 + p + lws))
        assert lay.clean_2x_indices.tolist() == [2 + p + lws, 3 + p + lws]
        assert lay.clean_4x_indices.tolist() == list(range(4 + p + lws, 20 + p + lws))


@pytest.mark.parametrize("lws", [1, 9, 12])
def test_f1_index_split(lws):
    lay = SectionPlan("f1", lws, 3, 64, 64).layout(1)
    assert lay.clean_indices.tolist() == [0, 19]
    assert lay.clean_4x_indices.tolist() == list(range(1, 17))
    assert lay.clean_2x_indices.tolist() == [17, 18]
    assert lay.latent_indices.tolist() == list(range(20, 20 + lws))


def _frames(values, h=2, w=2):
    """A latent whose frame i is filled with values[i], to follow frames through slicing."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1, 1, 1).expand(1, 16, len(values), h, w).clone()


def test_backward_context_and_history_update():
    plan = SectionPlan("backward", 2, 3, 16, 16)
    start = _frames([100.0])
    history = torch.zeros(1, 16, CONTEXT_FRAMES, 2, 2)
    for k in range(3):
        clean, two, four = plan.context(history, start)
        assert clean[0, 0, :, 0, 0].tolist() == [100.0, history[0, 0, 0, 0, 0].item()]
        assert two.shape[2] == 2 and four.shape[2] == 16
        assert torch.equal(two, history[:, :, 1:3]) and torch.equal(four, history[:, :, 3:19])
        generated = _frames([10.0 * k + 1, 10.0 * k + 2])
        history = plan.append(history, generated, start, k)
        assert history.shape[2] == plan.history_frames_after(k + 1)
    real = plan.real_history(history, 3)
    # video order: start, then the last generated section first (backward generation)
    assert real[0, 0, :, 0, 0].tolist() == [100, 21, 22, 11, 12, 1, 2]
    assert plan.total_latent_frames == 7 and plan.total_pixel_frames == 25


def test_f1_context_and_history_update():
    plan = SectionPlan("f1", 2, 3, 16, 16)
    start = _frames([100.0])
    history = torch.cat([torch.zeros(1, 16, CONTEXT_FRAMES, 2, 2), start], dim=2)
    assert history.shape[2] == plan.initial_history_frames() == plan.history_frames_after(0)
    for k in range(3):
        clean, two, four = plan.context(history, start)
        assert clean[0, 0, :, 0, 0].tolist() == [100.0, history[0, 0, -1, 0, 0].item()]
        assert torch.equal(two, history[:, :, -3:-1]) and torch.equal(four, history[:, :, -19:-3])
        history = plan.append(history, _frames([10.0 * k + 1, 10.0 * k + 2]), start, k)
        assert history.shape[2] == plan.history_frames_after(k + 1)
    assert plan.real_history(history, 3)[0, 0, :, 0, 0].tolist() == [100, 1, 2, 11, 12, 21, 22]


@pytest.mark.parametrize("mode", ["backward", "f1"])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_decode_slices_cover_video_once(mode, n):
    lws = 3
    plan = SectionPlan(mode, lws, n, 16, 16)
    slices = section_slices(plan)
    total = plan.total_latent_frames
    assert all(0 <= s.start < s.stop <= total for s in slices)
    # pixel frames after blending: (latents - 1) * 4 + 1
    frames = [(s.stop - s.start - 1) * 4 + 1 for s in slices]
    pixel = frames[0] + sum(f - plan.section_frames for f in frames[1:])
    assert pixel == plan.total_pixel_frames


def test_soft_append_blends_linearly():
    a = torch.ones(1, 1, 4, 1, 1)
    b = torch.zeros(1, 1, 3, 1, 1)
    out = soft_append(a, b, 2)
    assert out[0, 0, :, 0, 0].tolist() == [1, 1, 1, 0, 0]


def test_extension_only_forward():
    with pytest.raises(InputError, match="fixed"):
        SectionPlan("backward", 9, 3, 64, 64).extended(2)
    assert SectionPlan("f1", 9, 3, 64, 64).extended(2).total_sections == 5


def test_plan_rejects_bad_sizes():
    with pytest.raises(InputError, match="multiple of 16"):
        SectionPlan("f1", 9, 3, 60, 64)
    with pytest.raises(InputError, match="unknown mode"):
        SectionPlan("sideways", 9, 3, 64, 64)
