"""``folder:PATH`` — images listed in a ``manifest.csv``.

Manifest columns (names are matched case-insensitively; the first alias present wins):

=============  =======================================================  ==========================
meaning        aliases                                                  notes
=============  =======================================================  ==========================
image          image, image_path, path, file, filename, file_name       relative to the folder or
                                                                        to its ``images/``
label          label, label_id, class_id, class_index, target           integer
class name     class_name, class, category, category_name               checked against ``label``
mask           mask, mask_path, mask_file, segmentation_mask            PNG, non-zero = object
boxes          boxes, boxes_xyxy, bbox_xyxy, boxes_xyxy_resized          ``x0 y0 x1 y1;...`` in
                                                                        pixels of the image file
size           width, height                                            checked against the file
split          split                                                    used only when every value
                                                                        is train/val/test
semantic mask  semantic_mask                                            per-pixel category ids
=============  =======================================================  ==========================

Label space: a ``classes.txt`` (one name per line) or ``synset_words.txt`` (``wnid name, alias``
per line, ImageNet's file) next to the manifest fixes ``class_names`` and the label range;
otherwise the names come from the ``class_name`` column (or are ``"0" .. "N-1"``). A class list of
the 1000 ImageNet synsets gives ``label_space == "imagenet"``. So
``folder:../shared/data/imagenet-val-dev`` gives 300 images with torchvision ImageNet labels and
boxes (``boxes_xyxy_resized``: the files are 227x227), masks = union of the boxes.

Semantic manifests (no label column but ``semantic_mask``, as in ``coco128/manifest.csv``): the
mask PNG holds COCO category ids (0 = unlabeled); the category list comes from a COCO JSON in the
folder (``instances_*.json`` first, else any JSON with ``categories``; only ``isthing`` categories
when flagged). Label = the thing category with the most pixels (ties: lowest id), mask = its
pixels, no boxes. Rows without a semantic mask, or with no thing pixel, are left out and listed in
``dataset.skipped``. For coco128 this gives COCO-80 labels for both halves (train2017 and val2017)
of the 200 images that have panoptic-derived masks.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from sycam.data._io import (
    BinaryMaskFile,
    DataError,
    IndexMaskFile,
    Record,
    RecordDataset,
    assign_split,
    check_open_args,
    empty_error,
    expand,
    parse_boxes,
    raise_problems,
    read_index_mask,
    relative_id,
    select_records,
)

IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name")
LABEL_COLUMNS = ("label", "label_id", "class_id", "class_index", "target")
NAME_COLUMNS = ("class_name", "class", "category", "category_name")
MASK_COLUMNS = ("mask", "mask_path", "mask_file", "segmentation_mask")
# not boxes_xyxy_orig: those are in pixels of the original (pre-scaling) image, not of the file
BOX_COLUMNS = ("boxes", "boxes_xyxy", "bbox_xyxy", "boxes_xyxy_resized")
SEMANTIC_COLUMNS = ("semantic_mask",)
CLASS_FILES = ("classes.txt", "synset_words.txt")


def _find_column(header: Sequence[str], aliases: Sequence[str]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    return None


def read_class_file(path: Path) -> tuple[list[str], list[list[str]], list[str] | None]:
    """Read ``classes.txt`` or ``synset_words.txt``.

    Returns ``(names, aliases, wnids)``: ``names[i]`` is the first name of class ``i``,
    ``aliases[i]`` all its comma-separated names, ``wnids`` the WordNet ids (synset files only).
    """
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"class list {path} is empty")
    synset = all(len(ln) > 10 and ln[0] == "n" and ln[1:9].isdigit() and ln[9] == " " for ln in lines)
    wnids: list[str] | None = [ln[:9] for ln in lines] if synset else None
    texts = [ln[10:] for ln in lines] if synset else lines
    aliases = [[a.strip() for a in t.split(",") if a.strip()] or [t] for t in texts] if synset else [[t] for t in texts]
    names = [a[0] for a in aliases]
    return names, aliases, wnids


def _parse_int(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not np.isfinite(value) or value != int(value):
        return None
    return int(value)


def _coco_thing_categories(root: Path) -> tuple[Path, list[int], list[str]]:
    """Category ids and names of the thing classes, from a COCO JSON in ``root``."""
    candidates = sorted(root.glob("instances_*.json")) + sorted(
        p for p in root.glob("*.json") if not p.name.startswith("instances_")
    )
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read COCO categories from {path}: {exc}") from exc
        cats = data.get("categories") if isinstance(data, dict) else None
        if not cats:
            continue
        things = [c for c in cats if c.get("isthing", 1) == 1]
        things.sort(key=lambda c: int(c["id"]))
        return path, [int(c["id"]) for c in things], [str(c["name"]) for c in things]
    raise DataError(
        f"{root}: the manifest has a semantic_mask column but no label column, and no COCO JSON with "
        "'categories' was found next to it to name the mask values"
    )


def open_folder(
    path: str | Path,
    split: str = "test",
    size: int | None = None,
    limit: int | None = None,
    on_error: str = "raise",
    split_seed: int | None = None,
) -> RecordDataset:
    """Open a folder with a ``manifest.csv`` (or the CSV itself); see the module docstring."""
    from sycam.data.coco import COCO_CLASSES
    from sycam.data.voc import VOC_CLASSES

    split, size, limit, on_error = check_open_args(split, size, limit, on_error)
    root = expand(path)
    if root.suffix.lower() == ".csv":
        manifest, root = root, root.parent
    else:
        manifest = root / "manifest.csv"
    if not root.exists():
        raise DataError(f"dataset folder not found: {root}")
    if not manifest.is_file():
        raise DataError(f"no manifest.csv in {root} (folder datasets list their images in manifest.csv)")
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not header or not rows:
        raise DataError(f"manifest {manifest} is empty (no header or no rows)")

    col_image = _find_column(header, IMAGE_COLUMNS)
    col_label = _find_column(header, LABEL_COLUMNS)
    col_name = _find_column(header, NAME_COLUMNS)
    col_mask = _find_column(header, MASK_COLUMNS)
    col_boxes = _find_column(header, BOX_COLUMNS)
    col_sem = _find_column(header, SEMANTIC_COLUMNS)
    col_w, col_h = _find_column(header, ("width",)), _find_column(header, ("height",))
    col_split = _find_column(header, ("split",))
    col_wnid = _find_column(header, ("wnid",))
    if col_image is None:
        raise DataError(f"manifest {manifest} has no image column (one of {', '.join(IMAGE_COLUMNS)}); columns: {header}")
    semantic = col_label is None and col_name is None
    if semantic and col_sem is None:
        raise DataError(
            f"manifest {manifest} has no label column (one of {', '.join(LABEL_COLUMNS)}) and no class name "
            f"column (one of {', '.join(NAME_COLUMNS)}), nor a semantic_mask column; columns: {header}"
        )

    class_file = next((root / f for f in CLASS_FILES if (root / f).is_file()), None)
    names: list[str] | None = None
    aliases: list[list[str]] | None = None
    wnids: list[str] | None = None
    if class_file is not None and not semantic:
        names, aliases, wnids = read_class_file(class_file)

    use_split_column = col_split is not None and all(r.get(col_split, "").strip() in ("train", "val", "test") for r in rows)

    problems_here: list[tuple[str, str]] = []  # (file, message) for rows of the requested split
    problems_elsewhere: list[tuple[str, str]] = []
    problems = problems_here
    candidates: list[tuple[Record, str]] = []  # (record, split)
    labels_seen: dict[int, str] = {}
    pending_names: list[tuple[int, str]] = []  # (row index in candidates, class name) without label
    for i, row in enumerate(rows):
        where = f"{manifest.name} line {i + 2}"
        rel = (row.get(col_image) or "").strip()
        if not rel:
            problems.append((where, f"{where}: empty image path"))
            continue
        found_image = _resolve(root, rel)
        image = found_image if found_image is not None else root / rel
        rec_id = relative_id(image, root)
        rec_split = row[col_split].strip() if use_split_column and col_split else assign_split(rec_id, seed=split_seed)
        if split != "all" and rec_split != split:
            # other splits are still validated (the manifest is checked as a whole) but not recorded
            problems = problems_elsewhere
        else:
            problems = problems_here
        if found_image is None:
            problems.append((str(image), f"{where}: image file not found: {image}"))
            continue
        label = -1
        pending: str | None = None
        name_text = (row.get(col_name) or "").strip() if col_name else ""
        if col_label is not None:
            text = (row.get(col_label) or "").strip()
            parsed = _parse_int(text)
            if parsed is None:
                problems.append((str(image), f"{where} ({image.name}): label {text!r} is not an integer"))
                continue
            label = parsed
            if label < 0 or (names is not None and label >= len(names)):
                bound = f"[0, {len(names)}) ({class_file.name})" if names is not None and class_file else "[0, ...)"
                problems.append((str(image), f"{where} ({image.name}): label {label} out of range {bound}"))
                continue
            if name_text:
                if aliases is not None:
                    if not _name_matches(name_text, aliases[label]):
                        problems.append((
                            str(image),
                            f"{where} ({image.name}): class_name {name_text!r} does not match label {label} "
                            f"({names[label]!r} in {class_file.name if class_file else 'class list'})",
                        ))
                        continue
                elif labels_seen.setdefault(label, name_text) != name_text:
                    problems.append((
                        str(image),
                        f"{where} ({image.name}): label {label} is named {name_text!r} here but "
                        f"{labels_seen[label]!r} in an earlier row",
                    ))
                    continue
            if wnids is not None and col_wnid is not None:
                wnid = (row.get(col_wnid) or "").strip()
                if wnid and wnid != wnids[label]:
                    problems.append((str(image), f"{where} ({image.name}): wnid {wnid} does not match label {label} ({wnids[label]})"))
                    continue
        elif not semantic:
            if not name_text:
                problems.append((str(image), f"{where} ({image.name}): empty class_name"))
                continue
            if aliases is not None:
                found = next((k for k, al in enumerate(aliases) if _name_matches(name_text, al)), None)
                if found is None:
                    problems.append((str(image), f"{where} ({image.name}): class_name {name_text!r} is not in {class_file}"))
                    continue
                label = found
            else:
                pending = name_text  # indexed once every name is known

        mask = None
        mask_text = (row.get(col_mask) or "").strip() if col_mask else ""
        if semantic:
            sem_text = (row.get(col_sem) or "").strip() if col_sem else ""
            if sem_text:
                sem_path = root / sem_text
                if not sem_path.is_file():
                    problems.append((str(image), f"{where} ({image.name}): semantic mask file not found: {sem_path}"))
                    continue
                mask = IndexMaskFile(sem_path, ())  # values filled in once the label is known
        elif mask_text:
            mask_path = root / mask_text
            if not mask_path.is_file():
                problems.append((str(image), f"{where} ({image.name}): mask file not found: {mask_path}"))
                continue
            mask = BinaryMaskFile(mask_path)
        boxes = None
        if col_boxes is not None:
            text = (row.get(col_boxes) or "").strip()
            if text:
                try:
                    boxes = parse_boxes(text, f"{where} ({image.name})")
                except DataError as exc:
                    problems.append((str(image), str(exc)))
                    continue
        size_wh = None
        if col_w is not None and col_h is not None:
            w, h = _parse_int((row.get(col_w) or "").strip()), _parse_int((row.get(col_h) or "").strip())
            if w is not None and h is not None and w > 0 and h > 0:
                size_wh = (w, h)
        if pending is not None:
            pending_names.append((len(candidates), pending))
        candidates.append((Record(id=rec_id, image=image, label=label, where=where, mask=mask, boxes=boxes, size=size_wh), rec_split))

    if on_error == "raise":
        raise_problems([m for _, m in problems_here + problems_elsewhere], manifest)
    skipped: list[tuple[str, str]] = list(problems_here)

    label_space = "custom"
    if semantic:
        _, cat_ids, class_names = _coco_thing_categories(root)
        id_to_label = {cid: k for k, cid in enumerate(cat_ids)}
        label_space = "coco" if class_names == list(COCO_CLASSES) else "custom"
    elif names is not None:
        class_names = list(names)
        label_space = "imagenet" if wnids is not None and len(names) == 1000 else "custom"
    elif col_label is not None:
        top = max((r.label for r, _ in candidates), default=-1)
        class_names = [labels_seen.get(k, str(k)) for k in range(top + 1)]
    else:
        class_names = sorted({n for _, n in pending_names})
        index = {n: k for k, n in enumerate(class_names)}
        for pos, n in pending_names:
            candidates[pos][0].label = index[n]
    if label_space == "custom" and class_names == list(VOC_CLASSES):
        label_space = "voc"
    elif label_space == "custom" and class_names == list(COCO_CLASSES):
        label_space = "coco"

    def prepare(rec: Record) -> Record | None:
        if not semantic:
            return rec
        if rec.mask is None:
            skipped.append((str(rec.image), f"{rec.where}: no semantic mask (no ground truth for this image)"))
            return None
        values = read_index_mask(rec.mask.path)
        counts = np.bincount(values.ravel(), minlength=1)
        best, best_count = -1, 0
        for cid in cat_ids:  # ascending ids: ties go to the lowest id
            c = int(counts[cid]) if cid < counts.size else 0
            if c > best_count:
                best, best_count = cid, c
        if best < 0:
            skipped.append((str(rec.image), f"{rec.where}: no pixel of any thing category in {rec.mask.path}"))
            return None
        rec.label = id_to_label[best]
        rec.mask = IndexMaskFile(rec.mask.path, (best,))
        return rec

    chosen = (r for r, s in candidates if split == "all" or s == split)
    records = select_records(chosen, limit=limit, on_error=on_error, skipped=skipped, prepare=prepare)
    if not records:
        raise empty_error(root, split, skipped)
    return RecordDataset(
        name=f"folder:{root.name}",
        root=root,
        records=records,
        class_names=class_names,
        label_space=label_space,
        split=split,
        size=size,
        skipped=skipped,
    )


def _name_matches(text: str, aliases: Sequence[str]) -> bool:
    """Whether a manifest class name names a class: one of its aliases, or all of them comma-joined."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    lowered = [a.lower() for a in aliases]
    return parts == lowered or (len(parts) == 1 and parts[0] in lowered)


def _resolve(root: Path, rel: str) -> Path | None:
    """The image file for a manifest entry: absolute, relative to the folder, or to ``images/``."""
    p = Path(rel)
    for cand in ([p] if p.is_absolute() else [root / p, root / "images" / p]):
        if cand.is_file():
            return cand
    return None

