"""Explainers for users: a program bound to a model, called on ``(images, targets)``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from sycam._state import eval_mode
from sycam.capture import capture
from sycam.compile import CompiledProgram, LayerResolver
from sycam.errors import SycamError
from sycam.lang import ast as A
from sycam.models.bundle import ModelBundle


def as_program(program: A.Program | str | Path) -> A.Program:
    """A Program from a Program, a reference name (``gradcam``), a ``.cam`` path or program text
    (:func:`sycam.programs.resolve_program`)."""
    from sycam.programs import resolve_program

    return resolve_program(program)


def _layer_name(module: nn.Module, layer: str | int | nn.Module) -> str | int:
    if isinstance(layer, bool) or not isinstance(layer, (str, int, nn.Module)):
        raise SycamError(f"a layer is a module name, a conv index or a sub-module; got {layer!r} ({type(layer).__name__})")
    if isinstance(layer, nn.Module):
        for name, m in module.named_modules():
            if m is layer and name:
                return name
        raise SycamError("the layer module given is not a sub-module of the model")
    return layer


class Explainer:
    """``Explainer(model, program, layers=...)``: call it on ``(images, targets)`` to get
    ``(B, H, W)`` maps in [0, 1].

    - ``model``: a :class:`~sycam.models.bundle.ModelBundle` or a plain ``nn.Module``. With a
      bundle, images are in [0, 1] (as datasets and image files give them) and the explainer
      normalises them with ``bundle.normalize`` before the network sees them; the bundle's
      default layer and stages are used. With a plain module, images go to the network as given
      (normalise them yourself if the network expects it).
    - ``program``: a reference name (``"gradcam"``), a ``.cam`` path, program text or a Program.
    - ``layers``: the default target layer (bare ``A``/``G``), by module name, conv index or module.
      Several layers: the program runs with each as the default layer and the normalised maps
      are averaged at the input size (pytorch-grad-cam's semantics for several target layers).
    - ``params``: values for the program's ``?params`` (defaults otherwise).

    - ``masked_batch``: images per extra forward of Score-CAM / Ablation-CAM (default: 8 on CPU,
      64 on GPUs; see :func:`~sycam.capture.capture`).

    One forward and one ``autograd.grad`` per chunk of ``chunk_size`` images; the model comes
    back as it was (mode, hooks, ``.grad``).
    """

    def __init__(self, model: nn.Module | ModelBundle, program: A.Program | str | Path,
                 layers: str | int | nn.Module | Sequence[str | int | nn.Module] | None = None,
                 params: Mapping[str, float] | None = None, chunk_size: int = 32,
                 masked_batch: int | None = None) -> None:
        self.normalize: Callable[[Tensor], Tensor] | None
        if isinstance(model, ModelBundle):
            module, default, stages = model.module, model.default_layer, model.stage_layers
            self.normalize = model.normalize
        elif isinstance(model, nn.Module):
            module, default, stages = model, None, None
            self.normalize = None
        else:
            raise TypeError(f"model must be an nn.Module or a ModelBundle, got {type(model).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if masked_batch is not None and (isinstance(masked_batch, bool) or not isinstance(masked_batch, int)
                                         or masked_batch < 1):
            raise ValueError(f"masked_batch must be a positive int, got {masked_batch!r}")
        self.masked_batch = masked_batch
        self.module = module
        self.program = as_program(program)
        self.chunk_size = chunk_size
        if layers is None or not isinstance(layers, (list, tuple)):
            chosen = [default if layers is None else _layer_name(module, layers)]  # type: ignore[arg-type]
        else:
            chosen = [_layer_name(module, layer) for layer in layers]
            if not chosen:
                raise SycamError("layers is an empty list; give at least one layer or None for the default")
        base = LayerResolver(module, None, None)
        targets = [base.by_index(c) if isinstance(c, int) else (base.by_name(c) if c is not None else base.default)
                   for c in chosen]
        self.layers = targets
        self.program = self._lift(self.program, targets)
        self.compiled = CompiledProgram(self.program, LayerResolver(module, targets[0], stages or None))
        self.params = self.compiled.param_values(params)

    @staticmethod
    def _lift(program: A.Program, layers: list[str]) -> A.Program:
        if len(layers) == 1:
            return program
        body = A.Fuse(A.Each(A.SelList(tuple(A.LayerRef(name=n) for n in layers)), A.Call("norm", (A.inline_lets(program),))),
                      None, "mean", "input")
        return A.Program(body=body, score=program.score)

    @property
    def request(self):
        return self.compiled.request

    def __call__(self, images: Tensor, targets: Tensor | int | Sequence[int] | None = None) -> Tensor:
        """Maps ``(B, H, W)`` in [0, 1] for ``images`` ``(B, C, H, W)`` (in [0, 1] with a bundle, the
        network's input otherwise) and ``targets`` (class indices: one per image, one for all, or
        None for each image's predicted class)."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise SycamError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
        if images.shape[0] == 0:
            raise SycamError(f"images is an empty batch: shape {tuple(images.shape)}")
        device = images.device
        targets_t = self._targets(images, targets)
        outs = []
        for i in range(0, images.shape[0], self.chunk_size):
            caps = capture(self.module, self._inputs(images[i:i + self.chunk_size]), targets_t[i:i + self.chunk_size],
                           self.request, chunk_size=self.masked_batch)
            outs.append(self.compiled(caps, self.params))
        return torch.cat(outs).to(device)

    def _inputs(self, images: Tensor) -> Tensor:
        """What the network is fed: the bundle's normalisation of [0, 1] images, or the images."""
        return self.normalize(images) if self.normalize is not None else images

    def _targets(self, images: Tensor, targets) -> Tensor:
        b = images.shape[0]
        if b == 0:
            raise SycamError("images is an empty batch (B = 0)")
        if targets is None:
            with torch.no_grad(), eval_mode(self.module):
                preds = []
                for i in range(0, b, self.chunk_size):
                    out = self.module(self._inputs(images[i:i + self.chunk_size]))
                    if not isinstance(out, Tensor) or out.ndim != 2:
                        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                        raise SycamError(f"the model's output must be (B, K) logits to pick the predicted class; got {shape}")
                    preds.append(out.argmax(1))
                return torch.cat(preds)
        if isinstance(targets, bool) or isinstance(targets, str):
            raise SycamError(f"targets must be class indices (integers); got {targets!r}")
        if isinstance(targets, int):
            return torch.full((b,), targets, dtype=torch.long, device=images.device)
        try:
            raw = torch.as_tensor(targets, device=images.device)
        except (TypeError, ValueError, RuntimeError):
            raise SycamError(f"targets must be class indices (integers); got {targets!r}") from None
        if raw.is_floating_point() and not bool((raw == raw.round()).all()):
            raise SycamError(f"targets must be integer class indices; got {targets!r}")
        t = raw.to(torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.shape[0] != b:
            raise SycamError(f"got {t.shape[0]} targets for {b} images")
        return t
