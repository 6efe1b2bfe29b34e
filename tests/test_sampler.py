"""The samplers on velocity fields with known exact solutions; determinism; stepping == running."""

import math

import pytest
import torch

from goan_core.sampling.samplers import sampler_result, sampler_step, unipc_order
from goan_core.sampling.schedule import shift_mu, sigma_schedule, time_shift
from goan_core.sampling.state import SamplerState

MU, S = 0.7, 0.5  # data ~ N(MU, S^2) per element


def gaussian_denoiser(x, sigma):
    """Exact E[x0 | x_sigma] for x_sigma = (1-sigma) x0 + sigma e, x0 ~ N(MU, S^2)."""
    a = 1.0 - sigma
    var = a * a * S * S + sigma * sigma
    return MU + a * S * S / var * (x - a * MU)


def exact_x0_prediction(z, sigma):
    """What the exact ODE path gives the denoiser at sigma: x_sigma keeps its standard score z."""
    a = 1.0 - sigma
    x = a * MU + math.sqrt(a * a * S * S + sigma * sigma) * z
    return gaussian_denoiser(x, sigma)


def run(name, denoise, x, sigmas):
    state = SamplerState(x, 0, [])
    while state.step < len(sigmas) - 1:
        state = sampler_step(name, denoise, state, sigmas)
    return sampler_result(name, state)


def test_schedule_shape_and_shift():
    sigmas = sigma_schedule(25, (1, 16, 9, 60, 104))
    assert sigmas.shape == (26,) and sigmas[0] == 1 and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert shift_mu(9 * 30 * 52) == pytest.approx(math.log(7.0))  # capped at common sizes
    assert time_shift(0.5, math.log(7.0)) == pytest.approx(7 / 8)


def test_constant_data_is_exact():
    target = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    x = torch.randn(target.shape, generator=torch.Generator().manual_seed(4))
    sigmas = sigma_schedule(8, target.shape)
    for name in ("unipc", "euler"):
        assert torch.allclose(run(name, lambda x, s: target, x, sigmas), target, atol=1e-6)


def exact_latent(z, sigma):
    a = 1.0 - sigma
    return a * MU + math.sqrt(a * a * S * S + sigma * sigma) * z


@pytest.mark.parametrize("name,min_ratio", [("unipc", 6.0), ("euler", 1.9)])
def test_gaussian_converges_at_the_methods_order(name, min_ratio):
    """Uniform steps in lambda = -log(sigma) from 1 to 0.01: UniPC-3 is third order, Euler first.

    For Gaussian data the exact ODE path keeps every element's standard score z, so the latent at
    the last nonzero sigma is known in closed form.
    """
    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (8, 16, 32, 64):
        sigmas = torch.cat([torch.exp(torch.linspace(0, math.log(0.01), steps, dtype=torch.float64)),
                            torch.zeros(1, dtype=torch.float64)])
        state = SamplerState(z.clone(), 0, [])
        while state.step < steps - 1:
            state = sampler_step(name, gaussian_denoiser, state, sigmas)
        last = float(sigmas[-2])
        if name == "unipc":  # UniPC's x at step k is the corrected latent at sigma_{k-1}
            state = sampler_step(name, gaussian_denoiser, state, sigmas)
            got, expected = sampler_result(name, state), exact_x0_prediction(z, last)
        else:
            got, expected = state.x, exact_latent(z, last)
        errors.append((got - expected).abs().max().item())
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(r > min_ratio for r in ratios), (errors, ratios)
    assert errors[-1] < (1e-4 if name == "unipc" else 0.06)


def test_unipc_order_ramp():
    assert [unipc_order(s) for s in (1, 2, 3, 4, 25)] == [1, 1, 2, 3, 3]


@pytest.mark.parametrize("name", ["unipc", "euler"])
def test_deterministic_and_stepwise_equals_through(name):
    x = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    sigmas = sigma_schedule(10, x.shape)
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(6)) * 0.1

    def denoise(v, sigma):  # a nonlinear field, so the history matters
        return torch.tanh(torch.einsum("ij,bjthw->bithw", weight, v)) * (1 - sigma)

    first = run(name, denoise, x, sigmas)
    assert torch.equal(first, run(name, denoise, x, sigmas))
    # stop after every step, copy the state as a saved file would, and continue
    state = SamplerState(x, 0, [])
    while state.step < 10:
        state = sampler_step(name, denoise, state, sigmas)
        state = state.clone()
    assert torch.equal(sampler_result(name, state), first)
