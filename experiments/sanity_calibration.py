"""Calibration of the sanity checks (sycam.metrics.sanity) on MobileNetV2 with its real ImageNet weights.

Usage: python experiments/sanity_calibration.py [--limit 100] [--shared ../shared] [--device cpu]
                                                [--part calibration|cli|all]

``calibration``: on the first ``--limit`` images of ``shared/data/imagenet-val-dev`` (split all, each
image explained for its label), measures for every method the four sanity metrics and the signed
Spearman ρ_k of every step of the randomisation cascade (blocks), with 95 % percentile-bootstrap
intervals over images (sycam.metrics.bootstrap_ci, 1000 resamples, seed 0). Methods: the reference
programs, class-blind controls (``mean_c(sq(A))``, ``sq(sq(sq(mean_c(sq(A)))))``, the centred
Gaussian ``center``) and a random map per call (``random``, the chance level). Writes
``experiments/sanity/calibration.{csv,md}`` and ``cascade.png`` (ρ per step per method).

``cli``: the issue's requirement with the real CLI: ``sycam evaluate --metrics
randomisation,class_sensitivity`` on Grad-CAM, ``mean_c(sq(A))`` and ``center``; writes
``experiments/sanity/cli_check.md`` and exits 1 unless Grad-CAM passes both checks
(sycam.metrics.sanity.passes) and the two class-blind methods fail both.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "sanity"
REFERENCES = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "layeravg", "winsorcam"]
CONTROLS = {"mean_c(sq(A))": "mean_c(sq(A))", "sq(sq(sq(mean_c(sq(A)))))": "sq(sq(sq(mean_c(sq(A)))))"}
BASELINES = ["center", "random"]
CHECKS = ["randomisation", "randomisation_top", "class_sensitivity", "class_sensitivity_top2"]
BLIND = list(CONTROLS) + ["center"]  # class-blind (and, for center, model-blind) controls


def _baseline_fns(kind: str, seed: int, first: int):
    """A baseline's maps and its explainer of re-runs (a fresh random map per call for ``random``)."""
    from sycam.evaluate import baseline_maps

    calls = [0]

    def explain(images01: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        n, size = int(images01.shape[0]), (int(images01.shape[-2]), int(images01.shape[-1]))
        return baseline_maps(kind, n, size, images01.device, seed, [[2, first, calls[0], j] for j in range(n)])

    return explain


def calibrate(bundle, dataset, batch_size: int, seed: int) -> tuple[dict[str, dict[str, np.ndarray]], list[str], float]:
    """Per-image values ``{method: {check or 'rho:<step>': (N,)}}``, the step names, seconds.

    The programs share their captures (the workbench's principle): per batch and cascade step ONE
    capture of the merged request on the randomised copy gives every program's map, and one capture
    per other-class choice serves class sensitivity. That is the computation of
    ModelRandomisation.per_step / ClassSensitivity with the captures shared; the first batch checks
    that it agrees with the metric classes themselves (run per program) for Grad-CAM and
    mean_c(sq(A)). Baselines go through the metric classes.
    """
    from sycam.capture import capture
    from sycam.compile import CompiledProgram, LayerResolver
    from sycam.errors import ProgramRuntimeError
    from sycam.evaluate import baseline_maps
    from sycam.lang.parse import parse
    from sycam.metrics import ClassSensitivity, ClassSensitivityTop2, MetricInputs, ModelRandomisation
    from sycam.metrics.cascade import cascading_randomisation, randomisation_steps
    from sycam.metrics.sanity import other_classes, similarity, spearman
    from sycam.programs import load
    from sycam.workbench import CachedBatch, Workbench, merge_requests

    resolver = LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)
    programs = {name: CompiledProgram(load(name), resolver) for name in REFERENCES}
    programs.update({label: CompiledProgram(parse(text), resolver) for label, text in CONTROLS.items()})
    request = merge_requests(p.request for p in programs.values())
    wb = Workbench(bundle, dataset, request, batch_size=batch_size, progress=False)
    rand, cs, cs2 = ModelRandomisation(seed=seed), ClassSensitivity(seed=seed), ClassSensitivityTop2()
    steps = randomisation_steps(bundle.module, "blocks", bundle.stage_layers)
    methods = list(programs) + BASELINES
    acc: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in methods}
    failures: dict[str, int] = {}
    t0 = time.perf_counter()
    done = 0

    def maps_of(caps) -> dict[str, torch.Tensor | None]:
        out: dict[str, torch.Tensor | None] = {}
        for m, p in programs.items():
            try:
                out[m] = p(caps, None)
            except ProgramRuntimeError:
                out[m] = None
        return out

    def record(m: str, key: str, v: torch.Tensor) -> None:
        acc[m].setdefault(key, []).append(v.detach().double().cpu().numpy())

    for batch, tgt, caps in wb.iter_batches():
        b = len(batch)
        x = wb.normalized(batch.images)
        trained = maps_of(caps)
        nan = torch.full((b,), float("nan"))
        row: dict[str, dict[str, torch.Tensor]] = {m: {} for m in programs}
        for k, (name, copy) in enumerate(cascading_randomisation(bundle.module, steps, seed)):
            randomised = maps_of(capture(copy, x, tgt, request))
            for m in programs:
                ok = trained[m] is not None and randomised[m] is not None
                failures[f"{m} at {name}"] = failures.get(f"{m} at {name}", 0) + (0 if ok else b)
                row[m][f"rho:{name}"] = spearman(trained[m], randomised[m]).cpu() if ok else nan
        logits_in = MetricInputs(maps=batch.images[:, 0], targets=tgt, logits=caps.logits)
        for key, others in (("class_sensitivity", other_classes(tgt, int(caps.logits.shape[1]), seed)),
                            ("class_sensitivity_top2", cs2.other(logits_in))):
            other_maps = maps_of(capture(bundle.module, x, others, request))
            for m in programs:
                ok = trained[m] is not None and other_maps[m] is not None
                row[m][key] = similarity(trained[m], other_maps[m]).cpu() if ok else nan
        for m in programs:
            per_step = {s.name: row[m][f"rho:{s.name}"] for s in steps}
            row[m]["randomisation"] = rand.summary(per_step)
            row[m]["randomisation_top"] = per_step[steps[0].name].abs()
        if done == 0:  # the shared computation is the metrics' computation: check on the first batch
            cb = CachedBatch(batch, tgt, caps)
            for m in ("gradcam", "mean_c(sq(A))"):
                p, maps = programs[m], trained[m]
                direct = rand.per_step(wb.metric_inputs(cb, maps, rand, p))
                for s, v in direct.items():
                    torch.testing.assert_close(v.cpu(), row[m][f"rho:{s}"], rtol=0, atol=1e-5, equal_nan=True)
                torch.testing.assert_close(cs(wb.metric_inputs(cb, maps, cs, p)).cpu(), row[m]["class_sensitivity"],
                                           rtol=0, atol=1e-5, equal_nan=True)
                torch.testing.assert_close(cs2(wb.metric_inputs(cb, maps, cs2, p)).cpu(),
                                           row[m]["class_sensitivity_top2"], rtol=0, atol=1e-5, equal_nan=True)
            print("  shared captures agree with the metric classes (gradcam, mean_c(sq(A)))", file=sys.stderr)
        for m in programs:
            for key, v in row[m].items():
                record(m, key, v)
        size = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        for m in BASELINES:
            maps = baseline_maps(m, b, size, batch.images.device, seed, [[done + j] for j in range(b)])
            explain = _baseline_fns(m, seed, done)
            inputs = MetricInputs(maps=maps, images=batch.images, targets=tgt, logits=caps.logits, explain_fn=explain,
                                  model=bundle.module, explain_with=lambda _m, xx, t, f=explain: f(xx, t),
                                  stage_layers=bundle.stage_layers)
            per_step = rand.per_step(inputs)
            for s, v in per_step.items():
                record(m, f"rho:{s}", v)
            record(m, "randomisation", rand.summary(per_step))
            record(m, "randomisation_top", per_step[steps[0].name].abs())
            record(m, "class_sensitivity", cs(inputs))
            record(m, "class_sensitivity_top2", cs2(inputs))
        done += b
        print(f"  {done}/{len(dataset)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    bad = {k: v for k, v in failures.items() if v}
    if bad:
        print(f"  programs that yielded NaN/Inf on randomised copies (images): {bad}", file=sys.stderr)
    values = {m: {k: np.concatenate(v) for k, v in d.items()} for m, d in acc.items()}
    return values, [s.name for s in steps], time.perf_counter() - t0


def summarise(values, steps):
    from sycam.metrics import bootstrap_ci

    rows = []
    for m, d in values.items():
        for k in CHECKS + [f"rho:{s}" for s in steps]:
            mean, lo, hi, n = bootstrap_ci(d[k], n_boot=1000, alpha=0.05, seed=0)
            rows.append({"method": m, "check": k, "mean": mean, "lo": lo, "hi": hi, "n": n})
    return rows


def propose(cell) -> dict[str, dict[str, float]]:
    """Per check: the chance level (random), the weakest class-blind control (the lowest mean of
    mean_c(sq(A)), sq(sq(sq(mean_c(sq(A))))) and center) and the midpoint of the two."""
    out = {}
    for k in CHECKS:
        chance = cell[("random", k)]["mean"]
        blind_name = min(BLIND, key=lambda m: cell[(m, k)]["mean"])
        blind = cell[(blind_name, k)]["mean"]
        out[k] = {"chance": chance, "blind": blind, "blind_method": blind_name, "midpoint": (chance + blind) / 2}
    return out


def plot(cell, steps, methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    x = np.arange(len(steps))
    for m in methods:
        mean = np.array([cell[(m, f"rho:{s}")]["mean"] for s in steps])
        lo = np.array([cell[(m, f"rho:{s}")]["lo"] for s in steps])
        hi = np.array([cell[(m, f"rho:{s}")]["hi"] for s in steps])
        style = "--" if m in BLIND else (":" if m == "random" else "-")
        line, = ax.plot(x, mean, style, marker="o", ms=3, label=m)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, ["head"] + [f"…{s}" for s in steps[1:]], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("cascade step (cumulative re-initialisation, top-down)")
    ax.set_ylabel("Spearman ρ (trained vs randomised map)")
    ax.set_ylim(-0.4, 1.05)
    ax.set_title("MobileNetV2 (ImageNet weights): model randomisation, mean and 95% CI over images")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _f(v: float) -> str:
    return "nan" if v != v else f"{v:.3f}"


def write_calibration(values, steps, seconds, args, n_images) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = summarise(values, steps)
    with open(OUT / "calibration.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "check", "mean", "lo", "hi", "n"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{k: f"{r[k]:.6f}" for k in ("mean", "lo", "hi")}})
    cell = {(r["method"], r["check"]): r for r in rows}
    methods = list(values)
    plot(cell, steps, methods, OUT / "cascade.png")
    prop = propose(cell)
    lines = [
        "# Sanity checks: calibration on MobileNetV2 (ImageNet weights)",
        "",
        f"Written by `experiments/sanity_calibration.py --limit {args.limit}` ({n_images} images of "
        "`shared/data/imagenet-val-dev`, split all, each explained for its label; batch "
        f"{args.batch_size}; seed {args.seed}; {seconds / 60:.1f} min on {platform.machine()} with "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}).",
        "Mean over images with its 95 % percentile-bootstrap interval (1000 resamples). All four checks: "
        "lower is better.",
        "",
        "## The four checks",
        "",
        "| method | " + " | ".join(CHECKS) + " |",
        "| --- | " + " | ".join("---" for _ in CHECKS) + " |",
    ]
    for m in methods:
        cells = [f"{_f(cell[(m, k)]['mean'])} [{_f(cell[(m, k)]['lo'])}, {_f(cell[(m, k)]['hi'])}]"
                 + (f" n={cell[(m, k)]['n']}" if cell[(m, k)]["n"] != n_images else "") for k in CHECKS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Signed Spearman ρ per cascade step (blocks; step k re-initialises steps 1..k)", "",
              "Steps: `head` = the modules after the last stage layer; then each block named by the stage layer "
              "it ends at, down to the input. ![cascade](cascade.png)", "",
              "| method | " + " | ".join(steps) + " |", "| --- | " + " | ".join("---" for _ in steps) + " |"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            f"{_f(cell[(m, f'rho:{s}')]['mean'])} [{_f(cell[(m, f'rho:{s}')]['lo'])}, {_f(cell[(m, f'rho:{s}')]['hi'])}]"
            for s in steps) + " |")
    lines += ["", "## Threshold proposal", "",
              "chance = the random map's mean; blind = the lowest mean among the class-blind controls "
              f"({', '.join(BLIND)}); midpoint = (chance + blind) / 2.", "",
              "| check | chance | blind (which) | midpoint |", "| --- | --- | --- | --- |"]
    for k, p in prop.items():
        lines.append(f"| {k} | {_f(p['chance'])} | {_f(p['blind'])} ({p['blind_method']}) | {_f(p['midpoint'])} |")
    from sycam.metrics.sanity import THRESHOLDS, passes

    lines += ["", "## Verdicts with sycam.metrics.sanity.THRESHOLDS", "",
              "| method | " + " | ".join(f"{k} ≤ {_f(THRESHOLDS[k])}" for k in CHECKS) + " |",
              "| --- | " + " | ".join("---" for _ in CHECKS) + " |"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join("pass" if passes(k, cell[(m, k)]["mean"]) else "FAIL" for k in CHECKS) + " |")
    (OUT / "calibration.md").write_text("\n".join(lines) + "\n")
    (OUT / "calibration.json").write_text(json.dumps({"steps": steps, "proposal": prop, "rows": rows}, indent=1) + "\n")


def cli_check(args, weights: Path, data: Path) -> int:
    from sycam.cli import main as sycam_main
    from sycam.metrics.sanity import THRESHOLDS, passes

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prog = Path(tmp) / "meansq.cam"
        prog.write_text("# class-blind control\nmean_c(sq(A))\n")
        out = ROOT / "experiments" / "results" / "sanity_cli"
        cmd = ["evaluate", "--model", "mobilenet_v2", "--weights", str(weights), "--data", f"folder:{data}",
               "--split", "all", "--limit", str(args.limit), "--methods", f"gradcam,{prog},center",
               "--metrics", "randomisation,class_sensitivity", "--batch-size", str(args.batch_size),
               "--device", args.device, "--out", str(out), "--quiet", "--fresh"]
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = sycam_main(cmd)
        wall = time.perf_counter() - t0
        printed = buf.getvalue().replace(str(prog), "meansq.cam")
    print(printed, end="")
    if rc != 0:
        return rc
    doc = json.loads((out / "results.json").read_text())
    cell = {(r["method"], r["metric"]): r["mean"] for r in doc["results"]}
    verdict = {(m, k): passes(k, cell[(m, k)]) for m in ("gradcam", "meansq", "center")
               for k in ("randomisation", "class_sensitivity")}
    ok = all(verdict[("gradcam", k)] for k in ("randomisation", "class_sensitivity")) and not any(
        verdict[(m, k)] for m in ("meansq", "center") for k in ("randomisation", "class_sensitivity"))
    shown = " ".join(shlex.quote(c) for c in cmd).replace(str(args.shared_path), "../shared").replace(
        str(ROOT) + "/", "").replace(str(prog), "meansq.cam")
    lines = ["# Sanity checks with the real CLI (issue #10 requirement)", "",
             "Grad-CAM must pass both checks, `mean_c(sq(A))` (`meansq.cam`) and the centred Gaussian must fail both "
             "(pass = mean ≤ `sycam.metrics.sanity.THRESHOLDS`: "
             f"randomisation ≤ {THRESHOLDS['randomisation']}, class_sensitivity ≤ {THRESHOLDS['class_sensitivity']}). "
             f"Written by `experiments/sanity_calibration.py --part cli --limit {args.limit}` ({wall / 60:.1f} min).", "",
             "```", f"sycam {shown}", "```", "", "```", printed.replace(str(args.shared_path), "../shared").replace(
                 str(ROOT) + "/", "").rstrip(), "```", "",
             "| method | randomisation | class_sensitivity |", "| --- | --- | --- |"]
    for m in ("gradcam", "meansq", "center"):
        lines.append(f"| {m} | " + " | ".join("pass" if verdict[(m, k)] else "FAIL"
                                               for k in ("randomisation", "class_sensitivity")) + " |")
    lines += ["", f"Requirement met: {'yes' if ok else 'NO'}."]
    (OUT / "cli_check.md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100, help="images (the subset has 300)")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"), help="folder holding weights/ and data/")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("calibration", "cli", "all"), default="all")
    args = ap.parse_args(argv)
    args.shared_path = Path(args.shared).resolve()
    weights = args.shared_path / "weights" / "mobilenet_v2-b0353104.pth"
    data = args.shared_path / "data" / "imagenet-val-dev"
    for p in (weights, data):
        if not p.exists():
            print(f"missing shared resource: {p}", file=sys.stderr)
            return 2
    rc = 0
    if args.part in ("calibration", "all"):
        from sycam.data import open_dataset
        from sycam.models import load_model

        bundle = load_model("mobilenet_v2", weights=str(weights), device=args.device)
        dataset = open_dataset(f"folder:{data}", split="all", size=int(bundle.input_size[0]), limit=args.limit)
        values, steps, seconds = calibrate(bundle, dataset, args.batch_size, args.seed)
        write_calibration(values, steps, seconds, args, len(dataset))
        print((OUT / "calibration.md").read_text())
    if args.part in ("cli", "all"):
        rc = cli_check(args, weights, data)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
