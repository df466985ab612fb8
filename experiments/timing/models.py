"""Models and inputs for the benchmark: torchvision classifiers, a tiny CNN for smoke runs, and
the built-in CNN (trained weights when cached, random weights otherwise: never trains here)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from sycam.models.bundle import ModelBundle

#: the repository root (experiments/timing/models.py -> parents[2]) and the shared folder beside it
ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
IMAGENET_DEV = SHARED / "data" / "imagenet-val-dev"

#: the layer each model is explained at (the last stage, as in the task's protocol)
DEFAULT_LAYERS = {"resnet50": "layer4", "mobilenet_v2": "features.18", "tiny": "layer4"}


class TinyNet(nn.Module):
    """A three-conv CNN for smoke runs of the suite: conv1 (3→8, /2) → layer4 (8→16) → pool → fc.

    ResNet-like module names (``layer4`` is the last stage) so the same code paths run on it.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.layer4 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of images (B, 3, H, W)."""
        return self.fc(torch.flatten(self.pool(self.layer4(self.relu(self.conv1(x)))), 1))


def build_model(name: str, device: torch.device, real_weights: bool = True) -> tuple[nn.Module, str, str]:
    """``(module in eval mode on device, default layer name, weights description)``.

    ``resnet50``: random weights (no ResNet weights exist offline). ``mobilenet_v2``: the shared
    ImageNet weights when present and ``real_weights``, else random. ``tiny``: :class:`TinyNet`.
    Random weights are seeded (``torch.manual_seed(0)``) so reruns explain the same network.
    """
    if name not in DEFAULT_LAYERS:
        raise ValueError(f"bench: unknown model {name!r}; expected one of {', '.join(DEFAULT_LAYERS)}")
    torch.manual_seed(0)
    weights = "random (seed 0)"
    if name == "tiny":
        module: nn.Module = TinyNet()
    else:
        import torchvision.models as tvm

        module = tvm.get_model(name, weights=None)
        if name == "mobilenet_v2" and real_weights and MOBILENET_WEIGHTS.is_file():
            state = torch.load(MOBILENET_WEIGHTS, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
            weights = f"ImageNet ({MOBILENET_WEIGHTS.name})"
    return module.to(device).eval(), DEFAULT_LAYERS[name], weights


def conv_names(module: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in ``named_modules()`` order (sycam's ``convs`` selection)."""
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def make_inputs(batch: int, size: int, device: torch.device, real: bool = True) -> tuple[Tensor, Tensor, str]:
    """``(normalised images (B, 3, size, size), targets (B,), source)``.

    Real ImageNet validation images (ImageNet normalisation, their labels as targets) when the
    shared folder is present and ``real``; otherwise seeded Gaussian noise with targets ``i % 10``.
    Timing does not depend on the pixels except for Score-CAM (constant channels); hence real
    images where we can.
    """
    if batch < 1 or size < 8:
        raise ValueError(f"make_inputs: need batch >= 1 and size >= 8, got batch={batch}, size={size}")
    if real and (IMAGENET_DEV / "manifest.csv").is_file():
        from sycam.data import collate, open_dataset
        from sycam.models import Normalize

        ds = open_dataset(f"folder:{IMAGENET_DEV}", split="all", size=size, limit=batch)
        if len(ds) >= batch:
            b = collate([ds[i] for i in range(batch)])
            return Normalize()(b.images).to(device), b.labels.to(device), f"imagenet-val-dev (first {batch})"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    return x.to(device), (torch.arange(batch) % 10).to(device), "gaussian noise (seed 0)"


def builtin_bundle(device: torch.device) -> tuple[ModelBundle, str]:
    """The built-in CNN as a bundle: trained weights from sycam's cache when present, else the
    same architecture with random weights (this benchmark never trains; speed and memory do not
    depend on the weights)."""
    from sycam.models.builtin import NORMALIZE, BuiltinCNN, builtin_cache_path

    if builtin_cache_path().is_file():
        from sycam.models import load_model

        return load_model("builtin", device=device), "trained (cached)"
    torch.manual_seed(0)
    net = BuiltinCNN().to(device).eval()
    bundle = ModelBundle(module=net, normalize=NORMALIZE, input_size=(64, 64), num_classes=8,
                         default_layer=net.stage_names[-1], name="builtin", class_names=None,
                         stage_layers=net.stage_names)
    return bundle, "random (seed 0; no cached trained weights)"


def tiny_bundle(device: torch.device, size: int = 32) -> ModelBundle:
    """:class:`TinyNet` (8 classes, the built-in benchmark's) as a bundle, for smoke runs."""
    from sycam.models.builtin import NORMALIZE

    torch.manual_seed(0)
    return ModelBundle(module=TinyNet(num_classes=8).to(device).eval(), normalize=NORMALIZE, input_size=(size, size),
                       num_classes=8, default_layer="layer4", name="tiny", stage_layers=["conv1", "layer4"])
