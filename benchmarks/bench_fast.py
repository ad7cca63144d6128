"""Time the fast path against the eager pipeline and the paper's loop, side by side in one run.

(a) the paper's loop: three separate float32 UNet calls per step (``bench_sd_unet.paper_step``);
(b) the pipeline as shipped, eager: one batched UNet call per step, float16 on GPU (float32 on CPU);
(c) a copy of it (same weights) after ``enable_fast_sampling``: channels_last, torch.compile, CUDA graphs.

Per-step ms of (b) and (c) is the slope of whole calls of two lengths (text encoding and VAE decoding cancel);
a 1000-step image is measured for (c) at batch 1 with ``--full 1000`` and otherwise extrapolated (said so).
torch.profiler splits a step of (b) and (c) into the denoiser and the superposition (κ solve + Itô increments
+ step noise), the latter's share taken of the timed step, and counts host–device synchronisations per step on
CUDA (from calls of --profile-steps and twice as many). After each batch it prints torch.compile's counters:
graphs compiled (one per size and batch, none per call), graph breaks, and CUDA graphs skipped.

    python benchmarks/bench_fast.py --device cuda             # SD v1-4 architecture, random weights, 512²
    python benchmarks/bench_fast.py --device cpu --threads 1  # the tiny test pipeline, 64², ~2 min
"""

from __future__ import annotations

import argparse
import copy
import math
import threading
import time
from contextlib import contextmanager
from functools import wraps

import torch
from bench_sd_unet import paper_step, sync, timed
from diffusers.utils import logging as diffusers_logging
from random_sd import random_sd
from torch.autograd import DeviceType

from superdiff import sampling
from superdiff.fast import enable_fast_sampling
from superdiff.pipeline_superdiff import PromptPredictor
from superdiff.testing import sd_scheduler, tiny_pipeline

P1, P2 = "a flamingo", "a candy cane"
UPDATE, DENOISER = "superdiff.update", "superdiff.denoiser"  # profiler labels
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def build(device: str, tiny: bool):
    """(pipeline in the benchmark's dtype, a float32 copy of its UNet for the paper's loop)."""
    pipe = tiny_pipeline(seed=0) if tiny else random_sd(device)
    pipe = pipe.to(device)
    unet32 = copy.deepcopy(pipe.unet).float().eval()
    if device.startswith("cuda"):
        pipe = pipe.to(dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    return pipe, unet32


def call(pipe, steps: int, batch: int, size: int):
    """(seconds, output) of one whole pipeline call; its output is on the CPU, so the call has finished."""
    sync(str(pipe.device))
    tic = time.perf_counter()
    out = pipe(P1, P2, seed=1, num_inference_steps=steps, batch_size=batch, height=size, width=size)
    return time.perf_counter() - tic, out


def paper_ms(unet32, args, batch: int) -> float:
    """ms/step of the paper's loop: 3 float32 UNet calls on random embeddings (cost only)."""
    scheduler = sd_scheduler()
    scheduler.set_timesteps(1000)
    config, latent = unet32.config, args.size // 8
    x = scheduler.sigmas[0] * torch.randn(batch, config.in_channels, latent, latent, device=args.device)
    embeddings = torch.randn(3, 1, 77, config.cross_attention_dim, device=args.device)
    run = paper_step(unet32, x, embeddings, scheduler.sigmas, scheduler.timesteps.to(args.device), 7.5)
    run(1)  # warm-up
    return 1e3 * min(timed(run, args.steps, args.device) for _ in range(args.repeats))


@contextmanager
def labelled():
    """Profiler labels on the denoiser and the superposition (κ solve, Itô increments, step noise)."""
    inside = threading.local()

    def label(fn, name):
        @wraps(fn)
        def run(*args, **kwargs):
            if getattr(inside, "on", False):  # kappa_and calls ito_increment: count it once
                return fn(*args, **kwargs)
            inside.on = True
            try:
                with torch.profiler.record_function(name):
                    return fn(*args, **kwargs)
            finally:
                inside.on = False

        return run

    saved = {n: getattr(sampling, n) for n in ("kappa_and", "kappa_or", "ito_increment", "randn_like")}
    eps_all = PromptPredictor.eps_all
    for n, fn in saved.items():
        setattr(sampling, n, label(fn, UPDATE))
    PromptPredictor.eps_all = label(eps_all, DENOISER)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(sampling, n, fn)
        PromptPredictor.eps_all = eps_all


def profile(pipe, args, batch: int, steps: int) -> dict:
    """One profiled call: its s, ms per step of the denoiser and of the superposition, synchronisations."""
    cuda = str(pipe.device).startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    )
    with labelled(), torch.profiler.profile(activities=activities) as prof:
        seconds = call(pipe, steps, batch, args.size)[0]
    events = prof.events()

    def ms(name):  # device time on CUDA (the host runs ahead), host time on CPU
        ranges = [e for e in events if e.name == name and e.device_type == DeviceType.CPU]  # not GPU spans
        times = [e.device_time_total if cuda else e.cpu_time_total for e in ranges]
        return sum(times) / 1e3 / steps

    syncs = sum(e.name in SYNCS for e in events) if cuda else float("nan")
    return {"s": seconds, "denoiser": ms(DENOISER), "update": ms(UPDATE), "syncs": syncs}


def weights_gib(pipe) -> float:
    """GiB of the pipeline's parameters and buffers."""
    tensors = [
        t for m in pipe.components.values() if isinstance(m, torch.nn.Module) for t in m.state_dict().values()
    ]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str, others: float) -> float:
    """Peak GiB allocated since reset_peak, less ``others``: weights resident for the other variants."""
    return torch.cuda.max_memory_allocated() / 2**30 - others if device.startswith("cuda") else float("nan")


def timing(pipes: dict, args, batch: int) -> dict:
    """Each variant at one batch: first-call s, ms/step, extrapolated 1000-step image s.

    The timed calls alternate between the variants, so both see the same load; the best repeat counts.
    """
    rows = {name: {"first_s": call(pipe, args.steps, batch, args.size)[0]} for name, pipe in pipes.items()}
    times = {name: {n: [] for n in (1, 3)} for name in pipes}
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            for n in (1, 3):
                times[name][n].append(call(pipe, n * args.steps, batch, args.size)[0])
    for name, row in rows.items():
        short, long = min(times[name][1]), min(times[name][3])
        step = (long - short) / (2 * args.steps)  # text encoding and VAE decoding cancel
        row.update(ms=1e3 * step, image_s=short + (1000 - args.steps) * step)
    return rows


def details(pipes: dict, name: str, args, batch: int) -> dict:
    """One variant's profile (denoiser and superposition ms, syncs/step), peak memory and an output."""
    pipe, n = pipes[name], args.profile_steps  # few: the profiler's events cost ~0.1 ms each to read back
    reset_peak(args.device)
    prof_1, prof_2 = (profile(pipe, args, batch, k) for k in (n, 2 * n))
    row = dict(prof_2, syncs=(prof_2["syncs"] - prof_1["syncs"]) / n)
    row["out"] = call(pipe, args.steps, batch, args.size)[1]
    row["peak"] = peak_gib(args.device, sum(weights_gib(p) for n, p in pipes.items() if n != name))
    return row


def report_timing(name: str, row: dict) -> None:
    print(
        f"{name:34s} {row['ms']:9.2f} ms/step  1000 steps ≈ {row['image_s']:7.1f} s (extrapolated)  "
        f"first call {row['first_s']:6.1f} s"
    )


def report_details(name: str, row: dict, step_ms: float) -> None:
    """Peak memory, syncs, and the profiled denoiser and superposition against the timed (unprofiled) step."""
    share = 100 * row["update"] / step_ms
    cuda = math.isfinite(row["peak"])  # peak memory and syncs are CUDA's counters
    peak, syncs = (f"{row['peak']:5.2f} GiB", f"{row['syncs']:.1f}") if cuda else ("n/a (CPU)", "n/a")
    print(
        f"{name:34s} peak {peak}  syncs/step {syncs}  denoiser "
        f"{row['denoiser']:.2f} ms, superposition {row['update']:.3f} ms/step ({share:.1f} % of the timed "
        f"step, {step_ms:.2f} ms)"
    )


def compiler_counters() -> str:
    """What torch.compile did so far: graphs compiled, graph breaks, CUDA graphs skipped (inductor's silent
    fallback to plain compiled kernels)."""
    counters = torch._dynamo.utils.counters
    breaks = sum(counters["graph_break"].values())
    skips = counters["inductor"].get("cudagraph_skips", 0)
    graphs = counters["stats"].get("unique_graphs", 0)
    return f"graphs compiled {graphs}, graph breaks {breaks}, CUDA graph skips {skips}"


def difference(fast: dict, eager: dict) -> str:
    a, b = fast["out"], eager["out"]
    image = (a.images.int() - b.images.int()).abs().max().item()
    kappa, log_q = ((a.kappa - b.kappa).abs().max().item(), (a.log_q - b.log_q).abs().max().item())
    return f"fast vs eager, same seed: max |Δ| image {image}/255, κ {kappa:.2e}, log q {log_q:.2e}"


def full_image(pipe, args) -> None:
    """A real whole image of the fast path at batch 1 (no extrapolation)."""
    seconds, out = call(pipe, args.full, 1, args.size)
    print(
        f"(c) fast, batch 1, {args.full} steps measured end to end: {seconds:.2f} s "
        f"({1e3 * seconds / args.full:.2f} ms/step incl. text encoding and VAE decode); "
        f"κ final {out.kappa[-1, 0].tolist()}"
    )


def one_batch(pipes: dict, labels: dict, paper: float, args, batch: int) -> None:
    """Time, then profile, the variants at one batch, printing each figure as soon as it is measured."""
    print(f"\nbatch {batch}:")
    print(
        f"{'(a) paper loop, 3 calls, float32':34s} {paper:9.2f} ms/step  1000 steps ≈ {paper:7.1f} s "
        "(extrapolated, UNet calls only)"
    )
    rows = timing(pipes, args, batch)
    for name, row in rows.items():
        report_timing(labels[name], row)
    eager, fast = rows["eager"]["ms"], rows["fast"]["ms"]
    print(f"speed-up (b)/(c) {eager / fast:.2f}x, (a)/(c) {paper / fast:.2f}x")
    if batch == 1 and args.full:
        full_image(pipes["fast"], args)
    outs = {}
    for name in pipes:
        try:  # the timings above stand even if the profiler fails
            outs[name] = details(pipes, name, args, batch)
            report_details(labels[name], outs[name], rows[name]["ms"])
        except Exception as err:
            print(f"{labels[name]}: profile failed: {type(err).__name__}: {str(err)[:300]}")
    if len(outs) == 2:
        print(difference(outs["fast"], outs["eager"]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="pixels (default 512 on GPU, 64 on CPU)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=None, help="short call's steps (default 20 GPU, 10 CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many calls of each length")
    parser.add_argument(
        "--profile-steps", type=int, default=3, help="steps of the shorter profiled call (the longer: 2×)"
    )
    parser.add_argument(
        "--full", type=int, default=None, help="steps of a measured (c) image (default 1000 GPU)"
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny test pipeline (default on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.tiny = args.tiny or not gpu
    args.size = args.size or (512 if gpu else 64)
    args.steps = args.steps or (20 if gpu else 10)
    args.full = (1000 if gpu else 0) if args.full is None else args.full
    return args


def main() -> None:
    args = parse_args()
    diffusers_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe, unet32 = build(args.device, args.tiny)
    dtype = str(pipe.unet.dtype)[6:]
    print(
        f"{'tiny pipeline' if args.tiny else 'SD v1-4 architecture, random weights'}; device {args.device} "
        f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}), {args.size}², "
        f"AND of 2 prompts, UNet {dtype}; {torch.get_num_threads()} CPU threads; torch {torch.__version__}"
    )
    paper = {b: paper_ms(unet32, args, b) for b in args.batch}
    del unet32
    tic = time.perf_counter()
    fast_pipe = copy.deepcopy(pipe)  # the same weights: (b) and (c) alternate in every measurement
    state = enable_fast_sampling(fast_pipe)
    print(f"enable_fast_sampling: {state} ({time.perf_counter() - tic:.2f} s with the copy)", flush=True)
    pipes = {"eager": pipe, "fast": fast_pipe}
    labels = {"eager": f"(b) pipeline eager, {dtype}", "fast": f"(c) fast path, {dtype}"}
    for b in args.batch:
        one_batch(pipes, labels, paper[b], args, b)
        # a failed compilation falls back to eager with a warning: then (c)'s rows are eager figures
        print(
            f"enable_fast_sampling after batch {b}: {state}; torch.compile: {compiler_counters()}", flush=True
        )


if __name__ == "__main__":
    main()
