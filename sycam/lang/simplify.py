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

The rules live in :mod:`sycam.lang.rewrite`, the facts they rely on (non-negative, zero, 0-1 values)
and constant folding in :mod:`sycam.lang.facts`, sympy's view of sycam's arithmetic in
:mod:`sycam.lang.symform`.
"""
from __future__ import annotations

from sycam.errors import ProgramError
from sycam.lang import ast as A
from sycam.lang import symform
from sycam.lang import types as T
from sycam.lang.facts import EPS, EXP_CLAMP, MAX_EXPONENT  # noqa: F401 - compared with the kernels by the tests
from sycam.lang.parse import parse
from sycam.lang.pretty import pretty, pretty_expr
from sycam.lang.rewrite import Ctx, Rewriter

MODES = ("exact", "safe", "nonzero")


# ---------------------------------------------------------------- programs


def _once(program: A.Program, mode: str) -> A.Program:
    s = Rewriter(mode)
    lets = []
    for let in program.lets:
        value = s.rewrite(let.value, Ctx())
        lets.append(A.Let(let.name, value, let.pos))
        s.bind(let.name, value)
    body = s.rewrite(program.body, Ctx(sf=True, root=True))
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
