"""CAM noise robustness: consistency and responsiveness (after Sarkar et al. 2025).

Sarkar, Bora, Kaushal, George & Raja, "Assessing the Noise Robustness of Class Activation Maps: A
Framework for Reliable Model Interpretability", Image and Vision Computing 2025, arXiv 2508.18154.
The paper's robustness metric has two properties: **consistency**, "the ability of CAMs to remain
stable under input perturbations that do not alter the predicted class", and **responsiveness**,
"the sensitivity of CAMs to changes in the prediction caused by such perturbations" (abstract).

What was reachable: the abstract and the introduction (the CAM methods studied), not the method
section, so neither the paper's similarity measure, its noise levels nor its way of combining the
two properties. The third-party summary we found names Gaussian noise, salt-and-pepper noise and
adversarial perturbations and describes consistency as the overlap of the activated regions. The
closest faithful reading implemented here (the choices are ours, not the paper's equations):

- noise families (:data:`NOISE_FAMILIES`, levels :data:`DEFAULT_LEVELS`, in [0, 1] pixel units):
  ``gaussian`` ``clip(x + σ ε)``; ``salt_pepper`` (impulse) sets a pixel (all three channels) to 0
  with probability p/2 and to 1 with probability p/2; ``speckle`` (multiplicative Gaussian, as
  scikit-image's ``random_noise(mode="speckle")``) ``clip(x + σ x ε)``; ``ε ~ N(0, I)``. No
  adversarial family: an attack needs the gradient of the model's loss with respect to the input,
  which the metric interface does not give (it would be one more ``needs`` entry);
- similarity: Pearson correlation of the clean and the noisy map (:func:`pearson_maps`, as the
  ``robustness`` metric: invariant to the maps' scale, as CAM maps are);
- the prediction ``ŷ(x) = argmax_k f_k(x)`` (the model's logits, ``predict_fn``); a draw is
  prediction-preserving when ``ŷ(x̃) = ŷ(x)``;
- the noisy copy is explained for the target ``t`` where the prediction stays, and for the new
  prediction ``ŷ(x̃)`` where it changes (the map follows the prediction, as CAM libraries do by
  default); the clean map is ``inputs.maps`` (for ``t``; ``t = ŷ(x)`` with ``--targets pred``).

Per image, over the draws ``x̃_d`` (every family × level × ``draws`` repetitions, :meth:`draws`):

- ``consistency = mean_{d: ŷ(x̃_d) = ŷ(x)} r(m(x, t), m(x̃_d, t))``, in [−1, 1], higher is better;
- ``responsiveness = mean_{d: ŷ(x̃_d) ≠ ŷ(x)} 1 − r(m(x, t), m(x̃_d, ŷ(x̃_d)))``, in [0, 2],
  higher is better.

NaN where no draw qualifies (every prediction stays, for responsiveness, or every one changes, for
consistency) and where the clean map is constant (it points nowhere: its stability is undefined, as
for ``robustness``). A constant noisy map has r = 0 with a non-constant clean map. An
input-independent map (the ``center`` baseline) scores consistency 1 and responsiveness 0: the two
properties are only meaningful together. Noise of draw d of the image at batch position i comes
from a CPU generator seeded with ``(seed, i, d)``: reproducible, independent of the chunk size and
the device, the global RNG untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from sycam.errors import MetricError
from sycam.metrics.base import Metric, MetricInputs, check_chunk_size, checked_maps
from sycam.metrics.robustness import pearson_maps

__all__ = ["DEFAULT_LEVELS", "NOISE_FAMILIES", "Consistency", "NoiseDraws", "Responsiveness", "add_noise"]

_DOMAIN = 0x7015E  # separates these draws from the other seeded streams of the metrics


def _gaussian(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    return x + level * torch.randn(x.shape, generator=g).to(x)


def _salt_pepper(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    u = torch.rand(x.shape[-2:], generator=g).to(x.device)
    pepper, salt = u < level / 2, (u >= level / 2) & (u < level)
    return torch.where(salt, torch.ones_like(x), torch.where(pepper, torch.zeros_like(x), x))


def _speckle(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    return x + level * x * torch.randn(x.shape, generator=g).to(x)


#: family name → ``noise(image (3, H, W) in [0, 1], level, generator)`` (clipped by :func:`add_noise`)
NOISE_FAMILIES: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "gaussian": _gaussian,
    "salt_pepper": _salt_pepper,
    "speckle": _speckle,
}

#: levels per family: Gaussian and speckle σ, salt-and-pepper density p. A mild and a strong level
#: each (ours: the paper's levels were not reachable), so that some draws keep and some change the
#: prediction of an ImageNet classifier (experiments/noise/README.md measures how many).
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.05, 0.2),
    "salt_pepper": (0.02, 0.1),
    "speckle": (0.1, 0.4),
}


def add_noise(image: Tensor, family: str, level: float, seed: int, key: Sequence[int]) -> Tensor:
    """``image`` (3, H, W) in [0, 1] with noise of ``family`` at ``level``, clipped to [0, 1].

    The noise is drawn on the CPU from a generator seeded with ``(seed, *key)`` (the same key gives
    the same noise on any device), then moved to the image's device.
    """
    if family not in NOISE_FAMILIES:
        raise MetricError(f"unknown noise family {family!r}; known: {', '.join(NOISE_FAMILIES)}")
    h = int(seed) % (2**61)
    for k in (_DOMAIN, *key):
        h = (h * 1_000_003 + int(k)) % (2**61)
    g = torch.Generator().manual_seed(h)
    return NOISE_FAMILIES[family](image, float(level), g).clamp(0, 1)


@dataclass
class NoiseDraws:
    """The draws of one batch: ``flipped`` (B, D) bool, whether ``ŷ(x̃_d) ≠ ŷ(x)``; ``similarity``
    (B, D) float32, ``r`` of the clean and the noisy map where that draw was explained, NaN where
    not; ``draws`` the (family, level) of each of the D columns."""

    flipped: Tensor
    similarity: Tensor
    draws: list[tuple[str, float]]


class _NoiseMetric(Metric):
    """Shared by :class:`Consistency` and :class:`Responsiveness` (module docstring)."""

    higher_is_better = True
    needs = frozenset({"explainer", "predict"})
    _explains_flipped = False  # which draws this metric explains

    def __init__(self, families: Sequence[str] | str = tuple(DEFAULT_LEVELS),
                 levels: Mapping[str, Sequence[float]] | None = None, draws: int = 1, seed: int = 0,
                 chunk_size: int = 32) -> None:
        fams = [f.strip() for f in families.split(",")] if isinstance(families, str) else list(families)
        if not fams:
            raise MetricError(f"{self.name}: give at least one noise family ({', '.join(NOISE_FAMILIES)})")
        unknown = [f for f in fams if f not in NOISE_FAMILIES]
        if unknown:
            raise MetricError(f"{self.name}: unknown noise families {unknown}; known: {', '.join(NOISE_FAMILIES)}")
        table = dict(DEFAULT_LEVELS) if levels is None else {k: tuple(float(v) for v in vs) for k, vs in levels.items()}
        for f in fams:
            lv = table.get(f)
            if not lv:
                raise MetricError(f"{self.name}: no levels for noise family {f!r}")
            if any(not (v >= 0) for v in lv) or (f == "salt_pepper" and any(v > 1 for v in lv)):
                raise MetricError(f"{self.name}: levels of {f!r} must be >= 0 (a density <= 1 for salt_pepper), got {lv}")
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise MetricError(f"{self.name}: draws must be a positive int, got {draws!r}")
        self.families = tuple(fams)
        self.levels = {f: tuple(table[f]) for f in fams}
        self.draws_per_level = draws
        self.seed = int(seed)
        self.chunk_size = check_chunk_size(chunk_size, self.name)
        self.schedule = [(f, lv) for f in self.families for lv in self.levels[f] for _ in range(draws)]

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} (higher is better; needs explainer,predict; "
                f"levels={self.levels}, draws={self.draws_per_level}, seed={self.seed})>")

    def _predict(self, inputs: MetricInputs, x: Tensor) -> Tensor:
        assert inputs.predict_fn is not None
        with torch.no_grad():
            logits = inputs.predict_fn(x)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise MetricError(f"{self.name}: predict_fn returned {got} for {x.shape[0]} images, expected (N, K) logits")
        return logits.argmax(1).to(inputs.maps.device)

    def _explain(self, inputs: MetricInputs, x: Tensor, t: Tensor) -> Tensor:
        assert inputs.explain_fn is not None
        want = (x.shape[0],) + tuple(x.shape[2:])
        return checked_maps(inputs.explain_fn(x, t), want, f"{self.name}: explain_fn", inputs.maps.device)

    def draws(self, inputs: MetricInputs, explain: str | None = None) -> NoiseDraws:
        """Every draw of the batch: which ones change the prediction, and the similarity of the
        maps for the draws ``explain`` selects (``"kept"``, ``"flipped"``, ``"all"``; default this
        metric's own). One ``predict_fn`` call per chunk of draws and one ``explain_fn`` call per
        chunk of the selected draws."""
        explain = explain or ("flipped" if self._explains_flipped else "kept")
        if explain not in ("kept", "flipped", "all"):
            raise MetricError(f"{self.name}: explain must be kept, flipped or all, got {explain!r}")
        images, targets, maps = inputs.images, inputs.targets, inputs.maps
        assert images is not None and targets is not None
        b, d = images.shape[0], len(self.schedule)
        dev = maps.device
        clean = torch.cat([self._predict(inputs, images[s:s + self.chunk_size])
                           for s in range(0, b, self.chunk_size)])
        flipped = torch.zeros(b * d, dtype=torch.bool, device=dev)
        sim = torch.full((b * d,), float("nan"), dtype=torch.float32, device=dev)
        for s in range(0, b * d, self.chunk_size):
            idx = list(range(s, min(s + self.chunk_size, b * d)))
            x = torch.stack([add_noise(images[i // d], *self.schedule[i % d], self.seed, (i // d, i % d))
                             for i in idx])
            bi = torch.tensor([i // d for i in idx], device=dev)
            pred = self._predict(inputs, x)
            flip = pred != clean[bi]
            flipped[s:s + len(idx)] = flip
            sel = torch.ones_like(flip) if explain == "all" else (flip if explain == "flipped" else ~flip)
            if not bool(sel.any()):
                continue
            pos = sel.nonzero().flatten()
            t = torch.where(flip, pred, targets[bi].to(dev))[pos]
            noisy_maps = self._explain(inputs, x[pos.to(x.device)], t.to(targets.device))
            sim[s + pos] = pearson_maps(maps[bi[pos]].float(), noisy_maps)
        return NoiseDraws(flipped.view(b, d), sim.view(b, d), list(self.schedule))

    def _summarise(self, values: Tensor, qualifies: Tensor, maps: Tensor) -> Tensor:
        n = qualifies.sum(1)
        mean = torch.where(qualifies, values, torch.zeros_like(values)).sum(1) / n.clamp_min(1)
        flat = maps.flatten(1)
        constant = flat.amax(1) == flat.amin(1)
        return torch.where((n > 0) & ~constant, mean, torch.full_like(mean, float("nan")))


class Consistency(_NoiseMetric):
    """``consistency``: the map stays when noise leaves the prediction alone (Sarkar et al. 2025).

    ``C(x) = mean_{d: ŷ(x̃_d) = ŷ(x)} pearson(m(x, t), m(x̃_d, t))`` over the draws x̃_d of every
    noise family and level (:data:`NOISE_FAMILIES`, :data:`DEFAULT_LEVELS`: Gaussian σ 0.05, 0.2;
    salt-and-pepper p 0.02, 0.1; speckle σ 0.1, 0.4; ``draws`` per level), in [−1, 1], higher is
    better. The paper's exact equation was not reachable: see the module docstring for what is ours.

    Edge cases: NaN where every draw changes the prediction or the clean map is constant; a
    constant noisy map gives r = 0 (:func:`pearson_maps`). Cost per image: ``D`` forwards
    (``predict_fn``) and one explainer run per prediction-preserving draw.
    """

    name = "consistency"
    _explains_flipped = False

    def compute(self, inputs: MetricInputs) -> Tensor:
        dr = self.draws(inputs)
        return self._summarise(dr.similarity, ~dr.flipped, inputs.maps)


class Responsiveness(_NoiseMetric):
    """``responsiveness``: the map changes when noise changes the prediction (Sarkar et al. 2025).

    ``R(x) = mean_{d: ŷ(x̃_d) ≠ ŷ(x)} 1 − pearson(m(x, t), m(x̃_d, ŷ(x̃_d)))`` over the draws of
    every noise family and level (as :class:`Consistency`), the noisy copy explained for the class
    it is now predicted as; in [0, 2] (0: the map ignores the change, 1: unrelated maps, 2:
    inverted), higher is better. The paper's exact equation was not reachable: see the module
    docstring.

    Edge cases: NaN where no draw changes the prediction (a robust model on mild noise: common) or
    the clean map is constant; a constant noisy map gives 1 (r = 0). Cost per image: ``D`` forwards
    and one explainer run per prediction-changing draw.
    """

    name = "responsiveness"
    _explains_flipped = True

    def compute(self, inputs: MetricInputs) -> Tensor:
        dr = self.draws(inputs)
        return self._summarise(1 - dr.similarity, dr.flipped, inputs.maps)
