"""The pipeline "as of t" has one constructor, and times have one parser."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from trustfeed.features.errors import ConfigError, RequestError
from trustfeed.features.events import to_utc, validate_events
from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
from trustfeed.ranker.pipeline import RankingPipeline
from trustfeed.ranker.policy import PolicyConfig


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture(scope="module")
def events() -> Any:
    from trustfeed.training.simulate import SimConfig, simulate

    return validate_events(simulate(SimConfig(seed=5, merchants=40, days=16)).tables)  # the parts' world


def _scores(pipeline: RankingPipeline, requests: list[dict[str, Any]]) -> list[list[float]]:
    return [[item["score"] for item in response["items"]] for response in pipeline.rank_many(requests, record=False)]


def test_as_of_builds_the_same_pipeline_as_its_parts(parts: Any, events: Any) -> None:
    as_of = parts.snapshot.as_of
    built = RankingPipeline.as_of(events, as_of.isoformat(), parts.model, PolicyConfig(), schema=parts.feature_schema)
    assert built.snapshot.as_of == as_of
    pd.testing.assert_frame_equal(built.snapshot.merchants, parts.snapshot.merchants)
    pd.testing.assert_frame_equal(built.context.user_merchant, parts.context.user_merchant)
    by_hand = RankingPipeline.from_tables(parts.snapshot, parts.context, parts.model, PolicyConfig(), schema=parts.feature_schema)
    requests = parts.requests[:20]
    assert _scores(built, requests) == _scores(by_hand, requests)


def test_rebuilt_as_of_keeps_model_policy_layout_and_settings_with_its_own_ledger(parts: Any, events: Any) -> None:
    balancer = ExposureBalancer(BalancerConfig(initial_strength=2.0))
    served = RankingPipeline.from_tables(parts.snapshot, parts.context, parts.model, PolicyConfig(trust_weight=0.5),
                                         balancer, schema=parts.feature_schema, model_id="bundle-1")
    earlier = parts.snapshot.as_of - pd.Timedelta(days=3)
    fresh = ExposureBalancer(BalancerConfig(initial_strength=2.0))
    rebuilt = served.rebuilt_as_of(events, earlier, balancer=fresh)
    assert rebuilt.snapshot.as_of == earlier and rebuilt.snapshot.manifest["config"] == parts.snapshot.manifest["config"]
    assert rebuilt.model is served.model and rebuilt.policy is served.policy and rebuilt.model_id == "bundle-1"
    assert rebuilt.feature_names == served.feature_names and rebuilt.balancer is fresh
    before = balancer.state_dict()
    rebuilt.rank_many(parts.requests[:10], record=True)
    assert balancer.state_dict() == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2026-03-01", "2026-03-01T00:00:00+00:00"), ("2026-03-01T08:00:00+08:00", "2026-03-01T00:00:00+00:00"),
     ("2026-03-01T00:00:00Z", "2026-03-01T00:00:00+00:00")],
)
def test_one_time_parser_reads_naive_times_as_utc(text: str, expected: str) -> None:
    stamp = to_utc(text)
    assert stamp.isoformat() == expected and stamp.unit == "ns"


@pytest.mark.parametrize("bad", ["not a time", "", None, "9999-01-01"])
def test_bad_times_are_one_line_errors_in_configs_and_requests(bad: Any) -> None:
    with pytest.raises(ConfigError, match="expected a UTC time"):
        to_utc(bad)
    from trustfeed.ranker._request import parse_request

    request = {"request_id": "r", "user_id": "u", "ts": bad, "candidates": []}
    with pytest.raises(RequestError, match="ts"):
        parse_request(request)
