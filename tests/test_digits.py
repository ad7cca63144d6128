"""Shipped digits models: offline loading, quality, OR coverage, AND invariant, inputs, seeds."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from superdiff._torch import gen
from superdiff.digits import classifier, default_sigmas, digits_split, load_half_models, load_pipeline
from superdiff.digits import demo as digits_demo
from superdiff.digits import pipeline as digits_pipeline
from superdiff.digits.demo import mosaic
from superdiff.digits.experiments import class_histogram, coverage, entropy_bits, frechet, sample
from superdiff.digits.gaussian import load_gaussian_models
from superdiff.digits.model import FILES, NULL, WEIGHTS, Conditional, EpsNet, label_of
from superdiff.digits.pipeline import DigitPredictor, DigitsPipeline
from superdiff.digits.train import P_UNCOND, fp_penalty, lr_at, sha256, train_eps
from superdiff.sampling import superpose


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def test_weights_match_recorded_hashes():
    recorded = json.loads(re.search(r"sha256 json: (\{.*\})", (WEIGHTS / "README.md").read_text()).group(1))
    assert set(recorded) == set(FILES.values())
    for name in FILES.values():
        assert sha256(WEIGHTS / name) == recorded[name], name
    assert sum((WEIGHTS / f).stat().st_size for f in FILES.values()) <= 10_000_000


def test_shipped_models_load_offline_and_predict_eps():
    m04, m59 = load_half_models()
    x = torch.randn(3, 1, 8, 8)
    for m in (m04, m59):
        eps = m(x, 1.0)
        assert eps.shape == x.shape and torch.isfinite(eps).all()
    sigmas = default_sigmas(10)
    assert len(sigmas) == 11 and (sigmas[1:] < sigmas[:-1]).all() and sigmas[-1] > 0


def test_classifier_refuses_pictures_and_wrong_shapes():
    pipe = load_pipeline()
    out = pipe("3", "8", seed=0, num_inference_steps=10, batch_size=2)
    assert classifier().predict_proba(out.samples).shape == (2, 10)
    with pytest.raises(
        ValueError, match=r"x: expected model-space samples \(B, 1, 8, 8\) .* got torch.uint8"
    ):
        classifier().predict_proba(out.images)  # (B, 64, 64, 3) uint8 pictures
    with pytest.raises(ValueError, match=r"x: expected values in about \[−1, 1\] .*got 255"):
        classifier().predict_proba(out.samples.clone().fill_(255.0))


def test_classifier_accurate_on_held_out():
    x, y = digits_split("held_out")
    assert classifier().predict_proba(x).shape == (len(y), 10)
    assert (classifier().predict(x) == y).float().mean() > 0.93


def conditional_accuracy(pipe, per_digit: int = 4, steps: int = 50) -> float:
    """Share of single-prompt samples (all ten digits) that the classifier labels as the prompt."""
    hits = [
        (
            classifier().predict(
                pipe(str(d), seed=d, batch_size=per_digit, num_inference_steps=steps).samples
            )
            == d
        )
        for d in range(10)
    ]
    return torch.cat(hits).float().mean().item()


def test_conditional_samples_are_the_prompted_digit(pipe):
    assert conditional_accuracy(pipe) >= 0.85  # the shipped model scores ≈ 1.0


def test_untrained_model_fails_the_accuracy_floor():
    torch.manual_seed(0)
    assert (
        conditional_accuracy(DigitsPipeline(EpsNet(num_classes=10).eval()), steps=20) < 0.5
    )  # ignores labels


def test_training_is_deterministic():
    x, y = digits_split("train")
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(train_eps(EpsNet(num_classes=10, width=32, depth=1), x[:64], y[:64], steps=5, seed=0))
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_or_of_halves_covers_more_classes_than_either_half():
    m04, m59 = load_half_models()
    cov = {
        name: coverage(class_histogram(sample(models, 200, mode, seed=0, steps=50).samples))
        for name, (models, mode) in {
            "04": ([m04], "avg"),
            "59": ([m59], "avg"),
            "or": ([m04, m59], "or"),
        }.items()
    }
    assert cov["or"] > max(cov["04"], cov["59"])
    assert cov["or"] == 10  # averaging the two halves reaches 8 here


@pytest.mark.parametrize("lift", [0.0, 3.0])
def test_and_invariant_on_digits(pipe, lift):
    n = 30
    out = pipe("3", "8", seed=1, batch_size=4, num_inference_steps=n, lift=lift)
    gap = (out.log_q[..., 0] - out.log_q[..., 1]).double()
    expected = gap[0] + torch.arange(n + 1, dtype=torch.float64)[:, None] * lift / n
    assert torch.allclose(gap, expected, atol=1e-2)
    assert out.kappa.shape == (n, 4, 2) and torch.isfinite(out.kappa).all()


def test_output_shapes_and_range(pipe):
    out = pipe("three", "EIGHT", seed=0, batch_size=2, num_inference_steps=5)
    assert out.images.shape == (2, 64, 64, 3) and out.images.dtype == torch.uint8
    assert out[0].shape == (64, 64, 3)
    assert out.samples.shape == (2, 1, 8, 8) and out.samples.abs().max() <= 1
    assert out.log_q.shape == (6, 2, 2) and len(out.sigmas) == 6
    three = pipe(["1", "7", "4"], seed=0, batch_size=2, num_inference_steps=5, mode="or")
    assert three.kappa.shape == (5, 2, 3)
    single = pipe("3", "8", seed=0, batch_size=2, num_inference_steps=5, mode="prompt_2")
    assert (single.kappa[..., 1] == 1).all() and single.log_q.shape == (6, 2, 2)


def test_latents_are_the_final_x_the_trace_refers_to_and_samples_their_clamp(pipe):
    final = []
    out = pipe(
        "3",
        "8",
        seed=0,
        batch_size=4,
        num_inference_steps=30,
        callback_on_step_end=lambda p, i, sigma, kw: final.append(kw["latents"].clone()),
    )
    assert torch.equal(out.latents, final[-1])
    assert (out.latents.abs() > 1).any() and torch.equal(out.samples, out.latents.clamp(-1, 1))


def test_callback_sees_every_step(pipe):
    seen = []
    pipe(
        "3",
        "8",
        seed=0,
        batch_size=2,
        num_inference_steps=4,
        mode="prompt_1",
        callback_on_step_end=lambda p, i, sigma, kw: seen.append((i, kw["kappa"][:, 0].tolist())),
    )
    assert seen == [(i, [1.0, 1.0]) for i in range(4)]


def test_the_callback_says_which_sigma_its_latents_and_log_q_are_at(pipe):
    seen = []
    out = pipe(
        "3", "8", seed=0, num_inference_steps=5, callback_on_step_end=lambda p, i, s, kw: seen.append(kw)
    )
    for i, kw in enumerate(seen):
        assert (kw["sigma"], kw["sigma_next"]) == (out.sigmas[i].item(), out.sigmas[i + 1].item())
        assert torch.equal(kw["log_q"], out.log_q[i + 1]) and torch.equal(
            kw["latents"].float(), out.latents
        ) == (i == 4)


def test_same_seed_same_output(pipe):
    a = pipe("3", "8", seed=7, batch_size=3, num_inference_steps=10)
    b = pipe("3", "8", seed=7, batch_size=3, num_inference_steps=10)
    c = pipe("3", "8", seed=8, batch_size=3, num_inference_steps=10)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.kappa, b.kappa)
    assert not torch.equal(a.samples, c.samples)


def test_generator_list_batches_seeds_without_changing_them(pipe):
    seeds = [5, 0, 9, 2]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    batched = pipe("3", "8", generator=gens, batch_size=4, num_inference_steps=10)
    for i, s in enumerate(seeds):
        alone = pipe("3", "8", seed=s, num_inference_steps=10)
        torch.testing.assert_close(batched.samples[i : i + 1], alone.samples, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"prompt_1": "eleven"}, "prompt_1"),
        ({"prompt_1": "3", "prompt_2": "cat"}, "prompt_2"),
        ({"prompt_1": "3", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt_1": "3", "num_inference_steps": "ten"}, "num_inference_steps"),
        ({"prompt_1": "3", "batch_size": 0}, "batch_size"),
        ({"prompt_1": "3", "prompt_2": "8", "lift": [1.0]}, "lift"),
        ({"prompt_1": "3", "mode": "prompt_2"}, "mode"),
        ({"prompt_1": [], "mode": "or"}, "prompt_1"),
        ({"prompt_1": "3", "guidance_scale": -1.0}, "guidance_scale"),
        ({"prompt_1": "3", "prompt_2": "8", "mode": "xor"}, "mode"),
        ({"prompt_1": "3", "prompt_2": "8", "temperature": 0.0}, "temperature"),
        ({"prompt_1": "3", "output_type": "jpg"}, "output_type"),
        ({"prompt_1": "3", "batch_size": 2, "generator": [torch.Generator()]}, "generator"),
        ({"prompt_1": "3", "num_inference_steps": 10**9}, "num_inference_steps"),  # refused, not allocated
        ({"prompt_1": "3", "batch_size": 10**9}, "batch_size"),
        ({"prompt_1": "3", "seed": 2**32}, "seed"),  # would repeat seed 0
        ({"prompt_1": "3", "prompt_2": "8", "lift": 1e300}, "lift"),
        ({"prompt_1": "3", "callback_on_step_end": "print"}, "callback_on_step_end"),
    ],
)
def test_bad_inputs_name_the_argument(pipe, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        pipe(**kwargs)


def test_an_unknown_digit_is_shown_cut_not_echoed_whole():
    """A 100 000-character prompt made a 100 kB error line."""
    with pytest.raises(ValueError) as refused:
        label_of("x" * 100_000, "prompt_1")
    assert len(str(refused.value)) < 300 and str(refused.value).startswith("prompt_1: unknown digit 'xxx")


@pytest.mark.parametrize(
    ("kwargs", "ignored"),
    [
        ({"prompt_2": "8", "mode": "or", "lift": 2.0}, "lift: ignored in mode 'or'"),
        (
            {"prompt_2": "8", "mode": "prompt_1", "temperature": 2.0},
            "temperature: ignored in mode 'prompt_1'",
        ),
        ({"prompt_2": "8", "mode": "and", "log_weights": [0.0, 1.0]}, "log_weights: ignored in mode 'and'"),
        ({"lift": 2.0}, "lift: ignored in mode 'and' with one model"),
    ],
)
def test_an_option_the_mode_ignores_warns_once_at_the_callers_line(pipe, kwargs, ignored):
    with pytest.warns(UserWarning, match=ignored) as caught:
        pipe("3", **kwargs, num_inference_steps=2)
    assert [w.filename for w in caught if issubclass(w.category, UserWarning)] == [__file__]


def test_unknown_digit_lists_accepted_names(pipe):
    with pytest.raises(ValueError, match="three"):
        pipe("3", "tree")


def test_conservative_network_is_a_gradient_field_and_differentiable_for_the_likelihood():
    from superdiff.sampling import divergence

    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    for conservative in (True, False):
        net = EpsNet(num_classes=10, width=32, depth=1, conservative=conservative).eval()

        def eps(v, net=net):
            return net(v.reshape(1, 1, 8, 8), 0.3, torch.tensor([4])).reshape(64)

        jac = torch.func.vmap(torch.func.jacrev(eps))(x.reshape(3, 64))
        asym = ((jac - jac.transpose(1, 2)).norm(dim=(1, 2)) / jac.norm(dim=(1, 2))).max().item()
        assert (asym < 1e-5) == conservative, asym
        model = Conditional(net, 4)
        _, div = divergence(model, x, 0.3, None)
        torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(-1), atol=1e-4, rtol=1e-4)
        with torch.no_grad():  # sampling builds no graph
            assert not net(x, 0.3).requires_grad


def test_train_variant_refuses_a_folder_as_out(tmp_path):
    from superdiff.digits.train import main

    with pytest.raises(SystemExit):
        main(["--variant", "conservative", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--fp-weight", "3"], "--fp-weight"),
        (["--variant", "large", "--fp-weight", "3"], "--fp-weight"),
        (["--variant", "fokker_planck", "--fp-weight", "nan"], "--fp-weight"),
        (["--variant", "fokker_planck", "--fp-weight", "-1"], "--fp-weight"),
        (["--variant", "conservative", "--fp-sigma-min", "0.3"], "--fp-sigma-min"),
        (["--variant", "fokker_planck", "--fp-sigma-min", "11"], "--fp-sigma-min"),
        (["--variant", "fokker_planck_scratch", "--fp-sigma-min", "nan"], "--fp-sigma-min"),
        (["--steps", "100"], "--steps"),
        (["--variant", "large", "--steps", "0"], "--steps"),
    ],
)
def test_train_refuses_bad_options_before_training(argv, name, tmp_path, monkeypatch, capsys):
    from superdiff.digits import train

    monkeypatch.setattr(train, "train_eps", lambda *args, **kwargs: pytest.fail("trained"))
    with pytest.raises(SystemExit):
        train.main([*argv, "--out", str(tmp_path / "x.safetensors")])
    assert name in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_full_training_run_replaces_the_set_together_or_not_at_all(
    interrupted, tmp_path, monkeypatch, capsys
):
    from superdiff.digits import train
    from superdiff.digits.model import Classifier

    out = tmp_path / "weights"
    out.mkdir()
    (out / FILES["full"]).write_bytes(b"the old set")
    monkeypatch.setattr(train, "train_eps", lambda net, *args, **kwargs: net)  # untrained, in no time
    monkeypatch.setattr(train, "train_classifier", lambda x, y, seed: Classifier())
    monkeypatch.setattr(train, "accuracy", lambda clf, x, y: 0.5)
    if interrupted:  # Ctrl-C after some networks were written
        save = train.save_atomic

        def save_then_stop(module, path, meta):
            save(module, path, meta)
            if path.name == FILES["fokker_planck"]:
                raise KeyboardInterrupt

        monkeypatch.setattr(train, "save_atomic", save_then_stop)
    code = train.main(["--quick", "--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    if interrupted:
        assert code == 130 and "nothing in --out was changed" in capsys.readouterr().err
        assert names == [FILES["full"]] and (out / FILES["full"]).read_bytes() == b"the old set"
    else:
        assert code == 0 and names == sorted([*FILES.values(), "README.md"])
        assert f"`{train.sha256(out / FILES['full'])}`" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variant", "conservative", "--out", "{tmp}/afile/x.safetensors"], "is a file, not a folder"),
        (["--out", "{tmp}/afile"], "--out: .*afile' is a file, not a folder"),
    ],
)
def test_train_refuses_an_out_it_cannot_write_before_training(argv, message, tmp_path, monkeypatch, capsys):
    from superdiff.digits import train

    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(train, "train_eps", lambda *args, **kwargs: pytest.fail("trained"))
    with pytest.raises(SystemExit):
        train.main([a.format(tmp=tmp_path) for a in argv])
    assert re.search(message, capsys.readouterr().err)


def test_train_passes_the_penalty_options_to_training_and_records_them(tmp_path, monkeypatch):
    import json

    from safetensors import safe_open

    from superdiff.digits import train

    calls = []
    monkeypatch.setattr(train, "train_eps", lambda net, x, y, steps, **kw: calls.append((steps, kw)) or net)
    out = tmp_path / "fp.safetensors"
    argv = ["--variant", "fokker_planck", "--fp-weight", "2", "--fp-sigma-min", "0.3", "--steps", "7"]
    assert train.main([*argv, "--out", str(out)]) == 0
    ((steps, options),) = calls
    assert steps == 7 and options["fp_weight"] == 2.0 and options["fp_sigma_min"] == 0.3
    assert options["lr"] == train.VARIANTS["fokker_planck"][2]["lr"]  # the variant's own options stay
    meta = json.loads(safe_open(out, "pt").metadata()["superdiff"])
    assert (meta["fp_weight"], meta["fp_sigma_min"], meta["steps"]) == ("2.0", "0.3", "7")


def test_non_finite_sampling_raises_instead_of_black_images(pipe, monkeypatch):
    from superdiff.sampling import NonFiniteError

    def overflowing(labels, guidance_scale):
        return [lambda x, sigma: torch.full_like(x, math.nan)] * len(labels)

    monkeypatch.setattr(pipe, "predictor", overflowing)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        pipe("3", "8", seed=0, num_inference_steps=3)


def test_interrupt_ends_a_digits_run_and_the_next_call_runs_whole(pipe):
    def stop(p, i, sigma, kw):
        p._interrupt = i == 1

    assert pipe("3", "8", seed=0, num_inference_steps=10, callback_on_step_end=stop).kappa.shape[0] == 2
    watch = lambda p, i, sigma, kw: None  # noqa: E731  (a callback that leaves the flag alone)
    assert pipe("3", "8", seed=0, num_inference_steps=10, callback_on_step_end=watch).kappa.shape[0] == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-or", "0"], "--n-or: expected an integer from 10 to 20000, got 0"),
        (["--n-or", "100000000"], "--n-or: expected an integer from 10 to 20000"),
        (["--batch-and", "0"], "--batch-and: expected an integer from 1 to 1024, got 0"),
        (["--batch-acc", "-1"], "--batch-acc: expected an integer from 1 to 1024, got -1"),
        (["--out", "{tmp}/afile/r.md"], "--out: .*afile' is a file, not a folder"),
        (["--out", "{tmp}"], "--out: .* is a folder in the way"),
    ],
)
def test_experiments_refuse_bad_options_before_any_run(argv, message, tmp_path, monkeypatch, capsys):
    from superdiff.digits import experiments

    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(experiments, "experiments", lambda *args: pytest.fail("ran"))
    with pytest.raises(SystemExit):
        experiments.main([a.format(tmp=tmp_path) for a in argv])
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("interrupted", [False, True])
def test_the_report_and_its_figures_are_replaced_together_or_not_at_all(interrupted, tmp_path, monkeypatch):
    from superdiff.digits import experiments

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "digits_or_samples.png").write_bytes(b"old figure")
    (tmp_path / "r.md").write_text("old report")

    def run(n_or, batch_and, batch_acc, out, fig_dir):
        (fig_dir / "digits_or_samples.png").write_bytes(b"new figure")
        if interrupted:  # Ctrl-C in experiment 2, after experiment 1's figures
            raise KeyboardInterrupt
        return "new report", [fig_dir / "digits_or_samples.png"]

    monkeypatch.setattr(experiments, "experiments", run)
    code = experiments.main(["--out", str(tmp_path / "r.md")])
    figure, report = (
        (tmp_path / "figures" / "digits_or_samples.png").read_bytes(),
        (tmp_path / "r.md").read_text(),
    )
    assert (code, figure, report) == (
        (130, b"old figure", "old report") if interrupted else (0, b"new figure", "new report")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "r.md"]


def test_the_reports_folder_is_made_if_new(tmp_path, monkeypatch):
    from superdiff.digits import experiments

    monkeypatch.setattr(experiments, "experiments", lambda *args: ("report", []))
    assert experiments.main(["--out", str(tmp_path / "new" / "r.md")]) == 0
    assert (tmp_path / "new" / "r.md").read_text() == "report"


def test_a_raised_step_limit_is_the_pipelines_not_the_cores(pipe, monkeypatch):
    """pipe.limits = Limits(steps=...) raised it for the call's check, but the core's σ grid refused past
    10 000 steps ("n: number of steps must be an integer from 1 to 10000")."""
    from superdiff.limits import Limits

    monkeypatch.setattr(pipe, "limits", Limits(steps=10_001))
    out = pipe("3", "8", num_inference_steps=10_001, batch_size=1, seed=0)
    assert out.kappa.shape == (10_001, 1, 2) and torch.isfinite(out.log_q).all()


@pytest.mark.parametrize(
    ("net", "got"),
    [(EpsNet(num_classes=0), "num_classes=0"), (EpsNet(num_classes=5), "num_classes=5"), ("net", "str")],
)
def test_a_net_that_cannot_read_the_ten_digits_is_refused(net, got):
    """An unconditional net sampled the same images for "3","8" as for "1","7"; 5 classes an IndexError."""
    with pytest.raises(ValueError, match=rf"^net: expected a class-conditional EpsNet .*, got {got}; "):
        DigitsPipeline(net)
    assert DigitsPipeline(EpsNet(num_classes=10)).net.config["num_classes"] == 10


@pytest.mark.parametrize("model", ["net", "gaussian"])
def test_guidance_below_one_warns_as_on_stable_diffusion(model, recwarn):
    """The digits models guide classifier-free too: w = 0 moves every prompt's sample alike."""
    pipe = DigitsPipeline(model=model)
    for w in (0.0, 0.5, 1.0, 2.0):
        pipe("3", "8", seed=0, num_inference_steps=5, guidance_scale=w)
    said = [(w.filename, str(w.message).split(":")[0]) for w in recwarn if "steer less" in str(w.message)]
    assert said == [(__file__, "guidance_scale=0"), (__file__, "guidance_scale=0.5")]


def test_a_prompt_2_given_with_a_list_is_appended_as_on_stable_diffusion():
    """It was refused ("prompt_2: must be None when prompt_1 is a list") where SD appends it."""
    pipe = DigitsPipeline(model="gaussian")
    appended = pipe(["3", "8"], "1", seed=0, num_inference_steps=5)
    listed = pipe(["3", "8", "1"], seed=0, num_inference_steps=5)
    assert appended.kappa.shape[-1] == 3 and torch.equal(appended.samples, listed.samples)
    with pytest.raises(ValueError, match="^prompt_2: unknown digit"):
        pipe(["3", "8"], "eleven", seed=0, num_inference_steps=5)


def test_limits_that_are_not_a_limits_are_refused_naming_them(monkeypatch):
    pipe = DigitsPipeline(model="gaussian")
    monkeypatch.setattr(pipe, "limits", {"steps": 5})
    with pytest.raises(
        ValueError, match=r"^pipe.limits: expected a Limits, got dict; `del pipe.limits` restores"
    ):
        pipe("3", "8", num_inference_steps=3)


def test_the_training_target_is_the_F_that_makes_eps_the_noise():
    """ε̂ = σ/(σ² + σ_d²)·x − σ_d/√(σ² + σ_d²)·F with F = target(x₀, ε, σ) gives ε̂ = ε exactly."""
    net = EpsNet(width=8, depth=1)
    x0, noise = torch.randn(5, 1, 8, 8, generator=gen(3)), torch.randn(5, 1, 8, 8, generator=gen(4))
    sigma = torch.tensor([0.01, 0.1, 0.85, 3.0, 10.0])
    target = net.target(x0, noise, sigma)
    net.raw = lambda x_in, s, labels: target
    eps = net(x0 + sigma[:, None, None, None] * noise, sigma)
    torch.testing.assert_close(eps, noise, atol=1e-5, rtol=1e-5)


def test_default_sigmas_are_geometric_from_10_to_0_01():
    torch.testing.assert_close(default_sigmas(3), torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64))


def test_digit_predictor_guides_each_prompt_against_the_null_class():
    torch.manual_seed(0)
    net = EpsNet(num_classes=10, width=16, depth=1).eval()
    x = torch.randn(3, 1, 8, 8, generator=gen(5))
    with torch.no_grad():
        pred = DigitPredictor(net, [3, 8], 2.5)(x, 0.7)
        null = net(x, 0.7, torch.full((3,), NULL))
        for i, c in enumerate((3, 8)):
            eps = net(x, 0.7, torch.full((3,), c))
            torch.testing.assert_close(pred.eps[i], eps)
            torch.testing.assert_close(pred.field[i], null + 2.5 * (eps - null))


def test_entropy_and_histogram_of_classes():
    assert entropy_bits(torch.full((10,), 0.1, dtype=torch.float64)) == pytest.approx(math.log2(10))
    assert entropy_bits(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(1.0)
    x, _ = digits_split("held_out")
    assert class_histogram(x).sum().item() == pytest.approx(1.0)


def test_frechet_distance_of_two_point_sets_with_known_moments():
    """a: mean 0, covariance (2/3)·I; b = 2a + (1, 0): mean (1, 0), (8/3)·I.
    FD = ‖Δμ‖² + tr(C_a + C_b − 2(C_a C_b)^½) = 1 + 20/3 − 16/3 = 7/3."""
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    b = 2 * a + torch.tensor([1.0, 0.0])
    assert frechet(a, b) == pytest.approx(7 / 3)
    assert frechet(a, a) == pytest.approx(0.0, abs=1e-12)


def test_mosaic_draws_ink_dark_on_white():
    ink, paper = mosaic(torch.ones(1, 1, 8, 8), ncols=1), mosaic(-torch.ones(1, 1, 8, 8), ncols=1)
    assert ink.shape == (10, 10) and (ink[1:9, 1:9] == 0).all() and (paper[1:9, 1:9] == 1).all()
    assert ink[0].eq(1).all() and ink[:, 0].eq(1).all()  # the gap is white


def test_mosaic_of_a_partial_last_row_draws_every_digit():
    samples = -torch.ones(9, 1, 8, 8)
    samples[8] = 1.0  # the ninth digit, alone on the second row: all ink
    grid = mosaic(samples, ncols=8)
    assert grid.shape == (2 * 9 + 1, 8 * 9 + 1)
    assert (grid[10:18, 1:9] == 0).all() and (grid[10:18, 10:] == 1).all()


def test_digits_figures_are_named_by_their_mode_and_drawn_at_the_seed(monkeypatch):
    monkeypatch.setattr(digits_demo, "and_figure", lambda seed: ("AND", seed))
    monkeypatch.setattr(digits_demo, "or_figure", lambda seed: ("OR", seed))
    assert digits_demo.digits_figures(seed=7) == {"digits_and.png": ("AND", 7), "digits_or.png": ("OR", 7)}


def test_judged_gaps_judge_the_unclamped_latents(monkeypatch):
    monkeypatch.setattr(digits_demo, "JUDGED", {"gaussian": "Gaussian per digit"})
    gaps = digits_demo.judged_gaps(batch=4, seeds=(0,), steps=20)
    digits, _ = load_gaussian_models()
    for mode in ("and", "avg"):
        out = load_pipeline("gaussian")("3", "8", seed=0, batch_size=4, mode=mode, num_inference_steps=20)
        x = out.latents.double()
        exact = (digits[3].log_prob(x, 0.01) - digits[8].log_prob(x, 0.01)).abs().median().item()
        assert gaps["gaussian"][mode] == [pytest.approx(exact, rel=1e-6)]


def test_lr_schedule_warms_up_then_decays_by_cosine_to_5_percent():
    assert lr_at(0, 1200, 1.0) == pytest.approx(1 / 200)
    assert lr_at(200, 1200, 1.0) == pytest.approx(1.0)
    assert lr_at(700, 1200, 1.0) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_at(1200, 1200, 1.0) == pytest.approx(0.05)


def test_training_drops_a_p_uncond_share_of_labels_to_the_null_class():
    x, y = digits_split("train")
    net, seen = EpsNet(num_classes=10, width=8, depth=1), []
    raw = net.raw
    net.raw = lambda x_in, s, labels: seen.append(labels) or raw(x_in, s, labels)
    train_eps(net, x, y, steps=2, seed=0, batch=4000)
    share = torch.cat(seen).eq(NULL).double().mean().item()
    assert share == pytest.approx(P_UNCOND, abs=0.02)  # 8000 draws: sd 0.004


def test_fp_penalty_of_a_batch_is_the_mean_of_each_images_own():
    """Each image's Jacobian rows carry its own label: the batch penalty is the mean of the single ones."""
    torch.manual_seed(0)
    net = EpsNet(num_classes=10, width=16, depth=1)
    x = torch.randn(3, 64, generator=gen(6))
    sigma, labels = torch.tensor([0.2, 0.7, 2.0]), torch.tensor([1, 5, 9])
    alone = [fp_penalty(net, x[i : i + 1], sigma[i : i + 1], labels[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(fp_penalty(net, x, sigma, labels), torch.stack(alone).mean())


def test_sample_draws_the_start_noise_then_the_step_noise_from_one_seeded_stream():
    """The step noise continues the seed's stream after x: restarting it would make the first step's z
    equal to the start noise x/σ_max."""
    m04, _ = load_half_models()
    sigmas, g = default_sigmas(5), gen(3)
    x = sigmas[0].item() * torch.randn(4, 1, 8, 8, generator=g)
    expected = superpose([m04], x, sigmas, mode="avg", generator=g)
    torch.testing.assert_close(
        digits_pipeline.sample([m04], 4, "avg", seed=3, steps=5).samples, expected.samples
    )
