"""The search's Optuna objective: only trials that reach the best few pay for their sanity checks."""
from __future__ import annotations

import hashlib

import optuna

from sycam.search.study import Objective


def _value(canon: str) -> float:
    return int(hashlib.sha256(canon.encode()).hexdigest()[:8], 16) / 2 ** 32


def _run(sign: int, top: int | None, n: int = 80):
    calls: list[str] = []

    def constraints(cand):
        calls.append(cand.canon)
        return {"randomisation_top": _value("r" + cand.canon) - 0.7, "class_sensitivity": -0.1}

    objective = Objective(lambda cand: (_value(cand.canon),), constraints=constraints, constrain_top=top, sign=sign)
    study = optuna.create_study(direction="maximize" if sign > 0 else "minimize",
                                sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(objective, n_trials=n)
    return study, objective, calls


def test_only_trials_entering_the_best_k_are_checked_in_either_direction():
    for sign in (1, -1):
        study, objective, calls = _run(sign, top=5)
        trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best: list[float] = []  # an independent count: the best 5 feasible values so far, in trial order
        seen: set[str] = set()
        expected = []
        for t in trials:
            v = sign * t.value
            key = t.user_attrs["memo_key"]
            enters = len(best) < 5 or v > min(best)
            if enters and key not in seen:
                expected.append(t.user_attrs["canon"])
                seen.add(key)
                if max(t.constraints.values()) <= 0:
                    best = sorted(best + [v], reverse=True)[:5]
            unchecked = t.user_attrs.get("sanity") == "unchecked"
            assert unchecked == (not enters and key not in seen), t.number
            if unchecked:  # not known to fail: the hall of fame checks it on validation
                assert t.constraints == {"randomisation_top": 0.0, "class_sensitivity": 0.0}
        assert calls == expected and objective.checked == len(expected)
        assert 5 <= len(calls) < len(trials) / 2
        # TPE's good group (the best feasible by value) holds checked trials only
        feasible = sorted((t for t in trials if max(t.constraints.values()) <= 0), key=lambda t: -sign * t.value)
        assert all(t.user_attrs.get("sanity") != "unchecked" for t in feasible[:5])
        assert any(max(t.constraints.values()) > 0 for t in trials if t.user_attrs["canon"] in calls), \
            "some checked trials failed: the best feasible are not simply the best"


def test_without_a_limit_every_distinct_trial_is_checked_once():
    study, objective, calls = _run(1, top=None, n=40)
    keys = {t.user_attrs["memo_key"] for t in study.trials}
    assert len(calls) == len(keys) == objective.checked
    assert all("sanity" not in t.user_attrs for t in study.trials)
    infeasible = [t for t in study.trials if max(t.constraints.values()) > 0]
    assert infeasible and all(t.constraints["randomisation_top"] == _value("r" + t.user_attrs["canon"]) - 0.7 for t in infeasible)
