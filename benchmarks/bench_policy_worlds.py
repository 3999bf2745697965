"""The served policy in the closed loop on three settings of the simulated world.

Our simulator's risky merchants convert better (impulse selling: ``SimConfig.impulse_strength``
1, the default), so on it even the oracle cuts few bad orders. A platform where risk is not
tied to conversion (``impulse_strength`` 0) is the other end: there the oracle's bad-order
rate falls well below plain ranking's, and a policy that prices risk too softly gives that cut
away. ``risky`` (:data:`trustfeed.training.simulate.RISKY`) is a platform where about one order
in five goes wrong, most of them at a minority of low-trust shops: there trust matters most,
the oracle cuts the bad-order rate by about a quarter, and a policy that prices risk without
knowing relevance well pays for it in orders. A policy choice is kept only if it holds on every
setting.

For each setting and platform seed the script simulates the platform (``--merchants``, 45
days), trains the default bundle with the real training job, then runs the closed loop
(:func:`~trustfeed.training.evaluation.rollout.run_rollout`, weekly snapshot rebuild, the same
random numbers for every policy) with ``plain`` (LambdaMART without trust features),
``oracle`` (true expected net value), the served policy with and without the balancer, and the
policy variants named in ``--variants`` (:data:`VARIANTS`: each changes only the policy's
config or fitted state, so they share the bundle); ``--purchase-variant`` trains a second bundle
with other purchase-model settings and runs its served policy in the same loop. It prints, per platform and on the mean of
a setting's platforms, each policy's ratios against plain (net value, orders, bad-order rate,
feed requests in the last 7 days) and its share of the oracle's net-value gain, next to the issue's bars
(share >= 0.6, orders >= 0.92x, bad-order rate <= 0.78x, end visit rate >= plain's).

Usage (a shared machine: one thread, nice)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_policy_worlds.py --work DIR
        [--worlds impulse no_impulse risky] [--platforms 1 2] [--merchants 150] [--days 21] [--seeds 3]
        [--variants trust_aware_cost3 ...] [--purchase-variant LABEL:key=value,...] [--prepare-only] [--from-csv]

``--work`` keeps the datasets and bundles (reused when present) and each rollout's per-seed
totals (``loop_<setting>_<seed>.csv``). Measured figures are in docs/rollout.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from trustfeed.training.simulate import RISKY

WORLDS: dict[str, dict[str, Any]] = {
    "impulse": {},  # the simulator's default: low-trust merchants convert better
    "no_impulse": {"impulse_strength": 0.0},  # conversion does not depend on the merchant's risk
    "risky": dict(RISKY),  # bad orders common and concentrated: more low-trust shops, steeper risk
}
BASE_POLICIES = ["plain", "oracle", "trust_aware", "trust_aware_balanced"]
METRICS = ["net_value", "orders", "bad_orders", "bad_order_rate", "end_visits", "buyer_retention", "gini",
           "expected_net_value", "expected_orders", "expected_bad_orders"]


def _policy_variant(label: str, change: Callable[[Any], Any], balancer: bool = False) -> Any:
    """A rollout entry: the served pipeline (balancer on or off) with ``change(policy) -> policy``."""
    from trustfeed.training.evaluation.policies import PolicySpec, served_pipeline
    from trustfeed.serving import FeedRanker

    def build(context: Any) -> Any:
        pipeline = served_pipeline(context.served, balancer=balancer)
        pipeline.policy = change(pipeline.policy)
        return FeedRanker(pipeline, record_served=False)

    return PolicySpec(label, build)


def _config(**changes: Any) -> Callable[[Any], Any]:
    from trustfeed.ranker.policy import Policy

    return lambda policy: Policy(replace(policy.config, **changes), policy.state)


def _state(**changes: Any) -> Callable[[Any], Any]:
    from trustfeed.ranker.policy import Policy

    return lambda policy: Policy(policy.config, None if policy.state is None else replace(policy.state, **changes))


def _bound(level: float, bad_rate: float | None) -> Callable[[Any], Any]:
    """Risk at a credible bound; a state fitted before it recorded its prior gets ``bad_rate``."""
    from trustfeed.ranker.policy import Policy

    def change(policy: Any) -> Any:
        state = policy.state
        if state is not None and state.bad_rate is None and bad_rate is not None:
            state = replace(state, bad_rate=bad_rate)
        return Policy(replace(policy.config, risk_bound_level=level), state)

    return change


def recorded_bad_rate(root: Path) -> float | None:
    """The training job's ``fitted.policy.train_bad_rate`` in the platform's MLflow store (``None``: absent)."""
    import sqlite3

    path = root / "mlflow.db"
    if not path.is_file():
        return None
    with sqlite3.connect(path) as db:
        row = db.execute("select value from params where key = 'fitted.policy.train_bad_rate' limit 1").fetchone()
    return float(row[0]) if row else None


def variants(bad_rate: float | None = None) -> dict[str, Any]:
    """Policy variants by name (each a change of the served policy's config or state).

    ``bad_rate``: the prior of the credible-bound variants for bundles whose state predates it.
    """
    return {
        "trust_aware_cost3": _policy_variant("bad_cost 3 in the ranking", _config(bad_cost=3.0)),
        "trust_aware_cost5": _policy_variant("bad_cost 5 in the ranking", _config(bad_cost=5.0)),
        "trust_aware_no_risk_term": _policy_variant("risk term d = 0", _state(risk_term=0.0)),
        "trust_aware_index_calibration": _policy_variant("p_bad = 1 - trust (the index's own calibration)",
                                                         _state(bad_model=(0.0, -1.0))),
        # risk at an upper credible bound of the merchant's beta-binomial posterior (its record's orders)
        "trust_aware_bound80": _policy_variant("risk at the 80% credible bound", _bound(0.8, bad_rate)),
        "trust_aware_bound50": _policy_variant("risk at the posterior median", _bound(0.5, bad_rate)),
        "served_bound80": _policy_variant("risk at the 80% credible bound, balancer", _bound(0.8, bad_rate),
                                          balancer=True),
    }


def _bundle(root: Path, seed: int, merchants: int, world: dict[str, Any], purchase: tuple[str, dict[str, Any]] | None = None) -> str:
    """The default job's bundle on the platform; ``purchase=(label, overrides)``: the same job with
    ``PurchaseModelConfig`` overrides (its own bundle beside the default one, same events)."""
    from trustfeed.ranker.purchase import PurchaseModelConfig
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import TrainJobConfig, train

    events = root / "events"
    if not events.exists():
        write_dataset(simulate(SimConfig(seed=seed, merchants=merchants, days=45, **world)), events)
    suffix = "" if purchase is None else f"_{purchase[0]}"
    marker = root / f"bundle{suffix}.txt"
    if not marker.is_file():
        job = TrainJobConfig(events=events, tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                             output_dir=root / f"models{suffix}", evaluate=False)
        if purchase is not None:
            dataset = {k[len("dataset."):]: v for k, v in purchase[1].items() if k.startswith("dataset.")}
            model = {k: v for k, v in purchase[1].items() if not k.startswith("dataset.")}
            job = replace(job, purchase_model=PurchaseModelConfig(**{**PurchaseModelConfig().to_dict(), **model}),
                          dataset=replace(job.dataset, **dataset))
        marker.write_text(str(train(job).bundle_dir))
    return marker.read_text().strip()


def _parse_purchase_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:key=value,...`` -> (label, overrides): ``PurchaseModelConfig`` fields, and
    ``dataset.<field>`` for the job's ``DatasetConfig`` (e.g. ``dataset.fresh_viewer_history=false``)."""
    label, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        flag = {"true": True, "false": False}.get(value.lower())
        overrides[key] = flag if flag is not None else float(value) if "." in value else int(value)
    return label, overrides


def _other_bundle_policies(label: str, bundle: str) -> dict[str, Any]:
    """``trust_aware@LABEL`` and ``trust_aware_balanced@LABEL``: the served policy of another bundle
    (same platform, another purchase model), in the same loop as the default bundle's policies."""
    from trustfeed.serving import FeedRanker
    from trustfeed.training.evaluation.policies import PolicySpec, served_pipeline
    from trustfeed.training.evaluation.rollout import _load_model

    loaded: list[Any] = []

    def spec(balancer: bool) -> Any:
        def build(context: Any) -> Any:
            if not loaded:
                loaded.append(_load_model(bundle, None)[0])
            return FeedRanker(served_pipeline(loaded[0], balancer=balancer), record_served=False)

        return PolicySpec(f"{'served' if balancer else 'trust-aware'} with purchase model {label}", build)

    return {f"trust_aware@{label}": spec(False), f"trust_aware_balanced@{label}": spec(True)}


def summarise(cumulative: pd.DataFrame) -> pd.DataFrame:
    """Per policy: mean totals, ratios against plain and the share of the oracle's net-value gain.

    ``cumulative``: the rollout's per-seed totals, with a ``platform`` column; means are over
    seeds, then over platforms (each platform weighs the same).
    """
    table = cumulative.groupby(["platform", "policy"])[METRICS].mean()
    rows = []
    for platform, part in table.groupby(level="platform"):
        part = part.droplevel("platform")
        if "plain" not in part.index:
            continue  # nothing to compare against
        plain = part.loc["plain"]
        oracle = part.loc["oracle"] if "oracle" in part.index else None
        for policy, values in part.iterrows():
            rows.append({
                "platform": platform, "policy": policy,
                "net_x": values["net_value"] / plain["net_value"], "orders_x": values["orders"] / plain["orders"],
                "bad_rate_x": values["bad_order_rate"] / plain["bad_order_rate"],
                "visits_x": values["end_visits"] / plain["end_visits"],
                "retention_diff": values["buyer_retention"] - plain["buyer_retention"],
                "gini": values["gini"],
                "oracle_share": (float("nan") if oracle is None
                                 else (values["net_value"] - plain["net_value"]) / (oracle["net_value"] - plain["net_value"])),
                # the same slates valued at the world's probabilities (no draw noise)
                "exp_net_x": values["expected_net_value"] / plain["expected_net_value"],
                "exp_orders_x": values["expected_orders"] / plain["expected_orders"],
                "exp_bad_rate_x": ((values["expected_bad_orders"] / values["expected_orders"])
                                   / (plain["expected_bad_orders"] / plain["expected_orders"])),
                "exp_share": (float("nan") if oracle is None
                              else (values["expected_net_value"] - plain["expected_net_value"])
                              / (oracle["expected_net_value"] - plain["expected_net_value"])),
            })
    out = pd.DataFrame(rows)
    mean = out.groupby("policy", sort=False).mean(numeric_only=True).reset_index().assign(platform="mean")
    return pd.concat([out, mean], ignore_index=True)


def bars(row: pd.Series) -> str:
    """Which of the issue's closed-loop bars a summary row meets."""
    checks = [("share", row["oracle_share"] >= 0.6), ("orders", row["orders_x"] >= 0.92),
              ("bad", row["bad_rate_x"] <= 0.78), ("visits", row["visits_x"] >= 1.0 - 1e-9)]
    return " ".join(name if ok else f"-{name}" for name, ok in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="datasets, bundles and results (reused)")
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--platforms", type=int, nargs="+", default=[1, 2], help="simulator seeds")
    parser.add_argument("--merchants", type=int, default=150)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=[], help=f"policy variants ({', '.join(variants())})")
    parser.add_argument("--base", nargs="*", default=BASE_POLICIES, help="registered policies to run")
    parser.add_argument("--prepare-only", action="store_true", help="simulate and train, no rollout")
    parser.add_argument("--tag", default="", help="suffix of the saved per-seed csv files")
    parser.add_argument("--rebuild-every", type=int, default=7,
                        help="days between the served snapshot and history rebuilds in the loop (7: weekly)")
    parser.add_argument("--from-csv", action="store_true",
                        help="summarise the per-seed csv files a previous run saved in --work (no simulation, no rollout)")
    parser.add_argument("--purchase-variant", default=None,
                        help="LABEL:key=value,...: also a bundle with these PurchaseModelConfig overrides, its "
                             "served policy with and without the balancer in the same loop")
    args = parser.parse_args()
    if args.from_csv:
        for world in args.worlds:
            files = [args.work / f"{world}-{seed}-{args.merchants}" / f"loop_{args.days}d_{args.seeds}s{args.tag}.csv"
                     for seed in args.platforms]
            _print_summary(world, pd.concat([pd.read_csv(f) for f in files], ignore_index=True), args)
        return

    from trustfeed.training.evaluation.policies import POLICIES
    from trustfeed.training.evaluation.rollout import run_rollout

    extra = variants()
    unknown = [v for v in args.variants if v not in extra]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(extra)}")
    registry = {**POLICIES, **{name: extra[name] for name in args.variants}}
    names = [*args.base, *args.variants]
    for world in args.worlds:
        parts = []
        for seed in args.platforms:
            root = args.work / f"{world}-{seed}-{args.merchants}"
            root.mkdir(parents=True, exist_ok=True)
            bundle = _bundle(root, seed, args.merchants, WORLDS[world])
            run_names, run_registry = names, registry
            if args.purchase_variant:
                purchase = _parse_purchase_variant(args.purchase_variant)
                other = _other_bundle_policies(purchase[0], _bundle(root, seed, args.merchants, WORLDS[world], purchase))
                # the other bundle's policies mirror the base ones run (no trust-aware one without its twin)
                other = {name: spec for name, spec in other.items() if name.split("@")[0] in names}
                run_names, run_registry = [*names, *other], {**registry, **other}
            if args.prepare_only:
                print(f"{world} platform {seed}: {bundle}", flush=True)
                continue
            platform_registry = {**run_registry, **{name: variants(recorded_bad_rate(root))[name] for name in args.variants}}
            result = run_rollout(bundle, root / "events", days=args.days, seeds=args.seeds, policies=run_names,
                                 registry=platform_registry, rebuild_every_days=args.rebuild_every)
            daily = result.daily
            last_week = daily[daily["day"] >= args.days - 7].groupby(["policy", "seed"])["requests"].sum()
            cumulative = result.cumulative.assign(platform=seed, world=world)
            cumulative["end_visits"] = [last_week.loc[(p, s)] for p, s in zip(cumulative["policy"], cumulative["seed"])]
            cumulative.to_csv(root / f"loop_{args.days}d_{args.seeds}s{args.tag}.csv", index=False)
            parts.append(cumulative)
        if not parts:
            continue
        _print_summary(world, pd.concat(parts, ignore_index=True), args)


def _print_summary(world: str, cumulative: pd.DataFrame, args: argparse.Namespace) -> None:
    summary = summarise(cumulative)
    summary["bars"] = summary.apply(bars, axis=1)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(f"\nworld '{world}': {len(args.platforms)} platforms x {args.seeds} seeds x {args.days} days, "
              f"ratios against plain LambdaMART (exp_*: the shown slates at the world's probabilities)")
        print(summary.round(3).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
