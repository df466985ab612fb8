"""The two baselines every explainer is compared with: ``random`` and ``center``.

- ``random``: a uniform random map per image, seeded by ``(seed, image index)`` — the floor every
  explainer must beat;
- ``center``: a centred isotropic Gaussian, ``exp(-d² / (2σ²))`` with ``d`` the distance to the image
  centre and ``σ = min(H, W) / 4`` — the photographer's-bias baseline.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["BASELINES", "baseline_explainer", "baseline_maps"]

#: methods that are not programs
BASELINES = ("random", "center")

_RANDOM_DOMAIN = 0x5A11  # separates the random baseline's streams from other seeded draws


def baseline_maps(kind: str, n: int, size: tuple[int, int], device: torch.device, seed: int = 0,
                  keys: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Baseline maps (n, H, W) in [0, 1] on ``device``.

    ``random``: i.i.d. uniform pixels drawn from ``numpy.random.default_rng([seed, 0x5A11, *key])``
    with ``key = keys[i]`` (the image's dataset index), min-max normalised; the same key gives the
    same map whatever the batch. ``center``: ``exp(-((y-cy)² + (x-cx)²) / (2σ²))`` with
    ``(cy, cx) = ((H-1)/2, (W-1)/2)`` and ``σ = min(H, W)/4``, min-max normalised.
    """
    h, w = int(size[0]), int(size[1])
    if kind == "random":
        if keys is None or len(keys) != n:
            raise ValueError(f"baseline_maps('random'): need one key per map ({n}), got {None if keys is None else len(keys)}")
        arr = np.stack([np.random.default_rng([int(seed), _RANDOM_DOMAIN, *map(int, k)]).random((h, w), dtype=np.float32)
                        for k in keys]) if n else np.zeros((0, h, w), np.float32)
        maps = torch.from_numpy(arr).to(device)
    elif kind == "center":
        y = torch.arange(h, dtype=torch.float32, device=device) - (h - 1) / 2
        x = torch.arange(w, dtype=torch.float32, device=device) - (w - 1) / 2
        sigma = min(h, w) / 4
        g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
        maps = g.expand(n, h, w).clone()
    else:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    flat = maps.reshape(n, -1)
    if n == 0:
        return maps
    lo = flat.amin(1).view(-1, 1, 1)
    rng = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1)
    return torch.where(rng > 0, (maps - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(maps))


def baseline_explainer(kind: str, seed: int, first: int) -> Callable[[Tensor, Tensor], Tensor]:
    """A baseline as an explainer of perturbed images (robustness): ``center`` is the same map
    again; ``random`` a fresh random map per call, seeded by the batch's first index and the call."""
    calls = [0]

    def fn(images01: Tensor, targets: Tensor) -> Tensor:
        n = int(images01.shape[0])
        calls[0] += 1
        keys = [[1, first, calls[0], j] for j in range(n)]
        return baseline_maps(kind, n, (int(images01.shape[-2]), int(images01.shape[-1])), images01.device, seed, keys)

    return fn
