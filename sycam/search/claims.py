"""Which worker scores which candidate: claims in the study's own database.

Workers of one study (``--workers N`` on a machine, ``--worker I/N`` on several) split the
enumerator's programs deterministically, but Optuna's samplers in different workers can propose
the same program, and a sampled program may be one that another worker enumerated. Before scoring,
a worker *claims* the candidate's key (its maps on the probe images and its parameters: the same key
that makes a single worker skip observational duplicates) in a table ``sycam_claims`` next to
Optuna's own, and writes the values there once scored. Another worker that meets the key takes those
values instead of scoring the candidate again; while the claim is in flight it waits.

A claim whose owner died is taken over: at once when the owner was a process on this host that no
longer exists (a killed worker restarted by ``--workers``), otherwise after ``STALE_SECONDS``. The
table works on any SQLAlchemy database Optuna's RDB storage supports (SQLite, PostgreSQL, MySQL).
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Sequence

from optuna.storages import RDBStorage
from sqlalchemy import Column, Float, MetaData, String, Table, Text, and_, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

STALE_SECONDS = 600.0  # a claim older than this, still without values, is presumed dead (another host)

_META = MetaData()
_CLAIMS = Table(
    "sycam_claims", _META,
    Column("study", String(512), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("owner", String(512), nullable=False),  # host|pid|worker
    Column("claimed", Float, nullable=False),  # unix time of the claim
    Column("vals", Text, nullable=True),  # JSON list of metric values once scored
)


class Claims:
    """Claims of one study by one worker (``owner``: which share of the work it does)."""

    def __init__(self, storage: RDBStorage, study: str, worker: str) -> None:
        self.engine = storage.engine
        self.study = study
        self.host = socket.gethostname()
        self.owner = f"{self.host}|{os.getpid()}|{worker}"
        self.waited = 0.0  # seconds spent waiting for claims in flight elsewhere
        self.reused = 0  # candidates whose values another worker had found
        for attempt in range(5):
            try:
                _META.create_all(self.engine, checkfirst=True)
                break
            except (OperationalError, IntegrityError):  # workers starting together race to create it
                time.sleep(0.2 * (attempt + 1))

    def take(self, key: str) -> tuple[float, ...] | None:
        """``None``: this worker now owns ``key`` and must score it, then call :meth:`done`.
        Otherwise the values another worker found for it."""
        pause = 0.02
        t0 = time.perf_counter()
        while True:
            try:
                with self.engine.begin() as con:
                    con.execute(insert(_CLAIMS).values(study=self.study, key=key, owner=self.owner, claimed=time.time(),
                                                       vals=None))
                return None
            except IntegrityError:
                pass
            with self.engine.begin() as con:
                row = con.execute(select(_CLAIMS.c.owner, _CLAIMS.c.claimed, _CLAIMS.c.vals)
                                  .where(and_(_CLAIMS.c.study == self.study, _CLAIMS.c.key == key))).first()
            if row is None:  # deleted meanwhile: claim again
                continue
            owner, claimed, vals = row
            if vals is not None:
                self.waited += time.perf_counter() - t0
                self.reused += 1
                return decode(json.loads(vals))
            if owner == self.owner or self._dead(owner) or time.time() - claimed > STALE_SECONDS:
                with self.engine.begin() as con:  # compare and set: one of several takers wins
                    won = con.execute(update(_CLAIMS).where(and_(_CLAIMS.c.study == self.study, _CLAIMS.c.key == key,
                                                                 _CLAIMS.c.owner == owner, _CLAIMS.c.claimed == claimed))
                                      .values(owner=self.owner, claimed=time.time())).rowcount
                if won:
                    return None
            time.sleep(pause)
            pause = min(0.5, pause * 1.5)

    def done(self, key: str, values: Sequence[float]) -> None:
        text = json.dumps([float(v) if math.isfinite(float(v)) else None for v in values])
        with self.engine.begin() as con:
            con.execute(update(_CLAIMS).where(and_(_CLAIMS.c.study == self.study, _CLAIMS.c.key == key))
                        .values(vals=text, owner=self.owner))

    def _dead(self, owner: str) -> bool:
        """Whether a claim's owner was a process on this host that no longer runs."""
        host, _, rest = owner.partition("|")
        pid_text = rest.partition("|")[0]
        if host != self.host or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, another user's
            return False
        return False

    def scored(self) -> dict[str, str]:
        """key -> owner of every claim of the study that has values (for tests and reports)."""
        with self.engine.begin() as con:
            rows = con.execute(select(_CLAIMS.c.key, _CLAIMS.c.owner)
                               .where(and_(_CLAIMS.c.study == self.study, _CLAIMS.c.vals.is_not(None)))).all()
        return {k: o for k, o in rows}


def decode(vals: list) -> tuple[float, ...]:
    return tuple(math.nan if v is None else float(v) for v in vals)


__all__ = ["Claims", "STALE_SECONDS"]
