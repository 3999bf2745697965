"""Live trust: a snapshot kept in memory and updated with new events at a cost that grows with them.

:class:`LiveTrust` holds what a full build computed (the event history with ids encoded once,
every evidence counter per merchant, creator and buyer, the credibility references and the
index weights) and applies new events to it. An update does not recompute the history: it
finds the buyers whose evidence can have changed since the last time, takes their old
contribution out of the counters, ages the rest and adds their new contribution back.

Why buyers. Every evidence count is a sum over rows (orders, cases, reviews, reports, survey
answers, follows, impressions) of a value times a time weight times the credibility of the
order behind it. A row's credibility depends on its *buyer's* history (orders at other shops,
repeat orders, feed activity, a review before delivery) and on platform- and shop-level
references: the category's median amount, the ring association's norm and each shop's
first-pass suspicious share. With the references held fixed (carried like the index weights
and refreshed by each full build), every row depends on its buyer's rows only, so the counters
are sums of independent per-buyer contributions. A buyer's contribution changes between two
times only if one of its rows is new or changed, or a row crosses a time edge (a rolling window
of 7/30/90 days, a promised ship time passing, the early-warning windows); otherwise every
decayed counter is multiplied by ``0.5 ** (elapsed / half_life)`` and every other counter
stays. So an update costs the rows of those buyers (two evidence passes over them: as of
the state's time and as of the new time), not the history. The small registries (merchants,
creators, livestreams, violations, guarantees) are recomputed in full at both times; their
counters cancel exactly.

The rule this gives: ``LiveTrust.update`` as of T equals ``build_snapshot(full_log, T,
index=live.index, references=live.references)`` (tested with hypothesis over random event
splits). With fresh references that is exactly a full rebuild; the references it carries are
those of the last full build (:meth:`LiveTrust.start`), as the index weights are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ._dask_backend import make_aggregator
from ._early_warning import baseline_days
from ._incremental import _keep, merge_meta
from ._live_history import History, SortedKeys, Vocabulary
from ._schema import TABLE_SPECS
from ._signals import _ID_KINDS, CredibilityReferences, Encoding, SignalCounts, build_counts, encode_ids
from ._trust_config import TrustConfig
from .errors import ConfigError
from .events import EventLog, TimeLike, load_events, to_utc
from .io import check_output_dir
from .progress import NullProgress, Progress
from .trust import (
    TrustReferences,
    TrustSnapshot,
    _category_codes,
    _finish,
    _merchant_meta,
    _raw_evidence,
    _registered,
)

__all__ = ["LiveTrust", "undecayed_counts", "write_incremental", "write_snapshot"]

# Kinds of id the snapshot tables name (the others only need their number).
_NAMED_KINDS = ("merchant", "entity", "category", "creator", "user")


def undecayed_counts(config: TrustConfig) -> frozenset[str]:
    """Counter columns that do not age by the half-life (raw counts, windows, flags).

    Every other counter of :func:`~trustfeed.features._signals.build_counts` is a sum of
    ``value * 0.5 ** (age / half_life)`` and is multiplied by the decay of the elapsed time.
    """
    windowed = ("n_orders", "n_due", "n_late", "n_orders_all", "n_cancelled", "n_bad_cases", "n_reviews", "n_low_ratings")
    names = {f"{name}_{days}d" for name in windowed for days in config.windows}
    names |= {
        "n_orders_raw", "n_no_reason_cases", "n_reviews_raw", "rating_sum_raw", "n_reports_raw",
        "n_rejected_reports_raw", "n_violations", "n_bans", "n_suspensions", "n_benefits",
        "n_streams_raw", "n_impressions_raw", "user_orders", "user_merchants", "user_activity",
    }  # fmt: skip
    names |= set(_EARLY_WARNING_COUNTS)
    return frozenset(names)


_EARLY_WARNING_COUNTS = (
    "ew_due", "ew_overdue", "ew_recent_orders", "ew_base_orders", "ew_base_days", "ew_recent_new_buyer",
    "ew_base_new_buyer", "ew_recent_presale", "ew_base_presale", "ew_recent_complaint", "ew_base_complaint",
)  # fmt: skip


def _decayed_counts(config: TrustConfig) -> frozenset[str]:
    """Counter columns that age by the half-life (see :func:`undecayed_counts`)."""
    names = {
        "n_orders", "n_due", "n_late", "n_presale", "n_follower_orders", "gmv", "n_orders_all", "n_cancelled",
        "suspicion", "n_suspicion", "n_buyers", "n_bad_cases", "n_counterfeit_cases", "n_cases", "n_resolved",
        "n_buyer_favor", "n_intervened", "n_refund_cases", "n_fast_refunds", "n_slow_resolutions",
        "resolution_days_sum", "n_reviews", "n_low_ratings", "rating_shortfall", "n_quality_ratings",
        "quality_shortfall", "n_service_ratings", "service_shortfall", "n_logistics_ratings",
        "logistics_shortfall", "n_counterfeit_reports", "n_host_reports", "n_reports_weighted",
        "violation_severity", "host_violation_severity", "n_nps", "n_promoters", "n_detractors", "n_streams",
        "n_impressions", "n_clicks", "n_purchases",
    }  # fmt: skip
    names |= {f"n_repurchasers_{days}d" for days in config.repurchase_days}
    return frozenset(names)


# Benefit flags are registry counters (guarantees) that never decay.
def _is_undecayed(column: str, config: TrustConfig) -> bool:
    if column in undecayed_counts(config) or column.startswith("benefit_"):
        return True
    if column in _decayed_counts(config):
        return False
    raise ConfigError(
        f"live trust: counter {column!r} is not classified as decayed or not (features/_live.py): a new"
        " evidence column must be added to undecayed_counts or _decayed_counts"
    )


@dataclass
class _LiveEncoding(Encoding):
    """An encoding whose order and stream ids are only counted (the snapshot never names them)."""

    sizes: dict[str, int] = field(default_factory=dict)

    def size(self, kind: str) -> int:
        return self.sizes[kind]


def _combine(total: pd.DataFrame, old: pd.DataFrame, new: pd.DataFrame, factor: float, config: TrustConfig) -> pd.DataFrame:
    """``age(total - old) + new``: the counters with the changed buyers' contributions replaced.

    A difference within rounding of its terms (all of a merchant's rows were replaced) is
    exactly zero, so that "no evidence" stays no evidence.
    """
    if set(total.columns) != set(new.columns):
        raise ConfigError(f"live trust: counters changed ({sorted(set(total.columns) ^ set(new.columns))})")
    # All columns at once as (rows, columns) arrays: the same operations per value as one
    # column at a time (an undecayed column is multiplied by exactly 1.0), without a frame
    # built from 160 separate columns.
    columns = list(new.columns)
    before = np.zeros((len(new), len(columns)))
    before[: len(total)] = total[columns].to_numpy(dtype="float64")
    gone = old[columns].to_numpy(dtype="float64")
    rest = before - gone
    rest[np.abs(rest) <= 1e-12 * (np.abs(before) + np.abs(gone))] = 0.0
    rest *= np.array([1.0 if _is_undecayed(column, config) else factor for column in columns])
    rest += new.to_numpy(dtype="float64")
    return pd.DataFrame(rest, index=new.index, columns=new.columns)


class LiveTrust:
    """A trust snapshot kept up to date in memory (see the module docstring).

    Build one with :meth:`start` (a full build), then call :meth:`update` with the events
    since the last time (the rows :func:`~trustfeed.features.changes_since` cuts out of a full
    log). The snapshot after each update is :attr:`snapshot`.

    Examples
    --------
    >>> import pandas as pd
    >>> from trustfeed.features import changes_since, validate_events
    >>> log = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": ["2026-01-01"] * 2}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2", "o3"], "user_id": ["u1", "u2", "u1"],
    ...                             "merchant_id": ["m1", "m1", "m2"], "amount": [10.0, 12.0, 9.0],
    ...                             "created_at": ["2026-01-02", "2026-01-03", "2026-01-09"]}),
    ... })
    >>> live = LiveTrust.start(log, "2026-01-05")
    >>> live.update(changes_since(log, "2026-01-05"), "2026-01-10").merchants["n_orders_raw"].tolist()
    [2.0, 1.0]
    """

    def __init__(
        self,
        *,
        history: History,
        vocabularies: dict[str, Vocabulary],
        counts: SignalCounts,
        references: CredibilityReferences,
        index: Mapping[str, Any],
        config: TrustConfig,
        backend: str,
        snapshot: TrustSnapshot | Path,
        as_of: pd.Timestamp | None = None,
    ) -> None:
        self._history = history
        self._vocabularies = vocabularies
        self._counts = counts
        self._references = references
        self.index = dict(index)
        self.config = config
        self.backend = backend
        # A loaded state reads its snapshot's tables only when asked for them: an update
        # replaces them without reading them (at a million buyers, reading the users table
        # was a tenth of an update).
        self._snapshot: TrustSnapshot | None = None
        self._snapshot_dir: Path | None = None
        if isinstance(snapshot, TrustSnapshot):
            self._snapshot, self._as_of = snapshot, snapshot.as_of
        else:
            if as_of is None:
                raise ConfigError("live trust: a stored snapshot needs its as-of time")
            self._snapshot_dir, self._as_of = Path(snapshot), as_of
        # Where a loaded state's unchanging files are (linked into the next saved state).
        self._stored: dict[str, Any] = {}
        # Every user id sorted, with its code: the users table's order (kept, not sorted again).
        self._user_keys: SortedKeys | None = None

    @property
    def as_of(self) -> pd.Timestamp:
        """The time of the current snapshot."""
        return self._as_of

    @property
    def snapshot(self) -> TrustSnapshot:
        """The current snapshot (a loaded state reads it from its directory on first use)."""
        if self._snapshot is None:
            assert self._snapshot_dir is not None
            from ._live_state import read_snapshot

            self._snapshot = read_snapshot(self._snapshot_dir)
        return self._snapshot

    @snapshot.setter
    def snapshot(self, snapshot: TrustSnapshot) -> None:
        self._snapshot, self._as_of = snapshot, snapshot.as_of

    @property
    def references(self) -> TrustReferences:
        """The carried credibility references, by id (for ``build_snapshot(..., references=)``)."""
        return TrustReferences.of(self._references, self._encoding())

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> None:
        """Write :attr:`snapshot` with this state (``state/``) into ``path``, atomically.

        The state loads with :meth:`load` without reading the history; files that did not
        change since the state was loaded are linked, not written again (see
        :mod:`trustfeed.features._live_state`).
        """
        from ._live_state import save_live

        def state(tmp: Path) -> None:
            save_live(
                tmp / "state", as_of=self.as_of, config=self.config, index=self.index, backend=self.backend,
                history=self._history, vocabularies=self._vocabularies, counts=self._counts,
                references=self._references, stored=self._stored,
            )  # fmt: skip

        self.snapshot.save(path, force=force, also=state)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LiveTrust:
        """The live state stored with a snapshot by :meth:`save` (memory-mapped, checked).

        Raises
        ------
        ConfigError
            No state, another version or configuration, a damaged state (one line).
        """
        live, _ = cls._open(path, defer_history=False)
        return live

    @classmethod
    def _open(cls, path: str | os.PathLike[str], *, defer_history: bool) -> tuple[LiveTrust, Callable[[], None]]:
        """:meth:`load`, and the check of the history's checksums when ``defer_history`` leaves it to the caller."""
        from ._live_state import load_live

        parts, stored, check = load_live(path, defer_history=defer_history)
        live = cls(**parts)
        live._stored = stored
        return live, check

    @classmethod
    def start(
        cls,
        events: EventLog,
        as_of: TimeLike,
        config: TrustConfig | None = None,
        *,
        index: Mapping[str, Any] | None = None,
        backend: str = "pandas",
        progress: Progress | None = None,
    ) -> LiveTrust:
        """A full build as of ``as_of`` (as :func:`~trustfeed.features.build_snapshot`), kept live.

        ``index``: index weights to carry instead of fitting them.
        """
        config = config if config is not None else TrustConfig()
        if not isinstance(config, TrustConfig):
            raise ConfigError(f"config: expected a TrustConfig, got {type(config).__name__}")
        make_aggregator(backend)
        progress = progress if progress is not None else NullProgress()
        cut = to_utc(as_of)
        progress(f"trust: encoding events before {cut.isoformat()}")
        known, enc = encode_ids(_keep(events).before(cut))
        progress("trust: evidence")
        raw, meta = _raw_evidence(known, cut, config, backend, enc)
        snapshot = _finish(known, enc, _registered(raw, meta, enc), meta, cut, config, backend, progress, index, events.warnings)
        carried = dict(snapshot.manifest["index_model"])
        carried.setdefault("weights_from", cut.isoformat())
        if raw.references is None:  # pragma: no cover - build_counts always returns them
            raise ConfigError("live trust: the full build returned no credibility references")
        progress("trust: indexing the history for updates")
        vocabularies = {kind: Vocabulary(enc.vocab[kind]) for kind in _ID_KINDS}
        history = History.build(known, enc.size("order"), enc.size("stream"), config)
        live = cls(
            history=history, vocabularies=vocabularies, counts=raw, references=raw.references, index=carried,
            config=config, backend=backend, snapshot=snapshot,
        )  # fmt: skip
        live._users_in_id_order()
        return live

    def _users_in_id_order(self) -> SortedKeys:
        """Every user id known so far, sorted (built once: from the stored sorted ids when loaded)."""
        if self._user_keys is None:
            words = self._vocabularies["user"]
            if isinstance(words.lookup, SortedKeys):
                self._user_keys = words.lookup.with_ids(words.added, words.n_base)
            else:
                self._user_keys = SortedKeys.of(pa.array(words.strings(), type=pa.large_string()))
        return self._user_keys

    def _encoding(self, added: Mapping[str, pd.Index] | None = None) -> _LiveEncoding:
        vocab = {}
        sizes = {}
        for kind, words in self._vocabularies.items():
            extra = added[kind] if added is not None else None
            sizes[kind] = len(words) + (len(extra) if extra is not None else 0)
            if kind in _NAMED_KINDS:
                vocab[kind] = words.strings(extra)
        return _LiveEncoding(vocab, sizes)

    def _encode(self, events: EventLog) -> tuple[EventLog, dict[str, pd.Index]]:
        """``events`` with ids replaced by this state's codes; ids met for the first time get new codes."""
        tables = {name: events[name].copy(deep=False) for name in events.tables}
        added: dict[str, pd.Index] = {kind: self._vocabularies[kind].added for kind in _ID_KINDS}
        for kind, columns in _ID_KINDS.items():
            for table, column in columns:
                if column not in tables[table].columns:
                    continue
                if len(tables[table]):
                    codes, added[kind] = self._vocabularies[kind].codes(tables[table][column], added[kind])
                    tables[table][column] = codes
                else:
                    tables[table][column] = np.zeros(0, dtype="int64")
        fresh = {kind: added[kind][len(self._vocabularies[kind].added):] for kind in _ID_KINDS}
        return EventLog(tables, events.missing, events.warnings, events.missing_columns), fresh

    def update(
        self, new_events: EventLog, as_of: TimeLike, progress: Progress | None = None, *,
        history_ready: Callable[[], object] | None = None,
    ) -> TrustSnapshot:
        """Apply the events since :attr:`as_of` and return the snapshot as of ``as_of``.

        ``new_events``: rows whose event time is at or after the current time, and earlier
        rows of the re-sendable tables sent again in full because a later column became known
        (see :func:`~trustfeed.features.merge_events`). Rows at or after ``as_of`` change
        nothing (they are cut away). Nothing is changed when an error is raised.
        ``history_ready``: called (and its error raised) after the new events are encoded and
        before the stored history is first read (the command line checks the history's
        checksums meanwhile).

        Raises
        ------
        ConfigError
            ``as_of`` before the current time.
        SchemaError
            New rows that are not new (see :func:`~trustfeed.features.merge_events`).
        """
        progress = progress if progress is not None else NullProgress()
        cut = to_utc(as_of)
        t0 = self.as_of
        if cut < t0:
            raise ConfigError(f"as_of {cut.isoformat()}: before the live snapshot's as-of {t0.isoformat()}")
        config = self.config
        progress("trust: encoding the new events")
        named = _keep(new_events).before(cut)
        fresh, added = self._encode(named)
        enc = self._encoding(added)
        if history_ready is not None:
            history_ready()
        history = self._history
        old = history.current
        merged, replaced = history.merge(fresh, t0, enc.size("order"), enc.size("stream"), named)
        progress("trust: finding the buyers whose evidence changed")
        dirty = history.dirty(old, merged, fresh, replaced, t0, cut, enc.size("user"))
        agg = make_aggregator(self.backend)
        progress("trust: evidence of those buyers, before and after")
        old_meta = _merchant_meta(old.registries["merchants"], t0, enc)
        new_meta = _merchant_meta(merged.registries["merchants"], cut, enc)
        # The two sides are independent reads of the history: the earlier one in a helper
        # thread (the memory-mapped takes and most array work run without the interpreter lock).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-before") as side:
            gathered = side.submit(history.gather, old, dirty)
            now = history.gather(merged, dirty)
            users, (before_tables, after_tables), local = _localize((gathered.result(), now), enc)
            earlier = side.submit(
                build_counts, before_tables, t0, config, agg, local, _category_codes(old_meta, enc), self._references
            )
            after = build_counts(after_tables, cut, config, agg, local, _category_codes(new_meta, enc), self._references)
            before = earlier.result()
        factor = float(np.exp2(-((cut - t0).total_seconds() / 86_400.0) / config.half_life_days))
        merchants = _combine(self._counts.merchants, before.merchants, after.merchants, factor, config)
        first_paid = history.first_paid_after(merged, fresh, replaced, enc.size("merchant"))
        merchants["ew_base_days"] = baseline_days(
            np.arange(len(first_paid)), np.isfinite(first_paid), first_paid, cut, config, enc.size("merchant"),
        )  # fmt: skip
        counts = SignalCounts(
            merchants=merchants,
            creators=_combine(self._counts.creators, before.creators, after.creators, factor, config),
            orders=after.orders.iloc[:0],
            users=_combine_rows(self._counts.users, users, before.users, after.users, enc.size("user"), factor, config),
            references=self._references,
        )
        progress("trust: signals, priors and scores of the merchants")
        missing, warnings, missing_columns = merge_meta(history.log(old), fresh)
        log = history.log(merged)
        log = EventLog(dict(log.tables), missing, warnings, missing_columns)
        user_keys = self._users_in_id_order().with_ids(added["user"], len(self._vocabularies["user"]))
        snapshot = _finish(
            log, enc, _registered(counts, new_meta, enc), new_meta, cut, config, self.backend, progress, self.index,
            warnings, user_order=np.asarray(user_keys.codes),
        )  # fmt: skip
        snapshot.manifest["incremental"] = {
            "state_as_of": t0.isoformat(),
            "new_rows": {name: len(fresh[name]) for name in TABLE_SPECS if len(fresh[name])},
            "buyers_recomputed": int(dirty.sum()),
        }
        # Commit only now: an error above leaves the live state as it was.
        for kind, ids in added.items():
            if len(ids):
                self._vocabularies[kind].added = self._vocabularies[kind].added.append(ids)
        history.commit(merged, first_paid)
        self._user_keys = user_keys
        self._history = history.with_meta(warnings, missing, missing_columns)
        if self._history.tail_rows() > COMPACT_SHARE * max(self._history.base_rows(), 1):
            progress("trust: merging the new rows into the indexed history")
            self._history = self._history.compacted(enc.size("order"), enc.size("stream"))
        self._counts = counts
        self.snapshot = snapshot
        return snapshot


# The tail of new rows is merged into the indexed base when it outgrows this share of it.
COMPACT_SHARE = 0.25
_USER_COLUMNS = (("orders", "user_id"), ("reviews", "user_id"), ("reports", "reporter_id"), ("nps", "user_id"),
                 ("follows", "user_id"), ("impressions", "user_id"))  # fmt: skip
_ORDER_COLUMNS = (("orders", "order_id"), ("after_sales", "order_id"), ("reviews", "order_id"))


def _localize(
    sides: tuple[dict[str, pd.DataFrame], ...], enc: _LiveEncoding
) -> tuple[np.ndarray, tuple[dict[str, pd.DataFrame], ...], _LiveEncoding]:
    """The gathered tables with user and order codes renumbered densely (order kept).

    The evidence passes then size their per-user and per-order arrays by the rows they read,
    not by every id of the history. Returns the global code of each local user, the tables,
    and an encoding with the local sizes.
    """

    # Dense lookups by global code (flags, then local numbers), not a sort and binary searches
    # of every gathered code: two passes over the ids' range, each a few milliseconds at ten
    # million orders, against 0.5 CPU s for the searches.
    def renumber(columns: tuple[tuple[str, str], ...], size: int) -> tuple[np.ndarray, np.ndarray]:
        seen = np.zeros(size, dtype=bool)
        for side in sides:
            for t, c in columns:
                values = side[t][c].to_numpy(dtype="int64")
                seen[values[values >= 0]] = True
        known = np.flatnonzero(seen)
        # Only the slots of gathered codes are ever read: the rest stays unwritten (untouched pages).
        number = np.empty(size + 1, dtype="int64")
        number[known] = np.arange(len(known))
        number[size] = -1  # read for -1 (no id)
        return known, number

    users, user_number = renumber(_USER_COLUMNS, enc.size("user"))
    orders, order_number = renumber(_ORDER_COLUMNS, enc.size("order"))
    out = []
    for side in sides:
        tables = dict(side)
        for kinds, number in ((_USER_COLUMNS, user_number), (_ORDER_COLUMNS, order_number)):
            for table, column in kinds:
                frame = tables[table].copy(deep=False)
                frame[column] = number[frame[column].to_numpy(dtype="int64")]
                tables[table] = frame
        out.append(tables)
    local = _LiveEncoding(enc.vocab, {**enc.sizes, "user": len(users), "order": len(orders)})
    return users, tuple(out), local


def _combine_rows(
    total: pd.DataFrame, rows: np.ndarray, old: pd.DataFrame, new: pd.DataFrame, size: int, factor: float, config: TrustConfig
) -> pd.DataFrame:
    """:func:`_combine` for counters whose rows (``rows``: the local rows' codes) are a few of many."""
    if set(total.columns) != set(new.columns):
        raise ConfigError(f"live trust: counters changed ({sorted(set(total.columns) ^ set(new.columns))})")
    out: dict[str, np.ndarray] = {}
    for column in total.columns:
        values = np.zeros(size)
        kept = total[column].to_numpy(dtype="float64")
        values[: len(kept)] = kept
        before = values[rows]
        gone = old[column].to_numpy(dtype="float64")
        rest = before - gone
        rest[np.abs(rest) <= 1e-12 * (np.abs(before) + np.abs(gone))] = 0.0
        if not _is_undecayed(column, config):
            values *= factor
            rest *= factor
        values[rows] = rest + new[column].to_numpy(dtype="float64")
        out[column] = values
    return pd.DataFrame(out)[list(total.columns)]


def write_snapshot(
    events: EventLog,
    as_of: TimeLike,
    out: str | os.PathLike[str],
    *,
    backend: str = "pandas",
    force: bool = False,
    progress: Progress | None = None,
) -> TrustSnapshot:
    """Build the snapshot in full and write it with its live state (``trustfeed features --keep-state``)."""
    live = LiveTrust.start(events, as_of, backend=backend, progress=progress)
    live.save(out, force=force)
    return live.snapshot


def write_incremental(
    source: str | os.PathLike[str],
    new_events: str | os.PathLike[str],
    as_of: TimeLike,
    out: str | os.PathLike[str],
    *,
    backend: str = "pandas",
    force: bool = False,
    progress: Progress | None = None,
) -> TrustSnapshot:
    """``trustfeed features --incremental``: load the stored live state, apply the new events, write both.

    Every input is checked before anything is written; the output directory gets the new
    snapshot and its state together, or nothing. ``backend`` is unused: a state keeps the
    backend of its full build.
    """
    check_output_dir(out, "trust-snapshot", force=force)
    cut = to_utc(as_of)
    progress = progress if progress is not None else NullProgress()
    progress(f"trust: loading the live state of {source}")
    # The stored state is opened in a helper thread (every file's size and the checksums of
    # all but the indexed history) while the new events are read and validated here; then
    # the same thread checks the history's checksums (most of the bytes) while the events
    # are encoded, and the update waits for that check before it reads any history row.
    # A damaged state is reported first, whatever the events hold, and before anything
    # is written.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-load") as side:
        loading = side.submit(LiveTrust._open, source, defer_history=True)
        checking = side.submit(lambda: loading.result()[1]())
        try:
            events = load_events(new_events, partial=True)
            live = loading.result()[0]
            if cut < live.as_of:
                raise ConfigError(f"--as-of {cut.isoformat()}: before the state's as-of {live.as_of.isoformat()} in {source}")
            live.update(events, cut, progress=progress, history_ready=checking.result)
        except BaseException:
            checking.result()
            raise
    progress("trust: writing the snapshot and its state")
    live.save(out, force=force)
    return live.snapshot
