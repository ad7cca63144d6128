"""Cost of the score Fokker–Planck residual on Stable Diffusion (docs/stable-diffusion.md, last section).

``SuperDiffPipeline.eps_model(prompt)`` + ``superdiff.fokker_planck.score_fpe_residual`` with Hutchinson
probes, float32 (the residual needs a double backward): seconds per residual of one latent and peak memory,
for each probe count, at a few σ. On the SD v1-4 architecture with random weights the cost is the real one;
the residual's value is not (only trained weights say whether SD obeys the equation).

    python benchmarks/bench_fpe.py --device cuda             # SD v1-4 architecture, random weights, 512²
    python benchmarks/bench_fpe.py --device cpu --threads 1  # the tiny test pipeline, 64², seconds
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_sd_unet import sync
from random_sd import random_sd

from superdiff.fokker_planck import score_fpe_residual
from superdiff.testing import tiny_pipeline


def residual_cost(pipe, sigma: float, probes: int, size: int, repeats: int) -> tuple[float, float, float]:
    """(seconds per residual, peak GiB or nan, mean |residual|) of one latent at σ with ``probes`` probes."""
    device = pipe.unet.device
    eps = pipe.eps_model("a flamingo")
    g = torch.Generator(device).manual_seed(0)
    side = size // pipe.vae_scale_factor
    x = sigma * torch.randn(1, pipe.unet.config.in_channels, side, side, generator=g, device=device)
    sig = torch.full((1,), sigma, device=device)
    score_fpe_residual(eps, x, sig, hutchinson=probes, generator=g)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device.type)
    tic = time.perf_counter()
    for _ in range(repeats):
        r = score_fpe_residual(eps, x, sig, hutchinson=probes, generator=g)
    sync(device.type)
    seconds = (time.perf_counter() - tic) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak, r.detach().abs().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny test pipeline (default on CPU)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (SD: 512)")
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = args.tiny or args.device == "cpu"
    pipe = (tiny_pipeline(seed=0) if tiny else random_sd(args.device)).to(args.device)  # float32
    size = 64 if tiny else args.size
    name = "tiny pipeline" if tiny else "SD v1-4 architecture, random weights"
    side = size // pipe.vae_scale_factor
    print(f"{name}; device {args.device}; float32; {size}² (latents {side}²), batch 1")
    for probes in args.probes:
        for sigma in args.sigmas:
            seconds, peak, value = residual_cost(pipe, sigma, probes, size, args.repeats)
            print(
                f"probes {probes:2d}  σ {sigma:6.2f}: {seconds:7.3f} s a residual, peak {peak:5.1f} GiB, "
                f"mean |residual| {value:.3g}"
            )


if __name__ == "__main__":
    main()
