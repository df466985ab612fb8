"""``voc:PATH`` — Pascal VOC segmentation data, labels in VOC's 20 classes.

Two layouts are accepted:

1. The standard VOC2012 folder (``PATH`` may also be ``VOCdevkit`` or its parent): ``JPEGImages/``,
   ``SegmentationClass/*.png`` (palette indices: 0 background, 1..20 the classes of
   :data:`VOC_CLASSES`, 255 void), ``ImageSets/Segmentation/{train,val}.txt`` and optionally
   ``Annotations/*.xml`` (boxes). Splits: ``train`` = ``train.txt``; VOC's ``val.txt`` is split
   by hash into ``val`` and ``test`` (half each, ``sha256(id)``), so the test images are never
   searched on; ``all`` = train + val. Without ``ImageSets`` every mask is split 60/20/20 by hash.
2. A folder whose ``manifest.csv`` has a ``voc_mask`` column of VOC-palette PNGs (coco128's
   ``voc_class/`` masks: COCO images relabelled to the VOC classes). Splits by hash, 60/20/20.
   Rows without a VOC mask are left out and listed in ``dataset.skipped``.

One sample per image: label = the VOC class with the most pixels (ties: lowest index), mask =
that class's pixels (void excluded). Images with no object pixel are left out and listed in
``skipped``. Boxes (layout 1, when ``Annotations/<id>.xml`` exists): the boxes of the objects of
the label's class, converted from VOC's 1-based inclusive pixel indices to ``x0 = xmin - 1``,
``x1 = xmax``.
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from sycam.data._io import (
    DataError,
    IndexMaskFile,
    Record,
    RecordDataset,
    assign_split,
    check_open_args,
    empty_error,
    expand,
    raise_problems,
    read_index_mask,
    relative_id,
    select_records,
    unit_hash,
)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
VOID = 255


def _find_voc_root(root: Path) -> Path | None:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    return None


def dominant_voc_class(values: np.ndarray, path: Path) -> int | None:
    """The VOC class index (0..19) with the most pixels in a palette mask, or ``None`` if none.

    Raises :class:`DataError` naming ``path`` for values other than 0..20 and 255.
    """
    counts = np.bincount(values.ravel(), minlength=256)
    bad = np.flatnonzero(counts[21:VOID])
    if bad.size or counts.size > 256:
        value = int(bad[0]) + 21 if bad.size else int(values.max())
        raise DataError(f"mask {path} has value {value}; VOC masks hold 0 (background), 1-20 (classes), 255 (void)")
    per_class = counts[1:21]
    if per_class.max() == 0:
        return None
    return int(np.argmax(per_class))  # argmax returns the first maximum: ties go to the lowest index


def _read_boxes(xml_path: Path, class_name: str) -> np.ndarray:
    """Boxes of ``class_name`` objects in a VOC annotation XML, as ``(n, 4)`` xyxy pixels."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"cannot parse VOC annotation {xml_path}: {exc}") from exc
    out = []
    for obj in tree.getroot().iter("object"):
        if (obj.findtext("name") or "").strip() != class_name:
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{xml_path}: object {class_name!r} has no bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise DataError(f"{xml_path}: bad bndbox for {class_name!r}: {exc}") from exc
        if not np.isfinite([xmin, ymin, xmax, ymax]).all():
            raise DataError(f"{xml_path}: incomplete bndbox for {class_name!r}")
        out.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _read_id_list(path: Path) -> list[str]:
    ids = [ln.strip().split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not ids:
        raise DataError(f"image list {path} is empty")
    return ids


def open_voc(
    path: str | Path,
    split: str = "test",
    size: int | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    split_seed: int | None = None,
) -> RecordDataset:
    """Open VOC segmentation data (either layout of the module docstring)."""
    split, size, limit, on_error = check_open_args(split, size, limit, on_error)
    given = expand(path)
    if not given.exists():
        raise DataError(f"VOC folder not found: {given}")
    root = _find_voc_root(given)
    skipped: list[tuple[str, str]] = []
    if root is not None:
        candidates, annotations = _standard_candidates(root, split, on_error, skipped, split_seed)
    elif (given / "manifest.csv").is_file():
        root, annotations = given, None
        candidates = _manifest_candidates(given, split, on_error, skipped, split_seed)
    else:
        raise DataError(
            f"{given} is not a VOC dataset: expected JPEGImages/ and SegmentationClass/ (VOC2012 layout), "
            "or a manifest.csv with a voc_mask column"
        )

    def prepare(rec: Record) -> Record | None:
        assert rec.mask is not None
        mask_path = rec.mask.path
        label = dominant_voc_class(read_index_mask(mask_path), mask_path)
        if label is None:
            skipped.append((str(rec.image), f"no pixel of any VOC class in {mask_path}"))
            return None
        rec.label = label
        rec.mask = IndexMaskFile(mask_path, (label + 1,))
        if annotations is not None:
            xml_path = annotations / f"{rec.id}.xml"
            if xml_path.is_file():
                rec.boxes = _read_boxes(xml_path, VOC_CLASSES[label])
        return rec

    records = select_records(candidates, limit=limit, on_error=on_error, skipped=skipped, prepare=prepare)
    if not records:
        raise empty_error(root, split, skipped)
    return RecordDataset(
        name=f"voc:{root.name}",
        root=root,
        records=records,
        class_names=VOC_CLASSES,
        label_space="voc",
        split=split,
        size=size,
        skipped=skipped,
    )


def _standard_candidates(
    root: Path, split: str, on_error: str, skipped: list[tuple[str, str]], split_seed: int | None = None
) -> tuple[list[Record], Path]:
    lists = root / "ImageSets" / "Segmentation"
    train_txt, val_txt = lists / "train.txt", lists / "val.txt"
    entries: list[tuple[str, str, bool]] = []  # (id, where, in the requested split)
    if train_txt.is_file() and val_txt.is_file():
        for k, i in enumerate(_read_id_list(train_txt)):
            entries.append((i, f"{train_txt.relative_to(root)} line {k + 1}", split in ("train", "all")))
        for k, i in enumerate(_read_id_list(val_txt)):
            # VOC's val list halves into our val and test by hash
            ours = "val" if unit_hash(i) < 0.5 else "test"
            entries.append((i, f"{val_txt.relative_to(root)} line {k + 1}", split in (ours, "all")))
    else:
        for p in sorted((root / "SegmentationClass").glob("*.png")):
            entries.append((p.stem, f"SegmentationClass/{p.name}", split in (assign_split(p.stem, seed=split_seed), "all")))
    problems: list[tuple[str, str]] = []  # of the requested split
    elsewhere: list[tuple[str, str]] = []  # every listed file is checked; these are only reported
    out: list[Record] = []
    seen: set[str] = set()
    for image_id, where, here in entries:
        if image_id in seen:
            continue
        seen.add(image_id)
        image = root / "JPEGImages" / f"{image_id}.jpg"
        mask = root / "SegmentationClass" / f"{image_id}.png"
        bucket = problems if here else elsewhere
        if not image.is_file():
            bucket.append((str(image), f"{where}: image file not found: {image}"))
        elif not mask.is_file():
            bucket.append((str(mask), f"{where}: mask file not found: {mask}"))
        elif here:
            out.append(Record(id=image_id, image=image, label=-1, where=where, mask=IndexMaskFile(mask, ())))
    if on_error == "raise":
        raise_problems([m for _, m in problems + elsewhere], root)
    skipped.extend(problems)
    return out, root / "Annotations"


def _manifest_candidates(root: Path, split: str, on_error: str, skipped: list[tuple[str, str]],
                         split_seed: int | None = None) -> list[Record]:
    manifest = root / "manifest.csv"
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        rows = list(reader)
    if not rows:
        raise DataError(f"manifest {manifest} is empty (no header or no rows)")
    if "image" not in header or "voc_mask" not in header:
        raise DataError(f"manifest {manifest} needs 'image' and 'voc_mask' columns for voc:; columns: {header}")
    problems_here: list[tuple[str, str]] = []
    problems_elsewhere: list[tuple[str, str]] = []
    out: list[Record] = []
    for k, raw in enumerate(rows):
        row = {key.strip().lower(): (v or "").strip() for key, v in raw.items() if key}
        where = f"{manifest.name} line {k + 2}"
        if not row["image"]:
            problems_here.append((where, f"{where}: empty image path"))
            continue
        image = root / row["image"]
        rec_id = relative_id(image, root)
        here = split == "all" or assign_split(rec_id, seed=split_seed) == split
        problems = problems_here if here else problems_elsewhere  # every row is validated
        if not image.is_file():
            problems.append((str(image), f"{where}: image file not found: {image}"))
            continue
        if not here:
            if row["voc_mask"] and not (root / row["voc_mask"]).is_file():
                problems.append((row["voc_mask"], f"{where} ({image.name}): mask file not found: {root / row['voc_mask']}"))
            continue
        if not row["voc_mask"]:
            skipped.append((str(image), f"{where}: no voc_mask (no VOC ground truth for this image)"))
            continue
        mask = root / row["voc_mask"]
        if not mask.is_file():
            problems.append((str(mask), f"{where} ({image.name}): mask file not found: {mask}"))
            continue
        w, h = row.get("width", ""), row.get("height", "")
        size_wh = (int(w), int(h)) if w.isdigit() and h.isdigit() else None
        out.append(Record(id=rec_id, image=image, label=-1, where=where, mask=IndexMaskFile(mask, ()), size=size_wh))
    if on_error == "raise":
        raise_problems([m for _, m in problems_here + problems_elsewhere], manifest)
    skipped.extend(problems_here)
    return out
