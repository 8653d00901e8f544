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


# The longest test files first (measured, `make test --durations`): with pytest-xdist's `loadfile`
# a file runs whole on one worker, so starting the long ones early keeps both workers busy to the
# end instead of leaving one long file alone at the tail. Order inside a file is kept.
_LONG_FILES_FIRST = (
    "test_slurm.py", "test_metrics_workflow.py", "test_realdata_mitosis.py", "test_reruns.py",
    "test_train_workflow.py", "test_external_workflow.py", "test_nuclei_workflow.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stable sort of the collected tests: the files of ``_LONG_FILES_FIRST`` first, in that order."""
    rank = {name: i for i, name in enumerate(_LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
