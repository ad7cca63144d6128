"""The toy MLP eps-model: score matching learns the exact ε̂ of a mixture; bad options are named."""

import numpy as np
import pytest
import torch

from superdiff.toy import train_eps_model, up_and_down

UP, _ = up_and_down()


def eps_error(model, sigma: float) -> float:
    """Mean squared distance of the model's ε̂ from the exact one at noise σ, on samples of q_σ."""
    x = UP.sample(2000, sigma, generator=torch.Generator().manual_seed(5)).float()
    return (model(x, sigma) - UP(x, sigma)).square().mean().item()


def test_training_moves_eps_towards_the_exact_one_and_is_seeded():
    data = UP.sample(4000, generator=torch.Generator().manual_seed(0)).float()
    untrained = train_eps_model(data, steps=1, lr=1e-12)
    trained = train_eps_model(data, steps=300, seed=1)
    again = train_eps_model(data, steps=300, seed=1)
    for sigma in (0.3, 1.0, 3.0):
        assert eps_error(trained, sigma) < 0.5 * eps_error(untrained, sigma)
    x = torch.randn(8, 2)
    assert torch.equal(trained(x, 1.0), again(x, 1.0)) and not trained.training


def test_training_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_eps_model(torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), steps=2, seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": torch.zeros(1, 2)}, r"data: expected samples of shape \(N, D\) with N >= 2, got \(1, 2\)"),
        ({"data": np.zeros((4, 2))}, "data: expected samples of shape .* got ndarray"),
        ({"data": torch.full((4, 2), float("nan"))}, "data: contains NaN"),
        ({"steps": 0}, "steps: expected an integer from 1 to 1000000, got 0"),
        ({"steps": 2.5}, "steps: expected an integer"),
        ({"batch_size": 0}, "batch_size: expected an integer from 1"),
        ({"sigma_min": 0.0}, "sigma_min, sigma_max: need 0 < sigma_min < sigma_max, got 0.0, 20.0"),
        ({"sigma_min": 30.0}, "sigma_min, sigma_max: need 0 < sigma_min < sigma_max"),
        ({"sigma_max": "20"}, "sigma_min, sigma_max, lr: expected numbers"),
        ({"lr": 0.0}, "lr: expected a finite learning rate > 0, got 0.0"),
        ({"seed": "a"}, "seed: expected an integer from 0 to 2\\*\\*32 − 1, got 'a'"),
    ],
)
def test_bad_options_are_named_before_training(kwargs, message):
    args = {"data": torch.randn(16, 2)} | kwargs
    with pytest.raises(ValueError, match=message):
        train_eps_model(args.pop("data"), **args)


def test_mixture_samples_at_sigma_have_variance_std2_plus_sigma2():
    from superdiff.toy import GaussianMixture

    x = GaussianMixture([[0.0, 0.0]], 0.5).sample(
        200_000, sigma=2.0, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(x.var(0), torch.full((2,), 4.25, dtype=x.dtype), rtol=0.02, atol=0)


def test_a_component_of_weight_zero_drops_out_of_the_density():
    """Weights are documented non-negative: 0 is allowed and leaves the other component's exact log N."""
    import math

    from superdiff.toy import GaussianMixture

    mix = GaussianMixture([[0.0, 0.0], [3.0, 3.0]], 0.5, weights=[1.0, 0.0])
    var = 0.25 + 1.3**2
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = -0.5 * x.square().sum(-1) / var - math.log(2 * math.pi * var)
    torch.testing.assert_close(mix.log_prob(x, 1.3), expected)
