"""The cost of a bad order, measured from the event logs alone.

A bad order costs more than the order itself: the buyer it disappointed orders less
afterwards. This module measures that from the orders table and the orders' outcomes, as any
platform can (no simulator, no experiment):

1. every paid order whose outcome is known (delivered at least ``outcome_days`` before the
   log's end: an order still within its after-sales and review window, or never seen
   delivered, would read as good whatever happens to it) and that has ``horizon_days`` of
   log on both sides is an *index order*; it is bad or good by the project's one definition
   of a bad order (an after-sales case for quality, not_as_described or counterfeit, or a
   1-2 star review);
2. for each index order, the change in the buyer's paid orders from the ``horizon_days``
   before it to the ``horizon_days`` after it (``orders after - orders before``);
3. an event study: that change after bad orders against after good orders of the same buyer
   segment and calendar period (a regression of the change on the bad flag with a
   segment x period fixed effect, so a season or the platform's growth cancels out). The
   "before" window is untouched by the order, so a bad order that lowers its buyer's order
   rate for good is seen in full; comparing a buyer's orders after their bad orders with
   after their *good* ones is not enough there, because the later good orders come at the
   lowered rate too and the loss cancels. The segment (light to heavy) is the buyer's pace
   of paid orders *before* the "before" window, scaled to the whole log: heavy buyers meet
   bad merchants more often and would order more anyway, and a pace that counted the
   windows being compared (or the orders after) would select on their chance. One slope per
   segment, averaged with the segments' bad orders as weights: ``lost_orders``, the orders
   a bad order costs within the horizon, with a buyer-clustered standard error;
4. turned into good orders: each lost order would have been good with probability
   ``1 - r`` and bad with probability ``r`` (``r``: the bad-order rate), and a bad order
   costs ``cost`` itself, so ``cost = lost_orders x ((1 - r) - r x cost)``, i.e.::

       cost = lost_orders x (1 - r) / (1 + lost_orders x r)

   (``BadOrderCost.cost``: what the lost orders are worth, beyond the order itself).

The cost the policy charges (:meth:`BadOrderCost.policy_cost`) adds this to the cost of the
bad order itself, which the platform states (the policy's configured ``bad_cost``, 2: net
value = good - 2 x bad). A bad order then costs ``c`` = its own ``bad_cost`` plus the orders it
loses, each worth ``(1 - r) - r x c``::

    c = (bad_cost + lost_orders x (1 - r)) / (1 + lost_orders x r)

which is ``bad_cost`` when nothing is lost and grows with the loss (while a lost order is worth
something, ``r < 1 / (1 + bad_cost)``). The measured loss never replaces the configured cost: a
platform whose buyers walk away after a bad order prices risk higher, not lower.

The estimate is *usable* when there are at least ``min_bad_orders`` bad index orders and the
95% interval of ``lost_orders`` lies above zero; otherwise the caller keeps its configured
cost (the policy's ``bad_cost``, 2 by default) and the result says why. Assumptions (stated
because a real log cannot check them): a good order leaves the buyer's later order rate as it
was (so the difference with a good order is the loss against no order at all); within a
segment and period, whether an order went bad is unrelated to how the buyer's order rate was
about to change anyway; the effect beyond ``horizon_days`` is not counted (a lower bound when
buyers stay away longer). On generated logs where a bad order keeps its buyer away for a set
number of days, or lowers the buyer's order rate for good by a set share
(``tests/test_bad_order_cost.py``), the estimate lands within 10% of the true loss across
seeds, and near 0 (not usable) when a bad order changes nothing.

Examples
--------
Buyers who order every other day whatever happens: a bad order costs nothing measurable, so
the configured cost stays:

>>> import numpy as np, pandas as pd
>>> day = pd.Timedelta(days=1)
>>> t0 = pd.Timestamp("2026-01-01", tz="UTC")
>>> users = np.repeat(np.arange(400), 30).astype(str)
>>> times = pd.Series(t0 + np.tile(np.arange(30), 400) * 2 * day)
>>> bad = np.random.default_rng(0).random(users.size) < 0.1
>>> estimate = estimate_from_orders(users, times, bad, start=t0, end=t0 + 60 * day)
>>> abs(estimate.lost_orders) < 0.05, estimate.usable, estimate.policy_cost(2.0)
(True, False, 2.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..features.config import Config, Constraints, Integer, Items, Real
from ..features.errors import SchemaError
from ..features.events import TimeLike, to_utc

__all__ = ["BadOrderCostConfig", "BadOrderCost", "estimate_from_orders", "estimate_bad_order_cost", "outcome_known"]

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class BadOrderCostConfig(Config):
    """How the cost of a bad order is measured (see the module docstring).

    Parameters
    ----------
    horizon_days
        Days after an order over which the buyer's later orders are counted (``> 0``).
    outcome_days
        Days after its delivery within which an order's after-sales case or review arrives:
        only orders delivered at least this long before the log's end count as good or bad
        (``>= 0``; 7: the no-reason return and review windows).
    segment_edges
        Upper bounds (exclusive) of the buyer segments by their pace of paid orders before an
        order, scaled to the whole log:
        ``(5, 10, 20)`` gives 0-4, 5-9, 10-19 and 20+ orders (increasing).
    min_bad_orders
        Bad index orders needed for a usable estimate (``>= 1``).
    max_cost
        The estimate is clipped to ``[0, max_cost]`` good orders (``> 0``).
    """

    horizon_days: float = 14.0
    outcome_days: float = 7.0
    segment_edges: tuple[int, ...] = (5, 10, 20)
    min_bad_orders: int = 50
    max_cost: float = 10.0

    constraints: ClassVar[Constraints] = {
        "horizon_days": Real(0, strict_low=True),
        "outcome_days": Real(0),
        "segment_edges": Items(Integer(low=1), increasing=True),
        "min_bad_orders": Integer(low=1),
        "max_cost": Real(0, strict_low=True),
    }


@dataclass(frozen=True)
class BadOrderCost:
    """The measured cost of a bad order.

    Attributes
    ----------
    cost, cost_low, cost_high
        The cost in good orders and its 95% interval (NaN when nothing could be measured).
    lost_orders, lost_orders_se
        Orders a bad order costs within the horizon, and its standard error.
    bad_rate
        Bad share of the index orders.
    bad_orders, good_orders
        Index orders of each kind.
    usable
        Whether the policy should add the measured loss to its cost (see the module
        docstring); ``reason`` says why not.
    segments
        Per activity segment: ``segment``, ``good_orders``, ``bad_orders``,
        ``orders_after_good``, ``orders_after_bad``, ``lost_orders``.
    max_cost
        The cap of the measured part of the cost (:attr:`BadOrderCostConfig.max_cost`).
    """

    cost: float
    cost_low: float
    cost_high: float
    lost_orders: float
    lost_orders_se: float
    bad_rate: float
    bad_orders: int
    good_orders: int
    horizon_days: float
    usable: bool
    reason: str
    segments: pd.DataFrame = field(repr=False, compare=False)
    max_cost: float = 10.0

    def policy_cost(self, configured: float) -> float:
        """The cost of a bad order the policy charges, in good orders.

        ``configured`` is the platform's cost of the bad order itself (the policy's
        ``bad_cost``). Usable, the measured loss of later orders is added to it
        (``(configured + lost (1 - r)) / (1 + lost r)``, see the module docstring); otherwise
        ``configured`` as it is.

        Examples
        --------
        A bad order that loses 1.25 later orders, on a platform where 5% of orders go bad:

        >>> measured = BadOrderCost(1.12, 0.6, 1.6, 1.25, 0.25, 0.05, 40, 760, 14.0, True, "measured", pd.DataFrame())
        >>> measured.policy_cost(2.0), round(measured.policy_cost(0.0), 2)
        (3.0, 1.12)
        >>> BadOrderCost(0.0, 0.0, 0.4, 0.05, 0.1, 0.05, 40, 760, 14.0, False, "no measurable loss", pd.DataFrame()).policy_cost(2.0)
        2.0
        """
        if not self.usable:
            return float(configured)
        return _total_cost(self.lost_orders, self.bad_rate, float(configured), self.max_cost)

    def to_metrics(self, prefix: str = "bad_order_cost.") -> dict[str, float]:
        """Numbers for MLflow (NaN left out by the logger)."""
        values = {
            "cost": self.cost, "cost_low": self.cost_low, "cost_high": self.cost_high,
            "lost_orders": self.lost_orders, "lost_orders_se": self.lost_orders_se, "bad_rate": self.bad_rate,
            "bad_orders": float(self.bad_orders), "good_orders": float(self.good_orders),
            "horizon_days": float(self.horizon_days), "usable": float(self.usable),
        }
        return {prefix + k: float(v) for k, v in values.items()}


def _total_cost(lost: float, bad_rate: float, immediate: float, cap: float) -> float:
    """``c = immediate + lost x ((1 - r) - r c)``: the order's own cost plus the orders it loses
    (each good with probability ``1 - r``, bad and costing ``c`` itself with ``r``); the lost
    orders' part is capped at ``cap``."""
    if not math.isfinite(lost):
        return float("nan")
    lost = max(lost, 0.0)
    return float(min((immediate + lost * (1.0 - bad_rate)) / (1.0 + lost * bad_rate), immediate + cap))


def _cost(lost: float, bad_rate: float, cap: float) -> float:
    return _total_cost(lost, bad_rate, 0.0, cap)


def estimate_from_orders(
    user_id: Any,
    created_at: Any,
    bad: Any,
    *,
    start: TimeLike,
    end: TimeLike,
    config: BadOrderCostConfig | None = None,
    known: Any = None,
) -> BadOrderCost:
    """The cost of a bad order from paid orders and their outcomes (the core of :func:`estimate_bad_order_cost`).

    Parameters
    ----------
    user_id, created_at, bad
        One entry per paid order: the buyer, when it was placed (UTC), whether it went bad.
    start, end
        The span the log covers: index orders need a full horizon on both sides inside it.
    config
        :class:`BadOrderCostConfig` (``None``: defaults).
    known
        Per order, whether its outcome window has closed (``None``: every order's has); only
        those are index orders, the others still count as the buyer's orders.
    """
    config = config or BadOrderCostConfig()
    users = pd.factorize(pd.Series(np.asarray(user_id, dtype=object)), sort=False)[0].astype(np.int64)
    stamps = pd.DatetimeIndex(pd.to_datetime(pd.Series(created_at), utc=True)).as_unit("ns")
    times = stamps.asi8.astype(np.int64)
    bad_flags = np.asarray(bad, dtype=bool)
    known_flags = np.ones(bad_flags.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    if not (users.shape == times.shape == bad_flags.shape == known_flags.shape):
        raise SchemaError("orders", "user_id/created_at/bad", "equal lengths",
                          f"{users.size}, {times.size}, {bad_flags.size} and {known_flags.size}")
    if (users < 0).any() or (times == np.iinfo(np.int64).min).any():
        raise SchemaError("orders", "user_id/created_at", "no missing buyer or time", "missing values")
    start_ns, end_ns = (to_utc(t).as_unit("ns").value for t in (start, end))
    horizon = int(round(config.horizon_days * 86_400e9))

    # one sorted key per order: buyer first, then time (seconds from the start keep it in int64)
    seconds = (times - start_ns) // 1_000_000_000
    step = horizon // 1_000_000_000
    span = int(max(seconds.max(initial=0), (end_ns - start_ns) // 1_000_000_000)) - int(min(seconds.min(initial=0), 0)) + 2 * step + 2
    key = users * span + (seconds - int(min(seconds.min(initial=0), 0)) + step + 1)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    at = np.searchsorted(sorted_key, sorted_key, side="left")
    # the buyer's orders strictly after each order within the horizon, and in the horizon before it
    after = np.searchsorted(sorted_key, sorted_key + step, side="right") - np.searchsorted(sorted_key, sorted_key, side="right")
    before_ = at - np.searchsorted(sorted_key, sorted_key - step, side="left")
    # the buyer's orders before this one since the log's start (their pace before the order)
    first = np.searchsorted(sorted_key, users[order] * span, side="left")
    earlier = at - first
    orders_after, orders_before, orders_earlier = (np.empty_like(after) for _ in range(3))
    orders_after[order], orders_before[order], orders_earlier[order] = after, before_, earlier

    index = known_flags & (times - horizon >= start_ns) & (times + horizon <= end_ns)
    table = pd.DataFrame({"user": users[index], "bad": bad_flags[index].astype(np.float64),
                          "after": orders_after[index].astype(np.float64),
                          "change": (orders_after[index] - orders_before[index]).astype(np.float64)})
    # the buyer's segment, from their pace before the window the change is measured against
    # (neither the bad order nor the chance of the "before" count decides it): the buyer's
    # orders before ``t - horizon``, scaled to the whole log (at least one horizon of history)
    elapsed = np.maximum(times[index] - horizon - start_ns, horizon) / max(end_ns - start_ns, 1)
    pace = (orders_earlier[index] - orders_before[index]) / elapsed
    table["segment"] = np.searchsorted(np.asarray(config.segment_edges), pace, side="right")
    # bad against good index orders of the same segment and calendar period (horizon-wide bins):
    # the change in the buyer's orders from the horizon before to the horizon after the order
    period = (times[index] - start_ns) // max(horizon, 1)
    table["stratum"] = table["segment"].to_numpy() * (int(period.max(initial=0)) + 1) + period
    by_stratum = table.groupby("stratum")
    table["bad_c"] = table["bad"] - by_stratum["bad"].transform("mean")
    table["change_c"] = table["change"] - by_stratum["change"].transform("mean")
    table["xy"] = table["bad_c"] * table["change_c"]
    table["xx"] = table["bad_c"] ** 2
    labels = _segment_labels(config.segment_edges)
    rows = []
    for seg in range(len(labels)):
        part = table.loc[table["segment"].to_numpy() == seg]
        xx = float(part["xx"].sum())
        slope = float(part["xy"].sum()) / xx if xx > 0 else float("nan")
        if xx > 0:
            residual = part["change_c"] - slope * part["bad_c"]
            # buyer-clustered (sandwich) variance: a buyer's orders are not independent
            score = (part["bad_c"] * residual).groupby(part["user"]).sum()
            variance = float((score**2).sum()) / xx**2
        else:
            variance = float("nan")
        bad_part = part["bad"].to_numpy() > 0.5
        rows.append({"segment": labels[seg], "good_orders": int((~bad_part).sum()), "bad_orders": int(bad_part.sum()),
                     "orders_after_good": float(part["after"][~bad_part].mean()) if (~bad_part).any() else float("nan"),
                     "orders_after_bad": float(part["after"][bad_part].mean()) if bad_part.any() else float("nan"),
                     "lost_orders": -slope, "variance": variance})
    segments = pd.DataFrame(rows)
    usable_segments = segments["lost_orders"].notna() & segments["variance"].notna()
    weights = segments["bad_orders"].where(usable_segments, 0).to_numpy(dtype=np.float64)
    n_bad_total, n_good_total = int((table["bad"] > 0.5).sum()), int((table["bad"] < 0.5).sum())
    bad_rate = n_bad_total / len(table) if len(table) else float("nan")
    if weights.sum() == 0:
        lost, se = float("nan"), float("nan")
    else:
        w = weights / weights.sum()
        lost = float(np.dot(w, segments["lost_orders"].fillna(0.0).to_numpy(dtype=np.float64)))
        se = float(math.sqrt(np.dot(w * w, segments["variance"].fillna(0.0).to_numpy(dtype=np.float64))))
    low, high = lost - _Z95 * se, lost + _Z95 * se
    if n_bad_total < config.min_bad_orders:
        usable, reason = False, f"only {n_bad_total} bad orders with a full horizon on both sides (need {config.min_bad_orders})"
    elif not math.isfinite(lost):
        usable, reason = False, "no buyer segment holds both good and bad orders"
    elif not low > 0:
        usable, reason = False, (f"no measurable loss: {lost:.3f} orders lost after a bad order "
                                 f"(95% interval {low:.3f} to {high:.3f} includes 0)")
    else:
        usable, reason = True, "measured"
    return BadOrderCost(
        cost=_cost(lost, bad_rate, config.max_cost), cost_low=_cost(low, bad_rate, config.max_cost),
        cost_high=_cost(high, bad_rate, config.max_cost), lost_orders=lost, lost_orders_se=se,
        bad_rate=float(bad_rate), bad_orders=n_bad_total, good_orders=n_good_total,
        horizon_days=float(config.horizon_days), usable=usable, reason=reason,
        segments=segments.drop(columns=["variance"]), max_cost=float(config.max_cost),
    )


def _segment_labels(edges: tuple[int, ...]) -> list[str]:
    bounds = [0, *edges]
    labels = []
    for low, high in zip(bounds, [*edges, None], strict=True):
        if high is None:
            labels.append(f"{low}+")
        elif high - low == 1:
            labels.append(str(low))
        else:
            labels.append(f"{low}-{high - 1}")
    return labels


def estimate_bad_order_cost(events: Any, config: BadOrderCostConfig | None = None, *, end: TimeLike | None = None) -> BadOrderCost:
    """The cost of a bad order measured from a validated event log (see the module docstring).

    Paid orders (cancelled ones left out) and their outcomes as the log knows them. The log
    spans from its first order to ``end`` (``None``: its last order); a log cut with
    ``EventLog.before(t)`` should pass ``end=t``.
    """
    from ..features.outcomes import order_outcomes, went_bad

    orders = events["orders"]
    if len(orders) == 0:
        raise SchemaError("orders", None, "at least one order to measure the cost of a bad order", "none")
    outcomes = order_outcomes(events)
    outcomes = outcomes.loc[outcomes["in_orders"].to_numpy(dtype=bool)].reset_index(drop=True)
    paid = ~outcomes["cancelled"].to_numpy(dtype=bool)
    created = pd.to_datetime(orders["created_at"], utc=True)
    end_time = created.max() if end is None else to_utc(end)
    return estimate_from_orders(
        outcomes["user_id"].to_numpy(dtype=object)[paid],
        outcomes["created_at"][paid].reset_index(drop=True),
        went_bad(outcomes)[paid],
        start=created.min(),
        end=end_time,
        config=config,
        known=outcome_known(orders, end_time, (config or BadOrderCostConfig()).outcome_days)[paid],
    )


def outcome_known(orders: pd.DataFrame, end: TimeLike, outcome_days: float) -> np.ndarray:
    """Per order, whether its outcome window closed before ``end``: delivered at least
    ``outcome_days`` before it (an order the log never saw delivered has no known outcome).
    A log that records no delivery at all falls back to the order's placement time.

    >>> orders = pd.DataFrame({"created_at": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-08"], utc=True),
    ...                        "delivered_at": pd.to_datetime(["2026-01-03", None, "2026-01-10"], utc=True)})
    >>> outcome_known(orders, "2026-01-12", 7.0).tolist()
    [True, False, False]
    """
    created = pd.to_datetime(orders["created_at"], utc=True)
    delivered = pd.to_datetime(orders["delivered_at"], utc=True) if "delivered_at" in orders else None
    reference = delivered if delivered is not None and bool(delivered.notna().any()) else created
    closes = reference + pd.Timedelta(days=outcome_days)
    return (closes <= to_utc(end)).fillna(False).to_numpy(dtype=bool)
