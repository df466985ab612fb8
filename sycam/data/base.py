"""Data containers shared by datasets, metrics and evaluation.

Images are float tensors in [0, 1] (the model's own normalisation is applied later, by the
model bundle), masks are boolean, boxes are ``x0 y0 x1 y1`` in pixels of the (resized) image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import Tensor


@dataclass
class Sample:
    """One image of a dataset."""

    image: Tensor  # (3, H, W) float in [0, 1]
    label: int  # class index in the dataset's own label space
    mask: Tensor | None = None  # (H, W) bool ground truth; boxes are rasterised into it
    boxes: Tensor | None = None  # (n, 4) float xyxy pixels, or None
    id: str = ""


@dataclass
class Batch:
    """A collated batch of samples (all of one size)."""

    images: Tensor  # (B, 3, H, W) float in [0, 1]
    labels: Tensor  # (B,) long
    masks: Tensor | None  # (B, H, W) bool, or None when the dataset has none
    boxes: list[Tensor | None] | None = None
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            images=self.images.to(device),
            labels=self.labels.to(device),
            masks=None if self.masks is None else self.masks.to(device),
            boxes=self.boxes,
            ids=list(self.ids),
        )


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples of equal size into a :class:`Batch`."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    has_mask = all(s.mask is not None for s in samples)
    return Batch(
        images=torch.stack([s.image for s in samples]),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        masks=torch.stack([s.mask for s in samples]) if has_mask else None,  # type: ignore[misc]
        boxes=[s.boxes for s in samples],
        ids=[s.id for s in samples],
    )


class Dataset(Protocol):
    """What every sycam dataset offers (map-style, like ``torch.utils.data.Dataset``)."""

    name: str
    num_classes: int
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
