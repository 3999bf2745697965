"""Cross-check: the cost of a bad order measured from the logs against the world's own.

The closed-loop world sets how buyers react to a bad order (``DynamicsConfig``: a bad order
multiplies the buyer's platform trust by ``1 - bad_order_trust_loss``; trust drives visits and
purchases). Its own estimate of what a bad order costs is a counterfactual: the same world,
the same random numbers, once with the reaction and once without (``bad_order_trust_loss=0``);
the orders the reacting world lost, divided by its bad orders, are the orders one bad order
cost over the rollout (after-effects and cascades included); ``world_cost`` turns the net
value the reaction lost into the full cost of a bad order (its own 2 plus the loss), which
``log_policy_cost`` (:meth:`~trustfeed.training.bad_order_cost.BadOrderCost.policy_cost`, when
usable) should match. The log estimate is
:func:`trustfeed.training.bad_order_cost.estimate_bad_order_cost` on the reacting world's event
log, as a platform would run it: no simulator, only orders and their outcomes; ``rollout_log_*``
is the same estimate on the orders placed since the rollout began (the simulated window's last
orders never get their outcomes drawn, see ``_world_period``).

A dense platform (few buyers who open the feed often) gives the estimator enough orders per
buyer; the feed is shown in retrieval order (no model: the cross-check is about the estimator,
not about a ranker). Creator supply and merchant exits are off so that the two worlds differ
only through the buyers' reaction.

Usage::

    python benchmarks/bench_bad_order_cost.py [--days 28] [--horizon 7] [--losses 0 0.3 0.6 0.9] [--seeds 2] [--risky]

``--risky``: the platform is simulated with :data:`trustfeed.training.simulate.RISKY` (about one
order in five goes wrong), so the log holds about twice the bad orders.

Measured figures are in docs/rollout.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd


def _net(served: pd.DataFrame) -> float:
    return float(served["good_orders"].sum()) - 2.0 * float(served["bad_orders"].sum())


def _world_period(world: object, start: pd.Timestamp, config: object) -> object:
    """The log estimate on the orders placed since the rollout began (``start``) only.

    The simulated window before it ends with orders whose after-sales and reviews fall after
    the window and were never drawn (bad-order rate 0.01 against 0.08-0.09 in the world); the
    estimator leaves out orders not delivered at least ``outcome_days`` before the log's end,
    which catches the ones never delivered in that window, not the ones delivered in its last
    days, so this is the estimate without that stretch at all.
    """
    from trustfeed.features.outcomes import order_outcomes, went_bad
    from trustfeed.training.bad_order_cost import estimate_from_orders, outcome_known

    events = world.events()  # type: ignore[attr-defined]
    outcomes = order_outcomes(events)
    outcomes = outcomes.loc[outcomes["in_orders"].to_numpy(dtype=bool)].reset_index(drop=True)
    keep = ~outcomes["cancelled"].to_numpy(dtype=bool) & (outcomes["created_at"] >= start).to_numpy(dtype=bool)
    known = outcome_known(events["orders"], world.now, config.outcome_days)  # type: ignore[attr-defined]
    return estimate_from_orders(outcomes["user_id"].to_numpy(dtype=object)[keep],
                                outcomes["created_at"][keep].reset_index(drop=True), went_bad(outcomes)[keep],
                                start=start, end=world.now, config=config, known=known[keep])  # type: ignore[attr-defined, arg-type]


def _serve(base: object, loss: float, seed: int, days: int) -> tuple[object, pd.DataFrame]:
    from trustfeed.training.world import DynamicsConfig, World

    dynamics = replace(DynamicsConfig(), bad_order_trust_loss=loss, creator_supply=False, merchant_exit=False)
    world = World(base, seed=seed, dynamics=dynamics)  # type: ignore[arg-type]
    rows = []
    for _ in range(days):
        day = world.next_requests()
        outcome = world.serve(day, [{"request_id": r["request_id"], "items": r["candidates"]} for r in day.requests])
        rows.append(outcome.metrics)
    return world, pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=28, help="rollout days")
    parser.add_argument("--horizon", type=float, default=7.0, help="the estimator's horizon (days)")
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--requests-per-day", type=int, default=600)
    parser.add_argument("--risky", action="store_true", help="simulate the 'risky' world setting (simulate.RISKY)")
    args = parser.parse_args()

    from trustfeed.training.bad_order_cost import BadOrderCostConfig, estimate_bad_order_cost
    from trustfeed.training.simulate import RISKY, SimConfig, simulate, write_dataset
    from trustfeed.training.world import WorldBase

    config = BadOrderCostConfig(horizon_days=args.horizon)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events"
        write_dataset(simulate(SimConfig(seed=3, merchants=20, days=7, users=args.users,
                                         requests_per_day=args.requests_per_day, orders_per_merchant_day=0.1,
                                         **(RISKY if args.risky else {}))), events)
        base = WorldBase.from_events(events)
        for seed in range(args.seeds):
            started = time.perf_counter()
            _, unharmed = _serve(base, 0.0, seed, args.days)
            for loss in args.losses:
                world, served = _serve(base, loss, seed, args.days)
                estimate = estimate_bad_order_cost(world.events(), config, end=world.now)  # type: ignore[attr-defined]
                bad = float(served["bad_orders"].sum())
                since_start = _world_period(world, base.start, config)
                rows.append({
                    "seed": seed, "trust_loss": loss, "bad_orders": bad,
                    "world_lost_orders": (float(unharmed["orders"].sum()) - float(served["orders"].sum())) / bad,
                    "world_lost_good": (float(unharmed["good_orders"].sum()) - float(served["good_orders"].sum())) / bad,
                    "log_lost_orders": estimate.lost_orders, "log_se": estimate.lost_orders_se,
                    "log_cost": estimate.cost, "usable": estimate.usable,
                    # in net value (good - 2 x bad): the bad order's own 2 plus what the reaction lost,
                    # against what the policy would charge from the log (BadOrderCost.policy_cost)
                    "world_cost": 2.0 + (_net(unharmed) - _net(served)) / bad,
                    "log_policy_cost": estimate.policy_cost(2.0) if estimate.usable else float("nan"),
                    # the same estimate on the rollout's own orders only (see _world_period)
                    "rollout_log_lost_orders": since_start.lost_orders, "rollout_log_se": since_start.lost_orders_se,
                    "rollout_log_usable": since_start.usable,
                })
            print(f"seed {seed}: {time.perf_counter() - started:.0f} s")
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
        print(table.groupby("trust_loss")[["world_lost_orders", "world_lost_good", "log_lost_orders", "log_cost",
                                           "world_cost", "log_policy_cost", "rollout_log_lost_orders"]].mean().round(3))


if __name__ == "__main__":
    main()
