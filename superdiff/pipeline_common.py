"""What both SuperDiff pipelines (Stable Diffusion, digits) share: modes, checks, seeding, callback, output.

A pipeline mode is "and", "or" or "avg" (κ from the core), or the baseline "prompt_k": prompt k alone,
i.e. the core's mode "fixed" with κ = e_k, which still traces the density of every prompt.
"""

from __future__ import annotations

import math
import numbers
import re
import types
import typing
from collections.abc import Callable

import torch
from torch import Tensor

from .limits import LIMITS, MAX_GUIDANCE, MAX_SEED, Limits, raise_hint, warn_caller
from .output import SuperDiffOutput, format_images
from .sampling import (
    OPTION_MODES,
    StopSampling,
    SuperpositionResult,
    check_generator,
    check_superpose_args,
    warn_ignored,
)

SUPERPOSITIONS = ("and", "or", "avg")  # κ from the core
SINGLE_PROMPT = "prompt_<k>"  # the baseline "prompt_k": prompt k alone
OUTPUT_TYPES = ("pt", "np", "pil")


# ----------------------------------------------------------------------------- modes


def single_prompt_index(mode) -> int | None:
    """k − 1 for mode "prompt_k", else None."""
    match = re.fullmatch(r"prompt_([1-9][0-9]*)", mode) if isinstance(mode, str) else None
    return int(match.group(1)) - 1 if match else None


def one_hot(k: int, n: int) -> Tensor:
    """e_k: all weight on model k of n."""
    kappa = torch.zeros(n, dtype=torch.float64)
    kappa[k] = 1.0
    return kappa


def parse_mode(mode, n_prompts: int, baselines: tuple[str, ...] = ()) -> tuple[str, Tensor | None]:
    """(core mode, fixed κ or None) of a pipeline mode; ``baselines``: the pipeline's other modes."""
    if mode in SUPERPOSITIONS:
        return mode, None
    k = single_prompt_index(mode)
    if k is None:
        raise ValueError(
            f"mode: expected one of {SUPERPOSITIONS + baselines + (SINGLE_PROMPT,)}, got {mode!r}"
        )
    if k >= n_prompts:
        raise ValueError(f"mode: {mode!r} needs at least {k + 1} prompts, got {n_prompts}")
    return "fixed", one_hot(k, n_prompts)


def superpose_options(
    mode: str, n_prompts: int, core_mode: str, kappa: Tensor | None, lift, temperature, log_weights
) -> dict:
    """``superpose``'s arguments for a pipeline ``mode``: those it uses (lift: AND; T and b: OR; "fixed": κ);
    warns of the others, if given."""
    warn_ignored(mode, n_prompts, lift, temperature, log_weights)
    used = {"lift": lift, "temperature": temperature, "log_weights": log_weights}
    used = {name: value for name, value in used.items() if OPTION_MODES[name] == core_mode and n_prompts > 1}
    return {"mode": core_mode, **used, **({"kappa": kappa} if core_mode == "fixed" else {})}


def resolved_annotations(cls):
    """``cls`` with its ``__init__``'s annotations as types, not strings (``from __future__ import
    annotations``): diffusers < 0.33 reads them for the components and warns of each string it finds."""
    hints = typing.get_type_hints(cls.__init__)
    # typing.Union, not X | Y: what those versions take for "X | None"
    union = {k: typing.Union[typing.get_args(v)] for k, v in hints.items() if isinstance(v, types.UnionType)}  # noqa: UP007
    cls.__init__.__annotations__ = hints | union
    return cls


# ----------------------------------------------------------------------------- argument checks


def check_int(name: str, value, low: int, hint: str = "", high: int | None = None, above: str = "") -> None:
    """An integer (numpy's too, not a bool) >= low and, if given, <= high; the error names the whole range,
    and past ``high`` ends with ``above`` (how to raise it)."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (integer and value >= low and (high is None or value <= high)):
        span = f">= {low}" if high is None else f"from {low} to {high}"
        past = above if integer and high is not None and value > high else ""
        raise ValueError(f"{name}: expected an integer {span}{hint}, got {value!r}{past}")


def check_finite(name: str, value, low: float = -math.inf, high: float = math.inf) -> None:
    """A finite real number (not a bool) in [low, high]."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and low <= value <= high):
        bound = "" if low == -math.inf else f" >= {low:g}"
        bound += "" if high == math.inf else f"{' and' if bound else ''} <= {high:g}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")


def check_seed_value(name: str, seed) -> None:
    """One seed: an integer from 0 to MAX_SEED (the range in which distinct seeds give distinct noise)."""
    check_int(name, seed, 0, "", high=MAX_SEED)


def check_seed(seed, generator, batch_size: int = 1) -> None:
    """seed: an integer from 0 to MAX_SEED or None; generator: a torch.Generator, a list of them, or None."""
    if seed is not None:
        check_seed_value("seed", seed)
        if generator is not None:
            raise ValueError("seed: pass either seed or generator, not both")
    check_generator(generator, batch_size)


def check_mode_options(n_prompts: int, lift, temperature, log_weights) -> None:
    """lift, temperature and log_weights as the core checks them, strings included."""
    if isinstance(lift, (int, float)) and not math.isfinite(lift):
        raise ValueError(f"lift: expected a finite number (> 0 favours prompt_1), got {lift!r}")
    try:  # per prompt, whatever the mode: the checks of lift, T and b (bounds too) do not depend on it
        check_superpose_args(n_prompts, "and", lift, temperature, log_weights)
    except (TypeError, RuntimeError) as err:  # e.g. strings where numbers belong
        raise ValueError(f"lift, log_weights: expected finite numbers, one per prompt ({err})") from None


def check_limits(limits) -> None:
    """``pipe.limits`` is a Limits (a dict or None would fail later, as an AttributeError)."""
    if not isinstance(limits, Limits):
        raise ValueError(
            f"pipe.limits: expected a Limits, got {type(limits).__name__}; `del pipe.limits` restores the "
            "defaults, and pipe.limits = pipe.limits.replace(steps=...) raises one"
        )


def check_sampling_args(
    n_prompts: int,
    *,
    num_inference_steps=1,
    batch_size=1,
    guidance_scale=1.0,
    seed=None,
    generator=None,
    output_type="pt",
    lift=0.0,
    temperature=1.0,
    log_weights=None,
    callback_on_step_end=None,
    limits: Limits = LIMITS,
) -> None:
    """The checks every pipeline call needs (defaults: any valid value); ValueErrors name the argument.
    ``limits``: a Limits (the caller has run :func:`check_limits` on it)."""
    if n_prompts > limits.prompts:
        raise ValueError(
            f"prompt_1: expected at most {limits.prompts} prompts, got {n_prompts}{raise_hint('prompts')}"
        )
    check_int("num_inference_steps", num_inference_steps, 1, high=limits.steps, above=raise_hint("steps"))
    check_int("batch_size", batch_size, 1, high=limits.batch_size, above=raise_hint("batch_size"))
    check_finite("guidance_scale", guidance_scale, low=0.0, high=MAX_GUIDANCE)
    check_seed(seed, generator, batch_size)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: expected one of {OUTPUT_TYPES}, got {output_type!r}")
    check_mode_options(n_prompts, lift, temperature, log_weights)
    check_callback(callback_on_step_end)


def warn_weak_guidance(guidance_scale: float, note: str = "") -> None:
    """Classifier-free guidance below 1 steers less than none (at 0 every prompt moves x alike)."""
    if guidance_scale < 1:
        warn_caller(
            f"guidance_scale={guidance_scale + 0.0:g}: each prompt's field is ε̂_∅ + w·(ε̂_i − ε̂_∅), so "
            f"below 1 the prompts steer less than unguided, and at 0 not at all{note}"
        )


def check_callback(callback) -> None:
    """A function ``f(pipe, step, timestep, callback_kwargs)``, or None; not diffusers' PipelineCallback."""
    if callback is not None and not callable(callback):
        raise ValueError(
            f"callback_on_step_end: expected a function f(pipe, step, timestep, callback_kwargs), got "
            f"{type(callback).__name__}"
        )
    if any(c.__name__ in ("PipelineCallback", "MultiPipelineCallbacks") for c in type(callback).__mro__):
        raise ValueError(
            f"callback_on_step_end: {type(callback).__name__} changes the prompts' embeddings or guidance "
            "mid-run, which κ and log q would no longer describe; pass a function f(pipe, step, timestep, "
            "callback_kwargs), which observes the run"
        )


# ----------------------------------------------------------------------------- sampling and its output


def seeded(seed: int | None, generator):
    """The noise generator(s): a CPU one from ``seed`` (same images on any device), else ``generator``."""
    return generator if seed is None else torch.Generator("cpu").manual_seed(int(seed))


def step_callback(
    pipe, callback: Callable | None, n_prompts: int, timesteps=None, on_step: Callable | None = None
) -> Callable[[dict], None] | None:
    """The core's per-step hook as diffusers' ``callback_on_step_end(pipe, step, timestep, callback_kwargs)``.

    callback_kwargs: {"latents", "kappa" (B, N), "log_q" (B, N), "sigma"} of the N prompts (models past
    them, e.g. a joint prompt, are cut off); timestep: ``timesteps[step]``, or σ if None (digits have no t).
    ``on_step()`` runs first at every step (a progress bar). The callback gets copies, and its return value
    is ignored: it cannot change the trajectory (κ and log q would no longer describe it). As in diffusers,
    ``pipe._interrupt = True`` (set by the callback, or another thread) ends sampling after this step.
    """
    if callback is None and on_step is None:
        return None

    def hook(state: dict) -> None:
        if on_step is not None:
            on_step()
        if callback is not None:
            kappa, log_q = state["kappa"][..., :n_prompts], state["log_q"][..., :n_prompts]  # copies
            kwargs = {"latents": state["x"], "kappa": kappa, "log_q": log_q}
            kwargs |= {
                "sigma": state["sigma"],
                "sigma_next": state["sigma_next"],
            }  # the latents at sigma_next
            t = state["sigma"] if timesteps is None else timesteps[state["i"]]
            callback(pipe, state["i"], t, kwargs)
        if getattr(pipe, "_interrupt", False):
            raise StopSampling

    return hook


def build_output(
    result: SuperpositionResult,
    images: Tensor,
    output_type: str,
    prompts: list[str],
    n_prompts: int,
    mode: str,
    samples: Tensor | None = None,
) -> SuperDiffOutput:
    """A run's SuperDiffOutput: κ (float32) and log q (float64) of the first n_prompts models only, on CPU;
    ``samples`` (default: the sampler's final x, which ``latents`` always is) as float32 on CPU."""
    latents = result.samples.float().cpu()
    return SuperDiffOutput(
        images=format_images(images, output_type),
        kappa=result.kappa[..., :n_prompts].float().cpu(),
        log_q=result.log_q[..., :n_prompts].cpu(),
        sigmas=result.sigmas,
        samples=latents if samples is None else samples.float().cpu(),
        latents=latents,
        prompts=prompts,
        mode=mode,
    )
