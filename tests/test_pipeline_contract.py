"""What the SuperDiff pipelines of several model families do alike, one test for all of them, parametrised
over the families' tiny random pipelines: sd (Stable Diffusion 1.x), xl (SDXL), sd3 and flux. What only
one family does is tested in its own file: test_pipeline.py, test_pipeline_xl.py, test_pipeline_sd3.py,
test_pipeline_flux.py."""

import functools
import inspect
import logging
import math
import re
import typing
import warnings

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from PIL import Image
from pipelines import LEADING_LOW_START, P1, P2, SMALL, gap, record_calls

from superdiff.testing import tiny_flux_pipeline, tiny_pipeline, tiny_sd3_pipeline, tiny_xl_pipeline

BUILDERS = {"sd": tiny_pipeline, "xl": tiny_xl_pipeline, "sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    LEADING_LOW_START,
]


@pytest.fixture(scope="module")
def pipes():
    """pipes(family): the family's tiny pipeline, built on first use and shared by this module's tests
    (which leave it as they found it)."""
    return functools.cache(lambda family: BUILDERS[family]())


# ----------------------------------------------------------------------------- every family


def readable_by_old_diffusers(cls) -> list[str]:
    """The __init__ parameters whose annotation diffusers < 0.33 cannot read (it warns of each at load):
    it takes a class, or a typing.Union of classes, not a string or ``X | Y``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    readable = lambda a: inspect.isclass(a) or typing.get_origin(a) is typing.Union  # noqa: E731
    return [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and not readable(p.annotation)]


@pytest.mark.parametrize("family", BUILDERS)
def test_the_components_annotations_are_types_the_cards_diffusers_reads(family, pipes):
    cls = type(pipes(family))
    assert readable_by_old_diffusers(cls) == [] and "vae" in inspect.signature(cls.__init__).parameters


@pytest.mark.parametrize("family", BUILDERS)
def test_tiny_pipeline_is_seeded_and_leaves_global_rng_alone(family):
    build = BUILDERS[family]
    state = torch.get_rng_state()
    a, b, c = build(0), build(0), build(1)
    assert torch.equal(torch.get_rng_state(), state)
    w = [next(p.denoiser.parameters()) for p in (a, b, c)]  # the UNet or transformer
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


BAD = [
    ("prompt_1", dict(prompt_1="")),
    ("prompt_2", dict(prompt_2="   ")),
    ("prompt_2", dict(prompt_2="\u200b\u2060")),  # zero-width characters: CLIP reads an empty prompt
    ("prompt_2", dict(prompt_2=None)),
    ("prompt_1", dict(prompt_1=None)),
    ("height", dict(height=100)),
    ("height", dict(height=56)),
    ("width", dict(width=32)),
    ("width", dict(width=64.0)),
    ("num_inference_steps", dict(num_inference_steps=0)),
    ("batch_size", dict(batch_size=0)),
    ("guidance_scale", dict(guidance_scale=-1.0)),
    ("guidance_scale", dict(guidance_scale=math.inf)),
    ("mode", dict(mode="xor")),
    ("mode", dict(mode="prompt_3")),
    ("lift", dict(lift=math.inf)),
    ("lift", dict(lift=math.nan)),
    ("lift", dict(lift=[1.0, 2.0, 3.0])),
    ("temperature", dict(temperature=math.nan)),
    ("temperature", dict(temperature=0.0)),
    ("log_weights", dict(log_weights=[0.0, math.nan])),
    ("output_type", dict(output_type="jpg")),
    ("seed", dict(seed=1.5)),
    ("seed", dict(seed=1, generator=torch.Generator())),
    ("generator", dict(generator=[torch.Generator()] * 2, batch_size=3)),
    ("generator", dict(generator=[torch.Generator(), 1])),
    ("prompt_2", dict(prompt_2="")),
    ("height", dict(height=60)),
    ("guidance_scale", dict(guidance_scale=math.nan)),
    ("seed", dict(seed=-1)),
]
PAST_LIMITS = [  # sizes past the limits are refused before anything is allocated (issue 13)
    ("num_inference_steps", dict(num_inference_steps=10**9)),
    ("batch_size", dict(batch_size=10**9)),
    ("height", dict(height=100_000)),
    ("width", dict(width=8192)),
    ("seed", dict(seed=2**32)),  # would give seed 0's noise
    ("seed", dict(seed=2**64)),
    ("lift", dict(lift=1e300)),
    ("guidance_scale", dict(guidance_scale=1e30)),
    ("temperature", dict(temperature=1e300)),
    ("log_weights", dict(log_weights=[0.0, 1e300])),
    ("batch_size", dict(batch_size=1024, height=2048, width=2048)),  # 2³² pixels, each size within its limit
    ("joint_prompt", dict(mode="joint", joint_prompt="x" * 10**7)),  # was tokenised
    ("joint_prompt", dict(mode="joint", joint_prompt="a\ud800b")),  # was a TypeError from tokenizers
]
BAD_INPUTS = {family: BAD + PAST_LIMITS for family in BUILDERS}
for family in ("sd3", "flux"):  # a multiple of 8, not of 16: no 2×2 latent patches
    BAD_INPUTS[family].append(("width", dict(width=72)))

CASES = [(family, name, bad) for family, cases in BAD_INPUTS.items() for name, bad in cases]


def no_work(*args, **kwargs):
    raise AssertionError("work started before the inputs were checked")


def case_id(family: str, name: str, bad: dict) -> str:
    """family-name=value, without the memory addresses in a generator's repr (stable across runs)."""
    return re.sub(r" at 0x[0-9a-f]+", "", f"{family}-{name}={list(bad.values())[-1]!r}")


@pytest.mark.parametrize("family, name, bad", CASES, ids=[case_id(*case) for case in CASES])
def test_bad_input_raises_value_error_naming_it_before_any_work(pipes, monkeypatch, family, name, bad):
    """Checked before the prompts are encoded and before any call of the UNet or transformer."""
    pipe, calls = pipes(family), []
    monkeypatch.setattr(pipe, "encode_prompt", no_work)
    monkeypatch.setattr(pipe.denoiser, "forward", no_work)
    with record_calls(pipe.denoiser, calls), pytest.raises(ValueError, match=rf"^{name}: "):
        pipe(**{"prompt_1": P1, "prompt_2": P2, **SMALL, **bad})
    assert calls == []


@pytest.mark.parametrize("prompt", [b"a flamingo", bytearray(b"a flamingo")])
def test_a_bytes_prompt_is_refused_as_bytes_not_read_as_numbers(pipes, prompt):
    with pytest.raises(
        ValueError,
        match=rf"^prompt_1: expected a non-empty string or a list of them, got {type(prompt).__name__}$",
    ):
        pipes("sd")(prompt, P2, **SMALL)


# ----------------------------------------------------------------------------- SD 1.x and SDXL (a UNet, ε)


@pytest.mark.parametrize(
    "family, lift", [("sd", 0.0), ("sd", 3.0), ("sd", -2.0), ("xl", 0.0), ("xl", 2.0), ("xl", -2.0)]
)
def test_and_gap_follows_lift_schedule_at_every_step(pipes, family, lift):
    out = pipes(family)(P1, P2, seed=0, batch_size=2, lift=lift, **SMALL)
    n = SMALL["num_inference_steps"]
    schedule = torch.arange(n + 1)[:, None] * lift / n
    torch.testing.assert_close(gap(out), schedule.expand(n + 1, 2).double(), atol=1e-4, rtol=0)
    assert not torch.allclose(out.kappa, torch.full_like(out.kappa, 0.5), atol=1e-3)  # AND is not averaging


@pytest.mark.parametrize("family", ["sd", "xl"])
def test_an_edm_schedule_read_through_euler_from_config_is_still_refused(family):
    """EulerDiscreteScheduler.from_config(an EDM config) keeps sigma_data and gains default linear betas:
    what check_euler's own advice gives a Playground-v2.5 user; it must not be sampled as a DDPM schedule."""
    pipe = BUILDERS[family]()
    edm = EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    euler = EulerDiscreteScheduler.from_config(edm.config)
    assert "beta_schedule" in euler.config and "sigma_data" in euler.config
    with pytest.raises(ValueError, match="^scheduler: expected a DDPM noise schedule"):
        type(pipe)(**{**pipe.components, "scheduler": euler})
    pipe.scheduler = euler
    with pytest.raises(ValueError, match="^scheduler: expected a DDPM noise schedule"):
        pipe(P1, P2, **SMALL)


# ----------------------------------------------------------------------------- SD3 and Flux (flow matching)


@pytest.mark.parametrize(
    "family, options",
    [
        ("sd3", dict(t5=False)),
        ("sd3", dict(t5=True)),
        ("flux", dict(guidance_embeds=True)),  # FLUX.1-dev
        ("flux", dict(guidance_embeds=False)),  # FLUX.1-schnell
    ],
    ids=["sd3", "sd3-t5", "flux-dev", "flux-schnell"],
)
def test_card_call_gives_uint8_images_and_finite_traces(family, options):
    pipe = BUILDERS[family](**options)
    out = pipe(P1, P2, seed=1, num_inference_steps=6, batch_size=1)  # default size: 64² for the tiny model
    assert out[0].dtype == torch.uint8 and out[0].shape == (64, 64, 3) and out[0].float().std() > 1
    assert out.kappa.shape == (6, 1, 2) and out.log_q.shape == (7, 1, 2)
    assert torch.isfinite(out.kappa).all() and torch.isfinite(out.log_q).all()  # σ_max finite: no NaN
    assert torch.isfinite(out.sigmas).all() and out.sigmas[-1] == 0
    assert out.samples.shape == (1, 16, 8, 8)
    Image.fromarray(out[0].numpy())
    assert torch.equal(pipe(P1, P2, seed=1, num_inference_steps=6).images, out.images)


@pytest.mark.parametrize("lift", [0.0, 2.0, -2.0])
@pytest.mark.parametrize("family, sigma_3", [("sd3", 2.02), ("flux", 1.58)])
def test_and_gap_follows_lift_schedule_after_the_capped_first_steps(pipes, family, sigma_3, lift):
    """From σ_3 on (SD3: 2, Flux: ≈ 1.6) every step adds lift/n exactly. Above (SD3: σ = 32, 12, 4.5; Flux:
    20, 7.9, 3.2) the random prompts' ε̂ agree closely (SD3: to ~1e-3) and reaching lift/n there would take
    a large κ (SD3: ≈ ±100): the core's ridge caps κ, so those steps add less (docs/model-families.md), and
    how much less depends on the random weights (diffusers' version)."""
    pipe = pipes(family)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", RuntimeWarning)
        out = pipe(P1, P2, seed=0, batch_size=2, lift=lift, **SMALL)
    missed = (gap(out)[-1] - lift).abs().max().item()  # the capped steps' shortfall: warned about if large
    assert bool(warned) == (missed > 0.05 + 0.01 * abs(lift)), (missed, [str(w.message) for w in warned])
    n = SMALL["num_inference_steps"]
    increments = gap(out).diff(dim=0)
    assert out.sigmas[3] == pytest.approx(sigma_3, abs=0.01)
    torch.testing.assert_close(increments[3:], torch.full_like(increments[3:], lift / n), atol=5e-3, rtol=0)
    if lift == 0:
        assert gap(out).abs().max() < 0.05
    else:  # the capped steps still move the gap the right way, by at most lift/n
        assert (increments[:3] / (lift / n)).min() > 0.25 and (increments[:3] / (lift / n)).max() < 1.05
    avg = pipe(P1, P2, seed=0, batch_size=2, mode="avg", **SMALL)
    assert gap(avg)[-1].abs().max() > 0.1  # without AND the gap drifts: the test above is not trivial


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.filterwarnings("ignore:lift. the estimated:RuntimeWarning")  # tiny Flux: ~0.05 at lift 0
def test_modes_and_callback(pipes, family):
    pipe, seen = pipes(family), []
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


@pytest.mark.parametrize("family", BUILDERS)
def test_the_callbacks_timestep_is_the_one_the_network_saw(family, pipes, monkeypatch):
    """diffusers' convention (t in 0 … 1000); on flow grids the first step is at σ_max's t, not t = 1."""
    pipe = pipes(family)
    network, seen, told = getattr(pipe, pipe.denoiser_name), [], []
    forward = network.forward

    def recording(*args, **kwargs):
        t = kwargs["timestep"] if "timestep" in kwargs else args[1]
        seen.append(float(torch.as_tensor(t).flatten()[0]) * (1000 if family == "flux" else 1))
        return forward(*args, **kwargs)

    monkeypatch.setattr(network, "forward", recording)
    # OR: the steps are any mode's, and AND's lift check (a RuntimeWarning, an error here) had tipped past
    # 0.05 nats on the random tiny Flux of diffusers 0.32 (make compat)
    pipe(P1, P2, seed=0, mode="or", callback_on_step_end=lambda p, i, t, kw: told.append(float(t)), **SMALL)
    assert told == pytest.approx(seen, rel=1e-6) and len(told) == 6
    if family in ("sd3", "flux"):
        assert told[0] < 1000


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_float16_pipeline_samples_like_float32(family):
    pipe = BUILDERS[family]()
    reference = pipe(P1, P2, seed=1, **SMALL)
    pipe.to(torch.float16)
    out = pipe(P1, P2, seed=1, **SMALL)
    assert out.samples.dtype == torch.float32 and torch.isfinite(out.log_q).all()
    torch.testing.assert_close(out.samples, reference.samples, atol=5e-2, rtol=0)
    torch.testing.assert_close(gap(out), gap(reference), atol=2e-2, rtol=0)


NOT_DDPM = [  # Playground v2.5 (an SDXL UNet) ships the first; the others have no betas either
    EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5),
    EDMEulerScheduler(),
    FlowMatchEulerDiscreteScheduler(),
]


@pytest.mark.parametrize("family", ["sd", "xl"])
@pytest.mark.parametrize("scheduler", NOT_DDPM, ids=lambda s: type(s).__name__)
def test_schedules_without_betas_are_refused_not_read_as_linear_betas(family, scheduler, pipes):
    pipe = pipes(family)
    message = rf"^scheduler: expected a DDPM noise schedule .*, got {type(scheduler).__name__} with an EDM"
    with pytest.raises(ValueError, match=message):
        type(pipe)(**{**pipe.components, "scheduler": scheduler})
    other = type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)})
    assert isinstance(other.scheduler, EulerDiscreteScheduler)  # a DDPM scheduler becomes Euler, as PNDM
    other.scheduler = scheduler
    with pytest.raises(ValueError, match=message):
        other(P1, P2, **SMALL)


@pytest.mark.parametrize("family", ["sd", "xl"])
@pytest.mark.parametrize(
    "other", [DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler]
)
def test_a_ddpm_scheduler_assigned_after_loading_must_be_euler(family, other, pipes):
    """The diffusers habit pipe.scheduler = X.from_config(...): X's own grid would not be the one sampled."""
    pipe = type(pipes(family))(**pipes(family).components)
    euler = pipe.scheduler
    pipe.scheduler = other.from_config(euler.config)
    with pytest.raises(
        ValueError, match=rf"^scheduler: expected an EulerDiscreteScheduler .*got {other.__name__}"
    ):
        pipe(P1, P2, **SMALL)
    karras = dict(use_karras_sigmas=True)  # an Euler scheduler's options apply
    pipe.scheduler = EulerDiscreteScheduler.from_config(euler.config, **karras)
    out = pipe(P1, P2, **SMALL)
    pipe.scheduler.set_timesteps(SMALL["num_inference_steps"])
    torch.testing.assert_close(out.sigmas, pipe.scheduler.sigmas.to(out.sigmas))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_scheduler_assigned_after_loading_is_refused(family):
    pipe = BUILDERS[family]()
    pipe.scheduler = EulerDiscreteScheduler()
    with pytest.raises(ValueError, match="^scheduler"):
        pipe(P1, P2, **SMALL)


@pytest.mark.parametrize("family", BUILDERS)
def test_guidance_below_one_warns_where_it_is_classifier_free(family, pipes):
    """diffusers reads guidance_scale <= 1 as "no guidance"; here w = 0 is the empty prompt's ε̂ alone."""
    said = {}
    for w in (0.0, 0.5, 1.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipes(family)(P1, P2, seed=0, guidance_scale=w, **SMALL)
        said[w] = [x.filename for x in caught if str(x.message).startswith(f"guidance_scale={w:g}: ")]
    if family == "flux":  # an input of the transformer, not w of F_i
        assert said == {0.0: [], 0.5: [], 1.0: []}
    else:
        assert said == {0.0: [__file__], 0.5: [__file__], 1.0: []}


@pytest.mark.parametrize("family", BUILDERS)
def test_a_joint_prompt_outside_mode_joint_warns_at_the_callers_line(family, pipes):
    for mode, expected in (("and", [__file__]), ("joint", [])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = pipes(family)(P1, P2, seed=0, mode=mode, joint_prompt="a zebra", **SMALL)
        said = [x.filename for x in caught if str(x.message).startswith("joint_prompt: ignored in mode")]
        assert said == expected and ("a zebra" in out.prompts) == (mode == "joint")


@pytest.mark.parametrize("family", BUILDERS)
def test_a_callback_that_cannot_observe_is_refused_before_any_work(family, pipes):
    from diffusers.callbacks import SDCFGCutoffCallback  # changes the guidance and the embeddings mid-run

    pipe, calls = pipes(family), []
    denoiser = getattr(pipe, pipe.denoiser_name)
    with record_calls(denoiser, calls):
        with pytest.raises(ValueError, match="^callback_on_step_end: expected a function .* got int"):
            pipe(P1, P2, seed=0, callback_on_step_end=5, **SMALL)
        cutoff = SDCFGCutoffCallback(cutoff_step_ratio=0.5)
        with pytest.raises(ValueError, match="^callback_on_step_end: SDCFGCutoffCallback changes the"):
            pipe(P1, P2, seed=0, callback_on_step_end=cutoff, **SMALL)
    assert calls == []


@pytest.mark.parametrize("family", BUILDERS)
def test_interrupt_from_the_callback_ends_sampling_after_that_step(family, pipes):
    """diffusers' convention for a UI's Stop button: pipe._interrupt = True in callback_on_step_end."""
    pipe, calls = pipes(family), []

    def stop_at_2(pipe, step, timestep, kwargs):
        pipe._interrupt = step == 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tiny Flux misses lift 1 by 0.1 nats in 6 steps
        full = pipe(P1, P2, seed=0, lift=1.0, **SMALL)
    denoiser = getattr(pipe, pipe.denoiser_name)
    with record_calls(denoiser, calls), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a stopped run does not reach its lift: no warning
        stopped = pipe(P1, P2, seed=0, lift=1.0, callback_on_step_end=stop_at_2, **SMALL)
    assert pipe.interrupt and len(calls) == 3
    assert stopped.kappa.shape[0] == 3 and stopped.log_q.shape[0] == len(stopped.sigmas) == 4
    torch.testing.assert_close(stopped.kappa, full.kappa[:3])
    torch.testing.assert_close(stopped.log_q, full.log_q[:4])
    assert stopped.images.shape == full.images.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        again = pipe(P1, P2, seed=0, lift=1.0, **SMALL)  # the next call starts with the flag down
    assert not pipe.interrupt and torch.equal(again.kappa, full.kappa)


@pytest.mark.parametrize("family", BUILDERS)
def test_a_vae_that_decodes_nan_is_warned_of_and_the_latents_decode_again(family, pipes, monkeypatch):
    """A float16 VAE that overflows gave black images without a word (NaN pixels became 0)."""
    pipe = pipes(family)
    decode = pipe.vae.decode

    def overflowing(*args, **kwargs):
        out = decode(*args, **kwargs)
        (out[0] if isinstance(out, tuple) else out.sample)[1] = math.nan  # the second image only
        return out

    monkeypatch.setattr(pipe.vae, "decode", overflowing)
    with pytest.warns(RuntimeWarning, match=r"^images: the VAE decoded NaN .* image 1, drawn black") as seen:
        out = pipe(P1, P2, seed=0, batch_size=2, output_type="pt", **SMALL)
    assert [w.filename for w in seen if str(w.message).startswith("images:")] == [__file__]
    assert (out.images[1] == 0).all() and out.images[0].any()
    monkeypatch.setattr(pipe.vae, "decode", decode)
    again = pipe.decode_latents(out.latents)  # what the warning advises
    assert torch.equal(again[0], out.images[0]) and again[1].any()


@pytest.mark.parametrize("family", BUILDERS)
def test_a_long_prompt_gets_one_line_per_encoder_not_the_libraries_logs(family, pipes):
    """diffusers logged the dropped tokens of every row (the empty prompt's padding too) in lines of
    kilobytes, and said CLIP's 77 tokens where T5 reads on."""
    long = " ".join(["a red flamingo standing in water"] * 12)  # 324 CLIP tokens
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipes(family)(long, P2, seed=0, **SMALL)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    said = [str(w.message) for w in caught if str(w.message).startswith("prompt 'a red flamingo")]
    encoders = [m.split(" is cut to ")[1].split("'s")[0] for m in said]
    assert encoders == (["CLIP", "T5"] if family == "flux" else ["CLIP"])
    assert all(w.filename == __file__ for w in caught if str(w.message) in said)
    if family == "flux":
        t5 = pipes(family).max_sequence_length
        assert f"CLIP's 77 tokens for its pooled embedding (T5 reads {t5}); dropped:" in said[0]
    assert logged == [], logged[0][:300]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_vaes_decode_latents_scaled_and_shifted(family, pipes, monkeypatch):
    """SD3's and Flux's VAEs decode z/scaling_factor + shift_factor (diffusers' own pipelines)."""
    pipe = pipes(family)
    scale, shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor
    assert scale != 1 and shift != 0  # the real models' values, which the tiny VAEs copy
    seen, decode = [], pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: seen.append(z.clone()) or decode(z, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = pipe(P1, P2, seed=0, **SMALL)
    torch.testing.assert_close(seen[-1], out.latents / scale + shift)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_float16_network_samples_float32_latents(family):
    """x_0 = σ_max·z in float32 and every step's x too, whatever the network's dtype (DESIGN: precision)."""
    pipe = BUILDERS[family]().to(torch.float16)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pipe(
            P1, P2, seed=1, callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"].dtype), **SMALL
        )
    assert seen == [torch.float32] * 6
