"""The model bundle: a network plus what sycam needs to know to explain it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize:
    """Per-channel normalisation ``(x - mean) / std`` of images in [0, 1], shape (..., C, H, W).

    The ``normalize`` of every bundle sycam builds (ImageNet statistics by default; the built-in
    CNN's are the benchmark's, mean 0.5 and std 0.25). A plain picklable callable (bundles are
    shipped to joblib workers); works on the device and dtype of its input.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != len(std) or not mean:
            raise ValueError(f"Normalize: mean and std need the same non-zero length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize: std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 3 or x.shape[-3] != len(self.mean):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Normalize: expected images (..., {len(self.mean)}, H, W), got {shape}")
        if not x.is_floating_point():
            raise TypeError(f"Normalize: expected float images in [0, 1], got dtype {x.dtype}")
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Normalize) and (self.mean, self.std) == (other.mean, other.std)

    def __hash__(self) -> int:
        return hash((self.mean, self.std))


@dataclass
class ModelBundle:
    """A classifier and its metadata.

    ``module`` is the user's network, untouched (module names are the user's own, so layer names
    in programs match ``model.named_modules()``). ``normalize`` maps images in [0, 1] to the
    network's input; datasets yield [0, 1] images so that metrics can perturb pixels.
    """

    module: nn.Module
    normalize: Callable[[Tensor], Tensor]
    input_size: tuple[int, int]  # (H, W) the network expects / was trained at
    num_classes: int
    default_layer: str  # module name of the default target layer (bare ``A``/``G``)
    name: str = "custom"
    class_names: list[str] | None = None
    # module names of the last layer of each resolution stage (selector ``stages``)
    stage_layers: list[str] = field(default_factory=list)
