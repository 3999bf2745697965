"""A steppable simulated platform: the simulator's world, continued day by day after its log.

:func:`~trustfeed.training.simulate.simulate` draws a whole window at once. A closed-loop
evaluation needs the same platform one day at a time, so that what a ranking policy shows on
day ``d`` changes what buyers, creators and merchants do on day ``d + 1``. :class:`World`
rebuilds the simulator's hidden state from a dataset written by ``trustfeed simulate``
(``truth/meta.json`` holds the config, and every latent draw is seeded by it) and continues
it after the window's end:

* each day, creators go live (streams per day as in the simulator), buyers open the feed
  (requests in proportion to their activity), candidates are retrieved as in the simulator
  (head-biased, among streams live in the request's hour);
* a policy ranks each request; clicks, purchases and bad orders are drawn with the
  simulator's own probabilities (:func:`~trustfeed.training.simulate.impression_probabilities`)
  and order lifecycle (:func:`~trustfeed.training.simulate.fulfilment`), then after-sales
  cases and reviews with the simulator's stages;
* enforcement goes on (violations, bans, banned entities re-registering), and background
  organic orders keep the merchants' trust signals fed;
* the new rows are appended to the event log in the contract's tables (``livestreams``,
  ``impressions``, ``orders``, ``after_sales``, ``reviews``, ``violations``, ``merchants``), so
  trust snapshots can be rebuilt from them.

:class:`DynamicsConfig` adds the long-run responses the one-shot evaluation cannot see (buyer
platform trust, creator supply, merchant exit). With :meth:`DynamicsConfig.off` the world is
the simulator's static one: every probability equals the feed log's.

Common random numbers
---------------------
Every draw of the day loop is a keyed uniform (:func:`keyed_uniforms`): a hash of the
rollout seed, the stage, the day and the entities involved (buyer, request number, creator,
retrieval draw). Two identical policies therefore give identical trajectories, and two
different policies see the same uniforms for the same (day, buyer, request, candidate): a
candidate shown by both is clicked under both or under neither at equal examination, and an
order placed under both is cancelled or goes wrong under both or under neither. Only the rest
of the order lifecycle (shipping and delivery times) and its after-sales draws use one seeded
generator per day and stage, shared as long as the orders are the same.

Examples
--------
>>> import tempfile, pathlib
>>> from trustfeed.training.simulate import SimConfig, simulate, write_dataset
>>> events = pathlib.Path(tempfile.mkdtemp()) / "events"
>>> write_dataset(simulate(SimConfig(seed=1, merchants=20, days=8)), events)
>>> world = World(WorldBase.from_events(events), seed=0)
>>> day = world.next_requests()
>>> responses = [{"request_id": r["request_id"], "items": r["candidates"]} for r in day.requests]
>>> outcome = world.serve(day, responses)
>>> outcome.metrics["requests"] == len(day.requests)
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import special, stats

from ..features.config import Config, Constraints, Flag, Integer, Real
from ..features.errors import ConfigError, SchemaError
from ..features.events import EventLog, load_events, table_dtypes
from ..features.outcomes import net_value
from ._sim_util import DAY, HOUR, categorical, grouped_weighted_draw, stage_rng, time_column
from .simulate import (
    _CATEGORY_PRICE,
    _HOUR_WEIGHT,
    _RETRIEVAL_DRAWS,
    _RETRIEVAL_EXPONENT,
    CATEGORIES,
    SimConfig,
    _after_sales,
    _creators,
    _follows,
    _merchants,
    _p_bad,
    _reviews,
    _users,
    _violations,
    case_outcome,
    case_resolution,
    fulfilment,
    impression_probabilities,
    load_truth,
    load_truth_meta,
)

__all__ = ["DynamicsConfig", "World", "WorldBase", "DayRequests", "DayOutcome", "keyed_uniforms"]

# stages of the keyed uniforms (any distinct constants)
_U_STREAMS, _U_STREAM_HOUR, _U_STREAM_MINUTE, _U_STREAM_LENGTH, _U_PARTNER = 1, 2, 3, 4, 5
_U_REQUESTS, _U_REQUEST_HOUR, _U_REQUEST_MINUTE, _U_SLATE, _U_RETRIEVE = 11, 12, 13, 14, 15
_U_CLICK, _U_WATCH, _U_PURCHASE, _U_ORDER_DELAY, _U_AMOUNT, _U_CANCEL, _U_BAD = 21, 22, 23, 24, 25, 26, 27
_U_ORGANIC, _U_ORGANIC_TIME, _U_ORGANIC_BUYER, _U_ORGANIC_AMOUNT, _U_ORGANIC_CANCEL, _U_ORGANIC_BAD = 31, 32, 33, 34, 35, 36
_U_EXIT, _U_REREGISTER, _U_REREGISTER_DELAY, _U_REREGISTER_TRUST = 41, 42, 43, 44
# seeded generators (per day) of the simulator stages reused as a whole
_G_FEED_ORDERS, _G_ORGANIC_ORDERS, _G_VIOLATIONS, _G_AFTER_SALES = 51, 52, 53, 54
# generator of the logged orders' outcomes after the window (one per platform, not per seed)
_G_CONTINUATION = 61

_MAX_STREAMS_PER_CREATOR_DAY = 4
_EXPOSURE_REFERENCE_DAYS = 14


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DynamicsConfig(Config):
    """The long-run responses of the closed-loop world; each one can be switched off.

    Every parameter says where its value comes from; "assumption" marks a value chosen for
    plausibility, not measured. With every switch off (:meth:`off`) the world is the
    simulator's static platform.

    Parameters
    ----------
    buyer_trust
        Switch: each buyer carries a platform trust in [0, 1] (1 at the start). A bad order
        lowers it, good orders rebuild it, and it scales how often the buyer opens the feed
        and how willing they are to buy. Source: Nosko & Tadelis (NBER w20830): a bad
        transaction lowers the buyer's return to the whole platform, not only to that seller;
        Cabral & Hortaçsu (2010) on eBay.
    bad_order_trust_loss
        Share of a buyer's trust lost with one bad order (assumption, sized so that one bad
        order cuts the chance to come back by about a quarter, in the range of the
        return-rate drops Nosko & Tadelis report).
    guarantee_shield
        Share of that loss avoided when the merchant offers buyer-protection guarantees
        (assumption; direction from Hui et al., Management Science, on eBay Buyer Protection,
        and Kuaishou's guaranteed orders raising willingness to order by more than 20%).
    good_order_trust_gain
        Share of the gap to full trust a good (kept) order closes: trust rebuilds slowly
        (assumption).
    visit_elasticity
        Feed opens per day scale with ``trust ** visit_elasticity`` (assumption).
    purchase_elasticity
        Purchase probability after a click scales with ``trust ** purchase_elasticity``
        (assumption).
    creator_supply
        Switch: creators' streaming frequency follows the exposure they received recently,
        relative to what they received in the log's last two weeks; starved creators stream
        less and eventually stop. Source: RecSim NG's content-provider model; a randomized
        test on a large short-video platform (ICIS 2024) where boosting small creators'
        traffic raised their production by 5.87%.
    exposure_memory_days
        Half-life, in days, of the exponentially weighted recent exposure (assumption).
    supply_elasticity
        Streams per day scale with ``(recent / reference exposure) ** supply_elasticity``
        (assumption: +5.87% production for a traffic boost of roughly +75%, ICIS 2024, with
        the size of the boost assumed, gives about 0.1; default 0.15 to make the response
        visible within weeks).
    supply_min, supply_max
        Bounds of that factor (assumption).
    starve_ratio, quit_after_days
        A creator whose recent exposure stays below ``starve_ratio`` x its reference for
        ``quit_after_days`` days in a row stops streaming for good (assumption).
    merchant_exit
        Switch: low-trust merchants that lose exposure may close their shop.
    exit_trust_max, exit_exposure_ratio, exit_hazard
        A merchant with latent trust below ``exit_trust_max`` whose recent exposure is below
        ``exit_exposure_ratio`` x its reference closes with probability ``exit_hazard`` per
        day (assumption). Banned entities keep re-registering either way, as in the simulator.

    Examples
    --------
    >>> DynamicsConfig.off().buyer_trust
    False
    >>> DynamicsConfig(bad_order_trust_loss=1.5)
    Traceback (most recent call last):
    ...
    trustfeed.features.errors.ConfigError: DynamicsConfig.bad_order_trust_loss: expected a number in [0, 1], got 1.5
    """

    buyer_trust: bool = True
    bad_order_trust_loss: float = 0.3
    guarantee_shield: float = 0.5
    good_order_trust_gain: float = 0.05
    visit_elasticity: float = 1.0
    purchase_elasticity: float = 0.5
    creator_supply: bool = True
    exposure_memory_days: float = 7.0
    supply_elasticity: float = 0.15
    supply_min: float = 0.2
    supply_max: float = 2.0
    starve_ratio: float = 0.25
    quit_after_days: int = 14
    merchant_exit: bool = True
    exit_trust_max: float = 0.4
    exit_exposure_ratio: float = 0.3
    exit_hazard: float = 0.05

    constraints: ClassVar[Constraints] = {
        **dict.fromkeys(("buyer_trust", "creator_supply", "merchant_exit"), Flag()),
        **dict.fromkeys(
            ("bad_order_trust_loss", "guarantee_shield", "good_order_trust_gain", "starve_ratio",
             "exit_trust_max", "exit_exposure_ratio", "exit_hazard"),
            Real(0, 1),
        ),
        **dict.fromkeys(("visit_elasticity", "purchase_elasticity", "supply_elasticity", "supply_min", "supply_max"), Real(0)),
        "exposure_memory_days": Real(0, strict_low=True),
        "quit_after_days": Integer(low=1),
    }

    def check(self) -> None:
        if self.supply_max < self.supply_min:
            raise self.reject("supply_max", f"a finite number >= supply_min ({self.supply_min})")

    @classmethod
    def off(cls) -> DynamicsConfig:
        """Every dynamic switched off: the simulator's static platform."""
        return cls(buyer_trust=False, creator_supply=False, merchant_exit=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- keyed uniforms

def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)))


def keyed_uniforms(seed: int, stage: int, *keys: Any) -> np.ndarray:
    """Uniforms in [0, 1) that depend only on ``(seed, stage, *keys)``, element-wise.

    ``keys`` are integers or integer arrays (broadcast together). The same key always gives
    the same number, whatever else is drawn: the basis of common random numbers across
    policies.

    Examples
    --------
    >>> a = keyed_uniforms(1, 2, np.arange(5), 7)
    >>> bool(((a >= 0) & (a < 1)).all()), bool((keyed_uniforms(1, 2, np.arange(5), 7) == a).all())
    (True, True)
    >>> float(keyed_uniforms(1, 2, 3, 7)) == float(a[3])
    True
    """
    h = _splitmix(np.asarray(seed, dtype=np.int64).view(np.uint64) ^ (np.uint64(stage) << np.uint64(40)))
    for key in keys:
        h = _splitmix(h ^ _splitmix(np.asarray(key, dtype=np.int64).view(np.uint64)))
    return np.asarray((h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0))


def _poisson(u: np.ndarray, lam: np.ndarray, cap: int) -> np.ndarray:
    counts = stats.poisson.ppf(u, np.maximum(lam, 0.0))
    return np.minimum(np.nan_to_num(counts, nan=0.0), cap).astype(np.int64)


# --------------------------------------------------------------------------- the fixed part


@dataclass
class WorldBase:
    """What every rollout of one dataset shares: the loaded events and the latent platform.

    Build with :meth:`from_events`; :class:`World` copies the mutable parts.
    """

    events: EventLog
    config: SimConfig
    meta: dict[str, Any]
    truth: dict[str, pd.DataFrame]
    merchants: dict[str, np.ndarray]
    creators: dict[str, np.ndarray]
    users: dict[str, np.ndarray]
    follows: dict[str, np.ndarray]
    merchant_ids: np.ndarray
    entity_ids: np.ndarray
    creator_ids: np.ndarray
    user_ids: np.ndarray
    guaranteed: np.ndarray
    creator_reference: np.ndarray
    merchant_reference: np.ndarray
    n_streams: int
    n_orders: int
    n_cases: int
    n_reviews: int
    n_violations: int

    @property
    def start(self) -> pd.Timestamp:
        """When the rollout starts: the end of the simulated window."""
        return self.config.end_time

    @classmethod
    def from_events(cls, events_dir: str | Path, events: EventLog | None = None) -> WorldBase:
        """Rebuild the latent platform behind a dataset written by ``trustfeed simulate``.

        Raises
        ------
        SchemaError
            The directory has no ``truth/`` (it was not simulated), or its truth does not
            match the platform its config rebuilds.
        """
        meta = load_truth_meta(events_dir)
        truth = load_truth(events_dir)
        if meta is None or truth is None or "config" not in meta:
            raise SchemaError(
                "truth", None, "a dataset written by `trustfeed simulate` (truth/meta.json beside the tables)",
                f"no simulator truth in {events_dir}",
            )
        config = SimConfig.from_dict(meta["config"])
        log = events if events is not None else load_events(events_dir)
        end = config.days * DAY
        merchants = _merchants(config, end)
        creators = _creators(config, merchants, end)
        users = _users(config)
        follows = _follows(config, users, creators, end)
        n_merchants, n_creators = len(merchants["trust"]), len(creators["followers"])
        merchant_ids = np.array([f"m{i}" for i in range(n_merchants)], dtype=object)
        if len(truth["merchants"]) != n_merchants or (truth["merchants"]["merchant_id"].astype(str).to_numpy() != merchant_ids).any():
            raise SchemaError("truth", "merchants", f"the {n_merchants} merchants its config rebuilds", "other merchants")
        fake_users = log["orders"]["user_id"][truth["orders"]["is_fake"].to_numpy(dtype=bool)].nunique()
        user_ids = _user_ids(config, fake_users, follows, log["follows"])

        guarantees = log["guarantees"]
        end_ts = config.end_time
        enrolled = (guarantees["enrolled_at"] < end_ts).to_numpy(dtype=bool, na_value=False)
        left = (guarantees["left_at"] < end_ts).to_numpy(dtype=bool, na_value=False)
        guaranteed_ids = set(guarantees.loc[enrolled & ~left, "merchant_id"].astype(str))
        guaranteed = np.array([m in guaranteed_ids for m in merchant_ids], dtype=bool)

        creator_ids = np.array([f"c{i}" for i in range(n_creators)], dtype=object)
        log = _continue_outcomes(config, merchants, merchant_ids, log, truth)
        impressions = log["impressions"]
        recent = (impressions["ts"] >= end_ts - pd.Timedelta(days=_EXPOSURE_REFERENCE_DAYS)).to_numpy(dtype=bool)
        shown = impressions.loc[recent]
        exposure = 1.0 / np.log2(shown["position"].to_numpy(np.float64) + 1.0)
        creator_reference = _daily_reference(shown["creator_id"].astype(str).to_numpy(), exposure, creator_ids)
        merchant_reference = _daily_reference(shown["merchant_id"].astype(str).to_numpy(), exposure, merchant_ids)
        return cls(
            events=log, config=config, meta=meta, truth=truth, merchants=merchants, creators=creators, users=users,
            follows=follows, merchant_ids=merchant_ids,
            entity_ids=np.array([f"e{i}" for i in range(config.merchants)], dtype=object),
            creator_ids=creator_ids, user_ids=user_ids, guaranteed=guaranteed,
            creator_reference=creator_reference, merchant_reference=merchant_reference,
            n_streams=len(log["livestreams"]), n_orders=len(log["orders"]), n_cases=len(log["after_sales"]),
            n_reviews=len(log["reviews"]), n_violations=len(log["violations"]),
        )


# Rejection rounds of the continuation's conditional draws: an order still drawing an outcome
# before the window's end after this many gets none (each round rejects under half of them).
_CONTINUATION_ROUNDS = 8
_BAD_REASONS = ("quality", "not_as_described", "counterfeit")
# A logged transit this long (seconds) reads as a logistics delay, which only the reviews'
# logistics score reads: the simulator's undelayed transits exceed it 4% of the time, its
# delayed ones (48-144 hours more) fall short of it 8% of the time.
_DELAYED_TRANSIT = 110.0 * HOUR


def _seconds_after(column: pd.Series, start: pd.Timestamp) -> np.ndarray:
    """Seconds after ``start`` of a time column (``NaN`` where null)."""
    return (column - start).dt.total_seconds().to_numpy(dtype=np.float64, na_value=np.nan)


def _after_end(
    draw: Any, rows: np.ndarray, sub: Any, time_key: str, end: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``draw(sub(rows), seed)``'s events of ``rows`` given that none of them had one before ``end``.

    Rejection: an order whose draw has an event before ``end`` is drawn again (the log shows
    it had none), the others keep their events (all at or after ``end``).
    """
    parts: list[dict[str, np.ndarray]] = []
    remaining = rows
    for _ in range(_CONTINUATION_ROUNDS):
        if len(remaining) == 0:
            break
        out = draw(sub(remaining), int(rng.integers(2**62)))
        rejected = np.unique(out["order"][out[time_key] < end])
        keep = ~np.isin(out["order"], rejected)
        parts.append({key: (remaining[value] if key == "order" else value)[keep] for key, value in out.items()})
        remaining = remaining[rejected]
    if not parts:
        return {}
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _continue_outcomes(
    config: SimConfig, merchants: Mapping[str, np.ndarray], merchant_ids: np.ndarray, log: EventLog, truth: Mapping[str, pd.DataFrame]
) -> EventLog:
    """The log with what its orders did after the simulated window: shipping, cases, reviews.

    The simulator writes only what happened before its window's end, so an order placed in
    the window's last days is never delivered, complained about or reviewed in its log. A
    rollout that continued that log as it is kept those orders spotless for good: trust
    index fits over the rollout's first weeks learned from a label window whose last ten
    days of pre-rollout orders had lost their bad outcomes (the later bad-order rate fell
    from 0.125 to 0.07 on a risky platform, and the fitted index priced risk low), and the
    window's unshipped orders stayed unshipped. Here those outcomes happen, drawn once per
    platform (the same for every policy and seed) from the simulator's own lifecycle, case
    and review models and the order's true outcome (``truth/orders``):

    * paid orders not delivered by the end are shipped (if not yet) and delivered after it,
      with the simulator's delays (a draw that falls before the end is moved into the first
      day after it), then get their cases and reviews;
    * orders delivered before the end with no case (review) in the log get one with the
      simulator's chance given that none came before the end;
    * cases open at the end are resolved after it, with the simulator's outcomes.

    Times after the end sit in the log as they do for the rollout's own orders; every reader
    cuts the log at a time (:meth:`EventLog.before`), so the log before the end is unchanged.
    Without ``truth/orders`` the log is returned as it is.
    """
    flags = truth.get("orders")
    orders = log["orders"]
    if flags is None or orders.empty or not {"order_id", "is_bad", "is_fake"} <= set(flags.columns):
        return log
    rng = stage_rng(config.seed, _G_CONTINUATION)
    start, end = config.start_time, config.days * DAY
    by_id = flags.set_index(flags["order_id"].astype(str))
    ids = orders["order_id"].astype(str)
    bad = by_id["is_bad"].reindex(ids).fillna(False).to_numpy(dtype=bool)
    fake = by_id["is_fake"].reindex(ids).fillna(False).to_numpy(dtype=bool)
    position = pd.Series(np.arange(len(merchant_ids)), index=merchant_ids).reindex(orders["merchant_id"].astype(str)).to_numpy()
    known = np.isfinite(position)
    merchant = np.where(known, position, 0).astype(np.int64)
    paid = known & (orders["status"].astype(str) == "paid").to_numpy()
    created, promised = _seconds_after(orders["created_at"], start), _seconds_after(orders["promised_ship_by"], start)
    shipped, delivered = _seconds_after(orders["shipped_at"], start), _seconds_after(orders["delivered_at"], start)
    presale = orders["presale"].fillna(False).to_numpy(dtype=bool) if "presale" in orders else np.zeros(len(orders), dtype=bool)
    trust = merchants["trust"]

    # 1. paid orders not delivered by the end: the rest of their lifecycle
    pending = np.flatnonzero(paid & ~np.isfinite(delivered))
    k = len(pending)
    ones = np.ones(k)
    drawn = fulfilment(rng, config, trust[merchant[pending]], np.zeros(k), fake[pending], created[pending], math.inf,
                       outcome_uniforms=(ones, ones))
    waited = promised[pending] - end
    presale_ship = end + rng.random(k) * np.where(waited > 0, waited, 0.0)
    after_end = np.where(drawn["shipped"] >= end, drawn["shipped"], end + rng.uniform(0.0, DAY, k))
    new_shipped = np.where(np.isfinite(shipped[pending]), shipped[pending],
                           np.where(presale[pending] & (waited > 0), presale_ship, after_end))
    new_delivered = new_shipped + (drawn["delivered"] - drawn["shipped"])
    new_delivered = np.where(new_delivered >= end, new_delivered, end + rng.uniform(0.0, DAY / 2, k))
    logged = np.flatnonzero(paid & np.isfinite(delivered))
    shipped, delivered = shipped.copy(), delivered.copy()
    shipped[pending], delivered[pending] = new_shipped, new_delivered
    delayed = np.zeros(len(orders), dtype=bool)
    delayed[pending] = drawn["logistics_delayed"]
    delayed[logged] = (delivered - shipped)[logged] > _DELAYED_TRANSIT

    def sub(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"merchant": merchant[rows], "delivered": delivered[rows], "fake": fake[rows], "bad": bad[rows],
                "logistics_delayed": delayed[rows], "late": shipped[rows] > promised[rows],
                "category": merchants["category"][merchant[rows]]}

    def cases_of(rows_sub: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        return _after_sales(replace(config, seed=seed), merchants, rows_sub, math.inf)  # type: ignore[arg-type]

    def reviews_of(rows_sub: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
        return _reviews(replace(config, seed=seed), merchants, rows_sub, math.inf)  # type: ignore[arg-type]

    # 2. cases and reviews: every delivered order without one in the log, given none before the end
    cases_log, reviews_log = log["after_sales"], log["reviews"]
    no_case = paid & np.isfinite(delivered) & ~ids.isin(cases_log["order_id"].astype(str)).to_numpy()
    no_review = paid & np.isfinite(delivered) & ~ids.isin(reviews_log["order_id"].astype(str)).to_numpy()
    cases = _after_end(cases_of, np.flatnonzero(no_case), sub, "opened", end, rng)
    reviews = _after_end(reviews_of, np.flatnonzero(no_review), sub, "created", end, rng)

    # 3. cases open at the end: resolved after it
    cases_log = cases_log.copy()
    open_cases = np.flatnonzero(cases_log["resolved_at"].isna().to_numpy() & cases_log["opened_at"].notna().to_numpy())
    order_row = pd.Series(np.arange(len(orders)), index=ids).reindex(cases_log["order_id"].astype(str).iloc[open_cases]).to_numpy()
    open_cases, order_row = open_cases[np.isfinite(order_row)], order_row[np.isfinite(order_row)].astype(np.int64)
    if len(open_cases):
        distrust = 1.0 - trust[merchant[order_row]]
        opened = _seconds_after(cases_log["opened_at"], start)[open_cases]
        resolved = np.full(len(open_cases), np.nan)
        for _ in range(_CONTINUATION_ROUNDS):
            todo = ~np.isfinite(resolved)
            if not todo.any():
                break
            draw_at = opened[todo] + case_resolution(rng, distrust[todo])
            resolved[np.flatnonzero(todo)[draw_at >= end]] = draw_at[draw_at >= end]
        still = ~np.isfinite(resolved)
        resolved[still] = end + rng.uniform(0.0, DAY / 2, int(still.sum()))
        reason = cases_log["reason"].astype(str).to_numpy()[open_cases]
        intervened = cases_log["platform_intervened"].fillna(False).to_numpy(dtype=bool)[open_cases]
        outcome = case_outcome(rng.random(len(open_cases)), np.isin(reason, _BAD_REASONS), reason == "no_reason",
                               reason == "logistics", intervened)
        at = cases_log.index[open_cases]
        cases_log.loc[at, "resolved_at"] = time_column(resolved, int(start.value)).set_axis(at)
        cases_log.loc[at, "outcome"] = _labels("after_sales", "outcome", outcome)

    start_ns = int(start.value)
    orders = orders.copy()
    rows = orders.index[pending]
    orders.loc[rows, "shipped_at"] = time_column(new_shipped, start_ns).set_axis(rows)
    orders.loc[rows, "delivered_at"] = time_column(new_delivered, start_ns).set_axis(rows)
    tables = dict(log.tables)
    tables["orders"] = orders
    order_ids = ids.to_numpy(dtype=object)
    if cases:
        case_ids = np.array([f"as{i}" for i in range(len(cases_log), len(cases_log) + len(cases["order"]))], dtype=object)
        added = _typed_frame("after_sales", [_case_rows(cases, case_ids, order_ids)], start_ns)
        tables["after_sales"] = pd.concat([cases_log, added], ignore_index=True)
    else:
        tables["after_sales"] = cases_log
    if reviews:
        review_ids = np.array([f"r{i}" for i in range(len(reviews_log), len(reviews_log) + len(reviews["order"]))], dtype=object)
        rows_of = _review_rows(reviews, review_ids, order_ids, orders["user_id"].astype(str).to_numpy(dtype=object))
        tables["reviews"] = pd.concat([reviews_log, _typed_frame("reviews", [rows_of], start_ns)], ignore_index=True)
    return replace(log, tables=tables)


def _user_ids(config: SimConfig, fake_users: int, follows: Mapping[str, np.ndarray], logged: pd.DataFrame) -> np.ndarray:
    """Ids of the latent users: a permutation drawn first in the simulator's assembly stage.

    It runs over the real users and every brushing account, and a few accounts never place
    an order, so their number is found by matching the rebuilt follows with the logged ones.
    """
    logged_pairs = set(zip(logged["user_id"].astype(str), logged["creator_id"].astype(str)))
    sample = np.linspace(0, len(follows["user"]) - 1, min(len(follows["user"]), 200)).astype(np.int64)
    for extra in range(fake_users, fake_users + 50 * max(config.merchants, 1) + 1):
        permutation = np.random.default_rng(np.random.SeedSequence([config.seed, 13])).permutation(config.n_users + extra)
        ids = np.array([f"u{i}" for i in permutation[: config.n_users]], dtype=object)
        if all((ids[follows["user"][i]], f"c{follows['creator'][i]}") in logged_pairs for i in sample):
            return ids
    raise SchemaError("follows", "user_id", "the follows the dataset's simulator config rebuilds", "other follows")


def _daily_reference(ids: np.ndarray, exposure: np.ndarray, population: np.ndarray) -> np.ndarray:
    """Mean daily exposure per entity over the reference days, floored at a tenth of the mean."""
    totals = pd.Series(exposure).groupby(ids).sum()
    per_day = totals.reindex(population, fill_value=0.0).to_numpy(np.float64) / _EXPOSURE_REFERENCE_DAYS
    positive = per_day[per_day > 0]
    floor = 0.1 * float(positive.mean()) if len(positive) else 1.0
    return np.maximum(per_day, floor)


# --------------------------------------------------------------------------- one day


@dataclass
class DayRequests:
    """The feed requests of one day, as contract request dicts, and their candidates.

    ``candidates`` has one row per (request, candidate) in request order: ``request_id``,
    ``stream_id``, ``request`` (the request's number that day), ``user``, ``k`` (the buyer's
    request number that day), ``stream``, ``creator``, ``merchant`` (latent indices), ``ts``
    (seconds after the simulation start).
    """

    day: int
    requests: list[dict[str, Any]]
    candidates: pd.DataFrame


@dataclass
class DayOutcome:
    """What one served day produced.

    ``impressions`` are the rows appended to the ``impressions`` table (what a service would
    report through ``record_impressions``); ``shown`` are the same rows with the latent
    indices (``user``, ``creator``, ``merchant``, ...), their ``exposure``, whether they were
    ``clicked`` and ``purchased``, and whether that order went ``bad`` for the buyer (truth);
    ``metrics`` the day's outcome counts and the same slates' expected ones.
    """

    day: int
    impressions: pd.DataFrame
    shown: pd.DataFrame
    metrics: dict[str, float]


@dataclass
class _Tracker:
    """Exponentially weighted recent exposure of creators or merchants, against a reference."""

    reference: np.ndarray
    recent: np.ndarray
    starved_days: np.ndarray

    @classmethod
    def start(cls, reference: np.ndarray) -> _Tracker:
        return cls(reference, reference.copy(), np.zeros(len(reference), dtype=np.int64))

    def grow(self, n: int, reference: float) -> None:
        extra = n - len(self.reference)
        if extra > 0:
            self.reference = np.concatenate((self.reference, np.full(extra, reference)))
            self.recent = np.concatenate((self.recent, np.full(extra, reference)))
            self.starved_days = np.concatenate((self.starved_days, np.zeros(extra, dtype=np.int64)))

    def update(self, exposure: np.ndarray, half_life_days: float, starve_ratio: float) -> np.ndarray:
        weight = 1.0 - 0.5 ** (1.0 / half_life_days)
        self.recent = (1.0 - weight) * self.recent + weight * exposure
        ratio = self.recent / self.reference
        self.starved_days = np.where(ratio < starve_ratio, self.starved_days + 1, 0)
        return np.asarray(ratio)


class World:
    """One trajectory of the closed-loop platform (one policy, one seed).

    Parameters
    ----------
    base
        The shared dataset and latent platform (:meth:`WorldBase.from_events`).
    seed
        Rollout seed of the keyed uniforms.
    dynamics
        :class:`DynamicsConfig` (default: every dynamic on, default strengths).
    bad_cost
        Cost of a bad order in net value (``good - bad_cost x bad``), also used by the
        oracle's :meth:`true_net_value`.
    """

    def __init__(self, base: WorldBase, seed: int = 0, dynamics: DynamicsConfig | None = None, bad_cost: float = 2.0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"World.seed: expected an integer >= 0, got {seed!r}")
        if not _is_number(bad_cost) or bad_cost < 0:
            raise ConfigError(f"World.bad_cost: expected a finite number >= 0, got {bad_cost!r}")
        self.base = base
        self.seed = seed
        self.dynamics = dynamics if dynamics is not None else DynamicsConfig()
        self.bad_cost = float(bad_cost)
        self.config = base.config
        self.day = 0
        self._start_ns = int(base.config.start_time.value)
        self._end = base.config.days * DAY
        self.merchants = {key: value.copy() for key, value in base.merchants.items()}
        self.merchants["closed_at"] = np.full(len(self.merchants["trust"]), np.inf)
        self.merchant_ids = base.merchant_ids.copy()
        self.guaranteed = base.guaranteed.copy()
        self.creators = base.creators  # fixed traits; the dynamic ones below
        self.buyer_trust = np.ones(base.config.n_users)
        self.creator_supply = np.ones(len(base.creator_ids))
        self.creator_quit = np.zeros(len(base.creator_ids), dtype=bool)
        self._creator_exposure = _Tracker.start(base.creator_reference)
        self._merchant_exposure = _Tracker.start(base.merchant_reference)
        self._base_rate = 0.5 + 0.8 * base.creators["popularity"]
        self._activity_share = base.users["activity"] / base.users["activity"].sum()
        self._streams: dict[str, np.ndarray] = {k: np.zeros(0, dtype=d) for k, d in
                                               (("creator", np.int64), ("merchant", np.int64), ("started", float),
                                                ("duration", np.int64), ("number", np.int64))}
        self._counters = {"stream": base.n_streams, "order": base.n_orders, "case": base.n_cases,
                          "review": base.n_reviews, "violation": base.n_violations}
        # buyer trust changes waiting for the moment the buyer learns how an order went
        self._pending_trust = pd.DataFrame({"t": np.zeros(0), "user": np.zeros(0, np.int64),
                                            "loss": np.zeros(0), "gain": np.zeros(0, bool)})
        self._new_rows: dict[str, list[dict[str, Any]]] = {}
        self._events: EventLog = base.events
        self._day_candidates: pd.DataFrame | None = None
        self._today_active_creators = np.zeros(0, dtype=np.int64)
        self._today_streams = 0

    # ------------------------------------------------------------------ time and ids

    @property
    def now(self) -> pd.Timestamp:
        """Start of the current day (UTC)."""
        return self.base.start + pd.Timedelta(days=self.day)

    def _t0(self) -> float:
        return self._end + self.day * DAY

    def _next_ids(self, kind: str, prefix: str, n: int) -> np.ndarray:
        first = self._counters[kind]
        self._counters[kind] = first + n
        return np.array([f"{prefix}{i}" for i in range(first, first + n)], dtype=object)

    def _append(self, table: str, columns: dict[str, Any]) -> None:
        """Queue new rows of ``table``: raw columns (times as seconds after the start).

        They become typed frames only when the log is read (:meth:`events`), once per table
        and read, so trajectories that never rebuild a snapshot never pay for it.
        """
        lengths = {len(v) for v in columns.values() if v is not None and np.ndim(v)}
        if not lengths or lengths == {0}:
            return
        self._new_rows.setdefault(table, []).append(columns)

    def _frame(self, table: str, parts: list[dict[str, Any]]) -> pd.DataFrame:
        return _typed_frame(table, parts, self._start_ns)

    def _when(self, seconds: np.ndarray) -> pd.Series:
        # only for what must be a time now (request times, reported impressions)
        return time_column(np.asarray(seconds, dtype=np.float64), self._start_ns)

    def events(self) -> EventLog:
        """The event log so far: the dataset plus every row the rollout appended."""
        if self._new_rows:
            tables = dict(self._events.tables)
            for name, parts in self._new_rows.items():
                tables[name] = pd.concat([tables[name], self._frame(name, parts)], ignore_index=True)
            self._new_rows = {}
            missing = tuple(name for name in self._events.missing if name not in tables or tables[name].empty)
            self._events = replace(self._events, tables=tables, missing=missing)
        return self._events

    # ------------------------------------------------------------------ merchants

    def _merchant_active(self, t: float | np.ndarray) -> np.ndarray:
        m = self.merchants
        return (m["active_start"] <= t) & (m["banned_at"] > t) & (m["closed_at"] > t)

    def _merchant_end(self) -> np.ndarray:
        return np.minimum(self.merchants["banned_at"], self.merchants["closed_at"])

    # ------------------------------------------------------------------ the day's supply

    def _go_live(self) -> None:
        """Draw today's streams (yesterday's still running ones stay live)."""
        d, t0, seed = self.day, self._t0(), self.seed
        c = self.creators
        n_creators = len(self._base_rate)
        creator = np.arange(n_creators)
        own = c["own_merchant"]
        own_active = np.where(own >= 0, self._merchant_active(t0)[np.maximum(own, 0)], True)
        eligible = ~self.creator_quit & (c["active_start"] <= t0) & own_active
        rate = self._base_rate * (self.creator_supply if self.dynamics.creator_supply else 1.0)
        counts = _poisson(keyed_uniforms(seed, _U_STREAMS, d, creator), np.where(eligible, rate, 0.0), _MAX_STREAMS_PER_CREATOR_DAY)
        s_creator = np.repeat(creator, counts)
        s_number = np.arange(len(s_creator)) - np.repeat(np.cumsum(counts) - counts, counts)
        hour = categorical(keyed_uniforms(seed, _U_STREAM_HOUR, d, s_creator, s_number), _HOUR_WEIGHT)
        started = t0 + hour * HOUR + keyed_uniforms(seed, _U_STREAM_MINUTE, d, s_creator, s_number) * 240.0
        duration = 2 + np.floor(keyed_uniforms(seed, _U_STREAM_LENGTH, d, s_creator, s_number) * 4).astype(np.int64)
        merchant = own[s_creator].copy()
        free = merchant < 0
        active = self._merchant_active(t0)
        if free.any():
            weight = self.merchants["size"] * active
            merchant[free] = grouped_weighted_draw(
                self.merchants["category"], weight, len(CATEGORIES), c["category"][s_creator[free]],
                keyed_uniforms(seed, _U_PARTNER, d, s_creator[free], s_number[free]),
            )
        ok = merchant >= 0
        ok[ok] &= active[merchant[ok]]
        s_creator, merchant, started, duration = s_creator[ok], merchant[ok], started[ok], duration[ok]
        order = np.lexsort((s_creator, started))
        s_creator, merchant, started, duration = s_creator[order], merchant[order], started[order], duration[order]
        number = np.arange(len(s_creator)) + self._counters["stream"]
        self._counters["stream"] += len(s_creator)
        previous = self._streams
        still_live = previous["started"] + previous["duration"] * HOUR > t0
        self._streams = {
            "creator": np.concatenate((previous["creator"][still_live], s_creator)),
            "merchant": np.concatenate((previous["merchant"][still_live], merchant)),
            "started": np.concatenate((previous["started"][still_live], started)),
            "duration": np.concatenate((previous["duration"][still_live], duration)),
            "number": np.concatenate((previous["number"][still_live], number)),
        }
        ended = started + duration * HOUR
        self._append("livestreams", {
            "stream_id": [f"s{i}" for i in number],
            "creator_id": self.base.creator_ids[s_creator],
            "merchant_id": self.merchant_ids[merchant],
            "started_at": _seconds(started),
            "ended_at": _seconds(ended),
            "category": np.asarray(CATEGORIES, dtype=object)[self.merchants["category"][merchant]],
        })
        self._today_streams = len(s_creator)
        self._today_active_creators = np.unique(s_creator)

    def next_requests(self) -> DayRequests:
        """Start the day: streams go live, buyers open the feed, candidates are retrieved."""
        self._apply_pending_trust(self._t0())
        self._go_live()
        d, t0, seed, config = self.day, self._t0(), self.seed, self.config
        users = np.arange(config.n_users)
        visits = self._activity_share * config.n_requests_per_day
        if self.dynamics.buyer_trust:
            visits = visits * self.buyer_trust**self.dynamics.visit_elasticity
        counts = _poisson(keyed_uniforms(seed, _U_REQUESTS, d, users), visits, 8)
        r_user = np.repeat(users, counts)
        r_k = np.arange(len(r_user)) - np.repeat(np.cumsum(counts) - counts, counts)
        hour = categorical(keyed_uniforms(seed, _U_REQUEST_HOUR, d, r_user, r_k), _HOUR_WEIGHT)
        ts = t0 + hour * HOUR + 300.0 + keyed_uniforms(seed, _U_REQUEST_MINUTE, d, r_user, r_k) * (HOUR - 301.0)
        order = np.lexsort((r_k, r_user, ts))
        r_user, r_k, ts, hour = r_user[order], r_k[order], ts[order], hour[order]
        slate = config.slate_min + np.floor(
            keyed_uniforms(seed, _U_SLATE, d, r_user, r_k) * (config.slate_max - config.slate_min + 1)
        ).astype(np.int64)

        # live (stream, hour of day) rows; retrieval favours followed-by-many creators
        streams = self._streams
        first_hour = np.floor((streams["started"] - t0) / HOUR).astype(np.int64)
        span = streams["duration"]
        live = np.repeat(np.arange(len(span)), span)
        live_hour = np.repeat(first_hour, span) + (np.arange(len(live)) - np.repeat(np.cumsum(span) - span, span))
        keep = (live_hour >= 0) & (live_hour < 24)
        live, live_hour = live[keep], live_hour[keep]
        weight = self.creators["followers"][streams["creator"][live]] ** _RETRIEVAL_EXPONENT

        draws = np.ceil(slate * _RETRIEVAL_DRAWS).astype(np.int64) + 4
        d_request = np.repeat(np.arange(len(r_user)), draws)
        d_number = np.arange(len(d_request)) - np.repeat(np.cumsum(draws) - draws, draws)
        picked = grouped_weighted_draw(live_hour, weight, 24, hour[d_request],
                                       keyed_uniforms(seed, _U_RETRIEVE, d, r_user[d_request], r_k[d_request], d_number))
        ok = picked >= 0
        d_request, d_stream = d_request[ok], live[picked[ok]]
        frame = pd.DataFrame({"request": d_request, "stream": d_stream}).drop_duplicates()
        frame = frame.loc[frame.groupby("request").cumcount().to_numpy() < slate[frame["request"].to_numpy()]]
        request, stream = frame["request"].to_numpy(), frame["stream"].to_numpy()
        merchant = streams["merchant"][stream]
        # a shop banned or closed before the request leaves the feed
        open_shop = self._merchant_end()[merchant] > ts[request]
        request, stream, merchant = request[open_shop], stream[open_shop], merchant[open_shop]
        creator = streams["creator"][stream]
        request_ids = np.array([f"q{d}-{u}-{k}" for u, k in zip(r_user.tolist(), r_k.tolist())], dtype=object)
        stream_ids = np.array([f"s{i}" for i in streams["number"][stream]], dtype=object)
        candidates = pd.DataFrame({
            "request_id": request_ids[request], "stream_id": stream_ids, "request": request,
            "user": r_user[request], "k": r_k[request], "stream": stream, "creator": creator,
            "merchant": merchant, "ts": ts[request],
        })
        creator_ids = self.base.creator_ids[creator]
        merchant_ids = self.merchant_ids[merchant]
        iso = self._when(ts).dt.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy()
        bounds = np.searchsorted(request, np.arange(len(r_user) + 1))
        requests = []
        for i in range(len(r_user)):
            a, b = bounds[i], bounds[i + 1]
            if a == b:
                continue
            requests.append({
                "request_id": request_ids[i], "user_id": self.base.user_ids[r_user[i]], "ts": iso[i],
                "candidates": [{"stream_id": s, "creator_id": c, "merchant_id": m}
                               for s, c, m in zip(stream_ids[a:b], creator_ids[a:b], merchant_ids[a:b])],
            })
        self._day_candidates = candidates
        return DayRequests(d, requests, candidates)

    # ------------------------------------------------------------------ probabilities

    def _probabilities(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(p_click, p_purchase, p_bad_order, p_bad) of candidate rows, buyer trust included."""
        user, creator, merchant = (rows[c].to_numpy() for c in ("user", "creator", "merchant"))
        category = self.merchants["category"][merchant]
        affinity = self.base.users["preference"][user, category] * len(CATEGORIES)
        follows = self.base.follows
        n_creators = len(self.base.creator_ids)
        key = user.astype(np.int64) * n_creators + creator
        hit = np.minimum(np.searchsorted(follows["key"], key), max(len(follows["key"]) - 1, 0))
        if len(follows["key"]):
            following = (follows["key"][hit] == key) & (follows["t"][hit] <= rows["ts"].to_numpy())
        else:
            following = np.zeros(len(key), dtype=bool)
        p_click, p_purchase, p_bad_order, p_bad = impression_probabilities(
            self.config, self.merchants, self.creators, merchant, creator, category, affinity, following
        )
        if self.dynamics.buyer_trust:
            p_purchase = p_purchase * self.buyer_trust[user] ** self.dynamics.purchase_elasticity
        return p_click, p_purchase, p_bad_order, p_bad

    def today_active_creators(self) -> np.ndarray:
        """Indices of the creators who went live today."""
        return np.asarray(self._today_active_creators)

    def today_candidates(self) -> pd.DataFrame:
        """Today's candidate rows (see :class:`DayRequests`)."""
        if self._day_candidates is None:
            raise ConfigError("World: no requests drawn yet today (call next_requests first)")
        return self._day_candidates

    def true_net_value(self, rows: pd.DataFrame | None = None) -> np.ndarray:
        """The simulator's true expected net value of each candidate if examined.

        ``p_click x p_purchase x (1 - (1 + bad_cost) x p_bad)``: its expected good orders minus
        ``bad_cost`` x its expected bad orders. Ranking each request by it, best first, is the
        oracle (examination falls with the position and multiplies every candidate alike).
        ``rows`` defaults to today's candidates.
        """
        rows = self._day_candidates if rows is None else rows
        if rows is None:
            raise ConfigError("World.true_net_value: no requests drawn yet (call next_requests first)")
        p_click, p_purchase, _, p_bad = self._probabilities(rows)
        return np.asarray(p_click * p_purchase * (1.0 - (1.0 + self.bad_cost) * p_bad))

    # ------------------------------------------------------------------ serving

    def serve(self, day: DayRequests, responses: Sequence[Mapping[str, Any]]) -> DayOutcome:
        """Draw what buyers do with the ranked responses and advance the world by one day.

        Every response's ``items`` are shown at positions 1, 2, ... (``filtered`` candidates
        are not shown).
        """
        if day.day != self.day:
            raise ConfigError(f"World.serve: requests of day {day.day}, but the world is at day {self.day}")
        d, t0, seed, config = self.day, self._t0(), self.seed, self.config
        request_id: list[str] = []
        stream_id: list[str] = []
        position: list[int] = []
        for response in responses:
            items = response["items"]
            request_id.extend([response["request_id"]] * len(items))
            stream_id.extend(item["stream_id"] for item in items)
            position.extend(range(1, len(items) + 1))
        served = pd.DataFrame({"request_id": request_id, "stream_id": stream_id, "position": position})
        shown = day.candidates.merge(served, on=["request_id", "stream_id"], how="inner", validate="one_to_one")
        shown = shown.sort_values(["request", "position"], kind="stable", ignore_index=True)

        user, k, creator, merchant = (shown[c].to_numpy() for c in ("user", "k", "creator", "merchant"))
        ts = shown["ts"].to_numpy()
        p_click, p_purchase, p_bad_order, p_bad = self._probabilities(shown)
        pos = shown["position"].to_numpy(np.float64)
        exam = pos**-config.position_bias_eta
        clicked = keyed_uniforms(seed, _U_CLICK, d, user, k, creator) < exam * p_click
        quality = self.creators["quality"][creator]
        log_affinity = np.log(self.base.users["preference"][user, self.merchants["category"][merchant]] * len(CATEGORIES) + 0.05)
        z = special.ndtri(np.clip(keyed_uniforms(seed, _U_WATCH, d, user, k, creator), 1e-12, 1 - 1e-12))
        stream_end = self._streams["started"][shown["stream"].to_numpy()] + self._streams["duration"][shown["stream"].to_numpy()] * HOUR
        watch = np.where(clicked, np.minimum(np.exp(np.log(60.0) + (quality - 0.65) + 0.3 * log_affinity + 0.9 * z), stream_end - ts), 0.0)
        purchased = clicked & (keyed_uniforms(seed, _U_PURCHASE, d, user, k, creator) < p_purchase)
        order_time = ts + (0.3 + 0.7 * keyed_uniforms(seed, _U_ORDER_DELAY, d, user, k, creator)) * np.maximum(watch, 1.0)
        purchased &= order_time < self._merchant_end()[merchant]

        # feed orders and their lifecycle
        rows = np.flatnonzero(purchased)
        o_merchant = merchant[rows]
        o_category = self.merchants["category"][o_merchant]
        z = special.ndtri(np.clip(keyed_uniforms(seed, _U_AMOUNT, d, user[rows], k[rows], creator[rows]), 1e-12, 1 - 1e-12))
        amount = np.round(np.exp(np.log(_CATEGORY_PRICE[o_category]) + 0.6 * z), 2)
        keys = (d, user[rows], k[rows], creator[rows])
        orders = self._place_orders(
            _G_FEED_ORDERS, o_merchant, user[rows], order_time[rows], amount, p_bad_order[rows],
            creator=creator[rows], stream=shown["stream"].to_numpy()[rows],
            outcome_uniforms=(keyed_uniforms(seed, _U_CANCEL, *keys), keyed_uniforms(seed, _U_BAD, *keys)),
        )
        order_ids = np.full(len(shown), None, dtype=object)
        order_ids[rows] = orders["order_id"]
        columns = {
            "request_id": shown["request_id"].to_numpy(),
            "user_id": self.base.user_ids[user],
            "ts": ts,
            "stream_id": shown["stream_id"].to_numpy(),
            "creator_id": self.base.creator_ids[creator],
            "merchant_id": self.merchant_ids[merchant],
            "position": pos.astype(np.int64),
            "clicked": clicked,
            "watch_seconds": np.round(watch, 1),
            "purchased": purchased,
            "order_id": order_ids,
        }
        self._append("impressions", columns)
        impressions = pd.DataFrame({**columns, "ts": self._when(ts)})

        # buyers learn how their orders went
        bad = orders["bad"]
        cancelled = orders["cancelled"]
        learned = np.where(np.isfinite(orders["delivered"]), orders["delivered"], orders["created"] + 3 * DAY)
        shield = np.where(self.guaranteed[o_merchant], self.dynamics.guarantee_shield, 0.0)
        kept = ~cancelled  # a bad order is never a cancelled one
        pending = pd.DataFrame({
            "t": learned[kept], "user": user[rows][kept],
            "loss": (self.dynamics.bad_order_trust_loss * (1.0 - shield) * bad)[kept],
            "gain": ~bad[kept],
        })
        self._pending_trust = pd.concat([self._pending_trust, pending], ignore_index=True)

        self._organic_orders()
        self._enforce()

        # exposure: creators' supply and merchants' exit respond to it
        exposure = 1.0 / np.log2(pos + 1.0)
        n_creators = len(self.base.creator_ids)
        creator_exposure = np.bincount(creator, weights=exposure, minlength=n_creators)
        dyn = self.dynamics
        ratio = self._creator_exposure.update(creator_exposure, dyn.exposure_memory_days, dyn.starve_ratio)
        if dyn.creator_supply:
            self.creator_supply = np.clip(ratio**dyn.supply_elasticity, dyn.supply_min, dyn.supply_max)
            self.creator_quit |= self._creator_exposure.starved_days >= dyn.quit_after_days
        self._merchant_exposure.grow(len(self.merchant_ids), float(np.median(self.base.merchant_reference)))
        merchant_exposure = np.bincount(merchant, weights=exposure, minlength=len(self.merchant_ids))
        m_ratio = self._merchant_exposure.update(
            merchant_exposure, dyn.exposure_memory_days, dyn.exit_exposure_ratio
        )
        if dyn.merchant_exit:
            at_risk = self._merchant_active(t0 + DAY) & (self.merchants["trust"] < dyn.exit_trust_max) & (m_ratio < dyn.exit_exposure_ratio)
            closes = at_risk & (keyed_uniforms(seed, _U_EXIT, d, np.arange(len(self.merchant_ids))) < dyn.exit_hazard)
            self.merchants["closed_at"][closes] = t0 + DAY

        good = float((~bad).sum())
        # the same slates' expected outcomes (what the draws above average to): free of the
        # click / purchase / bad-order draw noise, comparable with a one-shot evaluation
        expected_orders = exam * p_click * p_purchase
        expected_bad = float((expected_orders * p_bad).sum())
        metrics = {
            "requests": float(len(day.requests)),
            "expected_orders": float(expected_orders.sum()),
            "expected_bad_orders": expected_bad,
            "expected_net_value": net_value(float(expected_orders.sum()) - expected_bad, expected_bad, self.bad_cost),
            "orders": float(len(rows)),
            "good_orders": good,
            "bad_orders": float(bad.sum()),
            "gmv": float(orders["amount"][~cancelled].sum()),
            "active_buyers": float(len(np.unique(day.candidates["user"].to_numpy()))),
            "mean_buyer_trust": float(self.buyer_trust.mean()),
            "active_creators": float(len(self._today_active_creators)),
            "trust_weighted_exposure": float((exposure * self.merchants["trust"][merchant]).sum() / max(exposure.sum(), 1e-12)),
        }
        metrics["bad_order_rate"] = metrics["bad_orders"] / metrics["orders"] if metrics["orders"] else 0.0
        metrics["net_value"] = net_value(good, metrics["bad_orders"], self.bad_cost)
        went_bad = np.zeros(len(shown), dtype=bool)
        went_bad[rows] = bad
        shown_frame = shown.assign(exposure=exposure, clicked=clicked, purchased=purchased, bad=went_bad)
        self.day += 1
        self._day_candidates = None
        return DayOutcome(d, impressions, shown_frame, metrics)

    # ------------------------------------------------------------------ orders

    def _place_orders(
        self,
        stage: int,
        merchant: np.ndarray,
        user: np.ndarray,
        created: np.ndarray,
        amount: np.ndarray,
        p_bad_order: np.ndarray,
        *,
        creator: np.ndarray | None = None,
        stream: np.ndarray | None = None,
        outcome_uniforms: tuple[np.ndarray, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Order rows with the simulator's lifecycle, after-sales cases and reviews.

        ``outcome_uniforms``: keyed uniforms of each order's cancellation and bad outcome, so
        the same order placed under two policies ends the same way.
        """
        n = len(merchant)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.day, stage]))
        trust = self.merchants["trust"][merchant]
        lifecycle = fulfilment(rng, self.config, trust, p_bad_order, np.zeros(n, dtype=bool), created, math.inf,
                               outcome_uniforms=outcome_uniforms)
        category = self.merchants["category"][merchant]
        order_ids = self._next_ids("order", "o", n)
        orders = {"order_id": order_ids, "merchant": merchant, "user": user, "created": created, "amount": amount,
                  "category": category, "fake": np.zeros(n, dtype=bool), **lifecycle}
        status = np.where(lifecycle["cancelled"], "cancelled", "paid")
        stream_ids = None if stream is None else np.array([f"s{i}" for i in self._streams["number"][stream]], dtype=object)
        self._append("orders", {
            "order_id": order_ids,
            "user_id": self.base.user_ids[user],
            "merchant_id": self.merchant_ids[merchant],
            "created_at": _seconds(created),
            "amount": amount,
            "creator_id": None if creator is None else self.base.creator_ids[creator],
            "stream_id": stream_ids,
            "status": status,
            "promised_ship_by": _seconds(lifecycle["promised"]),
            "shipped_at": _seconds(lifecycle["shipped"]),
            "delivered_at": _seconds(lifecycle["delivered"]),
            "presale": lifecycle["presale"],
        })
        if n:
            stage_config = replace(self.config, seed=int(keyed_uniforms(self.seed, _G_AFTER_SALES, self.day, stage) * 2**62))
            cases = _after_sales(stage_config, self.merchants, orders, math.inf)
            self._append("after_sales", _case_rows(cases, self._next_ids("case", "as", len(cases["order"])), order_ids))
            reviews = _reviews(stage_config, self.merchants, orders, math.inf)
            self._append("reviews", _review_rows(reviews, self._next_ids("review", "r", len(reviews["order"])), order_ids,
                                                 self.base.user_ids[user]))
        return orders

    def _organic_orders(self) -> None:
        """Background orders outside the feed (shop pages, search), as in the simulator."""
        d, t0, seed, config = self.day, self._t0(), self.seed, self.config
        m = self.merchants
        n_merchants = len(m["trust"])
        active = self._merchant_active(t0)
        rate = config.orders_per_merchant_day * m["size"] * (1.0 + 0.5 * config.impulse_strength * (1.0 - m["trust"]))
        counts = _poisson(keyed_uniforms(seed, _U_ORGANIC, d, np.arange(n_merchants)), np.where(active, rate, 0.0), 10_000)
        merchant = np.repeat(np.arange(n_merchants), counts)
        number = np.arange(len(merchant)) - np.repeat(np.cumsum(counts) - counts, counts)
        created = t0 + keyed_uniforms(seed, _U_ORGANIC_TIME, d, merchant, number) * DAY
        created = np.minimum(created, self._merchant_end()[merchant] - 1.0)
        category = m["category"][merchant]
        buyer_u = keyed_uniforms(seed, _U_ORGANIC_BUYER, d, merchant, number)
        user = np.empty(len(merchant), dtype=np.int64)
        activity, preference = self.base.users["activity"], self.base.users["preference"]
        for cat in range(len(CATEGORIES)):  # one weighted draw per category: buyers who like it buy it
            in_cat = np.flatnonzero(category == cat)
            if len(in_cat):
                cum = np.cumsum(activity * preference[:, cat])
                user[in_cat] = np.minimum(np.searchsorted(cum, buyer_u[in_cat] * cum[-1], side="right"), len(cum) - 1)
        z = special.ndtri(np.clip(keyed_uniforms(seed, _U_ORGANIC_AMOUNT, d, merchant, number), 1e-12, 1 - 1e-12))
        amount = np.round(np.exp(np.log(_CATEGORY_PRICE[category]) + 0.6 * z), 2)
        order = np.argsort(created, kind="stable")
        keys = (d, merchant[order], number[order])
        self._place_orders(_G_ORGANIC_ORDERS, merchant[order], user[order], created[order], amount[order], m["p_bad"][merchant[order]],
                           outcome_uniforms=(keyed_uniforms(seed, _U_ORGANIC_CANCEL, *keys), keyed_uniforms(seed, _U_ORGANIC_BAD, *keys)))

    # ------------------------------------------------------------------ enforcement

    def _enforce(self) -> None:
        """Violations and bans of the day; banned entities come back under new accounts."""
        d, t0, seed, config = self.day, self._t0(), self.seed, self.config
        m = self.merchants
        active = np.flatnonzero(self._merchant_active(t0))
        rng = np.random.default_rng(np.random.SeedSequence([seed, d, _G_VIOLATIONS]))
        found = _violations(rng, m["trust"][active], np.full(len(active), t0), t0 + DAY)
        v_merchant = active[found["merchant"]]
        order = np.argsort(found["t"], kind="stable")
        penalties = _labels("violations", "penalty", found["penalty"][order])
        self._append("violations", {
            "violation_id": self._next_ids("violation", "v", len(order)),
            "merchant_id": self.merchant_ids[v_merchant[order]],
            "created_at": _seconds(found["t"][order]),
            "severity": found["severity"][order],
            "penalty": penalties,
        })
        banned_now = np.isfinite(found["banned_at"])
        newly = active[banned_now]
        m["banned_at"][newly] = found["banned_at"][banned_now]
        m["active_end"][newly] = np.minimum(m["active_end"][newly], found["banned_at"][banned_now])
        back = newly[keyed_uniforms(seed, _U_REREGISTER, d, newly) < config.reregistration_rate]
        if len(back) == 0:
            return
        registered = m["banned_at"][back] + (1.0 + 9.0 * keyed_uniforms(seed, _U_REREGISTER_DELAY, d, back)) * DAY
        z = special.ndtri(np.clip(keyed_uniforms(seed, _U_REREGISTER_TRUST, d, back), 1e-12, 1 - 1e-12))
        trust = np.clip(m["trust"][back] + 0.03 * z, 0.0, 1.0)
        category = m["category"][back]
        new = {
            "trust": trust, "category": category, "registered": registered, "size": m["size"][back],
            "brusher": m["brusher"][back], "entity": m["entity"][back], "reregistered": np.ones(len(back), dtype=bool),
            "banned_at": np.full(len(back), np.inf), "p_bad": _p_bad(self.config, trust, category), "active_start": registered,
            "active_end": np.full(len(back), np.inf), "closed_at": np.full(len(back), np.inf),
        }
        for key, values in new.items():
            m[key] = np.concatenate((m[key], values))
        first = len(self.merchant_ids)
        ids = np.array([f"m{i}" for i in range(first, first + len(back))], dtype=object)
        self.merchant_ids = np.concatenate((self.merchant_ids, ids))
        self.guaranteed = np.concatenate((self.guaranteed, np.zeros(len(back), dtype=bool)))
        self._append("merchants", {
            "merchant_id": ids, "registered_at": _seconds(registered),
            "entity_id": self.base.entity_ids[m["entity"][first:]],
            "category": np.asarray(CATEGORIES, dtype=object)[category],
        })

    # ------------------------------------------------------------------ buyers

    def _apply_pending_trust(self, t: float) -> None:
        pending = self._pending_trust
        due = pending["t"].to_numpy() < t
        if not due.any() or not self.dynamics.buyer_trust:
            self._pending_trust = pending.loc[~due].reset_index(drop=True)
            return
        now = pending.loc[due]
        keep_share = now.groupby("user")["loss"].agg(lambda x: float(np.prod(1.0 - x.to_numpy())))
        goods = now.groupby("user")["gain"].sum()
        users = keep_share.index.to_numpy()
        b = self.buyer_trust[users] * keep_share.to_numpy()
        n_good = goods.reindex(keep_share.index).to_numpy(np.float64)
        b = b + (1.0 - b) * (1.0 - (1.0 - self.dynamics.good_order_trust_gain) ** n_good)
        self.buyer_trust[users] = np.clip(b, 0.0, 1.0)
        self._pending_trust = pending.loc[~due].reset_index(drop=True)

    # ------------------------------------------------------------------ state for metrics

    def creator_followers(self) -> pd.Series:
        """Follower counts by creator id (for head/tail splits)."""
        return pd.Series(self.creators["followers"], index=self.base.creator_ids)

    def latent_trust(self) -> pd.Series:
        """Latent merchant trust by merchant id (re-registered accounts included)."""
        return pd.Series(self.merchants["trust"], index=self.merchant_ids)


def _case_rows(cases: Mapping[str, np.ndarray], case_ids: np.ndarray, order_ids: np.ndarray) -> dict[str, Any]:
    """``after_sales`` columns of the simulator's cases (``order``: positions in ``order_ids``)."""
    return {
        "case_id": case_ids,
        "order_id": order_ids[cases["order"]],
        "opened_at": _seconds(cases["opened"]),
        "type": _labels("after_sales", "type", cases["type"]),
        "reason": _labels("after_sales", "reason", cases["reason"]),
        "resolved_at": _seconds(cases["resolved"]),
        "outcome": _labels("after_sales", "outcome", cases["outcome"]),
        "platform_intervened": cases["intervened"],
    }


def _review_rows(reviews: Mapping[str, np.ndarray], review_ids: np.ndarray, order_ids: np.ndarray, user_ids: np.ndarray) -> dict[str, Any]:
    """``reviews`` columns of the simulator's reviews (``order``: positions in ``order_ids`` and ``user_ids``)."""
    missing = reviews["details_missing"]
    return {
        "review_id": review_ids,
        "order_id": order_ids[reviews["order"]],
        "user_id": user_ids[reviews["order"]],
        "created_at": _seconds(reviews["created"]),
        "rating": reviews["rating"],
        "quality": np.where(missing, np.nan, reviews["quality"]),
        "service": np.where(missing, np.nan, reviews["service"]),
        "logistics": np.where(missing, np.nan, reviews["logistics"]),
    }


def _typed_frame(table: str, parts: list[dict[str, Any]], start_ns: int) -> pd.DataFrame:
    """Rows of ``table`` in the log's dtypes from raw columns (times as seconds after ``start_ns``)."""
    n = [max(len(v) for v in part.values() if v is not None and np.ndim(v)) for part in parts]
    columns: dict[str, Any] = {}
    for name, dtype in table_dtypes(table).items():
        values = [part.get(name) for part in parts]
        is_time = isinstance(dtype, pd.DatetimeTZDtype)
        filler: Any = np.nan if is_time else None
        joined = np.concatenate([
            np.asarray(v) if v is not None and np.ndim(v) else np.full(k, filler, dtype=float if is_time else object)
            for v, k in zip(values, n)
        ])
        if is_time:
            columns[name] = time_column(joined.astype(np.float64), start_ns)
        elif isinstance(dtype, pd.CategoricalDtype):
            columns[name] = pd.Series(pd.Categorical(joined, dtype=dtype))
        else:
            columns[name] = pd.Series(joined).astype(dtype)
    return pd.DataFrame(columns)


@functools.lru_cache(maxsize=None)
def _enum_labels(table: str, column: str) -> np.ndarray:
    return np.asarray([*table_dtypes(table)[column].categories, None], dtype=object)


def _labels(table: str, column: str, codes: np.ndarray) -> np.ndarray:
    """Enum codes of the simulator (schema order, ``-1``: none) as labels."""
    categories = _enum_labels(table, column)
    codes = np.asarray(codes, dtype=np.int64)
    return np.asarray(categories[np.where(codes < 0, len(categories) - 1, codes)])


def _seconds(seconds: Any) -> np.ndarray:
    """Times queued for the log stay seconds after the simulation start until it is read."""
    return np.asarray(seconds, dtype=np.float64)
