"""An ipywidgets playground for SuperDiff: pick prompts, mode, lift, ...; watch κ move while sampling.

    from superdiff.widgets import playground
    playground("toy")      # the paper's 2-D up/down toy, exact models, seconds on CPU
    playground("digits")   # the 8×8 digits models (network, Fokker–Planck network, Gaussians); digit prompts
    playground(pipe)       # any SuperDiffPipeline (Stable Diffusion), e.g. superdiff.testing.tiny_pipeline()

"judge" (toy and digits) measures log q_1 − log q_2 of the samples by the models' own densities, not by the
Itô estimate. The digits and Stable Diffusion modules are imported only when their backend is built.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor

from . import viz
from ._torch import gen, one_thread
from .limits import APP_CULL_ENV, APP_ENV, MAX_SEED, noting_warnings
from .pipeline_common import check_finite, check_int, check_seed_value, parse_mode, superpose_options
from .sampling import geometric_sigmas, superpose
from .toy import up_and_down

TOY_SIGMA_MAX, TOY_SIGMA_MIN = 20.0, 0.01  # the toy's σ grid: from pure noise to nearly clean data
LIVE_UPDATES = 10  # the κ plot is redrawn at most about this many times per run
REDRAW_SECONDS = 0.5  # ... and not more often than this: a redraw costs ~0.1–0.4 s, fast runs need none
# One run at a time per kernel (one open page of the app), whichever playground starts it: the app's kernel
# cap counts the memory of one run per kernel (README, "Teaching with the app").
RUN_LOCK = threading.Lock()
WAIT_SECONDS = 600.0  # how long generate() waits for a run in progress before it raises
DPI = 80
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SD_MODEL = "CompVis/stable-diffusion-v1-4"
# The controls' ranges. A client (a browser, or anything speaking the widget protocol) can change a widget's
# min and max, so generate() checks every value against these and the backend's bounds, never the widgets'.
LIFT_RANGE, TEMPERATURE_RANGE = (-10.0, 10.0), (0.1, 5.0)
MAX_PROMPT_CHARS = 1_000  # CLIP keeps 77 tokens anyway

CORE_MODES = [("AND (equal density)", "and"), ("OR (mixture)", "or"), ("average (κ = 1/N)", "avg")]
StepFn = Callable[[int, Tensor], None]  # on_step(i, κ (B, N) that moved x) after step i


# ----------------------------------------------------------------------------- backends


def acting(p: dict) -> dict:
    """lift and temperature where the mode uses them, else their defaults (a greyed-out slider is ignored)."""
    return {
        "lift": p["lift"] if p["mode"] == "and" else 0.0,
        "temperature": p["temperature"] if p["mode"] == "or" else 1.0,
    }


class ToyBackend:
    """The exact "up" and "down" 2-D mixtures (paper Fig. 2) sampled with the core ``superpose``."""

    name = "toy"
    modes = CORE_MODES + [("up only", "prompt_1"), ("down only", "prompt_2")]
    prompts = ("up", "down")
    choices = None  # no prompt to choose: the two models are fixed
    guidance = None  # no classifier-free guidance: the models are unconditional
    steps, max_steps, batch, max_batch = 200, 1000, 300, 2000
    tiny = True  # run on one torch thread
    model_choices = None  # one pair of models
    judge_default = True  # exact densities: judging is free

    def __init__(self):
        self.models = up_and_down()

    def sigmas(self, steps: int) -> Tensor:
        """The σ grid of a run."""
        return geometric_sigmas(TOY_SIGMA_MAX, TOY_SIGMA_MIN, steps)

    def run(self, p: dict, on_step: StepFn):
        """Sample the superposition; returns a SuperpositionResult."""
        sigmas, g = self.sigmas(p["steps"]), gen(p["seed"])
        x = sigmas[0] * torch.randn(p["batch_size"], 2, generator=g, dtype=torch.float64)
        options = superpose_options(p["mode"], 2, *parse_mode(p["mode"], 2), **acting(p), log_weights=None)
        return superpose(
            list(self.models),
            x,
            sigmas,
            **options,
            generator=g,
            callback=lambda d: on_step(d["i"], d["kappa"]),
        )

    def judge(self, result, p: dict) -> Tensor:
        """Exact log q_up and log q_down of the samples, (2, B)."""
        sigma = float(result.sigmas[-1])
        return torch.stack([m.log_prob(result.samples, sigma) for m in self.models])

    def judge_name(self, p: dict) -> str:
        return "the exact densities"

    def figure(self, result, p: dict, title: str):
        """Samples over the exact densities of up (blue) and down (orange)."""
        fig = Figure(figsize=(4.2, 4.2))
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
        ax = fig.subplots()
        viz.scatter_over_models(result.samples, self.models, TOY_SIGMA_MIN, ax=ax, title=title)
        return fig


class PipelineBackend:
    """A SuperDiffPipeline (Stable Diffusion): free-text prompts, classifier-free guidance."""

    name = "sd"
    modes = CORE_MODES + [
        ("prompt 1 only", "prompt_1"),
        ("prompt 2 only", "prompt_2"),
        ("joint prompt (“A that looks like B”)", "joint"),
    ]
    prompts = ("a flamingo", "a candy cane")  # the paper's example
    choices = None  # free text
    guidance = (7.5, 20.0)  # (default, slider max)
    steps, max_steps, batch, max_batch = 100, 1000, 1, 8
    tiny = False
    model_choices = None  # the pipeline given
    # no density independent of the Itô estimator at this scale: an ODE likelihood takes minutes
    judge = None
    judge_default = False

    def __init__(self, pipe, steps: int | None = None, batch: int | None = None, tiny: bool = False):
        self.pipe, self.tiny = pipe, tiny or self.tiny
        self.steps, self.batch = steps or self.steps, batch or self.batch

    def pipeline(self, p: dict):
        """The pipeline that runs ``p``."""
        return self.pipe

    def sigmas(self, steps: int) -> Tensor:
        """The σ grid a call samples on (the pipeline's: zero-length scheduler steps dropped)."""
        return self.pipe.sigma_grid(steps)[0].double().cpu()

    def size(self) -> dict:
        """height and width: the checkpoint's native size (as diffusers picks it)."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return {"height": side, "width": side}

    def run(self, p: dict, on_step: StepFn):
        """Call the pipeline; returns its SuperDiffOutput."""

        def callback(pipe, step, timestep, kwargs):
            on_step(step, kwargs["kappa"])
            return kwargs

        return self.pipeline(p)(
            p["prompt_1"],
            p["prompt_2"],
            seed=p["seed"],
            num_inference_steps=p["steps"],
            batch_size=p["batch_size"],
            guidance_scale=p["guidance_scale"],
            mode=p["mode"],
            **acting(p),
            callback_on_step_end=callback,
            **self.size(),
        )

    def image_titles(self, result) -> list[str] | None:
        """A title under each image: none for Stable Diffusion."""
        return None

    def figure(self, result, p: dict, title: str):
        """The images in a grid, titled with the mode and prompts."""
        images, titles = result.images, self.image_titles(result)
        size = 1.3 if images.shape[1] <= 64 else 3.0
        fig = viz.image_grid(images, titles=titles, ncols=min(len(images), 4), size=size)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig


class DigitsBackend(PipelineBackend):
    """The shipped 8×8 digits pipeline: prompts are digit names, CPU in a second."""

    name = "digits"
    modes = CORE_MODES + [("prompt 1 only", "prompt_1"), ("prompt 2 only", "prompt_2")]
    prompts = ("3", "8")
    guidance = (2.0, 10.0)  # the digits model's default w
    steps, max_steps, batch, max_batch = 100, 1000, 8, 64
    tiny = True
    MODELS = [  # superdiff.digits.MODELS, as the dropdown names them
        ("trained network", "net"),
        ("Fokker–Planck network", "fokker_planck"),
        ("Gaussian per digit (exact)", "gaussian"),
    ]

    def __init__(self, pipe=None, steps: int | None = None, batch: int | None = None):
        from .digits import NAMES, load_pipeline

        super().__init__(pipe if pipe is not None else load_pipeline(), steps, batch)
        self.choices = [(f"{i} ({name})", str(i)) for i, name in enumerate(NAMES)]
        self.model_choices = self.MODELS if pipe is None else None  # a pipeline given is the one to use
        self.pipes = {self.pipe.model: self.pipe}

    def pipeline(self, p: dict):
        """The digits pipeline of ``p["model"]`` (loaded on first use), else the one given."""
        from .digits import load_pipeline

        model = p.get("model", self.pipe.model)
        if model not in self.pipes:
            self.pipes[model] = load_pipeline(model)
        return self.pipes[model]

    def judge(self, result, p: dict) -> Tensor:
        """log q of the two prompts' models at the final samples (not clamped), (2, B): exact for the
        Gaussians, else the network's own PF-ODE likelihood (≈ 1 s for 8 samples on one core)."""
        from .digits.densities import log_densities

        labels = [int(p["prompt_1"]), int(p["prompt_2"])]
        sigma = float(result.sigmas[-1])
        return log_densities(self.pipeline(p), labels, result.latents, sigma, seed=p["seed"])

    def judge_name(self, p: dict) -> str:
        exact = self.pipeline(p).model == "gaussian"
        return "the exact densities" if exact else "the network's own PF-ODE likelihood"

    def sigmas(self, steps: int) -> Tensor:
        """The σ grid the digits models were trained for."""
        from .digits import default_sigmas

        return default_sigmas(steps)

    def size(self) -> dict:
        return {}  # always 8×8 digits, shown as 64×64

    def image_titles(self, result) -> list[str]:
        """The evaluation classifier's digit and its probability for each sample, e.g. "3 · p=0.97"."""
        from .digits import classifier

        with torch.no_grad():
            prob, digit = classifier().predict_proba(result.samples.float()).max(-1)
        return [f"{d} · p={q:.2f}" for d, q in zip(digit.tolist(), prob.tolist(), strict=True)]


def served_by_app() -> bool:
    """True in a kernel of the app, where every open page would load its own copy of a model."""
    return os.environ.get(APP_ENV) == "1"


# Polls the page's kernel (its REST resource needs no kernel message, so polling keeps no kernel alive). Gone
# (404), or refused (401/403: a restarted server does not know the page's cookie): a banner with a Reload
# button. No answer twice: a "connection lost" banner, removed when the server answers again.
SESSION_JS = """<script>
(() => {
  if (window.superdiffSessionWatch) return;
  window.superdiffSessionWatch = true;
  const config = JSON.parse(document.getElementById("jupyter-config-data")?.textContent || "{}");
  if (!config.kernelId) return;
  const url = `${config.baseUrl || "/"}api/kernels/${config.kernelId}`;
  const note = document.createElement("div");
  note.setAttribute("role", "alert");
  note.style.cssText = "position: fixed; top: 0; left: 0; right: 0; z-index: 10000; padding: 12px; "
    + "background: #b00020; color: white; font: 16px sans-serif; text-align: center;";
  const text = document.createElement("span");
  const button = document.createElement("button");
  button.textContent = "Reload";
  button.style.cssText = "margin-left: 12px; min-height: 32px; min-width: 64px; font-size: 16px;";
  button.onclick = () => location.reload();
  note.append(text, button);
  let misses = 0;
  const timer = setInterval(async () => {
    let status = 0;
    try {
      status = (await fetch(url, {credentials: "same-origin", cache: "no-store"})).status;
    } catch (err) {
      misses += 1;
    }
    if ([401, 403, 404].includes(status)) {
      clearInterval(timer);
      note.id = "superdiff-session-ended";
      text.textContent = MESSAGE;
      document.body.prepend(note);
    } else if (status) {
      misses = 0;
      note.remove();
    } else if (misses >= 2) {
      note.id = "superdiff-connection-lost";
      text.textContent = "The connection to the server is lost; retrying.";
      document.body.prepend(note);
    }
  }, PERIOD);
})();
</script>"""


def session_notice():
    """In a page of the app, an HTML output that shows a banner asking to reload once the page's kernel is
    gone (shut down when idle, or the server stopped): without it, controls silently do nothing. Elsewhere
    None (Jupyter shows a dead kernel itself)."""
    if not served_by_app():
        return None
    from IPython.display import HTML

    idle = int(os.environ.get(APP_CULL_ENV, "900"))
    after = f"{idle // 60} minutes" if idle >= 120 else f"{idle} seconds"
    message = (
        f"This page has stopped: it was idle for more than {after}, ran out of memory, or the server "
        "restarted. Reload the page to start again (the controls start from their defaults)."
    )
    period_ms = 1000 * max(1, min(30, idle // 4))  # at most a quarter of the idle time late, at most 30 s
    return HTML(SESSION_JS.replace("MESSAGE", json.dumps(message)).replace("PERIOD", str(period_ms)))


def load_sd(model: str = SD_MODEL):
    """Stable Diffusion from the Hub (or cache) on the best device, float16 on accelerators."""
    from .generate import load, pick_device, pick_dtype

    device = pick_device("auto")
    pipe = load(model, pick_dtype("auto", device), device, cpu_offload=False, attention_slicing=False)
    pipe.set_progress_bar_config(disable=True)  # the playground has its own progress bar
    return pipe


def make_backend(backend):
    """A backend from "toy", "digits", "tiny", "sd" or a pipeline object."""
    if backend == "toy":
        return ToyBackend()
    if backend == "digits":
        return DigitsBackend()
    if backend == "tiny":
        from .testing import tiny_pipeline

        return PipelineBackend(tiny_pipeline(), steps=20, batch=4, tiny=True)
    if backend == "sd":
        return PipelineBackend(load_sd())
    if isinstance(backend, (ToyBackend, PipelineBackend)):
        return backend
    if hasattr(backend, "unet"):
        return PipelineBackend(backend)
    if hasattr(backend, "labels_of"):
        return DigitsBackend(backend)
    raise ValueError(
        f"backend: expected 'toy', 'digits', 'tiny', 'sd' or a SuperDiff pipeline, got {backend!r}"
    )


# ----------------------------------------------------------------------------- plots as widget outputs


def png_output(fig) -> dict:
    """A figure as one Output-widget output (PNG), then closed.

    Set as ``Output.outputs`` this works from a button callback, without a kernel (tests) and without
    flicker: ``with out: display(fig)`` only captures inside a running IPython kernel.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)  # else pyplot figures (image_grid) pile up and show again under %matplotlib inline
    data = {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": "<Figure>"}
    return {"output_type": "display_data", "data": data, "metadata": {}}


def kappa_figure(kappa: Tensor, sigmas: Tensor, labels, title: str, window: int | None = None):
    """κ over σ for the steps done so far, on the x-range of the whole run (sampling runs left → right).

    ``window``: a running mean over that many steps (AND's per-step κ is mostly noise, notebook 2).
    """
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    window = None if window is None else min(window, len(kappa))
    viz.plot_kappa(kappa, sigmas[: len(kappa) + 1], labels=labels, window=window, ax=ax, title=title)
    ax.set_xlim(float(sigmas[0]) * 1.1, float(sigmas[len(sigmas) - 2]) / 1.1)  # the last σ may be 0
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)  # fixed: tight_layout triples the cost
    return fig


# ----------------------------------------------------------------------------- the playground


def plural(n: int, noun: str) -> str:
    """n and the noun, in the plural unless n is 1: "1 sample", "2 samples"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def signed(value) -> str:
    """A number of nats with its sign and one decimal, "+0.0" for a tiny negative one."""
    return f"{round(float(value), 1) + 0.0:+.1f}"


# the widgets whose values make a run's parameters
CONTROLS = "prompt_1 prompt_2 mode model lift guidance_scale temperature steps batch_size seed judge".split()


class Playground:
    """Controls, a Generate button, a progress bar, the samples and a live κ plot; ``.widget`` is the VBox."""

    def __init__(self, backend="toy"):
        self.backend = make_backend(backend)
        self.result, self.error, self.seconds = None, None, None
        self.judged: Tensor | None = None  # (2, B) log q of the last run's samples, if judged
        self.redraw_seconds = REDRAW_SECONDS
        self.thread: threading.Thread | None = None  # the run a click started
        self._busy = RUN_LOCK  # held for the whole of a run
        self._running = False  # this playground's run is the active one
        self._make_controls()
        self._defaults = {name: getattr(self, name).value for name in CONTROLS}
        self._make_outputs()
        self.widget = self._layout()
        self.mode.observe(self._on_mode, names="value")
        self._on_mode()
        self.button.on_click(self._on_click)

    def _make_controls(self) -> None:
        b, wide = self.backend, {"style": {"description_width": "initial"}}
        if b.choices is not None:
            self.prompt_1 = widgets.Dropdown(options=b.choices, value=b.prompts[0], description="prompt 1")
            self.prompt_2 = widgets.Dropdown(options=b.choices, value=b.prompts[1], description="prompt 2")
        else:
            self.prompt_1 = widgets.Text(b.prompts[0], description="prompt 1", disabled=b.name == "toy")
            self.prompt_2 = widgets.Text(b.prompts[1], description="prompt 2", disabled=b.name == "toy")
        self.mode = widgets.Dropdown(options=b.modes, value="and", description="mode")
        models = b.model_choices or [("the given one", None)]
        self.model = widgets.Dropdown(options=models, value=models[0][1], description="model")
        low, high = LIFT_RANGE
        self.lift = widgets.FloatSlider(0.0, min=low, max=high, step=0.1, description="lift (AND)", **wide)
        guidance, guidance_max = b.guidance or (1.0, 1.0)
        self.guidance_scale = widgets.FloatSlider(
            guidance, min=0, max=guidance_max, step=0.1, description="guidance w", **wide
        )
        low, high = TEMPERATURE_RANGE
        self.temperature = widgets.FloatSlider(
            1.0, min=low, max=high, step=0.1, description="temperature T (OR)", **wide
        )
        self.steps = widgets.IntSlider(b.steps, min=1, max=b.max_steps, description="steps")
        self.batch_size = widgets.IntSlider(b.batch, min=1, max=b.max_batch, description="batch size", **wide)
        self.seed = widgets.BoundedIntText(0, min=0, max=MAX_SEED, description="seed")
        self.button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.progress = widgets.IntProgress(0, min=0, max=b.steps, description="sampling")
        self.judge = widgets.Checkbox(b.judge_default, description="judge by the models' densities", **wide)
        self.status = widgets.HTML("Press Generate.")
        self.verdict = widgets.HTML("")  # the judge's line

    def _make_outputs(self) -> None:
        self.samples_out = widgets.Output(layout={"min_width": "300px"})
        self.kappa_out = widgets.Output(layout={"min_width": "300px"})

    def _layout(self) -> widgets.VBox:
        b = self.backend
        title = widgets.HTML(
            f"<b>SuperDiff playground</b> — {b.name}: superpose "
            f"{'“up” and “down”' if b.name == 'toy' else 'two prompts'} with OR / AND"
        )
        prompts = widgets.HBox([self.prompt_1, self.prompt_2])
        prompts.layout.display = "none" if b.name == "toy" else None
        self.guidance_scale.layout.display = "none" if b.guidance is None else None
        self.model.layout.display = "none" if b.model_choices is None else None
        self.judge.layout.display = "none" if b.judge is None else None
        return widgets.VBox(
            [
                title,
                prompts,
                widgets.HBox([self.mode, self.model, self.seed]),
                widgets.HBox([self.lift, self.temperature, self.guidance_scale]),
                widgets.HBox([self.steps, self.batch_size, self.judge]),
                widgets.HBox([self.button, self.progress]),
                self.status,
                self.verdict,
                widgets.HBox([self.samples_out, self.kappa_out]),
            ]
        )

    def reset(self) -> None:
        """Every control back to its value when the playground was made, whatever the sliders say."""
        for name, value in self._defaults.items():
            getattr(self, name).value = value

    def _on_mode(self, _change=None) -> None:
        """Lift only acts on AND and temperature only on OR: grey out the other one."""
        self.lift.disabled = self.mode.value != "and"
        self.temperature.disabled = self.mode.value != "or"

    def params(self) -> dict:
        """The current control values as pipeline arguments."""
        return {
            "prompt_1": self.prompt_1.value,
            "prompt_2": self.prompt_2.value,
            "mode": self.mode.value,
            "lift": self.lift.value,
            "guidance_scale": self.guidance_scale.value,
            "temperature": self.temperature.value,
            "steps": self.steps.value,
            "seed": self.seed.value,
            "batch_size": self.batch_size.value,
            **({"model": self.model.value} if self.backend.model_choices else {}),
            "judge": bool(self.judge.value) and self.backend.judge is not None,
        }

    def check_params(self, p: dict) -> None:
        """Every value against the backend's bounds, not the widgets' min and max (a client can set those)."""
        b = self.backend
        modes = [value for _, value in b.modes]
        if p["mode"] not in modes:
            raise ValueError(f"mode: expected one of {modes}, got {p['mode']!r}")
        models = [value for _, value in b.model_choices or []]
        if "model" in p and p["model"] not in models:
            raise ValueError(f"model: expected one of {models}, got {p['model']!r}")
        for name in ("prompt_1", "prompt_2"):
            self._check_prompt(name, p[name])
        check_int("steps", p["steps"], 1, high=b.max_steps)
        check_int("batch_size", p["batch_size"], 1, high=b.max_batch)
        check_seed_value("seed", p["seed"])
        check_finite("lift", p["lift"], *LIFT_RANGE)
        check_finite("temperature", p["temperature"], *TEMPERATURE_RANGE)
        check_finite("guidance_scale", p["guidance_scale"], 0.0, (b.guidance or (1.0, 1.0))[1])

    def _check_prompt(self, name: str, prompt) -> None:
        """Text of at most MAX_PROMPT_CHARS, one of the backend's choices if any; fixed for the toy."""
        b, index = self.backend, int(name[-1]) - 1
        if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
            got = f"{len(prompt)} characters" if isinstance(prompt, str) else repr(prompt)
            raise ValueError(f"{name}: expected text of at most {MAX_PROMPT_CHARS} characters, got {got}")
        if b.name == "toy" and prompt != b.prompts[index]:
            raise ValueError(
                f"{name}: the toy's models are fixed: expected {b.prompts[index]!r}, got {prompt!r}"
            )
        if b.choices is not None and prompt not in [value for _, value in b.choices]:
            raise ValueError(f"{name}: expected one of {[value for _, value in b.choices]}, got {prompt!r}")

    def labels(self, p: dict) -> list[str]:
        """Names of the superposed models, for legends."""
        return [str(p["prompt_1"]), str(p["prompt_2"])]

    def mode_name(self, p: dict) -> str:
        """The mode as the dropdown shows it, without the explanation: "AND", "up only", ..."""
        return {v: k for k, v in self.backend.modes}.get(p["mode"], p["mode"]).split(" (")[0]

    def title(self, p: dict) -> str:
        """E.g. "AND: 'up' and 'down'"."""
        return f"{self.mode_name(p)}: {p['prompt_1']!r} and {p['prompt_2']!r}"

    def _on_click(self, _button=None) -> None:
        """Run in a thread: the kernel stays free to receive clicks, and one while a run is active is ignored.

        Run in the kernel's own thread, a double click would queue a second run behind the first.
        """
        if not self._busy.acquire(blocking=False):
            if not self._running:  # another playground of this page is sampling
                self._set_status("Another playground on this page is sampling: press Generate after it.")
            return
        self._running = True
        try:
            self.thread = threading.Thread(target=self._run_locked, name="superdiff-playground", daemon=True)
            self.thread.start()
        except BaseException:
            self._running = False
            self._busy.release()
            raise

    def generate(self, timeout: float = WAIT_SECONDS):
        """Sample with the current controls, show samples and κ; return the result (also kept in ``.result``).

        A run in progress (a click, or another playground in this kernel) is waited for first, up to
        ``timeout`` seconds (then TimeoutError). Errors of the run itself (a ValueError for invalid input,
        anything else) are shown in the status line and kept in ``.error``, never raised: an exception in a
        button callback would vanish into the browser console.
        """
        if not self._busy.acquire(timeout=timeout):
            raise TimeoutError(f"generate: another run was still active after {timeout:g} s")
        self._running = True
        return self._run_locked()

    def _run_locked(self):
        """One run, with ``_busy`` acquired (and ``_running`` set) by the caller; both undone at the end."""
        try:
            return self._generate()
        finally:
            self._running = False
            self._busy.release()

    def _generate(self):
        self.button.disabled = True
        start = time.perf_counter()
        try:
            self.result, self.error, self.judged = None, None, None
            self.verdict.value = ""
            p = self.params()
            self.check_params(p)
            self.result, notes = self._sample_noting_warnings(p)
            self.seconds = time.perf_counter() - start
            figure = self.backend.figure(self.result, p, viz.plain(self.title(p)))  # a "$" is not mathtext
            self.samples_out.outputs = (png_output(figure),)
            self._show_kappa(self.result.kappa, self.result.sigmas, p, "")
            judged = ""
            if p["judge"]:
                tic = time.perf_counter()
                self._judge(p)
                judged = f", judged in {time.perf_counter() - tic:.1f} s"
            steps, samples = self.result.kappa.shape[:2]  # the steps run: a scheduler may drop some
            self._set_status(
                f"Done: {plural(samples, 'sample')}, {plural(steps, 'step')} in {self.seconds:.1f} s"
                f"{judged}." + "".join(f" Warning: {note}" for note in notes)
            )
        except Exception as err:  # any failure, see the docstring; a result already sampled is kept
            self.error = err
            if self.result is None:  # no plot of an earlier run under this run's error
                self.samples_out.outputs, self.kappa_out.outputs, self.progress.value = (), (), 0
            kind = "" if isinstance(err, ValueError) else f" ({type(err).__name__})"
            self._set_status(f"Error{kind}: {err}", error=True)
        finally:
            self.button.disabled = False
        return self.result

    def _sample_noting_warnings(self, p: dict) -> tuple:
        """(result, the kit's warnings of the run): a button's warnings would go to the kernel's log."""
        with noting_warnings() as notes:
            return self._sample(p), notes

    def _sample(self, p: dict):
        """Run the backend, moving the progress bar every step and redrawing κ every few steps."""
        sigmas = self.backend.sigmas(p["steps"])
        n = len(sigmas) - 1  # the steps that run: a scheduler may have fewer than asked
        every, kappas, last = max(1, n // LIVE_UPDATES), [], time.perf_counter()
        self.progress.max, self.progress.value = n, 0
        self._set_status(f"Sampling {self.title(p)} …")

        def on_step(i: int, kappa: Tensor) -> None:
            nonlocal last
            kappas.append(kappa.detach().float().cpu())
            self.progress.value = i + 1
            due = (i + 1) % every == 0 and i + 1 < n and time.perf_counter() - last >= self.redraw_seconds
            if due:
                self._show_kappa(torch.stack(kappas), sigmas, p, f" — step {i + 1}/{n}")
                last = time.perf_counter()

        with one_thread() if self.backend.tiny else nullcontext():
            return self.backend.run(p, on_step)

    def _judge(self, p: dict) -> None:
        """Is AND's promise kept? log q_1 − log q_2 of the samples by densities, not by the Itô estimate."""
        how = self.backend.judge_name(p)
        self._set_status(f"Judging the samples by {how} …")
        self.judged = self.backend.judge(self.result, p).double().cpu()
        judged = self.judged[0] - self.judged[1]
        ito = self.result.log_q[-1, :, 0] - self.result.log_q[-1, :, 1]
        a, b = (html.escape(f"“{name}”") for name in self.labels(p))
        if p["mode"] == "or":  # a mixture's gaps have two signs: their median says nothing
            self.verdict.value = (
                f"<b>{int((judged > 0).sum())} of {len(judged)}</b> samples are more likely under {a} "
                f"than under {b}, judged by {how} (median |gap| {judged.abs().median():.1f} nats); the Itô "
                f"estimate says {int((ito > 0).sum())}"
            )
            return
        self.verdict.value = (
            f"log q {a} − log q {b} at the samples, median: <b>{signed(judged.median())} nats</b> judged by "
            f"{how} (median |gap| {judged.abs().median():.1f}); the Itô estimate says "
            f"{signed(ito.median())}"
        )

    def _show_kappa(self, kappa: Tensor, sigmas: Tensor, p: dict, suffix: str) -> None:
        window = max(1, (len(sigmas) - 1) // 20) if p["mode"] == "and" else None
        smoothed = f", running mean of {window} steps" if window else ""
        title = f"κ over σ, {self.mode_name(p)}{smoothed}{suffix}"
        fig = kappa_figure(kappa, sigmas, self.labels(p), title, window)
        self.kappa_out.outputs = (png_output(fig),)

    def _set_status(self, text: str, error: bool = False) -> None:
        color = "#c62828" if error else "inherit"
        self.status.value = f'<span style="color:{color}">{html.escape(text, quote=False)}</span>'

    def _repr_mimebundle_(self, **kwargs):
        if hasattr(self.widget, "_repr_mimebundle_"):  # ipywidgets 8
            return self.widget._repr_mimebundle_(**kwargs)
        view = {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id}  # as 7.x shows it
        return {"text/plain": f"SuperDiff playground ({self.backend.name})", WIDGET_VIEW: view}

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def enable_colab_widgets() -> bool:
    """On Colab with ipywidgets >= 8, switch on Colab's custom widget manager; True if it was switched on.

    Colab renders its default ipywidgets (7.7.1) itself; 8.x widgets need the custom manager.
    """
    if "google.colab" not in sys.modules or int(widgets.__version__.split(".")[0]) < 8:
        return False
    from google.colab import output

    output.enable_custom_widget_manager()
    return True


def playground(backend="toy") -> Playground:
    """A SuperDiff playground on "toy", "digits", "tiny" (random offline SD), "sd" (v1-4) or a pipeline."""
    enable_colab_widgets()
    return Playground(backend)
