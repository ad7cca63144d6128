"""Flow matching (SD3, Flux) in the core's VE coordinates, without touching the core's math.

The rectified-flow interpolant x_t = (1 − t)·x₀ + t·ε with a network predicting the velocity v = ε − x₀ is
the VE process y = x₀ + σ·ε seen in other coordinates:

    y = x_t / (1 − t),   σ = t / (1 − t),   ε̂ = x_t + (1 − t)·v,

and back: t = σ / (1 + σ), x_t = y / (1 + σ). t = 1 is σ = ∞, so a chain starts at a finite σ_max.

Densities: y = x_t / (1 − t) is a linear map, so p_t(x_t) = q_σ(y)·(1 + σ)^d, i.e.
log p_t(x_t) = log q_σ(y) + d·log(1 + σ). That term is the same for every model, so κ (OR's softmax is
shift-invariant, AND equates differences) is the same in either coordinate system.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

FALLBACK_SIGMA_MAX = 100.0  # σ_max of grids too short to extrapolate (t = 0.990)
VelocityModel = Callable[[Tensor, float], Tensor]  # v = model(x_t, t)


def sigma_of_t(t):
    """σ = t/(1 − t): the VE noise level of flow time t (∞ at t = 1)."""
    return t / (1 - t)


def t_of_sigma(sigma):
    """t = σ/(1 + σ): the flow time of VE noise level σ."""
    return sigma / (1 + sigma)


def eps_from_velocity(v: Tensor, x_t: Tensor, t: float) -> Tensor:
    """ε̂ = x_t + (1 − t)·v: a velocity prediction v = ε − x₀ as the ε of the VE process."""
    return x_t + (1 - t) * v


def log_prob_flow(log_q_ve: Tensor, sigma: float, dim: int) -> Tensor:
    """log p_t(x_t) = log q_σ(y) + d·log(1 + σ): a VE log density in flow coordinates (same σ, t)."""
    return log_q_ve + dim * math.log1p(sigma)


class VelocityEps:
    """A velocity model ``v = model(x_t, t)`` as the core's eps-model ``ε̂(y, σ)`` (σ > 0, finite)."""

    def __init__(self, model: VelocityModel):
        if not callable(model):
            raise ValueError(f"model: expected a velocity callable v = model(x_t, t), got {model!r}")
        self.model = model

    def __call__(self, y: Tensor, sigma: float) -> Tensor:
        if not 0 < float(sigma) < math.inf:
            raise ValueError(f"sigma: expected a finite noise level > 0, got {sigma!r}")
        t = t_of_sigma(float(sigma))
        x_t = y / (1 + sigma)
        return eps_from_velocity(self.model(x_t, t), x_t, t)


def flow_sigmas(ts) -> Tensor:
    """VE σ of a decreasing flow-time grid (float64), with t = 1 (σ = ∞) moved to a finite σ_max.

    σ_max keeps the grid's own log-spacing: σ_0 = σ_1²/σ_2, one more step of the ratio that follows it.
    Where the grid has no two positive σ after t = 1 (1 or 2 steps), σ_0 = FALLBACK_SIGMA_MAX (t ≈ 0.99),
    or 2·σ_1 where that is larger.

    Shifted flow grids (SD3's shift = 3) are uniform in t near t = 1, so their first σ-ratios are 2, 2, 1.5, …
    at any n: Euler–Maruyama there adds an error to every absolute Itô trace (≈ 3 nats per dimension that
    more steps do not remove; on a geometric σ grid it shrinks with the steps, to 0.03 per dimension at
    1000) that all models share, so trace differences and κ stay exact.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu()
    if ts.ndim != 1 or len(ts) < 2 or not ((ts >= 0) & (ts <= 1)).all():
        raise ValueError(f"ts: expected a 1-D grid of at least 2 flow times in [0, 1], got {ts.tolist()}")
    if not (ts[1:] < ts[:-1]).all():
        i = int((ts[1:] >= ts[:-1]).nonzero()[0])
        raise ValueError(
            f"ts: flow times must be strictly decreasing (t goes 1 → 0), got t[{i}] = {ts[i].item()}, "
            f"t[{i + 1}] = {ts[i + 1].item()}"
        )
    sigmas = sigma_of_t(ts)  # t = 1 gives inf
    if torch.isfinite(sigmas[0]):
        return sigmas
    rest = sigmas[1:]
    if len(rest) >= 2 and rest[1] > 0:
        start = rest[0] ** 2 / rest[1]
    else:  # never at or below σ_1 (a grid such as [1, 0.995, 0] has σ_1 = 199)
        start = max(FALLBACK_SIGMA_MAX, 2 * rest[0].item())
    return torch.cat([torch.as_tensor(start, dtype=torch.float64).reshape(1), rest])
