"""``coco:PATH`` — COCO instance annotations (polygons and RLE), labels in COCO's 80 categories.

``PATH`` is an ``instances_*.json`` file or a folder holding one or more (directly or in
``annotations/``). Image files are looked up, for ``file_name`` and the JSON's split name
(``instances_train2017.json`` -> ``train2017``), as ``file_name``, ``images/<split>/file_name``,
``<split>/file_name`` or ``images/file_name`` under the JSON's folder, its parent and ``PATH``.

One sample per annotated image: label = the category with the largest annotated area (the sum of
the annotations' ``area`` fields; ties: lowest category id), mask = the union of that category's
segmentations (crowd regions included), boxes = that category's ``bbox`` es (``x y w h`` ->
``x0 y0 x1 y1``). Images without annotations are left out and listed in ``dataset.skipped``.
Categories are made contiguous by ascending id: with COCO's 80 categories, label ``k`` is
``COCO_CLASSES[k]`` and ``label_space == "coco"``.

Segmentations are decoded here, without pycocotools: polygons are rasterised by sampling pixel
centres (see :func:`polygons_to_mask`), RLE is decoded from uncompressed ``counts`` (a list
of run lengths) or from the compressed string form. Runs alternate 0 and 1 starting with 0 and
run down the columns (column-major, as COCO stores them).

For ``../shared/data/coco128`` this gives the 126 annotated images of the train2017 half (the
val2017 half has no instances JSON; ``folder:`` reads both halves from the semantic masks).
Splits: 60/20/20 by hash of the id (``train2017/000000000009``, the same id ``folder:`` gives).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sycam.data._io import (
    DataError,
    Record,
    RecordDataset,
    assign_split,
    check_open_args,
    empty_error,
    expand,
    raise_problems,
    relative_id,
    select_records,
)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


# --------------------------------------------------------------------------- decoding


def rle_string_to_counts(text: str) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths.

    Each run is a little-endian sequence of 5-bit groups stored as ``chr(group + 48)``; bit 0x20
    of a character says another group follows, bit 0x10 of the last group is the sign. From the
    fourth run on, the stored value is the difference to the run two places earlier
    (``counts[i] = value + counts[i - 2]``).
    """
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE string ends inside a run")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[pos]!r} is not valid in a compressed RLE string")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_to_mask(counts: Sequence[int] | str, height: int, width: int) -> np.ndarray:
    """Decode an RLE (uncompressed list or compressed string) into a bool ``(height, width)`` mask.

    Runs alternate background/object starting with background, column-major.
    """
    runs = rle_string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs):
        raise ValueError("RLE has a negative run length")
    if sum(runs) != height * width:
        raise ValueError(f"RLE covers {sum(runs)} pixels but the mask is {height}x{width} = {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T.copy()


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (``[x0, y0, x1, y1, ...]`` each) into a bool ``(height, width)`` mask.

    Pixel ``(i, j)`` is inside a polygon when its centre ``(j + .5, i + .5)`` is (even-odd rule,
    scanline per pixel row; centres on a left/top edge count, on a right/bottom edge do not, as for
    boxes). The union over the polygons is returned; polygons with fewer than three points draw
    nothing. Centre sampling keeps the pixel count close to the polygon's area (on coco128 the
    median ratio to COCO's ``area`` is 1.000; Pillow's ``ImageDraw.polygon``, which also sets every
    pixel the outline touches, gives 1.047).
    """
    mask = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        pts = np.asarray([float(v) for v in poly], dtype=np.float64)
        if pts.size % 2:
            raise ValueError(f"polygon has an odd number of coordinates ({pts.size})")
        if pts.size < 6:
            continue
        if not np.isfinite(pts).all():
            raise ValueError("polygon has a non-finite coordinate")
        mask |= _scanline_fill(pts.reshape(-1, 2), height, width)
    return mask


def _scanline_fill(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Even-odd fill of one closed polygon ``(n, 2)`` sampled at pixel centres."""
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # an edge crosses the centre line of row r when lo <= r + .5 < hi (half-open: vertices count once)
    r0 = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
    n = np.maximum(r1 - r0, 0)
    out = np.zeros((height, width), dtype=bool)
    if not n.any():
        return out
    edges = np.repeat(np.arange(xy.shape[0]), n)
    rows = np.concatenate([np.arange(a, b) for a, b, k in zip(r0, r1, n) if k > 0])
    t = (rows + 0.5 - y0[edges]) / (y1[edges] - y0[edges])
    xc = x0[edges] + t * (x1[edges] - x0[edges])
    # centres at or right of the crossing (j + .5 >= xc) are toggled; parity along the row = inside
    cols = np.clip(np.ceil(xc - 0.5), 0, width).astype(np.int64)
    top, bottom = int(rows.min()), int(rows.max()) + 1
    toggles = np.zeros((bottom - top, width + 1), dtype=np.int32)
    np.add.at(toggles, (rows - top, cols), 1)
    out[top:bottom] = (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)
    return out


def segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """Decode one annotation's ``segmentation`` (polygon list or RLE dict) into a bool mask."""
    if isinstance(seg, list):
        return polygons_to_mask(seg, height, width)
    if isinstance(seg, dict) and "counts" in seg:
        size = seg.get("size")
        if size is not None and [int(v) for v in size] != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image's [height, width] = [{height}, {width}]")
        return rle_to_mask(seg["counts"], height, width)
    raise ValueError(f"unknown segmentation of type {type(seg).__name__} (expected polygons or an RLE dict)")


@dataclass(frozen=True, eq=False)
class CocoSegmentation:
    """The union of some annotations' segmentations, decoded on demand (picklable)."""

    path: Path  # the JSON (named in errors)
    segmentations: tuple[tuple[int, Any], ...]  # (annotation id, segmentation)
    height: int
    width: int

    def __call__(self) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        for ann_id, seg in self.segmentations:
            try:
                mask |= segmentation_to_mask(seg, self.height, self.width)
            except ValueError as exc:
                raise DataError(f"{self.path}: annotation {ann_id}: {exc}") from exc
        return mask

    def size(self) -> tuple[int, int] | None:
        return (self.width, self.height)


# --------------------------------------------------------------------------- dataset


def _json_files(given: Path) -> list[Path]:
    if given.is_file():
        return [given]
    found = sorted(given.glob("instances_*.json")) + sorted((given / "annotations").glob("instances_*.json"))
    if not found:
        raise DataError(f"no instances_*.json in {given} or {given / 'annotations'} (coco: needs COCO instance annotations)")
    return found


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read COCO JSON {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"COCO JSON {path} is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"COCO JSON {path} has no '{key}' list")
    if not data["categories"]:
        raise DataError(f"COCO JSON {path} has no categories")
    return data


def _find_image(file_name: str, split_name: str, bases: Sequence[Path]) -> Path | None:
    for base in bases:
        for cand in (
            base / file_name,
            base / "images" / split_name / file_name,
            base / split_name / file_name,
            base / "images" / file_name,
        ):
            if cand.is_file():
                return cand
    return None


def open_coco(
    path: str | Path,
    split: str = "test",
    size: int | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    split_seed: int | None = None,
) -> RecordDataset:
    """Open COCO instance annotations; see the module docstring."""
    split, size, limit, on_error = check_open_args(split, size, limit, on_error)
    given = expand(path)
    if not given.exists():
        raise DataError(f"COCO path not found: {given}")
    json_files = _json_files(given)
    root = given if given.is_dir() else (given.parent.parent if given.parent.name == "annotations" else given.parent)

    categories: list[tuple[int, str]] | None = None
    problems_here: list[tuple[str, str]] = []
    problems_elsewhere: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    candidates: list[Record] = []
    for jpath in json_files:
        data = _load_json(jpath)
        cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DataError(f"{jpath} has different categories from {json_files[0]}; one label space is needed")
        cat_to_label = {cid: k for k, (cid, _) in enumerate(categories)}
        split_name = jpath.stem.split("_", 1)[1] if "_" in jpath.stem else ""
        bases = [jpath.parent, jpath.parent.parent, given if given.is_dir() else jpath.parent]
        by_image: dict[int, list[dict[str, Any]]] = {}
        image_ids = {int(im["id"]) for im in data["images"] if "id" in im}
        for ann in data["annotations"]:
            where = f"{jpath.name} annotation {ann.get('id', '?')}"
            img_id, cat_id = ann.get("image_id"), ann.get("category_id")
            if img_id not in image_ids:
                problems_here.append((str(jpath), f"{where}: image_id {img_id} is not in 'images'"))
            elif cat_id not in cat_to_label:
                problems_here.append((str(jpath), f"{where}: category_id {cat_id} is not in 'categories'"))
            elif "segmentation" not in ann or "bbox" not in ann:
                problems_here.append((str(jpath), f"{where}: no segmentation or bbox"))
            else:
                by_image.setdefault(int(img_id), []).append(ann)
        for entry in data["images"]:
            where = f"{jpath.name} image id {entry.get('id', '?')}"
            file_name = str(entry.get("file_name", ""))
            try:
                width, height = int(entry["width"]), int(entry["height"])
                img_id = int(entry["id"])
            except (KeyError, TypeError, ValueError):
                problems_here.append((str(jpath), f"{where}: needs integer id, width and height"))
                continue
            image = _find_image(file_name, split_name, bases)
            shown = image if image is not None else bases[0] / file_name
            rec_id = relative_id(shown, root) if image is not None else (
                f"{split_name}/{Path(file_name).stem}" if split_name else Path(file_name).stem
            )
            here = split == "all" or assign_split(rec_id, seed=split_seed) == split
            problems = problems_here if here else problems_elsewhere
            if image is None:
                tried = ", ".join(str(b) for b in dict.fromkeys(bases))
                problems.append((file_name, f"{where}: image file not found: {file_name} (looked under {tried})"))
                continue
            if not here:
                continue
            anns = by_image.get(img_id, [])
            if not anns:
                skipped.append((str(image), f"{where}: no annotations"))
                continue
            area = np.zeros(len(categories), dtype=np.float64)
            for ann in anns:
                a = ann.get("area")
                if a is None:
                    bw, bh = float(ann["bbox"][2]), float(ann["bbox"][3])
                    a = bw * bh
                area[cat_to_label[ann["category_id"]]] += float(a)
            label = int(np.argmax(area))  # first maximum: ties go to the lowest category id
            mine = [ann for ann in anns if cat_to_label[ann["category_id"]] == label]
            try:
                xywh = np.asarray([[float(v) for v in ann["bbox"]] for ann in mine], dtype=np.float64).reshape(-1, 4)
            except (TypeError, ValueError):
                problems.append((str(image), f"{where}: a bbox is not four numbers"))
                continue
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            mask = CocoSegmentation(jpath, tuple((int(a.get("id", -1)), a["segmentation"]) for a in mine), height, width)
            candidates.append(
                Record(id=rec_id, image=image, label=label, where=where, mask=mask, boxes=boxes, size=(width, height))
            )
    assert categories is not None
    if on_error == "raise":
        raise_problems([m for _, m in problems_here + problems_elsewhere], json_files[0] if len(json_files) == 1 else given)
    skipped.extend(problems_here)
    records = select_records(candidates, limit=limit, on_error=on_error, skipped=skipped)
    if not records:
        raise empty_error(given, split, skipped, what="annotated images")
    names = [n for _, n in categories]
    return RecordDataset(
        name=f"coco:{root.name}",
        root=root,
        records=records,
        class_names=names,
        label_space="coco" if names == list(COCO_CLASSES) else "custom",
        split=split,
        size=size,
        skipped=skipped,
    )
