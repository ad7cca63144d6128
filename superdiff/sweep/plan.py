"""What a sweep samples: prompt pairs × methods × seeds, as items with stable names, grouped into batches."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from importlib import resources
from itertools import groupby
from pathlib import Path

import yaml

from ..limits import MAX_SEED, MAX_SWEEP_IMAGES, check_prompt

SHIPPED_PAIRS = {"paper": "paper_sd.csv", "digits": "digits.csv"}  # --pairs NAME -> sweep/pairs/FILE
METHODS = {
    "and": "SuperDiff AND (equal density)",
    "or": "SuperDiff OR (mixture)",
    "avg": "averaging the two fields (κ = 1/2)",
    "joint": 'one prompt "A that looks like B"',
    "joint_ba": 'one prompt "B that looks like A"',
    "prompt_1": "prompt A alone",
    "prompt_2": "prompt B alone",
}
JOINT_METHODS = ("joint", "joint_ba")  # need a text encoder: Stable Diffusion only
DEFAULT_METHODS = ("and", "or", "avg", "joint", "prompt_1", "prompt_2")
DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # the scorer of Stable Diffusion sweeps (scoring.py)


@dataclass(frozen=True)
class Item:
    """One image of the sweep: pair index, its two prompts, method and seed."""

    pair: int
    prompt_1: str
    prompt_2: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        """The item's file stem, unique in the sweep: p003_and_s0017."""
        return f"p{self.pair:03d}_{self.method}_s{self.seed:04d}"


def _pairs_text(source: str) -> tuple[str, str]:
    """(text, format) of a shipped pairs name or a file path."""
    if source in SHIPPED_PAIRS:
        return resources.files("superdiff.sweep").joinpath("pairs", SHIPPED_PAIRS[source]).read_text(), "csv"
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--pairs: expected {' or '.join(SHIPPED_PAIRS)} or a CSV/YAML file, got {source!r}")
    try:  # utf-8-sig: Excel starts its UTF-8 CSV files with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--pairs: {source!r} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    return text, "yaml" if path.suffix.lower() in (".yaml", ".yml") else "csv"


def _csv_rows(text: str, source: str) -> list[tuple[str, object]]:
    """(where, row) of each pair of a CSV text whose header names prompt_1,prompt_2."""
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    try:
        if not {"prompt_1", "prompt_2"} <= set(reader.fieldnames or ()):
            raise ValueError(f"--pairs: the CSV header must name prompt_1,prompt_2; got {reader.fieldnames}")
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row:  # DictReader puts the fields past the header's under the key None
                raise ValueError(
                    f"--pairs: {where} of {source!r} has {len(reader.fieldnames) + len(row[None])} fields, "
                    f'the header {len(reader.fieldnames)}; quote prompts that contain commas: "a cat, '
                    'photorealistic",a dog'
                )
            rows.append((where, (row["prompt_1"], row["prompt_2"])))
    except csv.Error as err:
        raise ValueError(
            f"--pairs: line {reader.reader.line_num} of {source!r} is not valid CSV ({err})"
        ) from None
    return rows


def _rows(text: str, fmt: str, source: str) -> list[tuple[str, object]]:
    """(where, row) of each pair of a CSV (header prompt_1,prompt_2) or YAML (mappings or 2-lists) text."""
    if fmt == "csv":
        return _csv_rows(text, source)
    try:
        rows = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"--pairs: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(rows, list):
        raise ValueError("--pairs: the YAML file must hold a list of pairs")
    return [
        (f"item {i}", (r.get("prompt_1"), r.get("prompt_2")) if isinstance(r, dict) else r)
        for i, r in enumerate(rows, start=1)
    ]


def load_pairs(source: str) -> list[tuple[str, str]]:
    """The distinct (prompt_1, prompt_2) pairs of ``--pairs``: "paper", "digits", or a CSV/YAML file."""
    pairs = {}  # pair -> where it is
    for where, row in _rows(*_pairs_text(source), source):
        ok = isinstance(row, (list, tuple)) and len(row) == 2
        if not (ok and all(isinstance(p, str) and p.strip() for p in row)):
            numbers = ok and any(isinstance(p, (int, float)) for p in row)
            hint = ' (text: in YAML, quote a digit, "3")' if numbers else ""
            raise ValueError(
                f"--pairs: {where} of {source!r} must be two non-empty prompts{hint}, got {row!r}"
            )
        pair = (row[0].strip(), row[1].strip())
        try:
            for p in pair:
                check_prompt("prompt", p)  # at most MAX_PROMPT_CHARS characters, UTF-8
        except ValueError as err:
            raise ValueError(f"--pairs: {where} of {source!r}: {err}") from None
        if pair in pairs:  # it would be sampled and counted twice
            raise ValueError(f"--pairs: {where} of {source!r} repeats {pairs[pair]}: {pair!r}")
        pairs[pair] = where
    if not pairs:
        raise ValueError(f"--pairs: {source!r} holds no pairs")
    return list(pairs)


def distinct(ranges: list[range]) -> int:
    """How many integers the ranges hold together (overlaps counted once), without listing them."""
    count, end = 0, 0
    for r in sorted(ranges, key=lambda r: r.start):
        count += max(0, r.stop - max(r.start, end))
        end = max(end, r.stop)
    return count


def parse_seeds(spec: str) -> list[int]:
    """--seeds "0-19", "0,3,7" or "0-4,10" -> sorted distinct seeds, each from 0 to MAX_SEED."""
    ranges = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)  # not \d: "٣" is no seed here
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ValueError(f"--seeds: expected integers >= 0 and ranges like 0-19, got {spec!r}")
        low = int(match.group(1))
        ranges.append(range(low, int(match.group(2) or low) + 1))
    if max(r.stop - 1 for r in ranges) > MAX_SEED:
        raise ValueError(f"--seeds: expected seeds from 0 to {MAX_SEED}, got {spec!r}")
    if distinct(ranges) > MAX_SWEEP_IMAGES:  # counted before a single seed is listed
        raise ValueError(f"--seeds: expected at most {MAX_SWEEP_IMAGES} seeds, got {spec!r}")
    return sorted(set().union(*ranges))


def parse_methods(spec: str, joint: bool = True) -> list[str]:
    """--methods "and,or,avg" -> the list; ``joint=False``: the model cannot take joint prompts."""
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    allowed = [m for m in METHODS if joint or m not in JOINT_METHODS]
    bad = [m for m in methods if m not in allowed]
    if bad or not methods or len(set(methods)) < len(methods):
        raise ValueError(f"--methods: expected distinct names from {', '.join(allowed)}; got {spec!r}")
    return methods


def plan(pairs: list[tuple[str, str]], methods: list[str], seeds: list[int]) -> list[Item]:
    """Every (pair, method, seed) item, ordered pair-major."""
    count = len(pairs) * len(methods) * len(seeds)
    if count > MAX_SWEEP_IMAGES:
        raise ValueError(
            f"--pairs × --methods × --seeds: {len(pairs)} pairs × {len(methods)} methods × "
            f"{len(seeds)} seeds = {count} images; a sweep holds at most {MAX_SWEEP_IMAGES}"
        )
    return [Item(i, a, b, m, s) for i, (a, b) in enumerate(pairs) for m in methods for s in seeds]


def batches(items: list[Item], size: int) -> list[tuple[Item, ...]]:
    """Consecutive items of one (pair, method), at most ``size`` seeds each: one pipeline call."""
    out = []
    for _, group in groupby(items, key=lambda item: (item.pair, item.method)):
        group = list(group)
        out += [tuple(group[i : i + size]) for i in range(0, len(group), size)]
    return out
