"""features.context: point-in-time history tables and the per-request feature assembler."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features import context as context_module
from trustfeed.features.context import (
    ContextConfig,
    ContextTables,
    FeatureAssembler,
    build_context_tables,
)
from trustfeed.features.errors import ConfigError, ModelIntegrityError, SchemaError
from trustfeed.features.events import validate_events
from trustfeed.features.sources import parse_source

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2026-03-01", tz="UTC")


def crafted_events():
    """Two users, three merchants (two share an entity), two creators, a few days of history."""
    merchants = pd.DataFrame(
        {
            "merchant_id": ["m1", "m2", "m3"],
            "registered_at": [T0 - 30 * DAY] * 3,
            "entity_id": ["e1", "e2", "e2"],
            "category": ["beauty", "food", "food"],
        }
    )
    orders = pd.DataFrame(
        {
            "order_id": ["o1", "o2", "o3", "o4"],
            "user_id": ["u1", "u1", "u1", "u2"],
            "merchant_id": ["m1", "m1", "m2", "m1"],
            "created_at": [T0 + 1 * DAY, T0 + 2 * DAY, T0 + 2 * DAY, T0 + 5 * DAY],
            "amount": [10.0, 20.0, 5.0, 7.0],
            "status": ["paid", "paid", "cancelled", "paid"],
        }
    )
    after_sales = pd.DataFrame(
        {
            "case_id": ["a1", "a2"],
            "order_id": ["o1", "o2"],
            "opened_at": [T0 + 1.5 * DAY, T0 + 6 * DAY],
            "type": ["return", "return"],
            "reason": ["quality", "logistics"],
        }
    )
    follows = pd.DataFrame(
        {"user_id": ["u1", "u1"], "creator_id": ["c1", "c1"], "followed_at": [T0 + 2.5 * DAY, T0 + 4 * DAY]}
    )
    impressions = pd.DataFrame(
        {
            "request_id": ["q1", "q1", "q2", "q2"],
            "user_id": ["u1", "u1", "u2", "u2"],
            "ts": [T0 + 1 * DAY, T0 + 1 * DAY, T0 + 2 * DAY, T0 + 2 * DAY],
            "stream_id": ["s1", "s2", "s1", "s2"],
            "creator_id": ["c1", "c2", "c1", "c2"],
            "merchant_id": ["m1", "m2", "m1", "m2"],
            "position": [1, 2, 1, 2],
            "clicked": [True, True, False, True],
        }
    )
    return validate_events(
        {
            "merchants": merchants,
            "orders": orders,
            "after_sales": after_sales,
            "follows": follows,
            "impressions": impressions,
        }
    )


def crafted_snapshot():
    merchants = pd.DataFrame(
        {
            "merchant_id": pd.array(["m1", "m2", "m3"], dtype="string"),
            "entity_id": pd.array(["e1", "e2", "e2"], dtype="string"),
            "category": pd.array(["beauty", "food", "food"], dtype="string"),
            "trust_index": [0.9, 0.2, 0.6],
            "trust_commodity_quality": [0.8, 0.1, 0.5],
            "expected_bad_rate": [0.01, 0.3, 0.05],
            "n_orders": [100.0, 50.0, 3.0],
            "banned": [False, True, False],
            "cold_start": [False, False, True],
        }
    )
    creators = pd.DataFrame(
        {
            "creator_id": pd.array(["c1", "c2"], dtype="string"),
            "trust_host": [0.7, 0.4],
            "followers": [1000.0, 50.0],
        }
    )
    return SimpleNamespace(merchants=merchants, creators=creators, as_of=T0 + 3 * DAY)


def column(assembler: FeatureAssembler, X: np.ndarray, name: str) -> np.ndarray:
    return X[:, assembler.feature_names.index(name)]


def test_doctests():
    result = doctest.testmod(context_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_context_tables_are_point_in_time():
    events = crafted_events()
    early = build_context_tables(events, T0 + 1 * DAY)  # nothing is known yet
    assert early.follows.empty and early.user_merchant.empty and early.creator_engagement.empty

    mid = build_context_tables(events, T0 + 3 * DAY)
    assert mid.follows[["user_id", "creator_id"]].values.tolist() == [["u1", "c1"]]
    assert mid.follows["followed_at"].iloc[0] == T0 + 2.5 * DAY  # the first follow
    um = mid.user_merchant.set_index(["user_id", "merchant_id"])
    # o3 was cancelled, o4 is in the future; o1 had a quality case before the cut
    assert um.loc[("u1", "m1"), "orders"] == 2 and um.loc[("u1", "m1"), "bad_orders"] == 1
    assert ("u1", "m2") not in um.index and ("u2", "m1") not in um.index
    affinity = mid.user_category.set_index(["user_id", "category"])["affinity"]
    assert affinity.groupby(level=0).sum().round(12).eq(1.0).all()
    assert affinity.loc[("u1", "beauty")] > affinity.loc[("u1", "food")]  # orders outweigh a click

    late = build_context_tables(events, T0 + 7 * DAY)
    um_late = late.user_merchant.set_index(["user_id", "merchant_id"])
    assert um_late.loc[("u2", "m1"), "orders"] == 1
    # a logistics case is not a bad experience
    assert um_late.loc[("u1", "m1"), "bad_orders"] == 1


def test_creator_engagement_smoothing_and_position_normalisation():
    events = crafted_events()
    context = build_context_tables(events, T0 + 3 * DAY, ContextConfig(engagement_prior_strength=2.0))
    engagement = context.creator_engagement.set_index("creator_id")
    assert engagement.loc["c1", "impressions"] == 2 and engagement.loc["c1", "clicks"] == 1
    prior = context.priors["ctr"]
    assert prior == pytest.approx(3 / 4)
    # smoothing pulls both creators toward the platform rate
    assert engagement.loc["c1", "ctr"] == pytest.approx((1 + 2 * prior) / (2 + 2))
    # c2 was shown lower yet clicked every time: more clicks than its slot predicts
    assert engagement.loc["c2", "coec"] > 1.0 > engagement.loc["c1", "coec"]


def test_context_config_validation_and_round_trip():
    with pytest.raises(ConfigError):
        ContextConfig(click_weight=2.0)
    with pytest.raises(ConfigError):
        ContextConfig(lookback_days=0)
    with pytest.raises(ConfigError):
        ContextConfig.from_dict({"nope": 1})
    config = ContextConfig(lookback_days=14.0)
    assert ContextConfig.from_dict(config.to_dict()) == config


def test_user_features_and_follow_time():
    events = crafted_events()
    assembler = FeatureAssembler(crafted_snapshot(), build_context_tables(events, T0 + 3 * DAY))
    candidates = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "ts": [T0 + 3 * DAY, T0 + 3 * DAY, T0 + 2 * DAY, T0 + 3 * DAY],
            "stream_id": ["s1", "s2", "s1", "s1"],
            "creator_id": ["c1", "c2", "c1", "c1"],
            "merchant_id": ["m1", "m2", "m1", "m1"],
        }
    )
    X = assembler.transform(candidates)
    # u1 followed c1 at day 2.5: a request at day 2 must not see it
    assert column(assembler, X, "user_follows_creator").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert column(assembler, X, "user_merchant_orders").tolist() == [2.0, 0.0, 2.0, 0.0]
    assert column(assembler, X, "user_merchant_bad_orders").tolist() == [1.0, 0.0, 1.0, 0.0]
    assert column(assembler, X, "hour_of_day").tolist() == [0.0] * 4
    # trust as its standing among the snapshot's three merchants (0.2 < 0.6 < 0.9)
    assert column(assembler, X, "merchant_trust_percentile").tolist() == pytest.approx([5 / 6, 1 / 6, 5 / 6, 5 / 6])


def test_cold_start_unknown_ids_and_nan_never_raise():
    snapshot = crafted_snapshot()
    assembler = FeatureAssembler(snapshot, build_context_tables(crafted_events(), T0 + 3 * DAY))
    candidates = pd.DataFrame(
        {
            "user_id": ["nobody", None, "u1"],
            "ts": [T0, None, "not a time"],
            "stream_id": ["s9", "s9", None],
            "creator_id": ["c-new", None, "c1"],
            "merchant_id": ["m-new", None, np.nan],
        }
    )
    X = assembler.transform(candidates)
    assert X.shape == (3, len(assembler.feature_names)) and X.dtype == np.float64
    assert column(assembler, X, "merchant_known").tolist() == [0.0, 0.0, 0.0]
    # unknown merchants get the snapshot's cold-start prior (its only cold-start row is m3)
    assert column(assembler, X, "merchant_trust_percentile").tolist() == [0.5, 0.5, 0.5]  # the prior 0.6's standing
    assert np.isnan(column(assembler, X, "hour_of_day")[1:]).all()
    for name in ("user_follows_creator", "user_merchant_orders", "user_orders", "user_category_affinity"):
        assert np.isfinite(column(assembler, X, name)).all()
        assert column(assembler, X, name)[:2].tolist() == [0.0, 0.0]
    # unknown creators get the platform's prior engagement, never NaN
    assert np.isfinite(column(assembler, X, "creator_coec")).all()
    status = assembler.merchant_status(candidates["merchant_id"])
    assert status.trust.tolist() == [0.6, 0.6, 0.6] and not status.banned_merchant.any() and not status.known.any()


def test_assembler_without_context_treats_everyone_as_new():
    assembler = FeatureAssembler(crafted_snapshot(), None)
    X = assembler.transform({"user_id": "u1", "ts": T0, "creator_id": ["c1"], "merchant_id": ["m1"]})
    assert column(assembler, X, "user_merchant_orders").tolist() == [0.0]
    assert np.isnan(column(assembler, X, "creator_coec")).all()


def test_missing_candidate_column_is_a_schema_error():
    assembler = FeatureAssembler(crafted_snapshot())
    with pytest.raises(SchemaError, match="merchant_id"):
        assembler.transform(pd.DataFrame({"user_id": ["u1"], "ts": [T0], "creator_id": ["c1"]}))


def test_monotone_and_categorical_schema():
    assembler = FeatureAssembler(crafted_snapshot())
    directions = dict(zip(assembler.feature_names, assembler.monotone, strict=True))
    assert directions["merchant_trust_percentile"] == 1 and directions["merchant_trust_commodity_quality"] == 1
    assert directions["creator_trust_host"] == 1 and directions["merchant_expected_bad_percentile"] == -1
    assert "merchant_trust_index" not in directions and "merchant_expected_bad_rate" not in directions
    assert directions["merchant_n_orders"] == 0
    assert assembler.categorical == ("merchant_category",)
    X = assembler.transform({"user_id": "u", "ts": T0, "creator_id": ["c1"] * 3, "merchant_id": ["m1", "m2", "m3"]})
    codes = column(assembler, X, "merchant_category")
    categories = assembler.schema()["categories"]["merchant_category"]
    assert [categories[int(c)] for c in codes] == ["beauty", "food", "food"]


def test_banned_merchant_and_entity_status():
    status = FeatureAssembler(crafted_snapshot()).merchant_status(["m1", "m2", "m3"])
    assert status.banned_merchant.tolist() == [False, True, False]
    # m3 shares entity e2 with the banned m2
    assert status.banned_entity.tolist() == [False, False, True]


def test_schema_pins_layout_on_a_later_snapshot():
    first = FeatureAssembler(crafted_snapshot())
    later = crafted_snapshot()
    later.merchants = later.merchants.drop(columns=["n_orders"]).assign(extra_signal=1.0)
    later.merchants.loc[0, "category"] = "toys"  # a category the schema has never seen
    pinned = FeatureAssembler(later, schema=first.schema())
    assert pinned.feature_names == first.feature_names and pinned.monotone == first.monotone
    X = pinned.transform({"user_id": "u", "ts": T0, "creator_id": ["c1", "c1"], "merchant_id": ["m1", "m2"]})
    assert np.isnan(column(pinned, X, "merchant_n_orders")).all()  # missing column -> missing value
    codes = column(pinned, X, "merchant_category")
    assert np.isnan(codes[0]) and codes[1] == first.schema()["categories"]["merchant_category"].index("food")
    with pytest.raises(SchemaError):
        FeatureAssembler(later, schema={**first.schema(), "format_version": 99})


def test_context_tables_save_load_round_trip(tmp_path):
    events = crafted_events()
    context = build_context_tables(events, T0 + 3 * DAY)
    context.save(tmp_path / "ctx")
    loaded = ContextTables.load(tmp_path / "ctx")
    assert loaded.as_of == context.as_of and dict(loaded.priors) == dict(context.priors)
    candidates = pd.DataFrame(
        {"user_id": ["u1", "u2"], "ts": [T0 + 3 * DAY] * 2, "creator_id": ["c1", "c2"], "merchant_id": ["m1", "m2"]}
    )
    snapshot = crafted_snapshot()
    np.testing.assert_array_equal(
        FeatureAssembler(snapshot, context).transform(candidates),
        FeatureAssembler(snapshot, loaded).transform(candidates),
    )
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "ctx" / "follows.parquet").unlink()
    with pytest.raises(ModelIntegrityError, match="follows.parquet"):
        ContextTables.load(tmp_path / "ctx")


@pytest.fixture(scope="module")
def simulated_assembler(small_platform):
    from trustfeed.features.trust import build_snapshot

    events = validate_events(small_platform.tables)
    as_of = pd.Timestamp("2026-01-20", tz="UTC")
    snapshot = build_snapshot(events, as_of)
    assembler = FeatureAssembler(snapshot, build_context_tables(events, as_of))
    impressions = events["impressions"]
    window = impressions.loc[(impressions["ts"] >= as_of) & (impressions["ts"] < as_of + DAY)].reset_index(drop=True)
    return assembler, window, assembler.transform(window)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_one_request_equals_its_rows_of_the_batch(simulated_assembler, data):
    assembler, window, batch = simulated_assembler
    request_ids = window["request_id"].unique()
    request = data.draw(st.sampled_from(list(request_ids[:200])))
    rows = np.flatnonzero((window["request_id"] == request).to_numpy())
    one = window.iloc[rows]
    # serving sends one user and one time for the whole request
    as_request = {
        "user_id": one["user_id"].iloc[0],
        "ts": one["ts"].iloc[0].isoformat(),
        "stream_id": one["stream_id"].to_numpy(),
        "creator_id": one["creator_id"].to_numpy(),
        "merchant_id": one["merchant_id"].to_numpy(),
    }
    np.testing.assert_array_equal(assembler.transform(one), batch[rows])
    np.testing.assert_array_equal(assembler.transform(as_request), batch[rows])


def test_simulated_features_are_mostly_known(simulated_assembler):
    assembler, window, batch = simulated_assembler
    assert batch.shape == (len(window), len(assembler.feature_names))
    assert column(assembler, batch, "merchant_known").mean() > 0.9
    assert np.isfinite(column(assembler, batch, "merchant_trust_percentile")).all()
    assert (column(assembler, batch, "user_follows_creator") > 0).any()
    assert (column(assembler, batch, "user_category_affinity") > 0).any()


def test_empty_request_and_duplicate_candidates():
    assembler = FeatureAssembler(crafted_snapshot(), build_context_tables(crafted_events(), T0 + 3 * DAY))
    empty = assembler.transform({"user_id": "u1", "ts": T0, "creator_id": [], "merchant_id": []})
    assert empty.shape == (0, len(assembler.feature_names))
    frame = pd.DataFrame({"user_id": [], "ts": [], "stream_id": [], "creator_id": [], "merchant_id": []})
    assert assembler.transform(frame).shape == (0, len(assembler.feature_names))
    twice = assembler.transform({"user_id": "u1", "ts": T0, "creator_id": ["c1", "c1"], "merchant_id": ["m1", "m1"]})
    np.testing.assert_array_equal(twice[0], twice[1])


def test_purchase_counts_only_once_its_order_exists():
    cut = T0 + 3 * DAY
    events = validate_events(
        {
            "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": [T0]}),
            "orders": pd.DataFrame(
                {"order_id": ["o1"], "user_id": ["u1"], "merchant_id": ["m1"], "created_at": [cut + pd.Timedelta(minutes=5)], "amount": [1.0]}
            ),
            "impressions": pd.DataFrame(
                {
                    "request_id": ["q1"], "user_id": ["u1"], "ts": [cut - pd.Timedelta(minutes=5)], "stream_id": ["s1"],
                    "creator_id": ["c1"], "merchant_id": ["m1"], "position": [1], "clicked": [True], "purchased": [True],
                    "order_id": ["o1"],
                }
            ),
        }
    )
    before = build_context_tables(events, cut).creator_engagement.set_index("creator_id")
    after = build_context_tables(events, cut + DAY).creator_engagement.set_index("creator_id")
    assert before.loc["c1", "purchases"] == 0 and after.loc["c1", "purchases"] == 1


def test_transform_with_status_equals_the_two_calls():
    assembler = FeatureAssembler(crafted_snapshot(), build_context_tables(crafted_events(), T0 + 3 * DAY))
    request = {"user_id": "u1", "ts": T0, "creator_id": ["c1", "c2", "c9"], "merchant_id": ["m2", "m3", "m-new"]}
    features, status = assembler.transform_with_status(request)
    np.testing.assert_array_equal(features, assembler.transform(request))
    expected = assembler.merchant_status(request["merchant_id"])
    for got, want in zip(status, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert status.banned_merchant.tolist() == [True, False, False] and status.banned_entity.tolist() == [False, True, False]


def test_single_user_fast_path_on_requests_with_history(simulated_assembler):
    """Requests whose user has follows, orders and affinities: per request == batch rows."""
    assembler, window, batch = simulated_assembler
    history = (
        (column(assembler, batch, "user_follows_creator") > 0)
        | (column(assembler, batch, "user_merchant_orders") > 0)
    )
    requests = window.loc[history, "request_id"].unique()[:40]
    assert len(requests) >= 10
    for request in requests:
        rows = np.flatnonzero((window["request_id"] == request).to_numpy())
        one = window.iloc[rows]
        as_request = {
            "user_id": one["user_id"].iloc[0],
            "ts": one["ts"].iloc[0],
            "creator_id": one["creator_id"].to_numpy(),
            "merchant_id": one["merchant_id"].to_numpy(),
        }
        np.testing.assert_array_equal(assembler.transform(as_request), batch[rows])


# ----------------------------------------------------------------------------- trust as a standing


def _merchants_with(trust: list[float], bad: list[float]) -> SimpleNamespace:
    n = len(trust)
    merchants = pd.DataFrame({"merchant_id": [f"m{i}" for i in range(n)], "trust_index": trust,
                              "expected_bad_rate": bad, "n_orders": np.arange(n, dtype=float)})
    return SimpleNamespace(merchants=merchants, creators=pd.DataFrame({"creator_id": ["c1"]}))


# on a grid of hundredths: a rescaling cannot merge two distinct values by rounding
_TRUST_LISTS = st.lists(st.integers(0, 100).map(lambda k: k / 100), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(trust=_TRUST_LISTS, scale=st.floats(0.05, 1.0), shift=st.floats(0.0, 0.5))
def test_trust_features_have_one_scale_whatever_the_index_scale(trust, scale, shift):
    # the same merchants' index on another scale (default vs fitted weights): same features
    low = [t * 0.5 for t in trust]
    rescaled = [shift + scale * t for t in low]
    candidates = {"user_id": "u", "ts": T0, "creator_id": ["c1"] * (len(trust) + 1),
                  "merchant_id": [f"m{i}" for i in range(len(trust))] + ["m-new"]}
    first = FeatureAssembler(_merchants_with(low, [1 - t for t in low]))
    second = FeatureAssembler(_merchants_with(rescaled, [1 - t for t in rescaled]), schema=first.schema())
    a, b = first.transform(candidates), second.transform(candidates)
    for name in ("merchant_trust_percentile", "merchant_expected_bad_percentile"):
        np.testing.assert_allclose(column(first, a, name), column(second, b, name), atol=1e-12)
        assert ((column(first, a, name) >= 0) & (column(first, a, name) <= 1)).all()
    # the policy still reads the index itself
    np.testing.assert_allclose(second.merchant_status(candidates["merchant_id"][:-1]).trust, rescaled)


@settings(max_examples=40, deadline=None)
@given(trust=_TRUST_LISTS, which=st.integers(0, 11), rise=st.floats(0.0, 1.0))
def test_trust_standing_never_falls_when_a_merchant_s_trust_rises(trust, which, rise):
    which %= len(trust)
    raised = list(trust)
    raised[which] = min(1.0, trust[which] + rise)
    candidates = {"user_id": "u", "ts": T0, "creator_id": ["c1"], "merchant_id": [f"m{which}"]}
    before = FeatureAssembler(_merchants_with(trust, [1 - t for t in trust]))
    after = FeatureAssembler(_merchants_with(raised, [1 - t for t in raised]))
    assert column(after, after.transform(candidates), "merchant_trust_percentile")[0] >= \
        column(before, before.transform(candidates), "merchant_trust_percentile")[0]
    assert column(after, after.transform(candidates), "merchant_expected_bad_percentile")[0] <= \
        column(before, before.transform(candidates), "merchant_expected_bad_percentile")[0]


def test_a_schema_saved_with_the_index_value_still_reads_the_value():
    # bundles trained before the standing features keep their raw trust feature
    schema = FeatureAssembler(crafted_snapshot()).schema()
    at = schema["feature_names"].index("merchant_trust_percentile")
    schema["feature_names"][at], schema["sources"][at] = "merchant_trust_index", "merchant:trust_index"
    assembler = FeatureAssembler(crafted_snapshot(), schema=schema)
    X = assembler.transform({"user_id": "u", "ts": T0, "creator_id": ["c1"] * 3, "merchant_id": ["m1", "m2", "m-new"]})
    assert column(assembler, X, "merchant_trust_index").tolist() == [0.9, 0.2, 0.6]
    assert parse_source("merchant_percentile:trust_index").text() == "merchant_percentile:trust_index"


def test_merchant_records_reach_the_policy_and_old_served_tables_still_open():
    from trustfeed.features._id_index import HashedIds

    assembler = FeatureAssembler(crafted_snapshot())
    ids = ["m1", "m2", "m3", "m-new"]
    assert assembler.merchant_status(ids).orders.tolist() == [100.0, 50.0, 3.0, 0.0]  # unknown: a new account
    arrays = {k: v for k, v in assembler.served_arrays().items() if k != "status_orders"}  # written before it existed
    indexes = {name: HashedIds.build(v) for name, v in assembler.id_vocabularies().items()}
    old = FeatureAssembler.from_served_arrays(assembler.schema(), arrays, indexes)
    assert np.isnan(old.merchant_status(ids).orders).all()  # not known: the policy keeps its point estimate
    assert old.merchant_status(ids).trust.tolist() == assembler.merchant_status(ids).trust.tolist()
