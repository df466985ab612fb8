"""The search space: a typed grammar subset shared by the enumerator and the Optuna sampler.

Each production builds a piece of AST from typed children. Types are those of the language at
the current layer: ``T`` Tensor, ``C`` Channels, ``M`` Map, ``S`` Scalar; ``P`` is a whole
program body. The operators' productions come from the table of operators
(:data:`sycam.lang.ops.TABLE`, each row's ``search`` forms, where ``X`` enters as ``mi``'s fixed
second argument); the terminals ``A``, ``G`` (and the expensive ``S``, ``D``, ``R``, ``R1``) and the
whole-program templates are this module's. Multi-layer productions lift a Map (and a Scalar layer importance) over a layer
selection, as Winsor-CAM and layer averaging do. A program built from productions carries its
derivation, so it can be replayed as Optuna parameters (for seeding a study).

:data:`PRODUCTIONS` is the whole searchable language; a :class:`Space` is the subset one search
uses (its productions, layer selections and size limits; presets and files in
:mod:`sycam.search.presets`). :data:`DEFAULT` is the space every search used before there were
others, production for production.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable, Sequence

from sycam.lang import ast as A
from sycam.lang.ops import TABLE, apply_node
from sycam.lang.pretty import _selection as selection_text

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
        """The template with ``kids`` for its children and ``sel`` (selection text) for ``$sel``."""
        return _substitute(self.template, list(kids), sel)

    @property
    def own_size(self) -> int:
        return A.size(self.template) - len(self.children)


def _substitute(node, kids: list[A.Expr], sel: str):
    if isinstance(node, A.Var) and node.name.startswith("$"):
        return kids[int(node.name[1:])]
    if isinstance(node, A.SelNamed) and node.name == "$sel":
        return selection_node(sel)
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


@functools.lru_cache(maxsize=None)
def selection_node(text: str) -> A.Selection:
    """The layer selection written ``text`` (``convs``, ``-3:``, ``[-1, -2]``), parsed by the
    language's parser (raises :class:`~sycam.errors.ProgramSyntaxError` on bad text)."""
    from sycam.lang.parse import parse

    body = parse(f"each({text}, sum_c(A))").body
    assert isinstance(body, A.Each)
    return body.selection


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
            terms = dict(form.terms)
            if (len(form.consts) != len(spec.const_args) or len(form.args) + len(form.consts) + len(terms) != spec.arity
                    or set(terms) & set(spec.const_args) or not all(0 < i < spec.arity for i in terms)):
                raise ValueError(f"operator {spec.name}: a search form needs {spec.arity - len(spec.const_args)} argument "
                                 f"kinds or terminals (the first a kind) and {len(spec.const_args)} constants, got {form}")
            kids, consts = iter(range(len(form.args))), iter(form.consts)
            template = apply_node(spec, tuple(A.Num(float(next(consts))) if i in spec.const_args
                                              else A.Terminal(terms[i]) if i in terms else _v(next(kids))
                                              for i in range(spec.arity)))
            out.append(Production(spec.production(form), form.result, form.args, template))
    return sorted(out, key=_rank)


_TERMINALS = [Production("A", T, (), A.Terminal("A")), Production("G", T, (), A.Terminal("G")),
              # the expensive ones (a forward pass per channel): Score-CAM's channel scores, Ablation-CAM's drops
              Production("S", C, (), A.Terminal("S")), Production("D", C, (), A.Terminal("D")),
              # ... and per position of the layer's grid: Recipro-CAM's maps, Gaussian and one-hot kernel
              Production("R", M, (), A.Terminal("R")), Production("R1", M, (), A.Terminal("R1"))]
EXPENSIVE = ("S", "D", "R", "R1")
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
REQUIRED = ("A", "G", "mean_hw", "sum_c", "mean_c_S", "single")  # every space has them (MINIMAL's, a program)


@dataclass(frozen=True)
class Space:
    """The part of the language one search uses.

    ``productions``: names from :data:`PRODUCTIONS` (they keep that list's order, which is the
    enumerator's and the sampler's order of choices); ``selections``: the layer selections of the
    multi-layer programs, as program text (``convs``, ``stages``, ``-3:``, ``[-1, -2]``);
    ``max_size``: the enumerator's largest Map expression (AST nodes) when the budget does not raise
    it, and ``grow``: whether it does (:func:`sycam.search.presets.max_size_for`); ``max_depth``:
    the sampler's; ``interleave``: the enumerator fills each (type, size) bucket taking the type's
    productions in turns rather than one after another (the full space: with some 25 productions
    per type the first ones fill a bucket, and the last, e.g. the weighted ``w * A`` of Grad-CAM and
    MI-CAM, would never get in above the smallest sizes).
    """

    name: str
    productions: tuple[str, ...]  # any iterable of names; kept as a tuple in PRODUCTIONS order
    selections: tuple[str, ...] = SELECTIONS
    max_size: int = 8
    grow: bool = True
    max_depth: int = 6
    interleave: bool = False
    #: the score directives the Optuna sampler chooses among (texts or :class:`~sycam.lang.ast.ScoreSpec`,
    #: kept as ScoreSpecs, logit first); the enumerator's programs and the references explain the logit
    scores: tuple[A.ScoreSpec, ...] = (A.ScoreSpec(),)

    def __post_init__(self) -> None:
        names = set(self.productions)
        object.__setattr__(self, "productions", tuple(p.name for p in PRODUCTIONS if p.name in names))
        object.__setattr__(self, "selections", tuple(self.selections))
        specs = [parse_score(s) if isinstance(s, str) else s for s in self.scores]
        if A.ScoreSpec() not in specs:
            raise ValueError(f"space {self.name}: its scores must include logit (the enumerator's and the references'), "
                             f"got {', '.join(map(score_text, specs)) or 'none'}")
        object.__setattr__(self, "scores", tuple(dict.fromkeys([A.ScoreSpec()] + specs)))
        unknown = sorted(names - set(BY_NAME))
        if unknown:
            raise ValueError(f"space {self.name}: unknown productions {unknown}")
        missing = [n for n in REQUIRED if n not in self.productions]
        if missing:
            raise ValueError(f"space {self.name}: it must contain {', '.join(missing)} (every space does)")
        for text in self.selections:
            selection_node(text)

    @functools.cached_property
    def _by_type(self) -> dict[str, list[Production]]:
        names = set(self.productions)
        return {t: [p for p in ps if p.name in names] for t, ps in BY_TYPE.items()}

    def by_type(self, typ: str) -> list[Production]:
        """The space's productions of type ``typ``, in :data:`PRODUCTIONS` order."""
        return self._by_type.get(typ, [])

    @property
    def expensive(self) -> tuple[str, ...]:
        """The expensive terminals (``S``, ``D``, ``R``, ``R1``) the space uses."""
        return tuple(t for t in EXPENSIVE if t in self.productions)

    def describe(self) -> str:
        counts = ", ".join(f"{t} {len(self.by_type(t))}" for t in (T, C, M, S, P))
        return (f"space {self.name}: {len(self.productions)} productions ({counts}), selections "
                f"{', '.join(self.selections) or 'none'}, max size {self.max_size}{' (grows with the budget)' if self.grow else ''}"
                f"{', productions interleaved' if self.interleave else ''}"
                f"{', scores ' + ', '.join(self.score_choices) if len(self.scores) > 1 else ''}")

    @property
    def score_choices(self) -> list[str]:
        """The scores as the sampler's choices (``logit``, ``prob``, ``finer(3, 0.6)``)."""
        return [score_text(s) for s in self.scores]


#: the Optuna parameter that chooses a sampled program's score (asked only when a space has several)
SCORE_PARAM = "score"


def score_text(spec: A.ScoreSpec) -> str:
    """A score as a space file and the sampler write it: ``logit``, ``prob``, ``finer(3, 0.6)``
    (the program's directive without ``score`` and ``;``)."""
    from sycam.lang.pretty import pretty_score

    return pretty_score(spec)[len("score "):-1]


@functools.lru_cache(maxsize=None)
def parse_score(text: str) -> A.ScoreSpec:
    """The score ``text`` names (``prob``, ``finer(3, 0.6)``; ``score prob;`` too), parsed by the
    language's parser (raises :class:`~sycam.errors.ProgramSyntaxError` on bad text)."""
    from sycam.lang.parse import parse

    body = text.strip().removeprefix("score ").rstrip(";").strip()
    spec = parse(f"score {body};\nsum_c(A)").score
    assert spec is not None
    return A.ScoreSpec() if spec.kind == "logit" else spec


#: the terminals whose values depend on the explained score (A and X do not)
SCORED_TERMINALS = ("G", "S", "D", "R", "R1", "Y")


def reads_score(body: A.Expr) -> bool:
    """Does ``body`` read a terminal that depends on the score (``G``, ``S``, ``D``, ``R``, ``R1``,
    ``Y``)? A body that does not (``sum_c(A)``, EigenCAM's ``pc1(A)``) gives the same maps under any
    score, so the sampler asks no score for it and it explains the logit (no duplicate per score,
    no capture of another score for it)."""
    return any(isinstance(n, A.Terminal) and n.kind in SCORED_TERMINALS for n in A.walk(body))


def asks_score(space: "Space", body: A.Expr | None = None) -> bool:
    """Does the sampler choose a score for a program of ``space``: where the space has several and
    ``body`` (when given) reads one (:func:`reads_score`)."""
    return len(space.scores) > 1 and (body is None or reads_score(body))


def score_of(spec: A.ScoreSpec) -> A.ScoreSpec | None:
    """What a program carries for ``spec``: None for the logit (no ``score`` line is printed)."""
    return None if spec == A.ScoreSpec() else spec


def score_params(space: "Space", spec: A.ScoreSpec = A.ScoreSpec(),
                 body: A.Expr | None = None) -> tuple[dict[str, str], dict[str, object]]:
    """The score's Optuna parameter and distribution in ``space`` (none where it has one score, or
    where ``body`` is given and reads no score: :func:`reads_score`, the sampler asks none then)."""
    from optuna.distributions import CategoricalDistribution

    if not asks_score(space, body):
        return {}, {}
    return {SCORE_PARAM: score_text(spec)}, {SCORE_PARAM: CategoricalDistribution(space.score_choices)}


# today's space, production for production (tests/test_ops_table.py pins it)
DEFAULT = Space("default", frozenset([
    "A", "G", "relu_T", "abs_T", "sq_T", "mul_TT", "add_TT", "mul_CT",
    "mean_hw", "max_hw", "relu_C", "sq_C", "softmax_C", "mul_CC", "div_CC",
    "sum_c", "mean_c", "max_c", "relu_M", "sq_M", "mul_MM", "add_MM",
    "mean_c_S", "max_c_S", "single", "layers_mean", "layers_max", "layers_winsor"]))


@dataclass(frozen=True)
class Derivation:
    """A tree of production names (plus the layer selection of multi-layer productions)."""

    prod: str
    kids: tuple["Derivation", ...] = ()
    sel: str | None = None

    def build(self) -> A.Expr:
        p = BY_NAME[self.prod]
        return p.build([k.build() for k in self.kids], self.sel or "convs")

    def program(self, score: A.ScoreSpec | None = None) -> A.Program:
        return A.Program(body=self.build(), score=score_of(score) if score is not None else None)


def minimal(typ: str) -> Derivation:
    def conv(spec) -> Derivation:
        name, *rest = spec
        return Derivation(name, tuple(conv(r) for r in rest[0:1])) if rest else Derivation(name)

    spec = MINIMAL[typ]
    return conv(spec) if len(spec) > 1 else Derivation(spec[0])


def _match(template, node, binding: dict[int, A.Expr], sel: list[str], allowed: Sequence[str] = SELECTIONS) -> bool:
    if isinstance(template, A.Var) and template.name.startswith("$"):
        i = int(template.name[1:])
        if i in binding:
            return binding[i] == node
        binding[i] = node
        return True
    if isinstance(template, A.SelNamed) and template.name == "$sel":
        if not isinstance(node, (A.SelNamed, A.SelSlice, A.SelList)):
            return False
        text = selection_text(node)
        if text not in allowed:
            return False
        if sel and sel[0] != text:
            return False
        if not sel:
            sel.append(text)
        return True
    if type(template) is not type(node):
        return False
    if is_dataclass(template):
        for f in fields(template):
            if f.name == "pos" or not f.compare:
                continue
            a, b = getattr(template, f.name), getattr(node, f.name)
            if isinstance(a, tuple):
                if not isinstance(b, tuple) or len(a) != len(b) or not all(_match(x, y, binding, sel, allowed)
                                                                           for x, y in zip(a, b)):
                    return False
            elif is_dataclass(a):
                if not _match(a, b, binding, sel, allowed):
                    return False
            elif isinstance(a, A.Param) or a != b:
                if not (isinstance(a, A.Param) and isinstance(b, A.Param) and a.name == b.name):
                    return False
        return True
    return template == node


def derive(node: A.Expr, typ: str = P, space: Space = DEFAULT) -> Derivation | None:
    """The derivation of ``node`` in ``space``, or None when it lies outside it."""
    for prod in space.by_type(typ):
        binding: dict[int, A.Expr] = {}
        sel: list[str] = []
        if _match(prod.template, node, binding, sel, space.selections):
            kids = []
            for i, ktype in enumerate(prod.children):
                d = derive(binding[i], ktype, space)
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


def to_distributions(deriv: Derivation, path: str = "P", selections: Sequence[str] = SELECTIONS,
                     space: Space = DEFAULT) -> dict[str, object]:
    """Optuna distributions of :func:`to_params` in ``space`` (for recording a scored program as a trial)."""
    from optuna.distributions import CategoricalDistribution

    prod = BY_NAME[deriv.prod]
    out: dict[str, object] = {_key(path, prod.type): CategoricalDistribution([p.name for p in space.by_type(prod.type)])}
    if deriv.sel is not None:
        out[path + ".sel"] = CategoricalDistribution(list(selections))
    for i, kid in enumerate(deriv.kids):
        out.update(to_distributions(kid, f"{path}.{i}", selections, space))
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
    space: Space = DEFAULT

    def sample(self, typ: str = P, path: str = "P", depth: int = 0) -> Derivation:
        if depth >= self.max_depth and typ != P:
            return minimal(typ)
        options = [p.name for p in self.space.by_type(typ)]
        name = self.choose(_key(path, typ), options)
        prod = BY_NAME[name]
        sel = self.choose(path + ".sel", list(self.selections)) if prod.needs_selection else None
        kids = tuple(self.sample(k, f"{path}.{i}", depth + 1) for i, k in enumerate(prod.children))
        return Derivation(name, kids, sel)

    def sample_score(self, body: A.Expr | None = None) -> A.ScoreSpec:
        """The program's score: one more categorical choice (:data:`SCORE_PARAM`) where the space
        has several and ``body`` (when given) reads a score (:func:`reads_score`), else the logit
        without asking."""
        if not asks_score(self.space, body):
            return A.ScoreSpec()
        return parse_score(self.choose(SCORE_PARAM, self.space.score_choices))
