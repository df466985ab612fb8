"""The operator table of the language: names, arities and which arguments are constants.

Typing rules live in :mod:`sycam.lang.types`, torch implementations in :mod:`sycam.compile`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    name: str
    arity: int
    family: str  # elementwise | binary | reduce_hw | reduce_c | axis | pc1
    const_args: tuple[int, ...] = ()  # argument positions that must be a number or ?param
    doc: str = ""


def _ops(*specs: OpSpec) -> dict[str, OpSpec]:
    return {s.name: s for s in specs}


OPS: dict[str, OpSpec] = _ops(
    # elementwise unary
    OpSpec("relu", 1, "elementwise", doc="max(x, 0)"),
    OpSpec("abs", 1, "elementwise", doc="|x|"),
    OpSpec("neg", 1, "elementwise", doc="-x"),
    OpSpec("exp", 1, "elementwise", doc="e^x"),
    OpSpec("log", 1, "elementwise", doc="log(max(x, eps)) (guarded)"),
    OpSpec("sqrt", 1, "elementwise", doc="sqrt(max(x, 0)) (guarded)"),
    OpSpec("sq", 1, "elementwise", doc="x^2"),
    OpSpec("sigmoid", 1, "elementwise", doc="1 / (1 + e^-x)"),
    OpSpec("tanh", 1, "elementwise", doc="tanh(x)"),
    OpSpec("sign", 1, "elementwise", doc="sign(x) in {-1, 0, 1}"),
    # elementwise binary
    OpSpec("max", 2, "binary", doc="elementwise maximum (broadcasting)"),
    OpSpec("min", 2, "binary", doc="elementwise minimum (broadcasting)"),
    # reductions
    OpSpec("sum_hw", 1, "reduce_hw", doc="sum over H,W: Tensor->Channels, Map->Scalar"),
    OpSpec("mean_hw", 1, "reduce_hw", doc="mean over H,W: Tensor->Channels, Map->Scalar"),
    OpSpec("max_hw", 1, "reduce_hw", doc="max over H,W: Tensor->Channels, Map->Scalar"),
    OpSpec("sum_c", 1, "reduce_c", doc="sum over channels: Tensor->Map, Channels->Scalar"),
    OpSpec("mean_c", 1, "reduce_c", doc="mean over channels: Tensor->Map, Channels->Scalar"),
    OpSpec("max_c", 1, "reduce_c", doc="max over channels: Tensor->Map, Channels->Scalar"),
    # normalisation along the natural axis (Map: H,W; Channels: C; Tensor: C,H,W;
    # Layers<Scalar>: the layers; other Layers<T>: each layer separately)
    OpSpec("norm", 1, "axis", doc="min-max to [0, 1] along the natural axis (constant -> 0)"),
    OpSpec("zscore", 1, "axis", doc="(x - mean) / std along the natural axis"),
    OpSpec("softmax_c", 1, "softmax_c", doc="softmax over channels: Channels or Tensor"),
    # robust statistics along the natural axis
    OpSpec("winsorize", 2, "axis", (1,), "cap the positive entries at the p-th percentile of the positive entries"),
    OpSpec("percentile", 2, "percentile", (1,), "p-th percentile (linear interpolation) -> Scalar"),
    OpSpec("threshold", 2, "axis", (1,), "zero the entries below the p-th percentile"),
    OpSpec("rescale", 3, "axis", (1, 2), "positive entries linearly to [lo, hi]; zeros stay zero; all equal -> hi"),
    # projections
    OpSpec("pc1", 1, "pc1", doc="Eigen-CAM: projection on the first principal component, Tensor->Map"),
)

TERMINALS = ("A", "G", "S", "D", "Y")
SELECTORS = ("convs", "last", "stages")
FUSE_MODES = ("sum", "mean", "max", "prod")
FUSE_GRIDS = ("finest", "input")
SCORE_KINDS = {"logit": 0, "prob": 0, "finer": 2}  # kind -> number of arguments (k, alpha)
