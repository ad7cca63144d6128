"""The offline digits pipeline: the Stable Diffusion call shape on a class-conditional 8×8 model (CPU)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._torch import gen, one_thread
from ..limits import LIMITS
from ..output import SuperDiffOutput, to_uint8
from ..pipeline_common import (
    build_output,
    check_limits,
    check_sampling_args,
    parse_mode,
    seeded,
    step_callback,
    superpose_options,
    warn_weak_guidance,
)
from ..sampling import Prediction, Predictor, guide, randn_like, superpose
from .gaussian import GaussianDigitPredictor
from .model import NULL, EpsNet, default_sigmas, label_of, load_conditional, load_fokker_planck

UPSCALE = 8  # 8×8 digits -> 64×64 images (nearest neighbour)
GUIDANCE = 2.0  # default classifier-free guidance w for this model (docs/results-digits.md, experiment 3)
STEPS = 100  # default number of Euler–Maruyama steps


class DigitPredictor(Predictor):
    """N digit prompts + the null class in ONE batched forward; F_i guided with scale w."""

    def __init__(self, net: EpsNet, labels: Sequence[int], guidance_scale: float):
        self.net, self.labels = net, list(labels)
        self.num_models = len(self.labels)
        self.guidance_scale = guidance_scale

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        n, b = self.num_models, x.shape[0]
        labels = torch.tensor(self.labels + [NULL], device=x.device).repeat_interleave(b)
        out = self.net(x.repeat(n + 1, *([1] * (x.ndim - 1))), sigma, labels).reshape(n + 1, *x.shape)
        eps, eps_null = out[:n], out[n]
        return Prediction(eps, guide(eps, eps_null, self.guidance_scale))


# the trained ε-network; it fine-tuned on the score Fokker–Planck equation; one exact Gaussian per digit
NETS = {"net": load_conditional, "fokker_planck": load_fokker_planck}
MODELS = (*NETS, "gaussian")


def labels_of(prompt_1, prompt_2) -> list[int]:
    """Digit labels of the prompts: a digit name, or a list of names (N > 2), as prompt_1; then prompt_2
    if given (appended to a list, as the Stable Diffusion pipeline does)."""
    if isinstance(prompt_1, (list, tuple)):
        if not prompt_1:
            raise ValueError("prompt_1: expected a digit name or a non-empty list of digit names")
        labels = [label_of(p, f"prompt_1[{i}]") for i, p in enumerate(prompt_1)]
    else:
        labels = [label_of(prompt_1, "prompt_1")]
    return labels if prompt_2 is None else labels + [label_of(prompt_2, "prompt_2")]


def check_inputs(prompt_1, prompt_2=None, mode="and", limits=LIMITS, **options) -> list[int]:
    """Clear ValueErrors before any work (no model needed); returns the digit labels.

    ``options``: the call's other arguments, as :func:`.pipeline_common.check_sampling_args` takes them.
    """
    check_limits(limits)
    labels = labels_of(prompt_1, prompt_2)
    parse_mode(mode, len(labels))
    check_sampling_args(len(labels), limits=limits, **options)
    return labels


class DigitsPipeline:
    """SuperDiff on the digits models: ``pipe("3", "8", seed=0)``, as the Stable Diffusion one.

    ``model="net"``: the shipped class-conditional ε-network (sharp digits; below σ ≈ 0.3 its Itô
    densities drift from its own likelihood, so AND ends 4–5 nats from equal density).
    ``model="fokker_planck"``: that network fine-tuned to obey the score Fokker–Planck equation; AND ends
    ≈ 1 nat from equal density, at the price of a blurrier density model. ``model="gaussian"``: one fitted
    Gaussian per digit with exact scores; AND ends within ≈ 0.6 nats (docs/results-and.md).
    """

    limits = LIMITS  # steps and batch_size: checked before any work; pipe.limits.replace(...) raises them

    def __init__(self, net: EpsNet | None = None, model: str = "net"):
        if model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
        if net is not None and model != "net":
            raise ValueError("net: only for model='net'")
        classes = net.config["num_classes"] if isinstance(net, EpsNet) else None
        if net is not None and classes != 10:
            got = type(net).__name__ if classes is None else f"num_classes={classes}"
            raise ValueError(
                f"net: expected a class-conditional EpsNet of the 10 digits (num_classes=10), got {got}; an "
                "unconditional one ignores the prompts"
            )
        self.model = model
        self.net = net if net is not None else NETS[model]() if model in NETS else None

    def predictor(self, labels: Sequence[int], guidance_scale: float) -> Predictor:
        """The prompts' eps-models, guided with scale w, evaluated together."""
        if self.model == "gaussian":
            return GaussianDigitPredictor(labels, guidance_scale)
        return DigitPredictor(self.net, labels, guidance_scale)

    labels_of = staticmethod(labels_of)

    def check_inputs(self, prompt_1, prompt_2=None, mode="and", **options) -> list[int]:
        """Clear ValueErrors before any work (see :func:`check_inputs`); returns the digit labels."""
        return check_inputs(prompt_1, prompt_2, mode, limits=self.limits, **options)

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
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        callback_on_step_end: Callable | None = None,
        progress: bool = False,
    ) -> SuperDiffOutput:
        """Sample digits that superpose the prompts.

        Args:
            prompt_1, prompt_2: digit names ("3", "three", any case); prompt_1 may be a list (N > 2 prompts).
                With prompt_2=None and one prompt_1, samples that digit alone.
            seed: 0 to 2**32 − 1, seeds a CPU generator (same seed ⇒ same output); or pass ``generator``
                (one, or a list of batch_size: image i from generator i).
            num_inference_steps: n Euler–Maruyama steps on ``default_sigmas(n)`` (<= ``self.limits.steps``).
            batch_size: images per call (at most ``self.limits.batch_size``).
            lift: AND only; log q_1 − log q_2 ends at +lift (> 0 favours prompt_1).
            guidance_scale: classifier-free guidance w (1 = none; default 2).
            mode: "and", "or", "avg", or "prompt_1" / "prompt_2" / ... (that prompt alone; the densities
                of all are still traced and ``kappa`` is its one-hot weight).
            temperature, log_weights: OR only (see :func:`superdiff.superpose`).
            output_type: "pt" (uint8 tensor (B, 64, 64, 3)), "np" or "pil".
            callback_on_step_end: ``f(pipe, step, sigma, callback_kwargs)`` after every step (σ stands in
                for diffusers' timestep: the digits model has none), with
                ``callback_kwargs = {"latents" (B, 1, 8, 8), "kappa" (B, N), "log_q" (B, N), "sigma",
                "sigma_next"}`` (latents and log_q are at sigma_next); its return value is ignored.
            progress: show a tqdm bar.
        """
        labels = self.check_inputs(
            prompt_1,
            prompt_2,
            mode,
            num_inference_steps=num_inference_steps,
            batch_size=batch_size,
            guidance_scale=guidance_scale,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            lift=lift,
            temperature=temperature,
            log_weights=log_weights,
            seed=seed,
            generator=generator,
        )
        warn_weak_guidance(guidance_scale)
        core_mode, kappa = parse_mode(mode, len(labels))
        generator, sigmas = seeded(seed, generator), default_sigmas(int(num_inference_steps))
        x = sigmas[0].item() * randn_like(torch.empty(int(batch_size), 1, 8, 8), generator)
        predictor = self.predictor(labels, float(guidance_scale))
        callback = step_callback(self, callback_on_step_end, len(labels))
        self._interrupt = False  # pipe._interrupt = True in the callback ends sampling (diffusers' flag)
        with one_thread():
            options = superpose_options(mode, len(labels), core_mode, kappa, lift, temperature, log_weights)
            result = superpose(
                predictor, x, sigmas, **options, generator=generator, progress=progress, callback=callback
            )
        samples = result.samples.clamp(-1, 1)
        images = to_uint8(
            samples.repeat_interleave(UPSCALE, -1).repeat_interleave(UPSCALE, -2).repeat(1, 3, 1, 1)
        )
        prompts = (
            list(prompt_1) if isinstance(prompt_1, (list, tuple)) else [prompt_1, prompt_2][: len(labels)]
        )
        return build_output(
            result, images, output_type, [str(p) for p in prompts], len(labels), mode, samples
        )


def sample(models, n: int, mode: str, seed: int, steps: int = STEPS):
    """n model-space samples of the superposition of unconditional digit eps-models (one model: alone)."""
    sigmas = default_sigmas(steps)
    g = gen(seed)
    x = sigmas[0].item() * torch.randn(n, 1, 8, 8, generator=g)
    with one_thread():
        return superpose(list(models), x, sigmas, mode=mode, generator=g)


def load_pipeline(model: str = "net") -> DigitsPipeline:
    """The digits pipeline (offline, CPU): ``model`` = "net" (the trained ε-network), "fokker_planck" or
    "gaussian" (exact scores); see :class:`DigitsPipeline`."""
    return DigitsPipeline(model=model)
