"""The independent likelihood (PF-ODE, Heun) and the full-covariance mixture, against exact densities."""

import math

import pytest
import torch

from superdiff import geometric_sigmas, log_likelihood
from superdiff._torch import gen
from superdiff.sampling import divergence
from superdiff.toy import FullGaussianMixture, GaussianMixture, up_and_down

UP, _ = up_and_down()


def random_mixture(d: int, k: int = 2, seed: int = 0) -> FullGaussianMixture:
    """k Gaussians in d dimensions with random means (norm 2) and random, non-diagonal covariances."""
    g = gen(seed)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    means = 2.0 * means / means.norm(dim=-1, keepdim=True)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return FullGaussianMixture(means, 0.2 * a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64))


@pytest.mark.parametrize(
    ("model", "d"), [(UP, 2), (GaussianMixture(torch.zeros(1, 64), 0.4), 64), (None, 64)]
)
def test_log_likelihood_matches_exact_log_density_at_100_heun_steps(model, d):
    model = model if model is not None else random_mixture(d)
    sigmas = geometric_sigmas(20.0, 0.01, 100)
    x = model.sample(64, 0.01, generator=gen(1))
    error = log_likelihood(model, x, sigmas) - model.log_prob(x, 0.01)
    assert error.abs().median() <= 0.3
    assert error.dtype == torch.float64 and error.shape == (64,)


def test_log_likelihood_of_float16_samples_is_finite_and_summed_in_float32():
    """log q of a 1024-d sample is of order 1e3 and ‖x‖² at σ = 20 of order 4e5: past float16's 65 504."""
    model, sigmas = GaussianMixture(torch.zeros(1, 1024), 0.4), geometric_sigmas(20.0, 0.05, 20)
    x = model.sample(2, 0.05, generator=gen(0))
    half = log_likelihood(model, x.half(), sigmas, hutchinson=1, generator=gen(1))
    full = log_likelihood(model, x.float(), sigmas, hutchinson=1, generator=gen(1))
    assert half.dtype == full.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=1.0, rtol=0)


def test_log_likelihood_with_one_generator_per_sample_is_the_samples_own():
    """As in superpose: sample i's probes come from generator i, whatever else is in the batch."""
    model, sigmas = GaussianMixture(torch.zeros(1, 16), 0.4), geometric_sigmas(20.0, 0.05, 10)
    x = model.sample(3, 0.05, generator=gen(0))
    batch = log_likelihood(model, x, sigmas, hutchinson=4, generator=[gen(10 + i) for i in range(3)])
    alone = [
        log_likelihood(model, x[i : i + 1], sigmas, hutchinson=4, generator=[gen(10 + i)]) for i in range(3)
    ]
    torch.testing.assert_close(batch, torch.cat(alone))
    with pytest.raises(ValueError, match="generator: expected a list of 3 generators, one per sample, got 4"):
        log_likelihood(model, x, sigmas, hutchinson=4, generator=[gen(i) for i in range(4)])


def test_log_likelihood_converges_with_heun_steps():
    model, x = random_mixture(16), None
    x = model.sample(32, 0.01, generator=gen(2))
    errors = [
        (log_likelihood(model, x, geometric_sigmas(20.0, 0.01, n)) - model.log_prob(x, 0.01)).abs().median()
        for n in (10, 40)
    ]
    assert errors[1] < errors[0] / 8  # second order: 4× the steps, ≈ 16× smaller error (Euler: ≈ 4×)


def test_hutchinson_mean_matches_exact_within_its_standard_error():
    model = random_mixture(8)  # a non-diagonal Jacobian: each probe gives a different answer
    sigmas = geometric_sigmas(20.0, 0.01, 20)
    x = model.sample(6, 0.01, generator=gen(3))
    exact = log_likelihood(model, x, sigmas)
    runs = torch.stack(
        [log_likelihood(model, x, sigmas, hutchinson=2, generator=gen(10 + r)) for r in range(24)]
    )
    se = runs.std(0) / math.sqrt(len(runs))
    assert (runs.std(0) > 1e-3).all()
    assert ((runs.mean(0) - exact).abs() < 4 * se).all()


def test_divergence_is_the_jacobian_trace_in_chunks(monkeypatch):
    model = random_mixture(5)
    x = torch.randn(7, 5, generator=gen(4), dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None], 0.3)[0]))(x)
    monkeypatch.setattr("superdiff.sampling.MAX_PROBE_ROWS", 14)  # 2 probes per chunk, 3 chunks
    eps, div = divergence(model, x, 0.3, None)
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(-1))
    torch.testing.assert_close(eps, model(x, 0.3))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"hutchinson": 0}, "hutchinson"),
        ({"hutchinson": 1.5}, "hutchinson"),
        ({"hutchinson": True}, "hutchinson"),
        ({"sigmas": torch.tensor([2.0, 1.0, 0.0])}, "sigmas"),
        ({"sigmas": torch.tensor([1.0, 2.0])}, "sigmas"),
        ({"sigmas": [1e300, 1.0]}, "^sigmas: values other than a last 0"),  # was an OverflowError
        ({"x": torch.zeros(3)}, "x"),
        ({"x": torch.zeros(3, 2, dtype=torch.long)}, "x"),
        ({"x": torch.zeros(0, 2)}, r"^x: expected .* B >= 1"),  # was an IndexError
    ],
)
def test_log_likelihood_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"x": torch.zeros(3, 2), "sigmas": geometric_sigmas(20, 0.01, 5)} | kwargs
    with pytest.raises(ValueError, match=name):
        log_likelihood(UP, args.pop("x"), args.pop("sigmas"), **args)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            [UP, UP],
            "model: expected one eps-model callable m\\(x, sigma\\) \\(one density at a time\\), got list",
        ),
        (torch.no_grad()(UP), "model: its ε̂ carries no gradient \\(computed under torch.no_grad"),
        (lambda x, s: UP(x, s)[:, :1], r"model: expected ε̂ shaped like its input x \(\d+, 2\), got"),
        (lambda x, s: UP(x, s) * math.nan, "log_q: NaN or infinite; the model returned NaN"),
    ],
)
def test_a_model_log_likelihood_cannot_differentiate_is_named(model, message):
    with pytest.raises(ValueError, match=message):
        log_likelihood(model, torch.zeros(3, 2), geometric_sigmas(20, 0.01, 5))


def test_log_likelihood_refuses_inference_mode_and_huge_probe_counts():
    with torch.inference_mode(), pytest.raises(ValueError, match="outside torch.inference_mode"):
        log_likelihood(UP, torch.zeros(3, 2), geometric_sigmas(20, 0.01, 5))
    with pytest.raises(
        ValueError, match="hutchinson: expected None .* or an integer from 1 to 1024, got 10000000000000"
    ):
        log_likelihood(UP, torch.zeros(3, 2), geometric_sigmas(20, 0.01, 5), hutchinson=10**13)


def test_full_mixture_is_exact():
    model = random_mixture(3, k=2, seed=5)
    model.weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x = torch.randn(10, 3, generator=gen(6), dtype=torch.float64, requires_grad=True)
    sigma = 0.7
    cov = model.eigvecs @ torch.diag_embed(model.eigvals + sigma**2) @ model.eigvecs.transpose(1, 2)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(model.weights),
        torch.distributions.MultivariateNormal(model.means, covariance_matrix=cov),
    )
    torch.testing.assert_close(model.log_prob(x, sigma), ref.log_prob(x))
    (grad,) = torch.autograd.grad(ref.log_prob(x).sum(), x)
    torch.testing.assert_close(model.score(x, sigma), grad)
    samples = model.sample(20000, sigma, generator=gen(7))
    second = (model.weights[:, None, None] * (cov + model.means[:, :, None] * model.means[:, None, :])).sum(0)
    torch.testing.assert_close(samples.mean(0), ref.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), second - ref.mean[:, None] * ref.mean, atol=0.06, rtol=0)


def test_full_mixture_with_isotropic_covariances_is_the_isotropic_mixture():
    means = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    full = FullGaussianMixture(means, 0.4**2 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    iso = GaussianMixture(means, 0.4)
    x = torch.randn(8, 3, generator=gen(8), dtype=torch.float64)
    torch.testing.assert_close(full.log_prob(x, 1.3), iso.log_prob(x, 1.3))
    torch.testing.assert_close(full(x, 1.3), iso(x, 1.3))


def test_a_rank_deficient_covariance_is_positive_semi_definite():
    v = torch.randn(5, generator=gen(9), dtype=torch.float64)
    flat = FullGaussianMixture(torch.zeros(1, 5, dtype=torch.float64), (v[:, None] * v[None])[None])
    assert (flat.eigvals >= 0).all() and flat.eigvals[0, -1] == pytest.approx(v.square().sum())
    x = torch.randn(4, 5, generator=gen(10), dtype=torch.float64)
    assert torch.isfinite(flat.log_prob(x, 0.5)).all()  # σ > 0 makes it a proper density


@pytest.mark.parametrize("std", ["1", True, torch.tensor([1.0, 2.0]), 0.0])
def test_a_mixtures_std_is_one_positive_number(std):
    with pytest.raises(ValueError, match="std: expected a finite number > 0"):
        GaussianMixture(torch.zeros(1, 2), std)


@pytest.mark.parametrize("sigma", [-0.5, math.nan, math.inf, torch.tensor([0.5, -0.5])])
@pytest.mark.parametrize("use", ["eps", "log_prob", "score", "sample"])
def test_a_mixtures_noise_level_is_finite_and_non_negative(sigma, use):
    calls = {"eps": UP, "log_prob": UP.log_prob, "score": UP.score, "sample": lambda x, s: UP.sample(2, s)}
    with pytest.raises(ValueError, match="sigma: expected finite noise levels >= 0"):
        calls[use](torch.zeros(2, 2), sigma)


def test_one_point_is_asked_for_as_a_batch():
    with pytest.raises(
        ValueError, match=r"x: expected a batch \(B, 2\) \(one point: x\[None\]\), got \(2,\)"
    ):
        UP.log_prob(torch.zeros(2), 1.0)


@pytest.mark.parametrize(
    ("means", "covs", "name"),
    [
        (torch.zeros(2, 3), torch.eye(3).expand(3, 3, 3), "covariances"),
        (torch.zeros(1, 2), -torch.eye(2)[None], "covariances"),
        (torch.zeros(3), torch.eye(3)[None], "means"),
        (torch.tensor([[0.0, math.nan]]), torch.eye(2)[None], "means: expected finite"),
        (torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]), "covariances: expected symmetric"),
    ],
)
def test_full_mixture_bad_arguments(means, covs, name):
    with pytest.raises(ValueError, match=name):
        FullGaussianMixture(means, covs)
    if name.startswith("means"):
        with pytest.raises(ValueError, match=name):
            GaussianMixture(means, 0.4)


@pytest.mark.parametrize(
    ("n", "sigma", "message"),
    [
        (0, 0.0, "n: expected an integer from 1 to 10000000, got 0"),
        (2.5, 0.0, "n: expected an integer from 1 to 10000000, got 2.5"),
        (True, 0.0, "n: expected an integer"),
        (3, torch.tensor([0.5, 0.5, 0.5]), "sigma: expected one noise level for the n samples"),
    ],
)
def test_a_mixture_refuses_to_sample_what_it_cannot(n, sigma, message):
    with pytest.raises(ValueError, match=message):
        UP.sample(n, sigma)
