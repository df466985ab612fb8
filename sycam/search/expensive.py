"""What the expensive terminals cost to capture, measured before a search that uses them.

``S`` (Score-CAM, Wang et al. 2020: the target's score on the image masked by each upsampled,
normalised channel) and ``D`` (Ablation-CAM, Desai & Ramaswamy 2020: the score's drop when each
channel is zeroed) take one extra forward pass per channel of the target layer for every image;
``R`` and ``R1`` (Recipro-CAM, Byun & Lee 2022: the score with the layer's output replaced by each
position's mosaic map, Gaussian and one-hot kernel) run the network after the layer once per
position of its grid (batched: one forward per image where the feature maps fit); against one
forward and one backward pass for ``A`` and ``G``. A search over a space with them
(``--expensive``) pays that on every train, validation and test image, so the run measures it on a
few train images first and prints it (:func:`expensive_cost`).
"""
from __future__ import annotations

import time

import torch

from sycam.capture import CaptureRequest, capture


def expensive_cost(bench, terminals: tuple[str, ...], images: int = 4) -> dict[str, float]:
    """Seconds per image that capturing each of ``terminals`` (``S``, ``D``, ``R``, ``R1``) at the default layer
    adds to a plain ``A``/``G`` capture, measured on the first ``images`` images of ``bench``'s
    split (a :class:`~sycam.workbench.Workbench`; the capture cache plays no part)."""
    if not terminals:
        return {}
    layer = bench.resolver.default
    n = min(images, len(bench.dataset))
    from sycam.data.base import collate

    batch = collate([bench.dataset[i] for i in range(n)]).to(bench.device)  # type: ignore[arg-type]
    inputs = bench.normalized(batch.images)
    targets = bench._targets(inputs, batch)

    def seconds(request: CaptureRequest) -> float:
        t0 = time.perf_counter()
        capture(bench.bundle.module, inputs, targets, request)
        if inputs.is_cuda:
            torch.cuda.synchronize(inputs.device)
        return time.perf_counter() - t0

    plain = CaptureRequest(layers=(layer,), grad_layers=frozenset([layer]))
    base = seconds(plain)
    out = {}
    for t in terminals:
        extra = {"S": {"score_cam_layers": frozenset([layer])}, "D": {"ablation_layers": frozenset([layer])},
                 "R": {"reciprocal_layers": frozenset([layer])}, "R1": {"reciprocal_onehot_layers": frozenset([layer])}}[t]
        request = CaptureRequest(layers=(layer,), grad_layers=frozenset([layer]), **extra)  # type: ignore[arg-type]
        out[t] = max(0.0, seconds(request) - base) / n
    return out


def cost_line(costs: dict[str, float]) -> str:
    """One printed line: each expensive terminal's measured capture cost per image (and per 1,000)."""
    if not costs:
        return ""
    parts = [f"{t} {s * 1000:.1f} ms/image ({s * 1000:.0f} s per 1,000 images)" for t, s in costs.items()]
    return "expensive terminals, capture cost beyond A and G (measured on 4 train images): " + "; ".join(parts)


__all__ = ["cost_line", "expensive_cost"]
