"""The table of the language's operators: one :class:`OpSpec` per operator holds everything the
rest of sycam knows about it.

- ``arity``, ``const_args``, ``ranges``: syntax (the parser) and the constant arguments' bounds;
- ``typing``: its :class:`TypeRule`, which :mod:`sycam.lang.types` applies;
- ``kernel``: its torch implementation, by name (see below), which :mod:`sycam.compile` calls —
  for compiled programs and for the enumerator's probe values alike;
- ``canon``: its :class:`Canon` rule, how :mod:`sycam.lang.canon` maps it to sympy;
- ``search``: the :class:`Form` s in which :mod:`sycam.search.space` may produce it (none: the
  search never does).

Named operators (``relu(x)``) and the infix ones (``+ - * /`` and ``x ^ c``) are rows of the same
table (:data:`TABLE`); :data:`OPS` holds the named ones, the names the parser accepts in a call.

Why kernels are names and not functions: the language knows nothing of torch (``import
sycam.lang`` must not import it), so a row cannot hold a torch function. It holds the function's
name instead — a path into torch (``"torch.relu"``) where torch's own function is the kernel, or
the name of one of :mod:`sycam.kernels`' registered kernels (``"safe_div"``) where sycam guards or
reshapes — and :func:`sycam.kernels.resolve` turns it into the function once, when the compiler is
imported. A name keeps the whole operator in one row (a separate registry keyed by operator would
be a second place to edit); a function importing torch inside would hide torch in the language
package and re-import on every call. ``tests/test_ops_table.py`` checks that every row's kernel
resolves and that every kernel sycam registers is some row's.

There are no production weights: the enumerator is exhaustive by size and the sampler's choices
are Optuna's uniform categoricals, so a form is either declared (searchable) or not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sycam.lang import ast as A

MAX_EXPONENT = 64  # the bound of x ^ c, the same as sycam.kernels.MAX_EXPONENT
KINDS = {"T": "Tensor", "C": "Channels", "M": "Map", "S": "Scalar"}  # the search space's type letters


@dataclass(frozen=True, eq=False)
class TypeRule:
    """How an operator types, from the type of its first (non-constant) argument.

    ``kinds``: argument kind -> result kind (``None``: any kind, the result's the same); another
    kind is a type error saying ``error`` (formatted with ``fn``, the operator, and ``x``, the
    argument's type). A result keeps the argument's layer, a Scalar has none. ``broadcast``: the
    two arguments broadcast together (arithmetic, ``max``, ``min``). ``Layers<T>`` applies the rule
    to each layer, except that with ``along_layers`` a ``Layers<Scalar>`` is one value along the
    layers, typed as Channels are (a Channels result being ``Layers<Scalar>`` again).
    ``paired``: the operator takes a second value argument, which must be of this kind (of any
    layer, never ``Layers<T>``); the rule applies to the first argument (``mi(x, m)``).
    ``name`` is the rule's family (``OpSpec.family``).
    """

    name: str
    kinds: Mapping[str, str] | None = None
    error: str = ""
    broadcast: bool = False
    along_layers: bool = False
    paired: str | None = None


ELEMENTWISE = TypeRule("elementwise")
BINARY = TypeRule("binary", broadcast=True)
REDUCE_HW = TypeRule("reduce_hw", {"Tensor": "Channels", "Map": "Scalar"},
                     "{fn} reduces over H and W: it needs a Tensor or a Map, got {x}")
REDUCE_C = TypeRule("reduce_c", {"Tensor": "Map", "Channels": "Scalar"},
                    "{fn} reduces over channels: it needs a Tensor or Channels, got {x}")
SOFTMAX_C = TypeRule("softmax_c", {"Tensor": "Tensor", "Channels": "Channels"}, "{fn} needs a Tensor or Channels, got {x}")
PC1 = TypeRule("pc1", {"Tensor": "Map"}, "{fn} projects a Tensor (C×H×W) onto its first principal component, got {x}")
AXIS = TypeRule("axis", {"Tensor": "Tensor", "Channels": "Channels", "Map": "Map"},
                "{fn} of a single Scalar per image is degenerate; apply it to a Map, Channels, Tensor or Layers<Scalar>",
                along_layers=True)
AXIS_HW = TypeRule("axis_hw", {"Tensor": "Tensor", "Map": "Map"},
                   "{fn} works per channel over H and W: it needs a Tensor or a Map, got {x}")
RESCORE = TypeRule("rescore", {"Map": "Scalar"},
                   "{fn} re-scores the input masked by a Map (one per image), got {x}")
SELECT = TypeRule("select", error="{fn}(k1, x1, k2, x2): the keys k1 and k2 must be Scalars, got {x}")
PERCENTILE = TypeRule("percentile", {"Tensor": "Scalar", "Channels": "Scalar", "Map": "Scalar"},
                      "{fn} of a single Scalar is the Scalar itself; apply it to a Map, Channels, Tensor or Layers<Scalar>",
                      along_layers=True)
MI = TypeRule("mi", {"Tensor": "Channels", "Map": "Scalar"},
              "{fn} measures the mutual information of each channel of a Tensor (or of a Map) with a Map: its first "
              "argument must be a Tensor or a Map, got {x}", paired="Map")


@dataclass(frozen=True)
class Canon:
    """How the canonical form treats an operator.

    ``sympy``: ``"function"`` makes it an uninterpreted sympy function carrying the rules below;
    ``add sub mul div pow neg square`` make it sympy's own arithmetic (``sq(x)`` is ``x**2``).
    Rules (each must hold for sycam's kernels): ``idempotent`` — unary ``f(f(x)) = f(x)``, binary
    ``f(x, x) = x``; ``absorbs`` — ``f(g(x)) = g(x)`` for the listed ``g``; ``homogeneous`` —
    ``f(c·x) = c·f(x)`` and ``scale_invariant`` — ``f(c·x) = f(x)``, for numbers ``c > 0`` (one-argument
    operators only); ``commutative`` — the arguments' order is irrelevant.
    """

    sympy: str = "function"
    idempotent: bool = False
    absorbs: tuple[str, ...] = ()
    homogeneous: bool = False
    scale_invariant: bool = False
    commutative: bool = False


@dataclass(frozen=True)
class Form:
    """One production of the search space: the operator on arguments of the types ``args``
    yielding ``result`` (letters of :data:`KINDS`). ``consts``: the values of the operator's
    constant arguments (``const_args``, in order; e.g. ``threshold(x, 50)``), fixed by the form.
    ``terms``: value arguments the form fills with a terminal instead of a child, as (argument
    position, terminal) pairs — ``mi(x, X)``: the image ``X`` is a Map of the input grid, which no
    production of the space's types (all of the current layer) can be, so it enters only here.
    ``name`` names the production (Optuna's parameter values and derivations use it); by default
    ``<operator>_<argument letters><terminals>``, then ``_<constant>`` for each constant."""

    args: tuple[str, ...]
    result: str
    name: str = ""
    consts: tuple[float, ...] = ()
    terms: tuple[tuple[int, str], ...] = ()


def on(*kinds: str) -> tuple[Form, ...]:
    """Forms of an elementwise operator: on each of ``kinds``, yielding the same kind."""
    return tuple(Form((k,), k) for k in kinds)


@dataclass(frozen=True)
class Range:
    """Constant argument ``index`` must lie in [lo, hi]; the type error names it ``what`` (with
    ``{fn}``) and points at the call, or at the argument when ``at_arg``."""

    index: int
    lo: float
    hi: float
    what: str
    at_arg: bool = False


PERCENT = (Range(1, 0.0, 100.0, "{fn}'s percentile"),)
SHARE = (Range(1, 0.0, 100.0, "{fn}'s percentage"),)


def at(kinds: tuple[str, ...], *values: float) -> tuple[Form, ...]:
    """Forms of an operator with one constant argument: on each of ``kinds`` (the same kind out),
    with each of ``values`` as the constant."""
    return tuple(Form((k,), k, consts=(v,)) for k in kinds for v in values)


BINARY_FORMS = (Form(("M", "M"), "M"), Form(("C", "C"), "C"))  # two Maps or two Channels, one out


@dataclass(frozen=True)
class OpSpec:
    """One operator: see the module docstring for its parts."""

    name: str
    arity: int
    typing: TypeRule
    kernel: str
    canon: Canon = Canon()
    search: tuple[Form, ...] = ()
    const_args: tuple[int, ...] = ()  # argument positions that must be a number or ?param
    ranges: tuple[Range, ...] = ()
    infix: bool = False  # written between its operands (``a + b``, ``x ^ c``), not called by name
    needs_model: bool = False  # the kernel re-runs the model: the compiler passes it Captures.rescore
    doc: str = ""

    @property
    def family(self) -> str:
        return self.typing.name

    def production(self, form: Form) -> str:
        """The name of the search space's production for ``form``."""
        if form.name:
            return form.name
        op = {"^": "pow", "-": "sub", "+": "add", "*": "mul", "/": "div"}.get(self.name, self.name)
        return (f"{op}_{''.join(form.args)}{''.join(t for _, t in form.terms)}"
                + "".join(f"_{c:g}" for c in form.consts))


def _table(*specs: OpSpec) -> dict[str, OpSpec]:
    return {s.name: s for s in specs}


H = Canon(homogeneous=True)

TABLE: dict[str, OpSpec] = _table(
    # elementwise unary
    OpSpec("relu", 1, ELEMENTWISE, "torch.relu", Canon(idempotent=True, homogeneous=True), on("T", "C", "M"), doc="max(x, 0)"),
    OpSpec("abs", 1, ELEMENTWISE, "torch.abs", Canon(idempotent=True, absorbs=("relu",)), on("T", "C", "M"), doc="|x|"),
    OpSpec("neg", 1, ELEMENTWISE, "torch.neg", Canon("neg"), on("C"), doc="-x"),
    OpSpec("exp", 1, ELEMENTWISE, "guarded_exp", search=on("T", "C", "M"), doc="e^min(x, 80) (guarded)"),
    OpSpec("log", 1, ELEMENTWISE, "guarded_log", search=on("T", "C", "M"), doc="log(max(x, eps)) (guarded)"),
    OpSpec("sqrt", 1, ELEMENTWISE, "guarded_sqrt", search=on("T", "C", "M"), doc="sqrt(max(x, 0)) (guarded)"),
    OpSpec("sq", 1, ELEMENTWISE, "torch.square", Canon("square"), on("T", "C", "M"), doc="x^2"),
    OpSpec("sigmoid", 1, ELEMENTWISE, "torch.sigmoid", search=on("T", "C", "M"), doc="1 / (1 + e^-x)"),
    OpSpec("tanh", 1, ELEMENTWISE, "torch.tanh", search=on("T", "C", "M"), doc="tanh(x)"),
    OpSpec("sign", 1, ELEMENTWISE, "torch.sign", Canon(idempotent=True, scale_invariant=True), on("C"), doc="sign(x) in {-1, 0, 1}"),
    # elementwise binary
    OpSpec("max", 2, BINARY, "torch.maximum", Canon(idempotent=True, commutative=True), BINARY_FORMS, doc="elementwise maximum (broadcasting)"),
    OpSpec("min", 2, BINARY, "torch.minimum", Canon(idempotent=True, commutative=True), BINARY_FORMS, doc="elementwise minimum (broadcasting)"),
    # information (before the reductions: the full space's enumerator, taking a type's productions in turns,
    # then has mi(A, X) first among the Channels of size 3 and MI-CAM's mi(A, X) * A among the first products)
    # searched with the image as the second argument (MI-CAM's channel weights mi(A, X), a layer's MI with the image)
    OpSpec("mi", 2, MI, "mutual_info", search=(Form(("T",), "C", terms=((1, "X"),)), Form(("M",), "S", terms=((1, "X"),))),
           doc="MI-CAM: mutual information (nats, 16x16-bin joint histogram over each variable's min..max per image, "
               "on a grid of at most 56x56) of each channel of x, or of a Map x, with the Map m"),
    # reductions
    OpSpec("sum_hw", 1, REDUCE_HW, "sum_hw", H, (Form(("T",), "C"), Form(("M",), "S")), doc="sum over H,W: Tensor->Channels, Map->Scalar"),
    OpSpec("mean_hw", 1, REDUCE_HW, "mean_hw", H, (Form(("T",), "C", "mean_hw"),),
           doc="mean over H,W: Tensor->Channels, Map->Scalar"),
    OpSpec("max_hw", 1, REDUCE_HW, "max_hw", H, (Form(("T",), "C", "max_hw"),), doc="max over H,W: Tensor->Channels, Map->Scalar"),
    OpSpec("sum_c", 1, REDUCE_C, "sum_c", H, (Form(("T",), "M", "sum_c"),), doc="sum over channels: Tensor->Map, Channels->Scalar"),
    OpSpec("mean_c", 1, REDUCE_C, "mean_c", H, (Form(("T",), "M", "mean_c"), Form(("C",), "S", "mean_c_S")),
           doc="mean over channels: Tensor->Map, Channels->Scalar"),
    OpSpec("max_c", 1, REDUCE_C, "max_c", H, (Form(("T",), "M", "max_c"), Form(("C",), "S", "max_c_S")),
           doc="max over channels: Tensor->Map, Channels->Scalar"),
    # normalisation along the natural axis (Map: H,W; Channels: C; Tensor: C,H,W;
    # Layers<Scalar>: the layers; other Layers<T>: each layer separately)
    OpSpec("norm", 1, AXIS, "norm", Canon(idempotent=True, scale_invariant=True), on("C", "M"),
           doc="min-max to [0, 1] along the natural axis (constant -> 0)"),
    OpSpec("zscore", 1, AXIS, "zscore", Canon(idempotent=True, scale_invariant=True), on("C", "M"), doc="(x - mean) / std along the natural axis"),
    OpSpec("softmax_c", 1, SOFTMAX_C, "softmax_c", search=(Form(("C",), "C", "softmax_C"),),
           doc="softmax over channels: Channels or Tensor"),
    # robust statistics along the natural axis
    OpSpec("winsorize", 2, AXIS, "winsorize", const_args=(1,), ranges=PERCENT, search=at(("M", "C"), 90.0, 99.0),
           doc="cap the positive entries at the p-th percentile of the positive entries"),
    OpSpec("percentile", 2, PERCENTILE, "percentile", const_args=(1,), ranges=PERCENT,
           search=tuple(Form(("M",), "S", consts=(p,)) for p in (50.0, 90.0)),
           doc="p-th percentile (linear interpolation) -> Scalar"),
    OpSpec("threshold", 2, AXIS, "threshold", const_args=(1,), ranges=PERCENT, search=at(("M",), 50.0, 80.0), doc="zero the entries below the p-th percentile"),
    OpSpec("rescale", 3, AXIS, "rescale", const_args=(1, 2), search=(Form(("M",), "M", consts=(0.1, 1.0)),),
           doc="positive entries linearly to [lo, hi]; zeros stay zero; all equal -> hi"),
    OpSpec("topk_pct", 2, AXIS, "topk_pct", const_args=(1,), ranges=SHARE, search=at(("M",), 20.0),
           doc="MetaCAM's vote: 1 on the k% highest entries (the ceil(k N / 100) largest, ties at the cut kept), 0 elsewhere"),
    OpSpec("threshold_hw", 2, AXIS_HW, "threshold_hw", const_args=(1,), ranges=PERCENT, search=at(("T",), 10.0),
           doc="per channel: zero the entries below the channel's p-th percentile over H,W (UnionCAM's denoising)"),
    # re-scoring the input masked by a map (one extra forward per image and call: never searched)
    OpSpec("confidence", 1, RESCORE, "confidence", needs_model=True,
           doc="softmax probability of the target for the input times norm(upsample(map)), Map->Scalar"),
    OpSpec("gain", 1, RESCORE, "gain", needs_model=True,
           doc="confidence(map) minus the target's probability on the blank (all-zero) input, Map->Scalar"),
    # per-image selection
    # searched on Maps with Scalar keys (e.g. percentiles of the two maps); at least 11 nodes, so the
    # enumerator reaches it only with a long budget (size 11 from 2,400 s), the sampler at any
    OpSpec("select_max", 4, SELECT, "select_max", search=(Form(("S", "M", "S", "M"), "M"),),
           doc="select_max(k1, x1, k2, x2): per image x1 where the Scalar k1 > k2, else x2"),
    # projections
    OpSpec("pc1", 1, PC1, "pc1", H, (Form(("T",), "M", "pc1"),), doc="Eigen-CAM: projection on the first principal component, Tensor->Map"),
    # infix, tightest-binding first (the search lists products before sums)
    OpSpec("^", 2, ELEMENTWISE, "power", Canon("pow"), const_args=(1,), infix=True, search=at(("M",), 0.5, 3.0),
           ranges=(Range(1, -MAX_EXPONENT, MAX_EXPONENT, "an exponent", at_arg=True),),
           doc="x^c: integer c keeps the sign, others act on |x|, negative c divide safely"),
    OpSpec("*", 2, BINARY, "torch.mul", Canon("mul"),
           (Form(("T", "T"), "T", "mul_TT"), Form(("C", "T"), "T", "mul_CT"), Form(("C", "C"), "C", "mul_CC"),
            Form(("M", "M"), "M", "mul_MM")), infix=True, doc="product (broadcasting)"),
    OpSpec("/", 2, BINARY, "safe_div", Canon("div"), (Form(("C", "C"), "C", "div_CC"),), infix=True,
           doc="guarded division: x/0 is finite, 0/0 = 0"),
    OpSpec("+", 2, BINARY, "torch.add", Canon("add"), (Form(("T", "T"), "T", "add_TT"), Form(("M", "M"), "M", "add_MM"),
                                                      Form(("C", "C"), "C", "add_CC")), infix=True, doc="sum (broadcasting)"),
    OpSpec("-", 2, BINARY, "torch.sub", Canon("sub"), BINARY_FORMS, infix=True, doc="difference (broadcasting)"),
)

OPS: dict[str, OpSpec] = {name: spec for name, spec in TABLE.items() if not spec.infix}  # called by name
INFIX: dict[str, OpSpec] = {name: spec for name, spec in TABLE.items() if spec.infix}

# R1: Recipro-CAM with the one-hot kernel (R: the Gaussian); X: the input image's grey level (a Map on the input grid)
TERMINALS = ("A", "G", "S", "D", "R", "R1", "Y", "X")
SELECTORS = ("convs", "last", "stages")
FUSE_MODES = ("sum", "mean", "max", "prod")
FUSE_GRIDS = ("finest", "input")
SCORE_KINDS = {"logit": 0, "prob": 0, "finer": 2}  # kind -> number of arguments (k, alpha)

Applied = A.BinOp | A.Pow | A.Call  # the AST nodes that apply an operator of the table


def operator_of(node: Applied) -> tuple[OpSpec, tuple[A.Expr, ...]]:
    """The row of an operator node and its arguments in the row's order (``x ^ c``: x, c)."""
    if isinstance(node, A.BinOp):
        return TABLE[node.op], (node.left, node.right)
    if isinstance(node, A.Pow):
        return TABLE["^"], (node.base, node.exponent)
    if isinstance(node, A.Call):
        return TABLE[node.fn], node.args
    raise TypeError(f"not an operator node: {node!r}")


def apply_node(spec: OpSpec, args: tuple[A.Expr, ...]) -> Applied:
    """The AST node applying ``spec`` to ``args`` (the inverse of :func:`operator_of`)."""
    if spec.name == "^":
        return A.Pow(args[0], args[1])  # type: ignore[arg-type]
    if spec.infix:
        return A.BinOp(spec.name, args[0], args[1])
    return A.Call(spec.name, tuple(args))
