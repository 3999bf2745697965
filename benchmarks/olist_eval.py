"""Does the trust index as of 2018-01-01 predict Olist sellers' later 1-2 star reviews?

Builds the trust snapshot from the Olist sample (``../shared/data/olist``, adapted by
:func:`trustfeed.training.olist.load_olist`) as of the cut, then compares two predictors
of what happens after the cut:

- ``trust_index`` (higher = fewer bad orders expected), and
- the raw mean rating before the cut (the naive baseline).

Metrics:

- Spearman between the predictor and each seller's later share of 1-2 star reviews, over
  sellers with at least ``--min-later`` reviewed orders after the cut and at least one order
  before it (sign flipped so that higher = better prediction);
- per-order AUC: each reviewed order placed after the cut, label = 1-2 stars, score = the
  seller's predicted risk as of the cut; unweighted and weighted by the sample's delivered
  weight (see NOTES.md: delivered orders are under-sampled ~18.65x). Sellers unknown at the
  cut get the snapshot's cold-start value (trust) or the global mean rating (baseline).

Usage::

    python benchmarks/olist_eval.py [--as-of 2018-01-01] [--half-life 45] [--horizon 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

OLIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "olist"


def weighted_auc(score: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    weight = np.ones(len(score)) if weight is None else np.asarray(weight, dtype=float)
    frame = pd.DataFrame({"s": score, "pos": weight * (label == 1), "neg": weight * (label == 0)})
    by_score = frame.groupby("s", sort=True)[["pos", "neg"]].sum()
    neg_below = by_score["neg"].cumsum() - by_score["neg"]
    wins = (by_score["pos"] * (neg_below + 0.5 * by_score["neg"])).sum()
    total = by_score["pos"].sum() * by_score["neg"].sum()
    return float(wins / total) if total > 0 else float("nan")


def evaluate(as_of: str, config_overrides: dict[str, float], min_later: int) -> dict[str, object]:
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import TrustConfig, build_snapshot
    from trustfeed.training.olist import load_olist

    tables = load_olist(OLIST)
    events = validate_events(tables)
    cut = pd.Timestamp(as_of, tz="UTC")
    config = TrustConfig(**config_overrides)
    snapshot = build_snapshot(events, cut, config)
    merchants = snapshot.merchants.set_index("merchant_id")

    orders = tables["orders"]
    reviews = tables["reviews"].merge(orders[["order_id", "merchant_id", "created_at", "sample_weight"]], on="order_id", suffixes=("", "_order"))
    before = reviews[reviews["created_at"] < cut]
    later = reviews[(reviews["created_at_order"] >= cut)].copy()
    later["low"] = (later["rating"] <= 2).astype(int)
    mean_rating = before.groupby("merchant_id")["rating"].mean()
    global_mean = float(before["rating"].mean())

    per_seller = later.groupby("merchant_id").agg(later_reviews=("low", "size"), later_low_share=("low", "mean"))
    per_seller = per_seller.join(merchants[["trust_index", "n_orders_raw"]], how="inner")
    per_seller["mean_rating"] = mean_rating.reindex(per_seller.index)
    eligible = per_seller[(per_seller["later_reviews"] >= min_later) & (per_seller["n_orders_raw"] >= 1)]
    rho_trust = stats.spearmanr(eligible["trust_index"], -eligible["later_low_share"])[0]
    rated = eligible.dropna(subset=["mean_rating"])
    rho_rating = stats.spearmanr(rated["mean_rating"], -rated["later_low_share"])[0]
    rho_trust_rated = stats.spearmanr(rated["trust_index"], -rated["later_low_share"])[0]

    cold = float(merchants.loc[merchants["prior_only"], "trust_index"].median()) if merchants["prior_only"].any() else float(merchants["trust_index"].median())
    later["trust"] = later["merchant_id"].map(merchants["trust_index"]).fillna(cold)
    later["rating_before"] = later["merchant_id"].map(mean_rating).fillna(global_mean)
    label = later["low"].to_numpy()
    weight = later["sample_weight"].to_numpy()
    result = {
        "as_of": cut.isoformat(),
        "config": config_overrides,
        "index_model": snapshot.manifest["index_model"]["source"],
        "sellers_eligible": int(len(eligible)),
        "sellers_eligible_with_rating": int(len(rated)),
        "spearman_trust_vs_later_good_share": round(float(rho_trust), 4),
        "spearman_trust_vs_later_good_share_rated_only": round(float(rho_trust_rated), 4),
        "spearman_mean_rating_vs_later_good_share": round(float(rho_rating), 4),
        "later_reviewed_orders": int(len(later)),
        "auc_trust": round(weighted_auc(-later["trust"].to_numpy(), label), 4),
        "auc_mean_rating": round(weighted_auc(-later["rating_before"].to_numpy(), label), 4),
        "auc_trust_weighted": round(weighted_auc(-later["trust"].to_numpy(), label, weight), 4),
        "auc_mean_rating_weighted": round(weighted_auc(-later["rating_before"].to_numpy(), label, weight), 4),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--as-of", default="2018-01-01")
    parser.add_argument("--half-life", type=float, default=None, help="TrustConfig.half_life_days (default: library default)")
    parser.add_argument("--horizon", type=float, default=None, help="TrustConfig.horizon_days")
    parser.add_argument("--min-label-orders", type=float, default=None)
    parser.add_argument("--min-later", type=int, default=5, help="reviewed later orders a seller needs for the Spearman")
    args = parser.parse_args(argv)
    overrides: dict[str, float] = {}
    if args.half_life is not None:
        overrides["half_life_days"] = args.half_life
    if args.horizon is not None:
        overrides["horizon_days"] = args.horizon
    if args.min_label_orders is not None:
        overrides["min_label_orders"] = args.min_label_orders
    print(json.dumps(evaluate(args.as_of, overrides, args.min_later), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
