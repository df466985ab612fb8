"""The metric × method trade-off study.

Synthesises one program per metric (IoU, energy pointing game, deletion, insertion, robustness)
on the train split, then scores every synthesised and reference program (the seed methods
MI-CAM, MetaCAM, Integrative CAM, Recipro-CAM and UnionCAM among them) under every metric, and the
noise-robustness pair consistency / responsiveness besides (``--also``), on the test split, and
writes the method × metric table (CSV, Markdown) and a heatmap figure.

    python experiments/tradeoff.py --budget 60 --out experiments/tradeoff

Defaults run on the built-in benchmark and CNN (no download).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from sycam.workbench import merge_requests
from sycam.compile import CompiledProgram
from sycam.errors import SycamError
from sycam.lang import parse
from sycam.metrics import get_metric
from sycam.metrics.stats import bootstrap_ci
from sycam.programs import load
from sycam.search.synthesize import SynthConfig, Synthesis
from sycam.viz import heatmap_table

METRICS = ("iou", "energy_pg", "deletion", "insertion", "robustness")
REFERENCES = ("gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "winsorcam", "layeravg",
              "micam", "metacam", "integrative_cam", "reciprocam", "unioncam")
# scored for every method, not synthesised for: noise robustness and the two sanity checks the search requires
ALSO = ("consistency", "responsiveness", "randomisation_top", "class_sensitivity")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--budget", type=float, default=60.0, help="wall-time seconds of each metric's synthesis run")
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", default="builtin")
    ap.add_argument("--train-limit", type=int, default=128)
    ap.add_argument("--test-limit", type=int, default=256)
    ap.add_argument("--out", default="experiments/tradeoff")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--also", default=",".join(ALSO), help="metrics only scored, not synthesised for")
    ap.add_argument("--sanity", default="require", choices=("require", "flag", "off"),
                    help="the synthesis runs' sanity checks (sycam synthesize --sanity)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metric_names = [m for m in args.metrics.split(",") if m]
    searched = list(metric_names)
    metric_names += [m for m in args.also.split(",") if m and m not in metric_names]
    metrics = [get_metric(m) for m in metric_names]

    programs: dict[str, tuple[str, dict[str, float]]] = {}
    missing: dict[str, str] = {}  # metric -> why its synthesis returned no program
    t0 = time.perf_counter()
    for name in searched:
        cfg = SynthConfig(metrics=[name], model=args.model, weights=args.weights, data=args.data, budget=args.budget,
                          seed=args.seed, out=str(out / "runs" / f"synth-{name}"), train_limit=args.train_limit,
                          val_limit=args.train_limit, test_limit=args.test_limit, references=("gradcam",),
                          sanity=args.sanity, progress=False)
        try:
            result = Synthesis(cfg).run()
        except SycamError as e:  # e.g. no program passed the sanity checks: said in the table, not a crash
            missing[name] = str(e)
            print(f"synthesised for {name}: none ({e})", flush=True)
            continue
        best = result["best"]
        programs[f"synth[{name}]"] = (best["program"], best["params"])
        print(f"synthesised for {name}: {best['program']}  (val {best['val'][name]:.4f})", flush=True)
    for ref in REFERENCES:
        programs[ref] = (load(ref).source or "", {})

    synth = Synthesis(SynthConfig(metrics=[metric_names[0]], model=args.model, weights=args.weights, data=args.data,
                                  out=str(out / "runs" / "eval"), test_limit=args.test_limit))
    resolver = _resolver(synth)
    compiled = {k: CompiledProgram(parse(text), resolver) for k, (text, _) in programs.items()}
    # one bench per explained score (Recipro-CAM explains softmax probabilities; a capture holds one score)
    by_score: dict = {}
    for c in compiled.values():
        by_score.setdefault(c.request.score, []).append(c.request)
    benches = {score: synth.bench("test", merge_requests(reqs)) for score, reqs in by_score.items()}
    table = np.full((len(programs), len(metrics)), np.nan)
    rows = []
    for i, (name, prog) in enumerate(compiled.items()):
        values = benches[prog.request.score].score(prog, metrics, programs[name][1] or None)
        row = {"method": name, "program": programs[name][0].strip().splitlines()[-1]}
        for j, m in enumerate(metrics):
            mean, lo, hi, n = bootstrap_ci(values[m.name])
            table[i, j] = mean
            row[m.name] = f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"
        rows.append(row)
        print(name, {m.name: round(table[i, j], 4) for j, m in enumerate(metrics)}, flush=True)

    with open(out / "tradeoff.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method"] + metric_names + ["program"])
        w.writeheader()
        w.writerows(rows)
    directions = {m.name: ("↑" if m.higher_is_better else "↓") for m in metrics}
    md = ["| method | " + " | ".join(f"{m} {directions[m]}" for m in metric_names) + " |",
          "|---|" + "---|" * len(metric_names)]
    md += ["| " + r["method"] + " | " + " | ".join(r[m] for m in metric_names) + " |" for r in rows]
    (out / "tradeoff.md").write_text(
        f"# Metric × method trade-off ({args.model} on {args.data}, test split, {args.test_limit} images)\n\n"
        "Mean [95% bootstrap interval]. Each synth[m] row is the program synthesised for metric m "
        f"(a run of {args.budget:.0f} s, search on {args.train_limit} train images).\n\n" + "\n".join(md) + "\n\n"
        + f"Synthesis runs with `--sanity {args.sanity}`.\n\n"
        + "\n".join(f"- `{k}`: `{programs[k][0].strip().splitlines()[-1]}`" for k in programs if k.startswith("synth"))
        + "".join(f"\n- `synth[{k}]`: no program ({why})" for k, why in missing.items())
        + f"\n\nTotal time {time.perf_counter() - t0:.0f} s.\n")
    heatmap_table(table, list(programs), [f"{m} {directions[m]}" for m in metric_names], out / "tradeoff.png",
                  title="metric × method (test split)", higher_is_better=[m.higher_is_better for m in metrics])
    (out / "tradeoff.json").write_text(json.dumps({"rows": rows, "programs": programs, "missing": missing,
                                                   "sanity": args.sanity, "budget": args.budget}, indent=2))
    print(f"wrote {out / 'tradeoff.md'} and {out / 'tradeoff.png'}")


def _resolver(synth: Synthesis):
    from sycam.compile import LayerResolver

    b = synth.bundle
    return LayerResolver(b.module, b.default_layer, b.stage_layers)


if __name__ == "__main__":
    main()
