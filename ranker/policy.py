"""Ranking policy: hard rules first, then relevance combined with trust.

Formula (``combine="logit"``, the default)::

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

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..features.errors import ConfigError, SchemaError

__all__ = [
    "PolicyConfig",
    "PolicyResult",
    "REASON_BANNED_MERCHANT",
    "REASON_BANNED_ENTITY",
    "REASON_TRUST_FLOOR",
    "hard_rules",
    "final_score",
    "apply_policy",
    "apply_policy_many",
]

REASON_BANNED_MERCHANT = "banned_merchant"
REASON_BANNED_ENTITY = "banned_entity"
REASON_TRUST_FLOOR = "trust_floor"
_COMBINES = ("logit", "multiplicative")
_REASONS = np.array(["", REASON_TRUST_FLOOR, REASON_BANNED_ENTITY, REASON_BANNED_MERCHANT], dtype=object)


@dataclass(frozen=True)
class PolicyConfig:
    """How the final order is made from relevance and trust (see the module docstring).

    Parameters
    ----------
    trust_weight
        Weight of trust (``>= 0``; ``0`` switches trust off).
    combine
        ``"logit"`` (additive in trust log-odds) or ``"multiplicative"``.
    trust_floor
        Candidates whose merchant trust is below this are filtered (``None``: no floor).
    filter_banned
        Apply the banned merchant / entity rules (switch off only for diagnostics).
    eps
        Trust is clipped to ``[eps, 1 - eps]`` before the logit.

    Examples
    --------
    >>> PolicyConfig.from_dict(PolicyConfig(trust_weight=0.5).to_dict())
    PolicyConfig(trust_weight=0.5, combine='logit', trust_floor=None, filter_banned=True, eps=0.001)
    """

    trust_weight: float = 1.0
    combine: str = "logit"
    trust_floor: float | None = None
    filter_banned: bool = True
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if not (isinstance(self.trust_weight, (int, float)) and np.isfinite(self.trust_weight) and self.trust_weight >= 0):
            raise ConfigError(f"trust_weight must be a finite number >= 0, got {self.trust_weight!r}")
        if self.combine not in _COMBINES:
            raise ConfigError(f"combine must be one of {_COMBINES}, got {self.combine!r}")
        if self.trust_floor is not None and not 0 <= self.trust_floor <= 1:
            raise ConfigError(f"trust_floor must be in [0, 1] or None, got {self.trust_floor!r}")
        if not 0 < self.eps < 0.5:
            raise ConfigError(f"eps must be in (0, 0.5), got {self.eps!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PolicyConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown PolicyConfig keys: {', '.join(unknown)}")
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
    return _REASONS.take(codes)


def _group_ids(group: Any, n: int) -> np.ndarray:
    sizes = np.asarray(group, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != n:
        raise SchemaError("policy input", "group", f"sizes summing to {n}", f"{sizes.tolist()[:5]}...")
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
    trust_values = np.nan_to_num(_vector(trust, n, "trust", np.float64), nan=0.5)
    finite = np.isfinite(rel)
    if group is None:
        z = _standardise_one(rel, finite)
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
    if config.trust_weight == 0:
        return z
    clipped = np.clip(trust_values, config.eps, 1 - config.eps)
    if config.combine == "logit":
        return z + config.trust_weight * (np.log(clipped) - np.log1p(-clipped))
    return (1.0 / (1.0 + np.exp(-z))) * clipped**config.trust_weight


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
