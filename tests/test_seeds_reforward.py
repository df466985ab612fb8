"""Recipro-CAM (terminal R) and UnionCAM (confidence/gain, threshold_hw, select_max) against
independent plain-torch computations of their authors' formulas, on tiny hand-built models; and
both reference programs on ResNet-50 (random weights) and MobileNetV2 (ImageNet weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import IMAGENET_DEV, MOBILENET_WEIGHTS, need
from sycam.capture import CaptureRequest, capture
from sycam.compile import compile_program
from sycam.explainer import Explainer
from sycam.programs import list_programs, load
from sycam.reforward import _NEEDS_COPIES


class Net(nn.Module):
    """conv1 -> relu1 -> conv2 (stride 2) -> relu2 -> global mean -> fc; ``tail`` is the part after relu2."""

    def __init__(self, concat: bool = False) -> None:
        super().__init__()
        self.concat = concat  # DenseNet-like: the head sees relu1's output concatenated with relu2's
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3, padding=1, stride=1 if concat else 2), nn.ReLU()
        self.fc = nn.Linear(9 if concat else 5, 3)

    def early(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.conv1(x))

    def tail(self, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.concat:
            a = torch.cat([e, a], 1)  # no broadcasting: one image's e cannot meet n mosaic maps
        return self.fc(a.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.early(x)
        return self.tail(self.relu2(self.conv2(e)), e)


#: the request field and the terminal of each Recipro-CAM kernel
_RECIPRO = {"gaussian": "reciprocal_layers", "onehot": "reciprocal_onehot_layers"}
_TERMINAL = {"gaussian": "R", "onehot": "R1"}


def _net(concat: bool = False, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(concat).double().eval()


def _mosaic(a: torch.Tensor, gaussian: bool) -> torch.Tensor:
    """The authors' mosaic (sybyun/ReciproCAM, _mosaic_feature), written out with loops: map k = i*w + j
    holds A[:, i, j] at (i, j) (one-hot), or A[:, i, j] * K over the 3x3 neighbourhood cut at the borders."""
    C, h, w = a.shape
    k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=a.dtype) / 16
    out = torch.zeros(h * w, C, h, w, dtype=a.dtype)
    for i in range(h):
        for j in range(w):
            if not gaussian:
                out[i * w + j, :, i, j] = a[:, i, j]
                continue
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        out[i * w + j, :, i + di, j + dj] = a[:, i, j] * k[1 + di, 1 + dj]
    return out


def _recipro_reference(net: Net, x: torch.Tensor, t: torch.Tensor, gaussian: bool) -> torch.Tensor:
    maps = []
    with torch.no_grad():
        for b in range(len(x)):
            e = net.early(x[b:b + 1])
            a = net.relu2(net.conv2(e))[0]
            mosaic = _mosaic(a, gaussian)
            probs = torch.softmax(net.tail(mosaic, e.expand(len(mosaic), *e.shape[1:])), dim=1)
            maps.append(probs[:, t[b]].reshape(a.shape[1:]))
    return torch.stack(maps)


def _inputs(seed: int = 1, n: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1][:n])


# ----------------------------------------------------------------------------- Recipro-CAM


@pytest.mark.parametrize("concat", [False, True], ids=["broadcast-tail", "concat-tail"])
@pytest.mark.parametrize("kernel", ["gaussian", "onehot"])
def test_recipro_cam_is_the_authors_mosaic_forwarded_through_the_tail(kernel: str, concat: bool) -> None:
    net, (x, t) = _net(concat), _inputs()
    req = CaptureRequest(layers=("relu2",), **{_RECIPRO[kernel]: {"relu2"}},
                         score=load("reciprocam").score_spec)
    got = getattr(capture(net, x, t, req), _TERMINAL[kernel])["relu2"]
    want = _recipro_reference(net, x, t, kernel == "gaussian")
    assert got.shape == want.shape == (3, 8 if concat else 4, 8 if concat else 4)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-14)
    assert float(want.std()) > 1e-4  # the positions differ
    # the concatenating tail cannot broadcast one image over the mosaic: sycam fed copies and remembers it
    assert ("relu2" in _NEEDS_COPIES.get(net, set())) == concat


def test_recipro_cam_closed_form_on_a_summing_head() -> None:
    """A = the input itself, logits = (sum of the features, 0): R[i, j] = sigmoid(s_ij * kappa_ij) with
    s_ij = sum_c x[c, i, j] and kappa the kernel's mass inside the map (1 inside, 12/16 on an edge,
    9/16 in a corner; 1 everywhere for one-hot)."""

    class Sum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.feat = nn.Identity()
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.feat(x).sum((1, 2, 3))
            return torch.stack([s, torch.zeros_like(s)], 1) + self.dummy

    x = torch.tensor([[[[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [2.0, 1.0, -0.5]],
                       [[0.0, 1.0, 1.5], [-1.0, 2.0, 0.0], [0.5, -1.0, 1.0]]]], dtype=torch.float64)
    s = x[0].sum(0)
    kappa = torch.tensor([[9, 12, 9], [12, 16, 12], [9, 12, 9]], dtype=torch.float64) / 16
    for kernel, k in (("gaussian", kappa), ("onehot", torch.ones(3, 3, dtype=torch.float64))):
        req = CaptureRequest(layers=("feat",), **{_RECIPRO[kernel]: {"feat"}},
                             score=load("reciprocam").score_spec)
        got = getattr(capture(Sum().double(), x, torch.tensor([0]), req), _TERMINAL[kernel])["feat"][0]
        np.testing.assert_allclose(got.numpy(), torch.sigmoid(s * k).numpy(), rtol=1e-13)


def test_the_program_is_the_normalised_upsampled_R_and_the_model_comes_back_as_found() -> None:
    net, (x, t) = _net(), _inputs()
    net.train()
    net.relu1.training = False
    mine = net.conv1.register_forward_hook(lambda *a: None)
    maps = Explainer(net, "reciprocam", layers="relu2")(x, t)
    want = _recipro_reference(net.eval(), x, t, True)
    up = F.interpolate(want.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.flatten(1).min(1).values.view(-1, 1, 1), up.flatten(1).max(1).values.view(-1, 1, 1)
    # the output is float32: its upsampling rounds at ~6e-8, amplified by 1 / (max - min) of each map
    tol = 1e-6 / float((hi - lo).min())
    assert tol < 1e-2
    np.testing.assert_allclose(maps.numpy(), ((up - lo) / (hi - lo)).numpy(), atol=tol)
    net.train()
    net.relu1.training = False
    Explainer(net, "reciprocam", layers="relu2")(x, t)
    assert net.training and not net.relu1.training and net.conv2.training
    assert len(net.conv1._forward_hooks) == 1  # the user's own hook stays
    assert all(len(m._forward_hooks) == 0 for n, m in net.named_modules() if n != "conv1")
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    mine.remove()


@pytest.mark.parametrize("concat", [False, True], ids=["broadcast-tail", "concat-tail"])
def test_the_one_hot_terminal_R1_is_the_authors_default_mosaic(concat: bool) -> None:
    """``R1`` (reciprocam_onehot.cam) against the authors' one-hot mosaic written out with loops,
    and ``R`` beside it in one program: one capture holds both, each its own kernel's map."""
    net, (x, t) = _net(concat), _inputs()
    onehot, gaussian = _recipro_reference(net, x, t, False), _recipro_reference(net, x, t, True)
    prog = compile_program(load("reciprocam_onehot"), net, default_layer="relu2")
    assert prog.request.reciprocal_onehot_layers == {"relu2"} and not prog.request.reciprocal_layers
    np.testing.assert_allclose(prog.raw(capture(net, x, t, prog.request)).numpy(), onehot.numpy(), rtol=1e-12, atol=1e-14)
    both = compile_program("score prob; R1 - 2 * R", net, default_layer="relu2")
    assert both.request.reciprocal_onehot_layers == both.request.reciprocal_layers == {"relu2"}
    np.testing.assert_allclose(both.raw(capture(net, x, t, both.request)).numpy(), (onehot - 2 * gaussian).numpy(),
                               rtol=1e-12, atol=1e-13)
    assert float((onehot - gaussian).abs().max()) > 1e-6  # the kernels differ, by far more than the tolerance
    # the program's map: R1 upsampled and normalised
    maps = Explainer(net, "reciprocam_onehot", layers="relu2")(x, t)
    up = F.interpolate(onehot.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.flatten(1).min(1).values.view(-1, 1, 1), up.flatten(1).max(1).values.view(-1, 1, 1)
    np.testing.assert_allclose(maps.numpy(), ((up - lo) / (hi - lo)).numpy(), atol=1e-6 / float((hi - lo).min()))


def test_the_capture_cache_keeps_R_R1_X_and_the_rescorer(tmp_path) -> None:
    """Captures read back from the disk cache serve the programs that read R, R1 (pieces per layer
    and score), X (computed from the inputs) and confidence/gain (a re-scorer attached on reading):
    the same maps as fresh captures, and a second read runs no Recipro-CAM forward."""
    from sycam.cache import CaptureCache

    net, (x, t) = _net(), _inputs()
    cache = CaptureCache(tmp_path / "cache")
    for source in ("score prob; R + R1", "sum_c(mi(A, X) * A)", "let m = relu(sum_c(A)); gain(m) * m + confidence(m) * m"):
        prog = compile_program(source, net, default_layer="relu2")
        fresh = prog(capture(net, x, t, prog.request))
        for _ in range(2):
            _, caps = cache.capture(net, "net", x, "k", lambda: t, prog.request)
            np.testing.assert_allclose(prog(caps).numpy(), fresh.numpy(), rtol=1e-12, atol=1e-12)
    forwards = []
    handle = net.register_forward_hook(lambda *a: forwards.append(1))
    try:
        _, caps = cache.capture(net, "net", x, "k", lambda: t, compile_program("score prob; R + R1", net,
                                                                                 default_layer="relu2").request)
    finally:
        handle.remove()
    assert not forwards and set(caps.R) == set(caps.R1) == {"relu2"}


# ----------------------------------------------------------------------------- UnionCAM


def _minmax(m: torch.Tensor) -> torch.Tensor:
    rng = m.max() - m.min()
    return (m - m.min()) / rng if rng > 0 else torch.zeros_like(m)


def _unioncam_reference(net: Net, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The UnionCAM of codeforpaper64/Fusion-CAM (src/cams_methods/unioncam.py), written out per image,
    at the layer's grid (maps normalised there; masks upsampled then normalised, as Score-CAM's)."""
    H, W = x.shape[-2:]
    out, chosen = [], []

    def prob(img: torch.Tensor, c: int) -> float:
        with torch.no_grad():
            return float(torch.softmax(net(img.unsqueeze(0)), 1)[0, c])

    def mask(m: torch.Tensor) -> torch.Tensor:
        return _minmax(F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0])

    for b in range(len(x)):
        c = int(t[b])
        e = net.early(x[b:b + 1]).detach()
        a = net.relu2(net.conv2(e)).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net.tail(a, e)[0, c], a)
        a, g = a.detach()[0], g[0].clone()
        for k in range(len(g)):  # denoising: entries below the channel's 10th percentile -> 0
            thr = np.percentile(g[k].numpy(), 10)
            g[k][g[k] < torch.tensor(thr, dtype=g.dtype)] = 0
        rw = F.relu(g)
        sums = rw.sum((1, 2), keepdim=True)
        ld = _minmax(torch.where(sums > 0, rw / torch.where(sums > 0, sums, torch.ones_like(sums)), torch.zeros_like(rw))
                     .mul(a).sum(0))
        with torch.no_grad():
            s = torch.stack([net(x[b:b + 1] * mask(a[k]))[0, c] for k in range(len(a))])
        lr = _minmax(F.relu((torch.softmax(s, 0)[:, None, None] * a).sum(0)))
        p0 = prob(torch.zeros_like(x[b]), c)
        bd, br = prob(x[b] * mask(ld), c) - p0, prob(x[b] * mask(lr), c) - p0
        ldr = _minmax(bd * ld + br * lr)
        bdr = prob(x[b] * mask(ldr), c) - p0
        out.append(bdr * ldr if bdr > br else br * lr)
        chosen.append("fused" if bdr > br else "region")
    return torch.stack(out), chosen


def test_unioncam_is_the_reimplementations_formula() -> None:
    net, (x, t) = _net(seed=0), _inputs(seed=0, n=3)
    prog = compile_program(load("unioncam"), net, default_layer="relu2")
    assert prog.request.rescore and prog.request.grad_layers == {"relu2"} and prog.request.score_cam_layers == {"relu2"}
    caps = capture(net, x, t, prog.request)
    got = prog.raw(caps)
    want, chosen = _unioncam_reference(net, x, t)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
    assert chosen == ["fused", "fused", "region"]  # both branches of the selection are exercised
    # per image slices give the same maps (the re-scorer follows Captures.take)
    np.testing.assert_allclose(prog.raw(caps.take(slice(1, 3))).numpy(), want[1:].numpy(), rtol=1e-9, atol=1e-12)


def test_confidence_and_gain_are_plain_forwards_of_the_masked_input() -> None:
    net, (x, t) = _net(seed=2), _inputs()
    prog = compile_program("let m = sum_c(A); m * confidence(m) + gain(relu(m))", net, default_layer="relu2")
    caps = capture(net, x, t, prog.request)
    m = caps.A["relu2"].sum(1)
    H, W = x.shape[-2:]
    for b in range(len(x)):
        def p(mm: torch.Tensor) -> float:
            up = _minmax(F.interpolate(mm[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0])
            with torch.no_grad():
                return float(torch.softmax(net((x[b] * up).unsqueeze(0)), 1)[0, t[b]])
        with torch.no_grad():
            p0 = float(torch.softmax(net(torch.zeros_like(x[:1])), 1)[0, t[b]])
        assert float(caps.rescore(m, False)[b]) == pytest.approx(p(m[b]), rel=1e-12)
        assert float(caps.rescore(m, True)[b]) == pytest.approx(p(m[b]) - p0, rel=1e-12, abs=1e-15)
        want = m[b] * p(m[b]) + p(F.relu(m[b])) - p0
        np.testing.assert_allclose(prog.raw(caps)[b].numpy(), want.numpy(), rtol=1e-12)
    # without a re-scorer the operator says what is missing
    bare = capture(net, x, t, CaptureRequest(layers=("relu2",)))
    with pytest.raises(Exception, match="re-scorer"):
        prog.raw(bare)


def test_the_new_programs_are_listed() -> None:
    assert {"reciprocam", "reciprocam_onehot", "unioncam"} <= set(list_programs())


# ----------------------------------------------------------------------------- real networks


def _check_maps(maps: torch.Tensor, n: int, size: int) -> None:
    assert maps.shape == (n, size, size) and bool(torch.isfinite(maps).all())
    assert all(float(m.max()) == pytest.approx(1.0) and float(m.min()) == 0.0 for m in maps)


@pytest.mark.slow
def test_the_recipro_and_union_programs_run_on_resnet50() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for name in ("reciprocam", "reciprocam_onehot", "unioncam"):
        _check_maps(Explainer(model, name, layers="layer1")(x, torch.tensor([7])), 1, 32)
    # the terminal at the last stage, where the tail is the pool and the classifier
    caps = capture(model, torch.randn(1, 3, 64, 64), torch.tensor([3]),
                   CaptureRequest(layers=("layer4",), reciprocal_layers={"layer4"}))
    assert caps.R["layer4"].shape == (1, 2, 2)


@pytest.mark.slow
@pytest.mark.shared
def test_the_recipro_and_union_programs_run_on_mobilenet_v2_with_imagenet_weights() -> None:
    from tests.test_reference_agreement import imagenet_images, mobilenet

    model = mobilenet(need(MOBILENET_WEIGHTS))
    x, labels = imagenet_images(need(IMAGENET_DEV), 1, 112)
    t = torch.tensor(labels)
    maps = {name: Explainer(model, name, layers="features.18")(x, t) for name in ("reciprocam", "reciprocam_onehot", "unioncam")}
    for m in maps.values():
        _check_maps(m, 1, 112)
    # Recipro-CAM's map is the softmax probability per position: on an image the network gets right,
    # the best position keeps much of the label's probability
    with torch.no_grad():
        p = float(torch.softmax(model(x), 1)[0, labels[0]])
    prog = compile_program(load("reciprocam"), model, default_layer="features.18")
    r = capture(model, x, t, prog.request).R["features.18"]
    assert r.shape == (1, 4, 4) and 0 < float(r.max()) <= 1
    assert float(r.max()) > float(r.min()) and p > 0
