"""CPU cost and validation log-loss of the purchase model's fit under several settings.

Reads a saved training frame (``.npz`` with ``X, y, g, p, Xv, yv, names, cat, mono``: features,
graded labels, request sizes, positions, and the validation part). A click is a label >= 1, a
purchase a label >= 2 (the saved frame keeps no cancellation flag, so this counts cancelled
orders too: a proxy of the job's purchase label). Prints, per setting, the fit's CPU seconds,
trees per stage, the position coefficient, and the validation log-loss of the click stage (with
its position offset), of the purchase stage over the clicked rows, and of purchase overall.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_purchase_fit.py /work/data_s3/frame60.npz
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from trustfeed.ranker.purchase import PurchaseModel, PurchaseModelConfig

SETTINGS = {
    "before (lr 0.05, 2 passes, all rows)": dict(learning_rate=0.05, position_passes=2, max_click_rows=0),
    "lr 0.1, 2 passes, all rows": dict(learning_rate=0.1, position_passes=2, max_click_rows=0),
    "lr 0.1, 1 pass, 300k rows": dict(learning_rate=0.1, position_passes=1, max_click_rows=300_000),
    "default": {},
    "patience 15": dict(early_stopping_rounds=15),
    "session 5 default (15 leaves, l2 1)": dict(num_leaves=15, lambda_l2=1.0),
    "7 leaves, l2 10, lr 0.05": dict(num_leaves=7, lambda_l2=10.0, learning_rate=0.05),
    # session 7: the same trees for less work
    "lr 0.15": dict(learning_rate=0.15),
    "lr 0.2": dict(learning_rate=0.2),
    "first pass lr 0.3": dict(first_pass_learning_rate=0.3),
    "first pass lr 0.5": dict(first_pass_learning_rate=0.5),
    "first pass lr 0.3, lr 0.15": dict(first_pass_learning_rate=0.3, learning_rate=0.15),
    "max_bin 63": dict(max_bin=63),
    "200k click rows": dict(max_click_rows=200_000),
    # session 8: stronger L2 (the one-shot relevance gain of bench_relevance_gap)
    "l2 10": dict(lambda_l2=10.0),
    "l2 30": dict(lambda_l2=30.0),
}


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frame")
    parser.add_argument("--only", nargs="*", help="names of settings (default: all)")
    args = parser.parse_args()
    z = np.load(args.frame, allow_pickle=False)
    X, y, g, p, Xv, yv = (z[k] for k in ("X", "y", "g", "p", "Xv", "yv"))
    pv = np.ones(len(yv), dtype=np.int64)
    if "pv" in z.files:
        pv = z["pv"]
    else:  # no validation positions saved: rebuild 1..n within each validation request
        gv = z["gv"]
        pv = np.arange(len(yv)) - np.repeat(np.cumsum(gv) - gv, gv) + 1
    names, cat, mono = list(z["names"]), list(z["cat"]), [int(d) for d in z["mono"]]
    print(f"{len(y):,} training rows ({len(g):,} requests), {len(yv):,} validation rows")
    for label, overrides in SETTINGS.items():
        if args.only and label not in args.only:
            continue
        model = PurchaseModel(PurchaseModelConfig(**overrides))
        start, wall = time.process_time(), time.perf_counter()
        model.fit(X, y >= 1, y >= 2, p, Xv, yv >= 1, yv >= 2, pv, feature_names=names, categorical=cat,
                  monotone=mono, groups=g)
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
        info = model.fit_info_
        click_raw = model.click_booster_.predict(Xv, raw_score=True) + model.position_coef_ * np.log(pv)
        click_v = (yv >= 1).astype(float)
        seen = click_v > 0
        buy_raw = model.purchase_booster_.predict(Xv[seen], raw_score=True)
        print(f"{label}: cpu {cpu:.1f} s (wall {wall:.1f}), click rows {info['click_rows']:,}, trees {info['click_trees']}/"
              f"{info['purchase_trees']}, g {info['position_coef']:.3f}, "
              f"click logloss {_logloss(click_v, 1 / (1 + np.exp(-click_raw))):.5f}, "
              f"purchase|click logloss {_logloss((yv[seen] >= 2).astype(float), 1 / (1 + np.exp(-buy_raw))):.5f}, "
              f"purchase logloss {info['valid_purchase_logloss']:.5f}", flush=True)


if __name__ == "__main__":
    main()
