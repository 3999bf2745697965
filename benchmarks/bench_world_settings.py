"""How much trust can matter on a world setting: one shot on the simulated log's own requests.

No model and no loop: for each setting and platform seed the script simulates the platform
(``--merchants``, ``--days``) and re-ranks every logged feed request by

* ``perfect``: the true purchase probability ``p_click x p_purchase``;
* ``oracle``: the true expected net value ``p_click x p_purchase x (1 - 3 p_bad)``;
* ``noisy``: the true purchase probability times log-normal noise (``--noise``, the standard
  deviation of the log factor): a stand-in for a learned relevance model that knows no risk;
* ``noisy_risk``: the same noisy relevance with the true risk factor ``1 - 3 p_bad``.

Expected orders (``exam(position) x p_click x p_purchase``, the simulator's examination curve),
bad-order rate and net value (good - 2 x bad) are printed against ``noisy``, with the bad-order
rate of ``noisy`` itself and the 10/50/90% quantiles of the merchants' bad-order probability.
It says, in seconds, whether a setting is one where cutting bad orders pays (the oracle's cut
in the bad-order rate) and what it costs in orders; the closed loop
(``bench_policy_worlds.py``) then measures real policies there.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_world_settings.py [--settings impulse no_impulse risky]
        [--platforms 1 2 3] [--merchants 150] [--days 45] [--noise 0.6]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from trustfeed.training.simulate import RISKY, SimConfig, simulate

SETTINGS = {"impulse": {}, "no_impulse": {"impulse_strength": 0.0}, "risky": dict(RISKY)}


def _positions(request: np.ndarray, score: np.ndarray) -> np.ndarray:
    order = np.lexsort((-score, request))
    ordered = request[order]
    starts = np.searchsorted(ordered, ordered, side="left")
    pos = np.empty(len(score), np.int64)
    pos[order] = np.arange(len(score)) - starts + 1
    return pos


def one_shot(config: SimConfig, noise: float) -> dict[str, float]:
    """Ratios against the noisy relevance ranking on one simulated platform."""
    platform = simulate(config)
    imp = platform.truth["impressions"]
    request = pd.factorize(imp["request_id"])[0]
    p_click, p_purchase, p_bad = (imp[c].to_numpy() for c in ("p_click", "p_purchase", "p_bad"))
    relevance = p_click * p_purchase
    noisy = relevance * np.exp(np.random.default_rng(config.seed).normal(0.0, noise, len(relevance)))
    totals = {}
    for name, score in {"perfect": relevance, "oracle": relevance * (1 - 3 * p_bad), "noisy": noisy,
                        "noisy_risk": noisy * (1 - 3 * p_bad)}.items():
        exam = _positions(request, score).astype(float) ** -config.position_bias_eta
        orders, bad = float((exam * relevance).sum()), float((exam * relevance * p_bad).sum())
        totals[name] = (orders, bad / orders, orders - 3 * bad)
    base = totals["noisy"]
    row = {"noisy_bad_rate": base[1]}
    for name in ("perfect", "oracle", "noisy_risk"):
        orders, rate, net = totals[name]
        row.update({f"{name}_orders_x": orders / base[0], f"{name}_bad_x": rate / base[1], f"{name}_net_x": net / base[2]})
    q = np.quantile(platform.truth["merchants"]["p_bad"], [0.1, 0.5, 0.9])
    row.update({"merchant_p_bad_q10": q[0], "q50": q[1], "q90": q[2]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--platforms", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--merchants", type=int, default=150)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--noise", type=float, default=0.6)
    args = parser.parse_args()
    rows = []
    for setting in args.settings:
        for seed in args.platforms:
            config = SimConfig(seed=seed, merchants=args.merchants, days=args.days, **SETTINGS[setting])
            rows.append({"setting": setting, "platform": seed, **one_shot(config, args.noise)})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
        print(table.groupby("setting", sort=False).mean(numeric_only=True).drop(columns="platform").round(3).to_string())


if __name__ == "__main__":
    main()
