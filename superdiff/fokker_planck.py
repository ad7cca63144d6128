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


def score_fpe_residual(eps_model: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor) -> Tensor:
    """σ²·(∂_σ s − σ·∇(∇·s + ‖s‖²)) for s = −ε̂/σ at flat x (B, D), σ (B,); zero for exact scores.

    Exact divergence (D Jacobian rows, one batched pass); the result keeps its graph, so it can be trained on.
    """
    b, d = x.shape
    x = x.detach().requires_grad_(True)
    sigma = sigma.detach().to(x.dtype).requires_grad_(True)
    rows = x[:, None, :].expand(b, d, d).reshape(b * d, d)  # D copies of each x: one per Jacobian row
    s = (-eps_model(rows, sigma.repeat_interleave(d)) / sigma.repeat_interleave(d)[:, None]).reshape(b, d, d)
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(b, d, d)
    (jac,) = grad((s * eye).sum(), rows, create_graph=True)  # row i of copy i: e_iᵀ ∂s/∂x
    divergence = (jac.reshape(b, d, d) * eye).sum((1, 2))
    s0 = s[:, 0]
    (grad_g,) = grad((divergence + s0.square().sum(1)).sum(), x, create_graph=True)
    w = torch.zeros_like(s0, requires_grad=True)  # ∂_σ s as the derivative of a VJP in w (double-VJP trick)
    (ds_w,) = grad((s0 * w).sum(), sigma, create_graph=True)
    (ds_dsigma,) = grad(ds_w.sum(), w, create_graph=True)
    return sigma[:, None] ** 2 * (ds_dsigma - sigma[:, None] * grad_g)
