"""The ``sycam`` command line. Each sub-command lives in its own module with ``register``/``run``."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading

from sycam.errors import SycamError
from sycam._malloc import tune_allocator

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
    tune_allocator()  # a command's full-resolution passes would page-fault every temporary again
    try:
        with insistent_interrupt():
            return int(module.run(args.command, args) or 0)
    except SycamError as err:
        print(f"sycam {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sycam {args.command}: interrupted; finished work is saved (run the same command again to resume)", file=sys.stderr)
        return 130


#: seconds after a Ctrl-C at which it is raised again, should the first have been swallowed
INSIST_AFTER = 2.0


@contextlib.contextmanager
def insistent_interrupt():
    """Ctrl-C that always stops the command. Python swallows an exception raised inside a
    garbage-collection callback ("Exception ignored in ..."), and a SIGINT that lands there (seen
    in SQLAlchemy's weakref callbacks during a search) would leave the run going. So the first
    SIGINT raises KeyboardInterrupt as usual and arms a timer: if the command is still inside this
    block :data:`INSIST_AFTER` seconds later, KeyboardInterrupt is raised again (and again); one that
    Python reports as swallowed is raised again at once, without the report.
    POSIX main thread only; elsewhere Python's default handling stays."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):  # SIGINT, then the timer's SIGALRM while still here
        signal.setitimer(signal.ITIMER_REAL, INSIST_AFTER)
        raise KeyboardInterrupt

    default_hook = sys.unraisablehook

    def swallowed(unraisable) -> None:  # the interrupt was lost in a callback: raise it again at once, quietly
        if unraisable.exc_type is KeyboardInterrupt:
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        default_hook(unraisable)

    previous = signal.signal(signal.SIGINT, interrupt), signal.signal(signal.SIGALRM, interrupt)
    sys.unraisablehook = swallowed
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
        sys.unraisablehook = default_hook


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
