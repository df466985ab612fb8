"""bootstrap_ci: NaN handling, exact small cases, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sycam.metrics import bootstrap_ci


def test_all_nan_and_empty() -> None:
    mean, lo, hi, n = bootstrap_ci(torch.tensor([float("nan")] * 3))
    assert n == 0 and math.isnan(mean) and math.isnan(lo) and math.isnan(hi)
    assert bootstrap_ci(np.array([]))[3] == 0


def test_single_and_constant_values() -> None:
    assert bootstrap_ci([0.3, float("nan")]) == (0.3, 0.3, 0.3, 1)  # type: ignore[arg-type]
    mean, lo, hi, n = bootstrap_ci(torch.full((10,), 0.25))
    assert (mean, lo, hi, n) == (0.25, 0.25, 0.25, 10)


def test_two_point_distribution_exact_quantiles() -> None:
    # resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    vals = torch.tensor([0.0, 1.0, float("nan")])
    mean, lo, hi, n = bootstrap_ci(vals, n_boot=4000, alpha=0.05)
    assert (mean, lo, hi, n) == (0.5, 0.0, 1.0, 2)
    # the 30 % and 70 % quantiles both fall on 0.5
    assert bootstrap_ci(vals, n_boot=4000, alpha=0.6)[1:3] == (0.5, 0.5)


def test_normal_sample_width_and_determinism() -> None:
    x = np.random.default_rng(0).normal(size=400)
    mean, lo, hi, n = bootstrap_ci(x, n_boot=2000, seed=1)
    assert n == 400 and mean == pytest.approx(x.mean())
    half = 1.96 / math.sqrt(400) * x.std()
    assert lo < mean < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci(x, n_boot=2000, seed=1) == (mean, lo, hi, n)
    assert bootstrap_ci(x, n_boot=2000, seed=2)[1] != lo


def test_blocked_resampling_large_n() -> None:
    x = np.random.default_rng(1).random(50_000)
    mean, lo, hi, n = bootstrap_ci(x, n_boot=300)  # 15M indices: more than one block
    assert n == 50_000 and lo < mean < hi and hi - lo < 0.01


def test_validation() -> None:
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inf"):
        bootstrap_ci(torch.tensor([1.0, float("inf")]))
