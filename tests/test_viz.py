"""Plot helpers whose numbers a student reads: the running mean of κ."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from superdiff import geometric_sigmas, superpose  # noqa: E402
from superdiff.toy import up_and_down  # noqa: E402
from superdiff.viz import image_grid, plot_kappa, running_mean  # noqa: E402


def test_running_mean_is_the_dsigma_weighted_mean_of_the_last_steps():
    kappa = torch.randn(12, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = geometric_sigmas(20.0, 0.01, 12)
    w = sigmas.diff().abs()
    out = running_mean(kappa, sigmas, 4)
    for k in range(12):
        lo = max(0, k - 3)
        ref = (w[lo : k + 1, None, None] * kappa[lo : k + 1]).sum(0) / w[lo : k + 1].sum()
        torch.testing.assert_close(out[k], ref)
    torch.testing.assert_close(running_mean(kappa, sigmas, 1), kappa)


def and_kappa(n: int):
    """κ(up) per step and its running mean over n/20 steps (a fixed span of σ), for σ < 1; toy AND."""
    up, down = up_and_down()
    sigmas = geometric_sigmas(20.0, 0.01, n)
    g = torch.Generator().manual_seed(0)
    x = sigmas[0] * torch.randn(100, 2, generator=g, dtype=torch.float64)
    r = superpose([up, down], x, sigmas, generator=g)
    late = sigmas[:-1] < 1.0
    return r.kappa[late, :, 0], running_mean(r.kappa, sigmas, n // 20)[late, :, 0]


def test_per_step_and_kappa_grows_as_steps_shrink_but_its_running_mean_does_not():
    (raw_400, smooth_400), (raw_1600, smooth_1600) = and_kappa(400), and_kappa(1600)
    assert 1.6 < raw_1600.std() / raw_400.std() < 2.4  # noise O(1/√|dσ|): 4× the steps, ≈ 2× the swing
    assert 0.8 < smooth_1600.std() / smooth_400.std() < 1.25
    assert smooth_400.std() < raw_400.std() / 4
    assert (smooth_1600.mean() - 0.5).abs() < 0.1  # symmetric models: equal weight on average


@pytest.mark.parametrize("window", [0, 13, 2.5, True])
def test_bad_window_names_the_argument(window):
    with pytest.raises(ValueError, match="window"):
        plot_kappa(torch.zeros(12, 2, 2), geometric_sigmas(20.0, 0.01, 12), window=window)


@pytest.mark.parametrize(
    ("kappa", "n_sigmas", "kwargs", "message"),
    [
        (
            torch.zeros(12, 2, 2),
            12,
            {},
            r"kappa, sigmas: expected κ \(n, B, N\) and the n \+ 1 σ .*\(12, 2, 2\) and \(12,\)",
        ),
        (torch.zeros(12, 2), 13, {}, r"kappa, sigmas: .*got shapes \(12, 2\) and \(13,\)"),
        (torch.zeros(12, 2, 2), 13, {"trajectories": 0}, "trajectories: expected an integer >= 1, got 0"),
    ],
)
def test_plot_kappa_names_what_does_not_fit(kappa, n_sigmas, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plot_kappa(kappa, geometric_sigmas(20.0, 0.01, n_sigmas - 1), **kwargs)


def test_log_q_legend_names_the_band_and_scatter_window_follows_lim():
    import matplotlib.pyplot as plt

    from superdiff.viz import plot_log_q, scatter_over_models

    up, down = up_and_down()
    sigmas = geometric_sigmas(20.0, 0.01, 10)
    r = superpose([up, down], sigmas[0] * torch.randn(8, 2, dtype=torch.float64), sigmas, mode="avg")
    ax = plot_log_q(r.log_q, sigmas, labels=["up", "down"])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "shaded: 10–90 % of samples" in labels and "log q(up)" in labels
    plot_log_q(r.log_q, sigmas, labels=["up", "down"], gap=True, name="avg", color=1, ax=ax)  # overlaid
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count("shaded: 10–90 % of samples") == 1 and "avg: log q(up) − log q(down)" in labels
    ax = scatter_over_models(r.samples, (up, down), 4.0, lim=12.0)
    assert ax.get_xlim() == (-12.0, 12.0) and ax.get_ylim() == (-12.0, 12.0)
    plt.close("all")


@pytest.mark.parametrize("images", [torch.zeros(0, 8, 8, 3, dtype=torch.uint8), []])
def test_an_empty_image_grid_is_refused_by_name(images):
    with pytest.raises(ValueError, match="images: expected at least one image, got none"):
        image_grid(images)
