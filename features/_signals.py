"""Per-merchant and per-creator evidence counts from a point-in-time event log.

Ids are factorised once (:func:`encode_ids`) into dense integer codes, so every builder
here is numpy over whole columns plus grouped sums over codes (:mod:`._dask_backend`),
and the same code runs on the pandas and Dask backends. Counts are *effective* counts:
each row is weighted by

- time: ``0.5 ** (age_days / half_life)`` for the main (decayed) columns, or a 0/1 window
  indicator for the ``_<k>d`` columns;
- credibility of the order it belongs to (``order_weight``, see :func:`_order_credibility`):
  orders that look like brushing count for little, so fake volume can neither dilute a
  merchant's complaint rate nor add 5-star reviews.

Nothing here shrinks or combines: that is :mod:`._trust_index`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ._dask_backend import Aggregator
from ._early_warning import early_warning_counts
from ._schema import BENEFITS
from .outcomes import BAD_AFTER_SALES_REASONS, LOW_RATING_MAX, order_outcomes, went_bad

if TYPE_CHECKING:  # pragma: no cover
    from .events import EventLog
    from ._trust_config import TrustConfig

__all__ = [
    "SignalCounts", "Encoding", "CredibilityReferences", "encode_ids", "build_counts", "BAD_CASE_REASONS",
    "HOST_REPORT_CATEGORIES",
]  # fmt: skip

BAD_CASE_REASONS = BAD_AFTER_SALES_REASONS  # the one definition lives in .outcomes
HOST_REPORT_CATEGORIES = ("false_advertising", "inducement", "vulgar")
_DAY = 86_400.0
# The order-outcome columns the evidence reads (see build_counts).
_OUTCOMES_READ = ("order_id", "bad_case_at", "last_bad_case_at", "counterfeit_case_at", "bad_at")

# Which columns hold which kind of id (only the columns the builders read: factorising
# strings is the costliest step at scale). The first table of each kind fixes codes 0..n-1
# in its (sorted) row order, so merchants and creators come out sorted by id.
_ID_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "merchant": (
        ("merchants", "merchant_id"), ("orders", "merchant_id"), ("livestreams", "merchant_id"),
        ("creators", "merchant_id"), ("reports", "merchant_id"), ("violations", "merchant_id"),
        ("guarantees", "merchant_id"), ("nps", "merchant_id"),
    ),
    "user": (
        ("orders", "user_id"), ("reviews", "user_id"), ("reports", "reporter_id"), ("nps", "user_id"),
        ("follows", "user_id"), ("impressions", "user_id"),
    ),
    "order": (("orders", "order_id"), ("after_sales", "order_id"), ("reviews", "order_id")),
    "creator": (
        ("creators", "creator_id"), ("livestreams", "creator_id"), ("orders", "creator_id"),
        ("reports", "creator_id"), ("violations", "creator_id"), ("follows", "creator_id"),
        ("impressions", "creator_id"),
    ),
    "stream": (("livestreams", "stream_id"), ("reports", "stream_id")),
    "entity": (("merchants", "entity_id"),),
    "category": (("merchants", "category"),),
}  # fmt: skip


@dataclass
class Encoding:
    """Id strings by code, per kind of id (``vocab["merchant"][code] -> merchant_id``)."""

    vocab: dict[str, pd.api.extensions.ExtensionArray]

    def size(self, kind: str) -> int:
        """Number of distinct ids of ``kind``."""
        return len(self.vocab[kind])


def encode_ids(events: EventLog) -> tuple[EventLog, Encoding]:
    """Replace every id column by a dense ``int64`` code (-1 for null).

    Merchants are sorted by ``merchant_id`` and creators by ``creator_id`` first, so code
    order is id order; orders keep their row order, so an order's code is its row.
    """
    from .events import EventLog

    tables = {name: events[name] for name in events.tables}
    tables["merchants"] = tables["merchants"].sort_values("merchant_id", kind="stable").reset_index(drop=True)
    tables["creators"] = tables["creators"].sort_values("creator_id", kind="stable").reset_index(drop=True)
    encoded = {name: frame.copy(deep=False) for name, frame in tables.items()}

    def factorize(kind: str) -> tuple[np.ndarray, pd.api.extensions.ExtensionArray]:
        parts = [tables[t][c].astype("string") for t, c in _ID_KINDS[kind]]
        joined = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype="string")
        codes, uniques = pd.factorize(joined, use_na_sentinel=True)
        # Kept as the (Arrow-backed) string array: millions of order ids as Python objects
        # would cost hundreds of MB for ids that are only ever counted.
        # pd.array takes an Index at runtime; pandas-stubs allow it only for a few dtypes
        return codes, pd.array(uniques, dtype="string")  # type: ignore[call-overload]

    # Hashing the id strings is most of the encoding's time, and Arrow does it without holding
    # the interpreter lock: two threads encode two kinds at once, the largest kinds first.
    size = {kind: sum(len(tables[t]) for t, _ in columns) for kind, columns in _ID_KINDS.items()}
    largest_first = sorted(size, key=size.__getitem__, reverse=True)
    vocab: dict[str, pd.api.extensions.ExtensionArray] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Each kind's codes are split into their tables as soon as they are ready: holding all
        # kinds' codes at once grew Arrow's memory pool by their total (0.2 GB at 3M orders).
        for kind, (codes, vocab[kind]) in zip(largest_first, pool.map(factorize, largest_first)):
            columns = _ID_KINDS[kind]
            offsets = np.cumsum([0, *(len(tables[t]) for t, _ in columns)])
            for (table, column), start, stop in zip(columns, offsets[:-1], offsets[1:]):
                encoded[table][column] = codes[start:stop].astype("int64")
            del codes
    vocab = {kind: vocab[kind] for kind in _ID_KINDS}  # in the kinds' order, as before
    # Arrow's allocator keeps what the worker threads freed for reuse by those threads, which
    # will not run again: return it to the system.
    pa.default_memory_pool().release_unused()
    log = EventLog(encoded, events.missing, events.warnings, events.missing_columns)
    return log, Encoding(vocab)


@dataclass
class CredibilityReferences:
    """The platform- and shop-level references behind the orders' credibility weights.

    A build computes them from its own orders; passed to :func:`build_counts`, they are used
    instead (the live update carries them, so that one buyer's new orders change only that
    buyer's weights). Arrays are indexed by merchant code; codes past their end, and
    categories absent from ``category_median``, have no reference (no orders / the overall
    median).
    """

    category_median: pd.Series  # median paid amount per category code (-1: no category)
    overall_median: float  # median paid amount of all orders
    logs_activity: bool  # the platform logs impressions or follows at all
    records_deliveries: bool  # the log records deliveries at all (else praise before delivery cannot be told)
    ring_norm: float  # platform share of first-pass suspicion among paid orders
    shop_suspicion: np.ndarray  # per merchant code: first-pass suspicion summed over paid orders
    shop_orders: np.ndarray  # per merchant code: paid orders


@dataclass
class SignalCounts:
    """Evidence counts as of one time, before shrinkage (rows are dense codes)."""

    merchants: pd.DataFrame  # index: merchant code
    creators: pd.DataFrame  # index: creator code
    orders: pd.DataFrame  # per order: merchant, created_at, order_weight, bad (the fit's labels)
    users: pd.DataFrame  # index: user code; per-user history
    notes: list[str] = field(default_factory=list)
    references: CredibilityReferences | None = None  # what the credibility weights used


def _age_days(times: pd.Series, as_of: pd.Timestamp) -> np.ndarray:
    # Time columns may arrive tz-aware, naive-UTC (via numpy) or empty/object: normalise.
    stamps = pd.to_datetime(pd.Series(times), utc=True)
    delta = (as_of - stamps).dt.total_seconds().to_numpy(dtype="float64", na_value=np.nan)
    return np.maximum(delta / _DAY, 0.0)


def _time_weights(times: pd.Series, as_of: pd.Timestamp, config: TrustConfig, *, windowed: bool = True) -> dict[str, np.ndarray]:
    """``{"": decay, "_7d": window, ...}``: the weightings every evidence column gets.

    ``windowed=False``: the decay alone (callers that read no window column).
    """
    age = _age_days(times, as_of)
    weights = {"": np.exp2(-age / config.half_life_days)}
    for days in config.windows if windowed else ():
        weights[f"_{days}d"] = age < days  # a 0/1 factor, kept boolean (see build_counts)
    return weights


def _bool(series: pd.Series) -> np.ndarray:
    """Nullable boolean -> numpy bool with null = False."""
    return series.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _is(series: pd.Series, values: tuple[str, ...] | str) -> np.ndarray:
    """Enum/text column equals (one of) ``values``; null = False."""
    wanted = (values,) if isinstance(values, str) else values
    if isinstance(series.dtype, pd.CategoricalDtype):
        # Compare the small integer codes, not millions of strings.
        categories = list(series.cat.categories)
        positions = [categories.index(v) for v in wanted if v in categories]
        return np.isin(series.cat.codes.to_numpy(), positions)
    return series.isin(wanted).to_numpy(dtype=bool, na_value=False)


def _codes(series: pd.Series) -> np.ndarray:
    return series.to_numpy(dtype="int64")


def _lookup(table: np.ndarray, codes: np.ndarray, fill: float | int) -> np.ndarray:
    """``table[codes]`` with ``fill`` where a code is null (-1) or outside the table."""
    ok = (codes >= 0) & (codes < len(table))
    if not len(table):
        return np.full(len(codes), fill, dtype=np.result_type(table.dtype, type(fill)))
    return np.where(ok, table[np.where(ok, codes, 0)], fill)


class _Weighted(Mapping[str, np.ndarray]):
    """Evidence x time weight (x credibility) columns, computed one at a time on access.

    At ten million rows each column is 80 MB; building them lazily lets the aggregator sum
    and drop each before the next exists.
    """

    def __init__(
        self,
        evidence: Mapping[str, np.ndarray],
        time_weights: Mapping[str, np.ndarray],
        credibility: np.ndarray | float,
        windowed: tuple[str, ...],
    ) -> None:
        self._parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, values in evidence.items():
            for suffix, weight in time_weights.items():
                if suffix and name not in windowed:
                    continue
                self._parts[name + suffix] = (values, weight)
        self._credibility = credibility

    def __getitem__(self, name: str) -> np.ndarray:
        values, weight = self._parts[name]
        # (values * weight) * credibility, each product in one new array: the same values as
        # the plain expression (a 0/1 flag times a 0/1 window is the float 0 or 1 either way)
        # with one 80 MB temporary fewer per column at ten million rows
        out = np.multiply(values, weight, dtype="float64")
        credibility = self._credibility
        if not (isinstance(credibility, float) and credibility == 1.0):  # x * 1.0 is x
            out *= credibility
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


class _Lazy(Mapping[str, np.ndarray]):
    """Columns computed one at a time on access (the aggregator sums and drops each)."""

    def __init__(self, columns: Mapping[str, Callable[[], np.ndarray]]) -> None:
        self._columns = columns

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def _weighted(
    evidence: Mapping[str, np.ndarray],
    time_weights: Mapping[str, np.ndarray],
    credibility: np.ndarray | float = 1.0,
    windowed: tuple[str, ...] = (),
) -> Mapping[str, np.ndarray]:
    """Evidence x time weight (x credibility) columns, ready to sum (lazily computed)."""
    return _Weighted(evidence, time_weights, credibility, windowed)


def _factorize_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize`` of int64 keys (codes in order of first appearance), by one sort.

    The row number is packed into the low bits of each key, so a single (SIMD) sort of int64
    values groups equal keys with their rows ascending: each group's first row gives its code.
    Twice as fast as the hash at ten million keys; keys whose range leaves no room for the row
    bits fall back to the hash.
    """
    n = len(key)
    low = int(key.min()) if n else 0
    bits = max(1, (n - 1).bit_length())
    if not n or int(key.max()) - low >= 1 << (62 - bits):
        codes, uniques = pd.factorize(key)
        return codes.astype("int64", copy=False), np.asarray(uniques, dtype="int64")
    packed = np.subtract(key, low, dtype="int64")  # ((key - low) << bits) | row, in one array
    packed <<= bits
    packed |= np.arange(n, dtype="int64")
    packed.sort()
    rows = packed & ((1 << bits) - 1)
    packed >>= bits  # the keys, sorted
    starts = np.flatnonzero(np.concatenate([[True], packed[1:] != packed[:-1]]))
    first_row = rows[starts]
    # Rank each group by its first row without another sort: mark the first rows, count.
    is_first = np.zeros(n, dtype=bool)
    is_first[first_row] = True
    group_code = np.cumsum(is_first)[first_row] - 1
    del is_first
    codes = np.empty(n, dtype="int64")
    codes[rows] = np.repeat(group_code, np.diff(np.append(starts, n)))
    uniques = np.empty(len(starts), dtype="int64")
    uniques[group_code] = packed[starts] + low
    return codes, uniques


def _pair_counts(a: np.ndarray, b: np.ndarray, b_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows per (a, b) pair: returns (pair code per row, rows per pair, a of each pair)."""
    key = a.astype("int64") * max(b_size, 1) + b
    codes, uniques = _factorize_keys(key)
    per_pair = np.bincount(codes, minlength=len(uniques)).astype("float64")
    return codes, per_pair, (uniques // max(b_size, 1)).astype("int64")


def _order_credibility(
    tables: Mapping[str, pd.DataFrame],
    category: np.ndarray,
    enc: Encoding,
    config: TrustConfig,
    agg: Aggregator,
    references: CredibilityReferences | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, CredibilityReferences]:
    """Per-order suspicion of brushing and the credibility weight derived from it.

    A buyer's credibility comes from its history across the platform: an account whose only
    activity is buying from this one merchant (no other merchant, no feed impressions, no
    follows, no survey answers) is what a brushing account looks like. Repeat orders of one
    buyer at one merchant beyond ``per_buyer_cap`` count for ``cap / n`` each, and orders far
    below the category's typical amount ("tiny" orders) are suspicious too. Suspicions
    combine as independent pieces of evidence: ``s = 1 - prod(1 - s_i)``.
    """
    orders = tables["orders"]
    n_users, n_merchants = enc.size("user"), enc.size("merchant")
    user = _codes(orders["user_id"])
    merchant = _codes(orders["merchant_id"])
    paid = ~_is(orders["status"], "cancelled")
    pair_code, pair_orders, pair_user = _pair_counts(user, merchant, n_merchants)
    history = agg.sum(pair_user, n_users, {"user_orders": pair_orders, "user_merchants": np.ones(len(pair_orders))})
    activity = np.zeros(n_users)
    for table in ("impressions", "follows", "nps"):
        activity += agg.sum(_codes(tables[table]["user_id"]), n_users, {"n": np.ones(len(tables[table]))})["n"]
    # "No other history" is only evidence when the platform logs browsing or follows at all;
    # without such logs (a plain order export) every one-off buyer would look isolated.
    logs_activity = any(len(tables[t]) for t in ("impressions", "follows")) if references is None else references.logs_activity
    inactive = (activity[user] <= 0) & logs_activity
    isolated = (history["user_merchants"][user] <= 1) & inactive
    per_pair = pair_orders[pair_code]
    # The suspicions are folded into ``keep = prod(1 - s_i)`` one at a time, in place (each
    # per-order array freed once folded in: at ten million orders each is 80 MB, and this
    # was the build's peak). The products are taken in the same order as written out.
    # An isolated buyer is only half-suspect (real one-off buyers exist); one that keeps buying
    # from its only merchant is what a brushing account does.
    # (Each suspicion is a new array of its own, turned into ``1 - s`` in place by _fold.)
    keep = np.where(isolated, np.where(per_pair >= 2, 1.0, config.isolated_buyer_suspicion), 0.0)
    np.subtract(1.0, keep, out=keep)
    # A buyer of several shops that never browses, follows or answers a survey looks like a
    # brushing ring account: weaker evidence.
    _fold(keep, (inactive & ~isolated) * (config.isolated_buyer_suspicion / 2))
    del inactive, isolated
    # repeat orders: 1.0 - np.minimum(1.0, cap / per_pair), in one array
    repeat = np.divide(config.per_buyer_cap, per_pair)
    del per_pair
    np.minimum(1.0, repeat, out=repeat)
    _fold(keep, np.subtract(1.0, repeat, out=repeat))
    del repeat

    amount = orders["amount"].to_numpy(dtype="float64")
    order_category = _lookup(category, merchant, -1)
    if references is None:
        typical = pd.Series(amount[paid], copy=False).groupby(order_category[paid]).median()
        overall = float(np.median(amount[paid])) if paid.any() else 0.0
    else:
        typical, overall = references.category_median, references.overall_median
    reference = _category_reference(order_category, typical, overall)
    del order_category
    _fold(keep, (amount < config.tiny_amount_fraction * reference) * config.tiny_amount_suspicion)  # tiny orders
    del reference

    records_deliveries = bool(tables["orders"]["delivered_at"].notna().any()) if references is None else references.records_deliveries
    praise = _premature_praise(tables, enc, records_deliveries)
    praise *= 1.0 - config.premature_praise_weight
    _fold(keep, praise)
    del praise

    first = np.subtract(1.0, keep, out=keep)
    del keep
    p = paid.astype("float64")
    if references is None:
        norm = float(np.dot(first, p)) / float(p.sum()) if p.sum() > 0 else 0.0
        references = CredibilityReferences(
            category_median=typical,
            overall_median=overall,
            logs_activity=logs_activity,
            records_deliveries=records_deliveries,
            ring_norm=norm,
            shop_suspicion=np.bincount(merchant, weights=first * p, minlength=n_merchants),
            shop_orders=np.bincount(merchant, weights=p, minlength=n_merchants),
        )
    del p
    s_ring = config.ring_buyer_suspicion * _ring_association(
        first, user, merchant, paid, pair_code, pair_user, n_users, n_merchants, config.ring_prior_orders, references
    )
    # 1 - (1 - first) * (1 - s_ring), in the arrays already held
    suspicion = np.subtract(1.0, first, out=first)
    suspicion *= np.subtract(1.0, s_ring, out=s_ring)
    del s_ring
    np.subtract(1.0, suspicion, out=suspicion)
    order_weight = np.subtract(1.0, suspicion)
    order_weight *= paid
    # A plain dict of columns: a DataFrame would consolidate (copy) them into 2-D blocks,
    # doubling the largest temporary of the build at ten million orders.
    evidence: dict[str, Any] = {
        "order": _codes(orders["order_id"]),
        "user": user,
        "merchant": merchant,
        "created_at": pd.to_datetime(orders["created_at"], utc=True).reset_index(drop=True),
        "amount": amount,
        "paid": paid,
        "suspicion": suspicion,
        "order_weight": order_weight,
        "pair": pair_code,
    }
    users = pd.DataFrame(
        {
            "user_orders": history["user_orders"],
            "user_merchants": history["user_merchants"],
            "user_activity": activity,
        }
    )
    return evidence, users, references


def _fold(keep: np.ndarray, suspicion: np.ndarray) -> None:
    """``keep *= 1 - suspicion`` in place; ``suspicion`` (a float array of the caller's own) becomes ``1 - suspicion``.

    The same values as the expression written out, without its temporary (80 MB a time at ten
    million orders, in the build's peak).
    """
    if suspicion.dtype != np.float64:  # an integer setting times a flag: as 1.0 - x would convert it
        suspicion = suspicion.astype("float64")
    np.subtract(1.0, suspicion, out=suspicion)
    keep *= suspicion


def _category_reference(order_category: np.ndarray, typical: pd.Series, overall: float) -> np.ndarray:
    """Each order's category median amount (``typical``, by category code; -1: none), else ``overall``.

    A dense table indexed by code + 1 (a category's median is one number), not a hash map of
    ten million codes.
    """
    codes = typical.index.to_numpy(dtype="int64")
    values = typical.to_numpy(dtype="float64")
    top = max(int(codes.max()) if len(codes) else -1, int(order_category.max()) if len(order_category) else -1)
    table = np.full(top + 2, overall, dtype="float64")
    table[codes + 1] = np.where(np.isnan(values), overall, values)
    return table[order_category + 1]


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` cut or zero-padded to ``size`` entries."""
    out = np.zeros(size)
    n = min(size, len(values))
    out[:n] = values[:n]
    return out


def _ring_association(
    first: np.ndarray,
    user: np.ndarray,
    merchant: np.ndarray,
    paid: np.ndarray,
    pair_code: np.ndarray,
    pair_user: np.ndarray,
    n_users: int,
    n_merchants: int,
    prior_orders: float,
    references: CredibilityReferences,
) -> np.ndarray:
    """Per order: how strongly the buyer's shops are ones where *other* buyers look fake.

    Aged brushing accounts (they follow hosts, place decoy orders at honest shops) pass every
    per-account cue; what they cannot hide is where they buy: mostly at shops whose other
    orders are suspicious well beyond the platform norm. For each (buyer, shop) pair the shop's
    first-pass suspicious share is taken *without the buyer's own orders* (so an account
    cannot incriminate itself), shrunk towards the norm with ``prior_orders`` pseudo-orders,
    and divided by the norm. The buyer's association is the **median** ratio over its shops
    (robust to a minority of decoys, and to a real buyer who once bought at a brushing shop),
    mapped to ``1 - 1 / ratio``: the share of the shops' suspicion that is excess over the
    norm. Buyers of a single shop get 0 here: the isolation cues already judge them.

    The norm and the shops' totals come from ``references`` (this build's own, unless an
    update carries them); the buyer's own share is taken out of the shop's total, never below
    nothing.
    """
    p = paid.astype("float64")
    norm = references.ring_norm
    if norm <= 0.0 or not len(pair_user):
        return np.zeros(len(user))
    n_pairs = len(pair_user)
    pair_merchant = np.zeros(n_pairs, dtype="int64")
    pair_merchant[pair_code] = merchant
    shop_s = _padded(references.shop_suspicion, n_merchants)
    shop_n = _padded(references.shop_orders, n_merchants)
    # (each per-pair temporary is dropped once used: they are as long as the orders)
    # (the arithmetic in place, in the same order as written out: the shop's rest without the
    # buyer, never below nothing, shrunk towards the norm, over the norm)
    rest_s = shop_s[pair_merchant]
    rest_s -= np.bincount(pair_code, weights=first * p, minlength=n_pairs)
    np.maximum(rest_s, 0.0, out=rest_s)
    rest_n = shop_n[pair_merchant]
    rest_n -= np.bincount(pair_code, weights=p, minlength=n_pairs)
    np.maximum(rest_n, 0.0, out=rest_n)
    del p, pair_merchant
    rest_s += prior_orders * norm
    rest_n += prior_orders
    others = np.divide(rest_s, rest_n, out=rest_s)
    del rest_s, rest_n
    ratio = np.maximum(others, 0.0, out=others)
    ratio /= norm
    ratio += 0.0  # turns -0.0 into 0.0 for the bit trick below
    del others
    # Ratios sorted within each buyer, by one sort of a packed int64 key: the buyer code in the
    # high half, the ratio's float32 bits in the low half (for non-negative floats the bit
    # pattern orders like the value). np.lexsort on two keys took 40 s at 8M pairs (random
    # access merge passes); this sort takes ~2.5 s. The median is exact up to float32
    # rounding of the ratio (relative 6e-8).
    packed = (pair_user.astype("int64") << 32) | ratio.astype("float32").view("uint32").astype("int64")
    del ratio
    packed.sort()
    sorted_ratio = (packed & 0xFFFFFFFF).astype("uint32").view("float32").astype("float64")
    del packed
    n_shops = np.bincount(pair_user, minlength=n_users)
    start = np.concatenate([[0], np.cumsum(n_shops)[:-1]])
    lo = np.minimum(start + (n_shops - 1) // 2, n_pairs - 1)
    hi = np.minimum(start + n_shops // 2, n_pairs - 1)
    median = np.where(n_shops > 0, 0.5 * (sorted_ratio[lo] + sorted_ratio[hi]), 1.0)
    association = np.where(n_shops >= 2, np.clip(1.0 - 1.0 / np.maximum(median, 1e-12), 0.0, 1.0), 0.0)
    return association[user]


def _premature_praise(tables: Mapping[str, pd.DataFrame], enc: Encoding, records_deliveries: bool) -> np.ndarray:
    """Per order row: a 4-5 star review was written before the order was delivered.

    Praise for goods not yet received is a brushing tell: the order is suspect, not just the
    review. Only when the log records deliveries at all (else nothing can be told).
    """
    orders, reviews = tables["orders"], tables["reviews"]
    delivered = pd.to_datetime(orders["delivered_at"], utc=True)
    if not len(reviews) or not records_deliveries:
        return np.zeros(len(orders))
    order_code = _codes(orders["order_id"])
    arrived = np.full(enc.size("order"), -1, dtype="int64")
    arrived[order_code] = np.where(
        delivered.notna().to_numpy(), delivered.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64(0, "ns")).view("int64"), -1
    )
    reviewed = _codes(reviews["order_id"])
    ok = (reviewed >= 0) & (reviewed < len(arrived))
    reviewed = np.where(ok, reviewed, 0)
    written = pd.to_datetime(reviews["created_at"], utc=True).to_numpy(dtype="datetime64[ns]").view("int64")
    praise = reviews["rating"].to_numpy(dtype="float64", na_value=np.nan) >= 4
    when = arrived[reviewed]
    early = ok & praise & ((when < 0) | (written < when))
    flagged = np.bincount(reviewed[early], minlength=len(arrived)) > 0
    return flagged[order_code].astype("float64")


def build_counts(
    tables: Mapping[str, pd.DataFrame],
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    enc: Encoding,
    category: np.ndarray,
    references: CredibilityReferences | None = None,
    *,
    risk_only: bool = False,
) -> SignalCounts:
    """All evidence counts as of ``as_of`` from encoded point-in-time tables.

    ``category`` is the category code of every merchant code (-1: unknown). ``references``:
    the credibility references to use (default: computed from these tables; returned in the
    result either way). ``risk_only``: only the merchant columns the risk signals read
    (:func:`._trust_index.derive_signals` and the entity roll-up), as the index fit's earlier
    cuts need them: no window, early-warning or raw columns, no creators, users or per-order
    labels (empty frames); the columns it does compute are the same as a full build's.
    """
    n_merchants, n_orders_vocab = enc.size("merchant"), enc.size("order")
    orders = tables["orders"]
    order_frame, users, references = _order_credibility(tables, category, enc, config, agg, references)
    tw = _time_weights(orders["created_at"], as_of, config, windowed=not risk_only)
    merchant = order_frame["merchant"]
    paid = order_frame["paid"]
    weight = order_frame["order_weight"]
    suspicion = order_frame["suspicion"]
    counts: dict[str, np.ndarray] = {}

    # --- orders -------------------------------------------------------------------------
    promised = orders["promised_ship_by"]
    due = (promised < as_of).to_numpy(dtype=bool, na_value=False) & paid
    shipped = orders["shipped_at"]
    on_time = (shipped <= promised).to_numpy(dtype=bool, na_value=False)
    late = due & ~on_time
    presale = _bool(orders["presale"]) & paid
    follower = _from_followers(tables, enc) & paid
    # Flags stay boolean (1 byte a row, not 8): each is multiplied by its float weights only
    # when summed, and a boolean times a float is the float of 0 or 1 times it, bit for bit.
    evidence_paid: dict[str, np.ndarray] = {
        "n_orders": paid,
        "n_due": due,
        "n_late": late,
        "n_presale": presale,
        "n_follower_orders": follower,
    }
    if not risk_only:
        evidence_paid["gmv"] = order_frame["amount"] * paid
    counts.update(agg.sum(merchant, n_merchants, _weighted(evidence_paid, tw, weight, ("n_orders", "n_due", "n_late"))))
    evidence_all = {"n_orders_all": np.ones(len(orders), dtype=bool), "n_cancelled": ~paid}
    counts.update(agg.sum(merchant, n_merchants, _weighted(evidence_all, tw, 1.0 - suspicion, ("n_orders_all", "n_cancelled"))))
    # Brushing evidence is not credibility-weighted: it is what the weight is made of.
    brushing = {"suspicion": suspicion * paid * tw[""], "n_suspicion": paid * tw[""]}
    if not risk_only:
        brushing["n_orders_raw"] = paid.astype("float64")
    counts.update(agg.sum(merchant, n_merchants, brushing))
    # Per-order columns of these sums are dropped as soon as they are summed: at ten million
    # orders each is 80 MB, and the build's peak comes later (creator and report sums).
    del tw, evidence_paid, evidence_all, brushing, due, late, on_time, presale, follower
    counts.update(_repurchase(order_frame, as_of, config, agg, enc))

    # Dense per-order lookups, indexed by order code (those of the reviews only once the
    # after-sales sums and the order outcomes are done with: each is as long as the order ids).
    order_code = order_frame["order"]
    merchant_of = np.full(n_orders_vocab, -1, dtype="int64")
    merchant_of[order_code] = merchant
    weight_of = np.zeros(n_orders_vocab)
    weight_of[order_code] = weight

    # --- after-sales, reviews -------------------------------------------------------------
    # What became of each order, in the orders table's row order (as order_frame); only the
    # columns read below are built (the whole table is a dozen columns of every order)
    read = [c for c in _OUTCOMES_READ if not (risk_only and c == "bad_at")]  # bad_at: early warning, labels
    outcomes = order_outcomes(tables, columns=read).iloc[: len(orders)]
    after_sales = _after_sales(tables["after_sales"], outcomes, merchant_of, weight_of, as_of, config, agg, n_merchants, windowed=not risk_only)
    warning: dict[str, np.ndarray] = {}
    delay_columns: dict[str, pd.Series] = {}
    if not risk_only:
        outcomes = outcomes[["bad_at"]]
        warning = _early_warning(order_frame, orders, outcomes, as_of, config, agg, enc)
        bad = went_bad(outcomes)
        if config.label_delay_correction:  # when each bad order became known: the fit's delay (labels)
            delay_columns = {"bad_at": outcomes["bad_at"].reset_index(drop=True)}
    # The order outcomes are not needed past this point: freed before the review lookups.
    del outcomes
    buyer_of = np.full(n_orders_vocab, -1, dtype="int64")
    buyer_of[order_code] = order_frame["user"]
    # Delivery time per order (ns since epoch; -1 = not delivered as of the cut). None when
    # the log records no deliveries at all: then "reviewed before delivery" cannot be told.
    delivered_of: np.ndarray | None = None
    if references.records_deliveries:
        delivered = pd.to_datetime(orders["delivered_at"], utc=True)
        delivered_of = np.full(n_orders_vocab, -1, dtype="int64")
        delivered_of[order_code] = np.where(
            delivered.notna().to_numpy(), delivered.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64(0, "ns")).view("int64"), -1
        )
        del delivered
    lookups = (merchant_of, weight_of, buyer_of, delivered_of)
    reviews = _reviews(tables["reviews"], lookups, as_of, config, agg, enc, windowed=not risk_only)
    del lookups, merchant_of, weight_of, buyer_of, delivered_of
    # (the counts keep the order they always had: after-sales, reviews, early warning)
    counts.update(after_sales)
    counts.update(reviews)
    counts.update(warning)

    # --- reports, violations, guarantees, nps, streams ------------------------------------
    streams = tables["livestreams"]
    stream_merchant = np.full(enc.size("stream"), -1, dtype="int64")
    stream_merchant[_codes(streams["stream_id"])] = _codes(streams["merchant_id"])
    stream_creator = np.full(enc.size("stream"), -1, dtype="int64")
    stream_creator[_codes(streams["stream_id"])] = _codes(streams["creator_id"])
    # Sorted (buyer, merchant) keys of paid orders: who may credibly complain about whom.
    # Sorted, not deduplicated: a membership test by searchsorted needs only the order, and
    # numpy 2.4's hash-based np.unique took over a second per million keys (60x a sort).
    buyers = np.sort(order_frame["user"][paid] * max(n_merchants, 1) + merchant[paid])
    counts.update(_merchant_reports(tables["reports"], stream_merchant, as_of, config, agg, enc, buyers))
    counts.update(_violations(tables["violations"], as_of, config, agg, n_merchants))
    counts.update(_guarantees(tables["guarantees"], agg, n_merchants))
    counts.update(_nps(tables["nps"], as_of, config, agg, enc))
    stream_tw = _time_weights(streams["started_at"], as_of, config, windowed=False)
    counts.update(agg.sum(_codes(streams["merchant_id"]), n_merchants, {"n_streams": stream_tw[""]}))
    if risk_only:
        empty = pd.DataFrame()
        return SignalCounts(merchants=pd.DataFrame(counts), creators=empty, orders=empty, users=empty, references=references)

    creators = _creators(tables, stream_creator, as_of, config, agg, enc)
    # Only what the index fit's labels need is kept per order (memory at 10M orders); the
    # arrays themselves, not copies (pandas copies arrays given to a frame by default)
    labels = pd.DataFrame(
        {
            "merchant": merchant,
            "created_at": order_frame["created_at"],
            "order_weight": weight,
            "bad": bad,
            **delay_columns,
        },
        copy=False,
    )
    return SignalCounts(
        merchants=pd.DataFrame(counts),
        creators=creators,
        orders=labels,
        users=users,
        references=references,
    )


def _seconds(times: pd.Series) -> np.ndarray:
    """Epoch seconds of a time column (NaN where null)."""
    stamps = pd.to_datetime(pd.Series(times), utc=True).reset_index(drop=True)
    ns = stamps.to_numpy(dtype="datetime64[ns]").view("int64").astype("float64")
    return np.where(stamps.isna().to_numpy(), np.nan, ns / 1e9)


def _early_warning(
    order_frame: Mapping[str, Any],
    orders: pd.DataFrame,
    outcomes: pd.DataFrame,
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    enc: Encoding,
) -> dict[str, np.ndarray]:
    """Counts of the early-warning signals (:mod:`._early_warning`).

    A complaint is an order going bad (:mod:`.outcomes`), dated when it did.
    """
    bad_at = _seconds(outcomes["bad_at"])
    complained = ~np.isnan(bad_at)
    return early_warning_counts(
        merchant=order_frame["merchant"],
        user=order_frame["user"],
        paid=order_frame["paid"],
        created_s=_seconds(order_frame["created_at"]),
        promised_s=_seconds(orders["promised_ship_by"]),
        shipped_known=orders["shipped_at"].notna().to_numpy(),
        presale=_bool(orders["presale"]),
        complaint_merchant=np.asarray(order_frame["merchant"])[complained],
        complaint_s=bad_at[complained],
        as_of=as_of,
        config=config,
        agg=agg,
        n_merchants=enc.size("merchant"),
        n_users=enc.size("user"),
    )


def _from_followers(tables: Mapping[str, pd.DataFrame], enc: Encoding) -> np.ndarray:
    """Whether the buyer followed the order's creator before ordering.

    Read from the orders' :data:`FOLLOWED_COLUMN` when :func:`with_followed` put it there.
    """
    orders, follows = tables["orders"], tables["follows"]
    if FOLLOWED_COLUMN in orders.columns:
        return orders[FOLLOWED_COLUMN].to_numpy(dtype=bool)
    if not len(follows):
        return np.zeros(len(orders), dtype=bool)
    n_creators = max(enc.size("creator"), 1)
    order_key = _codes(orders["user_id"]) * n_creators + _codes(orders["creator_id"])
    follow_key = _codes(follows["user_id"]) * n_creators + _codes(follows["creator_id"])
    followed = pd.to_datetime(follows["followed_at"], utc=True).reset_index(drop=True)
    first = followed.groupby(follow_key).min()
    followed_at = pd.Series(order_key, copy=False).map(first)
    known = (_codes(orders["creator_id"]) >= 0) & followed_at.notna().to_numpy()
    created = pd.to_datetime(orders["created_at"], utc=True).reset_index(drop=True)
    before = (pd.to_datetime(followed_at, utc=True) < created).to_numpy(dtype=bool, na_value=False)
    return known & before


FOLLOWED_COLUMN = "_followed_before"
"""Orders column of :func:`with_followed`: the buyer followed the creator before ordering."""


def with_followed(log: EventLog, enc: Encoding) -> EventLog:
    """The encoded log with each order's "buyer followed the creator first" flag computed once.

    The flag of an order is the same in every point-in-time cut that holds the order: a
    follow before the order was placed is before any cut after it. The index fit's earlier
    cuts (:meth:`EventLog.before` keeps the column) then read it instead of each grouping
    the follows and looking up every order again.
    """
    from .events import EventLog

    tables = {name: log[name] for name in log.tables}
    orders = tables["orders"].copy(deep=False)
    orders[FOLLOWED_COLUMN] = _from_followers(tables, enc)
    tables["orders"] = orders
    return EventLog(tables, log.missing, log.warnings, log.missing_columns)


def _repurchase(
    order_frame: Mapping[str, Any], as_of: pd.Timestamp, config: TrustConfig, agg: Aggregator, enc: Encoding
) -> dict[str, np.ndarray]:
    """Credible buyers and those who bought again from the merchant within the horizons.

    Per (buyer, merchant) pair: a pair with 2+ paid orders whose first and last lie within
    ``days`` of each other repurchased within ``days``. Pairs are weighted by their mean
    order credibility (a brushing account's repeat orders are not loyalty) and by the decay
    of their last order.
    """
    n_merchants = enc.size("merchant")
    paid = order_frame["paid"]
    pair = order_frame["pair"][paid]
    n_pairs = int(order_frame["pair"].max()) + 1 if len(order_frame["pair"]) else 0
    seconds = (order_frame["created_at"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    t = seconds.to_numpy(dtype="float64")[paid]
    del seconds
    # (per-order and per-pair temporaries are dropped once used: at ten million orders each
    # is 80 MB and they all lived until the sums before)
    first = np.full(n_pairs, np.inf)
    last = np.full(n_pairs, -np.inf)
    np.minimum.at(first, pair, t)
    np.maximum.at(last, pair, t)
    del t
    pair_n = np.bincount(pair, minlength=n_pairs).astype("float64")
    mean_w = np.bincount(pair, weights=order_frame["order_weight"][paid], minlength=n_pairs) / np.maximum(pair_n, 1)
    pair_merchant = np.full(n_pairs, -1, dtype="int64")
    pair_merchant[pair] = order_frame["merchant"][paid]
    del pair
    seen = pair_n > 0
    age = np.maximum((as_of.timestamp() - np.where(seen, last, 0.0)) / _DAY, 0.0)
    weight = np.where(seen, mean_w * np.exp2(-age / config.half_life_days), 0.0)
    del age, mean_w
    span = np.where(seen, last - first, np.inf) / _DAY
    del seen, first, last
    repeat = pair_n >= 2
    del pair_n

    def repurchased(days: float) -> Callable[[], np.ndarray]:
        return lambda: weight * (repeat & (span <= days))

    columns: dict[str, Callable[[], np.ndarray]] = {"n_buyers": lambda: weight}
    for days in config.repurchase_days:
        columns[f"n_repurchasers_{days}d"] = repurchased(days)
    return agg.sum(pair_merchant, n_merchants, _Lazy(columns))  # pairs of unpaid-only orders have code -1


def _after_sales(
    cases: pd.DataFrame,
    outcomes: pd.DataFrame,
    merchant_of: np.ndarray,
    weight_of: np.ndarray,
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    n_merchants: int,
    *,
    windowed: bool = True,
) -> dict[str, np.ndarray]:
    """Case counts per merchant; bad orders (from the order ``outcomes``) weighted as of their latest bad case.

    Only quality / not_as_described / counterfeit cases are quality evidence; no-reason and
    logistics returns are counted separately and never enter the quality rates.
    """
    order = _codes(cases["order_id"])
    known = (order >= 0) & (order < len(merchant_of))
    order = np.where(known, order, 0)
    merchant = np.where(known, merchant_of[order], -1)
    weight = np.where(known, weight_of[order], 0.0)
    resolved = cases["resolved_at"].notna().to_numpy()
    days = ((cases["resolved_at"] - cases["opened_at"]).dt.total_seconds() / _DAY).to_numpy(
        dtype="float64", na_value=np.nan
    )
    days = np.nan_to_num(days, nan=0.0)
    favor = _is(cases["outcome"], "buyer_favor") & resolved
    refund = _is(cases["type"], ("refund_only", "refund_without_return")) & resolved
    fast = refund & (days <= config.fast_refund_days)
    slow = resolved & (days > config.slow_resolution_days)

    # One order with two quality cases is still one bad order: count orders, not cases. Its
    # evidence is as recent as its latest bad case: weighting it by the first one made a
    # second, earlier complaint about an already bad order age the evidence and raise trust.
    is_bad = outcomes["bad_case_at"].notna().to_numpy(dtype=bool)
    flagged = _codes(outcomes["order_id"])[is_bad]
    tw_orders = _time_weights(outcomes["last_bad_case_at"][is_bad].reset_index(drop=True), as_of, config, windowed=windowed)
    flagged_counts = agg.sum(
        merchant_of[flagged],
        n_merchants,
        _weighted(
            {
                "n_bad_cases": np.ones(len(flagged)),
                "n_counterfeit_cases": outcomes["counterfeit_case_at"].notna().to_numpy(dtype="float64")[is_bad],
            },
            tw_orders,
            weight_of[flagged],
            ("n_bad_cases",),
        ),
    )
    tw = _time_weights(cases["opened_at"], as_of, config, windowed=False)
    no_reason = _is(cases["reason"], "no_reason")
    # A no-reason return is the buyer's statutory right, granted automatically: it says
    # nothing about the goods or the service, so it is kept out of every service metric.
    service = (~no_reason).astype("float64")
    evidence = {
        "n_cases": service,
        "n_resolved": resolved * service,
        "n_buyer_favor": favor * service,
        "n_intervened": _bool(cases["platform_intervened"]) * service,
        "n_refund_cases": refund * service,
        "n_fast_refunds": fast * service,
        "n_slow_resolutions": slow * service,
        "resolution_days_sum": np.where(resolved, days, 0.0) * service,
    }
    case_counts = agg.sum(merchant, n_merchants, _weighted(evidence, {"": tw[""]}, weight))
    case_counts.update(agg.sum(merchant, n_merchants, {"n_no_reason_cases": no_reason.astype("float64")}))
    return {**flagged_counts, **case_counts}


def _reviews(
    reviews: pd.DataFrame,
    lookups: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    enc: Encoding,
    *,
    windowed: bool = True,
) -> dict[str, np.ndarray]:
    """Credibility-weighted review evidence (the per-order 1-2 star flag is in the order outcomes).

    A review counts only if its author bought the order; it carries the order's credibility,
    one buyer's many reviews of one merchant share ``per_buyer_cap`` reviews' weight, and a
    4-5 star review written before the order was delivered weighs ``premature_praise_weight``.
    """
    merchant_of, weight_of, buyer_of, delivered_of = lookups
    n_merchants = enc.size("merchant")
    order = _codes(reviews["order_id"])
    known = (order >= 0) & (order < len(merchant_of))
    order = np.where(known, order, 0)
    merchant = np.where(known, merchant_of[order], -1)
    author = _codes(reviews["user_id"])
    by_buyer = known & (author == buyer_of[order])
    pair_code, per_pair, _ = _pair_counts(author, np.maximum(merchant, 0), n_merchants)
    credibility = np.where(known, weight_of[order], 0.0) * by_buyer * np.minimum(1.0, config.per_buyer_cap / per_pair[pair_code])
    rating = reviews["rating"].to_numpy(dtype="float64", na_value=np.nan)
    if delivered_of is not None:
        # Praise for goods not yet received is no evidence about them (a classic brushing
        # tell); a complaint before delivery is a real complaint about the delivery, so only
        # 4-5 star reviews written before delivery are discounted.
        written = pd.to_datetime(reviews["created_at"], utc=True).to_numpy(dtype="datetime64[ns]").view("int64")
        arrived = delivered_of[order]
        premature = known & ((arrived < 0) | (written < arrived)) & (rating >= 4)
        credibility = credibility * np.where(premature, config.premature_praise_weight, 1.0)
    evidence: dict[str, np.ndarray] = {
        "n_reviews": np.ones(len(reviews)),
        "n_low_ratings": (rating <= LOW_RATING_MAX).astype("float64"),
        "rating_shortfall": (5.0 - rating) / 4.0,
    }
    for detail in ("quality", "service", "logistics"):
        values = reviews[detail].astype("float64").to_numpy(na_value=np.nan)
        present = ~np.isnan(values)
        evidence[f"n_{detail}_ratings"] = present.astype("float64")
        evidence[f"{detail}_shortfall"] = np.where(present, (5.0 - np.nan_to_num(values, nan=5.0)) / 4.0, 0.0)
    tw = _time_weights(reviews["created_at"], as_of, config, windowed=windowed)
    counts = agg.sum(merchant, n_merchants, _weighted(evidence, tw, credibility, ("n_reviews", "n_low_ratings")))
    counts.update(agg.sum(merchant, n_merchants, {"n_reviews_raw": np.ones(len(reviews)), "rating_sum_raw": rating}))
    return counts


def _report_weight(
    reports: pd.DataFrame, target: np.ndarray, target_size: int, config: TrustConfig, buyers: np.ndarray | None = None
) -> np.ndarray:
    """Verified reports count 1, unreviewed ``unverified_report_weight``, rejected 0.

    One reporter's repeated reports of one target share a single report's weight, so a
    competitor cannot multiply an (unverified) accusation by repeating it. ``buyers``
    (sorted ``user * target_size + target`` keys of paid orders): an unreviewed report from
    an account that never bought from the target weighs ``non_buyer_report_weight`` times
    less, so a campaign of fresh accounts cannot sink a shop before the platform reviews it.
    Such reports are also not independent pieces of evidence when they come together: the
    unreviewed non-buyer reports against one target within one ``report_burst_hours`` bucket
    are one campaign, true or false together, and share a single report's weight (0: off).
    """
    verified = reports["verified"].astype("boolean")
    unreviewed = verified.isna().to_numpy()
    base = np.where(unreviewed, config.unverified_report_weight, verified.fillna(False).to_numpy(dtype=bool).astype("float64"))
    reporter = _codes(reports["reporter_id"])
    pair_code, per_pair, _ = _pair_counts(reporter, np.maximum(target, 0), target_size)
    shared = per_pair[pair_code]
    if buyers is not None and len(reports):
        key = reporter * max(target_size, 1) + np.maximum(target, 0)
        hit = np.searchsorted(buyers, key)
        bought = (hit < len(buyers)) & (buyers[np.minimum(hit, max(len(buyers) - 1, 0))] == key) if len(buyers) else np.zeros(len(key), dtype=bool)
        stranger = unreviewed & ~bought
        base = np.where(stranger, base * config.non_buyer_report_weight, base)
        if config.report_burst_hours > 0 and stranger.any():
            hours = _seconds(reports["created_at"]) / 3600.0
            bucket = np.floor(np.nan_to_num(hours, nan=0.0) / config.report_burst_hours).astype("int64")
            bucket = np.where(stranger, bucket - bucket[stranger].min(), -1)
            burst_code, per_burst, _ = _pair_counts(np.maximum(target, 0), np.maximum(bucket, 0), int(bucket.max()) + 1)
            in_burst = np.bincount(burst_code, weights=stranger.astype("float64"), minlength=len(per_burst))[burst_code]
            shared = np.where(stranger, np.maximum(shared, in_burst), shared)
    return base / shared


def _merchant_reports(
    reports: pd.DataFrame,
    stream_merchant: np.ndarray,
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    enc: Encoding,
    buyers: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    n_merchants = enc.size("merchant")
    merchant = _codes(reports["merchant_id"])
    stream = _codes(reports["stream_id"])
    via_stream = _lookup(stream_merchant, stream, -1)
    merchant = np.where(merchant >= 0, merchant, via_stream)
    weight = _report_weight(reports, merchant, n_merchants, config, buyers)
    tw = _time_weights(reports["created_at"], as_of, config, windowed=False)
    evidence = {
        "n_counterfeit_reports": _is(reports["category"], "counterfeit").astype("float64"),
        "n_host_reports": _is(reports["category"], HOST_REPORT_CATEGORIES).astype("float64"),
        "n_reports_weighted": np.ones(len(reports)),
    }
    counts = agg.sum(merchant, n_merchants, _weighted(evidence, {"": tw[""]}, weight))
    verified = reports["verified"].astype("boolean")
    rejected = (~verified.fillna(True)).to_numpy(dtype=bool)
    counts.update(
        agg.sum(merchant, n_merchants, {"n_reports_raw": np.ones(len(reports)), "n_rejected_reports_raw": rejected.astype("float64")})
    )
    return counts


def _violations(
    violations: pd.DataFrame, as_of: pd.Timestamp, config: TrustConfig, agg: Aggregator, n_merchants: int
) -> dict[str, np.ndarray]:
    tw = _time_weights(violations["created_at"], as_of, config, windowed=False)
    severity = violations["severity"].to_numpy(dtype="float64", na_value=1.0)
    host = _codes(violations["creator_id"]) >= 0
    evidence = {
        "violation_severity": severity * tw[""],
        "host_violation_severity": severity * host * tw[""],
        "n_violations": np.ones(len(violations)),
        "n_bans": _is(violations["penalty"], "ban").astype("float64"),
        "n_suspensions": _is(violations["penalty"], "suspension").astype("float64"),
    }
    return agg.sum(_codes(violations["merchant_id"]), n_merchants, evidence)


def _guarantees(guarantees: pd.DataFrame, agg: Aggregator, n_merchants: int) -> dict[str, np.ndarray]:
    """Benefits active at the cut: enrolled before it and not (yet known to have) left."""
    active = guarantees["left_at"].isna().to_numpy()
    evidence = {f"benefit_{b}": (_is(guarantees["benefit"], b) & active).astype("float64") for b in BENEFITS}
    counts = {k: np.minimum(v, 1.0) for k, v in agg.sum(_codes(guarantees["merchant_id"]), n_merchants, evidence).items()}
    counts["n_benefits"] = np.sum(list(counts.values()), axis=0) if counts else np.zeros(n_merchants)
    return counts


def _nps(nps: pd.DataFrame, as_of: pd.Timestamp, config: TrustConfig, agg: Aggregator, enc: Encoding) -> dict[str, np.ndarray]:
    """NPS answers; one user's repeated answers about one merchant share one answer's weight."""
    n_merchants = enc.size("merchant")
    merchant = _codes(nps["merchant_id"])
    score = nps["score"].to_numpy(dtype="float64", na_value=np.nan)
    pair_code, per_pair, _ = _pair_counts(_codes(nps["user_id"]), np.maximum(merchant, 0), n_merchants)
    tw = _time_weights(nps["created_at"], as_of, config, windowed=False)
    evidence = {
        "n_nps": np.ones(len(nps)),
        "n_promoters": (score >= 9).astype("float64"),
        "n_detractors": (score <= 6).astype("float64"),
    }
    return agg.sum(merchant, n_merchants, _weighted(evidence, {"": tw[""]}, 1.0 / per_pair[pair_code]))


def _creators(
    tables: Mapping[str, pd.DataFrame],
    stream_creator: np.ndarray,
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    enc: Encoding,
) -> pd.DataFrame:
    """Per-creator evidence: streams, impressions and engagement, host reports, violations."""
    n_creators = enc.size("creator")
    counts: dict[str, np.ndarray] = {}
    streams = tables["livestreams"]
    tw = _time_weights(streams["started_at"], as_of, config, windowed=False)
    counts.update(
        agg.sum(_codes(streams["creator_id"]), n_creators, {"n_streams": tw[""], "n_streams_raw": np.ones(len(streams))})
    )
    impressions = tables["impressions"]
    tw = _time_weights(impressions["ts"], as_of, config, windowed=False)
    counts.update(
        agg.sum(
            _codes(impressions["creator_id"]),
            n_creators,
            {
                "n_impressions": tw[""],
                "n_clicks": _bool(impressions["clicked"]) * tw[""],
                "n_purchases": _bool(impressions["purchased"]) * tw[""],
                "n_impressions_raw": np.ones(len(impressions)),
            },
        )
    )
    reports = tables["reports"]
    creator = _codes(reports["creator_id"])
    stream = _codes(reports["stream_id"])
    creator = np.where(creator >= 0, creator, _lookup(stream_creator, stream, -1))
    weight = _report_weight(reports, creator, n_creators, config)
    host = _is(reports["category"], HOST_REPORT_CATEGORIES)
    tw = _time_weights(reports["created_at"], as_of, config, windowed=False)
    counts.update(agg.sum(creator, n_creators, {"n_host_reports": weight * host * tw[""]}))
    violations = tables["violations"]
    tw = _time_weights(violations["created_at"], as_of, config, windowed=False)
    counts.update(
        agg.sum(
            _codes(violations["creator_id"]),
            n_creators,
            {
                "host_violation_severity": violations["severity"].to_numpy(dtype="float64", na_value=1.0) * tw[""],
                "n_violations": np.ones(len(violations)),
            },
        )
    )
    return pd.DataFrame(counts)
