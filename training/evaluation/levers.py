"""What each operator lever costs and buys, on the held-out requests of the offline evaluation.

The levers are configuration fields an operator turns: ``PolicyConfig.guarantee_boost``
(priority for merchants offering buyer protection), ``PolicyConfig.trust_floor``,
``PolicyConfig.trust_exposure_target`` and the balancer's ``target_gini``. For each lever at a
few values, the held-out requests are re-ranked from the trust-aware model's relevance scores
with the served policy's fitted state and only that lever changed (the policy levers through
:meth:`~trustfeed.ranker.policy.Policy.rank_many`, the vectorised form of what serving runs;
the Gini target through an :class:`~trustfeed.ranker.balancer.ExposureBalancer` with its
controller on, request after request), and measured on the same axes: NDCG@10, Gini of
creator exposure, exposure-weighted trust, the guaranteed merchants' exposure share and lift
and, with the simulator's truth, expected orders, bad-order rate and net value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LEVER_COLUMNS", "lever_settings", "policy_lever_ranking"]

LEVER_COLUMNS = ["lever", "value", "ndcg_at_10", "gini", "trust_weighted_exposure", "guaranteed_exposure_share",
                 "guaranteed_lift", "shown_share", "expected_orders", "bad_order_rate", "net_value"]


def lever_settings(trust: np.ndarray, measured_trust_exposure: float) -> list[tuple[str, str, dict[str, Any]]]:
    """The policy lever values tried: ``(lever, shown value, PolicyConfig changes)``.

    The floors are quantiles of the candidates' trust (trust indexes are skewed, so a fixed
    0.3 may remove nothing or half the feed) and the trust-exposure targets sit above what the
    unconstrained policy already shows (a target below it changes nothing).
    """
    settings: list[tuple[str, str, dict[str, Any]]] = [("none (served policy)", "", {})]
    settings += [("guarantee_boost", f"{b:g}", {"guarantee_boost": b}) for b in (0.25, 0.5, 1.0, 2.0)]
    known = trust[np.isfinite(trust)]
    if known.size:
        for q in (0.05, 0.1, 0.2):
            floor = float(np.round(np.quantile(known, q), 3))
            settings.append(("trust_floor", f"{floor:g} (q{int(q * 100)})", {"trust_floor": floor}))
    if np.isfinite(measured_trust_exposure):
        for step in (0.02, 0.05, 0.1):
            target = float(np.round(min(measured_trust_exposure + step, 0.99), 3))
            settings.append(("trust_exposure_target", f"{target:g}", {"trust_exposure_target": target}))
    return settings


def policy_lever_ranking(policy: Any, frame: pd.DataFrame, guarantees: np.ndarray, changes: Mapping[str, Any]) -> pd.DataFrame:
    """``frame`` (one request's rows together: ``request_id``, ``relevance``, ``trust``) re-ranked by ``policy`` with ``changes``.

    Returns the shown rows with a 1-based ``position`` (rows the changed hard rules filter are dropped).
    """
    from ...ranker.policy import Policy

    changed = Policy(replace(policy.config, **changes), policy.state)
    ids = frame["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sizes = np.diff(np.r_[starts, len(ids)])
    _, rank, _ = changed.rank_many(frame["relevance"].to_numpy(float), frame["trust"].to_numpy(float), False, False,
                                   sizes, guarantees=guarantees)
    shown = rank > 0
    return frame.loc[shown].assign(position=rank[shown])


def lever_row(lever: str, value: str, ranked: pd.DataFrame, guaranteed: pd.Series, n_candidates: int,
              measure: Callable[[pd.DataFrame], dict[str, float]],
              outcomes: Callable[[pd.DataFrame], dict[str, float]] | None) -> dict[str, Any]:
    """One row of the lever table from one re-ranking (``ranked`` carries ``position``)."""
    from ...ranker.metrics import position_exposure

    measured = measure(ranked)
    exposure = position_exposure(ranked["position"].to_numpy(float))
    is_guaranteed = guaranteed.reindex(ranked["merchant_id"].to_numpy()).fillna(False).to_numpy(dtype=bool)
    share = float(exposure[is_guaranteed].sum() / exposure.sum()) if exposure.sum() > 0 else float("nan")
    base = float(guaranteed.reindex(ranked["merchant_id"].to_numpy()).fillna(False).mean()) if len(ranked) else float("nan")
    row = {"lever": lever, "value": value, "ndcg_at_10": measured["ndcg_at_10"], "gini": measured["gini"],
           "trust_weighted_exposure": measured["trust_weighted_exposure"], "guaranteed_exposure_share": share,
           "guaranteed_lift": share / base if base > 0 else float("nan"),
           "shown_share": len(ranked) / n_candidates if n_candidates else float("nan")}
    row.update(outcomes(ranked) if outcomes is not None else {})
    return {c: row.get(c, float("nan")) for c in LEVER_COLUMNS}
