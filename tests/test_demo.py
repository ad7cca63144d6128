"""``superdiff demo``: the offline default writes its figures, and bad input writes nothing."""

import re

import pytest
from PIL import Image

from superdiff import demo
from superdiff.cli import main
from superdiff.demo import TOY_DPI, equal_density_report, toy_runs
from superdiff.digits.demo import DPI, JUDGED
from superdiff.toy import up_and_down


def test_demo_writes_the_figures_and_judges_equal_density(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "30"]) == 0
    out, figure = capsys.readouterr().out, tmp_path / "toy_superposition.png"
    assert f"wrote {figure}" in out and f"wrote {tmp_path / 'equal_density.txt'}" in out
    assert Image.open(figure).size[0] > 1000
    assert not list(tmp_path.glob(".*.tmp"))
    report = (tmp_path / "equal_density.txt").read_text()
    assert report in out and report.startswith("Equal density?")
    rows = {line[:43].strip(): line[43:] for line in report.splitlines() if "“" in line[:20]}
    assert list(rows) == [
        "toy “up” & “down”",
        "digits “3” & “8”: trained network",
        "digits “3” & “8”: Fokker–Planck network",
        "digits “3” & “8”: Gaussian per digit",
    ]
    assert "seeds 0–2" in report
    # mean over seeds 0–2 of 16 samples: AND nearer equal density where the scores obey the equation
    for name in list(rows)[2:]:
        (and_gap, and_sd), (avg_gap, avg_sd) = re.findall(r"(\d+\.\d) ± (\d+\.\d)", rows[name])
        assert float(and_gap) < float(avg_gap), (name, rows[name])  # measured 1.1 vs 2.0, 0.6 vs 1.2
        assert float(and_sd) > 0 and float(avg_sd) > 0  # three different seeds


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps: expected an integer from 1 to 10000, got 0"),
        (["--steps", "10001"], "--steps: expected an integer from 1 to 10000, got 10001"),
        (["--seed", "-1"], "--seed: expected an integer from 0 to 4294967293, got -1"),
        (["--seed", str(2**32 - 2)], "--seed: expected an integer from 0 to 4294967293"),
        (["--out", "{file}/out"], "is a file, not a folder"),
        (["--out", "{folder}"], "--out: '{folder}/equal_density.txt' is a folder in the way"),
        # a broken link, also above --out: mkdir's "[Errno 17] File exists" after the sampling, before
        (["--out", "{link}"], "--out: '{link}' is a link to '{nowhere}', which does not exist; make"),
        (["--out", "{link}/sub"], "--out: '{link}' is a link to '{nowhere}', which does not exist; make"),
        (["--out", "{chain}"], "--out: '{chain}' is a link to '{nowhere}', which does not exist; make"),
        (["--out", "{loop}/sub"], "--out: '{loop}' is a loop of links; choose another --out"),
    ],
)
def test_demo_rejects_bad_input_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("mine")
    (tmp_path / "folder" / "equal_density.txt").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "chain").symlink_to("link")  # relative, through another link
    (tmp_path / "loop").symlink_to("loop")
    monkeypatch.setattr(demo, "toy_runs", lambda *a, **k: pytest.fail("sampled before checking"))
    names = {name: tmp_path / name for name in ("file", "folder", "link", "nowhere", "chain", "loop")}
    argv = [a.format(**names) for a in argv]
    message = message.format(**names)
    assert main(["demo", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superdiff demo: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain", "file", "folder", "link", "loop"]
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["equal_density.txt"]


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "toy_runs", interrupted)
    try:
        code = main(["demo", "--out", str(tmp_path), "--steps", "5"])
    except KeyboardInterrupt:  # escaping, it would stop the whole test session
        pytest.fail("Ctrl-C escaped the command")
    assert code == 130
    assert capsys.readouterr().err == "superdiff demo: interrupted\n"
    assert list(tmp_path.iterdir()) == []


def test_demo_writes_nothing_when_a_late_stage_fails(tmp_path, monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("judge failed")

    monkeypatch.setattr(demo, "judged_gaps", fail)
    with pytest.raises(RuntimeError, match="judge failed"):
        main(["demo", "--out", str(tmp_path), "--steps", "5"])
    assert list(tmp_path.iterdir()) == []


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


def test_equal_density_report_rows_are_the_exact_toy_gaps_and_mean_sd_over_seeds():
    runs = toy_runs(steps=50, batch=50)
    up, down = up_and_down()

    def gap(name):
        x = runs[name].samples
        return (up.log_prob(x, 0.01) - down.log_prob(x, 0.01)).abs().median().item()

    report = equal_density_report(runs, {"gaussian": {"and": [1.0, 2.0, 3.0], "avg": [4.0, 4.0, 4.0]}}, 0)
    toy = next(line for line in report.splitlines() if line.strip().startswith("toy")).split()
    assert toy[-2:] == [f"{gap('AND'):.1f}", f"{gap('average'):.1f}"]
    assert "2.0 ± 1.0" in report and "4.0 ± 0.0" in report and "seeds 0–2" in report


def test_demo_writes_its_four_files_announces_each_and_closes_its_figures(tmp_path, capsys, monkeypatch):
    """Figures and judges stubbed (the slow test above runs them): the four files, each announced, the
    report as printed and ending in a newline, each figure at its DPI, and no figure left open."""
    import matplotlib.pyplot as plt

    runs, real_toy_runs = {}, demo.toy_runs

    def toy(steps, seed):
        runs.update(real_toy_runs(steps, seed=seed))
        return runs

    monkeypatch.setattr(demo, "toy_runs", toy)
    monkeypatch.setattr(demo, "toy_figure", lambda runs: plt.figure(figsize=(2, 2)))
    monkeypatch.setattr(
        demo,
        "digits_figures",
        lambda seed: {name: plt.figure(figsize=(2, 2)) for name in ("digits_and.png", "digits_or.png")},
    )
    monkeypatch.setattr(
        demo,
        "judged_gaps",
        lambda seeds: {m: {"and": [1.0, 2.0, 3.0], "avg": [4.0, 5.0, 6.0]} for m in JUDGED},
    )
    open_before = plt.get_fignums()
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--seed", "4"]) == 0
    assert plt.get_fignums() == open_before
    out = capsys.readouterr().out
    names = ["toy_superposition.png", "digits_and.png", "digits_or.png", "equal_density.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert all(f"wrote {tmp_path / name}\n" in out for name in names)
    report = (tmp_path / "equal_density.txt").read_text(encoding="utf-8")
    assert report.endswith("\n") and report in out
    assert (
        f"toy: {len(runs['AND'].samples)} samples" in report and "seed 4;" in report and "seeds 4–6" in report
    )
    for name, dpi in (("toy_superposition.png", TOY_DPI), ("digits_and.png", DPI), ("digits_or.png", DPI)):
        assert Image.open(tmp_path / name).info["dpi"] == pytest.approx((dpi, dpi), abs=0.01), name


def test_equal_density_report_names_each_models_judge_and_its_seeds():
    runs = toy_runs(steps=5, batch=20)
    gaps = {"net": {"and": [1.0, 3.0], "avg": [7.0, 7.0]}, "gaussian": {"and": [2.0, 2.0], "avg": [5.0, 9.0]}}
    report = equal_density_report(runs, gaps, 5)
    rows = {line[:43].strip(): line[43:].split() for line in report.splitlines() if "“" in line[:20]}
    assert rows["digits “3” & “8”: trained network"] == [
        "PF-ODE",
        "likelihood",
        "2.0",
        "±",
        "1.4",
        "7.0",
        "±",
        "0.0",
    ]
    assert rows["digits “3” & “8”: Gaussian per digit"] == ["exact", "2.0", "±", "0.0", "7.0", "±", "2.8"]
    assert "seed 5;" in report and "seeds 5–6" in report
    said = " ".join(equal_density_report(runs, gaps, 5, batch=4, steps=30).split())
    assert "(toy: 20 samples, 5 steps, seed 5; digits: 4 samples at each of seeds 5–6, 30 steps;" in said
