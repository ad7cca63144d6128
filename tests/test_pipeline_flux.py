"""The Flux (flow-matching, guidance-embedded, packed-latent) SuperDiff pipeline on tiny random components:
one batched call without an empty prompt, the guidance embedding, parity with diffusers'
FlowMatchEulerDiscreteScheduler on FluxPipeline's own inputs, the t grid, save/load."""

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from pipelines import P1, P2, SMALL, pipe_fixture, record_calls

from superdiff import SuperDiffFluxPipeline
from superdiff.flow import sigma_of_t, t_of_sigma
from superdiff.generate import pipeline_class
from superdiff.pipeline_sd3 import calculate_shift
from superdiff.testing import tiny_flux_pipeline

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    # the tiny random Flux misses even lift 0 by about 0.05 nats in 6 steps (up to 0.06 under the model
    # card's diffusers), at the warning's edge; the warning itself is tested in test_sampling.py
    pytest.mark.filterwarnings("ignore:lift. the estimated:RuntimeWarning"),
]

pipe = pipe_fixture(tiny_flux_pipeline)

# What Flux shares with other families is tested in test_pipeline_contract.py: the card's call (FLUX.1-dev
# and schnell), the seeded tiny builder, AND (from σ ≈ 1.6 on every step adds lift/n exactly), the modes and
# the callback, float16, the bad inputs (width=72 among them), a scheduler assigned after loading.


# ----------------------------------------------------------------------------- one batched call, guidance


@pytest.mark.parametrize("prompts", [(P1, P2), ([P1, P2, "a zebra"], None)])
def test_one_batched_transformer_call_per_step_without_an_empty_prompt(pipe, prompts):
    calls = []
    with record_calls(pipe.transformer, calls):
        out = pipe(*prompts, seed=0, batch_size=2, guidance_scale=4.5, **SMALL)
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
        with record_calls(pipe.transformer, calls):
            pipe(P1, P2, seed=0, **SMALL)
        guidance = calls[0]["guidance"]
        assert guidance is None if expected is None else torch.equal(guidance, torch.full((2,), expected))
    calls = []
    with record_calls(pipe.transformer, calls), pytest.warns(UserWarning) as said:
        # the shared call's positional order: prompt_1, prompt_2, seed, steps, batch_size, lift, guidance
        pipe(P1, P2, 0, 2, 1, 0.0, 2.0, 64, 64)
    assert len(calls) == 2 and calls[0]["guidance"] is None  # schnell-like: no embedding, still runs
    ignored = [w.filename for w in said if str(w.message).startswith("guidance_scale: ignored by this Flux")]
    assert ignored == [__file__]  # a given guidance_scale is said to do nothing; the default is not
    pipe = tiny_flux_pipeline()
    with record_calls(pipe.transformer, calls):
        pipe(P1, P2, 0, 2, 1, 0.0, 2.0, 64, 64)
    assert torch.equal(calls[-1]["guidance"], torch.full((2,), 2.0))  # 2 prompt rows


@pytest.mark.parametrize("length", [-1, 0, 513, "77"])
def test_a_t5_length_flux_cannot_take_is_refused_before_encoding(pipe, monkeypatch, length):
    """-1 was an OverflowError from the tokenizer; FluxPipeline refuses more than 512."""
    monkeypatch.setattr(pipe, "max_sequence_length", length)
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("encoded"))
    with pytest.raises(ValueError, match=r"^pipe.max_sequence_length: expected an integer from 1 to 512"):
        pipe(P1, P2, seed=0, **SMALL)


def test_non_square_images_keep_height_rows_and_width_columns(pipe):
    """64×128 pixels: latents (1, 16, 8, 16); 4×8 tokens of 2×2 patches whose ids are (0, row, column),
    row-major, as FluxPipeline._prepare_latent_image_ids lays them out."""
    calls = []
    with record_calls(pipe.transformer, calls):
        out = pipe(P1, P2, seed=0, num_inference_steps=2, height=64, width=128)
    assert out.latents.shape == (1, 16, 8, 16) and out.images.shape == (1, 64, 128, 3)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(8.0), indexing="ij")
    expected = torch.stack([torch.zeros(32), rows.flatten(), cols.flatten()], dim=-1)
    assert torch.equal(calls[0]["img_ids"].reshape(-1, 32, 3)[0].float(), expected)


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
    torch.testing.assert_close(timesteps[1:], reference.timesteps[1:])
    assert timesteps[0].item() == pytest.approx(t_of_sigma(sigmas[0].item()) * 1000, rel=1e-6)  # σ_max's


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
