"""A study in PostgreSQL shared by several workers, as in the README's multi-machine recipe.

Needs a server: SYCAM_TEST_POSTGRES=postgresql://user:password@host:port/database (.ci/run starts
a throwaway one). Without it these tests skip, saying so; under CI=true they fail instead.
"""
from __future__ import annotations

import os
import uuid

import pytest

from workers_helpers import SMALL, check_shared_run, cli, finish, kill_a_worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("SYCAM_TEST_POSTGRES", "")
    if not url:
        why = "SYCAM_TEST_POSTGRES is not set (a PostgreSQL URL; .ci/run starts a server and sets it)"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    return url


@pytest.fixture
def study(pg_url):
    """A fresh study name; the study and its claims are removed afterwards."""
    import optuna
    import sqlalchemy as sa

    from sycam.search.study import _with_driver

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=_with_driver(pg_url))
    except KeyError:
        pass
    engine = sa.create_engine(_with_driver(pg_url))
    with engine.begin() as con:
        con.execute(sa.text("DELETE FROM sycam_claims WHERE study = :s"), {"s": name})
    engine.dispose()


def test_three_workers_on_postgresql_one_killed_and_restarted(tmp_path, pg_url, study, single_worker_run):
    import sqlalchemy as sa

    from sycam.search.study import _with_driver

    single_dir, _ = single_worker_run  # SQLite, one worker (conftest.py: shared with tests/test_workers.py)
    multi = tmp_path / "multi"
    proc = cli([*SMALL, "--candidates", "45", "--out", str(multi), "--workers", "3", "--storage", pg_url, "--study", study],
               cache=tmp_path / "cache")
    kill_a_worker(proc, multi, after_lines=3)
    out = finish(proc)
    assert out.count("Hall of fame") == 1, out
    assert pg_url.split("@")[0].split(":")[-1] not in out  # the password is never printed
    check_shared_run(single_dir, multi, n_workers=3, restarts=1)
    engine = sa.create_engine(_with_driver(pg_url))
    with engine.begin() as con:
        states = dict(con.execute(sa.text("SELECT t.state, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                          "WHERE s.study_name = :s GROUP BY t.state"), {"s": study}).all())
        claims = con.execute(sa.text("SELECT COUNT(*), COUNT(vals) FROM sycam_claims WHERE study = :s"), {"s": study}).one()
    engine.dispose()
    # (the references stay queued as WAITING: --candidates within the enumeration leaves Optuna no trial)
    assert states.get("COMPLETE", 0) > 0 and "RUNNING" not in states, states
    assert claims[0] == claims[1] > 0, "a claim was left without values"
    manifest = (multi / "manifest.json").read_text()
    assert "***@" in manifest and pg_url.split("@")[0].split(":")[-1] not in manifest


@pytest.mark.parametrize("what", ["password", "database"])
def test_a_wrong_password_or_a_missing_database_is_one_line(pg_url, what, tmp_path, capsys, monkeypatch):
    from sycam.cli import main
    from workers_helpers import TESTS

    monkeypatch.syspath_prepend(str(TESTS))
    head, _, tail = pg_url.rpartition("@")
    scheme_user, _, password = head.rpartition(":")
    host, _, _ = tail.partition("/")
    if what == "password":
        url, reason = f"{scheme_user}:not-{password}@{tail}", "password authentication failed"
    else:
        url, reason = f"{head}@{host}/no_such_database_{uuid.uuid4().hex[:6]}", "does not exist"
    for extra in ([], ["--worker", "0/3"], ["--workers", "3"]):
        code = main(["synthesize", *SMALL, "--candidates", "5", "--out", str(tmp_path / "x"), "--storage", url, *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("sycam synthesize: cannot open the study storage postgresql://"), err
        assert reason in err and ":***@" in err and password not in err and "Traceback" not in err, err
