"""``--folds K``: cross-validated selection, an honest estimate of what picking on validation costs.

The hall of fame's best program is the one with the best mean validation score among the
eligible programs of the pool. That score is optimistic: the program was chosen *because* it
scored well on those images. K-fold cross-validation of the selection step measures by how much.
The validation images are split into K folds (a seeded permutation, fold sizes differing by at
most one); for each fold ``f`` the program with the best mean score on the other ``K − 1`` folds is
picked, and its mean on ``f`` is that fold's held-out score:

    held_out = Σ_f |f| · mean_{i ∈ f} s(pick_f, i) / Σ_f |f|
    optimism = mean_val(best) − held_out

``agreement`` is the fraction of folds whose pick is the program chosen on all of validation: a
low value says the ranking at the top is noise. The selection itself is unchanged (all of
validation picks; the test split reports): the folds say how much of the validation score is
selection. A run searches once, on train; re-running the search per fold would cost K searches.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from sycam.errors import SycamError


def check_folds(folds: int, n_val: int) -> None:
    if folds == 0:
        return
    if folds < 2:
        raise SycamError(f"--folds K needs K >= 2 (or 0: off), got {folds}")
    if folds > n_val:
        raise SycamError(f"--folds {folds} is more than the {n_val} validation images; use at most {n_val}")


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """K disjoint folds covering ``range(n)``: a seeded permutation cut into near-equal parts."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def _mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def cross_validate_selection(per_image: Sequence[np.ndarray], names: Sequence[str], chosen: str, folds: int,
                             sign: int, seed: int) -> dict:
    """Cross-validate picking the best of ``names`` (per-image validation scores ``per_image``, one
    array of the same length per program; NaN where a metric is undefined on an image) by its mean,
    higher better for ``sign`` = 1. ``chosen`` is the program picked on all of validation."""
    if not per_image:
        raise SycamError("cross-validated selection needs at least one program")
    scores = np.stack([np.asarray(v, dtype=np.float64) for v in per_image])  # (programs, images)
    n = scores.shape[1]
    check_folds(folds, n)
    full = {name: _mean(scores[j]) for j, name in enumerate(names)}
    per_fold, held, weights = [], [], []
    for f, test_idx in enumerate(fold_indices(n, folds, seed)):
        train_mask = np.ones(n, dtype=bool)
        train_mask[test_idx] = False
        inner = np.array([_mean(row[train_mask]) for row in scores])
        ranked = np.where(np.isnan(inner), -math.inf, sign * inner)
        j = int(np.argmax(ranked))  # ties: the first, as the hall lists them
        out = _mean(scores[j][test_idx])
        per_fold.append({"fold": f, "images": int(test_idx.size), "pick": names[j], "inner": float(inner[j]),
                         "held_out": out})
        if not math.isnan(out):
            held.append(out)
            weights.append(test_idx.size)
    held_out = float(np.average(held, weights=weights)) if held else math.nan
    return {"folds": folds, "images": n, "chosen": chosen, "validation": full[chosen], "held_out": held_out,
            "optimism": full[chosen] - held_out if not math.isnan(held_out) else math.nan,
            "agreement": sum(p["pick"] == chosen for p in per_fold) / folds, "per_fold": per_fold}


def format_cross_validation(cv: Mapping | None, metric: str) -> list[str]:
    if not cv:
        return []
    return [f"cross-validated selection ({cv['folds']} folds of {cv['images']} validation images): the fold's pick "
            f"scores {cv['held_out']:.3f} {metric} on its held-out fold, against {cv['validation']:.3f} for the chosen "
            f"program on all of validation (selection optimism {cv['optimism']:+.3f}); the chosen program won "
            f"{round(cv['agreement'] * cv['folds'])} of {cv['folds']} folds"]


__all__ = ["check_folds", "cross_validate_selection", "fold_indices", "format_cross_validation"]
