"""SuperDiff for Stable Diffusion XL on diffusers: superpose text prompts with OR / AND.

diffusers' ``StableDiffusionXLPipeline`` supplies the two text encoders (``encode_prompt``), the size
conditioning (``_get_add_time_ids``) and loading; :class:`~superdiff.pipeline_superdiff.SuperDiffMixin`
supplies the call. This file also works as a diffusers custom pipeline
(``custom_pipeline=XL_CUSTOM_PIPELINE``) where the ``superdiff`` package is installed.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch import Tensor
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from superdiff.output import to_uint8
from superdiff.pipeline_common import resolved_annotations
from superdiff.pipeline_superdiff import (
    PromptPredictor,
    SuperDiffMixin,
    as_euler,
    check_euler,
    quiet_encoding,
)

XL_CUSTOM_PIPELINE = __file__  # DiffusionPipeline.from_pretrained(folder, custom_pipeline=XL_CUSTOM_PIPELINE)


@resolved_annotations
class SuperDiffXLPipeline(SuperDiffMixin, StableDiffusionXLPipeline):
    """SuperDiff (Skreta et al., ICLR 2025) on Stable Diffusion XL: superpose prompts with OR / AND.

    Loads like any SDXL base checkpoint (``from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")``);
    sampling uses the σ grid of an ``EulerDiscreteScheduler`` whatever scheduler the checkpoint ships.
    Each prompt row is conditioned as diffusers' SDXL pipeline does it: penultimate hidden states of both
    CLIP encoders, the pooled embedding of the second, and time ids for an uncropped height × width image;
    the unconditional row is zeros when ``force_zeros_for_empty_prompt`` (the SDXL default).
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: EulerDiscreteScheduler,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=as_euler(scheduler),
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )

    def check_model(self) -> None:
        """An Euler scheduler of a prediction type the pipeline converts to ε (one assigned after loading)."""
        check_euler(self.scheduler)

    def time_ids(self, height: int, width: int, pooled: Tensor) -> Tensor:
        """SDXL's size conditioning (1, 6): original size = target size = (height, width), crop (0, 0)."""
        encoder = self.text_encoder_2
        projection_dim = pooled.shape[-1] if encoder is None else encoder.config.projection_dim
        size = (height, width)
        return self._get_add_time_ids(size, (0, 0), size, pooled.dtype, projection_dim)

    def prompt_context(self, prompts: list[str], device, height: int, width: int) -> dict:
        """Rows for the prompts, then the empty prompt: hidden states, pooled embeddings and time ids."""
        self.warn_truncated(prompts, self.tokenizer if self.tokenizer_2 is None else self.tokenizer_2)
        with quiet_encoding():
            embeds, uncond, pooled, uncond_pooled = self.encode_prompt(
                prompts, device=device, do_classifier_free_guidance=True
            )
        time_ids = self.time_ids(height, width, pooled).repeat(len(prompts) + 1, 1)
        return {
            "embeddings": torch.cat([embeds, uncond[:1]]).to(device),
            "added_cond_kwargs": {
                "text_embeds": torch.cat([pooled, uncond_pooled[:1]]).to(device),
                "time_ids": time_ids.to(device),
            },
        }

    def make_predictor(self, context: dict, n_models: int, guidance_scale: float, sigmas, timesteps):
        """One UNet call per step on all rows; ε, v or x̂₀ as the scheduler's prediction_type says."""
        return PromptPredictor(
            self.unet,
            context["embeddings"],
            n_models,
            guidance_scale,
            sigmas,
            timesteps,
            self.scheduler.config.prediction_type,
            context={"added_cond_kwargs": context["added_cond_kwargs"]},
        )

    def vae_input(self, latents: Tensor) -> Tensor:
        """Latents in the VAE's space: z/scaling_factor, or z·std/scaling_factor + mean where it has them."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return latents / config.scaling_factor
        mean, std = (torch.tensor(v).view(1, -1, 1, 1).to(latents) for v in (mean, std))
        return latents * std / config.scaling_factor + mean

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents -> (B, H, W, 3) uint8 on CPU; a float16 VAE with force_upcast decodes in float32."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:  # SDXL's VAE overflows in float16
            self.vae.to(torch.float32)
        try:
            image = self.vae.decode(self.vae_input(latents).to(self.vae.dtype)).sample
        finally:
            if upcast:
                self.vae.to(torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return to_uint8(image)
