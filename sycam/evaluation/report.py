"""The three written forms of an :class:`~sycam.evaluation.results.EvalResult`: the aligned text
table (printed), Markdown (``results.md``), and CSV/JSON (``results.csv``, ``results.json``,
``per_image.csv``)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from sycam.evaluation.results import EvalResult, Summary
from sycam.files import atomic_write

__all__ = ["format_table", "markdown", "write_results"]


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.3f}"


def _cell(s: Summary, n: int) -> str:
    if s.n_valid == 0:
        return "– (n=0)"
    text = f"{_fmt(s.mean)} [{_fmt(s.lo)}, {_fmt(s.hi)}]"
    return text + (f" n={s.n_valid}" if s.n_valid != n else "")


def _heads(result: EvalResult) -> list[str]:
    return ["method"] + [f"{k} {'↑' if result.higher_is_better[k] else '↓'}" for k in result.metrics] + ["maps s"]


def format_table(result: EvalResult) -> str:
    """The aligned method × metric table: ``mean [95% CI]`` (``n=k`` where only k of N images are
    valid), the seconds each method spent computing maps, then notes on timing, invalid programs
    and skipped images."""
    n = result.n_images
    heads = _heads(result)
    rows = [[m] + [_cell(result.summary(m, k), n) for k in result.metrics] + [f"{result.method_seconds[m]:.2f}"]
            for m in result.methods]
    widths = [max(len(r[i]) for r in [heads] + rows) for i in range(len(heads))]
    lines = [f"{n} images · mean [95% bootstrap CI] · n=k where only k images have a value"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())
    lines.append("")
    lines.extend(_notes(result))
    return "\n".join(lines)


def _notes(result: EvalResult) -> list[str]:
    groups = len(result.capture_groups)
    out = [f"capture (shared by all methods, {groups} score group{'s' if groups != 1 else ''}): "
           f"{result.capture_seconds:.2f} s",
           "metric time: " + ", ".join(f"{k} {result.metric_seconds[k]:.2f} s" for k in result.metrics)]
    if result.images_resumed:
        out.append(f"resumed: {result.images_resumed} images from earlier runs, {result.batches_computed} batches computed now")
    for m, k in result.invalid.items():
        if k:
            out.append(f"invalid: {m} yields NaN/Inf on {k} of {result.n_images} images (their values are NaN)")
    for m, per in result.metric_failures.items():
        for k, c in per.items():
            if c:
                out.append(f"failed: {k} for {m} on {c} images (the explainer failed on perturbed copies)")
    if result.skipped:
        out.append(f"skipped: {len(result.skipped)} bad images left out (listed in results.json), first: "
                   f"{result.skipped[0][0]}: {result.skipped[0][1]}")
    return out


def markdown(result: EvalResult) -> str:
    """The table and its notes as Markdown (``results.md``)."""
    n = result.n_images
    heads = _heads(result)
    lines = [f"{n} images; mean [95% bootstrap CI]; `n=k` where only k images have a value.", "",
             "| " + " | ".join(heads) + " |", "|" + "|".join(["---"] + ["---:"] * (len(heads) - 1)) + "|"]
    for m in result.methods:
        cells = [_cell(result.summary(m, k), n) for k in result.metrics]
        lines.append("| " + " | ".join([m] + cells + [f"{result.method_seconds[m]:.2f}"]) + " |")
    lines.append("")
    lines.extend(f"- {line}" for line in _notes(result))
    return "\n".join(lines) + "\n"


def write_results(result: EvalResult, out: Path) -> None:
    """``results.csv`` (one row per cell), ``results.json``, ``results.md`` and ``per_image.csv``
    (one row per image and method), each written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", "mean", "ci_lo", "ci_hi", "n_valid", "n_nan", "higher_is_better",
                "method_seconds", "invalid_images"])
    for s in result.summaries:
        w.writerow([s.method, s.metric, f"{s.mean:.6g}", f"{s.lo:.6g}", f"{s.hi:.6g}", s.n_valid, s.n_nan,
                    int(s.higher_is_better), f"{result.method_seconds[s.method]:.3f}", result.invalid[s.method]])
    atomic_write(out / "results.csv", buf.getvalue().encode())
    atomic_write(out / "results.json", (json.dumps(result.to_json(), indent=2) + "\n").encode())
    atomic_write(out / "results.md", markdown(result).encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "id", "target", "method"] + result.metrics)
    for m in result.methods:
        for i in range(result.n_images):
            w.writerow([int(result.indices[i]), result.ids[i], int(result.targets[i]), m]
                       + [f"{result.values[m][k][i]:.6g}" for k in result.metrics])
    atomic_write(out / "per_image.csv", buf.getvalue().encode())
