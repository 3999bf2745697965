"""The platform exposure ledger in a real redis-server (started here on 127.0.0.1, killed mid-test)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trustfeed.features.errors import ConfigError
from trustfeed.ranker.bundle import save_bundle
from trustfeed.ranker.metrics import gini, position_exposure
from trustfeed.serving import FeedRanker, RedisLedger, SharedLedgerConfig

REDIS = shutil.which("redis-server")
HAS_CLIENT = importlib.util.find_spec("redis") is not None
if (REDIS is None or not HAS_CLIENT) and os.environ.get("CI"):
    pytest.fail("redis-server or the redis client is not installed (.ci/run installs both)", pytrace=False)
pytestmark = pytest.mark.skipif(
    REDIS is None or not HAS_CLIENT, reason="redis-server or the redis client (the 'redis' extra) is not installed"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence), restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(REDIS), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture(scope="module")
def bundle(fx: Any, parts: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shared") / "bundle"
    save_bundle(fx.make_pipeline(parts), path)
    return path


def _ledger(server: RedisServer, **options: Any) -> RedisLedger:
    # a huge half-life: bucket weights are 1, so the expected sums are exact
    config = SharedLedgerConfig(url=server.url, half_life=1e12, bucket=3600.0, window=7200.0, timeout=0.2, **options)
    return RedisLedger(config, start=False)


def _served_exposure(responses: list[dict[str, Any]], k: int) -> pd.Series:
    rows = [(item["creator_id"], p) for r in responses for p, item in enumerate(r["items"][:k], start=1)]
    frame = pd.DataFrame(rows, columns=["creator_id", "position"])
    frame["exposure"] = position_exposure(frame["position"].to_numpy(np.float64), "log2", 0.8)
    return frame.groupby("creator_id")["exposure"].sum()


def test_workers_see_each_others_exposure_and_the_platform_gini(
    redis_server: RedisServer, bundle: Path, parts: Any
) -> None:
    a_ledger, b_ledger = _ledger(redis_server), _ledger(redis_server)
    a = FeedRanker.load(bundle, shared_ledger=a_ledger)
    b = FeedRanker.load(bundle, shared_ledger=b_ledger)
    requests = [dict(r, k=5) for r in parts.requests[:30]]
    a_responses = [a.rank(r) for r in requests[:20]]
    b_responses = [b.rank(r) for r in requests[20:]]
    assert a_ledger.pending > 0
    assert a_ledger.sync() and b_ledger.sync() and a_ledger.sync()

    expected = _served_exposure(a_responses + b_responses, 5)
    platform = a_ledger.platform_exposure()["creators"]
    pd.testing.assert_series_equal(platform.sort_index(), expected.sort_index(), check_names=False, check_index_type=False, atol=1e-9)
    # both workers' ledgers now hold the platform's exposure, not their own share
    for ranker in (a, b):
        local = ranker.pipeline.balancer.creator_exposure().reindex(expected.index)
        np.testing.assert_allclose(local.to_numpy(), expected.to_numpy(), rtol=1e-6)
    # and the controller measures the platform's Gini: over the platform's exposed creators and
    # the creators this worker saw as candidates (zeros included)
    population = set(expected.index) | {c["creator_id"] for r in requests[20:] for c in r["candidates"]}
    b.pipeline.balancer._control()
    platform_gini = gini(expected.reindex(sorted(population), fill_value=0.0).to_numpy())
    assert b.pipeline.balancer.measured_gini == pytest.approx(platform_gini, abs=1e-6)
    assert a_ledger.connected and a_ledger.pending == 0


def test_redis_killed_mid_run_ranking_goes_on_and_nothing_is_lost(
    redis_server: RedisServer, bundle: Path, parts: Any
) -> None:
    ledger = _ledger(redis_server)
    ranker = FeedRanker.load(bundle, shared_ledger=ledger)
    requests = [dict(r, k=4) for r in parts.requests[:24]]
    before = [ranker.rank(r) for r in requests[:8]]
    assert ledger.sync()

    redis_server.kill()
    during = [ranker.rank(r) for r in requests[8:16]]  # no error, no wait on the dead store
    assert all(len(r["items"]) + len(r["filtered"]) for r in during)
    started = time.monotonic()
    assert not ledger.sync() and not ledger.connected and ledger.last_error
    assert time.monotonic() - started < 5  # the socket timeout bounds a failed sync
    assert ledger.pending > 0  # kept for later

    redis_server.start()  # same port, empty store: the pending exposure is pushed again
    after = [ranker.rank(r) for r in requests[16:]]
    assert ledger.sync() and ledger.connected
    platform = ledger.platform_exposure()["creators"]
    expected = _served_exposure(during + after, 4)
    pd.testing.assert_series_equal(platform.sort_index(), expected.sort_index(), check_names=False, check_index_type=False, atol=1e-9)
    assert len(before) == 8


def test_impressions_and_reloads_reach_the_shared_ledger(redis_server: RedisServer, bundle: Path, parts: Any) -> None:
    ledger = _ledger(redis_server)
    ranker = FeedRanker.load(bundle, record_served=False, shared_ledger=ledger)
    ranker.reload(bundle)  # the reloaded balancer records into the same shared ledger
    impressions = parts.impressions.head(40)
    ranker.record_impressions(impressions)
    assert ledger.sync()
    platform = ledger.platform_exposure()["creators"]
    frame = impressions.assign(exposure=position_exposure(impressions["position"].to_numpy(np.float64), "log2", 0.8))
    expected = frame.groupby(frame["creator_id"].astype(str))["exposure"].sum()
    pd.testing.assert_series_equal(platform.sort_index(), expected.sort_index(), check_names=False, check_index_type=False, atol=1e-9)


def test_background_sync_and_close(redis_server: RedisServer, bundle: Path, parts: Any) -> None:
    ledger = RedisLedger(url=redis_server.url, sync_interval=0.05, timeout=0.2)
    ranker = FeedRanker.load(bundle, shared_ledger=ledger)
    ranker.rank(dict(parts.requests[0], k=3))
    deadline = time.monotonic() + 10
    while ledger.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ledger.pending == 0 and ledger.syncs > 0
    ledger.close()
    assert len(ledger.platform_exposure()["creators"]) > 0


def test_each_worker_steps_by_the_inverse_of_its_share_of_the_platform(
    redis_server: RedisServer, bundle: Path, parts: Any
) -> None:
    a_ledger, b_ledger = (_ledger(redis_server, platform_controller=True) for _ in range(2))
    local_ledger = _ledger(redis_server, prefix="other")  # the default: steps on its own requests
    a, b, local = (FeedRanker.load(bundle, shared_ledger=ledger, predictor="lightgbm")
                   for ledger in (a_ledger, b_ledger, local_ledger))
    requests = [dict(r, k=5) for r in parts.requests[:24]]
    a_responses = [a.rank(r) for r in requests[:18]]  # a serves three times b's traffic
    b_responses = [b.rank(r) for r in requests[18:]]
    [local.rank(r) for r in requests[:6]]
    assert a_ledger.sync() and b_ledger.sync() and a_ledger.sync() and local_ledger.sync()
    a_exposure = float(_served_exposure(a_responses, 5).sum())
    total = a_exposure + float(_served_exposure(b_responses, 5).sum())
    assert a_ledger.traffic_share == pytest.approx(a_exposure / total)
    assert a.pipeline.balancer.integral_step == pytest.approx(total / a_exposure)
    assert b.pipeline.balancer.integral_step == pytest.approx(total / (total - a_exposure))
    assert b.pipeline.balancer.integral_step > 2.5 > a.pipeline.balancer.integral_step > 1.0
    assert local.pipeline.balancer.integral_step == 1.0 and local_ledger.traffic_share == pytest.approx(1.0)

    # the controller's integral moves by step x error: b's by its inverse share of the traffic
    balancer = b.pipeline.balancer
    before = balancer._integral
    balancer._control()
    error = balancer.measured_gini - balancer.config.target_gini
    low, high = (balancer.config.strength_min / balancer.config.ki, balancer.config.strength_max / balancer.config.ki)
    expected = min(max(before + balancer.integral_step * error, low), high)
    assert balancer._integral == pytest.approx(expected)

    redis_server.kill()  # unreachable: a partial, local view steps as a per-worker controller
    assert not b_ledger.sync() and b.pipeline.balancer.integral_step == 1.0
    b.rank(requests[0])  # ranking goes on


def test_config_bounds() -> None:
    with pytest.raises(ConfigError, match="half_life"):
        SharedLedgerConfig(half_life=0)
    with pytest.raises(ConfigError, match="window"):
        SharedLedgerConfig(bucket=60, window=10)
    with pytest.raises(ConfigError, match="buckets"):
        SharedLedgerConfig(half_life=1e12, bucket=60)
    with pytest.raises(ConfigError, match="unknown"):
        SharedLedgerConfig.from_dict({"urll": "x"})
    with pytest.raises(ConfigError, match="max_step"):
        SharedLedgerConfig(max_step=0.5)
