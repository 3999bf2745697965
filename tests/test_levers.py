"""Operator levers move exposure the way they say: trust-exposure target, Gini target.

(The guarantee priority and the trust floor have their property tests in test_policy.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError
from trustfeed.ranker._levers import TILTS, exposure_weighted_trust_by_request, tilt_scores, tilt_to_trust_target
from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
from trustfeed.ranker.policy import Policy, PolicyConfig, PolicyState

trusts = st.floats(0.0, 1.0, allow_nan=False)
scores = st.floats(-5.0, 5.0, allow_nan=False)
COMBINES = ["expected_value", "logit", "multiplicative"]
STATE = PolicyState((1.0, -2.0), (-1.5, -0.7))


def _list_trust(order: np.ndarray, trust: np.ndarray, depth: int) -> float:
    shown = order[:depth]
    exposure = 1.0 / np.log2(np.arange(2, shown.size + 2))
    return float((exposure * trust[shown]).sum() / exposure.sum()) if shown.size else float("nan")


@settings(max_examples=80, deadline=None)
@given(score=st.lists(scores, min_size=1, max_size=25), data=st.data(), additive=st.booleans(),
       depth=st.integers(1, 12))
def test_exposure_weighted_trust_never_falls_as_the_tilt_grows(score, data, additive, depth):
    n = len(score)
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)))
    values = np.array(score)
    clean = np.clip(trust, 1e-3, 1 - 1e-3)
    logit = np.log(clean) - np.log1p(-clean)
    ids, kept = np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    measured = [exposure_weighted_trust_by_request(tilt_scores(values, logit, w, additive), clean, ids, kept, depth, 1)[0]
                for w in TILTS]
    assert all(b >= a - 1e-12 for a, b in zip(measured, measured[1:]))
    assert (tilt_scores(values, logit, 0.0, additive) == values).all()


@settings(max_examples=80, deadline=None)
@given(rel=st.lists(scores, min_size=1, max_size=20), data=st.data(), targets=st.tuples(
    st.floats(0.01, 0.99), st.floats(0.01, 0.99)), combine=st.sampled_from(COMBINES), depth=st.integers(1, 10))
def test_a_higher_trust_exposure_target_never_lowers_the_lists_trust(rel, data, targets, combine, depth):
    n = len(rel)
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)))
    low, high = sorted(targets)
    state = STATE if combine == "expected_value" else None
    measured = []
    for target in (None, low, high):
        policy = Policy(PolicyConfig(combine=combine, trust_exposure_target=target, trust_exposure_depth=depth), state)
        result = policy.rank(rel, trust, False, False)
        measured.append(_list_trust(result.order, np.clip(trust, 1e-3, 1 - 1e-3), depth))
        if target is not None and measured[-1] < target - 1e-9:
            # not met: only because the candidates cannot, so the largest tilt was used
            additive = combine == "logit"
            biggest = Policy(PolicyConfig(combine=combine), state).score(rel, trust)
            clean = np.clip(trust, 1e-3, 1 - 1e-3)
            tilted = tilt_scores(biggest, np.log(clean) - np.log1p(-clean), TILTS[-1], additive)
            assert _list_trust(np.argsort(-tilted, kind="stable"), clean, depth) == pytest.approx(measured[-1])
    assert measured[0] - 1e-12 <= measured[1] <= measured[2] + 1e-12


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 8), min_size=1, max_size=6), data=st.data(), target=st.floats(0.05, 0.95),
       combine=st.sampled_from(COMBINES))
def test_the_target_is_per_request_batch_equals_one_by_one(sizes, data, target, combine):
    n = sum(sizes)
    rel = np.array(data.draw(st.lists(scores, min_size=n, max_size=n)))
    trust = np.array(data.draw(st.lists(trusts, min_size=n, max_size=n)))
    banned = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    policy = Policy(PolicyConfig(combine=combine, trust_exposure_target=target, trust_floor=0.05),
                    STATE if combine == "expected_value" else None)
    _, rank, _ = policy.rank_many(rel, trust, banned, False, sizes)
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        result = policy.rank(rel[rows], trust[rows], banned[rows], False)
        expected = np.zeros(size, dtype=np.int64)
        expected[result.order] = np.arange(1, result.order.size + 1)
        assert (rank[rows] == expected).all()
        start += size


def test_filtered_candidates_do_not_count_towards_the_target():
    # the most trusted candidate is banned: meeting the target must come from the others
    score, trust = np.array([3.0, 2.0, 1.0]), np.array([0.2, 0.99, 0.8])
    kept = np.array([True, False, True])
    _, chosen = tilt_to_trust_target(score, trust, np.array([3]), kept, target=0.7, depth=1, additive=True, eps=1e-3)
    _, ignoring = tilt_to_trust_target(score, trust, np.array([3]), np.ones(3, bool), target=0.7, depth=1,
                                       additive=True, eps=1e-3)
    assert chosen[0] > 0 and ignoring[0] > 0
    result = Policy(PolicyConfig(combine="logit", trust_exposure_target=0.7, trust_exposure_depth=1)).rank(
        score, trust, [False, True, False], False)
    assert result.order.tolist() == [2, 0]


def test_trust_exposure_lever_validation_and_round_trip():
    for bad in ({"trust_exposure_target": 0.0}, {"trust_exposure_target": 1.0}, {"trust_exposure_target": True},
                {"trust_exposure_depth": 0}, {"trust_exposure_depth": 2.5}):
        with pytest.raises(ConfigError, match="trust_exposure"):
            PolicyConfig(**bad)
    config = PolicyConfig(trust_exposure_target=0.8, trust_exposure_depth=5)
    assert PolicyConfig.from_dict(config.to_dict()) == config


def test_the_pipeline_meets_the_trust_exposure_target(fx):
    parts = fx.trained_parts()
    plain = fx.make_pipeline(parts, balancer=False)
    targeted = fx.make_pipeline(parts, balancer=False)
    base = plain.policy
    measured = {}
    for name, pipeline, target in (("plain", plain, None), ("targeted", targeted, 0.9)):
        pipeline.policy = Policy(PolicyConfig(**{**base.config.to_dict(), "trust_exposure_target": target}), base.state)
        values = []
        for response in pipeline.rank_many(parts.requests[:40], record=False):
            trust = np.array([item["trust"] for item in response["items"]], dtype=float)
            values.append(_list_trust(np.arange(trust.size), np.clip(trust, 1e-3, 1 - 1e-3), 10))
        measured[name] = np.array(values)
    assert np.nanmean(measured["targeted"]) > np.nanmean(measured["plain"])
    assert (measured["targeted"] >= measured["plain"] - 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(targets=st.tuples(st.floats(0.05, 0.95), st.floats(0.05, 0.95)), exposures=st.lists(
    st.floats(0.0, 10.0), min_size=2, max_size=30), kp=st.floats(0.0, 8.0), ki=st.floats(0.0, 4.0))
def test_a_higher_gini_target_never_asks_for_more_balancing(targets, exposures, kp, ki):
    # the controller's side of the Gini lever: from the same ledger, a higher target gives a
    # strength no higher (the ledger side, lower target -> lower Gini, is in test_balancer.py)
    low, high = sorted(targets)
    strengths = []
    for target in (low, high):
        balancer = ExposureBalancer(BalancerConfig(target_gini=target, kp=kp, ki=ki, control_interval=1,
                                                   initial_strength=1.0))
        for i, value in enumerate(exposures):
            balancer.record([f"c{i}"], ["m"], [1.0 + value])
        strengths.append(balancer.strength)
    assert strengths[1] <= strengths[0] + 1e-9


def test_lever_policies_change_only_what_they_name(fx):
    from trustfeed.training.evaluation.policies import PolicyContext, lever_policy

    parts = fx.trained_parts()
    served = fx.make_pipeline(parts, balancer=True)
    served.rank_many(parts.requests[:30], record=True)  # a ledger and a controller state to carry over
    context = PolicyContext(served=served, plain_model=None, world=None, bad_cost=2.0)
    fixed = lever_policy("fixed 6", balancer={"kp": 0.0, "ki": 0.0, "strength_max": 8.0, "initial_strength": 6.0})
    pipeline = fixed.build(context).pipeline
    # the saved state's strength does not override the strength the sweep point asks for
    assert pipeline.balancer.strength == 6.0
    assert pipeline.balancer.state_dict()["creators"] == served.balancer.state_dict()["creators"]
    boosted = lever_policy("boost", guarantee_boost=1.5).build(context).pipeline
    assert boosted.policy.config.guarantee_boost == 1.5 and boosted.policy.state == served.policy.state
    assert served.policy.config.guarantee_boost == 0.0  # the served pipeline is left as it was
