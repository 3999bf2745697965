"""Incremental trust snapshots: a stored state plus the events since give a later snapshot.

A :class:`TrustState` (``state_of``, or :meth:`TrustState.save` / :meth:`TrustState.load`
in its own directory layout, version 1) carries what a later update needs: the
point-in-time event history the snapshot was built from (only the columns the trust
builders read, Parquet), the configuration, and the index weights. The command line's
``--keep-state`` / ``--incremental`` no longer use it: they store a
:class:`~trustfeed.features.LiveTrust` (``features/_live_state.py``), whose update grows
with the new events only. :func:`update_snapshot` merges the new events into
that history and builds the snapshot as of the new time, so the result is the snapshot a full
rebuild as of that time gives *with the same index weights*.

What is carried and what is recomputed:

- **carried**: the index weights (fitted by the full build on the earlier cuts
  ``T - horizon``, ``T - 2 * horizon``; refitting them needs two more evidence passes over the
  history, the largest cost of a build). The manifest's ``index_model.weights_from`` names the
  snapshot that fitted them; a full rebuild refits them.
- **recomputed at the new time from the snapshot's own evidence**, in both paths: the
  shrinkage priors and the standing (percentile) reference. Both cost one pass over merchants.

Every evidence count is recomputed over the merged history, not updated from decayed counters:
a past order's credibility weight depends on what its buyer does later (orders elsewhere,
feed activity, repeat orders, a review before delivery), on the category's median amount and on
the ring association across shops, so counters kept per merchant cannot give the full
rebuild's numbers. The update's cost therefore grows with the history (about one evidence pass
instead of three, without re-reading and re-validating the whole log); see ``docs/trust.md``.

New events are the rows added or changed since the state's time: rows whose event time is at
or after it, plus earlier rows of ``merchants``, ``creators``, ``livestreams``, ``orders``,
``after_sales`` and ``guarantees`` sent again in full (a later ``shipped_at``, ``resolved_at``,
``left_at``, ...): they replace the stored row with the same key. :func:`changes_since` cuts
exactly that out of a full log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._schema import TABLE_SPECS
from ._trust_config import TrustConfig
from .errors import ConfigError, SchemaError
from .events import EventLog, TimeLike, table_dtypes, to_utc
from .progress import NullProgress, Progress
from .trust import _UNUSED_COLUMNS, FORMAT_VERSION, TrustSnapshot, build_snapshot

__all__ = [
    "STATE_DIR",
    "STATE_VERSION",
    "TrustState",
    "changes_since",
    "merge_events",
    "state_of",
    "update_snapshot",
]

STATE_DIR = "state"
STATE_VERSION = 1
# Tables whose earlier rows may be sent again: registries, and rows with columns known later.
_RESENDABLE = ("merchants", "creators", "livestreams", "orders", "after_sales", "guarantees")


def _kept_columns(name: str) -> list[str]:
    """Columns the state stores: what the trust builders read, plus the row key."""
    spec = TABLE_SPECS[name]
    unused = set(_UNUSED_COLUMNS.get(name, ())) - set(spec.key if name in _RESENDABLE else ())
    return [column for column in table_dtypes(name) if column not in unused]


def _keep(events: EventLog) -> EventLog:
    tables = {}
    for name in TABLE_SPECS:
        frame = events[name]
        tables[name] = frame[[c for c in _kept_columns(name) if c in frame.columns]]
    return EventLog(tables, events.missing, events.warnings, events.missing_columns)


@dataclass(frozen=True)
class TrustState:
    """What an incremental update starts from (see the module docstring).

    Attributes
    ----------
    as_of
        The time of the snapshot the state belongs to; its history holds the events known
        then.
    config
        The :class:`TrustConfig` of every snapshot built from this state.
    index
        The carried index weights (a manifest's ``index_model``, with ``weights_from``).
    history
        The event history as known at ``as_of`` (the builders' columns and row keys).
    """

    as_of: pd.Timestamp
    config: TrustConfig
    index: Mapping[str, Any]
    history: EventLog

    def save(self, snapshot_dir: str | os.PathLike[str]) -> None:
        """Write ``<snapshot_dir>/state/`` (``state.json`` + one Parquet file per table)."""
        root = Path(snapshot_dir) / STATE_DIR
        (root / "events").mkdir(parents=True, exist_ok=True)
        for name in TABLE_SPECS:
            self.history[name].to_parquet(root / "events" / f"{name}.parquet", index=False)
        meta = {
            "state_version": STATE_VERSION,
            "format_version": FORMAT_VERSION,
            "as_of": self.as_of.isoformat(),
            "config": self.config.to_dict(),
            "index": dict(self.index),
            "missing": list(self.history.missing),
            "missing_columns": {k: list(v) for k, v in self.history.missing_columns.items()},
            "warnings": list(self.history.warnings),
        }
        (root / "state.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))

    @classmethod
    def load(cls, snapshot_dir: str | os.PathLike[str]) -> TrustState:
        """Read the state of a snapshot directory.

        Raises
        ------
        ConfigError
            No state (a snapshot written without one), an unreadable or foreign state (another
            state version, an unknown configuration), or a state that does not belong to the
            snapshot beside it.
        """
        directory = Path(snapshot_dir)
        path = directory / STATE_DIR / "state.json"
        if not directory.is_dir():
            raise ConfigError(f"{directory}: no such snapshot directory")
        if not path.is_file():
            raise ConfigError(
                f"{directory}: no incremental state ({STATE_DIR}/state.json): write the snapshot with"
                " trustfeed features --keep-state"
            )
        try:
            meta = json.loads(path.read_text())
            meta.get("state_version")  # AttributeError: not a mapping
        except (OSError, ValueError, AttributeError) as error:
            raise ConfigError(f"{path}: unreadable state ({type(error).__name__})") from None
        config, as_of, index = check_state_meta(directory, path, meta, STATE_VERSION)
        tables: dict[str, pd.DataFrame] = {}
        for name in TABLE_SPECS:
            file = directory / STATE_DIR / "events" / f"{name}.parquet"
            try:
                frame = pd.read_parquet(file)
            except (OSError, ValueError) as error:
                raise ConfigError(f"{file}: unreadable state table ({type(error).__name__})") from None
            dtypes = table_dtypes(name)
            tables[name] = frame.astype({c: dtypes[c] for c in frame.columns if c in dtypes})
        missing_columns = {k: tuple(v) for k, v in dict(meta.get("missing_columns", {})).items()}
        history = EventLog(tables, tuple(meta.get("missing", ())), tuple(meta.get("warnings", ())), missing_columns)
        return cls(as_of, config, index, history)


def check_state_meta(
    directory: Path, path: Path, meta: Mapping[str, Any], version: int
) -> tuple[TrustConfig, pd.Timestamp, dict[str, Any]]:
    """A state's configuration, time and weights, checked against ``version`` and the snapshot in ``directory``.

    Raises
    ------
    ConfigError
        Another state version, an unknown configuration, or a state that does not belong to
        the snapshot beside it (another configuration or time).
    """
    found = meta.get("state_version")
    if found != version:
        raise ConfigError(f"{path}: state version {found!r}, this trustfeed reads version {version}")
    try:
        config = TrustConfig.from_dict(meta["config"])
        as_of = to_utc(meta["as_of"])
        index = dict(meta["index"])
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: a state of another configuration or version ({error})") from None
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{manifest_path}: unreadable snapshot manifest ({type(error).__name__})") from None
    if manifest.get("config") != meta["config"] or to_utc(manifest.get("as_of")) != as_of:
        raise ConfigError(f"{path}: the state does not belong to the snapshot in {directory} (config or as-of differ)")
    return config, as_of, index


def state_of(events: EventLog, snapshot: TrustSnapshot) -> TrustState:
    """The state of a snapshot just built from ``events`` (history cut at its time)."""
    index = dict(snapshot.manifest["index_model"])
    index.setdefault("weights_from", snapshot.as_of.isoformat())
    config = TrustConfig.from_dict(snapshot.manifest["config"])
    return TrustState(snapshot.as_of, config, index, _keep(events.before(snapshot.as_of)))


def changes_since(events: EventLog, since: TimeLike, until: TimeLike | None = None) -> EventLog:
    """The rows of a full log that an update from a state as of ``since`` needs.

    Rows whose event time is at or after ``since``, and earlier rows with a column revealed
    at or after it (``shipped_at``, ``resolved_at``, ...), in full; with ``until``, only what
    happened before it (rows are still sent in full: the update cuts at its own time).
    """
    t0 = to_utc(since)
    t1 = to_utc(until) if until is not None else None

    def between(times: pd.Series) -> Any:
        inside = times >= t0
        if t1 is not None:
            inside &= times < t1
        return inside.to_numpy(dtype=bool, na_value=False)

    tables = {}
    for name, spec in TABLE_SPECS.items():
        frame = events[name]
        recent = between(frame[spec.event_time])
        for _, revealed_by in spec.resolution:
            recent = recent | between(frame[revealed_by])
        tables[name] = frame.loc[recent].reset_index(drop=True)
    return EventLog(tables, events.missing, (), events.missing_columns)


def _key(frame: pd.DataFrame, key: tuple[str, ...]) -> pd.Series | pd.MultiIndex:
    if len(key) == 1:
        return frame[key[0]].reset_index(drop=True)
    return pd.MultiIndex.from_frame(frame[list(key)])


def _example(frame: pd.DataFrame, key: tuple[str, ...], mask: Any) -> str:
    row = frame.loc[mask].iloc[0]
    return ", ".join(f"{column}={row[column]}" for column in key)


def merge_table(name: str, old: pd.DataFrame, fresh: pd.DataFrame, t0: pd.Timestamp) -> pd.DataFrame:
    """One table of :func:`merge_events`: ``old`` (the state's rows) with ``fresh`` applied."""
    spec = TABLE_SPECS[name]
    fresh = fresh[[c for c in _kept_columns(name) if c in fresh.columns]]
    if not len(fresh):
        return old
    early: np.ndarray = (fresh[spec.event_time] < t0).to_numpy(dtype=bool, na_value=False)
    if early.any() and name not in _RESENDABLE:
        raise SchemaError(
            name, spec.event_time, f"times at or after the state's as-of {t0.isoformat()}",
            f"{int(early.sum())} earlier rows (state rows of this table cannot be sent again)",
        )
    if name in _RESENDABLE:
        old_key, new_key = _key(old, spec.key), _key(fresh, spec.key)
        held: np.ndarray = np.asarray(old_key.isin(new_key), dtype=bool)
        known: np.ndarray = np.asarray(new_key.isin(old_key[held]), dtype=bool)
        if (early & ~known).any():
            raise SchemaError(
                name, spec.event_time, f"times at or after the state's as-of {t0.isoformat()}",
                f"{int((early & ~known).sum())} earlier rows the state does not hold (e.g."
                f" {_example(fresh, spec.key, early & ~known)})",
            )
        if (~early & known).any():
            raise SchemaError(
                name, ", ".join(spec.key), "keys the state does not hold yet (or a re-sent row with its original time)",
                f"{int((~early & known).sum())} rows with a stored key and another"
                f" {spec.event_time} (e.g. {_example(fresh, spec.key, ~early & known)})",
            )
        if held.any():
            old = old.loc[~held]
    dtypes = {c: old[c].dtype for c in fresh.columns if c in old.columns}
    return pd.concat([old, fresh.astype(dtypes)], ignore_index=True)


def merge_events(state: TrustState, new: EventLog) -> EventLog:
    """The state's history with the new events applied (re-sent rows replace stored ones).

    Raises
    ------
    SchemaError
        A new row older than the state (not a re-sent row of a table whose rows may be sent
        again, or one the state does not hold), or a new row whose key the state already holds.
    """
    tables = {name: merge_table(name, state.history[name], new[name], state.as_of) for name in TABLE_SPECS}
    missing, warnings, missing_columns = merge_meta(state.history, new)
    return EventLog(tables, missing, warnings, missing_columns)


def merge_meta(history: EventLog, new: EventLog) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Missing tables, warnings and missing columns of ``history`` with ``new`` applied.

    A table (a column) is missing only when neither side has it; only the tables' flags of
    ``history`` are read, not their rows.
    """
    missing = tuple(n for n in TABLE_SPECS if n in history.missing and n in new.missing)
    missing_columns: dict[str, tuple[str, ...]] = {}
    for name in TABLE_SPECS:
        sources = [log for log in (history, new) if name not in log.missing]
        if sources:
            absent = set.intersection(*(set(log.missing_columns.get(name, ())) for log in sources))
            if absent:
                missing_columns[name] = tuple(c for c in table_dtypes(name) if c in absent)
    warnings = tuple(dict.fromkeys([*history.warnings, *(f"new events: {w}" for w in new.warnings)]))
    return missing, warnings, missing_columns


def update_snapshot(
    state: TrustState,
    new_events: EventLog,
    as_of: TimeLike,
    *,
    config: TrustConfig | None = None,
    backend: str = "pandas",
    progress: Progress | None = None,
) -> tuple[TrustSnapshot, TrustState]:
    """The snapshot as of ``as_of`` from a state and the events since it, and the new state.

    Equal (to floating-point summation order) to ``build_snapshot(full_log, as_of,
    state.config, index=state.index)``; events at or after ``as_of`` change nothing.

    Parameters
    ----------
    state
        :class:`TrustState` (:meth:`TrustState.load`, :func:`state_of`).
    new_events
        The rows added or changed since ``state.as_of`` (see the module docstring).
    as_of
        The new cut, not before ``state.as_of``.
    config
        Must equal the state's configuration when given (a state is tied to its config).

    Raises
    ------
    ConfigError
        ``as_of`` before the state's time, or ``config`` differs from the state's.
    SchemaError
        See :func:`merge_events`.

    Examples
    --------
    >>> import pandas as pd
    >>> from trustfeed.features.events import validate_events
    >>> from trustfeed.features.trust import build_snapshot
    >>> log = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": ["2026-01-01"] * 2}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2", "o3"], "user_id": ["u1", "u2", "u1"],
    ...                             "merchant_id": ["m1", "m1", "m2"], "amount": [10.0, 12.0, 9.0],
    ...                             "created_at": ["2026-01-02", "2026-01-03", "2026-01-09"]}),
    ... })
    >>> state = state_of(log, build_snapshot(log, "2026-01-05"))
    >>> snapshot, _ = update_snapshot(state, changes_since(log, "2026-01-05"), "2026-01-10")
    >>> snapshot.merchants["n_orders_raw"].tolist()
    [2.0, 1.0]
    """
    cut = to_utc(as_of)
    if config is not None and config != state.config:
        raise ConfigError("config: differs from the state's configuration (a state is tied to its config): rebuild in full")
    if cut < state.as_of:
        raise ConfigError(f"as_of {cut.isoformat()}: before the state's as-of {state.as_of.isoformat()}")
    progress = progress if progress is not None else NullProgress()
    progress(f"trust: applying new events to the state as of {state.as_of.isoformat()}")
    merged = merge_events(state, new_events)
    snapshot = build_snapshot(merged, cut, state.config, backend, progress, index=state.index)
    snapshot.manifest["incremental"] = {
        "state_as_of": state.as_of.isoformat(),
        "new_rows": {name: len(new_events[name]) for name in TABLE_SPECS if len(new_events[name])},
    }
    return snapshot, TrustState(cut, state.config, state.index, _keep(merged.before(cut)))
