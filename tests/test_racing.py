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
from sycam.search.racing import Rung, RungBench, _cells, _head, admissible, promote, reduced_side, schedule
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

def test_promote_takes_the_top_third_best_first():
    vals = {c: (v,) for c, v in enumerate((0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.8, 0.0, 0.6))}
    assert promote(vals, (1,)) == [3, 6, 8]  # 0.9, 0.8, 0.6
    assert promote(vals, (1,), eta=2) == [3, 6, 8, 1]  # ⌊9/2⌋ = 4
    assert promote({0: (0.5,), 1: (0.7,)}, (1,)) == []  # ⌊2/3⌋ = 0


def test_promote_lower_is_better_nan_never_ties_to_the_earlier():
    vals = {0: (0.5,), 1: (math.nan,), 2: (0.5,), 3: (0.2,), 4: (math.nan,), 5: (0.7,)}
    assert promote(vals, (-1,)) == [3, 0]  # ⌊6/3⌋ = 2 (NaN counts as a candidate that lost); 0 before 2
    assert promote({0: (math.nan,), 1: (math.nan,), 2: (math.nan,)}, (1,)) == []


def test_promote_keeps_the_best_of_every_group_and_the_top_of_every_metric():
    vals = {0: (0.9,), 1: (0.8,), 2: (0.7,), 3: (0.1,), 4: (0.6,), 5: (0.5,)}
    sizes = {0: 5, 1: 5, 2: 5, 3: 2, 4: 5, 5: 5}
    assert promote(vals, (1,), groups=sizes) == [0, 1, 3]  # 3: the only size-2 program
    assert promote({0: (0.9, 0.9), 1: (0.1, 0.1), 2: (0.5, 0.5)}, (1, -1)) == [0, 1]
    with pytest.raises(ValueError):
        promote(vals, (1,), eta=1)


def test_admissible_is_the_largest_count_that_fits():
    # per candidate 1 + 2/3 + 10/9 seconds: 36 fit in 100 s
    assert admissible([1.0, 2.0, 10.0], 100.0) == 36
    # two groups add 2·(2 + 10) s at the upper rungs; ten already on rung 0 cost nothing more
    assert admissible([1.0, 2.0, 10.0], 100.0, groups=2) == 27
    assert admissible([1.0, 2.0, 10.0], 100.0, groups=2, entered=10) == 30
    assert admissible([1.0, 2.0, 10.0], 10.0, groups=2, entered=10) == 10  # never fewer than entered
    with pytest.raises(ValueError):
        admissible([0.0, 0.0], 10.0)


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


def test_batched_rungs_give_each_candidate_exactly_its_own_values(builtin_train):
    train, derivs = builtin_train
    bench = RungBench(train, schedule(256, (64, 64), [IOU, get_metric("energy_pg")]), [IOU, get_metric("energy_pg")])
    assert bench.batchable(0) and bench.batchable(1) and bench.batchable(2) and bench.rungs[2].exact
    compiled = [train.compile(d.program()) for d in derivs[::7][:40]]
    for k in (0, 1, 2):  # two partial rungs (one metric call per chunk), the exact one (shared values only)
        one = []
        for c in compiled:
            try:
                one.append(bench.score(c, k))
            except ProgramRuntimeError:
                one.append(None)
        assert bench.score_many([(c, None, None) for c in compiled], k) == one  # bit for bit
        assert any(v is not None for v in one)
    slow = RungBench(train, schedule(256, (64, 64), [get_metric("deletion")]), [get_metric("deletion")])
    assert not slow.batchable(0)  # the model runs per image: a batch would hide its cost from the clock
    with pytest.raises(ValueError, match="one batch"):
        slow.score_many([(compiled[0], None, None)], 0)


def test_a_batched_race_decides_exactly_as_one_candidate_at_a_time(builtin_train, tmp_path, monkeypatch):
    from sycam.lang.parse import parse

    train, derivs = builtin_train
    programs = list(_programs(derivs[:150]))
    # observational twins (twice a map is the same normalised map), some in the batch of their original
    programs += [(parse(f"2 * ({text})"), f"2 * ({text})", 1000 + i) for program, text, i in programs[::9]]
    programs.sort(key=lambda item: (A.size(item[0].body), item[2]))
    rungs = schedule(256, (64, 64), [IOU])
    batched = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    out = batched.race_list(programs, Journal(tmp_path / "b.jsonl", [IOU]), stop=lambda: False)
    single = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    monkeypatch.setattr(single, "batched", lambda k: False)
    assert single.race_list(programs, Journal(tmp_path / "s.jsonl", [IOU]), stop=lambda: False) == out
    for field_name in ("per_rung", "observational_duplicates", "invalid", "exact", "scored"):
        assert getattr(batched.stats, field_name) == getattr(single.stats, field_name), field_name
    assert batched.stats.observational_duplicates > 0  # twins inside a batch were met and shared
    rows = lambda p: sorted(p.read_text().splitlines())  # noqa: E731
    assert rows(tmp_path / "b.jsonl") == rows(tmp_path / "s.jsonl")


def test_racing_keeps_the_exhaustive_best_on_a_fixed_list(builtin_train, tmp_path):
    train, derivs = builtin_train
    n = len(derivs)
    assert n >= 300  # 300 single-layer programs and their lifts over layer selections
    t0 = time.perf_counter()
    exhaustive = _exhaustive(train, derivs)
    t_exhaustive = time.perf_counter() - t0
    rungs = schedule(256, (64, 64), [IOU])
    racer = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
    t0 = time.perf_counter()
    out = racer.race_list(_programs(derivs), Journal(tmp_path / "j.jsonl", [IOU]), stop=lambda: False)
    t_race = time.perf_counter() - t0
    print(f"\n{n} candidates: exhaustive {n / t_exhaustive:.1f}/s, racing {n / t_race:.1f}/s; "
          f"scores by rung {racer.stats.per_rung}")
    ranked = sorted((i for i, v in enumerate(exhaustive) if not math.isnan(v)), key=lambda i: (-exhaustive[i], i))
    kept = {i for _, i, _ in out}
    assert ranked[0] in kept
    assert len(kept & set(ranked[:10])) >= 9
    # what reaches the exact rung carries the exhaustive value, bit for bit
    for values, i, _ in out:
        assert values[0] == exhaustive[i] or (math.isnan(values[0]) and math.isnan(exhaustive[i]))
    # every candidate entered (scored on rung 0, invalid, or an observational twin taking its
    # twin's values), and the race paid full price for a small share of them
    s = racer.stats
    assert s.per_rung[0] + s.invalid + s.observational_duplicates == n and s.exact < n / 4


def test_a_rerun_with_the_journal_scores_nothing_and_decides_the_same(builtin_train, tmp_path):
    train, derivs = builtin_train
    derivs = derivs[:60]
    rungs = schedule(256, (64, 64), [IOU])

    def race(journal, stop=lambda: False):
        racer = Racer(RungBench(train, rungs, [IOU], seed=0), [IOU])
        return racer, racer.race_list(_programs(derivs), Journal(journal, [IOU]), stop)

    first, out1 = race(tmp_path / "j.jsonl")
    lines = (tmp_path / "j.jsonl").read_text().splitlines()
    assert {i for _, i, _ in out1} >= set(range(10))  # the head: the first ten are always exact
    assert race(tmp_path / "fresh.jsonl")[1] == out1  # deterministic
    again, out2 = race(tmp_path / "j.jsonl")
    assert out2 == out1
    assert again.stats.per_rung == [0, 0, 0] and again.stats.from_journal == len(lines)
    assert (tmp_path / "j.jsonl").read_text().splitlines() == lines  # nothing appended
    # a race cut short by the clock still scores its leaders exactly; rerun, it resumes
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] > 45

    cut, out_cut = race(tmp_path / "cut.jsonl", stop)
    assert len(out_cut) > 10 and sum(cut.stats.per_rung) < len(lines)
    resumed, out3 = race(tmp_path / "cut.jsonl")
    assert out3 == out1
    pairs = [tuple(__import__("json").loads(line)[k] for k in ("program", "rung"))
             for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert len(pairs) == len(set(pairs)), "a value was computed twice"
    assert resumed.stats.from_journal >= 40
    assert resumed.stats.from_journal + sum(resumed.stats.per_rung) + resumed.stats.invalid == len(lines)


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
    assert racer.stats.pruned >= 1 and racer.stats.exact <= len(done)
