"""Where does the trust-aware policy lose orders? A one-shot decomposition on the world's truth.

The closed-loop world (:mod:`trustfeed.training.world`) knows every candidate's true click,
purchase and bad-order probabilities, so any ranking of a day's requests has an exact expected
number of orders, bad orders and net value (examination ``position ** -eta`` as in the
simulator). This script draws the same requests for a few days and scores, on the same
candidates:

* ``plain``: the plain LambdaMART (no trust features), the comparison arm;
* ``relevance_only``: the trust-aware model's score alone;
* ``policy``: the served policy without the balancer (expected net value), and
  ``policy_no_risk_term``: the same with the calibration's risk term ``d`` set to 0;
* ``policy_balanced``: the served policy with the exposure balancer (the order actually served);
* ``model_purchase_true_bad``: the policy's purchase estimate with the *true* bad-order
  probability (is the trust side the problem?);
* ``true_purchase_model_bad``: the *true* purchase probability with the policy's bad-order
  model (is the relevance side the problem?);
* ``true_purchase``: a perfect purchase ranking; ``oracle``: true expected net value.

The world is advanced each day with the served order (balancer on), so later days see the
served policy's consequences. Orders, bad-order rate, net value and creator-exposure Gini are
printed relative to ``plain``, with the share of the oracle's net-value gain. One-shot: no
buyer or creator reacts within the day, so this isolates ranking quality from the dynamics.

Usage::

    python benchmarks/bench_policy_decomposition.py [--events DIR --model URI] [--days 3] [--seeds 2]
        [--sim-seed 1] [--bad-purchase-grade 4]

``--bad-purchase-grade`` trains the simulated platform's model with that label for a purchase
that ended badly (1 is the training default; 4 keeps the purchase grade). ``orders`` and
``net_value`` are absolute expected counts, so runs whose ``plain`` arms differ can be compared.

Without ``--events``/``--model`` a platform of 150 merchants x 45 days is simulated and a
model trained on it first (about a minute). Measured figures are in docs/rollout.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _prepare(root: Path, merchants: int, days: int, seed: int, bad_purchase_grade: int | None = None) -> tuple[Path, str]:
    from dataclasses import replace

    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import TrainJobConfig, train

    events = root / "events"
    write_dataset(simulate(SimConfig(seed=seed, merchants=merchants, days=days)), events)
    job = TrainJobConfig(events=events, tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                         output_dir=root / "models", evaluate=False)
    if bad_purchase_grade is not None:
        job = replace(job, dataset=replace(job.dataset, bad_purchase_grade=bad_purchase_grade))
    result = train(job)
    return events, str(result.bundle_dir)


def _ranked_columns(responses: list[dict[str, Any]], name: str) -> pd.DataFrame:
    rows = [(r["request_id"], item["stream_id"], position, item["relevance"], item["trust"])
            for r in responses for position, item in enumerate(r["items"], 1)]
    return pd.DataFrame(rows, columns=["request_id", "stream_id", f"position_{name}", f"relevance_{name}", f"trust_{name}"])


def _positions(request: np.ndarray, score: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(len(score)), -score, request))
    grouped = request[order]
    position = np.empty(len(score), dtype=np.int64)
    position[order] = np.arange(len(score)) - np.searchsorted(grouped, grouped, side="left") + 1
    return position


def decompose(model_uri: str, events_dir: Path, days: int, seeds: int) -> pd.DataFrame:
    """Per ranking: expected orders, bad orders, net value and creator Gini, summed over days and seeds."""
    from trustfeed.ranker._expected_value import bad_probability, expected_value_score, purchase_probability
    from trustfeed.ranker.metrics import gini
    from trustfeed.serving import FeedRanker
    from trustfeed.training.evaluation._models import load_models_for_evaluation
    from trustfeed.training.evaluation.policies import PolicyContext, plain_pipeline, served_pipeline
    from trustfeed.training.world import World, WorldBase

    served, plain = load_models_for_evaluation(model_uri)
    state, config = served.policy.state, served.policy.config
    if state is None:
        raise SystemExit("the served policy is not fitted (no expected-value state): nothing to decompose")
    base = WorldBase.from_events(events_dir)
    rebuilt = served.rebuilt_as_of(base.events, base.start)
    eta = base.config.position_bias_eta
    cost = config.bad_cost
    totals: list[dict[str, Any]] = []
    exposure: dict[str, list[pd.Series]] = {}
    for seed in range(seeds):
        world = World(base, seed=seed, bad_cost=cost)
        context = PolicyContext(served=served, plain_model=plain, world=world, bad_cost=cost)
        rankers = {
            "policy": FeedRanker(served_pipeline(served, balancer=False), record_served=False),
            "policy_balanced": FeedRanker(served_pipeline(served, balancer=True), record_served=False),
            "plain": FeedRanker(plain_pipeline(context), record_served=False),
        }
        for ranker in rankers.values():
            ranker.reload_snapshot(rebuilt.snapshot, rebuilt.context)
        for _ in range(days):
            day = world.next_requests()
            rows = day.candidates
            responses = {name: ranker.rank_many(day.requests) for name, ranker in rankers.items()}
            for name, answer in responses.items():
                rows = rows.merge(_ranked_columns(answer, name), on=["request_id", "stream_id"], how="left")
            p_click, p_purchase, _, p_bad = world._probabilities(rows)
            bought = p_click * p_purchase
            shown = rows["position_policy"].notna().to_numpy()  # hard rules removed the others
            relevance, trust = rows["relevance_policy"].to_numpy(), rows["trust_policy"].to_numpy()
            model_bad = bad_probability(trust, state.bad_model, config.eps)
            model_purchase = purchase_probability(relevance, state.purchase_calibration, model_bad,
                                                  min(state.risk_term, 1.0 + cost))
            value = 1.0 - (1.0 + cost) * p_bad
            rankings = {
                "plain": rows["relevance_plain"].to_numpy(),
                "relevance_only": relevance,
                "policy": expected_value_score(relevance, trust, state.purchase_calibration, state.bad_model, cost,
                                               config.eps, state.risk_term),
                "policy_no_risk_term": expected_value_score(relevance, trust, state.purchase_calibration,
                                                            state.bad_model, cost, config.eps, 0.0),
                "policy_balanced": -rows["position_policy_balanced"].to_numpy(),
                "model_purchase_true_bad": model_purchase * value,
                "true_purchase_model_bad": bought * (1.0 - (1.0 + cost) * model_bad),
                "true_purchase": bought,
                "oracle": bought * value,
            }
            request = rows["request"].to_numpy()
            creator = rows["creator"].to_numpy()
            for name, score in rankings.items():
                ranked = np.where(shown, np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-1e12), -np.inf)
                position = _positions(request, ranked)
                examined = np.where(shown, position.astype(np.float64) ** -eta, 0.0)
                orders, bad = float((examined * bought).sum()), float((examined * bought * p_bad).sum())
                totals.append({"ranking": name, "orders": orders, "bad_orders": bad, "net_value": orders - (1.0 + cost) * bad})
                creator_exposure = np.where(shown, 1.0 / np.log2(position + 1.0), 0.0)
                exposure.setdefault(name, []).append(pd.Series(creator_exposure).groupby(creator).sum())
            outcome = world.serve(day, responses["policy_balanced"])
            for ranker in rankers.values():  # the balancer's exposure ledger follows what was shown
                ranker.record_impressions(outcome.impressions)
    table = pd.DataFrame(totals).groupby("ranking", sort=False).sum()
    table["bad_order_rate"] = table["bad_orders"] / table["orders"]
    table["gini"] = pd.Series({name: gini(pd.concat(parts, axis=1).fillna(0.0).sum(axis=1).to_numpy())
                               for name, parts in exposure.items()})
    reference = table.loc["plain"]
    out = pd.DataFrame({
        "orders": table["orders"],
        "net_value": table["net_value"],
        "orders_x": table["orders"] / reference["orders"],
        "bad_rate_x": table["bad_order_rate"] / reference["bad_order_rate"],
        "net_x": table["net_value"] / reference["net_value"],
        "oracle_share": (table["net_value"] - reference["net_value"]) / (table.loc["oracle", "net_value"] - reference["net_value"]),
        "gini_x": table["gini"] / reference["gini"],
    })
    print(f"served policy: bad_cost {cost:g}, risk term d = {state.risk_term:.3f} "
          f"(calibration a = {state.purchase_calibration[0]:.3f}), bad-order model {tuple(round(v, 3) for v in state.bad_model)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, help="a simulated dataset (default: simulate one)")
    parser.add_argument("--model", help="a trained model URI or bundle directory for --events")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--merchants", type=int, default=150)
    parser.add_argument("--sim-seed", type=int, default=1)
    parser.add_argument("--bad-purchase-grade", type=int, default=None,
                        help="training label of a purchase that ended badly (default: the training default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.events is None or args.model is None:
            print(f"preparing: simulate {args.merchants} merchants x 45 days (seed {args.sim_seed}), train")
            events, model = _prepare(Path(tmp), args.merchants, 45, args.sim_seed, args.bad_purchase_grade)
        else:
            events, model = args.events, args.model
        table = decompose(model, events, args.days, args.seeds)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string())


if __name__ == "__main__":
    main()
