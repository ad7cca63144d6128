"""The 8×8 digits: data split, the ε-network (EDM-preconditioned MLP), the evaluation classifier, loading."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open
from torch import Tensor, nn

from ..limits import abbreviate
from ..sampling import geometric_sigmas

WEIGHTS = Path(__file__).parent / "weights"
SEED = 0  # the train/held-out split and every training run
HELD_OUT = 0.2  # stratified share of the 1,797 images never seen in training
SIGMA_DATA = 0.85  # RMS of the pixels in [−1, 1] (EDM's σ_data)
SIGMA_MAX, SIGMA_MIN = 10.0, 0.01  # the σ range of default_sigmas (training covers it)
NULL = 10  # label of the empty prompt (classifier-free guidance)
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ----------------------------------------------------------------------------- data


@lru_cache(maxsize=1)
def _split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data / 8.0 - 1.0, dtype=torch.float32).reshape(-1, 1, 8, 8)  # 0..16 -> [−1, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=HELD_OUT, random_state=SEED, stratify=d.target
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def digits_split(part: str = "train") -> tuple[Tensor, Tensor]:
    """(images (M, 1, 8, 8) in [−1, 1], labels (M,)) of the fixed seeded 80/20 stratified split."""
    x_tr, y_tr, x_te, y_te = _split()
    if part == "train":
        return x_tr.clone(), y_tr.clone()
    if part == "held_out":
        return x_te.clone(), y_te.clone()
    raise ValueError(f"part: expected 'train' or 'held_out', got {part!r}")


def default_sigmas(n: int) -> Tensor:
    """The decreasing σ grid (n + 1 values, geometric from 10 to 0.01) the digit models were trained for."""
    return geometric_sigmas(SIGMA_MAX, SIGMA_MIN, n)


# ----------------------------------------------------------------------------- the ε-network


class EpsNet(nn.Module):
    """ε̂(x, σ[, label]) on (B, 1, 8, 8): a residual MLP with EDM preconditioning.

    ε̂ = σ/(σ² + σ_d²)·x − σ_d/sqrt(σ² + σ_d²)·F(x/sqrt(σ² + σ_d²), log σ, label), so that F's
    regression target has unit variance at every σ (Karras et al. 2022, written for ε).
    """

    def __init__(
        self,
        num_classes: int = 0,
        width: int = 192,
        depth: int = 3,
        sigma_data: float = SIGMA_DATA,
        conservative: bool = False,
    ):
        super().__init__()
        self.config = {"num_classes": num_classes, "width": width, "depth": depth, "sigma_data": sigma_data}
        if conservative:  # only written when set, so the shipped files' metadata stay as they are
            self.config["conservative"] = True
        self.conservative = conservative
        self.sigma_data = sigma_data
        self.register_buffer("freqs", torch.logspace(0, 6, 16, base=2.0))  # for the log σ embedding
        self.inp = nn.Linear(64, width)
        self.sigma_emb = nn.Sequential(nn.Linear(32, width), nn.SiLU(), nn.Linear(width, width))
        self.label_emb = nn.Embedding(num_classes + 1, width) if num_classes else None  # + the null class
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 64))

    def raw(self, x_in: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        """F: the network on scaled inputs; (B, 64). Conservative: F = ∇_u <u, f(u)>, a gradient field."""
        if not self.conservative:
            return self._f(x_in, sigma, labels)
        graph = torch.is_grad_enabled() and (x_in.requires_grad or self.training)  # differentiate F itself
        with torch.enable_grad():
            u = x_in if x_in.requires_grad else x_in.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad((u * self._f(u, sigma, labels)).sum(), u, create_graph=graph)
        return grad

    def _f(self, x_in: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        c_noise = sigma.log()[:, None] / 4 * self.freqs
        h = self.inp(x_in) + self.sigma_emb(torch.cat([c_noise.sin(), c_noise.cos()], -1))
        if self.label_emb is not None:
            h = h + self.label_emb(
                labels if labels is not None else torch.full_like(sigma, NULL, dtype=torch.long)
            )
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def forward(self, x: Tensor, sigma, labels: Tensor | None = None) -> Tensor:
        dtype, x = x.dtype, x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        s2 = sigma.square()[:, None] + self.sigma_data**2
        xf = x.flatten(1)
        f = self.raw(xf / s2.sqrt(), sigma, labels)
        eps = sigma[:, None] / s2 * xf - self.sigma_data / s2.sqrt() * f
        return eps.reshape(x.shape).to(dtype)

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The F that makes ε̂ = noise exactly: (σ·x0 − σ_d²·ε)/(σ_d·sqrt(σ² + σ_d²)); (B, 64)."""
        s2 = sigma.square()[:, None] + self.sigma_data**2
        return (sigma[:, None] * x0.flatten(1) - self.sigma_data**2 * noise.flatten(1)) / (
            self.sigma_data * s2.sqrt()
        )


class Conditional(nn.Module):
    """A class-conditional EpsNet fixed to one label: the eps callable m(x, σ) of one prompt."""

    def __init__(self, net: EpsNet, label: int):
        super().__init__()
        self.net, self.label = net, label

    def forward(self, x: Tensor, sigma) -> Tensor:
        return self.net(x, sigma, torch.full((x.shape[0],), self.label, dtype=torch.long, device=x.device))


# ----------------------------------------------------------------------------- the classifier


def check_model_space(x) -> None:
    """x: digits in model space, (B, 1, 8, 8) or (B, 64) floats in about [−1, 1]; else ValueError."""
    if not (isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 2 and x[0].numel() == 64):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected model-space samples (B, 1, 8, 8) in [−1, 1] (out.samples), got {got}")
    largest = x.abs().max().item() if len(x) else 0.0
    if largest > 4:  # the sampler ends a little past ±1; pictures are in [0, 255]
        raise ValueError(
            f"x: expected values in about [−1, 1] (out.samples, not out.images), got {largest:.4g}"
        )


class Classifier(nn.Module):
    """A one-hidden-layer MLP on the 64 pixels in [−1, 1]; its hidden layer gives the Fréchet features."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.config = {"hidden": hidden}
        self.hidden = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def features(self, x: Tensor) -> Tensor:
        """Hidden activations (B, hidden) of images (B, 1, 8, 8)."""
        return self.hidden(x.float().flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities (B, 10) of model-space images (B, 1, 8, 8) in [−1, 1]."""
        check_model_space(x)
        return torch.softmax(self(x.clamp(-1, 1)), -1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Most likely digit (B,)."""
        return self.predict_proba(x).argmax(-1)


# ----------------------------------------------------------------------------- loading


FILES = {
    "conditional": "conditional.safetensors",
    "half_0_4": "half_0_4.safetensors",
    "half_5_9": "half_5_9.safetensors",
    "full": "full.safetensors",
    "fokker_planck": "fokker_planck.safetensors",
    "classifier": "classifier.safetensors",
}


def load_module(name: str, weights: Path = WEIGHTS) -> nn.Module:
    """Build a network from its safetensors metadata config and load its weights (eval, frozen)."""
    path = Path(weights) / FILES[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: `python -m superdiff.digits.train --out {weights}`")
    return load_file_module(path, Classifier if name == "classifier" else EpsNet)


def load_file_module(path: Path, kind: type[nn.Module] = EpsNet) -> nn.Module:
    """A network of the given class from one safetensors file written by the trainer (eval, frozen)."""
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["superdiff"])["config"]
    module = kind(**config)
    module.load_state_dict(load_file(str(path)))
    return module.eval().requires_grad_(False)


@cache
def _cached(name: str) -> nn.Module:
    return load_module(name)


def load_conditional() -> EpsNet:
    """The class-conditional ε-model (labels 0–9, 10 = null) trained on all training digits."""
    return _cached("conditional")


def load_fokker_planck() -> EpsNet:
    """The conditional model fine-tuned to obey the score Fokker–Planck equation (AND holds better on it)."""
    return _cached("fokker_planck")


def load_half_models() -> tuple[EpsNet, EpsNet]:
    """(model for digits 0–4, model for digits 5–9): unconditional eps callables m(x, σ) on (B, 1, 8, 8)."""
    return _cached("half_0_4"), _cached("half_5_9")


def load_full_model() -> EpsNet:
    """The unconditional reference model trained on all ten digits."""
    return _cached("full")


def classifier() -> Classifier:
    """The evaluation classifier: ``.predict_proba(x) -> (B, 10)`` on model-space samples."""
    return _cached("classifier")


def label_of(prompt, arg: str = "prompt") -> int:
    """Digit 0–9 of a prompt: "3", "three" (any case) or the int 3."""
    if isinstance(prompt, (int, np.integer)) and not isinstance(prompt, bool) and 0 <= prompt <= 9:
        return int(prompt)
    if isinstance(prompt, str):
        key = prompt.strip().lower()
        if len(key) == 1 and key in "0123456789":  # str.isdigit accepts "²" too
            return int(key)
        if key in NAMES:
            return NAMES.index(key)
    accepted = ", ".join(f'"{i}"/"{n}"' for i, n in enumerate(NAMES))
    shown = abbreviate(repr(prompt), 60)  # a prompt can be huge
    raise ValueError(f"{arg}: unknown digit {shown}; accepted (case-insensitive): {accepted}")
