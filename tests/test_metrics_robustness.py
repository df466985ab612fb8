"""Robustness: correlation of maps under label-preserving noise."""
from __future__ import annotations

import math

import pytest
import torch

from sycam.metrics import MetricInputs, get_metric, pearson_maps


def const_prob(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.full((images.shape[0],), 0.9, device=images.device)


def fixed_maps() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 8, 8, generator=g)
    return (m - m.amin((1, 2), keepdim=True)) / (m.amax((1, 2), keepdim=True) - m.amin((1, 2), keepdim=True))


def make_inputs(maps: torch.Tensor, explain_fn, score_fn=const_prob, images=None) -> MetricInputs:  # type: ignore[no-untyped-def]
    b, h, w = maps.shape
    if images is None:
        images = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(1))
    return MetricInputs(maps=maps, images=images, targets=torch.arange(b), score_fn=score_fn, explain_fn=explain_fn)


def test_pearson_exact() -> None:
    a = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).view(1, 2, 2)
    assert pearson_maps(a, a).tolist() == pytest.approx([1.0])
    assert pearson_maps(a, 1 - a).tolist() == pytest.approx([-1.0])
    assert pearson_maps(a, 0.5 * a).tolist() == pytest.approx([1.0])
    b = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 2, 2)  # centred a = (-1.5,-.5,.5,1.5)/3, b = (.5,-.5,-.5,.5)
    assert pearson_maps(a, b).tolist() == pytest.approx([0.0], abs=1e-7)
    c = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 2, 2)
    # Σ a_c c_c = 1/2, Σ a_c² = 5/9, Σ c_c² = 3/4 -> r = (1/2) / sqrt(5/12) = sqrt(3/5)
    assert pearson_maps(a, c).tolist() == pytest.approx([math.sqrt(3 / 5)])


def test_pearson_constant_maps() -> None:
    a = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]).view(1, 2, 2)
    z = torch.zeros(1, 2, 2)
    assert pearson_maps(z, z).tolist() == [1.0]
    assert pearson_maps(a, z).tolist() == [0.0]
    assert pearson_maps(torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.1)).tolist() == [1.0]


def test_noise_ignoring_explainer_scores_one() -> None:
    maps = fixed_maps()
    by_target = maps.clone()
    out = get_metric("robustness")(make_inputs(maps, lambda x, t: by_target[t]))
    assert out.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_noise_sensitive_explainer_below_one_and_deterministic() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 8, 8, generator=g)

    def explain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # map = normalised grey image
        m = x.mean(1)
        return (m - m.amin((1, 2), keepdim=True)) / (m.amax((1, 2), keepdim=True) - m.amin((1, 2), keepdim=True))

    maps = explain(images, torch.arange(3))
    metric = get_metric("robustness", sigma=0.2)
    a = metric(make_inputs(maps, explain, images=images))
    assert ((a > 0.3) & (a < 1.0)).all(), a
    assert torch.equal(a, metric(make_inputs(maps, explain, images=images)))
    b = get_metric("robustness", sigma=0.2, chunk_size=5)(make_inputs(maps, explain, images=images))
    assert torch.allclose(a, b, atol=1e-6), "noise must not depend on the chunking"
    quiet = get_metric("robustness", sigma=0.0)(make_inputs(maps, explain, images=images))
    assert quiet.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


def test_label_preservation_filter() -> None:
    maps = fixed_maps()
    images = torch.full((3, 3, 8, 8), 0.5)

    def drops_on_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # 1 for the clean (constant) image, about 0.5 once noise of sigma 0.05 is added
        return (1 - 10 * x.flatten(1).std(1)).clamp(0, 1)

    inp = make_inputs(maps, lambda x, t: maps[t], score_fn=drops_on_noise, images=images)
    assert torch.isnan(get_metric("robustness", min_ratio=0.9)(inp)).all()  # nothing label-preserving
    assert get_metric("robustness", min_ratio=0.0)(inp).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    assert get_metric("robustness", min_ratio=0.3)(inp).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_constant_and_zero_maps() -> None:
    maps = torch.stack([torch.zeros(8, 8), torch.full((8, 8), 0.5), fixed_maps()[0]])
    zero_explainer = get_metric("robustness")(make_inputs(maps, lambda x, t: torch.zeros(x.shape[0], 8, 8)))
    # constant maps have no defined consistency (NaN); a varying map against zeros shares nothing
    values = zero_explainer.tolist()
    assert math.isnan(values[0]) and math.isnan(values[1]) and values[2] == 0.0


def test_explain_fn_output_checked() -> None:
    maps = fixed_maps()
    with pytest.raises(ValueError, match="explain_fn returned"):
        get_metric("robustness")(make_inputs(maps, lambda x, t: torch.zeros(x.shape[0], 4, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_metric("robustness")(make_inputs(maps, lambda x, t: torch.full((x.shape[0], 8, 8), 3.0)))
    with pytest.raises(ValueError, match="explain_fn"):
        get_metric("robustness")(MetricInputs(maps=maps, images=torch.rand(3, 3, 8, 8), targets=torch.arange(3), score_fn=const_prob))


def test_explain_fn_may_use_autograd() -> None:
    maps = fixed_maps()
    w = torch.ones(1, requires_grad=True)

    def grad_explainer(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((x * w).sum(), x)  # fails under no_grad
        return maps[t] * g[:, 0]

    assert get_metric("robustness")(make_inputs(maps, grad_explainer)).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
