"""The job loop of ``sycam evaluate``: every method's maps and every metric's values, batch by batch.

The dataset is streamed batch by batch (peak memory is one batch, never the dataset). Each batch
is captured ONCE per explained score (programs with a different ``score`` directive, e.g.
Finer-CAM, form their own capture group) and every method's maps are computed from that shared
capture; every metric is then computed on every method's maps (:func:`metric_inputs` builds what
a metric is given). Each batch's values are saved as they are computed (:mod:`.resume`), so a
rerun picks up where an interrupted one stopped.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sycam.capture import CaptureRequest, Captures, capture
from sycam.compile import CompiledProgram, LayerResolver
from sycam.data.base import Batch, Dataset
from sycam.errors import ProgramRuntimeError, SycamError
from sycam.evaluation.baselines import baseline_explainer, baseline_maps
from sycam.evaluation.figures import OVERLAY_ROWS, overlay_data, write_figures
from sycam.evaluation.methods import Method, resolve_methods, resolve_metrics
from sycam.evaluation.report import write_results
from sycam.evaluation.resume import PARTIAL, fingerprint_key, load_partials, make_fingerprint, prepare_out, save_partial
from sycam.evaluation.results import EvalResult, assemble
from sycam.files import check_writable
from sycam.lang import ast as A
from sycam.metrics import ExplainFn, Metric, MetricInputs, ScoreFn
from sycam.metrics.base import ExplainWith, PredictFn
from sycam.models.bundle import ModelBundle
from sycam.workbench import Workbench, merge_requests

__all__ = ["evaluate", "metric_inputs"]


def evaluate(
    bundle: ModelBundle,
    dataset: Dataset,
    methods: Sequence[str | Method],
    metrics: Sequence[str | Metric],
    out: str | Path | None = None,
    *,
    batch_size: int = 32,
    targets: str = "auto",
    params: Mapping[str, Mapping[str, float]] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    fresh: bool = False,
    progress: bool = True,
    figures: bool = True,
    identity: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Score ``methods`` with ``metrics`` on every image of ``dataset``.

    ``methods``: reference names, ``.cam`` paths, ``random``/``center`` or :class:`Method` s;
    ``metrics``: names for :func:`sycam.metrics.get_metric` or Metric instances. Batches of
    ``batch_size`` images are streamed through :meth:`Workbench.iter_batches` (one capture per
    batch for the merged request of every program that explains the same score; each further
    score, e.g. Finer-CAM's, adds one capture of its own). ``targets``: ``auto|label|pred|imagenet``
    (see :func:`sycam.workbench.target_mode`). ``params``: ``?param`` overrides per method label.

    With ``out`` the per-image values are saved after every batch under ``out/partial`` and the
    run resumes from them (``fresh`` discards them); at the end ``results.{csv,json,md}``,
    ``per_image.csv``, ``table.png`` and ``overlays.png`` (``figures``) are written. ``identity``
    (model, weights digest, data, split, limit, ...) enters the configuration fingerprint; by
    default it is the bundle's and dataset's names and the dataset length.
    """
    t_start = time.perf_counter()
    if not isinstance(bundle, ModelBundle):
        raise TypeError(f"evaluate: bundle must be a ModelBundle, got {type(bundle).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SycamError(f"batch size must be a positive integer, got {batch_size!r}")
    out_path = check_writable(out) if out is not None else None
    meths = [m for m in methods if isinstance(m, Method)]
    if len(meths) != len(methods):
        if meths:
            raise TypeError("evaluate: pass either method names or Method objects, not a mix")
        meths = resolve_methods([str(m) for m in methods], params)
    elif params:
        raise TypeError("evaluate: with Method objects give params on the Methods themselves")
    mets = resolve_metrics(metrics)
    n_total = len(dataset)
    if n_total == 0:
        raise SycamError(f"dataset {getattr(dataset, 'name', '?')} is empty")
    dev = torch.device(device) if device is not None else next(bundle.module.parameters()).device
    plan = _Plan.of(meths, bundle)  # layer errors and bad params surface before any work

    ident = dict(identity) if identity is not None else {
        "model": bundle.name, "data": getattr(dataset, "name", type(dataset).__name__), "n_images": n_total,
        "targets": targets}
    fp = make_fingerprint(meths, mets, ident, seed)
    key = fingerprint_key(fp)
    saved: list[dict[str, Any]] = []
    if out_path is not None:
        prepare_out(out_path, fp, fresh)
        saved = load_partials(out_path / PARTIAL, key, n_total)["batches"]
    done = np.zeros(n_total, dtype=bool)
    for d in saved:
        done[d["indices"]] = True
    remaining = [int(i) for i in np.flatnonzero(~done)]
    images_resumed = int(done.sum())

    needs_mask = [k.name for k in mets if "mask" in k.needs]
    overlay_first = min(OVERLAY_ROWS, n_total)
    batches_computed = 0
    if remaining:
        wb = Workbench(bundle, _View(dataset, remaining), plan.primary, batch_size=batch_size, targets=targets,
                       device=dev, progress=False)
        score_fn = wb.score_fn() if any("model" in k.needs for k in mets) else None
        n_batches = math.ceil(len(remaining) / batch_size)
        desc = "evaluate" + (f" (resuming: {images_resumed} images done)" if images_resumed else "")
        pbar = tqdm(total=n_batches, desc=desc, unit="batch", disable=not progress, leave=False)
        pos = 0
        cap_mark = 0.0  # wb.capture_seconds after the previous batch
        try:
            for batch, tgt, caps in wb.iter_batches():
                t0 = time.perf_counter()
                _sync(dev)  # the capture's GPU work belongs to the capture time
                wb.capture_seconds += time.perf_counter() - t0
                b = len(batch)
                idx = np.asarray(remaining[pos:pos + b], dtype=np.int64)
                pos += b
                if needs_mask and batch.masks is None:
                    raise SycamError(f"metric(s) {', '.join(needs_mask)} need ground-truth masks, but dataset "
                                     f"{getattr(dataset, 'name', '?')} has none (image {batch.ids[0] if batch.ids else idx[0]})")
                group_caps = _capture_groups(plan, caps, bundle, wb, batch, tgt, dev)
                record = _run_batch(meths, mets, plan, group_caps, batch, tgt, idx, wb, score_fn, seed, dev,
                                    overlay_first)
                record["capture_seconds"] = np.float64(wb.capture_seconds - cap_mark)
                cap_mark = wb.capture_seconds
                record["fingerprint"] = np.asarray(key)
                saved.append(record)
                batches_computed += 1
                if out_path is not None:
                    save_partial(out_path, record)
                pbar.update(1)
        finally:
            pbar.close()
    result = assemble(saved, meths, mets, n_total, n_boot, seed)
    result.capture_groups = [plan.groups[g] for g in plan.group_names]
    result.skipped = [(str(f), str(r)) for f, r in getattr(dataset, "skipped", []) or []]
    result.batches_computed = batches_computed
    result.images_resumed = images_resumed
    result.config = fp
    result.wall_seconds = time.perf_counter() - t_start
    result.out = out_path
    if out_path is not None:
        write_results(result, out_path)
        if figures:
            write_figures(result, out_path, overlay_data(saved, dataset, [m.name for m in meths], overlay_first, bundle))
    return result


@dataclass
class _Plan:
    """Every program compiled with its parameter values, and the programs grouped by the score
    they explain (one capture per group and batch; the first group's is the workbench's)."""

    compiled: dict[str, CompiledProgram]
    params: dict[str, dict[str, float]]
    groups: dict[str, list[str]]  # score key -> method names
    requests: dict[str, CaptureRequest]  # score key -> merged capture request

    @property
    def group_names(self) -> list[str]:
        return list(self.requests)

    @property
    def primary(self) -> CaptureRequest:
        return self.requests[self.group_names[0]] if self.requests else CaptureRequest(layers=())

    @classmethod
    def of(cls, meths: Sequence[Method], bundle: ModelBundle) -> _Plan:
        resolver = LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)
        compiled: dict[str, CompiledProgram] = {}
        params: dict[str, dict[str, float]] = {}
        groups: dict[str, list[str]] = {}
        for m in meths:
            if m.kind != "program":
                continue
            assert m.program is not None and m.score is not None
            compiled[m.name] = CompiledProgram(m.program, resolver)
            try:
                params[m.name] = compiled[m.name].param_values(m.params)
            except ValueError as err:
                raise SycamError(f"method {m.name!r}: {err}") from None
            groups.setdefault(_group_key(m.score), []).append(m.name)
        requests = {g: merge_requests(compiled[n].request for n in names) for g, names in groups.items()}
        return cls(compiled, params, groups, requests)


def _group_key(spec: A.ScoreSpec) -> str:
    return spec.kind if spec.kind != "finer" else f"finer(k={spec.k}, alpha={spec.alpha:g})"


def _capture_groups(plan: _Plan, caps: Captures, bundle: ModelBundle, wb: Workbench, batch: Batch, tgt: Tensor,
                    dev: torch.device) -> dict[str, Captures]:
    """The batch's captures per score group: the workbench's for the first, one more capture each
    for the others (timed into ``wb.capture_seconds``)."""
    names = plan.group_names
    group_caps = {names[0]: caps} if names else {}
    for g in names[1:]:
        _sync(dev)
        t0 = time.perf_counter()
        group_caps[g] = capture(bundle.module, wb.normalized(batch.images), tgt, plan.requests[g])
        _sync(dev)
        wb.capture_seconds += time.perf_counter() - t0
    return group_caps


def metric_inputs(metric: Metric, maps: Tensor, images: Tensor, targets: Tensor, masks: Tensor | None,
                  score_fn: ScoreFn | None, explain_fn: ExplainFn | None, logits: Tensor | None = None,
                  model: nn.Module | None = None, explain_with: ExplainWith | None = None,
                  stage_layers: Sequence[str] | None = None, predict_fn: PredictFn | None = None) -> MetricInputs:
    """What ``metric`` is given for one method on one batch: the method's ``maps`` of the valid
    images with those images (in [0, 1]), targets and masks, plus the model's score function, its
    logits, the method as an explainer of new images (``explain_fn``) and of the same images with
    another copy of the model (``explain_with``, for the randomisation check) where the metric
    needs them (``metric.needs``), and the model's logits on new images (``predict_fn``, for the
    noise-robustness metrics). The one place the job builds :class:`MetricInputs`."""
    return MetricInputs(
        maps=maps, images=images, targets=targets, masks=masks,
        score_fn=score_fn if "model" in metric.needs else None,
        explain_fn=explain_fn if "explainer" in metric.needs else None,
        logits=logits if "logits" in metric.needs else None,
        model=model if "weights" in metric.needs else None,
        explain_with=explain_with if "weights" in metric.needs else None,
        stage_layers=stage_layers or None,
        predict_fn=predict_fn if "predict" in metric.needs else None,
    )


def _run_batch(meths: Sequence[Method], mets: Sequence[Metric], plan: _Plan, group_caps: Mapping[str, Captures],
               batch: Batch, tgt: Tensor, idx: np.ndarray, wb: Workbench, score_fn: ScoreFn | None, seed: int,
               dev: torch.device, overlay_first: int) -> dict[str, Any]:
    """Maps of every method and values of every metric for one batch, as arrays for an ``.npz``."""
    b = len(batch)
    size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
    n_m, n_k = len(meths), len(mets)
    values = np.full((n_m, n_k, b), np.nan, dtype=np.float64)
    invalid = np.zeros((n_m, b), dtype=bool)
    failed = np.zeros((n_m, n_k, b), dtype=bool)
    method_s = np.zeros(n_m, dtype=np.float64)
    metric_s = np.zeros(n_k, dtype=np.float64)
    show = idx < overlay_first
    overlay_maps = np.full((n_m, int(show.sum()), *size), np.nan, dtype=np.float16)
    group_of = {name: g for g, names in plan.groups.items() for name in names}
    for i, m in enumerate(meths):
        _sync(dev)
        t0 = time.perf_counter()
        explain: ExplainFn
        if m.kind == "program":
            compiled, pvalues = plan.compiled[m.name], plan.params[m.name]
            maps, good = _program_maps(compiled, group_caps[group_of[m.name]], pvalues)
            explain = wb.explain_fn(compiled, pvalues)
            explain_with = wb.explain_with(compiled, pvalues)
        else:
            maps = baseline_maps(m.name, b, size, batch.images.device, seed, [[int(j)] for j in idx])
            good = torch.ones(b, dtype=torch.bool, device=batch.images.device)
            explain = baseline_explainer(m.name, seed, int(idx[0]))
            explain_with = lambda _module, x, t, f=explain: f(x, t)  # noqa: E731 - a baseline ignores the model
        _sync(dev)
        method_s[i] = time.perf_counter() - t0
        good_np = good.cpu().numpy()
        invalid[i] = ~good_np
        if maps is None:
            continue
        sel = good.nonzero().flatten()
        if show.any():
            full = np.full((b, *size), np.nan, dtype=np.float16)
            full[good_np] = maps.detach().float().cpu().numpy().astype(np.float16)
            overlay_maps[i] = full[show]
        all_good = bool(good.all())
        images = batch.images if all_good else batch.images[sel]
        targets = tgt if all_good else tgt[sel]
        masks = batch.masks if (all_good or batch.masks is None) else batch.masks[sel]
        logits = None
        if any("logits" in k.needs for k in mets):  # the model's logits on the batch, from a capture
            caps_m = group_caps.get(group_of.get(m.name, ""), next(iter(group_caps.values()), None))
            logits = caps_m.logits if caps_m is not None else wb.logits(batch.images)
            logits = logits if all_good else logits[sel]
        for j, k in enumerate(mets):
            inputs = metric_inputs(k, maps, images, targets, masks, score_fn, explain, logits, wb.bundle.module,
                                   explain_with, wb.bundle.stage_layers, wb.logits)
            _sync(dev)
            t0 = time.perf_counter()
            try:
                v = k(inputs).detach().double().cpu().numpy()
                values[i, j, good_np] = v
            except ProgramRuntimeError:
                failed[i, j, good_np] = True  # the explainer broke on perturbed copies: NaN, counted
            _sync(dev)
            metric_s[j] += time.perf_counter() - t0
    return {
        "indices": idx,
        "ids": np.asarray(list(batch.ids) if batch.ids else [str(j) for j in idx], dtype=str),
        "targets": tgt.detach().cpu().numpy().astype(np.int64),
        "values": values,
        "invalid": invalid,
        "failed": failed,
        "method_seconds": method_s,
        "metric_seconds": metric_s,
        "overlay_indices": idx[show],
        "overlay_maps": overlay_maps,
    }


def _program_maps(compiled: CompiledProgram, caps: Captures, params: Mapping[str, float]) -> tuple[Tensor | None, Tensor]:
    """(maps of the valid images, bool mask of valid images). A program that yields NaN/Inf on
    some images is re-run on the others, so one bad image does not void its batch."""
    b = int(caps.Y.shape[0])
    try:
        return compiled(caps, params), torch.ones(b, dtype=torch.bool, device=caps.Y.device)
    except ProgramRuntimeError:
        pass
    try:
        raw = compiled.raw(caps, params)
        good = torch.isfinite(raw).flatten(1).all(1)
    except ProgramRuntimeError:
        good = torch.zeros(b, dtype=torch.bool, device=caps.Y.device)
    if not bool(good.any()):
        return None, good
    try:
        return compiled(caps.take(good.nonzero().flatten()), params), good
    except ProgramRuntimeError:
        return None, torch.zeros_like(good)


class _View:
    """The dataset restricted to ``indices`` (the images still to do); other attributes pass through."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self._dataset = dataset
        self._indices = list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> Any:
        return self._dataset[self._indices[i]]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_dataset", "_indices"):
            raise AttributeError(name)  # no recursion before __init__ ran (copy, pickle)
        return getattr(self._dataset, name)


def _sync(device: torch.device) -> None:
    # GPU kernels run asynchronously: wait for them so that timings mean something
    if device.type == "cuda":
        torch.cuda.synchronize(device)
