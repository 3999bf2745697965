"""The one place where the pandas and Dask backends differ: grouped sums.

Every heavy per-table reduction of the trust builders is a grouped sum of numeric columns
over dense integer codes (merchants, creators, users are factorised once up front; counts
are sums of a column of ones, rates are ratios of two sums). The builders derive their
per-row columns with vectorised numpy and hand the reduction to an :class:`Aggregator`:
the pandas backend runs ``np.bincount`` in process, the Dask backend runs the same
reduction as a partition-wise ``groupby().sum()`` (a tree reduction, so memory stays
bounded by a partition plus the number of groups). Both return dense arrays indexed by
code, so the rest of the code path is shared.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = ["Aggregator", "DaskAggregator", "make_aggregator"]


class Aggregator:
    """Grouped sums over integer codes with numpy (the pandas backend)."""

    name = "pandas"

    def sum(self, keys: np.ndarray, size: int, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-code sums of each column: ``out[name][k] = sum(values[keys == k])``.

        Rows whose key is negative (unknown or null ids) are dropped.
        """
        keys = np.asarray(keys)
        valid = keys >= 0
        return self._sum(keys, valid, int(size), columns)

    def _sum(
        self, keys: np.ndarray, valid: np.ndarray, size: int, columns: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        all_valid = bool(valid.all())
        kept = keys if all_valid else keys[valid]
        kept = kept.astype("int64", copy=False)
        out: dict[str, np.ndarray] = {}
        # One column at a time: a lazy mapping materialises each column only here.
        for name in columns:
            values = np.asarray(columns[name], dtype="float64")
            if values.ndim == 0:
                values = np.full(len(keys), float(values))
            if not all_valid:
                values = values[valid]
            # bincount returns integers for empty input: force one dtype for both backends
            out[name] = np.bincount(kept, weights=values, minlength=size)[:size].astype("float64")
        return out


class DaskAggregator(Aggregator):
    """Grouped sums with ``dask.dataframe`` over up to ``npartitions`` partitions."""

    name = "dask"

    def __init__(self, npartitions: int = 4, rows_per_partition: int = 1_000_000) -> None:
        self.npartitions = npartitions
        self.rows_per_partition = rows_per_partition

    def _sum(
        self, keys: np.ndarray, valid: np.ndarray, size: int, columns: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        import dask
        import dask.dataframe as dd

        names = list(columns)
        keys = keys[valid].astype("int64", copy=False)
        if len(keys) == 0 or not names:
            return {name: np.zeros(size) for name in names}
        data = {"key": keys}
        for name in names:
            values = np.asarray(columns[name], dtype="float64")
            data[name] = np.full(len(keys), float(values)) if values.ndim == 0 else values[valid]
        frame = pd.DataFrame(data)
        parts = max(1, min(self.npartitions, len(frame) // self.rows_per_partition + 1))
        distributed = dd.from_pandas(frame, npartitions=parts, sort=False)
        result = distributed.groupby("key")[names].sum()
        # The threaded scheduler shares memory with the caller; processes would copy the frame.
        with dask.config.set(scheduler="threads"):
            out = result.compute()
        dense = out.reindex(pd.RangeIndex(size), fill_value=0.0)
        return {name: dense[name].to_numpy(dtype="float64") for name in names}


def make_aggregator(backend: str) -> Aggregator:
    """The aggregator of ``backend`` ("pandas" or "dask")."""
    if backend == "pandas":
        return Aggregator()
    if backend == "dask":
        try:
            import dask.dataframe  # noqa: F401
        except ImportError as error:  # pragma: no cover - dask is a test dependency
            raise ConfigError("backend='dask' needs dask[dataframe]: pip install 'trustfeed[dask]'") from error
        return DaskAggregator()
    raise ConfigError(f"backend: expected 'pandas' or 'dask', got {backend!r}")
