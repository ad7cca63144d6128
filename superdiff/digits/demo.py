"""Digits figures for ``superdiff demo``: an AND grid and an OR grid with their κ plots (≈ 10 s on CPU)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from .._torch import one_thread
from ..viz import plot_kappa, save_figure
from .densities import log_densities
from .model import default_sigmas, label_of, load_half_models
from .pipeline import load_pipeline, sample

DPI = 80  # the digits figures' resolution
JUDGED = {
    "net": "trained network",
    "fokker_planck": "Fokker–Planck network",
    "gaussian": "Gaussian per digit",
}
# samples per seed and sampling steps of the judged AND and averaging runs
JUDGED_BATCH, JUDGED_STEPS = 16, 200


def mosaic(samples: Tensor, ncols: int = 8, gap: int = 1) -> Tensor:
    """(B, 1, 8, 8) in [−1, 1] -> one (H, W) image in [0, 1] with a gap between digits."""
    b = samples.shape[0]
    nrows = -(-b // ncols)
    size = samples.shape[-1] + gap
    out = torch.ones(nrows * size + gap, ncols * size + gap)
    for k in range(b):
        r, c = divmod(k, ncols)
        out[gap + r * size : (r + 1) * size, gap + c * size : (c + 1) * size] = (
            1 - samples[k, 0].clamp(-1, 1)
        ) / 2
    return out  # ink dark on white


def kappa_grid(samples: Tensor, kappa: Tensor, sigmas: Tensor, labels, title: str):
    """A figure: the digits on the left, κ over σ on the right."""
    fig, (ax_img, ax_k) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1, 1.3]})
    ax_img.imshow(mosaic(samples).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax_img.set_title(title, fontsize=10)
    ax_img.axis("off")
    plot_kappa(kappa, sigmas, labels=labels, ax=ax_k)
    fig.tight_layout()
    return fig


def grid_with_kappa(samples: Tensor, kappa: Tensor, sigmas: Tensor, labels, title: str, path: Path) -> Path:
    """Save :func:`kappa_grid` as a PNG."""
    return save_figure(kappa_grid(samples, kappa, sigmas, labels, title), path, dpi=DPI)


def and_figure(prompts=("3", "8"), batch: int = 16, seed: int = 0):
    """SuperDiff AND of two digit prompts with the conditional model."""
    out = load_pipeline()(*prompts, seed=seed, batch_size=batch, mode="and")
    title = f'SuperDiff AND: "{prompts[0]}" AND "{prompts[1]}"'
    return kappa_grid(out.samples, out.kappa, out.sigmas, [f'"{p}"' for p in prompts], title)


def or_figure(batch: int = 16, seed: int = 0):
    """SuperDiff OR of the separately trained 0–4 and 5–9 models."""
    res = sample(load_half_models(), batch, "or", seed)
    title = "SuperDiff OR: model(0–4) OR model(5–9)"
    return kappa_grid(res.samples, res.kappa, res.sigmas, ["model 0–4", "model 5–9"], title)


def digits_figures(seed: int = 0) -> dict:
    """file name -> figure: digits_and.png and digits_or.png (samples + κ over σ)."""
    with one_thread():
        return {"digits_and.png": and_figure(seed=seed), "digits_or.png": or_figure(seed=seed)}


def judged_gaps(
    prompts=("3", "8"), batch: int = JUDGED_BATCH, seeds=(0, 1, 2), steps: int = JUDGED_STEPS
) -> dict:
    """model -> {mode: [median |log q_1 − log q_2| per seed]} of AND and averaging samples, by each model's
    own density (exact for the Gaussians, else the network's PF-ODE likelihood) at the unclamped samples."""
    labels, sigma_min = [label_of(p) for p in prompts], default_sigmas(1)[-1].item()
    gaps = {model: {} for model in JUDGED}
    with one_thread():
        for model in JUDGED:
            pipe = load_pipeline(model)
            for mode in ("and", "avg"):
                runs = [
                    pipe(*prompts, seed=s, batch_size=batch, mode=mode, num_inference_steps=steps)
                    for s in seeds
                ]
                x = torch.cat([out.latents for out in runs])  # one likelihood call for all seeds: cheaper
                log_q = log_densities(pipe, labels, x, sigma_min, seed=seeds[0])
                gaps[model][mode] = [g.median().item() for g in (log_q[0] - log_q[1]).abs().split(batch)]
    return gaps
