"""Peak memory of one measurement, in a fresh process: ``python -m experiments.timing.memprobe JSON``.

Each measurement runs in its own interpreter so that its peak resident set size is its own and not
a leftover of an earlier measurement. The peak is the kernel's high-water mark of the process's
resident set, ``VmHWM`` in ``/proc/self/status``, reset to the current RSS right before the
measured work by writing ``5`` to ``/proc/self/clear_refs``; the child reports the RSS *before*
the work (imports, model and inputs loaded) and the *peak* during it; *delta* is what the work
itself needed at its peak. Not ``resource.getrusage().ru_maxrss``: on Linux a child started from
a big parent inherits the parent's high-water mark through fork + exec (every probe of a 4 GB
parent read 3978 MiB). Where ``/proc`` is missing (macOS) ``ru_maxrss`` is the fallback. On CUDA,
``torch.cuda.max_memory_allocated`` is reported too. The result is one line
``MEMPROBE_RESULT {json}`` on stdout.

Tasks (the JSON's ``task``):

- ``explain``: one call of an explainer runner (``impl``, ``method``, ``layers`` = a module
  name or ``"convs"``) on ``batch`` images of ``size`` px for ``model``;
- ``scale``: a program and a metric streamed over ``n`` images of the built-in benchmark with
  :meth:`sycam.workbench.Workbench.iter_batches` (``mode="stream"``), or with ``load()`` followed by
  scoring (``mode="load"``, the contrast that keeps every capture); the current RSS is sampled
  after every batch (``/proc/self/statm``).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch

PREFIX = "MEMPROBE_RESULT "


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size since the last :func:`reset_peak` (or its start),
    MiB: ``VmHWM``, else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak() -> str:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs``); returns the method in use."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return "VmHWM reset by clear_refs"
    except OSError:
        return "ru_maxrss (peak since process start)"


def current_rss_mb() -> float:
    """This process's resident set size now, MiB (``/proc/self/statm``; the peak where absent)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return peak_rss_mb()


def _explain(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from experiments.timing.models import build_model, conv_names, make_inputs
    from experiments.timing.peers import make_runner

    model, default, _ = build_model(spec["model"], device)
    x, targets, _ = make_inputs(int(spec["batch"]), int(spec["size"]), device, real=bool(spec.get("real_inputs", True)))
    layers = spec.get("layers", default)
    layer_arg = conv_names(model) if layers == "convs" else layers
    if spec["impl"] == "sycam" and layers == "convs":
        layer_arg = None  # the program selects its own layers (each(convs, ...))
    run = make_runner(spec["impl"], model, spec["method"], layer_arg, x, targets)
    method = reset_peak()
    before = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    del out
    return {"rss_before_mb": before, "seconds": seconds, "peak_method": method}


def _scale(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from experiments.timing.models import builtin_bundle, tiny_bundle
    from sycam.workbench import CachedBatch, Workbench
    from sycam.compile import CompiledProgram, LayerResolver
    from sycam.data import open_dataset
    from sycam.explainer import as_program
    from sycam.metrics import get_metric

    size = int(spec.get("size", 64))
    if spec.get("model", "builtin") == "tiny":
        bundle, weights = tiny_bundle(device, size), "random (tiny)"
    else:
        bundle, weights = builtin_bundle(device)
    ds = open_dataset("builtin", split=spec.get("split", "train"), size=size, limit=int(spec["n"]))
    metric = get_metric(spec.get("metric", "iou"))
    resolver = LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)
    compiled = CompiledProgram(as_program(spec.get("program", "winsorcam")), resolver)
    bench = Workbench(bundle, ds, compiled.request, batch_size=int(spec["batch"]), targets="label", device=device,
                      progress=False)
    method = reset_peak()
    before = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    values: list[torch.Tensor] = []
    trace: list[tuple[int, float]] = []
    done = 0
    if spec.get("mode", "stream") == "load":
        bench.load()
        trace.append((len(ds), current_rss_mb()))
        values.append(bench.score(compiled, [metric])[metric.name])
        done = len(ds)
    else:
        for batch, targets, caps in bench.iter_batches():
            maps = compiled(caps)
            values.append(metric(bench.metric_inputs(CachedBatch(batch, targets, caps), maps, metric)).cpu())
            done += len(batch)
            trace.append((done, current_rss_mb()))
    seconds = time.perf_counter() - t0
    vals = torch.cat(values)
    step = max(1, len(trace) // 12)  # keep about a dozen points of the RSS trace
    return {"rss_before_mb": before, "seconds": seconds, "images": done, "weights": weights, "peak_method": method,
            "mean_metric": float(vals[~torch.isnan(vals)].mean()) if bool((~torch.isnan(vals)).any()) else float("nan"),
            "rss_trace": [(n, round(r, 1)) for n, r in trace[::step] + ([trace[-1]] if (len(trace) - 1) % step else [])]}


def probe_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this process; return its result (see the module docstring)."""
    torch.set_num_threads(int(spec.get("threads", 1)))
    device = torch.device(spec.get("device", "cpu"))
    start = current_rss_mb()
    task = spec.get("task")
    if task == "explain":
        out = _explain(spec, device)
    elif task == "scale":
        out = _scale(spec, device)
    else:
        raise ValueError(f"memprobe: unknown task {task!r}; expected 'explain' or 'scale'")
    out["rss_start_mb"] = start
    # VmHWM is updated lazily by the kernel (memory returned with madvise does not raise it first), so
    # it can read below an RSS sampled during the run: the peak is at least every RSS observed
    observed = [out["rss_before_mb"]] + [r for _, r in out.get("rss_trace", [])]
    out["rss_peak_mb"] = max([peak_rss_mb()] + observed)
    out["rss_delta_mb"] = out["rss_peak_mb"] - out["rss_before_mb"]
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_probe(spec: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """Run :func:`probe_main` for ``spec`` in a fresh interpreter; raise with its stderr on failure."""
    from experiments.timing.models import ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TQDM_DISABLE", "1")
    proc = subprocess.run([sys.executable, "-m", "experiments.timing.memprobe", json.dumps(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"memprobe {spec} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(PREFIX):])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m experiments.timing.memprobe '<json spec>'")
    result = probe_main(json.loads(sys.argv[1]))
    print(PREFIX + json.dumps(result), flush=True)
