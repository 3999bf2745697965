"""Fresh viewer history: the running per-viewer tables (features._viewer_history) and the
training frame that reads them day by day while the trust snapshot stays weekly."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfeed.features.context import ContextConfig, FeatureAssembler, ViewerHistory, build_context_tables
from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import validate_events
from trustfeed.training.dataset import DatasetConfig, build_training_frame, default_snapshot_builder
from trustfeed.training.simulate import SimConfig, simulate

VIEWER_TABLES = ("follows", "user_merchant", "user_category", "user_taste", "user_activity")
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def events() -> Any:
    return validate_events(simulate(SimConfig(seed=3, merchants=20, days=11)).tables)


def _day0(events: Any) -> pd.Timestamp:
    return events["impressions"]["ts"].min().floor("D")


def _assert_viewer_tables_equal(history_tables: dict[str, pd.DataFrame], full: Any) -> None:
    for name in VIEWER_TABLES:
        pd.testing.assert_frame_equal(history_tables[name], full.table(name).reset_index(drop=True), check_dtype=False)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hours=st.lists(st.integers(0, 12 * 24), min_size=1, max_size=3), click_weight=st.sampled_from([0.25, 0.0, 1.0]))
def test_the_running_history_is_the_full_build_at_any_time(events: Any, hours: list[int], click_weight: float) -> None:
    # one cursor advanced over ascending times (and back, which restarts it) gives at each
    # time exactly the viewer tables a full build of the log before that time gives
    config = ContextConfig(click_weight=click_weight)
    history = ViewerHistory(events, config)
    cursor = history.cursor()
    for at in [_day0(events) + pd.Timedelta(hours=h) for h in hours]:
        _assert_viewer_tables_equal(cursor.at(at).frames(), build_context_tables(events, at, config))


def test_bad_outcomes_and_cancellations_count_from_when_they_are_known() -> None:
    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    events = validate_events({
        "merchants": pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": [t0 - 9 * DAY, t0 + 2 * DAY],
                                   "category": ["food", "toys"]}),
        "orders": pd.DataFrame({"order_id": ["o1", "o2", "o3", "o4"], "user_id": ["u1", "u1", "u2", "u1"],
                                "merchant_id": ["m1", "m1", "m1", "m2"], "amount": [1.0] * 4,
                                "created_at": [t0, t0 + DAY, t0, t0 + 3 * DAY],
                                "status": ["paid", "cancelled", "paid", "paid"]}),
        "reviews": pd.DataFrame({"review_id": ["r1"], "order_id": ["o1"], "user_id": ["u1"],
                                 "created_at": [t0 + 4 * DAY], "rating": [1]}),
    })
    history = ViewerHistory(events)
    cursor = history.cursor()
    for days in (0.5, 1.5, 3.5, 4.5, 6):
        at = t0 + pd.Timedelta(days=days)
        _assert_viewer_tables_equal(cursor.at(at).frames(), build_context_tables(events, at))
    tables = history.at(t0 + 5 * DAY).frames()
    um = tables["user_merchant"].set_index(["user_id", "merchant_id"])
    assert um.loc[("u1", "m1"), "orders"] == 1 and um.loc[("u1", "m1"), "bad_orders"] == 1  # o2 cancelled
    assert history.at(t0 + 4 * DAY).frames()["user_merchant"]["bad_orders"].sum() == 0  # the review comes at day 4


def test_a_lookback_window_is_a_one_line_config_error(events: Any) -> None:
    with pytest.raises(ConfigError, match="lookback_days"):
        ViewerHistory(events, ContextConfig(lookback_days=7))
    with pytest.raises(ConfigError, match="lookback_days"):
        build_training_frame(events, config=DatasetConfig(fresh_viewer_history=True, context=ContextConfig(lookback_days=7)))


def test_viewer_tables_of_another_history_are_refused(events: Any) -> None:
    snapshot = default_snapshot_builder(DatasetConfig())(events, _day0(events) + 5 * DAY)
    assembler = FeatureAssembler(snapshot, None)
    with pytest.raises(SchemaError, match="history"):
        assembler.with_viewer(ViewerHistory(events).at(_day0(events) + 5 * DAY))


def test_the_frame_reads_each_days_viewer_history_as_serving_would(events: Any) -> None:
    # weekly trust snapshots, the viewer's history as of each impression's day: every row's
    # features (and the policy's trust) are what an assembler over the snapshot and a context
    # whose viewer tables are built at the start of that day computes, which is serving's code
    config = DatasetConfig(snapshot_every_days=7, fresh_viewer_history=True)
    frame = build_training_frame(events, start=_day0(events) + 2 * DAY, config=config)
    names = list(frame.feature_names)
    builder = default_snapshot_builder(config)
    rows = frame.frame
    snapshots: dict[pd.Timestamp, Any] = {}
    checked = fresher = 0
    for (snapshot_at, day), part in rows.groupby([rows["snapshot_at"], rows["ts"].dt.floor("D")]):
        if (day - snapshot_at).days not in (0, 2, 5):
            continue  # a few days of each snapshot keep the test short
        if snapshot_at not in snapshots:
            snapshots[snapshot_at] = (builder(events, snapshot_at), build_context_tables(events, snapshot_at, config.context))
        snapshot, context = snapshots[snapshot_at]
        today = build_context_tables(events, day, config.context)
        served = replace(context, **{name: today.table(name) for name in VIEWER_TABLES})
        assembler = FeatureAssembler(snapshot, served, schema=frame.schema)
        features, status = assembler.transform_with_status(part)
        np.testing.assert_array_equal(features, part[names].to_numpy())
        np.testing.assert_array_equal(status.trust, part["policy_trust"].to_numpy())
        stale = FeatureAssembler(snapshot, context, schema=frame.schema).transform(part)
        fresher += int(day > snapshot_at and not np.array_equal(stale, features))
        checked += 1
    assert checked >= 4 and fresher >= 2  # and the day's history did differ from the snapshot's


def test_daily_snapshots_make_the_fresh_history_a_no_op(events: Any) -> None:
    config = DatasetConfig(snapshot_every_days=1, fresh_viewer_history=True)
    start = _day0(events) + 9 * DAY
    fresh = build_training_frame(events, start=start, config=config)
    plain = build_training_frame(events, start=start, config=replace(config, fresh_viewer_history=False))
    pd.testing.assert_frame_equal(fresh.frame, plain.frame)


def test_no_future_event_reaches_the_fresh_history(events: Any) -> None:
    # the history collects the whole log up front; cutting every event after the window off
    # must leave every feature of the window unchanged
    start, end = _day0(events) + 7 * DAY, _day0(events) + 9 * DAY
    config = DatasetConfig(snapshot_every_days=7, fresh_viewer_history=True)
    full = build_training_frame(events, start=start, end=end, config=config)
    cut = build_training_frame(events.before(end), start=start, end=end, config=config)
    names = ["request_id", "stream_id", *full.feature_names]
    pd.testing.assert_frame_equal(cut.frame[names], full.frame[names])
