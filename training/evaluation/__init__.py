"""Evaluation of trained rankers, kept apart from the training job that produces them.

- :mod:`~trustfeed.training.evaluation.static`: the one-shot offline evaluation of held-out
  feed requests (``trustfeed evaluate``; the training job calls :func:`evaluate_pipeline`);
- :mod:`~trustfeed.training.evaluation.report`: the self-contained HTML report;
- the models an evaluation compares and their pipelines rebuilt as of a time
  (:func:`load_models_for_evaluation`, :func:`pipelines_as_of`);
- :mod:`~trustfeed.training.evaluation.policies`: the registry of ranking policies
  (:data:`POLICIES`) that evaluations compare;
- :mod:`~trustfeed.training.evaluation.rollout`: the closed-loop evaluation
  (:func:`run_rollout`, ``trustfeed rollout``) on the simulated platform of
  :mod:`trustfeed.training.world`;
- :mod:`~trustfeed.training.evaluation.rollout_report`: what ``trustfeed rollout`` writes
  (``rollout.json``, the ``rollout.html`` page) and its headline against the plain model
  (:func:`evaluate_rollout`, :func:`rollout_headline`).

Nothing here imports the training job (:mod:`trustfeed.training.train`); it calls these
public functions.
"""

from __future__ import annotations

from typing import Any

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
    "POLICIES",
    "PolicyContext",
    "PolicySpec",
    "RolloutResult",
    "run_rollout",
    "RolloutOutput",
    "evaluate_rollout",
    "rollout_headline",
    "write_rollout",
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


def __getattr__(name: str) -> Any:
    # the closed loop (world, registry, rollout) loads on first use (PEP 562)
    if name in ("POLICIES", "PolicyContext", "PolicySpec"):
        from . import policies

        return getattr(policies, name)
    if name in ("RolloutResult", "run_rollout"):
        from . import rollout

        return getattr(rollout, name)
    if name in ("RolloutOutput", "evaluate_rollout", "rollout_headline", "write_rollout"):
        from . import rollout_report

        return getattr(rollout_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
