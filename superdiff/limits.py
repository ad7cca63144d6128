"""The sizes every pipeline, the CLI and sweeps accept: checked before any allocation (README, "Limits").
Also the kit's warnings, which point at the caller's line."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import unicodedata
import warnings
from contextlib import contextmanager

MAX_STEPS = 1_000_000  # σ grids the core takes: 100× the pipelines' default, as far as Limits.steps goes


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds of a pipeline call; raise them with ``pipe.limits = pipe.limits.replace(size=4096)``
    (the CLI: --max-size)."""

    steps: int = 10_000  # 10× the paper's 1000
    batch_size: int = 1_024  # images per call
    size: int = 2_048  # pixels per side: 4× SD v1's 512, 2× SDXL's 1024
    prompts: int = 16  # prompts superposed in one call: the denoiser's batch is (prompts + 1) × batch_size
    pixels: int = 2**28  # batch_size × height × width of a call: 1024 images of 512², 64 of 2048²

    def __post_init__(self):
        for name, value in vars(self).items():
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"Limits.{name}: expected a positive integer, got {value!r}")
        if self.steps > MAX_STEPS:  # the core's σ grids stop there
            raise ValueError(f"Limits.steps: expected an integer from 1 to {MAX_STEPS}, got {self.steps}")

    def replace(self, **changes) -> Limits:
        """These limits with the given fields changed (they are frozen; the others are kept)."""
        names = [f.name for f in dataclasses.fields(self)]
        if unknown := sorted(changes.keys() - set(names)):
            raise ValueError(f"Limits.replace: unknown limit {unknown[0]!r}; the limits: {', '.join(names)}")
        return dataclasses.replace(self, **changes)


def raise_hint(field: str) -> str:
    """How an error past a limit says to raise it; also in an exported pipeline, where ``Limits`` is not
    importable from ``superdiff``."""
    return f" (raise the limit: pipe.limits = pipe.limits.replace({field}=...))"


LIMITS = Limits()
# "1" in the kernels of the app (python -m superdiff.app), whose cap on kernels counts one toy or digits
# playground run each: the notebook leaves Stable Diffusion out there
APP_ENV = "SUPERDIFF_APP"
APP_CULL_ENV = "SUPERDIFF_APP_CULL_IDLE"  # the app's --cull-idle, in seconds, for the kernels' pages
MAX_SEED = 2**32 - 1  # torch's CPU generator keeps 32 bits of a seed: seed 2**32 would repeat seed 0
MAX_MAGNITUDE = 1e6  # |lift|, |log_weights| and temperature: far past any useful value, far from overflow
MAX_GUIDANCE = 1e3
MAX_SWEEP_IMAGES = 1_000_000  # pairs × methods × seeds of one sweep folder
MAX_SIZE = 16_384  # the largest --max-size: 64× the pixels of 2048², far past any GPU's memory at batch 1
MAX_PROMPT_CHARS = 2_000  # characters per prompt: T5 (SD3, Flux) reads at most 512 tokens, CLIP 77


def limit_memory(n_bytes: int, pid: int = 0) -> bool:
    """Cap the data (heap and anonymous mappings: RLIMIT_DATA) of process ``pid`` (0: this one) at ``n_bytes``
    and put it first in line for the out-of-memory killer; Linux only (elsewhere nothing, False). OSError if
    the process cannot be capped. The app caps each kernel it starts."""
    if not sys.platform.startswith("linux"):
        return False
    import resource

    resource.prlimit(pid, resource.RLIMIT_DATA, (n_bytes, n_bytes))
    with open(f"/proc/{pid or 'self'}/oom_score_adj", "w") as f:  # raising a score needs no privilege
        f.write("1000")
    return True


def out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError or torch's: OutOfMemoryError on CUDA and MPS, a RuntimeError from its CPU
    allocator ("can't allocate memory")."""
    message = str(err).lower()
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
    )


def abbreviate(text: str, n: int) -> str:
    """text cut to n characters, the last one "…", if longer (a prompt in a message or a plot legend)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def check_prompt(name: str, prompt) -> None:
    """A prompt: non-empty text of at most MAX_PROMPT_CHARS characters that encodes as UTF-8."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {prompt!r}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{name}: expected at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not valid UTF-8 text ({ascii(prompt[:40])})") from None
    if not any(unicodedata.category(c)[0] in "LNPS" for c in prompt):  # letter, number, punctuation, symbol
        raise ValueError(f"{name}: expected visible text, got only invisible characters {ascii(prompt[:40])}")


class SuperDiffWarning(UserWarning):
    """A warning of this kit (an option without effect, a grid or a result to doubt); the playground shows
    these in its status line, where a student sees them."""


class SuperDiffRuntimeWarning(SuperDiffWarning, RuntimeWarning):
    """A :class:`SuperDiffWarning` about a result (a lift missed, NaN pixels)."""


KIT_CATEGORY = {UserWarning: SuperDiffWarning, RuntimeWarning: SuperDiffRuntimeWarning}


_NOTED = threading.local()  # .notes: where warn_caller puts this thread's warnings, inside noting_warnings


@contextmanager
def noting_warnings():
    """Within it, the kit's warnings of this thread are appended to the yielded list (once each), not warned.

    The playground shows them in its status line. ``warnings.catch_warnings`` would do it for the whole
    process, and a cell entering one while a click's run samples (in its thread) left the kernel's warnings
    going to that run's list for good."""
    outer, _NOTED.notes = getattr(_NOTED, "notes", None), []
    try:
        yield _NOTED.notes
    finally:
        _NOTED.notes = outer


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the user's line: the first frame outside this package, torch and diffusers; a
    UserWarning or RuntimeWarning as this kit's own subclass of it. Inside :func:`noting_warnings`: noted."""
    notes = getattr(_NOTED, "notes", None)
    if notes is not None:
        if message not in notes:
            notes.append(message)
        return
    category = KIT_CATEGORY.get(category, category)
    files = [__file__] + [getattr(sys.modules.get(name), "__file__", None) for name in ("torch", "diffusers")]
    inside = tuple(os.path.dirname(file) + os.sep for file in files if file)
    frame, level = sys._getframe(1), 2  # stacklevel 2 is warn_caller's caller
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
