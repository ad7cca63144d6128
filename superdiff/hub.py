"""A short, actionable error when pretrained weights are neither cached locally nor downloadable."""

from __future__ import annotations

import os
from contextlib import contextmanager

CAUSE_CHARS = 200  # the cause's first line is shortened to about this many characters


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be loaded: not in the local cache and the Hub is unreachable."""


def _looks_like_path(name: str) -> bool:
    """Hub ids are "owner/name"; anything else with a separator is meant as a local folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def weights_unavailable(name: str, cause: BaseException | None = None) -> WeightsUnavailableError:
    """The error for ``name``: one sentence on how to get the weights, plus the first line of the cause."""
    if _looks_like_path(name):
        message = (
            f"{name!r} is not a directory: pass the folder that holds model_index.json, unet/, vae/, ..."
        )
    else:
        message = (
            f"Cannot load {name!r}: its weights are not in the local Hugging Face cache and the Hub cannot "
            f"be reached; on a machine with internet run `hf auth login` (or `huggingface-cli login`) and "
            f"`hf download {name}`, or pass a local directory that holds the weights."
        )
    if cause is not None and str(cause).strip():
        message += f" (cause: {shorten(str(cause).strip().splitlines()[0])})"
    return WeightsUnavailableError(message)


def shorten(line: str, limit: int = CAUSE_CHARS) -> str:
    """line cut to about limit characters between words, with "…" where it was cut (never mid-word)."""
    if len(line) <= limit:
        return line
    head = line[: limit + 1].rsplit(" ", 1)[0] if " " in line[: limit + 1] else line.split(" ", 1)[0]
    return head.rstrip(" ,;:") + " …"


@contextmanager
def explain_unavailable(name):
    """Turn an OSError from loading a Hub name (offline, not cached, gated) into a WeightsUnavailableError."""
    try:
        yield
    except WeightsUnavailableError:
        raise
    except (OSError, ValueError) as err:
        name = str(name)
        if os.path.isdir(name) or (isinstance(err, ValueError) and not _looks_like_path(name)):
            raise
        raise weights_unavailable(name, err) from None  # the cause stays in err.__context__ for debugging


def dtype_kwarg(dtype) -> dict:
    """``dtype=`` where diffusers accepts it (newer ones deprecate ``torch_dtype``), else ``torch_dtype=``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}
