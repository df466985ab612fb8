"""Tests for sycam.capture: exact A/G/Y on hand-built models, state restoration, in-place safety,
memory, and S / D / finer against pytorch-grad-cam and direct loops."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sycam.capture import CaptureRequest, Captures, capture, finer_comparisons, target_scores
from sycam.lang.ast import ScoreSpec


# ----------------------------------------------------------------------------- hand-built models


class Linear1x1(nn.Module):
    """conv 1x1 (3 -> 2, no bias) -> global mean -> fc (2 -> 3): Y is linear in A."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            # A0 = x0, A1 = x1 + x2
            self.conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0], [0.5, -2.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.conv(x))))


def hand_inputs() -> torch.Tensor:
    x0 = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]]
    )
    return torch.stack([x0, 2 * x0])  # (2, 3, 2, 2)


class BNReLU(nn.Module):
    """conv -> bn -> ReLU(inplace): the bn output is rectified in place after its hook."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, k)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
            self.bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
            self.bn.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.7]))
            self.bn.bias.copy_(torch.tensor([0.0, 0.2, -0.3, 0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class Tiny(nn.Module):
    """A small CNN with a full-resolution layer ``relu1`` and a half-resolution layer ``relu2``."""

    def __init__(self, k: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 4, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(4, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean(dim=(2, 3)))


def seeded(cls: type[nn.Module], seed: int = 0, **kw: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kw).eval()


# ----------------------------------------------------------------------------- exact values


def test_exact_logit_capture() -> None:
    model = Linear1x1().eval()
    x = hand_inputs()
    req = CaptureRequest(layers=("conv",), grad_layers=frozenset({"conv"}))
    c = capture(model, x, torch.tensor([0, 2]), req)
    assert isinstance(c, Captures)
    expected_A = torch.tensor(
        [
            [[[1.0, 2.0], [3.0, 4.0]], [[2.0, 1.0], [0.0, 3.0]]],
            [[[2.0, 4.0], [6.0, 8.0]], [[4.0, 2.0], [0.0, 6.0]]],
        ]
    )
    assert torch.equal(c.A["conv"], expected_A)
    # image 0, class 0: 1 * mean(A0) + 2 * mean(A1) + 0 = 2.5 + 3 = 5.5
    # image 1, class 2: 0.5 * 5 - 2 * 3 - 1 = -4.5
    assert torch.equal(c.Y, torch.tensor([5.5, -4.5]))
    # dY/dA[c] = W[t, c] / (h * w), h * w = 4
    expected_G = torch.tensor([[0.25, 0.5], [0.125, -0.5]]).view(2, 2, 1, 1).expand(2, 2, 2, 2)
    assert torch.equal(c.G["conv"], expected_G)
    # image 0: class 1: -2.5 + 1.5 + 1 = 0, class 2: 1.25 - 3 - 1 = -2.75; image 1 doubles the means
    assert torch.equal(c.logits, torch.tensor([[5.5, 0.0, -2.75], [11.0, -1.0, -4.5]]))
    assert c.input_size == (2, 2)
    assert c.S == {} and c.D == {}
    for t in [*c.A.values(), *c.G.values(), c.Y, c.logits]:
        assert not t.requires_grad


def test_exact_prob_gradient() -> None:
    model = Linear1x1().eval()
    x = hand_inputs()
    targets = torch.tensor([1, 0])
    req = CaptureRequest(layers=("conv",), grad_layers=frozenset({"conv"}), score=ScoreSpec(kind="prob"))
    c = capture(model, x, targets, req)
    p = torch.softmax(c.logits, dim=1)
    assert torch.allclose(c.Y, p[torch.arange(2), targets])
    # d p_t / d A_c = p_t (W[t, c] - sum_j p_j W[j, c]) / (h * w)
    W = model.fc.weight.detach()
    for b, t in enumerate(targets.tolist()):
        g = p[b, t] * (W[t] - p[b] @ W) / 4
        assert torch.allclose(c.G["conv"][b], g.view(2, 1, 1).expand(2, 2, 2), atol=1e-7)


def test_activation_only_layers_and_no_grad_forward() -> None:
    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    both = capture(model, x, torch.tensor([1, 3]), CaptureRequest(layers=("relu1", "relu2"), grad_layers=frozenset({"relu2"})))
    assert set(both.A) == {"relu1", "relu2"} and set(both.G) == {"relu2"}
    assert both.A["relu1"].shape == (2, 5, 8, 8) and both.A["relu2"].shape == (2, 4, 4, 4)
    only_a = capture(model, x, torch.tensor([1, 3]), CaptureRequest(layers=("relu1",)))
    assert only_a.G == {}
    assert torch.equal(only_a.A["relu1"], both.A["relu1"])
    assert torch.equal(only_a.Y, both.Y)
    # reference: the layer outputs computed directly
    assert torch.equal(both.A["relu1"], torch.relu(model.conv1(x)).detach())


def test_extra_fields_are_hooked_too() -> None:
    model = seeded(Tiny)
    c = capture(model, torch.randn(1, 3, 8, 8), torch.tensor([0]), CaptureRequest(layers=(), grad_layers=frozenset({"relu2"})))
    assert set(c.A) == {"relu2"} and set(c.G) == {"relu2"}


def test_take_keeps_the_chosen_images_of_every_field() -> None:
    b = 4
    ramp = lambda *shape: torch.arange(b * int(np.prod(shape)), dtype=torch.float32).view(b, *shape)  # noqa: E731
    caps = Captures(A={"a": ramp(2, 3, 3)}, G={"a": -ramp(2, 3, 3)}, S={"s": ramp(2)}, D={"d": ramp(5)},
                    Y=torch.tensor([10.0, 11.0, 12.0, 13.0]), logits=ramp(3), input_size=(9, 9))
    assert caps.take(slice(0, b)) is caps and caps.take(slice(0, 99)) is caps
    for chosen, rows in [(slice(1, 3), [1, 2]), (torch.tensor([3, 0]), [3, 0]),
                         (torch.tensor([True, False, False, True]), [0, 3])]:
        part = caps.take(chosen)
        assert part.Y.tolist() == [10.0 + r for r in rows] and part.input_size == (9, 9)
        for got, full in [(part.A["a"], caps.A["a"]), (part.G["a"], caps.G["a"]), (part.S["s"], caps.S["s"]),
                          (part.D["d"], caps.D["d"]), (part.logits, caps.logits)]:
            assert torch.equal(got, full[rows])


def test_gradients_only_as_deep_as_needed() -> None:
    """Nothing before the earliest grad layer is differentiated: a backward hook on conv1 never fires."""
    model = seeded(Tiny)
    fired: list[str] = []
    h = model.conv1.register_full_backward_hook(lambda *a: fired.append("conv1"))
    try:
        capture(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), CaptureRequest(layers=("relu2",), grad_layers=frozenset({"relu2"})))
        assert fired == []
        capture(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), CaptureRequest(layers=("relu1",), grad_layers=frozenset({"relu1"})))
        assert fired == []  # relu1 is after conv1: still no gradient into conv1
    finally:
        h.remove()


def test_under_caller_no_grad_inference_mode_and_frozen() -> None:
    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([2, 4])
    req = CaptureRequest(layers=("relu1", "relu2"), grad_layers=frozenset({"relu1", "relu2"}))
    ref = capture(model, x, t, req)
    with torch.no_grad():
        c1 = capture(model, x, t, req)
    with torch.inference_mode():
        xi = x.clone()
        c2 = capture(model, xi, t, req)
    for p in model.parameters():
        p.requires_grad_(False)
    c3 = capture(model, x, t, req)
    assert all(not p.requires_grad for p in model.parameters())
    for c in (c1, c2, c3):
        for n in ("relu1", "relu2"):
            assert torch.allclose(c.G[n], ref.G[n], atol=1e-7)
            assert torch.equal(c.A[n], ref.A[n])
        assert torch.allclose(c.Y, ref.Y)
    assert ref.G["relu1"].abs().sum() > 0


def test_partially_frozen_model_gets_gradients_before_trainable_part() -> None:
    model = seeded(Tiny)
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 8, 8)
    c = capture(model, x, torch.tensor([3]), CaptureRequest(layers=("relu1",), grad_layers=frozenset({"relu1"})))
    a = torch.relu(model.conv1(x)).detach().requires_grad_(True)
    y = model.fc(torch.relu(model.conv2(a)).mean(dim=(2, 3)))[0, 3]
    (g,) = torch.autograd.grad(y, a)
    assert torch.allclose(c.G["relu1"], g, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- state restoration


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "training": [m.training for m in model.modules()],
        "fwd": [dict(m._forward_hooks) for m in model.modules()],
        "fwd_pre": [dict(m._forward_pre_hooks) for m in model.modules()],
        "bwd": [dict(m._backward_hooks) for m in model.modules()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "req": [p.requires_grad for p in model.parameters()],
    }


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    ga, gb = a["grads"], b["grads"]
    assert isinstance(ga, list) and isinstance(gb, list)
    same_grads = all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(ga, gb))
    return same_grads and all(a[k] == b[k] for k in ("training", "fwd", "fwd_pre", "bwd", "grad_ids", "req"))


def test_model_state_restored_after_success_and_after_error() -> None:
    model = seeded(Tiny)
    model.train()
    model.conv2.eval()  # mixed flags must come back one by one
    model.fc.weight.requires_grad_(False)
    seen: list[int] = []
    handle = model.relu2.register_forward_hook(lambda m, i, o: seen.append(1))
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 7.0)
    model.conv2.bias.grad = torch.arange(4.0)
    before = _snapshot(model)
    x = torch.randn(2, 3, 8, 8)
    req = CaptureRequest(
        layers=("relu1", "relu2"),
        grad_layers=frozenset({"relu1", "relu2"}),
        score_cam_layers=frozenset({"relu2"}),
        ablation_layers=frozenset({"relu2"}),
    )
    train_flags_seen: list[bool] = []
    h2 = model.conv1.register_forward_hook(lambda m, i, o: train_flags_seen.append(m.training))
    c = capture(model, x, torch.tensor([0, 1]), req, chunk_size=3)
    h2.remove()
    assert train_flags_seen and not any(train_flags_seen)  # capture ran in eval mode
    assert _same(before, _snapshot(model))
    assert len(seen) == 1 + 3 + 3  # the user's hook still ran: main forward + 3 S and 3 D chunk forwards
    assert c.G["relu1"].abs().sum() > 0
    # an error inside the forward (fc's output is 2-D) leaves everything as it was too
    with pytest.raises(ValueError, match=r"module 'fc' \(Linear\) returned a tensor of shape \(2, 6\)"):
        capture(model, x, torch.tensor([0, 1]), CaptureRequest(layers=("relu1", "fc"), grad_layers=frozenset({"relu1"})))
    assert _same(before, _snapshot(model))
    assert model.training and not model.conv2.training
    handle.remove()


# ----------------------------------------------------------------------------- validation


def test_validation_errors() -> None:
    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0, 1])
    req = CaptureRequest(layers=("relu1",))
    with pytest.raises(KeyError, match=r"no module named 'relu_1'.*'relu1'"):
        capture(model, x, t, CaptureRequest(layers=("relu_1",)))
    with pytest.raises(ValueError, match=r"inputs must be a \(B, 3, H, W\) tensor"):
        capture(model, x[0], t, req)
    with pytest.raises(TypeError, match="inputs must be float"):
        capture(model, (x * 10).long(), t, req)
    with pytest.raises(ValueError, match=r"targets: expected shape \(2,\)"):
        capture(model, x, torch.tensor([0, 1, 2]), req)
    with pytest.raises(TypeError, match="integer class indices"):
        capture(model, x, torch.tensor([0.0, 1.0]), req)
    with pytest.raises(ValueError, match=r"class indices \[6\] out of range for a model with 6 classes"):
        capture(model, x, torch.tensor([0, 6]), req)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        capture(model, x, t, req, chunk_size=0)
    with pytest.raises(ValueError, match="unknown kind 'logits'"):
        capture(model, x, t, CaptureRequest(layers=("relu1",), score=ScoreSpec(kind="logits")))
    with pytest.raises(TypeError, match="got the string"):
        CaptureRequest(layers="relu1")  # type: ignore[arg-type]


class GapModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class PairModule(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class WithPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = PairModule()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(x)
        return self.fc((a + b).mean(dim=(2, 3)))


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(2).transpose(1, 2))  # (B, N, 4)
        return self.fc(tokens.mean(dim=1))


class SharedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


class MapOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_layer_and_model_output_errors() -> None:
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"module 'pair' \(PairModule\) returned a tuple"):
        capture(WithPair(), x, t, CaptureRequest(layers=("pair",)))
    with pytest.raises(ValueError, match=r"module 'embed' \(Linear\) returned a tensor of shape \(2, 16, 4\)"):
        capture(Tokens(), x, t, CaptureRequest(layers=("embed",), grad_layers=frozenset({"embed"})))
    with pytest.raises(ValueError, match=r"'relu' ran more than once"):
        capture(SharedReLU(), x, t, CaptureRequest(layers=("relu",)))
    with pytest.raises(ValueError, match=r"float logits of shape \(B, K\) = \(2, K\), got \(2, 2, 4, 4\)"):
        capture(MapOut(), x, t, CaptureRequest(layers=("conv",)))
    ok = capture(GapModel(), x, t, CaptureRequest(layers=("conv",), grad_layers=frozenset({"conv"})))
    assert ok.G["conv"].shape == (2, 2, 4, 4)


# ----------------------------------------------------------------------------- in-place safety


def test_inplace_relu_after_hooked_bn() -> None:
    from sycam.capture import _CLONE_LAYERS

    model = seeded(BNReLU)
    x = torch.randn(2, 3, 6, 6)
    t = torch.tensor([1, 4])
    req = CaptureRequest(layers=("bn",), grad_layers=frozenset({"bn"}))
    c = capture(model, x, t, req)
    # reference: bn output computed directly, gradient through relu -> mean -> fc
    a = model.bn(model.conv(x)).detach()
    assert (a < 0).any()  # so an in-place ReLU would have changed it
    assert torch.equal(c.A["bn"], a)
    W = model.fc.weight.detach()
    g = (a > 0).float() * W[t].view(2, 4, 1, 1) / 36
    assert torch.allclose(c.G["bn"], g, atol=1e-7)
    # weights are frozen during capture, so bn's output is a fresh leaf and the in-place ReLU acts on
    # the copy the hook hands on: no second forward was needed
    assert "bn" not in _CLONE_LAYERS.get(model, set())
    # without gradients the hook hands the output itself on: the ReLU changes it, capture notices,
    # runs the forward again with a clone, and remembers to clone at once next time
    plain = CaptureRequest(layers=("bn",))
    a_only = capture(model, x, t, plain)
    assert torch.equal(a_only.A["bn"], a)
    assert "bn" in _CLONE_LAYERS[model]
    again = capture(model, x, t, req)
    assert torch.equal(again.A["bn"], c.A["bn"]) and torch.allclose(again.G["bn"], c.G["bn"])


@pytest.mark.slow
def test_densenet121_features_inplace() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.densenet121().eval()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([3, 700])
    names = ("features", "features.norm5", "features.denseblock4.denselayer16.conv2")
    c = capture(model, x, t, CaptureRequest(layers=names, grad_layers=frozenset(names)))
    with torch.no_grad():
        f = model.features(x)
    assert (f < 0).any()
    assert torch.allclose(c.A["features"], f, atol=1e-6) and torch.allclose(c.A["features.norm5"], f, atol=1e-6)
    fa = f.clone().requires_grad_(True)
    logits = model.classifier(torch.flatten(F.adaptive_avg_pool2d(torch.relu(fa), 1), 1))
    (g,) = torch.autograd.grad(logits[torch.arange(2), t].sum(), fa)
    assert torch.allclose(c.G["features"], g, atol=1e-6)
    assert torch.allclose(c.G["features.norm5"], g, atol=1e-6)
    assert torch.allclose(c.Y, logits[torch.arange(2), t].detach(), atol=1e-5)
    assert c.G["features.denseblock4.denselayer16.conv2"].shape == (2, 32, 2, 2)


@pytest.mark.slow
def test_resnet50_and_mobilenet_v2_closed_form_gradients() -> None:
    """After ``layer4``/``features.18`` both nets are global mean + linear, so dY/dA = W[t] / (h w)."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([10, 999])
    resnet = tv.models.resnet50().eval()
    for model, layer, fc in (
        (resnet, "layer4", "fc"),
        (tv.models.mobilenet_v2().eval(), "features.18", "classifier.1"),
    ):
        extra = "layer4.2.bn3" if layer == "layer4" else "features.17.conv.3"  # followed by `+= identity` / add
        c = capture(model, x, t, CaptureRequest(layers=(layer, extra), grad_layers=frozenset({layer, extra})))
        W = dict(model.named_modules())[fc].weight.detach()
        A = c.A[layer]
        assert A.shape[2:] == (2, 2)
        expected = W[t].view(2, -1, 1, 1).expand_as(A) / 4
        assert torch.allclose(c.G[layer], expected, atol=1e-7)
        assert c.G[extra].shape == c.A[extra].shape and c.G[extra].abs().sum() > 0
        with torch.no_grad():
            assert torch.allclose(c.logits, model(x), atol=1e-4)
    # ResNet's bn3 output is modified by `out += identity`: A must be the bn3 output itself
    c = capture(resnet, x, t, CaptureRequest(layers=("layer4.2.bn3",)))
    with torch.no_grad():
        h = resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))))
        h = resnet.layer4[1](resnet.layer4[0](h))
        blk = resnet.layer4[2]
        bn3 = blk.bn3(blk.conv3(blk.relu(blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(h))))))))
    assert (bn3 < 0).any()
    assert torch.allclose(c.A["layer4.2.bn3"], bn3, atol=1e-5)


# ----------------------------------------------------------------------------- memory


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))  # type(): no proxy lookups


def test_no_memory_growth_over_repeated_calls() -> None:
    model = seeded(BNReLU)  # exercises the in-place clone path too
    x = torch.randn(2, 3, 6, 6)
    t = torch.tensor([0, 1])
    req = CaptureRequest(
        layers=("conv", "bn"), grad_layers=frozenset({"conv", "bn"}), score_cam_layers=frozenset({"bn"}), ablation_layers=frozenset({"bn"})
    )
    for _ in range(3):
        capture(model, x, t, req)
    base = _live_tensors()
    for _ in range(30):
        c = capture(model, x, t, req)
    del c
    assert _live_tensors() == base
    # no reference cycles: without the cycle collector, a call frees everything it made
    gc.disable()
    try:
        gc.collect()
        n0 = len(gc.get_objects())
        for _ in range(5):
            capture(model, x, t, req)
        assert gc.collect() == 0
        assert len(gc.get_objects()) - n0 < 50
    finally:
        gc.enable()


# ----------------------------------------------------------------------------- scores


def _grad_cam_finer_target(logits: torch.Tensor, t: int, k: int, alpha: float):  # type: ignore[no-untyped-def]
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    # pytorch-grad-cam's FinerCAM: classes sorted by |y_j - y_t|, index 0 is t itself
    order = np.argsort(np.abs(logits.numpy() - logits[t].item()))
    return FinerWeightedTarget(int(order[0]), [int(order[i]) for i in range(1, k + 1)], alpha)


def test_finer_score_matches_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    torch.manual_seed(3)
    logits = torch.randn(5, 12) * 3
    targets = torch.tensor([0, 4, 11, 7, 2])
    for k, alpha in ((3, 1.0), (2, 0.6), (20, 1.5)):
        ours = target_scores(logits, targets, ScoreSpec(kind="finer", k=k, alpha=alpha))
        kk = min(k, 11)
        theirs = torch.stack([_grad_cam_finer_target(logits[b], int(targets[b]), kk, alpha)(logits[b]) for b in range(5)])
        assert torch.allclose(ours, theirs, atol=1e-6)
    comps = finer_comparisons(torch.tensor([[0.0, 5.0, 4.0, 9.0, 5.5]]), torch.tensor([1]), 3)
    assert comps.tolist() == [[4, 2, 3]]  # |5.5-5| < |4-5| < |9-5| < |0-5|
    with pytest.raises(ValueError, match="at least 2 classes"):
        target_scores(torch.randn(2, 1), torch.tensor([0, 0]), ScoreSpec(kind="finer"))


def test_logit_and_prob_scores() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([2, 1])
    assert torch.equal(target_scores(logits, t, ScoreSpec()), torch.tensor([3.0, 0.0]))
    p = target_scores(logits, t, ScoreSpec(kind="prob"))
    assert torch.allclose(p, torch.tensor([np.exp(3) / (np.exp(1) + np.exp(2) + np.exp(3)), 1 / 3], dtype=torch.float32))


def test_finer_gradient_matches_pytorch_grad_cam_target() -> None:
    pytest.importorskip("pytorch_grad_cam")
    model = seeded(Tiny, k=8)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 5])
    spec = ScoreSpec(kind="finer", k=3, alpha=0.8)
    c = capture(model, x, t, CaptureRequest(layers=("relu2",), grad_layers=frozenset({"relu2"}), score=spec))
    a = torch.relu(model.conv2(torch.relu(model.conv1(x)))).detach().requires_grad_(True)
    logits = model.fc(a.mean(dim=(2, 3)))
    tgts = [_grad_cam_finer_target(logits[b].detach(), int(t[b]), 3, 0.8) for b in range(2)]
    y = torch.stack([tg(logits[b]) for b, tg in enumerate(tgts)])
    (g,) = torch.autograd.grad(y.sum(), a)
    assert torch.allclose(c.Y, y.detach(), atol=1e-6)
    assert torch.allclose(c.G["relu2"], g, atol=1e-7)


# ----------------------------------------------------------------------------- Score-CAM S


def test_score_cam_matches_pytorch_grad_cam_weights() -> None:
    """At a full-resolution layer the upsampling is the identity for both (align_corners differs)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([2, 5])
    c = capture(model, x, t, CaptureRequest(layers=("relu1",), score_cam_layers=frozenset({"relu1"})), chunk_size=4)
    assert c.S["relu1"].shape == (2, 5)
    cam = ScoreCAM(model, [model.relu1])
    try:
        cam.batch_size = 4
        weights = cam.get_cam_weights(x, model.relu1, [ClassifierOutputTarget(int(i)) for i in t], c.A["relu1"].numpy(), None)
    finally:
        cam.activations_and_grads.release()
    assert np.allclose(torch.softmax(c.S["relu1"], dim=1).numpy(), weights, atol=1e-5)


def test_score_cam_against_direct_loop_at_lower_resolution() -> None:
    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0, 3])
    for spec in (ScoreSpec(), ScoreSpec(kind="prob"), ScoreSpec(kind="finer", k=2, alpha=1.0)):
        req = CaptureRequest(layers=("relu2",), score_cam_layers=frozenset({"relu2"}), score=spec)
        c = capture(model, x, t, req, chunk_size=3)
        c1 = capture(model, x, t, req, chunk_size=1)
        assert torch.allclose(c.S["relu2"], c1.S["relu2"], atol=1e-6)
        with torch.no_grad():
            A = torch.relu(model.conv2(torch.relu(model.conv1(x))))
            comps = finer_comparisons(model(x), t, 2)
            for b in range(2):
                for k in range(4):
                    m = F.interpolate(A[b : b + 1, k : k + 1], size=(8, 8), mode="bilinear", align_corners=False)
                    m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
                    y = model(x[b : b + 1] * m)
                    if spec.kind == "logit":
                        s = y[0, t[b]]
                    elif spec.kind == "prob":
                        s = torch.softmax(y, 1)[0, t[b]]
                    else:  # fixed comparison classes from the unmasked image
                        w = torch.softmax(y[0, comps[b]], 0)
                        s = (w * (y[0, t[b]] - y[0, comps[b]])).sum()
                    assert torch.allclose(c.S["relu2"][b, k], s, atol=1e-5), (spec.kind, b, k)


def test_score_cam_constant_channel_masks_everything() -> None:
    model = seeded(Tiny)
    with torch.no_grad():
        model.conv1.weight[0].zero_()
        model.conv1.bias[0] = 1.0  # channel 0 of relu1 is constant 1
    x = torch.randn(1, 3, 8, 8)
    c = capture(model, x, torch.tensor([2]), CaptureRequest(layers=("relu1",), score_cam_layers=frozenset({"relu1"})))
    with torch.no_grad():
        zero_img = model(torch.zeros_like(x))[0, 2]
    assert torch.allclose(c.S["relu1"][0, 0], zero_img)


# ----------------------------------------------------------------------------- Ablation-CAM D


def test_ablation_against_direct_loop_and_pytorch_grad_cam() -> None:
    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 4])
    c = capture(model, x, t, CaptureRequest(layers=("relu2",), ablation_layers=frozenset({"relu2"})), chunk_size=3)
    assert c.D["relu2"].shape == (2, 4)
    with torch.no_grad():
        for b in range(2):
            for k in range(4):
                a = torch.relu(model.conv2(torch.relu(model.conv1(x[b : b + 1])))).clone()
                a[:, k] = 0
                s = model.fc(a.mean(dim=(2, 3)))[0, t[b]]
                assert torch.allclose(c.D["relu2"][b, k], c.Y[b] - s, atol=1e-5)
    # pytorch-grad-cam's weights are (Y - score_k) / Y; it also zeroes when the layer's min is 0
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    assert c.A["relu2"].min() == 0
    cam = AblationCAM(model, [model.relu2], batch_size=4)
    try:
        weights = cam.get_cam_weights(x, model.relu2, [ClassifierOutputTarget(int(i)) for i in t], c.A["relu2"], None)
    finally:
        cam.activations_and_grads.release()
    assert np.allclose((c.D["relu2"] / c.Y[:, None]).numpy(), weights, atol=1e-4)


def test_ablation_on_inplace_modified_layer() -> None:
    model = seeded(BNReLU)
    x = torch.randn(1, 3, 6, 6)
    c = capture(model, x, torch.tensor([2]), CaptureRequest(layers=("bn",), ablation_layers=frozenset({"bn"})))
    with torch.no_grad():
        a = model.bn(model.conv(x))
        for k in range(4):
            z = a.clone()
            z[:, k] = 0
            s = model.fc(torch.relu(z).mean(dim=(2, 3)))[0, 2]
            assert torch.allclose(c.D["bn"][0, k], c.Y[0] - s, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_capture_stays_on_device() -> None:
    model = seeded(BNReLU).cuda()
    x = torch.randn(2, 3, 6, 6, device="cuda")
    req = CaptureRequest(layers=("bn",), grad_layers=frozenset({"bn"}), score_cam_layers=frozenset({"bn"}), ablation_layers=frozenset({"bn"}))
    c = capture(model, x, torch.tensor([0, 1]), req)
    for tsr in (c.A["bn"], c.G["bn"], c.S["bn"], c.D["bn"], c.Y, c.logits):
        assert tsr.device.type == "cuda"
    ref = capture(model.cpu(), x.cpu(), torch.tensor([0, 1]), req)
    assert torch.allclose(c.G["bn"].cpu(), ref.G["bn"], atol=1e-5)
    assert torch.allclose(c.S["bn"].cpu(), ref.S["bn"], atol=1e-4)
    with pytest.raises(ValueError, match="the model is on cpu but the inputs are on cuda"):
        capture(model, x, torch.tensor([0, 1]), req)


def test_autograd_records_only_from_the_hooked_layer_on() -> None:
    """Weights are frozen for the call: nothing before relu2 is recorded, and no convolution keeps
    its input for a weight gradient (only what d score / d relu2 needs is saved)."""
    model = seeded(Tiny)
    x = torch.randn(2, 3, 8, 8)
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c = capture(model, x, torch.tensor([0, 1]), CaptureRequest(layers=("relu2",), grad_layers=frozenset({"relu2"})))
    assert (2, 3, 8, 8) not in saved and (2, 5, 8, 8) not in saved  # conv1/conv2 inputs
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        a = model.relu2(model.conv2(model.relu1(model.conv1(x))))
    g = model.fc.weight[torch.tensor([0, 1])].view(2, 4, 1, 1).expand_as(a) / 16
    assert torch.allclose(c.G["relu2"], g, atol=1e-7)
