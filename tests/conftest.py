"""Shared fixtures: where ../shared lives, and a skip with a clear reason when it does not."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see sycam/__init__.py
# no test reads captures another test (or the user's runs) left on disk; tests/test_cache.py turns it on
os.environ["SYCAM_CACHE"] = "off"

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYCAM_SHARED", ROOT.parent / "shared"))
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
IMAGENET_DEV = SHARED / "data" / "imagenet-val-dev"
COCO128 = SHARED / "data" / "coco128"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def need(path: Path) -> Path:
    """Skip the calling test, naming the missing path, where shared data is absent."""
    if not path.exists():
        pytest.skip(f"shared resource not found: {path} (set SYCAM_SHARED to the folder holding weights/ and data/)")
    return path


@pytest.fixture
def mobilenet_weights() -> Path:
    return need(MOBILENET_WEIGHTS)


@pytest.fixture
def imagenet_dev() -> Path:
    return need(IMAGENET_DEV)


@pytest.fixture
def coco128() -> Path:
    return need(COCO128)


@pytest.fixture(scope="session")
def single_worker_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One worker's run of ``workers_helpers.SMALL --candidates 45`` (SQLite): its folder and printout,
    the reference the multi-worker tests (SQLite and PostgreSQL) compare with. Computed once: both
    read it only, and the command and its result are the same for both."""
    from workers_helpers import SMALL, cli, finish

    out = tmp_path_factory.mktemp("single-worker") / "single"
    return out, finish(cli([*SMALL, "--candidates", "45", "--out", str(out)]))
