"""Prototypes of the changes the profile suggests, measured beside sycam's own code (never used
by sycam): evidence for the lead, not library code.

:func:`joint_histogram_iou` computes the Otsu IoU (``sycam.metrics.OtsuIoU``) from a single
histogram over (image, mask bit, bin) instead of a histogram for the threshold and then
full-resolution comparisons, sums and logical ops for the IoU.
"""
from __future__ import annotations

import torch
from torch import Tensor


def joint_histogram_iou(maps: Tensor, masks: Tensor, bins: int = 256) -> Tensor:
    """Otsu-binarised IoU per image, (B,), from one joint histogram.

    ``key = floor(v·bins) (clamped to bins-1) + bins·mask + 2·bins·b`` for every pixel, counted
    with one ``histc``; per image ``counts[k] = H[0,k] + H[1,k]`` gives Otsu's threshold exactly as
    :func:`sycam.metrics.otsu_thresholds` (first maximiser of ``(s0·n − s·c0)² / (c0·c1)``); since
    the threshold is the bin edge ``(t*+1)/bins`` and scaling by a power of two is exact,
    ``v ≥ (t*+1)/bins ⟺ floor(v·bins) ≥ t*+1``, so ``|P| = Σ_{k>t*} counts[k]``,
    ``|P∩M| = Σ_{k>t*} H[1,k]``, ``|M| = Σ_k H[1,k]`` and ``IoU = |P∩M| / (|P| + |M| − |P∩M|)``.
    No split (all values in one bin): everything is foreground. Empty mask: NaN.
    """
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(f"joint_histogram_iou: maps (B, H, W) and masks of the same shape, got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")
    b = maps.shape[0]
    n = maps[0].numel()
    # float32 holds these integer keys exactly (< 2^24 for B·2·bins up to 32768 images)
    key = (maps.reshape(b, -1) * bins).floor_().clamp_(0, bins - 1)
    key += masks.reshape(b, -1) * float(bins)
    key += (torch.arange(b, device=maps.device, dtype=key.dtype) * (2 * bins)).unsqueeze(1)
    nb = 2 * bins * b
    hist = torch.histc(key, bins=nb, min=0, max=nb).view(b, 2, bins).double()
    counts = hist.sum(1)
    centres = (torch.arange(bins, dtype=torch.float64, device=maps.device) + 0.5) / bins
    c0 = counts.cumsum(1)[:, :-1]
    s0 = (counts * centres).cumsum(1)[:, :-1]
    s_all = (counts * centres).sum(1, keepdim=True)
    c1 = n - c0
    valid = (c0 > 0) & (c1 > 0)
    num = (s0 * n - s_all * c0) ** 2
    sb = torch.where(valid, num / (c0 * c1).clamp_min(1), torch.full_like(num, -1.0))
    best, t = sb.max(dim=1)
    start = torch.where(best > 0, t + 1, torch.zeros_like(t))  # first foreground bin
    above = torch.arange(bins, device=maps.device).unsqueeze(0) >= start.unsqueeze(1)
    pred = (counts * above).sum(1)
    inter = (hist[:, 1] * above).sum(1)
    m = hist[:, 1].sum(1)
    iou = inter / (pred + m - inter).clamp_min(1)
    return torch.where(m == 0, torch.full_like(iou, float("nan")), iou).float()


def reduced_resolution_iou(raw: Tensor, masks: Tensor, side: int) -> Tensor:
    """The Otsu IoU of a program's raw map scored at ``side``×``side`` instead of the image size:
    the raw map is upsampled (bilinear) to ``side`` and min-max normalised, the mask is resampled
    to ``side`` (nearest), then :func:`joint_histogram_iou`. An approximation (a multi-fidelity
    proxy for search: rank many candidates cheaply, re-score the best at full resolution)."""
    import torch.nn.functional as F

    from sycam import kernels as K

    maps = K.norm(K.resize(raw.float(), (side, side)))
    small = F.interpolate(masks.unsqueeze(1).float(), size=(side, side), mode="nearest")[:, 0] > 0.5
    return joint_histogram_iou(maps, small)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order; NaN-free input)."""
    if a.shape != b.shape or a.dim() != 1 or a.numel() < 2:
        raise ValueError(f"spearman: two 1-D tensors of the same length >= 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))
