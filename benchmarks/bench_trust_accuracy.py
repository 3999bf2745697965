"""Trust index accuracy across seeds, with and without attacks (exit scams, report bombing).

For each seed of the independent generator (``tests/_independent_sim.py``, 400 merchants,
90 days) and, with ``--simulator``, of the project simulator (300 merchants, 60 days, 5 %
exit scams and 5 % bombed shops), one snapshot at the end of the window and:

- ``spearman``: Spearman(trust_index, true trust) over merchants with >= 20 orders that did not
  switch to an exit scam (after its switch a shop's "true trust" no longer describes it);
- ``spearman_all``: the same including the switched shops;
- ``spearman_unbanned``: ``spearman`` without the banned merchants (re-registered entities sit at
  the bottom by policy whatever their bad-order rate);
- ``spearman_p_bad`` (project simulator): ``spearman`` against ``1 - p_bad``, the simulator's
  true good-order rate (what the index predicts; ``latent_trust`` differs from it by category);
- ``brushers``, ``reregistered``: mean trust percentile among all merchants;
- ``brushers_by_truth`` (independent generator): the same for a ranking by true trust, the
  floor an index that only predicts bad orders can reach;
- ``brushers_floor``: the same floor in the world as measured, a ranking
  by true trust that also puts the switched shops (attacks) and the banned shops (the ban rule)
  at the bottom, as the index does: what predicting every bad order right would give.

``--reaction`` adds, per attacked independent run, the issue's reaction checks under the same
configuration: snapshots 12, 24 and 48 hours after each switched shop's first unshipped or
counterfeit order (``reacted_48h``: share of switched shops below the 0.2 percentile within 48
hours of that evidence; ``hours_from_evidence_max``: the slowest, at that grid's resolution)
and 1 and 24 hours after each bombing campaign, against the same log without the campaign's
reports (``bombing_drop_max``: the largest percentile drop it caused).

``--segments`` adds where the rank errors sit: ``within_category`` (Spearman within each
category, averaged by size), ``model_only`` (Spearman of ``1 - expected_bad_rate``, the index
without its ban, brushing and alarm rules) and ``error_share``: per segment of the Spearman set
(order counts, banned, brushers, bombed, each category) its size and its share of the sum of
squared rank differences that Spearman is made of.

``--config '{"rank_by_bound": false}'`` overrides TrustConfig fields. ``--penalties 0.1 0.2``
adds one line per run and ``brushing_penalty`` value, the rule applied again to the same
snapshot (exact: the rule only multiplies the index). One JSON line per run.

Usage::

    python benchmarks/bench_trust_accuracy.py --seeds 1 2 3 4 5 [--simulator 1 2] [--config JSON] [--penalties P ...] [--reaction] [--segments]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

_GENERATOR = Path(__file__).resolve().parents[1] / "tests" / "_independent_sim.py"


def _independent() -> Any:
    spec = importlib.util.spec_from_file_location("trustfeed_bench_independent_sim", _GENERATOR)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {_GENERATOR}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _scores(merchants: pd.DataFrame, truth_column: str, switched: pd.Series) -> dict[str, float]:
    merchants = merchants.assign(percentile=merchants["trust_index"].rank(pct=True))
    busy = merchants[merchants["n_orders_raw"] >= 20]
    honest = busy[~switched.reindex(busy["merchant_id"]).fillna(False).to_numpy(dtype=bool)]
    unbanned = honest[~honest["banned"]]
    extra = {}
    if "p_bad" in honest.columns and truth_column != "true_trust":
        extra["spearman_p_bad"] = round(float(stats.spearmanr(honest["trust_index"], -honest["p_bad"])[0]), 4)
    return {
        "spearman": round(float(stats.spearmanr(honest["trust_index"], honest[truth_column])[0]), 4),
        "spearman_all": round(float(stats.spearmanr(busy["trust_index"], busy[truth_column])[0]), 4),
        "spearman_unbanned": round(float(stats.spearmanr(unbanned["trust_index"], unbanned[truth_column])[0]), 4),
        **extra,
        "brushers": round(float(merchants.loc[merchants["is_brusher"], "percentile"].mean()), 4),
        "reregistered": round(float(merchants.loc[merchants["is_reregistered"], "percentile"].mean()), 4),
    }


def _segments(merchants: pd.DataFrame, truth_column: str, switched: pd.Series, bombed: pd.Series) -> dict[str, Any]:
    """Where the squared rank differences of the Spearman set sit (see the module docstring)."""
    busy = merchants[merchants["n_orders_raw"] >= 20]
    busy = busy[~switched.reindex(busy["merchant_id"]).fillna(False).to_numpy(dtype=bool)]
    squared = (busy["trust_index"].rank() - busy[truth_column].rank()) ** 2
    orders = busy["n_orders_raw"]
    segments = {
        "orders<50": orders < 50,
        "orders50-150": orders.between(50, 150),
        "orders>150": orders > 150,
        "banned": busy["banned"],
        "brushers": busy["is_brusher"],
        "bombed": bombed.reindex(busy["merchant_id"]).fillna(False).to_numpy(dtype=bool),
        **{f"category:{c}": busy["category"] == c for c in sorted(busy["category"].dropna().unique())},
    }
    shares = {name: [int(mask.sum()), round(float(squared[mask].sum() / squared.sum()), 3)] for name, mask in segments.items()}
    within = [(len(g), stats.spearmanr(g["trust_index"], g[truth_column])[0]) for _, g in busy.groupby("category") if len(g) > 5]
    return {
        "within_category": round(sum(n * r for n, r in within) / sum(n for n, _ in within), 4),
        "model_only": round(float(stats.spearmanr(-busy["expected_bad_rate"], busy[truth_column])[0]), 4),
        "error_share": shares,
    }


def _floor(merchants: pd.DataFrame, switched: pd.Series, truth_column: str = "true_trust") -> float:
    """Brushers' mean percentile when ranked by true trust, switched and banned shops last."""
    gone = switched.reindex(merchants["merchant_id"]).fillna(False).to_numpy(dtype=bool)
    key = merchants[truth_column].where(~gone, -1.0).where(~merchants["banned"].to_numpy(dtype=bool), -2.0)
    return round(float(key.rank(pct=True)[merchants["is_brusher"].to_numpy(dtype=bool)].mean()), 4)


def _with_penalty(merchants: pd.DataFrame, config: Any, penalty: float) -> pd.DataFrame:
    """The snapshot's merchants with the brushing rule's penalty set to ``penalty`` instead."""
    excess = merchants["brushing_excess"].to_numpy(dtype="float64")
    unpenalised = merchants["trust_index"].to_numpy(dtype="float64") / (1.0 - config.brushing_penalty * excess)
    return merchants.assign(trust_index=unpenalised * (1.0 - penalty * excess))


def _reaction(run: Any, config: Any) -> dict[str, float]:
    """Reaction to the run's exit scams and report bombing (see the module docstring)."""
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import build_snapshot
    from trustfeed.training.evaluation import reaction

    events = validate_events(run.tables)
    orders, cases = run.tables["orders"], run.tables["after_sales"]
    evidence = reaction.evidence_times(run.attacks, orders, cases).dropna()
    times = sorted({t + pd.Timedelta(hours=h) for t in evidence for h in (12, 24, 48) if t + pd.Timedelta(hours=h) <= run.as_of})
    switched = reaction.reaction_times({t: build_snapshot(events, t, config).merchants for t in times}, run.attacks, orders, cases)
    in_time = switched["hours_from_evidence"] <= 48
    bombed = run.attacks.dropna(subset=["bombed_from"])
    reports = run.tables["reports"]
    clean = validate_events({**run.tables, "reports": reports[~reports["report_id"].str.startswith("bomb")]})
    at = sorted({t + pd.Timedelta(hours=h) for t in bombed["bombed_until"] for h in (1, 24)})
    drops = reaction.bombing_drops(
        {t: build_snapshot(events, t, config).merchants for t in at},
        run.attacks,
        unbombed={t: build_snapshot(clean, t, config).merchants for t in at},
    )
    return {
        "reacted_48h": round(float(in_time.mean()), 3),
        "hours_from_evidence_max": float(switched["hours_from_evidence"].max()),
        "bombing_drop_max": round(float(drops["drop_vs_unbombed"].max()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import TrustConfig, build_snapshot

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--simulator", type=int, nargs="*", default=[])
    parser.add_argument("--config", default="{}", help="TrustConfig fields as JSON")
    parser.add_argument("--penalties", type=float, nargs="*", default=[], help="brushing_penalty values to re-apply")
    parser.add_argument("--reaction", action="store_true", help="also the reaction checks of the attacked runs")
    parser.add_argument("--segments", action="store_true", help="also where the rank errors sit")
    args = parser.parse_args(argv)
    config = TrustConfig(**json.loads(args.config))

    generator = _independent() if args.seeds else None
    for seed in args.seeds:
        world = generator.generate(seed)
        truth = world.truth.drop(columns="category")
        by_truth = truth.assign(percentile=truth["true_trust"].rank(pct=True))
        floor = round(float(by_truth.loc[by_truth["is_brusher"], "percentile"].mean()), 4)
        for attacked in (False, True):
            run = generator.with_attacks(world, seed) if attacked else world
            switched = run.attacks.set_index("merchant_id")["exit_scam_at"].notna() if attacked else pd.Series(dtype=bool)
            snapshot = build_snapshot(validate_events(run.tables), run.as_of, config)
            merchants = snapshot.merchants.merge(truth, on="merchant_id", how="inner")
            row = {"world": "independent", "seed": seed, "attacks": attacked}
            reacted = _reaction(run, config) if attacked and args.reaction else {}
            bombed = run.attacks.set_index("merchant_id")["bombed_from"].notna() if attacked else pd.Series(dtype=bool)
            where = _segments(merchants, "true_trust", switched, bombed) if args.segments else {}
            print(json.dumps({**row, **_scores(merchants, "true_trust", switched), "brushers_by_truth": floor,
                              "brushers_floor": _floor(merchants, switched), **reacted, **where}), flush=True)
            for penalty in args.penalties:
                scores = _scores(_with_penalty(merchants, config, penalty), "true_trust", switched)
                print(json.dumps({**row, "brushing_penalty": penalty, **scores}), flush=True)

    if args.simulator:
        from trustfeed.training.simulate import SimConfig, simulate

    for seed in args.simulator:
        platform = simulate(SimConfig(seed=seed, merchants=300, days=60, exit_scam_rate=0.05, report_bombing_rate=0.05))
        events = validate_events(platform.tables)
        end = events.span()[1].normalize() + pd.Timedelta(days=1)
        truth = platform.truth["merchants"]
        switched = truth.set_index("merchant_id")["exit_scam_at"].notna()
        merchants = build_snapshot(events, end, config).merchants.merge(truth, on="merchant_id", how="inner", suffixes=("", "_truth"))
        row = {"world": "simulator", "seed": seed, "attacks": True}
        floor = _floor(merchants, switched, "latent_trust")
        bombed = truth.set_index("merchant_id")["bombed_from"].notna()
        where = _segments(merchants, "latent_trust", switched, bombed) if args.segments else {}
        print(json.dumps({**row, **_scores(merchants, "latent_trust", switched), "brushers_floor": floor, **where}), flush=True)
        for penalty in args.penalties:
            scores = _scores(_with_penalty(merchants, config, penalty), "latent_trust", switched)
            print(json.dumps({**row, "brushing_penalty": penalty, **scores}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
