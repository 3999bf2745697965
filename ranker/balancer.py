"""Exposure balancer: Kuaishou's Gini mechanism done as a feedback controller.

The balancer keeps a ledger of the exposure every creator (and merchant) has received,
decayed exponentially, across *all* requests; a proportional-integral controller compares the
ledger's Gini with a target and sets how strongly the next requests are re-ranked. Each request
then lifts under-exposed creators: by default (``lift="value"``) on the policy score's own
scale, by the strength times the Gini's marginal reduction per unit of exposure given to the
creator, so a creator rises past items whose score is close to its own (a cheap swap) and not
past items far above it; ``lift="position"`` is the earlier rule (a number of positions set by
the exposure deficit and trust, whatever score gap it crosses). docs/balancer.md explains the
formulas, the controller and the guards.

Guards (each is a hard property, tested):

- only the top ``relevance_floor`` items of the base order may move up, by at most
  ``max_move`` positions, and only if their trust is at least ``trust_threshold``; so an item
  below the threshold (a low-trust merchant) never ranks higher than in the base order;
- the base order is the relevance order with at most one slot per creator in the first
  ``diversity_k`` (duplicates of a creator already shown move behind them, when there are
  enough distinct creators); the balancer keeps that property;
- the output is always a permutation of the candidates.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import filterfalse
from operator import itemgetter
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
import pandas as pd

from ..features.config import Choice, Config, Constraints, Flag, Integer, Items, Real
from ..features.errors import ConfigError, SchemaError
from .metrics import EXPOSURE_KINDS, gini, position_exposure

__all__ = ["BalancerConfig", "ExposureBalancer"]

_STATE_FORMAT = "trustfeed.balancer/1"
# Stored ledger values grow as 2 ** (elapsed / half_life); fold the scale back in well before
# float64 overflows (2 ** 1023).
_RENORMALISE_AFTER_HALF_LIVES = 400.0
# lift="value": the population's exposure distribution is kept as this many quantile steps
# (the knots are saved with the state; a creator's quantile is read to within 1 / 100)
_QUANTILE_STEPS = 100
# lift="value": the score scale is a running mean of the head's score spread over about this
# many requests
_SCALE_MEMORY = 1000.0


@dataclass(frozen=True)
class BalancerConfig(Config):
    """Configuration of :class:`ExposureBalancer` (what is set, never what is learned).

    Parameters
    ----------
    target_gini
        Gini of creator exposure in the ledger the controller holds, in (0, 1).
    fill_requests, fill_targets
        The target while the ledger fills (both set, or neither). The Gini of a ledger of few
        requests is far above the level the same traffic settles at (most candidates have not
        been shown yet), so one absolute target would make the controller balance hard from
        the first request and overshoot. With ``fill_requests`` (strictly increasing counts of
        recorded requests) and ``fill_targets`` (the target at each), the controller aims at
        their linear interpolation at its ledger's request count (the first target before
        the first count) and at ``target_gini`` from the last count on. The training job sets
        them from its validation replay (ratio x the unbalanced ranking's ledger Gini at each
        count).
    kp, ki
        Proportional and integral gains of the controller (strength per unit of Gini error).
        ``kp = ki = 0`` turns the controller off: the strength stays at ``initial_strength``
        (the ledger and the measured Gini are still kept).
    strength_min, strength_max
        Bounds of the re-ranking strength; the integral term is clamped to them (anti-windup).
    initial_strength
        Strength before the first controller update.
    control_interval
        Recorded requests between two controller updates (measuring the ledger's Gini sorts
        the whole ledger, so it is amortised over this many requests).
    half_life, half_life_unit
        Exposure halves after ``half_life`` recorded requests (``"requests"``) or seconds
        (``"seconds"``); ``math.inf`` keeps everything.
    population_window
        Creators not seen as a candidate for this long (same unit) leave the population the
        Gini is measured over; ``None``: four half-lives (everything when there is no decay).
    lift
        ``"value"`` (default): each request sorts its promotable head by
        ``score + strength * scale * g_c``, ``g_c = max(0, G + 1 - 2 F_c)`` the ledger Gini's
        marginal reduction per unit of exposure to creator ``c`` (``F_c`` its exposure quantile in
        the population, ``G`` the ledger Gini) and ``scale`` a running mean of the spread of the
        head's scores; the swap that costs the least score per unit of Gini comes first.
        ``"position"``: shift items up by ``max_move * min(1, strength * merit * deficit)``
        positions (the earlier rule).
    merit_exponent
        ``gamma`` in ``merit = (relevance_quantile * trust) ** gamma`` (``lift="position"`` only):
        0 makes every creator's fair share equal; larger values reserve the lift for relevant,
        trusted creators.
    trust_threshold
        Items with trust below it are never lifted.
    relevance_floor
        Only the top ``relevance_floor`` items of the base order may be promoted.
    max_move
        Most positions an item may move up.
    diversity_k
        At most one slot per creator in the first ``diversity_k`` positions (0 disables).
    exposure_kind, exposure_patience
        Position exposure function (see :func:`trustfeed.ranker.metrics.position_exposure`).
    auto_record
        ``rerank`` records its own output as served (otherwise call :meth:`~ExposureBalancer.record`
        or :meth:`~ExposureBalancer.record_impressions` with what was really shown).
    record_k
        Positions auto-record counts as seen (``None``: all).

    Examples
    --------
    >>> BalancerConfig(target_gini=0.4).to_dict()["target_gini"]
    0.4
    >>> BalancerConfig(max_move=-1)
    Traceback (most recent call last):
    ...
    trustfeed.features.errors.ConfigError: BalancerConfig.max_move: expected an integer in [0, 1000000], got -1
    """

    target_gini: float = 0.5
    fill_requests: tuple[int, ...] | None = None
    fill_targets: tuple[float, ...] | None = None
    kp: float = 4.0
    ki: float = 1.0
    strength_min: float = 0.0
    strength_max: float = 8.0
    initial_strength: float = 0.0
    control_interval: int = 20
    half_life: float = 2000.0
    half_life_unit: str = "requests"
    population_window: float | None = None
    lift: str = "value"
    merit_exponent: float = 1.0
    trust_threshold: float = 0.3
    relevance_floor: int = 50
    max_move: int = 30
    diversity_k: int = 0
    exposure_kind: str = "log2"
    exposure_patience: float = 0.8
    auto_record: bool = False
    record_k: int | None = None

    constraints: ClassVar[Constraints] = {
        "target_gini": Real(0, 1, strict_low=True, strict_high=True),
        "fill_requests": Items(Integer(low=1), min_len=1, increasing=True, optional=True),
        "fill_targets": Items(Real(0, 1, strict_low=True, strict_high=True), min_len=1, optional=True),
        **dict.fromkeys(("kp", "ki", "strength_min", "strength_max", "merit_exponent"), Real(0)),
        "initial_strength": Real(),
        "control_interval": Integer(low=1),
        "half_life": Real(0, strict_low=True, allow_inf=True),
        "half_life_unit": Choice("requests", "seconds"),
        "lift": Choice("value", "position"),
        "population_window": Real(0, strict_low=True, allow_inf=True, optional=True),
        "trust_threshold": Real(0, 1),
        **dict.fromkeys(("relevance_floor", "max_move", "diversity_k"), Integer(0, 1_000_000)),
        "exposure_kind": Choice(*EXPOSURE_KINDS),
        "exposure_patience": Real(0, 1, strict_low=True, strict_high=True),
        "auto_record": Flag(),
        "record_k": Integer(low=1, optional=True),
    }

    def check(self) -> None:
        if (self.fill_requests is None) != (self.fill_targets is None):
            raise self.reject("fill_targets", "set together with fill_requests (or neither)")
        if self.fill_requests is not None and len(self.fill_requests) != len(self.fill_targets or ()):
            raise self.reject("fill_targets", f"one target per fill_requests entry ({len(self.fill_requests)})")
        if self.strength_max < self.strength_min:
            raise self.reject("strength_max", f"a finite value >= strength_min ({self.strength_min})")
        if not self.strength_min <= self.initial_strength <= self.strength_max:
            raise self.reject("initial_strength", "a value within [strength_min, strength_max]")

    def retargeted(self, target_gini: float) -> BalancerConfig:
        """This config aiming at ``target_gini``, its fill schedule scaled by the same factor.

        A schedule the training job set as a share of the unbalanced ledger's Gini stays that
        share of it for the new target (each point clipped to [0.01, 0.99]).

        >>> BalancerConfig(target_gini=0.4, fill_requests=(40,), fill_targets=(0.5,)).retargeted(0.2).fill_targets
        (0.25,)
        """
        if self.fill_targets is None:
            return replace(self, target_gini=target_gini)
        factor = target_gini / self.target_gini
        return replace(self, target_gini=target_gini,
                       fill_targets=tuple(min(max(v * factor, 0.01), 0.99) for v in self.fill_targets))

    @property
    def window(self) -> float:
        """The population window in effect."""
        if self.population_window is not None:
            return float(self.population_window)
        return 4.0 * self.half_life


class _Ledger:
    """Decayed exposure per id in a growable array; ``id -> slot`` in a dict.

    Values are stored multiplied by ``2 ** ((t - origin) / half_life)`` at the time ``t`` they
    were added, so decaying the whole ledger is free: the true value now is the stored value
    times ``2 ** (-(now - origin) / half_life)``, a factor common to every id (Gini and shares
    do not even need it). Not thread-safe by itself: the balancer holds its lock.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.ids: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.stored = np.zeros(capacity, dtype=np.float64)
        self.last_seen = np.full(capacity, -np.inf, dtype=np.float64)
        self.total = 0.0

    @property
    def size(self) -> int:
        return len(self.ids)

    def _grow(self, needed: int) -> None:
        capacity = self.stored.size
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        self.stored = np.concatenate([self.stored, np.zeros(new_capacity - capacity)])
        self.last_seen = np.concatenate([self.last_seen, np.full(new_capacity - capacity, -np.inf)])

    def _register(self, ids: Sequence[str]) -> None:
        # first-appearance order keeps slot numbering (and saved state) deterministic across runs
        new = list(filterfalse(self.slot_of.__contains__, dict.fromkeys(ids)))
        start = len(self.ids)
        self._grow(start + len(new))
        self.slot_of.update(zip(new, range(start, start + len(new))))
        self.ids.extend(new)

    def slots(self, ids: Sequence[str]) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros(0, dtype=np.intp)
        try:
            found = itemgetter(*ids)(self.slot_of)
        except KeyError:
            self._register(ids)
            found = itemgetter(*ids)(self.slot_of)
        if len(ids) == 1:
            return np.array([found], dtype=np.intp)
        return np.array(found, dtype=np.intp)

    def slots_bulk(self, ids: pd.Series) -> np.ndarray:
        """Slots for a long column (many requests): hashing in pandas instead of a dict."""
        values = ids.astype(object).to_numpy()
        uniques, codes = pd.factorize(values)[::-1]
        self._register(list(uniques))
        # get_indexer takes any array-like at runtime; pandas-stubs accept only an Index
        unique_slots = pd.Index(self.ids).get_indexer(uniques)  # type: ignore[arg-type]
        return unique_slots[codes]

    def rescale(self, factor: float) -> None:
        self.stored[: self.size] *= factor
        self.total = float(self.stored[: self.size].sum())

    def state(self) -> dict[str, Any]:
        n = self.size
        return {
            "ids": list(self.ids),
            "stored": self.stored[:n].tolist(),
            "last_seen": [None if math.isinf(v) else v for v in self.last_seen[:n].tolist()],
            "total": self.total,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Ledger:
        ids = [str(i) for i in state["ids"]]
        stored = np.asarray(state["stored"], dtype=np.float64)
        last_seen = np.asarray([-np.inf if v is None else v for v in state["last_seen"]], dtype=np.float64)
        if not len(ids) == stored.size == last_seen.size or len(set(ids)) != len(ids):
            raise ConfigError("balancer state: ledger ids, stored and last_seen disagree")
        ledger = cls(capacity=max(1024, len(ids)))
        ledger.ids = ids
        ledger.slot_of = {i: s for s, i in enumerate(ids)}
        ledger.stored[: len(ids)] = stored
        ledger.last_seen[: len(ids)] = last_seen
        ledger.total = float(state["total"])
        return ledger


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct value (in no particular order).

    What ``np.unique(values, return_index=True)[1]`` gives, without its Python overhead,
    which is most of the cost at the few hundred values of one request.
    """
    order = values.argsort(kind="stable")
    ordered = values[order]
    starts = np.empty(ordered.size, dtype=bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return order[starts]


def _take(ids: list[str], index: np.ndarray) -> list[str]:
    if index.size == 1:
        return [ids[int(index[0])]]
    return list(itemgetter(*index.tolist())(ids))


def _as_id_list(ids: Any, name: str) -> list[str]:
    if isinstance(ids, list):
        return ids
    if isinstance(ids, (np.ndarray, pd.Series, pd.Index)):
        return ids.tolist()
    if isinstance(ids, Sequence) and not isinstance(ids, str):
        return list(ids)
    raise SchemaError("balancer input", name, "a sequence of ids", type(ids).__name__)


class ExposureBalancer:
    """Amortised creator-exposure balancer with a PI controller on the ledger's Gini.

    Parameters
    ----------
    config
        :class:`BalancerConfig`; ``None`` for the defaults.

    Examples
    --------
    >>> import numpy as np
    >>> balancer = ExposureBalancer(BalancerConfig(initial_strength=8.0, max_move=2))
    >>> balancer.record(["big"] * 3, ["m1"] * 3, [1, 1, 1])   # "big" has had all the exposure
    >>> order = balancer.rerank(["big", "new", "other"], ["m1", "m2", "m3"],
    ...                         relevance=np.array([3.0, 2.0, 1.0]), trust=np.array([0.9, 0.9, 0.9]))
    >>> order.tolist()   # the unexposed, trusted creators are lifted above "big"
    [1, 2, 0]
    """

    def __init__(self, config: BalancerConfig | None = None) -> None:
        self.config = config if config is not None else BalancerConfig()
        self._lock = threading.Lock()
        self._creators = _Ledger()
        self._merchants = _Ledger()
        self._clock = 0.0  # recorded requests, or seconds
        self._origin = 0.0
        self._strength = float(self.config.initial_strength)
        # bumpless start: the integral term alone reproduces the initial strength
        self._integral = self.config.initial_strength / self.config.ki if self.config.ki > 0.0 else 0.0
        self._since_control = 0
        # Requests of the whole platform that one of this balancer's own requests stands for
        # (1: it sees all of them). A worker that shares the platform's ledger with others
        # serves a fraction of the traffic but measures the platform's Gini; scaling its
        # integral step by the inverse of that fraction makes N workers' integrals move as one
        # controller's would (serving's shared ledger sets it; not part of the saved state).
        self.integral_step = 1.0
        self._mean_exposure = 0.0  # stored units, over the population; refreshed by the controller
        self._measured_gini = float("nan")
        self._requests = 0
        # lift="value": quantile knots of the population's stored exposure at the last
        # controller update (None: not measured yet) and the running score scale
        self._knots: np.ndarray | None = None
        # the Gini of the last knots a request read (they change only at a controller update)
        self._knots_gini: tuple[np.ndarray, float] | None = None
        self._score_scale = 0.0
        self._scale_count = 0
        self._position = np.arange(self.config.relevance_floor, dtype=np.float64)
        # relevance quantile within the promotable head: 1 at the top, 1/R at position R
        self._quantile = 1.0 - self._position / max(self.config.relevance_floor, 1)

    # ------------------------------------------------------------------ reading state

    @property
    def strength(self) -> float:
        """The re-ranking strength the next request uses."""
        return self._strength

    @property
    def measured_gini(self) -> float:
        """Gini of creator exposure at the last controller update (NaN before the first)."""
        return self._measured_gini

    def _now(self, now: float | None) -> float:
        if self.config.half_life_unit == "requests":
            return self._clock
        return float(time.time() if now is None else now)

    def _exposure_series(self, ledger: _Ledger) -> pd.Series:
        with self._lock:
            n = ledger.size
            values = ledger.stored[:n].copy()
            ids = list(ledger.ids)
            elapsed = self._clock - self._origin
        scale = 1.0 if math.isinf(self.config.half_life) else 2.0 ** (-elapsed / self.config.half_life)
        return pd.Series(values * scale, index=pd.Index(ids, dtype=object), name="exposure")

    def creator_exposure(self) -> pd.Series:
        """Decayed exposure per creator now (every creator seen, zeros included)."""
        return self._exposure_series(self._creators)

    def merchant_exposure(self) -> pd.Series:
        """Decayed exposure per merchant now."""
        return self._exposure_series(self._merchants)

    # ------------------------------------------------------------------ ranking

    def rerank(
        self,
        creator_ids: Sequence[str],
        merchant_ids: Sequence[str],
        relevance: ArrayLike,
        trust: ArrayLike,
        *,
        now: float | None = None,
        record: bool | None = None,
    ) -> np.ndarray:
        """Order the candidates of one request.

        Parameters
        ----------
        creator_ids, merchant_ids
            One id per candidate (duplicates allowed: a creator may have several streams).
        relevance
            Model relevance, higher is better; NaN ranks last.
        trust
            Merchant trust in [0, 1]; NaN counts as below the threshold (never lifted).
        now
            Event time in seconds for ``half_life_unit="seconds"`` (default: the wall clock).
        record
            Record the output as served; ``None`` follows ``config.auto_record``.

        Returns
        -------
        numpy.ndarray
            Candidate indices, best first (a permutation of ``range(n)``).
        """
        cfg = self.config
        creators = _as_id_list(creator_ids, "creator_ids")
        rel = np.asarray(relevance, dtype=np.float64)
        tru = np.asarray(trust, dtype=np.float64)
        n = len(creators)
        if rel.shape != (n,) or tru.shape != (n,) or len(merchant_ids) != n:
            raise SchemaError(
                "balancer input", "relevance/trust/merchant_ids",
                f"one value per candidate ({n})",
                f"lengths {rel.shape}, {tru.shape}, {len(merchant_ids)}",
            )
        if n == 0:
            return np.zeros(0, dtype=np.intp)
        base = np.argsort(-rel, kind="stable")
        value_lift = cfg.lift == "value"
        spread = _spread(rel[base[: cfg.relevance_floor]]) if value_lift else float("nan")

        with self._lock:
            slots = self._creators.slots(creators)
            self._creators.last_seen[slots] = self._now(now)
            stored = self._creators.stored[slots]
            mean = self._mean_exposure if self._mean_exposure > 0.0 else (
                self._creators.total / self._creators.size
            )
            strength = self._strength
            if not math.isnan(spread):
                self._scale_count += 1
                self._score_scale += (spread - self._score_scale) / min(float(self._scale_count), _SCALE_MEMORY)
            scale = self._score_scale
            knots = self._knots

        if value_lift and strength > 0.0 and mean > 0.0 and knots is None:
            # before the first controller update: measure the population now and keep it until then
            knots = _quantile_knots(np.sort(self._population()), presorted=True)
            with self._lock:
                self._knots = knots if self._knots is None else self._knots
        lift = (strength * scale, knots, self._gini_of(knots)) if value_lift else None
        order = self._order(base, slots, stored, mean, tru, rel, strength, lift)
        if cfg.auto_record if record is None else record:
            served = order if cfg.record_k is None else order[: cfg.record_k]
            merchants = _as_id_list(merchant_ids, "merchant_ids")
            self._record_slots(
                slots[served],
                _take(merchants, served),
                np.arange(1, served.size + 1, dtype=np.float64),
                now,
            )
        return order

    def _gini_of(self, knots: np.ndarray | None) -> float:
        """:func:`_knots_gini` of ``knots``, computed once per knots array (they are replaced,
        never changed in place)."""
        if knots is None:
            return 0.0
        cached = self._knots_gini  # one read: another thread may replace it meanwhile
        if cached is not None and cached[0] is knots:
            return cached[1]
        g = _knots_gini(knots)
        self._knots_gini = (knots, g)
        return g

    def _order(
        self,
        base: np.ndarray,
        slots: np.ndarray,
        stored: np.ndarray,
        mean: float,
        trust: np.ndarray,
        relevance: np.ndarray,
        strength: float,
        lift: tuple[float, np.ndarray | None, float] | None = None,
    ) -> np.ndarray:
        cfg = self.config
        n = base.size
        is_first = None
        if cfg.diversity_k > 0:
            # Only a prefix matters: the first k distinct creators and the first R positions
            # after regrouping lie within the first R + k positions once the prefix holds k
            # distinct creators. Working on it keeps the cost of a 1000-candidate slate flat.
            span = min(n, 2 * (cfg.relevance_floor + cfg.diversity_k))
            first_index = _first_occurrences(slots[base[:span]])
            if first_index.size < cfg.diversity_k and span < n:
                span = n
                first_index = _first_occurrences(slots[base])
            if first_index.size < span:
                is_first = np.zeros(span, dtype=bool)
                is_first[first_index] = True
                in_head = is_first & (np.cumsum(is_first) <= cfg.diversity_k)
                # head = the first k distinct creators; everything else keeps its relative order
                prefix = base[:span]
                base = np.concatenate([prefix[in_head], prefix[~in_head], base[span:]])
                is_first = np.concatenate([is_first[in_head], is_first[~in_head]])
        window = min(n, cfg.relevance_floor)
        if strength <= 0.0 or cfg.max_move == 0 or window < 2 or mean <= 0.0:
            return base
        head = base[:window]
        head_trust = trust[head]
        # NaN trust compares False; an item without a relevance score is never promoted
        eligible = (head_trust >= cfg.trust_threshold) & np.isfinite(relevance[head])
        if is_first is not None:
            # a duplicate rising could take a second slot for its creator in the first k
            eligible &= is_first[:window]
        if lift is not None:
            return np.concatenate([_value_lift(head, eligible, stored, relevance, *lift, cfg.max_move), base[window:]])
        merit = self._quantile[:window] * np.minimum(head_trust, 1.0)
        if cfg.merit_exponent != 1.0:
            merit = np.power(np.maximum(merit, 0.0), cfg.merit_exponent)
        # deficit: how far the creator's ledger exposure (relative to the mean) is below its
        # fair share, which is its merit; 1 = never exposed, 0 = at or above its share
        deficit = 1.0 - stored[head] / (mean * np.maximum(merit, 1e-12))
        boost = np.where(eligible, merit * np.clip(deficit, 0.0, 1.0), 0.0)  # NaN trust stays out
        shift = cfg.max_move * np.minimum(1.0, strength * boost)
        # An item at base position p ends at or below p - max_move: every item more than
        # max_move ahead of it keeps a strictly smaller key (see docs/balancer.md). The tiny
        # extra factor breaks ties in favour of the risen item, so a full max_move is reachable;
        # it cannot cross an integer position because max_move * 1e-9 < 1.
        key = self._position[:window] - shift * (1.0 + 1e-9)
        new_head = head[np.argsort(key, kind="stable")]
        return np.concatenate([new_head, base[window:]])

    # ------------------------------------------------------------------ recording

    def record(
        self,
        creator_ids: Sequence[str],
        merchant_ids: Sequence[str],
        positions: ArrayLike,
        *,
        now: float | None = None,
    ) -> None:
        """Add one served list (or the part of it that was seen) to the ledger.

        Parameters
        ----------
        creator_ids, merchant_ids
            The items shown, one per position.
        positions
            1-based positions they were shown at.
        now
            Event time in seconds (``half_life_unit="seconds"``).
        """
        creators = _as_id_list(creator_ids, "creator_ids")
        merchants = _as_id_list(merchant_ids, "merchant_ids")
        pos = np.asarray(positions, dtype=np.float64)
        if not len(creators) == len(merchants) == pos.size:
            raise SchemaError("balancer input", "positions", "one creator, merchant and position per item",
                              f"lengths {len(creators)}, {len(merchants)}, {pos.size}")
        with self._lock:
            slots = self._creators.slots(creators)
        self._record_slots(slots, merchants, pos, now)

    def _record_slots(self, creator_slots: np.ndarray, merchants: list[str], positions: np.ndarray,
                      now: float | None) -> None:
        cfg = self.config
        exposure = position_exposure(positions, cfg.exposure_kind, cfg.exposure_patience)
        with self._lock:
            if cfg.half_life_unit == "requests":
                self._clock += 1.0
            else:
                self._clock = max(self._clock, self._now(now))
                if self._requests == 0:
                    self._origin = self._clock
            t = self._clock if cfg.half_life_unit == "requests" else self._now(now)
            growth = self._growth(np.asarray([t]))[0]
            merchant_slots = self._merchants.slots(merchants)
            self._creators.last_seen[creator_slots] = np.maximum(self._creators.last_seen[creator_slots], t)
            np.add.at(self._creators.stored, creator_slots, exposure * growth)
            np.add.at(self._merchants.stored, merchant_slots, exposure * growth)
            added = float(exposure.sum()) * growth
            self._creators.total += added
            self._merchants.total += added
            self._requests += 1
            self._since_control += 1
            due = self._since_control >= cfg.control_interval
            if due:
                self._since_control = 0
            self._maybe_renormalise()
        if due:
            self._control()

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        """Add logged impressions (what users really saw) to the ledger in one vectorised pass.

        ``impressions`` has ``request_id``, ``creator_id``, ``merchant_id``, ``position``
        (1-based) and, for ``half_life_unit="seconds"``, ``ts`` (datetime or epoch seconds).
        Requests count in order of first appearance. One controller update follows.

        Raises
        ------
        SchemaError
            A column is missing, an id is null or empty, or a position is not an integer
            >= 1; the ledger is left exactly as it was.
        """
        cfg = self.config
        needed = ["request_id", "creator_id", "merchant_id", "position"]
        if cfg.half_life_unit == "seconds":
            needed.append("ts")
        missing = [c for c in needed if c not in impressions.columns]
        if missing:
            raise SchemaError("impressions", missing[0], "a column of that name",
                              f"columns {list(impressions.columns)}")
        if impressions.empty:
            return
        _check_impressions(impressions)
        exposure = position_exposure(impressions["position"].to_numpy(np.float64),
                                     cfg.exposure_kind, cfg.exposure_patience)
        request_codes, requests = pd.factorize(impressions["request_id"])
        if cfg.half_life_unit == "seconds":
            ts = impressions["ts"]
            if pd.api.types.is_datetime64_any_dtype(ts):
                seconds = (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
                times = seconds.to_numpy(np.float64)
            else:
                times = pd.to_numeric(ts, errors="coerce").to_numpy(np.float64)
            if not np.isfinite(times).all():
                raise SchemaError("impressions", "ts", "a time for every row", "missing values")
        with self._lock:
            if cfg.half_life_unit == "requests":
                times = self._clock + request_codes.astype(np.float64) + 1.0
                self._clock += float(len(requests))
            else:
                if self._requests == 0:
                    self._origin = float(times.min())
                self._clock = max(self._clock, float(times.max()))
            growth = self._growth(times)
            weighted = exposure * growth
            creator_slots = self._creators.slots_bulk(impressions["creator_id"])
            merchant_slots = self._merchants.slots_bulk(impressions["merchant_id"])
            self._creators.last_seen[creator_slots] = np.maximum(
                self._creators.last_seen[creator_slots], times)
            np.add.at(self._creators.stored, creator_slots, weighted)
            np.add.at(self._merchants.stored, merchant_slots, weighted)
            self._creators.total += float(weighted.sum())
            self._merchants.total += float(weighted.sum())
            self._requests += len(requests)
            self._since_control = 0
            self._maybe_renormalise()
        self._control()

    def _growth(self, times: np.ndarray) -> np.ndarray:
        if math.isinf(self.config.half_life):
            return np.ones_like(times)
        return np.exp2((times - self._origin) / self.config.half_life)

    def _maybe_renormalise(self) -> None:
        half_life = self.config.half_life
        if math.isinf(half_life) or (self._clock - self._origin) / half_life < _RENORMALISE_AFTER_HALF_LIVES:
            return
        factor = 2.0 ** (-(self._clock - self._origin) / half_life)
        self._creators.rescale(factor)
        self._merchants.rescale(factor)
        self._mean_exposure *= factor
        if self._knots is not None:
            self._knots = self._knots * factor
        self._origin = self._clock

    # ------------------------------------------------------------------ control

    def _population(self) -> np.ndarray:
        """Stored exposure of the creators in the measured population (a copy)."""
        with self._lock:
            n = self._creators.size
            active = self._clock - self._creators.last_seen[:n] <= self.config.window
            return self._creators.stored[:n][active]

    def _target(self) -> float:
        """The Gini the controller aims at now: the fill schedule while the ledger fills, then ``target_gini``."""
        cfg = self.config
        if cfg.fill_requests is None or cfg.fill_targets is None or self._requests >= cfg.fill_requests[-1]:
            return cfg.target_gini
        return float(np.interp(self._requests, cfg.fill_requests, cfg.fill_targets))

    def _control(self) -> None:
        """Measure the ledger's Gini and update the strength (PI with anti-windup)."""
        cfg = self.config
        values = self._population()
        # the sort runs outside the lock: other threads keep ranking meanwhile
        values = np.sort(values)
        measured = gini(values)
        mean = float(values.mean()) if values.size else 0.0
        knots = _quantile_knots(values, presorted=True)
        with self._lock:
            self._mean_exposure = mean
            self._measured_gini = measured
            self._knots = knots
            if cfg.kp == 0.0 and cfg.ki == 0.0:
                return  # controller off: the strength stays where it was set
            error = measured - self._target()
            integral = self._integral + self.integral_step * error
            if cfg.ki > 0.0:
                integral = min(max(integral, cfg.strength_min / cfg.ki), cfg.strength_max / cfg.ki)
            raw = cfg.kp * error + cfg.ki * integral
            strength = min(max(raw, cfg.strength_min), cfg.strength_max)
            # Anti-windup is the clamp of the integral above. No conditional integration on
            # top of it: skipping updates while saturated made the state path-dependent, so a
            # higher Gini target could end with more strength than a lower one (the clamp alone
            # keeps the controller monotone in the target, tests/test_levers.py).
            self._integral = integral
            self._strength = strength

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything learned so far, as a JSON-able dict (no pickle)."""
        with self._lock:
            return {
                "format": _STATE_FORMAT,
                "clock": self._clock,
                "origin": self._origin,
                "strength": self._strength,
                "integral": self._integral,
                "since_control": self._since_control,
                "mean_exposure": self._mean_exposure,
                "measured_gini": None if math.isnan(self._measured_gini) else self._measured_gini,
                "requests": self._requests,
                "knots": None if self._knots is None else self._knots.tolist(),
                "score_scale": self._score_scale,
                "scale_count": self._scale_count,
                "creators": self._creators.state(),
                "merchants": self._merchants.state(),
            }

    @classmethod
    def from_state(cls, config: BalancerConfig, state: dict[str, Any]) -> ExposureBalancer:
        """Rebuild a balancer from :meth:`state_dict` output (and the config it ran with)."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ConfigError(f"balancer state: expected format {_STATE_FORMAT!r}, got {got!r}")
        balancer = cls(config)
        try:
            balancer._clock = float(state["clock"])
            balancer._origin = float(state["origin"])
            balancer._strength = float(state["strength"])
            balancer._integral = float(state["integral"])
            balancer._since_control = int(state["since_control"])
            balancer._mean_exposure = float(state["mean_exposure"])
            gini_value = state["measured_gini"]
            balancer._measured_gini = float("nan") if gini_value is None else float(gini_value)
            balancer._requests = int(state["requests"])
            # states saved before lift="value" have none of these: measured again, scale anew
            knots = state.get("knots")
            balancer._knots = None if knots is None else np.asarray(knots, dtype=np.float64)
            balancer._score_scale = float(state.get("score_scale", 0.0))
            balancer._scale_count = int(state.get("scale_count", 0))
            balancer._creators = _Ledger.from_state(state["creators"])
            balancer._merchants = _Ledger.from_state(state["merchants"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"balancer state: missing or malformed field ({exc})") from exc
        return balancer


def _spread(scores: np.ndarray) -> float:
    """Standard deviation of the finite scores (NaN when fewer than two)."""
    finite = scores[np.isfinite(scores)]
    n = finite.size
    if n < 2:
        return float("nan")
    # numpy's std, step for step (mean, squared deviations, their mean, square root): the same
    # value to the last bit, without its Python-level argument handling on every request
    deviation = finite - np.add.reduce(finite) / n
    np.square(deviation, out=deviation)
    return math.sqrt(float(np.add.reduce(deviation)) / n)


def _quantile_knots(values: np.ndarray, presorted: bool = False) -> np.ndarray:
    """``_QUANTILE_STEPS + 1`` order statistics of ``values`` at equally spaced quantiles."""
    ordered = values if presorted else np.sort(values)
    if ordered.size == 0:
        return np.zeros(_QUANTILE_STEPS + 1)
    at = np.round(np.linspace(0.0, ordered.size - 1, _QUANTILE_STEPS + 1)).astype(np.intp)
    return np.asarray(ordered[at], dtype=np.float64)


def _quantile(knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-rank quantile of each value among the knots, in [0, 1] (ties share their middle)."""
    steps = knots.size - 1
    below = np.searchsorted(knots, values, side="left")
    upto = np.searchsorted(knots, values, side="right")
    # np.minimum/np.maximum: np.clip's values, without its Python-level dispatch per call
    return np.minimum(np.maximum((below + upto - 1.0) / (2.0 * steps), 0.0), 1.0)


def _knots_gini(knots: np.ndarray) -> float:
    """The population's Gini, read from its quantile knots (sorted): within about 1 / 100 of the
    ledger's, and the same after a state round trip."""
    total = float(knots.sum())
    return float((2.0 * np.arange(1, knots.size + 1) - knots.size - 1.0) @ knots / (knots.size * total)) if total > 0 else 0.0


def _value_lift(head: np.ndarray, eligible: np.ndarray, stored: np.ndarray, relevance: np.ndarray,
                step: float, knots: np.ndarray | None, g: float, max_move: int) -> np.ndarray:
    """The promotable head re-sorted by score plus the priced Gini gradient (``lift="value"``).

    ``step`` is ``strength * scale``: what one unit of the Gini gradient is worth on the
    score's scale; ``g`` is the population's Gini read from ``knots`` (:func:`_knots_gini`).
    Scores along the base order are first made non-increasing (a running minimum: a duplicate
    the diversity rule moved down keeps its place). Each key is then capped by the smallest key
    more than ``max_move`` places ahead (0 places for an item that may not rise); ties go to
    the item allowed the higher position, so every item that must stay ahead of another does
    and none ends more than its allowed move higher.
    """
    if knots is None or step <= 0.0:
        return head
    score = relevance[head]
    score = np.minimum.accumulate(np.where(np.isnan(score), -np.inf, score))
    # -dG/dx_c is proportional to G + 1 - 2 F_c (F_c: c's exposure quantile): positive for the
    # under-exposed, negative for the over-exposed; an item that may not rise keeps only the
    # negative part (it may be passed, never lifted)
    gain = g + 1.0 - 2.0 * _quantile(knots, stored[head])
    key = score + step * np.where(eligible, gain, np.minimum(gain, 0.0))
    # cap each key by the running minimum of the keys more than its allowed move ahead
    # (max_move for an item that may rise, 0 for one that may not); the running minimum of
    # the capped keys equals that of the uncapped ones, so one pass suffices
    earliest = np.arange(key.size) - np.where(eligible, max_move, 0)
    running = np.minimum.accumulate(key)
    capped = np.minimum(key, np.where(earliest >= 1, running[np.maximum(earliest - 1, 0)], np.inf))
    # ties (keys capped to the same value): the earliest allowed position first, which keeps
    # every item that must stay ahead ahead; then the higher uncapped key
    return head[np.lexsort((-key, earliest, -capped))]


def _check_impressions(impressions: pd.DataFrame) -> None:
    """Every row names its request, creator and merchant and has a 1-based integer position.

    Checked before the ledger is touched: a null creator would otherwise be credited to
    whichever creator shares its code, and a bad row found halfway would leave the clock moved.
    """
    for column in ("request_id", "creator_id", "merchant_id"):
        values = impressions[column]
        bad = values.isna().to_numpy() | (values.astype(str).str.len() == 0).to_numpy()
        if bad.any():
            raise SchemaError("impressions", column, "a non-empty id on every row", f"{int(bad.sum())} missing",
                              impressions.loc[bad].head(3))
    position = pd.to_numeric(impressions["position"], errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(position) | (position < 1) | (position != np.floor(position))
    if bad.any():
        raise SchemaError("impressions", "position", "an integer >= 1 on every row",
                          f"{int(bad.sum())} missing or invalid", impressions.loc[bad].head(3))
