"""Per-request feature assembly: the one feature code path of training and serving.

Two pieces:

* :func:`build_context_tables` turns the event log into point-in-time *user and engagement
  history* as of a time T (who follows which creator, who bought from which merchant and how
  it went, which product categories a user favours, how each creator's streams engaged
  viewers). It is the per-user complement of the per-merchant trust snapshot of
  :mod:`trustfeed.features.trust`, and like it is saved as Parquet (no pickle).
* :class:`FeatureAssembler` joins a trust snapshot and context tables onto candidates
  ``(user_id, ts, stream_id, creator_id, merchant_id, ...)`` and returns a float matrix in a
  fixed feature order. Serving calls :meth:`FeatureAssembler.transform` once per request;
  training calls the very same method over millions of logged impressions. All lookups are
  precomputed in ``__init__`` as numpy arrays plus hash indexes, so a request costs a few
  vectorised gathers and no DataFrame joins.

The feature order, the categorical codes and the monotone directions form the *schema*
(:meth:`FeatureAssembler.schema`), which is saved beside the model; an assembler built with
``schema=`` reproduces exactly that feature layout on any later snapshot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np
import pandas as pd

from .config import Config, Constraints, Integer, Real
from .errors import ConfigError, ModelIntegrityError, SchemaError
from .events import EventLog, to_utc
from .io import atomic_dir
from .outcomes import BAD_AFTER_SALES_REASONS, order_outcomes, went_bad

__all__ = [
    "ContextConfig",
    "ContextTables",
    "FeatureAssembler",
    "MerchantStatus",
    "build_context_tables",
    "BAD_AFTER_SALES_REASONS",
]

CONTEXT_FORMAT_VERSION = 1
SCHEMA_FORMAT_VERSION = 1


_NS_PER_HOUR = 3_600 * 1_000_000_000

# Columns of a snapshot table that are identifiers or text, never features.
_NON_FEATURE_COLUMNS = frozenset(
    {"merchant_id", "creator_id", "entity_id", "category", "top_reasons", "as_of", "user_id", "stream_id"}
)


# --------------------------------------------------------------------------- context tables


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
        Weight of a click relative to an order in the user x category affinity.
    max_position
        Positions beyond this share one click-through prior in the position-normalised
        CTR (clicks over expected clicks).
    """

    lookback_days: float | None = None
    engagement_prior_strength: float = 20.0
    click_weight: float = 0.25
    max_position: int = 50

    constraints: ClassVar[Constraints] = {
        "lookback_days": Real(0, strict_low=True, optional=True),
        "engagement_prior_strength": Real(0, strict_low=True),
        "click_weight": Real(0, 1),
        "max_position": Integer(low=1),
    }


_TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "follows": ("user_id", "creator_id", "followed_at"),
    "user_merchant": ("user_id", "merchant_id", "orders", "bad_orders"),
    "user_category": ("user_id", "category", "affinity"),
    "user_activity": ("user_id", "orders", "clicks"),
    "creator_engagement": ("creator_id", "impressions", "clicks", "purchases", "ctr", "cvr", "coec"),
    "merchant_category": ("merchant_id", "category"),
}


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


def _column(frame: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """``frame[name]``, or a column of ``default`` when an optional column is absent."""
    if name in frame.columns:
        return frame[name]
    return pd.Series(default, index=frame.index, dtype=object if default is None else None)


def _bool(series: pd.Series) -> np.ndarray:
    # copy=True: without nulls, pandas may hand back a view of the event table's own
    # buffer, and callers update the result in place
    return series.astype("boolean").fillna(False).to_numpy(dtype=bool, copy=True)


def _ids(series: pd.Series) -> pd.Series:
    return series.astype("string")


def _isin(values: pd.Series, among: pd.Series | pd.Index) -> np.ndarray:
    """``values.isin(among)`` for id columns, hashed by Arrow (missing values never match).

    pandas' own ``isin`` on Arrow-backed strings converts ``among`` one element at a time
    (seconds for the hundreds of thousands of order ids of a snapshot).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(_ids(pd.Series(among)).dropna().array, type=pa.large_string())
    found = pc.is_in(pa.array(_ids(values).array, type=pa.large_string()), value_set=wanted, skip_nulls=True)
    return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)


def _object_values(series: pd.Series) -> np.ndarray:
    """Values as an object array with missing values as ``None`` (unknown to the id lookups)."""
    # pandas accepts na_value=None; pandas-stubs' Scalar type leaves None out
    return series.to_numpy(dtype=object, na_value=None)  # type: ignore[call-overload]


def _positions(index: pd.Index, values: np.ndarray) -> np.ndarray:
    """``index.get_indexer(values)``: position of each value, ``-1`` when absent."""
    # get_indexer takes any array-like at runtime; pandas-stubs accept only an Index
    return index.get_indexer(values)  # type: ignore[arg-type]


def build_context_tables(events: EventLog, as_of: Any, config: ContextConfig | None = None) -> ContextTables:
    """User and engagement history known strictly before ``as_of``.

    Parameters
    ----------
    events
        A validated :class:`~trustfeed.features.events.EventLog`.
    as_of
        The cut time; rows with event time ``>= as_of`` are ignored (point-in-time rule).
    config
        :class:`ContextConfig`; defaults apply when ``None``.

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

    # impressions: creator engagement and user clicks
    impressions = window(known["impressions"], "ts")
    clicked = _bool(_column(impressions, "clicked"))
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
        user_activity=user_activity.reset_index(drop=True),
        creator_engagement=creator_engagement.reset_index(drop=True),
        merchant_category=merchant_category,
        priors={"ctr": global_ctr, "cvr": global_cvr},
        config=config,
    )


# --------------------------------------------------------------------------- feature assembly


class MerchantStatus(NamedTuple):
    """What the policy needs to know about each candidate's merchant (aligned to candidates)."""

    trust: np.ndarray
    """``trust_index`` in [0, 1]; the snapshot median for unknown merchants."""
    banned_merchant: np.ndarray
    """The merchant account is banned."""
    banned_entity: np.ndarray
    """Another account of the same legal entity is banned (the merchant itself is not)."""
    known: np.ndarray
    """The merchant is in the snapshot."""
    guarantees: np.ndarray
    """Buyer-protection ("trusted purchase") benefits the merchant offers (0 when unknown)."""


# Feature sources: where a feature's value comes from.
#   merchant:<col>          numeric column of snapshot.merchants (cold start: see _source_matrix)
#   creator:<col>           numeric column of snapshot.creators (cold start: likewise)
#   merchant_known / creator_known   1 when the id is in the snapshot
#   merchant_category       categorical code of the merchant's category (schema codes)
#   engagement:<col>        context.creator_engagement column (cold start: platform prior)
#   user_merchant:<col>     past orders / bad orders of the user with the merchant (0 if none)
#   user_follows            the user followed the creator before the request time
#   user_category           user's affinity to the merchant's category (0 if none)
#   user_activity:<col>     the user's overall past orders / clicks
#   hour                    hour of day (UTC) of the request
#   live:<field>            an optional live-context field of the candidate (NaN if absent)
_CONTEXT_PLAN: tuple[tuple[str, str], ...] = (
    ("creator_coec", "engagement:coec"),
    ("creator_log_impressions", "engagement:log_impressions"),
    ("user_follows_creator", "user_follows"),
    ("user_category_affinity", "user_category"),
    ("user_merchant_orders", "user_merchant:orders"),
    ("user_merchant_bad_orders", "user_merchant:bad_orders"),
    ("user_orders", "user_activity:orders"),
    ("user_clicks", "user_activity:clicks"),
    ("hour_of_day", "hour"),
)
# Creator engagement from the context, used only when the snapshot has no such column.
_ENGAGEMENT_FALLBACK: tuple[tuple[str, str, str], ...] = (
    ("creator_ctr", "engagement:ctr", "ctr"),
    ("creator_conversion_rate", "engagement:cvr", "conversion_rate"),
)

MERCHANT_COLUMNS: tuple[str, ...] = (
    "trust_index",
    "expected_bad_rate",
    "account_age_days",
    "n_orders",
    "n_orders_7d",
    "n_orders_30d",
    "gmv",
    "bad_case_rate",
    "counterfeit_case_rate",
    "low_rating_rate",
    "buyer_favor_rate",
    "cancellation_rate",
    "repurchase_rate",
    "late_shipment_rate",
    "brushing_score",
    "counterfeit_report_rate",
    "violation_severity",
    "inherited_violation_severity",
    "nps",
    "n_benefits",
    "inherited_record",
    "cold_start",
)
"""Snapshot merchant columns used as features when present (besides every ``trust_*``)."""

CREATOR_COLUMNS: tuple[str, ...] = (
    "trust_host",
    "followers",
    "popularity",
    "ctr",
    "conversion_rate",
    "host_report_rate",
    "host_violation_severity",
    "n_streams",
    "n_impressions",
    "cold_start",
)
"""Snapshot creator columns used as features when present (besides every ``trust_*``)."""

# Monotone directions beyond the +1 of every trust_* column: a higher expected bad-order
# rate never raises the score.
_DIRECTIONS = {"expected_bad_rate": -1}


def _numeric_columns(frame: pd.DataFrame) -> list[str]:
    columns = []
    for name in frame.columns:
        if name in _NON_FEATURE_COLUMNS:
            continue
        dtype = frame[name].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            columns.append(str(name))
    return columns


def _is_trust_signal(column: str) -> bool:
    """Trust signals get a +1 monotone constraint: more trust never lowers the score."""
    return column == "trust_index" or column.startswith("trust_")


def _direction(column: str) -> int:
    return 1 if _is_trust_signal(column) else _DIRECTIONS.get(column, 0)


def _pick_columns(frame: pd.DataFrame, wanted: tuple[str, ...] | None) -> list[str]:
    """Numeric snapshot columns to use: ``wanted`` (default list) plus every ``trust_*``."""
    numeric = _numeric_columns(frame)
    if wanted is None:
        return numeric
    chosen = [c for c in numeric if _is_trust_signal(c)]
    chosen += [c for c in wanted if c in numeric and c not in chosen]
    return chosen


def _as_float(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(dtype="float64", na_value=np.nan)


def _index(values: Any) -> pd.Index:
    """A hash index over string ids (object dtype: fastest for per-request lookups)."""
    return pd.Index(np.asarray(_object_values(pd.Series(values, dtype="string"))), dtype=object)


def _lookup_ids(index: pd.Index, values: Any) -> np.ndarray:
    """Position of each id in ``index`` (``-1`` when unknown)."""
    if isinstance(values, pd.Series):
        values = _object_values(values)
    array = np.asarray(values, dtype=object)
    engine = getattr(index, "_engine", None)
    if engine is not None and index.dtype == object and array.ndim == 1:
        # The index's hash table directly: pandas' public get_indexer spends most of a
        # 500-candidate lookup validating and wrapping its argument. Any surprise from this
        # internal path falls back to the public one.
        try:
            return np.asarray(engine.get_indexer(array), dtype=np.int64)
        except (AttributeError, TypeError, ValueError):
            pass
    # An explicit object Index as the target skips pandas' dtype inference.
    target = pd.Index(array, dtype=object, copy=False)
    return np.asarray(index.get_indexer(target), dtype=np.int64)


class _PairTable:
    """Values keyed by a pair of integer codes, looked up by binary search on packed keys.

    ``values`` ends with one extra row, ``default``: the value of an absent pair. Lookups
    return ``-1`` for an absent pair, so ``values[rows]`` needs no mask. ``keys`` ends with
    a sentinel larger than any packed key, so a search never runs off the end.
    """

    def __init__(self, left: np.ndarray, right: np.ndarray, width: int, values: np.ndarray, default: Any) -> None:
        valid = (left >= 0) & (right >= 0)
        keys = left[valid].astype(np.int64) * np.int64(max(width, 1)) + right[valid].astype(np.int64)
        order = np.argsort(keys, kind="stable")
        self.size = int(keys.size)
        self.keys = np.append(keys[order], np.iinfo(np.int64).max)
        present = values[valid][order]
        self.values = np.concatenate([present, np.full((1, *present.shape[1:]), default, dtype=present.dtype)])
        self.width = np.int64(max(width, 1))

    def find(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Row of each pair in ``values``, ``-1`` when absent."""
        if self.size == 0:
            return np.full(len(left), -1, dtype=np.int64)
        query = left.astype(np.int64) * self.width + right.astype(np.int64)
        pos = self.keys.searchsorted(query)  # the sentinel keeps pos within keys
        # a negative code would alias another pair's packed key: it never matches
        hit = (self.keys[pos] == query) & (left >= 0) & (right >= 0)
        return np.where(hit, pos, -1)

    def find_one(self, left: int, right: np.ndarray) -> np.ndarray:
        """:meth:`find` for one ``left`` code (one user): search only that user's key range."""
        if left < 0 or self.size == 0:
            return np.full(len(right), -1, dtype=np.int64)
        base = np.int64(left) * self.width
        lo, hi = self.keys.searchsorted((base, base + self.width)).tolist()
        if lo == hi:  # the user has no pairs in this table
            return np.full(len(right), -1, dtype=np.int64)
        # The user's keys plus the next one (another user's or the sentinel, both at least
        # base + width). A query is below base + width, and a right code of -1 gives
        # base - 1, below every key here: neither can match a key that is not this pair's.
        span = self.keys[lo : hi + 1]
        query = right + base
        pos = span.searchsorted(query)
        return np.where(span[pos] == query, pos + lo, -1)


def _ts_ns(values: Any) -> np.ndarray:
    """Request times as int64 nanoseconds since the epoch (UTC); unparseable -> NaT."""
    if np.ndim(values) == 0:
        try:
            return np.array([to_utc(values).value], dtype=np.int64)
        except ConfigError:
            return np.array([_NAT], dtype=np.int64)
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.DatetimeTZDtype):
        # tz-aware values are stored as UTC nanoseconds already
        return _epoch_ns(cast(pd.arrays.DatetimeArray, values.array))
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_datetime64_dtype(series.dtype):  # naive times are UTC
        return _epoch_ns(series.dt.tz_localize("UTC").array)
    # A request repeats one time over all its candidates: parse each distinct value once
    # (pandas' own parsing cache costs milliseconds at 500 candidates).
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if len(uniques) == 0:
        return np.full(len(series), _NAT, dtype=np.int64)
    distinct = np.array([_ns_or_nat(value) for value in np.asarray(uniques, dtype=object)], dtype=np.int64)
    return np.where(codes >= 0, distinct[np.maximum(codes, 0)], _NAT)


def _epoch_ns(array: pd.arrays.DatetimeArray) -> np.ndarray:
    """UTC nanoseconds since the epoch of a tz-aware datetime array (NaT -> the int64 minimum)."""
    # DatetimeArray has asi8 at runtime; pandas-stubs declare it on DatetimeIndex only
    return np.asarray(array.as_unit("ns").asi8, dtype=np.int64)  # type: ignore[attr-defined]


_NAT = np.iinfo(np.int64).min
_NEVER = np.iinfo(np.int64).max  # followed_at of a pair that does not exist: after any request


def _ns_or_nat(value: Any) -> int:
    try:
        return int(to_utc(value).value)
    except (ConfigError, ValueError, TypeError, OverflowError):
        return int(_NAT)


class FeatureAssembler:
    """Features of (user, request time, candidate) rows from a trust snapshot and context.

    Parameters
    ----------
    snapshot
        A :class:`~trustfeed.features.trust.TrustSnapshot` (any object with ``merchants``
        and ``creators`` frames keyed by ``merchant_id`` / ``creator_id``).
    context
        :class:`ContextTables` as of (about) the same time; ``None`` serves every user as a
        new user and every creator with unknown engagement (NaN).
    schema
        A schema from :meth:`schema` (e.g. saved with a model). The features, their order,
        the categorical codes and the monotone directions are then taken from it, whatever
        columns this snapshot has: a column the snapshot lacks becomes NaN (LightGBM's
        missing value) rather than shifting the other features.
    live_fields
        Optional numeric live-context fields of the candidates (``viewers``, ...) to use as
        features, each ``live_<field>`` (NaN when a request does not send it). Ignored when
        ``schema`` is given (the schema lists them).
    merchant_columns, creator_columns
        Snapshot columns to use besides every ``trust_*`` column (``None``: every numeric
        column). Ignored when ``schema`` is given.

    Notes
    -----
    Cold start: an unknown merchant or creator gets the snapshot median of every numeric
    column (and ``*_known = 0``); an unknown user has no follows, orders or affinity; an
    unknown creator has the platform's prior engagement rates. Nothing raises on unknown
    ids or NaN inputs.

    Examples
    --------
    >>> import pandas as pd
    >>> from types import SimpleNamespace
    >>> snapshot = SimpleNamespace(
    ...     merchants=pd.DataFrame({"merchant_id": ["m1", "m2"], "trust_index": [0.9, 0.3],
    ...                             "category": ["beauty", "food"]}),
    ...     creators=pd.DataFrame({"creator_id": ["c1"], "followers": [1200.0]}))
    >>> assembler = FeatureAssembler(snapshot)
    >>> candidates = pd.DataFrame({"user_id": "u1", "ts": pd.Timestamp("2026-01-05 13:30", tz="UTC"),
    ...                            "stream_id": ["s1", "s2", "s3"], "creator_id": ["c1", "c1", "c9"],
    ...                            "merchant_id": ["m1", "m2", "m-new"]})
    >>> X = assembler.transform(candidates)
    >>> X.shape == (3, len(assembler.feature_names))
    True
    >>> X[:, assembler.feature_names.index("merchant_trust_index")].tolist()  # m-new: median
    [0.9, 0.3, 0.6]
    """

    def __init__(
        self,
        snapshot: Any,
        context: ContextTables | None = None,
        schema: Mapping[str, Any] | None = None,
        live_fields: tuple[str, ...] = (),
        merchant_columns: tuple[str, ...] | None = MERCHANT_COLUMNS,
        creator_columns: tuple[str, ...] | None = CREATOR_COLUMNS,
    ) -> None:
        merchants = snapshot.merchants
        creators = snapshot.creators
        for frame, key, name in ((merchants, "merchant_id", "merchants"), (creators, "creator_id", "creators")):
            if key not in frame.columns:
                raise SchemaError(f"snapshot.{name}", key, "an id column", "no such column")
        self._context = context

        if schema is not None:
            plan, categories = _plan_from_schema(schema)
        else:
            plan = _derive_plan(merchants, creators, live_fields, merchant_columns, creator_columns)
            categories = _category_vocabulary(merchants, context)
        self._plan = plan
        self._categories = tuple(categories)
        self.feature_names: tuple[str, ...] = tuple(name for name, _, _ in plan)
        self.monotone: tuple[int, ...] = tuple(direction for _, _, direction in plan)
        self.categorical: tuple[str, ...] = tuple(name for name, source, _ in plan if source == "merchant_category")
        self._position = {name: i for i, name in enumerate(self.feature_names)}

        # ---- merchants: one row per known id, plus a final cold-start row
        merchant_ids = _ids(merchants["merchant_id"])
        extra_merchants: list[Any] = []
        if context is not None:
            extra_merchants = [context.user_merchant["merchant_id"], context.merchant_category["merchant_id"]]
        self._merchant_index = _vocabulary(merchant_ids, extra_merchants)
        n_m = len(self._merchant_index)
        merchant_rows = _snapshot_rows(self._merchant_index, merchant_ids)
        merchant_cols = [src.split(":", 1)[1] for _, src, _ in plan if src.startswith("merchant:")]
        self._merchant_matrix = _source_matrix(merchants, merchant_cols, merchant_rows, n_m)
        self._merchant_known = np.zeros(n_m + 1)
        self._merchant_known[merchant_rows[merchant_rows >= 0]] = 1.0

        # merchant category codes (fixed by the schema vocabulary)
        category_codes = np.full(n_m + 1, np.nan)
        category_index = pd.Index(list(self._categories), dtype=object)
        category_source = [merchants[["merchant_id", "category"]]] if "category" in merchants.columns else []
        if context is not None:
            category_source.append(context.merchant_category[["merchant_id", "category"]])
        for source in reversed(category_source):  # the snapshot wins over context
            rows = _lookup_ids(self._merchant_index, _ids(source["merchant_id"]))
            codes = _positions(category_index, _object_values(_ids(source["category"])))
            ok = (rows >= 0) & (codes >= 0)
            category_codes[rows[ok]] = codes[ok]
        self._merchant_category = category_codes
        # the same codes as integers, -1 for none: the key of the user-category pair table
        self._category_code = np.where(np.isfinite(category_codes), category_codes, -1).astype(np.int64)

        # status for the policy: trust, banned, banned entity
        trust = np.full(n_m + 1, np.nan)
        banned = np.zeros(n_m + 1, dtype=bool)
        banned_entity = np.zeros(n_m + 1, dtype=bool)
        valid_rows = merchant_rows >= 0
        if "trust_index" in merchants.columns:
            trust[merchant_rows[valid_rows]] = _as_float(merchants["trust_index"])[valid_rows]
        trust_column = self._merchant_col_of("trust_index", merchant_cols)
        prior_trust = self._merchant_matrix[n_m, trust_column] if trust_column is not None else np.nan
        if not np.isfinite(prior_trust):
            prior_trust = float(np.nanmedian(trust[:-1])) if np.isfinite(trust[:-1]).any() else 0.5
        trust[~np.isfinite(trust)] = prior_trust
        if "banned" in merchants.columns:
            banned[merchant_rows[valid_rows]] = _bool(merchants["banned"])[valid_rows]
            entity_flag = next((c for c in ("entity_banned", "banned_entity") if c in merchants.columns), None)
            if entity_flag is not None:
                banned_entity[merchant_rows[valid_rows]] = _bool(merchants[entity_flag])[valid_rows]
            elif "entity_id" in merchants.columns:
                entity = _ids(merchants["entity_id"])
                any_banned = (
                    pd.Series(_bool(merchants["banned"]), index=merchants.index).groupby(entity.to_numpy(), dropna=True).transform("any")
                )
                flag = any_banned.reindex(merchants.index).fillna(False).to_numpy(dtype=bool)
                banned_entity[merchant_rows[valid_rows]] = flag[valid_rows]
            banned_entity &= ~banned
        self._trust = np.clip(trust, 0.0, 1.0)
        self._banned = banned
        self._banned_entity = banned_entity
        guarantees = np.zeros(n_m + 1)
        if "n_benefits" in merchants.columns:
            guarantees[merchant_rows[valid_rows]] = np.nan_to_num(_as_float(merchants["n_benefits"])[valid_rows])
        self._guarantees = guarantees

        # ---- creators
        creator_ids = _ids(creators["creator_id"])
        extra_creators: list[Any] = []
        if context is not None:
            extra_creators = [context.follows["creator_id"], context.creator_engagement["creator_id"]]
        self._creator_index = _vocabulary(creator_ids, extra_creators)
        n_c = len(self._creator_index)
        creator_rows = _snapshot_rows(self._creator_index, creator_ids)
        creator_cols = [src.split(":", 1)[1] for _, src, _ in plan if src.startswith("creator:")]
        self._creator_matrix = _source_matrix(creators, creator_cols, creator_rows, n_c)
        self._creator_known = np.zeros(n_c + 1)
        self._creator_known[creator_rows[creator_rows >= 0]] = 1.0

        # creator engagement (context), cold start = platform prior
        engagement_cols = ("ctr", "cvr", "coec", "log_impressions")
        self._engagement = np.full((n_c + 1, len(engagement_cols)), np.nan)
        if context is not None:
            prior = np.array([context.priors.get("ctr", np.nan), context.priors.get("cvr", np.nan), 1.0, 0.0])
            self._engagement[:] = prior
            table = context.creator_engagement
            rows = _lookup_ids(self._creator_index, _ids(table["creator_id"]))
            values = np.column_stack(
                [
                    _as_float(table["ctr"]),
                    _as_float(table["cvr"]),
                    _as_float(table["coec"]),
                    np.log1p(_as_float(table["impressions"])),
                ]
            )
            self._engagement[rows[rows >= 0]] = values[rows >= 0]
        self._engagement_col = {name: i for i, name in enumerate(engagement_cols)}

        # ---- users and pair tables
        user_sources = []
        if context is not None:
            user_sources = [
                context.follows["user_id"],
                context.user_merchant["user_id"],
                context.user_category["user_id"],
                context.user_activity["user_id"],
            ]
        self._user_index = _vocabulary(pd.Series([], dtype="string"), user_sources)
        n_u = len(self._user_index)
        self._user_activity = np.zeros((n_u + 1, 2))
        empty = np.zeros(0, dtype=np.int64)
        # defaults of an absent pair: never followed, no orders, no affinity
        self._follows = _PairTable(empty, empty, n_c, np.zeros(0, dtype=np.int64), _NEVER)
        self._user_merchant = _PairTable(empty, empty, n_m, np.zeros((0, 2)), 0.0)
        self._user_category = _PairTable(empty, empty, len(self._categories), np.zeros(0), 0.0)
        if context is not None:
            follows = context.follows
            self._follows = _PairTable(
                _lookup_ids(self._user_index, _ids(follows["user_id"])),
                _lookup_ids(self._creator_index, _ids(follows["creator_id"])),
                n_c,
                _ts_ns(follows["followed_at"]),
                _NEVER,
            )
            um = context.user_merchant
            self._user_merchant = _PairTable(
                _lookup_ids(self._user_index, _ids(um["user_id"])),
                _lookup_ids(self._merchant_index, _ids(um["merchant_id"])),
                n_m,
                np.column_stack([_as_float(um["orders"]), _as_float(um["bad_orders"])]).reshape(-1, 2),
                0.0,
            )
            uc = context.user_category
            self._user_category = _PairTable(
                _lookup_ids(self._user_index, _ids(uc["user_id"])),
                _positions(category_index, _object_values(_ids(uc["category"]))),
                len(self._categories),
                _as_float(uc["affinity"]),
                0.0,
            )
            ua = context.user_activity
            rows = _lookup_ids(self._user_index, _ids(ua["user_id"]))
            self._user_activity[rows[rows >= 0]] = np.column_stack(
                [_as_float(ua["orders"]), _as_float(ua["clicks"])]
            ).reshape(-1, 2)[rows >= 0]

        self._merchant_col = {c: i for i, c in enumerate(merchant_cols)}
        self._creator_col = {c: i for i, c in enumerate(creator_cols)}
        self._compile_blocks()

    def _compile_blocks(self) -> None:
        """Lay out per-merchant and per-creator feature tables in output column order.

        Every feature that depends only on the merchant (or only on the creator) becomes a
        column of one table, so a request gathers all of them with a single ``take``.
        """
        merchant_parts: list[np.ndarray] = []
        merchant_pos: list[int] = []
        creator_parts: list[np.ndarray] = []
        creator_pos: list[int] = []
        special: list[tuple[int, str, str]] = []
        for j, (_, source, _) in enumerate(self._plan):
            kind, _, column = source.partition(":")
            if kind == "merchant":
                merchant_parts.append(self._merchant_matrix[:, self._merchant_col[column]])
                merchant_pos.append(j)
            elif kind == "merchant_known":
                merchant_parts.append(self._merchant_known)
                merchant_pos.append(j)
            elif kind == "merchant_category":
                merchant_parts.append(self._merchant_category)
                merchant_pos.append(j)
            elif kind == "creator":
                creator_parts.append(self._creator_matrix[:, self._creator_col[column]])
                creator_pos.append(j)
            elif kind == "creator_known":
                creator_parts.append(self._creator_known)
                creator_pos.append(j)
            elif kind == "engagement":
                creator_parts.append(self._engagement[:, self._engagement_col[column]])
                creator_pos.append(j)
            else:
                special.append((j, kind, column))
        n_m, n_c = len(self._merchant_index) + 1, len(self._creator_index) + 1
        self._merchant_table = np.ascontiguousarray(np.column_stack(merchant_parts)) if merchant_parts else np.zeros((n_m, 0))
        self._creator_table = np.ascontiguousarray(np.column_stack(creator_parts)) if creator_parts else np.zeros((n_c, 0))
        self._merchant_pos = np.asarray(merchant_pos, dtype=np.int64)
        self._creator_pos = np.asarray(creator_pos, dtype=np.int64)
        # contiguous runs of output columns are filled by slice assignment (no scatter)
        self._merchant_slice = _as_slice(self._merchant_pos)
        self._creator_slice = _as_slice(self._creator_pos)
        self._special = tuple((i, kind, column) for i, (_, kind, column) in enumerate(special))
        special_pos = np.asarray([j for j, _, _ in special], dtype=np.int64)
        self._special_slice = _as_slice(special_pos)
        self._special_pos = special_pos

    def _user_row(self, user_id: Any) -> int:
        if isinstance(user_id, str):
            return int(_lookup_ids(self._user_index, [user_id])[0])
        try:
            row = self._user_index.get_loc(user_id)
        except (KeyError, TypeError, pd.errors.InvalidIndexError):
            return -1
        return int(row) if isinstance(row, (int, np.integer)) else -1

    @staticmethod
    def _merchant_col_of(column: str, merchant_cols: list[str]) -> int | None:
        return merchant_cols.index(column) if column in merchant_cols else None

    # ------------------------------------------------------------------ public API

    def schema(self) -> dict[str, Any]:
        """The feature layout as a JSON-able dict (saved with the model, passed back as ``schema=``)."""
        return {
            "kind": "trustfeed.features",
            "format_version": SCHEMA_FORMAT_VERSION,
            "feature_names": list(self.feature_names),
            "sources": [source for _, source, _ in self._plan],
            "monotone": list(self.monotone),
            "categorical": list(self.categorical),
            "categories": {"merchant_category": list(self._categories)},
        }

    def merchant_status(self, merchant_ids: Any) -> MerchantStatus:
        """Trust and ban status of each merchant id (unknown: median trust, not banned)."""
        # an unknown id (-1) reads the last row: the cold-start status
        return self._status_of(_lookup_ids(self._merchant_index, merchant_ids))

    def _status_of(self, rows: np.ndarray) -> MerchantStatus:
        return MerchantStatus(
            trust=self._trust[rows],
            banned_merchant=self._banned[rows],
            banned_entity=self._banned_entity[rows],
            known=self._merchant_known[rows] > 0,
            guarantees=self._guarantees[rows],
        )

    def transform_with_status(self, candidates: pd.DataFrame | Mapping[str, Any]) -> tuple[np.ndarray, MerchantStatus]:
        """:meth:`transform` and :meth:`merchant_status` of the candidates from one id lookup.

        The per-request form serving wants: the same values as the two calls, one hash
        lookup of the merchant ids fewer.
        """
        features, merchant_rows = self._transform(candidates)
        return features, self._status_of(merchant_rows)

    def transform(self, candidates: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Feature matrix of the candidates, ``float64``, columns in :attr:`feature_names` order.

        Parameters
        ----------
        candidates
            A DataFrame (or a mapping of equal-length arrays) with ``user_id``, ``ts``,
            ``creator_id`` and ``merchant_id`` (``stream_id`` and other columns are
            accepted; declared live fields are read when present). ``ts`` may be one value
            for the whole request.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(candidates), len(feature_names))``. One request or a million
            logged impressions go through the same code.
        """
        return self._transform(candidates)[0]

    def _transform(self, candidates: pd.DataFrame | Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        columns = candidates
        merchant_ids = _required(columns, "merchant_id")
        n = len(merchant_ids)
        creator_ids = _required(columns, "creator_id")
        user_ids = _required(columns, "user_id")
        ts = _required(columns, "ts")

        # Unknown ids look up as -1, which every per-id table answers with its last row:
        # the cold-start prior (merchant and creator tables), no activity (users).
        m_rows = _lookup_ids(self._merchant_index, merchant_ids)
        c_rows = _lookup_ids(self._creator_index, creator_ids)
        one_user: int | None = None
        u_rows: Any
        if isinstance(user_ids, str) or np.ndim(user_ids) == 0:  # one user for the whole request: one lookup
            one_user = u_rows = self._user_row(user_ids)
        else:
            u_rows = _lookup_ids(self._user_index, _broadcast(user_ids, n))

        def find(table: _PairTable, right: np.ndarray) -> np.ndarray:
            # -1 (absent) selects the table's default value row
            return table.find(u_rows, right) if one_user is None else table.find_one(one_user, right)

        ts_ns: Any
        if isinstance(ts, pd.Timestamp) and ts.tz is not None:  # what a parsed request carries
            ts_ns = int(ts.value) if ts.unit == "ns" else int(ts.as_unit("ns").value)
        elif np.ndim(ts) == 0:  # one time for the whole request: scalar arithmetic below
            ts_ns = int(_ts_ns(ts)[0])
        else:
            ts_ns = _broadcast(_ts_ns(ts), n)

        out = np.empty((n, len(self.feature_names)), dtype=np.float64)
        out[:, self._merchant_slice if self._merchant_slice is not None else self._merchant_pos] = (
            self._merchant_table.take(m_rows, axis=0)
        )
        out[:, self._creator_slice if self._creator_slice is not None else self._creator_pos] = (
            self._creator_table.take(c_rows, axis=0)
        )
        # the remaining features go to a small block first, which stays in cache, then into
        # the matrix in one pass (a column of the matrix itself touches a cache line per row)
        block = np.empty((n, len(self._special)), dtype=np.float64)
        um_rows: np.ndarray | None = None
        for j, kind, column in self._special:
            if kind == "user_merchant":
                if um_rows is None:
                    um_rows = find(self._user_merchant, m_rows)
                block[:, j] = self._user_merchant.values[um_rows, 0 if column == "orders" else 1]
            elif kind == "user_follows":
                followed_at = self._follows.values[find(self._follows, c_rows)]
                block[:, j] = (followed_at < ts_ns) & (ts_ns != _NAT)
            elif kind == "user_category":
                block[:, j] = self._user_category.values[find(self._user_category, self._category_code.take(m_rows))]
            elif kind == "user_activity":
                block[:, j] = self._user_activity[u_rows, 0 if column == "orders" else 1]
            elif kind == "hour":
                block[:, j] = np.where(ts_ns == _NAT, np.nan, (ts_ns // _NS_PER_HOUR) % 24)
            elif kind == "live":
                block[:, j] = _live_field(columns, column, n)
            else:  # pragma: no cover - plans are validated when built
                raise SchemaError("features", column, "a known feature source", f"{kind}:{column}")
        out[:, self._special_slice if self._special_slice is not None else self._special_pos] = block
        return out, m_rows

    def transform_frame(self, candidates: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """:meth:`transform` as a DataFrame with named columns (for inspection and reports)."""
        index = candidates.index if isinstance(candidates, pd.DataFrame) else None
        return pd.DataFrame(self.transform(candidates), columns=list(self.feature_names), index=index)


# --------------------------------------------------------------------------- plan helpers


def _derive_plan(
    merchants: pd.DataFrame,
    creators: pd.DataFrame,
    live_fields: tuple[str, ...],
    merchant_columns: tuple[str, ...] | None,
    creator_columns: tuple[str, ...] | None,
) -> list[tuple[str, str, int]]:
    plan: list[tuple[str, str, int]] = []
    for column in _pick_columns(merchants, merchant_columns):
        name = column if column.startswith("merchant_") else f"merchant_{column}"
        plan.append((name, f"merchant:{column}", _direction(column)))
    plan.append(("merchant_known", "merchant_known", 0))
    plan.append(("merchant_category", "merchant_category", 0))
    creator_picked = _pick_columns(creators, creator_columns)
    for column in creator_picked:
        name = column if column.startswith("creator_") else f"creator_{column}"
        plan.append((name, f"creator:{column}", _direction(column)))
    plan.append(("creator_known", "creator_known", 0))
    for name, source, snapshot_column in _ENGAGEMENT_FALLBACK:
        if snapshot_column not in creator_picked:
            plan.append((name, source, 0))
    taken = {name for name, _, _ in plan}
    for name, source in _CONTEXT_PLAN:
        if name in taken:  # the snapshot already provides a feature of that name
            name = f"context_{name}"
        plan.append((name, source, 0))
    for live in live_fields:
        plan.append((f"live_{live}", f"live:{live}", 0))
    names = [name for name, _, _ in plan]
    if len(set(names)) != len(names):
        raise SchemaError("snapshot", None, "distinct feature names", f"duplicates in {names}")
    return plan


_KNOWN_KINDS = frozenset(
    {
        "merchant",
        "creator",
        "merchant_known",
        "creator_known",
        "merchant_category",
        "engagement",
        "user_merchant",
        "user_follows",
        "user_category",
        "user_activity",
        "hour",
        "live",
    }
)


def _plan_from_schema(schema: Mapping[str, Any]) -> tuple[list[tuple[str, str, int]], list[str]]:
    if schema.get("kind") != "trustfeed.features" or schema.get("format_version") != SCHEMA_FORMAT_VERSION:
        raise SchemaError(
            "feature schema",
            "format_version",
            f"trustfeed.features format {SCHEMA_FORMAT_VERSION}",
            f"{schema.get('kind')!r} format {schema.get('format_version')!r}",
        )
    names = list(schema["feature_names"])
    sources = list(schema["sources"])
    monotone = [int(v) for v in schema["monotone"]]
    if not len(names) == len(sources) == len(monotone):
        raise SchemaError("feature schema", "sources", f"{len(names)} sources and monotone entries", "other lengths")
    for source in sources:
        if source.partition(":")[0] not in _KNOWN_KINDS:
            raise SchemaError("feature schema", "sources", "a known feature source", repr(source))
    categories = list(schema.get("categories", {}).get("merchant_category", []))
    return list(zip(names, sources, monotone, strict=True)), categories


def _category_vocabulary(merchants: pd.DataFrame, context: ContextTables | None) -> list[str]:
    values: list[pd.Series] = []
    if "category" in merchants.columns:
        values.append(_ids(merchants["category"]))
    if context is not None:
        values.append(_ids(context.merchant_category["category"]))
    if not values:
        return []
    return sorted(pd.concat(values, ignore_index=True).dropna().unique().tolist())


def _vocabulary(primary: pd.Series, extra: list[Any]) -> pd.Index:
    """Every id of the snapshot first (in its order), then ids only the context knows."""
    parts = [primary.dropna()] + [_ids(pd.Series(e)).dropna() for e in extra]
    return _index(pd.concat(parts, ignore_index=True).drop_duplicates())


def _snapshot_rows(index: pd.Index, ids: pd.Series) -> np.ndarray:
    """Row in the vocabulary of each snapshot row (first occurrence wins on duplicates)."""
    rows = _lookup_ids(index, ids)
    duplicated = ids.duplicated(keep="first").to_numpy(dtype=bool)
    rows[duplicated] = -1
    return rows


def _source_matrix(frame: pd.DataFrame, columns: list[str], rows: np.ndarray, n: int) -> np.ndarray:
    """Numeric snapshot columns laid out by vocabulary row, last row the cold-start prior.

    The prior of an id the snapshot does not know is the median over the snapshot's own
    cold-start rows when it marks some (``cold_start``: a new account, what an unseen id
    most likely is), else the median over all rows.
    """
    matrix = np.full((n + 1, len(columns)), np.nan)
    valid = rows >= 0
    cold = _bool(frame["cold_start"]) if "cold_start" in frame.columns else np.zeros(len(frame), dtype=bool)
    reference = cold & valid if (cold & valid).any() else valid
    # vocabulary rows without a snapshot row (ids seen only in the context) are cold starts
    unseen = np.setdiff1d(np.arange(n), rows[valid])
    for j, column in enumerate(columns):
        if column not in frame.columns:
            continue  # a schema feature this snapshot lacks: LightGBM's missing value
        values = _as_float(frame[column])
        matrix[rows[valid], j] = values[valid]
        pool = values[reference]
        finite = pool[np.isfinite(pool)]
        prior = float(np.median(finite)) if len(finite) else np.nan
        matrix[n, j] = prior
        matrix[unseen, j] = prior
    return matrix


def _as_slice(positions: np.ndarray) -> slice | None:
    """``positions`` as a slice when they are one contiguous ascending run."""
    if len(positions) and (np.diff(positions) == 1).all():
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return None


def _required(columns: Any, name: str) -> Any:
    try:
        values = columns[name]
    except (KeyError, IndexError):
        raise SchemaError("candidates", name, "a column of the candidates", "no such column") from None
    return values


def _broadcast(values: Any, n: int) -> Any:
    array = _object_values(values) if isinstance(values, pd.Series) else values
    if np.ndim(array) == 0:
        return np.full(n, array, dtype=object if not isinstance(array, np.integer) else np.int64)
    array = np.asarray(array)
    if len(array) == 1 and n != 1:
        return np.repeat(array, n)
    if len(array) != n:
        raise SchemaError("candidates", None, f"columns of one length ({n})", f"a column of length {len(array)}")
    return array


def _live_field(columns: Any, name: str, n: int) -> np.ndarray:
    try:
        values = columns[name]
    except (KeyError, IndexError):
        return np.full(n, np.nan)
    numeric = pd.to_numeric(pd.Series(_broadcast(values, n)), errors="coerce")
    return numeric.to_numpy(dtype="float64", na_value=np.nan)
