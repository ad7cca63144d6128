"""Cost of AND's curvature terms (``superpose(..., curvature=True)``): seconds per run with and without them,
side by side in one process, on the shipped digits networks and on exact Gaussian models (README, "AND
favours the sharper model"; superpose's docstring).

    python benchmarks/bench_curvature.py --threads 1    # ≈ 30 s on CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from superdiff import geometric_sigmas, superpose
from superdiff.digits import default_sigmas, load_half_models
from superdiff.toy import GaussianMixture, up_and_down


def seconds(models, x, sigmas, repeats: int, **options) -> float:
    """The fastest of ``repeats`` AND runs."""
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        superpose(models, x, sigmas, generator=torch.Generator().manual_seed(0), **options)
        best = min(best, time.perf_counter() - tic)
    return best


def cases(batch: int) -> dict:
    """name -> (two models, x at σ_max, σ grid)."""
    g = torch.Generator().manual_seed(0)
    digits, toy = default_sigmas(50), geometric_sigmas(20.0, 0.01, 100)
    widths = [GaussianMixture([[0.0, 0.0]], 0.4), GaussianMixture([[1.0, 0.0]], 0.2)]
    return {
        "digits networks (8×8)": (
            list(load_half_models()),
            digits[0] * torch.randn(batch, 1, 8, 8, generator=g),
            digits,
        ),
        "Gaussians of std 0.4, 0.2 (2-d)": (widths, 20 * torch.randn(batch, 2, generator=g).double(), toy),
        "2-component mixtures (16-d)": (
            list(up_and_down(dim=16)),
            20 * torch.randn(batch, 16, generator=g).double(),
            toy,
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), fastest of {args.repeats} runs")
    for name, (models, x, sigmas) in cases(args.batch).items():
        plain = seconds(models, x, sigmas, args.repeats)
        curved = seconds(models, x, sigmas, args.repeats, curvature=True)
        times = f"plain AND {plain:.3f} s, curvature=True {curved:.3f} s ({curved / plain:.2f}×)"
        print(f"{name}: {len(sigmas) - 1} steps, {times}")


if __name__ == "__main__":
    main()
