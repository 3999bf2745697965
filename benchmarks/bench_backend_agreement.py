"""Do the pandas- and Dask-trained rankers serve alike? One-shot outcomes on held-out requests.

For each seed a platform is simulated (its own seed, so the data were not used to develop
either backend) and ``train`` runs twice on it, once per backend, with the same job config.
``--against default`` (the default) compares with the pandas default job: LambdaMART learns
the position bias in process (LightGBM's distributed ranker cannot, so the Dask job trains
without it) and both jobs fit the purchase model, which the served policy ranks on.
``--against no-position-bias`` turns position debiasing off on both sides, so the LambdaMART
fits differ only by the backend. Each job's in-job evaluation ranks the same latest
held-out requests; the script prints the served policy's held-out NDCG@10 and its
counterfactual expected orders, net value and bad-order rate on the simulator's truth, and the relative
difference Dask vs pandas.

``--worlds`` picks the platforms: ``base`` is the simulator's default platform, ``shifted``
a differently generated one (exit scams and report bombing on, twice the brushers, steeper
position bias, no impulse buying, shorter slates), so the agreement is not a property of
one data-generating setting.

Run::

    python benchmarks/bench_backend_agreement.py --seeds 11 12 --merchants 150 --days 30
    python benchmarks/bench_backend_agreement.py --seeds 21 22 23 24 --worlds base shifted
    python benchmarks/bench_backend_agreement.py --seeds 11 --against no-position-bias
    python benchmarks/bench_backend_agreement.py --seeds 31 32 --worlds base shifted --max-click-rows 20000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METRICS = ("ndcg_at_10", "counterfactual.served.expected_orders", "counterfactual.served.net_value",
           "counterfactual.served.bad_order_rate")
# simulator settings of each platform (on top of seed, merchants, days)
WORLDS: dict[str, dict[str, Any]] = {
    "base": {},
    "shifted": {"exit_scam_rate": 0.05, "report_bombing_rate": 0.05, "brusher_rate": 0.12, "position_bias_eta": 1.0,
                "impulse_strength": 0.0, "slate_min": 12, "slate_max": 20},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    parser.add_argument("--merchants", type=int, default=150)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=3000, help="held-out requests ranked (the latest ones)")
    parser.add_argument("--worlds", nargs="+", choices=sorted(WORLDS), default=["base"])
    parser.add_argument("--against", choices=("default", "no-position-bias"), default="default",
                        help="the pandas default job, or both backends without position debiasing")
    parser.add_argument("--max-click-rows", type=int, default=None,
                        help="the purchase model's click-stage cap (default: its default); below the training rows "
                             "the click stage learns from a sample of requests (both backends draw the same one)")
    parser.add_argument("--without-purchase-model", action="store_true",
                        help="no purchase model on either side: the policy ranks on LambdaMART (earlier sessions)")
    parser.add_argument("--compare", choices=("dask", "resample"), default="dask",
                        help="dask: pandas vs Dask; resample: pandas vs pandas with another purchase-model seed "
                             "(another click sample: the noise floor of the comparison)")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.ranker.purchase import PurchaseModelConfig
    from trustfeed.training.evaluation import EvalConfig
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import TrainJobConfig, train

    worst = 0.0
    other = "dask" if args.compare == "dask" else "resampled"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as root:
        for world, seed in [(w, s) for w in args.worlds for s in args.seeds]:
            events = Path(root) / f"{world}{seed}"
            write_dataset(simulate(SimConfig(seed=seed, merchants=args.merchants, days=args.days, **WORLDS[world])), events)
            base = TrainJobConfig(
                events=events, tracking_uri=f"sqlite:///{root}/mlflow.db", output_dir=Path(root) / "models",
                model=LambdaMARTConfig(position_bias=args.against == "default"), train_plain=False,
                purchase_model=(None if args.without_purchase_model else PurchaseModelConfig() if args.max_click_rows is None
                                else PurchaseModelConfig(max_click_rows=args.max_click_rows)),
                evaluation=EvalConfig(max_requests=args.requests, sweep_strengths=(0.0,), fairco_strengths=(),
                                      pmmf_strengths=()),
            )
            results = {}
            runs = {"pandas": base, other: replace(base, backend="dask")}
            if args.compare == "resample":
                assert base.purchase_model is not None
                runs[other] = replace(base, purchase_model=replace(base.purchase_model, seed=base.purchase_model.seed + 1))
            for backend, job in runs.items():
                start = time.perf_counter()
                result = train(replace(job, output_dir=Path(root) / f"models-{backend}"))
                results[backend] = result.metrics
                ranks_on = "purchase model" if (result.bundle_dir / "purchase_model").is_dir() else "LambdaMART score"
                print(f"{world} seed {seed} {backend:9s} {time.perf_counter() - start:6.1f} s (load {os.getloadavg()[0]:.1f}, "
                      f"ranks on the {ranks_on})  "
                      + "  ".join(f"{m} {results[backend][m]:.4f}" for m in METRICS), flush=True)
            diffs = {m: results[other][m] / results["pandas"][m] - 1.0 for m in METRICS}
            worst = max(worst, *(abs(d) for d in diffs.values()))
            rows.append((world, seed, diffs))
            print(f"{world} seed {seed} {other} vs pandas: " + "  ".join(f"{m} {d:+.2%}" for m, d in diffs.items()), flush=True)
    print(f"largest relative difference: {worst:.2%}")
    for metric in METRICS:
        values = [d[metric] for _, _, d in rows]
        print(f"{metric}: mean {sum(values) / len(values):+.2%}, largest |difference| {max(abs(v) for v in values):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
