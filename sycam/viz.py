"""Figures: CAM overlays, comparison grids, search convergence, metric tables, Pareto fronts.

Everything renders with matplotlib's Agg canvas directly (no ``pyplot``, no global backend switch,
no display needed) and writes PNG files. Tensors may live on any device; they are copied to the
CPU for drawing.

Overlay colour: ``out = (1 - alpha) * image + alpha * cmap(cam)`` per pixel (RGB in [0, 1]),
then rounded to 8 bits; so a zero CAM is the image blended with the colormap's lowest colour.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

__all__ = [
    "overlay",
    "save_overlay",
    "overlay_grid",
    "convergence_plot",
    "heatmap_table",
    "pareto_plot",
]

_TOL = 1e-5  # values this far outside [0, 1] are float noise, not a bug


def _to_numpy(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _check_unit(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has NaN or infinite values")
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo < -_TOL or hi > 1 + _TOL:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] (normalise it first)")
    return np.clip(arr, 0.0, 1.0)


def _image_hwc(image: Tensor | np.ndarray, name: str = "image") -> np.ndarray:
    arr = _to_numpy(image, name)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"{name} must be (3, H, W), got shape {tuple(arr.shape)}")
    return _check_unit(arr, name).transpose(1, 2, 0)


def _colormap(cmap: str) -> matplotlib.colors.Colormap:
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None


def _blend(img: np.ndarray, cam: np.ndarray, alpha: float, cmap: str) -> np.ndarray:
    """``(1 - alpha) * img + alpha * cmap(cam)`` as uint8 ``(H, W, 3)``."""
    colours = _colormap(cmap)(cam)[..., :3]
    out = (1.0 - alpha) * img + alpha * colours
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def overlay(
    image: Tensor | np.ndarray, cam: Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """Blend a CAM over its image: ``(1 - alpha) * image + alpha * cmap(cam)``.

    ``image`` is ``(3, H, W)`` in [0, 1], ``cam`` ``(H, W)`` in [0, 1] (the same H, W). Returns an
    RGB Pillow image of size ``W x H``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = _image_hwc(image)
    c = _to_numpy(cam, "cam")
    if c.ndim != 2:
        raise ValueError(f"cam must be (H, W), got shape {tuple(c.shape)}")
    if c.shape != img.shape[:2]:
        raise ValueError(f"cam is {c.shape[0]}x{c.shape[1]} but image is {img.shape[0]}x{img.shape[1]} (HxW); upsample the cam first")
    return Image.fromarray(_blend(img, _check_unit(c, "cam"), alpha, cmap), mode="RGB")


def save_overlay(
    path: str | Path, image: Tensor | np.ndarray, cam: Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> Path:
    """Write :func:`overlay` to ``path`` (PNG; parent folders are created). Returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, cam, alpha=alpha, cmap=cmap).save(out, format="PNG")
    return out


def _save(fig: Figure, path: str | Path, tight: bool = False) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=fig.dpi, bbox_inches="tight" if tight else None, pad_inches=0.1)
    return out


def overlay_grid(
    images: Tensor | np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    masks: Tensor | np.ndarray | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    cell: float = 2.0,
    dpi: int = 100,
) -> Path:
    """A PNG grid to compare methods at a glance: one row per image, columns = the original image
    and one overlay per method (``maps`` name -> ``(B, H, W)`` in [0, 1]).

    ``masks`` ``(B, H, W)`` (bool) draws the ground truth's outline in every cell. ``row_labels``
    (e.g. class names) are written left of each row. Each cell is ``cell`` inches square; the
    file is exactly ``(label margin + cols * cell) x (title margin + rows * cell)`` inches at
    ``dpi``.
    """
    imgs = _to_numpy(images, "images")
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(imgs.shape)}")
    b, _, h, w = imgs.shape
    if b == 0:
        raise ValueError("images is empty (B = 0)")
    imgs = _check_unit(imgs, "images")
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a dict name -> (B, H, W) tensor, got {type(maps).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, m in maps.items():
        arr = _to_numpy(m, f"maps[{name!r}]")
        if arr.shape != (b, h, w):
            raise ValueError(f"maps[{name!r}] must be (B, H, W) = {(b, h, w)} like images, got {tuple(arr.shape)}")
        arrays[str(name)] = _check_unit(arr, f"maps[{name!r}]")
    mask_arr: np.ndarray | None = None
    if masks is not None:
        mask_arr = _to_numpy(masks, "masks")
        if mask_arr.shape != (b, h, w):
            raise ValueError(f"masks must be (B, H, W) = {(b, h, w)}, got {tuple(mask_arr.shape)}")
        mask_arr = mask_arr > 0.5
    if row_labels is not None and len(row_labels) != b:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {b} images")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")

    cols = 1 + len(arrays)
    left = 0.35 if row_labels is not None else 0.05  # inches for the row labels
    top = 0.35  # inches for the column titles
    fig_w, fig_h = left + cols * cell, top + b * cell
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    titles = ["image" + (" + mask" if mask_arr is not None else "")] + list(arrays)
    pad = 0.03 * cell  # white gap between cells
    for r in range(b):
        img = imgs[r].transpose(1, 2, 0)
        cells = [np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)]
        cells += [_blend(img, arr[r], alpha, cmap) for arr in arrays.values()]
        for c, pixels in enumerate(cells):
            x = (left + c * cell + pad) / fig_w
            y = (fig_h - top - (r + 1) * cell + pad) / fig_h
            ax = fig.add_axes((x, y, (cell - 2 * pad) / fig_w, (cell - 2 * pad) / fig_h))
            ax.imshow(pixels, interpolation="nearest")
            if mask_arr is not None and mask_arr[r].any():
                # padded with background so that masks touching the border are outlined there too;
                # black under white: the outline reads on bright and dark pixels alike
                padded = np.pad(mask_arr[r].astype(float), 1)
                xs, ys = np.arange(-1, w + 1), np.arange(-1, h + 1)
                ax.contour(xs, ys, padded, levels=[0.5], colors="black", linewidths=2.4)
                ax.contour(xs, ys, padded, levels=[0.5], colors="white", linewidths=1.2)
                ax.set_xlim(-0.5, w - 0.5)
                ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(titles[c], fontsize=9, pad=3)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[r]), fontsize=8)
    return _save(fig, path)


def convergence_plot(
    history: Sequence[Mapping[str, float]], path: str | Path, title: str | None = None, metric: str = "best score"
) -> Path:
    """Best score so far against candidates evaluated (left) and wall-clock seconds (right).

    ``history`` entries need keys ``n`` (candidates so far), ``seconds`` and ``best``; they are
    drawn as steps in order of ``n``.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    rows = []
    for i, h in enumerate(history):
        missing = [k for k in ("n", "seconds", "best") if k not in h]
        if missing:
            raise ValueError(f"history[{i}] lacks key(s) {missing}; each entry needs n, seconds and best")
        try:
            rows.append((float(h["n"]), float(h["seconds"]), float(h["best"])))
        except (TypeError, ValueError):
            raise ValueError(f"history[{i}] has a non-numeric n, seconds or best: {dict(h)}") from None
    data = np.asarray(sorted(rows, key=lambda t: t[0]))
    fig = Figure(figsize=(9.0, 3.4), dpi=100)
    for k, (col, xlabel) in enumerate(((0, "candidates evaluated"), (1, "seconds"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.step(data[:, col], data[:, 2], where="post", color="tab:blue", linewidth=1.8)
        ax.plot(data[:, col], data[:, 2], "o", color="tab:blue", markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.86 if title else 0.95, wspace=0.28)
    return _save(fig, path)


def heatmap_table(
    values: np.ndarray,
    row_names: Sequence[str],
    col_names: Sequence[str],
    path: str | Path,
    title: str = "",
    higher_is_better: Sequence[bool] | None = None,
    fmt: str = ".3f",
) -> Path:
    """An annotated table (rows = methods, columns = metrics), coloured per column.

    Metrics differ in scale, so each column is min-max normalised for the colour; with
    ``higher_is_better`` the colour is flipped for lower-is-better columns, so bright always
    means best. The printed numbers are the raw values; NaN cells are grey with a dash.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim != 2:
        raise ValueError(f"values must be 2-D (methods x metrics), got shape {vals.shape}")
    n_rows, n_cols = vals.shape
    if len(row_names) != n_rows or len(col_names) != n_cols:
        raise ValueError(
            f"values is {n_rows}x{n_cols} but got {len(row_names)} row names and {len(col_names)} column names"
        )
    if higher_is_better is not None and len(higher_is_better) != n_cols:
        raise ValueError(f"higher_is_better has {len(higher_is_better)} entries for {n_cols} columns")
    colour = np.full_like(vals, np.nan)
    for j in range(n_cols):
        col = vals[:, j]
        ok = np.isfinite(col)
        if not ok.any():
            continue
        lo, hi = col[ok].min(), col[ok].max()
        norm = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)
        if higher_is_better is not None and not higher_is_better[j]:
            norm = 1.0 - norm
        colour[:, j] = np.where(ok, norm, np.nan)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    longest = max((len(str(n)) for n in row_names), default=4)
    fig = Figure(figsize=(1.0 + 0.075 * longest + 1.05 * n_cols, 0.9 + 0.38 * n_rows), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(colour), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            v = vals[i, j]
            if np.isfinite(v):
                text = format(v, fmt)
                rgba = cmap(colour[i, j])
                luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if luminance > 0.5 else "white")
            else:
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="black")
    ax.set_xticks(range(n_cols), [str(c) for c in col_names], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), [str(r) for r in row_names], fontsize=8)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=10)
    note = "colour per column, bright = best" if higher_is_better is not None else "colour per column, bright = highest"
    ax.set_xlabel(note, fontsize=7, color="0.35")
    return _save(fig, path, tight=True)


def pareto_plot(
    points: np.ndarray | Sequence[Sequence[float]],
    front: np.ndarray | Sequence[int] | Sequence[Sequence[float]],
    axis_names: Sequence[str],
    path: str | Path,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """All candidates (grey) and the Pareto front (red) of a multi-objective search.

    ``points`` is ``(N, k)`` objective values, ``front`` either integer indices into ``points``
    or the front's own ``(M, k)`` values. ``k = 2`` draws one scatter with the front joined in
    order of the first objective; ``k > 2`` draws every pair of objectives (front points only, not
    joined: a projected front is not a curve). ``labels`` (one per
    front point, e.g. program names) are written next to the front points when ``k = 2``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"points must be (N, k) with k >= 2 objectives, got shape {pts.shape}")
    k = pts.shape[1]
    if len(axis_names) != k:
        raise ValueError(f"axis_names has {len(axis_names)} names for {k} objectives")
    fr = np.asarray(front)
    if fr.ndim == 1 and (fr.size == 0 or np.issubdtype(fr.dtype, np.integer)):
        idx = fr.astype(np.int64)
        if idx.size and (idx.min() < -len(pts) or idx.max() >= len(pts)):
            raise ValueError(f"front indices must lie in [0, {len(pts)}), got {idx.tolist()}")
        fr = pts[idx] if idx.size else np.zeros((0, k))
    else:
        fr = fr.astype(np.float64)
        if fr.ndim != 2 or fr.shape[1] != k:
            raise ValueError(f"front must be indices or (M, {k}) values, got shape {fr.shape}")
    if labels is not None and len(labels) != len(fr):
        raise ValueError(f"labels has {len(labels)} entries for {len(fr)} front points")
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.0 * nrows), dpi=100)
    for p, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(nrows, ncols, p + 1)
        ax.scatter(pts[:, a], pts[:, b], s=14, color="0.65", label=f"candidates ({len(pts)})", zorder=1)
        if len(fr):
            if k == 2:  # a 2-objective front is a curve; projections of a k > 2 front are not
                order = np.argsort(fr[:, a], kind="stable")
                ax.plot(fr[order, a], fr[order, b], "-", color="tab:red", linewidth=1.2, zorder=2)
            ax.scatter(fr[:, a], fr[:, b], s=30, color="tab:red", label=f"Pareto front ({len(fr)})", zorder=3)
            if labels is not None and k == 2:
                for (x, y), text in zip(fr[:, [a, b]], labels):
                    ax.annotate(str(text), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_xlabel(str(axis_names[a]))
        ax.set_ylabel(str(axis_names[b]))
        ax.grid(True, alpha=0.3)
        if p == 0:
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
