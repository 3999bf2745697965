"""The balancer against the published fairness re-rankers: static and closed-loop frontiers.

Each method's strength is swept on the same requests (static) and the same simulated platform
with the same random numbers (rollout):

- trustfeed's exposure balancer: fixed re-ranking strength (controller off), with the bundle's
  lift rule and with the other one (``value``: on the score's scale, ``position``: the earlier
  rule that moves items by positions);
- FA*IR (``fair_quota``) and DetConstSort: target long-tail share ``p``;
- FairCo-style P-controller and P-MMF-style dual prices: their strength.

Static frontier: ``trustfeed evaluate`` on the held-out requests (NDCG@10 and expected orders
against the Gini of creator exposure, with the Pareto verdicts), written to
``OUT/static/report.html``. Rollout frontier: net value against Gini over ``--days`` days and
``--seeds`` seeds, printed and written to ``OUT/rollout_frontier.json`` with the verdicts.

Without ``--events``/``--model`` a platform is simulated (``--merchants``, 30 days) and a
small model trained on it first. Run under ``nice`` with ``OMP_NUM_THREADS=1`` on a shared
machine::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/frontiers.py --out /tmp/frontiers [--days 10 --seeds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STATIC_ONLY_NOTE = "(static only: --days 0)"


def rollout_frontier_specs(strengths: dict[str, tuple[float, ...]]) -> dict[str, Any]:
    """One rollout policy per method and strength (name ``method@strength``)."""
    from trustfeed.ranker.baselines import DetConstSortReranker, FairCoReranker, FairQuotaReranker, PMMFReranker
    from trustfeed.training.evaluation.policies import followers_of, lever_policy, reranker_policy

    specs: dict[str, Any] = {}
    for method, lift in (("balancer", "value"), ("balancer_position", "position")):
        for s in strengths.get(method, ()):
            specs[f"{method}@{s:g}"] = lever_policy(f"{method} strength {s:g}", balancer={
                "kp": 0.0, "ki": 0.0, "strength_min": 0.0, "strength_max": max(s, 0.0), "initial_strength": s, "lift": lift})
    for p in strengths["fair_quota"]:
        specs[f"fair_quota@{p:g}"] = reranker_policy(
            f"FA*IR p {p:g}", lambda c, p=p: FairQuotaReranker(followers_of(c), k=10, p=p, alpha=0.1))
    for p in strengths["det_const_sort"]:
        specs[f"det_const_sort@{p:g}"] = reranker_policy(
            f"DetConstSort p {p:g}", lambda c, p=p: DetConstSortReranker(followers_of(c), k=10, p=p))
    for s in strengths["fairco"]:
        specs[f"fairco@{s:g}"] = reranker_policy(f"FairCo {s:g}", lambda c, s=s: FairCoReranker(s))
    for s in strengths["pmmf"]:
        specs[f"pmmf@{s:g}"] = reranker_policy(f"P-MMF {s:g}", lambda c, s=s: PMMFReranker(s))
    return specs


def _half_width(interval: dict[str, Any]) -> float:
    low, high = interval.get("ci_low"), interval.get("ci_high")
    return float("nan") if low is None or high is None else (high - low) / 2.0


SWEEP_LABELS = {"balancer": "balancer sweep", "balancer_position": "balancer sweep (position lift)", "fair_quota": "FA*IR sweep", "det_const_sort": "DetConstSort sweep",
                "fairco": "FairCo sweep", "pmmf": "P-MMF sweep"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="a simulated dataset (default: simulate one)")
    parser.add_argument("--model", help="a trained model bundle or URI for --events")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--days", type=int, default=10, help="rollout days (0: static frontier only)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--skip-static", action="store_true", help="only the closed-loop frontier")
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--requests-per-day", type=int, default=300)
    args = parser.parse_args()

    import pandas as pd

    from trustfeed.training.evaluation import EvalConfig, evaluate
    from trustfeed.training.evaluation.frontier import frontier_summary, pareto_verdicts
    from trustfeed.training.evaluation.rollout import run_rollout

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_rollout import events_and_model

    strengths = {"balancer": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0), "fair_quota": (0.5, 0.7, 0.9),
                 "det_const_sort": (0.5, 0.7, 0.9), "fairco": (0.01, 0.1, 1.0), "pmmf": (0.1, 0.5, 2.0)}
    # the closed loop costs ~10 s of CPU per policy, seed and 10 days: fewer points there
    rollout_strengths = {"balancer": (0.0, 1.0, 2.0, 4.0, 8.0), "balancer_position": (2.0, 8.0), "fair_quota": (0.5, 0.9), "det_const_sort": (0.5, 0.9),
                         "fairco": (0.01, 0.1, 1.0), "pmmf": (0.5, 2.0)}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        events, model = events_and_model(args, tmp)
        started = time.perf_counter()
        result = None if args.skip_static else evaluate(events, model, args.out / "static", config=EvalConfig(
            sweep_strengths=strengths["balancer"], other_lift_sweep=True, quota_sweep_ps=(0.3, 0.5, 0.7, 0.9),
            fairco_strengths=strengths["fairco"], pmmf_strengths=strengths["pmmf"]))
        pd.set_option("display.width", 200)
        if result is not None:
            document = json.loads(result.metrics_path.read_text())
            tradeoff = pd.DataFrame(document["tradeoff"])
            print(f"\nstatic frontier ({time.perf_counter() - started:.0f} s), {result.report_path}")
            print(tradeoff.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print("\n".join(document["notes"][: len(SWEEP_LABELS)]))
            print("\noperator levers (static)")
            print(pd.DataFrame(document["levers"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if args.days < 1:
            print(STATIC_ONLY_NOTE)
            return
        specs = rollout_frontier_specs(rollout_strengths)
        started = time.perf_counter()
        rollout = run_rollout(model, events, days=args.days, seeds=args.seeds, policies=list(specs), registry=specs,
                              rebuild_every_days=7)
        summary = rollout.summary()
        rows = []
        for name in specs:
            method, strength = name.split("@")
            rows.append({"policy": SWEEP_LABELS[method], "kind": "sweep", "strength": float(strength),
                         "gini": summary[name]["gini"]["mean"], "net_value": summary[name]["net_value"]["mean"],
                         "orders": summary[name]["orders"]["mean"], "bad_order_rate": summary[name]["bad_order_rate"]["mean"],
                         "net_value_ci": _half_width(summary[name]["net_value"])})
        frontier = pd.DataFrame(rows)
        verdicts = pareto_verdicts(frontier, quality=("net_value",))
        print(f"\nrollout frontier ({time.perf_counter() - started:.0f} s; {args.days} days x {args.seeds} seeds, "
              "weekly snapshot)")
        print(frontier.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        lines = frontier_summary(verdicts)
        print("\n".join(lines))
        (args.out / "rollout_frontier.json").write_text(json.dumps({
            "days": args.days, "seeds": args.seeds, "points": frontier.to_dict("records"),
            "verdicts": verdicts.to_dict("records"), "summary": lines}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
