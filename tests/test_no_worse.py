"""``--no-worse-than REF``: the lazy Pareto front checks only what it must, and gets the exact front.

The front of the eligible rows is computed without scoring every row under deletion and insertion
(``sycam.search.select.lazy_front``); here against the front of the rows whose eligibility is
known beforehand, on hand-built rows, and end to end on the tiny model with a costly suite metric.
"""
from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from sycam.search.hall import Row, pareto_front
from sycam.search.select import lazy_front


def _rows(spec: list[tuple[int, float, bool]]) -> list[Row]:
    """Rows from (size, validation iou, worse than the reference?)."""
    rows = []
    for i, (size, v, _) in enumerate(spec):
        rows.append(Row(name=f"r{i}", program=f"p{i}", size=size, source="test", val={"iou": v}))
    return rows


def _checker(spec, rows, calls: list):
    bad = {id(r) for r, (_, _, worse) in zip(rows, spec) if worse}

    def check(todo):
        calls.extend(r.name for r in todo)
        for r in todo:
            if id(r) in bad:
                r.worse.append("deletion")
    return check


def test_a_failing_front_row_reveals_the_next_one_and_nothing_else_is_checked() -> None:
    spec = [(2, 0.50, False), (3, 0.60, True), (3, 0.58, False), (4, 0.70, False), (5, 0.65, False), (6, 0.55, False)]
    rows = _rows(spec)
    calls: list[str] = []
    front = lazy_front(rows, "iou", +1, _checker(spec, rows, calls))
    assert [r.name for r in front] == ["r0", "r2", "r3"]  # r1 (size 3) is worse: r2 takes its place
    assert sorted(calls) == ["r0", "r1", "r2", "r3"]  # r4 and r5 are dominated by r3: never checked
    assert len(calls) == len(set(calls))  # no row is checked twice


def test_lower_is_better_metrics_build_the_front_the_other_way() -> None:
    spec = [(2, 0.30, False), (3, 0.20, False), (4, 0.25, False), (5, 0.10, True), (6, 0.15, False)]
    rows = _rows(spec)
    calls: list[str] = []
    front = lazy_front(rows, "iou", -1, _checker(spec, rows, calls))
    assert [r.name for r in front] == ["r0", "r1", "r4"]
    assert "r2" not in calls


@pytest.mark.parametrize("seed", range(30))
def test_the_lazy_front_is_the_front_of_the_eligible_rows(seed: int) -> None:
    rng = random.Random(seed)
    spec = [(rng.randint(1, 6), round(rng.random(), 2), rng.random() < 0.4) for _ in range(rng.randint(1, 25))]
    rows = _rows(spec)
    calls: list[str] = []
    front = lazy_front(rows, "iou", +1, _checker(spec, rows, calls))
    eligible = [r for r, (_, _, worse) in zip(_rows(spec), spec) if not worse]
    assert [r.name for r in front] == [r.name for r in pareto_front(eligible, "iou", +1)]
    assert len(calls) == len(set(calls))
    assert all(not r.worse for r in front)


def test_no_check_at_all_gives_the_plain_front() -> None:
    spec = [(s, v, False) for s, v in itertools.product(range(1, 5), (0.1, 0.4))]
    rows = _rows(spec)
    assert lazy_front(rows, "iou", +1, lambda todo: None) == pareto_front(rows, "iou", +1)


def test_synthesize_no_worse_than_checks_the_suite_and_answers_the_headline(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sycam.search.report import format_hall
    from sycam.search.synthesize import SynthConfig, Synthesis

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))  # tests/tiny_models.py
    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", candidates=30, out=str(tmp_path / "run"),
                      train_limit=16, val_limit=16, test_limit=16, batch_size=16, max_size=4,
                      references=("gradcam",), progress=False, sanity="off", no_worse_than="gradcam",
                      suite=("iou", "energy_pg", "deletion"))
    result = Synthesis(cfg).run()
    nw = result["no_worse"]
    assert nw["reference"] == "gradcam" and nw["checked"] == ["energy_pg", "deletion"] and nw["costly"] == ["deletion"]
    assert 1 <= nw["checked_costly"] <= nw["rows"]
    ref_val = nw["val"]
    for r in result["hall_of_fame"]:  # every row of the hall was checked, and is no worse
        assert r["val"]["energy_pg"] >= ref_val["energy_pg"] and r["val"]["deletion"] <= ref_val["deletion"]
        assert not r["worse"]
    for r in result["rejected"]:
        assert r["worse"]  # sanity is off: only the suite rejects
    table = nw["test"]
    assert set(table) == {"iou", "energy_pg", "deletion"}
    for metric, v in table.items():
        assert v["difference"] == pytest.approx(v["best"] - v["reference"], abs=1e-6)
        assert v["ci"][0] <= v["difference"] <= v["ci"][1]
    assert result["best"]["test"]["iou"] == pytest.approx(table["iou"]["best"], abs=1e-6)
    assert nw["better_on_all"] == all(v["better"] for v in table.values())
    text = format_hall(result)
    assert "vs gradcam on test (paired difference, 95% CI)" in text and "deletion ↓" in text
    assert ("on all 3: better on every one" in text) == nw["better_on_all"]
    assert ("on all 3: not better on every one" in text) == (not nw["better_on_all"])
    assert not any(math.isnan(v["best"]) for v in table.values())
