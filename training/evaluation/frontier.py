"""Where the exposure balancer Pareto-dominates the published fairness re-rankers, and where not.

A point of another method's sweep (FA*IR, DetConstSort, FairCo, P-MMF at one strength) is
*dominated* by the balancer when some point of the balancer's strength sweep is at least as
good on every axis (lower or equal Gini of creator exposure, higher or equal quality: NDCG@10,
expected orders, net value, whichever are measured) and strictly better on one. A point no
balancer point dominates is reported with the axis on which the balancer falls short, so the
frontier's verdict is a table a reader can check, not an adjective. Because a sweep has only
a few strengths, every point also gets the *margin* of the balancer's line at its Gini: the
balancer's quality interpolated linearly between its two sweep points around that Gini, minus
the point's (positive: the balancer's line passes above it; NaN outside the balancer's range).

Examples
--------
>>> points = pd.DataFrame({"policy": ["balancer sweep"] * 2 + ["FairCo sweep"] * 2, "kind": "sweep",
...                        "strength": [0.0, 4.0, 0.1, 1.0], "gini": [0.6, 0.5, 0.62, 0.45],
...                        "ndcg_at_10": [0.40, 0.39, 0.38, 0.30]})
>>> pareto_verdicts(points)[["policy", "strength", "dominated", "dominated_by"]].to_dict("records")  # doctest: +NORMALIZE_WHITESPACE
[{'policy': 'FairCo sweep', 'strength': 0.1, 'dominated': True, 'dominated_by': 0.0},
 {'policy': 'FairCo sweep', 'strength': 1.0, 'dominated': False, 'dominated_by': nan}]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BALANCER_SWEEP", "QUALITY_AXES", "frontier_summary", "pareto_verdicts"]

BALANCER_SWEEP = "balancer sweep"
QUALITY_AXES: tuple[str, ...] = ("ndcg_at_10", "expected_orders", "net_value")
"""Higher-is-better axes compared when the points carry them (the fairness axis is ``gini``)."""


def _axes(points: pd.DataFrame, quality: Sequence[str]) -> list[str]:
    return [a for a in quality if a in points.columns and points[a].notna().all()]


def pareto_verdicts(points: pd.DataFrame, ours: str = BALANCER_SWEEP, fairness: str = "gini",
                    quality: Sequence[str] = QUALITY_AXES) -> pd.DataFrame:
    """One row per sweep point of every other method: dominated by ``ours`` or not, and why.

    Parameters
    ----------
    points
        Columns ``policy``, ``kind`` (only ``"sweep"`` rows are compared), ``strength``,
        ``fairness`` (lower is better) and the ``quality`` columns present (higher is better).
    ours
        The ``policy`` label of the balancer's sweep.

    Returns
    -------
    pandas.DataFrame
        ``policy``, ``strength``, the axes, ``dominated`` (bool), ``dominated_by`` (the
        strength of the first balancer point that dominates, NaN if none), ``short_on``
        (for an undominated point: the axes on which even the balancer point closest in Gini
        is worse) and ``margin_<axis>`` per quality axis (the balancer's line at the point's
        Gini minus the point).
    """
    sweeps = points[points["kind"] == "sweep"]
    mine = sweeps[sweeps["policy"] == ours].sort_values("strength")
    theirs = sweeps[sweeps["policy"] != ours]
    axes = _axes(sweeps, quality)
    line = mine.sort_values(fairness, kind="mergesort")
    line_gini = line[fairness].to_numpy(float)
    rows = []
    for values in theirs.to_dict("records"):
        fair_ok = mine[fairness].to_numpy(float) <= float(values[fairness]) + 1e-12
        quality_ok = np.ones(len(mine), dtype=bool)
        strictly = mine[fairness].to_numpy(float) < float(values[fairness]) - 1e-12
        for axis in axes:
            quality_ok &= mine[axis].to_numpy(float) >= float(values[axis]) - 1e-12
            strictly |= mine[axis].to_numpy(float) > float(values[axis]) + 1e-12
        dominating = fair_ok & quality_ok & strictly
        short_on = ""
        if not dominating.any() and len(mine):
            nearest = mine.iloc[int(np.argmin(np.abs(mine[fairness].to_numpy(float) - float(values[fairness]))))]
            worse = [fairness] if float(nearest[fairness]) > float(values[fairness]) + 1e-12 else []
            worse += [a for a in axes if float(nearest[a]) < float(values[a]) - 1e-12]
            short_on = ", ".join(worse) if worse else "ties"
        rows.append({
            "policy": values["policy"], "strength": float(values["strength"]), fairness: float(values[fairness]),
            **{a: float(values[a]) for a in axes},
            "dominated": bool(dominating.any()),
            "dominated_by": float(mine["strength"].to_numpy(float)[dominating][0]) if dominating.any() else float("nan"),
            "short_on": short_on,
            **{f"margin_{a}": _margin(line_gini, line[a].to_numpy(float), float(values[fairness]), float(values[a]))
               for a in axes},
        })
    columns = ["policy", "strength", fairness, *axes, "dominated", "dominated_by", "short_on", *(f"margin_{a}" for a in axes)]
    return pd.DataFrame(rows, columns=columns)


def _margin(line_gini: np.ndarray, line_value: np.ndarray, gini: float, value: float) -> float:
    """The balancer's line at ``gini`` (linear between sweep points) minus ``value``; NaN outside it."""
    if line_gini.size == 0 or not line_gini[0] - 1e-12 <= gini <= line_gini[-1] + 1e-12:
        return float("nan")
    return float(np.interp(gini, line_gini, line_value) - value)


def frontier_summary(verdicts: pd.DataFrame) -> list[str]:
    """One sentence per method: how many of its points the balancer dominates, which not and why."""
    lines = []
    for policy, rows in verdicts.groupby("policy", sort=False):
        beaten = int(rows["dominated"].sum())
        line = f"{policy}: the balancer dominates {beaten} of {len(rows)} points"
        missed = rows.loc[~rows["dominated"]]
        if len(missed):
            detail = "; ".join(f"strength {r['strength']:g} (Gini {r['gini']:.3f}: balancer short on {r['short_on']}"
                               f"{_margin_text(r)})" for r in missed.to_dict("records"))
            line += f"; not: {detail}"
        lines.append(line + ".")
    return lines


def _margin_text(row: Mapping[Hashable, Any]) -> str:
    margins = [(str(k).removeprefix("margin_"), v) for k, v in row.items() if str(k).startswith("margin_")]
    shown = [f"{axis} {float(v):+.3g}" for axis, v in margins if isinstance(v, float) and np.isfinite(v)]
    return f"; its line at that Gini: {', '.join(shown)}" if shown else ""
