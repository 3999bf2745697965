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
log, as a platform would run it: no simulator, only orders and their outcomes.

A dense platform (few buyers who open the feed often) gives the estimator enough orders per
buyer; the feed is shown in retrieval order (no model: the cross-check is about the estimator,
not about a ranker). Creator supply and merchant exits are off so that the two worlds differ
only through the buyers' reaction.

Usage::

    python benchmarks/bench_bad_order_cost.py [--days 28] [--horizon 7] [--losses 0 0.3 0.6 0.9] [--seeds 2]

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
    args = parser.parse_args()

    from trustfeed.training.bad_order_cost import BadOrderCostConfig, estimate_bad_order_cost
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.world import WorldBase

    config = BadOrderCostConfig(horizon_days=args.horizon)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events"
        write_dataset(simulate(SimConfig(seed=3, merchants=20, days=7, users=args.users,
                                         requests_per_day=args.requests_per_day, orders_per_merchant_day=0.1)), events)
        base = WorldBase.from_events(events)
        for seed in range(args.seeds):
            started = time.perf_counter()
            _, unharmed = _serve(base, 0.0, seed, args.days)
            for loss in args.losses:
                world, served = _serve(base, loss, seed, args.days)
                estimate = estimate_bad_order_cost(world.events(), config, end=world.now)  # type: ignore[attr-defined]
                bad = float(served["bad_orders"].sum())
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
                })
            print(f"seed {seed}: {time.perf_counter() - started:.0f} s")
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
        print(table.groupby("trust_loss")[["world_lost_orders", "world_lost_good", "log_lost_orders", "log_cost",
                                           "world_cost", "log_policy_cost"]].mean().round(3))


if __name__ == "__main__":
    main()
