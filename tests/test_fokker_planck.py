"""The score Fokker–Planck residual: zero for exact scores, a closed form for a mis-scheduled Gaussian, and
training on it lowers it."""

import pytest
import torch

from superdiff._torch import gen
from superdiff.and_study import fp_residual
from superdiff.digits.model import EpsNet, digits_split
from superdiff.digits.train import train_eps
from superdiff.fokker_planck import noise_levels, score_fpe_residual
from superdiff.toy import FullGaussianMixture, GaussianMixture, up_and_down


def points(b: int = 12, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (b, d), σ (b,) log-spaced in [0.03, 10]), float64."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(b, d, generator=g, dtype=torch.float64)
    return x, torch.logspace(-1.5, 1, b, dtype=torch.float64)


@pytest.mark.parametrize("dim", [2, 8])
def test_exact_mixture_scores_obey_the_score_fokker_planck_equation(dim):
    x, sigma = points(d=dim)
    up, _ = up_and_down(dim=dim)
    assert score_fpe_residual(up, x, sigma).abs().max() < 1e-10
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, dim, dim, generator=g, dtype=torch.float64)
    full = FullGaussianMixture(torch.randn(2, dim, generator=g, dtype=torch.float64), a @ a.mT / dim)
    assert score_fpe_residual(full, x, sigma).abs().max() < 1e-10


@pytest.mark.parametrize("c", [0.8, 1.25])
def test_residual_of_a_mis_scheduled_gaussian_is_its_closed_form(c):
    # s = −x/v with v = a² + c²σ² (noise added at the wrong rate): σ²·r = 2σ³(c² − 1)·x/v²
    x, sigma = points()
    a = 0.7
    model = GaussianMixture(torch.zeros(1, 8, dtype=torch.float64), a)
    residual = score_fpe_residual(lambda y, s: model(y, c * s) / c, x, sigma)
    v = a**2 + (c * sigma[:, None]) ** 2
    torch.testing.assert_close(residual, 2 * sigma[:, None] ** 3 * (c**2 - 1) * x / v**2)


def test_a_rotation_added_to_exact_scores_breaks_the_equation():
    x, sigma = points()
    up, _ = up_and_down(dim=8)
    spin = torch.zeros(8, 8, dtype=torch.float64)
    spin[0, 1], spin[1, 0] = 1.0, -1.0  # ε̂ + 0.1·Ax, A antisymmetric: not a gradient field
    assert score_fpe_residual(lambda y, s: up(y, s) + 0.1 * y @ spin, x, sigma).abs().max() > 0.1


def test_per_sample_sigma_gives_the_per_row_answers():
    x, sigma = points(b=5)
    up, _ = up_and_down(dim=8)
    rows = [(up(x[i : i + 1], s.item()), up.log_prob(x[i : i + 1], s.item())) for i, s in enumerate(sigma)]
    torch.testing.assert_close(up(x, sigma), torch.cat([e for e, _ in rows]))
    torch.testing.assert_close(up.log_prob(x, sigma), torch.cat([lp for _, lp in rows]))


def test_training_with_the_fokker_planck_penalty_lowers_the_residual():
    x, y = digits_split("train")

    def trained(fp_weight):
        torch.manual_seed(0)
        net = EpsNet(width=32, depth=1)
        options = {"fp_weight": fp_weight, "fp_batch": 8, "ema_decay": 0.0, "lr": 1e-2}
        return train_eps(net, x, y, steps=60, seed=0, batch=64, **options)

    plain, regularised = fp_residual(trained(0.0), n=40), fp_residual(trained(10.0), n=40)
    assert regularised < 0.5 * plain  # measured 0.020 vs 0.061


def test_the_penalty_sees_fp_batch_images_noised_to_at_least_fp_sigma_min(monkeypatch):
    from superdiff.digits import train

    x, y = digits_split("train")

    def penalised_sigmas(sigma_min):
        seen = []
        monkeypatch.setattr(train, "fp_penalty", lambda net, x, s, labels: seen.append(s) or s.sum() * 0)
        torch.manual_seed(0)
        options = {"fp_weight": 1.0, "fp_sigma_min": sigma_min, "batch": 32}
        train_eps(EpsNet(width=16, depth=1), x, y, steps=4, seed=0, **options)
        assert len(seen) == 4 and all(len(s) == 8 for s in seen)
        return torch.cat(seen)

    everywhere, above = penalised_sigmas(0.0), penalised_sigmas(0.3)
    assert everywhere.min() < 0.3 <= above.min()  # 32 noise levels a batch, median σ ≈ 0.37


def test_the_shipped_fokker_planck_network_has_a_smaller_residual_than_the_network_it_was_tuned_from():
    from superdiff.digits import load_conditional, load_fokker_planck

    shipped, tuned = fp_residual(load_conditional(), n=40), fp_residual(load_fokker_planck(), n=40)
    assert tuned < 0.3 * shipped  # measured at n = 120: 0.010 vs 0.079


def test_and_on_the_fokker_planck_network_ends_nearer_equal_density_by_its_own_likelihood():
    from superdiff.digits import DigitModels, default_sigmas

    judge, lo = DigitModels(), default_sigmas(1)[-1].item()
    gaps = {}
    for kind in ("net", "fokker_planck"):
        for mode in ("and", "avg"):
            res, _ = judge.run(kind, (3, 8), 2.0, 200, mode, seed=0, batch=16)
            log_q3, log_q8 = judge.log_densities(kind, (3, 8), res.samples, lo)
            gaps[kind, mode] = (log_q3 - log_q8).abs().median().item()
    # measured: AND 0.86 nats on it vs 4.6 on the shipped network; averaging on it 1.9 (3 pairs: 1.1 vs 2.3)
    assert gaps["fokker_planck", "and"] < 0.5 * gaps["net", "and"], gaps
    assert gaps["fokker_planck", "and"] < gaps["fokker_planck", "avg"], gaps


# ----------------------------------------------------------------------------- Hutchinson's estimate, images


def digits_points(b: int = 6):
    """Noised held-out digits (b, 1, 8, 8), σ from 0.03 to 3, and a label-conditioned shipped network."""
    from superdiff.digits import load_conditional

    x, y = digits_split("held_out")
    sigma = torch.tensor([0.03, 0.1, 0.3, 1.0, 3.0, 0.5])[:b]
    noised = x[:b] + sigma[:, None, None, None] * torch.randn(
        b, 1, 8, 8, generator=torch.Generator().manual_seed(0)
    )
    net = load_conditional()
    return noised, sigma, lambda v, s: net(v, s, y[:b].repeat_interleave(len(v) // b))


def test_hutchinson_estimates_average_to_the_exact_residual():
    x, sigma, model = digits_points()
    exact = score_fpe_residual(model, x.flatten(1), sigma).detach()
    draws = torch.stack(
        [
            score_fpe_residual(
                model, x.flatten(1), sigma, hutchinson=8, generator=torch.Generator().manual_seed(i)
            ).detach()
            for i in range(10)
        ]
    )
    error = (draws.mean(0) - exact).norm(dim=1) / exact.norm(dim=1)
    assert error.max() < 0.15, error  # measured ≤ 0.06 with 20 draws; one draw of 8 probes: ≈ 0.2


def test_images_give_the_residual_of_their_flattened_pixels():
    x, sigma, model = digits_points(b=3)
    image = score_fpe_residual(model, x, sigma)
    assert image.shape == x.shape
    torch.testing.assert_close(image.flatten(1), score_fpe_residual(model, x.flatten(1), sigma))


def test_exact_divergence_of_latents_is_refused_before_any_model_call():
    def model(x, sigma):
        pytest.fail("the model was called")

    with pytest.raises(ValueError, match="at most 4096 values, x has 16384; pass hutchinson=k"):
        score_fpe_residual(model, torch.zeros(1, 4, 64, 64), torch.ones(1))
    with pytest.raises(ValueError, match="hutchinson"):
        score_fpe_residual(model, torch.zeros(1, 8), torch.ones(1), hutchinson=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((3, torch.zeros(2, 8), 1.0), "eps_model: expected a callable"),
        ((None, torch.zeros(2, 8), 0.0), r"sigma: expected a number or 2 values .* > 0, got \[0.0, 0.0\]"),
        ((None, torch.zeros(2, 8), torch.ones(3)), r"sigma: .* got shape \(3,\)"),
        ((None, torch.zeros(2, 8), "1"), "sigma: expected a number or 2 values"),
        ((None, torch.zeros(2, 8), [1.0, float("nan")]), "sigma: expected"),
        ((None, torch.zeros(2, 8), float("inf")), r"sigma: expected .* finite and > 0, got \[inf, inf\]"),
        ((None, torch.zeros(2, 8), torch.ones(2, 1)), r"sigma: .* got shape \(2, 1\)"),
        ((None, torch.full((2, 8), float("nan")), 1.0), "x: contains NaN"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(args, message):
    def model(x, sigma):
        pytest.fail("the model was called")

    eps_model, x, sigma = args
    with pytest.raises(ValueError, match=message):
        score_fpe_residual(eps_model or model, x, sigma)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_levels_are_the_given_sigmas_in_the_samples_dtype(dtype):
    x = torch.zeros(3, 8, dtype=dtype)
    exact = torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
    for sigma in (0.1, [0.1, 0.2, 0.3], torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)):
        s = noise_levels(sigma, x)
        assert s.dtype == dtype
        torch.testing.assert_close(s, exact if len(torch.as_tensor(sigma).shape) else exact[:1].expand(3))


def test_the_residual_differentiates_through_both_terms_to_the_models_parameters():
    """Training backpropagates the residual: d/dc of the mis-scheduled Gaussian's ‖residual‖² is its closed
    form's, 2σ³(c² − 1)·x/v² with v = a² + c²σ² (both ∂_σ s and σ·∇(∇·s + ‖s‖²) carry the graph)."""
    x, sigma = points()
    a, model = 0.7, GaussianMixture(torch.zeros(1, 8, dtype=torch.float64), 0.7)
    c = torch.tensor(1.25, dtype=torch.float64, requires_grad=True)
    residual = score_fpe_residual(lambda y, s: model(y, c * s) / c, x, sigma)
    (got,) = torch.autograd.grad(residual.square().sum(), c)
    v = a**2 + (c * sigma[:, None]) ** 2
    (expected,) = torch.autograd.grad((2 * sigma[:, None] ** 3 * (c**2 - 1) * x / v**2).square().sum(), c)
    torch.testing.assert_close(got, expected)


def test_hutchinson_residual_is_drawn_from_its_generator():
    x, sigma = points(b=3)
    up, _ = up_and_down(dim=8)  # a mixture: the divergence varies with x, so its estimate's gradient does too

    def residual(seed):
        return score_fpe_residual(up, x, sigma, hutchinson=2, generator=gen(seed)).detach()

    assert torch.equal(residual(0), residual(0)) and not torch.equal(residual(0), residual(1))


def test_a_list_of_generators_draws_each_samples_probes_from_its_own():
    """Sample i's probes come from generator i, as in the core: its row is the same alone or in a batch."""
    x, _ = points(b=3)
    sigma = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64)  # where both components of "up" have weight
    up, _ = up_and_down(dim=8)

    def residual(rows, seeds):
        gens = [gen(s) for s in seeds]
        return score_fpe_residual(up, x[rows], sigma[rows], hutchinson=4, generator=gens).detach()

    batch = residual([0, 1, 2], [10, 11, 12])
    for i in range(3):
        torch.testing.assert_close(batch[i], residual([i], [10 + i])[0], rtol=1e-9, atol=1e-12)
    assert ((batch - residual([0, 1, 2], [11, 12, 10])).norm(dim=1) > 1e-3).all()  # the probes matter


def test_one_sigma_for_the_batch_is_that_sigma_for_every_sample():
    x, _ = points(b=3)
    mix = GaussianMixture(torch.zeros(1, 8, dtype=torch.float64) + 0.5, 1.0)
    model = lambda x, sigma: 1.3 * mix(x, sigma)  # noqa: E731 (mis-scheduled: a non-zero residual)
    torch.testing.assert_close(
        score_fpe_residual(model, x, 0.7), score_fpe_residual(model, x, torch.full((3,), 0.7))
    )


# ----------------------------------------------------------------------------- SD: ε̂ as a function of σ


@pytest.mark.parametrize(
    "prediction_type, atol", [("epsilon", 1e-5), ("v_prediction", 1e-5), ("sample", 2e-4)]
)
def test_sd_eps_model_is_the_pipelines_unguided_prediction_on_its_grid(prediction_type, atol):
    from superdiff.testing import tiny_pipeline

    pipe = tiny_pipeline(prediction_type=prediction_type)
    eps = pipe.eps_model("a cat")
    sigmas, timesteps = pipe.sigma_grid(10)
    context = pipe.prompt_context(["a cat", "a dog"], "cpu", 64, 64)
    predictor = pipe.make_predictor(context, 2, 7.5, sigmas, timesteps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        for sigma in sigmas[:-1].tolist():
            expected = predictor(sigma * x, sigma).eps[0]  # prompt 1, unguided
            got = eps(sigma * x, torch.full((2,), sigma, dtype=torch.float64))
            torch.testing.assert_close(got, expected, atol=atol, rtol=0)  # measured ≤ 1.7e-6, 4.6e-5 (x₀)


def test_sd_eps_model_is_differentiable_in_sigma_and_refuses_sigma_outside_training():
    from superdiff.pipeline_superdiff import training_sigmas
    from superdiff.testing import tiny_pipeline

    pipe = tiny_pipeline()
    eps = pipe.eps_model("a cat")
    train = training_sigmas(pipe.scheduler).double()
    at = torch.tensor([300, 900])  # σ mid-way between training timesteps: t(σ) is linear around them
    sigma = ((train[at] + train[at + 1]) / 2).requires_grad_(True)
    h = (train[at + 1] - train[at]) / 100  # Δt = 0.01: the time embedding oscillates once per unit of t
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (autograd,) = torch.autograd.grad((eps(x, sigma) * w).sum(), sigma)
    with torch.no_grad():
        step = torch.diag(h)
        central = [((eps(x, sigma + e) - eps(x, sigma - e)) * w).sum() / (2 * e.sum()) for e in step]
    torch.testing.assert_close(autograd, torch.stack(central), rtol=5e-3, atol=0)  # float32 UNet: 1e-3
    with pytest.raises(ValueError, match=r"sigma: expected values in \[0.02917, 14.61\]"):
        eps(x, torch.tensor([20.0, 1.0], dtype=torch.float64))


def test_sd_residual_from_probes_matches_the_exact_one():
    from superdiff.testing import tiny_pipeline

    eps = tiny_pipeline().eps_model("a cat")
    x = 3 * torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # 32²
    sigma = torch.tensor([2.0], dtype=torch.float64)
    exact = score_fpe_residual(eps, x, sigma).detach()
    probed = score_fpe_residual(eps, x, sigma, hutchinson=64, generator=torch.Generator().manual_seed(0))
    assert exact.abs().max() > 1  # random weights: far from the equation
    assert (probed.detach() - exact).norm() < 0.1 * exact.norm()  # measured 0.009 with 16 × 4 probes


def test_fp_residual_is_the_mean_over_samples_when_the_last_part_is_shorter(monkeypatch):
    """It averaged the parts' means with equal weight: with n = 50 (parts of 40 and 10) a part's mean of
    its size gave (40 + 10)/2 = 25 where the mean over samples is (40·40 + 10·10)/50 = 34."""
    import superdiff.and_study

    monkeypatch.setattr(
        superdiff.and_study, "fp_penalty", lambda net, x, sigma, y: torch.tensor(len(x) * 1.0)
    )
    assert fp_residual(None, n=50) == pytest.approx(34.0)
