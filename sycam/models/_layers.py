"""Layer discovery: conv layers, default target layer, resolution stages and the ``layers`` table.

Everything here works on a plain ``nn.Module`` by module name (``model.named_modules()``), so
layer names in programs are the user's own. Shapes come from one dummy forward pass (the
*probe*), cached per module and input size.
"""
from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sycam._state import eval_mode

__all__ = [
    "ProbeResult",
    "probe",
    "conv_layers",
    "resolve_layer",
    "default_layer",
    "stage_layers",
    "layers_table",
]


@dataclass
class ProbeResult:
    """What one dummy forward pass tells about a network.

    ``shapes[name]`` is the output shape of module ``name`` at its last call (``None`` when the
    output was not a tensor), ``in_shapes`` the shape of its first positional input, ``calls``
    how often it ran, ``order`` the module names in the order their forward finished (children
    before parents), ``output_shape`` the network output's shape (``None`` if not a tensor).
    """

    input_size: tuple[int, int]
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    in_shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    out_types: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    output_shape: tuple[int, ...] | None = None


# Probe results per module and input size; weak keys so that cached models can be freed.
_PROBES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int, int], ProbeResult]]" = (
    weakref.WeakKeyDictionary()
)


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _module_dtype(module: nn.Module) -> torch.dtype:
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def probe(module: nn.Module, input_size: tuple[int, int] = (224, 224), in_channels: int = 3) -> ProbeResult:
    """Run one dummy forward pass (batch 1, zeros, eval mode, no grad) recording every module's
    output shape, call count and execution order. Cached per (module, size, channels).

    The module's ``training`` flags are restored afterwards and no hook is left behind.
    """
    if len(input_size) != 2 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"probe: input_size must be (H, W) with positive sizes, got {input_size!r}")
    key = (int(input_size[0]), int(input_size[1]), int(in_channels))
    cache = _PROBES.get(module)
    if cache is not None and key in cache:
        return cache[key]

    result = ProbeResult(input_size=(key[0], key[1]))
    names: dict[int, str] = {}
    for name, m in module.named_modules():
        names.setdefault(id(m), name)

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            result.calls[name] = result.calls.get(name, 0) + 1
            result.order.append(name)
            result.shapes[name] = tuple(out.shape) if isinstance(out, Tensor) else None
            result.out_types[name] = type(out).__name__
            if name not in result.in_shapes:
                first = args[0] if args else None
                result.in_shapes[name] = tuple(first.shape) if isinstance(first, Tensor) else None

        return hook

    handles = []
    try:
        for name, m in module.named_modules():
            if name:  # the root's output is recorded separately
                handles.append(m.register_forward_hook(make_hook(name)))
        x = torch.zeros(1, key[2], key[0], key[1], device=_module_device(module), dtype=_module_dtype(module))
        with torch.no_grad(), eval_mode(module):
            try:
                out = module(x)
            except RuntimeError as err:
                raise RuntimeError(f"{type(module).__name__} failed on sycam's probe input of shape {tuple(x.shape)} "
                                   f"(used to find its layers' output shapes): {err}") from err
        result.output_shape = tuple(out.shape) if isinstance(out, Tensor) else None
    finally:
        for h in handles:
            h.remove()
    # a shared module appears once, at its last call
    seen: set[str] = set()
    order: list[str] = []
    for name in reversed(result.order):
        if name not in seen:
            seen.add(name)
            order.append(name)
    result.order = list(reversed(order))
    _PROBES.setdefault(module, {})[key] = result
    return result


def conv_layers(module: nn.Module) -> list[str]:
    """Names of all ``nn.Conv2d`` modules in ``named_modules()`` order (the ``convs`` selection)."""
    return [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def _close(name: str, candidates: list[str], n: int = 5) -> str:
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not matches:
        # fall back to names that contain the request (e.g. 'layer4' -> 'layer4.0', ...)
        matches = [c for c in candidates if name and name in c][:n]
    return ", ".join(repr(m) for m in matches) if matches else "none"


def resolve_layer(module: nn.Module, ref: str | int | None, default: str | None = None) -> str:
    """Resolve a layer reference to a module name.

    ``ref`` is a module name from ``named_modules()`` or an integer index into
    :func:`conv_layers` (negative counts from the end, as in Python). ``None`` resolves to
    ``default``. Errors list close candidates or the number of conv layers.
    """
    if ref is None:
        if default is None:
            raise ValueError("resolve_layer: no layer given and no default layer known for this model")
        ref = default
    if isinstance(ref, bool):
        raise TypeError(f"resolve_layer: layer reference must be a module name or an int, got bool {ref!r}")
    if isinstance(ref, int):
        convs = conv_layers(module)
        if not convs:
            raise ValueError(
                f"resolve_layer: layer index {ref} needs Conv2d layers, but {type(module).__name__} has none; "
                "refer to the layer by module name instead"
            )
        if not -len(convs) <= ref < len(convs):
            raise IndexError(
                f"resolve_layer: conv layer index {ref} out of range: {type(module).__name__} has "
                f"{len(convs)} Conv2d layers (valid indices {-len(convs)}..{len(convs) - 1})"
            )
        return convs[ref]
    if not isinstance(ref, str):
        raise TypeError(f"resolve_layer: layer reference must be a module name or an int, got {type(ref).__name__}")
    names = [n for n, _ in module.named_modules() if n]
    if ref in names:
        return ref
    raise KeyError(
        f"resolve_layer: no module named {ref!r} in {type(module).__name__}; close matches: "
        f"{_close(ref, names)} (see `sycam layers --model ...` for the full list)"
    )


# Default target layers of known torchvision families, as recommended by pytorch-grad-cam's
# README (last block / last feature map before global pooling).
def _known_default(module: nn.Module) -> str | None:
    import torchvision.models as tv  # lazy: importing torchvision is slow
    children = dict(module.named_children())

    def last_of(container: str) -> str | None:
        seq = children.get(container)
        if isinstance(seq, nn.Sequential) and len(seq) > 0:
            return f"{container}.{len(seq) - 1}"
        return None

    if isinstance(module, tv.ResNet):
        return "layer4"
    if isinstance(module, (tv.VGG, tv.AlexNet)):
        return last_of("features")  # features[-1]: the last max-pool, as in pytorch-grad-cam
    if isinstance(module, (tv.MobileNetV2, tv.MobileNetV3)):
        return last_of("features")  # mobilenet_v2: features.18
    if isinstance(module, (tv.DenseNet, tv.EfficientNet, tv.ConvNeXt, tv.SqueezeNet)):
        # DenseNet: ``features`` ends at norm5; its output is ReLU'd in place afterwards, which
        # capture() handles by cloning.
        return "features"
    if isinstance(module, tv.RegNet):
        return "trunk_output"
    if isinstance(module, tv.MNASNet):
        return "layers"
    if isinstance(module, tv.ShuffleNetV2):
        return "conv5"
    if isinstance(module, tv.GoogLeNet):
        return "inception5b"
    if isinstance(module, tv.Inception3):
        return "Mixed_7c"
    return None


def _is_map(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1


def default_layer(module: nn.Module, input_size: tuple[int, int] = (224, 224)) -> str:
    """The default target layer (bare ``A``/``G``).

    Known torchvision families use pytorch-grad-cam's recommendations (ResNet ``layer4``, VGG
    ``features[-1]``, MobileNet ``features[-1]``, DenseNet/EfficientNet/ConvNeXt ``features``,
    ...). Otherwise, and whenever that choice does not give a 4-D map, a probe picks the last
    module (in execution order, called once) whose output is 4-D with spatial size > 1.
    """
    result = probe(module, input_size)
    known = _known_default(module)
    if known is not None and known in result.shapes and _is_map(result.shapes[known]) and result.calls.get(known) == 1:
        return known
    candidates = [n for n in result.order if _is_map(result.shapes.get(n)) and result.calls.get(n) == 1]
    if not candidates:
        raise ValueError(
            f"default_layer: {type(module).__name__} has no module with a 4-D (B, C, h, w) output of spatial "
            f"size > 1 at input size {tuple(input_size)}; CAM methods need convolutional feature maps"
        )
    return candidates[-1]


def _spatial(shape: tuple[int, ...] | None) -> tuple[int, int] | None:
    return (shape[2], shape[3]) if shape is not None and len(shape) == 4 else None


def stage_layers(module: nn.Module, input_size: tuple[int, int] = (224, 224)) -> list[str]:
    """Names of the Conv2d that ends each resolution stage, from a probe, finest stage first.

    Convs are taken in execution order with their output size; convs applied to 1x1 inputs
    (squeeze-and-excitation) are ignored. The stage of size ``r`` ends at the last conv of size
    ``r`` before the first later conv of a smaller size; the last conv ends the last stage. When
    the size shrinks *inside* a strided conv whose block already ran convs at size ``r`` (ResNet
    v1.5's ``layer2.0.conv1`` before the strided ``layer2.0.conv2``, MobileNetV2's expansion conv
    before its strided depthwise conv, ShuffleNet's parallel branch), those convs belong to the
    next block: the stage ends at the last size-``r`` conv before that block (or has no conv).
    """
    result = probe(module, input_size)
    conv_names = set(conv_layers(module))
    seq = [n for n in result.order if n in conv_names and _spatial(result.shapes.get(n)) is not None]
    spatial_in = [n for n in seq if (_spatial(result.in_shapes.get(n)) or (2, 2)) != (1, 1)]
    if spatial_in:  # drop convs on pooled 1x1 vectors (squeeze-and-excitation)
        seq = spatial_in
    if not seq:
        return []
    size = [_spatial(result.shapes[n]) for n in seq]
    area = [s[0] * s[1] for s in size]  # type: ignore[index]
    ends: dict[int, int] = {}  # conv index -> area of its stage
    for r in dict.fromkeys(size):  # distinct sizes in order of first appearance
        first = size.index(r)
        a = r[0] * r[1]  # type: ignore[index]
        j = next((i for i in range(first + 1, len(seq)) if area[i] < a), None)
        if j is None:
            continue  # the coarsest stage: ended by the last conv below
        cands = [i for i in range(j) if size[i] == r]
        if _spatial(result.in_shapes.get(seq[j])) == r:  # size shrinks inside the strided conv j
            parts = seq[j].split(".")
            for depth in range(len(parts) - 1, 0, -1):
                prefix = ".".join(parts[:depth]) + "."
                inside = [i for i in range(j) if seq[i].startswith(prefix)]
                if inside:
                    # only a block that started at size r (not one that also holds the stem or
                    # an earlier transition into r)
                    if all(size[i] == r for i in inside) and _spatial(result.in_shapes.get(seq[min(inside)])) == r:
                        cands = [i for i in cands if i < min(inside)]
                    break
        if cands:
            ends[cands[-1]] = a
    ends[len(seq) - 1] = area[-1]
    # finest first; equal sizes in execution order
    order = sorted(ends, key=lambda i: (-ends[i], i))
    return list(dict.fromkeys(seq[i] for i in order))


def _fmt_shape(shape: tuple[int, ...] | None, typ: str | None) -> str:
    if shape is None:
        return "-" if typ is None else f"<{typ}>"
    return "(" + ", ".join(str(s) for s in shape[1:]) + ")"


def layers_table(bundle: Any) -> str:
    """Text table of a model's layers (``sycam layers --model NAME``).

    One row per Conv2d, per top-level child, per child of a top-level container (blocks or
    stages), plus the default and stage layers: conv index (and negative index), module name,
    type, output shape per image at ``bundle.input_size`` (C, h, w), and markers
    ``default``/``stage``.
    """
    module: nn.Module = bundle.module
    result = probe(module, tuple(bundle.input_size))
    convs = conv_layers(module)
    conv_idx = {n: i for i, n in enumerate(convs)}
    stages = set(bundle.stage_layers or [])
    rows = []
    for name, m in module.named_modules():
        if not name:
            continue
        depth = name.count(".")
        if not (
            name in conv_idx or depth == 0 or (depth == 1 and len(list(m.children())) > 0)
            or name == bundle.default_layer or name in stages
        ):
            continue
        idx = f"{conv_idx[name]}/{conv_idx[name] - len(convs)}" if name in conv_idx else ""
        marks = []
        if name == bundle.default_layer:
            marks.append("default")
        if name in stages:
            marks.append("stage")
        if result.calls.get(name, 0) > 1:
            marks.append(f"shared x{result.calls[name]}")
        if name not in result.calls:
            marks.append("not run")
        rows.append((idx, name, type(m).__name__, _fmt_shape(result.shapes.get(name), result.out_types.get(name)), " ".join(marks)))
    header = ("conv", "name", "type", "output (C, h, w)", "")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    lines = [
        f"model {bundle.name}: {type(module).__name__}, input {bundle.input_size[0]}x{bundle.input_size[1]}, "
        f"{bundle.num_classes} classes, {len(convs)} Conv2d layers (conv index i / negative index)",
        f"default layer: {bundle.default_layer}",
        f"stage layers: {', '.join(bundle.stage_layers) if bundle.stage_layers else '-'}",
        "",
    ]
    fmt = "  ".join(f"{{:{'>' if i == 0 else '<'}{w}}}" for i, w in enumerate(widths)) + "  {}"
    lines.append(fmt.format(*header).rstrip())
    for r in rows:
        lines.append(fmt.format(*r).rstrip())
    return "\n".join(lines) + "\n"
