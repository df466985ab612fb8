"""Cached captures of a dataset split, and scoring programs on them.

This is sycam's key property: forward/backward passes are paid once per batch, layer set and
target, never once per candidate. A :class:`Workbench` captures every batch once (for the union of
what the programs it will score need) and then scores any number of compiled programs with any
metric on those captures. With the capture cache on (``sycam.cache``, the default), a batch
captured by an earlier run on the same model and data is read from disk instead.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sycam._inference import fast_forward
from sycam._state import eval_mode
from sycam.cache import STATS, CaptureCache, default_cache, model_key, tensor_bytes
from sycam.capture import CaptureRequest, Captures, capture, merge_requests
from sycam.compile import CompiledProgram, LayerResolver
from sycam.cse import SharedValues
from sycam.data.base import Batch, Dataset, collate
from sycam.errors import ProgramRuntimeError, SycamError
from sycam.lang import ast as A
from sycam.metrics import Metric, MetricInputs
from sycam.models.bundle import ModelBundle


def check_score(compiled: CompiledProgram, request: CaptureRequest) -> None:
    """Refuse to score a program on captures of another score than the one it explains (its
    gradients would be another score's: wrong values, silently)."""
    if compiled.request.score != request.score:
        from sycam.lang.pretty import pretty_score

        raise SycamError(f"a program that explains '{pretty_score(compiled.request.score)}' cannot be scored on captures "
                         f"of '{pretty_score(request.score)}': capture with its own score")


def target_mode(mode: str, dataset: Dataset, num_classes: int) -> str:
    """Which class each image is explained for.

    ``label``: the dataset label (the model must share the label space); ``pred``: the model's
    prediction; ``imagenet``: for an ImageNet classifier on VOC/COCO images, the best-scoring
    ImageNet class among those mapped to the image's class; ``auto``: ``imagenet`` for a
    1000-class model on VOC/COCO, ``label`` where the label spaces agree, else ``pred``.
    """
    if mode not in ("auto", "label", "pred", "imagenet"):
        raise SycamError(f"unknown target mode '{mode}'; expected auto, label, pred or imagenet")
    if mode != "auto":
        return mode
    space = getattr(dataset, "label_space", None)
    if space in ("voc", "coco") and num_classes == 1000:
        return "imagenet"
    return "label" if getattr(dataset, "num_classes", None) == num_classes else "pred"


def choose_targets(mode: str, logits: Tensor | None, labels: Tensor, dataset: Dataset, num_classes: int) -> Tensor:
    """The target class per image for a resolved ``mode`` (see :func:`target_mode`)."""
    if mode == "label":
        if labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < 0):
            raise SycamError(f"dataset label {int(labels.max())} is out of range for a model with {num_classes} classes; "
                             "use --targets pred (or imagenet for VOC/COCO with an ImageNet model)")
        return labels
    assert logits is not None
    if mode == "pred":
        return logits.argmax(1)
    from sycam.data.targets import resolve_targets

    return resolve_targets("imagenet", logits, labels.to(logits.device), str(getattr(dataset, "label_space", "")))


@dataclass
class CachedBatch:
    batch: Batch  # images in [0, 1], labels, masks
    targets: Tensor
    caps: Captures


@dataclass
class Workbench:
    """A model, a dataset split and the captures of every batch for one capture request."""

    bundle: ModelBundle
    dataset: Dataset
    request: CaptureRequest
    batch_size: int = 32
    targets: str = "auto"
    device: torch.device | None = None
    progress: bool = True
    batches: list[CachedBatch] = field(default_factory=list)
    capture_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _validated: set[str] = field(default_factory=set, repr=False)
    #: the capture cache: "env" = sycam.cache.default_cache() (SYCAM_CACHE...), None = off
    cache: CaptureCache | None | str = "env"
    #: captured (and cached) with a batch's first miss besides ``request``, e.g. every layer a search may use
    widen: CaptureRequest | None = None

    def __post_init__(self) -> None:
        self.device = self.device or next(self.bundle.module.parameters()).device
        if len(self.dataset) == 0:
            raise SycamError(f"dataset {getattr(self.dataset, 'name', '?')} is empty")
        self.mode = target_mode(self.targets, self.dataset, self.bundle.num_classes)
        if isinstance(self.cache, str):
            if self.cache != "env":
                raise ValueError(f"Workbench.cache: a CaptureCache, None or 'env', got {self.cache!r}")
            self.cache = default_cache()

    @functools.cached_property
    def resolver(self) -> LayerResolver:
        # built once: it walks the model's modules (about 1 ms on MobileNetV2, per compile before)
        return LayerResolver(self.bundle.module, self.bundle.default_layer, self.bundle.stage_layers)

    def compile(self, program: A.Program) -> CompiledProgram:
        return CompiledProgram(program, self.resolver)

    def normalized(self, images01: Tensor) -> Tensor:
        return self.bundle.normalize(images01.to(self.device))

    def _targets(self, inputs: Tensor, batch: Batch) -> Tensor:
        logits = None
        if self.mode != "label":  # the target depends on the prediction: one extra no-grad forward
            with torch.no_grad(), eval_mode(self.bundle.module):
                logits = self.bundle.module(inputs)
        return choose_targets(self.mode, logits, batch.labels, self.dataset, self.bundle.num_classes)

    def _target_key(self, batch: Batch) -> str:
        """What the targets depend on besides model and inputs (the cache keys entries by it)."""
        return (f"{self.mode}|{getattr(self.dataset, 'label_space', '')}|{self.bundle.num_classes}|"
                + tensor_bytes(batch.labels).hex())

    def iter_batches(self) -> Iterable[tuple[Batch, Tensor, Captures]]:
        """Capture batch after batch without keeping them (bounded memory for large sets)."""
        n = len(self.dataset)
        cache = self.cache if isinstance(self.cache, CaptureCache) and not self.cache.disabled else None
        t0 = time.perf_counter()
        mkey = model_key(self.bundle.module) if cache is not None else ""  # once per pass: weights may change
        overhead = time.perf_counter() - t0
        for start in range(0, n, self.batch_size):
            samples = []
            for i in range(start, min(n, start + self.batch_size)):
                samples.append(self.dataset[i])
            batch = collate(samples).to(self.device)  # type: ignore[arg-type]
            inputs = self.normalized(batch.images)
            t0 = time.perf_counter()
            if cache is None:
                targets = self._targets(inputs, batch)
                caps = capture(self.bundle.module, inputs, targets, self.request)
            else:
                describe = {"model": self.bundle.name, "data": getattr(self.dataset, "name", "?"),
                            "split": getattr(self.dataset, "split", ""), "images": len(batch),
                            "first_id": batch.ids[0] if batch.ids else "", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                targets, caps = cache.capture(self.bundle.module, mkey, inputs, self._target_key(batch),
                                              lambda x=inputs, b=batch: self._targets(x, b), self.request, self.widen,
                                              describe)
            dt = time.perf_counter() - t0 + overhead
            overhead = 0.0
            self.capture_seconds += dt
            STATS.seconds += dt
            STATS.batches += 1
            yield batch, targets, caps

    def load(self) -> "Workbench":
        """Capture and keep every batch (for scoring many programs)."""
        if self.batches:
            return self
        total = math.ceil(len(self.dataset) / self.batch_size)
        it = self.iter_batches()
        if self.progress:
            it = tqdm(it, total=total, desc=f"capturing {getattr(self.dataset, 'name', 'data')}", unit="batch", leave=False)
        self.batches = [CachedBatch(b, t, c) for b, t, c in it]
        return self

    # ------------------------------------------------------------------ scoring
    def score_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The model's target probability on images in [0, 1] (for faithfulness metrics: deletion
        and insertion pay hundreds of forwards per image, which run on
        :func:`sycam._inference.fast_forward`'s copy)."""
        module, normalize = self.bundle.module, self.bundle.normalize

        def fn(images01: Tensor, targets: Tensor) -> Tensor:
            with torch.no_grad(), eval_mode(module):
                x = normalize(images01)
                # the folded channels-last copy, checked against the model on this call's first image
                forward = fast_forward(module, x[:1]) if len(x) > 1 else module
                probs = torch.softmax(forward(x), dim=1)
            return probs.gather(1, targets.view(-1, 1))[:, 0]

        return fn

    def explain_fn(self, compiled: CompiledProgram, params=None) -> Callable[[Tensor, Tensor], Tensor]:
        """Re-run a program on perturbed images (for robustness metrics)."""

        def fn(images01: Tensor, targets: Tensor) -> Tensor:
            caps = capture(self.bundle.module, self.normalized(images01), targets, compiled.request)
            return compiled(caps, params)

        return fn

    def logits(self, images01: Tensor) -> Tensor:
        """The model's logits (B, K) on images in [0, 1] (one no-grad forward, eval mode; the
        noise-robustness metrics' ``predict_fn``)."""
        with torch.no_grad(), eval_mode(self.bundle.module):
            return self.bundle.module(self.normalized(images01)).detach()

    def explain_with(self, compiled: CompiledProgram, params=None) -> Callable[[torch.nn.Module, Tensor, Tensor], Tensor]:
        """Re-run a program with another module in place of the model (for the randomisation
        sanity check: a copy with re-initialised weights and the model's module names)."""

        def fn(module: torch.nn.Module, images01: Tensor, targets: Tensor) -> Tensor:
            caps = capture(module, self.normalized(images01), targets, compiled.request)
            return compiled(caps, params)

        return fn

    def metric_inputs(self, cb: CachedBatch, maps: Tensor, metric: Metric, compiled: CompiledProgram | None = None,
                      params=None) -> MetricInputs:
        weights = "weights" in metric.needs and compiled is not None
        return MetricInputs(
            maps=maps,
            images=cb.batch.images,
            targets=cb.targets,
            masks=cb.batch.masks,
            score_fn=self.score_fn() if "model" in metric.needs else None,
            explain_fn=self.explain_fn(compiled, params) if ("explainer" in metric.needs and compiled is not None) else None,
            logits=cb.caps.logits if "logits" in metric.needs else None,
            model=self.bundle.module if weights else None,
            explain_with=self.explain_with(compiled, params) if weights else None,
            stage_layers=self.bundle.stage_layers or None,
            predict_fn=self.logits if "predict" in metric.needs else None,
        )

    def maps(self, compiled: CompiledProgram, cb: CachedBatch, params=None) -> Tensor:
        return compiled(cb.caps, params)

    def score(self, compiled: CompiledProgram, metrics: Sequence[Metric], params=None) -> dict[str, Tensor]:
        """Per-image values of each metric over every cached batch.

        Raises :class:`ProgramRuntimeError` when the program yields NaN/Inf on some image.
        """
        out = self.score_many([(compiled, params)], metrics)[0]
        if isinstance(out, ProgramRuntimeError):
            raise out
        return out

    def score_many(self, items: Sequence[tuple[CompiledProgram, Mapping[str, float] | None]],
                   metrics: Sequence[Metric]) -> list[dict[str, Tensor] | ProgramRuntimeError]:
        """:meth:`score` of several programs ``(compiled, params)`` in one pass over the cached
        batches: on each batch, what several of them compute is computed once
        (:class:`sycam.cse.SharedValues`), and each metric is called per program as :meth:`score`
        does, so every value is exactly the one :meth:`score` gives. A program that yields NaN/Inf
        gets its :class:`ProgramRuntimeError` in place of values."""
        for compiled, _ in items:
            check_score(compiled, self.request)
        self.load()
        out: list[dict[str, list[Tensor]]] = [{m.name: [] for m in metrics} for _ in items]
        failed: dict[int, ProgramRuntimeError] = {}
        batch = SharedValues(items) if len(items) > 1 else None
        # the first call with a metric checks every batch against that metric's needs; after
        # that only the maps change, and the compiler guarantees them finite and in [0, 1]
        validate = {m.name: m.name not in self._validated for m in metrics}
        for cb in self.batches:
            shared = batch.fresh() if batch is not None else None
            for j, (compiled, params) in enumerate(items):
                if j in failed:
                    continue
                try:
                    maps = compiled(cb.caps, params, shared=shared.user(j) if shared is not None else None)
                except ProgramRuntimeError as err:
                    failed[j] = err
                    continue
                finally:
                    if shared is not None:
                        shared.done(j)
                for m in metrics:
                    inputs = self.metric_inputs(cb, maps, m, compiled, params)
                    out[j][m.name].append(m(inputs, validate=validate[m.name]).cpu())
        self._validated.update(m.name for m in metrics)
        return [failed[j] if j in failed else {k: torch.cat(v) for k, v in acc.items()} for j, acc in enumerate(out)]


def score_streaming(bench: "Workbench", programs: Sequence[tuple[CompiledProgram, dict | None]],
                    metrics: Sequence[Metric]) -> list[dict[str, Tensor]]:
    """Per-image metric values of several programs in ONE pass over the data, keeping one batch
    of captures at a time (memory bounded by the batch, whatever the dataset). A program that
    yields NaN/Inf on a batch gets NaN there. Sub-expressions several programs compute are computed
    once per batch (:class:`sycam.cse.SharedValues`; values unchanged)."""
    for compiled, _ in programs:
        check_score(compiled, bench.request)
    out: list[dict[str, list[Tensor]]] = [{m.name: [] for m in metrics} for _ in programs]
    shared_batch = SharedValues(programs) if len(programs) > 1 else None
    for batch, targets, caps in bench.iter_batches():
        cb = CachedBatch(batch, targets, caps)
        shared = shared_batch.fresh() if shared_batch is not None else None
        for j, ((compiled, params), acc) in enumerate(zip(programs, out)):
            try:
                maps = compiled(caps, params, shared=shared.user(j) if shared is not None else None)
            except ProgramRuntimeError:
                for m in metrics:
                    acc[m.name].append(torch.full((len(batch),), float("nan")))
                continue
            finally:
                if shared is not None:
                    shared.done(j)
            for m in metrics:
                acc[m.name].append(m(bench.metric_inputs(cb, maps, m, compiled, params)).cpu())
    return [{k: torch.cat(v) for k, v in acc.items()} for acc in out]


def mean_score(values: Tensor) -> float:
    """NaN-aware mean (NaN where no image has a defined value)."""
    valid = values[~torch.isnan(values)]
    return float(valid.mean()) if valid.numel() else float("nan")


__all__ = ["Workbench", "CachedBatch", "merge_requests", "target_mode", "choose_targets", "mean_score", "score_streaming"]
