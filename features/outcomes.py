"""What became of each order: the one definition of a bad order.

:func:`order_outcomes` reads the event log once and returns one row per order with the times
at which it was cancelled, went to after-sales (for which reason), was decided in the buyer's
favour, and was reviewed (how): the facts every other part of trustfeed reads instead of
re-deriving them. A bad order (the bad-order rate of ``docs/contract.md``) is one with an
after-sales case for quality, not_as_described or counterfeit, or with a 1-2 star review;
:func:`went_bad` applies that rule with a time limit.

Readers and the time limit each applies:

* graded labels (``training/dataset.py``): outcomes known within the label horizon after the
  impression;
* trust signals (``features/_signals.py``, ``features/trust.py``): outcomes known before the
  snapshot cut (``as_of``);
* user history (``features/context.py``): outcomes within the history window;
* the policy's bad-order model (``training/train.py``): as the labels.

Ids may be strings or the dense integer codes of the trust builder: the table matches them
by value and keeps the orders table's row order, so row ``i`` is order ``i``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import cache
from typing import Any, cast

import numpy as np
import pandas as pd

from .events import EventLog, TimeLike, to_utc

__all__ = ["BAD_AFTER_SALES_REASONS", "LOW_RATING_MAX", "OUTCOME_COLUMNS", "net_value", "order_outcomes", "went_bad"]

BAD_AFTER_SALES_REASONS: tuple[str, ...] = ("quality", "not_as_described", "counterfeit")
"""After-sales reasons that make an order bad (a logistics or no-reason return does not)."""

LOW_RATING_MAX = 2
"""A review with at most this many stars makes an order bad."""

OUTCOME_COLUMNS: tuple[str, ...] = (
    "order_id",
    "user_id",
    "merchant_id",
    "created_at",
    "in_orders",
    "cancelled",
    "case_at",
    "case_reason",
    "bad_case_at",
    "bad_case_reason",
    "last_bad_case_at",
    "counterfeit_case_at",
    "buyer_favor_at",
    "review_at",
    "worst_rating",
    "low_rating_at",
    "bad_at",
)
"""Columns of :func:`order_outcomes`; every ``*_at`` is the *first* such event (NaT: none),
except ``last_bad_case_at``, the latest after-sales case for a bad reason."""

_NONE = np.iinfo(np.int64).max  # "no such event" while taking minima over int64 nanoseconds


def _ns(times: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch, ``_NONE`` for null (no per-row Timestamp objects)."""
    stamps = pd.DatetimeIndex(pd.to_datetime(times, utc=True)).as_unit("ns")
    values = stamps.asi8
    return np.where(values == np.iinfo(np.int64).min, _NONE, values)


def _as_time(ns: np.ndarray) -> pd.Series:
    values = np.where(ns == _NONE, np.iinfo(np.int64).min, ns).view("datetime64[ns]")
    # naive UTC values read as UTC: a third of tz_localize's time (ten million rows a column)
    return pd.Series(values, dtype="datetime64[ns, UTC]")


def _first(rows: np.ndarray, times: np.ndarray, n: int, values: pd.Series | None = None) -> tuple[np.ndarray, pd.Series | None]:
    """Per row in ``0..n-1``, the earliest time (and the value of that earliest event)."""
    first = np.full(n, _NONE, dtype=np.int64)
    keep = (rows >= 0) & (times != _NONE)
    rows, times = rows[keep], times[keep]
    # Unbuffered minima in one pass: a (row, time) lexsort cost three times as much and grew
    # faster than linearly at millions of cases.
    np.minimum.at(first, rows, times)
    if values is None:
        return first, None
    # The value of each row's earliest event; among events at the same earliest time, the
    # first in input order (what a stable sort by row, then time, would put first).
    earliest = np.flatnonzero(times == first[rows])
    pick = np.full(n, len(rows), dtype=np.int64)
    np.minimum.at(pick, rows[earliest], earliest)
    found = pick < len(rows)
    # a categorical column of n rows: one small code per order, not one string
    categorical = values.astype("category") if not isinstance(values.dtype, pd.CategoricalDtype) else values
    dtype = cast(pd.CategoricalDtype, categorical.dtype)
    codes = np.full(n, -1, dtype=np.int64)
    codes[found] = categorical.cat.codes.to_numpy(dtype=np.int64)[keep][pick[found]]
    return first, pd.Series(pd.Categorical.from_codes(codes, dtype=dtype))


def _last(rows: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """Per row in ``0..n-1``, the latest time (``_NONE``: no event)."""
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    keep = (rows >= 0) & (times != _NONE)
    np.maximum.at(last, rows[keep], times[keep])
    return np.where(last == np.iinfo(np.int64).min, _NONE, last)


def _is_in(series: pd.Series, values: tuple[str, ...]) -> np.ndarray:
    """Text or categorical column equals one of ``values`` (null: False)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        # compare the small integer codes, not one string per row
        positions = [i for i, c in enumerate(series.cat.categories) if c in values]
        return np.isin(series.cat.codes.to_numpy(), positions)
    return series.astype("string").isin(values).to_numpy(dtype=bool, na_value=False)


def _order_rows(orders: pd.Series, *referencing: pd.Series) -> tuple[list[np.ndarray], np.ndarray]:
    """Row of the referenced order for each value of each ``referencing`` id column.

    Ids not in ``orders`` get rows after the orders' (one per distinct id, returned as the
    second item); null ids get -1. Integer codes (the trust builder's, -1 = null) are matched
    through a dense table; strings through an Arrow hash of the referenced ids only (there are
    far fewer cases and reviews than orders, and pandas' own lookups convert Arrow strings one
    by one).
    """
    n_orders = len(orders)
    if pd.api.types.is_integer_dtype(orders.dtype) and all(pd.api.types.is_integer_dtype(r.dtype) for r in referencing):
        codes = [r.to_numpy(dtype=np.int64) for r in referencing]
        own = orders.to_numpy(dtype=np.int64)
        size = int(max([own.max(initial=-1), *(c.max(initial=-1) for c in codes)])) + 1
        row_of = np.full(size, -1, dtype=np.int64)
        row_of[own[own >= 0]] = np.flatnonzero(own >= 0)
        wanted = np.zeros(size, dtype=bool)
        for c in codes:
            wanted[c[c >= 0]] = True
        orphans = np.flatnonzero(wanted & (row_of < 0))
        row_of[orphans] = n_orders + np.arange(len(orphans))
        return [np.where(c >= 0, row_of[np.maximum(c, 0)], -1) for c in codes], orphans
    import pyarrow as pa
    import pyarrow.compute as pc

    def arrow(values: pd.Series) -> Any:
        array = pa.array(values.astype("string").array, type=pa.large_string())
        # an Arrow-backed column (e.g. a log grown by concatenation) comes back chunked
        return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array

    def lookup(values: Any, among: Any) -> tuple[np.ndarray, np.ndarray]:
        slot = pc.index_in(values, value_set=among)
        return slot.is_valid().to_numpy(zero_copy_only=False), slot.fill_null(0).to_numpy(zero_copy_only=False)

    refs = [arrow(r) for r in referencing]
    distinct = pc.unique(pa.concat_arrays(refs).drop_null()) if refs else pa.array([], type=pa.large_string())
    found, slot = lookup(arrow(orders), distinct)
    row_of = np.full(len(distinct), -1, dtype=np.int64)
    row_of[slot[found]] = np.flatnonzero(found)
    orphan = row_of < 0
    row_of[orphan] = n_orders + np.arange(int(orphan.sum()))
    orphans = np.asarray(distinct.filter(pa.array(orphan)).to_pylist(), dtype=object)
    rows = []
    for ref in refs:
        valid, at = lookup(ref, distinct)
        rows.append(np.where(valid, row_of[at], -1))
    return rows, orphans


def order_outcomes(
    events: EventLog | Mapping[str, pd.DataFrame],
    as_of: TimeLike | None = None,
    since: TimeLike | None = None,
    *,
    columns: Collection[str] | None = None,
) -> pd.DataFrame:
    """One row per order: how it turned out, as known before ``as_of``.

    Parameters
    ----------
    events
        A validated event log (string ids, or the integer codes of the trust builder), or
        its tables by name (only ``orders``, ``after_sales`` and ``reviews`` are read).
    as_of
        Only what was known strictly before this time counts (orders placed, cases opened,
        outcomes decided, reviews written before it); ``None``: the whole log.
    since
        Only orders placed, cases opened and reviews written at or after this time count
        (a history window); ``None``: no lower limit.
    columns
        Only these of :data:`OUTCOME_COLUMNS`, in that order (``None``: all). A reader that
        needs a few columns of ten million orders skips the others' work and memory; each
        column is the same as in the full table.

    Returns
    -------
    pandas.DataFrame
        :data:`OUTCOME_COLUMNS`. The first rows are the orders table's, in its order
        (``in_orders`` True); after-sales cases or reviews naming an order id the orders table
        does not hold add one row each at the end (``in_orders`` False, no buyer, merchant or
        time), so a reader joining on order ids sees every recorded outcome. ``cancelled``:
        the order's status is ``cancelled``. ``bad_at``: the earlier of ``bad_case_at`` and
        ``low_rating_at``.

    Examples
    --------
    >>> import pandas as pd
    >>> from trustfeed.features.events import validate_events
    >>> events = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"]}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2"], "user_id": ["u1", "u2"],
    ...                             "merchant_id": ["m1", "m1"], "amount": [10.0, 12.0],
    ...                             "created_at": ["2026-01-02", "2026-01-03"]}),
    ...     "reviews": pd.DataFrame({"review_id": ["r1"], "order_id": ["o2"], "user_id": ["u2"],
    ...                              "created_at": ["2026-01-06"], "rating": [1]}),
    ... })
    >>> outcomes = order_outcomes(events)
    >>> outcomes["bad_at"].dt.strftime("%m-%d").tolist()
    [nan, '01-06']
    >>> went_bad(outcomes).tolist(), went_bad(order_outcomes(events, as_of="2026-01-05")).tolist()
    ([False, True], [False, False])
    """
    wanted = set(OUTCOME_COLUMNS if columns is None else columns)
    if wanted - set(OUTCOME_COLUMNS):
        raise ValueError(f"order_outcomes: unknown columns {sorted(wanted - set(OUTCOME_COLUMNS))}")
    if as_of is not None:
        if not isinstance(events, EventLog):
            raise TypeError("order_outcomes: as_of needs an EventLog (its point-in-time cut)")
        events = events.before(to_utc(as_of))
    start = None if since is None else _ns(pd.Series([to_utc(since)]))[0]
    orders = events["orders"]
    cases = events["after_sales"]
    reviews = events["reviews"]
    if start is not None:
        orders = orders.loc[_ns(orders["created_at"]) >= start]
        cases = cases.loc[(_ns(cases["opened_at"]) >= start) & (_ns(cases["opened_at"]) != _NONE)]
        reviews = reviews.loc[(_ns(reviews["created_at"]) >= start) & (_ns(reviews["created_at"]) != _NONE)]

    n_orders = len(orders)
    (case_rows, review_rows), orphans = _order_rows(orders["order_id"], cases["order_id"], reviews["order_id"])
    n = n_orders + len(orphans)

    def column(name: str) -> pd.Series:
        """An orders column over all rows (null on the rows of unknown orders)."""
        values = orders[name].reset_index(drop=True) if name in orders.columns else pd.Series(pd.NA, index=np.arange(n_orders), dtype="string")
        if name == "order_id":
            extra = pd.Series(orphans, dtype=values.dtype)
        elif len(orphans) and isinstance(values.dtype, np.dtype) and values.dtype.kind in "iu":
            # the trust builder's integer codes: -1 is their null
            extra = pd.Series(np.full(len(orphans), -1), dtype=values.dtype)
        elif len(orphans):
            extra = pd.Series(pd.NA, index=np.arange(len(orphans)), dtype=values.dtype)
        else:
            return values
        return pd.concat([values, extra], ignore_index=True)

    opened = _ns(cases["opened_at"])
    reason = cases["reason"] if "reason" in cases.columns else pd.Series(pd.NA, index=cases.index, dtype="string")
    bad_reason = _is_in(reason, BAD_AFTER_SALES_REASONS)
    written = _ns(reviews["created_at"])

    @cache
    def bad_case() -> tuple[np.ndarray, pd.Series | None]:
        return _first(np.where(bad_reason, case_rows, -1), opened, n, reason)

    @cache
    def rating() -> np.ndarray:
        return pd.to_numeric(reviews["rating"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)

    @cache
    def low_at() -> np.ndarray:
        return _first(np.where(rating() <= LOW_RATING_MAX, review_rows, -1), written, n)[0]

    def cancelled() -> np.ndarray:
        status = orders["status"] if "status" in orders.columns else pd.Series(pd.NA, index=orders.index, dtype="string")
        flags = np.zeros(n, dtype=bool)
        flags[:n_orders] = _is_in(status, ("cancelled",))
        return flags

    @cache
    def case() -> tuple[np.ndarray, pd.Series | None]:
        return _first(case_rows, opened, n, reason)

    def buyer_favor_at() -> pd.Series:
        outcome = cases["outcome"] if "outcome" in cases.columns else pd.Series(pd.NA, index=cases.index, dtype="string")
        return _as_time(_first(np.where(_is_in(outcome, ("buyer_favor",)), case_rows, -1), opened, n)[0])

    def worst_rating() -> np.ndarray:
        # Per order, the lowest rating (NaN: none); unbuffered minima, not a groupby's sort.
        worst = np.full(n, np.inf)
        rated = (review_rows >= 0) & ~np.isnan(rating())
        np.minimum.at(worst, review_rows[rated], rating()[rated])
        worst[worst == np.inf] = np.nan
        return worst

    build: dict[str, Callable[[], Any]] = {
        "order_id": lambda: column("order_id"),
        "user_id": lambda: column("user_id"),
        "merchant_id": lambda: column("merchant_id"),
        "created_at": lambda: _as_time(np.r_[_ns(orders["created_at"]), np.full(len(orphans), _NONE)]),
        "in_orders": lambda: np.arange(n) < n_orders,
        "cancelled": cancelled,
        "case_at": lambda: _as_time(case()[0]),
        "case_reason": lambda: case()[1],
        "bad_case_at": lambda: _as_time(bad_case()[0]),
        "bad_case_reason": lambda: bad_case()[1],
        "last_bad_case_at": lambda: _as_time(_last(np.where(bad_reason, case_rows, -1), opened, n)),
        "counterfeit_case_at": lambda: _as_time(_first(np.where(_is_in(reason, ("counterfeit",)), case_rows, -1), opened, n)[0]),
        "buyer_favor_at": buyer_favor_at,
        "review_at": lambda: _as_time(_first(review_rows, written, n)[0]),
        "worst_rating": worst_rating,
        "low_rating_at": lambda: _as_time(low_at()),
        "bad_at": lambda: _as_time(np.minimum(bad_case()[0], low_at())),
    }
    # Columns as they are: consolidating the nine time columns into one 2-D block copied
    # them all (0.8 GB at ten million orders, the trust build's peak).
    table = pd.DataFrame({name: build[name]() for name in OUTCOME_COLUMNS if name in wanted}, copy=False)
    return table


def went_bad(outcomes: pd.DataFrame, before: TimeLike | pd.Series | None = None, *, low_rating: bool = True) -> np.ndarray:
    """Which orders are bad, counting only outcomes known before ``before``.

    Parameters
    ----------
    outcomes
        Rows of :func:`order_outcomes` (or a frame with its ``*_at`` columns).
    before
        A time, or one time per row (e.g. each impression's label horizon end); ``None``: no
        limit beyond the table's own ``as_of``.
    low_rating
        Count a 1-2 star review (the bad-order rate does); ``False``: only after-sales cases
        for a bad reason.
    """
    column = "bad_at" if low_rating else "bad_case_at"
    times = outcomes[column]
    if before is None:
        return times.notna().to_numpy(dtype=bool)
    limit = before if isinstance(before, pd.Series) else pd.Series(before, index=times.index)
    return (times.reset_index(drop=True) < limit.reset_index(drop=True)).to_numpy(dtype=bool, na_value=False)


def net_value(good_orders: float, bad_orders: float, bad_cost: float) -> float:
    """Net value of a set of orders: ``good_orders - bad_cost x bad_orders``.

    ``bad_cost`` is what one bad order costs in good ones: the policy's ``bad_cost``
    (``PolicyConfig.bad_cost``) so that offline evaluation values orders as the ranking
    policy that served them does.

    Examples
    --------
    >>> net_value(90.0, 10.0, bad_cost=2.0)
    70.0
    """
    return float(good_orders) - float(bad_cost) * float(bad_orders)
