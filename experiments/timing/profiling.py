"""Section 5: where the time goes. torch.profiler (operators) and cProfile (Python functions,
with the time of the torch calls each sycam function makes charged to it)."""
from __future__ import annotations

import cProfile
import pstats
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

from experiments.timing.timing import sync


def op_profile(fn: Callable[[], Any], device: torch.device, top: int = 12) -> dict[str, Any]:
    """The operators that cost most in one call of ``fn`` (``torch.profiler``, self time).

    Returns ``total_ms`` (the sum of self times) and ``top`` rows ``{op, self_ms, pct, calls}``,
    on the device's clock where it has one (CUDA), else the CPU's.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [(e.key, float(getattr(e, attr, 0.0)) / 1e3, int(e.count)) for e in events]
    total = sum(r[1] for r in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": total, "clock": "device" if device.type == "cuda" else "cpu",
            "top": [{"op": k, "self_ms": round(ms, 2), "pct": round(100 * ms / total, 1), "calls": n} for k, ms, n in rows[:top]]}


def _label(func: tuple[str, int, str], root: str) -> str:
    file, line, name = func
    if file == "~":  # a builtin / C function
        return name
    short = file.split(root, 1)[1] if root in file else file.rsplit("/", 1)[-1]
    return f"{short}:{line}({name})"


def python_profile(fn: Callable[[], Any], top: int = 15, package: str = "/sycam/") -> dict[str, Any]:
    """cProfile of one call of ``fn``.

    ``total_s``: the profiled wall time; ``top_tottime``: functions by own time (builtins, i.e.
    torch kernels called from Python, included); ``by_function``: every function of ``package``
    charged with its own time plus the cumulative time of the non-``package`` functions it calls
    directly (so ``otsu_thresholds`` carries the torch ops it launches); ``by_file``: the same
    summed per file; ``cumulative``: ``package`` functions by cumulative time (the call tree's
    big branches).
    """
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    mine = {f for f in raw if package in f[0]}
    charged: dict[Any, float] = {f: raw[f][2] for f in mine}
    for callee, (_cc, _nc, _tt, _ct, callers) in raw.items():
        if callee in mine:
            continue
        for caller, edge in callers.items():
            if caller in mine:
                charged[caller] += edge[3]  # cumulative time of this callee when called from caller
    by_file: dict[str, float] = {}
    for f, t in charged.items():
        key = f[0].split(package, 1)[1] if package in f[0] else f[0]
        by_file[key] = by_file.get(key, 0.0) + t

    def row(f: Any, t: float) -> dict[str, Any]:
        return {"function": _label(f, package), "seconds": round(t, 4), "pct": round(100 * t / total, 1) if total else 0.0,
                "calls": int(raw[f][1])}

    return {
        "total_s": total,
        "top_tottime": [row(f, raw[f][2]) for f in sorted(raw, key=lambda f: -raw[f][2])[:top]],
        "by_function": [row(f, charged[f]) for f in sorted(charged, key=lambda f: -charged[f])[:top]],
        "by_file": [{"file": k, "seconds": round(v, 4), "pct": round(100 * v / total, 1) if total else 0.0}
                    for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])],
        "cumulative": [row(f, raw[f][3]) for f in sorted(mine, key=lambda f: -raw[f][3])[:top]],
    }
