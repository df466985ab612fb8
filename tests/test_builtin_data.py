"""The built-in shapes benchmark: exact rendering, determinism, statistics of the scenes."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from sycam.data import builtin as B
from sycam.data.base import collate
from sycam.data.builtin import SHAPES, BuiltinBenchmark, make_batch, make_scenes


def _params(objects: list[tuple[int, float, float, float, float, float]], colours: list[tuple[float, float, float]]) -> B._SceneParams:
    """A hand-made scene on a flat blue background without noise.

    ``objects``: (class, cx, cy, r, angle, outline width) with slot 0 the target (width 0).
    """
    k = len(objects)
    return B._SceneParams(
        classes=np.array([o[0] for o in objects], dtype=np.int64),
        centres=np.array([[o[1], o[2]] for o in objects], dtype=np.float64),
        radii=np.array([o[3] for o in objects], dtype=np.float64),
        angles=np.array([o[4] for o in objects], dtype=np.float64),
        colours=np.array(colours, dtype=np.float64),
        widths=np.array([o[5] for o in objects], dtype=np.float64),
        base=np.array([0.0, 0.0, 1.0]),
        grad=np.zeros(2),
        grad_colour=np.zeros(3),
        stripes=np.array([0.0, 3.0, 0.0, 0.0]),
        stripe_colour=np.zeros(3),
        blobs=np.full((B._N_BLOBS, 3), 0.5),
        blob_colours=np.zeros((B._N_BLOBS, 3)),
        noise=(0.0, 0, 0, 0),
    )


# ------------------------------------------------------------------------------ exact rendering


def test_filled_square_and_outlined_square_are_exact() -> None:
    # Target: square with half side 8 (circumradius 8·√2) at (20, 20): pixel centres 12.5..27.5,
    # i.e. 16 × 16 = 256 pixels, box [12, 12, 28, 28]. Distractor: square with half side 10 at
    # (44, 44), outline width 2: pixels whose centre has max(|dx|, |dy|) ∈ {8.5, 9.5} are fully
    # inked, 20² − 16² = 144 of them; everything else is the flat background.
    p = _params(
        [(1, 20.0, 20.0, 8 * math.sqrt(2), 0.0, 0.0), (1, 44.0, 44.0, 10 * math.sqrt(2), 0.0, 2.0)],
        [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)],
    )
    images, masks, classes, filled = B._render([p], 64)
    img = images[0]
    assert int(masks[0, 0].sum()) == 256
    assert masks[0, 0, 12:28, 12:28].all()
    assert int(masks[0, 1].sum()) == 400  # the distractor's footprint: its whole square
    red = (img - torch.tensor([1.0, 0.0, 0.0])[:, None, None]).abs().amax(0) < 1e-5
    green = (img - torch.tensor([0.0, 1.0, 0.0])[:, None, None]).abs().amax(0) < 1e-5
    blue = (img - torch.tensor([0.0, 0.0, 1.0])[:, None, None]).abs().amax(0) < 1e-5
    assert int(red.sum()) == 256 and torch.equal(red, masks[0, 0])
    assert int(green.sum()) == 144
    assert green[34, 34] and green[35, 35] and green[53, 53] and not green[36, 36] and not green[44, 44]  # hollow
    assert int(blue.sum()) == 64 * 64 - 256 - 144  # no partial pixels on axis-aligned edges
    assert classes[0].tolist() == [1, 1, -1]
    assert filled[0].tolist() == [True, False, False]
    assert B._mask_box(masks[0, 0]).tolist() == [[12.0, 12.0, 28.0, 28.0]]


def test_disc_mask_is_the_pixel_centres_inside_the_circle() -> None:
    r, c = 10.3, 31.7
    p = _params([(0, c, c, r, 0.7, 0.0)], [(1.0, 1.0, 1.0)])
    _, masks, _, _ = B._render([p], 64)
    expect = sum((i + 0.5 - c) ** 2 + (j + 0.5 - c) ** 2 <= r * r for i in range(64) for j in range(64))
    assert int(masks[0, 0].sum()) == expect
    assert masks[0, 0, 31, 31] and not masks[0, 0, 31, 42] and masks[0, 0, 31, 41]


@pytest.mark.parametrize("cls", range(len(SHAPES)))
def test_rendered_area_matches_the_analytic_area(cls: int) -> None:
    # Size sampling relies on _UNIT_AREA; a wrong SDF or area formula shows up here.
    r = 24.0
    p = _params([(cls, 32.0, 32.0, r, 0.3, 0.0)], [(1.0, 1.0, 1.0)])
    _, masks, _, _ = B._render([p], 64)
    area = float(masks[0, 0].sum())
    assert area == pytest.approx(B._UNIT_AREA[cls] * r * r, rel=0.03), SHAPES[cls]
    assert area < math.pi * r * r  # every shape lies inside its circumscribed circle


def test_anti_aliasing_mask_is_where_coverage_reaches_one_half() -> None:
    # Rotated target: edge pixels are blends; the mask is exactly where the blend weight ≥ 0.5.
    p = _params([(2, 30.2, 33.9, 17.0, 0.41, 0.0)], [(1.0, 0.0, 0.0)])
    images, masks, _, _ = B._render([p], 64)
    alpha = images[0, 0]  # red channel = coverage (background red is 0)
    assert ((alpha > 0) & (alpha < 1)).any()
    assert torch.equal(alpha >= 0.5 - 1e-6, masks[0, 0])


# ------------------------------------------------------------------------------- dataset API


def test_sample_shapes_types_and_ranges() -> None:
    ds = BuiltinBenchmark("test", n=20)
    assert (ds.name, len(ds), ds.num_classes) == ("builtin", 20, len(ds.class_names))
    assert ds.num_classes >= 6
    s = ds[7]
    assert s.image.shape == (3, 64, 64) and s.image.dtype == torch.float32
    assert 0.0 <= float(s.image.min()) and float(s.image.max()) <= 1.0
    assert s.mask is not None and s.mask.shape == (64, 64) and s.mask.dtype == torch.bool
    assert s.boxes is not None and s.boxes.shape == (1, 4)
    assert isinstance(s.label, int) and 0 <= s.label < ds.num_classes
    assert s.id == "builtin/test/000007"
    x0, y0, x1, y1 = s.boxes[0].tolist()
    rows = torch.nonzero(s.mask.any(1)).squeeze(1)
    cols = torch.nonzero(s.mask.any(0)).squeeze(1)
    assert (x0, y0, x1, y1) == (cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1)
    assert BuiltinBenchmark("val", size=96, n=3)[2].image.shape == (3, 96, 96)


def test_default_lengths_and_index_errors() -> None:
    assert [len(BuiltinBenchmark(s)) for s in ("train", "val", "test")] == [6000, 512, 512]
    ds = BuiltinBenchmark("val", n=5)
    assert torch.equal(ds[-1].image, ds[4].image)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    assert len(list(ds)) == 5  # iteration stops at IndexError
    with pytest.raises(ValueError, match="unknown split"):
        BuiltinBenchmark("dev")
    with pytest.raises(ValueError, match="size"):
        BuiltinBenchmark("test", size=8)
    with pytest.raises(ValueError, match="n must be"):
        BuiltinBenchmark("test", n=0)
    with pytest.raises(ValueError, match="seed"):
        make_batch("test", [0], seed=-1)


def test_deterministic_and_independent_of_batch_composition() -> None:
    ds = BuiltinBenchmark("test")
    a, b = ds[5], ds[5]
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.label == b.label
    big = make_batch("test", range(64))  # crosses the 32-image render chunks
    small = make_batch("test", [40, 5, 33])
    assert torch.equal(small.images[1], a.image)
    assert torch.equal(small.images[0], big.images[40]) and torch.equal(small.images[2], big.images[33])
    assert torch.equal(small.masks[0], big.masks[40])
    coll = collate([ds[i] for i in (40, 5, 33)])
    assert torch.equal(coll.images, small.images) and torch.equal(coll.labels, small.labels)
    assert coll.ids == small.ids == ["builtin/test/000040", "builtin/test/000005", "builtin/test/000033"]
    assert torch.equal(ds.batch([40, 5, 33]).images, small.images)


def test_splits_and_seeds_use_different_streams() -> None:
    idx = list(range(16))
    test, train, val = (make_batch(s, idx) for s in ("test", "train", "val"))
    other_seed = make_batch("test", idx, seed=1)
    for other in (train, val, other_seed):
        diff = (test.images - other.images).abs().flatten(1).amax(1)
        assert bool((diff > 0.1).all())


# ------------------------------------------------------------------------ scene statistics


@pytest.fixture(scope="module")
def scenes() -> list[B.Scene]:
    return make_scenes("val", range(300))


def test_all_classes_present_and_balanced(scenes: list[B.Scene]) -> None:
    counts = np.bincount([s.label for s in scenes], minlength=len(SHAPES))
    assert len(counts) == len(SHAPES) >= 6
    assert counts.min() >= 300 / len(SHAPES) / 2  # roughly uniform: none below half its share


def test_target_area_fraction_within_bounds_and_varied(scenes: list[B.Scene]) -> None:
    frac = np.array([float(s.mask.float().mean()) for s in scenes])
    assert frac.min() >= 0.03 and frac.max() <= 0.30
    assert frac.min() < 0.05 and frac.max() > 0.18  # sizes really vary over the range


def test_distractors_other_classes_outlined_and_disjoint(scenes: list[B.Scene]) -> None:
    n_objects = [len(s.classes) for s in scenes]
    assert set(n_objects) == {2, 3}  # one or two distractors, both cases occur
    for s in scenes:
        assert s.classes[0] == s.label
        assert s.label not in s.classes[1:].tolist()
        assert len(set(s.classes.tolist())) == len(s.classes)
        assert s.filled.tolist() == [True] + [False] * (len(s.classes) - 1)
        areas = s.object_masks.flatten(1).sum(1)
        assert bool((areas > 0).all())
        # footprints never overlap, nor touch the target mask
        assert int(s.object_masks.sum(0).max()) == 1
        assert not (s.object_masks[1:].any(0) & s.mask).any()
        assert torch.equal(s.mask, make_batch("val", [int(s.id.rsplit("/", 1)[1])]).masks[0])


def test_targets_are_spread_over_the_image(scenes: list[B.Scene]) -> None:
    centres = np.array([[float(b) for b in s.boxes[0]] for s in scenes])
    cx = (centres[:, 0] + centres[:, 2]) / 2
    cy = (centres[:, 1] + centres[:, 3]) / 2
    assert cx.min() < 20 and cx.max() > 44 and cy.min() < 20 and cy.max() > 44


def test_colour_does_not_reveal_the_class(scenes: list[B.Scene]) -> None:
    # Mean target colour per class: all near the overall mean (a class-coloured generator fails).
    cols = np.array([s.image[:, s.mask].mean(1).numpy() for s in scenes])
    labels = np.array([s.label for s in scenes])
    overall = cols.mean(0)
    for c in range(len(SHAPES)):
        assert np.abs(cols[labels == c].mean(0) - overall).max() < 0.15, SHAPES[c]


def test_generation_is_fast() -> None:
    make_batch("train", range(8))  # warm up (noise bank)
    threads = torch.get_num_threads()
    t = time.process_time()
    make_batch("train", range(1000, 1256))
    per_image = (time.process_time() - t) / 256
    assert torch.get_num_threads() == threads  # rendering runs single-threaded, then restores
    # ~0.5 ms of CPU time per image measured; CPU time, so other load does not make it flaky.
    assert per_image < 3e-3, f"{per_image * 1e3:.2f} ms per image"
