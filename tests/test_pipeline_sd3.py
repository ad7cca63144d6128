"""The SD3 (flow-matching) SuperDiff pipeline on tiny random components: the card's call, AND, parity with
diffusers' FlowMatchEulerDiscreteScheduler, the σ grid, save/load and errors."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from PIL import Image

from superdiff import SuperDiffSD3Pipeline
from superdiff.flow import sigma_of_t
from superdiff.pipeline_sd3 import FlowPromptPredictor, calculate_shift, flow_grid
from superdiff.testing import tiny_sd3_pipeline

P1, P2 = "a flamingo", "a candy cane"
SMALL = dict(num_inference_steps=6, height=64, width=64)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


def gap(out):
    """Estimated log q_1 − log q_2 along the trajectories: (n + 1, B)."""
    return out.log_q[..., 0] - out.log_q[..., 1]


def record_calls(transformer, calls: list):
    """A forward hook that records (batch, timestep) of every transformer call."""
    hook = lambda module, args, kwargs, out: calls.append(  # noqa: E731
        (kwargs["hidden_states"].shape[0], kwargs["timestep"].clone())
    )
    return transformer.register_forward_hook(hook, with_kwargs=True)


# ----------------------------------------------------------------------------- the card's call


@pytest.mark.parametrize("t5", [False, True])
def test_card_call_gives_uint8_images_and_finite_traces(t5):
    pipe = tiny_sd3_pipeline(t5=t5)
    out = pipe(P1, P2, seed=1, num_inference_steps=6, batch_size=1)  # default size: 64² for the tiny model
    assert out[0].dtype == torch.uint8 and out[0].shape == (64, 64, 3) and out[0].float().std() > 1
    assert out.kappa.shape == (6, 1, 2) and out.log_q.shape == (7, 1, 2)
    assert torch.isfinite(out.kappa).all() and torch.isfinite(out.log_q).all()  # σ_max finite: no NaN
    assert torch.isfinite(out.sigmas).all() and out.sigmas[-1] == 0
    Image.fromarray(out[0].numpy())
    assert torch.equal(pipe(P1, P2, seed=1, num_inference_steps=6).images, out.images)


def test_tiny_sd3_pipeline_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = tiny_sd3_pipeline(0), tiny_sd3_pipeline(0), tiny_sd3_pipeline(1)
    assert torch.equal(torch.get_rng_state(), state)
    w = [next(p.transformer.parameters()) for p in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


@pytest.mark.parametrize("lift", [0.0, 2.0, -2.0])
def test_and_gap_follows_lift_schedule_at_every_step(pipe, lift):
    """From σ = 2 on every step adds lift/n exactly. Above (σ = 32, 12, 4.5) the random prompts' ε̂ agree to
    ~1e-3 and reaching lift/n there would take κ ≈ ±100: the core's ridge caps κ, so those steps add less
    (docs/model-families.md), and how much less depends on the random weights (diffusers' version)."""
    out = pipe(P1, P2, seed=0, batch_size=2, lift=lift, **SMALL)
    n = SMALL["num_inference_steps"]
    increments = gap(out).diff(dim=0)
    assert out.sigmas[3] == pytest.approx(2.02, abs=0.01)
    torch.testing.assert_close(increments[3:], torch.full_like(increments[3:], lift / n), atol=5e-3, rtol=0)
    if lift == 0:
        assert gap(out).abs().max() < 0.05
    else:  # the capped steps still move the gap the right way, by at most lift/n
        assert (increments[:3] / (lift / n)).min() > 0.25 and (increments[:3] / (lift / n)).max() < 1.05
    avg = pipe(P1, P2, seed=0, batch_size=2, mode="avg", **SMALL)
    assert gap(avg)[-1].abs().max() > 0.1  # without AND the gap drifts: the test above is not trivial


@pytest.mark.parametrize("prompts", [(P1, P2), ([P1, P2, "a zebra"], None)])
def test_one_batched_transformer_call_per_step(pipe, prompts):
    calls = []
    hook = record_calls(pipe.transformer, calls)
    try:
        out = pipe(*prompts, seed=0, batch_size=2, **SMALL)
    finally:
        hook.remove()
    rows = len(out.prompts) + 1  # the prompts and the empty one
    assert [b for b, _ in calls] == [rows * 2] * SMALL["num_inference_steps"]
    t = torch.stack([ts[0] for _, ts in calls])
    sigma_max = out.sigmas[0].item()
    assert t[0].item() == pytest.approx(1000 * sigma_max / (1 + sigma_max))  # σ_max's own t < 1
    torch.testing.assert_close(t[1:], pipe.scheduler.timesteps[1:], atol=1e-3, rtol=0)


def test_modes_and_callback(pipe):
    seen = []
    out = pipe(P1, P2, seed=0, mode="or", callback_on_step_end=lambda p, i, t, kw: seen.append(kw), **SMALL)
    assert len(seen) == 6 and seen[0]["latents"].shape == (1, 16, 8, 8)
    torch.testing.assert_close(out.kappa.sum(-1), torch.ones(6, 1))
    single = pipe(P1, P2, seed=0, mode="prompt_2", **SMALL)
    alone = pipe([P2], None, seed=0, mode="prompt_1", **SMALL)
    torch.testing.assert_close(single.samples, alone.samples, atol=1e-4, rtol=1e-4)
    joint = pipe(P1, P2, seed=0, mode="joint", **SMALL)
    assert joint.prompts[-1] == f"{P1} that looks like {P2}" and joint[0].shape == (64, 64, 3)


# ----------------------------------------------------------------------------- parity with diffusers


def test_ve_euler_step_equals_flow_match_euler_step(pipe):
    """Per prompt and guided: y' = y + (σ' − σ)·ε̂ mapped to x_t' = y'/(1 + σ') against
    FlowMatchEulerDiscreteScheduler.step(v, t, x_t) on the same transformer output."""
    scheduler, w, n = pipe.scheduler, 5.0, 10
    sigmas, timesteps = pipe.sigma_grid(n)
    context = pipe.prompt_context([P1, P2], "cpu", 64, 64)
    predictor = pipe.make_predictor(context, 2, w, sigmas, timesteps)
    embeds, _, pooled, _ = pipe.encode_prompt([P1, P2, ""], None, None, do_classifier_free_guidance=False)
    worst = 0.0
    for i in (1, 3, 6, 9):  # t = 1 itself (σ = ∞) has no VE point; 9 steps to t = 0
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        x_t = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(i))
        pred = predictor(x_t * (1 + sigma), sigma)  # y = x_t/(1 − t)
        v = pipe.transformer(
            hidden_states=x_t.repeat(3, 1, 1, 1),
            timestep=scheduler.timesteps[i].expand(6),
            encoder_hidden_states=embeds.repeat_interleave(2, 0),
            pooled_projections=pooled.repeat_interleave(2, 0),
            return_dict=False,
        )[0].unflatten(0, (3, 2))
        guided = v[2] + w * (v[:2] - v[2])
        for eps, velocity in ((pred.eps, v[:2]), (pred.field, guided)):
            for k in range(2):
                ours = (x_t * (1 + sigma) + (sigma_next - sigma) * eps[k]) / (1 + sigma_next)
                scheduler._step_index = i
                theirs = scheduler.step(velocity[k], scheduler.timesteps[i], x_t).prev_sample
                worst = max(worst, (ours - theirs).abs().max().item())
                torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(pred.eps[0], pred.eps[1])  # the prompts differ
    print(f"max |Δx_t| vs FlowMatchEulerDiscreteScheduler.step = {worst:.2e}")


def test_float16_pipeline_samples_like_float32():
    pipe = tiny_sd3_pipeline()
    reference = pipe(P1, P2, seed=1, **SMALL)
    pipe.to(torch.float16)
    out = pipe(P1, P2, seed=1, **SMALL)
    assert out.samples.dtype == torch.float32 and torch.isfinite(out.log_q).all()
    torch.testing.assert_close(out.samples, reference.samples, atol=5e-2, rtol=0)
    torch.testing.assert_close(gap(out), gap(reference), atol=2e-2, rtol=0)


class ConstTransformer(torch.nn.Module):
    """A stand-in transformer that returns a fixed float16 v."""

    dtype = torch.float16

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, return_dict):
        return (self.v,)


def test_float16_velocity_becomes_eps_in_float32():
    v = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0)).half()
    sigmas = torch.tensor([50.0, 3.0, 0.0], dtype=torch.float64)
    rows, pooled = torch.zeros(2, 5, 7), torch.zeros(2, 3)
    predictor = FlowPromptPredictor(
        ConstTransformer(v),
        rows,
        1,
        1.0,
        sigmas,
        torch.tensor([980.0, 750.0]),
        context={"pooled_projections": pooled},
    )
    y = 3.0 * torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    eps = predictor(y, 3.0).eps[0, 0]
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, (y[0] + v[0].float()) / 4.0)  # ε̂ = x_t + (1 − t)·v = (y + v)/(1 + σ)


# ----------------------------------------------------------------------------- σ grids


@pytest.mark.parametrize("n", [1, 2, 7, 28, 1000])
def test_sigma_grid_is_the_schedulers_t_grid_in_ve(pipe, n):
    sigmas, timesteps = pipe.sigma_grid(n)
    assert sigmas.dtype == torch.float64 and len(sigmas) == n + 1 and len(timesteps) == n
    assert torch.isfinite(sigmas).all() and (sigmas[1:] < sigmas[:-1]).all() and sigmas[-1] == 0
    ts = pipe.scheduler.sigmas.double()
    torch.testing.assert_close(sigmas[1:], sigma_of_t(ts[1:]), atol=0, rtol=1e-12)
    assert sigmas[0] > sigmas[1]


@pytest.mark.parametrize("seq_len", [32, 256, 1024, 4096])
def test_calculate_shift_is_diffusers(seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_shift  # in every version

    args = (seq_len, 256, 4096, 0.5, 1.15)
    assert calculate_shift(*args) == pytest.approx(diffusers_shift(*args), rel=1e-12)


def test_dynamic_shift_uses_the_image_size():
    pipe = tiny_sd3_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    )
    mu = calculate_shift(8 * 4, 256, 4096, 0.5, 1.15)  # (64/8/2)·(128/8/2) patches
    expected, _ = flow_grid(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), 7, mu)
    torch.testing.assert_close(pipe.sigma_grid(7, 64, 128)[0], expected)
    assert not torch.allclose(pipe.sigma_grid(7, 512, 512)[0], expected)


def test_other_schedulers_become_flow_match_euler():
    parts = tiny_sd3_pipeline().components
    parts["scheduler"] = FlowMatchHeunDiscreteScheduler(shift=3.0)
    pipe = SuperDiffSD3Pipeline(**parts)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0


@pytest.mark.parametrize("t5", [False, True])
def test_save_and_load_round_trip(tmp_path, t5):
    pipe = tiny_sd3_pipeline(t5=t5)
    pipe.save_pretrained(tmp_path)
    loaded = SuperDiffSD3Pipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.text_encoder_3 is None) is not t5
    assert (
        isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler) and loaded.scheduler.config.shift == 3
    )
    torch.testing.assert_close(loaded(P1, P2, seed=2, **SMALL).samples, pipe(P1, P2, seed=2, **SMALL).samples)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(prompt_2=""), "prompt_2"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(height=60), "height"),
        (dict(mode="xor"), "mode"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_input_raises_before_any_transformer_call(pipe, kwargs, name):
    calls = []
    hook = record_calls(pipe.transformer, calls)
    try:
        with pytest.raises(ValueError, match=f"^{name}"):
            pipe(**{"prompt_1": P1, "prompt_2": P2, **SMALL, **kwargs})
    finally:
        hook.remove()
    assert calls == []


def test_scheduler_assigned_after_loading_is_refused():
    pipe = tiny_sd3_pipeline()
    pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="^scheduler"):
        pipe(P1, P2, **SMALL)
