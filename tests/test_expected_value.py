"""The expected-net-value policy: calibration fits, monotonicity, the bad_cost trade-off."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.ranker import _expected_value as ev
from trustfeed.ranker.policy import Policy, PolicyConfig, PolicyState

STATE = PolicyState(purchase_calibration=(1.3, -2.5), bad_model=(-2.0, -0.8))
FITTED = Policy(PolicyConfig(), STATE)


def _fitted(calibration: tuple[float, float], bad_model: tuple[float, float], **config: Any) -> Policy:
    return Policy(PolicyConfig(**config), PolicyState(calibration, bad_model))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_doctests() -> None:
    result = doctest.testmod(ev)
    assert result.attempted > 0 and result.failed == 0


def test_purchase_calibration_recovers_known_parameters(rng: np.random.Generator) -> None:
    n = 60000
    score = rng.normal(0.0, 1.2, n)
    position = rng.integers(1, 16, n)
    a, b, g = 0.9, -3.0, -0.6
    purchased = rng.random(n) < _sigmoid(a * score + b + g * np.log(position))
    fitted = ev.fit_purchase_calibration(score, purchased, position)
    np.testing.assert_allclose(fitted, (a, b, g), atol=0.08)


def test_bad_model_recovers_known_parameters_and_respects_the_constraint(rng: np.random.Generator) -> None:
    n = 60000
    trust = rng.beta(2.6, 1.6, n)
    logit = np.log(trust / (1 - trust))
    bad = rng.random(n) < _sigmoid(-2.2 - 0.9 * logit)
    c0, c1 = ev.fit_bad_model(trust, bad)
    assert c0 == pytest.approx(-2.2, abs=0.08) and c1 == pytest.approx(-0.9, abs=0.08)
    # bad orders that *rise* with trust violate the monotone policy: the fit lands on c1 = 0,
    # a constant rate equal to the observed one (the constrained maximum likelihood)
    rising = rng.random(n) < _sigmoid(-2.2 + 0.9 * logit)
    c0, c1 = ev.fit_bad_model(trust, rising)
    assert c1 == 0.0
    assert _sigmoid(np.array([c0]))[0] == pytest.approx(rising.mean(), abs=1e-4)  # up to the tiny ridge


def test_separable_data_stays_finite() -> None:
    x = np.r_[np.zeros(50), np.ones(50)]
    beta = ev.logistic_regression(np.column_stack([np.ones(100), x]), x)
    assert np.isfinite(beta).all() and beta[1] > 5


@settings(max_examples=100, deadline=None)
@given(
    rel=st.lists(st.floats(-6, 6, allow_nan=False), min_size=2, max_size=20),
    data=st.data(),
    bad_cost=st.floats(0.0, 10.0),
    c1=st.floats(-3.0, 0.0),
    risk_term=st.floats(0.0, 30.0),
)
def test_raising_trust_never_lowers_score_or_rank(
    rel: list[float], data: st.DataObject, bad_cost: float, c1: float, risk_term: float
) -> None:
    # any fitted risk term, even one above 1 + bad_cost (a state fitted for a higher cost):
    # scoring caps it, so trust never lowers the score
    n = len(rel)
    trust = np.array(data.draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n)))
    i = data.draw(st.integers(0, n - 1))
    raised = trust.copy()
    raised[i] = data.draw(st.floats(trust[i], 1.0))
    policy = Policy(PolicyConfig(bad_cost=bad_cost), PolicyState((1.0, -2.0), (-1.5, c1), risk_term))
    assert policy.score(rel, raised)[i] >= policy.score(rel, trust)[i]
    before = policy.rank(rel, trust, False, False).order.tolist().index(i)
    after = policy.rank(rel, raised, False, False).order.tolist().index(i)
    assert after <= before


@settings(max_examples=60, deadline=None)
# distinct at the resolution of real model scores (1e-184 apart would tie after standardising)
@given(rel=st.lists(st.integers(-800, 800), min_size=1, max_size=20, unique=True).map(lambda v: [x / 100 for x in v]),
       data=st.data())
def test_zero_bad_cost_is_the_relevance_order(rel: list[float], data: st.DataObject) -> None:
    trust = data.draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=len(rel), max_size=len(rel)))
    policy = _fitted((0.7, -1.0), (-1.0, -2.0), bad_cost=0.0)
    order = policy.rank(rel, trust, False, False).order
    assert order.tolist() == np.argsort(-np.asarray(rel), kind="stable").tolist()


def test_high_converting_low_trust_merchant_drops_exactly_when_net_value_says_so() -> None:
    a, b, c0, c1 = 1.0, -2.0, -1.0, -1.5
    trustworthy, risky = 0.95, 0.5
    p_bad_risky = _sigmoid(c0 + c1 * np.log(risky / (1 - risky)))
    p_bad_good = _sigmoid(c0 + c1 * np.log(trustworthy / (1 - trustworthy)))
    assert p_bad_risky > 0.2 > 0.01 > p_bad_good  # a clear trust gap between the two
    base = 0.0  # the trustworthy merchant's relevance
    for lift in np.linspace(0.0, 3.0, 31):  # how much better the risky one converts
        relevance = [base + lift, base]  # risky first in input order
        for bad_cost in (0.5, 1.0, 2.0, 4.0):
            policy = _fitted((a, b), (c0, c1), bad_cost=bad_cost)
            order = policy.rank(relevance, [risky, trustworthy], False, False).order.tolist()
            value_risky = _sigmoid(a * (base + lift) + b) * (1 - (1 + bad_cost) * p_bad_risky)
            value_good = _sigmoid(a * base + b) * (1 - (1 + bad_cost) * p_bad_good)
            if abs(value_risky - value_good) < 1e-12:
                continue
            expected = [0, 1] if value_risky > value_good else [1, 0]
            assert order == expected, (lift, bad_cost)
        # bad_cost = 0 is the comparison arm: trust off, relevance decides
        off = _fitted((a, b), (c0, c1), bad_cost=0.0)
        if lift > 0:
            assert off.rank(relevance, [risky, trustworthy], False, False).order.tolist() == [0, 1]
    # and the switch really happens inside the grid at the default cost of 2
    policy = _fitted((a, b), (c0, c1))
    assert policy.rank([0.2, 0.0], [risky, trustworthy], False, False).order.tolist() == [1, 0]
    assert policy.rank([3.0, 0.0], [risky, trustworthy], False, False).order.tolist() == [0, 1]


def test_batch_form_nan_and_trust_weight_zero() -> None:
    rel = np.array([1.0, np.nan, 0.5, 2.0, -1.0])
    trust = np.array([0.9, 0.9, np.nan, 0.1, 0.5])
    one = FITTED.score(rel, trust)
    assert np.isneginf(one[1]) and np.isfinite(one[[0, 2, 3, 4]]).all()
    # NaN trust is neutral (0.5), the same as an explicit 0.5
    assert one[2] == FITTED.score(rel[[2]], [0.5])[0]
    score, rank, _ = FITTED.rank_many(rel, trust, False, False, [2, 3])
    np.testing.assert_array_equal(score, one)
    assert rank.tolist() == [1, 2, 1, 2, 3] or rank[:2].tolist() == [1, 2]
    off = _fitted((1.3, -2.5), (-2.0, -0.8), trust_weight=0.0)
    finite = np.isfinite(rel)
    order = off.rank(rel[finite], trust[finite], False, False).order
    assert order.tolist() == np.argsort(-rel[finite]).tolist()


def test_unfitted_expected_value_falls_back_to_the_logit_formula(rng: np.random.Generator) -> None:
    rel, trust = rng.normal(size=12), rng.random(12)
    fallback = Policy(PolicyConfig(trust_weight=0.7)).score(rel, trust)
    logit = Policy(PolicyConfig(trust_weight=0.7, combine="logit")).score(rel, trust)
    np.testing.assert_array_equal(fallback, logit)


def test_config_and_state_validation_and_json_round_trip() -> None:
    for bad_config in ({"bad_cost": -1.0}, {"bad_cost": float("inf")}, {"purchase_calibration": (1.0, 0.0)}):
        with pytest.raises(ConfigError):  # what is learned is no longer configured
            PolicyConfig.from_dict(bad_config)
    for calibration, bad_model in (
        ((0.0, 0.0), (0.0, -1.0)),  # a <= 0
        ((1.0, 0.0), (0.0, 0.5)),  # c1 > 0
        ((1.0, 0.0, 3.0), (0.0, -1.0)),
        ((1.0, float("nan")), (0.0, -1.0)),
        ("ab", (0.0, -1.0)),
        ((1.0, 0.0), None),  # fitted together or not at all
    ):
        with pytest.raises(ConfigError):
            PolicyState(calibration, bad_model)  # type: ignore[arg-type]
    saved = json.loads(json.dumps(FITTED.to_dict()))
    back = Policy.from_dict(saved["config"], saved["state"])
    assert back == FITTED and isinstance(back.state.bad_model, tuple)  # type: ignore[union-attr]
    # a config from before the fitted state had its own place still loads, with its state
    legacy = {**FITTED.config.to_dict(), "purchase_calibration": STATE.purchase_calibration, "bad_model": STATE.bad_model}
    assert Policy.from_dict(legacy) == FITTED
    assert not Policy.from_dict({**FITTED.config.to_dict(), "purchase_calibration": None, "bad_model": None}).is_fitted


def test_fit_learns_the_state_and_a_useless_score_keeps_the_fallback(rng: np.random.Generator) -> None:
    n = 20000
    score, position = rng.normal(size=n), rng.integers(1, 11, n)
    purchased = rng.random(n) < _sigmoid(1.2 * score - 2.5 - 0.5 * np.log(position))
    trust = rng.beta(2.6, 1.6, n)
    bad = rng.random(n) < _sigmoid(-2.0 - 0.8 * np.log(trust / (1 - trust)))
    policy = Policy().fit(score, purchased, position, trust, bad)
    assert policy.is_fitted and policy.state is not None
    np.testing.assert_allclose(policy.state.purchase_calibration, (1.2, -2.5), atol=0.15)
    np.testing.assert_allclose(policy.state.bad_model, (-2.0, -0.8), atol=0.15)
    assert policy.fit_info_["train_purchases"] == n
    # the fitted policy ranks by expected net value, the unfitted one by the logit fallback
    assert not np.array_equal(policy.score(score[:5], trust[:5]), Policy().score(score[:5], trust[:5]))
    useless = Policy().fit(-score, purchased, position, trust, bad)
    assert not useless.is_fitted and "fallback" in useless.fit_info_


def test_risk_calibration_recovers_the_priced_in_risk_and_keeps_its_bounds(rng: np.random.Generator) -> None:
    n = 60000
    p_bad = rng.uniform(0.0, 0.5, n)
    position = rng.integers(1, 11, n)
    # a score that already pushed risky merchants down: they are bought more than it says
    score = rng.normal(size=n) - 2.0 * p_bad
    logit = 1.1 * score - 2.2 - 0.6 * np.log(position)
    for d_true, bad_cost in ((1.5, 2.0), (0.0, 2.0)):
        bought = rng.random(n) < _sigmoid(logit + d_true * p_bad)
        a, b, g, d = ev.fit_risk_calibration(score, bought, position, p_bad, bad_cost)
        np.testing.assert_allclose((a, b, g), (1.1, -2.2, -0.6), atol=0.1)
        assert d == pytest.approx(d_true, abs=0.35) and d >= 0.0
    # outside [0, 1 + bad_cost] the fit lands on the nearest bound (the constrained optimum)
    bought = rng.random(n) < _sigmoid(logit + 6.0 * p_bad)
    assert ev.fit_risk_calibration(score, bought, position, p_bad, 1.0)[3] == 2.0
    bought = rng.random(n) < _sigmoid(logit - 3.0 * p_bad)
    assert ev.fit_risk_calibration(score, bought, position, p_bad, 1.0)[3] == 0.0
    with pytest.raises(SchemaError):
        ev.fit_risk_calibration(score, bought, position, p_bad[:-1], 1.0)


def test_risk_term_lower_bound_drops_chance_risk_terms_and_falls_with_z(rng: np.random.Generator) -> None:
    # a few hundred purchases where conversion does not depend on the merchant's risk at all
    # (what a small platform's validation window holds): the estimate is often well above 0
    # by chance, its lower confidence bound far less often
    raw, lowered = [], []
    for _ in range(12):
        n = 3000
        p_bad = rng.uniform(0.0, 0.4, n)
        position = rng.integers(1, 11, n)
        score = rng.normal(size=n) - 2.0
        bought = rng.random(n) < _sigmoid(1.1 * score - 0.6 * np.log(position))
        info: dict[str, float] = {}
        fits = [ev.fit_risk_calibration(score, bought, position, p_bad, 2.0, z=z, info=info)[3] for z in (0.0, 1.0, 2.0)]
        assert fits[0] >= fits[1] >= fits[2] >= 0.0  # a larger z never keeps a larger risk term
        assert fits[0] == pytest.approx(min(max(info["risk_term_estimate"], 0.0), 3.0))
        raw.append(fits[0])
        lowered.append(ev.fit_risk_calibration(score, bought, position, p_bad, 2.0, z=ev.RISK_TERM_Z)[3])
    assert np.mean(lowered) < 0.5 * np.mean(raw) and np.mean(raw) > 0.2
    with pytest.raises(ConfigError):
        ev.fit_risk_calibration(score, bought, position, p_bad, 2.0, z=-1.0)


def test_fit_with_impression_trust_learns_the_risk_term_and_ranks_risky_merchants_higher(rng: np.random.Generator) -> None:
    n = 40000
    trust = rng.beta(2.6, 1.6, n)
    bad = rng.random(n) < _sigmoid(-2.0 - 0.8 * np.log(trust / (1 - trust)))
    position = rng.integers(1, 11, n)
    p_bad = _sigmoid(-2.0 - 0.8 * np.log(trust / (1 - trust)))
    score = rng.normal(size=n) - 3.0 * p_bad  # the model's score double-counts the risk
    purchased = rng.random(n) < _sigmoid(1.2 * score - 2.5 - 0.5 * np.log(position) + 2.0 * p_bad)
    plain = Policy().fit(score, purchased, position, trust, bad)
    corrected = Policy().fit(score, purchased, position, trust, bad, impression_trust=trust)
    assert plain.state is not None and corrected.state is not None
    assert plain.state.risk_term == 0.0
    # the estimate recovers the priced-in risk; the policy keeps its lower confidence bound
    info = corrected.fit_info_
    assert info["purchase_risk_term_estimate"] == pytest.approx(2.0, abs=0.5)
    assert corrected.state.risk_term == pytest.approx(
        info["purchase_risk_term_estimate"] - ev.RISK_TERM_Z * info["purchase_risk_term_se"], abs=1e-9)
    assert 0.0 < corrected.state.risk_term < info["purchase_risk_term_estimate"]
    assert info["purchase_risk_term"] == corrected.state.risk_term
    unshrunk = Policy().fit(score, purchased, position, trust, bad, impression_trust=trust, risk_term_z=0.0)
    assert unshrunk.state is not None and unshrunk.state.risk_term == pytest.approx(info["purchase_risk_term_estimate"])
    # what the correction buys: a risky candidate with a slightly better score now beats a
    # safe one where the uncorrected policy charged its risk twice
    rel, candidates = np.array([0.3, 0.0]), np.array([0.35, 0.95])
    assert corrected.score(rel, candidates)[0] / corrected.score(rel, candidates)[1] > \
        plain.score(rel, candidates)[0] / plain.score(rel, candidates)[1]
    # no cost charged, nothing to undo: bad_cost = 0 learns no risk term
    free = Policy(PolicyConfig(bad_cost=0.0)).fit(score, purchased, position, trust, bad, impression_trust=trust)
    assert free.state is not None and free.state.risk_term == 0.0
    # a state saved before the risk term existed loads with none; a negative one is refused
    old = {"purchase_calibration": [1.2, -2.5], "bad_model": [-2.0, -0.8]}
    assert PolicyState.from_dict(old).risk_term == 0.0
    with pytest.raises(ConfigError):
        PolicyState.from_dict({**old, "risk_term": -0.1})
    assert PolicyState.from_dict(corrected.state.to_dict()) == corrected.state


def test_bundle_round_trip_keeps_the_fitted_policy(fx: Any, tmp_path: Path) -> None:
    from trustfeed.ranker.bundle import load_bundle, save_bundle

    pipeline = fx.make_pipeline(fx.trained_parts(), balancer=False)
    pipeline.policy = FITTED
    requests = fx.trained_parts().requests[:10]
    before = pipeline.rank_many(requests, record=False)
    save_bundle(pipeline, tmp_path / "bundle")
    assert json.loads((tmp_path / "bundle" / "policy_state.json").read_text()) == STATE.to_dict()
    assert "bad_model" not in json.loads((tmp_path / "bundle" / "policy.json").read_text())
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.policy == FITTED
    after = loaded.rank_many(requests, record=False)
    assert [{**r, "model": None} for r in after] == before
    # the served score is the expected net value: a probability times a value <= 1
    scores = np.array([i["score"] for r in after for i in r["items"]])
    assert (scores <= 1.0).all() and (scores >= -FITTED.config.bad_cost).all()


def test_training_fits_the_policy_and_a_relative_balancer_target(trained: Any) -> None:
    from mlflow import MlflowClient

    from trustfeed.ranker.bundle import load_bundle

    params = MlflowClient(tracking_uri=trained.server.uri).get_run(trained.result.run_id).data.params
    served = load_bundle(trained.result.bundle_dir)
    policy, balancer = served.policy, served.balancer.config
    assert policy.config.combine == "expected_value" and policy.state is not None
    a, b = policy.state.purchase_calibration
    c0, c1 = policy.state.bad_model
    assert a > 0 and c1 <= 0
    assert (float(params["fitted.policy.purchase_a"]), float(params["fitted.policy.purchase_b"])) == (a, b)
    assert (float(params["fitted.policy.bad_c0"]), float(params["fitted.policy.bad_c1"])) == (c0, c1)
    # the cost of a bad order was measured from the training orders and the policy serves the
    # cost that was used (the configured one plus the measured loss when usable, else the
    # configured one, with why)
    assert policy.config.bad_cost == float(params["fitted.policy.bad_cost"])
    source = params["fitted.policy.bad_cost_source"]
    assert ((source.startswith("measured: configured 2 + ") and policy.config.bad_cost > 2.0)
            or (source.startswith("configured: ") and policy.config.bad_cost == 2.0))
    run_metrics = MlflowClient(tracking_uri=trained.server.uri).get_run(trained.result.run_id).data.metrics
    # logged either way; the tiny log (28 days, training part shorter) holds no order with a
    # full 14-day horizon on both sides, so the configured cost is kept and says why
    assert run_metrics["policy.bad_order_cost.bad_orders"] >= 0
    if run_metrics["policy.bad_order_cost.bad_orders"] == 0:
        assert run_metrics["policy.bad_order_cost.usable"] == 0.0 and source.startswith("configured: ")
    assert run_metrics["policy.bad_order_cost.horizon_days"] == trained.config.bad_cost_estimate.horizon_days
    # the logged intercept reproduces roughly the observed bad rate of the warm purchases
    assert 0.0 < float(params["fitted.policy.train_bad_rate"]) < 0.5
    # the balancer target is the configured share of the unbalanced ranking's Gini as the
    # balancer's ledger measures it after the validation requests, replayed from empty; on
    # this short window (less than a half-life) the ledger's decay barely moves it from the
    # window's own Gini
    ratio = trained.config.target_gini_ratio
    unbalanced = float(params["fitted.balancer.unbalanced_valid_gini"])
    ledger = float(params["fitted.balancer.unbalanced_ledger_gini"])
    assert 0.0 < unbalanced < 1.0 and ledger == pytest.approx(unbalanced, abs=0.03)
    assert balancer.target_gini == pytest.approx(ratio * ledger)
    assert float(params["fitted.balancer.target_gini"]) == pytest.approx(balancer.target_gini)
    # while its ledger fills the balancer aims at the same share of that ledger's Gini at each
    # size; the last point is the whole window, i.e. the target itself
    assert balancer.fill_requests is not None and balancer.fill_targets is not None
    assert list(balancer.fill_requests) == sorted(set(balancer.fill_requests))
    assert len(balancer.fill_targets) == len(balancer.fill_requests) >= 2
    assert balancer.fill_targets[-1] == pytest.approx(balancer.target_gini)
    assert [round(v, 4) for v in balancer.fill_targets] == json.loads(params["fitted.balancer.fill_targets"])


def test_bad_purchases_follow_the_contracts_bad_order_definition() -> None:
    import pandas as pd

    from trustfeed.features.events import validate_events
    from trustfeed.training.train import _bad_purchases

    t0 = pd.Timestamp("2026-01-10 12:00", tz="UTC")
    day = pd.Timedelta(days=1)
    orders = ["o_ok", "o_quality", "o_late_case", "o_low_review", "o_logistics", "o_cancelled"]
    n = len(orders)
    tables = {
        "merchants": pd.DataFrame({"merchant_id": ["m1"], "registered_at": [t0 - 30 * day]}),
        "orders": pd.DataFrame({
            "order_id": orders, "user_id": [f"u{i}" for i in range(n)], "merchant_id": "m1",
            "created_at": t0, "amount": 10.0, "status": ["paid"] * (n - 1) + ["cancelled"],
        }),
        "impressions": pd.DataFrame({
            "request_id": [f"r{i}" for i in range(n)], "user_id": [f"u{i}" for i in range(n)], "ts": t0,
            "stream_id": "s1", "creator_id": "c1", "merchant_id": "m1", "position": 1,
            "clicked": True, "purchased": True, "order_id": orders,
        }),
        "after_sales": pd.DataFrame({
            "case_id": ["k1", "k2", "k3", "k4"], "order_id": ["o_quality", "o_late_case", "o_logistics", "o_cancelled"],
            "opened_at": [t0 + 2 * day, t0 + 60 * day, t0 + 2 * day, t0 + 2 * day], "type": "return",
            "reason": ["quality", "counterfeit", "logistics", "quality"],
        }),
        "reviews": pd.DataFrame({"review_id": ["v1"], "order_id": ["o_low_review"], "user_id": ["u3"],
                                 "created_at": [t0 + 3 * day], "rating": [2]}),
    }
    events = validate_events(tables)
    bad = _bad_purchases(events["impressions"], events, horizon_days=30.0)
    # a quality case or a 1-2 star review is bad; a case after the horizon, a logistics case
    # and a cancelled order are not
    assert bad.tolist() == [False, True, False, True, False, False]


def test_fit_with_a_given_bad_model_keeps_it(rng: np.random.Generator) -> None:
    n = 4000
    score, position = rng.normal(size=n), rng.integers(1, 11, n)
    purchased = rng.random(n) < _sigmoid(1.2 * score - 2.5 - 0.5 * np.log(position))
    trust, bad = rng.beta(2.6, 1.6, 500), rng.random(500) < 0.1
    policy = Policy().fit(score, purchased, position, trust, bad, bad_model=(0.0, -1.0))
    assert policy.state is not None and policy.state.bad_model == (0.0, -1.0)
    with pytest.raises(ConfigError):
        Policy().fit(score, purchased, position, trust, bad, bad_model=(0.0, 0.5))  # would rise with trust


# ----------------------------------------------------------------------------- risk at a credible bound


@settings(max_examples=80, deadline=None)
@given(p=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12), orders=st.floats(0.0, 5000.0),
       level=st.floats(0.5, 0.99), prior_orders=st.floats(1.0, 200.0), prior_rate=st.floats(0.005, 0.5))
def test_the_credible_bound_rises_with_the_point_estimate(p: list[float], orders: float, level: float,
                                                           prior_orders: float, prior_rate: float) -> None:
    ordered = np.sort(np.array(p))
    bound = ev.bad_probability_bound(ordered, np.full(ordered.size, orders), level, prior_orders, prior_rate)
    assert ((bound >= 0) & (bound <= 1)).all()
    assert (np.diff(bound) >= -1e-12).all()


def test_the_credible_bound_prices_a_thin_record_above_a_long_one() -> None:
    p = np.full(4, 0.02)
    orders = np.array([0.0, 10.0, 100.0, 100_000.0])
    bound = ev.bad_probability_bound(p, orders, 0.8, 20.0, 0.08)
    assert (np.diff(bound) < 0).all()  # a clean-looking record counts for more the longer it is
    assert bound[-1] == pytest.approx(0.02, abs=0.002)  # a long record: its own rate
    assert ev.bad_probability_bound(p, np.full(4, np.nan), 0.8, 20.0, 0.08).tolist() == p.tolist()  # not known
    # the posterior median sits below the 80% bound
    assert (ev.bad_probability_bound(p, orders, 0.5, 20.0, 0.08) < bound).all()


@settings(max_examples=80, deadline=None)
@given(rel=st.lists(st.floats(-6, 6, allow_nan=False), min_size=2, max_size=12), data=st.data(),
       bad_cost=st.floats(0.1, 10.0), c1=st.floats(-3.0, 0.0), risk_term=st.floats(0.0, 30.0),
       level=st.floats(0.5, 0.99))
def test_risk_at_the_credible_bound_never_lowers_a_score_as_trust_rises(
    rel: list[float], data: st.DataObject, bad_cost: float, c1: float, risk_term: float, level: float
) -> None:
    n = len(rel)
    trust = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    orders = np.array(data.draw(st.lists(st.floats(0.0, 1000.0), min_size=n, max_size=n)))
    i = data.draw(st.integers(0, n - 1))
    raised = trust.copy()
    raised[i] = data.draw(st.floats(trust[i], 1.0))
    policy = Policy(PolicyConfig(bad_cost=bad_cost, risk_bound_level=level),
                    PolicyState((1.0, -2.0), (-1.5, c1), risk_term, bad_rate=0.08))
    assert policy.score(rel, raised, orders=orders)[i] >= policy.score(rel, trust, orders=orders)[i] - 1e-12


def test_risk_bound_needs_the_level_the_prior_and_the_records() -> None:
    rel, trust, orders = [1.0, 1.0], [0.99, 0.99], [2.0, 5000.0]
    state = PolicyState((1.0, -2.0), (0.0, -1.0), 0.0, bad_rate=0.08)
    bounded = Policy(PolicyConfig(risk_bound_level=0.8), state)
    thin, long = bounded.score(rel, trust, orders=orders)
    assert thin < long  # the same clean-looking trust: the thin record is priced riskier
    point = Policy(PolicyConfig(), state).score(rel, trust, orders=orders)
    assert point[0] == point[1] and long <= point[1]
    # no prior recorded (a state saved before it existed), or no records given: the point estimate
    assert Policy(PolicyConfig(risk_bound_level=0.8), PolicyState((1.0, -2.0), (0.0, -1.0))).score(
        rel, trust, orders=orders).tolist() == point.tolist()
    assert bounded.score(rel, trust).tolist() == point.tolist()
    assert PolicyState.from_dict(state.to_dict()) == state
    assert "bad_rate" not in PolicyState((1.0, -2.0), (0.0, -1.0)).to_dict()
    for bad in ({"risk_bound_level": 0.3}, {"risk_bound_level": 1.0}, {"risk_prior_orders": 0.0}):
        with pytest.raises(ConfigError):
            PolicyConfig.from_dict({**PolicyConfig().to_dict(), **bad})
    with pytest.raises(ConfigError, match="bad_rate"):
        PolicyState((1.0, -2.0), (0.0, -1.0), bad_rate=1.5)
