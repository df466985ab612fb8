"""Robustness: does the explanation stay put when the input changes in ways the label ignores?"""
from __future__ import annotations

import torch
from torch import Tensor

from sycam.errors import MetricError
from sycam.metrics.base import Metric, MetricInputs, check_chunk_size, checked_maps, score_chunked
from sycam.metrics.faithfulness import seeded_normal


def pearson_maps(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of paired maps (N, H, W) × (N, H, W) → (N,).

    ``r = Σ (a − ā)(b − b̄) / √(Σ (a − ā)² · Σ (b − b̄)²)``. Constant maps have no variance, so r is
    undefined there; we define r = 1 when both maps are constant (the same "no preference"
    explanation) and r = 0 when exactly one is (nothing in common).
    """
    if a.shape != b.shape or a.dim() != 3:
        raise MetricError(f"pearson_maps: expected two (N, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.flatten(1).float(), b.flatten(1).float()
    const_a = a.amax(1) == a.amin(1)
    const_b = b.amax(1) == b.amin(1)
    ac = a - a.mean(1, keepdim=True)
    bc = b - b.mean(1, keepdim=True)
    denom = (ac.square().sum(1) * bc.square().sum(1)).sqrt()
    r = (ac * bc).sum(1) / denom.clamp_min(torch.finfo(torch.float32).tiny)
    r = r.clamp(-1, 1)  # float error can leave |r| a hair above 1
    r = torch.where(const_a | const_b, torch.zeros_like(r), r)
    return torch.where(const_a & const_b, torch.ones_like(r), r)


class Robustness(Metric):
    """``robustness``: mean Pearson correlation between the map and the maps of noisy copies.

    For each image x with map m, ``n_samples`` (4) copies ``x_j = clip(x + σ ε_j, 0, 1)``,
    ``ε_j ~ N(0, I)`` with σ = 0.05 in [0, 1] pixel units (seeded per image and copy), are
    explained: ``m_j = explain_fn(x_j, target)``. A copy counts as label-preserving when the target
    probability stays within a factor of the original: ``p(x_j) ≥ min_ratio · p(x)``
    (``min_ratio`` 0.5; 0 keeps every copy and skips the ``score_fn`` calls, though the metric
    still declares ``"model"``). Score = mean over kept copies of
    ``pearson(m, m_j)`` (:func:`pearson_maps`), in [−1, 1]; higher is better. NaN where the map
    itself is constant (it points nowhere, so its consistency is undefined) or no copy is kept.
    A local-Lipschitz / max-sensitivity style consistency test (Alvarez-Melis & Jaakkola 2018,
    "On the Robustness of Interpretability Methods"; Yeh et al. 2019, "On the (In)fidelity and
    Sensitivity of Explanations"), with correlation instead of a norm so that it is invariant to
    the maps' scale, as CAM maps are.

    ``inputs.maps`` is taken as the explainer's map of the clean images (not recomputed).
    ``explain_fn`` is called outside ``torch.no_grad`` (CAM explainers need gradients).

    Edge cases: no copy label-preserving → NaN. Constant maps: see :func:`pearson_maps`.
    """

    name = "robustness"
    higher_is_better = True
    needs = frozenset({"model", "explainer"})

    def __init__(
        self, n_samples: int = 4, sigma: float = 0.05, min_ratio: float = 0.5, chunk_size: int = 64, seed: int = 0
    ) -> None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise MetricError(f"robustness: n_samples must be a positive int, got {n_samples!r}")
        if sigma < 0:
            raise MetricError(f"robustness: sigma must be >= 0, got {sigma}")
        if not (0.0 <= min_ratio <= 1.0):
            raise MetricError(f"robustness: min_ratio must lie in [0, 1], got {min_ratio}")
        self.n_samples = n_samples
        self.sigma = float(sigma)
        self.min_ratio = float(min_ratio)
        self.chunk_size = check_chunk_size(chunk_size, self.name)
        self.seed = seed

    def _explain(self, inputs: MetricInputs, x: Tensor, t: Tensor) -> Tensor:
        assert inputs.explain_fn is not None
        want = (x.shape[0],) + tuple(x.shape[2:])
        return checked_maps(inputs.explain_fn(x, t), want, "robustness: explain_fn", inputs.maps.device)

    def compute(self, inputs: MetricInputs) -> Tensor:
        images, targets, maps = inputs.images, inputs.targets, inputs.maps
        assert images is not None and targets is not None
        b = images.shape[0]
        k = self.n_samples
        pairs = b * k
        corr = torch.empty(pairs, dtype=torch.float32, device=maps.device)
        keep = torch.ones(pairs, dtype=torch.bool, device=maps.device)
        if self.min_ratio > 0:
            assert inputs.score_fn is not None
            p_clean = score_chunked(inputs.score_fn, images, targets, self.chunk_size, self.name)
        for s in range(0, pairs, self.chunk_size):
            idx = torch.arange(s, min(s + self.chunk_size, pairs), device=maps.device)
            bi = idx // k
            noise = seeded_normal(images.shape[1:], self.seed, idx, images.device).to(images.dtype)
            x = (images[bi] + self.sigma * noise).clamp(0, 1)
            if self.min_ratio > 0:
                p = score_chunked(inputs.score_fn, x, targets[bi], self.chunk_size, self.name)  # type: ignore[arg-type]
                keep[s : s + len(idx)] = p >= self.min_ratio * p_clean[bi]
            corr[s : s + len(idx)] = pearson_maps(maps[bi], self._explain(inputs, x, targets[bi]))
        corr, keep = corr.view(b, k), keep.view(b, k).float()
        n_kept = keep.sum(1)
        mean = (corr * keep).sum(1) / n_kept.clamp_min(1)
        # a constant map points nowhere: its consistency is undefined, not perfect (otherwise a
        # search for robustness finds programs that output nothing, as it did: sum_c(G) before
        # global pooling is constant over the image)
        flat = maps.flatten(1)
        constant = flat.amax(1) == flat.amin(1)
        return torch.where((n_kept > 0) & ~constant, mean, torch.full_like(mean, float("nan")))
