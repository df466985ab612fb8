"""ROAD's linear imputer: removed pixels take the weighted mean of their neighbours.

Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods" (ICML
2022), replace the pixels ROAD removes by solving one sparse linear system per image (see
:func:`linear_impute`); :mod:`sycam.metrics.faithfulness` adds the noise and scores the result.
Two solvers: SciPy's sparse LU (exact, CPU) and batched conjugate gradients in torch (any device).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sycam.errors import MetricError

__all__ = ["IMPUTE_SOLVERS", "linear_impute"]


# neighbour weights of ROAD's noisy linear imputer: 1/6 for the 4 direct, 1/12 for the 4 diagonal
_ROAD_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _pcg(x_img: Tensor, u: Tensor, x: Tensor, tol: float, max_iter: int) -> Tensor:
    """Preconditioned CG for the imputation system of one pyramid level (see :func:`linear_impute`).

    ``x_img`` (M, 1, h, w) values (kept pixels are read), ``u`` (M, 1, h, w) 1 on unknowns,
    ``x`` the initial guess (zero on kept pixels). Returns the unknowns (zero elsewhere).
    """
    dt = x_img.dtype
    tiny = torch.finfo(dt).tiny
    h, w = x_img.shape[-2:]
    kernel = torch.tensor(_ROAD_KERNEL, dtype=dt, device=x_img.device).view(1, 1, 3, 3)

    def nconv(v: Tensor) -> Tensor:  # Σ_j w_ij v_j over in-image neighbours (zero padding)
        return F.conv2d(v, kernel, padding=1)

    # Σ_j w_ij, (1, 1, h, w); clamped for the degenerate 1×1 image
    deg = nconv(torch.ones(1, 1, h, w, dtype=dt, device=x_img.device)).clamp_min(tiny)

    def apply_a(v: Tensor) -> Tensor:
        return u * (deg * v - nconv(u * v))

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)

    rhs = u * nconv((1 - u) * x_img)
    r = rhs - apply_a(x)
    z = r / deg
    p = z.clone()
    rz = dot(r, z)
    bnorm = dot(rhs, rhs).sqrt().clamp_min(tiny)
    active = dot(r, r).sqrt() > tol * bnorm
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        ap = apply_a(p)
        alpha = torch.where(active, rz / dot(p, ap).clamp_min(tiny), torch.zeros_like(rz))
        x = x + alpha * p
        r = r - alpha * ap
        active = active & (dot(r, r).sqrt() > tol * bnorm)
        z = r / deg
        rz_new = dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return x


def _cascade(x_img: Tensor, u: Tensor, tol: float, max_iter: int, min_size: int = 16) -> Tensor:
    """Solve coarse-to-fine: the half-resolution problem (kept pixels averaged, a coarse pixel
    unknown iff all its fine pixels are) gives the initial guess, upsampled bilinearly; PCG then
    refines. Large holes converge in tens instead of thousands of iterations."""
    h, w = x_img.shape[-2:]
    kept = 1 - u
    if min(h, w) >= 2 * min_size:
        kc = F.avg_pool2d(kept, 2, 2, ceil_mode=True)
        xc = F.avg_pool2d(kept * x_img, 2, 2, ceil_mode=True) / kc.clamp_min(torch.finfo(x_img.dtype).tiny)
        uc = (kc == 0).to(x_img.dtype)
        coarse = _cascade(xc * (1 - uc), uc, tol, max_iter, min_size)
        x0 = u * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    else:
        mean = (kept * x_img).flatten(1).sum(1) / kept.flatten(1).sum(1)
        x0 = u * mean.view(-1, 1, 1, 1)
    return torch.where(u > 0, _pcg(x_img, u, x0, tol, max_iter), x_img)


# (dy, dx, weight) of the 8 neighbours, for the sparse direct solver
_ROAD_OFFSETS = tuple((dy - 1, dx - 1, _ROAD_KERNEL[dy][dx]) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1))


def _direct_solve(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Exact solve of one image's imputation system with SciPy's sparse LU (all channels share
    the matrix, so it is factorised once). ``img`` (C, H, W) float64, ``removed`` (H, W) bool."""
    import scipy.sparse as sparse
    import scipy.sparse.linalg as sparse_linalg

    c, h, w = img.shape
    ui, uj = np.nonzero(removed)
    m = len(ui)
    out = img.copy()
    if m == 0:
        return out
    index = np.full((h, w), -1, dtype=np.int64)
    index[ui, uj] = np.arange(m)
    diag = np.zeros(m)
    rhs = np.zeros((m, c))
    rows, cols, vals = [], [], []
    for dy, dx, wt in _ROAD_OFFSETS:
        ni, nj = ui + dy, uj + dx
        inside = (ni >= 0) & (ni < h) & (nj >= 0) & (nj < w)
        diag[inside] += wt
        src, ni, nj = np.nonzero(inside)[0], ni[inside], nj[inside]
        nb = index[ni, nj]
        unknown = nb >= 0
        rows.append(src[unknown])
        cols.append(nb[unknown])
        vals.append(np.full(int(unknown.sum()), -wt))
        known = ~unknown
        rhs[src[known]] += wt * img[:, ni[known], nj[known]].T  # src is unique per offset
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    vals.append(diag)
    a = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
    out[:, ui, uj] = sparse_linalg.splu(a).solve(rhs).T
    return out


def _have_scipy() -> bool:
    try:
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:
        return False
    return True


IMPUTE_SOLVERS = ("auto", "direct", "cg")


def linear_impute(
    images: Tensor,
    removed: Tensor,
    solver: str = "auto",
    tol: float = 1e-5,
    max_iter: int = 300,
) -> Tensor:
    """ROAD's linear imputation of the ``removed`` pixels of (N, C, H, W) images (noise-free; ROAD
    adds its noise afterwards, see :func:`seeded_normal`).

    Every removed pixel i takes the weighted mean of its in-image 8-neighbours j (weights
    ``w_ij`` = 1/6 direct, 1/12 diagonal), neighbours that are themselves removed being unknowns:
    ``(Σ_j w_ij)·x_i − Σ_{j removed} w_ij x_j = Σ_{j kept} w_ij x_j``. The system is symmetric
    positive definite whenever at least one pixel is kept. Solvers:

    * ``direct``: exact, SciPy sparse LU, one image at a time on the CPU (10-30× faster than CG
      on a CPU for 224×224 images, where torch has no sparse direct solver);
    * ``cg``: matrix-free batched conjugate gradients in torch (a 3×3 convolution per iteration),
      diagonal preconditioner, coarse-to-fine (:func:`_cascade`), until ``‖r‖ ≤ tol·‖b‖`` or
      ``max_iter`` iterations per level; stays on the images' device (the GPU path). With the
      defaults it is within a few 1e-3 of the exact solution on 224×224 images, below ROAD's
      noise (σ = 0.01);
    * ``auto``: ``direct`` for CPU tensors when SciPy is installed, else ``cg``.

    ``removed`` is (N, H, W) bool; kept pixels are returned unchanged, imputed ones clipped to
    [0, 1] (a convex combination of [0, 1] values stays there up to solver error).
    """
    if images.dim() != 4 or removed.shape != (images.shape[0],) + tuple(images.shape[2:]):
        raise MetricError(
            f"linear_impute: images (N, C, H, W) and removed (N, H, W) expected, got "
            f"{tuple(images.shape)} and {tuple(removed.shape)}"
        )
    if removed.dtype != torch.bool:
        raise TypeError(f"linear_impute: removed must be bool, got {removed.dtype}")
    if solver not in IMPUTE_SOLVERS:
        raise MetricError(f"linear_impute: solver must be one of {IMPUTE_SOLVERS}, got {solver!r}")
    if bool(removed.flatten(1).all(1).any()):
        raise MetricError("linear_impute: an image has every pixel removed; nothing to impute from")
    n, c, h, w = images.shape
    if solver == "auto":
        solver = "direct" if images.device.type == "cpu" and _have_scipy() else "cg"
    dt = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    u = removed.to(dt).repeat_interleave(c, dim=0).view(n * c, 1, h, w)  # 1 on unknowns
    x_img = images.to(dt).reshape(n * c, 1, h, w)
    if solver == "direct":
        if not _have_scipy():
            raise ImportError("linear_impute: solver='direct' needs scipy (pip install scipy), or use solver='cg'")
        imgs = images.detach().to("cpu", torch.float64).numpy()
        rem = removed.detach().cpu().numpy()
        solved = [torch.from_numpy(_direct_solve(imgs[i], rem[i])) for i in range(n)]
        x = torch.stack(solved).to(device=images.device, dtype=dt).reshape(n * c, 1, h, w)
    else:
        x = _cascade(x_img, u, tol, max_iter)
    out = torch.where(u > 0, x.clamp(0, 1), x_img)
    return out.view(n, c, h, w).to(images.dtype)
