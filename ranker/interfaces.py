"""What the ranking pipeline needs from its parts, typed by behaviour (:class:`typing.Protocol`).

:class:`~trustfeed.ranker.pipeline.RankingPipeline` is written against these, not against
concrete classes: the LambdaMART model and its compiled form are both a :class:`Scorer`, the
feature assembler is a :class:`FeatureSource`, the exposure balancer is a :class:`Reranker`.
Anything with the same methods can take their place (a test double, another model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike
import pandas as pd

__all__ = ["FeatureSource", "Reranker", "Scorer"]


class Scorer(Protocol):
    """Scores feature rows: a relevance per row, higher is better."""

    @property
    def feature_names_(self) -> tuple[str, ...]:
        """The feature columns :meth:`predict` reads, in order."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """One relevance score per row of ``X``."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model (its own explicit format) into the directory ``path``."""
        ...


class FeatureSource(Protocol):
    """Turns candidates into the feature matrix a :class:`Scorer` reads."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The feature columns of :meth:`transform_with_status`, in order."""
        ...

    def schema(self) -> dict[str, Any]:
        """The feature layout, saved beside the model and reproduced at load time."""
        ...

    def transform_with_status(self, candidates: pd.DataFrame | Mapping[str, Any]) -> tuple[np.ndarray, Any]:
        """The feature matrix of the candidates and each candidate's merchant status (bans)."""
        ...


class Reranker(Protocol):
    """Re-orders one request's scored candidates and remembers what was shown."""

    @property
    def config(self) -> Any:
        """Its settings (``record_k``: how many items count as shown when a request has no ``k``)."""
        ...

    def rerank(
        self,
        creator_ids: Sequence[str],
        merchant_ids: Sequence[str],
        relevance: ArrayLike,
        trust: ArrayLike,
        *,
        now: float | None = None,
        record: bool | None = None,
    ) -> np.ndarray:
        """The order (indices, best first) in which to show the candidates."""
        ...

    def record(
        self, creator_ids: Sequence[str], merchant_ids: Sequence[str], positions: ArrayLike, *, now: float | None = None
    ) -> None:
        """Record the shown items (1-based positions) in its exposure ledger."""
        ...

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        """Add logged impressions (what users really saw) to its exposure ledger."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Its state, JSON-able (saved in the bundle)."""
        ...
