"""The playground in a real browser: JupyterLab and the Voilà app, driven by headless Chromium.

Playwright for Python drives Debian's Chromium (Playwright's own browser download is not used). Each
test starts its server on a free localhost port with a token, sets controls, presses Generate and
checks what a user sees: a progress bar that moves while sampling, a κ plot and samples drawn, no
widget error. Screenshots land in outputs/e2e/ for a human to look at. Run with `make e2e`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest
from servers import free_port, log_tail, running

from superdiff.widgets import REDRAW_SECONDS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_playground.ipynb"
SHOTS = ROOT / "outputs" / "e2e"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# A root user in a sandbox, and a closed network: without the networking flags connections are refused.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--disable-sync",
    "--no-first-run",
]
SERVER_TIMEOUT, PAGE_TIMEOUT, RUN_TIMEOUT = 90, 120, 60  # seconds
WIDGET_ERRORS = (
    "Error displaying widget",
    "model not found",
    "Click to show javascript error",  # ipywidgets' view of a widget that failed to render
)
ERROR_TEXTS = WIDGET_ERRORS + (
    "Traceback",
    "There was an error when executing cell",  # Voilà's error output
    "Error Starting Kernel",
    "Kernel Restarting",
)
# Per playground: controls to set (the dropdown, slider and checkbox labels), enough steps that a run lasts
# about a second, so the browser can see the progress bar between 0 and 100 %, and the judge's verdict.
JUDGE = "judge by the models' densities"
RUNS = {
    "toy": {
        "dropdowns": {"mode": "AND (equal density)"},
        "sliders": {"lift (AND)": -3.0, "steps": 600},
        "checkboxes": {JUDGE: True},
        "verdict": "judged by the exact densities",
    },
    "digits": {
        "dropdowns": {
            "prompt 1": "3 (three)",
            "prompt 2": "8 (eight)",
            "mode": "AND (equal density)",
            "model": "Fokker–Planck network",
        },
        "sliders": {"lift (AND)": 1.5, "steps": 400},
        "checkboxes": {JUDGE: True},
        "verdict": "judged by the network's own PF-ODE likelihood",
    },
}

pytestmark = pytest.mark.browser


def require_browser() -> None:
    """Fail (never skip: CI must run these) when Playwright or Chromium is missing, saying how to install."""
    missing = []
    if find_spec("playwright") is None:
        missing.append("the Python package playwright: `.venv/bin/pip install -e '.[dev]'`")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(
            f"Chromium at {CHROMIUM}: `make browser-deps` (as root: `apt-get install -y chromium`)"
        )
    if missing:
        pytest.fail("The browser tests need " + " and ".join(missing), pytrace=False)


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A Jupyter server started by a test: its process, URL, token and log file."""

    proc: subprocess.Popen
    url: str
    token: str
    log: Path

    def log_tail(self) -> str:
        return log_tail(self.log)


@contextmanager
def serve(args: list[str], tmp: Path, ready_path: str):
    """Run a Jupyter server on a free localhost port with a token; always stopped afterwards."""
    port, token, log = free_port(), secrets.token_hex(16), tmp / "server.log"
    args = [a.format(port=port, token=token) for a in args]
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with urllib.request.urlopen(url + ready_path.format(token=token), timeout=5) as response:
            return response.status == 200

    with running(args, tmp, log, up, SERVER_TIMEOUT) as proc:
        yield Server(proc, url, token, log)


def fresh_notebook(dest: Path) -> Path:
    """A copy of notebook 04 without outputs or widget state: the repo's copy is never opened."""
    nb = json.loads(NOTEBOOK.read_text())
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path = dest / NOTEBOOK.name
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a fresh copy of notebook 04, with the news prompt switched off."""
    require_browser()
    root = tmp_path / "root"
    root.mkdir()
    fresh_notebook(root)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False"]
    args += [
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
    ]
    args += ["--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    args += [f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path}"]
    args += ["--LabApp.news_url=None"]
    with serve(args, tmp_path, "/api/status?token={token}") as server:
        yield server


@pytest.fixture
def voila(tmp_path):
    """The Voilà app, as `make app` serves it (superdiff.app), with a token (the notebook is only read)."""
    require_browser()
    args = [sys.executable, "-m", "superdiff.app", "--host", "127.0.0.1", "--port", "{port}"]
    args += ["--token", "{token}"]
    with serve(args, tmp_path, "/login") as server:  # a cheap page: `/` would execute the notebook
        yield server


@pytest.fixture
def voila_culling(tmp_path):
    """The app with a token that shuts a kernel down after 3 s without a message."""
    require_browser()
    args = [sys.executable, "-m", "superdiff.app", "--host", "127.0.0.1", "--port", "{port}"]
    args += ["--token", "{token}", "--cull-idle", "3"]
    with serve(args, tmp_path, "/login") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; Playwright gives every launch a fresh temporary user-data dir."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page 1400 px wide that records uncaught exceptions and console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT * 1000)
    page.js_errors = []
    page.console_errors = []  # for failure messages only: the offline Colab badge logs one
    page.on("pageerror", lambda err: page.js_errors.append(str(err)))
    page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield page
    context.close()


@contextmanager
def on_failure_show(page, server: Server, name: str):
    """On failure: a full-page `<name>_failure.png` and the server's log tail in the report."""
    (SHOTS / f"{name}_failure.png").unlink(missing_ok=True)
    try:
        yield
    except BaseException:
        with suppress(Exception):
            page.screenshot(path=SHOTS / f"{name}_failure.png", full_page=True)
        print(f"--- server log tail ---\n{server.log_tail()}")
        raise


# ----------------------------------------------------------------------------- driving the playground

HASH_JS = """const hash = (s) => {
  let h = 0;
  for (let i = 0; i < s.length; i += 7) h = (h * 31 + s.charCodeAt(i)) | 0;
  return h;
};"""
# Samples the progress bar and the κ plot every 25 ms while a run goes: what a user would see.
RECORD_JS = (
    """(root, stop) => {
  if (stop) { clearInterval(root.e2eTimer); return root.e2eLog; }
  """
    + HASH_JS
    + """
  const bar = root.querySelector('.progress-bar');
  root.e2eLog = [];
  root.e2eTimer = setInterval(() => {
    const kappa = root.querySelectorAll('.widget-output')[1].querySelector('img');
    root.e2eLog.push({width: parseFloat(bar.style.width), kappa: kappa ? hash(kappa.src) : null});
  }, 25);
}"""
)
IMAGES_JS = (
    "(out) => {"
    + HASH_JS
    + "return Array.from(out.querySelectorAll('img')).map("
    + "(img) => ({drawn: img.complete && img.naturalWidth > 0, src: hash(img.src)}));}"
)


def wait_for_widgets(page) -> None:
    """Wait until widgets are shown, or fail at once when a widget error shows instead."""
    errors = page.get_by_text(re.compile("|".join(WIDGET_ERRORS)))
    page.locator(".widget-button").first.or_(errors).first.wait_for()
    assert_no_errors(page)


def find_playground(page, name: str):
    """The playground's VBox, found by its title line ("SuperDiff playground — toy: ...")."""
    title = page.locator(".widget-html-content", has_text=f"— {name}:")
    box = page.locator(".widget-vbox").filter(has=title)
    box.wait_for()
    assert box.count() == 1, f"{box.count()} {name} playgrounds on the page"
    return box


def set_controls(box, run: dict) -> None:
    """Choose dropdown options and type slider values into their readouts, as a user does."""
    from playwright.sync_api import expect

    for label, option in run["dropdowns"].items():
        box.locator(f'.widget-dropdown:has(> label:text-is("{label}")) select').select_option(value=option)
    for label, checked in run["checkboxes"].items():
        box.locator(".widget-checkbox", has_text=label).locator("input").set_checked(checked)
    for label, value in run["sliders"].items():
        readout = box.locator(f'.widget-slider:has(> label:text-is("{label}")) .widget-readout')
        expect(readout).to_have_attribute("contenteditable", "true")  # enabled once the kernel saw the mode
        readout.fill(str(value))
        readout.press("Enter")
        shown = float(readout.inner_text().replace("\u2212", "-"))  # the readout's minus sign is U+2212
        assert shown == value, f"slider {label!r} shows {shown}, typed {value}"


def status_text(box) -> str:
    return box.locator(".widget-html-content").nth(1).inner_text()


def verdict_text(box) -> str:
    """The judge's line under the status: log q_1 − log q_2 by the models' own densities."""
    return box.locator(".widget-html-content").nth(2).inner_text()


def generate(box, steps: int) -> tuple[list[dict], str]:
    """Press Generate and wait until the status line reports this run; returns the recording and status."""
    box.evaluate(RECORD_JS, False)
    box.locator("button.jupyter-button", has_text="Generate").click()
    done = box.locator(".widget-html-content", has_text=f"{steps} steps in")
    error = box.locator(".widget-html-content", has_text="Error")
    done.or_(error).first.wait_for(timeout=RUN_TIMEOUT * 1000)
    return box.evaluate(RECORD_JS, True), status_text(box)


def outputs(box) -> tuple[list[dict], list[dict]]:
    """The images in the samples output and in the κ output."""
    samples, kappa = box.locator(".widget-output").all()
    return samples.evaluate(IMAGES_JS), kappa.evaluate(IMAGES_JS)


def check_run(box, name: str, shot: str) -> dict:
    """Set controls, Generate, check progress, κ plot and samples, take a screenshot; return what was seen."""
    run = RUNS[name]
    set_controls(box, run)
    before = outputs(box)
    start = time.perf_counter()
    log, status = generate(box, run["sliders"]["steps"])
    seconds = time.perf_counter() - start
    box.screenshot(path=SHOTS / shot)
    assert status.startswith("Done:"), f"{name}: the status line says {status!r}"
    verdict = verdict_text(box)
    assert run["verdict"] in verdict and "median |gap|" in verdict, f"{name}: the judge says {verdict!r}"
    widths = [e["width"] for e in log]
    moving = sorted({w for w in widths if 0 < w < 100})
    assert len(moving) >= 2, (
        f"{name}: the progress bar was never seen moving, only at {sorted(set(widths))} %"
    )
    assert widths[-1] == 100, f"{name}: the progress bar ends at {widths[-1]} %"
    samples, kappa = outputs(box)
    assert len(samples) == 1 and samples[0]["drawn"], f"{name}: no samples image drawn: {samples}"
    assert len(kappa) == 1 and kappa[0]["drawn"], f"{name}: no κ plot drawn: {kappa}"
    assert samples != before[0] and kappa != before[1], f"{name}: the outputs did not change after Generate"
    hashes = [e["kappa"] for e in log]
    kappa_changes = sum(a != b for a, b in zip(hashes, hashes[1:], strict=False))
    assert kappa_changes >= 1, f"{name}: the κ plot never changed while the browser watched"
    sampling = float(re.search(r"in ([\d.]+) s", status).group(1))
    if sampling >= 2 * REDRAW_SECONDS:  # then the playground has redrawn κ mid-run at least once
        assert kappa_changes >= 2, f"{name}: the κ plot was not redrawn live during {sampling} s of sampling"
    return {
        "seconds": seconds,
        "status": status,
        "verdict": verdict,
        "progress_values": len(moving),
        "kappa_plots": kappa_changes,
    }


def assert_no_errors(page) -> None:
    """No widget or kernel error text in any output or dialog, no uncaught JavaScript exception."""
    texts = page.locator(".jp-OutputArea, .jp-Dialog").all_text_contents()
    found = [t for t in ERROR_TEXTS if any(t in text for text in texts)]
    console = sorted({e.splitlines()[0] for e in page.console_errors})[:8]
    assert not found, f"error text on the page: {found}; console errors (first lines): {console}"
    assert not page.js_errors, f"JavaScript errors: {page.js_errors}"


def run_both_playgrounds(page, app: str) -> None:
    """Drive the toy and the digits playground and report what was seen."""
    for name in RUNS:
        seen = check_run(find_playground(page, name), name, f"{app}_{name}_after_generate.png")
        print(f"{app} {name}: {seen}")
    page.screenshot(path=SHOTS / f"{app}_after_generate.png", full_page=True)
    assert_no_errors(page)


# ----------------------------------------------------------------------------- the tests


def test_playground_in_jupyterlab(lab, page):
    """Open notebook 04 in JupyterLab, Run All Cells from the menu, then use both playgrounds."""
    with on_failure_show(page, lab, "lab"):
        open_and_run_in_lab(lab, page)
        run_both_playgrounds(page, "lab")


def test_playground_as_voila_app(voila, page):
    """Load the Voilà app (it runs the cells not tagged for the notebook alone and shows no code): the
    playgrounds at their defaults, no screenshot of them; use both, close the page: its kernel shuts down."""
    with on_failure_show(page, voila, "voila"):
        page.set_viewport_size({"width": 1400, "height": 2400})  # the whole app: it scrolls inside the page
        page.goto(f"{voila.url}/?token={voila.token}")
        wait_for_widgets(page)
        page.screenshot(path=SHOTS / "voila_before.png", full_page=True)
        assert 'playground("toy")' not in page.inner_text("body"), "Voilà shows the code cells"
        assert "What it looks like" not in page.inner_text("body"), "the app shows screenshots of its widgets"
        assert page.locator('img[alt="Open In Colab"]').count() == 0, "the app shows the Colab badge"
        assert "4 · Playground" in page.inner_text("body")
        for name in RUNS:  # not the settings the notebook's code demos leave
            mode = find_playground(page, name).locator('.widget-dropdown:has(> label:text-is("mode")) select')
            assert mode.input_value() == "AND (equal density)", f"the {name} playground opens in another mode"
        run_both_playgrounds(page, "voila")
        kernel = kernel_of(page)
        assert kernel_status(voila, kernel) == 200 and page.locator(f"#{ENDED}").count() == 0
        # the page needs one websocket (superdiff.app allows two to a kernel, for a reconnect)
        assert kernel_model(voila, kernel)["connections"] == 1
        # closing runs the page's beforeunload, which posts the shutdown with the page's _xsrf cookie
        page.close(run_before_unload=True)
        deadline = time.monotonic() + 20
        while kernel_status(voila, kernel) == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert kernel_status(voila, kernel) == 404, "closing the page left its kernel running"


def test_a_page_whose_kernel_stopped_says_so_and_reloads(voila_culling, page):
    """An idle page loses its kernel (--cull-idle): its controls would silently do nothing, so a banner
    says why and its Reload button opens the page again, on a new kernel."""
    with on_failure_show(page, voila_culling, "voila_culled"):
        page.goto(f"{voila_culling.url}/?token={voila_culling.token}")
        wait_for_widgets(page)
        kernel = kernel_of(page)
        banner = page.locator(f"#{ENDED}")
        banner.wait_for(timeout=30_000)
        assert kernel_status(voila_culling, kernel) == 404
        assert "idle for more than 3 seconds" in banner.inner_text()
        page.screenshot(path=SHOTS / "voila_culled.png")
        banner.get_by_role("button", name="Reload").click()
        wait_for_widgets(page)
        assert kernel_of(page) != kernel


ENDED = "superdiff-session-ended"  # the banner's id (superdiff.widgets.SESSION_JS)


def kernel_of(page) -> str:
    """The id of the page's kernel, from Voilà's page config."""
    return page.content().split('"kernelId": "', 1)[1].split('"', 1)[0]


def kernel_status(server: Server, kernel_id: str) -> int:
    """The HTTP status of the kernel's REST resource: 200 while it runs, 404 once shut down."""
    try:
        kernel_model(server, kernel_id)
        return 200
    except urllib.error.HTTPError as err:
        return err.code


def kernel_model(server: Server, kernel_id: str) -> dict:
    """The kernel's REST resource (its id, state, number of websocket connections)."""
    url = f"{server.url}/api/kernels/{kernel_id}?token={server.token}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def open_and_run_in_lab(lab: Server, page) -> None:
    """Open the notebook, wait for its kernel, Run All Cells from the Run menu, wait until every cell ran."""
    from playwright.sync_api import expect

    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()  # the status bar, once the kernel is up
    page.screenshot(path=SHOTS / "lab_before.png")
    page.locator(".lm-MenuBar-itemLabel:text-is('Run')").click()
    page.locator(".lm-Menu-itemLabel:text-is('Run All Cells')").click()
    page.locator(".jp-OutputArea-output", has_text="digits AND run:").wait_for(state="attached")
    # later cells drive the playgrounds from code too: the test's clicks must not race them
    expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=PAGE_TIMEOUT * 1000)
    wait_for_widgets(page)
