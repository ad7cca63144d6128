"""Helpers of the pipeline tests (test_pipeline.py for Stable Diffusion 1.x, test_pipeline_xl.py,
test_pipeline_sd3.py, test_pipeline_flux.py, test_pipeline_contract.py): the prompts and the small call, the
module's tiny pipeline as a fixture, the AND gap, recording the UNet's or transformer's calls, and the ε of
diffusers' own Euler step."""

import inspect

import pytest
import torch
from torch import Tensor

P1, P2 = "a flamingo", "a candy cane"
SMALL = dict(num_inference_steps=6, height=64, width=64)
# SDXL's "leading" spacing starts a few-step grid far below σ_max; test_pipeline.py tests that warning
LEADING_LOW_START = pytest.mark.filterwarnings(
    r"ignore:num_inference_steps=\d+. with timestep_spacing='leading'"
)


def pipe_fixture(build):
    """The fixture ``pipe``: ``build()``, one for all the tests of the module that assigns it."""

    @pytest.fixture(scope="module", name="pipe")
    def fixture():
        return build()

    return fixture


def saved_fixture(build):
    """The fixture ``saved``: ``build()`` saved the way Hub checkpoints are laid out, once per module."""

    @pytest.fixture(scope="module", name="saved")
    def fixture(tmp_path_factory):
        folder = tmp_path_factory.mktemp(build.__name__)
        build().save_pretrained(folder)
        return folder

    return fixture


def gap(out):
    """Estimated log q_1 − log q_2 along the trajectories: (n + 1, B)."""
    return out.log_q[..., 0] - out.log_q[..., 1]


def _copy(value):
    """Tensors cloned (in dicts too, e.g. SDXL's added_cond_kwargs), anything else as it is."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def record_calls(module: torch.nn.Module, calls: list):
    """A forward pre-hook that appends the inputs of every call of ``module`` (a UNet or a transformer) to
    ``calls``: a dict by parameter name (positional inputs too, e.g. a UNet's ``sample``), tensors cloned.
    It fires before ``forward`` runs, so a call that fails is recorded too. Returns the hook's handle, which
    removes the hook at the end of ``with record_calls(module, calls):``."""

    def hook(module, args, kwargs):
        inputs = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        calls.append({name: _copy(value) for name, value in inputs.items()})

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def diffusers_eps(scheduler, i: int, model_output: Tensor, x: Tensor) -> Tensor:
    """The ε that diffusers' own Euler step takes at grid point i: (prev_sample − x)/(σ_{i+1} − σ_i)."""
    scheduler._step_index = i
    prev = scheduler.step(model_output, scheduler.timesteps[i], x).prev_sample
    return (prev.double() - x.double()) / (scheduler.sigmas[i + 1] - scheduler.sigmas[i]).double()
