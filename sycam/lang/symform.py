"""Sympy forms of expressions that respect sycam's guarded arithmetic, and their way back to the AST.

:func:`sycam.lang.canon.to_sympy` treats division as exact division (``x / x = 1``), which is
what duplicate detection wants, but not what the kernels compute: ``safe_div`` replaces a divisor
with ``|b| < 1e-12`` by ``±1e-12``, so ``x / x`` is 1 where ``x ≠ 0`` and 0 where ``x = 0``
(``relu(A) / relu(A)`` is the mask ``A > 0``, not 1), and :func:`sycam.kernels.power` computes
a non-integer exponent on ``|x|`` (``x^0.5 · x^0.5 = |x|``, not ``x``). :func:`sym` first hides
exactly those operations behind uninterpreted functions (``div#(a, b)``, ``pow#(x, e)``), then
calls ``to_sympy``; every equality sympy derives from the result then holds for sycam's own
semantics (for finite values, up to float rounding):

- divisions by a constant ``c`` with ``|c| >= 1e-12`` stay divisions (the guard never fires);
- powers with a non-negative integer exponent stay powers (``torch.pow`` is exact for them);
- everything else involving a divisor or an exponent is opaque.

With ``nonzero=True`` every divisor and negative integer exponent is treated as exact (sympy's own
view): equalities then hold wherever no divisor lies within 1e-12 of zero.

:func:`from_sympy` renders a sympy form back as an AST in sycam's own syntax (``each(convs, ...)``,
``fuse(..., sum)``, ``?p:[0,100]=90``, ``sq(x)``, ``x^3``), taking terminals, parameters with
their ranges and defaults, ``let`` names and layer selections from a table built from the original
expression (:func:`symbol_table`), never by parsing sympy's internal names.
"""
from __future__ import annotations

import functools

import sympy as sp

from sycam.lang import ast as A
from sycam.lang.canon import to_sympy
from sycam.lang.ops import OPS
from sycam.lang.pretty import _selection, fmt_number

EPS = 1e-12  # sycam.kernels.EPS, the division guard (the language knows nothing of torch)
MAX_CONSTANT = 3e38  # sycam.lang.types.MAX_CONSTANT
DIV, POW = "div#", "pow#"  # the uninterpreted stand-ins for guarded division and power


class Unrenderable(Exception):
    """A sympy form with no counterpart in the language (e.g. a symbolic exponent ``x**(2*?p)``)."""


def exact_divisor(node: A.Expr) -> bool:
    """A divisor that the guard of ``safe_div`` never replaces: a constant with ``|c| >= 1e-12``."""
    return isinstance(node, A.Num) and abs(node.value) >= EPS


def _view(node: A.Expr, nonzero: bool) -> A.Expr:
    """``node`` with guarded divisions and powers replaced by uninterpreted calls (see module doc)."""
    if isinstance(node, A.BinOp):
        left, right = _view(node.left, nonzero), _view(node.right, nonzero)
        if node.op == "/" and not (exact_divisor(node.right) or (nonzero and not isinstance(node.right, A.Num))):
            return A.Call(DIV, (left, right))
        return A.BinOp(node.op, left, right)
    if isinstance(node, A.Pow):
        base, e = _view(node.base, nonzero), node.exponent
        if isinstance(e, A.Num) and float(e.value).is_integer() and (e.value >= 0 or nonzero):
            return A.Pow(base, e)
        return A.Call(POW, (base, e))
    if isinstance(node, A.Call):
        return A.Call(node.fn, tuple(_view(a, nonzero) for a in node.args))
    if isinstance(node, A.Each):
        return A.Each(node.selection, _view(node.body, nonzero))
    if isinstance(node, A.Fuse):
        weights = None if node.weights is None else _view(node.weights, nonzero)
        return A.Fuse(_view(node.maps, nonzero), weights, node.mode, node.grid)
    return node


@functools.lru_cache(maxsize=200_000)
def sym(node: A.Expr, nonzero: bool = False) -> sp.Expr:
    """The sympy form of ``node`` under sycam's guarded semantics (``nonzero``: divisors ≠ 0).

    ``let`` references stay opaque symbols ``$name``. May raise what sympy raises on forms it
    cannot order (callers treat that as "no simplification")."""
    return to_sympy(_view(node, nonzero))


# ---------------------------------------------------------------- back to the AST


def symbol_table(*exprs: A.Expr) -> dict[str, object]:
    """Sympy names of the leaves and selections of ``exprs`` -> what they stand for.

    Terminals (``A@-1``), let references (``$w``), parameters (``?p``, the occurrence carrying a
    range or default wins, as in :func:`sycam.lang.ast.params`) and selections (``each#convs``)."""
    table: dict[str, object] = {}
    for expr in exprs:
        for n in A.walk(expr):
            if isinstance(n, (A.Terminal, A.Var)):
                table[str(to_sympy(n))] = n
            elif isinstance(n, A.Param):
                prev = table.get("?" + n.name)
                if not isinstance(prev, A.Param) or (prev.lo is None and n.lo is not None) or \
                        (prev.default is None and n.default is not None):
                    table["?" + n.name] = n
            elif isinstance(n, A.Each):
                table["each#" + _selection(n.selection)] = n.selection
    return table


def _number(value: sp.Expr) -> A.Expr:
    """A sympy number as a literal, or ``p / q`` where the decimal would be long (``1/3``)."""
    if not value.is_finite or not value.is_real:
        raise Unrenderable(f"not a finite number: {value}")
    f = float(value)
    if abs(f) > MAX_CONSTANT:
        raise Unrenderable(f"constant {f:g} beyond float32")
    if value.is_Rational and not value.is_Integer and len(fmt_number(f)) > 8:
        p, q = int(value.p), int(value.q)
        return A.BinOp("/", A.Num(float(p)), A.Num(float(q)))
    return A.Num(f)


def _const(value: sp.Expr, table: dict[str, object]) -> A.Num | A.Param:
    """A constant argument (exponent, percentile, rescale bound): a literal or a ?param."""
    if isinstance(value, sp.Symbol) and isinstance(table.get(value.name), A.Param):
        return table[value.name]  # type: ignore[return-value]
    if value.is_Number and value.is_finite and abs(float(value)) <= MAX_CONSTANT:
        return A.Num(float(value))
    raise Unrenderable(f"not a constant: {value}")


def _chain(op: str, items: list[A.Expr]) -> A.Expr:
    out = items[0]
    for item in items[1:]:
        out = A.BinOp(op, out, item)
    return out


def _negate(node: A.Expr) -> A.Expr:
    if isinstance(node, A.Num):
        return A.Num(-node.value)
    if isinstance(node, A.BinOp) and node.op in "*/" and isinstance(node.left, A.Num):
        return A.BinOp(node.op, A.Num(-node.left.value), node.right)
    if isinstance(node, A.BinOp) and node.op in "*/" and isinstance(node.left, A.BinOp):
        return A.BinOp(node.op, _negate(node.left), node.right)
    return A.Call("neg", (node,))


def _mul(e: sp.Mul, table: dict[str, object]) -> A.Expr:
    coeff, factors = e.as_coeff_mul()
    num: list[A.Expr] = []
    den: list[A.Expr] = []
    for f in factors:
        base, x = f.as_base_exp()
        if x.is_Integer and int(x) < 0:  # only with nonzero=True: an exact division
            den.append(from_sympy(base ** (-x), table))
        else:
            num.append(from_sympy(f, table))
    negative = bool(coeff < 0)
    c = -coeff if negative else coeff
    if c != 1:
        if c.is_Rational and not c.is_Integer and (int(c.p) == 1 or len(fmt_number(float(c))) > 8):
            if int(c.p) != 1:
                num.insert(0, A.Num(float(c.p)))
            den.insert(0, A.Num(float(c.q)))
        else:
            num.insert(0, _number(c))
    out = _chain("*", num) if num else A.Num(1.0)
    if den:
        out = A.BinOp("/", out, _chain("*", den))
    return _negate(out) if negative else out


def _add(e: sp.Add, table: dict[str, object]) -> A.Expr:
    plus: list[A.Expr] = []
    minus: list[A.Expr] = []
    for term in e.as_ordered_terms():
        c, _ = term.as_coeff_Mul()
        (minus if c < 0 else plus).append(from_sympy(-term if c < 0 else term, table))
    out = plus[0] if plus else _negate(minus.pop(0))
    for t in plus[1:]:
        out = A.BinOp("+", out, t)
    for t in minus:
        out = A.BinOp("-", out, t)
    return out


def from_sympy(e: sp.Expr, table: dict[str, object]) -> A.Expr:
    """The AST, in sycam's syntax, of a sympy form produced by :func:`sym` (see the module doc).

    Raises :class:`Unrenderable` for forms the language cannot spell."""
    if e.is_Number:
        return _number(e)
    if isinstance(e, sp.Symbol):
        node = table.get(e.name)
        if not isinstance(node, (A.Terminal, A.Var, A.Param)):
            raise Unrenderable(f"unknown symbol {e.name}")
        return node
    if isinstance(e, sp.Add):
        return _add(e, table)
    if isinstance(e, sp.Mul):
        return _mul(e, table)
    if isinstance(e, sp.Pow):
        base, x = e.as_base_exp()
        if not x.is_Integer:
            raise Unrenderable(f"exponent {x}")
        k = int(x)
        b = from_sympy(base, table)
        if k == 2:
            return A.Call("sq", (b,))
        if k == -1:
            return A.BinOp("/", A.Num(1.0), b)
        return A.Pow(b, A.Num(float(k)))
    if isinstance(e, sp.Function):
        return _call(e, table)
    raise Unrenderable(f"no sycam spelling for {type(e).__name__}")


def _call(e: sp.Function, table: dict[str, object]) -> A.Expr:
    name, args = type(e).__name__, e.args
    if name.startswith("each#"):
        sel = table.get(name)
        if sel is None or len(args) != 1:
            raise Unrenderable(f"unknown selection {name}")
        return A.Each(sel, from_sympy(args[0], table))  # type: ignore[arg-type]
    if name.startswith("fuse#"):
        _, mode, grid = name.split("#")
        weights = from_sympy(args[1], table) if len(args) > 1 else None
        return A.Fuse(from_sympy(args[0], table), weights, mode, grid)
    if name == DIV:
        return A.BinOp("/", from_sympy(args[0], table), from_sympy(args[1], table))
    if name == POW:
        return A.Pow(from_sympy(args[0], table), _const(args[1], table))
    spec = OPS.get(name)
    if spec is None or spec.arity != len(args):
        raise Unrenderable(f"unknown operator {name}")
    return A.Call(name, tuple(_const(a, table) if i in spec.const_args else from_sympy(a, table)
                              for i, a in enumerate(args)))


def first_specs(exprs: list[A.Expr]) -> list[A.Expr]:
    """Each parameter's range and default written once, at its first occurrence in print order
    (later ones bare), as a person writes them; ``exprs`` in program order (lets, then body).
    The richest spec of a name (as :func:`sycam.lang.ast.params` picks it) goes first."""
    richest: dict[str, A.Param] = {}
    for e in exprs:
        for name, p in A.params(e).items():
            prev = richest.get(name)
            if prev is None or (prev.lo is None and p.lo is not None) or (prev.default is None and p.default is not None):
                richest[name] = p
    seen: set[str] = set()

    def fix(node: A.Expr) -> A.Expr:
        if isinstance(node, A.Param):
            if node.name in seen:
                return A.Param(node.name)
            seen.add(node.name)
            return richest[node.name]
        if isinstance(node, A.BinOp):
            return A.BinOp(node.op, fix(node.left), fix(node.right))
        if isinstance(node, A.Pow):
            return A.Pow(fix(node.base), fix(node.exponent))  # type: ignore[arg-type]
        if isinstance(node, A.Call):
            return A.Call(node.fn, tuple(fix(a) for a in node.args))
        if isinstance(node, A.Each):
            return A.Each(node.selection, fix(node.body))
        if isinstance(node, A.Fuse):
            maps = fix(node.maps)
            return A.Fuse(maps, None if node.weights is None else fix(node.weights), node.mode, node.grid)
        return node

    return [fix(e) for e in exprs]
