"""The search loop's scoring: every candidate, enumerated or sampled by Optuna, races the rungs
of :mod:`sycam.search.racing`, and each value it gets is computed once.

* Observational duplicates share their values at every rung (CAM metrics cannot tell them
  apart): candidates whose maps on the first chunk of rung 0 agree (rounded to 1/100,
  :func:`sycam.search.enumerate.map_key`), with the same parameters, are compared on the
  full-size probe (the first 16 train images), as the search did before racing.
* The enumerator's programs race rung by rung (:meth:`Racer.race_list`); each value is appended
  to a journal (one JSON line per program and rung), so a killed run resumes without scoring
  anything twice.
* Workers of one study (``--workers``, ``--worker I/N``: :mod:`sycam.search.workers`) each race the
  whole list; every (candidate, rung) value is claimed in the study's database before it is
  computed (:mod:`sycam.search.claims`, keyed by the candidate's maps on the probe and the rung),
  so no worker computes a value another has, and each worker first scores the candidates of its
  own share (place modulo the worker count) at each rung, then takes the others' values (or scores
  them itself when nobody has claimed them yet: a slow or killed worker's share still gets done).
  All workers thus make the same promotions and end with the same exact values as one worker.
* Optuna's trials report their rung values (``trial.report(value, step=η^k)``) and Optuna's
  :class:`~optuna.pruners.SuccessiveHalvingPruner` stops the ones outside the best ``1/η``; a trial
  that completes returns its exact value. Multi-objective studies cannot prune (Optuna reports
  intermediate values for one objective only): their trials are scored exactly.

Why one module of ~440 lines: the racer, its journal and the cost probes share the rung bench
and the claim protocol above; apart, each would re-state it.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import optuna
import torch

from sycam.capture import CaptureRequest
from sycam.compile import CompiledProgram
from sycam.errors import ProgramRuntimeError
from sycam.lang import ast as A
from sycam.search.claims import Claims
from sycam.search.enumerate import map_key
from sycam.search.racing import ETA, RungBench, _view, promote
from sycam.search.study import Candidate
from sycam.workbench import CachedBatch, Workbench, merge_requests

EXACT = "exact"
BATCH = 32  # candidates scored together at a batched rung (RungBench.score_many)
HEAD = 10  # the first candidates of a list go through every rung: always scored exactly, they time the rungs


class Journal:
    """Values of enumerated programs at each rung, one JSON line each, appended as they are
    computed (a killed run loses at most the candidate in flight). A line without a rung is an
    exact value (journals written before racing). Every worker's journal in the folder
    (``enumerated*.jsonl``) is read back; each worker appends to its own."""

    def __init__(self, path: Path, metrics) -> None:
        self.path = path
        self.names = [m.name for m in metrics]
        self.values: dict[tuple[str, str], tuple[float, ...]] = {}
        workers = set(path.parent.glob("enumerated*.jsonl")) if path.name.startswith("enumerated") else set()
        for known in sorted(workers | ({path} if path.exists() else set())):
            for line in known.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: recompute that candidate
                    continue
                if row.get("metrics") == self.names:
                    self.values[(row["program"], row.get("rung", EXACT))] = tuple(float(v) for v in row["values"])
        torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        self._file = open(path, "a", encoding="utf-8")
        if torn:  # a kill cut the last line: the next one starts on a line of its own
            self._file.write("\n")

    def programs(self) -> set[str]:
        """Every program with a value in the journals read."""
        return {program for program, _ in self.values}

    def get(self, program: str, rung: str = EXACT) -> tuple[float, ...] | None:
        return self.values.get((program, rung))

    def add(self, program: str, values: tuple[float, ...], rung: str = EXACT, scored: bool = True) -> None:
        """``scored=False``: the values came from another worker (:mod:`sycam.search.claims`)."""
        self.values[(program, rung)] = values
        row = {"program": program, "rung": rung, "metrics": self.names, "values": list(values)}
        if not scored:
            row["scored"] = False
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class LoopStats:
    scored: int = 0  # candidates scored in this process (at rung 0, the first of their race)
    exact: int = 0  # of them, scored exactly too (every train image at full size)
    per_rung: list[int] = field(default_factory=list)  # scores computed in this process, by rung
    observational_duplicates: int = 0
    invalid: int = 0
    from_journal: int = 0  # (program, rung) values read back from the journal
    pruned: int = 0  # Optuna trials stopped by the pruner
    from_other_workers: int = 0  # values another worker had computed (claims)
    rung_seconds: list[float] = field(default_factory=list)  # time spent scoring, by rung
    exact_images: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class _Cand:
    program: A.Program
    text: str
    params: dict[str, float]
    compiled: CompiledProgram | None = None
    values: dict[int, tuple[float, ...]] | None = None  # the shared entry, once fingerprinted
    first: object = None  # rung 0's first maps, kept until rung 0 is scored
    probe_key: bytes | None = None  # fingerprint of the maps on the full-size probe, when needed


class Racer:
    """Scores candidates at rungs, once per fingerprint, counting what it does."""

    def __init__(self, rungs: RungBench, metrics: Sequence, eta: int = ETA, racing: bool = True,
                 claims: Claims | None = None, share: tuple[int, int] = (0, 1)) -> None:
        self.bench = rungs
        self.claims = claims
        self.share = share
        self.metrics = list(metrics)
        self.eta = eta
        self.n_rungs = len(rungs.rungs)
        self.stats = LoopStats(per_rung=[0] * self.n_rungs, rung_seconds=[0.0] * self.n_rungs)
        self.suspects: dict[bytes, list[_Cand]] = {}  # rung-0 fingerprint -> candidates with it
        self.by_memo: dict[str, dict[int, tuple[float, ...]]] = {}  # Optuna memo key -> entry
        self.signs = tuple(1 if m.higher_is_better else -1 for m in self.metrics)
        self.on_exact: Callable[[tuple[float, ...]], None] | None = None

    @property
    def exact_rung(self) -> int:
        return self.n_rungs - 1

    def exact_seconds_per_image(self) -> float | None:
        s = self.stats
        return s.rung_seconds[-1] / s.exact_images if s.exact_images else None

    def _twin(self, cand: _Cand, low: bytes) -> _Cand | None:
        """An earlier candidate observationally equal to ``cand``, or None (then ``cand`` is
        remembered). Equal rung-0 maps (a few images at low resolution) only make two candidates
        suspects; they are twins when their maps on the probe (the first 16 train images at full
        size, as before racing) agree too, to 1/100."""
        suspects = self.suspects.setdefault(low, [])
        for other in suspects:
            if self._probe_key(other) == self._probe_key(cand):
                return other
        suspects.append(cand)
        return None

    def _probe_key(self, cand: _Cand) -> bytes:
        if cand.probe_key is None:
            maps = self.bench.probe_maps(self._compiled(cand), cand.params)
            cand.probe_key = map_key(maps) + repr(sorted(cand.params.items())).encode()
        return cand.probe_key

    def _compiled(self, cand: _Cand) -> CompiledProgram:
        if cand.compiled is None:
            cand.compiled = self.bench.bench.compile(cand.program)
        return cand.compiled

    def values_at(self, cand: _Cand, k: int) -> tuple[float, ...]:
        """The candidate's values at rung ``k``: from its fingerprint's entry, else computed.
        ProgramRuntimeError propagates (an invalid program)."""
        t0 = time.perf_counter()
        compiled = self._compiled(cand)
        self._fingerprint(cand)
        assert cand.values is not None
        hit = cand.values.get(k)
        if hit is not None:
            return hit
        claim = ""
        if self.claims is not None:
            claim = hashlib.sha256(self._probe_key(cand) + self.bench.rungs[k].label.encode()).hexdigest()
            found = self.claims.take(claim)
            if found is not None:  # another worker computed it
                self.stats.from_other_workers += 1
                cand.values[k] = found  # NaN where the program failed there: the race treats it as here
                return found
        try:
            values = self.bench.score(compiled, k, cand.params, first=cand.first if k == 0 else None)
        except ProgramRuntimeError:
            if self.claims is not None:
                self.claims.done(claim, [math.nan] * len(self.metrics))
            raise
        if self.claims is not None:
            self.claims.done(claim, values)
        if k == 0:
            cand.first = None
        self._record(cand, k, values)
        self.stats.rung_seconds[k] += time.perf_counter() - t0
        return values

    def _record(self, cand: _Cand, k: int, values: tuple[float, ...]) -> None:
        """Keep a value computed at rung ``k`` (in the candidate's entry, shared with its twins)
        and count it."""
        assert cand.values is not None
        cand.values[k] = values
        self.stats.per_rung[k] += 1
        if k == 0:
            self.stats.scored += 1
        if k == self.exact_rung:
            self.stats.exact += 1
            self.stats.exact_images += self.bench.n
            if self.on_exact is not None:
                self.on_exact(values)

    def _fingerprint(self, cand: _Cand, first: torch.Tensor | None = None) -> None:
        """Give ``cand`` its values entry: its twin's, or a new one (its rung-0 first maps kept
        for rung 0; ``first``: those maps, already computed). ProgramRuntimeError propagates (an
        invalid program)."""
        if cand.values is not None:
            return
        cand.first = first if first is not None else self.bench.first_maps(self._compiled(cand), cand.params)
        low = map_key(cand.first) + repr(sorted(cand.params.items())).encode()
        if self.bench.rungs[0].exact:  # the first maps are the probe's
            cand.probe_key = low
        twin = self._twin(cand, low)
        if twin is not None:
            self.stats.observational_duplicates += 1
            cand.first = None
            cand.values = twin.values
        else:
            cand.values = {}

    def batched(self, k: int) -> bool:
        """Does rung ``k`` score candidates many at a time (:meth:`values_many`)? Where the rung
        bench can and no claims are made (workers claim each value on its own)."""
        return self.claims is None and self.bench.batchable(k)

    def values_many(self, cands: Sequence[_Cand], k: int) -> list[tuple[float, ...] | None]:
        """:meth:`values_at` of many candidates at a batched rung (:meth:`batched`), scored
        together (:meth:`RungBench.score_many`); twins within the batch are scored once. None for
        an invalid program."""
        t0 = time.perf_counter()
        results: list[tuple[float, ...] | None] = [None] * len(cands)
        owners: dict[int, int] = {}  # id of a values entry -> the candidate that scores it
        todo, followers = [], []
        new = [c for c in cands if c.values is None]  # their first maps together: shared sub-expressions
        firsts = dict(zip(map(id, new), self.bench.first_maps_many([(self._compiled(c), c.params) for c in new])))
        for j, cand in enumerate(cands):
            first = firsts.get(id(cand))
            if isinstance(first, ProgramRuntimeError):
                continue
            self._fingerprint(cand, first)
            assert cand.values is not None
            hit = cand.values.get(k)
            if hit is not None:
                results[j] = hit
            elif id(cand.values) in owners:
                followers.append(j)
            else:
                owners[id(cand.values)] = j
                todo.append(j)
        scored = self.bench.score_many([(self._compiled(cands[j]), cands[j].params, cands[j].first if k == 0 else None)
                                        for j in todo], k)
        for j, values in zip(todo, scored):
            cand = cands[j]
            if k == 0:
                cand.first = None
            if values is None:
                continue
            self._record(cand, k, values)
            results[j] = values
        for j in followers:
            assert cands[j].values is not None
            results[j] = cands[j].values.get(k)
        self.stats.rung_seconds[k] += time.perf_counter() - t0
        return results

    # ---------------------------------------------------------------- the enumerator's programs
    def race_list(self, programs: Iterable[tuple[A.Program, str, object]], journal: Journal,
                  stop: Callable[[], bool], limit: int | None = None,
                  admit: Callable[[list[float | None], int, int], int] | None = None,
                  on_new: Callable[[], None] | None = None, head: int = HEAD) -> list[tuple[tuple[float, ...], object, str]]:
        """Race ``programs`` ((program, text, payload), the smallest first) rung by rung.

        The first ``head`` go through every rung at once: they are always scored exactly, and they
        measure what each rung costs. ``admit(costs, entered, groups)`` (seconds per candidate at
        each rung, None where unmeasured; candidates entered so far; program sizes seen) then says
        how many candidates may enter in all, asked again every 32 entries; ``limit`` bounds it too.
        Values already in the journal are read back whatever the clock says (they cost nothing).
        They are scored on rung 0 in order, and each rung's :func:`~sycam.search.racing.promote`
        goes on to the next. ``stop()`` is asked before every score: once it says stop, no new
        candidate enters and the best ``η`` of the last complete rung are scored exactly (so a race
        cut short by the clock still ends with its leaders exact). Without ``admit`` and ``stop``
        no clock is involved. Returns (exact values, payload, text) of the candidates scored
        exactly, by candidate number."""
        cands: list[tuple[_Cand, object]] = []
        sizes: dict[int, int] = {}
        vals: list[dict[int, tuple[float, ...]]] = [{} for _ in range(self.n_rungs)]
        labels = [r.label for r in self.bench.rungs]
        source = iter(programs)
        pending: list[tuple[A.Program, str, object]] = []

        def peek() -> tuple[A.Program, str, object] | None:
            if not pending:
                nxt = next(source, None)
                if nxt is None:
                    return None
                pending.append(nxt)
            return pending[0]

        def enter() -> int | None:
            if peek() is None:
                return None
            program, text, payload = pending.pop()
            cands.append((_Cand(program, text, {}), payload))
            sizes[len(cands) - 1] = A.size(program.body)
            if on_new is not None:
                on_new()
            return len(cands) - 1

        def journaled(text: str, k: int) -> bool:  # a value read back costs nothing: no clock decides it
            return journal.get(text, labels[k]) is not None

        def run(i: int, k: int) -> tuple[float, ...]:
            cand = cands[i][0]
            values = journal.get(cand.text, labels[k])
            if values is not None:
                self.stats.from_journal += 1
            else:
                reused = self.stats.from_other_workers
                try:
                    values = self.values_at(cand, k)
                except ProgramRuntimeError:
                    self.stats.invalid += 1
                    values = tuple(math.nan for _ in self.metrics)
                journal.add(cand.text, values, labels[k], scored=self.stats.from_other_workers == reused)
            vals[k][i] = values
            return values

        def run_many(indices: Sequence[int], k: int) -> None:
            """:func:`run` of many candidates at a batched rung, journaled values read back."""
            todo = []
            for i in indices:
                values = journal.get(cands[i][0].text, labels[k])
                if values is not None:
                    self.stats.from_journal += 1
                    vals[k][i] = values
                else:
                    todo.append(i)
            for i, values in zip(todo, self.values_many([cands[i][0] for i in todo], k) if todo else []):
                if values is None:
                    self.stats.invalid += 1
                    values = tuple(math.nan for _ in self.metrics)
                journal.add(cands[i][0].text, values, labels[k])
                vals[k][i] = values

        waiting: list[int] = []  # rung 0 of a batched race: candidates entered, not yet scored

        def flush() -> None:
            run_many(waiting, 0)
            waiting.clear()

        bound = limit if limit is not None else math.inf
        heads = []
        while len(cands) < min(head, bound):  # the head: every rung at once
            i = enter()
            if i is None:
                break
            heads.append(i)
        for i in self._mine_first(heads):
            for k in range(self.n_rungs):
                if any(math.isnan(v) for v in run(i, k)):
                    break
        cap, fresh, others, closed = bound, 0, [], False
        while len(cands) < bound:  # rung 0, in order
            nxt = peek()
            if nxt is None:
                break
            if not journaled(nxt[1], 0):
                if not closed and admit is not None and fresh % 32 == 0:
                    flush()  # the costs admit reads include every candidate entered
                    cap = min(bound, max(len(cands), admit(self.seconds_per_candidate(), len(cands),
                                                           len(set(sizes.values())))))
                closed = closed or stop() or len(cands) >= cap
                if closed:  # no new candidate enters; journaled ones further down still do (free)
                    pending.pop()
                    continue
                fresh += 1
            i = enter()
            assert i is not None
            if self.batched(0):
                waiting.append(i)
                if len(waiting) == BATCH:
                    flush()
            elif self._mine(i):
                run(i, 0)
            else:  # another worker's: its value is taken (or computed) once this worker's own are done
                others.append(i)
        flush()
        for i in others:
            run(i, 0)
        cut = False
        for k in range(self.n_rungs - 1):
            going = [i for i in self._mine_first(promote(vals[k], self.signs, self.eta, sizes)) if i not in vals[k + 1]]
            step = BATCH if self.batched(k + 1) else 1
            for g in range(0, len(going), step):
                group = going[g:g + step]
                if any(not journaled(cands[i][0].text, k + 1) for i in group) and stop():
                    cut = True
                    break
                if step > 1:
                    run_many(group, k + 1)
                else:
                    run(group[0], k + 1)
            if cut:
                # the clock ran out: the leaders of the last complete rung still get their exact score
                for i in promote(vals[k], self.signs, self.eta)[: self.eta]:
                    if i not in vals[-1]:
                        run(i, self.n_rungs - 1)
                break
        for k in range(1, self.n_rungs):  # what a killed run's journal holds beyond this race is free
            for i, (cand, _) in enumerate(cands):
                if i not in vals[k] and journaled(cand.text, k):
                    run(i, k)
        exact = vals[-1]
        return [(exact[i], cands[i][1], cands[i][0].text) for i in sorted(exact)]

    def _mine(self, i: int) -> bool:
        return i % self.share[1] == self.share[0]

    def _mine_first(self, indices: Sequence[int]) -> list[int]:
        """This worker's share of ``indices`` first, in order, then the others' (one worker: as given)."""
        return [i for i in indices if self._mine(i)] + [i for i in indices if not self._mine(i)]

    def seconds_per_candidate(self) -> list[float | None]:
        """Mean seconds one score took at each rung in this process (None: none computed yet)."""
        return [s / n if n else None for s, n in zip(self.stats.rung_seconds, self.stats.per_rung)]

    # ---------------------------------------------------------------- Optuna's trials
    def prime(self, study: optuna.Study) -> None:
        """Remember the rung values of the study's pruned trials (a resumed study re-samples them
        without scoring them again)."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
            key = t.user_attrs.get("memo_key")
            if key and t.intermediate_values and len(self.metrics) == 1:
                self.by_memo[key] = {k: (t.intermediate_values[self.eta ** k],) for k in range(self.n_rungs - 1)
                                     if self.eta ** k in t.intermediate_values}

    def evaluate_trial(self, cand: Candidate, trial: optuna.trial.Trial | None) -> tuple[float, ...]:
        """Race one trial: report each partial rung and let the pruner decide; the exact values
        of a trial that goes the distance (at once without a trial or with several metrics)."""
        c = _Cand(cand.program, cand.text, dict(cand.params))
        memo = cand.canon + "|" + ",".join(f"{k}={v:.6g}" for k, v in sorted(cand.params.items()))
        if memo in self.by_memo:
            c.values = self.by_memo[memo]
        if trial is not None and len(self.metrics) == 1:
            for k in range(self.n_rungs - 1):
                values = self.values_at(c, k)
                self.by_memo[memo] = c.values  # type: ignore[assignment]
                if math.isnan(values[0]):
                    raise optuna.TrialPruned("metric undefined on the rung's images")
                trial.report(values[0], step=self.eta ** k)
                if trial.should_prune():
                    self.stats.pruned += 1
                    raise optuna.TrialPruned(f"pruned at rung {k}")
        values = self.values_at(c, self.exact_rung)
        self.by_memo[memo] = c.values  # type: ignore[assignment]
        return values


def _covers(caps, captured: CaptureRequest, request: CaptureRequest) -> bool:
    """Can ``caps`` (captured for ``captured``) serve a program that needs ``request``? The same
    score (gradients of another score are other values), and every terminal of every layer."""
    return (request.score == captured.score and (caps.rescore is not None or not request.rescore)
            and all(layer in caps.A for layer in request.layers) and all(layer in caps.G for layer in request.grad_layers)
            and all(layer in caps.S for layer in request.score_cam_layers)
            and all(layer in caps.D for layer in request.ablation_layers)
            and all(layer in caps.R for layer in request.reciprocal_layers)
            and all(layer in caps.R1 for layer in request.reciprocal_onehot_layers))


def _seconds_to_score(programs: Sequence[CompiledProgram], bench: Workbench, cb: CachedBatch, metrics) -> float:
    t0 = time.perf_counter()
    for c in programs:
        params = c.param_values()
        try:
            maps = c(cb.caps, params)
        except ProgramRuntimeError:
            continue
        for m in metrics:
            m(bench.metric_inputs(cb, maps, m, c, params))
    return time.perf_counter() - t0


@dataclass(frozen=True)
class CaptureCosts:
    """Seconds per image, measured by :func:`probe_costs` with the capture cache off.

    ``search``: capturing the search's request (the train captures'); ``union``: the union of it
    and every reference's request (what validation and test capture); ``references``: scoring
    every reference; ``uncovered``: how many distinct reference requests the train captures do
    not serve (each is one more sanity bench of the union's cost, at most)."""

    search: float
    union: float
    references: float
    groups_covered: int
    groups_uncovered: int


def probe_costs(train: Workbench, make_bench: Callable[[CaptureRequest, int], Workbench],
                references: Sequence[CompiledProgram], metrics: Sequence, n: int = 8) -> CaptureCosts:
    """For the final phase's plan: what capturing and scoring cost per image. Captures are timed
    on ``n`` train images with a fresh bench from ``make_bench`` (which must not read the capture
    cache: a cached probe would time a disk read, not the capture the other splits will pay; per
    image, a small batch costs more than the run's batches: an overestimate). References the train
    captures serve are scored on the first cached train batch, the others on the probe's."""
    covered = [c for c in references if _covers(train.batches[0].caps, train.request, c.request)]
    others = [c for c in references if c not in covered]
    first = train.batches[0]
    per_image = _seconds_to_score(covered, train, first, metrics) / len(first.targets)
    t0 = time.perf_counter()
    next(iter(make_bench(train.request, n).iter_batches()))
    search = (time.perf_counter() - t0) / n
    union = search
    if others:
        bench = make_bench(merge_requests([train.request] + [c.request for c in others]), n)
        t0 = time.perf_counter()
        cb = CachedBatch(*next(iter(bench.iter_batches())))
        union = max(search, (time.perf_counter() - t0) / len(cb.targets))
        per_image += _seconds_to_score(others, bench, cb, metrics) / len(cb.targets)
    return CaptureCosts(search=search, union=union, references=per_image,
                        groups_covered=len({c.request for c in covered}), groups_uncovered=len({c.request for c in others}))


def probe_metric_seconds(train: Workbench, program: CompiledProgram, metrics: Sequence, n: int = 4) -> float:
    """Seconds per image to score ``program`` with ``metrics`` on the first ``n`` cached train
    images: what the final phase pays per row and image for metrics that re-run the model
    (deletion, insertion: hundreds of forwards per image), which no reference's probe covers."""
    first = train.batches[0]
    n = min(n, len(first.targets))
    return _seconds_to_score([program], train, _view(first, 0, n, None), metrics) / max(1, n)


def pruner(eta: int = ETA) -> optuna.pruners.BasePruner:
    """Optuna's successive halving on the rungs: rung k reports at step η^k, so its promotion
    step is ``min_resource · η^k`` with ``min_resource = 1``."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta, min_early_stopping_rate=0)


__all__ = ["CaptureCosts", "Journal", "LoopStats", "Racer", "probe_costs", "probe_metric_seconds", "pruner"]
