"""Benchmark of the closed-loop rollout: time per policy and per stage.

The issue's target: 28 days x ~300 requests/day x ~30 candidates, one seed, every registered
policy, at most 60 s on 2 cores. Without ``--events``/``--model`` the script simulates such a
platform (100 merchants, 30 days, 300 requests a day) and trains a small model on it first
(a few minutes, not timed). It then runs :func:`run_rollout` and prints, per policy, the time
spent ranking (``FeedRanker.rank_many``), drawing outcomes (the world's day: streams,
requests, retrieval, clicks, orders, after-sales, enforcement), and rebuilding the trust
snapshot and context tables, plus CPU time next to wall time (the machine is shared).

Usage::

    python benchmarks/bench_rollout.py [--events DIR --model URI] [--days 28] [--rebuild-every 1 7]

Measured figures are in docs/rollout.md.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _prepare(root: Path, merchants: int, days: int, requests_per_day: int) -> tuple[Path, str]:
    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import TrainJobConfig, train

    events = root / "events"
    write_dataset(simulate(SimConfig(seed=7, merchants=merchants, days=days, requests_per_day=requests_per_day)), events)
    result = train(TrainJobConfig(
        events=events, tracking_uri=f"sqlite:///{root / 'mlflow.db'}", output_dir=root / "models",
        model=LambdaMARTConfig(num_rounds=40, early_stopping_rounds=10, min_data_in_leaf=20, num_leaves=15),
    ))
    return events, str(result.bundle_dir)


def events_and_model(args: argparse.Namespace, tmp: str) -> tuple[Path | str, Path | str]:
    """``--events``/``--model`` when both are given, else a simulated platform trained in ``tmp``."""
    if args.events is not None and args.model is not None:
        return args.events, args.model
    print(f"preparing: simulate {args.merchants} merchants x 30 days x {args.requests_per_day} requests/day, train")
    return _prepare(Path(tmp), args.merchants, 30, args.requests_per_day)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="a simulated dataset (default: simulate one)")
    parser.add_argument("--model", help="a trained model URI or bundle directory for --events")
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rebuild-every", type=int, nargs="+", default=[1], help="snapshot schedules to time")
    parser.add_argument("--refit-index-every", type=int, default=None,
                        help="carry the trust index weights between refits this many days apart (default: refit at every rebuild)")
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--requests-per-day", type=int, default=300)
    args = parser.parse_args()

    from trustfeed.training.evaluation.policies import POLICIES
    from trustfeed.training.evaluation.rollout import run_rollout

    with tempfile.TemporaryDirectory() as tmp:
        events, model = events_and_model(args, tmp)
        for every in args.rebuild_every:
            wall, cpu = time.perf_counter(), _cpu()
            result = run_rollout(model, events, days=args.days, seeds=args.seeds, policies=list(POLICIES),
                                 rebuild_every_days=every, refit_index_every_days=args.refit_index_every)
            wall, cpu = time.perf_counter() - wall, _cpu() - cpu
            requests = result.daily.groupby("policy")["requests"].mean()
            refit = "every rebuild" if args.refit_index_every is None else f"every {args.refit_index_every} day(s)"
            print(f"\nrollout: {args.days} days x {args.seeds} seed(s), snapshot every {every} day(s), index refit {refit}, "
                  f"{len(result.policies)} policies: {wall:.1f} s wall, {cpu:.1f} s CPU (includes loading)")
            print(f"{'policy':24s} {'req/day':>8s} {'ranking':>8s} {'outcomes':>9s} {'snapshot':>9s} {'total':>8s}")
            for name in result.policies:
                t = result.timing[name]
                print(f"{name:24s} {requests[name]:8.0f} {t['ranking']:8.2f} {t['outcomes']:9.2f} "
                      f"{t['snapshot']:9.2f} {t['total']:8.2f}")
            totals = {stage: sum(t[stage] for t in result.timing.values()) for stage in ("ranking", "outcomes", "snapshot", "total")}
            print(f"{'all policies':24s} {'':8s} {totals['ranking']:8.2f} {totals['outcomes']:9.2f} "
                  f"{totals['snapshot']:9.2f} {totals['total']:8.2f}")


if __name__ == "__main__":
    main()
