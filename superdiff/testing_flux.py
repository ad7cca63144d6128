"""A tiny random SuperDiffFluxPipeline built offline (no download): tests and CPU tries of Flux's path."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel

from .pipeline_flux import SuperDiffFluxPipeline
from .testing import HIDDEN, tiny_text_config, tiny_tokenizer, tiny_vae
from .testing_sd3 import tiny_t5_encoder, tiny_t5_tokenizer

T5_WIDTH = 2 * HIDDEN  # T5's width = the transformer's joint_attention_dim
FLUX_VAE = dict(scaling_factor=0.3611, shift_factor=0.1159)  # black-forest-labs/FLUX.1-dev's VAE
FLUX_SCHEDULER = dict(  # FLUX.1-dev's scheduler_config.json
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
MAX_SEQUENCE_LENGTH = 64  # T5 tokens per prompt in the tiny pipeline (FLUX.1-dev: 512)


def tiny_flux_components(guidance_embeds: bool = True) -> dict:
    """Random Flux transformer (16 latent channels as 64 per 2×2-patch token, guidance embedding as
    FLUX.1-dev, or none as schnell), VAE (8×), CLIP text encoder (pooled) and T5 encoder with tokenizers."""
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=HIDDEN,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=[2, 2, 4],
    )
    return dict(
        transformer=transformer,
        vae=tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False, **FLUX_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_text_config(tokenizer))).eval(),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(tokenizer_2, T5_WIDTH),
        tokenizer_2=tokenizer_2,
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> SuperDiffFluxPipeline:
    """SuperDiffFluxPipeline of tiny random components, seeded (the global RNG untouched), with FLUX.1-dev's
    scheduler config; 64×64 images (its default size) in seconds on CPU. ``guidance_embeds=False``: a
    schnell-like transformer without the guidance embedding."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = tiny_flux_components(guidance_embeds)
    pipe = SuperDiffFluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), **parts)
    pipe.default_sample_size = 64 // pipe.vae_scale_factor  # 64² by default (diffusers' units vary)
    pipe.max_sequence_length = MAX_SEQUENCE_LENGTH
    pipe.set_progress_bar_config(disable=True)
    return pipe
