"""Scoring throughput of ``sycam synthesize --workers N`` against one worker, measured.

Runs the same search (built-in benchmark and CNN, ``--candidates C``: the same programs whatever
the worker count) with 1 and with N workers, alternating, and reports for each run: programs
scored per second of scoring (each worker's search time minus its enumeration, which every
worker repeats; the slowest worker counts), the wall time of the whole command, its CPU time
(children included) and the load average around it. Writes ``experiments/scale/workers.json``.

Run: ``python -m experiments.scale.workers [--candidates 300] [--workers 2] [--repeats 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(workers: int, args, tmp: Path) -> dict:
    out = tmp / f"w{workers}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "sycam.cli", "synthesize", "--metric", "iou", "--candidates", str(args.candidates),
           "--max-size", str(args.max_size), "--sanity", "off", "--quiet", "--out", str(out), "--workers", str(workers)]
    env = dict(os.environ, SYCAM_CACHE="off", OMP_NUM_THREADS=str(args.threads))
    load0 = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    stats = json.loads((out / "summary.json").read_text())["stats"]
    per = stats.get("per_worker") or [{"scored": stats["scored"], "search_seconds": stats["search_seconds"]}]
    enum_s = stats["enumeration"]["seconds"]
    scoring = max(w["search_seconds"] - enum_s for w in per)
    scored = sum(w["scored"] for w in per)
    shutil.rmtree(out, ignore_errors=True)
    return {"workers": workers, "scored": scored, "scoring_seconds": round(scoring, 2),
            "programs_per_second": round(scored / scoring, 2), "enumeration_seconds": round(enum_s, 2),
            "wall_seconds": round(wall, 1), "cpu_seconds": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 1),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--max-size", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (split between the workers)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("workers.json")))
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for w in (1, args.workers):
                runs.append(one_run(w, args, Path(tmp)))
                print(json.dumps(runs[-1]), flush=True)
    one = [r["programs_per_second"] for r in runs if r["workers"] == 1]
    many = [r["programs_per_second"] for r in runs if r["workers"] == args.workers]
    median = statistics.median
    doc = {"what": f"sycam synthesize --metric iou --candidates {args.candidates} --max-size {args.max_size} --sanity off, "
                   f"built-in benchmark and CNN, SYCAM_CACHE=off, {args.threads} torch threads in all, alternating 1 and "
                   f"{args.workers} workers",
           "machine": {"cpus": os.cpu_count()}, "runs": runs,
           "median_programs_per_second": {"1": median(one), str(args.workers): median(many)},
           "median_ratio": round(median(many) / median(one), 2),
           "pair_ratios": [round(runs[i + 1]["programs_per_second"] / runs[i]["programs_per_second"], 2)
                           for i in range(0, len(runs) - 1, 2)],
           "median_wall_seconds": {str(w): median(r["wall_seconds"] for r in runs if r["workers"] == w) for w in (1, args.workers)},
           "median_cpu_seconds": {str(w): median(r["cpu_seconds"] for r in runs if r["workers"] == w) for w in (1, args.workers)}}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}))


if __name__ == "__main__":
    main()
