"""Run a sweep: its batches split across accelerate processes, each image and record written atomically.

Folder layout (``--out``)::

    sweep.json              the settings that make the images (a rerun must match them)
    .sweep.lock             held by the run in progress: a second run started meanwhile is refused
    images/<key>.png        one image per (pair, method, seed)
    records/<key>.json      its record, written last: an item is done exactly when its record exists
    logs/process-<i>.log    one log per process
    records.jsonl, records.csv, summary.md, summary.csv, summary.png    gathered by the main process

Resuming: a rerun lists the items without a record and runs only those; a crash loses at most the batch in
flight (its temp files are removed at the next start). Every process lists the pending items before any
process writes, then ``PartialState.split_between_processes`` gives each its own batches, so no file is
ever written by two processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, parse_flag_from_env
from tqdm.auto import tqdm

from .._io import (
    TEMP_SUFFIX,
    check_name_lengths,
    check_no_broken_link,
    png,
    remove_stale_temps,
    terminate_as_exit,
    text,
    write_atomically,
)
from .._torch import gen
from ..limits import LIMITS, MAX_GUIDANCE, MAX_MAGNITUDE
from ..pipeline_common import check_finite, check_int
from ..pipeline_superdiff import JOINT_TEMPLATE
from .plan import DEFAULT_CLIP, Item, batches, plan
from .scoring import load_scorer
from .summary import write_summary

SETTINGS_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"  # held (flock) by the main process of the run writing the folder
CRASH_AFTER = "SUPERDIFF_SWEEP_CRASH_AFTER"  # test hook: exit abruptly mid-write of the batch after k batches


@dataclass
class SweepConfig:
    """A sweep: what to sample (pairs × methods × seeds), with which model and settings, and where."""

    pairs: list[tuple[str, str]]
    methods: list[str]
    seeds: list[int]
    out: Path
    model: str
    steps: int
    guidance_scale: float
    lift: float = 0.0
    batch_size: int = 4
    scorer: str = "none"
    clip_model: str = DEFAULT_CLIP
    dtype: str = "auto"
    size: int | None = None  # SD image height = width in pixels (None: the model's)
    max_size: int = LIMITS.size  # the pipeline's limit on size; not a setting: it changes no image
    fast: bool = False  # enable_fast_sampling; not a setting: images match eager's within fp16 rounding
    items: list[Item] = field(init=False, repr=False)

    def __post_init__(self):
        self.out = Path(self.out)
        check_int("--steps", self.steps, 1, high=LIMITS.steps)
        check_int("--batch-size", self.batch_size, 1, high=LIMITS.batch_size)
        if self.size is not None and self.batch_size * self.size**2 > LIMITS.pixels:  # else found once loaded
            raise ValueError(
                f"--batch-size: {self.batch_size} images of {self.size}² are more than the {LIMITS.pixels} "
                "pixels of one call; choose a smaller --batch-size or --size"
            )
        check_finite("--guidance-scale", self.guidance_scale, low=0.0, high=MAX_GUIDANCE)
        check_finite("--lift", self.lift, low=-MAX_MAGNITUDE, high=MAX_MAGNITUDE)
        made = [p for p in (self.out, *self.out.parents) if not os.path.lexists(p)]  # lexists never raises
        check_name_lengths(made, "--out")  # else exists() below raises "File name too long" unnamed
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out: {str(self.out)!r} exists and is not a folder")
        self.items = plan(self.pairs, self.methods, self.seeds)

    def settings(self, device: str) -> dict:
        """What makes an item's image and record on ``device``: a rerun into the same folder must not change
        them. The dtype is the one "auto" gives there: float16 on a GPU, float32 on the CPU."""
        from ..generate import pick_dtype

        keys = ("model", "steps", "guidance_scale", "lift", "dtype", "size", "scorer", "clip_model", "pairs")
        settings = {k: getattr(self, k) for k in keys}
        dtype = None if self.model == "digits" else str(pick_dtype(self.dtype, device)).removeprefix("torch.")
        settings.update(pairs=[list(p) for p in self.pairs], dtype=dtype)  # digits: float32 on the CPU
        if self.scorer != "clip":
            settings["clip_model"] = None
        return settings


def saved_settings(out: Path) -> dict | None:
    """The settings in out/sweep.json; None if the folder is new or empty; refuses any other folder."""
    path = out / SETTINGS_FILE
    if not path.exists():
        names = [p.name for p in out.iterdir()] if out.is_dir() else []
        others = [n for n in names if not n.endswith(TEMP_SUFFIX) and n != LOCK_FILE]  # locked before written
        if others:
            raise ValueError(
                f"--out: {str(out)!r} holds files but no {SETTINGS_FILE} (e.g. {sorted(others)[0]!r}), so it "
                "is not a sweep folder; use a new or empty folder"
            )
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, IsADirectoryError):
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"--out: {str(path)!r} is not a sweep's settings file (a JSON object)")
    return saved


def check_settings(cfg: SweepConfig, device: str) -> None:
    """A folder holds one sweep: refuse to resume it with settings that would change its images."""
    saved, now = saved_settings(cfg.out), cfg.settings(device)
    if saved is None:
        return
    if saved.get("dtype") == "auto":  # written before "auto" was resolved, where it gave what it gives now
        saved["dtype"] = now["dtype"]
    changed = [k for k in now if saved.get(k) != now[k]]
    if changed:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed if k != "pairs")
        raise ValueError(
            f"--out: {str(cfg.out)!r} holds a sweep with other {', '.join(changed)}"
            f"{f' ({was})' if was else ''}; use a new folder or the same settings"
        )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file: an emptied image has none
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # its last chunk: an image cut short has none


def record_path(out: Path, item: Item) -> Path:
    return out / "records" / f"{item.key}.json"


def image_path(out: Path, item: Item) -> Path:
    return out / "images" / f"{item.key}.png"


RECORDED = ("model", "steps", "guidance_scale", "lift")  # the settings each record repeats


def is_record(row, item: Item, cfg: SweepConfig) -> bool:
    """row is item's record as the summary reads it: its key and method, the sweep's settings (not a record
    copied from another sweep), finite seconds and scores."""
    if not isinstance(row, dict) or row.get("key") != item.key or row.get("method") != item.method:
        return False
    if any(row.get(k) != getattr(cfg, k) for k in RECORDED):
        return False
    numbers = [row.get("seconds")] + [row[k] for k in ("score_min", "score_mean") if row.get(k) is not None]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)


def is_complete_png(path: Path) -> bool:
    """Begins with the PNG signature and ends with its last chunk: not emptied or cut short by a crash."""
    with open(path, "rb") as image:
        if image.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            return False
        if image.seek(0, os.SEEK_END) < len(PNG_SIGNATURE) + len(PNG_END):
            return False
        image.seek(-len(PNG_END), os.SEEK_END)
        return image.read() == PNG_END


def read_record(cfg: SweepConfig, item: Item) -> dict | None:
    """The item's record; None if it or its image is missing or unreadable (empty after a crash, edited,
    the image deleted): an item to redo."""
    try:
        row = json.loads(record_path(cfg.out, item).read_text(encoding="utf-8"))
        is_png = is_complete_png(image_path(cfg.out, item))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    return row if is_png and is_record(row, item, cfg) else None


def pending(cfg: SweepConfig) -> list[Item]:
    """The items that have no readable record yet."""
    return [item for item in cfg.items if read_record(cfg, item) is None]


def remove_unreadable_records(cfg: SweepConfig, todo: list[Item]) -> int:
    """Delete the record files of the pending items (unreadable, or their image is), so that they are redone
    and counted."""
    paths = [record_path(cfg.out, item) for item in todo]
    paths = [path for path in paths if path.is_file()]
    for path in paths:
        path.unlink(missing_ok=True)
    return len(paths)


def other_records(cfg: SweepConfig) -> int:
    """Records in the folder from items outside this command's grid (an earlier run's other seeds or
    methods): kept, but not in this summary."""
    planned = {f"{item.key}.json" for item in cfg.items}
    return sum(path.name not in planned for path in (cfg.out / "records").glob("*.json"))


def load_records(cfg: SweepConfig) -> list[dict]:
    """The record of every item of the sweep's plan, in plan order."""
    rows = [read_record(cfg, item) for item in cfg.items]
    missing = [item for item, row in zip(cfg.items, rows, strict=True) if row is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} items have no readable record (first: {missing[0].key}); rerun the sweep"
        )
    return rows


# ----------------------------------------------------------------------------- one batch


def pipeline_call(cfg: SweepConfig, batch: tuple[Item, ...], size: int | None) -> dict:
    """Keyword arguments of the pipeline call that samples a batch (one pair and method, several seeds).

    size: Stable Diffusion's image height = width in pixels; None for the digits model.
    """
    item = batch[0]
    mode, kwargs = item.method, {}
    if item.method == "joint_ba":
        mode, kwargs["joint_prompt"] = "joint", JOINT_TEMPLATE.format(item.prompt_2, item.prompt_1)
    if size is not None:
        kwargs.update(height=size, width=size)
    return dict(
        prompt_1=item.prompt_1,
        prompt_2=item.prompt_2,
        mode=mode,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        lift=cfg.lift if mode == "and" else 0.0,  # lift acts on AND only
        batch_size=len(batch),
        generator=[gen(item.seed) for item in batch],
        output_type="pil",
        **kwargs,
    )


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(v, 6) for v in values.tolist()]


def records(cfg, batch, out, scores, seconds: float, scorer_name, device: str, process: int) -> list[dict]:
    """The record of each item of a sampled batch (κ, final log q, scores, timing)."""
    rows = []
    for i, item in enumerate(batch):
        kappa = out.kappa[:, i]  # (n, N): the weights that moved image i at each step
        row = {**asdict(item), "key": item.key, "image": image_path(Path(), item).as_posix()}
        row.update(model=cfg.model, steps=cfg.steps, guidance_scale=cfg.guidance_scale, lift=cfg.lift)
        row.update(kappa_mean=_rounded(kappa.mean(0)), kappa_final=_rounded(kappa[-1]))
        row.update(log_q_final=_rounded(out.log_q[-1, i]))
        if scores is not None:
            row.update(scorer=scorer_name, scores=_rounded(scores[i]))
            row.update(
                score_min=round(scores[i].min().item(), 6), score_mean=round(scores[i].mean().item(), 6)
            )
        row.update(seconds=round(seconds / len(batch), 4), batch_size=len(batch), fast=cfg.fast)
        row.update(device=device, process=process)
        rows.append(row)
    return rows


def _crash_hook(done: int):
    """The test hook: exit abruptly, temp files staged and nothing renamed, once ``done`` reaches k."""
    limit = os.environ.get(CRASH_AFTER)
    if limit is not None and done >= int(limit):
        return lambda: os._exit(75)
    return None


def write_batch(cfg: SweepConfig, batch, images, rows, done: int) -> None:
    """Images first, records last: a record on disk means its image is complete."""
    writes = [(image_path(cfg.out, item), png(im)) for item, im in zip(batch, images, strict=True)]
    writes += [
        (record_path(cfg.out, item), text(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"))
        for item, row in zip(batch, rows, strict=True)
    ]
    write_atomically(writes, before_rename=_crash_hook(done))


# ----------------------------------------------------------------------------- the sweep


def load_pipeline(cfg: SweepConfig, device: str):
    """The sweep's pipeline on this process's device (the digits model stays on the CPU)."""
    from ..generate import load, pick_dtype

    pipe = load(cfg.model, pick_dtype(cfg.dtype, device), device, cpu_offload=False, attention_slicing=False)
    pipe.limits = replace(LIMITS, size=cfg.max_size)  # --max-size
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one overall bar instead
    if cfg.fast:
        pipe.enable_fast_sampling()
    return pipe


def device_name(device: str) -> str:
    """The accelerator's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else torch.device(device).type


def process_logger(out: Path, index: int) -> logging.Logger:
    """A logger writing to this process's own file, logs/process-<index>.log."""
    logger = logging.getLogger(f"superdiff.sweep.process{index}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    (out / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "logs" / f"process-{index}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.handlers = [handler]
    return logger


def close_logger(index: int) -> None:
    """Close this process's log file (see :func:`process_logger`)."""
    logger = logging.getLogger(f"superdiff.sweep.process{index}")
    for handler in logger.handlers:
        handler.close()
    logger.handlers = []


class Progress:
    """One bar on the main process. Alone, it counts the images it wrote; beside other processes it counts
    the records on disk, at most every ``scan_every`` seconds and 10× as long as a count took (it counted
    them after every batch: at 10⁵ images that took longer than sampling)."""

    def __init__(self, cfg: SweepConfig, todo: list[Item], state, scan_every: float = 1.0):
        self.cfg, self.todo, self.main = cfg, todo, state.is_main_process
        self.alone, self.scan_every = state.num_processes == 1, scan_every
        self.written, self.next_scan = 0, 0.0  # this process's images; when the folder is counted next
        self.bar = tqdm(total=len(todo), desc="sweep", unit="image", disable=not self.main or not todo)

    def done(self) -> int:
        """The pending items that have a record by now (all processes')."""
        if self.alone:
            return self.written
        tic = time.perf_counter()
        done = self.on_disk()
        self.next_scan = time.perf_counter() + max(self.scan_every, 10 * (time.perf_counter() - tic))
        return done

    def on_disk(self) -> int:
        """The pending items whose record is on disk."""
        return sum(record_path(self.cfg.out, item).exists() for item in self.todo)

    def update(self, written: int = 0) -> None:
        """``written`` more images by this process; the bar moves on the main process."""
        self.written += written
        if self.main and (self.alone or time.perf_counter() >= self.next_scan):
            self.bar.update(self.done() - self.bar.n)

    def wait_for_all(self) -> None:
        """Wait until every process has written its share, the main one moving the bar meanwhile. The wait
        is a barrier, so a process that stopped ends it with :class:`PeerStopped` (its records never come)."""
        if not self.alone:
            with beside_others(self.cfg):
                everyone = torch.distributed.barrier(async_op=True)
                while self.main and not everyone.is_completed():
                    time.sleep(0.05)
                    self.update()
                everyone.wait()
        if self.main:
            self.bar.update(self.done() - self.bar.n)
        self.bar.close()


class PeerStopped(RuntimeError):
    """Another process of the launch stopped (it crashed or was killed) while this one waited for it."""


@contextmanager
def beside_others(cfg: SweepConfig):
    """A step taken together with the other processes: one that stopped is named, not left to a gloo or
    NCCL traceback (or, as the main process had counted records, to a wait without end)."""
    try:
        yield
    except RuntimeError as err:  # gloo: "Connection closed by peer"; NCCL: its watchdog; either: a timeout
        raise PeerStopped(
            f"another process of this sweep stopped or did not answer within the launch's timeout (see the "
            f"launcher's output and {str(cfg.out / 'logs')!r}); the records written are kept: rerun the same "
            "command to resume"
        ) from err


def together(cfg: SweepConfig, state: PartialState) -> None:
    """Wait for every process (:func:`beside_others`)."""
    with beside_others(cfg):
        state.wait_for_everyone()


def sweep_state() -> PartialState:
    """This process's place in the launch; processes without a GPU join as CPU workers (gloo).

    accelerate starts CPU processes only as ``--cpu`` under mpirun, but ``accelerate launch --multi_gpu
    --num_processes N`` (torchrun) on a machine without CUDA gives N CPU processes this way.
    """
    return PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))


def claim(cfg: SweepConfig, device: str, lock: ExitStack) -> list[Path]:
    """Make --out this sweep's folder and take its lock (into ``lock``) before any model loads; returns what
    was created, for :func:`release`.

    The lock comes before sweep.json: of two runs started together, the second is refused before it writes
    anything, so it cannot remove the first one's sweep.json and lock file while the first loads its model
    (which let a third run with other settings take the folder).
    """
    check_settings(cfg, device)
    check_no_broken_link(cfg.out, "--out")
    created = [] if cfg.out.exists() else [cfg.out]
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
        lock.enter_context(held(cfg))
        check_settings(cfg, device)  # again, locked: a run that held the folder meanwhile may have set them
        settings = cfg.out / SETTINGS_FILE
        if not settings.exists():
            content = text(json.dumps(cfg.settings(device), indent=1, allow_nan=False) + "\n")
            write_atomically([(settings, content)], exclusive=True)  # without flock (Windows), a race
            created.insert(0, settings)
    except FileExistsError:
        check_settings(cfg, device)  # another run wrote it first (no flock): resume it only with its settings
    except OSError as err:
        raise ValueError(f"--out: cannot write to {str(cfg.out)!r} ({err.strerror or err})") from None
    return created


@contextmanager
def held(cfg: SweepConfig):
    """The folder's lock for the whole run: a second sweep started on it meanwhile is refused, not run twice
    (it would redo the same pending items and remove the first one's temp files). The OS releases the lock of
    a process that dies."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; a second run there only repeats the first one's work
        yield
        return
    with open(cfg.out / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(
                f"--out: another sweep is running in {str(cfg.out)!r}; wait for it to end (then rerunning "
                "resumes it) or use another folder"
            ) from None
        yield


def unclaim(created: list[Path]) -> None:
    """Undo :func:`claim`: remove the created paths in order; a folder that is not empty stays."""
    for path in created:
        if path.is_dir():
            try:
                path.rmdir()
            except OSError:  # something else was written meanwhile
                pass
        else:
            path.unlink(missing_ok=True)


def release(cfg: SweepConfig, created: list[Path], index: int) -> None:
    """After a failure before the first record: remove what this run made (its log, empty folders) and
    :func:`unclaim` the folder, so a rerun may use other settings; anything else in it (a record, another
    process's log) keeps it this sweep's."""
    close_logger(index)
    log = cfg.out / "logs" / f"process-{index}.log"
    made = [log, log.parent, cfg.out / "images", cfg.out / "records", cfg.out / LOCK_FILE, *created]
    if all(path in made for path in cfg.out.rglob("*")):
        unclaim(made)


def prepare(cfg: SweepConfig, state: PartialState) -> list[Item]:
    """The pending items, listed alike by every process once the main one has removed what a crash left."""
    todo = None
    if state.is_main_process:
        for folder in (cfg.out, cfg.out / "images", cfg.out / "records"):
            remove_stale_temps(folder)
        todo = pending(cfg)  # each record and image read once here: pending(cfg) again would list the same
        remove_unreadable_records(cfg, todo)
    together(cfg, state)
    todo = pending(cfg) if todo is None else todo
    together(cfg, state)  # every process has listed the same pending items before anyone writes
    return todo


def sample_share(cfg: SweepConfig, state: PartialState, pipe, scorer, todo: list[Item], progress) -> int:
    """Sample, score and write this process's batches of the pending items; returns how many images."""
    device, log = str(state.device), process_logger(cfg.out, state.process_index)
    size = None if cfg.model == "digits" else cfg.size or pipe.default_size
    scorer_name, where, written = getattr(scorer, "name", None), device_name(device), 0
    with state.split_between_processes(batches(todo, cfg.batch_size)) as mine:
        log.info(f"process {state.process_index}/{state.num_processes} on {device}: {len(mine)} batches")
        for done, batch in enumerate(mine):
            tic = time.perf_counter()
            out = pipe(**pipeline_call(cfg, batch, size))
            scores = scorer(out, [batch[0].prompt_1, batch[0].prompt_2]) if scorer else None
            seconds = time.perf_counter() - tic
            rows = records(cfg, batch, out, scores, seconds, scorer_name, where, state.process_index)
            write_batch(cfg, batch, out.to_pil(), rows, done)
            written += len(batch)
            log.info(f"{' '.join(item.key for item in batch)}: {seconds:.2f} s")
            progress.update(len(batch))
    log.info(f"done: {written} images written by this process")
    return written


def sample(cfg: SweepConfig, state: PartialState) -> dict:
    """Load the models, then sample and score this process's share of the pending items; the run's timing."""
    device = str(state.device)
    scorer = load_scorer(cfg.scorer, cfg.clip_model, device)  # first: unavailable CLIP weights fail fast
    pipe = load_pipeline(cfg, device)
    todo = prepare(cfg, state)
    progress, start = Progress(cfg, todo, state), time.perf_counter()
    try:
        sample_share(cfg, state, pipe, scorer, todo, progress)
        progress.wait_for_all()
    finally:
        progress.bar.close()  # an error message starts on a line of its own
    return {"images": len(todo), "seconds": time.perf_counter() - start, "processes": state.num_processes}


class Refused(ValueError):
    """The main process refused --out and said why; the other processes stop without a word."""


def claim_for_all(cfg: SweepConfig, state: PartialState, lock: ExitStack) -> list[Path]:
    """The main process claims --out and takes its lock (into ``lock``, :func:`claim`); every process learns
    whether it could before any model loads. Returns what the claim created."""
    created, refusal = [], None
    if state.is_main_process:
        try:
            created = claim(cfg, str(state.device), lock)
        except ValueError as err:  # nothing written but the folder (and its lock file, maybe another run's)
            refusal = err
    if state.num_processes > 1:
        with beside_others(cfg):
            said = broadcast_object_list([None if refusal is None else str(refusal)], from_process=0)
        if said[0] is not None and not state.is_main_process:
            raise Refused(said[0])
    if refusal is not None:
        raise refusal
    return created


def run_sweep(cfg: SweepConfig, state: PartialState | None = None) -> dict:
    """Sample and score every pending item of the sweep on this process's share; returns the run's timing.

    A failure before the first record (models unavailable, a size too large, SIGTERM) leaves no sweep folder
    behind.
    """
    state = state or sweep_state()
    with terminate_as_exit(), ExitStack() as lock:
        created = claim_for_all(cfg, state, lock)
        try:
            timing = sample(cfg, state)
            if state.is_main_process:
                timing["other_records"] = other_records(cfg)
                write_summary(cfg, load_records(cfg), timing)
        except BaseException:
            if created:
                release(cfg, created, state.process_index)
            raise
    return timing
