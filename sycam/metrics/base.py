"""Metric interface: what every saliency metric sees, returns and promises.

Metrics know nothing of programs, models or datasets. They see a batch of saliency maps and,
where they need them, the images, the targets, a ground-truth mask, a ``score_fn`` (the model's
target probability on perturbed images) and an ``explain_fn`` (the explainer under test, re-run
on perturbed images), and for the sanity checks the model's ``logits`` on the images, the
``model`` itself and ``explain_with`` (the explainer re-run with another copy of the model: the
metrics never change the user's model), and for the noise-robustness metrics ``predict_fn`` (the
model's logits on perturbed images, whose argmax is the prediction). Every metric returns one float32 value per image, NaN where the metric is
undefined for that image (each metric's docstring lists those cases); aggregation elsewhere uses
``nanmean`` and reports the number of valid values.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from sycam.errors import MetricError

#: what a metric may need beyond the maps
NEEDS = frozenset({"mask", "model", "explainer", "logits", "weights", "predict"})

#: values a little outside [0, 1] are tolerated (float error of resizing / normalisation)
RANGE_TOL = 1e-4

ScoreFn = Callable[[Tensor, Tensor], Tensor]
ExplainFn = Callable[[Tensor, Tensor], Tensor]
ExplainWith = Callable[[nn.Module, Tensor, Tensor], Tensor]
PredictFn = Callable[[Tensor], Tensor]


@dataclass
class MetricInputs:
    """One batch as a metric sees it.

    ``maps`` (B, H, W) float in [0, 1], min-max normalised per image, at the image resolution.
    ``images`` (B, 3, H, W) float in [0, 1]. ``targets`` (B,) long class indices.
    ``masks`` (B, H, W) bool ground truth. ``score_fn(images01 (N,3,H,W), targets (N,)) -> (N,)``
    the model's probability of the target class. ``explain_fn(images01, targets) -> (N, H, W)``
    maps in [0, 1] from the explainer under evaluation. ``logits`` (B, K) the model's logits on
    ``images``. ``model`` the network explained (read, never modified: a metric that perturbs
    weights works on a copy) and ``explain_with(module, images01, targets) -> (N, H, W)`` the same
    explainer computed with ``module`` in place of the model (a copy with other weights and the
    same module names); ``stage_layers`` the model's stage layers (the randomisation cascade's
    blocks; found by a probe where absent). ``predict_fn(images01 (N,3,H,W)) -> (N, K)`` the model's
    logits on any images (eval mode, no gradient): the prediction on perturbed copies.
    """

    maps: Tensor
    images: Tensor | None = None
    targets: Tensor | None = None
    masks: Tensor | None = None
    score_fn: ScoreFn | None = None
    explain_fn: ExplainFn | None = None
    logits: Tensor | None = None
    model: nn.Module | None = None
    explain_with: ExplainWith | None = None
    stage_layers: Sequence[str] | None = None
    predict_fn: PredictFn | None = None


class Metric(ABC):
    """A saliency metric: ``metric(inputs) -> (B,)`` float32 scores on ``inputs.maps.device``.

    Subclasses set ``name`` (the CLI name), ``higher_is_better`` and ``needs`` (a subset of
    ``{"mask", "model", "explainer", "logits", "weights", "predict"}``) and implement :meth:`compute`; ``__call__`` validates
    the inputs first, so ``compute`` may assume consistent shapes, dtypes and devices.
    """

    name: str = ""
    higher_is_better: bool = True
    needs: frozenset[str] = frozenset()

    def __call__(self, inputs: MetricInputs, validate: bool = True) -> Tensor:
        """Validate ``inputs`` against :attr:`needs`, compute, and check the result's shape.

        ``validate=False`` skips the input checks, for callers whose maps come from sycam's own
        compiler (finite, normalised to [0, 1]) and whose masks come from a sycam dataset: the
        search scores thousands of programs on the same batches, and re-checking them cost 12% of
        its time (experiments/timing/notes.md).
        """
        if validate:
            validate_inputs(inputs, self.name, self.needs)
        out = self.compute(inputs)
        b = inputs.maps.shape[0]
        if out.shape != (b,):
            raise RuntimeError(f"metric {self.name!r} returned shape {tuple(out.shape)}, expected ({b},)")
        return out.to(device=inputs.maps.device, dtype=torch.float32)

    @abstractmethod
    def compute(self, inputs: MetricInputs) -> Tensor:
        """Per-image scores (B,), NaN where undefined. Inputs are already validated."""

    def __repr__(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        needs = ",".join(sorted(self.needs)) or "-"
        return f"<{type(self).__name__} {self.name!r} ({direction} is better; needs {needs})>"


def validate_inputs(inputs: MetricInputs, name: str, needs: frozenset[str]) -> None:
    """Raise a clear error where ``inputs`` lack what metric ``name`` needs or are inconsistent.

    Checks: ``maps`` is a finite floating (B, H, W) tensor with values in [0, 1] (± 1e-4);
    every provided tensor agrees on B (and H, W) with ``maps`` and lives on its device;
    ``masks`` is bool, ``targets`` is an integer (B,) tensor, ``images`` floating (B, 3, H, W).
    ``needs`` "mask" requires ``masks``; "model" requires ``images``, ``targets``, ``score_fn``;
    "explainer" requires ``images``, ``targets``, ``explain_fn``; "logits" requires ``logits``
    ((B, K) finite floating, K ≥ 2); "weights" requires ``images``, ``targets``, ``model`` (an
    ``nn.Module``) and ``explain_with``; "predict" requires ``images``, ``targets`` and ``predict_fn``.
    """
    unknown = set(needs) - NEEDS
    if unknown:
        raise MetricError(f"metric {name!r} declares unknown needs {sorted(unknown)}; allowed: {sorted(NEEDS)}")
    maps = inputs.maps
    if not isinstance(maps, Tensor):
        raise TypeError(f"metric {name!r}: maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() != 3:
        raise MetricError(f"metric {name!r}: maps must be (B, H, W), got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"metric {name!r}: maps must be floating point, got {maps.dtype}")
    if maps.shape[0] == 0 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise MetricError(f"metric {name!r}: maps must be non-empty, got shape {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        bad = int((~torch.isfinite(maps)).sum())
        raise MetricError(f"metric {name!r}: maps contain {bad} non-finite values (NaN/inf)")
    lo, hi = float(maps.min()), float(maps.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise MetricError(
            f"metric {name!r}: maps must be min-max normalised to [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
        )
    b, h, w = maps.shape
    dev = maps.device

    missing: list[str] = []
    if "mask" in needs and inputs.masks is None:
        missing.append("masks (ground-truth (B, H, W) bool)")
    if needs & {"model", "explainer", "weights", "predict"}:
        if inputs.images is None:
            missing.append("images ((B, 3, H, W) in [0, 1])")
        if inputs.targets is None:
            missing.append("targets ((B,) long)")
    if "model" in needs and inputs.score_fn is None:
        missing.append("score_fn (images01, targets) -> target probability")
    if "explainer" in needs and inputs.explain_fn is None:
        missing.append("explain_fn (images01, targets) -> maps")
    if "logits" in needs and inputs.logits is None:
        missing.append("logits ((B, K) the model's logits on the images)")
    if "weights" in needs and inputs.model is None:
        missing.append("model (the nn.Module explained)")
    if "weights" in needs and inputs.explain_with is None:
        missing.append("explain_with (module, images01, targets) -> maps")
    if "predict" in needs and inputs.predict_fn is None:
        missing.append("predict_fn (images01) -> logits")
    if missing:
        raise MetricError(f"metric {name!r} needs {', '.join(missing)}, which the inputs lack")

    if inputs.masks is not None:
        m = inputs.masks
        if m.shape != maps.shape:
            raise MetricError(f"metric {name!r}: masks shape {tuple(m.shape)} != maps shape {tuple(maps.shape)}")
        if m.dtype != torch.bool:
            raise TypeError(f"metric {name!r}: masks must be bool, got {m.dtype}")
        if m.device != dev:
            raise MetricError(f"metric {name!r}: masks on {m.device}, maps on {dev}")
    if inputs.images is not None:
        im = inputs.images
        if im.dim() != 4 or im.shape[0] != b or im.shape[1] != 3 or im.shape[2:] != maps.shape[1:]:
            raise MetricError(
                f"metric {name!r}: images shape {tuple(im.shape)} does not match maps shape "
                f"{tuple(maps.shape)} (expected ({b}, 3, {h}, {w}))"
            )
        if not im.is_floating_point():
            raise TypeError(f"metric {name!r}: images must be floating point in [0, 1], got {im.dtype}")
        if im.device != dev:
            raise MetricError(f"metric {name!r}: images on {im.device}, maps on {dev}")
    if inputs.targets is not None:
        t = inputs.targets
        if t.shape != (b,):
            raise MetricError(f"metric {name!r}: targets shape {tuple(t.shape)} != ({b},) (one per map)")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"metric {name!r}: targets must be an integer tensor, got {t.dtype}")
        if t.device != dev:
            raise MetricError(f"metric {name!r}: targets on {t.device}, maps on {dev}")
    if inputs.logits is not None:
        lg = inputs.logits
        if not isinstance(lg, Tensor) or lg.dim() != 2 or lg.shape[0] != b or lg.shape[1] < 2:
            got = tuple(lg.shape) if isinstance(lg, Tensor) else type(lg).__name__
            raise MetricError(f"metric {name!r}: logits must be (B, K) = ({b}, K >= 2), got {got}")
        if not lg.is_floating_point() or not bool(torch.isfinite(lg).all()):
            raise MetricError(f"metric {name!r}: logits must be finite floating point, got {lg.dtype}"
                             + ("" if not lg.is_floating_point() else " with non-finite values"))
        if lg.device != dev:
            raise MetricError(f"metric {name!r}: logits on {lg.device}, maps on {dev}")
        if inputs.targets is not None and inputs.targets.numel() and int(inputs.targets.max()) >= lg.shape[1]:
            raise MetricError(f"metric {name!r}: target {int(inputs.targets.max())} out of range for {lg.shape[1]} logits")
    if inputs.model is not None and not isinstance(inputs.model, nn.Module):
        raise TypeError(f"metric {name!r}: model must be an nn.Module, got {type(inputs.model).__name__}")
    for fn_name in ("score_fn", "explain_fn", "explain_with", "predict_fn"):
        fn = getattr(inputs, fn_name)
        if fn is not None and not callable(fn):
            raise TypeError(f"metric {name!r}: {fn_name} must be callable, got {type(fn).__name__}")


def check_chunk_size(chunk_size: int, where: str) -> int:
    """Return ``chunk_size`` if it is a positive int, else raise naming ``where``."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise MetricError(f"{where}: chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def check_scores(p: Tensor, n: int, where: str) -> Tensor:
    """Check a ``score_fn`` result: (n,) finite probabilities in [0, 1]; return it as float32."""
    if not isinstance(p, Tensor):
        raise TypeError(f"{where}: score_fn must return a torch.Tensor, got {type(p).__name__}")
    if p.shape != (n,):
        raise MetricError(f"{where}: score_fn returned shape {tuple(p.shape)} for {n} images, expected ({n},)")
    if not bool(torch.isfinite(p).all()):
        raise MetricError(f"{where}: score_fn returned non-finite values")
    if n and (float(p.min()) < -RANGE_TOL or float(p.max()) > 1 + RANGE_TOL):
        raise MetricError(
            f"{where}: score_fn must return target probabilities in [0, 1], got values in "
            f"[{float(p.min()):.4g}, {float(p.max()):.4g}] (pass softmax probabilities, not logits)"
        )
    return p.float()


def score_chunked(score_fn: ScoreFn, images: Tensor, targets: Tensor, chunk_size: int, where: str) -> Tensor:
    """``score_fn`` over ``images`` (N, 3, H, W) in chunks of at most ``chunk_size``; (N,) float32.

    Runs under ``torch.no_grad`` (the scores are read, never differentiated) and returns the
    result on ``images.device``.
    """
    n = images.shape[0]
    outs: list[Tensor] = []
    with torch.no_grad():
        for s in range(0, n, chunk_size):
            p = score_fn(images[s : s + chunk_size], targets[s : s + chunk_size])
            outs.append(check_scores(p, min(chunk_size, n - s), where).to(images.device))
    return torch.cat(outs) if outs else images.new_zeros(0)


def checked_maps(m: object, want: tuple[int, ...], where: str, device: torch.device) -> Tensor:
    """Maps an explainer returned to a metric, checked loudly: a Tensor of shape ``want``, finite,
    in [0, 1] (to ``RANGE_TOL``); detached, float32, on ``device``. ``where`` names the caller in
    the error (e.g. ``"robustness: explain_fn"``)."""
    if not isinstance(m, Tensor) or tuple(m.shape) != want:
        got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise MetricError(f"{where} returned {got}, expected maps of shape {want}")
    if not bool(torch.isfinite(m).all()):
        raise MetricError(f"{where} returned non-finite maps")
    if float(m.min()) < -RANGE_TOL or float(m.max()) > 1 + RANGE_TOL:
        raise MetricError(f"{where} must return maps in [0, 1], got [{float(m.min()):.4g}, {float(m.max()):.4g}]")
    return m.detach().to(device=device, dtype=torch.float32)

