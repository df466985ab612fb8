"""``sycam evaluate``: compare explainers side by side on one dataset with several metrics.

Example::

    sycam evaluate --methods gradcam,gradcampp,layercam,winsorcam,my.cam,random \\
        --metrics iou,energy_pg,pointing_game,deletion,insertion --model builtin --data builtin \\
        --params winsorcam:p=50 --out sycam-out/eval

Prints the method × metric table (mean [95% bootstrap CI], valid images), writes
``results.{csv,json,md}``, ``per_image.csv``, ``table.png`` and ``overlays.png`` in ``--out``
and resumes an interrupted run of the same command from ``--out/partial``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sycam.data import FORMS_HELP, path_form
from sycam.errors import SycamError

DEFAULT_METHODS = "gradcam,gradcampp,layercam,winsorcam,random"
DEFAULT_METRICS = "iou,energy_pg,pointing_game,deletion,insertion"


def register(name: str, parser: argparse.ArgumentParser) -> None:
    """Add ``sycam evaluate``'s options to ``parser``."""
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="comma-separated: reference program names, .cam files, and the baselines random "
                             "(uniform noise) and center (centred Gaussian); default: " + DEFAULT_METHODS)
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help="comma-separated metric names (iou, iou@0.5, "
                        "energy_pg, pointing_game, com_dist, deletion, insertion, avg_drop, avg_increase, "
                        "finer_drop, road, road_morf, road_lerf, robustness, consistency, responsiveness, sparsity, and the sanity checks "
                        "randomisation, randomisation_top, class_sensitivity, class_sensitivity_top2); default: "
                        + DEFAULT_METRICS)
    parser.add_argument("--model", default="builtin",
                        help="builtin (default), a torchvision model name, or an import path package.module:factory")
    parser.add_argument("--weights", default=None, help="local state-dict file (or torchvision weights name in "
                        "torch hub's cache)")
    parser.add_argument("--data", default="builtin", help=FORMS_HELP)
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                        help="which split of the dataset (default: test)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of the split")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in pixels (default: the model's input size)")
    parser.add_argument("--targets", default="auto", choices=["auto", "label", "pred", "imagenet"],
                        help="which class each image is explained for (default: auto)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--params", action="append", default=[], metavar="METHOD:NAME=VALUE[,NAME=VALUE]",
                        help="?param values for a method, e.g. winsorcam:p=50 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline and of the bootstrap (default: 0)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (default: 1000)")
    parser.add_argument("--out", default=None, help="output folder (default: sycam-out/evaluate-<data>-<model>)")
    parser.add_argument("--fresh", action="store_true", help="discard saved partial results in --out first")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--on-error", default="raise", choices=["raise", "skip"],
                        help="bad images: stop at the first (default), or leave them out and list them")
    parser.add_argument("--no-figures", action="store_true", help="skip overlays.png and table.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _split_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise SycamError(f"--{what} is empty")
    return items


def _identity(args: argparse.Namespace) -> dict[str, Any]:
    """What, besides methods and metrics, decides the per-image values (for the resume fingerprint)."""
    from sycam.files import file_digest

    weights: Any = None
    if args.weights is not None:
        w = Path(args.weights).expanduser()
        # the file's bytes, not its name: retrained weights at the same path must not reuse results
        weights = {"path": str(w.resolve()), "sha256": file_digest(w)} if w.is_file() else args.weights
    model_key: Any = None
    if args.model == "builtin":
        try:
            from sycam.models.builtin import recipe_key

            model_key = recipe_key()
        except ImportError:
            model_key = None
    data = args.data
    found = path_form(data)
    if found is not None:
        data = f"{found[0]}:{Path(found[1]).expanduser().resolve()}"
    return {"model": args.model, "model_key": model_key, "weights": weights, "data": data, "split": args.split,
            "limit": args.limit, "size": args.size, "targets": args.targets, "on_error": args.on_error}


def run(name: str, args: argparse.Namespace) -> int:
    """Run ``sycam evaluate``; user errors raise :class:`SycamError`."""
    from sycam.evaluation import (
        default_out_dir,
        evaluate,
        format_table,
        make_fingerprint,
        parse_params,
        prepare_out,
        resolve_methods,
        resolve_metrics,
    )
    from sycam.files import check_writable

    if args.limit is not None and args.limit < 1:
        raise SycamError(f"--limit must be a positive integer, got {args.limit}")
    if args.batch_size < 1:
        raise SycamError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.size is not None and args.size < 8:
        raise SycamError(f"--size must be at least 8 pixels, got {args.size}")
    if args.n_boot < 1:
        raise SycamError(f"--n-boot must be a positive integer, got {args.n_boot}")
    out = Path(args.out).expanduser() if args.out else default_out_dir(args.data, args.model)
    check_writable(out)  # before any work
    params = parse_params(args.params)
    methods = resolve_methods(_split_list(args.methods, "methods"), params)
    metrics = resolve_metrics(_split_list(args.metrics, "metrics"))

    # a config mismatch (or --fresh) is dealt with before the model and data are loaded
    identity = _identity(args)
    prepare_out(out, make_fingerprint(methods, metrics, identity, args.seed), fresh=args.fresh)

    from sycam.data import DataError, open_dataset
    from sycam.models import load_model

    try:
        bundle = load_model(args.model, weights=args.weights, device=args.device)
    except (ValueError, FileNotFoundError, ImportError, TypeError) as err:
        raise SycamError(f"cannot load model {args.model!r}: {err}") from None
    size = args.size
    if size is None and bundle.input_size[0] == bundle.input_size[1]:
        size = int(bundle.input_size[0])
    try:
        dataset = open_dataset(args.data, split=args.split, size=size, limit=args.limit, on_error=args.on_error)
    except (DataError, ValueError, FileNotFoundError) as err:
        raise SycamError(f"cannot open dataset {args.data!r}: {err}") from None
    if len(dataset) == 0:
        raise SycamError(f"dataset {args.data!r} (split {args.split}) has no images")

    result = evaluate(
        bundle, dataset, methods, metrics, out,
        batch_size=args.batch_size, targets=args.targets, seed=args.seed, n_boot=args.n_boot, fresh=False,
        progress=not args.quiet, figures=not args.no_figures, identity=identity,
        device=args.device,
    )
    print(f"sycam evaluate: {args.model} on {args.data} (split {args.split}), {result.n_images} images")
    print(format_table(result))
    print(f"written: {out}/results.csv, results.json, results.md, per_image.csv"
          + ("" if args.no_figures else ", table.png, overlays.png"))
    return 0
