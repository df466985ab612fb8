"""Simplify programs: remove redundant pieces while keeping what the program computes as a CAM method.

The search assembles programs from productions and so writes ``mean_hw(G) / mean_hw(G)``,
``A + A``, ``relu(relu(x))``, ``x * 1``, ``neg(neg(x))`` or ``x - x``. :func:`simplify` rewrites a
program's AST to a fixpoint; :func:`simplified_text` renders sympy's canonical form of the result
in sycam's own syntax, for display, when that is shorter. ``let`` bindings, ``each``/``fuse``,
``?params`` (ranges and defaults), ``score`` directives and layer references are kept.

What is kept is the *method*: the final map, ``norm(resize(raw))`` — upsampled (bilinear, weights
summing to 1) and min-max normalised per image. Each rewrite belongs to one of three modes:

``exact`` — the final maps are equal wherever the original's values are finite, up to float
rounding. Division is guarded (``safe_div``: a divisor with ``|b| < 1e-12`` becomes ``±1e-12``, so
``x/0`` is finite and ``0/0 = 0``), so only divisions by a constant with ``|c| >= 1e-12`` count as
exact. The rules:

- identities: ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1``, ``x ^ 1`` -> ``x``;
  ``0 - x``, ``x * -1``, ``x / -1`` -> ``neg(x)``; ``x ^ 0`` -> ``1``; ``x ^ 2`` -> ``sq(x)``;
  ``0 * x``, ``0 / x`` -> ``0``; constant folding with the kernels' semantics, in float32 (the
  literal printed is the shortest one with the same float32 value, so the constant is bit-exact);
- duplicates: ``x + x`` -> ``2 * x``, ``x - x`` -> ``0``, ``x * x`` -> ``sq(x)``, ``max(x, x)``,
  ``min(x, x)`` -> ``x``; ``max(x, 0)`` -> ``relu(x)``;
- signs: ``neg(neg(x))`` -> ``x``, ``abs(neg(x))`` -> ``abs(x)``, ``sq(neg(x))``, ``sq(abs(x))`` ->
  ``sq(x)``, ``x - neg(y)`` -> ``x + y``, ``x + neg(y)``, ``neg(y) + x`` -> ``x - y``,
  ``neg(x) * neg(y)`` -> ``x * y``;
- ``sq(x)``, ``sqrt(x)`` -> ``x`` where ``x`` is 0 or 1 provably (``sign(abs(y))``);
- ``relu(x)``, ``abs(x)`` -> ``x`` where ``x >= 0`` provably (``relu(relu x)``, ``relu(sq x)``,
  ``abs(sq x)``, ``abs(abs x)``, ``relu(norm x)``, ...); ``sqrt(sq(x))`` -> ``abs(x)``,
  ``sq(sqrt(x))`` -> ``relu(x)``; idempotence of ``norm``, ``zscore``, ``sign``;
  ``(x^a)^b`` -> ``x^(ab)`` for non-negative integers (``sq`` counts as ``^2``);
- scale: the final normalisation ignores a positive factor on the whole map, ``norm(c·x) =
  norm(x)`` for ``c > 0``. A *scale-free* position is one where multiplying the value by ``c > 0``
  multiplies the final raw map by a positive factor (or leaves it unchanged): the program's final
  expression; an argument of ``norm``, ``zscore``, ``rescale``, ``sign`` (invariant) anywhere; and,
  below a scale-free node, both factors of ``*``, the numerator of ``/``, the argument of a
  positively homogeneous operator (``relu abs neg sq sqrt``, the reductions, ``threshold``,
  ``winsorize``, ``percentile``, ``pc1``, ``^ e`` with ``e > 0``), the body of ``each`` and the maps
  and weights of ``fuse`` (a constant in an ``each`` body scales every layer alike). There ``c * x``,
  ``x * c``, ``x / c`` -> ``x`` (``neg(x)`` for ``c < 0``) for a literal ``c``. Sums, differences,
  ``max``/``min``, divisors, ``exp``/``log``/``tanh``/``sigmoid``/``softmax_c`` are not
  scale-free: in ``relu(x - 2*y)`` the 2 stays;
- canonical: a sub-expression is replaced by one of its own sub-expressions ``k``, by ``c * k``,
  ``neg(k)`` or a literal, where sympy's canonical form (:mod:`sycam.lang.canon`, seen through
  :mod:`sycam.lang.symform` so that guarded divisions and non-integer powers are opaque) proves
  them equal: ``(A + G) - G`` -> ``A``, ``A * G - G * A`` -> ``0``, ``relu(A + A)`` -> ``relu(A)``.

``safe`` (the default) adds rules that are exact except on sets no real capture reaches:

- ``x / x`` -> ``sign(abs(x))``: equal except where ``0 < |x| < 1e-12`` (there ``safe_div`` gives
  ``|x|/1e-12``). Not ``1``: where ``x = 0`` it is 0, and ``x`` is zero on whole regions for many
  values (``G`` after an inactive ReLU, ``relu(A)``, dead channels), so ``x / x`` is a mask;
- at the final expression only: ``x + s``, ``s + x``, ``x - s`` -> ``x`` for a Scalar ``s`` (one
  number per image; normalisation removes it), ``norm(x)`` -> ``x``: equal except for maps whose
  range is below 1e-6 of their magnitude, which the normalisation reads as constant.

``nonzero`` treats guarded division as exact division (``x / x`` -> ``1``, ``x * y / y`` -> ``x``):
the maps change wherever a divisor is within 1e-12 of zero — for ``mean_hw(G) / mean_hw(G)`` on
exactly-zero (dead) channels. Never the default.

Every accepted rewrite keeps the node's type (kind and layer, as :mod:`sycam.lang.types` infers it),
drops no ``?param`` (each range and default stays) and does not grow the node: ``x + x`` and
``x / x`` may keep their size (``A + A`` -> ``2 * A``), everything else shrinks, so
``size(simplify(p)) <= size(p)``. Inside ``let`` values only context-free rules apply (a binding's
uses may sit in different contexts). ``tests/test_simplify.py`` checks every rule and, on generated
programs run on a small CNN, that the maps stay equal.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Iterator

import sympy as sp

from sycam.errors import ProgramError
from sycam.lang import ast as A
from sycam.lang import symform
from sycam.lang import types as T
from sycam.lang.parse import parse
from sycam.lang.pretty import fmt_number, pretty, pretty_expr

MODES = ("exact", "safe", "nonzero")
EPS = symform.EPS  # sycam.kernels.EPS (the language knows nothing of torch; a test compares them)
EXP_CLAMP = 80.0  # sycam.kernels.EXP_CLAMP
MAX_EXPONENT = T.MAX_EXPONENT
MAX_LITERAL_CHARS = 7  # folding keeps literals readable: 0.1 + 0.2 -> 0.3, but 1 / 3 and exp(1) stay


@dataclass(frozen=True)
class _Ctx:
    """Where a node sits: a scale-free position, the program's final expression, inside each."""

    sf: bool = False
    root: bool = False
    in_each: bool = False


_INVARIANT = {"norm", "zscore", "rescale", "sign"}  # f(c·x) = f(x) for c > 0 (first argument)
_HOMOGENEOUS = {"relu", "abs", "neg", "sq", "sqrt", "sum_hw", "mean_hw", "max_hw", "sum_c", "mean_c", "max_c",
                "threshold", "winsorize", "percentile", "pc1"}  # f(c·x) = c^k f(x), k > 0
_NONNEG = {"relu", "abs", "sq", "exp", "sqrt", "sigmoid", "norm", "softmax_c"}  # >= 0 whatever x
_ZERO_OF_ZERO = {"relu", "abs", "neg", "sq", "sqrt", "sign", "tanh", "sum_hw", "mean_hw", "max_hw", "sum_c", "mean_c",
                 "max_c", "norm", "zscore", "rescale", "threshold", "winsorize", "percentile"}  # f(0) = 0
_NONNEG_OF_NONNEG = {"sum_hw", "mean_hw", "max_hw", "sum_c", "mean_c", "max_c", "threshold", "winsorize",
                     "percentile", "sign", "tanh"}  # >= 0 where x >= 0


# ---------------------------------------------------------------- constant folding (kernel semantics)


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _literal(x: float) -> A.Num | None:
    """The shortest literal with the float32 value of ``x`` (what the compiled program computes),
    or None if it is not finite, beyond float32 or unreadably long."""
    if not math.isfinite(x) or abs(x) > T.MAX_CONSTANT:
        return None
    try:
        target = _f32(x)
    except OverflowError:
        return None
    for digits in range(1, 10):
        text = f"{target:.{digits}g}"
        if _f32(float(text)) == target:
            break
    value = float(text)
    return A.Num(value) if len(fmt_number(value).lstrip("-")) <= MAX_LITERAL_CHARS else None


def _safe_den(b: float) -> float:
    return b if abs(b) >= EPS else (-EPS if b < 0 else EPS)


def _unary(fn: str, x: float) -> float | None:
    if fn == "relu":
        return max(x, 0.0)
    if fn == "abs":
        return abs(x)
    if fn == "neg":
        return -x
    if fn == "exp":
        return math.exp(min(x, EXP_CLAMP))
    if fn == "log":
        return math.log(max(x, EPS))
    if fn == "sqrt":
        return math.sqrt(max(x, 0.0))
    if fn == "sq":
        return x * x
    if fn == "sigmoid":
        return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0
    if fn == "tanh":
        return math.tanh(x)
    if fn == "sign":
        return float((x > 0) - (x < 0))
    return None


def _power(x: float, e: float) -> float | None:
    if abs(e) > MAX_EXPONENT:
        return None
    out = x ** abs(int(e)) if float(e).is_integer() else abs(x) ** abs(e)
    return 1.0 / _safe_den(out) if e < 0 else out


def _fold(node: A.Expr) -> A.Num | None:
    """A node whose operands are all literals, evaluated (float32, as the kernels do)."""
    try:
        if isinstance(node, A.BinOp) and isinstance(node.left, A.Num) and isinstance(node.right, A.Num):
            a, b = _f32(node.left.value), _f32(node.right.value)
            value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                     "/": lambda: a / _safe_den(b)}[node.op]()
        elif isinstance(node, A.Pow) and isinstance(node.base, A.Num) and isinstance(node.exponent, A.Num):
            value = _power(_f32(node.base.value), node.exponent.value)
        elif isinstance(node, A.Call) and node.args and all(isinstance(a, A.Num) for a in node.args):
            vals = [_f32(a.value) for a in node.args]  # type: ignore[union-attr]
            if node.fn in ("max", "min"):
                value = max(vals) if node.fn == "max" else min(vals)
            elif len(vals) == 1:
                value = _unary(node.fn, vals[0])
            else:
                return None
        else:
            return None
    except (OverflowError, ValueError, ZeroDivisionError):
        return None
    return None if value is None else _literal(value)


# ---------------------------------------------------------------- helpers


def _is(node: A.Expr, fn: str) -> bool:
    return isinstance(node, A.Call) and node.fn == fn


def _num(node: A.Expr, value: float | None = None) -> bool:
    return isinstance(node, A.Num) and (value is None or node.value == value)


def _call(fn: str, *args: A.Expr) -> A.Call:
    return A.Call(fn, tuple(args))


def _nonneg_const(node: A.Expr) -> bool:
    if isinstance(node, A.Num):
        return node.value >= 0
    return isinstance(node, A.Param) and node.lo is not None and node.lo >= 0  # the default lies in the range


def _positive_exponent(e: A.Num | A.Param) -> bool:
    if isinstance(e, A.Num):
        return e.value > 0
    return e.lo is not None and e.lo > 0


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


class _Simplifier:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.nonzero = mode == "nonzero"
        self.lets: dict[str, A.Expr] = {}  # name -> value as written (simplified)
        self.env: dict[str, A.Expr] = {}  # name -> value with earlier lets inlined
        self._reset()

    def _reset(self) -> None:
        self._inlined: dict[A.Expr, A.Expr] = {}
        self._types: dict[tuple[A.Expr, bool], object] = {}
        self._memo: dict[tuple[A.Expr, _Ctx], A.Expr] = {}

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

    def nonneg(self, node: A.Expr) -> bool:
        """Provably >= 0 for every input (finite values)."""
        if isinstance(node, (A.Num, A.Param)):
            return _nonneg_const(node)
        if isinstance(node, A.Var):
            return node.name in self.lets and self.nonneg(self.lets[node.name])
        if isinstance(node, A.BinOp):
            return node.op != "-" and self.nonneg(node.left) and self.nonneg(node.right)
        if isinstance(node, A.Pow):
            e = node.exponent
            even_or_fraction = isinstance(e, A.Num) and (not float(e.value).is_integer() or int(e.value) % 2 == 0)
            return even_or_fraction or self.nonneg(node.base)
        if isinstance(node, A.Call):
            if node.fn in _NONNEG:
                return True
            if node.fn in _NONNEG_OF_NONNEG:
                return self.nonneg(node.args[0])
            if node.fn == "rescale":
                return _nonneg_const(node.args[1]) and _nonneg_const(node.args[2])
            if node.fn == "max":
                return any(self.nonneg(a) for a in node.args)
            if node.fn == "min":
                return all(self.nonneg(a) for a in node.args)
            return False
        if isinstance(node, A.Each):
            return self.nonneg(node.body)
        if isinstance(node, A.Fuse):
            return self.nonneg(node.maps) and (node.weights is None or self.nonneg(node.weights))
        return False

    def zero(self, node: A.Expr) -> bool:
        """Provably 0 everywhere (finite values): ``A - A``, ``sum_c(A - A)``, ``0 * x``, ..."""
        if isinstance(node, A.Num):
            return node.value == 0
        if isinstance(node, A.Var):
            return node.name in self.lets and self.zero(self.lets[node.name])
        if isinstance(node, A.BinOp):
            if node.op == "*" and (self.zero(node.left) or self.zero(node.right)):
                return True
            if node.op == "/" and self.zero(node.left):
                return True
            if node.op in "+-" and self.zero(node.left) and self.zero(node.right):
                return True
        if isinstance(node, A.Pow) and _positive_exponent(node.exponent) and self.zero(node.base):
            return True
        if isinstance(node, A.Call) and node.fn in _ZERO_OF_ZERO and self.zero(node.args[0]):
            return True
        if isinstance(node, A.Each):
            return self.zero(node.body)
        if isinstance(node, A.Fuse):
            return self.zero(node.maps)
        if isinstance(node, (A.BinOp, A.Call, A.Pow)):
            try:
                return bool(symform.sym(node, self.nonzero) == 0)
            except Exception:  # noqa: BLE001 - sympy cannot order some forms; then it proves nothing
                return False
        return False

    def indicator(self, node: A.Expr) -> bool:
        """Provably 0 or 1 everywhere: ``sign`` of a non-negative value (``sign(abs(x))``, what
        ``x / x`` becomes)."""
        return _is(node, "sign") and self.nonneg(node.args[0])  # type: ignore[union-attr]

    # -------------------------------------------------------------- traversal
    def rewrite(self, node: A.Expr, ctx: _Ctx) -> A.Expr:
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

    def _kid_ctx(self, node: A.Expr, i: int, ctx: _Ctx) -> _Ctx:
        plain = _Ctx(False, False, ctx.in_each)
        same = _Ctx(ctx.sf, False, ctx.in_each)
        if isinstance(node, A.BinOp):
            return same if node.op == "*" or (node.op == "/" and i == 0) else plain
        if isinstance(node, A.Pow):
            return same if _positive_exponent(node.exponent) else plain
        if isinstance(node, A.Call) and i == 0:
            if node.fn in _INVARIANT:
                return _Ctx(True, False, ctx.in_each)
            return same if node.fn in _HOMOGENEOUS else plain
        if isinstance(node, A.Each):
            return _Ctx(ctx.sf, False, True)
        if isinstance(node, A.Fuse):
            return same
        return plain

    def _children(self, node: A.Expr, ctx: _Ctx) -> A.Expr:
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

    def _step(self, node: A.Expr, ctx: _Ctx) -> A.Expr | None:
        for cand, same_size in self._rules(node, ctx):
            if self._ok(node, cand, ctx, same_size):
                return cand
        if isinstance(node, A.BinOp):  # where sums and products cancel (calls: the rules above)
            for cand in self._canonical(node, ctx):
                if self._ok(node, cand, ctx, False):
                    return cand
        return None

    def _ok(self, old: A.Expr, new: A.Expr | None, ctx: _Ctx, same_size: bool) -> bool:
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
    def _rules(self, node: A.Expr, ctx: _Ctx) -> Iterator[tuple[A.Expr, bool]]:
        folded = _fold(node)
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
        if op in "+-" and self.zero(y):
            yield x, False
        if op == "+" and self.zero(x):
            yield y, False
        if op == "-" and self.zero(x):
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
        if fn in ("relu", "abs") and self.nonneg(x):
            yield x
        if fn == "abs" and _is(x, "neg"):
            yield _call("abs", x.args[0])  # type: ignore[union-attr]
        if fn in ("sq", "sqrt") and self.indicator(x):
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

    def _root(self, node: A.Expr, ctx: _Ctx) -> Iterator[A.Expr]:
        """The final expression: a per-image constant added or subtracted goes, so does a norm."""
        if _is(node, "norm"):
            yield node.args[0]  # type: ignore[union-attr]
        if isinstance(node, A.BinOp) and node.op in "+-":
            pairs = [(node.left, node.right)] + ([(node.right, node.left)] if node.op == "+" else [])
            for keep, drop in pairs:
                if getattr(self.type_of(drop, ctx.in_each), "kind", None) == "Scalar":
                    yield keep

    def _canonical(self, node: A.Expr, ctx: _Ctx) -> Iterator[A.Expr]:
        """Smaller forms sympy proves equal: a sub-expression ``k``, ``c * k``, ``neg(k)``, a literal."""
        try:
            form = symform.sym(node, self.nonzero)
        except Exception:  # noqa: BLE001 - sympy cannot order some forms; then it proves nothing
            return
        if form.is_Number:
            lit = _literal(float(form)) if form.is_finite and form.is_real else None
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
                lit = _literal(float(c))
                if lit is not None and symform.sym(lit) == c:  # 2/3 stays 2 * (x / 3), not 0.6666667 * x
                    yield A.BinOp("*", lit, k)


# ---------------------------------------------------------------- programs


def _once(program: A.Program, mode: str) -> A.Program:
    s = _Simplifier(mode)
    lets = []
    for let in program.lets:
        value = s.rewrite(let.value, _Ctx())
        lets.append(A.Let(let.name, value, let.pos))
        s.bind(let.name, value)
    body = s.rewrite(program.body, _Ctx(sf=True, root=True))
    return A.Program(body, tuple(lets), program.score)


def _fixpoint(program: A.Program, mode: str) -> A.Program:
    if mode not in MODES:
        raise ValueError(f"simplify: mode must be one of {', '.join(MODES)}, got {mode!r}")
    out = program
    for _ in range(8):
        new = _once(out, mode)
        if new == out:
            break
        out = new
    return out


_CACHE: dict[tuple[A.Program, str], A.Program] = {}
_CACHE_SIZE = 4096


def simplify(program: A.Program, mode: str = "safe") -> A.Program:
    """``program`` without redundant pieces, computing the same CAM method (see the module doc for
    what ``mode`` allows: ``"exact"``, ``"safe"`` (default) or ``"nonzero"``).

    The result type-checks; should a rewrite ever break that (a bug), the program comes back as
    given rather than failing the caller (the tests call the unchecked rewriter)."""
    key = (program, mode)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    out = _fixpoint(program, mode)
    try:
        T.check(out)
    except ProgramError:  # pragma: no cover - a bug in a rule; tests/test_simplify.py guards it
        out = program
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = _CACHE[(out, mode)] = out  # a simplified program is its own simplification
    return out


# ---------------------------------------------------------------- display


def _cost(exprs: list[A.Expr]) -> tuple[int, int]:
    """(AST nodes, characters without spaces): what "shorter" means."""
    return sum(A.size(e) for e in exprs), sum(len(pretty_expr(e).replace(" ", "")) for e in exprs)


def _assemble(program: A.Program, pieces: list[A.Expr]) -> A.Program:
    lets = tuple(A.Let(let.name, v) for let, v in zip(program.lets, pieces))
    return A.Program(pieces[-1], lets, program.score)


def _params(program: A.Program) -> dict[str, tuple]:
    return {k: (p.lo, p.hi, p.default) for k, p in A.params(A.inline_lets(program)).items()}


def _valid(program: A.Program, params: dict[str, tuple]) -> bool:
    try:
        T.check(program)
    except ProgramError:
        return False
    return _params(program) == params


def _rendered(expr: A.Expr, table: dict[str, object], nonzero: bool, root: bool) -> A.Expr | None:
    try:
        form = symform.sym(expr, nonzero)
        if root:  # the final expression: a positive factor on the whole map does not count
            coeff, rest = form.as_coeff_Mul()
            if coeff.is_Number and coeff > 0:
                form = rest
        return symform.from_sympy(form, table)
    except Exception:  # noqa: BLE001 - a form sympy cannot order or sycam cannot spell: not shown
        return None


def simplified_text(program: A.Program, mode: str = "safe") -> str:
    """Sympy's canonical form of ``simplify(program, mode)``, in sycam's own syntax, for display.

    Multi-layer programs included: ``each``/``fuse``, ``let`` names, ``?params`` with their ranges
    and defaults and the ``score`` directive are written as a program writes them, and each ``let``
    value and the final expression are rendered separately. Returned only when it has fewer AST
    nodes than the simplified program (or as many and fewer characters); otherwise ``""``. The
    text always parses and type-checks, with the same parameters. Equalities are sycam's (guarded
    division and non-integer powers are not cancelled, see :mod:`sycam.lang.symform`)."""
    base = simplify(program, mode)
    pieces = [let.value for let in base.lets] + [base.body]
    table = symform.symbol_table(*pieces)
    params = _params(base)
    best = list(pieces)
    for i, expr in enumerate(pieces):
        new = _rendered(expr, table, mode == "nonzero", root=i == len(pieces) - 1)
        if new is None or _cost([new]) >= _cost([expr]):
            continue
        trial = best[:i] + [new] + best[i + 1:]
        if _valid(_assemble(base, trial), params):
            best = trial
    if best == pieces:
        return ""
    tidy = symform.first_specs(best)
    if _valid(_assemble(base, tidy), params):
        best = tidy
    text = pretty(_assemble(base, best))
    try:
        again = parse(text)
    except ProgramError:  # pragma: no cover - pretty always parses
        return ""
    if not _valid(again, params) or _cost(best) >= _cost(pieces):
        return ""
    return text
