"""Early warning: evidence that a merchant changed in the last hours, against its own past.

The trust index weighs months of evidence, so a shop with a clean record that suddenly
stops shipping (an exit scam: take a wave of orders, ship nothing or fakes, disappear) would
keep a high index for days. Two fast signals catch the switch, each a *surprise*
(``-log10`` of a one-sided tail probability, so chance fluctuations of small shops stay quiet):

- **overdue**: paid orders whose promised ship time passed (within ``overdue_days``) and
  that were still unshipped at the cut, against what the platform's overdue share predicts
  for that many due orders, raised for a shop that ships later than the platform did before
  the overdue window (Poisson tail; see ``_late_habit``);
- **shift**: the last ``recent_days`` against the shop's own preceding ``baseline_days``:
  a surge of paid orders (Poisson tail of the recent count given the baseline rate) *and* a
  change in what those orders look like: a higher share from new buyers (accounts whose
  first order on the platform is under ``new_buyer_days`` old), on presale, or followed by a
  complaint (a quality-type case or a 1-2 star review) than the shop's baseline share (binomial
  tails). A viral livestream raises volume alone and stays quiet.

Each surprise maps to ``[0, 1]`` linearly between ``alarm_surprise`` and
``2 * alarm_surprise``; ``alarm = 1 - (1 - overdue) * (1 - surge * change)``. The snapshot
multiplies trust by ``1 - alarm_penalty * alarm``. Only data before the cut is used: an
order counts as unshipped when its ``shipped_at`` is unknown at the cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:  # pragma: no cover
    from ._dask_backend import Aggregator
    from ._trust_config import TrustConfig

__all__ = ["EARLY_WARNING_COUNTS", "baseline_days", "early_warning_counts", "early_warning_scores"]

_DAY = 86_400.0
_COMPOSITION = ("new_buyer", "presale", "complaint")

EARLY_WARNING_COUNTS = (
    "ew_due",
    "ew_overdue",
    "ew_recent_orders",
    "ew_base_orders",
    "ew_base_days",
    *(f"ew_{window}_{name}" for name in _COMPOSITION for window in ("recent", "base")),
)
"""Per-merchant count columns of :func:`early_warning_counts`."""


def early_warning_counts(
    *,
    merchant: np.ndarray,
    user: np.ndarray,
    paid: np.ndarray,
    created_s: np.ndarray,
    promised_s: np.ndarray,
    shipped_known: np.ndarray,
    presale: np.ndarray,
    complaint_merchant: np.ndarray,
    complaint_s: np.ndarray,
    as_of: pd.Timestamp,
    config: TrustConfig,
    agg: Aggregator,
    n_merchants: int,
    n_users: int,
) -> dict[str, np.ndarray]:
    """Per-merchant counts of the recent and baseline windows (times in epoch seconds).

    ``shipped_known``: the order's ``shipped_at`` is known before the cut. ``complaint_*``:
    one row per complained-about order (merchant code and time of its first complaint).
    """
    cut = as_of.timestamp()
    recent_start = cut - config.alarm_recent_days * _DAY
    base_start = recent_start - config.alarm_baseline_days * _DAY
    due_start = cut - config.overdue_days * _DAY
    due = paid & (promised_s < cut) & (promised_s >= due_start)
    recent = paid & (created_s >= recent_start)
    base = paid & (created_s < recent_start) & (created_s >= base_start)
    # A buyer is new while its first order on the platform (as far as the log goes) is recent.
    first = np.full(max(n_users, 1), np.inf)
    known_user = user >= 0
    np.minimum.at(first, user[known_user], created_s[known_user])
    new_buyer = known_user & (created_s - first[np.maximum(user, 0)] < config.new_buyer_days * _DAY)
    columns = {
        "ew_due": due,
        "ew_overdue": due & ~shipped_known,
        "ew_recent_orders": recent,
        "ew_base_orders": base,
        "ew_recent_new_buyer": recent & new_buyer,
        "ew_base_new_buyer": base & new_buyer,
        "ew_recent_presale": recent & presale,
        "ew_base_presale": base & presale,
    }
    # Boolean columns as they are: the aggregator turns each into float64 only while summing
    # it (eight float copies at once were the build's peak memory at ten million orders).
    counts = agg.sum(merchant, n_merchants, columns)
    counts["ew_base_days"] = baseline_days(merchant, paid, created_s, as_of, config, n_merchants)
    in_recent = complaint_s >= recent_start
    in_base = (complaint_s < recent_start) & (complaint_s >= base_start)
    counts.update(
        agg.sum(
            complaint_merchant,
            n_merchants,
            {"ew_recent_complaint": in_recent.astype("float64"), "ew_base_complaint": in_base.astype("float64")},
        )
    )
    return counts


def baseline_days(
    merchant: np.ndarray, paid: np.ndarray, created_s: np.ndarray, as_of: pd.Timestamp, config: TrustConfig, n_merchants: int
) -> np.ndarray:
    """Days of baseline per merchant: as long as its paid-order history allows, at most ``alarm_baseline_days``."""
    recent_start = as_of.timestamp() - config.alarm_recent_days * _DAY
    started = np.full(n_merchants, np.inf)
    ok = (merchant >= 0) & paid
    np.minimum.at(started, merchant[ok], created_s[ok])
    return np.clip((recent_start - started) / _DAY, 0.0, config.alarm_baseline_days)


def _score(surprise: np.ndarray, level: float) -> np.ndarray:
    return np.clip((surprise - level) / level, 0.0, 1.0)


def _poisson_surprise(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``-log10 P(X >= observed)`` for ``X ~ Poisson(expected)`` (0 when nothing is observed)."""
    tail = stats.poisson.logsf(observed - 1, np.maximum(expected, 1e-9))
    return np.where(observed > 0, -tail / np.log(10.0), 0.0)


def _binomial_surprise(successes: np.ndarray, trials: np.ndarray, p: np.ndarray) -> np.ndarray:
    tail = stats.binom.logsf(successes - 1, trials, np.clip(p, 1e-9, 1 - 1e-9))
    return np.where(successes > 0, -tail / np.log(10.0), 0.0)


def _late_habit(counts: pd.DataFrame, late_rate: np.ndarray, config: TrustConfig) -> tuple[np.ndarray, float]:
    """The shop's late-shipment habit from orders placed before the overdue window can reach.

    The orders that are overdue now also count as late in the long-run rate: a surge of
    unshipped orders would raise the very habit it is judged against and silence the alarm
    (or make it flicker as the surge grows). So the habit is the late share of the orders
    created more than ``w`` days ago (``w``: the shortest count window that covers the
    overdue window twice, leaving room for the promised ship time), shrunk towards the
    platform's share of those orders with 20 pseudo-orders. Without such a window the
    long-run rate is used as it is. Returns the habit and the platform's share.
    """
    windows = [w for w in config.windows if w >= 2 * config.overdue_days]
    names = ("n_late", "n_due")
    if not windows or any(f"{n}_{min(windows)}d" not in counts.columns or n not in counts.columns for n in names):
        rate = np.asarray(late_rate, dtype="float64")
        return rate, float(np.nanmean(rate)) if np.isfinite(rate).any() else 0.0
    w = min(windows)
    late, due = (
        np.maximum(counts[n].to_numpy(dtype="float64") - counts[f"{n}_{w}d"].to_numpy(dtype="float64"), 0.0)
        for n in names
    )
    platform = float(late.sum() / due.sum()) if due.sum() > 0 else 0.0
    return (late + 20.0 * platform) / (due + 20.0), platform


def early_warning_scores(counts: pd.DataFrame, late_rate: np.ndarray, config: TrustConfig) -> pd.DataFrame:
    """The alarm and its parts per merchant (columns in ``docs/trust.md``).

    ``late_rate`` is each merchant's (shrunk) long-run late-shipment rate: a shop that is
    habitually slow is judged against its own habit, not the platform's.
    """

    def col(name: str) -> np.ndarray:
        return counts[name].to_numpy(dtype="float64") if name in counts.columns else np.zeros(len(counts))

    due, overdue = col("ew_due"), col("ew_overdue")
    norm = overdue.sum() / due.sum() if due.sum() > 0 else 0.0
    habit, platform_late = _late_habit(counts, late_rate, config)
    # The platform's overdue share is what "still unshipped at the cut" looks like for a typical
    # shop; a habitually slow shop is expected that share times how much later it ships than the
    # platform (a late share itself counts every late order of two weeks, most of them shipped
    # by the cut, and would hide a switch of a slow shop for days).
    relative = np.nan_to_num(habit, nan=platform_late) / platform_late if platform_late > 0 else np.ones(len(counts))
    expected_overdue = due * norm * np.maximum(1.0, relative)
    overdue_surprise = _poisson_surprise(overdue, expected_overdue)

    recent, base, days = col("ew_recent_orders"), col("ew_base_orders"), col("ew_base_days")
    has_base = days >= 1.0
    # Baseline rate with one pseudo-order, so a quiet shop does not expect exactly nothing.
    expected = (base + 1.0) / np.maximum(days, 1.0) * config.alarm_recent_days
    surge_surprise = np.where(has_base, _poisson_surprise(recent, expected), 0.0)
    change_surprise = np.zeros(len(counts))
    parts: dict[str, np.ndarray] = {}
    for name in _COMPOSITION:
        r, b = col(f"ew_recent_{name}"), col(f"ew_base_{name}")
        platform = b.sum() / base.sum() if base.sum() > 0 else 0.0
        # The shop's baseline share, shrunk towards the platform's with 20 pseudo-orders.
        share = (b + 20.0 * platform) / (base + 20.0)
        parts[name] = np.where(has_base, _binomial_surprise(np.minimum(r, recent), recent, share), 0.0)
        change_surprise = np.maximum(change_surprise, parts[name])
    level = config.alarm_surprise
    overdue_score = _score(overdue_surprise, level)
    shift_score = _score(surge_surprise, level) * _score(change_surprise, level)
    alarm = 1.0 - (1.0 - overdue_score) * (1.0 - shift_score)
    with np.errstate(invalid="ignore", divide="ignore"):
        overdue_share = np.where(due > 0, overdue / np.where(due > 0, due, 1.0), np.nan)
        volume_ratio = np.where(has_base, recent / expected, np.nan)
    return pd.DataFrame(
        {
            "overdue_unshipped": overdue,
            "overdue_share": overdue_share,
            "overdue_surprise": overdue_surprise,
            "recent_volume_ratio": volume_ratio,
            "volume_surprise": surge_surprise,
            **{f"{name}_shift_surprise": value for name, value in parts.items()},
            "early_warning": alarm,
        },
        index=counts.index,
    )
