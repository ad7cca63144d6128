"""The AND study's own machinery: its batched likelihoods equal the plain ones; AND's absolute traces (f)."""

import math
import re

import pytest
import torch

from superdiff import and_study
from superdiff.and_study import (
    curvature_term,
    isotropic_curvature_sum,
    judged_run,
    mean_sd,
    med_abs,
    start_gap,
    table,
    trace_bias,
)
from superdiff.digits import DigitModels, default_sigmas, load_conditional, load_fokker_planck
from superdiff.digits.gaussian import load_gaussian_models
from superdiff.digits.model import Conditional
from superdiff.sampling import geometric_sigmas, log_likelihood, superpose
from superdiff.toy import up_and_down


@pytest.mark.parametrize("kind, load", [("net", load_conditional), ("fokker_planck", load_fokker_planck)])
def test_study_likelihoods_of_several_labels_in_one_batch_equal_separate_ones(kind, load):
    dig = DigitModels(ode_steps=6)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    both = dig.log_densities(kind, (3, 8), x, 0.01, probes=None)
    grid = default_sigmas(6)
    for row, c in zip(both, (3, 8), strict=True):
        torch.testing.assert_close(
            row, log_likelihood(Conditional(load(), c), x.double(), grid), atol=1e-4, rtol=0
        )


def test_a_sample_sees_the_same_probes_under_every_label():
    """Common random numbers: log q_3 − log q_3 is exactly 0, and each label's row is the same with the other
    labels alongside or alone (its probes do not depend on its position in the batch)."""
    dig = DigitModels(ode_steps=6)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    same = dig.log_densities("net", (3, 3), x, 0.01, probes=2, seed=5)
    assert torch.equal(same[0], same[1])
    alone = dig.log_densities("net", (8,), x, 0.01, probes=2, seed=5)
    torch.testing.assert_close(dig.log_densities("net", (3, 8), x, 0.01, probes=2, seed=5)[1], alone[0])


def toy_run(steps: int, mode: str, seed: int = 0):
    up, down = up_and_down()
    sigmas = geometric_sigmas(20.0, 0.01, steps)
    x = sigmas[0] * torch.randn(200, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if mode == "avg":
        res = superpose([up, down], x, sigmas, mode="avg", generator=torch.Generator().manual_seed(seed + 1))
        return (res.log_q[-1, :, 0] - up.log_prob(res.samples, 0.01)).median().item()
    return trace_bias([up, down], [up.log_prob, down.log_prob], x, sigmas, seed + 1)


def test_and_paths_bias_each_absolute_trace_by_the_curvature_along_the_removed_noise():
    """AND fixes ⟨dx, ε̂₁ − ε̂₂⟩, so its steps have no noise along that direction while the Itô estimator
    assumes isotropic noise: each trace is off by −½·ln((σ_max² + s²)/(σ_min² + s²)) = −3.91 nats on the toy,
    at 200 steps and 1000 alike; adding |dσ|·⟨d̂, J d̂⟩ per step removes it. Averaging paths (isotropic
    noise) have no such bias, and AND's gap stays small: only differences of AND's traces are estimates."""
    s = up_and_down()[0].std
    expected = -0.5 * math.log((20.0**2 + s**2) / (0.01**2 + s**2))
    runs = {steps: toy_run(steps, "and") for steps in (200, 1000)}
    for steps, r in runs.items():
        assert r["paper"] == pytest.approx(expected, abs={200: 0.35, 1000: 0.1}[steps]), steps
        assert abs(r["curved"]) < {200: 0.25, 1000: 0.05}[steps] and r["gap"] < 0.15
    assert abs(runs[1000]["curved"]) < abs(runs[200]["curved"])  # the remaining error is the step size's
    assert abs(toy_run(1000, "avg")) < 0.15


def test_and_on_the_toy_keeps_the_exact_gap_the_densities_had_at_sigma_max():
    """Every trace starts at the same log N(x; 0, σ_max² I): AND holds the change of the gap at 0, so in d = 2
    the samples end with the (unseen) gap their noise had at σ_max, and a higher σ_max shrinks it."""
    gaps = {}
    for sigma_max in (20.0, 80.0):
        sigmas = geometric_sigmas(sigma_max, 0.01, 300)
        x = sigma_max * torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        gaps[sigma_max] = r = start_gap(list(up_and_down()), x, sigmas, seed=1)
        assert r["change"] < 0.3 * r["start"] and r["end"] == pytest.approx(r["start"], rel=0.3)
    assert gaps[80.0]["start"] == pytest.approx(gaps[20.0]["start"] / 4, rel=0.3)  # ~ ‖μ₁ − μ₂‖/σ_max


def test_curvature_term_is_the_quadratic_form_of_the_models_jacobians():
    """|dσ|·⟨d̂, J_i d̂⟩ against J_i by autograd, for two exact mixtures in 5-d."""
    a, b = up_and_down(dim=5, seed=1)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    term = curvature_term([a, b], x, 0.7, -0.05)
    d = a(x, 0.7) - b(x, 0.7)
    d_hat = d / d.norm(dim=-1, keepdim=True)
    for i, m in enumerate((a, b)):
        for k in range(3):
            jac = torch.autograd.functional.jacobian(lambda v, m=m: m(v[None], 0.7)[0], x[k])
            assert term[k, i].item() == pytest.approx(0.05 * (d_hat[k] @ jac @ d_hat[k]).item(), rel=1e-9)


@pytest.mark.parametrize(
    ("labels", "x", "sigma", "message"),
    [
        ([-1, 8], torch.zeros(2, 1, 8, 8), 0.01, r"labels\[0\]"),
        ([True, 8], torch.zeros(2, 1, 8, 8), 0.01, r"labels\[0\]"),
        ("3", torch.zeros(2, 1, 8, 8), 0.01, "labels: expected a non-empty list of digits"),
        (
            [3, 8],
            torch.zeros(2, 64, 64, 3, dtype=torch.uint8),
            0.01,
            r"x: expected model-space samples .*out.latents",
        ),
        ([3, 8], torch.zeros(2, 1, 8, 8), 20.0, "sigma: expected a noise level > 0 and < 10"),
        ([3, 8], torch.zeros(2, 1, 8, 8), float("nan"), "sigma: expected a noise level"),
        ([3, 8], torch.zeros(2, 1, 8, 8), 0.0, "sigma: expected a noise level > 0"),
        ([3, 8], torch.zeros(2, 1, 8, 8), 10.0, "sigma: expected a noise level > 0 and < 10"),
        ([3, 8], torch.zeros(2, 3, 8, 8), 0.01, r"x: expected model-space samples .*\(2, 3, 8, 8\)"),
        (3, torch.zeros(2, 1, 8, 8), 0.01, "labels: expected a non-empty list of digits"),
        ([], torch.zeros(2, 1, 8, 8), 0.01, "labels: expected a non-empty list of digits"),
    ],
)
@pytest.mark.parametrize("kind", ["net", "gaussian"])
def test_the_judge_refuses_what_it_cannot_judge_by_name(kind, labels, x, sigma, message):
    from superdiff.digits.densities import log_densities
    from superdiff.digits.pipeline import load_pipeline

    with pytest.raises(ValueError, match=message):
        log_densities(load_pipeline(kind), labels, x, sigma)


@pytest.mark.parametrize("kind", ["net", "gaussian"])
def test_the_judge_refuses_zero_ode_steps(kind):
    from superdiff.digits.densities import log_densities
    from superdiff.digits.pipeline import load_pipeline

    with pytest.raises(ValueError, match="ode_steps"):
        log_densities(load_pipeline(kind), [3, 8], torch.zeros(2, 1, 8, 8), 0.01, ode_steps=0)


def test_the_judges_seed_picks_its_probes():
    dig = DigitModels(ode_steps=6)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5

    def log_q(seed):
        return dig.log_densities("net", (3,), x, 0.01, probes=2, seed=seed)

    assert torch.equal(log_q(5), log_q(5)) and not torch.equal(log_q(5), log_q(6))


def test_digit_models_keep_x_after_the_steps_asked_for():
    res, kept = DigitModels(ode_steps=6).run(
        "gaussian", (3, 8), 1.0, 10, "and", seed=0, batch=2, keep={1, 10}
    )
    assert sorted(kept) == [1, 10]
    torch.testing.assert_close(kept[10], res.samples, atol=0, rtol=0)  # after the last step: the samples
    assert not torch.equal(kept[1], kept[10])


def test_alone_samples_the_first_label_whatever_the_second():
    dig, lo = DigitModels(ode_steps=6), default_sigmas(20)[-1].item()
    three, _ = dig.run("gaussian", (3, 8), 1.0, 20, "alone", seed=0, batch=4)
    also_three, _ = dig.run("gaussian", (3, 5), 1.0, 20, "alone", seed=0, batch=4)
    torch.testing.assert_close(three.samples, also_three.samples, atol=0, rtol=0)
    digits, _ = load_gaussian_models()
    x = three.samples.double()
    assert (digits[3].log_prob(x, lo) > digits[8].log_prob(x, lo)).all()


def test_the_judge_takes_labels_as_the_pipeline_takes_prompts():
    from superdiff.digits.densities import log_densities
    from superdiff.digits.pipeline import load_pipeline

    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    pipe = load_pipeline("gaussian")
    assert torch.equal(log_densities(pipe, ["3", "eight"], x, 0.05), log_densities(pipe, [3, 8], x, 0.05))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--candidate", "{tmp}/bad.safetensors"],
            "--candidate: .*bad.safetensors is not a digits network file",
        ),
        (
            ["--candidate", "{tmp}/none.safetensors"],
            "--candidate: .*none.safetensors is not a digits network file",
        ),
        (["--out", "{tmp}"], "--out: .* is a folder in the way"),
        (["--out", "{tmp}/bad.safetensors/r.md"], "--out: .* is a file, not a folder"),
        (["--section", "f", "--out", "{tmp}/notes.md"], "--out: .*notes.md is not an AND study report"),
    ],
)
def test_the_study_refuses_what_it_would_fail_on_late_before_any_run(
    argv, message, tmp_path, monkeypatch, capsys
):
    from superdiff import and_study

    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "notes.md").write_text("# My notes\n")
    monkeypatch.setattr(and_study, "report", lambda *args, **kwargs: pytest.fail("ran"))
    monkeypatch.setattr(and_study, "section_f", lambda *args, **kwargs: pytest.fail("ran"))
    with pytest.raises(SystemExit):
        and_study.main([a.format(tmp=tmp_path) for a in argv])
    assert re.search(message, capsys.readouterr().err)
    assert (tmp_path / "notes.md").read_text() == "# My notes\n"


def test_rerunning_f_alone_replaces_it_and_its_time_in_the_header(tmp_path, monkeypatch):
    """The header gives each section's time and their total: a rerun of (f) changes both."""
    from superdiff import and_study

    head = (
        f"{and_study.TITLE}\n\nGenerated by `python -m superdiff.and_study` in 1706 s on CPU (torch 2.13.0,\n"
        "2 thread(s); (a) exact scores 126 s, (e) steps 475 s, (f) traces 227 s). Seeds 0, 1, 2.\n"
        "\n## (e) x\n"
    )
    out = tmp_path / "r.md"
    out.write_text(head + "\n## (f) AND's own traces\n\n(227 s.) old\n")
    monkeypatch.setattr(and_study, "section_f", lambda *args: "\n## (f) AND's own traces\n\n(365 s.) new\n")
    assert and_study.main(["--section", "f", "--out", str(out)]) == 0
    report = out.read_text()
    assert report.count("## (f)") == 1 and report.endswith("(365 s.) new\n") and "## (e) x" in report
    assert "in 1844 s on CPU" in report and "(f) traces 365 s, rerun alone with --section f)" in report
    assert and_study.main(["--section", "f", "--out", str(out)]) == 0  # again: the same header
    assert out.read_text() == report


def test_ctrl_c_is_one_line_and_leaves_the_report(tmp_path, monkeypatch, capsys):
    from superdiff import and_study

    out = tmp_path / "r.md"
    out.write_text(and_study.TITLE + "\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(and_study, "report", interrupted)
    assert and_study.main(["--out", str(out)]) == 130
    assert capsys.readouterr().err.startswith("superdiff.and_study: interrupted; the report is unchanged")
    assert out.read_text() == and_study.TITLE + "\n"


def test_mean_sd_is_the_mean_and_the_sample_sd():
    assert mean_sd([1, 2, 3]) == "2.00 ± 1.00"  # sample sd 1 (population sd 0.82)
    assert mean_sd([0.5], 1) == "0.5 ± 0.0"


def test_med_abs_is_the_median_of_the_absolute_values():
    assert med_abs(torch.tensor([-3.0, 1.0, 2.0])) == 2.0  # |median| would be 1


def test_table_is_a_markdown_table_with_one_separator_per_column():
    assert table(["a", "b"], [[1, 2], ["x", 3.5]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| x | 3.5 |"


def test_isotropic_curvature_sum_is_the_integral_of_the_isotropic_curvature_terms():
    """Σ |dσ|·σ/(σ² + s²) over a fine geometric grid from 20 to 0.01 tends to ∫ σ/(σ² + s²) dσ."""
    s = 0.4
    sig = geometric_sigmas(20.0, 0.01, 100_000)
    mid = (sig[1:] + sig[:-1]) / 2
    riemann = ((sig[:-1] - sig[1:]) * mid / (mid**2 + s**2)).sum().item()
    assert isotropic_curvature_sum(s) == pytest.approx(riemann, rel=1e-6)
    assert isotropic_curvature_sum(s) == pytest.approx(3.912, abs=1e-3)  # ½·ln(400.16/0.1601)


def test_exact_runs_on_the_toy_give_the_design_numbers(monkeypatch):
    """DESIGN §4 on the 2-D toy: AND gap ≈ 0.1 vs ≈ 5 for averaging, OR ≈ half up, and the Itô error of the
    difference small (both models' errors are measured against their own exact densities)."""
    monkeypatch.setattr(and_study, "DIMS", (2,))
    monkeypatch.setattr(and_study, "STEPS", (200,))
    monkeypatch.setattr(and_study, "SEEDS", (0,))
    r = and_study.exact_runs(200)[2, 200, 0]
    assert r["and"] < 0.5 and r["avg"] > 3
    assert 0.4 < r["or"] < 0.6
    assert r["err_diff"] < 0.5 and r["err"] < 2


def test_judged_run_judges_the_final_samples_at_the_grids_last_sigma():
    r = judged_run(DigitModels(), "gaussian", (3, 8), 1.0, 20, "and", 0, 4)
    digits, _ = load_gaussian_models()
    x = r["samples"].double()
    torch.testing.assert_close(r["la"], digits[3].log_prob(x, 0.01))
    torch.testing.assert_close(r["lb"], digits[8].log_prob(x, 0.01))
    torch.testing.assert_close(r["gap"], r["la"] - r["lb"])
