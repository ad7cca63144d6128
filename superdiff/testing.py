"""A tiny random SuperDiffPipeline built offline (no download): tests and CPU tries of the SD code path."""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .pipeline_superdiff import SuperDiffPipeline

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
HIDDEN = 32  # text-embedding width = the UNet's cross-attention width


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (what the byte-level pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (a token per character), built locally."""
    chars = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + [BOS, EOS])}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def tiny_text_config(tokenizer: CLIPTokenizer) -> dict:
    """A 2-layer, 32-wide CLIP text transformer over the tokenizer's vocabulary."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae(latent_channels: int = 4, **config) -> AutoencoderKL:
    """A random VAE with SD's 8× downsampling and a few thousand parameters; ``config``: the family's."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        **config,
    )


def tiny_components(tokenizer: CLIPTokenizer) -> dict:
    """Random UNet, VAE (8× downsampling, as SD) and CLIP text encoder, a few thousand parameters each."""
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=4,
    )
    vae = tiny_vae(scaling_factor=0.18215)
    text_config = CLIPTextConfig(**tiny_text_config(tokenizer), projection_dim=HIDDEN)
    return {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(text_config).eval()}


def sd_scheduler(**overrides) -> EulerDiscreteScheduler:
    """The Euler scheduler exactly as Stable Diffusion v1-4 configures it (superdiff/sd_configs), or with
    ``overrides`` of its config (e.g. ``prediction_type="v_prediction"``, ``timestep_spacing="leading"``)."""
    config = json.loads(resources.files("superdiff").joinpath("sd_configs/scheduler_config.json").read_text())
    return EulerDiscreteScheduler.from_config({**config, **overrides})


def tiny_pipeline(
    seed: int = 0, prediction_type: str = "epsilon", timestep_spacing: str | None = None
) -> SuperDiffPipeline:
    """SuperDiffPipeline of tiny random components, seeded; 64×64 images in seconds on CPU.

    ``prediction_type`` ("epsilon", "v_prediction", "sample") and ``timestep_spacing`` ("linspace",
    "leading", "trailing"; None: v1-4's, i.e. diffusers' default "linspace") set the scheduler's config,
    as an SD 2.x checkpoint's would.
    """
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        parts = tiny_components(tokenizer)
    spacing = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    scheduler = sd_scheduler(prediction_type=prediction_type, **spacing)
    pipe = SuperDiffPipeline(tokenizer=tokenizer, scheduler=scheduler, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip(seed: int = 0):
    """(CLIPModel, CLIPProcessor) of tiny random weights, built locally: the sweep's CLIP scoring offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_tokenizer()
    vision = dict(
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = CLIPConfig(text_config=tiny_text_config(tokenizer), vision_config=vision, projection_dim=HIDDEN)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def __getattr__(name):
    # the SDXL, SD3 and Flux builders live beside their pipelines' diffusers imports
    if name == "tiny_xl_pipeline":
        from .testing_xl import tiny_xl_pipeline

        return tiny_xl_pipeline
    if name == "tiny_sd3_pipeline":
        from .testing_sd3 import tiny_sd3_pipeline

        return tiny_sd3_pipeline
    if name == "tiny_flux_pipeline":
        from .testing_flux import tiny_flux_pipeline

        return tiny_flux_pipeline
    raise AttributeError(f"module 'superdiff.testing' has no attribute {name!r}")
