"""How fast trust reacts to exit scams and how little report bombing moves it.

Simulates a platform with both attacks switched on (``SimConfig.exit_scam_rate`` and
``report_bombing_rate``), builds trust snapshots every ``--step-hours`` over the second half
of the window (where switches and campaigns fall), and prints the reaction metrics of
:mod:`trustfeed.training.evaluation.reaction`: per switched merchant the hours from the switch
and from its first evidence until its trust percentile fell below 0.2 and the orders it took
meanwhile; per bombed merchant the largest percentile drop, also against the same log without
the campaign's reports. Then the long-run accuracy at the window's end (Spearman with latent
trust over merchants with >= 20 orders that did not switch). Times are upper bounds at the
grid's resolution.

Usage::

    python benchmarks/bench_reaction.py [--seed 1] [--merchants 300] [--days 40] [--step-hours 6] [--config JSON]

``--config '{"ridge": 0.05}'`` overrides TrustConfig fields (the same snapshots under another setting).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd
from scipy import stats


def main(argv: list[str] | None = None) -> int:
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import TrustConfig, build_snapshot
    from trustfeed.training.evaluation import reaction
    from trustfeed.training.simulate import SimConfig, simulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--merchants", type=int, default=300)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--step-hours", type=float, default=6.0)
    parser.add_argument("--exit-scam-rate", type=float, default=0.05)
    parser.add_argument("--report-bombing-rate", type=float, default=0.05)
    parser.add_argument("--config", default="{}", help="TrustConfig fields as JSON")
    args = parser.parse_args(argv)
    trust_config = TrustConfig(**json.loads(args.config))

    config = SimConfig(
        seed=args.seed,
        merchants=args.merchants,
        days=args.days,
        exit_scam_rate=args.exit_scam_rate,
        report_bombing_rate=args.report_bombing_rate,
    )
    platform = simulate(config)
    truth = platform.truth["merchants"]
    events = validate_events(platform.tables)
    reports = platform.tables["reports"]
    bombed = truth.dropna(subset=["bombed_from"])[["merchant_id", "bombed_from", "bombed_until"]]
    in_burst = reports.merge(bombed, on="merchant_id", how="left")
    campaign = (in_burst["created_at"] >= in_burst["bombed_from"]) & (in_burst["created_at"] <= in_burst["bombed_until"])
    campaign &= ~in_burst["reporter_id"].isin(platform.tables["orders"]["user_id"])
    clean = validate_events({**platform.tables, "reports": reports[~campaign.to_numpy(dtype=bool, na_value=False)]})

    start = config.start_time + pd.Timedelta(days=args.days * 0.4)
    grid = pd.date_range(start, config.end_time, freq=pd.Timedelta(hours=args.step_hours))
    started = time.perf_counter()
    snapshots = {t: build_snapshot(events, t, trust_config).merchants for t in grid}
    unbombed = {t: build_snapshot(clean, t, trust_config).merchants for t in grid}
    seconds = time.perf_counter() - started

    switched = reaction.reaction_times(snapshots, truth, platform.tables["orders"], platform.tables["after_sales"])
    drops = reaction.bombing_drops(snapshots, truth, unbombed=unbombed)
    last = snapshots[grid[-1]].merge(truth, on="merchant_id")
    honest = last[(last["n_orders_raw"] >= 20) & last["exit_scam_at"].isna()]
    summary = reaction.summarise(switched, drops)
    summary["spearman_latent_trust_at_end"] = float(stats.spearmanr(honest["trust_index"], honest["latent_trust"])[0])
    summary["honest_merchants_with_alarm"] = float((honest["early_warning"] > 0).mean())
    summary["snapshots"] = float(2 * len(grid))
    summary["snapshot_seconds"] = round(seconds, 1)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(switched.round(1).to_string(index=False))
        print(drops.round({"percentile_before": 3, "lowest_percentile": 3, "largest_drop": 3, "drop_vs_unbombed": 3}).to_string(index=False))
    print(json.dumps({k: (round(v, 3) if np.isfinite(v) else None) for k, v in summary.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
