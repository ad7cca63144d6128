"""Atomic writes: all files or none, no temp left behind (even on SIGTERM or SIGHUP), only the kit's temps
removed."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image

from superdiff._io import (
    check_name_lengths,
    check_writable,
    png,
    remove_stale_temps,
    scratch_folder,
    stage,
    text,
    write_atomically,
)


def test_a_folder_in_the_way_replaces_no_file(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "b.txt").mkdir()
    with pytest.raises(IsADirectoryError, match="b.txt"):
        write_atomically([(tmp_path / "a.txt", text("new")), (tmp_path / "b.txt", text("new"))])
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # kill; a closed terminal or ssh session
def test_a_stop_signal_while_staging_leaves_no_temp_file(tmp_path, signum):
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from superdiff._io import write_atomically

        def slow(tmp):
            tmp.write_text("half")
            print("staged", flush=True)
            time.sleep(60)

        write_atomically([(Path({str(tmp_path)!r}) / "a.txt", slow)])
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "staged"
            assert [p.name for p in tmp_path.iterdir()]  # the temp file is there
            child.send_signal(signum)
            assert child.wait(timeout=30) == 128 + signum
        finally:
            child.kill()  # after a failure: no child sleeping on past the test
    assert list(tmp_path.iterdir()) == []


def test_a_name_near_the_systems_limit_is_written(tmp_path):
    """The temp name repeats only the start of the name: a 250-byte name (NAME_MAX is 255) still fits."""
    path = tmp_path / ("k" * 246 + ".png")
    write_atomically([(path, text("whole"))])
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.read_text() == "whole"


def test_only_the_kits_own_temp_files_are_removed(tmp_path):
    users = [tmp_path / ".draft.tmp", tmp_path / ".backup.json.tmp", tmp_path / "notes.tmp"]
    for path in users:
        path.write_text("mine")
    ours = stage(tmp_path / "x.png", lambda tmp: tmp.write_bytes(b"png"))
    assert remove_stale_temps(tmp_path) == 1
    assert not ours.exists() and all(path.read_text() == "mine" for path in users)


@pytest.mark.parametrize("in_the_way", ["file", "dangling link"])
def test_exclusive_writes_replace_nothing_and_write_all_or_none(tmp_path, in_the_way):
    if in_the_way == "file":
        (tmp_path / "b.txt").write_text("someone's")
    else:
        (tmp_path / "b.txt").symlink_to(tmp_path / "nowhere")
    before = {p.name: (p.is_symlink(), p.read_text() if p.exists() else None) for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError) as err:
        write_atomically(
            [(tmp_path / "a.txt", text("new")), (tmp_path / "b.txt", text("new"))], exclusive=True
        )
    assert err.value.filename == str(tmp_path / "b.txt")
    after = {p.name: (p.is_symlink(), p.read_text() if p.exists() else None) for p in tmp_path.iterdir()}
    assert after == before  # a.txt, written first, is gone again; no temp is left


def test_exclusive_writes_publish_whole_files(tmp_path):
    write_atomically([(tmp_path / "a.txt", text("one")), (tmp_path / "b.txt", text("two"))], exclusive=True)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "one", "b.txt": "two"}


NO_USER = "~no-such-user-7f3a"


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("superdiff.cli", ["generate", "3", "8", "--model", "digits", "--out", f"{NO_USER}/a.png"]),
        ("superdiff.cli", ["demo", "--out", f"{NO_USER}/x"]),
        ("superdiff.cli", ["sweep", "--model", "digits", "--out", f"{NO_USER}/s"]),
        ("superdiff.cli", ["export-hub", f"{NO_USER}/e"]),
        ("superdiff.and_study", ["--out", f"{NO_USER}/r.md"]),
        ("superdiff.digits.experiments", ["--out", f"{NO_USER}/r.md"]),
        ("superdiff.digits.train", ["--out", f"{NO_USER}/x"]),
    ],
)
def test_an_out_in_the_home_of_no_user_is_refused_naming_it(module, argv, capsys, tmp_path, monkeypatch):
    """Path.expanduser raised RuntimeError ("Could not determine home directory"): a traceback."""
    import importlib

    monkeypatch.chdir(tmp_path)  # where a command that took the path as it is would write

    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"cannot expand '{NO_USER}': no such user" in err.splitlines()[-1]


def test_every_out_expands_the_home_folder_the_shell_leaves_in_out_equals(tmp_path, monkeypatch, capsys):
    """`--out=~/x` reaches the program unexpanded: the sweep made a folder named "~" where it ran."""
    from superdiff.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    assert main(["sweep", "--model", "digits", "--out=~/taken"]) == 2
    assert f"--out: {str(tmp_path / 'taken')!r} exists and is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an empty --out was the folder it ran in
        main(["sweep", "--model", "digits", "--out="])
    assert "argument --out: expected a path, got ''" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["generate", "3", "8", "--model=~/sd"], "--model: '{home}/sd' has no model_index.json"),
        (["sweep", "--model=~/sd"], "--model: '{home}/sd' has no model_index.json"),
        (["export-hub", "e", "--model=~/sd"], "'{home}/sd' has no model_index.json"),
        (["sweep", "--model", "digits", "--pairs=~/pairs.csv"], "--pairs: line 2 of '{home}/pairs.csv'"),
        (["generate", "3", "8", "--model="], "argument --model: expected a name or a path, got ''"),
        (["sweep", "--model", " "], "argument --model: expected a name or a path, got ' '"),
        (["sweep", "--pairs="], "argument --pairs: expected a name or a path, got ''"),
    ],
)
def test_a_model_or_pairs_path_expands_the_home_folder_too(argv, expected, tmp_path, monkeypatch, capsys):
    """`--model=~/sd` was taken as a folder named "~": "'~/sd' is not a directory" for one that is."""
    from superdiff.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sd").mkdir()
    (tmp_path / "pairs.csv").write_text("prompt_1,prompt_2\n3,\n")
    try:
        code = main(argv)
    except SystemExit as exited:
        code = exited.code
    assert code == 2 and expected.format(home=tmp_path) in capsys.readouterr().err


def test_the_apps_notebook_expands_the_home_folder(tmp_path, monkeypatch):
    from superdiff import app

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "course").mkdir()
    shutil.copy(Path(app.NOTEBOOK), tmp_path / "course" / "04.ipynb")
    assert app.parse_args(["--notebook=~/course/04.ipynb"]).notebook == tmp_path / "course" / "04.ipynb"


def test_written_files_have_the_permissions_open_gives(tmp_path):
    """mkstemp makes 0600 files: a written file is 0666 less the umask, as a plain open() makes it."""
    umask = os.umask(0o022)
    try:
        write_atomically([(tmp_path / "a.txt", text("x"))])
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_each_file_is_staged_beside_its_target_under_a_name_the_cleanup_finds(tmp_path):
    """The temp file is beside the target (a rename there is atomic), named .<name>.*.superdiff.tmp."""
    staged = []
    write_atomically([(tmp_path / "a.txt", lambda tmp: staged.append(tmp) or tmp.write_text("x"))])
    assert staged[0].parent == tmp_path and staged[0].name.startswith(".a.txt.")
    assert staged[0].name.endswith(".superdiff.tmp") and not staged[0].exists()


def test_someone_elses_signal_handler_is_kept_and_the_default_restored_after(tmp_path):
    def theirs(signum, frame):
        pass

    seen = []

    def write(tmp):
        seen.append((signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)))
        tmp.write_text("x")

    previous = signal.signal(signal.SIGHUP, theirs), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        write_atomically([(tmp_path / "a.txt", write)])
        after = (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGHUP, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert seen[0][0] is theirs and seen[0][1] not in (signal.SIG_DFL, signal.SIG_IGN)  # SIGTERM: ours
    assert after == (theirs, signal.SIG_DFL)


def test_a_thread_writes_too(tmp_path):
    """Only the main thread may set signal handlers: another thread's writes go without them."""
    errors = []

    def work():
        try:
            write_atomically([(tmp_path / "a.txt", text("x"))])
        except Exception as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and (tmp_path / "a.txt").read_text() == "x"


def test_an_existing_folder_is_probed_itself_not_its_parent(tmp_path, monkeypatch):
    """A writable folder inside a read-only one (a home folder in /home) is taken."""
    real = tempfile.TemporaryDirectory

    def only_in_mine(*args, dir, **kwargs):  # root may write anywhere: fake a read-only tmp_path
        if not str(dir).startswith(str(tmp_path / "mine")):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    (tmp_path / "mine").mkdir()
    monkeypatch.setattr(tempfile, "TemporaryDirectory", only_in_mine)
    check_writable(tmp_path / "mine", "--out")
    check_writable(tmp_path / "mine" / "new" / "deeper", "--out")  # to be made inside mine
    with pytest.raises(ValueError, match=f"--out: cannot write in {str(tmp_path)!r}"):
        check_writable(tmp_path / "other", "--out")


def test_the_name_limit_counts_bytes_and_takes_a_name_of_exactly_the_limit(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = tmp_path / ("k" * limit)
    check_name_lengths([longest], "--out")
    write_atomically([(longest, text("whole"))])  # it fits indeed
    wide = tmp_path / ("é" * (limit // 2 + 1))  # fewer characters than the limit, more bytes
    with pytest.raises(ValueError, match=f"has {2 * (limit // 2 + 1)} bytes, more than the {limit}"):
        check_name_lengths([wide], "--out")
    with pytest.raises(OSError):  # as the filesystem says
        wide.write_text("")


def test_a_scratch_folder_is_removed_after_use_and_after_an_error(tmp_path):
    with scratch_folder(tmp_path / "out", ".figures.") as folder:
        (folder / "a.png").write_text("x")
        assert folder.parent == tmp_path / "out"
    with pytest.raises(RuntimeError), scratch_folder(tmp_path / "out", ".figures.") as folder:
        (folder / "b.png").write_text("x")
        raise RuntimeError("a failing figure")
    assert list((tmp_path / "out").iterdir()) == []


def test_exclusive_writes_without_hard_links_replace_nothing(tmp_path, monkeypatch):
    """On a filesystem without hard links (link() fails) a target is checked for, then renamed to."""

    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "b.txt").write_text("someone's")
    with pytest.raises(FileExistsError) as err:
        write_atomically(
            [(tmp_path / "a.txt", text("new")), (tmp_path / "b.txt", text("new"))], exclusive=True
        )
    assert err.value.filename == str(tmp_path / "b.txt")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"b.txt": "someone's"}
    write_atomically([(tmp_path / "c.txt", text("new"))], exclusive=True)
    assert (tmp_path / "c.txt").read_text() == "new"


def test_a_figure_is_written_cropped_to_what_it_draws(tmp_path):
    """png(figure): a small axes in a big empty figure gives a small image (bbox_inches="tight")."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 8))
    fig.add_axes((0.45, 0.45, 0.1, 0.1)).set_axis_off()
    fig.axes[0].plot([0, 1], [0, 1])
    try:
        write_atomically([(tmp_path / "f.png", png(fig, dpi=50))])
    finally:
        plt.close(fig)
    width, height = Image.open(tmp_path / "f.png").size
    assert width < 8 * 50 / 2 and height < 8 * 50 / 2  # the full figure: 400 × 400
