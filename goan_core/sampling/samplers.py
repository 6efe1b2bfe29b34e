"""Flow-matching samplers written as single steps over explicit state.

A denoiser `D(x, sigma)` returns the data prediction x0 for a latent `x = (1 - sigma) x0 + sigma e`.
Each `*_step` function takes the state a sampler needs (the latent, the step index, the history of
data predictions) and returns the new state, so a section can stop after any step and continue
later from a saved copy with identical results.

UniPC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models") in its data-prediction form with B(h) = h ("bh1"), written for flow matching:
with lambda = -log(sigma) the exact solution of the probability-flow ODE is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) dlambda,

and the first-order term gives x_t = (sigma_t/sigma_s) x_s + (1 - sigma_t/sigma_s) x0_s, exact for a
constant x0. Higher orders use divided differences of earlier predictions (the predictor, UniP) and
the prediction at the new point (the corrector, UniC). The order ramps up 1, 2, 3 as predictions
accumulate and is capped at min(3, steps - 1). Following FramePack, step i evaluates the model at
sigma_i (i = 0 .. steps-1) and the section's result is the data prediction of the last step, so the
model is never called at sigma = 0.

Euler: x_{i+1} = x0 + (sigma_{i+1}/sigma_i) (x_i - x0), the first-order step on the same ODE; its
result is the latent at sigma = 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .state import SamplerState

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
MAX_UNIPC_ORDER = 3


def unipc_order(steps: int) -> int:
    """Highest order UniPC reaches for a schedule of `steps` steps."""
    return max(min(MAX_UNIPC_ORDER, steps - 1), 1)


def history_length(sampler: str, steps: int) -> int:
    """How many data predictions a sampler keeps between steps."""
    return unipc_order(steps) if sampler == "unipc" else 0


def _phi_coefficients(hh: float, order: int) -> list[float]:
    """b_k = k! * phi_{k+1}(hh) / B(hh) for k = 1..order, with B(hh) = hh (bh1).

    phi_1(hh) = (e^hh - 1)/hh and phi_{k+1}(hh) = (phi_k(hh) - 1/k!)/hh.
    """
    coefficients = []
    phi = math.expm1(hh) / hh - 1.0  # phi_2 * hh shifted as in the UniPC recursion
    factorial = 1.0
    for k in range(1, order + 1):
        coefficients.append(phi * factorial / hh)
        factorial *= k + 1
        phi = phi / hh - 1.0 / factorial
    return coefficients


def _solve(ratios: list[float], rhs: list[float]) -> list[float]:
    """Solve sum_j ratios[j]^(i) * rho_j = rhs[i] (a small Vandermonde system) in float64."""
    n = len(ratios)
    matrix = torch.tensor([[r ** i for r in ratios] for i in range(n)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(rhs, dtype=torch.float64)).tolist()


def unipc_step(denoise: Denoiser, state: SamplerState, sigmas: torch.Tensor, max_order: int) -> SamplerState:
    """One UniPC-bh1 step: from `state` (after `state.step` steps) to the state after one more.

    Step 0 only evaluates the model at sigma_0. Step i >= 1 predicts x at sigma_i from x at
    sigma_{i-1} and the stored predictions, evaluates the model there, and corrects.
    """
    i = state.step
    if i == 0:
        return SamplerState(state.x, 1, [denoise(state.x, float(sigmas[0]))])

    outputs = state.model_outputs
    order = min(i, max_order, len(outputs))
    sigma_s, sigma_t = float(sigmas[i - 1]), float(sigmas[i])
    lambda_s = -math.log(sigma_s)
    h = -math.log(sigma_t) - lambda_s
    hh = -h  # data prediction form

    m_s = outputs[-1]
    ratios, differences = [], []
    for k in range(1, order):
        r = (-math.log(float(sigmas[i - 1 - k])) - lambda_s) / h
        ratios.append(r)
        differences.append((outputs[-1 - k] - m_s) / r)

    b = _phi_coefficients(hh, order)
    base = (sigma_t / sigma_s) * state.x - math.expm1(hh) * m_s

    x_pred = base
    if differences:
        rho_p = [0.5] if order == 2 else _solve(ratios, b[:-1])
        x_pred = base - hh * sum(rho * d for rho, d in zip(rho_p, differences))

    m_t = denoise(x_pred, sigma_t)
    rho_c = [0.5] if order == 1 else _solve(ratios + [1.0], b)
    correction = rho_c[-1] * (m_t - m_s)
    for rho, d in zip(rho_c[:-1], differences):
        correction = correction + rho * d
    x_t = base - hh * correction

    return SamplerState(x_t, i + 1, (outputs + [m_t])[-max_order:])


def unipc_result(state: SamplerState) -> torch.Tensor:
    """The clean latent of a finished UniPC section: the last data prediction."""
    return state.model_outputs[-1]


def euler_step(denoise: Denoiser, state: SamplerState, sigmas: torch.Tensor) -> SamplerState:
    """One Euler step of the flow ODE from sigma_i to sigma_{i+1}."""
    i = state.step
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    x0 = denoise(state.x, sigma)
    return SamplerState(x0 + (sigma_next / sigma) * (state.x - x0), i + 1, [])


def sampler_step(name: str, denoise: Denoiser, state: SamplerState, sigmas: torch.Tensor) -> SamplerState:
    """Advance `state` by one step of the named sampler ("unipc" or "euler")."""
    steps = len(sigmas) - 1
    if name == "unipc":
        return unipc_step(denoise, state, sigmas, unipc_order(steps))
    return euler_step(denoise, state, sigmas)


def sampler_result(name: str, state: SamplerState) -> torch.Tensor:
    """The clean latent once all steps of a section are done."""
    return unipc_result(state) if name == "unipc" else state.x
