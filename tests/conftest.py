"""Shared test fixtures: paths to the read-only official fixtures beside the repo (../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from flexavatar.dev_fixtures import fixtures_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = fixtures_dir()
OFFICIAL = SHARED / "official_flex"
DRIVING = SHARED / "driving"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run tests marked slow (FLEX-1 size); or set FLEXAVATAR_SLOW=1")


def _slow_enabled(config) -> bool:
    return config.getoption("--runslow") or os.environ.get("FLEXAVATAR_SLOW", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not _slow_enabled(config):
        skip_slow = pytest.mark.skip(reason="slow (FLEX-1 size): run with --runslow or FLEXAVATAR_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not OFFICIAL.is_dir():
        pytest.fail(f"official fixtures not found at {OFFICIAL}: the repo expects ../shared beside it")
    return OFFICIAL


@pytest.fixture(scope="session")
def driving_dir() -> Path:
    if not DRIVING.is_dir():
        pytest.fail(f"driving fixtures not found at {DRIVING}")
    return DRIVING
