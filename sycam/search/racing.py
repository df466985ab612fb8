"""Racing: rank many candidates cheaply, pay the full price only for the promising ones.

A candidate is first scored at a *rung* of low fidelity: a fixed subset of the train images (a
seeded random order, the same for every candidate) and, where the metrics allow it, maps and masks
at a reduced resolution. The best fraction ``1/η`` of the candidates at a rung is promoted to the
next rung (``η`` times more images); the last rung is the exact score: every train image at the
input resolution, computed by :meth:`sycam.workbench.Workbench.score` exactly as without racing.
This is successive halving (Jamieson & Talwalkar, "Non-stochastic best arm identification and
hyperparameter optimization", AISTATS 2016) in its asynchronous form, which promotes as soon as a
candidate is in the top ``1/η`` of the candidates its rung has seen so far, so it needs no fixed
number of candidates (ASHA: Li et al., "A system for massively parallel hyperparameter tuning",
MLSys 2020). Optuna's trials race the same rungs through ``trial.report`` and Optuna's own
:class:`optuna.pruners.SuccessiveHalvingPruner` (see :func:`race_trial`).

What a rung computes differs from the exact score only by the subset and the resolution: the
same compiled program and the same metric objects. At a reduced side ``s`` a program's map is
finished at ``s×s`` (its raw map upsampled bilinearly to ``s×s`` instead of the input size, then
min-max normalised; ``fuse(..., input)`` fuses at ``s×s``) and the mask is the majority of each
cell (area-downsampled, ≥ 1/2). Only metrics whose definition does not depend on pixel units are
scored at reduced resolution (:data:`RESOLUTION_FREE`); the pointing game (a tolerance of 15
pixels) and every metric that runs the model (deletion, insertion, ...) race on subsets only.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch
import torch.nn.functional as F

from sycam.capture import Captures
from sycam.compile import CompiledProgram
from sycam.data.base import Batch
from sycam.metrics import Metric
from sycam.metrics.complexity import Sparsity
from sycam.metrics.localisation import CentreOfMassDistance, EnergyPointingGame, OtsuIoU, ThresholdIoU
from sycam.workbench import CachedBatch, Workbench, mean_score

#: metrics that may be scored on maps and masks at a reduced resolution: each is a ratio or a
#: distribution of pixel values (IoU, energy share, centre of mass over the diagonal, Gini index)
RESOLUTION_FREE: tuple[type, ...] = (OtsuIoU, ThresholdIoU, EnergyPointingGame, CentreOfMassDistance, Sparsity)

ETA = 3  # promotion factor: the best third goes on, with three times the images
FIRST_IMAGES = 16  # images of the first rung
MIN_SIDE = 32  # no rung below 32×32 pixels


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
        """The maps of the first chunk of rung 0 (what an observational fingerprint is taken of)."""
        if self.rungs[0].exact:  # no partial rung: the first 16 images, as a probe
            return compiled(_head(self.bench.batches[0].caps, 16), params)
        return compiled(self._chunks[0][0].caps, params)

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
        Y=take(lambda cb: cb.caps.Y), logits=take(lambda cb: cb.caps.logits), input_size=first.caps.input_size)
    masks = take(lambda cb: cb.batch.masks) if first.batch.masks is not None else None
    batch = Batch(images=take(lambda cb: cb.batch.images), labels=take(lambda cb: cb.batch.labels), masks=masks)
    return CachedBatch(batch, take(lambda cb: cb.targets), caps)


def _head(c: Captures, n: int) -> Captures:
    cut = lambda d: {k: v[:n] for k, v in d.items()}  # noqa: E731
    return Captures(A=cut(c.A), G=cut(c.G), S=cut(c.S), D=cut(c.D), Y=c.Y[:n], logits=c.logits[:n], input_size=c.input_size)


def _view(sub: CachedBatch, i: int, j: int, side: int | None) -> CachedBatch:
    """Images ``i:j`` of ``sub``, finished at ``side``×``side`` (None: the input size)."""
    cut = lambda d: {k: v[i:j] for k, v in d.items()}  # noqa: E731
    c = sub.caps
    size = c.input_size if side is None else (side, side)
    caps = Captures(A=cut(c.A), G=cut(c.G), S=cut(c.S), D=cut(c.D), Y=c.Y[i:j], logits=c.logits[i:j], input_size=size)
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


@dataclass
class Race:
    """Asynchronous successive halving over candidates numbered 0, 1, 2, ... in arrival order.

    ``signs``: +1 where a metric is better higher, -1 where lower. A candidate that reached rung
    ``k`` (not the last) is promotable when, among the candidates that reached ``k`` so far, it is
    in the top ``⌊n_k/η⌋`` on some metric, or it is the best of its group (``group``: its program
    size, so that the hall of fame's smallest programs are scored exactly too). NaN ranks last and
    is never promoted. Ties go to the earlier candidate, so the race is deterministic: the same
    values in the same order give the same promotions.
    """

    n_rungs: int
    signs: tuple[int, ...]
    eta: int = ETA
    values: list[dict[int, tuple[float, ...]]] = field(default_factory=list)
    promoted: list[set[int]] = field(default_factory=list)
    _sorted: list[list[list[tuple[float, int]]]] = field(default_factory=list)
    _best_of_group: list[dict[Hashable, tuple[tuple[float, int], int]]] = field(default_factory=list)
    group: dict[int, Hashable] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.n_rungs < 1 or self.eta < 2:
            raise ValueError(f"race: n_rungs >= 1 and eta >= 2, got {self.n_rungs}, {self.eta}")
        self.values = [{} for _ in range(self.n_rungs)]
        self.promoted = [set() for _ in range(self.n_rungs)]
        self._sorted = [[[] for _ in self.signs] for _ in range(self.n_rungs)]
        self._best_of_group = [{} for _ in range(self.n_rungs)]

    def tell(self, cand: int, rung: int, values: tuple[float, ...], group: Hashable = None) -> None:
        """Candidate ``cand`` scored ``values`` at ``rung`` (a NaN anywhere: it stops here)."""
        if cand in self.values[rung]:
            raise ValueError(f"race: candidate {cand} was already told at rung {rung}")
        if rung > 0 and cand not in self.promoted[rung - 1]:
            raise ValueError(f"race: candidate {cand} reached rung {rung} without being promoted")
        if group is not None:
            self.group[cand] = group
        self.values[rung][cand] = values
        if any(math.isnan(v) for v in values):
            self.dropped.add(cand)
            return
        for i, sign in enumerate(self.signs):
            bisect.insort(self._sorted[rung][i], _rank_key(values, i, sign, cand))
        g = self.group.get(cand)
        if g is not None:
            key = _rank_key(values, 0, self.signs[0], cand)
            best = self._best_of_group[rung].get(g)
            if best is None or key < best[0]:
                self._best_of_group[rung][g] = (key, cand)

    def promotable(self, rung: int) -> list[int]:
        """Candidates at ``rung`` that qualify for ``rung + 1`` and were not promoted yet, best first."""
        if rung >= self.n_rungs - 1:
            return []
        top = len(self.values[rung]) // self.eta
        chosen = {key[1] for ranked in self._sorted[rung] for key in ranked[:top]}
        chosen |= {cand for _, cand in self._best_of_group[rung].values()}
        chosen -= self.promoted[rung]
        return sorted(chosen, key=lambda c: _rank_key(self.values[rung][c], 0, self.signs[0], c))

    def next_promotion(self) -> tuple[int, int] | None:
        """(candidate, rung to score it at) for the highest rung with a promotable candidate, marking
        it promoted; None when no candidate qualifies (then a new one should enter rung 0)."""
        for rung in range(self.n_rungs - 2, -1, -1):
            ready = self.promotable(rung)
            if ready:
                self.promoted[rung].add(ready[0])
                return ready[0], rung + 1
        return None

    def at(self, rung: int) -> dict[int, tuple[float, ...]]:
        return self.values[rung]

    def counts(self) -> list[int]:
        return [len(v) for v in self.values]


__all__ = ["RESOLUTION_FREE", "Race", "Rung", "RungBench", "reduced_side", "schedule"]
