"""The score Fokker–Planck equation of VE noise, and how far an ε-model is from obeying it.

VE noise x_σ = x₀ + σ·ε makes the noised densities solve ∂_σ q = σ·Δq, so their score s = ∇ log q_σ obeys

    ∂_σ s = σ·∇(∇·s + ‖s‖²)                                   (the score Fokker–Planck equation)

(Lai et al., "FP-Diffusion", ICML 2023, written here in σ). The Itô density estimator is exact only for an
ε̂ = −σ·s that obeys it; denoising score matching alone does not enforce it. Its residual, scaled by σ² to
the size of an ε error, is a diagnostic and a training regulariser (``superdiff.digits.train --variant
fokker_planck``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd import grad

from ._torch import math_attention
from .sampling import Generators, _check_hutchinson, probes_for

MAX_EXACT_DIM = 4096  # the exact divergence stacks D copies of each sample through the model: beyond, probes


def score_fpe_residual(
    eps_model: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigma: Tensor,
    *,
    hutchinson: int | None = None,
    generator: Generators = None,
) -> Tensor:
    """σ²·(∂_σ s − σ·∇(∇·s + ‖s‖²)) for s = −ε̂/σ at x (B, ...), σ (B,); zero for exact scores.

    The divergence is exact (D Jacobian rows, one batched pass; D ≤ 4096), or Hutchinson's estimate from
    ``hutchinson`` = k Rademacher probes (for latents: k model rows a sample): the residual is then an
    unbiased estimate, its square is not (the probes' variance adds to it). The graph is kept for training.
    """
    _check_hutchinson(hutchinson)
    b, shape = x.shape[0], x.shape[1:]
    d = shape.numel()
    if hutchinson is None and d > MAX_EXACT_DIM:
        raise ValueError(
            f"x: {d} dimensions a sample; exact divergence takes at most {MAX_EXACT_DIM}: pass hutchinson=k"
        )
    x = x.detach().requires_grad_(True)
    sigma = sigma.detach().to(x.dtype).requires_grad_(True)
    if hutchinson is None:  # the coordinate directions: D copies of each x, one per Jacobian row
        probes = torch.eye(d, dtype=x.dtype, device=x.device).reshape(1, d, *shape).expand(b, d, *shape)
    else:
        probes = probes_for(x, hutchinson, generator).transpose(0, 1)  # (B, k, ...)
    m = probes.shape[1]
    rows = x[:, None].expand(b, m, *shape).reshape(b * m, *shape)
    row_sigma = sigma.repeat_interleave(m)
    with math_attention():  # a UNet's attention: its backward must be differentiable again
        eps = eps_model(rows, row_sigma)
    s = (-eps / row_sigma.view(-1, *[1] * len(shape))).reshape(b, m, *shape)
    (jv,) = grad((s * probes).sum(), rows, create_graph=True)  # per row: vᵀ ∂s/∂x
    divergence = (jv.reshape(b, m, *shape) * probes).flatten(2).sum((1, 2))
    if hutchinson is not None:
        divergence = divergence / m
    s0 = s[:, 0]
    (grad_g,) = grad((divergence + s0.square().flatten(1).sum(1)).sum(), x, create_graph=True)
    w = torch.zeros_like(s0, requires_grad=True)  # ∂_σ s as the derivative of a VJP in w (double-VJP trick)
    (ds_w,) = grad((s0 * w).sum(), sigma, create_graph=True)
    (ds_dsigma,) = grad(ds_w.sum(), w, create_graph=True)
    sigma = sigma.view(-1, *[1] * len(shape))
    return sigma**2 * (ds_dsigma - sigma * grad_g)
