"""Train the digits models: ``python -m superdiff.digits.train [--out DIR] [--quick]``.

Writes to ./digits-weights by default (a variant: ./<variant>.safetensors), never into the installed
package; the shipped weights are regenerated with ``make weights`` (``--out superdiff/digits/weights``).

Seeded and deterministic on CPU (one thread; same torch version and CPU kind ⇒ same bytes). Writes each
safetensors file atomically (temp file + rename) and a README.md with the command, seed, sha256 of
every file and the classifier's held-out accuracy.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._io import check_targets, check_writable, copy_of, scratch_folder, stage, user_path, write_atomically
from .._torch import gen
from ..fokker_planck import score_fpe_residual
from .model import FILES, NULL, SEED, SIGMA_MAX, WEIGHTS, Classifier, EpsNet, digits_split, load_module

P_MEAN, P_STD = -1.0, 1.4  # log σ ~ N(P_MEAN, P_STD²) during training (EDM), covers σ ∈ [0.01, 10]
DEFAULT_OUT = "digits-weights"  # in the working directory: the installed package is not written to
P_UNCOND = 0.15  # label dropout to the null class, for classifier-free guidance
EMA_DECAY = 0.999

# name -> (digits it sees, conditional?, steps)
RUNS = {
    "conditional": (range(10), True, 5000),
    "half_0_4": (range(0, 5), False, 3000),
    "half_5_9": (range(5, 10), False, 3000),
    "full": (range(10), False, 3000),
}


# variants of the conditional model (docs/results-and.md): name -> (EpsNet options, steps, train_eps options;
# "init": start from that shipped model's weights). Only "fokker_planck" ships.
VARIANTS = {
    "conservative": ({"conservative": True}, 5000, {}),  # ε̂ = a gradient field in x (F = ∇<u, f(u)>)
    "large": ({"width": 384}, 20000, {}),  # twice as wide, four times the steps
    # the conditional network fine-tuned with the score Fokker–Planck residual as a regulariser (≈ 5 min)
    "fokker_planck": ({}, 2000, {"init": "conditional", "lr": 5e-4, "fp_weight": 10.0}),
    "fokker_planck_scratch": ({}, 5000, {"fp_weight": 10.0}),  # the penalty from random weights (≈ 12 min)
}


def train_variant(name: str, weights: Path = WEIGHTS, steps: int | None = None, **overrides) -> EpsNet:
    """Train a variant of the conditional model with the shipped run's seed and data (init from ``weights``).

    ``overrides``: train_eps options in place of the variant's own (e.g. fp_weight).
    """
    options, default_steps, train_options = VARIANTS[name]
    train_options = {**train_options, **overrides}
    x, y = digits_split("train")
    torch.manual_seed(SEED)  # the conditional run's initial-weight seed
    net = EpsNet(num_classes=10, **options)
    if init := train_options.pop("init", None):
        net.load_state_dict(load_module(init, weights).state_dict())
    return train_eps(net, x, y, steps or default_steps, seed=SEED, desc=name, **train_options)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_atomic(module: nn.Module, path: Path, meta: dict) -> None:
    """Write a module's weights + config metadata to a temp file, then rename over ``path``."""
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    # one metadata key: safetensors writes several keys in hash-map order, which would change the file's bytes
    metadata = {"superdiff": json.dumps({"config": module.config, **meta}, sort_keys=True)}
    os.replace(stage(path, lambda tmp: save_file(state, str(tmp), metadata=metadata)), path)


def check_out(out: Path, variant: str | None) -> None:
    """--out before any training: a .safetensors file path with --variant, else a folder; writable."""
    if variant:
        if out.suffix != ".safetensors":
            raise ValueError(f"--out: with --variant, a .safetensors file path, got {out}")
        check_targets([out], "--out")
        check_writable(out.parent, "--out")
    else:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: {str(out)!r} is a file, not a folder")
        check_writable(out, "--out")


def lr_at(step: int, steps: int, lr: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to 5% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train_eps(
    net: EpsNet,
    x: Tensor,
    y: Tensor,
    steps: int,
    seed: int,
    batch: int = 256,
    lr: float = 2e-3,
    desc: str = "",
    fp_weight: float = 0.0,
    fp_batch: int = 8,
    fp_sigma_min: float = 0.0,
    ema_decay: float = EMA_DECAY,
) -> EpsNet:
    """Denoising score matching on F's unit-variance target; returns the EMA copy of the weights.

    ``fp_weight`` > 0 adds that times the mean square score Fokker–Planck residual (σ²-scaled, exact
    divergence) at the first ``fp_batch`` noised images of each batch with σ ≥ ``fp_sigma_min`` (≈ 30 ms an
    image on one CPU thread).
    """
    g = gen(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    ema = copy.deepcopy(net).requires_grad_(False)
    conditional = net.label_emb is not None
    bar = tqdm(range(steps), desc=desc, mininterval=1.0)
    for step in bar:
        idx = torch.randint(len(x), (batch,), generator=g)
        x0, labels = x[idx], y[idx]
        drop = torch.rand(batch, generator=g) < P_UNCOND
        labels = torch.where(drop, torch.full_like(labels, NULL), labels) if conditional else None
        sigma = (P_MEAN + P_STD * torch.randn(batch, generator=g)).exp()
        noise = torch.randn(x0.shape, generator=g)
        x_sigma = (x0 + sigma[:, None, None, None] * noise).flatten(1)
        f = net.raw(x_sigma / (sigma.square()[:, None] + net.sigma_data**2).sqrt(), sigma, labels)
        loss = (f - net.target(x0, noise, sigma)).square().mean()
        if fp_weight:
            pick = (sigma >= fp_sigma_min).nonzero().squeeze(1)[:fp_batch]
            part = labels[pick] if conditional else None
            loss = loss + fp_weight * fp_penalty(net, x_sigma[pick], sigma[pick], part)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1 - ema_decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema.eval()


def fp_penalty(net: EpsNet, x_sigma: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
    """Mean square score Fokker–Planck residual of ``net`` at flat noised images (B, 64) of σ (B,)."""
    rows = labels.repeat_interleave(x_sigma.shape[1]) if labels is not None else None
    return score_fpe_residual(lambda x, s: net(x, s, rows), x_sigma, sigma).square().mean()


def train_classifier(x: Tensor, y: Tensor, seed: int, steps: int = 600, noise: float = 0.1) -> Classifier:
    """Full-batch AdamW; light pixel noise so that near-real samples classify well."""
    torch.manual_seed(seed)
    g = gen(seed)
    clf = Classifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in tqdm(range(steps), desc="classifier", mininterval=1.0):
        xb = x + noise * torch.randn(x.shape, generator=g)
        loss = nn.functional.cross_entropy(clf(xb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval().requires_grad_(False)


def accuracy(clf: Classifier, x: Tensor, y: Tensor) -> float:
    """Share of images classified as their label."""
    return (clf.predict(x) == y).float().mean().item()


def write_readme(out: Path, command: str, seconds: dict, acc: float) -> None:
    """README.md next to the weights: how they were made and their sha256."""
    rows = "\n".join(
        f"| `{f}` | {(out / f).stat().st_size / 1e6:.2f} MB | {seconds.get(name, 0):.0f} s "
        f"| `{sha256(out / f)}` |"
        for name, f in FILES.items()
    )
    _, fp_steps, fp_options = VARIANTS["fokker_planck"]
    text = f"""# Shipped digits weights

Trained offline on scikit-learn's bundled 8×8 digits (train part of the seeded 80/20 stratified split,
`superdiff.digits.model.digits_split`). Regenerate with:

    {command}

`{FILES["fokker_planck"]}` is the conditional model fine-tuned {fp_steps} steps with the score
Fokker–Planck residual as a penalty (weight {fp_options["fp_weight"]:g}; docs/results-and.md).

Seed: {SEED}. torch {torch.__version__}, 1 thread (bitwise reproducible with the same torch version
and CPU kind; another CPU's kernels round differently). Evaluation classifier held-out accuracy:
**{acc:.4f}** (360 held-out images).

| file | size | training time | sha256 |
|---|---|---|---|
{rows}

<!-- sha256 json: {json.dumps({f: sha256(out / f) for f in FILES.values()})} -->
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the digits models shipped with superdiff.")
    parser.add_argument(
        "--out",
        type=user_path,
        help=f"folder (default ./{DEFAULT_OUT}); with --variant a file (default ./VARIANT.safetensors)",
    )
    parser.add_argument("--quick", action="store_true", help="10× fewer steps (smoke test, not for shipping)")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        help="train only this variant of the conditional model into --out",
    )
    parser.add_argument(
        "--fp-weight",
        type=float,
        help=f"with --variant fokker_planck[_scratch]: the penalty's weight, 0–1000 "
        f"(default {VARIANTS['fokker_planck'][2]['fp_weight']:g})",
    )
    parser.add_argument(
        "--fp-sigma-min",
        type=float,
        help="with --variant fokker_planck[_scratch]: penalise only at σ ≥ this, 0–10 (default 0)",
    )
    parser.add_argument("--steps", type=int, help="with --variant: its training steps, 1–100000")
    args = parser.parse_args(argv)
    if args.steps is not None and (not args.variant or not 1 <= args.steps <= 100_000):
        parser.error(f"--steps: expected 1–100000 with --variant, got {args.steps}")
    penalised = [name for name, (_, _, options) in VARIANTS.items() if "fp_weight" in options]
    penalty = {"fp_weight": (args.fp_weight, 1000), "fp_sigma_min": (args.fp_sigma_min, SIGMA_MAX)}
    for key, (value, high) in penalty.items():
        flag = "--" + key.replace("_", "-")
        if value is not None and args.variant not in penalised:
            parser.error(f"{flag}: only with --variant {' or '.join(penalised)}")
        if value is not None and not 0 <= value <= high:  # NaN fails too
            parser.error(f"{flag}: expected 0–{high:g}, got {value}")
    args.out = args.out or Path(f"{args.variant}.safetensors" if args.variant else DEFAULT_OUT)
    try:
        check_out(args.out, args.variant)
    except ValueError as err:
        parser.error(str(err))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # thread count changes float sums; tiny nets gain little from threads
    args.overrides = {key: value for key, (value, _) in penalty.items() if value is not None}
    try:
        return train_and_write(args)
    except KeyboardInterrupt:
        print("superdiff.digits.train: interrupted; nothing in --out was changed", file=sys.stderr)
        return 130


def train_and_write(args) -> int:
    """Train what --variant (or the full set) asks for and write it to --out."""
    if args.variant:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        steps = args.steps or VARIANTS[args.variant][1]
        net = train_variant(args.variant, steps=steps, **args.overrides)
        meta = {"variant": args.variant, "steps": str(steps)}
        save_atomic(net, args.out, meta | {k: str(v) for k, v in args.overrides.items()})
        print(f"wrote {args.out}")
        return 0
    # trained in a temp folder, the set replaces the files in --out together, at the end
    with scratch_folder(args.out, ".training.") as staging:
        acc = train_set(args, staging)
        write_atomically([(args.out / f, copy_of(staging / f)) for f in [*FILES.values(), "README.md"]])
    print(f"held-out classifier accuracy {acc:.4f}; weights in {args.out}")
    return 0


def train_set(args, out: Path) -> float:
    """Every shipped network and the classifier into out, with their README; the classifier's accuracy."""
    x, y = digits_split("train")
    seconds = {}
    for k, (name, (digits, conditional, steps)) in enumerate(RUNS.items()):
        t0 = time.perf_counter()
        keep = torch.isin(y, torch.tensor(list(digits)))
        torch.manual_seed(SEED + k)  # the initial weights
        net = EpsNet(num_classes=10 if conditional else 0)
        steps = steps // 10 if args.quick else steps
        ema = train_eps(net, x[keep], y[keep], steps, seed=SEED + k, desc=name)
        save_atomic(ema, out / FILES[name], {"digits": str(list(digits)), "steps": str(steps)})
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()  # fine-tuned from the conditional model just written
    steps = VARIANTS["fokker_planck"][1] // (10 if args.quick else 1)
    net = train_variant("fokker_planck", weights=out, steps=steps)
    save_atomic(net, out / FILES["fokker_planck"], {"variant": "fokker_planck", "steps": str(steps)})
    seconds["fokker_planck"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf = train_classifier(x, y, seed=SEED)
    save_atomic(clf, out / FILES["classifier"], {})
    seconds["classifier"] = time.perf_counter() - t0
    acc = accuracy(clf, *digits_split("held_out"))
    command = f"python -m superdiff.digits.train --out {args.out.as_posix()}" + (
        " --quick" if args.quick else ""
    )
    write_readme(out, command, seconds, acc)
    print(f"trained in {sum(seconds.values()):.0f} s")
    return acc


if __name__ == "__main__":
    sys.exit(main())
