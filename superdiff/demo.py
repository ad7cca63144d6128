"""``superdiff demo``: the offline default — the paper's 2-D toy (and the digits models) superposed on CPU."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from . import viz
from ._io import check_targets, check_writable, png, text, user_path, write_atomically
from ._torch import gen
from .and_study import mean_sd
from .digits.demo import DPI, JUDGED, JUDGED_BATCH, JUDGED_STEPS, digits_figures, judged_gaps
from .limits import LIMITS, MAX_SEED
from .pipeline_common import check_int
from .sampling import geometric_sigmas, superpose
from .toy import up_and_down

SIGMA_MAX, SIGMA_MIN = 20.0, 0.01  # the toy's σ grid: from pure noise to nearly clean data
FILES = ["toy_superposition.png", "digits_and.png", "digits_or.png", "equal_density.txt"]
TOY_DPI = 110


def toy_runs(steps: int = 500, batch: int = 500, seed: int = 0) -> dict:
    """Samples of "up", "down" and their OR, AND and average, all from the same initial noise."""
    up, down = up_and_down()
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, steps)
    x = sigmas[0] * torch.randn(batch, 2, generator=gen(seed), dtype=torch.float64)
    setups = {
        "up": ([up], "and"),
        "down": ([down], "and"),
        "OR": ([up, down], "or"),
        "AND": ([up, down], "and"),
        "average": ([up, down], "avg"),
    }
    return {
        name: superpose(models, x, sigmas, mode=mode, generator=gen(seed + 1))
        for name, (models, mode) in setups.items()
    }


def toy_figure(runs: dict):
    """Scatter of each run over the exact densities, then κ over σ for OR and AND and the AND/avg gap."""
    models = up_and_down()
    fig = plt.figure(figsize=(17, 7))
    grid = fig.add_gridspec(2, 5, height_ratios=[1.1, 1])
    for k, (name, r) in enumerate(runs.items()):
        viz.scatter_over_models(r.samples, models, SIGMA_MIN, ax=fig.add_subplot(grid[0, k]), title=name)
    labels = ["up", "down"]
    kappa_panels = {
        "OR": ("κ(up) = softmax of the log-density traces", grid[1, 0:2]),
        "AND": ("κ(up) that keeps the densities equal", grid[1, 2:4]),
    }
    for name, (title, slot) in kappa_panels.items():
        viz.plot_kappa(
            runs[name].kappa,
            runs[name].sigmas,
            labels=labels,
            ax=fig.add_subplot(slot),
            title=f"{name}: {title}",
        )
    ax = fig.add_subplot(grid[1, 4])
    for color, name in enumerate(("AND", "average")):
        viz.plot_log_q(
            runs[name].log_q,
            runs[name].sigmas,
            labels=labels,
            gap=True,
            name=name,
            color=color,
            ax=ax,
            title="estimated density gap: AND vs average",
        )
    fig.suptitle("SuperDiff on the paper's 2-D toy: two models, their OR, AND and plain average", fontsize=13)
    fig.tight_layout()
    return fig


def toy_gap(runs: dict, name: str) -> float:
    """Median exact |log q_up − log q_down| of a toy run's samples."""
    up, down = up_and_down()
    x = runs[name].samples
    return (up.log_prob(x, SIGMA_MIN) - down.log_prob(x, SIGMA_MIN)).abs().median().item()


def equal_density_report(
    runs: dict, digits: dict, seed: int, batch: int = JUDGED_BATCH, steps: int = JUDGED_STEPS
) -> str:
    """Does AND reach equal density? The gaps of AND and averaging by each model's own density (the toy's
    ``runs``; the digits' gaps per seed from ``seed`` on, of ``batch`` samples in ``steps`` steps)."""
    how = {"net": "PF-ODE likelihood", "fokker_planck": "PF-ODE likelihood", "gaussian": "exact"}
    rows = [("toy “up” & “down”", "exact", f"{toy_gap(runs, 'AND'):.1f}", f"{toy_gap(runs, 'average'):.1f}")]
    rows += [
        (f"digits “3” & “8”: {JUDGED[m]}", how[m], mean_sd(g["and"], 1), mean_sd(g["avg"], 1))
        for m, g in digits.items()
    ]
    seeds = f"{seed}–{seed + len(next(iter(digits.values()))['and']) - 1}"
    head = f"  {'models':<40} {'judged by':<18} {'AND':>9} {'averaging':>10}"
    lines = [f"  {name:<40} {judge:<18} {a:>9} {b:>10}" for name, judge, a, b in rows]
    return "\n".join(
        [
            "Equal density? AND keeps the Itô estimates of log q_1 and log q_2 equal; the median",
            "|log q_1 − log q_2| of the samples by each model's own density, in nats (toy: "
            f"{len(runs['AND'].samples)} samples,",
            f"{len(runs['AND'].sigmas) - 1} steps, seed {seed}; digits: {batch} samples at each of seeds "
            f"{seeds}, {steps} steps; mean ± sd over seeds):",
            head,
            *lines,
            "Over pairs and seeds: https://github.com/superdiff-kit/superdiff-kit#what-and-achieves-measured",
        ]
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=user_path, default=Path("outputs"), help="folder for the PNG files")
    p.add_argument("--steps", type=int, default=500, help=f"sampling steps for the toy (1 to {LIMITS.steps})")
    p.add_argument("--seed", type=int, default=0, help=f"0 to {MAX_SEED - 2} (the digits use seed, +1, +2)")


def check_arguments(args) -> list[Path]:
    """Every check before any work; returns the files the demo writes."""
    check_int("--steps", args.steps, 1, high=LIMITS.steps)
    check_int("--seed", args.seed, 0, high=MAX_SEED - 2)
    check_writable(args.out, "--out")
    paths = [args.out / name for name in FILES]
    check_targets(paths, "--out")  # else the write would fail after minutes of sampling
    return paths


def demo(args) -> tuple[list[Path], str]:
    """Sample, judge and plot, then write every file at once (an error leaves none): (paths, report)."""
    paths, figures = check_arguments(args), {}
    try:
        runs = toy_runs(args.steps, seed=args.seed)
        figures["toy_superposition.png"] = (toy_figure(runs), TOY_DPI)
        figures.update((name, (fig, DPI)) for name, fig in digits_figures(args.seed).items())
        report = equal_density_report(runs, judged_gaps(seeds=range(args.seed, args.seed + 3)), args.seed)
        writers = {name: png(fig, dpi) for name, (fig, dpi) in figures.items()}
        writers["equal_density.txt"] = text(report + "\n")
        write_atomically([(path, writers[path.name]) for path in paths])
    finally:
        for fig, _ in figures.values():
            plt.close(fig)
    return paths, report


def run(args) -> int:
    """Entry point of ``superdiff demo``: 0 on success, 2 with a one-line message on bad input."""
    start = time.perf_counter()
    try:
        written, report = demo(args)
    except (ValueError, OSError) as err:  # bad arguments, unwritable folder
        print(f"superdiff demo: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(report)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0
