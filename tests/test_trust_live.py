"""Live trust updates: equal to a full build with the carried weights and references, at the cost of the changed buyers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from trustfeed.features import LiveTrust
from trustfeed.features._dask_backend import make_aggregator
from trustfeed.features._incremental import changes_since
from trustfeed.features._live import _decayed_counts, undecayed_counts
from trustfeed.features._signals import build_counts, encode_ids
from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import EventLog, validate_events
from trustfeed.features.trust import TrustConfig, _category_codes, _merchant_meta, build_snapshot

CONFIG = TrustConfig(min_fit_merchants=20, horizon_days=5)


@pytest.fixture(scope="module")
def world() -> EventLog:
    from trustfeed.training.simulate import SimConfig, simulate

    return validate_events(simulate(SimConfig(seed=5, merchants=30, days=16)).tables)


@pytest.fixture(scope="module")
def weights(world: EventLog) -> dict[str, Any]:
    """Index weights fitted once (carried by every live state below, as a full build would fit them)."""
    cut = world.span()[0].floor("D") + pd.Timedelta(days=12)
    return dict(build_snapshot(world, cut, CONFIG).manifest["index_model"])


def _at(world: EventLog, days: float) -> pd.Timestamp:
    return world.span()[0].floor("D") + pd.Timedelta(days=days)


# No shrinking: each example builds a snapshot per step twice, and the steps are printed anyway.
@settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.floats(min_value=5.0, max_value=13.0),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.5), min_size=1, max_size=2),
)
def test_update_equals_a_full_build_with_the_carried_weights_and_references(
    same_snapshot: Any, world: EventLog, weights: dict[str, Any], first: float, steps: list[float]
) -> None:
    live = LiveTrust.start(world, _at(world, first), CONFIG, index=weights)
    cut = live.as_of
    for days in steps:
        cut = cut + pd.Timedelta(days=days)
        snapshot = live.update(changes_since(world, live.as_of), cut)
        assert snapshot.as_of == cut == live.as_of
        same_snapshot(snapshot, build_snapshot(world, cut, CONFIG, index=live.index, references=live.references))


def test_an_update_inside_a_burst_of_stranger_reports_equals_a_full_build(same_snapshot: Any, weights: dict[str, Any]) -> None:
    """Stranger reports of one bucket share a weight: reports on both sides of the state's time
    change each other's weight, so their reporters are recomputed together."""
    from trustfeed.training.simulate import SimConfig, simulate

    tables = simulate(SimConfig(seed=5, merchants=30, days=16)).tables
    start = pd.to_datetime(tables["orders"]["created_at"], utc=True).min().floor("D") + pd.Timedelta(days=9, hours=1)
    target = tables["orders"]["merchant_id"].astype(str).value_counts().index[0]
    bomb = pd.DataFrame(
        {
            "report_id": [f"bomb{i}" for i in range(12)],
            "reporter_id": [f"sock{i}" for i in range(12)],
            "created_at": [start + pd.Timedelta(minutes=20 * i) for i in range(12)],
            "category": "counterfeit",
            "merchant_id": target,
        }
    )
    world = validate_events({**tables, "reports": pd.concat([tables["reports"], bomb], ignore_index=True)})
    live = LiveTrust.start(world, start + pd.Timedelta(hours=2), CONFIG, index=weights)
    snapshot = live.update(changes_since(world, live.as_of), start + pd.Timedelta(days=1))
    same_snapshot(snapshot, build_snapshot(world, live.as_of, CONFIG, index=live.index, references=live.references))


def test_start_is_a_full_build_and_own_references_change_nothing(same_snapshot: Any, world: EventLog, weights: dict[str, Any]) -> None:
    cut = _at(world, 9.5)
    live = LiveTrust.start(world, cut, CONFIG, index=weights)
    plain = build_snapshot(world, cut, CONFIG, index=weights)
    same_snapshot(live.snapshot, plain)
    # references equal to the build's own: exactly the full build
    same_snapshot(build_snapshot(world, cut, CONFIG, index=weights, references=live.references), plain)
    # nothing new and no time passed: no buyer is recomputed
    later = live.update(changes_since(world, cut, until=cut), cut)
    assert later.manifest["incremental"]["buyers_recomputed"] == 0
    same_snapshot(later, plain)


def test_carried_references_are_what_differs_from_a_fresh_build(world: EventLog, weights: dict[str, Any]) -> None:
    live = LiveTrust.start(world, _at(world, 6.0), CONFIG, index=weights)
    cut = _at(world, 12.0)
    snapshot = live.update(changes_since(world, live.as_of), cut)
    fresh = build_snapshot(world, cut, CONFIG, index=weights)
    assert live.references.ring_norm != LiveTrust.start(world, cut, CONFIG, index=weights).references.ring_norm
    # same merchants and evidence counts that do not depend on credibility; the index moves little
    assert snapshot.merchants["merchant_id"].equals(fresh.merchants["merchant_id"])
    assert np.array_equal(snapshot.merchants["n_orders_raw"], fresh.merchants["n_orders_raw"])
    assert np.abs(snapshot.merchants["trust_index"] - fresh.merchants["trust_index"]).max() < 0.05


def test_only_changed_buyers_are_recomputed(world: EventLog, weights: dict[str, Any]) -> None:
    live = LiveTrust.start(world, _at(world, 12.0), CONFIG, index=weights)
    cut = live.as_of + pd.Timedelta(hours=1)
    new = changes_since(world, live.as_of, cut)
    snapshot = live.update(new, cut)
    recomputed = snapshot.manifest["incremental"]["buyers_recomputed"]
    assert 0 < recomputed < len(snapshot.extras["users"]) / 2
    assert recomputed >= new["orders"]["user_id"].nunique()


def test_events_after_the_cut_change_nothing_and_errors_change_nothing(same_snapshot: Any, world: EventLog, weights: dict[str, Any]) -> None:
    t0, cut = _at(world, 8.0), _at(world, 10.0)
    new = changes_since(world, t0)
    orders = world["orders"]
    late = orders[orders["created_at"] < cut].tail(20)
    after = cut + pd.Timedelta(minutes=1)
    reviews = pd.DataFrame({"review_id": [f"late-{i}" for i in range(len(late))], "order_id": late["order_id"].to_numpy(),
                            "user_id": late["user_id"].to_numpy(), "created_at": after, "rating": 1})
    tables = {name: new[name] for name in new.tables if name not in new.missing}
    tables["reviews"] = pd.concat([tables["reviews"], reviews.astype({"rating": "int64"})], ignore_index=True)
    noisy = validate_events(tables)
    live = LiveTrust.start(world, t0, CONFIG, index=weights)
    # bad input first: one line, and the live state is as it was
    stray = world.before(t0)["orders"].tail(1).assign(order_id="never-seen")
    with pytest.raises(SchemaError, match="does not hold .*order_id=never-seen"):  # the caller's id, not a code
        live.update(validate_events({"merchants": world["merchants"].iloc[:0], "orders": stray}), cut)
    with pytest.raises(ConfigError, match="before the live snapshot"):
        live.update(new, t0 - pd.Timedelta(hours=1))
    assert live.as_of == t0
    with_later = live.update(noisy, cut)
    clean = LiveTrust.start(world, t0, CONFIG, index=weights)
    same_snapshot(with_later, clean.update(new.before(cut), cut))
    same_snapshot(with_later, build_snapshot(world, cut, CONFIG, index=weights, references=clean.references))


def test_every_counter_is_classified(world: EventLog) -> None:
    """A new evidence column must say whether it ages by the half-life (the update relies on it)."""
    from trustfeed.features.trust import _project

    cut = _at(world, 10.0)
    known, enc = encode_ids(_project(world).before(cut))
    counts = build_counts({n: known[n] for n in known.tables}, cut, CONFIG, make_aggregator("pandas"), enc,
                          _category_codes(_merchant_meta(known["merchants"], cut, enc), enc))
    columns = set(counts.merchants.columns) | set(counts.creators.columns) | set(counts.users.columns)
    classified = undecayed_counts(CONFIG) | _decayed_counts(CONFIG)
    unclassified = {c for c in columns - classified if not c.startswith("benefit_")}
    assert not unclassified
    assert not (undecayed_counts(CONFIG) & _decayed_counts(CONFIG))


def test_updates_across_a_merge_of_the_new_rows_into_the_indexed_history(
    same_snapshot: Any, world: EventLog, weights: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """New rows live in a tail until it outgrows a share of the indexed base; then the two are
    merged and re-indexed. Updates on either side of the merge stay exact."""
    from trustfeed.features import _live

    live = LiveTrust.start(world, _at(world, 10.0), CONFIG, index=weights)
    first = live.update(changes_since(world, live.as_of), _at(world, 10.5))
    assert live._history.tail_rows() > 0  # the new rows sit in the tail
    same_snapshot(first, build_snapshot(world, live.as_of, CONFIG, index=live.index, references=live.references))
    monkeypatch.setattr(_live, "COMPACT_SHARE", 0.0)
    live.update(changes_since(world, live.as_of), _at(world, 11.0))
    assert live._history.tail_rows() == 0  # merged into the base
    later = live.update(changes_since(world, live.as_of), _at(world, 12.5))
    same_snapshot(later, build_snapshot(world, live.as_of, CONFIG, index=live.index, references=live.references))


def test_a_resent_order_that_was_a_shops_first_paid_order(same_snapshot: Any, world: EventLog, weights: dict[str, Any]) -> None:
    """A re-sent order row cancelled after the fact: if it was the shop's earliest paid order the
    shop's baseline (days since its first paid order) moves later; a later order leaves it."""
    t0, cut = _at(world, 10.0), _at(world, 10.5)
    orders = world["orders"].reset_index(drop=True)
    paid = orders[(orders["status"] != "cancelled") & (orders["created_at"] < t0)]
    first = paid.sort_values("created_at", kind="stable").groupby("merchant_id", observed=True).head(2)
    by_shop = first.groupby("merchant_id", observed=True)
    earliest = first.loc[by_shop["created_at"].idxmin().dropna().to_numpy()]
    shops = earliest["merchant_id"].unique()[:2]
    resent = pd.concat([earliest[earliest["merchant_id"] == shops[0]],  # the earliest paid order of one shop
                        first[(first["merchant_id"] == shops[1])].iloc[1:2]])  # the second of another
    changed = orders.copy()
    changed.loc[resent.index, "status"] = "cancelled"
    world2 = validate_events({**{n: world[n] for n in world.tables if n not in world.missing}, "orders": changed})
    live = LiveTrust.start(world, t0, CONFIG, index=weights)
    new = changes_since(world2, t0, cut)
    tables = {n: new[n] for n in new.tables if n not in new.missing}
    tables["orders"] = pd.concat([tables["orders"], changed.loc[resent.index]], ignore_index=True)
    before = live.snapshot.merchants.set_index("merchant_id")
    snapshot = live.update(validate_events(tables), cut)
    same_snapshot(snapshot, build_snapshot(world2, cut, CONFIG, index=live.index, references=live.references))
    assert len(resent) == 2
    assert before.loc[shops[0], "n_orders_raw"] > 0
