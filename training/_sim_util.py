"""Vectorised sampling and column-building helpers of the platform simulator.

Everything here works on whole numpy arrays: the simulator never loops over rows,
merchants, users or orders. Times are float seconds relative to the simulation start
(``NaN`` = never happened / not yet known) until they are turned into UTC columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

HOUR = 3600.0
DAY = 86400.0


def stage_rng(seed: int, stage: int) -> np.random.Generator:
    """An independent generator per simulation stage.

    Separate streams keep a change in one stage (say, more reviews) from shifting the
    random numbers every later stage sees, so tables stay comparable across versions.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, stage]))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def sorted_search(cum: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``np.searchsorted(cum, target, side="right")``, faster for many random targets.

    Searching the targets in ascending order lets numpy start each search where the last
    ended; that, plus the sort, costs about half of millions of cache-missing binary searches.
    """
    order = np.argsort(target)
    pos = np.empty(len(target), dtype=np.int64)
    pos[order] = np.searchsorted(cum, target[order], side="right")
    return pos


def flat_weighted_draw(weight: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn with probability proportional to ``weight`` (``u`` uniform in [0, 1))."""
    cum = np.cumsum(weight, dtype=np.float64)
    pos = sorted_search(cum, u * cum[-1])
    return np.minimum(pos, len(weight) - 1)


def grouped_weighted_draw(
    item_group: np.ndarray,
    item_weight: np.ndarray,
    n_groups: int,
    query_group: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """For each query, an item of the query's group drawn proportionally to its weight.

    Returns item indices, ``-1`` where the query's group has no item with positive weight.
    One global cumulative sum over the items sorted by group replaces a loop over groups, so
    weights are resolved to the float64 precision of that running sum (a weight below about
    1e-16 of the running total counts as zero).
    """
    order = np.argsort(item_group, kind="stable")
    group_sorted = item_group[order]
    cum = np.cumsum(item_weight[order], dtype=np.float64)
    groups = np.arange(n_groups)
    starts = np.searchsorted(group_sorted, groups, side="left")
    ends = np.searchsorted(group_sorted, groups, side="right")
    cum0 = np.concatenate(([0.0], cum))
    before = cum0[starts]
    total = cum0[ends] - before
    q_start, q_end = starts[query_group], ends[query_group]
    q_total = total[query_group]
    target = before[query_group] + u * q_total
    pos = sorted_search(cum, target)
    pos = np.clip(pos, q_start, np.maximum(q_end - 1, q_start))
    found = (q_total > 0) & (q_end > q_start)
    result = np.full(len(query_group), -1, dtype=np.int64)
    result[found] = order[pos[found]]
    return result


def categorical(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Category index per row from row-wise (or one shared) probability vectors."""
    probs = np.asarray(probs, dtype=np.float64)
    cum = np.cumsum(probs, axis=-1)
    cum = cum / cum[..., -1:]
    if cum.ndim == 1:
        return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)
    return np.minimum((u[:, None] >= cum).sum(axis=1), cum.shape[1] - 1)


def rank_within_sorted(group_sorted: np.ndarray) -> np.ndarray:
    """0-based rank of each row inside its run of equal ``group_sorted`` values."""
    n = len(group_sorted)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.flatnonzero(group_sorted[1:] != group_sorted[:-1]) + 1
    starts = np.concatenate(([0], boundary))
    lengths = np.diff(np.concatenate((starts, [n])))
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def order_within_sorted_groups(group_sorted: np.ndarray, key: np.ndarray, width: int) -> np.ndarray:
    """The permutation ``np.lexsort((key, group_sorted))`` for short runs of a sorted group.

    Each run (at most ``width`` rows) becomes a padded matrix row sorted on its own, which
    is much cheaper than a global two-key sort when runs are short (feed slates).
    """
    n = len(group_sorted)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    run = np.cumsum(np.concatenate(([0], group_sorted[1:] != group_sorted[:-1])))
    rank = rank_within_sorted(group_sorted)
    n_runs = int(run[-1]) + 1
    keys = np.full((n_runs, width), np.inf)
    keys[run, rank] = key
    rows = np.full((n_runs, width), -1, dtype=np.int64)
    rows[run, rank] = np.arange(n)
    # Padding sorts last (inf, and after any real inf because the sort is stable).
    ordered = np.take_along_axis(rows, np.argsort(keys, axis=1, kind="stable"), axis=1).ravel()
    return ordered[ordered >= 0]


def id_array(prefix: str, numbers: np.ndarray) -> pa.Array:
    """String ids ``<prefix><number>`` built in Arrow (fast for tens of millions of rows)."""
    # large_string is what pandas' pyarrow string dtype stores: building it directly saves a cast.
    digits = pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.large_string())
    return pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), digits, pa.scalar("", pa.large_string()))


def take_ids(ids: pa.Array, index: np.ndarray) -> pa.Array:
    """``ids[index]`` with ``index < 0`` as null."""
    index = np.asarray(index, dtype=np.int64)
    missing = index < 0
    if missing.any():
        return ids.take(pa.array(np.where(missing, 0, index), mask=missing))
    return ids.take(pa.array(index))


def id_column(ids: pa.Array) -> pd.Series:
    return pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array([ids]) if isinstance(ids, pa.Array) else ids))


def time_column(seconds: np.ndarray, start_ns: int) -> pd.Series:
    """UTC timestamps from float seconds after the start (``NaN`` -> ``NaT``).

    Seconds are floored so that ``a <= b`` still holds after conversion.
    """
    seconds = np.asarray(seconds, dtype=np.float64)
    missing = ~np.isfinite(seconds)
    ns = start_ns + np.floor(np.where(missing, 0.0, seconds)).astype(np.int64) * 1_000_000_000
    ns[missing] = np.iinfo(np.int64).min
    return pd.Series(pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC"))


def enum_column(codes: np.ndarray, categories: tuple[str, ...]) -> pd.Series:
    return pd.Series(pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64), categories=pd.Index(categories)))


def bool_column(values: np.ndarray, missing: np.ndarray | None = None) -> pd.Series:
    values = np.asarray(values, dtype=bool)
    mask = np.zeros(len(values), dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    return pd.Series(pd.arrays.BooleanArray(values, mask))


def int_column(values: np.ndarray, missing: np.ndarray | None = None) -> pd.Series:
    values = np.asarray(values, dtype=np.int64)
    if missing is None:
        return pd.Series(values)
    return pd.Series(pd.arrays.IntegerArray(values, np.asarray(missing, dtype=bool)))


def text_column(codes: np.ndarray, labels: tuple[str, ...]) -> pd.Series:
    """Free-text column from codes into ``labels`` (``-1`` -> null)."""
    table = pa.array(list(labels), pa.large_string())
    return id_column(take_ids(table, codes))
