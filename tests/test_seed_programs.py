"""MI-CAM, MetaCAM and Integrative CAM, and what the language gained for them: the image terminal X,
``mi(x, m)``, ``topk_pct(x, k)`` and ``use(name)``.

Exact values on the hand-built network are in tests/test_reference_exact.py (with the other reference
programs); here: the operators' hand-derived values, ``use`` (inlining, scope, scores, cycles), and the
programs against plain-torch implementations written in this file on ResNet-50 (random weights) and
MobileNetV2 (the real ImageNet weights in ../shared, skipped with the path when absent).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sycam import kernels as K
from sycam.capture import capture
from sycam.compile import compile_program
from sycam.errors import ProgramSyntaxError, ProgramTypeError
from sycam.explainer import Explainer
from sycam.lang import check, parse
from sycam.lang.pretty import pretty
from sycam.programs import load
from tests.conftest import IMAGENET_DEV, MOBILENET_WEIGHTS, need

# ----------------------------------------------------------------------------- mi: values by hand


def _levels() -> torch.Tensor:
    """An 8x8 image of four grey levels 0, 1/3, 2/3, 1, each on 16 pixels: its 16 bins over [0, 1] put
    them in bins 0, 5, 10, 15, so H = log 4."""
    return (torch.arange(64, dtype=torch.float64) % 4 / 3).reshape(1, 8, 8)


def test_mi_by_hand() -> None:
    img = _levels()
    same = img[:, None]  # a channel equal to the image: I = H(image) = log 4
    half = (img > 0.5).double()[:, None]  # two of the four levels against the other two: I = log 2
    affine = 3 * img[:, None] - 7  # MI ignores a positive affine change (bins over min..max)
    const = torch.full_like(same, 2.5)  # a constant channel carries no information
    x = torch.cat([same, half, affine, const], dim=1)  # (1, 4, 8, 8)
    got = K.mutual_info(x, img)[0].tolist()
    assert got == pytest.approx([math.log(4), math.log(2), math.log(4), 0.0], abs=1e-12)
    # a Map against a Map is one Scalar per image
    assert K.mutual_info(img, img).tolist() == pytest.approx([math.log(4)], abs=1e-12)


def test_mi_grid_upsamples_the_map_and_area_averages_a_large_image() -> None:
    """A 2x2 channel against a 112x112 image is computed on 56x56: the channel upsampled bilinearly,
    the image averaged over 2x2 blocks (here the image is constant on 2x2 blocks, so the averaging is
    exact: the same MI as against its 56x56 version)."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 56, 56, generator=g, dtype=torch.float64)
    big = small.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (1, 112, 112), constant 2x2 blocks
    a = torch.rand(1, 3, 2, 2, generator=g, dtype=torch.float64)
    assert torch.equal(K.mutual_info(a, big), K.mutual_info(a, small))
    up = F.interpolate(a, size=(56, 56), mode="bilinear", align_corners=False)
    assert torch.allclose(K.mutual_info(a, small), K.mutual_info(up, small), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- topk_pct by hand


def test_topk_pct_by_hand() -> None:
    m = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert K.topk_pct(m, 50).tolist() == [[[0.0, 0.0], [1.0, 1.0]]]
    assert K.topk_pct(m, 60).tolist() == [[[0.0, 1.0], [1.0, 1.0]]]  # ceil(0.6 * 4) = 3 pixels
    assert K.topk_pct(m, 25).tolist() == [[[0.0, 0.0], [0.0, 1.0]]]
    assert K.topk_pct(m, 0).tolist() == [[[0.0, 0.0], [0.0, 0.0]]]
    assert K.topk_pct(m, 100).tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
    ties = torch.tensor([[[1.0, 3.0], [3.0, 3.0]]])
    assert K.topk_pct(ties, 25).tolist() == [[[0.0, 1.0], [1.0, 1.0]]]  # every entry equal to the cut is kept
    # per image: two images, each its own cut
    two = torch.stack([m[0], -m[0]])
    assert K.topk_pct(two, 25).tolist() == [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]


def test_topk_pct_percentage_is_checked() -> None:
    with pytest.raises(ProgramTypeError, match="topk_pct's percentage must lie in"):
        check(parse("topk_pct(sum_c(A), 120)"))
    with pytest.raises(ProgramSyntaxError, match="argument 2 of topk_pct must be a number"):
        parse("topk_pct(sum_c(A), Y)")


# ----------------------------------------------------------------------------- X and mi in programs


def test_the_image_terminal_is_the_grey_level_on_the_input_grid() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 10, 12)
    got = Explainer(net, "X", layers="0")(x, [0, 1])
    assert torch.allclose(got, K.norm(x.mean(1)), atol=1e-7)
    assert check(parse("X")).type.layer == "fused:input"
    # X combines with maps on the input grid, and is the second argument of mi
    assert str(check(parse("fuse(sum_c(A), mean, input) * X")).type) == "Map"
    assert str(check(parse("sum_c(mi(A, X) * A)")).type) == "Map"
    with pytest.raises(ProgramTypeError, match="different layers"):
        check(parse("sum_c(A) * X"))
    with pytest.raises(ProgramTypeError, match=r"second argument of mi\(\.\.\.\) must be a Map"):
        check(parse("sum_c(mi(A, A) * A)"))
    with pytest.raises(ProgramTypeError, match="first argument must be a Tensor or a Map, got Channels"):
        check(parse("sum_c(mi(mean_hw(A), X) * A)"))
    with pytest.raises(ProgramSyntaxError, match="X .the input image. has no layer"):
        parse("X@-1")


# ----------------------------------------------------------------------------- use(name)


def test_use_inlines_the_reference_programs_finished_map() -> None:
    assert parse("use(gradcam)") == parse("norm(fuse(relu(sum_c(mean_hw(G) * A)), mean, input))")
    # lets of the used program are inlined, its parameters become this program's
    winsor = parse("use(winsorcam)")
    assert not winsor.lets and set(check(winsor).params) == {"p"}
    # a used program's map lies on the input grid, so maps of different programs combine
    assert str(check(parse("use(gradcam) + use(layeravg) * use(scorecam)")).type) == "Map"
    # positions point at the use(...), not at lines of the other file
    node = parse("\n  use(gradcam)").body
    assert (node.pos.line, node.pos.column) == (2, 7)
    assert all(n.pos is None or (n.pos.line, n.pos.column) == (2, 7) for n in __import__("sycam.lang.ast").lang.ast.walk(node))


def test_use_equals_the_used_programs_output() -> None:
    """use(p) evaluates to what the Explainer gives for p (a used program's map is its finished map)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2), nn.ReLU(), nn.Conv2d(5, 6, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    x = torch.randn(2, 3, 15, 13)
    for name in ("gradcampp", "scorecam", "layeravg"):
        want = Explainer(net, name, layers="2")(x, [1, 3])
        got = Explainer(net, f"use({name})", layers="2")(x, [1, 3])
        assert torch.allclose(got, want, atol=1e-6), name


def test_use_scores_must_agree() -> None:
    with pytest.raises(ProgramSyntaxError, match=r"use\(finercam\) explains the score 'score finer\(3, 1\)' but this "
                                                 r"program explains 'score logit'") as info:
        parse("use(gradcam) + use(finercam)")
    assert (info.value.line, info.value.column) == (1, 20)
    program = parse("score finer(3, 1); use(finercam)")
    assert program.score_spec.kind == "finer"
    with pytest.raises(ProgramSyntaxError, match="explains the score 'score logit' but this program explains 'score prob'"):
        parse("score prob; use(gradcam)")


def test_use_of_an_unknown_program_suggests_names() -> None:
    with pytest.raises(ProgramSyntaxError, match="no reference program named 'gradcm'; did you mean gradcam") as info:
        parse("relu(use(gradcm))")
    assert (info.value.line, info.value.column) == (1, 10)
    with pytest.raises(ProgramSyntaxError, match="'use' is an operator name"):
        parse("let use = sum_c(A); sum_c(A)")


def test_use_cycles_are_located_errors(tmp_path: Path) -> None:
    (tmp_path / "a.cam").write_text("# a uses b\nuse(b) + sum_c(A)\n")
    (tmp_path / "b.cam").write_text("# b uses a\n\nrelu(use(a))\n")
    (tmp_path / "c.cam").write_text("use(c)\n")
    (tmp_path / "ok.cam").write_text("relu(sum_c(A))\n")
    with pytest.raises(ProgramSyntaxError, match=r"in use\(a\): in use\(b\): use\(a\) is a cycle: a -> b -> a") as info:
        parse("sum_c(G) +\n   use(a)", library=tmp_path)
    assert (info.value.line, info.value.column) == (2, 8)
    assert "line 3, column 10 of b.cam" in str(info.value) and "line 2, column 5 of a.cam" in str(info.value)
    # a program that uses itself, read as itself: the cycle is found at once
    with pytest.raises(ProgramSyntaxError, match=r"use\(c\) is a cycle: c -> c"):
        parse((tmp_path / "c.cam").read_text(), name="c", library=tmp_path)
    # and read as text, one level further down
    with pytest.raises(ProgramSyntaxError, match=r"in use\(c\): use\(c\) is a cycle: c -> c"):
        parse("use(c)", library=tmp_path)
    assert parse("use(ok)", library=tmp_path) == parse("norm(fuse(relu(sum_c(A)), mean, input))")


def test_use_reports_errors_inside_the_used_program(tmp_path: Path) -> None:
    (tmp_path / "bad.cam").write_text("# a type error on line 2\nsum_hw(A)\n")
    with pytest.raises(ProgramSyntaxError, match=r"in use\(bad\): a program must yield a Map, got Channels.*line 2, "
                                                 r"column 1 of bad.cam"):
        parse("use(bad)", library=tmp_path)


def test_reference_programs_print_and_parse_back() -> None:
    for name in ("metacam", "micam", "integrative_cam"):
        program = load(name)
        assert parse(pretty(program)) == program, name


# ----------------------------------------------------------------------------- plain-torch implementations


def _acts_grads(model: nn.Module, x: torch.Tensor, targets: list[int], names: list[str]):
    """Module outputs and d logit_t / d output for ``names``, by hooks and autograd (plain torch)."""
    mods = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n in names]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    y = logits.gather(1, torch.tensor(targets)[:, None]).sum()
    grads = torch.autograd.grad(y, [outs[n] for n in names])
    return {n: outs[n].detach() for n in names}, {n: g.detach() for n, g in zip(names, grads)}


def _bins(v: torch.Tensor) -> torch.Tensor:
    lo, hi = v.min(), v.max()
    return torch.clamp(torch.floor(16 * (v - lo) / (hi - lo) + 1e-4), max=15).long()


def _mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """MI (nats) of two equally shaped maps, 16 bins each over its own [min, max] (edge values up)."""
    if a.max() == a.min() or b.max() == b.min():
        return 0.0
    joint = torch.zeros(16, 16, dtype=torch.float64)
    joint.index_put_((_bins(a.flatten()), _bins(b.flatten())), torch.ones(a.numel(), dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * torch.log(p[nz] / outer[nz])).sum())


def micam_raw(model: nn.Module, x: torch.Tensor, targets: list[int], layer: str) -> torch.Tensor:
    """MI-CAM: w_k = MI(A_k upsampled to the MI grid, grey image area-averaged to it); raw = Σ_k w_k A_k."""
    acts, _ = _acts_grads(model, x, targets, [layer])
    A = acts[layer]
    H, W = x.shape[-2:]
    grid = (min(H, 56), min(W, 56))
    grey = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), grid)[:, 0] if (H, W) != grid else x.mean(1)
    up = F.interpolate(A, size=grid, mode="bilinear", align_corners=False)
    w = torch.tensor([[_mi(up[b, k], grey[b]) for k in range(A.shape[1])] for b in range(A.shape[0])], dtype=A.dtype)
    return torch.einsum("bk,bkij->bij", w, A)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    f = m.flatten(1)
    lo, hi = f.min(1, keepdim=True).values, f.max(1, keepdim=True).values
    rng = hi - lo
    return torch.where(rng > 0, (f - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(f)).view_as(m)


def integrative_raw(model: nn.Module, x: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """Integrative CAM (sycam's reading): Σ_l relu(Σ G_l A_l) · up(minmax(Grad-CAM++ map of layer l))."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    acts, grads = _acts_grads(model, x, targets, convs)
    out = torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype)
    for n in convs:
        A, G = acts[n], grads[n]
        den = 2 * G**2 + A.sum((2, 3), keepdim=True) * G**3
        alpha = torch.where(den != 0, G**2 / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
        w = (alpha * G.clamp(min=0)).sum((2, 3))
        m = _minmax(torch.einsum("bk,bkij->bij", w, A).clamp(min=0))
        s = (G * A).sum((1, 2, 3)).clamp(min=0)
        out += s[:, None, None] * F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return out


def _sycam_raw(model: nn.Module, program: str, x: torch.Tensor, targets: list[int], layer: str) -> torch.Tensor:
    prog = compile_program(load(program), model, layer)
    caps = capture(model, x, torch.tensor(targets), prog.request)
    return prog.raw(caps)


def _assert_rel(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(want.abs().max())
    assert scale > 0 and float(want.flatten(1).std(1).min()) > 0, f"{what}: degenerate reference map"
    diff = float((got - want).abs().max()) / scale
    assert diff < tol, f"{what}: relative max difference {diff:.3g}"


@pytest.fixture(scope="module")
def resnet50_double() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50().double().eval()


@pytest.mark.slow
def test_micam_on_resnet50_matches_plain_torch(resnet50_double: nn.Module) -> None:
    """112x112 input: layer4's 4x4 maps upsampled to the 56x56 MI grid, the image averaged to it."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    want = micam_raw(resnet50_double, x, [3, 7], "layer4")
    got = _sycam_raw(resnet50_double, "micam", x, [3, 7], "layer4")
    _assert_rel(got, want, 1e-10, "MI-CAM on ResNet-50")


@pytest.mark.slow
def test_integrative_cam_on_resnet50_matches_plain_torch(resnet50_double: nn.Module) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    want = integrative_raw(resnet50_double, x, [5, 9])
    got = _sycam_raw(resnet50_double, "integrative_cam", x, [5, 9], "layer4")
    # 1e-7, not 1e-10: sycam's division is guarded (|denominator| < 1e-12 becomes ±1e-12), and at 69
    # positions of this random network Grad-CAM++'s denominator 2g^2 + sum(A) g^3 is that small with
    # g != 0 (tiny gradients of early layers); measured: 4.9e-8
    _assert_rel(got, want, 1e-7, "Integrative CAM on ResNet-50 (53 conv layers)")


# ----------------------------------------------------------------------------- MobileNetV2, real weights

def _imagenet(n: int, size: int) -> tuple[torch.Tensor, list[int]]:
    from tests.test_reference_agreement import imagenet_images  # one loader of the dev images for the tests

    return imagenet_images(need(IMAGENET_DEV), n, size)


@pytest.fixture(scope="module")
def mobilenet_real() -> nn.Module:
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(need(MOBILENET_WEIGHTS), map_location="cpu", weights_only=True))
    return model.eval()


@pytest.mark.slow
@pytest.mark.shared
def test_micam_and_integrative_cam_on_real_mobilenet_match_plain_torch(mobilenet_real: nn.Module) -> None:
    x, labels = _imagenet(2, 224)
    model, x = mobilenet_real.double(), x.double()
    try:
        _assert_rel(_sycam_raw(model, "micam", x, labels, "features.18"), micam_raw(model, x, labels, "features.18"),
                    1e-10, "MI-CAM on MobileNetV2")
        _assert_rel(_sycam_raw(model, "integrative_cam", x, labels, "features.18"), integrative_raw(model, x, labels),
                    1e-8, "Integrative CAM on MobileNetV2 (52 conv layers)")
    finally:
        model.float()


@pytest.mark.slow
@pytest.mark.shared
def test_metacam_on_real_mobilenet_is_the_vote_of_its_components(mobilenet_real: nn.Module) -> None:
    """MetaCAM's map is the number of components (each as the Explainer gives it) that put a pixel in
    their top 20% (ceil(0.2 N) pixels, ties kept), min-max normalised. At features.17 (320 channels,
    2x2 at 64x64) Score-CAM's and Ablation-CAM's forwards, one per channel, stay short; both sides
    run them in masked batches of 64 (at 64x64 several times faster than the CPU default of 8)."""
    x, labels = _imagenet(2, 64)
    comps = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "eigencam")
    votes = torch.zeros(2, 64, 64)
    n = math.ceil(0.2 * 64 * 64)
    for name in comps:
        m = Explainer(mobilenet_real, name, layers="features.17", masked_batch=64)(x, labels).flatten(1)
        votes += (m >= m.topk(n, dim=1).values[:, -1:]).float().view(2, 64, 64)
    assert float(votes.max()) > float(votes.min())
    got = Explainer(mobilenet_real, "metacam", layers="features.17", masked_batch=64)(x, labels)
    assert torch.allclose(got, _minmax(votes), atol=1e-6)
