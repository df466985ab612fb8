"""Section 3: search throughput. Candidate programs scored per second on cached captures, against
the naive loop that recomputes the forward and backward pass for every candidate."""
from __future__ import annotations

import random
import time
from typing import Any, Callable, Sequence

import torch

from experiments.timing.timing import summarize, sync
from sycam.workbench import Workbench, merge_requests
from sycam.capture import capture
from sycam.compile import CompiledProgram
from sycam.data.base import Dataset
from sycam.errors import ProgramRuntimeError
from sycam.lang import ast as A
from sycam.lang.pretty import pretty
from sycam.metrics import Metric
from sycam.models.bundle import ModelBundle
from sycam.search.space import SELECTIONS, Sampler

MULTI = ("layers_mean", "layers_max", "layers_winsor")


def sample_programs(n: int, kind: str, seed: int = 0, min_size: int = 5, max_size: int = 12, sel: str = "stages",
                    max_depth: int = 5, attempts: int = 20000) -> list[A.Program]:
    """``n`` distinct programs of the search space (:mod:`sycam.search.space`), drawn uniformly per
    choice by its :class:`Sampler`.

    ``kind="single"``: one-layer programs (the default layer) whose size (AST nodes) lies in
    ``[min_size, max_size]``; ``kind="multi"``: a Map of that size lifted over the layer selection
    ``sel`` (mean, max or Winsor-weighted fusion), as the enumerator lifts small maps.
    """
    if kind not in ("single", "multi"):
        raise ValueError(f"sample_programs: kind must be 'single' or 'multi', got {kind!r}")
    if sel not in SELECTIONS:
        raise ValueError(f"sample_programs: sel must be one of {SELECTIONS}, got {sel!r}")
    rng = random.Random(seed)

    def choose(_path: str, options: Sequence[str]) -> str:
        opts = list(options)
        if "single" in opts:  # the whole-program production
            return "single" if kind == "single" else rng.choice(list(MULTI))
        if sorted(opts) == sorted(SELECTIONS):
            return sel
        return rng.choice(opts)

    seen: set[str] = set()
    out: list[A.Program] = []
    for _ in range(attempts):
        deriv = Sampler(choose, max_depth=max_depth).sample()
        inner = deriv.kids[0].build()  # the Map (single: the program itself)
        if not min_size <= A.size(inner) <= max_size:
            continue
        program = deriv.program()
        text = pretty(program)
        if text in seen:
            continue
        seen.add(text)
        out.append(program)
        if len(out) == n:
            return out
    raise RuntimeError(f"sample_programs: found only {len(out)} distinct {kind} programs of size {min_size}-{max_size} "
                       f"in {attempts} draws")


def _score_all(bench: Workbench, compiled: Sequence[CompiledProgram], metric: Metric) -> int:
    """Score every program on the cached batches (invalid ones raise and count as rejected, as in
    a search). Returns how many were valid."""
    valid = 0
    for c in compiled:
        try:
            bench.score(c, [metric])
            valid += 1
        except ProgramRuntimeError:
            pass
    return valid


def prepare_bench(bundle: ModelBundle, dataset: Dataset, programs: Sequence[A.Program], batch_size: int = 32,
                  targets: str = "auto", device: torch.device | None = None) -> tuple[Workbench, float]:
    """A :class:`~sycam.workbench.Workbench` holding the captures of ``dataset`` for the union of the
    programs' requests, and the seconds the capture took."""
    device = device or next(bundle.module.parameters()).device
    request = merge_requests([CompiledProgram(p, _resolver(bundle)).request for p in programs])
    t0 = time.perf_counter()
    bench = Workbench(bundle, dataset, request, batch_size=batch_size, targets=targets, device=device, progress=False)
    bench.load()
    return bench, time.perf_counter() - t0


def search_throughput(
    bench: Workbench,
    capture_s: float,
    programs: Sequence[A.Program],
    metric: Metric,
    rounds: int,
    naive: int,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Candidates per second on cached captures vs the naive loop.

    Cached: ``bench`` (see :func:`prepare_bench`) holds the captures; a round compiles and
    scores every program (``Workbench.score``: the program on every batch, then the metric).
    Only programs valid on the data are timed (invalid ones are counted and dropped after the
    warm-up pass). Naive: for ``naive`` programs, the images are already in memory (decoding is not
    charged), and each batch is captured again for that program alone (one forward + one
    ``autograd.grad``), then the program and the metric run.
    """
    bundle = bench.bundle
    device = bench.device or next(bundle.module.parameters()).device
    images = sum(len(cb.targets) for cb in bench.batches)
    # warm-up: compile + score each once; keep the valid ones
    valid_programs = []
    for p in programs:
        try:
            bench.score(bench.compile(p), [metric])
            valid_programs.append(p)
        except ProgramRuntimeError:
            pass
    if not valid_programs:
        raise RuntimeError("search_throughput: no sampled program is valid on this data")
    per_round: list[float] = []
    for r in range(rounds):
        sync(device)
        t = time.perf_counter()
        for p in valid_programs:
            bench.score(bench.compile(p), [metric])
        sync(device)
        per_round.append(time.perf_counter() - t)
        if log:
            log(f"    cached round {r + 1}/{rounds}: {len(valid_programs)} programs in {per_round[-1]:.2f} s")
    raced = race_throughput(bench, valid_programs, metric, rounds, log)
    naive_s: list[float] = []
    for p in valid_programs[:naive]:
        compiled = CompiledProgram(p, _resolver(bundle))
        sync(device)
        t = time.perf_counter()
        for cb in bench.batches:
            caps = capture(bundle.module, bench.normalized(cb.batch.images), cb.targets, compiled.request)
            maps = compiled(caps)
            metric(bench.metric_inputs(cb, maps, metric))
        sync(device)
        naive_s.append(time.perf_counter() - t)
        if log:
            log(f"    naive candidate: {naive_s[-1]:.2f} s")
    n = len(valid_programs)
    rate = [n / s for s in per_round]
    cached_per_candidate = summarize([s / n for s in per_round])
    naive_summary = summarize(naive_s) if naive_s else None
    sizes = [A.size(p.body) for p in valid_programs]
    return {
        "images": images,
        "layers_captured": len(bench.request.layers),
        "capture_seconds": capture_s,
        "candidates": len(programs),
        "valid": n,
        "sizes": [min(sizes), max(sizes)],
        "examples": [pretty(p) for p in valid_programs[:3]],
        "cached_seconds_per_round": summarize(per_round),
        "candidates_per_second": {"median": n / summarize(per_round)["median"], "min": min(rate), "max": max(rate)},
        "cached_seconds_per_candidate": cached_per_candidate,
        "naive_seconds_per_candidate": naive_summary,
        "naive_candidates_per_second": (1.0 / naive_summary["median"]) if naive_summary else None,
        "speedup_vs_naive": (naive_summary["median"] / cached_per_candidate["median"]) if naive_summary else None,
        "break_even_candidates": (capture_s / max(naive_summary["median"] - cached_per_candidate["median"], 1e-9))
        if naive_summary else None,
        "raced": raced,
        "raced_vs_cached": raced["candidates_per_second"]["median"] / (n / summarize(per_round)["median"]),
        "raced_vs_naive": (raced["candidates_per_second"]["median"] * naive_summary["median"]) if naive_summary else None,
    }


def race_throughput(bench: Workbench, programs: Sequence[A.Program], metric: Metric, rounds: int,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Candidates per second through the search's own scorer: the race of :mod:`sycam.search.loop`
    (rung 0 on a subset at reduced resolution, the best third promoted, the exact rung on every
    image at full size; observational twins take their twin's values), over the same programs and
    captures as the cached loop. A fresh racer and journal per round, so nothing is reused across
    rounds; no clock (every candidate enters, as many are promoted as the rules say)."""
    import tempfile
    from pathlib import Path

    from sycam.search.loop import Journal, Racer
    from sycam.search.racing import RungBench, schedule

    n_images = sum(len(cb.targets) for cb in bench.batches)
    rungs = schedule(n_images, tuple(bench.batches[0].caps.input_size), [metric])
    rung_bench = RungBench(bench, rungs, [metric])
    items = [(p, pretty(p), None) for p in programs]
    per_round: list[float] = []
    stats = None
    for r in range(rounds):
        racer = Racer(rung_bench, [metric])
        with tempfile.TemporaryDirectory() as folder:
            journal = Journal(Path(folder) / "enumerated.jsonl", [metric])
            sync(bench.device)
            t = time.perf_counter()
            racer.race_list(items, journal, stop=lambda: False, head=0)
            sync(bench.device)
            per_round.append(time.perf_counter() - t)
            journal.close()
        stats = racer.stats
        if log:
            log(f"    raced round {r + 1}/{rounds}: {len(items)} programs in {per_round[-1]:.2f} s")
    assert stats is not None
    rate = [len(items) / s for s in per_round]
    return {"rungs": [x.label for x in rungs], "scored_per_rung": list(stats.per_rung),
            "observational_twins": stats.observational_duplicates, "seconds_per_round": summarize(per_round),
            "candidates_per_second": {"median": len(items) / summarize(per_round)["median"], "min": min(rate),
                                      "max": max(rate)}}


def _resolver(bundle: ModelBundle):
    from sycam.compile import LayerResolver

    return LayerResolver(bundle.module, bundle.default_layer, bundle.stage_layers)


def score_programs_once(bench: Workbench, programs: Sequence[A.Program], metric: Metric) -> int:
    """Compile and score each program once on ``bench`` (the profiled workload). Returns valid count."""
    return _score_all(bench, [bench.compile(p) for p in programs], metric)


def trial_overhead(n_trials: int, log: Callable[[str], None] | None = None, seed: int = 0) -> dict[str, Any]:
    """Seconds per Optuna trial beyond scoring, by where the study lives: in SQLite through Optuna's
    RDB storage (sycam's search before :mod:`sycam.search.mirror`), mirrored (sampled from memory,
    each finished trial written to SQLite in one transaction: the search now), and in memory only
    (the floor: nothing durable). Each runs ``n_trials`` of sycam's own objective, define-by-run
    sampler over the default space and TPE as the search configures it (:func:`open_study`, with
    the two sanity constraints), with a scorer that costs nothing: a value and constraints derived
    from each program's canonical hash. Reported: the mean over all trials and over the last
    quarter (TPE's cost grows with the study)."""
    import hashlib
    import tempfile

    from optuna.storages import InMemoryStorage

    from sycam.search.study import Objective, open_storage, open_study, optimize

    def value(canon: str, salt: str) -> float:
        return int(hashlib.sha256((salt + canon).encode()).hexdigest()[:8], 16) / 2 ** 32

    out: dict[str, Any] = {"trials": n_trials}
    for kind in ("sqlite", "mirrored", "memory"):
        with tempfile.TemporaryDirectory() as folder:
            storage = InMemoryStorage() if kind == "memory" else open_storage(f"sqlite:///{folder}/study.db")
            study = open_study(storage, "overhead", ["maximize"], seed, in_memory=kind == "mirrored")  # type: ignore[arg-type]
            objective = Objective(lambda cand: (value(cand.canon, "score"),),
                                  constraints=lambda cand: {"randomisation_top": value(cand.canon, "r") - 0.8,
                                                            "class_sensitivity": value(cand.canon, "c") - 0.8})
            stamps: list[float] = []  # a timestamp as each trial ends
            t0 = time.perf_counter()
            optimize(study, objective, n_trials=n_trials, callbacks=[lambda s, t: stamps.append(time.perf_counter())])
            total = time.perf_counter() - t0
            q = max(1, n_trials // 4)
            last = (stamps[-1] - stamps[-q - 1]) / q if len(stamps) > q else total / n_trials
            out[kind] = {"seconds_per_trial": total / n_trials, "last_quarter_seconds_per_trial": last}
            if log:
                log(f"    trial overhead, {kind}: {1e3 * total / n_trials:.1f} ms per trial ({1e3 * last:.1f} in the last quarter)")
    out["sqlite_vs_mirrored"] = out["sqlite"]["seconds_per_trial"] / out["mirrored"]["seconds_per_trial"]
    out["mirrored_vs_memory"] = out["mirrored"]["seconds_per_trial"] / out["memory"]["seconds_per_trial"]
    return out
