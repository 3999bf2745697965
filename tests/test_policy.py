"""ranker.policy: hard rules, the trust/relevance combination, batch == per request."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.ranker import policy as policy_module
from trustfeed.ranker.policy import Policy, PolicyConfig, PolicyState, standardise_relevance

relevances = st.floats(-50, 50, allow_nan=False)
trusts = st.floats(0.0, 1.0, allow_nan=False)


def test_doctests():
    result = doctest.testmod(policy_module)
    assert result.attempted > 0 and result.failed == 0


def test_config_validation_and_round_trip():
    for bad in ({"trust_weight": -1}, {"combine": "max"}, {"trust_floor": 1.5}, {"eps": 0.0}, {"trust_weight": float("nan")}):
        with pytest.raises(ConfigError):
            PolicyConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        PolicyConfig.from_dict({"weight": 1})
    config = PolicyConfig(trust_weight=2.0, combine="multiplicative", trust_floor=0.1)
    assert PolicyConfig.from_dict(config.to_dict()) == config


def test_hard_rules_and_reasons():
    reasons = Policy(PolicyConfig(trust_floor=0.1)).reasons(
        banned_merchant=[True, False, False, True, False],
        banned_entity=[True, True, False, False, False],
        trust=[0.9, 0.9, 0.05, 0.9, np.nan],
    )
    assert reasons.tolist() == ["banned_merchant", "banned_entity", "trust_floor", "banned_merchant", ""]
    no_rules = Policy(PolicyConfig(filter_banned=False)).reasons([True], [True], [0.0])
    assert no_rules.tolist() == [""]


def test_every_candidate_comes_back_exactly_once():
    result = Policy().rank(
        relevance=[3.0, 2.0, 1.0, 0.0],
        trust=[0.9, 0.9, 0.9, 0.9],
        banned_merchant=[False, True, False, False],
        banned_entity=[False, False, True, False],
    )
    assert result.order.tolist() == [0, 3]
    assert result.filtered.tolist() == [1, 2] and result.reasons.tolist() == ["banned_merchant", "banned_entity"]
    assert sorted(result.order.tolist() + result.filtered.tolist()) == [0, 1, 2, 3]
    assert np.isneginf(result.score[[1, 2]]).all()


def test_empty_single_and_nan():
    empty = Policy(PolicyConfig()).rank([], [], [], [])
    assert empty.order.size == 0 and empty.filtered.size == 0
    single = Policy(PolicyConfig()).rank([1.0], [0.5], False, False)
    assert single.order.tolist() == [0]
    nan_relevance = Policy(PolicyConfig()).rank([np.nan, 0.0, 1.0], [0.5, 0.5, 0.5], False, False)
    assert nan_relevance.order.tolist() == [2, 1, 0]  # unknown relevance goes last, not first
    nan_trust = Policy(PolicyConfig()).score([1.0, 0.0], [np.nan, 0.5])
    assert nan_trust[0] > nan_trust[1]  # NaN trust is neutral (0.5), not a penalty or a crash
    with pytest.raises(SchemaError):
        Policy(PolicyConfig()).score([1.0, 2.0], [0.5, 0.5, 0.5])


def test_trust_weight_zero_is_relevance_order():
    rel = np.array([0.2, 3.0, -1.0, 1.5])
    trust = np.array([0.99, 0.01, 0.99, 0.5])
    off = Policy(PolicyConfig(trust_weight=0.0)).rank(rel, trust, False, False)
    assert off.order.tolist() == np.argsort(-rel).tolist()
    on = Policy(PolicyConfig(trust_weight=1.0)).rank(rel, trust, False, False)
    assert on.order[0] != 1  # the 0.01-trust candidate loses the top slot once trust counts


@settings(max_examples=100, deadline=None)
@given(
    rel=st.lists(relevances, min_size=2, max_size=20),
    data=st.data(),
    weight=st.floats(0.0, 5.0),
    combine=st.sampled_from(["logit", "multiplicative"]),
)
def test_raising_trust_never_lowers_score_or_rank(rel, data, weight, combine):
    n = len(rel)
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)))
    i = data.draw(st.integers(0, n - 1))
    raised = trust.copy()
    raised[i] = data.draw(st.floats(trust[i], 1.0))
    config = PolicyConfig(trust_weight=weight, combine=combine)
    assert Policy(config).score(rel, raised)[i] >= Policy(config).score(rel, trust)[i]
    before = Policy(config).rank(rel, trust, False, False).order.tolist().index(i)
    after = Policy(config).rank(rel, raised, False, False).order.tolist().index(i)
    assert after <= before


@settings(max_examples=60, deadline=None)
@given(rel=st.lists(relevances, min_size=1, max_size=15), scale=st.floats(0.01, 100), shift=st.floats(-100, 100), data=st.data())
def test_order_is_invariant_to_the_models_score_scale(rel, scale, shift, data):
    trust = data.draw(st.lists(trusts, min_size=len(rel), max_size=len(rel)))
    config = PolicyConfig(trust_weight=1.0)
    base = Policy(config).rank(rel, trust, False, False).order
    moved = Policy(config).rank(np.array(rel) * scale + shift, trust, False, False).order
    z = Policy(config).score(rel, trust)
    # exact ties may resolve either way after rounding; compare only when scores are distinct
    if len(np.unique(np.round(z, 6))) == len(z):
        assert base.tolist() == moved.tolist()


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 8), min_size=1, max_size=6), data=st.data())
def test_batch_form_equals_request_by_request(sizes, data):
    n = sum(sizes)
    rel = np.array(data.draw(st.lists(relevances, min_size=n, max_size=n)), dtype=float)
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)), dtype=float)
    banned = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    entity = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    config = PolicyConfig(trust_weight=0.7, trust_floor=0.05)
    score, rank, reasons = Policy(config).rank_many(rel, trust, banned, entity, sizes)
    start = 0
    for size in sizes:
        part = slice(start, start + size)
        one = Policy(config).rank(rel[part], trust[part], banned[part], entity[part])
        np.testing.assert_allclose(score[part], one.score)
        expected_rank = np.zeros(size, dtype=int)
        expected_rank[one.order] = np.arange(1, len(one.order) + 1)
        assert rank[part].tolist() == expected_rank.tolist()
        assert reasons[part][one.filtered].tolist() == one.reasons.tolist()
        start += size


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 8), min_size=1, max_size=6), data=st.data())
def test_one_standardisation_scores_a_request_alone_as_within_a_batch(sizes, data):
    n = sum(sizes)
    rel = np.array(data.draw(st.lists(st.one_of(relevances, st.just(np.nan)), min_size=n, max_size=n)), dtype=float)
    batch = standardise_relevance(rel, np.array(sizes))
    start = 0
    for size in sizes:
        alone = standardise_relevance(rel[start : start + size])
        # bit for bit: serving scores one request, evaluation many at once
        assert batch[start : start + size].tobytes() == alone.tobytes()
        finite = np.isfinite(rel[start : start + size])
        if finite.sum() > 1 and np.ptp(rel[start : start + size][finite]) > 1e-6:
            assert abs(alone[finite].mean()) < 1e-9 and alone[finite].std() == pytest.approx(1.0)
        start += size


def test_the_pipeline_ranks_with_the_policy_it_holds(fx):
    """The property tests above exercise the code serving runs: the pipeline's scores are Policy.score's."""
    parts = fx.trained_parts()
    pipeline = fx.make_pipeline(parts, balancer=False, trust_weight=0.8)
    assert isinstance(pipeline.policy, Policy) and pipeline.policy.config.trust_weight == 0.8
    request = parts.requests[3]
    response = pipeline.rank(request, record=False)
    relevance = np.array([item["relevance"] for item in response["items"]])
    trust = np.array([np.nan if item["trust"] is None else item["trust"] for item in response["items"]])
    expected = pipeline.policy.score(relevance, trust)
    # items come back in policy order, so the standardisation is over the same candidates
    assert [item["score"] for item in response["items"]] == pytest.approx(expected.tolist(), rel=1e-12, abs=1e-12)
    assert np.all(np.diff(expected) <= 0)


def _exposure(order: np.ndarray, n: int) -> np.ndarray:
    """Exposure 1 / log2(position + 1) of every candidate (0 when filtered)."""
    exposure = np.zeros(n)
    exposure[order] = 1.0 / np.log2(np.arange(2, order.size + 2))
    return exposure


@settings(max_examples=80, deadline=None)
@given(
    rel=st.lists(st.floats(-6, 6, allow_nan=False), min_size=1, max_size=20),
    data=st.data(),
    boosts=st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 5.0)),
    combine=st.sampled_from(["expected_value", "logit", "multiplicative"]),
)
def test_guarantee_boost_only_raises_guaranteed_merchants(rel, data, boosts, combine):
    n = len(rel)
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)))
    guarantees = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    low, high = sorted(boosts)
    state = PolicyState((1.0, -2.0), (-1.5, -0.7)) if combine == "expected_value" else None
    ranks = []
    for boost in (low, high):
        policy = Policy(PolicyConfig(combine=combine, guarantee_boost=boost), state)
        result = policy.rank(rel, trust, False, False, guarantees=guarantees)
        rank = np.empty(n, dtype=int)
        rank[result.order] = np.arange(n)
        ranks.append(rank)
        # within each side the order is the unboosted one
        plain = Policy(PolicyConfig(combine=combine), state).score(rel, trust)
        boosted = policy.score(rel, trust, guarantees=guarantees)
        assert (boosted >= plain - 1e-12).all() and (boosted[guarantees == 0] == plain[guarantees == 0]).all()
    guaranteed = guarantees > 0
    # a higher boost never moves a guaranteed candidate down nor a plain one up, so the
    # guaranteed merchants' exposure share only grows
    assert (ranks[1][guaranteed] <= ranks[0][guaranteed]).all()
    assert (ranks[1][~guaranteed] >= ranks[0][~guaranteed]).all()
    exposure = [1.0 / np.log2(r + 2) for r in ranks]
    assert exposure[1][guaranteed].sum() >= exposure[0][guaranteed].sum() - 1e-12


@settings(max_examples=60, deadline=None)
@given(rel=st.lists(relevances, min_size=1, max_size=20), data=st.data(), floors=st.tuples(trusts, trusts))
def test_trust_floor_removes_exactly_the_merchants_below_it(rel, data, floors):
    n = len(rel)
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)))
    low, high = sorted(floors)
    kept = []
    for floor in (low, high):
        result = Policy(PolicyConfig(trust_floor=floor)).rank(rel, trust, False, False)
        assert set(result.filtered.tolist()) == set(np.flatnonzero(trust < floor).tolist())
        assert _exposure(result.order, n)[trust < floor].sum() == 0.0
        kept.append(set(result.order.tolist()))
    assert kept[1] <= kept[0]  # a higher floor never brings a candidate back


def test_guarantee_boost_validation_and_the_pipeline_passes_guarantees(fx):
    for bad in (-0.1, float("inf"), 11.0, True):
        with pytest.raises(ConfigError, match="guarantee_boost"):
            PolicyConfig(guarantee_boost=bad)
    parts = fx.trained_parts()
    plain = fx.make_pipeline(parts, balancer=False)
    boosted = fx.make_pipeline(parts, balancer=False)
    boosted.policy = Policy(PolicyConfig(guarantee_boost=3.0))
    status = plain.assembler.merchant_status(np.array(parts.snapshot.merchants["merchant_id"].tolist(), dtype=object))
    guaranteed = {m for m, g in zip(parts.snapshot.merchants["merchant_id"], status.guarantees, strict=True) if g > 0}
    assert guaranteed, "the fixture world has merchants offering buyer protection"
    lift = []
    for pipeline in (plain, boosted):
        shown = [(i + 1, item["merchant_id"]) for r in pipeline.rank_many(parts.requests[:40], record=False)
                 for i, item in enumerate(r["items"][:10])]
        exposure = np.array([1.0 / np.log2(p + 1) for p, _ in shown])
        lift.append(exposure[[m in guaranteed for _, m in shown]].sum() / exposure.sum())
    assert lift[1] > lift[0]
