"""SuperDiff for FLUX.1 (dev / schnell; rectified flow) on diffusers: superpose text prompts with OR / AND.

Flux is flow matching like SD3 (:mod:`superdiff.pipeline_sd3`: v read as the ε̂ of the VE process), but
without classifier-free guidance: FLUX.1-dev embeds the guidance scale in the transformer
(``guidance_embeds``), so each prompt's field is its own ε̂ and no empty-prompt row is evaluated. The core
keeps the (B, 16, H/8, W/8) latents; :class:`FluxPromptPredictor` packs them into 2×2-patch tokens for the
transformer and unpacks its velocity.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch import Tensor

from .limits import warn_caller
from .pipeline_common import check_int, resolved_annotations
from .pipeline_sd3 import (
    FlowPromptPredictor,
    SuperDiffSD3Pipeline,
    as_flow_match,
    check_flow_scheduler,
    dynamic_shift,
    flow_grid,
    installed_parts,
)
from .pipeline_superdiff import SuperDiffMixin, quiet_encoding, warn_dropped
from .sampling import Prediction

PATCH = 2  # Flux packs 2×2 latent patches into one token
DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale


class FluxPromptPredictor(FlowPromptPredictor):
    """ε̂ of ``num_models`` prompts from ONE Flux transformer call per step: one row per prompt, no empty one.

    F_i = ε̂_i (Prediction(ε̂, ε̂)): ``guidance_scale`` is the embedded guidance, passed to a transformer with
    ``guidance_embeds`` (FLUX.1-dev) and unused otherwise (schnell). ``txt_ids`` (L_txt, 3) and ``img_ids``
    (L_img, 3) are shared by every row; ``batched_ids``: the installed diffusers wants them (rows, L, 3)
    (0.30), else 2-D. ``unpack``: tokens (rows, L_img, 64) -> latents (rows, 16, h, w), the pipeline's own
    ``_unpack_latents`` at the call's image size.
    """

    def __init__(
        self,
        transformer,
        embeddings: Tensor,
        num_models: int,
        guidance_scale: float,
        sigmas,
        timesteps,
        *,
        context: dict,
        txt_ids: Tensor,
        img_ids: Tensor,
        unpack,
        batched_ids: bool = False,
        num_train_timesteps: int = 1000,
    ):
        super().__init__(
            transformer,
            embeddings,
            num_models,
            guidance_scale,
            sigmas,
            timesteps,
            context=context,
            num_train_timesteps=num_train_timesteps,
        )
        self.txt_ids, self.img_ids, self.unpack, self.batched_ids = txt_ids, img_ids, unpack, batched_ids

    def denoise(self, x_in: Tensor, t: Tensor, context: dict) -> Tensor:
        """Pack, one batched transformer call on all rows (timestep t/1000 as diffusers passes it, the
        guidance embedding), unpack: v (rows, 16, h, w)."""
        n, channels, height, width = x_in.shape
        tokens = FluxPipeline._pack_latents(x_in, n, channels, height, width)
        txt_ids, img_ids = self.txt_ids, self.img_ids
        if self.batched_ids:
            txt_ids, img_ids = txt_ids.expand(n, -1, -1), img_ids.expand(n, -1, -1)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full([n], float(self.guidance_scale), device=x_in.device, dtype=torch.float32)
        out = self.denoiser(
            hidden_states=tokens,
            timestep=(t / 1000).expand(n),
            guidance=guidance,
            txt_ids=txt_ids,
            img_ids=img_ids,
            **context,
            return_dict=False,
        )[0]
        return self.unpack(out)

    def __call__(self, x: Tensor, sigma: float) -> Prediction:
        eps = self.eps_all(x, sigma)
        return Prediction(eps, eps)


@resolved_annotations
class SuperDiffFluxPipeline(SuperDiffMixin, FluxPipeline):
    """SuperDiff (Skreta et al., ICLR 2025) on FLUX.1 (dev, schnell): superpose prompts with OR / AND.

    Loads like diffusers' ``FluxPipeline`` (CLIP for the pooled embedding, T5 required); any other scheduler
    becomes a ``FlowMatchEulerDiscreteScheduler`` of its config. The call samples on FluxPipeline's t grid
    (linspace(1, 1/n, n), dynamically shifted by the image's token count) as σ = t/(1 − t), t = 1 moved to a
    finite σ_max.

    The call and output are :class:`.SuperDiffPipeline`'s, except that ``guidance_scale`` (default 3.5, as
    diffusers') is Flux's embedded guidance, the same for every prompt, not classifier-free guidance.
    Height and width: multiples of 16. ``out.log_q`` is in VE coordinates (see
    :class:`.SuperDiffSD3Pipeline`).
    """

    denoiser_name = "transformer"
    classifier_free = False  # guidance_scale is the transformer's embedded guidance
    max_sequence_length = 512  # T5 tokens per prompt (FLUX.1-schnell: 256)

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer: FluxTransformer2DModel,
        image_encoder=None,
        feature_extractor=None,
    ):
        parts = dict(
            scheduler=as_flow_match(scheduler), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
            image_encoder=image_encoder, feature_extractor=feature_extractor,
        )  # fmt: skip
        super().__init__(**installed_parts(FluxPipeline, parts))

    def __call__(self, *args, **kwargs):
        """:meth:`.SuperDiffMixin.__call__`, guidance_scale being Flux's embedded guidance (default 3.5)."""
        bound = inspect.signature(SuperDiffMixin.__call__).bind_partial(self, *args, **kwargs)
        if "guidance_scale" in bound.arguments and not self.transformer.config.guidance_embeds:
            warn_caller("guidance_scale: ignored by this Flux model, which has no guidance input (schnell)")
        bound.arguments.setdefault("guidance_scale", DEFAULT_GUIDANCE)
        return super().__call__(*bound.args[1:], **bound.kwargs)

    @property
    def latent_scale(self) -> int:
        """The VAE's downsampling (8); diffusers' ``vae_scale_factor`` means 16 (with the packing) in 0.30."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """FluxPipeline's default image size in pixels (1024)."""
        return self.default_sample_size * self.vae_scale_factor

    def check_model(self) -> None:
        """A flow-matching scheduler (one assigned after loading); T5 tokens as FluxPipeline takes them."""
        check_flow_scheduler(self.scheduler)
        check_int("pipe.max_sequence_length", self.max_sequence_length, 1, high=512)

    SIZE_MULTIPLE = 16  # before loading: the VAE's 8 times 2×2 latent patches

    @property
    def size_multiple(self) -> int:
        """16: the VAE's 8, times Flux's 2×2 latent patches."""
        return self.latent_scale * PATCH

    def image_seq_len(self, height: int | None = None, width: int | None = None) -> int:
        """Image tokens of the transformer at a size (None: the default size)."""
        sizes = [(s or self.default_size) // (self.latent_scale * PATCH) for s in (height, width)]
        return sizes[0] * sizes[1]

    def sigma_grid(self, num_inference_steps: int, height: int | None = None, width: int | None = None):
        """FluxPipeline's t grid as VE σ (see :func:`.pipeline_sd3.flow_grid`): linspace(1, 1/n, n) through
        the scheduler's (dynamic) shift; warns if zero-length steps are dropped."""
        config = self.scheduler.config
        ts = None
        if not config.get("use_flow_sigmas", False):
            ts = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = dynamic_shift(config, self.image_seq_len(height, width))
        sigmas, timesteps = flow_grid(self.scheduler, num_inference_steps, mu, ts)
        warn_dropped(num_inference_steps, len(timesteps), "t repeats")
        return sigmas, timesteps

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, ...]:
        """Unpacked latents (B, 16, H/8, W/8): the core never sees the 2×2-patch tokens."""
        scale = self.latent_scale
        return (batch_size, self.transformer.config.in_channels // PATCH**2, height // scale, width // scale)

    def prompt_context(self, prompts: list[str], device, height: int, width: int) -> dict:
        """T5 hidden states and pooled CLIP embeddings, one row per prompt (no empty prompt); the text and
        image position ids; the image size."""
        self.warn_truncated(prompts, note=f" for its pooled embedding (T5 reads {self.max_sequence_length})")
        self.warn_truncated(prompts, self.tokenizer_2, "T5", limit=self.max_sequence_length)
        with quiet_encoding():
            embeddings, pooled, txt_ids = self.encode_prompt(
                prompts, None, device=device, max_sequence_length=self.max_sequence_length
            )
        channels = self.transformer.config.in_channels // PATCH**2
        _, img_ids = self.prepare_latents(  # diffusers' own ids (their shape changed across versions)
            1, channels, height, width, embeddings.dtype, device, None, latents=torch.empty(0)
        )
        return {
            "embeddings": embeddings,
            "pooled_projections": pooled,
            "txt_ids": txt_ids[0] if txt_ids.ndim == 3 else txt_ids,
            "img_ids": img_ids[0] if img_ids.ndim == 3 else img_ids,
            "batched_ids": img_ids.ndim == 3,
            "height": height,
            "width": width,
        }

    def make_predictor(self, context: dict, n_models: int, guidance_scale: float, sigmas, timesteps):
        """One transformer call per step on the N prompt rows; v read as ε̂."""
        height, width = context["height"], context["width"]
        return FluxPromptPredictor(
            self.transformer,
            context["embeddings"],
            n_models,
            guidance_scale,
            sigmas,
            timesteps,
            context={"pooled_projections": context["pooled_projections"]},
            txt_ids=context["txt_ids"],
            img_ids=context["img_ids"],
            unpack=lambda tokens: self._unpack_latents(tokens, height, width, self.vae_scale_factor),
            batched_ids=context["batched_ids"],
            num_train_timesteps=self.scheduler.config.num_train_timesteps,
        )

    def decode_latents(self, latents: Tensor) -> Tensor:
        """x₀ -> (B, H, W, 3) uint8 on CPU: latents/scaling_factor + shift_factor, as SD3."""
        return SuperDiffSD3Pipeline.decode_latents(self, latents)


def _flux_call_signature() -> inspect.Signature:
    """The shared call's signature with Flux's default guidance_scale (help() and IDEs show it)."""
    signature = inspect.signature(SuperDiffMixin.__call__)
    return signature.replace(
        parameters=[
            p.replace(default=DEFAULT_GUIDANCE) if p.name == "guidance_scale" else p
            for p in signature.parameters.values()
        ]
    )


SuperDiffFluxPipeline.__call__.__signature__ = _flux_call_signature()
