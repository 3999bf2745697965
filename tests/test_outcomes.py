"""Order outcomes: the one definition of a bad order, as known at any time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfeed.features.events import validate_events
from trustfeed.features.outcomes import OUTCOME_COLUMNS, order_outcomes, went_bad


def _events() -> Any:
    merchants = pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": ["2026-01-01"] * 2})
    orders = pd.DataFrame({
        "order_id": ["o1", "o2", "o3", "o4", "o5"],
        "user_id": ["u1", "u2", "u1", "u3", "u2"],
        "merchant_id": ["m1", "m1", "m2", "m2", "m1"],
        "amount": [10.0] * 5,
        "created_at": ["2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06"],
        "status": ["paid", "paid", "paid", "cancelled", "paid"],
    })
    cases = pd.DataFrame({
        "case_id": ["c1", "c2", "c3", "c4", "c5"],
        "order_id": ["o1", "o1", "o2", "o3", "o9"],
        "opened_at": ["2026-01-08", "2026-01-05", "2026-01-07", "2026-01-09", "2026-01-09"],
        "type": ["return"] * 5,
        "reason": ["quality", "logistics", "no_reason", "counterfeit", "quality"],
        "resolved_at": ["2026-01-09", "2026-01-06", "2026-01-08", None, "2026-01-10"],
        "outcome": ["buyer_favor", "merchant_favor", "buyer_favor", None, "buyer_favor"],
    })
    reviews = pd.DataFrame({
        "review_id": ["r1", "r2", "r3"], "order_id": ["o2", "o2", "o5"], "user_id": ["u2", "u2", "u2"],
        "created_at": ["2026-01-10", "2026-01-04", "2026-01-07"], "rating": [2, 5, 4],
    })
    return validate_events({"merchants": merchants, "orders": orders, "after_sales": cases, "reviews": reviews})


@pytest.fixture(scope="module")
def platform_events(small_platform: Any) -> Any:
    return validate_events(small_platform.tables)


def _day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_last_bad_case_is_the_latest_case_for_a_bad_reason() -> None:
    cases = pd.DataFrame({
        "case_id": ["k1", "k2", "k3", "k4"], "order_id": ["o1", "o1", "o1", "o2"],
        "opened_at": ["2026-01-08", "2026-01-04", "2026-01-09", "2026-01-07"],
        "type": ["return"] * 4, "reason": ["quality", "not_as_described", "logistics", "no_reason"],
    })
    orders = pd.DataFrame({"order_id": ["o1", "o2"], "user_id": ["u1", "u2"], "merchant_id": ["m1", "m1"],
                           "amount": [1.0, 1.0], "created_at": ["2026-01-02", "2026-01-03"]})
    merchants = pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"]})
    table = order_outcomes(validate_events({"merchants": merchants, "orders": orders, "after_sales": cases}))
    # first and latest bad-reason case; the later logistics case is not bad evidence
    assert table["bad_case_at"].tolist()[0] == _day("2026-01-04")
    assert table["last_bad_case_at"].tolist()[0] == _day("2026-01-08")
    assert table["last_bad_case_at"].isna().tolist()[1]  # only a no-reason return


def test_one_row_per_order_with_first_events_hand_computed() -> None:
    table = order_outcomes(_events())
    assert tuple(table.columns) == OUTCOME_COLUMNS
    # the five orders in order, then the case naming an order the log does not hold
    assert table["order_id"].tolist() == ["o1", "o2", "o3", "o4", "o5", "o9"]
    assert table["in_orders"].tolist() == [True] * 5 + [False]
    assert table["cancelled"].tolist() == [False, False, False, True, False, False]
    o1, o2, o3 = (table.iloc[i] for i in range(3))
    assert o1["case_at"] == _day("2026-01-05") and o1["case_reason"] == "logistics"  # the first case is not bad
    assert o1["bad_case_at"] == _day("2026-01-08") and o1["bad_case_reason"] == "quality"
    assert o1["buyer_favor_at"] == _day("2026-01-08") and pd.isna(o1["low_rating_at"])
    assert pd.isna(o2["bad_case_at"]) and o2["buyer_favor_at"] == _day("2026-01-07")  # a no-reason return is not bad
    assert o2["review_at"] == _day("2026-01-04") and o2["worst_rating"] == 2 and o2["low_rating_at"] == _day("2026-01-10")
    assert o3["counterfeit_case_at"] == _day("2026-01-09") and pd.isna(o3["buyer_favor_at"])  # undecided
    assert went_bad(table).tolist() == [True, True, True, False, False, True]
    assert went_bad(table, low_rating=False).tolist() == [True, False, True, False, False, True]
    assert went_bad(table, _day("2026-01-09")).tolist() == [True, False, False, False, False, False]


def test_as_of_sees_only_what_was_known_and_since_opens_a_window() -> None:
    events = _events()
    cut = order_outcomes(events, as_of="2026-01-08")
    assert cut["order_id"].tolist() == ["o1", "o2", "o3", "o4", "o5"]
    assert pd.isna(cut.iloc[0]["bad_case_at"]) and pd.isna(cut.iloc[0]["buyer_favor_at"])  # case c1 opens on the cut
    assert pd.isna(cut.iloc[1]["buyer_favor_at"])  # c3 opened before the cut but was decided after it
    windowed = order_outcomes(events, since="2026-01-04")
    assert windowed.loc[windowed["in_orders"], "order_id"].tolist() == ["o3", "o4", "o5"]
    assert not (windowed["review_at"] < _day("2026-01-04")).any()


def test_the_encoded_ids_of_the_trust_builder_give_the_same_table(platform_events: Any) -> None:
    from trustfeed.features._signals import encode_ids

    events = platform_events
    encoded, enc = encode_ids(events)
    plain, coded = order_outcomes(events), order_outcomes(encoded.tables)
    n = len(events["orders"])
    for column in ("cancelled", "bad_case_at", "low_rating_at", "buyer_favor_at", "bad_at", "worst_rating"):
        pd.testing.assert_series_equal(plain[column].iloc[:n], coded[column].iloc[:n], check_names=False)
    assert went_bad(plain).sum() > 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day=st.integers(min_value=0, max_value=41), hour=st.integers(min_value=0, max_value=23))
def test_a_cut_equals_limiting_the_full_table_to_orders_and_events_before_it(
    small_platform: Any, platform_events: Any, day: int, hour: int
) -> None:
    events = platform_events
    full = order_outcomes(events)
    cut_time = small_platform.config.start_time + pd.Timedelta(days=day, hours=hour)
    cut = order_outcomes(events, as_of=cut_time)
    placed = (full["created_at"] < cut_time).to_numpy(dtype=bool) & full["in_orders"].to_numpy(dtype=bool)
    assert cut["in_orders"].sum() == placed.sum()
    known = cut.loc[cut["in_orders"]].reset_index(drop=True)
    assert np.array_equal(went_bad(known), went_bad(full.loc[placed], cut_time))
    assert np.array_equal(went_bad(known, low_rating=False), went_bad(full.loc[placed], cut_time, low_rating=False))


def test_as_of_needs_an_event_log() -> None:
    with pytest.raises(TypeError, match="as_of needs an EventLog"):
        order_outcomes(_events().tables, as_of="2026-01-05")


def test_arrow_backed_ids_in_several_chunks_give_the_same_table() -> None:
    # a log grown by concatenation (the closed-loop world's) holds Arrow-backed id columns in
    # several chunks; matching its ids must not depend on how the column is stored
    events = _events()
    expected = order_outcomes(events)
    chunked = dict(events.tables)
    for name in ("orders", "after_sales", "reviews"):
        frame = chunked[name]
        ids = frame["order_id"].astype("string[pyarrow]")
        half = len(ids) // 2
        frame = frame.assign(order_id=pd.concat([ids.iloc[:half], ids.iloc[half:]]))
        chunked[name] = frame
    import pyarrow as pa

    assert pa.array(chunked["orders"]["order_id"].array).num_chunks == 2
    pd.testing.assert_frame_equal(order_outcomes(validate_events(chunked)), expected)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(-1, 5), st.integers(0, 4), st.sampled_from(["quality", "logistics", "counterfeit"])), max_size=40)
)
def test_first_event_per_order_takes_the_earliest_and_the_first_listed_on_ties(events: list[tuple[int, int, str]]) -> None:
    # few distinct times, so ties are common; row -1 = a case of no known order
    from trustfeed.features.outcomes import _NONE, _first

    rows = np.array([e[0] for e in events], dtype=np.int64)
    times = np.array([e[1] for e in events], dtype=np.int64)
    values = pd.Series([e[2] for e in events], dtype="category")
    first, reason = _first(rows, times, 6, values)
    for row in range(6):
        mine = [i for i, e in enumerate(events) if e[0] == row]
        if not mine:
            assert first[row] == _NONE and pd.isna(reason.iloc[row])
            continue
        earliest = min(times[i] for i in mine)
        chosen = next(i for i in mine if times[i] == earliest)
        assert first[row] == earliest and reason.iloc[row] == events[chosen][2]


@settings(max_examples=30, deadline=None)
@given(st.sets(st.sampled_from(OUTCOME_COLUMNS), min_size=1), st.booleans())
def test_a_subset_of_columns_is_the_full_tables_columns(wanted: set[str], encoded: bool) -> None:
    """``columns=`` builds only the asked columns, in the table's order, each one as in the
    full table (string ids and the trust builder's codes, orphan cases included)."""
    from trustfeed.features._signals import encode_ids

    events = _events()
    tables = encode_ids(events)[0].tables if encoded else events.tables
    full, part = order_outcomes(tables), order_outcomes(tables, columns=wanted)
    assert list(part.columns) == [c for c in OUTCOME_COLUMNS if c in wanted]
    pd.testing.assert_frame_equal(part, full[list(part.columns)], check_exact=True)


def test_unknown_outcome_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown columns"):
        order_outcomes(_events(), columns=["bad_at", "not_a_column"])
