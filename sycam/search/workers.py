"""``--workers N``: N processes search one study on this machine; the hall of fame is chosen once.

The parent creates the study, starts N worker processes (``multiprocessing`` with ``spawn``: a
fresh interpreter each, no forked torch state), each with 1/N of the torch threads and share ``I``
of ``N`` of the work: every worker races the enumerator's whole list (the enumeration is
deterministic), scoring first, at each rung, the programs ``i`` with ``i % N == I`` and then taking
the others' values from the claims (:mod:`sycam.search.claims`), so that no value one worker
computed is computed by another and every worker promotes alike (:mod:`sycam.search.loop`); Optuna's
trials are split in equal parts.
A worker killed by a signal (the OOM killer, ``kill -9``) is started again, up to ``MAX_RESTARTS``
times; it resumes from its journal and the study. When every worker has finished, the parent
selects on validation and reports on test once, as a single run would, and writes the summary.

``OUT/workers.json`` names the parent's and the workers' process ids while they run.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import wait

from sycam.errors import SycamError

MAX_RESTARTS = 3


def synthesize(cfg) -> dict:
    """Run ``cfg``: in this process, or with ``cfg.workers`` worker processes."""
    from sycam.search.synthesize import Synthesis

    if cfg.workers < 1:
        raise SycamError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.worker is not None:
        i, n = cfg.worker
        if not (n >= 1 and 0 <= i < n):
            raise SycamError(f"--worker I/N needs 0 <= I < N, got {i}/{n}")
        if cfg.workers > 1:
            raise SycamError("give either --workers N (processes on this machine) or --worker I/N (one share), not both")
    if cfg.workers == 1:
        return Synthesis(cfg).run()
    return run_workers(cfg)


def _child(cfg, conn, threads: int) -> None:  # pragma: no cover - runs in the worker process
    import torch

    from sycam.search.synthesize import Synthesis

    torch.set_num_threads(threads)
    index = cfg.worker[0]
    try:
        message = ("ok", index, Synthesis(cfg).run())
    except SycamError as err:
        message = ("error", index, str(err))
    except KeyboardInterrupt:
        message = ("interrupted", index, "")
    except BaseException as err:  # noqa: BLE001 - report anything to the parent, then fail
        traceback.print_exc()
        message = ("error", index, f"{type(err).__name__}: {err}")
    conn.send(message)
    conn.close()


def run_workers(cfg) -> dict:
    """The parent of ``cfg.workers`` worker processes (see the module docstring)."""
    import torch

    from sycam.metrics import get_metric
    from sycam.search.claims import Claims
    from sycam.search.study import open_storage, open_study
    from sycam.files import check_writable
    from sycam.search.synthesize import Synthesis

    t0 = time.perf_counter()
    n = cfg.workers
    out = cfg.out_dir
    check_writable(out)
    storage_url = cfg.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    directions = ["maximize" if get_metric(m).higher_is_better else "minimize" for m in cfg.metrics]
    storage = open_storage(storage_url)
    open_study(storage, cfg.study_name, directions, cfg.seed)  # created once, before the workers race to
    Claims(storage, cfg.study_name, "parent")
    threads = max(1, torch.get_num_threads() // n)
    ctx = mp.get_context("spawn")
    cfgs = [replace(cfg, workers=1, worker=(i, n), report=False, progress=False) for i in range(n)]
    procs: dict[int, mp.process.BaseProcess] = {}
    conns: dict = {}  # the read end of each running worker's pipe -> its index
    restarts = {i: 0 for i in range(n)}
    done: dict[int, dict] = {}
    say = (lambda text: print(f"sycam: {text}", file=sys.stderr, flush=True)) if cfg.progress else (lambda text: None)

    def start(i: int) -> None:
        # one pipe per worker: a worker killed mid-message damages only its own
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(cfgs[i], writer, threads), name=f"sycam-worker-{i}")
        p.start()
        writer.close()
        procs[i], conns[reader] = p, i
        _write_pids(out, procs, restarts)

    say(f"{n} workers on study {cfg.study_name!r}, {threads} torch thread{'s' if threads > 1 else ''} each")
    try:
        for i in range(n):
            start(i)
        while len(done) < n:
            for reader in wait(list(conns), timeout=1.0):
                i = conns.pop(reader)
                try:
                    kind, _, payload = reader.recv()
                except (EOFError, OSError):  # it died without a word
                    kind, payload = "died", None
                reader.close()
                p = procs[i]
                p.join()
                if kind == "ok":
                    done[i] = payload
                    s = payload["stats"]
                    say(f"worker {i + 1}/{n} finished: {s['scored']} programs scored, {s['from_other_workers']} found by "
                        f"others, {s['search_seconds']:.1f} s")
                elif kind == "error":
                    raise SycamError(f"worker {i + 1}/{n}: {payload}")
                elif kind == "interrupted":
                    raise KeyboardInterrupt
                elif p.exitcode is not None and p.exitcode < 0 and restarts[i] < MAX_RESTARTS:
                    restarts[i] += 1
                    say(f"worker {i + 1}/{n} was killed by signal {-p.exitcode}; starting it again "
                        f"({restarts[i]}/{MAX_RESTARTS}): it resumes from its journal and the study")
                    start(i)
                else:
                    code = p.exitcode if p.exitcode is not None else 0
                    why = f"was killed by signal {-code}" if code < 0 else f"exited with status {code} without a result"
                    raise SycamError(f"worker {i + 1}/{n} {why}" + (f" after {restarts[i]} restarts" if restarts[i] else ""))
    except BaseException:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=30)
        raise
    finally:
        (out / "workers.json").unlink(missing_ok=True)
    search_seconds = time.perf_counter() - t0
    return report(Synthesis(replace(cfg, worker=None, report=True)), [done[i] for i in range(n)], search_seconds,
                  restarts, t0)


def report(synth, workers: list[dict], search_seconds: float, restarts: dict[int, int], started: float) -> dict:
    """Select on validation and report on test once, on the study the workers filled."""
    from sycam.cache import STATS
    from sycam.capture import CaptureRequest
    from sycam.search.budget import PHASES, TOLERANCE
    from sycam.lang import ast as A
    from sycam.search.scores import merge_workers
    from sycam.search.study import completed, open_storage, open_study
    from sycam.search.synthesize import _search_request, peak_rss_mb, search_selections
    from sycam.workbench import Workbench

    cfg = synth.cfg
    directions = ["maximize" if m.higher_is_better else "minimize" for m in synth.metrics]
    storage_url = cfg.storage or f"sqlite:///{(synth.out / 'study.db').resolve()}"
    study = open_study(open_storage(storage_url), cfg.study_name, directions, cfg.seed)
    synth._write_manifest(storage_url)
    resolver = Workbench(synth.bundle, synth.datasets["train"], CaptureRequest(layers=()), cache=None).resolver
    synth.selections = search_selections(resolver, cfg.space)
    synth.widen = _search_request(resolver, A.ScoreSpec(), synth.selections, cfg.space.expensive)
    train = synth.bench("train", CaptureRequest(layers=()))  # only its layer resolver is used
    synth.history = _merged_history(workers, 1 if synth.metrics[0].higher_is_better else -1)
    result = synth._select_and_report(study, train)
    keys = ("scored", "observational_duplicates", "invalid", "from_journal", "from_other_workers")
    captures = STATS.since(synth.captures_mark)
    for w in workers:
        for k, v in w["stats"]["captures"].items():
            captures[k] = round(captures[k] + v, 3)
    result["stats"] = {"enumeration": workers[0]["stats"]["enumeration"], **{k: sum(w["stats"][k] for w in workers) for k in keys},
                       "trials": len(study.trials), "completed": len(completed(study)),
                       "search_seconds": round(search_seconds, 2), "total_seconds": round(time.perf_counter() - started, 2),
                       "captures": captures, "workers": len(workers), "restarts": sum(restarts.values()),
                       "peak_rss_mb": peak_rss_mb(),
                       "scores": merge_workers([w["stats"].get("scores", {}) for w in workers]),
                       "per_worker": [{"worker": w["worker"], **{k: w["stats"][k] for k in keys + (
                           "search_seconds", "waited_for_other_workers", "peak_rss_mb")}} for w in workers]}
    # the workers ran their phases side by side: each phase as long as its slowest worker's, then
    # the parent's selection and report
    final = time.perf_counter() - started - search_seconds
    slowest = {p: max(w["stats"]["phases"]["seconds"].get(p, 0.0) for w in workers)
               for p in PHASES if p != "final" and any(p in w["stats"]["phases"]["seconds"] for w in workers)}
    total = round(time.perf_counter() - started, 2)
    budget = workers[0]["stats"]["phases"]["budget"]
    result["stats"]["phases"] = {"seconds": {**slowest, "final": round(final, 2)}, "total": total, "budget": budget,
                                 "overrun": (f"the run took {total:.0f} s of a {budget:g} s budget with {len(workers)} workers"
                                             if budget is not None and total > (1 + TOLERANCE) * budget else None)}
    (synth.out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _merged_history(workers: list[dict], sign: int) -> list[dict[str, float]]:
    """The workers' best-so-far curves as one: points in wall-clock order, counted together."""
    points = sorted((w["started"] + p["seconds"], p["best"]) for w in workers for p in w["history"])
    if not points:
        return []
    start = min(w["started"] for w in workers)
    out, best = [], None
    for n, (when, value) in enumerate(points, 1):
        best = value if best is None or sign * value > sign * best else best
        out.append({"n": n, "seconds": when - start, "best": best})
    return out


def _write_pids(out, procs: dict, restarts: dict) -> None:
    doc = {"parent": os.getpid(), "workers": {str(i): {"pid": p.pid, "restarts": restarts[i]} for i, p in procs.items()}}
    tmp = out / f".workers.json.{os.getpid()}"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, out / "workers.json")


__all__ = ["MAX_RESTARTS", "report", "run_workers", "synthesize"]
