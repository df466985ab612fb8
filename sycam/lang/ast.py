"""Typed AST of the CAM language: frozen dataclasses, hashable, compared by structure.

Source positions live in a ``pos`` field excluded from equality and hashing, so that
``parse(pretty(p)) == p`` holds and structurally equal sub-programs share compiled work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union


@dataclass(frozen=True)
class Pos:
    """A source location (1-based line and column) and the span's end offset."""

    line: int
    column: int
    start: int = 0
    end: int = 0


def _pos() -> Pos | None:
    return field(default=None, compare=False, hash=False, repr=False)  # type: ignore[return-value]


@dataclass(frozen=True)
class ScoreSpec:
    """Which scalar a program explains.

    ``logit``: the target's raw logit (default). ``prob``: its softmax probability.
    ``finer``: Finer-CAM's comparison with the ``k`` most similar classes at strength ``alpha``:
    ``Σ_j p_j (y_t − α·y_j) / Σ_j p_j`` over the k classes whose logits are closest to ``y_t``.
    """

    kind: str = "logit"
    k: int = 3
    alpha: float = 1.0


# ---------------------------------------------------------------- layer references and selections


@dataclass(frozen=True)
class LayerRef:
    """``@-1`` (index among the model's conv layers) or ``@layer4`` (module name)."""

    index: int | None = None
    name: str | None = None

    def key(self) -> str:
        return f"#{self.index}" if self.index is not None else str(self.name)


@dataclass(frozen=True)
class SelNamed:
    """``convs`` (every Conv2d), ``last`` (the default target layer), ``stages`` (stage ends)."""

    name: str


@dataclass(frozen=True)
class SelSlice:
    """``-4:`` or ``0:10:2``: a Python slice over the model's conv layers."""

    start: int | None = None
    stop: int | None = None
    step: int | None = None


@dataclass(frozen=True)
class SelList:
    """``[layer3, layer4, -1]``: explicit layers."""

    layers: tuple[LayerRef, ...]


Selection = Union[SelNamed, SelSlice, SelList]


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num:
    value: float
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Param:
    """A tunable constant ``?name:[lo,hi]=default``; range and default are optional."""

    name: str
    lo: float | None = None
    hi: float | None = None
    default: float | None = None
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Terminal:
    """``A``, ``G``, ``S``, ``D``, ``R``, ``R1`` (per layer), ``Y`` (the explained score) or ``X`` (the image)."""

    kind: str
    layer: LayerRef | None = None
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Var:
    """A reference to a ``let`` binding."""

    name: str
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class BinOp:
    """``+ - * /`` (division guarded)."""

    op: str
    left: "Expr"
    right: "Expr"
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Pow:
    """``base ^ exponent`` with a constant (or tunable) exponent."""

    base: "Expr"
    exponent: "Num | Param"
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Call:
    """A named operator: ``relu(x)``, ``sum_c(x)``, ``winsorize(x, p)``, ``max(a, b)``, ..."""

    fn: str
    args: tuple["Expr", ...]
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Each:
    """``each(SEL, body)``: evaluate ``body`` once per selected layer (bare A/G = that layer)."""

    selection: Selection
    body: "Expr"
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Fuse:
    """``fuse(maps, [weights,] mode[, grid])``: combine per-layer maps on one grid.

    Maps are resized (bilinear) to the finest layer grid (``finest``, default) or to the input
    size (``input``), optionally multiplied by per-layer weights, and combined by ``mode``.
    """

    maps: "Expr"
    weights: "Expr | None"
    mode: str
    grid: str = "finest"
    pos: Pos | None = _pos()


Expr = Union[Num, Param, Terminal, Var, BinOp, Pow, Call, Each, Fuse]


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    pos: Pos | None = _pos()


@dataclass(frozen=True)
class Program:
    """A whole program: bindings, an optional score directive, and the final expression."""

    body: Expr
    lets: tuple[Let, ...] = ()
    score: ScoreSpec | None = None
    source: str | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def score_spec(self) -> ScoreSpec:
        return self.score or ScoreSpec()


# ---------------------------------------------------------------- traversal helpers


def children(node: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of ``node``."""
    if isinstance(node, BinOp):
        return (node.left, node.right)
    if isinstance(node, Pow):
        return (node.base, node.exponent)
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Each):
        return (node.body,)
    if isinstance(node, Fuse):
        return (node.maps,) if node.weights is None else (node.maps, node.weights)
    return ()


def walk(node: Expr) -> Iterator[Expr]:
    """Pre-order traversal of an expression."""
    yield node
    for child in children(node):
        yield from walk(child)


def inline_lets(program: Program) -> Expr:
    """The program's body with every ``let`` substituted (lets are macros: a bare ``A`` in a
    binding means the layer in scope where the binding is used, e.g. inside ``each``)."""
    env: dict[str, Expr] = {}

    def sub(node: Expr) -> Expr:
        if isinstance(node, Var):
            return env[node.name] if node.name in env else node
        if isinstance(node, BinOp):
            return BinOp(node.op, sub(node.left), sub(node.right), node.pos)
        if isinstance(node, Pow):
            return Pow(sub(node.base), node.exponent, node.pos)
        if isinstance(node, Call):
            return Call(node.fn, tuple(sub(a) for a in node.args), node.pos)
        if isinstance(node, Each):
            return Each(node.selection, sub(node.body), node.pos)
        if isinstance(node, Fuse):
            weights = None if node.weights is None else sub(node.weights)
            return Fuse(sub(node.maps), weights, node.mode, node.grid, node.pos)
        return node

    for let in program.lets:
        env[let.name] = sub(let.value)
    return sub(program.body)


def size(node: Expr) -> int:
    """Program size: the number of AST nodes (the complexity measure of the hall of fame)."""
    return sum(1 for _ in walk(node))


def params(node: Expr) -> dict[str, Param]:
    """Tunable parameters by name (the first occurrence that gives a range/default wins)."""
    found: dict[str, Param] = {}
    for n in walk(node):
        if isinstance(n, Param):
            prev = found.get(n.name)
            if prev is None or (prev.lo is None and n.lo is not None) or (prev.default is None and n.default is not None):
                found[n.name] = n
    return found
