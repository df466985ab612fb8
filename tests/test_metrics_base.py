"""Registry, declared directions/needs, and loud input validation common to every metric."""
from __future__ import annotations

import pytest
import torch

from sycam.metrics import METRICS, Metric, MetricInputs, get_metric, list_metrics

# the contract other modules (search, CLI, reports) rely on
EXPECTED = {
    "iou": (True, {"mask"}),
    "iou@0.5": (True, {"mask"}),
    "pointing_game": (True, {"mask"}),
    "energy_pg": (True, {"mask"}),
    "com_dist": (False, {"mask"}),
    "deletion": (False, {"model"}),
    "insertion": (True, {"model"}),
    "avg_drop": (False, {"model"}),
    "avg_increase": (True, {"model"}),
    "finer_drop": (True, {"model"}),
    "road_morf": (False, {"model"}),
    "road_lerf": (True, {"model"}),
    "road": (True, {"model"}),
    "robustness": (True, {"model", "explainer"}),
    "consistency": (True, {"explainer", "predict"}),
    "responsiveness": (True, {"explainer", "predict"}),
    "sparsity": (True, set()),
    "randomisation": (False, {"weights"}),
    "randomisation_top": (False, {"weights"}),
    "class_sensitivity": (False, {"explainer", "logits"}),
    "class_sensitivity_top2": (False, {"explainer", "logits"}),
}


def prob(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(1, 2, 3))


def full_inputs(b: int = 2, h: int = 8, w: int = 8) -> MetricInputs:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(b, h, w, generator=g)
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True))
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    masks[:, 2:5, 3:6] = True
    images = torch.rand(b, 3, h, w, generator=g)

    def predict(x: torch.Tensor) -> torch.Tensor:
        # class 1 once the image is far from every clean one: salt-and-pepper at 0.02 (mean |Δ| about
        # 0.01) keeps class 0, Gaussian σ = 0.2 (about 0.14) changes it
        far = (x[:, None] - images[None]).abs().mean((2, 3, 4)).amin(1) > 0.03
        return torch.stack([torch.zeros(len(x)), far.float()], 1)

    return MetricInputs(
        maps=maps,
        images=images,
        targets=torch.zeros(b, dtype=torch.long),
        masks=masks,
        score_fn=prob,
        explain_fn=lambda x, t: maps[0].expand(x.shape[0], h, w),
        logits=torch.randn(b, 3, generator=g),
        model=torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.Linear(2 * h * w, 3)),
        explain_with=lambda module, x, t: maps.flip(1),
        stage_layers=["0"],
        predict_fn=predict,
    )


def test_registry_lists_every_metric() -> None:
    assert set(list_metrics()) == set(EXPECTED)
    assert set(METRICS) | {"iou@0.5"} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_direction_needs_and_output(name: str) -> None:
    metric = get_metric(name)
    assert isinstance(metric, Metric) and metric.name == name
    assert (metric.higher_is_better, set(metric.needs)) == EXPECTED[name]
    doc = type(metric).__doc__ or ""
    assert "Edge cases" in doc or "Always defined" in doc, "every metric documents where it is undefined"
    out = metric(full_inputs())
    assert out.shape == (2,) and out.dtype == torch.float32 and out.device == torch.device("cpu")
    assert torch.isfinite(out).all()


def test_get_metric_options_and_unknown() -> None:
    assert get_metric("deletion", steps=8).steps == 8  # type: ignore[attr-defined]
    with pytest.raises(KeyError, match="unknown metric 'nope'.*deletion"):
        get_metric("nope")
    with pytest.raises(TypeError):
        get_metric("deletion", bogus=1)
    with pytest.raises(TypeError, match="no options"):
        get_metric("iou@0.5", bins=3)


@pytest.mark.parametrize(
    "name,field,match",
    [
        ("iou", "masks", r"metric 'iou' needs masks"),
        ("deletion", "score_fn", r"metric 'deletion' needs score_fn"),
        ("deletion", "images", r"metric 'deletion' needs images"),
        ("avg_drop", "targets", r"metric 'avg_drop' needs targets"),
        ("robustness", "explain_fn", r"metric 'robustness' needs explain_fn"),
    ],
)
def test_missing_needs_named(name: str, field: str, match: str) -> None:
    inp = full_inputs()
    setattr(inp, field, None)
    with pytest.raises(ValueError, match=match):
        get_metric(name)(inp)


def test_shape_mismatch_reports_both_shapes() -> None:
    inp = full_inputs()
    inp.masks = torch.zeros(2, 8, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 8, 7\).*\(2, 8, 8\)"):
        get_metric("iou")(inp)
    inp = full_inputs()
    inp.images = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 8, 8\)"):
        get_metric("deletion")(inp)
    inp = full_inputs()
    inp.targets = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"targets shape \(3,\)"):
        get_metric("deletion")(inp)


def test_bad_maps_and_dtypes() -> None:
    inp = full_inputs()
    with pytest.raises(ValueError, match="min-max normalised"):
        get_metric("sparsity")(MetricInputs(maps=inp.maps * 2))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        get_metric("sparsity")(MetricInputs(maps=inp.maps[0]))
    with pytest.raises(ValueError, match="non-finite"):
        get_metric("sparsity")(MetricInputs(maps=torch.full((1, 2, 2), float("nan"))))
    inp.masks = inp.masks.float()  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="masks must be bool"):
        get_metric("iou")(inp)
    inp = full_inputs()
    inp.targets = inp.targets.float()  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="integer"):
        get_metric("deletion")(inp)


def test_score_fn_output_checked() -> None:
    inp = full_inputs()
    inp.score_fn = lambda x, t: x.mean(dim=(1, 2, 3)) * 5  # logits-like
    with pytest.raises(ValueError, match="probabilities"):
        get_metric("avg_drop")(inp)
    inp.score_fn = lambda x, t: x.mean(dim=(1, 2))  # (N, 3)
    with pytest.raises(ValueError, match=r"score_fn returned shape"):
        get_metric("deletion")(inp)


def test_float64_maps_give_float32_scores() -> None:
    inp = full_inputs()
    inp.maps = inp.maps.double()
    inp.images = inp.images.double()  # type: ignore[union-attr]
    for name in ("iou", "energy_pg", "deletion", "sparsity"):
        assert get_metric(name)(inp).dtype == torch.float32


def test_validation_can_be_skipped_for_trusted_maps() -> None:
    from sycam.metrics import get_metric
    from sycam.metrics.base import MetricInputs

    maps = torch.full((1, 4, 4), 2.0)  # outside [0, 1]: a caller-side bug the checks catch
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    metric = get_metric("energy_pg")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(MetricInputs(maps=maps, masks=masks))
    # trusted callers (the search, on compiler output) skip the checks; the value is still computed
    assert metric(MetricInputs(maps=maps, masks=masks), validate=False).tolist() == [0.5]
