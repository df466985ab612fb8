"""The folded, channels-last copy that Score-CAM's masked forwards run on (sycam/_inference.py).

It must give the model's own scores (to float rounding), never touch the model, follow weight
changes, and step aside for models it cannot reproduce: hooks, untraceable or stateful forwards.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sycam import _inference
from sycam.capture import CaptureRequest, capture

REQ = CaptureRequest(layers=("block",), score_cam_layers=frozenset({"block"}))


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        self.gain = 1.0  # read by forward: a trace freezes it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block(x)).mean((2, 3))) * self.gain


class Untraceable(ConvBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.block(x))
        if y.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = y * 1.0
        return self.fc(y.mean((2, 3)))


def _model(cls: type[nn.Module] = ConvBN) -> nn.Module:
    torch.manual_seed(0)
    m = cls()
    with torch.no_grad():  # non-trivial running statistics, so that folding changes the weights
        for bn in (m.block[1], m.head[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def _S(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return capture(model, x, t, REQ, chunk_size=4).S["block"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    _inference.clear_cache()
    yield
    _inference.clear_cache()


def _plain_S(model: nn.Module, x: torch.Tensor, t: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    with monkeypatch.context() as mp:
        mp.setenv("SYCAM_FAST_FORWARD", "0")
        return _S(model, x, t)


def test_folded_copy_gives_the_models_scores_and_leaves_it_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x, t = torch.randn(2, 3, 10, 10), torch.tensor([1, 3])
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    fast = _S(model, x, t)
    entry = _inference._CACHE[model]
    assert entry.module is not None and entry.module is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in entry.module.modules())  # both batch norms folded
    assert torch.allclose(fast, _plain_S(model, x, t, monkeypatch), rtol=1e-5, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1], k  # values and layout unchanged
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_copy_follows_weight_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x, t = torch.randn(1, 3, 10, 10), torch.tensor([2])
    first = _S(model, x, t)
    with torch.no_grad():
        model.fc.weight.mul_(-2.0)  # in place, like an optimiser step
    second = _S(model, x, t)
    assert not torch.allclose(first, second)
    assert torch.allclose(second, _plain_S(model, x, t, monkeypatch), rtol=1e-5, atol=1e-5)


def test_frozen_python_state_is_caught_by_the_logit_check(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x, t = torch.randn(1, 3, 10, 10), torch.tensor([0])
    _S(model, x, t)  # builds the copy with gain 1.0 frozen in its graph
    model.gain = 3.0  # no tensor changed: the fingerprint cannot see it, the check on the logits does
    assert torch.allclose(_S(model, x, t), _plain_S(model, x, t, monkeypatch), rtol=1e-6, atol=1e-6)


def test_models_with_hooks_or_untraceable_forwards_run_as_they_are() -> None:
    model = _model()
    calls: list[int] = []
    handle = model.head.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        x, t = torch.randn(1, 3, 10, 10), torch.tensor([0])
        _S(model, x, t)
        assert model not in _inference._CACHE
        assert len(calls) > 2  # the user's hook saw the masked forwards too
    finally:
        handle.remove()
    odd = _model(Untraceable)
    _S(odd, torch.randn(1, 3, 10, 10), torch.tensor([1]))
    assert _inference._CACHE[odd].module is None


def test_cache_dies_with_the_model() -> None:
    import gc

    model = _model()
    _S(model, torch.randn(1, 3, 10, 10), torch.tensor([0]))
    assert len(_inference._CACHE) == 1
    del model
    gc.collect()
    assert len(_inference._CACHE) == 0


def test_explainer_passes_its_masked_batch_to_score_cam() -> None:
    from sycam.explainer import Explainer

    model = _model()
    x = torch.randn(2, 3, 10, 10)
    seen: list[int] = []
    real = _inference.fast_forward

    def spy(m, inputs, logits):
        run = real(m, inputs, logits)
        return lambda z: (seen.append(z.shape[0]), run(z))[1]

    import sycam.capture as cap

    cap_ff, cap.fast_forward = cap.fast_forward, spy
    try:
        a = Explainer(model, "scorecam", layers="block", masked_batch=5)(x, [0, 1])
    finally:
        cap.fast_forward = cap_ff
    assert seen and max(seen) == 5
    b = Explainer(model, "scorecam", layers="block")(x, [0, 1])
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="masked_batch must be a positive int"):
        Explainer(model, "scorecam", layers="block", masked_batch=0)


def test_faithfulness_score_fn_uses_the_checked_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from sycam.workbench import Workbench
    from sycam.data import open_dataset
    from sycam.models.bundle import ModelBundle

    model = _model()
    bundle = ModelBundle(module=model, normalize=lambda x: x - 0.5, input_size=(10, 10), num_classes=4,
                         default_layer="block", name="convbn", stage_layers=["block"])
    wb = Workbench(bundle, open_dataset("builtin", split="val", size=32, limit=4), REQ, progress=False)
    images, targets = torch.rand(5, 3, 10, 10), torch.tensor([0, 1, 2, 3, 0])
    got = wb.score_fn()(images, targets)
    assert _inference._CACHE[model].module is not None  # the copy was built and used
    with torch.no_grad():
        want = torch.softmax(model(images - 0.5), 1)[torch.arange(5), targets]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters()) and not model.training
