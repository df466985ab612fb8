"""Lower a checked program to batched torch: ``CompiledProgram(captures) -> maps (B, H, W)``.

The compiler resolves layer references against a model once, derives the
:class:`~sycam.capture.CaptureRequest` the program needs, and evaluates the expression over
:class:`~sycam.capture.Captures` with shared sub-expressions computed once. The final Map is
upsampled (bilinear) to the input size and min-max normalised per image; a program whose raw map
holds NaN or Inf raises :class:`~sycam.errors.ProgramRuntimeError` naming the images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from sycam import kernels as K
from sycam.capture import CaptureRequest, Captures
from sycam.cse import NodeKey, SharedView, shareable
from sycam.errors import LayerError, ParamError, ProgramRuntimeError
from sycam.lang import ast as A
from sycam.lang.ops import TABLE, Applied, OpSpec, operator_of
from sycam.lang.parse import parse
from sycam.lang.types import CheckResult, check
from sycam.models._layers import conv_layers, resolve_layer

# ------------------------------------------------------------------ layer resolution


class LayerResolver:
    """Resolves ``A@l``, ``each(SEL, ...)`` and the default layer against one model.

    Indices count over the model's Conv2d layers (``convs``) in ``named_modules()`` order,
    negative from the end; names are module names.
    """

    def __init__(self, module: nn.Module, default: str | None = None, stages: Sequence[str] | None = None) -> None:
        self.module = module
        self.names = [n for n, _ in module.named_modules() if n]
        self.convs = conv_layers(module)
        self._default = self.by_name(default) if default is not None else (self.convs[-1] if self.convs else None)
        self._stages = [self.by_name(s) for s in stages] if stages else None

    @property
    def identity(self) -> tuple[int, str | None, tuple[str, ...]]:
        """What decides the layers a program reads: the model, the default layer, the stages."""
        return (id(self.module), self._default, tuple(self._stages or ()))

    @property
    def default(self) -> str:
        """The default target layer (bare ``A``/``G``); an error only when a program needs it."""
        if self._default is None:
            raise LayerError("the model has no Conv2d layer; name the target layer explicitly (layers=...)")
        return self._default

    @property
    def stages(self) -> list[str]:
        return list(self._stages) if self._stages else [self.default]

    def _resolve(self, ref: str | int) -> str:
        try:
            return resolve_layer(self.module, ref)
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise LayerError(str(err.args[0] if err.args else err).replace("resolve_layer: ", "")) from None

    def by_name(self, name: str) -> str:
        return self._resolve(name)

    def by_index(self, index: int) -> str:
        return self._resolve(index)

    def ref(self, ref: A.LayerRef) -> str:
        return self.by_index(ref.index) if ref.index is not None else self.by_name(str(ref.name))

    def select(self, sel: A.Selection) -> list[str]:
        if isinstance(sel, A.SelNamed):
            if sel.name == "convs":
                if not self.convs:
                    raise LayerError("the selection 'convs' is empty: the model has no Conv2d layer")
                return list(self.convs)
            if sel.name == "last":
                return [self.default]
            return list(self.stages)
        if isinstance(sel, A.SelSlice):
            chosen = self.convs[slice(sel.start, sel.stop, sel.step)]
            if not chosen:
                raise LayerError(f"the layer slice {sel.start}:{sel.stop} selects none of the {len(self.convs)} conv layers")
            return chosen
        return [self.ref(r) for r in sel.layers]


# ------------------------------------------------------------------ operators

#: every operator's torch implementation, resolved once from the table (sycam.lang.ops)
KERNELS: dict[str, Callable[..., Tensor]] = {name: K.resolve(spec.kernel) for name, spec in TABLE.items()}

#: the channel reductions the compiler computes as one matrix product on ``w * T`` (True: a mean)
_WEIGHTED = {"sum_c": False, "mean_c": True}


def apply_op(spec: OpSpec, values: Sequence[K.Value], consts: Sequence[float],
             rescore: Callable[[Tensor, bool], Tensor] | None = None) -> K.Value:
    """``spec``'s kernel on evaluated arguments ``values`` and constant arguments ``consts``, with
    the language's broadcasting (a broadcasting rule), per layer of a ``Layers<T>``, or along the
    layers of a ``Layers<Scalar>`` (an ``along_layers`` rule). An operator that re-runs the model
    (``needs_model``) gets ``rescore``, the captures' re-scorer."""
    fn = KERNELS[spec.name]
    if spec.typing.broadcast:
        return K.broadcast(fn, values[0], values[1])
    if len(values) > 2:  # select_max: the kernel broadcasts its own arguments
        return fn(*values)
    if spec.needs_model:
        if rescore is None:
            raise ProgramRuntimeError(f"{spec.name}(...) re-runs the model on masked inputs, but these captures carry "
                                      "no re-scorer (capture with a request whose rescore is set, as compiled programs do)")
        return K.lift(lambda v: fn(v, rescore), values[0])
    x = values[0]
    if spec.typing.paired is not None:  # a second value argument, the same for every layer of x
        other = values[1]
        return K.lift(lambda v: fn(v, other), x)  # type: ignore[arg-type]
    per_value = (lambda v: fn(v, *consts)) if consts else fn
    if spec.typing.along_layers and isinstance(x, list) and x and x[0].ndim == 1:
        return K.along_layers(per_value, x)
    return K.lift(per_value, x)


def eval_op(node: Applied, value: Callable[[A.Expr], K.Value], scalar: Callable[[A.Num | A.Param], float],
            rescore: Callable[[Tensor, bool], Tensor] | None = None) -> K.Value:
    """The value of an operator node (``a * b``, ``x ^ c``, ``relu(x)``, ``winsorize(x, p)``, ...):
    ``value`` evaluates an argument, ``scalar`` a constant argument. The one place where the
    language's operators meet their kernels: compiled programs and the enumerator's probe values
    (:mod:`sycam.search.enumerate`) are both computed here."""
    spec, args = operator_of(node)
    consts = [scalar(a) for i, a in enumerate(args) if i in spec.const_args]  # type: ignore[arg-type]
    return apply_op(spec, [value(a) for i, a in enumerate(args) if i not in spec.const_args], consts, rescore)


# ------------------------------------------------------------------ the compiled program


@dataclass
class _Ctx:
    caps: Captures
    params: Mapping[str, float]
    memo: dict
    shared: SharedView | None = None  # values other programs of a batch compute too (sycam.cse)


class CompiledProgram:
    """A program bound to a model's layers, ready to evaluate batches of captures."""

    def __init__(self, program: A.Program | str, resolver: LayerResolver) -> None:
        self.program = parse(program) if isinstance(program, str) else program
        self.checked: CheckResult = check(self.program)
        self.expr = self.checked.expr
        self.resolver = resolver
        self.score = self.program.score_spec
        self._plan: dict[int, list[str]] = {}  # id(Each) -> layers
        # equal sub-expressions share one value (e.g. the mean_hw(G) of both lets of Winsor-CAM)
        first: dict[A.Expr, int] = {}
        self._canon: dict[int, int] = {id(n): first.setdefault(n, id(n)) for n in A.walk(self.expr)}
        self._param_names: dict[int, tuple[str, ...]] = {}  # id(node) -> the ?params below it
        self._below(self.expr)
        needs: dict[str, set[str]] = {k: set() for k in ("A", "G", "S", "D", "R", "R1")}
        self._collect(self.expr, None, needs)
        layers = sorted(set().union(*needs.values()), key=self._order)
        self.request = CaptureRequest(
            layers=tuple(layers),
            grad_layers=frozenset(needs["G"]),
            score_cam_layers=frozenset(needs["S"]),
            ablation_layers=frozenset(needs["D"]),
            reciprocal_layers=frozenset(needs["R"]),
            reciprocal_onehot_layers=frozenset(needs["R1"]),
            rescore=any(isinstance(n, A.Call) and TABLE[n.fn].needs_model for n in A.walk(self.expr)),
            score=self.score,
        )

    def _below(self, node: A.Expr) -> tuple[str, ...]:
        names = {node.name} if isinstance(node, A.Param) else set()
        for child in A.children(node):
            names.update(self._below(child))
        out = self._param_names[id(node)] = tuple(sorted(names))
        return out

    def node_keys(self, params: Mapping[str, float] | None = None) -> dict[int, NodeKey]:
        """The structural key of every computing sub-expression (by node id) with these params:
        what a batch of programs shares (:class:`sycam.cse.SharedValues`)."""
        values = self.param_values(params)
        return {id(n): NodeKey(n, tuple((name, values[name]) for name in self._param_names[id(n)]))
                for n in A.walk(self.expr) if shareable(n)}

    def _order(self, name: str) -> int:
        return self.resolver.names.index(name) if name in self.resolver.names else -1

    def _collect(self, node: A.Expr, layer: str | None, needs: dict[str, set[str]]) -> None:
        if isinstance(node, A.Terminal) and node.kind not in ("Y", "X"):
            needs[node.kind].add(self._terminal_layer(node, layer))
        if isinstance(node, A.Each):
            chosen = self.resolver.select(node.selection)
            self._plan[id(node)] = chosen
            for name in chosen:
                self._collect(node.body, name, needs)
            return
        for child in A.children(node):
            self._collect(child, layer, needs)

    def _terminal_layer(self, node: A.Terminal, layer: str | None) -> str:
        if node.layer is not None:
            return self.resolver.ref(node.layer)
        return layer if layer is not None else self.resolver.default

    # -------------------------------------------------------------- params
    @property
    def params(self) -> dict[str, A.Param]:
        return self.checked.params

    def param_values(self, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """Values for every ``?param``: overrides, else the default, else the range's midpoint."""
        values: dict[str, float] = {}
        overrides = dict(overrides or {})
        for name, p in self.params.items():
            if name in overrides:
                v = float(overrides.pop(name))
                if p.lo is not None and not p.lo <= v <= p.hi:  # type: ignore[operator]
                    raise ParamError(f"?{name} = {v} lies outside its range [{p.lo}, {p.hi}]")
                values[name] = v
            elif p.default is not None:
                values[name] = p.default
            elif p.lo is not None:
                values[name] = (p.lo + p.hi) / 2  # type: ignore[operator]
            else:
                raise ParamError(f"?{name} has neither a default nor a range: pass a value for it")
        if overrides:
            raise ParamError(f"unknown parameter(s) {', '.join('?' + k for k in overrides)}; the program has "
                             f"{', '.join('?' + k for k in self.params) or 'none'}")
        return values

    # -------------------------------------------------------------- evaluation
    def raw(self, caps: Captures, params: Mapping[str, float] | None = None, shared: SharedView | None = None) -> Tensor:
        """The program's Map before upsampling and normalisation, (B, h, w). ``shared``: the
        sub-expression values of a batch of programs on these same captures (:mod:`sycam.cse`)."""
        ctx = _Ctx(caps, self.param_values(params), {}, shared)
        out = self._eval(self.expr, None, ctx)
        assert isinstance(out, Tensor) and out.ndim == 3, "type checker guarantees a Map"
        return out

    def __call__(self, caps: Captures, params: Mapping[str, float] | None = None, chunk_size: int | None = None,
                 shared: SharedView | None = None) -> Tensor:
        """Normalised maps (B, H, W) in [0, 1] at the input size. Evaluated in batch chunks of
        ``chunk_size`` images (all at once by default); ``shared`` as in :meth:`raw` (whole batch only)."""
        batch = int(caps.Y.shape[0])
        step = chunk_size or batch
        if shared is not None and step < batch:
            raise ValueError("shared sub-expressions need the whole batch evaluated at once (no chunk_size)")
        outs = [self._finish(self.raw(caps.take(slice(i, i + step)), params, shared), caps.input_size, i)
                for i in range(0, batch, step)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def native(self, caps: Captures, params: Mapping[str, float] | None = None, shared: SharedView | None = None) -> Tensor:
        """Normalised maps (B, h, w) on the program's own grid, before upsampling. Two programs
        equal here are equal at every size: upsampling is linear and the normalisation ignores
        scale and offset (the search's cheap confirmation of twins)."""
        return K.norm(self._finite(self.raw(caps, params, shared), 0).float())

    def _finite(self, raw: Tensor, offset: int) -> Tensor:
        finite = torch.isfinite(raw).flatten(1).all(1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().add(offset).tolist()
            raise ProgramRuntimeError(f"program yields NaN or Inf for image(s) {bad[:10]}{'...' if len(bad) > 10 else ''}: "
                                      "it is invalid on this input")
        return raw

    def _finish(self, raw: Tensor, size: tuple[int, int], offset: int) -> Tensor:
        return K.norm(K.resize(self._finite(raw, offset).float(), size))

    def _eval(self, node: A.Expr, layer: str | None, ctx: _Ctx) -> K.Value:
        key = (self._canon.get(id(node), id(node)), layer)
        hit = ctx.memo.get(key)
        if hit is not None:
            return hit
        if ctx.shared is not None:
            hit = ctx.shared.get(node, layer)
            if hit is not None:
                ctx.memo[key] = hit
                return hit
        out = self._compute(node, layer, ctx)
        ctx.memo[key] = out
        if ctx.shared is not None:
            ctx.shared.put(node, layer, out)
        return out

    def _scalar(self, node: A.Num | A.Param, ctx: _Ctx) -> float:
        return node.value if isinstance(node, A.Num) else ctx.params[node.name]

    def _compute(self, node: A.Expr, layer: str | None, ctx: _Ctx) -> K.Value:
        caps = ctx.caps
        if isinstance(node, (A.Num, A.Param)):
            return torch.full_like(caps.Y, self._scalar(node, ctx))
        if isinstance(node, A.Terminal):
            if node.kind == "Y":
                return caps.Y
            if node.kind == "X":
                if caps.X is None:
                    raise ProgramRuntimeError("the program reads X (the input image) but these captures hold no image "
                                              "(captures built without sycam.capture.capture)")
                return caps.X
            name = self._terminal_layer(node, layer)
            return getattr(caps, node.kind)[name]
        if isinstance(node, A.Each):
            return [self._eval(node.body, name, ctx) for name in self._plan[id(node)]]  # type: ignore[misc]
        if isinstance(node, A.Fuse):
            maps = self._eval(node.maps, layer, ctx)
            if isinstance(maps, Tensor):  # a single Map, moved to the grid
                maps = [maps]
            weights = None if node.weights is None else self._eval(node.weights, layer, ctx)
            size = caps.input_size if node.grid == "input" else None
            return K.fuse(maps, weights, node.mode, size)  # type: ignore[arg-type]
        if isinstance(node, A.Call) and node.fn in _WEIGHTED and isinstance(node.args[0], A.BinOp) and node.args[0].op == "*":
            fused = self._weighted_channels(_WEIGHTED[node.fn], node.args[0], layer, ctx)
            if fused is not None:
                return fused
        return eval_op(node, lambda a: self._eval(a, layer, ctx), lambda a: self._scalar(a, ctx),  # type: ignore[arg-type]
                       caps.rescore)

    def _weighted_channels(self, mean: bool, prod: A.BinOp, layer: str | None, ctx: _Ctx) -> K.Value | None:
        """``sum_c(w * T)`` / ``mean_c(w * T)`` with w Channels (B, C) and T a Tensor (B, C, h, w),
        as one batched matrix product instead of materialising ``w * T`` (Grad-CAM's own shape;
        it is most of a multi-layer program's time). None when the operands have other shapes."""
        left, right = self._eval(prod.left, layer, ctx), self._eval(prod.right, layer, ctx)
        pairs = list(zip(left, right)) if isinstance(left, list) and isinstance(right, list) else (
            [(left, right)] if isinstance(left, Tensor) and isinstance(right, Tensor) else None)
        if pairs is None or not all({a.ndim, b.ndim} == {2, 4} for a, b in pairs):
            return None
        out = [K.weighted_sum_c(*((a, b) if a.ndim == 2 else (b, a)), mean=mean) for a, b in pairs]
        return out if isinstance(left, list) else out[0]


def compile_program(program: A.Program | str, module: nn.Module, default_layer: str | None = None,
                    stages: Sequence[str] | None = None) -> CompiledProgram:
    """Parse (if text), type-check and bind a program to ``module``'s layers."""
    return CompiledProgram(program, LayerResolver(module, default_layer, stages))
