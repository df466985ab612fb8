"""Workers sharing one SQLite study: a waiting trial taken by two of them must not end either."""
from __future__ import annotations

import optuna
import pytest

from sycam.search.study import open_storage, optimize


def _study(where):
    path = where if where.suffix == ".db" else where / "shared.db"
    storage = open_storage(f"sqlite:///{path}")
    return optuna.create_study(storage=storage, study_name="shared", direction="maximize")


def _racing_objective(study, state, calls):
    """Scores ``x``; on its first trial, plays the other worker that took and finished it first."""

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        calls.append(trial.number)
        if len(calls) == 1:
            values = [0.25] if state == optuna.trial.TrialState.COMPLETE else None
            study._storage.set_trial_state_values(trial._trial_id, state, values)
        return x

    return objective


@pytest.mark.parametrize("state", [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE])
def test_a_trial_finished_by_another_worker_is_skipped_and_the_count_kept(tmp_path, state):
    plain = _study(tmp_path / "plain.db")
    plain.enqueue_trial({"x": 0.5})
    with pytest.raises(ValueError, match="Cannot tell a"):  # what Optuna alone does: the worker ends
        plain.optimize(_racing_objective(plain, state, []), n_trials=3)

    study = _study(tmp_path)
    study.enqueue_trial({"x": 0.5})
    calls: list[int] = []
    ran = optimize(study, _racing_objective(study, state, calls), n_trials=3)
    assert ran == 3 and calls == [0, 1, 2]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3
    assert trials[0].state == state, "the other worker's result stands"
    if state == optuna.trial.TrialState.COMPLETE:
        assert trials[0].value == 0.25
    assert [t.state for t in trials[1:]] == [optuna.trial.TrialState.COMPLETE] * 2


def test_other_value_errors_still_raise(tmp_path):
    study = _study(tmp_path)

    def objective(trial):
        raise ValueError("a bug in the objective")

    with pytest.raises(ValueError, match="a bug in the objective"):
        optimize(study, objective, n_trials=2)


def test_timeout_bounds_the_retries(tmp_path):
    study = _study(tmp_path)

    def objective(trial):
        return trial.suggest_float("x", 0.0, 1.0)

    ran = optimize(study, objective, timeout=0.5)
    assert ran >= 1 and len(study.trials) == ran
