"""The course's notebooks as files: one Colab install cell, pinned to this release, keeping Colab's torch."""

import importlib.metadata
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import superdiff

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
VERSION = superdiff.__version__  # pyproject.toml's version is read from it


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def install_cell(path: Path) -> str:
    sources = ["".join(c["source"]) for c in cells(path) if c["cell_type"] == "code"]
    return sources[0]


def test_every_notebook_opens_with_the_same_install_cell():
    assert len(NOTEBOOKS) >= 5
    first = install_cell(NOTEBOOKS[0])
    assert "SUPERDIFF_SOURCE" in first
    for path in NOTEBOOKS[1:]:
        assert install_cell(path) == first, f"{path.name}: install cell differs from {NOTEBOOKS[0].name}'s"


def test_install_source_is_this_release_tag():
    source = re.search(r'^SUPERDIFF_SOURCE = "(.+)"$', install_cell(NOTEBOOKS[0]), re.M).group(1)
    assert source.endswith(f"@v{VERSION}"), f"SUPERDIFF_SOURCE {source!r} does not pin the tag v{VERSION}"
    assert source.startswith("superdiff-kit @ git+https://")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_badge_opens_this_notebook_at_the_release_tag(path):
    """The notebook Colab opens and the package its install cell installs come from the same tag."""
    badge = "".join(cells(path)[0]["source"])
    url = re.search(r"\(https://colab\.research\.google\.com/github/([^)]+)\)", badge).group(1)
    assert url == f"superdiff-kit/superdiff-kit/blob/v{VERSION}/notebooks/{path.name}"


def run_install_cell(monkeypatch, colab: bool, returncode: int = 0) -> list[list[str]]:
    """Execute the install cell with pip replaced by a recorder; returns the commands it would run."""
    calls = []

    def fake_run(cmd, check=False, **kwargs):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, returncode)

    monkeypatch.setattr(subprocess, "run", fake_run)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(install_cell(NOTEBOOKS[0]), "install-cell", "exec"), {})
    return calls


@pytest.mark.parametrize("colab", [False, True])
def test_install_cell_runs_pip_only_on_colab_and_pins_the_preloaded_torch(monkeypatch, colab):
    calls = run_install_cell(monkeypatch, colab)
    if not colab:
        assert calls == []
        return
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--upgrade" not in cmd and "-U" not in cmd
    constraints = Path(cmd[cmd.index("-c") + 1]).read_text().split()
    assert constraints == [f"torch=={importlib.metadata.version('torch')}"]


def test_a_failed_install_says_what_to_try(monkeypatch):
    """Before its release tag is pushed, or offline, the install fails: one message with both ways out."""
    with pytest.raises(
        RuntimeError,
        match=r"pip could not install 'superdiff-kit @ .*@v.*If GitHub is reachable.*latest code",
    ):
        run_install_cell(monkeypatch, colab=True, returncode=1)


def test_outside_colab_a_kernel_without_the_kit_stops_at_the_first_cell(monkeypatch):
    """It had gone on to a ModuleNotFoundError for matplotlib in cell 3 and NameErrors after it."""
    monkeypatch.setitem(sys.modules, "superdiff", None)  # importlib.util.find_spec: not installed
    with pytest.raises(
        ModuleNotFoundError, match=r"`make setup`.* pip install 'superdiff-kit @ git\+https://"
    ):
        run_install_cell(monkeypatch, colab=False)


def test_no_notebook_cell_failed():
    for path in NOTEBOOKS:
        for i, c in enumerate(cells(path)):
            errors = [o for o in c.get("outputs", []) if o["output_type"] == "error"]
            assert not errors, f"{path.name} cell {i} was saved with an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_files_of_the_repository_are_named_as_links(path):
    """A student in Colab, or with the wheel, has no checkout: `docs/x.md` alone is a name to no file."""
    for i, c in enumerate(cells(path)):
        text = "".join(c["source"]) if c["cell_type"] == "markdown" else ""
        for match in re.finditer(
            r"(?<![/\w`])`?(?:docs|benchmarks|scripts)/[\w./-]+`?", text
        ):  # not in a URL
            linked = text[: match.start()].endswith("[") and text[match.end() :].startswith("](https://")
            assert linked, f"{path.name} cell {i}: {match.group()} is not a link"


def test_the_apps_page_links_the_notebooks_it_names():
    """The app serves notebook 4 alone: a student there has no "notebook 5" to open but through a link."""
    playground = ROOT / "notebooks" / "04_playground.ipynb"
    text = "".join("".join(c["source"]) for c in cells(playground) if c["cell_type"] == "markdown")
    mentions = re.findall(r"\[?\b[Nn]otebook (\d)\b\]?(\([^)]*\))?", text)
    assert len(mentions) >= 4
    for number, target in mentions:
        (path,) = [p for p in NOTEBOOKS if p.name.startswith(f"0{number}_")]
        colab = f"https://colab.research.google.com/github/superdiff-kit/superdiff-kit/blob/v{VERSION}/"
        assert target == f"({colab}notebooks/{path.name})", f"notebook {number} is not a link to it"
