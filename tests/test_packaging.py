"""Install metadata: pyproject.toml and environment.yml list the same packages and version ranges."""

import re
import warnings
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "playwright-python": "playwright"}


def _requirement(spec: str) -> tuple[str, str]:
    """(name, version range), e.g. ("voila", ">=0.5,<0.6"); both files spell ranges the same way."""
    name, versions = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*((?:[<>=!]=?\s*[\w.]+\s*,?\s*)*)", spec).groups()
    return CONDA_TO_PIP.get(name.lower(), name.lower()), re.sub(r"\s", "", versions)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = dict(map(_requirement, project["dependencies"] + project["optional-dependencies"]["dev"]))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_side = dict(
        _requirement(d) for d in env if isinstance(d, str) and d.split("=")[0] not in ("python", "pip")
    )
    assert conda_side == pip_side
    assert {"pip": ["-e ."]} in env  # the package itself, from this checkout


def test_distribution_name_is_not_the_taken_pypi_name():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "superdiff"
    assert project["scripts"]["superdiff"] == "superdiff.cli:main"


def loading_lines() -> list[str]:
    """The one-line ``SuperDiffPipeline.from_pretrained`` calls of README.md and docs/stable-diffusion.md."""
    docs = [ROOT / "README.md", ROOT / "docs" / "stable-diffusion.md"]
    text = "\n".join(p.read_text() for p in docs if p.exists())  # docs/ is not in the sdist
    return re.findall(r"^pipe = SuperDiffPipeline\.from_pretrained\(.*$", text, flags=re.M)


def test_documented_loading_gives_float16_without_deprecation_warnings(tmp_path):
    """On the installed diffusers (make compat: the card's and the oldest supported too)."""
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
        assert pipe.unet.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16, line
        assert not [w for w in caught if "dtype" in str(w.message)], [str(w.message) for w in caught]
