"""Forwards after the capture's pass that feed the model something it computed itself.

- :func:`reciprocal`: Recipro-CAM's terminal ``R`` (Byun & Lee, "Recipro-CAM: Fast gradient-free
  visual explanations for convolutional neural networks", arXiv 2209.14074, 2022; CVPR
  Workshops 2024). For a layer with output ``A`` (C, h, w) and each position ``p = (i, j)``, the
  *mosaic* feature map ``M_p[c, y, x] = A[c, i, j] · K[y − i + 1, x − j + 1]`` (zero outside the
  3×3 neighbourhood) replaces the layer's output, the rest of the network runs on it, and
  ``R[i, j]`` is the explained score of that forward. ``K`` is the 3×3 Gaussian
  ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` (``"gaussian"``, sycam's default) or the one-hot
  centre (``"onehot"``: ``M_p = A`` at ``p``, zero elsewhere). This is the authors' code
  (``sybyun/ReciproCAM``, ``src/recipro_cam.py``, ``_mosaic_feature``): the Gaussian spreads the
  centre's channel vector ``A[:, i, j]`` over the neighbourhood (not ``A ⊙ K``), cut at the
  borders without renormalising. Their hook calls it with ``is_gaussian=False`` (one-hot); the
  score is the softmax probability (``score prob;`` in a program).
- :class:`Rescorer`: the operators ``confidence(m)`` and ``gain(m)``: the target's softmax
  probability for the input times ``norm(upsample(m))`` (bilinear, half-pixel centres, min-max
  per image; a constant map masks everything out), minus the probability on the blank (all-zero)
  input for ``gain`` (UnionCAM's β).

How ``R`` re-runs the tail of the network without splitting the model: a forward hook on the
layer *replaces* its output with ``n`` mosaic maps while the model is fed the one image, so every
module after the layer runs on a batch of ``n`` (values from before the layer, e.g. a residual
branch, broadcast over it: the same as ``n`` copies of the image). The part of the network before
the layer is recomputed once per forward, on one image: all ``h·w`` positions of an image go into
one forward unless their feature maps exceed :data:`FEATURE_BUDGET` values (ResNet-50's and
MobileNetV2's last conv layers at 224×224: 49 positions, one forward per image). A model that
cannot broadcast there (a concatenation with an earlier feature, as in DenseNet) fails or returns
the wrong number of rows; then the image is fed ``n`` times instead (``n`` head forwards), and
sycam remembers that for the model and layer.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sycam._state import eval_mode

__all__ = ["reciprocal", "mosaic_masks", "Rescorer", "RECIPRO_KERNELS", "FEATURE_BUDGET"]

RECIPRO_KERNELS: dict[str, tuple[tuple[float, ...], ...]] = {
    "gaussian": ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16)),
    "onehot": ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0)),
}
FEATURE_BUDGET = 1 << 23  # feature values (positions × C × h × w) of one Recipro-CAM forward: 32 MiB in float32

# per model: layers after which the model cannot broadcast one image's values over n mosaic maps
_NEEDS_COPIES: "weakref.WeakKeyDictionary[nn.Module, set[str]]" = weakref.WeakKeyDictionary()


def mosaic_masks(h: int, w: int, kernel: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(h·w, h, w): for position ``p = i·w + j`` the 3×3 kernel centred on (i, j), cut at the borders."""
    k = torch.tensor(RECIPRO_KERNELS[kernel], dtype=dtype, device=device)
    delta = torch.eye(h * w, dtype=dtype, device=device).view(h * w, 1, h, w)
    # cross-correlation with a symmetric kernel: out[p, y, x] = K[y - i + 1, x - j + 1]
    return F.conv2d(delta, k.view(1, 1, 3, 3), padding=1)[:, 0]


def reciprocal(
    model: nn.Module,
    module: nn.Module,
    name: str,
    x: Tensor,
    feats: Tensor,
    score: Callable[[Tensor, Tensor], Tensor],
    check: Callable[[object, int], Tensor],
    kernel: str = "gaussian",
) -> Tensor:
    """``R`` (B, h, w) for ``module``'s captured output ``feats`` (B, C, h, w) on inputs ``x``.

    ``score(logits, rows)`` gives the explained score of each row of ``logits`` (n, K) for images
    ``rows`` (n,); ``check(out, n)`` checks a forward's output is (n, K) logits. Call under
    ``no_grad`` with the model in eval mode; the hook is removed on every exit.
    """
    B, C, h, w = feats.shape
    P = h * w
    masks = mosaic_masks(h, w, kernel, feats.dtype, feats.device)
    rows, cols = torch.arange(P, device=feats.device) // w, torch.arange(P, device=feats.device) % w
    per = max(1, min(P, FEATURE_BUDGET // max(1, C * P)))
    out = torch.empty(B, P, dtype=feats.dtype, device=feats.device)
    current: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _args: object, _out: object) -> Tensor:
        return current["maps"]

    copies = name in _NEEDS_COPIES.get(model, set())
    handle = module.register_forward_hook(hook)
    try:
        for b in range(B):
            for start in range(0, P, per):
                p = torch.arange(start, min(P, start + per), device=feats.device)
                n = len(p)
                # M_p[c, y, x] = A[c, i_p, j_p] * K_p[y, x]
                current["maps"] = feats[b][:, rows[p], cols[p]].T[:, :, None, None] * masks[p][:, None]
                one = x[b:b + 1]
                logits = None
                if not copies:
                    try:
                        got = model(one)
                        if isinstance(got, Tensor) and got.ndim == 2 and got.shape[0] == n:
                            logits = got
                    except Exception:  # noqa: BLE001 - the model could not broadcast: feed copies instead
                        logits = None
                    if logits is None:
                        copies = True
                        _NEEDS_COPIES.setdefault(model, set()).add(name)
                if logits is None:
                    logits = model(one.expand(n, *one.shape[1:]).contiguous())
                logits = check(logits, n)
                out[b, p] = score(logits, torch.full((n,), b, device=x.device, dtype=torch.long)).to(out.dtype)
    finally:
        handle.remove()
    return out.view(B, h, w)


class Rescorer:
    """The target's softmax probability for inputs masked by maps: ``confidence`` and ``gain``.

    Holds the batch's model-ready inputs, targets and a logits-only forward (the folded copy of
    :func:`sycam._inference.fast_forward` where it was valid at capture time, else the model);
    each call runs one forward per ``chunk`` masked images, in eval mode under ``no_grad``.
    """

    def __init__(self, model: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor, targets: Tensor,
                 chunk: int, blank: dict[str, Tensor] | None = None) -> None:
        self.model, self.forward, self.x, self.targets, self.chunk = model, forward, x, targets, chunk
        self._blank = blank if blank is not None else {}  # shared with take(): the blank image's probabilities

    def _probs(self, images: Tensor) -> Tensor:
        with torch.no_grad(), eval_mode(self.model):
            outs = [self.forward(images[i:i + self.chunk]) for i in range(0, len(images), self.chunk)]
        logits = torch.cat(outs)
        if logits.ndim != 2 or logits.shape[0] != len(images):
            raise ValueError(f"confidence: the model returned {tuple(logits.shape)} for {len(images)} masked images; "
                             "expected (B, K) logits")
        return torch.softmax(logits, dim=1)

    def blank(self) -> Tensor:
        """The target's probability on the all-zero input, (B,)."""
        if "p" not in self._blank:
            self._blank["p"] = self._probs(torch.zeros_like(self.x[:1]))[0]
        return self._blank["p"][self.targets]

    def __call__(self, maps: Tensor, relative: bool) -> Tensor:
        """(B,) probabilities for ``x * norm(upsample(maps))`` (minus :meth:`blank` if ``relative``)."""
        if maps.ndim != 3 or maps.shape[0] != self.x.shape[0]:
            raise ValueError(f"confidence: expected maps (B, h, w) for {self.x.shape[0]} images, got {tuple(maps.shape)}")
        up = F.interpolate(maps.detach().unsqueeze(1).to(self.x.dtype), size=tuple(self.x.shape[-2:]), mode="bilinear",
                           align_corners=False)
        flat = up.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        rng = flat.max(dim=1).values.view(-1, 1, 1, 1) - lo
        mask = torch.where(rng > 0, (up - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(up))
        p = self._probs(self.x * mask).gather(1, self.targets.view(-1, 1))[:, 0]
        if relative:
            p = p - self.blank()
        return p.to(maps.dtype)

    def take(self, images: slice | Tensor) -> Rescorer:
        return Rescorer(self.model, self.forward, self.x[images], self.targets[images], self.chunk, self._blank)
