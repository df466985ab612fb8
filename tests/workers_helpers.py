"""Shared by tests/test_workers.py (SQLite) and tests/test_postgres.py: several workers on one
study, one of them killed and restarted, against a single worker with the same --candidates."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SMALL = ["--metric", "iou", "--model", "tiny_models:bundle", "--train-limit", "32", "--val-limit", "32", "--test-limit", "32",
         "--batch-size", "32", "--max-size", "4", "--references", "gradcam,layercam", "--sanity", "off", "--quiet"]


def env(cache: Path | None = None) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    if cache is not None:  # the workers share one capture cache: concurrent writers, restarts read it
        e["SYCAM_CACHE"], e["SYCAM_CACHE_DIR"] = "on", str(cache)
    return e


def cli(args: list[str], cache: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sycam.cli", "synthesize", *args], env=env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def journal_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("enumerated*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip().endswith("}"):  # a line cut by a kill is not a scored program
                rows.append({**json.loads(line), "file": path.name})
    return rows


def hall(out: Path) -> list[tuple]:
    """Every row of the hall of fame and the references: what was chosen and every number reported."""
    doc = json.loads((out / "hall_of_fame.json").read_text())
    return [(r["name"], r["program"], r["size"], r["source"] == "reference", json.dumps(r["val"], sort_keys=True),
             json.dumps(r["test"], sort_keys=True), json.dumps(r["test_ci"], sort_keys=True)) for r in doc["rows"]]


def kill_a_worker(proc: subprocess.Popen, out: Path, after_lines: int, timeout: float = 300) -> int:
    """SIGKILL the first worker whose journal holds ``after_lines`` values; its pid. (Not a fixed
    worker: the workers race one list, and one that starts late may find everything done.)"""
    deadline = time.time() + timeout
    pids = out / "workers.json"
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        for journal in sorted(out.glob("enumerated.*of*.jsonl")):
            if pids.exists() and len(journal.read_text().splitlines()) >= after_lines:
                index = journal.name.split(".")[1].split("of")[0]
                pid = json.loads(pids.read_text())["workers"][index]["pid"]
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker journaled {after_lines} values")


def check_shared_run(single: Path, multi: Path, n_workers: int, restarts: int) -> None:
    """No candidate lost or scored twice, the same hall of fame as one worker."""
    one = journal_rows(single)
    many = journal_rows(multi)
    wanted = [(r["program"], r["rung"]) for r in one]  # each value of the race: a program at a rung
    assert len(set(wanted)) == len(wanted)
    scored = Counter((r["program"], r["rung"]) for r in many if r.get("scored", True))
    reused = {(r["program"], r["rung"]) for r in many if not r.get("scored", True)}
    twice = {p: n for p, n in scored.items() if n > 1}
    assert not twice, f"scored twice: {twice}"
    assert set(scored) | reused == set(wanted), "a value was lost (or one that a single worker never computes was added)"
    # each worker writes its own journal (one that starts after the others finished reads theirs
    # and has nothing to add); the work was shared, the killed worker's part included
    files = Counter(r["file"] for r in many)
    assert set(files) <= {f"enumerated.{i}of{n_workers}.jsonl" for i in range(n_workers)}, files
    by_worker = Counter(r["file"] for r in many if r.get("scored", True))
    assert len(by_worker) >= 2, f"the values were computed by one worker only: {by_worker}"
    assert hall(multi) == hall(single)
    summary = json.loads((multi / "summary.json").read_text())["stats"]
    assert summary["workers"] == n_workers and summary["restarts"] == restarts
