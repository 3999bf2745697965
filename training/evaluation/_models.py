"""The models an evaluation compares, and their pipelines rebuilt as of a point in time.

Shared by the static evaluation, the training job (which evaluates the pipeline it just
trained) and anything else that ranks with a trained bundle and its plain LambdaMART.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ...features.events import EventLog
    from ...features.history import ContextTables
    from ...features.trust import TrustSnapshot
    from ...ranker.lambdamart import LambdaMART
    from ...ranker.pipeline import RankingPipeline

__all__ = ["EVALUATION_DIR", "PLAIN_MODEL_DIR", "load_models_for_evaluation", "pipelines_as_of"]

# beside the bundle in a training job's output (and in its MLflow run): the plain LambdaMART
# (no trust features) and the static evaluation of the held-out window
PLAIN_MODEL_DIR = "plain_model"
EVALUATION_DIR = "evaluation"


def load_models_for_evaluation(
    model_uri: str, tracking_uri: str | None = None, *, verify_key: str | os.PathLike[str] | None = None
) -> tuple[RankingPipeline, LambdaMART | None]:
    """The served pipeline of ``model_uri`` and its plain LambdaMART (``None`` if absent).

    The plain model sits beside the bundle: ``plain_model/`` next to ``bundle/`` in a
    training job's local output, ``artifacts/plain_model`` in the MLflow model. With
    ``verify_key`` the bundle must carry a signature by that key (the plain model is not
    covered by it: it is only the comparison arm).
    """
    from ...ranker.bundle import load_bundle
    from ...ranker.lambdamart import LambdaMART
    from ...serving._resolve import local_model_dir

    from ..registry import resolve_tracking_uri, tracking_uri_set_to

    uri = resolve_tracking_uri(tracking_uri)
    with tracking_uri_set_to(uri), local_model_dir(model_uri, tracking_uri=uri) as bundle_dir:
        pipeline = load_bundle(bundle_dir, verify_key=verify_key)
        plain_dir = bundle_dir.parent / PLAIN_MODEL_DIR
        plain = LambdaMART.load(plain_dir) if (plain_dir / "model.txt").is_file() else None
    return pipeline, plain


def pipelines_as_of(
    served: RankingPipeline, plain: LambdaMART | None, events: EventLog, as_of: pd.Timestamp,
    *, tables: tuple[TrustSnapshot, ContextTables] | None = None,
) -> tuple[RankingPipeline, RankingPipeline | None]:
    """Evaluation pipelines with trust and context rebuilt as of ``as_of`` from ``events``.

    The bundle's own snapshot is as of the end of its training data, which for a held-out
    window inside that data would leak the outcomes being predicted; the model, feature
    layout, policy and balancer settings are the bundle's. ``tables``: the trust snapshot
    and context tables as of ``as_of``, already built with the bundle's trust and history
    settings (the training job builds them while its models train); ``None``: built here.
    """
    from ...ranker.balancer import ExposureBalancer
    from ...ranker.pipeline import RankingPipeline
    from ...ranker.policy import PolicyConfig

    balancer = ExposureBalancer(served.balancer.config) if served.balancer is not None else None
    if tables is None:
        pipeline = served.rebuilt_as_of(events, as_of, balancer=balancer)
    else:
        pipeline = RankingPipeline.from_tables(tables[0], tables[1], served.model, served.policy, balancer,
                                               schema=served.assembler.schema(), model_id=served.model_id,
                                               purchase_model=served.purchase_model)
    plain_pipeline = None
    if plain is not None:
        plain_pipeline = RankingPipeline.from_tables(
            pipeline.snapshot, pipeline.context, plain,
            # the same hard rules as the served pipeline: a ban is a platform decision every
            # ranker must respect, so the comparison isolates trust features and trust in the score
            PolicyConfig(trust_weight=0.0, filter_banned=served.policy.config.filter_banned), None,
            schema=plain.feature_schema_,
        )
    return pipeline, plain_pipeline
