"""Why the closed loop shows less than the one-shot view: the rollout with its parts switched off.

For one simulated platform and a bundle trained on it, the script runs
:func:`~trustfeed.training.evaluation.rollout.run_rollout` in four settings:

* ``full``: every dynamic on, trust snapshot and context rebuilt daily (``trustfeed rollout``);
* ``fixed``: every dynamic on, the rollout-start snapshot kept (no rebuild on the policy's own logs);
* ``static``: :meth:`~trustfeed.training.world.DynamicsConfig.off` (no buyer, creator or merchant
  response), daily rebuild;
* ``static_fixed``: neither; every policy then ranks the same requests and candidates every day,
  so this is the one-shot comparison spread over the rollout's days.

and reports, against plain LambdaMART, both the realized totals (drawn clicks, purchases and bad
orders) and the expected ones of the same slates (``expected_*``: the world's probabilities at
the served positions, without the draw noise), over the whole rollout and per block of days,
with per-seed paired differences.

Usage::

    python benchmarks/bench_loop_gap.py --events DIR --model BUNDLE [--days 14] [--seeds 3]
        [--settings full fixed static static_fixed] [--policies plain oracle trust_aware]
        [--csv OUT.csv]

Measured figures are in docs/rollout.md ("Why the loop showed less than one shot").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

SETTINGS = ("full", "fixed", "static", "static_fixed")


def run(events: Path, model: str, setting: str, days: int, seeds: int, policies: list[str]) -> pd.DataFrame:
    """The rollout's daily rows for one setting."""
    from trustfeed.training.evaluation.rollout import run_rollout
    from trustfeed.training.world import DynamicsConfig

    dynamics = DynamicsConfig.off() if setting.startswith("static") else DynamicsConfig()
    rebuild = days if setting.endswith("fixed") else 1  # days: only the rollout-start snapshot
    result = run_rollout(model, events, days=days, seeds=seeds, policies=policies, dynamics=dynamics,
                         rebuild_every_days=rebuild)
    return result.daily.assign(setting=setting)


def summary(daily: pd.DataFrame, blocks: list[tuple[int, int]]) -> pd.DataFrame:
    """Ratios against plain (realized and expected) per setting, policy and block of days."""
    rows = []
    for (setting, policy), frame in daily.groupby(["setting", "policy"], sort=False):
        plain = daily.loc[(daily["setting"] == setting) & (daily["policy"] == "plain")]
        oracle = daily.loc[(daily["setting"] == setting) & (daily["policy"] == "oracle")]
        for first, last in blocks:
            def total(part: pd.DataFrame, metric: str) -> float:
                return float(part.loc[part["day"].between(first, last), metric].sum())

            row: dict[str, object] = {"setting": setting, "policy": policy, "days": f"{first}-{last}"}
            for kind, prefix in (("real", ""), ("exp", "expected_")):
                orders, bad, net = (f"{prefix}orders", f"{prefix}bad_orders", f"{prefix}net_value")
                row[f"{kind}_net_x"] = total(frame, net) / total(plain, net)
                row[f"{kind}_orders_x"] = total(frame, orders) / total(plain, orders)
                row[f"{kind}_bad_rate_x"] = (total(frame, bad) / total(frame, orders)) / (total(plain, bad) / total(plain, orders))
                gain = total(oracle, net) - total(plain, net) if len(oracle) else float("nan")
                row[f"{kind}_oracle_share"] = (total(frame, net) - total(plain, net)) / gain if gain > 0 else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def paired(daily: pd.DataFrame) -> pd.DataFrame:
    """Per seed: policy minus plain on the whole rollout (realized and expected net value, orders)."""
    totals = daily.groupby(["setting", "policy", "seed"])[
        ["net_value", "expected_net_value", "orders", "expected_orders", "bad_orders", "expected_bad_orders"]].sum()
    plain = totals.xs("plain", level="policy")
    diff = totals.sub(plain, axis=0).drop(index="plain", level="policy")
    return diff.round(1)


def noise(diff: pd.DataFrame) -> pd.DataFrame:
    """Per setting and policy: the paired net-value difference drawn minus expected, mean and sd over seeds."""
    drawn_minus_expected = (diff["net_value"] - diff["expected_net_value"]).rename("noise")
    table = drawn_minus_expected.groupby(level=["setting", "policy"]).agg(["mean", "std", "count"])
    table["expected_difference"] = diff["expected_net_value"].groupby(level=["setting", "policy"]).mean()
    return table.round(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True, help="a dataset written by `trustfeed simulate`")
    parser.add_argument("--model", required=True, help="the bundle `trustfeed train` wrote for it")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--policies", nargs="+", default=["plain", "oracle", "trust_aware"])
    parser.add_argument("--csv", type=Path, help="write the daily rows here (appended per setting)")
    args = parser.parse_args()
    if "plain" not in args.policies:
        parser.error("--policies must include plain (the reference)")
    parts = []
    for setting in args.settings:
        started = time.perf_counter()
        part = run(args.events, args.model, setting, args.days, args.seeds, args.policies)
        print(f"{setting}: {time.perf_counter() - started:.0f} s", flush=True)
        parts.append(part)
        if args.csv is not None:
            pd.concat(parts, ignore_index=True).to_csv(args.csv, index=False)
    daily = pd.concat(parts, ignore_index=True)
    third = max(1, args.days // 3)
    blocks = [(0, args.days - 1), (0, third - 1), (third, 2 * third - 1), (2 * third, args.days - 1)]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_rows", 500):
        print(summary(daily, blocks).round(3).to_string(index=False))
        diff = paired(daily)
        print("\npolicy minus plain, per seed:")
        print(diff.to_string())
        print("\nnet value, policy minus plain: drawn minus expected over seeds (the draw noise of the comparison):")
        print(noise(diff).to_string())


if __name__ == "__main__":
    main()
