"""The Flux (flow-matching, guidance-embedded, packed-latent) SuperDiff pipeline on tiny random components:
the card's call, AND, one batched call without an empty prompt, parity with diffusers'
FlowMatchEulerDiscreteScheduler on FluxPipeline's own inputs, the t grid, save/load and errors."""

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from superdiff import SuperDiffFluxPipeline
from superdiff.flow import sigma_of_t
from superdiff.generate import pipeline_class
from superdiff.pipeline_sd3 import calculate_shift
from superdiff.testing import tiny_flux_pipeline

P1, P2 = "a flamingo", "a candy cane"
SMALL = dict(num_inference_steps=6, height=64, width=64)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def gap(out):
    """Estimated log q_1 − log q_2 along the trajectories: (n + 1, B)."""
    return out.log_q[..., 0] - out.log_q[..., 1]


def record_calls(transformer, calls: list):
    """A forward hook that records the keyword inputs of every transformer call."""
    hook = lambda module, args, kwargs, out: calls.append(  # noqa: E731
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    )
    return transformer.register_forward_hook(hook, with_kwargs=True)


# ----------------------------------------------------------------------------- the card's call


@pytest.mark.parametrize("guidance_embeds", [True, False])  # FLUX.1-dev, schnell
def test_card_call_gives_uint8_images_and_finite_traces(guidance_embeds):
    pipe = tiny_flux_pipeline(guidance_embeds=guidance_embeds)
    out = pipe(P1, P2, seed=1, num_inference_steps=6, batch_size=1)  # default size: 64² for the tiny model
    assert out[0].dtype == torch.uint8 and out[0].shape == (64, 64, 3) and out[0].float().std() > 1
    assert out.kappa.shape == (6, 1, 2) and out.log_q.shape == (7, 1, 2)
    assert torch.isfinite(out.kappa).all() and torch.isfinite(out.log_q).all()
    assert torch.isfinite(out.sigmas).all() and out.sigmas[-1] == 0
    assert out.samples.shape == (1, 16, 8, 8)
    assert torch.equal(pipe(P1, P2, seed=1, num_inference_steps=6).images, out.images)


def test_tiny_flux_pipeline_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = tiny_flux_pipeline(0), tiny_flux_pipeline(0), tiny_flux_pipeline(1)
    assert torch.equal(torch.get_rng_state(), state)
    w = [next(p.transformer.parameters()) for p in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


@pytest.mark.parametrize("lift", [0.0, 2.0, -2.0])
def test_and_gap_follows_lift_schedule_at_every_step(pipe, lift):
    """From σ ≈ 1.6 on every step adds lift/n exactly. Above (σ = 20, 7.9, 3.2) the random prompts' ε̂ agree
    closely and reaching lift/n there would take a large κ: the core's ridge caps κ, so those steps add less
    (docs/model-families.md), by an amount that depends on the random weights (diffusers' version)."""
    out = pipe(P1, P2, seed=0, batch_size=2, lift=lift, **SMALL)
    n = SMALL["num_inference_steps"]
    increments = gap(out).diff(dim=0)
    assert out.sigmas[3] == pytest.approx(1.58, abs=0.01)
    torch.testing.assert_close(increments[3:], torch.full_like(increments[3:], lift / n), atol=5e-3, rtol=0)
    if lift == 0:
        assert gap(out).abs().max() < 0.05
    else:  # the capped steps still move the gap the right way, by at most lift/n
        assert (increments[:3] / (lift / n)).min() > 0.25 and (increments[:3] / (lift / n)).max() < 1.05
    avg = pipe(P1, P2, seed=0, batch_size=2, mode="avg", **SMALL)
    assert gap(avg)[-1].abs().max() > 0.1  # without AND the gap drifts: the test above is not trivial


@pytest.mark.parametrize("prompts", [(P1, P2), ([P1, P2, "a zebra"], None)])
def test_one_batched_transformer_call_per_step_without_an_empty_prompt(pipe, prompts):
    calls = []
    hook = record_calls(pipe.transformer, calls)
    try:
        out = pipe(*prompts, seed=0, batch_size=2, guidance_scale=4.5, **SMALL)
    finally:
        hook.remove()
    rows = len(out.prompts) * 2  # the prompts only, no empty one; 2 images each
    assert len(calls) == SMALL["num_inference_steps"]
    for call in calls:
        assert call["hidden_states"].shape == (rows, 16, 64)  # (64/16)² tokens of 2×2×16 channels
        assert call["encoder_hidden_states"].shape[0] == rows and call["pooled_projections"].shape[0] == rows
        torch.testing.assert_close(call["guidance"], torch.full((rows,), 4.5))
        assert call["img_ids"].shape[-2:] == (16, 3)
    t = torch.stack([c["timestep"][0] for c in calls]).double()
    sigma_max = out.sigmas[0].item()
    assert t[0].item() == pytest.approx(sigma_max / (1 + sigma_max))  # timestep/1000; σ_max's own t < 1
    torch.testing.assert_close(t[1:], pipe.scheduler.timesteps[1:].double() / 1000, atol=1e-6, rtol=0)


def test_guidance_scale_defaults_to_flux_and_schnell_gets_none():
    for guidance_embeds, expected in ((True, 3.5), (False, None)):
        pipe, calls = tiny_flux_pipeline(guidance_embeds=guidance_embeds), []
        hook = record_calls(pipe.transformer, calls)
        try:
            pipe(P1, P2, seed=0, **SMALL)
        finally:
            hook.remove()
        guidance = calls[0]["guidance"]
        assert guidance is None if expected is None else torch.equal(guidance, torch.full((2,), expected))
    calls = []
    hook = record_calls(pipe.transformer, calls)
    try:  # the shared call's positional order: prompt_1, prompt_2, seed, steps, batch_size, lift, guidance
        pipe(P1, P2, 0, 2, 1, 0.0, 2.0, 64, 64)
    finally:
        hook.remove()
    assert len(calls) == 2 and calls[0]["guidance"] is None  # schnell-like: no embedding, still runs
    pipe = tiny_flux_pipeline()
    hook = record_calls(pipe.transformer, calls)
    try:
        pipe(P1, P2, 0, 2, 1, 0.0, 2.0, 64, 64)
    finally:
        hook.remove()
    assert torch.equal(calls[-1]["guidance"], torch.full((2,), 2.0))  # 2 prompt rows


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
    gen = pipe(P1, P2, generator=torch.Generator().manual_seed(0), **SMALL)
    torch.testing.assert_close(gen.samples, pipe(P1, P2, seed=0, **SMALL).samples)


# ----------------------------------------------------------------------------- parity with diffusers


def test_ve_euler_step_equals_flow_match_euler_step(pipe):
    """Per prompt: y' = y + (σ' − σ)·ε̂ mapped to x_t' = y'/(1 + σ') against FluxPipeline's own step:
    FlowMatchEulerDiscreteScheduler.step(v, t, x_t) on packed latents from FluxPipeline.prepare_latents,
    v from one unbatched transformer call per prompt with FluxPipeline's inputs, unpacked at the end."""
    scheduler, w, n = pipe.scheduler, 3.5, 10
    sigmas, timesteps = pipe.sigma_grid(n, 64, 64)
    predictor = pipe.make_predictor(pipe.prompt_context([P1, P2], "cpu", 64, 64), 2, w, sigmas, timesteps)
    worst = 0.0
    for i in (1, 3, 6, 9):  # t = 1 itself (σ = ∞) has no VE point; 9 steps to t = 0
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        packed, img_ids = pipe.prepare_latents(
            2, 16, 64, 64, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(i)
        )
        x_t = pipe._unpack_latents(packed, 64, 64, pipe.vae_scale_factor)
        pred = predictor(x_t * (1 + sigma), sigma)  # y = x_t/(1 − t)
        assert torch.equal(pred.field, pred.eps)  # no classifier-free guidance
        for k, prompt in enumerate((P1, P2)):
            embeds, pooled, txt_ids = pipe.encode_prompt(
                [prompt] * 2, None, max_sequence_length=pipe.max_sequence_length
            )
            v = pipe.transformer(
                hidden_states=packed,
                timestep=scheduler.timesteps[i].expand(2) / 1000,
                guidance=torch.full((2,), w),
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
            scheduler._step_index = i
            theirs = scheduler.step(v, scheduler.timesteps[i], packed).prev_sample
            theirs = pipe._unpack_latents(theirs, 64, 64, pipe.vae_scale_factor)
            ours = (x_t * (1 + sigma) + (sigma_next - sigma) * pred.eps[k]) / (1 + sigma_next)
            worst = max(worst, (ours - theirs).abs().max().item())
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(pred.eps[0], pred.eps[1])  # the prompts differ
    print(f"max |Δx_t| vs FlowMatchEulerDiscreteScheduler.step = {worst:.2e}")


def test_float16_pipeline_samples_like_float32():
    pipe = tiny_flux_pipeline()
    reference = pipe(P1, P2, seed=1, **SMALL)
    pipe.to(torch.float16)
    out = pipe(P1, P2, seed=1, **SMALL)
    assert out.samples.dtype == torch.float32 and torch.isfinite(out.log_q).all()
    torch.testing.assert_close(out.samples, reference.samples, atol=5e-2, rtol=0)
    torch.testing.assert_close(gap(out), gap(reference), atol=2e-2, rtol=0)


# ----------------------------------------------------------------------------- t grids


@pytest.mark.parametrize("n", [1, 2, 7, 28])
@pytest.mark.parametrize("size", [(64, 64), (1024, 768)])
def test_sigma_grid_is_flux_pipelines_t_grid_in_ve(pipe, n, size):
    sigmas, timesteps = pipe.sigma_grid(n, *size)
    assert sigmas.dtype == torch.float64 and len(sigmas) == n + 1 and len(timesteps) == n
    assert torch.isfinite(sigmas).all() and (sigmas[1:] < sigmas[:-1]).all() and sigmas[-1] == 0
    reference = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    mu = calculate_shift((size[0] // 16) * (size[1] // 16), 256, 4096, 0.5, 1.15)  # FluxPipeline's μ
    reference.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)  # as FluxPipeline.__call__
    torch.testing.assert_close(sigmas[1:], sigma_of_t(reference.sigmas.double()[1:]), atol=0, rtol=1e-12)
    torch.testing.assert_close(timesteps, reference.timesteps)


def test_other_schedulers_become_flow_match_euler():
    parts = tiny_flux_pipeline().components
    parts["scheduler"] = EulerDiscreteScheduler()
    pipe = SuperDiffFluxPipeline(**parts)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)


def test_save_and_load_round_trip(tmp_path):
    pipe = tiny_flux_pipeline()
    pipe.save_pretrained(tmp_path)
    loaded = SuperDiffFluxPipeline.from_pretrained(tmp_path)
    assert pipeline_class(str(tmp_path)) is SuperDiffFluxPipeline  # superdiff generate --model <folder>
    loaded.set_progress_bar_config(disable=True)
    loaded.max_sequence_length = pipe.max_sequence_length
    assert loaded.scheduler.config.use_dynamic_shifting and loaded.transformer.config.guidance_embeds
    torch.testing.assert_close(loaded(P1, P2, seed=2, **SMALL).samples, pipe(P1, P2, seed=2, **SMALL).samples)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(prompt_2=""), "prompt_2"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(height=60), "height"),
        (dict(width=72), "width"),  # a multiple of 8, not of 16: no 2×2 patches
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
    pipe = tiny_flux_pipeline()
    pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="^scheduler"):
        pipe(P1, P2, **SMALL)
