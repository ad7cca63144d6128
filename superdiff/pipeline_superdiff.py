"""SuperDiff for Stable Diffusion (v1.x / v2.x) on diffusers: superpose text prompts with OR / AND.

The math lives in :mod:`superdiff.sampling`; this module only turns prompts into one batched
UNet call per step (:class:`PromptPredictor`) and wraps it in a diffusers ``DiffusionPipeline``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from .fast import (
    FastSampling,
    contiguous_weights,
    cuda_graphs_on,
    disable_fast_sampling,
    drop_cuda_graphs,
    enable_fast_sampling,
    follow_device,
)
from .hub import dtype_kwarg, explain_unavailable
from .limits import LIMITS, Limits, abbreviate, check_prompt, raise_hint, warn_caller
from .output import SuperDiffOutput, to_uint8
from .pipeline_common import (
    build_output,
    check_int,
    check_limits,
    check_sampling_args,
    one_hot,
    parse_mode,
    resolved_annotations,
    seeded,
    single_prompt_index,
    step_callback,
    superpose_options,
    warn_weak_guidance,
)
from .sampling import Prediction, Predictor, guide, randn_like, superpose

# The single-file pipeline for ``DiffusionPipeline.from_pretrained(..., custom_pipeline=CUSTOM_PIPELINE)``.
CUSTOM_PIPELINE = str(Path(__file__).parent / "custom_pipeline" / "pipeline.py")

# scheduler.config.prediction_type values read as ε; "original_sample" is diffusers' old name of "sample"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")
BASELINES = ("joint",)  # and the core's "prompt_<k>"
JOINT_TEMPLATE = "{} that looks like {}"  # the paper's joint-prompt baseline, "A that looks like B"


def eps_from_v(v: Tensor, x: Tensor, sigma: float | Tensor) -> Tensor:
    """ε = v/√(σ²+1) + σ·x/(σ²+1): v-prediction in VE coordinates (x the VE sample)."""
    root = (sigma**2 + 1).sqrt() if isinstance(sigma, Tensor) else math.sqrt(sigma**2 + 1)
    return v / root + (sigma / (sigma**2 + 1)) * x


def eps_from_x0(x0: Tensor, x: Tensor, sigma: float | Tensor) -> Tensor:
    """ε = (x − x̂₀)/σ: x₀-prediction ("sample") in VE coordinates."""
    return (x - x0) / sigma


EPS_FROM = {"v_prediction": eps_from_v, "sample": eps_from_x0, "original_sample": eps_from_x0}


def training_sigmas(scheduler) -> Tensor:
    """σ of the training timesteps t = 0 … T − 1 (increasing): √((1 − ᾱ_t)/ᾱ_t), as the scheduler has them."""
    alphas = scheduler.alphas_cumprod
    return ((1 - alphas) / alphas) ** 0.5


def timestep_of(sigma: Tensor, train: Tensor) -> Tensor:
    """The UNet's continuous t for σ (B,): the inverse of the scheduler's interpolation of σ linear in t,
    differentiable in σ; ValueError outside the training range."""
    train = train.to(sigma)
    low, high = train[0] * (1 - 1e-6), train[-1] * (1 + 1e-6)  # the range, up to float32 rounding
    if not bool(((sigma >= low) & (sigma <= high)).all()):
        raise ValueError(
            f"sigma: expected values in [{train[0].item():.4g}, {train[-1].item():.4g}] (the scheduler's "
            f"training range), got {sigma.min().item():.4g} … {sigma.max().item():.4g}"
        )
    i = (torch.searchsorted(train, sigma.detach()) - 1).clamp(0, len(train) - 2)
    return i + (sigma - train[i]) / (train[i + 1] - train[i])


def check_scheduler(scheduler) -> None:
    """A DDPM noise schedule and a prediction type the pipeline converts to ε; else a ValueError."""
    config = scheduler.config
    if "sigma_data" in config or not ("beta_schedule" in config or "trained_betas" in config):
        # an EDM (e.g. Playground v2.5) or flow-matching checkpoint: from_config would give it linear betas
        raise ValueError(
            "scheduler: expected a DDPM noise schedule (betas, as the schedulers of SD 1.x/2.x and SDXL), "
            f"got {type(scheduler).__name__} with an EDM or flow-matching schedule, which this pipeline "
            "cannot sample"
        )
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler.config.prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )


def as_euler(scheduler) -> EulerDiscreteScheduler:
    """The checkpoint's scheduler as an EulerDiscreteScheduler of the same config; refuses unknown outputs."""
    check_scheduler(scheduler)
    if not isinstance(scheduler, EulerDiscreteScheduler):  # CompVis/stable-diffusion-v1-4 ships PNDM
        scheduler = EulerDiscreteScheduler.from_config(scheduler.config)
    return scheduler


def check_euler(scheduler) -> None:
    """A scheduler assigned after loading: an EulerDiscreteScheduler (any config) of a DDPM schedule."""
    check_scheduler(scheduler)
    if not isinstance(scheduler, EulerDiscreteScheduler):  # DDIM has no σ grid, DPM-Solver another one
        raise ValueError(
            "scheduler: expected an EulerDiscreteScheduler (SuperDiff's own step runs on its σ grid; its "
            f"config options apply), got {type(scheduler).__name__}: "
            "pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)"
        )


def euler_grid(scheduler, num_inference_steps: int) -> tuple[Tensor, Tensor]:
    """The scheduler's σ grid (n + 1) and timesteps (n) without zero-length steps, where σ_{k+1} = σ_k.

    "leading" spacing at 1000 steps repeats its first σ (t = 1000 is clamped to t = 999), and
    final_sigmas_type="sigma_min" can repeat the last; diffusers' Euler step moves by dt = 0 there.
    """
    train = training_sigmas(scheduler)
    spacing = scheduler.config.timestep_spacing
    if spacing == "leading" and num_inference_steps > len(train):  # t = k·⌊T/n⌋ + offset: all the same t
        raise ValueError(
            f"num_inference_steps: expected 1 to {len(train)} with timestep_spacing='leading' (more would "
            f"all be the same timestep), got {num_inference_steps}; or use {TRAILING}"
        )
    scheduler.set_timesteps(num_inference_steps)
    warn_low_start(scheduler.sigmas[0].item(), train, num_inference_steps, spacing)
    return moving_steps(scheduler.sigmas, scheduler.timesteps, f"σ grid for {num_inference_steps} steps")


TRAILING = (
    "pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, "
    "timestep_spacing='trailing'), whose grid starts at σ_max for any number of steps"
)


def warn_low_start(start: float, train: Tensor, num_inference_steps: int, spacing: str) -> None:
    """Warn where the grid starts far below the training σ_max: pure noise, denoised as if it were a partly
    noised image, gives noisy images ("leading" spacing, SDXL's, at few steps or at many that do not
    divide T; "linspace" at 1 step)."""
    sigma_max = train[-1].item()
    if start < 0.5 * sigma_max:
        warn_caller(
            f"num_inference_steps={num_inference_steps}: with timestep_spacing={spacing!r} the scheduler's σ "
            f"grid starts at {start:.3g}, {start / sigma_max:.1%} of the σ_max {sigma_max:.3g} the model was "
            f"trained to start from, so images come out noisy; use {TRAILING}"
        )


@contextmanager
def quiet_encoding():
    """diffusers' and transformers' log lines about long prompts off while a pipeline encodes: they repeat
    the dropped tokens (padding too, for the batched empty prompt) in lines of kilobytes;
    :meth:`warn_truncated` says it in one line per prompt and encoder."""
    libraries = (diffusers_logging, transformers_logging)  # transformers': "Token indices sequence length …"
    levels = [library.get_verbosity() for library in libraries]
    for library in libraries:
        library.set_verbosity_error()
    try:
        yield
    finally:
        for library, level in zip(libraries, levels, strict=True):
            library.set_verbosity(level)


def warn_dropped(requested: int, ran: int, why: str) -> None:
    """Say that a grid lost zero-length steps, and how many steps sampling runs."""
    if ran < requested:
        warn_caller(
            f"num_inference_steps={requested}: {requested - ran} of the scheduler's steps have zero length "
            f"({why}); sampling runs the other {ran}",
        )


def moving_steps(grid: Tensor, timesteps: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """A scheduler's grid (n + 1) and timesteps (n) without zero-length steps; ValueError if none moves."""
    moves = grid[1:] != grid[:-1]
    if not moves.any():
        raise ValueError(f"num_inference_steps: the scheduler's {what} has no step of non-zero length")
    return torch.cat([grid[:-1][moves], grid[-1:]]), timesteps[moves.to(timesteps.device)]


class PromptPredictor(Predictor):
    """ε̂ of ``num_models`` prompts from ONE denoiser call per step, batched with the empty prompt.

    ``embeddings`` rows: the prompts (in mode "joint" the joint prompt too), then the empty prompt (last);
    ``context``: the denoiser's other per-row inputs (SDXL's ``added_cond_kwargs``), nested dicts allowed.
    F_i is prompt i's guided field. ``prediction_type``: what the UNet outputs (diffusers' name), read as ε.
    A model family overrides :meth:`network_input`, :meth:`timestep`, :meth:`denoise` and :meth:`to_eps`.
    """

    def __init__(
        self,
        denoiser,
        embeddings: Tensor,
        num_models: int,
        guidance_scale: float,
        sigmas,
        timesteps,
        prediction_type: str = "epsilon",
        context: dict | None = None,
    ):
        self.denoiser, self.num_models, self.guidance_scale = denoiser, num_models, guidance_scale
        self.eps_from = EPS_FROM.get(prediction_type)
        self.rows = embeddings.shape[0]
        self.context = cast_rows({"encoder_hidden_states": embeddings, **(context or {})}, denoiser.dtype)
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        self.timesteps = timesteps

    def network_input(self, x: Tensor, sigma: float) -> Tensor:
        """What the UNet sees: x_VP = x/√(σ²+1)."""
        return x / math.sqrt(sigma**2 + 1)

    def timestep(self, sigma: float) -> Tensor:
        """The UNet's t for σ: the scheduler's own σ ↔ t pairs (σ is always one of its grid points)."""
        return self.timesteps[self.grid_index(sigma)]

    def grid_index(self, sigma: float) -> int:
        """The index of σ in the sampling grid."""
        return int((self.sigmas - sigma).abs().argmin())

    def denoise(self, x_in: Tensor, t: Tensor, context: dict) -> Tensor:
        """One batched call of the denoiser on all rows."""
        return self.denoiser(x_in, t, **context).sample

    def to_eps(self, out: Tensor, x: Tensor, sigma: float) -> Tensor:
        """The denoiser's native output (rows, B, ...) as ε̂ in VE coordinates."""
        if self.eps_from is None:  # "epsilon"
            return out
        return self.eps_from(out, x, sigma)

    def eps_all(self, x: Tensor, sigma: float) -> Tensor:
        """ε̂ for every embedding row at once: (rows, B, ...), in x's dtype."""
        batch = x.shape[0]
        x_in = self.network_input(x, sigma).to(self.denoiser.dtype).repeat(self.rows, *([1] * (x.ndim - 1)))
        out = self.denoise(x_in, self.timestep(sigma), repeat_rows(self.context, batch))
        wide = torch.promote_types(x.dtype, torch.float32)  # a float16 UNet's v or x̂₀: convert in float32
        return self.to_eps(out.unflatten(0, (self.rows, batch)).to(wide), x.to(wide), sigma).to(x.dtype)

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        eps = self.eps_all(x, sigma)
        eps_cond, eps_uncond = eps[: self.num_models], eps[-1]
        return Prediction(eps_cond, guide(eps_cond, eps_uncond, self.guidance_scale))


def cast_rows(context: dict, dtype) -> dict:
    """Every tensor of a (nested) context in the denoiser's dtype."""
    return {k: cast_rows(v, dtype) if isinstance(v, dict) else v.to(dtype) for k, v in context.items()}


def repeat_rows(context: dict, batch: int) -> dict:
    """Each row of a (nested) context repeated for the batch: row r serves items r·B … r·B + B − 1."""
    return {
        k: repeat_rows(v, batch) if isinstance(v, dict) else v.repeat_interleave(batch, dim=0)
        for k, v in context.items()
    }


def as_prompts(prompt_1, prompt_2) -> list[str]:
    """The prompts to superpose: prompt_1 (a string, or a list for N > 2), then prompt_2 if given."""
    if isinstance(prompt_1, (bytes, bytearray)) or not isinstance(prompt_1, (str, Sequence)):
        raise ValueError(
            f"prompt_1: expected a non-empty string or a list of them, got {type(prompt_1).__name__}"
        )
    prompts = [prompt_1] if isinstance(prompt_1, str) else list(prompt_1)
    if prompt_2 is not None:
        prompts.append(prompt_2)
    for i, p in enumerate(prompts):
        name = "prompt_2" if prompt_2 is not None and i == len(prompts) - 1 else "prompt_1"
        check_prompt(name, p)
    return prompts


def prompt_mode(mode, n_prompts: int) -> tuple[str, Tensor | None]:
    """(core mode, fixed κ or None); "joint" is an extra model N + 1 alone, κ = e_{N+1}."""
    if mode == "joint":
        return "fixed", one_hot(n_prompts, n_prompts + 1)
    return parse_mode(mode, n_prompts, BASELINES)


def check_joint(mode: str, n_prompts: int, joint_prompt) -> None:
    """Mode "joint" writes its prompt itself only for two prompts; a given joint_prompt is text."""
    if mode == "joint" and joint_prompt is None and n_prompts != 2:
        raise ValueError(
            f"joint_prompt: mode 'joint' with {n_prompts} prompts needs an explicit joint_prompt"
        )
    if joint_prompt is not None:
        check_prompt("joint_prompt", joint_prompt)  # as any prompt: text of at most 2000 characters


def check_size(height, width, max_size: int = LIMITS.size, multiple: int = 8) -> None:
    """height and width: multiples of ``multiple`` from 64 to max_size."""
    for name, value in (("height", height), ("width", width)):
        check_int(name, value, 64, f", a multiple of {multiple}")
        if value % multiple:
            raise ValueError(f"{name}: expected a multiple of {multiple} (>= 64), got {value}")
        if value > max_size:
            raise ValueError(f"{name}: expected at most {max_size} pixels, got {value}{raise_hint('size')}")


def check_inputs(
    prompt_1,
    prompt_2,
    *,
    mode="and",
    height=512,
    width=512,
    joint_prompt=None,
    limits: Limits = LIMITS,
    size_multiple: int = 8,
    **options,
) -> list[str]:
    """Validate a call before any work; returns the prompts. Raises ValueError naming the argument.

    ``size_multiple``: height and width must be multiples of it (the pipeline's :attr:`size_multiple`);
    ``options``: the call's other arguments, as :func:`.pipeline_common.check_sampling_args` takes them.
    """
    check_limits(limits)
    prompts = as_prompts(prompt_1, prompt_2)
    prompt_mode(mode, len(prompts))
    if single_prompt_index(mode) is None and len(prompts) < 2:
        raise ValueError(
            f"prompt_2: mode {mode!r} superposes at least two prompts; pass prompt_2 (or a list as prompt_1)"
        )
    check_joint(mode, len(prompts), joint_prompt)
    check_size(height, width, limits.size, size_multiple)
    check_sampling_args(len(prompts), limits=limits, **options)
    batch_size = options.get("batch_size", 1)
    if (pixels := batch_size * height * width) > limits.pixels:
        raise ValueError(
            f"batch_size: {batch_size} images of {height}×{width} are {pixels} pixels, expected at most "
            f"{limits.pixels} in one call: fewer or smaller images{raise_hint('pixels')}"
        )
    if joint_prompt is not None and mode != "joint":
        warn_caller(f"joint_prompt: ignored in mode {mode!r}; it is the prompt of mode 'joint'")
    return prompts


class SuperDiffMixin:
    """The SuperDiff call every model family shares; a family supplies its text conditioning
    (:meth:`prompt_context`), its denoiser's ε in VE coordinates (:meth:`make_predictor`), its σ grid
    (:meth:`sigma_grid`) and its VAE decoding (:meth:`decode_latents`)."""

    limits = LIMITS  # steps, batch_size, size: checked before any work; pipe.limits.replace(...) raises them
    SIZE_MULTIPLE = 8  # the family's usual size_multiple, for checks before any weights load
    denoiser_name = "unet"  # the component that predicts: "unet", or "transformer" (SD3)
    classifier_free = True  # guidance_scale is w of F_i = ε̂_∅ + w·(ε̂_i − ε̂_∅) (Flux: an embedded input)

    @property
    def interrupt(self) -> bool:
        """diffusers' stop flag: ``pipe._interrupt = True`` (e.g. in ``callback_on_step_end``) ends sampling
        after the current step; the output then covers the steps taken (its images still noisy)."""
        return getattr(self, "_interrupt", False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``DiffusionPipeline.from_pretrained``; a one-line error if the weights are unreachable.

        ``dtype=`` (or the older ``torch_dtype=``) works on every supported diffusers: it is passed on under
        the name the installed one expects (the newest diffusers deprecate ``torch_dtype``, older ones ignore
        ``dtype``).
        """
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        if dtype is not None and torch_dtype is not None:
            raise ValueError("dtype, torch_dtype: pass one of them (dtype), not both")
        if dtype is not None or torch_dtype is not None:
            kwargs.update(dtype_kwarg(dtype if dtype is not None else torch_dtype))
        with explain_unavailable(pretrained_model_name_or_path):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def denoiser(self):
        """The network that predicts (UNet or transformer)."""
        return getattr(self, self.denoiser_name)

    @property
    def default_size(self) -> int:
        """The image size (pixels) the denoiser was trained at: 512 for SD v1-4, 1024 for SDXL and SD3."""
        return self.denoiser.config.sample_size * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of it: the VAE's downsampling (8 for SD and SDXL)."""
        return self.vae_scale_factor

    def check_model(self) -> None:
        """Refuse a configuration the pipeline cannot sample (a scheduler assigned after loading)."""

    def check_inputs(self, prompt_1, prompt_2, **kwargs) -> list[str]:
        """Validate a call before any work (see :func:`check_inputs`); returns the prompts."""
        self.check_model()
        return check_inputs(
            prompt_1, prompt_2, limits=self.limits, size_multiple=self.size_multiple, **kwargs
        )

    def warn_truncated(
        self, prompts: list[str], tokenizer=None, name: str = "CLIP", limit: int | None = None, note: str = ""
    ) -> None:
        """Warn, once per prompt and encoder, about prompts longer than a text encoder's window (``limit``
        tokens; default the tokenizer's), in place of diffusers' long log lines (:func:`quiet_encoding`)."""
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        limit = tokenizer.model_max_length if limit is None else limit
        for prompt, ids in zip(prompts, tokenizer(prompts, verbose=False).input_ids, strict=True):
            if len(ids) > limit:
                dropped = tokenizer.decode(ids[limit - 1 : -1])
                warn_caller(
                    f"prompt {abbreviate(prompt, 200)!r} is cut to {name}'s {limit} tokens{note}; "
                    f"dropped: {abbreviate(dropped, 200)!r}",
                )

    def start_latents(
        self, batch_size: int, height: int, width: int, sigma_max: float, generator, device
    ) -> Tensor:
        """x_0 = σ_max·z in float32 (VE form: the core starts log q at the exact N(0, σ_max²I))."""
        shape = self.latent_shape(batch_size, height, width)
        return sigma_max * randn_like(torch.empty(shape, device=device), generator)

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """The core's latents for an image size: (B, denoiser channels, H/f, W/f), f the VAE's factor."""
        f = self.vae_scale_factor
        return (batch_size, self.denoiser.config.in_channels, height // f, width // f)

    def sigma_grid(
        self, num_inference_steps: int, height: int | None = None, width: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """The σ grid and timesteps a call samples on (see :func:`euler_grid`; the same at every size);
        warns if steps are dropped."""
        sigmas, timesteps = euler_grid(self.scheduler, num_inference_steps)
        spacing = self.scheduler.config.timestep_spacing
        warn_dropped(num_inference_steps, len(timesteps), f"σ repeats with timestep_spacing={spacing!r}")
        return sigmas, timesteps

    def enable_fast_sampling(self, **options) -> FastSampling:
        """channels_last, torch.compile of the denoiser and, on CUDA, CUDA graphs (:mod:`superdiff.fast`);
        before or after ``.to(device)``. The first call at a new size or batch compiles."""
        return enable_fast_sampling(self, **options)

    def disable_fast_sampling(self) -> None:
        """Back to the eager denoiser."""
        disable_fast_sampling(self)

    def to(self, *args, **kwargs):
        """``DiffusionPipeline.to``; a fast path enabled before, with CUDA graphs left to the device, decides
        them again on the new one."""
        super().to(*args, **kwargs)
        follow_device(self)
        return self

    def enable_model_cpu_offload(self, *args, **kwargs):
        """diffusers' model CPU offload; a fast path enabled before goes on without CUDA graphs."""
        had = cuda_graphs_on(self)
        super().enable_model_cpu_offload(*args, **kwargs)
        drop_cuda_graphs(self, had)

    def enable_sequential_cpu_offload(self, *args, **kwargs):
        """diffusers' sequential CPU offload; a fast path enabled before goes on without CUDA graphs."""
        had = cuda_graphs_on(self)
        super().enable_sequential_cpu_offload(*args, **kwargs)
        drop_cuda_graphs(self, had)

    def save_pretrained(self, *args, **kwargs):
        """``DiffusionPipeline.save_pretrained``, also after :meth:`enable_fast_sampling` (channels_last)."""
        with contiguous_weights(self):
            return super().save_pretrained(*args, **kwargs)

    def prompt_context(self, prompts: list[str], device, height: int, width: int) -> dict:
        """The denoiser's text conditioning: rows for the prompts, then the empty prompt (last)."""
        raise NotImplementedError

    def make_predictor(self, context: dict, n_models: int, guidance_scale: float, sigmas, timesteps):
        """The :class:`PromptPredictor` of this family's denoiser."""
        raise NotImplementedError

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents -> (B, H, W, 3) uint8 images on CPU."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(
        self,
        prompt_1: str | list[str],
        prompt_2: str | None = None,
        seed: int | None = None,
        num_inference_steps: int = 1000,
        batch_size: int = 1,
        lift: float | Sequence[float] = 0.0,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        mode: str = "and",
        temperature: float = 1.0,
        log_weights: Sequence[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        joint_prompt: str | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> SuperDiffOutput:
        """Sample images that superpose the prompts; ``out[0]`` is the first (H, W, 3) uint8 image.

        Args:
            prompt_1: first concept (e.g. "a flamingo"), or a list of N >= 2 prompts (then prompt_2 is
                optional and, if given, appended).
            prompt_2: second concept (e.g. "a candy cane").
            seed: from 0 to 2**32 − 1; seeds a CPU generator, so the same seed gives the same images on
                any device; None: random.
            num_inference_steps: Euler–Maruyama steps on the scheduler's σ grid (the paper uses 1000; at
                most ``self.limits.steps``, 10 000). Steps of zero length (σ_{k+1} = σ_k, e.g. "leading"
                spacing at 1000 steps) are skipped with a warning; ``out.sigmas`` is the grid that ran.
            batch_size: images per call, each from its own noise (at most ``self.limits.batch_size``, 1024).
            lift: AND only. log q_1 − log q_2 grows by lift/n per step and ends at +lift: ``lift > 0`` favours
                prompt_1, ``lift < 0`` prompt_2. A list gives one value per prompt.
            guidance_scale: classifier-free guidance w (>= 0) of the field; densities use unguided ε̂. Below 1
                it weakens the prompts (0 ignores them) and warns; 1 is no guidance.
            height, width: image size in pixels, multiples of 8 from 64 to ``self.limits.size`` (2048);
                None: the size the model was trained at, ``self.default_size`` (512 for SD v1-4, 1024 SDXL).
            mode: "and" (equal density, default), "or" (mixture), "avg" (κ = 1/N), or the paper's baselines
                "prompt_1" / "prompt_2" / ... (one prompt alone) and "joint" (one prompt "A that looks
                like B").
                Baselines trace log q of every prompt along their trajectory; their κ is one-hot
                (all zeros for "joint": no prompt of the list moves x).
            temperature: OR only, T in κ = softmax(T·(log q + log_weights)).
            log_weights: OR only, one log prior weight per prompt (default: equal).
            generator: a torch.Generator instead of seed, or a list of batch_size (image i from generator i:
                batching several seeds gives each image as if it ran alone).
            output_type: "pt" (uint8 tensor (B, H, W, 3), default), "np" or "pil".
            joint_prompt: the prompt of mode "joint" (default "{prompt_1} that looks like {prompt_2}").
            callback_on_step_end: ``f(pipe, step, timestep, callback_kwargs)`` after every step, with
                ``callback_kwargs = {"latents", "kappa" (B, N), "log_q" (B, N), "sigma", "sigma_next"}``
                (copies; latents and log_q are at sigma_next); its return value is ignored (the trajectory
                cannot be changed from a callback); setting ``pipe._interrupt = True`` there ends sampling
                after that step, as in diffusers.

        Returns:
            SuperDiffOutput: images, kappa (n, B, N) float32 and log_q (n + 1, B, N) float64 on CPU, sigmas,
            latents.

        Raises:
            ValueError: a bad argument, named, before any work; NonFiniteError (a ValueError) when sampling
                produced NaN or ±inf.
        """
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        prompts = self.check_inputs(
            prompt_1,
            prompt_2,
            seed=seed,
            num_inference_steps=num_inference_steps,
            batch_size=batch_size,
            lift=lift,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            mode=mode,
            temperature=temperature,
            log_weights=log_weights,
            generator=generator,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            joint_prompt=joint_prompt,
        )
        if self.classifier_free:
            warn_weak_guidance(guidance_scale, "; diffusers' guidance off (guidance_scale <= 1) is 1 here")
        core_mode, kappa = prompt_mode(mode, len(prompts))
        extra = [joint_prompt or JOINT_TEMPLATE.format(*prompts)] if mode == "joint" else []
        device, generator = self._execution_device, seeded(seed, generator)
        sigmas, timesteps = self.sigma_grid(num_inference_steps, height, width)  # may refuse: before encoding
        context = self.prompt_context(prompts + extra, device, height, width)
        n_models = len(prompts + extra)  # "joint": its prompt is model N + 1, the one x moves with
        predictor = self.make_predictor(context, n_models, guidance_scale, sigmas, timesteps.to(device))
        latents = self.start_latents(batch_size, height, width, sigmas[0].item(), generator, device)
        self._interrupt = False
        with self.progress_bar(total=len(timesteps)) as bar:
            callback = step_callback(self, callback_on_step_end, len(prompts), timesteps, bar.update)
            options = superpose_options(mode, len(prompts), core_mode, kappa, lift, temperature, log_weights)
            result = superpose(predictor, latents, sigmas, **options, generator=generator, callback=callback)

        images = self.decode_latents(result.samples)
        self.maybe_free_model_hooks()
        return build_output(result, images, output_type, prompts + extra, len(prompts), mode)


@resolved_annotations
class SuperDiffPipeline(SuperDiffMixin, DiffusionPipeline):
    """SuperDiff (Skreta et al., ICLR 2025): superpose Stable Diffusion prompts with OR / AND.

    Loads like any Stable Diffusion 1.x / 2.x pipeline (``from_pretrained("CompVis/stable-diffusion-v1-4")``);
    whatever scheduler the checkpoint ships, sampling uses the σ grid of an ``EulerDiscreteScheduler``.
    The UNet may predict ε, v (SD 2.x 768-v) or x₀, as ``scheduler.config.prediction_type`` says.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: EulerDiscreteScheduler,
    ):
        super().__init__()
        if getattr(unet.config, "addition_embed_type", None) is not None:  # SDXL's "text_time"
            raise ValueError(
                f"unet: a UNet with added {unet.config.addition_embed_type!r} conditioning (SDXL) is not "
                "Stable Diffusion 1.x/2.x; load it with superdiff.SuperDiffXLPipeline"
            )
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=as_euler(scheduler)
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def check_model(self) -> None:
        """An Euler scheduler of a prediction type the pipeline converts to ε (one assigned after loading)."""
        check_euler(self.scheduler)

    def encode_prompt(self, prompts: list[str], device) -> Tensor:
        """CLIP hidden states of the prompts followed by the empty prompt: (len(prompts) + 1, L, D)."""
        self.warn_truncated(prompts)
        tokens = self.tokenizer(
            prompts + [""],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def prompt_context(self, prompts: list[str], device, height: int, width: int) -> dict:
        """CLIP hidden states of the prompts and the empty prompt (:meth:`encode_prompt`)."""
        return {"embeddings": self.encode_prompt(prompts, device)}

    def eps_model(self, prompt: str = "") -> Callable[[Tensor, Tensor], Tensor]:
        """ε̂(x, σ) of one prompt, unguided, in VE coordinates: latents x (B, 4, h, w), σ (B,) anywhere in the
        scheduler's training range, differentiable in both (for :func:`.fokker_planck.score_fpe_residual`)."""
        self.check_model()
        with torch.no_grad():
            embedding = self.encode_prompt([prompt], self._execution_device)[:1]  # without the empty prompt
        train = training_sigmas(self.scheduler)
        eps_from = EPS_FROM.get(self.scheduler.config.prediction_type)

        def eps(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(len(x))
            s = sigma.view(-1, *[1] * (x.ndim - 1))
            x_in = (x / (s**2 + 1).sqrt()).to(self.unet.dtype)
            t = timestep_of(sigma, train)
            out = self.unet(x_in, t, encoder_hidden_states=embedding.expand(len(x), -1, -1)).sample
            out = out.to(x.dtype)
            return out if eps_from is None else eps_from(out, x, s)

        return eps

    def make_predictor(self, context: dict, n_models: int, guidance_scale: float, sigmas, timesteps):
        """One UNet call per step; ε, v or x̂₀ as the scheduler's prediction_type says."""
        prediction_type = self.scheduler.config.prediction_type
        return PromptPredictor(
            self.unet, context["embeddings"], n_models, guidance_scale, sigmas, timesteps, prediction_type
        )

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents -> (B, H, W, 3) uint8 images on CPU."""
        image = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return to_uint8(image)
