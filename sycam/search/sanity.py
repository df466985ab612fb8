"""Sanity checks for many programs at the price of a few captures.

A search scores thousands of programs; re-running a randomised model for each one (as the
``randomisation`` metric does in ``sycam evaluate``) would cost a cascade of forward and backward
passes per program. :class:`SanityBench` captures a fixed set of images once for the trained model,
once per step of the cascading randomisation, and once per comparison class; every program is then
checked on those captures alone. The values are the ones :mod:`sycam.metrics.sanity` defines (same
cascade, same seed, same rank correlation), so what the search checks is what ``sycam evaluate``
reports.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from sycam.capture import CaptureRequest, Captures, capture
from sycam.compile import CompiledProgram
from sycam.errors import ProgramRuntimeError
from sycam.models.bundle import ModelBundle

#: the checks a synthesis applies, in the order they are printed
CHECKS = ("randomisation", "class_sensitivity")
MODES = ("require", "flag", "off")


class SanityBench:
    """The trained, randomised and other-class captures of ``images01`` for ``request``.

    ``targets`` are the classes explained; the randomised models explain the same classes (the
    question is whether the map still depends on the learned weights, not which class a random
    network would predict).
    """

    def __init__(self, bundle: ModelBundle, images01: Tensor, targets: Tensor, request: CaptureRequest,
                 seed: int = 0) -> None:
        from sycam.metrics import sanity as S

        x = bundle.normalize(images01)
        self.n = int(images01.shape[0])
        self.base = capture(bundle.module, x, targets, request)
        steps = S.randomisation_steps(bundle.module, stage_layers=bundle.stage_layers)
        self.steps: list[tuple[str, Captures]] = [
            (name, capture(copy, x, targets, request)) for name, copy in S.cascading_randomisation(bundle.module, steps, seed)
        ]
        other = S.other_classes(self.base.logits, targets, "random", seed=seed)
        self.other = capture(bundle.module, x, other, request)

    def values(self, compiled: CompiledProgram, params: Mapping[str, float] | None = None) -> dict[str, float]:
        """Mean value of each check over the images (NaN where the program is invalid here)."""
        from sycam.metrics import sanity as S

        nan = {c: math.nan for c in CHECKS}
        try:
            maps = compiled(self.base, params)
        except ProgramRuntimeError:
            return nan
        per_step = [_similarity(maps, compiled, caps, params) for _, caps in self.steps]
        out = dict(nan)
        if per_step:
            out["randomisation"] = _mean(S.summarise_cascade(torch.stack(per_step)))
        out["class_sensitivity"] = _mean(_similarity(maps, compiled, self.other, params))
        return out


def _similarity(maps: Tensor, compiled: CompiledProgram, caps: Captures, params) -> Tensor:
    from sycam.metrics import sanity as S

    try:
        other = compiled(caps, params)
    except ProgramRuntimeError:
        # the map no longer exists (NaN/Inf) once the weights or the class changed: it changed
        return torch.zeros(maps.shape[0], device=maps.device)
    return S.spearman(maps, other)


def _mean(v: Tensor) -> float:
    valid = v[~torch.isnan(v)]
    return float(valid.mean()) if valid.numel() else math.nan


def failures(values: Mapping[str, float]) -> list[str]:
    """The checks whose value is at or above its threshold (``sycam.metrics.sanity.THRESHOLDS``)."""
    from sycam.metrics import sanity as S

    return [c for c in CHECKS if not math.isnan(values.get(c, math.nan)) and values[c] >= S.THRESHOLDS[c]]


__all__ = ["CHECKS", "MODES", "SanityBench", "failures"]
