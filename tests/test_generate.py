"""``superdiff generate``: images and the κ plot on disk, clear errors and nothing half-written otherwise."""

import json

import huggingface_hub.constants
import pytest
import torch
from PIL import Image

from superdiff.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def generate(tmp_path, *options, prompts=("a flamingo", "a candy cane"), out="flamingo.png"):
    return main(
        [
            "generate",
            *prompts,
            "--model",
            "tiny",
            "--steps",
            "4",
            "--seed",
            "1",
            "--out",
            str(tmp_path / out),
            *options,
        ]
    )


def test_writes_image_and_kappa_plot(tmp_path, capsys):
    assert generate(tmp_path, "--mode", "and", "--lift", "0") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flamingo.png", "flamingo_kappa.png"]
    assert Image.open(tmp_path / "flamingo.png").size == (64, 64)
    assert Image.open(tmp_path / "flamingo_kappa.png").size[0] > 200
    assert str(tmp_path / "flamingo.png") in capsys.readouterr().out


def test_batch_writes_one_file_per_image(tmp_path):
    options = ("--mode", "or", "--temperature", "2", "--guidance-scale", "3")
    assert generate(tmp_path, "--batch-size", "2", *options, "--height", "72", "--width", "64") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "flamingo_0.png",
        "flamingo_1.png",
        "flamingo_kappa.png",
    ]
    assert Image.open(tmp_path / "flamingo_1.png").size == (64, 72)
    saved = [json.loads(Image.open(tmp_path / f"flamingo_{i}.png").text["superdiff"]) for i in (0, 1)]
    assert [s["index"] for s in saved] == [0, 1] and saved[0]["seed"] == saved[1]["seed"] == 1
    assert (saved[1]["mode"], saved[1]["temperature"], saved[1]["guidance_scale"]) == ("or", 2.0, 3.0)
    assert "lift" not in saved[1]  # the call had none: --mode or takes --temperature only


def test_same_seed_same_image(tmp_path):
    generate(tmp_path, out="a.png")
    generate(tmp_path, out="b.png")
    assert Image.open(tmp_path / "a.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()


def test_existing_results_are_kept_unless_overwrite(tmp_path, capsys, monkeypatch):
    import superdiff.generate

    assert generate(tmp_path, "--batch-size", "2") == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    loaded = superdiff.generate.load
    monkeypatch.setattr(superdiff.generate, "load", lambda *a, **k: pytest.fail("loaded before the refusal"))
    assert generate(tmp_path, "--batch-size", "2", "--seed", "2") == 2
    assert capsys.readouterr().err == (
        f"superdiff generate: error: --out: {str(tmp_path / 'flamingo_0.png')!r} and 2 more exist; pass "
        "--overwrite to replace, or choose another --out\n"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.setattr(superdiff.generate, "load", loaded)
    assert generate(tmp_path, "--batch-size", "2", "--seed", "2", "--overwrite") == 0
    assert (tmp_path / "flamingo_0.png").read_bytes() != before["flamingo_0.png"]


def test_without_seed_one_is_chosen_printed_and_saved_so_the_run_repeats(tmp_path, capsys):
    options = ["generate", "a flamingo", "a candy cane", "--model", "tiny", "--steps", "3", "--lift", "1"]
    assert main([*options, "--out", str(tmp_path / "random.png")]) == 0
    said = capsys.readouterr().err
    seed = int(said.split("superdiff generate: seed ")[1].split()[0])
    saved = json.loads(Image.open(tmp_path / "random.png").text["superdiff"])
    assert saved["seed"] == seed and saved["prompts"] == ["a flamingo", "a candy cane"]
    assert (saved["lift"], saved["num_inference_steps"], saved["height"], saved["index"]) == (1.0, 3, 64, 0)
    assert (saved["dtype"], saved["guidance_scale"]) == ("float32", 7.5)  # what ran: the pipeline's default
    assert main([*options, "--seed", str(seed), "--out", str(tmp_path / "again.png")]) == 0
    assert "seed" not in capsys.readouterr().err  # given, so not announced
    pixels = [Image.open(tmp_path / name).tobytes() for name in ("random.png", "again.png")]
    assert pixels[0] == pixels[1]


def test_digits_prompts_draw_with_the_shipped_digits_model(tmp_path):
    assert generate(tmp_path, prompts=("zero", "one"), out="digits.png") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.png", "digits_kappa.png"]


@pytest.mark.parametrize(
    "options, prompts, expected",
    [
        (["--height", "60"], None, "--height"),
        (["--steps", "0"], None, "--steps"),
        (["--batch-size", "0"], None, "--batch-size"),
        (["--guidance-scale", "-1"], None, "--guidance-scale"),
        (["--mode", "xor"], None, "--mode"),
        (["--lift", "inf"], None, "--lift"),
        (["--temperature", "0"], None, "--temperature"),
        ([], ("a flamingo",), "prompts"),
        ([], ("a flamingo", ""), "prompts"),
        ([], ("a flamingo", "x" * 2001), "prompts"),
        (
            [],
            ("a flamingo", "a candy \udcff cane"),
            "prompts",
        ),  # not UTF-8 (a byte the shell could not decode)
        ([], tuple(f"prompt {i}" for i in range(17)), "prompts"),
        (["--mode", "joint"], ("a", "b", "c"), "--mode"),
        (["--max-size", "100000", "--height", "99992"], None, "--max-size"),
        (["--max-size", "56"], None, "--max-size"),
        (["--device", "no-such-device"], None, "--device"),
        # sizes past the limits: refused before any allocation (issue 13)
        (["--batch-size", "1000000000"], None, "--batch-size"),
        (["--steps", "1000000000"], None, "--steps"),
        (["--height", "100000"], None, "--height"),
        (["--width", "8192"], None, "--width"),
        (["--height", "72", "--max-size", "64"], None, "--height"),
        (["--seed", str(2**32)], None, "--seed"),
        (["--seed", str(2**64)], None, "--seed"),
        (["--lift", "1e300"], None, "--lift"),
        (["--guidance-scale", "1e30"], None, "--guidance-scale"),
        (["--device", "meta"], None, "--device"),
        (["--model", "digits", "--steps", "1000000000"], ("3", "8"), "--steps"),
        (["--model", "digits", "--batch-size", "1000000000"], ("3", "8"), "--batch-size"),
        (["--model", "digits", "--height", "64"], ("3", "8"), "--height, --width"),
        (["--model", "digits", "--dtype", "float16", "--cpu-offload"], ("3", "8"), "--dtype, --cpu-offload"),
        (["--model", "digits", "--max-size", "4096"], ("3", "8"), "--max-size"),
        (["--model", "digits", "--max-size", "1024"], ("3", "8"), "--max-size"),
        (["--model", "digits"], ("3", "cat"), "prompts"),
        (["--model", "digits"], ("3", "²"), "prompts"),  # a digit to str.isdigit, not a digit name
        (["--model", "digits", "--guidance-scale", "nan"], ("3", "8"), "--guidance-scale"),
    ],
)
def test_bad_arguments_exit_nonzero_and_write_nothing(tmp_path, capsys, options, prompts, expected):
    code = generate(tmp_path, *options, **({"prompts": prompts} if prompts else {}))
    assert code != 0
    assert f"error: {expected}:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_digits_take_the_guidance_scale(tmp_path):
    images = {}
    for w in ("1", "8"):
        assert (
            generate(tmp_path, "--model", "digits", "--guidance-scale", w, prompts=("3", "8"), out=f"{w}.png")
            == 0
        )
        images[w] = (tmp_path / f"{w}.png").read_bytes()
    assert images["1"] != images["8"]


def test_flux_sizes_are_checked_in_multiples_of_16_before_loading(tmp_path, monkeypatch, capsys):
    import superdiff.generate

    model = tmp_path / "flux"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    monkeypatch.setattr(
        superdiff.generate, "load", lambda *a, **k: pytest.fail("loaded before the size check")
    )
    assert generate(tmp_path, "--model", str(model), "--height", "72") == 2
    assert "error: --height: expected a multiple of 16" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["flux"]


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import superdiff.generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(superdiff.generate, "load", interrupted)
    try:
        code = generate(tmp_path)
    except KeyboardInterrupt:  # escaping, it would stop the whole test session
        pytest.fail("Ctrl-C escaped the command")
    assert code == 130
    assert capsys.readouterr().err == "superdiff generate: interrupted\n"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_command_starts_up_is_one_line_too(monkeypatch, capsys):
    import superdiff.cli

    def importing(name):  # the subcommand's module (diffusers, torch) takes seconds to import
        raise KeyboardInterrupt

    monkeypatch.setattr(superdiff.cli.importlib, "import_module", importing)
    try:
        code = superdiff.cli.main(["generate", "a", "b", "--model", "tiny"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command")
    assert (code, capsys.readouterr().err) == (130, "superdiff generate: interrupted\n")


@pytest.mark.parametrize(
    "options, unused",
    [
        (["--mode", "or", "--lift", "2"], ["--lift"]),
        (["--mode", "avg", "--lift", "2", "--temperature", "3"], ["--lift", "--temperature"]),
        (["--mode", "and", "--temperature", "3"], ["--temperature"]),
        (["--mode", "avg", "--lift", "-2", "--temperature", "0.5"], ["--lift", "--temperature"]),
        (["--mode", "and", "--lift", "2"], []),
        (["--mode", "or", "--temperature", "3"], []),
    ],
)
def test_options_the_mode_ignores_are_named(tmp_path, capsys, options, unused):
    assert generate(tmp_path, *options) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning: --" in line]
    assert [line.split("warning: ")[1].split(" ")[0] for line in warnings] == unused


def test_bad_output_name_is_refused(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert generate(tmp_path, out="flamingo.jpg") != 0
    assert generate(tmp_path, out="a_file/flamingo.png") != 0
    assert capsys.readouterr().err.count("--out") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import tempfile

    import superdiff.generate

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(superdiff.generate, "load", lambda *a, **k: pytest.fail("loaded before --out"))
    monkeypatch.setattr(tempfile, "TemporaryDirectory", denied)  # root may write anywhere: fake a refusal
    assert generate(tmp_path, out="new/flamingo.png") == 2
    err = capsys.readouterr().err
    assert f"--out: cannot write in {str(tmp_path)!r} (Permission denied)" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folders_are_created_after_sampling(tmp_path):
    assert generate(tmp_path, out="new/dir/flamingo.png") == 0
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [
        "flamingo.png",
        "flamingo_kappa.png",
    ]


def test_unparsable_number_is_an_argparse_error(tmp_path):
    with pytest.raises(SystemExit) as info:
        generate(tmp_path, "--steps", "many")
    assert info.value.code == 2 and list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_partial_files(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    assert generate(tmp_path) != 0
    assert "No space left" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # the image written before the plot failed was removed too


def test_unreachable_weights_give_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "out").mkdir()
    code = main(
        [
            "generate",
            "a flamingo",
            "a candy cane",
            "--model",
            "CompVis/stable-diffusion-v1-4",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out" / "x.png"),
        ]
    )
    # only our own line: diffusers' logger may also print (to a stream an earlier test's capture closed)
    ours = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("superdiff generate: error:")
    ]
    assert code != 0 and len(ours) == 1 and "hf auth login" in ours[0] and "local directory" in ours[0]
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own (numpy 2), printed by the CLI
def test_prompt_with_mathtext_dollars_still_writes_image_and_plot(tmp_path, capsys):
    assert generate(tmp_path, prompts=("a $x^$ b", "a dog")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flamingo.png", "flamingo_kappa.png"]
    assert "warning" not in capsys.readouterr().err


def test_a_failing_plot_never_costs_the_sampled_images(tmp_path, monkeypatch, capsys):
    import superdiff.viz

    def broken(*args, **kwargs):
        raise ValueError("a plotting bug")

    monkeypatch.setattr(superdiff.viz, "plot_kappa", broken)
    assert generate(tmp_path, "--batch-size", "2") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flamingo_0.png", "flamingo_1.png"]
    out, err = capsys.readouterr()
    assert "warning: κ plot not written (ValueError: a plotting bug)" in err
    assert "flamingo_kappa.png" not in out


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)])
def test_a_folder_in_the_way_of_one_image_writes_none(tmp_path, monkeypatch, capsys, overwrite):
    """Refused before the work, --overwrite or not: no rename replaces a folder."""
    import superdiff.generate

    monkeypatch.setattr(superdiff.generate, "load", lambda *a, **k: pytest.fail("loaded before the refusal"))
    (tmp_path / "y_1.png").mkdir()
    assert generate(tmp_path, "--batch-size", "2", *overwrite, out="y.png") == 2
    assert f"--out: {str(tmp_path / 'y_1.png')!r} is a folder in the way" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["y_1.png"]


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 51539607552 bytes. Error code 12 (Cannot allocate memory)"
        ),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
)
def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys, error):
    """torch's CPU allocator raises RuntimeError, and on a GPU OutOfMemoryError: not MemoryError."""
    import superdiff.generate

    class Exhausted:
        default_size = 64

        def __call__(self, *args, **kwargs):
            raise error

    monkeypatch.setattr(superdiff.generate, "load", lambda *args, **kwargs: Exhausted())
    assert generate(tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("superdiff generate: error: out of memory") and len(err.splitlines()) == 1


def test_another_runtime_error_is_not_taken_for_out_of_memory(tmp_path, monkeypatch):
    import superdiff.generate

    class Broken:
        default_size = 64

        def __call__(self, *args, **kwargs):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(superdiff.generate, "load", lambda *args, **kwargs: Broken())
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # a bug shows as one
        generate(tmp_path)


@pytest.mark.filterwarnings("always::RuntimeWarning")  # shown, as outside pytest
def test_negative_e_notation_is_a_value_and_warnings_are_one_line(tmp_path, capsys):
    assert generate(tmp_path, "--lift", "-1e6") == 0  # argparse alone reads -1e6 as an option
    err = [line for line in capsys.readouterr().err.splitlines() if "lift" in line]
    assert len(err) == 1 and err[0].startswith("superdiff generate: warning: lift: the estimated log q_1")


def test_negative_e_notation_reaches_the_option(tmp_path, monkeypatch):
    import superdiff.generate

    seen = []
    monkeypatch.setattr(superdiff.generate, "run", lambda args: seen.append(args) or 0)
    assert main(["generate", "a", "b", "--lift", "-1E1", "--temperature", "-.5e0", "--cpu-offload"]) == 0
    assert (seen[0].prompts, seen[0].lift, seen[0].temperature) == (["a", "b"], -10.0, -0.5)
    assert main(["generate", "-1", "-2", "--lift", "-3"]) == 0  # prompts that read as numbers stay prompts
    assert (seen[1].prompts, seen[1].lift) == (["-1", "-2"], -3.0)


def test_a_file_made_at_out_during_the_run_is_kept_and_the_run_takes_the_next_name(
    tmp_path, monkeypatch, capsys
):
    import superdiff.generate

    draw = superdiff.generate.kappa_figure

    def meanwhile(*args):  # another program writes --out while this run samples
        (tmp_path / "flamingo.png").write_text("someone's")
        (tmp_path / "flamingo-2_kappa.png").symlink_to(tmp_path / "nowhere")  # a dangling link counts too
        return draw(*args)

    monkeypatch.setattr(superdiff.generate, "kappa_figure", meanwhile)
    assert generate(tmp_path) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "flamingo.png").read_text() == "someone's"
    written = ["flamingo-3.png", "flamingo-3_kappa.png"]
    assert out.split() == [str(tmp_path / name) for name in written]
    assert f"--out: {str(tmp_path / 'flamingo.png')!r} was made during the run and is kept" in err
    assert Image.open(tmp_path / "flamingo-3.png").size == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["flamingo.png", "flamingo-2_kappa.png", *written]
    )  # flamingo-2.png was not kept without its κ plot


def test_overwrite_replaces_a_file_made_during_the_run(tmp_path, monkeypatch):
    import superdiff.generate

    draw = superdiff.generate.kappa_figure

    def meanwhile(*args):
        (tmp_path / "flamingo.png").write_text("someone's")
        return draw(*args)

    monkeypatch.setattr(superdiff.generate, "kappa_figure", meanwhile)
    assert generate(tmp_path, "--overwrite") == 0
    assert Image.open(tmp_path / "flamingo.png").size == (64, 64)


def test_out_names_are_checked_before_loading(tmp_path, monkeypatch, capsys):
    import superdiff.generate

    monkeypatch.setattr(superdiff.generate, "load", lambda *a, **k: pytest.fail("loaded before the refusal"))
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere")
    assert generate(tmp_path, out="dangling.png") == 2
    assert "dangling.png' exists; pass --overwrite" in capsys.readouterr().err
    assert generate(tmp_path, out="x" * 250 + ".png") == 2  # the image's name fits, its _kappa.png does not
    assert (
        "has 260 bytes, more than the 255 this filesystem takes; choose a shorter --out"
        in capsys.readouterr().err
    )
    assert [p.name for p in tmp_path.iterdir()] == ["dangling.png"]


def test_a_tilde_in_out_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert (
        main(["generate", "a", "b", "--model", "tiny", "--steps", "2", "--seed", "1", "--out", "~/h.png"])
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "h_kappa.png"]


def test_the_device_is_checked_before_a_seed_is_chosen(tmp_path, capsys):
    options = ["generate", "a", "b", "--model", "tiny", "--device", "no-such-device"]
    assert main([*options, "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == (
        "superdiff generate: error: --device: expected cuda, mps or cpu (cuda:1 for a given GPU), got "
        "'no-such-device'\n"
    )


@pytest.mark.parametrize(
    "index, expected",
    [
        (None, "has no model_index.json: pass the folder of a whole pipeline"),
        ("[1, 2]", "has a model_index.json that is not a pipeline index (a JSON object)"),
        ("{bad", "model_index.json' is not a valid JSON file"),
        ('{"_class_name": ["a"]}', "has a model_index.json whose _class_name is not a string"),
    ],
)
def test_a_wrong_model_folder_is_named_as_the_option(tmp_path, capsys, index, expected):
    folder = tmp_path / "model"
    folder.mkdir()
    if index is not None:
        (folder / "model_index.json").write_text(index)
    assert generate(tmp_path, "--model", str(folder)) == 2  # the last --model counts
    err = capsys.readouterr().err
    assert err.startswith(f"superdiff generate: error: --model: {str(folder)!r}") and expected in err
    assert err.count("\n") == 1 and not (tmp_path / "flamingo.png").exists()


def test_overwrite_with_another_batch_size_names_the_earlier_images_it_keeps(tmp_path, capsys):
    assert generate(tmp_path, "--batch-size", "3") == 0
    (tmp_path / "flamingo_notes.png").write_text("not an image of a run")
    capsys.readouterr()
    assert generate(tmp_path, "--overwrite") == 0
    assert capsys.readouterr().err.startswith(
        "superdiff generate: warning: --overwrite keeps flamingo_0.png, flamingo_1.png, flamingo_2.png, "
        "images of an earlier run with another --batch-size\n"
    )
    assert generate(tmp_path, "--overwrite", "--batch-size", "2") == 0
    assert "--overwrite keeps flamingo.png, flamingo_2.png, images" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "prompts", "expected"),
    [
        ((), tuple(f"p{i}" for i in range(17)), "prompts: expected at most 16 prompts, got 17\n"),
        (
            ("--height", "4096"),
            ("a", "b"),
            "--height: expected at most 2048 pixels, got 4096 (raise the limit: ",
        ),
        (
            ("--batch-size", "1024", "--height", "2048", "--width", "2048"),
            ("a", "b"),
            "in one call: fewer or smaller images\n",
        ),
    ],
)
def test_limit_messages_name_what_the_command_line_can_change(tmp_path, capsys, options, prompts, expected):
    """The pipeline's messages say `pipe.limits = pipe.limits.replace(...)`: no option of the CLI."""
    assert generate(tmp_path, *options, prompts=prompts) == 2
    err = capsys.readouterr().err
    assert expected in err and "pipe.limits" not in err


def test_an_upper_case_png_suffix_is_a_png_name(tmp_path):
    """--out X.PNG is taken as x.png is (the suffix is compared case-insensitively)."""
    from superdiff.generate import check_out

    assert check_out(tmp_path / "X.PNG", 1) == tmp_path / "X.PNG"


def test_out_names_what_exists_and_overwrite_names_what_it_keeps(tmp_path, capsys):
    """Two files in the way: the first and "1 more"; a run's numbered images only (a glob-like stem too)."""
    from superdiff.generate import check_out

    (tmp_path / "f.png").write_text("mine")
    (tmp_path / "f_kappa.png").write_text("mine")
    with pytest.raises(ValueError, match=r"f\.png' and 1 more exist; pass --overwrite"):
        check_out(tmp_path / "f.png", 1)
    out = tmp_path / "run[1].png"
    for name in ("0", "1", "2", "3", "", "x1"):  # four images of a run with --batch-size 4; two other files
        (tmp_path / f"run[1]_{name}.png").write_text("")
    assert check_out(out, 1) == out and capsys.readouterr().err == ""  # nothing is replaced: no warning
    check_out(out, 1, overwrite=True)
    assert capsys.readouterr().err == (
        "superdiff generate: warning: --overwrite keeps run[1]_0.png, run[1]_1.png, run[1]_2.png and 1 more, "
        "images of an earlier run with another --batch-size\n"
    )


def test_a_run_takes_the_first_free_name_of_out_to_out_100(tmp_path, capsys):
    """out taken: out-2, with a warning; out to out-99 taken: out-100; all 100 taken: an error naming out."""
    from superdiff._io import text
    from superdiff.generate import write_outputs

    out = tmp_path / "f.png"
    out.write_text("someone's")
    written = write_outputs([text("image"), text("plot")], out, 1, overwrite=False)
    assert written == [tmp_path / "f-2.png", tmp_path / "f-2_kappa.png"]
    assert f"{str(out)!r} was made during the run and is kept; this run's files are named 'f-2.png'" in (
        capsys.readouterr().err
    )
    for n in range(3, 100):
        (tmp_path / f"f-{n}.png").write_text("someone's")
    assert write_outputs([text("image")], out, 1, overwrite=False) == [tmp_path / "f-100.png"]
    with pytest.raises(FileExistsError, match="100 names from") as err:
        write_outputs([text("image")], out, 1, overwrite=False)
    assert err.value.filename == str(out) and out.read_text() == "someone's"


def test_a_larger_max_size_reaches_the_pipeline(tmp_path):
    """--max-size 2056 lets a 2056-pixel image through the pipeline's own check too."""
    assert generate(tmp_path, "--max-size", "2056", "--height", "2056", "--steps", "1") == 0
    assert Image.open(tmp_path / "flamingo.png").size == (64, 2056)


def test_digits_take_the_values_they_run_at(tmp_path):
    """--dtype float32 and --max-size at its default change nothing for the digits model: not refused."""
    options = ("--model", "digits", "--dtype", "float32", "--max-size", "2048", "--steps", "2")
    assert generate(tmp_path, *options, prompts=("3", "8")) == 0


def test_options_the_digits_model_has_no_use_for_are_named(tmp_path, capsys):
    """One option: "leave it out"; two: "leave them out"."""
    digits = ("--model", "digits")
    assert generate(tmp_path, *digits, "--cpu-offload", prompts=("3", "8")) == 2
    assert capsys.readouterr().err == (
        "superdiff generate: error: --cpu-offload: the digits model runs in float32 at 64×64 on the CPU; "
        "leave it out\n"
    )
    assert generate(tmp_path, *digits, "--cpu-offload", "--attention-slicing", prompts=("3", "8")) == 2
    assert capsys.readouterr().err.endswith(
        ": --cpu-offload, --attention-slicing: the digits model runs in "
        "float32 at 64×64 on the CPU; leave them out\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_device_this_machine_lacks_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import superdiff.generate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(superdiff.generate, "load", lambda *a, **k: pytest.fail("loaded before the refusal"))
    assert generate(tmp_path, "--device", "cuda:0") == 2
    assert capsys.readouterr().err == (
        "superdiff generate: error: --device: 'cuda:0' is not available on this machine; try --device cpu\n"
    )


def test_the_kappa_plot_names_the_prompts_and_the_mode_and_the_sampler_shows_progress(
    tmp_path, monkeypatch, capsys
):
    import matplotlib.pyplot as plt

    import superdiff.viz

    drawn, plot = [], superdiff.viz.plot_kappa
    monkeypatch.setattr(superdiff.viz, "plot_kappa", lambda *a, **k: drawn.append(k) or plot(*a, **k))
    long = "a flamingo standing on one leg in a shallow lagoon at sunset"
    plt.close("all")
    assert generate(tmp_path, "--mode", "or", prompts=("a flamingo", long)) == 0
    assert drawn[0]["labels"] == ["a flamingo", long[:39] + "…"]  # at most 40 characters
    assert drawn[0]["title"] == "κ over σ (OR)"
    assert "4/4" in capsys.readouterr().err  # the progress bar of the 4 steps
    assert plt.get_fignums() == []  # the figure is closed once written


def test_only_the_chosen_subcommands_module_is_imported(monkeypatch, capsys):
    """`superdiff export-hub --help` need not import the sweep's or generate's modules (torch, diffusers)."""
    import superdiff.cli

    imported, real = [], superdiff.cli.importlib.import_module
    monkeypatch.setattr(
        superdiff.cli.importlib, "import_module", lambda name: imported.append(name) or real(name)
    )
    with pytest.raises(SystemExit):
        superdiff.cli.main(["export-hub", "--help"])
    assert imported == ["superdiff.export"] and "REPO_OR_DIR" in capsys.readouterr().out
