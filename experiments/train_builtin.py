"""Train the built-in CNN from scratch and report test accuracy and time.

Usage: python experiments/train_builtin.py [--threads N] [--epochs E] [--train-n N] [--lr LR]
                                           [--save] [--json out.json]

Does not touch the cache unless ``--save`` is given (then the weights go where
``load_builtin_model`` looks for them, for the default recipe only).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace

import torch

from sycam.models.builtin import DEFAULT_RECIPE, builtin_cache_path, evaluate_builtin, recipe_key, train_builtin


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train once, print a one-line summary (and optional JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable CPUs)")
    ap.add_argument("--epochs", type=int, default=DEFAULT_RECIPE.epochs)
    ap.add_argument("--train-n", type=int, default=DEFAULT_RECIPE.train_n)
    ap.add_argument("--lr", type=float, default=DEFAULT_RECIPE.lr)
    ap.add_argument("--seed", type=int, default=DEFAULT_RECIPE.seed)
    ap.add_argument("--eval-n", type=int, default=0, help="also report accuracy on this many val images")
    ap.add_argument("--save", action="store_true", help="write the weights to the cache (default recipe only)")
    ap.add_argument("--json", default=None, help="write recipe and metrics to this JSON file")
    a = ap.parse_args(argv)

    recipe = replace(DEFAULT_RECIPE, epochs=a.epochs, train_n=a.train_n, lr=a.lr, seed=a.seed)
    model, m = train_builtin(recipe, progress=True, threads=a.threads)
    if a.eval_n:
        m["val_accuracy"] = evaluate_builtin(model, "val", a.eval_n, recipe.size, recipe.data_seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"recipe {recipe_key(recipe)}: test accuracy {m['test_accuracy']:.2%} on {recipe.test_n} images"
        + (f", val {m['val_accuracy']:.2%} on {a.eval_n}" if a.eval_n else "")
        + f"; {m['seconds']:.1f} s total (data {m['data_seconds']:.1f} s, training {m['train_seconds']:.1f} s)"
        f" on {int(m['threads'])} threads (CPU time {m['cpu_seconds']:.1f} s); {n_params} parameters; final loss {m['final_loss']:.3f}"
    )
    if a.save:
        if recipe != DEFAULT_RECIPE:
            print("--save ignored: only the default recipe is cached by this script", file=sys.stderr)
        else:
            from sycam.models.builtin import _atomic_save  # the same writer load_builtin_model uses

            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            path = builtin_cache_path(recipe)
            _atomic_save({"key": recipe_key(recipe), "recipe": asdict(recipe), "metrics": m, "state_dict": state}, path)
            print(f"saved to {path}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"recipe": asdict(recipe), "metrics": m, "torch": torch.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
