"""Plot helpers whose numbers a student reads: the running mean of κ."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from superdiff import geometric_sigmas, superpose  # noqa: E402
from superdiff.toy import up_and_down  # noqa: E402
from superdiff.viz import image_grid, plot_kappa, plot_log_q, running_mean, scatter_2d  # noqa: E402


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


# ----------------------------------------------------------------------------- what each plot draws


def test_kappa_is_drawn_at_the_sigma_its_step_starts_from_with_the_batch_mean_and_its_label():
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0])  # 3 steps: κ_k at σ_k = 8, 4, 2
    kappa = torch.zeros(3, 3, 2)
    kappa[..., 0] = torch.tensor([0.0, 0.0, 0.9])  # per step, the batch: mean 0.3 (median 0)
    kappa[..., 1] = 1 - kappa[..., 0]
    ax = plot_kappa(kappa, sigmas, labels=["up", "down"])
    (mean_line,) = [line for line in ax.lines if line.get_label() == "κ of up (batch mean)"]
    assert list(mean_line.get_xdata()) == [8.0, 4.0, 2.0]
    assert list(mean_line.get_ydata()) == pytest.approx([0.3, 0.3, 0.3])
    assert not [line for line in ax.lines if "down" in line.get_label()]  # κ_2 = 1 − κ_1: not drawn


def test_kappa_of_three_models_draws_each_models_trajectories_and_the_one_over_n_line():
    sigmas = torch.tensor([8.0, 4.0, 2.0])
    kappa = torch.tensor([[[0.2, 0.3, 0.5]], [[0.1, 0.6, 0.3]]])  # (2 steps, 1 sample, 3 models)
    ax = plot_kappa(kappa, sigmas)
    thin = [line for line in ax.lines if line.get_linewidth() == 0.6]
    assert [list(line.get_ydata()) for line in thin] == [
        pytest.approx([0.2, 0.1]),
        pytest.approx([0.3, 0.6]),
        pytest.approx([0.5, 0.3]),
    ]
    (avg,) = [line for line in ax.lines if line.get_label() == "1/N (averaging)"]
    assert list(avg.get_ydata()) == pytest.approx([1 / 3, 1 / 3])


def test_kappa_y_range_follows_the_model_shown():
    # two models, κ_1 = 2 (κ_2 = −1, not drawn): quantiles 2 and 2, pad 0.05 → (min(2, 0) − 0.05, 2 + 0.05)
    kappa = torch.stack([torch.full((4, 2), 2.0), torch.full((4, 2), -1.0)], -1)
    ax = plot_kappa(kappa, geometric_sigmas(20.0, 0.01, 4))
    assert ax.get_ylim() == pytest.approx((-0.05, 2.05))


def test_a_window_of_every_step_is_allowed():
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0])  # |dσ| = 4, 2, 1
    kappa = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    # window 3: step k averages steps 0..k weighted by |dσ|: 4/4, 4/6, 4/7
    torch.testing.assert_close(running_mean(kappa, sigmas, 3).flatten(), torch.tensor([1.0, 4 / 6, 4 / 7]))
    plot_kappa(torch.full((3, 1, 2), 0.5), sigmas, window=3)


def test_log_q_gap_is_model_one_minus_model_two_with_its_10_to_90_band_and_colour():
    sigmas = torch.tensor([4.0, 2.0])
    log_q = torch.zeros(2, 11, 2)
    log_q[..., 0] = torch.arange(11.0) + 1  # gap per sample: 1, 2, ..., 11 → q10 = 2, median 6, q90 = 10
    ax = plot_log_q(log_q, sigmas, labels=["up", "down"], gap=True, color=2)
    (line,) = ax.lines
    assert list(line.get_ydata()) == pytest.approx([6.0, 6.0]) and line.get_color() == "C2"
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(2.0) and band.max() == pytest.approx(10.0)


def test_scatter_puts_the_first_coordinate_on_x():
    ax = scatter_2d(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    assert ax.collections[0].get_offsets().tolist() == [[1.0, -2.0], [0.5, 3.0]]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$x_1$", "$x_2$")


def test_image_grid_has_a_place_for_every_image():
    images = torch.zeros(7, 4, 4, 3, dtype=torch.uint8)
    fig = image_grid(images)  # 6 columns: 2 rows, 12 axes, 7 with an image
    assert len(fig.axes) == 12 and sum(bool(ax.get_images()) for ax in fig.axes) == 7


def test_kappa_of_a_long_run_of_three_models_is_plotted():
    """torch.quantile refuses more than 2²⁴ values: 699 051 steps × 8 trajectories × 3 models (a run the
    core allows, up to 10⁶ steps) had raised "quantile() input tensor is too large" from the y-range."""
    n = 2**24 // 24 + 1
    kappa = torch.full((n, 8, 3), 1 / 3)
    kappa[::2, :, 0] = 2.0  # half the values at 2: the 99 % quantile, and the y-range's top
    ax = plot_kappa(kappa, geometric_sigmas(20.0, 0.01, n))
    assert ax.get_ylim()[1] == pytest.approx(2.0 + 0.05 * (2.0 - 1 / 3))
