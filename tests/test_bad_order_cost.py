"""The cost of a bad order measured from order logs: it recovers a known effect and refuses noise."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

from hypothesis import given
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.training import bad_order_cost as module
from trustfeed.training.bad_order_cost import BadOrderCostConfig, estimate_from_orders

START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 120
HORIZON = 14.0


def _order_log(rng: np.random.Generator, pause_days: float, n_users: int = 2500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Buyers ordering at their own rate; a bad order keeps its buyer away for ``pause_days``.

    Heavy buyers meet bad merchants three times as often, so a comparison across buyers is
    confounded (a naive one finds bad orders followed by *more* orders). The draws after an
    order do not depend on its outcome (common random numbers), so the true loss of one bad
    order is exactly the buyer's orders in ``(t + horizon, t + horizon + pause]``: the ones
    the pause pushed out of the window.
    """
    rate = rng.gamma(2.0, 0.08, n_users)
    p_bad = np.where(rate > np.median(rate), 0.12, 0.04)
    users, times, bad = [], [], []
    for u in range(n_users):
        t = rng.exponential(1 / rate[u])
        while t < DAYS:
            went_bad = rng.random() < p_bad[u]
            users.append(u)
            times.append(t)
            bad.append(went_bad)
            t += rng.exponential(1 / rate[u]) + (pause_days if went_bad else 0.0)
    return np.array(users), np.array(times), np.array(bad)


def _true_loss(users: np.ndarray, times: np.ndarray, bad: np.ndarray, pause_days: float) -> float:
    key = users * 1000.0 + times
    sorted_key = np.sort(key)
    index = bad & (times >= HORIZON) & (times + HORIZON + pause_days <= DAYS)
    pushed_out = (np.searchsorted(sorted_key, key[index] + HORIZON + pause_days, side="right")
                  - np.searchsorted(sorted_key, key[index] + HORIZON, side="right"))
    return float(pushed_out.mean())


def _estimate(users: np.ndarray, times: np.ndarray, bad: np.ndarray, **config: object) -> module.BadOrderCost:
    created = pd.Series(START + pd.to_timedelta(times, unit="D"))
    return estimate_from_orders(users.astype(str), created, bad, start=START, end=START + pd.Timedelta(days=DAYS),
                                config=BadOrderCostConfig(horizon_days=HORIZON, **config))  # type: ignore[arg-type]


def test_doctests() -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("pause_days", [4.0, 9.0])
def test_recovers_a_known_cost(rng: np.random.Generator, pause_days: float) -> None:
    users, times, bad = _order_log(rng, pause_days)
    truth = _true_loss(users, times, bad, pause_days)
    estimate = _estimate(users, times, bad)
    assert estimate.usable and estimate.reason == "measured"
    # a known, documented understatement: a good order placed shortly before a bad one shares
    # its pause, so the good side of the comparison is lowered too (10-20% on this world
    # across seeds); the estimate errs towards the configured cost, never above the truth
    assert 0.7 * truth < estimate.lost_orders < 1.05 * truth
    r = estimate.bad_rate
    true_cost = truth * (1 - r) / (1 + truth * r)
    assert 0.7 * true_cost < estimate.cost < 1.05 * true_cost
    assert estimate.cost_low < estimate.cost < estimate.cost_high
    # the policy charges the bad order's own cost plus the orders it loses, never less
    assert estimate.policy_cost(0.0) == pytest.approx(estimate.cost)
    assert estimate.policy_cost(2.0) == pytest.approx((2.0 + estimate.lost_orders * (1 - r)) / (1 + estimate.lost_orders * r))
    assert estimate.policy_cost(2.0) > 2.0 + 0.5 * estimate.cost
    # per segment: heavier buyers lose more orders to a pause (they would have ordered more)
    lost = estimate.segments.set_index("segment")["lost_orders"]
    assert lost.iloc[-1] > lost.iloc[1] > 0


def test_no_effect_is_not_usable_and_falls_back(rng: np.random.Generator) -> None:
    users, times, bad = _order_log(rng, 0.0)
    # the confounding is real: pooled over buyers, bad orders are followed by more orders
    created = START + pd.to_timedelta(times, unit="D")
    assert bad.mean() > 0.05 and len(created) > 1000
    estimate = _estimate(users, times, bad)
    assert not estimate.usable and "no measurable loss" in estimate.reason
    assert estimate.cost_low <= 0.05 and estimate.policy_cost(2.0) == 2.0


def test_too_few_bad_orders_and_bad_input(rng: np.random.Generator) -> None:
    users, times, bad = _order_log(rng, 5.0, n_users=150)
    estimate = _estimate(users, times, bad, min_bad_orders=10_000)
    assert not estimate.usable and "bad orders with a full horizon" in estimate.reason
    assert estimate.policy_cost(2.0) == 2.0
    with pytest.raises(SchemaError, match="equal lengths"):
        estimate_from_orders(["u1"], pd.Series([START]), [True, False], start=START, end=START)
    for bad_config in ({"horizon_days": 0}, {"segment_edges": (5, 3)}, {"min_bad_orders": 0}, {"max_cost": -1.0}):
        with pytest.raises(ConfigError):
            BadOrderCostConfig(**bad_config)  # type: ignore[arg-type]
    config = BadOrderCostConfig(horizon_days=7.0, segment_edges=(2, 4))
    assert BadOrderCostConfig.from_dict(config.to_dict()) == config


@given(lost=st.floats(0.0, 20.0), more=st.floats(0.0, 5.0), bad_rate=st.floats(0.0, 0.3),
       configured=st.floats(0.0, 2.3))
def test_policy_cost_adds_the_measured_loss_to_the_configured_cost(lost: float, more: float, bad_rate: float,
                                                                     configured: float) -> None:
    """The measured loss is added to the bad order's own cost: no loss leaves the configured
    cost, more lost orders (each worth something: r < 1 / (1 + cost)) never lower it, and an
    unusable estimate changes nothing."""
    def measured(lost_orders: float, usable: bool = True) -> module.BadOrderCost:
        return module.BadOrderCost(float("nan"), float("nan"), float("nan"), lost_orders, 0.1, bad_rate, 100, 900, 14.0,
                                   usable, "measured" if usable else "no measurable loss", pd.DataFrame())

    assert measured(0.0).policy_cost(configured) == pytest.approx(configured)
    assert measured(lost, usable=False).policy_cost(configured) == configured
    low, high = measured(lost).policy_cost(configured), measured(lost + more).policy_cost(configured)
    assert configured - 1e-9 <= low <= high + 1e-9
    assert high <= configured + 10.0 + 1e-9  # the measured part is capped at max_cost
