"""Localisation metrics on tiny hand-made maps and masks, with hand-computed expected values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sycam.metrics import MetricInputs, dilate_disc, get_metric, otsu_thresholds

NAN_ON_EMPTY_MASK = ["iou", "iou@0.5", "pointing_game", "energy_pg", "com_dist"]


def run(name: str, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return get_metric(name)(MetricInputs(maps=maps, masks=masks))


def block(h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows, cols] = True
    return m


# ------------------------------------------------------------------------------------ Otsu / iou


def test_otsu_bimodal_threshold_just_above_lower_mode() -> None:
    m = torch.full((4, 4), 0.2)
    m[:2] = 0.8
    thr = otsu_thresholds(m[None])
    # bins floor(0.2*256)=51 and floor(0.8*256)=204; first maximiser splits after bin 51
    assert thr.tolist() == [52 / 256]


def test_otsu_three_levels_hand_computed() -> None:
    # 4 px at 0.1 (bin 25), 2 at 0.5 (bin 128), 2 at 0.9 (bin 230); centres (k+.5)/256
    # split 25|128: w0=w1=1/2, mu1-mu0 = (179.5-25.5)/256 -> sb = 1/4 * 154^2 = 5929 (x 1/256^2)
    # split 128|230: w0=3/4, w1=1/4, mu0=359/6, mu1=230.5 -> sb = 3/16 * (170.666..)^2 = 5461.3
    m = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.9, 0.9]).view(1, 2, 4)
    assert otsu_thresholds(m).tolist() == [26 / 256]
    # with 3 px at 0.1 and 3 at 0.9 the lower split still wins, narrowly:
    # 25|128: w0=3/8, w1=5/8, mu1=(2*128.5+3*230.5)/5=189.7 -> sb=15/64*164.2^2=6319.1
    # 128|230: w0=5/8, w1=3/8, mu0=(3*25.5+2*128.5)/5=66.7 -> sb=15/64*163.8^2=6288.4
    m2 = torch.tensor([0.1, 0.1, 0.1, 0.5, 0.5, 0.9, 0.9, 0.9]).view(1, 2, 4)
    assert otsu_thresholds(m2).tolist() == [26 / 256]
    # 2 px at 0.1, 3 at 0.5, 3 at 0.9:
    # 25|128: w0=2/8, mu1=179.5 -> sb = 3/16*154^2 = 4446.75
    # 128|230: w0=5/8, mu0=(51+385.5)/5=87.3 -> sb = 15/64*143.2^2 = 4806.0
    m3 = torch.tensor([0.1, 0.1, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9]).view(1, 2, 4)
    assert otsu_thresholds(m3).tolist() == [129 / 256]


def test_otsu_matches_opencv_on_random_histograms() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    qs = []
    for i in range(20):
        # mixtures of two clusters so the optimum is not a near-tie
        lo = rng.normal(60 + 3 * i, 15, size=150)
        hi = rng.normal(180 - 2 * i, 20, size=106)
        qs.append(np.clip(np.concatenate([lo, hi]), 0, 255).astype(np.uint8).reshape(16, 16))
    q = np.stack(qs)
    maps = (torch.from_numpy(q).double() + 0.5) / 256  # bin k exactly
    ours = maps >= otsu_thresholds(maps)[:, None, None]
    for i in range(len(qs)):
        t, _ = cv2.threshold(q[i], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert torch.equal(ours[i], torch.from_numpy(q[i] > t)), f"image {i}: cv2 threshold {t}"


def test_otsu_constant_map_whole_image_foreground() -> None:
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.7)])
    assert otsu_thresholds(maps).tolist() == [0.0, 0.0]


def test_iou_exact_fraction() -> None:
    m = torch.zeros(4, 4)
    m[:, :2] = 1.0  # left half salient
    mask = block(4, 4, slice(0, 2), slice(None))  # top half
    # intersection 4, union 12
    assert run("iou", m[None], mask[None]).tolist() == pytest.approx([1 / 3])


def test_iou_batched_per_image_thresholds() -> None:
    a = torch.zeros(4, 4)
    a[:, :2] = 1.0
    b = torch.full((4, 4), 0.1)
    b[:2] = 0.3  # top half, a different threshold from a's
    mask = block(4, 4, slice(0, 2), slice(None))
    out = run("iou", torch.stack([a, b]), torch.stack([mask, mask]))
    assert out.tolist() == pytest.approx([1 / 3, 1.0])


def test_iou_constant_and_zero_maps_score_mask_fraction() -> None:
    mask = block(4, 4, slice(0, 2), slice(0, 2))  # 4 of 16 px
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.6)])
    assert run("iou", maps, torch.stack([mask, mask])).tolist() == [0.25, 0.25]


def test_iou_at_threshold_inclusive() -> None:
    m = torch.tensor([0.1, 0.4, 0.5, 0.9]).repeat(4, 1)  # columns
    mask = block(4, 4, slice(None), slice(3, 4))
    # T=0.5 keeps columns 2,3 (0.5 >= 0.5): 4 / 8
    assert run("iou@0.5", m[None], mask[None]).tolist() == [0.5]
    assert run("iou@0.6", m[None], mask[None]).tolist() == [1.0]
    assert run("iou@0", m[None], mask[None]).tolist() == [0.25]


def test_iou_at_constant_maps() -> None:
    mask = block(4, 4, slice(0, 2), slice(0, 2))
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.7)])
    assert run("iou@0.5", maps, torch.stack([mask, mask])).tolist() == [0.0, 0.25]


def test_iou_at_name_parsing() -> None:
    metric = get_metric("iou@0.25")
    assert metric.name == "iou@0.25" and metric.threshold == 0.25  # type: ignore[attr-defined]
    assert get_metric("iou@.5").name == "iou@0.5"
    with pytest.raises(ValueError, match="iou@T"):
        get_metric("iou@abc")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_metric("iou@1.5")


@pytest.mark.parametrize("name", NAN_ON_EMPTY_MASK)
def test_empty_mask_is_nan_and_other_images_unaffected(name: str) -> None:
    m = torch.zeros(8, 8)
    m[2, 3] = 1.0
    full = block(8, 8, slice(0, 4), slice(0, 4))
    empty = torch.zeros(8, 8, dtype=torch.bool)
    out = run(name, torch.stack([m, m]), torch.stack([empty, full]))
    assert math.isnan(out[0].item())
    assert not math.isnan(out[1].item())
    assert out.dtype == torch.float32 and out.shape == (2,)


@pytest.mark.parametrize("name", NAN_ON_EMPTY_MASK)
def test_zero_and_constant_maps_defined(name: str) -> None:
    mask = block(8, 8, slice(0, 4), slice(0, 4))
    maps = torch.stack([torch.zeros(8, 8), torch.full((8, 8), 0.5), torch.ones(8, 8)])
    out = run(name, maps, mask.expand(3, 8, 8).contiguous())
    assert torch.isfinite(out).all(), out


# ----------------------------------------------------------------------------------- pointing game


def test_dilate_disc_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 20, 23, generator=g) > 0.97
    for r in (0.0, 1.0, 2.5, 4.0):
        got = dilate_disc(masks, r)
        ys, xs = torch.meshgrid(torch.arange(20), torch.arange(23), indexing="ij")
        for b in range(3):
            pts = masks[b].nonzero().float()
            grid = torch.stack([ys, xs], -1).float().view(-1, 1, 2)
            want = ((grid - pts[None]).norm(dim=-1) <= r + 1e-9).any(-1).view(20, 23) if len(pts) else torch.zeros(20, 23, dtype=torch.bool)
            assert torch.equal(got[b], want), (b, r)


@pytest.mark.parametrize(
    "peak,hit",
    [
        ((25, 25), 1.0),  # inside the object
        ((29 + 15, 25), 1.0),  # exactly 15 px below the lowest object row
        ((29 + 16, 25), 0.0),  # 16 px: beyond the tolerance
        ((25, 20 - 15), 1.0),  # 15 px left
        ((29 + 10, 29 + 11), 1.0),  # diagonal, sqrt(221) = 14.87 px
        ((29 + 11, 29 + 11), 0.0),  # diagonal, sqrt(242) = 15.56 px: Euclidean miss (a square would hit)
    ],
)
def test_pointing_game_tolerance_64x64(peak: tuple[int, int], hit: float) -> None:
    mask = block(64, 64, slice(20, 30), slice(20, 30))
    m = torch.zeros(64, 64)
    m[peak] = 1.0
    m[0, 63] = 0.5  # a lower secondary peak must not matter
    assert run("pointing_game", m[None], mask[None]).tolist() == [hit]


def test_pointing_game_ties_score_fraction_of_maxima() -> None:
    mask = block(64, 64, slice(20, 30), slice(20, 30))
    m = torch.zeros(64, 64)
    m[25, 25] = 1.0  # hit
    m[60, 60] = 1.0  # miss
    assert run("pointing_game", m[None], mask[None]).tolist() == [0.5]


def test_pointing_game_constant_map_is_chance_level() -> None:
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[32, 32] = True
    # 709 lattice points within radius 15 (Gauss circle count), all inside the 64x64 image
    want = 709 / 4096
    out = run("pointing_game", torch.stack([torch.zeros(64, 64), torch.ones(64, 64)]), mask.expand(2, 64, 64).contiguous())
    assert out.tolist() == pytest.approx([want, want])


def test_pointing_game_tolerance_option() -> None:
    mask = block(64, 64, slice(20, 30), slice(20, 30))
    m = torch.zeros(64, 64)
    m[29 + 5, 25] = 1.0
    metric = get_metric("pointing_game", tolerance=4)
    assert metric(MetricInputs(maps=m[None], masks=mask[None])).tolist() == [0.0]
    assert get_metric("pointing_game", tolerance=5)(MetricInputs(maps=m[None], masks=mask[None])).tolist() == [1.0]


# ------------------------------------------------------------------------------------- energy_pg


def test_energy_pg_exact() -> None:
    m = torch.zeros(4, 4)
    m[0, 0], m[0, 1], m[3, 3] = 1.0, 0.5, 0.25
    mask = block(4, 4, slice(0, 1), slice(0, 2))
    assert run("energy_pg", m[None], mask[None]).tolist() == pytest.approx([1.5 / 1.75])


def test_energy_pg_zero_and_constant_map_chance_level() -> None:
    mask = block(4, 4, slice(0, 1), slice(0, 2))  # 2 of 16
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.3)])
    assert run("energy_pg", maps, torch.stack([mask, mask])).tolist() == pytest.approx([2 / 16, 2 / 16])


# -------------------------------------------------------------------------------------- com_dist


def test_com_dist_diagonal_offset() -> None:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2, 2] = True
    m = torch.zeros(8, 8)
    m[5, 5] = 1.0
    # |(3, 3)| / sqrt(8^2 + 8^2) = 3 sqrt2 / 8 sqrt2
    assert run("com_dist", m[None], mask[None]).tolist() == pytest.approx([3 / 8])


def test_com_dist_weighted_centre_and_rectangular_image() -> None:
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[0, 2] = True
    m = torch.zeros(6, 8)
    m[0, 0], m[0, 4] = 1.0, 1.0  # centre of mass at column 2 (pixel centres 0.5 and 4.5 -> 2.5)
    assert run("com_dist", m[None], mask[None]).tolist() == pytest.approx([0.0], abs=1e-7)
    m[0, 4] = 0.5  # weights 1, 0.5: column centre (0.5 + 0.5*4.5)/1.5 = 11/6, |2.5 - 11/6| = 2/3
    assert run("com_dist", m[None], mask[None]).tolist() == pytest.approx([(2 / 3) / 10])


def test_com_dist_zero_map_uses_image_centre() -> None:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 0] = True  # centre (0.5, 0.5); image centre (4, 4)
    assert run("com_dist", torch.zeros(1, 8, 8), mask[None]).tolist() == pytest.approx([3.5 / 8])
    assert get_metric("com_dist").higher_is_better is False


@pytest.mark.parametrize("bins", [256, 100, 2])
def test_joint_histogram_iou_equals_thresholding_and_counting(bins: int) -> None:
    from sycam.metrics.localisation import otsu_iou

    g = torch.Generator().manual_seed(bins)
    for trial in range(40):
        maps = torch.rand(5, 13, 17, generator=g)
        if trial % 3 == 1:
            maps = (maps * 6).floor() / 6  # many pixels exactly on bin edges, and v = 1
        maps[1] = 0.25  # constant: no split
        maps[2, :4] = 1.0
        masks = torch.rand(5, 13, 17, generator=g) > 0.6
        masks[4] = False  # empty mask: NaN
        thr = otsu_thresholds(maps, bins)
        pred = (maps >= thr[:, None, None]).numpy()
        m = masks.numpy()
        inter, union = (pred & m).sum((1, 2)), (pred | m).sum((1, 2))
        expected = np.where(m.sum((1, 2)) == 0, np.nan, inter / np.maximum(union, 1))
        got = otsu_iou(maps, masks, bins).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(expected), rtol=0, atol=1e-7)


def test_joint_histogram_notices_masks_changed_in_place() -> None:
    from sycam.metrics.localisation import otsu_iou

    maps = torch.linspace(0, 1, 64).view(1, 8, 8)
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 4:] = True
    first = otsu_iou(maps, masks)
    masks[0, :4] = True  # same tensor, new contents: the cached offsets must not be reused
    second = otsu_iou(maps, masks)
    assert float(first) == pytest.approx(1.0) and float(second) == pytest.approx(0.5)
