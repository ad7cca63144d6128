"""Install metadata: pyproject.toml and environment.yml list the same packages and version ranges."""

import re
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
