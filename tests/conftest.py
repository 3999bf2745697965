"""Shared fixtures: a seeded generator and a small simulated platform."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The tests' MLflow servers are local: a dead one must fail a test in seconds, not after
# MLflow's default of minutes of retries with exponential backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``FeedRanker.load`` compiles into a cache (``~/.cache`` by default): the tests' own one."""
    previous = os.environ.get("TRUSTFEED_COMPILE_CACHE")
    os.environ["TRUSTFEED_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("compile-cache"))
    yield
    if previous is None:
        os.environ.pop("TRUSTFEED_COMPILE_CACHE", None)
    else:
        os.environ["TRUSTFEED_COMPILE_CACHE"] = previous


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


def load_test_helper(filename: str) -> Any:
    """Load ``tests/<filename>`` once per session under a fixed module name.

    With ``--import-mode=importlib`` the test folder is not importable by name, so helper
    modules are loaded by path; the fixed name keeps one copy (and one cache) for all tests.
    """
    name = f"trustfeed_tests_{Path(filename).stem.lstrip('_')}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load test helper {filename}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def fx() -> Any:
    """``tests/_pipeline_fixture.py``: a small trained pipeline and its parts."""
    return load_test_helper("_pipeline_fixture.py")


@pytest.fixture(scope="session")
def same_snapshot() -> Any:
    """``tests/_snapshot_compare.py``'s ``assert_same_snapshot``: two trust snapshots agree."""
    return load_test_helper("_snapshot_compare.py").assert_same_snapshot


@pytest.fixture(scope="session")
def independent_sim() -> Any:
    """``tests/_independent_sim.py``: the trust generator written apart from the project's simulator."""
    return load_test_helper("_independent_sim.py")


@pytest.fixture(scope="session")
def training_support() -> Any:
    """``tests/_training_support.py``: the shared MLflow server and trained model."""
    return load_test_helper("_training_support.py")


@pytest.fixture(scope="session")
def trained(training_support: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """The session's one trained model, logged to one shared ``mlflow server``.

    Defined here once so exactly one finalizer stops the server, at the end of the session.
    """
    request.addfinalizer(training_support.stop_shared_server)
    root = training_support._CACHE.setdefault("root", tmp_path_factory.mktemp("training"))
    return training_support.shared_trained_model(root)
