"""What ``sycam evaluate`` measured: per-image values, per-cell summaries, timings.

Aggregation: per method and metric the mean of the non-NaN per-image values with a 95 %
percentile-bootstrap interval (:func:`sycam.metrics.stats.bootstrap_ci`) and the number of valid
images. A program that yields NaN/Inf on an image makes that image's values NaN for that
method; the report counts those images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sycam.errors import SycamError
from sycam.evaluation.methods import Method
from sycam.metrics import Metric
from sycam.metrics.stats import bootstrap_ci

__all__ = ["EvalResult", "Summary", "assemble"]


@dataclass
class Summary:
    """One (method, metric) cell: mean, 95 % bootstrap interval, valid and NaN counts."""

    method: str
    metric: str
    mean: float
    lo: float
    hi: float
    n_valid: int
    n_nan: int
    higher_is_better: bool


@dataclass
class EvalResult:
    """Everything ``evaluate`` measured. ``values[method][metric]`` is (N,) float64, NaN where undefined."""

    methods: list[str]
    metrics: list[str]
    higher_is_better: dict[str, bool]
    values: dict[str, dict[str, np.ndarray]]
    indices: np.ndarray  # dataset index of each image
    ids: list[str]
    targets: np.ndarray
    summaries: list[Summary]
    invalid: dict[str, int]  # images where the program gave NaN/Inf
    metric_failures: dict[str, dict[str, int]]  # images where a metric's re-explanation failed
    method_seconds: dict[str, float]
    metric_seconds: dict[str, float]
    capture_seconds: float
    wall_seconds: float
    capture_groups: list[list[str]]
    skipped: list[tuple[str, str]]
    batches_computed: int
    images_resumed: int
    config: dict[str, Any]
    out: Path | None = None

    @property
    def n_images(self) -> int:
        """Number of images evaluated (N)."""
        return int(self.indices.size)

    def summary(self, method: str, metric: str) -> Summary:
        """The cell for ``method`` × ``metric``."""
        for s in self.summaries:
            if s.method == method and s.metric == metric:
                return s
        raise KeyError(f"no result for method {method!r} and metric {metric!r}")

    def means(self) -> np.ndarray:
        """(methods, metrics) array of means."""
        return np.array([[self.summary(m, k).mean for k in self.metrics] for m in self.methods], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as null)."""
        return _nan_to_none({
            "n_images": self.n_images,
            "methods": self.methods,
            "metrics": [{"name": k, "higher_is_better": self.higher_is_better[k]} for k in self.metrics],
            "results": [s.__dict__ for s in self.summaries],
            "invalid_images": self.invalid,
            "metric_failures": self.metric_failures,
            "seconds": {
                "capture_shared": self.capture_seconds,
                "methods": self.method_seconds,
                "metrics": self.metric_seconds,
                "wall_this_run": self.wall_seconds,
            },
            "capture_groups": self.capture_groups,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "batches_computed_this_run": self.batches_computed,
            "images_resumed": self.images_resumed,
            "config": self.config,
        })


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def assemble(saved: Sequence[Mapping[str, Any]], meths: Sequence[Method], mets: Sequence[Metric], n_total: int,
             n_boot: int, seed: int) -> EvalResult:
    """The result of every image from the saved batch records (this run's and resumed ones), with
    the bootstrap summaries; the run's bookkeeping fields (wall time, groups, ...) are left empty
    for the job to fill in."""
    names = [m.name for m in meths]
    metric_names = [k.name for k in mets]
    n_m, n_k = len(names), len(metric_names)
    values = np.full((n_m, n_k, n_total), np.nan)
    invalid = np.zeros((n_m, n_total), dtype=bool)
    failed = np.zeros((n_m, n_k, n_total), dtype=bool)
    ids = [""] * n_total
    targets = np.full(n_total, -1, dtype=np.int64)
    have = np.zeros(n_total, dtype=bool)
    method_s = np.zeros(n_m)
    metric_s = np.zeros(n_k)
    capture_s = 0.0
    for d in saved:
        ix = d["indices"]
        values[:, :, ix] = d["values"]
        invalid[:, ix] = d["invalid"]
        failed[:, :, ix] = d["failed"]
        targets[ix] = d["targets"]
        for j, i in enumerate(ix.tolist()):
            ids[i] = str(d["ids"][j])
        have[ix] = True
        method_s += d["method_seconds"]
        metric_s += d["metric_seconds"]
        capture_s += float(d["capture_seconds"])
    if not have.all():  # cannot happen unless files vanished mid-run
        raise SycamError(f"{int((~have).sum())} images have no results; rerun the same command to compute them")
    summaries = []
    for i, m in enumerate(names):
        for j, k in enumerate(mets):
            mean, lo, hi, n_valid = bootstrap_ci(values[i, j], n_boot=n_boot, alpha=0.05, seed=seed)
            summaries.append(Summary(m, k.name, mean, lo, hi, n_valid, n_total - n_valid, bool(k.higher_is_better)))
    return EvalResult(
        methods=names, metrics=metric_names, higher_is_better={k.name: bool(k.higher_is_better) for k in mets},
        values={m: {k: values[i, j].copy() for j, k in enumerate(metric_names)} for i, m in enumerate(names)},
        indices=np.arange(n_total), ids=ids, targets=targets, summaries=summaries,
        invalid={m: int(invalid[i].sum()) for i, m in enumerate(names)},
        metric_failures={m: {k: int(failed[i, j].sum()) for j, k in enumerate(metric_names)} for i, m in enumerate(names)},
        method_seconds={m: float(method_s[i]) for i, m in enumerate(names)},
        metric_seconds={k: float(metric_s[j]) for j, k in enumerate(metric_names)},
        capture_seconds=capture_s, wall_seconds=0.0, capture_groups=[], skipped=[], batches_computed=0,
        images_resumed=0, config={},
    )
