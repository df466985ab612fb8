"""``sycam check PROGRAM`` and ``sycam programs``."""
from __future__ import annotations

import argparse

from sycam.lang import ast as A
from sycam.lang import check, pretty
from sycam.lang.canon import canonical_text
from sycam.lang.pretty import fmt_number


def register(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "check":
        parser.add_argument("program", help="program text, a .cam file, or a reference program name")
    else:
        parser.add_argument("--verbose", "-v", action="store_true", help="show each program's header and text")


def _params(program: A.Program) -> list[str]:
    rows = []
    for name, p in A.params(A.inline_lets(program)).items():
        rng = f" in [{fmt_number(p.lo)}, {fmt_number(p.hi)}]" if p.lo is not None else ""
        default = f" default {fmt_number(p.default)}" if p.default is not None else ""
        rows.append(f"?{name}{rng}{default}")
    return rows


def run(name: str, args: argparse.Namespace) -> int:
    if name == "programs":
        return _programs(args.verbose)
    from sycam.programs import resolve_program

    program = resolve_program(args.program)
    result = check(program)
    print(f"type:      {result.type}")
    print(f"size:      {A.size(result.expr)} nodes")
    print(f"score:     {program.score_spec.kind}" + (f" (k={program.score_spec.k}, alpha={fmt_number(program.score_spec.alpha)})"
                                                    if program.score_spec.kind == "finer" else ""))
    print(f"params:    {', '.join(_params(program)) or 'none'}")
    print(f"canonical: {canonical_text(program)}")
    print("program:")
    for line in pretty(program).splitlines():
        print("  " + line)
    return 0


def _programs(verbose: bool) -> int:
    from sycam.programs import describe, list_programs, load

    names = list_programs()
    width = max([12] + [len(n) for n in names])
    for n in names:
        header = describe(n).splitlines()
        title = header[0] if header else ""
        print(f"{n:<{width}} {title}")
        if verbose:
            for line in header[1:]:
                print(f"{'':<{width}}   {line}")
            program = load(n)
            source = program.source or ""
            # a program that uses others is shown as written: its inlined form repeats their bodies
            body = ([ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
                    if "use(" in source else pretty(program).splitlines())
            for line in body:
                print(f"{'':<{width}}   | {line}")
    return 0
