"""Flow matching in the VE core, against exact answers: rectified-flow Gaussian mixtures in x_t coordinates.

FlowGaussianMixture computes p_t, its score and the velocity E[ε − x₀ | x_t] directly in flow coordinates,
so these tests check superdiff.flow's conversions (σ = t/(1 − t), ε̂ = x_t + (1 − t)·v, the Jacobian
d·log(1 + σ)) and the core run through them, not the formulas against themselves.
"""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from superdiff import geometric_sigmas, superpose
from superdiff.flow import FALLBACK_SIGMA_MAX, VelocityEps, flow_sigmas, log_prob_flow, t_of_sigma
from superdiff.toy import FlowGaussianMixture, GaussianMixture, flow_up_and_down, up_and_down

UP, DOWN = flow_up_and_down()
VE_UP, _ = up_and_down()
MEANS, STD, WEIGHTS = [[0.0, 1.0, -0.5], [2.0, -1.0, 0.3], [-1.0, -2.0, 1.0]], 0.5, [0.2, 0.3, 0.5]
SIGMAS = (0.01, 0.3, 1.0, 5.0, 20.0, 3000.0)


def scheduler_ts(n, shift=3.0):
    """SD3's flow-time grid: diffusers' shifted FlowMatchEulerDiscreteScheduler, n steps (t = 1 … 0)."""
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    return sched.sigmas


def geometric_ts(n):
    """The VE tests' grid (σ geometric 20 → 0.01) as flow times t = σ/(1 + σ)."""
    return t_of_sigma(geometric_sigmas(20.0, 0.01, n))


def run(models, ts, batch=1000, seed=0, **kw):
    """superpose on the flow models (as VelocityEps) over a flow-time grid, float64, seeded."""
    sigmas = flow_sigmas(ts)
    g = torch.Generator().manual_seed(seed)
    x = sigmas[0] * torch.randn(batch, 2, generator=g, dtype=torch.float64)
    return superpose([VelocityEps(m) for m in models], x, sigmas, generator=g, **kw)


def to_flow(y, sigma):
    """A VE point y at noise σ in flow coordinates: (x_t = y/(1 + σ), t = σ/(1 + σ))."""
    return y / (1 + sigma), t_of_sigma(sigma)


def exact_gap(r):
    x_t, t = to_flow(r.samples, r.sigmas[-1].item())
    return UP.log_prob(x_t, t) - DOWN.log_prob(x_t, t)


# ----------------------------------------------------------------------------- the exact flow toy


def test_flow_mixture_log_prob_is_exact_and_score_is_its_gradient():
    mix = FlowGaussianMixture(MEANS, STD, WEIGHTS)
    x = torch.randn(
        16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True
    )
    for t in (0.0, 0.3, 0.9, 1.0):
        sd = math.sqrt((1 - t) ** 2 * STD**2 + t**2)
        ref = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.tensor(WEIGHTS, dtype=torch.float64)),
            torch.distributions.Independent(torch.distributions.Normal((1 - t) * mix.means, sd), 1),
        )
        torch.testing.assert_close(mix.log_prob(x, t), ref.log_prob(x))
        (grad,) = torch.autograd.grad(mix.log_prob(x, t).sum(), x)
        torch.testing.assert_close(mix.score(x, t), grad)


def test_flow_samples_have_the_exact_moments():
    mix = FlowGaussianMixture(MEANS, STD, WEIGHTS)
    w, mu = mix.weights, mix.means
    for t in (0.0, 0.4, 1.0):
        x = mix.sample(100_000, t, generator=torch.Generator().manual_seed(1))
        mean = (1 - t) * (w @ mu)
        second = (1 - t) ** 2 * (w @ mu.square()) + (1 - t) ** 2 * STD**2 + t**2
        torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
        torch.testing.assert_close(x.square().mean(0), second, atol=0.05, rtol=0.01)


def test_velocity_is_the_conditional_mean_of_eps_minus_x0_by_monte_carlo():
    """Tower property: E[v(x_t)·g(x_t)] = E[(ε − x₀)·g(x_t)] for g = 1 and g = x_t, over (x₀, ε) pairs."""
    mix = FlowGaussianMixture(MEANS, STD, WEIGHTS)
    gen = torch.Generator().manual_seed(2)
    n = 200_000
    for t in (0.2, 0.5, 0.8):
        x0 = mix.sample(n, 0.0, generator=gen)
        eps = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        x_t = (1 - t) * x0 + t * eps
        v, target = mix(x_t, t), eps - x0
        for g in (torch.ones(n, 1, dtype=torch.float64), x_t):
            lhs, rhs = (v[:, :, None] * g[:, None]).mean(0), (target[:, :, None] * g[:, None]).mean(0)
            se = ((target - v)[:, :, None] * g[:, None]).std(0) / math.sqrt(n)  # the difference's noise
            assert ((lhs - rhs).abs() < 5 * se + 1e-12).all(), (t, (lhs - rhs) / se)


def test_velocity_is_minus_x_plus_t_score_over_one_minus_t_and_obeys_the_continuity_equation():
    """v = −(x_t + t·∇log p_t)/(1 − t), and ∂_t log p_t + ∇·v + v·∇log p_t = 0 (finite differences in t)."""
    mix = FlowGaussianMixture(MEANS, STD, WEIGHTS)
    x = 2 * torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h = 1e-5
    for t in (0.05, 0.3, 0.7, 0.99):
        torch.testing.assert_close(mix(x, t), -(x + t * mix.score(x, t)) / (1 - t), atol=1e-10, rtol=1e-10)
        dlogp_dt = (mix.log_prob(x, t + h) - mix.log_prob(x, t - h)) / (2 * h)
        xg = x.clone().requires_grad_(True)
        v = mix(xg, t)
        div = sum(torch.autograd.grad(v[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(3))
        residual = dlogp_dt + div + (v * mix.score(x, t)).sum(-1)
        assert residual.abs().max() < 1e-5 * (1 + dlogp_dt.abs().max()), (t, residual.abs().max())
    # t = 1: x_1 = ε is independent of x₀, so v = x_1 − E[x₀]
    torch.testing.assert_close(mix(x, 1.0), x - mix.weights @ mix.means)


def test_flow_mixture_keeps_shape_and_dtype_and_checks_t():
    mix = FlowGaussianMixture(MEANS, STD)
    x = torch.randn(4, 1, 3)
    assert mix(x, 0.5).shape == x.shape and mix(x, 0.5).dtype == torch.float32
    assert mix.score(x, 0.5).shape == x.shape and mix.log_prob(x, 0.5).shape == (4,)
    for t in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="t"):
            mix(x, t)
    with pytest.raises(ValueError, match="std"):
        FlowGaussianMixture(MEANS, 0.0)
    up, down = flow_up_and_down(dim=8, seed=1)
    ve_up, ve_down = up_and_down(dim=8, seed=1)
    assert torch.equal(up.means, ve_up.means) and torch.equal(down.means, ve_down.means)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_exact_log_densities_of_half_precision_samples_are_not_rounded_to_it(dtype):
    """log q from −155 to −102 at d = 256: bfloat16 resolves 0.5 to 1 there, and the answer was 0.49 off."""
    ve, flow = up_and_down(dim=256, seed=0)[0], flow_up_and_down(dim=256, seed=0)[0]
    x = ve.sample(64, sigma=0.01, generator=torch.Generator().manual_seed(0)).to(dtype)
    for log_prob, noise in ((ve.log_prob, 0.01), (flow.log_prob, 0.01)):
        answer = log_prob(x, noise)
        assert answer.dtype == torch.float32
        torch.testing.assert_close(answer.double(), log_prob(x.double(), noise), rtol=1e-6, atol=1e-3)


# ----------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize("sigma", SIGMAS)
def test_velocity_eps_of_the_flow_mixture_is_the_ve_mixtures_exact_eps(sigma):
    flow, ve = FlowGaussianMixture(MEANS, STD, WEIGHTS), GaussianMixture(MEANS, STD, WEIGHTS)
    y = math.sqrt(STD**2 + sigma**2) * torch.randn(64, 3, dtype=torch.float64)
    y = y + ve.means[torch.arange(64) % 3]
    torch.testing.assert_close(VelocityEps(flow)(y, sigma), ve(y, sigma), atol=1e-10, rtol=1e-10)
    assert VelocityEps(flow)(y.float(), sigma).dtype == torch.float32


@pytest.mark.parametrize("sigma", SIGMAS)
def test_log_prob_flow_adds_the_jacobian_of_y_to_x_t(sigma):
    flow, ve = FlowGaussianMixture(MEANS, STD, WEIGHTS), GaussianMixture(MEANS, STD, WEIGHTS)
    y = math.sqrt(STD**2 + sigma**2) * torch.randn(64, 3, dtype=torch.float64)
    x_t, t = to_flow(y, sigma)
    torch.testing.assert_close(
        log_prob_flow(ve.log_prob(y, sigma), sigma, 3), flow.log_prob(x_t, t), atol=1e-10, rtol=1e-12
    )


@pytest.mark.parametrize("n", [1, 2, 7, 28, 1000])
def test_flow_sigmas_of_sd3_grids_are_finite_decreasing_and_keep_the_schedulers_points(n):
    ts = scheduler_ts(n)
    sigmas = flow_sigmas(ts)
    assert sigmas.dtype == torch.float64 and len(sigmas) == n + 1 and torch.isfinite(sigmas).all()
    assert (sigmas[1:] < sigmas[:-1]).all() and sigmas[-1] == 0
    t = ts[1:].double()
    torch.testing.assert_close(sigmas[1:], t / (1 - t), atol=0, rtol=1e-12)
    x = sigmas[0] * torch.randn(2, 2, dtype=torch.float64)
    assert torch.isfinite(superpose([VelocityEps(UP)], x, sigmas).samples).all()


def test_flow_sigmas_extrapolates_the_top_and_roundtrips_finite_grids():
    assert flow_sigmas(scheduler_ts(28))[0].item() == pytest.approx(162.7258, rel=1e-5)
    assert flow_sigmas(scheduler_ts(1000))[0].item() == pytest.approx(6011.72, rel=1e-5)
    s = flow_sigmas(scheduler_ts(28))
    assert s[0] / s[1] == pytest.approx(s[1] / s[2])  # one more step of the grid's own ratio
    assert flow_sigmas([1.0, 0.0]).tolist() == [100.0, 0.0]
    assert flow_sigmas([1.0, 0.995, 0.0])[0] > flow_sigmas([1.0, 0.995, 0.0])[1]  # σ_1 = 199 > 100
    sig = geometric_sigmas(20.0, 0.01, 50)
    torch.testing.assert_close(flow_sigmas(t_of_sigma(sig)), sig)


@pytest.mark.parametrize(
    "ts",
    [
        [[1.0, 0.5]],
        [1.0],
        [1.2, 0.5, 0.0],
        [1.0, 0.5, -0.1],
        [1.0, 1.0, 0.0],
        [1.0, 0.3, 0.5],
        [0.5, 0.5],
        [float("nan"), 0.0],
        [[1.0, 0.5], [0.5, 0.0]],
    ],
)
def test_bad_flow_time_grids_raise_value_error_naming_ts(ts):
    with pytest.raises(ValueError, match="ts"):
        flow_sigmas(ts)


def test_a_grid_that_goes_back_up_is_refused_at_its_first_rise():
    with pytest.raises(ValueError, match=r"got t\[1\] = 0.8, t\[2\] = 0.9$"):
        flow_sigmas([1.0, 0.8, 0.9, 0.7, 0.75])


def test_a_three_point_grid_from_t_1_extrapolates_its_one_ratio():
    """[1, 0.5, 0.2]: σ_1 = 1 and σ_2 = 0.25 follow t = 1, so σ_0 = σ_1²/σ_2 = 4 (not the fallback)."""
    s = flow_sigmas([1.0, 0.5, 0.2])
    torch.testing.assert_close(s[1:], torch.tensor([1.0, 0.25], dtype=torch.float64))
    assert s[0] / s[1] == pytest.approx(s[1] / s[2])


def test_a_short_grid_whose_first_sigma_passes_the_fallback_starts_at_twice_it():
    t1 = 0.995  # σ_1 = t/(1 − t) = 199 > FALLBACK_SIGMA_MAX
    s = flow_sigmas([1.0, t1, 0.0])
    assert s[1].item() == pytest.approx(199.0, rel=1e-12) and s[1] > FALLBACK_SIGMA_MAX
    assert s[0].item() == 2 * s[1].item()  # doubling is exact in float64: nothing rounded on the way


# ----------------------------------------------------------------------------- the core on the flow toy


def test_core_on_the_flow_toy_is_the_core_on_the_ve_toy():
    sigmas = flow_sigmas(geometric_ts(200))
    x = sigmas[0] * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flow = superpose(
        [VelocityEps(UP), VelocityEps(DOWN)], x, sigmas, generator=torch.Generator().manual_seed(1)
    )
    ve = superpose(list(up_and_down()), x, sigmas, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(flow.samples, ve.samples, atol=1e-9, rtol=0)
    torch.testing.assert_close(flow.log_q, ve.log_q, atol=1e-9, rtol=0)


def test_ito_estimate_in_flow_coordinates_matches_the_exact_flow_density():
    r = run([UP], geometric_ts(1000), batch=500)
    x_t, t = to_flow(r.samples, r.sigmas[-1].item())
    estimate = log_prob_flow(r.log_q[-1, :, 0], r.sigmas[-1].item(), 2)
    assert (estimate - UP.log_prob(x_t, t)).abs().median() < 0.35


def test_ito_trace_in_flow_coordinates_tracks_the_exact_flow_density_at_every_step():
    xs = []
    r = run([UP], geometric_ts(1000), batch=200, callback=lambda step: xs.append(step["x"]))
    errors = []
    for y, sigma, log_q in zip(xs, r.sigmas[1:].tolist(), r.log_q[1:, :, 0], strict=True):
        x_t, t = to_flow(y, sigma)
        errors.append((log_prob_flow(log_q, sigma, 2) - UP.log_prob(x_t, t)).abs().median())
    assert max(errors) < 0.35


def test_on_sd3s_grid_the_traces_differences_are_exact():
    """Shift-3 grids start with σ-ratios 2, 2, 1.5, … at any n: absolute traces drift, differences don't."""
    r = run([UP, DOWN], scheduler_ts(1000), batch=500, mode="fixed", kappa=[1.0, 0.0])
    assert ((r.log_q[-1, :, 0] - r.log_q[-1, :, 1]) - exact_gap(r)).abs().median() < 0.1


def test_and_on_sd3s_grid_reaches_equal_exact_flow_density_while_averaging_does_not():
    assert exact_gap(run([UP, DOWN], scheduler_ts(1000), mode="and")).abs().median() < 0.3
    assert exact_gap(run([UP, DOWN], scheduler_ts(1000), mode="avg")).abs().median() > 3


def test_lift_on_sd3s_grid_ends_at_the_exact_flow_gap():
    assert abs(exact_gap(run([UP, DOWN], scheduler_ts(1000), mode="and", lift=4.0)).median() - 4.0) < 0.5


def test_or_on_sd3s_grid_splits_samples_between_the_models():
    up_share = (run([UP, DOWN], scheduler_ts(500), mode="or").samples[:, 1] > 0).double().mean()
    assert 0.44 < up_share < 0.56


@pytest.mark.parametrize("sigma", [0.0, math.inf, math.nan, -1.0])
def test_a_velocity_model_is_asked_only_at_finite_positive_sigma(sigma):
    def velocity(x, t):
        pytest.fail(f"the velocity model was called at t = {t}")

    with pytest.raises(ValueError, match="sigma: expected a finite noise level > 0"):
        VelocityEps(velocity)(torch.zeros(2, 2), sigma)


@pytest.mark.parametrize("model", [3, None, "velocity"])
def test_velocity_eps_refuses_a_model_that_is_not_callable(model):
    with pytest.raises(ValueError, match="model: expected a velocity callable"):
        VelocityEps(model)
