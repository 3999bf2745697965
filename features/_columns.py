"""Small column helpers shared by the history tables and the feature assembler (ids as strings,
flags as bools, optional columns, Arrow-hashed membership)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _column(frame: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """``frame[name]``, or a column of ``default`` when an optional column is absent."""
    if name in frame.columns:
        return frame[name]
    return pd.Series(default, index=frame.index, dtype=object if default is None else None)


def _bool(series: pd.Series) -> np.ndarray:
    # copy=True: without nulls, pandas may hand back a view of the event table's own
    # buffer, and callers update the result in place
    return series.astype("boolean").fillna(False).to_numpy(dtype=bool, copy=True)


def _ids(series: pd.Series) -> pd.Series:
    return series.astype("string")


def _isin(values: pd.Series, among: pd.Series | pd.Index) -> np.ndarray:
    """``values.isin(among)`` for id columns, hashed by Arrow (missing values never match).

    pandas' own ``isin`` on Arrow-backed strings converts ``among`` one element at a time
    (seconds for the hundreds of thousands of order ids of a snapshot).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(_ids(pd.Series(among)).dropna().array, type=pa.large_string())
    found = pc.is_in(pa.array(_ids(values).array, type=pa.large_string()), value_set=wanted, skip_nulls=True)
    return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)


def _object_values(series: pd.Series) -> np.ndarray:
    """Values as an object array with missing values as ``None`` (unknown to the id lookups)."""
    # pandas accepts na_value=None; pandas-stubs' Scalar type leaves None out
    return series.to_numpy(dtype=object, na_value=None)  # type: ignore[call-overload]


def _positions(index: pd.Index, values: np.ndarray) -> np.ndarray:
    """``index.get_indexer(values)``: position of each value, ``-1`` when absent."""
    # get_indexer takes any array-like at runtime; pandas-stubs accept only an Index
    return index.get_indexer(values)  # type: ignore[arg-type]


def _as_float(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(dtype="float64", na_value=np.nan)


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``starts[i], starts[i] + 1, ..., starts[i] + sizes[i] - 1`` for every ``i``, concatenated (int64).

    >>> _ranges(np.array([5, 0]), np.array([2, 3])).tolist()
    [5, 6, 0, 1, 2]
    """
    starts, sizes = np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
    return np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()), dtype=np.int64)
