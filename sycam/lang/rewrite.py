"""The rewriter behind :func:`sycam.lang.simplify.simplify`: contexts, rules and canonical candidates.

A node is rewritten bottom-up, then each rule is tried at it until none applies; a rule's
candidate is accepted only if it keeps the node's type (as :mod:`sycam.lang.types` infers it),
drops no ``?param`` and does not grow the node (see :mod:`sycam.lang.simplify` for the rules
and what each mode allows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import sympy as sp

from sycam.errors import ProgramError
from sycam.lang import ast as A
from sycam.lang import symform
from sycam.lang import types as T
from sycam.lang.facts import MAX_EXPONENT, fold, indicator, literal, nonneg, positive_exponent, zero


@dataclass(frozen=True)
class Ctx:
    """Where a node sits: a scale-free position, the program's final expression, inside each."""

    sf: bool = False
    root: bool = False
    in_each: bool = False


_INVARIANT = {"norm", "zscore", "rescale", "sign"}  # f(c·x) = f(x) for c > 0 (first argument)
_HOMOGENEOUS = {"relu", "abs", "neg", "sq", "sqrt", "sum_hw", "mean_hw", "max_hw", "sum_c", "mean_c", "max_c",
                "threshold", "winsorize", "percentile", "pc1"}  # f(c·x) = c^k f(x), k > 0


# ---------------------------------------------------------------- helpers


def _is(node: A.Expr, fn: str) -> bool:
    return isinstance(node, A.Call) and node.fn == fn


def _num(node: A.Expr, value: float | None = None) -> bool:
    return isinstance(node, A.Num) and (value is None or node.value == value)


def _call(fn: str, *args: A.Expr) -> A.Call:
    return A.Call(fn, tuple(args))


def _int_exponent(node: A.Expr) -> int | None:
    """The exponent of ``x^k`` / ``sq(x)`` for a non-negative integer literal k, else None."""
    if _is(node, "sq"):
        return 2
    if isinstance(node, A.Pow) and isinstance(node.exponent, A.Num) and node.exponent.value >= 0 \
            and float(node.exponent.value).is_integer():
        return int(node.exponent.value)
    return None


def _ratio(a: sp.Expr, b: sp.Expr) -> sp.Expr | None:
    """The number c with a = c·b, if sympy's forms show one."""
    def content(e: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
        return e.primitive() if e.is_Add else e.as_coeff_Mul()

    (ca, ra), (cb, rb) = content(a), content(b)
    if not (ca.is_Number and cb.is_Number) or cb == 0:
        return None
    if ra == rb:
        return ca / cb
    if ra == -rb:
        return -ca / cb
    return None


# ---------------------------------------------------------------- the rewriter


class Rewriter:
    """Rewrites the expressions of one program; ``bind`` each let after rewriting its value."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.nonzero = mode == "nonzero"
        self.lets: dict[str, A.Expr] = {}  # name -> value as written (simplified)
        self.env: dict[str, A.Expr] = {}  # name -> value with earlier lets inlined
        self._reset()

    def _reset(self) -> None:
        self._inlined: dict[A.Expr, A.Expr] = {}
        self._types: dict[tuple[A.Expr, bool], object] = {}
        self._memo: dict[tuple[A.Expr, Ctx], A.Expr] = {}

    def bind(self, name: str, value: A.Expr) -> None:
        self.lets[name] = value
        self.env[name] = self.inline(value)
        self._reset()  # a name may be bound again: cached meanings of Var(name) are stale

    # -------------------------------------------------------------- facts about nodes
    def inline(self, node: A.Expr) -> A.Expr:
        hit = self._inlined.get(node)
        if hit is None:
            hit = A.inline_lets(A.Program(node, tuple(A.Let(k, v) for k, v in self.env.items())))
            self._inlined[node] = hit
        return hit

    def type_of(self, node: A.Expr, in_each: bool) -> object:
        """The node's type as the checker infers it (None where it does not type on its own)."""
        key = (node, in_each)
        if key not in self._types:
            try:
                self._types[key] = T._Checker(None).infer(self.inline(node), in_each)
            except ProgramError:
                self._types[key] = None
        return self._types[key]

    def specs(self, node: A.Expr) -> frozenset[A.Param]:
        return frozenset(n for n in A.walk(self.inline(node)) if isinstance(n, A.Param))

    def _nonneg(self, node: A.Expr) -> bool:
        return nonneg(node, self.lets)

    def _zero(self, node: A.Expr) -> bool:
        return zero(node, self.lets, self.nonzero)

    def _indicator(self, node: A.Expr) -> bool:
        return indicator(node, self.lets)

    # -------------------------------------------------------------- traversal
    def rewrite(self, node: A.Expr, ctx: Ctx) -> A.Expr:
        key = (node, ctx)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        out = self._children(node, ctx)
        for _ in range(200):  # every step shrinks the node or removes a duplicate: a bound, not a limit
            new = self._step(out, ctx)
            if new is None:
                break
            out = self._children(new, ctx)
        self._memo[key] = out
        return out

    def _kid_ctx(self, node: A.Expr, i: int, ctx: Ctx) -> Ctx:
        plain = Ctx(False, False, ctx.in_each)
        same = Ctx(ctx.sf, False, ctx.in_each)
        if isinstance(node, A.BinOp):
            return same if node.op == "*" or (node.op == "/" and i == 0) else plain
        if isinstance(node, A.Pow):
            return same if positive_exponent(node.exponent) else plain
        if isinstance(node, A.Call) and i == 0:
            if node.fn in _INVARIANT:
                return Ctx(True, False, ctx.in_each)
            return same if node.fn in _HOMOGENEOUS else plain
        if isinstance(node, A.Each):
            return Ctx(ctx.sf, False, True)
        if isinstance(node, A.Fuse):
            return same
        return plain

    def _children(self, node: A.Expr, ctx: Ctx) -> A.Expr:
        if isinstance(node, A.BinOp):
            left = self.rewrite(node.left, self._kid_ctx(node, 0, ctx))
            right = self.rewrite(node.right, self._kid_ctx(node, 1, ctx))
            return node if (left, right) == (node.left, node.right) else A.BinOp(node.op, left, right, node.pos)
        if isinstance(node, A.Pow):
            base = self.rewrite(node.base, self._kid_ctx(node, 0, ctx))
            return node if base == node.base else A.Pow(base, node.exponent, node.pos)
        if isinstance(node, A.Call):
            args = tuple(a if isinstance(a, (A.Num, A.Param)) else self.rewrite(a, self._kid_ctx(node, i, ctx))
                         for i, a in enumerate(node.args))
            return node if args == node.args else A.Call(node.fn, args, node.pos)
        if isinstance(node, A.Each):
            body = self.rewrite(node.body, self._kid_ctx(node, 0, ctx))
            return node if body == node.body else A.Each(node.selection, body, node.pos)
        if isinstance(node, A.Fuse):
            maps = self.rewrite(node.maps, self._kid_ctx(node, 0, ctx))
            weights = None if node.weights is None else self.rewrite(node.weights, self._kid_ctx(node, 1, ctx))
            if (maps, weights) == (node.maps, node.weights):
                return node
            return A.Fuse(maps, weights, node.mode, node.grid, node.pos)
        return node

    def _step(self, node: A.Expr, ctx: Ctx) -> A.Expr | None:
        for cand, same_size in self._rules(node, ctx):
            if self._ok(node, cand, ctx, same_size):
                return cand
        if isinstance(node, A.BinOp):  # where sums and products cancel (calls: the rules above)
            for cand in self._canonical(node, ctx):
                if self._ok(node, cand, ctx, False):
                    return cand
        return None

    def _ok(self, old: A.Expr, new: A.Expr | None, ctx: Ctx, same_size: bool) -> bool:
        if new is None or new == old:
            return False
        grow = A.size(new) - A.size(old)
        if grow > 0 or (grow == 0 and not same_size):
            return False
        if not self.specs(old) <= self.specs(new):
            return False
        before = self.type_of(old, ctx.in_each)
        return before is not None and self.type_of(new, ctx.in_each) == before

    # -------------------------------------------------------------- the rules
    def _rules(self, node: A.Expr, ctx: Ctx) -> Iterator[tuple[A.Expr, bool]]:
        folded = fold(node)
        if folded is not None:
            yield folded, False
        if isinstance(node, A.BinOp):
            yield from self._binop(node)
        elif isinstance(node, A.Pow):
            yield from self._pow(node)
        elif isinstance(node, A.Call):
            yield from ((c, False) for c in self._calls(node))
        if ctx.sf:
            yield from ((c, False) for c in self._scale(node))
        if ctx.root and self.mode != "exact":
            yield from ((c, False) for c in self._root(node, ctx))

    def _binop(self, node: A.BinOp) -> Iterator[tuple[A.Expr, bool]]:
        op, x, y = node.op, node.left, node.right
        if op in "+-" and self._zero(y):
            yield x, False
        if op == "+" and self._zero(x):
            yield y, False
        if op == "-" and self._zero(x):
            yield _call("neg", y), False
        if op == "+":
            if _num(y, 0):
                yield x, False
            if _num(x, 0):
                yield y, False
            if x == y:
                yield A.BinOp("*", A.Num(2.0), x), True
            if _is(y, "neg"):
                yield A.BinOp("-", x, y.args[0]), False  # type: ignore[union-attr]
            if _is(x, "neg"):
                yield A.BinOp("-", y, x.args[0]), False  # type: ignore[union-attr]
        elif op == "-":
            if _num(y, 0):
                yield x, False
            if _num(x, 0):
                yield _call("neg", y), False
            if x == y:
                yield A.Num(0.0), False
            if _is(y, "neg"):
                yield A.BinOp("+", x, y.args[0]), False  # type: ignore[union-attr]
        elif op == "*":
            for a, b in ((x, y), (y, x)):
                if _num(a, 1):
                    yield b, False
                if _num(a, -1):
                    yield _call("neg", b), False
                if _num(a, 0):
                    yield A.Num(0.0), False
            if x == y:
                yield _call("sq", x), False
            if _is(x, "neg") and _is(y, "neg"):
                yield A.BinOp("*", x.args[0], y.args[0]), False  # type: ignore[union-attr]
        elif op == "/":
            if _num(y, 1):
                yield x, False
            if _num(y, -1):
                yield _call("neg", x), False
            if _num(x, 0):
                yield A.Num(0.0), False  # 0 / b = 0: the guard keeps b away from 0
            if x == y:
                if self.nonzero:  # 1 where a Scalar; elsewhere the parent cancels it (x / x * A -> A)
                    yield A.Num(1.0), False
                elif self.mode == "safe":
                    yield _call("sign", _call("abs", x)), True

    def _pow(self, node: A.Pow) -> Iterator[tuple[A.Expr, bool]]:
        e = node.exponent
        if isinstance(e, A.Num):
            if e.value == 1:
                yield node.base, False
            if e.value == 0:
                yield A.Num(1.0), False
            if e.value == 2:
                yield _call("sq", node.base), False
        inner, outer = _int_exponent(node.base), _int_exponent(node)
        if inner is not None and outer is not None and inner * outer <= MAX_EXPONENT:
            yield A.Pow(node.base.base if isinstance(node.base, A.Pow) else node.base.args[0],  # type: ignore[union-attr]
                        A.Num(float(inner * outer))), False

    def _calls(self, node: A.Call) -> Iterator[A.Expr]:
        fn, args = node.fn, node.args
        x = args[0]
        if fn == "neg" and _is(x, "neg"):
            yield x.args[0]  # type: ignore[union-attr]
        if fn in ("relu", "abs") and self._nonneg(x):
            yield x
        if fn == "abs" and _is(x, "neg"):
            yield _call("abs", x.args[0])  # type: ignore[union-attr]
        if fn in ("sq", "sqrt") and self._indicator(x):
            yield x
        if fn == "sq":
            if _is(x, "neg") or _is(x, "abs"):
                yield _call("sq", x.args[0])  # type: ignore[union-attr]
            if _is(x, "sqrt"):
                yield _call("relu", x.args[0])  # type: ignore[union-attr]
            inner = _int_exponent(x)
            if inner is not None and 2 * inner <= MAX_EXPONENT:
                yield A.Pow(x.base if isinstance(x, A.Pow) else x.args[0], A.Num(float(2 * inner)))  # type: ignore[union-attr]
        if fn == "sqrt" and _is(x, "sq"):
            yield _call("abs", x.args[0])  # type: ignore[union-attr]
        if fn in ("sign", "norm", "zscore") and _is(x, fn):
            yield x
        if fn in ("max", "min") and args[0] == args[1]:
            yield args[0]
        if fn == "max":
            for a, b in ((args[0], args[1]), (args[1], args[0])):
                if _num(b, 0):
                    yield _call("relu", a)

    def _scale(self, node: A.Expr) -> Iterator[A.Expr]:
        """At a scale-free position a literal factor or divisor goes (its sign stays)."""
        if isinstance(node, A.BinOp) and node.op == "*":
            for c, k in ((node.left, node.right), (node.right, node.left)):
                if isinstance(c, A.Num) and c.value != 0:
                    yield k if c.value > 0 else _call("neg", k)
        if isinstance(node, A.BinOp) and node.op == "/" and symform.exact_divisor(node.right):
            yield node.left if node.right.value > 0 else _call("neg", node.left)  # type: ignore[union-attr]

    def _root(self, node: A.Expr, ctx: Ctx) -> Iterator[A.Expr]:
        """The final expression: a per-image constant added or subtracted goes, so does a norm."""
        if _is(node, "norm"):
            yield node.args[0]  # type: ignore[union-attr]
        if isinstance(node, A.BinOp) and node.op in "+-":
            pairs = [(node.left, node.right)] + ([(node.right, node.left)] if node.op == "+" else [])
            for keep, drop in pairs:
                if getattr(self.type_of(drop, ctx.in_each), "kind", None) == "Scalar":
                    yield keep

    def _canonical(self, node: A.Expr, ctx: Ctx) -> Iterator[A.Expr]:
        """Smaller forms sympy proves equal: a sub-expression ``k``, ``c * k``, ``neg(k)``, a literal."""
        try:
            form = symform.sym(node, self.nonzero)
        except Exception:  # noqa: BLE001 - sympy cannot order some forms; then it proves nothing
            return
        if form.is_Number:
            lit = literal(float(form)) if form.is_finite and form.is_real else None
            if lit is not None:
                yield lit
        found = dict.fromkeys(k for k in A.walk(node) if not isinstance(k, (A.Num, A.Param)) and k != node)
        subs = sorted(found, key=A.size)  # stable: among equal sizes the first in print order
        for k in subs:
            try:
                kform = symform.sym(k, self.nonzero)
            except Exception:  # noqa: BLE001
                continue
            if kform == form:
                yield k
                continue
            c = _ratio(form, kform)
            if c is None or c == 0 or not c.is_finite:
                continue
            if ctx.sf and c > 0:
                yield k
            elif c == -1:
                yield _call("neg", k)
            else:
                lit = literal(float(c))
                if lit is not None and symform.sym(lit) == c:  # 2/3 stays 2 * (x / 3), not 0.6666667 * x
                    yield A.BinOp("*", lit, k)
