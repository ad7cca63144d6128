"""The package as users install it: metadata, what the wheel and sdist hold, the documented loading line."""

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import warnings
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "playwright-python": "playwright"}


def _requirement(spec: str) -> tuple[str, str]:
    """(name, version range), e.g. ("voila", ">=0.5,<0.6"); both files spell ranges the same way."""
    name, versions = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*((?:[<>=!]=?\s*[\w.]+\s*,?\s*)*)", spec).groups()
    return CONDA_TO_PIP.get(name.lower(), name.lower()), re.sub(r"\s", "", versions)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [spec for specs in project["optional-dependencies"].values() for spec in specs]
    pip_side = dict(map(_requirement, project["dependencies"] + extras))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_side = dict(
        _requirement(d) for d in env if isinstance(d, str) and d.split("=")[0] not in ("python", "pip")
    )
    assert conda_side == pip_side
    assert {"pip": ["-e ."]} in env  # the package itself, from this checkout


def test_the_command_starts_without_torch_and_the_package_names_load_on_use():
    """``superdiff --help`` and a Ctrl-C while it starts need not wait for torch (≈ 2 s)."""
    code = (
        "import sys, superdiff, superdiff.cli;"
        "loaded = [m for m in ('torch', 'diffusers') if m in sys.modules];"
        "print(loaded, set(superdiff.__all__) <= set(dir(superdiff)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "[] True\n"  # and dir() lists the names not yet loaded, for tab completion
    import superdiff
    from superdiff import limits, pipeline_flux, pipeline_sd3, pipeline_superdiff, pipeline_xl, sampling

    modules = (sampling, pipeline_superdiff, pipeline_xl, pipeline_sd3, pipeline_flux, limits)
    for name in superdiff.__all__:
        assert any(getattr(superdiff, name) is getattr(m, name, None) for m in modules), name
    assert "superpose" in superdiff.__all__
    with pytest.raises(AttributeError, match="module 'superdiff' has no attribute 'superposee'"):
        superdiff.superposee  # noqa: B018


def test_distribution_name_is_not_the_taken_pypi_name():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "superdiff"
    assert project["scripts"]["superdiff"] == "superdiff.cli:main"


def loading_lines() -> list[str]:
    """The one-line ``SuperDiffPipeline.from_pretrained`` calls of README.md and docs/stable-diffusion.md."""
    docs = [ROOT / "README.md", ROOT / "docs" / "stable-diffusion.md"]
    text = "\n".join(p.read_text() for p in docs if p.exists())  # docs/ is not in the sdist
    return re.findall(r"^pipe = SuperDiffPipeline\.from_pretrained\(.*$", text, flags=re.M)


def test_documented_loading_gives_the_dtype_it_shows_without_deprecation_warnings(tmp_path):
    """float16 for sampling, float32 where the line is marked "float32: double backward" (the score
    Fokker–Planck residual); on the installed diffusers (make compat: the card's and the oldest supported)."""
    import torch

    from superdiff import SuperDiffPipeline
    from superdiff.testing import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path)
    lines = loading_lines()
    assert lines and all("CompVis/stable-diffusion-v1-4" in line for line in lines)
    for line in lines:
        code = line.replace('"CompVis/stable-diffusion-v1-4"', repr(str(tmp_path))).replace('"cuda"', '"cpu"')
        scope = {"torch": torch, "SuperDiffPipeline": SuperDiffPipeline}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(code, scope)
        pipe = scope["pipe"]
        dtype = torch.float32 if line.endswith("# float32: double backward") else torch.float16
        assert pipe.unet.dtype == dtype and pipe.text_encoder.dtype == dtype, line
        assert not [w for w in caught if "dtype" in str(w.message)], [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- the built sdist and wheel

PLAYGROUND = "superdiff/notebooks/04_playground.ipynb"  # where the wheel holds the app's page
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".ipynb_*"
)


def build(hook: str, src: Path, out: Path) -> Path:
    """Run a PEP 517 hook of setuptools (no isolation: .venv's setuptools) in src; the built file."""
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    run = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return out / run.stdout.split()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, set[str]]:
    """The files of an sdist built from this tree and of the wheel built from that sdist (as pip does)."""
    tmp = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCE)
    sdist = build("build_sdist", tmp / "src", tmp)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
        sdist_files = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = build("build_wheel", unpacked, tmp)
    with zipfile.ZipFile(wheel) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        page = PLAYGROUND if PLAYGROUND in whl.namelist() else None
        return {
            "sdist": sdist_files,
            "wheel": set(whl.namelist()),
            "metadata": whl.read(meta).decode(),
            "playground": page and whl.read(page),
        }


def test_license_is_mit_as_spdx_with_its_file(dists):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 SuperDiff kit developers" in text
    assert "License-Expression: MIT" in dists["metadata"].splitlines()
    assert "LICENSE" in dists["sdist"]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in dists["wheel"])


def test_wheel_holds_every_file_of_the_package(dists):
    package = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "superdiff").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "superdiff/digits/weights/README.md" in package  # tests/test_digits.py reads it
    assert sorted(package - dists["wheel"]) == []


def test_sdist_holds_what_its_tests_and_makefile_read(dists):
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")}
    needed = {"environment.yml", "pyproject.toml", "README.md", "LICENSE", "notebooks/sanitize.cfg"}
    needed |= {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}  # test_browser, nbval
    for folder in ("benchmarks", "scripts"):  # make lint checks them; make notebooks runs scripts/
        needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).iterdir() if p.is_file()}
    assert "tests/conftest.py" in tests and "scripts/execute_notebooks.py" in needed
    assert sorted((tests | needed) - dists["sdist"]) == []


def test_wheel_ships_the_apps_page_where_the_app_looks_for_it(dists):
    """python -m superdiff.app from a wheel: the playground notebook is package data (setup.py)."""
    import superdiff
    from superdiff import app

    assert app.PACKAGED.relative_to(Path(superdiff.__file__).parents[1]).as_posix() == PLAYGROUND
    assert dists["playground"] == (ROOT / "notebooks" / "04_playground.ipynb").read_bytes()


def test_the_version_is_written_once(dists):
    import superdiff

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert f"Version: {superdiff.__version__}" in dists["metadata"].splitlines()
    for module in ("superdiff.cli", "superdiff"):  # python -m superdiff: the command without its script
        run = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
        assert run.stdout == f"superdiff-kit {superdiff.__version__}\n"


def test_the_app_without_its_extra_says_what_to_install():
    code = "import runpy, sys; sys.modules['voila'] = None; runpy.run_module('superdiff.app', run_name='x')"
    run = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert (
        run.stderr
        == "superdiff.app: the app needs Voilà (voila.app is missing): pip install 'superdiff-kit[app]'\n"
    )


# ----------------------------------------------------------------------------- outputs of the scripts


def test_train_writes_to_the_working_directory_not_the_package(tmp_path, monkeypatch):
    from superdiff.digits import model, train

    package = tmp_path / "site-packages" / "weights"
    monkeypatch.setattr(model, "WEIGHTS", package)
    monkeypatch.setattr(train, "WEIGHTS", package, raising=False)  # where the default used to point
    monkeypatch.setattr(train, "train_eps", lambda net, *args, **kwargs: net)  # no training: seconds
    monkeypatch.setattr(train, "train_classifier", lambda *args, **kwargs: model.Classifier())
    monkeypatch.setattr(train, "train_variant", lambda name, **kwargs: model.EpsNet())
    monkeypatch.chdir(tmp_path)
    assert train.main([]) == 0
    assert train.main(["--variant", "large"]) == 0  # the README's command
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    expected = {f"digits-weights/{f}" for f in [*model.FILES.values(), "README.md"]} | {"large.safetensors"}
    assert written == expected


def test_experiments_write_to_the_working_directory(tmp_path, monkeypatch):
    from superdiff.digits import experiments

    calls = []
    monkeypatch.setattr(experiments, "report", lambda *args: calls.append(args) or args[3])
    monkeypatch.chdir(tmp_path)
    assert experiments.main([]) == 0
    *_, out, fig_dir = calls[0]
    assert out.resolve() == tmp_path / "results-digits.md" and fig_dir.resolve() == tmp_path / "figures"


# ----------------------------------------------------------------------------- the long description


def test_readme_links_work_on_an_index_page():
    """README.md is PyPI's long description: relative links and bare anchors break there."""
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert links and [u for u in links if not u.startswith("https://")] == []
    blob = "https://github.com/superdiff-kit/superdiff-kit/blob/main/"
    for path in [u.removeprefix(blob) for u in links if u.startswith(blob)]:
        if (ROOT / path.split("/")[0]).is_dir():  # docs/ is not in the sdist
            assert (ROOT / path).is_file(), path
