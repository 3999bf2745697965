"""A live trust state on disk: written beside a snapshot, loaded without reading the history.

``trustfeed features --keep-state`` and every ``--incremental`` update write ``state/`` into
the snapshot directory (see ``docs/trust.md``). It holds what :class:`~trustfeed.features.LiveTrust`
keeps in memory, as files that are read by memory-mapping, not parsed:

- ``vocab/``: per kind of id, the ids of the last full build sorted (``<kind>.keys.npy``,
  fixed-width UTF-8) with their codes (``<kind>.codes.npy``), looked up by binary search
  (:class:`~trustfeed.features._live.SortedKeys`); the ids the snapshot names, by code
  (``<kind>.names.arrow``);
- ``history/``: the indexed base of the history (:mod:`._live_history`): one Arrow IPC file
  per buyer table and one ``.npy`` per index;
- ``delta/``: what changed since the base: the tail of new rows, the dead base rows, the ids
  added since the full build, every evidence counter, the credibility references.

``vocab/`` and ``history/`` never change once written: a later update *links* them (hard
links; copies across file systems) into its own output and writes only ``delta/``, so an
update writes what grows with the new events and the counters, not the history. When the
tail outgrows a share of the base the update writes a new ``history/``.

``state.json`` lists every file with its size and BLAKE3 digest: on load every file is
checked in full, each memory-mapped and hashed on every core (BLAKE3 runs at several GB/s per
core, so checking the state costs a fraction of a second per GB, and a file changed anywhere
is refused, not only at its ends). ``trustfeed features --incremental`` checks the indexed
history's files (nearly all of the bytes) in a helper thread while it encodes the new events,
and reads none of their rows before that check has passed. Linked files keep the digest
recorded when they were written; an update hashes only what it writes. A state of another version or a damaged one is
refused with a one-line :class:`~trustfeed.features.errors.ConfigError`; a state written
before this format (version 1: the event history as Parquet; version 2: files checked by
SHA-256 of their first and last MiB) asks for a full rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ._incremental import check_state_meta
from ._live_history import REGISTRIES, USER_TABLES, Groups, Growable, History, Rows, Sorted, SortedKeys, View, Vocabulary
from ._signals import _ID_KINDS, CredibilityReferences, SignalCounts
from ._trust_config import TrustConfig
from .errors import ConfigError
from .events import table_dtypes
from .trust import FORMAT_VERSION, TrustSnapshot

__all__ = ["STATE_VERSION", "load_live", "save_live"]

STATE_VERSION = 3
_NAMED_KINDS = ("merchant", "entity", "category", "creator", "user")


# --------------------------------------------------------------------------- files


def _blake3(path: Path) -> str:
    from blake3 import blake3

    hasher = blake3(max_threads=blake3.AUTO)  # one file over every core (large inputs release the GIL)
    if path.stat().st_size:
        with pa.memory_map(str(path), "r") as source:
            hasher.update(memoryview(source.read_buffer()))
    return str(hasher.hexdigest())


def _digest(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "blake3": _blake3(path)}


def _check_sizes(root: Path, files: Mapping[str, Any]) -> None:
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the stored state (damaged: rebuild in full with --keep-state)")
        size = path.stat().st_size
        if size != expected["size"]:
            raise ConfigError(f"{path}: {size} bytes, the state recorded {expected['size']} (damaged: rebuild in full)")


def _check_digests(root: Path, files: Mapping[str, Any]) -> None:
    for name, expected in files.items():
        path = root / name
        if _blake3(path) != expected["blake3"]:
            raise ConfigError(f"{path}: checksum differs from the one recorded (damaged: rebuild in full)")


def _check(root: Path, files: Mapping[str, Any]) -> None:
    _check_sizes(root, files)
    _check_digests(root, files)


def _write_arrow(path: Path, frame: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        # pyarrow reads time columns through Series.values, which pandas 3.1 deprecates for zoned times
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_arrow(path: Path) -> Any:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _frame(path: Path, dtypes: dict[str, Any]) -> pd.DataFrame:
    out = _read_arrow(path).to_pandas()
    return out.astype({c: d for c, d in dtypes.items() if c in out.columns and out[c].dtype != d})


def _load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _link(source: Path, target: Path) -> None:
    """Hard-link ``source``'s files into ``target`` (copies when links are impossible)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _dtype(name: str, column: str, text: str) -> Any:
    if text == "category":
        return table_dtypes(name)[column]
    return pd.api.types.pandas_dtype(text)


# --------------------------------------------------------------------------- saving


def save_live(
    root: Path,
    *,
    as_of: pd.Timestamp,
    config: TrustConfig,
    index: Mapping[str, Any],
    backend: str,
    history: History,
    vocabularies: Mapping[str, Vocabulary],
    counts: SignalCounts,
    references: CredibilityReferences,
    stored: Mapping[str, Any],
) -> None:
    """Write a live state into ``root`` (``<snapshot staging dir>/state``)."""
    root.mkdir(parents=True)
    meta: dict[str, Any] = {
        "state_version": STATE_VERSION,
        "format_version": FORMAT_VERSION,
        "as_of": as_of.isoformat(),
        "config": config.to_dict(),
        "index": dict(index),
        "backend": backend,
        "missing": list(history.missing),
        "missing_columns": {k: list(v) for k, v in history.missing_columns.items()},
        "warnings": list(history.warnings),
        "dtypes": {name: {c: str(d) for c, d in dtypes.items()} for name, dtypes in history.dtypes.items()},
    }
    # vocab/: the full build's ids (linked when the state was loaded and the vocabularies are the stored ones)
    linked: set[str] = set()
    vocab = root / "vocab"
    if stored.get("vocab") is not None:
        _link(stored["vocab"], vocab)
        linked.add("vocab")
    else:
        vocab.mkdir()
        for kind, words in vocabularies.items():
            names = pa.array(words.names, type=pa.large_string()) if words.n_base else pa.array([], type=pa.large_string())
            keys = _sorted_keys(names)
            np.save(vocab / f"{kind}.keys.npy", keys.keys)
            np.save(vocab / f"{kind}.codes.npy", keys.codes)
            if kind in _NAMED_KINDS:
                _write_arrow(vocab / f"{kind}.names.arrow", pd.DataFrame({"id": pd.array(names, dtype="string")}))
    meta["vocab"] = {kind: words.n_base for kind, words in vocabularies.items()}
    # history/: the indexed base
    base = root / "history"
    if stored.get("history") is not None and history.base is stored.get("history_base"):
        _link(stored["history"], base)
        linked.add("history")
    else:
        base.mkdir()
        for name in USER_TABLES:
            _write_arrow(base / f"{name}.arrow", history.base[name].whole())
        for key, groups in history.groups.items():
            np.save(base / f"groups.{key}.order.npy", groups.order)
            np.save(base / f"groups.{key}.starts.npy", groups.starts)
        for key, times in history.times.items():
            np.save(base / f"times.{key}.values.npy", times.values)
            np.save(base / f"times.{key}.order.npy", times.order)
        if history.bursts is not None:
            np.save(base / "bursts.values.npy", history.bursts.values)
            np.save(base / "bursts.order.npy", history.bursts.order)
        np.save(base / "order_row.npy", history.order_row)
        np.save(base / "buyer_of.npy", history.base_buyer_of)
        cases = _sorted_keys(pa.array(history.case_row.array, type=pa.large_string()))
        np.save(base / "case.keys.npy", cases.keys)
        np.save(base / "case.rows.npy", cases.codes)
        for name, rows in history.orphans.items():
            np.save(base / f"orphans.{name}.npy", rows)
        np.save(base / "stream_merchant.npy", history.base_stream_merchant)
    meta["history"] = {
        "rows": {name: len(history.base[name]) for name in USER_TABLES},
        "groups": sorted(history.groups),
        "times": sorted(history.times),
        "bursts": history.bursts is not None,
    }
    # delta/: what changed since
    delta = root / "delta"
    delta.mkdir()
    cur = history.current
    for kind, words in vocabularies.items():
        _write_arrow(delta / f"added.{kind}.arrow", pd.DataFrame({"id": pd.array(words.added.array, dtype="string")}))
    for name in USER_TABLES:
        _write_arrow(delta / f"tail.{name}.arrow", cur.tail[name])
        alive = cur.alive[name]
        np.save(delta / f"dead.{name}.npy", np.zeros(0, dtype="int64") if alive is None else np.flatnonzero(~alive))
    for name in REGISTRIES:
        _write_arrow(delta / f"registry.{name}.arrow", cur.registries[name])
    changed = np.flatnonzero(cur.buyer_of[: len(history.base_buyer_of)] != history.base_buyer_of)
    np.save(delta / "buyer_of.codes.npy", changed)
    np.save(delta / "buyer_of.values.npy", cur.buyer_of[changed])
    np.save(delta / "buyer_of.added.npy", cur.buyer_of[len(history.base_buyer_of):])
    np.save(delta / "stream_merchant.npy", cur.stream_merchant)
    np.save(delta / "first_paid.npy", history.first_paid)
    _write_arrow(delta / "counts.merchants.arrow", counts.merchants.reset_index(names="code"))
    _write_arrow(delta / "counts.creators.arrow", counts.creators.reset_index(names="code"))
    _write_arrow(delta / "counts.users.arrow", counts.users.reset_index(drop=True))
    refs = references
    np.save(delta / "refs.shop_suspicion.npy", np.asarray(refs.shop_suspicion, dtype="float64"))
    np.save(delta / "refs.shop_orders.npy", np.asarray(refs.shop_orders, dtype="float64"))
    meta["references"] = {
        "category_median": {str(k): float(v) for k, v in zip(refs.category_median.index.to_numpy(dtype="int64").tolist(), refs.category_median.to_numpy(dtype="float64").tolist())},
        "overall_median": float(refs.overall_median),
        "logs_activity": bool(refs.logs_activity),
        "records_deliveries": bool(refs.records_deliveries),
        "ring_norm": float(refs.ring_norm),
    }
    digests = stored.get("digests", {})
    meta["files"] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            name = str(path.relative_to(root))
            meta["files"][name] = digests[name] if name.split("/", 1)[0] in linked and name in digests else _digest(path)
    (root / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))


def _sorted_keys(names: Any) -> SortedKeys:
    return SortedKeys.of(names)


# --------------------------------------------------------------------------- loading


def read_meta(directory: Path) -> dict[str, Any]:
    """``state.json`` of a snapshot directory, checked for its version and snapshot (one-line errors)."""
    path = directory / "state" / "state.json"
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such snapshot directory")
    if not path.is_file():
        raise ConfigError(f"{directory}: no incremental state (state/state.json): write the snapshot with trustfeed features --keep-state")
    try:
        meta = json.loads(path.read_text())
        version = meta.get("state_version")
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path}: unreadable state ({type(error).__name__})") from None
    if version in (1, 2):
        raise ConfigError(
            f"{path}: a state written by an earlier trustfeed (version {version}):"
            " rebuild in full with trustfeed features --keep-state"
        )
    check_state_meta(directory, path, meta, STATE_VERSION)
    return dict(meta)


def load_live(
    directory: str | os.PathLike[str], *, defer_history: bool = False
) -> tuple[dict[str, Any], dict[str, Any], Callable[[], None]]:
    """The parts of the :class:`~trustfeed.features.LiveTrust` stored in a snapshot directory
    (memory-mapped), where its unchanging files are, and the check still to run.

    Every file's presence and size is checked first. With ``defer_history`` the checksums
    of ``history/`` (the indexed history: nearly all of the bytes) are left to the returned
    function, which the caller must run before anything reads those files' rows (the
    command line runs it while it encodes the new events); otherwise every checksum is
    checked here and the returned function does nothing. Opening the history reads only
    its files' headers and Arrow footers (a damaged one is a one-line error too).

    Raises
    ------
    ConfigError
        No state, a state of another version or configuration, one that does not belong to
        the snapshot beside it, or a damaged one (a file missing, of another size or checksum).
    """
    directory = Path(directory)
    meta = read_meta(directory)
    root = directory / "state"
    files = dict(meta.get("files", {}))
    _check_sizes(root, files)
    later = {name: value for name, value in files.items() if defer_history and name.startswith("history/")}
    _check_digests(root, {name: value for name, value in files.items() if name not in later})
    config = TrustConfig.from_dict(meta["config"])
    index = dict(meta["index"])
    try:
        vocabularies = {}
        for kind in _ID_KINDS:
            n_base = int(meta["vocab"][kind])
            keys = SortedKeys(_load(root / "vocab" / f"{kind}.keys.npy"), _load(root / "vocab" / f"{kind}.codes.npy"))
            names = None
            if kind in _NAMED_KINDS:
                names = pd.array(_read_arrow(root / "vocab" / f"{kind}.names.arrow").column("id"), dtype="string")
            words = Vocabulary(lookup=keys, names=names, size=n_base)
            words.added = pd.Index(_frame(root / "delta" / f"added.{kind}.arrow", {"id": "string"})["id"].astype("string"))
            vocabularies[kind] = words
        history = _load_history(root, meta, config)
        delta = root / "delta"
        counts = SignalCounts(
            merchants=_frame(delta / "counts.merchants.arrow", {}).set_index("code").rename_axis(None),
            creators=_frame(delta / "counts.creators.arrow", {}).set_index("code").rename_axis(None),
            orders=pd.DataFrame(),
            users=_frame(delta / "counts.users.arrow", {}),
        )
        refs = meta["references"]
        references = CredibilityReferences(
            category_median=pd.Series({int(k): float(v) for k, v in refs["category_median"].items()}, dtype="float64"),
            overall_median=float(refs["overall_median"]),
            logs_activity=bool(refs["logs_activity"]),
            records_deliveries=bool(refs["records_deliveries"]),
            ring_norm=float(refs["ring_norm"]),
            shop_suspicion=np.asarray(_load(delta / "refs.shop_suspicion.npy")),
            shop_orders=np.asarray(_load(delta / "refs.shop_orders.npy")),
        )
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
        raise ConfigError(f"{root}: unreadable state ({type(error).__name__}: {str(error)[:120]}): rebuild in full") from None
    counts.references = references
    parts = {
        "history": history, "vocabularies": vocabularies, "counts": counts, "references": references, "index": index,
        "config": config, "backend": str(meta.get("backend", "pandas")), "snapshot": directory,
        "as_of": pd.Timestamp(meta["as_of"]),
    }  # fmt: skip
    stored = {"vocab": root / "vocab", "history": root / "history", "history_base": history.base, "digests": files}
    return parts, stored, lambda: _check_digests(root, later)


def read_snapshot(directory: Path) -> TrustSnapshot:
    """The snapshot beside a stored state (read on first use; a damaged one is a one-line error)."""
    try:
        return TrustSnapshot.load(directory)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
        raise ConfigError(f"{directory}: unreadable snapshot ({type(error).__name__}: {str(error)[:120]}): rebuild in full") from None


def _load_history(root: Path, meta: dict[str, Any], config: TrustConfig) -> History:
    base_dir, delta = root / "history", root / "delta"
    dtypes = {name: {c: _dtype(name, c, d) for c, d in columns.items()} for name, columns in meta["dtypes"].items()}
    base = {name: Rows(table=_read_arrow(base_dir / f"{name}.arrow"), dtypes=dtypes[name]) for name in USER_TABLES}
    for name in USER_TABLES:
        if len(base[name]) != int(meta["history"]["rows"][name]):
            raise ConfigError(f"{base_dir / name}.arrow: row count differs from the state's (damaged: rebuild in full)")
    groups = {key: Groups(_load(base_dir / f"groups.{key}.order.npy"), _load(base_dir / f"groups.{key}.starts.npy")) for key in meta["history"]["groups"]}
    times = {key: Sorted(_load(base_dir / f"times.{key}.values.npy"), _load(base_dir / f"times.{key}.order.npy")) for key in meta["history"]["times"]}
    bursts = Sorted(_load(base_dir / "bursts.values.npy"), _load(base_dir / "bursts.order.npy")) if meta["history"]["bursts"] else None
    cases = SortedKeys(_load(base_dir / "case.keys.npy"), _load(base_dir / "case.rows.npy"))
    base_buyer_of = _load(base_dir / "buyer_of.npy")
    buyer_of = np.concatenate([np.asarray(base_buyer_of), _load(delta / "buyer_of.added.npy")]).astype("int64", copy=False)
    buyer_of[_load(delta / "buyer_of.codes.npy")] = _load(delta / "buyer_of.values.npy")
    alive: dict[str, np.ndarray | None] = {}
    for name in USER_TABLES:
        dead = _load(delta / f"dead.{name}.npy")
        if len(dead):
            mask = np.ones(len(base[name]), dtype=bool)
            mask[dead] = False
            alive[name] = mask
        else:
            alive[name] = None
    registry_dtypes = {name: dtypes[name] for name in REGISTRIES}
    current = View(
        alive=alive,
        tail={name: _frame(delta / f"tail.{name}.arrow", dtypes[name]) for name in USER_TABLES},
        buyer_of=buyer_of,
        registries={name: _frame(delta / f"registry.{name}.arrow", registry_dtypes[name]) for name in REGISTRIES},
        stream_merchant=np.array(_load(delta / "stream_merchant.npy")),
    )
    store = Growable(buyer_of, -1, copy=False)  # buyer_of is this function's own copy
    current.buyer_of = store.view()
    return History(
        base=base, groups=groups, times=times, bursts=bursts, order_row=_load(base_dir / "order_row.npy"), case_row=cases,
        orphans={name: _load(base_dir / f"orphans.{name}.npy") for name in ("after_sales", "reviews")},
        base_stream_merchant=_load(base_dir / "stream_merchant.npy"), current=current, buyer_store=store,
        first_paid=np.array(_load(delta / "first_paid.npy")), missing=tuple(meta["missing"]), warnings=tuple(meta["warnings"]),
        missing_columns={k: tuple(v) for k, v in meta["missing_columns"].items()}, config=config, dtypes=dtypes,
        base_buyer_of=base_buyer_of,
    )  # fmt: skip
