"""Shape types and the type checker.

Types (per image; the batch axis is implicit):

- ``Tensor``  C×H×W — activations ``A``, gradients ``G``
- ``Channels`` C — per-channel values: ``mean_hw(G)``, Score-CAM's ``S``, Ablation-CAM's ``D``
- ``Map``     H×W — a saliency map; Recipro-CAM's ``R`` (and ``R1``, its one-hot kernel)
- ``Scalar``  one number — ``Y``, ``percentile(x, p)``, constants

``X`` (the input image's grey level) is a Map on the input grid, where ``fuse(..., input)`` puts maps.
- ``Layers<T>`` one ``T`` per layer of a selection — what ``each(SEL, body)`` yields

Tensor, Channels and Map carry the layer they come from: values of different layers have
different C, H, W, so combining them is a type error (``fuse`` is how layers meet).
Broadcasting: Scalar with anything; Channels with Tensor over H,W; Map with Tensor over C;
Channels with Map gives a Tensor; ``Layers<X>`` with ``Layers<Y>`` of the same selection
elementwise, and with a Scalar. Unary operators lift over ``Layers``.

Each operator's rule is its row's :class:`~sycam.lang.ops.TypeRule` in the table of operators;
this module applies the rules (and the bounds of constant arguments) and types everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

from sycam.errors import ProgramTypeError
from sycam.lang import ast as A
from sycam.lang.ops import Applied, OpSpec, operator_of
from sycam.lang.pretty import _selection

_AXES = {"Scalar": frozenset(), "Channels": frozenset("C"), "Map": frozenset("HW"), "Tensor": frozenset("CHW")}
_BY_AXES = {v: k for k, v in _AXES.items()}


@dataclass(frozen=True)
class Type:
    kind: str  # Tensor | Channels | Map | Scalar
    layer: str | None = None  # where a Tensor/Channels/Map comes from

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class LayersType:
    elem: Type
    selection: str

    @property
    def kind(self) -> str:
        return f"Layers<{self.elem.kind}>"

    def __str__(self) -> str:
        return self.kind


AnyType = Type | LayersType
SCALAR = Type("Scalar")
MAX_CONSTANT = 3e38  # float32 holds up to 3.4e38


def _where(layer: str | None) -> str:
    if layer and layer.startswith("fused:"):
        return "the input grid (fuse ..., input)" if layer == "fused:input" else f"the finest grid of '{layer[6:]}'"
    return {"@default": "the default layer", "@each": "the current layer of each(...)"}.get(
        layer or "", f"layer {layer[1:].lstrip('#')}" if layer and layer.startswith("@") else str(layer))


@dataclass(frozen=True)
class CheckResult:
    """What the checker learned about a program."""

    type: AnyType
    params: dict[str, A.Param]
    expr: A.Expr  # the body with lets inlined (what the compiler lowers)


class _Checker:
    def __init__(self, source: str | None) -> None:
        self.source = source

    def fail(self, node, message: str) -> ProgramTypeError:
        pos = getattr(node, "pos", None)
        return ProgramTypeError(message, self.source, pos.line if pos else None, pos.column if pos else None)

    # -------------------------------------------------------------- broadcasting
    def broadcast(self, node, a: AnyType, b: AnyType, what: str) -> AnyType:
        if isinstance(a, LayersType) or isinstance(b, LayersType):
            if isinstance(a, LayersType) and isinstance(b, LayersType):
                if a.selection != b.selection:
                    raise self.fail(node, f"{what} combines layer selections '{a.selection}' and '{b.selection}'; "
                                          "per-layer values must come from the same each(...) selection")
                return LayersType(self.broadcast(node, a.elem, b.elem, what), a.selection)  # type: ignore[arg-type]
            layers, other = (a, b) if isinstance(a, LayersType) else (b, a)
            if other != SCALAR:
                raise self.fail(node, f"{what} combines {layers} with {other}; a per-layer value combines only "
                                      "with another of the same selection or with a Scalar (use fuse(...) first)")
            return layers
        if a.kind == "Scalar":
            return b
        if b.kind == "Scalar":
            return a
        if a.layer != b.layer:
            raise self.fail(node, f"{what} combines a {a} of {_where(a.layer)} with a {b} of {_where(b.layer)}; "
                                  "values of different layers have different shapes (combine maps with fuse(...))")
        return Type(_BY_AXES[_AXES[a.kind] | _AXES[b.kind]], a.layer)

    # -------------------------------------------------------------- inference
    def infer(self, node: A.Expr, in_each: bool) -> AnyType:
        if isinstance(node, A.Num):
            if abs(node.value) > MAX_CONSTANT:
                raise self.fail(node, f"constant {node.value:g} is too large (at most {MAX_CONSTANT:g} in magnitude: maps are float32)")
            return SCALAR
        if isinstance(node, A.Param):
            return SCALAR
        if isinstance(node, A.Var):
            raise self.fail(node, f"unknown name '{node.name}' (bind it first with: let {node.name} = ...;)")
        if isinstance(node, A.Terminal):
            if node.kind == "Y":
                return SCALAR
            if node.kind == "X":  # the input image, on the input grid (where fuse(..., input) puts maps)
                return Type("Map", "fused:input")
            layer = "@" + node.layer.key() if node.layer is not None else ("@each" if in_each else "@default")
            return Type("Tensor" if node.kind in ("A", "G") else "Map" if node.kind in ("R", "R1") else "Channels", layer)
        if isinstance(node, (A.BinOp, A.Pow, A.Call)):
            return self.apply(node, in_each)
        if isinstance(node, A.Each):
            if in_each:
                raise self.fail(node, "each(...) cannot be nested inside each(...)")
            body = self.infer(node.body, True)
            if isinstance(body, LayersType):  # pragma: no cover - prevented by the nesting rule
                raise self.fail(node, "the body of each(...) is already per-layer")
            return LayersType(body, _selection(node.selection))
        if isinstance(node, A.Fuse):
            maps = self.infer(node.maps, in_each)
            if isinstance(maps, Type) and maps.kind == "Map" and node.grid == "input":  # one Map: moved to the input grid
                if node.weights is not None:
                    raise self.fail(node.weights, "fuse(...) of a single Map takes no weights (weights are one number per layer)")
                return Type("Map", "fused:input")
            if not (isinstance(maps, LayersType) and maps.elem.kind == "Map"):
                hint = " (a single Map only moves to the input grid: fuse(m, mean, input))" if maps.kind == "Map" else ""
                raise self.fail(node, f"fuse(...) needs Layers<Map> (from each(SEL, <a Map>)) as its first argument, got {maps}{hint}")
            if node.weights is not None:
                weights = self.infer(node.weights, in_each)
                if not (isinstance(weights, LayersType) and weights.elem.kind == "Scalar"):
                    raise self.fail(node.weights, f"fuse(...) weights must be Layers<Scalar> (one number per layer), got {weights}")
                if weights.selection != maps.selection:
                    raise self.fail(node.weights, f"fuse(...) weights are over '{weights.selection}' but the maps over '{maps.selection}'")
            # maps fused to the input size all share one grid; the finest layer grid depends on the selection
            return Type("Map", "fused:input" if node.grid == "input" else f"fused:{maps.selection}")
        raise self.fail(node, f"unknown node {type(node).__name__}")  # pragma: no cover

    def constant_in(self, node: A.Expr, lo: float, hi: float, what: str, at: A.Expr | None = None) -> None:
        """A constant argument (number, or ?param with its range) must lie in [lo, hi]; the error
        points at ``at`` (the call) when given."""
        where = at if at is not None else node
        if isinstance(node, A.Num) and not lo <= node.value <= hi:
            raise self.fail(where, f"{what} must lie in [{lo:g}, {hi:g}], got {node.value:g}")
        if isinstance(node, A.Param) and node.lo is not None and not (lo <= node.lo and node.hi <= hi):  # type: ignore[operator]
            raise self.fail(where, f"{what} must lie in [{lo:g}, {hi:g}]; ?{node.name}'s range is [{node.lo:g}, {node.hi:g}]")

    def apply(self, node: Applied, in_each: bool) -> AnyType:
        """The type of an operator node, by its row's :class:`~sycam.lang.ops.TypeRule`."""
        spec, args = operator_of(node)
        for r in spec.ranges:  # constant arguments first: their bounds do not depend on the types
            self.constant_in(args[r.index], r.lo, r.hi, r.what.format(fn=spec.name), at=None if r.at_arg else node)
        types = [self.infer(a, in_each) for a in args]
        rule = spec.typing
        if rule.paired is not None:
            other = types[1]
            if isinstance(other, LayersType) or other.kind != rule.paired:
                raise self.fail(node, f"the second argument of {spec.name}(...) must be a {rule.paired} (of any layer), got {other}")
        if rule.name == "select":  # select_max(k1, x1, k2, x2): Scalar keys, values that broadcast together
            for i in (0, 2):
                if types[i] != SCALAR:
                    raise self.fail(args[i], rule.error.format(fn=spec.name, x=types[i]))
            return self.broadcast(node, types[1], types[3], f"{spec.name}(...)")
        if rule.broadcast:
            return self.broadcast(node, types[0], types[1], f"'{spec.name}'" if spec.infix else f"{spec.name}(...)")
        x = types[0]
        if isinstance(x, LayersType):
            if rule.along_layers and x.elem.kind == "Scalar":  # one value along the layers, as Channels along C
                out = self.rule(node, spec, Type("Channels"))
                return x if out.kind == "Channels" else out
            return LayersType(self.rule(node, spec, x.elem), x.selection)
        return self.rule(node, spec, x)

    def rule(self, node: Applied, spec: OpSpec, x: Type) -> Type:
        """``spec``'s type rule applied to one (per-layer) value of type ``x``."""
        kinds = spec.typing.kinds
        if kinds is None:
            return x
        out = kinds.get(x.kind)
        if out is None:
            raise self.fail(node, spec.typing.error.format(fn=spec.name, x=x))
        return SCALAR if out == "Scalar" else Type(out, x.layer)


def check(program: A.Program) -> CheckResult:
    """Type-check a program. The final value must be a Map.

    Raises :class:`~sycam.errors.ProgramTypeError` with line, column and what was expected.
    """
    checker = _Checker(program.source)
    # every let is checked where it is defined (names must be bound before use) ...
    bound: set[str] = set()
    for let in program.lets:
        for n in A.walk(let.value):
            if isinstance(n, A.Var) and n.name not in bound:
                raise checker.fail(n, f"unknown name '{n.name}' (a let can use only names bound above it)")
        bound.add(let.name)
    for n in A.walk(program.body):
        if isinstance(n, A.Var) and n.name not in bound:
            raise checker.fail(n, f"unknown name '{n.name}' (bind it first with: let {n.name} = ...;)")
    # ... and typed where it is used: lets are macros, so inline and type the whole body
    expr = A.inline_lets(program)
    result = checker.infer(expr, in_each=False)
    if isinstance(result, LayersType):
        raise checker.fail(program.body, f"the program yields {result}; combine the layers into one Map with fuse(...)")
    if result.kind != "Map":
        hint = {"Tensor": " (reduce the channels, e.g. sum_c(...))", "Channels": " (weight a Tensor with it, e.g. sum_c(w * A))",
                "Scalar": ""}.get(result.kind, "")
        raise checker.fail(program.body, f"a program must yield a Map, got {result}{hint}")
    _check_params(checker, expr)
    return CheckResult(result, A.params(expr), expr)


def _check_params(checker: _Checker, expr: A.Expr) -> None:
    specs: dict[str, A.Param] = {}
    for n in A.walk(expr):
        if isinstance(n, A.Param) and n.lo is not None:
            prev = specs.setdefault(n.name, n)
            if (prev.lo, prev.hi) != (n.lo, n.hi):
                raise checker.fail(n, f"?{n.name} is declared with two ranges: [{prev.lo}, {prev.hi}] and [{n.lo}, {n.hi}]")
