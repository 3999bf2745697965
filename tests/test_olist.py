"""Real data: the Olist sample adapted into contract tables and a trust snapshot built on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trustfeed.features.events import validate_events
from trustfeed.features.trust import DIMENSIONS, build_snapshot
from trustfeed.training.olist import DELIVERED_WEIGHT, load_olist

OLIST = Path(__file__).parents[1].parent / "shared/data/olist"
CUT = pd.Timestamp("2018-01-01", tz="UTC")

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def olist_tables():
    if not OLIST.is_dir():
        pytest.fail(f"{OLIST} is missing: the real-data tests need ../shared/data/olist beside the repository")
    return load_olist(OLIST)


@pytest.fixture(scope="module")
def olist_snapshot(olist_tables):
    return build_snapshot(validate_events(olist_tables), CUT)


def test_adapter_maps_olist_to_the_contract(olist_tables):
    raw_orders = pd.read_csv(OLIST / "olist_orders_dataset.csv", dtype=str)
    raw_items = pd.read_csv(OLIST / "olist_order_items_dataset.csv", dtype=str)
    events = validate_events(olist_tables)
    orders = events["orders"]
    # one contract order per (Olist order, seller) among orders that have items
    assert len(orders) == len(raw_items.drop_duplicates(["order_id", "seller_id"]))
    assert orders["order_id"].is_unique
    assert set(orders["merchant_id"]) == set(raw_items["seller_id"])
    # canceled / unavailable -> cancelled, everything else paid
    status = raw_orders.set_index("order_id")["order_status"]
    base_id = orders["order_id"].str.split("~").str[0]
    expected = base_id.map(status).isin(["canceled", "unavailable"]).map({True: "cancelled", False: "paid"})
    assert (orders["status"].astype(str).to_numpy() == expected.to_numpy()).all()
    # the real buyer across orders is customer_unique_id: some buyers have several orders
    assert orders["user_id"].value_counts().max() > 1
    assert events["reviews"]["rating"].between(1, 5).all()
    assert {"after_sales", "reports", "violations", "guarantees"} <= set(events.missing)
    delivered = olist_tables["orders"]["delivered"]
    assert olist_tables["orders"].loc[delivered, "sample_weight"].eq(DELIVERED_WEIGHT).all()
    assert 18.0 < DELIVERED_WEIGHT < 19.0


def test_snapshot_on_olist(olist_snapshot, olist_tables):
    merchants = olist_snapshot.merchants
    sellers_before = olist_tables["merchants"]["registered_at"].lt(CUT).sum()
    assert len(merchants) == sellers_before
    for column in ["trust_index", *(f"trust_{d}" for d in DIMENSIONS)]:
        values = merchants[column].to_numpy(dtype=float)
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    assert "after_sales" in olist_snapshot.manifest["missing_tables"]
    # sparse sellers are the norm here: most are cold start, none is NaN
    assert merchants["cold_start"].mean() > 0.5


def test_olist_trust_follows_the_review_record(olist_snapshot, olist_tables):
    reviews = olist_tables["reviews"]
    known = reviews[reviews["created_at"] < CUT].merge(olist_tables["orders"][["order_id", "merchant_id"]], on="order_id")
    per_seller = known.groupby("merchant_id")["rating"].agg(n="size", low=lambda r: (r <= 2).mean())
    trust = olist_snapshot.merchants.set_index("merchant_id")["trust_index"]
    clean = per_seller[(per_seller["n"] >= 3) & (per_seller["low"] == 0)].index
    poor = per_seller[(per_seller["n"] >= 3) & (per_seller["low"] >= 0.5)].index
    assert len(clean) >= 10 and len(poor) >= 3
    assert trust.reindex(poor).mean() < trust.reindex(clean).mean()
