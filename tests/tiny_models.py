"""Small untrained models for tests (importable as ``tiny_models:bundle`` by the CLI)."""
from __future__ import annotations

import torch
from torch import nn

from sycam.models.bundle import ModelBundle


class TinyCNN(nn.Module):
    """Three resolution stages on 64×64 inputs, 8 classes (the built-in benchmark's)."""

    def __init__(self, classes: int = 8) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(inplace=True))
        self.stage3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(inplace=True))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(x.mean((2, 3)))


def bundle() -> ModelBundle:
    torch.manual_seed(0)
    module = TinyCNN().eval()
    return ModelBundle(module=module, normalize=lambda x: x - 0.5, input_size=(64, 64), num_classes=8,
                       default_layer="stage3.0", name="tiny", stage_layers=["stage1.0", "stage2.0", "stage3.0"])
