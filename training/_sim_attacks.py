"""Attacks on trust that the simulator can switch on: exit scams and report bombing.

Both are off by default (``SimConfig.exit_scam_rate`` and ``report_bombing_rate`` are 0), and
then nothing here draws a random number or touches an array, so the default world is
unchanged. Each step has its own random stream (stages 20-22).

Exit scam
    A merchant with a good, established record switches at a known time ``switch``: from then
    on it takes a surge of orders from brand-new buyer accounts (many on presale, with long
    promised ship times), ships most orders not at all, and the few it ships are counterfeit or
    not as described. Buyers answer late and slowly, as real ones do: 1-star reviews and
    quality cases after delivery, 1-star reviews and reports once the promised ship time has
    passed with nothing shipped. Every order the merchant takes after the switch is bad.
Report bombing
    A good merchant gets a burst of reports (counterfeit, false advertising) within a day or
    two from a handful of fresh accounts that never bought anything; the platform rejects some
    and has not reviewed the rest.

Truth: ``exit_scam_at`` (the switch), ``bombed_from`` and ``bombed_until`` (the campaign's
window) per merchant in ``truth/merchants``; NaT for everyone else.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from ..features.events import TABLES
from ._sim_util import DAY, HOUR, stage_rng, time_column


class AttackConfig(Protocol):
    """What the attacks read of :class:`~trustfeed.training.simulate.SimConfig`."""

    @property
    def seed(self) -> int: ...
    @property
    def merchants(self) -> int: ...
    @property
    def n_users(self) -> int: ...
    @property
    def orders_per_merchant_day(self) -> float: ...
    @property
    def exit_scam_rate(self) -> float: ...
    @property
    def exit_scam_surge(self) -> float: ...
    @property
    def report_bombing_rate(self) -> float: ...
    @property
    def bombing_reports(self) -> float: ...

__all__ = ["apply_exit_scams", "exit_scam_aftermath", "report_bombing", "attack_truth"]

_REASONS = TABLES["after_sales"].column("reason").categories
_TYPES = TABLES["after_sales"].column("type").categories
_OUTCOMES = TABLES["after_sales"].column("outcome").categories
_REPORTS = TABLES["reports"].column("category").categories
_CATEGORY_PRICE = np.array([89.0, 69.0, 39.0, 299.0, 79.0, 199.0, 99.0, 59.0])
_PROMISE = 48 * HOUR

Arrays = dict[str, np.ndarray]


def _good_established(config: AttackConfig, merchants: Arrays, end: float, min_trust: float) -> np.ndarray:
    """Original accounts with a clean, long record that stay open to the end of the window."""
    m = config.merchants
    return np.flatnonzero(
        (merchants["trust"][:m] >= min_trust)
        & ~merchants["brusher"][:m]
        & (merchants["active_start"][:m] <= 0.0)
        & (merchants["active_end"][:m] >= end)
    )


def apply_exit_scams(config: AttackConfig, merchants: Arrays, orders: Arrays, end: float) -> tuple[Arrays, np.ndarray]:
    """Switch some good merchants to an exit scam; returns the orders and the switch times.

    ``switch`` (seconds, NaN = no scam) is per merchant. The returned orders carry a
    ``scam`` flag (taken after the merchant's switch) and are sorted by creation time again.
    """
    n_merchants = len(merchants["trust"])
    switch = np.full(n_merchants, np.nan)
    if config.exit_scam_rate <= 0:
        return orders, switch
    rng = stage_rng(config.seed, 20)
    pool = _good_established(config, merchants, end, 0.6)
    n_scams = min(len(pool), int(round(config.exit_scam_rate * config.merchants)))
    if n_scams == 0:
        return orders, switch
    scammers = rng.choice(pool, n_scams, replace=False)
    # After at least half the window of honest history, and with a few days left to see it.
    latest = max(0.5 * end, end - 4 * DAY)
    switch[scammers] = 0.5 * end + rng.random(n_scams) * (latest - 0.5 * end)

    # The surge: orders from brand-new accounts, on top of the usual ones.
    base_rate = config.orders_per_merchant_day * merchants["size"][scammers]
    extra = rng.poisson(config.exit_scam_surge * base_rate * (end - switch[scammers]) / DAY)
    s_merchant = np.repeat(scammers, extra)
    s_created = switch[s_merchant] + rng.random(len(s_merchant)) * (end - switch[s_merchant])
    n_surge = len(s_merchant)
    first_account = config.n_users + int(orders["n_fake_users"][0])
    accounts = np.maximum(n_surge // 2, 1)
    s_user = first_account + rng.integers(0, accounts, n_surge)
    s_category = merchants["category"][s_merchant]
    surge: Arrays = {
        "kind": np.zeros(n_surge, dtype=orders["kind"].dtype),
        "merchant": s_merchant,
        "user": s_user,
        "created": s_created,
        "creator": np.full(n_surge, -1),
        "stream": np.full(n_surge, -1),
        "impression": np.full(n_surge, -1),
        "amount": np.round(rng.lognormal(np.log(1.5 * _CATEGORY_PRICE[s_category]), 0.6), 2),
        "category": s_category,
        "cancelled": np.zeros(n_surge, dtype=bool),
        "bad": np.zeros(n_surge, dtype=bool),
        "fake": np.zeros(n_surge, dtype=bool),
        "presale": np.zeros(n_surge, dtype=bool),
        "promised": s_created + _PROMISE,
        "late": np.zeros(n_surge, dtype=bool),
        "shipped": np.full(n_surge, np.nan),
        "delivered": np.full(n_surge, np.nan),
        "logistics_delayed": np.zeros(n_surge, dtype=bool),
    }
    columns = [name for name in orders if name != "n_fake_users"]
    merged = {name: np.concatenate((orders[name], surge[name].astype(orders[name].dtype, copy=False))) for name in columns}
    order = np.argsort(merged["created"], kind="stable")
    merged = {name: values[order] for name, values in merged.items()}

    # Every order after the switch: presale spikes, most are never shipped, the rest are fakes.
    scam = ~merged["fake"] & ~merged["cancelled"] & (merged["created"] >= np.nan_to_num(switch[merged["merchant"]], nan=np.inf))
    n = len(scam)
    presale = scam & (rng.random(n) < 0.4)
    created = merged["created"]
    merged["presale"] = merged["presale"] | presale
    merged["promised"] = np.where(scam, created + np.where(presale, rng.uniform(5, 10, n) * DAY, _PROMISE), merged["promised"])
    shipped_fake = scam & (rng.random(n) < 0.25)
    ship = created + rng.uniform(6, 30, n) * HOUR
    deliver = ship + rng.lognormal(np.log(60.0), 0.35, n) * HOUR
    merged["shipped"] = np.where(scam, np.where(shipped_fake & (ship < end), ship, np.nan), merged["shipped"])
    merged["delivered"] = np.where(scam, np.where(shipped_fake & (deliver < end), deliver, np.nan), merged["delivered"])
    merged["late"] = merged["late"] | (scam & ~shipped_fake)
    merged["logistics_delayed"] = merged["logistics_delayed"] & ~scam
    merged["scam"] = scam
    merged["n_fake_users"] = orders["n_fake_users"] + accounts
    return merged, switch


def exit_scam_aftermath(
    config: AttackConfig, orders: Arrays, cases: Arrays, reviews: Arrays, reports: Arrays, end: float
) -> tuple[Arrays, Arrays, Arrays]:
    """Replace what buyers did about scam orders by what scammed buyers do.

    The regular stages treated the scam orders as ordinary ones; their cases, reviews and
    reports are dropped and replaced: 1-star reviews and quality-type cases (mostly
    counterfeit or not as described) after a delivery, 1-star reviews and reports once the
    promised time passed with nothing shipped. Marks every scam order bad.
    """
    scam = orders.get("scam")
    if scam is None or not scam.any():
        return cases, reviews, reports
    rng = stage_rng(config.seed, 21)
    idx = np.flatnonzero(scam)
    k = len(idx)
    orders["bad"] = orders["bad"] | scam
    delivered = np.isfinite(orders["delivered"][idx])
    unshipped = ~np.isfinite(orders["shipped"][idx])

    # Cases: a delivered fake gets a quality-type case; it is resolved in the buyer's favour.
    has_case = delivered & (rng.random(k) < 0.6)
    reason_pick = rng.random(k)
    reason = np.where(
        reason_pick < 0.5,
        _REASONS.index("counterfeit"),
        np.where(reason_pick < 0.85, _REASONS.index("not_as_described"), _REASONS.index("quality")),
    )
    opened = orders["delivered"][idx] + rng.uniform(0.2, 3.0, k) * DAY
    resolved = opened + rng.lognormal(np.log(48.0), 0.5, k) * HOUR
    new_case = has_case & (opened < end)
    case_rows = {
        "order": idx[new_case],
        "opened": opened[new_case],
        "type": np.full(int(new_case.sum()), _TYPES.index("refund_only")),
        "reason": reason[new_case],
        "resolved": np.where(resolved < end, resolved, np.nan)[new_case],
        "outcome": np.where(resolved < end, _OUTCOMES.index("buyer_favor"), -1)[new_case],
        "intervened": (rng.random(k) < 0.5)[new_case],
    }
    # Reviews: after delivery, or once the promise passed and nothing came.
    writes = rng.random(k) < np.where(delivered, 0.5, np.where(unshipped, 0.35, 0.0))
    written = np.where(delivered, orders["delivered"][idx], orders["promised"][idx]) + rng.uniform(0.3, 4.0, k) * DAY
    new_review = writes & (written < end)
    m = int(new_review.sum())
    review_rows = {
        "order": idx[new_review],
        "created": written[new_review],
        "rating": np.ones(m, dtype=np.int64),
        "quality": np.ones(m, dtype=np.int64),
        "service": np.ones(m, dtype=np.int64),
        "logistics": np.where(unshipped[new_review], 1, 3).astype(np.int64),
        "details_missing": rng.random(m) < 0.35,
    }
    # Reports: buyers who got nothing or a fake complain; the platform confirms most.
    reported = rng.random(k) < 0.25
    filed = np.where(delivered, orders["delivered"][idx], orders["promised"][idx]) + rng.uniform(0.2, 3.0, k) * DAY
    new_report = reported & (filed < end) & (delivered | unshipped)
    r = int(new_report.sum())
    verdict = np.where(rng.random(r) < 0.8, 0, 2)
    verdict = np.where(filed[new_report] > end - 2 * DAY, 2, verdict)
    report_rows = {
        "t": filed[new_report],
        "reporter": orders["user"][idx][new_report],
        "category": np.where(delivered[new_report], _REPORTS.index("counterfeit"), _REPORTS.index("false_advertising")),
        "merchant": orders["merchant"][idx][new_report],
        "creator": orders["creator"][idx][new_report],
        "stream": orders["stream"][idx][new_report],
        "verified": verdict,
    }
    keep_case = ~scam[cases["order"]]
    keep_review = ~scam[reviews["order"]]
    cases = _append(cases, keep_case, case_rows, "opened")
    reviews = _append(reviews, keep_review, review_rows, "created")
    # Reports do not name orders: the few the regular stage drew for scam orders stay.
    reports = _append(reports, np.ones(len(reports["t"]), dtype=bool), report_rows, "t")
    return cases, reviews, reports


def report_bombing(config: AttackConfig, merchants: Arrays, orders: Arrays, reports: Arrays, end: float) -> tuple[Arrays, np.ndarray, np.ndarray]:
    """Add report-bombing campaigns; returns the reports and each merchant's campaign window."""
    n_merchants = len(merchants["trust"])
    start = np.full(n_merchants, np.nan)
    stop = np.full(n_merchants, np.nan)
    if config.report_bombing_rate <= 0:
        return reports, start, stop
    rng = stage_rng(config.seed, 22)
    pool = _good_established(config, merchants, end, 0.7)
    scam = orders.get("scam")
    if scam is not None and scam.any():
        pool = np.setdiff1d(pool, np.unique(orders["merchant"][scam]))
    n_targets = min(len(pool), int(round(config.report_bombing_rate * config.merchants)))
    if n_targets == 0:
        return reports, start, stop
    targets = rng.choice(pool, n_targets, replace=False)
    latest = max(0.4 * end, end - 3 * DAY)
    start[targets] = 0.4 * end + rng.random(n_targets) * (latest - 0.4 * end)
    stop[targets] = start[targets] + rng.uniform(1.0, 2.0, n_targets) * DAY
    per_campaign = rng.poisson(config.bombing_reports, n_targets)
    target = np.repeat(targets, per_campaign)
    k = len(target)
    t = start[target] + rng.random(k) * (stop[target] - start[target])
    # A handful of fresh accounts per campaign, each filing several reports.
    campaign = np.repeat(np.arange(n_targets), per_campaign)
    accounts_per = rng.integers(4, 12, n_targets)
    offsets = np.concatenate(([0], np.cumsum(accounts_per)[:-1]))
    first_account = config.n_users + int(orders["n_fake_users"][0])
    reporter = first_account + offsets[campaign] + np.floor(rng.random(k) * accounts_per[campaign]).astype(np.int64)
    orders["n_fake_users"] = orders["n_fake_users"] + int(accounts_per.sum())
    rows = {
        "t": t,
        "reporter": reporter,
        "category": np.where(rng.random(k) < 0.6, _REPORTS.index("counterfeit"), _REPORTS.index("false_advertising")),
        "merchant": target,
        "creator": np.full(k, -1),
        "stream": np.full(k, -1),
        # Rejected (1) once reviewed, or not reviewed yet (2): the accusations are false.
        "verified": np.where((rng.random(k) < 0.3) & (t < end - 2 * DAY), 1, 2),
    }
    keep = t < end
    rows = {name: values[keep] for name, values in rows.items()}
    reports = _append(reports, np.ones(len(reports["t"]), dtype=bool), rows, "t")
    return reports, start, stop


def attack_truth(truth_merchants: pd.DataFrame, start_ns: int, switch: np.ndarray, bombed: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    """``truth/merchants`` with ``exit_scam_at``, ``bombed_from`` and ``bombed_until``."""
    out = truth_merchants.copy()
    out["exit_scam_at"] = time_column(switch, start_ns).to_numpy()
    out["bombed_from"] = time_column(bombed[0], start_ns).to_numpy()
    out["bombed_until"] = time_column(bombed[1], start_ns).to_numpy()
    return out


def _append(table: Arrays, keep: np.ndarray, rows: Arrays, time_key: str) -> Arrays:
    """``table`` rows where ``keep``, plus ``rows``, sorted (stably) by ``time_key``."""
    merged = {
        name: np.concatenate((values[keep], np.asarray(rows[name]).astype(values.dtype, copy=False)))
        for name, values in table.items()
    }
    order = np.argsort(merged[time_key], kind="stable")
    return {name: values[order] for name, values in merged.items()}
