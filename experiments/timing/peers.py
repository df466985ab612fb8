"""One callable per (implementation, method): sycam, its peers and the floor, on equal terms.

Every runner takes nothing and returns maps ``(B, H, W)`` at the input size (a tensor, or
pytorch-grad-cam's numpy array), for fixed images and targets. Peers get the same model, layer,
images and targets; their per-call objects (which register hooks on the model) are created and
released inside the call, so that no contender's hooks linger while another one runs. sycam's
:class:`~sycam.Explainer` is built once outside the timing (it holds no hooks between calls).

Where a peer stops short of sycam's output (torchcam and captum return layer-resolution maps)
the runner adds the bilinear upsampling to the input size, and min-max normalisation for
captum, so that every contender delivers the same thing.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Runner = Callable[[], Any]

#: implementation -> the methods it has (sycam has them all)
IMPLEMENTATIONS: dict[str, tuple[str, ...]] = {
    "sycam": ("gradcam", "gradcampp", "layercam", "scorecam", "winsorcam", "layeravg"),
    "pytorch-grad-cam": ("gradcam", "gradcampp", "layercam", "scorecam"),
    "torchcam": ("gradcam", "gradcampp", "layercam", "scorecam"),
    "captum": ("gradcam",),
}


#: sycam with its masked forwards on the model itself (``SYCAM_FAST_FORWARD=0``), i.e. without the
#: folded channels-last copy of sycam/_inference.py: what that copy is worth
PLAIN = "sycam[plain]"


def is_variant(impl: str) -> bool:
    """Whether ``impl`` is sycam run differently (a variant measured beside sycam itself)."""
    return impl == PLAIN


def has_method(impl: str, method: str) -> bool:
    """Whether ``impl`` implements ``method`` (the table above; a variant is sycam)."""
    if is_variant(impl):
        impl = "sycam"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"bench: unknown implementation {impl!r}; expected one of {', '.join(IMPLEMENTATIONS)}")
    return method in IMPLEMENTATIONS[impl]


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"bench: {type(model).__name__} has no module named {name!r}")
    return modules[name]


def _minmax(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    rng = flat.max(1).values.view(-1, 1, 1) - lo
    return (maps - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def floor_runner(model: nn.Module, layers: str | list[str], x: Tensor, targets: Tensor) -> Runner:
    """The floor: one forward with a hook on the layer(s), one ``torch.autograd.grad`` of the summed
    target logits with respect to the layer output(s). No CAM is computed; returns the gradients."""
    names = [layers] if isinstance(layers, str) else list(layers)
    mods = [_module(model, n) for n in names]

    def run() -> list[Tensor]:
        outs: list[Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in mods]
        try:
            logits = model(x)
        finally:
            for h in hooks:
                h.remove()
        score = logits.gather(1, targets.view(-1, 1)).sum()
        return list(torch.autograd.grad(score, outs))

    return run


def sycam_runner(model: nn.Module, method: str, layer: str | None, x: Tensor, targets: Tensor) -> Runner:
    """sycam's :class:`~sycam.Explainer` for the reference program ``method`` (built once)."""
    from sycam import Explainer

    explainer = Explainer(model, method, layers=layer)

    def run() -> Tensor:
        return explainer(x, targets)

    return run


def plain_runner(model: nn.Module, method: str, layer: str | None, x: Tensor, targets: Tensor) -> Runner:
    """sycam's Explainer with ``SYCAM_FAST_FORWARD=0`` for the call (see :data:`PLAIN`)."""
    import os

    inner = sycam_runner(model, method, layer, x, targets)

    def run() -> Tensor:
        before = os.environ.get("SYCAM_FAST_FORWARD")
        os.environ["SYCAM_FAST_FORWARD"] = "0"
        try:
            return inner()
        finally:
            if before is None:
                del os.environ["SYCAM_FAST_FORWARD"]
            else:
                os.environ["SYCAM_FAST_FORWARD"] = before

    return run


def pgc_runner(model: nn.Module, method: str, layers: str | list[str], x: Tensor, targets: Tensor) -> Runner:
    """pytorch-grad-cam (``grad-cam`` on PyPI): ``GradCAM`` & co. with ``ClassifierOutputTarget``s.

    Several layers: its own semantics (per-layer maps upsampled, averaged, normalised).
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM, "scorecam": ScoreCAM}[method]
    mods = [_module(model, n) for n in ([layers] if isinstance(layers, str) else layers)]
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets.tolist()]

    def run() -> np.ndarray:
        with cls(model=model, target_layers=mods) as cam:
            return cam(input_tensor=x, targets=cam_targets)

    return run


def torchcam_runner(model: nn.Module, method: str, layer: str, x: Tensor, targets: Tensor) -> Runner:
    """torchcam: the extractor hooks ``layer``; the forward runs under grad (no_grad for Score-CAM,
    which only needs the hooked input); maps upsampled to the input size."""
    from torchcam.methods import GradCAM, GradCAMpp, LayerCAM, ScoreCAM

    cls = {"gradcam": GradCAM, "gradcampp": GradCAMpp, "layercam": LayerCAM, "scorecam": ScoreCAM}[method]
    class_idx = [int(t) for t in targets.tolist()]
    size = (int(x.shape[-2]), int(x.shape[-1]))

    def run() -> Tensor:
        with cls(model, target_layer=layer, input_shape=tuple(x.shape[1:])) as extractor:
            if method == "scorecam":
                with torch.no_grad():
                    scores = model(x)
            else:
                scores = model(x)
            cams = extractor(class_idx=class_idx, scores=scores)
        return _upsample(cams[0], size)

    return run


def captum_runner(model: nn.Module, method: str, layer: str, x: Tensor, targets: Tensor) -> Runner:
    """captum's ``LayerGradCam`` (ReLU on), upsampled with ``LayerAttribution.interpolate`` and
    min-max normalised per image."""
    if method != "gradcam":
        raise ValueError(f"bench: captum has no {method!r} (only LayerGradCam)")
    from captum.attr import LayerAttribution, LayerGradCam

    lgc = LayerGradCam(model, _module(model, layer))
    size = (int(x.shape[-2]), int(x.shape[-1]))

    def run() -> Tensor:
        attr = lgc.attribute(x, target=targets, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear")
        return _minmax(up[:, 0].detach())

    return run


def make_runner(impl: str, model: nn.Module, method: str, layer: str | list[str] | None, x: Tensor,
                targets: Tensor) -> Runner:
    """The runner of ``impl`` (``sycam``, ``sycam[plain]``, ``pytorch-grad-cam``, ``torchcam``,
    ``captum`` or ``floor``)."""
    if impl == "floor":
        if layer is None:
            raise ValueError("bench: the floor needs explicit layer names")
        return floor_runner(model, layer, x, targets)
    if not has_method(impl, method):
        raise ValueError(f"bench: {impl} has no {method!r}")
    if impl == PLAIN:
        return plain_runner(model, method, layer if isinstance(layer, str) or layer is None else None, x, targets)
    if impl == "sycam":
        return sycam_runner(model, method, layer if isinstance(layer, str) or layer is None else None, x, targets)
    if layer is None:
        raise ValueError(f"bench: {impl} needs explicit layer names")
    if impl == "pytorch-grad-cam":
        return pgc_runner(model, method, layer, x, targets)
    if not isinstance(layer, str):
        raise ValueError(f"bench: the {impl} runner takes one layer, got {len(layer)}")
    if impl == "torchcam":
        return torchcam_runner(model, method, layer, x, targets)
    return captum_runner(model, method, layer, x, targets)


def as_maps(out: Any) -> Tensor | None:
    """A runner's output as a float CPU tensor (B, H, W), or None when it returns no maps (floor)."""
    if isinstance(out, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(out)).float()
    if isinstance(out, Tensor) and out.ndim == 3:
        return out.detach().float().cpu()
    return None


def agreement(a: Tensor, b: Tensor) -> float:
    """Mean over images of the Pearson correlation of two stacks of maps (B, H, W); 1 = identical
    up to an affine change. A sanity check that the contenders compute the same method."""
    if a.shape != b.shape:
        raise ValueError(f"agreement: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    den = (x.norm(dim=1) * y.norm(dim=1))
    r = torch.where(den > 0, (x * y).sum(1) / den.clamp_min(1e-300), torch.where((x.norm(dim=1) == 0) & (y.norm(dim=1) == 0),
                                                                               torch.ones_like(den), torch.zeros_like(den)))
    return float(r.mean())
