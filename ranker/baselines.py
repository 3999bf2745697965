"""Baseline re-rankers the exposure balancer is compared with.

- :func:`relevance_only`: sort by relevance;
- :func:`creator_cap`: at most ``cap`` items per creator in the first ``k``;
- :func:`fair_quota`: FA*IR (Zehlike et al., CIKM 2017) ranked group fairness with the long-tail
  creators as the protected group: every prefix of the first ``k`` holds at least the number of
  protected items a binomial test with proportion ``p`` at significance ``alpha`` requires;
- :func:`det_const_sort`: DetConstSort (Geyik et al., KDD 2019): every prefix of the first ``k``
  holds at least ``floor(i * p_a)`` items of each group ``a``, sorted by score where the
  deadlines allow;
- :class:`FairCoReranker`: a FairCo-style amortised P-controller (Morik et al., SIGIR 2020);
- :class:`PMMFReranker`: P-MMF-style per-creator dual prices by online mirror descent (Xu et
  al., WWW 2023).

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
from numpy.typing import ArrayLike
import pandas as pd
from scipy import stats

from ..features.errors import ConfigError, SchemaError

__all__ = [
    "CreatorCapReranker",
    "DetConstSortReranker",
    "FairCoReranker",
    "PMMFReranker",
    "FairQuotaReranker",
    "PopularityReranker",
    "Reranker",
    "creator_cap",
    "det_const_sort",
    "fair_mtable",
    "fair_quota",
    "long_tail_mask",
    "relevance_only",
]


def _relevance(relevance: ArrayLike) -> np.ndarray:
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 1:
        raise SchemaError("baseline input", "relevance", "a 1-D array", f"shape {rel.shape}")
    return rel


def relevance_only(relevance: ArrayLike) -> np.ndarray:
    """Indices by decreasing relevance; ties keep input order, NaN last.

    Examples
    --------
    >>> relevance_only([0.1, 0.9, float("nan"), 0.5]).tolist()
    [1, 3, 0, 2]
    """
    return np.argsort(-_relevance(relevance), kind="stable")


def creator_cap(relevance: ArrayLike, creator_ids: ArrayLike, cap: int = 1, k: int = 10) -> np.ndarray:
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


def long_tail_mask(creator_ids: ArrayLike, followers: pd.Series, head_fraction: float = 0.2) -> np.ndarray:
    """True for candidates whose creator is outside the top ``head_fraction`` by followers.

    ``followers`` is indexed by creator id over the whole population (the head is a property
    of the platform, not of one request); unknown creators are long tail.
    """
    if not 0.0 < head_fraction < 1.0:
        raise ConfigError(f"head_fraction: expected a value in (0, 1), got {head_fraction!r}")
    counts = pd.to_numeric(followers, errors="coerce").fillna(0.0)
    if counts.empty:
        return np.ones(np.asarray(creator_ids).shape[0], dtype=bool)
    n_head = int(np.ceil(head_fraction * counts.size))
    # ties in follower count are broken by id so the head does not depend on input order
    ranked = counts.sort_index(kind="mergesort").sort_values(ascending=False, kind="mergesort")
    head = np.asarray(ranked.index[:n_head], dtype=object)
    # a hash lookup: numpy's isin sorts object arrays (seconds at a few hundred thousand ids)
    return ~pd.Index(np.asarray(creator_ids, dtype=object)).isin(head)


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
    relevance: ArrayLike,
    protected: ArrayLike,
    k: int = 10,
    p: float = 0.5,
    alpha: float = 0.1,
    *,
    mtable: ArrayLike | None = None,
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


def det_const_sort(relevance: Any, groups: Any, proportions: Any, k: int = 10) -> np.ndarray:
    """DetConstSort re-ranking: each group's minimum share in every prefix of the first ``k``.

    After Geyik, Ambler and Kenthapadi, "Fairness-Aware Ranking in Search & Recommendation
    Systems with Application to LinkedIn Talent Search" (KDD 2019), algorithm 3. For
    ``i = 1, 2, ...`` the minimum count of group ``a`` is ``floor(i * p_a)``; each group whose
    minimum rose places its next best item (groups in order of that item's score) at the end
    of the ranked list with the deadline ``i``, and the item then moves up past lower-scored
    items whose deadline allows them to move one place down. This repeats until ``k`` items
    are placed; the rest follow in score order. A group with no items left is skipped.

    The PyPI package ``reranking`` (0.3.6, the paper's algorithms, last released in 2021)
    fails under pandas 2 (``pd.factorize`` of a list), so this is written from the paper.

    Parameters
    ----------
    relevance
        Scores, higher is better (NaN counts as lowest).
    groups
        Group code per candidate, integers ``0 .. len(proportions) - 1``.
    proportions
        Desired share of each group (non-negative, summing to at most 1).
    k
        Length of the fair prefix.

    Returns
    -------
    numpy.ndarray
        Candidate indices best first (a permutation).

    Notes
    -----
    The loop runs over positions of the prefix (at most ``k`` placements, each moving up at
    most ``k`` places), never over the candidates, so a request's cost is
    O(n log n + k^2) whatever its size.

    Examples
    --------
    >>> det_const_sort([5, 4, 3, 2, 1], [0, 0, 0, 1, 1], [0.5, 0.5], k=4).tolist()
    [0, 3, 1, 4, 2]
    """
    rel = np.nan_to_num(_relevance(relevance), nan=-np.inf)
    codes = np.asarray(groups)
    share = np.asarray(proportions, dtype=np.float64)
    if codes.shape != rel.shape:
        raise SchemaError("baseline input", "groups", f"{rel.size} group codes", f"{codes.size}")
    if share.ndim != 1 or share.size == 0 or not np.isfinite(share).all() or (share < 0).any() or share.sum() > 1 + 1e-9:
        raise ConfigError(f"det_const_sort: expected non-negative proportions summing to at most 1, got {share.tolist()!r}")
    if codes.size and (not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= share.size):
        raise SchemaError("baseline input", "groups", f"integer codes in [0, {share.size})", f"{np.unique(codes)[:5]}")
    if k < 1:
        raise ConfigError(f"det_const_sort: expected k >= 1, got {k!r}")
    order = np.argsort(-rel, kind="stable")
    queues = [order[codes[order] == a] for a in range(share.size)]
    taken = np.zeros(share.size, dtype=np.int64)
    minimum = np.zeros(share.size, dtype=np.int64)
    sizes = np.array([q.size for q in queues])
    placed: list[int] = []
    placed_score: list[float] = []
    deadline: list[int] = []
    limit = min(int(k), rel.size)
    step = 0
    while len(placed) < limit:
        # jump to the next i at which a group that still has items sees its minimum rise
        # (stepping one by one would take 1 / p steps for a tiny share p)
        open_groups = (taken < sizes) & (share > 0)
        if not open_groups.any():
            break
        with np.errstate(divide="ignore", over="ignore"):
            due = np.where(open_groups, np.ceil((minimum + 1 - 1e-9) / share), np.inf)
        if due.min() > 1e15:
            break  # only vanishing shares are left: the rest follows in score order
        step = max(step + 1, int(due.min()))
        wanted = np.floor(step * share + 1e-9).astype(np.int64)
        rising = np.flatnonzero((minimum < wanted) & (taken < sizes))
        minimum = wanted
        if rising.size == 0:
            continue
        next_score = np.array([rel[queues[a][taken[a]]] for a in rising])
        for a in rising[np.argsort(-next_score, kind="stable")].tolist():
            if len(placed) == limit:
                break
            item = int(queues[a][taken[a]])
            placed.append(item)
            placed_score.append(float(rel[item]))
            deadline.append(step)
            at = len(placed) - 1
            # move up past lower-scored items that may still go one place down (1-based deadline)
            while at > 0 and deadline[at - 1] >= at + 1 and placed_score[at - 1] < placed_score[at]:
                placed[at - 1], placed[at] = placed[at], placed[at - 1]
                placed_score[at - 1], placed_score[at] = placed_score[at], placed_score[at - 1]
                deadline[at - 1], deadline[at] = deadline[at], deadline[at - 1]
                at -= 1
            taken[a] += 1
    head = np.array(placed, dtype=np.intp)
    rest = np.ones(rel.size, dtype=bool)
    rest[head] = False
    return np.concatenate([head, order[rest[order]]])


# ----------------------------------------------------------------------------- re-rankers


class Reranker(Protocol):
    """What a :class:`~trustfeed.ranker.pipeline.RankingPipeline` needs in its re-ranking slot."""

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: ArrayLike, trust: ArrayLike, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray: ...

    def record(self, creator_ids: Sequence[str], merchant_ids: Sequence[str], positions: ArrayLike, *, now: float | None = None) -> None: ...


class _StatelessReranker:
    """Shared plumbing of the baseline re-rankers: no ledger, nothing to record."""

    # the pipeline reads ``config.record_k``; a baseline has no config
    config: Any = None

    def record(self, creator_ids: Sequence[str], merchant_ids: Sequence[str], positions: ArrayLike, *, now: float | None = None) -> None:
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
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: ArrayLike, trust: ArrayLike, *,
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
        ids = pd.Index(followers.index.astype(str))
        # the head is fixed for the platform: found once, then one hash lookup per request
        self._head = pd.Index(ids[~long_tail_mask(ids.to_numpy(dtype=object), followers, head_fraction)])
        self.k = k

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: ArrayLike, trust: ArrayLike, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first."""
        tail = self._head.get_indexer(np.asarray(creator_ids, dtype=object)) < 0
        return fair_quota(relevance, tail, k=self.k, mtable=self.mtable)


class DetConstSortReranker(_StatelessReranker):
    """DetConstSort (:func:`det_const_sort`) on the policy score: long-tail creators get share ``p``.

    Two groups, as in :class:`FairQuotaReranker`: the long tail (creators outside the top
    ``head_fraction`` by followers) with desired proportion ``p`` and the head with ``1 - p``.

    Examples
    --------
    >>> followers = pd.Series([1000.0, 10.0, 5.0, 1.0, 2.0], index=["a", "b", "c", "d", "e"])
    >>> DetConstSortReranker(followers, k=2, p=0.5).rerank(["a", "a", "b"], ["m"] * 3, [0.9, 0.8, 0.1], [0.5] * 3).tolist()
    [0, 2, 1]
    """

    def __init__(self, followers: pd.Series, head_fraction: float = 0.2, k: int = 10, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"DetConstSortReranker: expected p in [0, 1], got {p!r}")
        if k < 1:
            raise ConfigError(f"DetConstSortReranker: expected k >= 1, got {k!r}")
        ids = pd.Index(followers.index.astype(str))
        self._head = pd.Index(ids[~long_tail_mask(ids.to_numpy(dtype=object), followers, head_fraction)])
        self.k, self.proportions = k, np.array([1.0 - p, p])

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: Any, trust: Any, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first."""
        tail = (self._head.get_indexer(np.asarray(creator_ids, dtype=object)) < 0).astype(np.int64)
        return det_const_sort(relevance, tail, self.proportions, k=self.k)


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
        self._creators = pd.Index(counts.index.astype(str))
        # the last entry is for creators not in ``followers``: no followers
        self._log_followers = np.append(np.log1p(counts.to_numpy(dtype=float)), 0.0)
        self.noise = float(noise)
        self._rng = np.random.default_rng(seed)

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: ArrayLike, trust: ArrayLike, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first."""
        popularity = self._log_followers[self._creators.get_indexer(np.asarray(creator_ids, dtype=object))]
        if self.noise > 0:
            popularity = popularity + self._rng.gumbel(0.0, self.noise, popularity.size)
        return np.argsort(-popularity, kind="stable")


# ----------------------------------------------------------------------------- amortised fairness


def _merit(relevance: np.ndarray) -> np.ndarray:
    """A request's scores as merits in (0, 1): the logistic of their per-request z-score.

    Policy scores have a model-dependent scale (a raw LambdaMART score, an expected net value
    in ``[-bad_cost, 1]``); the fairness baselines need a positive merit on one scale.
    """
    from .policy import standardise_relevance

    z = standardise_relevance(np.asarray(relevance, dtype=np.float64))
    return 1.0 / (1.0 + np.exp(-np.where(np.isfinite(z), z, -30.0)))


class _AmortisedReranker:
    """A re-ranker with per-creator running totals (creators are the providers)."""

    config: Any = None  # the pipeline reads ``config.record_k``; these keep no config

    def __init__(self) -> None:
        from .balancer import _Ledger

        self._exposure = _Ledger()  # exposure received, per creator
        self._secondary = np.zeros(1024)  # per creator: merit seen (FairCo) or log-price (P-MMF)
        self._last: np.ndarray | None = None  # slots of the last request's candidates

    def _slots(self, creator_ids: Sequence[str]) -> np.ndarray:
        slots = self._exposure.slots(list(creator_ids))
        if self._exposure.stored.size > self._secondary.size:
            self._secondary = np.concatenate([self._secondary, np.zeros(self._exposure.stored.size - self._secondary.size)])
        return slots

    def record(self, creator_ids: Sequence[str], merchant_ids: Sequence[str], positions: ArrayLike, *, now: float | None = None) -> None:
        """Add the exposure ``1 / log2(position + 1)`` of a served list to the creators' totals."""
        slots = self._slots(creator_ids)
        exposure = 1.0 / np.log2(np.asarray(positions, dtype=np.float64) + 1.0)
        np.add.at(self._exposure.stored, slots, exposure)
        self._after_record(slots, exposure)

    def _after_record(self, slots: np.ndarray, exposure: np.ndarray) -> None:
        """Hook for the dual update of :class:`PMMFReranker`."""

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        """Add logged impressions (``creator_id``, ``position``) to the creators' exposure."""
        if len(impressions):
            slots = self._exposure.slots_bulk(impressions["creator_id"].astype(str))
            if self._exposure.stored.size > self._secondary.size:
                self._secondary = np.concatenate([self._secondary, np.zeros(self._exposure.stored.size - self._secondary.size)])
            exposure = 1.0 / np.log2(impressions["position"].to_numpy(dtype=np.float64) + 1.0)
            np.add.at(self._exposure.stored, slots, exposure)


class FairCoReranker(_AmortisedReranker):
    """FairCo-style amortised P-controller for merit-proportional creator exposure.

    After Morik et al., "Controlling Fairness and Bias in Dynamic Learning-to-Rank" (SIGIR
    2020): rank by ``merit + strength * err``, where ``err`` of a candidate is the gap
    between the largest exposure-per-merit among the request's creators and its own creator's,
    both accumulated over every request served so far (the paper's ``(tau - 1) x`` average
    disparity is this accumulated gap). A creator that got less exposure than its merit
    earns is lifted in proportion to the shortfall, so the disparity is driven towards zero
    over time. Groups are individual creators; the maximum is taken over the request's
    creators (the paper takes it over all groups). Merit is the logistic of the
    per-request z-scored policy score, accumulated as a mean per creator.

    Examples
    --------
    >>> fairco = FairCoReranker(strength=1.0)
    >>> fairco.rerank(["a", "b"], ["m", "m"], [1.0, 1.0], [0.5, 0.5]).tolist()  # a tie: input order
    [0, 1]
    >>> fairco.record(["a", "b"], ["m", "m"], [1, 2])  # "a" got more exposure for the same merit
    >>> fairco.rerank(["a", "b"], ["m", "m"], [1.0, 1.0], [0.5, 0.5]).tolist()
    [1, 0]
    """

    def __init__(self, strength: float = 0.01) -> None:
        if not (np.isfinite(strength) and strength >= 0):
            raise ConfigError(f"FairCoReranker: expected strength >= 0, got {strength!r}")
        super().__init__()
        self.strength = float(strength)
        self._seen = np.zeros(1024)  # requests each creator was a candidate in

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: ArrayLike, trust: ArrayLike, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first (the merit of this request is accumulated)."""
        rel = _relevance(relevance)
        if rel.size == 0:
            return np.zeros(0, dtype=np.intp)
        merit = _merit(rel)
        slots = self._slots(creator_ids)
        if self._secondary.size > self._seen.size:
            self._seen = np.concatenate([self._seen, np.zeros(self._secondary.size - self._seen.size)])
        np.add.at(self._secondary, slots, merit)
        np.add.at(self._seen, slots, 1.0)
        mean_merit = self._secondary[slots] / np.maximum(self._seen[slots], 1.0)
        per_merit = self._exposure.stored[slots] / np.maximum(mean_merit, 1e-9)
        err = per_merit.max() - per_merit
        return np.argsort(-(merit + self.strength * err), kind="stable")


class PMMFReranker(_AmortisedReranker):
    """P-MMF-style per-creator dual prices updated by online mirror descent.

    After Xu et al., "P-MMF: Provider Max-min Fairness Re-ranking in Recommender System" (WWW
    2023), without its projection step (the reference code solves it with cvxpy): each
    creator (provider) has a dual price; a request ranks by ``merit - strength * price``;
    after the served list is recorded, the prices take one exponentiated-gradient (entropic
    mirror descent) step with step size ``learning_rate`` on the gap between the exposure each
    candidate creator received and an equal share of the list's exposure among the request's
    creators, so over-exposed creators get dearer and starved ones cheaper. Prices are
    normalised to mean 1 over the creators seen. Merit as in :class:`FairCoReranker`.

    Examples
    --------
    >>> pmmf = PMMFReranker(strength=0.5, learning_rate=1.0)
    >>> for _ in range(5):  # "a" always wins and is shown first
    ...     order = pmmf.rerank(["a", "b"], ["m", "m"], [1.0, 0.9], [0.5, 0.5])
    ...     pmmf.record(["a", "b"], ["m", "m"], [1, 2])
    >>> pmmf.rerank(["a", "b"], ["m", "m"], [1.0, 0.9], [0.5, 0.5]).tolist()
    [1, 0]
    """

    def __init__(self, strength: float = 0.1, learning_rate: float = 0.05) -> None:
        if not (np.isfinite(strength) and strength >= 0 and np.isfinite(learning_rate) and learning_rate > 0):
            raise ConfigError(f"PMMFReranker: expected strength >= 0 and learning_rate > 0, got {strength!r}, {learning_rate!r}")
        super().__init__()
        self.strength, self.learning_rate = float(strength), float(learning_rate)

    def _prices(self, slots: np.ndarray) -> np.ndarray:
        seen = self._exposure.size
        log_price = self._secondary[:seen]
        # softmax over the creators seen, times their number: mean price 1
        shift = log_price.max(initial=0.0)
        weights = np.exp(log_price - shift)
        return np.asarray(weights[slots] * seen / weights.sum())

    def rerank(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], relevance: ArrayLike, trust: ArrayLike, *,
        now: float | None = None, record: bool | None = None,
    ) -> np.ndarray:
        """Candidate indices best first (remembers the candidates for the price update)."""
        rel = _relevance(relevance)
        if rel.size == 0:
            return np.zeros(0, dtype=np.intp)
        slots = self._slots(creator_ids)
        self._last = np.unique(slots)
        return np.argsort(-(_merit(rel) - self.strength * self._prices(slots)), kind="stable")

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        """Logged impressions (``request_id``, ``creator_id``, ``position``): exposure and one price step per request.

        The log holds only what was shown, so each shown creator's gap is taken against the
        mean exposure of its request's shown creators (the over-exposed top grows dearer).
        """
        super().record_impressions(impressions)
        if len(impressions) == 0:
            return
        slots = self._exposure.slots_bulk(impressions["creator_id"].astype(str))
        exposure = 1.0 / np.log2(impressions["position"].to_numpy(dtype=np.float64) + 1.0)
        request_mean = pd.Series(exposure).groupby(impressions["request_id"].to_numpy()).transform("mean").to_numpy()
        np.add.at(self._secondary, slots, self.learning_rate * (exposure - request_mean))

    def _after_record(self, slots: np.ndarray, exposure: np.ndarray) -> None:
        candidates = self._last if self._last is not None else np.unique(slots)
        self._last = None
        if candidates.size == 0:
            return
        received = np.zeros(self._exposure.size)
        np.add.at(received, slots, exposure)
        gradient = received[candidates] - exposure.sum() / candidates.size
        self._secondary[candidates] += self.learning_rate * gradient
