"""Canonical form of programs through sympy: equal canonical forms are one candidate.

Arithmetic is sympy's own (commutativity, associativity, collecting terms, ``x*x = x**2``).
Every other operator is an uninterpreted sympy function carrying the rewrite rules its row of the
operator table declares (:class:`sycam.lang.ops.Canon`), each of which holds for sycam's kernels:
idempotence (``relu(relu(x)) = relu(x)``, ``abs``, ``sign``, ``norm``, ``zscore``; ``max(x, x) = x``),
absorption (``abs(relu(x)) = relu(x)``), positive homogeneity (``relu``, the sums, means and maxima,
``pc1``: ``f(c·x) = c·f(x)`` for c > 0), scale invariance (``norm``, ``zscore``, ``sign``:
``f(c·x) = f(x)``) and commutativity (``max``, ``min``). Division is treated as exact division
(sycam guards x/0; the rare programs where that matters are separated by the observational check
on a probe batch).
"""
from __future__ import annotations

import functools
import hashlib
from typing import Callable

import sympy as sp

from sycam.lang import ast as A
from sycam.lang.ops import TABLE, Canon, operator_of
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


def _make(name: str, rule: Canon) -> type:
    """A sympy Function named ``name`` applying ``rule``'s rewrites when it is built."""

    @classmethod
    def eval(cls, *args):  # noqa: ANN001 - sympy's protocol
        if rule.idempotent:
            if len(args) == 1 and isinstance(args[0], cls):
                return args[0]
            if len(args) == 2 and args[0] == args[1]:
                return args[0]
        if rule.absorbs and len(args) == 1 and isinstance(args[0], tuple(_fn(g) for g in rule.absorbs)):
            return args[0]
        if rule.commutative:
            ordered = sorted(args, key=sp.default_sort_key)
            if list(args) != ordered:
                return cls(*ordered)
        if (rule.homogeneous or rule.scale_invariant) and len(args) == 1:
            c, rest = _positive_factor(args[0])
            if c != 1:
                return cls(rest) if rule.scale_invariant else c * cls(rest)
        return None

    return type(name, (_Op,), {"eval": eval, "nargs": None})


_FUNCS: dict[str, type] = {}


def _fn(name: str) -> type:
    """The sympy function of operator ``name`` (or of ``each#SEL`` / ``fuse#MODE#GRID``, which have no rules)."""
    if name not in _FUNCS:
        spec = TABLE.get(name)
        _FUNCS[name] = _make(name, spec.canon if spec is not None else Canon())
    return _FUNCS[name]


_ARITHMETIC: dict[str, Callable[..., sp.Expr]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b, "neg": lambda a: -a, "square": lambda a: a ** 2,
}


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
    if isinstance(node, A.Call) and node.fn.endswith("#"):  # an opaque stand-in (sycam.lang.symform's div#, pow#)
        return _fn(node.fn)(*[to_sympy(a) for a in node.args])
    if isinstance(node, (A.BinOp, A.Pow, A.Call)):
        spec, operands = operator_of(node)
        args = [to_sympy(a) for a in operands]
        how = spec.canon.sympy
        return _fn(spec.name)(*args) if how == "function" else _ARITHMETIC[how](*args)
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
