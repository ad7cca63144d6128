"""Digits experiments: ``python -m superdiff.digits.experiments [--out results-digits.md]``.

Writes the report and a figures/ folder beside it, in the working directory by default; the repository's
docs/results-digits.md is regenerated with ``make results-digits``.

1. OR of separately trained models (the paper's CIFAR-10 experiment on digits 0–4 / 5–9).
2. AND of two digit prompts vs. averaging and single prompts.
3. Class accuracy of single-prompt samples against the guidance scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from .._io import check_targets, check_writable, copy_of, scratch_folder, user_path, write_atomically
from .._torch import one_thread
from ..limits import LIMITS
from ..pipeline_common import check_int
from ..viz import save_figure
from .demo import grid_with_kappa, mosaic
from .model import (
    classifier,
    digits_split,
    load_full_model,
    load_half_models,
)
from .pipeline import GUIDANCE, STEPS, load_pipeline, sample

PAIRS = [
    ("3", "8"),
    ("1", "7"),
    ("4", "9"),
    ("0", "6"),
    ("5", "6"),
    ("3", "5"),
    ("7", "9"),
    ("2", "3"),
    ("1", "4"),
    ("0", "8"),
]
SEEDS = (0, 1, 2)
MIN_SHARE = 0.05  # a class is "covered" if it gets at least this share of the samples (uniform: 0.10)

MAX_N_OR = 20_000  # experiment 1's samples per sampler: 20× the report's


# ----------------------------------------------------------------------------- metrics


def class_histogram(samples: Tensor) -> Tensor:
    """Share of samples the classifier assigns to each digit; (10,)."""
    return torch.bincount(classifier().predict(samples), minlength=10).double() / len(samples)


def coverage(hist: Tensor, min_share: float = MIN_SHARE) -> int:
    """Number of classes with at least min_share of the samples."""
    return int((hist >= min_share).sum())


def entropy_bits(hist: Tensor) -> float:
    """Entropy of a class histogram in bits (uniform over 10 classes: 3.32)."""
    p = hist[hist > 0]
    return float(-(p * p.log2()).sum())


def frechet(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (M, d)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(cov_a)
    root_a = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()  # tr sqrt(C_a C_b)
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def fids(samples: Tensor, real: Tensor) -> tuple[float, float]:
    """(Fréchet distance in pixel space (64-d), in classifier hidden features (128-d)) to real images."""
    clf = classifier()
    with torch.no_grad():
        return frechet(samples.clamp(-1, 1), real), frechet(
            clf.features(samples.clamp(-1, 1)), clf.features(real)
        )


# ----------------------------------------------------------------------------- experiment 1: OR


def experiment_or(n: int, seed: int, fig_dir: Path) -> tuple[str, list[Path]]:
    """Models trained on digits 0–4 and 5–9, alone, OR-ed, averaged, and the all-digits model."""
    m04, m59 = load_half_models()
    runs = {
        "model 0–4 alone": ([m04], "avg"),
        "model 5–9 alone": ([m59], "avg"),
        "SuperDiff OR (0–4, 5–9)": ([m04, m59], "or"),
        "average κ = ½ (0–4, 5–9)": ([m04, m59], "avg"),
        "all-digits model (reference)": ([load_full_model()], "avg"),
    }
    real, _ = digits_split("held_out")
    train, _ = digits_split("train")
    rows, hists, grids, or_result = [], {}, {}, None
    for name, (models, mode) in runs.items():
        res = sample(models, n, mode, seed)
        hist = class_histogram(res.samples)
        hists[name], grids[name] = hist, res.samples[:24]
        fd_pix, fd_feat = fids(res.samples, real)
        rows.append(
            f"| {name} | {coverage(hist)} | {entropy_bits(hist):.2f} | {fd_pix:.1f} | {fd_feat:.1f} | "
            + " ".join(f"{100 * h:.0f}" for h in hist)
            + " |"
        )
        if mode == "or":
            or_result = res
    fd_pix, fd_feat = fids(train, real)
    hist = class_histogram(train)
    rows.append(
        f"| real training digits (floor, {len(train)} images) | {coverage(hist)} | {entropy_bits(hist):.2f} "
        f"| {fd_pix:.1f} | {fd_feat:.1f} | " + " ".join(f"{100 * h:.0f}" for h in hist) + " |"
    )
    kappa_end = or_result.kappa[-1, :, 0]
    figs = [
        or_grid(grids, fig_dir / "digits_or_samples.png"),
        class_bars(hists, fig_dir / "digits_or_classes.png"),
        grid_with_kappa(
            or_result.samples[:32],
            or_result.kappa,
            or_result.sigmas,
            ["model 0–4", "model 5–9"],
            "SuperDiff OR: model(0–4) OR model(5–9)",
            fig_dir / "digits_or_kappa.png",
        ),
    ]
    table = "\n".join(
        [
            "| samples | coverage (classes ≥ 5%) | entropy (bits) | FD pixels (64-d) "
            "| FD classifier features (128-d) | class shares % (0 … 9) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    pred = classifier().predict(or_result.samples)
    agree = ((kappa_end > 0.5) == (pred <= 4)).double().mean().item()
    note = (
        f'Final OR weight κ(model 0–4) > ½ agrees with the classifier\'s "digit ≤ 4" on {100 * agree:.0f}% '
        f"of the OR samples (median final κ(0–4) = {kappa_end.median():.2f}; κ saturates to 0/1 as the "
        "Itô densities separate)."
    )
    return table + "\n\n" + note, figs


def or_grid(grids: dict, path: Path) -> Path:
    """One row of digits per sampler."""
    fig, axes = plt.subplots(len(grids), 1, figsize=(7, 1.25 * len(grids)))
    for ax, (name, samples) in zip(axes, grids.items(), strict=True):
        ax.imshow(mosaic(samples, ncols=24).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


def class_bars(hists: dict, path: Path) -> Path:
    """Grouped bars: class shares per sampler."""
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(hists)
    for k, (name, hist) in enumerate(hists.items()):
        ax.bar(torch.arange(10) + (k - len(hists) / 2 + 0.5) * width, 100 * hist.numpy(), width, label=name)
    ax.set(
        xticks=range(10),
        xlabel="digit (by the evaluation classifier)",
        ylabel="share of samples (%)",
        title="Which digits each sampler produces",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


# ----------------------------------------------------------------------------- experiment 2: AND


def pair_scores(samples: Tensor, a: int, b: int) -> tuple[float, float]:
    """(mean min(p_a, p_b), mean (p_a + p_b)/2) under the classifier."""
    p = classifier().predict_proba(samples)
    return p[:, [a, b]].min(-1).values.mean().item(), p[:, [a, b]].mean(-1).mean().item()


def experiment_and(batch: int, fig_dir: Path) -> tuple[str, list[Path]]:
    """SuperDiff AND vs. averaging vs. each prompt alone on digit pairs, several seeds."""
    pipe = load_pipeline()
    methods = {
        "SuperDiff AND": "and",
        "average": "avg",
        "prompt a alone": "prompt_1",
        "prompt b alone": "prompt_2",
    }
    scores = {m: torch.zeros(len(PAIRS), len(SEEDS), 2) for m in methods}
    for i, (a, b) in enumerate(PAIRS):
        for j, seed in enumerate(SEEDS):
            for m, mode in methods.items():
                out = pipe(a, b, seed=seed, batch_size=batch, mode=mode)
                scores[m][i, j] = torch.tensor(pair_scores(out.samples, int(a), int(b)))
    head = "| pair | " + " | ".join(f"{m}: min / mean" for m in methods) + " |"
    rows = [head, "|---|" + "---|" * len(methods)]
    for i, (a, b) in enumerate(PAIRS):
        cells = [f"{scores[m][i, :, 0].mean():.2f} / {scores[m][i, :, 1].mean():.2f}" for m in methods]
        rows.append(f"| {a} & {b} | " + " | ".join(cells) + " |")
    means = {m: scores[m].mean(0) for m in methods}  # per seed, averaged over pairs: (seeds, 2)
    cells = [
        f"**{means[m][:, 0].mean():.3f} ± {means[m][:, 0].std():.3f} / {means[m][:, 1].mean():.3f}**"
        for m in methods
    ]
    rows.append("| all pairs (mean ± sd over seeds) | " + " | ".join(cells) + " |")
    wins = (scores["SuperDiff AND"][..., 0].mean(1) > scores["average"][..., 0].mean(1)).sum().item()
    summary = f"SuperDiff AND has a higher mean min(p_a, p_b) than averaging on {wins} of {len(PAIRS)} pairs."
    figs = []
    for a, b in PAIRS[:3]:
        out = pipe(a, b, seed=0, batch_size=32, mode="and")
        figs.append(
            grid_with_kappa(
                out.samples,
                out.kappa,
                out.sigmas,
                [f'"{a}"', f'"{b}"'],
                f'SuperDiff AND: "{a}" AND "{b}"',
                fig_dir / f"digits_and_{a}{b}.png",
            )
        )
    figs.append(and_compare(pipe, fig_dir / "digits_and_compare.png"))
    return "\n".join(rows) + "\n\n" + summary, figs


def and_compare(pipe, path: Path, pairs=PAIRS[:4], n: int = 12) -> Path:
    """Rows: for each pair, prompt a alone, prompt b alone, average, AND (same seed)."""
    modes = [("prompt_1", "a alone"), ("prompt_2", "b alone"), ("avg", "average"), ("and", "SuperDiff AND")]
    fig, axes = plt.subplots(len(pairs), len(modes), figsize=(11, 1.1 * len(pairs) + 0.4))
    for r, (a, b) in enumerate(pairs):
        for c, (mode, label) in enumerate(modes):
            out = pipe(a, b, seed=0, batch_size=n, mode=mode)
            axes[r, c].imshow(
                mosaic(out.samples, ncols=n).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
            )
            axes[r, c].set_title(f'"{a}" & "{b}": {label}', fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


# ----------------------------------------------------------------------------- experiment 3: accuracy


def conditional_accuracy(pipe, guidance_scale: float, batch: int, seed: int = 0) -> Tensor:
    """Per-digit share of single-prompt samples the classifier labels as the prompt; (10,)."""
    clf = classifier()
    acc = torch.zeros(10)
    for d in range(10):
        out = pipe(str(d), seed=seed + d, batch_size=batch, guidance_scale=guidance_scale)
        acc[d] = (clf.predict(out.samples) == d).float().mean()
    return acc


def experiment_accuracy(batch: int) -> str:
    """Accuracy of single-prompt samples for a few guidance scales (default marked)."""
    pipe = load_pipeline()
    rows = ["| guidance w | accuracy | per digit % (0 … 9) |", "|---|---|---|"]
    for w in sorted({1.0, 1.5, GUIDANCE, 3.0, 4.0}):
        acc = conditional_accuracy(pipe, w, batch)
        mark = " (default)" if w == GUIDANCE else ""
        rows.append(
            f"| {w:g}{mark} | {100 * acc.mean():.1f}% | " + " ".join(f"{100 * a:.0f}" for a in acc) + " |"
        )
    return "\n".join(rows)


# ----------------------------------------------------------------------------- report


def report(n_or: int, batch_and: int, batch_acc: int, out: Path, fig_dir: Path) -> Path:
    """Run the three experiments, then write the markdown report and its figures together."""
    with scratch_folder(out.parent, ".figures.") as staging:
        text, figs = experiments(n_or, batch_and, batch_acc, out, staging)
        writes = [(fig_dir / p.name, copy_of(p)) for p in figs]
        write_atomically([*writes, (out, lambda path: path.write_text(text, encoding="utf-8"))])
    return out


def experiments(
    n_or: int, batch_and: int, batch_acc: int, out: Path, fig_dir: Path
) -> tuple[str, list[Path]]:
    """The report's text and its figures (written to fig_dir)."""
    t0 = time.perf_counter()
    table_or, figs_or = experiment_or(n_or, seed=0, fig_dir=fig_dir)
    table_and, figs_and = experiment_and(batch_and, fig_dir)
    table_acc = experiment_accuracy(batch_acc)
    seconds = time.perf_counter() - t0
    rel = [Path("figures") / p.name for p in figs_or + figs_and]
    held_out, _ = digits_split("held_out")
    text = f"""# Digits results (offline, CPU)

Generated by `python -m superdiff.digits.experiments --out {out.as_posix()}` in {seconds:.0f} s on CPU
(torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)). Models: `superdiff/digits/weights/`
(its README: how they were trained). Data: scikit-learn's 8×8 digits, seeded 80/20 stratified split;
all models and the classifier saw only the training part; Fréchet distances are to the {len(held_out)}
held-out images.
Sampler: the core `superdiff.superpose`, Euler–Maruyama on `default_sigmas({STEPS})` (geometric, σ 10 → 0.01).
Classifier: `superdiff.digits.classifier()` (its held-out accuracy is in the weights README).

## 1. OR of separately trained models (paper §4.1, CIFAR-10 split into two halves)

Two unconditional models, one trained only on digits 0–4 and one only on 5–9, superposed with SuperDiff OR
(κ = softmax of the Itô log-density estimates, T = 1, equal priors), against the plain average of their
scores (κ = ½) and a model trained on all ten digits. {n_or} samples each, seed 0. Coverage = number of
classes with ≥ {100 * MIN_SHARE:.0f}% of the samples (by the classifier); entropy of the class histogram (max
log2 10 = 3.32 bits). FD = Fréchet distance to the held-out digits, in pixel space (64-d, values in [−1, 1])
and in the classifier's hidden features (128-d ReLU layer). The last row is the floor that finite samples
give: real training digits vs. held-out digits.

{table_or}

![samples]({rel[0]})
![classes]({rel[1]})
![kappa]({rel[2]})

## 2. AND of two digit prompts

The class-conditional model with classifier-free guidance w = {GUIDANCE:g}; {batch_and} samples per pair,
method and seed; seeds {", ".join(map(str, SEEDS))}. Scores from the classifier: mean of min(p_a, p_b) (both
digits at once) / mean of (p_a + p_b)/2 (either digit). "average" is κ = ½ on the guided fields; "prompt a/b
alone" follows one prompt's field. The classifier was trained on real single digits and is confident, so
min(p_a, p_b) is small for almost any image: read it as a relative score between methods. Whether AND's
densities are really equal, judged by the models' own likelihoods: [results-and.md](results-and.md).

{table_and}

{" ".join(f"![and]({p})" for p in rel[3:])}

## 3. Conditional sample quality

Single-prompt samples ({batch_acc} per digit, seed = digit), share classified as the prompted digit.

{table_acc}
"""
    return text, figs_or + figs_and


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Digits experiments: a Markdown report and its figures")
    parser.add_argument(
        "--out",
        type=user_path,
        default=Path("results-digits.md"),
        help="the report (default ./results-digits.md)",
    )
    parser.add_argument("--n-or", type=int, default=1000, help="samples per sampler in experiment 1")
    parser.add_argument("--batch-and", type=int, default=50, help="samples per pair, method and seed")
    parser.add_argument("--batch-acc", type=int, default=100, help="samples per digit in experiment 3")
    args = parser.parse_args(argv)
    fig_dir = args.out.parent / "figures"
    try:
        check_int("--n-or", args.n_or, 10, high=MAX_N_OR)
        check_int("--batch-and", args.batch_and, 1, high=LIMITS.batch_size)
        check_int("--batch-acc", args.batch_acc, 1, high=LIMITS.batch_size)
        check_writable(fig_dir, "--out")
        check_targets([args.out], "--out")
    except ValueError as err:
        parser.error(str(err))
    try:
        with one_thread():
            path = report(args.n_or, args.batch_and, args.batch_acc, args.out, fig_dir)
    except KeyboardInterrupt:
        print(
            "superdiff.digits.experiments: interrupted; the report and its figures are unchanged",
            file=sys.stderr,
        )
        return 130
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
