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
* ``policy_d_max``: the risk term at its monotone bound ``1 + bad_cost`` (the most the
  calibration may soften the trust penalty);
* where the purchase calibration could gain, each bound fitted on the *true* purchase
  probabilities of the shown candidates (no calibration fitted from a log can do better):
  ``policy_truth_calibration`` one ``(a, b, d)`` for all requests, ``policy_request_offset``
  the policy's purchase estimate scaled per request so its sum matches the world's (a
  per-request base rate), ``policy_request_slope`` a slope and an offset per request (a
  per-request temperature);
* ``policy_truth_bad_model``: the policy's purchase estimate with the bad-order model of the
  policy's form fitted on the world's bad-order probabilities (a bound of refitting it);
* ``policy_cost1`` / ``policy_cost3``: the ranking charges a bad order 1 or 3 good orders (the
  net value still counts it at ``bad_cost``);
* ``policy_balanced``: the served policy with the exposure balancer (the order actually served);
* ``policy_true_host_factor``: the policy's purchase estimate and bad-order model, the latter
  scaled by the world's true host factor of each candidate's creator (normalised to mean 1):
  the ceiling of a per-host term in the bad-order model;
* ``model_purchase_true_bad``: the policy's purchase estimate with the *true* bad-order
  probability (is the trust side the problem?);
* ``true_purchase_model_bad``: the *true* purchase probability with the policy's bad-order
  model (is the relevance side the problem?);
* ``true_purchase``: a perfect purchase ranking; ``oracle``: true expected net value.

The world is advanced each day with the served order (balancer on), so later days see the
served policy's consequences. Orders, bad-order rate, net value and creator-exposure Gini are
printed relative to ``plain``, with the share of the oracle's net-value gain, and the
``(a, b, d)`` the truth gives next to the fitted ones. One-shot: no
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


def _value(purchase: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The expected-value score of a purchase estimate (a negative value factor alone, as the policy)."""
    return np.where(factor >= 0.0, purchase * factor, factor)


def _truth_calibration(relevance: np.ndarray, model_bad: np.ndarray, bought: np.ndarray,
                       shown: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, d)`` of ``P(purchase | examined) = sigmoid(a s + b + d p_bad)`` fitted on the world's own
    purchase probabilities of the shown candidates (fractional outcomes): the best calibration of this form."""
    from trustfeed.ranker._expected_value import logistic_regression

    keep = shown & np.isfinite(relevance)
    s, q = relevance[keep], model_bad[keep]
    a, b, d = logistic_regression(np.column_stack([s, np.ones_like(s), q]), bought[keep])
    return float(a), float(b), float(d)


def _truth_bad_model(trust: np.ndarray, p_bad: np.ndarray, shown: np.ndarray, eps: float) -> tuple[float, float]:
    """``(c0, c1)`` of ``p_bad = sigmoid(c0 + c1 logit(trust))`` fitted on the world's own bad-order
    probabilities of the shown candidates: the best bad-order model of the policy's form."""
    from trustfeed.ranker._expected_value import logistic_regression

    t = np.clip(np.where(np.isnan(trust), 0.5, trust), eps, 1 - eps)
    x = (np.log(t) - np.log1p(-t))[shown]
    c0, c1 = logistic_regression(np.column_stack([np.ones_like(x), x]), p_bad[shown])
    return float(c0), float(min(c1, 0.0))


def _request_offset(purchase: np.ndarray, bought: np.ndarray, request: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """The policy's purchase estimate scaled per request so its sum matches the world's (an oracle offset)."""
    codes, inverse = np.unique(request, return_inverse=True)
    weight = shown & np.isfinite(purchase)
    model_sum = np.bincount(inverse, weights=np.where(weight, purchase, 0.0), minlength=codes.size)
    true_sum = np.bincount(inverse, weights=np.where(weight, bought, 0.0), minlength=codes.size)
    ratio = np.where(model_sum > 0, true_sum / np.maximum(model_sum, 1e-300), 1.0)
    return np.minimum(purchase * ratio[inverse], 1.0)


def _request_slope(relevance: np.ndarray, model_bad: np.ndarray, risk_term: float, bought: np.ndarray,
                   request: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """Per request, the least-squares line of the true purchase log-odds on the relevance score (risk term
    kept): an oracle temperature and offset per request; a non-positive slope keeps the global ranking."""
    codes, inverse = np.unique(request, return_inverse=True)
    keep = shown & np.isfinite(relevance)
    s = np.where(keep, relevance, 0.0)
    y = np.log(np.clip(bought, 1e-9, 1 - 1e-9)) - np.log1p(-np.clip(bought, 1e-9, 1 - 1e-9)) - risk_term * model_bad
    y = np.where(keep, y, 0.0)
    w = keep.astype(np.float64)

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=values * w, minlength=codes.size)

    n, sx, sy = total(np.ones_like(s)), total(s), total(y)
    mean_x, mean_y = sx / np.maximum(n, 1), sy / np.maximum(n, 1)
    cov = total(s * y) / np.maximum(n, 1) - mean_x * mean_y
    var = total(s * s) / np.maximum(n, 1) - mean_x * mean_x
    slope = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
    slope = np.where(slope > 0, slope, 1.0)
    logit = slope[inverse] * s + (mean_y - slope * mean_x)[inverse] + risk_term * model_bad
    return 1.0 / (1.0 + np.exp(-logit))


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
    fits: list[tuple[float, float, float]] = []
    bad_fits: list[tuple[float, float]] = []
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
            request_ids = rows["request"].to_numpy()
            truth_fit = _truth_calibration(relevance, model_bad, bought, shown)
            fits.append(truth_fit)
            bad_fit = _truth_bad_model(trust, p_bad, shown, config.eps)
            bad_fits.append(bad_fit)
            refitted_bad = bad_probability(trust, bad_fit, config.eps)
            true_calibrated = purchase_probability(relevance, truth_fit[:2], model_bad, truth_fit[2])
            factor = 1.0 - (1.0 + cost) * model_bad
            # the world's host factor of each candidate's creator (its bad orders scale with the host's
            # quality), normalised to mean 1 over the shown candidates: what a perfect per-host bad-order
            # term could add to the merchant-only model
            host = 0.75 + 0.75 * (1.0 - np.asarray(world.creators["quality"])[rows["creator"].to_numpy()])
            host = host / host[shown].mean()
            rankings = {
                "plain": rows["relevance_plain"].to_numpy(),
                "relevance_only": relevance,
                "policy": expected_value_score(relevance, trust, state.purchase_calibration, state.bad_model, cost,
                                               config.eps, state.risk_term),
                "policy_no_risk_term": expected_value_score(relevance, trust, state.purchase_calibration,
                                                            state.bad_model, cost, config.eps, 0.0),
                "policy_d_max": expected_value_score(relevance, trust, state.purchase_calibration, state.bad_model,
                                                     cost, config.eps, 1.0 + cost),
                # bounds of a better calibration of the policy's own purchase estimate, fitted on the truth:
                # one (a, b, d) for all requests; an offset per request (its purchases summed right);
                # a slope and an offset per request
                "policy_truth_calibration": _value(true_calibrated, factor),
                "policy_request_offset": _value(_request_offset(model_purchase, bought, request_ids, shown), factor),
                "policy_request_slope": _value(_request_slope(relevance, model_bad, state.risk_term, bought, request_ids,
                                                              shown), factor),
                "policy_truth_bad_model": _value(model_purchase, 1.0 - (1.0 + cost) * refitted_bad),
                "policy_cost1": expected_value_score(relevance, trust, state.purchase_calibration, state.bad_model, 1.0,
                                                     config.eps, state.risk_term),
                "policy_cost3": expected_value_score(relevance, trust, state.purchase_calibration, state.bad_model, 3.0,
                                                     config.eps, state.risk_term),
                "policy_balanced": -rows["position_policy_balanced"].to_numpy(),
                "policy_true_host_factor": _value(model_purchase, 1.0 - (1.0 + cost) * np.clip(model_bad * host, 0.0, 1.0)),
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
    a_true, b_true, d_true = np.mean(fits, axis=0)
    print(f"purchase calibration fitted on the truth (mean over days): a = {a_true:.3f}, b = {b_true:.3f}, d = {d_true:.3f}")
    c0_true, c1_true = np.mean(bad_fits, axis=0)
    print(f"bad-order model fitted on the truth (mean over days): c0 = {c0_true:.3f}, c1 = {c1_true:.3f}")
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
