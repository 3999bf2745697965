"""Choose the operator levers' defaults by the rollout objective, logging every point to MLflow.

Each lever is swept one at a time around the served configuration (a small grid: the other
levers stay at their current defaults) in the closed-loop rollout after the end of a simulated
dataset (the validation days: the model never saw them), with the same random numbers for
every point. The objective is the rollout's expected net value (the shown slates valued at the
world's own purchase and bad-order probabilities, good - bad_cost x bad orders, mean over seeds:
what was drawn adds noise that 10 days cannot average out); each point is one MLflow run with
the lever and its value as params and the rollout's means as metrics (drawn and expected). The
best value per lever is printed with its paired difference against the served configuration
and that difference's 95% interval over seeds.

Levers: ``guarantee_boost``; ``trust_floor`` (quantiles of merchant trust at the rollout
start); ``trust_exposure_target`` (quantiles of merchant trust); the balancer's ``target_gini``
as a ratio of the unbalanced Gini (the bundle's target was set at ``--trained-ratio`` x it);
``bad_cost``, the cost of a bad order the ranking charges (1 and 3 around the served 2; the
rollout's net value always counts a bad order at the world's cost, so this asks whether the
policy should price risk above or below what it costs).

Usage (a shared machine: nice, one thread)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sweep_levers.py --out /tmp/sweep [--days 10 --seeds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("net_value", "orders", "good_orders", "bad_orders", "bad_order_rate", "gini", "trust_weighted_exposure",
           "buyer_retention", "long_tail_share", "expected_net_value", "expected_orders", "expected_bad_orders")


LEVERS = ("guarantee_boost", "trust_floor", "trust_exposure_target", "target_gini_ratio", "bad_cost")
BAD_COSTS = (1.0, 3.0)
GINI_RATIOS = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def lever_grid(trust: np.ndarray, target_gini: float, trained_ratio: float,
               levers: tuple[str, ...] = LEVERS, gini_ratios: tuple[float, ...] = GINI_RATIOS
               ) -> list[tuple[str, str, dict[str, Any]]]:
    """``(lever, value, lever_policy keyword arguments)`` for every point of the sweep (``served`` first)."""
    known = trust[np.isfinite(trust)]
    unbalanced = target_gini / trained_ratio
    grid: list[tuple[str, str, dict[str, Any]]] = [("served", "", {})]
    grid += [("guarantee_boost", f"{b:g}", {"guarantee_boost": b}) for b in (0.5, 1.0, 2.0)]
    grid += [("trust_floor", f"{np.quantile(known, q):.3f}", {"trust_floor": float(np.round(np.quantile(known, q), 3))})
             for q in (0.05, 0.15)]
    grid += [("trust_exposure_target", f"{np.quantile(known, q):.3f}",
              {"trust_exposure_target": float(np.round(np.quantile(known, q), 3))}) for q in (0.5, 0.8)]
    grid += [("target_gini_ratio", f"{r:g}", {"balancer": {"target_gini": float(np.clip(r * unbalanced, 0.01, 0.99))}})
             for r in gini_ratios if abs(r - trained_ratio) > 1e-9]
    # the cost of a bad order in the ranking only (the rollout's net value keeps its own cost)
    grid += [("bad_cost", f"{c:g}", {"bad_cost": c}) for c in BAD_COSTS]
    return [point for point in grid if point[0] == "served" or point[0] in levers]


def paired_difference(cumulative: Any, name: str, reference: str, metric: str = "net_value") -> dict[str, float | None]:
    """Mean over seeds of ``name``'s metric minus ``reference``'s on the same seed, with its 95% t-interval.

    Every policy of a rollout runs on the same random numbers per seed, so the per-seed
    difference removes the platform's own noise (what two unpaired intervals would keep).
    """
    from scipy import stats

    by_seed = cumulative.pivot_table(index="seed", columns="policy", values=metric)
    diff = (by_seed[name] - by_seed[reference]).dropna().to_numpy(float)
    if diff.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None}
    mean = float(diff.mean())
    if diff.size < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None}
    half = float(stats.t.ppf(0.975, diff.size - 1) * diff.std(ddof=1) / np.sqrt(diff.size))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="a simulated dataset (default: simulate one)")
    parser.add_argument("--model", help="a trained model bundle or URI for --events")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--requests-per-day", type=int, default=300)
    parser.add_argument("--trained-ratio", type=float, default=0.9, help="target_gini_ratio the model was trained with")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in --out)")
    parser.add_argument("--gini-ratios", type=float, nargs="+", default=list(GINI_RATIOS),
                        help="target_gini_ratio values of the Gini-target lever")
    parser.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS), help="levers to sweep (default: all)")
    args = parser.parse_args()

    import mlflow
    import pandas as pd

    from trustfeed.serving import FeedRanker
    from trustfeed.training.evaluation.policies import lever_policy
    from trustfeed.training.evaluation.rollout import run_rollout
    from trustfeed.training.registry import quiet_mlflow

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_rollout import events_and_model

    args.out.mkdir(parents=True, exist_ok=True)
    tracking = args.tracking_uri or f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    with tempfile.TemporaryDirectory() as tmp:
        events, model = events_and_model(args, tmp)
        served = FeedRanker.load(str(model), predictor="lightgbm").pipeline
        trust = pd.to_numeric(served.snapshot.merchants["trust_index"], errors="coerce").to_numpy(float)
        target_gini = served.balancer.config.target_gini if served.balancer is not None else 0.5
        grid = lever_grid(trust, target_gini, args.trained_ratio, tuple(args.levers), tuple(args.gini_ratios))
        specs = {f"{lever}={value}" if value else lever: lever_policy(f"{lever} {value}", **changes)
                 for lever, value, changes in grid}
        started = time.perf_counter()
        result = run_rollout(model, events, days=args.days, seeds=args.seeds, policies=list(specs), registry=specs,
                             rebuild_every_days=7)
        elapsed = time.perf_counter() - started
        summary = result.summary()
        rows = []
        with quiet_mlflow():
            mlflow.set_tracking_uri(tracking)
            mlflow.set_experiment("trustfeed-lever-sweep")
            for (lever, value, changes), name in zip(grid, specs, strict=True):
                values = {m: summary[name][m]["mean"] for m in METRICS}
                paired = paired_difference(result.cumulative, name, "served")
                values["net_value_vs_served"] = paired["mean"]
                # the same slates valued at the world's probabilities: no draw noise
                expected = paired_difference(result.cumulative, name, "served", "expected_net_value")
                values["expected_net_value_vs_served"] = expected["mean"]
                low, high = summary[name]["net_value"]["ci_low"], summary[name]["net_value"]["ci_high"]
                with mlflow.start_run(run_name=name):
                    mlflow.log_params({"lever": lever, "value": value or "served", "days": args.days, "seeds": args.seeds,
                                       "rebuild_every_days": 7, "model": str(model), "changes": repr(changes)})
                    mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})
                rows.append({"lever": lever, "value": value or "-", **values,
                             "net_ci": "" if low is None else f"[{low:.1f}, {high:.1f}]",
                             "paired_ci": "" if paired["ci_low"] is None else f"[{paired['ci_low']:.1f}, {paired['ci_high']:.1f}]",
                             "expected_paired_ci": ("" if expected["ci_low"] is None
                                                    else f"[{expected['ci_low']:.1f}, {expected['ci_high']:.1f}]")})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 220)
    print(f"\nlever sweep: {len(grid)} points x {args.seeds} seeds x {args.days} days in {elapsed:.0f} s; "
          f"MLflow {tracking} (experiment trustfeed-lever-sweep)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    served_net = float(table.loc[table["lever"] == "served", "expected_net_value"].iloc[0])
    print("\nchosen by expected net value (the shown slates at the world's probabilities; served included as 'keep'):")
    for lever, rows_of in table[table["lever"] != "served"].groupby("lever", sort=False):
        best = rows_of.loc[rows_of["expected_net_value"].idxmax()]
        choice = best["value"] if best["expected_net_value"] > served_net else "keep the served value"
        print(f"  {lever}: {choice} (expected net {best['expected_net_value']:.1f} vs served {served_net:.1f}; paired "
              f"difference {best['expected_net_value_vs_served']:+.1f} {best['expected_paired_ci']}; drawn "
              f"{best['net_value_vs_served']:+.1f} {best['paired_ci']})")


if __name__ == "__main__":
    main()
