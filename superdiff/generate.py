"""``superdiff generate``: superpose prompts with Stable Diffusion (or offline tiny/digits models) into PNGs.

    superdiff generate "a flamingo" "a candy cane" --mode and --lift 0 --steps 1000 --seed 1 \\
        --out flamingo.png

writes flamingo.png (flamingo_0.png, flamingo_1.png, ... for --batch-size > 1) and flamingo_kappa.png;
each image's PNG text chunk "superdiff" holds the call that made it, seed included (JSON). Existing
files are kept unless --overwrite (one made during the run too: the run's files then take the name
flamingo-2.png, ...).
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import re
import secrets
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ._io import (
    check_name_lengths,
    check_targets,
    check_writable,
    png,
    user_path,
    user_source,
    write_atomically,
)
from .hub import dtype_kwarg, explain_unavailable, folder_errors, offline_kwargs
from .limits import LIMITS, MAX_SEED, MAX_SIZE, out_of_memory, raise_hint

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
OFFLINE_MODELS = {
    "tiny": "tiny random Stable Diffusion components (offline, seconds on CPU, noise-like images)",
    "digits": "the shipped 8×8 digits models (offline, CPU; prompts are digit names)",
}
DTYPES = ("auto", "float32", "float16", "bfloat16")
MAX_RENAMES = 100  # out-2 … out-100: names tried for a run's files when --out was taken during the run
SD_PIPELINE = ("superdiff.pipeline_superdiff", "SuperDiffPipeline")  # SD 1.x/2.x and unknown SD-likes
XL_PIPELINE = ("superdiff.pipeline_xl", "SuperDiffXLPipeline")
SD3_PIPELINE = ("superdiff.pipeline_sd3", "SuperDiffSD3Pipeline")
FLUX_PIPELINE = ("superdiff.pipeline_flux", "SuperDiffFluxPipeline")
PIPELINES = {  # model_index.json _class_name -> (module, SuperDiff pipeline); saved SuperDiff folders too
    "StableDiffusionXLPipeline": XL_PIPELINE,
    "SuperDiffXLPipeline": XL_PIPELINE,
    "StableDiffusion3Pipeline": SD3_PIPELINE,
    "SuperDiffSD3Pipeline": SD3_PIPELINE,
    "FluxPipeline": FLUX_PIPELINE,
    "SuperDiffFluxPipeline": FLUX_PIPELINE,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``superdiff generate``."""
    parser.add_argument(
        "prompts", nargs="+", help="two or more prompts to superpose (one is enough with --mode prompt_1)"
    )
    parser.add_argument(
        "--mode", default="and", help="and (default) | or | avg | joint | prompt_<k> (one prompt)"
    )
    parser.add_argument(
        "--lift",
        type=float,
        default=0.0,
        help="AND: final log q_1 − log q_2; > 0 favours the first prompt (default 0)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="OR: T in κ = softmax(T·log q)")
    parser.add_argument(
        "--steps", type=int, default=1000, help=f"sampling steps (default 1000, at most {LIMITS.steps})"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed, 0 to 2**32 − 1 (default: a random one, printed and saved in the PNG)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help=f"images per run (default 1, at most {LIMITS.batch_size})"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default 7.5; digits 2); Flux: its embedded guidance (default 3.5)",
    )
    parser.add_argument(
        "--height", type=int, default=None, help="pixels, multiple of 8 (default: the model's)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="pixels, multiple of 8 (default: the model's)"
    )
    add_max_size(parser)
    parser.add_argument(
        "--out",
        type=user_path,
        default=Path("superdiff_output.png"),
        help="output image (PNG); the κ plot goes next to it as <name>_kappa.png",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        type=user_source,
        help=f"Stable Diffusion 1.x/2.x, SDXL, SD3 or Flux Hub id or local folder, its pipeline picked from "
        f"its model_index.json (default {DEFAULT_MODEL}); offline: "
        + "; ".join(f"{k}: {v}" for k, v in OFFLINE_MODELS.items()),
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="UNet/VAE precision (auto: float16 on GPU, float32 on CPU); κ and log q stay float64",
    )
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu (default: best available)")
    parser.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (small GPUs)")
    parser.add_argument(
        "--attention-slicing", action="store_true", help="enable_attention_slicing (less memory)"
    )


def add_max_size(parser: argparse.ArgumentParser) -> None:
    """--max-size: the one limit a big GPU may need raised."""
    parser.add_argument(
        "--max-size",
        type=int,
        default=LIMITS.size,
        help=f"largest height/width in pixels (default {LIMITS.size}, at most {MAX_SIZE}; raise it for a GPU "
        "that fits more)",
    )


def limits(args):
    """The pipeline limits of the options: the defaults, with --max-size."""
    return replace(LIMITS, size=args.max_size)


def target_paths(out: Path, batch_size: int) -> tuple[list[Path], Path]:
    """(image paths, κ plot path): out itself for one image, out_<i> for several; out_kappa for the plot."""
    images = [out] if batch_size == 1 else [out.with_name(f"{out.stem}_{i}.png") for i in range(batch_size)]
    return images, out.with_name(f"{out.stem}_kappa.png")


def check_out(out: str, batch_size: int, overwrite: bool = False) -> Path:
    """--out (``~`` expanded by its parser, :func:`user_path`), its :func:`target_paths` checked before any
    work. A file that exists (a link too, even a dangling one) is refused unless ``overwrite``: an earlier
    result is not lost by accident."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out: expected a .png file name, got {str(out)!r}")
    check_writable(out.parent, "--out")
    images, kappa = target_paths(out, batch_size)
    paths = images + [kappa]
    check_name_lengths(paths, "--out")
    check_targets(paths, "--out")
    existing = [path for path in paths if os.path.lexists(path)]
    if existing and not overwrite:
        first = repr(str(existing[0]))
        which = f"{first} and {len(existing) - 1} more exist" if existing[1:] else f"{first} exists"
        raise ValueError(f"--out: {which}; pass --overwrite to replace, or choose another --out")
    others = sorted(set(earlier_images(out)) - set(images))
    if overwrite and others:  # an earlier run's other --batch-size: its images would sit beside this κ plot
        print(
            f"superdiff generate: warning: --overwrite keeps {', '.join(p.name for p in others[:3])}"
            f"{f' and {len(others) - 3} more' if others[3:] else ''}, images of an earlier run with another "
            "--batch-size",
            file=sys.stderr,
        )
    return out


def earlier_images(out: Path) -> list[Path]:
    """The images that a run with any --batch-size writes for this --out and that exist."""
    names = out.parent.glob(f"{glob.escape(out.stem)}_*.png")
    numbered = [p for p in names if re.fullmatch(r"[0-9]+", p.stem[len(out.stem) + 1 :])]
    return ([out] if os.path.lexists(out) else []) + numbered


def write_outputs(writers: list, out: Path, batch_size: int, overwrite: bool) -> list[Path]:
    """Write the images (and the κ plot, the last writer) together. Without ``overwrite`` no file is
    replaced, also one made during the run: this run's files then take the first free name out-2, out-3, …"""
    taken = None  # the first file in the way
    for n in range(1, MAX_RENAMES + 1):
        name = out if n == 1 else out.with_name(f"{out.stem}-{n}{out.suffix}")
        images, kappa = target_paths(name, batch_size)
        writes = list(zip([*images, kappa], writers, strict=False))  # no κ plot: one writer fewer
        try:
            write_atomically(writes, exclusive=not overwrite)
        except FileExistsError as err:
            taken = taken or err.filename
            continue
        if n > 1:
            print(
                f"superdiff generate: warning: --out: {taken!r} was made during the run and is kept; this "
                f"run's files are named {name.name!r} instead",
                file=sys.stderr,
            )
        return [path for path, _ in writes]
    raise FileExistsError(errno.EEXIST, f"--out: {MAX_RENAMES} names from {str(out)!r} on are taken", taken)


def settings(args, pipe, call: dict, index: int) -> str:
    """The PNG text chunk "superdiff" of image ``index``: the pipeline call that made it (JSON), with the
    dtype it ran in and the guidance it used (the pipeline's default where --guidance-scale is left out)."""
    import inspect

    from . import __version__

    guidance = inspect.signature(pipe.__call__).parameters["guidance_scale"].default
    dtype = str(getattr(pipe, "dtype", "float32")).removeprefix("torch.")  # the digits pipeline: float32
    model = {"prompts": args.prompts, "model": args.model, "dtype": dtype}
    call = {"guidance_scale": guidance, **call}
    return json.dumps({**model, **call, "index": index, "superdiff": __version__}, ensure_ascii=False)


def pick_device(device: str) -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device must exist here."""
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if device == "auto":
        return next(name for name, ok in available.items() if ok)
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in available:
        raise ValueError(f"--device: expected cuda, mps or cpu (cuda:1 for a given GPU), got {device!r}")
    if not available[kind]:
        raise ValueError(f"--device: {device!r} is not available on this machine; try --device cpu")
    return device


def pick_dtype(dtype: str, device: str):
    """'auto' -> float16 on an accelerator, float32 on CPU."""
    import torch

    if dtype == "auto":  # "cpu:0" too, as a CPU worker of a sweep names its device
        return torch.float32 if torch.device(device).type == "cpu" else torch.float16
    return getattr(torch, dtype)


def split_prompts(prompts: list[str]) -> tuple:
    """CLI prompts -> (prompt_1, prompt_2) as the pipeline takes them (a list for N != 2)."""
    return (prompts[0], prompts[1]) if len(prompts) == 2 else (prompts, None)


def pipeline_class(model: str):
    """The SuperDiff pipeline of a checkpoint, by its model_index.json's ``_class_name`` (else SD 1.x/2.x)."""
    import importlib

    from diffusers import DiffusionPipeline

    with model_folder_errors(model), explain_unavailable(model):
        index = DiffusionPipeline.load_config(model, **offline_kwargs(model))
    if not isinstance(index, dict):
        raise ValueError(
            f"--model: {model!r} has a model_index.json that is not a pipeline index (a JSON object)"
        )
    name = index.get("_class_name")
    if not isinstance(name, (str, type(None))):
        raise ValueError(f"--model: {model!r} has a model_index.json whose _class_name is not a string")
    module, cls = PIPELINES.get(name, SD_PIPELINE)
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--model: {model!r} is a {name}; this installation has no {cls} ({err})") from None


@contextmanager
def model_folder_errors(model: str):
    """diffusers' errors about a local --model folder, named as the option's (a Hub id's are left alone)."""
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "model_index.json")):
        raise ValueError(
            f"--model: {model!r} has no model_index.json: pass the folder of a whole pipeline (a component "
            "folder such as unet/ is not one)"
        )
    with folder_errors(model, "--model"):
        yield


def model_class(model: str):
    """The pipeline class behind --model, from its config alone (no weights); None for digits."""
    if model == "digits":
        return None
    if model == "tiny":
        from superdiff.pipeline_superdiff import SuperDiffPipeline

        return SuperDiffPipeline
    return pipeline_class(model)


def load(model: str, dtype, device: str, cpu_offload: bool, attention_slicing: bool, cls=None):
    """The pipeline behind --model (``cls``: its :func:`model_class`, looked up if None)."""
    import torch

    if model == "digits":
        try:
            from superdiff.digits import load_pipeline
        except ImportError:
            raise ValueError("--model: the digits model is not available in this installation") from None
        return load_pipeline()
    if model == "tiny":
        from superdiff.testing import tiny_pipeline

        pipe = tiny_pipeline()
    else:
        cls = cls or model_class(model)
        with model_folder_errors(model):
            pipe = cls.from_pretrained(model, **dtype_kwarg(dtype))
    pipe.set_progress_bar_config(disable=False)
    if attention_slicing:
        pipe.enable_attention_slicing()
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return pipe.to(device, dtype) if model == "tiny" and dtype != torch.float32 else pipe.to(device)


def call_kwargs(args) -> dict:
    """Pipeline keyword arguments from the CLI options, but the image size."""
    kwargs = dict(
        seed=args.seed,
        num_inference_steps=args.steps,
        batch_size=args.batch_size,
        mode=args.mode,
    )
    if args.mode == "and":  # each acts in its mode only (warn_unused says so of the others)
        kwargs.update(lift=args.lift)
    if args.mode == "or":
        kwargs.update(temperature=args.temperature)
    if args.guidance_scale is not None:  # None: the pipeline's default
        kwargs.update(guidance_scale=args.guidance_scale)
    return kwargs


OPTIONS = {  # the pipelines' argument names as the CLI spells them, for error messages
    "prompt_1": "prompts",
    "prompt_2": "prompts",
    "num_inference_steps": "--steps",
    "batch_size": "--batch-size",
    "guidance_scale": "--guidance-scale",
    "height": "--height",
    "width": "--width",
    "lift": "--lift",
    "temperature": "--temperature",
    "seed": "--seed",
    "mode": "--mode",
}


PIPELINE_HINT = re.compile(re.escape(raise_hint("FIELD")).replace("FIELD", r"\w+"))


def as_option_error(err: ValueError) -> ValueError:
    """The pipeline's ValueError naming its argument as the CLI option (num_inference_steps -> --steps)."""
    name, sep, rest = str(err).partition(": ")
    rest = rest.replace(raise_hint("size"), " (raise the limit: --max-size)")
    rest = PIPELINE_HINT.sub("", rest)  # no option raises the other limits
    if name == "joint_prompt":
        return ValueError(
            "--mode: 'joint' on the command line takes exactly two prompts (\"A that looks like B\")"
        )
    return ValueError(f"{OPTIONS[name]}: {rest}") if sep and name in OPTIONS else err


def refuse_unused_by_digits(args, given: dict[str, bool]) -> None:
    """A ValueError naming the options given (--dtype, --max-size, and those True in ``given``) that the
    digits model has no use for."""
    shared = {"--dtype": args.dtype not in ("auto", "float32"), "--max-size": args.max_size != LIMITS.size}
    flags = [flag for flag, on in {**shared, **given}.items() if on]
    if flags:
        raise ValueError(
            f"{', '.join(flags)}: the digits model runs in float32 at 64×64 on the CPU; leave "
            f"{'them' if flags[1:] else 'it'} out"
        )


def check_arguments(args, cls=None) -> None:
    """Every check that needs no weights, before they load (``cls``, if given: its size multiple)."""
    prompt_1, prompt_2 = split_prompts(args.prompts)
    from superdiff.limits import MAX_MAGNITUDE
    from superdiff.pipeline_common import check_finite, check_int

    checked = {**call_kwargs(args), "lift": args.lift, "temperature": args.temperature}  # in every mode

    check_int("--max-size", args.max_size, 64, high=MAX_SIZE)
    check_finite("--lift", args.lift, -MAX_MAGNITUDE, MAX_MAGNITUDE)  # one number here, unlike the pipeline's
    try:
        if args.model == "digits":
            from superdiff.digits.pipeline import check_inputs

            if args.height is not None or args.width is not None:
                raise ValueError("--height, --width: the digits model makes 64×64 images; leave them out")
            refuse_unused_by_digits(
                args, {"--cpu-offload": args.cpu_offload, "--attention-slicing": args.attention_slicing}
            )
            check_inputs(prompt_1, prompt_2, **checked)
            return
        from superdiff.pipeline_superdiff import check_inputs

        size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
        multiple = {"size_multiple": cls.SIZE_MULTIPLE} if cls is not None else {}
        check_inputs(prompt_1, prompt_2, **checked, **size, limits=limits(args), **multiple)
    except ValueError as err:
        raise as_option_error(err) from None


def kappa_figure(out, args):
    """The κ plot drawn once (a label matplotlib cannot render fails here), or None with a warning."""
    import matplotlib.pyplot as plt

    from superdiff.limits import abbreviate
    from superdiff.viz import plot_kappa

    labels = [abbreviate(p, 40) for p in args.prompts] if out.kappa.shape[-1] == len(args.prompts) else None
    fig = None
    try:
        fig = plot_kappa(out.kappa, out.sigmas, labels=labels, title=f"κ over σ ({args.mode.upper()})").figure
        fig.canvas.draw()
        return fig
    except Exception as err:  # a plotting bug must not cost the sampled images
        if fig is not None:
            plt.close(fig)
        print(
            f"superdiff generate: warning: κ plot not written ({type(err).__name__}: {err})", file=sys.stderr
        )
        return None


def warn_unused(args) -> None:
    """One line on stderr for each option that --mode does not use (the pipeline ignores it silently)."""
    unused = [("--lift", args.lift != 0.0, "and"), ("--temperature", args.temperature != 1.0, "or")]
    for option, given, mode in unused:
        if given and args.mode != mode:
            print(
                f"superdiff generate: warning: {option} is used by --mode {mode} only; ignored with --mode "
                f"{args.mode}",
                file=sys.stderr,
            )


def generate(args) -> list[Path]:
    """Validate, load, sample, plot κ, write; returns the written paths."""
    check_arguments(args)
    warn_unused(args)
    out_path = check_out(args.out, args.batch_size, args.overwrite)
    device = pick_device(args.device)
    if args.seed is None:  # chosen here, so that it can be printed and saved
        args.seed = secrets.randbelow(MAX_SEED + 1)
        print(f"superdiff generate: seed {args.seed} (--seed {args.seed} repeats this run)", file=sys.stderr)
    cls = model_class(args.model)
    if cls is not None and cls.SIZE_MULTIPLE != 8:  # SD3, Flux: sizes in multiples of 16
        check_arguments(args, cls)
    dtype = pick_dtype(args.dtype, device)
    pipe = load(args.model, dtype, device, args.cpu_offload, args.attention_slicing, cls=cls)
    pipe.limits = limits(args)
    kwargs = call_kwargs(args)
    if args.model != "digits":
        kwargs.update(height=args.height or pipe.default_size, width=args.width or pipe.default_size)
    out = pipe(*split_prompts(args.prompts), **kwargs)

    import matplotlib.pyplot as plt

    fig = kappa_figure(out, args)
    infos = [{"superdiff": settings(args, pipe, kwargs, i)} for i in range(args.batch_size)]
    writers = [png(image, info=info) for image, info in zip(out.to_pil(), infos, strict=True)]
    writers += [png(fig)] if fig else []
    try:
        return write_outputs(writers, out_path, args.batch_size, args.overwrite)
    finally:
        if fig is not None:
            plt.close(fig)


def run(args) -> int:
    """Entry point of ``superdiff generate``: 0 on success, 2 with a one-line message on bad input."""
    try:
        written = generate(args)
    except (ValueError, OSError) as err:  # bad arguments, weights unavailable, unwritable folder
        print(f"superdiff generate: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        print("superdiff generate: error: out of memory; try a smaller --batch-size or size", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
