"""The fast path of the pipelines: channels_last, ``torch.compile`` of the denoiser, CUDA graphs.

At batch 1–3 the Stable Diffusion UNet is launch-bound: an eager fp16 step on an H100 spends much of its
time launching kernels. :func:`enable_fast_sampling` compiles the denoiser in place (``module.compile``:
diffusers still sees its own class) and, on CUDA, replays it as a CUDA graph (``mode="reduce-overhead"``).

    pipe = SuperDiffPipeline.from_pretrained(...).to("cuda", torch.float16)
    enable_fast_sampling(pipe)  # the first call then compiles (about a minute at 512²)

If compilation is unavailable (no C compiler, an unsupported platform, TORCHDYNAMO_DISABLE=1), sampling warns
once and runs eager.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .limits import warn_caller

DENOISERS = ("unet", "transformer")  # the attribute that holds the network, by model family
STATE = "_superdiff_fast"  # where the denoiser keeps what was applied, for disable_fast_sampling


@dataclass
class FastSampling:
    """What :func:`enable_fast_sampling` applied to the denoiser."""

    denoiser: str  # its attribute on the pipeline: "unet" or "transformer"
    channels_last: bool
    compiled: bool  # False also after a failed compilation fell back to eager
    cuda_graphs: bool
    compile_options: dict
    asked: dict = field(default_factory=dict)  # enable_fast_sampling's arguments, to apply them again


def denoiser_of(pipe) -> tuple[str, nn.Module]:
    """(name, module) of the pipeline's denoiser: its ``denoiser_name``, else ``unet`` or ``transformer``."""
    names = [getattr(pipe, "denoiser_name", None), *DENOISERS]
    for name in names:
        module = getattr(pipe, name, None) if name else None
        if isinstance(module, nn.Module):
            return name, module
    raise ValueError(f"pipe: expected a denoiser module as one of {DENOISERS}, found none")


def has_offload_hook(module: nn.Module) -> bool:
    """True if accelerate moves the module's weights around (CPU offload): no CUDA graphs then."""
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def graphs_can_replay(module: nn.Module) -> bool:
    """On CUDA and not CPU-offloaded: where ``cuda_graphs=None`` turns CUDA graphs on."""
    return module_device(module).type == "cuda" and not has_offload_hook(module)


def first_of(owner, *names: str):
    """The first of names that owner has (torch renamed them: "cache" became "recompile" in 2.7), or None."""
    return next((getattr(owner, name) for name in names if hasattr(owner, name)), None)


def recompile_limit() -> int | None:
    """torch._dynamo's limit of compiled variants per code object."""
    return first_of(torch._dynamo.config, "recompile_limit", "cache_size_limit")


def limit_names(config, exc) -> tuple[str | None, type | tuple]:
    """(the config flag that makes dynamo raise past the recompile limit, the exception it raises), by their
    names before and after torch 2.7; (None, ()) where torch has neither and runs eager there unsaid."""
    flags = [f for f in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(config, f)]
    return (flags or [None])[0], first_of(exc, "FailOnRecompileLimitHit", "FailOnCacheLimitHit") or ()


LIMIT_FLAG, LIMIT_HIT = limit_names(torch._dynamo.config, torch._dynamo.exc)


@contextmanager
def failing_on_recompile_limit():
    """Past the recompile limit, raise instead of running eager unsaid (set and restored directly: 5×
    cheaper per step than ``config.patch``)."""
    if LIMIT_FLAG is None:
        yield
        return
    config = torch._dynamo.config
    before = getattr(config, LIMIT_FLAG)
    setattr(config, LIMIT_FLAG, True)
    try:
        yield
    finally:
        setattr(config, LIMIT_FLAG, before)


def signature(args, kwargs) -> tuple:
    """What tells the compiled variants of a call apart, roughly: its tensors' shapes, strides and dtypes."""
    leaves = pytree.tree_leaves((args, kwargs))
    return tuple((x.shape, x.stride(), x.dtype) if isinstance(x, torch.Tensor) else type(x) for x in leaves)


class FastCall:
    """The denoiser's ``_compiled_call_impl``: the compiled call, with CUDA-graph steps and eager fallback.

    Runs outside the compiled region, so it may mark CUDA-graph steps and catch a failed compilation.
    """

    def __init__(self, module: nn.Module, compiled, state: FastSampling):
        self.module, self.compiled, self.state = module, compiled, state
        self.past_limit: set[tuple] = set()  # signatures refused at the recompile limit: eager from then on

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled():  # compiled for sampling; derivatives (eps_model's FPE residual, a double
            return self.module._call_impl(*args, **kwargs)  # backward torch.compile lacks) run eager
        if self.past_limit and signature(args, kwargs) in self.past_limit:  # torch would log 7 lines a step
            return self.module._call_impl(*args, **kwargs)
        if self.state.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten
        try:
            with failing_on_recompile_limit():
                out = self.compiled(*args, **kwargs)
        except LIMIT_HIT:  # shapes compiled before stay compiled
            self.warn_limit(args)
            self.past_limit.add(signature(args, kwargs))
            return self.module._call_impl(*args, **kwargs)
        except torch._dynamo.exc.RecompileError:  # the user asked for it (config.error_on_recompile)
            raise
        except Exception as err:  # any compiler failure: fall back if eager works
            out = self.module._call_impl(*args, **kwargs)  # an error of the call itself raises here
            self.fall_back(err)
            return out
        # a CUDA graph's outputs live in its static buffers, which the next replay overwrites
        return pytree.tree_map_only(torch.Tensor, torch.clone, out) if self.state.cuda_graphs else out

    def warn_limit(self, args) -> None:
        """Once: the recompile limit is reached, so this and further new input shapes run eager."""
        if self.past_limit:
            return
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else "?"
        warn_caller(
            f"enable_fast_sampling: torch.compile reached its recompile limit ({recompile_limit()}, "
            f"torch._dynamo.config.recompile_limit) for the denoiser's code: input shape {shape} and other "
            "new sizes or batches run eager, the ones compiled before stay compiled",
            RuntimeWarning,
        )

    def fall_back(self, err: Exception) -> None:
        self.module._compiled_call_impl = None
        self.state.compiled = self.state.cuda_graphs = False
        reason = " ".join(str(err).split("Set TORCHDYNAMO_VERBOSE")[0].split())[:300]  # one line
        warn_caller(
            f"enable_fast_sampling: torch.compile failed ({type(err).__name__}: {reason}); sampling eager",
            RuntimeWarning,
        )


def compile_kwargs(cuda_graphs: bool, options: dict) -> dict:
    """torch.compile's arguments: static shapes, CUDA graphs as inductor's "reduce-overhead" mode."""
    kwargs = {"dynamic": False, "fullgraph": False, **options}
    if kwargs.get("backend", "inductor") == "inductor":
        kwargs.setdefault("mode", "reduce-overhead" if cuda_graphs else None)
    return kwargs


def enable_fast_sampling(
    pipe,
    *,
    compile: bool = True,
    channels_last: bool = True,
    cuda_graphs: bool | None = None,
    **compile_options,
) -> FastSampling:
    """Make the pipeline's denoiser fast in place, on the kit's pipelines before or after ``pipe.to``.

    Args:
        compile: ``torch.compile`` the denoiser (``module.compile``: its class stays diffusers'). The first
            call for a new image size or batch compiles; later calls with the same shapes reuse it.
        channels_last: convolution weights in channels_last memory format (faster cuDNN kernels).
        cuda_graphs: replay the compiled denoiser as a CUDA graph; None: on when the denoiser is on CUDA,
            compiled and not CPU-offloaded, decided again at the kit's ``pipe.to`` (:func:`follow_device`).
        compile_options: passed to ``torch.compile`` (e.g. ``mode``, ``backend``, ``fullgraph``); defaults:
            ``dynamic=False``, ``mode="reduce-overhead"`` with CUDA graphs.
    """
    asked = dict(compile=compile, channels_last=channels_last, cuda_graphs=cuda_graphs, **compile_options)
    disable_fast_sampling(pipe)
    name, module = denoiser_of(pipe)
    if compile and getattr(torch._dynamo.config, "disable", False):  # torch.compile would return fn as is
        warn_caller(
            "enable_fast_sampling: torch.compile is switched off (TORCHDYNAMO_DISABLE=1 or "
            "torch._dynamo.config.disable); sampling eager",
            RuntimeWarning,
        )
        compile = cuda_graphs = False
    if cuda_graphs is None:
        cuda_graphs = compile and graphs_can_replay(module)
    if cuda_graphs and not compile:
        raise ValueError("cuda_graphs: CUDA graphs come from torch.compile; pass compile=True")
    options = compile_kwargs(cuda_graphs, compile_options) if compile else {}
    state = FastSampling(name, channels_last, compile, cuda_graphs, options, asked)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        try:
            compiled = torch.compile(module._call_impl, **options)
        except Exception as err:  # e.g. an unsupported Python or platform
            FastCall(module, None, state).fall_back(err)
        else:
            module._compiled_call_impl = FastCall(module, compiled, state)
    setattr(module, STATE, state)
    return state


def cuda_graphs_on(pipe) -> bool:
    """True if the fast path replays CUDA graphs now."""
    state = fast_sampling_state(pipe)
    return state is not None and state.cuda_graphs


def drop_cuda_graphs(pipe, had: bool) -> None:
    """After CPU offload, which moves the weights a graph replays from: the fast path goes on without CUDA
    graphs, and says so if it ``had`` them (the offload's own ``pipe.to("cpu")`` may have dropped them)."""
    state = fast_sampling_state(pipe)
    if not had or state is None:
        return
    warn_caller(
        "enable_fast_sampling: CPU offload moves the denoiser's weights; sampling goes on compiled, without "
        "CUDA graphs",
        UserWarning,
    )
    if state.cuda_graphs:
        options = {k: v for k, v in state.compile_options.items() if (k, v) != ("mode", "reduce-overhead")}
        enable_fast_sampling(pipe, channels_last=state.channels_last, cuda_graphs=False, **options)


def follow_device(pipe) -> None:
    """After ``pipe.to``: a fast path that left CUDA graphs to the device (``cuda_graphs=None``) decides anew,
    so enabling it before ``.to("cuda")`` gets them too."""
    try:
        state = fast_sampling_state(pipe)
    except ValueError:  # a pipeline without its denoiser (unet=None) moves as diffusers moves it
        return
    if state is None or state.asked.get("cuda_graphs", False) is not None or not state.compiled:
        return
    if state.cuda_graphs != graphs_can_replay(denoiser_of(pipe)[1]):
        enable_fast_sampling(pipe, **state.asked)


def disable_fast_sampling(pipe) -> None:
    """Undo :func:`enable_fast_sampling`: eager denoiser, contiguous weights (a no-op if not enabled)."""
    _, module = denoiser_of(pipe)
    state = getattr(module, STATE, None)
    if state is None:
        return
    if isinstance(module._compiled_call_impl, FastCall):
        module._compiled_call_impl = None
    if state.channels_last:
        module.to(memory_format=torch.contiguous_format)
    delattr(module, STATE)


@contextmanager
def contiguous_weights(pipe):
    """The denoiser's weights contiguous inside the block: diffusers 0.30 saves channels_last weights as they
    are, and safetensors refuses non-contiguous tensors."""
    state = fast_sampling_state(pipe)
    if state is None or not state.channels_last:
        yield
        return
    module = denoiser_of(pipe)[1]
    module.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        module.to(memory_format=torch.channels_last)


def fast_sampling_state(pipe) -> FastSampling | None:
    """What is applied now (None: the eager path)."""
    module = denoiser_of(pipe)[1]
    state = getattr(module, STATE, None)
    if state is not None and state.compiled and not isinstance(module._compiled_call_impl, FastCall):
        return replace(state, compiled=False, cuda_graphs=False)  # a copy.deepcopy drops the compiled call
    return state
