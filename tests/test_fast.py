"""The fast path (superdiff.fast) on the tiny pipeline: same images as eager, no recompiles, fallbacks."""

import copy
import json
import logging
import time
import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiffusionPipeline
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from superdiff import fast, sampling, testing, testing_flux
from superdiff._torch import gen
from superdiff.fast import enable_fast_sampling, fast_sampling_state
from superdiff.pipeline_common import step_callback
from superdiff.sampling import randn_like as sampling_randn_like
from superdiff.sampling import superpose
from superdiff.testing import tiny_pipeline, tiny_sd3_pipeline, tiny_xl_pipeline
from superdiff.testing_flux import tiny_flux_pipeline

P1, P2 = "a flamingo", "a candy cane"
CALL = dict(seed=1, num_inference_steps=4, height=64, width=64)

BUILDERS = {"sd": tiny_pipeline, "xl": tiny_xl_pipeline, "sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    # few-step grids that start far below σ_max (SDXL's "leading" spacing); test_pipeline.py tests that
    pytest.mark.filterwarnings(r"ignore:num_inference_steps=\d+. with timestep_spacing="),
]


def sample(pipe, **kwargs):
    return pipe(P1, P2, **{**CALL, **kwargs})


@pytest.fixture(scope="module")
def eager():
    return sample(tiny_pipeline(seed=0))


@pytest.fixture(scope="module")
def compiled():
    """The tiny pipeline compiled by inductor (10 s with a warm inductor cache, 90 s cold, 2 cores)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps them: graphs compiled by earlier tests
    pipe = tiny_pipeline(seed=0)
    state = pipe.enable_fast_sampling()
    tic = time.perf_counter()
    out = sample(pipe)
    print(f"first compiled call: {time.perf_counter() - tic:.1f} s")
    return SimpleNamespace(
        pipe=pipe, state=state, out=out, graphs=torch._dynamo.utils.counters["stats"].copy()
    )


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.ndim == 4]


def assert_close(fast_out, eager_out) -> None:
    """Within float32 compiler tolerance; AND's κ amplifies last-bit differences at small σ."""
    torch.testing.assert_close(fast_out.samples, eager_out.samples, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(fast_out.kappa, eager_out.kappa, atol=2e-2, rtol=0)
    torch.testing.assert_close(fast_out.log_q, eager_out.log_q, atol=0, rtol=1e-5)
    assert (fast_out.images.int() - eager_out.images.int()).abs().max() <= 2


# ----------------------------------------------------------------------------- compiled (inductor)


def test_compiled_matches_eager_in_float32(compiled, eager):
    assert compiled.state.compiled and compiled.state.channels_last and not compiled.state.cuda_graphs
    assert compiled.out.kappa.dtype == torch.float32 and compiled.out.log_q.dtype == torch.float64
    assert_close(compiled.out, eager)
    assert not torch.equal(compiled.out.samples, eager.samples)  # the compiled UNet did run


@pytest.mark.parametrize("family", ["tiny_xl_pipeline", "tiny_sd3_pipeline", "tiny_flux_pipeline"])
def test_every_family_compiles_and_draws_the_eager_images(family):
    """SDXL's UNet and the SD3 and Flux transformers compile too (about 20 s each cold, 2 cores)."""
    make = getattr(testing, family, None) or getattr(testing_flux, family)
    eager = sample(make(seed=0))
    pipe = make(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        state = pipe.enable_fast_sampling()
        out = sample(pipe)
    assert state.compiled and isinstance(pipe.denoiser._compiled_call_impl, fast.FastCall)
    assert_close(out, eager)
    assert not torch.equal(out.samples, eager.samples)  # the compiled denoiser did run


def test_derivatives_of_the_denoiser_run_eager(compiled):
    """eps_model's Fokker–Planck residual takes a double backward, which torch.compile lacks: with the
    fast path on it still gives the eager residual, and sampling stays compiled."""
    from superdiff.fokker_planck import score_fpe_residual

    x, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([2.0, 0.5])
    # Hutchinson's divergence from the same two probes (the exact one runs 256 Jacobian rows a sample)
    residual = score_fpe_residual(compiled.pipe.eps_model(P1), x, sigma, hutchinson=2, generator=gen(1))
    expected = score_fpe_residual(
        tiny_pipeline(seed=0).eps_model(P1), x, sigma, hutchinson=2, generator=gen(1)
    )
    # float32 rounding of channels_last kernels: ~3e-4 relative at a few entries under diffusers 0.32.1
    torch.testing.assert_close(residual, expected, rtol=1e-3, atol=1e-4)
    assert compiled.state.compiled and isinstance(compiled.pipe.unet._compiled_call_impl, fast.FastCall)


def test_compiled_denoiser_keeps_its_class_and_compiles_one_graph(compiled):
    unet = compiled.pipe.unet
    assert type(unet).__name__ == "UNet2DConditionModel" and compiled.pipe.components["unet"] is unet
    assert isinstance(unet._compiled_call_impl, fast.FastCall)
    assert compiled.graphs["unique_graphs"] == 1  # four steps, four timesteps: one graph


def test_a_compiled_pipeline_saves_and_loads_as_diffusers_expects(tmp_path):
    pipe = tiny_pipeline(seed=0)
    enable_fast_sampling(pipe, backend="eager")  # dynamo without code generation: quick
    sample(pipe, num_inference_steps=1)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    loaded = type(pipe).from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight, rtol=0, atol=0)


def test_second_call_same_size_does_not_recompile(compiled, eager):
    stats = torch._dynamo.utils.counters["stats"]
    graphs = stats["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = sample(compiled.pipe)
    assert stats["unique_graphs"] == graphs
    assert_close(out, eager)


@pytest.mark.parametrize("mode", ["or", "avg"])
def test_other_prompts_steps_and_modes_at_the_same_size_do_not_recompile(compiled, mode):
    """A sweep's calls differ in prompts, steps, guidance, lift and mode, not in the UNet's shapes."""
    stats = torch._dynamo.utils.counters["stats"]
    graphs = stats["unique_graphs"]
    call = dict(CALL, seed=5, num_inference_steps=6, guidance_scale=3.0, mode=mode)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled.pipe("a cat", "a dog", **call)
        compiled.pipe("a cat", "a dog", **dict(call, mode="and", lift=2.0))
    assert stats["unique_graphs"] == graphs


@pytest.mark.parametrize("family", ["tiny_pipeline", "tiny_xl_pipeline", "tiny_sd3_pipeline"])
def test_channels_last_applied_and_undone(family):
    pipe = getattr(testing, family)(seed=0)
    state = pipe.enable_fast_sampling(compile=False)
    assert state == fast_sampling_state(pipe) and not state.compiled and not state.cuda_graphs
    assert state.denoiser == ("transformer" if family == "tiny_sd3_pipeline" else "unet")
    weights = conv_weights(pipe.denoiser)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not all(w.is_contiguous() for w in weights)
    pipe.disable_fast_sampling()
    assert fast_sampling_state(pipe) is None and pipe.denoiser._compiled_call_impl is None
    assert all(w.is_contiguous() for w in conv_weights(pipe.denoiser))


# ----------------------------------------------------------------------------- no host wait per step


class HostToDevice(TorchDispatchMode):
    """Counts blocking copies of CPU tensors to another device: on CUDA each makes the host wait."""

    COPIES = ("_to_copy", "copy_", "_copy_from", "_copy_from_and_resize")

    def __init__(self):
        super().__init__()
        self.copies, self.paused = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [t for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if func.__name__.split(".")[0] in self.COPIES and "cpu" in devices and len(devices) > 1:
            if not (self.paused or kwargs.get("non_blocking")):
                self.copies.append(func.__name__)
        return out


class HostData(TorchFunctionMode):
    """Counts tensors made from host data (Python numbers, lists) on another device: a blocking copy that
    the dispatch level does not show as one."""

    FACTORIES = ("tensor", "as_tensor", "new_tensor", "scalar_tensor")

    def __init__(self):
        super().__init__()
        self.made, self.paused = [], False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if self.paused or name not in self.FACTORIES or not isinstance(out, torch.Tensor):
            return out
        data = args[1] if name == "new_tensor" else args[0] if args else None  # new_tensor(self, data)
        if out.device.type != "cpu" and not (isinstance(data, torch.Tensor) and data.device == out.device):
            self.made.append(name)
        return out


def on_meta(tree):
    """Every tensor of a (nested) context on the meta device."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.to("meta"), tree)


def meta_run(family: str, mode: str, steps: int, monkeypatch) -> int:
    """Blocking copies to the device in one superpose call of ``steps`` on meta, the step noise aside: the
    family's own grid, prompt context and predictor, its denoiser on meta."""
    pipe = BUILDERS[family](seed=0)
    sigmas, timesteps = pipe.sigma_grid(steps, 64, 64)
    context = on_meta(pipe.prompt_context([P1, P2], torch.device("cpu"), 64, 64))
    pipe.denoiser.to("meta")
    predictor = pipe.make_predictor(context, 2, 7.5, sigmas, timesteps.to("meta"))
    seen = []
    hook = step_callback(pipe, lambda *args: seen.append(args), 2, predictor.timesteps, lambda: None)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]  # CPU noise, as the pipeline's seed
    x = torch.empty(pipe.latent_shape(2, 64, 64), device="meta")
    copies, made = HostToDevice(), HostData()

    def randn_like(*args):  # on CUDA a pinned, non-blocking copy (sampling.randn_like); on meta a plain one
        copies.paused = made.paused = True
        try:
            return sampling_randn_like(*args)
        finally:
            copies.paused = made.paused = False

    monkeypatch.setattr(sampling, "randn_like", randn_like)
    with copies, made:
        out = superpose(predictor, x, sigmas, mode=mode, generator=generators, callback=hook)
    assert out.samples.is_meta and out.kappa.is_meta and out.log_q.is_meta and len(seen) == steps
    return len(copies.copies) + len(made.made)


@pytest.mark.parametrize("family", BUILDERS)
@pytest.mark.parametrize("mode", ["and", "or", "avg"])
def test_the_step_loop_never_makes_the_host_wait(family, mode, monkeypatch):
    """On the meta device .item(), bool(), nonzero and mask indexing raise, and a blocking copy of a CPU
    tensor, or a tensor made from Python numbers, is counted: on CUDA each is a host wait. The copies (of
    lift and the like) are per call only."""
    assert meta_run(family, mode, 6, monkeypatch) == meta_run(family, mode, 3, monkeypatch)


# ----------------------------------------------------------------------------- fallbacks


def test_fallback_when_torch_compile_raises(monkeypatch, eager):
    def unavailable(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this platform")

    monkeypatch.setattr(torch, "compile", unavailable)
    pipe = tiny_pipeline(seed=0)
    with pytest.warns(RuntimeWarning, match="not supported on this platform.*sampling eager") as warned:
        state = enable_fast_sampling(pipe, channels_last=False)
    assert warned[0].filename == __file__
    assert not state.compiled and pipe.unet._compiled_call_impl is None
    assert torch.equal(sample(pipe).samples, eager.samples)


def test_fallback_when_the_compiler_fails_at_the_first_call(eager):
    """As with no C compiler: compilation is lazy, so the failure comes from the first step."""

    def no_compiler(graph, example_inputs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    torch._dynamo.reset()
    pipe = tiny_pipeline(seed=0)
    state = enable_fast_sampling(pipe, channels_last=False, backend=no_compiler)
    assert state.compiled and "mode" not in state.compile_options  # a custom backend takes no mode
    with pytest.warns(RuntimeWarning, match="No working C\\+\\+ compiler.*sampling eager") as caught:
        out = sample(pipe)
    warned = [w.filename for w in caught if issubclass(w.category, RuntimeWarning)]
    assert warned == [__file__]  # sample's pipe(...)
    assert not state.compiled and pipe.unet._compiled_call_impl is None
    assert torch.equal(out.samples, eager.samples) and torch.equal(out.kappa, eager.kappa)


def test_a_bad_call_raises_its_own_error_and_keeps_the_compiled_path():
    pipe = tiny_pipeline(seed=0)
    state = enable_fast_sampling(pipe, channels_last=False, backend="eager")
    with torch.no_grad(), pytest.raises(RuntimeError):  # with autograd on, the call would run eager anyway
        pipe.unet(torch.zeros(1, 3, 8, 8), torch.tensor(1.0), encoder_hidden_states=torch.zeros(1, 77, 32))
    assert state.compiled and isinstance(pipe.unet._compiled_call_impl, fast.FastCall)


# ----------------------------------------------------------------------------- CUDA graphs, faked on CPU


class StaticBuffers:
    """A stand-in for a CUDA-graph replay: every call returns the same output buffer, overwritten."""

    def __init__(self, module: nn.Module, log: dict):
        self.module, self.log, self.buffer = module, log, None

    def __call__(self, *args, **kwargs):
        out = self.module._call_impl(*args, **kwargs)
        self.buffer = out.sample if self.buffer is None else self.buffer.copy_(out.sample)
        self.log["calls"] += 1
        return type(out)(sample=self.buffer)


def fake_compile(monkeypatch, log: dict) -> None:
    def compile_(fn, **kwargs):
        log["kwargs"] = kwargs
        log["graph"] = StaticBuffers(fn.__self__, log)
        return log["graph"]

    def mark_step_begin():
        log["steps"] += 1

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", mark_step_begin)


def test_cuda_graphs_mark_each_step_and_copy_the_outputs(monkeypatch, eager):
    log = {"calls": 0, "steps": 0}
    fake_compile(monkeypatch, log)
    pipe = tiny_pipeline(seed=0)
    state = enable_fast_sampling(pipe, channels_last=False, cuda_graphs=True)
    assert state.cuda_graphs and log["kwargs"] == {
        "dynamic": False,
        "fullgraph": False,
        "mode": "reduce-overhead",
    }
    out = sample(pipe)
    assert log["calls"] == log["steps"] == CALL["num_inference_steps"]  # one step begun per UNet call
    assert torch.equal(out.samples, eager.samples) and torch.equal(out.kappa, eager.kappa)
    x = torch.zeros(3, 4, 8, 8)
    with torch.no_grad():  # as in sampling: with autograd on, the call runs eager
        first = pipe.unet(x, torch.tensor(999.0), encoder_hidden_states=torch.zeros(3, 77, 32)).sample
        kept = first.clone()
        pipe.unet(x + 1, torch.tensor(1.0), encoder_hidden_states=torch.zeros(3, 77, 32))  # the next "replay"
    assert first.data_ptr() != log["graph"].buffer.data_ptr() and torch.equal(first, kept)


def test_cuda_graphs_auto_on_cuda_only_without_offload(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    pipe = tiny_pipeline(seed=0)
    assert not enable_fast_sampling(pipe).cuda_graphs  # CPU
    monkeypatch.setattr(fast, "module_device", lambda module: torch.device("cuda", 0))
    assert enable_fast_sampling(pipe).cuda_graphs
    assert enable_fast_sampling(pipe).compile_options["mode"] == "reduce-overhead"
    assert not enable_fast_sampling(pipe, compile=False).cuda_graphs
    pipe.unet.conv_in._hf_hook = object()  # what accelerate's CPU offload leaves on a module
    assert not enable_fast_sampling(pipe).cuda_graphs
    with pytest.raises(ValueError, match="cuda_graphs.*compile=True"):
        enable_fast_sampling(pipe, compile=False, cuda_graphs=True)


def test_enabled_before_moving_to_cuda_gets_cuda_graphs_there(monkeypatch):
    """The docs said "call after .to(device)"; a user who called it before got compiled steps, no graphs."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    pipe = tiny_pipeline(seed=0)
    asked = pipe.enable_fast_sampling(fullgraph=True)
    assert not asked.cuda_graphs and not pipe.to(torch.float32).unet.__dict__[fast.STATE].cuda_graphs
    on = {"device": torch.device("cuda", 0)}
    monkeypatch.setattr(fast, "module_device", lambda module: on["device"])
    assert pipe.to("cpu") is pipe  # the move itself is faked by module_device
    state = fast_sampling_state(pipe)
    assert state.cuda_graphs and state.compile_options == {
        "dynamic": False,
        "fullgraph": True,
        "mode": "reduce-overhead",
    }
    on["device"] = torch.device("cpu")
    pipe.to("cpu")
    assert not fast_sampling_state(pipe).cuda_graphs and fast_sampling_state(pipe).compiled
    kept = pipe.enable_fast_sampling(cuda_graphs=False)  # asked for: kept on any device, not compiled again
    on["device"] = torch.device("cuda", 0)
    assert fast_sampling_state(pipe.to("cpu")) is kept and not kept.cuda_graphs
    pipe.register_modules(unet=None)
    assert pipe.to("cpu") is pipe  # without a denoiser, as diffusers moves it


def test_the_state_says_eager_where_torch_runs_eager():
    """torch.compile with dynamo switched off returns the function as it is, and a deepcopy drops the compiled
    call: the state had said compiled=True in both, with no word."""
    pipe = tiny_pipeline(seed=0)
    with torch._dynamo.config.patch(disable=True):
        with pytest.warns(RuntimeWarning, match=r"torch.compile is switched off \(TORCHDYNAMO_DISABLE=1"):
            state = pipe.enable_fast_sampling()
    assert not state.compiled and not state.cuda_graphs and state.channels_last
    state = pipe.enable_fast_sampling(backend="eager")
    assert state.compiled and fast_sampling_state(pipe).compiled
    twin = copy.deepcopy(pipe)
    assert not fast_sampling_state(twin).compiled and fast_sampling_state(pipe).compiled
    assert twin.unet._compiled_call_impl is None  # what torch's deepcopy of a compiled module leaves


@pytest.mark.parametrize("graphs", [None, True])
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_after_enabling_drops_cuda_graphs(monkeypatch, offload, graphs):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    on = {"device": torch.device("cuda", 0)}
    monkeypatch.setattr(fast, "module_device", lambda module: on["device"])
    pipe = tiny_pipeline(seed=0)
    assert pipe.enable_fast_sampling(fullgraph=True, cuda_graphs=graphs).cuda_graphs

    def diffusers_offload(self, *args, **kwargs):  # diffusers' own needs accelerate and a GPU; it begins so:
        on["device"] = torch.device("cpu")
        self.to("cpu", silence_dtype_warnings=True)

    monkeypatch.setattr(DiffusionPipeline, offload, diffusers_offload)
    with pytest.warns(UserWarning, match="CPU offload moves the denoiser's weights") as warned:
        getattr(pipe, offload)()
    assert len(warned) == 1 and warned[0].filename == __file__
    state = fast_sampling_state(pipe)
    assert state.compiled and not state.cuda_graphs and state.channels_last
    assert state.compile_options == {"dynamic": False, "fullgraph": True, "mode": None}


def test_past_the_recompile_limit_new_shapes_run_eager_and_say_so():
    """torch.compile would run a shape past its limit eager without a word (state still "compiled")."""
    torch._dynamo.reset()  # this test's shapes alone count
    pipe, reference = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    state = pipe.enable_fast_sampling(backend="eager")
    said = []  # what torch logs past the limit: once per new shape, not at every step
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("torch._dynamo").addHandler(handler)
    # config.patch, not monkeypatch: undoing a monkeypatch deletes a config entry, which hides it for good
    with torch._dynamo.config.patch(recompile_limit=1):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            sample(pipe)  # 64²: compiled
        with pytest.warns(RuntimeWarning, match=r"recompile limit \(1, .*input shape \(3, 4, 9, 9\)") as w:
            out = sample(pipe, height=72, width=72)
        assert [x.filename for x in w if issubclass(x.category, RuntimeWarning)] == [__file__]
        assert_close(out, sample(reference, height=72, width=72))
        assert state.compiled and isinstance(pipe.unet._compiled_call_impl, fast.FastCall)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # said once
            sample(pipe, height=80, width=80)
    logging.getLogger("torch._dynamo").removeHandler(handler)
    assert len([m for m in said if "recompile_limit" in m]) == 2  # 72² and 80², 4 steps each
    torch._dynamo.reset()


def test_torchs_older_names_of_the_recompile_limit_are_found_and_none_needed():
    old = SimpleNamespace(fail_on_cache_limit_hit=False), SimpleNamespace(FailOnCacheLimitHit=KeyError)
    new = (
        SimpleNamespace(fail_on_recompile_limit_hit=False),
        SimpleNamespace(FailOnRecompileLimitHit=IndexError),
    )
    assert fast.limit_names(*old) == ("fail_on_cache_limit_hit", KeyError)
    assert fast.limit_names(*new) == ("fail_on_recompile_limit_hit", IndexError)
    assert fast.limit_names(SimpleNamespace(), SimpleNamespace()) == (None, ())


def test_without_the_limit_flag_the_fast_path_still_samples(monkeypatch, eager):
    monkeypatch.setattr(fast, "LIMIT_FLAG", None)  # torch < 2.5
    monkeypatch.setattr(fast, "LIMIT_HIT", ())
    pipe = tiny_pipeline(seed=0)
    pipe.enable_fast_sampling(backend="eager")
    assert_close(sample(pipe), eager)


def test_denoiser_is_the_unet_or_the_transformer():
    transformer = nn.Linear(2, 2)
    assert fast.denoiser_of(SimpleNamespace(transformer=transformer)) == ("transformer", transformer)
    assert fast.denoiser_of(SimpleNamespace(denoiser_name="prior", prior=transformer))[0] == "prior"
    with pytest.raises(ValueError, match="pipe: expected a denoiser"):
        fast.denoiser_of(SimpleNamespace(net=transformer))


# ----------------------------------------------------------------------------- options, state, offload
def unet_call(pipe, batch: int = 1, size: int = 8):
    """One denoiser call on zeros, without autograd (as in sampling)."""
    with torch.no_grad():
        x, text = torch.zeros(batch, 4, size, size), torch.zeros(batch, 77, 32)
        return pipe.unet(x, torch.tensor(999.0), encoder_hidden_states=text).sample


def test_cuda_graphs_only_on_cuda_and_never_with_an_offload_hook_anywhere(monkeypatch):
    """Sequential offload hooks the leaf modules; mps has no CUDA graphs; cuda_graphs=False stays off."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    pipe = tiny_pipeline(seed=0)
    device = {"type": "mps"}
    monkeypatch.setattr(fast, "module_device", lambda module: torch.device(device["type"]))
    assert not enable_fast_sampling(pipe).cuda_graphs
    device["type"] = "cuda"
    assert not enable_fast_sampling(pipe, cuda_graphs=False).cuda_graphs
    pipe.unet.down_blocks[0].resnets[0].conv1._hf_hook = object()
    assert not enable_fast_sampling(pipe).cuda_graphs


def test_the_compiled_call_runs_the_denoisers_hooks(monkeypatch):
    """torch.compile gets module._call_impl, not forward: forward hooks (and accelerate's) still run."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    pipe = tiny_pipeline(seed=0)
    enable_fast_sampling(pipe, channels_last=False)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    unet_call(pipe)
    assert calls == [torch.Size([1, 4, 8, 8])] and isinstance(pipe.unet._compiled_call_impl, fast.FastCall)


def test_the_users_compile_options_win_over_the_defaults(monkeypatch):
    log = {"calls": 0, "steps": 0}
    fake_compile(monkeypatch, log)
    state = enable_fast_sampling(tiny_pipeline(seed=0), mode="max-autotune", dynamic=True)
    assert (
        log["kwargs"]
        == state.compile_options
        == {"dynamic": True, "fullgraph": False, "mode": "max-autotune"}
    )


def test_without_cuda_graphs_no_step_is_marked_and_no_output_copied(monkeypatch):
    log = {"calls": 0, "steps": 0}
    fake_compile(monkeypatch, log)
    pipe = tiny_pipeline(seed=0)
    enable_fast_sampling(pipe, channels_last=False, cuda_graphs=False)
    out = unet_call(pipe)
    assert log["calls"] == 1 and log["steps"] == 0 and out.data_ptr() == log["graph"].buffer.data_ptr()


def test_a_failed_compilation_says_why_in_one_line_and_drops_cuda_graphs(monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("not supported\non this platform\n\nSet TORCHDYNAMO_VERBOSE=1 for the stack trace")

    monkeypatch.setattr(torch, "compile", unavailable)
    pipe = tiny_pipeline(seed=0)
    with pytest.warns(RuntimeWarning) as warned:
        state = enable_fast_sampling(pipe, channels_last=False, cuda_graphs=True)
    assert str(warned[0].message) == (
        "enable_fast_sampling: torch.compile failed (RuntimeError: not supported on this platform); "
        "sampling eager"
    )
    assert not state.compiled and not state.cuda_graphs and not fast.cuda_graphs_on(pipe)


def test_a_recompile_the_user_forbade_raises(monkeypatch):
    """config.error_on_recompile is the user's own check: it raises, not a fallback to eager."""
    pipe = tiny_pipeline(seed=0)
    state = enable_fast_sampling(pipe, channels_last=False, backend="eager")
    unet_call(pipe, batch=1)
    with torch._dynamo.config.patch(error_on_recompile=True), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(torch._dynamo.exc.RecompileError):
            unet_call(pipe, batch=2)
    assert state.compiled and isinstance(pipe.unet._compiled_call_impl, fast.FastCall)


@pytest.mark.skipif(fast.LIMIT_FLAG is None, reason="torch < 2.5 has no such flag")
def test_the_recompile_limit_flag_is_set_only_during_the_call():
    pipe = tiny_pipeline(seed=0)
    enable_fast_sampling(pipe, channels_last=False, backend="eager")
    with torch._dynamo.config.patch({fast.LIMIT_FLAG: False}):  # torch's default, whatever ran before
        unet_call(pipe)
        assert getattr(torch._dynamo.config, fast.LIMIT_FLAG) is False


def test_signature_tells_shapes_strides_and_dtypes_apart():
    x = torch.zeros(2, 4, 8, 8)
    key = fast.signature((x,), {"t": 1.0})
    assert key == fast.signature((torch.ones(2, 4, 8, 8),), {"t": 2.0})
    assert key != fast.signature((x.to(memory_format=torch.channels_last),), {"t": 1.0})
    assert key != fast.signature((x.half(),), {"t": 1.0})
    assert key != fast.signature((x[:1],), {"t": 1.0})


def test_enabling_again_replaces_what_was_applied():
    pipe = tiny_pipeline(seed=0)
    enable_fast_sampling(pipe, compile=False)
    state = enable_fast_sampling(pipe, compile=False, channels_last=False)
    assert not state.channels_last and state.compile_options == {}
    assert all(w.is_contiguous() for w in conv_weights(pipe.unet))


def test_with_dynamo_off_channels_last_alone_is_silent_and_cuda_graphs_fall_back():
    pipe = tiny_pipeline(seed=0)
    with torch._dynamo.config.patch(disable=True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            assert enable_fast_sampling(pipe, compile=False).channels_last
        with pytest.warns(RuntimeWarning, match="torch.compile is switched off"):
            state = enable_fast_sampling(pipe, cuda_graphs=True)
    assert not state.compiled and not state.cuda_graphs


def test_cpu_offload_without_cuda_graphs_says_nothing_and_keeps_the_fast_path(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", lambda self: self.to("cpu"))
    pipe = tiny_pipeline(seed=0)
    state = pipe.enable_fast_sampling(channels_last=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.enable_model_cpu_offload()
    assert fast_sampling_state(pipe) is state and not state.cuda_graphs


def test_cpu_offload_drops_cuda_graphs_but_not_the_asked_memory_format(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(fast, "module_device", lambda module: torch.device("cuda", 0))
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", lambda self: self.to("cpu"))
    pipe = tiny_pipeline(seed=0)
    assert pipe.enable_fast_sampling(channels_last=False, cuda_graphs=True).cuda_graphs
    with pytest.warns(UserWarning, match="CPU offload moves the denoiser's weights"):
        pipe.enable_model_cpu_offload()
    state = fast_sampling_state(pipe)
    assert state.compiled and not state.cuda_graphs and not state.channels_last
    assert all(w.is_contiguous() for w in conv_weights(pipe.unet))


@pytest.mark.parametrize("channels_last", [True, False])
def test_weights_are_contiguous_only_while_saving(channels_last):
    pipe = tiny_pipeline(seed=0)
    enable_fast_sampling(pipe, compile=False, channels_last=channels_last)
    with fast.contiguous_weights(pipe):
        assert all(w.is_contiguous() for w in conv_weights(pipe.unet))
    assert all(w.is_contiguous() for w in conv_weights(pipe.unet)) != channels_last


def test_disabling_leaves_a_compile_of_the_users_own():
    pipe = tiny_pipeline(seed=0)
    pipe.unet.compile(backend="eager")
    own = pipe.unet._compiled_call_impl
    enable_fast_sampling(pipe, compile=False)
    pipe.disable_fast_sampling()
    assert pipe.unet._compiled_call_impl is own


def test_a_deep_copy_says_it_has_no_cuda_graphs(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(fast, "module_device", lambda module: torch.device("cuda", 0))
    pipe = tiny_pipeline(seed=0)
    assert enable_fast_sampling(pipe, channels_last=False).cuda_graphs
    twin = copy.deepcopy(pipe)
    assert not fast.cuda_graphs_on(twin) and fast.cuda_graphs_on(pipe)
