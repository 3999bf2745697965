"""The closed-loop world and the rollout engine (training/world.py, training/evaluation/rollout.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

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
