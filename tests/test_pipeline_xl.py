"""SuperDiff on tiny random SDXL components: the card's call, one UNet call, parity, loading."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from pipelines import (
    LEADING_LOW_START,
    P1,
    P2,
    SMALL,
    diffusers_eps,
    gap,
    pipe_fixture,
    record_calls,
    saved_fixture,
)

from superdiff import SuperDiffPipeline, SuperDiffXLPipeline
from superdiff.generate import pipeline_class
from superdiff.pipeline_xl import XL_CUSTOM_PIPELINE
from superdiff.testing import sd_scheduler, tiny_xl_pipeline

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    LEADING_LOW_START,
]

pipe = pipe_fixture(tiny_xl_pipeline)
saved = saved_fixture(tiny_xl_pipeline)

# What SDXL shares with the other families (the seeded tiny builder, the AND invariant at every step, the
# bad inputs) is tested in test_pipeline_contract.py.


def test_card_call_gives_uint8_images_and_traces(pipe):
    out = pipe(P1, P2, seed=1, num_inference_steps=6, batch_size=1, height=64, width=64)
    assert out[0].dtype == torch.uint8 and out[0].shape == (64, 64, 3) and out[0].float().std() > 1
    assert out.kappa.shape == (6, 1, 2) and out.log_q.shape == (7, 1, 2)
    assert out.kappa.dtype == torch.float32 and out.log_q.dtype == torch.float64
    Image.fromarray(out[0].numpy())
    assert torch.equal(pipe(P1, P2, seed=1, **SMALL).images, out.images)
    assert not torch.equal(pipe(P1, P2, seed=2, **SMALL).images, out.images)


def test_avg_drifts_off_the_equal_density_line(pipe):
    out = pipe(P1, P2, seed=0, mode="avg", **SMALL)
    assert gap(out)[-1].abs().max() > 1e-2  # so the AND test (contract) is not trivially true


def test_joint_baseline_equals_its_written_prompt_alone_and_callback_sees_every_step(pipe):
    steps = []
    joint = pipe(P1, P2, seed=0, mode="joint", callback_on_step_end=lambda *a: steps.append(a[1]), **SMALL)
    assert joint.prompts[-1] == f"{P1} that looks like {P2}" and steps == list(range(6))
    written = pipe([joint.prompts[-1]], None, seed=0, mode="prompt_1", **SMALL)
    torch.testing.assert_close(joint.samples, written.samples, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (72, 64)])
def test_one_batched_unet_call_per_step_with_pooled_embeds_and_time_ids_per_row(pipe, size):
    # the tiny UNet is conditioned as SDXL's, on pooled embeddings and size "time ids"; trained at 64²
    assert pipe.default_size == 64 and pipe.unet.config.addition_embed_type == "text_time"
    calls = []
    with record_calls(pipe.unet, calls):
        pipe(
            [P1, P2, "a zebra"],
            None,
            seed=0,
            batch_size=2,
            num_inference_steps=3,
            height=size[0],
            width=size[1],
        )
    assert len(calls) == 3
    context = pipe.prompt_context([P1, P2, "a zebra"], "cpu", *size)
    expected_pooled = context["added_cond_kwargs"]["text_embeds"].repeat_interleave(2, 0)
    for call in calls:
        hidden, added = call["encoder_hidden_states"], call["added_cond_kwargs"]
        assert call["sample"].shape[0] == (3 + 1) * 2 and hidden.shape == (8, 77, 64)
        assert added["text_embeds"].shape == (8, 32) and added["time_ids"].shape == (8, 6)
        torch.testing.assert_close(added["text_embeds"], expected_pooled)
        assert (added["time_ids"] == torch.tensor([*size, 0, 0, *size], dtype=torch.float32)).all()
        assert not torch.equal(added["text_embeds"][0], added["text_embeds"][2])  # prompts differ
        assert added["text_embeds"][-2:].abs().max() == 0  # the empty prompt's row, zeros (SDXL default)


@pytest.mark.parametrize("force_zeros", [True, False])
def test_unconditional_row_is_zeros_under_force_zeros_for_empty_prompt(pipe, force_zeros):
    xl = SuperDiffXLPipeline(**pipe.components, force_zeros_for_empty_prompt=force_zeros)
    context = xl.prompt_context([P1, P2], "cpu", 64, 64)
    hidden, pooled = context["embeddings"], context["added_cond_kwargs"]["text_embeds"]
    assert hidden.shape == (3, 77, 64) and pooled.shape == (3, 32)
    assert (hidden[-1].abs().max() == 0 and pooled[-1].abs().max() == 0) == force_zeros
    assert hidden[:2].abs().amax((1, 2)).min() > 0
    if not force_zeros:  # the empty prompt's own encoding, as diffusers' SDXL encodes it
        empty, _, pooled_empty, _ = xl.encode_prompt("", device="cpu", do_classifier_free_guidance=False)
        torch.testing.assert_close(hidden[-1:], empty)
        torch.testing.assert_close(pooled[-1:], pooled_empty)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_eps_equals_what_diffusers_sdxl_route_implies(prediction_type):
    """Per σ, ε̂ (per prompt) and the guided field against StableDiffusionXLPipeline's own route:
    encode_prompt, _get_add_time_ids, scale_model_input, the UNet with added_cond_kwargs, guidance,
    EulerDiscreteScheduler.step."""
    pipe, w = tiny_xl_pipeline(prediction_type=prediction_type), 7.5
    scheduler = pipe.scheduler
    scheduler.set_timesteps(10)
    predictor = pipe.make_predictor(
        pipe.prompt_context([P1, P2], "cpu", 64, 64), 2, w, scheduler.sigmas, scheduler.timesteps
    )
    time_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, 32).repeat(4, 1)
    worst = 0.0
    for i in (0, 3, 6, 9):
        sigma, t = scheduler.sigmas[i].item(), scheduler.timesteps[i]
        x = sigma * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i))
        pred = predictor(x, sigma)
        for k, prompt in enumerate((P1, P2)):  # diffusers' SDXL call for one prompt, 2 images
            scheduler._step_index = i  # diffusers' scaling reads σ at its own step counter
            embeds, uncond, pooled, uncond_pooled = pipe.encode_prompt(
                prompt, device="cpu", num_images_per_prompt=2
            )
            added = {"text_embeds": torch.cat([uncond_pooled, pooled]), "time_ids": time_ids}
            x_in = scheduler.scale_model_input(torch.cat([x] * 2), t)
            with torch.no_grad():
                out = pipe.unet(x_in, t, torch.cat([uncond, embeds]), added_cond_kwargs=added).sample
            out_uncond, out_text = out.chunk(2)
            expected = diffusers_eps(scheduler, i, out_text, x)
            worst = max(worst, (pred.eps[k].double() - expected).abs().max().item())
            torch.testing.assert_close(pred.eps[k].double(), expected, atol=2e-4, rtol=1e-4)
            guided = diffusers_eps(scheduler, i, out_uncond + w * (out_text - out_uncond), x)
            torch.testing.assert_close(pred.field[k].double(), guided, atol=2e-4, rtol=1e-4)
    print(f"{prediction_type}: max |ε̂ − diffusers' ε| = {worst:.2e}")


def test_float16_vae_with_force_upcast_decodes_in_float32():
    pipe = tiny_xl_pipeline()
    reference = pipe(P1, P2, seed=3, **SMALL)
    pipe.vae.half()
    seen = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        out = pipe(P1, P2, seed=3, **SMALL)
    finally:
        hook.remove()
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16  # upcast for decoding, then back
    assert (out.images.int() - reference.images.int()).abs().max() <= 2  # float16 weights, float32 math


def test_save_pretrained_round_trip_and_custom_pipeline_give_the_same_images(saved, pipe):
    expected = pipe(P1, P2, seed=1, **SMALL).images
    loaded = SuperDiffXLPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded(P1, P2, seed=1, **SMALL).images, expected)
    custom = DiffusionPipeline.from_pretrained(
        saved, custom_pipeline=XL_CUSTOM_PIPELINE, trust_remote_code=True
    )
    assert type(custom).__name__ == "SuperDiffXLPipeline"
    custom.set_progress_bar_config(disable=True)
    assert torch.equal(custom(P1, P2, seed=1, **SMALL).images, expected)


def test_an_sdxl_folder_is_refused_by_the_sd_pipeline_at_load_naming_the_xl_one(saved):
    from superdiff.pipeline_superdiff import CUSTOM_PIPELINE

    message = "unet: a UNet with added 'text_time' conditioning .* superdiff.SuperDiffXLPipeline"
    with pytest.raises(ValueError, match=message):
        SuperDiffPipeline.from_pretrained(saved)
    with pytest.raises(ValueError, match=message):
        DiffusionPipeline.from_pretrained(saved, custom_pipeline=CUSTOM_PIPELINE, trust_remote_code=True)


def model_index(tmp_path, class_name):
    """A folder holding only a model_index.json of the given pipeline class."""
    folder = tmp_path / class_name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return str(folder)


def test_generate_picks_the_pipeline_by_model_index(saved, tmp_path):
    assert pipeline_class(str(saved)) is SuperDiffXLPipeline
    assert pipeline_class(model_index(tmp_path, "StableDiffusionXLPipeline")) is SuperDiffXLPipeline
    assert pipeline_class(model_index(tmp_path, "StableDiffusionPipeline")) is SuperDiffPipeline
    assert pipeline_class(model_index(tmp_path, "AltDiffusionPipeline")) is SuperDiffPipeline
    try:
        assert (
            pipeline_class(model_index(tmp_path, "StableDiffusion3Pipeline")).__name__
            == "SuperDiffSD3Pipeline"
        )
    except ValueError as err:  # superdiff.pipeline_sd3 not there yet
        assert str(err).startswith("--model: ") and "SuperDiffSD3Pipeline" in str(err)


def test_generate_samples_a_saved_xl_folder(saved, tmp_path):
    from superdiff.cli import main

    out = tmp_path / "xl.png"
    args = ["generate", P1, P2, "--model", str(saved), "--steps", "2", "--seed", "1", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64)  # the tiny UNet's trained size, from SDXL's config


def test_unknown_prediction_type_is_refused(pipe):
    message = r"^scheduler.config.prediction_type: expected one of .*, got 'flow'"
    with pytest.raises(ValueError, match=message):
        SuperDiffXLPipeline(**{**pipe.components, "scheduler": sd_scheduler(prediction_type="flow")})
    xl = SuperDiffXLPipeline(**pipe.components)
    xl.scheduler = sd_scheduler(prediction_type="flow")
    with pytest.raises(ValueError, match=message):
        xl(P1, P2, **SMALL)


def test_prompts_past_clips_window_warn(pipe, recwarn):
    pipe(P1, P2, seed=0, num_inference_steps=1, height=64, width=64)
    assert not [w for w in recwarn if "CLIP" in str(w.message)]
    with pytest.warns(UserWarning, match="cut to CLIP's 77 tokens; dropped: .*tail"):
        pipe("a flamingo " + "x" * 80 + " tail", P2, seed=0, num_inference_steps=1, height=64, width=64)


def test_xl_vae_input_uses_latents_mean_and_std_where_the_vae_has_them():
    """As diffusers' SDXL: z·std/scaling_factor + mean per channel where the VAE has them, else
    z/scaling_factor."""
    z = torch.ones(1, 4, 2, 2)
    plain = SimpleNamespace(vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=0.5)))
    torch.testing.assert_close(SuperDiffXLPipeline.vae_input(plain, z), torch.full((1, 4, 2, 2), 2.0))
    config = SimpleNamespace(
        scaling_factor=0.5, latents_mean=[1.0, 2.0, 3.0, 4.0], latents_std=[1.0, 0.5, 0.25, 2.0]
    )
    stats = SimpleNamespace(vae=SimpleNamespace(config=config))
    expected = torch.tensor([3.0, 3.0, 3.5, 8.0]).view(1, 4, 1, 1).expand(1, 4, 2, 2)  # 1·std/0.5 + mean
    torch.testing.assert_close(SuperDiffXLPipeline.vae_input(stats, z), expected)
