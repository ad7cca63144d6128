"""Install metadata: pyproject.toml and environment.yml list the same packages with the same floors."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}


def _requirement(spec: str) -> tuple[str, str]:
    name, floor = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([\w.]+))?\s*", spec).groups()
    return CONDA_TO_PIP.get(name.lower(), name.lower()), floor or ""


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
