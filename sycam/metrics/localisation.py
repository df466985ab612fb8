"""Localisation metrics: how well a saliency map agrees with a ground-truth object mask.

Shared conventions (each metric's docstring repeats what applies):

* An empty ground-truth mask makes every localisation metric undefined: the value is NaN.
* A map without variation (constant, including all-zero, which is what min-max normalisation
  makes of a constant map) carries no preference among pixels; it is treated as the uniform map,
  so it scores what a uniform map scores (the chance level), never NaN.
* Pixel coordinates are pixel centres, ``(i + 0.5, j + 0.5)`` for row ``i``, column ``j``.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from sycam.errors import MetricError
from sycam.metrics.base import Metric, MetricInputs


def _hi_precision(device: torch.device) -> torch.dtype:
    # float64 where the backend has it (MPS has not); used for histogram statistics
    return torch.float32 if device.type == "mps" else torch.float64


def _otsu_split(counts: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Otsu on per-image histograms ``counts`` (B, bins) of ``n`` pixels each → (t*, has_split):
    the last bin of class 0 and whether any split separates two non-empty classes."""
    bins = counts.shape[1]
    dt = _hi_precision(counts.device)
    counts = counts.to(dt)
    centres = (torch.arange(bins, dtype=dt, device=counts.device) + 0.5) / bins
    c0 = counts.cumsum(1)[:, :-1]  # pixels in class 0 for splits t = 0 .. bins-2
    s0 = (counts * centres).cumsum(1)[:, :-1]  # their sum of centres
    s_all = (counts * centres).sum(1, keepdim=True)
    c1 = n - c0
    valid = (c0 > 0) & (c1 > 0)
    # n²·σ_b² = (s0·n − s_all·c0)² / (c0·c1): the same maximiser, fewer divisions
    num = (s0 * n - s_all * c0) ** 2
    sb = torch.where(valid, num / (c0 * c1).clamp_min(1), torch.full_like(num, -1.0))
    best, t = sb.max(dim=1)  # max() returns the first maximiser on ties
    return t, best > 0


def _bin_index(maps: Tensor, bins: int) -> Tensor:
    """``floor(v·bins)`` per pixel as int32, for maps in [0, 1]: ``bins`` itself for v = 1 (see
    :func:`_histograms`), 0 for tiny negatives (truncation is floor for v >= 0)."""
    exact = (bins & (bins - 1)) == 0  # a power of two: v·bins is exact in float32
    scaled = maps * bins if exact else maps.to(_hi_precision(maps.device)) * bins
    return scaled.to(torch.int32)


def _histograms(maps: Tensor, offsets: Tensor, slots: int, bins: int) -> Tensor:
    """Per-image histograms of maps (B, N) in [0, 1] in one ``bincount``: ``offsets`` (B, N) or
    (B, 1) int32 are multiples of ``bins + 1`` that send each pixel to one of ``slots`` histograms
    per image → (B, slots, bins). The extra slot per histogram holds v = 1, folded into the last bin."""
    b = maps.shape[0]
    idx = _bin_index(maps, bins).add_(offsets)
    counts = torch.bincount(idx.flatten(), minlength=b * slots * (bins + 1)).view(b, slots, bins + 1)
    out = counts[..., :-1].clone()
    out[..., -1] += counts[..., -1]
    return out


def otsu_thresholds(maps: Tensor, bins: int = 256) -> Tensor:
    """Per-image Otsu threshold of maps (B, H, W) in [0, 1] → (B,) thresholds in [0, 1].

    Values fall into ``bins`` equal bins over [0, 1]: bin ``k = min(floor(v·bins), bins-1)``,
    centre ``c_k = (k + ½)/bins``. For each split after bin ``t`` (class 0 = bins ≤ t, class 1 =
    bins > t) Otsu's between-class variance is ``σ_b²(t) = ω0 ω1 (μ0 − μ1)²``; the chosen ``t*``
    is the first maximiser (so across empty bins between two modes the threshold sits just
    above the lower mode). The returned threshold is the lower edge of bin ``t*+1``,
    ``(t*+1)/bins``, so that ``map ≥ threshold`` selects exactly class 1 (foreground).

    A map whose values all fall into one bin (a constant map in particular) has no split; its
    threshold is 0, i.e. the whole image is foreground.
    """
    if maps.dim() != 3:
        raise MetricError(f"otsu_thresholds: maps must be (B, H, W), got {tuple(maps.shape)}")
    if bins < 2:
        raise MetricError(f"otsu_thresholds: bins must be >= 2, got {bins}")
    b = maps.shape[0]
    image = torch.arange(b, device=maps.device, dtype=torch.int32)[:, None] * (bins + 1)
    counts = _histograms(maps.reshape(b, -1), image, 1, bins)[:, 0]
    t, split = _otsu_split(counts, maps[0].numel())
    thr = (t + 1).to(torch.float32) / bins
    return torch.where(split, thr, torch.zeros_like(thr))


#: per masks tensor, its slot offsets: the same masks are scored against thousands of maps
_OFFSETS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _joint_offsets(masks: Tensor, bins: int) -> Tensor:
    """(B, H·W) int32 ``(bins+1)·(mask + 2·image)``: where a pixel's bin goes in the joint histogram."""
    key = (masks._version, masks.data_ptr(), tuple(masks.shape), bins)
    hit = _OFFSETS.get(masks)
    if hit is not None and hit[0] == key:
        return hit[1]
    b = masks.shape[0]
    slot = masks.reshape(b, -1).to(torch.int32) + 2 * torch.arange(b, device=masks.device, dtype=torch.int32)[:, None]
    offsets = slot * (bins + 1)
    _OFFSETS[masks] = (key, offsets)
    return offsets


def otsu_iou(maps: Tensor, masks: Tensor, bins: int = 256) -> Tensor:
    """IoU of ``maps ≥ otsu_thresholds(maps)`` with ``masks``, from one joint histogram.

    One ``bincount`` over (image, mask bit, bin) gives both the histogram Otsu needs and, for
    every split, how many foreground pixels fall inside the mask: no full-size boolean maps, a
    fraction of the passes (the search scores thousands of programs with it). Identical to
    thresholding and counting: the threshold is a bin edge, and for power-of-two ``bins``
    ``v ≥ (t+1)/bins ⟺ floor(v·bins) ≥ t+1`` exactly (otherwise the bins are computed in float64,
    as :func:`otsu_thresholds` does). NaN where the mask is empty.
    """
    b = maps.shape[0]
    joint = _histograms(maps.reshape(b, -1), _joint_offsets(masks, bins), 2, bins)
    t, split = _otsu_split(joint.sum(1), maps[0].numel())
    # foreground = bins > t*; without a split, everything is foreground
    above = torch.arange(bins, device=maps.device)[None, :] > torch.where(split, t, torch.full_like(t, -1))[:, None]
    inside = joint[:, 1]
    mask_px = inside.sum(1)
    inter = (inside * above).sum(1)
    pred = (joint.sum(1) * above).sum(1)
    union = pred + mask_px - inter
    out = inter.float() / union.clamp_min(1).float()
    return torch.where(mask_px == 0, torch.full_like(out, float("nan")), out)


def _iou(pred: Tensor, masks: Tensor) -> Tensor:
    """IoU of bool (B, H, W) ``pred`` with ``masks``; NaN where the mask is empty."""
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float()
    empty = masks.flatten(1).sum(1) == 0
    out = inter / union.clamp_min(1)
    return torch.where(empty, torch.full_like(out, float("nan")), out)


class OtsuIoU(Metric):
    """``iou``: IoU of the Otsu-binarised map with the mask (Winsor-CAM's localisation protocol).

    ``P = {p : map(p) ≥ τ}`` with τ the per-image Otsu threshold on a 256-bin histogram of the
    map over [0, 1] (see :func:`otsu_thresholds`; ``≥`` rather than ``>`` so that bin edges go
    to the foreground); ``IoU = |P ∩ M| / |P ∪ M|``.
    Otsu, "A threshold selection method from gray-level histograms", IEEE TSMC 1979; the protocol
    of Winsor-CAM (arXiv 2025), which scores CAMs by the IoU of their Otsu masks.

    Edge cases: empty mask → NaN. Constant map (incl. all-zero) → no split, the whole image is
    foreground, IoU = |M| / (H·W).
    """

    name = "iou"
    higher_is_better = True
    needs = frozenset({"mask"})

    def __init__(self, bins: int = 256) -> None:
        if bins < 2:
            raise MetricError(f"iou: bins must be >= 2, got {bins}")
        self.bins = bins

    def compute(self, inputs: MetricInputs) -> Tensor:
        return otsu_iou(inputs.maps, inputs.masks, self.bins)  # type: ignore[arg-type]


class ThresholdIoU(Metric):
    """``iou@T``: IoU of ``{p : map(p) ≥ T}`` with the mask, at a fixed threshold T ∈ [0, 1].

    ``IoU = |P ∩ M| / |P ∪ M|`` (the fixed-threshold variant used throughout the CAM literature,
    e.g. Zhou et al. 2016's CAM box protocol thresholds at a fraction of the maximum; maps here are
    min-max normalised, so T is that fraction).

    Edge cases: empty mask → NaN. Constant map c: P is everything when c ≥ T, else empty
    (IoU 0); the all-zero map at T > 0 has IoU 0.
    """

    higher_is_better = True
    needs = frozenset({"mask"})

    def __init__(self, threshold: float) -> None:
        t = float(threshold)
        if not (0.0 <= t <= 1.0) or math.isnan(t):
            raise MetricError(f"iou@T: threshold T must lie in [0, 1], got {threshold!r}")
        self.threshold = t
        self.name = f"iou@{t:g}"

    def compute(self, inputs: MetricInputs) -> Tensor:
        return _iou(inputs.maps >= self.threshold, inputs.masks)  # type: ignore[arg-type]


_IOU_AT = re.compile(r"^iou@([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def parse_iou_at(name: str) -> ThresholdIoU | None:
    """``"iou@0.5"`` → ``ThresholdIoU(0.5)``; None when ``name`` is not of the form ``iou@T``."""
    m = _IOU_AT.match(name.strip())
    if m is None:
        if name.strip().startswith("iou@"):
            raise MetricError(f"metric {name!r}: expected iou@T with T a number in [0, 1], e.g. iou@0.5")
        return None
    return ThresholdIoU(float(m.group(1)))


def dilate_disc(masks: Tensor, radius: float) -> Tensor:
    """Dilate bool masks (B, H, W) by a Euclidean disc: pixels within ``radius`` of the mask.

    A pixel q is set iff some mask pixel p has ``|q − p|₂ ≤ radius`` (integer pixel offsets).
    Built row by row: for each vertical offset ``dy`` a 1-D max-pool of half-width
    ``⌊√(r² − dy²)⌋`` then a shift by ``dy`` — cheap, exact, and device-agnostic.
    """
    if radius < 0:
        raise MetricError(f"dilate_disc: radius must be >= 0, got {radius}")
    b, h, w = masks.shape
    m = masks.float().unsqueeze(1)  # (B, 1, H, W)
    out = torch.zeros_like(m)
    r = int(math.floor(radius))
    rows: dict[int, Tensor] = {}
    for dy in range(-r, r + 1):
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        if half not in rows:
            rows[half] = m if half == 0 else F.max_pool2d(m, (1, 2 * half + 1), stride=1, padding=(0, half))
        row = rows[half]
        # out[y] |= row[y + dy]
        if dy >= 0:
            if dy < h:
                out[:, :, : h - dy] = torch.maximum(out[:, :, : h - dy], row[:, :, dy:])
        else:
            if -dy < h:
                out[:, :, -dy:] = torch.maximum(out[:, :, -dy:], row[:, :, : h + dy])
    return out.squeeze(1) > 0


class PointingGame(Metric):
    """``pointing_game``: does the map's maximum fall on the object, with a 15-pixel tolerance?

    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016: a hit when the
    maximum lies within ``tolerance`` (15) pixels of the mask. Here: the mask is dilated by a
    Euclidean disc of radius ``tolerance`` (:func:`dilate_disc`); score = 1 for a hit, 0 for a miss.

    Ties at the maximum (e.g. flat regions left by bilinear upsampling): the score is the fraction
    of maximal pixels that hit, i.e. the expected score when ties are broken uniformly at
    random; with a unique maximum it is exactly 0 or 1. So a constant (or all-zero) map scores the
    fraction of the image within ``tolerance`` of the mask (chance level).

    Edge cases: empty mask → NaN.
    """

    name = "pointing_game"
    higher_is_better = True
    needs = frozenset({"mask"})

    def __init__(self, tolerance: float = 15.0) -> None:
        if tolerance < 0:
            raise MetricError(f"pointing_game: tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance = float(tolerance)

    def compute(self, inputs: MetricInputs) -> Tensor:
        maps, masks = inputs.maps, inputs.masks
        assert masks is not None
        near = dilate_disc(masks, self.tolerance)
        top = maps == maps.amax(dim=(1, 2), keepdim=True)
        hits = (top & near).flatten(1).sum(1).float() / top.flatten(1).sum(1).float()
        empty = masks.flatten(1).sum(1) == 0
        return torch.where(empty, torch.full_like(hits, float("nan")), hits)


class EnergyPointingGame(Metric):
    """``energy_pg``: share of the map's energy inside the mask, ``Σ map·M / Σ map``.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPR-W 2020 (energy-based
    pointing game, computed on the min-max normalised map).

    Edge cases: empty mask → NaN. All-zero map → treated as uniform: ``|M| / (H·W)`` (chance
    level); a constant map gives the same by the formula.
    """

    name = "energy_pg"
    higher_is_better = True
    needs = frozenset({"mask"})

    def compute(self, inputs: MetricInputs) -> Tensor:
        maps, masks = inputs.maps.float(), inputs.masks
        assert masks is not None
        total = maps.flatten(1).sum(1)
        inside = (maps * masks).flatten(1).sum(1)
        chance = masks.flatten(1).float().mean(1)
        out = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float32).tiny), chance)
        empty = masks.flatten(1).sum(1) == 0
        return torch.where(empty, torch.full_like(out, float("nan")), out)


def _centre_of_mass(weights: Tensor) -> Tensor:
    """(B, H, W) non-negative weights → (B, 2) centre of mass (y, x) in pixel-centre coordinates."""
    b, h, w = weights.shape
    ys = torch.arange(h, dtype=torch.float32, device=weights.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=weights.device) + 0.5
    total = weights.flatten(1).sum(1)
    cy = (weights.sum(2) * ys).sum(1) / total
    cx = (weights.sum(1) * xs).sum(1) / total
    return torch.stack([cy, cx], dim=1)


class CentreOfMassDistance(Metric):
    """``com_dist``: distance between the map's and the mask's centres of mass, over the diagonal.

    ``c_map = Σ_p map(p)·p / Σ_p map(p)``, ``c_M = mean of the mask's pixel coordinates``,
    ``com_dist = ‖c_map − c_M‖₂ / √(H² + W²)`` ∈ [0, 1]; lower is better. A standard
    localisation error for saliency (used e.g. in Quantus-style evaluations; normalisation by the
    diagonal makes it resolution-free).

    Edge cases: empty mask → NaN. All-zero map → treated as uniform, its centre of mass is the
    image centre.
    """

    name = "com_dist"
    higher_is_better = False
    needs = frozenset({"mask"})

    def compute(self, inputs: MetricInputs) -> Tensor:
        maps, masks = inputs.maps.float(), inputs.masks
        assert masks is not None
        b, h, w = maps.shape
        zero = maps.flatten(1).sum(1) == 0
        weights = torch.where(zero[:, None, None], torch.ones_like(maps), maps)
        m = masks.float()
        empty = m.flatten(1).sum(1) == 0
        m = torch.where(empty[:, None, None], torch.ones_like(m), m)  # placeholder, masked out below
        d = (_centre_of_mass(weights) - _centre_of_mass(m)).norm(dim=1) / math.hypot(h, w)
        return torch.where(empty, torch.full_like(d, float("nan")), d)
