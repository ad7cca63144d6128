"""The Stable Diffusion SuperDiff pipeline on tiny random components: the card's call, invariants, errors."""

import json
import math
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, PNDMScheduler
from PIL import Image
from pipelines import P1, P2, SMALL, diffusers_eps, gap, pipe_fixture, record_calls, saved_fixture
from torch import Tensor

from superdiff import SuperDiffPipeline
from superdiff.hub import WeightsUnavailableError
from superdiff.limits import LIMITS, Limits, SuperDiffWarning
from superdiff.output import to_uint8
from superdiff.pipeline_superdiff import CUSTOM_PIPELINE, PromptPredictor, euler_grid
from superdiff.sampling import NonFiniteError, guide
from superdiff.testing import sd_scheduler, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

pipe = pipe_fixture(tiny_pipeline)
saved = saved_fixture(tiny_pipeline)

# What SD 1.x shares with the other families (the seeded tiny builder, the AND invariant at every step, the
# bad inputs) is tested in test_pipeline_contract.py.


# ----------------------------------------------------------------------------- the card's call


def test_card_call_gives_uint8_images_and_traces(pipe):
    out = pipe(P1, P2, seed=1, batch_size=1, lift=0.0, guidance_scale=7.5, **SMALL)
    assert out[0].dtype == torch.uint8 and out[0].shape == (64, 64, 3)
    assert out.images.shape == (1, 64, 64, 3) and len(out) == 1
    assert out.kappa.shape == (6, 1, 2) and out.log_q.shape == (7, 1, 2)
    assert out.kappa.dtype == torch.float32 and out.log_q.dtype == torch.float64
    assert out.kappa.device.type == out.log_q.device.type == "cpu"
    assert out[0].float().std() > 1  # an image, not a constant
    Image.fromarray(out[0].cpu().numpy())  # the card's save line works
    assert out.to_pil()[0].size == (64, 64)


def test_batch_items_differ_and_seeds_reproduce(pipe):
    out = pipe(P1, P2, seed=1, batch_size=3, **SMALL).images
    assert (
        not torch.equal(out[0], out[1])
        and not torch.equal(out[1], out[2])
        and not torch.equal(out[0], out[2])
    )
    assert torch.equal(pipe(P1, P2, seed=1, batch_size=3, **SMALL).images, out)
    assert not torch.equal(pipe(P1, P2, seed=2, batch_size=3, **SMALL).images, out)


def test_generator_and_output_types(pipe):
    pt = pipe(P1, P2, generator=torch.Generator().manual_seed(1), **SMALL)
    arr = pipe(P1, P2, seed=1, output_type="np", **SMALL)
    pil = pipe(P1, P2, seed=1, output_type="pil", **SMALL)
    assert isinstance(arr[0], np.ndarray) and isinstance(pil[0], Image.Image)
    assert np.array_equal(arr[0], pt[0].numpy()) and np.array_equal(np.asarray(pil[0]), pt[0].numpy())


def test_generator_list_gives_each_image_as_if_it_ran_alone(pipe):
    seeds = [3, 1, 4]
    batched = pipe(P1, P2, generator=[torch.Generator().manual_seed(s) for s in seeds], batch_size=3, **SMALL)
    for i, s in enumerate(seeds):
        alone = pipe(P1, P2, seed=s, **SMALL)
        torch.testing.assert_close(batched.samples[i : i + 1], alone.samples, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.kappa[:, i : i + 1], alone.kappa, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(batched.samples[0], batched.samples[1])


def test_non_square_images_have_height_rows_and_width_columns(pipe):
    out = pipe(P1, P2, seed=0, num_inference_steps=2, height=64, width=128)
    assert out.latents.shape == (1, 4, 8, 16) and out.images.shape == (1, 64, 128, 3)


def test_the_vae_decodes_latents_over_sd_scaling_factor(pipe, monkeypatch):
    """SD's VAE decodes z/0.18215, as diffusers' StableDiffusionPipeline: latents / scaling_factor."""
    seen, decode = [], pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: seen.append(z.clone()) or decode(z, *a, **k))
    out = pipe(P1, P2, seed=0, **SMALL)
    assert pipe.vae.config.scaling_factor == 0.18215
    torch.testing.assert_close(seen[-1], out.latents / 0.18215)


def test_to_uint8_maps_minus_one_to_zero_and_one_to_255():
    images = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = to_uint8(images)
    assert out.shape == (1, 2, 2, 3) and out.dtype == torch.uint8
    assert out[0, :, :, 0].flatten().tolist() == [0, 128, 255, 255]  # 127.5 rounds half to even: 128


def test_to_uint8_warns_of_a_single_nan_or_infinite_pixel_naming_its_images():
    images = torch.zeros(3, 3, 2, 2)
    images[1, 0, 0, 1], images[2, 2, 1, 0] = math.nan, math.inf
    with pytest.warns(
        RuntimeWarning, match=r"^images: the VAE decoded NaN or infinite values in image 1, 2, "
    ):
        to_uint8(images)


# ----------------------------------------------------------------------------- the math through the pipeline


def test_positive_lift_favours_prompt_1(pipe):
    out = pipe(P1, P2, seed=0, lift=4.0, **SMALL)
    assert gap(out)[-1, 0] > 3.9  # log q(prompt_1) ends above log q(prompt_2)


def test_avg_without_and_drifts_off_the_equal_density_line(pipe):
    out = pipe(P1, P2, seed=0, mode="avg", **SMALL)
    assert torch.equal(out.kappa, torch.full_like(out.kappa, 0.5))
    assert gap(out)[-1].abs().max() > 1.0  # so the AND test (contract) is not trivially true


def test_or_kappa_is_softmax_of_traces_before_each_step(pipe):
    temperature, log_weights = 0.1, torch.tensor([0.5, -0.5])
    out = pipe(
        P1, P2, seed=0, batch_size=2, mode="or", temperature=temperature, log_weights=[0.5, -0.5], **SMALL
    )
    expected = torch.softmax(temperature * (out.log_q[:-1] + log_weights), dim=-1)
    torch.testing.assert_close(out.kappa, expected.float(), atol=1e-6, rtol=1e-6)
    assert ((out.kappa > 0.05) & (out.kappa < 0.95)).any()  # not saturated: the temperature matters


def test_three_prompts_and_keeps_all_densities_equal(pipe):
    out = pipe([P1, P2, "a zebra"], None, seed=0, batch_size=2, **SMALL)
    assert out.kappa.shape == (6, 2, 3) and out.log_q.shape == (7, 2, 3)
    torch.testing.assert_close(out.kappa.sum(-1), torch.ones(6, 2))
    spread = out.log_q.amax(-1) - out.log_q.amin(-1)
    assert spread.abs().max() < 2e-2


@pytest.mark.parametrize("prompts", [(P1, P2), ([P1, P2, "a zebra"], None)])
def test_one_batched_unet_call_per_step(pipe, prompts):
    calls = []
    with record_calls(pipe.unet, calls):
        pipe(*prompts, seed=0, batch_size=2, **SMALL)
    n_prompts = 3 if prompts[1] is None else 2
    batches = [call["sample"].shape[0] for call in calls]
    assert batches == [(n_prompts + 1) * 2] * SMALL["num_inference_steps"]  # N prompts + the empty one


class RowUNet(torch.nn.Module):
    """A float16 stand-in UNet: ε̂ = its input + the first entry of the row's text embedding; records calls."""

    dtype = torch.float16

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append((x, t))
        return SimpleNamespace(sample=x + encoder_hidden_states[:, :1, :1, None])


def test_predictor_scales_input_maps_sigma_to_t_and_guides_each_prompt():
    scheduler = sd_scheduler()
    scheduler.set_timesteps(10)
    unet, rows = RowUNet(), torch.arange(1.0, 4.0)[:, None, None].expand(3, 5, 7)  # 2 prompts + empty
    predictor = PromptPredictor(unet, rows, 2, 7.5, scheduler.sigmas, scheduler.timesteps)
    x, i = torch.randn(2, 4, 3, 3), 4
    sigma = scheduler.sigmas[i].item()
    pred = predictor(x, sigma)
    ((x_in, t),) = unet.calls
    assert x_in.dtype == torch.float16 and x_in.shape == (6, 4, 3, 3) and t == scheduler.timesteps[i]
    torch.testing.assert_close(x_in[:2].float(), x / math.sqrt(sigma**2 + 1), atol=2e-3, rtol=2e-3)
    assert pred.eps.dtype == torch.float32 and pred.eps.shape == (2, 2, 4, 3, 3)
    sample = (x_in + torch.arange(1.0, 4.0).repeat_interleave(2)[:, None, None, None].half()).float()
    eps_cond, eps_uncond = sample.unflatten(0, (3, 2))[:2], sample[4:]  # rows: prompt 1, prompt 2, empty
    torch.testing.assert_close(pred.eps, eps_cond, atol=0, rtol=0)
    torch.testing.assert_close(pred.field, guide(eps_cond, eps_uncond, 7.5))


def test_single_prompt_and_joint_baselines_move_with_one_prompt(pipe):
    single = pipe(P1, P2, seed=0, mode="prompt_2", **SMALL)
    alone = pipe([P2], None, seed=0, mode="prompt_1", **SMALL)
    torch.testing.assert_close(single.samples, alone.samples, atol=1e-4, rtol=1e-4)
    assert torch.equal(single.kappa[..., 1], torch.ones(6, 1)) and single.log_q.shape == (7, 1, 2)

    joint = pipe(P1, P2, seed=0, mode="joint", **SMALL)
    assert joint.prompts[-1] == f"{P1} that looks like {P2}"
    written = pipe([joint.prompts[-1]], None, seed=0, mode="prompt_1", **SMALL)
    torch.testing.assert_close(joint.samples, written.samples, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(joint.samples, single.samples)


def test_identical_prompts_give_finite_kappa_and_an_image(pipe):
    for mode in ("and", "or"):
        out = pipe("a cat", "a cat", seed=0, mode=mode, **SMALL)
        assert torch.isfinite(out.kappa).all() and torch.isfinite(out.log_q).all()
        torch.testing.assert_close(out.kappa, torch.full_like(out.kappa, 0.5), atol=1e-3, rtol=0)
        assert out[0].float().std() > 1


def test_callback_sees_kappa_of_every_step(pipe):
    seen = []

    def callback(p, step, timestep, kwargs):
        assert p is pipe and kwargs["latents"].shape == (2, 4, 8, 8)
        seen.append((step, float(timestep), kwargs["kappa"].clone(), kwargs["log_q"].clone()))
        latents.append(kwargs["latents"].clone())

    latents = []
    out = pipe(P1, P2, seed=0, batch_size=2, callback_on_step_end=callback, **SMALL)
    assert torch.equal(out.latents, latents[-1].float().cpu()) and out.samples is out.latents
    assert [s[0] for s in seen] == list(range(6))
    assert seen[0][1] > seen[-1][1]  # timesteps run from noisy to clean
    torch.testing.assert_close(torch.stack([s[2] for s in seen]).float(), out.kappa)
    torch.testing.assert_close(torch.stack([s[3] for s in seen]), out.log_q[1:])


def test_a_callback_that_edits_what_it_gets_changes_nothing(pipe):
    def vandal(p, step, timestep, kwargs):
        for value in (kwargs["latents"], kwargs["kappa"], kwargs["log_q"]):
            value.fill_(7.0)

    out = pipe(P1, P2, seed=0, callback_on_step_end=vandal, **SMALL)
    plain = pipe(P1, P2, seed=0, **SMALL)
    assert torch.equal(out.samples, plain.samples) and torch.equal(out.kappa, plain.kappa)
    assert torch.equal(out.log_q, plain.log_q)


def test_attention_slicing_still_samples_the_same():
    sliced = tiny_pipeline()
    reference = sliced(P1, P2, seed=3, **SMALL)
    sliced.enable_attention_slicing(1)
    torch.testing.assert_close(
        sliced(P1, P2, seed=3, **SMALL).samples, reference.samples, atol=1e-4, rtol=1e-4
    )
    for name in SuperDiffPipeline.model_cpu_offload_seq.split("->"):
        assert isinstance(getattr(sliced, name), torch.nn.Module)


def test_joint_baseline_traces_and_callback_cover_the_prompts_not_the_joint_one(pipe):
    """κ and log q (output and callback) are those of prompt_1 … prompt_N: the joint prompt, model N + 1,
    is cut off, and no prompt of the list moves x, so κ is all zeros."""
    seen = []
    out = pipe(
        P1, P2, seed=0, mode="joint", callback_on_step_end=lambda p, i, t, kw: seen.append(kw), **SMALL
    )
    assert out.kappa.shape == (6, 1, 2) and out.log_q.shape == (7, 1, 2)
    assert (out.kappa == 0).all()
    assert [kw["kappa"].shape for kw in seen] == [(1, 2)] * 6
    assert [kw["log_q"].shape for kw in seen] == [(1, 2)] * 6
    assert all((kw["kappa"] == 0).all() for kw in seen)


def test_callback_gets_the_steps_sigma_and_the_next_one(pipe):
    seen = []
    out = pipe(
        P1,
        P2,
        seed=0,
        callback_on_step_end=lambda p, i, t, kw: seen.append((kw["sigma"], kw["sigma_next"])),
        **SMALL,
    )
    expected = [(out.sigmas[i].item(), out.sigmas[i + 1].item()) for i in range(6)]
    assert [(float(a), float(b)) for a, b in seen] == expected


def test_start_latents_are_sigma_max_times_the_seeds_noise_and_log_q_starts_exact(pipe):
    """x_0 = σ_0·z, z drawn from a CPU generator seeded with ``seed``: log q_i(x_0) is the exact
    log N(σ_0 z; 0, σ_0²I) = −d/2·log 2π − d·log σ_0 − |z|²/2 for every prompt."""
    out = pipe(P1, P2, seed=5, batch_size=2, **SMALL)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    d, sigma_0 = z[0].numel(), out.sigmas[0].item()
    expected = -0.5 * d * math.log(2 * math.pi) - d * math.log(sigma_0) - 0.5 * (z**2).sum((1, 2, 3))
    torch.testing.assert_close(out.log_q[0], expected[:, None].expand(2, 2), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- prediction types, σ grids

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_eps_equals_what_diffusers_euler_step_implies(prediction_type):
    """Per σ, the pipeline's ε̂ (per prompt) and guided field against StableDiffusionPipeline's own route:
    scale_model_input, one UNet call, guidance on the raw output, EulerDiscreteScheduler.step."""
    pipe = tiny_pipeline(prediction_type=prediction_type)
    scheduler, w = pipe.scheduler, 7.5
    scheduler.set_timesteps(10)
    embeddings = pipe.encode_prompt([P1, P2], "cpu")
    predictor = PromptPredictor(
        pipe.unet, embeddings, 2, w, scheduler.sigmas, scheduler.timesteps, prediction_type
    )
    worst = 0.0
    for i in (0, 3, 6, 9):  # σ from 14.6 down to 0.03
        sigma, t = scheduler.sigmas[i].item(), scheduler.timesteps[i]
        x = sigma * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i))
        pred = predictor(x, sigma)
        scheduler._step_index = i  # diffusers' scaling reads σ at its own step counter
        x_in = scheduler.scale_model_input(x, t).repeat(3, 1, 1, 1)
        out = pipe.unet(x_in, t, encoder_hidden_states=embeddings.repeat_interleave(2, 0)).sample
        rows = out.unflatten(0, (3, 2))
        for k in range(2):  # each prompt unguided: the densities' ε̂_k
            expected = diffusers_eps(scheduler, i, rows[k], x)
            worst = max(worst, (pred.eps[k].double() - expected).abs().max().item())
            torch.testing.assert_close(pred.eps[k].double(), expected, atol=2e-4, rtol=1e-4)
        guided = rows[2] + w * (rows[:2] - rows[2])  # what diffusers guides: the raw UNet output
        for k in range(2):
            expected = diffusers_eps(scheduler, i, guided[k], x)
            torch.testing.assert_close(pred.field[k].double(), expected, atol=2e-4, rtol=1e-4)
    print(f"{prediction_type}: max |ε̂ − diffusers' ε| = {worst:.2e}")


class ConstUNet(torch.nn.Module):
    """A stand-in UNet that returns a fixed output in its own dtype."""

    def __init__(self, output: Tensor):
        super().__init__()
        self.output, self.dtype = output, output.dtype

    def forward(self, x, t, encoder_hidden_states):
        return SimpleNamespace(sample=self.output)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_float16_unet_output_is_converted_in_float32(prediction_type):
    scheduler = sd_scheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    i, rows = 1, torch.zeros(2, 5, 7)
    sigma = scheduler.sigmas[i].item()
    x = sigma * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    output = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).half()
    predictor = PromptPredictor(
        ConstUNet(output), rows, 1, 1.0, scheduler.sigmas, scheduler.timesteps, prediction_type
    )
    eps = predictor(x, sigma).eps[0, 0]
    assert eps.dtype == torch.float32
    expected = diffusers_eps(scheduler, i, output[0].float(), x[0])
    torch.testing.assert_close(eps.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_card_call_runs_for_every_prediction_type(prediction_type):
    pipe = tiny_pipeline(prediction_type=prediction_type)
    out = pipe(P1, P2, seed=1, batch_size=1, lift=0.0, guidance_scale=7.5, **SMALL)
    assert out[0].dtype == torch.uint8 and out[0].shape == (64, 64, 3)
    assert torch.isfinite(out.log_q).all() and torch.isfinite(out.samples).all()
    # AND holds on ε̂, to float32's precision of log q (a random x̂₀-UNet gives ε̂ ~ 1/σ at the last step)
    assert gap(out).abs().max() < 2e-2 + 1e-6 * out.log_q.abs().max()
    if prediction_type != "epsilon":  # the same weights read as ε sample elsewhere
        assert not torch.allclose(out.samples, tiny_pipeline()(P1, P2, seed=1, **SMALL).samples)


@pytest.mark.parametrize("where", ["init", "load", "assigned"])
def test_unknown_prediction_type_is_refused_naming_the_config(saved, tmp_path, where):
    message = r"^scheduler.config.prediction_type: expected one of .*'v_prediction'.*, got 'flow'"
    if where == "init":
        pipe = tiny_pipeline()
        with pytest.raises(ValueError, match=message):
            SuperDiffPipeline(**{**pipe.components, "scheduler": sd_scheduler(prediction_type="flow")})
    elif where == "load":
        folder = tmp_path / "flow"
        tiny_pipeline().save_pretrained(folder)
        sd_scheduler(prediction_type="flow").save_pretrained(folder / "scheduler")
        with pytest.raises(ValueError, match=message):
            SuperDiffPipeline.from_pretrained(folder)
    else:
        pipe = tiny_pipeline()
        pipe.scheduler = sd_scheduler(prediction_type="flow")
        with pytest.raises(ValueError, match=message):
            pipe(P1, P2, **SMALL)


@pytest.mark.parametrize("steps", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_every_timestep_spacing_samples_on_a_strictly_decreasing_grid(spacing, steps, recwarn):
    pipe = tiny_pipeline(timestep_spacing=spacing)
    out = pipe([P1], None, seed=0, mode="prompt_1", num_inference_steps=steps, height=64, width=64)
    pipe.scheduler.set_timesteps(steps)
    full = pipe.scheduler.sigmas
    assert (out.sigmas[1:] < out.sigmas[:-1]).all() and out.sigmas[-1] == full[-1]
    assert len(out.sigmas) == len(full.unique()) and set(out.sigmas.tolist()) == set(full.tolist())
    assert out.kappa.shape[0] == len(out.sigmas) - 1 and torch.isfinite(out.samples).all()
    dropped = steps + 1 - len(out.sigmas)
    assert dropped == (1 if (spacing, steps) == ("leading", 1000) else 0)  # t = 1000 clamps to σ(999)
    assert [w.filename for w in recwarn if "zero length" in str(w.message)] == [__file__] * (dropped > 0)


def test_zero_length_steps_are_dropped_keeping_the_timestep_that_moves(recwarn):
    scheduler = sd_scheduler(timestep_spacing="leading")
    sigmas, timesteps = euler_grid(scheduler, 1000)
    assert scheduler.sigmas[0] == scheduler.sigmas[1] and scheduler.timesteps[0] == 1000
    assert torch.equal(sigmas, scheduler.sigmas[1:]) and torch.equal(timesteps, scheduler.timesteps[1:])
    last = sd_scheduler(timestep_spacing="trailing", final_sigmas_type="sigma_min")
    sigmas, timesteps = euler_grid(last, 1000)  # trailing ends at t = 0, whose σ is sigma_min
    assert len(timesteps) == 999 and sigmas[-1] == last.sigmas[-1] and (sigmas.diff() < 0).all()
    stuck = sd_scheduler(final_sigmas_type="sigma_min")  # linspace at 1 step: t = 0, whose σ is sigma_min
    with pytest.raises(ValueError, match="^num_inference_steps: .* no step of non-zero length"):
        euler_grid(stuck, 1)
    assert [w.category for w in recwarn if "σ grid starts at 0.0292" in str(w.message)] == [SuperDiffWarning]


@pytest.mark.parametrize(
    ("spacing", "steps", "start"),
    [("leading", 600, 2.28), ("leading", 4, 4.12), ("linspace", 1, 0.0292), ("leading", 50, None)],
)
def test_a_grid_that_starts_far_below_sigma_max_is_warned_of(spacing, steps, start, recwarn):
    """SDXL's "leading" spacing at 600 steps starts at t = 600 (σ 2.28 of 14.6): noise, hardly denoised."""
    pipe = tiny_pipeline(timestep_spacing=spacing)
    out = pipe([P1], None, seed=0, mode="prompt_1", num_inference_steps=steps, height=64, width=64)
    low = [w for w in recwarn if "σ grid starts at" in str(w.message)]
    assert out.sigmas[0].item() == pytest.approx(start or 13.12, abs=0.01)
    assert len(low) == (start is not None) and all(w.filename == __file__ for w in low)
    if low:
        assert f"num_inference_steps={steps}: with timestep_spacing={spacing!r}" in str(low[0].message)
        assert "timestep_spacing='trailing'" in str(low[0].message)
        pipe.scheduler = EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
        assert pipe.sigma_grid(steps)[0][0].item() == pytest.approx(14.61, abs=0.01)  # the advice works


def test_leading_spacing_past_the_training_steps_is_refused_before_encoding(monkeypatch):
    """Past T steps, "leading" puts every step at t = 1: one step from σ 0.04, after a warning only."""
    pipe = tiny_pipeline(timestep_spacing="leading")
    monkeypatch.setattr(pipe, "prompt_context", lambda *a: pytest.fail("encoded the prompts"))
    with pytest.raises(ValueError, match=r"^num_inference_steps: expected 1 to 1000 with timestep_spacing="):
        pipe(P1, P2, seed=0, num_inference_steps=1001, height=64, width=64)


# ----------------------------------------------------------------------------- loading


def test_custom_pipeline_route_runs_the_card_call(saved, pipe):
    loaded = DiffusionPipeline.from_pretrained(saved, custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)
    assert type(loaded).__name__ == "SuperDiffPipeline"
    loaded.set_progress_bar_config(disable=True)
    out = loaded(
        P1, P2, seed=1, num_inference_steps=6, batch_size=1, lift=0.0, guidance_scale=7.5, height=64, width=64
    )
    assert out[0].shape == (64, 64, 3) and out[0].dtype == torch.uint8
    assert torch.equal(out.images, pipe(P1, P2, seed=1, **SMALL).images)  # same weights after the round trip


def test_pndm_checkpoint_samples_with_euler(saved, tmp_path):
    folder = tmp_path / "pndm"
    tiny_pipeline().save_pretrained(folder)
    PNDMScheduler.from_config(EulerDiscreteScheduler.load_config(saved / "scheduler")).save_pretrained(
        folder / "scheduler"
    )
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps({**index, "scheduler": ["diffusers", "PNDMScheduler"]})
    )
    loaded = SuperDiffPipeline.from_pretrained(folder)
    assert isinstance(loaded.scheduler, EulerDiscreteScheduler)
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_offline_without_weights_says_how_to_get_them(offline):
    with pytest.raises(WeightsUnavailableError) as info:
        SuperDiffPipeline.from_pretrained("CompVis/stable-diffusion-v1-4", torch_dtype=torch.float16)
    message = str(info.value)
    assert isinstance(info.value, OSError) and len(message.splitlines()) == 1
    assert (
        "hf auth login" in message
        and "local directory" in message
        and "CompVis/stable-diffusion-v1-4" in message
    )
    assert info.value.__suppress_context__  # raised `from None`: no chained 40-line traceback


def test_missing_local_folder_is_named(offline, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not a directory"):
        SuperDiffPipeline.from_pretrained(str(tmp_path / "no" / "such" / "sd"))


# ----------------------------------------------------------------------------- bad inputs


def test_limits_can_be_raised_per_pipeline(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "limits", Limits(size=LIMITS.size * 2))
    assert pipe.check_inputs(P1, P2, height=LIMITS.size * 2, width=64) == [P1, P2]
    monkeypatch.setattr(pipe, "limits", Limits(steps=5))
    with pytest.raises(ValueError, match="^num_inference_steps: .* 1 to 5"):
        pipe(P1, P2, **SMALL)
    for wrong in ({"steps": 5}, None):  # an AttributeError from deep inside, before
        monkeypatch.setattr(pipe, "limits", wrong)
        with pytest.raises(
            ValueError, match=r"^pipe.limits: expected a Limits, got .*; `del pipe.limits` rest"
        ):
            pipe(P1, P2, **SMALL)
        monkeypatch.delattr(pipe, "limits")  # the advice, `del pipe.limits`: back to the class's defaults
        assert pipe.limits is LIMITS and pipe.limits.replace(steps=5).steps == 5


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("size", dict(height=256, width=64)),
        ("steps", dict(num_inference_steps=9)),
        ("batch_size", dict(batch_size=9)),
        ("pixels", dict(batch_size=3, height=128, width=128)),
        ("prompts", dict(prompt_1=["a", "b", "c"])),
    ],
)
def test_each_limit_message_says_how_to_raise_it_and_the_advice_keeps_the_others(
    pipe, monkeypatch, field, call
):
    """The messages said `pipe.limits = Limits(size=...)`: that reset every other raised limit."""
    low = Limits(size=128, steps=8, batch_size=8, pixels=40_000, prompts=2)
    monkeypatch.setattr(pipe, "limits", low)
    call = {"prompt_1": P1, "prompt_2": P2, "height": 64, "width": 64, **call}
    with pytest.raises(ValueError) as info:
        pipe.check_inputs(**call)
    advice = str(info.value).split("raise the limit: ")[1]
    assert advice == f"pipe.limits = pipe.limits.replace({field}=...))"
    exec(advice[:-1].replace("...", str(2 * getattr(low, field))), {"pipe": pipe})
    assert pipe.check_inputs(**call) and vars(pipe.limits) == {**vars(low), field: 2 * getattr(low, field)}
    monkeypatch.setattr(pipe, "limits", low)
    for below in ({"num_inference_steps": 0}, {"batch_size": 0}, {"height": 32}):
        with pytest.raises(ValueError) as info:  # below the range: nothing to raise
            pipe.check_inputs(P1, P2, **{"height": 64, "width": 64, **below})
        assert "raise the limit" not in str(info.value) and str(info.value).startswith(next(iter(below)))


def test_pixels_per_call_are_bounded_before_any_work(pipe, monkeypatch):
    """Each of batch_size and size within its limit, 1024 images of 2048² would be 4.3 billion pixels: the
    CLI's such call was stopped by the kernel's out-of-memory killer, with no message."""
    monkeypatch.setattr(pipe.unet, "forward", lambda *args, **kwargs: pytest.fail("sampled"))
    with pytest.raises(ValueError, match=r"^batch_size: 1024 images of 2048×2048 are 4294967296 pixels, exp"):
        pipe(P1, P2, batch_size=1024, height=2048, width=2048, num_inference_steps=1)
    monkeypatch.setattr(pipe, "limits", Limits(pixels=2 * 64 * 64))
    with pytest.raises(
        ValueError, match=r"^batch_size: 3 images of 64×64 are 12288 pixels, expected at most 8192"
    ):
        pipe(P1, P2, batch_size=3, height=64, width=64, num_inference_steps=1)
    assert pipe.check_inputs(P1, P2, batch_size=2, height=64, width=64) == [P1, P2]


def test_non_finite_sampling_raises_instead_of_black_images(pipe, monkeypatch):
    forward = pipe.unet.forward

    def overflowing(*args, **kwargs):
        out = forward(*args, **kwargs)
        return SimpleNamespace(sample=out.sample * math.inf)

    monkeypatch.setattr(pipe.unet, "forward", overflowing)
    with pytest.raises(NonFiniteError, match="^kappa: .*NaN or infinite values from step 0"):
        pipe(P1, P2, seed=0, **SMALL)


def test_prompts_past_clips_window_warn_and_name_what_is_dropped(pipe, recwarn):
    short = "a flamingo"
    long = "a flamingo " + "x" * 80 + " tail"  # the tiny tokenizer has one token per character
    pipe(short, P2, seed=0, num_inference_steps=1, height=64, width=64)
    assert not [w for w in recwarn if "CLIP" in str(w.message)]
    with pytest.warns(UserWarning, match="cut to CLIP's 77 tokens; dropped: .*tail") as warned:
        pipe(long, P2, seed=0, num_inference_steps=1, height=64, width=64)
    assert [w.filename for w in warned if "CLIP" in str(w.message)] == [__file__]  # the user's line
    with pytest.warns(UserWarning, match="that looks like a candy cane"):  # the joint prompt's tail
        pipe("y" * 70, P2, seed=0, num_inference_steps=1, height=64, width=64, mode="joint")


@pytest.mark.parametrize("fields", [{"steps": -1}, {"size": 0}, {"batch_size": 2.5}, {"pixels": True}])
def test_limits_refuse_what_is_not_a_positive_integer(fields):
    """Limits(steps=-1) made pipelines refuse every call with "from 1 to -1"."""
    (name,) = fields
    with pytest.raises(ValueError, match=rf"^Limits.{name}: expected a positive integer, got "):
        Limits(**fields)
    with pytest.raises(ValueError, match=rf"^Limits.{name}: expected a positive integer, got "):
        LIMITS.replace(**fields)


def test_steps_are_raised_as_far_as_the_cores_grids_go():
    """Limits(steps=5_000_000) was taken, and the call then failed naming the core's internal `n`."""
    assert Limits(steps=1_000_000).steps == 1_000_000
    with pytest.raises(
        ValueError, match=r"^Limits.steps: expected an integer from 1 to 1000000, got 1000001"
    ):
        LIMITS.replace(steps=1_000_001)


def test_replacing_a_limit_that_does_not_exist_names_those_that_do():
    with pytest.raises(
        ValueError, match="^Limits.replace: unknown limit 'sizes'; the limits: steps, batch_size,"
    ):
        LIMITS.replace(size=4096, sizes=4096)


def test_weak_guidance_names_negative_zero_as_0():
    """A client's −0.0 (the playground's slider at 0 from below) had been shown as "guidance_scale=-0"."""
    from superdiff.pipeline_common import warn_weak_guidance

    with pytest.warns(UserWarning, match=r"^guidance_scale=0: each prompt's field"):
        warn_weak_guidance(-0.0)
