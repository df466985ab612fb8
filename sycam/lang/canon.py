"""Canonical form of programs through sympy: equal canonical forms are one candidate.

Arithmetic is sympy's own (commutativity, associativity, collecting terms, ``x*x = x**2``).
Operators are uninterpreted functions with rewrite rules that hold for sycam's semantics:
idempotence (``relu(relu(x)) = relu(x)``, ``norm(norm(x)) = norm(x)``, ``abs(abs(x))``,
``sign(sign(x))``), absorption (``relu(abs(x)) = abs(x)``, ``abs(relu(x)) = relu(x)``),
positive homogeneity of ``relu`` and of the sums/means/maxima, and scale invariance of ``norm``,
``softmax``-free normalisers (``norm(c*x) = norm(x)`` for c > 0). Division is treated as exact
division (sycam guards x/0; the rare programs where that matters are separated by the
observational check on a probe batch).
"""
from __future__ import annotations

import functools
import hashlib

import sympy as sp

from sycam.lang import ast as A
from sycam.lang.pretty import _selection, fmt_number


def _positive_factor(x: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """Split ``x`` into (positive numeric coefficient, rest)."""
    coeff, rest = x.as_coeff_Mul()
    if coeff.is_number and coeff.is_positive:
        return coeff, rest
    return sp.Integer(1), x


class _Op(sp.Function):
    """Base of the language's operators as sympy functions."""

    is_commutative = True


def _make(name: str, rules: str = "") -> type:
    """A sympy Function named ``name`` with the given rewrite rules (letters):
    i = idempotent, h = positively homogeneous (f(c x) = c f(x), c > 0), s = scale invariant
    (f(c x) = f(x), c > 0), r = absorbs into/under abs as relu does."""

    @classmethod
    def eval(cls, *args):  # noqa: ANN001 - sympy's protocol
        x = args[0]
        if "i" in rules and isinstance(x, cls) and len(args) == 1:
            return x
        if "r" in rules and isinstance(x, sp.Abs):
            return x
        if ("h" in rules or "s" in rules) and len(args) == 1:
            c, rest = _positive_factor(x)
            if c != 1:
                return cls(rest) if "s" in rules else c * cls(rest)
        return None

    return type(name, (_Op,), {"eval": eval, "nargs": None})


_FUNCS: dict[str, type] = {}


def _fn(name: str) -> type:
    if name not in _FUNCS:
        rules = {"relu": "irh", "norm": "is", "sign": "is", "sum_hw": "h", "mean_hw": "h", "max_hw": "h",
                 "sum_c": "h", "mean_c": "h", "max_c": "h", "zscore": "is", "threshold": "h", "pc1": "h"}.get(name.split("#")[0], "")
        _FUNCS[name] = _make(name, rules)
    return _FUNCS[name]


def _layer_suffix(ref: A.LayerRef | None) -> str:
    return "" if ref is None else "@" + (str(ref.index) if ref.index is not None else str(ref.name))


def to_sympy(node: A.Expr) -> sp.Expr:
    """The sympy expression of an (inlined) AST expression."""
    if isinstance(node, A.Num):
        return sp.nsimplify(node.value, rational=True) if abs(node.value) < 1e6 else sp.Float(node.value)
    if isinstance(node, A.Param):
        return sp.Symbol("?" + node.name)
    if isinstance(node, A.Terminal):
        return sp.Symbol(node.kind + _layer_suffix(node.layer))
    if isinstance(node, A.Var):
        return sp.Symbol("$" + node.name)
    if isinstance(node, A.BinOp):
        a, b = to_sympy(node.left), to_sympy(node.right)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[node.op]
    if isinstance(node, A.Pow):
        return to_sympy(node.base) ** to_sympy(node.exponent)
    if isinstance(node, A.Call):
        args = [to_sympy(a) for a in node.args]
        fn = node.fn
        if fn == "neg":
            return -args[0]
        if fn == "sq":
            return args[0] ** 2
        if fn == "abs":  # abs(abs x) = abs x, abs(relu x) = relu x; no sympy Abs (it compares arguments)
            x = args[0]
            return x if isinstance(x, (_fn("relu"), _fn("abs"))) else _fn("abs")(x)
        if fn in ("max", "min"):  # commutative and idempotent; uninterpreted (sympy's Max compares)
            a, b = sorted(args, key=sp.default_sort_key)
            return a if a == b else _fn(fn)(a, b)
        return _fn(fn)(*args)
    if isinstance(node, A.Each):
        return _fn("each#" + _selection(node.selection))(to_sympy(node.body))
    if isinstance(node, A.Fuse):
        args = [to_sympy(node.maps)] + ([] if node.weights is None else [to_sympy(node.weights)])
        return _fn(f"fuse#{node.mode}#{node.grid}")(*args)
    raise TypeError(f"not an expression node: {node!r}")


@functools.lru_cache(maxsize=100_000)
def _canon_cached(expr: A.Expr, score: A.ScoreSpec | None) -> str:
    text = sp.srepr(to_sympy(expr))
    if score is not None and score != A.ScoreSpec():
        text = f"score:{score.kind}:{score.k}:{fmt_number(score.alpha)}|" + text
    return text


def canonical(program: A.Program | A.Expr) -> str:
    """A canonical string: two programs with the same string are the same candidate."""
    if isinstance(program, A.Program):
        return _canon_cached(A.inline_lets(program), program.score)
    return _canon_cached(program, None)


def canonical_text(program: A.Program | A.Expr) -> str:
    """A readable rendering of the canonical form (``sycam check`` prints it)."""
    expr = A.inline_lets(program) if isinstance(program, A.Program) else program
    return sp.sstr(to_sympy(expr))


def canonical_hash(program: A.Program | A.Expr) -> str:
    return hashlib.sha1(canonical(program).encode()).hexdigest()[:12]
