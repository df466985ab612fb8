"""The model bundle: a network plus what sycam needs to know to explain it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn


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
