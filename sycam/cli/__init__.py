"""The ``sycam`` command line. Each sub-command lives in its own module with ``register``/``run``."""
from __future__ import annotations

import argparse
import importlib
import sys

from sycam.errors import SycamError

# sub-command -> module under sycam.cli (imported lazily so `sycam check` needs no torch)
COMMANDS = {
    "check": "check",
    "programs": "check",
    "layers": "explain",
    "explain": "explain",
    "evaluate": "evaluate",
    "synthesize": "synthesize",
    "tradeoff": "synthesize",
    "cache": "cache",
}

HELP = {
    "check": "parse and type-check a program; print its type and canonical form",
    "programs": "list the reference programs",
    "layers": "list a model's layers (conv index, name, type, output shape)",
    "explain": "write heatmap overlays for images with a program",
    "evaluate": "score explainers with metrics on a dataset",
    "synthesize": "search for the program that maximises a metric",
    "tradeoff": "multi-objective search: the Pareto front between metrics",
    "cache": "the on-disk capture cache: info (where, how big, what) or clear",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sycam", description="Synthesize class-activation-map explainers.")
    parser.add_argument("--version", action="version", version=f"sycam {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(f"sycam.cli.{module}").register(name, p)
    return parser


def _version() -> str:
    from sycam import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(f"sycam.cli.{COMMANDS[args.command]}")
    try:
        return int(module.run(args.command, args) or 0)
    except SycamError as err:
        print(f"sycam {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sycam {args.command}: interrupted; finished work is saved (run the same command again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
