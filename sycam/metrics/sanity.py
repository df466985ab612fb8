"""Sanity checks as metrics: does the map depend on the learned weights and on the class explained?

Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (NeurIPS): an explanation that survives the
randomisation of the weights it explains, or that is the same whatever class is explained, is an
input feature detector (an edge or blob detector), not an explanation of the model. A metric
search exploits exactly such loopholes: class-blind programs like ``sq(sq(sq(mean_c(sq(A)))))``
(no gradient) "win" the energy pointing game. These metrics measure the similarity that should
vanish, so lower is better for all four:

- ``randomisation`` / ``randomisation_top``: :class:`ModelRandomisation`, :class:`RandomisationTop`
  (Quantus' Model Parameter Randomisation Test, cascade in :mod:`sycam.metrics.cascade`);
- ``class_sensitivity`` / ``class_sensitivity_top2``: :class:`ClassSensitivity`,
  :class:`ClassSensitivityTop2` (Quantus' Random Logit test, Sahoo et al. 2020).

The similarity is :func:`spearman`, the paper's first measure. :data:`THRESHOLDS` gives the
pass/fail levels and where they come from (experiments/sanity_calibration.py).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from sycam.errors import MetricError
from sycam.metrics.base import Metric, MetricInputs, checked_maps, validate_inputs
from sycam.metrics.cascade import GRANULARITIES, cascading_randomisation, randomisation_steps

__all__ = [
    "THRESHOLDS",
    "ClassSensitivity",
    "ClassSensitivityTop2",
    "ModelRandomisation",
    "RandomisationTop",
    "average_ranks",
    "other_classes",
    "passes",
    "similarity",
    "spearman",
]


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N of each row of ``x`` (B, N), ties given the mean of the ranks they span; float64.

    Sort each row; a run of equal values at sorted positions i..j (0-based) gets rank
    ``(i + j)/2 + 1``, found for all runs at once with a cumulative max of run starts and a
    reversed cumulative min of run ends. Exact: ranks are halves of integers below 2^53.
    """
    b, n = x.shape
    v, order = torch.sort(x, dim=1)  # the order within a tie does not change its mean rank
    starts = torch.ones_like(v, dtype=torch.bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    pos = torch.arange(n, device=x.device).expand(b, n)
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(1).values
    last = torch.where(ends, pos, torch.full_like(pos, n)).flip(1).cummin(1).values.flip(1)
    avg = (first + last).double() / 2 + 1
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman_inputs(a: Tensor, b: Tensor) -> None:
    """Raise :class:`MetricError` unless ``a`` and ``b`` are finite (B, H, W) maps of one shape on one device."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.dim() != 3:
        got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (a, b)]
        raise MetricError(f"spearman: expected two (B, H, W) tensors of one shape, got {got[0]} and {got[1]}")
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise MetricError("spearman: maps contain NaN or Inf")
    if a.device != b.device:
        raise MetricError(f"spearman: maps on different devices ({a.device}, {b.device})")


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of paired maps (B, H, W) × (B, H, W) → (B,) float32.

    ``ρ = Σ (r_a − r̄)(r_b − r̄) / √(Σ (r_a − r̄)² · Σ (r_b − r̄)²)``: the Pearson correlation of the
    pixels' average ranks (:func:`average_ranks`, ties share their mean rank, as
    ``scipy.stats.spearmanr``), with ``r̄ = (N + 1)/2`` (the mean of average ranks is exact).
    Spearman 1904; the first similarity of Adebayo et al. 2018 (Sanity Checks for Saliency Maps)
    and Quantus' default for the randomisation test. Ranked at FULL resolution (every pixel; no
    reduced grid), sums in float64. NaN where either map is constant (no ranking to correlate).
    """
    spearman_inputs(a, b)
    return _rho(centred_ranks(a), centred_ranks(b))


def centred_ranks(maps: Tensor) -> Tensor:
    """Average ranks of each map's pixels (B, H, W) → (B, H·W) float64, minus their mean (N + 1)/2:
    what :func:`spearman` correlates. Computed once per map where one map is compared with several
    (a sanity bench compares each program's map with two others)."""
    n = maps.shape[1] * maps.shape[2]
    return average_ranks(maps.reshape(maps.shape[0], n)) - (n + 1) / 2


def _rho(ra: Tensor, rb: Tensor) -> Tensor:
    va, vb = ra.square().sum(1), rb.square().sum(1)
    rho = ((ra * rb).sum(1) / (va * vb).sqrt()).clamp(-1, 1)
    rho = torch.where((va == 0) | (vb == 0), torch.full_like(rho, float("nan")), rho)
    return rho.float()


def similarity(ref: Tensor, other: Tensor, ref_ranks: Tensor | None = None) -> Tensor:
    """Class sensitivity's similarity of a map ``ref`` and the map ``other`` for another class: (B,).

    :func:`spearman`, except where ``other`` is constant and ``ref`` is not: 0 there (a constant
    map ranks nothing, so it keeps none of ``ref``'s ranking; the convention of
    :func:`sycam.metrics.robustness.pearson_maps`). NaN where ``ref`` is constant (a map that points
    nowhere has no ranking to keep or lose). ``ref_ranks``: :func:`centred_ranks` of ``ref``, when
    already computed (the same values; ``ref`` and ``other`` are validated as by :func:`spearman`).
    """
    if ref_ranks is None:
        rho = spearman(ref, other)
    else:
        spearman_inputs(ref, other)
        rho = _rho(ref_ranks, centred_ranks(other))
    flat_r, flat_o = ref.flatten(1), other.flatten(1)
    const_r = flat_r.amax(1) == flat_r.amin(1)
    const_o = flat_o.amax(1) == flat_o.amin(1)
    rho = torch.where(const_o & ~const_r, torch.zeros_like(rho), rho)
    return torch.where(const_r, torch.full_like(rho, float("nan")), rho)


class ModelRandomisation(Metric):
    """``randomisation``: how much of the map survives the cascading randomisation of the model.

    For the cascade steps k = 1..K of :func:`sycam.metrics.cascade.randomisation_steps`
    (``granularity`` "blocks": the head, then each stage block down to the input; "layers": every
    resettable module, Quantus' order), with θ_k the weights after re-initialising steps 1..k
    (:func:`~sycam.metrics.cascade.cascading_randomisation`, seeded by ``seed``):
    ``ρ_k = spearman(m_θ(x), m_θk(x))`` (:func:`spearman` of the trained model's map,
    ``inputs.maps``, and the explainer's map on the randomised copy, ``explain_with``, for the same
    image and target). Adebayo et al. 2018's model parameter randomisation test; Quantus' MPRT
    (Hedström et al. 2023) with its ``return_average_correlation`` summary.

    Value per image: the mean of ``|ρ_k|`` over the steps where ρ_k is defined, in [0, 1], lower
    is better. Why this summary: a single step judges only part of the network (after the head
    step alone, ``mean_c(sq(A))`` at MobileNetV2's last block keeps ρ = 1.000, and so do Grad-CAM++
    and LayerCAM, 0.979: experiments/sanity/calibration.md, while deeper steps separate methods that
    depend on the features from edge detectors); the mean over the cascade is the area under
    Adebayo et al.'s similarity-vs-depth curve and Quantus' average-correlation option. The absolute value: the
    test asks whether the map still depends on the trained weights, and a map that inverts under
    randomisation (ρ = −1) depends on them as much as one that stays (ρ = 1); without it an
    explainer could pass by anti-correlating. Quantus averages signed ρ (and, in 0.6.0, also the
    ρ = 1 of the unrandomised model: its loop skips a key "orig" that is stored as "original").
    :meth:`per_step` gives the signed ρ_k.

    Edge cases: a constant trained map → NaN (it has no ranking). A constant map on a randomised
    copy makes that step undefined (NaN in :meth:`per_step`) and it is left out of the mean: an
    explainer that yields no map once the weights are random has not shown that its map depends
    on them (``sq(sq(sq(mean_c(sq(A)))))`` underflows to an all-zero map on MobileNetV2's copies
    randomised below the head, and would score 0 on those steps if a constant counted as
    "unrelated"). NaN where every step is undefined. Cost: one deep copy of the model per batch
    and one explainer run (forward + backward) per step: 6 steps for MobileNetV2 by blocks.
    """

    name = "randomisation"
    higher_is_better = False
    needs = frozenset({"weights"})

    def __init__(self, granularity: str = "blocks", seed: int = 0, max_steps: int | None = None) -> None:
        if granularity not in GRANULARITIES:
            raise MetricError(f"{self.name}: granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise MetricError(f"{self.name}: max_steps must be a positive int or None, got {max_steps!r}")
        self.granularity = granularity
        self.seed = int(seed)
        self.max_steps = max_steps

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} (lower is better; needs weights; granularity="
                f"{self.granularity}, seed={self.seed}, max_steps={self.max_steps})>")

    def per_step(self, inputs: MetricInputs, validate: bool = True) -> dict[str, Tensor]:
        """Signed Spearman ρ_k per image for every step, in cascade order: ``{step: (B,)}`` (NaN where
        the trained or the randomised map is constant)."""
        if validate:
            validate_inputs(inputs, self.name, self.needs)
        model, explain_with, images, targets = inputs.model, inputs.explain_with, inputs.images, inputs.targets
        assert model is not None and explain_with is not None and images is not None and targets is not None
        steps = randomisation_steps(model, self.granularity, inputs.stage_layers, tuple(images.shape[-2:]))
        if self.max_steps is not None:
            steps = steps[: self.max_steps]
        out: dict[str, Tensor] = {}
        want = tuple(inputs.maps.shape)
        for name, randomised in cascading_randomisation(model, steps, self.seed):
            maps = checked_maps(explain_with(randomised, images, targets), want,
                                 f"{self.name}: explain_with (step {name!r})", inputs.maps.device)
            out[name] = spearman(inputs.maps.float(), maps)
        return out

    @staticmethod
    def summary(per_step: Mapping[str, Tensor]) -> Tensor:
        """The metric's value from :meth:`per_step`'s output: the mean of |ρ_k| over the steps where
        it is defined (NaN where none is)."""
        if not per_step:
            raise MetricError("randomisation: no steps to summarise")
        return torch.stack(list(per_step.values())).abs().nanmean(0)

    def compute(self, inputs: MetricInputs) -> Tensor:
        return self.summary(self.per_step(inputs, validate=False))


class RandomisationTop(ModelRandomisation):
    """``randomisation_top``: |ρ_1|, the similarity after re-initialising the top step only.

    The first step of :class:`ModelRandomisation`'s cascade (``head``: the modules after the last
    stage layer; for MobileNetV2 its last BatchNorm ``features.18.1`` and the classifier) —
    Adebayo et al.'s first column, and the cheapest check (one explainer run). Every program that
    reads only activations above the head keeps |ρ_1| ≈ 1 (``mean_c(sq(A))`` 1.000, Eigen-CAM 0.999
    on MobileNetV2); so do methods that re-weight the activations by the gradient's positive part
    (Grad-CAM++ 0.979, LayerCAM 0.978), while Grad-CAM gives 0.417 (calibration.md). Lower is
    better, in [0, 1].

    Edge cases: NaN where the trained map or the map on the randomised copy is constant (as a step
    of :class:`ModelRandomisation`).
    """

    name = "randomisation_top"

    def __init__(self, granularity: str = "blocks", seed: int = 0) -> None:
        super().__init__(granularity=granularity, seed=seed, max_steps=1)


def other_classes(targets: Tensor, num_classes: int, seed: int) -> Tensor:
    """One class ≠ target per image, uniform over the other ``num_classes − 1`` (Quantus' Random
    Logit draw): ``u ~ U{0, …, K−2}``, class ``u + [u ≥ t]``. Image i's draw comes from a CPU
    generator seeded with ``(seed, i)``, so it is reproducible and the same for every method
    scored on the batch."""
    if num_classes < 2:
        raise MetricError(f"class sensitivity needs at least 2 classes, got {num_classes}")
    u = torch.empty(len(targets), dtype=torch.long)
    for i in range(len(targets)):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + 104_729 + i) % (2**63))
        u[i] = int(torch.randint(0, num_classes - 1, (1,), generator=g))
    u = u.to(targets.device)
    return u + (u >= targets).long()


class ClassSensitivity(Metric):
    """``class_sensitivity``: similarity of the map for the target and the map for a random class.

    ``ρ = similarity(m(x, t), m(x, c))`` (:func:`similarity`, Spearman) with ``c`` drawn uniformly
    from the other classes (:func:`other_classes`, seeded by ``seed``) and ``m(x, c)`` the
    explainer re-run for class c (``explain_fn``). Sahoo et al. 2020, "Towards Explainable Cancer
    Subtype Classification" (Quantus' Random Logit test, there with SSIM; Spearman here as for
    randomisation); Adebayo et al. 2018 ask the same of the data: an explanation must depend on
    the label. A class-blind program gives the same map for every class: ρ = 1. Lower is better,
    in [−1, 1]: signed, unlike :class:`ModelRandomisation`, because the map of another class being
    the inverse of the target's (ρ = −1, a linear head with w_c = −w_t) is a class-discriminative
    explanation, not a failure.

    Edge cases: a constant target map → NaN; a constant map for the other class (e.g. Grad-CAM's
    ReLU removes everything for a class without evidence) → 0 (:func:`similarity`).
    """

    name = "class_sensitivity"
    higher_is_better = False
    needs = frozenset({"explainer", "logits"})

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} (lower is better; needs explainer,logits; seed={self.seed})>"

    def other(self, inputs: MetricInputs) -> Tensor:
        """The class explained instead of the target, per image (B,) long."""
        assert inputs.logits is not None and inputs.targets is not None
        return other_classes(inputs.targets, int(inputs.logits.shape[1]), self.seed)

    def compute(self, inputs: MetricInputs) -> Tensor:
        assert inputs.explain_fn is not None and inputs.images is not None
        other = self.other(inputs)
        maps = checked_maps(inputs.explain_fn(inputs.images, other), tuple(inputs.maps.shape),
                             f"{self.name}: explain_fn", inputs.maps.device)
        return similarity(inputs.maps.float(), maps)


class ClassSensitivityTop2(ClassSensitivity):
    """``class_sensitivity_top2``: as ``class_sensitivity`` with the most likely class other than
    the target (``argmax_{c ≠ t} logits_c``: the second most likely when the target is the
    prediction): the hardest other class, whose evidence often overlaps the target's (two dog
    breeds), where a random class of 999 is usually an easy contrast.

    Edge cases: as :class:`ClassSensitivity` (constant target map → NaN; constant other map → 0).
    """

    name = "class_sensitivity_top2"

    def __init__(self) -> None:
        super().__init__(seed=0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} (lower is better; needs explainer,logits)>"

    def other(self, inputs: MetricInputs) -> Tensor:
        assert inputs.logits is not None and inputs.targets is not None
        if inputs.logits.shape[1] < 2:
            raise MetricError(f"{self.name}: needs at least 2 classes, got {inputs.logits.shape[1]}")
        masked = inputs.logits.detach().float().clone()
        masked.scatter_(1, inputs.targets.view(-1, 1).to(masked.device), float("-inf"))
        return masked.argmax(1).to(inputs.targets.device)


THRESHOLDS: dict[str, float] = {
    "randomisation": 0.5,
    "randomisation_top": 0.5,
    "class_sensitivity": 0.5,
    "class_sensitivity_top2": 0.5,
}
"""Pass levels of the sanity metrics: a mean value ≤ the level passes (:func:`passes`).

Neither Adebayo et al. 2018 nor Sahoo et al. 2020 (nor Quantus) fix a numeric pass level; they
compare similarities to those of controls. The rule here, the same for the four checks: the level
is the midpoint between the chance level (``random``, a fresh uniform random map per call: what
unrelated maps score) and the control that is blind to what the check perturbs (randomisation:
``center``, the centred Gaussian, which depends on no weight; class sensitivity: the class-blind
controls ``mean_c(sq(A))``, ``sq(sq(sq(mean_c(sq(A)))))`` and ``center``, all exactly 1 by
construction), rounded to 0.5: a map passes when it keeps at most half of its rank structure
(|ρ| ≤ 0.5) when the weights or the class change. Not chosen from what reference methods score.

Calibration (experiments/sanity_calibration.py, experiments/sanity/calibration.md): MobileNetV2
with its ImageNet weights, the first 100 images of imagenet-val-dev, each explained for its
label; means with 95 % bootstrap intervals:

============================  =====================  ======================  =====================  ======================
method                        randomisation          randomisation_top       class_sensitivity      class_sensitivity_top2
============================  =====================  ======================  =====================  ======================
random (chance)               0.004 [0.003, 0.004]   0.004 [0.003, 0.004]    −0.001 [−0.002, 0.000]  0.000 [−0.001, 0.001]
center (model-, class-blind)  1.000                  1.000                   1.000                  1.000
mean_c(sq(A)) (class-blind)   0.771 [0.751, 0.793]   1.000                   1.000                  1.000
sq(sq(sq(mean_c(sq(A)))))     0.874 [0.860, 0.888]   1.000                   1.000                  1.000
Grad-CAM (= XGrad, HiRes)     0.329 [0.302, 0.355]   0.417 [0.366, 0.467]    0.276 [0.198, 0.363]   0.872 [0.830, 0.913]
Grad-CAM++ (≈ LayerCAM)       0.763 [0.743, 0.784]   0.979 [0.974, 0.983]    0.973 [0.968, 0.977]   0.979 [0.971, 0.985]
Eigen-CAM                     0.688 [0.660, 0.718]   0.999 [0.998, 0.999]    1.000                  1.000
layer averaging               0.250 [0.229, 0.271]   0.273 [0.236, 0.311]    0.125 [0.069, 0.178]   0.652 [0.605, 0.698]
Winsor-CAM                    0.264 [0.245, 0.283]   0.287 [0.252, 0.325]    0.101 [0.043, 0.161]   0.664 [0.615, 0.709]
============================  =====================  ======================  =====================  ======================

Midpoints: randomisation (0.004 + 1)/2 = 0.502, randomisation_top 0.502, class_sensitivity
(−0.001 + 1)/2 = 0.499, class_sensitivity_top2 0.500. With the weakest class-blind PROGRAM as the
randomisation anchor instead of ``center`` (``mean_c(sq(A))``, 0.771: it reads activations, so it
does depend on the weights below its layer) the randomisation level would be 0.388; Grad-CAM
(upper bound 0.355) passes and ``mean_c(sq(A))`` fails under either. What fails at 0.5 besides the
controls: Grad-CAM++ and LayerCAM (whose ReLU on the gradient keeps the channels of positive
weight, leaving a near energy map: ρ 0.98 after the head) and Eigen-CAM (class-blind by design)
fail all four; every method fails ``class_sensitivity_top2`` (the runner-up class is usually a
neighbour of the target, beetle vs beetle, whose evidence lies on the same object): it grades
discrimination between similar classes, and is no filter at this level.
"""


def passes(metric: str, value: float) -> bool:
    """Whether a mean value of sanity metric ``metric`` passes: ``value ≤ THRESHOLDS[metric]``.
    NaN (undefined on every image) does not pass."""
    if metric not in THRESHOLDS:
        raise KeyError(f"no sanity threshold for {metric!r}; known: {', '.join(sorted(THRESHOLDS))}")
    return bool(value <= THRESHOLDS[metric])
