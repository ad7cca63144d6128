"""The SuperDiff core: superposed Euler–Maruyama sampling with the Itô density estimator.

Skreta, Atanackovic, Bose, Tong, Neklyudov, "The Superposition of Diffusion Models Using
the Itô Density Estimator", ICLR 2025 (arXiv 2412.17762).

VE ("sigma") form throughout: x_σ = x_0 + σ·ε, a model predicts ε̂(x, σ), the score is
−ε̂/σ. Models are plain callables ``eps = model(x, sigma)``; the core knows nothing of text
encoders or VAEs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .limits import MAX_GUIDANCE, MAX_MAGNITUDE, MAX_STEPS, warn_caller

MODES = ("and", "or", "avg", "fixed")
MAX_PROBES = 1024  # Hutchinson probes per evaluation (all drawn at once); more: the exact divergence

EpsModel = Callable[[Tensor, float], Tensor]


# ----------------------------------------------------------------------------- σ grids


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Tensor:
    """n + 1 geometrically spaced σ from sigma_max down to sigma_min (k-diffusion's exponential)."""
    _check_grid(sigma_max, sigma_min, n)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n + 1, dtype=torch.float64)


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> Tensor:
    """n + 1 σ from Karras et al. (2022), eq. 5: denser near sigma_min."""
    _check_grid(sigma_max, sigma_min, n)
    if not (is_real(rho) and 0 < rho < math.inf):
        raise ValueError(f"rho: expected a finite number > 0 (Karras et al. use 7), got {rho!r}")
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _check_grid(sigma_max: float, sigma_min: float, n: int) -> None:
    values = [v for v in (sigma_max, sigma_min) if not isinstance(v, (bool, np.bool_, str, bytes))]
    try:  # a number, or a one-value tensor or array
        ok = len(values) == 2 and 0 < float(sigma_min) < float(sigma_max) < math.inf
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(
            f"sigma_max, sigma_min: need numbers 0 < sigma_min < sigma_max < inf, got {sigma_max!r}, "
            f"{sigma_min!r}"
        )
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_STEPS:
        raise ValueError(f"n: number of steps must be an integer from 1 to {MAX_STEPS}, got {n!r}")


# ----------------------------------------------------------------------------- predictors


@dataclass
class Prediction:
    """What N models say at (x, σ): ``eps`` for the densities, ``field`` for moving x."""

    eps: Tensor  # (N, B, ...) unguided ε̂_i
    field: Tensor  # (N, B, ...) F_i: ε̂_i, or its classifier-free-guided version


class Predictor:
    """N eps-models evaluated together; subclass it to batch them (one UNet call for all)."""

    num_models: int

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        raise NotImplementedError


def guide(eps: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: F_i = ε̂_∅ + w·(ε̂_i − ε̂_∅)."""
    return eps_uncond + scale * (eps - eps_uncond)


class ModelList(Predictor):
    """A list of eps-models, each called on its own; F_i = ε̂_i (no guidance)."""

    def __init__(self, models: Sequence[EpsModel]):
        if isinstance(models, Predictor):
            raise TypeError("models: already a Predictor")
        models = list(models)
        if not models:
            raise ValueError("models: expected at least one eps-model, got an empty sequence")
        for i, m in enumerate(models):
            if not callable(m):
                raise ValueError(f"models: item {i} is not callable (got {type(m).__name__})")
        self.models = models
        self.num_models = len(models)

    def eps(self, x: Tensor, sigma: float) -> Tensor:
        """Stack ε̂_i(x, σ) into (N, B, ...), checking each matches x's shape."""
        out = []
        for i, m in enumerate(self.models):
            e = m(x, sigma)
            if not isinstance(e, Tensor) or e.shape != x.shape:
                shape = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
                raise ValueError(f"models: model {i} returned {shape} for x of shape {tuple(x.shape)}")
            out.append(e)
        return torch.stack(out)

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        eps = self.eps(x, sigma)
        return Prediction(eps, eps)


class Guided(ModelList):
    """Conditional eps-models with classifier-free guidance against one unconditional model."""

    def __init__(self, models: Sequence[EpsModel], unconditional: EpsModel, guidance_scale: float):
        super().__init__(models)
        if not callable(unconditional):
            raise ValueError("unconditional: expected an eps-model callable")
        if not (is_real(guidance_scale) and 0 <= guidance_scale <= MAX_GUIDANCE):
            raise ValueError(
                f"guidance_scale: expected a number from 0 to {MAX_GUIDANCE:g}, got {guidance_scale!r}"
            )
        self.unconditional = unconditional
        self.guidance_scale = guidance_scale

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        eps = self.eps(x, sigma)
        return Prediction(eps, guide(eps, self.unconditional(x, sigma), self.guidance_scale))


# ----------------------------------------------------------------------------- the math


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """<a_n, b> summed over all dimensions but the batch: (N, B, ...), (B, ...) -> (B, N)."""
    return torch.einsum("nbd,bd->bn", a.flatten(2), b.flatten(1))


def ito_increment(eps: Tensor, dx: Tensor, sigma: float, dsigma: float) -> Tensor:
    """Itô density estimator: Δ log q_i = −<dx, ε̂_i>/σ − (|dσ|/σ)·‖ε̂_i‖²; (B, N)."""
    return -_inner(eps, dx) / sigma - (abs(dsigma) / sigma) * eps.flatten(2).square().sum(-1).T


def gaussian_log_prob(x: Tensor, sigma: float) -> Tensor:
    """log N(x; 0, σ²I) per batch item: the exact start of every density trace."""
    d = x[0].numel()
    return (
        -0.5 * x.flatten(1).square().sum(-1) / sigma**2
        - d * math.log(sigma)
        - 0.5 * d * math.log(2 * math.pi)
    )


def kappa_or(log_q: Tensor, temperature: float, log_weights: Tensor) -> Tensor:
    """OR (mixture): κ = softmax(T·(log q_i + b_i)) over models; (B, N)."""
    return torch.softmax(temperature * (log_q + log_weights), dim=-1)


def and_system(pred: Prediction, sigma: float, dsigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """AND's linear system. The step dx = 2·dσ·Σ_j κ_j F_j + noise makes the Itô increments affine in κ:
    Δ_i = c_i + Σ_j A_ij κ_j. Writing κ = 1/N + (u, −Σu) leaves an (N−1)×(N−1) system G u = r, solved as
    (GᵀG + λI) u = Gᵀr with a tiny ridge λ so that models that agree (G ≈ 0) get κ = 1/N instead of NaN.

    Returns the rows D of Δ_i − Δ_N per κ_j, (B, N−1, N), and G and GᵀG + λI in float64.
    """
    n_models = pred.eps.shape[0]
    A = -(2 * dsigma / sigma) * torch.einsum("ibd,jbd->bij", pred.eps.flatten(2), pred.field.flatten(2))
    D = A[:, :-1] - A[:, -1:]
    G = (D[:, :, :-1] - D[:, :, -1:]).double()
    # |G_ij| <= 4·(2|dσ|/σ)·max‖ε̂‖·max‖F‖: a ridge 1e-6 of that scale only acts where G is degenerate.
    scale = (
        (2 * abs(dsigma) / sigma)
        * pred.eps.flatten(2).norm(dim=-1).amax(0)
        * pred.field.flatten(2).norm(dim=-1).amax(0)
    )
    ridge = (1e-6 * scale.double()).square().clamp_min(torch.finfo(torch.float64).tiny)
    eye = torch.eye(n_models - 1, dtype=torch.float64, device=G.device)
    return D, G, G.transpose(1, 2) @ G + ridge[:, None, None] * eye


def kappa_and(pred: Prediction, noise: Tensor, sigma: float, dsigma: float, target: Tensor) -> Tensor:
    """AND (equal density): κ with Σκ = 1 so that Δ log q_i − Δ log q_N = target_i − target_N; (B, N).

    ``target`` is one value per model, (N,), or per sample and model, (B, N). The system: :func:`and_system`.
    """
    n_models = pred.eps.shape[0]
    c = ito_increment(pred.eps, noise, sigma, dsigma)  # increments of the noise alone
    D, G, normal = and_system(pred, sigma, dsigma)
    r = ((target[..., :-1] - target[..., -1:]) - (c[:, :-1] - c[:, -1:]) - D.sum(-1) / n_models).double()
    # solve_ex without its error check: the ridged system is positive definite, and the check would make
    # the host wait for the GPU at every step
    u = torch.linalg.solve_ex(normal, G.transpose(1, 2) @ r[..., None], check_errors=False).result[..., 0]
    kappa = torch.cat([u, -u.sum(-1, keepdim=True)], dim=-1) + 1.0 / n_models
    return kappa.to(c.dtype)


def predict_with_graph(predictor, x: Tensor, sigma: float) -> tuple[Tensor, Prediction]:
    """(a copy of x that requires grad, the models' prediction there with its autograd graph)."""
    with torch.enable_grad():
        xs = x.detach().clone().requires_grad_(True)  # a clone: x may be an inference tensor
        return xs, _as_predictor(predictor)(xs, sigma)


def curvature_terms(
    predictor, x: Tensor, sigma: float, dsigma: float, pred: Prediction, graph=None
) -> Tensor:
    """|dσ|·tr(J_i (I − QQᵀ)) per model, (B, N): what each Itô increment misses on an AND step.

    AND's κ depends on the step's noise z: r = r₀ + Dᵀz/σ (D: the ε̂_i − ε̂_N), so dx = … + Q z with
    Q = I + (2dσ/σ)·Φ M Dᵀ (Φ: the F_i − F_N; M = (GᵀG + λI)⁻¹Gᵀ, :func:`and_system`), while the estimator
    assumes the noise isotropic; J_i = ∂ε̂_i/∂x. Where the models differ, QQᵀ = I − P (P: the projector on
    the span of D) for any F_i − F_N in that span, as without guidance or with classifier-free guidance;
    where the ridge keeps κ at 1/N, Q ≈ I and the terms ≈ 0 (docs/results-and.md, (f)). One forward with
    autograd and N·K vector–Jacobian products, K = the dimension of span(D, Φ): N − 1 in those cases.
    ``graph``: :func:`predict_with_graph` at (x, σ), if the caller has made that forward already.
    """
    d_eps = (pred.eps[:-1] - pred.eps[-1:]).flatten(2).permute(1, 2, 0).double()  # (B, d, N−1)
    d_field = (pred.field[:-1] - pred.field[-1:]).flatten(2).permute(1, 2, 0).double()
    _, G, normal = and_system(pred, sigma, dsigma)
    M = torch.linalg.solve_ex(normal, G.transpose(1, 2), check_errors=False).result  # u = M r
    U, R = torch.linalg.qr(torch.cat([d_eps, d_field], -1))  # an orthonormal basis of span(D, Φ)
    size = R.diagonal(dim1=-2, dim2=-1).abs()
    U = U[..., (size > 1e-9 * size.amax(-1, keepdim=True)).any(0)]  # the directions some sample has
    n_models, (batch, _, k) = len(pred.eps), U.shape
    if k == 0:  # the models agree everywhere: κ = 1/N, the noise is untouched
        return torch.zeros(batch, n_models, dtype=pred.eps.dtype, device=pred.eps.device)
    b = (2 * dsigma / sigma) * (U.transpose(1, 2) @ d_field) @ M @ (d_eps.transpose(1, 2) @ U)  # UᵀBU
    missing = -(b + b.transpose(1, 2) + b @ b.transpose(1, 2))  # Uᵀ(I − QQᵀ)U, (B, K, K)
    basis = [U[..., j].reshape(x.shape).to(x.dtype) for j in range(k)]
    terms = []
    xs, out = graph if graph is not None else predict_with_graph(predictor, x, sigma)
    with torch.enable_grad():
        for eps_i in out.eps:
            check_differentiable(eps_i, xs)
            vjps = [torch.autograd.grad(eps_i, xs, e, retain_graph=True)[0].flatten(1) for e in basis]
            jac = torch.stack(vjps, 1).double() @ U  # [j, l] = <J_iᵀu_j, u_l> = (UᵀJ_iU)_jl
            terms.append((jac * missing).sum((-2, -1)))  # tr(UᵀJ_iU · missing): missing is symmetric
    return (abs(dsigma) * torch.stack(terms, -1)).to(pred.eps.dtype).detach()


def warn_if_lift_missed(log_q: Tensor, lift: Tensor, n: int, x_dtype: torch.dtype) -> None:
    """AND's traces end at the lift unless its ridge damped κ where the models agree, or x rounds each step
    (float16, bfloat16); warn if they miss, naming the cause."""
    missed = ((log_q[:, :-1] - log_q[:, -1:]) - (lift[:-1] - lift[-1])).abs().max().item()
    rounding = torch.finfo(log_q.dtype).eps * log_q.abs().max().item() * math.sqrt(n)  # float32 on MPS
    if missed > 0.05 + 0.01 * (lift.max() - lift.min()).item() + rounding:
        cause = (
            f"x is {str(x_dtype).removeprefix('torch.')}, to which each step is rounded after κ has balanced "
            "it; keep x in float32 (the models may still run in half precision)"
            if torch.finfo(x_dtype).bits < 32
            else "at some steps the fields F_i that move x nearly agree (within about 0.1 %; guidance_scale "
            "0 makes them equal), where reaching it would move x far, so κ stays near 1/N there"
        )
        warn_caller(
            f"lift: the estimated log q_1 − log q_2 ended up to {missed:.3g} nats from the lift: {cause}",
            RuntimeWarning,
        )


# ----------------------------------------------------------------------------- the sampler


class StopSampling(Exception):
    """Raised by a :func:`superpose` callback: end after this step (the result covers the steps taken)."""


@dataclass
class SuperpositionResult:
    """Samples with the traces that explain them."""

    samples: Tensor  # (B, ...)
    kappa: Tensor  # (n, B, N) mixing weights used at each step
    log_q: Tensor  # (n + 1, B, N) Itô estimates of log q_i along the trajectory (AND: only their differences)
    sigmas: Tensor  # (n + 1,)


def _as_predictor(models) -> Predictor:
    if isinstance(models, Predictor):
        n = getattr(models, "num_models", None)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(
                f"models: a Predictor's num_models must be a positive integer, got {n!r} "
                f"({type(models).__name__})"
            )
        return models
    if isinstance(models, torch.nn.ModuleList):  # callable, but a list of models
        models = list(models)
    if callable(models) and not isinstance(models, Sequence):
        raise ValueError("models: expected a list of eps-model callables (or a Predictor), got one callable")
    if not isinstance(models, Sequence):
        raise ValueError(f"models: expected a list of eps-model callables, got {type(models).__name__}")
    return ModelList(models)


def _check_sigmas(sigmas) -> Tensor:
    expected = f"a 1-D tensor of 2 to {MAX_STEPS + 1} values (n + 1 for n steps)"
    try:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, None
        raise ValueError(f"sigmas: expected {expected}, got {type(sigmas).__name__}") from None
    if sigmas.ndim != 1 or not 2 <= len(sigmas) <= MAX_STEPS + 1:
        raise ValueError(f"sigmas: expected {expected}, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or sigmas[-1] < 0 or sigmas[0] <= 0:
        raise ValueError("sigmas: values must be finite, the first > 0 and the last >= 0")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError("sigmas: must be strictly decreasing (noise level goes down during sampling)")
    positive = sigmas[sigmas > 0]  # beyond, the prior's log N(x; 0, σ²I) and ε̂/σ over- or underflow
    if not (1 / MAX_MAGNITUDE <= positive.min() and positive.max() <= MAX_MAGNITUDE):
        raise ValueError(
            f"sigmas: values other than a last 0 must be from {1 / MAX_MAGNITUDE:g} to {MAX_MAGNITUDE:g}, "
            f"got {positive.max().item():g} … {positive.min().item():g}"
        )
    return sigmas


def _per_model(value, name: str, n_models: int, scalar: bool = True) -> Tensor:
    """One value per model as a float64 vector; a scalar (if allowed) applies to model 1 vs. the rest."""
    finite = f"values within ±{MAX_MAGNITUDE:g}"
    expected = f"a scalar or {n_models} {finite}" if scalar else f"{n_models} {finite}, one per model"
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        if any(isinstance(item, (bool, np.bool_)) for item in items):  # True is not a number here
            raise TypeError
        if getattr(value, "dtype", None) in (torch.bool, np.bool_):  # nor a tensor or array of them
            raise TypeError
        v = torch.as_tensor(value, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, None, True
        raise ValueError(f"{name}: expected {expected}, got {value!r}") from None
    if v.ndim == 0 and scalar:
        v = torch.cat([v[None], torch.zeros(n_models - 1, dtype=torch.float64)])
    if v.shape != (n_models,) or not (v.abs() <= MAX_MAGNITUDE).all():  # NaN fails too
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return v


def is_real(value) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_superpose_args(
    n_models: int, mode: str, lift, temperature: float, log_weights, kappa=None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate the options; returns lift, log_weights and the fixed κ (or None) as per-model vectors."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not (is_real(temperature) and 0 < temperature <= MAX_MAGNITUDE):
        raise ValueError(f"temperature: expected a number > 0 and <= {MAX_MAGNITUDE:g}, got {temperature!r}")
    lift = _per_model(lift, "lift", n_models)
    if log_weights is None:
        log_weights = torch.zeros(n_models, dtype=torch.float64)
    log_weights = _per_model(log_weights, "log_weights", n_models, scalar=False)
    if (mode == "fixed") != (kappa is not None):
        raise ValueError("kappa: give fixed mixing weights exactly when mode='fixed'")
    if kappa is not None:
        kappa = _per_model(kappa, "kappa", n_models, scalar=False)
        if abs(kappa.sum() - 1) > 1e-6:
            raise ValueError(f"kappa: expected {n_models} weights summing to 1, got {kappa.tolist()}")
    return lift, log_weights, kappa


# the one mode each option acts in
OPTION_MODES = {"lift": "and", "temperature": "or", "log_weights": "or", "curvature": "and"}


def warn_ignored(
    mode: str, n_models: int, lift=0.0, temperature=1.0, log_weights=None, curvature: bool = False
) -> None:
    """Warn about options given (away from their defaults) that ``mode`` with ``n_models`` models ignores."""
    given = {
        "lift": bool(torch.as_tensor(lift, dtype=torch.float64).any()),
        "temperature": temperature != 1,
        "log_weights": log_weights is not None
        and bool(torch.as_tensor(log_weights, dtype=torch.float64).any()),
        "curvature": curvature,
    }
    ignored = [name for name, on in given.items() if on and (OPTION_MODES[name] != mode or n_models < 2)]
    if ignored:
        alone = " with one model" if n_models < 2 else ""
        warn_caller(
            f"{', '.join(ignored)}: ignored in mode {mode!r}{alone}; lift and curvature act on AND, "
            "temperature and log_weights on OR, each with 2 or more models"
        )


Generators = torch.Generator | Sequence[torch.Generator] | None


def trace_dtype(device) -> torch.dtype:
    """float64 for κ, log q and the step: log q is of order d (at d = 262 144, SD3's 1024² latents, about
    −1e6 to −3e6, where float32 resolves 0.06 to 0.25 nats), and float32 sums over d lose the small
    differences between prompts that AND solves for. float32 on MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def check_generator(generator, batch: int) -> None:
    """generator: None, a torch.Generator, or a list of ``batch`` of them (one per sample)."""
    many = isinstance(generator, (list, tuple))
    gens = generator if many else [] if generator is None else [generator]
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"generator: expected a torch.Generator or a list of them, got {generator!r}")
    if many and len(generator) != batch:
        raise ValueError(
            f"generator: expected a list of {batch} generators, one per sample, got {len(generator)}"
        )


def check_samples(x, name: str = "x") -> None:
    """x: a finite floating-point tensor (B, ...) with B >= 1 and at least one dimension per sample."""
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{name}: expected a floating-point tensor (B, ...), B >= 1, e.g. (B, 1) for scalars, got {shape}"
        )
    if not x.is_meta and not torch.isfinite(x).all():  # meta tensors (shape-only dry runs) have no values
        raise ValueError(f"{name}: contains NaN or infinite values")


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (seeded = reproducible).

    A list of B generators (diffusers' convention) draws sample i's noise from generator i alone, so a
    sample does not depend on what else is in its batch.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != len(x):
            raise ValueError(f"generator: expected {len(x)} generators, one per sample, got {len(generator)}")
        return torch.cat([randn_like(x[i : i + 1], g) for i, g in enumerate(generator)])
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    if noise.device.type == "cpu" and x.device.type == "cuda":  # a pinned, asynchronous copy: no host wait
        return noise.pin_memory().to(x.device, non_blocking=True)
    return noise.to(x.device)


MAX_TRACE_VALUES = 2**28  # κ and log q keep (n + 1)·B·N values each: at most 2 GiB apiece in float64


def check_trace_size(n: int, batch: int, n_models: int) -> None:
    """κ and log q of n steps, a batch and N models fit in MAX_TRACE_VALUES each; else ValueError."""
    values = (n + 1) * batch * n_models
    if values > MAX_TRACE_VALUES:
        models = f"{n_models} models" if n_models > 1 else "1 model"
        raise ValueError(
            f"x: a batch of {batch} over {n} steps and {models} keeps {values} values of κ and of "
            f"log q, more than {MAX_TRACE_VALUES}; sample in smaller batches or fewer steps"
        )


@torch.no_grad()
def superpose(
    models,
    x: Tensor,
    sigmas,
    *,
    mode: str = "and",
    lift=0.0,
    temperature: float = 1.0,
    log_weights=None,
    generator: Generators = None,
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
    kappa=None,
    curvature: bool = False,
) -> SuperpositionResult:
    """Sample the superposition of N diffusion models (SuperDiff, Skreta et al. 2025, Alg. 1).

    Args:
        models: list of eps-models ``m(x, sigma)``, or a :class:`Predictor` that evaluates them together.
        x: initial noise already scaled by ``sigmas[0]``, shape (B, ...).
        sigmas: decreasing noise levels, n + 1 values (the last may be > 0).
        mode: ``"and"`` (equal density), ``"or"`` (mixture), ``"avg"`` (κ = 1/N baseline) or ``"fixed"``
            (the constant weights ``kappa``; e.g. [1, 0] samples model 1 alone, tracing every density).
        lift: AND only. log q_1 − log q_2 grows by lift/n per step and ends at +lift, so
            ``lift > 0`` favours model 1. A scalar lifts model 1 against all others; a sequence
            gives one value per model (log q_i − log q_j ends at lift_i − lift_j). Where the models' ε̂
            nearly agree (within about 0.1 %) a step cannot lift without moving x far; κ stays near 1/N there,
            and a RuntimeWarning says how far the traces end from the lift.
        temperature: OR only, T in κ = softmax(T·(log q + log_weights)).
        log_weights: OR only, b_i = log w_i per model (default: equal); at T = 1 OR samples
            Σ w_i q_i / Σ w_j, other T scale the prior too.
        generator: torch generator for the step noise, or a list of B (one per sample).
        progress: show a tqdm bar.
        callback: called after every step with ``{"i", "sigma", "sigma_next", "x", "kappa", "log_q"}``: step i
            went from σ = sigma to sigma_next, where x and log q now are (copies: editing them does not
            change the run); raising :class:`StopSampling` ends the run there (σ, κ and log q then cover
            the steps taken).
        kappa: mode "fixed" only, one weight per model, summing to 1.
        curvature: AND only. Add to each Itô increment the term it misses on an AND step, which has no
            noise in the span of the ε̂_i − ε̂_N: |dσ|·tr(P J_i) where the models differ, P the projector
            on that span, and 0 where they agree (:func:`curvature_terms`). AND then holds the true
            densities' changes equal, not only their estimates', and as the steps grow each log q is
            unbiased on its own. Without it AND favours the model whose density is sharper along
            those differences (two Gaussians of std s₁ > s₂: by ≈ ln(s₁/s₂) nats, at any step count; three
            Gaussians of three stds: 1.9× that per pair, docs/results-and.md, (f)). The
            step's forward then runs with autograd, plus N·(N − 1) vector–Jacobian products: about 2.5–3×
            the time of a plain AND step for two models on CPU (benchmarks/bench_curvature.py).

    Returns a :class:`SuperpositionResult`. Under AND, κ is solved after the step's noise is drawn, so it
    can leave [0, 1] and, without ``curvature``, each log q trace drifts by a bias that more steps do not
    remove; it cancels in the traces' differences only where the models' curvatures agree
    (docs/results-and.md, (f)).
    """
    predictor = _as_predictor(models)
    n_models = predictor.num_models
    lift, log_weights, fixed = check_superpose_args(n_models, mode, lift, temperature, log_weights, kappa)
    sigmas = _check_sigmas(sigmas)
    check_samples(x)
    check_generator(generator, len(x))
    if not isinstance(curvature, (bool, np.bool_)):  # a NumPy comparison gives np.bool_
        raise ValueError(f"curvature: expected True or False, got {curvature!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback: expected a function f(state) or None, got {type(callback).__name__}")
    warn_ignored(mode, n_models, lift, temperature, log_weights, curvature)

    n = len(sigmas) - 1
    check_trace_size(n, len(x), n_models)
    lifted = mode == "and" and n_models > 1 and not x.is_meta
    curved = curvature and mode == "and" and n_models > 1
    work = trace_dtype(x.device)
    log_q = gaussian_log_prob(x.to(work), sigmas[0].item())[:, None].repeat(1, n_models)
    lift, log_weights = lift.to(x.device, work), log_weights.to(x.device, work)
    fixed = torch.full((n_models,), 1.0 / n_models) if fixed is None else fixed  # "avg" is "fixed" at 1/N
    fixed = fixed.to(x.device, work).expand_as(log_q)
    # filled in place: a list of steps stacked at the end needed twice the memory (7.5 GB at the limits)
    kappas = torch.empty((n, *log_q.shape), dtype=work, device=x.device)
    log_qs = torch.empty((n + 1, *log_q.shape), dtype=work, device=x.device)
    log_qs[0], taken = log_q, 0
    steps = tqdm(range(n), disable=not progress, desc=f"SuperDiff {mode.upper()}")
    for i in steps:
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        dsigma = sigma_next - sigma
        pred, bend = predict(predictor, x, sigma, dsigma, work, curved)
        noise = math.sqrt(2 * sigma * abs(dsigma)) * randn_like(x, generator).to(work)
        if mode == "or":
            kappa = kappa_or(log_q, temperature, log_weights)
        elif mode == "and" and n_models > 1:
            kappa = kappa_and(pred, noise, sigma, dsigma, lift / n - bend)
        else:
            kappa = fixed
        dx = 2 * dsigma * torch.einsum("bn,nb...->b...", kappa, pred.field) + noise
        x_next = x + dx.to(x.dtype)
        if torch.finfo(x.dtype).bits < 32:  # the step x takes, rounded (bfloat16: the traces were 0.55 off)
            dx = x_next.to(work) - x.to(work)
        log_q = log_q + ito_increment(pred.eps, dx, sigma, dsigma) + bend
        x = x_next
        kappas[i], log_qs[i + 1], taken = kappa, log_q, i + 1
        if callback is not None:
            try:
                # copies: a callback that edits them in place cannot change the run
                state = {"x": x.clone(), "kappa": kappa.clone(), "log_q": log_q.clone()}
                callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, **state})
            except StopSampling:
                break
    steps.close()
    result = SuperpositionResult(x, kappas[:taken], log_qs[: taken + 1], sigmas[: taken + 1])
    if not x.is_meta:
        check_finite_result(result)
    if lifted and taken == n:  # a stopped run is short of its lift by design
        warn_if_lift_missed(log_q, lift, n, x.dtype)
    return result


def predict(
    predictor, x: Tensor, sigma: float, dsigma: float, work, curved: bool
) -> tuple[Prediction, Tensor]:
    """The models' prediction at (x, σ) in the traces' dtype, and AND's curvature terms (0 unless ``curved``)
    from the same forward."""
    graph = predict_with_graph(predictor, x, sigma) if curved else None
    raw = graph[1] if curved else predictor(x, sigma)
    check_prediction(raw, x, predictor.num_models)
    pred = Prediction(raw.eps.detach().to(work), raw.field.detach().to(work))
    bend = (
        curvature_terms(predictor, x, sigma, dsigma, pred, graph) if curved else torch.zeros((), dtype=work)
    )
    return pred, bend


def check_prediction(raw, x: Tensor, n_models: int) -> None:
    """A Predictor's output is a Prediction of eps and field, each (N, *x.shape); else a ValueError (a
    broadcastable shape would otherwise give wrong κ and log q without an error)."""
    expected = (n_models, *x.shape)
    if not isinstance(raw, Prediction):
        raise ValueError(
            f"models: the Predictor returned {type(raw).__name__}, expected a Prediction(eps, field)"
        )
    for name in ("eps", "field"):
        value = getattr(raw, name)
        if not isinstance(value, Tensor) or value.shape != expected:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"models: the Predictor's {name} is {got}, expected (num_models, *x.shape) = {expected}"
            )


class NonFiniteError(ValueError):
    """Sampling produced NaN or ±inf: a model returned them, or a weight or scale overflowed."""


def check_finite_result(result: SuperpositionResult) -> None:
    """κ, log q and samples of a run are finite; else NonFiniteError (instead of black images and NaN κ)."""
    for name, values in (("kappa", result.kappa), ("log_q", result.log_q), ("samples", result.samples)):
        bad = ~torch.isfinite(values)
        if bad.any():
            first = int(bad.flatten(1).any(1).nonzero()[0]) - (name == "log_q")  # log_q[0] is the start
            where = "" if name == "samples" else f" from step {first} (the callback's i)"
            raise NonFiniteError(
                f"{name}: sampling produced NaN or infinite values{where}; a model returned them, or lift, "
                "temperature, log_weights or guidance_scale is too large"
            )


# ----------------------------------------------------------------------------- the costly baseline


@dataclass
class FlowResult:
    """Probability-flow ODE samples with their log-density trace and cost."""

    samples: Tensor  # (B, ...)
    log_q: Tensor  # (n + 1, B)
    sigmas: Tensor
    model_calls: int  # cost in network passes: a forward and a backward per probe, however batched


MAX_PROBE_ROWS = 8192  # rows of one batched divergence forward (probes × batch) ...
MAX_PROBE_VALUES = 2**24  # ... and their values (rows × d): together they bound its memory
MAX_EXACT_DIM = 4096  # the exact divergence costs d vector–Jacobian products a sample: beyond, probes
MAX_PROBE_TOTAL = 2**28  # probes × values of x, all drawn at once (1 GiB in float32)


def divergence(model: EpsModel, x: Tensor, sigma: float, probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """(ε̂, ∇·ε̂): Hutchinson's mean of vᵀ(∂ε̂/∂x)v over probes (k, B, ...), or exact (probes=None).

    Exact is the sum of the same quadratic form over the d coordinate directions. Each chunk of probes is
    one forward on copies of x stacked along the batch and one backward: row j·B + b holds probe j's
    vector–Jacobian product for sample b, as an eps-model treats batch items independently.
    """
    exact = probes is None
    quad = []
    with torch.enable_grad():
        rows = min(MAX_PROBE_ROWS, MAX_PROBE_VALUES // x[0].numel())
        for v in _probe_chunks(x, probes, max(1, rows // len(x))):
            v = v.reshape(-1, *x.shape[1:])
            xs = x.detach().repeat(len(v) // len(x), *([1] * (x.ndim - 1))).requires_grad_(True)
            out = model(xs, sigma)
            check_differentiable(out, xs)
            (vjp,) = torch.autograd.grad(out, xs, v)
            quad.append((vjp * v).flatten(1).sum(-1, dtype=wide(x.dtype)).reshape(-1, len(x)))
    div = torch.cat(quad).sum(0) if exact else torch.cat(quad).mean(0)
    return out[: len(x)].detach(), div.detach()


def check_differentiable(out, x: Tensor) -> None:
    """The model's ε̂ is a tensor shaped like its input that autograd can differentiate; else ValueError."""
    if not isinstance(out, Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model: expected ε̂ shaped like its input x {tuple(x.shape)}, got {shape}")
    if not out.requires_grad:
        raise ValueError(
            "model: its ε̂ carries no gradient (computed under torch.no_grad(), or detached); the divergence "
            "and AND's curvature terms need autograd through the model"
        )


def _probe_chunks(x: Tensor, probes: Tensor | None, k: int):
    """The probes k at a time; None: the d coordinate directions, made one chunk at a time."""
    if probes is not None:
        yield from probes.split(k)
        return
    d = x[0].numel()
    for start in range(0, d, k):
        basis = torch.eye(d, dtype=x.dtype, device=x.device)[start : start + k]
        yield basis.reshape(-1, 1, *x.shape[1:]).expand(-1, *x.shape)


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sums over a sample's dimensions: float32 or wider (float16's largest value is 65 504)."""
    return torch.promote_types(dtype, torch.float32)


def probes_for(x: Tensor, hutchinson: int | None, generator: Generators) -> Tensor | None:
    """Rademacher probes (k, B, ...) for Hutchinson's estimator, or None for the exact divergence.

    A list of B generators draws sample i's k probes from generator i, as :func:`randn_like` its noise.
    """
    if hutchinson is None:
        return None
    if isinstance(generator, (list, tuple)):
        return torch.cat([probes_for(x[i : i + 1], hutchinson, g) for i, g in enumerate(generator)], dim=1)
    return randn_like(x[None].expand(hutchinson, *x.shape), generator).sign()


def check_divergence(hutchinson, x: Tensor) -> None:
    """hutchinson: None (exact, for d <= MAX_EXACT_DIM values a sample) or 1 to MAX_PROBES probes."""
    _check_hutchinson(hutchinson)
    if hutchinson is None and isinstance(x, Tensor) and x.ndim >= 2 and x[0].numel() > MAX_EXACT_DIM:
        raise ValueError(
            f"hutchinson: the exact divergence (None) takes samples of at most {MAX_EXACT_DIM} values, x has "
            f"{x[0].numel()}; pass hutchinson=k for k Rademacher probes"
        )
    if hutchinson is not None and isinstance(x, Tensor) and hutchinson * x.numel() > MAX_PROBE_TOTAL:
        raise ValueError(
            f"hutchinson: {hutchinson} probes of x's {x.numel()} values exceed {MAX_PROBE_TOTAL} values "
            "drawn at once; pass fewer probes or a smaller batch"
        )


def _check_hutchinson(hutchinson) -> None:
    if hutchinson is not None and (
        isinstance(hutchinson, bool)
        or not isinstance(hutchinson, numbers.Integral)
        or not 1 <= hutchinson <= MAX_PROBES
    ):
        raise ValueError(
            f"hutchinson: expected None (exact divergence) or an integer from 1 to {MAX_PROBES}, "
            f"got {hutchinson!r}"
        )


def check_likelihood_args(model) -> None:
    """One differentiable eps-model, outside inference mode; else ValueError."""
    if not callable(model) or isinstance(model, (list, tuple, torch.nn.ModuleList)):
        raise ValueError(
            "model: expected one eps-model callable m(x, sigma) (one density at a time), got "
            f"{type(model).__name__}"
        )
    if torch.is_inference_mode_enabled():
        raise ValueError("model: the divergence needs autograd; call this outside torch.inference_mode()")


def probability_flow(
    model: EpsModel,
    x: Tensor,
    sigmas,
    *,
    hutchinson: int | None = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> FlowResult:
    """Euler on the probability-flow ODE dx/dσ = ε̂ with d log q/dσ = −∇·ε̂ (the paper's costly baseline).

    ``hutchinson``: number of Rademacher probes per step, or None for the exact divergence.
    """
    sigmas = _check_sigmas(sigmas)
    check_samples(x)  # before check_divergence, which reads x[0]
    check_divergence(hutchinson, x)
    check_likelihood_args(model)
    check_generator(generator, len(x))
    check_trace_size(len(sigmas) - 1, len(x), 1)
    log_q = gaussian_log_prob(x.to(wide(x.dtype)), sigmas[0].item())
    log_qs, calls = [log_q], 0
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="PF-ODE"):
        sigma, dsigma = sigmas[i].item(), (sigmas[i + 1] - sigmas[i]).item()
        probes = probes_for(x, hutchinson, generator)
        eps, div = divergence(model, x, sigma, probes)
        calls += 2 * (x[0].numel() if probes is None else len(probes))  # ε̂ is the first copy's forward
        x = x + dsigma * eps
        log_q = log_q - dsigma * div
        log_qs.append(log_q)
    log_qs = torch.stack(log_qs)
    check_finite_flow(log_q=log_qs, samples=x)
    return FlowResult(x, log_qs, sigmas, calls)


def check_finite_flow(**values: Tensor) -> None:
    """The PF-ODE's results are finite; else NonFiniteError naming the first that is not."""
    for name, value in values.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(
                f"{name}: NaN or infinite; the model returned NaN or inf, or its output overflowed"
            )


def _heun_step(model: EpsModel, x: Tensor, s: float, s_next: float, hutchinson, generator):
    """One Heun step of dx/dσ = ε̂ from s to s_next, with the trapezoid ∫ ∇·ε̂ dσ over it."""
    h = s_next - s
    eps, div = divergence(model, x, s, probes_for(x, hutchinson, generator))
    eps_end, div_end = divergence(model, x + h * eps, s_next, probes_for(x, hutchinson, generator))
    return x + 0.5 * h * (eps + eps_end), 0.5 * h * (div + div_end)


def log_likelihood(
    model: EpsModel,
    x: Tensor,
    sigmas,
    *,
    hutchinson: int | None = None,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """log q(x) at noise σ = sigmas[-1] by the probability-flow ODE, independent of the Itô estimator; (B,).

    Integrates dx/dσ = ε̂(x, σ) and d log q/dσ = −∇·ε̂ back up the sampler's decreasing grid, from
    sigmas[-1] to sigmas[0], with Heun steps (two model calls per step), and adds the exact Gaussian
    log N(x; 0, sigmas[0]²·I) at the top. ``hutchinson=k``: k Rademacher probes per evaluation instead
    of the exact divergence (d vector–Jacobian products, batched). The model sees x in its dtype; log q is
    summed in float32 or wider (float64 x gives float64 answers).
    """
    sigmas = _check_sigmas(sigmas)
    if sigmas[-1] <= 0:
        raise ValueError(
            "sigmas: the last value must be > 0 (the likelihood is evaluated at noise sigmas[-1])"
        )
    check_samples(x)  # before check_divergence, which reads x[0]
    check_divergence(hutchinson, x)
    check_likelihood_args(model)
    check_generator(generator, len(x))
    up = sigmas.flip(0).tolist()
    delta = torch.zeros(len(x), dtype=wide(x.dtype), device=x.device)  # ∫ ∇·ε̂ dσ, sigmas[-1] to sigmas[0]
    for s, s_next in tqdm(
        zip(up[:-1], up[1:], strict=True), total=len(up) - 1, disable=not progress, desc="likelihood"
    ):
        x, d_delta = _heun_step(model, x, s, s_next, hutchinson, generator)
        delta = delta + d_delta
    log_q = gaussian_log_prob(x.to(delta.dtype), up[-1]) + delta
    check_finite_flow(log_q=log_q)
    return log_q
