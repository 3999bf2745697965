"""Incremental trust update: equal to a full rebuild with the carried weights, point in time, bad input."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from trustfeed.features import LiveTrust
from trustfeed.features._incremental import changes_since, state_of, update_snapshot
from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import EventLog, validate_events, write_events
from trustfeed.features.trust import TrustConfig, TrustSnapshot, build_snapshot
from trustfeed.training.cli import main

# A short horizon so that the 20-day world has earlier cuts to fit the index on.
CONFIG = TrustConfig(min_fit_merchants=20, horizon_days=5)


@pytest.fixture(scope="module")
def world() -> EventLog:
    from trustfeed.training.simulate import SimConfig, simulate

    return validate_events(simulate(SimConfig(seed=3, merchants=40, days=20)).tables)


def _start(world: EventLog) -> pd.Timestamp:
    return world.span()[0].floor("D")


# No shrinking: every example builds three snapshots, and the split is printed anyway.
def assert_close_numbers(a: Any, b: Any, path: str = "") -> None:
    """Nested dicts with the same keys and numbers equal to summation order."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), path
        for key in a:
            assert_close_numbers(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), path
    else:
        assert a == b, path


@settings(max_examples=4, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.floats(min_value=6.0, max_value=18.0),
    steps=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=2),
)
def test_incremental_equals_full_rebuild_with_the_carried_weights(same_snapshot: Any, world: EventLog, first: float, steps: list[float]) -> None:
    start = _start(world)
    t0 = start + pd.Timedelta(days=first)
    state = state_of(world, build_snapshot(world, t0, CONFIG))
    assert state.index["source"] == "fitted"
    cut = t0
    for days in steps:
        cut = cut + pd.Timedelta(days=days)
        snapshot, state = update_snapshot(state, changes_since(world, state.as_of), cut)
        full = build_snapshot(world, cut, CONFIG, index=state.index)
        same_snapshot(snapshot, full)
        # priors and the standing reference are recomputed at the new time, in both paths
        assert_close_numbers(snapshot.manifest["priors"], full.manifest["priors"])
        assert snapshot.manifest["index_model"]["weights_from"] == t0.isoformat()


def test_events_after_the_cut_change_nothing(same_snapshot: Any, world: EventLog) -> None:
    start = _start(world)
    t0, cut = start + pd.Timedelta(days=10), start + pd.Timedelta(days=14)
    state = state_of(world, build_snapshot(world, t0, CONFIG))
    # Everything of the log after t0, including days past the cut, plus a burst of 1-star
    # reviews and verified counterfeit reports right after the cut.
    new = changes_since(world, t0)
    orders = world["orders"]
    late = orders[orders["created_at"] < cut].tail(30)
    after = cut + pd.Timedelta(minutes=1)
    reviews = pd.DataFrame({"review_id": [f"late-{i}" for i in range(len(late))], "order_id": late["order_id"].to_numpy(),
                            "user_id": late["user_id"].to_numpy(), "created_at": after, "rating": 1})
    reports = pd.DataFrame({"report_id": [f"late-{i}" for i in range(len(late))], "reporter_id": late["user_id"].to_numpy(),
                            "created_at": after, "category": "counterfeit", "merchant_id": late["merchant_id"].to_numpy(),
                            "verified": True})
    tables = {name: new[name] for name in new.tables if name not in new.missing}
    tables["reviews"] = pd.concat([tables["reviews"], reviews.astype({"rating": "int64"})], ignore_index=True)
    tables["reports"] = pd.concat([tables["reports"], reports], ignore_index=True)
    noisy = validate_events(tables)
    assert (noisy["orders"]["created_at"] >= cut).any()
    with_later, _ = update_snapshot(state, noisy, cut)
    only_before, _ = update_snapshot(state, changes_since(world, t0).before(cut), cut)
    same_snapshot(with_later, only_before)
    same_snapshot(with_later, build_snapshot(world, cut, CONFIG, index=state.index))


def test_input_checks(world: EventLog) -> None:
    start = _start(world)
    t0 = start + pd.Timedelta(days=10)
    state = state_of(world, build_snapshot(world, t0, CONFIG))
    older = world.before(t0)
    # a review (no re-sendable table) from before the state's time
    reviews = {"merchants": world["merchants"].iloc[:0], "orders": world["orders"].iloc[:0], "reviews": older["reviews"].tail(2)}
    with pytest.raises(SchemaError, match=r"reviews\.created_at.*state's as-of"):
        update_snapshot(state, validate_events(reviews), t0 + pd.Timedelta(days=1))
    # an order before the state's time that the state does not hold
    stray = older["orders"].tail(1).assign(order_id="never-seen")
    with pytest.raises(SchemaError, match="does not hold"):
        update_snapshot(state, validate_events({"merchants": world["merchants"].iloc[:0], "orders": stray}), t0 + pd.Timedelta(days=1))
    # a stored order sent again with another time
    moved = older["orders"].tail(1).assign(created_at=t0 + pd.Timedelta(hours=1))
    with pytest.raises(SchemaError, match="stored key"):
        update_snapshot(state, validate_events({"merchants": world["merchants"].iloc[:0], "orders": moved}), t0 + pd.Timedelta(days=1))
    with pytest.raises(ConfigError, match="before the state's as-of"):
        update_snapshot(state, changes_since(world, t0), t0 - pd.Timedelta(hours=1))
    with pytest.raises(ConfigError, match="differs from the state's"):
        update_snapshot(state, changes_since(world, t0), t0 + pd.Timedelta(days=1), config=TrustConfig(half_life_days=10))


# --------------------------------------------------------------------------- command line


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    status = main(argv)
    return status, [line for line in capsys.readouterr().err.splitlines() if "error" in line]


def test_cli_incremental_round_trip_and_bad_input(same_snapshot: Any, world: EventLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = _start(world)
    t0, cut = start + pd.Timedelta(days=12), start + pd.Timedelta(days=13, hours=6)
    write_events(world, tmp_path / "log")
    write_events(changes_since(world, t0), tmp_path / "new")
    # The CLI builds with the default config: too short a log to fit, so default weights are carried.
    assert main(["features", "--events", str(tmp_path / "log"), "--as-of", t0.isoformat(), "--out", str(tmp_path / "s0"), "--keep-state"]) == 0
    assert main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / "new"),
                 "--as-of", cut.isoformat(), "--out", str(tmp_path / "s1")]) == 0
    # the command line keeps a live state: the full build's weights and credibility references are carried
    state = LiveTrust.load(tmp_path / "s0")
    same_snapshot(TrustSnapshot.load(tmp_path / "s1"), build_snapshot(world, cut, index=state.index, references=state.references))
    assert LiveTrust.load(tmp_path / "s1").as_of == cut  # the output can be updated again
    capsys.readouterr()

    def refused(argv: list[str], message: str) -> None:
        out = Path(argv[argv.index("--out") + 1])
        status, errors = _run(argv, capsys)
        assert status == 2 and len(errors) == 1 and message in errors[0], errors
        assert not out.exists()  # nothing half-written

    incremental = ["features", "--incremental", "--events", str(tmp_path / "new"), "--as-of", cut.isoformat()]
    # a snapshot without state
    assert main(["features", "--events", str(tmp_path / "log"), "--as-of", t0.isoformat(), "--out", str(tmp_path / "plain")]) == 0
    refused([*incremental, "--from", str(tmp_path / "plain"), "--out", str(tmp_path / "o1")], "no incremental state")
    refused([*incremental, "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")], "no such snapshot")
    # events older than the state
    refused(["features", "--incremental", "--from", str(tmp_path / "s1"), "--events", str(tmp_path / "new"),
             "--as-of", (cut + pd.Timedelta(days=1)).isoformat(), "--out", str(tmp_path / "o3")], "state's as-of")
    refused([*incremental[:-1], (t0 - pd.Timedelta(days=1)).isoformat(), "--from", str(tmp_path / "s0"), "--out", str(tmp_path / "o4")],
            "before the state's as-of")
    refused(["features", "--events", str(tmp_path / "new"), "--as-of", cut.isoformat(), "--incremental", "--out", str(tmp_path / "o5")],
            "go together")
    # a state of another configuration or version
    meta_path = tmp_path / "s0" / "state" / "state.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "decay": 3}}))
    refused([*incremental, "--from", str(tmp_path / "s0"), "--out", str(tmp_path / "o6")], "another configuration or version")
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "half_life_days": 10.0}}))
    refused([*incremental, "--from", str(tmp_path / "s0"), "--out", str(tmp_path / "o7")], "does not belong")
    meta_path.write_text(json.dumps({**meta, "state_version": 99}))
    refused([*incremental, "--from", str(tmp_path / "s0"), "--out", str(tmp_path / "o8")], "state version 99")
    meta_path.write_text(json.dumps({**meta, "index": {**meta["index"], "models": {"trust_index": {"intercept": 0.0, "weights": {"x": 1.0}}}}}))
    refused([*incremental, "--from", str(tmp_path / "s0"), "--out", str(tmp_path / "o9")], "other signals than this version computes")


# --------------------------------------------------------------------------- serving


def test_reload_under_load_keeps_the_exposure_ledger(fx: Any, tmp_path: Path) -> None:
    from trustfeed.ranker.metrics import position_exposure
    from trustfeed.ranker.bundle import save_bundle
    from trustfeed.serving import FeedRanker

    parts = fx.trained_parts()
    save_bundle(fx.make_pipeline(parts, half_life=math.inf), tmp_path / "bundle")
    parts.snapshot.save(tmp_path / "snapshot")
    ranker = FeedRanker.load(tmp_path / "bundle", record_served=False)
    config = ranker.pipeline.balancer.config
    before = ranker.pipeline.balancer.creator_exposure()
    shown: list[pd.DataFrame] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def serve(requests: list[dict[str, Any]]) -> None:
        try:
            for request in requests:
                response = ranker.rank(request)
                rows = pd.DataFrame({"request_id": request["request_id"],
                                     "creator_id": [i["creator_id"] for i in response["items"]],
                                     "merchant_id": [i["merchant_id"] for i in response["items"]],
                                     "position": np.arange(1, len(response["items"]) + 1)})
                ranker.record_impressions(rows)
                shown.append(rows)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)

    def reload() -> None:
        i = 0
        while not stop.is_set():
            if i % 2:
                ranker.reload_snapshot(tmp_path / "snapshot")
            else:
                ranker.reload(tmp_path / "bundle", snapshot=tmp_path / "snapshot")
            i += 1

    requests = parts.requests[:60]
    servers = [threading.Thread(target=serve, args=(requests[k::3],)) for k in range(3)]
    reloader = threading.Thread(target=reload)
    reloader.start()
    for thread in servers:
        thread.start()
    for thread in servers:
        thread.join(timeout=120)
    stop.set()
    reloader.join(timeout=120)
    assert not failures and len(shown) == len(requests)
    seen = pd.concat(shown, ignore_index=True)
    added = pd.Series(position_exposure(seen["position"].to_numpy(float), config.exposure_kind, config.exposure_patience),
                      index=seen["creator_id"]).groupby(level=0).sum()
    expected = before.add(added, fill_value=0.0)
    ledger = ranker.pipeline.balancer.creator_exposure()
    pd.testing.assert_series_equal(ledger.sort_index(), expected.sort_index(), check_names=False, check_index_type=False, rtol=1e-9)
