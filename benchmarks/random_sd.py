"""Write a Stable Diffusion v1-4 *architecture* with random weights as a local pipeline folder.

No hub access is needed: UNet, VAE and CLIP text encoder come from superdiff/sd_configs (the v1-4 configs),
the tokenizer is superdiff.testing's byte-level one. Same cost per step as the real model, noise for images:
for timing ``superdiff generate`` / ``superdiff sweep`` on a GPU with ``--model FOLDER``.

    python benchmarks/random_sd.py /tmp/sd-random
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from superdiff.pipeline_superdiff import SuperDiffPipeline
from superdiff.testing import sd_scheduler, tiny_tokenizer


def config(name: str) -> dict:
    return json.loads(resources.files("superdiff").joinpath(f"sd_configs/{name}_config.json").read_text())


def random_sd(device: str) -> SuperDiffPipeline:
    """SuperDiffPipeline of randomly initialised SD v1-4 components."""
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder")))
    return SuperDiffPipeline(vae, text_encoder, tiny_tokenizer(), unet, sd_scheduler())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float16", help="weights as saved (default float16, as SD's fp16)")
    args = parser.parse_args()
    tic = time.perf_counter()
    pipe = random_sd(args.device).to(dtype=getattr(torch, args.dtype))
    pipe.save_pretrained(args.folder, safe_serialization=True)
    print(f"wrote {args.folder} ({args.dtype}) in {time.perf_counter() - tic:.1f} s")


if __name__ == "__main__":
    main()
