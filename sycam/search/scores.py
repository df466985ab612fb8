"""Searching programs under several scores (a space's ``scores``: ``logit``, ``prob``, ``finer(k, α)``).

The gradients ``G`` (and ``S``, ``D``, ``R``, ``R1``, ``Y``) of a score are other values than those of
another score, so one capture cannot serve two scores (:func:`sycam.workbench.merge_requests`
refuses). The search keeps the logit's train captures and racer as before; a program that Optuna's
sampler gives another score is scored on train captures of that score, made the first time a
program asks for it (:class:`ScoreBenches`: the same layers and terminals as the logit's, so a
program is served whatever its score), each with its own racer. Racers do not share observational
twins (their maps come from other captures), nor, between workers, claimed values (the claim key
is salted with the score). Each capture's cost is measured and printed (:func:`cost_line`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Callable, Sequence

from sycam.lang import ast as A
from sycam.search.claims import Claims
from sycam.search.loop import Racer
from sycam.search.racing import Rung, RungBench
from sycam.search.space import score_text
from sycam.workbench import Workbench

LOGIT = A.ScoreSpec()


class SaltedClaims:
    """:class:`~sycam.search.claims.Claims` whose keys are salted with a score: workers share a
    (candidate, rung) value only between racers of the same score."""

    def __init__(self, claims: Claims, salt: str) -> None:
        self.claims = claims
        self.salt = salt

    def _key(self, key: str) -> str:
        return hashlib.sha256(f"{key}|score={self.salt}".encode()).hexdigest()

    def take(self, key: str) -> tuple[float, ...] | None:
        return self.claims.take(self._key(key))

    def done(self, key: str, values: Sequence[float]) -> None:
        self.claims.done(self._key(key), values)


class ScoreBenches:
    """The train Workbench, Racer and sanity bench of each score, the logit's given, the others
    made on first use: ``make_bench(request)`` captures the train split for a request (the logit
    train request with another score), ``make_racer(rung_bench, claims)`` races on it,
    ``make_sanity(request)`` (when sanity checks constrain the sampler) checks on it."""

    def __init__(self, train: Workbench, racer: Racer, rungs: Sequence[Rung], metrics: Sequence, seed: int,
                 make_bench: Callable[[object], Workbench], claims: Claims | None = None, share: tuple[int, int] = (0, 1),
                 make_sanity: Callable[[object], object] | None = None, sanity: object | None = None) -> None:
        self.train = train
        self.rungs = list(rungs)
        self.metrics = list(metrics)
        self.seed = seed
        self.make_bench = make_bench
        self.claims = claims
        self.share = share
        self.make_sanity = make_sanity
        self.racers: dict[A.ScoreSpec, Racer] = {LOGIT: racer}
        self.sanities: dict[A.ScoreSpec, object] = {LOGIT: sanity} if sanity is not None else {}
        self.seconds: dict[str, float] = {}  # score text -> seconds its train capture took (cache reads included)
        self.on_new: Callable[[Racer], None] | None = None  # e.g. prime the new racer from the study

    def racer(self, score: A.ScoreSpec) -> Racer:
        """The racer of ``score``; the first call for another score than the logit captures its train split."""
        found = self.racers.get(score)
        if found is not None:
            return found
        t0 = time.perf_counter()
        bench = self.make_bench(dataclasses.replace(self.train.request, score=score))
        rung_bench = RungBench(bench, self.rungs, self.metrics, seed=self.seed)  # loads (captures) the bench
        self.seconds[score_text(score)] = time.perf_counter() - t0
        claims = SaltedClaims(self.claims, score_text(score)) if self.claims is not None else None
        base = self.racers[LOGIT]
        racer = Racer(rung_bench, self.metrics, claims=claims, share=self.share)  # type: ignore[arg-type]
        racer.on_exact = base.on_exact
        self.racers[score] = racer
        if self.on_new is not None:
            self.on_new(racer)
        return racer

    def sanity(self, score: A.ScoreSpec):
        """The sanity bench of ``score`` (made on first use, on the first train images)."""
        if score not in self.sanities:
            assert self.make_sanity is not None
            self.sanities[score] = self.make_sanity(dataclasses.replace(self.train.request, score=score))
        return self.sanities[score]

    def totals(self, stats: dict[str, object]) -> dict[str, object]:
        """``stats`` (the logit racer's :meth:`LoopStats.as_dict`) with the other scores' racers'
        counts added (one search: the candidates of every score)."""
        out = dict(stats)
        for score, racer in self.racers.items():
            if score == LOGIT:
                continue
            for key in ("scored", "exact", "pruned", "observational_duplicates", "invalid", "from_other_workers",
                        "exact_images"):
                out[key] = out.get(key, 0) + getattr(racer.stats, key)  # type: ignore[operator]
            for key in ("per_rung", "rung_seconds"):  # by rung: every racer races the same rungs
                out[key] = [a + b for a, b in zip(out[key], getattr(racer.stats, key))]  # type: ignore[call-overload]
        return out

    def as_dict(self, space_scores: Sequence[A.ScoreSpec]) -> dict[str, dict[str, object]]:
        """Per score of the space: its train capture's seconds (None for the logit's, captured
        before the search; absent where no program was sampled with it) and its racer's counts."""
        out: dict[str, dict[str, object]] = {}
        n = len(self.train.dataset)
        for spec in space_scores:
            text = score_text(spec)
            racer = self.racers.get(spec)
            row: dict[str, object] = {"sampled": racer is not None, "images": n}
            if spec != LOGIT and text in self.seconds:
                row["capture_seconds"] = round(self.seconds[text], 3)
            if racer is not None:
                s = racer.stats
                row.update(scored=s.scored, exact=s.exact, pruned=s.pruned,
                           observational_duplicates=s.observational_duplicates, invalid=s.invalid)
            out[text] = row
        return out


def merge_workers(per_worker: Sequence[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    """The workers' :meth:`ScoreBenches.as_dict` as one: sampled by any, seconds and counts summed
    (each worker captures its own train split for a score it samples)."""
    out: dict[str, dict[str, object]] = {}
    for scores in per_worker:
        for text, row in scores.items():
            into = out.setdefault(text, {"sampled": False, "images": row.get("images", 0)})
            into["sampled"] = bool(into["sampled"]) or bool(row.get("sampled"))
            for key, value in row.items():
                if key not in ("sampled", "images") and isinstance(value, (int, float)):
                    into[key] = round(into.get(key, 0) + value, 3)  # type: ignore[operator]
    return out


def cost_line(scores: dict[str, dict[str, object]]) -> str:
    """One printed line: what each other score's train capture cost (or that none was sampled)."""
    parts = []
    for text, row in scores.items():
        if text == "logit":
            continue
        if "capture_seconds" in row:
            s, n = float(row["capture_seconds"]), max(1, int(row.get("images", 1)))  # type: ignore[arg-type]
            parts.append(f"{text} {s:.2f} s ({s / n * 1000:.1f} ms/image; exact scores under it: {row.get('exact', 0)})")
        else:
            parts.append(f"{text} not sampled (no capture)")
    if not parts:
        return ""
    return "other scores, one train capture each (the logit's is the search's own): " + "; ".join(parts)


__all__ = ["ScoreBenches", "SaltedClaims", "cost_line", "merge_workers"]
