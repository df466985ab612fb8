"""Smoke test of the benchmark suite (experiments/timing): every code path on a tiny CNN and tiny
sizes, asserting structure and exact counts, never timings."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # experiments/ is not an installed package
    sys.path.insert(0, str(ROOT))

from experiments.timing import run as bench_run  # noqa: E402
from experiments.timing.counting import count_passes  # noqa: E402
from experiments.timing.models import TinyNet, make_inputs  # noqa: E402
from experiments.timing.peers import agreement, make_runner  # noqa: E402
from experiments.timing.search import sample_programs  # noqa: E402
from experiments.timing.timing import interleaved, ratio, summarize  # noqa: E402
from sycam.lang import ast as A  # noqa: E402


def test_summaries_and_ratios_by_hand() -> None:
    s = summarize([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    r = ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert r["ratio"] == pytest.approx(4.0 / 2.0)
    assert (r["paired_min"], r["paired_max"], r["paired_median"]) == (2.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="no timings"):
        summarize([])


def test_interleaved_rotates_the_order_and_warms_up() -> None:
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = interleaved(fns, rounds=2, device=torch.device("cpu"), warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}
    with pytest.raises(ValueError, match="rounds"):
        interleaved(fns, rounds=0, device=torch.device("cpu"))


def test_pass_counts_are_exact_on_the_tiny_net() -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, t, _ = make_inputs(2, 32, torch.device("cpu"), real=False)
    n_params = len(list(model.parameters()))  # conv1 (w, b), two convs in layer4 (w, b each), fc (w, b)
    assert n_params == 8
    expected = {
        # one forward, one autograd.grad that stops at layer4, no parameter gradients
        ("sycam", "gradcam"): dict(forwards=1, images=2, backwards=1, reached_first_conv=0, param_grads=0),
        ("floor", "gradcam"): dict(forwards=1, images=2, backwards=1, reached_first_conv=0, param_grads=0),
        # loss.backward(): the whole network, every parameter's .grad
        ("pytorch-grad-cam", "gradcam"): dict(forwards=1, images=2, backwards=1, reached_first_conv=1, param_grads=8),
        # Score-CAM (grad-cam 1.5.7), 16 channels x 2 images: 1 forward + per image one chunk of 16 masked images
        ("pytorch-grad-cam", "scorecam"): dict(forwards=3, images=34, backwards=0, reached_first_conv=0, param_grads=0),
    }
    for (impl, method), want in expected.items():
        run = make_runner(impl, model, method, "layer4", x, t)
        with count_passes(model) as count:
            run()
        assert count.as_dict() == want, (impl, method)
    # sycam's Score-CAM chunking and blank-mask sharing are its own business: no backward, and at
    # most the 2 + 32 images of the plain method
    with count_passes(model) as count:
        make_runner("sycam", model, "scorecam", "layer4", x, t)()
    assert count.backwards == 0 and count.param_grads == 0 and 2 < count.images <= 34
    assert all(p.grad is None for p in model.parameters())  # count_passes cleans up after itself


def test_agreement_by_hand() -> None:
    a = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    assert agreement(a, a) == pytest.approx(1.0)
    assert agreement(a, 2 * a + 1) == pytest.approx(1.0)
    assert agreement(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        agreement(a, a[:, :1])


def test_sampled_programs_are_distinct_and_sized() -> None:
    single = sample_programs(6, "single", seed=1)
    assert len({str(p.body) for p in single}) == 6
    assert all(5 <= A.size(p.body) <= 12 and not isinstance(p.body, A.Fuse) for p in single)
    multi = sample_programs(3, "multi", seed=1, sel="stages")
    assert all(isinstance(p.body, A.Fuse) for p in multi)
    with pytest.raises(ValueError, match="kind"):
        sample_programs(1, "both")


def test_targets_verdicts_by_hand() -> None:
    results = {
        "explain": [{"model": "m", "batch": 1, "overhead": {"gradcam": {"ratio": 1.10}},
                     "speedup": {"gradcam": {"pytorch-grad-cam": {"ratio": 1.5}}}}],
        "search": {"single": {"candidates_per_second": {"median": 200.0}, "speedup_vs_naive": 40.0}},
        "scale": [{"n": 10, "batch": 4, "mode": "stream", "rss_peak_mb": 500.0},
                  {"n": 100, "batch": 4, "mode": "stream", "rss_peak_mb": 532.0}],
    }
    rows = {(r["target"], r["where"]): r for r in bench_run.evaluate_targets(results)}
    floor = rows[("gradcam_vs_floor", "m bs1")]
    assert floor["met"] is True and floor["margin"] == pytest.approx(1.15 / 1.10)
    pgc = rows[("gradcam_vs_pgc", "m bs1")]
    assert pgc["met"] is False and pgc["margin"] == pytest.approx(0.75)
    assert rows[("search_rate", "single-layer")]["margin"] == pytest.approx(2.0)
    assert rows[("search_vs_naive", "single-layer")]["met"] is False
    scale = rows[("scale_bounded", "10 -> 100 images")]
    assert scale["value"] == pytest.approx(32.0) and scale["met"] is True


def test_cli_rejects_unknown_sections() -> None:
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--sections", "explain,warp"])


def test_tiny_suite_end_to_end(tmp_path: Path) -> None:
    results = bench_run.main(["--tiny", "--quiet", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(bench_run.SECTIONS) <= set(saved)
    # explain: every method of every implementation that has it, plus the floor
    e = saved["explain"][0]
    assert set(e["times"]) == {"floor", "gradcam/sycam", "gradcam/pytorch-grad-cam", "gradcam/torchcam", "gradcam/captum",
                               "gradcampp/sycam", "gradcampp/pytorch-grad-cam", "gradcampp/torchcam",
                               "layercam/sycam", "layercam/pytorch-grad-cam", "layercam/torchcam"}
    assert e["times"]["floor"]["n"] == 2 and set(e["passes"]) == set(e["times"])
    assert set(e["speedup"]["gradcam"]) == {"pytorch-grad-cam", "torchcam", "captum"}
    # the peers compute the same Grad-CAM as sycam (correlation of the maps)
    assert e["agreement"]["gradcam/pytorch-grad-cam"] == pytest.approx(1.0, abs=1e-3)
    sc = saved["scorecam"][0]
    assert sc["channels"] == 16 and 1 < sc["passes"]["scorecam/sycam"]["images"] <= 1 + 16
    assert sc["passes"]["scorecam/pytorch-grad-cam"]["images"] == 1 + 16
    # the variant without the folded copy computes the same maps and is compared with the real peers
    assert sc["agreement"]["scorecam/sycam[plain]"] == pytest.approx(1.0, abs=1e-5)
    assert set(sc["variant_speedup"]["scorecam/sycam[plain]"]) == {"pytorch-grad-cam", "torchcam"}
    # and forwards the same images
    assert sc["passes"]["scorecam/sycam[plain]"]["images"] == sc["passes"]["scorecam/sycam"]["images"]
    assert set(sc["forward_cost"]) == {"nchw/1", "nchw/2", "channels_last/1", "channels_last/2"}
    ml = saved["multilayer"]
    assert ml["layers"] == 3 and set(ml["memory"]) == {"winsorcam/sycam", "gradcam/pytorch-grad-cam", "floor"}
    assert ml["passes"]["winsorcam/sycam"]["forwards"] == 1 and ml["passes"]["winsorcam/sycam"]["param_grads"] == 0
    for kind in ("single", "multi"):
        s = saved["search"][kind]
        assert s["valid"] >= 1 and s["candidates_per_second"]["median"] > 0 and s["speedup_vs_naive"] > 0
        raced = s["raced"]  # the race's own counts: every candidate on rung 0, scored or a twin
        assert raced["rungs"][-1] == "exact" and raced["candidates_per_second"]["median"] > 0
        assert raced["scored_per_rung"][0] + raced["observational_twins"] == s["valid"]
    assert [(r["n"], r["mode"]) for r in saved["scale"]] == [(16, "stream"), (32, "stream"), (16, "load")]
    assert all(r["images"] == r["n"] and r["rss_peak_mb"] >= r["rss_before_mb"] > 0 for r in saved["scale"])
    assert saved["profile"]["explain"]["ops_sycam"]["top"] and saved["profile"]["search"]["python"]["by_file"]
    assert {t["target"] for t in saved["targets"]} == set(bench_run.TARGETS)
    md = (tmp_path / "report.md").read_text()
    for header in ("## Targets", "## 1. Explain", "## 1b. Score-CAM", "## 2. Multi-layer", "## 3. Search", "## 4. Scale",
                   "## 5. Profiles"):
        assert header in md
    assert results["meta"]["plan"]["name"] == "tiny" and "commit" in saved["meta"]["environment"]["git"]


def test_memprobe_subprocess_reports_its_peak() -> None:
    from experiments.timing.memprobe import run_probe

    out = run_probe({"task": "explain", "model": "tiny", "impl": "sycam", "method": "gradcam", "batch": 2, "size": 32,
                     "real_inputs": False})
    assert out["rss_peak_mb"] >= out["rss_before_mb"] >= out["rss_start_mb"] > 0
    assert out["rss_delta_mb"] == pytest.approx(out["rss_peak_mb"] - out["rss_before_mb"])
    assert out["peak_method"] in ("VmHWM reset by clear_refs", "ru_maxrss (peak since process start)")
    with pytest.raises(RuntimeError, match="unknown task"):
        run_probe({"task": "nothing"})
