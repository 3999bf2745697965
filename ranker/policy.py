"""Ranking policy: hard rules first, then relevance combined with trust.

One object, :class:`Policy`, owns the whole decision: its configuration
(:class:`PolicyConfig`: what an operator sets), what it learns from data (:class:`PolicyState`:
the purchase calibration and the bad-order model, set by :meth:`Policy.fit`), the hard rules
(:meth:`Policy.rule_codes`) and the vectorised score (:meth:`Policy.score`). Serving
(:class:`~trustfeed.ranker.pipeline.RankingPipeline`), offline evaluation, the training job and
the tests all call these same methods.

``combine="expected_value"`` (the default): rank by expected net value per examination::

    p_bad = sigmoid(c0 + c1 * logit(trust))
    score = sigmoid(a * relevance + b + d * p_bad) * (1 - (1 + bad_cost) * p_bad)

the calibrated purchase probability times the value of an order when a bad order costs
``bad_cost`` good ones (2: net value = good - 2 x bad). ``(a, b)`` (the purchase calibration),
``d`` (its risk term: how much of the merchant's risk the model's score already priced in,
``0 <= d <= 1 + bad_cost`` so the score stays monotone in trust) and ``(c0, c1)`` (the
bad-order model, ``c1 <= 0``) are learned by :meth:`Policy.fit`; the derivation and the fits
are in :mod:`trustfeed.ranker._expected_value`. ``bad_cost = 0``
switches trust off like ``trust_weight = 0``: the score is then ``z(relevance)`` (below).
Until the policy is fitted (a config written by hand) it falls back to the ``"logit"``
formula with ``trust_weight``.

``combine="logit"``::

    score = z(relevance) + trust_weight * logit(clip(trust, eps, 1 - eps))

``z`` standardises the model's relevance within the request (mean 0, standard deviation 1),
because LambdaMART scores have an arbitrary scale that changes from one model to the next;
after it, ``trust_weight`` means the same thing for every model: one unit of trust log-odds
is worth ``trust_weight`` standard deviations of relevance. The logit makes trust matter
most at the extremes (a 0.05-trust merchant is pushed down hard, 0.5 vs 0.6 barely moves).

``combine="multiplicative"``::

    score = sigmoid(z(relevance)) * trust ** trust_weight

a bounded alternative where trust scales relevance (a zero-trust merchant scores zero).

In every form the score never decreases when trust rises (for ``trust_weight >= 0``), and
``trust_weight = 0`` ranks by relevance alone (the comparison arm). Hard rules run before
any scoring and remove candidates with a reason: ``banned_merchant`` (the account is banned),
``banned_entity`` (another account of the same legal entity is banned, so a re-registered
shop does not escape its record) and, when ``trust_floor`` is set, ``trust_floor``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from ..features.config import Choice, Config, Constraints, Flag, Integer, Real
from ..features.errors import ConfigError, SchemaError, reject_unknown_keys
from ._expected_value import (
    RISK_TERM_Z,
    bad_probability,
    check_parameters,
    expected_value_score,
    fit_bad_model,
    fit_purchase_calibration,
    fit_risk_calibration,
)
from ._levers import tilt_to_trust_target

__all__ = [
    "Policy",
    "PolicyConfig",
    "PolicyState",
    "PolicyResult",
    "REASON_BANNED_MERCHANT",
    "REASON_BANNED_ENTITY",
    "REASON_TRUST_FLOOR",
    "REASONS",
    "RELEVANCE_SOURCES",
    "LEGACY_STATE_KEYS",
]

REASON_BANNED_MERCHANT = "banned_merchant"
REASON_BANNED_ENTITY = "banned_entity"
REASON_TRUST_FLOOR = "trust_floor"
_COMBINES = ("expected_value", "logit", "multiplicative")
_REASONS = np.array(["", REASON_TRUST_FLOOR, REASON_BANNED_ENTITY, REASON_BANNED_MERCHANT], dtype=object)
REASONS: tuple[str, ...] = tuple(_REASONS.tolist())
"""Filter reasons by :meth:`Policy.rule_codes` code (``""``: the candidate stays)."""

RELEVANCE_SOURCES = ("ranker", "purchase_model")
"""What a fitted purchase calibration can be fitted on (:attr:`PolicyState.relevance_source`)."""

LEGACY_STATE_KEYS = ("purchase_calibration", "bad_model")
"""Fitted fields older bundles kept inside the policy config (see :meth:`Policy.from_dict`)."""


@dataclass(frozen=True)
class PolicyConfig(Config):
    """How the final order is made from relevance and trust (see the module docstring).

    Only what an operator configures; what is learned from data is :class:`PolicyState`.

    Parameters
    ----------
    trust_weight
        Weight of trust (``>= 0``; ``0`` switches trust off).
    combine
        ``"expected_value"`` (fitted expected net value), ``"logit"`` (additive in trust
        log-odds) or ``"multiplicative"``.
    trust_floor
        Candidates whose merchant trust is below this are filtered (``None``: no floor).
    filter_banned
        Apply the banned merchant / entity rules (switch off only for diagnostics).
    eps
        Trust is clipped to ``[eps, 1 - eps]`` before the logit.
    bad_cost
        ``"expected_value"``: what a bad order costs, in good orders (``>= 0``).
    guarantee_boost
        Priority for merchants offering buyer protection ("trusted purchase": refund without
        return, return freight, fake-one-pay-ten, 7-day no-reason returns, fast refund),
        ``>= 0``, ``0`` = none. With the expected-value and multiplicative scores (a value
        with a meaningful zero) a guaranteed merchant's score ``s`` becomes
        ``s * exp(guarantee_boost * sign(s))``: a positive value grows by the factor
        ``exp(guarantee_boost)``, a negative one shrinks towards 0; with the logit score it
        gains ``guarantee_boost`` (standard deviations of relevance). Either way the score of
        a guaranteed candidate only rises, and the order among guaranteed (or among
        non-guaranteed) candidates is unchanged.
    trust_exposure_target
        Exposure-weighted mean merchant trust wanted in the first ``trust_exposure_depth``
        positions of every list, in ``(0, 1)`` (``None``: no target). Each request's scores
        are tilted towards trust by the smallest step that meets it (the largest step when
        the candidates cannot); see :mod:`trustfeed.ranker._levers`. A higher target never
        lowers a list's exposure-weighted trust.
    trust_exposure_depth
        Positions the trust-exposure target is measured over (an integer ``>= 1``).
    risk_bound_level
        ``"expected_value"`` with a fitted policy: price each merchant's bad-order probability
        at this upper credible level of a beta-binomial posterior given its record (its
        effective orders in the snapshot, and the fitted platform bad-order rate worth
        ``risk_prior_orders`` orders as the prior; see
        :func:`~trustfeed.ranker._expected_value.bad_probability_bound`), in ``[0.5, 1)``;
        ``None`` (the default): the point estimate. A thin record is then priced near the
        platform's rate or above, a long one at its own.
    risk_prior_orders
        How many orders the prior of ``risk_bound_level`` is worth (``> 0``).

    Examples
    --------
    >>> PolicyConfig.from_dict(PolicyConfig(trust_weight=0.5, combine="logit").to_dict())  # doctest: +NORMALIZE_WHITESPACE
    PolicyConfig(trust_weight=0.5, combine='logit', trust_floor=None, filter_banned=True, eps=0.001, bad_cost=2.0,
                 guarantee_boost=0.0, trust_exposure_target=None, trust_exposure_depth=10, risk_bound_level=None,
                 risk_prior_orders=20.0)
    """

    trust_weight: float = 1.0
    combine: str = "expected_value"
    trust_floor: float | None = None
    filter_banned: bool = True
    eps: float = 1e-3
    bad_cost: float = 2.0
    guarantee_boost: float = 0.0
    trust_exposure_target: float | None = None
    trust_exposure_depth: int = 10
    risk_bound_level: float | None = None
    risk_prior_orders: float = 20.0

    constraints: ClassVar[Constraints] = {
        "trust_weight": Real(0),
        "combine": Choice(*_COMBINES),
        "trust_floor": Real(0, 1, optional=True),
        "filter_banned": Flag(),
        "eps": Real(0, 0.5, strict_low=True, strict_high=True),
        "bad_cost": Real(0),
        "guarantee_boost": Real(0, 10),
        "trust_exposure_target": Real(0, 1, strict_low=True, strict_high=True, optional=True),
        "trust_exposure_depth": Integer(1, 1_000_000),
        "risk_bound_level": Real(0.5, 1, strict_high=True, optional=True),
        "risk_prior_orders": Real(0, 1e9, strict_low=True),
    }


@dataclass(frozen=True)
class PolicyState:
    """What :meth:`Policy.fit` learns: the two maps of the expected-value score.

    Parameters
    ----------
    purchase_calibration
        ``(a, b)`` with ``P(purchase | examined) = sigmoid(a * relevance + b)``, ``a > 0``.
    bad_model
        ``(c0, c1)`` with ``p_bad = sigmoid(c0 + c1 * logit(trust))``, ``c1 <= 0``.
    risk_term
        ``d >= 0``: the calibration's weight on ``p_bad`` (the risk the model's score already
        priced in; scoring caps it at ``1 + bad_cost``). ``0`` (the default, and what states
        saved before it existed load as): none.
    relevance_source
        Which score the calibration was fitted on: ``"ranker"`` (the LambdaMART score; the
        default, and what states saved before the field existed load as) or
        ``"purchase_model"`` (the log purchase probability of
        :class:`~trustfeed.ranker.purchase.PurchaseModel`). A pipeline refuses a state fitted
        on a score it does not compute.
    bad_rate
        The share of the training window's purchases that went bad (in ``(0, 1)``; ``None``:
        not recorded, as in states saved before it existed): the prior of
        :attr:`PolicyConfig.risk_bound_level`, which is inactive without it.

    Examples
    --------
    >>> PolicyState.from_dict(PolicyState((1.3, -2.5), (-2.0, -0.8), 1.5).to_dict())  # doctest: +NORMALIZE_WHITESPACE
    PolicyState(purchase_calibration=(1.3, -2.5), bad_model=(-2.0, -0.8), risk_term=1.5,
                relevance_source='ranker', bad_rate=None)
    """

    purchase_calibration: tuple[float, float]
    bad_model: tuple[float, float]
    risk_term: float = 0.0
    relevance_source: str = "ranker"
    bad_rate: float | None = None

    def __post_init__(self) -> None:
        calibration, bad = check_parameters(self.purchase_calibration, self.bad_model, 0.0)
        if calibration is None or bad is None:
            raise ConfigError("PolicyState: purchase_calibration and bad_model are both required")
        if not (isinstance(self.risk_term, (int, float)) and not isinstance(self.risk_term, bool)
                and math.isfinite(self.risk_term) and self.risk_term >= 0):
            raise ConfigError(f"PolicyState.risk_term must be a finite number >= 0, got {self.risk_term!r}")
        if self.relevance_source not in RELEVANCE_SOURCES:
            raise ConfigError(f"PolicyState.relevance_source must be one of {list(RELEVANCE_SOURCES)}, "
                              f"got {self.relevance_source!r}")
        if self.bad_rate is not None:
            if not (isinstance(self.bad_rate, (int, float)) and not isinstance(self.bad_rate, bool)
                    and 0 < self.bad_rate < 1):
                raise ConfigError(f"PolicyState.bad_rate must be a number in (0, 1) or None, got {self.bad_rate!r}")
            object.__setattr__(self, "bad_rate", float(self.bad_rate))
        # JSON gives lists back: tuples keep from_dict(to_dict()) == state
        object.__setattr__(self, "purchase_calibration", calibration)
        object.__setattr__(self, "bad_model", bad)
        object.__setattr__(self, "risk_term", float(self.risk_term))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fitted values."""
        values = {"purchase_calibration": list(self.purchase_calibration), "bad_model": list(self.bad_model),
                  "risk_term": self.risk_term, "relevance_source": self.relevance_source}
        return values if self.bad_rate is None else {**values, "bad_rate": self.bad_rate}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PolicyState:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a :class:`ConfigError`.

        ``risk_term``, ``relevance_source`` and ``bad_rate`` may be absent (states saved before
        they existed): they are then 0, ``"ranker"`` and ``None``.
        """
        reject_unknown_keys("PolicyState", values, {*LEGACY_STATE_KEYS, "risk_term", "relevance_source", "bad_rate"})
        missing = [k for k in LEGACY_STATE_KEYS if k not in values]
        if missing:
            raise ConfigError(f"PolicyState: missing {missing}")
        return cls(values["purchase_calibration"], values["bad_model"], values.get("risk_term", 0.0),
                   values.get("relevance_source", "ranker"), values.get("bad_rate"))


@dataclass(frozen=True)
class PolicyResult:
    """The policy's decision for one request.

    Attributes
    ----------
    order
        Indices of the kept candidates, best first.
    score
        Final score per candidate (input order); ``-inf`` for filtered ones.
    filtered
        Indices of the filtered candidates (input order).
    reasons
        The rule that removed each filtered candidate (aligned with ``filtered``).
    """

    order: np.ndarray
    score: np.ndarray
    filtered: np.ndarray
    reasons: np.ndarray


class Policy:
    """Hard rules and the relevance x trust score: the one policy every path calls.

    Parameters
    ----------
    config
        :class:`PolicyConfig` (``None``: defaults).
    state
        Fitted :class:`PolicyState` (``None``: not fitted; :meth:`fit` sets it).

    Attributes
    ----------
    fit_info_
        Diagnostics of the last :meth:`fit` (the position coefficient, row counts), for logging.

    Examples
    --------
    >>> import numpy as np
    >>> policy = Policy(PolicyConfig(trust_weight=1.0))
    >>> policy.score([2.0, 1.0, 0.0], [0.1, 0.9, 0.9]).round(2).tolist()
    [-0.97, 2.2, 0.97]
    >>> Policy(PolicyConfig(trust_weight=0.0)).score([2.0, 1.0, 0.0], [0.1, 0.9, 0.9]).round(2).tolist()
    [1.22, 0.0, -1.22]
    >>> result = policy.rank([0.3, 2.0, 1.0], [0.8, 0.9, 0.7], [False, True, False], False)
    >>> result.order.tolist(), result.filtered.tolist(), result.reasons.tolist()
    ([2, 0], [1], ['banned_merchant'])
    """

    def __init__(self, config: PolicyConfig | None = None, state: PolicyState | None = None) -> None:
        self.config = config if config is not None else PolicyConfig()
        self.state = state
        self.fit_info_: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Policy({self.config!r}, state={self.state!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and (self.config, self.state) == (other.config, other.state)

    __hash__ = None  # type: ignore[assignment]  # mutable (fit), so not hashable

    @property
    def is_fitted(self) -> bool:
        """Whether the expected-value maps are learned (:meth:`fit` or a loaded state)."""
        return self.state is not None

    # ------------------------------------------------------------------ learning

    def fit(
        self,
        relevance: ArrayLike,
        purchased: ArrayLike,
        position: ArrayLike,
        trust: ArrayLike,
        bad: ArrayLike,
        impression_trust: ArrayLike | None = None,
        relevance_source: str = "ranker",
        risk_term_z: float = RISK_TERM_Z,
        bad_model: tuple[float, float] | None = None,
    ) -> Policy:
        """Learn the purchase calibration and the bad-order model; returns ``self``.

        Parameters
        ----------
        relevance, purchased, position
            Per logged impression (the validation window): the model's raw score, whether
            it was bought, its 1-based position (a nuisance covariate for position bias).
        trust, bad
            Per purchase (the training window): the merchant's trust when it was bought and
            whether the order went bad.
        impression_trust
            Per logged impression (aligned with ``relevance``): the merchant's trust then.
            Given, the calibration also learns its risk term ``d`` (the merchant risk the
            model's score already priced in, see :mod:`trustfeed.ranker._expected_value`);
            ``None``: ``d = 0``.
        relevance_source
            What ``relevance`` is (see :attr:`PolicyState.relevance_source`): the score the
            fitted policy must be given when it ranks.
        risk_term_z
            The risk term is kept this many standard errors below its estimate (then clipped
            to ``[0, 1 + bad_cost]``): it softens the trust penalty only as far as the data
            show for sure; ``0``: the estimate itself. ``fit_info_`` holds the estimate and
            its standard error.
        bad_model
            ``(c0, c1)`` to use instead of fitting it on ``trust`` and ``bad`` (the caller
            knows the purchases cannot give a usable fit, e.g. their trust is on another
            scale than serving's); ``c1 <= 0`` is required.

        A calibration whose relevance slope is not positive (a model whose score does not
        predict purchases) leaves the policy unfitted, so it keeps the ``"logit"`` fallback;
        ``fit_info_["fallback"]`` says so.
        """
        if bad_model is None:
            c0, c1 = fit_bad_model(trust, bad, self.config.eps)
        else:
            checked = check_parameters((1.0, 0.0), bad_model, 0.0)[1]
            if checked is None:
                raise ConfigError("Policy.fit: bad_model must be two numbers (c0, c1)")
            c0, c1 = checked
        risk_info: dict[str, float] = {}
        if impression_trust is None or self.config.bad_cost == 0:
            a, b, g = fit_purchase_calibration(relevance, purchased, position)
            d = 0.0
        else:
            rel = np.asarray(relevance, dtype=np.float64)
            p_bad = bad_probability(_vector(impression_trust, rel.shape[0], "impression_trust", np.float64),
                                    (c0, c1), self.config.eps)
            a, b, g, d = fit_risk_calibration(rel, purchased, position, p_bad, self.config.bad_cost, z=risk_term_z,
                                              info=risk_info)
        info: dict[str, Any] = {"purchase_a": a, "purchase_b": b, "purchase_log_position": g, "purchase_risk_term": d,
                                **{f"purchase_{k}": v for k, v in risk_info.items()},
                                "valid_purchases": int(np.asarray(purchased, dtype=bool).sum())}
        if not a > 0:
            info["fallback"] = "logit (a score that does not predict purchases)"
            self.state, self.fit_info_ = None, info
            return self
        bad_values = np.asarray(bad, dtype=np.float64)
        bad_rate = float(bad_values.mean()) if bad_values.size else float("nan")
        info.update({"bad_c0": c0, "bad_c1": c1, "train_purchases": int(bad_values.size), "train_bad_rate": bad_rate})
        prior = bad_rate if 0 < bad_rate < 1 else None
        self.state, self.fit_info_ = PolicyState((a, b), (c0, c1), d, relevance_source, prior), info
        return self

    # ------------------------------------------------------------------ the decision

    def rule_codes(self, banned_merchant: ArrayLike, banned_entity: ArrayLike, trust: ArrayLike) -> np.ndarray:
        """Hard rules as small integers: 0 stays, else the index of the reason in ``REASONS``.

        A banned merchant reports ``banned_merchant`` even if its entity is banned too; NaN
        trust is unknown, not low: the floor only removes what is known to be bad.
        """
        trust_values = np.asarray(trust, dtype=np.float64)
        n = trust_values.shape[0] if trust_values.ndim else 1
        merchant = _vector(banned_merchant, n, "banned_merchant", bool)
        entity = _vector(banned_entity, n, "banned_entity", bool)
        # integer codes, then one lookup into the reason strings (object arrays are slow to fill)
        codes = np.zeros(n, dtype=np.int8)
        if self.config.trust_floor is not None:
            codes[trust_values < self.config.trust_floor] = 1
        if self.config.filter_banned:
            codes[entity] = 2
            codes[merchant] = 3
        return codes

    def reasons(self, banned_merchant: ArrayLike, banned_entity: ArrayLike, trust: ArrayLike) -> np.ndarray:
        """:meth:`rule_codes` as reason strings, ``""`` when the candidate stays (object array)."""
        return _REASONS.take(self.rule_codes(banned_merchant, banned_entity, trust))

    def score(self, relevance: ArrayLike, trust: ArrayLike, group: ArrayLike | None = None,
              guarantees: ArrayLike | None = None, kept: ArrayLike | None = None,
              orders: ArrayLike | None = None) -> np.ndarray:
        """The combined score of every candidate (vectorised; hard rules not applied).

        Parameters
        ----------
        relevance, trust
            Model relevance and merchant trust in [0, 1] per candidate (NaN trust is taken as
            0.5, i.e. no evidence either way; a NaN relevance ranks last in its request).
        group
            Request sizes when scoring many requests laid end to end (``None``: one request);
            the relevance standardisation is per request.
        guarantees
            Buyer-protection benefits of each candidate's merchant (``> 0``: guaranteed), for
            ``guarantee_boost``; ``None``: none known.
        kept
            Candidates that passed the hard rules (``None``: all), for
            ``trust_exposure_target``: only they are shown, so only they count towards it.
        orders
            Each candidate's merchant's effective orders in the snapshot (NaN: not known), for
            ``risk_bound_level``; ``None``: the point estimate for every candidate.
        """
        score = self._base_score(relevance, trust, group, orders)
        config = self.config
        additive = config.combine == "logit" or (config.combine == "expected_value" and not self._uses_expected_value)
        if config.guarantee_boost != 0 and guarantees is not None:
            guaranteed = _vector(guarantees, score.shape[0], "guarantees", np.float64) > 0
            boost = config.guarantee_boost
            if additive:
                score = np.where(guaranteed, score + boost, score)
            else:
                score = np.where(guaranteed, score * np.exp(boost * np.sign(score)), score)
        if config.trust_exposure_target is None:
            return score
        n = score.shape[0]
        sizes = np.array([n]) if group is None else _group_sizes(group, n)
        passed = np.ones(n, dtype=bool) if kept is None else _vector(kept, n, "kept", bool)
        score, _ = tilt_to_trust_target(
            score, _vector(trust, n, "trust", np.float64), sizes, passed, target=config.trust_exposure_target,
            depth=config.trust_exposure_depth, additive=additive, eps=config.eps,
        )
        return score

    @property
    def _uses_expected_value(self) -> bool:
        config = self.config
        return (config.combine == "expected_value" and self.state is not None and config.trust_weight != 0
                and config.bad_cost != 0)

    def _base_score(self, relevance: ArrayLike, trust: ArrayLike, group: ArrayLike | None,
                    orders: ArrayLike | None = None) -> np.ndarray:
        config = self.config
        rel = np.asarray(relevance, dtype=np.float64)
        n = rel.shape[0]
        trust_values = _vector(trust, n, "trust", np.float64)
        expected_value = config.combine == "expected_value"
        state = self.state
        if self._uses_expected_value and state is not None:
            # calibrated on the raw score: no per-request standardisation
            trust_values = np.where(np.isnan(trust_values), 0.5, trust_values)
            bound = None
            if config.risk_bound_level is not None and state.bad_rate is not None and orders is not None:
                bound = (config.risk_bound_level, config.risk_prior_orders, state.bad_rate)
            return expected_value_score(rel, trust_values, state.purchase_calibration, state.bad_model,
                                        config.bad_cost, config.eps, state.risk_term,
                                        orders=None if bound is None else _vector(orders, n, "orders", np.float64),
                                        risk_bound=bound)
        z = standardise_relevance(rel, None if group is None else _group_sizes(group, n))
        if config.trust_weight == 0 or (expected_value and config.bad_cost == 0):
            return z
        # NaN trust is no evidence either way (0.5); infinities end at the clip bounds
        clipped = np.clip(np.where(np.isnan(trust_values), 0.5, trust_values), config.eps, 1 - config.eps)
        if config.combine != "multiplicative":  # "logit", and the unfitted "expected_value" fallback
            return z + config.trust_weight * (np.log(clipped) - np.log1p(-clipped))
        return (1.0 / (1.0 + np.exp(-z))) * clipped**config.trust_weight

    def rank(self, relevance: ArrayLike, trust: ArrayLike, banned_merchant: ArrayLike, banned_entity: ArrayLike,
             guarantees: ArrayLike | None = None) -> PolicyResult:
        """Hard rules, then the final order, for one request.

        Ties keep the input order (a stable sort), so equal scores never shuffle.
        """
        rel = np.asarray(relevance, dtype=np.float64)
        trust_values = _vector(trust, rel.shape[0], "trust", np.float64)
        reasons = self.reasons(banned_merchant, banned_entity, trust_values)
        kept = reasons == ""
        score = np.where(kept, self.score(rel, trust_values, guarantees=guarantees, kept=kept), -np.inf)
        kept_idx = np.flatnonzero(kept)
        order = kept_idx[np.argsort(-score[kept_idx], kind="stable")]
        filtered = np.flatnonzero(~kept)
        return PolicyResult(order=order, score=score, filtered=filtered, reasons=reasons[filtered])

    def rank_many(
        self, relevance: ArrayLike, trust: ArrayLike, banned_merchant: ArrayLike, banned_entity: ArrayLike, group: ArrayLike, guarantees: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The vectorised form of :meth:`rank` over many requests laid end to end.

        Returns
        -------
        score
            Final score per row (``-inf`` for filtered rows).
        rank
            1-based rank of each kept row within its request (``0`` for filtered rows); the
            same order :meth:`rank` gives request by request.
        reasons
            Filter reason per row (``""`` when kept).
        """
        rel = np.asarray(relevance, dtype=np.float64)
        n = rel.shape[0]
        trust_values = _vector(trust, n, "trust", np.float64)
        sizes = _group_sizes(group, n)
        ids = np.repeat(np.arange(sizes.size), sizes)
        reasons = self.reasons(banned_merchant, banned_entity, trust_values)
        kept = reasons == ""
        score = np.where(kept, self.score(rel, trust_values, group=sizes, guarantees=guarantees, kept=kept), -np.inf)
        # within each request: kept rows by descending score, ties in input order
        order = np.lexsort((np.arange(n), -score, ~kept, ids))
        rank = np.zeros(n, dtype=np.int64)
        starts = np.searchsorted(ids[order], ids[order], side="left")
        rank[order] = np.arange(n) - starts + 1
        rank[~kept] = 0
        return score, rank, reasons

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """``{"config": ..., "state": ... or None}``, JSON-able."""
        return {"config": self.config.to_dict(), "state": None if self.state is None else self.state.to_dict()}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> Policy:
        """Rebuild a policy from its config and fitted state.

        A config written when the fitted maps lived in it (``purchase_calibration`` and
        ``bad_model`` among its keys) still loads: those keys become the state.
        """
        values = dict(config)
        legacy = {k: values.pop(k) for k in LEGACY_STATE_KEYS if k in values}
        policy_config = PolicyConfig.from_dict(values)
        if state is None and legacy:
            if all(legacy.get(k) is None for k in LEGACY_STATE_KEYS):
                return cls(policy_config)
            state = legacy
        return cls(policy_config, None if state is None else PolicyState.from_dict(state))


def _vector(values: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 0:
        return np.full(n, array, dtype=dtype)
    if array.shape != (n,):
        raise SchemaError("policy input", name, f"{n} values", f"shape {array.shape}")
    return array


def _group_sizes(group: ArrayLike, n: int) -> np.ndarray:
    sizes = np.asarray(group, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != n:
        raise SchemaError("policy input", "group", f"sizes summing to {n}", f"{sizes.tolist()[:5]}...")
    return sizes


def standardise_relevance(rel: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """Relevance z-scores within each request (mean 0, standard deviation 1 over finite values).

    ``sizes``: request sizes of the rows laid end to end (``None``: one request). Sums run in
    index order from ``0.0``, as ``np.bincount`` adds its weights, so a request scores bit for
    bit the same alone and within a batch. A request whose candidates all score alike has no
    spread to standardise (scale 1); a NaN relevance is ``-inf`` (last in its request).

    Examples
    --------
    >>> standardise_relevance(np.array([1.0, 3.0, 1.0, 5.0]), np.array([2, 2])).tolist()
    [-1.0, 1.0, -1.0, 1.0]
    """
    finite = np.isfinite(rel)
    if sizes is None or sizes.size == 1:
        # one request (serving): the grouped arithmetic below without its group bookkeeping
        if finite.all():
            count = max(rel.size, 1)
            centred = rel - _sequential_sum(rel) / count
            variance = _sequential_sum(centred * centred) / count
            return centred / (math.sqrt(variance) if variance > 1e-18 else 1.0)
        count = max(int(finite.sum()), 1)
        clean = np.where(finite, rel, 0.0)
        centred = np.where(finite, clean - _sequential_sum(clean) / count, 0.0)
        variance = _sequential_sum(centred * centred) / count
        return np.where(finite, centred / (math.sqrt(variance) if variance > 1e-18 else 1.0), -np.inf)
    n = rel.shape[0]
    if n == 0:
        return rel.copy()
    ids = np.repeat(np.arange(len(sizes)), sizes)
    n_groups = len(sizes)
    rel_clean = np.where(finite, rel, 0.0)
    counts = np.bincount(ids, weights=finite.astype(float), minlength=n_groups)
    means = np.bincount(ids, weights=rel_clean, minlength=n_groups) / np.maximum(counts, 1)
    centred = np.where(finite, rel_clean - means[ids], 0.0)
    variances = np.bincount(ids, weights=centred**2, minlength=n_groups) / np.maximum(counts, 1)
    scale = np.where(variances > 1e-18, np.sqrt(variances), 1.0)
    return np.where(finite, centred / scale[ids], -np.inf)


def _sequential_sum(values: np.ndarray) -> float:
    """Sum in index order, as ``np.bincount`` adds its weights (a running total from 0.0).

    ``cumsum`` adds in the same order; ``+ 0.0`` gives an all-zero total the sign a running
    total from ``0.0`` has. ``np.sum`` would add pairwise and differ in the last bits.
    """
    return float(np.cumsum(values)[-1]) + 0.0 if values.size else 0.0
