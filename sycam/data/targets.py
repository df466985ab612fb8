"""Which class a CAM explains: the dataset label, the model's prediction, or an ImageNet proxy.

Modes of :func:`resolve_targets`:

* ``label``    — the dataset's label. Only meaningful when the classifier's outputs *are* the
  dataset's classes; for the known label spaces (``imagenet`` 1000, ``voc`` 20, ``coco`` 80) the
  logits' width must match.
* ``pred``     — ``argmax`` of the logits (explains what the model saw, right or wrong).
* ``imagenet`` — for an ImageNet-1k classifier on VOC/COCO images: among the ImageNet classes
  that depict the image's VOC/COCO class (``imagenet_groups.json``), the one with the highest
  logit: ``t = argmax_{k in group(label)} logits[k]``. On an ImageNet dataset it is the label.
  Classes without an ImageNet counterpart (e.g. COCO ``giraffe``, ``kite``: the ImageNet
  ``kite`` is a bird) raise an error naming them; VOC/COCO ``person`` maps, approximately, to
  ballplayer / groom / scuba diver (ImageNet-1k has no person class). :func:`imagenet_group`
  and :func:`unmappable_classes` expose the table, e.g. to filter a dataset first.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch
from torch import Tensor

MODES = ("label", "pred", "imagenet")
KNOWN_SPACES = {"imagenet": 1000, "voc": 20, "coco": 80}
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def _groups() -> dict[str, list[list[int]]]:
    """The shipped table as ``{space: [indices of class 0, indices of class 1, ...]}``."""
    from sycam.data.coco import COCO_CLASSES
    from sycam.data.voc import VOC_CLASSES

    text = resources.files("sycam.data").joinpath("imagenet_groups.json").read_text(encoding="utf-8")
    table = json.loads(text)
    out: dict[str, list[list[int]]] = {}
    for space, names in (("voc", VOC_CLASSES), ("coco", COCO_CLASSES)):
        entry = table[space]
        missing = [n for n in names if n not in entry]
        if missing:
            raise RuntimeError(f"imagenet_groups.json lacks {space} classes {missing}")
        groups = [[int(i) for i in entry[n]] for n in names]
        bad = [i for g in groups for i in g if not 0 <= i < IMAGENET_CLASSES]
        if bad:
            raise RuntimeError(f"imagenet_groups.json: {space} indices {bad} are outside 0..999")
        out[space] = groups
    return out


def _class_names(label_space: str) -> tuple[str, ...]:
    from sycam.data.coco import COCO_CLASSES
    from sycam.data.voc import VOC_CLASSES

    return VOC_CLASSES if label_space == "voc" else COCO_CLASSES


def imagenet_group(label_space: str, label: int) -> list[int]:
    """ImageNet-1k indices standing for class ``label`` of ``label_space`` (``voc`` or ``coco``).

    An empty list means the class has no ImageNet counterpart.
    """
    if label_space not in ("voc", "coco"):
        raise ValueError(f"imagenet groups exist for label spaces 'voc' and 'coco', not {label_space!r}")
    groups = _groups()[label_space]
    if not 0 <= label < len(groups):
        raise ValueError(f"label {label} out of range for {label_space} ({len(groups)} classes)")
    return list(groups[label])


def unmappable_classes(label_space: str) -> list[str]:
    """Names of the ``voc``/``coco`` classes with no ImageNet counterpart."""
    if label_space not in ("voc", "coco"):
        raise ValueError(f"imagenet groups exist for label spaces 'voc' and 'coco', not {label_space!r}")
    names = _class_names(label_space)
    return [names[k] for k, g in enumerate(_groups()[label_space]) if not g]


def resolve_targets(mode: str, logits: Tensor, labels: Tensor, label_space: str) -> Tensor:
    """The class index to explain for each image, ``(B,)`` long on ``logits.device``.

    ``logits`` is ``(B, K)`` (the model's outputs for the batch), ``labels`` ``(B,)`` the dataset
    labels, ``label_space`` the dataset's (``dataset.label_space``). See the module docstring for
    the modes.
    """
    if mode not in MODES:
        raise ValueError(f"unknown target mode {mode!r}; expected one of {', '.join(MODES)}")
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"logits must be a (B, K) tensor, got {getattr(logits, 'shape', type(logits))}")
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be a (B,) tensor matching logits {tuple(logits.shape)}, got {getattr(labels, 'shape', type(labels))}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(device=logits.device, dtype=torch.long)
    width = int(logits.shape[1])

    if mode == "pred":
        return logits.argmax(dim=1)

    if mode == "label":
        expected = KNOWN_SPACES.get(label_space)
        if expected is not None and expected != width:
            raise ValueError(
                f"target mode 'label' needs a classifier over the dataset's {expected} {label_space} classes, "
                f"but the model has {width} outputs; use 'imagenet' (ImageNet model on VOC/COCO) or 'pred'"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= width):
            raise ValueError(f"labels must lie in [0, {width}) for target mode 'label', got {labels.tolist()}")
        return labels

    # mode == "imagenet"
    if width != IMAGENET_CLASSES:
        raise ValueError(f"target mode 'imagenet' needs an ImageNet-1k classifier (1000 outputs), got {width}")
    if label_space == "imagenet":
        return labels
    if label_space not in ("voc", "coco"):
        raise ValueError(
            f"target mode 'imagenet' maps VOC or COCO labels to ImageNet; label space {label_space!r} has no mapping"
        )
    groups = _groups()[label_space]
    n = len(groups)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
        raise ValueError(f"{label_space} labels must lie in [0, {n}), got {labels.tolist()}")
    allowed = torch.zeros(n, IMAGENET_CLASSES, dtype=torch.bool)
    for k, g in enumerate(groups):
        allowed[k, g] = True
    allowed = allowed.to(logits.device)[labels]  # (B, 1000)
    empty = ~allowed.any(dim=1)
    if bool(empty.any()):
        names = _class_names(label_space)
        bad = sorted({names[int(c)] for c in labels[empty].tolist()})
        raise ValueError(
            f"target mode 'imagenet': {label_space} class(es) {bad} have no ImageNet-1k counterpart "
            f"(images {empty.nonzero().flatten().tolist()} of the batch); leave them out or use 'pred'"
        )
    masked = logits.masked_fill(~allowed, float("-inf"))
    return masked.argmax(dim=1)
