"""Timing, summaries, ratios and the machine's state.

Contenders are timed *interleaved*: round ``r`` runs every contender once, in an order rotated
by ``r``, so a change of load on the shared machine hits all of them alike; ratios are taken
between timings of the same run (and, per round, between timings a few seconds apart).
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait for the kernels queued on ``device`` so a wall-clock reading covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - no MPS here
        torch.mps.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, result)`` of one call of ``fn``, synchronised on ``device`` before and after.

    A garbage collection runs first (outside the timing) so that one contender does not pay for
    another's garbage (cheap inside :func:`frozen_heap`).
    """
    gc.collect()
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Move every object alive now to the permanent generation (``gc.freeze``), so that the
    collection before each timed call scans only what the contenders made: with torch,
    pytorch-grad-cam and captum imported a full collection takes ~0.5 s per call otherwise."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{median, min, max, n, values}`` of repeated timings (seconds)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("summarize: no timings to summarise")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, Any]:
    """``median(num) / median(den)``, the range of the paired per-round ratios ``num[i]/den[i]``,
    and ``min(num) / min(den)``.

    Pair ``i`` was measured in the same round (seconds apart), so its ratio is the one least
    affected by a change of load; the ratio of medians is the headline figure; the ratio of the
    minima estimates the ratio on an unloaded machine (load only ever adds time).
    """
    if not num or not den:
        raise ValueError("ratio: empty timing list")
    paired = [a / b for a, b in zip(num, den) if b > 0]
    return {
        "ratio": statistics.median(num) / statistics.median(den),
        "paired_min": min(paired) if paired else float("nan"),
        "paired_max": max(paired) if paired else float("nan"),
        "paired_median": statistics.median(paired) if paired else float("nan"),
        "min_ratio": min(num) / min(den) if min(den) > 0 else float("nan"),
    }


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    rounds: int,
    device: torch.device,
    warmup: int = 1,
    on_first: Callable[[str, Any], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every contender over ``rounds`` rounds, round-robin.

    Each contender first runs ``warmup`` untimed calls (lazy initialisation, allocator warm-up);
    ``on_first(name, output)`` sees the output of its first call (to check the contenders agree).
    Round ``r`` visits the contenders in the order rotated by ``r``.
    """
    if rounds < 1:
        raise ValueError(f"interleaved: rounds must be >= 1, got {rounds}")
    with frozen_heap():
        return _interleaved(fns, rounds, device, warmup, on_first, log)


def _interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int, device: torch.device, warmup: int,
                 on_first: Callable[[str, Any], None] | None, log: Callable[[str], None] | None) -> dict[str, list[float]]:
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    seen: set[str] = set()
    for name in names:
        for _ in range(warmup):
            _, out = time_call(fns[name], device)
            if on_first is not None and name not in seen:
                on_first(name, out)
                seen.add(name)
            del out
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            dt, out = time_call(fns[name], device)
            if on_first is not None and name not in seen:  # no warm-up: the first timed call
                on_first(name, out)
                seen.add(name)
            del out
            times[name].append(dt)
            if log is not None:
                log(f"    round {r + 1}/{rounds} {name}: {dt:.3f} s")
    return times


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (NaN where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - Windows
        return [float("nan")] * 3


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def git_state(root: str) -> dict[str, Any]:
    """The commit of the checkout at ``root`` and the files under ``sycam/`` that differ from it
    (what the timings belong to; sycam's version number does not change between commits)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
                "sycam_changes": [ln[3:] for ln in git("status", "--porcelain", "--", "sycam").splitlines()]}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "sycam_changes": []}


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: machine, versions, threads, device, load average now."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 1
    env: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "cpus_visible": affinity,
        "mem_total_gb": _mem_total_gb(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "loadavg": loadavg(),
        "versions": {d: _version(d) for d in ("sycam", "torch", "torchvision", "numpy", "grad-cam", "torchcam", "captum",
                                              "optuna", "sympy", "lark")},
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    from pathlib import Path

    env["git"] = git_state(str(Path(__file__).resolve().parents[2]))
    return env
