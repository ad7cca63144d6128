"""Sweeps: the plan, two accelerate processes, crash and resume, CLIP and digits scores, the summary."""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from argparse import Namespace
from contextlib import ExitStack
from pathlib import Path
from subprocess import PIPE
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from servers import free_port

from superdiff.cli import main as superdiff_main
from superdiff.digits import load_pipeline
from superdiff.hub import WeightsUnavailableError
from superdiff.pipeline_superdiff import SuperDiffMixin
from superdiff.sweep import load_pairs, parse_methods, parse_seeds, plan
from superdiff.sweep.plan import Item, batches, distinct
from superdiff.sweep.run import CRASH_AFTER, SweepConfig, pipeline_call, records
from superdiff.sweep.scoring import ClipScorer, DigitsScorer
from superdiff.sweep.summary import bar_plot, flat, markdown, summarize, to_csv, write_summary
from superdiff.testing import tiny_clip, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # the in-process sweeps run tiny models
plan_module = importlib.import_module("superdiff.sweep.plan")  # superdiff.sweep.plan is also the function

# 2 digit pairs × 3 methods × 3 seeds = 18 images; 10 steps: each run is about a second of sampling
SMALL = ["--model", "digits", "--methods", "and,or,prompt_1", "--seeds", "0-2", "--steps", "10"]
ONE_DIGITS_AND = [
    "--model",
    "digits",
    "--pairs",
    "digits",
    "--methods",
    "and",
    "--seeds",
    "0",
    "--steps",
    "3",
]  # 5 images
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def two_pairs(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pairs") / "pairs.yaml"
    path.write_text('- {prompt_1: "3", prompt_2: "8"}\n- ["one", "7"]\n')
    return str(path)


def sweep(out: Path, *args: str, launcher: list[str] | None = None, env=None) -> subprocess.CompletedProcess:
    """Run the sweep module in fresh processes (as ``python -m`` or under a launcher)."""
    command = (launcher or [sys.executable]) + ["-m", "superdiff.sweep", *args, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, env=env or ENV, timeout=300)


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def expected_keys(pairs: str, methods: str, seeds: str) -> list[str]:
    return [item.key for item in plan(load_pairs(pairs), parse_methods(methods), parse_seeds(seeds))]


def digits_and(out: Path, seeds=(0,), steps: int = 1) -> SweepConfig:
    """A sweep of "3" AND "8" on the digits model, unguided: the one the tests of its settings take."""
    return SweepConfig([("3", "8")], ["and"], list(seeds), out, model="digits", steps=steps, guidance_scale=1)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------- the plan


def test_shipped_pairs_and_plan():
    paper = load_pairs("paper")
    assert len(paper) == 20 and ("a flamingo", "a candy cane") in paper and ("a cat", "a dog") in paper
    assert len(set(paper)) == 20
    digits = load_pairs("digits")
    items = plan(digits, ["and", "or"], [0, 1, 2])
    assert len(items) == len(digits) * 2 * 3 and len({i.key for i in items}) == len(items)
    groups = batches(items, 2)
    assert [len(b) for b in groups[:2]] == [2, 1]  # seeds of one (pair, method), never mixed
    assert all(len({(i.pair, i.method) for i in b}) == 1 for b in groups)
    assert [i for b in groups for i in b] == items


def test_pairs_files_csv_and_yaml(tmp_path, two_pairs):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt_1,prompt_2\na fox, a lamp \n")
    assert load_pairs(str(csv)) == [("a fox", "a lamp")]
    assert load_pairs(two_pairs) == [("3", "8"), ("one", "7")]


@pytest.mark.parametrize(
    "text, name",
    [("a,b\nx,y\n", "p.csv"), ("prompt_1,prompt_2\nx,\n", "p.csv"), ("- [x]\n", "p.yaml"), ("{}", "p.yaml")],
)
def test_bad_pairs_files_are_named(tmp_path, text, name):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match="^--pairs: "):
        load_pairs(str(tmp_path / name))


def test_seeds_and_methods_specs():
    assert parse_seeds("0-3,7,2") == [0, 1, 2, 3, 7]
    assert parse_seeds("0-600000,0-600000") == list(range(600_001))  # overlaps count once
    for bad in ("3-1", "x", "-1", "", "٣", "1-٣"):  # not Unicode digits: "٣" is 3 to Python's int
        with pytest.raises(ValueError, match="^--seeds: "):
            parse_seeds(bad)
    assert parse_methods("and, joint_ba") == ["and", "joint_ba"]
    for bad, joint in (("and,xor", True), ("and,and", True), ("joint", False)):
        with pytest.raises(ValueError, match="^--methods: "):
            parse_methods(bad, joint=joint)


@pytest.mark.parametrize(
    "args, option",
    [
        (["--seeds", "5-1"], "--seeds"),
        (["--methods", "and,joint"], "--methods"),
        (["--methods", ""], "--methods"),  # not the default methods
        (["--size", "64"], "--size"),  # the digits model's one size: ignored, it was saved as a setting
        (["--pairs", "nope.csv"], "--pairs"),
        (["--steps", "0"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lift", "nan"], "--lift"),
        (["--scorer", "digits", "--model", "tiny"], "--scorer"),
        (["--fast"], "--fast"),  # the digits model has no denoiser to compile
        (
            ["--dtype", "float16"],
            "--dtype",
        ),  # it runs in float32: saved as a setting, it would block resuming
        (["--max-size", "128"], "--max-size"),
        # sizes past the limits, refused before any allocation (issue 13)
        (["--seeds", "0-99999999999"], "--seeds"),
        (["--seeds", str(2**64)], "--seeds"),
        (["--seeds", str(2**32)], "--seeds"),  # would repeat seed 0's images
        (["--steps", str(10**9)], "--steps"),
        (["--batch-size", str(10**9)], "--batch-size"),
        (["--size", "100000"], "--size"),
        (["--lift", "1e300"], "--lift"),
        (["--guidance-scale", "1e30"], "--guidance-scale"),
        (["--guidance-scale", "-1"], "--guidance-scale"),
    ],
)
def test_bad_options_exit_2_naming_the_option_and_write_nothing(tmp_path, capsys, args, option):
    out = tmp_path / "sweep"
    base = ["sweep", "--model", "digits", "--out", str(out)]
    assert superdiff_main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"superdiff sweep: error: {option}: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: what is checked here must be refused before any model loads."""
    import superdiff.sweep.run

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(superdiff.sweep.run, "load_pipeline", loaded)


@pytest.mark.parametrize(
    "pairs, option",
    [
        ("prompt_1,prompt_2\n3,8\n3,cat\n", "--pairs: pair 2, prompt_2: unknown digit 'cat'"),
        ("prompt_1,prompt_2\n3,8\n,8\n", "--pairs: line 3 of"),
        ("prompt_1,prompt_2\n3,8\n1,7\n3,8\n", "--pairs: line 4 of .* repeats line 2"),
        (
            "prompt_1,prompt_2\n3,8\nthree,EIGHT\n",
            r"--pairs: pair 2 \('three', 'EIGHT'\) names the digits of pair 1",
        ),
        ("- [3, 8]\n- {prompt_1: 1, prompt_2: [\n", "--pairs: not valid YAML"),
        pytest.param(  # a comma in an unquoted prompt: not cut to its first two fields
            "prompt_1,prompt_2\n3,8\na cat, photorealistic,a dog\n",
            '--pairs: line 3 of .* has 3 fields, the header 2; quote prompts that contain commas: "a cat, ',
            id="extra-fields",
        ),
        pytest.param(  # csv.Error: one line, not a traceback
            'prompt_1,prompt_2\n3,8\n"' + "x" * 200_000 + '",8\n',
            r"--pairs: line 3 of .* is not valid CSV \(field larger than field limit",
            id="csv-error",
        ),
        pytest.param(
            "prompt_1,prompt_2\n3,8\n" + "x" * 2001 + ",8\n",
            "--pairs: line 3 of .*: prompt: expected at most 2000 characters, got 2001",
            id="long-prompt",
        ),
    ],
)
def test_bad_pairs_are_refused_before_any_model_loads(tmp_path, capsys, no_models, pairs, option):
    path = tmp_path / ("pairs.yaml" if pairs.startswith("-") else "pairs.csv")
    path.write_text(pairs)
    out = tmp_path / "sweep"
    assert superdiff_main(["sweep", "--model", "digits", "--pairs", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.match(f"superdiff sweep: error: {option}", err) and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory) -> Path:
    from superdiff.testing_flux import tiny_flux_pipeline

    folder = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline().save_pretrained(folder)
    return folder


def test_size_not_a_multiple_of_the_familys_is_refused_before_any_model_loads(
    tmp_path, capsys, no_models, flux_folder
):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(flux_folder), "--size", "72", "--out", str(out)]
    assert superdiff_main(args) == 2  # a multiple of 8, not of Flux's 16
    err = capsys.readouterr().err
    assert (
        err.startswith("superdiff sweep: error: --size: expected a multiple of 16")
        and len(err.splitlines()) == 1
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "model, option, expected",
    [("flux", [], 3.5), ("flux", ["--guidance-scale", "5"], 5.0), ("tiny", [], 7.5), ("digits", [], 2.0)],
)
def test_default_guidance_is_the_familys(tmp_path, flux_folder, model, option, expected):
    """Flux's guidance is the transformer's embedded one (diffusers' default 3.5), not CFG's 7.5."""
    from superdiff.sweep.cli import add_arguments, config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    model = str(flux_folder) if model == "flux" else model
    args = parser.parse_args(["--model", model, "--out", str(tmp_path / "sweep"), *option])
    assert config(args).guidance_scale == expected


def test_the_lift_goes_to_and_alone_so_no_method_warns_of_it(tmp_path, recwarn):
    cfg = SweepConfig(
        [("3", "8")], ["and", "or", "avg"], [0], tmp_path, "digits", steps=2, guidance_scale=1.0
    )
    cfg.lift, pipe = 1.5, load_pipeline()
    lifts = {}
    for method in cfg.methods:
        kwargs = pipeline_call(cfg, (Item(0, "3", "8", method, 0),), None)
        lifts[method] = kwargs["lift"]
        pipe(**kwargs)
    assert lifts == {"and": 1.5, "or": 0.0, "avg": 0.0}
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []


def test_csv_with_excel_byte_order_mark_loads(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("prompt_1,prompt_2\n3,8\n".encode("utf-8-sig"))
    assert load_pairs(str(path)) == [("3", "8")]


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", ""])
def test_out_that_is_not_a_sweep_is_refused_before_any_model_loads(tmp_path, capsys, no_models, content):
    out = tmp_path / "mine"
    user_files = ["summary.md", "records.csv", "records.jsonl", "summary.csv", "images/.draft.tmp"]
    user_files += ["records/.backup.json.tmp"]
    for name in user_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("the user's")
    if content:
        (out / "sweep.json").write_text(content)
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superdiff sweep: error: --out: ") and len(err.strip().splitlines()) == 1
    assert all((out / name).read_text() == "the user's" for name in user_files)


def test_a_folder_named_like_the_settings_file_is_refused_naming_out(tmp_path, capsys, no_models):
    (tmp_path / "s" / "sweep.json").mkdir(parents=True)
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.startswith("superdiff sweep: error: --out: ")  # was "[Errno 21] Is a dir…"


def test_unwritable_out_is_refused_before_any_model_loads(tmp_path, capsys, no_models):
    (tmp_path / "a_file").write_text("")
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "a_file" / "sweep")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("superdiff sweep: error: --out: cannot write") and len(err.strip().splitlines()) == 1
    )


def test_an_out_name_too_long_is_named(tmp_path, capsys, no_models):
    """It had been "error: [Errno 36] File name too long", naming no option."""
    for out in (tmp_path / ("x" * 300), tmp_path / ("x" * 300) / "sweep"):
        assert superdiff_main(["sweep", "--model", "digits", "--out", str(out)]) == 2
        assert "superdiff sweep: error: --out: the file name 'xxxx" in capsys.readouterr().err


def test_a_broken_link_as_out_is_named(tmp_path, capsys, no_models):
    """It had been "--out: cannot write to 'out' (File exists)" for a link to a folder that is not there."""
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--out: '{tmp_path / 'out'}' is a link to '{tmp_path / 'nowhere'}', which does not exist" in err


def test_a_run_started_meanwhile_with_other_settings_is_refused(tmp_path, monkeypatch, capsys):
    """Two runs on one --out: the second checks while the first loads its models (the race of issue 13)."""
    import superdiff.sweep.run

    out = tmp_path / "sweep"
    base = ["sweep", "--model", "digits", "--pairs", "digits", "--methods", "and", "--seeds", "0"]
    load, codes = superdiff.sweep.run.load_pipeline, []

    def load_while_another_run_starts(cfg, device):
        if not codes:
            codes.append(superdiff_main([*base, "--steps", "4", "--out", str(out)]))
        return load(cfg, device)

    monkeypatch.setattr(superdiff.sweep.run, "load_pipeline", load_while_another_run_starts)
    assert superdiff_main([*base, "--steps", "3", "--out", str(out)]) == 0
    assert codes == [2] and "--out: " in capsys.readouterr().err
    steps = json.loads((out / "sweep.json").read_text())["steps"]
    assert steps == 3 and {r["steps"] for r in read_records(out)} == {steps}


def test_the_dtype_auto_gives_on_the_device_is_a_setting(tmp_path):
    """ "auto" is float32 on the CPU, float16 on a GPU: a sweep's CPU worker names its device "cpu:0", which
    had given float16 (2 processes' images differed from 1's), and sweep.json said "auto" on either."""
    from superdiff.generate import pick_dtype
    from superdiff.sweep.run import check_settings, claim

    assert pick_dtype("auto", "cpu:0") == pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda:1") == torch.float16
    tiny = SweepConfig([("a", "b")], ["and"], [0], tmp_path / "tiny", model="tiny", steps=2, guidance_scale=1)
    with ExitStack() as lock:
        claim(tiny, "cpu:0", lock)
    assert json.loads((tiny.out / "sweep.json").read_text())["dtype"] == "float32"
    check_settings(tiny, "cpu")  # resumes on the CPU
    with pytest.raises(ValueError, match=r"holds a sweep with other dtype \(dtype='float32'\)"):
        check_settings(tiny, "cuda:0")
    saved = json.loads((tiny.out / "sweep.json").read_text())
    (tiny.out / "sweep.json").write_text(json.dumps({**saved, "dtype": "auto"}))  # as earlier versions wrote
    check_settings(tiny, "cpu")  # a sweep begun before resumes
    digits = digits_and(tmp_path / "d", steps=2)
    assert digits.settings("cpu")["dtype"] is digits.settings("cuda:0")["dtype"] is None  # float32 on the CPU


def test_without_flock_the_run_that_writes_sweep_json_second_checks_the_first_ones(tmp_path, monkeypatch):
    """Windows has no flock: of two runs claiming a folder at once, the second had replaced the first's
    sweep.json while the first sampled with its own settings."""
    import superdiff.sweep.run

    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl raises ImportError, as on Windows
    first, second = (digits_and(tmp_path / "s", steps=k) for k in (4, 3))
    write, wrote = superdiff.sweep.run.write_atomically, []

    def the_first_writes_meanwhile(writes, **kwargs):
        if not wrote:
            wrote.append(first)
            superdiff.sweep.run.claim(first, "cpu", ExitStack())
        return write(writes, **kwargs)

    monkeypatch.setattr(superdiff.sweep.run, "write_atomically", the_first_writes_meanwhile)
    with pytest.raises(ValueError, match=r"holds a sweep with other steps \(steps=4\)"):
        superdiff.sweep.run.claim(second, "cpu", ExitStack())
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["steps"] == 4


def test_a_run_refused_by_the_lock_leaves_the_folder_to_the_run_that_holds_it(tmp_path, monkeypatch, capsys):
    """A wrote sweep.json, B took the lock first: A's refusal removed sweep.json and the lock file while B
    loaded its model, and a third run with other steps then took the folder under B."""
    import superdiff.sweep.run

    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--out", str(out)]
    held, load = superdiff.sweep.run.held, superdiff.sweep.run.load_pipeline
    loading, go_on, codes = threading.Event(), threading.Event(), {}

    def b_loads_slowly(cfg, device):
        if threading.current_thread().name == "B":
            loading.set()
            assert go_on.wait(60)
        return load(cfg, device)

    def b_locks_first(cfg):  # A is about to lock when B starts, locks and loads
        if threading.current_thread().name != "B" and not codes:
            codes["B"] = None
            b = threading.Thread(target=lambda: codes.update(B=superdiff_main(args)), name="B")
            b.start()
            assert loading.wait(60)
        return held(cfg)

    monkeypatch.setattr(superdiff.sweep.run, "held", b_locks_first)
    monkeypatch.setattr(superdiff.sweep.run, "load_pipeline", b_loads_slowly)
    assert superdiff_main(args) == 2 and "another sweep is running" in capsys.readouterr().err
    assert (out / "sweep.json").is_file() and (out / ".sweep.lock").is_file()
    go_on.set()
    for thread in threading.enumerate():
        if thread.name == "B":
            thread.join(120)
    assert codes["B"] == 0 and len(read_records(out)) == 5  # the 5 pairs of ONE_DIGITS_AND


def test_a_second_run_on_a_folder_in_use_is_refused_not_run_twice(tmp_path, monkeypatch, capsys):
    """The same settings, started while the first run samples: it would redo the same pending items."""
    import superdiff.sweep.run

    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--out", str(out)]
    sample_share, codes = superdiff.sweep.run.sample_share, []

    def sample_while_another_run_starts(*a, **k):
        if not codes:
            codes.append(superdiff_main(args))
        return sample_share(*a, **k)

    monkeypatch.setattr(superdiff.sweep.run, "sample_share", sample_while_another_run_starts)
    assert superdiff_main(args) == 0
    err = capsys.readouterr().err
    assert codes == [2] and f"--out: another sweep is running in {str(out)!r}" in err
    assert len(read_records(out)) == 5 and {r["process"] for r in read_records(out)} == {0}
    assert superdiff_main(args) == 0  # the lock went with the first run


def test_resuming_with_another_scorer_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", *ONE_DIGITS_AND]
    assert superdiff_main([*base, "--scorer", "none", "--out", str(out)]) == 0
    capsys.readouterr()
    assert superdiff_main([*base, "--scorer", "digits", "--out", str(out)]) == 2
    assert "scorer='none'" in capsys.readouterr().err


def test_max_size_is_the_pipelines_limit(tmp_path, capsys, monkeypatch):
    """--max-size raises the pipeline's own limit (here the default lowered to 64 px, so that a 72 px tiny
    sweep stands for a 2056 px one)."""
    from superdiff.limits import Limits

    monkeypatch.setattr(SuperDiffMixin, "limits", Limits(size=64))
    args = [
        "sweep",
        "--model",
        "tiny",
        "--pairs",
        "paper",
        "--methods",
        "and",
        "--seeds",
        "0",
        "--steps",
        "1",
    ]
    out = tmp_path / "sweep"
    assert superdiff_main([*args, "--size", "72", "--max-size", "128", "--out", str(out)]) == 0
    assert pixels(out / "images" / "p000_and_s0000.png").shape == (72, 72, 3)


def test_non_finite_sampling_stops_the_sweep_without_a_record(tmp_path, capsys, monkeypatch):
    """A failure before the first record leaves no sweep folder (a rerun may change settings); one in a
    folder that holds records keeps it."""
    from superdiff.digits.pipeline import DigitsPipeline

    def overflowing(self, labels, guidance_scale):
        return [lambda x, sigma: torch.full_like(x, math.nan)] * len(labels)

    predictor = DigitsPipeline.predictor
    monkeypatch.setattr(DigitsPipeline, "predictor", overflowing)
    out, resumed = tmp_path / "sweep", tmp_path / "resumed"
    assert superdiff_main(["sweep", *ONE_DIGITS_AND, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("superdiff sweep: error: ") and "NaN or infinite" in err
    assert not out.exists()
    monkeypatch.setattr(DigitsPipeline, "predictor", predictor)
    assert superdiff_main(["sweep", *ONE_DIGITS_AND, "--out", str(resumed)]) == 0
    monkeypatch.setattr(DigitsPipeline, "predictor", overflowing)
    assert superdiff_main(["sweep", *ONE_DIGITS_AND, "--seeds", "0-1", "--out", str(resumed)]) == 2
    assert (resumed / "sweep.json").exists() and len(list((resumed / "records").glob("*.json"))) == 5
    monkeypatch.setattr(DigitsPipeline, "predictor", predictor)
    assert superdiff_main(["sweep", *ONE_DIGITS_AND[:-2], "--steps", "4", "--out", str(out)]) == 0


def test_progress_reads_the_folder_only_beside_other_processes_and_then_rarely(tmp_path, monkeypatch):
    """It counted every pending record on disk after each batch: at 40 000 images 14 s between batches of
    0.2 s, which would have made a sweep of the 10⁶ images allowed take weeks."""
    from types import SimpleNamespace

    import superdiff.sweep.run

    reads, made = [], []

    class Progress(superdiff.sweep.run.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def on_disk(self):
            reads.append(1)
            return super().on_disk()

    monkeypatch.setattr(superdiff.sweep.run, "Progress", Progress)
    assert superdiff_main(["sweep", *ONE_DIGITS_AND, "--out", str(tmp_path / "a")]) == 0
    assert reads == [] and made[0].bar.n == 5  # one process: it counts what it wrote
    cfg = digits_and(tmp_path / "b", range(50))
    two = SimpleNamespace(is_main_process=True, num_processes=2)
    progress = Progress(cfg, cfg.items, two, scan_every=60)
    for _ in range(50):
        progress.update(1)
    assert len(reads) == 1 and progress.bar.n == 0  # read once at the start, then not within 60 s
    progress.next_scan = 0.0
    progress.update(0)
    assert len(reads) == 2


def test_unreadable_records_are_redone(tmp_path, capsys, monkeypatch):
    import superdiff.sweep.run

    started = []  # (records already counted, pending) when each run's progress bar starts

    class Progress(superdiff.sweep.run.Progress):
        def __init__(self, *args):
            super().__init__(*args)
            started.append((self.on_disk(), len(self.todo)))

    monkeypatch.setattr(superdiff.sweep.run, "Progress", Progress)
    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--out", str(out)]
    assert superdiff_main(args) == 0
    records = sorted((out / "records").glob("*.json"))
    stamps = {path: path.stat().st_mtime_ns for path in records[2:]}
    records[0].write_text("")  # as a crash could leave it
    records[1].write_text('{"x": 1}\n')
    assert superdiff_main(args) == 0
    # the unreadable records are removed before counting: a stale one would end the main process's wait
    # for the other processes' records early (Progress.wait_for_all)
    assert started[-1] == (0, 2)
    assert [r["key"] for r in read_records(out)] == [path.stem for path in records]
    assert {path: path.stat().st_mtime_ns for path in records[2:]} == stamps  # not redone
    assert "This run: 2 new images" in (out / "summary.md").read_text()
    images = sorted((out / "images").glob("*.png"))
    kept = {path: path.stat().st_mtime_ns for path in records[:2]}
    images[2].unlink()  # a record whose image is gone, emptied or cut short is not done
    images[3].write_bytes(b"")
    images[4].write_bytes(images[4].read_bytes()[:100])  # the PNG signature, not its end: had been kept
    assert superdiff_main(args) == 0
    assert "This run: 3 new images" in (out / "summary.md").read_text()
    assert all(Image.open(path).load() is not None and Image.open(path).size == (64, 64) for path in images)
    assert {path: path.stat().st_mtime_ns for path in records[:2]} == kept


def test_a_record_of_other_settings_is_redone_not_summarized(tmp_path):
    """A record copied in from another sweep (or left by a run with other --steps) had been counted as done
    and averaged into a summary that names this sweep's steps."""
    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--out", str(out)]
    assert superdiff_main(args) == 0
    record = sorted((out / "records").glob("*.json"))[0]
    row = json.loads(record.read_text())
    record.write_text(json.dumps({**row, "steps": 50}))
    assert superdiff_main(args) == 0
    assert "This run: 1 new images" in (out / "summary.md").read_text()
    assert json.loads(record.read_text())["steps"] == 3


def test_a_summary_of_part_of_a_folder_says_what_it_leaves_out(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert superdiff_main(["sweep", *ONE_DIGITS_AND, "--seeds", "0-1", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert superdiff_main(["sweep", *ONE_DIGITS_AND, "--out", str(out)]) == 0  # seed 0 alone: all done
    note = "This summary covers this command's grid only: records/ holds 5 more records from other seeds"
    assert f"superdiff sweep: warning: {note}" in capsys.readouterr().err
    assert note in (out / "summary.md").read_text() and len(read_records(out)) == 5
    assert len(list((out / "records").glob("*.json"))) == 10


def test_interrupt_keeps_the_completed_images_and_resumes(tmp_path, capsys, monkeypatch):
    import superdiff.sweep.run

    write, calls = superdiff.sweep.run.write_batch, []

    def interrupted_after_two(*args):
        write(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(superdiff.sweep.run, "write_batch", interrupted_after_two)
    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--batch-size", "1", "--out", str(out)]
    try:
        code = superdiff_main(args)
    except KeyboardInterrupt:  # a failed test, not an interrupted test session
        pytest.fail("the interrupt escaped the sweep command")
    assert code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "superdiff sweep: interrupted; completed images are kept, rerun the same command to resume"
    )
    done = sorted((out / "records").glob("*.json"))
    assert len(done) == 2 and all(json.loads(path.read_text())["key"] == path.stem for path in done)
    monkeypatch.setattr(superdiff.sweep.run, "write_batch", write)
    assert superdiff_main(args) == 0
    assert len(read_records(out)) == 5 and "This run: 3 new images" in (out / "summary.md").read_text()


def test_sigterm_before_the_first_record_leaves_no_sweep_folder(tmp_path, monkeypatch, capsys):
    """kill (SIGTERM) or a closed terminal (SIGHUP) while the model loads: the claimed folder is released,
    so a rerun may use other settings; the log says so (a scheduler's kill had ended it without a word)."""
    import superdiff.sweep.run

    def killed_while_loading(cfg, state):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the signal's handler raises here

    monkeypatch.setattr(superdiff.sweep.run, "sample", killed_while_loading)
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stopped:
        superdiff_main(["sweep", *ONE_DIGITS_AND, "--out", str(out)])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not out.exists()
    assert (
        capsys.readouterr().err
        == "superdiff sweep: interrupted; completed images are kept, rerun the same command to resume\n"
    )


def test_csv_cells_that_a_spreadsheet_would_run_are_made_text():
    rows = [{"prompt_1": '=HYPERLINK("http://x")', "prompt_2": "-a dog", "p": "@x", "q": "+1", "lift": -1.5}]
    parsed = next(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed == {
        "prompt_1": '\'=HYPERLINK("http://x")',
        "prompt_2": "'-a dog",
        "p": "'@x",
        "q": "'+1",
        "lift": "-1.5",
    }


def test_a_batch_of_exactly_the_pixels_of_one_call_is_allowed(tmp_path):
    """64 images of 2048² are the 2**28 pixels one call allows; 65 are more."""
    grid = dict(pairs=[("a", "b")], methods=["and"], seeds=[0], out=tmp_path / "s", model="tiny", steps=1)
    assert SweepConfig(**grid, guidance_scale=1.0, size=2048, batch_size=64).batch_size == 64
    with pytest.raises(ValueError, match="^--batch-size: 65 images of 2048²"):
        SweepConfig(**grid, guidance_scale=1.0, size=2048, batch_size=65)


def test_an_out_that_is_a_file_is_refused_before_any_model_loads(tmp_path, capsys, no_models):
    (tmp_path / "notes").write_text("mine")
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err
    assert err == f"superdiff sweep: error: --out: {str(tmp_path / 'notes')!r} exists and is not a folder\n"
    assert (tmp_path / "notes").read_text() == "mine"


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(lift=1.0), "lift (lift=0.0)"),
        (dict(size=72), "size (size=64)"),
        (dict(pairs=[("a", "c")]), "pairs"),  # not spelled out: there may be thousands of them
        (dict(scorer="clip"), "scorer, clip_model (scorer='none', clip_model=None)"),
    ],
)
def test_resuming_with_a_setting_that_changes_the_images_is_refused(tmp_path, change, named):
    """Each setting that changes an image or a record refuses a resume, naming its saved value (the pairs
    only by name); --clip-model without CLIP scores is no setting."""
    from dataclasses import replace

    from superdiff.sweep.run import check_settings, claim

    cfg = SweepConfig(
        [("a", "b")], ["and"], [0], tmp_path, model="tiny", steps=2, guidance_scale=1.0, size=64
    )
    with ExitStack() as lock:
        claim(cfg, "cpu", lock)
    check_settings(replace(cfg, clip_model="other/clip", seeds=[0, 1]), "cpu")
    with pytest.raises(ValueError, match=f"holds a sweep with other {re.escape(named)}; use a new folder"):
        check_settings(replace(cfg, **change), "cpu")


def test_records_that_are_not_the_items_are_redone(tmp_path):
    """A record naming another item or method, made with another lift, or with seconds or a score that are not
    finite numbers is not the item's: it is redone, not summarized."""
    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--out", str(out)]
    assert superdiff_main(args) == 0
    paths = sorted((out / "records").glob("*.json"))
    rows = [json.loads(path.read_text()) for path in paths]
    edits = [
        {"key": rows[1]["key"]},
        {"method": "or"},
        {"lift": 1.0},
        {"seconds": True},
        {"score_min": math.nan},
    ]
    for path, row, edit in zip(paths, rows, edits, strict=True):
        path.write_text(json.dumps({**row, **edit}))
    assert superdiff_main(args) == 0
    assert "This run: 5 new images" in (out / "summary.md").read_text()
    for path in paths:
        row = json.loads(path.read_text())
        assert (row["key"], row["method"], row["lift"]) == (path.stem, "and", 0.0)
        assert type(row["seconds"]) is float and math.isfinite(row["score_min"])


def test_joint_ba_asks_for_the_second_prompt_that_looks_like_the_first():
    cfg = SweepConfig([("a cat", "a dog")], ["joint", "joint_ba"], [0], "unused", "tiny", 2, 1.0)
    joint, joint_ba = (pipeline_call(cfg, (item,), 64) for item in cfg.items)
    assert joint_ba["mode"] == "joint" and joint_ba["joint_prompt"] == "a dog that looks like a cat"
    assert "joint_prompt" not in joint  # the pipeline's own: "a cat that looks like a dog"
    assert (joint_ba["prompt_1"], joint_ba["prompt_2"]) == ("a cat", "a dog")


def test_an_image_depends_on_its_seed_not_on_its_batch(tmp_path, two_pairs):
    """Each image of a batch has its own seed's generator: batches of 3 draw the images of single calls."""
    args = ["sweep", "--model", "digits", "--pairs", two_pairs, "--methods", "and", "--seeds", "0-2"]
    args += ["--steps", "2"]
    for size in ("1", "3"):
        assert superdiff_main([*args, "--batch-size", size, "--out", str(tmp_path / size)]) == 0
    keys = expected_keys(two_pairs, "and", "0-2")
    ones, threes = ([pixels(tmp_path / size / "images" / f"{key}.png") for key in keys] for size in "13")
    assert all(np.array_equal(a, b) for a, b in zip(ones, threes, strict=True))
    assert not np.array_equal(ones[0], ones[1])  # the seeds differ, so do their images


def test_a_record_on_disk_means_its_image_is_complete(tmp_path, monkeypatch):
    """Killed between the renames of a batch (here: Ctrl-C after the first), the folder holds no record
    without its image: the other processes' records count as done images (Progress.on_disk)."""
    replace, renamed = os.replace, []

    def stopped_after_one(src, dst):
        if renamed:
            raise KeyboardInterrupt
        renamed.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", stopped_after_one)
    out = tmp_path / "sweep"
    args = ["sweep", *ONE_DIGITS_AND, "--batch-size", "1", "--out", str(out)]
    assert superdiff_main(args) == 130 and len(renamed) == 1
    assert all((out / "images" / f"{path.stem}.png").is_file() for path in (out / "records").glob("*.json"))
    monkeypatch.setattr(os, "replace", replace)
    assert superdiff_main(args) == 0 and len(read_records(out)) == 5


def test_a_run_that_claimed_the_folder_between_the_checks_is_seen_under_the_lock(tmp_path, monkeypatch):
    """The settings are checked again once the lock is held: a run that wrote sweep.json (and ended) after
    this one's first check had been resumed with other settings."""
    import superdiff.sweep.run

    first, second = (digits_and(tmp_path / "s", steps=k) for k in (4, 3))
    held = superdiff.sweep.run.held

    def the_first_claims_meanwhile(cfg):
        if cfg is second:
            with ExitStack() as lock:
                superdiff.sweep.run.claim(first, "cpu", lock)
        return held(cfg)

    monkeypatch.setattr(superdiff.sweep.run, "held", the_first_claims_meanwhile)
    with ExitStack() as lock, pytest.raises(ValueError, match=r"holds a sweep with other steps \(steps=4\)"):
        superdiff.sweep.run.claim(second, "cpu", lock)
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["steps"] == 4


def test_default_steps_methods_and_size_limits(tmp_path):
    """Defaults as --help gives them: 1000 steps for Stable Diffusion, 100 for digits, whose default methods
    leave out the joint ones (no text encoder); --max-size and --size go down to 64."""
    from superdiff.sweep.cli import add_arguments, config

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def cfg(*args):
        return config(parser.parse_args([*args, "--out", str(tmp_path / "s")]))

    tiny, digits = cfg("--model", "tiny"), cfg("--model", "digits")
    assert tiny.steps == 1000 and digits.steps == 100
    assert {"joint", "joint_ba"} & set(digits.methods) == set() and "joint" in tiny.methods
    assert "and" in digits.methods
    assert cfg("--model", "tiny", "--max-size", "64", "--size", "64").size == 64
    with pytest.raises(ValueError, match="^--max-size: expected an integer from 64 to"):
        cfg("--model", "tiny", "--max-size", "63")


# ----------------------------------------------------------------------------- processes, crash, resume


def two_process_launcher() -> list[str]:
    """accelerate launch (torchrun) with 2 CPU processes on a free port."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return launcher + ["--main_process_port", str(free_port())]


def test_two_processes_write_every_item_exactly_once(tmp_path, two_pairs):
    """accelerate launch (torchrun) with 2 CPU processes vs one plain process: same items, same images."""
    args = [*SMALL, "--pairs", two_pairs, "--batch-size", "2"]
    launcher = two_process_launcher()
    two, one = tmp_path / "two", tmp_path / "one"
    run = sweep(two, *args, launcher=launcher)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sweep(one, *args).returncode == 0

    keys = expected_keys(two_pairs, "and,or,prompt_1", "0-2")
    rows = read_records(two)
    assert [r["key"] for r in rows] == keys  # complete, in plan order, no duplicate
    assert {r["process"] for r in rows} == {0, 1}  # the work was split
    logged = [
        line.split(": ")[0].split()[2:]
        for i in (0, 1)
        for line in (two / "logs" / f"process-{i}.log").read_text().splitlines()
        if "_s0" in line
    ]
    logged = [key for line in logged for key in line]
    assert sorted(logged) == sorted(keys)  # each item sampled by exactly one process, once
    assert sorted(p.stem for p in (two / "images").iterdir()) == sorted(keys)
    for key in keys:  # the split does not change an image: per-image seeds
        assert np.array_equal(pixels(two / "images" / f"{key}.png"), pixels(one / "images" / f"{key}.png"))
    assert "on 2 process(es)" in (two / "summary.md").read_text()


def test_a_refused_out_stops_every_process_before_any_model_loads(tmp_path):
    """Only the main process claims --out; the others learn its answer instead of loading the model and
    then failing in gloo when it exits."""
    (tmp_path / "notes.txt").write_text("mine")
    run = sweep(tmp_path, *SMALL, launcher=two_process_launcher())
    assert run.returncode != 0
    ours = [line for line in run.stderr.splitlines() if line.startswith("superdiff sweep")]
    assert ours == [
        f"superdiff sweep [process 0]: error: --out: {str(tmp_path)!r} holds files but no sweep.json "
        "(e.g. 'notes.txt'), so it is not a sweep folder; use a new or empty folder"
    ]
    assert "Connection closed" not in run.stderr and "[rank1]" not in run.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_process_that_dies_stops_the_main_one_with_a_message_not_a_wait_without_end(tmp_path, two_pairs):
    """Launched without torchrun (which stops the others itself), as a scheduler may: process 1 dies at its
    first write. The main process counted records on disk until all were there, so it had waited forever."""
    out, args, port = tmp_path / "sweep", [*SMALL, "--pairs", two_pairs, "--batch-size", "2"], free_port()

    def start(rank: int, **env) -> subprocess.Popen:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
        command = [sys.executable, "-m", "superdiff.sweep", *args, "--out", str(out)]
        return subprocess.Popen(command, env={**ENV, **env, "LOCAL_RANK": str(rank)}, text=True, stderr=PIPE)

    main, other = start(0), start(1, **{CRASH_AFTER: "0"})
    try:
        assert other.wait(timeout=300) == 75
        err = main.communicate(timeout=120)[1]
    finally:
        for process in (main, other):
            process.kill()
            process.communicate()
    assert main.returncode == 2, err[-2000:]
    logs = str(out / "logs")
    assert err.splitlines()[-1] == (
        "superdiff sweep [process 0]: error: another process of this sweep stopped or did not answer within "
        f"the launch's timeout (see the launcher's output and {logs!r}); the records written are kept: rerun "
        "the same command to resume"
    )
    assert (
        len(list((out / "records").glob("*.json"))) == 9
    )  # the main process's 6 batches (2, 1, 2, 1, 2, 1) of 12
    assert sweep(out, *args).returncode == 0
    assert [r["key"] for r in read_records(out)] == expected_keys(two_pairs, "and,or,prompt_1", "0-2")


def test_crash_then_resume_finishes_without_duplicates_or_corrupt_files(tmp_path, two_pairs):
    out, args = tmp_path / "sweep", [*SMALL, "--pairs", two_pairs, "--batch-size", "2"]
    crashed = sweep(out, *args, env={**ENV, CRASH_AFTER: "3"})
    assert crashed.returncode == 75  # died abruptly while writing its 4th batch
    done = sorted(p.stem for p in (out / "records").glob("*.json"))
    assert len(done) == 2 + 1 + 2  # batches of 2, 1, 2 seeds were committed
    assert list((out / "images").glob(".*.tmp"))  # the 4th batch's files were staged, not renamed
    assert not (out / "records.jsonl").exists()
    stamps = {key: (out / "records" / f"{key}.json").stat().st_mtime_ns for key in done}

    resumed = sweep(out, *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    keys = expected_keys(two_pairs, "and,or,prompt_1", "0-2")
    assert [r["key"] for r in read_records(out)] == keys
    assert {key: (out / "records" / f"{key}.json").stat().st_mtime_ns for key in done} == stamps  # not redone
    assert not list(out.rglob("*.tmp"))
    for key in keys:
        assert pixels(out / "images" / f"{key}.png").shape == (64, 64, 3)
    assert f"{len(keys) - len(done)} new images" in (out / "summary.md").read_text()


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", "--model", "digits", "--pairs", "digits", "--methods", "and", "--seeds", "0"]
    assert superdiff_main([*base, "--steps", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    assert superdiff_main([*base, "--steps", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superdiff sweep: error: --out: ") and "steps=3" in err
    assert superdiff_main([*base, "--seeds", "0-1", "--steps", "3", "--out", str(out)]) == 0  # grid may grow


def test_beside_other_processes_the_bar_counts_the_folder_rarely_and_ends_with_every_record(
    tmp_path, monkeypatch
):
    """The folder is counted again after scan_every seconds, or 10× as long as a count took if longer; the
    wait for the others ends with their records counted."""
    import superdiff.sweep.run
    from superdiff.sweep.run import record_path

    now, counted = [0.0], []
    monkeypatch.setattr(
        superdiff.sweep.run, "time", SimpleNamespace(perf_counter=lambda: now[0], sleep=time.sleep)
    )

    class Progress(superdiff.sweep.run.Progress):
        def on_disk(self):
            counted.append(now[0])
            now[0] += 5.0  # a count takes 5 s: the next one is 50 s after it
            return super().on_disk()

    cfg = digits_and(tmp_path, range(4))
    (tmp_path / "records").mkdir()
    progress = Progress(
        cfg, cfg.items, SimpleNamespace(is_main_process=True, num_processes=2), scan_every=1.0
    )
    progress.update(1)
    for item in cfg.items[:3]:  # another process's records
        record_path(tmp_path, item).write_text("{}")
    now[0] = 54.0
    progress.update(1)
    assert counted == [0.0] and progress.bar.n == 0
    now[0] = 55.0
    progress.update(1)
    assert counted == [0.0, 55.0] and progress.bar.n == 3
    record_path(tmp_path, cfg.items[3]).write_text("{}")
    everyone_done = SimpleNamespace(is_completed=lambda: True, wait=lambda: None)
    monkeypatch.setattr(torch.distributed, "barrier", lambda async_op: everyone_done)
    progress.wait_for_all()
    assert progress.bar.n == 4


def test_a_peer_that_stops_during_a_step_taken_together_is_named(tmp_path):
    """gloo's error at a barrier becomes PeerStopped: one line naming the logs and the resume."""
    from superdiff.sweep.run import PeerStopped, together

    cfg = digits_and(tmp_path)

    def closed():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")

    with pytest.raises(PeerStopped, match="^another process of this sweep stopped .* rerun the same command"):
        together(cfg, SimpleNamespace(wait_for_everyone=closed))


def test_no_process_writes_before_every_process_has_listed_the_pending_items(tmp_path, monkeypatch):
    """Two processes (threads here) prepare: the main one returns, and may write, only once the other has
    listed the pending items, else the two could split different lists (items run twice or never)."""
    import superdiff.sweep.run

    cfg = digits_and(tmp_path, [0, 1])
    pending, listed, theirs = superdiff.sweep.run.pending, threading.Event(), []
    barrier = threading.Barrier(2, timeout=60)

    def slowly_listed(cfg):
        if threading.current_thread().name == "other":
            time.sleep(0.3)
            listed.set()
        return pending(cfg)

    monkeypatch.setattr(superdiff.sweep.run, "pending", slowly_listed)
    state = SimpleNamespace(is_main_process=False, wait_for_everyone=barrier.wait)
    other = threading.Thread(
        target=lambda: theirs.append(superdiff.sweep.run.prepare(cfg, state)), name="other"
    )
    other.start()
    mine = superdiff.sweep.run.prepare(
        cfg, SimpleNamespace(is_main_process=True, wait_for_everyone=barrier.wait)
    )
    assert listed.is_set()
    other.join(60)
    assert theirs == [mine] and mine == cfg.items


def test_a_refused_process_exits_2_without_a_word(tmp_path, monkeypatch, capsys):
    """The main process printed why --out was refused; the others exit 2 too, silently."""
    import superdiff.sweep.run

    def refused(*args):
        raise superdiff.sweep.run.Refused("--out: the main process said why")

    monkeypatch.setattr(superdiff.sweep.run, "run_sweep", refused)
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- scores and summary


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-clip")
    model, processor = tiny_clip()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clip_score_is_100_cos_of_projected_embeddings(clip_folder):
    model, processor = tiny_clip()
    out = tiny_pipeline()("a cat", "a dog", seed=0, num_inference_steps=2, batch_size=3, height=64, width=64)
    prompts = ["a cat", "a dog"]
    scores = ClipScorer.from_pretrained(str(clip_folder))(out, prompts)
    assert scores.shape == (3, 2)
    with torch.no_grad():  # independently: encoders, projections, cosine
        pix = processor(images=out.to_pil(), return_tensors="pt")["pixel_values"]
        tok = processor(text=prompts, return_tensors="pt", padding=True)
        img = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        txt = model.text_projection(model.text_model(**tok).pooler_output)
        cos = torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
    torch.testing.assert_close(scores, 100 * cos, atol=1e-3, rtol=1e-4)


def test_records_take_min_and_mean_over_the_prompts():
    from superdiff.sweep import Item, SweepConfig

    cfg = SweepConfig([("3", "8")], ["and"], [0, 1], "unused", "digits", 10, 2.0)
    out = Namespace(kappa=torch.rand(10, 2, 2), log_q=torch.randn(11, 2, 2))
    scores = torch.tensor([[0.9, 0.2], [0.3, 0.6]])
    batch = (Item(0, "3", "8", "and", 0), Item(0, "3", "8", "and", 1))
    rows = records(cfg, batch, out, scores, 1.0, "p", "cpu", 0)
    assert [r["score_min"] for r in rows] == pytest.approx([0.2, 0.3])
    assert [r["score_mean"] for r in rows] == pytest.approx([0.55, 0.45])
    assert rows[1]["kappa_final"] == pytest.approx(out.kappa[-1, 1].tolist(), abs=1e-6)
    assert rows[0]["kappa_mean"] == pytest.approx(out.kappa[:, 0].mean(0).tolist(), abs=1e-6)
    assert rows[0]["log_q_final"] == pytest.approx(out.log_q[-1, 0].tolist(), abs=1e-5)
    assert rows[0]["seconds"] == 0.5


def test_stable_diffusion_sweep_scores_every_method_with_clip(tmp_path, clip_folder, capsys):
    out = tmp_path / "sd"
    args = ["sweep", "--model", "tiny", "--pairs", "paper", "--seeds", "0-1", "--steps", "2"]
    args += ["--methods", "and,or,avg,joint,joint_ba,prompt_1,prompt_2", "--scorer", "clip"]
    assert superdiff_main([*args, "--clip-model", str(clip_folder), "--out", str(out)]) == 0
    rows = read_records(out)
    assert len(rows) == 20 * 7 * 2 and all(len(r["scores"]) == 2 for r in rows)
    assert all(r["scorer"] == "CLIP score (100·cos)" for r in rows)
    joint = [r for r in rows if r["method"] == "joint"]
    assert all(r["kappa_final"] == [0.0, 0.0] for r in joint)  # x moves with the joint prompt alone
    one = [r for r in rows if r["method"] == "prompt_1"]
    assert all(r["kappa_mean"] == [1.0, 0.0] for r in one)
    assert (out / "summary.png").stat().st_size > 1000


def test_fast_sweep_draws_the_eager_images_and_says_so(tmp_path, capsys, monkeypatch, two_pairs):
    """--fast compiles the tiny pipeline's UNet (test_fast's shapes: a warm inductor cache) and draws the
    same images as an eager sweep (κ within test_fast's 2e-2: AND amplifies last bits); the records and the
    summary say which it was."""
    states = []
    enable = SuperDiffMixin.enable_fast_sampling
    monkeypatch.setattr(SuperDiffMixin, "enable_fast_sampling", lambda pipe: states.append(enable(pipe)))
    args = ["sweep", "--model", "tiny", "--pairs", two_pairs, "--methods", "and", "--seeds", "0-1"]
    args += ["--steps", "3", "--batch-size", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        assert superdiff_main([*args, "--out", str(tmp_path / "eager")]) == 0
        assert superdiff_main([*args, "--fast", "--out", str(tmp_path / "fast")]) == 0
    assert len(states) == 1 and states[0].compiled
    eager, fast = read_records(tmp_path / "eager"), read_records(tmp_path / "fast")
    assert len(eager) == len(fast) == 4
    assert {r["fast"] for r in eager} == {False} and {r["fast"] for r in fast} == {True}
    for a, b in zip(eager, fast, strict=True):
        assert a["key"] == b["key"] and a["kappa_final"] == pytest.approx(b["kappa_final"], abs=2e-2)
        a_px, b_px = (pixels(tmp_path / name / a["image"]).astype(int) for name in ("eager", "fast"))
        assert a["image"] == b["image"] and np.abs(a_px - b_px).max() <= 2
    assert "--fast: the first call of each batch shape" in (tmp_path / "fast" / "summary.md").read_text()
    assert "--fast" not in (tmp_path / "eager" / "summary.md").read_text()


def test_summary_matches_the_records(tmp_path, capsys):
    out = tmp_path / "digits"
    args = ["sweep", "--model", "digits", "--seeds", "0-3", "--steps", "10", "--methods", "and,avg,prompt_2"]
    assert superdiff_main([*args, "--out", str(out)]) == 0
    rows = read_records(out)
    with open(out / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    assert header[:3] == ["method", "description", "images"]
    assert [t["method"] for t in table] == ["and", "avg", "prompt_2"]
    for t in table:
        mine = [r for r in rows if r["method"] == t["method"]]
        p = [r["scores"] for r in mine]  # recomputed from the per-prompt probabilities
        mins, means = [min(s) for s in p], [sum(s) / 2 for s in p]
        assert int(t["images"]) == len(mine) == 5 * 4
        assert float(t["score_min_mean"]) == pytest.approx(statistics.fmean(mins), abs=1e-5)
        assert float(t["score_min_std"]) == pytest.approx(np.std(mins, ddof=1), abs=1e-5)
        assert float(t["score_mean_mean"]) == pytest.approx(statistics.fmean(means), abs=1e-5)
        assert float(t["score_mean_std"]) == pytest.approx(np.std(means, ddof=1), abs=1e-5)
        line = next(
            x for x in (out / "summary.md").read_text().splitlines() if x.startswith(f"| {t['method']} ")
        )
        assert f"{statistics.fmean(mins):.3f} ± {np.std(mins, ddof=1):.3f}" in line
    p_and = [r["scores"] for r in rows if r["method"] == "and"]
    assert all(0 <= v <= 1 for s in p_and for v in s)


def test_clip_weights_unreachable_give_one_line_and_no_folder(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsUnavailableError, match="openai/clip-vit-base-patch32"):
        ClipScorer.from_pretrained("openai/clip-vit-base-patch32")
    out = tmp_path / "sweep"
    assert superdiff_main(["sweep", "--model", "tiny", "--scorer", "clip", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "openai/clip-vit-base-patch32" in err and "hf download" in err
    assert not out.exists()


def test_a_clip_model_folder_without_weights_is_named_as_the_option(tmp_path, capsys):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    out = tmp_path / "sweep"
    command = ["sweep", "--model", "tiny", "--scorer", "clip", "--clip-model", str(folder), "--out", str(out)]
    assert superdiff_main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"superdiff sweep: error: --clip-model: {str(folder)!r}: ") and err.count("\n") == 1
    assert not out.exists()


def test_too_many_pixels_per_call_are_refused_before_any_model_loads(tmp_path, capsys, no_models):
    argv = [
        "sweep",
        "--model",
        "tiny",
        "--batch-size",
        "1024",
        "--size",
        "2048",
        "--out",
        str(tmp_path / "s"),
    ]
    assert superdiff_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "superdiff sweep: error: --batch-size: 1024 images of 2048² are more than the 268435456"
    )


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """torch's CPU allocator raises RuntimeError, not MemoryError; another RuntimeError stays a traceback."""
    import superdiff.sweep.run

    def exhausted(*args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 51539607552 B")

    monkeypatch.setattr(superdiff.sweep.run, "run_sweep", exhausted)
    assert superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == "superdiff sweep: error: out of memory; try a smaller --batch-size or --size\n"

    def broken(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(superdiff.sweep.run, "run_sweep", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        superdiff_main(["sweep", "--model", "digits", "--out", str(tmp_path / "s")])


def test_python_m_superdiff_sweep_reads_negative_e_notation_and_ctrl_c_before_the_sweep(
    tmp_path, monkeypatch, capsys
):
    """What `accelerate launch -m superdiff.sweep` runs: argparse alone reads -1e3 as an option, and Ctrl-C
    while it set up (accelerate's state) was a traceback."""
    import superdiff.sweep.run
    from superdiff.sweep.cli import main

    out = str(tmp_path / "s")
    assert main(["--model", "digits", "--lift", "-1e3", "--batch-size", "0", "--out", out]) == 2
    assert "--batch-size: expected an integer from 1 to 1024, got 0" in capsys.readouterr().err

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(superdiff.sweep.run, "sweep_state", interrupted)
    assert main(["--model", "digits", "--out", out]) == 130
    assert capsys.readouterr().err == "superdiff sweep: interrupted\n" and not (tmp_path / "s").exists()


def test_an_interrupted_summary_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """summary.png was written after the tables: Ctrl-C between them left a new summary.md beside an old
    figure. Now the five files are replaced together or not at all."""
    import superdiff.sweep.summary as summary
    from superdiff.sweep.cli import config
    from superdiff.sweep.run import load_records

    out = tmp_path / "s"
    argv = [
        "sweep",
        "--model",
        "digits",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--methods",
        "and",
        "--out",
        str(out),
    ]
    assert superdiff_main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"summary.md", "summary.png", "records.csv"} <= set(before)

    def interrupted(*args, **kwargs):
        def write(tmp):
            raise KeyboardInterrupt

        return write

    monkeypatch.setattr(summary, "png", interrupted)
    from superdiff.sweep.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config(parser.parse_args(argv[1:]))
    with pytest.raises(KeyboardInterrupt):
        summary.write_summary(cfg, load_records(cfg), {"images": 0, "seconds": 1.0, "processes": 1})
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_digits_as_yaml_numbers_are_refused_saying_to_quote_them(tmp_path):
    (tmp_path / "p.yaml").write_text("- [3, 8]\n")
    with pytest.raises(ValueError, match=r'prompts \(text: in YAML, quote a digit, "3"\), got \[3, 8\]'):
        load_pairs(str(tmp_path / "p.yaml"))


def test_too_many_images_name_the_three_options_that_multiply():
    """2000 pairs × 1 method × 1000 seeds had been refused as "--seeds: ...", the pairs being the many."""
    pairs = [(f"a {i}", "b") for i in range(2000)]
    with pytest.raises(
        ValueError, match=r"^--pairs × --methods × --seeds: 2000 pairs × 1 methods × 1000 seeds"
    ):
        plan(pairs, ["and"], list(range(1000)))


def test_the_sweeps_command_line_reads_its_options_before_torch_loads():
    """A Ctrl-C in the first seconds of `python -m superdiff.sweep` (what accelerate launch runs) printed
    50–80 lines of traceback from torch's import: the package imported its runner eagerly."""
    code = "import sys, superdiff.sweep.cli as c; print(sorted({'torch', 'accelerate'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- summary, plan, scoring


def record(method, score_min, score_mean, seconds=1.0, **extra):
    return {"method": method, "score_min": score_min, "score_mean": score_mean, "seconds": seconds, **extra}


def test_summary_of_two_images_has_their_sample_std_and_mean_seconds():
    # min 0.2, 0.4: mean 0.3, sample std |0.4 − 0.2| / √2 = 0.14142 (ddof 0 would give 0.1)
    # mean 0.5, 0.9: 0.7, std 0.4 / √2 = 0.28284
    # seconds 1 and 3 per image: 2 s per image (a mean, not the total 4)
    (row,) = summarize([record("and", 0.2, 0.5, seconds=1.0), record("and", 0.4, 0.9, seconds=3.0)])
    assert row["images"] == 2
    assert row["score_min_mean"] == pytest.approx(0.3)
    assert row["score_min_std"] == pytest.approx(0.2 / math.sqrt(2))
    assert row["score_mean_mean"] == pytest.approx(0.7)
    assert row["score_mean_std"] == pytest.approx(0.4 / math.sqrt(2))
    assert row["seconds_per_image"] == pytest.approx(2.0)
    (one,) = summarize([record("or", 0.25, 0.5)])
    assert one["score_min_std"] == 0.0 and one["score_min_mean"] == 0.25


def test_summary_counts_a_score_of_zero_and_orders_methods_as_METHODS():
    # a classifier probability rounded to 0.0 is a score: min 0.0 and 0.5 average to 0.25, not 0.5
    rows = [record("prompt_1", 0.0, 0.3), record("prompt_1", 0.5, 0.7), record("and", 0.1, 0.2)]
    table = summarize(rows)
    assert [t["method"] for t in table] == ["and", "prompt_1"]  # METHODS order, not the records' order
    assert table[1]["score_min_mean"] == pytest.approx(0.25)
    # no scores at all (--scorer none): NaN, shown as "—"
    (none,) = summarize([record("avg", None, None)])
    assert math.isnan(none["score_min_mean"]) and math.isnan(none["score_mean_std"])


def test_flat_spreads_lists_over_columns_numbered_from_one():
    assert flat({"key": "k", "scores": [0.9, 0.2]}) == {"key": "k", "scores_1": 0.9, "scores_2": 0.2}


def test_summary_csv_has_every_column_and_records_csv_numbers_the_scores(tmp_path):
    rows = [
        record("and", 0.2, 0.5, seconds=1.0, scorer="p", scores=[0.2, 0.8]),
        record("and", 0.4, 0.9, seconds=3.0, scorer="p", scores=[1.4, 0.4]),
    ]
    write_summary(sweep_cfg(out=tmp_path), rows, {"images": 2, "seconds": 4.0, "processes": 1})
    with open(tmp_path / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, (row,) = reader.fieldnames, list(reader)
    assert header == [
        "method",
        "description",
        "images",
        "score_min_mean",
        "score_min_std",
        "score_mean_mean",
        "score_mean_std",
        "seconds_per_image",
    ]
    assert row["images"] == "2" and float(row["seconds_per_image"]) == pytest.approx(2.0)
    assert float(row["score_min_mean"]) == pytest.approx(0.3)
    with open(tmp_path / "records.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert (first["scores_1"], first["scores_2"]) == ("0.2", "0.8")


def sweep_cfg(**changes):
    cfg = dict(
        model="digits",
        pairs=[("3", "8"), ("1", "7")],
        methods=["and", "or", "avg"],
        seeds=[0, 1, 2, 3],
        items=[None] * 24,
        steps=10,
        guidance_scale=2.0,
        lift=0.0,
        fast=False,
    )
    return SimpleNamespace(**{**cfg, **changes})


def test_markdown_names_the_grid_and_the_seconds_per_image():
    table = summarize([record("and", 0.2, 0.5, seconds=1.0), record("and", 0.4, 0.9, seconds=5.0)])
    timing = {"images": 2, "seconds": 6.0, "processes": 1}
    text = markdown(table, "classifier probability", timing, sweep_cfg())
    assert "2 prompt pairs × 3 methods × 4 seeds = 24 images; 10 steps" in text
    (line,) = [x for x in text.splitlines() if x.startswith("| and ")]
    # 2 images, min 0.300 ± 0.141, mean 0.700 ± 0.283, (1 + 5) / 2 = 3.000 s per image
    assert line.endswith("| 2 | 0.300 ± 0.141 | 0.700 ± 0.283 | 3.000 |")


def test_bar_plot_draws_min_and_mean_with_their_std_as_error_bars():
    table = summarize([record("and", 0.2, 0.5), record("and", 0.4, 0.9), record("or", 0.1, 0.6)])
    fig = bar_plot(table, "classifier probability")
    plt.close(fig)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers if hasattr(c, "patches")}
    assert set(bars) == {"min over the two prompts", "mean over the two prompts"}
    heights = {k: [p.get_height() for p in c.patches] for k, c in bars.items()}
    assert heights["min over the two prompts"] == pytest.approx([0.3, 0.1])
    assert heights["mean over the two prompts"] == pytest.approx([0.7, 0.6])
    lefts = {k: [p.get_x() + p.get_width() / 2 for p in c.patches] for k, c in bars.items()}
    assert lefts["min over the two prompts"] == pytest.approx([-0.2, 0.8])  # min left of mean
    # the error bar of "and"'s min bar spans 0.3 ± 0.2/√2
    (segment, _) = bars["min over the two prompts"].errorbar.lines[2][0].get_segments()
    s = 0.2 / math.sqrt(2)
    assert [y for _, y in segment] == pytest.approx([0.3 - s, 0.3 + s])
    assert ax.get_ylabel() == "classifier probability"


def test_a_one_seed_range_and_the_largest_seed_are_seeds():
    assert parse_seeds("5-5") == [5]
    assert parse_seeds(str(2**32 - 1)) == [2**32 - 1]  # MAX_SEED itself is allowed


def test_distinct_counts_each_integer_once():
    # {0, 1, 2} ∪ {2, 3, 4} ∪ {10}: 6 integers
    assert distinct([range(0, 3), range(2, 5), range(10, 11)]) == 6
    assert distinct([range(0, 3)]) == 3


def test_the_image_cap_itself_is_allowed(monkeypatch):
    monkeypatch.setattr(plan_module, "MAX_SWEEP_IMAGES", 6)
    assert parse_seeds("0-5") == list(range(6))  # 6 seeds: exactly the cap
    with pytest.raises(ValueError, match="^--seeds: expected at most 6 seeds"):
        parse_seeds("0-6")
    assert len(plan([("a", "b"), ("c", "d")], ["and"], [0, 1, 2])) == 6  # 2 × 1 × 3 = the cap
    with pytest.raises(ValueError, match="= 8 images; a sweep holds at most 6"):
        plan([("a", "b"), ("c", "d")], ["and", "or"], [0, 1])


def test_item_key_is_the_documented_stem():
    assert Item(3, "a", "b", "and", 17).key == "p003_and_s0017"


def test_yaml_items_are_numbered_from_one(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("- [a, b]\n- [x]\n")
    with pytest.raises(ValueError, match=r"^--pairs: item 2 of .* must be two non-empty prompts"):
        load_pairs(str(path))


def test_digits_scores_follow_the_prompts_order():
    """Columns in the order of the prompts: for ("8", "3") the flip of ("3", "8")."""
    out = load_pipeline()("3", "8", seed=0, num_inference_steps=5, batch_size=3)
    scorer = DigitsScorer()
    with torch.no_grad():
        forward, backward = scorer(out, ["3", "8"]), scorer(out, ["8", "3"])
    assert torch.equal(backward, forward.flip(-1))
    assert not torch.equal(forward[:, 0], forward[:, 1])


def test_clip_scores_a_prompt_longer_than_the_text_encoder_reads(tmp_path):
    """Prompts may be up to 2000 characters; CLIP reads its first max_position_embeddings tokens."""
    model, processor = tiny_clip()
    out = tiny_pipeline()("a cat", "a dog", seed=0, num_inference_steps=2, batch_size=1, height=64, width=64)
    long = " ".join(["a cat"] * 200)
    scores = ClipScorer(model, processor)(out, [long, "a dog"])
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()
