"""Issue 15: trust reacts to exit scams within hours of the evidence, and shrugs off report bombing.

Checked on the independent generator (tests/_independent_sim) with attacks of its own story
(``with_attacks``), snapshots on a daily grid, and the reaction metrics of
``training/evaluation/reaction.py``. The early-warning parts are also checked one by one on counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from trustfeed.features._early_warning import early_warning_scores
from trustfeed.features.events import validate_events
from trustfeed.features.trust import TrustConfig, build_snapshot
from trustfeed.training.evaluation import reaction


@pytest.fixture(scope="module")
def attacked(independent_sim: Any) -> Any:
    world = independent_sim.generate(1, n_merchants=250, days=60, n_users=4000)
    return independent_sim.with_attacks(world, 1, n_scams=5, n_bombed=4)


@pytest.fixture(scope="module")
def events(attacked) -> Any:
    return validate_events(attacked.tables)


def _snapshots(events: Any, times: list[pd.Timestamp]) -> dict[pd.Timestamp, pd.DataFrame]:
    return {t: build_snapshot(events, t).merchants for t in sorted(set(times))}


def test_switched_merchants_fall_below_p20_within_48h_of_evidence(attacked, events):
    evidence = reaction.evidence_times(attacked.attacks, attacked.tables["orders"], attacked.tables["after_sales"])
    assert len(evidence) == 5 and evidence.notna().all()
    switch = attacked.attacks.set_index("merchant_id")["exit_scam_at"].dropna()
    # one snapshot 48 hours after each merchant's first unshipped or counterfeit order, one
    # just before each switch
    times = [t + pd.Timedelta(hours=48) for t in evidence if t + pd.Timedelta(hours=48) <= attacked.as_of]
    snapshots = _snapshots(events, times + [s - pd.Timedelta(minutes=1) for s in switch])
    switched = reaction.reaction_times(snapshots, attacked.attacks, attacked.tables["orders"], attacked.tables["after_sales"])
    assert len(times) >= 4
    assert switched["reacted_at"].notna().all(), switched
    assert (switched["hours_from_evidence"] <= 48).all(), switched
    assert (switched["orders_taken"] > 0).all()
    # just before its switch each was a trusted shop: the drop is the switch, not its history
    pct = reaction.percentiles(snapshots)
    before = [pct.at[m, s - pd.Timedelta(minutes=1)] for m, s in switch.items()]
    assert np.median(before) > 0.4


def test_bombed_merchants_drop_at_most_a_tenth(attacked, events):
    bombed = attacked.attacks.dropna(subset=["bombed_from"])
    times = [t + pd.Timedelta(hours=1) for t in bombed["bombed_until"]]
    # the same log without the campaigns: what the shops would have scored anyway
    reports = attacked.tables["reports"]
    clean = validate_events({**attacked.tables, "reports": reports[~reports["report_id"].str.startswith("bomb")]})
    drops = reaction.bombing_drops(_snapshots(events, times), attacked.attacks, unbombed=_snapshots(clean, times))
    assert len(drops) == 4 and drops["drop_vs_unbombed"].notna().all()
    assert drops["drop_vs_unbombed"].max() <= 0.1, drops
    # the defence is what holds them: weighing every report alike, the same campaigns bite
    naive = TrustConfig(non_buyer_report_weight=1.0, unverified_report_weight=1.0, report_burst_hours=0.0)
    hit = {t: build_snapshot(events, t, naive).merchants for t in times[:2]}
    unhit = {t: build_snapshot(clean, t, naive).merchants for t in times[:2]}
    assert reaction.bombing_drops(hit, attacked.attacks, unbombed=unhit)["drop_vs_unbombed"].max() > 0.1


def test_attacks_leave_the_long_run_index_accurate(attacked, events):
    merchants = build_snapshot(events, attacked.as_of).merchants
    last = merchants.merge(attacked.truth.drop(columns="category"), on="merchant_id").merge(attacked.attacks, on="merchant_id")
    honest = last[(last["n_orders_raw"] >= 20) & last["exit_scam_at"].isna()]
    assert stats.spearmanr(honest["trust_index"], honest["true_trust"])[0] >= 0.85
    # nobody who did not switch is raised an alarm against
    assert (honest["early_warning"] == 0).mean() >= 0.98


def test_unreviewed_reports_from_non_buyers_weigh_less():
    events = {
        "merchants": pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": ["2026-01-01"] * 2}),
        "orders": pd.DataFrame(
            {
                "order_id": [f"o{i}" for i in range(40)],
                "user_id": [f"u{i}" for i in range(40)],
                "merchant_id": ["m1", "m2"] * 20,
                "created_at": pd.date_range("2026-01-02", periods=40, freq="6h"),
                "amount": 10.0,
            }
        ),
        # the same 10 unreviewed reports against each shop: by its buyers (m1), by strangers (m2)
        "reports": pd.DataFrame(
            {
                "report_id": [f"r{i}" for i in range(20)],
                "reporter_id": [f"u{2 * i}" for i in range(10)] + [f"sock{i}" for i in range(10)],
                "created_at": "2026-01-20",
                "category": "counterfeit",
                "merchant_id": ["m1"] * 10 + ["m2"] * 10,
            }
        ),
    }
    merchants = build_snapshot(validate_events(events), "2026-01-25").merchants.set_index("merchant_id")
    alike = TrustConfig(non_buyer_report_weight=1.0, report_burst_hours=0.0)
    same = build_snapshot(validate_events(events), "2026-01-25", alike).merchants
    same = same.set_index("merchant_id")["counterfeit_report_rate"]
    gap = merchants.at["m1", "counterfeit_report_rate"] - merchants.at["m2", "counterfeit_report_rate"]
    # alike when every report weighs the same (the shops differ only by order times)
    assert gap > 10 * abs(same["m1"] - same["m2"]) and gap > 0


@settings(max_examples=4, deadline=None)
@given(n_reports=st.integers(2, 12), spacing_days=st.integers(2, 5))
def test_a_burst_of_stranger_reports_weighs_as_one_campaign(n_reports, spacing_days):
    """Unreviewed stranger reports filed together share one report's weight; spread out, each counts."""
    shops = ["burst", "spread", "single"]
    orders = pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(60)],
            "user_id": [f"u{i}" for i in range(60)],
            "merchant_id": shops * 20,
            "created_at": pd.Timestamp("2026-01-01 00:30") + pd.to_timedelta(np.arange(60) // 3, unit="D"),
            "amount": 10.0,
        }
    )
    first = pd.Timestamp("2026-01-02 01:00")
    burst = [first + pd.Timedelta(minutes=7 * i) for i in range(n_reports)]
    spread = [first + pd.Timedelta(days=spacing_days * i) for i in range(n_reports)]
    reports = pd.DataFrame(
        {
            "report_id": [f"r{i}" for i in range(2 * n_reports + 1)],
            "reporter_id": [f"sock{i}" for i in range(2 * n_reports + 1)],
            "created_at": burst + spread + [first],
            "category": "counterfeit",
            "merchant_id": ["burst"] * n_reports + ["spread"] * n_reports + ["single"],
        }
    )
    events = validate_events({"merchants": pd.DataFrame({"merchant_id": shops, "registered_at": ["2025-12-01"] * 3}),
                              "orders": orders, "reports": reports})  # fmt: skip
    as_of = spread[-1] + pd.Timedelta(hours=1)
    merchants = build_snapshot(events, as_of, TrustConfig(fit_index=False, half_life_days=1e6)).merchants.set_index("merchant_id")
    # the same exposure for all three shops: a burst of n counts as one report, n spread reports as n
    assert merchants["counterfeit_report_rate_n"].nunique() == 1
    assert merchants.at["burst", "counterfeit_report_rate"] == pytest.approx(merchants.at["single", "counterfeit_report_rate"], rel=1e-4)
    assert merchants.at["spread", "counterfeit_report_rate"] > merchants.at["burst", "counterfeit_report_rate"]
    off = TrustConfig(fit_index=False, half_life_days=1e6, report_burst_hours=0.0)
    plain = build_snapshot(events, as_of, off).merchants.set_index("merchant_id")["counterfeit_report_rate"]
    assert plain["burst"] == pytest.approx(plain["spread"], rel=1e-4) and plain["burst"] > plain["single"]


def _counts(**columns: float) -> pd.DataFrame:
    base = {"ew_due": 60.0, "ew_overdue": 1.0, "ew_recent_orders": 10.0, "ew_base_orders": 140.0, "ew_base_days": 28.0,
            "ew_recent_new_buyer": 1.0, "ew_base_new_buyer": 14.0, "ew_recent_presale": 0.0, "ew_base_presale": 4.0,
            "ew_recent_complaint": 0.0, "ew_base_complaint": 3.0}  # fmt: skip
    # a population of ordinary shops, and the one under test first
    frame = pd.DataFrame([{**base, **columns}] + [base] * 50)
    return frame


@settings(max_examples=30, deadline=None)
@given(
    overdue=st.integers(0, 60),
    more=st.integers(1, 20),
    recent=st.integers(0, 80),
    new=st.integers(0, 80),
)
def test_alarm_never_falls_when_evidence_grows(overdue, more, recent, new):
    config = TrustConfig()
    late = np.full(51, 0.02)
    new = min(new, recent)
    a = early_warning_scores(_counts(ew_overdue=overdue, ew_recent_orders=recent, ew_recent_new_buyer=new), late, config)
    b = early_warning_scores(_counts(ew_overdue=min(overdue + more, 60), ew_recent_orders=recent, ew_recent_new_buyer=new), late, config)
    c = early_warning_scores(_counts(ew_overdue=overdue, ew_recent_orders=recent + more, ew_recent_new_buyer=new + more), late, config)
    for frame in (a, b, c):
        assert frame["early_warning"].between(0, 1).all()
    assert b["early_warning"].iloc[0] >= a["early_warning"].iloc[0] - 1e-12
    assert c["early_warning"].iloc[0] >= a["early_warning"].iloc[0] - 1e-12
    assert (a["early_warning"].iloc[1:] == 0).all()


def test_alarm_parts_fire_on_their_own_evidence_only():
    config = TrustConfig()
    late = np.full(51, 0.02)
    quiet = early_warning_scores(_counts(), late, config)["early_warning"].iloc[0]
    overdue = early_warning_scores(_counts(ew_overdue=30.0), late, config)["early_warning"].iloc[0]
    viral = early_warning_scores(_counts(ew_recent_orders=60.0, ew_recent_new_buyer=6.0), late, config)["early_warning"].iloc[0]
    sale = early_warning_scores(_counts(ew_recent_orders=60.0, ew_recent_new_buyer=45.0), late, config)["early_warning"].iloc[0]
    slow = np.full(51, 0.02)
    slow[0] = 0.6
    slow_shop = early_warning_scores(_counts(ew_overdue=30.0), slow, config)["early_warning"].iloc[0]
    assert quiet == 0 and overdue == 1.0
    # a volume surge alone (a viral stream) is not an alarm; with a new-buyer wave it is
    assert viral == 0 and sale > 0.5
    # a shop that is always this late is judged against its own habit
    assert slow_shop < overdue


def test_overdue_surge_does_not_raise_the_habit_it_is_judged_against():
    """The late-shipment habit is read from orders older than the overdue window can reach.

    A clean shop whose recent orders all went overdue (and so count as late in its long-run
    rate) keeps a full alarm; a shop that was this late long before is judged by that habit.
    """
    config = TrustConfig()
    late_rate = np.full(51, 0.02)
    window = min(w for w in config.windows if w >= 2 * config.overdue_days)
    history = {"n_due": 200.0, "n_late": 4.0, f"n_due_{window}d": 60.0, f"n_late_{window}d": 1.0}
    surge = {**history, "n_late": 4.0 + 30.0, f"n_late_{window}d": 1.0 + 30.0}
    habit = {**history, "n_late": 4.0 + 0.4 * 140.0}
    ordinary = _counts().iloc[0].to_dict()

    def alarm(first: dict[str, float]) -> float:
        frame = pd.DataFrame([{**ordinary, **first}] + [{**ordinary, **history}] * 50)
        scores = early_warning_scores(frame, late_rate, config)["early_warning"]
        assert scores.between(0, 1).all() and (scores.iloc[1:] == 0).all()
        return float(scores.iloc[0])

    # the surge's own overdue orders do not excuse it
    assert alarm({**surge, "ew_overdue": 30.0}) == 1.0
    # the same overdue orders from a shop that shipped 40 % late for months are its habit
    assert alarm({**habit, "ew_overdue": 30.0}) < 1.0
    # and more overdue orders never lower the alarm
    assert alarm({**surge, "ew_overdue": 40.0, f"n_late_{window}d": 41.0, "n_late": 44.0}) >= alarm({**surge, "ew_overdue": 30.0})
