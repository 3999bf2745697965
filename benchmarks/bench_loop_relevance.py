"""Does the purchase model rank worse as the closed loop goes on? Its share of the truth's orders per loop day.

The purchase model learns from the logging policy's impressions; in the loop it ranks the
requests of a world that the served policy itself moves (other streams shown, counts and
trust that drift, snapshots and viewer history rebuilt on a schedule). For each setting and
platform (the datasets and default bundles of ``bench_policy_worlds.py``, same ``--work``),
the served policy runs the loop (``run_rollout``, one policy) behind a probe that, for every
request of every day, takes the candidates' purchase-model scores from the served responses
and the world's true ``p_click x p_purchase`` and prints, per day:

* ``model_share``: the expected orders of the candidates ranked by the purchase model's score,
  over those of the ranking by the truth (examination ``position ** -eta``; the one-shot figure
  of ``bench_relevance_gap.py`` on the loop's own requests);
* ``served_share``: the same for the slate the served policy showed (trust and balancer
  included; ``--no-balancer``: the trust-aware policy alone);
* ``fixed_share``: the model's share with the rollout-start snapshot and viewer tables kept
  (a second pipeline, never rebuilt): how much the rebuilds themselves give or take;
* ``pred_true``: mean predicted purchase probability over the true one, at the top position.

A model whose ranking decays with the loop shows ``model_share`` falling from the first days
to the last; ``fixed_share`` below ``model_share`` late in the loop means the rebuilds keep it
up (stale tables cost), above it that rebuilt features mislead the model.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_loop_relevance.py --work DIR
        [--worlds impulse no_impulse risky] [--platforms 1 2] [--days 21] [--seeds 1] [--rebuild-every 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_policy_worlds import WORLDS, _bundle  # noqa: E402
from bench_relevance_gap import _positions  # noqa: E402


class _Probe:
    """The served ranker, measured: every ``rank_many`` adds one day's figures to ``days``."""

    def __init__(self, ranker: Any, world: Any, fixed: Any | None, days: list[dict[str, Any]], label: str) -> None:
        self.ranker, self.world, self.fixed, self.days, self.label = ranker, world, fixed, days, label
        self._fixed_loaded = False

    def rank_many(self, requests: Any, **kwargs: Any) -> Any:
        responses = self.ranker.rank_many(requests, **kwargs)
        row = {"setting": self.label, "seed": self.world.seed, "day": self.world.day}
        row.update(self._measure(responses, "served"))
        if self.fixed is not None:
            row["fixed_share"] = self._measure(self.fixed.rank_many(requests), "fixed")["model_share"]
        self.days.append(row)
        return responses

    def _measure(self, responses: Any, what: str) -> dict[str, float]:
        request_id, stream_id, relevance, position = [], [], [], []
        for response in responses:
            items = response["items"]
            request_id.extend([response["request_id"]] * len(items))
            stream_id.extend(item["stream_id"] for item in items)
            relevance.extend(item["relevance"] for item in items)
            position.extend(range(1, len(items) + 1))
        shown = pd.DataFrame({"request_id": request_id, "stream_id": stream_id, "relevance": relevance,
                              "position": position})
        rows = self.world.today_candidates().merge(shown, on=["request_id", "stream_id"], how="inner",
                                                   validate="one_to_one")
        p_click, p_purchase, _, _ = self.world._probabilities(rows)
        truth = p_click * p_purchase
        request = pd.factorize(rows["request_id"])[0]
        eta = self.world.config.position_bias_eta
        score = rows["relevance"].to_numpy(dtype=float)

        def orders(pos: np.ndarray) -> float:
            return float(np.sum(pos.astype(float) ** -eta * truth))

        best = orders(_positions(request, truth))
        out = {"model_share": orders(_positions(request, score)) / best}
        if what == "served":
            out["served_share"] = orders(rows["position"].to_numpy()) / best
            out["pred_true"] = float(np.mean(np.exp(score)) / np.mean(truth))
            out["requests"] = float(request.max() + 1)
        return out

    def record_impressions(self, impressions: Any) -> None:
        self.ranker.record_impressions(impressions)

    def reload_snapshot(self, snapshot: Any, context: Any = None) -> Any:
        if self.fixed is not None and not self._fixed_loaded:
            self.fixed.reload_snapshot(snapshot, context)
            self._fixed_loaded = True
        return self.ranker.reload_snapshot(snapshot, context)


def probe_spec(label: str, days: list[dict[str, Any]], fixed: bool, balancer: bool = True) -> Any:
    """The served policy (``balancer`` on or off) behind a :class:`_Probe` that writes into ``days``."""
    from trustfeed.serving import FeedRanker
    from trustfeed.training.evaluation.policies import PolicySpec, served_pipeline

    def build(context: Any) -> Any:
        ranker = FeedRanker(served_pipeline(context.served, balancer=balancer), record_served=False)
        other = FeedRanker(served_pipeline(context.served, balancer=False), record_served=False) if fixed else None
        return _Probe(ranker, context.world, other, days, label)

    return PolicySpec(f"served, probed ({label})", build)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="datasets and bundles (bench_policy_worlds' layout, reused)")
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--platforms", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--merchants", type=int, default=150)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rebuild-every", type=int, default=7)
    parser.add_argument("--no-fixed", action="store_true", help="skip the never-rebuilt second pipeline")
    parser.add_argument("--no-balancer", action="store_true", help="probe the trust-aware policy without the balancer")
    parser.add_argument("--csv", type=Path, default=None, help="write the per-day rows here")
    args = parser.parse_args()

    from trustfeed.training.evaluation.rollout import run_rollout

    days: list[dict[str, Any]] = []
    for world in args.worlds:
        for seed in args.platforms:
            root = args.work / f"{world}-{seed}-{args.merchants}"
            root.mkdir(parents=True, exist_ok=True)
            bundle = _bundle(root, seed, args.merchants, WORLDS[world])
            spec = probe_spec(f"{world}-{seed}", days, fixed=not args.no_fixed, balancer=not args.no_balancer)
            run_rollout(bundle, root / "events", days=args.days, seeds=args.seeds, policies=["probe"],
                        registry={"probe": spec}, rebuild_every_days=args.rebuild_every)
            frame = pd.DataFrame(days)
            print(frame[frame["setting"] == f"{world}-{seed}"].groupby("day").mean(numeric_only=True)
                  .drop(columns="seed").round(4).to_string(), flush=True)
    frame = pd.DataFrame(days)
    if args.csv is not None:
        frame.to_csv(args.csv, index=False)
    frame["world"] = frame["setting"].str.rsplit("-", n=1).str[0]
    frame["week"] = frame["day"] // 7 + 1
    print("\nmean per world and loop week (share of the truth's expected orders):")
    print(frame.groupby(["world", "week"])[[c for c in ("model_share", "fixed_share", "served_share", "pred_true")
                                            if c in frame.columns]].mean().round(4).to_string())
    first, last = frame[frame["day"] == 0], frame[frame["day"] == frame["day"].max()]
    print("\nday 1 -> last day, model_share per platform:")
    for setting in frame["setting"].unique():
        a = first.loc[first["setting"] == setting, "model_share"].mean()
        b = last.loc[last["setting"] == setting, "model_share"].mean()
        print(f"  {setting}: {a:.4f} -> {b:.4f}")


if __name__ == "__main__":
    main()
