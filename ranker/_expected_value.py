"""The expected-net-value policy: calibrated purchase probability x value of an order.

Net value counts a good order as +1 and a bad one as ``-bad_cost`` (the default
``bad_cost = 2`` gives net value = good - 2 x bad = orders x (1 - 3 p_bad)). With
position-based examination (a viewer examines position ``p`` with a probability that falls with
``p`` and does not depend on the item), the expected net value of a list is
``sum_p exam(p) * P(purchase | examined)_i * (1 - (1 + bad_cost) * p_bad_i)``, which the
rearrangement inequality maximises by sorting items on::

    score = P(purchase | examined) * (1 - (1 + bad_cost) * p_bad(merchant))
    P(purchase | examined) = sigmoid(a * s + b + d * p_bad)     # s: the model's raw score
    p_bad(merchant)        = sigmoid(c0 + c1 * logit(trust))    # c1 <= 0

Both maps are fitted by the training job (:func:`fit_purchase_calibration` on the validation
window, with ``log(position)`` as a nuisance covariate for position bias that ranking drops;
:func:`fit_bad_model` on purchases of the training window), so the trade-off between converting
and trustworthy merchants is the one the data and the cost of a bad order imply, not a chosen
weight. ``c1 <= 0`` and ``a > 0`` make the score non-decreasing in trust and in relevance;
``bad_cost = 0`` ranks by ``P(purchase | examined)``, i.e. by relevance alone. A candidate whose
value factor is negative (each sale a net loss) scores the factor alone: it ranks below every
candidate worth showing, least harmful first, and a trust rise that lifts its purchase estimate
cannot lower its score.

``d`` (the *risk term*, :func:`fit_risk_calibration`) corrects a double count. A model that
sees trust features and was trained on labels that grade a bad purchase low has already
lowered the score of risky merchants; calibrating that score to purchases alone would then
read "risky" as "unlikely to be bought" and the value factor would charge the same risk a
second time. The same happens when risky merchants convert better (impulse buying) and the
score, monotone in the trust features, cannot rise as trust falls. With ``p_bad`` as a
covariate of the calibration, ``d`` measures how much more a risky merchant's candidate is
bought than its score says. ``d`` is kept in ``[0, 1 + bad_cost]``: on that interval the score stays
non-decreasing in trust (the derivative of ``log score`` in ``p_bad`` is
``d (1 - P) - (1 + bad_cost) / (1 - (1 + bad_cost) p_bad) <= d - (1 + bad_cost)`` while
the value is positive, and a negative value only falls further as ``p_bad`` grows), so the
correction can soften the trust penalty but never invert it. Scoring clips ``d`` to that
interval for the configured ``bad_cost``, so a state fitted for one cost stays monotone under
another.

The fits are Newton (IRLS) logistic regressions in numpy, with a tiny ridge so separable or
constant data cannot diverge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from ..features.errors import ConfigError, SchemaError

__all__ = [
    "RISK_TERM_Z",
    "logistic_regression",
    "fit_purchase_calibration",
    "fit_bad_model",
    "fit_risk_calibration",
    "max_risk_term",
    "purchase_probability",
    "bad_probability",
    "bad_probability_bound",
    "expected_value_score",
    "check_parameters",
]


RISK_TERM_Z = 1.645
"""How far below its estimate the fitted risk term is kept, in standard errors (one-sided 95%)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # the two-branch form never overflows exp
    out = np.empty_like(x, dtype=np.float64)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def _logit(p: np.ndarray, eps: float) -> np.ndarray:
    clipped = np.clip(p, eps, 1.0 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def logistic_regression(
    X: ArrayLike, y: ArrayLike, *, ridge: float = 1e-6, max_iter: int = 100, tol: float = 1e-10, offset: ArrayLike | None = None
) -> np.ndarray:
    """Maximum-likelihood logistic regression ``P(y=1) = sigmoid(X @ beta + offset)`` by Newton/IRLS.

    Parameters
    ----------
    X
        Design matrix ``(n, k)`` (add a column of ones for an intercept).
    y
        Binary outcomes (``n``).
    ridge
        L2 penalty (times ``n``) on every coefficient: keeps separable data finite.
    max_iter, tol
        Newton steps and the convergence threshold on the step size.
    offset
        A fixed term added to the linear predictor (``n``; ``None``: 0).

    Returns
    -------
    numpy.ndarray
        ``beta`` (``k``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=20000)
    >>> y = rng.random(20000) < 1 / (1 + np.exp(-(0.5 + 2.0 * x)))
    >>> logistic_regression(np.column_stack([np.ones_like(x), x]), y).round(1).tolist()
    [0.5, 2.0]
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise SchemaError("logistic regression", "X/y", "an (n, k) matrix and n outcomes", f"{X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise SchemaError("logistic regression", "X/y", "finite values", "NaN or infinity")
    n, k = X.shape
    if n == 0:
        raise SchemaError("logistic regression", "X", "at least one row", "none")
    fixed = np.zeros(n) if offset is None else np.broadcast_to(np.asarray(offset, dtype=np.float64), (n,))
    if not np.isfinite(fixed).all():
        raise SchemaError("logistic regression", "offset", "finite values", "NaN or infinity")
    penalty = ridge * n * np.eye(k)
    beta = np.zeros(k)
    for _ in range(max_iter):
        p = _sigmoid(X @ beta + fixed)
        w = p * (1.0 - p)
        gradient = X.T @ (y - p) - penalty @ beta
        hessian = (X * w[:, None]).T @ X + penalty
        step = np.linalg.solve(hessian, gradient)
        # halve an overshooting step (rare events start far from the optimum)
        scale = 1.0
        while scale > 1e-4 and np.abs(step * scale).max() > 10.0:
            scale *= 0.5
        beta = beta + scale * step
        if np.abs(step).max() * scale < tol:
            break
    return beta


def fit_purchase_calibration(score: ArrayLike, purchased: ArrayLike, position: ArrayLike) -> tuple[float, float, float]:
    """``P(purchase) = sigmoid(a * score + b + g * log(position))``: returns ``(a, b, g)``.

    The position term soaks up position bias in the logged data (a purchase at position 8 is
    rarer because fewer viewers get there); ranking uses ``(a, b)``, i.e. the probability at
    position 1, the examined-candidate propensity up to the shape of the position curve.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> s, pos = rng.normal(size=50000), rng.integers(1, 11, 50000)
    >>> bought = rng.random(50000) < 1 / (1 + np.exp(-(1.5 * s - 2.0 - 0.7 * np.log(pos))))
    >>> [round(v, 1) for v in fit_purchase_calibration(s, bought, pos)]
    [1.5, -2.0, -0.7]
    """
    s = np.asarray(score, dtype=np.float64)
    pos = np.asarray(position, dtype=np.float64)
    bought = np.asarray(purchased, dtype=np.float64)
    if not (s.shape == pos.shape == bought.shape) or s.ndim != 1:
        raise SchemaError("purchase calibration", "score/purchased/position", "three equal-length vectors",
                          f"shapes {s.shape}, {bought.shape}, {pos.shape}")
    if (pos < 1).any():
        raise SchemaError("purchase calibration", "position", "1-based positions", f"minimum {pos.min()}")
    a, b, g = logistic_regression(np.column_stack([s, np.ones_like(s), np.log(pos)]), bought)
    return float(a), float(b), float(g)


def max_risk_term(bad_cost: float) -> float:
    """The largest risk term ``d`` that keeps the score non-decreasing in trust: ``1 + bad_cost``."""
    return 1.0 + float(bad_cost)


def fit_risk_calibration(
    score: ArrayLike, purchased: ArrayLike, position: ArrayLike, p_bad: ArrayLike, bad_cost: float,
    *, z: float = 0.0, info: dict[str, float] | None = None,
) -> tuple[float, float, float, float]:
    """``P(purchase) = sigmoid(a * score + b + g * log(position) + d * p_bad)``: ``(a, b, g, d)``.

    :func:`fit_purchase_calibration` with the candidate merchant's bad-order probability as
    a covariate, ``d`` constrained to ``[0, 1 + bad_cost]`` (see the module docstring). The
    likelihood is concave, so an unconstrained optimum outside the interval puts the
    constrained one on its nearest bound: the fit is repeated with ``d`` fixed there (an
    offset).

    ``z > 0`` keeps ``d`` at the lower end of its confidence interval, ``d_hat - z x se``
    (``se`` from the inverse Fisher information at the unconstrained optimum), before the
    clip: ``d`` softens the trust penalty, and a few hundred purchases give a ``d_hat`` that
    is often large by chance where conversion does not depend on risk at all; the penalty is
    then softened only as far as the data show for sure (:data:`RISK_TERM_Z`, what
    :meth:`~trustfeed.ranker.policy.Policy.fit` uses). ``info`` (a dict) receives
    ``risk_term_estimate`` (``d_hat``) and ``risk_term_se``.

    Examples
    --------
    A score that already penalises risky merchants (they are bought more than it says):

    >>> rng = np.random.default_rng(3)
    >>> n = 60000
    >>> q, pos = rng.uniform(0.02, 0.4, n), rng.integers(1, 11, n)
    >>> s = rng.normal(size=n) - 2.0 * q
    >>> bought = rng.random(n) < 1 / (1 + np.exp(-(1.2 * s - 2.0 - 0.7 * np.log(pos) + 2.0 * q)))
    >>> a, b, g, d = fit_risk_calibration(s, bought, pos, q, bad_cost=2.0)
    >>> [round(a, 1), round(b, 1), round(g, 1)], abs(d - 2.0) < 0.3
    ([1.2, -2.0, -0.7], True)
    >>> round(fit_risk_calibration(s, bought, pos, q, bad_cost=0.5)[3], 1)  # capped at 1 + bad_cost
    1.5
    """
    s = np.asarray(score, dtype=np.float64)
    pos = np.asarray(position, dtype=np.float64)
    bought = np.asarray(purchased, dtype=np.float64)
    q = np.asarray(p_bad, dtype=np.float64)
    if not (s.shape == pos.shape == bought.shape == q.shape) or s.ndim != 1:
        raise SchemaError("purchase calibration", "score/purchased/position/p_bad", "four equal-length vectors",
                          f"shapes {s.shape}, {bought.shape}, {pos.shape}, {q.shape}")
    if (pos < 1).any():
        raise SchemaError("purchase calibration", "position", "1-based positions", f"minimum {pos.min()}")
    if not (math.isfinite(z) and z >= 0):
        raise ConfigError(f"risk calibration: z must be a finite number >= 0, got {z!r}")
    base = np.column_stack([s, np.ones_like(s), np.log(pos)])
    design = np.column_stack([base, q])
    beta = logistic_regression(design, bought)
    a, b, g, d_hat = beta
    se = _standard_errors(design, beta)[3]
    if info is not None:
        info.update({"risk_term_estimate": float(d_hat), "risk_term_se": float(se)})
    high = max_risk_term(bad_cost)
    d = d_hat - z * se if z > 0 else d_hat
    if not 0.0 <= d <= high or d != d_hat:
        d = min(max(d, 0.0), high)
        a, b, g = logistic_regression(base, bought, offset=d * q)
    return float(a), float(b), float(g), float(d)


def _standard_errors(X: np.ndarray, beta: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Standard errors of a logistic regression's coefficients: the inverse Fisher information at ``beta``."""
    p = _sigmoid(X @ beta)
    information = (X * (p * (1.0 - p))[:, None]).T @ X + ridge * X.shape[0] * np.eye(X.shape[1])
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        return np.full(X.shape[1], np.inf)
    return np.sqrt(np.maximum(np.diag(covariance), 0.0))


def fit_bad_model(trust: ArrayLike, bad: ArrayLike, eps: float = 1e-3) -> tuple[float, float]:
    """``p_bad = sigmoid(c0 + c1 * logit(trust))`` over purchases, constrained ``c1 <= 0``.

    The likelihood is concave, so when the unconstrained optimum has ``c1 > 0`` (trust that
    does not separate bad orders, or noise) the constrained optimum lies on ``c1 = 0``: a
    constant bad-order rate. NaN trust is taken as 0.5, as the policy does.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> trust = rng.beta(2.6, 1.6, 40000)
    >>> bad = rng.random(40000) < 1 / (1 + np.exp(-(-2.5 - 0.8 * np.log(trust / (1 - trust)))))
    >>> [round(v, 1) for v in fit_bad_model(trust, bad)]
    [-2.5, -0.8]
    """
    t = np.asarray(trust, dtype=np.float64)
    y = np.asarray(bad, dtype=np.float64)
    if t.shape != y.shape or t.ndim != 1:
        raise SchemaError("bad-order model", "trust/bad", "two equal-length vectors", f"shapes {t.shape}, {y.shape}")
    x = _logit(np.where(np.isnan(t), 0.5, t), eps)
    c0, c1 = logistic_regression(np.column_stack([np.ones_like(x), x]), y)
    if c1 > 0.0:
        (c0,) = logistic_regression(np.ones((len(y), 1)), y)
        c1 = 0.0
    return float(c0), float(c1)


def purchase_probability(score: ArrayLike, calibration: Sequence[float], p_bad: ArrayLike | None = None, risk_term: float = 0.0) -> np.ndarray:
    """``sigmoid(a * score + b + risk_term * p_bad)`` (NaN score stays NaN; ``p_bad=None``: no risk term)."""
    a, b = float(calibration[0]), float(calibration[1])
    logit = a * np.asarray(score, dtype=np.float64) + b
    if p_bad is not None and risk_term != 0.0:
        logit = logit + risk_term * np.asarray(p_bad, dtype=np.float64)
    return _sigmoid(logit)


def bad_probability(trust: ArrayLike, model: Sequence[float], eps: float = 1e-3) -> np.ndarray:
    """``sigmoid(c0 + c1 * logit(trust))``; NaN trust is 0.5 (no evidence either way)."""
    t = np.asarray(trust, dtype=np.float64)
    c0, c1 = float(model[0]), float(model[1])
    return _sigmoid(c0 + c1 * _logit(np.where(np.isnan(t), 0.5, t), eps))


def bad_probability_bound(p_bad: ArrayLike, orders: ArrayLike, level: float, prior_orders: float,
                          prior_rate: float) -> np.ndarray:
    """Upper credible bound of a merchant's bad-order probability given how much its record shows.

    A beta-binomial posterior: the prior ``Beta(r k, (1 - r) k)`` (the platform's bad-order
    rate ``r = prior_rate`` worth ``k = prior_orders`` orders) updated with the merchant's
    record read as ``n = orders`` (effective) orders of which a share ``p_bad`` went bad, i.e.
    ``Beta(r k + p n, (1 - r) k + (1 - p) n)``, taken at its ``level``-quantile. A long record
    gives about ``p_bad``; a thin one is pulled towards the platform's rate and priced at the
    pessimistic side of what it could be, so a merchant whose few orders look clean is not
    scored as if that were known. Non-decreasing in ``p_bad`` for a fixed record (a Beta whose
    total is fixed is stochastically larger as its first parameter grows). NaN ``orders``
    (not known) leaves ``p_bad`` as it is.

    Examples
    --------
    >>> p, n = np.array([0.01, 0.01, 0.01, 0.2]), np.array([0.0, 10.0, 10_000.0, 10.0])
    >>> bad_probability_bound(p, n, 0.8, 20.0, 0.08).round(3).tolist()
    [0.123, 0.087, 0.011, 0.166]
    """
    p = np.clip(np.asarray(p_bad, dtype=np.float64), 0.0, 1.0)
    n = np.asarray(orders, dtype=np.float64)
    known = np.isfinite(n)
    evidence = np.maximum(np.where(known, n, 0.0), 0.0)
    rate = min(max(float(prior_rate), 1e-6), 1.0 - 1e-6)
    alpha = rate * prior_orders + p * evidence
    beta = (1.0 - rate) * prior_orders + (1.0 - p) * evidence
    bound = np.asarray(special.betaincinv(np.maximum(alpha, 1e-12), np.maximum(beta, 1e-12), level), dtype=np.float64)
    return np.where(known, bound, p)


def expected_value_score(
    relevance: np.ndarray,
    trust: np.ndarray,
    calibration: Sequence[float],
    bad_model: Sequence[float],
    bad_cost: float,
    eps: float = 1e-3,
    risk_term: float = 0.0,
    orders: np.ndarray | None = None,
    risk_bound: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """``P(purchase | examined) * (1 - (1 + bad_cost) * p_bad)``; a NaN relevance is ``-inf``.

    A candidate with a negative value factor (``p_bad > 1 / (1 + bad_cost)``: each sale is a
    net loss) scores its value factor alone, so the score never falls as trust rises, whether
    trust enters through ``p_bad`` or through trust features in the relevance model.

    ``risk_term`` is ``d`` of the calibration, clipped to ``[0, 1 + bad_cost]`` so the score
    never falls as trust rises (``bad_cost = 0`` charges no risk and ranks by relevance alone,
    without it).

    ``risk_bound = (level, prior_orders, prior_rate)`` with ``orders`` (each candidate's merchant's
    effective orders): ``p_bad`` is taken at its upper credible bound
    (:func:`bad_probability_bound`) in both places it enters, so the score stays
    non-decreasing in trust for a given record.

    Examples
    --------
    A candidate that converts 20% better but whose merchant's orders go bad three times as
    often loses when bad orders cost 2, and wins when they cost nothing:

    >>> rel, trust = np.array([0.2, 0.0]), np.array([0.5, 0.9])
    >>> calibration, bad = (1.0, -2.0), (-2.0, -1.0)
    >>> expected_value_score(rel, trust, calibration, bad, 2.0).argmax().item()
    1
    >>> expected_value_score(rel, trust, calibration, bad, 0.0).argmax().item()
    0
    """
    rel = np.asarray(relevance, dtype=np.float64)
    finite = np.isfinite(rel)
    if bad_cost == 0.0:
        # no risk is charged, so there is no double count to undo: relevance alone
        value = purchase_probability(np.where(finite, rel, 0.0), calibration)
    else:
        p_bad = bad_probability(trust, bad_model, eps)
        if risk_bound is not None and orders is not None:
            p_bad = bad_probability_bound(p_bad, orders, *risk_bound)
        d = min(max(float(risk_term), 0.0), max_risk_term(bad_cost))
        factor = 1.0 - (1.0 + bad_cost) * p_bad
        purchase = purchase_probability(np.where(finite, rel, 0.0), calibration, p_bad, d)
        # a candidate whose every sale is a net loss (factor < 0) is ordered by its value factor
        # alone: times the purchase estimate it would fall as that estimate rises, and the
        # estimate itself rises with the merchant's trust signals (the model is monotone in
        # them), so the served score would fall as trust rises. Such candidates still rank
        # below every candidate with a non-negative value, and the score is continuous at 0.
        value = np.where(factor >= 0.0, purchase * factor, factor)
    return value if finite.all() else np.where(finite, value, -np.inf)


def check_parameters(
    purchase_calibration: Any, bad_model: Any, bad_cost: Any
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Validate the policy's expected-value fields; returns them as float tuples.

    Raises :class:`ConfigError` for a wrong length, a non-finite value, ``a <= 0`` (the
    score must rise with relevance), ``c1 > 0`` (it must not fall with trust), only one of
    the two fitted, or a negative / non-finite ``bad_cost``.
    """
    if not (isinstance(bad_cost, (int, float)) and not isinstance(bad_cost, bool) and math.isfinite(bad_cost)
            and bad_cost >= 0):
        raise ConfigError(f"bad_cost must be a finite number >= 0, got {bad_cost!r}")

    def pair(value: Any, name: str) -> tuple[float, float] | None:
        if value is None:
            return None
        try:
            out = tuple(float(v) for v in value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{name} must be two numbers or None, got {value!r}") from error
        if len(out) != 2 or not all(math.isfinite(v) for v in out):
            raise ConfigError(f"{name} must be two finite numbers or None, got {value!r}")
        return out[0], out[1]

    calibration = pair(purchase_calibration, "purchase_calibration")
    bad = pair(bad_model, "bad_model")
    if (calibration is None) != (bad is None):
        raise ConfigError("purchase_calibration and bad_model are fitted together: set both or neither")
    if calibration is not None and not calibration[0] > 0:
        raise ConfigError(f"purchase_calibration slope a must be > 0 (score rises with relevance), got {calibration[0]!r}")
    if bad is not None and bad[1] > 0:
        raise ConfigError(f"bad_model slope c1 must be <= 0 (score never falls as trust rises), got {bad[1]!r}")
    return calibration, bad
