"""Datasets: the built-in benchmark and real image sets (folder, COCO, VOC).

``open_dataset(spec)`` is the one entry point. Every dataset yields :class:`Sample` s with
images ``(3, S, S)`` in [0, 1], the label in the dataset's own label space, a boolean mask of the
target object (or the union of its boxes) and boxes scaled to the resized image; see
:mod:`sycam.data._io` for the conventions (RGB conversion, resizing, splits).

=================  ======================================================================
spec               what it gives
=================  ======================================================================
``builtin``        the synthetic benchmark (:mod:`sycam.data.builtin`; its own splits, 64 px)
``folder:PATH``    images + ``manifest.csv`` (:mod:`sycam.data.folder`), e.g. the ImageNet
                   val subset in ``shared/data/imagenet-val-dev`` (ImageNet labels, boxes)
                   or ``shared/data/coco128`` (COCO-80 labels from the semantic masks, both
                   halves)
``coco:PATH``      COCO instances JSON, polygons and RLE (:mod:`sycam.data.coco`);
                   ``shared/data/coco128`` gives its train2017 half with instance boxes
``voc:PATH``       VOC2012 segmentation layout, or a manifest with VOC-palette masks
                   (:mod:`sycam.data.voc`); ``shared/data/coco128`` gives VOC-20 labels
=================  ======================================================================
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sycam.data._io import DataError, RecordDataset
    from sycam.data.base import Batch, Dataset, Sample, collate

__all__ = [
    "Batch",
    "DataError",
    "Dataset",
    "FORMS",
    "FORMS_HELP",
    "PATH_FORMS",
    "RecordDataset",
    "Sample",
    "collate",
    "open_dataset",
    "path_form",
]

#: the forms that read files: ``FORM:PATH``
PATH_FORMS = ("folder", "coco", "voc")
#: every form of a dataset spec
FORMS = ("builtin",) + tuple(f"{form}:PATH" for form in PATH_FORMS)
#: the forms as the command line's help says them
FORMS_HELP = "builtin (default), " + ", ".join(FORMS[1:-1]) + " or " + FORMS[-1]


def __getattr__(name: str) -> Any:
    # the torch-using members load on first use, so that the command line can build its help (and
    # read the forms above) without importing torch
    if name in ("Batch", "Dataset", "Sample", "collate"):
        from sycam.data import base

        return getattr(base, name)
    if name in ("DataError", "RecordDataset"):
        from sycam.data import _io

        return getattr(_io, name)
    raise AttributeError(f"module 'sycam.data' has no attribute {name!r}")


def path_form(spec: str) -> tuple[str, str] | None:
    """``(form, path)`` of a ``FORM:PATH`` dataset spec (the form lower-cased, the path as
    given), or None for any other spec (``builtin``, or an unknown form)."""
    form, sep, path = spec.partition(":")
    return (form.lower(), path) if sep and form.lower() in PATH_FORMS else None


def open_dataset(
    spec: str,
    split: str = "test",
    size: int | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    split_seed: int | None = None,
) -> Dataset:
    """Open the dataset named by ``spec`` (see the module docstring for the forms).

    ``split`` is ``train``, ``val``, ``test`` or ``all`` (real sets: 60/20/20 by hash of the image
    id, VOC2012: its own train list, its val list halved into val/test). ``size`` is the side of
    the square output images (default 224 for real sets, the benchmark's own default for
    ``builtin``). ``limit`` keeps the first ``limit`` samples of the split. ``on_error="skip"``
    leaves bad images out (decoding every image up front) and lists them in
    ``dataset.skipped``; ``"raise"`` stops at the first one with a :class:`DataError` naming it.
    ``split_seed`` draws another reproducible partition (real sets: the id hash is salted with it;
    ``builtin``: every split is generated from that seed's streams instead of seed 0's).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string, one of {', '.join(FORMS)}; got {spec!r}")
    spec = spec.strip()
    head, _, rest = spec.partition(":")
    if head.lower() == "builtin" and not rest:
        from sycam.data.builtin import BuiltinBenchmark  # lazy: written separately, may pull extra deps

        kwargs: dict[str, object] = {"split": split}
        if size is not None:
            kwargs["size"] = size
        if limit is not None:
            kwargs["n"] = limit
        if split_seed is not None:
            kwargs["seed"] = split_seed
        return BuiltinBenchmark(**kwargs)  # type: ignore[arg-type]
    found = path_form(spec)
    if found is not None:
        form, path = found
        if not path.strip():
            raise ValueError(f"dataset spec {spec!r} has no path after '{form}:'")
        if form == "folder":
            from sycam.data.folder import open_folder

            return open_folder(path, split=split, size=size, limit=limit, on_error=on_error, split_seed=split_seed)
        if form == "coco":
            from sycam.data.coco import open_coco

            return open_coco(path, split=split, size=size, limit=limit, on_error=on_error, split_seed=split_seed)
        from sycam.data.voc import open_voc

        return open_voc(path, split=split, size=size, limit=limit, on_error=on_error, split_seed=split_seed)
    hint = ""
    if Path(spec).expanduser().exists():
        forms = [f"'{form}:{spec}'" for form in PATH_FORMS]
        hint = f" (a path: did you mean {', '.join(forms[:-1])} or {forms[-1]}?)"
    raise ValueError(f"unknown dataset spec {spec!r}{hint}; expected one of {', '.join(FORMS)}")
