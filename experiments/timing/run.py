"""The one entry point: ``python -m experiments.timing.run [--quick] [--device D] [--threads N]``.

Runs the sections (explain, scorecam, multilayer, search, scale, profile), prints progress to
stderr, and writes ``report.json`` (every number) and ``report.md`` (tables, targets met or
missed, profiles, and the hand-written analysis in ``notes.md``) to ``--out``
(default: this folder). See README.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM progress bars: log noise, not work

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

HERE = Path(__file__).resolve().parent
SECTIONS = ("explain", "scorecam", "multilayer", "search", "scale", "profile")


@dataclass
class Plan:
    """What a run measures: models, batch sizes, repeats. Presets: :data:`PLANS`."""

    name: str
    size: int  # input side (px) for the explain/multilayer/profile sections
    explain: list[tuple[str, int, int]]  # (model, batch, rounds)
    methods: tuple[str, ...]
    scorecam: list[tuple[str, int, int, tuple[str, ...]]]  # (model, batch, rounds, peers)
    multilayer: tuple[str, int, int]  # (model, batch, rounds)
    search_model: str
    search_images: int
    search_size: int
    search_single: int  # candidates (one-layer programs)
    search_multi: int  # candidates lifted over the stages
    search_rounds: int
    search_naive: tuple[int, int]  # naive-loop candidates timed (single, multi)
    search_trials: int  # Optuna trials per storage in the trial-overhead measurement
    scale: list[tuple[int, int, str]]  # (images, batch, mode)
    scale_model: str
    scale_size: int
    profile: tuple[str, int]  # (model, batch) of the Grad-CAM explain profile
    real_inputs: bool = True
    isolate: bool = True  # memory probes in subprocesses (the only way to get a clean peak RSS)
    notes: list[str] = field(default_factory=list)


_METHODS = ("gradcam", "gradcampp", "layercam")
_PEERS = ("pytorch-grad-cam", "torchcam")
# sycam's Score-CAM without its folded channels-last copy for the masked forwards (the model itself,
# as before that change), timed beside it. (The earlier variants sycam[chunk=8], adopted in 2ad7035,
# and sycam[chunk=8,channels_last], superseded by the copy, were removed.)
_VARIANTS = ("sycam[plain]",)

PLANS: dict[str, Plan] = {
    "full": Plan(
        name="full", size=224,
        explain=[("resnet50", 1, 7), ("resnet50", 16, 5), ("mobilenet_v2", 1, 9), ("mobilenet_v2", 16, 7)],
        methods=_METHODS,
        scorecam=[("mobilenet_v2", 1, 3, (*_VARIANTS, *_PEERS))],
        multilayer=("resnet50", 16, 5),
        search_model="mobilenet_v2", search_images=64, search_size=224, search_single=60, search_multi=20,
        search_rounds=3, search_naive=(3, 2), search_trials=400,
        scale=[(1000, 64, "stream"), (10000, 64, "stream"), (1000, 256, "stream"), (1000, 64, "load")],
        scale_model="builtin", scale_size=64,
        profile=("resnet50", 16),
    ),
    "quick": Plan(
        name="quick", size=224,
        explain=[("resnet50", 1, 3), ("resnet50", 16, 2), ("mobilenet_v2", 1, 3), ("mobilenet_v2", 16, 2)],
        methods=_METHODS,
        scorecam=[("mobilenet_v2", 1, 1, (*_VARIANTS, "pytorch-grad-cam"))],
        multilayer=("resnet50", 8, 2),
        search_model="mobilenet_v2", search_images=64, search_size=224, search_single=30, search_multi=10,
        search_rounds=2, search_naive=(2, 1), search_trials=200,
        scale=[(1000, 64, "stream"), (4000, 64, "stream")],
        scale_model="builtin", scale_size=64,
        profile=("resnet50", 16),
    ),
    "tiny": Plan(  # the smoke test's: every code path, seconds in all; numbers mean nothing
        name="tiny", size=32,
        explain=[("tiny", 1, 2), ("tiny", 2, 1)],
        methods=_METHODS,
        scorecam=[("tiny", 1, 1, (*_VARIANTS, *_PEERS))],
        multilayer=("tiny", 2, 1),
        search_model="tiny", search_images=8, search_size=32, search_single=4, search_multi=2,
        search_rounds=1, search_naive=(1, 1), search_trials=12,
        scale=[(16, 8, "stream"), (32, 8, "stream"), (16, 8, "load")],
        scale_model="tiny", scale_size=32,
        profile=("tiny", 2),
        real_inputs=False, isolate=False,
    ),
}

#: the targets the suite checks (name -> (description, threshold, direction))
TARGETS = {
    "gradcam_vs_floor": ("Grad-CAM time / floor time", 1.15, "<="),
    "gradcam_vs_pgc": ("pytorch-grad-cam Grad-CAM time / sycam Grad-CAM time", 2.0, ">="),
    "scorecam_vs_pgc": ("pytorch-grad-cam Score-CAM time / sycam Score-CAM time", 2.0, ">="),
    "search_rate": ("candidates scored per second (cached captures)", 100.0, ">="),
    "search_vs_naive": ("naive seconds per candidate / cached seconds per candidate", 50.0, ">="),
    "race_rate_single": ("candidates per second through the search's race (racing + twins)", 500.0, ">="),
    "race_rate_multi": ("candidates per second through the search's race (racing + twins)", 150.0, ">="),
    "trial_storage": ("seconds per Optuna trial, study in SQLite / mirrored in memory (sycam.search.mirror)", 1.5, ">="),
    "trial_mirror_cost": ("seconds per Optuna trial, mirrored / in memory only (the write-through's cost)", 2.0, "<="),
    "scale_bounded": ("peak RSS growth from the smallest to the largest streamed set (MiB)", 64.0, "<="),
}


class Log:
    """Progress lines on stderr with the elapsed time and the load average."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            from experiments.timing.timing import loadavg

            print(f"[{time.perf_counter() - self.t0:7.1f} s | load {loadavg()[0]:.2f}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sections


def section_explain(plan: Plan, device: torch.device, log: Log) -> list[dict[str, Any]]:
    """Section 1 (gradient methods): every model x batch of the plan."""
    from experiments.timing.explain import PEERS, explain_throughput
    from experiments.timing.models import build_model, make_inputs

    out = []
    models: dict[str, Any] = {}
    for name, batch, rounds in plan.explain:
        if name not in models:
            models[name] = build_model(name, device)
        model, layer, weights = models[name]
        x, targets, source = make_inputs(batch, plan.size, device, real=plan.real_inputs)
        log(f"explain: {name} {layer} batch {batch}, {rounds} round(s)")
        res = explain_throughput(model, layer, x, targets, plan.methods, rounds, peers=PEERS, log=log)
        out.append({"model": name, "layer": layer, "weights": weights, "batch": batch, "size": plan.size, "rounds": rounds,
                    "inputs": source, **res})
    return out


def section_scorecam(plan: Plan, device: torch.device, log: Log) -> list[dict[str, Any]]:
    """Section 1 (Score-CAM): batch 1, few rounds, no warm-up (each call is thousands of forwards)."""
    from experiments.timing.explain import explain_throughput
    from experiments.timing.models import build_model, make_inputs

    out = []
    for name, batch, rounds, peers in plan.scorecam:
        model, layer, weights = build_model(name, device)
        x, targets, source = make_inputs(batch, plan.size, device, real=plan.real_inputs)
        channels = layer_channels(model, layer, x[:1])
        log(f"scorecam: {name} {layer} batch {batch}, {rounds} round(s), peers {', '.join(peers)}")
        res = explain_throughput(model, layer, x, targets, ["scorecam"], rounds, peers=peers, floor=False, warmup=0, log=log)
        log(f"scorecam: {name} no-grad forward cost per image vs batch size")
        cost = forward_cost(model, plan.size, device, batches=(1, 8, 16, 32, 64) if plan.name != "tiny" else (1, 2),
                            rounds=3 if plan.name != "tiny" else 1)
        out.append({"model": name, "layer": layer, "weights": weights, "batch": batch, "size": plan.size, "rounds": rounds,
                    "inputs": source, "channels": channels, "forward_cost": cost, **res})
    return out


def forward_cost(model: torch.nn.Module, size: int, device: torch.device, batches: Sequence[int], rounds: int) -> dict[str, Any]:
    """Seconds per image of a no-grad forward at each batch size (what Score-CAM's chunk size
    buys), in NCHW and channels-last input format, interleaved."""
    from experiments.timing.timing import interleaved, summarize

    g = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, size, size, generator=g).to(device) for b in batches}
    fns: dict[str, Callable[[], Any]] = {}
    for b in batches:
        for fmt in ("nchw", "channels_last"):
            xb = inputs[b] if fmt == "nchw" else inputs[b].contiguous(memory_format=torch.channels_last)

            def run(xb: torch.Tensor = xb) -> None:
                with torch.no_grad():
                    model(xb)

            fns[f"{fmt}/{b}"] = run
    times = interleaved(fns, rounds, device)
    return {key: {"batch": int(key.split("/")[1]), "format": key.split("/")[0],
                  "ms_per_image": 1e3 * summarize(v)["median"] / int(key.split("/")[1]),
                  "ms_per_image_min": 1e3 * min(v) / int(key.split("/")[1])} for key, v in times.items()}


def layer_channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    """Channels of ``layer``'s output (= Score-CAM's masked forwards per image), from one forward."""
    seen: list[int] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: seen.append(int(o.shape[1])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def section_multilayer(plan: Plan, device: torch.device, log: Log, threads: int) -> dict[str, Any]:
    """Section 2: Winsor-CAM over every conv vs pytorch-grad-cam with the same layers."""
    from experiments.timing.explain import multilayer
    from experiments.timing.memprobe import probe_main, run_probe
    from experiments.timing.models import build_model, conv_names, make_inputs

    name, batch, rounds = plan.multilayer
    model, _, weights = build_model(name, device)
    layers = conv_names(model)
    x, targets, source = make_inputs(batch, plan.size, device, real=plan.real_inputs)
    log(f"multilayer: {name}, {len(layers)} conv layers, batch {batch}, {rounds} round(s)")
    res = multilayer(model, layers, x, targets, rounds, log=log)
    memory = {}
    for key, impl, method in (("winsorcam/sycam", "sycam", "winsorcam"), ("gradcam/pytorch-grad-cam", "pytorch-grad-cam", "gradcam"),
                              ("floor", "floor", "gradcam")):
        spec = {"task": "explain", "model": name, "impl": impl, "method": method, "layers": "convs", "batch": batch,
                "size": plan.size, "device": str(device), "threads": threads, "real_inputs": plan.real_inputs}
        log(f"multilayer: peak RSS of {key} ({'subprocess' if plan.isolate else 'in-process'})")
        memory[key] = run_probe(spec) if plan.isolate else probe_main(spec)
    return {"model": name, "weights": weights, "batch": batch, "size": plan.size, "rounds": rounds, "inputs": source,
            "memory": memory,
            "memory_method": ("one fresh process per measurement, " + next(iter(memory.values()))["peak_method"]
                              if plan.isolate else "in-process (tiny run: structure only)"),
            **res}


def _search_setup(plan: Plan, device: torch.device) -> tuple[Any, Any, str, str, str]:
    from experiments.timing.models import IMAGENET_DEV, MOBILENET_WEIGHTS, tiny_bundle
    from sycam.data import open_dataset
    from sycam.models import load_model

    if plan.search_model == "tiny":
        return (tiny_bundle(device, plan.search_size), open_dataset("builtin", split="val", size=plan.search_size,
                                                                   limit=plan.search_images), "label", "builtin (val)", "random")
    weights = str(MOBILENET_WEIGHTS) if plan.search_model == "mobilenet_v2" and MOBILENET_WEIGHTS.is_file() else None
    bundle = load_model(plan.search_model, weights, device=device)
    if (IMAGENET_DEV / "manifest.csv").is_file():
        ds = open_dataset(f"folder:{IMAGENET_DEV}", split="all", size=plan.search_size, limit=plan.search_images)
        return bundle, ds, "label", f"imagenet-val-dev (first {plan.search_images}, boxes as masks)", weights or "random"
    ds = open_dataset("builtin", split="val", size=plan.search_size, limit=plan.search_images)
    return bundle, ds, "pred", "builtin benchmark upsampled (shared data absent)", weights or "random"


def section_search(plan: Plan, device: torch.device, log: Log, keep: dict[str, Any]) -> dict[str, Any]:
    """Section 3: candidates per second on cached captures vs the naive loop."""
    from experiments.timing.search import prepare_bench, sample_programs, search_throughput
    from sycam.metrics import get_metric

    bundle, ds, targets, data, weights = _search_setup(plan, device)
    metric = get_metric("iou")
    out: dict[str, Any] = {"model": plan.search_model, "weights": weights, "data": data, "metric": "iou",
                           "images": len(ds), "size": plan.search_size}
    for kind, n, naive in (("single", plan.search_single, plan.search_naive[0]), ("multi", plan.search_multi, plan.search_naive[1])):
        if n <= 0:
            continue
        programs = sample_programs(n, kind, seed=0)
        log(f"search: {n} {kind}-layer candidates; capturing {len(ds)} images")
        bench, capture_s = prepare_bench(bundle, ds, programs, batch_size=32, targets=targets, device=device)
        log(f"search: captured in {capture_s:.1f} s; scoring")
        res = search_throughput(bench, capture_s, programs, metric, plan.search_rounds, naive, log=log)
        res["selection"] = "default layer" if kind == "single" else "stages (fuse mean/max/winsor)"
        out[kind] = res
        if kind == "single":
            keep["search_bench"], keep["search_programs"], keep["metric"] = bench, programs, metric
        else:
            del bench
    from experiments.timing.search import trial_overhead

    log(f"search: Optuna's cost per trial by storage, {plan.search_trials} trials each")
    out["trial_overhead"] = trial_overhead(plan.search_trials, log=log)
    return out


def section_scale(plan: Plan, device: torch.device, log: Log, threads: int) -> list[dict[str, Any]]:
    """Section 4: peak RSS of streaming a program + metric over growing sets (one subprocess each)."""
    from experiments.timing.memprobe import probe_main, run_probe

    out = []
    for n, batch, mode in plan.scale:
        spec = {"task": "scale", "model": plan.scale_model, "n": n, "batch": batch, "mode": mode, "size": plan.scale_size,
                "program": "winsorcam", "metric": "iou", "split": "train", "device": str(device), "threads": threads}
        log(f"scale: {n} images, batch {batch}, {mode}")
        res = run_probe(spec) if plan.isolate else probe_main(spec)
        out.append({"n": n, "batch": batch, "mode": mode, "program": "winsorcam", "model": plan.scale_model,
                    "size": plan.scale_size, **res})
        log(f"scale: {n} images in {res['seconds']:.1f} s, peak RSS {res['rss_peak_mb']:.0f} MiB")
    return out


def section_profile(plan: Plan, device: torch.device, log: Log, keep: dict[str, Any]) -> dict[str, Any]:
    """Section 5: profiles of Grad-CAM explain and of search scoring."""
    from experiments.timing.models import build_model, make_inputs
    from experiments.timing.peers import make_runner
    from experiments.timing.profiling import op_profile, python_profile
    from experiments.timing.search import prepare_bench, sample_programs, score_programs_once

    name, batch = plan.profile
    model, layer, _ = build_model(name, device)
    x, targets, _ = make_inputs(batch, plan.size, device, real=plan.real_inputs)
    sy = make_runner("sycam", model, "gradcam", layer, x, targets)
    fl = make_runner("floor", model, "gradcam", layer, x, targets)
    sy(), fl()  # warm
    log(f"profile: Grad-CAM explain, {name} batch {batch}")
    out: dict[str, Any] = {"explain": {"model": name, "layer": layer, "batch": batch, "size": plan.size,
                                       "ops_sycam": op_profile(sy, device), "ops_floor": op_profile(fl, device),
                                       "python": python_profile(sy)}}
    if "search_bench" not in keep:
        bundle, ds, targets_mode, _, _ = _search_setup(plan, device)
        programs = sample_programs(plan.search_single, "single", seed=0)
        keep["search_bench"], _ = prepare_bench(bundle, ds, programs, batch_size=32, targets=targets_mode, device=device)
        keep["search_programs"] = programs
        from sycam.metrics import get_metric

        keep["metric"] = get_metric("iou")
    bench, programs, metric = keep["search_bench"], keep["search_programs"], keep["metric"]
    log(f"profile: search scoring, {len(programs)} one-layer candidates on {sum(len(c.targets) for c in bench.batches)} images")
    out["search"] = {"candidates": len(programs), "images": sum(len(c.targets) for c in bench.batches),
                     "ops": op_profile(lambda: score_programs_once(bench, programs, metric), device),
                     "python": python_profile(lambda: score_programs_once(bench, programs, metric))}
    log("profile: autograd memory of Grad-CAM capture; prototypes of the suggested changes")
    out["autograd_saved"] = autograd_saved(model, layer, x, targets)
    out["prototypes"] = prototypes(bench, programs, metric, device, rounds=3 if plan.name != "tiny" else 1)
    return out


def autograd_saved(model: torch.nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """MiB of tensors autograd saves for the backward pass during one sycam Grad-CAM call
    (``saved_tensors_hooks``; deterministic), as sycam runs it and with every parameter's
    ``requires_grad`` off (then the graph starts at the hooked layer: the suggested change)."""
    from sycam import Explainer

    explainer = Explainer(model, "gradcam", layers=layer)

    def saved(freeze: bool) -> float:
        seen: dict[tuple[int, Any, tuple[int, ...]], int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
            return t

        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            if freeze:
                for p, _ in flags:
                    p.requires_grad_(False)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                explainer(x, targets)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
        return sum(seen.values()) / 2**20

    return {"as_is_mib": saved(False), "params_frozen_mib": saved(True), "batch": int(x.shape[0])}


def prototypes(bench: Any, programs: Sequence[Any], metric: Any, device: torch.device, rounds: int) -> dict[str, Any]:
    """Measure the suggested search-scoring changes beside sycam's code on the cached batches:
    the joint-histogram Otsu IoU (exact) and scoring at reduced resolution (approximate)."""
    from experiments.timing.prototypes import joint_histogram_iou, reduced_resolution_iou, spearman
    from experiments.timing.timing import interleaved, ratio, summarize
    from sycam.errors import ProgramRuntimeError
    from sycam.metrics import MetricInputs

    compiled = []
    for p in programs:
        c = bench.compile(p)
        try:
            c(bench.batches[0].caps)
            compiled.append(c)
        except ProgramRuntimeError:
            continue
    cb = bench.batches[0]
    maps = compiled[0](cb.caps)
    masks = cb.batch.masks
    inputs = MetricInputs(maps=maps, masks=masks)
    exact = float((metric(inputs) - joint_histogram_iou(maps, masks)).nan_to_num().abs().max())
    times = interleaved({"sycam OtsuIoU (validated)": lambda: metric(inputs),
                         "sycam OtsuIoU.compute (no validation)": lambda: metric.compute(inputs),
                         "joint-histogram IoU": lambda: joint_histogram_iou(maps, masks)}, rounds, device)
    kernel = {"images": int(maps.shape[0]), "size": list(maps.shape[1:]), "max_abs_diff": exact,
              "times": {k: summarize(v) for k, v in times.items()},
              "speedup": ratio(times["sycam OtsuIoU (validated)"], times["joint-histogram IoU"])}
    # scoring at reduced resolution: per-candidate mean IoU and time, against full resolution
    size = int(maps.shape[-1])
    sides = [s for s in (size // 4, size // 2) if s >= 8]
    full_scores, full_t = [], 0.0
    low: dict[int, list[float]] = {s: [] for s in sides}
    low_t: dict[int, float] = {s: 0.0 for s in sides}
    for c in compiled:
        t0 = time.perf_counter()
        vals = torch.cat([metric(MetricInputs(maps=c(b.caps), masks=b.batch.masks)) for b in bench.batches])
        full_t += time.perf_counter() - t0
        full_scores.append(float(vals.nanmean()))
        for s in sides:
            t0 = time.perf_counter()
            vals = torch.cat([reduced_resolution_iou(c.raw(b.caps), b.batch.masks, s) for b in bench.batches])
            low_t[s] += time.perf_counter() - t0
            low[s].append(float(vals.nanmean()))
    n = len(compiled)
    full = torch.tensor(full_scores)
    reduced = {str(s): {"seconds_per_candidate": low_t[s] / n, "candidates_per_second": n / low_t[s],
                        "spearman_vs_full": spearman(full, torch.tensor(low[s])) if n >= 2 else float("nan"),
                        "max_abs_diff_mean_iou": float((full - torch.tensor(low[s])).abs().max()),
                        "best_full_rank_of_best_reduced": int((full > full[int(torch.tensor(low[s]).argmax())]).sum()) + 1}
               for s in sides}
    return {"iou_kernel": kernel,
            "reduced_resolution": {"candidates": n, "full": {"side": size, "seconds_per_candidate": full_t / n,
                                                             "candidates_per_second": n / full_t}, "sides": reduced}}


# ----------------------------------------------------------------------------- targets


def _check(name: str, value: float | None, where: str, minima: float | None = None) -> dict[str, Any]:
    """One target row: ``value`` (ratio of medians, or the figure) against the threshold, and the
    same verdict on ``minima`` (the ratio of the minima: what an unloaded machine would show)."""
    desc, threshold, direction = TARGETS[name]

    def verdict(v: float | None) -> bool | None:
        if v is None:
            return None
        return bool(v <= threshold if direction == "<=" else v >= threshold)

    margin = None
    if value is not None:  # how far from the threshold, as a factor (>1 = better than the target)
        margin = (threshold / value if value > 0 else float("inf")) if direction == "<=" else value / threshold
    return {"target": name, "where": where, "description": desc, "threshold": threshold, "direction": direction,
            "value": value, "met": verdict(value), "margin": margin, "minima": minima, "met_minima": verdict(minima)}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of :data:`TARGETS` against the measured figures (one row per configuration)."""
    rows = []
    for r in results.get("explain", []):
        where = f"{r['model']} bs{r['batch']}"
        if "gradcam" in r["overhead"]:
            o = r["overhead"]["gradcam"]
            rows.append(_check("gradcam_vs_floor", o["ratio"], where, o.get("min_ratio")))
        pgc = r["speedup"].get("gradcam", {}).get("pytorch-grad-cam")
        rows.append(_check("gradcam_vs_pgc", pgc["ratio"] if pgc else None, where, pgc.get("min_ratio") if pgc else None))
    for r in results.get("scorecam", []):
        pgc = r["speedup"].get("scorecam", {}).get("pytorch-grad-cam")
        rows.append(_check("scorecam_vs_pgc", pgc["ratio"] if pgc else None, f"{r['model']} bs{r['batch']}",
                           pgc.get("min_ratio") if pgc else None))
        for variant, vs in r.get("variant_speedup", {}).items():
            if "pytorch-grad-cam" in vs:  # informational: a variant, not sycam as it is
                v = vs["pytorch-grad-cam"]
                rows.append(_check("scorecam_vs_pgc", v["ratio"],
                                   f"{r['model']} bs{r['batch']}, {variant.split('/', 1)[1]} (variant)",
                                   v.get("min_ratio")))
    s = results.get("search")
    if s:
        for kind in ("single", "multi"):
            if kind in s:
                rows.append(_check("search_rate", s[kind]["candidates_per_second"]["median"], f"{kind}-layer"))
                rows.append(_check("search_vs_naive", s[kind]["speedup_vs_naive"], f"{kind}-layer"))
                if "raced" in s[kind]:
                    rows.append(_check(f"race_rate_{kind}", s[kind]["raced"]["candidates_per_second"]["median"],
                                       f"{kind}-layer ({s[kind]['raced_vs_cached']:.2f}× the cached loop)"))
        if "trial_overhead" in s:
            o = s["trial_overhead"]
            rows.append(_check("trial_storage", o["sqlite_vs_mirrored"], f"{o['trials']} trials"))
            rows.append(_check("trial_mirror_cost", o["mirrored_vs_memory"], f"{o['trials']} trials"))
    streams = [r for r in results.get("scale", []) if r["mode"] == "stream"]
    if len(streams) >= 2:
        same_batch = [r for r in streams if r["batch"] == streams[0]["batch"]]
        lo, hi = min(same_batch, key=lambda r: r["n"]), max(same_batch, key=lambda r: r["n"])
        if hi["n"] > lo["n"]:
            rows.append(_check("scale_bounded", hi["rss_peak_mb"] - lo["rss_peak_mb"], f"{lo['n']} -> {hi['n']} images"))
    return rows


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.timing.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats, smaller sets (about half the time)")
    mode.add_argument("--tiny", action="store_true", help="a tiny CNN and tiny sizes: runs every code path in seconds "
                                                         "(the smoke test's mode; the numbers mean nothing)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads on CPU (default 1: on a shared, loaded machine 2 threads make "
                        "OpenMP barriers spin and timings swing 5-25x; see README)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--scorecam-resnet", action="store_true",
                   help="also time Score-CAM on ResNet-50 layer4 (2048 forwards per image: ~10 min per contender on 1 CPU thread)")
    p.add_argument("--out", default=str(HERE), help="folder for report.json and report.md (default: experiments/timing)")
    p.add_argument("--notes", default=str(HERE / "notes.md"),
                   help="hand-written analysis appended to report.md (default: experiments/timing/notes.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: re-render report.md from --out's report.json and notes.md (after editing notes)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    unknown = [s for s in args.sections.split(",") if s and s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; expected a subset of {','.join(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suite; write ``report.json`` and ``report.md`` into ``--out``; return the results."""
    from experiments.timing.report import render
    from experiments.timing.timing import environment, loadavg

    args = parse_args(argv)
    if args.render_only:
        return rerender(Path(args.out))
    plan = replace(PLANS["tiny" if args.tiny else "quick" if args.quick else "full"])  # a copy: the presets stay as they are
    if args.scorecam_resnet and not args.tiny:
        plan.scorecam = plan.scorecam + [("resnet50", 1, 1, (*_VARIANTS, "pytorch-grad-cam"))]
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    from sycam._malloc import tune_allocator

    allocator = tune_allocator()  # as the sycam commands do (and for every contender alike: one process)
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    log = Log(args.quiet)
    started = datetime.datetime.now().astimezone()
    results: dict[str, Any] = {
        "meta": {"command": "python -m experiments.timing.run " + " ".join(sys.argv[1:] if argv is None else argv),
                 "plan": asdict(plan), "started": started.isoformat(timespec="seconds"), "sections": sections,
                 "environment": {**environment(device), "allocator_tuned": allocator}, "loadavg": {"start": loadavg()}},
    }
    keep: dict[str, Any] = {}
    runners: dict[str, Callable[[], Any]] = {
        "explain": lambda: section_explain(plan, device, log),
        "scorecam": lambda: section_scorecam(plan, device, log),
        "multilayer": lambda: section_multilayer(plan, device, log, args.threads),
        "search": lambda: section_search(plan, device, log, keep),
        "scale": lambda: section_scale(plan, device, log, args.threads),
        "profile": lambda: section_profile(plan, device, log, keep),
    }
    seconds: dict[str, float] = {}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sections:
        t0 = time.perf_counter()
        log(f"== section {name}")
        results[name] = runners[name]()
        seconds[name] = time.perf_counter() - t0
        results["meta"]["loadavg"][name] = loadavg()
        log(f"== section {name} done in {seconds[name]:.0f} s")
    results["meta"]["seconds"] = seconds
    results["meta"]["total_seconds"] = sum(seconds.values())
    results["meta"]["loadavg"]["end"] = loadavg()
    results["targets"] = evaluate_targets(results)
    results["meta"]["notes"] = args.notes
    notes = Path(args.notes)
    (out_dir / "report.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render(results, notes.read_text(encoding="utf-8") if notes.is_file() else ""),
                                       encoding="utf-8")
    log(f"wrote {out_dir / 'report.md'} and {out_dir / 'report.json'} ({results['meta']['total_seconds']:.0f} s in all)")
    return results


def rerender(out_dir: Path) -> dict[str, Any]:
    """Re-render ``report.md`` from ``out_dir/report.json`` and this folder's ``notes.md``."""
    from experiments.timing.report import render

    path = out_dir / "report.json"
    if not path.is_file():
        raise SystemExit(f"--render-only: no report.json in {out_dir}; run the suite first")
    results = json.loads(path.read_text(encoding="utf-8"))
    notes = Path(results["meta"].get("notes") or HERE / "notes.md")
    (out_dir / "report.md").write_text(render(results, notes.read_text(encoding="utf-8") if notes.is_file() else ""),
                                       encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
