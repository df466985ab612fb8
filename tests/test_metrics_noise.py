"""Noise robustness (consistency, responsiveness): exact values on a hand-built model whose
prediction is known to stay or to flip under the chosen noise, and whose Grad-CAM is known in
closed form; numpy as the independent computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sycam.compile import CompiledProgram, LayerResolver
from sycam.data.base import Sample
from sycam.evaluation.baselines import baseline_explainer, baseline_maps
from sycam.metrics import Consistency, MetricInputs, Responsiveness, add_noise, get_metric, list_metrics
from sycam.models.bundle import ModelBundle
from sycam.workbench import Workbench

H = W = 8


class TwoChannel(nn.Module):
    """A = 1×1 conv picking input channels 0 and 1 (A_0 = x_0, A_1 = x_1); logits
    ``(mean(A_0) − 0.75, mean(A_1) − 0.25)``. Grad-CAM for class c is relu(A_c)/HW, so its
    normalised map is the normalised input channel c.

    On an image whose three channels are equal (salt-and-pepper at density 1 makes every pixel 0
    or 1 in all channels), logit 1 − logit 0 = 0.5 > 0: class 1 whatever the draw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]).view(2, 3, 1, 1))
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.copy_(torch.tensor([-0.75, -0.25]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    a = torch.stack([0.8 + 0.2 * torch.rand(H, W, generator=g), 0.4 * torch.rand(H, W, generator=g),
                     torch.rand(H, W, generator=g)])  # bright channel 0: class 0 (0.15 vs about -0.05)
    b = torch.stack([0.2 * torch.rand(H, W, generator=g), 0.3 + 0.4 * torch.rand(H, W, generator=g),
                     torch.rand(H, W, generator=g)])  # class 1 (about -0.65 vs 0.25)
    return torch.stack([a, b])


class Pair:
    name = "pair"
    num_classes = 2
    class_names = ["zero", "one"]

    def __init__(self) -> None:
        self.images = _images()

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Sample:
        return Sample(image=self.images[i], label=i, id=f"im{i}")


def bench(module: nn.Module | None = None) -> tuple[Workbench, CompiledProgram]:
    module = module if module is not None else TwoChannel().eval()
    bundle = ModelBundle(module=module, normalize=lambda x: x, input_size=(H, W), num_classes=2,
                         default_layer="conv", name="twochannel", stage_layers=["conv"])
    compiled = CompiledProgram("relu(sum_c(mean_hw(G) * A))", LayerResolver(module, "conv", ["conv"]))
    return Workbench(bundle, Pair(), compiled.request, batch_size=2, targets="pred", progress=False).load(), compiled


def inputs_for(wb: Workbench, compiled: CompiledProgram, metric) -> MetricInputs:  # type: ignore[no-untyped-def]
    cb = wb.batches[0]
    return wb.metric_inputs(cb, compiled(cb.caps), metric, compiled)


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


LEVELS = {"gaussian": (0.0,), "salt_pepper": (1.0,)}  # identity (keeps), binary image (class 1)


def test_exact_values_on_the_hand_built_model() -> None:
    wb, gradcam = bench()
    cons = Consistency(families="gaussian,salt_pepper", levels=LEVELS, seed=3)
    resp = Responsiveness(families=("gaussian", "salt_pepper"), levels=LEVELS, seed=3)
    assert wb.batches[0].targets.tolist() == [0, 1]  # the predictions (targets "pred")
    x = _images().numpy().astype(np.float64)
    sp = [add_noise(_images()[i], "salt_pepper", 1.0, 3, (i, 1)).numpy().astype(np.float64) for i in range(2)]
    for s in sp:  # density 1: every pixel is 0 or 1, in all three channels alike
        assert set(np.unique(s)) <= {0.0, 1.0} and (s == s[:1]).all()
    assert np.array_equal(add_noise(_images()[0], "gaussian", 0.0, 3, (0, 0)).numpy(), _images()[0].numpy())

    dr = cons.draws(inputs_for(wb, gradcam, cons), explain="all")
    assert dr.draws == [("gaussian", 0.0), ("salt_pepper", 1.0)]
    assert dr.flipped.tolist() == [[False, True], [False, False]]  # known a priori (TwoChannel's docstring)
    # Grad-CAM of class c is the input channel c: image 0 (class 0) flips to class 1 under s&p
    want_sim = [[1.0, _r(x[0][0], sp[0][1])], [1.0, _r(x[1][1], sp[1][1])]]
    np.testing.assert_allclose(dr.similarity.numpy(), want_sim, rtol=0, atol=1e-6)

    got_c = cons(inputs_for(wb, gradcam, cons)).numpy()
    got_r = resp(inputs_for(wb, gradcam, resp)).numpy()
    np.testing.assert_allclose(got_c, [1.0, (1.0 + _r(x[1][1], sp[1][1])) / 2], rtol=0, atol=1e-6)
    assert got_r[0] == pytest.approx(1 - _r(x[0][0], sp[0][1]), abs=1e-6)
    assert math.isnan(got_r[1])  # no draw changes image 1's prediction


def test_each_metric_explains_only_its_own_draws() -> None:
    wb, gradcam = bench()
    cons = Consistency(families="gaussian,salt_pepper", levels=LEVELS, seed=3)
    calls: list[int] = []
    inputs = inputs_for(wb, gradcam, cons)
    explain = inputs.explain_fn
    assert explain is not None

    def counting(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return explain(x, t)

    inputs.explain_fn = counting
    dr = cons.draws(inputs)
    assert sum(calls) == 3 and dr.similarity.isnan().tolist() == [[False, True], [False, False]]
    calls.clear()
    dr = Responsiveness(families="gaussian,salt_pepper", levels=LEVELS, seed=3).draws(inputs)
    assert sum(calls) == 1 and dr.similarity.isnan().tolist() == [[True, False], [True, True]]


def test_input_independent_map_gets_the_extremes() -> None:
    # the centre Gaussian ignores image and class: perfectly consistent, not responsive at all
    wb, gradcam = bench()
    for metric, want in ((Consistency(levels=LEVELS, families="gaussian,salt_pepper"), 1.0),
                         (Responsiveness(levels=LEVELS, families="gaussian,salt_pepper"), 0.0)):
        inputs = inputs_for(wb, gradcam, metric)
        inputs.maps = baseline_maps("center", 2, (H, W), torch.device("cpu"))
        inputs.explain_fn = baseline_explainer("center", 0, 0)
        got = metric(inputs).tolist()
        assert got[0] == pytest.approx(want, abs=1e-6)
        assert got[1] == pytest.approx(want, abs=1e-6) if want == 1.0 else math.isnan(got[1])


def test_constant_clean_map_is_nan() -> None:
    wb, gradcam = bench()
    metric = Consistency(levels=LEVELS, families="gaussian,salt_pepper")
    inputs = inputs_for(wb, gradcam, metric)
    inputs.maps = torch.zeros(2, H, W)
    assert all(math.isnan(v) for v in metric(inputs).tolist())


def test_default_families_deterministic_and_rng_untouched() -> None:
    wb, gradcam = bench()
    metric = get_metric("responsiveness")
    state = torch.get_rng_state()
    d1 = metric.draws(inputs_for(wb, gradcam, metric), explain="all")
    d2 = metric.draws(inputs_for(wb, gradcam, metric), explain="all")
    assert torch.equal(torch.get_rng_state(), state)
    assert [f for f, _ in d1.draws] == ["gaussian", "gaussian", "salt_pepper", "salt_pepper", "speckle", "speckle"]
    assert torch.equal(d1.flipped, d2.flipped)
    assert torch.equal(d1.similarity, d2.similarity)
    other = get_metric("responsiveness", seed=1).draws(inputs_for(wb, gradcam, metric), explain="all")
    assert not torch.equal(other.similarity, d1.similarity)  # another seed, other noise
    # the chunk size changes nothing
    small = Responsiveness(chunk_size=1).draws(inputs_for(wb, gradcam, metric), explain="all")
    assert torch.equal(small.flipped, d1.flipped)
    torch.testing.assert_close(small.similarity, d1.similarity, rtol=0, atol=1e-6, equal_nan=True)


def test_noise_families_by_hand() -> None:
    x = 0.3 + 0.4 * torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    # the same key draws the same ε: speckle is the Gaussian noise times the pixel (no clipping here)
    g = add_noise(x, "gaussian", 0.01, 7, (2, 5)) - x
    s = add_noise(x, "speckle", 0.01, 7, (2, 5)) - x
    torch.testing.assert_close(s, x * g, rtol=0, atol=1e-6)
    assert not torch.equal(add_noise(x, "gaussian", 0.01, 7, (2, 6)), add_noise(x, "gaussian", 0.01, 7, (2, 5)))
    # salt and pepper at density p: about p/2 of the pixels each, the rest untouched
    big = torch.full((3, 200, 200), 0.5)
    y = add_noise(big, "salt_pepper", 0.1, 0, (0, 0))
    frac_salt, frac_pepper = float((y[0] == 1).float().mean()), float((y[0] == 0).float().mean())
    assert abs(frac_salt - 0.05) < 0.004 and abs(frac_pepper - 0.05) < 0.004  # 5 sd of Binomial(40000, .05)
    assert ((y == 0.5).all(0) | (y != 0.5).all(0)).all()  # a pixel is hit in all channels or none
    assert float(add_noise(torch.ones(3, H, W), "gaussian", 10.0, 0, (0,)).max()) == 1.0  # clipped
    with pytest.raises(ValueError, match="unknown noise family"):
        add_noise(x, "poisson", 0.1, 0, (0,))


def test_model_left_as_found() -> None:
    module = TwoChannel().train()
    module.conv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    wb, gradcam = bench(module)
    for metric in (get_metric("consistency"), get_metric("responsiveness")):
        metric(inputs_for(wb, gradcam, metric))
    assert module.training and not module.conv.weight.requires_grad and module.fc.weight.requires_grad
    assert all(p.grad is None for p in module.parameters())
    assert not module._forward_hooks and not module.conv._forward_hooks and not module.conv._backward_hooks
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_bad_options_and_missing_inputs() -> None:
    assert {"consistency", "responsiveness"} <= set(list_metrics())
    with pytest.raises(ValueError, match="unknown noise families"):
        Consistency(families="gaussian,blur")
    with pytest.raises(ValueError, match="draws"):
        Responsiveness(draws=0)
    with pytest.raises(ValueError, match="density"):
        Consistency(families="salt_pepper", levels={"salt_pepper": (1.5,)})
    with pytest.raises(ValueError, match="no levels"):
        Consistency(families="speckle", levels={"gaussian": (0.1,)})
    maps = torch.rand(2, H, W)
    with pytest.raises(ValueError, match="predict_fn"):
        Consistency()(MetricInputs(maps=maps, images=torch.rand(2, 3, H, W), targets=torch.zeros(2, dtype=torch.long),
                                   explain_fn=lambda x, t: maps))


def test_cli_evaluate_on_the_builtin_model(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from sycam.cli import main

    rc = main(["evaluate", "--methods", "gradcam,center", "--metrics", "consistency,responsiveness", "--limit", "6",
               "--out", str(tmp_path), "--quiet", "--no-figures"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "consistency ↑" in printed and "responsiveness ↑" in printed
    cell = {(r["method"], r["metric"]): r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    assert cell[("center", "consistency")]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert cell[("gradcam", "consistency")]["n_valid"] >= 1
    # the builtin model's prediction flips under the strong levels on most images (27 of the first 32)
    assert cell[("center", "responsiveness")]["n_valid"] >= 1
    assert cell[("center", "responsiveness")]["mean"] == pytest.approx(0.0, abs=1e-6)
