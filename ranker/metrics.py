"""Ranking and exposure metrics, exactly as docs/contract.md section 4 defines them.

Every function works on plain arrays or on a *long* frame of ranked lists: one row per
(request, served item) with at least ``request_id`` and ``position`` (1-based) plus whatever
the metric needs (``creator_id``, ``label``, ``trust``, ...). Everything is vectorised over
rows; no function loops over requests or creators in Python.

Definitions (docs/contract.md section 4):

- exposure of position ``p``: ``1 / log2(p + 1)`` (``kind="log2"``, the default; ``"reciprocal"``
  ``1 / p`` and ``"rbp"`` ``patience ** (p - 1)`` are available when a run says otherwise);
- exposure of a creator (or merchant): the sum of its items' exposures over all lists;
- Gini over N creators sorted ascending, zeros included:
  ``G = sum_i (2i - N - 1) x_i / (N * sum x)``; the N creators are every creator that was a
  candidate at least once (pass them as ``population``);
- long-tail share: the fraction of exposure going to creators outside the top 20% by followers
  (or by past exposure when follower counts are missing);
- NDCG@k: gain ``2**label - 1``, discount ``log2(p + 1)``; a list without any positive label is
  *skipped and counted*. LightGBM's ``ndcg@k`` scores such a list as 1 and ``ranx`` /
  ``trec_eval`` as 0; both bias the mean by the share of all-zero lists, so the contract leaves
  them out and reports how many there were (:class:`NdcgResult`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
import pandas as pd

from ..features.errors import ConfigError, SchemaError

__all__ = [
    "EXPOSURE_KINDS",
    "ExposureSummary",
    "NdcgResult",
    "bad_order_exposure",
    "creator_coverage",
    "exposure_by",
    "exposure_summary",
    "exposure_weighted_mean",
    "exposure_weighted_trust",
    "gini",
    "kendall_tau",
    "long_tail_share",
    "mean_kendall_tau",
    "mean_ndcg",
    "ndcg_at_k",
    "position_exposure",
]

EXPOSURE_KINDS = ("log2", "reciprocal", "rbp")


def _check_exposure_kind(kind: str, patience: float) -> None:
    if kind not in EXPOSURE_KINDS:
        raise ConfigError(f"exposure kind: expected one of {EXPOSURE_KINDS}, got {kind!r}")
    if kind == "rbp" and not 0.0 < patience < 1.0:
        raise ConfigError(f"exposure patience: expected a value in (0, 1), got {patience!r}")


def position_exposure(positions: ArrayLike, kind: str = "log2", patience: float = 0.8) -> np.ndarray:
    """Exposure of 1-based positions.

    Parameters
    ----------
    positions
        Array-like of positions, 1 = top.
    kind
        ``"log2"`` (``1 / log2(p + 1)``, the contract's default), ``"reciprocal"`` (``1 / p``)
        or ``"rbp"`` (rank-biased precision, ``patience ** (p - 1)``).
    patience
        Continuation probability for ``"rbp"``.

    Returns
    -------
    numpy.ndarray
        float64 exposures, 1.0 at position 1.

    Examples
    --------
    >>> position_exposure([1, 3]).round(3).tolist()
    [1.0, 0.5]
    """
    _check_exposure_kind(kind, patience)
    p = np.asarray(positions, dtype=np.float64)
    if p.size and not (np.isfinite(p).all() and p.min() >= 1.0):
        bad = p[~(np.isfinite(p) & (p >= 1.0))]
        raise SchemaError("ranked lists", "position", "finite positions >= 1", "other values", bad.tolist())
    if kind == "log2":
        return 1.0 / np.log2(p + 1.0)
    if kind == "reciprocal":
        return 1.0 / p
    return np.power(patience, p - 1.0)


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str = "ranked lists") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(what, missing[0], "a column of that name", f"columns {list(frame.columns)}")


def _item_exposure(
    ranked: pd.DataFrame, position_col: str, k: int | None, kind: str, patience: float
) -> np.ndarray:
    _require(ranked, [position_col])
    positions = ranked[position_col].to_numpy(dtype=np.float64)
    exposure = position_exposure(positions, kind, patience)
    if k is not None:
        if k < 1:
            raise ConfigError(f"k: expected an integer >= 1, got {k!r}")
        exposure = np.where(positions <= k, exposure, 0.0)
    return exposure


def exposure_by(
    ranked: pd.DataFrame,
    key: str = "creator_id",
    *,
    population: Iterable[Any] | None = None,
    k: int | None = None,
    kind: str = "log2",
    patience: float = 0.8,
    position_col: str = "position",
) -> pd.Series:
    """Total exposure per creator (or merchant, ``key="merchant_id"``) over many ranked lists.

    Parameters
    ----------
    ranked
        Long frame, one row per served item, with ``key`` and ``position_col``.
    key
        The column to aggregate by.
    population
        The eligible ids (every id that was a candidate at least once). Ids of the population
        that were never served get 0; served ids outside it are added (they were candidates).
        ``None``: the served ids only.
    k
        Only positions ``<= k`` count (a feed shows k items); ``None``: every position.
    kind, patience
        Position exposure function, see :func:`position_exposure`.

    Returns
    -------
    pandas.Series
        float64 exposure indexed by id, sorted by id.

    Examples
    --------
    >>> lists = pd.DataFrame({"request_id": ["a", "a", "b"], "position": [1, 2, 1],
    ...                       "creator_id": ["x", "y", "x"]})
    >>> exposure_by(lists, population=["x", "y", "z"]).round(3).to_dict()
    {'x': 2.0, 'y': 0.631, 'z': 0.0}
    """
    _require(ranked, [key])
    exposure = _item_exposure(ranked, position_col, k, kind, patience)
    ids = ranked[key].astype(object).to_numpy()
    totals = pd.Series(exposure, index=pd.Index(ids, name=key)).groupby(level=0, sort=True).sum()
    if population is not None:
        pop = pd.Index(pd.unique(np.asarray(list(population), dtype=object)), name=key)
        totals = totals.reindex(pop.union(totals.index), fill_value=0.0)
    return totals.astype(np.float64).rename("exposure")


def gini(x: ArrayLike) -> float:
    """Gini coefficient of non-negative values, zeros included (docs/contract.md section 4).

    ``G = sum_i (2i - N - 1) x_i / (N * sum x)`` with ``x`` sorted ascending and ``i`` 1-based.
    0 means perfectly equal; the maximum, all to one of N, is ``(N - 1) / N`` (so G < 1).
    An empty input or an all-zero one is 0 (nothing unequal has happened yet).

    Examples
    --------
    >>> gini([1.0, 1.0, 1.0])
    0.0
    >>> gini([0.0, 0.0, 0.0, 5.0])
    0.75
    """
    values = np.asarray(x, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return 0.0
    if not np.isfinite(values).all() or values.min() < 0.0:
        bad = values[~(np.isfinite(values) & (values >= 0.0))]
        raise SchemaError("exposure", None, "finite non-negative values", "other values", bad.tolist())
    total = values.sum()
    if total <= 0.0:
        return 0.0
    ordered = np.sort(values)
    weights = 2.0 * np.arange(1, n + 1, dtype=np.float64) - n - 1.0
    # clip: rounding can leave a tiny negative for equal values
    return float(max(0.0, weights @ ordered / (n * total)))


def long_tail_share(
    exposure: pd.Series,
    followers: pd.Series | None = None,
    past_exposure: pd.Series | None = None,
    head_fraction: float = 0.2,
) -> float:
    """Fraction of total exposure that goes to creators outside the head.

    The head is the ``ceil(head_fraction * N)`` creators of ``exposure``'s index with the most
    followers (ties broken by id). When ``followers`` is ``None`` or has no value for any of
    them, the head is ranked by ``past_exposure`` instead. A creator without a follower count
    (cold start) counts as 0 followers, i.e. long tail.

    Parameters
    ----------
    exposure
        Exposure per creator over the eligible population (see :func:`exposure_by`).
    followers, past_exposure
        Series indexed by creator id.
    head_fraction
        Share of creators in the head, 0.2 in the contract.

    Examples
    --------
    >>> exp = pd.Series({"a": 3.0, "b": 1.0, "c": 0.0, "d": 0.0, "e": 1.0})
    >>> long_tail_share(exp, followers=pd.Series({"a": 900, "b": 5, "c": 1, "d": 2, "e": 0}))
    0.4
    """
    if not 0.0 < head_fraction < 1.0:
        raise ConfigError(f"head_fraction: expected a value in (0, 1), got {head_fraction!r}")
    total = float(exposure.sum())
    if len(exposure) == 0 or total <= 0.0:
        return 0.0
    size = None
    if followers is not None:
        aligned = pd.to_numeric(followers.reindex(exposure.index), errors="coerce")
        if aligned.notna().any():
            size = aligned.fillna(0.0)
    if size is None:
        if past_exposure is None:
            raise ConfigError("long_tail_share: no follower counts; pass past_exposure to rank the head")
        size = pd.to_numeric(past_exposure.reindex(exposure.index), errors="coerce").fillna(0.0)
    n_head = int(np.ceil(head_fraction * len(exposure)))
    ranking = pd.DataFrame(
        {"size": size.to_numpy(np.float64), "id": exposure.index.astype(str)}
    ).sort_values(["size", "id"], ascending=[False, True], kind="mergesort")
    head = np.zeros(len(exposure), dtype=bool)
    head[ranking.index.to_numpy()[:n_head]] = True
    return float(exposure.to_numpy(np.float64)[~head].sum() / total)


def creator_coverage(exposure: pd.Series) -> float:
    """Share of the eligible creators that received any exposure.

    Examples
    --------
    >>> creator_coverage(pd.Series({"a": 1.0, "b": 0.0}))
    0.5
    """
    if len(exposure) == 0:
        return 0.0
    return float((exposure.to_numpy(np.float64) > 0.0).mean())


def exposure_weighted_mean(
    ranked: pd.DataFrame,
    value_col: str,
    *,
    k: int | None = None,
    kind: str = "log2",
    patience: float = 0.8,
    position_col: str = "position",
) -> float:
    """Mean of ``value_col`` over served items, each weighted by its position exposure.

    Rows whose value is missing are left out of both sums. NaN when nothing was exposed.
    """
    _require(ranked, [value_col])
    exposure = _item_exposure(ranked, position_col, k, kind, patience)
    values = pd.to_numeric(ranked[value_col], errors="coerce").to_numpy(np.float64)
    known = np.isfinite(values)
    weight = exposure[known].sum()
    if weight <= 0.0:
        return float("nan")
    return float(exposure[known] @ values[known] / weight)


def exposure_weighted_trust(ranked: pd.DataFrame, trust_col: str = "trust", **kwargs: Any) -> float:
    """Exposure-weighted mean trust of what was shown (higher = users saw trustworthier shops).

    Examples
    --------
    >>> lists = pd.DataFrame({"request_id": ["a", "a"], "position": [1, 3], "trust": [1.0, 0.0]})
    >>> round(exposure_weighted_trust(lists), 3)
    0.667
    """
    return exposure_weighted_mean(ranked, trust_col, **kwargs)


def bad_order_exposure(ranked: pd.DataFrame, bad_col: str = "p_bad", **kwargs: Any) -> float:
    """Exposure-weighted mean bad-order probability (or rate) of what was shown.

    ``bad_col`` is a per-item probability that an order from it goes bad (the simulator's
    ``p_bad``) or a 0/1 flag, or the merchant's observed bad-order rate: the metric is the share
    of exposure that leads to bad orders, lower is better.
    """
    return exposure_weighted_mean(ranked, bad_col, **kwargs)


# --------------------------------------------------------------------------- NDCG


def ndcg_at_k(labels_in_rank_order: ArrayLike, k: int) -> float:
    """NDCG@k of one list; NaN when the list has no positive label (the contract skips it).

    Gain ``2**label - 1``, discount ``log2(p + 1)``; the ideal ordering is taken over every
    label of the list, not only the first k.

    Examples
    --------
    >>> round(ndcg_at_k([0, 1], k=2), 4)
    0.6309
    >>> ndcg_at_k([0, 0], k=2)
    nan
    """
    if k < 1:
        raise ConfigError(f"k: expected an integer >= 1, got {k!r}")
    labels = np.asarray(labels_in_rank_order, dtype=np.float64)
    if labels.size == 0 or not (labels > 0).any():
        return float("nan")
    gains = np.power(2.0, labels) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, labels.size + 2, dtype=np.float64))
    top = min(k, labels.size)
    dcg = gains[:top] @ discounts[:top]
    ideal = np.sort(gains)[::-1][:top] @ discounts[:top]
    return float(dcg / ideal)


@dataclass(frozen=True, eq=False)  # holds a Series: compare fields explicitly
class NdcgResult:
    """Mean NDCG@k over lists, with how many lists were skipped for having no positive label."""

    k: int
    mean: float
    n_lists: int
    n_scored: int
    n_skipped: int
    per_list: pd.Series

    def to_dict(self) -> dict[str, float | int]:
        return {"k": self.k, "mean": self.mean, "n_lists": self.n_lists,
                "n_scored": self.n_scored, "n_skipped": self.n_skipped}


def mean_ndcg(
    ranked: pd.DataFrame,
    k: int = 10,
    *,
    label_col: str = "label",
    request_col: str = "request_id",
    position_col: str = "position",
) -> NdcgResult:
    """NDCG@k of every list in a long frame and their mean over lists with a positive label.

    Parameters
    ----------
    ranked
        One row per (request, item): ``request_col``, ``position_col`` (the order the ranker
        chose, 1 = top; only the order within a request matters) and ``label_col``.
    k
        Cut-off.

    Returns
    -------
    NdcgResult
        ``mean`` over scored lists (NaN if none), ``n_skipped`` lists with no positive label,
        ``per_list`` NDCG per request (NaN for skipped ones).

    Examples
    --------
    >>> lists = pd.DataFrame({"request_id": ["a", "a", "b", "b"], "position": [1, 2, 1, 2],
    ...                       "label": [0, 1, 0, 0]})
    >>> res = mean_ndcg(lists, k=2)
    >>> round(res.mean, 4), res.n_scored, res.n_skipped
    (0.6309, 1, 1)
    """
    if k < 1:
        raise ConfigError(f"k: expected an integer >= 1, got {k!r}")
    _require(ranked, [label_col, request_col, position_col])
    labels = pd.to_numeric(ranked[label_col], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(labels).all():
        raise SchemaError("ranked lists", label_col, "finite graded labels", "missing values")
    frame = pd.DataFrame(
        {
            "request": ranked[request_col].to_numpy(),
            "position": ranked[position_col].to_numpy(np.float64),
            "gain": np.power(2.0, labels) - 1.0,
        }
    )
    # served rank within each request, then the ideal rank of each gain within its request
    frame = frame.sort_values(["request", "position"], kind="mergesort")
    rank = frame.groupby("request", sort=False).cumcount().to_numpy() + 1
    discount = np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)
    frame["dcg"] = frame["gain"].to_numpy() * discount
    ideal = frame.sort_values(["request", "gain"], ascending=[True, False], kind="mergesort")
    ideal_rank = ideal.groupby("request", sort=False).cumcount().to_numpy() + 1
    ideal_discount = np.where(ideal_rank <= k, 1.0 / np.log2(ideal_rank + 1.0), 0.0)
    frame.loc[ideal.index, "idcg"] = ideal["gain"].to_numpy() * ideal_discount
    sums = frame.groupby("request", sort=True)[["dcg", "idcg"]].sum()
    scored = sums["idcg"] > 0.0
    per_list = (sums["dcg"] / sums["idcg"]).where(scored)
    per_list.index.name = request_col
    n_scored = int(scored.sum())
    return NdcgResult(
        k=k,
        mean=float(per_list[scored].mean()) if n_scored else float("nan"),
        n_lists=int(len(sums)),
        n_scored=n_scored,
        n_skipped=int(len(sums) - n_scored),
        per_list=per_list.rename(f"ndcg@{k}"),
    )


# --------------------------------------------------------------------------- Kendall tau


def kendall_tau(order: ArrayLike, base_order: ArrayLike) -> float:
    """Kendall tau-b between two rankings of the same items.

    ``order[i]`` and ``base_order[i]`` are item i's rank (or score: only the order matters)
    under the served and the base ranking. 1 = same order, -1 = reversed; NaN with fewer than
    two items or when one ranking ties everything.

    Examples
    --------
    >>> kendall_tau([1, 2, 3], [1, 2, 3]), kendall_tau([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    frame = pd.DataFrame({"request_id": 0, "position": np.asarray(order, dtype=np.float64),
                          "base": np.asarray(base_order, dtype=np.float64)})
    taus = _kendall_by_request(frame, "request_id", "position", "base")
    return float(taus.iloc[0]) if len(taus) else float("nan")


def _kendall_by_request(frame: pd.DataFrame, request_col: str, x_col: str, y_col: str) -> pd.Series:
    codes, uniques = pd.factorize(frame[request_col], sort=True)
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    x = frame[x_col].to_numpy(np.float64)[order]
    y = frame[y_col].to_numpy(np.float64)[order]
    sizes = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    local = np.arange(codes.size) - starts[codes]
    # every pair (a, b), a < b, inside one request: element a is repeated once per later partner.
    # Memory is O(sum of n^2 / 2) pairs: fine for feed-sized lists (tens to hundreds of items).
    partners = sizes[codes] - 1 - local
    first = np.repeat(np.arange(codes.size), partners)
    block_start = np.concatenate(([0], np.cumsum(partners)[:-1]))
    second = first + 1 + (np.arange(first.size) - np.repeat(block_start, partners))
    pair_group = codes[first]
    dx = np.sign(x[second] - x[first])
    dy = np.sign(y[second] - y[first])
    n_groups = len(uniques)
    concordance = np.bincount(pair_group, weights=dx * dy, minlength=n_groups)
    untied_x = np.bincount(pair_group, weights=(dx != 0).astype(np.float64), minlength=n_groups)
    untied_y = np.bincount(pair_group, weights=(dy != 0).astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = concordance / np.sqrt(untied_x * untied_y)
    tau[(untied_x == 0) | (untied_y == 0)] = np.nan
    return pd.Series(tau, index=pd.Index(uniques, name=request_col), name="kendall_tau")


def mean_kendall_tau(
    ranked: pd.DataFrame,
    base_col: str = "base_position",
    *,
    request_col: str = "request_id",
    position_col: str = "position",
) -> float:
    """Mean Kendall tau-b per request between the served and the base positions.

    Measures how far a re-ranker (balancer, policy) moved lists away from the base (relevance)
    order: 1 = untouched. Requests with fewer than two items are left out.

    Examples
    --------
    >>> lists = pd.DataFrame({"request_id": ["a"] * 3, "position": [1, 2, 3],
    ...                       "base_position": [2, 1, 3]})
    >>> round(mean_kendall_tau(lists), 4)
    0.3333
    """
    _require(ranked, [request_col, position_col, base_col])
    if ranked.empty:
        return float("nan")
    taus = _kendall_by_request(ranked, request_col, position_col, base_col)
    return float(taus.mean()) if taus.notna().any() else float("nan")


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class ExposureSummary:
    """Creator-exposure fairness of a set of ranked lists."""

    gini: float
    long_tail_share: float
    coverage: float
    n_creators: int
    total_exposure: float

    def to_dict(self) -> dict[str, float | int]:
        return {"gini": self.gini, "long_tail_share": self.long_tail_share,
                "coverage": self.coverage, "n_creators": self.n_creators,
                "total_exposure": self.total_exposure}


def exposure_summary(
    ranked: pd.DataFrame,
    population: Iterable[Any],
    *,
    followers: pd.Series | None = None,
    past_exposure: pd.Series | None = None,
    key: str = "creator_id",
    k: int | None = None,
    kind: str = "log2",
    patience: float = 0.8,
) -> ExposureSummary:
    """Gini, long-tail share and coverage of creator exposure over the eligible population.

    Examples
    --------
    >>> lists = pd.DataFrame({"request_id": ["a", "a"], "position": [1, 2],
    ...                       "creator_id": ["x", "y"]})
    >>> s = exposure_summary(lists, ["x", "y", "z", "w"], past_exposure=pd.Series({"x": 9.0}))
    >>> s.n_creators, s.coverage
    (4, 0.5)
    """
    exposure = exposure_by(ranked, key, population=population, k=k, kind=kind, patience=patience)
    return ExposureSummary(
        gini=gini(exposure.to_numpy()),
        long_tail_share=long_tail_share(exposure, followers, past_exposure)
        if followers is not None or past_exposure is not None
        else float("nan"),
        coverage=creator_coverage(exposure),
        n_creators=int(len(exposure)),
        total_exposure=float(exposure.sum()),
    )
