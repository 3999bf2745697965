"""Effect of position-bias correction (and of the trust policy) on the project's simulator.

The simulator logs a popularity-biased feed whose clicks are inflated at the top slots
(examination ``position ** -eta``). It also keeps the hidden, position-free click, purchase
and bad-order probabilities of every logged candidate, so each ranking can be scored
counterfactually: the expected clicks, good orders and bad orders it would get in its top
``k`` under the simulator's own examination model.

Arms: the logging policy's order, LambdaMART without and with unbiased LambdaMART (LightGBM
``position``), ``rank_xendcg``, and the unbiased model under the trust policy at several
trust weights.

Run::

    python benchmarks/position_bias.py --merchants 200 --days 30
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from trustfeed.features.events import validate_events
from trustfeed.features.progress import StderrProgress
from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
from trustfeed.ranker.policy import Policy, PolicyConfig
from trustfeed.training.dataset import DatasetConfig, build_training_frame, time_split
from trustfeed.training.simulate import SimConfig, simulate


def logged_ndcg(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> tuple[float, int]:
    """NDCG@k on the logged graded labels (gain 2^l - 1); lists without a positive are skipped."""
    request = np.repeat(np.arange(len(groups)), groups)
    frame = pd.DataFrame({"request": request, "label": labels, "score": scores})
    frame["rank"] = frame.groupby("request")["score"].rank(ascending=False, method="first")
    frame["ideal"] = frame.groupby("request")["label"].rank(ascending=False, method="first")
    gain = 2.0 ** frame["label"] - 1
    dcg = (gain / np.log2(frame["rank"] + 1)).where(frame["rank"] <= k, 0.0).groupby(frame["request"]).sum()
    idcg = (gain / np.log2(frame["ideal"] + 1)).where(frame["ideal"] <= k, 0.0).groupby(frame["request"]).sum()
    scored = idcg > 0
    return float((dcg[scored] / idcg[scored]).mean()), int((~scored).sum())


def exposure_gini(frame: pd.DataFrame, rank: pd.Series, k: int) -> float:
    """Gini of creator exposure (1 / log2(rank + 1) in the top k) over every candidate creator."""
    exposure = np.where(rank <= k, 1.0 / np.log2(rank + 1), 0.0)
    x = np.sort(pd.Series(exposure).groupby(frame["creator_id"].to_numpy()).sum().to_numpy())
    n = len(x)
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * x.sum()))


def counterfactual(frame: pd.DataFrame, scores: np.ndarray, eta: float, k: int = 10) -> dict[str, float]:
    """Expected outcomes of showing each request's top k in score order (simulator truth)."""
    ranked = frame.assign(score=scores)
    ranked["rank"] = ranked.groupby("request_id")["score"].rank(ascending=False, method="first")
    exam = np.where(ranked["rank"] <= k, ranked["rank"] ** -eta, 0.0)
    clicks = exam * ranked["p_click"]
    orders = clicks * ranked["p_purchase"]
    bad = orders * ranked["p_bad"]
    good = orders - bad
    gain = (ranked["p_click"] * (1 + ranked["p_purchase"] * (1 - 3 * ranked["p_bad"]))).clip(lower=0.0)
    ranked["gain"] = gain
    ranked["ideal"] = ranked.groupby("request_id")["gain"].rank(ascending=False, method="first")
    dcg = (gain / np.log2(ranked["rank"] + 1)).where(ranked["rank"] <= k, 0.0).groupby(ranked["request_id"]).sum()
    idcg = (gain / np.log2(ranked["ideal"] + 1)).where(ranked["ideal"] <= k, 0.0).groupby(ranked["request_id"]).sum()
    return {
        "truth_ndcg@10": float((dcg / idcg)[idcg > 0].mean()),
        "creator_gini": exposure_gini(ranked, ranked["rank"], k),
        "exp_clicks": float(clicks.sum()),
        "exp_orders": float(orders.sum()),
        "exp_good_orders": float(good.sum()),
        "exp_bad_orders": float(bad.sum()),
        "bad_order_rate": float(bad.sum() / max(orders.sum(), 1e-12)),
        "net_value": float(good.sum() - 2 * bad.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merchants", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--warmup-days", type=int, default=7, help="history before the first training day")
    parser.add_argument("--snapshot-every", type=int, default=2)
    parser.add_argument("--valid-fraction", type=float, default=0.25)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    progress = StderrProgress()
    started = time.perf_counter()
    platform = simulate(SimConfig(seed=args.seed, merchants=args.merchants, days=args.days))
    events = validate_events(platform.tables)
    first = events["impressions"]["ts"].min().floor("D")
    data = build_training_frame(
        events,
        start=first + pd.Timedelta(days=args.warmup_days),
        config=DatasetConfig(snapshot_every_days=args.snapshot_every),
        progress=progress,
    )
    train, valid = time_split(data, valid_fraction=args.valid_fraction)
    progress(f"{len(train)} training rows, {len(valid)} validation rows, {len(data.feature_names)} features")
    truth = platform.truth["impressions"]
    frame = valid.frame[["request_id", "stream_id", "creator_id"]].merge(truth, on=["request_id", "stream_id"], how="left", validate="one_to_one")
    eta = platform.config.position_bias_eta

    results: dict[str, dict[str, float]] = {}

    def record(name: str, scores: np.ndarray) -> None:
        ndcg, skipped = logged_ndcg(valid.labels, scores, valid.groups())
        results[name] = {"logged_ndcg@10": ndcg, **counterfactual(frame, scores, eta)}
        results[name]["lists_without_positive"] = skipped

    record("logging policy", -valid.positions.astype(float))
    arms = {
        "lambdarank": LambdaMARTConfig(position_bias=False),
        "lambdarank + position bias": LambdaMARTConfig(position_bias=True),
        "rank_xendcg": LambdaMARTConfig(objective="rank_xendcg", position_bias=False),
    }
    models = {}
    # the comparison arm of the issue: the same LambdaMART without any trust feature
    trust_free = [
        j for j, (name, source) in enumerate(zip(data.schema["feature_names"], data.schema["sources"], strict=True))
        if not (source.startswith("merchant:") or any(w in name for w in ("trust", "violation", "report", "banned", "bad")))
    ]
    plain_names = [data.feature_names[j] for j in trust_free]
    progress(f"fitting plain lambdarank + position bias ({len(plain_names)} features, no trust signals)")
    plain = LambdaMART(LambdaMARTConfig(position_bias=True)).fit(
        train.features()[:, trust_free], train.labels, train.groups(), position=train.positions,
        X_valid=valid.features()[:, trust_free], y_valid=valid.labels, group_valid=valid.groups(),
        feature_names=plain_names, categorical=[c for c in data.categorical if c in plain_names],
    )
    record("plain (no trust features) + position bias", plain.predict(valid.features()[:, trust_free]))
    results["plain (no trust features) + position bias"]["best_iteration"] = plain.best_iteration_
    for name, config in arms.items():
        progress(f"fitting {name}")
        model = LambdaMART(config).fit(
            train.features(), train.labels, train.groups(), position=train.positions,
            X_valid=valid.features(), y_valid=valid.labels, group_valid=valid.groups(),
            feature_names=train.feature_names, categorical=train.categorical, monotone=train.monotone,
        )
        models[name] = model
        record(name, model.predict(valid.features()))
        results[name]["best_iteration"] = model.best_iteration_

    unbiased = models["lambdarank + position bias"]
    relevance = unbiased.predict(valid.features())
    trust = valid.frame["policy_trust"].to_numpy()
    for weight in (0.5, 1.0, 2.0):
        score = Policy(PolicyConfig(trust_weight=weight)).score(relevance, trust, group=valid.groups())
        record(f"position bias + trust policy (w={weight})", score)

    table = pd.DataFrame(results).T
    pd.set_option("display.width", 200)
    print(table.round(4).to_string())
    importance = unbiased.feature_importance().head(10)
    print("\ntop features (gain) of the unbiased model:\n" + importance.round(1).to_string())
    print(f"\n{time.perf_counter() - started:.0f} s; seed {args.seed}, {args.merchants} merchants, {args.days} days")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
