"""``sycam synthesize --metric M`` and ``sycam tradeoff --metrics M1,M2``."""
from __future__ import annotations

import argparse

from sycam.data import FORMS_HELP
from sycam.errors import SycamError


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(name: str, parser: argparse.ArgumentParser) -> None:
    from sycam.search.synthesize import NO_WORSE_SUITE

    if name == "synthesize":
        parser.add_argument("--metric", required=True, help="metric to maximise (its direction is the metric's own), e.g. iou")
    else:
        parser.add_argument("--metrics", required=True, help="comma-separated metrics for a multi-objective search, e.g. iou,deletion")
    parser.add_argument("--model", default="builtin", help="builtin (default), a torchvision name, or package.module:factory")
    parser.add_argument("--weights", default=None, help="local weights file (loaded with weights_only=True) or a torchvision enum name")
    parser.add_argument("--data", default="builtin", help=FORMS_HELP)
    parser.add_argument("--budget", type=float, default=90.0, help="wall-time seconds for the whole run: loading, captures, "
                        "search, final scoring and outputs (default 90); the search gets what the rest leaves")
    parser.add_argument("--candidates", type=int, default=None, help="stop after this many candidates instead of after --budget seconds "
                        "(no clock involved: the run is reproducible)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default sycam-out/<study>)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the output folder); "
                                                        "e.g. postgresql://user@host/db to share a study between machines")
    parser.add_argument("--study", default=None, help="study name; workers with the same name and storage share one search")
    parser.add_argument("--train-limit", type=int, default=256, help="images of the train split searched on")
    parser.add_argument("--val-limit", type=int, default=256, help="images of the validation split selected on")
    parser.add_argument("--test-limit", type=int, default=512, help="images of the test split reported on")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--space", default="default", metavar="PRESET|FILE",
                        help="the grammar subset searched: small, default (the default), full (every operator, terminal "
                             "and layer selection but S, D, R and R1), or a .toml/.json space file (see sycam.search.presets)")
    parser.add_argument("--expensive", action="store_true", help="add the expensive terminals S (Score-CAM), D "
                        "(Ablation-CAM), R and R1 (Recipro-CAM) to the space: a forward pass per channel, or per position, "
                        "per image (the cost is measured and printed)")
    parser.add_argument("--max-size", type=int, default=None, help="largest Map expression the enumerator builds (AST "
                        "nodes); default: the space's (8 for default and full), one more per doubling of --budget beyond "
                        "300 s (at most 4 more); with --candidates, the space's")
    parser.add_argument("--no-enumerate", action="store_true", help="skip the enumerator (Optuna only)")
    parser.add_argument("--no-racing", action="store_true", help="score every candidate exactly (all train images, full "
                        "resolution) instead of racing them on image subsets at low resolution first")
    parser.add_argument("--references", default=None, help="comma-separated reference programs reported beside the result")
    parser.add_argument("--targets", default="auto", choices=["auto", "label", "pred", "imagenet"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--sanity", default="require", choices=["require", "flag", "off"],
                        help="sanity checks (model randomisation, class sensitivity) on validation: require = a program that "
                             "fails one never enters the hall of fame (default); flag = it is marked; off = not checked")
    parser.add_argument("--sanity-images", type=int, default=32, help="images of each split the sanity checks run on (default 32)")
    parser.add_argument("--pool", type=int, default=40, help="distinct programs (best on train) that go on to validation (default 40)")
    parser.add_argument("--no-worse-than", default=None, metavar="REF",
                        help="a reference (e.g. gradcam): a program enters the hall of fame only if, on validation, it is at "
                             "least as good as REF on every metric of --suite")
    parser.add_argument("--suite", default=",".join(NO_WORSE_SUITE),
                        help=f"metrics --no-worse-than compares on (default {','.join(NO_WORSE_SUITE)})")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="re-draw the train/val/test partition of a real dataset with this seed (default: the dataset's own)")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="cross-validate the selection: K folds of the validation images say how much of the best "
                             "program's validation score is selection (default 0: off)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="N processes on this machine share the search (each with 1/N of the torch threads); the hall of "
                             "fame is chosen once, when all have finished (default 1)")
    parser.add_argument("--worker", default=None, metavar="I/N",
                        help="do share I (0..N-1) of N of the search, for N processes on several machines sharing one "
                             "--storage (e.g. PostgreSQL) and --study; each reports the study as it stands when it ends")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(name: str, args: argparse.Namespace) -> int:
    from sycam.search.budget import format_phases
    from sycam.search.synthesize import REFERENCES, SynthConfig, format_front, format_hall
    from sycam.search.workers import synthesize

    metrics = [args.metric] if name == "synthesize" else _split(args.metrics)
    if name == "tradeoff" and len(metrics) < 2:
        raise SycamError("tradeoff needs at least two metrics, e.g. --metrics iou,deletion")
    if args.sanity_images < 1 or args.pool < 1:
        raise SycamError("--sanity-images and --pool must be positive")
    if args.no_worse_than:
        from sycam.programs import program_path

        program_path(args.no_worse_than)  # an unknown reference fails now, not after the search
    if args.budget <= 0:
        raise SycamError(f"--budget must be positive, got {args.budget}")
    worker = _worker(args.worker) if args.worker else None
    from sycam.search.presets import load_space, max_size_for

    space = load_space(args.space, args.expensive)
    if args.max_size is not None and args.max_size < 1:
        raise SycamError(f"--max-size must be positive, got {args.max_size}")
    max_size = max_size_for(space, args.budget, args.candidates, args.max_size)
    cfg = SynthConfig(
        metrics=metrics, model=args.model, weights=args.weights, data=args.data, budget=args.budget,
        candidates=args.candidates, seed=args.seed, out=args.out, storage=args.storage, study=args.study,
        train_limit=args.train_limit, val_limit=args.val_limit, test_limit=args.test_limit, batch_size=args.batch_size,
        max_size=max_size, max_depth=space.max_depth, space=space, references=_split(args.references) if args.references else REFERENCES,
        targets=args.targets, device=args.device, progress=not args.quiet, enumerate=not args.no_enumerate,
        sanity=args.sanity, sanity_images=args.sanity_images, pool=args.pool, no_worse_than=args.no_worse_than,
        suite=_split(args.suite), split_seed=args.split_seed, folds=args.folds, workers=args.workers, worker=worker,
        racing=not args.no_racing,
    )
    result = synthesize(cfg)
    if name == "synthesize":
        print(format_hall(result))
    else:
        print(format_front(result, metrics))
    print(captures_line(result.get("stats", {}).get("captures")))
    largest = result.get("stats", {}).get("enumeration", {}).get("largest")
    if space.name != "default" or args.max_size is None and max_size != space.max_size or (largest or 0) > max_size:
        beyond = f" (Maps up to size {largest}: the map bucket grows with the budget)" if (largest or 0) > max_size else ""
        print(f"{space.describe()}; enumerated up to size {max_size}{beyond}")
    if space.expensive:
        from sycam.search.expensive import cost_line

        costs = result.get("stats", {}).get("expensive_seconds_per_image") or {}
        print(cost_line(costs))
    if len(space.scores) > 1:  # each other score sampled: one more train capture
        from sycam.search.scores import cost_line as scores_line

        line = scores_line(result.get("stats", {}).get("scores") or {})
        if line:
            print(line)
    print(format_phases(result["stats"]["phases"]))
    return 0


def _worker(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.strip().isdigit() and n.strip().isdigit()):
        raise SycamError(f"--worker takes I/N, e.g. 0/3 for the first of three workers; got {text!r}")
    return int(i), int(n)


def captures_line(c: dict | None) -> str:
    """One line on what the run's captures cost and how many batches the cache served."""
    from sycam.cache import default_cache

    if not c:
        return ""
    cache = default_cache()
    where = f"capture cache {cache.root}" if cache is not None else "capture cache off (SYCAM_CACHE=off)"
    return (f"captures: {c['seconds']:.1f} s for {c['batches']} batches; {c['hits']} from the cache, {c['partial']} completed, "
            f"{c['batches'] - c['hits'] - c['partial']} computed ({where})")
