"""Where the development fixtures live (tests and benchmarks only; nothing in the package reads them).

The official-code fixtures and the driving sequences are not shipped (non-commercial licence): they sit
in ``../shared/fixtures`` beside a checkout. ``FLEXAVATAR_FIXTURES`` points elsewhere, e.g. at a copy
staged inside a working tree that is sent to a GPU machine (see benchmarks/device/README.md).
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FLEXAVATAR_FIXTURES"


def fixtures_dir() -> Path:
    """``$FLEXAVATAR_FIXTURES``, else ``<checkout>/../shared/fixtures`` (it may not exist: callers check)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
