"""Per noise family and level: how often the prediction changes, and how similar the maps stay.

For each (family, level) draw of :mod:`sycam.metrics.noise`, over the first N images of a dataset:
the fraction of images whose predicted class changes, and the mean Pearson r of the clean and the
noisy map over the draws that keep the prediction (consistency's terms) and over those that change
it (1 − r: responsiveness's terms), for each method. Writes a markdown table to stdout.

    PYTHONPATH=$PWD python experiments/noise/draws.py --model mobilenet_v2 \\
        --weights /work/shared/weights/mobilenet_v2-b0353104.pth \\
        --data folder:/work/shared/data/imagenet-val-dev --limit 16 \\
        --methods gradcam,experiments/noise/meanc.cam
"""
from __future__ import annotations

import argparse
import time

import torch

from sycam.compile import CompiledProgram, LayerResolver
from sycam.data import open_dataset
from sycam.evaluation.methods import resolve_methods
from sycam.metrics import Consistency
from sycam.models import load_model
from sycam.workbench import Workbench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--methods", default="gradcam")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bundle = load_model(args.model, weights=args.weights)
    size = int(bundle.input_size[0])
    dataset = open_dataset(args.data, split=args.split, size=size, limit=args.limit)
    metric = Consistency(seed=args.seed)
    print(f"model {args.model}, data {args.data} ({len(dataset)} images), seed {args.seed}\n")
    header = "| method | family | level | changed | mean r (kept) | mean 1 − r (changed) |"
    print(header + "\n|---|---|---:|---:|---:|---:|")
    for m in resolve_methods(args.methods.split(",")):
        assert m.program is not None
        t0 = time.perf_counter()
        resolver = LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)
        wb = Workbench(bundle, dataset, CompiledProgram(m.program, resolver).request, batch_size=16, targets="auto",
                       progress=False)
        compiled = wb.compile(m.program)
        flips, sims = [], []
        for cb in wb.load().batches:
            dr = metric.draws(wb.metric_inputs(cb, compiled(cb.caps), metric, compiled), explain="all")
            flips.append(dr.flipped)
            sims.append(dr.similarity)
        flipped, sim = torch.cat(flips), torch.cat(sims)
        for j, (family, level) in enumerate(metric.schedule):
            f, s = flipped[:, j], sim[:, j]
            kept = f"{float(s[~f].mean()):.3f}" if bool((~f).any()) else "—"
            changed = f"{float((1 - s[f]).mean()):.3f}" if bool(f.any()) else "—"
            print(f"| {m.name} | {family} | {level:g} | {int(f.sum())}/{len(f)} | {kept} | {changed} |")
        print(f"<!-- {m.name}: {time.perf_counter() - t0:.1f} s -->")


if __name__ == "__main__":
    main()
