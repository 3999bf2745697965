"""Offline jobs: the platform simulator, training data, MLflow-tracked training, evaluation.

Names are loaded on first use, so ``import trustfeed.training`` (and the ``trustfeed``
command's ``--help``) does not pay for importing MLflow. The functions ``simulate`` and ``train``
share their names with their modules, so they are not re-exported here (the
package attribute would then depend on import order): use
``from trustfeed.training.train import train``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SimConfig": "simulate",
    "SimulatedPlatform": "simulate",
    "write_dataset": "simulate",
    "load_truth": "simulate",
    "expected_outcomes": "simulate",
    "DatasetConfig": "dataset",
    "TrainingFrame": "dataset",
    "build_training_frame": "dataset",
    "graded_labels": "dataset",
    "TrainJobConfig": "train",
    "TrainResult": "train",
    "EvalConfig": "evaluation",
    "EvalResult": "evaluation",
    "PromotionDecision": "registry",
    "promote": "registry",
    "DemoResult": "demo",
    "run_demo": "demo",
    "load_olist": "olist",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
