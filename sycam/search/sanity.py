"""Sanity checks for many programs at the price of a few captures.

A search scores thousands of programs; re-running a randomised model for each one (as the
``randomisation_top`` metric does in ``sycam evaluate``) would cost a forward and a backward pass
per program. :class:`SanityBench` captures a fixed set of images once for the trained model, once
for the model with its head re-initialised (the first step of Adebayo et al.'s cascading
randomisation) and once for a random other class; every program is then checked on those captures
alone. The values are those of :mod:`sycam.metrics.sanity` (same step, same seed, same
similarity), so what the validation checks give is what ``sycam evaluate --metrics
randomisation_top,class_sensitivity`` reports; the search's own checks on train rank the maps at
racing's reduced side (56×56 for 224×224 inputs), which changed no value by more than 0.002 on 12
programs on MobileNetV2 (32 validation images), at a sixth of the time.

Why the head step and not the whole cascade: the class-blind programs a search finds
(``sq(sq(sq(mean_c(sq(A)))))``) keep their map exactly when the head is re-initialised (ρ = 1),
while deeper steps change the activations of every program, informative or not, and a mean over
the cascade dilutes exactly the step that tells them apart (experiments/sanity/calibration.md).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Mapping

import torch
from torch import Tensor

from sycam.capture import CaptureRequest, Captures, capture
from sycam.compile import CompiledProgram
from sycam.errors import ProgramRuntimeError
from sycam.metrics.cascade import cascading_randomisation, randomisation_steps
from sycam.metrics.sanity import THRESHOLDS, centred_ranks, other_classes, passes, similarity
from sycam.models.bundle import ModelBundle

#: the checks a synthesis applies, in the order they are printed (names of sycam.metrics)
CHECKS = ("randomisation_top", "class_sensitivity")
MODES = ("require", "flag", "off")


class SanityBench:
    """The trained, head-randomised and other-class captures of ``images01`` for ``request``.

    ``targets`` are the classes explained; the randomised model explains the same classes (the
    question is whether the map still depends on the learned weights, not which class a random
    network would predict). ``side``: maps are finished (and ranked) at ``side``×``side`` instead
    of the input size, as racing's partial rungs do. Why: ranking 50,176 pixels per image made the
    search's per-trial checks most of its time (73 s of a 240 s MobileNetV2 run); the search's own
    checks (Optuna's constraints, the enumerated programs' admission) use a reduced side, the
    validation checks that decide the hall of fame the full input size. ``seconds``: what the
    three captures took.
    """

    def __init__(self, bundle: ModelBundle, images01: Tensor, targets: Tensor, request: CaptureRequest,
                 seed: int = 0, side: int | None = None) -> None:
        t0 = time.perf_counter()
        x = bundle.normalize(images01)
        self.n = int(images01.shape[0])
        self.base = capture(bundle.module, x, targets, request)
        steps = randomisation_steps(bundle.module, "blocks", bundle.stage_layers, tuple(images01.shape[-2:]))[:1]
        self.head: list[Captures] = [capture(copy, x, targets, request)
                                     for _, copy in cascading_randomisation(bundle.module, steps, seed)]
        other = other_classes(targets, int(self.base.logits.shape[1]), seed)
        self.other = capture(bundle.module, x, other, request)
        if side is not None:
            self.base, self.other = _at(self.base, side), _at(self.other, side)
            self.head = [_at(c, side) for c in self.head]
        self.seconds = time.perf_counter() - t0

    def values(self, compiled: CompiledProgram, params: Mapping[str, float] | None = None) -> dict[str, float]:
        """Mean value of each check over the images (NaN where the program is invalid here)."""
        out = {c: math.nan for c in CHECKS}
        try:
            maps = compiled(self.base, params).float()
        except ProgramRuntimeError:
            return out
        ranks = centred_ranks(maps)  # once for both comparisons
        if self.head:
            out["randomisation_top"] = _mean(_similarity(maps, ranks, compiled, self.head[0], params).abs())
        out["class_sensitivity"] = _mean(_similarity(maps, ranks, compiled, self.other, params))
        return out


def rank_seconds_per_image(input_size: tuple[int, int], n: int = 8, device: torch.device | str = "cpu") -> float:
    """Seconds :func:`centred_ranks` takes per map of ``input_size`` (timed on ``n`` seeded maps):
    a validation check ranks three maps per image (what the final phase's estimate prices)."""
    maps = torch.rand((n, *input_size), generator=torch.Generator().manual_seed(0)).to(device)
    best = math.inf
    for _ in range(3):  # the first call is several times slower (allocations): the fastest of three
        t0 = time.perf_counter()
        centred_ranks(maps)
        best = min(best, time.perf_counter() - t0)
    return best / n


def _at(caps: Captures, side: int) -> Captures:
    return dataclasses.replace(caps, input_size=(side, side))


def _similarity(maps: Tensor, ranks: Tensor, compiled: CompiledProgram, caps: Captures, params) -> Tensor:
    try:
        other = compiled(caps, params)
    except ProgramRuntimeError:  # no map at all once the weights or the class changed: undefined
        return torch.full((maps.shape[0],), math.nan, device=maps.device)
    return similarity(maps, other.float(), ref_ranks=ranks)


def _mean(v: Tensor) -> float:
    valid = v[~torch.isnan(v)]
    return float(valid.mean()) if valid.numel() else math.nan


def failures(values: Mapping[str, float]) -> list[str]:
    """The checks a program fails: its value is above the check's threshold, or undefined on every
    image (a map that points nowhere cannot show that it depends on the weights or the class)."""
    return [c for c in CHECKS if not passes(c, values.get(c, math.nan))]


def thresholds() -> dict[str, float]:
    return {c: THRESHOLDS[c] for c in CHECKS}


__all__ = ["CHECKS", "MODES", "SanityBench", "failures", "thresholds"]
