"""What is compared: methods (programs or baselines) with their ``?param`` overrides, and metrics.

Turns what the user typed (``--methods``, ``--params``, ``--metrics``) into :class:`Method` s and
:class:`~sycam.metrics.Metric` s, with a :class:`SycamError` naming the item for every bad one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from sycam.errors import SycamError
from sycam.evaluation.baselines import BASELINES
from sycam.lang import ast as A
from sycam.metrics import Metric, get_metric, list_metrics

__all__ = ["Method", "available_methods", "parse_params", "resolve_methods", "resolve_metrics"]


@dataclass
class Method:
    """One explainer under evaluation: a program (``kind="program"``) or a baseline."""

    name: str  # the label in tables (reference name, file stem, or baseline name)
    kind: str  # "program" or "baseline"
    source: str  # what the user typed (name or path)
    program: A.Program | None = None
    params: dict[str, float] = field(default_factory=dict)  # user overrides of ?params

    @property
    def score(self) -> A.ScoreSpec | None:
        """The score the program explains (None for baselines)."""
        return self.program.score_spec if self.program is not None else None


def available_methods() -> list[str]:
    """Reference program names plus the baselines."""
    from sycam.programs import list_programs

    return list_programs() + list(BASELINES)


def resolve_methods(specs: Sequence[str], params: Mapping[str, Mapping[str, float]] | None = None) -> list[Method]:
    """Turn method specs into :class:`Method` s.

    A spec is a reference program name or alias (``gradcam``, ``grad-cam++``), a path to a
    ``.cam`` file (labelled by its stem, or by the path where the stem is already taken), or a
    baseline (``random``, ``center``); program text is not a method. Programs are found and read
    by :func:`sycam.programs.resolve_program`. ``params`` maps a method label to ``?param``
    overrides. Unknown names, missing files, duplicates, and params for unknown methods or
    baselines raise :class:`SycamError`.
    """
    from sycam.programs import list_programs, locate, resolve_program

    if isinstance(specs, str):
        raise TypeError("resolve_methods: pass a list of method names, not one string (split on commas first)")
    specs = [s.strip() for s in specs if s and s.strip()]
    if not specs:
        raise SycamError(f"no methods given; available: {', '.join(available_methods())} or a .cam file")
    refs = list_programs()
    out: list[Method] = []
    for spec in specs:
        key = spec.lower()
        where = None if key in BASELINES else locate(spec)
        if key in BASELINES:
            m = Method(name=key, kind="baseline", source=key)
        elif where is not None and where[0] == "reference":
            name = str(where[1])
            m = Method(name=name, kind="program", source=name, program=resolve_program(name))
        elif where is not None:
            path = Path(where[1])
            if not path.is_file():
                raise SycamError(f"method {spec!r}: program file not found: {path}")
            label = path.stem
            if label in refs or label in BASELINES or any(o.name == label for o in out):
                label = spec  # keep the label unique: the stem is already taken
            m = Method(name=label, kind="program", source=str(path.resolve()), program=resolve_program(path))
        else:
            raise SycamError(
                f"unknown method {spec!r}; available: {', '.join(available_methods())}, or a path to a .cam file"
            )
        if any(o.name == m.name for o in out):
            raise SycamError(f"method {m.name!r} is listed twice in --methods")
        out.append(m)
    for label, values in (params or {}).items():
        found = [m for m in out if m.name == label or m.source == label]
        if not found:
            raise SycamError(f"--params for {label!r}, which is not among the methods ({', '.join(m.name for m in out)})")
        if found[0].kind == "baseline":
            raise SycamError(f"--params for {label!r}: baselines have no parameters")
        found[0].params.update({k: float(v) for k, v in values.items()})
    return out


def parse_params(items: Sequence[str] | None) -> dict[str, dict[str, float]]:
    """Parse ``METHOD:NAME=VALUE[,NAME=VALUE...]`` items (``winsorcam:p=50``) into a dict.

    A leading ``?`` on the name is accepted (``winsorcam:?p=50``). Malformed items raise
    :class:`SycamError` naming the item.
    """
    out: dict[str, dict[str, float]] = {}
    for item in items or []:
        method, sep, rest = item.rpartition(":")
        if not sep or not method.strip() or not rest.strip():
            raise SycamError(f"--params {item!r}: expected METHOD:NAME=VALUE[,NAME=VALUE], e.g. winsorcam:p=50")
        for pair in rest.split(","):
            name, eq, value = pair.partition("=")
            name = name.strip().lstrip("?")
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise SycamError(f"--params {item!r}: {pair!r} is not NAME=VALUE")
            try:
                v = float(value)
            except ValueError:
                raise SycamError(f"--params {item!r}: {value.strip()!r} is not a number") from None
            if not math.isfinite(v):
                raise SycamError(f"--params {item!r}: the value of {name} must be finite")
            out.setdefault(method.strip(), {})[name] = v
    return out


def resolve_metrics(specs: Sequence[str | Metric]) -> list[Metric]:
    """Metric objects from CLI names (``iou``, ``iou@0.5``, ``deletion``...) or Metric instances."""
    if isinstance(specs, str):
        raise TypeError("resolve_metrics: pass a list of metric names, not one string (split on commas first)")
    out: list[Metric] = []
    for spec in specs:
        if isinstance(spec, Metric):
            metric = spec
        else:
            name = str(spec).strip()
            if not name:
                continue
            try:
                metric = get_metric(name)
            except KeyError:
                raise SycamError(f"unknown metric {name!r}; available: {', '.join(list_metrics())}") from None
        if any(m.name == metric.name for m in out):
            raise SycamError(f"metric {metric.name!r} is listed twice in --metrics")
        out.append(metric)
    if not out:
        raise SycamError(f"no metrics given; available: {', '.join(list_metrics())}")
    return out
