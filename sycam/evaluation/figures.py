"""The two figures of ``sycam evaluate``: ``table.png`` (the means as a heatmap table) and
``overlays.png`` (every method's maps on the first :data:`OVERLAY_ROWS` images).

The overlay maps come from the saved batch records (float16, NaN where a program was invalid),
so a resumed run draws the same grid as an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sycam.data.base import Dataset
from sycam.evaluation.results import EvalResult
from sycam.models.bundle import ModelBundle

__all__ = ["OVERLAY_ROWS", "overlay_data", "write_figures"]

#: how many images the overlay grid shows
OVERLAY_ROWS = 6


def overlay_data(saved: Sequence[Mapping[str, Any]], dataset: Dataset, names: Sequence[str], first: int,
                 bundle: ModelBundle) -> dict[str, Any] | None:
    """Images, masks, maps and labels of the first ``first`` images, from the saved batches
    (None where some of them are missing)."""
    if first == 0:
        return None
    rows: dict[int, np.ndarray] = {}
    for d in saved:
        for r, gi in enumerate(d["overlay_indices"].tolist()):
            rows[int(gi)] = d["overlay_maps"][:, r]
    if sorted(rows) != list(range(first)):
        return None
    stack = np.stack([rows[i] for i in range(first)], axis=1).astype(np.float32)  # (methods, rows, H, W)
    stack = np.nan_to_num(stack, nan=0.0).clip(0.0, 1.0)  # invalid images: shown as an empty map
    maps = {n: stack[i] for i, n in enumerate(names)}
    samples = [dataset[i] for i in range(first)]
    images = torch.stack([s.image for s in samples]).float().cpu()
    masks = torch.stack([s.mask for s in samples]).cpu() if all(s.mask is not None for s in samples) else None
    targets = {}
    for d in saved:
        for j, gi in enumerate(d["indices"].tolist()):
            if gi < first:
                targets[gi] = int(d["targets"][j])
    names_of = bundle.class_names or getattr(dataset, "class_names", None)
    labels = []
    for i, s in enumerate(samples):
        t = targets.get(i, -1)
        cls = names_of[t] if names_of and 0 <= t < len(names_of) else f"class {t}"
        ident = s.id or str(i)
        # two short lines: the explained class, then the image id's tail (ids can be long paths)
        labels.append(f"{cls[:22]}\n{ident if len(ident) <= 22 else '…' + ident[-21:]}")
    return {"images": images, "masks": masks, "maps": maps, "labels": labels}


def write_figures(result: EvalResult, out: Path, overlay: Mapping[str, Any] | None) -> None:
    """``table.png`` always; ``overlays.png`` where :func:`overlay_data` found the images."""
    from sycam.viz import heatmap_table, overlay_grid

    heatmap_table(result.means(), result.methods, result.metrics, out / "table.png",
                  title=f"mean over {result.n_images} images",
                  higher_is_better=[result.higher_is_better[k] for k in result.metrics])
    if overlay is not None and overlay["images"] is not None:
        overlay_grid(overlay["images"], overlay["maps"], out / "overlays.png", row_labels=overlay["labels"],
                     masks=overlay["masks"])
