"""The platform simulator: contract conformance, integrity, determinism and the simulated tensions."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import TABLES, load_events, table_dtypes, validate_events
from trustfeed.training import simulate as simulate_module
from trustfeed.training.cli import main
from trustfeed.training.simulate import (
    SimConfig,
    SimulatedPlatform,
    expected_outcomes,
    load_truth,
    load_truth_meta,
    simulate,
    write_dataset,
)

BAD_REASONS = ("quality", "not_as_described", "counterfeit")


# --------------------------------------------------------------------------- helpers


def _quartile(platform: SimulatedPlatform) -> pd.Series:
    """Trust quartile (0 = least trustworthy) by merchant_id."""
    truth = platform.truth["merchants"]
    return pd.Series(
        pd.qcut(truth["latent_trust"], 4, labels=False).to_numpy(), index=truth["merchant_id"].astype(str)
    )


def _real_orders(platform: SimulatedPlatform) -> pd.DataFrame:
    orders = platform.tables["orders"].merge(platform.truth["orders"], on="order_id")
    orders = orders[~orders["is_fake"]].copy()
    orders["q"] = orders["merchant_id"].astype(str).map(_quartile(platform))
    return orders


def _observed_bad(platform: SimulatedPlatform, orders: pd.DataFrame) -> pd.Series:
    """docs/contract.md section 4: bad-reason after-sales case or a 1-2 star review."""
    cases = platform.tables["after_sales"]
    reviews = platform.tables["reviews"]
    bad_ids = set(cases.loc[cases["reason"].isin(BAD_REASONS), "order_id"].astype(str))
    bad_ids |= set(reviews.loc[reviews["rating"] <= 2, "order_id"].astype(str))
    return orders["order_id"].astype(str).isin(bad_ids)


def _by_quartile(values: pd.Series, quartile: pd.Series) -> pd.Series:
    return values.groupby(quartile.to_numpy()).mean()


# --------------------------------------------------------------------------- config


def test_config_defaults_derive_population_sizes() -> None:
    config = SimConfig(merchants=40)
    assert config.n_users == 800
    assert config.n_creators == 80
    assert SimConfig(merchants=40, users=7).n_users == 7
    assert config.start_time == pd.Timestamp("2026-01-01", tz="UTC")
    assert config.end_time - config.start_time == pd.Timedelta(days=config.days)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"merchants": 0},
        {"days": 0},
        {"seed": -1},
        {"merchants": 2.5},
        {"users": 0},
        {"brusher_rate": 1.5},
        {"no_reason_return_rate": -0.1},
        {"slate_min": 10, "slate_max": 5},
        {"position_bias_eta": float("inf")},
        {"start": "not a date"},
        {"days": True},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SimConfig(**kwargs)


def test_config_round_trips_through_json_and_rejects_unknown_keys() -> None:
    config = SimConfig(seed=5, merchants=33, days=9, users=100, brusher_rate=0.1)
    assert SimConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="unknown"):
        SimConfig.from_dict({**config.to_dict(), "merchnats": 3})


def test_naive_start_is_utc() -> None:
    config = SimConfig(start="2025-06-01 08:00")
    assert config.start_time == pd.Timestamp("2025-06-01 08:00", tz="UTC")


def test_module_doctests_pass() -> None:
    result = doctest.testmod(simulate_module)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------- contract


def test_all_tables_conform_to_the_contract(small_platform: SimulatedPlatform) -> None:
    assert set(small_platform.tables) == set(TABLES)
    events = validate_events(small_platform.tables)
    assert events.missing == ()
    assert events.warnings == ()
    for name, frame in small_platform.tables.items():
        assert len(frame) > 0, name
        expected = table_dtypes(name)
        assert list(frame.columns) == list(expected), name
        for column, dtype in expected.items():
            assert frame[column].dtype == dtype, (name, column, frame[column].dtype, dtype)
        for column in TABLES[name].required_columns:
            assert frame[column].notna().all(), (name, column)


def test_written_dataset_loads_and_matches_memory(small_platform: SimulatedPlatform, small_events_dir: Path) -> None:
    events = load_events(small_events_dir)
    assert events.warnings == ()
    for name, frame in small_platform.tables.items():
        pd.testing.assert_frame_equal(events[name].reset_index(drop=True), frame.reset_index(drop=True))
    truth = load_truth(small_events_dir)
    assert truth is not None
    assert set(truth) == {"merchants", "creators", "orders", "impressions"}
    for name, frame in small_platform.truth.items():
        pd.testing.assert_frame_equal(truth[name], frame, check_dtype=False)
    meta = load_truth_meta(small_events_dir)
    assert meta is not None
    assert meta["position_bias"]["eta"] == small_platform.config.position_bias_eta
    assert SimConfig.from_dict(meta["config"]) == small_platform.config


def test_event_times_lie_in_the_window(small_platform: SimulatedPlatform) -> None:
    start, end = small_platform.config.start_time, small_platform.config.end_time
    for name, spec in TABLES.items():
        frame = small_platform.tables[name]
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
                assert str(frame[column].dtype.tz) == "UTC"
                if column != "promised_ship_by":  # a promise made in the window may point past it
                    assert (frame[column].dropna() < end).all(), (name, column)
        if spec.event_time not in ("registered_at", "enrolled_at", "followed_at"):
            assert (frame[spec.event_time] >= start).all(), name


def test_load_truth_is_none_without_truth(tmp_path: Path) -> None:
    assert load_truth(tmp_path) is None
    assert load_truth_meta(tmp_path) is None


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    config = SimConfig(seed=4, merchants=30, days=6)
    write_dataset(simulate(config), tmp_path / "a")
    write_dataset(simulate(config), tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 12 + 5 + 1  # tables, truth, the output marker
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


def test_different_seeds_differ() -> None:
    a = simulate(SimConfig(seed=1, merchants=30, days=6))
    b = simulate(SimConfig(seed=2, merchants=30, days=6))
    assert not a.truth["merchants"]["latent_trust"].equals(b.truth["merchants"]["latent_trust"])


def test_write_dataset_replaces_an_existing_directory(tmp_path: Path) -> None:
    out = tmp_path / "data"
    platform = simulate(SimConfig(seed=1, merchants=15, days=3))
    write_dataset(platform, out)
    (out / "stale.parquet").write_text("old")
    write_dataset(platform, out)
    assert not (out / "stale.parquet").exists()
    assert (out / "truth" / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    merchants=st.integers(1, 25),
    days=st.integers(1, 4),
    slate_min=st.integers(1, 5),
    extra=st.integers(0, 5),
)
def test_any_small_config_yields_valid_tables(seed: int, merchants: int, days: int, slate_min: int, extra: int) -> None:
    config = SimConfig(seed=seed, merchants=merchants, days=days, slate_min=slate_min, slate_max=slate_min + extra)
    platform = simulate(config)
    events = validate_events(platform.tables)
    # A one-day platform of a single shop may have no orders at all; nothing else may be off.
    assert [w for w in events.warnings if not w.endswith("the table has no rows")] == []
    slates = platform.tables["impressions"].groupby("request_id", observed=True)["position"]
    assert (slates.max() <= config.slate_max).all()
    assert (slates.max() == slates.size()).all()


# --------------------------------------------------------------------------- integrity


def test_referential_integrity(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    merchants = set(t["merchants"]["merchant_id"])
    creators = set(t["creators"]["creator_id"])
    streams = set(t["livestreams"]["stream_id"])
    orders = set(t["orders"]["order_id"])
    assert set(t["orders"]["merchant_id"]) <= merchants
    assert set(t["orders"]["creator_id"].dropna()) <= creators
    assert set(t["orders"]["stream_id"].dropna()) <= streams
    assert set(t["after_sales"]["order_id"]) <= orders
    assert set(t["reviews"]["order_id"]) <= orders
    assert set(t["livestreams"]["merchant_id"]) <= merchants
    assert set(t["livestreams"]["creator_id"]) <= creators
    assert set(t["creators"]["merchant_id"].dropna()) <= merchants
    assert set(t["impressions"]["stream_id"]) <= streams
    assert set(t["impressions"]["order_id"].dropna()) <= orders
    for name in ("violations", "guarantees", "nps"):
        assert set(t[name]["merchant_id"]) <= merchants, name
    assert set(t["reports"]["merchant_id"].dropna()) <= merchants
    assert set(t["follows"]["creator_id"]) <= creators
    assert set(small_platform.truth["orders"]["order_id"]) == orders


def test_impressions_agree_with_streams_and_orders(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    imp = t["impressions"]
    streams = t["livestreams"].set_index("stream_id")
    assert (imp["creator_id"].to_numpy() == streams.loc[imp["stream_id"], "creator_id"].to_numpy()).all()
    assert (imp["merchant_id"].to_numpy() == streams.loc[imp["stream_id"], "merchant_id"].to_numpy()).all()
    started = streams.loc[imp["stream_id"], "started_at"].to_numpy()
    ended = streams.loc[imp["stream_id"], "ended_at"].to_numpy()
    assert (imp["ts"].to_numpy() >= started).all()
    live = pd.isna(ended) | (imp["ts"].to_numpy() < ended)
    assert live.all()
    assert not imp.duplicated(["request_id", "stream_id"]).any()
    per_request = imp.groupby("request_id", observed=True).agg(
        users=("user_id", "nunique"), times=("ts", "nunique"), n=("position", "size"), top=("position", "max")
    )
    assert (per_request["users"] == 1).all() and (per_request["times"] == 1).all()
    assert (per_request["n"] == per_request["top"]).all()  # positions are exactly 1..n
    assert (imp["purchased"] == imp["order_id"].notna()).all()
    assert not (imp["purchased"] & ~imp["clicked"]).any()
    assert (imp.loc[~imp["clicked"], "watch_seconds"] == 0).all()
    bought = imp[imp["purchased"]].merge(t["orders"], on="order_id", suffixes=("", "_order"))
    assert len(bought) == int(imp["purchased"].sum()) > 0
    for column in ("user_id", "stream_id", "creator_id", "merchant_id"):
        assert (bought[column] == bought[f"{column}_order"]).all(), column
    assert (bought["created_at"] >= bought["ts"]).all()
    feed_orders = t["orders"]["stream_id"].notna().sum()
    assert feed_orders == len(bought)


def test_order_lifecycle_is_consistent(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    orders = t["orders"].set_index("order_id")
    assert (orders["amount"] >= 0).all()
    cancelled = orders["status"] == "cancelled"
    assert orders.loc[cancelled, "shipped_at"].isna().all()
    shipped = orders["shipped_at"].notna()
    assert (orders.loc[shipped, "shipped_at"] >= orders.loc[shipped, "created_at"]).all()
    delivered = orders["delivered_at"].notna()
    assert (orders.loc[delivered, "delivered_at"] >= orders.loc[delivered, "shipped_at"]).all()
    cases = t["after_sales"]
    case_orders = orders.loc[cases["order_id"]]
    assert (case_orders["status"] == "paid").all()
    assert (cases["opened_at"].to_numpy() >= case_orders["delivered_at"].to_numpy()).all()
    resolved = cases["resolved_at"].notna()
    assert (cases.loc[resolved, "resolved_at"] >= cases.loc[resolved, "opened_at"]).all()
    assert (cases["outcome"].isna() == cases["resolved_at"].isna()).all()
    reviews = t["reviews"]
    assert (reviews["user_id"].to_numpy() == orders.loc[reviews["order_id"], "user_id"].to_numpy()).all()
    registered = t["merchants"].set_index("merchant_id")["registered_at"]
    assert (t["orders"]["created_at"].to_numpy() >= registered.loc[t["orders"]["merchant_id"]].to_numpy()).all()
    guarantees = t["guarantees"]
    left = guarantees["left_at"].notna()
    assert (guarantees.loc[left, "left_at"] >= guarantees.loc[left, "enrolled_at"]).all()


def test_banned_merchants_stop_selling(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    bans = t["violations"][t["violations"]["penalty"] == "ban"].groupby("merchant_id", observed=True)["created_at"].min()
    assert len(bans) > 0
    orders = t["orders"][t["orders"]["merchant_id"].isin(bans.index)]
    assert (orders["created_at"].to_numpy() <= bans.loc[orders["merchant_id"]].to_numpy()).all()
    after_ban = t["violations"].merge(bans.rename("banned_at"), left_on="merchant_id", right_index=True)
    assert (after_ban["created_at"] <= after_ban["banned_at"]).all()


# --------------------------------------------------------------------------- tensions


def test_low_trust_converts_better_but_sells_worse(small_platform: SimulatedPlatform) -> None:
    quartile = _quartile(small_platform)
    imp = small_platform.tables["impressions"]
    clicked = imp[imp["clicked"]]
    conversion = _by_quartile(clicked["purchased"].astype(float), clicked["merchant_id"].astype(str).map(quartile))
    assert conversion[0] > 1.3 * conversion[3]

    orders = _real_orders(small_platform)
    bad = _by_quartile(_observed_bad(small_platform, orders).astype(float), orders["q"])
    assert bad[0] > 2.5 * bad[3]
    truth_bad = _by_quartile(orders["is_bad"].astype(float), orders["q"])
    assert truth_bad[0] > 3 * truth_bad[3]
    cancelled = _by_quartile((orders["status"] == "cancelled").astype(float), orders["q"])
    assert cancelled[0] > cancelled[3]
    late = orders["shipped_at"].notna()
    late_rate = _by_quartile(
        (orders.loc[late, "shipped_at"] > orders.loc[late, "promised_ship_by"]).astype(float), orders.loc[late, "q"]
    )
    assert late_rate[0] > 2 * late_rate[3]


def test_low_trust_after_sales_is_slower_and_needs_the_platform(small_platform: SimulatedPlatform) -> None:
    quartile = _quartile(small_platform)
    cases = small_platform.tables["after_sales"].merge(
        small_platform.tables["orders"][["order_id", "merchant_id"]], on="order_id"
    )
    q = cases["merchant_id"].astype(str).map(quartile)
    hours = (cases["resolved_at"] - cases["opened_at"]).dt.total_seconds() / 3600
    median_hours = hours.groupby(q.to_numpy()).median()
    assert median_hours[0] > 1.5 * median_hours[3]
    intervened = _by_quartile(cases["platform_intervened"].astype(float), q)
    assert intervened[0] > intervened[3]


def test_enforcement_and_verified_reports_concentrate_on_low_trust(small_platform: SimulatedPlatform) -> None:
    quartile = _quartile(small_platform)
    t = small_platform.tables
    violations_q = t["violations"]["merchant_id"].astype(str).map(quartile)
    assert (violations_q == 0).sum() > 2 * (violations_q == 3).sum()
    bans_q = t["violations"].loc[t["violations"]["penalty"] == "ban", "merchant_id"].astype(str).map(quartile)
    assert (bans_q <= 1).mean() > 0.7
    reports = t["reports"].dropna(subset=["merchant_id"])
    confirmed = reports["verified"].fillna(False).astype(bool) & reports["category"].isin(("false_advertising", "counterfeit"))
    verified_q = reports.loc[confirmed, "merchant_id"].astype(str).map(quartile)
    orders_q = t["orders"]["merchant_id"].astype(str).map(quartile)
    per_order = verified_q.value_counts() / orders_q.value_counts()
    assert per_order[0] > 2 * per_order[3]


def test_no_reason_returns_do_not_depend_on_trust(small_platform: SimulatedPlatform) -> None:
    orders = _real_orders(small_platform)
    delivered = orders[orders["delivered_at"].notna()]
    cases = small_platform.tables["after_sales"]
    no_reason_ids = set(cases.loc[cases["reason"] == "no_reason", "order_id"].astype(str))
    rate = _by_quartile(delivered["order_id"].astype(str).isin(no_reason_ids).astype(float), delivered["q"])
    assert rate.min() > 0
    assert rate.max() / rate.min() < 1.35


def test_logistics_delays_do_not_depend_on_trust(small_platform: SimulatedPlatform) -> None:
    orders = _real_orders(small_platform)
    delivered = orders[orders["delivered_at"].notna()]
    slow_transit = (delivered["delivered_at"] - delivered["shipped_at"]) > pd.Timedelta(days=4)
    rate = _by_quartile(slow_transit.astype(float), delivered["q"])
    assert rate.min() > 0
    assert rate.max() / rate.min() < 1.5


def test_false_and_unreviewed_reports_hit_trusted_merchants(small_platform: SimulatedPlatform) -> None:
    quartile = _quartile(small_platform)
    reports = small_platform.tables["reports"].dropna(subset=["merchant_id"])
    top = reports[reports["merchant_id"].astype(str).map(quartile) == 3]
    assert (top["verified"] == False).sum() > 0  # noqa: E712 - nullable boolean column
    assert top["verified"].isna().sum() > 0


def test_brushing_fakes_ratings_from_throwaway_accounts(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    truth_m = small_platform.truth["merchants"]
    brushers = truth_m[truth_m["is_brusher"]]
    assert 0 < len(brushers) < 0.15 * len(truth_m)
    assert brushers["latent_trust"].median() < truth_m["latent_trust"].median()

    orders = t["orders"].merge(small_platform.truth["orders"], on="order_id")
    fake = orders[orders["is_fake"]]
    real = orders[~orders["is_fake"]]
    assert len(fake) > 0
    assert set(fake["merchant_id"]) <= set(brushers["merchant_id"])
    assert fake["amount"].median() < 0.1 * real["amount"].median()
    fake_users = set(fake["user_id"])
    assert not fake_users & set(real["user_id"])
    assert not fake_users & set(t["impressions"]["user_id"])
    assert not fake_users & set(t["follows"]["user_id"])
    assert not fake_users & set(t["reports"]["reporter_id"])
    fake_reviews = t["reviews"][t["reviews"]["user_id"].isin(fake_users)]
    assert fake_reviews.groupby("user_id", observed=True).size().max() >= 3  # one account, many reviews

    reviews = t["reviews"].merge(t["orders"][["order_id", "merchant_id"]], on="order_id")
    mean_rating = reviews.groupby("merchant_id", observed=True)["rating"].mean()
    merchants = truth_m.set_index("merchant_id")
    comparable = merchants[merchants["latent_trust"] <= brushers["latent_trust"].max()]
    honest = comparable[~comparable["is_brusher"]].index.intersection(mean_rating.index)
    gaming = comparable[comparable["is_brusher"]].index.intersection(mean_rating.index)
    assert mean_rating.loc[gaming].mean() > mean_rating.loc[honest].mean() + 0.3


def test_reregistered_merchants_keep_the_banned_entity(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    truth_m = small_platform.truth["merchants"]
    merchants = t["merchants"].merge(truth_m[["merchant_id", "is_reregistered", "latent_trust"]], on="merchant_id")
    again = merchants[merchants["is_reregistered"]]
    assert len(again) > 0
    bans = t["violations"][t["violations"]["penalty"] == "ban"].merge(
        merchants[["merchant_id", "entity_id"]], on="merchant_id"
    )
    first_ban = bans.groupby("entity_id", observed=True)["created_at"].min()
    assert set(again["entity_id"]) <= set(first_ban.index)
    assert (again["registered_at"].to_numpy() > first_ban.loc[again["entity_id"]].to_numpy()).all()
    originals = merchants[~merchants["is_reregistered"]].set_index("entity_id")
    trust_gap = again["latent_trust"].to_numpy() - originals.loc[again["entity_id"], "latent_trust"].to_numpy()
    assert np.abs(trust_gap).max() < 0.2
    assert merchants["entity_id"].value_counts().max() >= 2


def test_guarantees_favour_trust_but_are_not_exclusive(small_platform: SimulatedPlatform) -> None:
    quartile = _quartile(small_platform)
    guarantees = small_platform.tables["guarantees"]
    enrolled = pd.Series(quartile.index.isin(guarantees["merchant_id"].astype(str)), index=quartile.index)
    share = enrolled.groupby(quartile).mean()
    assert share[3] > 1.5 * share[0]
    assert share[0] > 0
    assert guarantees["left_at"].notna().any()


def test_nps_and_review_details_follow_trust(small_platform: SimulatedPlatform) -> None:
    quartile = _quartile(small_platform)
    nps = small_platform.tables["nps"]
    score = _by_quartile(nps["score"].astype(float), nps["merchant_id"].astype(str).map(quartile))
    assert score[3] > score[0] + 1.5
    reviews = small_platform.tables["reviews"]
    for column in ("quality", "service", "logistics"):
        assert reviews[column].notna().any() and reviews[column].isna().any(), column
    assert reviews["quality"].dropna().between(1, 5).all()


def test_creators_are_heavy_tailed_and_some_self_operated(small_platform: SimulatedPlatform) -> None:
    creators = small_platform.tables["creators"]
    followers = np.sort(creators["followers"].to_numpy())[::-1]
    top_decile = followers[: max(1, len(followers) // 10)].sum() / followers.sum()
    assert top_decile > 0.35
    assert followers.max() > 20 * np.median(followers)
    self_operated = creators.dropna(subset=["merchant_id"])
    assert 0 < len(self_operated) < len(creators)
    streams = small_platform.tables["livestreams"].merge(
        self_operated[["creator_id", "merchant_id"]], on="creator_id", suffixes=("", "_own")
    )
    assert len(streams) > 0
    assert (streams["merchant_id"] == streams["merchant_id_own"]).all()


def test_follows_favour_popular_creators_and_liked_categories(small_platform: SimulatedPlatform) -> None:
    t = small_platform.tables
    follows = t["follows"]
    assert not follows.duplicated(["user_id", "creator_id"]).any()
    creators = t["creators"].set_index("creator_id")
    per_creator = follows.groupby("creator_id", observed=True).size().reindex(creators.index, fill_value=0)
    head = creators["followers"] >= creators["followers"].quantile(0.8)
    assert per_creator[head].mean() > 2 * per_creator[~head].mean()

    # A creator's category is what they stream; a user's favourite is what they buy most.
    creator_category = t["livestreams"].groupby("creator_id", observed=True)["category"].agg(lambda s: s.mode().iloc[0])
    orders = _real_orders(small_platform)
    orders["category"] = orders["merchant_id"].map(t["merchants"].set_index("merchant_id")["category"])
    favourite = orders.groupby(["user_id", "category"], observed=True).size().reset_index(name="n")
    favourite = favourite.sort_values("n", kind="stable").drop_duplicates("user_id", keep="last").set_index("user_id")["category"]
    pairs = follows.assign(
        creator_category=follows["creator_id"].map(creator_category),
        favourite=follows["user_id"].map(favourite),
    ).dropna(subset=["creator_category", "favourite"])
    matched = (pairs["creator_category"] == pairs["favourite"]).mean()
    baseline = (pairs["creator_category"].value_counts(normalize=True) * pairs["favourite"].value_counts(normalize=True)).sum()
    assert matched > 1.5 * baseline


def test_orders_come_from_the_feed_and_from_outside_it(small_platform: SimulatedPlatform) -> None:
    orders = small_platform.tables["orders"]
    from_stream = orders["stream_id"].notna()
    assert 0 < from_stream.sum() < len(orders)
    assert (orders["creator_id"].notna() == from_stream).all()


def test_retrieval_is_head_biased(small_platform: SimulatedPlatform) -> None:
    creators = small_platform.tables["creators"].set_index("creator_id")
    imp = small_platform.tables["impressions"]
    streams = small_platform.tables["livestreams"]
    shown = imp.groupby("creator_id", observed=True).size()
    streamed = streams.groupby("creator_id", observed=True).size()
    per_stream = (shown.reindex(streamed.index, fill_value=0) / streamed).astype(float)
    followers = creators.loc[per_stream.index, "followers"]
    head = followers >= followers.quantile(0.8)
    assert per_stream[head].mean() > 1.5 * per_stream[~head].mean()


def test_click_through_falls_with_position(small_platform: SimulatedPlatform) -> None:
    imp = small_platform.tables["impressions"]
    ctr = imp.groupby(np.minimum(imp["position"], 20) // 5)["clicked"].mean()
    assert (np.diff(ctr.to_numpy()) < 0).all()
    assert ctr.iloc[0] > 2 * ctr.iloc[-1]


def test_truth_tables_are_well_formed(small_platform: SimulatedPlatform) -> None:
    truth = small_platform.truth
    m = truth["merchants"]
    assert list(m.columns[:6]) == ["merchant_id", "entity_id", "latent_trust", "is_brusher", "is_reregistered", "p_bad"]
    assert m["latent_trust"].between(0, 1).all() and m["p_bad"].between(0, 1).all()
    assert (m["merchant_id"].to_numpy() == small_platform.tables["merchants"]["merchant_id"].to_numpy()).all()
    c = truth["creators"]
    assert c["quality"].between(0, 1).all() and c["popularity"].between(0, 1).all()
    imp = truth["impressions"]
    logged = small_platform.tables["impressions"]
    assert (imp["request_id"].to_numpy() == logged["request_id"].to_numpy()).all()
    assert (imp["stream_id"].to_numpy() == logged["stream_id"].to_numpy()).all()
    for column in ("p_click", "p_purchase", "p_bad"):
        assert imp[column].between(0, 1).all(), column
    orders = truth["orders"]
    assert not (orders["is_fake"] & orders["is_bad"]).any()


# --------------------------------------------------------------------------- counterfactual evaluation


def test_expected_outcomes_match_the_logged_outcomes(small_platform: SimulatedPlatform) -> None:
    """The truth model reproduces what was logged: expected totals ~ realised totals."""
    logged = small_platform.tables["impressions"]
    expected = expected_outcomes(logged, small_platform.truth["impressions"], small_platform.meta)
    assert len(expected) == logged["request_id"].nunique()
    clicks, purchases = logged["clicked"].sum(), logged["purchased"].sum()
    assert expected["expected_clicks"].sum() == pytest.approx(clicks, rel=0.06)
    # Purchases that would have landed after the window were cut: realised is slightly lower.
    assert expected["expected_orders"].sum() == pytest.approx(purchases, rel=0.12)
    bad = small_platform.truth["orders"].merge(logged[["order_id"]].dropna(), on="order_id")["is_bad"].sum()
    assert expected["expected_bad_orders"].sum() == pytest.approx(bad, rel=0.35, abs=10)


def test_expected_outcomes_by_hand() -> None:
    truth = pd.DataFrame(
        {
            "request_id": ["q1", "q1", "q2"],
            "stream_id": ["a", "b", "a"],
            "p_click": [0.5, 0.2, 1.0],
            "p_purchase": [0.1, 0.5, 0.5],
            "p_bad": [0.0, 1.0, 0.5],
        }
    )
    slates = pd.DataFrame({"request_id": ["q1", "q1", "q2"], "stream_id": ["b", "a", "a"], "position": [1, 4, 2]})
    out = expected_outcomes(slates, truth, {"position_bias": {"eta": 0.5}}).set_index("request_id")
    # q1: b at 1 -> 1 * 0.2 * 0.5 = 0.1 (all bad); a at 4 -> 0.5 * 0.5 * 0.1 = 0.025
    assert out.loc["q1", "expected_orders"] == pytest.approx(0.125)
    assert out.loc["q1", "expected_bad_orders"] == pytest.approx(0.1)
    assert out.loc["q1", "expected_clicks"] == pytest.approx(0.2 + 0.25)
    # q2: a at 2 -> 2 ** -0.5 * 0.5
    assert out.loc["q2", "expected_orders"] == pytest.approx(0.5 / np.sqrt(2))
    assert out.loc["q2", "expected_bad_orders"] == pytest.approx(0.25 / np.sqrt(2))


def test_expected_outcomes_rejects_unlogged_pairs_and_bad_positions() -> None:
    truth = pd.DataFrame({"request_id": ["q1"], "stream_id": ["a"], "p_click": [0.5], "p_purchase": [0.1], "p_bad": [0.0]})
    with pytest.raises(SchemaError, match="unlogged"):
        expected_outcomes(
            pd.DataFrame({"request_id": ["q1"], "stream_id": ["zz"], "position": [1]}), truth, {"position_bias": {"eta": 1}}
        )
    with pytest.raises(SchemaError, match="position"):
        expected_outcomes(
            pd.DataFrame({"request_id": ["q1"], "stream_id": ["a"], "position": [0]}), truth, {"position_bias": {"eta": 1}}
        )
    with pytest.raises(SchemaError, match="position"):
        expected_outcomes(pd.DataFrame({"request_id": ["q1"], "stream_id": ["a"]}), truth, {"position_bias": {"eta": 1}})


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
    eta=st.floats(0.1, 2.0),
    seed=st.integers(0, 1000),
)
def test_sorting_by_value_maximises_expected_orders(values: list[float], eta: float, seed: int) -> None:
    """Rearrangement inequality: with a decreasing examination curve, best-first is optimal."""
    n = len(values)
    streams = [f"s{i}" for i in range(n)]
    truth = pd.DataFrame(
        {"request_id": "q", "stream_id": streams, "p_click": values, "p_purchase": 1.0, "p_bad": 0.0}
    )
    meta = {"position_bias": {"eta": eta}}
    best = np.argsort(-np.asarray(values), kind="stable")
    best_positions = np.empty(n, dtype=int)
    best_positions[best] = np.arange(1, n + 1)
    shuffled = np.random.default_rng(seed).permutation(n) + 1
    value_best = expected_outcomes(
        pd.DataFrame({"request_id": "q", "stream_id": streams, "position": best_positions}), truth, meta
    )["expected_orders"].iloc[0]
    value_any = expected_outcomes(
        pd.DataFrame({"request_id": "q", "stream_id": streams, "position": shuffled}), truth, meta
    )["expected_orders"].iloc[0]
    assert value_best >= value_any - 1e-12


# --------------------------------------------------------------------------- command line


def test_cli_simulate_writes_a_valid_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--seed", "3", "--merchants", "12", "--days", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    events = load_events(out)
    assert len(events["merchants"]) >= 12
    meta = load_truth_meta(out)
    assert meta is not None and meta["config"]["seed"] == 3


def test_cli_simulate_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--out", str(tmp_path / "x"), "--merchants", "0"])
    assert exit_info.value.code != 0
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- sampling helpers


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=20),
    seed=st.integers(0, 10_000),
)
def test_order_within_groups_equals_lexsort(sizes: list[int], seed: int) -> None:
    from trustfeed.training._sim_util import order_within_sorted_groups

    rng = np.random.default_rng(seed)
    group = np.repeat(np.sort(rng.choice(1000, len(sizes), replace=False)), sizes)
    key = rng.integers(0, 3, len(group)).astype(float)  # many ties: stability matters
    expected = np.lexsort((key, group))
    assert (order_within_sorted_groups(group, key, max(sizes)) == expected).all()


@settings(max_examples=60, deadline=None)
@given(
    # Weights are resolved to the precision of their float64 running sum: no 1e-26 next to 1.
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 100.0)), min_size=1, max_size=30),
    n_groups=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_weighted_draws_stay_in_group_and_skip_zero_weight(weights: list[float], n_groups: int, seed: int) -> None:
    from trustfeed.training._sim_util import grouped_weighted_draw, sorted_search

    rng = np.random.default_rng(seed)
    weight = np.asarray(weights)
    group = rng.integers(0, n_groups, len(weight))
    query = rng.integers(0, n_groups, 200)
    drawn = grouped_weighted_draw(group, weight, n_groups, query, rng.random(200))
    has_mass = np.bincount(group, weights=weight, minlength=n_groups) > 0
    assert ((drawn >= 0) == has_mass[query]).all()
    ok = drawn >= 0
    assert (group[drawn[ok]] == query[ok]).all()
    assert (weight[drawn[ok]] > 0).all()
    cum = np.cumsum(weight)
    target = rng.random(50) * cum[-1]
    assert (sorted_search(cum, target) == np.searchsorted(cum, target, side="right")).all()


def test_attacks_are_off_by_default_and_recorded_in_truth_when_on(small_platform) -> None:
    truth = small_platform.truth["merchants"]
    assert truth[["exit_scam_at", "bombed_from", "bombed_until"]].isna().all().all()
    attacked = simulate(SimConfig(seed=4, merchants=150, days=30, exit_scam_rate=0.05, report_bombing_rate=0.05))
    m = attacked.truth["merchants"]
    scams, bombed = m.dropna(subset=["exit_scam_at"]), m.dropna(subset=["bombed_from"])
    assert len(scams) == 8 and len(bombed) == 8 and not set(scams["merchant_id"]) & set(bombed["merchant_id"])
    orders = attacked.tables["orders"].merge(attacked.truth["orders"], on="order_id")
    orders = orders.merge(m[["merchant_id", "exit_scam_at"]], on="merchant_id")
    paid = orders["status"] == "paid"
    switched = orders["exit_scam_at"].notna()
    after = switched & (orders["created_at"] >= orders["exit_scam_at"]) & paid
    before = switched & (orders["created_at"] < orders["exit_scam_at"]) & paid
    # after the switch: bad orders, mostly never shipped, a presale spike, more orders per day
    assert orders.loc[after, "is_bad"].all() and not orders.loc[before, "is_bad"].mean() > 0.2
    assert orders.loc[after, "shipped_at"].isna().mean() > 0.6 > orders.loc[before, "shipped_at"].isna().mean()
    assert orders.loc[after, "presale"].mean() > 4 * orders.loc[before, "presale"].mean()
    days_after = (attacked.config.end_time - scams["exit_scam_at"]).dt.total_seconds().sum() / 86_400
    days_before = (scams["exit_scam_at"] - attacked.config.start_time).dt.total_seconds().sum() / 86_400
    assert after.sum() / days_after > 2 * before.sum() / days_before
    # bombing: reports inside the window, from accounts that bought nothing, never confirmed
    reports = attacked.tables["reports"].merge(bombed[["merchant_id", "bombed_from", "bombed_until"]], on="merchant_id")
    burst = reports[(reports["created_at"] >= reports["bombed_from"]) & (reports["created_at"] <= reports["bombed_until"])]
    assert len(burst) >= 8 * 20
    # (the odd ordinary report may fall inside a window)
    assert burst["reporter_id"].isin(attacked.tables["orders"]["user_id"]).mean() < 0.05
    assert burst["verified"].fillna(False).mean() < 0.05
