"""Models: the registry (:func:`load_model`), the bundle, and layer discovery by module name."""
from __future__ import annotations

from sycam.models._layers import (
    ProbeResult,
    conv_layers,
    default_layer,
    layers_table,
    probe,
    resolve_layer,
    stage_layers,
)
from sycam.models._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    bundle_from_module,
    load_model,
    torchvision_names,
)
from sycam.models.bundle import ModelBundle

__all__ = [
    "ModelBundle",
    "load_model",
    "bundle_from_module",
    "torchvision_names",
    "Normalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "conv_layers",
    "resolve_layer",
    "default_layer",
    "stage_layers",
    "layers_table",
    "probe",
    "ProbeResult",
]
