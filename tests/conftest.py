"""Shared fixtures: the real-data folder (skipped cleanly when absent) and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STAINSHIFT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test with a reason when it is not there."""
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip(f"real data not available: {SHARED_DATA}/manifest.csv not found")
    return SHARED_DATA
