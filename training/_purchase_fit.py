"""The purchase model's fit as the training job records it, shared by both backends.

The in-process job (:func:`~trustfeed.training.train.fit_purchase_model`) and the Dask driver
(:mod:`~trustfeed.training._dask_training`) hand the model different rows (the whole frame, or
rows gathered from the workers), but skip it for the same reasons and log the same figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..features.errors import SchemaError
from ..features.progress import Progress
from ..ranker.purchase import PurchaseModel

__all__ = ["fit_or_skip"]


def fit_or_skip(
    fit: Callable[[], PurchaseModel], purchases: tuple[int, int], min_purchases: int, progress: Progress, starting: str,
) -> tuple[PurchaseModel | None, dict[str, Any]]:
    """Run ``fit`` unless there is too little to learn from, and say what came of it.

    Parameters
    ----------
    fit
        Fits and returns the purchase model.
    purchases
        Purchases in the training and validation windows; fewer than ``min_purchases`` in
        either skip the fit.
    progress, starting
        ``starting`` is reported before the fit, a summary of the trees after it.

    Returns
    -------
    (PurchaseModel or None, dict)
        The model, or ``None`` when skipped (too few purchases, or a window with one outcome
        only); the dict holds the fit's figures or why it was skipped, as the job logs them
        (``purchase_model.*``).
    """
    train, valid = purchases
    if train < min_purchases or valid < min_purchases:
        return None, {"purchase_model.skipped": f"too few purchases ({train} training, {valid} validation)"}
    progress(starting)
    try:
        model = fit()
    except SchemaError as error:  # a window with one outcome only: nothing to learn the split from
        return None, {"purchase_model.skipped": str(error)}
    info = model.fit_info_
    progress(f"purchase model: {info['click_trees']} click and {info['purchase_trees']} purchase trees, "
             f"position coefficient {info['position_coef']:.3f}")
    return model, {f"purchase_model.{k}": v for k, v in info.items()}
