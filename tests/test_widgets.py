"""The ipywidgets playground without a browser: set controls, press Generate, inspect results and outputs."""

import base64
import html
import re
import struct
import subprocess
import sys
import threading
import types
import warnings

import ipywidgets
import matplotlib.pyplot as plt
import pytest
import torch

from superdiff import digits, geometric_sigmas, superpose, testing
from superdiff.limits import MAX_SEED, abbreviate, check_prompt, noting_warnings, warn_caller
from superdiff.toy import up_and_down
from superdiff.widgets import Playground, enable_colab_widgets, kappa_figure, playground

STEPS, BATCH = 20, 64


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def toy():
    """The toy playground with small settings."""
    pg = playground("toy")
    pg.steps.value, pg.batch_size.value, pg.seed.value = STEPS, BATCH, 3
    return pg


def count_changes(widget, trait: str) -> list:
    """A list that grows by one each time the trait is set."""
    changes = []
    widget.observe(changes.append, names=trait)
    return changes


def calls_to(monkeypatch, owner, name: str) -> list[tuple]:
    """(args, kwargs, result) of each call to ``owner.name`` from now on; the calls go through."""
    calls, real = [], getattr(owner, name)

    def recorded(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(owner, name, recorded)
    return calls


def pngs(output_widget) -> list[str]:
    return [o["data"]["image/png"] for o in output_widget.outputs if "image/png" in o["data"]]


def test_import_is_cheap():
    lazy = ("diffusers", "superdiff.digits")
    code = f"import sys, superdiff.widgets; print([m in sys.modules for m in {lazy}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[False, False]"


def test_generate_fills_outputs_and_progress(toy):
    toy.redraw_seconds = 0.0  # redraw κ on every due step, however fast sampling is
    progress, live = count_changes(toy.progress, "value"), count_changes(toy.kappa_out, "outputs")
    result = toy.generate()
    assert result is toy.result and toy.error is None
    assert result.kappa.shape == (STEPS, BATCH, 2) and result.log_q.shape == (STEPS + 1, BATCH, 2)
    assert toy.progress.max == STEPS and toy.progress.value == STEPS
    assert [c["new"] for c in progress] == list(range(1, STEPS + 1))  # one move per step
    assert len(live) == STEPS // 2  # every 2 steps while sampling (not at the last), then the final plot
    assert len(pngs(toy.samples_out)) == 1 and len(pngs(toy.kappa_out)) == 1
    assert "Error" not in toy.status.value and "Done" in toy.status.value
    assert not toy.button.disabled


def test_live_redraws_are_throttled_by_time(toy):
    toy.redraw_seconds = 3600.0
    live = count_changes(toy.kappa_out, "outputs")
    toy.generate()
    assert len(live) == 1  # only the final plot


def test_button_click_generates(toy):
    toy.button.click()
    toy.thread.join(60)
    assert toy.result is not None and toy.result.samples.shape == (BATCH, 2)


def block_runs(pg, monkeypatch) -> tuple[list, threading.Event, threading.Event]:
    """Make the backend's run record each call and wait until released: (calls, started, release)."""
    calls, started, release, run = [], threading.Event(), threading.Event(), pg.backend.run

    def blocking(p, on_step):
        calls.append(p)
        started.set()
        assert release.wait(30), "the test never released the run"
        return run(p, on_step)

    monkeypatch.setattr(pg.backend, "run", blocking)
    return calls, started, release


def test_generate_waits_for_the_active_run_then_runs_its_own(toy, monkeypatch):
    """A cell that calls generate() while a clicked run is active gets its own run, not None or that one's."""
    calls, started, release = block_runs(toy, monkeypatch)
    toy.button.click()
    assert started.wait(30)
    clicked = toy.thread
    toy.lift.value = 2.0  # what the cell asks for, set while the clicked run samples at lift 0
    results = []
    cell = threading.Thread(target=lambda: results.append(toy.generate()))
    cell.start()
    cell.join(0.5)
    assert cell.is_alive() and results == []  # waiting, not returning at once
    release.set()
    cell.join(60)
    clicked.join(60)
    assert [p["lift"] for p in calls] == [0.0, 2.0] and results[0] is toy.result is not None
    with pytest.raises(TimeoutError, match="generate: another run was still active after 0.1 s"):
        with toy._busy:  # a run that does not end
            toy.generate(timeout=0.1)


def test_one_run_per_kernel_across_playgrounds(toy, monkeypatch):
    """The app's memory bound counts one run per page: a second playground's click waits its turn."""
    other = playground("toy")
    other.steps.value = STEPS
    calls, started, release = block_runs(toy, monkeypatch)
    toy.button.click()
    assert started.wait(30)
    other.button.click()
    assert other.thread is None and "Another playground on this page is sampling" in other.status.value
    toy.button.click()  # its own run: ignored without a word
    assert "Sampling" in toy.status.value
    release.set()
    toy.thread.join(60)
    other.button.click()
    other.thread.join(60)
    assert other.result is not None and len(calls) == 1


def test_a_cell_catching_warnings_while_a_click_samples_leaves_the_kernels_warnings_alone(
    toy, monkeypatch, recwarn
):
    """The run noted its warnings with warnings.catch_warnings, which is process-wide: a cell (or a library)
    entering one during a click's run, in its thread, left every later warning in that run's list."""
    calls, started, release = block_runs(toy, monkeypatch)
    sample = toy.backend.run
    monkeypatch.setattr(toy.backend, "run", lambda p, on_step: warn_caller("a note") or sample(p, on_step))
    filters = list(warnings.filters)
    toy.button.click()
    assert started.wait(30)
    with warnings.catch_warnings():
        release.set()
        toy.thread.join(60)
    warnings.warn("after the run", stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["after the run"] and warnings.filters == filters
    assert toy.status.value.count("Warning: a note") == 1


def test_a_click_while_a_run_is_active_is_ignored(toy, monkeypatch):
    calls, started, release = block_runs(toy, monkeypatch)
    toy.button.click()
    assert started.wait(30)
    running = toy.thread
    toy.button.click()  # a double click, or a client that re-enabled the button
    assert toy.thread is running
    release.set()
    running.join(60)
    assert len(calls) == 1 and toy.result is not None
    toy.button.click()  # after the run, a click starts the next one
    toy.thread.join(60)
    assert len(calls) == 2


# What a client can send: it can change a widget's min and max, then set a value past the UI's range.
OUT_OF_RANGE = [
    ("steps", 5000, "steps: expected an integer from 1 to 1000, got 5000"),
    ("steps", -5, "steps: expected an integer from 1 to 1000, got -5"),
    ("batch_size", 10**12, "batch_size: expected an integer from 1 to 2000, got 1000000000000"),
    ("batch_size", -5, "batch_size: expected an integer from 1 to 2000, got -5"),
    ("seed", 2**40, "seed: expected an integer from 0 to 4294967295"),
    ("lift", 1e9, "lift: expected a finite number >= -10 and <= 10"),
    ("temperature", 0.0, "temperature: expected a finite number >= 0.1 and <= 5"),
    ("guidance_scale", 50.0, "guidance_scale: expected a finite number >= 0 and <= 1"),
]


def set_past_bounds(widget, value) -> None:
    """Set a value as a client can: first widen the widget's min and max, if it has them."""
    if hasattr(widget, "max"):
        widget.max, widget.min = max(widget.max, value), min(widget.min, value)
    widget.value = value
    assert widget.value == value


@pytest.mark.parametrize("name, value, message", OUT_OF_RANGE)
def test_out_of_range_values_from_a_client_are_refused(toy, monkeypatch, name, value, message):
    calls, _, release = block_runs(toy, monkeypatch)
    release.set()
    set_past_bounds(getattr(toy, name), value)
    assert toy.generate() is None and calls == []
    assert isinstance(toy.error, ValueError) and message in str(toy.error)
    assert f"Error: {message}" in html.unescape(toy.status.value)


def test_prompts_are_checked():
    toy = playground("toy")
    toy.prompt_2.value = "<b>anything</b>"  # a Text widget: a client can set any text, even if disabled
    assert toy.generate() is None and "prompt_2: the toy's models are fixed" in str(toy.error)
    digits = playground("digits")
    for prompt, message in (("x" * 5000, "at most 1000 characters, got 5000"), ("11", "expected one of")):
        with pytest.raises(ValueError, match=f"prompt_1: .*{message}"):
            digits.check_params({**digits.params(), "prompt_1": prompt})


def test_digits_model_is_checked():
    digits = playground("digits")
    from superdiff.digits.pipeline import MODELS

    assert [v for _, v in digits.model.options] == list(MODELS)
    with pytest.raises(ValueError, match=r"model: expected one of \['net', 'fokker_planck', 'gaussian'\]"):
        digits.check_params({**digits.params(), "model": "../../weights"})


def test_reset_puts_every_control_back_and_reproduces_a_fresh_playground():
    pg, fresh = playground("digits"), playground("digits")
    pg.steps.value, fresh.steps.value = 5, 5
    fresh.generate()
    moved = {
        "prompt_1": "1",
        "prompt_2": "7",
        "mode": "or",
        "model": "gaussian",
        "lift": 2.0,
        "seed": 9,
        "guidance_scale": 1.5,
        "temperature": 0.5,
        "steps": 7,
        "batch_size": 3,
        "judge": True,
    }
    for name, value in moved.items():
        getattr(pg, name).value = value
    assert all(pg.params()[name] != fresh.params()[name] for name in moved)  # each control moved
    pg.reset()
    assert pg.params() == playground("digits").params()
    pg.steps.value = 5
    assert torch.equal(pg.generate().samples, fresh.result.samples)


def test_toy_judge_is_the_exact_gap_and_shows_and_keeps_equal_density(toy):
    toy.steps.value, toy.batch_size.value = 200, 200
    up, down = toy.backend.models
    gaps = {}
    for mode in ("and", "avg"):
        toy.mode.value = mode
        result = toy.generate()
        exact = torch.stack([m.log_prob(result.samples, 0.01) for m in (up, down)])
        assert torch.equal(toy.judged, exact)
        gaps[mode] = (exact[0] - exact[1]).abs().median().item()
        assert f"(median |gap| {gaps[mode]:.1f})" in html.unescape(toy.verdict.value)
        assert "judged by the exact densities" in toy.verdict.value
    assert gaps["and"] < 0.5 < 3 < gaps["avg"]  # DESIGN.md §4: ≈ 0.1 vs ≈ 5
    assert "judged in" in toy.status.value  # the status line's time counts the judge too
    toy.judge.value = False
    assert toy.generate() is not None and toy.judged is None and toy.verdict.value == ""
    assert "judged in" not in toy.status.value


def test_toy_judge_of_or_counts_the_samples_each_model_explains(toy):
    toy.steps.value, toy.batch_size.value, toy.mode.value, toy.judge.value = 200, 200, "or", True
    result = toy.generate()
    up, down = toy.backend.models
    gaps = up.log_prob(result.samples, 0.01) - down.log_prob(result.samples, 0.01)
    ito = result.log_q[-1, :, 0] - result.log_q[-1, :, 1]
    n_up, n_ito = int((gaps > 0).sum()), int((ito > 0).sum())
    assert 50 < n_up < 150  # a mixture: the median of its gaps would sit between the two rows
    verdict = html.unescape(toy.verdict.value)
    assert f"{n_up} of 200</b> samples are more likely under “up”" in verdict
    assert verdict.endswith(f"the Itô estimate says {n_ito}") and "median:" not in verdict


def test_an_error_before_sampling_leaves_no_plot_of_the_previous_run(toy):
    toy.generate()
    assert pngs(toy.samples_out) and pngs(toy.kappa_out) and toy.progress.value == STEPS
    toy.lift.max, toy.lift.value = 100, 50  # a client can move a slider's bounds
    assert toy.generate() is None and "lift: expected" in toy.status.value
    assert toy.samples_out.outputs == () and toy.kappa_out.outputs == () and toy.progress.value == 0


def test_digits_playground_runs_the_chosen_model_and_judges_its_unclamped_samples():
    from superdiff.digits.gaussian import load_gaussian_models

    pg = playground("digits")
    pg.steps.value, pg.batch_size.value, pg.seed.value, pg.judge.value = 30, 4, 5, True
    samples = {}
    for model in ("net", "gaussian", "fokker_planck"):
        pg.model.value = model
        result = pg.generate()
        assert pg.error is None, pg.status.value
        samples[model] = result.samples
        expected = digits.load_pipeline(model)("3", "8", seed=5, num_inference_steps=30, batch_size=4)
        assert torch.equal(result.samples, expected.samples)  # the chosen model ran
        assert pg.judged.shape == (2, 4) and torch.isfinite(pg.judged).all()
        if model == "gaussian":  # exact log-densities of the final latents, before clamping to [−1, 1]
            gaussians, _ = load_gaussian_models()
            exact = torch.stack([gaussians[c].log_prob(expected.latents.double(), 0.01) for c in (3, 8)])
            assert torch.allclose(pg.judged, exact)
            assert not torch.allclose(
                pg.judged,
                torch.stack(
                    [g.log_prob(result.samples.double(), 0.01) for g in (gaussians[3], gaussians[8])]
                ),
            )
        assert ("exact densities" in pg.verdict.value) == (model == "gaussian")
    assert not torch.equal(samples["net"], samples["gaussian"])
    assert not torch.equal(samples["net"], samples["fokker_planck"])


def test_the_kits_warnings_of_a_run_show_in_the_status_line_each_run(recwarn):
    """A button's warnings went to the kernel's log: guidance w = 0.5 steered less than none, unseen."""
    pg = playground("digits")
    pg.steps.value, pg.batch_size.value, pg.guidance_scale.value = 10, 2, 0.5
    for silenced in (False, False, True):  # a warning shows once per line; notebooks often silence them
        with warnings.catch_warnings():
            if silenced:
                warnings.simplefilter("ignore")
            pg.generate()
        assert pg.error is None and pg.status.value.count("Warning: guidance_scale=0.5: each prompt") == 1
    pg.guidance_scale.value = 2.0
    pg.generate()
    assert "Done: 2 samples" in pg.status.value and "Warning" not in pg.status.value
    assert not [w for w in recwarn if "guidance_scale" in str(w.message)]  # noted, not also logged


def test_a_given_pipeline_has_no_model_choice_and_stable_diffusion_no_judge():
    pg = playground(digits.load_pipeline("gaussian"))
    assert pg.model.layout.display == "none" and "model" not in pg.params()
    assert pg.backend.pipeline(pg.params()).model == "gaussian" and pg.judge.layout.display != "none"
    sd = playground(testing.tiny_pipeline())
    sd.judge.value = True  # a client can tick a hidden checkbox
    sd.steps.value, sd.batch_size.value = 2, 1
    assert sd.judge.layout.display == "none" and sd.params()["judge"] is False
    assert sd.generate() is not None and sd.judged is None


def test_mode_changes_samples_and_kappa(toy):
    runs = {}
    for mode in ("and", "or"):
        toy.mode.value = mode
        runs[mode] = toy.generate()
    assert not torch.equal(runs["and"].samples, runs["or"].samples)
    or_kappa = runs["or"].kappa
    assert (or_kappa >= 0).all() and torch.allclose(or_kappa.sum(-1), torch.ones(()).double())
    assert toy.lift.disabled and not toy.temperature.disabled  # OR: temperature acts, lift does not


def test_single_model_mode_follows_it(toy):
    toy.mode.value, toy.steps.value = "prompt_1", 60
    result = toy.generate()
    assert torch.equal(result.kappa[..., 0], torch.ones(60, BATCH, dtype=result.kappa.dtype))
    assert (result.samples[:, 1] > 0).float().mean() > 0.9  # "up" has its modes at y = +1.5


def test_lift_moves_and_towards_model_one(toy):
    ups = []
    for lift in (-8.0, 8.0):
        toy.lift.value = lift
        ups.append((toy.generate().samples[:, 1] > 0).float().mean())
    assert ups[1] > ups[0]


def test_same_seed_same_result_other_seed_differs(toy):
    first, second = toy.generate().samples, toy.generate().samples
    toy.seed.value = 4
    assert torch.equal(first, second) and not torch.equal(first, toy.generate().samples)


def test_invalid_input_is_shown_not_raised(toy):
    toy.seed.value = -1
    assert toy.seed.value == 0  # the box itself holds seeds from 0 to 2**32 − 1
    set_past_bounds(toy.seed, -1)  # as a client can
    assert toy.generate() is None
    assert isinstance(toy.error, ValueError) and "Error: seed" in toy.status.value
    assert not toy.button.disabled
    toy.seed.value = 0
    assert toy.generate() is not None and "Error" not in toy.status.value


def test_backend_failure_is_shown_not_raised(toy, monkeypatch):
    def broken(p, on_step):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(toy.backend, "run", broken)
    assert toy.generate() is None
    assert "RuntimeError" in toy.status.value and "out of memory" in toy.status.value


def test_displays_as_its_widget(toy):
    bundle = (
        toy._repr_mimebundle_()
    )  # ipywidgets 7.x widgets have no _repr_mimebundle_ (make pytest-widgets7)
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == toy.widget.model_id
    assert toy.prompt_1.disabled and toy.guidance_scale.layout.display == "none"


def fake_colab(monkeypatch) -> list:
    """Pretend to run on Colab: a google.colab.output whose enable_custom_widget_manager() is recorded."""
    calls = []
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("enabled"))
    colab = types.ModuleType("google.colab")
    colab.output = output
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    return calls


@pytest.mark.parametrize("version, enabled", [("8.1.5", True), ("7.7.1", False)])
def test_colab_custom_widget_manager_only_for_ipywidgets_8(monkeypatch, version, enabled):
    calls = fake_colab(monkeypatch)
    monkeypatch.setattr(ipywidgets, "__version__", version)
    pg = playground("toy")
    assert calls == (["enabled"] if enabled else []) and isinstance(pg, Playground)


def test_no_colab_widget_manager_off_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(ipywidgets, "__version__", "8.1.5")
    assert enable_colab_widgets() is False


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        Playground("imagen")


def test_digits_backend():
    pg = playground("digits")
    pg.prompt_1.value, pg.prompt_2.value, pg.steps.value, pg.batch_size.value = "1", "7", 10, 2
    result = pg.generate()
    assert pg.error is None, pg.status.value
    assert tuple(result.images.shape) == (2, 64, 64, 3) and result.kappa.shape == (10, 2, 2)
    assert result.prompts == ["1", "7"] and pg.progress.value == 10 and len(pngs(pg.samples_out)) == 1


def test_digits_images_are_titled_with_the_classifier_label():
    pg = playground("digits")
    pg.steps.value, pg.batch_size.value, pg.guidance_scale.value = 20, 3, 4.0
    result = pg.generate()
    fig = pg.backend.figure(result, pg.params(), "t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    prob = digits.classifier().predict_proba(result.samples).detach()
    expected = [f"{int(d)} · p={float(q):.2f}" for q, d in zip(*prob.max(-1), strict=True)]
    assert titles == expected and len(titles) == 3
    assert all(t.startswith(("3 ", "8 ")) for t in titles)  # "3" AND "8": the classifier names one of them


def test_stable_diffusion_backend():
    pg = playground(testing.tiny_pipeline())
    pg.steps.value, pg.batch_size.value = 3, 1
    result = pg.generate()
    assert pg.error is None, pg.status.value
    assert tuple(result.images.shape) == (1, 64, 64, 3) and result.kappa.shape == (3, 1, 2)
    assert pg.progress.value == 3 and len(pngs(pg.kappa_out)) == 1
    pg.prompt_2.value = " "
    assert pg.generate() is None and "Error: prompt_2" in pg.status.value


def test_prompt_with_mathtext_dollars_is_drawn_and_a_failing_plot_keeps_the_result(monkeypatch):
    pg = playground(testing.tiny_pipeline())
    pg.steps.value, pg.batch_size.value = 2, 1
    pg.prompt_1.value = "a $x^$ b"  # invalid mathtext: matplotlib raises if it parses it
    result = pg.generate()
    assert pg.error is None, pg.status.value
    assert result is not None and len(pngs(pg.samples_out)) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(pg.backend, "figure", broken)
    kept = pg.generate()
    assert kept is not None and pg.result is kept and "plot failed" in pg.status.value


def test_and_kappa_is_plotted_as_a_running_mean_and_sd_grid_is_the_pipelines(monkeypatch):
    import superdiff.widgets as w

    calls = calls_to(monkeypatch, w, "kappa_figure")
    pg = playground("toy")
    pg.steps.value, pg.batch_size.value = 100, 4
    for mode in ("and", "or"):
        pg.mode.value = mode
        assert pg.generate() is not None, pg.status.value
    (*_, and_title, and_window), (*_, or_title, or_window) = (args for args, _, _ in calls[-2:])
    assert and_window == 5 and "running mean of 5 steps" in and_title
    assert or_window is None and "running mean" not in or_title

    pipe = testing.tiny_pipeline(timestep_spacing="leading")
    sd = playground(pipe)
    sd.steps.value, sd.batch_size.value = 1000, 1
    with pytest.warns(UserWarning, match="1 of the scheduler's steps have zero length") as warned:
        grid = sd.backend.sigmas(1000)
        assert torch.equal(grid, pipe.sigma_grid(1000)[0].double()) and len(grid) - 1 == 999
    kit = [w for w in warned if "zero length" in str(w.message)]
    assert len(kit) == 2  # the playground's grid warns as the pipeline's does


def test_load_sd_loads_through_the_clis_loader_with_the_bar_off():
    """The playground's Stable Diffusion loader (weights from the Hub) on the offline tiny model."""
    from superdiff import SuperDiffPipeline
    from superdiff.widgets import load_sd

    pipe = load_sd("tiny")
    assert isinstance(pipe, SuperDiffPipeline) and pipe._progress_bar_config == {"disable": True}
    assert pipe.unet.device.type == "cpu" and pipe.unet.dtype == torch.float32


def test_the_session_notice_is_for_the_apps_pages_only(monkeypatch):
    """In the app, a script that polls the page's kernel no more than a quarter of the idle time late (at
    most 30 s) and names the idle time; in Jupyter, nothing."""
    from superdiff import widgets
    from superdiff.limits import APP_CULL_ENV, APP_ENV

    monkeypatch.delenv(APP_ENV, raising=False)
    assert widgets.session_notice() is None
    monkeypatch.setenv(APP_ENV, "1")
    for idle, period, words in (("900", 30_000, "15 minutes"), ("8", 2_000, "8 seconds")):
        monkeypatch.setenv(APP_CULL_ENV, idle)
        script = widgets.session_notice().data
        assert f"}}, {period});" in script and f"idle for more than {words}" in script
        assert "MESSAGE" not in script and "PERIOD" not in script


# ----------------------------------------------------------------------------- controls, status, verdict


def test_avg_greys_out_both_lift_and_temperature(toy):
    toy.mode.value = "avg"
    assert toy.lift.disabled and toy.temperature.disabled
    toy.mode.value = "and"
    assert not toy.lift.disabled and toy.temperature.disabled


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("steps", 1001, "steps: expected an integer from 1 to 1000, got 1001"),
        ("batch_size", 2001, "batch_size: expected an integer from 1 to 2000, got 2001"),
        ("guidance_scale", -0.5, "guidance_scale: expected a finite number >= 0 and <= 1"),
    ],
)
def test_one_past_a_bound_is_refused(toy, name, value, message):
    widget = getattr(toy, name)
    widget.max, widget.min = max(widget.max, value), min(widget.min, value)
    widget.value = value
    assert toy.generate() is None and message in str(toy.error)


def test_a_prompt_of_exactly_the_widgets_limit_is_allowed():
    sd = playground(testing.tiny_pipeline())
    sd.check_params({**sd.params(), "prompt_1": "x" * 1000})
    with pytest.raises(ValueError, match="at most 1000 characters, got 1001"):
        sd.check_params({**sd.params(), "prompt_1": "x" * 1001})


@pytest.mark.parametrize("name", ["toy", "digits"])
def test_a_greyed_out_slider_is_not_passed_so_the_status_line_has_no_warning(name):
    """The kit's warnings of a run go to the status line (noting_warnings), not to Python's warnings, so
    this looked at recwarn, which a run never reaches: it passed with lift and temperature in every mode."""
    pg = playground(name)
    pg.steps.value, pg.batch_size.value = 4, 2
    pg.lift.value, pg.temperature.value = 3.0, 2.0
    for mode in ("and", "or", "avg", "prompt_1"):
        pg.mode.value = mode
        assert pg.generate() is not None, pg.status.value
        assert "Done" in pg.status.value and "Warning" not in pg.status.value, (mode, pg.status.value)


def test_status_line_says_samples_and_steps_run(toy):
    """The steps run, not those asked for: a scheduler with timestep_spacing "leading" drops one of 10 (the
    status had said 10 steps beside the warning that 9 ran), in the singular for one sample."""
    toy.steps.value, toy.batch_size.value = 12, 5
    toy.generate()
    assert "Done: 5 samples, 12 steps in " in toy.status.value
    pipe = testing.tiny_pipeline()
    pipe.scheduler = testing.sd_scheduler(timestep_spacing="leading", num_train_timesteps=10)
    sd = playground(pipe)
    sd.steps.value, sd.batch_size.value = 10, 1
    assert len(sd.generate().kappa) == 9
    assert "Done: 1 sample, 9 steps in " in sd.status.value and "sampling runs the other 9" in sd.status.value


def signed(x) -> str:
    return f"{round(float(x), 1) + 0.0:+.1f}"


def test_and_verdict_shows_the_signed_median_gap_and_the_itos(toy):
    toy.steps.value, toy.batch_size.value, toy.lift.value = 50, 64, -3.0
    result = toy.generate()
    up, down = toy.backend.models
    gap = up.log_prob(result.samples, 0.01) - down.log_prob(result.samples, 0.01)
    ito = result.log_q[-1, :, 0] - result.log_q[-1, :, 1]
    assert ito.median() < -1 and gap.median() < 0  # lift −3: the gap ends near −3, a signed median (not |·|)
    verdict = html.unescape(toy.verdict.value)
    assert f"median: <b>{signed(gap.median())} nats</b>" in verdict
    assert verdict.endswith(f"the Itô estimate says {signed(ito.median())}")


def test_only_and_is_plotted_as_a_running_mean(toy, monkeypatch):
    import superdiff.widgets as w

    calls = calls_to(monkeypatch, w, "kappa_figure")
    toy.mode.value = "avg"
    toy.generate()
    *_, title, window = calls[-1][0]
    assert window is None and "running mean" not in title


def test_live_kappa_figure_spans_the_whole_run_and_takes_a_window_longer_than_the_steps_so_far():
    sigmas = geometric_sigmas(20.0, 0.01, 20)
    fig = kappa_figure(torch.full((3, 2, 2), 0.5), sigmas, ["up", "down"], "t", window=5)  # 3 of 20 steps
    lo, hi = fig.axes[0].get_xlim()
    assert lo == pytest.approx(20.0 * 1.1) and hi == pytest.approx(float(sigmas[-2]) / 1.1)


def test_the_session_notice_polls_a_quarter_of_the_idle_time_and_names_seconds_below_two_minutes(monkeypatch):
    from superdiff import widgets
    from superdiff.limits import APP_CULL_ENV, APP_ENV

    monkeypatch.setenv(APP_ENV, "1")
    for idle, period, words in (
        ("60", 15_000, "60 seconds"),
        ("119", 29_000, "119 seconds"),
        ("120", 30_000, "2 minutes"),
    ):
        monkeypatch.setenv(APP_CULL_ENV, idle)
        script = widgets.session_notice().data
        assert f"}}, {period});" in script and f"idle for more than {words}" in script


# ----------------------------------------------------------------------------- limits on what users ask


def test_a_prompt_of_exactly_max_prompt_chars_and_punctuation_only_prompts_are_allowed():
    check_prompt("prompt", "x" * 2000)
    check_prompt("prompt", "?!")  # punctuation is visible text
    check_prompt("prompt", "$")  # a symbol too
    with pytest.raises(ValueError, match="at most 2000 characters, got 2001"):
        check_prompt("prompt", "x" * 2001)


def test_a_prompt_of_invisible_characters_only_is_refused():
    with pytest.raises(ValueError, match="prompt: expected visible text, got only invisible characters"):
        check_prompt("prompt", "\u200b\u200b")  # zero-width spaces: category Cf, no letter or mark to draw


def test_a_runs_warnings_are_noted_once_each():
    with noting_warnings() as notes:
        warn_caller("a")
        warn_caller("b")
        warn_caller("a")
    assert notes == ["a", "b"]


def test_abbreviate_keeps_n_characters():
    assert abbreviate("abcdef", 4) == "abc…" and abbreviate("abcd", 4) == "abcd"


# ----------------------------------------------------------------------------- what a run samples and shows


def test_the_toy_samples_as_superpose_does_with_one_generator_seeded_by_the_seed_box():
    """The seed box seeds one CPU generator that draws the starting noise and then the steps' noise, as the
    digits pipeline does: at the playground's defaults (AND, lift 0, seed 0), and in OR (T = 1) at seed 7."""
    pg = playground("toy")
    pg.steps.value, pg.batch_size.value = 20, 16
    models, sigmas = list(up_and_down()), geometric_sigmas(20.0, 0.01, 20)
    for mode, seed in (("and", 0), ("or", 7)):
        pg.mode.value = mode
        if mode != "and":
            pg.seed.value = seed
        g = torch.Generator().manual_seed(seed)
        x = sigmas[0] * torch.randn(16, 2, generator=g, dtype=torch.float64)
        expected = superpose(models, x, sigmas, mode=mode, generator=g)
        result = pg.generate()
        assert pg.error is None, pg.status.value
        assert torch.equal(result.samples, expected.samples) and torch.equal(result.kappa, expected.kappa)


def test_the_digits_network_is_judged_with_the_runs_seed():
    """The network's likelihood estimates a divergence with random probes: they are seeded by the run's seed,
    so the seed alone reproduces a run and its verdict."""
    from superdiff.digits.densities import log_densities

    pg = playground("digits")
    pg.steps.value, pg.batch_size.value, pg.seed.value, pg.judge.value = 10, 2, 6, True
    result = pg.generate()
    assert pg.error is None, pg.status.value
    sigma = float(result.sigmas[-1])
    expected = log_densities(digits.load_pipeline("net"), [3, 8], result.latents, sigma, seed=6)
    assert torch.allclose(pg.judged, expected.double())


def test_toy_samples_are_drawn_over_the_densities_at_the_runs_last_sigma_under_the_modes_title(
    toy, monkeypatch
):
    import superdiff.widgets as w

    calls = calls_to(monkeypatch, w.viz, "scatter_over_models")
    for mode, name in (("and", "AND"), ("avg", "average"), ("prompt_1", "up only")):
        toy.mode.value = mode
        result = toy.generate()
        (samples, _, sigma), kwargs, _ = calls[-1]
        assert torch.equal(samples, result.samples) and sigma == float(result.sigmas[-1])
        assert kwargs["title"] == f"{name}: 'up' and 'down'"


def test_live_kappa_plots_say_how_far_the_run_is_and_the_final_one_does_not(toy, monkeypatch):
    import superdiff.widgets as w

    calls = calls_to(monkeypatch, w, "kappa_figure")
    toy.redraw_seconds, toy.mode.value = 0.0, "or"
    toy.generate()
    live = [f"κ over σ, OR — step {i}/{STEPS}" for i in range(2, STEPS, 2)]
    assert [args[3] for args, _, _ in calls] == [*live, "κ over σ, OR"]


def test_kappa_plot_names_the_first_models_curve_after_it(toy, monkeypatch):
    """With two models the plot draws κ of the first one (κ of the second is 1 − it): its batch mean, named
    after “up”."""
    import superdiff.widgets as w

    calls = calls_to(monkeypatch, w, "kappa_figure")
    toy.mode.value = "or"
    result = toy.generate()
    lines = {line.get_label(): line for line in calls[-1][2].axes[0].get_lines()}
    mean = lines["κ of up (batch mean)"].get_ydata()
    assert torch.allclose(torch.as_tensor(mean).double(), result.kappa[:, :, 0].mean(1).double(), atol=1e-6)


def test_the_session_notice_without_an_idle_time_names_the_apps_and_polls_at_most_once_a_second(monkeypatch):
    """The app's --cull-idle can be as short as 1 s: a poll period of a quarter of it would round to 0 ms, a
    busy loop of requests."""
    from superdiff import app, widgets
    from superdiff.limits import APP_CULL_ENV, APP_ENV

    monkeypatch.setenv(APP_ENV, "1")
    monkeypatch.delenv(APP_CULL_ENV, raising=False)
    script = widgets.session_notice().data
    assert f"idle for more than {app.CULL_IDLE // 60} minutes" in script and "}, 30000);" in script
    for idle in ("1", "3"):
        monkeypatch.setenv(APP_CULL_ENV, idle)
        assert "}, 1000);" in widgets.session_notice().data


def test_a_run_leaves_no_pyplot_figure_open():
    """The digits' image grid is a pyplot figure: left open, every run's would show again under %matplotlib
    inline and pile up in the kernel."""
    pg = playground("digits")
    pg.steps.value, pg.batch_size.value = 5, 2
    before = plt.get_fignums()
    assert pg.generate() is not None and plt.get_fignums() == before


def png_width(data: str) -> int:
    """The width in pixels of a base64 PNG (its IHDR chunk)."""
    return struct.unpack(">I", base64.b64decode(data)[16:20])[0]


def test_the_digits_samples_fit_beside_the_kappa_plot():
    """Samples and κ sit side by side: 64-pixel digits are drawn small, not at Stable Diffusion's size."""
    pg = playground("digits")
    pg.steps.value, pg.batch_size.value = 5, 4
    pg.generate()
    (samples,), (kappa,) = pngs(pg.samples_out), pngs(pg.kappa_out)
    assert png_width(samples) <= png_width(kappa)


def test_a_tiny_negative_gap_is_shown_as_plus_zero():
    from superdiff.widgets import signed

    assert [signed(x) for x in (-0.04, 0.0, 0.04, -0.06, 1.0)] == ["+0.0", "+0.0", "+0.0", "-0.1", "+1.0"]


def test_a_fresh_playground_greys_out_temperature_for_its_default_and():
    pg = playground("toy")
    assert pg.mode.value == "and" and not pg.lift.disabled and pg.temperature.disabled


def test_the_seed_box_holds_every_seed_the_kernel_accepts(toy):
    toy.seed.value = MAX_SEED
    assert toy.seed.value == MAX_SEED == 2**32 - 1
    toy.check_params(toy.params())


@pytest.mark.parametrize("name", ["toy", "digits"])
def test_steps_and_batch_start_at_the_backends_defaults_below_their_maxima(name):
    pg = playground(name)
    b = pg.backend
    assert (pg.steps.value, pg.batch_size.value) == (b.steps, b.batch)
    assert b.steps < b.max_steps and b.batch < b.max_batch


def test_the_toy_hides_its_fixed_prompts_and_model_and_digits_shows_both():
    toy, digits = playground("toy"), playground("digits")

    def prompts_box(pg):
        return next(c for c in pg.widget.children if pg.prompt_1 in getattr(c, "children", ()))

    assert prompts_box(toy).layout.display == "none" and toy.model.layout.display == "none"
    assert prompts_box(digits).layout.display != "none" and digits.model.layout.display != "none"


def test_a_mode_the_backend_does_not_offer_is_refused_before_sampling():
    toy = playground("toy")
    modes = r"\['and', 'or', 'avg', 'prompt_1', 'prompt_2'\]"
    with pytest.raises(ValueError, match=f"mode: expected one of {modes}, got 'joint'"):
        toy.check_params({**toy.params(), "mode": "joint"})  # a mode of Stable Diffusion's playground


def test_the_digits_batch_is_bounded_by_the_digits_maximum():
    """README: batch size 1 … 2000 (toy) / 64 (digits)."""
    pg = playground("digits")
    pg.check_params({**pg.params(), "batch_size": 64})
    with pytest.raises(ValueError, match="batch_size: expected an integer from 1 to 64, got 65"):
        pg.check_params({**pg.params(), "batch_size": 65})


def test_the_status_line_gives_the_runs_time_to_a_tenth_of_a_second(toy):
    toy.generate()
    assert f"steps in {toy.seconds:.1f} s, judged in " in toy.status.value


def red(status: str) -> bool:
    """Whether the status line's colour is a red (#rrggbb with red well above green and blue)."""
    match = re.search(r"color:\s*#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})", status)
    r, g, b = (int(c, 16) for c in match.groups()) if match else (0, 0, 0)
    return r >= 0x99 and max(g, b) <= r // 2


def test_errors_show_in_red_and_done_does_not(toy):
    toy.generate()
    assert "Done" in toy.status.value and not red(toy.status.value)
    set_past_bounds(toy.seed, -1)
    toy.generate()
    assert "Error: seed" in toy.status.value and red(toy.status.value)


def test_the_status_line_says_what_judges_while_judging(toy):
    statuses = count_changes(toy.status, "value")
    toy.generate()
    assert any("Judging the samples by the exact densities" in c["new"] for c in statuses)


def test_or_verdict_gives_the_median_size_of_the_gap(toy):
    toy.mode.value = "or"
    result = toy.generate()
    up, down = toy.backend.models
    gaps = up.log_prob(result.samples, 0.01) - down.log_prob(result.samples, 0.01)
    assert f"(median |gap| {gaps.abs().median():.1f} nats)" in html.unescape(toy.verdict.value)


def test_the_status_line_shows_a_prompt_with_markup_as_text():
    toy = playground("toy")
    toy.prompt_2.value = "<b>anything</b>"
    assert toy.generate() is None
    assert "<b>" not in toy.status.value and "got '<b>anything</b>'" in html.unescape(toy.status.value)


@pytest.mark.parametrize("name", ["toy", "tiny"])
def test_tiny_backends_sample_on_one_torch_thread(name, monkeypatch):
    """Tiny tensors lose 10–30× on more threads of a shared CPU (the digits pipeline takes one itself)."""
    pg = playground(name)
    pg.steps.value, pg.batch_size.value = 3, 1
    threads, run = [], pg.backend.run

    def counting(p, on_step):
        return run(p, lambda i, kappa: threads.append(torch.get_num_threads()) or on_step(i, kappa))

    monkeypatch.setattr(pg.backend, "run", counting)
    outside = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pg.generate()
    finally:
        torch.set_num_threads(outside)
    assert pg.error is None, pg.status.value
    assert threads == [1, 1, 1]


def test_the_digits_judge_measures_the_chosen_digits():
    from superdiff.digits.gaussian import load_gaussian_models

    pg = playground("digits")
    pg.model.value, pg.prompt_1.value, pg.prompt_2.value = "gaussian", "1", "7"
    pg.steps.value, pg.batch_size.value, pg.judge.value = 10, 2, True
    result = pg.generate()
    assert pg.error is None, pg.status.value
    gaussians, _ = load_gaussian_models()
    sigma = float(result.sigmas[-1])
    exact = torch.stack([gaussians[c].log_prob(result.latents.double(), sigma) for c in (1, 7)])
    assert torch.allclose(pg.judged, exact)


def test_the_digits_progress_bar_moves_once_per_step():
    """The bar's maximum clamps it, so a bar one step ahead still ended full: it filled a step early."""
    pg = playground("digits")
    pg.steps.value, pg.batch_size.value = 6, 1
    progress = count_changes(pg.progress, "value")
    assert pg.generate() is not None and pg.progress.max == 6
    assert [c["new"] for c in progress] == list(range(1, 7))


def test_a_schedulers_dropped_step_is_noted_in_the_status_line_not_also_logged(recwarn):
    pipe = testing.tiny_pipeline()
    pipe.scheduler = testing.sd_scheduler(timestep_spacing="leading", num_train_timesteps=10)
    sd = playground(pipe)
    sd.steps.value, sd.batch_size.value = 10, 1
    assert sd.generate() is not None and "sampling runs the other 9" in sd.status.value
    assert not [w for w in recwarn if "zero length" in str(w.message)]
