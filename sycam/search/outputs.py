"""What a synthesis run writes beside its printout: programs, tables, figures, the manifest."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import optuna
import torch

from sycam.errors import ProgramRuntimeError
from sycam.lang import ast as A
from sycam.lang.parse import grammar_hash, parse
from sycam.lang.pretty import pretty
from sycam.search.hall import Row, fmt
from sycam.search.sanity import CHECKS
from sycam.search.select import with_defaults
from sycam.search.study import completed, mask_password, open_storage
from sycam.workbench import Workbench

if TYPE_CHECKING:
    from sycam.search.synthesize import Synthesis


def write_outputs(run: "Synthesis", rows: list[Row], refs: list[Row],
                  test: Workbench | Mapping[A.ScoreSpec, Workbench]) -> None:
    """The hall of fame's files: ``best*.cam`` (tuned parameters as defaults, scores and sanity
    values in the header), ``hall_of_fame.{csv,json}``, the convergence and Pareto plots, overlays
    (on ``test``: a bench of the test split per score the rows explain, or one)."""
    out = run.out
    names = [m.name for m in run.metrics]
    for old in out.glob("best*.cam"):
        old.unlink()
    for row in rows:
        header = [f"# {row.name}: synthesized by sycam for {', '.join(names)} (source: {row.source})",
                  f"# model {run.cfg.model}, data {run.cfg.data}, seed {run.cfg.seed}, study {run.cfg.study_name}",
                  "# " + "; ".join(f"{split} " + ", ".join(f"{k}={v:.4f}" for k, v in getattr(row, split).items())
                                   for split in ("train", "val", "test"))]
        if row.sanity:
            header.append("# sanity (validation): " + ", ".join(f"{k}={fmt(v, 3)}" for k, v in row.sanity.items())
                          + ("" if row.passes else f"  FAILS {', '.join(row.failed)}"))
        program = parse(row.program)
        if row.params:  # bake tuned parameters in as the defaults
            program = with_defaults(program, row.params)
        (out / f"{row.name}.cam").write_text("\n".join(header) + "\n" + pretty(program) + "\n")
    all_rows = rows + refs
    with open(out / "hall_of_fame.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "source", "size"] + [f"{s}_{n}" for s in ("train", "val", "test") for n in names]
                   + [f"test_{n}_{b}" for n in names for b in ("lo", "hi")] + [f"sanity_{c}" for c in CHECKS]
                   + ["fails", "params", "program", "simplified"])
        for r in all_rows:
            w.writerow([r.name, r.source, r.size] + [fmt(getattr(r, s).get(n)) for s in ("train", "val", "test") for n in names]
                       + [fmt(v) for n in names for v in r.test_ci.get(n, [math.nan, math.nan])]
                       + [fmt(r.sanity.get(c)) for c in CHECKS] + [" ".join(r.failed + r.worse)]
                       + [json.dumps(r.params), r.program.replace("\n", " "), r.simplified])
    (out / "hall_of_fame.json").write_text(json.dumps({"metrics": names, "rows": [asdict(r) for r in all_rows]}, indent=2))
    try:
        from sycam import viz

        if run.history:
            viz.convergence_plot(run.history, out / "convergence.png")
        if len(names) > 1:  # trade-off: every scored candidate (train) and the front
            pareto(run, names, out / "pareto.png")
        overlays(run, rows[:1] + [r for r in refs if r.name in ("gradcam", "gradcampp", "layercam", "winsorcam")], test)
    except ImportError:  # pragma: no cover - viz is part of the package
        pass


def pareto(run: "Synthesis", names: list[str], path: Path) -> None:
    """Every scored program of a trade-off study (train values) and the study's front."""
    from sycam import viz

    storage_url = run.cfg.storage or f"sqlite:///{(run.out / 'study.db').resolve()}"
    study = optuna.load_study(study_name=run.cfg.study_name, storage=open_storage(storage_url))
    trials = [t for t in completed(study) if t.values and all(math.isfinite(v) for v in t.values)]
    if len(trials) < 2:
        return
    front_numbers = {t.number for t in study.best_trials}
    points = [t.values for t in trials]
    front = [i for i, t in enumerate(trials) if t.number in front_numbers]
    arrows = ["↑" if m.higher_is_better else "↓" for m in run.metrics]
    viz.pareto_plot(points, front, [f"{n} {a} (train)" for n, a in zip(names, arrows)], path,
                    title=f"{len(trials)} programs; Pareto front in red")


def overlays(run: "Synthesis", rows: list[Row], test: Workbench | Mapping[A.ScoreSpec, Workbench]) -> None:
    """``overlays.png``: the first test images under each row's map (each on the captures of its score)."""
    from sycam import viz

    benches = {test.request.score: test} if isinstance(test, Workbench) else dict(test)
    first: dict[A.ScoreSpec, tuple] = {}  # one batch per score: no need to keep the split
    maps = {}
    batch = None
    for r in rows:
        program = parse(r.program)
        bench = benches.get(program.score_spec)
        if bench is None:  # no bench captured for its score: no overlay rather than a map of other gradients
            continue
        if program.score_spec not in first:
            first[program.score_spec] = next(iter(bench.iter_batches()))
        batch, targets, caps = first[program.score_spec]
        n = min(6, len(targets))
        compiled = bench.compile(program)
        try:
            maps[r.name] = compiled(caps, r.params)[:n].cpu()
        except ProgramRuntimeError:
            continue
    if batch is None:
        return
    n = min(6, len(batch.images))
    masks = batch.masks[:n].cpu() if batch.masks is not None else None
    viz.overlay_grid(batch.images[:n].cpu(), maps, run.out / "overlays.png", masks=masks)


def write_manifest(run: "Synthesis", storage_url: str) -> None:
    """``manifest.json``: the command, the configuration, versions and machine: what reproduces the run."""
    import lark
    import numpy
    import sympy

    from sycam import __version__

    manifest = {
        "command": mask_password(" ".join([Path(sys.argv[0]).name] + sys.argv[1:])),  # never write a password
        "config": {k: (list(v) if isinstance(v, (list, tuple)) else mask_password(v) if k == "storage" and v else v)
                   for k, v in asdict(run.cfg).items()},
        "study": run.cfg.study_name,
        "storage": re.sub(r"//[^@/]*@", "//***@", storage_url),  # never write a password
        "grammar_hash": grammar_hash(),
        "model": {"name": run.bundle.name, "default_layer": run.bundle.default_layer, "stages": run.bundle.stage_layers},
        "data": {split: {"size": len(ds), "name": getattr(ds, "name", "")} for split, ds in run.datasets.items()},
        "versions": {"sycam": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "optuna": optuna.__version__, "sympy": sympy.__version__, "lark": lark.__version__,
                     "numpy": numpy.__version__},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(run.device)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
