"""Complexity: how concentrated (sparse) a saliency map is."""
from __future__ import annotations

import torch
from torch import Tensor

from sycam.errors import MetricError
from sycam.metrics.base import Metric, MetricInputs


def gini(values: Tensor) -> Tensor:
    """Gini index of non-negative values (B, n) → (B,) in [0, 1 − 1/n].

    Hurley & Rickard's form ("Comparing Measures of Sparsity", IEEE TIT 2009): with the values
    sorted ascending, ``c_(1) ≤ … ≤ c_(n)``,
    ``G = 1 − 2 Σ_k (c_(k) / ‖c‖₁) · (n − k + ½) / n``.
    Uniform values give 0, a one-hot vector ``1 − 1/n``. An all-zero vector is treated as uniform
    (no concentration): 0.
    """
    if values.dim() != 2:
        raise MetricError(f"gini: values must be (B, n), got {tuple(values.shape)}")
    if bool((values < 0).any()):
        raise MetricError("gini: values must be non-negative")
    v = values.float().sort(dim=1).values
    n = v.shape[1]
    total = v.sum(1)
    k = torch.arange(1, n + 1, dtype=torch.float32, device=v.device)
    weights = (n - k + 0.5) / n
    g = 1 - 2 * (v * weights).sum(1) / total.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(total > 0, g, torch.zeros_like(g))


class Sparsity(Metric):
    """``sparsity``: Gini index of the map's pixel values (:func:`gini`), higher = sparser.

    Chalasani et al., "Concise Explanations of Neural Networks using Adversarial Training", ICML
    2020 (the Gini index as a sparseness measure of attributions; Quantus's "Sparseness").
    Sparsity is a complexity measure, not a quality measure by itself: ``higher_is_better`` is
    True in the sense "more concise", and it is usually traded off against localisation or
    faithfulness. Always defined: constant and all-zero maps score 0, a single hot pixel
    ``1 − 1/(H·W)``.
    """

    name = "sparsity"
    higher_is_better = True
    needs: frozenset[str] = frozenset()

    def compute(self, inputs: MetricInputs) -> Tensor:
        # maps may dip a hair below 0 from float error (validation allows 1e-4)
        return gini(inputs.maps.flatten(1).clamp_min(0))
