"""Simplification (sycam.lang.simplify): every rule exactly, the modes' boundaries on values where they
differ, and properties on generated programs run on a small CNN.

Properties (hypothesis, generator of tests/test_fuzz.py): for ``exact`` and ``safe`` the simplified
program prints, parses back to itself, type-checks, keeps its parameters, is no larger, and gives the
same final maps (after the per-image min-max normalisation) to 1e-5 on real captures; the display
form of :func:`simplified_text` parses, type-checks, keeps the parameters, is shorter, and gives the
same maps too. The CNN and the maps are float64 so that float rounding (which the normalisation
magnifies on nearly constant maps) stays far below the tolerance; maps whose raw range is below 1e-4 of
their magnitude are not compared (there the normalisation divides rounding noise by a tiny range: the
method is degenerate) and are counted in hypothesis' statistics.
"""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from sycam import kernels as K
from sycam.capture import capture
from sycam.compile import CompiledProgram, LayerResolver
from sycam.errors import ProgramError, ProgramRuntimeError
from sycam.lang import ast as A
from sycam.lang import check, parse, pretty
from sycam.lang import simplify as S
from sycam.lang.simplify import simplified_text, simplify
from tests.test_fuzz import FUZZ, _event, programs, tiny

TOL = 1e-5
MIN_RELATIVE_RANGE = 1e-4


def simp(text: str, mode: str = "safe") -> str:
    out = S._fixpoint(parse(text), mode)  # the unchecked rewriter: a rule that breaks typing must fail here
    check(out)
    return pretty(out)


def test_constants_are_the_kernels():
    assert S.EPS == K.EPS and S.EXP_CLAMP == K.EXP_CLAMP and S.MAX_EXPONENT == K.MAX_EXPONENT


# ---------------------------------------------------------------------------- every rule, exactly

RULES = [
    # identities
    ("relu(sum_c(A) + 0)", "relu(sum_c(A))"),
    ("relu(0 + sum_c(A))", "relu(sum_c(A))"),
    ("relu(sum_c(A) - 0)", "relu(sum_c(A))"),
    ("relu(0 - sum_c(A))", "relu(neg(sum_c(A)))"),
    ("relu(sum_c(A) * 1)", "relu(sum_c(A))"),
    ("relu(1 * sum_c(A))", "relu(sum_c(A))"),
    ("relu(sum_c(A) * -1)", "relu(neg(sum_c(A)))"),
    ("relu(sum_c(A) / 1)", "relu(sum_c(A))"),
    ("relu(sum_c(A) / -1)", "relu(neg(sum_c(A)))"),
    ("relu(sum_c(A)^1)", "relu(sum_c(A))"),
    ("relu(sum_c(A)^2)", "sq(sum_c(A))"),  # then relu(sq x) = sq x
    ("exp(sum_c(A)^2)", "exp(sq(sum_c(A)))"),
    ("exp(sum_c(A)) * Y^0", "exp(sum_c(A))"),
    ("exp(sum_c(A) * 0 + sum_c(G))", "exp(sum_c(G))"),
    ("exp(0 / sum_c(A) + sum_c(G))", "exp(sum_c(G))"),
    # constant folding (float32, shortest literal)
    ("exp(sum_c(A) * (2 + 3))", "exp(sum_c(A) * 5)"),
    ("exp(sum_c(A) * (0.1 + 0.2))", "exp(sum_c(A) * 0.3)"),
    ("exp(sum_c(A) * (1 / 3))", "exp(sum_c(A) * (1 / 3))"),  # 0.33333334: too long to read
    ("exp(sum_c(A) * relu(-2) + sum_c(G))", "exp(sum_c(G))"),
    ("exp(sum_c(A) * (1 / 0))", "exp(sum_c(A) * (1 / 0))"),  # 1e12: too long a literal to fold
    ("exp(sum_c(A) * (0 / 0) + sum_c(G))", "exp(sum_c(G))"),  # 0 / 0 = 0
    ("exp(sum_c(A) * (1 / 2e-13))", "exp(sum_c(A) * (1 / 2e-13))"),
    ("exp(sum_c(A) * 2^3)", "exp(sum_c(A) * 8)"),
    ("exp(sum_c(A) * max(2, 3))", "exp(sum_c(A) * 3)"),
    ("exp(sum_c(A) * sqrt(-4))", "exp(sum_c(A) * 0)"),  # sqrt clamps at 0; a Map stays a Map
    ("exp(sum_c(A) * exp(1))", "exp(sum_c(A) * exp(1))"),
    ("exp(sum_c(A) * exp(0))", "exp(sum_c(A))"),
    ("exp(sum_c(A) * (1 / 8))", "exp(sum_c(A) * 0.125)"),
    # duplicates
    ("exp(sum_c(A) + sum_c(A))", "exp(2 * sum_c(A))"),
    ("exp(sum_c(A - A) + sum_c(G))", "exp(sum_c(G))"),
    ("exp(Y - Y) * sum_c(A)", "sum_c(A)"),
    ("exp(sum_c(A) * sum_c(A))", "exp(sq(sum_c(A)))"),
    ("exp(max(sum_c(A), sum_c(A)))", "exp(sum_c(A))"),
    ("exp(min(sum_c(A), sum_c(A)))", "exp(sum_c(A))"),
    ("exp(max(sum_c(A), 0))", "exp(relu(sum_c(A)))"),
    ("exp(max(0, sum_c(A)))", "exp(relu(sum_c(A)))"),
    # signs
    ("exp(neg(neg(sum_c(A))))", "exp(sum_c(A))"),
    ("exp(abs(neg(sum_c(A))))", "exp(abs(sum_c(A)))"),
    ("exp(sq(neg(sum_c(A))))", "exp(sq(sum_c(A)))"),
    ("exp(sq(abs(sum_c(A))))", "exp(sq(sum_c(A)))"),
    ("exp(sum_c(A) - neg(sum_c(G)))", "exp(sum_c(A) + sum_c(G))"),
    ("exp(sum_c(A) + neg(sum_c(G)))", "exp(sum_c(A) - sum_c(G))"),
    ("exp(neg(sum_c(G)) + sum_c(A))", "exp(sum_c(A) - sum_c(G))"),
    ("exp(neg(sum_c(A)) * neg(sum_c(G)))", "exp(sum_c(A) * sum_c(G))"),
    # non-negative arguments
    ("exp(relu(relu(sum_c(A))))", "exp(relu(sum_c(A)))"),
    ("exp(abs(abs(sum_c(A))))", "exp(abs(sum_c(A)))"),
    ("exp(relu(abs(sum_c(A))))", "exp(abs(sum_c(A)))"),
    ("exp(abs(relu(sum_c(A))))", "exp(relu(sum_c(A)))"),
    ("exp(relu(sq(sum_c(A))))", "exp(sq(sum_c(A)))"),
    ("exp(abs(sq(sum_c(A))))", "exp(sq(sum_c(A)))"),
    ("exp(relu(norm(sum_c(A))))", "exp(norm(sum_c(A)))"),
    ("exp(relu(sum_c(relu(A) * sigmoid(G))))", "exp(sum_c(relu(A) * sigmoid(G)))"),
    ("exp(relu(sum_c(A)^4))", "exp(sum_c(A)^4)"),
    ("exp(relu(sum_c(A)^3))", "exp(relu(sum_c(A)^3))"),  # odd power: may be negative
    ("exp(relu(sum_c(A) - sum_c(G)))", "exp(relu(sum_c(A) - sum_c(G)))"),
    ("exp(relu(rescale(sum_c(A), 0.1, 1)))", "exp(rescale(sum_c(A), 0.1, 1))"),
    ("exp(relu(rescale(sum_c(A), -1, 1)))", "exp(relu(rescale(sum_c(A), -1, 1)))"),
    ("exp(sqrt(sq(sum_c(A))))", "exp(abs(sum_c(A)))"),
    ("exp(sq(sqrt(sum_c(A))))", "exp(relu(sum_c(A)))"),
    ("exp(sign(sign(sum_c(A))))", "exp(sign(sum_c(A)))"),
    ("exp(norm(norm(sum_c(A))))", "exp(norm(sum_c(A)))"),
    ("exp(zscore(zscore(sum_c(A))))", "exp(zscore(sum_c(A)))"),
    ("exp(sq(sign(abs(sum_c(A)))))", "exp(sign(abs(sum_c(A))))"),
    ("exp(sqrt(sign(relu(sum_c(A)))))", "exp(sign(relu(sum_c(A))))"),
    ("exp(sq(sign(sum_c(A))))", "exp(sq(sign(sum_c(A))))"),  # -1, 0 or 1: sq is abs here, same size
    ("sum_c(A) * sq(mean_c(mean_hw(G)) / mean_c(mean_hw(G)))", "sum_c(A) * sign(abs(mean_c(mean_hw(G))))"),
    # integer powers
    ("exp((sum_c(A)^3)^2)", "exp(sum_c(A)^6)"),
    ("exp(sq(sum_c(A)^3))", "exp(sum_c(A)^6)"),
    ("exp(sq(sq(sum_c(A)))^3)", "exp(sum_c(A)^12)"),
    ("exp((sum_c(A)^0.5)^2)", "exp(sq(sum_c(A)^0.5))"),
    # scale at the final expression and below homogeneous operators
    ("2 * sum_c(A)", "sum_c(A)"),
    ("sum_c(A) / 4", "sum_c(A)"),
    ("-2 * sum_c(A)", "neg(sum_c(A))"),
    ("sum_c(A) + sum_c(A)", "sum_c(A)"),
    ("relu(sum_c(3 * A))", "relu(sum_c(A))"),
    ("relu(sum_c(A * 3) * sum_c(G / 2))", "relu(sum_c(A) * sum_c(G))"),
    ("sq(sum_c(A) / 0.5)", "sq(sum_c(A))"),
    ("norm(2 * relu(sum_c(A))) + sum_c(G)", "norm(relu(sum_c(A))) + sum_c(G)"),
    ("zscore(2 * sum_c(A)) + sum_c(G)", "zscore(sum_c(A)) + sum_c(G)"),
    ("fuse(each(convs, norm(relu(sum_c(A)) + relu(sum_c(A)))), mean)", "fuse(each(convs, norm(relu(sum_c(A)))), mean)"),
    ("fuse(each(convs, 2 * sum_c(A)), mean)", "fuse(each(convs, sum_c(A)), mean)"),
    ("fuse(each(convs, sum_c(A)), each(convs, 3 * mean_c(mean_hw(G))), sum)", "fuse(each(convs, sum_c(A)), each(convs, mean_c(mean_hw(G))), sum)"),
    # ... and where scale matters, it stays
    ("relu(sum_c(A) - 2 * sum_c(G))", "relu(sum_c(A) - 2 * sum_c(G))"),
    ("exp(2 * sum_c(A))", "exp(2 * sum_c(A))"),
    ("sum_c(A) / (2 * sum_c(G))", "sum_c(A) / (2 * sum_c(G))"),  # a divisor: the guard is not homogeneous
    ("max(2 * sum_c(A), sum_c(G))", "max(2 * sum_c(A), sum_c(G))"),
    ("sum_c(A)^-1 * (2 * sum_c(G))", "sum_c(A)^-1 * sum_c(G)"),
    ("(2 * sum_c(A))^-1 * sum_c(G)", "(2 * sum_c(A))^-1 * sum_c(G)"),  # ^-1 is a guarded division too
    # canonical (sympy): sub-expressions proved equal
    ("exp(sum_c((A + G) - G))", "exp(sum_c(A))"),
    ("exp(sum_c(A * G - G * A + A))", "exp(sum_c(A))"),
    ("exp(sum_c(A * G + G * A))", "exp(sum_c(2 * (A * G)))"),
    ("exp(sum_c(A) - (sum_c(A) + sum_c(G)))", "exp(neg(sum_c(G)))"),
    ("sum_c(A * G + G * A)", "sum_c(A * G)"),
    # lets, parameters, score, layers stay
    ("let w = mean_hw(G) * 1; relu(sum_c(w * A) + sum_c(w * A))", "let w = mean_hw(G);\nrelu(sum_c(w * A))"),
    ("score prob; relu(sum_c(A@-1 * 1))", "score prob;\nrelu(sum_c(A@-1))"),
    ("exp(sum_c(A) * ?q:[0,1]=0.5 - sum_c(A) * ?q)", "exp(sum_c(A) * ?q:[0,1]=0.5 - sum_c(A) * ?q)"),
    ("exp(sum_c(A) * (?q:[0,1]=0.5 + 0))", "exp(sum_c(A) * ?q:[0,1]=0.5)"),
    ("let w = sum_c(A) * ?q:[0,1]=0.5; exp(w - w) * sum_c(G)", "let w = sum_c(A) * ?q:[0,1]=0.5;\nexp(w - w) * sum_c(G)"),
]


@pytest.mark.parametrize("text, expected", RULES)
def test_each_rule(text: str, expected: str):
    assert simp(text) == expected


DIVISION = "sum_c(A) * (mean_c(mean_hw(G)) / mean_c(mean_hw(G)))"


@pytest.mark.parametrize("mode, expected", [
    ("exact", "sum_c(A) * (mean_c(mean_hw(G)) / mean_c(mean_hw(G)))"),
    ("safe", "sum_c(A) * sign(abs(mean_c(mean_hw(G))))"),
    ("nonzero", "sum_c(A)"),
])
def test_x_over_x_per_mode(mode: str, expected: str):
    assert simp(DIVISION, mode) == expected


@pytest.mark.parametrize("mode, expected", [
    ("exact", "sum_c(mean_hw(G) / mean_hw(G) * A)"),
    ("safe", "sum_c(sign(abs(mean_hw(G))) * A)"),
    ("nonzero", "sum_c(A)"),
])
def test_the_searchs_redundant_weight(mode: str, expected: str):
    assert simp("sum_c(mean_hw(G) / mean_hw(G) * A)", mode) == expected


@pytest.mark.parametrize("text, exact, safe", [
    ("sum_c(A) + 3", "sum_c(A) + 3", "sum_c(A)"),
    ("sum_c(A) - Y", "sum_c(A) - Y", "sum_c(A)"),
    ("Y + sum_c(A)", "Y + sum_c(A)", "sum_c(A)"),
    ("norm(sum_c(A))", "norm(sum_c(A))", "sum_c(A)"),
    ("3 - sum_c(A)", "3 - sum_c(A)", "3 - sum_c(A)"),  # the sign of the map matters
    ("sum_c(A) + ?q:[0,1]=0.5", "sum_c(A) + ?q:[0,1]=0.5", "sum_c(A) + ?q:[0,1]=0.5"),  # a parameter never goes
])
def test_root_shift_and_norm_only_in_safe_mode(text: str, exact: str, safe: str):
    assert simp(text, "exact") == exact
    assert simp(text, "safe") == safe


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of exact, safe, nonzero"):
        simplify(parse("sum_c(A)"), "fast")


def test_reference_programs_are_already_simple():
    from sycam.programs import list_programs, load

    for name in list_programs():
        program = load(name)
        assert simplify(program) == program, name
        assert simplify(program, "exact") == program, name


def test_simplify_keeps_param_ranges_defaults_and_positions_of_lets():
    program = parse("let maps = each(convs, norm(relu(sum_c(mean_hw(G) * A)) * 1));\n"
                    "let importance = each(convs, relu(relu(mean_c(mean_hw(G)))));\n"
                    "fuse(maps, rescale(winsorize(importance, ?p:[0,100]=90), 0.1, 1), sum)")
    out = simplify(program)
    assert pretty(out) == ("let maps = each(convs, norm(relu(sum_c(mean_hw(G) * A))));\n"
                           "let importance = each(convs, relu(mean_c(mean_hw(G))));\n"
                           "fuse(maps, rescale(winsorize(importance, ?p:[0,100]=90), 0.1, 1), sum)")
    assert A.params(A.inline_lets(out)) == A.params(A.inline_lets(program))


# ---------------------------------------------------------------------------- the modes on values

def _maps(text: str, double: bool = True) -> torch.Tensor:
    net, x, y = tiny()
    if double:
        net, x = _double(net), x.double()
    program = parse(text)
    compiled = CompiledProgram(program, LayerResolver(net))
    return compiled(capture(net, x, y, compiled.request))


def _double(net):
    import copy

    return copy.deepcopy(net).double()


def test_x_over_x_is_a_mask_not_one():
    # G at conv2 is zero wherever act2 (a ReLU) is off: G / G is that mask, so 'nonzero' changes the map
    original = _maps("sum_c(G@conv2 / G@conv2 * A@conv2)")
    assert torch.allclose(original, _maps(simp("sum_c(G@conv2 / G@conv2 * A@conv2)", "safe")), atol=TOL)
    assert not torch.allclose(original, _maps(simp("sum_c(G@conv2 / G@conv2 * A@conv2)", "nonzero")), atol=0.05)


def test_safe_division_differs_only_inside_the_guard():
    # sign(abs(x)) and x / x differ only where 0 < |x| < 1e-12
    x = torch.tensor([0.0, 1e-13, -5e-13, 1e-12, -3.0, 2e-30])
    guarded = K.safe_div(x, x)
    mask = torch.sign(torch.abs(x))
    assert guarded.tolist()[0] == 0.0 and mask.tolist()[0] == 0.0
    differs = (guarded != mask).tolist()
    assert differs == [False, True, True, False, False, True]


# ---------------------------------------------------------------------------- properties on generated programs


def _run(program: A.Program, net, x, y, caps=None):
    """Final maps as the compiler makes them (upsampled, min-max normalised) but kept in float64."""
    compiled = CompiledProgram(program, LayerResolver(net))
    if caps is None:
        caps = capture(net, x, y, compiled.request)
    compiled(caps)  # raises ProgramRuntimeError for NaN or Inf, as a run would
    raw = K.resize(compiled.raw(caps).double(), caps.input_size)
    return K.norm(raw), raw, caps


def _conditioned(raw: torch.Tensor) -> torch.Tensor:
    f = raw.flatten(1)
    hi, lo = f.amax(1), f.amin(1)
    scale = torch.maximum(hi.abs(), lo.abs())
    return (hi - lo) > MIN_RELATIVE_RANGE * scale


def _same_method(original: A.Program, other: A.Program, what: str) -> None:
    net, x, y = tiny()
    net, x = _double(net), x.double()
    try:
        maps, raw, caps = _run(original, net, x, y)
    except ProgramRuntimeError:
        _event("original invalid (NaN or Inf)")
        return
    other_maps, _, _ = _run(other, net, x, y, caps)  # the simplified program needs no capture the original lacks
    ok = _conditioned(raw)
    if not bool(ok.all()):
        _event("ill-conditioned image skipped")
    diff = (maps - other_maps).abs().flatten(1).amax(1)
    bad = ok & (diff > TOL)
    assert not bool(bad.any()), f"{what} changed the maps by {diff.tolist()}:\n{pretty(original)}\n->\n{pretty(other)}"
    _event("maps compared")


# the search's kind of redundancy, planted into generated programs: each template keeps the type of x
# (where it does not, e.g. norm of a Scalar, the example is discarded)
REDUNDANT = ["x + x", "x - x + x", "x / x * x", "x * 1", "1 * x", "x / 1", "x + 0", "0 + x", "x - 0", "x ^ 1",
             "neg(neg(x))", "relu(relu(x))", "abs(abs(x))", "relu(sq(x))", "abs(sq(x))", "norm(norm(x))", "sq(neg(x))",
             "2 * x", "x / 4", "-3 * x", "x * x", "max(x, x)", "min(x, 0 + x)", "x * 0 + x", "(x + Y) - Y", "sqrt(sq(x))",
             "x ^ 2", "relu(abs(x))", "zscore(zscore(x))", "sign(sign(x))", "x + (x - x)", "(2 + 3) * x", "max(x, 0)",
             "(x ^ 3) ^ 2", "sq(sqrt(x))", "x - neg(x)", "neg(x) * neg(x)", "abs(neg(x))", "x / x"]


# what sympy's canonical form shortens and the rewriter leaves (powers, collected terms): for the display form
DISPLAYABLE = ["sq(sq(sq(x)))", "x * sq(x)", "sq(x) * x * x", "x + sq(x) + x", "x * 2 + (x + x)", "sq(sq(x)) * x",
               "(x + Y) + (x + Y)", "x * Y + Y * x * 3", "sq(x) * sq(x) * x"]


def _plant(template: str, x: A.Expr) -> A.Expr:
    shape = parse(re.sub(r"\bx\b", "X_", template))  # X_: a name, replaced by x below
    def sub(node: A.Expr) -> A.Expr:
        if isinstance(node, A.Var) and node.name == "X_":
            return x
        if isinstance(node, A.BinOp):
            return A.BinOp(node.op, sub(node.left), sub(node.right))
        if isinstance(node, A.Pow):
            return A.Pow(sub(node.base), node.exponent)
        if isinstance(node, A.Call):
            return A.Call(node.fn, tuple(sub(a) for a in node.args))
        return node
    return sub(shape.body)


def _replace(node: A.Expr, target: A.Expr, new: A.Expr) -> A.Expr:
    if node is target:
        return new
    if isinstance(node, A.BinOp):
        return A.BinOp(node.op, _replace(node.left, target, new), _replace(node.right, target, new))
    if isinstance(node, A.Pow):
        return A.Pow(_replace(node.base, target, new), node.exponent)
    if isinstance(node, A.Call):
        return A.Call(node.fn, tuple(a if isinstance(a, (A.Num, A.Param)) and i > 0 else _replace(a, target, new)
                                     for i, a in enumerate(node.args)))
    if isinstance(node, A.Each):
        return A.Each(node.selection, _replace(node.body, target, new))
    if isinstance(node, A.Fuse):
        weights = None if node.weights is None else _replace(node.weights, target, new)
        return A.Fuse(_replace(node.maps, target, new), weights, node.mode, node.grid)
    return node


def _spots(node: A.Expr) -> list[A.Expr]:
    """Sub-expressions a template may wrap: not constant arguments or exponents."""
    out = [node]
    if isinstance(node, A.Pow):
        return out + _spots(node.base)
    if isinstance(node, A.Call):
        for i, a in enumerate(node.args):
            if not (i > 0 and isinstance(a, (A.Num, A.Param))):
                out += _spots(a)
        return out
    for kid in A.children(node):
        out += _spots(kid)
    return out


@st.composite
def redundant_programs(draw: st.DrawFn, templates: tuple[str, ...] = tuple(REDUNDANT)) -> A.Program:
    program = draw(programs(max_depth=3))
    body = program.body
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(_spots(body)))
        body = _replace(body, target, _plant(draw(st.sampled_from(templates)), target))
    out = A.Program(body, program.lets, program.score)
    try:
        check(out)
    except ProgramError:
        assume(False)
    return out


def _check_simplified(program: A.Program, mode: str) -> A.Program:
    out = S._fixpoint(program, mode)
    text = pretty(out)
    again = parse(text)
    assert again == out, f"{text!r} does not parse back to itself"
    check(again)
    assert A.size(out.body) <= A.size(program.body)
    assert A.size(A.inline_lets(out)) <= A.size(A.inline_lets(program))
    assert A.params(A.inline_lets(out)) == A.params(A.inline_lets(program))
    assert [let.name for let in out.lets] == [let.name for let in program.lets] and out.score == program.score
    assert S._fixpoint(out, mode) == out, "not a fixpoint"
    if out != program:
        _event(f"{mode}: simplified")
    return out


@FUZZ
@given(programs() | redundant_programs())
def test_exact_simplification_keeps_the_maps(program: A.Program) -> None:
    _same_method(program, _check_simplified(program, "exact"), "exact simplification")


@FUZZ
@given(programs() | redundant_programs())
def test_safe_simplification_keeps_the_maps(program: A.Program) -> None:
    _same_method(program, _check_simplified(program, "safe"), "safe simplification")


@FUZZ
@given(programs() | redundant_programs() | redundant_programs(tuple(DISPLAYABLE)))
def test_display_form_parses_checks_and_keeps_the_maps(program: A.Program) -> None:
    text = simplified_text(program)
    if not text:
        return
    _event("display form shown")
    shown = parse(text)
    check(shown)
    base = simplify(program)
    assert A.params(A.inline_lets(shown)) == A.params(A.inline_lets(program))
    assert S._cost([*(l.value for l in shown.lets), shown.body]) < S._cost([*(l.value for l in base.lets), base.body])
    _same_method(program, shown, "the display form")


# ---------------------------------------------------------------------------- the display form, exactly

DISPLAY = [
    # the hall of fame of a real run (sycam synthesize --metric iou --candidates 300)
    ("sq(sq(sum_c(sq(A))))", "sum_c(sq(A))^4"),
    ("sum_c(sq(sq(sq(A))))", "sum_c(A^8)"),
    ("sum_c(sq(A * sq(A)))", "sum_c(A^6)"),
    ("fuse(each(convs, norm(max_c(sq(sq(abs(A)) + (A + A * A))))), mean)", "fuse(each(convs, norm(max_c(sq(2 * sq(A) + A)))), mean)"),
    # multi-layer, parameters with range and default, lets, score, layer lists
    ("fuse(each(convs, norm(sq(sq(sum_c(A))))), rescale(winsorize(each(convs, relu(mean_c(mean_hw(G)))), ?p:[0,100]=90), 0.1, 1), sum)",
     "fuse(each(convs, norm(sum_c(A)^4)), rescale(winsorize(each(convs, relu(mean_c(mean_hw(G)))), ?p:[0,100]=90), 0.1, 1), sum)"),
    ("fuse(each([0, conv3], norm(sq(sq(sum_c(A))))), mean, input)", "fuse(each([0, conv3], norm(sum_c(A)^4)), mean, input)"),
    ("let w = sq(sq(mean_hw(G))); relu(sum_c(w * A))", "let w = mean_hw(G)^4;\nrelu(sum_c(w * A))"),
    ("score finer(3, 0.6); sq(sq(sum_c(A)))", "score finer(3, 0.6);\nsum_c(A)^4"),
    ("exp(sum_c(A)^?r:[0.5,3]=2 * sum_c(A)^?r)", "exp(sq(sum_c(A)^?r:[0.5,3]=2))"),
    # arithmetic in sycam's syntax
    ("exp(sum_c(A) / 3 + sum_c(A) / 3)", "exp(2 * sum_c(A) / 3)"),
    ("exp(sum_c(G) - sum_c(A) - sum_c(A))", "exp(sum_c(G) - 2 * sum_c(A))"),
    ("exp(neg(sum_c(A)) - sum_c(G) - sum_c(G))", "exp(neg(sum_c(A)) - 2 * sum_c(G))"),
    # guarded division and non-integer powers are not cancelled
    ("exp(sum_c(A) / sum_c(G) * sum_c(G))", ""),
    ("exp(sum_c(A)^0.5 * sum_c(A)^0.5)", ""),
    # nothing shorter
    ("relu(sum_c(mean_hw(G) * A))", ""),
    ("sum_c(A + A)", ""),  # simplify already gives sum_c(A)
]


@pytest.mark.parametrize("text, expected", DISPLAY)
def test_display_form(text: str, expected: str):
    assert simplified_text(parse(text)) == expected
    if expected:
        check(parse(expected))


def test_display_in_nonzero_mode_cancels_divisions_through_simplify():
    program = parse("exp(sum_c(A) / sum_c(G) * sum_c(G) + sum_c(A) * sum_c(A))")
    assert pretty(simplify(program, "nonzero")) == "exp(sum_c(A) + sq(sum_c(A)))"
    assert simplified_text(program) == ""


def test_reference_programs_have_no_shorter_display_form():
    from sycam.programs import list_programs, load

    for name in list_programs():
        assert simplified_text(load(name)) == "", name
