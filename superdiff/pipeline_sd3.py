"""SuperDiff for Stable Diffusion 3 / 3.5 (rectified flow) on diffusers: superpose text prompts with OR / AND.

The transformer predicts the velocity v = ε − x₀ of x_t = (1 − t)·x₀ + t·ε; :class:`FlowPromptPredictor` reads
it as the ε̂ of the VE process y = x_t/(1 − t), σ = t/(1 − t) (see :mod:`superdiff.flow`), so the core's
sampler and Itô density estimator run unchanged.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from torch import Tensor

from .flow import eps_from_velocity, flow_sigmas, t_of_sigma
from .output import to_uint8
from .pipeline_common import resolved_annotations
from .pipeline_superdiff import PromptPredictor, SuperDiffMixin, moving_steps, quiet_encoding, warn_dropped

T5_TOKENS = 256  # T5 tokens per prompt: StableDiffusion3Pipeline's max_sequence_length


def calculate_shift(seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float):
    """The dynamic shift μ for seq_len image tokens: linear from base_shift to max_shift, as diffusers."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (seq_len - base_seq_len)


def dynamic_shift(config, image_seq_len: int) -> float | None:
    """``mu`` of a flow scheduler's dynamic shifting for image_seq_len image tokens, as diffusers computes it;
    None where the config shifts statically."""
    if not config.get("use_dynamic_shifting", False):
        return None
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.16),
    )


def flow_timesteps(sigmas, num_train_timesteps: int) -> Tensor:
    """t·num_train_timesteps, t = σ/(1 + σ), of each σ (float32, as the network takes them)."""
    return torch.tensor(
        [t_of_sigma(sigma) * num_train_timesteps for sigma in sigmas.tolist()], dtype=torch.float32
    )


def flow_grid(scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int, mu=None, base_ts=None):
    """(VE σ grid (n + 1, float64, finite σ_max, last 0), the timesteps the network sees (n)) of the
    scheduler's t grid: the first is σ_max's t, not the scheduler's t = 1.

    Zero-length steps (t_{k+1} = t_k) are dropped; ``mu``: the dynamic shift, where the config asks for one;
    ``base_ts``: the unshifted t grid passed as the scheduler's ``sigmas`` (Flux's); None: its own.
    """
    options = ({} if mu is None else {"mu": mu}) | ({} if base_ts is None else {"sigmas": base_ts})
    scheduler.set_timesteps(None if base_ts is not None else num_inference_steps, device="cpu", **options)
    ts, timesteps = moving_steps(
        scheduler.sigmas, scheduler.timesteps, f"t grid for {num_inference_steps} steps"
    )
    sigmas = flow_sigmas(ts)
    return sigmas, flow_timesteps(sigmas[:-1], scheduler.config.num_train_timesteps)


def check_flow_scheduler(scheduler) -> None:
    """A FlowMatchEulerDiscreteScheduler whose t runs 1 → 0 (not Mochi's inverted σ); else ValueError."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(
            f"scheduler: expected a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}"
        )
    if scheduler.config.get("invert_sigmas", False):
        raise ValueError("scheduler.config.invert_sigmas: expected False (t must run from 1 to 0)")


def as_flow_match(scheduler) -> FlowMatchEulerDiscreteScheduler:
    """The checkpoint's scheduler as a FlowMatchEulerDiscreteScheduler of the same config, checked."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    check_flow_scheduler(scheduler)
    return scheduler


def installed_parts(pipeline_class, parts: dict) -> dict:
    """What the installed diffusers' ``pipeline_class.__init__`` takes of parts (< 0.32: no image_encoder)."""
    accepted = inspect.signature(pipeline_class.__init__).parameters
    return {name: part for name, part in parts.items() if name in accepted}


class FlowPromptPredictor(PromptPredictor):
    """ε̂ of ``num_models`` prompts from ONE SD3 transformer call per step (the empty prompt last).

    The transformer sees x_t = y/(1 + σ) at timestep t·num_train_timesteps, t = σ/(1 + σ) (so the first
    point, the finite σ_max standing for t = 1, is evaluated at its own t < 1); its v becomes
    ε̂ = x_t + (1 − t)·v = (y + v)/(1 + σ). Guidance on ε̂ equals guidance on v (affine in v, same x_t).
    """

    def __init__(
        self,
        transformer,
        embeddings: Tensor,
        num_models: int,
        guidance_scale: float,
        sigmas,
        timesteps,
        context: dict | None = None,
        num_train_timesteps: int = 1000,
    ):
        super().__init__(
            transformer, embeddings, num_models, guidance_scale, sigmas, timesteps, context=context
        )
        self.num_train_timesteps = num_train_timesteps
        # every grid point's t, on the device once: a tensor made from a float each step would be a
        # blocking host-to-device copy per step
        self.t_grid = flow_timesteps(self.sigmas, num_train_timesteps).to(timesteps.device)

    def network_input(self, x: Tensor, sigma: float) -> Tensor:
        """x_t = y/(1 + σ)."""
        return x / (1 + sigma)

    def timestep(self, sigma: float) -> Tensor:
        """t·num_train_timesteps with t = σ/(1 + σ), float32 on the timesteps' device (σ is a grid point)."""
        return self.t_grid[self.grid_index(sigma)]

    def denoise(self, x_in: Tensor, t: Tensor, context: dict) -> Tensor:
        """One batched transformer call on all rows: v."""
        out = self.denoiser(hidden_states=x_in, timestep=t.expand(len(x_in)), **context, return_dict=False)
        return out[0]

    def to_eps(self, out: Tensor, x: Tensor, sigma: float) -> Tensor:
        """ε̂ = x_t + (1 − t)·v."""
        return eps_from_velocity(out, self.network_input(x, sigma), t_of_sigma(sigma))


@resolved_annotations
class SuperDiffSD3Pipeline(SuperDiffMixin, StableDiffusion3Pipeline):
    """SuperDiff (Skreta et al., ICLR 2025) on Stable Diffusion 3 / 3.5: superpose prompts with OR / AND.

    Loads like diffusers' ``StableDiffusion3Pipeline`` (T5 optional: ``text_encoder_3=None,
    tokenizer_3=None``); any other scheduler becomes a ``FlowMatchEulerDiscreteScheduler`` of its config,
    whose t grid (shift, dynamic shift) the call samples on, as σ = t/(1 − t) with t = 1 moved to a finite
    σ_max.

    The call and output are :class:`.SuperDiffPipeline`'s. ``out.log_q`` is in VE coordinates,
    y = x_t/(1 − t): the flow density is log p_t(x_t) = log q_σ(y) + d·log(1 + σ)
    (:func:`.flow.log_prob_flow`), a term the same for every prompt, so κ is unaffected.
    """

    denoiser_name = "transformer"
    _optional_components = [*StableDiffusion3Pipeline._optional_components, "text_encoder_3", "tokenizer_3"]

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
        image_encoder=None,
        feature_extractor=None,
    ):
        parts = dict(
            transformer=transformer, scheduler=as_flow_match(scheduler), vae=vae, text_encoder=text_encoder,
            tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )  # fmt: skip
        super().__init__(**installed_parts(StableDiffusion3Pipeline, parts))

    def check_model(self) -> None:
        """A flow-matching scheduler (one assigned after loading)."""
        check_flow_scheduler(self.scheduler)

    def check_inputs(self, prompt_1, prompt_2, **kwargs) -> list[str]:
        """:meth:`.SuperDiffMixin.check_inputs`, and sizes within the transformer's position embeddings."""
        prompts = super().check_inputs(prompt_1, prompt_2, **kwargs)
        top = self.transformer.config.get("pos_embed_max_size") or math.inf  # None: no such bound
        largest = top * self.size_multiple  # SD3 medium: 192 × 16 = 3072 pixels
        for name in ("height", "width"):
            if kwargs.get(name, 0) > largest:
                raise ValueError(
                    f"{name}: expected at most {largest} for this transformer ({top} position embeddings of "
                    f"{self.size_multiple}-pixel patches), got {kwargs[name]}"
                )
        return prompts

    SIZE_MULTIPLE = 16  # before loading: the VAE's 8 times 2×2 latent patches

    @property
    def size_multiple(self) -> int:
        """16: the VAE's 8, times the transformer's 2×2 latent patches."""
        return self.vae_scale_factor * self.transformer.config.patch_size

    def dynamic_shift(self, height: int | None = None, width: int | None = None) -> float | None:
        """``mu`` of the scheduler's dynamic shifting for an image size, as diffusers' SD3 pipeline computes
        it (None: the default size); None where the config shifts statically."""
        tokens = [
            (s or self.default_size) // self.vae_scale_factor // self.transformer.config.patch_size
            for s in (height, width)
        ]
        return dynamic_shift(self.scheduler.config, tokens[0] * tokens[1])

    def sigma_grid(self, num_inference_steps: int, height: int | None = None, width: int | None = None):
        """The scheduler's t grid as VE σ (see :func:`flow_grid`); warns if zero-length steps are dropped."""
        sigmas, timesteps = flow_grid(self.scheduler, num_inference_steps, self.dynamic_shift(height, width))
        warn_dropped(num_inference_steps, len(timesteps), "t repeats")
        return sigmas, timesteps

    def prompt_context(self, prompts: list[str], device, height: int, width: int) -> dict:
        """Joint (CLIP-L, CLIP-G, T5 or zeros) and pooled CLIP embeddings; the empty prompt last."""
        if self.tokenizer_3 is None:  # CLIP's embeddings alone
            self.warn_truncated(prompts)
        else:
            self.warn_truncated(prompts, note=f" (T5 reads {T5_TOKENS})")
            self.warn_truncated(prompts, self.tokenizer_3, "T5", limit=T5_TOKENS)
        with quiet_encoding():
            embeddings, _, pooled, _ = self.encode_prompt(
                prompts + [""], None, None, device=device, do_classifier_free_guidance=False,
                max_sequence_length=T5_TOKENS,
            )  # fmt: skip
        return {"embeddings": embeddings, "pooled_projections": pooled}

    def make_predictor(self, context: dict, n_models: int, guidance_scale: float, sigmas, timesteps):
        """One transformer call per step; v read as ε̂."""
        return FlowPromptPredictor(
            self.transformer,
            context["embeddings"],
            n_models,
            guidance_scale,
            sigmas,
            timesteps,
            context={"pooled_projections": context["pooled_projections"]},
            num_train_timesteps=self.scheduler.config.num_train_timesteps,
        )

    def decode_latents(self, latents: Tensor) -> Tensor:
        """x₀ (y at σ = 0) -> (B, H, W, 3) uint8 on CPU: SD3's latents/scaling_factor + shift_factor."""
        config = self.vae.config
        latents = latents / config.scaling_factor + (config.shift_factor or 0.0)
        return to_uint8(self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0])
