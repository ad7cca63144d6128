"""A short, actionable error when pretrained weights are neither cached locally nor downloadable."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

CAUSE_CHARS = 200  # the cause's first line is shortened to about this many characters
PROBE_S = 3.0  # how long the Hub may take to accept a connection before it counts as unreachable
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be loaded: not in the local cache and the Hub is unreachable."""


def _looks_like_path(name: str) -> bool:
    """Hub ids are "owner/name"; anything else with a separator is meant as a local folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def weights_unavailable(name: str, cause: BaseException | None = None) -> WeightsUnavailableError:
    """The error for ``name``: one sentence on how to get the weights, plus the first line of the cause."""
    if os.path.isfile(name):
        message = f"{name!r} is a file: pass the folder that holds model_index.json, unet/, vae/, ..."
    elif _looks_like_path(name):
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
        missing = missing_components(name) if os.path.isdir(name) else []
        if missing:
            raise WeightsUnavailableError(
                f"{name!r} lacks {', '.join(m + '/' for m in missing)} that its model_index.json names: an "
                "incomplete download or copy; fetch the whole pipeline folder again"
            ) from None
        if os.path.isdir(name) or (isinstance(err, ValueError) and not _looks_like_path(name)):
            raise
        raise weights_unavailable(name, err) from None  # the cause stays in err.__context__ for debugging


@contextmanager
def folder_errors(name, option: str):
    """A library's error about a local folder as a ValueError naming the command-line option; a Hub id's
    errors, and a WeightsUnavailableError (it names the folder and what it lacks), pass unchanged."""
    try:
        yield
    except WeightsUnavailableError:
        raise
    except (OSError, ValueError) as err:
        if not os.path.isdir(str(name)):
            raise
        raise ValueError(f"{option}: {str(name)!r}: {err}") from None


def missing_components(folder: str) -> list[str]:
    """The components a pipeline folder's model_index.json names whose subfolder is missing or empty."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no index: diffusers' own error says so
        return []
    if not isinstance(index, dict):
        return []
    named = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
    return [k for k in named if not (Path(folder) / k).is_dir() or not any((Path(folder) / k).iterdir())]


@cache
def hub_reachable() -> bool:
    """Whether the Hub accepts a connection within PROBE_S (assumed so behind a proxy, which may be the only
    way out): huggingface_hub retries an unreachable Hub for about 30 s before it fails."""
    if any(os.environ.get(name) for name in PROXIES):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=PROBE_S).close()
    except OSError:
        return False
    return True


def offline_kwargs(name) -> dict:
    """``local_files_only=True`` for a Hub id when the Hub is unreachable: the cache answers at once."""
    if os.path.isdir(str(name)) or _looks_like_path(str(name)) or hub_reachable():
        return {}
    return {"local_files_only": True}


def dtype_kwarg(dtype) -> dict:
    """``dtype=`` where diffusers accepts it (newer ones deprecate ``torch_dtype``), else ``torch_dtype=``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}
