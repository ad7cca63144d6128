"""The digit models side by side, judged by densities independent of the Itô estimator.

``DigitModels().log_densities("net", (3, 8), x, sigma)`` gives log q_3(x) and log q_8(x): a network's own
probability-flow likelihood ("net", "fokker_planck"), or the exact log-density of the Gaussian per digit
("gaussian").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._torch import gen, one_thread
from ..limits import LIMITS
from ..pipeline_common import check_int
from ..sampling import is_real, log_likelihood, superpose
from .gaussian import load_gaussian_models
from .model import SIGMA_MAX, EpsNet, default_sigmas, label_of, load_conditional
from .pipeline import MODELS, DigitsPipeline

PROBES = 8  # Hutchinson probes per ODE evaluation of the network's likelihood (checked against exact)
ODE_STEPS = 100  # Heun steps of the likelihood on the digits grid


class DigitModels:
    """The digit models (:data:`.pipeline.MODELS`) with log-densities independent of the Itô estimator.

    ``net``: the network of kind "net" (default: the shipped one). ``ode_steps``: Heun steps of a network's
    PF-ODE likelihood on the digits grid.
    """

    def __init__(self, net: EpsNet | None = None, ode_steps: int = ODE_STEPS):
        self.net = net if net is not None else load_conditional()
        self.ode_steps = ode_steps
        self.pipes = {m: DigitsPipeline(self.net) if m == "net" else DigitsPipeline(model=m) for m in MODELS}

    def run(
        self, kind: str, labels, w: float, steps: int, mode: str, seed: int, batch: int, keep=(), **options
    ):
        """superpose on default_sigmas(steps) (``options``: more of its arguments, e.g. curvature); returns
        the result and x at the steps in ``keep``."""
        sigmas = default_sigmas(steps)
        x = sigmas[0] * torch.randn(batch, 1, 8, 8, generator=gen(seed))
        kept = {}

        def callback(step):
            if step["i"] + 1 in keep:
                kept[step["i"] + 1] = step["x"].clone()

        options |= {"mode": "fixed", "kappa": [1.0, 0.0]} if mode == "alone" else {"mode": mode}
        pred = self.pipes[kind].predictor(list(labels), w)
        with one_thread():  # small batches: more threads only add overhead
            res = superpose(pred, x, sigmas, generator=gen(seed + 1), callback=callback, **options)
        return res, kept

    def log_density(
        self, kind: str, label: int, x: Tensor, sigma: float, probes=PROBES, seed: int = 0
    ) -> Tensor:
        """log q(x) at σ under one digit's model; see :meth:`log_densities`."""
        return self.log_densities(kind, (label,), x, sigma, probes, seed)[0]

    def log_densities(
        self, kind: str, labels, x: Tensor, sigma: float, probes=PROBES, seed: int = 0
    ) -> Tensor:
        """log q_c(x) at σ per label c, (len(labels), B), under that kind's model (:func:`log_densities`)."""
        return log_densities(self.pipes[kind], labels, x, sigma, probes, seed, self.ode_steps)


def check_judge_args(labels, x, sigma, ode_steps) -> list[int]:
    """The digits 0–9 of labels ("3", "three" or 3, as prompts); x (B, 64 values); 0 < σ < SIGMA_MAX."""
    if isinstance(labels, (str, int)) or not labels:
        raise ValueError(f"labels: expected a non-empty list of digits (e.g. [3, 8]), got {labels!r}")
    digits = [label_of(c, f"labels[{i}]") for i, c in enumerate(labels)]
    if not (isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 2 and x[0].numel() == 64):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected model-space samples (B, 1, 8, 8) at noise σ (out.latents), got {got}")
    if not (is_real(sigma) and 0 < sigma < SIGMA_MAX):
        raise ValueError(
            f"sigma: expected a noise level > 0 and < {SIGMA_MAX:g} (the samples' σ), got {sigma!r}"
        )
    check_int("ode_steps", ode_steps, 1, high=LIMITS.steps)
    return digits


def log_densities(
    pipe: DigitsPipeline, labels, x: Tensor, sigma: float, probes=PROBES, seed: int = 0, ode_steps=ODE_STEPS
) -> Tensor:
    """log q_c(x) at σ per label c under a digits pipeline's models, (len(labels), B).

    Exact for the Gaussians, else the network's PF-ODE likelihood (``ode_steps`` Heun steps, ``probes``
    Hutchinson probes). The likelihoods of all labels run as one batch: row block c of the stacked samples
    carries label c (the divergence stacks probe copies of the whole batch, so the label pattern tiles along).
    A sample draws the same probes under every label (common random numbers): the noise of log q_a − log q_b
    partly cancels (measured on "3" & "8": median error 0.23 → 0.13 nats), and is 0 for a = b.
    """
    labels = check_judge_args(labels, x, sigma, ode_steps)
    if pipe.model == "gaussian":
        gaussians, _ = load_gaussian_models()
        return torch.stack([gaussians[c].log_prob(x.double(), sigma) for c in labels])
    grid = default_sigmas(ode_steps)
    grid = torch.cat([grid[grid > sigma * (1 + 1e-9)], torch.tensor([sigma], dtype=grid.dtype)])
    pattern = torch.tensor(labels).repeat_interleave(len(x))

    def model(v, s):
        return pipe.net(v, s, pattern.repeat(len(v) // len(pattern)))

    xs = x.double().repeat(len(labels), *([1] * (x.ndim - 1)))
    streams = torch.randint(2**62, (len(x),), generator=gen(seed)).tolist()  # one probe stream per sample
    generators = [gen(s) for _ in labels for s in streams]
    with one_thread():  # a small MLP: more threads only add overhead, and much more on a shared CPU
        ll = log_likelihood(model, xs, grid, hutchinson=probes, generator=generators)
    return ll.reshape(len(labels), len(x))
