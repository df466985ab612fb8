"""``sycam synthesize``: find the program that best serves a metric, measured honestly.

Search on the train split (enumerator, then Optuna), select on validation, report on a held-out
test split beside the reference programs. Everything a run needs to be reproduced or resumed
lives in its output folder: the study (SQLite by default), the manifest, the hall of fame.

At ~680 lines this module is over the house's ~400: it holds one run's three phases (search,
selection, outputs) around one shared state (the model, the data, the captures, the clock). The
pieces with a job of their own live beside it: the race and the journal in ``search/loop.py`` and
``racing.py``, the clock in ``budget.py``, workers and claims in ``workers.py`` and ``claims.py``,
the hall of fame in ``hall.py``, ``report.py`` and ``sanity.py``. Selection and outputs are the next
to move out (``search/select.py``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import optuna
import torch
from tqdm.auto import tqdm

from sycam.cache import STATS
from sycam.workbench import Workbench, mean_score, merge_requests, score_streaming
from sycam.capture import CaptureRequest
from sycam.compile import CompiledProgram
from sycam.errors import ProgramRuntimeError, SycamError
from sycam.files import check_writable
from sycam.lang import ast as A
from sycam.lang.canon import canonical_hash
from sycam.lang.parse import grammar_hash, parse
from sycam.lang.pretty import fmt_number, pretty
from sycam.lang.simplify import simplified_text, simplify
from sycam.search.budget import Clock, FinalCost
from sycam.search.claims import Claims
from sycam.search.enumerate import Enumerator
from sycam.search.folds import check_folds, cross_validate_selection
from sycam.search.hall import (MIN_VAL_IMAGES, Row, distinct_structures, fmt, interval, nan_last, paired_difference,
                               pareto_front)
from sycam.search.loop import Journal, Racer, probe_costs, pruner
from sycam.search.racing import Rung, RungBench, admissible, schedule
from sycam.search.report import format_front, format_hall  # noqa: F401  (re-exported)
from sycam.search.sanity import CHECKS, SanityBench, failures, thresholds
from sycam.search.space import DEFAULT, Derivation, Space, derive, selection_node
from sycam.search.study import (Candidate, Objective, completed, enqueue, mask_password, open_storage, open_study,
                                record)

NO_WORSE_SUITE = ("iou", "energy_pg", "pointing_game", "deletion", "insertion")
REFERENCES = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "layeravg", "winsorcam")


@dataclass
class SynthConfig:
    metrics: list[str]
    model: str = "builtin"
    weights: str | None = None
    data: str = "builtin"
    budget: float = 90.0  # wall-time seconds of the whole run (loading, captures, search, final scoring, outputs)
    candidates: int | None = None  # instead of the budget: stop after this many candidates (reproducible)
    seed: int = 0
    out: str | None = None
    storage: str | None = None
    study: str | None = None
    train_limit: int = 256
    val_limit: int = 256
    test_limit: int = 512
    batch_size: int = 64
    max_size: int = 8
    max_depth: int = 6
    top_k: int = 10
    references: Sequence[str] = REFERENCES
    targets: str = "auto"
    device: str | None = None
    progress: bool = True
    enumerate: bool = True
    sanity: str = "require"  # require | flag | off: sanity checks on validation (sycam.search.sanity)
    sanity_images: int = 32  # images of each split the sanity checks run on (a cascade of captures each)
    pool: int = 40  # distinct structures (best on train) that go on to validation
    no_worse_than: str | None = None  # a reference the hall of fame must match on every metric of `suite`
    suite: Sequence[str] = NO_WORSE_SUITE
    split_seed: int | None = None  # re-draw the train/val/test partition of the data
    folds: int = 0  # K >= 2: cross-validate the selection on validation (sycam.search.folds); 0: off
    workers: int = 1  # processes on this machine sharing the study (sycam.search.workers)
    worker: tuple[int, int] | None = None  # (I, N): this process does share I of N (enumerated programs, trials)
    report: bool = True  # False: search only (a worker); the hall of fame is chosen once, after all workers
    racing: bool = True  # candidates race on image subsets at low resolution (sycam.search.racing); off: all exact
    space: Space = DEFAULT  # the grammar subset searched (sycam.search.presets: --space)

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        raw = f"{'+'.join(self.metrics)}-{self.model}-{self.data}-s{self.seed}"
        if self.split_seed is not None:  # another partition: another train split, another search
            raw += f"-split{self.split_seed}"
        if self.space.name != "default":  # another space: other choices for Optuna's parameters
            raw += f"-space{self.space.name}"
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", raw)[:120]

    @property
    def out_dir(self) -> Path:
        return Path(self.out or os.path.join("sycam-out", self.study_name))


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


MAX_CONVS_FOR_ALL = 24  # above this many conv layers, `each(convs, ...)` captures cost too much memory


def search_selections(resolver, space: Space = DEFAULT) -> tuple[str, ...]:
    """Layer selections of ``space`` the search may use: every conv layer (``convs``, or a slice or
    list of more than ``MAX_CONVS_FOR_ALL``) only on small models (caching A and G of all 52
    MobileNetV2 convs for a few hundred 224² images would take tens of GiB); a slice or list the
    model cannot resolve (too few layers) is left out."""
    out = []
    for text in space.selections:
        try:
            n = len(resolver.select(selection_node(text)))
        except SycamError:
            continue
        if text == "stages" or n <= MAX_CONVS_FOR_ALL:
            out.append(text)
    return tuple(out)


def _search_request(bench_resolver, score: A.ScoreSpec, selections: tuple[str, ...],
                    expensive: tuple[str, ...] = ()) -> CaptureRequest:

    convs = bench_resolver.convs if "convs" in selections else []
    others = [layer for text in selections if text not in ("convs", "stages")
              for layer in bench_resolver.select(selection_node(text))]
    layers = list(dict.fromkeys(convs + bench_resolver.stages + others + [bench_resolver.default]))
    default = frozenset([bench_resolver.default])
    return CaptureRequest(layers=tuple(layers), grad_layers=frozenset(layers), score=score,
                          score_cam_layers=default if "S" in expensive else frozenset(),
                          ablation_layers=default if "D" in expensive else frozenset(),
                          reciprocal_layers=default if "R" in expensive else frozenset(),
                          reciprocal_onehot_layers=default if "R1" in expensive else frozenset())




def _simplified(program: str) -> str:
    """What the hall of fame shows beside a program: its simplified form (:mod:`sycam.lang.simplify`),
    written as sympy's canonical form in sycam's syntax where that is shorter, multi-layer programs
    included; "" where the program is already as short as it gets."""
    try:
        given = parse(program)
        simple = simplify(given)
        return simplified_text(simple) or (pretty(simple) if simple != given else "")
    except Exception:  # display only: a form that cannot be rendered is simply not shown
        return ""


class Synthesis:
    """One synthesis run (single or multi-objective)."""

    def __init__(self, cfg: SynthConfig) -> None:
        from sycam.data import open_dataset
        from sycam.metrics import get_metric
        from sycam.models import load_model

        if not cfg.metrics:
            raise SycamError("give at least one metric")
        # the budget is the wall time of the whole run, model loading included
        self.clock = Clock(None if cfg.candidates else cfg.budget)
        self.cfg = cfg
        self.metrics = [get_metric(m) for m in cfg.metrics]
        self.out = cfg.out_dir
        check_writable(self.out)  # before any work
        torch.manual_seed(cfg.seed)
        self.device = _device(cfg.device)
        self.bundle = load_model(cfg.model, cfg.weights, device=self.device)
        size = self.bundle.input_size[0] if cfg.data != "builtin" else None
        self.datasets = {split: open_dataset(cfg.data, split=split, size=size, limit=limit, split_seed=cfg.split_seed)
                         for split, limit in (("train", cfg.train_limit), ("val", cfg.val_limit), ("test", cfg.test_limit))}
        if cfg.folds and len(cfg.metrics) > 1:
            raise SycamError("--folds cross-validates the choice of one best program: give it with one --metric")
        check_folds(cfg.folds, len(self.datasets["val"]))  # before any work
        self.history: list[dict[str, float]] = []
        self.clock.seconds["load"] = self.clock.now()
        self.notes: list[str] = []  # warnings found during the search, shown under the hall of fame
        self.captures_mark = STATS.copy()  # captures of this run: computed or from the cache (sycam.cache)
        self.widen: CaptureRequest | None = None  # what every batch's first capture also caches

    # ------------------------------------------------------------------ benches
    def bench(self, split: str, request: CaptureRequest) -> Workbench:
        return Workbench(self.bundle, self.datasets[split], request, batch_size=self.cfg.batch_size, targets=self.cfg.targets,
                         device=self.device, progress=self.cfg.progress, widen=self.widen)

    def _scores(self, bench: Workbench, program: A.Program, params=None) -> dict[str, float]:
        compiled = bench.compile(program)
        values = bench.score(compiled, self.metrics, params)
        return {m.name: mean_score(values[m.name]) for m in self.metrics}

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        cfg, clock = self.cfg, self.clock
        directions = ["maximize" if m.higher_is_better else "minimize" for m in self.metrics]
        storage_url = cfg.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        with clock.phase("load"):  # with the model and the data: the study and the manifest
            share, shares = cfg.worker or (0, 1)
            storage = open_storage(storage_url)
            study = open_study(storage, cfg.study_name, directions, cfg.seed + share,  # each worker samples its own way
                               pruner=pruner() if cfg.racing else None)
            claims = Claims(storage, cfg.study_name, f"{self.out.resolve()}|{share}/{shares}") if cfg.worker else None
            self._write_manifest(storage_url)

        with clock.phase("capture"):
            resolver = Workbench(self.bundle, self.datasets["train"], CaptureRequest(layers=())).resolver
            self.selections = search_selections(resolver, cfg.space)
            self.widen = _search_request(resolver, A.ScoreSpec(), self.selections,  # a later run's hall may use any of it
                                         cfg.space.expensive)
            t0 = time.perf_counter()
            train = self.bench("train", self.widen).load()
            train_seconds = time.perf_counter() - t0
            if cfg.space.expensive:  # printed: what S and D cost per image (sycam.search.expensive)
                from sycam.search.expensive import expensive_cost

                self.expensive_cost = expensive_cost(train, cfg.space.expensive)
                # validation and test capture S and D only for the programs that use them
                self.widen = _search_request(resolver, A.ScoreSpec(), self.selections)
            probe = train.batches[0].caps.take(slice(0, 16))
            constraints = None
            if cfg.sanity == "require":  # Optuna's sampler learns to avoid programs that fail a sanity check
                sanity = self.sanity_bench("train", train.request)
                limit = thresholds()

                def constraints(cand: Candidate) -> dict[str, float]:  # <= 0 feasible; undefined fails
                    values = sanity.values(train.compile(cand.program), cand.params)
                    return {c: (1.0 if math.isnan(values[c]) else values[c] - limit[c]) for c in CHECKS}
            n_train = len(self.datasets["train"])
            rungs = (schedule(n_train, tuple(self.bundle.input_size), self.metrics) if cfg.racing
                     else [Rung(n_train, None, exact=True)])
            racer = Racer(RungBench(train, rungs, self.metrics, seed=cfg.seed), self.metrics, claims=claims,
                          share=(share, shares))
            final = self._final_cost(train, train_seconds) if clock.budget is not None else None
        search_start = clock.now()
        window = clock.left() - (final.seconds() if final else 0.0)
        if final is not None and window < 0.25 * cfg.budget:  # say so now, and again under the hall of fame
            note = (f"the search gets {max(window, 0.0):.0f} s of the {cfg.budget:g} s budget: loading and the train "
                    f"captures took {search_start:.0f} s and the final scoring is estimated at {final.seconds():.0f} s"
                    + (f" (with --no-worse-than, its suite on validation)" if cfg.no_worse_than else "")
                    + "; raise --budget")
            self.notes.append(note)
            print(f"sycam: {note}", file=sys.stderr, flush=True)
        # the search's window: the enumerator, then its programs' race until 70% of it, then Optuna.
        # Racing scores the enumerator's programs about as fast as it builds them, so it gets more time
        enum_share = 0.3 if cfg.racing else 0.2
        if final is not None:
            clock.plan("final", final.seconds(), "val/test captures and scores")
            clock.plan("enumerate", enum_share * window)
            clock.plan("race", (0.7 - enum_share) * window)
            clock.plan("optuna", 0.3 * window)

        # progress: every candidate that enters the race; the best exact value so far
        bar = tqdm(total=cfg.candidates, desc=f"synthesize {'+'.join(cfg.metrics)}", unit="cand", disable=not cfg.progress,
                   dynamic_ncols=True)
        best: dict[str, float | None] = {"value": None}
        sign = 1 if self.metrics[0].higher_is_better else -1
        n_done = [0]

        def entered() -> None:
            n_done[0] += 1
            bar.update(1)

        def exact(values: tuple[float, ...]) -> None:
            v = values[0]
            if not math.isnan(v) and (best["value"] is None or sign * v > sign * best["value"]):
                best["value"] = v
            if best["value"] is not None:
                bar.set_postfix_str(f"best {self.metrics[0].name}={best['value']:.4f} exact={racer.stats.exact}")
                self.history.append({"n": n_done[0], "seconds": clock.now(), "best": best["value"]})

        racer.on_exact = exact

        # 1. the enumerator's programs race on the cached captures (no per-candidate storage round
        #    trip); each rung value is appended to a journal, so a restart skips it
        enum_stats: dict[str, float] = {}
        if cfg.enumerate:
            with clock.phase("enumerate"):
                enumerator = Enumerator(probe, train.resolver, max_size=cfg.max_size, selections=self.selections,
                                        space=cfg.space)
                # with a candidate count the run is reproducible: no clock decides what is enumerated
                derivs = enumerator.run(time_limit=None if cfg.candidates else max(1.0, enum_share * window))
                enum_stats = enumerator.stats.as_dict()
            with clock.phase("race"):
                journal = Journal(self.out / ("enumerated.jsonl" if not cfg.worker else f"enumerated.{share}of{shares}.jsonl"),
                                  self.metrics)
                race_end = search_start + 0.7 * window
                stop, admit = (lambda: False), None  # with --candidates: no clock
                if not cfg.candidates:  # as many enter as the race's share of the budget allows
                    stop = lambda: clock.now() > race_end  # noqa: E731

                    def admit(costs: list[float | None], entered: int, groups: int) -> int:
                        if any(c is None for c in costs):  # not measured (read from the journal): the clock decides
                            return len(derivs)
                        return admissible(costs, race_end - clock.now(), racer.eta, groups, entered)
                programs = [(d.program(), pretty(d.program()), d) for d in derivs]
                programs += _journaled_beyond(journal, {text for _, text, _ in programs}, self.selections, cfg.space)
                scored_enum = racer.race_list(programs, journal, stop, limit=cfg.candidates, admit=admit, on_new=entered)
                journal.close()
                self._record_enumerated(study, scored_enum, sign, constraints, (share, shares))
        race_scoring = sum(racer.stats.rung_seconds)
        # 2. Optuna: the reference programs of the space are queued first, then TPE over the grammar;
        #    its trials race the same rungs (Optuna's successive-halving pruner)
        with clock.phase("optuna"):
            for name in cfg.references:
                from sycam.programs import load

                deriv = derive(A.inline_lets(load(name)), space=cfg.space)
                if deriv is not None and _selections_of(deriv) <= set(self.selections):
                    enqueue(study, deriv, f"reference:{name}")
            racing_trials = cfg.racing and len(self.metrics) == 1

            def evaluate(cand: Candidate, trial=None) -> tuple[float, ...]:
                try:
                    return racer.evaluate_trial(cand, trial)
                except optuna.TrialPruned:
                    entered()  # a pruned trial is a candidate too (completed ones are counted on return)
                    raise

            objective = Objective(evaluate, max_depth=cfg.max_depth, selections=self.selections,
                                  on_scored=lambda trial, cand, values: entered(), constraints=constraints,
                                  pass_trial=racing_trials, space=cfg.space)
            objective.prime(study)
            racer.prime(study)
            if cfg.candidates:  # what the enumerator left of the count, split between the workers
                left = max(0, cfg.candidates - n_done[0])
                n_trials = left // shares + (share < left % shares)
                if n_trials:
                    study.optimize(objective, n_trials=n_trials, catch=(SycamError,), gc_after_trial=False)
            else:
                if final is not None and racer.exact_seconds_per_image() is not None:  # measured now: re-plan
                    final.row_per_image = max(final.row_per_image, racer.exact_seconds_per_image())
                    clock.plan("final", final.seconds(), "val/test captures and scores")
                remaining = clock.left() - (final.seconds() if final else 0.0)
                clock.plan("optuna", remaining)
                if remaining > 0:
                    study.optimize(objective, timeout=remaining, catch=(SycamError,), gc_after_trial=False)
            bar.close()
        search_seconds = clock.now() - search_start
        if not cfg.report:  # one worker of several: the hall of fame is chosen once, after all of them
            return {"worker": [share, shares], "history": self.history, "started": time.time() - clock.now(),
                    "stats": {"enumeration": enum_stats, **racer.stats.as_dict(), "search_seconds": round(search_seconds, 2),
                              "waited_for_other_workers": round(claims.waited, 2) if claims else 0.0,
                              "peak_rss_mb": peak_rss_mb(), "total_seconds": round(clock.now(), 2),
                              "captures": STATS.since(self.captures_mark), "phases": clock.as_dict()}}

        # 3. honest selection: top-k on train -> pick on validation -> report on test
        with clock.phase("final"):
            result = self._select_and_report(study, train)
            stats = racer.stats.as_dict()
            result["stats"] = {"enumeration": enum_stats, **stats, "trials": len(study.trials),
                               "completed": len(completed(study)), "rungs": [r.label for r in rungs],
                               "candidates": n_done[0], "search_seconds": round(search_seconds, 2),
                               "scoring_seconds": {"race": round(race_scoring, 2),
                                                   "optuna": round(sum(racer.stats.rung_seconds) - race_scoring, 2)},
                               "candidates_per_second": round(n_done[0] / search_seconds, 2) if search_seconds > 0 else None,
                               "captures": STATS.since(self.captures_mark), "peak_rss_mb": peak_rss_mb(),
                               "space": cfg.space.describe(), "max_size": cfg.max_size,
                               "expensive_seconds_per_image": getattr(self, "expensive_cost", {})}
        result["stats"]["phases"] = clock.as_dict()
        if final is not None:
            result["stats"]["phases"]["final_estimate"] = {k: round(v, 4) if isinstance(v, float) else v
                                                           for k, v in asdict(final).items()}
        result["stats"]["total_seconds"] = round(clock.now(), 2)
        (self.out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
        return result

    def _record_enumerated(self, study: optuna.Study, scored_enum: list, sign: int, constraints,
                           share: tuple[int, int] = (0, 1)) -> None:
        """The best exactly scored enumerated programs join the study, so that TPE starts from what
        the enumerator learnt and the hall of fame can choose among them: the best structures and the
        best of every size (with sanity checks required: until that many pass the checks on train,
        if they can). Workers race the same list and rank alike; worker ``I`` of ``N`` records the
        chosen programs whose place in the ranking is ``I`` modulo ``N``."""
        cfg = self.cfg
        in_study = {t.user_attrs.get("program") for t in study.get_trials(deepcopy=False)}
        # ties broken by size and text, as in the final selection: every worker ranks alike
        ranked = sorted((r for r in scored_enum if not any(math.isnan(v) for v in r[0])),
                        key=lambda r: (-sign * r[0][0], A.size(r[1].program().body), r[2]))
        chosen = distinct_structures(ranked, key_of=lambda r: r[2], value_of=lambda r: r[0][0],
                                     size_of=lambda r: A.size(r[1].program().body), sign=sign, top=cfg.pool)
        feasible, rounds, place = 0, 0, -1
        extra = iter(r for r in ranked[cfg.pool:] if r not in chosen)
        while chosen:
            values, deriv, text = chosen.pop(0)
            place += 1
            if place % share[1] != share[0]:  # another worker's to record
                continue
            program = deriv.program()
            attrs = {"program": text, "size": A.size(program.body), "source": "enumerator",
                     "canon": canonical_hash(program), "memo_key": canonical_hash(program) + "|"}
            limits = None if constraints is None else constraints(Candidate(program, text, A.size(program.body),
                                                                            attrs["canon"], {}))
            feasible += limits is None or max(limits.values()) <= 0
            if text not in in_study:
                record(study, deriv, values, attrs, self.selections, limits, space=cfg.space)
            if not chosen and feasible < cfg.pool and constraints is not None and rounds < 2:
                rounds += 1  # at most two more pools: each check and each recorded trial costs time
                chosen = [r for _, r in zip(range(cfg.pool), extra)]  # the next ones down the ranking

    def _final_cost(self, train: Workbench, train_seconds: float) -> FinalCost:
        """What the final phase will cost: capture and score times measured on a few train images
        (see :class:`sycam.search.budget.FinalCost`)."""
        from sycam.programs import load

        cfg = self.cfg
        refs = [CompiledProgram(load(name), train.resolver) for name in cfg.references]
        ratio, refs_per_image = probe_costs(train, lambda request, n: Workbench(
            self.bundle, self.datasets["train"], request, batch_size=n, targets=cfg.targets, device=self.device,
            progress=False), refs, self.metrics)
        n = {split: len(ds) for split, ds in self.datasets.items()}
        extra = n["val"] if cfg.no_worse_than else 0
        if cfg.sanity != "off":  # the sanity captures of the validation images: trained, each step, other class
            extra += min(cfg.sanity_images, n["val"]) * (len(self.bundle.stage_layers or []) + 3)
        rows = cfg.pool + cfg.max_size if len(self.metrics) == 1 else max(cfg.pool, 20)
        return FinalCost(capture_per_image=train_seconds / max(1, n["train"]) * ratio,
                         references_per_image=refs_per_image,
                         row_per_image=refs_per_image / max(1, len(refs)), train=n["train"], val=n["val"],
                         test=n["test"], overlay=min(cfg.batch_size, n["test"]), rows=rows, extra_captures=extra)

    # ------------------------------------------------------------------ selection and outputs
    def _rows_from_trials(self, trials) -> list[Row]:
        """Hall-of-fame rows, each program simplified (no ``x / x`` or ``x + x`` is ever printed or
        written to a ``.cam`` file); trials that simplify to the same program are one row (the first:
        trials come best first)."""
        rows, seen = [], set()
        for t in trials:
            params = {k[len("param:"):]: v for k, v in t.params.items() if k.startswith("param:")}
            source = t.user_attrs.get("source", t.system_attrs.get("fixed_params") and "queued" or "optuna")
            simple = simplify(parse(t.user_attrs["program"]))
            program = pretty(simple)
            if program in seen:
                continue
            seen.add(program)
            if params:  # show (and later write) the tuned values as the parameters' defaults
                program = pretty(_with_defaults(simple, params))
            rows.append(Row(name=f"trial{t.number}", program=program, size=A.size(simple.body),
                            source=str(source), params=params,
                            train={m.name: v for m, v in zip(self.metrics, t.values)},
                            simplified=_simplified(program), structure=str(t.user_attrs.get("canon", ""))))
        return rows

    def _score_split(self, split: str, request: CaptureRequest, rows: Sequence[Row],
                     compiled: dict[int, CompiledProgram], metrics=None) -> list[dict[str, torch.Tensor]]:
        """Per-image values of ``rows`` on ``split`` in one streaming pass; their means go on the rows."""
        metrics = list(metrics or self.metrics)
        if not rows:
            return []
        values = score_streaming(self.bench(split, request), [(compiled[id(r)], r.params) for r in rows], metrics)
        for row, v in zip(rows, values):
            getattr(row, split).update({m.name: mean_score(v[m.name]) for m in metrics})
        return values

    def sanity_bench(self, split: str, request: CaptureRequest) -> SanityBench:
        """Sanity captures of the first ``sanity_images`` images of ``split`` (their own targets)."""
        ds = self.datasets[split]
        n = max(1, min(self.cfg.sanity_images, len(ds)))
        bench = Workbench(self.bundle, ds, CaptureRequest(layers=(), score=request.score), batch_size=n,
                          targets=self.cfg.targets, device=self.device, progress=False)
        batch, targets, _ = next(iter(bench.iter_batches()))
        return SanityBench(self.bundle, batch.images, targets, request, seed=self.cfg.seed)

    def _select_and_report(self, study: optuna.Study, train: Workbench) -> dict:
        from sycam.programs import load

        cfg = self.cfg
        primary = self.metrics[0]
        sign = 1 if primary.higher_is_better else -1
        single = len(self.metrics) == 1
        trials = sorted(completed(study), key=lambda t: t.user_attrs["program"])  # ties: by text, not by who came first
        if cfg.sanity == "require":  # programs that already failed a check on train do not go on
            trials = [t for t in trials if not t.constraints or max(t.constraints.values()) <= 0]
        if single:  # distinct structures, each with its best parameters; the best of every size too
            trials = distinct_structures(trials, key_of=lambda t: t.user_attrs.get("canon") or t.user_attrs["program"],
                                         value_of=lambda t: t.values[0], size_of=lambda t: int(t.user_attrs["size"]),
                                         sign=sign, top=cfg.pool)
        else:
            trials = study.best_trials[: max(cfg.pool, 20)]
        rows = self._rows_from_trials(trials)
        if not rows:
            raise SycamError("the search scored no valid program; raise --budget")
        resolver = train.resolver
        ref_rows = []
        for name in cfg.references:
            program = load(name)
            ref_rows.append(Row(name=name, program=pretty(program), size=A.size(A.inline_lets(program)), source="reference",
                                params=CompiledProgram(program, resolver).param_values()))
        everything = rows + ref_rows
        compiled = {id(r): CompiledProgram(parse(r.program), resolver) for r in everything}
        request = merge_requests([c.request for c in compiled.values()])
        # validation and test scores are streamed, one batch of captures at a time (references may
        # need layers the search did not cache, e.g. every conv). References are not searched, so
        # they get no train score: a pass over the train split for every conv layer cost minutes
        val_values = self._score_split("val", request, everything, compiled)

        warnings: list[str] = list(self.notes)
        n_val = len(self.datasets["val"])
        if n_val < MIN_VAL_IMAGES:
            warnings.append(f"the validation split has {n_val} images (< {MIN_VAL_IMAGES}): selecting among {len(rows)} "
                            "programs on it is noisy; use more data (--val-limit) or --split-seed to see how much it varies")
        if cfg.sanity != "off":
            # one sanity bench per distinct capture request, built and freed in turn: the search's
            # programs share one; a reference over every conv layer (Winsor-CAM) would otherwise
            # hold three captures of every layer for everyone (gigabytes on MobileNetV2)
            groups: dict[CaptureRequest, list[Row]] = {}
            for r in everything:
                groups.setdefault(compiled[id(r)].request, []).append(r)
            for group_request, group in groups.items():
                bench = self.sanity_bench("val", group_request)
                for r in group:
                    r.sanity = bench.values(compiled[id(r)], r.params)
                    r.failed = failures(r.sanity)
                del bench
        if cfg.no_worse_than:
            self._no_worse_than(rows, compiled, request, warnings)
        eligible = [r for r in rows if not r.worse and (cfg.sanity != "require" or r.passes)]
        rejected = [r for r in rows if r not in eligible]
        if not eligible:
            failing = sum(1 for r in rows if cfg.sanity == "require" and not r.passes)
            worse = sum(1 for r in rows if r.worse)
            why = "; ".join(part for part in (
                f"{failing} failed the sanity checks (--sanity flag shows them)" if failing else "",
                f"{worse} were worse than {cfg.no_worse_than} on validation on some metric of --suite" if worse else "") if part)
            raise SycamError(f"none of the {len(rows)} best programs is eligible: {why}; raise --budget")
        if single:  # the Pareto front of size against validation score, best first
            hall = pareto_front(eligible, primary.name, sign)
            hall.sort(key=lambda r: (-sign * nan_last(r.val[primary.name], sign), r.size))
        else:
            hall = eligible
        test_values = self._score_split("test", request, hall + ref_rows, compiled)
        per_image = {id(r): v for r, v in zip(hall + ref_rows, test_values)}
        for r in hall + ref_rows:
            for m in self.metrics:
                _, lo, hi, _ = interval(per_image[id(r)][m.name], seed=cfg.seed)
                r.test_ci[m.name] = [lo, hi]
        for i, row in enumerate(hall):
            row.name = f"best{i + 1}"
        best = hall[0]
        cross_validation = None
        if cfg.folds and single:  # the selection among every eligible program, cross-validated
            per_row = {id(r): v for r, v in zip(everything, val_values)}
            cross_validation = cross_validate_selection(
                [per_row[id(r)][primary.name].numpy() for r in eligible], [r.program for r in eligible], best.program,
                cfg.folds, sign, cfg.seed)
        by_test = lambda r: sign * nan_last(r.test[primary.name], sign)  # noqa: E731
        best_ref = max(ref_rows, key=by_test) if ref_rows else None
        passing_refs = [r for r in ref_rows if r.passes]
        best_passing_ref = max(passing_refs, key=by_test) if passing_refs and cfg.sanity != "off" else None
        comparisons = {}
        for label, ref in (("best_reference", best_ref), ("best_sanity_passing_reference", best_passing_ref)):
            if ref is not None:
                mean, lo, hi, n = paired_difference(per_image[id(best)][primary.name], per_image[id(ref)][primary.name],
                                                    seed=cfg.seed)
                comparisons[label] = {"reference": ref.name, "difference": mean, "ci": [lo, hi], "images": n}
        overlay_rows = hall[:1] + [r for r in ref_rows if r.name in ("gradcam", "gradcampp", "layercam", "winsorcam")]
        overlay_request = merge_requests([compiled[id(r)].request for r in overlay_rows])
        self._write_outputs(hall, ref_rows, Workbench(self.bundle, self.datasets["test"], overlay_request, batch_size=6,
                                                      targets=cfg.targets, device=self.device, progress=False))
        return {"metric": primary.name, "sanity": cfg.sanity, "thresholds": thresholds() if cfg.sanity != "off" else {},
                "best": asdict(best), "best_reference": asdict(best_ref) if best_ref else None,
                "comparisons": comparisons, "cross_validation": cross_validation, "warnings": warnings, "no_worse_than": cfg.no_worse_than,
                "hall_of_fame": [asdict(r) for r in hall], "references": [asdict(r) for r in ref_rows],
                "rejected": [asdict(r) for r in rejected], "failing": [asdict(r) for r in rows if r.failed], "pool": len(rows), "out": str(self.out)}

    def _no_worse_than(self, rows: list[Row], compiled, request: CaptureRequest, warnings: list[str]) -> None:
        """Mark the rows that are worse than the reference ``no_worse_than`` on validation on some
        metric of the suite (metrics the data cannot support, e.g. IoU without masks, are skipped)."""
        from sycam.metrics import get_metric
        from sycam.programs import load

        cfg = self.cfg
        ref = Row(name=cfg.no_worse_than, program=pretty(load(cfg.no_worse_than)), size=0, source="reference")
        compiled[id(ref)] = CompiledProgram(parse(ref.program), self.bench("val", request).resolver)
        ref.params = compiled[id(ref)].param_values()
        request = merge_requests([request, compiled[id(ref)].request])
        suite = [get_metric(m) for m in cfg.suite if m not in {x.name for x in self.metrics}]
        has_masks = self.datasets["val"][0].mask is not None if len(self.datasets["val"]) else False
        usable = [m for m in suite if has_masks or "mask" not in m.needs]
        if len(usable) < len(suite):
            warnings.append(f"--no-worse-than: {', '.join(m.name for m in suite if m not in usable)} need masks the "
                            "validation data lack and were not checked")
        candidates = [r for r in rows if cfg.sanity != "require" or r.passes]
        self._score_split("val", request, candidates + [ref], compiled, usable)
        for r in candidates:
            r.worse = [m.name for m in usable if (1 if m.higher_is_better else -1) * (r.val[m.name] - ref.val[m.name]) < 0]
        self.no_worse_reference = ref

    def _write_outputs(self, rows: list[Row], refs: list[Row], test: Workbench) -> None:
        out = self.out
        names = [m.name for m in self.metrics]
        for old in out.glob("best*.cam"):
            old.unlink()
        for row in rows:
            header = [f"# {row.name}: synthesized by sycam for {', '.join(names)} (source: {row.source})",
                      f"# model {self.cfg.model}, data {self.cfg.data}, seed {self.cfg.seed}, study {self.cfg.study_name}",
                      "# " + "; ".join(f"{split} " + ", ".join(f"{k}={v:.4f}" for k, v in getattr(row, split).items())
                                       for split in ("train", "val", "test"))]
            if row.sanity:
                header.append("# sanity (validation): " + ", ".join(f"{k}={fmt(v, 3)}" for k, v in row.sanity.items())
                              + ("" if row.passes else f"  FAILS {', '.join(row.failed)}"))
            program = parse(row.program)
            if row.params:  # bake tuned parameters in as the defaults
                program = _with_defaults(program, row.params)
            (out / f"{row.name}.cam").write_text("\n".join(header) + "\n" + pretty(program) + "\n")
        all_rows = rows + refs
        with open(out / "hall_of_fame.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "source", "size"] + [f"{s}_{n}" for s in ("train", "val", "test") for n in names]
                       + [f"test_{n}_{b}" for n in names for b in ("lo", "hi")] + [f"sanity_{c}" for c in CHECKS]
                       + ["fails", "params", "program", "simplified"])
            for r in all_rows:
                w.writerow([r.name, r.source, r.size] + [fmt(getattr(r, s).get(n)) for s in ("train", "val", "test") for n in names]
                           + [fmt(v) for n in names for v in r.test_ci.get(n, [math.nan, math.nan])]
                           + [fmt(r.sanity.get(c)) for c in CHECKS] + [" ".join(r.failed + r.worse)]
                           + [json.dumps(r.params), r.program.replace("\n", " "), r.simplified])
        (out / "hall_of_fame.json").write_text(json.dumps({"metrics": names, "rows": [asdict(r) for r in all_rows]}, indent=2))
        try:
            from sycam import viz

            if self.history:
                viz.convergence_plot(self.history, out / "convergence.png")
            if len(names) > 1:  # trade-off: every scored candidate (train) and the front
                self._pareto(names, out / "pareto.png")
            self._overlays(rows[:1] + [r for r in refs if r.name in ("gradcam", "gradcampp", "layercam", "winsorcam")], test)
        except ImportError:  # pragma: no cover - viz is part of the package
            pass

    def _pareto(self, names: list[str], path: Path) -> None:
        from sycam import viz

        storage_url = self.cfg.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        study = optuna.load_study(study_name=self.cfg.study_name, storage=open_storage(storage_url))
        trials = [t for t in completed(study) if t.values and all(math.isfinite(v) for v in t.values)]
        if len(trials) < 2:
            return
        front_numbers = {t.number for t in study.best_trials}
        points = [t.values for t in trials]
        front = [i for i, t in enumerate(trials) if t.number in front_numbers]
        arrows = ["↑" if m.higher_is_better else "↓" for m in self.metrics]
        viz.pareto_plot(points, front, [f"{n} {a} (train)" for n, a in zip(names, arrows)], path,
                        title=f"{len(trials)} programs; Pareto front in red")

    def _overlays(self, rows: list[Row], test: Workbench) -> None:
        from sycam import viz

        batch, targets, caps = next(iter(test.iter_batches()))  # one batch: no need to keep the split
        n = min(6, len(targets))
        maps = {}
        for r in rows:
            program = parse(r.program)
            compiled = test.compile(program)
            try:
                maps[r.name] = compiled(caps, r.params)[:n].cpu()
            except ProgramRuntimeError:
                continue
        masks = batch.masks[:n].cpu() if batch.masks is not None else None
        viz.overlay_grid(batch.images[:n].cpu(), maps, self.out / "overlays.png", masks=masks)

    def _write_manifest(self, storage_url: str) -> None:
        import lark
        import numpy
        import sympy

        from sycam import __version__

        manifest = {
            "command": mask_password(" ".join([Path(sys.argv[0]).name] + sys.argv[1:])),  # never write a password
            "config": {k: (list(v) if isinstance(v, (list, tuple)) else mask_password(v) if k == "storage" and v else v)
                       for k, v in asdict(self.cfg).items()},
            "study": self.cfg.study_name,
            "storage": re.sub(r"//[^@/]*@", "//***@", storage_url),  # never write a password
            "grammar_hash": grammar_hash(),
            "model": {"name": self.bundle.name, "default_layer": self.bundle.default_layer, "stages": self.bundle.stage_layers},
            "data": {split: {"size": len(ds), "name": getattr(ds, "name", "")} for split, ds in self.datasets.items()},
            "versions": {"sycam": __version__, "python": platform.python_version(), "torch": torch.__version__,
                         "optuna": optuna.__version__, "sympy": sympy.__version__, "lark": lark.__version__,
                         "numpy": numpy.__version__},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(self.device)},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _journaled_beyond(journal: Journal, listed: set[str], selections,
                      space: Space = DEFAULT) -> list[tuple[A.Program, str, Derivation]]:
    """Programs a killed run journaled that this run's enumerator did not reach (a resumed run with
    a smaller budget enumerates less): they join the end of the list, smallest first, so their
    values are read back instead of lost."""
    out = []
    for text in sorted(journal.programs() - listed):
        try:
            program = parse(text)
        except SycamError:
            continue
        deriv = derive(A.inline_lets(program), space=space)
        if deriv is not None and _selections_of(deriv) <= set(selections):
            out.append((deriv.program(), text, deriv))
    return sorted(out, key=lambda r: (A.size(r[0].body), r[1]))


def _selections_of(deriv: Derivation) -> set[str]:
    found = {deriv.sel} if deriv.sel else set()
    for kid in deriv.kids:
        found |= _selections_of(kid)
    return found


def _with_defaults(program: A.Program, params: dict[str, float]) -> A.Program:
    text = pretty(program)
    for name, value in params.items():
        text = re.sub(r"\?" + re.escape(name) + r"(:\[[^\]]*\])?(=[-0-9.e+]+)?",
                      lambda m: f"?{name}{m.group(1) or ''}={fmt_number(round(value, 4))}", text)
    return parse(text)


