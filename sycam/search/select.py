"""Honest selection: from the study's best programs on train to the hall of fame.

The study's best distinct structures on train (and the best of every size) go on to the
validation split, beside the reference programs. There each is scored, sanity-checked
(:mod:`sycam.search.sanity`) and, with ``--no-worse-than REF``, compared with REF on every metric
of the suite; the eligible ones form the hall of fame (single metric: the Pareto front of size
against validation score, :func:`sycam.search.hall.pareto_front`), which alone is scored on test,
with bootstrap intervals and paired differences against the references.

Why the suite is checked lazily: deletion and insertion cost hundreds of forwards per image and
program, so checking all 40 pool rows with them on validation took longer than the search itself.
Cheap metrics (from the maps and the masks alone) are checked for every row; the costly ones only
for the rows on the current Pareto front of the rows not yet found worse, round after round until
every row on the front has been checked. The front that results is exactly the front of the
eligible rows (a row off it is dominated by a checked, eligible row), at the cost of the front's
rows only. Cross-validated selection (``--folds``) chooses among every eligible row, so it checks all.
"""
from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Iterable, Sequence

import optuna
import torch

from sycam.capture import CaptureRequest
from sycam.compile import CompiledProgram
from sycam.errors import SycamError
from sycam.lang import ast as A
from sycam.lang.parse import parse
from sycam.lang.pretty import fmt_number, pretty
from sycam.lang.simplify import simplified_text, simplify
from sycam.search.folds import cross_validate_selection
from sycam.search.hall import (MIN_VAL_IMAGES, Row, distinct_structures, interval, nan_last, paired_difference,
                               pareto_front)
from sycam.search.sanity import failures, thresholds
from sycam.search.study import completed
from sycam.workbench import Workbench, mean_score, merge_requests, score_streaming

if TYPE_CHECKING:  # the run whose state (model, data, clock, outputs) selection reads
    from sycam.search.synthesize import Synthesis

#: one capture request per score: what serves each score's programs (:func:`requests_by_score`)
Requests = dict[A.ScoreSpec, CaptureRequest]


def requests_by_score(programs: Iterable[CompiledProgram]) -> Requests:
    """The merged capture request of the programs of each score (a capture serves one score:
    :func:`sycam.workbench.merge_requests` refuses programs of several)."""
    groups: dict[A.ScoreSpec, list[CaptureRequest]] = {}
    for c in programs:
        groups.setdefault(c.request.score, []).append(c.request)
    return {score: merge_requests(reqs) for score, reqs in groups.items()}


#: what a metric needs beyond maps and masks that makes it cost forwards of the model per image
COSTLY_NEEDS = frozenset({"model", "explainer", "predict", "weights", "logits"})


def costly(metric) -> bool:
    """Does ``metric`` run the model again per image (deletion, insertion, robustness...)?"""
    return bool(set(metric.needs) & COSTLY_NEEDS)


def simplified_form(program: str) -> str:
    """What the hall of fame shows beside a program: its simplified form (:mod:`sycam.lang.simplify`),
    written as sympy's canonical form in sycam's syntax where that is shorter, multi-layer programs
    included; "" where the program is already as short as it gets."""
    try:
        given = parse(program)
        simple = simplify(given)
        return simplified_text(simple) or (pretty(simple) if simple != given else "")
    except Exception:  # display only: a form that cannot be rendered is simply not shown
        return ""


def with_defaults(program: A.Program, params: dict[str, float]) -> A.Program:
    """``program`` with ``params`` written in as its parameters' defaults (what a ``.cam`` file keeps)."""
    text = pretty(program)
    for name, value in params.items():
        text = re.sub(r"\?" + re.escape(name) + r"(:\[[^\]]*\])?(=[-0-9.e+]+)?",
                      lambda m: f"?{name}{m.group(1) or ''}={fmt_number(round(value, 4))}", text)
    return parse(text)


def lazy_front(rows: list[Row], metric: str, sign: int, check) -> list[Row]:
    """The Pareto front (size against validation ``metric``) of the rows that pass ``check``, calling
    ``check`` only on rows of successive fronts: ``check(rows)`` marks some of the given rows
    ``worse``; it is called until every row on the front of the rows not marked has been checked."""
    checked: set[int] = set()
    while True:
        front = pareto_front([r for r in rows if not r.worse], metric, sign)
        todo = [r for r in front if id(r) not in checked]
        if not todo:
            return front
        check(todo)
        checked.update(id(r) for r in todo)


class Selection:
    """The final phase of one run: validation, sanity, ``--no-worse-than``, test, comparisons."""

    def __init__(self, run: "Synthesis") -> None:
        self.run = run
        self.cfg = run.cfg
        self.metrics = run.metrics
        self.sign = 1 if self.metrics[0].higher_is_better else -1
        self.single = len(self.metrics) == 1
        self.no_worse: dict | None = None  # the --no-worse-than outcome, for the summary
        self.no_worse_ref: tuple[Row, Requests] | None = None  # its reference row and capture requests

    # ------------------------------------------------------------------ rows
    def rows_from_trials(self, trials) -> list[Row]:
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
                program = pretty(with_defaults(simple, params))
            rows.append(Row(name=f"trial{t.number}", program=program, size=A.size(simple.body),
                            source=str(source), params=params,
                            train={m.name: v for m, v in zip(self.metrics, t.values)},
                            simplified=simplified_form(program), structure=str(t.user_attrs.get("canon", ""))))
        return rows

    def pool(self, study: optuna.Study) -> list[Row]:
        """The rows that go on to validation: with one metric, the ``pool`` best distinct structures on
        train and the best of every size; with several, the study's front (at least 20)."""
        trials = sorted(completed(study), key=lambda t: t.user_attrs["program"])  # ties: by text, not by who came first
        if self.cfg.sanity == "require":  # programs that already failed a check on train do not go on
            trials = [t for t in trials if not t.constraints or max(t.constraints.values()) <= 0]
        if self.single:  # distinct structures, each with its best parameters; the best of every size too
            trials = distinct_structures(trials, key_of=lambda t: t.user_attrs.get("canon") or t.user_attrs["program"],
                                         value_of=lambda t: t.values[0], size_of=lambda t: int(t.user_attrs["size"]),
                                         sign=self.sign, top=self.cfg.pool)
        else:
            trials = study.best_trials[: max(self.cfg.pool, 20)]
        rows = self.rows_from_trials(trials)
        if not rows:
            raise SycamError("the search scored no valid program; raise --budget")
        return rows

    def stream(self, split: str, requests: Requests, programs: Sequence[tuple[CompiledProgram, dict | None]],
               metrics) -> list[dict[str, torch.Tensor]]:
        """Per-image values of ``programs`` on ``split``: one streaming pass per score they explain
        (each on ``requests[score]``, which must serve that score's programs), in the given order;
        the images are the same in every pass, so values of programs of two scores stay paired."""
        out: list[dict[str, torch.Tensor] | None] = [None] * len(programs)
        groups: dict[A.ScoreSpec, list[int]] = {}
        for i, (c, _) in enumerate(programs):
            groups.setdefault(c.request.score, []).append(i)
        for score, where in groups.items():
            values = score_streaming(self.run.bench(split, requests[score]), [programs[i] for i in where], metrics)
            for i, v in zip(where, values):
                out[i] = v
        return out  # type: ignore[return-value]

    def score_split(self, split: str, requests: Requests, rows: Sequence[Row],
                    compiled: dict[int, CompiledProgram], metrics=None) -> list[dict[str, torch.Tensor]]:
        """Per-image values of ``rows`` on ``split`` in one streaming pass per score; their means go on the rows."""
        metrics = list(metrics or self.metrics)
        if not rows:
            return []
        values = self.stream(split, requests, [(compiled[id(r)], r.params) for r in rows], metrics)
        for row, v in zip(rows, values):
            getattr(row, split).update({m.name: mean_score(v[m.name]) for m in metrics})
        return values

    def sanity(self, rows: Sequence[Row], compiled: dict[int, CompiledProgram]) -> None:
        """Sanity values of every row on the validation images. One sanity bench per distinct capture
        request, built and freed in turn: the search's programs share one; a reference over every
        conv layer (Winsor-CAM) would otherwise hold three captures of every layer for everyone
        (gigabytes on MobileNetV2)."""
        groups: dict[CaptureRequest, list[Row]] = {}
        for r in rows:
            groups.setdefault(compiled[id(r)].request, []).append(r)
        for group_request, group in groups.items():
            bench = self.run.sanity_bench("val", group_request)
            for r in group:
                r.sanity = bench.values(compiled[id(r)], r.params)
                r.failed = failures(r.sanity)
            del bench

    # ------------------------------------------------------------------ the phase
    def select_and_report(self, study: optuna.Study, train: Workbench) -> dict:
        from sycam.programs import load

        cfg, run = self.cfg, self.run
        primary, sign = self.metrics[0], self.sign
        rows = self.pool(study)
        resolver = train.resolver
        ref_rows = []
        for name in cfg.references:
            program = load(name)
            ref_rows.append(Row(name=name, program=pretty(program), size=A.size(A.inline_lets(program)), source="reference",
                                params=CompiledProgram(program, resolver).param_values()))
        everything = rows + ref_rows
        compiled = {id(r): CompiledProgram(parse(r.program), resolver) for r in everything}
        # one capture request per score (a capture serves one score: the searched programs may explain several)
        request = requests_by_score(compiled.values())
        # validation and test scores are streamed, one batch of captures at a time (references may
        # need layers the search did not cache, e.g. every conv). References are not searched, so
        # they get no train score: a pass over the train split for every conv layer cost minutes
        val_values = self.score_split("val", request, everything, compiled)

        warnings: list[str] = list(run.notes)
        n_val = len(run.datasets["val"])
        if n_val < MIN_VAL_IMAGES:
            warnings.append(f"the validation split has {n_val} images (< {MIN_VAL_IMAGES}): selecting among {len(rows)} "
                            "programs on it is noisy; use more data (--val-limit) or --split-seed to see how much it varies")
        if cfg.sanity != "off":
            self.sanity(everything, compiled)
        candidates = [r for r in rows if cfg.sanity != "require" or r.passes]
        check = (lambda todo: None)
        if cfg.no_worse_than:
            check = self._no_worse_than(candidates, compiled, request, warnings)
        if self.single and not cfg.folds:  # the Pareto front of size against validation score, best first
            hall = lazy_front(candidates, primary.name, sign, check)
        else:  # every candidate is needed: cross-validation chooses among them all; a trade-off shows them all
            check(candidates)
            hall = [r for r in candidates if not r.worse]
            if self.single:
                hall = pareto_front(hall, primary.name, sign)
        eligible_all = [r for r in candidates if not r.worse]
        if not hall:
            failing = sum(1 for r in rows if cfg.sanity == "require" and not r.passes)
            worse = sum(1 for r in rows if r.worse)
            why = "; ".join(part for part in (
                f"{failing} failed the sanity checks (--sanity flag shows them)" if failing else "",
                f"{worse} were worse than {cfg.no_worse_than} on validation on some metric of --suite" if worse else "") if part)
            raise SycamError(f"none of the {len(rows)} best programs is eligible: {why}; raise --budget")
        if self.single:
            hall.sort(key=lambda r: (-sign * nan_last(r.val[primary.name], sign), r.size))
        rejected = [r for r in rows if r not in eligible_all]
        test_values = self.score_split("test", request, hall + ref_rows, compiled)
        per_image = {id(r): v for r, v in zip(hall + ref_rows, test_values)}
        for r in hall + ref_rows:
            for m in self.metrics:
                _, lo, hi, _ = interval(per_image[id(r)][m.name], seed=cfg.seed)
                r.test_ci[m.name] = [lo, hi]
        for i, row in enumerate(hall):
            row.name = f"best{i + 1}"
        best = hall[0]
        cross_validation = None
        if cfg.folds and self.single:  # the selection among every eligible program, cross-validated
            per_row = {id(r): v for r, v in zip(everything, val_values)}
            cross_validation = cross_validate_selection(
                [per_row[id(r)][primary.name].numpy() for r in eligible_all], [r.program for r in eligible_all],
                best.program, cfg.folds, sign, cfg.seed)
        best_ref = max(ref_rows, key=self._by_test) if ref_rows else None
        comparisons = self._comparisons(best, best_ref, ref_rows, per_image)
        if self.no_worse_ref is not None:
            self._suite_on_test(best, compiled)
        from sycam.search.outputs import write_outputs

        overlay_rows = hall[:1] + [r for r in ref_rows if r.name in ("gradcam", "gradcampp", "layercam", "winsorcam")]
        overlay_benches = {score: Workbench(run.bundle, run.datasets["test"], overlay_request, batch_size=6,
                                            targets=cfg.targets, device=run.device, progress=False)
                           for score, overlay_request in requests_by_score(compiled[id(r)] for r in overlay_rows).items()}
        write_outputs(run, hall, ref_rows, overlay_benches)
        return {"metric": primary.name, "sanity": cfg.sanity, "thresholds": thresholds() if cfg.sanity != "off" else {},
                "best": asdict(best), "best_reference": asdict(best_ref) if best_ref else None,
                "comparisons": comparisons, "cross_validation": cross_validation, "warnings": warnings,
                "no_worse_than": cfg.no_worse_than, "no_worse": self.no_worse,
                "hall_of_fame": [asdict(r) for r in hall], "references": [asdict(r) for r in ref_rows],
                "rejected": [asdict(r) for r in rejected], "failing": [asdict(r) for r in rows if r.failed],
                "pool": len(rows), "out": str(run.out)}

    def _by_test(self, r: Row) -> float:
        return self.sign * nan_last(r.test[self.metrics[0].name], self.sign)

    def _comparisons(self, best: Row, best_ref: Row | None, ref_rows: list[Row], per_image: dict) -> dict:
        """The best program's paired difference on test against the best reference, and against the
        best reference that passes the sanity checks."""
        primary = self.metrics[0]
        passing = [r for r in ref_rows if r.passes]
        best_passing = max(passing, key=self._by_test) if passing and self.cfg.sanity != "off" else None
        out = {}
        for label, ref in (("best_reference", best_ref), ("best_sanity_passing_reference", best_passing)):
            if ref is not None:
                mean, lo, hi, n = paired_difference(per_image[id(best)][primary.name], per_image[id(ref)][primary.name],
                                                    seed=self.cfg.seed)
                out[label] = {"reference": ref.name, "difference": mean, "ci": [lo, hi], "images": n}
        return out

    # ------------------------------------------------------------------ --no-worse-than
    def _no_worse_than(self, candidates: list[Row], compiled, request: Requests, warnings: list[str]):
        """Score the reference ``no_worse_than`` on validation under the suite, and every candidate
        under the suite's cheap metrics; return the check that scores given rows under the costly ones.
        Each check marks the rows that are worse than the reference on some metric (metrics the data
        cannot support, e.g. IoU without masks, are skipped and said so)."""
        from sycam.metrics import get_metric
        from sycam.programs import load

        cfg, run = self.cfg, self.run
        ref = Row(name=cfg.no_worse_than, program=pretty(load(cfg.no_worse_than)), size=0, source="reference")
        resolver = run.bench("val", next(iter(request.values()))).resolver
        ref_compiled = compiled[id(ref)] = CompiledProgram(parse(ref.program), resolver)
        ref.params = ref_compiled.param_values()
        score = ref_compiled.request.score
        request = {**request, score: merge_requests([r for r in (request.get(score), ref_compiled.request) if r is not None])}
        searched = {m.name for m in self.metrics}
        suite = [get_metric(m) for m in cfg.suite if m not in searched]
        has_masks = run.datasets["val"][0].mask is not None if len(run.datasets["val"]) else False
        usable = [m for m in suite if has_masks or "mask" not in m.needs]
        if len(usable) < len(suite):
            warnings.append(f"--no-worse-than: {', '.join(m.name for m in suite if m not in usable)} need masks the "
                            "validation data lack and were not checked")
        cheap = [m for m in usable if not costly(m)]
        dear = [m for m in usable if costly(m)]
        self.score_split("val", request, [ref], compiled, self.metrics + cheap + dear)
        if cheap:
            self.score_split("val", request, candidates, compiled, cheap)
        # on test the searched metric is compared too: "better than REF on all of the suite" is the headline
        shown = [m for m in self.metrics if m.name in cfg.suite] + cheap + dear
        stats = {"reference": ref.name, "suite": [m.name for m in shown], "checked": [m.name for m in cheap + dear],
                 "val": dict(ref.val), "rows": len(candidates), "checked_costly": 0, "costly": [m.name for m in dear]}
        self.no_worse = stats

        def mark(rows: Sequence[Row], metrics) -> None:
            for r in rows:
                r.worse += [m.name for m in metrics
                            if (1 if m.higher_is_better else -1) * (r.val[m.name] - ref.val[m.name]) < 0]

        mark(candidates, cheap)

        def check(rows: Sequence[Row]) -> None:
            rows = [r for r in rows if not r.worse]
            if rows and dear:
                self.score_split("val", request, rows, compiled, dear)
                stats["checked_costly"] += len(rows)
                mark(rows, dear)

        self.no_worse_ref = (ref, request)
        return check

    def _suite_on_test(self, best: Row, compiled) -> None:
        """The headline question on test: is the best program at least as good as the reference on
        every metric of the suite, and strictly better on all of them? Paired differences with 95%
        intervals over the test images."""
        from sycam.metrics import get_metric

        ref, request = self.no_worse_ref
        metrics = [get_metric(m) for m in self.no_worse["suite"]]
        best_compiled = compiled[id(best)]
        if best_compiled.request.score not in request:  # (the suite was checked on validation: it is)
            request = {**request, **requests_by_score([best_compiled])}
        values = self.stream("test", request, [(best_compiled, best.params), (compiled[id(ref)], ref.params)], metrics)
        table = {}
        for m in metrics:
            mean, lo, hi, n = paired_difference(values[0][m.name], values[1][m.name], seed=self.cfg.seed)
            s = 1 if m.higher_is_better else -1
            table[m.name] = {"best": mean_score(values[0][m.name]), "reference": mean_score(values[1][m.name]),
                             "difference": mean, "ci": [lo, hi], "images": n, "higher_is_better": m.higher_is_better, "better": s * mean > 0,
                             "surely_better": s * (lo if s > 0 else hi) > 0}
        self.no_worse["test"] = table
        self.no_worse["better_on_all"] = all(v["better"] for v in table.values())
        self.no_worse["surely_better_on_all"] = all(v["surely_better"] for v in table.values())
