"""Racing (sycam.search.racing, sycam.search.loop): the halving schedule, the race's promotions,
rung scores against exact scores, and racing against exhaustive scoring on a fixed candidate list."""
from __future__ import annotations

import math
import time

import optuna
import pytest
import torch

from sycam.capture import CaptureRequest
from sycam.data import open_dataset
from sycam.errors import ProgramRuntimeError
from sycam.lang import ast as A
from sycam.lang.pretty import pretty
from sycam.metrics import get_metric
from sycam.search.enumerate import Enumerator
from sycam.search.loop import Journal, Racer, pruner
from sycam.search.racing import Race, Rung, RungBench, _cells, _head, reduced_side, schedule
from sycam.search.study import Objective, open_study
from sycam.search.synthesize import _search_request, search_selections
from sycam.workbench import Workbench, mean_score

IOU = get_metric("iou")


# ---------------------------------------------------------------------------- the schedule

def test_schedule_grows_by_eta_up_to_half_the_split_then_scores_exactly():
    assert schedule(256, (64, 64), [IOU]) == [Rung(16, 32), Rung(48, 32), Rung(256, None, exact=True)]
    # MobileNetV2 on the ImageNet dev set: 190 train images at 224², partial rungs at 56²
    assert schedule(190, (224, 224), [IOU]) == [Rung(16, 56), Rung(48, 56), Rung(190, None, exact=True)]
    assert schedule(1000, (224, 224), [IOU], eta=4) == [Rung(16, 56), Rung(64, 56), Rung(256, 56),
                                                       Rung(1000, None, exact=True)]
    assert schedule(32, (64, 64), [IOU]) == [Rung(16, 32), Rung(32, None, exact=True)]
    assert schedule(31, (64, 64), [IOU]) == [Rung(31, None, exact=True)]  # 16 > 31/2: no saving worth a rung
    with pytest.raises(ValueError):
        schedule(0, (64, 64), [IOU])
    with pytest.raises(ValueError):
        schedule(100, (64, 64), [IOU], eta=1)


def test_reduced_resolution_only_for_resolution_free_metrics():
    assert reduced_side((224, 224), [IOU, get_metric("energy_pg"), get_metric("iou@0.5")]) == 56
    assert reduced_side((64, 64), [IOU]) == 32  # never below 32 pixels
    assert reduced_side((32, 32), [IOU]) is None  # nothing to save
    # the pointing game's tolerance is in pixels; deletion runs the model on the images
    assert reduced_side((224, 224), [get_metric("pointing_game")]) is None
    assert reduced_side((224, 224), [IOU, get_metric("deletion")]) is None
    assert schedule(256, (224, 224), [get_metric("deletion")]) == [Rung(16, None), Rung(48, None),
                                                                   Rung(256, None, exact=True)]


def test_masks_are_downsampled_by_majority_of_each_cell():
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 0, 0] = m[0, 0, 1] = True  # top-left cell: 2 of 4 pixels -> inside (>= 1/2)
    m[0, 3, 3] = True  # bottom-right cell: 1 of 4 -> outside
    m[0, 2:, :2] = True  # bottom-left cell: 4 of 4
    assert _cells(m, 2).tolist() == [[[True, False], [True, False]]]


# ---------------------------------------------------------------------------- the race

def _drive(race: Race, values: list[tuple[float, ...]], sizes=None) -> list[tuple[int, int]]:
    """Run the race's promotion rule over candidates whose rung values are ``values[c]`` at every
    rung; returns the jobs in the order they were done."""
    jobs = []
    nxt = 0
    while True:
        job = race.next_promotion()
        if job is None:
            if nxt == len(values):
                return jobs
            job = (nxt, 0)
            nxt += 1
        jobs.append(job)
        race.tell(job[0], job[1], values[job[0]], group=None if sizes is None else sizes[job[0]])


def test_race_promotes_the_top_third_of_what_it_has_seen_as_soon_as_it_qualifies():
    race = Race(n_rungs=2, signs=(1,), eta=3)
    vals = [(v,) for v in (0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.8, 0.0, 0.6)]
    jobs = _drive(race, vals)
    # 3 seen: the best (1: 0.5) goes on; 4 seen: 3 (0.9) is the top ⌊4/3⌋ = 1; 7 seen: the top 2
    # are 3 and 6 (0.8); 9 seen: the top 3 are 3, 6 and 8 (0.6). Candidate 1 went on early, when
    # it was the best of three (asynchronous halving promotes a little more than the batch form)
    assert jobs == [(0, 0), (1, 0), (2, 0), (1, 1), (3, 0), (3, 1), (4, 0), (5, 0), (6, 0), (6, 1), (7, 0), (8, 0),
                    (8, 1)]
    assert sorted(race.at(1)) == [1, 3, 6, 8]


def test_race_lower_is_better_nan_never_promoted_ties_to_the_earlier():
    race = Race(n_rungs=2, signs=(-1,), eta=3)
    vals = [(0.5,), (math.nan,), (0.5,), (0.2,), (math.nan,), (0.7,)]
    _drive(race, vals)
    assert sorted(race.at(1)) == [0, 3]  # top 2 of 6 lower-is-better: 3 (0.2), then 0 before 2 (tie)
    assert race.dropped == {1, 4}


def test_race_promotes_the_best_of_every_group():
    race = Race(n_rungs=3, signs=(1,), eta=3)
    vals = [(0.9,), (0.8,), (0.7,), (0.1,), (0.6,), (0.5,)]
    sizes = [5, 5, 5, 2, 5, 5]
    _drive(race, vals, sizes)
    assert 3 in race.at(2)  # the only size-2 program reaches the last rung though it ranks last
    assert 0 in race.at(2)


def test_race_refuses_inconsistent_reports():
    race = Race(n_rungs=2, signs=(1,))
    race.tell(0, 0, (1.0,))
    with pytest.raises(ValueError):
        race.tell(0, 0, (1.0,))
    with pytest.raises(ValueError):
        race.tell(0, 1, (1.0,))  # never promoted


def test_race_multi_metric_promotes_the_top_of_each_metric():
    race = Race(n_rungs=2, signs=(1, -1), eta=3)
    vals = [(0.9, 0.9), (0.1, 0.1), (0.5, 0.5)]
    _drive(race, vals)
    assert sorted(race.at(1)) == [0, 1]  # best on the first metric, and best (lowest) on the second


# ---------------------------------------------------------------------------- on real captures

@pytest.fixture(scope="module")
def builtin_train():
    from sycam.models import load_model

    bundle = load_model("builtin", device="cpu")
    ds = open_dataset("builtin", split="train", limit=256)
    resolver = Workbench(bundle, ds, CaptureRequest(layers=())).resolver
    selections = search_selections(resolver)
    train = Workbench(bundle, ds, _search_request(resolver, A.ScoreSpec(), selections), batch_size=64,
                      progress=False).load()
    derivs = Enumerator(_head(train.batches[0].caps, 16), train.resolver, max_size=8, selections=selections).run(limit=300)
    return train, derivs


def _exhaustive(train: Workbench, derivs) -> list[float]:
    out = []
    for d in derivs:
        try:
            out.append(mean_score(train.score(train.compile(d.program()), [IOU])["iou"]))
        except ProgramRuntimeError:
            out.append(math.nan)
    return out


def _programs(derivs):
    return ((d.program(), pretty(d.program()), i) for i, d in enumerate(derivs))


def test_rung_scores_equal_exact_scores_at_the_exact_rung_and_on_every_image(builtin_train):
    train, derivs = builtin_train
    n = 256
    # a partial rung holding every image at full size differs from the exact score only by the
    # order of the images (float summation order)
    bench = RungBench(train, [Rung(n, None), Rung(n, None, exact=True)], [IOU], seed=3)
    for d in derivs[:5] + derivs[-5:]:
        c = train.compile(d.program())
        exact = mean_score(train.score(c, [IOU])["iou"])
        assert bench.score(c, 1) == (exact,)  # bit for bit: the same call
        assert bench.score(c, 0)[0] == pytest.approx(exact, abs=1e-6)


def test_racing_keeps_the_exhaustive_best_on_a_fixed_list(builtin_train, tmp_path):
    train, derivs = builtin_train
    assert len(derivs) == 300
    t0 = time.perf_counter()
    exhaustive = _exhaustive(train, derivs)
    t_exhaustive = time.perf_counter() - t0
    rungs = schedule(256, (64, 64), [IOU])
    racer = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    t0 = time.perf_counter()
    out = racer.race_list(_programs(derivs), Journal(tmp_path / "j.jsonl", [IOU]), stop=lambda: False)
    t_race = time.perf_counter() - t0
    print(f"\n300 candidates: exhaustive {300 / t_exhaustive:.1f}/s, racing {300 / t_race:.1f}/s; "
          f"scores by rung {racer.stats.per_rung}")
    ranked = sorted((i for i, v in enumerate(exhaustive) if not math.isnan(v)), key=lambda i: (-exhaustive[i], i))
    kept = {i for _, i, _ in out}
    assert ranked[0] in kept
    assert len(kept & set(ranked[:10])) >= 9
    # what reaches the exact rung carries the exhaustive value, bit for bit
    for values, i, _ in out:
        assert values[0] == exhaustive[i] or (math.isnan(values[0]) and math.isnan(exhaustive[i]))
    # and the race paid full price for a small share of the candidates
    assert racer.stats.per_rung[0] == 300 and racer.stats.scored < 300 / 3


def test_a_rerun_with_the_journal_scores_nothing_and_decides_the_same(builtin_train, tmp_path):
    train, derivs = builtin_train
    derivs = derivs[:60]
    rungs = schedule(256, (64, 64), [IOU])
    journal = tmp_path / "j.jsonl"
    first = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    out1 = first.race_list(_programs(derivs), Journal(journal, [IOU]), stop=lambda: False)
    lines = journal.read_text().splitlines()
    again = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    out2 = again.race_list(_programs(derivs), Journal(journal, [IOU]), stop=lambda: False)
    assert out1 == out2
    assert again.stats.per_rung == [0, 0, 0] and again.stats.from_journal == len(lines)
    assert journal.read_text().splitlines() == lines  # nothing appended
    # a race stopped half-way resumes where it stopped
    journal2 = tmp_path / "j2.jsonl"
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] > 40

    Racer(RungBench(train, rungs, [IOU], seed=0), [IOU]).race_list(_programs(derivs), Journal(journal2, [IOU]), stop)
    resumed = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    out3 = resumed.race_list(_programs(derivs), Journal(journal2, [IOU]), stop=lambda: False)
    assert out3 == out1 and resumed.stats.from_journal == 40
    assert sum(resumed.stats.per_rung) == len(lines) - 40


def test_optuna_trials_race_with_the_successive_halving_pruner(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    import tiny_models

    bundle = tiny_models.bundle()
    ds = open_dataset("builtin", split="train", limit=96)
    resolver = Workbench(bundle, ds, CaptureRequest(layers=())).resolver
    train = Workbench(bundle, ds, _search_request(resolver, A.ScoreSpec(), ("convs", "stages")), batch_size=32,
                      progress=False).load()
    rungs = schedule(96, (64, 64), [IOU])
    assert rungs == [Rung(16, 32), Rung(48, 32), Rung(96, None, exact=True)]
    racer = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    study = open_study(optuna.storages.InMemoryStorage(), "race", ["maximize"], seed=0, pruner=pruner())
    objective = Objective(racer.evaluate_trial, max_depth=5, selections=("convs", "stages"), pass_trial=True)
    study.optimize(objective, n_trials=60)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and "invalid" not in t.user_attrs]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and done
    # intermediate values sit at steps 1 and 3 (rung k at eta**k); a completed trial's value is exact
    assert all(set(t.intermediate_values) <= {1, 3} for t in study.trials)
    for t in done[:8]:
        from sycam.lang.parse import parse

        exact = mean_score(train.score(train.compile(parse(t.user_attrs["program"])), [IOU],
                                       {k[6:]: v for k, v in t.params.items() if k.startswith("param:")})["iou"])
        assert t.values[0] == exact
    assert racer.stats.pruned >= 1 and racer.stats.scored <= len(done)
