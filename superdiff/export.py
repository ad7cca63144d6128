"""``superdiff export-hub``: a folder to publish as a Hub repository that needs no ``superdiff`` installed.

    superdiff export-hub superdiff-sd-v1-4 --model CompVis/stable-diffusion-v1-4

writes model_index.json, the model components (without --model: model_index.json alone, naming them),
a self-contained pipeline.py and a model card (README.md). Loading it needs only torch, diffusers and
transformers (and what they install)::

    DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline", trust_remote_code=True)

pipeline.py is generated from the package's own modules at export time (:func:`pipeline_source`): their
top-level definitions that ``SuperDiffPipeline`` needs, in dependency order, with the relative imports
dropped; nothing of the math is kept a second time by hand.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib.resources
import importlib.util
import json
import os
import shutil
import string
import sys
import tempfile
import textwrap
import time
import typing
from pathlib import Path

from ._io import NAME_KEPT, _umask, expanded, terminate_as_exit, user_path, user_source

# The modules pipeline.py is made of, each after the ones it imports from.
MODULES = ("limits", "sampling", "output", "pipeline_common", "hub", "fast", "pipeline_superdiff")
ROOT = "SuperDiffPipeline"  # the one DiffusionPipeline subclass diffusers finds in pipeline.py
ALLOWED_IMPORTS = ("torch", "diffusers", "transformers")  # besides the standard library
INSTALLED_WITH = ("numpy", "PIL", "tqdm")  # hard requirements of diffusers / transformers / huggingface_hub
REPO_ID = "superdiff/superdiff-sd-v1-4"  # the user's model card's repository
BASE_MODEL = "CompVis/stable-diffusion-v1-4"
BASE_NAMES = {BASE_MODEL: "Stable Diffusion v1-4"}  # the card's link text; any other base shows its id
TEMP_SUFFIX = ".superdiff-export.tmp"  # the temp folder: .<OUT's name[:NAME_KEPT]>.<random><TEMP_SUFFIX>
STALE_S = 60  # an unlocked temp folder untouched this long is a killed export's: the next one removes it
REPO_ID_CHARS = 80  # a bad --repo-id is echoed up to about this many characters
ONLY_SD = "export-hub writes the Stable Diffusion 1.x/2.x pipeline (SDXL and SD3 load with the kit installed)"


# ----------------------------------------------------------------------------- the single file


def _sources() -> dict[str, str]:
    """The source text of every module in MODULES."""
    return {
        name: Path(importlib.util.find_spec(f"superdiff.{name}").origin).read_text(encoding="utf-8")
        for name in MODULES
    }


def _segment(lines: list[str], node: ast.stmt) -> str:
    """A top-level statement's exact source, decorators and inner comments included."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "".join(lines[start - 1 : node.end_lineno]).rstrip()


def _defined(node: ast.stmt) -> set[str]:
    """The top-level names a statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def _used(node: ast.AST) -> set[str]:
    """Every name a statement reads (annotations included: harmless extra definitions at worst)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _statements(sources: dict[str, str]) -> list[tuple[str, ast.stmt]]:
    """(module, statement) of every module in MODULES, without docstrings, __future__ and relative imports."""
    out = []
    for name in MODULES:
        body = ast.parse(sources[name]).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the module docstring
        for node in body:
            if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
                if node.level and any(a.asname for a in node.names):
                    raise ValueError(
                        f"superdiff.{name}: 'import ... as' from a sibling module cannot be merged"
                    )
                continue
            out.append((name, node))
    return out


def _needed(statements: list[tuple[str, ast.stmt]], roots: set[str]) -> list[tuple[str, ast.stmt]]:
    """The statements the roots need, transitively, in their original order."""
    owner: dict[str, int] = {}
    for i, (module, node) in enumerate(statements):
        for name in _defined(node):
            if name in owner and not isinstance(node, (ast.Import, ast.ImportFrom)):
                raise ValueError(f"superdiff.{module}: {name!r} is also defined in an earlier module")
            owner.setdefault(name, i)
    keep, todo = set(), list(roots)
    while todo:
        i = owner.get(todo.pop())
        if i is not None and i not in keep:
            keep.add(i)
            todo.extend(_used(statements[i][1]))
    return [statements[i] for i in sorted(keep)]


def _import_lines(imports: list[ast.stmt], used: set[str]) -> list[str]:
    """The used names of the import statements, merged per module: the standard library, then the rest."""
    plain, names = set(), {}
    for node in imports:
        for alias in node.names:
            if (alias.asname or alias.name).split(".")[0] not in used:
                continue
            text = alias.name + (f" as {alias.asname}" if alias.asname else "")
            if isinstance(node, ast.Import):
                plain.add(text)
            else:
                names.setdefault(node.module, set()).add(text)
    lines = [(m.split(" ")[0], f"import {m}") for m in plain]
    lines += [(m, f"from {m} import {', '.join(sorted(n))}") for m, n in names.items()]
    stdlib = set(sys.stdlib_module_names)
    return [line for _, line in sorted(lines, key=lambda ml: (ml[0].split(".")[0] not in stdlib, ml))]


def pipeline_source() -> str:
    """The self-contained pipeline.py: SuperDiffPipeline and all it needs from the package, one file."""
    sources = _sources()
    needed = _needed(_statements(sources), {ROOT})
    imports = [node for _, node in needed if isinstance(node, (ast.Import, ast.ImportFrom))]
    code = [(m, node) for m, node in needed if not isinstance(node, (ast.Import, ast.ImportFrom))]
    used = set().union(*(_used(node) for _, node in code))
    parts = [_header(), "from __future__ import annotations", "\n".join(_import_lines(imports, used))]
    lines = {name: text.splitlines(keepends=True) for name, text in sources.items()}
    module = None
    for name, node in code:
        if name != module:
            parts.append(f"# {'-' * 77} from superdiff/{name}.py")
            module = name
        parts.append(_segment(lines[name], node))
    source = "\n\n\n".join(parts) + "\n"
    check_source(source)
    return source


def _header() -> str:
    from . import __version__

    modules = textwrap.fill(", ".join(f"superdiff/{name}.py" for name in MODULES), 100)
    return (
        f'"""SuperDiff for Stable Diffusion, made by superdiff-kit {__version__} `superdiff export-hub`.\n\n'
        'Skreta et al., "The Superposition of Diffusion Models Using the Itô Density Estimator",\n'
        "ICLR 2025 (arXiv 2412.17762). Self-contained: needs torch, diffusers and transformers,\n"
        "not the kit.\n"
        f"Generated from\n{modules}:\ndo not edit, regenerate.\n"
        '"""'
    )


def imported_modules(source: str) -> set[str]:
    """The top-level names of every module a source imports (anywhere in it); '.' for a relative import."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module.split(".")[0])
    return names


def check_source(source: str) -> None:
    """The generated file compiles and imports nothing but the standard library, torch, diffusers,
    transformers and what they install."""
    compile(source, "pipeline.py", "exec")
    allowed = set(sys.stdlib_module_names) | set(ALLOWED_IMPORTS) | set(INSTALLED_WITH) | {"__future__"}
    extra = imported_modules(source) - allowed
    if extra:
        raise ValueError(f"pipeline.py: imports {sorted(extra)} beyond {ALLOWED_IMPORTS} and the stdlib")


# ----------------------------------------------------------------------------- the folder


def model_index(pipe=None) -> dict:
    """model_index.json naming pipeline.py's class, and the components of pipe (or of the pipeline class)."""
    import diffusers

    from .pipeline_superdiff import SuperDiffPipeline

    if pipe is not None:
        index = {k: v for k, v in dict(pipe.config).items() if not k.startswith("_")}
    else:
        hints = typing.get_type_hints(SuperDiffPipeline.__init__)
        index = {k: [cls.__module__.split(".")[0], cls.__name__] for k, cls in hints.items() if k != "return"}
    # the class name alone: the card passes custom_pipeline="pipeline", and the kit's own
    # SuperDiffPipeline.from_pretrained(folder) still loads (["pipeline", ROOT] would make it run pipeline.py)
    head = {"_class_name": ROOT, "_diffusers_version": diffusers.__version__}
    return {**head, **index}


def load_model(model):
    """The pipeline behind --model: a SuperDiffPipeline as it is, "tiny", or a Hub id / folder (offline)."""
    from .pipeline_superdiff import SuperDiffMixin, SuperDiffPipeline

    if not isinstance(model, str):
        if not hasattr(model, "save_pretrained"):
            raise ValueError(f"model: expected a pipeline, 'tiny', a Hub id or a folder, got {model!r}")
        if isinstance(model, SuperDiffMixin) and not isinstance(model, SuperDiffPipeline):
            raise ValueError(f"model: {ONLY_SD}, got a {type(model).__name__}")
        if isinstance(model, SuperDiffPipeline):
            model.check_model()  # e.g. a scheduler assigned after loading, which would be saved as it is
        return model
    if model == "tiny":
        from .testing import tiny_pipeline

        return tiny_pipeline()
    from .generate import pipeline_class

    family = pipeline_class(model)
    if family is not SuperDiffPipeline:
        raise ValueError(f"--model: {ONLY_SD}; {model!r} needs {family.__name__}")
    return SuperDiffPipeline.from_pretrained(model)


def is_repo_id(repo_id) -> bool:
    """Whether repo_id is a Hub id "namespace/name", as huggingface_hub checks it (ASCII only)."""
    from huggingface_hub.utils import validate_repo_id

    if not (isinstance(repo_id, str) and repo_id.isascii() and repo_id.count("/") == 1):
        return False
    try:
        validate_repo_id(repo_id)
    except ValueError:  # HFValidationError
        return False
    return True


def check_repo_id(repo_id, option: str = "--repo-id") -> None:
    """repo_id is a Hub id "namespace/name" (so safe to paste in the card's snippet); else ValueError."""
    if not is_repo_id(repo_id):
        text = str(repo_id)
        shown = text if len(text) <= REPO_ID_CHARS else text[:REPO_ID_CHARS] + "..."
        raise ValueError(
            f'{option}: expected a Hub repository id "namespace/name" '
            f"(letters, digits, '-', '_', '.'; at most 96 characters each), got {shown!r}"
        )


def check_out(out: Path) -> None:
    """OUT is new or an empty folder (no symlink, not the current folder) in a writable folder; else
    ValueError naming OUT."""
    limit = _name_max(out.parent)
    if len(os.fsencode(out.name)) > limit:
        raise ValueError(f"OUT: the name {out.name[:40]!r}... is longer than {limit} bytes")
    # replacing the current folder would leave the shell in a deleted one
    if out == Path.cwd() or out in Path.cwd().parents:
        raise ValueError(f"OUT: {str(out)!r} is the current folder or holds it; give a new path")
    if out.is_symlink():  # a rename cannot replace it: refused before the work, not after
        raise ValueError(f"OUT: {str(out)!r} is a symbolic link; give a new path or the folder it points to")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"OUT: {str(out)!r} exists and is not an empty folder; choose a new path")
    if not out.parent.is_dir():
        raise ValueError(f"OUT: {str(out.parent)!r} is not an existing folder")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ValueError(f"OUT: the folder {str(out.parent)!r} is not writable")


def _name_max(folder: Path) -> int:
    """The longest file name (in bytes) folder takes: NAME_MAX, 255 where the system does not say."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows, or a folder that is not there
        return 255


def export_hub(out, model=None, repo_id: str = REPO_ID, base_model: str | None = None) -> Path:
    """Write a Hub repository folder at ``out``: pipeline.py, README.md, model_index.json (+ weights).

    ``model``: None (model_index.json names the components, no weights), a SuperDiffPipeline, "tiny" or
    a Stable Diffusion Hub id / folder (loaded offline from the cache). ``repo_id``: the name the card's
    snippet loads; ``base_model``: the Hub id the card names as its base (:func:`card_base`). Everything
    is written to a temp folder beside ``out`` and renamed at the end, so an error leaves nothing behind.
    Returns ``out``.
    """
    check_repo_id(repo_id)
    if base_model is not None:
        check_repo_id(base_model, "--base-model")
    out = expanded(out)
    check_out(out)
    pipe = None if model is None else load_model(model)
    source = pipeline_source()
    mode = out.stat().st_mode & 0o7777 if out.is_dir() else 0o777 & ~_umask()  # an empty OUT keeps its own
    with terminate_as_exit():
        remove_stale(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out), suffix=TEMP_SUFFIX, dir=out.parent))
        except PermissionError as err:
            raise ValueError(
                f"OUT: the folder {str(out.parent)!r} is not writable ({err.strerror})"
            ) from None
        lock = _lock(tmp)  # held while it lasts: a later export tells a killed one's folder from ours
        try:
            _write(tmp, pipe, source, repo_id, base_model)
            os.chmod(tmp, mode)  # mkdtemp makes 0700 folders
            _rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            _unlock(lock)
    return out


def _lock(folder: Path) -> int | None:
    """An exclusive lock on folder (a descriptor to close to release it); None where none can be taken."""
    try:
        import fcntl
    except ImportError:  # Windows: no locks, so no stale folder is ever removed
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # locked by a running export, or locks unsupported (NFS): not known to be stale
        os.close(fd)
        return None
    return fd


def _unlock(lock: int | None) -> None:
    """Release a lock from _lock."""
    if lock is not None:
        os.close(lock)


def _temp_prefix(out: Path) -> str:
    """The start of the names of out's temp folders."""
    return f".{out.name[:NAME_KEPT]}."


def remove_stale(out: Path) -> None:
    """Remove the temp folders beside out of exports that were killed (unlocked, untouched for STALE_S)."""
    for tmp in out.parent.glob(f"{glob.escape(_temp_prefix(out))}*{TEMP_SUFFIX}"):
        try:
            if tmp.is_symlink() or not tmp.is_dir() or time.time() - tmp.stat().st_mtime < STALE_S:
                continue
        except OSError:  # removed meanwhile
            continue
        lock = _lock(tmp)
        if lock is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # under the lock
            _unlock(lock)


def _write(folder: Path, pipe, source: str, repo_id: str, base_model: str | None) -> None:
    """The repository's files in folder."""
    if pipe is not None:
        from safetensors import SafetensorError

        try:
            pipe.save_pretrained(folder)
        except SafetensorError as err:  # e.g. a full disk: safetensors' own class, not an OSError
            raise OSError(f"the weights could not be written ({err})") from None
        transformers4_files(folder, pipe)
    (folder / "model_index.json").write_text(json.dumps(model_index(pipe), indent=2) + "\n", encoding="utf-8")
    (folder / "pipeline.py").write_text(source, encoding="utf-8")
    (folder / "README.md").write_text(model_card(repo_id, pipe, base_model), encoding="utf-8")


def transformers4_files(folder: Path, pipe) -> None:
    """What transformers 4.x (the card's 4.47) reads where transformers 5 writes otherwise: the tokenizer's
    vocab.json and merges.txt (5 writes tokenizer.json alone), and CLIPTextModel weights named text_model.*
    (5.6+ saves a text encoder built in code without that prefix, which 4.x would skip, keeping random
    weights)."""
    backend = getattr(pipe.tokenizer, "backend_tokenizer", None)  # a tokenizers-backed (fast) tokenizer
    if backend is not None and not (folder / "tokenizer" / "vocab.json").exists():
        backend.model.save(str(folder / "tokenizer"))
    weights = folder / "text_encoder" / "model.safetensors"
    if type(pipe.text_encoder).__name__ == "CLIPTextModel" and weights.is_file():
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        if not any(name.startswith("text_model.") for name in tensors):
            save_file({f"text_model.{k}": v for k, v in tensors.items()}, weights, metadata={"format": "pt"})


def _rename(tmp: Path, out: Path) -> None:
    """tmp becomes out (an empty folder at out is replaced); ValueError if out appeared meanwhile."""
    try:
        os.rename(tmp, out)
    except OSError as err:  # ENOTEMPTY / EEXIST: someone wrote to out while we exported
        raise ValueError(f"OUT: {str(out)!r} changed during the export ({err.strerror})") from None


# ----------------------------------------------------------------------------- the model card

CARD = "custom_pipeline/model_card.md"  # a string.Template: $repo_id, $base_model, $version, $torch, ...


def card_base(pipe=None, base_model: str | None = None) -> str:
    """The card's base model: base_model, else the Hub id pipe was loaded from, else v1-4 (a local folder
    does not say which model it came from)."""
    if base_model is not None:
        return base_model
    name = str(getattr(pipe, "name_or_path", None) or "")
    return name if is_repo_id(name) and not os.path.exists(name) else BASE_MODEL


def model_card(repo_id: str = REPO_ID, pipe=None, base_model: str | None = None) -> str:
    """README.md of the exported repository: the user's card's usage and arguments, with the kit's figures."""
    import diffusers
    import torch
    import transformers

    from . import __version__

    check_repo_id(repo_id)
    base = card_base(pipe, base_model)
    check_repo_id(base, "--base-model")
    versions = dict(
        torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__
    )
    template = string.Template(importlib.resources.files("superdiff").joinpath(CARD).read_text("utf-8"))
    code_only = (  # no weights here: the snippet loads the base model's with this repository's pipeline.py
        f"\nThis repository holds the pipeline's code, not weights: it runs on those of `{base}`.\n"
    )
    return template.substitute(
        base_model=base,
        base_name=BASE_NAMES.get(base, base),
        size=512 if pipe is None else pipe.default_size,
        weights=base if pipe is None else repo_id,
        custom=f'"{repo_id}"' if pipe is None else "'pipeline'",
        code_only=code_only if pipe is None else "",
        version=__version__,
        **versions,
    )


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``superdiff export-hub``."""
    parser.add_argument("out", metavar="OUT", type=user_path, help="the folder to write (new, or empty)")
    parser.add_argument(
        "--model",
        metavar="REPO_OR_DIR",
        type=user_source,
        help="a Stable Diffusion 1.x/2.x folder or cached Hub id whose components to include, or 'tiny' "
        "(random, offline); default: none, model_index.json only names the components",
    )
    parser.add_argument(
        "--repo-id", default=REPO_ID, help=f"the Hub id the model card's snippet loads (default {REPO_ID})"
    )
    parser.add_argument(
        "--base-model",
        metavar="REPO_ID",
        help=f"the Hub id the model card names as its base (default: --model when it is a Hub id, else "
        f"{BASE_MODEL})",
    )


def run(args) -> int:
    """Entry point of ``superdiff export-hub``: 0 on success, 2 with a one-line message on an error."""
    start = time.perf_counter()
    try:
        out = export_hub(args.out, args.model, args.repo_id, args.base_model)
    except (ValueError, OSError) as err:
        print(f"superdiff export-hub: error: {err}", file=sys.stderr)
        return 2
    size = (out / "pipeline.py").stat().st_size
    print(f"{out} (pipeline.py {size / 1000:.0f} kB, {time.perf_counter() - start:.1f} s)")
    return 0
