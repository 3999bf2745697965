"""The viewer part of the history tables, advanced day by day instead of rebuilt.

:func:`~trustfeed.features.history.build_context_tables` summarises the whole log up to a
time T. The training frame wants the viewer's history (follows, orders with each merchant,
category taste, overall activity) fresh as of each impression's day, while the merchant trust
snapshot stays weekly; rebuilding the tables every day would cost a full pass over the log per
day. Every count in the viewer tables is a sum of events that each become known at one time:

* a paid order adds one order (user x merchant, user) when it is placed, and one bad order
  when its first bad outcome (a bad after-sales case or a 1-2 star review) is known;
* a click adds one click (user) at the impression's time;
* an order or a click adds its weight to the user's taste for the merchant's category once
  both the event and the merchant's registration are known;
* a follow pair exists from its first follow on;
* a livestream adds one stream (creator x category) when it starts.

The taste (``user_taste``) is not a sum of events (a followed creator's weight is spread over
its streams' categories as they are then), so it is recomputed at each time from the running
counts by the one function that owns it, :func:`~trustfeed.features.history.taste_of`.

:class:`ViewerHistory` collects those events once, sorted by the time they become known, and
:meth:`ViewerHistory.at` adds the ones before each new time to running per-pair counts. The
tables it gives at a time T are the ones ``build_context_tables(events, T)`` gives (a test
checks it value by value), as integer codes into fixed id vocabularies, which
:meth:`~trustfeed.features.context.FeatureAssembler.with_viewer` reads without hashing an id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._columns import _bool, _column, _ids, _object_values, _positions
from .errors import ConfigError
from .events import EventLog, TimeLike, to_utc
from .history import ContextConfig, taste_of
from .outcomes import order_outcomes

__all__ = ["ViewerCursor", "ViewerHistory", "ViewerTables"]

_NONE = np.iinfo(np.int64).max  # no such event / not known yet


@dataclass(frozen=True)
class ViewerTables:
    """The viewer tables as of :attr:`as_of`, as codes into the history's vocabularies.

    Attributes
    ----------
    as_of
        The cut time (UTC nanoseconds since the epoch); only events strictly before it count.
    users, merchants, creators, categories
        The id vocabularies (object arrays), the same for every time of one history; the
        codes below index them. ``user_index`` is a hash index over ``users``.
    follows
        ``(user, creator, followed_at ns)`` of each pair followed before ``as_of``.
    user_merchant
        ``(user, merchant, orders, bad_orders)`` of each pair with a paid order.
    user_category
        ``(user, category, affinity)``: the share of the user's weighted orders and clicks
        that went to each category.
    user_taste
        ``(user, category, taste)``: the user's orders, clicks and followed creators as
        shares per category (:func:`~trustfeed.features.history.taste_of`).
    user_activity
        ``(n_users, 2)``: orders and clicks of every user of the vocabulary (zeros: none yet).
    """

    as_of: int
    users: np.ndarray
    user_index: pd.Index
    merchants: np.ndarray
    creators: np.ndarray
    categories: np.ndarray
    follows: tuple[np.ndarray, np.ndarray, np.ndarray]
    user_merchant: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    user_category: tuple[np.ndarray, np.ndarray, np.ndarray]
    user_taste: tuple[np.ndarray, np.ndarray, np.ndarray]
    user_activity: np.ndarray

    def frames(self) -> dict[str, pd.DataFrame]:
        """The four tables as :class:`~trustfeed.features.history.ContextTables` holds them
        (string ids, sorted by their keys; ``user_activity`` only for users with activity)."""
        users, merchants, creators, categories = self.users, self.merchants, self.creators, self.categories
        fu, fc, ft = self.follows
        follows = pd.DataFrame({
            "user_id": pd.array(users[fu], dtype="string"), "creator_id": pd.array(creators[fc], dtype="string"),
            "followed_at": pd.Series(ft.view("datetime64[ns]")).dt.tz_localize("UTC").array,
        })
        mu, mm, orders, bad = self.user_merchant
        user_merchant = pd.DataFrame({
            "user_id": pd.array(users[mu], dtype="string"), "merchant_id": pd.array(merchants[mm], dtype="string"),
            "orders": orders.astype(np.int64), "bad_orders": bad.astype(np.int64),
        })
        cu, cc, affinity = self.user_category
        user_category = pd.DataFrame({
            "user_id": pd.array(users[cu], dtype="string"), "category": pd.array(categories[cc], dtype="string"),
            "affinity": affinity.astype(np.float64),
        })
        tu, tc, taste = self.user_taste
        user_taste = pd.DataFrame({
            "user_id": pd.array(users[tu], dtype="string"), "category": pd.array(categories[tc], dtype="string"),
            "taste": taste.astype(np.float64),
        })
        active = np.flatnonzero(self.user_activity.sum(axis=1) > 0)
        user_activity = pd.DataFrame({
            "user_id": pd.array(users[active], dtype="string"),
            "orders": self.user_activity[active, 0].astype(np.int64), "clicks": self.user_activity[active, 1].astype(np.int64),
        })
        keys = {"follows": ["user_id", "creator_id"], "user_merchant": ["user_id", "merchant_id"],
                "user_category": ["user_id", "category"], "user_taste": ["user_id", "category"],
                "user_activity": ["user_id"]}
        tables = {"follows": follows, "user_merchant": user_merchant, "user_category": user_category,
                  "user_taste": user_taste, "user_activity": user_activity}
        return {name: frame.sort_values(keys[name], kind="stable").reset_index(drop=True) for name, frame in tables.items()}


def _ns(values: pd.Series) -> np.ndarray:
    """UTC nanoseconds, ``_NONE`` for null."""
    stamps = pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8
    return np.where(stamps == np.iinfo(np.int64).min, _NONE, stamps)


def _codes(values: pd.Series, index: pd.Index) -> np.ndarray:
    """Code of each id in ``index`` (``-1``: null or absent)."""
    return np.asarray(_positions(index, _object_values(_ids(values))), dtype=np.int64)


class _Stream:
    """Events sorted by the time they become known (never changed after construction)."""

    def __init__(self, times: np.ndarray, *columns: np.ndarray) -> None:
        keep = times != _NONE
        order = np.argsort(times[keep], kind="stable")
        self.times = times[keep][order]
        self.columns = tuple(c[keep][order] for c in columns)

    def between(self, start: int, cut: int) -> tuple[int, tuple[np.ndarray, ...]]:
        """The events from position ``start`` on known before ``cut``, and the position after them."""
        end = max(start, int(np.searchsorted(self.times, cut, side="left")))
        return end, tuple(c[start:end] for c in self.columns)


class ViewerHistory:
    """Running per-viewer history of one event log, advanced to ever later times.

    Parameters
    ----------
    events
        A validated event log.
    config
        The :class:`~trustfeed.features.history.ContextConfig` of the tables (its
        ``click_weight``, ``follow_weight``); a ``lookback_days`` window is not supported (events would leave
        the window as well as enter it).

    Examples
    --------
    >>> import pandas as pd
    >>> from trustfeed.features.events import validate_events
    >>> events = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"], "category": ["food"]}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2"], "user_id": ["u1", "u1"], "merchant_id": ["m1", "m1"],
    ...                             "amount": [10.0, 5.0], "created_at": ["2026-01-02", "2026-01-09"]}),
    ... })
    >>> history = ViewerHistory(events)
    >>> history.at("2026-01-05").frames()["user_merchant"][["user_id", "orders"]].values.tolist()
    [['u1', 1]]
    >>> history.at("2026-01-10").frames()["user_merchant"][["user_id", "orders"]].values.tolist()
    [['u1', 2]]
    """

    def __init__(self, events: EventLog, config: ContextConfig | None = None) -> None:
        config = config or ContextConfig()
        if config.lookback_days is not None:
            raise ConfigError("fresh viewer history needs context.lookback_days unset (all history counts)")
        self._click_weight = float(config.click_weight)
        self._follow_weight = float(config.follow_weight)

        # paid orders with the time each becomes known, and when it is known to have gone bad
        outcomes = order_outcomes(events, columns=("user_id", "merchant_id", "created_at", "in_orders", "cancelled", "bad_at"))
        paid = outcomes["in_orders"].to_numpy(dtype=bool) & ~outcomes["cancelled"].to_numpy(dtype=bool)
        outcomes = outcomes.loc[paid]
        order_user, order_merchant = _ids(outcomes["user_id"]), _ids(outcomes["merchant_id"])
        placed = _ns(outcomes["created_at"])
        bad_at = _ns(outcomes["bad_at"])
        bad_known = np.where(bad_at == _NONE, _NONE, np.maximum(placed, bad_at))
        bad_known[placed == _NONE] = _NONE

        impressions = events["impressions"]
        clicked = _bool(_column(impressions, "clicked"))
        clicks = impressions.loc[clicked]
        click_user, click_merchant = _ids(clicks["user_id"]), _ids(clicks["merchant_id"])
        click_at = _ns(clicks["ts"])

        follows = events["follows"]
        merchants = events["merchants"]
        streams = events["livestreams"]
        stream_category = _ids(_column(streams, "category"))

        def vocabulary(*parts: pd.Series) -> np.ndarray:
            joined = pd.concat([p.dropna() for p in parts], ignore_index=True)
            return np.asarray(pd.unique(joined.to_numpy(dtype=object)), dtype=object)

        self.users = vocabulary(order_user, click_user, _ids(follows["user_id"]))
        self.merchants = vocabulary(order_merchant, click_merchant, _ids(merchants["merchant_id"]))
        self.creators = vocabulary(_ids(follows["creator_id"]))
        self.user_index = pd.Index(self.users, dtype=object)
        merchant_index = pd.Index(self.merchants, dtype=object)
        creator_index = pd.Index(self.creators, dtype=object)
        n_users, n_merchants = len(self.users), len(self.merchants)

        # each merchant's category, known from its registration on (merchant ids are unique)
        category = _ids(_column(merchants, "category"))
        self.categories = vocabulary(category, stream_category)
        category_index = pd.Index(self.categories, dtype=object)
        merchant_category = np.full(n_merchants + 1, -1, dtype=np.int64)
        registered = np.full(n_merchants + 1, _NONE, dtype=np.int64)
        rows = _codes(merchants["merchant_id"], merchant_index)
        merchant_category[rows] = _codes(category, category_index)
        registered[rows] = _ns(merchants["registered_at"])
        registered[merchant_category < 0] = _NONE

        ou, om = _codes(order_user, self.user_index), _codes(order_merchant, merchant_index)
        cu, cm = _codes(click_user, self.user_index), _codes(click_merchant, merchant_index)

        # user x merchant pairs with an order: one code each
        pair_of = ou * np.int64(n_merchants + 1) + om
        has_pair = (ou >= 0) & (om >= 0)
        self._um_keys, um_code = np.unique(pair_of[has_pair], return_inverse=True)
        order_pair = np.full(len(ou), -1, dtype=np.int64)
        order_pair[has_pair] = um_code
        self._orders = _Stream(placed, order_pair, ou)
        self._bad = _Stream(np.where(has_pair, bad_known, _NONE), order_pair)
        self._clicks = _Stream(np.where(cu >= 0, click_at, _NONE), cu)

        # user x category weights: orders weigh 1, clicks click_weight, once the merchant's
        # category is known
        n_categories = max(len(self.categories), 1)
        taste_user = np.concatenate([ou, cu])
        taste_merchant = np.concatenate([om, cm])
        taste_at = np.concatenate([placed, click_at])
        taste_weight = np.concatenate([np.ones(len(ou)), np.full(len(cu), self._click_weight)])
        taste_category = merchant_category[taste_merchant]  # -1 (absent merchant) reads the last row: -1
        ok = (taste_user >= 0) & (taste_category >= 0) & (taste_at != _NONE)
        known = np.where(ok, np.maximum(taste_at, registered[taste_merchant]), _NONE)
        uc_of = taste_user * np.int64(n_categories) + taste_category
        self._uc_keys, uc_code = np.unique(uc_of[ok], return_inverse=True)
        taste_pair = np.full(len(taste_user), -1, dtype=np.int64)
        taste_pair[ok] = uc_code
        self._taste = _Stream(known, taste_pair, taste_user, taste_weight)
        self._n_categories = np.int64(n_categories)
        self._n_merchants = np.int64(n_merchants + 1)

        # creator x category stream counts, each stream from its start on (creators of a follow only)
        sc, sk = _codes(streams["creator_id"], creator_index), _codes(stream_category, category_index)
        started = _ns(streams["started_at"])
        ok = (sc >= 0) & (sk >= 0) & (started != _NONE)
        self._cs_keys, cs_code = np.unique(sc[ok] * np.int64(n_categories) + sk[ok], return_inverse=True)
        stream_pair = np.full(len(sc), -1, dtype=np.int64)
        stream_pair[ok] = cs_code
        self._streams = _Stream(np.where(ok, started, _NONE), stream_pair)

        # follow pairs from their first follow on
        fu, fc = _codes(follows["user_id"], self.user_index), _codes(follows["creator_id"], creator_index)
        followed = _ns(follows["followed_at"])
        ok = (fu >= 0) & (fc >= 0) & (followed != _NONE)
        first = pd.DataFrame({"u": fu[ok], "c": fc[ok], "t": followed[ok]}).groupby(["u", "c"], sort=True)["t"].min()
        self._follow_user = first.index.get_level_values("u").to_numpy(dtype=np.int64)
        self._follow_creator = first.index.get_level_values("c").to_numpy(dtype=np.int64)
        self._follow_first = first.to_numpy(dtype=np.int64)

    def cursor(self) -> ViewerCursor:
        """A running state at the start of the log, advanced by :meth:`ViewerCursor.at`.

        The history itself never changes, so one history can feed any number of cursors
        (threads, Dask tasks) at once.
        """
        return ViewerCursor(self)

    def at(self, as_of: TimeLike) -> ViewerTables:
        """The viewer tables as of ``as_of`` from a new cursor (a pass over the events before it)."""
        return self.cursor().at(as_of)


class ViewerCursor:
    """Per-pair counts of one :class:`ViewerHistory`, advanced to ever later times."""

    def __init__(self, history: ViewerHistory) -> None:
        self._history = history
        self._reset()

    def _reset(self) -> None:
        h = self._history
        self._done = [0, 0, 0, 0, 0]  # positions in the orders, bad, clicks, taste and livestream streams
        self._um_orders = np.zeros(len(h._um_keys), dtype=np.int64)
        self._um_bad = np.zeros(len(h._um_keys), dtype=np.int64)
        self._uc_weight = np.zeros(len(h._uc_keys))
        self._uc_events = np.zeros(len(h._uc_keys), dtype=np.int64)
        self._user_weight = np.zeros(len(h.users))
        self._cs_streams = np.zeros(len(h._cs_keys), dtype=np.int64)
        self._activity = np.zeros((len(h.users), 2), dtype=np.int64)
        self._as_of = np.iinfo(np.int64).min

    def at(self, as_of: TimeLike) -> ViewerTables:
        """The viewer tables of the events known strictly before ``as_of``.

        Advancing to a later time adds only the events in between; an earlier time than the
        last one starts again from the beginning of the log.
        """
        h = self._history
        cut = int(to_utc(as_of).value)
        if cut < self._as_of:
            self._reset()
        self._as_of = cut
        done = self._done
        done[0], (pair, user) = h._orders.between(done[0], cut)
        np.add.at(self._um_orders, pair[pair >= 0], 1)
        np.add.at(self._activity[:, 0], user[user >= 0], 1)
        done[1], (pair,) = h._bad.between(done[1], cut)
        np.add.at(self._um_bad, pair, 1)
        done[2], (user,) = h._clicks.between(done[2], cut)
        np.add.at(self._activity[:, 1], user, 1)
        done[3], (pair, user, weight) = h._taste.between(done[3], cut)
        np.add.at(self._uc_weight, pair, weight)
        np.add.at(self._uc_events, pair, 1)
        np.add.at(self._user_weight, user, weight)
        done[4], (pair,) = h._streams.between(done[4], cut)
        np.add.at(self._cs_streams, pair, 1)

        um = np.flatnonzero(self._um_orders)
        uc = np.flatnonzero(self._uc_events)
        uc_user = h._uc_keys[uc] // h._n_categories
        with np.errstate(invalid="ignore", divide="ignore"):
            affinity = self._uc_weight[uc] / self._user_weight[uc_user]
        followed = h._follow_first < cut
        cs = np.flatnonzero(self._cs_streams)
        user_taste = taste_of(
            (uc_user, h._uc_keys[uc] % h._n_categories, self._uc_weight[uc]),
            (h._follow_user[followed], h._follow_creator[followed]),
            (h._cs_keys[cs] // h._n_categories, h._cs_keys[cs] % h._n_categories, self._cs_streams[cs]),
            h._follow_weight,
            int(h._n_categories),
        )
        return ViewerTables(
            as_of=cut,
            users=h.users,
            user_index=h.user_index,
            merchants=h.merchants,
            creators=h.creators,
            categories=h.categories,
            follows=(h._follow_user[followed], h._follow_creator[followed], h._follow_first[followed]),
            user_merchant=(h._um_keys[um] // h._n_merchants, h._um_keys[um] % h._n_merchants,
                           self._um_orders[um].copy(), self._um_bad[um].copy()),
            user_category=(uc_user, h._uc_keys[uc] % h._n_categories, affinity),
            user_taste=user_taste,
            user_activity=self._activity.copy(),
        )
