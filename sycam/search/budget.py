"""The run's clock: ``--budget S`` is the wall time of the whole run, planned phase by phase.

Phases, in order: ``load`` (model, data, the study's storage), ``capture`` (the train split's captures, the cost
probes, the train sanity captures), ``enumerate``, ``race`` (the enumerated programs' race and
their entry into the study), ``optuna`` and ``final`` (validation, test, sanity checks, outputs).
Load and capture cost what they cost; the final phase is reserved from measured costs
(:class:`FinalCost`) before the search starts, and the search gets what is left. With
``--candidates N`` no clock decides anything: the clock only records.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

PHASES = ("load", "capture", "enumerate", "race", "optuna", "final")
TOLERANCE = 0.10  # a run may end up to 10% over its budget before the printout calls it an overrun
OUTPUTS_ALLOWANCE = 3.0  # seconds planned for the plots, overlays and files (not measured beforehand)
SAFETY = 1.1  # the final phase is reserved 10% above its estimate: running over the budget is worse than under


@dataclass
class FinalCost:
    """What the final phase will cost, from measurements taken after the train captures.

    ``capture_per_image``: seconds to capture one image for the union of the search's and the
    references' requests, timed on a few train images with the capture cache off;
    ``references_per_image``: seconds to score every reference on one image; ``row_per_image``:
    seconds to score one searched program exactly on one image (the references' mean, or the
    race's mean exact score once measured if larger); ``rows`` go on to validation, at most
    ``hall`` of them (the front: one per size) on to test. The final phase captures validation
    and test (and the overlay images) for that union; the train split is not captured again (the
    race scored the searched programs there; references get no train score).

    ``sanity_seconds``: the sanity benches' captures (:class:`sycam.search.sanity.SanityBench`:
    the trained model, its head-randomised copy and another class, on the first validation
    images; one bench per distinct capture request), priced per request from the same probes.
    ``extra_captures``: images captured again for the union (--no-worse-than's validation pass).

    With ``--no-worse-than``, ``suite_per_image``: seconds to score one program on one image under
    the suite's metrics that re-run the model (deletion, insertion), measured on a few train images;
    ``suite_rows``: how many rows are expected to be checked with them on validation (the lazy
    Pareto front's, :mod:`sycam.search.select`), plus the best program and the reference on test.

    ``check_per_image``: the validation sanity checks of one row on one image (``sanity_images``
    images per row: every row of the pool is checked under ``--sanity require|flag``), measured:
    three map evaluations and three rankings of the input's pixels; the rankings were a third of a
    600 s MobileNetV2 run's final phase, which the estimate had left out.

    seconds = 1.1 · (capture_per_image · (val + test + overlay + extra) + sanity_seconds
    + check_per_image · sanity_images · rows
    + references_per_image · (val + test) + row_per_image · (rows · val + hall · test)
    + suite_per_image · (suite_rows · val + 2 · test)) + allowance.
    """

    capture_per_image: float
    references_per_image: float
    row_per_image: float
    train: int
    val: int
    test: int
    overlay: int
    rows: int
    extra_captures: int = 0  # --no-worse-than's images
    hall: int | None = None  # rows scored on test (None: all ``rows``)
    suite_per_image: float = 0.0  # --no-worse-than: the suite's costly metrics, per row and image
    suite_rows: int = 0
    sanity_seconds: float = 0.0
    #: checking one row on one validation image: three maps (trained, head-randomised, other
    #: class) and their pixel ranks at the input size, measured; ``sanity_images`` per row
    check_per_image: float = 0.0
    sanity_images: int = 0

    def parts(self) -> dict[str, float]:
        """The estimate's terms in seconds (before the safety margin): what the printout names."""
        captured = self.val + self.test + self.overlay + self.extra_captures
        return {"captures": self.capture_per_image * captured,
                "sanity": self.sanity_seconds,
                "checks": self.check_per_image * self.sanity_images * self.rows,
                "references": self.references_per_image * (self.val + self.test),
                "programs": self.row_per_image * (self.rows * self.val + min(self.rows, self.hall or self.rows) * self.test),
                "suite": self.suite_per_image * (self.suite_rows * self.val + 2 * self.test) if self.suite_rows else 0.0}

    def seconds(self) -> float:
        return SAFETY * sum(self.parts().values()) + OUTPUTS_ALLOWANCE

    def describe(self) -> str:
        """e.g. "captures 410 s, references 230 s, programs 80 s, suite 600 s": the terms that are not 0."""
        return ", ".join(f"{k} {v:.0f} s" for k, v in self.parts().items() if v >= 0.5)


class Clock:
    """Wall time since the run started, by phase, against a budget (None: no budget)."""

    def __init__(self, budget: float | None, start: float | None = None) -> None:
        self.budget = budget
        self.t0 = time.perf_counter() if start is None else start
        self.seconds: dict[str, float] = {}
        self.planned: dict[str, float] = {}
        self.why: dict[str, str] = {}  # phase -> what its time went on, where worth saying

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return math.inf if self.budget is None else self.budget - self.now()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def plan(self, name: str, seconds: float, why: str = "") -> None:
        self.planned[name] = max(0.0, seconds)
        if why:
            self.why[name] = why

    def total(self) -> float:
        return sum(self.seconds.values())

    def overrun(self) -> str | None:
        """None within budget (+10%); else why: the phases that need no planning (loading, captures,
        final scoring) alone exceeding the budget, or the phases that took more than planned."""
        if self.budget is None or self.now() <= self.budget * (1 + TOLERANCE):
            return None
        head = f"over budget: {self.now():.0f} s for a budget of {self.budget:.0f} s"
        fixed = {p: self.seconds.get(p, 0.0) for p in ("load", "capture", "final")}
        if sum(fixed.values()) > self.budget:
            return (f"{head}; loading ({fixed['load']:.0f} s), capturing the train split ({fixed['capture']:.0f} s) and "
                    f"final scoring ({fixed['final']:.0f} s) alone took {sum(fixed.values()):.0f} s: raise --budget "
                    "or lower --train-limit/--val-limit/--test-limit")
        over = sorted(((self.seconds.get(p, 0.0) - self.planned[p], p) for p in PHASES if p in self.planned), reverse=True)
        parts = [f"{p} took {self.seconds.get(p, 0.0):.0f} s against {self.planned[p]:.0f} s planned"
                 + (f" ({self.why[p]})" if p in self.why else "") for d, p in over if d > 1.0]
        return head + "; " + ("; ".join(parts) if parts else "no phase overran its plan by more than a second")

    def as_dict(self) -> dict[str, object]:
        return {"seconds": {p: round(self.seconds[p], 2) for p in PHASES if p in self.seconds},
                "planned": {p: round(self.planned[p], 2) for p in PHASES if p in self.planned},
                "total": round(self.now(), 2), "budget": self.budget, "overrun": self.overrun()}


def format_phases(phases: dict) -> str:
    """One line: seconds per phase and the total against the budget (and an overrun, if any)."""
    seconds = phases.get("seconds", {})
    parts = [f"{p} {seconds[p]:.1f}" for p in PHASES if p in seconds]
    budget = phases.get("budget")
    line = "phases (s): " + ", ".join(parts) + f"; total {phases.get('total', 0.0):.1f}"
    line += f" of a {budget:g} s budget" if budget is not None else " (no budget: --candidates)"
    if phases.get("overrun"):
        line += f"\n{phases['overrun']}"
    return line


__all__ = ["Clock", "FinalCost", "PHASES", "format_phases"]
