"""Comparing two trust snapshots: same rows and columns, floats to summation order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from trustfeed.features.trust import TrustSnapshot


def assert_same_snapshot(a: TrustSnapshot, b: TrustSnapshot) -> None:
    """Same rows, columns and values (floats to summation order, everything else exactly)."""
    for name, x, y in (("merchants", a.merchants, b.merchants), ("creators", a.creators, b.creators),
                       ("users", a.extras["users"], b.extras["users"])):
        assert list(x.columns) == list(y.columns), name
        assert len(x) == len(y), name
        for column in x.columns:
            if pd.api.types.is_float_dtype(x[column]):
                ok = np.allclose(x[column].to_numpy(float), y[column].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)
                assert ok, f"{name}.{column}"
            else:
                assert x[column].equals(y[column]), f"{name}.{column}"
