"""What storing captures as float16 (SYCAM_CACHE_DTYPE=float16) does to scores, measured.

Scores the reference programs on the built-in benchmark's test split (built-in CNN) with captures
read back from a float32 cache and from a float16 cache, and prints the largest per-image and mean
differences per metric, and the cache sizes. Run: ``python -m experiments.scale.float16 [--limit N]``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sycam.cache import CaptureCache
from sycam.compile import CompiledProgram
from sycam.data import open_dataset
from sycam.metrics import get_metric
from sycam.models import load_model
from sycam.programs import load
from sycam.workbench import Workbench, merge_requests, score_streaming

PROGRAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "layeravg", "winsorcam")
METRICS = ("iou", "energy_pg", "pointing_game", "deletion", "insertion")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=512)
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    bundle = load_model("builtin", device="cpu")
    ds = open_dataset("builtin", split="test", limit=args.limit)
    from sycam.compile import LayerResolver

    resolver = LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)
    compiled = [CompiledProgram(load(p), resolver) for p in PROGRAMS]
    request = merge_requests([c.request for c in compiled])
    names = [m for m in args.metrics.split(",") if m]
    metrics = [get_metric(m) for m in names]
    progs = [(c, c.param_values()) for c in compiled]
    values, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            cache = CaptureCache(Path(tmp) / dtype, dtype=dtype)
            bench = Workbench(bundle, ds, request, batch_size=64, targets="label", progress=False, cache=cache)
            values[dtype] = score_streaming(bench, progs, metrics)
            sizes[dtype] = sum(e[2] for e in cache.entries())
    rows = []
    for name, a, b in zip(PROGRAMS, values["float32"], values["float16"]):
        for m in names:
            x, y = a[m].double(), b[m].double()
            both = ~(torch.isnan(x) | torch.isnan(y))
            d = (x - y)[both].abs()
            rows.append({"program": name, "metric": m, "mean_float32": float(x[both].mean()), "mean_float16": float(y[both].mean()),
                         "mean_difference": float((x[both].mean() - y[both].mean()).abs()), "max_image_difference": float(d.max()),
                         "images_changed": int((d > 0).sum()), "images": int(both.sum())})
    report = {"images": len(ds), "cache_bytes": sizes, "rows": rows,
              "largest_mean_difference": max(r["mean_difference"] for r in rows),
              "largest_image_difference": max(r["max_image_difference"] for r in rows)}
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    for r in rows:
        print(f"{r['program']:<10} {r['metric']:<14} {r['mean_float32']:.6f} {r['mean_float16']:.6f} "
              f"mean diff {r['mean_difference']:.2e}  max image diff {r['max_image_difference']:.2e}  "
              f"changed {r['images_changed']}/{r['images']}")
    print("cache bytes", sizes, "largest mean difference", report["largest_mean_difference"],
          "largest per-image difference", report["largest_image_difference"])


if __name__ == "__main__":
    main()
