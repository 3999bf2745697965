"""From evidence counts to shrunk rates, oriented risk signals, and the fitted trust index.

Three steps, each a whole-column operation over all merchants:

1. :func:`derive_signals` turns effective counts into empirical-Bayes rates (posterior mean,
   raw rate, effective n, and the pessimistic posterior bound) and into the *risk* matrix:
   one column per signal, oriented so that larger is worse, on a rate-like scale.
2. :class:`IndexModel` maps risk to an expected bad-order rate with non-negative weights
   (so worsening any signal can never raise trust), fitted by NNLS to the bad-order rate
   each merchant went on to have after an earlier cut, or set to documented defaults when
   there is too little history. One model for the index, one per dimension.
3. :func:`top_reasons` names the signals that moved a merchant most away from the prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import optimize

from ._shrinkage import (
    BetaPrior,
    GammaPrior,
    beta_posterior_mean,
    beta_posterior_quantile,
    fit_beta_prior,
    fit_gamma_prior,
    gamma_posterior_mean,
)
from .errors import ConfigError, NotFittedError

if TYPE_CHECKING:  # pragma: no cover
    from ._trust_config import TrustConfig

__all__ = [
    "BetaRate",
    "BETA_RATES",
    "SIGNAL_DIMENSION",
    "DEFAULT_INDEX_WEIGHTS",
    "derive_signals",
    "IndexModel",
    "RiskRows",
    "top_reasons",
]


@dataclass(frozen=True)
class BetaRate:
    """A share-of-trials rate: ``numerator / denominator`` of effective counts.

    ``risk`` says how the rate enters the risk matrix: ``"rate"`` (larger rate is worse) or
    ``"complement"`` (larger rate is better, so ``1 - rate`` is the risk).
    """

    name: str
    numerator: str
    denominator: str
    dimension: str
    source: str
    risk: str = "rate"
    by_category: bool = True


# The shrunk rates, grouped by trust dimension. Names are the snapshot's column names.
BETA_RATES: tuple[BetaRate, ...] = (
    BetaRate("bad_case_rate", "n_bad_cases", "n_orders", "commodity_quality", "after_sales"),
    BetaRate("counterfeit_case_rate", "n_counterfeit_cases", "n_orders", "commodity_quality", "after_sales"),
    BetaRate("low_rating_rate", "n_low_ratings", "n_reviews", "commodity_quality", "reviews"),
    BetaRate("quality_shortfall", "quality_shortfall", "n_quality_ratings", "commodity_quality", "reviews"),
    BetaRate("buyer_favor_rate", "n_buyer_favor", "n_resolved", "service_quality", "after_sales"),
    BetaRate("dispute_rate", "n_intervened", "n_cases", "service_quality", "after_sales"),
    BetaRate("slow_resolution_rate", "n_slow_resolutions", "n_resolved", "service_quality", "after_sales"),
    BetaRate("service_shortfall", "service_shortfall", "n_service_ratings", "service_quality", "reviews"),
    BetaRate("cancellation_rate", "n_cancelled", "n_orders_all", "service_quality", "orders"),
    BetaRate("rating_shortfall", "rating_shortfall", "n_reviews", "product_experience", "reviews"),
    BetaRate("repurchase_rate", "n_repurchasers_90d", "n_buyers", "product_experience", "orders", risk="complement"),
    BetaRate("late_shipment_rate", "n_late", "n_due", "product_experience", "orders"),
    BetaRate("presale_share", "n_presale", "n_orders", "product_experience", "orders"),
    BetaRate("logistics_shortfall", "logistics_shortfall", "n_logistics_ratings", "product_experience", "reviews"),
    BetaRate("fast_refund_share", "n_fast_refunds", "n_refund_cases", "after_sales_guarantees", "after_sales", risk="complement"),
    BetaRate("nps_promoter_rate", "n_promoters", "n_nps", "social_evaluation", "nps", risk="complement"),
    BetaRate("nps_detractor_rate", "n_detractors", "n_nps", "social_evaluation", "nps"),
    BetaRate("follower_order_share", "n_follower_orders", "n_orders", "social_evaluation", "follows", risk="complement"),
    BetaRate("review_rate", "n_reviews", "n_orders", "social_evaluation", "reviews", risk="complement"),
    BetaRate("brushing_score", "suspicion", "n_suspicion", "overall", "orders", by_category=False),
)

# Optional columns a rate needs besides its table ("table.column"): absent from the input,
# the rate has no evidence and sits at its prior.
_SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "cancellation_rate": ("orders.status",),
    "late_shipment_rate": ("orders.promised_ship_by",),
    "presale_share": ("orders.presale",),
    "quality_shortfall": ("reviews.quality",),
    "service_shortfall": ("reviews.service",),
    "logistics_shortfall": ("reviews.logistics",),
    "buyer_favor_rate": ("after_sales.outcome",),
    "dispute_rate": ("after_sales.platform_intervened",),
    "slow_resolution_rate": ("after_sales.resolved_at",),
    "fast_refund_share": ("after_sales.resolved_at",),
    "follower_order_share": ("orders.creator_id",),
}

# Signals that are not a shrunk share, with their dimension.
_OTHER_SIGNALS: dict[str, str] = {
    "counterfeit_report_rate": "commodity_quality",
    "host_report_rate": "host_attitude",
    "host_violation_severity": "host_attitude",
    "benefit_gap": "after_sales_guarantees",
    "violation_severity": "overall",
    "newness": "overall",
}

SIGNAL_DIMENSION: dict[str, str] = {
    **{rate.name: rate.dimension for rate in BETA_RATES},
    **_OTHER_SIGNALS,
}
"""Every risk signal and the trust dimension it belongs to ("overall": index only)."""

# Used when there is too little history to fit (see IndexModel.fit). They encode the
# contract's definition of a bad order (quality-type cases, 1-2 star reviews) plus verified
# counterfeit reports and enforcement: past bad-order evidence predicts future bad orders.
DEFAULT_INDEX_WEIGHTS: dict[str, float] = {
    "bad_case_rate": 1.0,
    "low_rating_rate": 0.5,
    "counterfeit_report_rate": 1.0,
    "violation_severity": 0.02,
    "brushing_score": 0.3,
}

_N_BENEFITS = 5
_FLOOR_SCALE = 0.01
_NEWNESS_DAYS = 90.0


@dataclass
class Priors:
    """The fitted priors of one cut (kept so reference rows reuse them)."""

    beta: dict[str, BetaPrior]
    gamma: dict[str, GammaPrior]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters for the manifest."""
        return {
            "beta": {name: prior.to_dict() for name, prior in self.beta.items()},
            "gamma": {name: prior.to_dict() for name, prior in self.gamma.items()},
        }


def _column(counts: pd.DataFrame, name: str) -> np.ndarray:
    if name in counts.columns:
        return counts[name].to_numpy(dtype="float64")
    return np.zeros(len(counts))


def derive_signals(
    counts: pd.DataFrame,
    category: pd.Series,
    account_age_days: np.ndarray,
    config: TrustConfig,
    *,
    host_exposure: str,
    missing: tuple[str, ...] = (),
    priors: Priors | None = None,
    overlap: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, Priors]:
    """Shrunk rates (output columns) and the oriented risk matrix, one row per merchant.

    Parameters
    ----------
    counts
        Effective counts per merchant (:func:`._signals.build_counts`), plus the entity
        roll-up column ``entity_violation_severity``.
    category
        Category per merchant (index aligned with ``counts``); the prior is per category.
    account_age_days
        Account age at the cut.
    host_exposure
        Column used as exposure for host reports (``n_streams`` or ``n_orders``).
    missing
        Optional tables (``"reviews"``) and columns (``"orders.presale"``) absent from the
        dataset: their rates get no evidence at all, so every merchant sits at the prior
        (rather than at "zero complaints").
    priors
        Reuse these priors instead of fitting (reference rows for :func:`top_reasons`).
    overlap
        Compute the posterior quantiles in a helper thread beside the rest (the live update's
        critical path). ``False`` when the caller already runs several of these at once (a
        full build's earlier cuts): there the extra thread only contends for the interpreter
        lock (about 2 s of a quiet 10M build), and the quantiles are not sliced over the
        cores either. Same values either way.
    """
    fit = priors is None
    if priors is None:
        priors = Priors(beta={}, gamma={})
    # The posterior quantiles (most of this function's time, and run without the interpreter
    # lock) are computed in a helper thread while this one goes on with the next rates; their
    # columns keep their places (filled in at the end).
    if not overlap:
        return _derive(counts, category, account_age_days, config, host_exposure, missing, priors, fit, None)
    with ThreadPoolExecutor(1, "signals-bounds") as side:
        return _derive(counts, category, account_age_days, config, host_exposure, missing, priors, fit, side)


def _derive(
    counts: pd.DataFrame, category: pd.Series, account_age_days: np.ndarray, config: TrustConfig, host_exposure: str,
    missing: tuple[str, ...], priors: Priors, fit: bool, side: ThreadPoolExecutor | None,
) -> tuple[pd.DataFrame, pd.DataFrame, Priors]:
    out: dict[str, np.ndarray] = {}
    risk: dict[str, np.ndarray] = {}
    pending: list[tuple[BetaRate, Future[np.ndarray], np.ndarray]] = []
    for rate in BETA_RATES:
        num = _column(counts, rate.numerator)
        den = np.maximum(_column(counts, rate.denominator), num)
        if rate.source in missing or any(column in missing for column in _SOURCE_COLUMNS.get(rate.name, ())):
            num, den = np.zeros_like(num), np.zeros_like(den)
        if fit:
            priors.beta[rate.name] = fit_beta_prior(
                pd.Series(num, index=counts.index),
                pd.Series(den, index=counts.index),
                category if rate.by_category else None,
                min_trials=config.min_prior_trials,
                min_group_size=config.min_category_merchants,
                max_strength=config.max_prior_strength,
            )
        alpha, beta = priors.beta[rate.name].for_groups(category if rate.by_category else None, counts.index)
        mean = beta_posterior_mean(num, den, alpha, beta)
        # The pessimistic side of the posterior: the upper bound of a bad rate, the lower
        # bound of a good one. Ranking by it keeps a thin record from looking excellent.
        q = config.bound_level if rate.risk == "rate" else 1.0 - config.bound_level
        if side is not None:
            bounding = side.submit(beta_posterior_quantile, num, den, alpha, beta, q)
        else:  # beside other work already (overlap=False): one thread, no slices on other cores
            bounding = Future()
            bounding.set_result(beta_posterior_quantile(num, den, alpha, beta, q, split=False))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{rate.name}_raw"] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        out[rate.name] = mean
        out[f"{rate.name}_bound"] = mean  # placeholder: the bound, below
        out[f"{rate.name}_n"] = den
        risk[rate.name] = mean if rate.risk == "rate" else 1.0 - mean  # placeholder unless ranked by the mean
        pending.append((rate, bounding, mean))

    for name, numerator, exposure in (
        ("counterfeit_report_rate", "n_counterfeit_reports", "n_orders"),
        ("host_report_rate", "n_host_reports", host_exposure),
    ):
        c = _column(counts, numerator)
        e = _column(counts, exposure) * ("reports" not in missing)
        if fit:
            priors.gamma[name] = fit_gamma_prior(
                pd.Series(c), pd.Series(e), min_exposure=config.min_prior_trials, max_strength=config.max_prior_strength
            )
        value = gamma_posterior_mean(c, e, priors.gamma[name])
        out[name] = value
        out[f"{name}_n"] = e
        risk[name] = value

    own = _column(counts, "violation_severity")
    inherited = _column(counts, "entity_violation_severity")
    out["violation_severity"] = own
    out["inherited_violation_severity"] = inherited
    risk["violation_severity"] = np.log1p(own + inherited)
    host_severity = _column(counts, "host_violation_severity")
    out["host_violation_severity"] = host_severity
    risk["host_violation_severity"] = np.log1p(host_severity)
    benefits = _column(counts, "n_benefits")
    risk["benefit_gap"] = 1.0 - np.minimum(benefits, _N_BENEFITS) / _N_BENEFITS
    risk["newness"] = np.exp(-np.maximum(account_age_days, 0.0) / _NEWNESS_DAYS)
    out["nps"] = out["nps_promoter_rate"] - out["nps_detractor_rate"]
    for rate, future, mean in pending:
        bound = future.result()
        out[f"{rate.name}_bound"] = bound
        ranked = bound if config.rank_by_bound else mean
        risk[rate.name] = ranked if rate.risk == "rate" else 1.0 - ranked
    return pd.DataFrame(out, index=counts.index), pd.DataFrame(risk, index=counts.index), priors


@dataclass
class _Linear:
    intercept: float
    weights: dict[str, float]
    # None: the signals enter as they are. A dict (category name -> intercept, possibly empty):
    # the model reads each signal's excess over the no-evidence baseline of the merchant's
    # category, and the intercept is the category's (``intercept`` for unknown categories).
    by_category: dict[str, float] | None = None


@dataclass(frozen=True)
class RiskRows:
    """Risk rows and what a category-aware index needs besides them.

    ``baseline``: the risk of a merchant of the same category with no evidence at all (same
    columns as ``risk``); ``category``: each row's category name (null: unknown). Both are
    needed only by a model fitted with categories (the trust index of a full build).
    """

    risk: pd.DataFrame
    baseline: pd.DataFrame | None = None
    category: np.ndarray | None = None

    @classmethod
    def of(cls, rows: RiskRows | pd.DataFrame) -> RiskRows:
        """``rows`` as :class:`RiskRows` (a bare risk matrix has no baseline or category)."""
        return rows if isinstance(rows, RiskRows) else cls(rows)

    def select(self, mask: np.ndarray) -> RiskRows:
        """The rows where ``mask`` is true."""
        return RiskRows(
            self.risk[mask],
            None if self.baseline is None else self.baseline[mask],
            None if self.category is None else np.asarray(self.category, dtype=object)[mask],
        )

    @property
    def centred(self) -> bool:
        return self.baseline is not None and self.category is not None

    def excess(self, names: list[str]) -> np.ndarray:
        """``risk - baseline`` of the ``names`` columns (a baseline column absent counts 0)."""
        x = self.risk[names].to_numpy(dtype="float64")
        if self.baseline is None:
            raise NotFittedError("the trust index reads risk in excess of the category baseline: no baseline given")
        base = self.baseline.reindex(columns=names, fill_value=0.0).to_numpy(dtype="float64")
        return x - base

    def category_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense codes per row (-1: unknown category) and the category names."""
        if self.category is None:
            return np.full(len(self.risk), -1, dtype="int64"), np.array([], dtype=object)
        labels = pd.Series(np.asarray(self.category, dtype=object)).astype("string")
        codes, names = pd.factorize(labels, use_na_sentinel=True)
        return codes.astype("int64"), np.asarray(names, dtype=object)


def _weighted_sd(x: np.ndarray, w: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Weighted sd of each column (within groups when ``groups`` is given)."""
    if not len(x) or w.sum() <= 0:
        return np.zeros(x.shape[1])
    return np.sqrt(np.average(_demean(x, w, groups) ** 2, axis=0, weights=w))


def _demean(x: np.ndarray, w: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """``x`` minus its weighted mean, per group when ``groups`` (dense codes, -1 one more group)."""
    if groups is None:
        return x - np.average(x, axis=0, weights=w)
    key = groups - groups.min() if len(groups) else groups
    size = int(key.max()) + 1 if len(key) else 0
    total = np.bincount(key, weights=w, minlength=size)
    out = np.empty_like(x)
    for j in range(x.shape[1]):
        sums = np.bincount(key, weights=w * x[:, j], minlength=size)
        out[:, j] = x[:, j] - (sums / np.where(total > 0, total, 1.0))[key]
    return out


def _category_intercepts(residual: np.ndarray, w: np.ndarray, rows: RiskRows, pooled: float) -> dict[str, float]:
    """Each category's intercept: its weighted mean residual, shrunk towards ``pooled``.

    A normal random effect: the category means spread around the pooled one by ``tau_c2``
    (method of moments over the categories: their observed spread minus the sampling variance
    ``1 / sum(w)`` of each mean, with ``w`` inverse variances), so a category with few rows
    stays near the pooled intercept and one that does not spread beyond noise is pooled.
    """
    codes, names = rows.category_codes()
    if not len(names):
        return {}
    known = codes >= 0
    total = np.bincount(codes[known], weights=w[known], minlength=len(names))
    sums = np.bincount(codes[known], weights=(w * residual)[known], minlength=len(names))
    seen = total > 0
    if not seen.any():
        return {}
    mean = sums[seen] / total[seen]
    tau_c2 = float(np.mean((mean - pooled) ** 2) - np.mean(1.0 / total[seen]))
    if tau_c2 <= 0:
        shrunk = np.full(len(mean), pooled)
    else:
        prior = 1.0 / tau_c2
        shrunk = (sums[seen] + prior * pooled) / (total[seen] + prior)
    return {str(name): float(value) for name, value in zip(names[seen], shrunk)}


class IndexModel:
    """Expected bad-order rate as a non-negative combination of risk signals.

    ``predict`` returns ``intercept + sum_j w_j * risk_j`` clipped to [0, 1]; with every
    ``w_j >= 0`` and every risk oriented "larger is worse", the prediction can only rise
    (and trust, ``1 - prediction``, only fall) when any single signal worsens.
    One linear model for the index and one per dimension (using that dimension's signals).
    """

    def __init__(self) -> None:
        self._models: dict[str, _Linear] | None = None
        # Per group: sorted distinct predicted good-order rates of the reference population
        # and their mid-ECDF values (see calibrate / standing).
        self._reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.reference_size: int = 0
        self.fitted_on: int = 0
        self.source: str = "unfitted"
        self.fit_quality: dict[str, float] = {}

    @property
    def models(self) -> dict[str, _Linear]:
        if self._models is None:
            raise NotFittedError("IndexModel is not fitted: call fit() or use_defaults() first")
        return self._models

    @staticmethod
    def _groups(signals: list[str]) -> dict[str, list[str]]:
        groups = {"trust_index": list(signals)}
        for name in signals:
            dimension = SIGNAL_DIMENSION[name]
            if dimension != "overall":
                groups.setdefault(dimension, []).append(name)
        return groups

    def fit(
        self,
        rows: RiskRows | pd.DataFrame,
        target: np.ndarray,
        weight: np.ndarray,
        ridge: float = 0.05,
        *,
        scored: RiskRows | pd.DataFrame | None = None,
    ) -> IndexModel:
        """Ridge-penalised NNLS of the later bad-order rate on the risk signals.

        - **Row weights.** ``weight`` is each row's number of later orders. A merchant's later
          rate deviates from any model by its own unexplained share ``tau2`` plus binomial
          noise ``p (1 - p) / n``, so after a first fit with ``weight`` the rows are refitted
          with the inverse of that variance (random-effects weights): a busy merchant, or one
          whose orders surge, counts as one well-measured merchant, not as thousands of rows.
        - **Categories** (``rows`` with a baseline and categories; the trust index only). The
          index reads each signal in excess of the merchant's category baseline (its value for
          the same category with no evidence), and each category gets its own intercept: the
          category's later bad-order rate beyond what its merchants' excess signals explain,
          shrunk towards the pooled intercept by the between-category variance. So a category's
          base rate comes from outcomes, and noise in the per-category priors (refitted at each
          cut) cannot move a whole category between the fit and the snapshot. Fitted as fixed
          effects: the slopes on the signals demeaned within category, then the intercepts.
        - **Penalty scale.** Each signal is standardised before the ridge penalty
          (``ridge * sum(weights)``) by the larger of its sd over the fit rows and over the
          ``scored`` population (the merchants the weights will score): a signal nearly
          constant at the earlier cuts cannot take a weight that would swing the scored
          merchants. Standardising by a positive scale keeps every weight's sign, so weights
          stay >= 0 in the signals' own units.
        """
        rows = RiskRows.of(rows)
        scored_rows = RiskRows.of(scored) if scored is not None else None
        y = np.asarray(target, dtype="float64")
        n = np.maximum(np.asarray(weight, dtype="float64"), 0.0)
        models = self._fit_groups(rows, y, n, ridge, scored_rows)
        w = n
        tau2 = float("nan")
        if len(y) and n.sum() > 0:
            self._models = models
            first = self.predict(rows, "trust_index")
            y_mean = float(np.average(y, weights=n))
            noise = y_mean * (1.0 - y_mean) / np.maximum(n, 1e-12)
            tau2 = max(float(np.average((y - first) ** 2, weights=n) - np.average(noise, weights=n)), 1e-6)
            w = np.where(n > 0, 1.0 / (tau2 + noise), 0.0)
            models = self._fit_groups(rows, y, w, ridge, scored_rows)
        self._models = models
        self.fitted_on = len(y)
        self.source = "fitted"
        pred = self.predict(rows, "trust_index")
        y_mean = float(np.average(y, weights=w)) if w.sum() > 0 else 0.0
        spread = np.sum(w * (y - y_mean) ** 2)
        self.fit_quality = {
            "weighted_r2": float(1.0 - np.sum(w * (y - pred) ** 2) / spread) if spread > 0 else 0.0,
            "ridge": ridge,
            "merchant_variance": tau2,
        }
        return self

    def _fit_groups(
        self, rows: RiskRows, y: np.ndarray, w: np.ndarray, ridge: float, scored: RiskRows | None
    ) -> dict[str, _Linear]:
        total = float(w.sum())
        models: dict[str, _Linear] = {}
        for group, names in self._groups(list(rows.risk.columns)).items():
            by_category = group == "trust_index" and rows.centred
            codes = rows.category_codes()[0] if by_category else None
            x = rows.excess(names) if by_category else rows.risk[names].to_numpy(dtype="float64")
            if total > 0:
                xc = _demean(x, w, codes)
                yc = _demean(y[:, None], w, codes)[:, 0]
                sd = np.sqrt(np.average(xc**2, axis=0, weights=w))
            else:
                xc, yc, sd = x * 0.0, y * 0.0, np.zeros(len(names))
            if scored is not None and len(scored.risk):
                use = scored if not by_category or scored.centred else None
                if use is not None:
                    xs = use.excess(names) if by_category else use.risk[names].to_numpy(dtype="float64")
                    sd = np.maximum(sd, _weighted_sd(xs, np.ones(len(xs)), use.category_codes()[0] if by_category else None))
            varying = sd > 1e-9
            z = xc[:, varying] / sd[varying]
            scale = np.sqrt(w)
            design = np.vstack([z * scale[:, None], np.sqrt(ridge * total) * np.eye(int(varying.sum()))])
            response = np.concatenate([yc * scale, np.zeros(int(varying.sum()))])
            coef = np.zeros(len(names))
            if varying.any() and total > 0:
                fitted, _ = optimize.nnls(design, response, maxiter=50 * design.shape[1])
                coef[varying] = fitted / sd[varying]
            residual = y - x @ coef
            intercept = float(np.average(residual, weights=w)) if total > 0 else 0.0
            effects = _category_intercepts(residual, w, rows, intercept) if by_category else None
            models[group] = _Linear(intercept, dict(zip(names, map(float, coef))), effects)
        return models

    def use_defaults(self, signals: list[str], base_rate: float) -> IndexModel:
        """Documented default weights (too little history to fit); see ``docs/trust.md``."""
        models: dict[str, _Linear] = {}
        for group, names in self._groups(signals).items():
            if group == "trust_index":
                weights = {name: DEFAULT_INDEX_WEIGHTS.get(name, 0.0) for name in names}
                models[group] = _Linear(0.0, weights)
            else:
                # A dimension without a fit: its signals' mean risk, centred on the base rate
                # through the prior-level risk is not known here, so plain averaging is used.
                models[group] = _Linear(0.0, {name: 1.0 / len(names) for name in names})
        self._models = models
        self.source = "default"
        self.fit_quality = {"base_rate": base_rate}
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], signals: list[str]) -> IndexModel:
        """The weights of :meth:`to_dict` again (uncalibrated: call :meth:`calibrate`).

        ``signals`` are the risk columns of the build that will use the weights; weights
        fitted on another set of signals (another trustfeed version) are a ``ConfigError``.
        """
        try:
            models = {
                group: _Linear(
                    float(m["intercept"]),
                    {str(k): float(v) for k, v in m["weights"].items()},
                    None if m.get("category_intercepts") is None
                    else {str(k): float(v) for k, v in m["category_intercepts"].items()},
                )
                for group, m in data["models"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"index weights: expected models with intercept and weights, got {error!r}") from None
        expected = cls._groups(signals)
        got = {group: set(m.weights) for group, m in models.items()}
        if got != {group: set(names) for group, names in expected.items()}:
            have = set().union(*got.values()) if got else set()
            raise ConfigError(
                f"index weights: fitted on other signals than this version computes (only in the weights:"
                f" {sorted(have - set(signals))}, only here: {sorted(set(signals) - have)}): rebuild in full"
            )
        # In the signals' own order, as a fit gives them (the order of the sums in predict).
        models = {
            g: _Linear(models[g].intercept, {n: models[g].weights[n] for n in names}, models[g].by_category)
            for g, names in expected.items()
        }
        model = cls()
        model._models = models
        model.source = str(data.get("source", "fitted"))
        model.fitted_on = int(data.get("fitted_on_merchants", 0))
        model.fit_quality = {str(k): float(v) for k, v in dict(data.get("fit_quality", {})).items()}
        return model

    def predict(self, rows: RiskRows | pd.DataFrame, group: str) -> np.ndarray:
        """Expected bad-order rate of each merchant under the model of ``group``."""
        rows = RiskRows.of(rows)
        model = self.models[group]
        risk = rows.risk
        if model.by_category is None:
            value = np.full(len(risk), model.intercept)
            for name, weight in model.weights.items():
                if weight:
                    column = risk[name].to_numpy(dtype="float64") if name in risk.columns else 0.0
                    value = value + weight * column
        else:
            names = [name for name, weight in model.weights.items() if weight and name in risk.columns]
            coef = np.array([model.weights[name] for name in names])
            codes, categories = rows.category_codes()
            known = np.array([model.by_category.get(str(c), model.intercept) for c in categories] + [model.intercept])
            value = known[np.where(codes >= 0, codes, len(categories))] + rows.excess(names) @ coef
        # A linear fit can extrapolate below 0 for the best merchants; a hard clip would tie
        # them all at trust 1. A softplus floor (scale _FLOOR_SCALE) keeps the map strictly
        # increasing, so order and monotonicity survive, and changes nothing above ~3 scales.
        floored = _FLOOR_SCALE * np.logaddexp(0.0, value / _FLOOR_SCALE)
        return np.clip(floored, 0.0, 1.0)

    def calibrate(self, population: RiskRows | pd.DataFrame) -> IndexModel:
        """Remember each group's distribution of predicted good-order rates over ``population``.

        ``population`` is the risk matrix of the merchants the standing is measured against
        (the snapshot's merchants with at least one paid order): data from before the
        snapshot time only, so point-in-time safety holds.
        """
        self._reference = {}
        for group in self.models:
            good = np.sort(1.0 - self.predict(population, group))
            values, first = np.unique(good, return_index=True)
            counts = np.diff(np.append(first, len(good)))
            # Mid-ECDF: share of the population strictly worse, plus half of the ties.
            below = np.cumsum(counts) - counts
            mid = (below + 0.5 * counts) / max(len(good), 1)
            # Anchor the ends (good rate 0 -> standing 0, 1 -> 1) so the map is increasing on
            # all of [0, 1] and a merchant beyond the population's range still moves.
            xs = np.concatenate([[0.0], values, [1.0]])
            ys = np.concatenate([[0.0], mid, [1.0]])
            keep = np.concatenate([[True], np.diff(xs) > 0])
            self._reference[group] = (xs[keep], np.maximum.accumulate(ys[keep]))
        self.reference_size = len(RiskRows.of(population).risk)
        return self

    def standing(self, risk: RiskRows | pd.DataFrame, group: str) -> np.ndarray:
        """The group's score as a standing in [0, 1]: the reference population's mid-ECDF.

        ``standing = F(1 - predict(risk, group))`` with ``F`` the (interpolated) share of the
        reference population whose predicted good-order rate is lower. ``F`` is
        non-decreasing and ``predict`` increases with every risk, so worsening a signal can
        never raise the standing; unlike ``1 - predict`` it spreads over [0, 1] even when the
        predicted rates differ by a few tenths of a percent.
        """
        if group not in self._reference:
            raise NotFittedError("IndexModel.standing: call calibrate() first")
        xs, ys = self._reference[group]
        return np.clip(np.interp(1.0 - self.predict(risk, group), xs, ys), 0.0, 1.0)

    def reference_quantiles(self) -> dict[str, dict[str, float]]:
        """Deciles of each group's predicted bad-order rate over the reference population."""
        out: dict[str, dict[str, float]] = {}
        for group, (xs, ys) in self._reference.items():
            levels = np.arange(1, 10) / 10.0
            out[group] = {f"p{int(q * 100)}": float(1.0 - np.interp(1.0 - q, ys, xs)) for q in levels}
        return out

    def contributions(self, risk: pd.DataFrame, reference: pd.DataFrame, group: str = "trust_index") -> pd.DataFrame:
        """Change of trust (``-w_j * (risk_j - reference_j)``) per signal."""
        model = self.models[group]
        names = list(model.weights)
        w = np.array([model.weights[n] for n in names])
        delta = risk[names].to_numpy(dtype="float64") - reference[names].to_numpy(dtype="float64")
        return pd.DataFrame(-delta * w, index=risk.index, columns=names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters for the manifest."""
        return {
            "source": self.source,
            "fitted_on_merchants": self.fitted_on,
            "standing_reference": {"rows": self.reference_size, "expected_bad_rate_deciles": self.reference_quantiles()},
            "fit_quality": self.fit_quality,
            "models": {group: _linear_dict(m) for group, m in self.models.items()},
        }


def _linear_dict(model: _Linear) -> dict[str, Any]:
    out: dict[str, Any] = {"intercept": model.intercept, "weights": model.weights}
    if model.by_category is not None:
        out["category_intercepts"] = model.by_category
    return out


def top_reasons(contributions: pd.DataFrame, k: int, extra: Mapping[str, np.ndarray] | None = None) -> pd.Series:
    """``"signal:+0.012;signal:-0.034"``: the ``k`` largest moves from the prior, by size.

    ``extra`` adds rule-based moves (e.g. a ban) that are not part of the linear model.
    """
    frame = contributions.copy()
    for name, values in (extra or {}).items():
        frame[name] = values
    if frame.shape[1] == 0 or len(frame) == 0:
        return pd.Series([""] * len(frame), index=frame.index, dtype="string")
    values = frame.to_numpy(dtype="float64")
    names = np.asarray(frame.columns, dtype=object)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(values, order, axis=1)
    # Plain Python strings row by row: a third of the time of the same joins as string
    # Series (50,000 merchants: ~0.15 CPU s against ~0.45).
    pieces = []
    for slot in range(order.shape[1]):
        value = picked[:, slot]
        shown = (np.abs(value) >= 5e-5).tolist()
        label = names[order[:, slot]].tolist()
        pieces.append([f"{n}:{v:+.4f}" if ok else "" for n, v, ok in zip(label, value.tolist(), shown)])
    text = [";".join(p for p in row if p) for row in zip(*pieces)]
    return pd.Series(text, index=frame.index, dtype="string")
