"""A finished sweep's tables: all records gathered (JSONL, CSV) and per method the scores' mean ± std."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import matplotlib.pyplot as plt

from .._io import png, text, write_atomically
from .plan import METHODS

SUMMARY_FIELDS = (
    "method",
    "description",
    "images",
    "score_min_mean",
    "score_min_std",
    "score_mean_mean",
    "score_mean_std",
    "seconds_per_image",
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """One row per method (in METHODS order): image count, min and mean score as mean ± std, seconds."""
    table = []
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        mine = [r for r in rows if r["method"] == method]
        row = {"method": method, "description": METHODS[method], "images": len(mine)}
        for score in ("score_min", "score_mean"):
            values = [r[score] for r in mine if r.get(score) is not None]
            mean, std = mean_std(values) if values else (math.nan, math.nan)
            row.update({f"{score}_mean": mean, f"{score}_std": std})
        row["seconds_per_image"] = statistics.fmean(r["seconds"] for r in mine)
        table.append(row)
    return table


def flat(row: dict) -> dict:
    """A record as one CSV row: list values spread over columns name_1, name_2, ..."""
    out = {}
    for key, value in row.items():
        if isinstance(value, list):
            out.update({f"{key}_{i}": v for i, v in enumerate(value, start=1)})
        else:
            out[key] = value
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def cell(value):
    """A CSV cell that a spreadsheet shows as text: a leading ' before formula characters (OWASP)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def to_csv(rows: list[dict]) -> str:
    """CSV text of dict rows (columns: the union of their keys, first-seen order); text cells made inert."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _pm(row: dict, score: str) -> str:
    """'mean ± std' of a summary row's score, or '—' without scores."""
    mean, std = row[f"{score}_mean"], row[f"{score}_std"]
    return "—" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def markdown(table: list[dict], scorer: str | None, timing: dict, cfg) -> str:
    """The summary as a Markdown page."""
    scores = (
        f"Scores: {scorer}, per image the min and the mean over its two prompts; mean ± sample std over "
        "the images of each method."
        if scorer
        else "No scores (--scorer none)."
    )
    lines = [
        "# Sweep summary",
        "",
        f"Model `{cfg.model}`, {len(cfg.pairs)} prompt pairs × {len(cfg.methods)} methods × "
        f"{len(cfg.seeds)} seeds = {len(cfg.items)} images; {cfg.steps} steps, guidance "
        f"{cfg.guidance_scale:g}, lift {cfg.lift:g}. {scores}",
        "",
        "| method | | images | min score | mean score | s / image |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['description']} | {r['images']} | {_pm(r, 'score_min')} | "
            f"{_pm(r, 'score_mean')} | {r['seconds_per_image']:.3f} |"
        )
    lines += [
        "",
        f"This run: {timing['images']} new images in {timing['seconds']:.1f} s on "
        f"{timing['processes']} process(es) (model loading excluded"
        f"{'; --fast: the first call of each batch shape includes its compilation' if cfg.fast else ''}).",
        "",
    ]
    if timing.get("other_records"):
        lines += [f"{other_records_note(timing['other_records'])}.", ""]
    return "\n".join(lines)


def other_records_note(n: int) -> str:
    """What a summary of part of a folder leaves out."""
    return (
        f"This summary covers this command's grid only: records/ holds {n} more records from other seeds or "
        "methods, kept (rerun with them all to summarize them too)"
    )


def bar_plot(table: list[dict], scorer: str | None):
    """Grouped bars per method: min and mean score, with ±std error bars."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(table), 3.2))
    x = range(len(table))
    for offset, score, color in ((-0.2, "score_min", "tab:blue"), (0.2, "score_mean", "tab:orange")):
        means = [r[f"{score}_mean"] for r in table]
        stds = [r[f"{score}_std"] for r in table]
        label = score.replace("score_", "") + " over the two prompts"
        ax.bar([i + offset for i in x], means, 0.4, yerr=stds, capsize=3, color=color, label=label)
    ax.set_xticks(list(x), [r["method"] for r in table])
    ax.set_ylabel(scorer or "score")
    ax.legend(fontsize=8)
    ax.set_title("sweep: score per method (mean ± std)")
    return fig


def write_summary(cfg, rows: list[dict], timing: dict) -> dict:
    """Write the records (JSONL, CSV) and summary.md/.csv/.png into the sweep folder; returns their paths."""
    table = summarize(rows)
    scorer = next((r["scorer"] for r in rows if r.get("scorer")), None)
    paths = {name: cfg.out / name for name in ("records.jsonl", "records.csv", "summary.md", "summary.csv")}
    jsonl = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    summary_csv = to_csv([{k: r[k] for k in SUMMARY_FIELDS} for r in table])
    contents = [jsonl, to_csv([flat(r) for r in rows]), markdown(table, scorer, timing, cfg), summary_csv]
    writes = [(paths[name], text(c)) for name, c in zip(paths, contents, strict=True)]
    fig = None if scorer is None else bar_plot(table, scorer)
    if fig is not None:  # written with the tables: an interrupted summary leaves none of them new
        paths["summary.png"] = cfg.out / "summary.png"
        writes.append((paths["summary.png"], png(fig, dpi=100)))
    try:
        write_atomically(writes)
    finally:
        if fig is not None:
            plt.close(fig)
    return paths
