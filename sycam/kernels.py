"""Batched torch implementations of the language's operators.

A value is a tensor whose number of dimensions says its type (the batch axis comes first):
Scalar ``(B,)``, Channels ``(B, C)``, Map ``(B, H, W)``, Tensor ``(B, C, H, W)``; a per-layer
value (``Layers<T>``) is a Python list of such tensors. Every kernel is guarded: no kernel turns
finite input into NaN or Inf except through genuine overflow, which the compiler reports.

The table of operators (:mod:`sycam.lang.ops`) names each operator's kernel: a torch function, or
one of this module's kernels registered with :func:`kernel` (:data:`KERNELS`); :func:`resolve`
turns the name into the function.

Why one module of ~500 lines: it is the one registry the table's kernel names resolve in
(``tests/test_ops_table.py`` checks that every registered kernel is some row's), and the kernels
share its value conventions (``_flat``, ``broadcast``, ``resize``); split in two, a kernel's name
would resolve only where its module happened to be imported.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from sycam.errors import ProgramRuntimeError

EPS = 1e-12
EXP_CLAMP = 80.0
MAX_EXPONENT = 64  # exp(80) ~ 5.5e34 stays finite in float32

Value = Tensor | list[Tensor]

#: sycam's own operator kernels by name: the table of operators (:mod:`sycam.lang.ops`) names
#: these, or a torch function, as an operator's ``kernel``
KERNELS: dict[str, Callable[..., Tensor]] = {}


def kernel(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Register ``fn`` in :data:`KERNELS` under its own name."""
    KERNELS[fn.__name__] = fn
    return fn


def resolve(name: str) -> Callable[..., Tensor]:
    """The function an operator's ``kernel`` names: ``torch.relu``, ``torch.nn.functional.softplus``
    (an attribute path from the ``torch`` module; no import) or a registered kernel of this module.
    Unknown names raise ``KeyError``."""
    if name.startswith("torch."):
        obj: object = torch
        for part in name.split(".")[1:]:
            if not hasattr(obj, part):
                raise KeyError(f"no torch function {name}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise KeyError(f"{name} is not a function")
        return obj  # type: ignore[return-value]
    if name not in KERNELS:
        raise KeyError(f"no kernel {name!r} in sycam.kernels")
    return KERNELS[name]

# ------------------------------------------------------------------ broadcasting

_AXES = {1: "", 2: "C", 3: "HW", 4: "CHW"}
_NDIM = {"": 1, "C": 2, "HW": 3, "CHW": 4}


def _as4(x: Tensor) -> Tensor:
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim == 2:
        return x[:, :, None, None]
    return x[:, None, None, None]


def _from4(x: Tensor, ndim: int) -> Tensor:
    if ndim == 4:
        return x
    if ndim == 3:
        return x[:, 0]
    if ndim == 2:
        return x[:, :, 0, 0]
    return x[:, 0, 0, 0]


def broadcast(fn: Callable[[Tensor, Tensor], Tensor], a: Value, b: Value) -> Value:
    """Apply a binary elementwise ``fn`` with the language's broadcasting rules."""
    if isinstance(a, list) or isinstance(b, list):
        if isinstance(a, list) and isinstance(b, list):
            return [broadcast(fn, x, y) for x, y in zip(a, b)]  # type: ignore[misc]
        if isinstance(a, list):
            return [broadcast(fn, x, b) for x in a]  # type: ignore[misc]
        return [broadcast(fn, a, y) for y in b]  # type: ignore[union-attr]
    if a.ndim == b.ndim:
        return fn(a, b)
    axes = "".join(sorted(set(_AXES[a.ndim]) | set(_AXES[b.ndim]), key="CHW".index))
    return _from4(fn(_as4(a), _as4(b)), _NDIM[axes])


def lift(fn: Callable[[Tensor], Tensor], x: Value) -> Value:
    """Apply a per-value function to a value or to each layer of a per-layer value."""
    return [fn(v) for v in x] if isinstance(x, list) else fn(x)


# ------------------------------------------------------------------ arithmetic


@kernel
def safe_div(a: Tensor, b: Tensor) -> Tensor:
    """``a / b`` with ``|b| < EPS`` replaced by ``±EPS`` (sign of b, + for 0): 0/0 = 0, x/0 finite."""
    small = b.abs() < EPS
    guard = torch.where(b < 0, torch.full_like(b, -EPS), torch.full_like(b, EPS))
    return a / torch.where(small, guard, b)


@kernel
def power(x: Tensor, e: float) -> Tensor:
    """``x^e``: integer exponents keep the sign; others act on ``|x|``; negative ones divide safely."""
    if abs(e) > MAX_EXPONENT:
        raise ProgramRuntimeError(f"exponent {e} is outside [-{MAX_EXPONENT}, {MAX_EXPONENT}]")
    if float(e).is_integer():
        out = torch.pow(x, abs(int(e)))
    else:
        out = torch.pow(x.abs(), abs(e))
    return safe_div(torch.ones_like(out), out) if e < 0 else out


@kernel
def guarded_exp(x: Tensor) -> Tensor:
    """``e^x`` with x clamped at 80 (e^80 ~ 5.5e34 is finite in float32)."""
    return torch.exp(x.clamp(max=EXP_CLAMP))


@kernel
def guarded_log(x: Tensor) -> Tensor:
    """``log(max(x, EPS))``."""
    return torch.log(x.clamp(min=EPS))


@kernel
def guarded_sqrt(x: Tensor) -> Tensor:
    """``sqrt(max(x, 0))``."""
    return torch.sqrt(x.clamp(min=0))


# ------------------------------------------------------------------ reductions


def reduce_hw(kind: str, x: Tensor) -> Tensor:
    """Tensor (B,C,H,W) -> Channels (B,C); Map (B,H,W) -> Scalar (B,)."""
    dims = (-2, -1)
    if kind == "sum":
        return x.sum(dims)
    if kind == "mean":
        return x.mean(dims)
    return x.amax(dims)


def reduce_c(kind: str, x: Tensor) -> Tensor:
    """Tensor (B,C,H,W) -> Map (B,H,W); Channels (B,C) -> Scalar (B,)."""
    if kind == "sum":
        return x.sum(1)
    if kind == "mean":
        return x.mean(1)
    return max_dim1(x)


def max_dim1(x: Tensor) -> Tensor:
    """``x.amax(1)``, computed as a tree of elementwise maxima of halves (equal values, NaN
    propagating alike). Why: torch's max-reduction over a strided axis is about 10x slower than
    its sum; on MobileNetV2's (16, 1280, 7, 7) captures the halving takes 0.29 ms, ``amax(1)``
    0.97 ms (one thread), and ``max_c`` is among the search's most sampled reductions."""
    if x.shape[1] == 0 or x.dim() < 2:
        return x.amax(1)
    while x.shape[1] > 1:
        n = x.shape[1]
        half = n // 2
        m = torch.maximum(x[:, :half], x[:, half:2 * half])  # a new tensor: the in-place step below is safe
        if n % 2:
            m[:, :1] = torch.maximum(m[:, :1], x[:, n - 1:])
        x = m
    return x[:, 0]


@kernel
def sum_hw(x: Tensor) -> Tensor:
    return reduce_hw("sum", x)


@kernel
def mean_hw(x: Tensor) -> Tensor:
    return reduce_hw("mean", x)


@kernel
def max_hw(x: Tensor) -> Tensor:
    return reduce_hw("max", x)


@kernel
def sum_c(x: Tensor) -> Tensor:
    return reduce_c("sum", x)


@kernel
def mean_c(x: Tensor) -> Tensor:
    return reduce_c("mean", x)


@kernel
def max_c(x: Tensor) -> Tensor:
    return reduce_c("max", x)


def weighted_sum_c(w: Tensor, x: Tensor, mean: bool = False) -> Tensor:
    """``sum_c(w * x)`` (or ``mean_c``) for Channels w (B, C) and a Tensor x (B, C, H, W) -> Map
    (B, H, W), as a batched matrix product: no (B, C, H, W) temporary."""
    b, c, h, wd = x.shape
    dt = torch.promote_types(w.dtype, x.dtype)
    out = torch.bmm(w.to(dt).reshape(b, 1, c), x.to(dt).reshape(b, c, h * wd)).reshape(b, h, wd)
    return out / c if mean else out


# ------------------------------------------------------------------ along the natural axis


def _flat(x: Tensor) -> Tensor:
    """(B, ...) -> (B, N): the natural axis of a Map, Channels or Tensor is everything but B."""
    return x.reshape(x.shape[0], -1)


def _unflat(y: Tensor, like: Tensor) -> Tensor:
    return y.reshape(like.shape)


#: a map whose range is below this fraction of its largest magnitude is constant: float noise, not
#: signal. Why 1e-4 and not float32's eps: a reduction over C channels rounds differently at each
#: position (vectorised sums), so a spatially constant map comes out with a relative range of up
#: to ~C·eps; MobileNetV2's gradient-only maps (``mean_c(G)`` at its last block, where G = w/49
#: everywhere) measured 7e-8 to 1.5e-6, doubled by every squaring. Under the old 1e-6 such a map
#: was normalised to [0, 1] noise, which ranks at random and so "passed" both sanity checks.
FLAT_RTOL = 1e-4


@kernel
def norm(x: Tensor) -> Tensor:
    """Min-max to [0, 1] per image: ``(x - min) / (max - min)``; a constant image gives 0.

    A range below :data:`FLAT_RTOL` of the largest magnitude counts as constant (float noise).
    Two full passes (the search normalises every candidate map at image size): the constant
    images divide by +inf, which gives exactly 0.
    """
    f = _flat(x)
    lo = f.amin(1, keepdim=True)
    hi = f.amax(1, keepdim=True)
    scale = torch.maximum(lo.abs(), hi.abs())
    if not bool((scale < 1e37).all()):  # hi - lo could overflow: divide by the magnitude first
        return _norm_scaled(x)
    rng = hi - lo
    rng = torch.where(rng > FLAT_RTOL * scale, rng, torch.full_like(rng, float("inf")))
    return _unflat((f - lo).div_(rng), x)


def _norm_scaled(x: Tensor) -> Tensor:
    """:func:`norm` for values near the float range (e.g. -3e38 .. 3e38)."""
    f = _flat(x)
    scale = f.abs().amax(1, keepdim=True)
    f = f / torch.where(scale > 0, scale, torch.ones_like(scale))
    lo = f.amin(1, keepdim=True)
    hi = f.amax(1, keepdim=True)
    rng = hi - lo
    ok = rng > FLAT_RTOL
    out = torch.where(ok, (f - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(f))
    return _unflat(out, x)


@kernel
def zscore(x: Tensor) -> Tensor:
    """``(x - mean) / std`` per image (population std); a constant image gives 0."""
    f = _flat(x)
    mu = f.mean(1, keepdim=True)
    sd = f.std(1, unbiased=False, keepdim=True) if f.shape[1] > 0 else torch.zeros_like(mu)
    ok = sd > FLAT_RTOL * (f.abs().amax(1, keepdim=True))
    out = torch.where(ok, (f - mu) / torch.where(ok, sd, torch.ones_like(sd)), torch.zeros_like(f))
    return _unflat(out, x)


@kernel
def softmax_c(x: Tensor) -> Tensor:
    """Softmax over the channel axis (dim 1) of Channels or a Tensor."""
    return torch.softmax(x, dim=1)


def _quantile(f: Tensor, q: float) -> Tensor:
    """Per-row quantile of (B, N) ignoring NaN (linear interpolation, numpy's default); (B, 1)."""
    return torch.nanquantile(f, q, dim=1, keepdim=True)


def _check_percent(p: float, fn: str) -> float:
    if not 0.0 <= p <= 100.0:
        raise ProgramRuntimeError(f"{fn}: percentile {p} is outside [0, 100]")
    return p / 100.0


@kernel
def percentile(x: Tensor, p: float) -> Tensor:
    """The p-th percentile (linear interpolation) per image -> Scalar (B,)."""
    return _quantile(_flat(x).float(), _check_percent(p, "percentile"))[:, 0].to(x.dtype)


@kernel
def threshold(x: Tensor, p: float) -> Tensor:
    """Zero the entries below the p-th percentile (per image)."""
    f = _flat(x)
    tau = _quantile(f, _check_percent(p, "threshold"))
    return _unflat(torch.where(f >= tau, f, torch.zeros_like(f)), x)


@kernel
def winsorize(x: Tensor, p: float) -> Tensor:
    """Cap the upper tail: τ = p-th percentile of the *positive* entries (per image), positive
    entries become ``min(x, τ)``; non-positive entries are unchanged (Winsor-CAM's rule on
    ReLU'd importances). No positive entry: unchanged."""
    f = _flat(x)
    pos = f > 0
    masked = torch.where(pos, f, torch.full_like(f, float("nan")))
    tau = _quantile(masked, _check_percent(p, "winsorize"))
    tau = torch.where(torch.isnan(tau), torch.full_like(tau, float("inf")), tau)
    return _unflat(torch.where(pos, torch.minimum(f, tau), f), x)


@kernel
def rescale(x: Tensor, lo: float, hi: float) -> Tensor:
    """Positive entries linearly to [lo, hi] (min -> lo, max -> hi; all equal -> hi);
    non-positive entries become 0 (per image)."""
    f = _flat(x)
    pos = f > 0
    inf = torch.full_like(f, float("inf"))
    mn = torch.where(pos, f, inf).amin(1, keepdim=True)
    mx = torch.where(pos, f, -inf).amax(1, keepdim=True)
    rng = mx - mn
    ok = torch.isfinite(rng) & (rng > FLAT_RTOL * mx.abs())
    scaled = lo + (f - mn) / torch.where(ok, rng, torch.ones_like(rng)) * (hi - lo)
    out = torch.where(ok, scaled, torch.full_like(f, hi))
    return _unflat(torch.where(pos, out, torch.zeros_like(f)), x)


@kernel
def topk_pct(x: Tensor, k: float) -> Tensor:
    """MetaCAM's top-k% vote (Kaczmarek et al., 2023): per image, 1 on the ``n = ceil(k N / 100)``
    largest of its N entries and 0 elsewhere; entries equal to the n-th largest are all kept (ties at
    the cut); ``n = 0`` gives all zeros.

    "Equal" means within ``TIE_RTOL`` of the image's range: maps upsampled from a coarse layer hold
    many values that are equal in exact arithmetic and differ by a rounding error in float32, and
    which of them make the cut must not depend on the CPU's summation order."""
    f = _flat(x)
    frac = _check_percent(k, "topk_pct")
    n = min(math.ceil(round(frac * f.shape[1], 9)), f.shape[1])
    if n == 0:
        return torch.zeros_like(x)
    tau = torch.topk(f, n, dim=1).values[:, -1:]
    tol = TIE_RTOL * (f.amax(dim=1, keepdim=True) - f.amin(dim=1, keepdim=True))
    return _unflat((f >= tau - tol).to(x.dtype), x)


#: entries of one image within this fraction of its range count as equal at a top-k cut (float32 rounding)
TIE_RTOL = 1e-5


@kernel
def threshold_hw(x: Tensor, p: float) -> Tensor:
    """Per channel (a Tensor's) or per image (a Map's): zero the entries below the p-th percentile
    over H, W (UnionCAM's denoising of the gradients, channel by channel)."""
    f = x.reshape(-1, x.shape[-2] * x.shape[-1])  # one row per (image, channel)
    tau = _quantile(f, _check_percent(p, "threshold_hw"))
    return torch.where(f >= tau, f, torch.zeros_like(f)).reshape(x.shape)


@kernel
def select_max(k1: Value, x1: Value, k2: Value, x2: Value) -> Value:
    """Per image ``x1`` where the Scalar ``k1 > k2``, else ``x2`` (ties: ``x2``); x1 and x2 broadcast."""
    assert isinstance(k1, Tensor) and isinstance(k2, Tensor) and k1.ndim == k2.ndim == 1, "the checker guarantees Scalar keys"
    take = k1 > k2

    def pick(a: Tensor, b: Tensor) -> Tensor:
        a, b = torch.broadcast_tensors(a, b)
        return torch.where(take.view(-1, *([1] * (a.ndim - 1))), a, b)

    return broadcast(pick, x1, x2)


@kernel
def confidence(m: Tensor, rescore: Callable[[Tensor, bool], Tensor]) -> Tensor:
    """The target's softmax probability for the input times ``norm(upsample(m))``, (B,): one
    forward of the masked images, by the captures' re-scorer (:class:`sycam.reforward.Rescorer`)."""
    return rescore(m, False)


@kernel
def gain(m: Tensor, rescore: Callable[[Tensor, bool], Tensor]) -> Tensor:
    """``confidence(m)`` minus the target's probability on the blank (all-zero) input (UnionCAM's β)."""
    return rescore(m, True)


def along_layers(fn: Callable[[Tensor], Tensor], xs: list[Tensor]) -> list[Tensor]:
    """Apply a natural-axis function to Layers<Scalar>: the axis is the layer axis."""
    stacked = torch.stack(xs, dim=1)  # (B, L)
    out = fn(stacked)
    return list(out.unbind(1)) if out.ndim == 2 else out  # type: ignore[return-value]


# ------------------------------------------------------------------ information

MI_BINS = 16  # bins per variable of mutual_info's joint histogram
MI_GRID = 56  # mutual_info's grid: at most MI_GRID x MI_GRID cells
_MI_CHUNK = 1 << 24  # index entries per scatter (bounds the temporary memory)


def _to_grid(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps (R, h, w) onto the grid ``size``: unchanged at that size, bilinear (half-pixel centres,
    :func:`resize`) where the map is no larger than the grid in both dimensions, area averaging
    (``adaptive_avg_pool2d``) otherwise."""
    h, w = int(m.shape[-2]), int(m.shape[-1])
    if (h, w) == tuple(size):
        return m
    if h <= size[0] and w <= size[1]:
        return resize(m, size)
    return F.adaptive_avg_pool2d(m[:, None], size)[:, 0]


MI_SNAP = 1e-4  # a value this close below a bin edge (in bin widths) counts in the bin above


def _bins(v: Tensor, nb: int) -> Tensor:
    """Bin index (R, N) of each value: ``nb`` equal bins over each row's [min, max],
    ``min(floor(nb (v - min) / (max - min) + 1e-4), nb - 1)``; a constant row lies in bin 0.

    The 1e-4 snaps values that lie on an edge in exact arithmetic (bilinear upsampling makes many:
    it interpolates at multiples of 1/16 between cells) to the bin above, in float32 and float64
    alike; without it float rounding decides their bin."""
    lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    rng = hi - lo
    ok = rng > 0
    scaled = (v - lo) / torch.where(ok, rng, torch.ones_like(rng))
    idx = (scaled * nb + MI_SNAP).floor().clamp_(0, nb - 1).long()
    return torch.where(ok, idx, torch.zeros_like(idx))


def _entropy(counts: Tensor, n: int) -> Tensor:
    """Shannon entropy (nats) of histograms ``counts`` (..., K) over ``n`` samples, float64."""
    p = counts.double() / n
    return -torch.special.xlogy(p, p).sum(-1)


@kernel
def mutual_info(x: Tensor, m: Tensor) -> Tensor:
    """MI-CAM's channel weights (Iyer et al., 2025, "MI-CAM: Mutual Information Weighted Activation
    Mapping"): the mutual information of each channel of a Tensor x (B, C, h, w) -> Channels
    (B, C), or of a Map x (B, h, w) -> Scalar (B,), with the Map m (B, H', W'), per image.

    Estimate (the paper's estimator was not reachable; this is sycam's, documented): both are put on
    the grid ``(min(H', 56), min(W', 56))`` (:func:`_to_grid`: x is upsampled bilinearly, as
    Score-CAM upsamples its masks; a larger image is area-averaged down), each variable is cut into
    16 equal bins over its own [min, max] in the image (per channel for x; :func:`_bins`), and
    ``I = H(x) + H(m) - H(x, m)`` in nats from the 16 x 16 joint histogram of the N grid cells.
    A constant channel has I = 0. MI is unchanged by a positive affine change of either variable.
    """
    single = x.ndim == 3
    t = x[:, None] if single else x
    b, c = int(t.shape[0]), int(t.shape[1])
    size = (min(int(m.shape[-2]), MI_GRID), min(int(m.shape[-1]), MI_GRID))
    ref = _to_grid(m.to(t.dtype), size).reshape(b, -1)
    n = ref.shape[1]
    by = _bins(ref, MI_BINS)  # (B, N)
    h_ref = _entropy(F.one_hot(by, MI_BINS).sum(1), n)  # (B,)
    out = torch.empty(b, c, dtype=torch.float64, device=t.device)
    step = max(1, _MI_CHUNK // max(1, b * n))
    for start in range(0, c, step):
        part = t[:, start:start + step]
        k = int(part.shape[1])
        bx = _bins(_to_grid(part.reshape(b * k, *part.shape[-2:]), size).reshape(b * k, n), MI_BINS)  # (B*k, N)
        joint_idx = bx * MI_BINS + by.repeat_interleave(k, dim=0)
        joint = torch.zeros(b * k, MI_BINS * MI_BINS, dtype=torch.float64, device=t.device)
        joint.scatter_add_(1, joint_idx, torch.ones_like(joint_idx, dtype=torch.float64))
        h_x = _entropy(joint.view(b * k, MI_BINS, MI_BINS).sum(2), n)
        h_xy = _entropy(joint, n)
        out[:, start:start + k] = (h_x - h_xy).view(b, k) + h_ref[:, None]
    out = out.clamp_(min=0).to(x.dtype)  # I >= 0; float rounding can leave -1e-16
    return out[:, 0] if single else out


# ------------------------------------------------------------------ projections


@kernel
def pc1(x: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin, 2020): project each position's channel vector on the first
    principal component of the (HW × C) activation matrix, centred per channel.

    ``M = X - mean_hw(X)`` (rows: positions), ``v1`` = top right singular vector of M,
    map = ``M v1``. The singular vector's sign is arbitrary; sycam fixes it so that the map
    correlates positively with ``mean_c(X)``. Computed from the smaller Gram matrix.
    """
    b, c, h, w = x.shape
    m = x.reshape(b, c, h * w).transpose(1, 2).double()  # (B, HW, C)
    m = m - m.mean(dim=1, keepdim=True)
    if c <= h * w:
        _, vecs = torch.linalg.eigh(m.transpose(1, 2) @ m)  # (B, C, C), ascending
        proj = m @ vecs[:, :, -1:]  # (B, HW, 1)
    else:
        vals, vecs = torch.linalg.eigh(m @ m.transpose(1, 2))  # (B, HW, HW)
        proj = vecs[:, :, -1:] * vals[:, -1:].clamp(min=0).sqrt()[:, None]
    proj = proj[..., 0]
    ref = x.mean(1).reshape(b, h * w).double()
    ref = ref - ref.mean(1, keepdim=True)
    sign = torch.where((proj * ref).sum(1, keepdim=True) < 0, -1.0, 1.0)
    return (proj * sign).reshape(b, h, w).to(x.dtype)


# ------------------------------------------------------------------ layers


@functools.lru_cache(maxsize=64)
def _interp_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_out, n_in): 1-D linear interpolation with half-pixel centres, as a matrix (the operator
    ``F.interpolate(..., mode="linear", align_corners=False)`` applies, read off the identity)."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]
    m = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].T
    return m.to(dtype=dtype, device=device).contiguous()


#: maps up to this many cells are resized by two small matrix products (4-5x faster than
#: ``F.interpolate`` for 7x7..28x28 -> 224x224 on CPU, equal to 1 ulp); larger ones by interpolate
_MATMUL_CELLS = 32 * 32


def resize(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of maps (B, h, w) -> (B, H, W), half-pixel centres (align_corners=False).

    Bilinear resizing is separable: ``R · m · Cᵀ`` with R (H, h) and C (W, w) the 1-D
    interpolation matrices.
    """
    h, w = int(m.shape[-2]), int(m.shape[-1])
    if (h, w) == tuple(size):
        return m
    if h * w <= _MATMUL_CELLS and m.is_floating_point():
        rows = _interp_matrix(h, int(size[0]), m.dtype, m.device)
        cols = _interp_matrix(w, int(size[1]), m.dtype, m.device)
        return rows @ m @ cols.T
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def fuse(maps: list[Tensor], weights: list[Tensor] | None, mode: str, size: tuple[int, int] | None) -> Tensor:
    """Resize per-layer maps to ``size`` (default: the largest layer grid), weight them and combine
    with ``sum``, ``mean``, ``max`` or ``prod``."""
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])  # type: ignore[assignment]
    stack = torch.stack([resize(m, size) for m in maps], dim=1)  # type: ignore[arg-type]  # (B, L, H, W)
    if weights is not None:
        stack = stack * torch.stack(weights, dim=1)[:, :, None, None]
    if mode == "sum":
        return stack.sum(1)
    if mode == "mean":
        return stack.mean(1)
    if mode == "max":
        return stack.amax(1)
    return stack.prod(1)
