"""The trust-exposure lever: tilt each request's scores towards trust until a target is met.

An operator's "the higher the index, the more exposure" as a number: the exposure-weighted
mean merchant trust of the first ``depth`` positions of every feed list should be at least
``target``. The policy score is tilted towards trust by the smallest step ``w`` of
:data:`TILTS` that meets the target for that request (the largest when none does: the request
then gets as much trust as the lever can give)::

    additive scores (z-scored relevance, logit):    s + w * logit(trust)
    scores with a meaningful zero (expected value): s * exp(w * logit(trust) * sign(s))

Why this is monotone (the property the tests check): for any two candidates the tilted
scores cross at most once as ``w`` grows, and after the crossing the trustworthier one is
ahead (``log s + w L`` is linear in ``w``; a negative score shrinks towards zero faster for a
higher ``L``; a positive score stays above a negative one). So raising ``w`` only ever swaps a
less trusted candidate behind a more trusted one, and each such swap raises the list's
exposure-weighted trust. The measured trust is therefore non-decreasing in ``w``, and the
chosen ``w`` (hence the measured trust) is non-decreasing in ``target``.

Everything is vectorised over requests laid end to end: one grouped sort per step of the grid.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TILTS", "exposure_weighted_trust_by_request", "tilt_scores", "tilt_to_trust_target"]

TILTS: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The tilt steps tried, smallest first (``8``: one unit of trust log-odds is worth e^8 in value)."""


def tilt_scores(score: np.ndarray, trust_logit: np.ndarray, tilt: np.ndarray | float, additive: bool) -> np.ndarray:
    """Scores tilted towards trust by ``tilt`` (per row or one value); ``tilt = 0`` returns them unchanged."""
    w = np.broadcast_to(np.asarray(tilt, dtype=np.float64), score.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        if additive:
            tilted = score + w * trust_logit
        else:
            tilted = score * np.exp(w * trust_logit * np.sign(score))
    # -inf stays -inf (NaN relevance, filtered rows), zero tilt is the identity bit for bit
    return np.where((w == 0) | ~np.isfinite(score), score, tilted)


def _positions(score: np.ndarray, ids: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """1-based rank of each kept row within its request by descending score (ties: input order); 0 if not kept."""
    n = score.size
    key = np.where(np.isnan(score), -np.inf, score)
    order = np.lexsort((np.arange(n), -key, ~kept, ids))
    starts = np.searchsorted(ids[order], ids[order], side="left")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n) - starts + 1
    return np.where(kept, position, 0)


def exposure_weighted_trust_by_request(
    score: np.ndarray, trust: np.ndarray, ids: np.ndarray, kept: np.ndarray, depth: int, n_requests: int
) -> np.ndarray:
    """Per request: exposure-weighted mean trust of its first ``depth`` kept rows by ``score``.

    Exposure of position ``p`` is ``1 / log2(p + 1)``; NaN for a request with no kept row.
    """
    position = _positions(score, ids, kept)
    shown = (position >= 1) & (position <= depth)
    exposure = np.where(shown, 1.0 / np.log2(np.maximum(position, 1) + 1.0), 0.0)
    weight = np.bincount(ids, weights=exposure, minlength=n_requests)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(ids, weights=exposure * trust, minlength=n_requests) / weight


def tilt_to_trust_target(
    score: np.ndarray,
    trust: np.ndarray,
    sizes: np.ndarray,
    kept: np.ndarray,
    *,
    target: float,
    depth: int,
    additive: bool,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tilt every request by the smallest step of :data:`TILTS` that meets ``target``.

    Parameters
    ----------
    score
        Policy scores of the rows of many requests laid end to end.
    trust
        Merchant trust per row (NaN: 0.5, no evidence either way).
    sizes
        Rows per request.
    kept
        Rows that passed the hard rules (only they are shown, so only they count).
    target, depth
        Exposure-weighted mean trust wanted over the first ``depth`` positions.
    additive, eps
        Tilt form (see the module docstring) and the clip of trust before the logit.

    Returns
    -------
    tuple
        The tilted scores, and the step chosen per request.

    Examples
    --------
    >>> score, trust = np.array([3.0, 2.0, 1.0]), np.array([0.2, 0.5, 0.9])
    >>> tilted, chosen = tilt_to_trust_target(score, trust, np.array([3]), np.ones(3, bool),
    ...                                       target=0.6, depth=2, additive=True, eps=1e-3)
    >>> np.argsort(-tilted).tolist(), chosen.tolist()
    ([2, 1, 0], [1.0])
    """
    n_requests = sizes.size
    ids = np.repeat(np.arange(n_requests), sizes)
    clean = np.clip(np.where(np.isnan(trust), 0.5, trust), eps, 1.0 - eps)
    trust_logit = np.log(clean) - np.log1p(-clean)
    chosen = np.full(n_requests, TILTS[-1])
    undecided = np.ones(n_requests, dtype=bool)
    for step in TILTS:
        measured = exposure_weighted_trust_by_request(
            tilt_scores(score, trust_logit, step, additive), clean, ids, kept, depth, n_requests
        )
        # a request with nothing to show has nothing to tilt
        met = undecided & (np.isnan(measured) | (measured >= target - 1e-12))
        chosen[met] = step
        undecided &= ~met
        if not undecided.any():
            break
    return tilt_scores(score, trust_logit, chosen[ids], additive), chosen
