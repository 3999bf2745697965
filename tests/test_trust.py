"""Trust snapshot: columns, point-in-time, shrinkage, gaming cases, monotonicity, round trip."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import validate_events
from trustfeed.features.io import OUTPUT_MARKER
from trustfeed.features.trust import DIMENSIONS, TrustConfig, TrustSnapshot, build_snapshot


def _load_helpers():
    name = "trustfeed_tests_trust_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_trust_data.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


data = _load_helpers()
AS_OF = data.AS_OF
# The crafted platform has 40 merchants; let them be enough to fit the index (the default
# asks for 100 merchant-periods) so the fitted path is what these tests exercise.
FIT = TrustConfig(min_fit_merchants=30)


@pytest.fixture(scope="module")
def crafted():
    tables, p_bad = data.craft_tables(np.random.default_rng(7))
    return tables, p_bad


@pytest.fixture(scope="module")
def crafted_snapshot(crafted):
    tables, _ = crafted
    return build_snapshot(validate_events(tables), AS_OF, FIT)


def _merchant(snapshot: TrustSnapshot, merchant_id: str) -> pd.Series:
    rows = snapshot.merchants[snapshot.merchants["merchant_id"] == merchant_id]
    assert len(rows) == 1
    return rows.iloc[0]


# --------------------------------------------------------------------------- columns


def test_documented_columns_and_ranges(crafted_snapshot):
    merchants = crafted_snapshot.merchants
    required = [
        "merchant_id", "entity_id", "category", "account_age_days", "trust_index", "expected_bad_rate",
        "n_orders", "n_orders_raw", "n_orders_7d", "n_orders_30d", "n_orders_90d",
        "bad_case_rate", "bad_case_rate_raw", "bad_case_rate_n", "bad_case_rate_bound",
        "low_rating_rate", "low_rating_rate_n", "banned", "entity_banned", "inherited_record", "cold_start",
        "prior_only", "brushing_score", "top_reasons",
    ]  # fmt: skip
    required += [f"trust_{d}" for d in DIMENSIONS]
    missing = [c for c in required if c not in merchants.columns]
    assert not missing
    for column in ["trust_index", *(f"trust_{d}" for d in DIMENSIONS)]:
        values = merchants[column].to_numpy(dtype=float)
        assert np.isfinite(values).all(), column
        assert ((values >= 0) & (values <= 1)).all(), column
    assert merchants["merchant_id"].is_unique
    assert merchants["merchant_id"].tolist() == sorted(merchants["merchant_id"])
    creators = crafted_snapshot.creators
    for column in ("creator_id", "merchant_id", "followers", "trust_host", "ctr", "conversion_rate", "n_streams", "n_impressions"):
        assert column in creators.columns
    assert creators["trust_host"].between(0, 1).all()
    assert crafted_snapshot.manifest["index_model"]["source"] == "fitted"
    # a prior per category (20 merchants each), keyed by category name
    assert set(crafted_snapshot.manifest["priors"]["beta"]["bad_case_rate"]["groups"]) == {"beauty", "food"}
    # every merchant names at least one reason, in the documented "name:+0.0123" form
    pieces = merchants["top_reasons"].str.split(";").explode()
    assert pieces.str.fullmatch(r"[a-z_0-9]+:[+-]\d+\.\d{4}").all()


def test_trust_orders_merchants_by_true_quality(crafted_snapshot, crafted):
    _, p_bad = crafted
    merchants = crafted_snapshot.merchants.set_index("merchant_id")
    rho = stats.spearmanr(merchants["trust_index"], -p_bad.reindex(merchants.index))[0]
    assert rho > 0.8


# --------------------------------------------------------------------------- point in time


def test_point_in_time_later_events_change_nothing(crafted, rng):
    tables, _ = crafted
    cut = AS_OF - pd.Timedelta(days=10)
    later = dict(tables)
    n = 300
    # A burst of disasters after the cut: orders with quality cases and 1-star reviews,
    # plus a ban. None of it may leak into the snapshot as of the cut.
    orders = pd.DataFrame(
        {
            "order_id": [f"late{i}" for i in range(n)],
            "user_id": [f"u{i % 50:04d}" for i in range(n)],
            "merchant_id": "m000",
            "created_at": cut + pd.to_timedelta(rng.uniform(0, 5, n), unit="D"),
            "amount": 50.0,
        }
    )
    later = data.add_rows(later, "orders", orders)
    later = data.add_rows(
        later,
        "reviews",
        pd.DataFrame(
            {"review_id": [f"lr{i}" for i in range(n)], "order_id": orders["order_id"], "user_id": orders["user_id"],
             "created_at": orders["created_at"] + pd.Timedelta(hours=1), "rating": 1}
        ),
    )  # fmt: skip
    later = data.add_rows(
        later,
        "violations",
        pd.DataFrame({"violation_id": ["v-late"], "merchant_id": ["m000"], "created_at": [cut + pd.Timedelta(days=1)], "severity": [3], "penalty": ["ban"]}),
    )
    # Cases opened before the cut but resolved after it: outcome must stay unknown.
    base = build_snapshot(validate_events(tables), cut, FIT)
    with_later = build_snapshot(validate_events(later), cut, FIT)
    pd.testing.assert_frame_equal(base.merchants, with_later.merchants)
    pd.testing.assert_frame_equal(base.creators, with_later.creators)
    assert not _merchant(with_later, "m000")["banned"]
    # ...and the later events do matter once the cut moves past them.
    moved = build_snapshot(validate_events(later), AS_OF, FIT)
    assert _merchant(moved, "m000")["banned"]


def test_snapshot_at_the_end_of_the_log_equals_the_explicit_cut(crafted):
    tables, _ = crafted
    events = validate_events(tables)
    # as of the end of the log nothing is cut: the builder skips the copy; same result as the
    # explicit point-in-time cut (resolutions after AS_OF do not exist in this log)
    direct = build_snapshot(events, AS_OF, FIT)
    explicit = build_snapshot(events.before(AS_OF), AS_OF, FIT)
    pd.testing.assert_frame_equal(direct.merchants, explicit.merchants)
    # a cut inside the log masks outcomes resolved after it, and the shortcut must not apply
    inside = AS_OF - pd.Timedelta(days=1)
    pd.testing.assert_frame_equal(
        build_snapshot(events, inside, FIT).merchants, build_snapshot(events.before(inside), inside, FIT).merchants
    )


def test_resolution_after_the_cut_is_unknown(crafted):
    tables, _ = crafted
    cases = tables["after_sales"]
    cut = AS_OF - pd.Timedelta(days=20)
    # Outcome known only later: a snapshot as of the cut counts these as unresolved.
    opened_before = (cases["opened_at"] < cut) & (cases["resolved_at"] >= cut)
    assert opened_before.any()
    snapshot = build_snapshot(validate_events(tables), cut, FIT)
    truth = cases[(cases["opened_at"] < cut)]
    resolved_known = (truth["resolved_at"] < cut).sum()
    # n_buyer_favor (effective, decayed) can only count cases resolved before the cut
    assert snapshot.merchants["buyer_favor_rate_n"].sum() <= resolved_known + 1e-9


# --------------------------------------------------------------------------- shrinkage


def _orders_for(merchant: str, n: int, start: pd.Timestamp, prefix: str, users: int = 300) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": [f"{prefix}{i}" for i in range(n)],
            "user_id": [f"u{i % users:04d}" for i in range(n)],
            "merchant_id": merchant,
            "created_at": start + pd.to_timedelta(np.linspace(0, 50, n), unit="D"),
            "amount": 60.0,
        }
    )


def _quality_cases(orders: pd.DataFrame, every: int, prefix: str) -> pd.DataFrame:
    picked = orders.iloc[::every]
    return pd.DataFrame(
        {
            "case_id": [f"{prefix}{i}" for i in range(len(picked))],
            "order_id": picked["order_id"].to_numpy(),
            "opened_at": picked["created_at"].to_numpy() + pd.Timedelta(days=1),
            "type": "return",
            "reason": "quality",
        }
    )


def test_shrinkage_sparse_near_prior_busy_near_raw(crafted):
    tables, _ = crafted
    start = data.START
    tiny = _orders_for("m_tiny", 1, start, "t")
    busy = _orders_for("m_busy", 10_000, start, "b")
    extra_merchants = pd.DataFrame(
        {"merchant_id": ["m_tiny", "m_busy"], "registered_at": start - pd.Timedelta(days=100), "category": "beauty"}
    )
    grown = data.add_rows(tables, "merchants", extra_merchants)
    grown = data.add_rows(grown, "orders", pd.concat([tiny, busy], ignore_index=True))
    # the one-order merchant's only order is bad; the busy one has exactly 20% bad orders
    cases = pd.concat([_quality_cases(tiny, 1, "ct"), _quality_cases(busy, 5, "cb")], ignore_index=True)
    grown = data.add_rows(grown, "after_sales", cases)
    snapshot = build_snapshot(validate_events(grown), AS_OF, TrustConfig(half_life_days=10_000))
    prior_mean = snapshot.merchants["bad_case_rate"].median()
    tiny_row, busy_row = _merchant(snapshot, "m_tiny"), _merchant(snapshot, "m_busy")
    assert tiny_row["bad_case_rate_raw"] == 1.0
    assert abs(tiny_row["bad_case_rate"] - prior_mean) < 0.1
    assert abs(busy_row["bad_case_rate"] - 0.2) < 0.005
    assert tiny_row["cold_start"] and not busy_row["cold_start"]


def test_merchant_without_orders_gets_the_prior_not_nan(crafted):
    tables, _ = crafted
    grown = data.add_rows(
        tables, "merchants", pd.DataFrame({"merchant_id": ["m_new"], "registered_at": [AS_OF - pd.Timedelta(days=2)], "category": ["food"]})
    )
    snapshot = build_snapshot(validate_events(grown), AS_OF, FIT)
    row = _merchant(snapshot, "m_new")
    assert row["prior_only"] and row["cold_start"]
    values = row[["trust_index", "bad_case_rate", "low_rating_rate", *(f"trust_{d}" for d in DIMENSIONS)]].to_numpy(dtype=float)
    assert np.isfinite(values).all()
    assert 0.0 < row["bad_case_rate"] < 0.5


# --------------------------------------------------------------------------- gaming


def _trust(snapshot: TrustSnapshot, merchant_id: str) -> float:
    return float(_merchant(snapshot, merchant_id)["trust_index"])


def test_brushing_with_fresh_accounts_does_not_raise_trust(crafted, crafted_snapshot):
    tables, _ = crafted
    target = "m030"  # a poor merchant (p_bad ~ 0.3)
    n = 400
    fake = pd.DataFrame(
        {
            "order_id": [f"fake{i}" for i in range(n)],
            "user_id": [f"sock{i % 40}" for i in range(n)],  # 40 accounts with no other history
            "merchant_id": target,
            "created_at": data.START + pd.to_timedelta(np.linspace(1, 59, n), unit="D"),
            "amount": 1.0,
        }
    )
    reviews = pd.DataFrame(
        {"review_id": [f"fr{i}" for i in range(n)], "order_id": fake["order_id"], "user_id": fake["user_id"],
         "created_at": fake["created_at"] + pd.Timedelta(hours=2), "rating": 5}
    )  # fmt: skip
    brushed = data.add_rows(data.add_rows(tables, "orders", fake), "reviews", reviews)
    snapshot = build_snapshot(validate_events(brushed), AS_OF, FIT)
    before, after = _merchant(crafted_snapshot, target), _merchant(snapshot, target)
    assert after["trust_index"] <= before["trust_index"] + 1e-9
    assert after["brushing_score"] > before["brushing_score"] + 0.3
    # the fake 5-star reviews did not dilute its low-rating rate
    assert after["low_rating_rate"] >= before["low_rating_rate"] - 0.02
    # ...and it did not climb the ranking either
    rank_before = crafted_snapshot.merchants["trust_index"].rank(pct=True)[crafted_snapshot.merchants["merchant_id"] == target].iloc[0]
    rank_after = snapshot.merchants["trust_index"].rank(pct=True)[snapshot.merchants["merchant_id"] == target].iloc[0]
    assert rank_after <= rank_before


def test_aged_ring_accounts_lose_credibility_by_where_they_buy(crafted, crafted_snapshot):
    tables, _ = crafted
    shops = ["m030", "m028"]  # two poor merchants brushing through one ring
    n_ring, n_sock = 30, 300
    ring = [f"ring{i}" for i in range(n_ring)]
    # Aged accounts: they follow a host and each places one decoy order at an honest shop, so
    # no per-account cue fires; then two normal-priced orders at each brushing shop.
    decoy_shops = [f"m{i:03d}" for i in range(0, 10)]
    decoys = pd.DataFrame(
        {"order_id": [f"decoy{i}" for i in range(n_ring)], "user_id": ring,
         "merchant_id": [decoy_shops[i % 10] for i in range(n_ring)],
         "created_at": data.START + pd.Timedelta(days=3), "amount": 55.0}
    )  # fmt: skip
    ring_orders = pd.DataFrame(
        {"order_id": [f"ro{i}" for i in range(4 * n_ring)], "user_id": np.tile(ring, 4),
         "merchant_id": np.repeat(shops * 2, n_ring),
         "created_at": data.START + pd.to_timedelta(np.linspace(5, 58, 4 * n_ring), unit="D"), "amount": 55.0}
    )  # fmt: skip
    # ...alongside one-shot fresh accounts, which the isolation cue catches
    socks = pd.DataFrame(
        {"order_id": [f"so{i}" for i in range(n_sock)], "user_id": [f"sock{i // 2}" for i in range(n_sock)],
         "merchant_id": np.repeat(shops, n_sock // 2),
         "created_at": data.START + pd.to_timedelta(np.linspace(1, 59, n_sock), unit="D"), "amount": 55.0}
    )  # fmt: skip
    fake = pd.concat([ring_orders, socks], ignore_index=True)
    reviews = pd.DataFrame(
        {"review_id": "fr" + fake["order_id"], "order_id": fake["order_id"], "user_id": fake["user_id"],
         "created_at": fake["created_at"] + pd.Timedelta(days=4), "rating": 5}
    )  # fmt: skip
    follows = pd.DataFrame({"user_id": ring, "creator_id": "cm005", "followed_at": data.START - pd.Timedelta(days=30)})
    brushed = data.add_rows(tables, "orders", pd.concat([decoys, fake], ignore_index=True))
    brushed = data.add_rows(data.add_rows(brushed, "reviews", reviews), "follows", follows)
    events = validate_events(brushed)
    with_cue = build_snapshot(events, AS_OF, FIT)
    without = build_snapshot(events, AS_OF, TrustConfig(min_fit_merchants=30, ring_buyer_suspicion=0.0))
    # A lightly penalised fit leans on the review evidence the fakes forge: there, without the
    # cue, the attack buys trust (the default fit on this small log does not give it that much).
    light = TrustConfig(min_fit_merchants=30, ridge=0.05)
    light_cue = build_snapshot(events, AS_OF, light)
    light_without = build_snapshot(events, AS_OF, TrustConfig(min_fit_merchants=30, ridge=0.05, ring_buyer_suspicion=0.0))
    light_clean = build_snapshot(validate_events(tables), AS_OF, light)
    for shop in shops:
        assert _merchant(with_cue, shop)["brushing_score"] > _merchant(without, shop)["brushing_score"] + 0.1
        assert _merchant(with_cue, shop)["low_rating_rate"] > _merchant(without, shop)["low_rating_rate"]
        assert _trust(with_cue, shop) <= _trust(without, shop) + 1e-9
        assert _trust(with_cue, shop) <= _trust(crafted_snapshot, shop) + 0.01
        assert _trust(light_cue, shop) <= _trust(light_without, shop) + 1e-9
        assert _trust(light_cue, shop) <= _trust(light_clean, shop) + 0.01
        # without the cue the same attack buys trust from that fit: the checks above have teeth
        assert _trust(light_without, shop) > _trust(light_clean, shop) + 0.02
    # the honest shops where the ring placed decoys are not dragged down by their buyers
    for shop in decoy_shops:
        assert abs(_merchant(with_cue, shop)["brushing_score"] - _merchant(without, shop)["brushing_score"]) < 0.05


def test_one_buyer_reviewing_many_times_does_not_raise_trust(crafted, crafted_snapshot):
    tables, _ = crafted
    target = "m030"
    n = 200
    # one established buyer (it follows a creator, buys elsewhere) orders and reviews 200 times
    repeat = pd.DataFrame(
        {
            "order_id": [f"rep{i}" for i in range(n)],
            "user_id": "u0001",
            "merchant_id": target,
            "created_at": data.START + pd.to_timedelta(np.linspace(1, 59, n), unit="D"),
            "amount": 55.0,
        }
    )
    reviews = pd.DataFrame(
        {"review_id": [f"rr{i}" for i in range(n)], "order_id": repeat["order_id"], "user_id": "u0001",
         "created_at": repeat["created_at"] + pd.Timedelta(hours=2), "rating": 5}
    )  # fmt: skip
    gamed = data.add_rows(data.add_rows(tables, "orders", repeat), "reviews", reviews)
    snapshot = build_snapshot(validate_events(gamed), AS_OF, FIT)
    assert _trust(snapshot, target) <= _trust(crafted_snapshot, target) + 0.01


def test_praise_before_delivery_does_not_raise_trust(crafted):
    tables, _ = crafted
    orders = tables["orders"].copy()
    orders["delivered_at"] = orders["shipped_at"] + pd.Timedelta(days=2)
    base = dict(tables, orders=orders)
    target = "m030"
    n = 150
    # established buyers (they follow creators, buy elsewhere), one normal-priced order each,
    # a 5-star review within the hour and nothing ever delivered: a subtler brushing ring
    ring = pd.DataFrame(
        {
            "order_id": [f"ring{i}" for i in range(n)],
            "user_id": [f"u{(7 * i) % 400:04d}" for i in range(n)],
            "merchant_id": target,
            "created_at": data.START + pd.to_timedelta(np.linspace(1, 55, n), unit="D"),
            "amount": 60.0,
        }
    )
    praise = pd.DataFrame(
        {"review_id": [f"ringr{i}" for i in range(n)], "order_id": ring["order_id"], "user_id": ring["user_id"],
         "created_at": ring["created_at"] + pd.Timedelta(hours=1), "rating": 5}
    )  # fmt: skip
    gamed = data.add_rows(data.add_rows(base, "orders", ring), "reviews", praise)
    config = TrustConfig(fit_index=False)
    before = _merchant(build_snapshot(validate_events(base), AS_OF, config), target)
    after = _merchant(build_snapshot(validate_events(gamed), AS_OF, config), target)
    assert after["low_rating_rate"] >= before["low_rating_rate"] - 0.01
    assert after["bad_case_rate"] >= before["bad_case_rate"] - 0.01
    assert after["trust_index"] <= before["trust_index"] + 1e-9
    assert after["brushing_score"] > before["brushing_score"] + 0.3
    # the same attack with the rule off does dilute the record: the rule is what stops it
    naive = _merchant(build_snapshot(validate_events(gamed), AS_OF, TrustConfig(fit_index=False, premature_praise_weight=1.0)), target)
    assert naive["low_rating_rate"] < before["low_rating_rate"] - 0.02
    assert naive["trust_index"] > before["trust_index"]


def test_reregistered_banned_entity_inherits_the_record(crafted):
    tables, _ = crafted
    merchants = tables["merchants"].copy()
    banned_entity = merchants.loc[merchants["merchant_id"] == "m035", "entity_id"].iloc[0]
    new_shops = pd.DataFrame(
        {
            "merchant_id": ["m_rereg", "m_fresh"],
            "registered_at": [AS_OF - pd.Timedelta(days=20)] * 2,
            "entity_id": [banned_entity, "e_fresh"],
            "category": ["food", "food"],
        }
    )
    grown = data.add_rows(tables, "merchants", new_shops)
    good_orders = pd.concat(
        [_orders_for("m_rereg", 30, AS_OF - pd.Timedelta(days=19), "rg"), _orders_for("m_fresh", 30, AS_OF - pd.Timedelta(days=19), "fg")],
        ignore_index=True,
    )
    good_orders["created_at"] = AS_OF - pd.Timedelta(days=19) + pd.to_timedelta(np.tile(np.linspace(0, 18, 30), 2), unit="D")
    grown = data.add_rows(grown, "orders", good_orders)
    ban = pd.DataFrame(
        {"violation_id": ["v1", "v2"], "merchant_id": ["m035", "m035"], "created_at": [AS_OF - pd.Timedelta(days=40), AS_OF - pd.Timedelta(days=30)],
         "severity": [2, 3], "penalty": ["restriction", "ban"]}
    )  # fmt: skip
    grown = data.add_rows(grown, "violations", ban)
    snapshot = build_snapshot(validate_events(grown), AS_OF, FIT)
    rereg, fresh = _merchant(snapshot, "m_rereg"), _merchant(snapshot, "m_fresh")
    assert rereg["banned"] and rereg["inherited_record"] and rereg["entity_banned"]
    assert not fresh["banned"] and not fresh["inherited_record"]
    assert rereg["trust_index"] < fresh["trust_index"]
    percentile = snapshot.merchants["trust_index"].rank(pct=True)[snapshot.merchants["merchant_id"] == "m_rereg"].iloc[0]
    assert percentile <= 0.1
    assert "banned" in rereg["top_reasons"]


def _reports(target: str, n: int, verified, category: str = "counterfeit", reporters: int | None = None) -> pd.DataFrame:
    reporters = reporters or n
    return pd.DataFrame(
        {
            "report_id": [f"rep-{target}-{verified}-{i}" for i in range(n)],
            "reporter_id": [f"u{i % reporters:04d}" for i in range(n)],
            "created_at": AS_OF - pd.to_timedelta(np.linspace(1, 30, n), unit="D"),
            "category": category,
            "merchant_id": target,
            "verified": pd.array([verified] * n, dtype="boolean"),
        }
    )


def test_rejected_reports_weigh_nothing_unverified_little(crafted):
    tables, _ = crafted
    target = "m005"  # a good merchant
    # Every other merchant gets one verified report so the report signal exists in the data.
    base_reports = pd.concat(
        [_reports(f"m{i:03d}", 1, True) for i in range(0, 40, 3)], ignore_index=True
    )
    base = data.add_rows(tables, "reports", base_reports)
    config = TrustConfig(fit_index=False)  # fixed weights: the comparison is about the evidence
    reference = build_snapshot(validate_events(base), AS_OF, config)
    rejected = build_snapshot(validate_events(data.add_rows(base, "reports", _reports(target, 50, False))), AS_OF, config)
    unverified = build_snapshot(validate_events(data.add_rows(base, "reports", _reports(target, 50, None))), AS_OF, config)
    verified = build_snapshot(validate_events(data.add_rows(base, "reports", _reports(target, 50, True))), AS_OF, config)
    t0 = _trust(reference, target)
    assert _trust(rejected, target) == pytest.approx(t0, abs=1e-12)
    drop_unverified = t0 - _trust(unverified, target)
    drop_verified = t0 - _trust(verified, target)
    assert drop_verified > 0.05
    assert 0 <= drop_unverified < drop_verified / 5
    assert _merchant(rejected, target)["n_rejected_reports_raw"] == 50


def test_no_reason_returns_are_not_a_quality_signal(crafted, crafted_snapshot):
    tables, _ = crafted
    target = "m010"
    orders = tables["orders"][tables["orders"]["merchant_id"] == target]
    returns = pd.DataFrame(
        {
            "case_id": [f"nr{i}" for i in range(len(orders))],
            "order_id": orders["order_id"].to_numpy(),
            "opened_at": orders["created_at"].to_numpy() + pd.Timedelta(days=2),
            "type": "return",
            "reason": "no_reason",
            "resolved_at": orders["created_at"].to_numpy() + pd.Timedelta(days=3),
            "outcome": "buyer_favor",
        }
    )
    snapshot = build_snapshot(validate_events(data.add_rows(tables, "after_sales", returns)), AS_OF, FIT)
    row, before = _merchant(snapshot, target), _merchant(crafted_snapshot, target)
    assert row["n_no_reason_cases"] > 0
    assert row["trust_index"] == pytest.approx(before["trust_index"], abs=1e-12)
    assert row["bad_case_rate"] == pytest.approx(before["bad_case_rate"], abs=1e-12)


# --------------------------------------------------------------------------- monotonicity


_MONOTONE_CACHE: dict[str, object] = {}


def _monotone_base():
    """A fixed platform where every signal's table exists (a table appearing is not "worse")."""
    if not _MONOTONE_CACHE:
        tables, _ = data.craft_tables(np.random.default_rng(3), n_merchants=32, orders_per_merchant=30, n_users=200)
        tables = data.add_rows(tables, "reports", _reports("m031", 2, True))
        tables = data.add_rows(
            tables,
            "violations",
            pd.DataFrame({"violation_id": ["base"], "merchant_id": ["m031"], "created_at": [AS_OF - pd.Timedelta(days=9)],
                          "severity": [1], "penalty": ["warning"]}),
        )  # fmt: skip
        config = TrustConfig(fit_index=False)
        _MONOTONE_CACHE.update(tables=tables, config=config, before=build_snapshot(validate_events(tables), AS_OF, config))
    return _MONOTONE_CACHE["tables"], _MONOTONE_CACHE["config"], _MONOTONE_CACHE["before"]


@settings(max_examples=8, deadline=None)
# a second, earlier quality case on an order that is already bad (once aged the bad evidence)
@example(signal="quality_case", amount=1, merchant=6)
@given(
    signal=st.sampled_from(["quality_case", "low_rating", "verified_report", "violation", "late_shipment"]),
    amount=st.integers(min_value=1, max_value=10),
    merchant=st.integers(min_value=0, max_value=30),
)
def test_worsening_one_signal_never_raises_trust(signal, amount, merchant):
    tables, config, before = _monotone_base()
    target = f"m{merchant:03d}"
    orders = tables["orders"][tables["orders"]["merchant_id"] == target].head(amount)
    if signal == "quality_case":
        worse = data.add_rows(tables, "after_sales", _quality_cases(orders, 1, "mono"))
    elif signal == "low_rating":
        reviewed = set(tables["reviews"]["order_id"])
        fresh = orders[~orders["order_id"].isin(reviewed)]
        worse = data.add_rows(
            tables,
            "reviews",
            pd.DataFrame({"review_id": "mono" + fresh["order_id"], "order_id": fresh["order_id"], "user_id": fresh["user_id"],
                          "created_at": fresh["created_at"] + pd.Timedelta(hours=5), "rating": 1}),
        )  # fmt: skip
    elif signal == "verified_report":
        worse = data.add_rows(tables, "reports", _reports(target, amount, True))
    elif signal == "violation":
        worse = data.add_rows(
            tables,
            "violations",
            pd.DataFrame({"violation_id": [f"mv{i}" for i in range(amount)], "merchant_id": target,
                          "created_at": AS_OF - pd.Timedelta(days=5), "severity": 2, "penalty": "warning"}),
        )  # fmt: skip
    else:
        late = tables["orders"].copy()
        rows = late.index[late["order_id"].isin(orders["order_id"])]
        late.loc[rows, "shipped_at"] = late.loc[rows, "promised_ship_by"] + pd.Timedelta(days=3)
        worse = dict(tables, orders=late)
    after = build_snapshot(validate_events(worse), AS_OF, config)
    assert _trust(after, target) <= _trust(before, target) + 1e-12


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    column=st.integers(0, 4),
    delta=st.floats(min_value=1e-4, max_value=0.5),
)
def test_fitted_index_model_is_monotone(seed, column, delta):
    from trustfeed.features._trust_index import IndexModel

    rng = np.random.default_rng(seed)
    names = ["bad_case_rate", "low_rating_rate", "late_shipment_rate", "violation_severity", "benefit_gap"]
    risk = pd.DataFrame(rng.random((60, 5)) * 0.3, columns=names)
    # a target that even rewards some risks (negative true weight): NNLS must still not
    target = risk.to_numpy() @ rng.normal(0, 1, 5) + rng.normal(0, 0.05, 60)
    model = IndexModel().fit(risk, np.clip(target, 0, 1), rng.uniform(1, 50, 60))
    worse = risk.copy()
    worse.iloc[:, column] += delta
    for group in model.models:
        assert (model.predict(worse, group) >= model.predict(risk, group) - 1e-12).all()
    assert all(w >= 0 for m in model.models.values() for w in m.weights.values())
    # the dimension scores are standings against a population: also in [0, 1], never raised
    # by a worse signal, and spread (the mid-ECDF of the population itself is uniform-ish)
    model.calibrate(risk)
    for group in model.models:
        before, after = model.standing(risk, group), model.standing(worse, group)
        assert ((before >= 0) & (before <= 1)).all() and (after <= before + 1e-12).all()
        if np.ptp(model.predict(risk, group)) > 1e-9:
            assert np.ptp(before) > 0.5


def _category_rows(rng, n=240):
    from trustfeed.features._trust_index import RiskRows

    names = ["bad_case_rate", "late_shipment_rate", "benefit_gap"]
    category = rng.choice(np.array(["books", "food", "toys"], dtype=object), n)
    base = pd.Series(category).map({"books": 0.02, "food": 0.15, "toys": 0.06}).to_numpy()
    baseline = pd.DataFrame({name: base * (1 + k) for k, name in enumerate(names)})
    excess = pd.DataFrame(rng.normal(0, 0.03, (n, len(names))), columns=names)
    target = np.clip(base + 0.8 * excess["bad_case_rate"] + 0.3 * excess["late_shipment_rate"] + rng.normal(0, 0.01, n), 0, 1)
    return RiskRows(baseline + excess, baseline, category), target


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), column=st.integers(0, 2), delta=st.floats(min_value=1e-4, max_value=0.5))
def test_index_with_categories_is_monotone_and_round_trips(seed, column, delta):
    from trustfeed.features._trust_index import IndexModel, RiskRows

    rng = np.random.default_rng(seed)
    rows, target = _category_rows(rng)
    model = IndexModel().fit(rows, target, rng.uniform(5, 200, len(target)), scored=rows)
    fitted = model.models["trust_index"]
    assert set(fitted.by_category) == {"books", "food", "toys"} and all(w >= 0 for w in fitted.weights.values())
    # category intercepts follow the categories' base rates (they come from outcomes)
    assert fitted.by_category["books"] < fitted.by_category["toys"] < fitted.by_category["food"]
    worse = rows.risk.copy()
    worse.iloc[:, column] += delta
    assert (model.predict(RiskRows(worse, rows.baseline, rows.category), "trust_index") >= model.predict(rows, "trust_index") - 1e-12).all()
    # a category unknown to the fit gets the pooled intercept; the weights survive a round trip
    unknown = RiskRows(rows.risk, rows.baseline, np.array([None] * len(target), dtype=object))
    assert np.isfinite(model.predict(unknown, "trust_index")).all()
    again = IndexModel.from_dict(model.to_dict(), list(rows.risk.columns))
    assert np.array_equal(again.predict(rows, "trust_index"), model.predict(rows, "trust_index"))


def test_a_shift_of_a_category_prior_moves_no_merchant():
    """The index reads signals in excess of the category baseline: a prior refitted higher for
    a whole category (same evidence) leaves its merchants where they were."""
    from trustfeed.features._trust_index import IndexModel, RiskRows

    rng = np.random.default_rng(11)
    rows, target = _category_rows(rng)
    model = IndexModel().fit(rows, target, np.full(len(target), 50.0))
    food = (rows.category == "food")[:, None]
    shifted = RiskRows(rows.risk + 0.05 * food, rows.baseline + 0.05 * food, rows.category)
    assert np.allclose(model.predict(shifted, "trust_index"), model.predict(rows, "trust_index"), atol=1e-12)
    # an uncentred fit of the same rows does move them (the old behaviour)
    plain = IndexModel().fit(rows.risk, target, np.full(len(target), 50.0))
    assert not np.allclose(plain.predict(shifted.risk, "trust_index"), plain.predict(rows.risk, "trust_index"), atol=1e-4)


def test_fit_weights_rows_by_their_variance_not_their_volume():
    """One merchant with a huge surge of orders and a freak later rate cannot set the weights."""
    from trustfeed.features._trust_index import IndexModel

    rng = np.random.default_rng(4)
    risk = pd.DataFrame({"bad_case_rate": rng.uniform(0.0, 0.2, 300)})
    orders = rng.uniform(20, 100, 300)
    target = np.clip(0.8 * risk["bad_case_rate"].to_numpy() + rng.normal(0, 0.02, 300), 0, 1)
    risk.loc[0, "bad_case_rate"], target[0], orders[0] = 0.2, 0.0, 1e6  # a busy shop, no later complaint
    model = IndexModel().fit(risk, target, orders, ridge=1e-6)
    assert model.models["trust_index"].weights["bad_case_rate"] == pytest.approx(0.8, abs=0.1)
    assert model.fit_quality["merchant_variance"] > 0


def test_a_signal_constant_on_the_fit_rows_cannot_swing_the_scored_merchants():
    from trustfeed.features._trust_index import IndexModel

    rng = np.random.default_rng(8)
    fit_rows = pd.DataFrame({"bad_case_rate": rng.uniform(0, 0.2, 200), "fast_refund_share": 0.5 + rng.normal(0, 1e-4, 200)})
    target = np.clip(0.8 * fit_rows["bad_case_rate"].to_numpy() + 200 * (fit_rows["fast_refund_share"].to_numpy() - 0.5)
                     + rng.normal(0, 0.02, 200), 0, 1)  # fmt: skip
    scored = fit_rows.assign(fast_refund_share=rng.uniform(0.2, 0.8, 200))
    loose = IndexModel().fit(fit_rows, target, np.full(200, 50.0))
    model = IndexModel().fit(fit_rows, target, np.full(200, 50.0), scored=scored)
    swing = lambda m: np.ptp(m.models["trust_index"].weights["fast_refund_share"] * scored["fast_refund_share"])  # noqa: E731
    assert swing(model) < 0.05 < swing(loose)


def test_standing_is_the_population_mid_ecdf():
    from trustfeed.features._trust_index import IndexModel

    rng = np.random.default_rng(5)
    risk = pd.DataFrame({"bad_case_rate": rng.random(200) * 0.2})
    model = IndexModel().fit(risk, risk["bad_case_rate"].to_numpy() * 0.8, np.ones(200)).calibrate(risk)
    standing = model.standing(risk, "trust_index")
    # the merchant with the lowest bad-case rate stands above (almost) everyone, and vice versa
    expected = 1.0 - (risk["bad_case_rate"].rank().to_numpy() - 0.5) / 200
    assert np.allclose(standing, expected, atol=1e-9)
    # beyond the population's range the standing keeps moving towards 0 and 1
    extreme = pd.DataFrame({"bad_case_rate": [0.9, 0.0]})
    low, high = model.standing(extreme, "trust_index")
    assert 0.0 <= low < standing.min() and standing.max() <= high <= 1.0


# --------------------------------------------------------------------------- io, config, backends


def test_snapshot_round_trip(crafted_snapshot, tmp_path):
    crafted_snapshot.save(tmp_path / "snap")
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [
        OUTPUT_MARKER, "creators.parquet", "manifest.json", "merchants.parquet", "users.parquet"]
    loaded = TrustSnapshot.load(tmp_path / "snap")
    assert loaded.as_of == crafted_snapshot.as_of
    pd.testing.assert_frame_equal(loaded.merchants, crafted_snapshot.merchants)
    pd.testing.assert_frame_equal(loaded.creators, crafted_snapshot.creators)
    pd.testing.assert_frame_equal(loaded.extras["users"], crafted_snapshot.extras["users"])
    assert json.loads(json.dumps(loaded.manifest, default=str)) == json.loads(json.dumps(crafted_snapshot.manifest, default=str))
    manifest = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert manifest["as_of"] == AS_OF.isoformat() and manifest["format_version"] == 1
    assert manifest["row_counts"]["merchants"] == len(crafted_snapshot.merchants)
    assert set(manifest["missing_tables"]) == {"livestreams", "reports", "violations", "guarantees", "nps", "impressions"}


def test_load_rejects_unknown_format(crafted_snapshot, tmp_path):
    crafted_snapshot.save(tmp_path / "snap")
    path = tmp_path / "snap" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(SchemaError, match="format_version"):
        TrustSnapshot.load(tmp_path / "snap")


def test_missing_optional_tables_fall_back_to_priors(crafted):
    tables, _ = crafted
    minimal = {"merchants": tables["merchants"], "orders": tables["orders"][["order_id", "user_id", "merchant_id", "created_at", "amount"]]}
    snapshot = build_snapshot(validate_events(minimal), AS_OF, FIT)
    merchants = snapshot.merchants
    assert "reviews" in snapshot.manifest["missing_tables"]
    assert any("reviews" in w for w in snapshot.manifest["warnings"])
    for column in ["trust_index", *(f"trust_{d}" for d in DIMENSIONS), "bad_case_rate", "low_rating_rate"]:
        assert np.isfinite(merchants[column].to_numpy(dtype=float)).all()
        assert merchants[column].between(0, 1).all()
    # no after-sales table: no evidence, every merchant at the same prior (not at "0 cases")
    assert merchants["bad_case_rate_n"].eq(0).all()
    assert merchants["bad_case_rate"].nunique() == 1 and merchants["bad_case_rate"].iloc[0] > 0
    assert merchants["late_shipment_rate_n"].eq(0).all()  # orders.promised_ship_by absent


def test_dask_backend_gives_the_same_snapshot(crafted):
    tables, _ = crafted
    events = validate_events(tables)
    pandas_snapshot = build_snapshot(events, AS_OF, FIT)
    dask_snapshot = build_snapshot(events, AS_OF, FIT, backend="dask")
    pd.testing.assert_frame_equal(pandas_snapshot.merchants, dask_snapshot.merchants, rtol=1e-9)
    pd.testing.assert_frame_equal(pandas_snapshot.creators, dask_snapshot.creators, rtol=1e-9)


def test_bad_backend_and_config_are_clear_errors(crafted):
    tables, _ = crafted
    with pytest.raises(ConfigError, match="backend"):
        build_snapshot(validate_events(tables), AS_OF, backend="spark")
    with pytest.raises(ConfigError, match="half_life_days"):
        TrustConfig(half_life_days=0)
    with pytest.raises(ConfigError, match="bound_level"):
        TrustConfig(bound_level=1.0)
    with pytest.raises(ConfigError, match="windows"):
        TrustConfig(windows=(7, -1))
    with pytest.raises(ConfigError, match="unknown keys"):
        TrustConfig.from_dict({"half_life": 3})
    assert TrustConfig.from_dict(json.loads(json.dumps(TrustConfig(windows=(3, 14)).to_dict()))) == TrustConfig(windows=(3, 14))


def test_too_little_history_uses_documented_defaults(crafted):
    tables, _ = crafted
    snapshot = build_snapshot(validate_events(tables), data.START + pd.Timedelta(days=20))
    model = snapshot.manifest["index_model"]
    assert model["source"] == "default"
    assert any("default weights" in w for w in snapshot.manifest["warnings"])
    assert snapshot.merchants["trust_index"].between(0, 1).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(2**62), 2**62 - 1), max_size=40),
    st.lists(st.integers(-3, 3), max_size=200),
)
def test_sort_factorize_matches_the_hash(wide: list[int], narrow: list[int]) -> None:
    """The sort-based factorisation of the trust build gives pandas' codes and uniques exactly
    (first-appearance order), for keys with many repeats and for keys too wide to pack."""
    from trustfeed.features._signals import _factorize_keys

    for keys in (np.array(narrow, dtype="int64"), np.array(wide, dtype="int64"), np.array(narrow + wide, dtype="int64")):
        codes, uniques = _factorize_keys(keys)
        want_codes, want_uniques = pd.factorize(keys)
        assert codes.tolist() == want_codes.tolist()
        assert uniques.tolist() == np.asarray(want_uniques).tolist()


@pytest.mark.parametrize("days_before_end", [0, 35])
def test_risk_only_evidence_is_the_full_builds_risk_columns(crafted, days_before_end):
    """The index fit's earlier cuts build only what the risk signals read: each column they do
    build is the full build's exactly, and the risk matrix derived from them is the same."""
    from trustfeed.features._dask_backend import make_aggregator
    from trustfeed.features._signals import build_counts, encode_ids
    from trustfeed.features.trust import _category_codes, _merchant_meta, _signals

    tables, _ = crafted
    cut = AS_OF - pd.Timedelta(days=days_before_end)
    known, enc = encode_ids(validate_events(tables).before(cut))
    frames = {name: known[name] for name in known.tables}
    meta = _merchant_meta(frames["merchants"], cut, enc)
    args = (frames, cut, FIT, make_aggregator("pandas"), enc, _category_codes(meta, enc))
    full, lean = build_counts(*args), build_counts(*args, risk_only=True)
    assert set(lean.merchants.columns) < set(full.merchants.columns)
    windowed = {f"{name}_{days}d" for name in ("n_orders", "n_late", "n_bad_cases", "n_reviews") for days in FIT.windows}
    assert windowed <= set(full.merchants.columns) and not windowed & set(lean.merchants.columns)
    assert not any(c.startswith("ew_") for c in lean.merchants.columns)
    assert lean.creators.empty and lean.orders.empty
    pd.testing.assert_frame_equal(lean.merchants, full.merchants[lean.merchants.columns], check_exact=True)
    full_rollup = full.merchants.iloc[meta.index.to_numpy()].set_axis(meta.index)
    lean_rollup = lean.merchants.iloc[meta.index.to_numpy()].set_axis(meta.index)
    from trustfeed.features.trust import SignalCounts, _entity_rollup

    risks = [
        _signals(SignalCounts(_entity_rollup(m, meta, enc.size("entity")), *(pd.DataFrame(),) * 3), meta, FIT, "n_streams", ())[1]
        for m in (full_rollup, lean_rollup)
    ]
    pd.testing.assert_frame_equal(risks[0], risks[1], check_exact=True)


def test_earlier_cuts_in_threads_equal_one_at_a_time(crafted):
    """The earlier fit cuts' signals derived by a helper thread while the next cut's evidence is
    built: same cuts, same order, same rows as one cut after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from trustfeed.features._signals import encode_ids
    from trustfeed.features.trust import _earlier_risk_futures, _risk_rows_at

    tables, _ = crafted
    config = TrustConfig(min_fit_merchants=30, fit_cuts=3, horizon_days=20)
    known, enc = encode_ids(validate_events(tables).before(AS_OF))
    with ThreadPoolExecutor(max_workers=1) as tails:
        futures = _earlier_risk_futures(known, AS_OF, config, "pandas", "n_streams", enc, tails)
        threaded = [(start, rows.result()) for start, rows in futures]
    starts = [AS_OF - pd.Timedelta(days=20 * k) for k in (1, 2, 3)]
    assert [start for start, _ in threaded] == starts[: len(threaded)] and len(threaded) >= 2
    for (_, rows), start in zip(threaded, starts):
        alone = _risk_rows_at(known, start, config, "pandas", "n_streams", enc)
        pd.testing.assert_frame_equal(rows.risk, alone.risk, check_exact=True)
        pd.testing.assert_frame_equal(rows.baseline, alone.baseline, check_exact=True)
        assert rows.category.tolist() == alone.category.tolist()


@pytest.fixture(scope="module")
def followed_log(crafted):
    """The crafted log with follows around half of its orders (some before, some after them),
    encoded, without and with the follower flag computed once."""
    from trustfeed.features._signals import encode_ids, with_followed

    tables, _ = crafted
    tables = dict(tables)
    orders = tables["orders"].sample(frac=0.5, random_state=1)
    shift = np.random.default_rng(3).uniform(-30, 30, len(orders))
    tables["follows"] = pd.DataFrame(
        {
            "user_id": orders["user_id"].to_numpy(),
            "creator_id": orders["creator_id"].to_numpy(),
            "followed_at": orders["created_at"] + pd.to_timedelta(shift, unit="D"),
        }
    ).drop_duplicates(["user_id", "creator_id", "followed_at"])
    known, enc = encode_ids(validate_events(tables).before(AS_OF))
    return known, with_followed(known, enc), enc


@settings(max_examples=10, deadline=None)
@given(days=st.floats(min_value=-5, max_value=70))
def test_follower_flag_computed_once_equals_each_cuts_own(followed_log, days):
    """An order's "buyer followed the creator before ordering" flag, computed once on the whole
    log and carried through a point-in-time cut, is the flag the cut computes from its own
    follows."""
    from trustfeed.features._signals import FOLLOWED_COLUMN, _from_followers

    known, carried, enc = followed_log
    assert FOLLOWED_COLUMN not in known["orders"].columns
    assert 0 < carried["orders"][FOLLOWED_COLUMN].sum() < len(known["orders"])
    cut = data.START + pd.Timedelta(days=days)
    own = _from_followers({name: known.before(cut)[name] for name in known.tables}, enc)
    assert carried.before(cut)["orders"][FOLLOWED_COLUMN].tolist() == own.tolist()


def test_earlier_cuts_over_the_lean_log_equal_the_full_log(crafted):
    """The earlier cuts read a log without the columns no risk signal uses (and with the
    follower flag computed once): their risk rows are those of the whole encoded log, exactly."""
    from trustfeed.features._signals import encode_ids, with_followed
    from trustfeed.features.trust import _earlier_risks, _risk_columns, _risk_rows_at

    tables, _ = crafted
    config = TrustConfig(min_fit_merchants=30, fit_cuts=2, horizon_days=20)
    known, enc = encode_ids(validate_events(tables).before(AS_OF))
    carried = with_followed(known, enc)
    lean = _risk_columns(carried)
    assert "creator_id" not in lean["orders"].columns and "clicked" not in lean["impressions"].columns
    assert _risk_columns(known) is known  # without the flag the creators are still needed
    cuts = _earlier_risks(carried, AS_OF, config, "pandas", "n_streams", enc)
    assert len(cuts) == 2
    for start, rows in cuts:
        alone = _risk_rows_at(known, start, config, "pandas", "n_streams", enc)
        pd.testing.assert_frame_equal(rows.risk, alone.risk, check_exact=True)
        pd.testing.assert_frame_equal(rows.baseline, alone.baseline, check_exact=True)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), merchants=st.integers(1, 40))
def test_signals_equal_with_and_without_the_quantiles_thread(seed, merchants):
    # the live update computes the posterior quantiles beside the rest, a full build's earlier
    # cuts inline: both must give the same rates and risk to the last bit (the priors they were
    # shrunk with are then the same too; their names are checked directly)
    from trustfeed.features._trust_index import BETA_RATES, derive_signals

    rng = np.random.default_rng(seed)
    columns = {name for rate in BETA_RATES for name in (rate.numerator, rate.denominator)}
    counts = pd.DataFrame({name: rng.poisson(rng.uniform(0, 30), merchants).astype(float) for name in sorted(columns)})
    category = pd.Series(rng.choice(["a", "b", "c"], merchants), index=counts.index)
    age = rng.uniform(0, 400, merchants)
    runs = [derive_signals(counts, category, age, TrustConfig(), host_exposure="n_orders", overlap=overlap)
            for overlap in (True, False)]
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0], check_exact=True)
    pd.testing.assert_frame_equal(runs[0][1], runs[1][1], check_exact=True)
    assert runs[0][2].beta.keys() == runs[1][2].beta.keys()


@settings(max_examples=15, deadline=None)
@given(
    p_bad=st.floats(0.05, 0.5),
    low=st.floats(0.5, 10.0),
    spread=st.floats(0.5, 10.0),
    seed=st.integers(0, 2**16),
)
def test_the_fit_label_counts_young_orders_for_the_outcomes_known_by_their_age(p_bad, low, spread, seed):
    """A window's youngest orders have not had the time to go bad: the label corrects for it.

    Orders placed evenly over two horizons go bad with ``p_bad``, known ``low`` to
    ``low + spread`` days later, and only what is known before the cut is in the log. The
    corrected rate of the last horizon recovers ``p_bad``; the plain count reads it low.
    """
    from trustfeed.features.trust import _LaterBad

    rng = np.random.default_rng(seed)
    n, horizon = 40_000, 30.0
    cut = pd.Timestamp("2026-03-01", tz="UTC")
    created = cut - pd.to_timedelta(rng.uniform(0, 2 * horizon, n), unit="D")
    bad_at = created + pd.to_timedelta(rng.uniform(low, low + spread, n), unit="D")
    bad = (rng.random(n) < p_bad) & (bad_at < cut)
    orders = pd.DataFrame({"merchant": np.zeros(n, dtype=np.int64), "created_at": created, "order_weight": np.ones(n),
                           "bad": bad, "bad_at": bad_at.where(bad)})
    reports = pd.DataFrame({"merchant_id": np.zeros(0, np.int64), "verified": np.zeros(0, bool),
                            "category": pd.Series([], dtype="string"), "created_at": pd.Series([], dtype="datetime64[ns, UTC]")})
    start = cut - pd.Timedelta(days=horizon)
    corrected = _LaterBad(orders, reports, cut, horizon).rate(start).iloc[0]
    plain = _LaterBad(orders, reports).rate(start).iloc[0]
    se = np.sqrt(p_bad * (1 - p_bad) / corrected["w"])
    assert abs(corrected["bad"] / corrected["w"] - p_bad) < 4 * se + 0.005
    # uncorrected: each order counts in full, so the rate is low by the share not yet known
    known_share = np.clip((horizon - low - np.array([0.0, spread])) / horizon, 0, 1).mean()
    assert plain["w"] == pytest.approx(((created >= start)).sum())
    assert plain["bad"] / plain["w"] < p_bad * min(1.0, known_share + 0.05) + 4 * se
    # an order a horizon old counts in full, a younger one for less
    old = _LaterBad(orders, reports, cut, horizon)
    assert (old.known[np.asarray(created < start)] == 1.0).all()
    assert (old.known <= 1.0).all() and (old.known >= 0.0).all()


def test_the_label_delay_correction_is_a_validated_setting(crafted):
    assert TrustConfig().label_delay_correction is False
    with pytest.raises(ConfigError, match="label_delay_correction"):
        TrustConfig(label_delay_correction="yes")
    from dataclasses import replace

    tables, _ = crafted
    events = validate_events(tables)
    on = build_snapshot(events, AS_OF, replace(FIT, label_delay_correction=True))
    off = build_snapshot(events, AS_OF, FIT)
    assert on.manifest["index_model"]["source"] == "fitted"
    delay = on.manifest["index_model"]["reporting_delay_days"]
    assert 0 < delay["p50"] <= delay["p90"] <= FIT.horizon_days
    assert "reporting_delay_days" not in off.manifest["index_model"]
    # the young orders count for less, so the fit reads a higher bad-order rate
    assert on.manifest["index_model"]["later_bad_rate"] > off.manifest["index_model"]["later_bad_rate"]
