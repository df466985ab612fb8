"""``sycam explain`` (heatmap overlays for images) and ``sycam layers`` (a model's layers)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sycam.errors import SycamError


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="builtin", help="builtin (default), a torchvision name, or package.module:factory")
    parser.add_argument("--weights", default=None, help="local weights file (loaded with weights_only=True) or a torchvision enum name")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    if name == "layers":
        return
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--program", default="gradcam", help="a reference name, a .cam file, or program text")
    parser.add_argument("--layer", action="append", default=None, help="target layer (repeat for several); default: the model's")
    parser.add_argument("--target", type=int, default=None, help="class to explain (default: the prediction)")
    parser.add_argument("--param", action="append", default=[], help="?param value, e.g. --param p=50")
    parser.add_argument("--out", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")


def _params(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip().lstrip("?")] = float(value)
        except ValueError:
            raise SycamError(f"--param expects NAME=NUMBER, got {item!r}") from None
        if not sep:
            raise SycamError(f"--param expects NAME=NUMBER, got {item!r}")
    return out


def run(name: str, args: argparse.Namespace) -> int:
    import torch

    from sycam.models import layers_table, load_model

    device = torch.device(args.device) if args.device else None
    bundle = load_model(args.model, args.weights, device=device)
    if name == "layers":
        print(layers_table(bundle))
        return 0

    from sycam._state import eval_mode
    from sycam.data._io import image_to_tensor, load_rgb
    from sycam.explainer import Explainer
    from sycam.files import check_writable
    from sycam.viz import save_overlay

    out = check_writable(args.out)  # before the first image is explained
    explainer = Explainer(bundle, args.program, layers=args.layer, params=_params(args.param))
    size = bundle.input_size[0]
    model_device = next(bundle.module.parameters()).device
    names = [bundle.class_names[i] if bundle.class_names and i < len(bundle.class_names) else str(i) for i in range(bundle.num_classes)]
    for path in args.images:
        image01 = image_to_tensor(load_rgb(Path(path)), size).to(model_device)
        inputs = bundle.normalize(image01[None])
        with torch.no_grad(), eval_mode(bundle.module):
            probs = torch.softmax(bundle.module(inputs), 1)[0]
        target = int(probs.argmax()) if args.target is None else args.target
        if not 0 <= target < bundle.num_classes:
            raise SycamError(f"--target {target} is out of range: the model has {bundle.num_classes} classes")
        cam = explainer(image01[None], target)[0]  # the explainer normalises with the bundle
        dest = out / f"{Path(path).stem}.{_slug(args.program)}.png"
        save_overlay(dest, image01.cpu(), cam.cpu(), alpha=args.alpha)
        print(f"{path}: explained class {target} ({names[target]}, p={float(probs[target]):.3f}) -> {dest}")
    return 0


def _slug(program: str) -> str:
    stem = Path(program).stem if program.endswith(".cam") else program
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
    return keep or "program"
