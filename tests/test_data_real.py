"""Real datasets (folder, COCO, VOC), splits, bad-data errors and target selection.

Synthetic datasets are written to tmp_path with hand-computable contents; the shared ImageNet and
coco128 folders are checked where present (skipped with a reason otherwise).
"""
from __future__ import annotations

import csv
import io
import json
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sycam.data import DataError, collate, open_dataset
from sycam.data._io import assign_split, boxes_to_mask, parse_boxes, unit_hash
from sycam.data.coco import COCO_CLASSES, polygons_to_mask, rle_string_to_counts, rle_to_mask
from sycam.data.targets import imagenet_group, resolve_targets, unmappable_classes
from sycam.data.voc import VOC_CLASSES

from conftest import COCO128, IMAGENET_DEV, need

# --------------------------------------------------------------------------- helpers


def rgb(path: Path, colour: tuple[int, int, int], w: int = 16, h: int = 16, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, format=fmt)
    return path


def png(path: Path, arr: np.ndarray, palette: bool = False) -> Path:
    """Write a uint8 array as a grayscale PNG, or as a palette (P) PNG whose indices are the values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    if palette:
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])  # L -> P, same indices
    im.save(path, format="PNG")
    return path


def write_manifest(root: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = header or list(rows[0])
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return root / "manifest.csv"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three 16x16 images: red with a left-half mask, green with two boxes, blue with nothing."""
    root = tmp_path / "ds"
    rgb(root / "images" / "a.png", (255, 0, 0))
    rgb(root / "images" / "b.png", (0, 255, 0))
    rgb(root / "c.png", (0, 0, 255))
    left = np.zeros((16, 16), np.uint8)
    left[:, :8] = 255
    png(root / "masks" / "a.png", left)
    write_manifest(
        root,
        [
            {"image": "a.png", "label": "0", "class_name": "red", "mask": "masks/a.png", "boxes": ""},
            {"image": "b.png", "label": "1", "class_name": "green", "mask": "", "boxes": "0 0 8 4;12 12 16 16"},
            {"image": "c.png", "label": "2", "class_name": "blue", "mask": "", "boxes": ""},
        ],
    )
    return root


# --------------------------------------------------------------------------- folder


def test_folder_samples_exact(folder: Path) -> None:
    ds = open_dataset(f"folder:{folder}", split="all", size=8)
    assert len(ds) == 3 and ds.num_classes == 3 and ds.class_names == ["red", "green", "blue"]
    assert ds.label_space == "custom" and ds.skipped == []
    a, b, c = ds[0], ds[1], ds[2]
    assert a.id == "a" and b.id == "b" and c.id == "c"  # leading images/ dropped
    assert a.image.shape == (3, 8, 8) and a.image.dtype == torch.float32
    assert torch.equal(a.image[0], torch.ones(8, 8)) and torch.equal(a.image[1:], torch.zeros(2, 8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, :4] = True
    assert a.mask is not None and torch.equal(a.mask, expected)
    assert a.boxes is None
    # boxes scale by 8/16 and become the mask: [0,0,4,2] and [6,6,8,8]
    assert b.boxes is not None and torch.allclose(b.boxes, torch.tensor([[0, 0, 4, 2], [6, 6, 8, 8.0]]))
    mb = torch.zeros(8, 8, dtype=torch.bool)
    mb[0:2, 0:4] = True
    mb[6:8, 6:8] = True
    assert b.mask is not None and torch.equal(b.mask, mb)
    assert c.mask is None and c.boxes is None
    assert [s.label for s in (a, b, c)] == [0, 1, 2] and ds.labels == [0, 1, 2]
    batch = collate([a, b])
    assert batch.images.shape == (2, 3, 8, 8) and batch.masks is not None and batch.labels.tolist() == [0, 1]
    assert ds[-1].id == "c"
    with pytest.raises(IndexError, match="index 3 out of range for 3"):
        ds[3]


def test_folder_default_size_and_limit(folder: Path) -> None:
    ds = open_dataset(f"folder:{folder}", split="all", limit=2)
    assert len(ds) == 2 and ds[0].image.shape == (3, 224, 224)


def test_folder_pickles_for_dataloader_workers(folder: Path) -> None:
    ds = open_dataset(f"folder:{folder}", split="all", size=8)
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again[1].mask, ds[1].mask) and torch.equal(again[0].image, ds[0].image)


def test_folder_class_names_only_and_class_file(tmp_path: Path) -> None:
    root = tmp_path / "n"
    for name in ("x", "y", "z"):
        rgb(root / f"{name}.png", (1, 2, 3))
    write_manifest(root, [{"image": "x.png", "class": "dog"}, {"image": "y.png", "class": "cat"}, {"image": "z.png", "class": "dog"}])
    ds = open_dataset(f"folder:{root}", split="all", size=4)
    assert ds.class_names == ["cat", "dog"] and ds.labels == [1, 0, 1]
    (root / "classes.txt").write_text("bird\ndog\ncat\n")
    ds = open_dataset(f"folder:{root}", split="all", size=4)
    assert ds.class_names == ["bird", "dog", "cat"] and ds.labels == [1, 2, 1]
    # a bad row in the middle leaves the other rows' names where they were
    (root / "classes.txt").unlink()
    write_manifest(root, [
        {"image": "x.png", "class": "emu", "mask": ""},
        {"image": "y.png", "class": "cat", "mask": "missing.png"},
        {"image": "z.png", "class": "dog", "mask": ""},
    ])
    ds = open_dataset(f"folder:{root}", split="all", size=4, on_error="skip")
    assert ds.ids == ["x", "z"] and ds.class_names == ["dog", "emu"] and ds.labels == [1, 0]


def test_folder_mode_conversion(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    root.mkdir()
    Image.new("L", (4, 4), 128).save(root / "gray.png")
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(root / "rgba.png")  # alpha dropped, colour kept
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(root / "g16.png")  # 16-bit gray
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(root / "pal.png")
    write_manifest(root, [{"image": f, "label": "0"} for f in ("gray.png", "rgba.png", "g16.png", "pal.png")])
    ds = open_dataset(f"folder:{root}", split="all", size=4)
    assert torch.allclose(ds[0].image, torch.full((3, 4, 4), 128 / 255))
    assert torch.allclose(ds[1].image[:, 0, 0], torch.tensor([10, 20, 30]) / 255)
    assert torch.allclose(ds[2].image, torch.ones(3, 4, 4))
    assert torch.allclose(ds[3].image[:, 2, 2], torch.tensor([200, 100, 50]) / 255)


def test_split_is_a_deterministic_partition(tmp_path: Path) -> None:
    root = tmp_path / "many"
    rgb(root / "one.png", (5, 5, 5), 4, 4)
    rows = []
    for i in range(200):
        (root / f"im{i:03d}.png").write_bytes((root / "one.png").read_bytes())
        rows.append({"image": f"im{i:03d}.png", "label": str(i % 3)})
    write_manifest(root, rows)
    parts = {s: open_dataset(f"folder:{root}", split=s, size=4).ids for s in ("train", "val", "test")}
    everything = open_dataset(f"folder:{root}", split="all", size=4).ids
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(everything) and len(everything) == 200
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["val"]) & set(parts["test"])
    assert 100 <= len(parts["train"]) <= 140 and 25 <= len(parts["val"]) <= 55  # 60/20/20 of 200
    for s, ids in parts.items():
        assert all(assign_split(i) == s for i in ids)
    # the hash is sha256, not Python's salted hash
    assert unit_hash("im000") == int.from_bytes(__import__("hashlib").sha256(b"im000").digest()[:8], "big") / 2**64


def test_split_column_is_used_when_it_names_our_splits(folder: Path) -> None:
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    for r, s in zip(rows, ("test", "train", "test")):
        r["split"] = s
    write_manifest(folder, rows)
    assert open_dataset(f"folder:{folder}", split="test", size=4).ids == ["a", "c"]
    assert open_dataset(f"folder:{folder}", split="train", size=4).ids == ["b"]


# --------------------------------------------------------------------------- bad data


def test_missing_image_names_file_and_row(folder: Path) -> None:
    (folder / "c.png").unlink()
    with pytest.raises(DataError, match=r"manifest.csv line 4: image file not found: .*c\.png"):
        open_dataset(f"folder:{folder}", split="all", size=8)
    ds = open_dataset(f"folder:{folder}", split="all", size=8, on_error="skip")
    assert ds.ids == ["a", "b"] and len(ds.skipped) == 1 and ds.skipped[0][0].endswith("c.png")


def test_missing_mask_names_file_and_row(folder: Path) -> None:
    (folder / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match=r"manifest.csv line 2 \(a.png\): mask file not found: .*masks/a\.png"):
        open_dataset(f"folder:{folder}", split="all", size=8)


def test_corrupt_image_raises_or_is_skipped(folder: Path) -> None:
    (folder / "images" / "b.png").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"cannot read image .*images/b\.png"):
        open_dataset(f"folder:{folder}", split="all", size=8)
    ds = open_dataset(f"folder:{folder}", split="all", size=8, on_error="skip")
    assert ds.ids == ["a", "c"]
    assert ds.skipped[0][0].endswith("b.png") and "b.png" in ds.skipped[0][1]


def test_truncated_image_fails_lazily_naming_file_or_is_skipped(folder: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    (folder / "c.png").unlink()
    (folder / "c.jpg").write_bytes(data[: len(data) // 2])  # header intact, body cut
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    rows[2]["image"] = "c.jpg"
    write_manifest(folder, rows)
    ds = open_dataset(f"folder:{folder}", split="all", size=8)  # headers are fine
    assert len(ds) == 3
    with pytest.raises(DataError, match=r"cannot decode image .*c\.jpg"):
        ds[2]
    ds = open_dataset(f"folder:{folder}", split="all", size=8, on_error="skip")
    assert ds.ids == ["a", "b"] and ds.skipped[0][0].endswith("c.jpg")


def test_mask_of_wrong_size_names_both_files_and_sizes(folder: Path) -> None:
    png(folder / "masks" / "a.png", np.zeros((6, 10), np.uint8))
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{folder}", split="all", size=8)
    msg = str(err.value)
    assert "masks/a.png is 10x6" in msg and "images/a.png is 16x16" in msg and "line 2" in msg
    ds = open_dataset(f"folder:{folder}", split="all", size=8, on_error="skip")
    assert ds.ids == ["b", "c"]


def test_empty_mask_is_allowed(folder: Path) -> None:
    png(folder / "masks" / "a.png", np.zeros((16, 16), np.uint8))
    ds = open_dataset(f"folder:{folder}", split="all", size=8)
    m = ds[0].mask
    assert m is not None and m.shape == (8, 8) and not m.any()


def test_label_out_of_range_names_file_and_row(folder: Path) -> None:
    (folder / "classes.txt").write_text("red\ngreen\n")  # two classes, the third row says 2
    with pytest.raises(DataError, match=r"manifest.csv line 4 \(c.png\): label 2 out of range \[0, 2\) \(classes.txt\)"):
        open_dataset(f"folder:{folder}", split="all", size=8)
    ds = open_dataset(f"folder:{folder}", split="all", size=8, on_error="skip")
    assert ds.ids == ["a", "b"] and "label 2 out of range" in ds.skipped[0][1]


def test_negative_or_non_integer_labels(folder: Path) -> None:
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    rows[0]["label"] = "-1"
    rows[1]["label"] = "one"
    write_manifest(folder, rows)
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{folder}", split="all", size=8)
    assert "2 problem(s)" in str(err.value) and "line 2 (a.png): label -1 out of range" in str(err.value)
    assert "line 3 (b.png): label 'one' is not an integer" in str(err.value)


def test_class_name_must_agree_with_label(folder: Path) -> None:
    (folder / "classes.txt").write_text("red\ngreen\nblue\n")
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    rows[1]["class_name"] = "blue"
    write_manifest(folder, rows)
    with pytest.raises(DataError, match=r"line 3 \(b.png\): class_name 'blue' does not match label 1 \('green'"):
        open_dataset(f"folder:{folder}", split="all", size=8)


def test_bad_boxes(folder: Path) -> None:
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    rows[1]["boxes"] = "0 0 8"
    write_manifest(folder, rows)
    with pytest.raises(DataError, match=r"line 3 \(b.png\): box '0 0 8' is not four"):
        open_dataset(f"folder:{folder}", split="all", size=8)
    rows[1]["boxes"] = "0 0 30 4"
    write_manifest(folder, rows)
    with pytest.raises(DataError, match=r"line 3 \(b.png\).*box '0 0 30 4' lies outside the 16x16 image"):
        open_dataset(f"folder:{folder}", split="all", size=8)


def test_empty_dataset_names_path(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "manifest.csv").write_text("image,label\n")
    with pytest.raises(DataError, match=re.escape(f"manifest {root}/manifest.csv is empty")):
        open_dataset(f"folder:{root}")
    with pytest.raises(DataError, match=re.escape(f"dataset folder not found: {root / 'nothing'}")):
        open_dataset(f"folder:{root / 'nothing'}")
    rgb(root / "x.png", (0, 0, 0))
    write_manifest(root, [{"image": "x.png", "label": "0"}])
    other = next(s for s in ("train", "val", "test") if s != assign_split("x"))
    with pytest.raises(DataError, match=re.escape(f"no images for split '{other}' in {root}")):
        open_dataset(f"folder:{root}", split=other)


def test_manifest_without_image_or_label_column(tmp_path: Path) -> None:
    write_manifest(tmp_path, [{"picture": "x.png", "label": "0"}])
    with pytest.raises(DataError, match="has no image column"):
        open_dataset(f"folder:{tmp_path}")
    write_manifest(tmp_path, [{"image": "x.png", "foo": "0"}])
    with pytest.raises(DataError, match="has no label column"):
        open_dataset(f"folder:{tmp_path}")


def test_spec_and_argument_validation(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset spec 'imagenet:x'; expected one of builtin, folder:PATH, coco:PATH, voc:PATH"):
        open_dataset("imagenet:x")
    with pytest.raises(ValueError, match="did you mean 'folder:"):
        open_dataset(str(folder))
    with pytest.raises(ValueError, match="has no path after 'coco:'"):
        open_dataset("coco:")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        open_dataset(f"folder:{folder}", split="dev")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        open_dataset(f"folder:{folder}", size=0)
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        open_dataset(f"folder:{folder}", on_error="ignore")
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        open_dataset(f"folder:{folder}", limit=0)


def test_builtin_is_dispatched_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    class Fake:
        def __init__(self, **kwargs: object) -> None:
            calls.append(kwargs)

    monkeypatch.setitem(sys.modules, "sycam.data.builtin", types.SimpleNamespace(BuiltinBenchmark=Fake))
    assert isinstance(open_dataset("builtin"), Fake)
    open_dataset("builtin", split="train", size=32, limit=10)
    assert calls == [{"split": "test"}, {"split": "train", "size": 32, "n": 10}]


# --------------------------------------------------------------------------- semantic folder


def test_semantic_manifest_labels_from_mask(tmp_path: Path) -> None:
    root = tmp_path / "sem"
    cats = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1}, {"id": 150, "name": "sky", "isthing": 0}]
    (root).mkdir()
    (root / "panoptic_x.json").write_text(json.dumps({"categories": cats}))
    m1 = np.zeros((8, 8), np.uint8)
    m1[:2] = 150  # 16 px of stuff (ignored)
    m1[2:4, :3] = 1  # 6 px person
    m1[5:8, :4] = 3  # 12 px car -> label car (index 1)
    m2 = np.full((8, 8), 150, np.uint8)  # stuff only -> left out
    png(root / "s1.png", m1)
    png(root / "s2.png", m2)
    rgb(root / "i1.png", (9, 9, 9), 8, 8)
    rgb(root / "i2.png", (9, 9, 9), 8, 8)
    rgb(root / "i3.png", (9, 9, 9), 8, 8)
    write_manifest(root, [
        {"image": "i1.png", "semantic_mask": "s1.png"},
        {"image": "i2.png", "semantic_mask": "s2.png"},
        {"image": "i3.png", "semantic_mask": ""},
    ])
    ds = open_dataset(f"folder:{root}", split="all", size=8)
    assert ds.class_names == ["person", "car"] and ds.labels == [1] and ds.label_space == "custom"
    assert torch.equal(ds[0].mask, torch.from_numpy(m1 == 3))
    reasons = " | ".join(r for _, r in ds.skipped)
    assert "no pixel of any thing category" in reasons and "no semantic mask" in reasons


# --------------------------------------------------------------------------- VOC


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = [f"2007_{i:06d}" for i in range(12)]
    for k, i in enumerate(ids):
        rgb(root / "JPEGImages" / f"{i}.jpg", (100, 100, 100), 10, 8, fmt="JPEG")
        m = np.zeros((8, 10), np.uint8)
        m[0:4, 0:5] = 8  # cat: 15 px once the void row 0 is drawn
        m[4:8, :] = 12 if k % 2 == 0 else 0  # dog: 40 px on even images
        m[0, :] = 255  # void border, never object
        png(root / "SegmentationClass" / f"{i}.png", m, palette=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:4]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[4:]) + "\n")
    (root / "Annotations").mkdir()
    (root / "Annotations" / f"{ids[1]}.xml").write_text(
        "<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5</xmax><ymax>4</ymax></bndbox>"
        "</object><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>8</ymax></bndbox></object></annotation>"
    )
    return tmp_path / "VOCdevkit"


def test_voc_standard_layout(voc: Path) -> None:
    train = open_dataset(f"voc:{voc}", split="train", size=8)
    assert train.class_names == list(VOC_CLASSES) and train.label_space == "voc"
    assert train.ids == [f"2007_{i:06d}" for i in range(4)]
    assert train.labels == [11, 7, 11, 7]  # dog (40 px) beats cat (15 px)
    s = train[1]  # cat image: rows 1..3, cols 0..4 of the 8x10 mask
    expected = np.zeros((8, 10), bool)
    expected[1:4, 0:5] = True
    resized = Image.fromarray(expected.astype(np.uint8) * 255).resize((8, 8), Image.Resampling.NEAREST)
    assert torch.equal(s.mask, torch.from_numpy(np.asarray(resized) > 127))
    # VOC boxes are 1-based inclusive: xmin 1..xmax 5 -> [0, 5); scaled by 8/10 and 8/8
    assert s.boxes is not None and torch.allclose(s.boxes, torch.tensor([[0.0, 1.0, 4.0, 4.0]]))
    val = open_dataset(f"voc:{voc}", split="val", size=8).ids
    test = open_dataset(f"voc:{voc}", split="test", size=8).ids
    assert sorted(val + test) == [f"2007_{i:06d}" for i in range(4, 12)] and not set(val) & set(test)
    assert all(unit_hash(i) < 0.5 for i in val) and all(unit_hash(i) >= 0.5 for i in test)
    assert len(open_dataset(f"voc:{voc}", split="all", size=8)) == 12


def test_voc_without_image_sets_splits_by_hash(voc: Path) -> None:
    import shutil

    shutil.rmtree(voc / "VOC2012" / "ImageSets")
    parts = {sp: open_dataset(f"voc:{voc}", split=sp, size=8).ids for sp in ("train", "val", "test") if any(
        assign_split(f"2007_{i:06d}") == sp for i in range(12))}
    assert sorted(sum(parts.values(), [])) == [f"2007_{i:06d}" for i in range(12)]
    assert all(assign_split(i) == sp for sp, ids in parts.items() for i in ids)


def test_voc_bad_values_and_missing_files(voc: Path) -> None:
    root = voc / "VOC2012"
    png(root / "SegmentationClass" / "2007_000000.png", np.full((8, 10), 37), palette=True)
    with pytest.raises(DataError, match=r"mask .*2007_000000.png has value 37"):
        open_dataset(f"voc:{voc}", split="train", size=8)
    (root / "JPEGImages" / "2007_000002.jpg").unlink()
    ds = open_dataset(f"voc:{voc}", split="train", size=8, on_error="skip")
    assert ds.ids == ["2007_000001", "2007_000003"]
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/train.txt line 3: image file not found: .*2007_000002.jpg"):
        open_dataset(f"voc:{voc}", split="train", size=8)
    with pytest.raises(DataError, match="is not a VOC dataset"):
        open_dataset(f"voc:{root / 'JPEGImages'}")


def test_voc_background_only_image_is_left_out(voc: Path) -> None:
    root = voc / "VOC2012"
    png(root / "SegmentationClass" / "2007_000001.png", np.zeros((8, 10)), palette=True)
    ds = open_dataset(f"voc:{voc}", split="train", size=8)
    assert "2007_000001" not in ds.ids and "no pixel of any VOC class" in ds.skipped[0][1]


# --------------------------------------------------------------------------- COCO decoding


def test_rle_compressed_string_hand_values() -> None:
    # '3','2','4' are single 5-bit groups; 'O' = 31 -> sign bit set -> -1, plus counts[1] = 2 -> 1
    assert rle_string_to_counts("324O") == [3, 2, 4, 1]
    # 'T' = 36: low bits 4, continue; '3' -> 3 << 5 = 96; total 100
    assert rle_string_to_counts("T3") == [100]
    # '`' = 48: value 16 with the continue bit, then '0' ends it (16 needs two groups: bit 0x10 is the sign)
    assert rle_string_to_counts("`0") == [16]
    with pytest.raises(ValueError, match="ends inside a run"):
        rle_string_to_counts("T")


def test_rle_is_column_major() -> None:
    # 2x3 mask, runs down columns: 1 zero, 2 ones, 3 zeros -> column-major [0,1 | 1,0 | 0,0]
    assert rle_to_mask([1, 2, 3], 2, 3).astype(int).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert rle_to_mask("123", 2, 3).astype(int).tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="covers 5 pixels but the mask is 2x3"):
        rle_to_mask([1, 2, 2], 2, 3)


def test_polygon_rasterisation_samples_pixel_centres() -> None:
    # triangle x + y < 4.5: centres (j+.5)+(i+.5) < 4.5 <=> i + j <= 3 -> 4+3+2+1 = 10 pixels
    tri = polygons_to_mask([[0, 0, 4.5, 0, 0, 4.5]], 5, 5)
    assert tri.astype(int).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    # a rectangle polygon equals the same box rasterised as a box
    rect = polygons_to_mask([[1.2, 0.4, 6.6, 0.4, 6.6, 3.7, 1.2, 3.7]], 6, 8)
    assert np.array_equal(rect, boxes_to_mask(torch.tensor([[1.2, 0.4, 6.6, 3.7]]), 8).numpy()[:6, :8])
    assert not polygons_to_mask([[0, 0, 3, 3]], 4, 4).any()  # two points: nothing


def test_boxes_to_mask_is_half_open_at_pixel_centres() -> None:
    # centres are .5, 1.5, 2.5, ...: x in [0.5, 2.5) keeps columns 0 and 1, y in [0.5, 1.5) row 0
    m = boxes_to_mask(torch.tensor([[0.5, 0.5, 2.5, 1.5], [3.0, 3.0, 4.0, 4.0]]), 4)
    assert m.int().tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_parse_boxes() -> None:
    assert parse_boxes("1 2 3 4; 5,6,7,8", "here").tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_boxes("", "here").shape == (0, 4)
    with pytest.raises(DataError, match="here: box '3 0 1 1' has x1 < x0"):
        parse_boxes("3 0 1 1", "here")


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    rgb(root / "images" / "val2017" / "000000000001.jpg", (50, 50, 50), 8, 6, fmt="JPEG")
    rgb(root / "images" / "val2017" / "000000000002.jpg", (50, 50, 50), 8, 6, fmt="JPEG")
    rgb(root / "images" / "val2017" / "000000000003.jpg", (50, 50, 50), 8, 6, fmt="JPEG")
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 8, "height": 6},
            {"id": 2, "file_name": "000000000002.jpg", "width": 8, "height": 6},
            {"id": 3, "file_name": "000000000003.jpg", "width": 8, "height": 6},
        ],
        "categories": [{"id": 9, "name": "kite"}, {"id": 1, "name": "person"}, {"id": 5, "name": "car"}],
        "annotations": [
            # image 1: person polygon (area 6) and two car pieces (4 + 4 = 8) -> car wins
            {"id": 10, "image_id": 1, "category_id": 1, "area": 6.0, "bbox": [0, 0, 3, 2], "iscrowd": 0,
             "segmentation": [[0, 0, 3, 0, 3, 2, 0, 2]]},
            {"id": 11, "image_id": 1, "category_id": 5, "area": 4.0, "bbox": [6, 4, 2, 2], "iscrowd": 1,
             # uncompressed RLE on 6x8: column-major, columns 6 and 7 rows 4..5
             "segmentation": {"size": [6, 8], "counts": [40, 2, 4, 2]}},
            {"id": 12, "image_id": 1, "category_id": 5, "area": 4.0, "bbox": [0, 4, 2, 2], "iscrowd": 1,
             # compressed RLE of [4, 2, 4, 2, 36]: columns 0 and 1 rows 4..5
             "segmentation": {"size": [6, 8], "counts": "4240P1"}},
            {"id": 13, "image_id": 3, "category_id": 9, "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0,
             "segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]]},
        ],
    }
    (root / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_compressed_rle_fixture_string() -> None:
    # [4, 2, 4, 2, 36]: runs 4..5 are stored as differences to two runs back: 2-2 = 0 -> '0',
    # 36-4 = 32 -> low group 0 with the continue bit ('P' = 48+32), then 1 ('1')
    assert rle_string_to_counts("4240P1") == [4, 2, 4, 2, 36]


def test_coco_dataset(coco: Path) -> None:
    ds = open_dataset(f"coco:{coco}", split="all", size=8)
    # categories sorted by id: person(1) car(5) kite(9) -> 0, 1, 2
    assert ds.class_names == ["person", "car", "kite"] and ds.label_space == "custom"
    assert ds.ids == ["val2017/000000000001", "val2017/000000000003"]
    assert ds.labels == [1, 2]
    assert ds.skipped and "image id 2: no annotations" in ds.skipped[0][1]
    s = ds[0]
    expected = np.zeros((6, 8), bool)
    expected[4:6, 6:8] = True
    expected[4:6, 0:2] = True
    resized = Image.fromarray(expected.astype(np.uint8) * 255).resize((8, 8), Image.Resampling.NEAREST)
    assert torch.equal(s.mask, torch.from_numpy(np.asarray(resized) > 127))
    scale = torch.tensor([1.0, 8 / 6, 1.0, 8 / 6])
    assert torch.allclose(s.boxes, torch.tensor([[6, 4, 8, 6.0], [0, 4, 2, 6.0]]) * scale)
    # the JSON file itself is accepted as well
    assert open_dataset(f"coco:{coco / 'instances_val2017.json'}", split="all", size=8).ids == ds.ids


def test_coco_errors(coco: Path) -> None:
    (coco / "images" / "val2017" / "000000000003.jpg").unlink()
    with pytest.raises(DataError, match=r"instances_val2017.json image id 3: image file not found: 000000000003.jpg"):
        open_dataset(f"coco:{coco}", split="all", size=8)
    ds = open_dataset(f"coco:{coco}", split="all", size=8, on_error="skip")
    assert ds.ids == ["val2017/000000000001"]
    data = json.loads((coco / "instances_val2017.json").read_text())
    data["annotations"][1]["segmentation"]["size"] = [5, 8]
    data["images"] = data["images"][:1]
    data["annotations"] = data["annotations"][:3]
    (coco / "instances_val2017.json").write_text(json.dumps(data))
    ds = open_dataset(f"coco:{coco}", split="all", size=8)
    with pytest.raises(DataError, match=r"instances_val2017.json: annotation 11: RLE size \[5, 8\] differs"):
        ds[0]
    (coco / "instances_val2017.json").write_text("{}")
    with pytest.raises(DataError, match=r"COCO JSON .*instances_val2017.json has no 'images' list"):
        open_dataset(f"coco:{coco}")
    with pytest.raises(DataError, match=r"no instances_\*.json in"):
        open_dataset(f"coco:{coco / 'images'}")


def test_coco_image_of_wrong_size_names_both(coco: Path) -> None:
    rgb(coco / "images" / "val2017" / "000000000001.jpg", (50, 50, 50), 9, 6, fmt="JPEG")
    with pytest.raises(DataError, match=r"image .*000000000001.jpg is 9x6 \(WxH\) but instances_val2017.json image id 1 says 8x6"):
        open_dataset(f"coco:{coco}", split="all", size=8)


# --------------------------------------------------------------------------- targets


def test_resolve_targets_modes() -> None:
    logits = torch.full((2, 1000), -5.0)
    logits[0, 300] = 9.0  # a beetle beats everything...
    logits[0, 283] = 2.0  # ...but among the cats (281-285) Persian wins
    logits[0, 281] = 1.0
    logits[1, 207] = 3.0  # golden retriever
    logits[1, 151] = 2.5
    labels = torch.tensor([VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")])
    assert resolve_targets("imagenet", logits, labels, "voc").tolist() == [283, 207]
    assert resolve_targets("pred", logits, labels, "voc").tolist() == [300, 207]
    coco_labels = torch.tensor([COCO_CLASSES.index("cat"), COCO_CLASSES.index("dog")])
    assert resolve_targets("imagenet", logits, coco_labels, "coco").tolist() == [283, 207]
    assert resolve_targets("imagenet", logits, torch.tensor([5, 6]), "imagenet").tolist() == [5, 6]
    assert resolve_targets("label", logits, torch.tensor([5, 6]), "imagenet").tolist() == [5, 6]
    small = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert resolve_targets("label", small, torch.tensor([2, 0]), "custom").tolist() == [2, 0]


def test_resolve_targets_errors() -> None:
    logits = torch.zeros(2, 1000)
    giraffe = COCO_CLASSES.index("giraffe")
    with pytest.raises(ValueError, match=r"coco class\(es\) \['giraffe'\] have no ImageNet-1k counterpart \(images \[1\]"):
        resolve_targets("imagenet", logits, torch.tensor([0, giraffe]), "coco")
    with pytest.raises(ValueError, match="'label' needs a classifier over the dataset's 20 voc classes, but the model has 1000"):
        resolve_targets("label", logits, torch.tensor([0, 1]), "voc")
    with pytest.raises(ValueError, match="needs an ImageNet-1k classifier"):
        resolve_targets("imagenet", torch.zeros(2, 20), torch.tensor([0, 1]), "voc")
    with pytest.raises(ValueError, match="unknown target mode 'gt'"):
        resolve_targets("gt", logits, torch.tensor([0, 1]), "voc")
    with pytest.raises(ValueError, match="label space 'custom' has no mapping"):
        resolve_targets("imagenet", logits, torch.tensor([0, 1]), "custom")
    with pytest.raises(ValueError, match=r"labels must be a \(B,\) tensor"):
        resolve_targets("pred", logits, torch.tensor([0]), "voc")


def test_imagenet_groups_table() -> None:
    for space, names in (("voc", VOC_CLASSES), ("coco", COCO_CLASSES)):
        for k in range(len(names)):
            g = imagenet_group(space, k)
            assert g == sorted(set(g)) and all(0 <= i < 1000 for i in g)
    assert imagenet_group("voc", VOC_CLASSES.index("dog")) == list(range(151, 269))
    assert imagenet_group("voc", VOC_CLASSES.index("cat")) == [281, 282, 283, 284, 285]
    for shared in ("bird", "cat", "dog", "horse", "sheep", "cow", "bus", "train", "boat", "bottle", "chair", "car"):
        assert imagenet_group("voc", VOC_CLASSES.index(shared)) == imagenet_group("coco", COCO_CLASSES.index(shared))
    assert unmappable_classes("voc") == []
    assert {"giraffe", "kite", "fire hydrant"} <= set(unmappable_classes("coco"))
    assert 21 not in imagenet_group("coco", COCO_CLASSES.index("kite"))  # ImageNet's kite is a bird


def test_imagenet_groups_against_synset_words() -> None:
    words = need(IMAGENET_DEV / "synset_words.txt").read_text().splitlines()
    first = [w[10:].split(",")[0] for w in words]

    def names(space: str, cls: str, table: tuple[str, ...]) -> list[str]:
        return [first[i] for i in imagenet_group(space, table.index(cls))]

    assert names("voc", "cow", VOC_CLASSES) == ["ox", "water buffalo", "bison"]
    assert names("voc", "sheep", VOC_CLASSES) == ["ram", "bighorn"]
    assert names("voc", "bus", VOC_CLASSES) == ["minibus", "school bus", "trolleybus"]
    assert names("voc", "tvmonitor", VOC_CLASSES) == ["monitor", "screen", "television"]
    assert names("coco", "elephant", COCO_CLASSES) == ["tusker", "Indian elephant", "African elephant"]
    assert names("coco", "traffic light", COCO_CLASSES) == ["traffic light"]
    assert all("ball" in n or n in ("baseball", "basketball", "volleyball") for n in names("coco", "sports ball", COCO_CLASSES))
    dogs = names("voc", "dog", VOC_CLASSES)
    assert dogs[0] == "Chihuahua" and dogs[-1] == "Mexican hairless"
    birds = names("voc", "bird", VOC_CLASSES)
    assert {"cock", "goldfinch", "bald eagle", "peacock", "toucan", "goose", "flamingo", "albatross", "kite"} <= set(birds)
    assert len(birds) == 59


# --------------------------------------------------------------------------- shared real data


def test_imagenet_dev_folder_loads_as_is() -> None:
    root = need(IMAGENET_DEV)
    ds = open_dataset(f"folder:{root}", split="all", size=224)
    assert len(ds) == 300 and ds.num_classes == 1000 and ds.label_space == "imagenet"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    assert ds.labels == [int(r["label"]) for r in rows]
    assert ds.class_names[int(rows[0]["label"])] == rows[0]["class_name"].split(",")[0]
    s = ds[0]
    # boxes_xyxy_resized are in the 227x227 file's pixels; scaled to 224
    x0, y0, x1, y1 = (float(v) for v in rows[0]["boxes_xyxy_resized"].split(";")[0].split())
    assert s.boxes is not None and torch.allclose(s.boxes[0], torch.tensor([x0, y0, x1, y1]) * 224 / 227, atol=1e-4)
    assert s.mask is not None and torch.equal(s.mask, boxes_to_mask(s.boxes, 224))
    sizes = [len(open_dataset(f"folder:{root}", split=sp, size=32)) for sp in ("train", "val", "test")]
    assert sum(sizes) == 300 and sizes[0] > sizes[1] and sizes[0] > sizes[2]


def test_coco128_three_ways() -> None:
    root = need(COCO128)
    coco = open_dataset(f"coco:{root}", split="all", size=64)
    assert len(coco) == 126 and coco.label_space == "coco" and coco.class_names == list(COCO_CLASSES)
    assert len(coco.skipped) == 2 and all("no annotations" in r for _, r in coco.skipped)
    sem = open_dataset(f"folder:{root}", split="all", size=64)
    assert sem.label_space == "coco" and len(sem) == 198
    voc = open_dataset(f"voc:{root}", split="all", size=64)
    assert voc.label_space == "voc" and len(voc) == 175
    # the same image gets the same id (hence split) and, here, the same label through coco: and folder:
    sem_by_id = {r.id: r for r in sem.records}
    common = [(k, r) for k, r in enumerate(coco.records) if r.id in sem_by_id][:20]
    assert len(common) == 20
    ious = []
    for k, r in common:
        assert r.label == sem_by_id[r.id].label, r.id
        a, b = coco[k].mask, sem[sem.ids.index(r.id)].mask
        ious.append(float((a & b).sum() / (a | b).sum()))
    assert float(np.median(ious)) > 0.95  # polygons vs panoptic-derived masks of the same objects


def test_coco128_rle_annotations_decode_in_column_major() -> None:
    root = need(COCO128)
    data = json.loads((root / "instances_train2017.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    rles = [a for a in data["annotations"] if isinstance(a["segmentation"], dict)]
    assert rles
    for ann in rles:
        m = rle_to_mask(ann["segmentation"]["counts"], *sizes[ann["image_id"]])
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        # COCO's bbox of an RLE is (min x, min y, max x - min x, max y - min y)
        assert (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()) == (x, y, w, h)
