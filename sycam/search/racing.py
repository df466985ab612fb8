"""Racing: rank many candidates cheaply, pay the full price only for the promising ones.

A candidate is first scored at a *rung* of low fidelity: a fixed subset of the train images (a
seeded random order, the same for every candidate) and, where the metrics allow it, maps and masks
at a reduced resolution. The best fraction ``1/η`` of the candidates at a rung is promoted to the
next rung (``η`` times more images); the last rung is the exact score: every train image at the
input resolution, computed by :meth:`sycam.workbench.Workbench.score` exactly as without racing.
This is successive halving (Jamieson & Talwalkar, "Non-stochastic best arm identification and
hyperparameter optimization", AISTATS 2016): the enumerator's list is raced rung by rung
(:func:`promote`), as many candidates entering as the budget allows (:func:`admissible`).
Optuna's trials, which arrive one at a time, race the same rungs through ``trial.report`` and
Optuna's :class:`optuna.pruners.SuccessiveHalvingPruner`, the asynchronous form (ASHA: Li et al.,
"A system for massively parallel hyperparameter tuning", MLSys 2020; :mod:`sycam.search.loop`).

What a rung computes differs from the exact score only by the subset and the resolution: the
same compiled program and the same metric objects. At a reduced side ``s`` a program's map is
finished at ``s×s`` (its raw map upsampled bilinearly to ``s×s`` instead of the input size, then
min-max normalised; ``fuse(..., input)`` fuses at ``s×s``) and the mask is the majority of each
cell (area-downsampled, ≥ 1/2). Only metrics whose definition does not depend on pixel units are
scored at reduced resolution (:data:`RESOLUTION_FREE`); the pointing game (a tolerance of 15
pixels) and every metric that runs the model (deletion, insertion, ...) race on subsets only.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F

from sycam.capture import Captures
from sycam.compile import CompiledProgram
from sycam.cse import SharedValues
from sycam.data.base import Batch
from sycam.errors import ProgramRuntimeError
from sycam.metrics import Metric
from sycam.metrics.base import MetricInputs
from sycam.metrics.complexity import Sparsity
from sycam.metrics.localisation import CentreOfMassDistance, EnergyPointingGame, OtsuIoU, ThresholdIoU
from sycam.workbench import CachedBatch, Workbench, mean_score

#: metrics that may be scored on maps and masks at a reduced resolution: each is a ratio or a
#: distribution of pixel values (IoU, energy share, centre of mass over the diagonal, Gini index)
RESOLUTION_FREE: tuple[type, ...] = (OtsuIoU, ThresholdIoU, EnergyPointingGame, CentreOfMassDistance, Sparsity)

ETA = 3  # promotion factor: the best third goes on, with three times the images
FIRST_IMAGES = 16  # images of the first rung
MIN_SIDE = 32  # no rung below 32×32 pixels
#: what a metric may need for its values of many candidates to come from one call
BATCHABLE_NEEDS = frozenset({"mask"})


@dataclass(frozen=True)
class Rung:
    """``images`` train images (a prefix of the racing order) at ``side``×``side`` pixels;
    ``side=None`` is the input resolution. The exact rung holds every image at full resolution."""

    images: int
    side: int | None = None
    exact: bool = False

    @property
    def label(self) -> str:
        """The rung's identity in the journal (a resumed run reuses a value only at the same rung)."""
        if self.exact:
            return "exact"
        return f"{self.images}img@{self.side or 'full'}"


def reduced_side(input_size: tuple[int, int], metrics: Sequence[Metric]) -> int | None:
    """The side partial rungs score at: a quarter of the input (56 for 224×224, where the timing
    suite measured a Spearman correlation of 0.998 with the full-size ranking of 60 programs;
    experiments/timing/report.json), at least :data:`MIN_SIDE`; None (full size) when a metric is
    not resolution-free or the input is not larger than that."""
    if not all(isinstance(m, RESOLUTION_FREE) for m in metrics):
        return None
    return quarter_side(input_size)


def quarter_side(input_size: tuple[int, int]) -> int | None:
    """A quarter of the input's shorter side, at least :data:`MIN_SIDE`; None when that is not
    smaller than the input (nothing to save). Partial rungs and the search's sanity checks rank there."""
    h, w = input_size
    side = max(MIN_SIDE, min(h, w) // 4)
    return side if side < min(h, w) else None


def schedule(n_images: int, input_size: tuple[int, int], metrics: Sequence[Metric], eta: int = ETA,
             first: int = FIRST_IMAGES) -> list[Rung]:
    """The rungs for a train split of ``n_images``: ``first·η^k`` images at the reduced side for
    k = 0, 1, ... while that is at most half the split (a partial rung that costs more than half of
    the exact one saves too little), then the exact rung. A split too small for any partial rung
    (or a side and subset that save nothing) races on the exact rung alone."""
    if n_images < 1:
        raise ValueError(f"racing schedule: the train split has no image ({n_images})")
    if eta < 2 or first < 1:
        raise ValueError(f"racing schedule: eta must be >= 2 and first >= 1, got eta={eta}, first={first}")
    side = reduced_side(input_size, metrics)
    rungs = []
    images = first
    while images * 2 <= n_images:
        rungs.append(Rung(images, side))
        images *= eta
    return rungs + [Rung(n_images, None, exact=True)]


def _cells(masks: torch.Tensor, side: int) -> torch.Tensor:
    """Masks (B, H, W) bool → (B, side, side) bool: a cell is inside when at least half of its
    area is (area interpolation, i.e. the mean over the pixels each cell covers)."""
    return F.interpolate(masks[:, None].float(), size=(side, side), mode="area")[:, 0] >= 0.5


class RungBench:
    """Scores compiled programs at the rungs of a schedule, on a :class:`Workbench`'s cached train
    captures. The partial rungs read one gathered copy of the first ``max(images)`` images of a
    seeded random order (a prefix per rung: the images of a rung include those of the rungs below);
    the exact rung is ``Workbench.score`` on every batch."""

    def __init__(self, bench: Workbench, rungs: Sequence[Rung], metrics: Sequence[Metric], seed: int = 0,
                 chunk: int = 32) -> None:
        if not rungs or not rungs[-1].exact:
            raise ValueError("racing: the last rung must be the exact one")
        self.bench = bench.load()
        self.rungs = list(rungs)
        self.metrics = list(metrics)
        self.n = sum(len(cb.targets) for cb in self.bench.batches)
        self._validated: set[tuple[int, str]] = set()
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}
        self._chunks: list[list[CachedBatch]] = []
        partial = [r for r in self.rungs if not r.exact]
        sub = None
        if partial:
            m = max(r.images for r in partial)
            if m > self.n:
                raise ValueError(f"racing: a rung of {m} images on a split of {self.n}")
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))[:m]
            sub = _gather(self.bench.batches, order.tolist())
        for r in self.rungs:
            if r.exact:
                self._chunks.append([])
                continue
            assert sub is not None
            self._chunks.append([_view(sub, i, min(i + chunk, r.images), r.side) for i in range(0, r.images, chunk)])

    def first_maps(self, compiled: CompiledProgram, params=None):
        """The maps of the first chunk of rung 0 (a cheap fingerprint); without partial rungs,
        :meth:`probe_maps`."""
        if self.rungs[0].exact:
            return self.probe_maps(compiled, params)
        return compiled(self._chunks[0][0].caps, params)

    def first_maps_many(self, items: Sequence[tuple[CompiledProgram, Mapping[str, float] | None]]
                        ) -> list[torch.Tensor | ProgramRuntimeError]:
        """:meth:`first_maps` of many programs, sub-expressions they share computed once; a
        program's ProgramRuntimeError in place of its maps."""
        probe = self.rungs[0].exact
        caps = _head(self.bench.batches[0].caps, 16) if probe else self._chunks[0][0].caps
        shared = SharedValues(items) if len(items) > 1 else None
        out: list[torch.Tensor | ProgramRuntimeError] = []
        for j, (compiled, params) in enumerate(items):
            view = shared.user(j) if shared is not None else None
            try:
                out.append(compiled.native(caps, params, view) if probe else compiled(caps, params, shared=view))
            except ProgramRuntimeError as err:
                out.append(err)
            finally:
                if shared is not None:
                    shared.done(j)
        return out

    def probe_maps(self, compiled: CompiledProgram, params=None):
        """The maps of the first 16 train images, normalised on the program's own grid (the
        search's observational probe: equal there means equal at every size, see
        :meth:`CompiledProgram.native`; a third of a single-layer race's time went to the probe
        when it upsampled to the input size and hashed 16×224×224 maps)."""
        return compiled.native(_head(self.bench.batches[0].caps, 16), params)

    def score(self, compiled: CompiledProgram, k: int, params=None, first=None) -> tuple[float, ...]:
        """Mean value of each metric at rung ``k``; ``first``: the maps :meth:`first_maps` gave
        (not recomputed). Raises ProgramRuntimeError where the program yields NaN/Inf."""
        if self.rungs[k].exact:
            values = self.bench.score(compiled, self.metrics, params)
            return tuple(mean_score(values[m.name]) for m in self.metrics)
        out: dict[str, list[torch.Tensor]] = {m.name: [] for m in self.metrics}
        for i, cb in enumerate(self._chunks[k]):
            maps = first if (i == 0 and k == 0 and first is not None) else compiled(cb.caps, params)
            for m in self.metrics:
                key = (k, m.name)
                inputs = self.bench.metric_inputs(cb, maps, m, compiled, params)
                out[m.name].append(m(inputs, validate=key not in self._validated).cpu())
                self._validated.add(key)
        return tuple(mean_score(torch.cat(out[m.name])) for m in self.metrics)


    def batchable(self, k: int) -> bool:
        """Does rung ``k`` score candidates many at a time (:meth:`score_many`)? Where the metrics
        see only maps and masks, each image on its own (every localisation and complexity metric;
        not those that run the model or the explainer, whose cost a batch would only hide from
        the clock)."""
        return all(m.needs <= BATCHABLE_NEEDS for m in self.metrics)

    def score_many(self, items: Sequence[tuple[CompiledProgram, Mapping[str, float] | None, object]],
                   k: int) -> list[tuple[float, ...] | None]:
        """:meth:`score` of many candidates ``(compiled, params, first)`` at rung ``k``
        (:meth:`batchable`), every value exactly what :meth:`score` gives; None where a program
        fails (ProgramRuntimeError). On each chunk of images, what several candidates compute is
        computed once (:class:`sycam.cse.SharedValues`: 3× on the timing suite's multi-layer
        candidates at rung 0). At a partial rung the maps of all candidates then meet in one call
        of each metric (against the chunk's masks repeated; per-image metrics keep every value
        exact): one call instead of one per candidate saves most of the metric's cost at a
        rung's small sizes (0.4 against 2.6 ms per candidate for Otsu IoU on 16 maps of 56×56,
        timed). The exact rung is :meth:`Workbench.score_many`."""
        if not self.batchable(k):
            raise ValueError(f"racing: rung {self.rungs[k].label} cannot score candidates in one batch")
        if self.rungs[k].exact:
            exact = self.bench.score_many([(compiled, params) for compiled, params, _ in items], self.metrics)
            return [None if isinstance(v, ProgramRuntimeError) else tuple(mean_score(v[m.name]) for m in self.metrics)
                    for v in exact]
        alive = [True] * len(items)
        out: list[dict[str, list[torch.Tensor]]] = [{m.name: [] for m in self.metrics} for _ in items]
        batch = SharedValues([(compiled, params) for compiled, params, _ in items])
        for c, cb in enumerate(self._chunks[k]):
            maps, who = [], []
            shared = batch.fresh()
            for j, (compiled, params, first) in enumerate(items):
                if not alive[j]:
                    continue
                try:
                    maps.append(first if (c == 0 and k == 0 and first is not None)
                                else compiled(cb.caps, params, shared=shared.user(j)))
                    who.append(j)
                except ProgramRuntimeError:
                    alive[j] = False
                finally:
                    shared.done(j)
            if not who:
                continue
            b = len(cb.targets)
            inputs = MetricInputs(maps=torch.cat(maps), targets=cb.targets.repeat(len(who)),
                                  masks=self._repeated_masks(k, c, cb, len(who)))
            for m in self.metrics:
                key = (k, m.name)
                values = m(inputs, validate=key not in self._validated).cpu().view(len(who), b)
                self._validated.add(key)
                for row, j in enumerate(who):
                    out[j][m.name].append(values[row])
        return [tuple(mean_score(torch.cat(out[j][m.name])) for m in self.metrics) if alive[j] else None
                for j in range(len(items))]

    def _repeated_masks(self, k: int, c: int, cb: CachedBatch, times: int) -> torch.Tensor | None:
        """The chunk's masks ``times`` over, kept (one tensor per size, so the metrics' per-mask
        caches hit)."""
        if cb.batch.masks is None:
            return None
        key = (k, c, times)
        hit = self._masks.get(key)
        if hit is None:
            hit = self._masks[key] = cb.batch.masks.repeat(times, 1, 1)
        return hit


def _gather(batches: Sequence[CachedBatch], order: Sequence[int]) -> CachedBatch:
    """One batch holding the images ``order`` (global indices over ``batches``), in that order."""
    where: list[tuple[int, int]] = []
    for b, cb in enumerate(batches):
        where += [(b, r) for r in range(len(cb.targets))]
    picks = [where[i] for i in order]

    def take(get) -> torch.Tensor:
        return torch.stack([get(batches[b])[r] for b, r in picks])

    first = batches[0]
    caps = Captures(
        A={k: take(lambda cb, k=k: cb.caps.A[k]) for k in first.caps.A},
        G={k: take(lambda cb, k=k: cb.caps.G[k]) for k in first.caps.G},
        S={k: take(lambda cb, k=k: cb.caps.S[k]) for k in first.caps.S},
        D={k: take(lambda cb, k=k: cb.caps.D[k]) for k in first.caps.D},
        R={k: take(lambda cb, k=k: cb.caps.R[k]) for k in first.caps.R},
        R1={k: take(lambda cb, k=k: cb.caps.R1[k]) for k in first.caps.R1},
        X=None if first.caps.X is None else take(lambda cb: cb.caps.X),  # (no re-scorer: confidence and gain are not searched)
        Y=take(lambda cb: cb.caps.Y), logits=take(lambda cb: cb.caps.logits), input_size=first.caps.input_size)
    masks = take(lambda cb: cb.batch.masks) if first.batch.masks is not None else None
    batch = Batch(images=take(lambda cb: cb.batch.images), labels=take(lambda cb: cb.batch.labels), masks=masks)
    return CachedBatch(batch, take(lambda cb: cb.targets), caps)


def _head(c: Captures, n: int) -> Captures:
    return c.take(slice(0, n))  # every terminal (R, R1, X) and the re-scorer come along


def _view(sub: CachedBatch, i: int, j: int, side: int | None) -> CachedBatch:
    """Images ``i:j`` of ``sub``, finished at ``side``×``side`` (None: the input size)."""
    c = sub.caps
    size = c.input_size if side is None else (side, side)
    caps = dataclasses.replace(c.take(slice(i, j)), input_size=size)  # with R, R1, X and the re-scorer
    images, masks = sub.batch.images[i:j], sub.batch.masks
    masks = masks[i:j] if masks is not None else None
    if side is not None:
        images = F.interpolate(images, size=size, mode="area")
        masks = _cells(masks, side) if masks is not None else None
    return CachedBatch(Batch(images=images, labels=sub.batch.labels[i:j], masks=masks), sub.targets[i:j], caps)


# ---------------------------------------------------------------------------- the race


def _rank_key(values: tuple[float, ...], metric: int, sign: int, index: int) -> tuple[float, int]:
    v = values[metric]
    return (math.inf if math.isnan(v) else -sign * v, index)


def promote(values: Mapping[int, tuple[float, ...]], signs: Sequence[int], eta: int = ETA,
            groups: Mapping[int, Hashable] | None = None) -> list[int]:
    """The candidates of one rung that go on to the next, best first (on the first metric).

    ``values``: candidate -> its metric values at this rung; ``signs``: +1 where a metric is better
    higher, -1 where lower. Promoted: the top ``⌊n/η⌋`` of the ``n`` candidates on each metric, and
    the best of each group (``groups``: candidate -> its program size, so that the hall of fame's
    smallest programs are scored exactly too). NaN ranks last and is never promoted; ties go to the
    smaller candidate number, so the same values always give the same promotions.
    """
    if eta < 2:
        raise ValueError(f"promote: eta must be >= 2, got {eta}")
    valid = [c for c, v in values.items() if not any(math.isnan(x) for x in v)]
    top = len(values) // eta
    chosen: set[int] = set()
    for i, sign in enumerate(signs):
        chosen.update(sorted(valid, key=lambda c: _rank_key(values[c], i, sign, c))[:top])
    if groups is not None:
        best: dict[Hashable, int] = {}
        for c in sorted(valid, key=lambda c: _rank_key(values[c], 0, signs[0], c)):
            best.setdefault(groups[c], c)
        chosen.update(best.values())
    return sorted(chosen, key=lambda c: _rank_key(values[c], 0, signs[0], c))


def admissible(costs: Sequence[float], seconds: float, eta: int = ETA, groups: int = 0, entered: int = 0) -> int:
    """How many candidates can enter a race of rungs costing ``costs[k]`` seconds per candidate
    and still finish within ``seconds``, when ``entered`` are already scored on rung 0: n enter
    rung 0 and ``n/η^k + groups`` reach rung k, so what is left costs
    ``(n − entered)·costs[0] + Σ_{k≥1} costs[k]·(n/η^k + groups)``; the largest such n, never
    fewer than ``entered``."""
    fixed = sum(costs[1:]) * groups - entered * costs[0]
    per = sum(c / eta ** k for k, c in enumerate(costs))
    if per <= 0:
        raise ValueError(f"admissible: rung costs must be positive, got {list(costs)}")
    return max(entered, int((seconds - fixed) / per))


__all__ = ["BATCHABLE_NEEDS", "RESOLUTION_FREE", "Rung", "RungBench", "admissible", "promote", "quarter_side", "reduced_side", "schedule"]
