"""A study held in memory and written through to its durable storage, one finished trial at a time.

Why: with the study in SQLite, every choice TPE makes re-reads the trials and every parameter,
attribute and intermediate value is its own transaction; about 25 commits per trial of 13
choices. A profile of a 200 s MobileNetV2 search (py-spy, 640 trials) put 21% of the Optuna
phase in SQLAlchemy. Here the sampler reads an :class:`~optuna.storages.InMemoryStorage`, and the
durable storage gets each trial once, complete, in one transaction when it finishes, so a killed
run loses at most the trials in flight and resumes from the rest, as before.

Others writing to the same durable study (another ``sycam synthesize`` on the same ``--study``)
are read back every :attr:`MirroredStorage.pull_every` seconds. Workers started together
(``--workers``, ``--worker I/N``) share the durable study directly instead: they claim values and
count each other's running trials (:mod:`sycam.search.claims`), which needs the database at once.
"""
from __future__ import annotations

import time
from typing import Any, Container, Sequence

from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class MirroredStorage(BaseStorage):
    """One study of ``durable`` (an RDB storage), mirrored in memory.

    Reads come from memory. A trial reaches ``durable`` when it finishes (or is added finished),
    with its parameters, values, attributes and intermediate values; waiting and running trials
    live in memory only (a resumed run enqueues its known programs again). Study attributes are
    written to both."""

    def __init__(self, durable: BaseStorage, study_name: str, pull_every: float = 10.0) -> None:
        self.durable = durable
        self.pull_every = pull_every
        self._durable_id = durable.get_study_id_from_name(study_name)
        self._mem = InMemoryStorage()
        self._study_id = self._mem.create_new_study(durable.get_study_directions(self._durable_id), study_name)
        for key, value in durable.get_study_user_attrs(self._durable_id).items():
            self._mem.set_study_user_attr(self._study_id, key, value)
        for key, value in durable.get_study_system_attrs(self._durable_id).items():
            self._mem.set_study_system_attr(self._study_id, key, value)
        self._known: set[int] = set()  # durable trial ids in memory: written by us or read back
        self._pulled_at = -float("inf")
        self.pull()

    # ------------------------------------------------------------------ the mirror
    def pull(self) -> int:
        """Read back the durable study's finished trials that memory lacks; how many."""
        self._pulled_at = time.monotonic()
        new = 0
        for t in self.durable.get_all_trials(self._durable_id, deepcopy=False, states=_FINISHED):
            if t._trial_id not in self._known:
                self._known.add(t._trial_id)
                self._mem.create_new_trial(self._study_id, template_trial=t)
                new += 1
        return new

    def _write_through(self, trial_id: int) -> None:
        durable_id = self.durable.create_new_trial(self._durable_id, template_trial=self._mem.get_trial(trial_id))
        self._known.add(durable_id)

    def _check(self, study_id: int) -> None:
        if study_id != self._study_id:
            raise KeyError(f"MirroredStorage holds study {self._study_id}, not {study_id}")

    # ------------------------------------------------------------------ studies
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        raise NotImplementedError("MirroredStorage mirrors one existing study; create studies in its durable storage")

    def delete_study(self, study_id: int) -> None:
        raise NotImplementedError("MirroredStorage does not delete studies; delete it in the durable storage")

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._check(study_id)
        self.durable.set_study_user_attr(self._durable_id, key, value)
        self._mem.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._check(study_id)
        self.durable.set_study_system_attr(self._durable_id, key, value)
        self._mem.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._mem.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._mem.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._mem.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._mem.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._mem.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._mem.get_all_studies()

    # ------------------------------------------------------------------ trials
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._check(study_id)
        if template_trial is None and time.monotonic() - self._pulled_at > self.pull_every:
            self.pull()  # a new trial is about to be sampled: learn from the others first
        trial_id = self._mem.create_new_trial(study_id, template_trial)
        if template_trial is not None and template_trial.state.is_finished():
            self._write_through(trial_id)
        return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self._mem.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._mem.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        changed = self._mem.set_trial_state_values(trial_id, state, values)
        if changed and state.is_finished():
            self._write_through(trial_id)
        return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._mem.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._mem.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._mem.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._mem.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._mem.get_all_trials(study_id, deepcopy=deepcopy, states=states)


__all__ = ["MirroredStorage"]
