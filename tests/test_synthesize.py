"""`sycam synthesize`: outputs, honest splits, resuming a killed run, two workers on one study.

These use a tiny untrained CNN (tests/tiny_models.py) on the built-in benchmark, so they need
no trained model; the real default run is exercised by the README command.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sycam
from sycam.capture import CaptureRequest
from sycam.search.synthesize import SynthConfig, Synthesis, format_hall

TESTS = Path(__file__).resolve().parent
SMALL = ["--model", "tiny_models:bundle", "--train-limit", "32", "--val-limit", "32", "--test-limit", "32",
         "--batch-size", "32", "--max-size", "6", "--references", "gradcam,layercam,winsorcam", "--quiet"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sycam.cli", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture
def tiny_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def test_synthesize_writes_a_reproducible_run(tmp_path, tiny_on_path):
    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", budget=12, out=str(tmp_path / "run"), train_limit=32,
                      val_limit=32, test_limit=32, batch_size=32, max_size=5, references=("gradcam", "winsorcam"),
                      progress=False)
    result = Synthesis(cfg).run()
    out = tmp_path / "run"
    for name in ("best1.cam", "hall_of_fame.json", "hall_of_fame.csv", "manifest.json", "overlays.png", "summary.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grammar_hash"] and manifest["config"]["seed"] == 0 and "torch" in manifest["versions"]
    # the best program is a loadable .cam file whose scores are the ones reported
    program = sycam.load(out / "best1.cam")
    assert str(sycam.check(program).type) == "Map"
    best = result["best"]
    assert set(best) >= {"train", "val", "test", "size", "program"}
    assert {r["name"] for r in result["references"]} == {"gradcam", "winsorcam"}
    # selection is on validation: the first row has the best validation score of the hall
    vals = [r["val"]["iou"] for r in result["hall_of_fame"]]
    assert vals[0] == max(vals)
    text = format_hall(result)
    assert "best synthesized" in text and "gradcam" in text
    assert result["stats"]["enumeration"]["generated"] > result["stats"]["enumeration"]["programs"] > 0


@pytest.mark.slow
def test_the_same_candidates_command_twice_gives_the_same_hall_of_fame(tmp_path):
    """README: with ``--candidates`` no clock is involved, so a run is reproducible. Two runs of one
    command (fresh processes, different hash seeds, different --out) must agree on every program
    and score of the hall of fame. ``--max-size 3`` leaves 80 enumerated programs, so the last
    candidates come from Optuna's sampler: both stages are compared."""
    args = ["synthesize", "--metric", "iou", "--candidates", "90", "--model", "tiny_models:bundle",
            "--train-limit", "32", "--val-limit", "32", "--test-limit", "32", "--batch-size", "32", "--max-size", "3",
            "--references", "gradcam", "--quiet"]
    procs = []
    for run, hash_seed in (("a", "1"), ("b", "2")):
        env = _env()
        env["PYTHONHASHSEED"] = hash_seed
        procs.append(subprocess.Popen([sys.executable, "-m", "sycam.cli", *args, "--out", str(tmp_path / run)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    a, b = (json.loads((tmp_path / run / "hall_of_fame.json").read_text()) for run in ("a", "b"))
    stats = json.loads((tmp_path / "a" / "summary.json").read_text())["stats"]
    assert stats["scored"] > stats["enumeration"]["programs"], stats  # Optuna scored some candidates too
    assert [(r["program"], r["params"]) for r in a["rows"]] == [(r["program"], r["params"]) for r in b["rows"]]
    assert a == b  # the scores too (train, val, test), to the last digit
    cams = sorted(p.name for p in (tmp_path / "a").glob("best*.cam"))  # one per row of the Pareto front
    assert cams and cams == sorted(p.name for p in (tmp_path / "b").glob("best*.cam"))
    for name in cams:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_racing_run_reports_exact_train_scores_and_phases(tmp_path, tiny_on_path):
    """With 96 train images the candidates race on 16 and 48 images at 32×32 before the exact rung;
    whatever reaches the hall of fame carries its exact train score (every train image, full size),
    and the summary holds the seconds of each phase."""
    from sycam.lang.parse import parse
    from sycam.workbench import mean_score

    cfg = SynthConfig(metrics=["iou"], model="tiny_models:bundle", candidates=60, out=str(tmp_path / "run"),
                      train_limit=96, val_limit=32, test_limit=32, batch_size=32, max_size=5, references=("gradcam",),
                      progress=False, sanity="off")
    synthesis = Synthesis(cfg)
    result = synthesis.run()
    stats = result["stats"]
    assert stats["rungs"] == ["16img@32", "48img@32", "exact"]
    assert stats["scored"] == stats["per_rung"][0] > stats["per_rung"][1] > stats["per_rung"][2] == stats["exact"] > 0
    assert stats["candidates"] == 60
    phases = stats["phases"]
    assert set(phases["seconds"]) == {"load", "capture", "enumerate", "race", "optuna", "final"}
    assert phases["budget"] is None and phases["overrun"] is None  # --candidates: no clock decides
    assert abs(sum(phases["seconds"].values()) - phases["total"]) < 0.05 * phases["total"] + 0.5
    train = synthesis.bench("train", _request_of(synthesis, result))
    for row in result["hall_of_fame"]:
        compiled = train.compile(parse(row["program"]))
        exact = mean_score(train.score(compiled, synthesis.metrics, row["params"] or None)["iou"])
        assert row["train"]["iou"] == pytest.approx(exact, abs=1e-6), row["program"]


def _request_of(synthesis, result):
    from sycam.compile import CompiledProgram
    from sycam.lang.parse import parse
    from sycam.workbench import merge_requests

    resolver = synthesis.bench("train", CaptureRequest(layers=())).resolver
    return merge_requests([CompiledProgram(parse(r["program"]), resolver).request for r in result["hall_of_fame"]])


def _study_trials(db: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    finally:
        con.close()


def _search_until_journaled(out: Path, lines: int) -> tuple[subprocess.Popen, Path]:
    """Start a long search into ``out``; return once its journal holds ``lines`` scored programs."""
    proc = _cli(["synthesize", "--metric", "iou", "--budget", "120", "--out", str(out), *SMALL])
    journal = out / "enumerated.jsonl"
    deadline = time.time() + 150
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < lines):
        time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    return proc, journal


@pytest.mark.slow
def test_killed_run_resumes_without_losing_scored_work(tmp_path):
    out = tmp_path / "run"
    proc, journal = _search_until_journaled(out, 15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    def scored(text: str) -> list[tuple[str, str]]:  # (program, rung): one line per value computed
        rows = [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]
        return [(r["program"], r["rung"]) for r in rows]

    before = scored(journal.read_text())
    assert len(before) >= 15
    # restart the same command with a short budget: every program scored before is reused
    again = _cli(["synthesize", "--metric", "iou", "--budget", "15", "--out", str(out), *SMALL])
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["from_journal"] >= len(before), summary["stats"]
    after = scored(journal.read_text())
    assert after[: len(before)] == before and len(set(after)) == len(after), "a scored program was lost or scored twice"


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    """A real SIGINT (Ctrl-C) mid-search: exit status 130, a one-line message instead of a
    traceback, every scored program kept in the journal, and the same command picks them up."""
    out = tmp_path / "run"
    proc, journal = _search_until_journaled(out, 10)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output, output
    lines = journal.read_text().splitlines()
    assert len(lines) >= 10 and all(line.strip().endswith("}") for line in lines)  # no torn line
    again = _cli(["synthesize", "--metric", "iou", "--budget", "15", "--out", str(out), *SMALL])
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["from_journal"] >= len(lines), summary["stats"]


def test_two_workers_share_one_sqlite_study(tmp_path):
    out = tmp_path / "shared"
    common = ["synthesize", "--metric", "iou", "--no-enumerate", "--study", "shared-study", "--out", str(out), *SMALL]
    out.mkdir()
    workers = [_cli(common + ["--budget", "40", "--candidates", "24", "--seed", str(seed)]) for seed in (1, 2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = _study_trials(out / "study.db")
    numbers = [n for n, _ in trials]
    assert numbers == list(range(len(numbers))), "trial numbers must be unique and gap-free"
    states = {s for _, s in trials}
    assert "RUNNING" not in states and "WAITING" not in states, states
    assert len(trials) >= 24  # both workers added trials to the one study


@pytest.mark.slow
def test_killed_evaluation_resumes_from_its_written_batches(tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", "--methods", "gradcam,winsorcam", "--metrics", "iou,energy_pg", "--model", "tiny_models:bundle",
            "--data", "builtin", "--limit", "320", "--batch-size", "16", "--out", str(out), "--quiet", "--no-figures"]
    proc = _cli(args)
    partial = out / "partial"
    deadline = time.time() + 150
    while time.time() < deadline and (not partial.exists() or len(list(partial.glob("*.npz"))) < 3):
        time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(partial.glob("*.npz")))
    assert 3 <= done_before < 20, "the run was killed before it finished"
    again = _cli(args)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    result = json.loads((out / "results.json").read_text())
    assert result["images_resumed"] >= 3 * 16, result.get("images_resumed")
    # only the batches that were not written before the kill were computed again
    assert result["batches_computed_this_run"] == 20 - done_before
    assert len(list(partial.glob("*.npz"))) == 20
