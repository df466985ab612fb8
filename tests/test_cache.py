"""The on-disk capture cache (sycam/cache.py): hits, invalidation, pieces, eviction, float16, CLI.

Every test uses its own cache folder; the suite runs with SYCAM_CACHE=off otherwise (conftest).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sycam.cache import STATS, CaptureCache, default_cache
from sycam.capture import CaptureRequest
from sycam.data import open_dataset
from sycam.lang.ast import ScoreSpec
from sycam.workbench import Workbench

TESTS = Path(__file__).resolve().parent
REQ = CaptureRequest(layers=("stage2.0", "stage3.0"), grad_layers={"stage2.0", "stage3.0"},
                     score_cam_layers={"stage3.0"}, ablation_layers={"stage2.0"})


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import tiny_models

    return tiny_models.bundle()


@pytest.fixture
def cache(tmp_path) -> CaptureCache:
    return CaptureCache(tmp_path / "cache")


class _Subset:
    """Some items of a dataset, other attributes passing through."""

    def __init__(self, ds, idx):
        self.ds, self.idx = ds, list(idx)

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.ds[self.idx[i]]

    def __getattr__(self, name):
        if name in ("ds", "idx"):
            raise AttributeError(name)
        return getattr(self.ds, name)


class Forwards:
    """Counts the model's forward passes (hook removed on exit)."""

    def __init__(self, module):
        self.module, self.n = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run(bundle, ds, request, cache, batch_size=8, targets="label", widen=None):
    wb = Workbench(bundle, ds, request, batch_size=batch_size, targets=targets, progress=False, cache=cache, widen=widen)
    return list(wb.iter_batches())


def delta(fn):
    before = STATS.copy()
    out = fn()
    return out, STATS.since(before)


def assert_same(a, b) -> None:
    for (ba, ta, ca), (bb, tb, cb) in zip(a, b, strict=True):
        assert torch.equal(ta, tb)
        for kind in ("A", "G", "S", "D"):
            da, db = getattr(ca, kind), getattr(cb, kind)
            assert sorted(da) == sorted(db), kind
            for n in da:
                assert torch.equal(da[n], db[n]), (kind, n)
        assert torch.equal(ca.Y, cb.Y) and torch.equal(ca.logits, cb.logits) and ca.input_size == cb.input_size


# ----------------------------------------------------------------------------- hits and exact values


def test_cached_captures_equal_fresh_ones_and_a_second_pass_computes_nothing(tiny, cache):
    ds = open_dataset("builtin", split="train", limit=20)  # batches of 8, 8 and 4
    fresh = run(tiny, ds, REQ, None)
    cold, d1 = delta(lambda: run(tiny, ds, REQ, cache))
    with Forwards(tiny.module) as fw:
        warm, d2 = delta(lambda: run(tiny, ds, REQ, cache))
    assert (d1["misses"], d1["hits"], d2["hits"], d2["misses"], d2["partial"]) == (3, 0, 3, 0, 0)
    assert fw.n == 0, "a hit ran the model"
    assert_same(fresh, cold)
    assert_same(fresh, warm)
    assert d2["bytes_read"] > 0 and d1["bytes_written"] >= d2["bytes_read"]
    assert len(cache.entries()) == 3


def test_only_missing_pieces_are_captured_and_the_score_is_part_of_the_key(tiny, cache):
    ds = open_dataset("builtin", split="train", limit=8)
    g3 = CaptureRequest(layers=("stage3.0",), grad_layers={"stage3.0"})
    run(tiny, ds, g3, cache)
    with Forwards(tiny.module) as fw:  # a subset of what is there: a hit
        (_, _, caps), = run(tiny, ds, CaptureRequest(layers=("stage3.0",)), cache)
    assert fw.n == 0 and list(caps.A) == ["stage3.0"] and not caps.G
    both = CaptureRequest(layers=("stage2.0", "stage3.0"), grad_layers={"stage2.0", "stage3.0"})
    got, d = delta(lambda: run(tiny, ds, both, cache))  # stage2.0 is new: one capture restricted to it
    assert d["partial"] == 1 and d["hits"] == 0
    assert_same(got, run(tiny, ds, both, None))
    # the same layers under another score: G, Y (and S, D) differ, so they are other pieces
    for score in (ScoreSpec("prob"), ScoreSpec("finer", k=2), ScoreSpec("finer", k=3), ScoreSpec("finer", k=3, alpha=0.5)):
        req = CaptureRequest(layers=("stage3.0",), grad_layers={"stage3.0"}, score_cam_layers={"stage3.0"},
                             ablation_layers={"stage3.0"}, score=score)
        got, d = delta(lambda: run(tiny, ds, req, cache))
        assert d["partial"] == 1, score  # A was there; G, S, D and Y under this score were not
        assert_same(got, run(tiny, ds, req, None))
        again, d = delta(lambda: run(tiny, ds, req, cache))
        assert d["hits"] == 1 and d["partial"] == 0, score
        assert_same(got, again)
    logit = run(tiny, ds, g3, cache)[0][2]
    prob = run(tiny, ds, CaptureRequest(layers=("stage3.0",), grad_layers={"stage3.0"}, score=ScoreSpec("prob")), cache)[0][2]
    assert not torch.equal(logit.G["stage3.0"], prob.G["stage3.0"])


def test_widen_captures_more_with_the_first_miss(tiny, cache):
    ds = open_dataset("builtin", split="train", limit=8)
    small = CaptureRequest(layers=("stage3.0",), grad_layers={"stage3.0"})
    wide = CaptureRequest(layers=("stage1.0", "stage2.0", "stage3.0"), grad_layers={"stage1.0", "stage2.0", "stage3.0"})
    (_, _, caps), = run(tiny, ds, small, cache, widen=wide)
    assert list(caps.A) == ["stage3.0"]  # what was asked for, no more
    got, d = delta(lambda: run(tiny, ds, wide, cache))
    assert d["hits"] == 1
    assert_same(got, run(tiny, ds, wide, None))


# ----------------------------------------------------------------------------- invalidation


def test_changed_weights_invalidate_the_entry(tiny, cache, tmp_path):
    from sycam.models import load_model

    ds = open_dataset("builtin", split="train", limit=8)
    first = tmp_path / "w1.pth"
    torch.save(tiny.module.state_dict(), first)
    changed = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    changed["stage2.0.weight"][0, 0, 0, 0] += 1e-3
    second = tmp_path / "w2.pth"
    torch.save(changed, second)

    def pass_with(weights):
        return delta(lambda: run(load_model("tiny_models:bundle", str(weights), device="cpu"), ds, REQ, cache))

    _, d = pass_with(first)
    assert d["misses"] == 1
    _, d = pass_with(first)  # another load of the same file: its content, not the object, is the key
    assert d["hits"] == 1
    got, d = pass_with(second)
    assert d["misses"] == 1 and d["hits"] == 0
    assert_same(got, run(load_model("tiny_models:bundle", str(second), device="cpu"), ds, REQ, None))
    # a weight edited in place on a live model is seen too (the model is hashed on every pass)
    with torch.no_grad():
        tiny.module.stage3[0].bias.data[0] += 1e-3
    _, d = delta(lambda: run(tiny, ds, REQ, cache))
    assert d["misses"] == 1


def _folder(root: Path, labels: list[int]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,label,split"]
    for i, label in enumerate(labels):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        rows.append(f"im{i}.png,{label},test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_changed_image_or_label_invalidates_its_batch_only(tiny, cache, tmp_path):
    root = _folder(tmp_path / "ds", [0, 1, 2, 3])
    req = CaptureRequest(layers=("stage3.0",), grad_layers={"stage3.0"})

    def pass_(targets="label"):
        ds = open_dataset(f"folder:{root}", split="test", size=64)
        return delta(lambda: run(tiny, ds, req, cache, batch_size=2, targets=targets))

    _, d = pass_()
    assert d["misses"] == 2
    os.utime(root / "im0.png", (time.time() + 60, time.time() + 60))  # touched, not changed: same pixels
    _, d = pass_()
    assert (d["hits"], d["misses"]) == (2, 0)
    im = np.asarray(Image.open(root / "im3.png")).copy()
    im[10:20, 10:20] = 255 - im[10:20, 10:20]
    Image.fromarray(im).save(root / "im3.png")
    got, d = pass_()
    assert (d["hits"], d["misses"]) == (1, 1)  # the batch of im2, im3 is new
    assert_same(got, run(tiny, open_dataset(f"folder:{root}", split="test", size=64), req, None, batch_size=2))
    text = (root / "manifest.csv").read_text().replace("im0.png,0,", "im0.png,5,")
    (root / "manifest.csv").write_text(text)
    got, d = pass_()
    assert (d["hits"], d["misses"]) == (1, 1)  # the targets of the first batch changed
    assert got[0][1].tolist() == [5, 1]
    # predicted targets are another entry; they are stored, so a hit needs no extra forward
    pred, d = pass_("pred")
    assert d["misses"] == 2
    with Forwards(tiny.module) as fw:
        again, d = pass_("pred")
    assert d["hits"] == 2 and fw.n == 0
    assert_same(pred, again)


# ----------------------------------------------------------------------------- eviction and damage


def test_least_recently_used_entries_are_evicted_beyond_the_limit(tiny, tmp_path):
    ds = open_dataset("builtin", split="train", limit=24)
    batches = [_Subset(ds, range(i, i + 8)) for i in (0, 8, 16)]
    probe = CaptureCache(tmp_path / "probe")
    run(tiny, batches[0], REQ, probe)
    size = probe.entries()[0][2]
    cache = CaptureCache(tmp_path / "c", max_gb=2.5 * size / 1e9)  # room for two entries
    run(tiny, batches[0], REQ, cache)
    run(tiny, batches[1], REQ, cache)
    (a, _, _), (b, _, _) = cache.entries()
    now = time.time()
    os.utime(a, (now - 100, now - 100))
    os.utime(b, (now - 50, now - 50))
    _, d = delta(lambda: run(tiny, batches[0], REQ, cache))  # a hit makes batch 0 the most recently used
    assert d["hits"] == 1
    cache._scanned = 0.0  # as after 30 s: the next write scans the folder
    run(tiny, batches[2], REQ, cache)
    assert len(cache.entries()) == 2 and b not in [e[0] for e in cache.entries()]
    _, d = delta(lambda: run(tiny, batches[0], REQ, cache))
    assert d["hits"] == 1
    _, d = delta(lambda: run(tiny, batches[1], REQ, cache))
    assert d["misses"] == 1  # evicted: captured again
    # a batch larger than the whole limit is not kept, with a warning
    small = CaptureCache(tmp_path / "s", max_gb=0.5 * size / 1e9)
    with pytest.warns(UserWarning, match="exceed the capture cache limit"):
        run(tiny, batches[0], REQ, small)
    assert small.entries() == []


def test_a_damaged_pack_is_recaptured(tiny, cache):
    ds = open_dataset("builtin", split="train", limit=8)
    fresh = run(tiny, ds, REQ, None)
    run(tiny, ds, REQ, cache)
    (entry, _, _), = cache.entries()
    data = next(entry.glob("p-*.bin"))
    data.write_bytes(data.read_bytes()[:100])  # truncated
    got, d = delta(lambda: run(tiny, ds, REQ, cache))
    assert d["hits"] == 0
    assert_same(fresh, got)
    (next(entry.glob("p-*.json"))).write_text("{not json")
    got, _ = delta(lambda: run(tiny, ds, REQ, cache))
    assert_same(fresh, got)


def test_clear_removes_entries_only(tiny, cache):
    ds = open_dataset("builtin", split="train", limit=8)
    run(tiny, ds, REQ, cache)
    (cache.root / "notes").mkdir()
    (cache.root / "notes" / "keep.txt").write_text("x")
    assert cache.clear() == 1
    assert cache.entries() == [] and (cache.root / "notes" / "keep.txt").exists()


# ----------------------------------------------------------------------------- float16


def test_float16_pieces_round_within_2_to_the_minus_11_and_keep_a_wide_range(tiny, tmp_path):
    c16 = CaptureCache(tmp_path / "f16", dtype="float16")
    arr, e = c16._encode("G", torch.tensor([3e-9, -1e-4, 0.5, 3e5]))
    back = torch.ldexp(torch.from_numpy(arr).float(), torch.tensor(e, dtype=torch.int32))
    want = torch.tensor([3e-9, -1e-4, 0.5, 3e5])
    assert torch.all((back - want).abs() <= 2 ** -11 * want.abs() + 3e5 * 2 ** -30)  # plain float16: 3e5 -> inf
    ds = open_dataset("builtin", split="train", limit=16)
    fresh = run(tiny, ds, REQ, None)
    cold = run(tiny, ds, REQ, c16)
    warm, d = delta(lambda: run(tiny, ds, REQ, c16))
    assert d["hits"] == 2
    assert_same(cold, warm)  # what a miss returns is what a hit reads: warm and cold runs agree exactly
    for (_, _, f), (_, _, c) in zip(fresh, cold):
        for kind in ("A", "G"):
            for n, x in getattr(f, kind).items():
                y = getattr(c, kind)[n]
                assert not torch.equal(x, y)
                assert torch.all((x - y).abs() <= 2 ** -11 * x.abs() + x.abs().max() * 2 ** -30), (kind, n)
        assert torch.equal(f.S["stage3.0"], c.S["stage3.0"]) and torch.equal(f.Y, c.Y)  # small pieces stay float32
    c32 = CaptureCache(tmp_path / "f32")
    run(tiny, ds, REQ, c32)
    assert sum(e[2] for e in c16.entries()) < 0.6 * sum(e[2] for e in c32.entries())


# ----------------------------------------------------------------------------- environment and CLI


def test_environment_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("SYCAM_CACHE_DIR", str(tmp_path / "x"))
    monkeypatch.setenv("SYCAM_CACHE", "on")
    monkeypatch.setenv("SYCAM_CACHE_MAX_GB", "0.25")
    c = default_cache()
    assert c is not None and c.root == tmp_path / "x" and c.max_bytes == 250_000_000 and c.dtype == "float32"
    assert default_cache() is c
    monkeypatch.setenv("SYCAM_CACHE", "off")
    assert default_cache() is None
    monkeypatch.setenv("SYCAM_CACHE", "on")
    monkeypatch.setenv("SYCAM_CACHE_MAX_GB", "lots")
    from sycam.errors import SycamError

    with pytest.raises(SycamError, match="SYCAM_CACHE_MAX_GB must be a number"):
        default_cache()
    monkeypatch.setenv("SYCAM_CACHE_MAX_GB", "1")
    monkeypatch.setenv("SYCAM_CACHE_DTYPE", "int8")
    with pytest.raises(SycamError, match="float32 or float16"):
        default_cache()


def test_cli_cache_info_and_clear(tiny, monkeypatch, tmp_path, capsys):
    from sycam.cli import main

    monkeypatch.setenv("SYCAM_CACHE", "on")
    monkeypatch.setenv("SYCAM_CACHE_DIR", str(tmp_path / "cli"))
    ds = open_dataset("builtin", split="train", limit=8)
    run(tiny, ds, REQ, "env")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"capture cache: {tmp_path / 'cli'} (on, float32)" in out and "1 cached batches" in out
    assert "tiny on builtin: 1 batches, 8 images" in out
    assert main(["cache", "info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    assert main(["cache", "clear"]) == 0
    assert "removed 1 cached batch from" in capsys.readouterr().out
    assert CaptureCache(tmp_path / "cli").entries() == []


# ----------------------------------------------------------------------------- a second synthesize run


@pytest.mark.slow
def test_a_second_synthesis_on_the_same_model_and_data_reads_its_captures(monkeypatch, tmp_path):
    """Another metric and budget, same model and data: every batch comes from the cache, the
    cache never runs the model (the built-in CNN, as `sycam synthesize`). The time it saves is a
    measurement, not a test (README, "The capture cache": 0.6 s instead of 9.9 s)."""
    import sycam.cache.store as store

    from sycam.cli.synthesize import captures_line
    from sycam.search.synthesize import SynthConfig, Synthesis

    monkeypatch.setenv("SYCAM_CACHE", "on")
    monkeypatch.setenv("SYCAM_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(model="builtin", train_limit=32, val_limit=32, test_limit=32, batch_size=16, max_size=4,
                  references=("gradcam", "winsorcam"), progress=False, sanity="off", device="cpu")
    first = Synthesis(SynthConfig(metrics=["iou"], candidates=10, out=str(tmp_path / "a"), **common)).run()

    def no_forward(*args, **kwargs):
        raise AssertionError("the second run captured a batch the cache should have served")

    monkeypatch.setattr(store, "capture", no_forward)
    second = Synthesis(SynthConfig(metrics=["energy_pg"], candidates=6, out=str(tmp_path / "b"), **common)).run()
    c1, c2 = first["stats"]["captures"], second["stats"]["captures"]
    assert c1["misses"] > 0 and c2["batches"] > 0
    assert c2["hits"] == c2["batches"], c2  # nothing computed
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["stats"]["captures"]["hits"] == c2["hits"]
    line = captures_line(c2)
    assert line.startswith(f"captures: {c2['seconds']:.1f} s for {c2['batches']} batches; {c2['hits']} from the cache")


def test_a_second_evaluation_reads_its_captures(monkeypatch, tmp_path):
    """`sycam evaluate` again with other metrics on the same model and data: every batch from the
    cache, the same values, under 10% of the first run's capture time (the built-in CNN)."""
    from sycam.evaluation import evaluate
    from sycam.models import load_model

    monkeypatch.setenv("SYCAM_CACHE", "on")
    monkeypatch.setenv("SYCAM_CACHE_DIR", str(tmp_path / "cache"))
    bundle = load_model("builtin", device="cpu")
    ds = open_dataset("builtin", split="test", limit=256)
    methods = ["gradcam", "layercam", "winsorcam", "layeravg"]
    first, d1 = delta(lambda: evaluate(bundle, ds, methods, ["iou", "energy_pg"], batch_size=32, progress=False, figures=False))
    second, d2 = delta(lambda: evaluate(bundle, ds, methods, ["energy_pg", "pointing_game"], batch_size=32, progress=False,
                                        figures=False))
    assert (d1["misses"], d2["hits"], d2["misses"], d2["partial"]) == (8, 8, 0, 0)
    for m in methods:
        assert np.array_equal(first.values[m]["energy_pg"], second.values[m]["energy_pg"], equal_nan=True)
    assert second.capture_seconds <= 0.1 * first.capture_seconds, (first.capture_seconds, second.capture_seconds)
