"""--folds K: cross-validated selection (sycam.search.folds) with exact values on hand-built scores."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sycam.errors import SycamError
from sycam.search.folds import check_folds, cross_validate_selection, fold_indices, format_cross_validation


def test_folds_are_a_seeded_partition_of_near_equal_size() -> None:
    folds = fold_indices(10, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert [f.tolist() for f in fold_indices(10, 3, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in fold_indices(10, 3, seed=1)] != [f.tolist() for f in folds]


def test_selection_optimism_and_agreement_by_hand() -> None:
    """Two folds of four images. Program a is better on images 0 and 1 only, b is steady:
    whichever fold holds both of a's good images picks b on the other, and vice versa."""
    n = 4
    folds = fold_indices(n, 2, seed=0)
    a = np.array([1.0, 1.0, 0.0, 0.0])
    b = np.full(n, 0.4)
    cv = cross_validate_selection([a, b], ["a", "b"], chosen="a", folds=2, sign=1, seed=0)
    expected_held, expected_picks = [], []
    for f in folds:  # the same computation written out
        rest = np.setdiff1d(np.arange(n), f)
        pick = "a" if a[rest].mean() > b[rest].mean() else "b"
        expected_picks.append(pick)
        expected_held.append((a if pick == "a" else b)[f].mean())
    assert [p["pick"] for p in cv["per_fold"]] == expected_picks
    assert cv["held_out"] == pytest.approx(np.mean(expected_held))  # equal fold sizes: the plain mean
    assert cv["validation"] == pytest.approx(0.5)
    assert cv["optimism"] == pytest.approx(0.5 - np.mean(expected_held))
    assert cv["agreement"] == expected_picks.count("a") / 2


def test_a_program_best_everywhere_has_no_optimism_and_full_agreement() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(30)
    cv = cross_validate_selection([base + 0.5, base, base - 0.1], ["x", "y", "z"], chosen="x", folds=5, sign=1, seed=3)
    assert cv["agreement"] == 1.0
    assert cv["held_out"] == pytest.approx(float((base + 0.5).mean()))
    assert cv["optimism"] == pytest.approx(0.0, abs=1e-12)
    # lower is better: the same scores pick z
    low = cross_validate_selection([base + 0.5, base, base - 0.1], ["x", "y", "z"], chosen="z", folds=5, sign=-1, seed=3)
    assert low["agreement"] == 1.0 and low["held_out"] == pytest.approx(float((base - 0.1).mean()))


def test_nan_images_are_left_out_of_means_and_a_program_undefined_on_a_fold_is_not_picked() -> None:
    a = np.array([math.nan, math.nan, 0.9, 0.9])
    b = np.array([0.2, 0.2, 0.2, 0.2])
    cv = cross_validate_selection([a, b], ["a", "b"], chosen="a", folds=4, sign=1, seed=0)
    for p in cv["per_fold"]:
        assert p["pick"] == "a"  # a's mean over the defined images (0.9) beats b's everywhere
    assert cv["validation"] == pytest.approx(0.9)
    # folds holding one of a's NaN images have no held-out value and do not count
    assert cv["held_out"] == pytest.approx(0.9)


def test_bad_fold_counts_are_sycam_errors() -> None:
    check_folds(0, 10)
    for k, message in ((1, "K >= 2"), (11, "more than the 10 validation images")):
        with pytest.raises(SycamError, match=message):
            check_folds(k, 10)


def test_the_printed_line_names_folds_optimism_and_agreement() -> None:
    cv = {"folds": 5, "images": 100, "held_out": 0.3, "validation": 0.35, "optimism": 0.05, "agreement": 0.6}
    (line,) = format_cross_validation(cv, "iou")
    assert "5 folds of 100 validation images" in line and "0.300 iou" in line and "+0.050" in line
    assert "won 3 of 5 folds" in line
    assert format_cross_validation(None, "iou") == []


def test_synthesize_with_folds_reports_the_cross_validation(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sycam.search.synthesize import SynthConfig, Synthesis

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))  # tests/tiny_models.py

    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", candidates=20, out=str(tmp_path / "run"),
                      train_limit=32, val_limit=32, test_limit=32, batch_size=32, max_size=4, references=("gradcam",),
                      progress=False, sanity="off", folds=4)
    result = Synthesis(cfg).run()
    cv = result["cross_validation"]
    assert cv["folds"] == 4 and cv["images"] == 32 and sum(p["images"] for p in cv["per_fold"]) == 32
    assert cv["chosen"] == result["best"]["program"]
    assert cv["validation"] == pytest.approx(result["best"]["val"]["iou"], abs=1e-6)
    assert not math.isnan(cv["held_out"])
    with pytest.raises(SycamError, match="more than the 32 validation images"):
        Synthesis(SynthConfig(metrics=["iou"], model="tiny_models:bundle", candidates=5, out=str(tmp_path / "bad"),
                              train_limit=32, val_limit=32, test_limit=32, folds=40))
