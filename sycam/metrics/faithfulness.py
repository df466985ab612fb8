"""Faithfulness metrics: does the model's confidence follow what the map calls important?

All of them perturb the images according to the map and read the model's target probability
through ``score_fn`` (no gradients; called in chunks of at most ``chunk_size`` images, so memory
stays bounded whatever the batch size). Pixel orderings break ties between equal saliency values
by a seeded random permutation (deterministic, and free of the raster-order bias a stable sort
would give flat regions such as the zeros of a ReLU'd map), so constant and all-zero maps have
well-defined scores: those of a random pixel order.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sycam.errors import MetricError
from sycam.metrics.base import Metric, MetricInputs, check_chunk_size, score_chunked, validate_inputs
from sycam.metrics.impute import IMPUTE_SOLVERS, linear_impute

SUBSTRATES = ("zeros", "blur", "mean")


# ---------------------------------------------------------------------------------------------
# shared helpers


def seeded_normal(shape: Sequence[int], seed: int, indices: Tensor, device: torch.device) -> Tensor:
    """Standard normal noise (len(indices), *shape): row i drawn on the CPU from a generator seeded
    with ``(seed, indices[i])``, so the noise of a given (image, level) pair does not depend on the
    chunk size, the batch composition beyond its index, or the device."""
    rows = []
    for i in indices.tolist():
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(i)) % (2**63))
        rows.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(rows).to(device)


def pixel_ranks(maps: Tensor, descending: bool = True, seed: int = 0) -> Tensor:
    """Rank of every pixel in the removal order: (B, H, W) maps → (B, H·W) long, 0 = first.

    ``descending`` orders from most to least salient (MoRF); ties are broken by one seeded random
    permutation of the pixel positions (shared by the batch), so the result is deterministic.
    """
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    n = flat.shape[1]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).to(maps.device)
    order = perm[torch.argsort(flat[:, perm], dim=1, descending=descending, stable=True)]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=maps.device).expand(b, n).contiguous())
    return ranks


def gaussian_blur(images: Tensor, ksize: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images (replicate padding, any image size).

    Kernel ``k(i) ∝ exp(−i² / 2σ²)`` for ``i ∈ [−⌊ksize/2⌋, ⌊ksize/2⌋]``, normalised to sum 1.
    Defaults (11, 5) are RISE's insertion substrate (Petsiuk et al. 2018).
    """
    if ksize < 1 or ksize % 2 == 0:
        raise MetricError(f"gaussian_blur: ksize must be a positive odd int, got {ksize}")
    if sigma <= 0:
        raise MetricError(f"gaussian_blur: sigma must be > 0, got {sigma}")
    n, c, h, w = images.shape
    half = ksize // 2
    i = torch.arange(-half, half + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    k = k / k.sum()
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (half, half, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, half, half), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def make_substrate(images: Tensor, kind: str) -> Tensor:
    """What removed pixels become: ``zeros`` (black), ``blur`` (:func:`gaussian_blur`) or
    ``mean`` (each image's mean colour)."""
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "blur":
        return gaussian_blur(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    raise MetricError(f"unknown substrate {kind!r}; expected one of {SUBSTRATES}")


def _check_substrate(kind: str, where: str) -> str:
    if kind not in SUBSTRATES:
        raise MetricError(f"{where}: substrate must be one of {SUBSTRATES}, got {kind!r}")
    return kind


def _n_pixels(fraction: float, n: int) -> int:
    # round half up: the count of pixels a fraction of the image stands for
    return int(math.floor(fraction * n + 0.5))


# ---------------------------------------------------------------------------------------------
# deletion / insertion


class _CurveMetric(Metric):
    """Shared machinery of deletion and insertion (RISE's causal metrics)."""

    needs = frozenset({"model"})
    _insert: bool = False

    def __init__(self, steps: int = 32, substrate: str = "zeros", chunk_size: int = 64, seed: int = 0) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise MetricError(f"{self.name}: steps must be a positive int, got {steps!r}")
        self.steps = steps
        self.substrate = _check_substrate(substrate, self.name)
        self.chunk_size = check_chunk_size(chunk_size, self.name)
        self.seed = seed

    def curves(self, inputs: MetricInputs) -> Tensor:
        """The probability curves (B, steps+1): entry k is the score after step k (k/steps of
        the pixels deleted, resp. inserted). Validates ``inputs``."""
        validate_inputs(inputs, self.name, self.needs)
        return self._curves(inputs)

    def _curves(self, inputs: MetricInputs) -> Tensor:
        images, targets, maps = inputs.images, inputs.targets, inputs.maps
        assert images is not None and targets is not None and inputs.score_fn is not None
        b, _, h, w = images.shape
        n = h * w
        ranks = pixel_ranks(maps, descending=True, seed=self.seed)
        sub = make_substrate(images, self.substrate)
        counts = torch.tensor([_n_pixels(k / self.steps, n) for k in range(self.steps + 1)], device=maps.device)
        pairs = b * (self.steps + 1)
        out = torch.empty(pairs, dtype=torch.float32, device=maps.device)
        with torch.no_grad():
            for s in range(0, pairs, self.chunk_size):
                idx = torch.arange(s, min(s + self.chunk_size, pairs), device=maps.device)
                bi, ki = idx // (self.steps + 1), idx % (self.steps + 1)
                moved = (ranks[bi] < counts[ki][:, None]).view(-1, 1, h, w)
                if self._insert:
                    x = torch.where(moved, images[bi], sub[bi])
                else:
                    x = torch.where(moved, sub[bi], images[bi])
                out[s : s + len(idx)] = score_chunked(inputs.score_fn, x, targets[bi], self.chunk_size, self.name)
        return out.view(b, self.steps + 1)

    def compute(self, inputs: MetricInputs) -> Tensor:
        return torch.trapezoid(self._curves(inputs), dx=1.0 / self.steps, dim=1)


class Deletion(_CurveMetric):
    """``deletion``: area under the probability curve as the most salient pixels are deleted.

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC
    2018. Pixels are ordered by saliency (descending; ties random, seeded); at step k = 0..S
    (S = ``steps``, default 32) the first ``round(k·HW/S)`` pixels are replaced by the substrate
    (default ``zeros``: black in [0, 1] pixel space), giving ``p_k``;
    ``AUC = (1/S)·(p_0/2 + p_1 + … + p_{S−1} + p_S/2)`` (trapezoid rule over the deleted fraction
    in [0, 1]). Lower is better. Always defined (constant maps get a random order).
    """

    name = "deletion"
    higher_is_better = False
    _insert = False


class Insertion(_CurveMetric):
    """``insertion``: area under the probability curve as the most salient pixels are inserted.

    Petsiuk et al., RISE, BMVC 2018. Start from the substrate (default ``blur``: Gaussian blur,
    kernel 11, σ = 5, as in RISE) and restore the original pixels in saliency order (descending;
    ties random, seeded): at step k the first ``round(k·HW/S)`` pixels are original, giving ``p_k``;
    ``AUC = (1/S)·(p_0/2 + p_1 + … + p_{S−1} + p_S/2)``. Higher is better. Always defined.
    """

    name = "insertion"
    higher_is_better = True
    _insert = True

    def __init__(self, steps: int = 32, substrate: str = "blur", chunk_size: int = 64, seed: int = 0) -> None:
        super().__init__(steps=steps, substrate=substrate, chunk_size=chunk_size, seed=seed)


# ---------------------------------------------------------------------------------------------
# average drop / increase, Finer-CAM's drop


def _masked_scores(inputs: MetricInputs, masked: Tensor, chunk_size: int, name: str) -> tuple[Tensor, Tensor]:
    """(Y, O): scores of the original images and of ``masked`` (B, 3, H, W), chunked together."""
    images, targets = inputs.images, inputs.targets
    assert images is not None and targets is not None and inputs.score_fn is not None
    b = images.shape[0]
    both = score_chunked(inputs.score_fn, torch.cat([images, masked]), torch.cat([targets, targets]), chunk_size, name)
    return both[:b], both[b:]


class _ExplanationMasked(Metric):
    """Metrics comparing ``Y = p(image)`` with ``O = p(image ⊙ map)`` (the map multiplies every channel)."""

    def __init__(self, chunk_size: int = 64) -> None:
        self.chunk_size = check_chunk_size(chunk_size, self.name)

    def scores(self, inputs: MetricInputs) -> tuple[Tensor, Tensor]:
        assert inputs.images is not None
        return _masked_scores(inputs, inputs.images * inputs.maps[:, None], self.chunk_size, self.name)


class AverageDrop(_ExplanationMasked):
    """``avg_drop``: drop of confidence when only the salient part of the image is shown.

    Chattopadhay et al., "Grad-CAM++", WACV 2018: with ``Y = p(image)`` and
    ``O = p(image ⊙ map)`` (the map multiplies every channel), ``drop = max(0, Y − O) / Y · 100``
    per image; its mean is the paper's Average Drop %. Lower is better.

    Edge cases: ``Y = 0`` → NaN (relative drop undefined). All-zero map → the black image is
    scored (a defined, usually large, drop).
    """

    name = "avg_drop"
    higher_is_better = False
    needs = frozenset({"model"})

    def compute(self, inputs: MetricInputs) -> Tensor:
        y, o = self.scores(inputs)
        drop = (y - o).clamp_min(0) / y * 100
        return torch.where(y > 0, drop, torch.full_like(drop, float("nan")))


class AverageIncrease(_ExplanationMasked):
    """``avg_increase``: does showing only the salient part raise the confidence?

    Chattopadhay et al., "Grad-CAM++", WACV 2018 ("Increase in Confidence"): with ``Y = p(image)``
    and ``O = p(image ⊙ map)``, the per-image value is ``100 · 1[O > Y]``, so that the mean is
    the paper's percentage. Higher is better. Always defined.
    """

    name = "avg_increase"
    higher_is_better = True
    needs = frozenset({"model"})

    def compute(self, inputs: MetricInputs) -> Tensor:
        y, o = self.scores(inputs)
        return (o > y).float() * 100


class FinerDrop(Metric):
    """``finer_drop``: relative confidence drop after zeroing the top 5 % most salient pixels.

    Finer-CAM (Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation", CVPR 2025) measures how much the target confidence falls when the most salient
    pixels are removed: with ``k = max(1, round(fraction·HW))`` (fraction 0.05) pixels of highest
    saliency set to 0 (ties random, seeded), ``(Y − Y_masked) / Y``. Higher is better; negative
    when masking raises the confidence.

    Edge cases: ``Y = 0`` → NaN. Constant maps: a random (seeded) 5 % of the pixels.
    """

    name = "finer_drop"
    higher_is_better = True
    needs = frozenset({"model"})

    def __init__(self, fraction: float = 0.05, chunk_size: int = 64, seed: int = 0) -> None:
        if not (0.0 < fraction <= 1.0):
            raise MetricError(f"finer_drop: fraction must lie in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.chunk_size = check_chunk_size(chunk_size, self.name)
        self.seed = seed

    def compute(self, inputs: MetricInputs) -> Tensor:
        images = inputs.images
        assert images is not None
        b, _, h, w = images.shape
        k = max(1, _n_pixels(self.fraction, h * w))
        top = (pixel_ranks(inputs.maps, descending=True, seed=self.seed) < k).view(b, 1, h, w)
        y, o = _masked_scores(inputs, images.masked_fill(top, 0.0), self.chunk_size, self.name)
        rel = (y - o) / y
        return torch.where(y > 0, rel, torch.full_like(rel, float("nan")))


# ---------------------------------------------------------------------------------------------
# ROAD


class _RoadBase(Metric):
    needs = frozenset({"model"})

    def __init__(
        self,
        percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        noise_std: float = 0.01,
        chunk_size: int = 64,
        seed: int = 0,
        solver: str = "auto",
        tol: float = 1e-5,
        max_iter: int = 300,
    ) -> None:
        ps = tuple(float(p) for p in percentages)
        if not ps or any(not (0.0 < p < 1.0) for p in ps):
            raise MetricError(f"{self.name}: percentages must be a non-empty list of fractions in (0, 1), got {percentages!r}")
        if noise_std < 0:
            raise MetricError(f"{self.name}: noise_std must be >= 0, got {noise_std}")
        self.percentages = ps
        self.noise_std = float(noise_std)
        self.chunk_size = check_chunk_size(chunk_size, self.name)
        self.seed = seed
        if solver not in IMPUTE_SOLVERS:
            raise MetricError(f"{self.name}: solver must be one of {IMPUTE_SOLVERS}, got {solver!r}")
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter

    def road_curves(self, inputs: MetricInputs, morf: bool) -> Tensor:
        """Probabilities (B, len(percentages)) after removing each fraction (MoRF or LeRF)."""
        images, targets, maps = inputs.images, inputs.targets, inputs.maps
        assert images is not None and targets is not None and inputs.score_fn is not None
        b, _, h, w = images.shape
        n = h * w
        ranks = pixel_ranks(maps, descending=morf, seed=self.seed)
        counts = torch.tensor([_n_pixels(p, n) for p in self.percentages], device=maps.device)
        if int(counts.max()) >= n:
            raise MetricError(f"{self.name}: a percentage removes every pixel of a {h}x{w} image")
        levels = len(self.percentages)
        pairs = b * levels
        out = torch.empty(pairs, dtype=torch.float32, device=maps.device)
        with torch.no_grad():
            for s in range(0, pairs, self.chunk_size):
                idx = torch.arange(s, min(s + self.chunk_size, pairs), device=maps.device)
                bi, li = idx // levels, idx % levels
                removed = (ranks[bi] < counts[li][:, None]).view(-1, h, w)
                x = linear_impute(images[bi], removed, self.solver, self.tol, self.max_iter)
                if self.noise_std > 0:
                    # the same draws for MoRF and LeRF: common random numbers make `road` less noisy
                    noise = seeded_normal(images.shape[1:], self.seed, idx, x.device)
                    noisy = (x + self.noise_std * noise.to(x.dtype)).clamp(0, 1)
                    x = torch.where(removed[:, None], noisy, x)
                out[s : s + len(idx)] = score_chunked(inputs.score_fn, x, targets[bi], self.chunk_size, self.name)
        return out.view(b, levels)


class RoadMoRF(_RoadBase):
    """``road_morf``: mean target probability after removing the MOST salient pixels with ROAD.

    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
    (ROAD: RemOve And Debias), ICML 2022. For each fraction q in ``percentages`` (default
    0.1, 0.2, …, 0.9) the ``round(q·HW)`` most salient pixels (ties random, seeded) are replaced by
    noisy linear imputation: :func:`linear_impute` (each removed pixel the weighted mean of its
    8 neighbours, the sparse system solved exactly or by CG, see ``solver``), plus Gaussian noise
    σ = ``noise_std`` = 0.01 in [0, 1] pixel units (seeded per image and level,
    :func:`seeded_normal`), clipped to [0, 1] since ``score_fn`` takes [0, 1] images.
    Score = mean over q of the target probability. Lower is better. Always defined (every level
    keeps at least one pixel; a level that would remove all is rejected).
    """

    name = "road_morf"
    higher_is_better = False

    def compute(self, inputs: MetricInputs) -> Tensor:
        return self.road_curves(inputs, morf=True).mean(1)


class RoadLeRF(_RoadBase):
    """``road_lerf``: mean target probability after removing the LEAST salient pixels with ROAD.

    Rong et al., ROAD, ICML 2022; as :class:`RoadMoRF` but removing the ``round(q·HW)`` pixels of
    lowest saliency. Higher is better. Always defined.
    """

    name = "road_lerf"
    higher_is_better = True

    def compute(self, inputs: MetricInputs) -> Tensor:
        return self.road_curves(inputs, morf=False).mean(1)


class Road(_RoadBase):
    """``road``: ROAD LeRF − MoRF (Rong et al., ICML 2022), one number where higher is better.

    ``road = mean_q p_LeRF(q) − mean_q p_MoRF(q)`` with the settings of :class:`RoadMoRF`
    (pytorch-grad-cam's ``ROADCombined`` reports half of this). Both orders use the same noise
    draws (common random numbers), which lowers the variance of the difference.
    A faithful map keeps the confidence when unimportant pixels go and loses it when important
    ones go. Always defined.
    """

    name = "road"
    higher_is_better = True

    def compute(self, inputs: MetricInputs) -> Tensor:
        return self.road_curves(inputs, morf=False).mean(1) - self.road_curves(inputs, morf=True).mean(1)
