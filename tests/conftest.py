"""Shared fixtures: a seeded generator and a small simulated platform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public datasets beside the repository (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: CI runs with shared/ beside the clone")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_platform():
    """A small simulated platform (in memory), shared by the whole session."""
    from trustfeed.training.simulate import SimConfig, simulate

    return simulate(SimConfig(seed=11, merchants=120, days=40))


@pytest.fixture(scope="session")
def small_events_dir(small_platform, tmp_path_factory) -> Path:
    """The small platform written as a dataset directory (Parquet + truth/)."""
    from trustfeed.training.simulate import write_dataset

    out = tmp_path_factory.mktemp("events") / "small"
    write_dataset(small_platform, out)
    return out
