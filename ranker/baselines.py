"""Baseline re-rankers the exposure balancer is compared with.

- :func:`relevance_only`: sort by relevance;
- :func:`creator_cap`: at most ``cap`` items per creator in the first ``k``;
- :func:`fair_quota`: FA*IR (Zehlike et al., CIKM 2017) ranked group fairness with the long-tail
  creators as the protected group: every prefix of the first ``k`` holds at least the number of
  protected items a binomial test with proportion ``p`` at significance ``alpha`` requires.

Each takes one request's arrays and returns candidate indices best first (a permutation).
All are vectorised: FA*IR's greedy merge has a closed form (see :func:`fair_quota`).

The re-rankers (:class:`CreatorCapReranker`, :class:`FairQuotaReranker`,
:class:`PopularityReranker`) put a baseline in the slot of a
:class:`~trustfeed.ranker.pipeline.RankingPipeline` where the exposure balancer sits, so a
baseline is served through the same pipeline (hard rules, features, model, policy score) as
the trust-aware ranker. They keep no ledger: recording what was shown does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import stats

from ..features.errors import ConfigError, SchemaError

__all__ = [
    "CreatorCapReranker",
    "FairQuotaReranker",
    "PopularityReranker",
    "Reranker",
    "creator_cap",
    "fair_mtable",
    "fair_quota",
    "long_tail_mask",
    "relevance_only",
]


def _relevance(relevance: Any) -> np.ndarray:
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 1:
        raise SchemaError("baseline input", "relevance", "a 1-D array", f"shape {rel.shape}")
    return rel


def relevance_only(relevance: Any) -> np.ndarray:
    """Indices by decreasing relevance; ties keep input order, NaN last.

    Examples
    --------
    >>> relevance_only([0.1, 0.9, float("nan"), 0.5]).tolist()
    [1, 3, 0, 2]
    """
    return np.argsort(-_relevance(relevance), kind="stable")


def creator_cap(relevance: Any, creator_ids: Any, cap: int = 1, k: int = 10) -> np.ndarray:
    """Relevance order with at most ``cap`` items per creator in the first ``k`` positions.

    Items over their creator's cap move behind the first ``k`` (keeping relevance order), and
    the next items within their cap move up; when there are not enough distinct creators the
    remaining head slots go to the best capped items.

    Examples
    --------
    >>> creator_cap([0.9, 0.8, 0.7], ["a", "a", "b"], cap=1, k=2).tolist()
    [0, 2, 1]
    """
    if cap < 1 or k < 1:
        raise ConfigError(f"creator_cap: expected cap >= 1 and k >= 1, got cap={cap!r}, k={k!r}")
    rel = _relevance(relevance)
    creators = np.asarray(creator_ids, dtype=object)
    if creators.shape != rel.shape:
        raise SchemaError("baseline input", "creator_ids", f"{rel.size} ids", f"{creators.size}")
    order = relevance_only(rel)
    if order.size == 0:
        return order
    codes = pd.factorize(creators[order])[0]
    # occurrence number of each item within its creator, along the relevance order
    by_creator = np.argsort(codes, kind="stable")
    sorted_codes = codes[by_creator]
    starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(codes.size), 0))
    occurrence = np.empty(codes.size, dtype=np.intp)
    occurrence[by_creator] = np.arange(codes.size) - group_start
    within = occurrence < cap
    in_head = within & (np.cumsum(within) <= k)
    return order[np.argsort(~in_head, kind="stable")]


def long_tail_mask(creator_ids: Any, followers: pd.Series, head_fraction: float = 0.2) -> np.ndarray:
    """True for candidates whose creator is outside the top ``head_fraction`` by followers.

    ``followers`` is indexed by creator id over the whole population (the head is a property
    of the platform, not of one request); unknown creators are long tail.
    """
    if not 0.0 < head_fraction < 1.0:
        raise ConfigError(f"head_fraction: expected a value in (0, 1), got {head_fraction!r}")
    counts = pd.to_numeric(followers, errors="coerce").fillna(0.0)
    if counts.empty:
        return np.ones(len(creator_ids), dtype=bool)
    n_head = int(np.ceil(head_fraction * counts.size))
    # ties in follower count are broken by id so the head does not depend on input order
    ranked = counts.sort_index(kind="mergesort").sort_values(ascending=False, kind="mergesort")
    head = np.asarray(ranked.index[:n_head], dtype=object)
    return ~np.isin(np.asarray(creator_ids, dtype=object), head)


def fair_mtable(k: int, p: float, alpha: float) -> np.ndarray:
    """FA*IR's (unadjusted) table: minimum protected items in each prefix 1..k.

    ``m[i-1]`` is the ``alpha`` quantile of Binomial(i, p), floored at 0.

    Examples
    --------
    >>> fair_mtable(10, 0.5, 0.1).tolist()
    [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    """
    if k < 1:
        raise ConfigError(f"fair_mtable: expected k >= 1, got {k!r}")
    if not 0.0 < p < 1.0:
        raise ConfigError(f"fair_mtable: expected p in (0, 1), got {p!r}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"fair_mtable: expected alpha in (0, 1), got {alpha!r}")
    m = stats.binom.ppf(alpha, np.arange(1, k + 1), p)
    return np.maximum(m, 0).astype(np.int64)


def fair_quota(
    relevance: Any,
    protected: Any,
    k: int = 10,
    p: float = 0.5,
    alpha: float = 0.1,
    *,
    mtable: Any = None,
) -> np.ndarray:
    """FA*IR re-ranking: a protected quota in every prefix of the first ``k``.

    Parameters
    ----------
    relevance
        Scores, higher is better (NaN counts as lowest).
    protected
        Boolean per candidate (e.g. :func:`long_tail_mask`).
    k, p, alpha
        Length of the fair prefix, target protected proportion, significance level.
    mtable
        An explicit table of length ``k`` (overrides ``p``/``alpha``), e.g. FA*IR's
        multiple-testing adjusted table. The default is the unadjusted table of
        :func:`fair_mtable`. (``fairsearchcore``'s own alpha adjustment fails under numpy 2:
        its cache key's ``__hash__`` returns a numpy integer.)

    Returns
    -------
    numpy.ndarray
        Candidate indices best first. The first ``k`` equal FA*IR's output
        (``fairsearchcore`` ``Fair.re_rank``); after that the greedy merge simply continues.

    Notes
    -----
    FA*IR fills position i with the best protected item if fewer than ``m_i`` protected
    items are above it, otherwise with the better of the two group heads (protected wins
    ties). Because ``m`` rises by at most one per position, the t-th protected item lands at
    ``min(d_t, t + a_t)`` where ``d_t`` is the first i with ``m_i >= t`` and ``a_t`` the number of
    unprotected items scoring strictly higher; unprotected items fill the other positions in
    order. That closed form replaces the position-by-position loop.

    Examples
    --------
    >>> fair_quota([5, 4, 3, 2, 1], [False, False, False, True, True],
    ...            mtable=[0, 1, 1, 2, 2], k=5).tolist()
    [0, 3, 1, 4, 2]
    """
    rel = np.nan_to_num(_relevance(relevance), nan=-np.inf)
    mask = np.asarray(protected, dtype=bool)
    if mask.shape != rel.shape:
        raise SchemaError("baseline input", "protected", f"{rel.size} flags", f"{mask.size}")
    if k < 1:
        raise ConfigError(f"fair_quota: expected k >= 1, got {k!r}")
    if mtable is not None:
        table = np.asarray(mtable, dtype=np.int64)
        steps = np.diff(np.r_[0, table])
        if table.shape != (k,) or (steps < 0).any() or (steps > 1).any():
            raise ConfigError("fair_quota: mtable must have length k, start at 0 or 1 and rise by 0 or 1")
    else:
        table = fair_mtable(k, p, alpha)
    n = rel.size
    order = np.argsort(-rel, kind="stable")
    protected_order = order[mask[order]]
    other_order = order[~mask[order]]
    t = np.arange(1, protected_order.size + 1)
    other_scores_ascending = rel[other_order][::-1]
    higher = other_order.size - np.searchsorted(
        other_scores_ascending, rel[protected_order], side="right"
    )
    deadline = np.searchsorted(table, t, side="left") + 1.0  # k + 1 when the quota never asks
    deadline[t > table[-1]] = np.inf
    position = np.minimum(deadline, t + higher).astype(np.intp) - 1
    result = np.empty(n, dtype=np.intp)
    is_protected_slot = np.zeros(n, dtype=bool)
    is_protected_slot[position] = True
    result[position] = protected_order
    result[~is_protected_slot] = other_order
    return result


# ----------------------------------------------------------------------------- re-rankers


class Reranker(Protocol):
    """What a :class:`~trustfeed.ranker.pipeline.RankingPipeline` needs in its re-ranking slot."""

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: Any, trust: Any, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray: ...

    def record(self, creator_ids: Sequence[str], merchant_ids: Sequence[str], positions: Any, *, now: float | None = None) -> None: ...


class _StatelessReranker:
    """Shared plumbing of the baseline re-rankers: no ledger, nothing to record."""

    # the pipeline reads ``config.record_k``; a baseline has no config
    config: Any = None

    def record(self, creator_ids: Sequence[str], merchant_ids: Sequence[str], positions: Any, *, now: float | None = None) -> None:
        """Nothing to record: the baseline keeps no exposure ledger."""

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        """Nothing to record: the baseline keeps no exposure ledger."""


class CreatorCapReranker(_StatelessReranker):
    """:func:`creator_cap` on the policy score, as a pipeline re-ranker.

    Examples
    --------
    >>> CreatorCapReranker(cap=1, k=2).rerank(["a", "a", "b"], ["m", "m", "m"], [0.9, 0.8, 0.7], [0.5] * 3).tolist()
    [0, 2, 1]
    """

    def __init__(self, cap: int = 1, k: int = 10) -> None:
        creator_cap([], [], cap=cap, k=k)  # validates cap and k now, not at the first request
        self.cap, self.k = cap, k

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: Any, trust: Any, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first."""
        return creator_cap(relevance, np.asarray(creator_ids, dtype=object), cap=self.cap, k=self.k)


class FairQuotaReranker(_StatelessReranker):
    """FA*IR (:func:`fair_quota`) on the policy score with the long-tail creators protected.

    Parameters
    ----------
    followers
        Follower count per creator id over the whole platform (the head is the top
        ``head_fraction`` of it; creators not in it are long tail, see :func:`long_tail_mask`).
    head_fraction, k, p, alpha
        As in :func:`long_tail_mask` and :func:`fair_quota`.

    Examples
    --------
    >>> followers = pd.Series([1000.0, 10.0, 5.0, 1.0, 2.0], index=["a", "b", "c", "d", "e"])
    >>> FairQuotaReranker(followers, k=3, p=0.9, alpha=0.5).rerank(["a", "a", "b"], ["m"] * 3, [0.9, 0.8, 0.1], [0.5] * 3).tolist()
    [2, 0, 1]
    """

    def __init__(self, followers: pd.Series, head_fraction: float = 0.2, k: int = 10, p: float = 0.5, alpha: float = 0.1) -> None:
        self.mtable = fair_mtable(k, p, alpha)  # validates k, p and alpha
        long_tail_mask([], followers, head_fraction)  # validates head_fraction
        self.followers, self.head_fraction, self.k = followers, head_fraction, k

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: Any, trust: Any, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first."""
        tail = long_tail_mask(np.asarray(creator_ids, dtype=object), self.followers, self.head_fraction)
        return fair_quota(relevance, tail, k=self.k, mtable=self.mtable)


class PopularityReranker(_StatelessReranker):
    """Popularity plus noise, ignoring the model: a feed before learning to rank.

    Orders by ``log1p(followers) + Gumbel(0, noise)`` (unknown creators have no followers),
    the shape of the logging policy that produced a simulated dataset's impressions. The
    noise comes from a generator seeded with ``seed``, so the same requests in the same
    order get the same lists.

    Examples
    --------
    >>> followers = pd.Series([1e6, 10.0], index=["big", "small"])
    >>> PopularityReranker(followers, noise=0.0).rerank(["small", "big", "new"], ["m"] * 3, [3.0, 2.0, 1.0], [0.5] * 3).tolist()
    [1, 0, 2]
    """

    def __init__(self, followers: pd.Series, noise: float = 1.5, seed: int = 0) -> None:
        if not (np.isfinite(noise) and noise >= 0):
            raise ConfigError(f"PopularityReranker: expected noise >= 0, got {noise!r}")
        counts = pd.to_numeric(followers, errors="coerce").fillna(0.0).clip(lower=0.0)
        self.log_followers = pd.Series(np.log1p(counts.to_numpy(dtype=float)), index=counts.index.astype(str))
        self.noise = float(noise)
        self._rng = np.random.default_rng(seed)

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: Any, trust: Any, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first."""
        popularity = self.log_followers.reindex(np.asarray(creator_ids, dtype=object)).fillna(0.0).to_numpy()
        if self.noise > 0:
            popularity = popularity + self._rng.gumbel(0.0, self.noise, popularity.size)
        return np.argsort(-popularity, kind="stable")
