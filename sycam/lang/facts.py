"""Facts about expressions that hold for every input, and constant folding, with the kernels' semantics.

Used by the rewriter (:mod:`sycam.lang.rewrite`): a value that is provably non-negative
(``relu(x) = x`` there), provably zero (``A - A``, ``sum_c(A - A)``), or a 0-1 indicator
(``sign(abs(x))``); a node of literals evaluated as the compiled program evaluates it (float32,
guarded division, clamped ``exp``/``log``/``sqrt``). The language knows nothing of torch: the
kernels' constants are repeated here and compared with :mod:`sycam.kernels` by the tests.
"""
from __future__ import annotations

import math
import struct
from typing import Mapping

from sycam.lang import ast as A
from sycam.lang import symform
from sycam.lang import types as T
from sycam.lang.ops import MAX_EXPONENT as MAX_EXPONENT_OF_POW
from sycam.lang.pretty import fmt_number

EPS = symform.EPS  # sycam.kernels.EPS, the division guard
EXP_CLAMP = 80.0  # sycam.kernels.EXP_CLAMP
MAX_EXPONENT = MAX_EXPONENT_OF_POW  # sycam.kernels.MAX_EXPONENT
MAX_LITERAL_CHARS = 7  # folding keeps literals readable: 0.1 + 0.2 -> 0.3, but 1 / 3 and exp(1) stay

_NONNEG = {"relu", "abs", "sq", "exp", "sqrt", "sigmoid", "norm", "softmax_c"}  # >= 0 whatever x
_ZERO_OF_ZERO = {"relu", "abs", "neg", "sq", "sqrt", "sign", "tanh", "sum_hw", "mean_hw", "max_hw", "sum_c", "mean_c",
                 "max_c", "norm", "zscore", "rescale", "threshold", "winsorize", "percentile"}  # f(0) = 0
_NONNEG_OF_NONNEG = {"sum_hw", "mean_hw", "max_hw", "sum_c", "mean_c", "max_c", "threshold", "winsorize",
                     "percentile", "sign", "tanh"}  # >= 0 where x >= 0


# ---------------------------------------------------------------- constant folding (kernel semantics)


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def literal(x: float) -> A.Num | None:
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


def fold(node: A.Expr) -> A.Num | None:
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
    return None if value is None else literal(value)


# ---------------------------------------------------------------- facts


def nonneg_const(node: A.Expr) -> bool:
    if isinstance(node, A.Num):
        return node.value >= 0
    return isinstance(node, A.Param) and node.lo is not None and node.lo >= 0  # the default lies in the range


def positive_exponent(e: A.Num | A.Param) -> bool:
    if isinstance(e, A.Num):
        return e.value > 0
    return e.lo is not None and e.lo > 0


def _is(node: A.Expr, fn: str) -> bool:
    return isinstance(node, A.Call) and node.fn == fn


def nonneg(node: A.Expr, lets: Mapping[str, A.Expr]) -> bool:
    """Provably >= 0 for every input (finite values)."""
    if isinstance(node, (A.Num, A.Param)):
        return nonneg_const(node)
    if isinstance(node, A.Var):
        return node.name in lets and nonneg(lets[node.name], lets)
    if isinstance(node, A.BinOp):
        return node.op != "-" and nonneg(node.left, lets) and nonneg(node.right, lets)
    if isinstance(node, A.Pow):
        e = node.exponent
        even_or_fraction = isinstance(e, A.Num) and (not float(e.value).is_integer() or int(e.value) % 2 == 0)
        return even_or_fraction or nonneg(node.base, lets)
    if isinstance(node, A.Call):
        if node.fn in _NONNEG:
            return True
        if node.fn in _NONNEG_OF_NONNEG:
            return nonneg(node.args[0], lets)
        if node.fn == "rescale":
            return nonneg_const(node.args[1]) and nonneg_const(node.args[2])
        if node.fn == "max":
            return any(nonneg(a, lets) for a in node.args)
        if node.fn == "min":
            return all(nonneg(a, lets) for a in node.args)
        return False
    if isinstance(node, A.Each):
        return nonneg(node.body, lets)
    if isinstance(node, A.Fuse):
        return nonneg(node.maps, lets) and (node.weights is None or nonneg(node.weights, lets))
    return False


def zero(node: A.Expr, lets: Mapping[str, A.Expr], nonzero: bool = False) -> bool:
    """Provably 0 everywhere (finite values): ``A - A``, ``sum_c(A - A)``, ``0 * x``, ..."""
    if isinstance(node, A.Num):
        return node.value == 0
    if isinstance(node, A.Var):
        return node.name in lets and zero(lets[node.name], lets, nonzero)
    if isinstance(node, A.BinOp):
        if node.op == "*" and (zero(node.left, lets, nonzero) or zero(node.right, lets, nonzero)):
            return True
        if node.op == "/" and zero(node.left, lets, nonzero):
            return True
        if node.op in "+-" and zero(node.left, lets, nonzero) and zero(node.right, lets, nonzero):
            return True
    if isinstance(node, A.Pow) and positive_exponent(node.exponent) and zero(node.base, lets, nonzero):
        return True
    if isinstance(node, A.Call) and node.fn in _ZERO_OF_ZERO and zero(node.args[0], lets, nonzero):
        return True
    if isinstance(node, A.Each):
        return zero(node.body, lets, nonzero)
    if isinstance(node, A.Fuse):
        return zero(node.maps, lets, nonzero)
    if isinstance(node, (A.BinOp, A.Call, A.Pow)):
        try:
            return bool(symform.sym(node, nonzero) == 0)
        except Exception:  # noqa: BLE001 - sympy cannot order some forms; then it proves nothing
            return False
    return False


def indicator(node: A.Expr, lets: Mapping[str, A.Expr]) -> bool:
    """Provably 0 or 1 everywhere: ``sign`` of a non-negative value (``sign(abs(x))``, what
    ``x / x`` becomes)."""
    return _is(node, "sign") and nonneg(node.args[0], lets)  # type: ignore[union-attr]
