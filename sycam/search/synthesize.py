"""``sycam synthesize``: find the program that best serves a metric, measured honestly.

Search on the train split (enumerator, then Optuna), select on validation, report on a held-out
test split beside the reference programs. Everything a run needs to be reproduced or resumed
lives in its output folder: the study (SQLite by default), the manifest, the hall of fame.

This module holds the run's state (the model, the data, the captures, the clock) and its search
phase; the pieces with a job of their own live beside it: the race and the journal in
``search/loop.py`` and ``racing.py``, the clock in ``budget.py``, workers and claims in
``workers.py`` and ``claims.py``, selection in ``select.py``, the files written in ``outputs.py``,
the hall of fame's rules in ``hall.py``, its printout in ``report.py``, the checks in ``sanity.py``.
Why ~480 lines, above the house's ~400: ``Synthesis.run`` is the search phase as one sequence
(study, captures, the plan of the budget, enumeration, race, Optuna) over one shared state; cut
into functions it would pass that state around in a dozen arguments.
"""
from __future__ import annotations

import json
import math
import os
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
from sycam.workbench import Workbench, mean_score
from sycam.capture import CaptureRequest
from sycam.compile import CompiledProgram
from sycam.errors import SycamError
from sycam.files import check_writable
from sycam.lang import ast as A
from sycam.lang.canon import canonical_hash
from sycam.lang.parse import parse
from sycam.lang.pretty import pretty
from sycam.search.budget import Clock, FinalCost
from sycam.search.claims import Claims
from sycam.search.enumerate import Enumerator
from sycam.search.folds import check_folds
from sycam.search.hall import distinct_structures
from sycam.search.loop import Journal, Racer, probe_costs, probe_metric_seconds, pruner
from sycam.search.racing import Rung, RungBench, admissible, quarter_side, schedule
from sycam.search.report import format_front, format_hall  # noqa: F401  (re-exported)
from sycam.search.outputs import write_manifest
from sycam.search.sanity import CHECKS, SanityBench, rank_seconds_per_image, thresholds
from sycam.search.scores import ScoreBenches
from sycam.search.select import Selection, simplified_form as _simplified  # noqa: F401  (re-exported)
from sycam.search.space import DEFAULT, Derivation, Space, derive, selection_node
from sycam.search.presets import MAP_EXTRA_SIZE, map_bucket_for
from sycam.search.study import (TPE_GOOD_MAX, Candidate, Objective, completed, enqueue, open_storage, open_study, optimize,
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
                               pruner=pruner() if cfg.racing else None, shared=cfg.worker is not None,
                               in_memory=cfg.worker is None)
            claims = Claims(storage, cfg.study_name, f"{self.out.resolve()}|{share}/{shares}") if cfg.worker else None
            self._write_manifest(storage_url)

        with clock.phase("capture"):
            resolver = Workbench(self.bundle, self.datasets["train"], CaptureRequest(layers=())).resolver
            self.selections = search_selections(resolver, cfg.space)
            self.widen = _search_request(resolver, A.ScoreSpec(), self.selections,  # a later run's hall may use any of it
                                         cfg.space.expensive)
            train = self.bench("train", self.widen).load()
            if cfg.space.expensive:  # printed: what S and D cost per image (sycam.search.expensive)
                from sycam.search.expensive import expensive_cost

                self.expensive_cost = expensive_cost(train, cfg.space.expensive)
                # validation and test capture S and D only for the programs that use them
                self.widen = _search_request(resolver, A.ScoreSpec(), self.selections)
            probe = train.batches[0].caps.take(slice(0, 16))
            constraints, sanity = None, None
            side = quarter_side(tuple(self.bundle.input_size))  # the search's checks rank at racing's side (SanityBench)
            if cfg.sanity == "require":  # Optuna's sampler learns to avoid programs that fail a sanity check
                sanity = self.sanity_bench("train", train.request, side=side)
                limit = thresholds()

                def constraints(cand: Candidate) -> dict[str, float]:  # <= 0 feasible; undefined fails
                    bench = scores.sanity(cand.program.score_spec)  # the checks under the program's own score
                    values = bench.values(train.compile(cand.program), cand.params)
                    return {c: (1.0 if math.isnan(values[c]) else values[c] - limit[c]) for c in CHECKS}
            n_train = len(self.datasets["train"])
            rungs = (schedule(n_train, tuple(self.bundle.input_size), self.metrics) if cfg.racing
                     else [Rung(n_train, None, exact=True)])
            racer = Racer(RungBench(train, rungs, self.metrics, seed=cfg.seed), self.metrics, claims=claims,
                          share=(share, shares))
            # the space's other scores: train captures and a racer each, made when a trial first samples one
            self.scores = scores = ScoreBenches(train, racer, rungs, self.metrics, cfg.seed,
                                                lambda request: self.bench("train", request), claims, (share, shares),
                                                lambda request: self.sanity_bench("train", request, side=side), sanity)
            final = self._final_cost(train, sanity) if clock.budget is not None else None
        search_start = clock.now()
        window = clock.left() - (final.seconds() if final else 0.0)
        if final is not None and window < 0.25 * cfg.budget:  # say so now, and again under the hall of fame
            note = (f"the search gets {max(window, 0.0):.0f} s of the {cfg.budget:g} s budget: loading and the train "
                    f"captures took {search_start:.0f} s and the final scoring is estimated at {final.seconds():.0f} s "
                    f"({final.describe()}" + ("; suite: --no-worse-than's costly metrics on validation" if cfg.no_worse_than
                                              else "") + "); raise --budget")
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
                map_bucket = map_bucket_for(cfg.space, cfg.budget, cfg.candidates)  # None: not with --candidates
                enumerator = Enumerator(probe, train.resolver, max_size=cfg.max_size, selections=self.selections,
                                        space=cfg.space, map_bucket=map_bucket,
                                        map_max_size=cfg.max_size + MAP_EXTRA_SIZE if map_bucket else None)
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
                    enqueue(study, deriv, f"reference:{name}", space=cfg.space)
            racing_trials = cfg.racing and len(self.metrics) == 1
            scores.on_new = lambda new: new.prime(study)  # a resumed study's pruned trials of that score

            def evaluate(cand: Candidate, trial=None) -> tuple[float, ...]:
                try:  # on the train captures of the program's score
                    return scores.racer(cand.program.score_spec).evaluate_trial(cand, trial)
                except optuna.TrialPruned:
                    entered()  # a pruned trial is a candidate too (completed ones are counted on return)
                    raise

            objective = Objective(evaluate, max_depth=cfg.max_depth, selections=self.selections,
                                  on_scored=lambda trial, cand, values: entered(), constraints=constraints,
                                  constrain_top=TPE_GOOD_MAX if len(self.metrics) == 1 else None, sign=sign,
                                  pass_trial=racing_trials, space=cfg.space)
            objective.prime(study)
            racer.prime(study)
            if cfg.candidates:  # what the enumerator left of the count, split between the workers
                left = max(0, cfg.candidates - n_done[0])
                n_trials = left // shares + (share < left % shares)
                if n_trials:
                    optimize(study, objective, n_trials=n_trials)
            else:
                if final is not None and racer.exact_seconds_per_image() is not None:  # measured now: re-plan
                    final.row_per_image = max(final.row_per_image, racer.exact_seconds_per_image())
                    clock.plan("final", final.seconds(), "val/test captures and scores")
                remaining = clock.left() - (final.seconds() if final else 0.0)
                clock.plan("optuna", remaining)
                if remaining > 0:
                    optimize(study, objective, timeout=remaining)
            bar.close()
        search_seconds = clock.now() - search_start
        if not cfg.report:  # one worker of several: the hall of fame is chosen once, after all of them
            return {"worker": [share, shares], "history": self.history, "started": time.time() - clock.now(),
                    "stats": {"enumeration": enum_stats, **scores.totals(racer.stats.as_dict()), "search_seconds": round(search_seconds, 2),
                              "waited_for_other_workers": round(claims.waited, 2) if claims else 0.0,
                              "scores": scores.as_dict(cfg.space.scores),
                              "peak_rss_mb": peak_rss_mb(), "total_seconds": round(clock.now(), 2),
                              "captures": STATS.since(self.captures_mark), "phases": clock.as_dict()}}

        # 3. honest selection: top-k on train -> pick on validation -> report on test
        with clock.phase("final"):
            result = self._select_and_report(study, train)
            stats = scores.totals(racer.stats.as_dict())
            result["stats"] = {"enumeration": enum_stats, **stats, "trials": len(study.trials),
                               "completed": len(completed(study)), "rungs": [r.label for r in rungs],
                               "candidates": n_done[0], "search_seconds": round(search_seconds, 2),
                               "scoring_seconds": {"race": round(race_scoring, 2),
                                                   "optuna": round(sum(stats["rung_seconds"]) - race_scoring, 2)},
                               "candidates_per_second": round(n_done[0] / search_seconds, 2) if search_seconds > 0 else None,
                               "captures": STATS.since(self.captures_mark), "peak_rss_mb": peak_rss_mb(),
                               "space": cfg.space.describe(), "max_size": cfg.max_size,
                               "expensive_seconds_per_image": getattr(self, "expensive_cost", {}),
                               "scores": scores.as_dict(cfg.space.scores)}
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

    def _final_cost(self, train: Workbench, sanity: SanityBench | None = None) -> FinalCost:
        """What the final phase will cost: capture and score times measured on a few train images
        (see :class:`sycam.search.budget.FinalCost`); ``sanity``: the train sanity bench, when built
        (its captures price the validation ones)."""
        from sycam.programs import load

        cfg = self.cfg
        refs = [CompiledProgram(load(name), train.resolver) for name in cfg.references]
        costs = probe_costs(train, lambda request, n: Workbench(
            self.bundle, self.datasets["train"], request, batch_size=n, targets=cfg.targets, device=self.device,
            progress=False, cache=None), refs, self.metrics)
        n = {split: len(ds) for split, ds in self.datasets.items()}
        extra = n["val"] if cfg.no_worse_than else 0
        sanity_seconds, check_per_image = 0.0, 0.0
        if cfg.sanity != "off":  # SanityBench: three captures (trained, head-randomised, other class) per request;
            # the search's rows need about two requests (one layer; the stages), served like the train captures
            # priced by the train sanity bench's own captures where it was built (the search's request)
            images = 3 * min(cfg.sanity_images, n["val"])
            search = sanity.seconds / (3 * sanity.n) if sanity is not None else costs.search
            sanity_seconds = images * search * (costs.groups_covered + 2 + costs.groups_uncovered * costs.union / costs.search)
            check_per_image = 3 * (costs.references / max(1, len(refs)) + rank_seconds_per_image(tuple(self.bundle.input_size), device=self.device))
        if len(cfg.space.scores) > 1:  # rows of another score are captured on val and test again, for that score
            extra += (len(cfg.space.scores) - 1) * (n["val"] + n["test"])  # (at most: only the layers they read)
        single = len(self.metrics) == 1
        rows = cfg.pool + cfg.max_size if single else max(cfg.pool, 20)
        suite_seconds, suite_rows = 0.0, 0
        if cfg.no_worse_than:  # deletion, insertion...: forwards per image and row, measured on a few images
            from sycam.metrics import get_metric
            from sycam.search.select import costly

            dear = [m for m in (get_metric(name) for name in cfg.suite) if costly(m) and m.name not in cfg.metrics]
            if dear:  # any program costs alike under them (the model's forwards dominate): time Grad-CAM's
                suite_seconds = probe_metric_seconds(train, CompiledProgram(load("gradcam"), train.resolver), dear)
                # checked: the rows of the successive Pareto fronts (at most one per size), or every row with
                # --folds or several metrics; then the best and the reference on test
                # (real runs' fronts held 2-3 rows; each row found worse brings the next one forward)
                suite_rows = (min(rows, 3 + cfg.max_size // 4) if single and not cfg.folds else rows)
        return FinalCost(capture_per_image=costs.union, references_per_image=costs.references,
                         row_per_image=costs.references / max(1, len(refs)), sanity_seconds=sanity_seconds, train=n["train"], val=n["val"],
                         test=n["test"], overlay=min(cfg.batch_size, n["test"]), rows=rows, extra_captures=extra,
                         hall=cfg.max_size if single else None, suite_per_image=suite_seconds, suite_rows=suite_rows,
                         check_per_image=check_per_image,
                         sanity_images=min(cfg.sanity_images, n["val"]) if cfg.sanity != "off" else 0)

    # ------------------------------------------------------------------ selection and outputs
    def sanity_bench(self, split: str, request: CaptureRequest, side: int | None = None) -> SanityBench:
        """Sanity captures of the first ``sanity_images`` images of ``split`` (their own targets)."""
        ds = self.datasets[split]
        n = max(1, min(self.cfg.sanity_images, len(ds)))
        bench = Workbench(self.bundle, ds, CaptureRequest(layers=(), score=request.score), batch_size=n,
                          targets=self.cfg.targets, device=self.device, progress=False)
        batch, targets, _ = next(iter(bench.iter_batches()))
        return SanityBench(self.bundle, batch.images, targets, request, seed=self.cfg.seed, side=side)

    def _select_and_report(self, study: optuna.Study, train: Workbench) -> dict:
        """The final phase (:class:`sycam.search.select.Selection`): validation, sanity, test, outputs."""
        return Selection(self).select_and_report(study, train)

    def _write_manifest(self, storage_url: str) -> None:
        write_manifest(self, storage_url)

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
