"""Evaluation of trained rankers, kept apart from the training job that produces them.

- :mod:`~trustfeed.training.evaluation.static`: the one-shot offline evaluation of held-out
  feed requests (``trustfeed evaluate``; the training job calls :func:`evaluate_pipeline`);
- :mod:`~trustfeed.training.evaluation.report`: the self-contained HTML report;
- the models an evaluation compares and their pipelines rebuilt as of a time
  (:func:`load_models_for_evaluation`, :func:`pipelines_as_of`).

Nothing here imports the training job (:mod:`trustfeed.training.train`); it calls these
public functions.
"""

from __future__ import annotations

from ._models import EVALUATION_DIR, PLAIN_MODEL_DIR, load_models_for_evaluation, pipelines_as_of
from .report import ReportContent, render_report
from .static import (
    POLICY_LABELS,
    EvalConfig,
    EvalResult,
    Evaluation,
    evaluate,
    evaluate_pipeline,
    held_out_window,
    requests_from_impressions,
    write_evaluation,
)

__all__ = [
    "EVALUATION_DIR",
    "PLAIN_MODEL_DIR",
    "POLICY_LABELS",
    "EvalConfig",
    "EvalResult",
    "Evaluation",
    "ReportContent",
    "evaluate",
    "evaluate_pipeline",
    "held_out_window",
    "load_models_for_evaluation",
    "pipelines_as_of",
    "render_report",
    "requests_from_impressions",
    "write_evaluation",
]
