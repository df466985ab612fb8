"""Sanity checks as metrics: Spearman, the randomisation cascade, model randomisation and class
sensitivity — exact values on hand-built models, scipy and Quantus as independent references."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from sycam.cli import main
from sycam.compile import CompiledProgram, LayerResolver
from sycam.data.base import Sample
from sycam.errors import SycamError
from sycam.metrics import (
    ClassSensitivity,
    ClassSensitivityTop2,
    MetricInputs,
    ModelRandomisation,
    RandomisationTop,
    cascading_randomisation,
    get_metric,
    randomisation_steps,
    spearman,
)
from sycam.metrics.sanity import THRESHOLDS, average_ranks, other_classes, passes, similarity
from sycam.models.bundle import ModelBundle
from sycam.workbench import Workbench

# ------------------------------------------------------------------------------------ Spearman


def test_average_ranks_by_hand() -> None:
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    assert average_ranks(x).tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0, 3.0]]


def test_spearman_by_hand() -> None:
    # ranks 1..6 against (2,1,4,3,6,5): sum d^2 = 6, rho = 1 - 6*6 / (6 * 35) = 29/35
    a = torch.tensor([[[1.0, 2, 3], [4, 5, 6]]])
    b = torch.tensor([[[2.0, 1, 4], [3, 6, 5]]])
    assert spearman(a, b).item() == pytest.approx(29 / 35, abs=1e-7)
    assert spearman(a, a).item() == 1.0
    assert spearman(a, 7 - a).item() == -1.0
    assert spearman(a, a.exp()).item() == 1.0  # invariant to monotone maps


@pytest.mark.parametrize("levels", [3, 17, None])
def test_spearman_matches_scipy_with_ties(levels: int | None) -> None:
    g = torch.Generator().manual_seed(levels or 0)
    shape = (7, 13, 11)
    if levels is None:
        a, b = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    else:  # few levels: many ties
        a = torch.randint(0, levels, shape, generator=g).float() / levels
        b = (a + torch.randint(0, levels, shape, generator=g).float() / levels) / 2
    got = spearman(a, b)
    want = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(shape[0])]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_spearman_full_resolution_224() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 224, 224, generator=g)
    b = (a + torch.rand(2, 224, 224, generator=g)).round(decimals=1)  # ties
    want = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(2)]
    np.testing.assert_allclose(spearman(a, b).numpy(), want, rtol=0, atol=1e-6)


def test_spearman_constant_and_bad_input() -> None:
    a = torch.rand(3, 4, 4)
    c = a.clone()
    c[1] = 0.25
    rho = spearman(a, c)
    assert rho[0].item() == 1.0 and math.isnan(rho[1].item()) and rho[2].item() == 1.0
    assert math.isnan(spearman(c, a)[1].item())
    # class sensitivity's similarity: constant other map = 0, constant reference = NaN
    s = similarity(a, c)
    assert s[1].item() == 0.0
    assert math.isnan(similarity(c, a)[1].item())
    with pytest.raises(ValueError, match="two \\(B, H, W\\) tensors of one shape"):
        spearman(a, a[:2])
    with pytest.raises(ValueError, match="NaN or Inf"):
        spearman(a, torch.full_like(a, float("nan")))


# ------------------------------------------------------------------------------------ cascade


class Staged(nn.Module):
    """Two conv-BN-ReLU stages and a linear head; BN statistics away from their reset values, so
    that a reset is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6, 3)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for bn in (self.stage1[1], self.stage2[1]):
                bn.running_mean.copy_(torch.rand(bn.num_features, generator=g))
                bn.running_var.copy_(1 + torch.rand(bn.num_features, generator=g))
                bn.weight.copy_(2 + torch.rand(bn.num_features, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


def _names(steps) -> list[tuple[str, tuple[str, ...]]]:
    return [(s.name, s.modules) for s in steps]


def test_steps_blocks_and_layers() -> None:
    m = Staged()
    assert _names(randomisation_steps(m, "blocks", ["stage1", "stage2"])) == [
        ("head", ("head",)), ("stage2", ("stage2.1", "stage2.0")), ("stage1", ("stage1.1", "stage1.0"))]
    # stage layers that are convs: the BN after a stage conv belongs to the block above it
    assert _names(randomisation_steps(m, "blocks", ["stage2.0", "stage1.0"])) == [
        ("head", ("head", "stage2.1")), ("stage2.0", ("stage2.0", "stage1.1")), ("stage1.0", ("stage1.0",))]
    assert _names(randomisation_steps(m, "layers")) == [
        (n, (n,)) for n in ["head", "stage2.1", "stage2.0", "stage1.1", "stage1.0"]]
    with pytest.raises(SycamError, match="not modules of Staged"):
        randomisation_steps(m, "blocks", ["stage9"])
    with pytest.raises(SycamError, match="unknown granularity 'pixels'"):
        randomisation_steps(m, "pixels")
    with pytest.raises(SycamError, match="no module with reset_parameters"):
        randomisation_steps(nn.ReLU(), "layers")


def test_steps_of_mobilenet_v2_blocks() -> None:
    from torchvision.models import mobilenet_v2

    m = mobilenet_v2()
    stages = ["features.1.conv.1", "features.3.conv.2", "features.6.conv.2", "features.13.conv.2", "features.18.0"]
    steps = randomisation_steps(m, "blocks", stages)
    assert [s.name for s in steps] == ["head"] + stages[::-1]
    assert steps[0].modules == ("classifier.1", "features.18.1")
    assert steps[-1].modules[-1] == "features.0.0"  # the last block reaches the input
    # every resettable module is in exactly one step
    flat = [n for s in steps for n in s.modules]
    assert sorted(flat) == sorted(n for s in randomisation_steps(m, "layers") for n in s.modules)
    assert len(flat) == len(set(flat)) == 105


def _state(m: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v.clone() for k, v in mod.state_dict().items()} for n, mod in m.named_modules() if n}


def _changed(before, m: nn.Module) -> set[str]:
    out = set()
    for n, mod in m.named_modules():
        if n and list(mod.children()) == [] and any(
                not torch.equal(v, before[n][k]) for k, v in mod.state_dict().items() if v.is_floating_point()):
            out.add(n)
    return out


def test_cascade_is_cumulative_seeded_and_leaves_the_model_alone() -> None:
    m = Staged()
    m.train()
    m.stage1[0].weight.requires_grad_(False)
    calls = []
    hook = m.stage2.register_forward_hook(lambda *a: calls.append(1))
    before = _state(m)
    rng = torch.get_rng_state()
    steps = randomisation_steps(m, "blocks", ["stage1", "stage2"])
    runs = []
    for seed in (0, 0, 1):
        states = []
        for k, (name, copy_) in enumerate(cascading_randomisation(m, steps, seed=seed)):
            assert copy_ is not m and name == steps[k].name
            assert _changed(before, copy_) == {n for s in steps[: k + 1] for n in s.modules}
            states.append(_state(copy_))
            torch.rand(3)  # the caller's RNG use between steps does not change the next step
        runs.append(states)
    for k in range(len(steps)):
        for n in runs[0][k]:
            for key in runs[0][k][n]:
                assert torch.equal(runs[0][k][n][key], runs[1][k][n][key])
    assert any(not torch.equal(runs[0][0]["head"][k], runs[2][0]["head"][k]) for k in runs[0][0]["head"])
    # the user's model: weights, mode, requires_grad, hooks; the global RNG apart from our torch.rand
    assert _changed(before, m) == set()
    assert m.training and all(mod.training for mod in m.modules())
    assert not m.stage1[0].weight.requires_grad and m.stage2[0].weight.requires_grad
    assert len(m.stage2._forward_hooks) == 1
    hook.remove()
    torch.set_rng_state(rng)
    list(cascading_randomisation(m, steps, seed=0))
    assert torch.equal(torch.get_rng_state(), rng)


# ------------------------------------------------------------------- the hand-built 1-conv model

C0 = [[1.0, 2, 3], [4, 5, 6]]
C1 = [[2.0, 1, 4], [3, 6, 5]]
C0b = [[3.0, 1, 2], [6, 4, 5]]
C1b = [[1.0, 1, 2], [2, 3, 3]]


class OneConv(nn.Module):
    """A = 1x1 conv picking input channels 0 and 1; logits = W · mean_hw(A) with W rows (1, 0),
    (0, 0.5), (−1, 0). Grad-CAM for class c is relu(W_c · A) / HW, so for an image (c0, c1, 0):
    class 0 → c0, class 1 → c1, class 2 → 0 (constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 0], [0, 0.5], [-1, 0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class Images:
    name = "two"
    num_classes = 3
    class_names = ["a", "b", "c"]

    def __init__(self) -> None:
        z = torch.zeros(2, 3)
        # values above 1 are fine for the model; the metrics only read maps
        self.images = [torch.stack([torch.tensor(C0), torch.tensor(C1), z]) / 10,
                       torch.stack([torch.tensor(C0b), torch.tensor(C1b), z]) / 10]

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Sample:
        return Sample(image=self.images[i], label=0, id=f"im{i}")


def one_conv_bench(program: str = "relu(sum_c(mean_hw(G) * A))") -> tuple[Workbench, CompiledProgram]:
    module = OneConv().eval()
    bundle = ModelBundle(module=module, normalize=lambda x: x, input_size=(2, 3), num_classes=3,
                         default_layer="conv", name="oneconv", stage_layers=["conv"])
    compiled = CompiledProgram(program, LayerResolver(module, "conv", ["conv"]))
    wb = Workbench(bundle, Images(), compiled.request, batch_size=2, targets="label", progress=False).load()
    return wb, compiled


def _inputs(wb: Workbench, compiled: CompiledProgram, metric) -> MetricInputs:
    cb = wb.batches[0]
    return wb.metric_inputs(cb, compiled(cb.caps), metric, compiled)


def _rho(a, b) -> float:
    return float(spearmanr(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel())[0])


def test_class_sensitivity_exact_on_one_conv() -> None:
    wb, gradcam = one_conv_bench()
    top2 = ClassSensitivityTop2()
    inputs = _inputs(wb, gradcam, top2)
    assert inputs.logits is not None and inputs.logits[0].tolist() == pytest.approx([0.35, 0.175, -0.35])
    assert top2.other(inputs).tolist() == [1, 1]
    got = top2(inputs)
    assert got[0].item() == pytest.approx(29 / 35, abs=1e-6)
    assert got[1].item() == pytest.approx(_rho(C0b, C1b), abs=1e-6)
    # the random other class: 1 gives the same as top-2, 2 a constant (empty) map → 0
    for seed in range(6):
        cs = ClassSensitivity(seed=seed)
        other = other_classes(inputs.targets, 3, seed)  # type: ignore[arg-type]
        want = [(29 / 35 if o == 1 else 0.0) if i == 0 else (_rho(C0b, C1b) if o == 1 else 0.0)
                for i, o in enumerate(other.tolist())]
        np.testing.assert_allclose(cs(_inputs(wb, gradcam, cs)).numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("program", ["mean_c(sq(A))", "sq(sq(sq(mean_c(sq(A)))))"])
def test_class_blind_programs_score_exactly_one(program: str) -> None:
    wb, compiled = one_conv_bench(program)
    for metric in (ClassSensitivity(), ClassSensitivityTop2()):
        assert metric(_inputs(wb, compiled, metric)).tolist() == [1.0, 1.0]


def test_randomisation_exact_on_one_conv() -> None:
    wb, gradcam = one_conv_bench()
    metric = ModelRandomisation(seed=3)
    steps = randomisation_steps(wb.bundle.module, "blocks", ["conv"])
    assert _names(steps) == [("head", ("fc",)), ("conv", ("conv",))]
    copies = {name: copy.deepcopy(m) for name, m in cascading_randomisation(wb.bundle.module, steps, seed=3)}
    imgs = [np.stack([np.array(C0), np.array(C1), np.zeros((2, 3))]), np.stack([np.array(C0b), np.array(C1b), np.zeros((2, 3))])]
    per = metric.per_step(_inputs(wb, gradcam, metric))
    assert list(per) == ["head", "conv"]
    for name, m in copies.items():
        k = m.conv.weight.detach().double().numpy()[:, :, 0, 0]  # (2, 3)
        w = m.fc.weight.detach().double().numpy()[0]  # the target's row
        for i, img in enumerate(imgs):
            a = np.einsum("ck,khw->chw", k, img)
            cam = np.maximum(np.einsum("c,chw->hw", w, a), 0)  # Grad-CAM by hand
            want = math.nan if np.ptp(cam) == 0 else _rho(imgs[i][0], cam)
            got = per[name][i].item()
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-6), (name, i)
    summary = metric(_inputs(wb, gradcam, metric))
    want = torch.stack(list(per.values())).abs().nanmean(0)
    torch.testing.assert_close(summary, want, equal_nan=True)
    top = RandomisationTop(seed=3)(_inputs(wb, gradcam, metric))
    torch.testing.assert_close(top, per["head"].abs(), equal_nan=True)


def test_class_blind_program_keeps_rho_one_after_the_head() -> None:
    wb, blind = one_conv_bench("mean_c(sq(A))")
    per = ModelRandomisation().per_step(_inputs(wb, blind, ModelRandomisation()))
    assert per["head"].tolist() == [1.0, 1.0]  # A does not depend on the head


def test_user_model_untouched_by_the_metrics() -> None:
    wb, gradcam = one_conv_bench()
    module = wb.bundle.module
    module.train()
    handle = module.conv.register_forward_hook(lambda *a: None)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    for metric in (ModelRandomisation(), RandomisationTop(), ClassSensitivity(), ClassSensitivityTop2()):
        metric(_inputs(wb, gradcam, metric))
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert module.training and len(module.conv._forward_hooks) == 1
    assert all(p.grad is None and p.requires_grad for p in module.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    handle.remove()


def test_workbench_score_and_needs_validation() -> None:
    wb, gradcam = one_conv_bench()
    out = wb.score(gradcam, [get_metric("class_sensitivity_top2"), get_metric("randomisation_top")])
    assert out["class_sensitivity_top2"][0].item() == pytest.approx(29 / 35, abs=1e-6)
    maps = torch.rand(2, 2, 3)
    for name, match in [("randomisation", "needs images.*model.*explain_with"),
                        ("class_sensitivity", "needs images.*explain_fn.*logits")]:
        with pytest.raises(ValueError, match=match):
            get_metric(name)(MetricInputs(maps=maps))
    base = dict(maps=maps, images=torch.rand(2, 3, 2, 3), targets=torch.zeros(2, dtype=torch.long),
                explain_fn=lambda x, t: maps)
    with pytest.raises(ValueError, match=r"logits must be \(B, K\) = \(2, K >= 2\), got \(2,\)"):
        get_metric("class_sensitivity")(MetricInputs(**base, logits=torch.zeros(2)))
    with pytest.raises(ValueError, match="target 5 out of range for 3 logits"):
        get_metric("class_sensitivity")(MetricInputs(**{**base, "targets": torch.full((2,), 5)}, logits=torch.zeros(2, 3)))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        get_metric("randomisation")(MetricInputs(**base, model="net", explain_with=lambda m, x, t: maps))  # type: ignore[arg-type]
    bad = MetricInputs(**base, model=OneConv(), explain_with=lambda m, x, t: maps[:1], stage_layers=["conv"])
    with pytest.raises(ValueError, match=r"explain_with \(step 'head'\) returned \(1, 2, 3\)"):
        get_metric("randomisation")(bad)


def test_other_classes_uniform_and_never_the_target() -> None:
    targets = torch.tensor([0, 3, 9] * 400)
    other = other_classes(targets, 10, seed=0)
    assert (other != targets).all() and other.min() >= 0 and other.max() <= 9
    assert torch.equal(other, other_classes(targets, 10, seed=0))
    assert not torch.equal(other, other_classes(targets, 10, seed=1))
    counts = torch.bincount(other[targets == 3], minlength=10)
    assert counts[3] == 0 and counts.min().item() == 0 and sorted(counts.tolist())[1] > 25  # 400 draws over 9 classes


def test_thresholds_and_passes() -> None:
    assert set(THRESHOLDS) == {"randomisation", "randomisation_top", "class_sensitivity", "class_sensitivity_top2"}
    assert all(0 < v < 1 for v in THRESHOLDS.values())
    assert passes("class_sensitivity", THRESHOLDS["class_sensitivity"]) and not passes("class_sensitivity", 1.0)
    assert not passes("randomisation", math.nan)
    with pytest.raises(KeyError, match="no sanity threshold for 'iou'"):
        passes("iou", 0.0)


# -------------------------------------------------------------------------------------- Quantus


def _explain_for_quantus(program: str, layer: str):
    def explain(model, inputs, targets, **_kw):
        compiled = CompiledProgram(program, LayerResolver(model, layer))
        from sycam.capture import capture

        caps = capture(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets).long(), compiled.request)
        return compiled(caps).unsqueeze(1).numpy()

    return explain


def test_agrees_with_quantus_mprt_and_random_logit() -> None:
    quantus = pytest.importorskip("quantus", reason="quantus (test extra) is not installed")
    from quantus.functions.similarity_func import correlation_spearman
    from quantus.helpers.model.pytorch_model import PyTorchModel

    with torch.random.fork_rng(devices=[]):  # Quantus seeds the global RNG
        torch.manual_seed(0)
        m = Staged().eval()
        x = torch.rand(4, 3, 8, 8).numpy()
        y = np.array([0, 1, 2, 1])
        # no ReLU: Quantus' batched Spearman breaks on a constant map (scipy then returns a bare float)
        explain = _explain_for_quantus("sum_c(mean_hw(G) * A)", "stage2")
        a = explain(m, x, y)
        # the same order of layers as Quantus' top-down cascade, and the same cumulative sets
        before = _state(m)
        gen = PyTorchModel(m, channel_first=True).get_random_layer_generator(order="top_down", seed=42)
        q_names, q_changed = [], []
        for name, qm in gen:
            q_names.append(name)
            q_changed.append(_changed(before, qm))
        ours = randomisation_steps(m, "layers")
        assert q_names == [s.name for s in ours]
        for k, (_, cm) in enumerate(cascading_randomisation(m, ours, seed=0)):
            assert _changed(before, cm) == q_changed[k]
        # per-layer similarity on Quantus' own randomised models
        mprt = quantus.MPRT(similarity_func=correlation_spearman, layer_order="top_down", abs=True, normalise=True,
                            disable_warnings=True, display_progressbar=False)
        scores = mprt(model=m, x_batch=x, y_batch=y, a_batch=a, explain_func=explain, device="cpu", batch_size=4)
        gen = PyTorchModel(m, channel_first=True).get_random_layer_generator(order="top_down", seed=42)
        for name, qm in gen:
            got = spearman(torch.from_numpy(a[:, 0]), torch.from_numpy(explain(qm, x, y)[:, 0])).numpy()
            np.testing.assert_allclose(got, np.asarray(scores[name], dtype=np.float64), rtol=0, atol=1e-6)
        # Random Logit with two classes (the other class is then the only one: no draw to match)
        m2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2)).eval()
        explain2 = _explain_for_quantus("relu(sum_c(mean_hw(G) * A))", "0")
        y2 = np.array([0, 1, 1, 0])
        a2 = explain2(m2, x, y2)
        rl = quantus.RandomLogit(num_classes=2, similarity_func=correlation_spearman, abs=False, normalise=True,
                                 disable_warnings=True)
        want = np.asarray(rl(model=m2, x_batch=x, y_batch=y2, a_batch=a2, explain_func=explain2, device="cpu",
                             batch_size=4), dtype=np.float64)
    maps = torch.from_numpy(a2[:, 0])
    inputs = MetricInputs(maps=maps, images=torch.from_numpy(x), targets=torch.from_numpy(y2), logits=torch.zeros(4, 2),
                          explain_fn=lambda xx, t: torch.from_numpy(explain2(m2, xx.numpy(), t.numpy())[:, 0]))
    assert np.isfinite(want).all()
    np.testing.assert_allclose(ClassSensitivity()(inputs).numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(spearman(maps, maps).numpy(), 1.0)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_evaluate_sanity_metrics_on_the_builtin_model(tmp_path, capsys) -> None:
    metrics = "randomisation,randomisation_top,class_sensitivity,class_sensitivity_top2"
    rc = main(["evaluate", "--methods", "gradcam,center,random", "--metrics", metrics, "--limit", "6",
               "--out", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    for name in metrics.split(","):
        assert f"{name} ↓" in printed
    doc = json.loads((tmp_path / "results.json").read_text())
    cell = {(r["method"], r["metric"]): r for r in doc["results"]}
    for name in metrics.split(","):
        assert cell[("center", name)]["mean"] == pytest.approx(1.0, abs=1e-6)  # model- and class-blind
        assert abs(cell[("random", name)]["mean"]) < 0.1
        assert cell[("gradcam", name)]["n_valid"] >= 1
    assert cell[("gradcam", "class_sensitivity")]["mean"] < 0.9
