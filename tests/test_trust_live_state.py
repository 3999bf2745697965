"""A live trust state stored beside its snapshot: loads without the history, updates as in memory, refuses damage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from trustfeed.features import LiveTrust
from trustfeed.features._incremental import changes_since
from trustfeed.features.errors import ConfigError
from trustfeed.features.events import EventLog, validate_events, write_events
from trustfeed.features.trust import TrustConfig, TrustSnapshot, build_snapshot
from trustfeed.training.cli import main

CONFIG = TrustConfig(min_fit_merchants=20, horizon_days=5)


@pytest.fixture(scope="module")
def world() -> EventLog:
    from trustfeed.training.simulate import SimConfig, simulate

    return validate_events(simulate(SimConfig(seed=9, merchants=30, days=16)).tables)


def _at(world: EventLog, days: float) -> pd.Timestamp:
    return world.span()[0].floor("D") + pd.Timedelta(days=days)


def test_a_stored_state_updates_as_the_live_one_and_links_what_did_not_change(same_snapshot: Any, world: EventLog, tmp_path: Path) -> None:
    live = LiveTrust.start(world, _at(world, 9.0), CONFIG)
    live.save(tmp_path / "s0")
    stored = LiveTrust.load(tmp_path / "s0")
    assert stored.as_of == live.as_of and stored.index == live.index
    same_snapshot(TrustSnapshot.load(tmp_path / "s0"), live.snapshot)
    for k, days in enumerate((9.3, 9.7, 10.2), start=1):
        cut = _at(world, days)
        new = changes_since(world, live.as_of)
        in_memory = live.update(new, cut)
        from_disk = stored.update(new, cut)
        same_snapshot(from_disk, in_memory)
        same_snapshot(from_disk, build_snapshot(world, cut, CONFIG, index=stored.index, references=stored.references))
        stored.save(tmp_path / f"s{k}")
        stored = LiveTrust.load(tmp_path / f"s{k}")
        same_snapshot(TrustSnapshot.load(tmp_path / f"s{k}"), in_memory)
    # the full build's ids and the indexed history were linked, not written again
    for part in ("vocab/user.keys.npy", "history/orders.arrow", "history/groups.orders.order.npy"):
        assert os.path.samefile(tmp_path / "s0" / "state" / part, tmp_path / "s3" / "state" / part), part


def test_damaged_or_old_states_are_refused_in_one_line(world: EventLog, tmp_path: Path) -> None:
    LiveTrust.start(world, _at(world, 9.0), CONFIG).save(tmp_path / "s0")
    state = tmp_path / "s0" / "state"
    meta = json.loads((state / "state.json").read_text())
    # a file cut short
    tail = state / "delta" / "tail.orders.arrow"
    original = tail.read_bytes()
    tail.write_bytes(original[:-7])
    with pytest.raises(ConfigError, match="bytes, the state recorded") as error:
        LiveTrust.load(tmp_path / "s0")
    assert "\n" not in str(error.value)
    # same size, other bytes
    tail.write_bytes(original[:-7] + b"\x00" * 7 if original[-7:] != b"\x00" * 7 else original[:-7] + b"\x01" * 7)
    with pytest.raises(ConfigError, match="checksum differs"):
        LiveTrust.load(tmp_path / "s0")
    tail.write_bytes(original)
    # one byte changed in the middle of a base file (every file is checked in full, not by its ends)
    base = state / "history" / "orders.arrow"
    kept = base.read_bytes()
    middle = len(kept) // 2
    base.write_bytes(kept[:middle] + bytes([kept[middle] ^ 0xFF]) + kept[middle + 1 :])
    with pytest.raises(ConfigError, match="orders.arrow: checksum differs"):
        LiveTrust.load(tmp_path / "s0")
    base.write_bytes(kept)
    LiveTrust.load(tmp_path / "s0")  # restored: accepted again
    (state / "history" / "order_row.npy").unlink()
    with pytest.raises(ConfigError, match="missing from the stored state"):
        LiveTrust.load(tmp_path / "s0")
    # a state of the earlier format
    for version in (1, 2):  # the event history as Parquet; files checked by their first and last MiB
        (state / "state.json").write_text(json.dumps({**meta, "state_version": version}))
        with pytest.raises(ConfigError, match="earlier trustfeed.*rebuild in full"):
            LiveTrust.load(tmp_path / "s0")


def test_cli_incremental_is_point_in_time_and_leaves_nothing_half_written(
    same_snapshot: Any, world: EventLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0, cut = _at(world, 10.0), _at(world, 11.0)
    write_events(world, tmp_path / "log")
    assert main(["features", "--events", str(tmp_path / "log"), "--as-of", t0.isoformat(), "--out", str(tmp_path / "s0"), "--keep-state"]) == 0
    # the new events: everything after t0, also days past the cut, and 1-star reviews right after it
    new = changes_since(world, t0)
    orders = world["orders"]
    late = orders[orders["created_at"] < cut].tail(20)
    reviews = pd.DataFrame({"review_id": [f"late-{i}" for i in range(len(late))], "order_id": late["order_id"].to_numpy(),
                            "user_id": late["user_id"].to_numpy(), "created_at": cut + pd.Timedelta(minutes=1), "rating": 1})
    tables = {name: new[name] for name in new.tables if name not in new.missing}
    tables["reviews"] = pd.concat([tables["reviews"], reviews.astype({"rating": "int64"})], ignore_index=True)
    write_events(validate_events(tables), tmp_path / "noisy")
    write_events(changes_since(world, t0, cut), tmp_path / "clean")
    for name in ("noisy", "clean"):
        assert main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / name),
                     "--as-of", cut.isoformat(), "--out", str(tmp_path / f"s1-{name}")]) == 0
    noisy, clean = TrustSnapshot.load(tmp_path / "s1-noisy"), TrustSnapshot.load(tmp_path / "s1-clean")
    same_snapshot(noisy, clean)
    stored = LiveTrust.load(tmp_path / "s0")
    same_snapshot(noisy, build_snapshot(world, cut, index=stored.index, references=stored.references))
    capsys.readouterr()
    # a damaged state: one line, exit 2, no output directory
    (tmp_path / "s0" / "state" / "delta" / "counts.users.arrow").write_bytes(b"not arrow")
    status = main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / "clean"),
                   "--as-of", cut.isoformat(), "--out", str(tmp_path / "s2")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1 and "rebuild in full" in errors[0], errors
    assert not (tmp_path / "s2").exists()
    # the state is opened while the new events are read: its damage is reported even when the events are bad too
    status = main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / "nowhere"),
                   "--as-of", cut.isoformat(), "--out", str(tmp_path / "s2")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1 and "counts.users.arrow" in errors[0], errors
    assert not (tmp_path / "s2").exists()


def test_loading_reads_the_snapshot_tables_only_when_asked(same_snapshot: Any, world: EventLog, tmp_path: Path) -> None:
    """An update replaces the snapshot's tables without reading them; asked for, they are read and checked."""
    live = LiveTrust.start(world, _at(world, 9.0), CONFIG)
    live.save(tmp_path / "s0")
    (tmp_path / "s0" / "users.parquet").write_bytes(b"not parquet")
    stored = LiveTrust.load(tmp_path / "s0")
    assert stored.as_of == live.as_of
    cut = _at(world, 9.5)
    new = changes_since(world, live.as_of)
    same_snapshot(stored.update(new, cut), live.update(new, cut))
    stored.save(tmp_path / "s1")
    same_snapshot(TrustSnapshot.load(tmp_path / "s1"), live.snapshot)
    with pytest.raises(ConfigError, match="unreadable snapshot") as error:
        _ = LiveTrust.load(tmp_path / "s0").snapshot
    assert "\n" not in str(error.value)


def test_cli_checks_the_history_while_encoding_and_refuses_damage_before_writing(
    world: EventLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line checks the indexed history's checksums beside the events' encoding; damage found there
    is still one line, reported before any error of the events, and nothing is written."""
    t0, cut = _at(world, 10.0), _at(world, 11.0)
    LiveTrust.start(world, t0, CONFIG).save(tmp_path / "s0")
    write_events(changes_since(world, t0, cut), tmp_path / "new")
    orders = world["orders"]
    stale = orders[orders["created_at"] < t0].head(1).assign(order_id="never-seen")  # older than the state, unknown key
    new = changes_since(world, t0, cut)
    write_events(validate_events({**{n: new[n] for n in new.tables if n not in new.missing}, "orders": stale}), tmp_path / "stale")
    base = tmp_path / "s0" / "state" / "history" / "orders.arrow"
    kept = base.read_bytes()
    middle = len(kept) // 2
    base.write_bytes(kept[:middle] + bytes([kept[middle] ^ 0xFF]) + kept[middle + 1 :])
    capsys.readouterr()
    for events in ("new", "stale", "nowhere"):
        status = main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / events),
                       "--as-of", cut.isoformat(), "--out", str(tmp_path / "s1")])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert status == 2 and len(errors) == 1 and "orders.arrow: checksum differs" in errors[0], (events, errors)
        assert not (tmp_path / "s1").exists()
    base.write_bytes(kept)  # restored: the stale order is the error now, still before anything is written
    status = main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / "stale"),
                   "--as-of", cut.isoformat(), "--out", str(tmp_path / "s1")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1 and "earlier rows the state does not hold" in errors[0], errors
    assert "order_id=never-seen" in errors[0], errors  # the id as sent, not the state's code
    assert not (tmp_path / "s1").exists()
    assert main(["features", "--incremental", "--from", str(tmp_path / "s0"), "--events", str(tmp_path / "new"),
                 "--as-of", cut.isoformat(), "--out", str(tmp_path / "s1")]) == 0
