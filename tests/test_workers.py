"""--workers N on one machine (SQLite study): shares, claims, a killed worker restarted, one report."""
from __future__ import annotations

import json
import sqlite3

import pytest

from workers_helpers import SMALL, check_shared_run, cli, finish, journal_rows, kill_a_worker


@pytest.mark.slow
def test_workers_share_a_study_and_a_killed_one_resumes(tmp_path, single_worker_run):
    """Three workers, one SIGKILLed mid-run and restarted by the parent: every enumerated candidate
    scored exactly once, and the hall of fame of a single worker with the same --candidates."""
    single_dir, single = single_worker_run  # (conftest.py: shared with tests/test_postgres.py)
    assert "Hall of fame" in single
    multi = tmp_path / "multi"
    proc = cli([*SMALL, "--candidates", "45", "--out", str(multi), "--workers", "3", "--study", "shared"],
               cache=tmp_path / "cache")
    kill_a_worker(proc, multi, after_lines=3)
    out = finish(proc)
    assert out.count("Hall of fame") == 1, out  # printed once, by the parent
    check_shared_run(single_dir, multi, n_workers=3, restarts=1)
    con = sqlite3.connect(multi / "study.db")
    try:
        states = dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        claims = con.execute("SELECT COUNT(*), COUNT(vals) FROM sycam_claims").fetchone()
    finally:
        con.close()
    assert "RUNNING" not in states, states
    assert claims[0] == claims[1] > 0, "a claim was left without values"
    assert not (multi / "workers.json").exists()


def test_worker_options_are_checked(capsys):
    from sycam.cli import main

    for args, message in ((["--worker", "3/2"], "--worker I/N needs 0 <= I < N, got 3/2"),
                          (["--worker", "x"], "--worker takes I/N, e.g. 0/3 for the first of three workers; got 'x'"),
                          (["--workers", "0"], "--workers must be at least 1, got 0"),
                          (["--workers", "2", "--worker", "0/2"],
                           "give either --workers N (processes on this machine) or --worker I/N (one share), not both")):
        assert main(["synthesize", *SMALL, "--candidates", "5", *args]) == 2
        assert capsys.readouterr().err == f"sycam synthesize: {message}\n"


def test_a_worker_share_uses_its_own_journal_and_the_claims(tmp_path):
    """--worker I/N alone (as on one of several machines): its share first, then what nobody claimed, reported at its end."""
    out = tmp_path / "w"
    text = finish(cli([*SMALL, "--candidates", "12", "--out", str(out), "--worker", "1/2"]))
    assert "Hall of fame" in text
    rows = journal_rows(out)
    # alone, the share scores its own programs and then the rest, which no other worker claimed
    assert {r["file"] for r in rows} == {"enumerated.1of2.jsonl"} and len({r["program"] for r in rows}) == 12
    con = sqlite3.connect(out / "study.db")
    try:
        assert con.execute("SELECT COUNT(vals) FROM sycam_claims").fetchone()[0] > 0
    finally:
        con.close()
    assert json.loads((out / "manifest.json").read_text())["config"]["worker"] == [1, 2]
