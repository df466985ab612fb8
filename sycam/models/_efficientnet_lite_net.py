"""EfficientNet-Lite as built by the ``efficientnet-lite-pytorch`` package, with one change for CAMs.

Imported only by :mod:`sycam.models.efficientnet_lite`, and only when that package is installed
(this module imports it at the top so that :class:`EfficientNetLite` is a module-level class and
bundles holding it pickle by reference, as joblib workers need).

The package's ``EfficientNet.extract_features`` applies ONE activation module (``_swish``, a
``ReLU6`` for the Lite models) twice: after the stem's batch norm and after the head's. A module
called twice cannot be a CAM layer (sycam's hooks see only one of its outputs), so the feature
map that Grad-CAM & co. want — the head's 1280 channels *after* ReLU6, the analogue of
MobileNetV2's ``features.18`` — would have no module name. :class:`EfficientNetLite` gives the
stem and the head activation modules of their own (``_stem_act``, ``_head_act``; parameter-free,
so the state dict is unchanged) and drops the shared ``_swish``. The logits are those of the
package's model (``tests/test_efficientnet_lite.py`` checks it to 1e-4 on random inputs).
"""
from __future__ import annotations

from typing import Any

from efficientnet_lite_pytorch import EfficientNet  # the optional package (pip install --no-deps)
from efficientnet_lite_pytorch.utils import get_model_params
from torch import Tensor, nn

__all__ = ["EfficientNetLite", "build_lite"]


class EfficientNetLite(EfficientNet):  # type: ignore[misc]  # untyped third-party base
    """The package's EfficientNet with separate stem and head activations (see the module docstring).

    Module names are the package's (``_conv_stem``, ``_blocks.0`` … ``_blocks.15``, ``_conv_head``,
    ``_bn1``, ``_fc``) plus ``_stem_act`` and ``_head_act``.
    """

    def __init__(self, blocks_args: Any, global_params: Any) -> None:
        super().__init__(blocks_args, global_params)
        if global_params.relu_fn != "relu6":
            raise ValueError(f"EfficientNetLite: expected the Lite models' ReLU6, got relu_fn={global_params.relu_fn!r}")
        del self._swish  # replaced by the two modules below; its forward is the same ReLU6
        self._stem_act = nn.ReLU6()
        self._head_act = nn.ReLU6()

    def set_swish(self, memory_efficient: bool = True) -> None:
        """Not supported: the Lite models use ReLU6, not Swish."""
        raise NotImplementedError("EfficientNetLite uses ReLU6; set_swish would change the model")

    def extract_features(self, inputs: Tensor) -> Tensor:
        """Stem, the MBConv blocks, head: the package's computation with the activations split.

        The blocks' drop-connect rate is the package's ``rate · idx / n_blocks`` (it acts only in
        training mode).
        """
        x = self._stem_act(self._bn0(self._conv_stem(inputs)))
        n = len(self._blocks)
        for idx, block in enumerate(self._blocks):
            rate = self._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / n
            x = block(x, drop_connect_rate=rate)
        return self._head_act(self._bn1(self._conv_head(x)))


def build_lite(model_name: str = "efficientnet-lite0") -> EfficientNetLite:
    """An :class:`EfficientNetLite` with random weights, 1000 classes.

    ``image_size=None`` selects the package's dynamically padded ("SAME", as in TensorFlow)
    convolutions, correct at every input size; the statically padded ones it builds by default
    are computed for 224×224 and pad wrongly at sizes whose stages become odd. At 224×224 both
    pad identically.
    """
    EfficientNet._check_model_name_is_valid(model_name)
    if not model_name.startswith("efficientnet-lite"):
        raise ValueError(f"build_lite: {model_name!r} is not an EfficientNet-Lite model")
    blocks_args, global_params = get_model_params(model_name, {"image_size": None})
    return EfficientNetLite(blocks_args, global_params)
