"""The table of operators (sycam.lang.ops) is complete, and its consumers agree with it: the parser,
the type checker, the kernels, the canonical form, the search space and the enumerator."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch

from sycam import compile as compiler
from sycam import kernels as K
from sycam.errors import ProgramSyntaxError, ProgramTypeError
from sycam.lang import ast as A
from sycam.lang import parse
from sycam.lang.canon import _fn, to_sympy
from sycam.lang.ops import INFIX, KINDS, OPS, TABLE, TERMINALS, Canon, Form, OpSpec, TypeRule, apply_node, operator_of
from sycam.lang.parse import grammar_text
from sycam.lang.pretty import pretty_expr
from sycam.lang.types import LayersType, _Checker
from sycam.search.space import BY_NAME, BY_TYPE, PRODUCTIONS

NDIM = {"Tensor": 4, "Channels": 2, "Map": 3, "Scalar": 1}
SYMPY_KINDS = {"function", "add", "sub", "mul", "div", "pow", "neg", "square"}

# an argument of each kind, as the checker sees it and as the kernels get it (2 images)
_MAP = A.Call("sum_c", (A.Terminal("A"),))
ARG = {"Tensor": A.Terminal("A"), "Channels": A.Terminal("S"), "Map": _MAP, "Scalar": A.Terminal("Y")}
#: a paired rule's second argument (mi's Map): its own node and values ("<kind>2" in _values)
PAIRED = {"Map": A.Call("mean_c", (A.Terminal("A"),))}


def _values(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"Tensor": (2, 3, 4, 5), "Channels": (2, 3), "Map": (2, 4, 5), "Scalar": (2,), "Map2": (2, 4, 5)}
    return {k: torch.randn(*s, generator=g, dtype=torch.float64) for k, s in shapes.items()}


def _consts(spec: OpSpec) -> dict[int, A.Num]:
    """A valid constant for each constant argument (a percentile of 50; rescale's 0.1 and 1; x^2)."""
    values = {"rescale": (0.1, 1.0)}.get(spec.name, (2.0,) if spec.name == "^" else (50.0,))
    return {i: A.Num(values[j]) for j, i in enumerate(spec.const_args)}


#: the argument kinds of operators whose arguments differ in kind (select_max: Scalar keys)
MIXED = {"select_max": ("Scalar", "Map", "Scalar", "Map")}


def _fake_rescore(m: torch.Tensor, relative: bool) -> torch.Tensor:
    """A stand-in for the captures' re-scorer (tests/test_seeds_reforward.py checks the real one
    against plain forwards): sum of the map, minus 1 for ``gain``."""
    return m.sum((1, 2)) - (1.0 if relative else 0.0)


def _applied(spec: OpSpec, kinds: tuple[str, ...]) -> A.Expr:
    """``spec`` applied to arguments of ``kinds`` (its non-constant arguments, in order); a paired
    rule's second argument is always of its paired kind."""
    consts, it = _consts(spec), iter(kinds)
    args = [consts[i] if i in consts else ARG[next(it)] for i in range(spec.arity)]
    if spec.typing.paired is not None:
        args[1] = PAIRED[spec.typing.paired]
    return apply_node(spec, tuple(args))


def _type(expr: A.Expr, in_each: bool = False):
    return _Checker(None).infer(expr, in_each)


def _n_values(spec: OpSpec) -> int:
    return spec.arity - len(spec.const_args)


# ------------------------------------------------------------------ every operator has every part


@pytest.mark.parametrize("name", list(TABLE))
def test_every_operator_has_every_part(name: str) -> None:
    spec = TABLE[name]
    assert spec.name == name and spec.arity >= 1 and spec.doc
    assert isinstance(spec.typing, TypeRule) and spec.family == spec.typing.name
    # the two-value rules: broadcasting, or a paired second argument (mi)
    assert (spec.typing.broadcast or spec.typing.paired is not None) == (_n_values(spec) == 2)
    assert not (spec.typing.broadcast and spec.typing.paired is not None)
    assert spec.typing.paired in (None, *NDIM)
    assert all(0 < i < spec.arity for i in spec.const_args)  # the first argument is never a constant
    assert all(r.index in spec.const_args and r.lo < r.hi for r in spec.ranges)
    assert callable(K.resolve(spec.kernel)), spec.kernel
    assert isinstance(spec.canon, Canon) and spec.canon.sympy in SYMPY_KINDS
    assert all(g in TABLE for g in spec.canon.absorbs)
    assert isinstance(spec.search, tuple) and all(isinstance(f, Form) for f in spec.search)
    for form in spec.search:
        assert form.result in KINDS and all(k in KINDS for k in form.args)
        # each value argument is a child of a kind or a fixed terminal (never the first: it carries the type)
        assert len(form.args) + len(form.terms) == _n_values(spec)
        assert all(0 < i < spec.arity and i not in spec.const_args and t in TERMINALS for i, t in form.terms)
        # a form fixes every constant argument, each within the operator's declared range
        assert len(form.consts) == len(spec.const_args)
        for r in spec.ranges:
            assert r.lo <= form.consts[spec.const_args.index(r.index)] <= r.hi, (spec.name, form)


def test_the_tables_consumers_cover_exactly_its_operators() -> None:
    # the compiler's kernels are the table's operators; sycam's registered kernels are those the table names
    assert set(compiler.KERNELS) == set(TABLE)
    assert set(K.KERNELS) == {s.kernel for s in TABLE.values() if not s.kernel.startswith("torch.")}
    for name, spec in TABLE.items():
        assert compiler.KERNELS[name] is K.resolve(spec.kernel)
    # named and infix operators partition the table
    assert set(OPS) | set(INFIX) == set(TABLE) and not set(OPS) & set(INFIX)
    # the search space's operator productions are exactly the table's forms
    declared = {spec.production(f): (spec, f) for spec in TABLE.values() for f in spec.search}
    produced = {p.name for p in PRODUCTIONS if isinstance(p.template, (A.BinOp, A.Pow, A.Call)) and p.type != "P"}
    assert produced == set(declared)
    for name, (spec, form) in declared.items():
        prod = BY_NAME[name]
        assert (prod.type, prod.children) == (form.result, form.args)
        assert operator_of(prod.template)[0] is spec  # type: ignore[arg-type]


def test_kernel_names_that_do_not_exist_are_refused() -> None:
    for bad in ("torch.no_such_function", "no_such_kernel", "torch.float32"):
        with pytest.raises(KeyError):
            K.resolve(bad)


def test_the_grammars_operators_are_the_tables() -> None:
    # infix operators: the grammar's arithmetic tokens are the table's infix rows
    grammar = grammar_text()
    tokens = set(re.findall(r'"([-+*/^])"', grammar))
    assert tokens == set(INFIX), tokens
    for sym, spec in INFIX.items():
        text = "sum_c(A) ^ 2" if sym == "^" else f"sum_c(A) {sym} sum_c(G)"
        assert operator_of(parse(text).body)[0] is spec  # type: ignore[arg-type]
    # named operators: each parses with its arity (and only with it); other names are unknown
    for name, spec in OPS.items():
        args = ", ".join("50" if i in spec.const_args else "A" for i in range(spec.arity))
        node = parse(f"{name}({args})").body
        assert isinstance(node, A.Call) and operator_of(node)[0] is spec
        with pytest.raises(ProgramSyntaxError, match=f"{name} takes {spec.arity} argument"):
            parse(f"{name}({args}, A)")
    assert operator_of(parse("-sum_c(A)").body)[0] is OPS["neg"]  # type: ignore[arg-type]
    with pytest.raises(ProgramSyntaxError, match="unknown operator 'softmax'; did you mean softmax_c"):
        parse("softmax(A)")


# ------------------------------------------------------------------ every operator computes its formula


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


def _per_image(fn):
    """A formula on one image's values (flattened), applied image by image."""
    return lambda x, *c: np.stack([fn(row, *c).reshape(x.shape[1:]) for row in _flat(x)])


def _winsorize(v: np.ndarray, p: float) -> np.ndarray:
    pos = v > 0
    return np.where(pos, np.minimum(v, np.percentile(v[pos], p)), v) if pos.any() else v


def _rescale(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    pos = v > 0
    if pos.sum() < 2:  # no positive entry: all zero; a single one: hi
        return np.where(pos, hi, 0.0)
    mn, mx = v[pos].min(), v[pos].max()
    return np.where(pos, lo + (v - mn) / (mx - mn) * (hi - lo), 0.0)


def _pc1(x: np.ndarray) -> np.ndarray:
    """Eigen-CAM: positions' channel vectors projected on the first right singular vector of the
    centred (HW x C) matrix, signed to correlate positively with the channel mean."""
    out = []
    for img in x:
        m = img.reshape(img.shape[0], -1).T
        m = m - m.mean(0)
        proj = m @ np.linalg.svd(m)[2][0]
        ref = img.mean(0).ravel()
        out.append((proj if proj @ (ref - ref.mean()) >= 0 else -proj).reshape(img.shape[1:]))
    return np.stack(out)


def _topk_pct(v: np.ndarray, k: float) -> np.ndarray:
    n = int(np.ceil(k * v.size / 100))
    return (v >= np.sort(v)[::-1][n - 1]).astype(float) if n else np.zeros_like(v)


def _mi_pair(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two equally long samples from numpy's 16 x 16 histogram over
    each one's [min, max] (the values are on the same grid: no resizing)."""
    if a.min() == a.max() or b.min() == b.max():
        return 0.0
    joint, _, _ = np.histogram2d(a, b, bins=16, range=[[a.min(), a.max()], [b.min(), b.max()]])
    p = joint / joint.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def _mi(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """mi(x, m) for x a Tensor (B, C, H, W) or a Map (B, H, W) and m a Map of the same H, W."""
    if x.ndim == 3:
        return np.array([_mi_pair(x[b].ravel(), m[b].ravel()) for b in range(len(x))])
    return np.array([[_mi_pair(x[b, c].ravel(), m[b].ravel()) for c in range(x.shape[1])] for b in range(len(x))])


def _softmax_c(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


_HW = (-2, -1)
#: each operator's value, written independently of sycam (numpy, float64), on a batch of values of
#: any kind it accepts (Tensor (B,C,H,W), Channels (B,C), Map (B,H,W), Scalar (B,)); constant
#: arguments as in _consts: percentiles 50, rescale to [0.1, 1], x ^ 2
FORMULA = {
    "relu": lambda x: np.maximum(x, 0), "abs": np.abs, "neg": np.negative,
    "exp": lambda x: np.exp(np.minimum(x, 80)), "log": lambda x: np.log(np.maximum(x, 1e-12)),
    "sqrt": lambda x: np.sqrt(np.maximum(x, 0)), "sq": np.square, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh, "sign": np.sign, "max": np.maximum, "min": np.minimum,
    "sum_hw": lambda x: x.sum(_HW), "mean_hw": lambda x: x.mean(_HW), "max_hw": lambda x: x.max(_HW),
    "sum_c": lambda x: x.sum(1), "mean_c": lambda x: x.mean(1), "max_c": lambda x: x.max(1),
    "norm": _per_image(lambda v: (v - v.min()) / (v.max() - v.min())),
    "zscore": _per_image(lambda v: (v - v.mean()) / v.std()),
    "softmax_c": _softmax_c,
    "winsorize": _per_image(_winsorize),
    "percentile": lambda x, p: np.percentile(_flat(x), p, axis=1),
    "threshold": _per_image(lambda v, p: np.where(v >= np.percentile(v, p), v, 0.0)),
    "rescale": _per_image(_rescale),
    "pc1": _pc1,
    "topk_pct": _per_image(_topk_pct),
    "mi": _mi,
    "threshold_hw": lambda x, p: np.stack([np.stack([np.where(c >= np.percentile(c, p), c, 0.0) for c in img])
                                           for img in x.reshape(x.shape[0], -1, *x.shape[-2:])]).reshape(x.shape),
    "confidence": lambda m: m.sum(_HW), "gain": lambda m: m.sum(_HW) - 1,  # with _fake_rescore
    "select_max": lambda k1, x1, k2, x2: np.where((k1 > k2).reshape(-1, *[1] * (x1.ndim - 1)), x1, x2),
    "^": lambda x, e: x ** e, "*": np.multiply, "/": np.divide, "+": np.add, "-": np.subtract,
}


@pytest.mark.parametrize("name", list(TABLE))
def test_every_operator_computes_its_formula(name: str) -> None:
    """On each kind of value its type rule accepts, the operator's kernel (as the compiler and
    the enumerator apply it) equals its formula above. A new operator adds its formula there."""
    assert name in FORMULA, f"add {name}'s formula to FORMULA"
    spec, vals = TABLE[name], _values(3)
    consts = [c.value for c in _consts(spec).values()]
    checked = 0
    if name in MIXED:  # select_max(k1, x1, k2, x2): Scalar keys that differ per image, values of every kind
        other = _values(4)
        other["Scalar"][0] = vals["Scalar"][0]  # a tie on image 0: x2
        for kind in NDIM:
            expr = apply_node(spec, (ARG["Scalar"], ARG[kind], ARG["Scalar"], ARG[kind]))
            it = iter([vals["Scalar"], vals[kind], other["Scalar"], other[kind]])
            got = compiler.eval_op(expr, lambda node: next(it), lambda n: n.value)  # type: ignore[arg-type]
            want = FORMULA[name](vals["Scalar"].numpy(), vals[kind].numpy(), other["Scalar"].numpy(), other[kind].numpy())
            np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{name} on {kind}")
            checked += 1
        assert checked == 4 and torch.equal(got[0], other[kind][0])
        return
    for kind in NDIM:
        if spec.typing.kinds is not None and kind not in spec.typing.kinds:
            continue
        expr = _applied(spec, (kind,) * _n_values(spec))
        if name in ("max", "min", "*", "/", "+", "-"):  # two different operands
            expr = apply_node(spec, (ARG[kind], ARG[kind]))
            other = _values(4)[kind]
            got = compiler.eval_op(expr, _two(vals[kind], other), lambda n: n.value)
            want = FORMULA[name](vals[kind].numpy(), other.numpy())
        elif spec.typing.paired is not None:  # the second argument is a value of the paired kind
            got = _kernel_value(expr, vals)
            want = FORMULA[name](vals[kind].numpy(), vals[spec.typing.paired + "2"].numpy())
        else:
            got = _kernel_value(expr, vals)
            want = FORMULA[name](vals[kind].numpy(), *consts)
        rtol = 1e-6 if name == "percentile" else 1e-9  # percentile interpolates in float32 (kernels.percentile)
        np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=1e-12, err_msg=f"{name} on {kind}")
        checked += 1
    assert checked >= 1


def _two(a: torch.Tensor, b: torch.Tensor):
    """A value callback yielding ``a`` then ``b`` (a binary operator's two operands)."""
    it = iter([a, b])
    return lambda node: next(it)


# ------------------------------------------------------------------ type rules agree with the kernels


def _kernel_value(expr: A.Expr, vals: dict[str, torch.Tensor], layers: int = 0):  # noqa: C901
    """``expr`` (an operator on ARG arguments) computed by the compiler's eval_op; ``layers`` > 0
    turns each argument into that many layers (a list), as each(...) does (a paired rule's second
    argument stays one value)."""
    by_node = {id(node): kind for kind, node in ARG.items()} | {id(node): kind + "2" for kind, node in PAIRED.items()}

    def value(node):
        v = vals[by_node[id(node)]]
        return [v * (i + 1) for i in range(layers)] if layers and by_node[id(node)] in ARG else v

    return compiler.eval_op(expr, value, lambda n: n.value, _fake_rescore)  # type: ignore[arg-type]


def _kind_of(v) -> str:
    return {nd: k for k, nd in NDIM.items()}[v.ndim]


@pytest.mark.parametrize("name", list(TABLE))
def test_type_rules_agree_with_the_kernels(name: str) -> None:
    """On every argument kind the type rule accepts, the kernel yields a value of the rule's
    result kind; every kind it refuses is a type error naming the operator."""
    spec, vals = TABLE[name], _values()
    accepted = 0
    if name in MIXED:
        return _select_types_agree(spec, vals)
    for kinds in [(k,) * _n_values(spec) for k in NDIM]:
        expr = _applied(spec, kinds)
        try:
            typ = _type(expr)
        except ProgramTypeError as err:
            assert spec.name in str(err) and spec.typing.kinds is not None and kinds[0] not in spec.typing.kinds
            continue
        accepted += 1
        out = _kernel_value(expr, vals)
        assert isinstance(out, torch.Tensor) and _kind_of(out) == typ.kind, (name, kinds, typ)
        assert out.shape[0] == 2
        # over layers: Layers<T> per layer, and Layers<Scalar> along the layers where the rule says so
        operands = operator_of(expr)[1]  # type: ignore[arg-type]
        ltyp = _type(apply_node(spec, tuple(a if isinstance(a, A.Num) or (spec.typing.paired is not None and i == 1)
                                            else A.Each(A.SelNamed("convs"), a) for i, a in enumerate(operands))))
        lout = _kernel_value(expr, vals, layers=3)
        if isinstance(ltyp, LayersType):
            assert isinstance(lout, list) and len(lout) == 3 and all(_kind_of(v) == ltyp.elem.kind for v in lout)
        else:  # an along-layers reduction of Layers<Scalar> (percentile)
            assert spec.typing.along_layers and kinds[0] == "Scalar" and _kind_of(lout) == ltyp.kind
    assert accepted >= 1


def _select_types_agree(spec: OpSpec, vals: dict[str, torch.Tensor]) -> None:
    """select_max: keys must be Scalars (else a type error naming the operator); the values'
    kinds broadcast as arithmetic does, also per layer, and the kernel yields that kind."""
    for k in ("Tensor", "Channels", "Map"):
        with pytest.raises(ProgramTypeError, match="select_max"):
            _type(apply_node(spec, (ARG[k], ARG["Map"], ARG["Scalar"], ARG["Map"])))
    for a, b in [(k, k) for k in NDIM] + [("Channels", "Tensor"), ("Scalar", "Map"), ("Channels", "Map")]:
        expr = apply_node(spec, (ARG["Scalar"], ARG[a], ARG["Scalar"], ARG[b]))
        assert _kind_of(_kernel_value(expr, vals)) == _type(expr).kind, (a, b)
    each = A.Each(A.SelNamed("convs"), ARG["Map"])
    typ = _type(apply_node(spec, (ARG["Scalar"], each, ARG["Scalar"], each)))
    assert isinstance(typ, LayersType) and typ.elem.kind == "Map"
    maps = [vals["Map"] * (i + 1) for i in range(3)]
    it = iter([vals["Scalar"], maps, -vals["Scalar"], maps[::-1]])
    lout = compiler.eval_op(apply_node(spec, (ARG["Scalar"], ARG["Map"], ARG["Scalar"], ARG["Map"])), lambda n: next(it),
                            lambda n: n.value)  # type: ignore[arg-type]
    assert isinstance(lout, list) and len(lout) == 3 and all(_kind_of(v) == "Map" for v in lout)
    with pytest.raises(ProgramTypeError, match="combines Layers<Map> with Map"):
        _type(apply_node(spec, (ARG["Scalar"], each, ARG["Scalar"], ARG["Map"])))


def test_a_mixed_broadcast_types_as_its_kernel_computes() -> None:
    vals = _values()
    for sym in ("*", "+", "max"):
        spec = TABLE[sym]
        for a, b in [("Channels", "Tensor"), ("Map", "Tensor"), ("Scalar", "Map"), ("Channels", "Map")]:
            expr = apply_node(spec, (ARG[a], ARG[b]))
            assert _kind_of(_kernel_value(expr, vals)) == _type(expr).kind


# ------------------------------------------------------------------ canonical rules hold for the kernels


def _unary(spec: OpSpec):
    fn, consts = compiler.KERNELS[spec.name], [c.value for c in _consts(spec).values()]
    return lambda x: fn(x, *consts)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-9, atol=1e-12))


@pytest.mark.parametrize("name", list(TABLE))
def test_canonical_rules_hold_for_the_kernels(name: str) -> None:
    """Every rewrite the canonical form applies to an operator is true of its kernel, on each kind
    of value the operator accepts; the canonical form is built from the table's row."""
    spec, rule = TABLE[name], TABLE[name].canon
    vals = _values(1)
    kinds = [k for k in NDIM if spec.typing.kinds is None or k in spec.typing.kinds]
    for kind in kinds:
        x, y = vals[kind], _values(2)[kind]
        if _n_values(spec) == 1:
            f = _unary(spec)
            if rule.idempotent:
                assert _close(f(f(x)), f(x)), (name, kind)
            for g in rule.absorbs:
                gx = _unary(TABLE[g])(x)
                assert _close(f(gx), gx), (name, g, kind)
            if rule.homogeneous:
                assert _close(f(2.5 * x), 2.5 * f(x)), (name, kind)
            if rule.scale_invariant:
                assert _close(f(2.5 * x), f(x)), (name, kind)
            if rule.sympy == "neg":
                assert _close(f(x), -x)
            if rule.sympy == "square":
                assert _close(f(x), x * x)
        else:
            f2 = compiler.KERNELS[spec.name]
            if rule.idempotent:
                assert _close(f2(x, x), x), (name, kind)
            if rule.commutative:
                assert _close(f2(x, y), f2(y, x)), (name, kind)
            if rule.sympy in ("add", "sub", "mul", "div"):
                expected = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y}[rule.sympy]
                assert _close(f2(x, y), expected), (name, kind)
    # the sympy side: an uninterpreted function named after the operator, or sympy's arithmetic
    expr = to_sympy(_applied(spec, MIXED.get(name, ("Tensor", "Channels"))[:_n_values(spec)]))
    if rule.sympy == "function":
        assert isinstance(expr, _fn(name))
    else:
        assert not any(isinstance(e, sp.Function) and type(e).__name__ == name for e in sp.preorder_traversal(expr))


def test_canonical_rules_rewrite_as_declared() -> None:
    def canon(text: str) -> str:
        return sp.srepr(to_sympy(parse(text).body))

    assert canon("relu(relu(sum_c(A)))") == canon("relu(sum_c(A))")
    assert canon("abs(relu(sum_c(A)))") == canon("relu(sum_c(A))")
    assert canon("relu(2 * sum_c(A))") == canon("2 * relu(sum_c(A))")
    assert canon("norm(3 * sum_c(A))") == canon("norm(sum_c(A))")
    assert canon("max(sum_c(G), sum_c(A))") == canon("max(sum_c(A), sum_c(G))")
    assert canon("max(sum_c(A), sum_c(A))") == canon("sum_c(A)")
    assert canon("sq(sum_c(A))") == canon("sum_c(A) * sum_c(A)") == canon("sum_c(A)^2")
    # and nothing more: relu(abs(x)) is not rewritten, nor threshold(c x, p)
    assert canon("relu(abs(sum_c(A)))") != canon("abs(sum_c(A))")
    assert canon("threshold(2 * sum_c(A), 50)") != canon("2 * threshold(sum_c(A), 50)")
    assert canon("exp(2 * sum_c(A))") != canon("2 * exp(sum_c(A))")


# ------------------------------------------------------------------ the search space


# the productions of the search space before the table existed: names, children, templates, order
PINNED = {
    "T": [("A", (), "A"), ("G", (), "G"), ("relu_T", ("T",), "relu($0)"), ("abs_T", ("T",), "abs($0)"),
          ("sq_T", ("T",), "sq($0)"), ("mul_TT", ("T", "T"), "$0 * $1"), ("add_TT", ("T", "T"), "$0 + $1"),
          ("mul_CT", ("C", "T"), "$0 * $1")],
    "C": [("mean_hw", ("T",), "mean_hw($0)"), ("max_hw", ("T",), "max_hw($0)"), ("relu_C", ("C",), "relu($0)"),
          ("sq_C", ("C",), "sq($0)"), ("softmax_C", ("C",), "softmax_c($0)"), ("mul_CC", ("C", "C"), "$0 * $1"),
          ("div_CC", ("C", "C"), "$0 / $1")],
    "M": [("sum_c", ("T",), "sum_c($0)"), ("mean_c", ("T",), "mean_c($0)"), ("max_c", ("T",), "max_c($0)"),
          ("relu_M", ("M",), "relu($0)"), ("sq_M", ("M",), "sq($0)"), ("mul_MM", ("M", "M"), "$0 * $1"),
          ("add_MM", ("M", "M"), "$0 + $1")],
    "S": [("mean_c_S", ("C",), "mean_c($0)"), ("max_c_S", ("C",), "max_c($0)")],
    "P": [("single", ("M",), "$0"), ("layers_mean", ("M",), "fuse(each($sel, norm($0)), mean)"),
          ("layers_max", ("M",), "fuse(each($sel, norm($0)), max)"),
          ("layers_winsor", ("M", "S"),
           "fuse(each($sel, norm($0)), rescale(winsorize(each($sel, relu($1)), ?p:[0,100]=90), 0.1, 1), sum)")],
}


def test_the_search_space_keeps_its_productions_and_their_order() -> None:
    """Optuna studies record each choice's options in order, and the enumerator's result depends on
    it: the productions that existed keep their names, templates and relative order (a new
    operator's forms may join them). The default space is exactly these, in this order."""
    from sycam.search.space import DEFAULT

    for typ, pinned in PINNED.items():
        names = [p[0] for p in pinned]
        got = [(p.name, p.children, pretty_expr(p.template)) for p in BY_TYPE[typ] if p.name in names]
        assert got == pinned, typ
        assert [p.name for p in DEFAULT.by_type(typ)] == names, typ
    assert set(DEFAULT.productions) == {p[0] for pinned in PINNED.values() for p in pinned}
    assert (DEFAULT.selections, DEFAULT.max_size, DEFAULT.grow, DEFAULT.max_depth, DEFAULT.interleave) == \
        (("convs", "stages"), 8, True, 6, False)


def test_search_forms_type_as_declared() -> None:
    """Each form's production types, by the checker, to the form's result."""
    letters = {v: k for k, v in KINDS.items()}
    for spec in TABLE.values():
        for form in spec.search:
            kinds, consts, terms = iter(form.args), iter(form.consts), dict(form.terms)
            expr = apply_node(spec, tuple(A.Num(next(consts)) if i in spec.const_args else A.Terminal(terms[i])
                                          if i in terms else ARG[KINDS[next(kinds)]] for i in range(spec.arity)))
            assert letters[_type(expr).kind] == form.result, (spec.name, form)


def test_the_enumerator_evaluates_through_the_tables_kernels(monkeypatch) -> None:
    """The enumerator has no evaluator of its own: every operator value it computes on the probe
    goes through the compiler's kernels (counted here), and agrees with the compiled program."""
    from sycam.search.enumerate import Enumerator
    from tests.test_search import probe_captures, tiny_cnn

    calls: dict[str, int] = {}

    def counting(name, fn):
        def wrapped(*args):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args)
        return wrapped

    for name, fn in list(compiler.KERNELS.items()):
        monkeypatch.setitem(compiler.KERNELS, name, counting(name, fn))
    caps, resolver = probe_captures(tiny_cnn())
    from sycam.search.presets import FULL

    # the full space: every form of the table (S, D: the probe has none, so not the expensive terminals)
    space = FULL
    enum = Enumerator(caps, resolver, max_size=5, bucket=100_000, lifted=0, space=space)  # no bucket fills up
    enum.run()
    # select_max(S, M, S, M) has 11 nodes at least: a space of it and the required productions
    from sycam.search.space import REQUIRED, Space

    select = Enumerator(caps, resolver, max_size=11, bucket=100_000, lifted=0, space=Space("select", REQUIRED + ("select_max_SMSM",)))
    select.run()
    searchable = {s.name for s in TABLE.values() if s.search}
    assert searchable <= set(calls), searchable - set(calls)
    # bit for bit where the compiler takes no shortcut (it computes sum_c(w * T) as one matrix product)
    exact = [e for en in (enum, select) for entries in en.banks["M"].values() for e in entries if "*" not in pretty_expr(e.expr)]
    assert len(exact) > 10
    for e in exact:
        assert torch.equal(compiler.CompiledProgram(A.Program(e.expr), resolver).raw(caps), e.value), pretty_expr(e.expr)


def test_the_language_imports_without_torch() -> None:
    code = ("import sys; import sycam.lang, sycam.lang.ops, sycam.lang.types, sycam.lang.canon, sycam.lang.parse; "
            "sys.exit('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr or "sycam.lang imported torch"
