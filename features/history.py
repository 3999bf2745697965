"""Point-in-time user and engagement history: :func:`build_context_tables`.

The event log summarised as of a time T (only events before it): who follows which creator,
who bought from which merchant and how it went, which product categories a user favours, how
each creator's streams engaged viewers. It is the per-user complement of the per-merchant
trust snapshot of :mod:`trustfeed.features.trust`, and like it is saved as Parquet (no
pickle). The feature assembler (:mod:`trustfeed.features.context`) reads these tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

from ._columns import _bool, _column, _ids, _isin, _object_values, _positions, _ranges
from .config import Config, Constraints, Integer, Real
from .errors import ModelIntegrityError
from .events import EventLog, TimeLike, to_utc
from .io import atomic_dir
from .outcomes import order_outcomes, went_bad

__all__ = ["ContextConfig", "ContextTables", "build_context_tables", "taste_of", "CONTEXT_FORMAT_VERSION"]

CONTEXT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ContextConfig(Config):
    """How user and engagement history is summarised.

    Parameters
    ----------
    lookback_days
        Only history of the last ``lookback_days`` before ``as_of`` counts (``None``: all).
    engagement_prior_strength
        Pseudo-impressions of the Beta prior that shrinks a creator's click-through and
        conversion rates toward the platform rate (few impressions say little).
    click_weight
        Weight of a click relative to an order in the user x category affinity and taste.
    follow_weight
        Weight of a followed creator relative to an order in the user x category taste
        (:func:`taste_of`): whom a viewer follows says what the viewer likes, also for a
        viewer who has not ordered or clicked yet.
    max_position
        Positions beyond this share one click-through prior in the position-normalised
        CTR (clicks over expected clicks).
    """

    lookback_days: float | None = None
    engagement_prior_strength: float = 20.0
    click_weight: float = 0.25
    follow_weight: float = 1.0
    max_position: int = 50

    constraints: ClassVar[Constraints] = {
        "lookback_days": Real(0, strict_low=True, optional=True),
        "engagement_prior_strength": Real(0, strict_low=True),
        "click_weight": Real(0, 1),
        "follow_weight": Real(0, 10),
        "max_position": Integer(low=1),
    }


_TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "follows": ("user_id", "creator_id", "followed_at"),
    "user_merchant": ("user_id", "merchant_id", "orders", "bad_orders"),
    "user_category": ("user_id", "category", "affinity"),
    "user_taste": ("user_id", "category", "taste"),
    "user_activity": ("user_id", "orders", "clicks"),
    "creator_engagement": ("creator_id", "impressions", "clicks", "purchases", "ctr", "cvr", "coec"),
    "merchant_category": ("merchant_id", "category"),
}

# dtypes of the viewer tables' columns when left empty (build_context_tables(viewer=False))
_EMPTY_DTYPES: dict[str, Any] = {
    "user_id": "string", "creator_id": "string", "merchant_id": "string", "category": "string",
    "followed_at": "datetime64[ns, UTC]", "orders": "int64", "bad_orders": "int64", "clicks": "int64",
    "affinity": "float64", "taste": "float64",
}

# tables a context saved before they existed may lack (read back empty)
_OPTIONAL_TABLES = frozenset({"user_taste"})
_VIEWER_TABLES = ("follows", "user_merchant", "user_category", "user_taste", "user_activity")


@dataclass(frozen=True)
class ContextTables:
    """Point-in-time user and engagement history as of ``as_of`` (only events before it).

    Attributes
    ----------
    as_of
        The cut time (UTC).
    follows
        ``user_id, creator_id, followed_at``: the first follow of each pair.
    user_merchant
        ``user_id, merchant_id, orders, bad_orders``: past paid orders of the user with the
        merchant and how many of them went bad (after-sales case for quality /
        not_as_described / counterfeit, or a 1-2 star review, known before ``as_of``).
    user_category
        ``user_id, category, affinity``: the share of the user's orders and (down-weighted)
        clicks that went to merchants of each category.
    user_taste
        ``user_id, category, taste``: the user's orders, clicks and followed creators as
        shares per category (:func:`taste_of`); shares sum to 1 per user listed.
    user_activity
        ``user_id, orders, clicks``: the user's overall activity.
    creator_engagement
        ``creator_id, impressions, clicks, purchases, ctr, cvr, coec``: smoothed
        click-through and conversion rates and clicks over expected clicks (position-normalised).
    merchant_category
        ``merchant_id, category`` of merchants registered before ``as_of``.
    priors
        Platform-wide rates used for unknown creators: ``ctr``, ``cvr``.
    config
        The :class:`ContextConfig` used.
    """

    as_of: pd.Timestamp
    follows: pd.DataFrame
    user_merchant: pd.DataFrame
    user_category: pd.DataFrame
    user_activity: pd.DataFrame
    creator_engagement: pd.DataFrame
    merchant_category: pd.DataFrame
    user_taste: pd.DataFrame = field(default_factory=lambda: _empty_table("user_taste"))
    priors: Mapping[str, float] = field(default_factory=dict)
    config: ContextConfig = field(default_factory=ContextConfig)

    def table(self, name: str) -> pd.DataFrame:
        """One table by name (see :data:`_TABLE_COLUMNS` for the names)."""
        if name not in _TABLE_COLUMNS:
            raise KeyError(f"no context table {name!r}; tables are {', '.join(_TABLE_COLUMNS)}")
        frame: pd.DataFrame = getattr(self, name)
        return frame

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``<table>.parquet`` per table and ``manifest.json`` atomically into ``path``."""
        with atomic_dir(path, "context-tables") as tmp:
            for name in _TABLE_COLUMNS:
                self.table(name).to_parquet(tmp / f"{name}.parquet", index=False)
            manifest = {
                "kind": "trustfeed.context",
                "format_version": CONTEXT_FORMAT_VERSION,
                "as_of": self.as_of.isoformat(),
                "priors": {k: float(v) for k, v in self.priors.items()},
                "config": self.config.to_dict(),
                "row_counts": {name: int(len(self.table(name))) for name in _TABLE_COLUMNS},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ContextTables:
        """Read a directory written by :meth:`save`.

        Raises :class:`ModelIntegrityError` naming the file when a part is missing or of an
        unknown format.
        """
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise ModelIntegrityError(str(manifest_path), "missing context manifest")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("kind") != "trustfeed.context" or manifest.get("format_version") != CONTEXT_FORMAT_VERSION:
            raise ModelIntegrityError(
                str(manifest_path),
                f"expected trustfeed.context format {CONTEXT_FORMAT_VERSION}, got "
                f"{manifest.get('kind')!r} format {manifest.get('format_version')!r}",
            )
        tables: dict[str, pd.DataFrame] = {}
        for name, columns in _TABLE_COLUMNS.items():
            file = root / f"{name}.parquet"
            if not file.is_file() and name in _OPTIONAL_TABLES:
                tables[name] = _empty_table(name)
                continue
            if not file.is_file():
                raise ModelIntegrityError(str(file), "missing context table")
            frame = pd.read_parquet(file)
            absent = [c for c in columns if c not in frame.columns]
            if absent:
                raise ModelIntegrityError(str(file), f"missing columns {absent}")
            tables[name] = frame
        return cls(
            as_of=pd.Timestamp(manifest["as_of"]).tz_convert("UTC"),
            priors=dict(manifest.get("priors", {})),
            config=ContextConfig.from_dict(manifest.get("config", {})),
            **tables,
        )


def build_context_tables(
    events: EventLog, as_of: TimeLike, config: ContextConfig | None = None, *, viewer: bool = True
) -> ContextTables:
    """User and engagement history known strictly before ``as_of``.

    Parameters
    ----------
    events
        A validated :class:`~trustfeed.features.events.EventLog`.
    as_of
        The cut time; rows with event time ``>= as_of`` are ignored (point-in-time rule).
    config
        :class:`ContextConfig`; defaults apply when ``None``.
    viewer
        Build the viewer's tables (``follows``, ``user_merchant``, ``user_category``,
        ``user_taste``, ``user_activity``). ``False`` leaves them empty (with their columns) for a caller
        that reads the viewer's history from elsewhere, as the training frame does with the
        history as of each day (:class:`~trustfeed.features._viewer_history.ViewerHistory`);
        the creators' engagement and the merchants' categories are the same either way.

    Returns
    -------
    ContextTables

    Examples
    --------
    >>> import pandas as pd
    >>> from trustfeed.features.events import validate_events
    >>> events = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": ["2026-01-01"],
    ...                                "category": ["beauty"]}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2"], "user_id": ["u1", "u1"],
    ...                             "merchant_id": ["m1", "m1"], "amount": [10.0, 5.0],
    ...                             "created_at": ["2026-01-02", "2026-01-09"]}),
    ... })
    >>> context = build_context_tables(events, "2026-01-05")
    >>> context.user_merchant[["user_id", "merchant_id", "orders"]].values.tolist()
    [['u1', 'm1', 1]]
    """
    config = config or ContextConfig()
    cut = to_utc(as_of)
    known = events.before(cut)
    start = None if config.lookback_days is None else cut - pd.Timedelta(days=config.lookback_days)

    def window(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
        times = frame[time_column]
        keep = (times < cut).to_numpy(dtype=bool, na_value=False)
        if start is not None:
            keep &= (times >= start).to_numpy(dtype=bool, na_value=False)
        return frame.loc[keep]

    merchants = known["merchants"]
    merchant_category = pd.DataFrame(
        {"merchant_id": _ids(merchants["merchant_id"]), "category": _ids(_column(merchants, "category"))}
    ).dropna(subset=["category"]).reset_index(drop=True)

    # creator engagement from the impressions (needs the paid orders' ids only)
    impressions = window(known["impressions"], "ts")
    clicked = _bool(_column(impressions, "clicked"))
    creator_engagement, global_ctr, global_cvr = _creator_engagement(impressions, clicked, known, config)
    if not viewer:
        empty = {name: _empty_table(name) for name in _VIEWER_TABLES}
        return ContextTables(
            as_of=cut, creator_engagement=creator_engagement, merchant_category=merchant_category,
            priors={"ctr": global_ctr, "cvr": global_cvr}, config=config, **empty,
        )

    # follows: first follow of each (user, creator) pair
    follow_events = window(known["follows"], "followed_at")
    # as_index=False makes the grouped reduction a DataFrame; pandas-stubs say Series
    follows = cast(
        pd.DataFrame,
        pd.DataFrame(
            {
                "user_id": _ids(follow_events["user_id"]),
                "creator_id": _ids(follow_events["creator_id"]),
                "followed_at": follow_events["followed_at"],
            }
        )
        .groupby(["user_id", "creator_id"], as_index=False, sort=True)["followed_at"]
        .min(),
    )

    # paid orders and which of them went bad (as known before the cut, within the window)
    outcomes = order_outcomes(known, since=start)
    paid = outcomes.loc[outcomes["in_orders"].to_numpy(dtype=bool) & ~outcomes["cancelled"].to_numpy(dtype=bool)]
    order_frame = pd.DataFrame(
        {
            "user_id": _ids(paid["user_id"]),
            "merchant_id": _ids(paid["merchant_id"]),
            "bad": went_bad(paid),
        }
    )
    user_merchant = (
        order_frame.groupby(["user_id", "merchant_id"], as_index=False, sort=True)
        .agg(orders=("bad", "size"), bad_orders=("bad", "sum"))
        .astype({"orders": "int64", "bad_orders": "int64"})
    )

    # user x category affinity from orders and (down-weighted) clicks
    category_of = pd.Series(
        merchant_category["category"].to_numpy(), index=pd.Index(merchant_category["merchant_id"].to_numpy())
    )
    category_of = category_of[~category_of.index.duplicated()]
    interactions = pd.concat(
        [
            pd.DataFrame({"user_id": order_frame["user_id"], "merchant_id": order_frame["merchant_id"], "w": 1.0}),
            pd.DataFrame(
                {
                    "user_id": _ids(impressions.loc[clicked, "user_id"]),
                    "merchant_id": _ids(impressions.loc[clicked, "merchant_id"]),
                    "w": config.click_weight,
                }
            ),
        ],
        ignore_index=True,
    )
    codes = _positions(category_of.index, _object_values(interactions["merchant_id"]))
    # a dataset without merchant categories has no affinity to compute
    named = category_of.to_numpy(dtype=object) if len(category_of) else np.array([None], dtype=object)
    interactions["category"] = pd.array(np.where(codes >= 0, named[np.maximum(codes, 0)], np.array(None, dtype=object)), dtype="string")
    weighted = interactions.dropna(subset=["category"])
    # as_index=False: a DataFrame (see follows above)
    user_category = cast(pd.DataFrame, weighted.groupby(["user_id", "category"], as_index=False, sort=True)["w"].sum())
    totals = user_category.groupby("user_id")["w"].transform("sum")
    user_category["affinity"] = (user_category["w"] / totals).astype("float64")

    # user x category taste: the same weights plus the followed creators' streams
    streams = window(known["livestreams"], "started_at")
    user_taste = _taste_table(user_category, follows, streams, config.follow_weight)
    user_category = user_category.drop(columns="w")

    user_activity = (
        pd.concat(
            [
                order_frame[["user_id"]].assign(orders=1, clicks=0),
                pd.DataFrame({"user_id": _ids(impressions.loc[clicked, "user_id"]), "orders": 0, "clicks": 1}),
            ],
            ignore_index=True,
        )
        .groupby("user_id", as_index=False, sort=True)[["orders", "clicks"]]
        .sum()
        .astype({"orders": "int64", "clicks": "int64"})
    )

    return ContextTables(
        as_of=cut,
        follows=follows.reset_index(drop=True),
        user_merchant=user_merchant.reset_index(drop=True),
        user_category=user_category.reset_index(drop=True),
        user_taste=user_taste,
        user_activity=user_activity.reset_index(drop=True),
        creator_engagement=creator_engagement.reset_index(drop=True),
        merchant_category=merchant_category,
        priors={"ctr": global_ctr, "cvr": global_cvr},
        config=config,
    )


def _empty_table(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=_EMPTY_DTYPES[c]) for c in _TABLE_COLUMNS[name]})


def taste_of(
    interest: tuple[np.ndarray, np.ndarray, np.ndarray],
    follows: tuple[np.ndarray, np.ndarray],
    stream_counts: tuple[np.ndarray, np.ndarray, np.ndarray],
    follow_weight: float,
    n_categories: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The viewers' taste: their share of weight per category, from what they did and whom they follow.

    The one computation of the ``user_taste`` table, used by :func:`build_context_tables` and
    by the day-by-day :class:`~trustfeed.features._viewer_history.ViewerHistory`. Everything
    is in integer codes (users, creators, categories ``0 .. n_categories - 1``).

    Parameters
    ----------
    interest
        ``(user, category, weight)``: the viewer's weighted orders and clicks per category
        (orders 1, clicks ``click_weight``), at most one row per pair.
    follows
        ``(user, creator)``: the pairs followed before the cut, one row per pair.
    stream_counts
        ``(creator, category, streams)``: each creator's livestreams started before the cut,
        by the stream's category, at most one row per pair.
    follow_weight
        Weight of one followed creator, spread over the categories of its streams in
        proportion to their number. A creator without a stream (with a category) yet says
        nothing about a category: its follow adds no weight anywhere.
    n_categories
        Number of category codes.

    Returns
    -------
    tuple of numpy.ndarray
        ``(user, category, taste)`` sorted by user then category: every pair with positive
        weight, ``taste`` the pair's weight over the user's total (sums to 1 per user).

    Examples
    --------
    >>> import numpy as np
    >>> user, category, taste = taste_of(
    ...     (np.array([0]), np.array([1]), np.array([1.0])),      # user 0 bought in category 1
    ...     (np.array([0, 1]), np.array([5, 5])),                 # users 0 and 1 follow creator 5
    ...     (np.array([5, 5]), np.array([0, 1]), np.array([3, 1])),  # 3 streams in 0, 1 in 1
    ...     follow_weight=1.0, n_categories=2)
    >>> user.tolist(), category.tolist(), taste.round(3).tolist()
    ([0, 0, 1, 1], [0, 1, 0, 1], [0.375, 0.625, 0.75, 0.25])
    """
    i_user, i_category, i_weight = (np.asarray(a) for a in interest)
    f_user, f_creator = (np.asarray(a, dtype=np.int64) for a in follows)
    s_creator, s_category, s_count = (np.asarray(a) for a in stream_counts)
    width = np.int64(max(n_categories, 1))
    # each creator's streams as shares per category, rows grouped by creator
    s_creator = s_creator.astype(np.int64)
    keep = (s_count > 0) & (s_category >= 0) & (s_creator >= 0)
    s_creator, s_category, s_count = s_creator[keep], s_category[keep].astype(np.int64), s_count[keep].astype(np.float64)
    order = np.lexsort((s_category, s_creator))
    s_creator, s_category, s_count = s_creator[order], s_category[order], s_count[order]
    creators, start, n_rows = np.unique(s_creator, return_index=True, return_counts=True)
    totals = np.add.reduceat(s_count, start) if len(start) else np.zeros(0)
    share = s_count / np.repeat(totals, n_rows)
    # each follow expanded to one row per category of its creator's streams
    at = np.searchsorted(creators, f_creator)
    found = at < len(creators)
    found[found] = creators[at[found]] == f_creator[found]
    at, follower = at[found], f_user[found]
    repeats = n_rows[at]
    rows = _ranges(start[at], repeats)
    user = np.concatenate([i_user.astype(np.int64), np.repeat(follower, repeats)])
    category = np.concatenate([i_category.astype(np.int64), s_category[rows]])
    weight = np.concatenate([i_weight.astype(np.float64), float(follow_weight) * share[rows]])
    keep = (weight > 0) & (user >= 0) & (category >= 0)
    keys, code = np.unique(user[keep] * width + category[keep], return_inverse=True)
    pair_weight = np.bincount(code, weights=weight[keep], minlength=len(keys))
    pair_user = keys // width
    users, user_code = np.unique(pair_user, return_inverse=True)
    user_total = np.bincount(user_code, weights=pair_weight, minlength=len(users))
    return pair_user, keys % width, pair_weight / user_total[user_code]


def _taste_table(weights: pd.DataFrame, follows: pd.DataFrame, streams: pd.DataFrame, follow_weight: float) -> pd.DataFrame:
    """``user_taste`` of string-id tables: ``weights`` (user_id, category, w), ``follows`` and ``streams`` before the cut."""
    stream_category = _ids(_column(streams, "category"))
    users = pd.Index(pd.concat([weights["user_id"], follows["user_id"]], ignore_index=True).dropna().unique(), dtype=object)
    categories = pd.Index(sorted(pd.concat([weights["category"], stream_category], ignore_index=True).dropna().unique()),
                          dtype=object)
    creators = pd.Index(_ids(follows["creator_id"]).dropna().unique(), dtype=object)

    def codes(values: pd.Series, index: pd.Index) -> np.ndarray:
        return np.asarray(_positions(index, _object_values(_ids(values))), dtype=np.int64)

    stream_creator, stream_code = codes(streams["creator_id"], creators), codes(stream_category, categories)
    ok = (stream_creator >= 0) & (stream_code >= 0)
    pairs, counts = np.unique(stream_creator[ok] * np.int64(max(len(categories), 1)) + stream_code[ok], return_counts=True)
    width = np.int64(max(len(categories), 1))
    user, category, taste = taste_of(
        (codes(weights["user_id"], users), codes(weights["category"], categories), weights["w"].to_numpy(dtype=np.float64)),
        (codes(follows["user_id"], users), codes(follows["creator_id"], creators)),
        (pairs // width, pairs % width, counts),
        follow_weight,
        len(categories),
    )
    table = pd.DataFrame({
        "user_id": pd.array(users.to_numpy()[user] if len(user) else [], dtype="string"),
        "category": pd.array(categories.to_numpy()[category] if len(category) else [], dtype="string"),
        "taste": taste.astype("float64"),
    })
    return table.sort_values(["user_id", "category"], kind="stable").reset_index(drop=True)


def _creator_engagement(
    impressions: pd.DataFrame, clicked: np.ndarray, known: EventLog, config: ContextConfig
) -> tuple[pd.DataFrame, float, float]:
    """Each creator's impressions, clicks, purchases and smoothed rates; the platform's CTR and CVR."""
    purchased = _bool(_column(impressions, "purchased"))
    if "order_id" in impressions.columns and purchased.any():
        # an impression just before the cut may lead to an order just after it: count a
        # purchase only once its order exists (orders here are already cut at as_of)
        placed = _isin(impressions["order_id"], known["orders"]["order_id"])
        linked = _ids(impressions["order_id"]).notna().to_numpy(dtype=bool)
        purchased &= placed | ~linked
    position = impressions["position"].to_numpy(dtype="float64", na_value=np.nan)
    n_impressions = len(impressions)
    global_ctr = float(clicked.mean()) if n_impressions else 0.0
    global_cvr = float(purchased.mean()) if n_impressions else 0.0
    # Click-through by position: the expected clicks of each impression under the logging
    # policy's position bias, so a creator always shown on top is not credited for the slot.
    slot = np.clip(np.nan_to_num(position, nan=config.max_position), 1, config.max_position).astype(np.int64)
    m = config.engagement_prior_strength
    slot_impr = np.bincount(slot, minlength=config.max_position + 1).astype(float)
    slot_clicks = np.bincount(slot, weights=clicked.astype(float), minlength=config.max_position + 1)
    slot_ctr = (slot_clicks + m * global_ctr) / (slot_impr + m)
    engagement = pd.DataFrame(
        {
            "creator_id": _ids(impressions["creator_id"]),
            "clicked": clicked.astype("int64"),
            "purchased": purchased.astype("int64"),
            "expected_clicks": slot_ctr[slot],
        }
    )
    creator_engagement = engagement.groupby("creator_id", as_index=False, sort=True).agg(
        impressions=("clicked", "size"),
        clicks=("clicked", "sum"),
        purchases=("purchased", "sum"),
        expected_clicks=("expected_clicks", "sum"),
    )
    creator_engagement["ctr"] = (creator_engagement["clicks"] + m * global_ctr) / (creator_engagement["impressions"] + m)
    creator_engagement["cvr"] = (creator_engagement["purchases"] + m * global_cvr) / (
        creator_engagement["impressions"] + m
    )
    creator_engagement["coec"] = (creator_engagement["clicks"] + m * global_ctr) / (
        creator_engagement["expected_clicks"] + m * global_ctr
    ).where(lambda s: s > 0, 1.0)
    creator_engagement = creator_engagement.drop(columns="expected_clicks").astype(
        {"impressions": "int64", "clicks": "int64", "purchases": "int64"}
    )
    return creator_engagement, global_ctr, global_cvr
