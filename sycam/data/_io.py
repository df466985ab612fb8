"""Reading helpers shared by the real datasets (folder, COCO, VOC).

Conventions, fixed here so that every dataset behaves the same way:

* Images are returned as float tensors ``(3, S, S)`` in [0, 1]. Files are decoded with Pillow and
  converted to RGB: grayscale (``L``, ``I``, ``I;16``, ``F``) is replicated over the three channels,
  palette images are expanded through their palette, ``RGBA``/``LA`` **drop** their alpha channel
  (the colour values under transparent pixels are kept, as torchvision's loaders do), ``CMYK`` and
  ``YCbCr`` are converted by Pillow. EXIF orientation is deliberately *not* applied: annotations
  (masks, boxes, COCO polygons) are given in the pixels as stored in the file.
* Resizing to ``S x S`` (aspect ratio not kept) uses Pillow's bilinear filter, which low-pass
  filters when shrinking (the same as torchvision's ``Resize`` on PIL images). Masks are resized
  with nearest neighbour (pixel centres), so they stay boolean.
* Boxes are ``x0 y0 x1 y1`` in pixels of the image file; they are scaled with the image:
  ``x' = x * S / W``, ``y' = y * S / H``. When a sample has boxes but no mask, its mask is the
  union of the scaled boxes: pixel ``(i, j)`` is inside when its centre ``(j + .5, i + .5)`` lies in
  ``[x0, x1) x [y0, y1)`` of some box.
* An empty mask (no object pixel) is allowed; metrics decide what it means.
* Splits of the real datasets are deterministic: ``u = sha256(id)[:8] / 2**64`` and
  ``train`` when ``u < .6``, ``val`` when ``u < .8``, ``test`` otherwise.

Every failure raises :class:`DataError` (a ``ValueError``) whose message names the file and, for
manifest data, the manifest and its line.

Why one module of ~540 lines: it is the single place where these conventions are fixed (decoding,
resizing, masks, boxes, splits, records and their checks); the folder, COCO and VOC readers only
say where their files are.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sycam.errors import SycamError
from sycam.data.base import Sample

__all__ = [
    "DataError",
    "SPLITS",
    "DEFAULT_SIZE",
    "assign_split",
    "unit_hash",
    "open_image_header",
    "load_rgb",
    "image_to_tensor",
    "read_binary_mask",
    "read_index_mask",
    "resize_mask",
    "boxes_to_mask",
    "parse_boxes",
    "MaskSource",
    "BinaryMaskFile",
    "IndexMaskFile",
    "Record",
    "RecordDataset",
]

SPLITS = ("train", "val", "test", "all")
DEFAULT_SIZE = 224
# fractions of the hash split (train, val); test gets the rest
HASH_FRACTIONS = (0.6, 0.2)
# boxes may overshoot the image by this many pixels (annotation tools round outwards)
BOX_TOLERANCE = 1.0


class DataError(SycamError, ValueError):
    """Bad, missing or unreadable data. The message names the file (and manifest row)."""


# --------------------------------------------------------------------------- splits


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) for ``key``: ``int(sha256(key)[:8]) / 2**64``.

    Python's ``hash`` is salted per process, so it cannot be used for reproducible splits.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()[:8]
    return int.from_bytes(digest, "big") / 2.0**64


def assign_split(key: str, fractions: tuple[float, float] = HASH_FRACTIONS, seed: int | None = None) -> str:
    """The split of an image id: ``train`` if ``u < f0``, ``val`` if ``u < f0 + f1``, else ``test``.

    ``seed`` (``--split-seed``) salts the hash: another, equally reproducible partition of the same
    images (``None`` is the dataset's own partition).
    """
    u = unit_hash(key if seed is None else f"{int(seed)}|{key}")
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def check_split(split: str) -> str:
    """Validate a split name (``train``, ``val``, ``test`` or ``all``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def check_size(size: int | None) -> int:
    """Validate the output side length; ``None`` means :data:`DEFAULT_SIZE`."""
    if size is None:
        return DEFAULT_SIZE
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (pixels of the square output), got {size!r}")
    return int(size)


# --------------------------------------------------------------------------- images


def open_image_header(path: Path) -> Image.Image:
    """Open ``path`` lazily (Pillow reads the header only). Raises :class:`DataError` naming it."""
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _decode(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path`` (truncated files fail here, not at the header)."""
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode {what} {path}: {exc}") from exc
    return im


def _as_rgb(im: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow cannot convert these straight to RGB; scale to 8 bits ourselves.
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            top = 1.0
        elif im.mode.startswith("I;16") or float(arr.max(initial=0)) > 255:
            top = 65535.0
        else:
            top = 255.0
        arr8 = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    try:
        # RGBA/LA: alpha dropped; P: expanded through the palette; L: replicated; CMYK/YCbCr: Pillow.
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot convert image {path} (mode {im.mode}) to RGB: {exc}") from exc


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` to an RGB Pillow image at its stored resolution."""
    return _as_rgb(_decode(path, "image"), path)


def image_to_tensor(im: Image.Image, size: int) -> Tensor:
    """Resize an RGB image to ``size x size`` (bilinear) and return ``(3, size, size)`` in [0, 1]."""
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------- masks


def read_index_mask(path: Path) -> np.ndarray:
    """Read a label PNG as an integer array ``(H, W)``.

    Palette (``P``) images give their palette indices (VOC's format); ``L``/``I`` give their
    values. Colour images are refused: their classes would need a colour table.
    """
    im = _decode(path, "mask")
    if im.mode in ("P", "L", "I", "I;16", "I;16L", "I;16B"):
        return np.asarray(im).astype(np.int64)
    if im.mode in ("PA", "LA"):
        return np.asarray(im.getchannel(0)).astype(np.int64)
    raise DataError(
        f"mask {path} has mode {im.mode}; a class-index mask must be a palette (P) or grayscale (L) PNG"
    )


def read_binary_mask(path: Path) -> np.ndarray:
    """Read an object mask: any non-zero pixel is object. Returns bool ``(H, W)``.

    Palette images are read by index (index 0 = background), colour images by any non-zero colour
    channel; an alpha channel is ignored.
    """
    im = _decode(path, "mask")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert(im.mode[:-1]) if im.mode != "PA" else im.getchannel(0)
    if im.mode == "CMYK" or im.mode == "YCbCr":
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 3:
        return np.any(arr != 0, axis=2)
    return arr != 0


def resize_mask(mask: np.ndarray, size: int) -> Tensor:
    """Resize a bool mask ``(H, W)`` to ``size x size`` with nearest neighbour (pixel centres)."""
    im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(im) > 127)


def boxes_to_mask(boxes: Tensor, size: int) -> Tensor:
    """Union of boxes ``(n, 4)`` xyxy (in ``size``-pixel coordinates) as a bool ``(size, size)`` mask.

    Pixel ``(i, j)`` is set when ``x0 <= j + .5 < x1`` and ``y0 <= i + .5 < y1`` for some box.
    """
    centres = torch.arange(size, dtype=torch.float32, device=boxes.device) + 0.5
    mask = torch.zeros(size, size, dtype=torch.bool, device=boxes.device)
    for x0, y0, x1, y1 in boxes.tolist():
        rows = (centres >= y0) & (centres < y1)
        cols = (centres >= x0) & (centres < x1)
        mask |= rows[:, None] & cols[None, :]
    return mask


def parse_boxes(text: str, where: str) -> np.ndarray:
    """Parse ``"x0 y0 x1 y1;x0 y0 x1 y1"`` (commas also accepted inside a box) into ``(n, 4)``.

    An empty string gives ``(0, 4)``. Raises :class:`DataError` naming ``where`` when a box does
    not have four numbers or has ``x1 < x0`` / ``y1 < y0``.
    """
    out: list[list[float]] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        fields = part.replace(",", " ").split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataError(f"{where}: box {part!r} is not four numbers 'x0 y0 x1 y1'") from None
        if len(values) != 4 or not all(np.isfinite(values)):
            raise DataError(f"{where}: box {part!r} is not four finite numbers 'x0 y0 x1 y1'")
        x0, y0, x1, y1 = values
        if x1 < x0 or y1 < y0:
            raise DataError(f"{where}: box {part!r} has x1 < x0 or y1 < y0 (boxes are x0 y0 x1 y1)")
        out.append(values)
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def check_boxes_inside(boxes: np.ndarray, width: int, height: int, where: str) -> None:
    """Refuse boxes that leave the ``width x height`` image by more than :data:`BOX_TOLERANCE`."""
    if boxes.size == 0:
        return
    t = BOX_TOLERANCE
    bad = (boxes[:, 0] < -t) | (boxes[:, 1] < -t) | (boxes[:, 2] > width + t) | (boxes[:, 3] > height + t)
    if bad.any():
        box = " ".join(f"{v:g}" for v in boxes[int(np.argmax(bad))])
        raise DataError(
            f"{where}: box '{box}' lies outside the {width}x{height} image "
            "(boxes are x0 y0 x1 y1 in pixels of the image file)"
        )


# --------------------------------------------------------------------------- records


class MaskSource(Protocol):
    """Builds a record's ground truth at the stored image resolution."""

    path: Path  # the file the mask comes from (named in errors)

    def __call__(self) -> np.ndarray: ...  # bool (H, W)

    def size(self) -> tuple[int, int] | None: ...  # (W, H) without decoding, when cheap


@dataclass(frozen=True)
class BinaryMaskFile:
    """A mask PNG where any non-zero pixel is object."""

    path: Path

    def __call__(self) -> np.ndarray:
        return read_binary_mask(self.path)

    def size(self) -> tuple[int, int] | None:
        with open_mask_header(self.path) as im:
            return im.size


@dataclass(frozen=True)
class IndexMaskFile:
    """A class-index PNG; the object is the set of pixels whose value is in ``values``."""

    path: Path
    values: tuple[int, ...]

    def __call__(self) -> np.ndarray:
        return np.isin(read_index_mask(self.path), np.asarray(self.values, dtype=np.int64))

    def size(self) -> tuple[int, int] | None:
        with open_mask_header(self.path) as im:
            return im.size


def open_mask_header(path: Path) -> Image.Image:
    """Open a mask file lazily; :class:`DataError` naming it when missing or unreadable."""
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc


@dataclass
class Record:
    """One sample before decoding: where its image and ground truth are, and its label."""

    id: str
    image: Path
    label: int
    where: str  # e.g. "manifest.csv line 7", named in errors
    mask: MaskSource | None = None
    boxes: np.ndarray | None = None  # (n, 4) xyxy in pixels of the image file
    size: tuple[int, int] | None = None  # (W, H) the annotation says the image has


def _size_mismatch(rec: Record, mask: MaskSource, msize: tuple[int, int], isize: tuple[int, int]) -> DataError:
    return DataError(
        f"mask {mask.path} is {msize[0]}x{msize[1]} (WxH) but image {rec.image} is "
        f"{isize[0]}x{isize[1]} ({rec.where}); a mask must have its image's size"
    )


def check_record(rec: Record, full: bool) -> None:
    """Validate a record before use: image readable, sizes consistent, boxes inside.

    ``full=False`` reads headers only (cheap); ``full=True`` decodes image and mask completely so
    that truncated files are found now rather than in ``__getitem__``.
    """
    if full:
        isize = load_rgb(rec.image).size
    else:
        with open_image_header(rec.image) as im:
            isize = im.size
    if rec.size is not None and tuple(rec.size) != isize:
        raise DataError(
            f"image {rec.image} is {isize[0]}x{isize[1]} (WxH) but {rec.where} says "
            f"{rec.size[0]}x{rec.size[1]}"
        )
    if rec.mask is not None:
        if full:
            m = rec.mask()
            msize: tuple[int, int] | None = (int(m.shape[1]), int(m.shape[0]))
        else:
            msize = rec.mask.size()
        if msize is not None and msize != isize:
            raise _size_mismatch(rec, rec.mask, msize, isize)
    if rec.boxes is not None:
        check_boxes_inside(rec.boxes, isize[0], isize[1], f"{rec.where} ({rec.image.name})")


class RecordDataset:
    """A map-style dataset over validated :class:`Record` s (decoding happens in ``__getitem__``).

    Attributes: ``name``, ``num_classes``, ``class_names``, ``label_space`` (``"imagenet"``,
    ``"voc"``, ``"coco"`` or ``"custom"``: what :func:`sycam.data.targets.resolve_targets` keys
    on), ``root`` (the dataset's path), ``split``, ``size``, ``skipped`` (``(file, reason)`` for
    each image left out: bad data with ``on_error="skip"``, or images without any object of the
    label space), ``records``.
    """

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        records: Sequence[Record],
        class_names: Sequence[str],
        label_space: str,
        split: str,
        size: int,
        skipped: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.name = name
        self.root = root
        self.records = list(records)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.label_space = label_space
        self.split = split
        self.size = size
        self.skipped: list[tuple[str, str]] = list(skipped)

    @property
    def labels(self) -> list[int]:
        """The label of every sample, in order (no decoding)."""
        return [r.label for r in self.records]

    @property
    def ids(self) -> list[str]:
        """The id of every sample, in order."""
        return [r.id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"size={self.size}, num_classes={self.num_classes}, label_space={self.label_space!r}, "
            f"skipped={len(self.skipped)})"
        )

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: index must be an int, got {type(index).__name__}")
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return self.load(self.records[int(index)])

    def load(self, rec: Record) -> Sample:
        """Decode one record into a :class:`Sample` of side ``self.size``."""
        s = self.size
        im = load_rgb(rec.image)
        width, height = im.size
        if rec.size is not None and tuple(rec.size) != (width, height):
            raise DataError(
                f"image {rec.image} is {width}x{height} (WxH) but {rec.where} says {rec.size[0]}x{rec.size[1]}"
            )
        image = image_to_tensor(im, s)
        mask: Tensor | None = None
        if rec.mask is not None:
            m = rec.mask()
            if m.shape != (height, width):
                raise _size_mismatch(rec, rec.mask, (int(m.shape[1]), int(m.shape[0])), (width, height))
            mask = resize_mask(m, s)
        boxes: Tensor | None = None
        if rec.boxes is not None:
            scale = torch.tensor([s / width, s / height, s / width, s / height], dtype=torch.float32)
            boxes = torch.from_numpy(rec.boxes.astype(np.float32)).reshape(-1, 4) * scale
            if mask is None:
                mask = boxes_to_mask(boxes, s)
        return Sample(image=image, label=int(rec.label), mask=mask, boxes=boxes, id=rec.id)


def select_records(
    candidates: Iterable[Record],
    *,
    limit: int | None,
    on_error: str,
    skipped: list[tuple[str, str]],
    prepare: Callable[[Record], Record | None] | None = None,
) -> list[Record]:
    """Validate candidates in order and keep up to ``limit`` good ones.

    ``prepare`` may fill a record in (e.g. a label read from its mask) and return ``None`` to
    leave it out (the reason is then appended to ``skipped`` by ``prepare``). With
    ``on_error="skip"`` images and masks are decoded in full and bad records are recorded in
    ``skipped``; with ``"raise"`` headers are checked and the first :class:`DataError` propagates.
    """
    full = on_error == "skip"
    out: list[Record] = []
    for rec in candidates:
        if limit is not None and len(out) >= limit:
            break
        try:
            prepared = prepare(rec) if prepare is not None else rec
            if prepared is None:
                continue
            check_record(prepared, full=full)
        except DataError as exc:
            if not full:
                raise
            skipped.append((str(rec.image), str(exc)))
            continue
        out.append(prepared)
    return out


def check_open_args(split: str, size: int | None, limit: int | None, on_error: str) -> tuple[str, int, int | None, str]:
    """Validate the arguments every ``open_*`` loader takes (split, size, limit, on_error)."""
    return check_split(split), check_size(size), check_limit(limit), check_on_error(on_error)


def check_on_error(on_error: str) -> str:
    """Validate ``on_error`` (``"raise"`` or ``"skip"``)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def check_limit(limit: int | None) -> int | None:
    """Validate ``limit`` (``None`` or a positive integer)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return int(limit)


def raise_problems(problems: list[str], source: Path) -> None:
    """Raise one :class:`DataError` listing the first few manifest problems (if any)."""
    if not problems:
        return
    shown = "\n  ".join(problems[:5])
    more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    raise DataError(f"{len(problems)} problem(s) in {source}:\n  {shown}{more}")


def empty_error(root: Path, split: str, skipped: list[tuple[str, str]], what: str = "images") -> DataError:
    """The error for a dataset that ends up with no samples."""
    hint = f"; {len(skipped)} left out, first: {skipped[0][1]}" if skipped else ""
    return DataError(f"no {what} for split {split!r} in {root}{hint}")


def relative_id(path: Path, root: Path) -> str:
    """An image id: the path relative to ``root`` without extension and without a leading ``images/``.

    Ids are what the hash split keys on, so the same image gets the same id (and split) whichever
    form (``folder:``, ``coco:``) it is read through.
    """
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    parts = list(rel.with_suffix("").parts)
    if len(parts) > 1 and parts[0] == "images":
        parts = parts[1:]
    return "/".join(parts)


def expand(path: str | os.PathLike[str]) -> Path:
    """``~`` and environment variables expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))

