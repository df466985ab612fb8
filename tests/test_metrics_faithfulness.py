"""Faithfulness metrics with hand-made score functions whose curves can be integrated by hand."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from sycam.metrics import MetricInputs, get_metric, linear_impute, pixel_ranks
from sycam.metrics.faithfulness import gaussian_blur, make_substrate

MODEL_METRICS = ["deletion", "insertion", "avg_drop", "avg_increase", "finer_drop", "road_morf", "road_lerf", "road"]


def mean_region(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """p = mean of the top-left 2x2 region over channels (a 'model' looking only there)."""
    return images[:, :, :2, :2].mean(dim=(1, 2, 3))


def mean_all(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(1, 2, 3))


def region_first_map() -> torch.Tensor:
    """4x4 map with distinct values, the top-left 2x2 region highest."""
    m = torch.tensor(
        [
            [1.00, 0.95, 0.50, 0.45],
            [0.90, 0.85, 0.40, 0.35],
            [0.30, 0.25, 0.20, 0.15],
            [0.10, 0.05, 0.02, 0.00],
        ]
    )
    return m


def inputs(maps: torch.Tensor, images: torch.Tensor, score_fn=mean_region) -> MetricInputs:  # type: ignore[no-untyped-def]
    return MetricInputs(maps=maps, images=images, targets=torch.zeros(maps.shape[0], dtype=torch.long), score_fn=score_fn)


# ------------------------------------------------------------------------------------ ordering


def test_pixel_ranks_descending_and_ascending() -> None:
    m = region_first_map()[None]
    r = pixel_ranks(m, descending=True).view(4, 4)
    assert r[0, 0] == 0 and r[0, 1] == 1 and r[1, 0] == 2 and r[1, 1] == 3 and r[3, 3] == 15
    r_up = pixel_ranks(m, descending=False).view(4, 4)
    assert r_up[3, 3] == 0 and r_up[0, 0] == 15


def test_pixel_ranks_ties_seeded_and_a_permutation() -> None:
    m = torch.zeros(2, 5, 5)
    a, b = pixel_ranks(m, seed=0), pixel_ranks(m, seed=0)
    assert torch.equal(a, b)
    assert torch.equal(a.sort(dim=1).values, torch.arange(25).expand(2, 25))
    assert not torch.equal(a[0], torch.arange(25)), "ties must not fall back to raster order"
    assert not torch.equal(pixel_ranks(m, seed=1), a)


# ------------------------------------------------------------------------------ deletion/insertion


def test_deletion_region_first_and_last() -> None:
    img = torch.ones(1, 3, 4, 4)
    m = region_first_map()[None]
    metric = get_metric("deletion", steps=4)
    # 4 px per step; the region goes at step 1: curve 1,0,0,0,0 -> AUC = (1/4)(1/2) = 1/8
    assert metric.curves(inputs(m, img)).tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]  # type: ignore[attr-defined]
    assert metric(inputs(m, img)).tolist() == pytest.approx([0.125])
    # reversed saliency: region deleted last: 1,1,1,1,0 -> (1/4)(1/2 + 3) = 7/8
    assert metric(inputs(1 - m, img)).tolist() == pytest.approx([0.875])


def test_insertion_region_first_zero_substrate() -> None:
    img = torch.ones(1, 3, 4, 4)
    m = region_first_map()[None]
    metric = get_metric("insertion", steps=4, substrate="zeros")
    # curve 0,1,1,1,1 -> (1/4)(0 + 3 + 1/2) = 7/8
    assert metric(inputs(m, img)).tolist() == pytest.approx([0.875])
    assert metric(inputs(1 - m, img)).tolist() == pytest.approx([0.125])


def test_deletion_uneven_steps_round_counts() -> None:
    img = torch.ones(1, 3, 4, 4)
    metric = get_metric("deletion", steps=3)
    # counts round(16 k / 3) = 0, 5, 11, 16 -> p = 1, 11/16, 5/16, 0
    curve = metric.curves(inputs(region_first_map()[None], img, mean_all))  # type: ignore[attr-defined]
    assert curve.tolist()[0] == pytest.approx([1.0, 11 / 16, 5 / 16, 0.0])
    assert metric(inputs(region_first_map()[None], img, mean_all)).tolist() == pytest.approx([(0.5 + 11 / 16 + 5 / 16) / 3])


def test_deletion_mean_substrate_and_batch_chunking() -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 3, 4, 4, generator=g)
    maps = torch.rand(3, 4, 4, generator=g)
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True))
    a = get_metric("deletion", steps=4, substrate="mean", chunk_size=1)(inputs(maps, imgs))
    b = get_metric("deletion", steps=4, substrate="mean", chunk_size=64)(inputs(maps, imgs))
    assert torch.equal(a, b)
    # per-image loop reference
    for i in range(3):
        c = get_metric("deletion", steps=4, substrate="mean")(inputs(maps[i : i + 1], imgs[i : i + 1]))
        assert c.item() == pytest.approx(a[i].item())


def test_score_fn_called_in_bounded_chunks() -> None:
    sizes: list[int] = []

    def spy(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sizes.append(images.shape[0])
        return mean_all(images, targets)

    maps = region_first_map().expand(5, 4, 4).contiguous()
    get_metric("deletion", steps=8, chunk_size=7)(inputs(maps, torch.ones(5, 3, 4, 4), spy))
    assert max(sizes) <= 7 and sum(sizes) == 5 * 9


def test_blur_substrate_properties() -> None:
    const = torch.full((1, 3, 6, 6), 0.4)
    assert torch.allclose(gaussian_blur(const), const, atol=1e-6)
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1.0
    out = gaussian_blur(impulse)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)  # kernel fits inside: mass preserved
    assert out[0, 0, 15, 15] == out.max() and torch.allclose(out, out.flip(-1).flip(-2), atol=1e-7)
    assert torch.equal(make_substrate(const, "zeros"), torch.zeros_like(const))
    with pytest.raises(ValueError, match="substrate"):
        get_metric("insertion", substrate="noise")


# ------------------------------------------------------------------------ avg drop / increase


def test_avg_drop_and_increase_exact() -> None:
    img = torch.full((1, 3, 4, 4), 0.5)
    m = torch.full((1, 4, 4), 0.5)
    # Y = 0.5, O = mean(0.25) = 0.25 -> drop = 0.25/0.5*100 = 50; no increase
    assert get_metric("avg_drop")(inputs(m, img, mean_all)).tolist() == pytest.approx([50.0])
    assert get_metric("avg_increase")(inputs(m, img, mean_all)).tolist() == [0.0]

    def inverse(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 1 - images.mean(dim=(1, 2, 3))

    # Y = 0.5, O = 0.75 -> drop 0, increase 100
    assert get_metric("avg_drop")(inputs(m, img, inverse)).tolist() == [0.0]
    assert get_metric("avg_increase")(inputs(m, img, inverse)).tolist() == [100.0]


def test_avg_drop_zero_confidence_nan_and_zero_map() -> None:
    imgs = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.8)])
    maps = torch.zeros(2, 4, 4)
    drop = get_metric("avg_drop")(inputs(maps, imgs, mean_all))
    assert math.isnan(drop[0].item())  # Y = 0
    assert drop[1].item() == pytest.approx(100.0)  # all-zero map shows a black image
    assert get_metric("avg_increase")(inputs(maps, imgs, mean_all)).tolist() == [0.0, 0.0]


# -------------------------------------------------------------------------------- finer_drop


def test_finer_drop_exact() -> None:
    img = torch.full((1, 3, 10, 10), 0.5)
    m = torch.zeros(1, 10, 10)
    m[0, 0, :5] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6])  # the top 5 % = 5 of 100 px
    img[0, :, 0, :5] = 1.0
    # Y = (5*1 + 95*0.5)/100 = 0.525; masked: 0.475 -> (0.05)/0.525 = 2/21
    assert get_metric("finer_drop")(inputs(m, img, mean_all)).tolist() == pytest.approx([2 / 21])


def test_finer_drop_zero_confidence_nan() -> None:
    out = get_metric("finer_drop")(inputs(torch.zeros(1, 10, 10), torch.zeros(1, 3, 10, 10), mean_all))
    assert math.isnan(out.item())


# --------------------------------------------------------------------------------------- ROAD


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_impute_centre_weighted_mean(solver: str) -> None:
    img = torch.zeros(1, 1, 3, 3)
    img[0, 0, 0, 1] = img[0, 0, 1, 0] = img[0, 0, 1, 2] = img[0, 0, 2, 1] = 1.0  # direct neighbours
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    out = linear_impute(img, removed, solver=solver)
    # 4 * 1/6 * 1 + 4 * 1/12 * 0 over total weight 1
    assert out[0, 0, 1, 1].item() == pytest.approx(2 / 3, abs=1e-6)
    assert torch.equal(out[~removed[:, None].expand_as(out)], img[~removed[:, None].expand_as(img)])


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_impute_constant_neighbours(solver: str) -> None:
    img = torch.full((2, 3, 5, 5), 0.3)
    img[:, :, 2, 2] = 0.9  # to be removed
    removed = torch.zeros(2, 5, 5, dtype=torch.bool)
    removed[:, 2, 2] = True
    removed[1, 0, 0] = True  # a corner with constant neighbours too
    out = linear_impute(img, removed, solver=solver)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_impute_two_coupled_unknowns(solver: str) -> None:
    # 3x4, unknowns (1,1) and (1,2); only (1,0) = 1 is non-zero.
    # x1 - x2/6 = 1/6, x2 - x1/6 = 0  ->  x1 = 6/35, x2 = 1/35
    img = torch.zeros(1, 1, 3, 4)
    img[0, 0, 1, 0] = 1.0
    removed = torch.zeros(1, 3, 4, dtype=torch.bool)
    removed[0, 1, 1:3] = True
    out = linear_impute(img, removed, solver=solver)
    assert out[0, 0, 1, 1].item() == pytest.approx(6 / 35, abs=1e-6)
    assert out[0, 0, 1, 2].item() == pytest.approx(1 / 35, abs=1e-6)


def test_impute_cg_matches_direct_on_large_holes() -> None:
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(3)
    img = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    maps = torch.rand(2, 32, 32, generator=g, dtype=torch.float64)
    maps[:, 4:28, 4:28] += 2  # one big hole
    removed = (pixel_ranks(maps) < 700).view(2, 32, 32)
    exact = linear_impute(img, removed, solver="direct")
    approx = linear_impute(img, removed, solver="cg", tol=1e-10, max_iter=2000)
    assert (exact - approx).abs().max().item() < 1e-6
    coarse = linear_impute(img, removed, solver="cg")  # defaults: well below ROAD's noise of 0.01
    assert (exact - coarse).abs().max().item() < 2e-3


@pytest.mark.slow  # importing pytorch_grad_cam takes seconds
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_impute_matches_pytorch_grad_cam_noise_free() -> None:
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    g = torch.Generator().manual_seed(4)
    img = torch.rand(3, 12, 12, generator=g)
    removed = torch.rand(12, 12, generator=g) < 0.6
    theirs = road.NoisyLinearImputer(noise=0.0)(img, (~removed).float())  # their mask: 1 = kept
    ours = linear_impute(img[None], removed[None])[0]
    assert torch.allclose(ours, theirs.clamp(0, 1), atol=1e-5)


def test_impute_rejects_fully_removed_image() -> None:
    with pytest.raises(ValueError, match="every pixel"):
        linear_impute(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


def road_case() -> MetricInputs:
    img = torch.zeros(1, 3, 4, 4)
    img[:, :, :, :2] = 1.0  # left half white
    m = torch.zeros(1, 4, 4)
    m[0, :, :2] = torch.tensor([[1.0, 0.9], [0.8, 0.7], [0.95, 0.85], [0.75, 0.65]])
    m[0, :, 2:] = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.15, 0.25], [0.35, 0.45]])
    return inputs(m, img, mean_all)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_road_exact_without_noise(solver: str) -> None:
    opts = dict(percentages=[0.5], noise_std=0.0, solver=solver)
    # MoRF 50 % removes the white half, imputed from black neighbours only -> p = 0
    assert get_metric("road_morf", **opts)(road_case()).tolist() == pytest.approx([0.0], abs=1e-6)
    # LeRF 50 % removes the black half, imputed as white -> p = 1
    assert get_metric("road_lerf", **opts)(road_case()).tolist() == pytest.approx([1.0], abs=1e-6)
    assert get_metric("road", **opts)(road_case()).tolist() == pytest.approx([1.0], abs=1e-6)


def test_road_curves_several_percentages() -> None:
    metric = get_metric("road_morf", percentages=[0.25, 0.5], noise_std=0.0)
    # 25 %: 4 white px removed, each imputed from the remaining mix; 50 %: all white removed -> 0
    curve = metric.road_curves(road_case(), morf=True)  # type: ignore[attr-defined]
    assert curve[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    assert 0.25 < curve[0, 0].item() < 0.5  # 4 white px kept out of 16, imputed ones in (0, 1)
    assert metric(road_case()).item() == pytest.approx(curve.mean().item())


def test_road_noise_seeded_and_chunk_invariant() -> None:
    case = road_case()
    case.images = case.images.expand(3, 3, 4, 4).contiguous()
    case.maps = case.maps.expand(3, 4, 4).contiguous()
    case.targets = torch.zeros(3, dtype=torch.long)
    a = get_metric("road_lerf", chunk_size=64)(case)
    b = get_metric("road_lerf", chunk_size=2)(case)
    assert torch.equal(a, b)
    clean = get_metric("road_lerf", noise_std=0.0)(case)
    assert not torch.equal(a, clean) and torch.allclose(a, clean, atol=0.02)
    assert not torch.equal(get_metric("road_lerf", seed=1)(case), a)


def test_road_validates_percentages() -> None:
    with pytest.raises(ValueError, match="percentages"):
        get_metric("road_morf", percentages=[0.5, 1.0])
    with pytest.raises(ValueError, match="solver"):
        get_metric("road", solver="magic")


# ------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", MODEL_METRICS)
def test_constant_and_zero_maps_defined(name: str) -> None:
    imgs = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    maps = torch.stack([torch.zeros(6, 6), torch.full((6, 6), 0.5)])
    out = get_metric(name)(inputs(maps, imgs, mean_all))
    assert out.shape == (2,) and out.dtype == torch.float32
    assert torch.isfinite(out).all(), out


@pytest.mark.parametrize("name", MODEL_METRICS)
def test_deterministic(name: str) -> None:
    g = torch.Generator().manual_seed(5)
    imgs = torch.rand(2, 3, 6, 6, generator=g)
    maps = torch.rand(2, 6, 6, generator=g)
    a = get_metric(name)(inputs(maps, imgs, mean_region))
    b = get_metric(name)(inputs(maps, imgs, mean_region))
    assert torch.equal(a, b)


# --------------------------------------------------------------------- a real model (shared data)


@pytest.mark.slow
@pytest.mark.shared
def test_deletion_insertion_on_mobilenet(mobilenet_weights, imagenet_dev) -> None:  # type: ignore[no-untyped-def]
    tv = pytest.importorskip("torchvision")
    from PIL import Image

    model = tv.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_weights, weights_only=True))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def prob(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = model((images - mean) / std)
        return logits.softmax(1).gather(1, targets[:, None]).squeeze(1)

    with open(imagenet_dev / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:1]  # one image: CPU forwards are the cost here
    imgs = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(imagenet_dev / r["image"]).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1) for r in rows]
    )
    targets = torch.tensor([int(r["label"]) for r in rows])
    h, w = imgs.shape[-2:]
    maps = torch.zeros(len(rows), h, w)
    for i, r in enumerate(rows):  # the annotated box as the map
        x0, y0, x1, y1 = (float(v) for v in r["boxes_xyxy_resized"].split(";")[0].split())
        maps[i, int(y0) : int(math.ceil(y1)), int(x0) : int(math.ceil(x1))] = 1.0
    inp = MetricInputs(maps=maps, images=imgs, targets=targets, score_fn=prob)
    deletion = get_metric("deletion", steps=2, chunk_size=4)
    curve = deletion.curves(inp)  # type: ignore[attr-defined]
    with torch.no_grad():
        p, p_black = prob(torch.cat([imgs, torch.zeros_like(imgs)]), targets.repeat(2)).chunk(2)
    assert torch.allclose(curve[:, 0], p, atol=1e-5) and torch.allclose(curve[:, -1], p_black, atol=1e-5)
    auc = deletion(inp)
    assert torch.allclose(auc, torch.trapezoid(curve, dx=0.5, dim=1))
