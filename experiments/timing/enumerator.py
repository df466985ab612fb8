"""The enumerator on the built-in benchmark, as ``sycam synthesize`` drives it: run time and the
programs it yields.

``python -m experiments.timing.enumerator [--repeats N] [--out FILE]`` loads the built-in CNN and
the first batch of its train split (the search's capture request, 64 images), cuts the 16-image
probe the search uses, and runs :class:`~sycam.search.enumerate.Enumerator` to completion (no time
limit, ``max_size`` 8, the search's layer selections) ``N`` times, each with empty canonical-form
and sympy caches (as in a fresh search). It prints the median and
min-max seconds of the runs (wall clock, and the process's CPU time, which another job on a
shared machine disturbs less) and the enumerator's counts, and with ``--out`` writes the enumerated
program texts, one per line, in order: two runs' files are identical when the enumerator yields
the same programs on the same probe.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    import sympy

    from sycam.capture import CaptureRequest
    from sycam.data import open_dataset
    from sycam.lang import ast as A
    from sycam.lang.canon import _canon_cached
    from sycam.lang.pretty import pretty
    from sycam.models import load_model
    from sycam.search.enumerate import Enumerator
    from sycam.search.synthesize import _search_request, search_selections
    from sycam.workbench import Workbench

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write the enumerated program texts here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    bundle = load_model("builtin", None, device=torch.device("cpu"))
    data = open_dataset("builtin", split="train", size=None, limit=64)
    resolver = Workbench(bundle, data, CaptureRequest(layers=())).resolver
    selections = search_selections(resolver)
    train = Workbench(bundle, data, _search_request(resolver, A.ScoreSpec(), selections), batch_size=64,
                      progress=False).load()
    probe = train.batches[0].caps.take(slice(0, 16))

    seconds: list[float] = []
    cpu: list[float] = []
    texts: list[str] = []
    for _ in range(args.repeats):
        _canon_cached.cache_clear()  # each run pays for its canonical forms, as a search does
        sympy.core.cache.clear_cache()
        enum = Enumerator(probe, train.resolver, max_size=args.max_size, selections=selections)
        t0, c0 = time.perf_counter(), time.process_time()
        derivs = enum.run()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        run_texts = [pretty(d.program()) for d in derivs]
        if texts and run_texts != texts:
            sys.exit("the enumerator yielded different programs in two runs on the same probe")
        texts = run_texts
    print(f"enumerator: {len(texts)} programs; {enum.stats.as_dict()}")
    print(f"seconds: median {statistics.median(seconds):.2f} (min {min(seconds):.2f}, max {max(seconds):.2f}) "
          f"over {len(seconds)} runs: {', '.join(f'{s:.2f}' for s in seconds)}")
    print(f"cpu seconds: median {statistics.median(cpu):.2f} (min {min(cpu):.2f}, max {max(cpu):.2f}): "
          f"{', '.join(f'{s:.2f}' for s in cpu)}")
    if args.out is not None:
        args.out.write_text("\n".join(texts) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
