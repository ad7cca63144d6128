"""Train the digits models: ``python -m superdiff.digits.train [--out DIR] [--quick]``.

Writes to ./digits-weights by default (a variant: ./<variant>.safetensors), never into the installed
package; the shipped weights are regenerated with ``make weights`` (``--out superdiff/digits/weights``).

Seeded and deterministic on CPU (one thread; same torch version ⇒ same bytes). Writes each
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

from .model import FILES, NULL, SEED, Classifier, EpsNet, digits_split

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


# variants of the conditional model tried as AND remedies (docs/results-and.md); not shipped
VARIANTS = {
    "conservative": ({"conservative": True}, 5000),  # ε̂ = a gradient field in x (F = ∇<u, f(u)>)
    "large": ({"width": 384}, 20000),  # twice as wide, four times the steps
}


def train_variant(name: str) -> EpsNet:
    """Train a variant of the conditional model with the shipped run's seed and data."""
    options, steps = VARIANTS[name]
    x, y = digits_split("train")
    torch.manual_seed(SEED)  # the conditional run's initial-weight seed
    return train_eps(EpsNet(num_classes=10, **options), x, y, steps, seed=SEED, desc=name)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_atomic(module: nn.Module, path: Path, meta: dict) -> None:
    """Write a module's weights + config metadata to a temp file, then rename over ``path``."""
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    # one metadata key: safetensors writes several keys in hash-map order, which would change the file's bytes
    save_file(
        state, str(tmp), metadata={"superdiff": json.dumps({"config": module.config, **meta}, sort_keys=True)}
    )
    os.replace(tmp, path)


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
) -> EpsNet:
    """Denoising score matching on F's unit-variance target; returns the EMA copy of the weights."""
    g = torch.Generator().manual_seed(seed)
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
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
                p_ema.lerp_(p, 1 - EMA_DECAY)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema.eval()


def train_classifier(x: Tensor, y: Tensor, seed: int, steps: int = 600, noise: float = 0.1) -> Classifier:
    """Full-batch AdamW; light pixel noise so that near-real samples classify well."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
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
    text = f"""# Shipped digits weights

Trained offline on scikit-learn's bundled 8×8 digits (train part of the seeded 80/20 stratified split,
`superdiff.digits.model.digits_split`). Regenerate with:

    {command}

Seed: {SEED}. torch {torch.__version__}, 1 thread (bitwise reproducible with the same torch version
and CPU kind). Evaluation classifier held-out accuracy: **{acc:.4f}**
(360 held-out images).

| file | size | training time | sha256 |
|---|---|---|---|
{rows}

<!-- sha256 json: {json.dumps({f: sha256(out / f) for f in FILES.values()})} -->
"""
    tmp = out / "README.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "README.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the digits models shipped with superdiff.")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"folder (default ./{DEFAULT_OUT}); with --variant a file (default ./VARIANT.safetensors)",
    )
    parser.add_argument("--quick", action="store_true", help="10× fewer steps (smoke test, not for shipping)")
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        help="train only this variant of the conditional model into --out",
    )
    args = parser.parse_args(argv)
    args.out = args.out or Path(f"{args.variant}.safetensors" if args.variant else DEFAULT_OUT)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # thread count changes float sums; tiny nets gain little from threads
    if args.variant:
        if args.out.suffix != ".safetensors":
            parser.error(f"--out: with --variant, a .safetensors file path, got {args.out}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        net = train_variant(args.variant)
        save_atomic(net, args.out, {"variant": args.variant, "steps": str(VARIANTS[args.variant][1])})
        print(f"wrote {args.out}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    x, y = digits_split("train")
    seconds = {}
    for k, (name, (digits, conditional, steps)) in enumerate(RUNS.items()):
        t0 = time.perf_counter()
        keep = torch.isin(y, torch.tensor(list(digits)))
        torch.manual_seed(SEED + k)  # the initial weights
        net = EpsNet(num_classes=10 if conditional else 0)
        steps = steps // 10 if args.quick else steps
        ema = train_eps(net, x[keep], y[keep], steps, seed=SEED + k, desc=name)
        save_atomic(ema, args.out / FILES[name], {"digits": str(list(digits)), "steps": str(steps)})
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf = train_classifier(x, y, seed=SEED)
    save_atomic(clf, args.out / FILES["classifier"], {})
    seconds["classifier"] = time.perf_counter() - t0
    acc = accuracy(clf, *digits_split("held_out"))
    command = f"python -m superdiff.digits.train --out {args.out.as_posix()}" + (
        " --quick" if args.quick else ""
    )
    write_readme(args.out, command, seconds, acc)
    print(
        f"held-out classifier accuracy {acc:.4f}; total {sum(seconds.values()):.0f} s; weights in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
