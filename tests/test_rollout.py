"""The closed-loop world and the rollout engine (training/world.py, training/evaluation/rollout.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, ModelIntegrityError, SchemaError


@pytest.fixture(scope="module")
def base(trained: Any) -> Any:
    from trustfeed.training.world import WorldBase

    return WorldBase.from_events(trained.events_dir)


@pytest.fixture(scope="module")
def bundle(trained: Any) -> Path:
    return Path(trained.result.bundle_dir)


def _serve_in_order(world: Any, day: Any) -> Any:
    responses = [{"request_id": r["request_id"], "items": r["candidates"]} for r in day.requests]
    return world.serve(day, responses)


def test_world_rebuilds_the_simulated_platform(base: Any) -> None:
    follows = base.events["follows"]
    rebuilt = set(zip(base.user_ids[base.follows["user"]], base.creator_ids[base.follows["creator"]]))
    assert rebuilt == set(zip(follows["user_id"].astype(str), follows["creator_id"].astype(str)))


def test_static_world_reproduces_the_logged_probabilities(base: Any) -> None:
    """With every dynamic off, the world's probabilities of the logged slates are the log's."""
    from trustfeed.training.world import DynamicsConfig, World

    world = World(base, seed=0, dynamics=DynamicsConfig.off())
    impressions = base.events["impressions"]
    rows = pd.DataFrame({
        "user": pd.Index(base.user_ids).get_indexer(impressions["user_id"].astype(str)),
        "creator": pd.Index(base.creator_ids).get_indexer(impressions["creator_id"].astype(str)),
        "merchant": pd.Index(base.merchant_ids).get_indexer(impressions["merchant_id"].astype(str)),
        "ts": (impressions["ts"] - base.config.start_time).dt.total_seconds().to_numpy(),
    })
    assert (rows[["user", "creator", "merchant"]] >= 0).all().all()
    p_click, p_purchase, _, p_bad = world._probabilities(rows)
    logged = base.truth["impressions"]
    np.testing.assert_allclose(p_click, logged["p_click"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(p_purchase, logged["p_purchase"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(p_bad, logged["p_bad"].to_numpy(), rtol=1e-12)


def test_identical_policies_give_identical_trajectories(base: Any) -> None:
    from trustfeed.training.world import World

    runs = []
    for _ in range(2):
        world = World(base, seed=3)
        metrics = [_serve_in_order(world, world.next_requests()).metrics for _ in range(3)]
        runs.append((metrics, world.buyer_trust.copy(), len(world.events()["orders"])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]


def test_rollout_result_schema_and_errors(bundle: Path, trained: Any, tmp_path: Path) -> None:
    from trustfeed.training.evaluation.rollout import METRICS, run_rollout

    result = run_rollout(str(bundle), trained.events_dir, days=2, seeds=1, policies=["trust_aware", "oracle"])
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert doc["format_version"] == 1 and doc["policies"] == ["trust_aware", "oracle"]
    assert len(doc["daily"]) == 4 and len(doc["cumulative"]) == 2
    assert set(METRICS) <= set(doc["cumulative"][0])
    assert set(doc["summary"]["oracle"]) == set(METRICS)
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        run_rollout(str(bundle), trained.events_dir, days=2, policies=["nope"])
    with pytest.raises(ConfigError, match="days must be an integer >= 1"):
        run_rollout(str(bundle), trained.events_dir, days=0)
    with pytest.raises(ModelIntegrityError):
        run_rollout(str(tmp_path / "no-such-model"), trained.events_dir, days=1)
    (tmp_path / "events").mkdir()
    with pytest.raises(SchemaError, match="truth"):
        run_rollout(str(bundle), tmp_path / "events", days=1)


def test_rollout_can_carry_the_trust_index_weights_between_refits(
    bundle: Path, trained: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustfeed.training.evaluation import rollout

    calls: list[Any] = []
    real = rollout._snapshot_builder

    def recording(served: Any) -> Any:
        build = real(served)

        def wrapped(events: Any, as_of: pd.Timestamp, index: Any = None) -> Any:
            snapshot, context = build(events, as_of, index)
            calls.append((index, snapshot.manifest["index_model"]))
            return snapshot, context

        return wrapped

    monkeypatch.setattr(rollout, "_snapshot_builder", recording)
    rollout.run_rollout(str(bundle), trained.events_dir, days=3, seeds=1, policies=["trust_aware"], refit_index_every_days=2)
    start, day1, day2 = calls  # the rollout start (fitted), day 1 (carried), day 2 (refitted)
    assert start[0] is None and day1[0] is start[1] and day2[0] is None
    assert day1[1]["models"] == start[1]["models"]
    with pytest.raises(ConfigError, match="refit_index_every_days"):
        rollout.run_rollout(str(bundle), trained.events_dir, days=1, refit_index_every_days=0)


def _order_by_trust(world: Any, day: Any, worst_first: bool) -> list[dict[str, Any]]:
    """Responses that put the least (or most) trustworthy merchant's streams first."""
    trust = world.latent_trust()
    responses = []
    for request in day.requests:
        key = [trust[c["merchant_id"]] for c in request["candidates"]]
        order = np.argsort(key if worst_first else [-k for k in key], kind="stable")
        responses.append({"request_id": request["request_id"], "items": [request["candidates"][i] for i in order]})
    return responses


def test_showing_the_worst_merchants_first_loses_buyers(base: Any) -> None:
    from trustfeed.training.world import DynamicsConfig, World

    dynamics = DynamicsConfig(bad_order_trust_loss=0.6, visit_elasticity=2.0)
    for seed in (0, 1):
        outcomes = {}
        for worst_first in (True, False):
            world = World(base, seed=seed, dynamics=dynamics)
            requests = []
            for _ in range(12):
                day = world.next_requests()
                requests.append(world.serve(day, _order_by_trust(world, day, worst_first)).metrics["requests"])
            outcomes[worst_first] = (world.buyer_trust.mean(), sum(requests[-4:]))
        assert outcomes[True][0] < outcomes[False][0]
        assert outcomes[True][1] < outcomes[False][1]


def test_different_policies_share_random_numbers(base: Any) -> None:
    """Same day-0 requests; a candidate at the same position in both feeds has the same outcome."""
    from trustfeed.training.world import World

    worlds = [World(base, seed=2), World(base, seed=2)]
    days = [w.next_requests() for w in worlds]
    assert days[0].requests == days[1].requests
    shown = [w.serve(d, _order_by_trust(w, d, worst_first)).shown for w, d, worst_first in zip(worlds, days, (True, False))]
    same = shown[0].merge(shown[1], on=["request_id", "stream_id", "position"], suffixes=("_a", "_b"))
    assert len(same) > 0
    assert (same["clicked_a"] == same["clicked_b"]).all()
    assert (same["purchased_a"] == same["purchased_b"]).all()


def test_static_world_keeps_buyers_and_creators_and_logs_valid_events(base: Any) -> None:
    from trustfeed.features.events import validate_events
    from trustfeed.training.world import DynamicsConfig, World

    world = World(base, seed=1, dynamics=DynamicsConfig.off())
    for _ in range(3):
        _serve_in_order(world, world.next_requests())
    assert (world.buyer_trust == 1.0).all() and (world.creator_supply == 1.0).all() and not world.creator_quit.any()
    events = world.events()
    assert len(events["impressions"]) > len(base.events["impressions"])
    assert len(events["orders"]) > len(base.events["orders"])
    checked = validate_events(events.tables)  # the appended rows keep the contract's tables
    assert not [w for w in checked.warnings if "unknown" in w]


def test_rollout_ranks_through_the_feed_ranker(base: Any, bundle: Path) -> None:
    """The loop's responses are what RankingPipeline.rank_many gives for the same requests."""
    from trustfeed.features.context import FeatureAssembler
    from trustfeed.ranker.balancer import ExposureBalancer
    from trustfeed.ranker.bundle import load_bundle
    from trustfeed.ranker.pipeline import RankingPipeline
    from trustfeed.training.evaluation.policies import POLICIES, PolicyContext
    from trustfeed.training.evaluation.rollout import _snapshot_builder
    from trustfeed.training.world import World

    served = load_bundle(bundle)
    world = World(base, seed=0)
    snapshot, context = _snapshot_builder(served)(base.events, base.start)
    ranker = POLICIES["trust_aware_balanced"].build(PolicyContext(served, None, world, 2.0))
    ranker.reload_snapshot(snapshot, context)
    day = world.next_requests()
    reference = RankingPipeline(
        FeatureAssembler(snapshot, context, schema=served.assembler.schema()), served.model, served.policy,
        ExposureBalancer.from_state(served.balancer.config, served.balancer.state_dict()), model_id=served.model_id,
        purchase_model=served.purchase_model,
    )
    assert ranker.rank_many(day.requests) == reference.rank_many(day.requests, record=False)


def test_dynamics_config_is_validated_and_round_trips() -> None:
    from trustfeed.training.world import DynamicsConfig

    config = DynamicsConfig(supply_elasticity=0.3)
    assert DynamicsConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="quit_after_days"):
        DynamicsConfig(quit_after_days=0)
    with pytest.raises(ConfigError, match="unknown"):
        DynamicsConfig.from_dict({"nope": 1})


@given(
    seed=st.integers(0, 2**31), stage=st.integers(0, 100),
    keys=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40),
)
@settings(max_examples=50, deadline=None)
def test_keyed_uniforms_depend_only_on_their_key(seed: int, stage: int, keys: list[int]) -> None:
    from trustfeed.training.world import keyed_uniforms

    u = keyed_uniforms(seed, stage, 5, np.array(keys))
    assert ((u >= 0.0) & (u < 1.0)).all()
    # each element is the draw of its own key, whatever else is drawn beside it
    assert [float(keyed_uniforms(seed, stage, 5, k)) for k in keys] == u.tolist()
    assert not np.array_equal(keyed_uniforms(seed, stage + 1, 5, np.array(keys)), u)  # stages are independent


def test_an_order_placed_under_two_policies_ends_the_same_way(base: Any) -> None:
    """Cancellation and bad outcome are keyed by the order's buyer and candidate, not by its place
    among the day's orders: two policies that sell the same candidate get the same outcome
    (with one generator per day, the outcome depended on which other orders were placed)."""
    from trustfeed.training.world import World

    worlds = [World(base, seed=5), World(base, seed=5)]
    both = []
    for _ in range(3):
        shown = [w.serve(d, _order_by_trust(w, d, worst_first)).shown
                 for w, worst_first, d in zip(worlds, (True, False), [w.next_requests() for w in worlds])]
        sold = [frame.loc[frame["purchased"], ["request_id", "stream_id", "bad"]] for frame in shown]
        both.append(sold[0].merge(sold[1], on=["request_id", "stream_id"], suffixes=("_a", "_b")))
        assert len(sold[0]) != len(both[-1]) or len(sold[1]) != len(both[-1])  # the policies sold different sets
    same = pd.concat(both, ignore_index=True)
    assert len(same) > 0
    assert (same["bad_a"] == same["bad_b"]).all()


def test_drawn_outcomes_average_to_the_expected_ones(base: Any) -> None:
    """``expected_*`` of a day are what its drawn orders and bad orders average to over seeds."""
    from trustfeed.training.world import DynamicsConfig, World

    drawn, expected, drawn_bad, expected_bad = [], [], [], []
    for seed in range(40):
        world = World(base, seed=seed, dynamics=DynamicsConfig.off())
        metrics = _serve_in_order(world, world.next_requests()).metrics
        drawn.append(metrics["orders"])
        expected.append(metrics["expected_orders"])
        drawn_bad.append(metrics["bad_orders"])
        expected_bad.append(metrics["expected_bad_orders"])
        assert metrics["expected_net_value"] == pytest.approx(
            metrics["expected_orders"] - (1.0 + world.bad_cost) * metrics["expected_bad_orders"])
    # Poisson-binomial sums: their variance is at most their mean; 4 standard deviations
    for got, want in ((drawn, expected), (drawn_bad, expected_bad)):
        assert abs(sum(got) - sum(want)) < 4.0 * np.sqrt(sum(want)) + 1.0
    assert sum(expected) > 20 and sum(expected_bad) > 1  # the check has something to check


def test_the_log_before_the_rollout_start_is_the_dataset(base: Any, trained: Any) -> None:
    """The world continues the logged orders' outcomes past the window; the window itself is unchanged."""
    from trustfeed.features.events import load_events

    dataset = load_events(trained.events_dir)
    known = base.events.before(base.start)
    for table in ("orders", "after_sales", "reviews"):
        pd.testing.assert_frame_equal(known[table].reset_index(drop=True), dataset[table].reset_index(drop=True))
    # what continues: every paid order is delivered at last, every case resolved, and the
    # continuation gives no order a second case or review
    orders = base.events["orders"]
    paid = (orders["status"].astype(str) == "paid").to_numpy()
    assert orders["delivered_at"][paid].notna().all() and dataset["orders"]["delivered_at"][paid].isna().any()
    assert base.events["after_sales"]["resolved_at"].notna().all()
    for table in ("after_sales", "reviews"):
        added = base.events[table].iloc[len(dataset[table]):]
        assert len(added) > 0 and (added.iloc[:, 0].astype(str).str.len() > 0).all()
        assert (added["opened_at" if table == "after_sales" else "created_at"] >= base.start).all()
        assert not added["order_id"].isin(dataset[table]["order_id"]).any()
        assert added["order_id"].is_unique
        assert base.events[table].iloc[:, 0].is_unique  # case / review ids


def test_orders_of_the_windows_last_days_get_their_bad_outcomes(base: Any, trained: Any) -> None:
    """Seen from a month later, the window's last week of orders goes bad as often as the week before it.

    The simulator cuts outcomes at the window's end; without the continuation the last week's
    orders stayed almost spotless, and every trust index refit in a rollout learned from them.
    """
    from trustfeed.features.events import load_events
    from trustfeed.features.outcomes import order_outcomes, went_bad

    later = base.start + pd.Timedelta(days=30)

    def bad_share(events: Any, first_day: int, last_day: int) -> tuple[float, int]:
        outcomes = order_outcomes(events, later)
        created = pd.to_datetime(outcomes["created_at"], utc=True)
        days_before = ((base.start - created).dt.total_seconds() / 86400).to_numpy()
        paid = (outcomes["status"].astype(str) == "paid").to_numpy() if "status" in outcomes else np.ones(len(outcomes), bool)
        rows = paid & (days_before > first_day) & (days_before <= last_day)
        return float(went_bad(outcomes, later)[rows].mean()), int(rows.sum())

    last_week, n_last = bad_share(base.events, 0, 7)
    week_before, n_before = bad_share(base.events, 7, 14)
    assert n_last > 300 and n_before > 300
    # two binomial shares of a few hundred orders each: within 3 standard errors of each other
    se = np.sqrt(week_before * (1 - week_before) * (1 / n_last + 1 / n_before))
    assert abs(last_week - week_before) < 3 * se + 1e-9
    cut_off, _ = bad_share(load_events(trained.events_dir), 0, 7)  # the dataset as written
    assert cut_off < last_week - 3 * se
