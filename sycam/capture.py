"""Capture activations and gradients: one forward pass and one ``autograd.grad`` per batch.

INTERFACE STUB — implemented by the capture/models work package. Keep these names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sycam.lang.ast import ScoreSpec


@dataclass(frozen=True)
class CaptureRequest:
    """What a program needs from the model, by resolved module name."""

    layers: tuple[str, ...]  # modules whose outputs (A) are needed, in any order
    grad_layers: frozenset[str] = frozenset()  # subset that also needs G = d score / d A
    score_cam_layers: frozenset[str] = frozenset()  # need S: Score-CAM channel scores (B, C)
    ablation_layers: frozenset[str] = frozenset()  # need D: Ablation-CAM score drops (B, C)
    score: ScoreSpec = field(default_factory=ScoreSpec)


@dataclass
class Captures:
    """Everything a compiled program reads, for one batch. All tensors detached."""

    A: dict[str, Tensor]  # (B, C, h, w)
    G: dict[str, Tensor]  # (B, C, h, w)
    S: dict[str, Tensor]  # (B, C)
    D: dict[str, Tensor]  # (B, C)
    Y: Tensor  # (B,) the explained score
    logits: Tensor  # (B, K)
    input_size: tuple[int, int]  # (H, W) of the model input
