"""Every reference program runs on ResNet-50 and MobileNetV2 (random weights, small inputs)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from sycam.explainer import Explainer
from sycam.programs import list_programs

# Score-CAM and Ablation-CAM pay one forward pass per channel (2 images x 2048 channels of ResNet-50's
# layer4), and so do the programs built on them (MetaCAM votes with both, UnionCAM fuses Score-CAM):
# run them at the smallest input, in masked batches of 64 (on such small inputs a forward of 64
# images costs little more than one of 8, the CPU default; the batching loop is the same, and the
# default is what the reference-agreement tests use). UnionCAM's Score-CAM on a grid larger than
# one cell runs in tests/test_seeds_reforward.py (ResNet-50's layer1, MobileNetV2 with weights).
EXPENSIVE = {"scorecam": 32, "ablationcam": 32, "metacam": 32, "unioncam": 32}
MASKED_BATCH = 64


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "resnet50": (torchvision.models.resnet50().eval(), "layer4"),
        "mobilenet_v2": (torchvision.models.mobilenet_v2().eval(), "features.18"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("name", list_programs())
def test_reference_program_runs(models, arch, name):
    model, layer = models[arch]
    size = EXPENSIVE.get(name, 64)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    maps = Explainer(model, name, layers=layer, masked_batch=MASKED_BATCH if name in EXPENSIVE else None)(x, [1, 2])
    assert maps.shape == (2, size, size)
    assert torch.isfinite(maps).all()
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
