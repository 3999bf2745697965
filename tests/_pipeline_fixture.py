"""A small, really trained ranking pipeline for the pipeline, bundle and serving tests.

Built from the project's simulator with the real parts: trust snapshot, context tables,
feature assembler, LambdaMART (few trees), policy and exposure balancer. ``conftest.load_test_helper`` loads
this file under the name :data:`MODULE_NAME` in ``sys.modules`` (the tests directory is not
a package under ``--import-mode=importlib``), so the process-wide cache below is shared and
the model is trained once per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MODULE_NAME = "trustfeed_tests_pipeline_fixture"
_CACHE: dict[str, Any] = {}


@dataclass
class TrainedParts:
    """Everything a pipeline is made of, plus logged requests to rank."""

    snapshot: Any
    context: Any
    model: Any
    feature_schema: dict[str, Any]
    requests: list[dict[str, Any]]
    impressions: pd.DataFrame


def trained_parts(seed: int = 5, num_rounds: int = 12) -> TrainedParts:
    """Simulate a tiny platform, build features as of its last week and train a small model."""
    key = f"parts-{seed}-{num_rounds}"
    if key in _CACHE:
        return _CACHE[key]
    from trustfeed.features.context import FeatureAssembler, build_context_tables
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import build_snapshot
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.training.simulate import SimConfig, simulate

    platform = simulate(SimConfig(seed=seed, merchants=40, days=16))
    events = validate_events(platform.tables)
    start, end = platform.config.start_time, platform.config.end_time
    as_of = (start + (end - start) * 0.75).floor("D")
    snapshot = build_snapshot(events, as_of)
    context = build_context_tables(events, as_of)
    assembler = FeatureAssembler(snapshot, context)

    impressions = events["impressions"]
    train = impressions.loc[(impressions["ts"] < as_of).to_numpy(dtype=bool)].sort_values(["request_id", "position"])
    X = assembler.transform(train)
    clicked = train["clicked"].astype("boolean").fillna(False).to_numpy(dtype=int)
    purchased = train["purchased"].astype("boolean").fillna(False).to_numpy(dtype=int)
    labels = clicked + 2 * purchased
    groups = train.groupby("request_id", sort=False, observed=True).size().to_numpy()
    model = LambdaMART(
        LambdaMARTConfig(num_rounds=num_rounds, early_stopping_rounds=0, min_data_in_leaf=10, num_leaves=15)
    ).fit(
        X,
        labels,
        group=groups,
        feature_names=assembler.feature_names,
        categorical=assembler.categorical,
        monotone=assembler.monotone,
        feature_schema=assembler.schema(),
    )
    held_out = impressions.loc[(impressions["ts"] >= as_of).to_numpy(dtype=bool)]
    parts = TrainedParts(
        snapshot=snapshot,
        context=context,
        model=model,
        feature_schema=assembler.schema(),
        requests=requests_from_impressions(held_out),
        impressions=held_out,
    )
    _CACHE[key] = parts
    return parts


def requests_from_impressions(impressions: pd.DataFrame) -> list[dict[str, Any]]:
    """Ranking requests (docs/contract.md section 3) from logged impressions, one per request_id."""
    frame = impressions.sort_values(["request_id", "position"])
    candidates = frame[["stream_id", "creator_id", "merchant_id"]].astype(object).to_dict(orient="records")
    heads = frame.drop_duplicates("request_id")
    sizes = frame.groupby("request_id", sort=False, observed=True).size().to_numpy()
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [
        {
            "request_id": str(request_id),
            "user_id": str(user_id),
            "ts": pd.Timestamp(ts).isoformat(),
            "k": 10,
            "candidates": candidates[bounds[i] : bounds[i + 1]],
        }
        for i, (request_id, user_id, ts) in enumerate(
            zip(heads["request_id"], heads["user_id"], heads["ts"], strict=True)
        )
    ]


def make_pipeline(parts: TrainedParts, *, balancer: bool = True, trust_weight: float = 1.0, **balancer_options: Any) -> Any:
    """A fresh pipeline over the trained parts (each call gets its own balancer ledger)."""
    from trustfeed.features.context import FeatureAssembler
    from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
    from trustfeed.ranker.pipeline import RankingPipeline
    from trustfeed.ranker.policy import PolicyConfig

    assembler = FeatureAssembler(parts.snapshot, parts.context, schema=parts.feature_schema)
    options = {"initial_strength": 2.0, "control_interval": 5, **balancer_options}
    return RankingPipeline(
        assembler,
        parts.model,
        PolicyConfig(trust_weight=trust_weight),
        ExposureBalancer(BalancerConfig(**options)) if balancer else None,
        snapshot=parts.snapshot,
        context=parts.context,
    )


def tiny_live_pipeline() -> Any:
    """A tiny pipeline (hand-made snapshot, 4 trees) whose model uses the live field ``viewers``.

    Built in well under a second; each call gets its own balancer ledger.
    """
    from trustfeed.features.context import FeatureAssembler
    from trustfeed.features.trust import TrustSnapshot
    from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.ranker.pipeline import RankingPipeline

    if "tiny-live" not in _CACHE:
        snapshot = TrustSnapshot(
            pd.Timestamp("2026-01-05", tz="UTC"),
            merchants=pd.DataFrame({"merchant_id": ["m1", "m2"], "trust_index": [0.9, 0.2]}),
            creators=pd.DataFrame({"creator_id": ["c1", "c2"], "followers": [10.0, 500.0]}),
            manifest={"as_of": "2026-01-05T00:00:00+00:00", "format_version": 1},
        )
        assembler = FeatureAssembler(snapshot, live_fields=("viewers",))
        X = np.random.default_rng(3).normal(size=(200, len(assembler.feature_names)))
        model = LambdaMART(LambdaMARTConfig(num_rounds=4, min_data_in_leaf=5, early_stopping_rounds=0)).fit(
            X, (X[:, -1] > 0).astype(int), group=[20] * 10, feature_names=assembler.feature_names,
            feature_schema=assembler.schema(),
        )
        _CACHE["tiny-live"] = (assembler, model, snapshot)
    assembler, model, snapshot = _CACHE["tiny-live"]
    return RankingPipeline(assembler, model, balancer=ExposureBalancer(BalancerConfig()), snapshot=snapshot)
