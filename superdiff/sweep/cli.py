"""``superdiff sweep`` and ``accelerate launch -m superdiff.sweep``: the command line of a sweep."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from .._io import STOP_SIGNALS, user_path, user_source
from ..generate import DEFAULT_MODEL, DTYPES, add_max_size, model_class, refuse_unused_by_digits
from ..limits import MAX_SIZE, out_of_memory
from .plan import (
    DEFAULT_CLIP,
    DEFAULT_METHODS,
    JOINT_METHODS,
    METHODS,
    SHIPPED_PAIRS,
    load_pairs,
    parse_methods,
    parse_seeds,
)
from .summary import other_records_note

SCORERS = ("auto", "clip", "digits", "none")
INTERRUPTED = "interrupted; completed images are kept, rerun the same command to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a sweep."""
    parser.add_argument(
        "--pairs",
        default=None,
        type=user_source,
        help=f"{' | '.join(SHIPPED_PAIRS)} (shipped) or a CSV/YAML file of prompt_1,prompt_2 "
        "(default: paper for Stable Diffusion, digits for --model digits)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)}; "
        "joint methods need Stable Diffusion)",
    )
    parser.add_argument("--seeds", default="0-19", help='seeds: "0-19" (default), "0,3,7" or "0-4,10"')
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: 1000 SD, 100 digits)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: 7.5 SD, 2 digits); Flux: its embedded one (default 3.5)",
    )
    parser.add_argument("--lift", type=float, default=0.0, help="AND: final log q_1 − log q_2 (default 0)")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        type=user_source,
        help=f"Stable Diffusion Hub id or local folder (default {DEFAULT_MODEL}), or offline: digits, tiny",
    )
    parser.add_argument(
        "--out", type=user_path, default=Path("outputs/sweep"), help="sweep folder (default outputs/sweep)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="seeds of one (pair, method) per pipeline call (default 4)"
    )
    parser.add_argument(
        "--scorer",
        choices=SCORERS,
        default="auto",
        help="auto: clip for Stable Diffusion, the digits classifier for digits, none for tiny",
    )
    parser.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP,
        type=user_source,
        help=f"CLIP Hub id or folder (default {DEFAULT_CLIP})",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="UNet/VAE precision (auto: fp16 on GPU)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="SD image size in pixels (default: the model's)"
    )
    add_max_size(parser)
    parser.add_argument(
        "--fast",
        action="store_true",
        help="enable_fast_sampling: torch.compile and, on CUDA, CUDA graphs (Stable Diffusion models); the "
        "first call of each batch shape compiles (about a minute at 512² on a GPU), later ones reuse it",
    )


def check_size(size, max_size: int, multiple: int = 8) -> None:
    """--size: None (the model's) or a multiple of ``multiple`` (the model family's) from 64 to --max-size."""
    from ..pipeline_common import check_int

    check_int("--max-size", max_size, 64, high=MAX_SIZE)
    if size is not None:
        hint = f", a multiple of {multiple} (raise the limit with --max-size)"
        check_int("--size", size, 64, hint, high=max_size)
        if size % multiple:
            raise ValueError(f"--size: expected a multiple of {multiple}, >= 64, got {size}")


def default_guidance(cls) -> float:
    """The default guidance_scale of a pipeline class (Flux: its embedded 3.5)."""
    return inspect.signature(cls.__call__).parameters["guidance_scale"].default


def check_digit_pairs(pairs: list[tuple[str, str]]) -> None:
    """Every prompt of --model digits names a digit, and no two pairs the same digits ("3,8" and "three,
    eight" drew the same images twice): refused before any model loads, not mid-sweep."""
    from ..digits.model import label_of

    seen = {}  # digits -> the pair that named them first
    for i, pair in enumerate(pairs, start=1):
        digits = tuple(label_of(prompt, f"--pairs: pair {i}, prompt_{k}") for k, prompt in enumerate(pair, 1))
        if digits in seen:
            raise ValueError(f"--pairs: pair {i} {pair!r} names the digits of pair {seen[digits]}: {digits}")
        seen[digits] = i


def config(args):
    """The SweepConfig of parsed arguments, every value checked before any model is loaded."""
    from ..digits.pipeline import GUIDANCE, STEPS
    from .run import SweepConfig

    digits = args.model == "digits"
    default_methods = [m for m in DEFAULT_METHODS if not (digits and m in JOINT_METHODS)]
    scorer = args.scorer
    if scorer == "auto":
        scorer = "digits" if digits else "none" if args.model == "tiny" else "clip"
    if scorer == "digits" and not digits:
        raise ValueError("--scorer: the digits classifier scores --model digits only")
    if digits:
        refuse_unused_by_digits(args, {"--size": args.size is not None})
    check_size(args.size, args.max_size)  # the range first, then the family's multiple from the config
    # --model's pipeline class, from its config alone (no weights), read once and only where needed
    needed = args.size is not None or args.guidance_scale is None
    cls = model_class(args.model) if needed and not digits else None
    if args.size is not None:
        check_size(args.size, args.max_size, 8 if cls is None else cls.SIZE_MULTIPLE)
    pairs = load_pairs(args.pairs or ("digits" if digits else "paper"))
    if digits:
        check_digit_pairs(pairs)
    if args.fast and digits:
        raise ValueError("--fast: compiles a Stable Diffusion denoiser; the digits model runs eager")
    methods = default_methods if args.methods is None else parse_methods(args.methods, joint=not digits)
    return SweepConfig(
        pairs=pairs,
        methods=methods,
        seeds=parse_seeds(args.seeds),
        out=args.out,
        model=args.model,
        steps=args.steps if args.steps is not None else (STEPS if digits else 1000),
        guidance_scale=args.guidance_scale
        if args.guidance_scale is not None
        else (GUIDANCE if digits else default_guidance(cls)),
        lift=args.lift,
        batch_size=args.batch_size,
        scorer=scorer,
        clip_model=args.clip_model,
        dtype=args.dtype,
        size=args.size,
        max_size=args.max_size,
        fast=args.fast,
    )


def run(args) -> int:
    """Entry point: 0 when the sweep and its summary are written, 2 with a one-line message on bad input,
    130 when interrupted (Ctrl-C)."""
    from .run import PeerStopped, Refused, run_sweep, sweep_state

    state = sweep_state()
    who = f" [process {state.process_index}]" if state.num_processes > 1 else ""
    try:
        timing = run_sweep(config(args), state)
    except Refused:  # the main process printed why
        return 2
    except (ValueError, OSError, MemoryError, RuntimeError) as err:  # bad input, no weights, out of memory
        if isinstance(err, RuntimeError) and not isinstance(err, PeerStopped) and not out_of_memory(err):
            raise  # a bug: its traceback
        message = "out of memory; try a smaller --batch-size or --size" if out_of_memory(err) else err
        print(f"superdiff sweep{who}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # records are written atomically: the completed ones stay valid
        print(f"superdiff sweep{who}: {INTERRUPTED}", file=sys.stderr)
        return 130
    except SystemExit as stop:  # SIGTERM or SIGHUP (a scheduler's kill, a closed terminal): the same
        if stop.code in [128 + signum for signum in STOP_SIGNALS]:
            print(f"superdiff sweep{who}: {INTERRUPTED}", file=sys.stderr)
        raise
    if state.is_main_process:
        if timing.get("other_records"):
            print(f"superdiff sweep: warning: {other_records_note(timing['other_records'])}", file=sys.stderr)
        print(f"{timing['images']} images in {timing['seconds']:.1f} s on {timing['processes']} process(es)")
        print(f"summary: {args.out}/summary.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m superdiff.sweep`` (what ``accelerate launch -m superdiff.sweep`` runs in each process)."""
    from ..cli import join_negative_values

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="superdiff sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(join_negative_values(argv, parser)))
    except KeyboardInterrupt:  # before the sweep started (its own handler says what it kept)
        print("superdiff sweep: interrupted", file=sys.stderr)
        return 130
