"""training.dataset: graded labels, point-in-time features, groups, time split, and learning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import validate_events
from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
from trustfeed.training.dataset import (
    DatasetConfig,
    build_training_frame,
    graded_labels,
    time_split,
)
from trustfeed.training import dataset as dataset_module
from trustfeed.training.simulate import SimConfig, simulate

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-02-01", tz="UTC")


def test_doctests():
    import doctest

    result = doctest.testmod(dataset_module)
    assert result.attempted > 0 and result.failed == 0


def labelled_events(extra_reports: pd.DataFrame | None = None):
    """One impression per outcome the label definition distinguishes."""
    cases = {
        # name: (clicked, watch_seconds, purchased, order status, after-sales (reason, outcome))
        "shown": (False, 0.0, False, None, None),
        "clicked": (True, 5.0, False, None, None),
        "watched": (True, 45.0, False, None, None),
        "kept": (True, 80.0, True, "paid", None),
        "refunded_logistics": (True, 80.0, True, "paid", ("logistics", "buyer_favor")),
        "quality_return": (True, 80.0, True, "paid", ("quality", "buyer_favor")),
        "counterfeit_open": (True, 80.0, True, "paid", ("counterfeit", None)),
        "late_case": (True, 80.0, True, "paid", ("quality", "late")),
        "reported": (True, 80.0, True, "paid", None),
        "cancelled": (True, 50.0, True, "cancelled", None),
    }
    names = list(cases)
    n = len(names)
    impressions = pd.DataFrame(
        {
            "request_id": "q1",
            "user_id": [f"u_{name}" for name in names],
            "ts": T0 + pd.to_timedelta(np.arange(n), unit="min"),
            "stream_id": [f"s_{name}" for name in names],
            "creator_id": "c1",
            "merchant_id": [f"m_{name}" for name in names],
            "position": np.arange(1, n + 1),
            "clicked": [cases[k][0] for k in names],
            "watch_seconds": [cases[k][1] for k in names],
            "purchased": [cases[k][2] for k in names],
            "order_id": [f"o_{name}" if cases[k][2] else None for k, name in zip(names, names, strict=True)],
        }
    )
    bought = [name for name in names if cases[name][2]]
    orders = pd.DataFrame(
        {
            "order_id": [f"o_{name}" for name in bought],
            "user_id": [f"u_{name}" for name in bought],
            "merchant_id": [f"m_{name}" for name in bought],
            "created_at": T0 + DAY / 24,
            "amount": 10.0,
            "status": [cases[name][3] for name in bought],
        }
    )
    with_case = [name for name in names if cases[name][4] is not None]
    after_sales = pd.DataFrame(
        {
            "case_id": [f"a_{name}" for name in with_case],
            "order_id": [f"o_{name}" for name in with_case],
            # the late case opens after the 30-day label horizon
            "opened_at": [T0 + (40 * DAY if name == "late_case" else 3 * DAY) for name in with_case],
            "type": "return",
            "reason": [cases[name][4][0] for name in with_case],
            "resolved_at": [T0 + 5 * DAY if cases[name][4][1] == "buyer_favor" else None for name in with_case],
            "outcome": [cases[name][4][1] if cases[name][4][1] == "buyer_favor" else None for name in with_case],
        }
    )
    reports = pd.DataFrame(
        {
            "report_id": ["r1", "r2"],
            "reporter_id": ["u_reported", "u_kept"],
            "created_at": [T0 + 2 * DAY, T0 + 2 * DAY],
            "category": ["false_advertising", "false_advertising"],
            "merchant_id": ["m_reported", "m_kept"],
            "verified": [True, None],  # u_kept's report was never confirmed
        }
    )
    if extra_reports is not None:
        reports = pd.concat([reports, extra_reports], ignore_index=True)
    merchants = pd.DataFrame({"merchant_id": [f"m_{name}" for name in names], "registered_at": T0 - 10 * DAY})
    events = validate_events(
        {
            "merchants": merchants,
            "orders": orders,
            "after_sales": after_sales,
            "reports": reports,
            "impressions": impressions,
        }
    )
    return events, names


def test_graded_labels_on_crafted_impressions():
    events, names = labelled_events()
    purchased_before = events["impressions"]["purchased"].copy()
    labels = dict(zip(names, graded_labels(events["impressions"], events).tolist(), strict=True))
    # labelling must not write into the event log (a cancelled order clears a local flag only)
    pd.testing.assert_series_equal(events["impressions"]["purchased"], purchased_before)
    assert labels == {
        "shown": 0,
        "clicked": 1,
        "watched": 2,
        "kept": 4,  # an unverified report does not count
        "refunded_logistics": 3,  # refunded in the buyer's favour, but not a bad experience
        "quality_return": 1,  # a purchase that ended badly is not a success
        "counterfeit_open": 1,  # the complaint itself is the bad experience
        "late_case": 4,  # beyond the label horizon
        "reported": 1,  # verified report by the buyer against the merchant
        "cancelled": 2,  # no purchase: falls back to the watch grade
    }


def test_low_rating_option_and_config_validation():
    events, names = labelled_events()
    reviews = pd.DataFrame(
        {"review_id": ["v1"], "order_id": ["o_kept"], "user_id": ["u_kept"], "created_at": [T0 + 2 * DAY], "rating": [1]}
    )
    tables = {name: events[name] for name in ("merchants", "orders", "after_sales", "reports", "impressions")}
    with_review = validate_events({**tables, "reviews": reviews})
    strict = graded_labels(with_review["impressions"], with_review, DatasetConfig(low_rating_is_bad=True))
    lenient = graded_labels(with_review["impressions"], with_review, DatasetConfig())
    kept = names.index("kept")
    assert (strict[kept], lenient[kept]) == (1, 4)
    for bad in ({"snapshot_every_days": 0}, {"label_horizon_days": 0}, {"watch_seconds": -1}):
        with pytest.raises(ConfigError):
            DatasetConfig(**bad)
    config = DatasetConfig(snapshot_every_days=3, trust={"half_life_days": 10.0})
    assert DatasetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError):
        DatasetConfig.from_dict({"every": 2})


@pytest.mark.parametrize("grade", [0, 1, 2, 3, 4])
def test_bad_purchase_grade_relabels_only_bad_purchases(grade):
    events, names = labelled_events()
    default = dict(zip(names, graded_labels(events["impressions"], events).tolist(), strict=True))
    chosen = dict(zip(names, graded_labels(events["impressions"], events, DatasetConfig(bad_purchase_grade=grade)).tolist(),
                      strict=True))
    bad = {"quality_return", "counterfeit_open", "reported"}
    assert {name: chosen[name] for name in names if name not in bad} == {name: default[name] for name in names if name not in bad}
    # refunded in the buyer's favour (not kept): never above the not-kept purchase grade 3
    assert chosen["quality_return"] == min(grade, 3)
    assert (chosen["counterfeit_open"], chosen["reported"]) == (grade, grade)
    assert DatasetConfig(bad_purchase_grade=grade).to_dict()["bad_purchase_grade"] == grade


@pytest.mark.parametrize("grade", [-1, 5, 1.5, True])
def test_bad_purchase_grade_outside_the_label_scale_is_refused(grade):
    with pytest.raises(ConfigError, match="bad_purchase_grade"):
        DatasetConfig(bad_purchase_grade=grade)


@pytest.fixture(scope="module")
def tiny_events():
    return validate_events(simulate(SimConfig(seed=3, merchants=40, days=12)).tables)


@pytest.fixture(scope="module")
def tiny_frame(tiny_events):
    return build_training_frame(tiny_events, start="2026-01-06", end="2026-01-11", config=DatasetConfig(snapshot_every_days=2))


def test_frame_structure_groups_and_snapshot_times(tiny_frame, tiny_events):
    frame = tiny_frame.frame
    impressions = tiny_events["impressions"]
    in_window = (impressions["ts"] >= pd.Timestamp("2026-01-06", tz="UTC")) & (
        impressions["ts"] < pd.Timestamp("2026-01-11", tz="UTC")
    )
    assert len(frame) == int(in_window.sum())
    # point-in-time: every row's features come from a snapshot at a day start at or before it
    assert (frame["snapshot_at"] <= frame["ts"]).all()
    assert (frame["snapshot_at"] == frame["snapshot_at"].dt.floor("D")).all()
    assert set(frame["snapshot_at"].dt.day) == {6, 8, 10}
    # groups: each request's rows are contiguous, sizes add up, positions ascend inside
    groups = tiny_frame.groups()
    assert groups.sum() == len(frame) and len(groups) == frame["request_id"].nunique()
    assert (frame.groupby("request_id", sort=False)["position"].apply(lambda p: p.is_monotonic_increasing)).all()
    assert tiny_frame.features().shape == (len(frame), len(tiny_frame.feature_names))
    assert set(tiny_frame.labels) <= {0, 1, 2, 3, 4} and (tiny_frame.labels > 0).any()
    with pytest.raises(SchemaError):
        build_training_frame(tiny_events, start="2030-01-01")


def test_no_future_leakage(tiny_events, tiny_frame):
    """Cutting off everything after the window must leave every feature of the window unchanged."""
    cut = pd.Timestamp("2026-01-11", tz="UTC")
    truncated = tiny_events.before(cut)
    again = build_training_frame(truncated, start="2026-01-06", end="2026-01-11", config=DatasetConfig(snapshot_every_days=2))
    names = list(tiny_frame.feature_names)
    assert list(again.feature_names) == names
    pd.testing.assert_frame_equal(again.frame[["request_id", "stream_id", *names]], tiny_frame.frame[["request_id", "stream_id", *names]])


def test_time_split_keeps_requests_whole_and_ordered(tiny_frame):
    train, valid = time_split(tiny_frame, valid_fraction=0.25)
    assert len(train) + len(valid) == len(tiny_frame)
    assert not set(train.frame["request_id"]) & set(valid.frame["request_id"])
    assert train.frame["ts"].max() <= valid.frame["ts"].min()
    share = valid.frame["request_id"].nunique() / tiny_frame.frame["request_id"].nunique()
    assert 0.15 < share < 0.35
    _, late = time_split(tiny_frame, valid_from="2026-01-10")
    assert (late.frame["ts"] >= pd.Timestamp("2026-01-10", tz="UTC")).all()


def _truth_ndcg(frame: pd.DataFrame, scores: np.ndarray, k: int = 10) -> float:
    """NDCG@k against the simulator's hidden expected value of each candidate (position-free)."""
    ranked = frame.assign(score=scores)
    ranked["rank"] = ranked.groupby("request_id")["score"].rank(ascending=False, method="first")
    ranked["ideal"] = ranked.groupby("request_id")["gain"].rank(ascending=False, method="first")
    discount = 1.0 / np.log2(ranked["rank"] + 1)
    ideal_discount = 1.0 / np.log2(ranked["ideal"] + 1)
    dcg = (ranked["gain"] * discount).where(ranked["rank"] <= k, 0.0).groupby(ranked["request_id"]).sum()
    idcg = (ranked["gain"] * ideal_discount).where(ranked["ideal"] <= k, 0.0).groupby(ranked["request_id"]).sum()
    return float((dcg / idcg)[idcg > 0].mean())


@pytest.mark.slow
def test_model_learns_better_than_the_logging_policy():
    platform = simulate(SimConfig(seed=7, merchants=60, days=16))
    events = validate_events(platform.tables)
    data = build_training_frame(events, start="2026-01-05", config=DatasetConfig(snapshot_every_days=4))
    train, valid = time_split(data, valid_fraction=0.3)
    model = LambdaMART(LambdaMARTConfig(num_rounds=150, early_stopping_rounds=20)).fit(
        train.features(), train.labels, train.groups(), position=train.positions,
        X_valid=valid.features(), y_valid=valid.labels, group_valid=valid.groups(),
        feature_names=train.feature_names, categorical=train.categorical, monotone=train.monotone,
    )
    truth = platform.truth["impressions"]
    frame = valid.frame.merge(truth, on=["request_id", "stream_id"], how="left", validate="one_to_one")
    # hidden value of showing the candidate: expected clicks plus good orders (bad ones cost)
    frame["gain"] = (frame["p_click"] * (1 + frame["p_purchase"] * (1 - 3 * frame["p_bad"]))).clip(lower=0.0)
    model_ndcg = _truth_ndcg(frame, model.predict(valid.features()))
    logging_ndcg = _truth_ndcg(frame, -valid.positions.astype(float))
    assert model_ndcg > logging_ndcg + 0.02
