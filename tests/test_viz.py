"""Figures: overlay arithmetic, grid layout and size, plots written, loud validation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sycam import viz


def grey(h: int, w: int, v: float = 0.2) -> torch.Tensor:
    return torch.full((3, h, w), v)


def test_overlay_of_zero_cam_is_blend_with_lowest_colour() -> None:
    # jet(0) = (0, 0, 0.5): 0.5*0.2 = 0.1 -> 25.5 -> 26 (rint, half to even); blue 0.1 + 0.25 -> 89.25 -> 89
    out = viz.overlay(grey(5, 7), torch.zeros(5, 7), alpha=0.5, cmap="jet")
    assert out.mode == "RGB" and out.size == (7, 5)
    assert np.array_equal(np.asarray(out), np.broadcast_to(np.array([26, 26, 89], np.uint8), (5, 7, 3)))


def test_overlay_of_full_cam_is_blend_with_highest_colour() -> None:
    # jet(1) = (0.5, 0, 0): red 0.1 + 0.25 -> 89, green and blue 0.1 -> 26
    out = np.asarray(viz.overlay(grey(3, 3), torch.ones(3, 3)))
    assert out[1, 1].tolist() == [89, 26, 26]


def test_overlay_alpha_extremes_and_orientation() -> None:
    img = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(0))
    cam = torch.zeros(4, 6)
    cam[:2, :3] = 1.0  # top-left quadrant hot
    assert np.array_equal(np.asarray(viz.overlay(img, cam, alpha=0.0)), np.rint(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    pure = np.asarray(viz.overlay(img, cam, alpha=1.0, cmap="gray"))
    hot = np.zeros((4, 6), bool)
    hot[:2, :3] = True
    assert (pure[hot] == 255).all() and (pure[~hot] == 0).all()  # rows = H (top first), columns = W


def test_overlay_validation() -> None:
    with pytest.raises(ValueError, match=r"cam is 4x4 but image is 5x7"):
        viz.overlay(grey(5, 7), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"cam must lie in \[0, 1\], got values in \[0, 2\]"):
        viz.overlay(grey(2, 2), torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="cam has NaN"):
        viz.overlay(grey(2, 2), torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"image must be \(3, H, W\)"):
        viz.overlay(torch.zeros(1, 2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        viz.overlay(grey(2, 2), torch.zeros(2, 2), cmap="nope")


def test_save_overlay_writes_the_overlay(tmp_path: Path) -> None:
    img, cam = torch.rand(3, 8, 9), torch.rand(8, 9)
    path = viz.save_overlay(tmp_path / "sub" / "o.png", img, cam)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(viz.overlay(img, cam)))


def test_overlay_grid_layout(tmp_path: Path) -> None:
    b, h, w = 2, 32, 32
    images = torch.stack([grey(h, w, 0.2), grey(h, w, 0.8)])
    maps = {"zero": torch.zeros(b, h, w), "one": torch.ones(b, h, w)}
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    path = viz.overlay_grid(images, maps, tmp_path / "g.png", row_labels=["a", "b"], masks=masks, cell=1.0, dpi=100)
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # 0.35 in of row labels + 3 columns of 1 in; 0.35 in of titles + 2 rows of 1 in, at 100 dpi
    assert px.shape == (235, 335, 3)

    def cell_pixel(row: int, col: int, dx: float = 0.5, dy: float = 0.5) -> list[int]:
        x = int((0.35 + col + dx) * 100)
        y = int((0.35 + row + dy) * 100)
        return px[y, x].tolist()

    # a point inside the image but away from the mask outline (dx=.2: image column 6 of 32)
    for row, v in enumerate((0.2, 0.8)):
        g = round(v * 255)
        assert all(abs(c - g) <= 2 for c in cell_pixel(row, 0, 0.2, 0.2))
        zero = [round((0.5 * v + 0.5 * c) * 255) for c in (0.0, 0.0, 0.5)]
        one = [round((0.5 * v + 0.5 * c) * 255) for c in (0.5, 0.0, 0.0)]
        assert all(abs(a - e) <= 2 for a, e in zip(cell_pixel(row, 1, 0.2, 0.2), zero))
        assert all(abs(a - e) <= 2 for a, e in zip(cell_pixel(row, 2, 0.2, 0.2), one))
    # the mask outline (white over black) crosses the cell at image column 8 of 32 (0.25 in)
    line = [cell_pixel(0, 1, dx, 0.5) for dx in np.linspace(0.2, 0.3, 11)]
    assert max(sum(p) for p in line) > 3 * 230
    without = viz.overlay_grid(images, maps, tmp_path / "h.png", row_labels=["a", "b"], cell=1.0, dpi=100)
    assert not np.array_equal(px, np.asarray(Image.open(without).convert("RGB")).astype(int))


def test_overlay_grid_validation(tmp_path: Path) -> None:
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"maps\['m'\] must be \(B, H, W\) = \(2, 8, 8\) like images, got \(2, 4, 4\)"):
        viz.overlay_grid(images, {"m": torch.zeros(2, 4, 4)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="row_labels has 1 entries for 2 images"):
        viz.overlay_grid(images, {"m": torch.zeros(2, 8, 8)}, tmp_path / "x.png", row_labels=["a"])
    with pytest.raises(ValueError, match=r"masks must be \(B, H, W\)"):
        viz.overlay_grid(images, {}, tmp_path / "x.png", masks=torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"maps\['m'\] must lie in \[0, 1\]"):
        viz.overlay_grid(images, {"m": torch.full((2, 8, 8), -1.0)}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_convergence_plot(tmp_path: Path) -> None:
    history = [{"n": n, "seconds": 0.5 * n, "best": 1 - math.exp(-n / 10)} for n in range(1, 50, 5)]
    path = viz.convergence_plot(history, tmp_path / "c.png", title="t")
    assert Image.open(path).size == (900, 340)
    with pytest.raises(ValueError, match=r"history\[1\] lacks key\(s\) \['seconds'\]"):
        viz.convergence_plot([{"n": 1, "seconds": 0, "best": 0}, {"n": 2, "best": 1}], tmp_path / "d.png")
    with pytest.raises(ValueError, match="history is empty"):
        viz.convergence_plot([], tmp_path / "d.png")


def test_heatmap_table(tmp_path: Path) -> None:
    vals = np.array([[0.1, 5.0, np.nan], [0.3, 2.0, np.nan]])
    path = viz.heatmap_table(vals, ["gradcam", "winsor"], ["iou", "deletion", "other"], tmp_path / "t.png", "title", higher_is_better=[True, False, True])
    w, h = Image.open(path).size
    assert w > 200 and h > 100
    with pytest.raises(ValueError, match="values is 2x3 but got 3 row names and 3 column names"):
        viz.heatmap_table(vals, ["a", "b", "c"], ["x", "y", "z"], tmp_path / "u.png", "t")
    with pytest.raises(ValueError, match="higher_is_better has 1 entries for 3 columns"):
        viz.heatmap_table(vals, ["a", "b"], ["x", "y", "z"], tmp_path / "u.png", "t", higher_is_better=[True])


def test_pareto_plot(tmp_path: Path) -> None:
    pts = np.array([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.2, 0.2]])
    a = viz.pareto_plot(pts, [0, 1, 2], ["energy_pg", "insertion"], tmp_path / "a.png", labels=["p", "q", "r"])
    b = viz.pareto_plot(pts, pts[:3], ["energy_pg", "insertion"], tmp_path / "b.png", labels=["p", "q", "r"])
    # indices and coordinates draw the same figure
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert Image.open(a).size == (460, 400)
    three = viz.pareto_plot(np.random.default_rng(0).random((10, 3)), [1, 2], ["a", "b", "c"], tmp_path / "c.png")
    assert Image.open(three).size == (1380, 400)  # three pairwise panels side by side
    with pytest.raises(ValueError, match=r"front indices must lie in \[0, 4\)"):
        viz.pareto_plot(pts, [7], ["x", "y"], tmp_path / "d.png")
    with pytest.raises(ValueError, match="axis_names has 1 names for 2 objectives"):
        viz.pareto_plot(pts, [0], ["x"], tmp_path / "d.png")
