"""``superdiff demo``: the offline default writes its figures, and bad input writes nothing."""

import pytest
from PIL import Image

from superdiff.cli import main
from superdiff.demo import toy_runs
from superdiff.toy import up_and_down


def test_demo_writes_the_toy_figure(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "30"]) == 0
    figure = tmp_path / "toy_superposition.png"
    assert f"wrote {figure}" in capsys.readouterr().out
    assert Image.open(figure).size[0] > 1000
    assert not list(tmp_path.glob(".*.tmp"))


def test_demo_rejects_bad_steps_before_writing(tmp_path):
    with pytest.raises(SystemExit, match="--steps"):
        main(["demo", "--out", str(tmp_path / "out"), "--steps", "0"])
    assert not (tmp_path / "out").exists()


def test_demo_runs_show_the_paper_toy_behaviour():
    runs = toy_runs(steps=300, batch=300)
    up, down = up_and_down()

    def gap(name):
        return (
            (up.log_prob(runs[name].samples, 0.01) - down.log_prob(runs[name].samples, 0.01)).abs().median()
        )

    assert gap("AND") < 0.5 < 3 < gap("average")
    assert (runs["up"].samples[:, 1] > 0).all() and (runs["down"].samples[:, 1] < 0).all()
    assert 0.4 < (runs["OR"].samples[:, 1] > 0).double().mean() < 0.6
