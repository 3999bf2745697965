"""The encoded event history of a live trust state, indexed so that an update never scans it.

A live update (:mod:`._live`) needs, per update: the stored rows that new rows replace, the
buyers whose rows cross a time edge, the rows of a set of buyers, the buyers linked to them
(a review ties its author to the order's buyer; stranger reports of one burst share a weight),
and the first paid order of each merchant. A scan of the history for each of these is what
made an update grow with the history. :class:`History` keeps the history in two parts:

- the **base**: the rows of the last full build (or of the last compaction), never changed;
  per table the rows grouped by buyer (and by order, merchant, stream, burst) and sorted by
  each time an edge is read on, so each question costs the rows it returns;
- the **tail**: the rows added since (new rows and re-sent versions of stored ones), scanned
  in full; base rows replaced by a re-sent row are marked dead.

The small registries (merchants, creators, livestreams, violations, guarantees) are kept whole.
When the tail outgrows a share of the base, the two are merged into a new base (amortised:
one re-indexing per that many new rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._columns import _object_values, _ranges
from ._schema import TABLE_SPECS
from ._signals import _seconds
from ._trust_config import TrustConfig
from .errors import SchemaError
from .events import EventLog

__all__ = ["USER_TABLES", "History", "SortedKeys", "Vocabulary"]

# Tables whose rows belong to a buyer (after-sales cases: the buyer of the order), and the
# column naming it. Every other table is a small registry, kept whole.
USER_TABLES = ("orders", "after_sales", "reviews", "reports", "nps", "follows", "impressions")
REGISTRIES = ("merchants", "creators", "livestreams", "violations", "guarantees")
_OWNER: dict[str, str | None] = {
    "orders": "user_id",
    "after_sales": None,
    "reviews": "user_id",
    "reports": "reporter_id",
    "nps": "user_id",
    "follows": "user_id",
    "impressions": "user_id",
}
# Re-sendable tables with many rows: a re-sent row marks the stored one dead.
_REPLACEABLE = {"orders": "order_id", "after_sales": "case_id"}
_RESENDABLE_REGISTRIES = ("merchants", "creators", "livestreams", "guarantees")
NAT = np.iinfo(np.int64).min


def ns(times: pd.Series) -> np.ndarray:
    """UTC nanoseconds (int64; the smallest int64 for null, which no time edge selects)."""
    return pd.DatetimeIndex(pd.to_datetime(times, utc=True)).as_unit("ns").asi8


def _i64(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].to_numpy(dtype="int64")


class Rows:
    """The rows of one base table: a DataFrame in memory, or a memory-mapped Arrow table on disk.

    Either way rows are read by number (:meth:`take`), so a stored history is never read whole
    by an update.
    """

    def __init__(self, frame: pd.DataFrame | None = None, table: Any = None, dtypes: Mapping[str, Any] | None = None) -> None:
        self.frame = frame
        self.table = table
        self.dtypes = dict(dtypes or {})
        self.n = len(frame) if frame is not None else int(table.num_rows)

    def __len__(self) -> int:
        return self.n

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows ``rows`` (in that order) as a DataFrame with the history's dtypes."""
        rows = np.asarray(rows, dtype="int64")
        if self.frame is not None:
            frame = self.frame if columns is None else self.frame[columns]
            return frame.take(rows).reset_index(drop=True)
        table = self.table if columns is None else self.table.select(columns)
        out = table.take(rows).to_pandas()
        return out.astype({c: d for c, d in self.dtypes.items() if c in out.columns and out[c].dtype != d})

    def whole(self) -> pd.DataFrame:
        """Every row (compaction and saving only)."""
        return self.frame if self.frame is not None else self.take(np.arange(self.n))


class Vocabulary:
    """Ids of one kind by code: the ids of the last full build plus those added since.

    The full build's ids are looked up by a hash table built once (in memory) or by binary
    search in a sorted copy stored with the state (:class:`SortedKeys`: nothing to hash when a
    stored state is loaded). ``names``: the full build's ids by code (None for kinds the
    snapshot never names, which are only counted).
    """

    def __init__(self, ids: Any = None, *, lookup: Any = None, names: Any = None, size: int | None = None) -> None:
        if ids is not None:
            index = pd.Index(pd.array(ids, dtype="string"))
            # Hash the ids now (pandas builds an index's hash table on first use): once per
            # full build, not inside the first update.
            index.get_indexer(index[:1])
            lookup, names, size = index, index.array, len(index)
        self.lookup = lookup
        self.names = names
        self.n_base = int(size if size is not None else 0)
        self.added: pd.Index = pd.Index(pd.array([], dtype="string"))

    def __len__(self) -> int:
        return self.n_base + len(self.added)

    def codes(self, values: pd.Series, added: pd.Index) -> tuple[np.ndarray, pd.Index]:
        """Codes of ``values`` (-1: null); ids met for the first time extend ``added``."""
        strings = pd.Index(values.astype("string"))
        null = np.asarray(strings.isna())
        code = np.asarray(self.lookup.get_indexer(strings), dtype="int64") if self.n_base else np.full(len(strings), -1, dtype="int64")
        unknown = (code < 0) & ~null
        if unknown.any():
            rest = strings[unknown]
            fresh = pd.Index(rest.unique()).difference(added, sort=False)
            added = added.append(fresh) if len(fresh) else added
            code[unknown] = self.n_base + added.get_indexer(rest)
        return np.where(null, -1, code), added

    def strings(self, extra: pd.Index | None = None) -> Any:
        """Every id by code (``extra``: ids added by an update in progress, after those added before)."""
        added = self.added if extra is None or not len(extra) else self.added.append(extra)
        if not len(added):
            return self.names
        return pd.array(pa.chunked_array([pa.array(self.names), pa.array(added.array)]).combine_chunks(), dtype="string")


class SortedKeys:
    """Ids looked up by binary search in a sorted fixed-width copy (``get_indexer`` as ``pd.Index``'s).

    ``keys``: the UTF-8 ids sorted (``S<width>``); ``codes``: each sorted id's code. Both may
    be memory-mapped: a lookup reads a few pages per id.
    """

    def __init__(self, keys: np.ndarray, codes: np.ndarray) -> None:
        self.keys = keys
        self.codes = codes

    @classmethod
    def of(cls, ids: Any) -> SortedKeys:
        """From ids by code (strings, no nulls)."""
        array = pa.array(ids, type=pa.large_string()) if not isinstance(ids, pa.Array) else ids
        order = np.asarray(pc.sort_indices(array).to_numpy(), dtype="int64")
        data = array.take(pa.array(order)).cast(pa.large_binary()).to_numpy(zero_copy_only=False)
        keys = np.asarray(data, dtype="S") if len(data) else np.zeros(0, dtype="S1")
        return cls(keys, order)

    def __len__(self) -> int:
        return len(self.keys)

    def with_ids(self, ids: pd.Index, first_code: int) -> SortedKeys:
        """These keys and ``ids`` (no nulls, none already here) with codes ``first_code, first_code + 1, ...``."""
        if not len(ids):
            return self
        raw = np.array([str(v).encode("utf-8") for v in _object_values(pd.Series(ids))], dtype="S")
        width = max(self.keys.dtype.itemsize, raw.dtype.itemsize)
        keys = self.keys if self.keys.dtype.itemsize == width else self.keys.astype(f"S{width}")
        raw = raw.astype(f"S{width}")
        order = np.argsort(raw, kind="stable")
        at = np.searchsorted(keys, raw[order])
        return SortedKeys(np.insert(keys, at, raw[order]), np.insert(np.asarray(self.codes), at, first_code + order))

    def get_indexer(self, values: pd.Index) -> np.ndarray:
        out = np.full(len(values), -1, dtype="int64")
        if not len(self.keys) or not len(values):
            return out
        width = self.keys.dtype.itemsize
        raw = [None if v is None else str(v).encode("utf-8") for v in _object_values(pd.Series(values))]
        fits = np.array([v is not None and len(v) <= width and not v.endswith(b"\0") for v in raw], dtype=bool)
        if not fits.any():
            return out
        query = np.array([v for v, ok in zip(raw, fits) if ok], dtype=self.keys.dtype)
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        hit = self.keys[at] == query
        found = np.flatnonzero(fits)
        out[found[hit]] = self.codes[at[hit]]
        return out


class Groups:
    """Base rows grouped by an int64 code (``-1``: null, a group of its own).

    :meth:`rows` returns the rows of a set of codes in time proportional to them.
    """

    def __init__(self, order: np.ndarray, starts: np.ndarray) -> None:
        self.order = order
        self.starts = starts

    @classmethod
    def of(cls, codes: np.ndarray) -> Groups:
        slots = np.asarray(codes, dtype="int64") + 1
        order = np.argsort(slots, kind="stable")
        counts = np.bincount(slots, minlength=1) if len(slots) else np.zeros(1, dtype="int64")
        return cls(order, np.concatenate([[0], np.cumsum(counts)]).astype("int64"))

    def rows(self, codes: np.ndarray) -> np.ndarray:
        """Base rows (ascending) whose code is one of ``codes`` (``-1``: the null group)."""
        slots = _unique(np.asarray(codes, dtype="int64") + 1)
        slots = slots[(slots >= 0) & (slots < len(self.starts) - 1)]
        lo, hi = self.starts[slots], self.starts[slots + 1]
        sizes = hi - lo
        total = int(sizes.sum())
        if not total:
            return np.zeros(0, dtype="int64")
        return np.sort(self.order[_ranges(lo, sizes)])


class Sorted:
    """Base rows sorted by an int64 value (a time in ns, a burst key)."""

    def __init__(self, values: np.ndarray, order: np.ndarray) -> None:
        self.values = values
        self.order = order

    @classmethod
    def of(cls, values: np.ndarray) -> Sorted:
        order = np.argsort(values, kind="stable")
        return cls(np.asarray(values)[order], order)

    def between(self, lo: int, hi: int) -> np.ndarray:
        """Rows with ``lo <= value <= hi``."""
        a, b = np.searchsorted(self.values, [lo, hi], side="left")[0], np.searchsorted(self.values, hi, side="right")
        return self.order[a:b]

    def equal(self, keys: np.ndarray) -> np.ndarray:
        """Rows whose value is one of ``keys``."""
        keys = _unique(keys)
        lo = np.searchsorted(self.values, keys, side="left")
        hi = np.searchsorted(self.values, keys, side="right")
        sizes = hi - lo
        total = int(sizes.sum())
        if not total:
            return np.zeros(0, dtype="int64")
        return self.order[_ranges(lo, sizes)]


class Growable:
    """An int64 array indexed by code that grows with new codes.

    An update builds the next content beside the current one (:meth:`with_values`: one copy,
    so a failed update leaves the state as it was) and adopts it when it commits.
    """

    def __init__(self, values: np.ndarray, fill: int, *, copy: bool = True) -> None:
        self.data = np.array(values, dtype="int64", copy=copy)
        self.size = len(values)
        self.fill = fill

    def view(self) -> np.ndarray:
        return self.data[: self.size]

    def with_values(self, size: int, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A copy of the first ``size`` entries with ``values`` set at ``codes`` (the state is untouched)."""
        out = np.empty(size, dtype="int64")
        n = min(size, self.size)
        out[:n] = self.data[:n]
        out[n:] = self.fill
        out[codes] = values
        return out

    def assign(self, values: np.ndarray) -> None:
        """Make ``values`` (an array of :meth:`with_values`, owned by no one else) the current content.

        Adopted, not copied: :meth:`with_values` made a new array anyway.
        """
        self.data = np.asarray(values, dtype="int64")
        self.size = len(values)


def burst_keys(reports: pd.DataFrame, stream_merchant: np.ndarray, config: TrustConfig) -> np.ndarray:
    """Per report: a key of its (merchant, ``report_burst_hours`` bucket); -1 for reports about no merchant.

    The merchant is the report's own or its stream's.
    """
    merchant = _i64(reports, "merchant_id")
    stream = _i64(reports, "stream_id")
    if len(stream_merchant):
        by_stream = stream_merchant[np.clip(stream, 0, len(stream_merchant) - 1)]
        merchant = np.where((merchant < 0) & (stream >= 0) & (stream < len(stream_merchant)), by_stream, merchant)
    hours = _seconds(reports["created_at"]) / 3600.0 / max(config.report_burst_hours, 1e-300)
    bucket = np.nan_to_num(np.floor(hours), nan=-1.0).astype("int64")
    return np.where(merchant >= 0, (merchant << 32) | (bucket & 0xFFFFFFFF), -1)


def stream_merchants(streams: pd.DataFrame, n_streams: int) -> np.ndarray:
    out = np.full(n_streams, -1, dtype="int64")
    out[_i64(streams, "stream_id")] = _i64(streams, "merchant_id")
    return out


@dataclass
class View:
    """The history as of one side of an update: which base rows live, the tail, the buyers."""

    alive: dict[str, np.ndarray | None]
    tail: dict[str, pd.DataFrame]
    buyer_of: np.ndarray  # buyer code per order code (-1: no order row)
    registries: dict[str, pd.DataFrame]
    stream_merchant: np.ndarray


@dataclass
class History:
    """See the module docstring. Build with :meth:`build`; never changed in place by a failed update."""

    base: dict[str, Rows]
    groups: dict[str, Groups]
    times: dict[str, Sorted]
    bursts: Sorted | None
    order_row: np.ndarray  # base row of each order code known at the base (-1: none)
    case_row: Any  # base row by case id (``get_indexer`` as a ``pd.Index`` of the case ids by row)
    orphans: dict[str, np.ndarray]  # base after-sales / review rows whose order had no buyer at the base
    base_stream_merchant: np.ndarray
    current: View
    buyer_store: Growable
    first_paid: np.ndarray  # per merchant code: the earliest paid order (epoch s; inf: none)
    missing: tuple[str, ...]
    warnings: tuple[str, ...]
    missing_columns: Mapping[str, tuple[str, ...]]
    config: TrustConfig
    dtypes: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_buyer_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="int64"))  # buyer_of at the base

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, known: EventLog, n_order_codes: int, n_stream_codes: int, config: TrustConfig) -> History:
        """Index an encoded point-in-time log (every row is base)."""
        frames = {name: known[name].reset_index(drop=True) for name in USER_TABLES}
        base = {name: Rows(frame) for name, frame in frames.items()}
        registries = {name: known[name] for name in REGISTRIES}
        orders = frames["orders"]
        order_row = np.full(n_order_codes, -1, dtype="int64")
        order_row[_i64(orders, "order_id")] = np.arange(len(orders))
        buyer_of = np.full(n_order_codes, -1, dtype="int64")
        buyer_of[_i64(orders, "order_id")] = _i64(orders, "user_id")
        stream_merchant = stream_merchants(registries["livestreams"], n_stream_codes)
        groups = {name: Groups.of(_i64(frames[name], column)) for name, column in _OWNER.items() if column is not None}
        groups["orders_by_merchant"] = Groups.of(_i64(orders, "merchant_id"))
        groups["after_sales_by_order"] = Groups.of(_i64(frames["after_sales"], "order_id"))
        groups["reviews_by_order"] = Groups.of(_i64(frames["reviews"], "order_id"))
        groups["reports_by_stream"] = Groups.of(_i64(frames["reports"], "stream_id"))
        times = {
            "orders.created_at": Sorted.of(ns(orders["created_at"])),
            "orders.promised_ship_by": Sorted.of(ns(orders["promised_ship_by"])),
            "reviews.created_at": Sorted.of(ns(frames["reviews"]["created_at"])),
            "after_sales.opened_at": Sorted.of(ns(frames["after_sales"]["opened_at"])),
        }
        bursts = Sorted.of(burst_keys(frames["reports"], stream_merchant, config)) if config.report_burst_hours > 0 else None
        orphans = {
            name: np.flatnonzero(_lookup(buyer_of, _i64(frames[name], "order_id")) < 0) for name in ("after_sales", "reviews")
        }
        current = View(
            alive={name: None for name in USER_TABLES},
            tail={name: frames[name].iloc[:0] for name in USER_TABLES},
            buyer_of=buyer_of,
            registries=registries,
            stream_merchant=stream_merchant,
        )
        return cls(
            base=base, groups=groups, times=times, bursts=bursts, order_row=order_row,
            case_row=pd.Index(frames["after_sales"]["case_id"].astype("string")), orphans=orphans,
            base_stream_merchant=stream_merchant, current=current, buyer_store=Growable(buyer_of, -1),
            first_paid=_first_paid(orders, np.inf), missing=known.missing, warnings=known.warnings,
            missing_columns=dict(known.missing_columns), config=config,
            dtypes={name: dict(known[name].dtypes) for name in known.tables}, base_buyer_of=buyer_of.copy(),
        )  # fmt: skip

    def rows(self, name: str, view: View | None = None) -> int:
        view = view if view is not None else self.current
        alive = view.alive[name]
        return (len(self.base[name]) if alive is None else int(alive.sum())) + len(view.tail[name])

    def log(self, view: View | None = None) -> EventLog:
        """An event log for the snapshot's finishing steps: registries whole, buyer tables by size only."""
        view = view if view is not None else self.current
        tables = dict(view.registries)
        for name in USER_TABLES:
            tables[name] = pd.DataFrame(index=pd.RangeIndex(self.rows(name, view)))
        return EventLog(tables, self.missing, self.warnings, self.missing_columns)

    def tail_rows(self) -> int:
        return sum(len(frame) for frame in self.current.tail.values())

    def base_rows(self) -> int:
        return sum(len(frame) for frame in self.base.values())

    # ------------------------------------------------------------------ merging

    def merge(
        self, fresh: EventLog, t0: pd.Timestamp, n_order_codes: int, n_stream_codes: int, named: EventLog | None = None,
    ) -> tuple[View, dict[str, np.ndarray]]:
        """The view after applying ``fresh`` (encoded), and per replaceable table the stored rows replaced.

        Raises :class:`SchemaError` as :func:`~trustfeed.features.merge_events` does; its example
        row is taken from ``named`` (``fresh`` before encoding, same rows in the same order) when
        given, so that it names the caller's ids rather than the state's codes. The replaced
        rows are returned as base rows (``<name>``) and tail rows (``<name>.tail``).
        """
        from ._incremental import _RESENDABLE, _example, merge_table

        cur = self.current
        alive: dict[str, np.ndarray | None] = dict(cur.alive)
        tail: dict[str, pd.DataFrame] = dict(cur.tail)
        replaced: dict[str, np.ndarray] = {}
        for name in USER_TABLES:
            spec = TABLE_SPECS[name]
            new = fresh[name]
            if not len(new):
                continue
            early = (new[spec.event_time] < t0).to_numpy(dtype=bool, na_value=False)
            if early.any() and name not in _RESENDABLE:
                raise SchemaError(
                    name, spec.event_time, f"times at or after the state's as-of {t0.isoformat()}",
                    f"{int(early.sum())} earlier rows (state rows of this table cannot be sent again)",
                )  # fmt: skip
            if name in _REPLACEABLE:
                base_hit, tail_hit, known = self._stored(name, new, cur)
                shown = named[name] if named is not None else new
                if (early & ~known).any():
                    raise SchemaError(
                        name, spec.event_time, f"times at or after the state's as-of {t0.isoformat()}",
                        f"{int((early & ~known).sum())} earlier rows the state does not hold (e.g."
                        f" {_example(shown, spec.key, early & ~known)})",
                    )  # fmt: skip
                if (~early & known).any():
                    raise SchemaError(
                        name, ", ".join(spec.key), "keys the state does not hold yet (or a re-sent row with its original time)",
                        f"{int((~early & known).sum())} rows with a stored key and another"
                        f" {spec.event_time} (e.g. {_example(shown, spec.key, ~early & known)})",
                    )  # fmt: skip
                replaced[name] = base_hit
                replaced[f"{name}.tail"] = tail_hit
                if len(base_hit):
                    stored = alive[name]
                    mask = np.ones(len(self.base[name]), dtype=bool) if stored is None else stored.copy()
                    mask[base_hit] = False
                    alive[name] = mask
                kept = tail[name]
                if len(tail_hit):
                    keep = np.ones(len(kept), dtype=bool)
                    keep[tail_hit] = False
                    kept = kept.loc[keep]
                tail[name] = _append(kept, new, self.dtypes[name])
            else:
                tail[name] = _append(tail[name], new, self.dtypes[name])
        registries = dict(cur.registries)
        for name in REGISTRIES:
            if len(fresh[name]):
                registries[name] = merge_table(name, registries[name], fresh[name], t0)
        new_orders = fresh["orders"]
        buyer_of = self.buyer_store.with_values(n_order_codes, _i64(new_orders, "order_id"), _i64(new_orders, "user_id"))
        streams = stream_merchants(registries["livestreams"], n_stream_codes) if len(fresh["livestreams"]) else _grown(cur.stream_merchant, n_stream_codes)
        return View(alive, tail, buyer_of, registries, streams), replaced

    def _stored(self, name: str, new: pd.DataFrame, cur: View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the new rows of a replaceable table: stored base rows and tail rows with their key, and which new rows have one."""
        column = _REPLACEABLE[name]
        tail = cur.tail[name]
        if name == "orders":
            code = _i64(new, column)
            row = _lookup(self.order_row, code)
            tail_codes = _i64(tail, column)
            tail_hit = np.flatnonzero(np.isin(tail_codes, code)) if len(tail) else np.zeros(0, dtype="int64")
            in_tail = np.isin(code, tail_codes) if len(tail) else np.zeros(len(code), dtype=bool)
        else:
            keys = pd.Index(new[column].astype("string"))
            row = self.case_row.get_indexer(keys).astype("int64") if len(self.case_row) else np.full(len(new), -1, dtype="int64")
            tail_keys = pd.Index(tail[column].astype("string"))
            tail_hit = np.flatnonzero(tail_keys.isin(keys)) if len(tail) else np.zeros(0, dtype="int64")
            in_tail = keys.isin(tail_keys) if len(tail) else np.zeros(len(new), dtype=bool)
        alive = cur.alive[name]
        in_base = (row >= 0) & (True if alive is None else alive[np.maximum(row, 0)])
        return row[in_base], tail_hit, np.asarray(in_base | in_tail, dtype=bool)

    def first_paid_after(self, view: View, fresh: EventLog, replaced: Mapping[str, np.ndarray], n_merchants: int) -> np.ndarray:
        """Each merchant's earliest paid order in ``view`` (epoch s; inf: none), per merchant code.

        New orders can only lower it. A replaced order row can raise it only if it was the
        merchant's earliest paid order (a later one leaves the minimum where it was): only
        those merchants are recomputed from their own orders.
        """
        from ._signals import _is

        out = np.full(n_merchants, np.inf)
        out[: len(self.first_paid)] = self.first_paid[:n_merchants]
        empty = np.zeros(0, dtype="int64")
        columns = ["merchant_id", "status", "created_at"]
        gone = pd.concat([self.base["orders"].take(replaced.get("orders", empty), columns),
                          self.current.tail["orders"].iloc[replaced.get("orders.tail", empty)][columns]])  # fmt: skip
        merchant = _i64(gone, "merchant_id")
        known = (merchant >= 0) & (merchant < n_merchants)
        paid = known & ~np.asarray(_is(gone["status"], "cancelled"), dtype=bool)
        # not ">": a paid row with an unknown time (NaN) or at the minimum may have set it
        earliest = paid & ~(_seconds(gone["created_at"]) > out[np.where(known, merchant, 0)])
        affected = _unique(merchant[earliest])
        if len(affected):
            rows = self._alive("orders", self.groups["orders_by_merchant"].rows(affected), view)
            tail = view.tail["orders"]
            out[affected] = np.inf
            out = _first_paid(self.base["orders"].take(rows), np.inf, out)
            out = _first_paid(tail.loc[np.isin(_i64(tail, "merchant_id"), affected)], np.inf, out)
        return _first_paid(fresh["orders"], np.inf, out)

    def commit(self, view: View, first_paid: np.ndarray) -> None:
        """Make ``view`` current (the update succeeded)."""
        self.buyer_store.assign(view.buyer_of)
        view.buyer_of = self.buyer_store.view()
        self.current = view
        self.first_paid = first_paid

    # ------------------------------------------------------------------ reading

    def owners(self, name: str, frame: pd.DataFrame, buyer_of: np.ndarray) -> np.ndarray:
        """The buyer code each row of a buyer table belongs to (a case: the order's buyer)."""
        column = _OWNER[name]
        return _lookup(buyer_of, _i64(frame, "order_id")) if column is None else _i64(frame, column)

    def gather(self, view: View, dirty: np.ndarray) -> dict[str, pd.DataFrame]:
        """The tables of ``view`` restricted to the rows of flagged buyers (registries whole).

        ``dirty``: flags per buyer slot (``code + 1``; slot 0: no buyer). A review is kept when
        its author or its order's buyer is flagged, as :func:`_rows` in the update always did.
        """
        users = np.flatnonzero(dirty) - 1
        tables: dict[str, pd.DataFrame] = dict(view.registries)
        order_rows = self._base_rows("orders", users, view)
        tail_orders = view.tail["orders"]
        tail_order_keep = _flag(dirty, _i64(tail_orders, "user_id"))
        orders = _concat(self.base["orders"].take(order_rows), tail_orders.loc[tail_order_keep], self.dtypes["orders"])
        tables["orders"] = orders
        # Orders of flagged buyers in this view, and (with the null slot) those without a buyer.
        codes = _i64(orders, "order_id")
        for name in ("after_sales", "reviews"):
            rows = [self.groups[f"{name}_by_order"].rows(codes)]
            if dirty[0]:
                orphan = self.orphans[name]
                rows.append(orphan[_lookup(view.buyer_of, _i64(self.base[name].take(orphan, ["order_id"]), "order_id")) < 0])
                nobody = _i64(view.tail["orders"], "order_id")[_i64(view.tail["orders"], "user_id") < 0]
                rows.append(self.groups[f"{name}_by_order"].rows(nobody))
            if name == "reviews":
                rows.append(self.groups["reviews"].rows(users))
            picked = self._alive(name, _unique(np.concatenate(rows)), view)
            # the buyer may have changed since the base: keep the rows whose buyer in this view is flagged
            frame = self.base[name].take(picked)
            keep = _flag(dirty, _lookup(view.buyer_of, _i64(frame, "order_id")))
            if name == "reviews":
                keep |= _flag(dirty, _i64(frame, "user_id"))
            tail = view.tail[name]
            tail_keep = _flag(dirty, _lookup(view.buyer_of, _i64(tail, "order_id")))
            if name == "reviews":
                tail_keep |= _flag(dirty, _i64(tail, "user_id"))
            tables[name] = _concat(frame.loc[keep], tail.loc[tail_keep], self.dtypes[name])
        for name in ("reports", "nps", "follows", "impressions"):
            owned = self._base_rows(name, users, view)
            tail = view.tail[name]
            tables[name] = _concat(self.base[name].take(owned), tail.loc[_flag(dirty, self.owners(name, tail, view.buyer_of))], self.dtypes[name])
        return tables

    def _base_rows(self, name: str, users: np.ndarray, view: View) -> np.ndarray:
        return self._alive(name, self.groups[name].rows(users), view)

    def _alive(self, name: str, rows: np.ndarray, view: View) -> np.ndarray:
        alive = view.alive.get(name)
        return rows if alive is None else rows[alive[rows]]

    # ------------------------------------------------------------------ finding the buyers

    def dirty(
        self, old: View, new: View, fresh: EventLog, replaced: dict[str, np.ndarray], t0: pd.Timestamp, cut: pd.Timestamp,
        n_users: int,
    ) -> np.ndarray:
        """Flags per buyer slot: buyers whose contribution can have changed between ``t0`` and ``cut``."""
        config = self.config
        dirty = np.zeros(n_users + 1, dtype=bool)

        def mark(users: np.ndarray) -> None:
            dirty[np.asarray(users, dtype="int64") + 1] = True

        # New and changed rows, and the stored rows they replace (their buyer may differ).
        for buyer_of in (new.buyer_of, old.buyer_of):
            for name in USER_TABLES:
                mark(self.owners(name, fresh[name], buyer_of))
        mark(_lookup(new.buyer_of, _i64(fresh["reviews"], "order_id")))
        for name in _REPLACEABLE:
            rows = replaced.get(name, np.zeros(0, dtype="int64"))
            mark(self.owners(name, self.base[name].take(rows), old.buyer_of))
            tail_rows = replaced.get(f"{name}.tail", np.zeros(0, dtype="int64"))
            mark(self.owners(name, old.tail[name].iloc[tail_rows], old.buyer_of))
        # Registry rows sent again: a merchant's category is a reference of its orders; a
        # stream names the shop and host its reports are about.
        if len(fresh["merchants"]):
            changed = _i64(fresh["merchants"], "merchant_id")
            rows = self._alive("orders", self.groups["orders_by_merchant"].rows(changed), new)
            mark(_i64(self.base["orders"].take(rows, ["user_id"]), "user_id"))
            tail = new.tail["orders"]
            mark(_i64(tail, "user_id")[np.isin(_i64(tail, "merchant_id"), changed)])
        if len(fresh["livestreams"]):
            streams = _i64(fresh["livestreams"], "stream_id")
            mark(_i64(self.base["reports"].take(self.groups["reports_by_stream"].rows(streams), ["reporter_id"]), "reporter_id"))
            tail = new.tail["reports"]
            mark(_i64(tail, "reporter_id")[np.isin(_i64(tail, "stream_id"), streams)])
        # Rows that cross a time edge between the two cuts (found with a one-second margin:
        # a superset is still exact).
        start, end = t0.value, cut.value
        edges = sorted({*config.windows, config.alarm_recent_days, config.alarm_recent_days + config.alarm_baseline_days})

        def crossing(key: str, days: Iterable[float], tail_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows, hit = [], np.zeros(len(tail_times), dtype=bool)
            for d in days:
                offset = int(round(d * _NS_PER_DAY))
                lo, hi = start - offset - _MARGIN_NS, end - offset + _MARGIN_NS
                rows.append(self.times[key].between(lo, hi))
                hit |= (tail_times >= lo) & (tail_times <= hi)
            return _unique(np.concatenate(rows)) if rows else np.zeros(0, dtype="int64"), hit

        orders_tail = new.tail["orders"]
        for key, column, days in (
            ("orders.created_at", "created_at", edges),
            ("orders.promised_ship_by", "promised_ship_by", [0.0, config.overdue_days]),
        ):
            rows, hit = crossing(key, days, ns(orders_tail[column]))
            mark(_i64(self.base["orders"].take(rows, ["user_id"]), "user_id"))
            mark(_i64(orders_tail, "user_id")[hit])
        reviews_tail = new.tail["reviews"]
        rows, hit = crossing("reviews.created_at", edges, ns(reviews_tail["created_at"]))
        crossed = pd.concat([self.base["reviews"].take(rows, ["user_id", "order_id"]), reviews_tail.loc[hit, ["user_id", "order_id"]]])
        mark(_i64(crossed, "user_id"))
        mark(_lookup(new.buyer_of, _i64(crossed, "order_id")))
        cases_tail = new.tail["after_sales"]
        rows, hit = crossing("after_sales.opened_at", edges, ns(cases_tail["opened_at"]))
        mark(_lookup(new.buyer_of, _i64(self.base["after_sales"].take(rows, ["order_id"]), "order_id")))
        mark(_lookup(new.buyer_of, _i64(cases_tail.loc[hit], "order_id")))
        self._close(dirty, (old, new))
        return dirty

    def _close(self, dirty: np.ndarray, views: tuple[View, ...]) -> None:
        """Flag the buyers linked to flagged ones until nothing changes.

        Reviews tie their author to the order's buyer (praise before delivery, one bad order):
        both sides are recomputed together. Stranger reports against one merchant in one burst
        bucket share a weight (``report_burst_hours``): their reporters are recomputed together.
        """
        frontier = np.flatnonzero(dirty) - 1
        bursts = self.config.report_burst_hours > 0

        def linked_in(view: View, users: np.ndarray) -> list[np.ndarray]:
            one = np.zeros(len(dirty), dtype=bool)
            one[users + 1] = True
            reviews = self.gather_reviews(view, one, users)
            found = [_i64(reviews, "user_id"), _lookup(view.buyer_of, _i64(reviews, "order_id"))]
            return found + [self._burst_reporters(view, users)] if bursts else found

        # The views are read independently: all but the last in helper threads (the mapped
        # takes and the array work run mostly without the interpreter lock).
        with ThreadPoolExecutor(max(len(views) - 1, 1), "live-linked") as side:
            while len(frontier):
                others = [side.submit(linked_in, view, frontier) for view in views[:-1]]
                found = linked_in(views[-1], frontier) if views else []
                for other in others:
                    found += other.result()
                linked = _unique(np.concatenate(found)) if found else np.zeros(0, dtype="int64")
                fresh = linked[~dirty[linked + 1]]
                dirty[fresh + 1] = True
                frontier = fresh

    def gather_reviews(self, view: View, flags: np.ndarray, users: np.ndarray) -> pd.DataFrame:
        """Reviews of ``view`` written by flagged users or about their orders."""
        orders = self._alive("orders", self.groups["orders"].rows(users), view)
        codes = np.concatenate([_i64(self.base["orders"].take(orders, ["order_id"]), "order_id"),
                                _i64(view.tail["orders"], "order_id")[_flag(flags, _i64(view.tail["orders"], "user_id"))]])
        rows = [self.groups["reviews"].rows(users), self.groups["reviews_by_order"].rows(codes)]
        if flags[0]:
            orphan = self.orphans["reviews"]
            rows.append(orphan)
            rows.append(self.groups["reviews_by_order"].rows(_i64(view.tail["orders"], "order_id")[_i64(view.tail["orders"], "user_id") < 0]))
        frame = self.base["reviews"].take(_unique(np.concatenate(rows)), ["user_id", "order_id"])
        tail = view.tail["reviews"]
        frame = pd.concat([frame, tail[["user_id", "order_id"]]])
        keep = _flag(flags, _i64(frame, "user_id")) | _flag(flags, _lookup(view.buyer_of, _i64(frame, "order_id")))
        return frame.loc[keep]

    def _burst_reporters(self, view: View, users: np.ndarray) -> np.ndarray:
        """Reporters of every report in a burst bucket that a report of ``users`` is in."""
        assert self.bursts is not None
        base = self.base["reports"]
        tail = view.tail["reports"]
        columns = ["reporter_id", "merchant_id", "stream_id", "created_at"]
        mine = base.take(self.groups["reports"].rows(users), columns)
        tail_keys = burst_keys(tail, view.stream_merchant, self.config)
        own_keys = np.concatenate([burst_keys(mine, view.stream_merchant, self.config),
                                   tail_keys[np.isin(_i64(tail, "reporter_id"), users)]])
        own_keys = own_keys[own_keys >= 0]
        if not len(own_keys):
            return np.zeros(0, dtype="int64")
        streams = view.stream_merchant[: len(self.base_stream_merchant)]
        if np.array_equal(streams, self.base_stream_merchant):
            in_base = self.bursts.equal(own_keys)
        else:  # a stream moved to another shop since the base (rare): the base's keys are stale
            in_base = np.flatnonzero(np.isin(burst_keys(base.take(np.arange(len(base)), columns), view.stream_merchant, self.config), own_keys))
        return np.concatenate([_i64(base.take(in_base, ["reporter_id"]), "reporter_id"), _i64(tail, "reporter_id")[np.isin(tail_keys, own_keys)]])

    # ------------------------------------------------------------------ compaction

    def compacted(self, n_order_codes: int, n_stream_codes: int) -> History:
        """The same history with the tail merged into a new, re-indexed base."""
        tables: dict[str, pd.DataFrame] = dict(self.current.registries)
        for name in USER_TABLES:
            alive = self.current.alive[name]
            whole = self.base[name].whole()
            base = whole if alive is None else whole.loc[alive]
            tables[name] = _concat(base, self.current.tail[name], self.dtypes[name])
        log = EventLog(tables, self.missing, self.warnings, self.missing_columns)
        out = History.build(log, n_order_codes, n_stream_codes, self.config)
        out.first_paid = self.first_paid
        return out

    def with_meta(self, warnings: tuple[str, ...], missing: tuple[str, ...], missing_columns: Mapping[str, tuple[str, ...]]) -> History:
        return replace(self, warnings=warnings, missing=missing, missing_columns=missing_columns)


_NS_PER_DAY = 86_400 * 10**9
_MARGIN_NS = 10**9


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values, by a sort (numpy's hash-based ``np.unique`` is many times slower on int64 codes)."""
    values = np.sort(np.asarray(values, dtype="int64"))
    if not len(values):
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]`` with -1 for codes outside it (or negative)."""
    codes = np.asarray(codes, dtype="int64")
    if not len(table):
        return np.full(len(codes), -1, dtype="int64")
    ok = (codes >= 0) & (codes < len(table))
    return np.where(ok, table[np.clip(codes, 0, len(table) - 1)], -1)


def _flag(flags: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Whether each user code (-1: none, slot 0) is flagged; codes past the flags are not."""
    slots = np.asarray(users, dtype="int64") + 1
    ok = slots < len(flags)
    return ok & flags[np.where(ok, slots, 0)]


def _grown(values: np.ndarray, size: int) -> np.ndarray:
    if len(values) >= size:
        return values
    return np.concatenate([values, np.full(size - len(values), -1, dtype="int64")])


def _first_paid(orders: pd.DataFrame, fill: float, start: np.ndarray | None = None) -> np.ndarray:
    """Earliest paid order time per merchant code (epoch s), from ``start`` lowered by ``orders``."""
    from ._signals import _is

    merchant = _i64(orders, "merchant_id")
    size = max(int(merchant.max()) + 1 if len(merchant) else 0, len(start) if start is not None else 0)
    out = np.full(size, fill)
    if start is not None:
        out[: len(start)] = start
    ok = (merchant >= 0) & ~_is(orders["status"], "cancelled")
    np.minimum.at(out, merchant[ok], _seconds(orders["created_at"])[ok])
    return out


def _append(stored: pd.DataFrame, new: pd.DataFrame, dtypes: Mapping[str, Any]) -> pd.DataFrame:
    new = new[[c for c in stored.columns if c in new.columns]]
    return _concat(stored, new, dtypes)


def _concat(a: pd.DataFrame, b: pd.DataFrame, dtypes: Mapping[str, Any]) -> pd.DataFrame:
    if not len(b):
        return a.reset_index(drop=True)
    if not len(a):
        return b.astype({c: dtypes[c] for c in b.columns if c in dtypes}).reset_index(drop=True)
    return pd.concat([a, b.astype({c: a[c].dtype for c in b.columns if c in a.columns})], ignore_index=True)
