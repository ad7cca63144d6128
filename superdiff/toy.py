"""Toy models with exact answers: VE-noised Gaussian mixtures, and a small MLP eps-model trained on them."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._torch import gen
from .pipeline_common import check_int

MAX_SAMPLES = 10_000_000  # exact samples a call: 160 MB of float64 in 2-D


def _noise_level(sigma, x: Tensor) -> Tensor:
    """σ as a tensor in x's dtype, finite and >= 0 (a negative σ would flip ε̂ = −σ·score); else ValueError."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if not bool(((s >= 0) & (s < math.inf)).all()):
        raise ValueError(f"sigma: expected finite noise levels >= 0, got {sigma!r}")
    return s


def _sigma2(sigma, x: Tensor) -> Tensor:
    """σ² in x's dtype: a scalar, or (B, 1) for one σ per sample (then differentiable in σ)."""
    s = _noise_level(sigma, x)
    return s.square() if s.ndim == 0 else s.reshape(-1, 1).square()


class _VEMixture:
    """A mixture of Gaussians under VE noise, q_σ = Σ_k w_k N(μ_k, Σ_k + σ²·I): exact log q, score and ε̂.

    Inputs may have any shape (B, ...); they are flattened to (B, D) and answers keep x's shape and dtype.
    σ is a number or a tensor of one σ per sample (B,).
    """

    means: Tensor  # (K, D) float64
    weights: Tensor  # (K,)

    def _set_means(self, means) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2 or len(self.means) < 1 or not torch.isfinite(self.means).all():
            raise ValueError(
                f"means: expected finite values of shape (K, D), K >= 1, got {tuple(self.means.shape)}"
            )

    def _set_weights(self, weights) -> None:
        k = len(self.means)
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
        w = w.to(torch.float64)
        if w.shape != (k,) or (w < 0).any() or not torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype)):
            raise ValueError(f"weights: expected {k} non-negative values summing to 1, got {weights!r}")
        self.weights = w

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """log w_k + log N_k(x) (B, K) and ∇_x log N_k(x) (B, K, D), for flat x (B, D)."""
        raise NotImplementedError

    def _flat(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a batch (B, {self.dim}) (one point: x[None]), got {shape}")
        x = x.flatten(1)
        if x.shape[1] != self.dim:
            raise ValueError(f"x: expected {self.dim} values per sample, got {x.shape[1]}")
        return x.to(torch.float64)

    def log_prob(self, x: Tensor, sigma: float) -> Tensor:
        """Exact log q_σ(x); (B,), in x's dtype or float32 if narrower (bfloat16 rounds −130 by up to 0.5)."""
        log_n, _ = self._components(self._flat(x), sigma)
        return torch.logsumexp(log_n, dim=-1).to(torch.promote_types(x.dtype, torch.float32))

    def score(self, x: Tensor, sigma: float) -> Tensor:
        """Exact ∇_x log q_σ(x), shaped like x."""
        log_n, grads = self._components(self._flat(x), sigma)
        resp = torch.softmax(log_n, dim=-1)
        return (resp[..., None] * grads).sum(1).reshape(x.shape).to(x.dtype)

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """ε̂(x, σ) = −σ·score: what a perfectly trained model predicts."""
        if isinstance(sigma, Tensor) and sigma.ndim:  # one σ per sample
            return -sigma.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) * self.score(x, sigma)
        return -float(sigma) * self.score(x, sigma)

    def sample(self, n: int, sigma: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of q_σ, flat (n, D), float64."""
        check_int("n", n, 1, high=MAX_SAMPLES)
        if _noise_level(sigma, self.means).ndim:
            raise ValueError(f"sigma: expected one noise level for the n samples, got {sigma!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self._noise_of(k, z, sigma)

    def _noise_of(self, k: Tensor, z: Tensor, sigma: float) -> Tensor:
        """(Σ_k + σ²I)^{1/2} z for each sample's component k."""
        raise NotImplementedError


class GaussianMixture(_VEMixture):
    """Mixture of isotropic Gaussians under VE noise, exactly: q_σ = Σ_k w_k N(μ_k, (std² + σ²)·I).

    Callable as an eps-model ``m(x, sigma)``; ``log_prob`` and ``score`` are exact.
    """

    def __init__(self, means, std: float, weights=None):
        self._set_means(means)
        if isinstance(std, bool) or not isinstance(std, numbers.Real) or not 0 < std < math.inf:
            raise ValueError(f"std: expected a finite number > 0, got {std!r}")
        self.std = float(std)
        self._set_weights(weights)

    def _components(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        var = self.std**2 + _sigma2(sigma, x)  # () or (B, 1)
        diff = x[:, None, :] - self.means.to(x)[None]
        log_n = -0.5 * diff.square().sum(-1) / var - 0.5 * self.dim * (2 * math.pi * var).log()
        return log_n + self.weights.to(x).log(), -diff / var[..., None]

    def _noise_of(self, k: Tensor, z: Tensor, sigma: float) -> Tensor:
        return math.sqrt(self.std**2 + float(sigma) ** 2) * z


class FullGaussianMixture(_VEMixture):
    """Mixture of Gaussians with full covariances Σ_k under VE noise: q_σ = Σ_k w_k N(μ_k, Σ_k + σ²·I).

    Exact at every σ (noise only adds σ² to each eigenvalue of Σ_k), so its ε̂ is the score of densities
    that obey the noising process's Fokker–Planck equation — the Itô estimator's assumption.
    """

    def __init__(self, means, covariances, weights=None):
        self._set_means(means)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        k, d = self.means.shape
        if cov.shape != (k, d, d) or not torch.isfinite(cov).all():
            raise ValueError(f"covariances: expected finite shape {(k, d, d)}, got {tuple(cov.shape)}")
        if (cov - cov.transpose(1, 2)).abs().max() > 1e-6 * cov.abs().max():  # float32 rounding passes
            raise ValueError("covariances: expected symmetric matrices")
        eigvals, self.eigvecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(1, 2)))
        rounding = 1e-10 * eigvals.abs().amax(-1, keepdim=True)  # eigh leaves a rank-deficient Σ's zeros ≈ ±ε
        if (eigvals < -rounding).any():
            raise ValueError("covariances: expected positive semi-definite matrices")
        self.eigvals = eigvals.clamp_min(0)
        self._set_weights(weights)

    def _components(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        lam = self.eigvals + _sigma2(sigma, x)[..., None]  # (K, D) or (B, K, D): eigenvalues of Σ_k + σ²I
        proj = torch.einsum("kdj,bkd->bkj", self.eigvecs, x[:, None, :] - self.means[None])  # Uᵀ(x − μ_k)
        log_n = -0.5 * (proj.square() / lam).sum(-1) - 0.5 * (
            lam.log().sum(-1) + self.dim * math.log(2 * math.pi)
        )
        grads = -torch.einsum("kdj,bkj->bkd", self.eigvecs, proj / lam)
        return log_n + self.weights.log(), grads

    def _noise_of(self, k: Tensor, z: Tensor, sigma: float) -> Tensor:
        lam = (self.eigvals[k] + float(sigma) ** 2).sqrt()
        return torch.einsum("bdj,bj->bd", self.eigvecs[k], lam * z)


def up_and_down(std: float = 0.4, dim: int = 2, seed: int = 0) -> tuple[GaussianMixture, GaussianMixture]:
    """The paper's Fig. 2 toy: "up" has modes (±1.5, 1.5), "down" has modes (±1.5, −1.5).

    ``dim`` > 2: the same toy in ``dim`` dimensions, four random modes of the same norm 1.5·√2 (seeded).
    """
    check_int("dim", dim, 2)
    if dim == 2:
        means = torch.tensor([[[-1.5, 1.5], [1.5, 1.5]], [[-1.5, -1.5], [1.5, -1.5]]], dtype=torch.float64)
    else:
        means = torch.randn(2, 2, dim, generator=gen(1000 + seed), dtype=torch.float64)
        means = 1.5 * math.sqrt(2) * means / means.norm(dim=-1, keepdim=True)
    return GaussianMixture(means[0], std), GaussianMixture(means[1], std)


class MLPEps(nn.Module):
    """A small eps-model for low-dimensional data: ε̂ = net(x/√(σ² + σ_data²), log σ)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, sigma_data: float = 1.5):
        super().__init__()
        layers, width = [], dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma) -> Tensor:
        h = x.to(self.net[0].weight.dtype)  # runs in its own precision, answers in x's
        sigma = torch.as_tensor(sigma, dtype=h.dtype, device=h.device).expand(h.shape[0])
        c_in = (sigma.square() + self.sigma_data**2).rsqrt()
        return self.net(torch.cat([h * c_in[:, None], sigma.log()[:, None] / 4], dim=-1)).to(x.dtype)


def check_training(data, sigma_min, sigma_max, steps, batch_size, lr, seed) -> None:
    """train_eps_model's arguments, before any work; ValueError naming the first bad one."""
    if not isinstance(data, Tensor) or data.ndim != 2 or len(data) < 2:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data: expected samples of shape (N, D) with N >= 2, got {shape}")
    if not torch.isfinite(data).all():
        raise ValueError("data: contains NaN or infinite values")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (sigma_min, sigma_max, lr)):
        raise ValueError(
            f"sigma_min, sigma_max, lr: expected numbers, got {sigma_min!r}, {sigma_max!r}, {lr!r}"
        )
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(
            f"sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}"
        )
    check_int("steps", steps, 1, high=1_000_000)
    check_int("batch_size", batch_size, 1, high=1_000_000)
    if not 0 < lr < math.inf:
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr!r}")
    if isinstance(seed, bool) or not (isinstance(seed, numbers.Integral) and 0 <= seed <= 2**32 - 1):
        raise ValueError(f"seed: expected an integer from 0 to 2**32 − 1, got {seed!r}")


def train_eps_model(
    data: Tensor,
    *,
    sigma_min: float = 0.01,
    sigma_max: float = 20.0,
    steps: int = 3000,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> MLPEps:
    """Denoising score matching on (N, D) samples with σ log-uniform in [sigma_min, sigma_max]."""
    check_training(data, sigma_min, sigma_max, steps, batch_size, lr, seed)
    g = gen(seed)
    data = data.float()
    with torch.random.fork_rng(devices=[]):  # the initial weights from the seed; the global RNG untouched
        torch.manual_seed(seed)
        model = MLPEps(dim=data.shape[1], sigma_data=float(data.std()))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    bar = tqdm(range(steps), disable=not progress, desc="train eps-model")
    for _ in bar:
        x0 = data[torch.randint(len(data), (batch_size,), generator=g)]
        sigma = (lo + (hi - lo) * torch.rand(batch_size, generator=g)).exp()
        eps = torch.randn(x0.shape, generator=g)
        loss = (model(x0 + sigma[:, None] * eps, sigma) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval().requires_grad_(False)


class FlowGaussianMixture:
    """Mixture of isotropic Gaussians under rectified-flow noise x_t = (1 − t)·x₀ + t·ε, exactly.

    p_t = Σ_k w_k N((1 − t)·μ_k, ((1 − t)²·std² + t²)·I). Callable as a velocity model ``v = m(x_t, t)``:
    the flow-matching target E[ε − x₀ | x_t]. Computed in flow coordinates, independently of superdiff.flow.
    Inputs may have any shape (B, ...); answers keep x's shape and dtype.
    """

    def __init__(self, means, std: float, weights=None):
        mix = GaussianMixture(means, std, weights)  # validates means, std and weights
        self.means, self.std, self.weights = mix.means, mix.std, mix.weights
        self._flat = mix._flat

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _check_t(self, t) -> float:
        t = float(t)
        if not 0 <= t <= 1:
            raise ValueError(f"t: expected a flow time in [0, 1], got {t!r}")
        return t

    def _components(self, x: Tensor, t: float) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k + log N_k(x_t) (B, K), x_t − (1 − t)μ_k (B, K, D) and the variances V_k, for flat x."""
        a = 1 - t
        var = a**2 * self.std**2 + t**2
        diff = x[:, None, :] - a * self.means[None]
        log_n = -0.5 * diff.square().sum(-1) / var - 0.5 * self.dim * math.log(2 * math.pi * var)
        return log_n + self.weights.log(), diff, var

    def log_prob(self, x: Tensor, t: float) -> Tensor:
        """Exact log p_t(x_t); (B,), in x's dtype or float32 if narrower."""
        log_n, _, _ = self._components(self._flat(x), self._check_t(t))
        return torch.logsumexp(log_n, dim=-1).to(torch.promote_types(x.dtype, torch.float32))

    def score(self, x: Tensor, t: float) -> Tensor:
        """Exact ∇ log p_t(x_t), shaped like x."""
        log_n, diff, var = self._components(self._flat(x), self._check_t(t))
        resp = torch.softmax(log_n, dim=-1)
        return (-(resp[..., None] * diff).sum(1) / var).reshape(x.shape).to(x.dtype)

    def __call__(self, x: Tensor, t: float) -> Tensor:
        """v(x_t, t) = E[ε − x₀ | x_t]: what a perfectly trained flow-matching model predicts (t = 1 too).

        Per component, E[ε | x_t, k] = t·r_k/V and E[x₀ | x_t, k] = μ_k + (1 − t)·std²·r_k/V with
        r_k = x_t − (1 − t)μ_k, V = (1 − t)²·std² + t²; for t < 1 the mixture's v is −(x_t + t·score)/(1 − t).
        """
        t = self._check_t(t)
        log_n, diff, var = self._components(self._flat(x), t)
        resp = torch.softmax(log_n, dim=-1)
        v_k = (t - (1 - t) * self.std**2) * diff / var - self.means[None]
        return (resp[..., None] * v_k).sum(1).reshape(x.shape).to(x.dtype)

    def sample(self, n: int, t: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of p_t, x_t = (1 − t)·x₀ + t·ε, flat (n, D), float64."""
        t = self._check_t(t)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x0 = self.means[k] + self.std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (1 - t) * x0 + t * eps


def flow_up_and_down(
    std: float = 0.4, dim: int = 2, seed: int = 0
) -> tuple[FlowGaussianMixture, FlowGaussianMixture]:
    """:func:`up_and_down`'s "up" and "down" toy (same modes, same data) as exact flow-matching models."""
    up, down = up_and_down(std, dim=dim, seed=seed)
    return FlowGaussianMixture(up.means, std), FlowGaussianMixture(down.means, std)
