"""``sycam evaluate``: the side-by-side comparison job (API and CLI) on a tiny model and dataset."""
from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sycam.evaluation as E
import sycam.evaluation.job
import sycam.workbench
from sycam.cli import main
from sycam.data.base import Sample
from sycam.errors import SycamError
from sycam.metrics import Deletion, EnergyPointingGame, MetricInputs, Robustness
from sycam.models.bundle import ModelBundle

SIZE = 16


class TinyCNN(nn.Module):
    """Two convolutions and a linear head. conv1 has no bias and non-negative weights, so a black
    image gives exactly zero activations there and a bright one positive activations."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, num_classes)
        with torch.no_grad():
            self.conv1.weight.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


def tiny_bundle(num_classes: int = 3, size: int = SIZE) -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(module=TinyCNN(num_classes).eval(), normalize=lambda x: x, input_size=(size, size),
                       num_classes=num_classes, default_layer="conv2", name="tiny", class_names=["a", "b", "c"],
                       stage_layers=["conv1", "conv2"])


def mask_of(i: int) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    m[4:10, 2 + i % 5: 8 + i % 5] = True  # 6 x 6 = 36 pixels
    return m


class TinyData:
    """``n`` seeded random 16x16 images, labels i % 3, a 6x6 square mask each; ``dark`` indices are
    all-black images; ``masks=False`` drops the masks."""

    name = "tiny"
    num_classes = 3
    class_names = ["a", "b", "c"]

    def __init__(self, n: int, dark: tuple[int, ...] = (), masks: bool = True) -> None:
        self.n, self.dark, self.masks = n, set(dark), masks
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(1000 + i)
        img = torch.zeros(3, SIZE, SIZE) if i in self.dark else torch.rand(3, SIZE, SIZE, generator=g)
        return Sample(image=img, label=i % 3, mask=mask_of(i) if self.masks else None, id=f"img{i:02d}")


FAST = ["iou", "energy_pg"]


def run(n: int = 10, methods=("gradcam", "layercam", "random"), metrics=FAST, out=None, **kw) -> E.EvalResult:
    data = kw.pop("data", None) or TinyData(n)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    kw.setdefault("figures", False)
    return E.evaluate(tiny_bundle(), data, list(methods), list(metrics), out, **kw)


@pytest.fixture
def count_captures(monkeypatch):
    """Count capture() calls made through the workbench and by evaluate itself."""
    calls = {"bench": 0, "evaluate": 0}
    real = sycam.workbench.capture

    def counted(where):
        def fn(*args, **kwargs):
            calls[where] += 1
            return real(*args, **kwargs)
        return fn

    monkeypatch.setattr(sycam.workbench, "capture", counted("bench"))
    monkeypatch.setattr(sycam.evaluation.job, "capture", counted("evaluate"))
    return calls


# ------------------------------------------------------------------------------ the table


def test_table_rows_columns_and_files(tmp_path):
    res = run(10, methods=("gradcam", "gradcampp", "random", "center"), out=tmp_path / "o", figures=True)
    assert res.methods == ["gradcam", "gradcampp", "random", "center"]
    assert res.metrics == ["iou", "energy_pg"]
    assert res.n_images == 10
    text = E.format_table(res)
    lines = text.splitlines()
    head = lines[1].split()
    assert head == ["method", "iou", "↑", "energy_pg", "↑", "maps", "s"]
    rows = [line.split()[0] for line in lines[3:7]]
    assert rows == ["gradcam", "gradcampp", "random", "center"]
    # every data row has the same width as the header (aligned columns)
    assert len({len(line) for line in lines[1:3]}) == 1
    out = tmp_path / "o"
    for name in ("results.csv", "results.json", "results.md", "per_image.csv", "table.png", "overlays.png",
                 "config.json"):
        assert (out / name).is_file(), name
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], r["metric"]) for r in table] == [(m, k) for m in res.methods for k in res.metrics]
    assert {r["n_valid"] for r in table} == {"10"}
    doc = json.loads((out / "results.json").read_text())
    assert doc["n_images"] == 10 and doc["methods"] == res.methods
    assert doc["skipped"] == [] and doc["invalid_images"] == {m: 0 for m in res.methods}
    assert set(doc["seconds"]) == {"capture_shared", "methods", "metrics", "wall_this_run"}
    assert set(doc["seconds"]["methods"]) == set(res.methods) and set(doc["seconds"]["metrics"]) == {"iou", "energy_pg"}
    md = (out / "results.md").read_text()
    assert "| method | iou ↑ | energy_pg ↑ | maps s |" in md
    with open(out / "per_image.csv") as f:
        per = list(csv.DictReader(f))
    assert len(per) == 4 * 10 and per[0]["id"] == "img00"


def test_bootstrap_interval_brackets_mean_and_counts():
    res = run(12, methods=("gradcam", "random"))
    for s in res.summaries:
        vals = res.values[s.method][s.metric]
        assert s.lo <= s.mean <= s.hi
        assert s.lo < s.hi  # 12 distinct-ish values: a real interval
        assert s.mean == pytest.approx(float(np.nanmean(vals)), abs=1e-12)
        assert s.n_valid + s.n_nan == 12


def test_energy_pg_values_are_the_metric_on_the_method_maps():
    # the random baseline's maps are reproducible from the image index alone
    res = run(6, methods=("random", "center"), metrics=["energy_pg"])
    data = TinyData(6)
    masks = torch.stack([data[i].mask for i in range(6)])
    rnd = E.baseline_maps("random", 6, (SIZE, SIZE), torch.device("cpu"), 0, [[i] for i in range(6)])
    want = EnergyPointingGame()(MetricInputs(maps=rnd, masks=masks)).double().numpy()
    np.testing.assert_allclose(res.values["random"]["energy_pg"], want, rtol=0, atol=1e-7)
    # random maps: about the mask's share of the image (36/256), never exactly the centre's value
    assert abs(float(np.mean(want)) - 36 / 256) < 0.03


def test_baseline_maps_hand_values():
    c = E.baseline_maps("center", 2, (3, 3), torch.device("cpu"))
    # sigma = 3/4; values exp(-d^2/(2 sigma^2)) at d^2 = 0, 1, 2, min-max normalised
    g1, g2 = math.exp(-1 / 1.125), math.exp(-2 / 1.125)
    edge = (g1 - g2) / (1 - g2)
    want = torch.tensor([[0, edge, 0], [edge, 1, edge], [0, edge, 0]], dtype=torch.float32)
    torch.testing.assert_close(c[0], want)
    torch.testing.assert_close(c[1], want)
    r1 = E.baseline_maps("random", 2, (5, 5), torch.device("cpu"), 7, [[3], [4]])
    r2 = E.baseline_maps("random", 1, (5, 5), torch.device("cpu"), 7, [[4]])
    torch.testing.assert_close(r1[1], r2[0])  # same key, same map, whatever the batch
    assert not torch.equal(r1[0], r1[1])
    assert float(r1.amin(dim=(1, 2)).max()) == 0.0 and float(r1.amax(dim=(1, 2)).min()) == 1.0
    with pytest.raises(ValueError, match="unknown baseline"):
        E.baseline_maps("noise", 1, (3, 3), torch.device("cpu"))


def test_random_baseline_is_listed():
    res = run(8, methods=("gradcam", "random", "center"))
    assert "random" in res.methods and "random" in E.format_table(res)
    assert "random" in E.available_methods() and "center" in E.available_methods()


# ----------------------------------------------------------------------------- captures


def test_one_capture_per_batch(count_captures):
    run(10, methods=("gradcam", "layercam", "winsorcam", "gradcampp", "random"), batch_size=4)
    assert count_captures == {"bench": 3, "evaluate": 0}  # ceil(10/4) batches, one capture each


def test_other_score_gets_its_own_capture_group(count_captures):
    res = run(10, methods=("gradcam", "finercam", "layercam"), batch_size=4)
    assert count_captures == {"bench": 3, "evaluate": 3}
    assert res.capture_groups == [["gradcam", "layercam"], ["finercam"]]


def test_metrics_get_score_fn_and_explain_fn(count_captures):
    metrics = [Deletion(steps=2), Robustness(n_samples=1, min_ratio=0.0)]
    res = run(4, methods=("gradcam", "center"), metrics=metrics, batch_size=4)
    # robustness re-explains the perturbed copies: one more capture for gradcam, none for the baseline
    assert count_captures["bench"] == 2
    # the centre map ignores the image, so its maps of the noisy copies correlate perfectly
    np.testing.assert_array_equal(res.values["center"]["robustness"], np.ones(4))
    for m in ("gradcam", "center"):
        d = res.values[m]["deletion"]
        assert np.isfinite(d).all() and ((d >= 0) & (d <= 1)).all()


# ------------------------------------------------------------------------------- resume


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch):
    methods = ("gradcam", "winsorcam", "random")
    full = run(10, methods=methods, out=tmp_path / "full", batch_size=3)

    real = sycam.workbench.capture
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # SIGINT during batch 3
        return real(*args, **kwargs)

    monkeypatch.setattr(sycam.workbench, "capture", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(10, methods=methods, out=tmp_path / "cut", batch_size=3)
    saved = sorted(p.name for p in (tmp_path / "cut" / "partial").glob("*.npz"))
    assert saved == ["part-00000000-00003.npz", "part-00000003-00003.npz"]
    assert not (tmp_path / "cut" / "results.csv").exists()

    calls["n"] = -10**6  # never dies again; count the captures of the rerun
    before = calls["n"]
    res = run(10, methods=methods, out=tmp_path / "cut", batch_size=3)
    assert calls["n"] - before == 2  # only batches 7-9 and 10 (of 4) are computed
    assert res.images_resumed == 6 and res.batches_computed == 2
    for m in methods:
        for k in FAST:
            np.testing.assert_array_equal(res.values[m][k], full.values[m][k])
    assert [(s.mean, s.lo, s.hi, s.n_valid) for s in res.summaries] == \
        [(s.mean, s.lo, s.hi, s.n_valid) for s in full.summaries]
    assert "resumed: 6 images" in E.format_table(res)

    # a third run computes nothing at all
    before = calls["n"]
    again = run(10, methods=methods, out=tmp_path / "cut", batch_size=3)
    assert calls["n"] == before and again.batches_computed == 0 and again.images_resumed == 10


def test_config_mismatch_is_an_error_and_fresh_clears(tmp_path):
    run(4, methods=("gradcam",), out=tmp_path / "o")
    with pytest.raises(SycamError, match=r"different configuration \(differs in: methods\).*another --out.*--fresh"):
        run(4, methods=("layercam",), out=tmp_path / "o")
    with pytest.raises(SycamError, match=r"differs in: seed"):
        run(4, methods=("gradcam",), out=tmp_path / "o", seed=1)
    res = run(4, methods=("layercam",), out=tmp_path / "o", fresh=True)
    assert res.images_resumed == 0 and res.batches_computed == 1
    assert json.loads((tmp_path / "o" / "config.json").read_text())["methods"][0]["name"] == "layercam"


def test_edited_cam_file_does_not_reuse_results(tmp_path):
    prog = tmp_path / "mine.cam"
    prog.write_text("relu(sum_c(mean_hw(G) * A))\n")
    run(4, methods=(str(prog),), out=tmp_path / "o")
    prog.write_text("relu(sum_c(A))\n")
    with pytest.raises(SycamError, match="differs in: methods"):
        run(4, methods=(str(prog),), out=tmp_path / "o")


def test_unwritable_out_is_reported_before_any_work(tmp_path, count_captures):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(SycamError, match=r"file.txt is an existing file.*another --out"):
        run(4, out=blocker)
    with pytest.raises(SycamError, match=r"cannot write to output folder .*file.txt/sub"):
        run(4, out=blocker / "sub")
    assert count_captures == {"bench": 0, "evaluate": 0}


# --------------------------------------------------------------------------- bad input


def test_invalid_program_gives_nan_and_a_count_not_a_crash(tmp_path):
    # conv1 activations are exactly 0 on black images and positive elsewhere: (1e20 x)^4
    # overflows to inf on the bright images only
    bad = tmp_path / "overflow.cam"
    bad.write_text("(sum_c(A@conv1) * 1e20) ^ 4\n")
    dark = (1, 4, 6)
    res = run(8, methods=(str(bad), "gradcam"), data=TinyData(8, dark=dark), out=tmp_path / "o")
    assert res.invalid == {"overflow": 5, "gradcam": 0}
    epg = res.values["overflow"]["energy_pg"]
    bright = [i for i in range(8) if i not in dark]
    assert np.isnan(epg[bright]).all()
    # an all-zero map is scored as the uniform map: the mask's share, 36/256
    np.testing.assert_allclose(epg[list(dark)], 36 / 256, rtol=0, atol=1e-7)
    assert res.summary("overflow", "energy_pg").n_valid == 3
    assert np.isfinite(res.values["gradcam"]["energy_pg"]).all()
    assert "invalid: overflow yields NaN/Inf on 5 of 8 images" in E.format_table(res)
    assert json.loads((tmp_path / "o" / "results.json").read_text())["invalid_images"]["overflow"] == 5


def test_unknown_method_lists_available():
    with pytest.raises(SycamError, match=r"unknown method 'gradkam'; available: .*gradcam.*random, center"):
        E.resolve_methods(["gradkam"])
    with pytest.raises(SycamError, match="program file not found"):
        E.resolve_methods(["nowhere/x.cam"])
    with pytest.raises(SycamError, match="listed twice"):
        E.resolve_methods(["gradcam", "grad-cam"])
    with pytest.raises(SycamError, match="unknown metric 'ioo'"):
        E.resolve_metrics(["ioo"])


def test_params_parsing_and_validation():
    assert E.parse_params(["winsorcam:p=50", "winsorcam:?q=1.5,r=2"]) == {"winsorcam": {"p": 50.0, "q": 1.5, "r": 2.0}}
    for bad in ("winsorcam", "winsorcam:p", "winsorcam:p=x", ":p=1"):
        with pytest.raises(SycamError, match="--params"):
            E.parse_params([bad])
    ms = E.resolve_methods(["winsorcam", "random"], {"winsorcam": {"p": 50}})
    assert ms[0].params == {"p": 50.0}
    with pytest.raises(SycamError, match="baselines have no parameters"):
        E.resolve_methods(["random"], {"random": {"p": 1}})
    with pytest.raises(SycamError, match="not among the methods"):
        E.resolve_methods(["gradcam"], {"winsorcam": {"p": 1}})
    with pytest.raises(SycamError, match=r"method 'gradcam': unknown parameter\(s\) \?p"):
        run(4, methods=("gradcam",), params={"gradcam": {"p": 1}})
    # p = 0 and p = 100 are different programs' worth of maps: the override is applied
    lo = run(4, methods=("winsorcam",), params={"winsorcam": {"p": 0}}, metrics=["energy_pg"])
    hi = run(4, methods=("winsorcam",), params={"winsorcam": {"p": 100}}, metrics=["energy_pg"])
    assert not np.array_equal(lo.values["winsorcam"]["energy_pg"], hi.values["winsorcam"]["energy_pg"])


def test_mask_metric_without_masks_is_a_clear_error():
    with pytest.raises(SycamError, match=r"metric\(s\) iou, energy_pg need ground-truth masks.*tiny has none"):
        run(4, data=TinyData(4, masks=False))
    res = run(4, data=TinyData(4, masks=False), metrics=["sparsity"])  # mask-free metrics still work
    assert res.summary("gradcam", "sparsity").n_valid == 4


def test_skipped_images_are_reported(tmp_path):
    data = TinyData(4)
    data.skipped = [("broken.jpg", "cannot decode image")]
    res = run(4, data=data, out=tmp_path / "o")
    assert res.skipped == [("broken.jpg", "cannot decode image")]
    assert "skipped: 1 bad images left out" in E.format_table(res)
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["skipped"] == [{"file": "broken.jpg", "reason": "cannot decode image"}]


def test_default_out_dir():
    assert E.default_out_dir("folder:/a/b/imagenet-val-dev/", "mobilenet_v2") == \
        Path("sycam-out/evaluate-folder-imagenet-val-dev-mobilenet_v2")
    assert E.default_out_dir("builtin", "pkg.mod:factory") == Path("sycam-out/evaluate-builtin-factory")


# --------------------------------------------------------------------------------- CLI

_FACTORY = textwrap.dedent('''
    import torch
    from torch import nn
    from sycam.models.bundle import ModelBundle

    def make():
        torch.manual_seed(0)
        net = nn.Sequential()
        net.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
        net.add_module("relu1", nn.ReLU())
        net.add_module("conv2", nn.Conv2d(4, 6, 3, padding=1, stride=2))
        net.add_module("relu2", nn.ReLU())
        net.add_module("pool", nn.AdaptiveAvgPool2d(1))
        net.add_module("flat", nn.Flatten())
        net.add_module("fc", nn.Linear(6, 8))
        return ModelBundle(net.eval(), lambda x: x, (32, 32), 8, "conv2", name="tinycli",
                           stage_layers=["conv1", "conv2"])
''')


def test_cli_end_to_end_with_tiny_model_and_resume(tmp_path, monkeypatch, capsys):
    (tmp_path / "sycam_eval_tiny_factory.py").write_text(_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cli"
    argv = ["evaluate", "--methods", "gradcam,layercam,random,center", "--metrics", "energy_pg,iou",
            "--model", "sycam_eval_tiny_factory:make", "--data", "builtin", "--limit", "8", "--batch-size", "4",
            "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "8 images" in text and "energy_pg ↑" in text
    for m in ("gradcam", "layercam", "random", "center"):
        assert any(line.startswith(m + " ") for line in text.splitlines())
    assert (out / "overlays.png").is_file() and (out / "table.png").is_file()
    assert main(argv) == 0  # same command again: everything is resumed
    assert "resumed: 8 images from earlier runs, 0 batches computed now" in capsys.readouterr().out
    changed = argv[:]
    changed[changed.index("8")] = "6"
    assert main(changed) == 2
    assert "different configuration (differs in: limit)" in capsys.readouterr().err
    assert main(changed + ["--fresh"]) == 0
    assert "6 images" in capsys.readouterr().out


def test_cli_errors_before_loading(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert main(["evaluate", "--methods", "gradcam", "--out", str(blocker), "--model", "no_such_model"]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert main(["evaluate", "--methods", "gradcam,bogus", "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert main(["evaluate", "--params", "gradcam", "--out", str(tmp_path / "o")]) == 2
    assert "METHOD:NAME=VALUE" in capsys.readouterr().err


def test_cli_builtin_end_to_end(tmp_path, capsys):
    from sycam.models.builtin import builtin_cache_path

    if not builtin_cache_path().exists():
        pytest.skip(f"built-in CNN not trained yet ({builtin_cache_path()}); its own test trains it")
    out = tmp_path / "b"
    assert main(["evaluate", "--methods", "gradcam,winsorcam,random", "--metrics", "energy_pg,iou",
                 "--model", "builtin", "--data", "builtin", "--limit", "16", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    doc = json.loads((out / "results.json").read_text())
    means = {(r["method"], r["metric"]): r["mean"] for r in doc["results"]}
    assert doc["n_images"] == 16
    # the trained model's Grad-CAM localises its target better than noise
    assert means[("gradcam", "energy_pg")] > means[("random", "energy_pg")]
