"""The offline digits pipeline: the Stable Diffusion call shape on a class-conditional 8×8 model (CPU)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..output import SuperDiffOutput, format_images, to_uint8
from ..sampling import Prediction, Predictor, check_superpose_args, guide, randn_like, superpose
from .model import NULL, EpsNet, default_sigmas, label_of, load_conditional, one_thread

MODES = ("and", "or", "avg", "prompt_1", "prompt_2")
UPSCALE = 8  # 8×8 digits -> 64×64 images (nearest neighbour)
GUIDANCE = 2.0  # default classifier-free guidance w for this model (docs/results-digits.md, experiment 3)
STEPS = 100  # default number of Euler–Maruyama steps


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def one_hot(i: int, n: int, like: Tensor) -> Tensor:
    """κ shaped like ``like`` (..., n) with all weight on model i."""
    return torch.nn.functional.one_hot(torch.full(like.shape[:-1], i), n).to(like)


class DigitPredictor(Predictor):
    """N digit prompts + the null class in ONE batched forward; F_i guided with scale w.

    ``follow``: if set, every model's field is F_follow (sampling one prompt while the densities
    of all N are still traced).
    """

    def __init__(self, net: EpsNet, labels: Sequence[int], guidance_scale: float, follow: int | None = None):
        self.net, self.labels = net, list(labels)
        self.num_models = len(self.labels)
        self.guidance_scale, self.follow = guidance_scale, follow

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        n, b = self.num_models, x.shape[0]
        labels = torch.tensor(self.labels + [NULL], device=x.device).repeat_interleave(b)
        out = self.net(x.repeat(n + 1, *([1] * (x.ndim - 1))), sigma, labels).reshape(n + 1, *x.shape)
        eps, eps_null = out[:n], out[n]
        field = guide(eps, eps_null, self.guidance_scale)
        if self.follow is not None:
            field = field[self.follow].expand_as(field)
        return Prediction(eps, field)


class DigitsPipeline:
    """SuperDiff on the shipped digits model: ``pipe("3", "8", seed=0)``, as the Stable Diffusion one."""

    def __init__(self, net: EpsNet | None = None):
        self.net = net if net is not None else load_conditional()

    @staticmethod
    def labels_of(prompt_1, prompt_2) -> list[int]:
        """Digit labels of the prompts: a digit name each, or a list of names as prompt_1 (N > 2)."""
        if isinstance(prompt_1, (list, tuple)):
            if prompt_2 is not None:
                raise ValueError("prompt_2: must be None when prompt_1 is a list of prompts")
            if not prompt_1:
                raise ValueError("prompt_1: expected a digit name or a non-empty list of digit names")
            return [label_of(p, f"prompt_1[{i}]") for i, p in enumerate(prompt_1)]
        labels = [label_of(prompt_1, "prompt_1")]
        return labels if prompt_2 is None else labels + [label_of(prompt_2, "prompt_2")]

    def check_inputs(
        self,
        prompt_1,
        prompt_2,
        num_inference_steps,
        batch_size,
        guidance_scale,
        mode,
        output_type,
        lift,
        temperature,
        log_weights,
        seed,
        generator,
    ) -> list[int]:
        """Clear ValueErrors before any work; returns the digit labels."""
        labels = self.labels_of(prompt_1, prompt_2)
        if not (_is_int(num_inference_steps) and num_inference_steps >= 1):
            raise ValueError(f"num_inference_steps: expected an integer >= 1, got {num_inference_steps!r}")
        if not (_is_int(batch_size) and batch_size >= 1):
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if not (
            isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0
        ):
            raise ValueError(f"guidance_scale: expected a finite number >= 0, got {guidance_scale!r}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode in ("prompt_1", "prompt_2") and int(mode[-1]) > len(labels):
            raise ValueError(f"mode: {mode!r} needs {mode} to be given")
        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"output_type: expected 'pt', 'np' or 'pil', got {output_type!r}")
        if seed is not None and generator is not None:
            raise ValueError("seed, generator: pass one of them, not both")
        if seed is not None and not _is_int(seed):
            raise ValueError(f"seed: expected an integer or None, got {seed!r}")
        core_mode = mode if mode in ("and", "or", "avg") else "avg"
        check_superpose_args(len(labels), core_mode, lift, temperature, log_weights)
        return labels

    @torch.no_grad()
    def __call__(
        self,
        prompt_1,
        prompt_2=None,
        seed: int | None = None,
        num_inference_steps: int = STEPS,
        batch_size: int = 1,
        lift=0.0,
        guidance_scale: float = GUIDANCE,
        mode: str = "and",
        temperature: float = 1.0,
        log_weights=None,
        generator: torch.Generator | None = None,
        output_type: str = "pt",
        callback_on_step_end: Callable | None = None,
        progress: bool = False,
    ) -> SuperDiffOutput:
        """Sample digits that superpose the prompts.

        Args:
            prompt_1, prompt_2: digit names ("3", "three", any case); prompt_1 may be a list (N > 2 prompts).
                With prompt_2=None and one prompt_1, samples that digit alone.
            seed: seeds a CPU generator (same seed ⇒ same output); or pass ``generator``.
            num_inference_steps: n Euler–Maruyama steps on ``default_sigmas(n)``.
            batch_size: images per call.
            lift: AND only; log q_1 − log q_2 ends at +lift (> 0 favours prompt_1).
            guidance_scale: classifier-free guidance w (1 = none; default 2).
            mode: "and", "or", "avg", or "prompt_1" / "prompt_2" (that prompt alone; the densities
                of both are still traced and ``kappa`` is its one-hot weight).
            temperature, log_weights: OR only (see :func:`superdiff.superpose`).
            output_type: "pt" (uint8 tensor (B, 64, 64, 3)), "np" or "pil".
            callback_on_step_end: ``f(pipe, step, sigma, callback_kwargs)`` after every step, with
                ``callback_kwargs = {"latents" (B, 1, 8, 8), "kappa" (B, N), "log_q" (B, N), "sigma"}``;
                its return value is ignored.
            progress: show a tqdm bar.
        """
        labels = self.check_inputs(
            prompt_1,
            prompt_2,
            num_inference_steps,
            batch_size,
            guidance_scale,
            mode,
            output_type,
            lift,
            temperature,
            log_weights,
            seed,
            generator,
        )
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        follow = int(mode[-1]) - 1 if mode.startswith("prompt_") else None
        predictor = DigitPredictor(self.net, labels, float(guidance_scale), follow)
        sigmas = default_sigmas(int(num_inference_steps))
        x = sigmas[0].item() * randn_like(torch.empty(int(batch_size), 1, 8, 8), generator)
        callback = None
        if callback_on_step_end is not None:

            def callback(d):
                kappa = d["kappa"] if follow is None else one_hot(follow, len(labels), d["kappa"])
                kwargs = {"latents": d["x"], "kappa": kappa, "log_q": d["log_q"], "sigma": d["sigma"]}
                callback_on_step_end(self, d["i"], d["sigma"], kwargs)

        with one_thread():
            result = superpose(
                predictor,
                x,
                sigmas,
                mode="avg" if follow is not None else mode,
                lift=lift,
                temperature=temperature,
                log_weights=log_weights,
                generator=generator,
                progress=progress,
                callback=callback,
            )
        kappa = result.kappa
        if follow is not None:  # the weight actually used: all on the followed prompt
            kappa = one_hot(follow, len(labels), kappa)
        samples = result.samples.clamp(-1, 1)
        images = to_uint8(
            samples.repeat_interleave(UPSCALE, -1).repeat_interleave(UPSCALE, -2).repeat(1, 3, 1, 1)
        )
        prompts = (
            [prompt_1, prompt_2]
            if prompt_2 is not None
            else list(prompt_1)
            if isinstance(prompt_1, (list, tuple))
            else [prompt_1]
        )
        return SuperDiffOutput(
            format_images(images, output_type),
            kappa.float().cpu(),
            result.log_q.float().cpu(),
            result.sigmas,
            samples,
            [str(p) for p in prompts],
            mode,
        )


def load_pipeline() -> DigitsPipeline:
    """The shipped, trained digits pipeline (offline, CPU)."""
    return DigitsPipeline()
