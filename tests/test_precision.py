"""Legacy precision: the four patch-embed Conv3d layers in fp32 on devices without bf16 Conv3d.

A "legacy device" is simulated on the CPU by making Conv3d raise the error a Turing GPU raises for
bf16 (see `legacy_conv3d`); CUDA capability detection is tested with a mocked torch.cuda.
"""

import logging

import pytest
import torch
import torch.nn.functional as F
from diffusers import HunyuanVideoFramepackTransformer3DModel

from goan_core.errors import InputError
from goan_core.models.tiny import TINY_TRANSFORMER_CONFIG
from goan_core.models.precision import (
    CONV_FP32_POLICIES,
    PATCH_EMBED_CONVS,
    Fp32Conv3d,
    apply_conv_fp32,
    configure_precision,
    conv_fp32_applied,
    conv_fp32_needed,
)

# Worst |bf16 model with fp32 patch embeds - fp32 model| / max |fp32 model| over the tiny model's output
# (same bf16-representable inputs). Measured 0.0079; a plain bf16 model on the CPU, where bf16 Conv3d
# runs, scores 0.0069: the gap is bf16 rounding in the transformer blocks. Bound with headroom.
BF16_REL_TOLERANCE = 2e-2

LEGACY_ERROR = ("Could not run 'aten::slow_conv3d_forward' with arguments from the 'CUDA' backend. "
                "This could be because the operator doesn't exist for this backend.")


def tiny_transformer(**overrides) -> HunyuanVideoFramepackTransformer3DModel:
    torch.manual_seed(0)
    return HunyuanVideoFramepackTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **overrides}).eval()


def tiny_inputs(dtype: torch.dtype) -> dict:
    """One F1-style section: 3 noisy latent frames, 1+1 clean, 2 at 2x and 16 at 4x; 8x8 latents.

    Values are bf16-representable whatever `dtype` is, so an fp32 run sees exactly the same inputs.
    """
    g = torch.Generator().manual_seed(1)
    start, clean_4x, clean_2x, clean_post, latent = torch.arange(23).split([1, 16, 2, 1, 3])

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16).to(dtype)

    return dict(
        hidden_states=randn(1, 16, 3, 8, 8),
        timestep=torch.tensor([704.0]).to(dtype),
        encoder_hidden_states=randn(1, 8, 32),
        encoder_attention_mask=torch.ones(1, 8, dtype=torch.long),
        pooled_projections=randn(1, 16),
        image_embeds=randn(1, 5, 24),
        indices_latents=latent,
        guidance=torch.tensor([9984.0]).to(dtype),
        latents_clean=randn(1, 16, 2, 8, 8),
        indices_latents_clean=torch.cat([start, clean_post]),
        latents_history_2x=randn(1, 16, 2, 8, 8),
        indices_latents_history_2x=clean_2x,
        latents_history_4x=randn(1, 16, 16, 8, 8),
        indices_latents_history_4x=clean_4x,
        return_dict=False,
    )


def run(model, dtype: torch.dtype) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs(dtype))[0]


@pytest.fixture
def legacy_conv3d(monkeypatch):
    """Conv3d behaves as on a Turing GPU: bf16 input or weight -> the slow_conv3d NotImplementedError."""
    real_conv3d = F.conv3d

    def conv3d(input, weight, *args, **kwargs):
        if torch.bfloat16 in (input.dtype, weight.dtype):
            raise NotImplementedError(LEGACY_ERROR)
        return real_conv3d(input, weight, *args, **kwargs)

    monkeypatch.setattr(F, "conv3d", conv3d)


@pytest.fixture
def mock_cuda(monkeypatch):
    """A CUDA device 0 named like an RTX 2080; call the result with the capability to report."""

    def set_capability(major: int, minor: int, name: str = "NVIDIA GeForce RTX 2080"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.version, "hip", None)

    return set_capability


def test_legacy_device_bf16_forward_fails_without_fallback(legacy_conv3d):
    model = tiny_transformer().to(torch.bfloat16)
    with pytest.raises(NotImplementedError, match="slow_conv3d_forward"):
        run(model, torch.bfloat16)


def test_legacy_device_bf16_forward_with_fallback_matches_fp32(legacy_conv3d):
    reference = run(tiny_transformer(), torch.float32)
    model = tiny_transformer()
    assert apply_conv_fp32(model) == list(PATCH_EMBED_CONVS)
    model.to(torch.bfloat16)
    out = run(model, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape == (1, 16, 3, 8, 8)
    relative = ((out.float() - reference).abs().max() / reference.abs().max()).item()
    assert relative < BF16_REL_TOLERANCE, relative


def test_fallback_is_idempotent(legacy_conv3d):
    model = tiny_transformer().to(torch.bfloat16)
    assert apply_conv_fp32(model) == list(PATCH_EMBED_CONVS)
    first = run(model, torch.bfloat16)
    assert apply_conv_fp32(model) == []
    assert conv_fp32_applied(model)
    assert model._keep_in_fp32_modules == list(PATCH_EMBED_CONVS)
    assert torch.equal(run(model, torch.bfloat16), first)


def test_fp32_conv_casts_noncontiguous_input_and_returns_input_dtype():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 6, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    x = torch.randn(1, 2, 4, 4, 4).permute(0, 3, 1, 2, 4).to(torch.bfloat16)
    assert not x.is_contiguous()
    with torch.no_grad():
        expected = conv(x.float().contiguous()).to(torch.bfloat16)
        conv.__class__ = Fp32Conv3d
        conv.to(torch.bfloat16)
        out = conv(x)
    assert conv.weight.dtype == conv.bias.dtype == torch.float32
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_auto_on_a_device_with_bf16_conv3d_changes_nothing(device, mock_cuda):
    mock_cuda(8, 6, "NVIDIA GeForce RTX 3090")
    auto = tiny_transformer().to(torch.bfloat16)
    off = tiny_transformer().to(torch.bfloat16)
    assert configure_precision(auto, "auto", device, torch.bfloat16) is False
    assert configure_precision(off, "off", device, torch.bfloat16) is False
    assert not conv_fp32_applied(auto)
    assert all(type(auto.get_submodule(n)) is torch.nn.Conv3d for n in PATCH_EMBED_CONVS)
    assert all(p.dtype == torch.bfloat16 for p in auto.parameters())
    assert torch.equal(run(auto, torch.bfloat16), run(off, torch.bfloat16))


def test_only_the_four_convs_change_and_survive_moves_and_loads():
    model = tiny_transformer()
    keys = list(model.state_dict())
    apply_conv_fp32(model)
    fp32_names = {f"{n}.{p}" for n in PATCH_EMBED_CONVS for p in ("weight", "bias")}

    def check(m, dtype):
        for name, param in m.named_parameters():
            assert param.dtype == (torch.float32 if name in fp32_names else dtype), name

    for move in (lambda m: m.to(torch.bfloat16), lambda m: m.to("cpu"), lambda m: m.cpu(),
                 lambda m: m.to("cpu", torch.bfloat16), lambda m: m.bfloat16()):
        move(model)
        check(model, torch.bfloat16)
    model.half()
    check(model, torch.float16)
    model.to(dtype=torch.bfloat16)
    check(model, torch.bfloat16)
    assert model.dtype == torch.bfloat16  # diffusers' dtype skips the fp32 layers

    state = model.state_dict()
    assert list(state) == keys
    assert all(state[k].dtype == torch.float32 for k in fp32_names)

    fresh = tiny_transformer().to(torch.bfloat16)
    apply_conv_fp32(fresh)
    fresh.load_state_dict(state)
    check(fresh, torch.bfloat16)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())

    assigned = tiny_transformer().to(torch.bfloat16)
    apply_conv_fp32(assigned)
    assigned.load_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, assign=True)
    check(assigned, torch.bfloat16)

    plain = tiny_transformer().to(torch.bfloat16)
    plain.load_state_dict(state)  # the saved file loads into a model without the fallback
    assert torch.equal(plain.x_embedder.proj.weight, state["x_embedder.proj.weight"].to(torch.bfloat16))


def test_apply_skips_missing_clean_embedder_and_rejects_other_models():
    model = tiny_transformer(has_clean_x_embedder=False)
    assert apply_conv_fp32(model) == ["x_embedder.proj"]
    assert conv_fp32_applied(model)
    with pytest.raises(InputError, match="patch-embed Conv3d"):
        apply_conv_fp32(torch.nn.Linear(2, 2))


def test_capability_detection(mock_cuda):
    mock_cuda(7, 5)
    needed, reason = conv_fp32_needed("auto", "cuda:0", torch.bfloat16)
    assert needed
    assert "CUDA device 0" in reason and "NVIDIA GeForce RTX 2080" in reason
    assert "compute capability 7.5" in reason
    assert conv_fp32_needed("auto", "cuda", torch.bfloat16)[0]  # current device
    assert not conv_fp32_needed("auto", "cuda:0", torch.float16)[0]
    assert not conv_fp32_needed("off", "cuda:0", torch.bfloat16)[0]
    mock_cuda(8, 6, "NVIDIA GeForce RTX 3090")
    needed, reason = conv_fp32_needed("auto", "cuda:0", torch.bfloat16)
    assert not needed and "8.6" in reason
    assert conv_fp32_needed("force", "cuda:0", torch.bfloat16)[0]


def test_policies_on_cpu():
    assert CONV_FP32_POLICIES == ("auto", "force", "off")
    assert conv_fp32_needed("auto", "cpu", torch.bfloat16) == (False, "the CPU runs bf16 Conv3d")
    assert conv_fp32_needed("force", "cpu", torch.float32)[0]
    assert not conv_fp32_needed("off", torch.device("cpu"), torch.bfloat16)[0]
    for bad in ("AUTO", "on", "", None):
        with pytest.raises(InputError, match="auto, force, off"):
            conv_fp32_needed(bad, "cpu", torch.bfloat16)


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        conv_fp32_needed("auto", "cuda", torch.bfloat16)


def test_probe_decides_on_other_accelerators(legacy_conv3d):
    # "meta" stands in for a non-CUDA accelerator: the probe runs there like on MPS or XPU.
    needed, reason = conv_fp32_needed("auto", "meta", torch.bfloat16)
    assert needed and "meta device" in reason and "slow_conv3d_forward" in reason


def test_probe_passes_where_bf16_conv3d_runs():
    needed, reason = conv_fp32_needed("auto", "meta", torch.bfloat16)
    assert not needed and "probe passed" in reason


def test_probe_reraises_unrelated_errors(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(F, "conv3d", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        conv_fp32_needed("auto", "meta", torch.bfloat16)


def test_configure_logs_one_line_naming_the_device(mock_cuda, caplog):
    mock_cuda(7, 5)
    model = tiny_transformer().to(torch.bfloat16)
    with caplog.at_level(logging.DEBUG, logger="goan"):
        assert configure_precision(model, "auto", "cuda:0", torch.bfloat16) is True
    assert conv_fp32_applied(model)
    records = [r for r in caplog.records if r.name == "goan"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(
        logging.INFO,
        "goan: CUDA device 0 (NVIDIA GeForce RTX 2080, compute capability 7.5) has no bf16 Conv3d; "
        "running the 4 patch-embed Conv3d layers in fp32 (the rest stays bfloat16)",
    )]


def test_configure_reports_an_already_converted_model(caplog):
    model = tiny_transformer()
    apply_conv_fp32(model)
    with caplog.at_level(logging.INFO, logger="goan"):
        assert configure_precision(model, "off", "cpu", torch.bfloat16) is True
    assert [r for r in caplog.records if r.name == "goan"] == []
