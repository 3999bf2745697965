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

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .events import EventLog, to_utc

__all__ = ["BAD_AFTER_SALES_REASONS", "LOW_RATING_MAX", "OUTCOME_COLUMNS", "order_outcomes", "went_bad"]

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
    "counterfeit_case_at",
    "buyer_favor_at",
    "review_at",
    "worst_rating",
    "low_rating_at",
    "bad_at",
)
"""Columns of :func:`order_outcomes`; every ``*_at`` is the *first* such event (NaT: none)."""

_NONE = np.iinfo(np.int64).max  # "no such event" while taking minima over int64 nanoseconds


def _ns(times: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch, ``_NONE`` for null."""
    stamps = pd.to_datetime(times, utc=True)
    return np.where(stamps.isna().to_numpy(), _NONE, stamps.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64(0, "ns")).view("int64"))


def _as_time(ns: np.ndarray) -> pd.Series:
    values = np.where(ns == _NONE, np.iinfo(np.int64).min, ns).view("datetime64[ns]")
    return pd.Series(pd.DatetimeIndex(values).tz_localize("UTC"))


def _first(rows: np.ndarray, times: np.ndarray, n: int, values: pd.Series | None = None) -> tuple[np.ndarray, pd.Series | None]:
    """Per row in ``0..n-1``, the earliest time (and the value of that earliest event)."""
    first = np.full(n, _NONE, dtype=np.int64)
    keep = (rows >= 0) & (times != _NONE)
    rows, times = rows[keep], times[keep]
    order = np.lexsort((times, rows))  # by row, then time: the first of each row leads
    rows, times = rows[order], times[order]
    lead = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, dtype=bool)
    first[rows[lead]] = times[lead]
    if values is None:
        return first, None
    picked = pd.Series(pd.NA, index=np.arange(n), dtype="string")
    chosen = values.astype("string").to_numpy()[keep][order][lead]
    picked.iloc[rows[lead]] = chosen
    return first, picked


def _is_in(series: pd.Series, values: tuple[str, ...]) -> np.ndarray:
    return series.astype("string").isin(values).to_numpy(dtype=bool, na_value=False)


def order_outcomes(events: EventLog | Mapping[str, pd.DataFrame], as_of: Any = None, since: Any = None) -> pd.DataFrame:
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

    known = pd.Index(orders["order_id"])
    referenced = pd.concat([cases["order_id"], reviews["order_id"]], ignore_index=True).dropna()
    orphans = pd.unique(referenced[known.get_indexer(referenced) < 0])
    ids = known.append(pd.Index(orphans, dtype=known.dtype))
    n = len(ids)
    n_orders = len(orders)

    def column(frame: pd.DataFrame, name: str, dtype: Any) -> pd.Series:
        values = frame[name] if name in frame.columns else pd.Series(pd.NA, index=frame.index)
        padded = pd.concat([values.reset_index(drop=True), pd.Series(pd.NA, index=np.arange(len(orphans)))], ignore_index=True)
        return padded.astype(dtype) if dtype is not None else padded

    status = orders["status"] if "status" in orders.columns else pd.Series(pd.NA, index=orders.index, dtype="string")
    cancelled = np.zeros(n, dtype=bool)
    cancelled[:n_orders] = _is_in(status, ("cancelled",))

    case_rows = ids.get_indexer(cases["order_id"]) if len(cases) else np.zeros(0, dtype=np.int64)
    opened = _ns(cases["opened_at"])
    reason = cases["reason"] if "reason" in cases.columns else pd.Series(pd.NA, index=cases.index, dtype="string")
    outcome = cases["outcome"] if "outcome" in cases.columns else pd.Series(pd.NA, index=cases.index, dtype="string")
    bad_reason = _is_in(reason, BAD_AFTER_SALES_REASONS)
    case_at, case_reason = _first(case_rows, opened, n, reason)
    bad_case_at, bad_case_reason = _first(np.where(bad_reason, case_rows, -1), opened, n, reason)
    counterfeit_at, _ = _first(np.where(_is_in(reason, ("counterfeit",)), case_rows, -1), opened, n)
    favor_at, _ = _first(np.where(_is_in(outcome, ("buyer_favor",)), case_rows, -1), opened, n)

    review_rows = ids.get_indexer(reviews["order_id"]) if len(reviews) else np.zeros(0, dtype=np.int64)
    written = _ns(reviews["created_at"])
    rating = pd.to_numeric(reviews["rating"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    review_at, _ = _first(review_rows, written, n)
    low_at, _ = _first(np.where(rating <= LOW_RATING_MAX, review_rows, -1), written, n)
    worst = pd.Series(rating).groupby(review_rows).min() if len(reviews) else pd.Series(dtype="float64")
    worst_rating = np.full(n, np.nan)
    present = worst.index.to_numpy() >= 0
    worst_rating[worst.index.to_numpy()[present]] = worst.to_numpy()[present]

    table = pd.DataFrame(
        {
            "order_id": pd.Series(ids),
            "user_id": column(orders, "user_id", None),
            "merchant_id": column(orders, "merchant_id", None),
            "created_at": _as_time(np.r_[_ns(orders["created_at"]), np.full(len(orphans), _NONE)]),
            "in_orders": np.arange(n) < n_orders,
            "cancelled": cancelled,
            "case_at": _as_time(case_at),
            "case_reason": case_reason,
            "bad_case_at": _as_time(bad_case_at),
            "bad_case_reason": bad_case_reason,
            "counterfeit_case_at": _as_time(counterfeit_at),
            "buyer_favor_at": _as_time(favor_at),
            "review_at": _as_time(review_at),
            "worst_rating": worst_rating,
            "low_rating_at": _as_time(low_at),
            "bad_at": _as_time(np.minimum(bad_case_at, low_at)),
        }
    )
    for name in ("user_id", "merchant_id"):
        if len(orders) and table[name].dtype == object:
            table[name] = table[name].astype(orders[name].dtype)
    return table


def went_bad(outcomes: pd.DataFrame, before: Any = None, *, low_rating: bool = True) -> np.ndarray:
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
