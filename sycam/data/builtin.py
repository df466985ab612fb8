"""The built-in localisation benchmark: procedurally generated shapes with exact masks.

Every image holds one *target* shape and one or two *distractor* shapes of other classes on a
textured background. The label is the target's shape class. **The rule that makes the label
unambiguous: the target is the only filled shape; distractors are drawn as outlines** (a band of
width ``max(1.5 px, 0.22·r)`` inside their contour, hollow inside, ``r`` = circumradius). Colour
is drawn at random for every object, so it never gives the class away; the target is often, but
not always, the largest object (target area 3.5–25 % of the image, log-uniform; stars and bars
top out near 17 % and 13 % because their circumradius is capped at 0.34·size so that scenes
fit; distractors 2–10 %), so size does not give it away either. An explainer therefore scores well on the target mask only when
its map is class-discriminative: a map of "everything shape-like" also lights up the distractors.

Classes (index: name): 0 disc, 1 square, 2 triangle, 3 cross, 4 star, 5 crescent, 6 bar (3:1
rectangle), 7 ell (a square with one quadrant removed). Every object is tilted at random by up
to ±15° from its canonical pose (the crescent opens to the right, the ell misses its lower right
quadrant). Full random rotation was tried and dropped: with it the built-in CNN stayed at chance
for 250 training steps (the whole budget is ~500 steps, about a minute on two CPU cores), while
tilted shapes reach ~93 % after 300 steps; tilt, scale, position, colour and clutter still vary.

Rendering is analytic: each shape has a signed distance function ``d`` (pixels, negative
inside); coverage is ``α = clamp(0.5 − d, 0, 1)`` (one-pixel anti-aliasing) and the target mask
is ``d ≤ 0`` at pixel centres, i.e. exactly the pixels with ``α ≥ 0.5``. The mask covers the
whole target; objects never overlap (their circumscribed circles are at least ``1.5·size/64``
pixels apart), so no target pixel is hidden and distractor pixels never touch the mask.

Background: a base colour plus a linear colour gradient, optional sinusoidal stripes (random
frequency, orientation, colour), up to four Gaussian colour blobs, and per-pixel Gaussian noise
(σ 0.01–0.06) over the whole image, objects included (a random crop of a fixed noise field).
Objects differ from the background's base colour by at least 0.45 in RGB distance.

Determinism: sample ``i`` of split ``s`` is drawn from its own random stream
``SeedSequence([seed, code(s), i, DOMAIN])``, so any index is generated on the fly, in any order
and any batch composition, with identical results; splits use disjoint streams. Nothing is
stored, so a split of 10^6 images costs no memory.

Why one module of ~570 lines: the whole generator (scene sampling, shape geometry, rendering) is
versioned by one number, :data:`GENERATOR_VERSION`, which keys the trained model's cache; keeping
it in one file keeps everything a version bump covers in one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from sycam.data.base import Batch, Sample

__all__ = [
    "BuiltinBenchmark",
    "GENERATOR_VERSION",
    "SHAPES",
    "SPLIT_LENGTHS",
    "Scene",
    "make_batch",
    "make_scenes",
]

#: Bump whenever generated images change for a given (seed, split, index, size): trained
#: model caches are keyed by it.
GENERATOR_VERSION = 1

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "star", "crescent", "bar", "ell")
SPLIT_LENGTHS: dict[str, int] = {"train": 6000, "val": 512, "test": 512}
_SPLIT_CODES: dict[str, int] = {"train": 1, "val": 2, "test": 3}
_DOMAIN = 0x5CA3  # separates these streams from any other use of SeedSequence([seed, ...])

# Shape geometry, all in units of the circumradius (every shape fits the unit disc).
_SQ = 1.0 / math.sqrt(2.0)  # half side of the square / ell
_CROSS_A = 0.32  # half width of the cross arms
_CROSS_L = math.sqrt(1.0 - _CROSS_A**2)  # half length of the cross arms
_BAR_A = 0.31  # half width of the bar
_BAR_L = math.sqrt(1.0 - _BAR_A**2)
_STAR_RI = 0.5  # inner radius of the five-pointed star
_CRES_R2, _CRES_D = 0.8, 0.45  # the crescent is the unit disc minus this disc, shifted along +u


def _lens_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs (radii r1, r2, centre distance d, partial overlap)."""
    a1 = r1 * r1 * math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1))
    a2 = r2 * r2 * math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2))
    k = 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
    return a1 + a2 - k


# Area of each shape at circumradius 1, used to draw a radius for a requested area fraction.
_UNIT_AREA: tuple[float, ...] = (
    math.pi,  # disc
    2.0,  # square: (2·SQ)²
    3.0 * math.sqrt(3.0) / 4.0,  # equilateral triangle
    8.0 * _CROSS_L * _CROSS_A - 4.0 * _CROSS_A**2,  # two bars minus their shared square
    5.0 * _STAR_RI * math.sin(math.pi / 5.0),  # ten triangles (O, tip, inner vertex)
    math.pi - _lens_area(1.0, _CRES_R2, _CRES_D),  # crescent
    4.0 * _BAR_L * _BAR_A,  # bar
    3.0 * _SQ * _SQ,  # ell: three of the square's four quadrants
)

# Sampling ranges (area as a fraction of the image; radii capped so that scenes always fit).
_TARGET_AREA = (0.035, 0.25)
_DISTRACTOR_AREA = (0.02, 0.10)
_TARGET_MAX_R = 0.34  # × size
_DISTRACTOR_MIN_R = 0.09  # × size: smaller outlines stop being recognisable at 64 px
_DISTRACTOR_MAX_R = 0.24  # × size
_MIN_CONTRAST = 0.45  # RGB distance between an object's colour and the background base colour
_N_BLOBS = 4
_MAX_OBJECTS = 3
_TILT = math.radians(15.0)  # objects are tilted by at most this much (see the module docstring)
_OUTLINE = (1.5, 0.22)  # distractor outline width: max(px at size 64, fraction of the radius)
_NOISE_FIELDS = 4  # pixel noise is a random crop of one of these fixed (3, 2S, 2S) fields


# ------------------------------------------------------------------------------------ parameters


@dataclass
class _SceneParams:
    """Everything random about one image (drawn in numpy from the sample's own stream)."""

    classes: np.ndarray  # (K,) int, K = 1 + n_distractors, index 0 = target
    centres: np.ndarray  # (K, 2) float (x, y) in pixels
    radii: np.ndarray  # (K,) circumradius in pixels
    angles: np.ndarray  # (K,) rotation in radians
    colours: np.ndarray  # (K, 3)
    widths: np.ndarray  # (K,) outline width in pixels; 0 = filled (the target)
    base: np.ndarray  # (3,) background base colour
    grad: np.ndarray  # (2,) gradient direction × amplitude (per unit of normalised coordinate)
    grad_colour: np.ndarray  # (3,)
    stripes: np.ndarray  # (4,) amplitude, frequency (cycles / image), angle, phase
    stripe_colour: np.ndarray  # (3,)
    blobs: np.ndarray  # (N_BLOBS, 3) centre x, centre y (normalised [0,1]), sigma (normalised)
    blob_colours: np.ndarray  # (N_BLOBS, 3) colour offsets (zero rows: absent blobs)
    noise: tuple[float, int, int, int]  # sigma, noise-bank field, crop offsets x, y


def _rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    """The independent random stream of one sample (disjoint across seeds, splits, indices)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index, _DOMAIN]))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _object_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A random colour at least ``_MIN_CONTRAST`` away from the background base colour."""
    for _ in range(64):
        c = rng.uniform(0.0, 1.0, size=3)
        if np.linalg.norm(c - base) >= _MIN_CONTRAST:
            return c
    # Unreachable in practice (the far corner of the cube is always ≥ 0.5 away): fall back to it.
    return (base < 0.5).astype(np.float64)


def _place(
    rng: np.random.Generator, r: float, size: int, placed: list[tuple[float, float, float]], gap: float
) -> tuple[float, float] | None:
    """A centre for a circle of radius r inside the image, clear of ``placed`` circles, or None."""
    lo, hi = r + 1.0, size - r - 1.0
    if hi < lo:
        return None
    cand = rng.uniform(lo, hi, size=(48, 2))
    ok = np.ones(len(cand), dtype=bool)
    for x, y, rr in placed:
        ok &= np.hypot(cand[:, 0] - x, cand[:, 1] - y) >= r + rr + gap
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    return float(cand[hits[0], 0]), float(cand[hits[0], 1])


def _sample_scene(rng: np.random.Generator, size: int, distractors: tuple[int, int] = (1, 2)) -> _SceneParams:
    """Draw one scene: target, ``distractors`` (min, max) outlined shapes of other classes,
    background and noise."""
    n_cls = len(SHAPES)
    target = int(rng.integers(n_cls))
    n_distr = int(rng.integers(distractors[0], distractors[1] + 1))
    others = [c for c in range(n_cls) if c != target]
    distr = [int(c) for c in rng.choice(others, size=n_distr, replace=False)]
    classes = [target] + distr

    gap = 1.5 * size / 64.0
    r_t = size * math.sqrt(_log_uniform(rng, *_TARGET_AREA) / _UNIT_AREA[target])
    r_t = min(r_t, _TARGET_MAX_R * size)
    r_d = []
    for c in distr:
        r = size * math.sqrt(_log_uniform(rng, *_DISTRACTOR_AREA) / _UNIT_AREA[c])
        r_d.append(float(np.clip(r, _DISTRACTOR_MIN_R * size, _DISTRACTOR_MAX_R * size)))

    # Rejection placement; where the scene does not fit, shrink the distractors, then the target.
    for _attempt in range(40):
        placed: list[tuple[float, float, float]] = []
        ct = _place(rng, r_t, size, placed, gap)
        assert ct is not None  # r_t ≤ 0.34·size always fits alone
        placed.append((ct[0], ct[1], r_t))
        for r in r_d:
            cd = _place(rng, r, size, placed, gap)
            if cd is None:
                break
            placed.append((cd[0], cd[1], r))
        if len(placed) == len(classes):
            break
        r_d = [max(r * 0.9, _DISTRACTOR_MIN_R * size) for r in r_d]
        if _attempt >= 4:
            r_t *= 0.95
    else:  # pragma: no cover - the shrinking above always converges long before this
        raise RuntimeError("builtin benchmark: could not lay out a scene (report this as a bug)")

    base = rng.uniform(0.1, 0.9, size=3)
    colours = np.stack([_object_colour(rng, base) for _ in classes])
    radii = np.array([p[2] for p in placed])
    widths = np.zeros(len(classes))
    widths[1:] = np.maximum(_OUTLINE[0] * size / 64.0, _OUTLINE[1] * radii[1:])

    # Background texture: amplitudes are kept small next to the object contrast (≥ 0.45).
    g_ang = rng.uniform(0, 2 * math.pi)
    grad = rng.uniform(0.0, 0.25) * np.array([math.cos(g_ang), math.sin(g_ang)])
    grad_colour = rng.uniform(-1.0, 1.0, size=3)
    grad_colour /= max(np.abs(grad_colour).max(), 1e-6)
    stripes = np.array(
        [
            rng.uniform(0.04, 0.12) if rng.uniform() < 0.5 else 0.0,
            rng.uniform(2.0, 8.0),
            rng.uniform(0, math.pi),
            rng.uniform(0, 2 * math.pi),
        ]
    )
    stripe_colour = rng.uniform(-1.0, 1.0, size=3)
    stripe_colour /= max(np.abs(stripe_colour).max(), 1e-6)
    n_blobs = int(rng.integers(0, _N_BLOBS + 1))
    blobs = np.stack(
        [rng.uniform(0, 1, _N_BLOBS), rng.uniform(0, 1, _N_BLOBS), rng.uniform(0.06, 0.25, _N_BLOBS)], axis=1
    )
    blob_colours = rng.uniform(-0.2, 0.2, size=(_N_BLOBS, 3))
    blob_colours[n_blobs:] = 0.0
    noise = (
        float(rng.uniform(0.01, 0.06)),
        int(rng.integers(_NOISE_FIELDS)),
        int(rng.integers(size)),
        int(rng.integers(size)),
    )

    return _SceneParams(
        classes=np.array(classes, dtype=np.int64),
        centres=np.array([[p[0], p[1]] for p in placed]),
        radii=radii,
        angles=rng.uniform(-_TILT, _TILT, size=len(classes)),
        colours=colours,
        widths=widths,
        base=base,
        grad=grad,
        grad_colour=grad_colour,
        stripes=stripes,
        stripe_colour=stripe_colour,
        blobs=blobs,
        blob_colours=blob_colours,
        noise=noise,
    )


# ---------------------------------------------------------------------------------- rendering


def _unit_sdf(cls: int, u: Tensor, v: Tensor) -> Tensor:
    """Signed distance (circumradius units, negative inside) of shape ``cls`` at local (u, v).

    Exact inside convex pieces; outside corners it may underestimate the distance, which only
    widens the anti-aliasing by a fraction of a pixel. The sign (hence the mask) is exact.
    """
    if cls == 0:  # disc
        return torch.hypot(u, v) - 1.0
    if cls == 1:  # square
        return torch.maximum(u.abs(), v.abs()) - _SQ
    if cls == 2:  # triangle: max over three edge half-planes, inradius 1/2
        d = None
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            e = u * math.cos(a) + v * math.sin(a)
            d = e if d is None else torch.maximum(d, e)
        return d - 0.5  # type: ignore[operator]
    if cls == 3:  # cross: union (min) of a horizontal and a vertical bar
        au, av = u.abs(), v.abs()
        h = torch.maximum(au - _CROSS_L, av - _CROSS_A)
        w = torch.maximum(au - _CROSS_A, av - _CROSS_L)
        return torch.minimum(h, w)
    if cls == 4:  # star: fold the angle into [0, π/5], then one edge from tip (1,0) to inner vertex
        rho = torch.hypot(u, v)
        sector = 2 * math.pi / 5
        beta = torch.remainder(torch.atan2(v, u), sector)
        beta = torch.minimum(beta, sector - beta)
        qx, qy = rho * torch.cos(beta), rho * torch.sin(beta)
        ix, iy = _STAR_RI * math.cos(math.pi / 5), _STAR_RI * math.sin(math.pi / 5)
        ex, ey = ix - 1.0, iy  # edge direction tip → inner vertex
        n = math.hypot(ex, ey)
        nx, ny = ey / n, -ex / n  # outward normal (points away from the origin)
        return (qx - 1.0) * nx + qy * ny
    if cls == 5:  # crescent: unit disc minus a shifted disc
        return torch.maximum(torch.hypot(u, v) - 1.0, _CRES_R2 - torch.hypot(u - _CRES_D, v))
    if cls == 6:  # bar
        return torch.maximum(u.abs() - _BAR_L, v.abs() - _BAR_A)
    if cls == 7:  # ell: square minus its (+u, +v) quadrant
        return torch.maximum(torch.maximum(u.abs(), v.abs()) - _SQ, torch.minimum(u, v))
    raise ValueError(f"builtin benchmark: unknown shape class {cls} (expected 0..{len(SHAPES) - 1})")


_CHUNK = 32  # images rendered together: large enough to amortise op overhead, small enough for cache


def _render(params: Sequence[_SceneParams], size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Render scenes in batched passes of ``_CHUNK`` images.

    Returns images (B,3,S,S) float32 in [0,1], per-object footprints (B,K,S,S) bool (``d ≤ 0``,
    padded with False), classes (B,K) long (−1 = no object) and filled flags (B,K) bool.
    """
    B, S, K = len(params), size, _MAX_OBJECTS
    images = torch.empty(B, 3, S, S)
    masks = torch.zeros(B, K, S, S, dtype=torch.bool)
    classes = torch.full((B, K), -1, dtype=torch.long)
    filled = torch.zeros(B, K, dtype=torch.bool)
    # Single-threaded: these are many small ops; on a busy 2-core machine two intra-op threads
    # made rendering ~7× slower (spinning), and one thread already gives ~0.6 ms per image.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for lo in range(0, B, _CHUNK):
            hi = min(B, lo + _CHUNK)
            _render_chunk(params[lo:hi], S, images[lo:hi], masks[lo:hi], classes[lo:hi], filled[lo:hi])
    finally:
        torch.set_num_threads(threads)
    return images, masks, classes, filled


def _render_chunk(
    params: Sequence[_SceneParams], S: int, images: Tensor, masks: Tensor, classes: Tensor, filled: Tensor
) -> None:
    """Render a few scenes into the given output views (see :func:`_render`)."""
    B, K = len(params), _MAX_OBJECTS
    coord = torch.arange(S, dtype=torch.float32) + 0.5  # pixel centres

    def stack(name: str) -> Tensor:
        return torch.from_numpy(np.stack([getattr(p, name) for p in params]).astype(np.float32))

    # ---- background (B, 3, S, S); every term is separable or a rank-one broadcast
    cn = coord / S  # normalised [0, 1] coordinates
    base, grad, gcol = stack("base"), stack("grad"), stack("grad_colour")
    stripes, scol = stack("stripes"), stack("stripe_colour")
    blobs, bcol = stack("blobs"), stack("blob_colours")
    ramp = (grad[:, 1, None, None] * (cn[None, :, None] - 0.5)) + (grad[:, 0, None, None] * (cn[None, None, :] - 0.5))
    freq = 2 * math.pi * stripes[:, 1]
    px = (freq * torch.cos(stripes[:, 2]))[:, None] * cn  # (B, S) phase along x
    py = (freq * torch.sin(stripes[:, 2]) )[:, None] * cn + stripes[:, 3, None]
    wave = torch.sin(py[:, :, None] + px[:, None, :]) * stripes[:, 0, None, None]  # (B, S, S)
    inv = -0.5 / blobs[:, :, 2] ** 2  # Gaussian blobs: exp(-dx²/2σ²)·exp(-dy²/2σ²)
    gx = torch.exp((cn - blobs[:, :, 0, None]) ** 2 * inv[:, :, None])  # (B, NB, S)
    gy = torch.exp((cn - blobs[:, :, 1, None]) ** 2 * inv[:, :, None])
    img = torch.einsum("bny,bnx,bnc->bcyx", gy, gx, bcol)
    img += base[:, :, None, None]
    img += gcol[:, :, None, None] * ramp[:, None]
    img += scol[:, :, None, None] * wave[:, None]
    img.clamp_(0.0, 1.0)

    # ---- objects, flattened to (N,) and grouped by class so each SDF runs once per chunk
    counts = [len(p.classes) for p in params]
    owner = torch.from_numpy(np.repeat(np.arange(B), counts))
    slot = torch.from_numpy(np.concatenate([np.arange(c) for c in counts]))
    cls = torch.from_numpy(np.concatenate([p.classes for p in params]))

    def cat(name: str) -> Tensor:
        return torch.from_numpy(np.concatenate([getattr(p, name) for p in params]).astype(np.float32))

    centres, rad, ang, wid, col = cat("centres"), cat("radii"), cat("angles"), cat("widths"), cat("colours")
    flat = owner * K + slot  # position in the padded (B*K) layout
    sdf = torch.full((B * K, S, S), float("inf"))  # absent slots: infinitely far, zero coverage
    for c in torch.unique(cls).tolist():
        sel = torch.nonzero(cls == c).squeeze(1)
        r = rad[sel, None]
        ca, sa = torch.cos(ang[sel])[:, None] / r, torch.sin(ang[sel])[:, None] / r
        dx = coord - centres[sel, 0, None]  # (n, S)
        dy = coord - centres[sel, 1, None]
        # local coordinates in circumradius units: u = (dx cos + dy sin)/r, v = (−dx sin + dy cos)/r
        u = (dx * ca)[:, None, :] + (dy * sa)[:, :, None]
        v = (dy * ca)[:, :, None] - (dx * sa)[:, None, :]
        sdf[flat[sel]] = _unit_sdf(c, u, v) * r[:, :, None]  # back to pixels
    sdf = sdf.view(B, K, S, S)
    masks.copy_(sdf <= 0.0)
    # Outlined objects: a band of width w inside the contour (w = 0 keeps the filled shape).
    w = torch.zeros(B * K)
    w[flat] = wid
    w = w.view(B, K, 1, 1)
    ink = torch.where(w > 0, torch.maximum(sdf, -sdf - w), sdf)
    alpha = (0.5 - ink).clamp_(0.0, 1.0)  # (B,K,S,S) one-pixel anti-aliasing
    colours = torch.zeros(B * K, 3)
    colours[flat] = col
    colours = colours.view(B, K, 3, 1, 1)
    # Objects are disjoint, so compositing order does not matter.
    for k in range(K):
        a = alpha[:, k, None]
        img.mul_(1.0 - a).add_(colours[:, k] * a)

    img += _noise(params, S)
    images.copy_(img.clamp_(0.0, 1.0))
    classes.view(-1)[flat] = cls
    filled.view(-1)[flat] = wid == 0


_NOISE_BANKS: dict[int, Tensor] = {}


def _noise(params: Sequence[_SceneParams], S: int) -> Tensor:
    """Per-image Gaussian pixel noise (B, 3, S, S): a scaled crop of a fixed noise field.

    Cropping a fixed bank (drawn once per size from a fixed seed) instead of drawing fresh noise
    per image saves most of the generation time; 4·S² crops keep the noise varied.
    """
    bank = _NOISE_BANKS.get(S)
    if bank is None:
        rng = np.random.default_rng(np.random.SeedSequence([_DOMAIN, S]))
        bank = torch.from_numpy(rng.standard_normal((_NOISE_FIELDS, 3, 2 * S, 2 * S), dtype=np.float32))
        _NOISE_BANKS[S] = bank
    return torch.stack([bank[f, :, y : y + S, x : x + S] * sigma for sigma, f, x, y in (p.noise for p in params)])


def _mask_box(mask: Tensor) -> Tensor:
    """Tight box ``x0 y0 x1 y1`` (pixel edges: x1 = last column + 1) of a non-empty mask."""
    rows = torch.nonzero(mask.any(dim=1)).squeeze(1)
    cols = torch.nonzero(mask.any(dim=0)).squeeze(1)
    return torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32)


# ----------------------------------------------------------------------------------- public API


@dataclass
class Scene:
    """One image with everything about its objects (slot 0 is the target).

    ``object_masks[k]`` is the footprint of object k (its whole shape, hollow interior of an
    outlined distractor included); ``object_masks[0]`` equals the target mask of the sample.
    """

    image: Tensor  # (3, S, S) float in [0, 1]
    label: int
    classes: Tensor  # (K,) long, K = 2 or 3
    filled: Tensor  # (K,) bool: True for the target only
    object_masks: Tensor  # (K, S, S) bool
    boxes: Tensor  # (K, 4) float xyxy pixel edges
    id: str

    @property
    def mask(self) -> Tensor:
        """The target mask (S, S) bool."""
        return self.object_masks[0]


def _check(split: str, size: int, seed: int) -> None:
    if split not in _SPLIT_CODES:
        raise ValueError(f"builtin benchmark: unknown split {split!r}; expected one of {sorted(_SPLIT_CODES)}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"builtin benchmark: size must be an int ≥ 32 (got {size!r})")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"builtin benchmark: seed must be a non-negative int (got {seed!r})")


def _indices(indices: Sequence[int] | Tensor | np.ndarray, allow_negative: bool = False) -> list[int]:
    out = [int(i) for i in (indices.tolist() if isinstance(indices, (Tensor, np.ndarray)) else indices)]
    if not out:
        raise ValueError("builtin benchmark: empty list of indices")
    if not allow_negative and min(out) < 0:
        raise ValueError(f"builtin benchmark: indices must be ≥ 0 (got {min(out)})")
    return out


def make_scenes(split: str, indices: Sequence[int] | Tensor | np.ndarray, size: int = 64, seed: int = 0) -> list[Scene]:
    """Generate the full scenes (all objects, their classes and masks) of ``indices``."""
    _check(split, size, seed)
    idx = _indices(indices)
    params = [_sample_scene(_rng_for(seed, split, i), size) for i in idx]
    images, masks, classes, filled = _render(params, size)
    scenes = []
    for j, i in enumerate(idx):
        k = len(params[j].classes)
        om = masks[j, :k]
        scenes.append(
            Scene(
                image=images[j],
                label=int(classes[j, 0]),
                classes=classes[j, :k].clone(),
                filled=filled[j, :k].clone(),
                object_masks=om.clone(),
                boxes=torch.cat([_mask_box(m) for m in om]),
                id=f"builtin/{split}/{i:06d}",
            )
        )
    return scenes


def make_batch(split: str, indices: Sequence[int] | Tensor | np.ndarray, size: int = 64, seed: int = 0) -> Batch:
    """Generate samples ``indices`` of ``split`` as one :class:`Batch` (batched rendering).

    Identical to collating ``BuiltinBenchmark(split, size, seed=seed)[i]`` for each i, but faster.
    Indices are not bounded by a split length: every index ≥ 0 names a distinct image.
    """
    _check(split, size, seed)
    idx = _indices(indices)
    params = [_sample_scene(_rng_for(seed, split, i), size) for i in idx]
    images, masks, classes, _ = _render(params, size)
    target = masks[:, 0].clone()
    return Batch(
        images=images,
        labels=classes[:, 0].clone(),
        masks=target,
        boxes=[_mask_box(m) for m in target],
        ids=[f"builtin/{split}/{i:06d}" for i in idx],
    )


class BuiltinBenchmark:
    """The built-in shapes benchmark as a map-style :class:`sycam.data.base.Dataset`.

    ``BuiltinBenchmark(split, size, n, seed)[i]`` is a :class:`Sample` with a (3, size, size)
    image in [0, 1], the target's class as label, the target's exact mask and its box (1, 4).
    Default lengths: train 6000, val 512, test 512 (``n`` overrides; images are generated on the
    fly, so any length is free). See the module docstring for the labelling rule.
    """

    name = "builtin"
    num_classes = len(SHAPES)
    class_names = list(SHAPES)

    def __init__(self, split: str = "test", size: int = 64, n: int | None = None, seed: int = 0) -> None:
        _check(split, size, seed)
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"builtin benchmark: n must be a positive int or None (got {n!r})")
        self.split = split
        self.size = size
        self.seed = int(seed)
        self.n = SPLIT_LENGTHS[split] if n is None else n
        self.class_names = list(SHAPES)  # a per-instance copy, so callers cannot edit the module's

    def __len__(self) -> int:
        return self.n

    def _resolve(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"builtin benchmark: index must be an int (got {type(index).__name__})")
        i = int(index)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"builtin benchmark ({self.split}): index {index} out of range for length {self.n}")
        return i

    def __getitem__(self, index: int) -> Sample:
        i = self._resolve(index)
        b = make_batch(self.split, [i], self.size, self.seed)
        assert b.masks is not None and b.boxes is not None
        return Sample(image=b.images[0], label=int(b.labels[0]), mask=b.masks[0], boxes=b.boxes[0], id=b.ids[0])

    def batch(self, indices: Sequence[int] | Tensor | np.ndarray) -> Batch:
        """Samples ``indices`` (bounds-checked, negatives from the end) as one batch."""
        return make_batch(self.split, [self._resolve(i) for i in _indices(indices, allow_negative=True)], self.size, self.seed)

    def scene(self, index: int) -> Scene:
        """Sample ``index`` with all its objects (distractor classes and masks included)."""
        return make_scenes(self.split, [self._resolve(index)], self.size, self.seed)[0]

    def __repr__(self) -> str:
        return f"BuiltinBenchmark(split={self.split!r}, size={self.size}, n={self.n}, seed={self.seed})"

