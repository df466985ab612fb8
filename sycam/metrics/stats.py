"""Aggregation statistics for per-image metric values (NaN = undefined for that image)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sycam.errors import MetricError


def bootstrap_ci(
    values: Tensor | np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float, int]:
    """Mean and percentile-bootstrap confidence interval of the non-NaN values.

    Returns ``(mean, lo, hi, n_valid)``: ``mean`` the mean of the ``n_valid`` non-NaN values;
    ``lo, hi`` the ``alpha/2`` and ``1 − alpha/2`` quantiles (linear interpolation) of the means
    of ``n_boot`` resamples with replacement of those values (Efron & Tibshirani 1993, the
    percentile interval). Vectorised over resamples (in blocks, to bound memory); deterministic
    for a given ``seed``. No valid value → ``(nan, nan, nan, 0)``; one → ``(v, v, v, 1)``.
    Infinite values are an error (a metric never returns them).
    """
    if isinstance(values, Tensor):
        arr = values.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(values, dtype=np.float64)
    arr = arr.reshape(-1)
    if not isinstance(n_boot, int) or n_boot < 1:
        raise MetricError(f"bootstrap_ci: n_boot must be a positive int, got {n_boot!r}")
    if not (0.0 < alpha < 1.0):
        raise MetricError(f"bootstrap_ci: alpha must lie in (0, 1), got {alpha}")
    if np.isinf(arr).any():
        raise MetricError("bootstrap_ci: values contain ±inf")
    vals = arr[~np.isnan(arr)]
    n = int(vals.size)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(vals.mean())
    if n == 1:
        return (mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    # about 8M indices per block whatever n is
    block = max(1, min(n_boot, 8_000_000 // n))
    means = np.empty(n_boot)
    for s in range(0, n_boot, block):
        e = min(s + block, n_boot)
        means[s:e] = vals[rng.integers(0, n, size=(e - s, n))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (mean, float(lo), float(hi), n)
