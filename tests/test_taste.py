"""The viewer's category taste (``user_taste``, feature ``user_category_taste``): orders,
clicks and followed creators as shares per category, the same from the full build and from
the day-by-day viewer history, point in time, and served through every assembler path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.context import ContextConfig, FeatureAssembler, ViewerHistory, build_context_tables
from trustfeed.features.errors import ConfigError
from trustfeed.features.events import validate_events
from trustfeed.features.history import ContextTables, taste_of

T0 = pd.Timestamp("2026-03-01", tz="UTC")
CATEGORIES = ("food", "toys", "beauty")


def _hours(draw: Any, n: int) -> pd.DatetimeIndex:
    hours = draw(st.lists(st.integers(0, 96), min_size=n, max_size=n))
    return pd.DatetimeIndex([T0 + pd.Timedelta(hours=h) for h in hours], dtype="datetime64[ns, UTC]")


@st.composite
def small_logs(draw: Any) -> Any:
    """A few merchants, creators, users; random orders, clicks, follows and streams over four days."""
    n_m, n_c, n_u = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    pick = st.integers
    merchants = pd.DataFrame({
        "merchant_id": [f"m{i}" for i in range(n_m)],
        "registered_at": [T0 - pd.Timedelta(days=1)] * (n_m - 1) + list(_hours(draw, 1)),  # the last one joins later
        "category": [CATEGORIES[draw(pick(0, 2))] for _ in range(n_m)],
    })
    creators = pd.DataFrame({"creator_id": [f"c{i}" for i in range(n_c)], "registered_at": [T0 - pd.Timedelta(days=1)] * n_c})
    n_s = draw(pick(0, 6))
    streams = pd.DataFrame({
        "stream_id": [f"s{i}" for i in range(n_s)],
        "creator_id": [f"c{draw(pick(0, n_c - 1))}" for _ in range(n_s)],
        "merchant_id": [f"m{draw(pick(0, n_m - 1))}" for _ in range(n_s)],
        "started_at": _hours(draw, n_s),
        # a stream may name a category no merchant has, or none
        "category": pd.array([draw(st.sampled_from([*CATEGORIES, "garden", None])) for _ in range(n_s)], dtype="string"),
    })
    n_o = draw(pick(0, 5))
    orders = pd.DataFrame({
        "order_id": [f"o{i}" for i in range(n_o)],
        "user_id": [f"u{draw(pick(0, n_u - 1))}" for _ in range(n_o)],
        "merchant_id": [f"m{draw(pick(0, n_m - 1))}" for _ in range(n_o)],
        "amount": [1.0] * n_o,
        "created_at": _hours(draw, n_o),
    })
    n_f = draw(pick(0, 6))
    follows = pd.DataFrame({
        "user_id": [f"u{draw(pick(0, n_u - 1))}" for _ in range(n_f)],
        "creator_id": [f"c{draw(pick(0, n_c - 1))}" for _ in range(n_f)],
        "followed_at": _hours(draw, n_f),
    }).drop_duplicates(["user_id", "creator_id", "followed_at"])
    n_i = draw(pick(0, 5))
    impressions = pd.DataFrame({
        "impression_id": [f"i{i}" for i in range(n_i)],
        "request_id": [f"r{i}" for i in range(n_i)],
        "user_id": [f"u{draw(pick(0, n_u - 1))}" for _ in range(n_i)],
        "ts": _hours(draw, n_i),
        "stream_id": [f"s{i}" for i in range(n_i)],
        "creator_id": [f"c{draw(pick(0, n_c - 1))}" for _ in range(n_i)],
        "merchant_id": [f"m{draw(pick(0, n_m - 1))}" for _ in range(n_i)],
        "position": [1] * n_i,
        "clicked": [draw(st.booleans()) for _ in range(n_i)],
    })
    tables = {"merchants": merchants, "creators": creators, "livestreams": streams, "orders": orders,
              "follows": follows, "impressions": impressions}
    return tables


def _validated(tables: dict[str, pd.DataFrame]) -> Any:
    import warnings

    with warnings.catch_warnings():  # impressions of streams not in livestreams: warnings only
        warnings.simplefilter("ignore")
        return validate_events(tables)


@settings(max_examples=30, deadline=None)
@given(tables=small_logs(), cuts=st.lists(st.integers(0, 100), min_size=1, max_size=3),
       follow_weight=st.sampled_from([1.0, 0.0, 2.5]), click_weight=st.sampled_from([0.25, 0.0]))
def test_the_viewer_history_and_the_full_build_give_the_same_taste(
    tables: dict[str, pd.DataFrame], cuts: list[int], follow_weight: float, click_weight: float
) -> None:
    events = _validated(tables)
    config = ContextConfig(follow_weight=follow_weight, click_weight=click_weight)
    cursor = ViewerHistory(events, config).cursor()
    for hours in cuts:
        at = T0 + pd.Timedelta(hours=hours)
        full = build_context_tables(events, at, config).user_taste
        running = cursor.at(at).frames()["user_taste"]
        pd.testing.assert_frame_equal(running, full, check_dtype=False)
        # shares sum to 1 per user, each in (0, 1]
        assert ((full["taste"] > 0) & (full["taste"] <= 1 + 1e-12)).all()
        np.testing.assert_allclose(full.groupby("user_id")["taste"].sum().to_numpy(), 1.0)


@settings(max_examples=20, deadline=None)
@given(tables=small_logs(), hours=st.integers(0, 100), later=st.integers(0, 30))
def test_an_event_at_or_after_the_cut_changes_nothing(tables: dict[str, pd.DataFrame], hours: int, later: int) -> None:
    at = T0 + pd.Timedelta(hours=hours)
    when = at + pd.Timedelta(hours=later)  # at the cut (later = 0) or after it
    before = build_context_tables(_validated(tables), at).user_taste
    grown = dict(tables)
    grown["follows"] = pd.concat([tables["follows"], pd.DataFrame(
        {"user_id": ["u0", "u-new"], "creator_id": ["c0", "c0"], "followed_at": [when, when]})],
        ignore_index=True).drop_duplicates(["user_id", "creator_id", "followed_at"])
    grown["livestreams"] = pd.concat([tables["livestreams"], pd.DataFrame(
        {"stream_id": ["s-late"], "creator_id": ["c0"], "merchant_id": ["m0"], "started_at": [when], "category": ["toys"]})],
        ignore_index=True)
    grown["orders"] = pd.concat([tables["orders"], pd.DataFrame(
        {"order_id": ["o-late"], "user_id": ["u0"], "merchant_id": ["m0"], "amount": [1.0], "created_at": [when]})],
        ignore_index=True)
    grown["impressions"] = pd.concat([tables["impressions"], pd.DataFrame(
        {"impression_id": ["i-late"], "request_id": ["r-late"], "user_id": ["u0"], "ts": [when], "stream_id": ["s-late"],
         "creator_id": ["c0"], "merchant_id": ["m0"], "position": [1], "clicked": [True]})],
        ignore_index=True)
    events = _validated(grown)
    pd.testing.assert_frame_equal(build_context_tables(events, at).user_taste, before, check_dtype=False)
    pd.testing.assert_frame_equal(ViewerHistory(events).at(at).frames()["user_taste"], before, check_dtype=False)


def _hand_log() -> Any:
    hour = pd.Timedelta(hours=1)
    return validate_events({
        "merchants": pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": [T0 - 9 * hour] * 2,
                                   "category": ["food", "toys"]}),
        "creators": pd.DataFrame({"creator_id": ["c1", "c2"], "registered_at": [T0 - 9 * hour] * 2}),
        "livestreams": pd.DataFrame({"stream_id": ["s1", "s2", "s3", "s4"], "creator_id": ["c1", "c1", "c1", "c2"],
                                     "merchant_id": ["m1", "m1", "m2", "m2"],
                                     "started_at": [T0, T0 + hour, T0 + 2 * hour, T0 + 20 * hour],
                                     "category": ["food", "food", "toys", "toys"]}),
        "orders": pd.DataFrame({"order_id": ["o1"], "user_id": ["buyer"], "merchant_id": ["m2"], "amount": [1.0],
                                "created_at": [T0 + hour]}),
        "follows": pd.DataFrame({"user_id": ["buyer", "fan", "fan"], "creator_id": ["c1", "c1", "c2"],
                                 "followed_at": [T0, T0, T0]}),
    })


def test_a_follow_spreads_its_weight_over_the_creators_streams_and_a_creator_without_one_adds_nothing() -> None:
    taste = build_context_tables(_hand_log(), T0 + 10 * pd.Timedelta(hours=1), ContextConfig(follow_weight=2.0))
    by_pair = taste.user_taste.set_index(["user_id", "category"])["taste"]
    # fan: only follows; c1 streamed food twice and toys once, c2 has not streamed yet
    assert by_pair[("fan", "food")] == pytest.approx(2 / 3) and by_pair[("fan", "toys")] == pytest.approx(1 / 3)
    # buyer: one toys order (weight 1) + the follow of c1 (2 x 2/3 food, 2 x 1/3 toys) = 4/3 food, 5/3 toys
    assert by_pair[("buyer", "food")] == pytest.approx(4 / 9) and by_pair[("buyer", "toys")] == pytest.approx(5 / 9)
    # the affinity stays orders and clicks only: the fan has none
    assert "fan" not in set(taste.user_category["user_id"])


def test_the_assembler_serves_the_taste_of_the_candidates_category() -> None:
    from types import SimpleNamespace

    events = _hand_log()
    at = T0 + 10 * pd.Timedelta(hours=1)
    context = build_context_tables(events, at)
    snapshot = SimpleNamespace(merchants=pd.DataFrame({"merchant_id": ["m1", "m2"], "trust_index": [0.5, 0.5],
                                                       "category": ["food", "toys"]}),
                               creators=pd.DataFrame({"creator_id": ["c1", "c2"]}))
    assembler = FeatureAssembler(snapshot, context)
    candidates = pd.DataFrame({"user_id": ["fan", "fan", "nobody"], "ts": at, "stream_id": "s",
                               "creator_id": ["c1", "c2", "c1"], "merchant_id": ["m1", "m2", "m1"]})
    column = assembler.transform_frame(candidates)["user_category_taste"].tolist()
    assert column == pytest.approx([2 / 3, 1 / 3, 0.0])
    # the same values from the day-by-day history's tables
    history = ViewerHistory(events)
    viewer = FeatureAssembler(snapshot, build_context_tables(events, at, viewer=False), viewer=history.at(at))
    assert viewer.transform_frame(candidates)["user_category_taste"].tolist() == pytest.approx(column)


def test_context_tables_saved_before_the_taste_load_with_an_empty_one(tmp_path: Any) -> None:
    context = build_context_tables(_hand_log(), T0 + 10 * pd.Timedelta(hours=1))
    context.save(tmp_path / "ctx")
    (tmp_path / "ctx" / "user_taste.parquet").unlink()
    old = ContextTables.load(tmp_path / "ctx")
    assert old.user_taste.empty and list(old.user_taste.columns) == ["user_id", "category", "taste"]
    context.save(tmp_path / "ctx2")
    pd.testing.assert_frame_equal(ContextTables.load(tmp_path / "ctx2").user_taste, context.user_taste)


def test_follow_weight_is_validated() -> None:
    with pytest.raises(ConfigError, match="follow_weight"):
        ContextConfig(follow_weight=-1.0)


def test_taste_of_ignores_follows_of_creators_without_streams_and_zero_weights() -> None:
    user, category, taste = taste_of(
        (np.array([0, 1]), np.array([0, 1]), np.array([0.0, 1.0])),
        (np.array([0, 2]), np.array([7, 3])),
        (np.array([3, 3]), np.array([1, 2]), np.array([1, 1])),
        follow_weight=1.0, n_categories=3)
    assert (user.tolist(), category.tolist()) == ([1, 2, 2], [1, 1, 2])
    assert taste.tolist() == pytest.approx([1.0, 0.5, 0.5])  # user 0: a zero weight and a creator that never streamed


def test_the_served_arrays_carry_the_taste_and_older_ones_without_it_still_open() -> None:
    from types import SimpleNamespace

    from trustfeed.features._id_index import HashedIds

    at = T0 + 10 * pd.Timedelta(hours=1)
    snapshot = SimpleNamespace(merchants=pd.DataFrame({"merchant_id": ["m1", "m2"], "trust_index": [0.5, 0.5],
                                                       "category": ["food", "toys"]}),
                               creators=pd.DataFrame({"creator_id": ["c1", "c2"]}))
    assembler = FeatureAssembler(snapshot, build_context_tables(_hand_log(), at))
    arrays = assembler.served_arrays()
    assert {"user_taste_keys", "user_taste_values"} <= set(arrays)
    indexes = {name: HashedIds.build(v) for name, v in assembler.id_vocabularies().items()}
    candidates = pd.DataFrame({"user_id": "fan", "ts": at, "stream_id": "s", "creator_id": ["c1", "c2"],
                               "merchant_id": ["m1", "m2"]})
    served = FeatureAssembler.from_served_arrays(assembler.schema(), arrays, indexes)
    np.testing.assert_array_equal(served.transform(candidates), assembler.transform(candidates))
    old_arrays = {k: v for k, v in arrays.items() if not k.startswith("user_taste")}  # written before the taste
    old = FeatureAssembler.from_served_arrays(assembler.schema(), old_arrays, indexes)
    assert old.transform_frame(candidates)["user_category_taste"].tolist() == [0.0, 0.0]
