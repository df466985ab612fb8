"""Optuna studies over programs: define-by-run sampling, ?param tuning, shared and resumable.

Every scored candidate is an Optuna trial whose user attributes hold the program text, its size
and canonical hash, so a study in an RDB storage (SQLite by default, PostgreSQL/MySQL URLs for
many machines) is the search's durable record: a killed run resumes from it, and several
workers with the same ``--study`` share it. Enumerated candidates and reference programs are
enqueued as waiting trials (``skip_if_exists``); on SQLite two workers may both take one waiting
trial, which :func:`optimize` tolerates.
"""
from __future__ import annotations

import heapq
import importlib.util
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.exc import ArgumentError
from sqlalchemy.engine import Engine

from sycam.errors import ProgramRuntimeError, SycamError
from sycam.lang import ast as A
from sycam.lang.canon import canonical_hash
from sycam.lang.pretty import pretty
from sycam.search.space import DEFAULT, Derivation, Sampler, Space, score_of, score_params, to_distributions, to_params

optuna.logging.set_verbosity(logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@event.listens_for(Engine, "connect")
def _sqlite_wal(dbapi_connection, _record) -> None:  # noqa: ANN001 - sqlalchemy's protocol
    """SQLite studies: write-ahead logging (readers never block the writer, and commits are ~4x
    cheaper); still durable if a worker is killed, as the log is replayed on the next open."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def open_storage(url: str) -> RDBStorage:
    """An RDB storage with heartbeats: trials of a killed worker are failed after the grace
    period and re-queued (``RetryHeartbeatStaleTrialCallback``), so no candidate is lost.

    A server that refuses the connection for good (wrong password, no such database, user or host,
    nothing listening, a missing driver) is a one-line :class:`SycamError` at once, with the
    password masked; other failures (workers racing to create the schema) are retried."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    shown = mask_password(url)
    url = _with_driver(url)
    last: Exception | None = None
    for attempt in range(6):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=5, grace_period=20,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
        except ImportError as err:  # the URL's driver is not installed
            hint = " (pip install 'sycam[postgres]')" if url.startswith("postgres") else ""
            raise SycamError(f"cannot open the study storage {shown}: its database driver is missing: {err}{hint}") from None
        except Exception as err:  # sqlalchemy errors vary by backend
            last = err
            if _refused(err):
                break
            # workers starting together race to create the schema: the loser retries
            time.sleep(0.5 * (attempt + 1) + random.random())
    raise SycamError(f"cannot open the study storage {shown}: {_one_line(last)}") from None


_REFUSED = ("password authentication failed", "does not exist", "no password supplied", "could not translate host name",
            "connection refused", "could not connect", "name or service not known", "no pg_hba.conf entry",
            "invalid dsn", "access denied", "unknown database", "authentication failed")


def _refused(err: Exception) -> bool:
    text = str(getattr(err, "orig", None) or err).lower()
    return any(s in text for s in _REFUSED) or isinstance(err, (ValueError, ArgumentError))


def _one_line(err: Exception | None) -> str:
    """The database's own message, first line, without SQLAlchemy's wrapping and links."""
    if err is None:
        return "unknown error"
    text = str(getattr(err, "orig", None) or err)
    text = re.sub(r"\(Background on this error at:[^)]*\)", "", text)
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines() if line.strip()]
    # psycopg2: 'connection to server at "h" (ip), port p failed: FATAL:  password authentication failed ...'
    return mask_password("; ".join(lines[:2]))[:300] or type(err).__name__


def _with_driver(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) with the driver that is installed: psycopg2 (the
    ``sycam[postgres]`` extra), else psycopg 3. SQLAlchemy 2.0 means psycopg2 by the bare scheme,
    2.1 psycopg 3; naming it makes either work with either."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for driver in ("psycopg2", "psycopg"):
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    raise SycamError(f"cannot open the study storage {mask_password(url)}: no PostgreSQL driver is installed "
                     "(pip install 'sycam[postgres]')")


def mask_password(url: str) -> str:
    """``scheme://user:***@host/db``: a password never reaches a message, a log or the manifest."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def open_study(storage: RDBStorage, name: str, directions: Sequence[str], seed: int,
               pruner: optuna.pruners.BasePruner | None = None, shared: bool = False,
               in_memory: bool = False) -> optuna.Study:
    """A study for ``directions``: TPE for one metric, NSGA-II for several. Both treat a trial with a
    positive constraint value (``trial.set_constraint``: a failed sanity check) as infeasible.
    ``pruner`` (single objective only): stops trials on their reported intermediate values.

    ``shared``: workers sample the study at once; only then does TPE count the others' running
    trials as liars (``constant_liar``, Optuna 5's default). Why not always: the liar reads every
    trial from the storage at every choice, where TPE otherwise reads them once per trial; with
    SQLite and a study of 1,000 trials that was 0.16 s against 0.10 s per trial of 13 choices
    (measured), and one process has no running trial but its own, which the liar leaves out.

    ``in_memory`` (one process, not ``shared``): the study is sampled from memory and each
    finished trial written to ``storage`` in one transaction (:class:`~sycam.search.mirror.MirroredStorage`)."""
    if shared and in_memory:
        raise ValueError("open_study: workers sampling at once share the storage itself, not a mirror of it")
    if len(directions) == 1:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=20, multivariate=False,
                                                                          constant_liar=shared)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=list(directions), sampler=sampler,
                                    pruner=pruner if len(directions) == 1 else None, load_if_exists=True)
    except ValueError as err:
        raise SycamError(f"study {name!r}: {err}") from None
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise SycamError(f"study {name!r} exists with directions {[d.name.lower() for d in study.directions]}, "
                         f"not {list(directions)}; pick another --study name")
    if in_memory:
        from sycam.search.mirror import MirroredStorage

        study = optuna.Study(study_name=name, storage=MirroredStorage(storage, name), sampler=sampler,
                             pruner=pruner if len(directions) == 1 else None)
    return study


def record(study: optuna.Study, deriv: Derivation, values: Sequence[float], attrs: dict[str, object],
           selections: Sequence[str], constraints: dict[str, float] | None = None, space: Space = DEFAULT,
           score: A.ScoreSpec = A.ScoreSpec()) -> None:
    """Add an already scored program to the study as a completed trial (TPE learns from it, and
    from its ``constraints``: check name -> value, feasible when <= 0). In a space of several
    scores the trial records its ``score`` too (the enumerator's programs: the logit)."""
    extra, extra_dist = score_params(space, score, deriv.build())
    trial = optuna.trial.create_trial(params={**to_params(deriv), **extra},
                                      distributions={**to_distributions(deriv, selections=selections, space=space),  # type: ignore[arg-type]
                                                     **extra_dist},
                                      values=list(values), user_attrs=attrs, constraints=constraints)
    study.add_trial(trial)


def enqueue(study: optuna.Study, deriv: Derivation, source: str, params: dict[str, float] | None = None,
            space: Space = DEFAULT) -> None:
    """Queue a known program (enumerated or reference) as a waiting trial, once per study; in a
    space of several scores it explains the logit (a reference program as published)."""
    values: dict[str, object] = {**to_params(deriv), **score_params(space, body=deriv.build())[0]}
    for name, value in (params or {}).items():
        values[f"param:{name}"] = value
    study.enqueue_trial(values, user_attrs={"source": source}, skip_if_exists=True)


@dataclass
class Candidate:
    program: A.Program
    text: str
    size: int
    canon: str
    params: dict[str, float]


def sample_candidate(trial: optuna.trial.BaseTrial, max_depth: int, selections: Sequence[str],
                     space: Space = DEFAULT) -> Candidate:
    """Define-by-run: one categorical per grammar node (of ``space``), one for the score where the
    space has several (:meth:`Sampler.sample_score`), one float per ?param."""
    sampler = Sampler(lambda name, options: trial.suggest_categorical(name, list(options)), max_depth=max_depth,
                      selections=selections, space=space)
    deriv = sampler.sample()
    body = deriv.build()
    program = A.Program(body=body, score=score_of(sampler.sample_score(body)))
    params: dict[str, float] = {}
    for name, p in A.params(program.body).items():
        lo, hi = (p.lo, p.hi) if p.lo is not None else (0.0, 100.0)
        params[name] = trial.suggest_float(f"param:{name}", lo, hi)  # type: ignore[arg-type]
    return Candidate(program, pretty(program), A.size(program.body), canonical_hash(program), params)


#: the most trials TPE's good group holds (Optuna's default gamma: min(ceil(0.1·n), 25))
TPE_GOOD_MAX = 25


@dataclass
class Objective:
    """Score sampled programs on the train captures; equal programs are scored once.

    ``evaluate(candidate) -> tuple of metric values`` (raises ProgramRuntimeError when invalid);
    with ``pass_trial``, ``evaluate(candidate, trial)``, which may report intermediate values and
    raise ``optuna.TrialPruned`` (racing: :mod:`sycam.search.loop`).
    """

    evaluate: Callable[[Candidate], tuple[float, ...]]
    max_depth: int = 6
    selections: Sequence[str] = ("convs", "stages")
    memo: dict[str, tuple[float, ...]] = field(default_factory=dict)
    on_scored: Callable[[optuna.trial.Trial, Candidate, tuple[float, ...]], None] | None = None
    #: sanity constraints of a scored candidate (check -> value, <= 0 feasible), for the sampler
    constraints: Callable[[Candidate], dict[str, float]] | None = None
    pass_trial: bool = False
    space: Space = DEFAULT
    #: check only the trials whose (first) value would rank among the best ``constrain_top``
    #: *feasible* trials so far, in the direction ``sign``; the others get 0 (not known to fail)
    #: and the user attribute ``sanity: unchecked``. Why that is enough: constrained TPE sorts the
    #: feasible trials by value and takes at most 25 as its good group, and ``constrain_top``
    #: checked feasible trials are better than any unchecked one, so the good group holds checked
    #: trials only; the hall of fame checks every program it considers on validation. (Ranking
    #: among all trials instead let unchecked ones fill the good group wherever the best trials
    #: failed: a 600 s MobileNetV2 run drifted to programs of which 46 of its best 47 failed.)
    #: Checks were 17% of an Optuna trial's time (py-spy, MobileNetV2, 640 trials).
    constrain_top: int | None = None
    sign: int = 1
    checked: int = 0
    _best: list[float] = field(default_factory=list)  # min-heap of the best sign·value
    _limits: dict[str, dict[str, float]] = field(default_factory=dict)  # memo key -> its checks

    def prime(self, study: optuna.Study) -> None:
        """Remember the scores already in the study (resume without re-scoring)."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = t.user_attrs.get("memo_key")
            if key and t.values:
                self.memo[key] = tuple(t.values)
                if t.user_attrs.get("sanity") != "unchecked" and (not t.constraints or max(t.constraints.values()) <= 0):
                    self._feasible(t.values[0])

    def _would_rank(self, value: float) -> bool:
        """Would ``value`` be among the best ``constrain_top`` feasible values so far?"""
        return (self.constrain_top is None or len(self._best) < self.constrain_top
                or self.sign * value > self._best[0])

    def _feasible(self, value: float) -> None:
        if self.constrain_top is None:
            return
        if len(self._best) < self.constrain_top:
            heapq.heappush(self._best, self.sign * value)
        elif self.sign * value > self._best[0]:
            heapq.heapreplace(self._best, self.sign * value)

    def _constraints(self, key: str, cand: Candidate, values: tuple[float, ...],
                     trial: optuna.trial.Trial) -> dict[str, float]:
        assert self.constraints is not None
        if key in self._limits:
            return self._limits[key]
        if not self._would_rank(values[0]):
            trial.set_user_attr("sanity", "unchecked")
            return {check: 0.0 for check in next(iter(self._limits.values()), {})}  # the checks' names
        self.checked += 1
        limits = self._limits[key] = self.constraints(cand)
        if max(limits.values(), default=0.0) <= 0:
            self._feasible(values[0])
        return limits

    def __call__(self, trial: optuna.trial.Trial) -> float | tuple[float, ...]:
        cand = sample_candidate(trial, self.max_depth, self.selections, self.space)
        key = cand.canon + "|" + ",".join(f"{k}={v:.6g}" for k, v in sorted(cand.params.items()))
        trial.set_user_attr("program", cand.text)
        trial.set_user_attr("size", cand.size)
        trial.set_user_attr("canon", cand.canon)
        trial.set_user_attr("memo_key", key)
        if key in self.memo:
            trial.set_user_attr("duplicate", True)
            values = self.memo[key]
        else:
            try:
                values = self.evaluate(cand, trial) if self.pass_trial else self.evaluate(cand)
            except ProgramRuntimeError as err:
                trial.set_user_attr("invalid", str(err)[:200])
                raise optuna.TrialPruned(f"invalid program: {err}") from None
            if any(math.isnan(v) for v in values):
                trial.set_user_attr("invalid", "metric undefined on every image")
                raise optuna.TrialPruned("metric undefined")
            self.memo[key] = values
        if self.constraints is not None:
            for check, value in self._constraints(key, cand, values, trial).items():
                trial.set_constraint(check, value)
        if self.on_scored is not None:
            self.on_scored(trial, cand, values)
        return values[0] if len(values) == 1 else values


def optimize(study: optuna.Study, objective: Callable[[optuna.trial.Trial], float | tuple[float, ...]],
             n_trials: int | None = None, timeout: float | None = None,
             callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = ()) -> int:
    """``study.optimize`` for workers that share a study; returns the trials this process ran.

    SQLite ignores ``SELECT ... FOR UPDATE``, so two workers that ask at the same moment can both
    take the same waiting (enqueued) trial: the first to finish stores it, and Optuna refuses the
    second's ``tell`` ("Cannot tell a PRUNED trial") after the objective has run. The study then
    holds the first worker's result, which is as good as ours: the run goes on with what is left
    of ``n_trials`` or ``timeout`` instead of ending the worker."""
    ran = [0]

    def counted(trial: optuna.trial.Trial):
        ran[0] += 1
        return objective(trial)

    start = time.monotonic()
    while True:
        left_trials = None if n_trials is None else n_trials - ran[0]
        left_time = None if timeout is None else timeout - (time.monotonic() - start)
        if (left_trials is not None and left_trials <= 0) or (left_time is not None and left_time <= 0):
            return ran[0]
        try:
            study.optimize(counted, n_trials=left_trials, timeout=left_time, catch=(SycamError,), gc_after_trial=False,
                           callbacks=list(callbacks))
            return ran[0]
        except ValueError as err:
            if not str(err).startswith("Cannot tell a "):
                raise
            logging.getLogger(__name__).info("a trial taken by two workers: kept the other's result (%s)", err)


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "program" in t.user_attrs]


def unique_best(study: optuna.Study, k: int, higher_is_better: bool) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best distinct programs (by canonical form and params) of a single-objective study."""
    seen: set[str] = set()
    out = []
    for t in sorted(completed(study), key=lambda t: (-t.values[0] if higher_is_better else t.values[0], t.user_attrs["size"], t.number)):
        key = t.user_attrs.get("memo_key", t.user_attrs["program"])
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
        if len(out) == k:
            break
    return out
