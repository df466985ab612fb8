"""Fuzzing the CAM language: odd program texts get sycam's own located errors, quickly; well-typed
programs round-trip, compile and run to finite maps in [0, 1] (or a ProgramRuntimeError).

Properties (hypothesis):

- *texts*: random unicode, characters and tokens deleted / inserted / replaced / duplicated in the
  reference programs and in generated well-typed programs, strings drawn from the grammar itself
  (``hypothesis.extra.lark``), very long and deeply nested inputs. ``parse`` + ``check`` either
  accept, or raise a :class:`~sycam.errors.ProgramError` carrying a line and a column inside the
  text (only resource limits -- a text over ``MAX_SOURCE_CHARS`` or nested too deeply -- may come
  without a location, and then as a :class:`~sycam.errors.ProgramSyntaxError`). Never another
  exception, never more than ``CALL_LIMIT_S`` seconds per call (an interval timer turns a hang
  into a failure instead of a stuck CI job).
- *well-typed programs*: built from the operator table (:mod:`sycam.lang.ops`) following the typing
  rules of :mod:`sycam.lang.types` (layers, selections, fuse, lets, score directives, ?params). The
  type checker accepts each with type Map; ``parse(pretty(p)) == p``; the canonical form is
  computed in bounded time; ``Explainer`` on a tiny random CNN returns finite (B, H, W) maps in
  [0, 1] or raises :class:`~sycam.errors.ProgramRuntimeError` -- never NaN, never another exception.

CI runs ``SYCAM_FUZZ_EXAMPLES`` examples per property (default 150; a tenth of that for the
grammar-driven strings, whose generation is slow; the whole file takes 20-35 s on two shared
cores). A longer campaign, e.g. 5000 examples per property (about 7 minutes), with statistics of
the outcomes (accepted / rejected by kind / finite maps / ProgramRuntimeError)::

    SYCAM_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_fuzz.py -q -p no:cacheprovider \
        --hypothesis-show-statistics -k "accepted_or_located or generated_programs"

The generator steps around known, xfail-tracked bugs while the flags ``FUSED_SELECTIONS_MAY_DIFFER``
and ``MAX_MIN_OF_EQUAL_ARGS`` are False; set them to True once those bugs are fixed.

A failing example is printed by hypothesis (and replayed first on the next run from the local
``.hypothesis/`` database); turn it into an explicit regression test before fixing the bug.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, find, given, settings
from hypothesis.errors import NoSuchExample
from hypothesis import strategies as st
from torch import nn

from sycam.errors import ProgramError, ProgramRuntimeError, ProgramSyntaxError, SycamError
from sycam.explainer import Explainer
from sycam.lang import ast as A
from sycam.lang import check, parse, pretty
from sycam.lang.canon import canonical, canonical_text
from sycam.lang.ops import FUSE_GRIDS, FUSE_MODES, OPS
from sycam.lang.parse import MAX_SOURCE_CHARS, grammar_text

EXAMPLES = int(os.environ.get("SYCAM_FUZZ_EXAMPLES", "150"))
CALL_LIMIT_S = 2.0  # one parse + check of a program-sized text (the budget for interactive use)
LONG_LIMIT_S = 10.0  # one parse + check of a text up to MAX_SOURCE_CHARS (measured: ~1 s on one core)
RUN_LIMIT_S = 10.0  # one compile + capture + evaluation on the tiny CNN (Score-CAM/Ablation included)
PROGRAM_DIR = Path(__file__).resolve().parents[1] / "sycam" / "programs"
REFERENCE_TEXTS = sorted(p.read_text(encoding="utf-8") for p in PROGRAM_DIR.glob("*.cam"))

# The suite (and CI) draws the same examples every run: a property test that fails by chance on
# one run in ten is a red CI nobody can reproduce. SYCAM_FUZZ_EXPLORE=1 draws fresh examples (and
# keeps failures in .hypothesis/ for replay), for fuzzing sessions.
EXPLORE = bool(os.environ.get("SYCAM_FUZZ_EXPLORE"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing is asserted per call below, with a margin for a loaded 2-core machine
    derandomize=not EXPLORE,
    database=None if not EXPLORE else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------- time limits


class CallTimeout(AssertionError):
    """A call ran past its limit (a hang, as far as users are concerned)."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Fail if the block runs longer than ``seconds``; interrupt it (SIGALRM, POSIX main thread)
    when it runs far longer, so that a hang fails the test instead of stalling the suite."""
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    previous = None
    if use_alarm:
        def on_alarm(signum, frame):  # noqa: ANN001 - signal handler protocol
            raise CallTimeout(f"{what}: still running after {5 * seconds:.0f} s (a hang)")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 5 * seconds)
    start = time.perf_counter()
    try:
        yield
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"{what} took {elapsed:.2f} s (limit {seconds} s)"


def _event(what: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def _limit_message(err: ProgramSyntaxError) -> bool:
    """Resource limits, the only errors allowed without a location."""
    return bool(re.search(r"characters long; the limit is|nested too deeply", err.message))


def parse_and_check(text: str, limit: float = CALL_LIMIT_S) -> A.Program | None:
    """``check(parse(text))`` under the time limit: the program, or None for a clean ProgramError.

    Any other exception propagates (and fails the calling test); a ProgramError must locate the
    problem inside the text, except for resource limits.
    """
    with time_limit(limit, f"parse+check of a {len(text)}-character text"):
        try:
            program = parse(text)
            check(program)
            _event("accepted")
            return program
        except ProgramError as err:
            rendered = str(err)  # rendering the caret line must not fail either
            if err.line is None or err.column is None:
                assert isinstance(err, ProgramSyntaxError) and _limit_message(err), (
                    f"{type(err).__name__} without line/column for {text[:200]!r}: {rendered}")
                _event("rejected: resource limit")
                return None
            lines = text.splitlines() or [""]
            assert 1 <= err.line <= len(lines) + 1, f"line {err.line} outside the text ({len(lines)} lines): {rendered}"
            assert err.column >= 1, rendered
            assert err.message and "Traceback" not in rendered
            leak = re.search(r"__ANON\w*|<END-OF-FILE>|\$END", err.message)
            assert not leak or leak.group(0) in text, f"lark internals leak: {err.message}"
            _event(f"rejected: {type(err).__name__}")
            return None


# ---------------------------------------------------------------------------- a well-typed program generator
#
# Types (sycam.lang.types): T Tensor, C Channels, M Map, S Scalar at a layer "context"; LM / LS are
# Layers<Map> / Layers<Scalar> over one selection. Values of different layers never meet except
# through fuse(...), so every per-layer subtree uses one context: a bare terminal (the default
# layer; the current layer inside each) or one explicit layer reference.

UNARY = [n for n, s in OPS.items() if s.family == "elementwise"]
BINARY_OPS = ["+", "-", "*", "/"]
BINARY_FNS = [n for n, s in OPS.items() if s.family == "binary"]  # max, min
REDUCE_HW = [n for n, s in OPS.items() if s.family == "reduce_hw"]
REDUCE_C = [n for n, s in OPS.items() if s.family == "reduce_c"]
AXIS_PLAIN = ["norm", "zscore"]

# the tiny CNN's layers: conv1 (8x8), conv2 (4x4, after a stride-2 conv), conv3 (4x4); act2 is a ReLU
LAYER_REFS: list[A.LayerRef | None] = [None, A.LayerRef(index=-1), A.LayerRef(index=0), A.LayerRef(name="conv2"),
                                       A.LayerRef(name="act2")]
SELECTIONS: list[A.Selection] = [A.SelNamed("convs"), A.SelNamed("last"), A.SelNamed("stages"),
                                 A.SelSlice(-2, None, None), A.SelSlice(None, None, 2),
                                 A.SelList((A.LayerRef(index=0), A.LayerRef(name="conv3"))),
                                 A.SelList((A.LayerRef(name="act2"),))]
PARAMS = {"p": A.Param("p", 0.0, 100.0, 90.0), "q": A.Param("q", 0.0, 1.0, 0.5), "r": A.Param("r", None, None, 2.0)}
FUSED = "fused"
# Known bugs the generator steps around until they are fixed (each has an xfail test below; set the
# flag to True when its test passes, so that the fuzzer explores that corner again):
FUSED_SELECTIONS_MAY_DIFFER = False  # a language rule, not a bug: maps fused to the finest grids of different
# selections have different shapes, so combining them is a type error (tested below); the generator keeps to one
MAX_MIN_OF_EQUAL_ARGS = True  # max(x, x) / min(x, x): the canonical form crashes or is garbage
# ... and the round-trip property tolerates (and counts) this one known failure signature of the
# canonical form, which no simple generator rule avoids:
CANON_NOT_COMPARABLE = re.compile(r"The argument '.*' is not comparable")
CANON_COMPARABILITY_FIXED = True  # abs(max(x, relu(1))): sympy's Max cannot order an operator of a number


def numbers() -> st.SearchStrategy[A.Num]:
    values = st.sampled_from([0.0, 1.0, 2.0, 0.5, -1.0, 3.0, 1e-3, 10.0, -2.5]) | st.floats(-100, 100).map(lambda v: round(v, 3))
    return values.map(A.Num)


def constants() -> st.SearchStrategy[A.Num | A.Param]:
    return numbers() | st.sampled_from([PARAMS["q"], PARAMS["r"]])


def percents() -> st.SearchStrategy[A.Num | A.Param]:
    return st.sampled_from([0.0, 10.0, 50.0, 90.0, 100.0]).map(A.Num) | st.floats(0, 100).map(lambda v: A.Num(round(v, 2))) \
        | st.just(PARAMS["p"])


def exponents() -> st.SearchStrategy[A.Num | A.Param]:
    return st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]).map(A.Num) | st.sampled_from([PARAMS["q"], PARAMS["r"]])


class Ctx:
    """Where a subtree lives: its layer (a LayerRef, None for bare, or FUSED with a grid), whether it
    is inside each(...), and the remaining depth budget."""

    def __init__(self, layer: A.LayerRef | str | None, in_each: bool, depth: int, grid: str = "finest",
                 fused_sel: A.Selection | None = None) -> None:
        self.layer, self.in_each, self.depth, self.grid = layer, in_each, depth, grid
        self.fused_sel = fused_sel  # the one selection of every fuse in this subtree (see FUSED_SELECTIONS_MAY_DIFFER)

    def down(self) -> Ctx:
        return Ctx(self.layer, self.in_each, self.depth - 1, self.grid, self.fused_sel)

    def at(self, layer: A.LayerRef | str | None, grid: str = "finest") -> Ctx:
        return Ctx(layer, self.in_each, self.depth - 1, grid)


def _axis(draw: st.DrawFn, x: A.Expr, hw: bool = False) -> A.Expr:
    """A natural-axis operator on ``x``; with ``hw`` (a Tensor or a Map) also the per-channel threshold_hw."""
    fn = draw(st.sampled_from(["norm", "zscore", "winsorize", "threshold", "rescale", "topk_pct"] + (["threshold_hw"] if hw else [])))
    if fn in AXIS_PLAIN:
        return A.Call(fn, (x,))
    if fn == "rescale":
        return A.Call(fn, (x, draw(constants()), draw(constants())))
    return A.Call(fn, (x, draw(percents())))


def _binop(draw: st.DrawFn, a: A.Expr, b: A.Expr) -> A.Expr:
    if draw(st.booleans()):
        a, b = b, a
    if draw(st.integers(0, 4)) == 0 and (MAX_MIN_OF_EQUAL_ARGS or canonical(a) != canonical(b)):
        return A.Call(draw(st.sampled_from(BINARY_FNS)), (a, b))
    return A.BinOp(draw(st.sampled_from(BINARY_OPS)), a, b)


def _scalar_ctx(draw: st.DrawFn, ctx: Ctx) -> Ctx:
    """A context for a per-layer value that is reduced to a Scalar: any layer at the top level,
    only the current layer inside each (explicit layers there would be a different layer)."""
    if ctx.in_each:
        return ctx.at(None)
    return ctx.at(draw(st.sampled_from(LAYER_REFS)))


@st.composite
def gen(draw: st.DrawFn, ty: str, ctx: Ctx, sel: A.Selection | None = None) -> A.Expr:
    """A well-typed expression of type ``ty`` in ``ctx``."""
    leaf = ctx.depth <= 0
    if ty == "T":
        term = A.Terminal(draw(st.sampled_from("AG")), None if ctx.layer is None else ctx.layer)  # type: ignore[arg-type]
        if leaf:
            return term
        k = draw(st.integers(0, 8))
        if k <= 1:
            return term
        if k == 2:
            return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("T", ctx.down())),))
        if k == 3:
            other = draw(st.sampled_from(["T", "C", "M", "S"]))
            return _binop(draw, draw(gen("T", ctx.down())), draw(gen(other, ctx.down())))
        if k == 4:  # Channels with Map broadcast to a Tensor
            return _binop(draw, draw(gen("C", ctx.down())), draw(gen("M", ctx.down())))
        if k == 5:
            return A.Call("softmax_c", (draw(gen("T", ctx.down())),))
        if k == 6:
            return A.Pow(draw(gen("T", ctx.down())), draw(exponents()))
        return _axis(draw, draw(gen("T", ctx.down())), hw=True)
    if ty == "C":
        k = draw(st.integers(0, 1 if leaf else 7))
        if k == 0:
            return A.Call(draw(st.sampled_from(REDUCE_HW)), (A.Terminal(draw(st.sampled_from("AG")), ctx.layer),))  # type: ignore[arg-type]
        if k == 1:
            return A.Terminal(draw(st.sampled_from("SD")), ctx.layer)  # type: ignore[arg-type]
        if k == 2:
            return A.Call(draw(st.sampled_from(REDUCE_HW)), (draw(gen("T", ctx.down())),))
        if k == 3:
            return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("C", ctx.down())),))
        if k == 4:
            return _binop(draw, draw(gen("C", ctx.down())), draw(gen(draw(st.sampled_from(["C", "S"])), ctx.down())))
        if k == 5:
            return A.Call("softmax_c", (draw(gen("C", ctx.down())),))
        if k == 6:
            return A.Pow(draw(gen("C", ctx.down())), draw(exponents()))
        if k == 7 and draw(st.booleans()):  # mutual information of each channel with a Map (the image, or one of any layer)
            other = A.Terminal("X") if draw(st.booleans()) else draw(gen("M", ctx.at(draw(st.sampled_from(LAYER_REFS)))))
            return A.Call("mi", (draw(gen("T", ctx.down())), other))
        return _axis(draw, draw(gen("C", ctx.down())))
    if ty == "S":
        k = draw(st.integers(0, 2 if leaf else 9))
        if k == 0:
            return draw(numbers())
        if k == 1:
            return draw(st.sampled_from(list(PARAMS.values())))
        if k == 2:
            return A.Terminal("Y")
        if k == 3:
            sub = _scalar_ctx(draw, ctx)
            return A.Call(draw(st.sampled_from(REDUCE_HW)), (draw(gen("M", sub)),))
        if k == 4:
            sub = _scalar_ctx(draw, ctx)
            return A.Call(draw(st.sampled_from(REDUCE_C)), (draw(gen("C", sub)),))
        if k == 5:
            if not ctx.in_each and draw(st.booleans()):  # along the layers of a selection
                s = draw(st.sampled_from(SELECTIONS))
                return A.Call("percentile", (draw(gen("LS", ctx.down(), s)), draw(percents())))
            sub = _scalar_ctx(draw, ctx)
            return A.Call("percentile", (draw(gen(draw(st.sampled_from(["M", "C", "T"])), sub)), draw(percents())))
        if k == 6:
            return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("S", ctx.down())),))
        if k == 7:
            return A.Pow(draw(gen("S", ctx.down())), draw(exponents()))
        if k == 8 and draw(st.booleans()):  # re-scoring the input masked by a map
            return A.Call(draw(st.sampled_from(["confidence", "gain"])), (draw(gen("M", _scalar_ctx(draw, ctx))),))
        return _binop(draw, draw(gen("S", ctx.down())), draw(gen("S", ctx.down())))
    if ty == "M":
        if ctx.layer == FUSED:
            k = draw(st.integers(0, 0 if leaf else 5))
            if k <= 1:
                same = ctx.fused_sel is not None and not FUSED_SELECTIONS_MAY_DIFFER and ctx.grid == "finest"
                maps = draw(gen("LM", ctx.at(None), ctx.fused_sel if same else draw(st.sampled_from(SELECTIONS))))
                sel = _selection_of(maps)
                weights = draw(st.none() | gen("LS", ctx.at(None), sel))
                return A.Fuse(maps, weights, draw(st.sampled_from(FUSE_MODES)), ctx.grid)
            if k == 2:
                if ctx.grid == "input" and draw(st.booleans()):  # the image lies on the input grid
                    return A.Terminal("X")
                return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("M", ctx.down())),))
            if k == 3:
                return _binop(draw, draw(gen("M", ctx.down())), draw(gen(draw(st.sampled_from(["M", "S"])), ctx.down())))
            return _axis(draw, draw(gen("M", ctx.down())))
        k = draw(st.integers(0, 0 if leaf else 7))
        if k == 0:
            if draw(st.integers(0, 4)) == 0:
                return A.Terminal(draw(st.sampled_from(["R", "R1"])), ctx.layer)  # type: ignore[arg-type]
            return A.Call(draw(st.sampled_from(REDUCE_C)), (A.Terminal(draw(st.sampled_from("AG")), ctx.layer),))  # type: ignore[arg-type]
        if k == 1:
            return A.Call(draw(st.sampled_from(REDUCE_C)), (draw(gen("T", ctx.down())),))
        if k == 2:
            return A.Call("pc1", (draw(gen("T", ctx.down())),))
        if k == 3:
            return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("M", ctx.down())),))
        if k == 4 and draw(st.integers(0, 2)) == 0:  # per image the map with the larger key
            return A.Call("select_max", (draw(gen("S", ctx.down())), draw(gen("M", ctx.down())), draw(gen("S", ctx.down())),
                                         draw(gen("M", ctx.down()))))
        if k in (4, 5):
            return _binop(draw, draw(gen("M", ctx.down())), draw(gen(draw(st.sampled_from(["M", "S"])), ctx.down())))
        if k == 6:
            return A.Pow(draw(gen("M", ctx.down())), draw(exponents()))
        return _axis(draw, draw(gen("M", ctx.down())), hw=True)
    assert sel is not None and not ctx.in_each, "per-layer values exist only at the top level"
    if ty == "LM":
        k = draw(st.integers(0, 0 if leaf else 5))
        if k <= 1:
            return A.Each(sel, draw(gen("M", Ctx(None, True, ctx.depth - 1))))
        if k == 2:
            return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("LM", ctx.down(), sel)),))
        if k == 3:
            return _binop(draw, draw(gen("LM", ctx.down(), sel)), draw(gen("S", ctx.down())))
        if k == 4:
            return _binop(draw, draw(gen("LM", ctx.down(), sel)), draw(gen(draw(st.sampled_from(["LM", "LS"])), ctx.down(), sel)))
        return _axis(draw, draw(gen("LM", ctx.down(), sel)))
    if ty == "LS":
        k = draw(st.integers(0, 0 if leaf else 5))
        if k <= 1:
            return A.Each(sel, draw(gen("S", Ctx(None, True, ctx.depth - 1))))
        if k == 2:
            return A.Call(draw(st.sampled_from(UNARY)), (draw(gen("LS", ctx.down(), sel)),))
        if k == 3:
            return _binop(draw, draw(gen("LS", ctx.down(), sel)), draw(gen(draw(st.sampled_from(["LS", "S"])), ctx.down(), sel)))
        return _axis(draw, draw(gen("LS", ctx.down(), sel)))  # along the layers
    raise AssertionError(f"unknown type {ty}")


def _selection_of(node: A.Expr) -> A.Selection:
    """The selection of a Layers<...> expression, as the type checker infers it: not merely its
    first each, which may sit under a reduction along other layers (``max(percentile(each(last, Y),
    ?p), each(convs, sum_c(A)))`` is over ``convs``)."""
    from sycam.lang.types import LayersType, _Checker, _selection

    typ = _Checker(None).infer(node, False)
    assert isinstance(typ, LayersType), typ
    for n in A.walk(node):
        if isinstance(n, A.Each) and _selection(n.selection) == typ.selection:
            return n.selection
    raise AssertionError("a Layers value without each(...)")


def _replaceable(node: A.Expr) -> list[A.Expr]:
    """Sub-expressions a let can bind: not constants (exponents and constant arguments must stay
    literal) and not the whole body."""
    out = []
    for n in A.walk(node):
        if n is not node and not isinstance(n, (A.Num, A.Param)):
            out.append(n)
    return out


def _substitute(node: A.Expr, target: A.Expr, var: A.Var) -> A.Expr:
    """``node`` with the one sub-expression ``target`` (by identity) replaced by ``var``."""
    if node is target:
        return var
    if isinstance(node, A.BinOp):
        return A.BinOp(node.op, _substitute(node.left, target, var), _substitute(node.right, target, var))
    if isinstance(node, A.Pow):
        return A.Pow(_substitute(node.base, target, var), node.exponent)
    if isinstance(node, A.Call):
        return A.Call(node.fn, tuple(_substitute(a, target, var) for a in node.args))
    if isinstance(node, A.Each):
        return A.Each(node.selection, _substitute(node.body, target, var))
    if isinstance(node, A.Fuse):
        weights = None if node.weights is None else _substitute(node.weights, target, var)
        return A.Fuse(_substitute(node.maps, target, var), weights, node.mode, node.grid)
    return node


@st.composite
def programs(draw: st.DrawFn, max_depth: int = 4) -> A.Program:
    """A well-typed program: a Map at a layer or a fused Map, optional lets (sub-expressions bound
    by name; lets are macros, so a bare A in a binding means the layer where it is used) and an
    optional score directive."""
    depth = draw(st.integers(1, max_depth))
    layer = draw(st.sampled_from(LAYER_REFS + [FUSED, FUSED]))
    body = draw(gen("M", Ctx(layer, False, depth, draw(st.sampled_from(FUSE_GRIDS)), draw(st.sampled_from(SELECTIONS)))))
    lets: list[A.Let] = []
    for i in range(draw(st.integers(0, 2))):
        spots = _replaceable(body)
        if not spots:
            break
        target = draw(st.sampled_from(spots))
        name = f"v{i}"
        body = _substitute(body, target, A.Var(name))
        # the bound sub-expression may use earlier bindings, so it goes after them
        lets.append(A.Let(name, target))
    score = draw(st.none() | st.sampled_from([A.ScoreSpec("logit"), A.ScoreSpec("prob"), A.ScoreSpec("finer", 2, 0.6),
                                              A.ScoreSpec("finer", 3, 1.0)]))
    return A.Program(body=body, lets=tuple(lets), score=score)


# ---------------------------------------------------------------------------- mutations


TOKENS = sorted(set(OPS) | {"each", "fuse", "let", "score", "finer", "logit", "prob", "convs", "last", "stages", "sum",
                            "mean", "max", "prod", "finest", "input", "A", "G", "S", "D", "R", "R1", "Y", "@", "@-1", "@layer4",
                            "(", ")", "[", "]", ",", ";", "=", ":", "?", "?p", "?p:[0,100]=90", "+", "-", "*", "/", "^",
                            "0", "1", "-3", "0.5", "1e9", "1e999", "nan", "inf", "#", "\n", " ", "\t", '"', "'", ".",
                            "__import__", "lambda", "os", "{", "}", "!", "\\", "\x00", "\u00e9", "\u202e", "\ud800"})


@st.composite
def mutated(draw: st.DrawFn, sources: st.SearchStrategy[str]) -> str:
    """A source text with a few character- or token-level edits."""
    text = draw(sources)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "token", "swap"]))
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 12)))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(st.text(min_size=1, max_size=4)) + text[i:]
        elif kind == "replace":
            text = text[:i] + draw(st.text(max_size=3)) + text[j:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] * draw(st.integers(1, 3)) + text[j:]
        elif kind == "token":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
        else:  # swap two slices
            k = draw(st.integers(j, min(n, j + 12)))
            text = text[:i] + text[j:k] + text[i:j] + text[k:]
    return text


def well_typed_texts() -> st.SearchStrategy[str]:
    return programs(max_depth=3).map(pretty)


# ---------------------------------------------------------------------------- the tiny CNN


class TinyCNN(nn.Module):
    """8x8 RGB -> 3 classes: conv1 (4 ch, 8x8), conv2 (6 ch, 4x4, stride 2), conv3 (5 ch, 4x4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc(torch.relu(a).mean((2, 3)))


_NET: dict[str, object] = {}


def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded tiny CNN, a batch of two 8x8 images and their targets (built once per process)."""
    if not _NET:
        gen_ = torch.Generator().manual_seed(0)
        with torch.random.fork_rng():  # seeded weights without touching the global generator
            torch.manual_seed(0)
            _NET["net"] = TinyCNN().eval()
        _NET["x"] = torch.randn(2, 3, 8, 8, generator=gen_)
        _NET["y"] = torch.tensor([0, 2])
    return _NET["net"], _NET["x"], _NET["y"]  # type: ignore[return-value]


# ---------------------------------------------------------------------------- properties: texts


@FUZZ
@given(st.text(max_size=200))
def test_random_unicode_is_accepted_or_located(text: str) -> None:
    parse_and_check(text)


@FUZZ
@given(mutated(st.sampled_from(REFERENCE_TEXTS)))
def test_mutated_reference_programs_are_accepted_or_located(text: str) -> None:
    parse_and_check(text)


@FUZZ
@given(mutated(well_typed_texts()))
def test_mutated_generated_programs_are_accepted_or_located(text: str) -> None:
    parse_and_check(text)


def _from_grammar() -> st.SearchStrategy[str]:
    from hypothesis.extra.lark import from_lark
    from lark import Lark

    return from_lark(Lark(grammar_text(), parser="lalr"))


@settings(FUZZ, max_examples=max(10, EXAMPLES // 10))  # lark-driven generation is slow (~0.4 s per example)
@given(st.deferred(_from_grammar))
def test_strings_of_the_grammar_are_accepted_or_located(text: str) -> None:
    parse_and_check(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join))
def test_token_soup_is_accepted_or_located(text: str) -> None:
    parse_and_check(text)


@pytest.mark.parametrize("make", [
    pytest.param(lambda n: "(" * n + "relu(sum_c(A))" + ")" * n, id="parentheses"),
    pytest.param(lambda n: "relu(" * n + "sum_c(A)" + ")" * n, id="calls"),
    pytest.param(lambda n: "-" * n + "sum_c(A)", id="unary-minus"),
    pytest.param(lambda n: " + ".join(["sum_c(A)"] * n), id="long-sum"),
    pytest.param(lambda n: "(" * n, id="open-only"),
    pytest.param(lambda n: ")" * n, id="close-only"),
    pytest.param(lambda n: "fuse(each(convs, " * n + "sum_c(A)" + "), sum)" * n, id="nested-each"),
    pytest.param(lambda n: "".join(f"let x{i} = sum_c(A);\n" for i in range(n)) + "x0", id="many-lets"),
    pytest.param(lambda n: "# comment\n" * n + "sum_c(A)", id="many-comments"),
])
@pytest.mark.parametrize("n", [2000, 20000])
def test_deep_and_long_inputs_are_bounded(make: Callable[[int], str], n: int) -> None:
    text = make(n)
    if len(text) > MAX_SOURCE_CHARS:
        with time_limit(CALL_LIMIT_S, "oversized text"):
            with pytest.raises(ProgramSyntaxError, match=f"characters long; the limit is {MAX_SOURCE_CHARS}"):
                parse(text)
        return
    parse_and_check(text, LONG_LIMIT_S)


def test_a_text_at_the_size_limit_is_parsed_in_bounded_time() -> None:
    # 100 000 characters of a valid flat program (comments and one expression)
    body = "relu(sum_c(mean_hw(G) * A))"
    text = "# " + "x" * (MAX_SOURCE_CHARS - len(body) - 3) + "\n" + body
    assert len(text) == MAX_SOURCE_CHARS
    program = parse_and_check(text, LONG_LIMIT_S)
    assert program is not None and pretty(program) == body


@pytest.mark.parametrize("text", ["", " ", "\n\n\t", "# only a comment", "#a\n#b\n"])
def test_empty_programs(text: str) -> None:
    with pytest.raises(ProgramSyntaxError, match="empty program") as e:
        parse(text)
    assert (e.value.line, e.value.column) == (1, 1)


def test_non_string_program_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="program text must be a str, got bytes"):
        parse(b"relu(sum_c(A))")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- known message bugs


def test_statement_after_the_final_expression_names_end_of_program() -> None:
    with pytest.raises(ProgramSyntaxError) as e:
        parse("sum_c(A);\nsum_c(G)")
    assert "<end-of-file>" not in e.value.message and "end of program" in e.value.message
    assert (e.value.line, e.value.column) == (2, 1)


def test_expected_tokens_after_a_complete_program_are_exact() -> None:
    with pytest.raises(ProgramSyntaxError) as e:
        parse("relu(sum_c(A)) relu")
    assert (e.value.line, e.value.column) == (1, 16)
    assert "')'" not in e.value.message and "','" not in e.value.message
    assert "end of program" in e.value.message


def test_a_long_flat_sum_is_not_reported_as_nested() -> None:
    text = " + ".join(["sum_c(A)"] * 400)
    try:
        program = parse(text)
    except ProgramSyntaxError as err:
        # acceptable alternative to parsing it: a message that states the limit, at a location
        assert err.line is not None and re.search(r"\d", err.message), str(err)
    else:
        assert A.size(check(program).expr) == 799


# ---------------------------------------------------------------------------- properties: well-typed programs


@FUZZ
@given(programs())
def test_generated_programs_type_check_and_round_trip(program: A.Program) -> None:
    with time_limit(CALL_LIMIT_S, "check + pretty + parse"):
        result = check(program)
        text = pretty(program)
        again = parse(text)
    assert str(result.type) == "Map", text
    assert again == program, f"round trip changed the program:\n{text}\n->\n{pretty(again)}"
    assert pretty(again) == text
    with time_limit(5 * CALL_LIMIT_S, "canonical form"):
        try:
            assert canonical_text(again) == canonical_text(program)
        except ValueError as err:
            if CANON_COMPARABILITY_FIXED or not CANON_NOT_COMPARABLE.search(str(err)):
                raise
            _event("known bug: canonical form 'not comparable'")


@FUZZ
@given(programs())
def test_generated_programs_run_to_finite_maps_or_a_runtime_error(program: A.Program) -> None:
    net, x, y = tiny()
    text = pretty(program)
    with time_limit(RUN_LIMIT_S, f"explaining with {text!r}"):
        try:
            maps = Explainer(net, program)(x, y)
        except ProgramRuntimeError as err:
            assert "NaN or Inf" in str(err) and "image" in str(err)
            _event("ProgramRuntimeError")
            return
    _event("finite maps")
    assert maps.shape == (2, 8, 8), text
    assert maps.dtype.is_floating_point
    assert bool(torch.isfinite(maps).all()), f"non-finite output for {text!r}"
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0, text


# ---------------------------------------------------------------------------- runtime bugs found by fuzzing


def _explain(text: str) -> torch.Tensor:
    net, x, y = tiny()
    return Explainer(net, text)(x, y)


def test_a_finite_raw_map_of_huge_range_never_yields_nan() -> None:
    try:
        maps = _explain("sign(sum_c(A)) * 3e38")
    except ProgramRuntimeError:
        return
    assert bool(torch.isfinite(maps).all())


def test_huge_integer_exponent_is_sycams_own_error() -> None:
    try:
        maps = _explain("sum_c(A)^1e20")
    except (ProgramRuntimeError, ProgramError):
        return
    assert bool(torch.isfinite(maps).all())


@pytest.mark.parametrize("text", ["sum_c(A) * 1e300", "rescale(sum_c(A), 0, 1e300)"])
def test_constants_beyond_float32_are_sycams_own_error(text: str) -> None:
    try:
        maps = _explain(text)
    except (ProgramRuntimeError, ProgramError):
        return
    assert bool(torch.isfinite(maps).all())


def test_a_constant_percentile_outside_0_100_is_a_located_program_error() -> None:
    with pytest.raises(ProgramError) as e:
        check(parse("sum_c(A) * percentile(sum_c(A), 150)"))
    assert (e.value.line, e.value.column) == (1, 12) and "150" in e.value.message


def test_fused_maps_of_different_grids_combine_or_are_a_type_error() -> None:
    text = "max(fuse(each(convs, sum_c(A)), sum), fuse(each(last, sum_c(A)), sum))"
    try:
        check(parse(text))
    except ProgramError as err:
        assert err.line == 1 and "fuse" in err.message
        return
    maps = _explain(text)
    assert maps.shape == (2, 8, 8) and bool(torch.isfinite(maps).all())


def test_canonical_form_of_max_of_equal_arguments_does_not_crash() -> None:
    assert canonical_text(parse("sum_c(max(A, A))")) == canonical_text(parse("sum_c(A)"))


def test_canonical_form_of_max_of_equal_arguments_is_well_formed() -> None:
    assert canonical_text(parse("max(sum_c(A), sum_c(A))")) == canonical_text(parse("sum_c(A)"))


@pytest.mark.parametrize("text, params", [
    pytest.param("sum_c(A) * ?p", None, id="no-default-no-range"),
    pytest.param("sum_c(A) * ?p:[0,1]", {"p": 5.0}, id="override-outside-range"),
    pytest.param("sum_c(A)", {"p": 1.0}, id="unknown-parameter"),
    pytest.param("threshold(sum_c(A), ?q:[-50,200])", {"q": -20.0}, id="percentile-outside-0-100"),
])
def test_parameter_problems_are_sycams_own_errors(text: str, params: dict[str, float] | None) -> None:
    net, x, y = tiny()
    with pytest.raises(SycamError, match=r"\?[pq]"):
        Explainer(net, text, params=params)(x, y)


def test_misspelt_reference_program_suggests_the_name() -> None:
    net, _, _ = tiny()
    with pytest.raises(SycamError, match="gradcam"):
        Explainer(net, "gradkam")


def test_canonical_form_of_abs_of_max_with_an_operator_of_a_number() -> None:
    text = canonical_text(parse("abs(max(sum_c(A) - Y, relu(1)))"))
    assert "abs" in text.lower() and "relu" in text


def test_overflow_is_a_runtime_error_naming_the_images() -> None:
    with pytest.raises(ProgramRuntimeError, match=r"NaN or Inf for image\(s\) \[0, 1\]"):
        _explain("sum_c(A) * 1e38 * 1e38")
    # only the image whose map overflows is named: exp(1000 Y) overflows where the explained logit Y
    # is positive (image 0, class 2) and underflows to 0 where it is negative (image 1, class 1)
    net, x, _ = tiny()
    targets = torch.tensor([2, 1])
    logits = net(x).detach()
    assert logits[0, 2] > 0.1 and logits[1, 1] < -0.1
    with pytest.raises(ProgramRuntimeError, match=r"image\(s\) \[0\]:"):
        Explainer(net, "sum_c(A) * 0 + exp(Y * 1000) * 1e38 * 10")(x, targets)


def test_reference_programs_run_on_the_tiny_cnn() -> None:
    net, x, y = tiny()
    for path in sorted(PROGRAM_DIR.glob("*.cam")):
        maps = Explainer(net, path)(x, y)
        assert maps.shape == (2, 8, 8), path.name
        assert bool(torch.isfinite(maps).all()) and 0 <= float(maps.min()) <= float(maps.max()) <= 1, path.name


def _features(program: A.Program) -> set[str]:
    found: set[str] = set()
    for n in A.walk(A.inline_lets(program)):
        if isinstance(n, A.Call):
            found.add(n.fn)
        elif isinstance(n, A.Fuse):
            found.add(f"fuse:{n.grid}")
        elif isinstance(n, A.Terminal):
            found.add(n.kind)
        elif isinstance(n, A.Pow):
            found.add("^")
        elif isinstance(n, A.Each):
            found.add("each:" + pretty(A.Each(n.selection, A.Num(0)))[len("each("):-len(", 0)")])
    if program.lets:
        found.add("let")
    if program.score is not None:
        found.add(f"score:{program.score.kind}")
    return found


FEATURES = set(OPS) | {"fuse:finest", "fuse:input", "A", "G", "S", "D", "R", "R1", "Y", "X", "^", "let", "score:finer",
                      "score:prob",
                      "each:convs", "each:stages", "each:last", "each:-2:", "each:[0, conv3]"}


def test_the_generator_reaches_every_part_of_the_language() -> None:
    """Guard against a generator that silently stopped producing part of the language: one pass of
    generation (no shrinking) until every operator, terminal, selection kind, both fuse grids,
    lets and score directives have been produced."""
    seen: set[str] = set()

    def all_seen(program: A.Program) -> bool:
        seen.update(_features(program))
        return FEATURES <= seen

    try:
        find(programs(), all_seen, settings=settings(max_examples=3000, deadline=None, database=None, derandomize=True,
                                                     phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        pytest.fail(f"3000 generated programs never contain: {sorted(FEATURES - seen)}")
