"""A tiny random SuperDiffSD3Pipeline built offline (no download): tests and CPU tries of SD3's code path."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .pipeline_sd3 import SuperDiffSD3Pipeline
from .testing import HIDDEN, tiny_text_config, tiny_tokenizer, tiny_vae

JOINT = 2 * HIDDEN  # the two CLIP widths side by side = T5's width = the transformer's joint_attention_dim
SD3_VAE = dict(scaling_factor=1.5305, shift_factor=0.0609)  # stabilityai/stable-diffusion-3-medium's VAE


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A T5 (unigram) tokenizer, a piece per printable ASCII character, built locally (no sentencepiece)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(ord("!"), ord("~") + 1)]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=unigram, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )


def tiny_t5_encoder(tokenizer: T5TokenizerFast, width: int) -> T5EncoderModel:
    """A 1-layer T5 encoder of the given width over the tokenizer's vocabulary."""
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=37, num_layers=1, num_heads=4)
    return T5EncoderModel(config).eval()


def tiny_sd3_components(t5: bool = False) -> dict:
    """Random SD3 transformer (16 latent channels, 2×2 patches), VAE (8×), two CLIPs with projection and,
    if ``t5``, a T5 encoder with its tokenizer; a few thousand to a hundred thousand parameters each."""
    tokenizer = tiny_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=JOINT,
        caption_projection_dim=32,
        pooled_projection_dim=JOINT,
        pos_embed_max_size=32,
    )
    vae = tiny_vae(16, use_quant_conv=False, use_post_quant_conv=False, **SD3_VAE)
    clip = CLIPTextConfig(**tiny_text_config(tokenizer), projection_dim=HIDDEN)
    parts = dict(
        transformer=transformer,
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip).eval(),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip).eval(),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    if t5:
        tokenizer_3 = tiny_t5_tokenizer()
        parts.update(text_encoder_3=tiny_t5_encoder(tokenizer_3, JOINT), tokenizer_3=tokenizer_3)
    return parts


def tiny_sd3_pipeline(seed: int = 0, shift: float = 3.0, t5: bool = False) -> SuperDiffSD3Pipeline:
    """SuperDiffSD3Pipeline of tiny random components, seeded (the global RNG untouched); 64×64 images in
    seconds on CPU. ``shift``: the scheduler's (SD3's is 3.0); ``t5``: add a tiny T5 encoder (else None)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = tiny_sd3_components(t5)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    pipe = SuperDiffSD3Pipeline(scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
