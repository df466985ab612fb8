"""Count what an explainer costs in passes, with hooks: forward calls and the images they carry,
backward passes through the logits, how deep the backward goes, and parameter gradients."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

from torch import Tensor, nn


@dataclass
class PassCount:
    """What one call cost.

    ``forwards``: calls of the model's ``forward``; ``images``: images through them (Score-CAM
    forwards thousands of masked images); ``backwards``: gradient passes that flowed through the
    logits (``backward()`` or ``autograd.grad``); ``reached_first_conv``: backward passes that got
    all the way down to the first conv layer's output; ``param_grads``: parameter tensors that
    hold a ``.grad`` afterwards (work a CAM never needs).
    """

    forwards: int = 0
    images: int = 0
    backwards: int = 0
    reached_first_conv: int = 0
    param_grads: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count passes of ``model`` inside the block (hooks removed on exit; ``.grad`` of every
    parameter is cleared on entry so that ``param_grads`` counts this block's only)."""
    count = PassCount()
    for p in model.parameters():
        p.grad = None
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)

    def on_logits_grad(_g: Tensor) -> None:
        count.backwards += 1

    def on_conv_grad(_g: Tensor) -> None:
        count.reached_first_conv += 1

    def model_hook(_m: nn.Module, _args: object, out: object) -> None:
        count.forwards += 1
        if isinstance(out, Tensor):
            count.images += int(out.shape[0])
            if out.requires_grad:
                out.register_hook(on_logits_grad)

    def conv_hook(_m: nn.Module, _args: object, out: object) -> None:
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(on_conv_grad)

    handles = [model.register_forward_hook(model_hook)]
    if first_conv is not None:
        handles.append(first_conv.register_forward_hook(conv_hook))
    try:
        yield count
    finally:
        for h in handles:
            h.remove()
        count.param_grads = sum(1 for p in model.parameters() if p.grad is not None)
        for p in model.parameters():
            p.grad = None
