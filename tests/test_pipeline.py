"""Conformance suite of the in-process scorer (RankingPipeline) over really trained parts.

The conformance list every scorer must pass: empty slate, one candidate, unknown merchant, duplicate ids,
NaN features / missing optional fields, every candidate back exactly once, batch == one by one,
and serving features equal training features.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, RequestError

TS = "2026-01-14T12:00:00+00:00"


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture
def pipeline(fx: Any, parts: Any) -> Any:
    return fx.make_pipeline(parts)


def _request(candidates: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"request_id": "r1", "user_id": "u-unknown", "ts": TS, "candidates": candidates, **fields}


def _known_ids(parts: Any, n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    merchants = parts.snapshot.merchants["merchant_id"].astype(str).to_numpy()
    creators = parts.snapshot.creators["creator_id"].astype(str).to_numpy()
    return [
        {"stream_id": f"s{i}", "creator_id": str(rng.choice(creators)), "merchant_id": str(rng.choice(merchants))}
        for i in range(n)
    ]


def _stream_ids(response: dict[str, Any]) -> list[str]:
    return [item["stream_id"] for item in response["items"]] + [f["stream_id"] for f in response["filtered"]]


# --------------------------------------------------------------------------- conformance


def test_empty_slate_gives_empty_items(pipeline: Any) -> None:
    response = pipeline.rank(_request([]))
    assert response["request_id"] == "r1"
    assert response["items"] == [] and response["filtered"] == []


def test_one_candidate(pipeline: Any, parts: Any, rng: np.random.Generator) -> None:
    candidate = _known_ids(parts, 1, rng)
    response = pipeline.rank(_request(candidate))
    assert [item["stream_id"] for item in response["items"]] == ["s0"]
    item = response["items"][0]
    assert set(item) == {"stream_id", "creator_id", "merchant_id", "score", "relevance", "trust"}
    assert all(isinstance(item[key], float) and math.isfinite(item[key]) for key in ("score", "relevance", "trust"))


def test_unknown_merchant_creator_and_user_are_ranked_with_priors(pipeline: Any, parts: Any, rng: np.random.Generator) -> None:
    candidates = _known_ids(parts, 5, rng) + [
        {"stream_id": "new-stream", "creator_id": "creator-never-seen", "merchant_id": "merchant-never-seen"}
    ]
    response = pipeline.rank(_request(candidates, user_id="user-never-seen"), log_features=True)
    ranked = {item["stream_id"]: item for item in response["items"]}
    assert "new-stream" in ranked and response["filtered"] == []
    new = ranked["new-stream"]
    assert 0.0 <= new["trust"] <= 1.0 and math.isfinite(new["relevance"])
    assert new["features"]["merchant_known"] == 0.0 and new["features"]["creator_known"] == 0.0
    known_trust = parts.snapshot.merchants["trust_index"].astype(float)
    assert known_trust.min() <= new["trust"] <= known_trust.max()


def test_duplicates_are_filtered_and_the_first_is_kept(pipeline: Any, parts: Any, rng: np.random.Generator) -> None:
    candidates = _known_ids(parts, 4, rng)
    twin = dict(candidates[1], merchant_id="another-merchant")
    candidates = candidates + [twin, dict(candidates[1])]
    response = pipeline.rank(_request(candidates))
    assert Counter(_stream_ids(response)) == Counter(c["stream_id"] for c in candidates)
    assert response["filtered"] == [{"stream_id": "s1", "reason": "duplicate"}] * 2
    kept = next(item for item in response["items"] if item["stream_id"] == "s1")
    assert kept["merchant_id"] == candidates[1]["merchant_id"]  # the first occurrence


def test_banned_merchant_is_filtered_with_its_reason(fx: Any, parts: Any, rng: np.random.Generator) -> None:
    candidates = _known_ids(parts, 6, rng)
    banned_id = candidates[2]["merchant_id"]
    merchants = parts.snapshot.merchants.copy()
    merchants["banned"] = merchants["merchant_id"].astype(str) == banned_id
    tampered = fx.TrainedParts(**{**vars(parts), "snapshot": replace(parts.snapshot, merchants=merchants)})
    response = fx.make_pipeline(tampered).rank(_request(candidates))
    banned_streams = [c["stream_id"] for c in candidates if c["merchant_id"] == banned_id]
    assert response["filtered"] == [{"stream_id": s, "reason": "banned_merchant"} for s in banned_streams]
    assert Counter(_stream_ids(response)) == Counter(c["stream_id"] for c in candidates)
    assert all(item["merchant_id"] != banned_id for item in response["items"])


def test_nan_features_and_missing_optional_fields_are_tolerated(fx: Any, parts: Any, rng: np.random.Generator) -> None:
    merchants = parts.snapshot.merchants.copy()
    numeric = [c for c in merchants.columns if c.startswith("trust_") and c != "trust_index"]
    merchants.loc[merchants.index[::2], numeric] = np.nan  # signals unknown for half the merchants
    nan_parts = fx.TrainedParts(**{**vars(parts), "snapshot": replace(parts.snapshot, merchants=merchants)})
    pipeline = fx.make_pipeline(nan_parts)
    candidates = _known_ids(parts, 8, rng)
    candidates[0]["viewers"] = float("nan")  # live-context fields: optional, NaN or null allowed
    candidates[1]["viewers"] = None
    candidates[2]["note"] = "a field the model does not use"
    response = pipeline.rank(_request(candidates), log_features=True)
    assert len(response["items"]) == 8
    assert all(math.isfinite(item["score"]) and math.isfinite(item["relevance"]) for item in response["items"])
    assert any(value is None for item in response["items"] for value in item["features"].values())


def test_feature_logging_gives_the_vector_the_model_scored(pipeline: Any, parts: Any, rng: np.random.Generator) -> None:
    response = pipeline.rank(_request(_known_ids(parts, 12, rng)), log_features=True, record=False)
    items = response["items"]
    assert all(list(item["features"]) == list(pipeline.feature_names) for item in items)
    matrix = np.array([[np.nan if v is None else v for v in item["features"].values()] for item in items])
    assert np.array_equal(pipeline.model.predict(matrix), np.array([item["relevance"] for item in items]))


def test_k_orders_everything_and_records_only_the_shown_slots(fx: Any, parts: Any, rng: np.random.Generator) -> None:
    pipeline = fx.make_pipeline(parts)
    candidates = _known_ids(parts, 15, rng)
    response = pipeline.rank(_request(candidates, k=3))
    assert len(response["items"]) == 15  # k does not drop candidates
    exposure = pipeline.balancer.creator_exposure()
    assert exposure.sum() == pytest.approx(sum(1 / math.log2(p + 1) for p in (1, 2, 3)))
    shown = {item["creator_id"] for item in response["items"][:3]}
    assert set(exposure[exposure > 0].index) == shown


def test_record_false_leaves_the_ledger_alone(fx: Any, parts: Any, rng: np.random.Generator) -> None:
    pipeline = fx.make_pipeline(parts)
    pipeline.rank(_request(_known_ids(parts, 10, rng)), record=False)
    assert pipeline.balancer.creator_exposure().sum() == 0.0


def test_trust_weight_zero_orders_by_relevance(fx: Any, parts: Any, rng: np.random.Generator) -> None:
    pipeline = fx.make_pipeline(parts, balancer=False, trust_weight=0.0)
    response = pipeline.rank(_request(_known_ids(parts, 20, rng)))
    relevance = [item["relevance"] for item in response["items"]]
    assert relevance == sorted(relevance, reverse=True)


def test_trust_lifts_a_merchant_at_equal_relevance(fx: Any, parts: Any) -> None:
    merchants = parts.snapshot.merchants
    order = merchants["trust_index"].astype(float).argsort().to_numpy()
    low, high = (str(merchants["merchant_id"].iloc[i]) for i in (order[0], order[-1]))
    creator = str(parts.snapshot.creators["creator_id"].iloc[0])
    pipeline = fx.make_pipeline(parts, balancer=False, trust_weight=1.0)
    response = pipeline.rank(_request([
        {"stream_id": "a", "creator_id": creator, "merchant_id": low},
        {"stream_id": "b", "creator_id": creator, "merchant_id": high},
    ]))
    by_stream = {item["stream_id"]: item for item in response["items"]}
    assert by_stream["b"]["trust"] > by_stream["a"]["trust"]
    if by_stream["a"]["relevance"] <= by_stream["b"]["relevance"]:
        assert [item["stream_id"] for item in response["items"]] == ["b", "a"]


def test_malformed_request_names_the_field(pipeline: Any) -> None:
    with pytest.raises(RequestError) as error:
        pipeline.rank(_request([{"stream_id": "s1", "creator_id": "c1"}]))
    assert error.value.field == "candidates[0].merchant_id"


def test_rank_many_names_the_request(pipeline: Any, parts: Any) -> None:
    bad = copy.deepcopy(parts.requests[:3])
    bad[2]["ts"] = "not a time"
    before = pipeline.balancer.state_dict()
    with pytest.raises(RequestError) as error:
        pipeline.rank_many(bad)
    assert error.value.field == "requests[2].ts"
    assert pipeline.balancer.state_dict() == before  # nothing ranked, nothing recorded


def test_model_and_assembler_must_agree(parts: Any) -> None:
    from trustfeed.features.context import FeatureAssembler
    from trustfeed.ranker.pipeline import RankingPipeline

    other = FeatureAssembler(parts.snapshot, None, live_fields=("viewers",))
    with pytest.raises(ConfigError, match="features differ"):
        RankingPipeline(other, parts.model)


# --------------------------------------------------------------------------- one code path


def test_rank_many_equals_rank_one_by_one_with_the_ledger_on(fx: Any, parts: Any) -> None:
    requests = parts.requests[:40]
    one_by_one = fx.make_pipeline(parts)
    batched = fx.make_pipeline(parts)
    expected = [one_by_one.rank(r) for r in requests]
    got = batched.rank_many(requests)
    assert got == expected
    assert batched.balancer.state_dict() == one_by_one.balancer.state_dict()


def test_rank_is_deterministic_for_a_fixed_ledger(fx: Any, parts: Any) -> None:
    first = fx.make_pipeline(parts).rank_many(parts.requests[:10], record=False)
    second = fx.make_pipeline(parts).rank_many(parts.requests[:10], record=False)
    assert first == second


def test_serving_features_equal_training_features(fx: Any) -> None:
    """The training frame and the serving response carry the same feature vectors."""
    from trustfeed.features.context import FeatureAssembler, build_context_tables
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import build_snapshot
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.ranker.pipeline import RankingPipeline
    from trustfeed.training.dataset import DatasetConfig, build_training_frame
    from trustfeed.training.simulate import SimConfig, simulate

    platform = simulate(SimConfig(seed=8, merchants=30, days=8))
    events = validate_events(platform.tables)
    day = (platform.config.start_time + pd.Timedelta(days=6)).floor("D")
    frame = build_training_frame(events, start=day, end=day + pd.Timedelta(days=1), config=DatasetConfig())
    model = LambdaMART(LambdaMARTConfig(num_rounds=3, early_stopping_rounds=0, min_data_in_leaf=5)).fit(
        frame.features(), frame.labels, frame.groups(), feature_names=frame.feature_names,
        categorical=frame.categorical, monotone=frame.monotone, feature_schema=frame.schema,
    )
    snapshot, context = build_snapshot(events, day), build_context_tables(events, day)
    pipeline = RankingPipeline(FeatureAssembler(snapshot, context, schema=frame.schema), model, None, None)
    impressions = events["impressions"]
    logged = impressions.loc[((impressions["ts"] >= day) & (impressions["ts"] < day + pd.Timedelta(days=1))).to_numpy(dtype=bool)]
    requests = fx.requests_from_impressions(logged)
    # the logged time of each impression is the request time of its request
    assert len(requests) > 5
    served = pipeline.rank_many(requests, log_features=True)
    serving = pd.DataFrame(
        [{"request_id": r["request_id"], "stream_id": i["stream_id"], **i["features"]} for r in served for i in r["items"]]
    )
    training = frame.frame[["request_id", "stream_id", *frame.feature_names]].astype({"request_id": str, "stream_id": str})
    joined = serving.merge(training, on=["request_id", "stream_id"], suffixes=("_serving", "_training"))
    assert len(joined) == len(serving) > 50
    for name in frame.feature_names:
        left = joined[f"{name}_serving"].astype(float).to_numpy()
        right = joined[f"{name}_training"].astype(float).to_numpy()
        np.testing.assert_array_equal(left, right, err_msg=name)


# --------------------------------------------------------------------------- properties


@st.composite
def _random_requests(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(0, 25))
    stream_pool = [f"s{i}" for i in range(draw(st.integers(1, 30)))]
    merchant_pool = draw(st.lists(st.sampled_from(["m0", "m1", "m2", "m3", "m7", "mx-new", "my-new"]), min_size=1, max_size=4))
    creator_pool = draw(st.lists(st.sampled_from(["c0", "c1", "c3", "c9", "cx-new"]), min_size=1, max_size=3))
    candidates = [
        {
            "stream_id": draw(st.sampled_from(stream_pool)),
            "creator_id": draw(st.sampled_from(creator_pool)),
            "merchant_id": draw(st.sampled_from(merchant_pool)),
        }
        for _ in range(n)
    ]
    k = draw(st.one_of(st.none(), st.integers(1, 30)))
    request = _request(candidates, user_id=draw(st.sampled_from(["u0", "u1", "u-new"])))
    if k is not None:
        request["k"] = k
    return request


@pytest.fixture(scope="module")
def pipeline_with_bans(fx: Any, parts: Any) -> Any:
    merchants = parts.snapshot.merchants.copy()
    merchants["banned"] = merchants["merchant_id"].astype(str).isin(["m1", "m3"])
    return fx.make_pipeline(fx.TrainedParts(**{**vars(parts), "snapshot": replace(parts.snapshot, merchants=merchants)}))


@settings(max_examples=60, deadline=None)
@given(request=_random_requests())
def test_every_candidate_comes_back_exactly_once(pipeline_with_bans: Any, request: dict[str, Any]) -> None:
    response = pipeline_with_bans.rank(request)
    assert Counter(_stream_ids(response)) == Counter(c["stream_id"] for c in request["candidates"])
    item_streams = [item["stream_id"] for item in response["items"]]
    assert len(item_streams) == len(set(item_streams))
    assert set(item_streams) == {c["stream_id"] for c in request["candidates"]} - {
        f["stream_id"] for f in response["filtered"] if f["reason"] != "duplicate"
    }
    assert {f["reason"] for f in response["filtered"]} <= {"duplicate", "banned_merchant", "banned_entity"}
    first = {}
    for c in request["candidates"]:
        first.setdefault(c["stream_id"], c)  # duplicates are judged by their first occurrence
    banned = [s for s, c in first.items() if c["merchant_id"] in ("m1", "m3")]
    assert sorted(banned) == sorted(f["stream_id"] for f in response["filtered"] if f["reason"] == "banned_merchant")
    assert not set(banned) & set(item_streams)


@settings(max_examples=25, deadline=None)
@given(requests=st.lists(_random_requests(), max_size=6))
def test_rank_many_equals_rank_in_turn_for_any_batch(fx: Any, parts: Any, requests: list[dict[str, Any]]) -> None:
    requests = [dict(r, request_id=f"r{i}") for i, r in enumerate(requests)]
    one_by_one, batched = fx.make_pipeline(parts), fx.make_pipeline(parts)
    assert batched.rank_many(requests) == [one_by_one.rank(r) for r in requests]
    assert batched.balancer.state_dict() == one_by_one.balancer.state_dict()


def _as_item_dicts(items: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The column form's items as the dict form writes them (NaN trust -> None)."""
    out = []
    for i, stream in enumerate(items["stream_id"]):
        trust = float(items["trust"][i])
        item = {"stream_id": stream, "creator_id": items["creator_id"][i], "merchant_id": items["merchant_id"][i],
                "score": float(items["score"][i]), "relevance": float(items["relevance"][i]),
                "trust": None if math.isnan(trust) else trust}
        if "features" in items:
            item["features"] = {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, items["features"][i])}
        out.append(item)
    return out


@settings(max_examples=20, deadline=None)
@given(requests=st.lists(_random_requests(), min_size=1, max_size=4), log_features=st.booleans())
def test_column_form_is_the_dict_form_as_columns(
    fx: Any, parts: Any, requests: list[dict[str, Any]], log_features: bool
) -> None:
    requests = [dict(r, request_id=f"r{i}") for i, r in enumerate(requests)]
    as_dicts, as_columns = fx.make_pipeline(parts), fx.make_pipeline(parts)
    expected = as_dicts.rank_many(requests, log_features=log_features)
    got = [as_columns.rank(r, columns=True, log_features=log_features) for r in requests]
    for response, reference in zip(got, expected, strict=True):
        assert isinstance(response["items"]["score"], np.ndarray)
        assert {**response, "items": _as_item_dicts(response["items"], as_columns.feature_names)} == reference
    assert as_columns.balancer.state_dict() == as_dicts.balancer.state_dict()


def test_live_context_fields_reach_the_features_and_are_checked(parts: Any, rng: np.random.Generator) -> None:
    from trustfeed.features.context import FeatureAssembler
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.ranker.pipeline import RankingPipeline

    assembler = FeatureAssembler(parts.snapshot, parts.context, live_fields=("viewers",))
    X = rng.normal(size=(300, len(assembler.feature_names)))
    model = LambdaMART(LambdaMARTConfig(num_rounds=3, min_data_in_leaf=5, early_stopping_rounds=0)).fit(
        X, (X[:, -1] > 0).astype(int), group=[30] * 10, feature_names=assembler.feature_names,
        feature_schema=assembler.schema(),
    )
    pipeline = RankingPipeline(assembler, model)
    assert pipeline.live_fields == ("viewers",)
    candidates = _known_ids(parts, 3, rng)
    candidates[0]["viewers"] = 1500
    candidates[1]["viewers"] = None
    response = pipeline.rank(_request(candidates), log_features=True)
    logged = {item["stream_id"]: item["features"]["live_viewers"] for item in response["items"]}
    assert logged == {"s0": 1500.0, "s1": None, "s2": None}
    batch = pipeline.rank_many([_request(candidates), _request(candidates[:1], request_id="r2")], log_features=True)
    assert batch[0]["items"] == response["items"]
    candidates[2]["viewers"] = "many"
    with pytest.raises(RequestError) as error:
        pipeline.rank(_request(candidates))
    assert error.value.field == "candidates[2].viewers"
