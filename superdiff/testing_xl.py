"""A tiny random SuperDiffXLPipeline built offline (no download): tests and CPU tries of the SDXL path."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from .pipeline_xl import SuperDiffXLPipeline
from .testing import HIDDEN, sd_scheduler, tiny_components, tiny_text_config, tiny_tokenizer

TIME_EMBED = 8  # width of each of SDXL's 6 size-conditioning numbers' embedding
XL_UNET = dict(  # the tiny SD UNet, conditioned as SDXL's: both encoders' hidden states, pooled + time ids
    cross_attention_dim=2 * HIDDEN,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED,
    projection_class_embeddings_input_dim=6 * TIME_EMBED + HIDDEN,
    use_linear_projection=True,
)


def tiny_xl_components(tokenizer) -> dict:
    """Random SDXL UNet, VAE and the two CLIP text encoders (the second with a projection), all tiny."""
    parts = tiny_components(tokenizer)
    sd_unet = {
        k: v for k, v in parts["unet"].config.items() if not k.startswith("_")
    }  # no _use_default_values
    unet = UNet2DConditionModel.from_config({**sd_unet, **XL_UNET})
    text_config = CLIPTextConfig(**tiny_text_config(tokenizer), projection_dim=HIDDEN)
    encoder_2 = CLIPTextModelWithProjection(text_config).eval()
    return {**parts, "unet": unet, "text_encoder_2": encoder_2}


def tiny_xl_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> SuperDiffXLPipeline:
    """SuperDiffXLPipeline of tiny random components, seeded; 64×64 images in seconds on CPU.

    The scheduler is SDXL base's Euler ("leading" spacing) with ``prediction_type`` ("epsilon",
    "v_prediction", "sample"); both encoders share one tokenizer.
    """
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        parts = tiny_xl_components(tokenizer)
    pipe = SuperDiffXLPipeline(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=sd_scheduler(prediction_type=prediction_type, timestep_spacing="leading"),
        add_watermarker=False,
        **parts,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
