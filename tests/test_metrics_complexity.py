"""Sparsity (Gini index) with hand-computed values."""
from __future__ import annotations

import pytest
import torch

from sycam.metrics import MetricInputs, get_metric, gini


def test_gini_hand_values() -> None:
    # [0,0,1,1]: 1 - 2*(0.5*1.5/4 + 0.5*0.5/4) = 0.5
    # [1,2,3,4]: 1 - 2*(1*3.5 + 2*2.5 + 3*1.5 + 4*0.5)/(10*4) = 0.25 (= mean |xi - xj| / (2 mean))
    v = torch.tensor([[0.0, 1.0, 0.0, 1.0], [4.0, 1.0, 3.0, 2.0]])
    assert gini(v).tolist() == pytest.approx([0.5, 0.25])


def test_sparsity_uniform_onehot_zero() -> None:
    one_hot = torch.zeros(4, 4)
    one_hot[1, 2] = 1.0
    maps = torch.stack([torch.full((4, 4), 0.7), one_hot, torch.zeros(4, 4)])
    out = get_metric("sparsity")(MetricInputs(maps=maps))
    assert out.tolist() == pytest.approx([0.0, 1 - 1 / 16, 0.0], abs=1e-6)
    assert out.dtype == torch.float32


def test_sparsity_scale_invariant_and_ordering() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(1, 6, 6, generator=g)
    a = get_metric("sparsity")(MetricInputs(maps=m))
    b = get_metric("sparsity")(MetricInputs(maps=m * 0.5))
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    peaked = m**4  # the same ranking, more concentrated
    assert get_metric("sparsity")(MetricInputs(maps=peaked)).item() > a.item()


def test_gini_rejects_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        gini(torch.tensor([[-1.0, 1.0]]))
