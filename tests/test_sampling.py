"""The SuperDiff core against exact answers: Gaussian mixtures give exact scores and log-densities."""

import math

import numpy as np
import pytest
import torch

from superdiff import (
    Guided,
    ModelList,
    NonFiniteError,
    Prediction,
    Predictor,
    curvature_terms,
    geometric_sigmas,
    kappa_and,
    karras_sigmas,
    superpose,
)
from superdiff.sampling import ito_increment, probability_flow, trace_dtype
from superdiff.toy import GaussianMixture, up_and_down

UP, DOWN = up_and_down()
SIGMA_MAX, SIGMA_MIN = 20.0, 0.01


def run(models, n=1000, batch=1000, seed=0, **kw):
    """superpose on the paper's toy grid, float64, seeded."""
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, n)
    g = torch.Generator().manual_seed(seed)
    x = sigmas[0] * torch.randn(batch, 2, generator=g, dtype=torch.float64)
    return superpose(models, x, sigmas, generator=g, **kw)


def exact_gap(samples):
    return UP.log_prob(samples, SIGMA_MIN) - DOWN.log_prob(samples, SIGMA_MIN)


def estimator_error(n):
    r = run([UP], n=n, batch=500)
    return (r.log_q[-1, :, 0] - UP.log_prob(r.samples, SIGMA_MIN)).abs().median().item()


def test_ito_estimate_matches_exact_log_density_and_converges():
    errors = [estimator_error(n) for n in (100, 1000, 4000)]
    assert errors[1] < 0.35
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("mode", ["and", "or", "avg"])
def test_every_trace_starts_at_the_exact_prior_log_density(mode):
    """log_q[0] = log N(x; 0, σ_0² I) for every model: an off-by-one σ there hides in the estimator noise."""
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 10)
    x = sigmas[0] * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prior = -0.5 * (x**2).sum(-1) / SIGMA_MAX**2 - math.log(2 * math.pi * SIGMA_MAX**2)  # d = 2
    log_q = run([UP, DOWN], n=10, batch=50, mode=mode).log_q[0]
    torch.testing.assert_close(log_q, prior[:, None].expand(50, 2), rtol=1e-12, atol=1e-12)


def test_ito_trace_tracks_exact_density_at_every_step():
    xs = []
    r = run([UP], n=1000, batch=200, callback=lambda step: xs.append(step["x"]))
    exact = torch.stack([UP.log_prob(x, s) for x, s in zip(xs, r.sigmas[1:].tolist(), strict=True)])
    assert (r.log_q[1:, :, 0] - exact).abs().median(dim=1).values.max() < 0.35


def test_and_follows_the_lift_schedule_at_every_step():
    lift, n = 4.0, 1000
    r = run([UP, DOWN], n=n, mode="and", lift=lift)
    gap = r.log_q[..., 0] - r.log_q[..., 1]
    schedule = torch.arange(n + 1, dtype=torch.float64)[:, None] * lift / n
    torch.testing.assert_close(gap, schedule.expand_as(gap), atol=1e-6, rtol=0)


def test_and_reaches_equal_exact_density_while_averaging_does_not():
    assert exact_gap(run([UP, DOWN], mode="and").samples).abs().median() < 0.3
    assert exact_gap(run([UP, DOWN], mode="avg").samples).abs().median() > 3


def test_positive_lift_favours_model_one_by_the_lift():
    gap = exact_gap(run([UP, DOWN], mode="and", lift=4.0).samples).median()
    assert abs(gap - 4.0) < 0.5
    gap_neg = exact_gap(run([UP, DOWN], mode="and", lift=-4.0).samples).median()
    assert abs(gap_neg + 4.0) < 0.5


def test_or_splits_samples_between_the_models():
    up_share = (run([UP, DOWN], mode="or", n=500).samples[:, 1] > 0).double().mean()
    assert 0.44 < up_share < 0.56


def test_or_log_weights_and_temperature_shift_the_split():
    b = [math.log(0.7), math.log(0.3)]
    share = {
        t: (run([UP, DOWN], mode="or", n=500, log_weights=b, temperature=t).samples[:, 1] > 0)
        .double()
        .mean()
        .item()
        for t in (0.5, 1.0, 2.0)
    }
    assert abs(share[1.0] - 0.7) < 0.06  # T = 1 with log prior weights samples the weighted mixture
    assert share[0.5] < share[1.0] < share[2.0]  # higher T sharpens the prior's preference


def test_or_kappa_is_softmax_of_the_traces_before_each_step():
    b = torch.tensor([0.3, -0.2], dtype=torch.float64)
    r = run([UP, DOWN], mode="or", n=50, batch=20, temperature=1.7, log_weights=b)
    torch.testing.assert_close(r.kappa, torch.softmax(1.7 * (r.log_q[:-1] + b), dim=-1))


def test_three_model_and_keeps_all_traces_equal():
    side = GaussianMixture([[0.0, 0.0], [3.0, 0.0]], 0.4)
    r = run([UP, DOWN, side], n=300, batch=200, mode="and")
    torch.testing.assert_close(r.log_q[..., 0], r.log_q[..., 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.log_q[..., 0], r.log_q[..., 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.kappa.sum(-1), torch.ones_like(r.kappa[..., 0]))


def test_three_model_lift_vector_sets_pairwise_gaps():
    side = GaussianMixture([[0.0, 0.0], [3.0, 0.0]], 0.4)
    r = run([UP, DOWN, side], n=200, batch=50, mode="and", lift=[1.0, -0.5, 0.0])
    torch.testing.assert_close(
        r.log_q[-1, :, 0] - r.log_q[-1, :, 1], torch.full((50,), 1.5, dtype=torch.float64)
    )
    torch.testing.assert_close(
        r.log_q[-1, :, 1] - r.log_q[-1, :, 2], torch.full((50,), -0.5, dtype=torch.float64)
    )


def test_fixed_kappa_follows_one_model_and_traces_every_density():
    alone = run([UP], n=200, batch=100)
    followed = run([UP, DOWN], n=200, batch=100, mode="fixed", kappa=[1.0, 0.0])
    torch.testing.assert_close(followed.samples, alone.samples)
    torch.testing.assert_close(followed.log_q[..., 0], alone.log_q[..., 0])
    assert (followed.log_q[-1, :, 1] < followed.log_q[-1, :, 0] - 10).all()  # "down" finds them unlikely
    torch.testing.assert_close(
        followed.kappa, torch.tensor([1.0, 0.0], dtype=torch.float64).expand_as(followed.kappa)
    )


def test_same_seed_same_samples_different_seed_different():
    a, b, c = (run([UP, DOWN], n=50, batch=10, seed=s).samples for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_identical_models_give_finite_uniform_kappa(dtype):
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 100)
    x = sigmas[0].to(dtype) * torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    r = superpose([UP, UP], x, sigmas, mode="and", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(r.samples).all() and torch.isfinite(r.log_q).all()
    torch.testing.assert_close(r.kappa, torch.full_like(r.kappa, 0.5))


def test_kappa_and_solves_the_equal_increment_equation():
    g = torch.Generator().manual_seed(0)
    eps, field = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    noise, sigma, dsigma = 0.1 * torch.randn(4, 5, generator=g), 2.0, -0.05
    per_model = torch.tensor([0.2, -0.1, 0.0])
    per_sample = torch.randn(4, 3, generator=g)  # (B, N): a target of its own for each sample
    for target in (per_model, per_sample):
        kappa = kappa_and(Prediction(eps, field), noise, sigma, dsigma, target)
        dx = 2 * dsigma * torch.einsum("bn,nbd->bd", kappa, field) + noise
        inc = ito_increment(eps, dx, sigma, dsigma)
        expected = (target - target[..., -1:]).expand(4, 3)
        torch.testing.assert_close(inc - inc[:, -1:], expected, atol=1e-4, rtol=0)


def test_guidance_moves_x_with_guided_field_and_scores_densities_unguided():
    uncond = GaussianMixture([[0.0, 0.0]], 2.0)
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 200)
    x = sigmas[0] * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = superpose([UP, DOWN], x, sigmas, mode="or", generator=torch.Generator().manual_seed(1))
    same = superpose(
        Guided([UP, DOWN], uncond, 1.0), x, sigmas, mode="or", generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(same.samples, plain.samples)  # w = 1 is no guidance
    r = superpose(
        Guided([UP, DOWN], uncond, 3.0),
        x,
        sigmas,
        mode="and",
        lift=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    assert not torch.allclose(r.samples, plain.samples)
    torch.testing.assert_close(r.log_q[-1, :, 0] - r.log_q[-1, :, 1], torch.ones(100, dtype=torch.float64))


def test_pf_ode_exact_divergence_matches_exact_log_density():
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 1000)
    x = sigmas[0] * torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = probability_flow(UP, x, sigmas, hutchinson=None)
    assert (r.log_q[-1] - UP.log_prob(r.samples, SIGMA_MIN)).abs().median() < 0.35
    assert r.model_calls == 1000 * 4  # per step and dimension, a forward of a copy of x and a backward


def test_hutchinson_divergence_is_unbiased():
    from superdiff.sampling import divergence

    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, exact = divergence(UP, x, 0.7, None)
    probes = torch.randn(4000, 8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64).sign()
    _, estimate = divergence(UP, x, 0.7, probes)
    torch.testing.assert_close(estimate, exact, atol=0.05 * exact.abs().max().item(), rtol=0)


def test_exact_divergence_runs_in_chunks_of_bounded_size_with_the_same_answer(monkeypatch):
    from superdiff import sampling

    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = []

    def model(x, sigma):
        rows.append(len(x))
        return UP(x, sigma)

    _, whole = sampling.divergence(model, x, 0.7, None)
    monkeypatch.setattr(sampling, "MAX_PROBE_VALUES", 6)  # 3 rows of 2 values: one sample's direction a call
    rows.clear()
    _, chunked = sampling.divergence(model, x, 0.7, None)
    assert rows == [3, 3] and torch.allclose(chunked, whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("likelihood", ["probability_flow", "log_likelihood"])
def test_a_divergence_past_its_bounds_is_refused_before_any_model_call(likelihood):
    from superdiff import sampling

    def model(x, sigma):
        pytest.fail("the model was called")

    run = getattr(sampling, likelihood)
    sigmas = geometric_sigmas(20, 0.01, 2)
    with pytest.raises(ValueError, match="at most 4096 values, x has 16384; pass hutchinson=k"):
        run(model, torch.zeros(1, 4, 64, 64), sigmas, hutchinson=None)
    with pytest.raises(ValueError, match="hutchinson: 1024 probes of x's 4194304 values exceed 268435456"):
        run(model, torch.zeros(256, 4, 64, 64), sigmas, hutchinson=1024)


@pytest.mark.parametrize("hutchinson", [None, 1])
@pytest.mark.parametrize("scale", [math.nan, 1e38])
def test_the_pf_ode_names_nan_and_overflow_as_superpose_does(hutchinson, scale):
    """probability_flow returned log q = [nan, nan, nan] (and inf for an overflowing model) silently."""
    model = lambda x, sigma: UP(x, sigma) * scale  # noqa: E731
    with pytest.raises(NonFiniteError, match="^log_q: NaN or infinite; the model returned NaN"):
        probability_flow(model, 10 * torch.randn(3, 2), geometric_sigmas(10, 0.01, 5), hutchinson=hutchinson)
    with pytest.raises(ValueError, match=r"^x: expected .* B >= 1"):  # was an IndexError
        probability_flow(UP, torch.zeros(0, 2), geometric_sigmas(10, 0.01, 5), hutchinson=hutchinson)


def test_mixture_score_is_gradient_of_log_prob_and_log_prob_is_exact():
    mix = GaussianMixture([[0.0, 1.0], [2.0, -1.0]], 0.5, weights=[0.3, 0.7])
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, 1.3).sum(), x)
    torch.testing.assert_close(mix.score(x, 1.3), grad)
    sd = math.sqrt(0.5**2 + 1.3**2)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.3, 0.7], dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(mix.means, sd), 1),
    )
    torch.testing.assert_close(mix.log_prob(x, 1.3), ref.log_prob(x))


def test_sigma_grids():
    g = geometric_sigmas(20, 0.01, 10)
    assert len(g) == 11 and g[0] == pytest.approx(20) and g[-1] == pytest.approx(0.01)
    ratios = g[1:] / g[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))
    k = karras_sigmas(20, 0.01, 10)
    assert k[0] == pytest.approx(20) and k[-1] == pytest.approx(0.01) and (k[1:] < k[:-1]).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mode": "xor"}, "mode"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"lift": float("inf")}, "lift"),
        ({"lift": [1.0, 2.0, 3.0]}, "lift"),
        ({"log_weights": [0.0]}, "log_weights"),
        ({"sigmas": torch.tensor([1.0, 2.0, 0.5])}, "sigmas"),
        ({"sigmas": torch.tensor([1.0])}, "sigmas"),
        ({"models": []}, "models"),
        ({"models": [UP, "down"]}, "models"),
        ({"models": [UP, lambda x, s: x[:, :1]]}, "models"),
        ({"x": torch.zeros(0, 2)}, "x"),
        ({"mode": "fixed"}, "kappa"),
        ({"mode": "fixed", "kappa": [0.7, 0.7]}, "kappa"),
        ({"mode": "and", "kappa": [1.0, 0.0]}, "kappa"),
        ({"mode": "fixed", "kappa": "ab"}, "kappa"),
        ({"sigmas": "abc"}, "sigmas"),
        ({"sigmas": None}, "sigmas"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"models": [UP, DOWN], "x": torch.zeros(4, 2), "sigmas": geometric_sigmas(20, 0.01, 5)} | kwargs
    with pytest.raises(ValueError, match=name):
        superpose(args.pop("models"), args.pop("x"), args.pop("sigmas"), **args)
    with pytest.raises(ValueError, match="n"):
        geometric_sigmas(20, 0.01, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": torch.tensor([[0.0, math.nan]] * 4)}, "x: contains NaN"),
        ({"x": torch.full((4, 2), math.inf)}, "x: contains NaN or infinite"),
        ({"x": torch.zeros(4)}, r"x: .*\(B, 1\) for scalars, got \(4,\)"),
        ({"generator": 5}, "generator: expected a torch.Generator"),
        (
            {"generator": [torch.Generator()] * 3},
            "generator: expected a list of 4 generators, one per sample",
        ),
        ({"lift": "1"}, "lift: expected a scalar or 2 values within ±1e\\+06, got '1'"),
        ({"lift": 1e300}, r"lift: expected a scalar or 2 values within ±1e\+06, got 1e\+300"),
        ({"mode": "or", "temperature": True}, r"temperature: expected a number > 0 and <= 1e\+06"),
        ({"mode": "or", "temperature": 1e308}, r"temperature: expected a number > 0 and <= 1e\+06"),
        ({"mode": "or", "log_weights": [1e308, 0.0]}, r"log_weights: expected 2 values within ±1e\+06"),
        (
            {"mode": "or", "log_weights": 1.0},
            r"log_weights: expected 2 values within ±1e\+06, one per model, got 1.0",
        ),
        ({"lift": True}, "lift: expected a scalar or 2 values"),
        ({"lift": [True, 0.0]}, "lift: expected a scalar or 2 values"),
        ({"lift": np.bool_(True)}, "lift: expected a scalar or 2 values"),
        ({"lift": torch.tensor([True, False])}, "lift: expected a scalar or 2 values"),
        ({"lift": np.array([True, False])}, "lift: expected a scalar or 2 values"),
        ({"callback": 5}, "callback: expected a function f\\(state\\) or None, got int"),
        ({"curvature": 1}, "curvature: expected True or False, got 1"),
        (
            {"sigmas": [1e300, 1.0]},
            r"sigmas: values other than a last 0 must be from 1e-06 to 1e\+06, got 1e\+300",
        ),
        (
            {"sigmas": [1e-300, 1e-320]},
            r"sigmas: values other than a last 0 must be from 1e-06 .* got 1e-300 … 9",
        ),
        (
            {"curvature": np.array([True, False])},
            r"curvature: expected True or False, got array\(\[ True, False\]\)",
        ),
        (
            {"sigmas": torch.linspace(20, 0, 1_000_002)},
            r"sigmas: expected a 1-D tensor of 2 to 1000001 values",
        ),
        (
            {"x": torch.zeros(10**6, 2), "sigmas": geometric_sigmas(20, 0.01, 1000)},
            r"x: a batch of 1000000 over 1000 steps and 2 models keeps 2002000000 values .* than 268435456",
        ),
    ],
)
def test_bad_input_fails_before_any_model_call(kwargs, message):
    calls = []

    def model(x, sigma):
        calls.append(sigma)
        return UP(x, sigma)

    args = {"x": torch.zeros(4, 2), "sigmas": geometric_sigmas(20, 0.01, 5)} | kwargs
    with pytest.raises(ValueError, match=message):
        superpose([model, DOWN], args.pop("x"), args.pop("sigmas"), **args)
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "ignored"),
    [
        ({"mode": "or", "lift": 2.0}, "lift: ignored in mode 'or'"),
        ({"mode": "avg", "lift": [0.0, 1.0], "temperature": 2.0}, "lift, temperature: ignored in mode 'avg'"),
        ({"mode": "and", "log_weights": [0.0, -1.0]}, "log_weights: ignored in mode 'and'"),
        ({"mode": "fixed", "kappa": [1.0, 0.0], "temperature": 0.5}, "temperature: ignored in mode 'fixed'"),
        ({"models": [UP], "lift": 1.0}, "lift: ignored in mode 'and' with one model"),
        ({"mode": "or", "curvature": True}, "curvature: ignored in mode 'or'"),
        ({"models": [UP], "curvature": True}, "curvature: ignored in mode 'and' with one model"),
    ],
)
def test_an_option_the_mode_ignores_warns_at_the_callers_line(kwargs, ignored):
    args = {"models": [UP, DOWN], "x": torch.zeros(4, 2), "sigmas": geometric_sigmas(20, 0.01, 5)} | kwargs
    with pytest.warns(UserWarning, match=ignored) as caught:
        superpose(args.pop("models"), args.pop("x"), args.pop("sigmas"), **args)
    assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "and", "lift": 2.0, "temperature": 1, "log_weights": [0.0, 0.0]},
        {"mode": "or", "temperature": 2.0, "log_weights": [0.0, -1.0], "lift": 0},
        {"mode": "avg", "lift": [0.0, 0.0]},
    ],
)
def test_options_the_mode_uses_or_left_at_their_defaults_do_not_warn(kwargs, recwarn):
    superpose([UP, DOWN], torch.zeros(4, 2), geometric_sigmas(20, 0.01, 5), **kwargs)
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []


def test_a_module_list_is_a_list_of_models():
    class Net(torch.nn.Module):
        def __init__(self, mixture):
            super().__init__()
            self.mixture = mixture

        def forward(self, x, sigma):
            return self.mixture(x, sigma)

    nets = torch.nn.ModuleList([Net(UP), Net(DOWN)])
    ours, plain = run(nets, n=20, batch=8), run([UP, DOWN], n=20, batch=8)
    assert ours.kappa.shape == (20, 8, 2) and torch.equal(ours.samples, plain.samples)


def test_a_model_that_returns_nan_is_named_not_sampled_silently():
    broken = lambda x, sigma: UP(x, sigma) * (math.nan if sigma < 1 else 1.0)  # noqa: E731
    first = int((geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 20) < 1).nonzero()[0])  # step 8
    with pytest.raises(
        NonFiniteError, match=rf"^kappa: sampling produced NaN or infinite values from step {first} "
    ):
        run([broken, DOWN], n=20, batch=8)
    with pytest.raises(NonFiniteError, match=rf"^log_q: .* from step {first} \(the callback's i\);"):
        run([broken, DOWN], n=20, batch=8, mode="fixed", kappa=[0.0, 1.0])  # κ stays finite, log q_1 not


@pytest.mark.parametrize("scale", [True, -1.0, 1e4, math.nan, "7"])
def test_guidance_scale_is_a_number_from_0_to_1000(scale):
    with pytest.raises(ValueError, match=r"guidance_scale: expected a number from 0 to 1000, got"):
        Guided([UP], DOWN, scale)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: geometric_sigmas(20, 0.01, 10.0),
            r"n: number of steps must be an integer from 1 to 1000000, got 10.0",
        ),
        (lambda: geometric_sigmas(20, 0.01, True), "n: number of steps"),
        (lambda: geometric_sigmas(20, 0.01, 10**13), "n: number of steps"),
        (lambda: geometric_sigmas("20", 0.01, 10), r"sigma_max, sigma_min: need numbers .* got '20', 0.01"),
        (lambda: karras_sigmas(None, 0.01, 10), r"sigma_max, sigma_min: need numbers .* got None"),
        (lambda: geometric_sigmas(20, torch.ones(2), 10), r"sigma_max, sigma_min: need numbers"),
        (lambda: karras_sigmas(20, 0.01, 10, rho=0), "rho: expected a finite number > 0"),
        (lambda: karras_sigmas(20, 0.01, 10, rho=math.nan), "rho: expected a finite number > 0"),
    ],
)
def test_grid_helpers_refuse_what_they_cannot_build(call, message):
    with pytest.raises(ValueError, match=message):
        call()


class Custom(Predictor):
    """A user's Predictor that returns what ``make`` builds from the two toy models' ε̂ (N, B, 2)."""

    def __init__(self, make, num_models=2):
        self.make, self.num_models = make, num_models

    def __call__(self, x, sigma):
        eps = torch.stack([UP(x, sigma), DOWN(x, sigma)])
        return self.make(eps)


@pytest.mark.parametrize(
    ("predictor", "message"),
    [
        (
            Custom(lambda e: Prediction(e[..., :1], e[..., :1])),
            r"eps is \(2, 4, 1\), expected .* \(2, 4, 2\)",
        ),
        (Custom(lambda e: Prediction(e, e[:1])), r"field is \(1, 4, 2\), expected"),
        (Custom(lambda e: e), "the Predictor returned Tensor, expected a Prediction"),
        (Custom(lambda e: Prediction(e, e), num_models=3), r"eps is \(2, 4, 2\), expected .* \(3, 4, 2\)"),
        (Custom(lambda e: Prediction(e, e), num_models=0), "num_models must be a positive integer, got 0"),
        (
            Custom(lambda e: Prediction(e, e), num_models=2.0),
            "num_models must be a positive integer, got 2.0",
        ),
    ],
)
def test_a_predictor_that_returns_the_wrong_shapes_is_named(predictor, message):
    """(N, B, 1) for x of (B, 2) broadcast in κ's einsum: wrong κ and log q, and no error."""
    with pytest.raises(ValueError, match=f"^models: .*{message}"):
        superpose(predictor, torch.zeros(4, 2), geometric_sigmas(20, 0.01, 5))
    fine = superpose(Custom(lambda e: Prediction(e, e)), torch.zeros(4, 2), geometric_sigmas(20, 0.01, 5))
    assert fine.kappa.shape == (5, 4, 2)


def test_number_types_numpy_and_python_alike():
    a = run([UP, DOWN], n=20, batch=8, mode="or", temperature=np.float32(2.0), lift=np.float64(0.0))
    b = run([UP, DOWN], n=20, batch=8, mode="or", temperature=2.0)
    assert torch.equal(a.samples, b.samples)


def near_up(rel: float):
    """A model whose ε̂ is UP's times (1 + rel): the two agree to a relative ``rel`` everywhere."""
    return lambda x, sigma: UP(x, sigma) * (1 + rel)


def test_and_warns_when_models_too_alike_to_reach_the_lift():
    """Where ε̂_1 ≈ ε̂_2 (within ~0.1 %) the ridge keeps κ near 1/2 rather than move x far: the lift falls
    short, and the user is told by how much."""
    with pytest.warns(RuntimeWarning, match=r"lift: .* ended up to 4 nats from the lift") as warned:
        r = run([UP, near_up(1e-4)], n=200, batch=16, lift=4.0)
    assert warned[0].filename == __file__  # it points at the call of superpose (here, in run)
    assert (r.log_q[-1, :, 0] - r.log_q[-1, :, 1]).abs().max() < 0.01
    with pytest.warns(RuntimeWarning, match=r"ended up to 2\.\d+ nats"):
        run([UP, near_up(1e-3)], n=200, batch=16, lift=4.0)
    r = run([UP, near_up(1e-2)], n=200, batch=16, lift=4.0)  # RuntimeWarnings are errors here
    torch.testing.assert_close(
        r.log_q[-1, :, 0] - r.log_q[-1, :, 1], torch.full((16,), 4.0, dtype=torch.float64), atol=1e-3, rtol=0
    )
    r = run([UP, near_up(1e-4)], n=200, batch=16)  # lift 0: both traces grow alike, no warning
    with pytest.warns(RuntimeWarning, match=r"lift: .* ended up to \d+\.?\d* nats"):  # lift 0 missed too
        run(Guided([UP, DOWN], UP, guidance_scale=0.0), n=200, batch=16)  # equal fields: κ moves nothing


def test_traces_follow_the_step_x_takes_in_half_precision():
    """x in bfloat16 moves by each step rounded, the traces had summed the step before rounding: the
    traces' difference ended 0.55 nats (median) from the exact one, against 0.12 in float64."""
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 1000)
    g = torch.Generator().manual_seed(0)
    x = (sigmas[0] * torch.randn(200, 2, generator=g, dtype=torch.float64)).to(torch.bfloat16)
    r = superpose([UP, DOWN], x, sigmas, mode="fixed", kappa=[1.0, 0.0], generator=g)
    error = (r.log_q[-1, :, 0] - r.log_q[-1, :, 1]) - exact_gap(r.samples.double())
    assert error.abs().median() < 0.2  # measured 0.125


def test_a_lift_missed_by_rounding_x_names_the_dtype():
    up, down = up_and_down(dim=64)
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 1000)
    g = torch.Generator().manual_seed(0)
    x = (sigmas[0] * torch.randn(100, 64, generator=g)).to(torch.bfloat16)
    with pytest.warns(
        RuntimeWarning, match=r"lift: .* nats from the lift: x is bfloat16, .* keep x in float32"
    ):
        superpose([up, down], x, sigmas, generator=g)


def test_up_and_down_in_d_dimensions_keeps_the_toys_geometry():
    up2, down2 = up_and_down()
    up, down = up_and_down(dim=64, seed=3)
    again, _ = up_and_down(dim=64, seed=3)
    other, _ = up_and_down(dim=64, seed=4)
    assert up.means.shape == down.means.shape == (2, 64)
    norms = torch.cat([up.means, down.means]).norm(dim=-1)
    assert torch.allclose(norms, up2.means.norm(dim=-1)[0].expand(4))  # as far out as the 2-D toy
    assert torch.equal(up.means, again.means) and not torch.equal(up.means, other.means)
    assert up.std == down.std == up2.std and torch.equal(
        down2.means[:, 1], torch.tensor([-1.5, -1.5]).double()
    )
    with pytest.raises(ValueError, match="dim"):
        up_and_down(dim=1)


def test_traces_resolve_small_gaps_where_log_q_is_of_order_a_million():
    """SD3 at 1024² has d = 262 144 latents and log q ≈ −1e6 to −3e6, where float32 resolves 0.06 to 0.25
    nats: the traces and κ are float64 (the samples keep x's float32), so AND still follows the lift
    (with float32 traces: 0.19 nats off at the end, up to 0.5 along the way)."""
    d, n, lift = 262_144, 40, 0.5
    g = torch.Generator().manual_seed(0)
    models = [
        GaussianMixture(m[None], std=1.0) for m in 0.1 * torch.randn(2, d, generator=g, dtype=torch.float64)
    ]
    sigmas = geometric_sigmas(20.0, 0.1, n)
    r = superpose(models, 20.0 * torch.randn(1, d, generator=g), sigmas, mode="and", lift=lift, generator=g)
    assert r.samples.dtype == torch.float32 and r.log_q.dtype == r.kappa.dtype == torch.float64
    assert r.log_q[0].abs().min() > 1e6
    gap = r.log_q[:, 0, 0] - r.log_q[:, 0, 1]
    torch.testing.assert_close(gap, torch.linspace(0, lift, n + 1, dtype=torch.float64), atol=5e-3, rtol=0)
    increments = gap.diff()[10:]  # the first steps: the prompts agree to 1e-3, where the AND ridge acts
    torch.testing.assert_close(increments, torch.full_like(increments, lift / n), atol=1e-4, rtol=0)


def test_traces_are_float64_except_on_mps_which_has_none():
    assert trace_dtype("cpu") == trace_dtype("cuda:0") == torch.float64
    assert trace_dtype("mps") == torch.float32


def test_a_callback_raising_stop_sampling_ends_the_run_with_the_steps_taken():
    from superdiff import StopSampling

    def stop_after_5(step):
        if step["i"] == 4:
            raise StopSampling

    full = run([UP, DOWN], n=20, batch=8, lift=2.0)
    part = run([UP, DOWN], n=20, batch=8, lift=2.0, callback=stop_after_5)  # short of its lift: no warning
    assert part.kappa.shape == (5, 8, 2) and part.log_q.shape == (6, 8, 2)
    torch.testing.assert_close(part.sigmas, full.sigmas[:6])
    torch.testing.assert_close(part.log_q, full.log_q[:6])


def test_a_callback_that_edits_what_it_gets_changes_nothing():
    """The core handed the callback its live x and log q: x.mul_(0) zeroed the samples, log q unchanged."""

    def vandal(state):
        state["x"].mul_(0)
        state["log_q"].add_(100)
        state["kappa"].fill_(math.nan)

    plain, edited = run([UP, DOWN], n=20, batch=8), run([UP, DOWN], n=20, batch=8, callback=vandal)
    for name in ("samples", "kappa", "log_q"):
        assert torch.equal(getattr(edited, name), getattr(plain, name)), name


# ----------------------------------------------------------------------------- AND's curvature terms

WIDE, SHARP = GaussianMixture([[1.0, 0.0]], 0.4), GaussianMixture([[-1.0, 0.0]], 0.2)


def width_run(models, curvature: bool, steps: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """An AND run of isotropic Gaussians: the change of the exact log q_i − log q_N from σ_max to the end,
    (B, N − 1), and each absolute trace's error at the end, (B, N)."""
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, steps)
    x = sigmas[0] * torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = superpose(models, x, sigmas, generator=torch.Generator().manual_seed(1), curvature=curvature)
    start = torch.stack([m.log_prob(x, SIGMA_MAX) for m in models], -1)
    end = torch.stack([m.log_prob(r.samples, SIGMA_MIN) for m in models], -1)
    change = (end - start)[:, :-1] - (end - start)[:, -1:]
    return change, r.log_q[-1] - end


def width_bias(s: float, dims: int = 1) -> float:
    """Σ |dσ|·σ/(σ² + s²) over the grid, negated, times the dimensions without noise: the Itô trace's error
    for an isotropic Gaussian of std s when AND removes the noise along ``dims`` directions."""
    return -0.5 * dims * math.log((SIGMA_MAX**2 + s**2) / (SIGMA_MIN**2 + s**2))


def test_and_favours_the_sharper_model_by_the_log_ratio_of_widths_which_curvature_removes():
    """AND leaves no noise along ε̂₁ − ε̂₂, which the Itô estimator assumes: each true Δ log q_i exceeds its
    estimate by |dσ|·⟨d̂, J_i d̂⟩ = |dσ|·σ/(σ² + s_i²) for an isotropic Gaussian of std s_i. Summed, plain AND
    ends log q₁ − log q₂ off by ≈ ln(s₂/s₁) = −0.69 nats; ``curvature=True`` puts the terms in κ's equation
    and in the traces."""
    change, trace_err = width_run([WIDE, SHARP], curvature=False)
    assert change.median().item() == pytest.approx(width_bias(0.2) - width_bias(0.4), abs=0.05)
    expected = torch.tensor([width_bias(0.4), width_bias(0.2)], dtype=torch.float64)
    torch.testing.assert_close(trace_err.median(0).values, expected, atol=0.25, rtol=0)
    change, trace_err = width_run([WIDE, SHARP], curvature=True)
    assert change.abs().median().item() < 0.06 and abs(change.median().item()) < 0.03
    assert (trace_err.median(0).values.abs() < 0.1).all()


def test_curvature_holds_three_models_of_three_widths_at_equal_density():
    """Three models in 2-D: AND fixes two directions, so no noise is left (P = I) and plain AND is off by
    twice the log ratio of the widths against the last model, 0.3: ln(0.3²/0.4²) and ln(0.3²/0.2²)."""
    middle = GaussianMixture([[0.0, 1.0]], 0.3)
    plain, _ = width_run([WIDE, SHARP, middle], curvature=False)
    expected = torch.tensor([width_bias(s, 2) for s in (0.4, 0.2)], dtype=torch.float64) - width_bias(0.3, 2)
    torch.testing.assert_close(plain.median(0).values, -expected, atol=0.05, rtol=0)
    curved, trace_err = width_run([WIDE, SHARP, middle], curvature=True)
    assert (curved.median(0).values.abs() < 0.03).all() and trace_err.abs().median().item() < 0.1


def test_curvature_terms_are_the_trace_of_each_jacobian_on_the_span_of_the_differences():
    """|dσ|·tr(P J_i), P the projector onto span{ε̂_i − ε̂_N}, against autograd's Jacobians (N = 3, 5-d)."""
    models = [*up_and_down(dim=5, seed=1), up_and_down(dim=5, seed=2)[0]]
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    predictor = ModelList(models)
    eps = predictor(x, 0.7).eps
    terms = curvature_terms(predictor, x, 0.7, -0.05, predictor(x, 0.7))
    for k in range(3):
        diffs = (eps[:-1, k] - eps[-1:, k]).T  # (5, 2)
        projector = diffs @ torch.linalg.pinv(diffs)
        for i, m in enumerate(models):
            jac = torch.autograd.functional.jacobian(lambda v, m=m: m(v[None], 0.7)[0], x[k])
            assert terms[k, i].item() == pytest.approx(0.05 * torch.trace(projector @ jac).item(), rel=1e-9)


def test_curvature_needs_models_that_autograd_can_differentiate():
    def frozen(model):
        def eps(x, sigma):
            with torch.no_grad():
                return model(x, sigma)

        return eps

    with pytest.raises(ValueError, match="model: its ε̂ carries no gradient"):
        run([frozen(UP), frozen(DOWN)], n=3, batch=4, curvature=True)
    run([frozen(UP), frozen(DOWN)], n=3, batch=4)  # without the curvature terms no gradient is needed


def test_curvature_changes_nothing_outside_and():
    """OR's κ does not depend on the step's noise, so its steps keep the isotropic noise: no terms."""
    plain = run([WIDE, SHARP], n=50, batch=50, mode="or")
    with pytest.warns(UserWarning, match="curvature: ignored in mode 'or'"):
        curved = run([WIDE, SHARP], n=50, batch=50, mode="or", curvature=True)
    assert torch.equal(curved.log_q, plain.log_q) and torch.equal(curved.samples, plain.samples)


def test_curvature_adds_nothing_where_and_keeps_the_noise():
    """Where the models agree (or guidance 0 makes their fields equal), AND's ridge keeps κ at 1/N and the
    step's noise isotropic: no terms. A duplicated model removes noise along one direction, not two."""
    _, plain = width_run([UP, UP], curvature=False)
    _, curved = width_run([UP, UP], curvature=True)
    torch.testing.assert_close(curved, plain, atol=1e-6, rtol=0)  # the terms once added ≈ 3.4 nats here
    change, trace_err = width_run([WIDE, WIDE, SHARP], curvature=True)
    assert abs(change[:, -1].median().item()) < 0.05 and (trace_err.median(0).values.abs() < 0.15).all()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unguided = Guided([UP, DOWN], GaussianMixture([[0.0, 0.0]], 2.0), 0.0)
    assert not curvature_terms(unguided, x, 1.0, -0.01, unguided(x, 1.0)).any()


def test_curvature_takes_samples_made_under_inference_mode():
    """Such x cannot require grad; the terms differentiate a copy, and the run equals one from a plain x."""
    with torch.inference_mode():
        x = 20.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = [
        superpose(
            [WIDE, SHARP],
            start,
            geometric_sigmas(20.0, 0.01, 20),
            curvature=True,
            generator=torch.Generator().manual_seed(1),
        ).samples
        for start in (x, x.clone())
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_curvature_takes_a_numpy_bool():
    """A NumPy comparison gives np.bool_ (np.True_ is not a bool): the same run as with True."""
    with_numpy, with_bool = (run([WIDE, SHARP], n=5, batch=4, curvature=flag) for flag in (np.True_, True))
    torch.testing.assert_close(with_numpy.log_q, with_bool.log_q, rtol=0, atol=0)


def test_the_pf_ode_refuses_a_trace_past_the_cores_bound_before_any_model_call():
    """Its log q trace is (n + 1) × B values, as superpose's: 10⁶ steps of 1024 samples would be 4 GB."""
    x = torch.zeros(1024, 2)

    def model(x, sigma):
        raise AssertionError("called")

    with pytest.raises(
        ValueError, match=r"^x: a batch of 1024 over 1000000 steps and 1 model keeps 1024001024"
    ):
        probability_flow(model, x, geometric_sigmas(20.0, 0.01, 1_000_000))


def test_each_step_adds_noise_of_variance_2_sigma_dsigma():
    """DESIGN §2's step: ε̂ = 0 from σ = 2 to 1 leaves only the noise, of variance 2·σ_k·|dσ| = 4 (2 with
    σ_next in place of σ_k, which the 1000-step tests cannot tell apart)."""
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(200_000, 1, dtype=torch.float64)
    r = superpose([zero], x, torch.tensor([2.0, 1.0]), generator=torch.Generator().manual_seed(0))
    assert r.samples.var().item() == pytest.approx(4.0, rel=0.02)


def test_guided_field_is_the_unconditional_one_plus_w_times_the_difference():
    """1 + 3·(2 − 1) = 4 (3·2 = 6 would be a guidance that scales ε̂); κ and log q read the unguided 2."""
    two, one = (lambda x, sigma: torch.full_like(x, 2.0)), (lambda x, sigma: torch.ones_like(x))
    pred = Guided([two], one, 3.0)(torch.zeros(2, 3), 1.0)
    torch.testing.assert_close(pred.field, torch.full((1, 2, 3), 4.0))
    torch.testing.assert_close(pred.eps, torch.full((1, 2, 3), 2.0))


def test_a_lift_missed_by_a_third_of_a_nat_warns():
    """Models that agree to 1e-4 keep κ at 1/2, so AND's traces end near 0, 0.3 from the lift asked."""
    near = lambda x, sigma: UP(x, sigma) * (1 + 1e-4)  # noqa: E731
    with pytest.warns(RuntimeWarning, match=r"ended up to 0\.\d+ nats"):
        run([UP, near], n=200, batch=16, lift=0.3)


def test_fixed_kappa_must_sum_to_one_within_1e_6():
    with pytest.raises(ValueError, match="kappa: expected 2 weights summing to 1"):
        run([UP, DOWN], n=5, batch=4, mode="fixed", kappa=[0.6, 0.405])
