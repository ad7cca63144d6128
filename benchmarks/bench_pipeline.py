"""Time the model card's call end to end: ``pipe(prompt_1, prompt_2, seed=1, num_inference_steps=n)``.

Loads a pipeline folder (``benchmarks/random_sd.py`` writes one with random v1-4 weights), warms up with a
short call, then times full calls (text encoding, n UNet steps, AND solve, VAE decode):

    python benchmarks/bench_pipeline.py --model /tmp/sd-random --steps 1000
"""

from __future__ import annotations

import argparse
import time

import torch

from superdiff.generate import dtype_kwarg
from superdiff.pipeline_superdiff import SuperDiffPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="pipeline folder or Hub id")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--mode", default="and")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = SuperDiffPipeline.from_pretrained(args.model, **dtype_kwarg(dtype)).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    call = dict(seed=1, batch_size=args.batch, height=args.size, width=args.size, mode=args.mode)
    pipe("a flamingo", "a candy cane", num_inference_steps=5, **call)  # warm-up
    for _ in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        tic = time.perf_counter()
        out = pipe("a flamingo", "a candy cane", num_inference_steps=args.steps, **call)
        seconds = time.perf_counter() - tic  # the output is on the CPU: the call has finished
        print(
            f"{args.mode.upper()} {args.steps} steps, {args.size}², batch {args.batch}, {str(dtype)[6:]}, "
            f"{args.device}: {seconds:.2f} s per call, {1e3 * seconds / args.steps:.1f} ms/step; "
            f"image {tuple(out[0].shape)}, κ final {out.kappa[-1, 0].tolist()}"
        )
    if args.device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
