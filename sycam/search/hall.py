"""The hall of fame: what a synthesis run reports, and how it is chosen.

PySR's idea: a user wants the *simplest* program that is almost as good as the best, so the hall
of fame is the Pareto front of program size against the validation score — for each size the best
program, kept only when it beats every smaller one. Rows are structurally distinct: programs that
differ only in their ``?params`` are one row, with the best parameters found on train.

Every reported number says how sure it is: test scores carry a 95% percentile-bootstrap interval
over images, and the best program's advantage over a reference is a *paired* difference (the same
images, per-image differences resampled), which is much tighter than comparing two intervals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from sycam.metrics.stats import bootstrap_ci

#: a validation split smaller than this makes selection noisy (the printout warns)
MIN_VAL_IMAGES = 100


@dataclass
class Row:
    """One program of the hall of fame (or a reference shown beside it)."""

    name: str
    program: str
    size: int
    source: str
    params: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    test_ci: dict[str, list[float]] = field(default_factory=dict)  # metric -> [lo, hi], 95% bootstrap
    sanity: dict[str, float] = field(default_factory=dict)  # check -> value on the validation images
    failed: list[str] = field(default_factory=list)  # sanity checks it fails
    worse: list[str] = field(default_factory=list)  # metrics where it is worse than the --no-worse-than reference
    simplified: str = ""  # a shorter equivalent spelling, where one exists
    structure: str = ""  # canonical hash of the program without its parameter values

    @property
    def passes(self) -> bool:
        return not self.failed


def nan_last(v: float, sign: int) -> float:
    """Sort key: NaN ranks below every number whatever the direction (``sign`` = +1 higher is better)."""
    return v if not math.isnan(v) else -sign * math.inf


def distinct_structures(trials: Iterable, key_of, value_of, size_of, sign: int, top: int) -> list:
    """The best trial of each structure: the ``top`` best structures, plus the best of every size.

    Programs that differ only in ``?params`` share a structure key and keep their best-scoring
    parameters. The best of every size joins even when it is not among the ``top``: the Pareto front
    needs small programs that are nearly as good, not only the very best ones.
    """
    best: dict[str, object] = {}
    for t in trials:
        v = value_of(t)
        if math.isnan(v):
            continue
        k = key_of(t)
        if k not in best or sign * v > sign * value_of(best[k]):
            best[k] = t
    ranked = sorted(best.values(), key=lambda t: (-sign * value_of(t), size_of(t)))
    chosen = ranked[:top]
    by_size: dict[int, object] = {}
    for t in ranked:
        by_size.setdefault(size_of(t), t)
    for t in by_size.values():
        if t not in chosen:
            chosen.append(t)
    return chosen


def pareto_front(rows: Sequence[Row], metric: str, sign: int) -> list[Row]:
    """Rows on the front of size (smaller is better) against validation ``metric``, by size.

    For each size the best row; a row is kept only when it is strictly better than every kept
    smaller row. Rows whose validation value is NaN never enter.
    """
    best_of_size: dict[int, Row] = {}
    for r in rows:
        v = r.val.get(metric, math.nan)
        if math.isnan(v):
            continue
        cur = best_of_size.get(r.size)
        if cur is None or sign * v > sign * cur.val[metric]:
            best_of_size[r.size] = r
    front: list[Row] = []
    for size in sorted(best_of_size):
        r = best_of_size[size]
        if not front or sign * r.val[metric] > sign * front[-1].val[metric]:
            front.append(r)
    return front


def interval(values: torch.Tensor | np.ndarray, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean and 95% percentile-bootstrap interval of per-image values (NaN = undefined)."""
    return bootstrap_ci(values, n_boot=2000, seed=seed)


def paired_difference(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean of ``a − b`` over images where both are defined, with its 95% bootstrap interval."""
    a64, b64 = a.double().cpu(), b.double().cpu()
    both = ~(torch.isnan(a64) | torch.isnan(b64))
    return bootstrap_ci((a64 - b64)[both], n_boot=2000, seed=seed)


def fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_ci(ci: Sequence[float] | None) -> str:
    if not ci or any(math.isnan(c) for c in ci):
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


__all__ = ["MIN_VAL_IMAGES", "Row", "distinct_structures", "fmt", "fmt_ci", "interval", "nan_last", "paired_difference",
           "pareto_front"]
