"""Time one SuperDiff step on the Stable Diffusion v1-4 UNet architecture (random weights, same cost).

(a) the paper's loop: three separate UNet calls per step (prompt 1, prompt 2, empty prompt) in float32;
(b) our sampler: ``superpose`` with ``PromptPredictor`` — one batched UNet call for all prompts and the empty
    one, the UNet in float16 on GPU (float32 on CPU), κ and log q in float64 (float32 on MPS).

    python benchmarks/bench_sd_unet.py --device cuda --size 512     # the model card's setting (512², batch 1)
    python benchmarks/bench_sd_unet.py --device cpu --threads 1     # 128², 1 step x 2 repeats: < 1 min
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from importlib import resources

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging

from superdiff.pipeline_superdiff import PromptPredictor
from superdiff.sampling import guide, superpose
from superdiff.testing import sd_scheduler

N_PROMPTS, TOKENS, WIDTH = 2, 77, 768  # two prompts, CLIP ViT-L/14 text embeddings


def sd_unet(device: str, dtype: torch.dtype) -> UNet2DConditionModel:
    """The SD v1-4 UNet (859.5 M parameters) from superdiff/sd_configs with random weights."""
    config = json.loads(resources.files("superdiff").joinpath("sd_configs/unet_config.json").read_text())
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return unet.eval() if dtype == torch.float32 else unet.to(dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run, steps: int, device: str) -> float:
    """Seconds per step of run(steps)."""
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def paper_step(unet, x, embeddings, sigmas, timesteps, guidance_scale: float):
    """One step of (a): ε̂ for each prompt and the empty prompt from three separate float32 UNet calls."""

    def run(n: int) -> None:
        for sigma, t in zip(sigmas[:n], timesteps[:n], strict=False):
            x_in = x / math.sqrt(sigma.item() ** 2 + 1)
            *eps_cond, eps_uncond = (
                unet(x_in, t, encoder_hidden_states=e.expand(len(x), -1, -1)).sample for e in embeddings
            )
            [guide(e, eps_uncond, guidance_scale) for e in eps_cond]

    return run


def ours_step(unet, x, embeddings, sigmas, timesteps, guidance_scale: float):
    """n steps of (b): the real sampler (AND mode) driven by the batched predictor."""
    predictor = PromptPredictor(unet, embeddings, N_PROMPTS, guidance_scale, sigmas, timesteps)

    def run(n: int) -> None:
        superpose(predictor, x, sigmas[: n + 1], mode="and")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="image size in pixels (latent = size/8); default 512 on GPU, 128 on CPU",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per repeat (default 10 GPU, 1 CPU)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="(a), (b) alternate this often; the best counts"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument(
        "--dtype", default=None, help="UNet dtype of (b): default float16 on GPU, float32 on CPU"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()  # no dtype-cast notices between the results
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device != "cpu"
    size, steps = args.size or (512 if gpu else 128), args.steps or (10 if gpu else 1)
    fast = getattr(torch, args.dtype) if args.dtype else (torch.float16 if gpu else torch.float32)

    scheduler = sd_scheduler()
    scheduler.set_timesteps(1000)
    sigmas, timesteps = scheduler.sigmas, scheduler.timesteps.to(args.device)
    gen = torch.Generator().manual_seed(0)
    x = (sigmas[0] * torch.randn(args.batch, 4, size // 8, size // 8, generator=gen)).to(args.device)
    embeddings = torch.randn(N_PROMPTS + 1, TOKENS, WIDTH, generator=gen).to(args.device)

    unet32 = sd_unet(args.device, torch.float32)
    unet_fast = unet32 if fast == torch.float32 else copy.deepcopy(unet32).to(fast)
    print(
        f"UNet: {sum(p.numel() for p in unet32.parameters()) / 1e6:.1f} M parameters; device {args.device}, "
        f"{size}² images (latent {size // 8}²), batch {args.batch}, {torch.get_num_threads()} CPU threads"
    )
    paper = paper_step(unet32, x, embeddings[:, None], sigmas, timesteps, 7.5)
    ours = ours_step(unet_fast, x, embeddings, sigmas, timesteps, 7.5)
    paper(1), ours(1)  # warm-up
    times = [(timed(paper, steps, args.device), timed(ours, steps, args.device)) for _ in range(args.repeats)]
    a, b = (min(t) for t in zip(*times, strict=True))  # alternating runs share the machine's load
    print(f"(a) paper loop, 3 UNet calls/step, float32       : {a * 1e3:9.1f} ms/step")
    print(f"(b) superdiff, 1 batched call/step, {str(fast)[6:]:9s}   : {b * 1e3:9.1f} ms/step")
    print(
        f"speed-up (a)/(b): {a / b:.2f}x; 1000 steps: (a) {a * 1000 / 60:.1f} min, "
        f"(b) {b * 1000 / 60:.1f} min (best of {args.repeats} x {steps} steps)"
    )


if __name__ == "__main__":
    main()
