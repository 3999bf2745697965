"""Ranking policy: hard rules first, then relevance combined with trust.

``combine="expected_value"`` (the default): rank by expected net value per examination::

    score = sigmoid(a * relevance + b) * (1 - (1 + bad_cost) * sigmoid(c0 + c1 * logit(trust)))

the calibrated purchase probability times the value of an order when a bad order costs
``bad_cost`` good ones (2: net value = good - 2 x bad). ``(a, b)`` (``purchase_calibration``)
and ``(c0, c1)`` (``bad_model``, ``c1 <= 0``) are fitted by the training job; the
derivation and the fits are in :mod:`trustfeed.ranker._expected_value`. ``bad_cost = 0``
switches trust off like ``trust_weight = 0``: the score is then ``z(relevance)`` (below).
Until both are fitted (a config written by hand) the policy falls back to the ``"logit"``
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

In both forms the score never decreases when trust rises (for ``trust_weight >= 0``), and
``trust_weight = 0`` ranks by relevance alone (the comparison arm). Hard rules run before
any scoring and remove candidates with a reason: ``banned_merchant`` (the account is banned),
``banned_entity`` (another account of the same legal entity is banned, so a re-registered
shop does not escape its record) and, when ``trust_floor`` is set, ``trust_floor``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..features.errors import ConfigError, SchemaError, reject_unknown_keys
from ._expected_value import check_parameters, expected_value_score

__all__ = [
    "PolicyConfig",
    "PolicyResult",
    "REASON_BANNED_MERCHANT",
    "REASON_BANNED_ENTITY",
    "REASON_TRUST_FLOOR",
    "REASONS",
    "hard_rules",
    "rule_codes",
    "final_score",
    "apply_policy",
    "apply_policy_many",
]

REASON_BANNED_MERCHANT = "banned_merchant"
REASON_BANNED_ENTITY = "banned_entity"
REASON_TRUST_FLOOR = "trust_floor"
_COMBINES = ("expected_value", "logit", "multiplicative")
_REASONS = np.array(["", REASON_TRUST_FLOOR, REASON_BANNED_ENTITY, REASON_BANNED_MERCHANT], dtype=object)
REASONS: tuple[str, ...] = tuple(_REASONS.tolist())
"""Filter reasons by :func:`rule_codes` code (``""``: the candidate stays)."""


@dataclass(frozen=True)
class PolicyConfig:
    """How the final order is made from relevance and trust (see the module docstring).

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
    purchase_calibration
        ``"expected_value"``: ``(a, b)`` with ``P(purchase | examined) = sigmoid(a * relevance + b)``,
        ``a > 0``; fitted by training (``None``: not fitted).
    bad_model
        ``"expected_value"``: ``(c0, c1)`` with ``p_bad = sigmoid(c0 + c1 * logit(trust))``,
        ``c1 <= 0``; fitted by training (``None``: not fitted).

    Examples
    --------
    >>> PolicyConfig.from_dict(PolicyConfig(trust_weight=0.5, combine="logit").to_dict())  # doctest: +NORMALIZE_WHITESPACE
    PolicyConfig(trust_weight=0.5, combine='logit', trust_floor=None, filter_banned=True, eps=0.001,
                 bad_cost=2.0, purchase_calibration=None, bad_model=None)
    """

    trust_weight: float = 1.0
    combine: str = "expected_value"
    trust_floor: float | None = None
    filter_banned: bool = True
    eps: float = 1e-3
    bad_cost: float = 2.0
    purchase_calibration: tuple[float, float] | None = None
    bad_model: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.trust_weight, (int, float)) and np.isfinite(self.trust_weight) and self.trust_weight >= 0):
            raise ConfigError(f"trust_weight must be a finite number >= 0, got {self.trust_weight!r}")
        if self.combine not in _COMBINES:
            raise ConfigError(f"combine must be one of {_COMBINES}, got {self.combine!r}")
        if self.trust_floor is not None and not 0 <= self.trust_floor <= 1:
            raise ConfigError(f"trust_floor must be in [0, 1] or None, got {self.trust_floor!r}")
        if not 0 < self.eps < 0.5:
            raise ConfigError(f"eps must be in (0, 0.5), got {self.eps!r}")
        # JSON gives lists back: tuples keep from_dict(to_dict()) == config
        calibration, bad = check_parameters(self.purchase_calibration, self.bad_model, self.bad_cost)
        object.__setattr__(self, "purchase_calibration", calibration)
        object.__setattr__(self, "bad_model", bad)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PolicyConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        reject_unknown_keys("PolicyConfig", values, known)
        return cls(**dict(values))


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


def _vector(values: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 0:
        return np.full(n, array, dtype=dtype)
    if array.shape != (n,):
        raise SchemaError("policy input", name, f"{n} values", f"shape {array.shape}")
    return array


def hard_rules(
    banned_merchant: Any,
    banned_entity: Any,
    trust: Any,
    config: PolicyConfig,
) -> np.ndarray:
    """Reason each candidate is removed, ``""`` when it stays (object array).

    A banned merchant reports ``banned_merchant`` even if its entity is banned too.
    """
    return _REASONS.take(rule_codes(banned_merchant, banned_entity, trust, config))


def rule_codes(banned_merchant: Any, banned_entity: Any, trust: Any, config: PolicyConfig) -> np.ndarray:
    """:func:`hard_rules` as small integers: 0 stays, else the index of the reason in ``REASONS``.

    The per-request form: a test against 0 is cheaper than comparing reason strings.
    """
    trust_values = np.asarray(trust, dtype=np.float64)
    n = trust_values.shape[0] if trust_values.ndim else 1
    merchant = _vector(banned_merchant, n, "banned_merchant", bool)
    entity = _vector(banned_entity, n, "banned_entity", bool)
    # integer codes, then one lookup into the reason strings (object arrays are slow to fill)
    codes = np.zeros(n, dtype=np.int8)
    if config.trust_floor is not None:
        # NaN trust is unknown, not low: the floor only removes what is known to be bad
        codes[trust_values < config.trust_floor] = 1
    if config.filter_banned:
        codes[entity] = 2
        codes[merchant] = 3
    return codes


def _group_sizes(group: Any, n: int) -> np.ndarray:
    sizes = np.asarray(group, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != n:
        raise SchemaError("policy input", "group", f"sizes summing to {n}", f"{sizes.tolist()[:5]}...")
    return sizes


def _group_ids(group: Any, n: int) -> np.ndarray:
    sizes = _group_sizes(group, n)
    return np.repeat(np.arange(len(sizes)), sizes)


def final_score(relevance: Any, trust: Any, config: PolicyConfig, group: Any = None) -> np.ndarray:
    """The combined score of every candidate (vectorised).

    Parameters
    ----------
    relevance, trust
        Model relevance and merchant trust in [0, 1] per candidate (NaN trust is taken as
        0.5, i.e. no evidence either way).
    config
        :class:`PolicyConfig`.
    group
        Request sizes when scoring many requests at once (``None``: one request); the
        relevance standardisation is per request.

    Examples
    --------
    >>> import numpy as np
    >>> final_score([2.0, 1.0, 0.0], [0.1, 0.9, 0.9], PolicyConfig(trust_weight=1.0)).round(2).tolist()
    [-0.97, 2.2, 0.97]
    >>> final_score([2.0, 1.0, 0.0], [0.1, 0.9, 0.9], PolicyConfig(trust_weight=0.0)).round(2).tolist()
    [1.22, 0.0, -1.22]
    """
    rel = np.asarray(relevance, dtype=np.float64)
    n = rel.shape[0]
    trust_values = _vector(trust, n, "trust", np.float64)
    expected_value = config.combine == "expected_value"
    if expected_value and config.bad_model is not None and config.trust_weight != 0 and config.bad_cost != 0:
        # calibrated on the raw score: no per-request standardisation; NaN trust is 0.5
        trust_values = np.where(np.isnan(trust_values), 0.5, trust_values)
        return expected_value_score(rel, trust_values, config.purchase_calibration, config.bad_model,  # type: ignore[arg-type]
                                    config.bad_cost, config.eps)
    finite = np.isfinite(rel)
    if group is None:
        z = _standardise_one(rel, finite)
    elif _group_sizes(group, n).size == 1:
        z = _standardise_sequential(rel, finite)  # one request (serving): no group bookkeeping
    else:
        ids = _group_ids(group, n)
        n_groups = int(ids.max()) + 1 if n else 0
        rel_clean = np.where(finite, rel, 0.0)
        counts = np.bincount(ids, weights=finite.astype(float), minlength=n_groups)
        sums = np.bincount(ids, weights=rel_clean, minlength=n_groups)
        means = sums / np.maximum(counts, 1)
        centred = np.where(finite, rel_clean - means[ids], 0.0)
        variances = np.bincount(ids, weights=centred**2, minlength=n_groups) / np.maximum(counts, 1)
        # a request whose candidates all score alike has no relevance spread to standardise
        scale = np.where(variances > 1e-18, np.sqrt(variances), 1.0)
        # a NaN relevance ranks below every scored candidate of its request
        z = np.where(finite, centred / scale[ids], -np.inf) if n else centred
    if config.trust_weight == 0 or (expected_value and config.bad_cost == 0):
        return z
    # NaN trust is no evidence either way (0.5); infinities end at the clip bounds
    clipped = np.clip(np.where(np.isnan(trust_values), 0.5, trust_values), config.eps, 1 - config.eps)
    if config.combine != "multiplicative":  # "logit", and the unfitted "expected_value" fallback
        return z + config.trust_weight * (np.log(clipped) - np.log1p(-clipped))
    return (1.0 / (1.0 + np.exp(-z))) * clipped**config.trust_weight


def _sequential_sum(values: np.ndarray) -> float:
    """Sum in index order, as ``np.bincount`` adds its weights (a running total from 0.0).

    ``cumsum`` adds in the same order; ``+ 0.0`` gives an all-zero total the sign a running
    total from ``0.0`` has. ``np.sum`` would add pairwise and differ in the last bits.
    """
    return float(np.cumsum(values)[-1]) + 0.0 if values.size else 0.0


def _standardise_sequential(rel: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Relevance z-scores of one request, bit for bit what the grouped form gives it.

    :func:`final_score` with ``group`` standardises each request with ``np.bincount`` sums;
    this is the same arithmetic in the same order for one request, so a request scores
    identically alone and within a batch.
    """
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


def _standardise_one(rel: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Relevance z-scores within one request (the per-request fast path of the batch form)."""
    if finite.all():
        if len(rel) == 0:
            return rel.copy()
        centred = rel - rel.mean()
        variance = float(np.dot(centred, centred)) / len(rel)
        return centred / (np.sqrt(variance) if variance > 1e-18 else 1.0)
    count = int(finite.sum())
    clean = np.where(finite, rel, 0.0)
    centred = np.where(finite, clean - (clean.sum() / max(count, 1)), 0.0)
    variance = float(np.dot(centred, centred)) / max(count, 1)
    return np.where(finite, centred / (np.sqrt(variance) if variance > 1e-18 else 1.0), -np.inf)


def apply_policy(
    relevance: Any,
    trust: Any,
    banned_merchant: Any,
    banned_entity: Any,
    config: PolicyConfig,
) -> PolicyResult:
    """Hard rules, then the final order, for one request.

    Ties keep the input order (a stable sort), so equal scores never shuffle.

    Examples
    --------
    >>> result = apply_policy([0.3, 2.0, 1.0], [0.8, 0.9, 0.7], [False, True, False], False, PolicyConfig())
    >>> result.order.tolist(), result.filtered.tolist(), result.reasons.tolist()
    ([2, 0], [1], ['banned_merchant'])
    """
    rel = np.asarray(relevance, dtype=np.float64)
    n = rel.shape[0]
    trust_values = _vector(trust, n, "trust", np.float64)
    reasons = hard_rules(banned_merchant, banned_entity, trust_values, config)
    score = final_score(rel, trust_values, config)
    kept = reasons == ""
    score = np.where(kept, score, -np.inf)
    kept_idx = np.flatnonzero(kept)
    order = kept_idx[np.argsort(-score[kept_idx], kind="stable")]
    filtered = np.flatnonzero(~kept)
    return PolicyResult(order=order, score=score, filtered=filtered, reasons=reasons[filtered])


def apply_policy_many(
    relevance: Any,
    trust: Any,
    banned_merchant: Any,
    banned_entity: Any,
    group: Any,
    config: PolicyConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vectorised form of :func:`apply_policy` over many requests laid end to end.

    Returns
    -------
    score
        Final score per row (``-inf`` for filtered rows).
    rank
        1-based rank of each kept row within its request (``0`` for filtered rows); the
        same order :func:`apply_policy` gives request by request.
    reasons
        Filter reason per row (``""`` when kept).
    """
    rel = np.asarray(relevance, dtype=np.float64)
    n = rel.shape[0]
    trust_values = _vector(trust, n, "trust", np.float64)
    ids = _group_ids(group, n)
    reasons = hard_rules(banned_merchant, banned_entity, trust_values, config)
    kept = reasons == ""
    score = np.where(kept, final_score(rel, trust_values, config, group=group), -np.inf)
    # within each request: kept rows by descending score, ties in input order
    order = np.lexsort((np.arange(n), -score, ~kept, ids))
    rank = np.zeros(n, dtype=np.int64)
    starts = np.searchsorted(ids[order], ids[order], side="left")
    rank[order] = np.arange(n) - starts + 1
    rank[~kept] = 0
    return score, rank, reasons
