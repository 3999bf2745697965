"""Per-request feature assembly: the one feature code path of training and serving.

:class:`FeatureAssembler` joins a trust snapshot and the history tables of
:mod:`trustfeed.features.history` onto candidates ``(user_id, ts, stream_id, creator_id,
merchant_id, ...)`` and returns a float matrix in a fixed feature order. Serving calls
:meth:`FeatureAssembler.transform` once per request; training calls the very same method over
millions of logged impressions. All lookups are precomputed in ``__init__`` as numpy arrays
plus hash indexes, so a request costs a few vectorised gathers and no DataFrame joins.

Each feature reads one typed source (:mod:`trustfeed.features.sources`): per merchant, per
creator or per request row. The feature order, the sources, the categorical codes and the
monotone directions form the *schema* (:meth:`FeatureAssembler.schema`), which is saved beside
the model; an assembler built with ``schema=`` reproduces exactly that feature layout on any
later snapshot. What the policy's rules read about each merchant (trust, bans, guarantees)
comes from :mod:`trustfeed.features.merchant_status`.

The history tables (:class:`ContextConfig`, :class:`ContextTables`,
:func:`build_context_tables`) live in :mod:`trustfeed.features.history` and are importable
from here too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd

from ._columns import _as_float, _bool, _ids, _object_values, _positions
from ._id_index import HashedIds
from ._viewer_history import ViewerHistory, ViewerTables
from .errors import ConfigError, SchemaError
from .events import to_utc
from .history import CONTEXT_FORMAT_VERSION, ContextConfig, ContextTables, build_context_tables
from .merchant_status import MerchantStatus, merchant_status_table
from .outcomes import BAD_AFTER_SALES_REASONS
from .sources import (
    CreatorColumn,
    CreatorKnown,
    Engagement,
    ENGAGEMENT_COLUMNS,
    Hour,
    Live,
    MerchantCategory,
    MerchantColumn,
    MerchantKnown,
    MerchantPercentile,
    Source,
    UserActivity,
    UserCategory,
    UserFollows,
    UserTaste,
    UserMerchant,
    parse_source,
)

__all__ = [
    "ContextConfig",
    "ContextTables",
    "FeatureAssembler",
    "MerchantStatus",
    "SnapshotFrames",
    "build_context_tables",
    "BAD_AFTER_SALES_REASONS",
    "CONTEXT_FORMAT_VERSION",
    "PERCENTILE_FEATURES",
    "ViewerHistory",
    "ViewerTables",
]

SCHEMA_FORMAT_VERSION = 1


class SnapshotFrames(Protocol):
    """What the assembler reads of a trust snapshot: a :class:`~trustfeed.features.trust.TrustSnapshot`,
    or any object with ``merchants`` and ``creators`` frames keyed by ``merchant_id`` / ``creator_id``."""

    @property
    def merchants(self) -> pd.DataFrame: ...

    @property
    def creators(self) -> pd.DataFrame: ...


_NS_PER_HOUR = 3_600 * 1_000_000_000

# Columns of a snapshot table that are identifiers or text, never features.
_NON_FEATURE_COLUMNS = frozenset(
    {"merchant_id", "creator_id", "entity_id", "category", "top_reasons", "as_of", "user_id", "stream_id"}
)


# --------------------------------------------------------------------------- feature assembly


# History features every assembler adds (sources in trustfeed.features.sources).
_CONTEXT_PLAN: tuple[tuple[str, Source], ...] = (
    ("creator_coec", Engagement("coec")),
    ("creator_log_impressions", Engagement("log_impressions")),
    ("user_follows_creator", UserFollows()),
    ("user_category_affinity", UserCategory()),
    ("user_category_taste", UserTaste()),
    ("user_merchant_orders", UserMerchant("orders")),
    ("user_merchant_bad_orders", UserMerchant("bad_orders")),
    ("user_orders", UserActivity("orders")),
    ("user_clicks", UserActivity("clicks")),
    ("hour_of_day", Hour()),
)
# Creator engagement from the context, used only when the snapshot has no such column.
_ENGAGEMENT_FALLBACK: tuple[tuple[str, Source, str], ...] = (
    ("creator_ctr", Engagement("ctr"), "ctr"),
    ("creator_conversion_rate", Engagement("cvr"), "conversion_rate"),
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

PERCENTILE_FEATURES: dict[str, str] = {
    "trust_index": "merchant_trust_percentile",
    "expected_bad_rate": "merchant_expected_bad_percentile",
}
"""Snapshot merchant columns the models read as their standing among the snapshot's merchants
(:class:`~trustfeed.features.sources.MerchantPercentile`), by feature name, not as values.

Both come from the trust index's weights, which a log too short to fit them gives default
values and a longer one fitted values on another scale (on a 45-day simulated log the
training snapshots' index has median 0.87, the serving snapshot's 0.97): as values, a model
would learn one scale and be served another. Their standing has one scale in every snapshot.
The ``trust_<dimension>`` columns are standings already. What the policy reads about a
merchant's trust (:mod:`~trustfeed.features.merchant_status`) stays the index itself."""

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


def _index(values: Any) -> pd.Index:
    """A hash index over string ids (object dtype: fastest for per-request lookups)."""
    return pd.Index(np.asarray(_object_values(pd.Series(values, dtype="string"))), dtype=object)


def _lookup_ids(index: pd.Index | HashedIds, values: Any) -> np.ndarray:
    """Position of each id in ``index`` (``-1`` when unknown)."""
    if isinstance(values, pd.Series):
        values = _object_values(values)
    if isinstance(index, HashedIds):  # memory-mapped tables (serving): no Python objects per id
        return index.lookup(values)
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


_PAIR_TABLES = ("follows", "user_merchant", "user_category", "user_taste")
# pair tables served arrays written before they existed may lack (read as empty tables)
_OPTIONAL_PAIR_TABLES = frozenset({"user_taste"})


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

    @classmethod
    def from_arrays(cls, keys: np.ndarray, values: np.ndarray, width: int) -> _PairTable:
        """A table from its stored :attr:`keys` (sentinel included) and :attr:`values` (default row included)."""
        table = cls.__new__(cls)
        table.size = int(keys.size) - 1
        table.keys, table.values, table.width = keys, values, np.int64(max(width, 1))
        return table

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
    >>> X[:, assembler.feature_names.index("merchant_trust_percentile")].tolist()  # m-new: median's
    [0.75, 0.25, 0.5]
    >>> assembler.merchant_status(candidates["merchant_id"]).trust.tolist()  # the policy's trust: the index
    [0.9, 0.3, 0.6]
    """

    def __init__(
        self,
        snapshot: SnapshotFrames,
        context: ContextTables | None = None,
        schema: Mapping[str, Any] | None = None,
        live_fields: tuple[str, ...] = (),
        merchant_columns: tuple[str, ...] | None = MERCHANT_COLUMNS,
        creator_columns: tuple[str, ...] | None = CREATOR_COLUMNS,
        viewer: ViewerTables | None = None,
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
        self.categorical: tuple[str, ...] = tuple(name for name, source, _ in plan if isinstance(source, MerchantCategory))
        self._position = {name: i for i, name in enumerate(self.feature_names)}

        # ---- merchants: one row per known id, plus a final cold-start row
        merchant_ids = _ids(merchants["merchant_id"])
        extra_merchants: list[Any] = []
        if context is not None:
            extra_merchants = [context.user_merchant["merchant_id"], context.merchant_category["merchant_id"]]
        if viewer is not None:
            extra_merchants.append(viewer.merchants)
        self._merchant_index: pd.Index | HashedIds = _vocabulary(merchant_ids, extra_merchants)
        n_m = len(self._merchant_index)
        merchant_rows = _snapshot_rows(self._merchant_index, merchant_ids)
        merchant_cols = list(dict.fromkeys(
            source.column for _, source, _ in plan if isinstance(source, (MerchantColumn, MerchantPercentile))))
        self._merchant_matrix = _source_matrix(merchants, merchant_cols, merchant_rows, n_m)
        in_snapshot = merchant_rows[merchant_rows >= 0]
        self._merchant_percentile = {
            source.column: _standing(self._merchant_matrix[:, merchant_cols.index(source.column)], in_snapshot)
            for _, source, _ in plan if isinstance(source, MerchantPercentile)
        }
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

        # what the policy's rules read (trust, bans, guarantees), per merchant row
        trust_column = self._merchant_col_of("trust_index", merchant_cols)
        prior_trust = self._merchant_matrix[n_m, trust_column] if trust_column is not None else np.nan
        self._status = merchant_status_table(merchants, merchant_rows, n_m, prior_trust)

        # ---- creators
        creator_ids = _ids(creators["creator_id"])
        extra_creators: list[Any] = []
        if context is not None:
            extra_creators = [context.follows["creator_id"], context.creator_engagement["creator_id"]]
        if viewer is not None:
            extra_creators.append(viewer.creators)
        self._creator_index: pd.Index | HashedIds = _vocabulary(creator_ids, extra_creators)
        n_c = len(self._creator_index)
        creator_rows = _snapshot_rows(self._creator_index, creator_ids)
        creator_cols = [source.column for _, source, _ in plan if isinstance(source, CreatorColumn)]
        self._creator_matrix = _source_matrix(creators, creator_cols, creator_rows, n_c)
        self._creator_known = np.zeros(n_c + 1)
        self._creator_known[creator_rows[creator_rows >= 0]] = 1.0

        # creator engagement (context), cold start = platform prior
        engagement_cols = ENGAGEMENT_COLUMNS
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
        self._viewer_vocabulary: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        if viewer is not None:  # the viewer tables from a ViewerHistory instead of the context's
            self._viewer_vocabulary = (
                viewer.users,
                _lookup_ids(self._merchant_index, viewer.merchants),
                _lookup_ids(self._creator_index, viewer.creators),
                _positions(category_index, viewer.categories),
            )
            self._install_viewer(viewer)
        else:
            self._context_viewer(context, category_index)

        self._merchant_col = {c: i for i, c in enumerate(merchant_cols)}
        self._creator_col = {c: i for i, c in enumerate(creator_cols)}
        self._compile_blocks()

    def _context_viewer(self, context: ContextTables | None, category_index: pd.Index) -> None:
        """The user index and the viewer's pair tables from the context's tables."""
        n_m, n_c = len(self._merchant_index), len(self._creator_index)
        user_sources = []
        if context is not None:
            user_sources = [
                context.follows["user_id"],
                context.user_merchant["user_id"],
                context.user_category["user_id"],
                context.user_taste["user_id"],
                context.user_activity["user_id"],
            ]
        self._user_index: pd.Index | HashedIds = _vocabulary(pd.Series([], dtype="string"), user_sources)
        n_u = len(self._user_index)
        self._user_activity = np.zeros((n_u + 1, 2))
        empty = np.zeros(0, dtype=np.int64)
        # defaults of an absent pair: never followed, no orders, no affinity
        self._follows = _PairTable(empty, empty, n_c, np.zeros(0, dtype=np.int64), _NEVER)
        self._user_merchant = _PairTable(empty, empty, n_m, np.zeros((0, 2)), 0.0)
        self._user_category = _PairTable(empty, empty, len(self._categories), np.zeros(0), 0.0)
        self._user_taste = _PairTable(empty, empty, len(self._categories), np.zeros(0), 0.0)
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
            taste = context.user_taste
            self._user_taste = _PairTable(
                _lookup_ids(self._user_index, _ids(taste["user_id"])),
                _positions(category_index, _object_values(_ids(taste["category"]))),
                len(self._categories),
                _as_float(taste["taste"]),
                0.0,
            )
            ua = context.user_activity
            rows = _lookup_ids(self._user_index, _ids(ua["user_id"]))
            self._user_activity[rows[rows >= 0]] = np.column_stack(
                [_as_float(ua["orders"]), _as_float(ua["clicks"])]
            ).reshape(-1, 2)[rows >= 0]

    def _install_viewer(self, viewer: ViewerTables) -> None:
        """The user index and the viewer's pair tables from :class:`ViewerTables` codes."""
        if self._viewer_vocabulary is None or self._viewer_vocabulary[0] is not viewer.users:
            raise SchemaError("viewer tables", None, "the history this assembler was built with", "another history")
        _, merchant_rows, creator_rows, category_pos = self._viewer_vocabulary
        n_m, n_c = len(self._merchant_index), len(self._creator_index)
        self._user_index = viewer.user_index
        self._user_activity = np.vstack([viewer.user_activity.astype(np.float64), np.zeros((1, 2))])
        users, creators, followed_at = viewer.follows
        self._follows = _PairTable(users, creator_rows[creators], n_c, followed_at, _NEVER)
        users, merchants, orders, bad = viewer.user_merchant
        self._user_merchant = _PairTable(
            users, merchant_rows[merchants], n_m, np.column_stack([orders, bad]).astype(np.float64).reshape(-1, 2), 0.0)
        users, categories, affinity = viewer.user_category
        self._user_category = _PairTable(users, category_pos[categories], len(self._categories), affinity, 0.0)
        users, categories, taste = viewer.user_taste
        self._user_taste = _PairTable(users, category_pos[categories], len(self._categories), taste, 0.0)

    def with_viewer(self, viewer: ViewerTables) -> FeatureAssembler:
        """This assembler with the viewer's tables (follows, orders with each merchant, category
        taste, activity) of ``viewer`` instead of its own: everything per merchant and per
        creator stays as built, nothing is looked up by id again.

        The assembler must have been built with ``viewer=`` tables of the same
        :class:`~trustfeed.features._viewer_history.ViewerHistory` (its id vocabularies).
        The training frame builds one per snapshot and moves the viewer's history on day by
        day (:func:`trustfeed.training.dataset.build_training_frame`).
        """
        fresh = copy.copy(self)
        fresh._install_viewer(viewer)
        return fresh

    def _compile_blocks(self) -> None:
        """Lay out per-merchant and per-creator feature tables in output column order.

        Every feature that depends only on the merchant (or only on the creator) becomes a
        column of one table, so a request gathers all of them with a single ``take``.
        """
        merchant_parts: list[np.ndarray] = []
        merchant_pos: list[int] = []
        creator_parts: list[np.ndarray] = []
        creator_pos: list[int] = []
        special: list[tuple[int, Source]] = []
        tables = _EntityTables(self)
        for j, (_, source, _) in enumerate(self._plan):
            if source.entity == "merchant":
                merchant_parts.append(source.entity_values(tables))
                merchant_pos.append(j)
            elif source.entity == "creator":
                creator_parts.append(source.entity_values(tables))
                creator_pos.append(j)
            else:
                special.append((j, source))
        n_m, n_c = len(self._merchant_index) + 1, len(self._creator_index) + 1
        self._merchant_table = np.ascontiguousarray(np.column_stack(merchant_parts)) if merchant_parts else np.zeros((n_m, 0))
        self._creator_table = np.ascontiguousarray(np.column_stack(creator_parts)) if creator_parts else np.zeros((n_c, 0))
        self._set_layout(merchant_pos, creator_pos, special)

    def _set_layout(self, merchant_pos: list[int], creator_pos: list[int], special: list[tuple[int, Source]]) -> None:
        """Where the merchant table, the creator table and the per-request features go in the output."""
        self._merchant_pos = np.asarray(merchant_pos, dtype=np.int64)
        self._creator_pos = np.asarray(creator_pos, dtype=np.int64)
        # contiguous runs of output columns are filled by slice assignment (no scatter)
        self._merchant_slice = _as_slice(self._merchant_pos)
        self._creator_slice = _as_slice(self._creator_pos)
        # per-request sources, each filling its column of the request block
        self._special = tuple((i, source.request_values) for i, (_, source) in enumerate(special))
        special_pos = np.asarray([j for j, _ in special], dtype=np.int64)
        self._special_slice = _as_slice(special_pos)
        self._special_pos = special_pos

    # ------------------------------------------------------------------ served arrays

    def served_arrays(self) -> dict[str, np.ndarray]:
        """Every array a request reads, by name: what a memory-mapped copy must hold.

        With :meth:`schema` and the three id vocabularies (:meth:`id_vocabularies`) this is
        the whole state :meth:`transform_with_status` uses; :meth:`from_served_arrays` puts
        it back together.
        """
        return {
            "merchant_table": self._merchant_table,
            "creator_table": self._creator_table,
            **{f"status_{name}": values for name, values in self._status._asdict().items()},
            "category_code": self._category_code,
            "user_activity": self._user_activity,
            **{f"{name}_{part}": getattr(getattr(self, f"_{name}"), part)
               for name in _PAIR_TABLES for part in ("keys", "values")},
        }

    def id_vocabularies(self) -> dict[str, list[str]]:
        """The merchant, creator and user ids in row order (row ``i`` of every served array)."""
        def ids(index: pd.Index | HashedIds) -> list[str]:
            if isinstance(index, HashedIds):
                return [v.decode("utf-8", "surrogatepass") for v in index.ids.tolist()]
            return [str(v) for v in index.tolist()]

        return {"merchant": ids(self._merchant_index), "creator": ids(self._creator_index), "user": ids(self._user_index)}

    @classmethod
    def from_served_arrays(
        cls, schema: Mapping[str, Any], arrays: Mapping[str, np.ndarray], indexes: Mapping[str, HashedIds]
    ) -> FeatureAssembler:
        """An assembler over arrays from :meth:`served_arrays` (e.g. memory-mapped, read-only).

        ``indexes`` maps ``"merchant"``, ``"creator"`` and ``"user"`` to a
        :class:`~trustfeed.features._id_index.HashedIds` over the ids of each array's rows.
        Nothing is copied: the arrays are used as given.
        """
        plan, categories = _plan_from_schema(schema)
        self = cls.__new__(cls)
        self._context = None
        self._viewer_vocabulary = None
        self._plan = plan
        self._categories = tuple(categories)
        self.feature_names = tuple(name for name, _, _ in plan)
        self.monotone = tuple(direction for _, _, direction in plan)
        self.categorical = tuple(name for name, source, _ in plan if isinstance(source, MerchantCategory))
        self._position = {name: i for i, name in enumerate(self.feature_names)}
        self._merchant_index, self._creator_index, self._user_index = (
            indexes["merchant"], indexes["creator"], indexes["user"])
        n_m, n_c, n_u = (len(indexes[k]) + 1 for k in ("merchant", "creator", "user"))
        status_names = [f"status_{name}" for name in MerchantStatus._fields]
        rows_of = {"merchant_table": n_m, "creator_table": n_c, "category_code": n_m, "user_activity": n_u,
                   **dict.fromkeys(status_names, n_m)}
        for name, rows in rows_of.items():
            if name == "status_orders" and name not in arrays:
                continue
            if arrays[name].shape[0] != rows:
                raise SchemaError("served arrays", name, f"{rows} rows (ids + 1)", f"{arrays[name].shape[0]} rows")
        self._merchant_table, self._creator_table = arrays["merchant_table"], arrays["creator_table"]
        self._category_code, self._user_activity = arrays["category_code"], arrays["user_activity"]
        # tables written before a status field existed: NaN (not known) for it
        self._status = MerchantStatus(*(arrays[name] if name in arrays else np.full(n_m, np.nan) for name in status_names))
        widths = {"follows": n_c - 1, "user_merchant": n_m - 1, "user_category": len(categories),
                  "user_taste": len(categories)}
        for name in _PAIR_TABLES:
            if name in _OPTIONAL_PAIR_TABLES and f"{name}_keys" not in arrays:
                empty = np.zeros(0, dtype=np.int64)
                setattr(self, f"_{name}", _PairTable(empty, empty, widths[name], np.zeros(0), 0.0))
                continue
            setattr(self, f"_{name}", _PairTable.from_arrays(arrays[f"{name}_keys"], arrays[f"{name}_values"], widths[name]))
        merchant_pos: list[int] = []
        creator_pos: list[int] = []
        special: list[tuple[int, Source]] = []
        for j, (_, source, _) in enumerate(plan):
            if source.entity == "merchant":
                merchant_pos.append(j)
            elif source.entity == "creator":
                creator_pos.append(j)
            else:
                special.append((j, source))
        if arrays["merchant_table"].shape[1:] != (len(merchant_pos),) or arrays["creator_table"].shape[1:] != (len(creator_pos),):
            raise SchemaError("served arrays", "merchant_table/creator_table", "one column per table feature of the schema",
                              f"shapes {arrays['merchant_table'].shape}, {arrays['creator_table'].shape}")
        self._set_layout(merchant_pos, creator_pos, special)
        return self

    def _user_row(self, user_id: Any) -> int:
        if isinstance(self._user_index, HashedIds):
            return self._user_index.lookup_one(user_id) if isinstance(user_id, str) else -1
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
            "sources": [source.text() for _, source, _ in self._plan],
            "monotone": list(self.monotone),
            "categorical": list(self.categorical),
            "categories": {"merchant_category": list(self._categories)},
        }

    def merchant_status(self, merchant_ids: Any) -> MerchantStatus:
        """Trust and ban status of each merchant id (unknown: median trust, not banned)."""
        # an unknown id (-1) reads the last row: the cold-start status
        return self._status_of(_lookup_ids(self._merchant_index, merchant_ids))

    def _status_of(self, rows: np.ndarray) -> MerchantStatus:
        status = self._status
        return MerchantStatus(
            trust=status.trust[rows],
            banned_merchant=status.banned_merchant[rows],
            banned_entity=status.banned_entity[rows],
            known=status.known[rows],
            guarantees=status.guarantees[rows],
            orders=status.orders[rows],
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
        rows = _RequestRows(self, columns, n, m_rows, c_rows, u_rows, one_user, ts_ns)
        for j, values in self._special:
            block[:, j] = values(rows)
        out[:, self._special_slice if self._special_slice is not None else self._special_pos] = block
        return out, m_rows

    def transform_frame(self, candidates: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
        """:meth:`transform` as a DataFrame with named columns (for inspection and reports)."""
        index = candidates.index if isinstance(candidates, pd.DataFrame) else None
        return pd.DataFrame(self.transform(candidates), columns=list(self.feature_names), index=index)


class _EntityTables:
    """The assembler's per-entity values, as the merchant and creator sources read them."""

    __slots__ = ("_assembler",)

    def __init__(self, assembler: FeatureAssembler) -> None:
        self._assembler = assembler

    def merchant_column(self, column: str) -> np.ndarray:
        return self._assembler._merchant_matrix[:, self._assembler._merchant_col[column]]

    def merchant_percentile(self, column: str) -> np.ndarray:
        return self._assembler._merchant_percentile[column]

    def merchant_known(self) -> np.ndarray:
        return self._assembler._merchant_known

    def merchant_category(self) -> np.ndarray:
        return self._assembler._merchant_category

    def creator_column(self, column: str) -> np.ndarray:
        return self._assembler._creator_matrix[:, self._assembler._creator_col[column]]

    def creator_known(self) -> np.ndarray:
        return self._assembler._creator_known

    def engagement(self, column: str) -> np.ndarray:
        return self._assembler._engagement[:, self._assembler._engagement_col[column]]


class _RequestRows:
    """One transform call's looked-up rows, as the per-request sources read them.

    ``u_rows`` is one row for a single-user request (``one_user`` set) or one per candidate;
    ``ts_ns`` likewise one time or one per candidate. Unknown ids are ``-1``, which every
    table answers with its default (last) row.
    """

    __slots__ = ("_assembler", "_columns", "_n", "_m_rows", "_c_rows", "_u_rows", "_one_user", "_ts_ns", "_um_rows")

    def __init__(
        self, assembler: FeatureAssembler, columns: Any, n: int, m_rows: np.ndarray, c_rows: np.ndarray,
        u_rows: Any, one_user: int | None, ts_ns: Any,
    ) -> None:
        self._assembler = assembler
        self._columns = columns
        self._n = n
        self._m_rows = m_rows
        self._c_rows = c_rows
        self._u_rows = u_rows
        self._one_user = one_user
        self._ts_ns = ts_ns
        self._um_rows: np.ndarray | None = None

    def _find(self, table: _PairTable, right: np.ndarray) -> np.ndarray:
        # -1 (absent) selects the table's default value row
        if self._one_user is None:
            return table.find(self._u_rows, right)
        return table.find_one(self._one_user, right)

    def user_merchant(self, column: str) -> np.ndarray:
        table = self._assembler._user_merchant
        if self._um_rows is None:  # orders and bad orders share one lookup
            self._um_rows = self._find(table, self._m_rows)
        return table.values[self._um_rows, 0 if column == "orders" else 1]

    def user_follows(self) -> np.ndarray:
        followed_at = self._assembler._follows.values[self._find(self._assembler._follows, self._c_rows)]
        return (followed_at < self._ts_ns) & (self._ts_ns != _NAT)

    def user_category(self) -> np.ndarray:
        assembler = self._assembler
        return assembler._user_category.values[self._find(assembler._user_category, assembler._category_code.take(self._m_rows))]

    def user_taste(self) -> np.ndarray:
        assembler = self._assembler
        return assembler._user_taste.values[self._find(assembler._user_taste, assembler._category_code.take(self._m_rows))]

    def user_activity(self, column: str) -> np.ndarray:
        return self._assembler._user_activity[self._u_rows, 0 if column == "orders" else 1]

    def hour(self) -> np.ndarray:
        return np.where(self._ts_ns == _NAT, np.nan, (self._ts_ns // _NS_PER_HOUR) % 24)

    def live(self, field: str) -> np.ndarray:
        return _live_field(self._columns, field, self._n)


# --------------------------------------------------------------------------- plan helpers


def _derive_plan(
    merchants: pd.DataFrame,
    creators: pd.DataFrame,
    live_fields: tuple[str, ...],
    merchant_columns: tuple[str, ...] | None,
    creator_columns: tuple[str, ...] | None,
) -> list[tuple[str, Source, int]]:
    plan: list[tuple[str, Source, int]] = []
    for column in _pick_columns(merchants, merchant_columns):
        if column in PERCENTILE_FEATURES:
            plan.append((PERCENTILE_FEATURES[column], MerchantPercentile(column), _direction(column)))
            continue
        name = column if column.startswith("merchant_") else f"merchant_{column}"
        plan.append((name, MerchantColumn(column), _direction(column)))
    plan.append(("merchant_known", MerchantKnown(), 0))
    plan.append(("merchant_category", MerchantCategory(), 0))
    creator_picked = _pick_columns(creators, creator_columns)
    for column in creator_picked:
        name = column if column.startswith("creator_") else f"creator_{column}"
        plan.append((name, CreatorColumn(column), _direction(column)))
    plan.append(("creator_known", CreatorKnown(), 0))
    for name, source, snapshot_column in _ENGAGEMENT_FALLBACK:
        if snapshot_column not in creator_picked:
            plan.append((name, source, 0))
    taken = {name for name, _, _ in plan}
    for name, source in _CONTEXT_PLAN:
        if name in taken:  # the snapshot already provides a feature of that name
            name = f"context_{name}"
        plan.append((name, source, 0))
    for live in live_fields:
        plan.append((f"live_{live}", Live(live), 0))
    names = [name for name, _, _ in plan]
    if len(set(names)) != len(names):
        raise SchemaError("snapshot", None, "distinct feature names", f"duplicates in {names}")
    return plan


def _plan_from_schema(schema: Mapping[str, Any]) -> tuple[list[tuple[str, Source, int]], list[str]]:
    if schema.get("kind") != "trustfeed.features" or schema.get("format_version") != SCHEMA_FORMAT_VERSION:
        raise SchemaError(
            "feature schema",
            "format_version",
            f"trustfeed.features format {SCHEMA_FORMAT_VERSION}",
            f"{schema.get('kind')!r} format {schema.get('format_version')!r}",
        )
    names = list(schema["feature_names"])
    sources = [parse_source(text) for text in schema["sources"]]
    monotone = [int(v) for v in schema["monotone"]]
    if not len(names) == len(sources) == len(monotone):
        raise SchemaError("feature schema", "sources", f"{len(names)} sources and monotone entries", "other lengths")
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


def _standing(values: np.ndarray, population_rows: np.ndarray) -> np.ndarray:
    """Each value's mid-rank share among ``values[population_rows]`` (ties count half), in [0, 1].

    NaN stays NaN (LightGBM's missing value); without any finite value in the population
    every standing is NaN. Non-decreasing in the value.

    Examples
    --------
    >>> _standing(np.array([0.9, 0.2, 0.9, np.nan, 0.5]), np.array([0, 1, 2, 3])).tolist()
    [0.6666666666666666, 0.16666666666666666, 0.6666666666666666, nan, 0.3333333333333333]
    """
    pool = values[population_rows]
    pool = np.sort(pool[np.isfinite(pool)])
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if pool.size:
        below = np.searchsorted(pool, values[finite], side="left")
        at_most = np.searchsorted(pool, values[finite], side="right")
        out[finite] = (below + at_most) / (2.0 * pool.size)
    return out


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
