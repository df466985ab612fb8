"""Sanity checks for many programs at the price of a few captures.

A search scores thousands of programs; re-running a randomised model for each one (as the
``randomisation_top`` metric does in ``sycam evaluate``) would cost a forward and a backward pass
per program. :class:`SanityBench` captures a fixed set of images once for the trained model, once
for the model with its head re-initialised (the first step of Adebayo et al.'s cascading
randomisation) and once for a random other class; every program is then checked on those captures
alone. The values are those of :mod:`sycam.metrics.sanity` (same step, same seed, same
similarity), so what the search checks is what ``sycam evaluate --metrics
randomisation_top,class_sensitivity`` reports.

Why the head step and not the whole cascade: the class-blind programs a search finds
(``sq(sq(sq(mean_c(sq(A)))))``) keep their map exactly when the head is re-initialised (ρ = 1),
while deeper steps change the activations of every program, informative or not, and a mean over
the cascade dilutes exactly the step that tells them apart (experiments/sanity/calibration.md).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from sycam.capture import CaptureRequest, Captures, capture
from sycam.compile import CompiledProgram
from sycam.errors import ProgramRuntimeError
from sycam.metrics.cascade import cascading_randomisation, randomisation_steps
from sycam.metrics.sanity import THRESHOLDS, other_classes, passes, similarity
from sycam.models.bundle import ModelBundle

#: the checks a synthesis applies, in the order they are printed (names of sycam.metrics)
CHECKS = ("randomisation_top", "class_sensitivity")
MODES = ("require", "flag", "off")


class SanityBench:
    """The trained, head-randomised and other-class captures of ``images01`` for ``request``.

    ``targets`` are the classes explained; the randomised model explains the same classes (the
    question is whether the map still depends on the learned weights, not which class a random
    network would predict).
    """

    def __init__(self, bundle: ModelBundle, images01: Tensor, targets: Tensor, request: CaptureRequest,
                 seed: int = 0) -> None:
        x = bundle.normalize(images01)
        self.n = int(images01.shape[0])
        self.base = capture(bundle.module, x, targets, request)
        steps = randomisation_steps(bundle.module, "blocks", bundle.stage_layers, tuple(images01.shape[-2:]))[:1]
        self.head: list[Captures] = [capture(copy, x, targets, request)
                                     for _, copy in cascading_randomisation(bundle.module, steps, seed)]
        other = other_classes(targets, int(self.base.logits.shape[1]), seed)
        self.other = capture(bundle.module, x, other, request)

    def values(self, compiled: CompiledProgram, params: Mapping[str, float] | None = None) -> dict[str, float]:
        """Mean value of each check over the images (NaN where the program is invalid here)."""
        out = {c: math.nan for c in CHECKS}
        try:
            maps = compiled(self.base, params)
        except ProgramRuntimeError:
            return out
        if self.head:
            out["randomisation_top"] = _mean(_similarity(maps, compiled, self.head[0], params).abs())
        out["class_sensitivity"] = _mean(_similarity(maps, compiled, self.other, params))
        return out


def _similarity(maps: Tensor, compiled: CompiledProgram, caps: Captures, params) -> Tensor:
    try:
        other = compiled(caps, params)
    except ProgramRuntimeError:  # no map at all once the weights or the class changed: undefined
        return torch.full((maps.shape[0],), math.nan, device=maps.device)
    return similarity(maps.float(), other.float())


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
