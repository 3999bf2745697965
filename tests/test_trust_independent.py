"""Issue 3's acceptance checks on an independently designed simulation (tests/_independent_sim).

The generator shares no code or story with ``training/simulate.py``: its own categories and
base rates, its own brushing (fresh *and* aged ring accounts, spaced out, normal-looking
amounts half the time), re-registration under another category, bursts of false reports
against the best shops. Each check is also run on the raw mean rating, which must fail where
the trust index passes: the checks can fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from trustfeed.features.events import validate_events
from trustfeed.features.trust import DIMENSIONS, TrustSnapshot, build_snapshot


def _load_generator() -> Any:
    # tests/ is not a package: load the helper by path, as test_trust.py does.
    name = "trustfeed_tests_independent_sim"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_independent_sim.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


generate = _load_generator().generate
SEEDS = (1, 2, 3)
_CACHE: dict[int, tuple[Any, TrustSnapshot]] = {}


def _world(seed: int) -> tuple[Any, TrustSnapshot]:
    if seed not in _CACHE:
        world = generate(seed)
        _CACHE[seed] = (world, build_snapshot(validate_events(world.tables), world.as_of))
    return _CACHE[seed]


def _scored(seed: int) -> pd.DataFrame:
    world, snapshot = _world(seed)
    merchants = snapshot.merchants.merge(world.truth.drop(columns="category"), on="merchant_id", how="inner")
    assert len(merchants) == len(world.truth)
    merchants["percentile"] = merchants["trust_index"].rank(pct=True)
    # A merchant without reviews has no mean rating: the naive ranking puts it in the middle.
    merchants["rating_percentile"] = merchants["mean_rating_raw"].rank(pct=True).fillna(0.5)
    return merchants


def _export_at(tables: dict[str, pd.DataFrame], cut: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The log as a platform would have exported it at ``cut``: no later rows, no later outcomes.

    Written here independently of ``EventLog.before`` so the point-in-time check does not
    rest on the code under test.
    """
    event_time = {
        "merchants": "registered_at", "creators": "registered_at", "orders": "created_at",
        "after_sales": "opened_at", "reviews": "created_at", "reports": "created_at",
        "violations": "created_at", "guarantees": "enrolled_at", "nps": "created_at", "follows": "followed_at",
    }  # fmt: skip
    revealed = {"orders": {"shipped_at": "shipped_at", "delivered_at": "delivered_at"},
                "after_sales": {"resolved_at": "resolved_at", "outcome": "resolved_at"},
                "guarantees": {"left_at": "left_at"}}  # fmt: skip
    out = {}
    for name, frame in tables.items():
        frame = frame[pd.to_datetime(frame[event_time[name]], utc=True) < cut].copy()
        for column, by in revealed.get(name, {}).items():
            later = (pd.to_datetime(frame[by], utc=True) >= cut).to_numpy(dtype=bool, na_value=False)
            frame[column] = frame[column].mask(later)
        out[name] = frame.reset_index(drop=True)
    return out


def test_generator_is_fast_and_has_its_attacks():
    world = generate(7)
    truth, orders = world.truth, world.tables["orders"]
    assert truth["is_brusher"].sum() >= 30 and truth["is_reregistered"].sum() >= 15
    # category base rates differ a lot, and many merchants have few orders
    base = truth.groupby("category")["p_bad"].median()
    assert base.max() > 5 * base.min()
    per_merchant = orders.groupby("merchant_id").size().reindex(truth["merchant_id"], fill_value=0)
    assert (per_merchant < 20).mean() > 0.15
    # brushing uses both fresh and aged ring accounts, tiny and normal-looking amounts
    brushed = orders[orders["merchant_id"].isin(truth.loc[truth["is_brusher"], "merchant_id"])]
    assert brushed["user_id"].str.startswith("fresh").mean() > 0.1
    assert brushed["user_id"].str.startswith("ring").mean() > 0.1
    # re-registered entities come back under another category, banned before the window
    merchants = world.tables["merchants"]
    old = merchants[merchants["merchant_id"].str.startswith("old")]
    new = merchants[~merchants["merchant_id"].str.startswith("old")].set_index("entity_id").loc[old["entity_id"]]
    assert len(new) == len(old) and (new["category"].to_numpy() != old["category"].to_numpy()).all()
    # false-report bursts: rejected or unreviewed, never verified true
    trolls = world.tables["reports"][world.tables["reports"]["reporter_id"].str.startswith("troll")]
    assert len(trolls) > 20 and not trolls["verified"].fillna(False).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_spearman_with_true_trust(seed):
    merchants = _scored(seed)
    busy = merchants[merchants["n_orders_raw"] >= 20]
    assert len(busy) >= 150
    rho = stats.spearmanr(busy["trust_index"], busy["true_trust"])[0]
    naive = stats.spearmanr(busy["mean_rating_raw"], busy["true_trust"], nan_policy="omit")[0]
    assert rho >= 0.85
    assert naive < 0.85 and rho > naive + 0.2


@pytest.mark.parametrize("seed", SEEDS)
def test_brushers_rank_low(seed):
    merchants = _scored(seed)
    brushers = merchants[merchants["is_brusher"]]
    assert brushers["percentile"].mean() <= 0.30
    # bought five-star reviews fool the raw mean rating
    assert brushers["rating_percentile"].mean() > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_brushers_rank_no_higher_than_a_perfect_bad_order_predictor_would(seed):
    """The floor: brushers ranked by their true trust, with the banned shops last as the ban
    rule puts them. How low brushers can go without being pushed below their true standing
    depends on the world (0.22-0.28 over seeds 1-8 with attacks); the index should sit near
    it, not above it, whatever the seed. The raw mean rating, fooled by bought reviews, does not."""
    merchants = _scored(seed)
    brushers = merchants["is_brusher"].to_numpy(dtype=bool)
    floor = merchants["true_trust"].where(~merchants["banned"], -1.0).rank(pct=True)[brushers].mean()
    assert merchants["percentile"][brushers].mean() <= floor + 0.03
    assert merchants["rating_percentile"][brushers].mean() > floor + 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_reregistered_banned_entities_rank_at_the_bottom(seed):
    merchants = _scored(seed)
    reregistered = merchants[merchants["is_reregistered"]]
    assert reregistered["percentile"].mean() <= 0.10
    assert reregistered["banned"].all() and reregistered["inherited_record"].all()
    # a fresh account under a new category has a clean rating record
    assert reregistered["rating_percentile"].mean() > 0.10


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_snapshot_ignores_later_events(seed):
    world, _ = _world(seed)
    cut = world.as_of - pd.Timedelta(days=20)
    with_later = build_snapshot(validate_events(world.tables), cut)
    exported = build_snapshot(validate_events(_export_at(world.tables, cut)), cut)
    assert len(world.tables["orders"]) > len(_export_at(world.tables, cut)["orders"])
    pd.testing.assert_frame_equal(with_later.merchants, exported.merchants, check_exact=True)
    pd.testing.assert_frame_equal(with_later.creators, exported.creators, check_exact=True)
    assert with_later.manifest["index_model"] == exported.manifest["index_model"]


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_false_report_bursts_do_not_sink_top_merchants(seed):
    world, _ = _world(seed)
    merchants = _scored(seed)
    targets = world.tables["reports"].loc[world.tables["reports"]["reporter_id"].str.startswith("troll"), "merchant_id"].unique()
    hit = merchants[merchants["merchant_id"].isin(targets)]
    assert len(hit) >= 5
    # the best shops stay in the top half despite the bursts
    assert hit["percentile"].mean() >= 0.5
    assert (hit["n_rejected_reports_raw"] + hit["n_reports_raw"]).min() >= 5


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_dimension_scores_spread_and_track_trust(seed):
    merchants = _scored(seed)
    busy = merchants[merchants["n_orders_raw"] >= 20]
    for dimension in DIMENSIONS:
        score = merchants[f"trust_{dimension}"]
        assert score.between(0, 1).all()
        # a standing, not a saturated probability: the population spreads over the unit range
        assert score.quantile(0.9) - score.quantile(0.1) >= 0.4, dimension
        assert stats.spearmanr(busy[f"trust_{dimension}"], busy["true_trust"])[0] > 0.2, dimension
    for dimension in ("commodity_quality", "service_quality", "product_experience"):
        assert stats.spearmanr(busy[f"trust_{dimension}"], busy["true_trust"])[0] > 0.6, dimension


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_expected_bad_rate_is_calibrated(seed):
    merchants = _scored(seed)
    honest = merchants[(merchants["n_orders_raw"] >= 20) & ~merchants["is_brusher"]]
    weight = honest["n_orders_raw"].to_numpy()
    predicted = np.average(honest["expected_bad_rate"], weights=weight)
    actual = np.average(honest["observable_bad_rate"], weights=weight)
    assert abs(predicted - actual) <= 0.25 * actual
    # and it orders merchants: bins of predicted rate have increasing true rates
    bins = pd.qcut(honest["expected_bad_rate"], 4, labels=False)
    by_bin = honest.groupby(bins)["observable_bad_rate"].mean().to_numpy()
    assert (np.diff(by_bin) > 0).all()
