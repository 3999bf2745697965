"""Serving tables for a model from a trust snapshot and the event log (``trustfeed features --serving-tables``).

The memory-mapped tables of :mod:`._mapped_tables` hold what a request reads: the snapshot's
per-merchant and per-creator features and the users' history, laid out as the model expects.
This module builds them the way training built the model's own tables: the history with the
model's context settings, the features with the model's feature layout, both taken from the
(verified) model bundle.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..features.context import FeatureAssembler
from ..features.history import build_context_tables
from ..ranker.pipeline import RankingPipeline
from ._feed_ranker import _load_pipeline
from ._mapped_tables import write_mapped_tables

if TYPE_CHECKING:
    from ..features.events import EventLog, TimeLike
    from ..features.progress import Progress
    from ..features.trust import TrustSnapshot

__all__ = ["build_serving_tables"]


def build_serving_tables(
    model: str | os.PathLike[str] | RankingPipeline,
    snapshot: TrustSnapshot,
    events: EventLog,
    out: str | os.PathLike[str],
    *,
    as_of: TimeLike | None = None,
    tracking_uri: str | None = None,
    verify_key: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> str:
    """Write memory-mapped serving tables for ``model_uri`` from a snapshot and its events.

    Parameters
    ----------
    model
        The model the tables are for: a URI as :meth:`FeedRanker.load` takes it (the bundle is
        verified as for serving), or a loaded pipeline. It gives the feature layout and the
        history settings.
    snapshot
        The trust snapshot (e.g. the one ``trustfeed features`` just built).
    events
        The event log the user history is built from (only events before ``as_of`` count).
    out
        The directory to write (replaced atomically; an earlier one is replaced, a directory
        trustfeed did not write never is).
    as_of
        Cut of the user history (default: the snapshot's ``as_of``).
    tracking_uri, verify_key
        As for :meth:`FeedRanker.load`.

    Returns
    -------
    str
        The tables' digest (the ``+tables-<digest>`` part of a response's ``model`` field
        starts with it).
    """
    from ..features.progress import NullProgress

    progress = progress or NullProgress()
    pipeline = model if isinstance(model, RankingPipeline) else _load_pipeline(model, None, tracking_uri, verify_key)
    context_config = pipeline.context.config if pipeline.context is not None else None
    cut = snapshot.as_of if as_of is None else as_of
    progress("serving tables: user history")
    context = build_context_tables(events, cut, config=context_config)
    progress("serving tables: features")
    assembler = FeatureAssembler(snapshot, context, schema=pipeline.assembler.schema())
    del pipeline, context
    progress("serving tables: writing")
    return write_mapped_tables(assembler, out, force=force)
