"""How fast trust reacts to attacks: exit scams and report bombing, measured against truth.

Given trust snapshots at a series of times and the attack truth of a simulated world
(``truth/merchants``: ``exit_scam_at``, ``bombed_from``, ``bombed_until``), this measures

- for each merchant that switched to an exit scam: when its first *evidence* appeared (the
  promised ship time of its first post-switch order that was not shipped by then, or its
  first quality-type case after the switch, whichever came first), the first snapshot at
  which its trust percentile was below ``threshold``, the hours from the switch and from the
  evidence until then, and the paid orders it took in between (from the switch on);
- for each bombed merchant: its percentile in the last snapshot before the campaign and the
  largest drop from it in the snapshots up to ``settle_days`` after the campaign.

Times are only as fine as the snapshot grid: a reaction is dated at the first snapshot that
shows it, so the hours are an upper bound at the grid's resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ...features.events import to_utc

__all__ = ["percentiles", "evidence_times", "reaction_times", "bombing_drops", "summarise"]

_BAD_REASONS = ("quality", "not_as_described", "counterfeit")


def percentiles(snapshots: Mapping[Any, pd.DataFrame]) -> pd.DataFrame:
    """Trust percentile (rank of ``trust_index`` among the snapshot's merchants, in (0, 1]).

    Returns one row per merchant, one column per snapshot time (sorted, UTC).
    """
    columns = {}
    for when, merchants in snapshots.items():
        ranked = merchants.set_index(merchants["merchant_id"].astype(str))["trust_index"].rank(pct=True)
        columns[to_utc(when)] = ranked
    frame = pd.DataFrame(columns)
    return frame.reindex(columns=sorted(frame.columns))


def evidence_times(truth_merchants: pd.DataFrame, orders: pd.DataFrame, after_sales: pd.DataFrame | None = None) -> pd.Series:
    """First observable sign of each exit scam (NaT when none showed before the log ends)."""
    scams = truth_merchants.dropna(subset=["exit_scam_at"])
    switch = pd.Series(pd.to_datetime(scams["exit_scam_at"], utc=True).to_numpy(), index=scams["merchant_id"].astype(str))
    o = orders[orders["merchant_id"].astype(str).isin(switch.index)].copy()
    o["merchant_id"] = o["merchant_id"].astype(str)
    o = o[pd.to_datetime(o["created_at"], utc=True) >= o["merchant_id"].map(switch)]
    promised = pd.to_datetime(o["promised_ship_by"], utc=True)
    shipped = pd.to_datetime(o["shipped_at"], utc=True)
    paid = o["status"].astype("string").fillna("paid") != "cancelled" if "status" in o.columns else True
    unshipped = paid & promised.notna() & (shipped.isna() | (shipped > promised))
    first = promised[unshipped].groupby(o.loc[unshipped, "merchant_id"]).min()
    if after_sales is not None and len(after_sales):
        cases = after_sales[after_sales["reason"].astype("string").isin(_BAD_REASONS).fillna(False)]
        cases = cases.merge(o[["order_id", "merchant_id"]], on="order_id")
        opened = pd.to_datetime(cases["opened_at"], utc=True).groupby(cases["merchant_id"]).min()
        first = pd.concat([first, opened], axis=1).min(axis=1)
    return pd.to_datetime(first.reindex(switch.index), utc=True)


def reaction_times(
    snapshots: Mapping[Any, pd.DataFrame],
    truth_merchants: pd.DataFrame,
    orders: pd.DataFrame,
    after_sales: pd.DataFrame | None = None,
    threshold: float = 0.2,
) -> pd.DataFrame:
    """Per switched merchant: switch, evidence, reaction time and orders taken meanwhile.

    Columns: ``merchant_id``, ``switch_at``, ``evidence_at``, ``reacted_at`` (NaT: not within
    the snapshots), ``hours_from_switch``, ``hours_from_evidence``, ``orders_taken`` (paid
    orders created from the switch until the reaction, or until the last snapshot).

    Examples
    --------
    >>> t0 = pd.Timestamp("2026-01-01", tz="UTC")
    >>> snaps = {t0 + pd.Timedelta(hours=h): pd.DataFrame({"merchant_id": ["a", "b", "c", "d", "e", "f"],
    ...          "trust_index": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] if h < 24 else [0.1, 0.8, 0.7, 0.6, 0.5, 0.4]})
    ...          for h in (0, 12, 24, 36)}
    >>> truth = pd.DataFrame({"merchant_id": ["a"], "exit_scam_at": [t0]})
    >>> orders = pd.DataFrame({"order_id": ["o1"], "merchant_id": ["a"], "created_at": [t0 + pd.Timedelta(hours=1)],
    ...                        "promised_ship_by": [t0 + pd.Timedelta(hours=10)], "shipped_at": [pd.NaT]})
    >>> row = reaction_times(snaps, truth, orders).iloc[0]
    >>> float(row["hours_from_switch"]), float(row["hours_from_evidence"]), int(row["orders_taken"])
    (24.0, 14.0, 1)
    """
    pct = percentiles(snapshots)
    evidence = evidence_times(truth_merchants, orders, after_sales)
    # Snapshot times as ns since the epoch, percentiles as a merchants x times matrix.
    times = pd.DatetimeIndex(pct.columns)
    ns = times.asi8
    matrix = pct.to_numpy(dtype="float64")
    row_of = {merchant_id: i for i, merchant_id in enumerate(pct.index)}
    created = pd.to_datetime(orders["created_at"], utc=True).to_numpy(dtype="datetime64[ns]").view("int64")
    status = orders["status"].astype("string").fillna("paid") if "status" in orders.columns else None
    paid = (status != "cancelled").to_numpy(dtype=bool) if status is not None else np.ones(len(orders), dtype=bool)
    merchant = orders["merchant_id"].astype(str).to_numpy()
    switches = truth_merchants.set_index(truth_merchants["merchant_id"].astype(str))["exit_scam_at"]
    rows = []
    for merchant_id in evidence.index:  # one row per attacked merchant (tens), not per order
        switch_at = to_utc(switches[merchant_id])
        after = ns >= switch_at.value
        row = row_of.get(merchant_id)
        low = after & (matrix[row] < threshold) if row is not None else np.zeros(len(ns), dtype=bool)
        reacted = bool(low.any())
        reacted_ns = int(ns[np.argmax(low)]) if reacted else (int(ns[-1]) if len(ns) else switch_at.value)
        taken = int((paid & (merchant == merchant_id) & (created >= switch_at.value) & (created < reacted_ns)).sum())
        ev = evidence[merchant_id]
        ev_ns = pd.Timestamp(ev).value if pd.notna(ev) else None
        hour = 3_600e9
        rows.append(
            {
                "merchant_id": merchant_id,
                "switch_at": switch_at,
                "evidence_at": ev,
                "reacted_at": pd.Timestamp(reacted_ns, tz="UTC") if reacted else pd.NaT,
                "hours_from_switch": (reacted_ns - switch_at.value) / hour if reacted else np.nan,
                "hours_from_evidence": (reacted_ns - ev_ns) / hour if reacted and ev_ns is not None else np.nan,
                "orders_taken": taken,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["merchant_id", "switch_at", "evidence_at", "reacted_at", "hours_from_switch", "hours_from_evidence", "orders_taken"],
    )


def bombing_drops(
    snapshots: Mapping[Any, pd.DataFrame],
    truth_merchants: pd.DataFrame,
    settle_days: float = 7.0,
    unbombed: Mapping[Any, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Per bombed merchant: percentile before the campaign and its largest drop after.

    Columns: ``merchant_id``, ``bombed_from``, ``percentile_before`` (last snapshot before the
    campaign; NaN if none), ``lowest_percentile`` (snapshots from the campaign start to
    ``settle_days`` after its end), ``largest_drop`` (``before - lowest``, >= 0). A drop over
    days also holds whatever else happened to the shop meanwhile; ``unbombed`` (snapshots at
    the same times of the same log without the campaigns' reports) isolates the campaign:
    ``drop_vs_unbombed`` is the largest ``unbombed - bombed`` percentile over those times.
    """
    pct = percentiles(snapshots)
    ns = pd.DatetimeIndex(pct.columns).asi8
    matrix = pct.to_numpy(dtype="float64")
    row_of = {merchant_id: i for i, merchant_id in enumerate(pct.index)}
    clean_matrix: np.ndarray | None = None
    if unbombed is not None:
        clean = percentiles(unbombed).reindex(index=pct.index, columns=pct.columns)
        clean_matrix = clean.to_numpy(dtype="float64")
    bombed = truth_merchants.dropna(subset=["bombed_from"])
    settle = int(pd.Timedelta(days=settle_days).value)
    rows = []
    # one row per attacked merchant (tens), not per order
    for merchant_id, start, stop in zip(bombed["merchant_id"].astype(str), bombed["bombed_from"], bombed["bombed_until"]):
        start, stop = to_utc(start), to_utc(stop)
        row = row_of.get(merchant_id)
        values = matrix[row] if row is not None else np.full(len(ns), np.nan)
        before = ns < start.value
        during = (ns >= start.value) & (ns <= stop.value + settle)
        base = float(values[before][-1]) if before.any() else np.nan
        lowest = float(np.nanmin(values[during])) if during.any() and np.isfinite(values[during]).any() else np.nan
        versus = np.nan
        if clean_matrix is not None and row is not None and during.any():
            gap = clean_matrix[row][during] - values[during]
            if np.isfinite(gap).any():
                versus = max(float(np.nanmax(gap)), 0.0)
        rows.append(
            {
                "merchant_id": merchant_id,
                "bombed_from": start,
                "percentile_before": base,
                "lowest_percentile": lowest,
                "largest_drop": max(base - lowest, 0.0) if np.isfinite(base) and np.isfinite(lowest) else np.nan,
                "drop_vs_unbombed": versus,
            }
        )
    columns = ["merchant_id", "bombed_from", "percentile_before", "lowest_percentile", "largest_drop", "drop_vs_unbombed"]
    return pd.DataFrame(rows, columns=columns)


def summarise(switched: pd.DataFrame, bombed: pd.DataFrame, within_hours: float = 48.0) -> dict[str, float]:
    """Headline numbers: share reacting within ``within_hours`` of evidence, medians, worst drop."""
    reacted = switched["hours_from_evidence"]
    return {
        "switched_merchants": float(len(switched)),
        "reacted_within_hours_of_evidence": float((reacted <= within_hours).mean()) if len(switched) else float("nan"),
        "median_hours_from_switch": float(switched["hours_from_switch"].median()),
        "median_hours_from_evidence": float(reacted.median()),
        "max_hours_from_evidence": float(reacted.max()),
        "median_orders_taken": float(switched["orders_taken"].median()),
        "bombed_merchants": float(len(bombed)),
        "largest_bombing_drop": float(bombed["largest_drop"].max()) if len(bombed) else float("nan"),
        "mean_bombing_drop": float(bombed["largest_drop"].mean()) if len(bombed) else float("nan"),
        "largest_bombing_drop_vs_unbombed": float(bombed["drop_vs_unbombed"].max()) if len(bombed) else float("nan"),
    }
