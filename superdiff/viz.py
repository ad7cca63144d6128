"""Matplotlib plots for SuperDiff: κ over σ, log-density traces, 2-D samples, image grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from ._io import png, write_atomically


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(5, 3.2))[1]


def plain(text) -> str:
    """Text (a prompt) that matplotlib shows as written: a "$" must not start mathtext."""
    return str(text).replace("$", r"\$")


def _labels(labels, n_models: int) -> list[str]:
    """Legend names as plain text."""
    return (
        [plain(label) for label in labels]
        if labels is not None
        else [f"model {i + 1}" for i in range(n_models)]
    )


def _sigma_axis(ax, title: str, ylabel: str) -> None:
    """σ decreases as sampling proceeds: log scale, inverted so time runs left to right."""
    ax.set_xscale("log")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel("noise level σ (sampling runs left → right)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_kappa(
    kappa: Tensor,
    sigmas: Tensor,
    *,
    labels: Sequence[str] | None = None,
    trajectories: int = 8,
    window: int | None = None,
    ax=None,
    title: str = "mixing weights κ over σ",
):
    """κ_i at each step: thin lines for a few trajectories, thick for the batch mean; one colour per model.

    ``window``: plot the running mean of κ over that many steps instead, weighted by |dσ| as the steps
    move x (AND's per-step κ carries noise of size O(1/√|dσ|) that averages out along the path).
    The y-range is fitted to the 1–99% quantiles, so rare AND steps with extreme κ do not flatten the plot.
    """
    kappa = torch.as_tensor(kappa).detach().float().cpu()
    n_sigmas = len(torch.as_tensor(sigmas).flatten())
    if kappa.ndim != 3 or n_sigmas != len(kappa) + 1:
        raise ValueError(
            f"kappa, sigmas: expected κ (n, B, N) and the n + 1 σ of its run (result.kappa, result.sigmas), "
            f"got shapes {tuple(kappa.shape)} and ({n_sigmas},)"
        )
    if isinstance(trajectories, bool) or not isinstance(trajectories, int) or trajectories < 1:
        raise ValueError(f"trajectories: expected an integer >= 1, got {trajectories!r}")
    ax = _axes(ax)
    if window is not None:
        kappa = running_mean(kappa, sigmas, window)
    s = torch.as_tensor(sigmas, dtype=torch.float64)[:-1].numpy()  # κ_k is used on the step from σ_k
    n_models = kappa.shape[-1]
    shown = list(range(n_models)) if n_models > 2 else [0]  # for two models κ_2 = 1 − κ_1
    names = _labels(labels, n_models)
    for i in shown:
        for b in range(min(trajectories, kappa.shape[1])):
            ax.plot(s, kappa[:, b, i].numpy(), color=f"C{i}", lw=0.6, alpha=0.35)
        ax.plot(
            s, kappa[:, :, i].mean(dim=1).numpy(), color=f"C{i}", lw=2, label=f"κ of {names[i]} (batch mean)"
        )
    ax.axhline(1.0 / n_models, color="gray", ls=":", lw=1, label="1/N (averaging)")
    shown_values = kappa[:, :trajectories, shown].flatten().numpy()
    lo, hi = np.quantile(shown_values, [0.01, 0.99]).tolist()  # torch.quantile refuses over 2²⁴ values
    pad = 0.05 * max(hi - lo, 1.0)
    ax.set_ylim(min(lo, 0.0) - pad, max(hi, 1.0) + pad)
    _sigma_axis(ax, title, "κ")
    ax.legend(fontsize=8)
    return ax


def running_mean(kappa: Tensor, sigmas, window: int) -> Tensor:
    """The |dσ|-weighted mean of κ (n, B, N) over the last ``window`` steps up to each step."""
    n = kappa.shape[0]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= n:
        raise ValueError(f"window: expected an integer from 1 to the number of steps ({n}), got {window!r}")
    w = torch.as_tensor(sigmas, dtype=torch.float64).diff().abs()[:, None, None]  # (n, 1, 1)
    cum = torch.cat([torch.zeros_like(kappa[:1], dtype=torch.float64), (w * kappa).cumsum(0)])
    cum_w = torch.cat([torch.zeros_like(w[:1]), w.cumsum(0)])
    start = (torch.arange(1, n + 1) - window).clamp_min(0)
    return ((cum[1:] - cum[start]) / (cum_w[1:] - cum_w[start])).to(kappa.dtype)


def plot_log_q(
    log_q: Tensor,
    sigmas: Tensor,
    *,
    labels: Sequence[str] | None = None,
    gap: bool = False,
    name: str | None = None,
    color: int = 0,
    ax=None,
    title: str | None = None,
):
    """Itô estimates of log q_i over σ (batch median with 10–90% band), or the gap log q_1 − log q_2.

    ``name`` prefixes the legend (e.g. the mode) and ``color`` picks the first colour, to overlay runs.
    """
    ax = _axes(ax)
    log_q = torch.as_tensor(log_q).detach().double().cpu()
    s = torch.as_tensor(sigmas, dtype=torch.float64).numpy()
    names = _labels(labels, log_q.shape[-1])
    prefix = f"{name}: " if name else ""
    series = (
        [(log_q[..., 0] - log_q[..., 1], f"{prefix}log q({names[0]}) − log q({names[1]})")]
        if gap
        else [(log_q[..., i], f"{prefix}log q({label})") for i, label in enumerate(names)]
    )
    for i, (y, label) in enumerate(series, start=color):
        lo, mid, hi = (torch.quantile(y, q, dim=1).numpy() for q in (0.1, 0.5, 0.9))
        ax.plot(s, mid, color=f"C{i}", lw=2, label=label)
        ax.fill_between(s, lo, hi, color=f"C{i}", alpha=0.2)
    band = "shaded: 10–90 % of samples"
    if band not in ax.get_legend_handles_labels()[1]:  # once when runs are overlaid
        ax.fill_between([], [], color="gray", alpha=0.2, label=band)
    default = "log-density gap along trajectories" if gap else "estimated log-densities along trajectories"
    _sigma_axis(ax, title or default, "nats")
    ax.legend(fontsize=8)
    return ax


def scatter_2d(samples: Tensor, *, ax=None, title: str = "", color: str = "C0", lim: float = 3.5):
    """2-D samples as a scatter plot on a fixed square window."""
    ax = _axes(ax)
    xy = torch.as_tensor(samples).detach().double().cpu().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, color=color)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title, xlabel="$x_1$", ylabel="$x_2$")
    return ax


def density_contours(log_prob, *, ax, lim: float = 3.5, color: str = "gray", n: int = 120):
    """Contours of an exact 2-D density given as ``log_prob(points) -> (M,)``."""
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    z = log_prob(torch.stack([xx.flatten(), yy.flatten()], -1)).exp().reshape(n, n)
    ax.contour(xx.numpy(), yy.numpy(), z.numpy(), levels=5, colors=color, linewidths=0.6, alpha=0.6)
    return ax


def scatter_over_models(samples: Tensor, models, sigma: float, *, ax=None, title: str = "", lim: float = 3.5):
    """2-D samples (black) over the exact density contours of each model (C0, C1, ...) at noise level σ."""
    ax = _axes(ax)
    for i, model in enumerate(models):
        density_contours(lambda p, m=model: m.log_prob(p, sigma), ax=ax, color=f"C{i}", lim=lim)
    return scatter_2d(samples, ax=ax, title=title, color="k", lim=lim)


def image_grid(images, *, titles: Sequence[str] | None = None, ncols: int | None = None, size: float = 2.0):
    """A figure with images (B, H, W, 3) uint8 (tensor, array or PIL list) in a grid, optional titles."""
    arrays = [np.asarray(im.cpu() if isinstance(im, Tensor) else im) for im in images]
    if not arrays:
        raise ValueError("images: expected at least one image, got none")
    ncols = ncols or min(len(arrays), 6)
    nrows = -(-len(arrays) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3 * (titles is not None)))
    for k, ax in enumerate(np.atleast_1d(axes).flat):
        ax.axis("off")
        if k < len(arrays):
            ax.imshow(arrays[k], cmap="gray" if arrays[k].ndim == 2 else None)
            if titles is not None and k < len(titles):
                ax.set_title(titles[k], fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically (temp file + rename: nothing half-written) and close it."""
    path = Path(path)
    try:
        write_atomically([(path, png(fig, dpi))])
    finally:
        plt.close(fig)
    return path
