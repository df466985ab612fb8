"""Capture activations and gradients: one forward pass and one ``autograd.grad`` per batch.

:func:`capture` hooks the requested modules (by name, from ``model.named_modules()``), runs one
forward pass and one ``torch.autograd.grad`` of the summed target score with respect to the
hooked outputs that need gradients, and optionally the Score-CAM channel scores ``S``, the
Ablation-CAM score drops ``D``, Recipro-CAM's maps ``R`` and a re-scorer of masked inputs
(:mod:`sycam.reforward`). The model comes back exactly as it was.

Why one module of ~520 lines: the forward/backward pass, the score definitions it differentiates
and the masked passes behind ``S``, ``D`` and ``R`` share one protocol for hooking the model and putting
it back (mode, hooks, ``.grad``, ``requires_grad``) and one set of input checks; split apart, each
part would need its own copy of that protocol.
"""
from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sycam._inference import fast_forward
from sycam._state import eval_mode, frozen_parameters
from sycam.errors import BOUNDARY, CaptureError, SycamError, as_sycam
from sycam.lang.ast import ScoreSpec
from sycam.reforward import Rescorer, reciprocal

__all__ = ["CaptureRequest", "Captures", "capture", "target_scores", "finer_comparisons", "merge_requests", "with_rescorer"]


#: CaptureRequest's sets of layers (each a subset of what is hooked)
_LAYER_SETS = ("grad_layers", "score_cam_layers", "ablation_layers", "reciprocal_layers", "reciprocal_onehot_layers")


@dataclass(frozen=True)
class CaptureRequest:
    """What a program needs from the model, by resolved module name.

    Every layer named in any field is hooked and returned in ``Captures.A``; ``grad_layers``
    additionally get ``G``, ``score_cam_layers`` get ``S``, ``ablation_layers`` get ``D`` and
    ``reciprocal_layers`` get ``R`` (Recipro-CAM with the 3×3 Gaussian kernel) and
    ``reciprocal_onehot_layers`` get ``R1`` (with the one-hot kernel, the authors' code default).
    ``rescore``: the captures carry a :class:`~sycam.reforward.Rescorer` (for ``confidence`` and
    ``gain``; it keeps a copy of the batch's inputs). Lists and sets are accepted and normalised
    (tuple / frozenset).
    """

    layers: tuple[str, ...]  # modules whose outputs (A) are needed, in any order
    grad_layers: frozenset[str] = frozenset()  # subset that also needs G = d score / d A
    score_cam_layers: frozenset[str] = frozenset()  # need S: Score-CAM channel scores (B, C)
    ablation_layers: frozenset[str] = frozenset()  # need D: Ablation-CAM score drops (B, C)
    score: ScoreSpec = field(default_factory=ScoreSpec)
    reciprocal_layers: frozenset[str] = frozenset()  # need R: Recipro-CAM maps (B, h, w), Gaussian kernel
    reciprocal_onehot_layers: frozenset[str] = frozenset()  # need R1: the same with the one-hot kernel
    rescore: bool = False  # a re-scorer of masked inputs (confidence, gain)

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            raise TypeError(f"CaptureRequest.layers: expected a sequence of module names, got the string {self.layers!r}")
        object.__setattr__(self, "layers", tuple(dict.fromkeys(self.layers)))
        for fname in _LAYER_SETS:
            value = getattr(self, fname)
            if isinstance(value, str):
                raise TypeError(f"CaptureRequest.{fname}: expected a set of module names, got the string {value!r}")
            object.__setattr__(self, fname, frozenset(value))
        for fname in ("layers",) + _LAYER_SETS:
            for name in getattr(self, fname):
                if not isinstance(name, str) or not name:
                    raise ValueError(f"CaptureRequest.{fname}: module names must be non-empty strings, got {name!r}")
        if not isinstance(self.score, ScoreSpec):
            raise TypeError(f"CaptureRequest.score: expected a ScoreSpec, got {type(self.score).__name__}")

    @property
    def all_layers(self) -> tuple[str, ...]:
        """Every layer to hook: ``layers`` in order, then the other fields' extra names, sorted."""
        extra = frozenset().union(*(getattr(self, f) for f in _LAYER_SETS)) - set(self.layers)
        return self.layers + tuple(sorted(extra))

    def validate(self, model: nn.Module) -> dict[str, nn.Module]:
        """Check that every requested module exists in ``model``; return them by name.

        Unknown names raise ``KeyError`` listing close matches (difflib).
        """
        modules = dict(model.named_modules())
        modules.pop("", None)  # the model itself is not a layer
        found: dict[str, nn.Module] = {}
        for name in self.all_layers:
            if name not in modules:
                names = list(modules)
                close = difflib.get_close_matches(name, names, n=5, cutoff=0.5) or [n for n in names if name in n][:5]
                raise KeyError(
                    f"CaptureRequest: {type(model).__name__} has no module named {name!r}; close matches: "
                    f"{', '.join(repr(c) for c in close) if close else 'none'}"
                )
            found[name] = modules[name]
        return found


@dataclass
class Captures:
    """Everything a compiled program reads, for one batch. All tensors detached."""

    A: dict[str, Tensor]  # (B, C, h, w)
    G: dict[str, Tensor]  # (B, C, h, w)
    S: dict[str, Tensor]  # (B, C)
    D: dict[str, Tensor]  # (B, C)
    Y: Tensor  # (B,) the explained score
    logits: Tensor  # (B, K)
    input_size: tuple[int, int]  # (H, W) of the model input
    #: the image terminal ``X`` (B, H, W): the mean over colour channels of the input as the model
    #: receives it (None where captures were built by hand without it)
    X: Tensor | None = None
    R: dict[str, Tensor] = field(default_factory=dict)  # (B, h, w) Recipro-CAM maps (Gaussian kernel)
    R1: dict[str, Tensor] = field(default_factory=dict)  # (B, h, w) Recipro-CAM maps (one-hot kernel)
    rescore: Rescorer | None = None  # re-scores the inputs masked by maps (confidence, gain)

    def take(self, images: slice | Tensor) -> Captures:
        """The captures of some images only: ``images`` is a slice or an index tensor (positions or a
        bool mask) over the batch. Exact, because programs work per image. A slice that covers the
        whole batch returns ``self``."""
        if isinstance(images, slice) and images.step in (None, 1):
            start, stop, _ = images.indices(int(self.Y.shape[0]))
            if start == 0 and stop == int(self.Y.shape[0]):
                return self

        def cut(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v[images] for k, v in d.items()}

        return Captures(A=cut(self.A), G=cut(self.G), S=cut(self.S), D=cut(self.D), Y=self.Y[images],
                        logits=self.logits[images], input_size=self.input_size, R=cut(self.R), R1=cut(self.R1),
                        rescore=None if self.rescore is None else self.rescore.take(images),
                        X=None if self.X is None else self.X[images])


# ----------------------------------------------------------------------------- scores

_SCORE_KINDS = ("logit", "prob", "finer")


def _check_spec(spec: ScoreSpec) -> None:
    if not isinstance(spec, ScoreSpec):
        raise TypeError(f"score spec: expected a ScoreSpec, got {type(spec).__name__}")
    if spec.kind not in _SCORE_KINDS:
        raise ValueError(f"score spec: unknown kind {spec.kind!r}; expected one of {', '.join(_SCORE_KINDS)}")
    if spec.kind == "finer":
        if isinstance(spec.k, bool) or not isinstance(spec.k, int) or spec.k < 1:
            raise ValueError(f"score spec 'finer': k must be a positive int, got {spec.k!r}")
        if not isinstance(spec.alpha, (int, float)) or isinstance(spec.alpha, bool):
            raise ValueError(f"score spec 'finer': alpha must be a number, got {spec.alpha!r}")


def _check_logits(logits: Any, batch: int, where: str) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"{where}: the model must return a logits tensor (B, K), got {type(logits).__name__}"
            + (" (a tuple: e.g. GoogLeNet/Inception aux outputs in training mode)" if isinstance(logits, tuple) else "")
        )
    if logits.ndim != 2 or logits.shape[0] != batch or not logits.is_floating_point():
        raise ValueError(
            f"{where}: the model must return float logits of shape (B, K) = ({batch}, K), got {tuple(logits.shape)} "
            f"{logits.dtype}"
        )
    return logits


def finer_comparisons(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """Finer-CAM's comparison classes, (B, k'): per image the ``k' = min(k, K - 1)`` classes
    ``j != t`` with the smallest ``|y_j - y_t|``, closest first (ties: lower index first)."""
    K = logits.shape[1]
    if K < 2:
        raise ValueError(f"finer score: needs at least 2 classes to compare with, the model has {K}")
    kk = min(int(k), K - 1)
    y = logits.detach()
    t = targets.view(-1, 1)
    diff = (y - y.gather(1, t)).abs()
    diff.scatter_(1, t, -1.0)  # the target itself sorts first and is dropped
    order = torch.sort(diff, dim=1, stable=True).indices
    return order[:, 1 : kk + 1]


def _scores(logits: Tensor, targets: Tensor, spec: ScoreSpec, comps: Tensor | None) -> Tensor:
    """The score per row; for 'finer' with fixed comparison classes ``comps`` (B, k)."""
    t = targets.view(-1, 1)
    if spec.kind == "logit":
        return logits.gather(1, t).squeeze(1)
    if spec.kind == "prob":
        return torch.softmax(logits, dim=1).gather(1, t).squeeze(1)
    assert comps is not None
    y_t = logits.gather(1, t)  # (B, 1)
    y_c = logits.gather(1, comps)  # (B, k)
    # p_j / sum_j' p_j' over the comparison classes == softmax restricted to them (stable form)
    w = torch.softmax(y_c, dim=1)
    return (w * (y_t - float(spec.alpha) * y_c)).sum(dim=1)


def target_scores(logits: Tensor, targets: Tensor, spec: ScoreSpec) -> Tensor:
    """The explained score per image, (B,), differentiable in ``logits``.

    - ``logit``: ``y_t``;
    - ``prob``:  ``softmax(y)_t``;
    - ``finer`` (Finer-CAM, Zhang et al. 2025): with ``C`` the ``k`` classes other than ``t``
      whose logits are closest to ``y_t`` and ``p = softmax(y)``,
      ``sum_{j in C} p_j (y_t - alpha y_j) / sum_{j in C} p_j``
      (pytorch-grad-cam's ``FinerWeightedTarget``, without its 1e-9 in the denominator).
    """
    _check_spec(spec)
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"target_scores: logits must be a (B, K) tensor, got {getattr(logits, 'shape', type(logits))}")
    targets = _check_targets(targets, logits.shape[0], logits.device)
    _check_target_range(targets, logits.shape[1])
    comps = finer_comparisons(logits, targets, spec.k) if spec.kind == "finer" else None
    return _scores(logits, targets, spec, comps)


def _check_targets(targets: Any, batch: int, device: torch.device) -> Tensor:
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets: expected a (B,) long tensor of class indices, got {type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets: expected integer class indices, got dtype {targets.dtype}")
    if tuple(targets.shape) != (batch,):
        raise ValueError(f"targets: expected shape ({batch},) to match the batch, got {tuple(targets.shape)}")
    return targets.to(device=device, dtype=torch.long)


def _check_target_range(targets: Tensor, num_classes: int) -> None:
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        bad = targets[(targets < 0) | (targets >= num_classes)].tolist()
        raise ValueError(f"targets: class indices {bad[:5]} out of range for a model with {num_classes} classes")


# ----------------------------------------------------------------------------- capture

# Per model: hooked layers whose output is modified in place later in the forward pass, so that
# later calls clone them at once instead of running the forward twice. Weak keys: no leak.
_CLONE_LAYERS: "weakref.WeakKeyDictionary[nn.Module, set[str]]" = weakref.WeakKeyDictionary()


@dataclass
class _Forward:
    logits: Tensor
    outs: dict[str, Tensor]  # hooked tensors (for G: leaves of the graph where needed)
    versions: dict[str, int]  # their version counters at hook time


def _run_forward(
    model: nn.Module,
    x: Tensor,
    modules: dict[str, nn.Module],
    grad_names: frozenset[str],
    clone: set[str],
) -> _Forward:
    """One forward pass with a hook per requested module; hooks are removed on every exit."""
    outs: dict[str, Tensor] = {}
    versions: dict[str, int] = {}
    calls: dict[str, int] = {}

    def make_hook(name: str) -> Callable[..., Tensor | None]:
        def hook(_m: nn.Module, _args: Any, out: Any) -> Tensor | None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ValueError(
                    f"capture: module {name!r} ran more than once in one forward pass (a shared module, e.g. a ReLU "
                    "reused inside a block); its output is ambiguous: pick a module that runs once, e.g. its parent"
                )
            if not isinstance(out, Tensor) or out.ndim != 4:
                got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
                raise ValueError(
                    f"capture: module {name!r} ({type(_m).__name__}) returned {got}; CAM layers must output "
                    "4-D feature maps (B, C, h, w)"
                )
            if name in grad_names and not out.requires_grad:
                # frozen layers before this one: make the output a leaf of the graph that follows
                leaf = out.detach().requires_grad_(True)
                outs[name], versions[name] = leaf, leaf._version
                return leaf.clone()  # later in-place ops act on the copy, never on the leaf
            outs[name], versions[name] = out, out._version
            return out.clone() if name in clone else None

        return hook

    handles = []
    try:
        for name, m in modules.items():
            handles.append(m.register_forward_hook(make_hook(name)))
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in outs]
    if missing:
        raise ValueError(f"capture: module(s) {missing} did not run in the forward pass, so they have no output")
    return _Forward(logits=logits, outs=outs, versions=versions)


def _modified(fw: _Forward) -> set[str]:
    return {n for n, t in fw.outs.items() if t._version != fw.versions[n]}


def _score_cam(
    model: nn.Module, x: Tensor, A: Tensor, targets: Tensor, comps: Tensor | None, spec: ScoreSpec, chunk: int, name: str,
    logits: Tensor,
) -> Tensor:
    """S[b, k] = score of ``x[b] * norm(upsample(A[b, k]))``, chunks of ``chunk`` masked images.

    A constant channel masks the whole image out, and ``x * 0`` is the same blank image for every
    such channel of every image: its logits are computed once and shared (post-ReLU layers have
    many all-zero channels, so this saves most forwards without changing any score). The forwards
    run on :func:`sycam._inference.fast_forward`'s folded channels-last copy where it reproduces
    ``logits``, the model's own on ``x``.
    """
    forward = fast_forward(model, x, logits)
    B, C = A.shape[:2]
    H, W = x.shape[-2:]
    S = torch.empty(B * C, device=x.device, dtype=x.dtype)
    flat_a = A.flatten(2)
    constant = (flat_a.amax(2) - flat_a.amin(2) <= 0).flatten()  # (B*C,)
    pairs = torch.arange(B * C, device=x.device)
    blank = pairs[constant]
    if blank.numel():
        logits0 = _check_logits(forward(torch.zeros_like(x[:1])), 1, f"capture (Score-CAM forward for {name!r})")
        b = blank // C
        S[blank] = _scores(logits0.expand(len(blank), -1), targets[b], spec, None if comps is None else comps[b]).to(S.dtype)
    todo = pairs[~constant]
    for start in range(0, len(todo), chunk):
        idx = todo[start:start + chunk]
        b, k = idx // C, idx % C
        up = F.interpolate(A[b, k].unsqueeze(1).to(x.dtype), size=(H, W), mode="bilinear", align_corners=False)
        flat = up.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        rng = flat.max(dim=1).values.view(-1, 1, 1, 1) - lo
        # min-max per (image, channel)
        mask = torch.where(rng > 0, (up - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(up))
        out = _check_logits(forward(x[b] * mask), len(idx), f"capture (Score-CAM forward for {name!r})")
        S[idx] = _scores(out, targets[b], spec, None if comps is None else comps[b]).to(S.dtype)
    return S.view(B, C)


def _ablation(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    C: int,
    Y: Tensor,
    targets: Tensor,
    comps: Tensor | None,
    spec: ScoreSpec,
    chunk: int,
    name: str,
) -> Tensor:
    """D[b, k] = Y[b] - score with channel k of ``module``'s output set to zero, chunked."""
    B = x.shape[0]
    D = torch.empty(B * C, device=x.device, dtype=Y.dtype)
    current: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _args: Any, out: Tensor) -> Tensor:
        out = out.clone()  # never write into a tensor the module (or its input) may share
        out[torch.arange(out.shape[0], device=out.device), current["k"]] = 0
        return out

    handle = module.register_forward_hook(hook)
    try:
        for start in range(0, B * C, chunk):
            idx = torch.arange(start, min(start + chunk, B * C), device=x.device)
            b, k = idx // C, idx % C
            current["k"] = k
            logits = _check_logits(model(x[b]), len(idx), f"capture (Ablation-CAM forward for {name!r})")
            D[idx] = (Y[b] - _scores(logits, targets[b], spec, None if comps is None else comps[b])).to(D.dtype)
    finally:
        handle.remove()
    return D.view(B, C)


def _reciprocal(model: nn.Module, module: nn.Module, name: str, x: Tensor, A: Tensor, targets: Tensor,
                comps: Tensor | None, spec: ScoreSpec, kernel: str) -> Tensor:
    """``R[l][b, i, j]``: the score with ``module``'s output replaced by Recipro-CAM's mosaic of
    position (i, j) (see :func:`sycam.reforward.reciprocal`)."""
    where = f"capture (Recipro-CAM forward for {name!r})"
    return reciprocal(model, module, name, x, A,
                      lambda out, b: _scores(out, targets[b], spec, None if comps is None else comps[b]),
                      lambda out, n: _check_logits(out, n, where), kernel)


def merge_requests(requests: Iterable[CaptureRequest]) -> CaptureRequest:
    """One request that serves them all (they must explain the same score)."""
    reqs = list(requests)
    if not reqs:
        raise ValueError("no capture requests to merge")
    scores = {r.score for r in reqs}
    if len(scores) > 1:
        raise ValueError(f"cannot share one capture between different scores: {sorted(map(str, scores))}")
    layers: list[str] = []
    for r in reqs:
        layers += [name for name in r.layers if name not in layers]
    return CaptureRequest(layers=tuple(layers), rescore=any(r.rescore for r in reqs), score=reqs[0].score,
                          **{f: frozenset().union(*(getattr(r, f) for r in reqs)) for f in _LAYER_SETS})


def with_rescorer(model: nn.Module, inputs: Tensor, targets: Tensor, caps: Captures, *,
                  chunk_size: int | None = None) -> Captures:
    """``caps`` with the re-scorer of masked inputs (``confidence``, ``gain``) that :func:`capture`
    attaches for ``request.rescore``: for captures read from the capture cache (a re-scorer runs
    the model, so it cannot be stored). ``caps.logits`` must be the model's logits on ``inputs``."""
    chunk = chunk_size or (8 if inputs.device.type == "cpu" else 64)
    with eval_mode(model), torch.inference_mode(False), torch.no_grad():
        x = inputs.clone() if inputs.is_inference() else inputs.detach().clone()
        caps.rescore = Rescorer(model, fast_forward(model, x, caps.logits), x, targets, chunk)
    return caps


def capture(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    request: CaptureRequest,
    *,
    chunk_size: int | None = None,
) -> Captures:
    """See :func:`_capture`; every failure on bad input is a :class:`~sycam.errors.CaptureError`.

    ``chunk_size``: images per extra forward of Score-CAM/Ablation-CAM; by default 8 on CPU (the
    fastest per image in experiments/timing: larger batches fall out of cache) and 64 on GPUs.
    """
    if chunk_size is None:
        chunk_size = 8 if getattr(inputs, "device", torch.device("cpu")).type == "cpu" else 64
    try:
        return _capture(model, inputs, targets, request, chunk_size=chunk_size)
    except RuntimeError as err:
        if isinstance(err, SycamError) or str(err).startswith("capture"):
            raise as_sycam(err, CaptureError) from err
        # torch failed inside the user's model: say whose forward pass and on what input
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise as_sycam(RuntimeError(f"capture: {type(model).__name__}'s forward pass failed on sycam's inputs of shape "
                                    f"{shape}: {err}"), CaptureError) from err
    except BOUNDARY as err:
        raise as_sycam(err, CaptureError) from err


def _capture(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    request: CaptureRequest,
    *,
    chunk_size: int = 64,
) -> Captures:
    """Capture what a program needs for one batch.

    ``inputs`` are model-ready (normalised) images (B, C_in, H, W), ``targets`` (B,) class indices.
    One forward pass with forward hooks on ``request``'s modules gives ``A[l]`` (the module
    output) and the logits; the score ``Y = target_scores(logits, targets, request.score)``; one
    ``torch.autograd.grad(Y.sum(), [A[l] for l in grad_layers])`` gives ``G[l] = dY/dA[l]``
    (autograd only walks back as far as the earliest requested layer). Without grad layers the
    forward runs under ``no_grad``.

    ``S[l][b, k]`` (Score-CAM): the score of ``inputs[b] * m`` where ``m`` is ``A[l][b, k]``
    upsampled bilinearly (align_corners=False) to (H, W) and min-max normalised (constant
    channel: all zeros). ``D[l][b, k] = Y[b] - score with channel k of A[l] zeroed`` (Ablation-CAM).
    ``R[l][b]`` (Recipro-CAM, (h, w)): the score with A[l] replaced by the mosaic of each position
    (:func:`sycam.reforward.reciprocal`). With ``request.rescore`` the captures carry a
    :class:`~sycam.reforward.Rescorer` of these inputs for ``confidence``/``gain``.
    For 'finer' scores the comparison classes are fixed from the unperturbed logits. These
    extra forwards run without grad in chunks of ``chunk_size`` (image, channel) pairs.

    In-place safety: when a hooked output is modified in place later in the forward pass
    (DenseNet's ReLU after ``features``, ``out += identity`` after ResNet's ``bn3``), the forward is
    run again with that output cloned in the hook, so that A and G are the true module output and
    the gradient with respect to it; the model is remembered so later calls clone at once.

    The model's ``training`` flags (capture runs in eval mode), hooks, parameters' ``.grad`` and
    ``requires_grad`` are left as they were, also when an error is raised. Works under the
    caller's ``no_grad``/``inference_mode`` and with frozen parameters. All returned tensors are
    detached and on the inputs' device.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(request, CaptureRequest):
        raise TypeError(f"capture: request must be a CaptureRequest, got {type(request).__name__}")
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or inputs.shape[0] < 1:
        got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"capture: inputs must be a (B, 3, H, W) tensor with B >= 1, got {got}")
    if not inputs.is_floating_point():
        raise TypeError(f"capture: inputs must be float (normalised images), got dtype {inputs.dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"capture: chunk_size must be a positive int, got {chunk_size!r}")
    _check_spec(request.score)
    B = int(inputs.shape[0])
    device = inputs.device
    targets = _check_targets(targets, B, device)
    param = next(model.parameters(), None)
    if param is not None and param.device != device:
        raise ValueError(f"capture: the model is on {param.device} but the inputs are on {device}; move one of them")
    modules = request.validate(model)
    grad_names = request.grad_layers
    spec = request.score

    with eval_mode(model), frozen_parameters(model):
        # inference_mode(False) + enable_grad: gradients even under the caller's no_grad/inference_mode
        with torch.inference_mode(False):
            x = inputs.clone() if inputs.is_inference() else inputs.detach()
            grad_ctx = torch.enable_grad() if grad_names else torch.no_grad()
            known = _CLONE_LAYERS.get(model, set())
            clone = known & set(modules)
            with grad_ctx:
                fw = _run_forward(model, x, modules, grad_names, clone)
                changed = _modified(fw)
                if changed:
                    del fw  # free the first graph before the second forward
                    _CLONE_LAYERS.setdefault(model, set()).update(changed)
                    clone |= changed
                    fw = _run_forward(model, x, modules, grad_names, clone)
                    still = _modified(fw)
                    if still:
                        raise RuntimeError(
                            f"capture: the outputs of {sorted(still)} are modified in place later in the forward pass "
                            "even when cloned in the hook (they alias another tensor); pick other layers"
                        )
                logits = _check_logits(fw.logits, B, "capture")
                _check_target_range(targets, logits.shape[1])
                comps = finer_comparisons(logits, targets, spec.k) if spec.kind == "finer" else None
                Y = _scores(logits, targets, spec, comps)
                G: dict[str, Tensor] = {}
                if grad_names:
                    names = sorted(grad_names)
                    if not Y.requires_grad:
                        raise RuntimeError("capture: the score does not depend on any captured layer; cannot take gradients")
                    grads = torch.autograd.grad(Y.sum(), [fw.outs[n] for n in names], allow_unused=True)
                    # a layer the score does not depend on has gradient zero
                    G = {n: (torch.zeros_like(fw.outs[n]) if g is None else g).detach() for n, g in zip(names, grads)}
            A = {n: fw.outs[n].detach() for n in modules}
            Y = Y.detach()
            logits = logits.detach()
            del fw
            S: dict[str, Tensor] = {}
            D: dict[str, Tensor] = {}
            R: dict[str, Tensor] = {}
            R1: dict[str, Tensor] = {}
            rescorer: Rescorer | None = None
            if (request.score_cam_layers or request.ablation_layers or request.reciprocal_layers
                    or request.reciprocal_onehot_layers or request.rescore):
                with torch.no_grad():
                    for n in sorted(request.score_cam_layers):
                        S[n] = _score_cam(model, x, A[n], targets, comps, spec, chunk_size, n, logits).to(Y.dtype)
                    for n in sorted(request.ablation_layers):
                        D[n] = _ablation(
                            model, modules[n], x, A[n].shape[1], Y, targets, comps, spec, chunk_size, n
                        ).to(Y.dtype)
                    for n in sorted(request.reciprocal_layers):
                        R[n] = _reciprocal(model, modules[n], n, x, A[n], targets, comps, spec, "gaussian").to(Y.dtype)
                    for n in sorted(request.reciprocal_onehot_layers):
                        R1[n] = _reciprocal(model, modules[n], n, x, A[n], targets, comps, spec, "onehot").to(Y.dtype)
                    if request.rescore:
                        rescorer = Rescorer(model, fast_forward(model, x, logits), x.clone(), targets, chunk_size)
    X = x.detach().mean(1).to(Y.dtype)  # the image terminal: the grey level of the model's input
    return Captures(A=A, G=G, S=S, D=D, Y=Y, logits=logits, input_size=(int(inputs.shape[2]), int(inputs.shape[3])),
                    R=R, R1=R1, rescore=rescorer, X=X)
