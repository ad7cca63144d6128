"""The SD3 (flow-matching) SuperDiff pipeline on tiny random components: one batched transformer call per
step, parity with diffusers' FlowMatchEulerDiscreteScheduler, the σ grid, save/load."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from pipelines import P1, P2, SMALL, pipe_fixture, record_calls

from superdiff import SuperDiffSD3Pipeline
from superdiff.flow import sigma_of_t
from superdiff.pipeline_sd3 import FlowPromptPredictor, calculate_shift, flow_grid
from superdiff.testing import tiny_sd3_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

pipe = pipe_fixture(tiny_sd3_pipeline)

# What SD3 shares with other families is tested in test_pipeline_contract.py: the card's call, the seeded tiny
# builder, AND (from σ ≈ 2 on every step adds lift/n exactly), the modes and the callback, float16, the bad
# inputs, a scheduler assigned after loading.


# ----------------------------------------------------------------------------- one batched call


@pytest.mark.parametrize("prompts", [(P1, P2), ([P1, P2, "a zebra"], None)])
def test_one_batched_transformer_call_per_step(pipe, prompts):
    calls = []
    with record_calls(pipe.transformer, calls):
        out = pipe(*prompts, seed=0, batch_size=2, **SMALL)
    rows = len(out.prompts) + 1  # the prompts and the empty one
    assert [call["hidden_states"].shape[0] for call in calls] == [rows * 2] * SMALL["num_inference_steps"]
    t = torch.stack([call["timestep"][0] for call in calls])
    sigma_max = out.sigmas[0].item()
    assert t[0].item() == pytest.approx(1000 * sigma_max / (1 + sigma_max))  # σ_max's own t < 1
    torch.testing.assert_close(t[1:], pipe.scheduler.timesteps[1:], atol=1e-3, rtol=0)


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


def test_a_size_past_the_position_embeddings_is_refused_before_encoding(pipe, monkeypatch):
    """diffusers raised "Height (64) cannot be greater than pos_embed_max_size: 32" after the text
    encoders ran, naming latent patches, not the argument (the tiny model's 32 patches: 512 pixels)."""
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("encoded"))
    for name in ("height", "width"):
        size = {"height": 64, "width": 64, name: 528}
        with pytest.raises(ValueError, match=rf"^{name}: expected at most 512 for this transformer \(32 "):
            pipe(P1, P2, seed=0, num_inference_steps=2, **size)
    assert pipe.check_inputs(P1, P2, height=512, width=512) == [P1, P2]


def test_a_long_prompt_names_t5s_window_where_t5_reads_it(recwarn):
    long = " ".join(["a red flamingo standing in water"] * 60)  # past T5's 256 tokens too
    tiny_sd3_pipeline(t5=True)(long, P2, seed=0, num_inference_steps=2)
    said = [str(w.message) for w in recwarn if str(w.message).startswith("prompt 'a red flamingo")]
    assert len(said) == 2 and "is cut to CLIP's 77 tokens (T5 reads 256); dropped:" in said[0]
    assert "is cut to T5's 256 tokens; dropped:" in said[1]
