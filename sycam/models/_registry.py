"""Model registry: torchvision classifiers by name, user factories by import path, the builtin model.

Offline by design: weights come from a local file, or from torch hub's cache when a torchvision
weights enum name is given; nothing is ever downloaded.
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from sycam.errors import BOUNDARY, ModelError, as_sycam
from sycam.models._layers import default_layer, probe, stage_layers
from sycam.models.bundle import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, Normalize

__all__ = ["Normalize", "IMAGENET_MEAN", "IMAGENET_STD", "load_model", "torchvision_names", "bundle_from_module"]


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _default_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:1, mps, ...") from None


# --------------------------------------------------------------------------- weights files


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: plain, or under 'state_dict'/'model'; strips a
    DataParallel 'module.' prefix."""
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"weights file {path}: expected a state dict (a mapping of parameter names to tensors, possibly "
            f"under 'state_dict' or 'model'), got {type(obj).__name__}"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# torchvision's DenseNet checkpoints use the old key names 'norm.1', 'conv.2', ...
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _fix_densenet_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _load_weights_file(module: nn.Module, path: Path, arch: str) -> None:
    """Load a local state dict strictly, with an error that names the file and what differs."""
    if path.is_dir():
        raise IsADirectoryError(f"weights file {path} is a directory; give the state-dict file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(
            f"weights file {path}: cannot be read as a tensor state dict with torch.load(weights_only=True) "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); save model.state_dict(), not the model"
        ) from e
    sd = _extract_state_dict(obj, path)
    own = module.state_dict()
    if any(_DENSENET_OLD_KEY.match(k) for k in sd):
        sd = _fix_densenet_keys(sd)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {few(mismatched)}")
        raise ValueError(
            f"weights file {path} does not fit architecture {arch!r} ({type(module).__name__}): " + "; ".join(parts)
        )
    module.load_state_dict(sd, strict=True)


def _looks_like_path(weights: str) -> bool:
    return (
        os.sep in weights
        or "/" in weights
        or weights.endswith((".pth", ".pt", ".bin", ".ckpt"))
        or Path(weights).expanduser().exists()
    )


def _resolve_weights_enum(name: str, weights: str) -> Any:
    """A torchvision weights enum member from 'IMAGENET1K_V1', 'DEFAULT' or 'Enum_Name.MEMBER'."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    member = weights
    if "." in weights:
        prefix, member = weights.rsplit(".", 1)
        if prefix != enum.__name__:
            raise ValueError(f"weights {weights!r} are not for {name!r}: its weights enum is {enum.__name__}")
    available = [m.name for m in enum] + ["DEFAULT"]
    if member not in available:
        raise ValueError(
            f"unknown weights {weights!r} for {name!r}: expected a local file path or one of "
            f"{', '.join(f'{enum.__name__}.{a}' for a in available)}"
        )
    return enum[member] if member != "DEFAULT" else enum.DEFAULT


def _cached_weights_file(w: Any) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)


def _class_names(name: str, num_classes: int) -> list[str] | None:
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    for w in enum:
        cats = w.meta.get("categories")
        if cats and len(cats) == num_classes:
            return list(cats)
    return None


# --------------------------------------------------------------------------- bundles


def bundle_from_module(*args: Any, **kwargs: Any) -> ModelBundle:
    """See :func:`_bundle_from_module`; every failure is a :class:`~sycam.errors.ModelError`."""
    try:
        return _bundle_from_module(*args, **kwargs)
    except BOUNDARY as err:
        raise as_sycam(err, ModelError) from err


def _bundle_from_module(
    module: nn.Module,
    *,
    name: str = "custom",
    normalize: Any = None,
    input_size: tuple[int, int] = (224, 224),
    class_names: list[str] | None = None,
    device: torch.device | str | None = None,
) -> ModelBundle:
    """Wrap a classifier in a :class:`ModelBundle`: eval mode on ``device``, ``num_classes`` from a
    probe forward at ``input_size``, the default target layer and the stage layers from
    :func:`default_layer` and :func:`stage_layers`. ``normalize`` defaults to ImageNet's."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name}: expected an nn.Module, got {type(module).__name__}")
    module = module.to(_default_device(device)).eval()
    result = probe(module, input_size)
    if result.output_shape is None or len(result.output_shape) != 2:
        raise ValueError(
            f"{name}: the model must return logits of shape (B, K); at input (1, 3, {input_size[0]}, {input_size[1]}) "
            f"it returned {result.output_shape if result.output_shape is not None else 'a non-tensor'}"
        )
    num_classes = int(result.output_shape[1])
    if class_names is not None and len(class_names) != num_classes:
        class_names = None  # e.g. ImageNet names for a fine-tuned head
    return ModelBundle(
        module=module,
        normalize=normalize if normalize is not None else Normalize(),
        input_size=(int(input_size[0]), int(input_size[1])),
        num_classes=num_classes,
        default_layer=default_layer(module, input_size),
        name=name,
        class_names=class_names,
        stage_layers=stage_layers(module, input_size),
    )


def _from_import_path(spec: str, weights: str | None, device: torch.device) -> ModelBundle:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"import path {spec!r}: expected 'package.module:factory'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"import path {spec!r}: cannot import module {mod_name!r} ({e})") from e
    except SyntaxError as e:
        raise ValueError(f"import path {spec!r}: cannot import module {mod_name!r} (SyntaxError in {e.filename}, "
                         f"line {e.lineno}: {e.msg})") from e
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"import path {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"import path {spec!r}: {attr!r} is not callable")
    try:
        made = obj()
    except TypeError as e:
        raise TypeError(f"import path {spec!r}: calling the factory failed ({e}); a factory takes no arguments") from e
    except Exception as e:  # noqa: BLE001 - whatever the user's code raises, say where it came from
        raise RuntimeError(f"import path {spec!r}: the user's factory failed: {type(e).__name__}: {e}") from e
    if isinstance(made, ModelBundle):
        if weights is not None:
            _load_weights_file(made.module, Path(weights).expanduser(), spec)
        made.module.to(device).eval()
        return made
    if not isinstance(made, nn.Module):
        raise TypeError(f"import path {spec!r}: the factory returned {type(made).__name__}, expected an nn.Module or a ModelBundle")
    if weights is not None:
        _load_weights_file(made, Path(weights).expanduser(), spec)
    warnings.warn(
        f"{spec}: assuming ImageNet normalisation and input size 224x224; return a ModelBundle from the factory "
        "to set them",
        stacklevel=3,
    )
    return bundle_from_module(made, name=spec, device=device)


def load_model(name: str, weights: str | None = None, device: torch.device | str | None = None) -> ModelBundle:
    """See :func:`_load_model`; every failure is a :class:`~sycam.errors.ModelError`."""
    try:
        return _load_model(name, weights, device)
    except BOUNDARY as err:
        raise as_sycam(err, ModelError) from err


def _load_model(name: str, weights: str | None = None, device: torch.device | str | None = None) -> ModelBundle:
    """Load a classifier as a :class:`ModelBundle`, offline.

    ``name`` is one of
    - a torchvision classification model name (``resnet50``, ``vgg16_bn``, ``mobilenet_v2``,
      ``densenet121``, ``efficientnet_b0``, ``convnext_tiny``, ``regnet_y_400mf``, ...);
      ``weights`` is a local state-dict file, or a torchvision weights enum name
      (``IMAGENET1K_V1``, ``MobileNet_V2_Weights.IMAGENET1K_V1``, ``DEFAULT``) resolved only
      from torch hub's cache (``$TORCH_HOME/hub/checkpoints``); ``None`` gives random weights;
    - an import path ``package.module:factory``: ``factory()`` returns an ``nn.Module`` (ImageNet
      normalisation and 224x224 are assumed) or a ``ModelBundle``; ``weights`` is a local file;
    - ``builtin``: sycam's own small model (``sycam.models.builtin.load_builtin_model``).

    The model is in eval mode on ``device`` (default: CUDA when available, else CPU).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"load_model: model name must be a non-empty string, got {name!r}")
    name = name.strip()
    dev = _default_device(device)
    if name == "builtin":
        if weights is not None:
            raise ValueError("load_model('builtin'): the builtin model brings its own weights; do not pass weights")
        try:  # lazy: a separate work package, may be absent
            from sycam.models import builtin
        except ImportError as e:
            raise ImportError(f"load_model('builtin'): sycam.models.builtin is not available ({e})") from e

        return builtin.load_builtin_model(device=dev)
    if ":" in name:
        return _from_import_path(name, weights, dev)

    import torchvision.models as tvm

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names + ["builtin"], n=5, cutoff=0.6)
        raise ValueError(
            f"unknown model {name!r}. Accepted: a torchvision classification model name (e.g. resnet50, vgg16, "
            "mobilenet_v2, densenet121, efficientnet_b0, convnext_tiny), an import path 'package.module:factory', "
            f"or 'builtin'. Close matches: {', '.join(close) if close else 'none'}"
        )
    if weights is None:
        module = tvm.get_model(name, weights=None)
    elif _looks_like_path(weights):
        module = tvm.get_model(name, weights=None)
        _load_weights_file(module, Path(weights).expanduser(), name)
    else:
        w = _resolve_weights_enum(name, weights)
        cached = _cached_weights_file(w)
        if not cached.is_file():
            raise FileNotFoundError(
                f"weights {type(w).__name__}.{w.name} for {name!r} are not in torch hub's cache ({cached}) and sycam "
                f"is offline: it never downloads. Pass a local state-dict file as weights, or copy the file "
                f"{os.path.basename(w.url)} to {cached.parent}"
            )
        # torchvision applies its own fix-ups (DenseNet keys, GoogLeNet/Inception transform_input) and
        # reads the cached file; it downloads only when the file is absent, which we ruled out above.
        module = tvm.get_model(name, weights=w)
    return bundle_from_module(module, name=name, class_names=_class_names(name, 1000), device=dev)
