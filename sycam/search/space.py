"""The search space: a typed grammar subset shared by the enumerator and the Optuna sampler.

Each production builds a piece of AST from typed children. Types are those of the language at
the current layer: ``T`` Tensor, ``C`` Channels, ``M`` Map, ``S`` Scalar; ``P`` is a whole
program body. The operators' productions come from the table of operators
(:data:`sycam.lang.ops.TABLE`, each row's ``search`` forms); the terminals ``A``, ``G`` and the
whole-program templates are this module's. Multi-layer productions lift a Map (and a Scalar layer importance) over a layer
selection, as Winsor-CAM and layer averaging do. A program built from productions carries its
derivation, so it can be replayed as Optuna parameters (for seeding a study).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable, Sequence

from sycam.lang import ast as A
from sycam.lang.ops import TABLE, apply_node

T, C, M, S, P = "T", "C", "M", "S", "P"
SELECTIONS = ("convs", "stages")
WINSOR_P = A.Param("p", 0.0, 100.0, 90.0)


def _v(i: int) -> A.Var:
    return A.Var(f"${i}")


def _call(fn: str, *args: A.Expr) -> A.Call:
    return A.Call(fn, tuple(args))


def _layers(body: A.Expr, sel: str) -> A.Each:
    return A.Each(A.SelNamed(sel), body)


@dataclass(frozen=True)
class Production:
    name: str
    type: str
    children: tuple[str, ...]
    template: A.Expr  # with Var("$i") placeholders for the children
    needs_selection: bool = False

    def build(self, kids: Sequence[A.Expr], sel: str = "convs") -> A.Expr:
        return _substitute(self.template, list(kids), sel)

    @property
    def own_size(self) -> int:
        return A.size(self.template) - len(self.children)


def _substitute(node, kids: list[A.Expr], sel: str):
    if isinstance(node, A.Var) and node.name.startswith("$"):
        return kids[int(node.name[1:])]
    if isinstance(node, A.SelNamed) and node.name == "$sel":
        return A.SelNamed(sel)
    if is_dataclass(node) and not isinstance(node, type):
        changes = {}
        for f in fields(node):
            value = getattr(node, f.name)
            if isinstance(value, tuple):
                new = tuple(_substitute(v, kids, sel) for v in value)
            elif is_dataclass(value):
                new = _substitute(value, kids, sel)
            else:
                continue
            if new is not value:
                changes[f.name] = new
        if changes:
            return type(node)(**{f.name: changes.get(f.name, getattr(node, f.name)) for f in fields(node)})
    return node


_SEL = A.SelNamed("$sel")


def _each(body: A.Expr) -> A.Each:
    return A.Each(_SEL, body)


def _rank(p: Production) -> tuple[int, int]:
    """Where an operator's production stands among those of its type: unary before binary; a
    unary operator reaching the type from another (a reduction, ``mean_hw``) before one within it
    (``relu_C``); a binary one on operands of the type (``mul_TT``) before a broadcasting one
    (``mul_CT``). Ties keep the table's order. (The order is the enumerator's and the sampler's
    order of choices: Optuna studies record it.)"""
    same = all(k == p.type for k in p.children)
    return (len(p.children), int(same) if len(p.children) == 1 else int(not same))


def operator_productions() -> list[Production]:
    """The productions the operator table declares (:attr:`sycam.lang.ops.OpSpec.search`)."""
    out: list[Production] = []
    for spec in TABLE.values():
        for form in spec.search:
            if spec.const_args:
                raise ValueError(f"operator {spec.name} has constant arguments: the search cannot produce it")
            template = apply_node(spec, tuple(_v(i) for i in range(len(form.args))))
            out.append(Production(spec.production(form), form.result, form.args, template))
    return sorted(out, key=_rank)


_TERMINALS = [Production("A", T, (), A.Terminal("A")), Production("G", T, (), A.Terminal("G"))]
_PROGRAMS = [
    Production("single", P, (M,), _v(0)),
    Production("layers_mean", P, (M,), A.Fuse(_each(_call("norm", _v(0))), None, "mean"), True),
    Production("layers_max", P, (M,), A.Fuse(_each(_call("norm", _v(0))), None, "max"), True),
    Production("layers_winsor", P, (M, S), A.Fuse(
        _each(_call("norm", _v(0))),
        _call("rescale", _call("winsorize", _each(_call("relu", _v(1))), WINSOR_P), A.Num(0.1), A.Num(1.0)),
        "sum"), True),
]
#: terminals, the operators' productions (by type, in :func:`_rank` order), then whole programs
PRODUCTIONS: list[Production] = _TERMINALS + operator_productions() + _PROGRAMS

BY_NAME = {p.name: p for p in PRODUCTIONS}
BY_TYPE: dict[str, list[Production]] = {}
for _p in PRODUCTIONS:
    BY_TYPE.setdefault(_p.type, []).append(_p)

# the smallest expression of each type, used where the sampler reaches its depth limit
MINIMAL = {T: ("A",), C: ("mean_hw", ("G",)), M: ("sum_c", ("A",)), S: ("mean_c_S", ("mean_hw", ("G",)))}


@dataclass(frozen=True)
class Derivation:
    """A tree of production names (plus the layer selection of multi-layer productions)."""

    prod: str
    kids: tuple["Derivation", ...] = ()
    sel: str | None = None

    def build(self) -> A.Expr:
        p = BY_NAME[self.prod]
        return p.build([k.build() for k in self.kids], self.sel or "convs")

    def program(self) -> A.Program:
        return A.Program(body=self.build())


def minimal(typ: str) -> Derivation:
    def conv(spec) -> Derivation:
        name, *rest = spec
        return Derivation(name, tuple(conv(r) for r in rest[0:1])) if rest else Derivation(name)

    spec = MINIMAL[typ]
    return conv(spec) if len(spec) > 1 else Derivation(spec[0])


def _match(template, node, binding: dict[int, A.Expr], sel: list[str]) -> bool:
    if isinstance(template, A.Var) and template.name.startswith("$"):
        i = int(template.name[1:])
        if i in binding:
            return binding[i] == node
        binding[i] = node
        return True
    if isinstance(template, A.SelNamed) and template.name == "$sel":
        if not isinstance(node, A.SelNamed) or node.name not in SELECTIONS:
            return False
        if sel and sel[0] != node.name:
            return False
        if not sel:
            sel.append(node.name)
        return True
    if type(template) is not type(node):
        return False
    if is_dataclass(template):
        for f in fields(template):
            if f.name == "pos" or not f.compare:
                continue
            a, b = getattr(template, f.name), getattr(node, f.name)
            if isinstance(a, tuple):
                if not isinstance(b, tuple) or len(a) != len(b) or not all(_match(x, y, binding, sel) for x, y in zip(a, b)):
                    return False
            elif is_dataclass(a):
                if not _match(a, b, binding, sel):
                    return False
            elif isinstance(a, A.Param) or a != b:
                if not (isinstance(a, A.Param) and isinstance(b, A.Param) and a.name == b.name):
                    return False
        return True
    return template == node


def derive(node: A.Expr, typ: str = P) -> Derivation | None:
    """The derivation of ``node`` in the search space, or None when it lies outside it."""
    for prod in BY_TYPE.get(typ, []):
        binding: dict[int, A.Expr] = {}
        sel: list[str] = []
        if _match(prod.template, node, binding, sel):
            kids = []
            for i, ktype in enumerate(prod.children):
                d = derive(binding[i], ktype)
                if d is None:
                    break
                kids.append(d)
            else:
                return Derivation(prod.name, tuple(kids), sel[0] if sel else None)
    return None


def _key(path: str, typ: str) -> str:
    # the type is part of the name: one Optuna parameter keeps one set of choices
    return f"{path}:{typ}"


def to_params(deriv: Derivation, path: str = "P") -> dict[str, str]:
    """The Optuna parameters that make :meth:`Sampler.sample` replay ``deriv``."""
    prod = BY_NAME[deriv.prod]
    out = {_key(path, prod.type): deriv.prod}
    if deriv.sel is not None:
        out[path + ".sel"] = deriv.sel
    for i, kid in enumerate(deriv.kids):
        out.update(to_params(kid, f"{path}.{i}"))
    return out


def to_distributions(deriv: Derivation, path: str = "P", selections: Sequence[str] = SELECTIONS) -> dict[str, object]:
    """Optuna distributions of :func:`to_params` (for recording a scored program as a trial)."""
    from optuna.distributions import CategoricalDistribution

    prod = BY_NAME[deriv.prod]
    out: dict[str, object] = {_key(path, prod.type): CategoricalDistribution([p.name for p in BY_TYPE[prod.type]])}
    if deriv.sel is not None:
        out[path + ".sel"] = CategoricalDistribution(list(selections))
    for i, kid in enumerate(deriv.kids):
        out.update(to_distributions(kid, f"{path}.{i}", selections))
    return out


@dataclass
class Sampler:
    """Define-by-run sampling of a derivation: one categorical choice per node.

    ``choose(name, options)`` is ``trial.suggest_categorical`` in Optuna; beyond ``max_depth``
    the smallest expression of the type is used without asking.
    """

    choose: Callable[[str, Sequence[str]], str]
    max_depth: int = 6
    selections: Sequence[str] = SELECTIONS
    used: list[str] = field(default_factory=list)

    def sample(self, typ: str = P, path: str = "P", depth: int = 0) -> Derivation:
        if depth >= self.max_depth and typ != P:
            return minimal(typ)
        options = [p.name for p in BY_TYPE[typ]]
        name = self.choose(_key(path, typ), options)
        prod = BY_NAME[name]
        sel = self.choose(path + ".sel", list(self.selections)) if prod.needs_selection else None
        kids = tuple(self.sample(k, f"{path}.{i}", depth + 1) for i, k in enumerate(prod.children))
        return Derivation(name, kids, sel)
