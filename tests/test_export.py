"""``superdiff export-hub``: a Hub folder whose pipeline.py runs the model card's snippet without the kit."""

import ast
import importlib.metadata
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from superdiff import SuperDiffPipeline, export
from superdiff._torch import one_thread
from superdiff.cli import main
from superdiff.testing import tiny_pipeline, tiny_xl_pipeline

# The user's model card's snippet, verbatim (seed/superdiff-sd-v1-4-model-card.md).
CARD_SNIPPET = (
    "from PIL import Image\n"
    "from diffusers import DiffusionPipeline\n"
    'pipeline = DiffusionPipeline.from_pretrained("superdiff/superdiff-sd-v1-4", '
    "custom_pipeline='pipeline', trust_remote_code=True)\n"
    'output = pipeline("a flamingo", "a candy cane", seed=1, num_inference_steps=1000, batch_size=1)\n'
    "image = Image.fromarray(output[0].cpu().numpy())\n"
    'image.save("superdiff_output.png")\n'
)
CARD_CALL = "num_inference_steps=1000, batch_size=1"
SMALL_CALL = "num_inference_steps=8, batch_size=1, height=64, width=64"  # 1000 steps at 512²: ~15 min on CPU
# height, width None: the size the UNet was trained at (pipe.default_size: 512 for v1-4, 64 for the tiny one)
CARD_DEFAULTS = dict(
    seed=None, num_inference_steps=1000, batch_size=1, lift=0.0, guidance_scale=7.5, height=None, width=None
)

# Runs a snippet as a user without the kit: `python -I` (no cwd, no PYTHONPATH) and `import superdiff`
# made to fail (the venv has it installed); then saves the output and reports what was imported.
RUNNER = """\
import inspect, json, sys
sys.modules["superdiff"] = None
try:
    import superdiff
    sys.exit("superdiff is importable")
except ImportError:
    pass
exec(compile(sys.argv[1], "card", "exec"))
import torch
torch.save({"images": output.images, "kappa": output.kappa, "log_q": output.log_q}, "output.pt")
params = inspect.signature(type(pipeline).__call__).parameters
print(json.dumps({
    "class": type(pipeline).__name__,
    "module": type(pipeline).__module__,
    "kit_modules": sorted(m for m in sys.modules if m.startswith("superdiff") and sys.modules[m] is not None),
    "defaults": {k: p.default for k, p in params.items() if k in CARD_ARGS},
}))
""".replace("CARD_ARGS", repr(sorted(CARD_DEFAULTS)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny_pipeline() exported, with the pipeline it came from."""
    pipe = tiny_pipeline()
    folder = tmp_path_factory.mktemp("hub") / "superdiff-sd-tiny"
    export.export_hub(folder, pipe)
    return folder, pipe


def card_snippet(folder: Path, call: str = CARD_CALL) -> str:
    """The card's snippet loading ``folder`` instead of the Hub repository, with ``call``'s arguments."""
    return CARD_SNIPPET.replace('"superdiff/superdiff-sd-v1-4"', repr(str(folder))).replace(CARD_CALL, call)


def run_without_kit(snippet: str, cwd: Path) -> dict:
    """Run the snippet in a fresh `python -I` where `import superdiff` fails; its report."""
    env = {
        **os.environ,
        "HF_HOME": str(cwd / "hf"),
        "HF_MODULES_CACHE": str(cwd / "hf" / "modules"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER, snippet], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_card_snippet_runs_without_the_kit_and_matches_the_package(exported, tmp_path):
    folder, pipe = exported
    snippet = card_snippet(folder, SMALL_CALL)
    assert repr(str(folder)) in snippet and SMALL_CALL in snippet
    report = run_without_kit(snippet, tmp_path)
    assert report["class"] == "SuperDiffPipeline" and report["module"].startswith("diffusers_modules.")
    assert report["kit_modules"] == []
    assert report["defaults"] == CARD_DEFAULTS

    theirs = torch.load(tmp_path / "output.pt")
    with one_thread():  # as the subprocess (OMP_NUM_THREADS=1): the same float sums, so κ matches to 1e-5
        ours = pipe("a flamingo", "a candy cane", seed=1, **eval(f"dict({SMALL_CALL})"))
    assert theirs["images"].dtype == torch.uint8 and theirs["images"].shape == (1, 64, 64, 3)
    assert (theirs["images"].int() - ours.images.int()).abs().max() <= 1
    torch.testing.assert_close(theirs["kappa"], ours.kappa, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs["log_q"], ours.log_q, rtol=1e-5, atol=1e-3)
    assert (tmp_path / "superdiff_output.png").stat().st_size > 0


def test_card_snippet_verbatim_without_the_kit(exported, tmp_path):
    """The snippet unchanged but for the folder: 1000 steps at the tiny UNet's default size."""
    folder, pipe = exported
    report = run_without_kit(card_snippet(folder), tmp_path)
    assert report["class"] == "SuperDiffPipeline" and report["kit_modules"] == []
    images = torch.load(tmp_path / "output.pt")["images"]
    size = pipe.default_size
    assert images.dtype == torch.uint8 and images.shape == (1, size, size, 3) and size == 64


def test_limit_messages_advice_works_in_the_exported_pipeline(exported, tmp_path):
    """The advice named `Limits(size=...)`, which the exported pipeline's user cannot import."""
    folder, _ = exported
    snippet = card_snippet(folder, SMALL_CALL) + (
        "import json\n"
        "try:\n"
        "    pipeline('a', 'b', height=4096, width=64)\n"
        "except ValueError as err:\n"
        "    advice = str(err).split('raise the limit: ')[1][:-1].replace('...', '4096')\n"
        "exec(advice, {'pipe': pipeline})\n"
        "report = {'advice': advice, 'limits': vars(pipeline.limits)}\n"
        "report['prompts'] = pipeline.check_inputs('a', 'b', height=4096, width=64)\n"
        "json.dump(report, open('limits.json', 'w'))\n"
    )
    run_without_kit(snippet, tmp_path)
    report = json.loads((tmp_path / "limits.json").read_text())
    assert report["advice"] == "pipe.limits = pipe.limits.replace(size=4096)"
    assert report["prompts"] == ["a", "b"] and report["limits"]["size"] == 4096
    assert report["limits"]["steps"] == 10_000  # the others kept


def installed_with(*dists: str) -> set[str]:
    """Distributions that installing ``dists`` installs (their requirements without extras, recursively)."""
    seen, todo = set(), list(dists)
    while todo:
        name = re.split(r"[<>=!~ ;\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo.extend(r for r in requires if "extra ==" not in r)
    return seen


def test_pipeline_imports_only_torch_diffusers_transformers_and_what_they_install(exported):
    folder, _ = exported
    imported = export.imported_modules((folder / "pipeline.py").read_text(encoding="utf-8"))
    assert "." not in imported and "superdiff" not in imported
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert {"torch", "diffusers", "transformers"} <= third_party
    # numpy, Pillow and tqdm come with `pip install diffusers transformers`, as the card installs them
    dists = importlib.metadata.packages_distributions()
    required = installed_with("torch", "diffusers", "transformers")
    for module in third_party - {"torch", "diffusers", "transformers"}:
        assert any(d.lower() in required for d in dists[module]), module


def test_pipeline_source_is_the_packages_code_and_compiles():
    source = export.pipeline_source()
    assert source == export.pipeline_source()  # deterministic
    tree = ast.parse(source)
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert "kappa_and" in names and "ito_increment" in names and "superpose" in names
    assert "log_likelihood" not in names and "probability_flow" not in names  # not needed: left out
    assert len(names) == len(set(names))
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    classes = [c for c in classes if "DiffusionPipeline" in map(ast.unparse, c.bases)]
    assert [c.name for c in classes] == ["SuperDiffPipeline"]  # the one class diffusers picks up
    import superdiff.sampling

    kit = ast.parse(Path(superdiff.sampling.__file__).read_text(encoding="utf-8"))
    ours = next(n for n in kit.body if getattr(n, "name", "") == "kappa_and")
    theirs = next(n for n in tree.body if getattr(n, "name", "") == "kappa_and")
    assert ast.dump(ours) == ast.dump(theirs)


def test_the_exported_class_annotates_its_components_as_the_cards_diffusers_reads(exported):
    from test_pipeline_contract import readable_by_old_diffusers

    folder, _ = exported
    cls = runpy.run_path(str(folder / "pipeline.py"))["SuperDiffPipeline"]
    assert readable_by_old_diffusers(cls) == [] and cls.__module__ != "superdiff.pipeline_superdiff"


def test_folder_is_a_hub_repository(exported):
    folder, _ = exported
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "SuperDiffPipeline"
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert part in index and (folder / part).is_dir()
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-to-image" in card and "custom_pipeline='pipeline'" in card
    assert 'from_pretrained("superdiff/superdiff-sd-v1-4"' in card
    assert "**`lift > 0` favours `prompt_1`**" in card and "skreta2025superposition" in card
    assert "H100" in card and "$" not in card
    assert not list(folder.parent.glob(f"*{export.TEMP_SUFFIX}"))


def test_the_kit_loads_an_exported_folder_with_its_own_class(exported):
    folder, pipe = exported
    loaded = SuperDiffPipeline.from_pretrained(folder)  # the package's class, not pipeline.py
    assert type(loaded) is SuperDiffPipeline
    loaded.set_progress_bar_config(disable=True)
    small = dict(seed=1, num_inference_steps=4, height=64, width=64)
    assert torch.equal(
        loaded("a flamingo", "a candy cane", **small).images,
        pipe("a flamingo", "a candy cane", **small).images,
    )


def test_the_folder_also_holds_what_transformers_4_reads(exported, tmp_path):
    """The card promises transformers 4.47: its CLIPTokenizer needs vocab.json and merges.txt, and its
    CLIPTextModel loads weights named text_model.* only (others it skips, keeping random weights)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    folder, pipe = exported
    legacy = tmp_path / "tokenizer"  # without tokenizer.json, which transformers 4's CLIPTokenizer ignores
    legacy.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / "tokenizer" / name, legacy / name)
    text = "a flamingo that looks like a candy cane"
    assert CLIPTokenizer.from_pretrained(legacy)(text).input_ids == pipe.tokenizer(text).input_ids
    names = load_file(folder / "text_encoder" / "model.safetensors")
    assert names and all(name.startswith("text_model.") for name in names)
    loaded = CLIPTextModel.from_pretrained(folder / "text_encoder")  # transformers 5 still loads them
    theirs = loaded.state_dict()
    assert theirs.keys() == pipe.text_encoder.state_dict().keys()
    for name, ours in pipe.text_encoder.state_dict().items():
        assert torch.equal(ours, theirs[name]), name


def test_the_card_names_the_base_model_and_its_size(tmp_path, monkeypatch):
    pipe = tiny_pipeline()
    card = export.model_card(pipe=pipe)  # built in code: the card's own base, at the UNet's own size
    assert "[Stable Diffusion v1-4](https://huggingface.co/CompVis/stable-diffusion-v1-4)" in card
    assert "`height`, `width` [optional: default=64]" in card and pipe.default_size == 64
    pipe.register_to_config(_name_or_path="stabilityai/stable-diffusion-2-1")
    card = export.model_card(pipe=pipe)
    assert (
        "[stabilityai/stable-diffusion-2-1](https://huggingface.co/stabilityai/stable-diffusion-2-1)" in card
    )
    assert "- stabilityai/stable-diffusion-2-1\n" in card
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "my-sd").mkdir(parents=True)
    pipe.register_to_config(_name_or_path="models/my-sd")  # a local folder that looks like an id
    assert "huggingface.co/models/my-sd" not in export.model_card(pipe=pipe)
    card = export.model_card(pipe=pipe, base_model="me/my-sd")
    assert "[me/my-sd](https://huggingface.co/me/my-sd)" in card
    with pytest.raises(ValueError, match="^--base-model: expected a Hub repository id"):
        export.export_hub(tmp_path / "repo", base_model="models/my/sd")
    assert "repo" not in os.listdir(tmp_path)


def test_without_a_model_only_model_index_names_the_components(tmp_path):
    out = export.export_hub(tmp_path / "repo", repo_id="me/my-superdiff")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model_index.json", "pipeline.py"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert 'from_pretrained("CompVis/stable-diffusion-v1-4", custom_pipeline="me/my-superdiff"' in card


def test_a_code_only_folders_card_snippet_runs_its_pipeline_on_the_base_weights(tmp_path):
    base, pipe = tmp_path / "base", tiny_pipeline()
    pipe.save_pretrained(base)
    out = export.export_hub(tmp_path / "code", repo_id="me/code-only", base_model="me/base")
    card = (out / "README.md").read_text(encoding="utf-8")
    snippet = card.split("```\n")[3]  # the code block after the requirements' one
    assert 'from_pretrained("me/base", custom_pipeline="me/code-only", trust_remote_code=True)' in snippet
    snippet = snippet.replace('"me/base"', repr(str(base))).replace('"me/code-only"', repr(str(out)))
    report = run_without_kit(snippet.replace(CARD_CALL, SMALL_CALL), tmp_path)
    assert report["class"] == "SuperDiffPipeline" and report["kit_modules"] == []
    theirs = torch.load(tmp_path / "output.pt")
    with one_thread():
        ours = pipe("a flamingo", "a candy cane", seed=1, **eval(f"dict({SMALL_CALL})"))
    assert (theirs["images"].int() - ours.images.int()).abs().max() <= 1


def test_sdxl_and_sd3_are_refused_before_anything_is_written(tmp_path):
    xl = tiny_xl_pipeline()
    with pytest.raises(ValueError, match="model: export-hub writes the Stable Diffusion 1.x/2.x pipeline"):
        export.export_hub(tmp_path / "from-object", xl)
    xl.save_pretrained(tmp_path / "tiny-xl")
    with pytest.raises(ValueError, match="--model: .*'.*tiny-xl' needs SuperDiffXLPipeline"):
        export.export_hub(tmp_path / "from-folder", str(tmp_path / "tiny-xl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-xl"]


def test_cli_writes_the_folder(tmp_path, capsys):
    assert main(["export-hub", str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "pipeline.py").is_file()
    assert "pipeline.py" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad OUT


def one_line_error(argv, capsys, option: str = "OUT") -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"superdiff export-hub: error: {option}: ") and err.count("\n") == 1
    return err


@pytest.fixture
def no_load(monkeypatch):
    """Loading the model fails the test: a refusal must come before it."""

    def load(model):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(export, "load_model", load)


def test_out_not_empty_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("mine")
    assert "not an empty folder" in one_line_error(["export-hub", str(tmp_path / "repo")], capsys)
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    one_line_error(["export-hub", str(tmp_path / "file")], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "repo"]


def test_an_empty_out_folder_is_filled(tmp_path):
    (tmp_path / "repo").mkdir()
    export.export_hub(tmp_path / "repo")
    assert (tmp_path / "repo" / "pipeline.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_an_empty_out_folder_keeps_its_permissions(tmp_path):
    (tmp_path / "repo").mkdir(mode=0o700)  # private weights stay private
    (tmp_path / "repo").chmod(0o700)
    export.export_hub(tmp_path / "repo")
    assert (tmp_path / "repo").stat().st_mode & 0o777 == 0o700


def test_the_current_folder_is_refused_and_left_alone(tmp_path, capsys, monkeypatch, no_load):
    (tmp_path / "here" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here" / "deeper")
    for out in (".", str(tmp_path / "here")):
        assert "is the current folder or holds it" in one_line_error(
            ["export-hub", out, "--model", "tiny"], capsys
        )
    assert os.getcwd() == str(tmp_path / "here" / "deeper")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deeper", "here"]


def test_a_long_out_name_is_written_and_a_too_long_one_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "pipeline_source", lambda: "# pipeline.py\n")
    out = export.export_hub(tmp_path / ("r" * 250))  # the temp folder's name keeps only its start
    assert (out / "pipeline.py").is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]
    err = one_line_error(["export-hub", str(tmp_path / ("s" * 256))], capsys)
    assert "is longer than 255 bytes" in err and len(err) < 200
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_out_not_writable_is_refused(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anyway: make the check see what a user would
            monkeypatch.setattr(export.os, "access", lambda path, mode: False)
        assert "not writable" in one_line_error(["export-hub", str(folder / "repo")], capsys)
        missing = str(tmp_path / "no" / "repo")
        assert "not an existing folder" in one_line_error(["export-hub", missing], capsys)
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "model_card", broken)
    with pytest.raises(OSError, match="No space left"):
        export.export_hub(tmp_path / "repo", "tiny")
    assert list(tmp_path.iterdir()) == []


def test_weights_that_cannot_be_written_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    def full_disk(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(SuperDiffPipeline, "save_pretrained", full_disk)
    assert main(["export-hub", str(tmp_path / "repo"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "superdiff export-hub: error: the weights could not be written (Error while serializing: I/O error: "
        "No space left on device (os error 28))\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_pipeline_that_cannot_sample_is_not_exported(tmp_path):
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="scheduler: .*EulerDiscreteScheduler"):
        export.export_hub(tmp_path / "repo", pipe)
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_out_is_refused_before_the_model_loads(tmp_path, capsys, no_load):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        err = one_line_error(["export-hub", str(tmp_path / name), "--model", "tiny"], capsys)
        assert f"{str(tmp_path / name)!r} is a symbolic link" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "empty", "link"]
    assert list((tmp_path / "empty").iterdir()) == []


# ----------------------------------------------------------------------------- bad --repo-id

INJECTED = 'x", trust_remote_code=True); import os; os.system("rm -rf ~"); ("'


@pytest.mark.parametrize(
    "repo_id",
    [
        INJECTED,
        "",
        "not a valid id!!",
        "a" * 100_000,
        "gpt2",
        "a/b/c",
        "me/my--model",
        "me/" + "m" * 97,
        "ü/x",
    ],
)
def test_a_bad_repo_id_is_refused_before_the_model_loads(repo_id, tmp_path, capsys, no_load):
    argv = ["export-hub", str(tmp_path / "repo"), "--model", "tiny", "--repo-id", repo_id]
    err = one_line_error(argv, capsys, option="--repo-id")
    assert 'expected a Hub repository id "namespace/name"' in err and "at most 96 characters each" in err
    assert len(err) < 250  # the value is echoed shortened
    assert list(tmp_path.iterdir()) == []


def test_the_card_takes_only_a_repo_id():
    assert export.is_repo_id("me/my-superdiff") and export.is_repo_id("me/" + "m" * 96)
    assert 'custom_pipeline="me/My_model.v2"' in export.model_card("me/My_model.v2")
    with pytest.raises(ValueError, match="--repo-id: expected a Hub repository id"):
        export.model_card(INJECTED)


# ----------------------------------------------------------------------------- temp folders of killed exports


def temp_folder(parent: Path, name: str, age_s: float) -> Path:
    """A temp folder as an export leaves it, with a file, last touched age_s ago."""
    folder = parent / f"{name}{export.TEMP_SUFFIX}"
    folder.mkdir()
    (folder / "pipeline.py").write_text("# half\n")
    then = time.time() - age_s
    os.utime(folder, (then, then))
    return folder


def test_a_killed_exports_temp_folder_is_removed_by_the_next_export(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setattr(export, "pipeline_source", lambda: "# pipeline.py\n")
    old = export.STALE_S + 10
    killed = temp_folder(tmp_path, ".repo.k1ll3d", old)
    fresh = temp_folder(tmp_path, ".repo.fr3sh", 0)  # may be one that has just started: kept
    running = temp_folder(tmp_path, ".repo.runn1ng", old)  # locked: its export runs yet
    other = temp_folder(tmp_path, ".other.k1ll3d", old)  # another OUT's: not ours to judge
    fd = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        export.export_hub(tmp_path / "repo")
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["repo", fresh.name, running.name, other.name]
    )
    assert not killed.exists()


def test_a_running_exports_temp_folder_is_kept(tmp_path, monkeypatch):
    pytest.importorskip("fcntl")
    monkeypatch.setattr(export, "pipeline_source", lambda: "# pipeline.py\n")
    monkeypatch.setattr(export, "STALE_S", 0)
    card = export.model_card

    def meanwhile(*args):  # a second export to the same OUT starts while this one writes
        export.remove_stale(tmp_path / "repo")
        assert len(list(tmp_path.glob(f".repo.*{export.TEMP_SUFFIX}"))) == 1
        return card(*args)

    monkeypatch.setattr(export, "model_card", meanwhile)
    export.export_hub(tmp_path / "repo")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [
        "README.md",
        "model_index.json",
        "pipeline.py",
    ]


def test_a_new_out_folder_gets_the_permissions_mkdir_gives(tmp_path, monkeypatch):
    """mkdtemp makes 0700 folders: a new OUT is 0777 less the umask, as a plain mkdir makes it."""
    monkeypatch.setattr(export, "pipeline_source", lambda: "# pipeline.py\n")
    umask = os.umask(0o022)
    try:
        export.export_hub(tmp_path / "repo")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(umask)
    assert (tmp_path / "repo").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o755


def test_out_written_to_during_the_export_is_one_line_and_keeps_its_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "pipeline_source", lambda: "# pipeline.py\n")
    card = export.model_card

    def meanwhile(*args):  # another program writes into the empty OUT while this export runs
        (tmp_path / "repo" / "notes.txt").write_text("mine")
        return card(*args)

    monkeypatch.setattr(export, "model_card", meanwhile)
    (tmp_path / "repo").mkdir()
    err = one_line_error(["export-hub", str(tmp_path / "repo")], capsys)
    assert f"{str(tmp_path / 'repo')!r} changed during the export" in err
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["notes.txt"]


def test_only_a_code_only_card_says_it_holds_no_weights():
    said = "holds the pipeline's code, not weights: it runs on those of `CompVis/stable-diffusion-v1-4`"
    assert said in export.model_card()
    assert "not weights" not in export.model_card(pipe=tiny_pipeline())


def test_a_bad_base_model_is_refused_before_the_model_loads(tmp_path, capsys, no_load):
    argv = ["export-hub", str(tmp_path / "repo"), "--model", "tiny", "--base-model", "models/my/sd"]
    assert 'expected a Hub repository id "namespace/name"' in one_line_error(argv, capsys, "--base-model")
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_is_no_pipeline_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match="^model: expected a pipeline, 'tiny', a Hub id or a folder, got 42$"
    ):
        export.export_hub(tmp_path / "repo", 42)
    assert list(tmp_path.iterdir()) == []


def test_model_index_keeps_no_private_config_of_the_pipeline():
    """A pipeline loaded from a local folder remembers its path: not published in model_index.json."""
    pipe = tiny_pipeline()
    pipe.register_to_config(_name_or_path="/home/me/private/sd")
    index = export.model_index(pipe)
    assert [k for k in index if k.startswith("_")] == ["_class_name", "_diffusers_version"]
    assert index["_class_name"] == "SuperDiffPipeline" and "/home/me" not in json.dumps(index)


def test_the_generated_file_is_checked_for_imports_beyond_its_dependencies():
    export.check_source("import numpy\nimport torch\nfrom diffusers import DiffusionPipeline\n")
    with pytest.raises(ValueError, match=r"pipeline.py: imports \['superdiff'\] beyond"):
        export.check_source("import torch\n\ndef f():\n    from superdiff import limits\n")
    with pytest.raises(ValueError, match=r"imports \['\.'\] beyond"):
        export.check_source("from .limits import LIMITS\n")


def test_a_name_defined_in_two_modules_is_refused():
    """Merging two modules that both define a name would keep one silently."""
    statements = [("limits", ast.parse("x = 1").body[0]), ("hub", ast.parse("x = 2").body[0])]
    with pytest.raises(ValueError, match="^superdiff.hub: 'x' is also defined in an earlier module$"):
        export._needed(statements, {"x"})


def test_an_out_name_of_exactly_the_limit_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "pipeline_source", lambda: "# pipeline.py\n")
    out = export.export_hub(tmp_path / ("r" * os.pathconf(tmp_path, "PC_NAME_MAX")))
    assert (out / "pipeline.py").is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_out_in_a_folder_that_cannot_be_entered_is_refused(tmp_path, capsys, monkeypatch, no_load):
    """Writing a folder's entries needs its search (x) permission as well as w."""
    monkeypatch.setattr(export.os, "access", lambda path, mode: not mode & os.X_OK)  # a 0666 folder
    argv = ["export-hub", str(tmp_path / "repo"), "--model", "tiny"]
    assert "is not writable" in one_line_error(argv, capsys)
    assert list(tmp_path.iterdir()) == []
