"""A synthetic live-commerce platform with a known ground truth.

:func:`simulate` draws merchants with a hidden trust level, livestream hosts, users, a feed
log and everything that follows from orders (shipping, after-sales cases, reviews, reports,
violations, bans and re-registrations, buyer-protection enrolments, NPS answers), all in the
event-log format of docs/contract.md section 1. The hidden truth (who is trustworthy, which orders
were fake or bad, and the click and purchase probabilities of every logged impression) is
kept apart, for evaluation only.

The simulated tensions, which the trust signals and the ranker exist to resolve:

* Low-trust merchants convert *better* in the short run (impulse selling under time
  pressure) but produce far more bad orders: quality / not-as-described / counterfeit
  after-sales cases, 1-2 star reviews, verified reports, violations up to bans, slower
  after-sales resolution, more platform intervention, more cancellations and late shipping.
* Noise that is not distrust: no-reason (seven-day) returns at the same rate everywhere,
  false or unreviewed reports against good merchants, logistics delays independent of trust.
* Gaming: brushing merchants (mostly low trust) place cheap fake orders from fresh accounts
  that never do anything else and review them with 5 stars; banned entities re-register as
  new ``merchant_id`` s that keep the ``entity_id``.

Feed model and counterfactual evaluation
-----------------------------------------
Every request logs a slate of candidate streams (retrieval favours popular creators) ranked
by a noisy popularity policy. A candidate at position ``p`` is examined with probability
``exam(p) = p ** -eta`` (``eta`` = ``position_bias.eta`` in ``truth/meta.json``); if examined
it is clicked with probability ``p_click``; a click becomes a purchase with probability
``p_purchase``; a purchase is a bad order with probability ``p_bad`` (all three per
impression in ``truth/impressions``). The expected outcome of any re-ordering of a logged
slate is therefore::

    expected_clicks      = sum_p exam(p) * p_click
    expected_orders      = sum_p exam(p) * p_click * p_purchase
    expected_bad_orders  = sum_p exam(p) * p_click * p_purchase * p_bad

where ``p`` is each candidate's *new* position; :func:`expected_outcomes` computes it.
Summed over the logged slates at their logged positions it reproduces the logged clicks,
purchases and bad orders up to sampling noise (purchases that would have landed after the
window end or a ban are cut from the log, so realised orders run slightly lower).

Hidden truth (``truth/`` beside the tables)
-------------------------------------------
``merchants``: ``merchant_id``, ``entity_id``, ``latent_trust`` (0..1, higher = more
trustworthy), ``is_brusher``, ``is_reregistered`` (a banned entity's new account), ``p_bad``
(probability that a real organic order is bad, cancellations included), ``banned_at``.
``creators``: ``creator_id``, ``quality`` (latent host attitude, 0..1), ``popularity``
(``log1p(followers) / log1p(max followers)``). ``orders``: ``order_id``, ``is_fake``
(brushing), ``is_bad`` (a real, not cancelled order that went wrong; the observable
signs are after-sales cases for quality / not_as_described / counterfeit, 1-2 star reviews
and reports). ``impressions``: ``request_id``, ``stream_id``, ``p_click``, ``p_purchase``,
``p_bad`` in log order. ``meta.json``: ``position_bias`` (``{"model": "power", "eta": ...}``),
the window ``start``/``end``, the config and row counts.

Examples
--------
>>> platform = simulate(SimConfig(seed=1, merchants=20, days=5))
>>> sorted(platform.tables)[:3]
['after_sales', 'creators', 'follows']
>>> bool((platform.truth["merchants"]["latent_trust"].between(0, 1)).all())
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from ..features.config import Config, Constraints, Integer, Real, Time
from ..features.errors import SchemaError
from ..features.events import TABLES, to_utc, write_events
from ..features.io import atomic_dir
from ..features.progress import NullProgress, Progress
from ._sim_attacks import apply_exit_scams, attack_truth, exit_scam_aftermath, report_bombing
from ._sim_util import (
    DAY,
    HOUR,
    bool_column,
    categorical,
    enum_column,
    flat_weighted_draw,
    grouped_weighted_draw,
    id_array,
    id_column,
    int_column,
    order_within_sorted_groups,
    rank_within_sorted,
    sigmoid,
    stage_rng,
    take_ids,
    text_column,
    time_column,
)

__all__ = [
    "CATEGORIES",
    "SimConfig",
    "RISKY",
    "WORLD_SETTINGS",
    "SimulatedPlatform",
    "simulate",
    "write_dataset",
    "load_truth",
    "load_truth_meta",
    "examination",
    "expected_outcomes",
]

TRUTH_FORMAT_VERSION = 1

CATEGORIES: tuple[str, ...] = ("apparel", "beauty", "food", "electronics", "home", "jewelry", "health", "toys")
"""Product categories of the simulated platform."""
_CATEGORY_SHARE = np.array([0.22, 0.16, 0.15, 0.10, 0.12, 0.07, 0.08, 0.10])
# Categories differ in how often things go wrong (jewelry and health attract fakes) ...
_CATEGORY_BAD = np.array([1.0, 1.2, 0.7, 0.9, 0.8, 1.4, 1.3, 0.9])
# ... in basket size (median order value) ...
_CATEGORY_PRICE = np.array([89.0, 69.0, 39.0, 299.0, 79.0, 199.0, 99.0, 59.0])
# ... and in how easily a viewer buys (logit offsets).
_CATEGORY_CONVERSION = np.array([0.0, 0.1, 0.3, -0.4, 0.0, -0.2, 0.0, 0.1])
# Live commerce peaks in the evening (UTC+8 audience seen in UTC is not modelled: one clock).
_HOUR_WEIGHT = np.array(
    [0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.1,
     1.2, 1.1, 1.0, 1.0, 1.1, 1.3, 1.7, 2.2, 2.6, 2.6, 2.0, 1.0]
)
_VIOLATION_TYPES = ("false_advertising", "counterfeit_goods", "delayed_shipping", "inducement", "vulgar_content", "price_fraud")
_BENEFIT_BASE = np.array([0.45, 0.65, 0.30, 0.85, 0.55])

# Enum codes follow the schema's category order, so codes become categoricals directly.
ORDER_STATUSES = TABLES["orders"].column("status").categories
AFTER_SALES_TYPES = TABLES["after_sales"].column("type").categories
AFTER_SALES_REASONS = TABLES["after_sales"].column("reason").categories
AFTER_SALES_OUTCOMES = TABLES["after_sales"].column("outcome").categories
REPORT_CATEGORIES = TABLES["reports"].column("category").categories
PENALTIES = TABLES["violations"].column("penalty").categories
BENEFITS = TABLES["guarantees"].column("benefit").categories

_REASON = {name: code for code, name in enumerate(AFTER_SALES_REASONS)}
_TYPE = {name: code for code, name in enumerate(AFTER_SALES_TYPES)}
_OUTCOME = {name: code for code, name in enumerate(AFTER_SALES_OUTCOMES)}
_REPORT = {name: code for code, name in enumerate(REPORT_CATEGORIES)}
_PENALTY = {name: code for code, name in enumerate(PENALTIES)}

_KIND_ORGANIC, _KIND_FEED, _KIND_FAKE = 0, 1, 2

# Retrieval draws candidates with replacement in proportion to followers ** exponent and keeps
# distinct ones; ``draws`` per slate slot is enough to fill most slates at peak hours.
_RETRIEVAL_EXPONENT = 0.8
_RETRIEVAL_DRAWS = 1.6


RISKY: dict[str, float] = {"trust_alpha": 2.0, "trust_beta": 1.6, "bad_rate_max": 0.75, "impulse_strength": 0.5}
"""``SimConfig`` changes of the "risky" world setting: bad orders common and concentrated.

On the default platform about one feed order in ten goes wrong, and ranking by the true
expected net value cuts the bad-order rate by only 11-17% in one shot: trust matters little.
The risky setting is a platform where about one order in five goes wrong (an assumption chosen
for plausibility, not measured: live commerce is known for high complaint and return rates,
and for many small, short-lived shops). Two things change: more low-trust shops (merchant
trust ``Beta(2.0, 1.6)``: mean 0.56 instead of 0.62, 22% of shops below 0.35 instead of 13%)
and steeper risk at them (``bad_rate_max`` 0.75: three orders in four go wrong at a trust-0
shop instead of about one in two; a trusted shop's floor is unchanged). Impulse buying is kept
at half the default strength (low-trust shops still convert better, by less). There the true
expected net value gives up a few orders to cut the bad-order rate by about a third in one
shot. docs/evaluation.md has the policies measured on it.

>>> SimConfig(**RISKY).bad_rate_max
0.75
"""

WORLD_SETTINGS: dict[str, dict[str, Any]] = {"default": {}, "risky": RISKY}
"""Named world settings (``SimConfig`` changes) that ``trustfeed simulate --world`` and the demo
offer: ``default`` (the simulator's defaults) and ``risky`` (:data:`RISKY`).

>>> SimConfig(**WORLD_SETTINGS["risky"]).trust_alpha
2.0
"""


@dataclass(frozen=True)
class SimConfig(Config):
    """Size and behaviour of a simulated platform.

    Parameters
    ----------
    seed
        Seed of every random draw: the same config gives identical tables.
    merchants
        Number of original shop accounts (re-registrations come on top).
    days
        Length of the simulated window, starting at ``start``.
    users, creators, requests_per_day
        Population sizes and feed traffic; ``None`` derives them from ``merchants``
        (20 users, 2 creators and 1 feed request per day per merchant).
    orders_per_merchant_day
        Mean organic (non-feed) orders per active merchant and day, before the merchant's
        size and impulse factors.
    slate_min, slate_max
        Bounds of the number of candidates retrieved per feed request.
    start
        Start of the window (ISO 8601; naive means UTC).
    brusher_rate
        Share of merchants that place fake orders (chosen mostly among low trust).
    fake_orders_per_brusher_day
        Mean fake orders a brushing merchant places per active day.
    reregistration_rate
        Probability that a banned entity opens a new shop account afterwards.
    self_operated_rate
        Share of creators who host for a single merchant (self-operated).
    new_merchant_rate
        Share of merchants (and creators) that register during the window (cold start).
    impulse_strength
        How much better low-trust merchants convert (logit boost ``2 * strength * (1 - trust)``).
    position_bias_eta
        Examination probability of position ``p`` is ``p ** -eta``.
    no_reason_return_rate
        Share of delivered orders returned without a reason, at every merchant alike.
    logistics_delay_rate
        Share of shipments delayed by the carrier, independent of the merchant.
    false_report_rate
        Unfounded reports per merchant and active day (size-weighted), independent of trust.
    exit_scam_rate, exit_scam_surge
        Share of (good, established) merchants that switch to an exit scam during the window,
        and their surge of new-buyer orders after the switch (times their usual order rate).
        0 = off. See :mod:`._sim_attacks`.
    report_bombing_rate, bombing_reports
        Share of good merchants hit by a burst of false reports from fresh accounts, and the
        mean number of reports per burst. 0 = off.
    trust_alpha, trust_beta
        Merchants' latent trust is drawn from ``Beta(trust_alpha, trust_beta)`` (defaults: mean
        0.62, 13% of merchants below 0.35); a smaller ``trust_alpha`` means more low-trust shops.
    bad_rate_floor, bad_rate_max
        A merchant's bad-order probability per placed order is
        ``category factor x (bad_rate_floor + bad_rate_max x (1 - trust) ** 2.5)`` (at most 0.9):
        the floor at a flawless shop, the excess at a trust-0 shop. See :data:`RISKY` for a
        setting where bad orders are common and concentrated.

    Examples
    --------
    >>> SimConfig(seed=3, merchants=50, days=10).n_users
    1000
    """

    seed: int = 0
    merchants: int = 500
    days: int = 60
    users: int | None = None
    creators: int | None = None
    requests_per_day: int | None = None
    orders_per_merchant_day: float = 5.0
    slate_min: int = 20
    slate_max: int = 30
    start: str = "2026-01-01T00:00:00+00:00"
    brusher_rate: float = 0.06
    fake_orders_per_brusher_day: float = 4.0
    reregistration_rate: float = 0.7
    self_operated_rate: float = 0.3
    new_merchant_rate: float = 0.1
    impulse_strength: float = 1.0
    position_bias_eta: float = 0.7
    no_reason_return_rate: float = 0.06
    logistics_delay_rate: float = 0.08
    false_report_rate: float = 0.02
    exit_scam_rate: float = 0.0
    exit_scam_surge: float = 3.0
    report_bombing_rate: float = 0.0
    bombing_reports: float = 40.0
    trust_alpha: float = 2.6
    trust_beta: float = 1.6
    bad_rate_floor: float = 0.015
    bad_rate_max: float = 0.45

    constraints: ClassVar[Constraints] = {
        "seed": Integer(low=0),
        **dict.fromkeys(("merchants", "days", "slate_min", "slate_max"), Integer(low=1)),
        **dict.fromkeys(("users", "creators", "requests_per_day"), Integer(low=1, optional=True)),
        **dict.fromkeys(
            ("brusher_rate", "reregistration_rate", "self_operated_rate", "new_merchant_rate", "no_reason_return_rate",
             "logistics_delay_rate", "exit_scam_rate", "report_bombing_rate"),
            Real(0, 1),
        ),
        **dict.fromkeys(
            ("orders_per_merchant_day", "fake_orders_per_brusher_day", "impulse_strength", "position_bias_eta",
             "false_report_rate", "exit_scam_surge", "bombing_reports"),
            Real(0),
        ),
        **dict.fromkeys(("trust_alpha", "trust_beta"), Real(0, strict_low=True)),
        **dict.fromkeys(("bad_rate_floor", "bad_rate_max"), Real(0, 1)),
        "start": Time(),
    }

    def check(self) -> None:
        if self.slate_max < self.slate_min:
            raise self.reject("slate_max", f"an integer >= slate_min ({self.slate_min})")

    @property
    def n_users(self) -> int:
        """Number of real users (fake brushing accounts come on top)."""
        return self.users if self.users is not None else 20 * self.merchants

    @property
    def n_creators(self) -> int:
        """Number of livestream hosts."""
        return self.creators if self.creators is not None else 2 * self.merchants

    @property
    def n_requests_per_day(self) -> int:
        """Feed requests per day."""
        return self.requests_per_day if self.requests_per_day is not None else max(20, self.merchants)

    @property
    def start_time(self) -> pd.Timestamp:
        """The window start as a UTC timestamp."""
        return to_utc(self.start)

    @property
    def end_time(self) -> pd.Timestamp:
        """The window end (exclusive)."""
        return self.start_time + pd.Timedelta(days=self.days)


@dataclass
class SimulatedPlatform:
    """The simulated event-log tables, the hidden truth and the config that made them."""

    tables: dict[str, pd.DataFrame]
    truth: dict[str, pd.DataFrame]
    config: SimConfig

    @property
    def meta(self) -> dict[str, Any]:
        """What ``truth/meta.json`` holds: position-bias curve, window and config."""
        return {
            "format_version": TRUTH_FORMAT_VERSION,
            "position_bias": {"model": "power", "eta": float(self.config.position_bias_eta)},
            "start": self.config.start_time.isoformat(),
            "end": self.config.end_time.isoformat(),
            "config": self.config.to_dict(),
            "row_counts": {name: int(len(frame)) for name, frame in sorted(self.tables.items())},
        }


# --------------------------------------------------------------------------- merchants


def _violations(
    rng: np.random.Generator, trust: np.ndarray, active_start: np.ndarray, end: float
) -> dict[str, np.ndarray]:
    """Enforcement records of a set of merchants and the time each one was banned (inf: never).

    The hazard grows steeply as trust falls; severe violations of low-trust merchants end in a
    ban, after which the account does nothing more.
    """
    distrust = 1.0 - trust
    rate_per_day = 0.004 + 0.12 * distrust**4
    active_days = np.maximum(end - active_start, 0.0) / DAY
    counts = rng.poisson(rate_per_day * active_days)
    merchant = np.repeat(np.arange(len(trust)), counts)
    n = len(merchant)
    t = active_start[merchant] + rng.random(n) * (end - active_start[merchant])
    d = distrust[merchant]
    p3 = 0.05 + 0.5 * d**2
    probs = np.stack([0.65 - p3 * 0.5, 0.35 - p3 * 0.5, p3], axis=1)
    severity = categorical(rng.random(n), probs) + 1
    u = rng.random(n)
    penalty = np.where(
        severity == 1,
        _PENALTY["warning"],
        np.where(
            severity == 2,
            np.where(u < 0.6, _PENALTY["restriction"], _PENALTY["suspension"]),
            np.where(u < 0.5, _PENALTY["suspension"], _PENALTY["ban"]),
        ),
    )
    banned_at = np.full(len(trust), np.inf)
    is_ban = penalty == _PENALTY["ban"]
    np.minimum.at(banned_at, merchant[is_ban], t[is_ban])
    keep = t <= banned_at[merchant]
    return {
        "merchant": merchant[keep],
        "t": t[keep],
        "severity": severity[keep],
        "penalty": penalty[keep],
        "type": rng.integers(0, len(_VIOLATION_TYPES), n)[keep],
        "banned_at": banned_at,
    }


def _p_cancel(trust: np.ndarray) -> np.ndarray:
    # Buyer cancellations everywhere, plus seller-fault ones (overselling, no stock) at low trust.
    return 0.03 + 0.12 * (1.0 - trust) ** 2


def _p_bad(config: SimConfig, trust: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Each merchant's bad-order probability per placed order (before the host's share)."""
    excess = config.bad_rate_max * (1.0 - trust) ** 2.5
    return np.clip(_CATEGORY_BAD[category] * (config.bad_rate_floor + excess), 0.0, 0.9)


def _merchants(config: SimConfig, end: float) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 1)
    m = config.merchants
    trust = rng.beta(config.trust_alpha, config.trust_beta, m)
    category = categorical(rng.random(m), _CATEGORY_SHARE)
    is_new = rng.random(m) < config.new_merchant_rate
    registered = np.where(is_new, rng.random(m) * 0.8 * end, -rng.uniform(30, 900, m) * DAY)
    size = rng.lognormal(-0.32, 0.8, m)
    brusher = np.zeros(m, dtype=bool)
    n_brushers = min(m, round(config.brusher_rate * m))
    if n_brushers:
        weight = (1.0 - trust) ** 3 + 0.01
        brusher[rng.choice(m, n_brushers, replace=False, p=weight / weight.sum())] = True
    first = _violations(rng, trust, np.maximum(registered, 0.0), end)

    # A banned entity comes back under a new account some days later, same business, same habits.
    banned = np.flatnonzero(np.isfinite(first["banned_at"]))
    comes_back = banned[rng.random(len(banned)) < config.reregistration_rate]
    re_registered = first["banned_at"][comes_back] + rng.uniform(1, 10, len(comes_back)) * DAY
    in_window = re_registered < end - DAY
    comes_back, re_registered = comes_back[in_window], re_registered[in_window]
    re_trust = np.clip(trust[comes_back] + rng.normal(0, 0.03, len(comes_back)), 0.0, 1.0)
    second = _violations(rng, re_trust, re_registered, end)

    n_re = len(comes_back)
    all_trust = np.concatenate((trust, re_trust))
    all_category = np.concatenate((category, category[comes_back]))
    violations_merchant = np.concatenate((first["merchant"], second["merchant"] + m))
    out = {
        "trust": all_trust,
        "category": all_category,
        "registered": np.concatenate((registered, re_registered)),
        "size": np.concatenate((size, size[comes_back])),
        "brusher": np.concatenate((brusher, brusher[comes_back])),
        "entity": np.concatenate((np.arange(m), comes_back)),
        "reregistered": np.concatenate((np.zeros(m, dtype=bool), np.ones(n_re, dtype=bool))),
        "banned_at": np.concatenate((first["banned_at"], second["banned_at"])),
        "p_bad": _p_bad(config, all_trust, all_category),
        "v_merchant": violations_merchant,
        "v_t": np.concatenate((first["t"], second["t"])),
        "v_severity": np.concatenate((first["severity"], second["severity"])),
        "v_penalty": np.concatenate((first["penalty"], second["penalty"])),
        "v_type": np.concatenate((first["type"], second["type"])),
    }
    out["active_start"] = np.maximum(out["registered"], 0.0)
    out["active_end"] = np.minimum(out["banned_at"], end)
    return out


# --------------------------------------------------------------------------- creators, users


def _creators(config: SimConfig, merchants: dict[str, np.ndarray], end: float) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 2)
    c = config.n_creators
    followers = np.minimum(np.floor(50.0 * (rng.pareto(1.1, c) + 1.0)), 5e7)
    quality = rng.beta(4.0, 2.0, c)
    category = categorical(rng.random(c), _CATEGORY_SHARE)
    is_new = rng.random(c) < config.new_merchant_rate
    registered = np.where(is_new, rng.random(c) * 0.8 * end, -rng.uniform(30, 900, c) * DAY)
    own_merchant = np.full(c, -1, dtype=np.int64)
    n_original = config.merchants
    n_self = min(round(config.self_operated_rate * c), n_original)
    if n_self:
        hosts = rng.choice(c, n_self, replace=False)
        shops = rng.choice(n_original, n_self, replace=False)
        own_merchant[hosts] = shops
        category[hosts] = merchants["category"][shops]
        # A self-operated host cannot predate the shop it works for.
        registered[hosts] = np.maximum(registered[hosts], merchants["registered"][shops])
    log_followers = np.log1p(followers)
    popularity = log_followers / max(float(np.log1p(followers.max())), 1e-9)
    active_start = np.maximum(registered, 0.0)
    active_end = np.full(c, end)
    is_self = own_merchant >= 0
    active_start[is_self] = np.maximum(active_start[is_self], merchants["active_start"][own_merchant[is_self]])
    active_end[is_self] = merchants["active_end"][own_merchant[is_self]]
    return {
        "followers": followers,
        "quality": quality,
        "category": category,
        "registered": registered,
        "own_merchant": own_merchant,
        "popularity": popularity,
        "active_start": active_start,
        "active_end": active_end,
    }


def _users(config: SimConfig) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 3)
    n = config.n_users
    return {
        "preference": rng.dirichlet(np.full(len(CATEGORIES), 0.4), n),
        "activity": rng.lognormal(0.0, 1.0, n),
    }


def _follows(
    config: SimConfig, users: dict[str, np.ndarray], creators: dict[str, np.ndarray], end: float
) -> dict[str, np.ndarray]:
    """Users follow popular creators, and more so in categories they like (rejection sampling)."""
    rng = stage_rng(config.seed, 4)
    n_users = config.n_users
    proposals = rng.poisson(20, n_users)
    user = np.repeat(np.arange(n_users), proposals)
    creator = flat_weighted_draw(creators["followers"] ** 0.8, rng.random(len(user)))
    preference = users["preference"]
    liking = preference[user, creators["category"][creator]] / preference.max(axis=1)[user]
    accepted = rng.random(len(user)) < 0.6 * liking
    key = np.unique(user[accepted].astype(np.int64) * config.n_creators + creator[accepted])
    user, creator = key // config.n_creators, key % config.n_creators
    low = np.maximum(creators["registered"][creator], -180 * DAY)
    high = creators["active_end"][creator]
    followed_at = low + rng.random(len(key)) * np.maximum(high - low, 0.0)
    keep = followed_at < end
    return {"key": key[keep], "user": user[keep], "creator": creator[keep], "t": followed_at[keep]}


# --------------------------------------------------------------------------- livestreams


def _livestreams(
    config: SimConfig, merchants: dict[str, np.ndarray], creators: dict[str, np.ndarray], end: float
) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 5)
    c = len(creators["followers"])
    first_day = np.ceil(creators["active_start"] / DAY)
    last_day = np.floor(creators["active_end"] / DAY)  # exclusive
    active_days = np.maximum(last_day - first_day, 0.0)
    counts = rng.poisson((0.5 + 0.8 * creators["popularity"]) * active_days)
    creator = np.repeat(np.arange(c), counts)
    n = len(creator)
    day = first_day[creator] + np.floor(rng.random(n) * active_days[creator])
    hour = categorical(rng.random(n), _HOUR_WEIGHT)
    # Streams start within the first minutes of an hour and last whole hours, so that a feed
    # request in the rest of any covered hour falls inside the stream.
    started = day * DAY + hour * HOUR + rng.random(n) * 240.0
    duration_hours = rng.integers(2, 6, n)
    ended = started + duration_hours * HOUR

    merchant = creators["own_merchant"][creator].copy()
    free = np.flatnonzero(merchant < 0)
    n_merchants = len(merchants["trust"])
    pending = free
    for _ in range(4):  # redraw partners that were not active at the stream's start
        if len(pending) == 0:
            break
        drawn = grouped_weighted_draw(
            merchants["category"],
            merchants["size"],
            len(CATEGORIES),
            creators["category"][creator[pending]],
            rng.random(len(pending)),
        )
        ok = drawn >= 0
        t = started[pending]
        ok[ok] = (merchants["active_start"][drawn[ok]] <= t[ok]) & (merchants["active_end"][drawn[ok]] > t[ok])
        merchant[pending[ok]] = drawn[ok]
        pending = pending[~ok]
    if n_merchants == 0:
        merchant[:] = -1
    valid = merchant >= 0
    valid &= started < creators["active_end"][creator]
    valid &= started >= creators["active_start"][creator]
    safe_merchant = np.where(valid, merchant, 0)
    valid &= (merchants["active_start"][safe_merchant] <= started) & (merchants["active_end"][safe_merchant] > started)
    valid &= started < end
    order = np.lexsort((creator[valid], started[valid]))
    ended_v = ended[valid][order]
    return {
        "creator": creator[valid][order],
        "merchant": merchant[valid][order],
        "started": started[valid][order],
        "ended": ended_v,
        "duration_hours": duration_hours[valid][order],
        "category": merchants["category"][merchant[valid][order]],
    }


# --------------------------------------------------------------------------- feed


def impression_probabilities(
    config: SimConfig,
    merchants: Mapping[str, np.ndarray],
    creators: Mapping[str, np.ndarray],
    merchant: np.ndarray,
    creator: np.ndarray,
    category: np.ndarray,
    affinity: np.ndarray,
    follows_creator: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``p_click``, ``p_purchase``, ``p_bad_order``, ``p_bad`` of feed impressions.

    One row per impression: the stream's ``merchant``, ``creator`` and ``category`` (indices
    into the latent arrays), the viewer's ``affinity`` (category preference x number of
    categories) and whether the viewer follows the creator at that time. ``p_bad_order`` is per
    placed order, ``p_bad`` per purchase including the chance of a cancellation. The feed log
    and the closed-loop world (:mod:`trustfeed.training.world`) both draw from these.
    """
    quality = creators["quality"][creator]
    trust = merchants["trust"][merchant]
    log_affinity = np.log(affinity + 0.05)
    p_click = sigmoid(
        -1.3 + 0.8 * log_affinity + 1.2 * follows_creator + 1.5 * (quality - 0.65) + 0.8 * (creators["popularity"][creator] - 0.5)
    )
    p_purchase = sigmoid(
        -2.4
        + 0.6 * log_affinity
        + 0.8 * follows_creator
        + 0.8 * (quality - 0.65)
        + _CATEGORY_CONVERSION[category]
        + 2.0 * config.impulse_strength * (1.0 - trust)
    )
    # A poor host oversells, so bad orders through them are a little more likely. A cancelled
    # order never reaches the buyer, so p_bad is per purchase including that chance.
    p_bad_order = np.clip(merchants["p_bad"][merchant] * (0.75 + 0.75 * (1.0 - quality)), 0.0, 1.0)
    p_bad = p_bad_order * (1.0 - _p_cancel(trust))
    return p_click, p_purchase, p_bad_order, p_bad


def _feed(
    config: SimConfig,
    merchants: dict[str, np.ndarray],
    creators: dict[str, np.ndarray],
    users: dict[str, np.ndarray],
    follows: dict[str, np.ndarray],
    streams: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The feed log: retrieval, logging-policy ranking, clicks, watch time and purchases."""
    rng = stage_rng(config.seed, 6)
    n_hours = config.days * 24
    n_streams = len(streams["creator"])

    # Which streams are live in which hour: one row per (stream, covered hour).
    first_hour = np.floor(streams["started"] / HOUR).astype(np.int64)
    span = streams["duration_hours"].astype(np.int64)
    live_stream = np.repeat(np.arange(n_streams), span)
    live_hour = np.repeat(first_hour, span) + rank_within_sorted(live_stream)
    in_window = live_hour < n_hours
    live_stream, live_hour = live_stream[in_window], live_hour[in_window]
    # Retrieval is head-biased: candidates are drawn in proportion to followers.
    live_weight = creators["followers"][streams["creator"][live_stream]] ** _RETRIEVAL_EXPONENT

    # Live rows sorted by hour, so that one day's rows are a contiguous slice.
    by_hour = np.argsort(live_hour, kind="stable")
    live_stream, live_hour, live_weight = live_stream[by_hour], live_hour[by_hour], live_weight[by_hour]
    day_bounds = np.searchsorted(live_hour, np.arange(config.days + 1) * 24)

    per_day = config.n_requests_per_day
    n_requests = per_day * config.days
    req_user = flat_weighted_draw(users["activity"], rng.random(n_requests))
    parts: list[tuple[np.ndarray, ...]] = []
    for day in range(config.days):  # one day at a time keeps the draw arrays small
        hour_of_day = categorical(rng.random(per_day), _HOUR_WEIGHT)
        # Requests are numbered in time order, which is also the order of the log.
        day_ts = np.sort(day * DAY + hour_of_day * HOUR + 300.0 + rng.random(per_day) * (HOUR - 301.0))
        hour_of_day = np.floor(day_ts / HOUR).astype(np.int64) - day * 24
        slate_size = rng.integers(config.slate_min, config.slate_max + 1, per_day)
        lo, hi = day_bounds[day], day_bounds[day + 1]
        if hi == lo:
            continue
        # Draw with replacement, keep each stream's first draw, cut at the slate size.
        draws = np.ceil(slate_size * _RETRIEVAL_DRAWS).astype(np.int64) + 4
        d_request = np.repeat(np.arange(per_day), draws)
        picked = grouped_weighted_draw(
            live_hour[lo:hi] - day * 24, live_weight[lo:hi], 24, hour_of_day[d_request], rng.random(len(d_request))
        )
        ok = picked >= 0
        d_request, d_stream = d_request[ok], live_stream[lo:hi][picked[ok]]
        key = d_request * max(n_streams, 1) + d_stream
        _, first_idx = np.unique(key, return_index=True)
        first_idx.sort()
        d_request, d_stream = d_request[first_idx], d_stream[first_idx]
        keep = rank_within_sorted(d_request) < slate_size[d_request]
        d_request, d_stream = d_request[keep], d_stream[keep]
        d_ts = day_ts[d_request]
        keep = merchants["active_end"][streams["merchant"][d_stream]] > d_ts  # a shop banned mid-stream leaves
        d_request, d_stream, d_ts = d_request[keep], d_stream[keep], d_ts[keep]
        # Logging policy: popularity plus noise, best first.
        policy_score = np.log(creators["followers"][streams["creator"][d_stream]]) + rng.gumbel(0.0, 1.5, len(d_stream))
        order = order_within_sorted_groups(d_request, -policy_score, config.slate_max)
        parts.append((d_request[order] + day * per_day, d_stream[order], d_ts[order]))
    if parts:
        request, stream, ts = (np.concatenate(columns) for columns in zip(*parts))
    else:
        request, stream, ts = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    merchant = streams["merchant"][stream]
    creator = streams["creator"][stream]
    user = req_user[request]
    position = rank_within_sorted(request) + 1

    category = streams["category"][stream]
    affinity = users["preference"][user, category] * len(CATEGORIES)
    follow_key = user.astype(np.int64) * config.n_creators + creator
    hit = np.searchsorted(follows["key"], follow_key)
    hit_safe = np.minimum(hit, max(len(follows["key"]) - 1, 0))
    if len(follows["key"]):
        follows_creator = (follows["key"][hit_safe] == follow_key) & (follows["t"][hit_safe] <= ts)
    else:
        follows_creator = np.zeros(len(stream), dtype=bool)
    quality = creators["quality"][creator]
    log_affinity = np.log(affinity + 0.05)
    p_click, p_purchase, p_bad_order, p_bad = impression_probabilities(
        config, merchants, creators, merchant, creator, category, affinity, follows_creator
    )
    exam = position.astype(np.float64) ** -config.position_bias_eta
    clicked = rng.random(len(stream)) < exam * p_click
    hit_rows = np.flatnonzero(clicked)
    # Only clicks need a watch time and a purchase draw.
    watch = np.zeros(len(stream))
    watch[hit_rows] = np.minimum(
        rng.lognormal(np.log(60.0) + 1.0 * (quality[hit_rows] - 0.65) + 0.3 * log_affinity[hit_rows], 0.9),
        streams["ended"][stream[hit_rows]] - ts[hit_rows],
    )
    purchased = np.zeros(len(stream), dtype=bool)
    purchased[hit_rows] = rng.random(len(hit_rows)) < p_purchase[hit_rows]
    order_time = np.full(len(stream), np.nan)
    order_time[hit_rows] = ts[hit_rows] + (0.3 + 0.7 * rng.random(len(hit_rows))) * np.maximum(watch[hit_rows], 1.0)
    purchased &= order_time < merchants["active_end"][merchant]  # the window end, or the shop's ban
    return {
        # Compact dtypes: at benchmark scale this dict holds tens of millions of rows.
        "request": request,
        "user": user.astype(np.int32),
        "ts": ts,
        "stream": stream.astype(np.int32),
        "position": position.astype(np.int32),
        "clicked": clicked,
        "watch": np.round(watch, 1),
        "purchased": purchased,
        "p_click": p_click,
        "p_purchase": p_purchase,
        "p_bad": p_bad,
        "purchase_rows": np.flatnonzero(purchased),
        "order_time": order_time[purchased],
        "p_bad_order": p_bad_order[purchased],
    }


# --------------------------------------------------------------------------- orders


def _orders(
    config: SimConfig,
    merchants: dict[str, np.ndarray],
    users: dict[str, np.ndarray],
    streams: dict[str, np.ndarray],
    feed: dict[str, np.ndarray],
    end: float,
) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 7)
    n_merchants = len(merchants["trust"])
    trust = merchants["trust"]
    active_span = np.maximum(merchants["active_end"] - merchants["active_start"], 0.0)

    # Organic orders (shop page, search, followers watching directly): impulse selling helps
    # low-trust shops here too.
    rate = config.orders_per_merchant_day * merchants["size"] * (1.0 + 0.5 * config.impulse_strength * (1.0 - trust))
    counts = rng.poisson(rate * active_span / DAY)
    o_merchant = np.repeat(np.arange(n_merchants), counts)
    o_created = merchants["active_start"][o_merchant] + rng.random(len(o_merchant)) * active_span[o_merchant]
    o_category = merchants["category"][o_merchant]
    o_user = np.empty(len(o_merchant), dtype=np.int64)
    for k in range(len(CATEGORIES)):  # one weighted draw per category: buyers who like it buy it
        in_k = np.flatnonzero(o_category == k)
        if len(in_k):
            o_user[in_k] = flat_weighted_draw(users["activity"] * users["preference"][:, k], rng.random(len(in_k)))

    # Brushing: fresh accounts, tiny amounts, many orders per account at some shops.
    brushers = np.flatnonzero(merchants["brusher"])
    fake_counts = rng.poisson(config.fake_orders_per_brusher_day * active_span[brushers] / DAY)
    per_account = np.where(rng.random(len(brushers)) < 0.3, np.maximum(fake_counts, 1), rng.integers(1, 4, len(brushers)))
    accounts = np.maximum(np.ceil(fake_counts / per_account), 1).astype(np.int64)
    f_merchant = np.repeat(brushers, fake_counts)
    f_local_account = np.floor(rng.random(len(f_merchant)) * np.repeat(accounts, fake_counts)).astype(np.int64)
    account_offset = np.concatenate(([0], np.cumsum(accounts)[:-1])) if len(accounts) else np.zeros(0, dtype=np.int64)
    f_user = config.n_users + np.repeat(account_offset, fake_counts) + f_local_account
    n_fake_users = int(accounts.sum()) if len(accounts) else 0
    f_created = merchants["active_start"][f_merchant] + rng.random(len(f_merchant)) * active_span[f_merchant]

    purchased = feed["purchase_rows"]
    feed_stream = feed["stream"][purchased].astype(np.int64)
    n_org, n_fake, n_feed = len(o_merchant), len(f_merchant), len(purchased)
    kind = np.concatenate(
        (np.full(n_org, _KIND_ORGANIC), np.full(n_feed, _KIND_FEED), np.full(n_fake, _KIND_FAKE))
    ).astype(np.int8)
    merchant = np.concatenate((o_merchant, streams["merchant"][feed_stream], f_merchant))
    user = np.concatenate((o_user, feed["user"][purchased].astype(np.int64), f_user))
    created = np.concatenate((o_created, feed["order_time"], f_created))
    creator = np.concatenate((np.full(n_org, -1), streams["creator"][feed_stream], np.full(n_fake, -1)))
    stream = np.concatenate((np.full(n_org, -1), feed_stream, np.full(n_fake, -1)))
    impression = np.concatenate((np.full(n_org, -1), purchased, np.full(n_fake, -1)))
    p_bad = np.concatenate((merchants["p_bad"][o_merchant], feed["p_bad_order"], np.zeros(n_fake)))
    category = merchants["category"][merchant]
    n = len(merchant)
    fake = kind == _KIND_FAKE
    amount = np.where(
        fake,
        np.round(rng.uniform(0.5, 3.0, n), 2),
        np.round(rng.lognormal(np.log(_CATEGORY_PRICE[category]), 0.6), 2),
    )

    order = np.argsort(created, kind="stable")
    kind, merchant, user, created, creator, stream, impression, p_bad, category, amount, fake = (
        a[order] for a in (kind, merchant, user, created, creator, stream, impression, p_bad, category, amount, fake)
    )
    lifecycle = fulfilment(rng, config, trust[merchant], p_bad, fake, created, end)
    return {
        "kind": kind,
        "merchant": merchant,
        "user": user,
        "created": created,
        "creator": creator,
        "stream": stream,
        "impression": impression,
        "amount": amount,
        "category": category,
        **lifecycle,
        "fake": fake,
        "n_fake_users": np.array([n_fake_users]),
    }


def fulfilment(
    rng: np.random.Generator,
    config: SimConfig,
    trust: np.ndarray,
    p_bad: np.ndarray,
    fake: np.ndarray,
    created: np.ndarray,
    end: float,
    outcome_uniforms: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """What happens to placed orders: cancellation, bad outcome, presale, shipping, delivery.

    One row per order (its merchant's latent ``trust``, its ``p_bad`` per placed order, whether
    it is a ``fake`` brushing order, its ``created`` time); times after ``end`` are unknown
    (``NaN``). The feed log and the closed-loop world share it. ``outcome_uniforms``: the
    uniforms of the cancellation and bad-outcome draws, one per order (the closed-loop world
    keys them by the order's buyer and candidate, so two policies that place the same order
    get the same outcome); by default they come from ``rng``.
    """
    n = len(created)
    t = trust
    d = 1.0 - t
    u_cancel, u_bad = (rng.random(n), rng.random(n)) if outcome_uniforms is None else outcome_uniforms
    cancelled = ~fake & (u_cancel < _p_cancel(t))
    bad = ~fake & ~cancelled & (u_bad < p_bad)
    presale = ~fake & (rng.random(n) < 0.04)
    promised = created + np.where(presale, rng.uniform(7, 15, n) * DAY, 48 * HOUR)
    late = ~fake & (rng.random(n) < 0.03 + 0.35 * d**2)
    ship_delay = np.where(
        late,
        (promised - created) + rng.lognormal(np.log(30.0), 0.6, n) * HOUR,
        np.where(presale, rng.random(n) * (promised - created), rng.lognormal(np.log(18.0), 0.5, n) * HOUR),
    )
    ship_delay = np.where(fake, rng.uniform(1, 6, n) * HOUR, ship_delay)
    shipped = np.where(cancelled, np.nan, created + ship_delay)
    logistics_delayed = ~cancelled & (rng.random(n) < config.logistics_delay_rate)
    transit = rng.lognormal(np.log(60.0), 0.35, n) * HOUR + np.where(logistics_delayed, rng.uniform(48, 144, n) * HOUR, 0.0)
    delivered = shipped + transit
    shipped = np.where(shipped < end, shipped, np.nan)
    delivered = np.where(delivered < end, delivered, np.nan)
    return {
        "cancelled": cancelled,
        "bad": bad,
        "presale": presale,
        "promised": promised,
        "late": late,
        "shipped": shipped,
        "delivered": delivered,
        "logistics_delayed": logistics_delayed,
    }


def case_resolution(rng: np.random.Generator, distrust: np.ndarray) -> np.ndarray:
    """Seconds from opening to resolving an after-sales case of merchants with ``1 - trust`` = ``distrust``.

    Low-trust shops drag their feet; the platform steps in more often.
    """
    return rng.lognormal(np.log(20.0 * (1.0 + 3.0 * distrust)), 0.6) * HOUR


def case_outcome(u: np.ndarray, bad: np.ndarray, no_reason: np.ndarray, logistics: np.ndarray, intervened: np.ndarray) -> np.ndarray:
    """Outcome codes of resolved cases from uniforms ``u``, by what the case is about."""
    return np.select(
        [bad & intervened, bad, no_reason, logistics],
        [
            categorical(u, np.array([0.9, 0.07, 0.03])),
            categorical(u, np.array([0.72, 0.16, 0.12])),
            categorical(u, np.array([0.9, 0.0, 0.1])),
            categorical(u, np.array([0.85, 0.1, 0.05])),
        ],
        categorical(u, np.array([0.5, 0.3, 0.2])),
    )


def _after_sales(config: SimConfig, merchants: dict[str, np.ndarray], orders: dict[str, np.ndarray], end: float) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 8)
    n = len(orders["merchant"])
    trust = merchants["trust"][orders["merchant"]]
    d = 1.0 - trust
    delivered = np.isfinite(orders["delivered"]) & ~orders["fake"]
    # No-reason returns are drawn first so that their rate is the same at every shop.
    no_reason = delivered & (rng.random(n) < config.no_reason_return_rate)
    bad_case = delivered & ~no_reason & orders["bad"] & (rng.random(n) < 0.55)
    logistics = delivered & ~bad_case & ~no_reason & orders["logistics_delayed"] & (rng.random(n) < 0.25)
    other = delivered & ~bad_case & ~no_reason & ~logistics & (rng.random(n) < 0.01)
    has_case = bad_case | no_reason | logistics | other
    idx = np.flatnonzero(has_case)
    k = len(idx)
    dk = d[idx]
    bad_k, nr_k, lg_k = bad_case[idx], no_reason[idx], logistics[idx]

    p_counterfeit = (0.05 + 0.3 * dk) * _CATEGORY_BAD[orders["category"][idx]] / 1.4
    bad_reason = categorical(
        rng.random(k),
        np.stack([0.55 - p_counterfeit / 2, 0.45 - p_counterfeit / 2, p_counterfeit], axis=1),
    )
    reason = np.select(
        [bad_k, nr_k, lg_k],
        [np.array([_REASON["quality"], _REASON["not_as_described"], _REASON["counterfeit"]])[bad_reason], _REASON["no_reason"], _REASON["logistics"]],
        _REASON["other"],
    )
    u = rng.random(k)
    case_type = np.select(
        [bad_k, nr_k, lg_k],
        [
            categorical(u, np.array([0.45, 0.25, 0.15, 0.15])),
            _TYPE["return"],
            np.where(u < 0.6, _TYPE["refund_only"], _TYPE["return"]),
        ],
        categorical(u, np.array([0.4, 0.3, 0.1, 0.2])),
    )
    delivered_at = orders["delivered"][idx]
    opened = delivered_at + np.where(lg_k, rng.uniform(0.05, 2.0, k), rng.uniform(0.1, 6.5, k)) * DAY
    resolved = opened + case_resolution(rng, dk)
    intervened = rng.random(k) < np.where(bad_k, 0.05 + 0.6 * dk**2, 0.02)
    outcome = case_outcome(rng.random(k), bad_k, nr_k, lg_k, intervened)
    keep = opened < end
    unresolved = ~(resolved < end)
    return {
        "order": idx[keep],
        "opened": opened[keep],
        "type": case_type[keep],
        "reason": reason[keep],
        "resolved": np.where(unresolved, np.nan, resolved)[keep],
        "outcome": np.where(unresolved, -1, outcome)[keep],
        "intervened": intervened[keep],
    }


def _reviews(config: SimConfig, merchants: dict[str, np.ndarray], orders: dict[str, np.ndarray], end: float) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 9)
    n = len(orders["merchant"])
    delivered = np.isfinite(orders["delivered"])
    fake = orders["fake"]
    bad = orders["bad"]
    reviewed = delivered & np.where(fake, rng.random(n) < 0.9, rng.random(n) < 0.25 + 0.2 * bad)
    idx = np.flatnonzero(reviewed)
    k = len(idx)
    fake_k, bad_k = fake[idx], bad[idx]
    slow_k = orders["logistics_delayed"][idx] | orders["late"][idx]
    trust_k = merchants["trust"][orders["merchant"][idx]]
    probs = np.where(
        bad_k[:, None],
        np.array([0.45, 0.30, 0.15, 0.07, 0.03]),
        np.where(slow_k[:, None], np.array([0.03, 0.07, 0.20, 0.35, 0.35]), np.array([0.01, 0.02, 0.07, 0.25, 0.65])),
    )
    probs = np.where(fake_k[:, None], np.array([0.0, 0.0, 0.0, 0.05, 0.95]), probs)
    rating = categorical(rng.random(k), probs) + 1
    noise = rng.normal(0.0, 0.7, (k, 3))
    quality = np.clip(np.rint(rating + noise[:, 0]), 1, 5)
    service = np.clip(np.rint(rating + noise[:, 1] - 1.2 * (1.0 - trust_k) * ~fake_k), 1, 5)
    logistics = np.clip(np.rint(4.6 + noise[:, 2] - 1.5 * slow_k), 1, 5)
    details_missing = rng.random(k) < np.where(fake_k, 0.2, 0.35)
    created = orders["delivered"][idx] + rng.uniform(2.0 * HOUR, 7.0 * DAY, k)
    keep = created < end
    return {
        "order": idx[keep],
        "created": created[keep],
        "rating": rating[keep],
        "quality": np.where(fake_k, 5, quality)[keep],
        "service": np.where(fake_k, 5, service)[keep],
        "logistics": np.where(fake_k, 5, logistics)[keep],
        "details_missing": details_missing[keep],
    }


def _reports(
    config: SimConfig,
    merchants: dict[str, np.ndarray],
    creators: dict[str, np.ndarray],
    streams: dict[str, np.ndarray],
    orders: dict[str, np.ndarray],
    end: float,
) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 10)
    n_users = config.n_users

    # 1. Buyers of bad orders complain; the platform mostly confirms it.
    idx = np.flatnonzero(orders["bad"] & (rng.random(len(orders["bad"])) < 0.2))
    k1 = len(idx)
    d1 = 1.0 - merchants["trust"][orders["merchant"][idx]]
    base = np.where(np.isfinite(orders["delivered"][idx]), orders["delivered"][idx], orders["created"][idx] + 3 * DAY)
    t1 = base + rng.uniform(0.1, 7.0, k1) * DAY
    cat1 = np.where(rng.random(k1) < 0.1 + 0.3 * d1, _REPORT["counterfeit"], _REPORT["false_advertising"])
    ver1 = categorical(rng.random(k1), np.array([0.75, 0.10, 0.15]))  # true, false, unreviewed

    # 2. Unfounded reports hit every shop alike (rivals, confused buyers).
    active_days = np.maximum(merchants["active_end"] - merchants["active_start"], 0.0) / DAY
    counts = rng.poisson(config.false_report_rate * active_days * np.sqrt(merchants["size"]))
    m2 = np.repeat(np.arange(len(counts)), counts)
    k2 = len(m2)
    t2 = merchants["active_start"][m2] + rng.random(k2) * (merchants["active_end"][m2] - merchants["active_start"][m2])
    cat2 = rng.integers(0, len(REPORT_CATEGORIES), k2)
    ver2 = np.where(rng.random(k2) < 0.75, 1, 2)

    # 3. Viewers report hosts who push (inducement) or misbehave on stream; poor hosts more.
    q = creators["quality"][streams["creator"]]
    s3 = np.flatnonzero(rng.random(len(q)) < 0.02 + 0.25 * (1.0 - q) ** 2)
    k3 = len(s3)
    q3 = q[s3]
    t3 = streams["started"][s3] + rng.random(k3) * (streams["ended"][s3] - streams["started"][s3])
    cat3 = categorical(rng.random(k3), np.array([0.2, 0.0, 0.45, 0.25, 0.1]))
    ver3 = np.where(rng.random(k3) < 0.15, 2, np.where(rng.random(k3) < 0.3 + 0.5 * (1.0 - q3), 0, 1))

    t = np.concatenate((t1, t2, t3))
    verified = np.concatenate((ver1, ver2, ver3))
    # The platform needs a couple of days to review a report.
    verified = np.where(t > end - 2 * DAY, 2, verified)
    merchant = np.concatenate((orders["merchant"][idx], m2, streams["merchant"][s3]))
    creator = np.concatenate((orders["creator"][idx], np.full(k2, -1), streams["creator"][s3]))
    stream = np.concatenate((orders["stream"][idx], np.full(k2, -1), s3))
    reporter = np.concatenate((orders["user"][idx], rng.integers(0, n_users, k2 + k3)))
    category = np.concatenate((cat1, cat2, cat3))
    keep = t < end
    order = np.argsort(t[keep], kind="stable")
    return {
        "t": t[keep][order],
        "reporter": reporter[keep][order],
        "category": category[keep][order],
        "merchant": merchant[keep][order],
        "creator": creator[keep][order],
        "stream": stream[keep][order],
        "verified": verified[keep][order],
    }


def _guarantees(config: SimConfig, merchants: dict[str, np.ndarray], end: float) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 11)
    n = len(merchants["trust"])
    b = len(BENEFITS)
    merchant = np.repeat(np.arange(n), b)
    benefit = np.tile(np.arange(b), n)
    trust = merchants["trust"][merchant]
    p = _BENEFIT_BASE[benefit] * (0.12 + 0.88 * sigmoid(10.0 * (trust - 0.6)))
    enrolled_mask = rng.random(len(merchant)) < p
    merchant, benefit, trust = merchant[enrolled_mask], benefit[enrolled_mask], trust[enrolled_mask]
    k = len(merchant)
    low = np.maximum(merchants["registered"][merchant], -365 * DAY)
    high = merchants["active_end"][merchant]
    enrolled = low + rng.random(k) * np.maximum(high - low, 0.0) * 0.8
    leaves = rng.random(k) < 0.05 + 0.3 * (1.0 - trust)
    left = np.where(leaves, enrolled + rng.random(k) * (end - enrolled), np.nan)
    banned_at = merchants["banned_at"][merchant]
    left = np.where(np.isfinite(banned_at), np.fmin(left, banned_at), left)
    left = np.where(left < end, left, np.nan)
    keep = (enrolled < high) & (enrolled < end)
    return {"merchant": merchant[keep], "benefit": benefit[keep], "enrolled": enrolled[keep], "left": left[keep]}


def _nps(config: SimConfig, merchants: dict[str, np.ndarray], orders: dict[str, np.ndarray], end: float) -> dict[str, np.ndarray]:
    rng = stage_rng(config.seed, 12)
    n = len(orders["merchant"])
    idx = np.flatnonzero(np.isfinite(orders["delivered"]) & ~orders["fake"] & (rng.random(n) < 0.05))
    k = len(idx)
    trust = merchants["trust"][orders["merchant"][idx]]
    score = np.clip(np.rint(rng.normal(2.5 + 7.5 * trust - 4.0 * orders["bad"][idx], 1.8)), 0, 10)
    created = orders["delivered"][idx] + rng.uniform(1.0, 10.0, k) * DAY
    keep = created < end
    return {"order": idx[keep], "score": score[keep].astype(np.int64), "created": created[keep]}


# --------------------------------------------------------------------------- assembly


def simulate(config: SimConfig, progress: Progress | None = None) -> SimulatedPlatform:
    """Simulate a platform: event-log tables plus hidden truth.

    Parameters
    ----------
    config
        Sizes, rates and the seed; the same config always gives identical tables.
    progress
        Receives one call per stage.

    Returns
    -------
    SimulatedPlatform
        ``tables``: the twelve tables of docs/contract.md section 1, with the validated dtypes;
        ``truth``: ``merchants``, ``creators``, ``orders`` and ``impressions`` (see the
        module docstring).

    Examples
    --------
    >>> platform = simulate(SimConfig(seed=2, merchants=30, days=7))
    >>> platform.tables["orders"]["order_id"].is_unique
    True
    """
    report = progress if progress is not None else NullProgress()
    end = config.days * DAY
    start_ns = int(config.start_time.value)
    report("simulating merchants and enforcement")
    merchants = _merchants(config, end)
    report("simulating creators, users and follows")
    creators = _creators(config, merchants, end)
    users = _users(config)
    follows = _follows(config, users, creators, end)
    report("simulating livestreams")
    streams = _livestreams(config, merchants, creators, end)
    report("simulating the feed log")
    feed = _feed(config, merchants, creators, users, follows, streams)
    report("simulating orders")
    orders = _orders(config, merchants, users, streams, feed, end)
    orders, switch = apply_exit_scams(config, merchants, orders, end)
    report("simulating after-sales, reviews, reports, guarantees and NPS")
    cases = _after_sales(config, merchants, orders, end)
    reviews = _reviews(config, merchants, orders, end)
    reports = _reports(config, merchants, creators, streams, orders, end)
    cases, reviews, reports = exit_scam_aftermath(config, orders, cases, reviews, reports, end)
    reports, *bombed = report_bombing(config, merchants, orders, reports, end)
    guarantees = _guarantees(config, merchants, end)
    nps = _nps(config, merchants, orders, end)
    report("assembling tables")
    tables, truth = _assemble(config, start_ns, merchants, creators, follows, streams, feed, orders, cases, reviews, reports, guarantees, nps)
    truth["merchants"] = attack_truth(truth["merchants"], start_ns, switch, (bombed[0], bombed[1]))
    return SimulatedPlatform(tables=tables, truth=truth, config=config)


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    # The columns are fresh arrays nobody else holds; copying them would double peak memory.
    return pd.DataFrame(columns, copy=False)


def _assemble(
    config: SimConfig,
    start_ns: int,
    merchants: dict[str, np.ndarray],
    creators: dict[str, np.ndarray],
    follows: dict[str, np.ndarray],
    streams: dict[str, np.ndarray],
    feed: dict[str, np.ndarray],
    orders: dict[str, np.ndarray],
    cases: dict[str, np.ndarray],
    reviews: dict[str, np.ndarray],
    reports: dict[str, np.ndarray],
    guarantees: dict[str, np.ndarray],
    nps: dict[str, np.ndarray],
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    rng = stage_rng(config.seed, 13)

    def when(seconds: np.ndarray) -> pd.Series:
        return time_column(seconds, start_ns)

    n_merchants = len(merchants["trust"])
    merchant_ids = id_array("m", np.arange(n_merchants))
    entity_ids = id_array("e", np.arange(config.merchants))
    creator_ids = id_array("c", np.arange(len(creators["followers"])))
    stream_ids = id_array("s", np.arange(len(streams["creator"])))
    n_fake_users = int(orders["n_fake_users"][0])
    # Fake accounts get ids from the same pool as real users: nothing in the id gives them away.
    user_ids = id_array("u", rng.permutation(config.n_users + n_fake_users))
    order_ids = id_array("o", np.arange(len(orders["merchant"])))

    tables: dict[str, pd.DataFrame] = {}
    tables["merchants"] = _frame(
        {
            "merchant_id": id_column(merchant_ids),
            "registered_at": when(merchants["registered"]),
            "entity_id": id_column(take_ids(entity_ids, merchants["entity"])),
            "category": text_column(merchants["category"], CATEGORIES),
        }
    )
    tables["creators"] = _frame(
        {
            "creator_id": id_column(creator_ids),
            "registered_at": when(creators["registered"]),
            "merchant_id": id_column(take_ids(merchant_ids, creators["own_merchant"])),
            "followers": creators["followers"].astype(np.float64),
        }
    )
    tables["livestreams"] = _frame(
        {
            "stream_id": id_column(stream_ids),
            "creator_id": id_column(take_ids(creator_ids, streams["creator"])),
            "merchant_id": id_column(take_ids(merchant_ids, streams["merchant"])),
            "started_at": when(streams["started"]),
            "ended_at": when(np.where(streams["ended"] < config.days * DAY, streams["ended"], np.nan)),
            "category": text_column(streams["category"], CATEGORIES),
        }
    )
    status = np.where(orders["cancelled"], ORDER_STATUSES.index("cancelled"), ORDER_STATUSES.index("paid"))
    tables["orders"] = _frame(
        {
            "order_id": id_column(order_ids),
            "user_id": id_column(take_ids(user_ids, orders["user"])),
            "merchant_id": id_column(take_ids(merchant_ids, orders["merchant"])),
            "created_at": when(orders["created"]),
            "amount": orders["amount"].astype(np.float64),
            "creator_id": id_column(take_ids(creator_ids, orders["creator"])),
            "stream_id": id_column(take_ids(stream_ids, orders["stream"])),
            "status": enum_column(status, ORDER_STATUSES),
            "promised_ship_by": when(orders["promised"]),
            "shipped_at": when(orders["shipped"]),
            "delivered_at": when(orders["delivered"]),
            "presale": bool_column(orders["presale"]),
        }
    )
    tables["after_sales"] = _frame(
        {
            "case_id": id_column(id_array("as", np.arange(len(cases["order"])))),
            "order_id": id_column(take_ids(order_ids, cases["order"])),
            "opened_at": when(cases["opened"]),
            "type": enum_column(cases["type"], AFTER_SALES_TYPES),
            "reason": enum_column(cases["reason"], AFTER_SALES_REASONS),
            "resolved_at": when(cases["resolved"]),
            "outcome": enum_column(cases["outcome"], AFTER_SALES_OUTCOMES),
            "platform_intervened": bool_column(cases["intervened"]),
        }
    ).sort_values("opened_at", kind="stable", ignore_index=True)
    missing = reviews["details_missing"]
    tables["reviews"] = _frame(
        {
            "review_id": id_column(id_array("r", np.arange(len(reviews["order"])))),
            "order_id": id_column(take_ids(order_ids, reviews["order"])),
            "user_id": id_column(take_ids(user_ids, orders["user"][reviews["order"]])),
            "created_at": when(reviews["created"]),
            "rating": int_column(reviews["rating"]),
            "quality": int_column(reviews["quality"], missing),
            "service": int_column(reviews["service"], missing),
            "logistics": int_column(reviews["logistics"], missing),
        }
    ).sort_values("created_at", kind="stable", ignore_index=True)
    verified = reports["verified"]
    tables["reports"] = _frame(
        {
            "report_id": id_column(id_array("rp", np.arange(len(reports["t"])))),
            "reporter_id": id_column(take_ids(user_ids, reports["reporter"])),
            "created_at": when(reports["t"]),
            "category": enum_column(reports["category"], REPORT_CATEGORIES),
            "merchant_id": id_column(take_ids(merchant_ids, reports["merchant"])),
            "creator_id": id_column(take_ids(creator_ids, reports["creator"])),
            "stream_id": id_column(take_ids(stream_ids, reports["stream"])),
            "verified": bool_column(verified == 0, verified == 2),
        }
    )
    v_order = np.argsort(merchants["v_t"], kind="stable")
    v_merchant = merchants["v_merchant"][v_order]
    own_creator = np.full(n_merchants, -1, dtype=np.int64)
    is_self = creators["own_merchant"] >= 0
    own_creator[creators["own_merchant"][is_self]] = np.flatnonzero(is_self)
    tables["violations"] = _frame(
        {
            "violation_id": id_column(id_array("v", np.arange(len(v_order)))),
            "merchant_id": id_column(take_ids(merchant_ids, v_merchant)),
            "created_at": when(merchants["v_t"][v_order]),
            "severity": int_column(merchants["v_severity"][v_order]),
            "creator_id": id_column(take_ids(creator_ids, own_creator[v_merchant])),
            "type": text_column(merchants["v_type"][v_order], _VIOLATION_TYPES),
            "penalty": enum_column(merchants["v_penalty"][v_order], PENALTIES),
        }
    )
    tables["guarantees"] = _frame(
        {
            "merchant_id": id_column(take_ids(merchant_ids, guarantees["merchant"])),
            "benefit": enum_column(guarantees["benefit"], BENEFITS),
            "enrolled_at": when(guarantees["enrolled"]),
            "left_at": when(guarantees["left"]),
        }
    ).sort_values("enrolled_at", kind="stable", ignore_index=True)
    tables["nps"] = _frame(
        {
            "response_id": id_column(id_array("n", np.arange(len(nps["order"])))),
            "user_id": id_column(take_ids(user_ids, orders["user"][nps["order"]])),
            "merchant_id": id_column(take_ids(merchant_ids, orders["merchant"][nps["order"]])),
            "created_at": when(nps["created"]),
            "score": int_column(nps["score"]),
        }
    ).sort_values("created_at", kind="stable", ignore_index=True)
    f_order = np.argsort(follows["t"], kind="stable")
    tables["follows"] = _frame(
        {
            "user_id": id_column(take_ids(user_ids, follows["user"][f_order])),
            "creator_id": id_column(take_ids(creator_ids, follows["creator"][f_order])),
            "followed_at": when(follows["t"][f_order]),
        }
    )

    # The feed is already in log order (requests in time order, positions ascending); requests
    # that retrieved nothing are skipped in the numbering. The impression -> order link goes
    # through the order's row in the time-sorted order table.
    n_impressions = len(feed["request"])
    present = np.zeros(config.n_requests_per_day * config.days, dtype=bool)
    present[feed["request"]] = True
    request_number = (np.cumsum(present) - 1)[feed.pop("request")]
    impression_order = np.full(n_impressions, -1, dtype=np.int64)
    from_feed = orders["impression"] >= 0
    impression_order[orders["impression"][from_feed]] = np.flatnonzero(from_feed)
    request_ids = take_ids(id_array("q", np.arange(int(present.sum()))), request_number)
    del request_number
    imp_stream = feed.pop("stream")
    imp_stream_ids = take_ids(stream_ids, imp_stream)
    # Columns are popped from the feed as they are built: at scale the feed arrays and the
    # table would not fit in memory together.
    impressions: dict[str, pd.Series] = {}
    impressions["request_id"] = id_column(request_ids)
    impressions["user_id"] = id_column(take_ids(user_ids, feed.pop("user")))
    impressions["ts"] = when(feed.pop("ts"))
    impressions["stream_id"] = id_column(imp_stream_ids)
    impressions["creator_id"] = id_column(take_ids(creator_ids, streams["creator"][imp_stream]))
    impressions["merchant_id"] = id_column(take_ids(merchant_ids, streams["merchant"][imp_stream]))
    del imp_stream
    impressions["position"] = int_column(feed.pop("position"))
    impressions["clicked"] = bool_column(feed.pop("clicked"))
    impressions["watch_seconds"] = pd.Series(feed.pop("watch").astype(np.float64, copy=False))
    impressions["purchased"] = bool_column(feed.pop("purchased"))
    impressions["order_id"] = id_column(take_ids(order_ids, impression_order))
    del impression_order
    tables["impressions"] = pd.DataFrame(impressions, copy=False)
    del impressions

    truth = {
        "merchants": _frame(
            {
                "merchant_id": id_column(merchant_ids),
                "entity_id": id_column(take_ids(entity_ids, merchants["entity"])),
                "latent_trust": merchants["trust"],
                "is_brusher": merchants["brusher"],
                "is_reregistered": merchants["reregistered"],
                # per real organic order, cancellations included (a cancelled order is not bad)
                "p_bad": merchants["p_bad"] * (1.0 - _p_cancel(merchants["trust"])),
                "banned_at": when(np.where(np.isfinite(merchants["banned_at"]), merchants["banned_at"], np.nan)),
            }
        ),
        "creators": _frame(
            {
                "creator_id": id_column(creator_ids),
                "quality": creators["quality"],
                "popularity": creators["popularity"],
            }
        ),
        "orders": _frame(
            {
                "order_id": id_column(order_ids),
                "is_fake": orders["fake"],
                "is_bad": orders["bad"],
            }
        ),
        "impressions": _frame(
            {
                "request_id": id_column(request_ids),
                "stream_id": id_column(imp_stream_ids),
                "p_click": feed.pop("p_click"),
                "p_purchase": feed.pop("p_purchase"),
                "p_bad": feed.pop("p_bad"),
            }
        ),
    }
    return tables, truth


# --------------------------------------------------------------------------- files


def write_dataset(
    platform: SimulatedPlatform, out_dir: str | Path, progress: Progress | None = None, *, force: bool = False
) -> None:
    """Write the tables (docs/contract.md section 1, Parquet) and ``truth/`` to ``out_dir``, atomically.

    ``out_dir`` is replaced as a whole only once everything is written, and only if it is
    empty or an earlier simulated dataset (with ``force``: any trustfeed output); anything
    else raises :class:`~trustfeed.features.errors.OutputError`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "data"
    >>> write_dataset(simulate(SimConfig(seed=1, merchants=15, days=3)), out)
    >>> sorted(load_truth(out))
    ['creators', 'impressions', 'merchants', 'orders']
    """
    report = progress if progress is not None else NullProgress()
    with atomic_dir(out_dir, "simulated-dataset", force=force) as tmp:
        report("writing event tables")
        _write_tables(platform.tables, tmp)
        report("writing truth")
        truth_dir = tmp / "truth"
        truth_dir.mkdir()
        for name, frame in sorted(platform.truth.items()):
            frame.to_parquet(truth_dir / f"{name}.parquet", index=False)
        (truth_dir / "meta.json").write_text(json.dumps(platform.meta, indent=2, sort_keys=True) + "\n")


def _write_tables(tables: Mapping[str, pd.DataFrame], directory: Path) -> None:
    # write_events validates and replaces ``directory`` atomically; it is our own staging
    # directory, so truth/ is added afterwards and the whole dataset appears in one rename.
    write_events(tables, directory)


def load_truth(events_dir: str | Path) -> dict[str, pd.DataFrame] | None:
    """The hidden truth written beside a simulated dataset, or ``None`` if there is none."""
    truth_dir = Path(events_dir) / "truth"
    if not truth_dir.is_dir():
        return None
    return {path.stem: pd.read_parquet(path) for path in sorted(truth_dir.glob("*.parquet"))}


def load_truth_meta(events_dir: str | Path) -> dict[str, Any] | None:
    """``truth/meta.json`` of a simulated dataset (position-bias curve, config), or ``None``."""
    path = Path(events_dir) / "truth" / "meta.json"
    if not path.is_file():
        return None
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


# --------------------------------------------------------------------------- evaluation


def examination(position: np.ndarray | pd.Series, meta: Mapping[str, Any]) -> np.ndarray:
    """Probability that a viewer examines 1-based ``position``: ``position ** -eta``."""
    bias = meta.get("position_bias", meta)
    eta = float(bias["eta"])
    pos = np.asarray(position, dtype=np.float64)
    if (pos < 1).any() or not np.isfinite(pos).all():
        raise SchemaError("slates", "position", "1-based positions", "positions < 1 or missing", pos[(pos < 1) | ~np.isfinite(pos)][:5].tolist())
    return np.asarray(pos**-eta)


def expected_outcomes(slates_df: pd.DataFrame, truth_impressions: pd.DataFrame, meta: Mapping[str, Any]) -> pd.DataFrame:
    """Expected clicks, orders and bad orders of re-ordered logged slates.

    Parameters
    ----------
    slates_df
        ``request_id``, ``stream_id``, ``position`` (the *new* 1-based position of each
        logged candidate; candidates may be left out, e.g. filtered).
    truth_impressions
        ``truth/impressions`` (``request_id``, ``stream_id``, ``p_click``, ``p_purchase``, ``p_bad``).
    meta
        ``truth/meta.json`` (needs ``position_bias.eta``).

    Returns
    -------
    pandas.DataFrame
        One row per request: ``request_id``, ``expected_clicks``, ``expected_orders``,
        ``expected_bad_orders`` (formula in the module docstring).

    Examples
    --------
    >>> truth = pd.DataFrame({"request_id": ["q1", "q1"], "stream_id": ["a", "b"],
    ...                       "p_click": [0.5, 0.2], "p_purchase": [0.1, 0.5], "p_bad": [0.0, 1.0]})
    >>> slate = pd.DataFrame({"request_id": ["q1", "q1"], "stream_id": ["b", "a"], "position": [1, 2]})
    >>> out = expected_outcomes(slate, truth, {"position_bias": {"eta": 1.0}})
    >>> round(float(out["expected_orders"].iloc[0]), 3)
    0.125
    """
    for column in ("request_id", "stream_id", "position"):
        if column not in slates_df.columns:
            raise SchemaError("slates", column, "a column", "no such column")
    keys = slates_df[["request_id", "stream_id", "position"]].astype({"request_id": "string", "stream_id": "string"})
    probs = truth_impressions[["request_id", "stream_id", "p_click", "p_purchase", "p_bad"]].astype(
        {"request_id": "string", "stream_id": "string"}
    )
    merged = keys.merge(probs, on=["request_id", "stream_id"], how="left", validate="many_to_one")
    unknown = merged["p_click"].isna()
    if unknown.any():
        raise SchemaError(
            "slates",
            "stream_id",
            "(request_id, stream_id) pairs that were logged",
            f"{int(unknown.sum())} unlogged pairs",
            merged.loc[unknown, ["request_id", "stream_id"]],
        )
    clicks = examination(merged["position"].to_numpy(), meta) * merged["p_click"].to_numpy()
    orders = clicks * merged["p_purchase"].to_numpy()
    frame = pd.DataFrame(
        {
            "request_id": merged["request_id"],
            "expected_clicks": clicks,
            "expected_orders": orders,
            "expected_bad_orders": orders * merged["p_bad"].to_numpy(),
        }
    )
    return frame.groupby("request_id", sort=False, observed=True).sum().reset_index()

