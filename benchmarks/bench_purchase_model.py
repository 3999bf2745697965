"""The purchase model against the LambdaMART score as the policy's relevance input.

For each simulated platform (``trustfeed simulate`` seeds) the script trains two bundles with
the real training job on the same data: the default (the policy calibrates and ranks on the
purchase model, :mod:`trustfeed.ranker.purchase`) and ``purchase_model=None`` (the policy
calibrates the LambdaMART score, as before). LambdaMART, the plain model and the bad-order
model are the same in both (deterministic fits). Then, on each bundle:

* ``--frontier``: one shot on the world's truth. The same requests of a few days are ranked
  by the policy without the balancer with the cost of a bad order *in the ranking* swept
  (``bad_cost`` 0.5 ... 8), and each ranking's exact expected orders, bad orders and net value
  (good - 2 x bad) are summed from the world's click, purchase and bad-order probabilities:
  the orders each relevance input keeps for a given cut in bad orders;
* ``--loop``: the closed loop (:func:`~trustfeed.training.evaluation.rollout.run_rollout`,
  snapshot rebuilt weekly, the same random numbers for every policy) with ``plain``,
  ``oracle``, ``trust_aware`` and ``trust_aware_balanced``.

Usage::

    python benchmarks/bench_purchase_model.py --platforms 1:150 2:120 [--frontier] [--loop]
        [--days 14] [--seeds 3] [--frontier-days 3] [--frontier-seeds 2] [--work DIR]

A platform is ``SEED:MERCHANTS`` (45 days). ``--work`` keeps the datasets and bundles (and
reuses them when present). Measured figures are in docs/rollout.md.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COSTS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
LOOP_POLICIES = ["plain", "oracle", "trust_aware", "trust_aware_balanced"]
INPUTS = {"purchase_model": "purchase model (default)", "ranker": "LambdaMART score (before)"}


def _bundles(root: Path, seed: int, merchants: int) -> dict[str, str]:
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import TrainJobConfig, train

    events = root / "events"
    if not events.exists():
        write_dataset(simulate(SimConfig(seed=seed, merchants=merchants, days=45)), events)
    out = {}
    for kind in INPUTS:
        marker = root / f"bundle_{kind}.txt"
        if not marker.is_file():
            job = TrainJobConfig(events=events, tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                 output_dir=root / f"models_{kind}", evaluate=False)
            if kind == "ranker":
                job = replace(job, purchase_model=None)
            marker.write_text(str(train(job).bundle_dir))
        out[kind] = marker.read_text().strip()
    return out


def frontier(bundles: dict[str, str], events: Path, days: int, seeds: int) -> pd.DataFrame:
    """Expected orders / bad orders / net value of each (relevance input, ranking cost), one shot."""
    from trustfeed.serving import FeedRanker
    from trustfeed.training.evaluation._models import load_models_for_evaluation
    from trustfeed.training.evaluation.policies import PolicyContext, plain_pipeline, served_pipeline
    from trustfeed.training.world import World, WorldBase
    from trustfeed.ranker.policy import Policy

    base = WorldBase.from_events(events)
    eta = base.config.position_bias_eta
    loaded = {kind: load_models_for_evaluation(uri) for kind, uri in bundles.items()}
    served, plain = loaded["purchase_model"]
    cost = served.policy.config.bad_cost
    rebuilt = served.rebuilt_as_of(base.events, base.start)
    totals: list[dict[str, Any]] = []
    for seed in range(seeds):
        world = World(base, seed=seed, bad_cost=cost)
        rankers: dict[tuple[str, float], Any] = {}
        for kind, (pipeline, _) in loaded.items():
            for c in COSTS:
                fresh = served_pipeline(pipeline, balancer=False)
                fresh.policy = Policy(replace(fresh.policy.config, bad_cost=c), fresh.policy.state)
                rankers[(kind, c)] = FeedRanker(fresh, record_served=False)
        context = PolicyContext(served=served, plain_model=plain, world=world, bad_cost=cost)
        rankers[("plain", 0.0)] = FeedRanker(plain_pipeline(context), record_served=False)
        for ranker in rankers.values():
            ranker.reload_snapshot(rebuilt.snapshot, rebuilt.context)
        for _ in range(days):
            day = world.next_requests()
            rows = day.candidates
            p_click, p_purchase, _, p_bad = world._probabilities(rows)
            bought = p_click * p_purchase
            keys = rows["request_id"].astype(str) + "|" + rows["stream_id"].astype(str)
            served_today = None
            for (kind, c), ranker in rankers.items():
                responses = ranker.rank_many(day.requests)
                position = keys.map({f"{r['request_id']}|{item['stream_id']}": i
                                     for r in responses for i, item in enumerate(r["items"], 1)}).to_numpy(dtype=float)
                examined = np.where(np.isnan(position), 0.0, np.nan_to_num(position, nan=1.0) ** -eta)
                orders, bad = float((examined * bought).sum()), float((examined * bought * p_bad).sum())
                totals.append({"input": kind, "cost": c, "orders": orders, "bad_orders": bad,
                               "net_value": orders - (1.0 + cost) * bad})
                if (kind, c) == ("purchase_model", cost):
                    served_today = responses
            value = bought * (1.0 - (1.0 + cost) * p_bad)
            request = rows["request"].to_numpy()
            order = np.lexsort((-value, request))
            grouped = request[order]
            position = np.empty(len(value))
            position[order] = np.arange(len(value)) - np.searchsorted(grouped, grouped) + 1
            examined = position ** -eta
            orders, bad = float((examined * bought).sum()), float((examined * bought * p_bad).sum())
            totals.append({"input": "oracle", "cost": cost, "orders": orders, "bad_orders": bad,
                           "net_value": orders - (1.0 + cost) * bad})
            outcome = world.serve(day, served_today)
            for ranker in rankers.values():
                ranker.record_impressions(outcome.impressions)
    table = pd.DataFrame(totals).groupby(["input", "cost"]).sum()
    reference = table.loc[("plain", 0.0)]
    table["bad_rate_x"] = (table["bad_orders"] / table["orders"]) / (reference["bad_orders"] / reference["orders"])
    table["orders_x"] = table["orders"] / reference["orders"]
    table["net_x"] = table["net_value"] / reference["net_value"]
    oracle = table.loc[("oracle", cost), "net_value"]
    table["oracle_share"] = (table["net_value"] - reference["net_value"]) / (oracle - reference["net_value"])
    return table


def loop(bundles: dict[str, str], events: Path, days: int, seeds: int) -> pd.DataFrame:
    """Closed-loop totals per relevance input and policy (mean over seeds), with per-seed rows."""
    from trustfeed.training.evaluation.rollout import run_rollout

    parts = []
    for kind, uri in bundles.items():
        result = run_rollout(uri, events, days=days, seeds=seeds, policies=LOOP_POLICIES, rebuild_every_days=7)
        parts.append(result.cumulative.assign(input=kind))
    return pd.concat(parts, ignore_index=True)


def _loop_summary(cumulative: pd.DataFrame) -> pd.DataFrame:
    metrics = ["net_value", "orders", "bad_orders", "bad_order_rate", "gini", "active_buyers", "buyer_retention"]
    table = cumulative.groupby(["input", "policy"])[metrics].mean()
    reference = table.loc[("purchase_model", "plain")]
    oracle = table.loc[("purchase_model", "oracle"), "net_value"]
    out = table[["net_value", "orders", "bad_orders"]].copy()
    for metric in ("net_value", "orders", "bad_order_rate", "gini", "active_buyers", "buyer_retention"):
        out[f"{metric}_x"] = table[metric] / reference[metric]
    out["oracle_share"] = (table["net_value"] - reference["net_value"]) / (oracle - reference["net_value"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platforms", nargs="+", default=["1:150", "2:120"], help="SEED:MERCHANTS of each platform")
    parser.add_argument("--frontier", action="store_true", help="the one-shot orders / bad-order frontier")
    parser.add_argument("--loop", action="store_true", help="the closed loop")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--frontier-days", type=int, default=3)
    parser.add_argument("--frontier-seeds", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep (and reuse) datasets and bundles here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for platform in args.platforms:
            seed, merchants = (int(v) for v in platform.split(":"))
            root = work / f"platform-{seed}-{merchants}"
            root.mkdir(parents=True, exist_ok=True)
            bundles = _bundles(root, seed, merchants)
            with pd.option_context("display.width", 220, "display.max_columns", 20):
                if args.frontier:
                    print(f"\nplatform {platform}: one shot, {args.frontier_days} days x {args.frontier_seeds} seeds")
                    print(frontier(bundles, root / "events", args.frontier_days, args.frontier_seeds).round(3).to_string())
                if args.loop:
                    cumulative = loop(bundles, root / "events", args.days, args.seeds)
                    cumulative.to_csv(root / f"loop_{args.days}d_{args.seeds}s.csv", index=False)
                    print(f"\nplatform {platform}: closed loop, {args.days} days x {args.seeds} seeds, weekly rebuild")
                    print(_loop_summary(cumulative).round(3).to_string())
                    for metric in ("net_value", "orders", "bad_orders"):
                        per_seed = cumulative.pivot_table(index="seed", columns=["input", "policy"], values=metric)
                        print(f"{metric} per seed:\n{per_seed.round(1).to_string()}")


if __name__ == "__main__":
    main()
