"""Empirical-Bayes shrinkage of per-merchant rates.

A merchant with three orders and one complaint does not have a 33% complaint rate: it has
too little evidence to tell. Each rate is modelled as beta-binomial (a share of trials) or
gamma-Poisson (events per unit of exposure, when events can exceed trials, e.g. reports per
stream). The prior is fitted from all merchants by the method of moments, per group (product
category) where the group has enough merchants, and pooled otherwise. The posterior mean is
the estimate; a posterior quantile gives the conservative bound used when ranking.

Counts may be fractional: decayed, credibility-weighted counts are "effective" counts and
the conjugate formulas apply to them unchanged.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

__all__ = [
    "BetaPrior",
    "GammaPrior",
    "fit_beta_prior",
    "fit_gamma_prior",
    "beta_posterior_mean",
    "beta_posterior_quantile",
    "gamma_posterior_mean",
]

# Bounds on the prior strength (alpha + beta, in pseudo-trials). Below 2 the prior would
# not regularise sparse merchants at all; above 1e4 it would swamp even a busy merchant's
# evidence when between-merchant variance is estimated at ~0 on small data.
_MIN_STRENGTH = 2.0
_MAX_STRENGTH = 1e4
# Rates are kept away from exactly 0/1 so that Beta parameters stay positive.
_EPS = 1e-6


@dataclass(frozen=True)
class BetaPrior:
    """Beta(alpha, beta) prior per group; ``pooled`` is used for unknown or small groups."""

    alpha: pd.Series
    beta: pd.Series
    pooled_alpha: float
    pooled_beta: float

    def for_groups(self, groups: pd.Series | None, index: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """Alpha and beta aligned to ``index`` (one row per merchant)."""
        if groups is None or self.alpha.empty:
            n = len(index)
            return np.full(n, self.pooled_alpha), np.full(n, self.pooled_beta)
        keys = groups.reindex(index)
        # Positions in the (unique) group index, -1 for unknown or null groups: one hash
        # lookup shared by alpha and beta, no mapped Series (50k merchants x 20 rates x 6 calls)
        slot = self.alpha.index.get_indexer(pd.Index(keys))
        found = slot >= 0
        at = np.where(found, slot, 0)

        def pick(values: pd.Series, pooled: float) -> np.ndarray:
            chosen = values.to_numpy(dtype="float64")[at]
            return np.where(found & ~np.isnan(chosen), chosen, pooled)

        return pick(self.alpha, self.pooled_alpha), pick(self.beta, self.pooled_beta)

    def to_dict(self) -> dict[str, object]:
        """JSON-able parameters (for the snapshot manifest)."""
        return {
            "pooled": {"alpha": self.pooled_alpha, "beta": self.pooled_beta},
            "groups": {
                str(k): {"alpha": float(a), "beta": float(b)}
                for k, a, b in zip(self.alpha.index, self.alpha.to_numpy(), self.beta.to_numpy())
            },
        }


@dataclass(frozen=True)
class GammaPrior:
    """Gamma(shape, rate) prior on an event rate per unit of exposure."""

    shape: float
    rate: float

    def to_dict(self) -> dict[str, float]:
        """JSON-able parameters."""
        return {"shape": self.shape, "rate": self.rate}


def _moments_beta(successes: np.ndarray, trials: np.ndarray, max_strength: float = _MAX_STRENGTH) -> tuple[float, float, float]:
    """Method-of-moments Beta fit: returns (mean, strength, total trials)."""
    total = float(trials.sum())
    if total <= 0:
        return float("nan"), float("nan"), 0.0
    mean = float(np.clip(successes.sum() / total, _EPS, 1 - _EPS))
    rates = successes / trials
    # Trial-weighted variance of observed rates; the binomial part of it, mean(1-mean)/n on
    # average, is noise, the rest is the spread of true rates between merchants.
    observed_var = float(np.sum(trials * (rates - mean) ** 2) / total)
    binomial_var = mean * (1 - mean) * len(trials) / total
    between_var = observed_var - binomial_var
    if between_var <= 0:
        strength = max_strength
    else:
        strength = mean * (1 - mean) / between_var - 1.0
    return mean, float(np.clip(strength, _MIN_STRENGTH, max_strength)), total


def fit_beta_prior(
    successes: pd.Series,
    trials: pd.Series,
    groups: pd.Series | None = None,
    *,
    min_trials: float = 3.0,
    min_group_size: int = 10,
    fallback_mean: float = 0.05,
    max_strength: float = _MAX_STRENGTH,
) -> BetaPrior:
    """Fit a Beta prior to per-merchant (successes, trials) by the method of moments.

    Parameters
    ----------
    successes, trials
        Per-merchant counts (may be fractional), same index.
    groups
        Optional group label per merchant (e.g. category); a group with at least
        ``min_group_size`` merchants of ``min_trials`` trials gets its own prior.
    min_trials
        Merchants with fewer trials are left out of the fit (their rates are mostly noise).
    fallback_mean
        Prior mean when no merchant has enough trials (a weak prior of strength 2).
    max_strength
        Upper bound of ``alpha + beta``. When the observed spread is no larger than binomial
        noise, the moment estimate of the strength is infinite (every merchant identical);
        with a few dozen merchants that is mostly sampling error, so the strength is capped:
        a merchant with ``max_strength`` effective trials weighs its own record as much as
        the prior.

    Examples
    --------
    >>> import pandas as pd
    >>> prior = fit_beta_prior(pd.Series([1.0, 3, 5, 2]), pd.Series([20.0, 30, 40, 25]))
    >>> prior_mean = prior.pooled_alpha / (prior.pooled_alpha + prior.pooled_beta)
    >>> bool(abs(prior_mean - 11 / 115) < 1e-12)  # the pooled rate: all successes / all trials
    True
    """
    s = successes.to_numpy(dtype="float64")
    n = trials.to_numpy(dtype="float64")
    keep = n >= min_trials
    mean, strength, _ = _moments_beta(s[keep], n[keep], max_strength)
    if not np.isfinite(mean):
        mean, strength = fallback_mean, _MIN_STRENGTH
    pooled_alpha, pooled_beta = mean * strength, (1 - mean) * strength
    empty = pd.Series(dtype="float64")
    if groups is None:
        return BetaPrior(empty, empty, pooled_alpha, pooled_beta)

    labels = groups.reindex(successes.index)
    codes, uniques = pd.factorize(labels, use_na_sentinel=True)
    use = keep & (codes >= 0)
    if not use.any():
        return BetaPrior(empty, empty, pooled_alpha, pooled_beta)
    g, s_g, n_g = codes[use], s[use], n[use]
    size = len(uniques)
    total = np.bincount(g, weights=n_g, minlength=size)
    merchants = np.bincount(g, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        group_mean = np.clip(np.bincount(g, weights=s_g, minlength=size) / total, _EPS, 1 - _EPS)
        observed_var = np.bincount(g, weights=n_g * (s_g / n_g - group_mean[g]) ** 2, minlength=size) / total
        binomial_var = group_mean * (1 - group_mean) * merchants / total
        between = observed_var - binomial_var
        group_strength = np.where(
            between > 0, group_mean * (1 - group_mean) / np.where(between > 0, between, 1.0) - 1.0, max_strength
        )
    group_strength = np.clip(group_strength, _MIN_STRENGTH, max_strength)
    big = merchants >= min_group_size
    index = pd.Index(np.asarray(uniques)[big])
    alpha = pd.Series((group_mean * group_strength)[big], index=index, dtype="float64")
    beta = pd.Series(((1 - group_mean) * group_strength)[big], index=index, dtype="float64")
    return BetaPrior(alpha, beta, pooled_alpha, pooled_beta)


def beta_posterior_mean(
    successes: np.ndarray, trials: np.ndarray, alpha: np.ndarray | float, beta: np.ndarray | float
) -> np.ndarray:
    """Posterior mean ``(s + alpha) / (n + alpha + beta)``; equals the prior mean at n = 0."""
    return (successes + alpha) / (trials + alpha + beta)


def beta_posterior_quantile(
    successes: np.ndarray, trials: np.ndarray, alpha: np.ndarray, beta: np.ndarray, q: float, *, split: bool = True
) -> np.ndarray:
    """Posterior ``q``-quantile of the rate (vectorised inverse regularised incomplete beta).

    ``split``: large inputs are computed in slices on every core (same values); ``False``
    when the caller already runs beside other work (a third thread on two cores only takes
    time from the others).
    """
    a = np.broadcast_to(np.asarray(successes, dtype="float64") + alpha, np.shape(successes))
    b = np.broadcast_to(np.maximum(np.asarray(trials, dtype="float64") - successes, 0.0) + beta, np.shape(successes))
    # The inverse incomplete beta is costly; evidence-free rows share (a, b) per prior group,
    # so evaluate each distinct pair once.
    # One hash pass over (a, b) packed as a complex number (np.unique(axis=0) sorted rows of
    # a structured view, several times slower).
    packed = np.empty(np.shape(a), dtype="complex128")
    packed.real, packed.imag = a, b  # not a + 1j * b: 1j * inf would make the real part NaN
    inverse, pairs = pd.factorize(packed.reshape(-1), use_na_sentinel=False)
    return _betaincinv(np.ascontiguousarray(pairs.real), np.ascontiguousarray(pairs.imag), q, split)[inverse]


# Below this many distinct pairs one thread does it all (a thread's start costs more).
_THREADED_PAIRS = 8_192


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _betaincinv(a: np.ndarray, b: np.ndarray, q: float, split: bool = True) -> np.ndarray:
    """``betaincinv(a, b, q)`` elementwise, in slices on every core for large inputs (``split``).

    scipy's ufunc runs without the interpreter lock, so the slices run in parallel; each
    element is computed by the same routine, so the values do not depend on the slicing.
    """
    workers = _workers() if split and len(a) >= _THREADED_PAIRS else 1
    if workers == 1:
        return np.asarray(special.betaincinv(a, b, q), dtype="float64")
    out = np.empty(len(a), dtype="float64")
    edges = np.linspace(0, len(a), workers + 1).astype("int64")

    def part(i: int) -> None:
        lo, hi = edges[i], edges[i + 1]
        special.betaincinv(a[lo:hi], b[lo:hi], q, out=out[lo:hi])

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="betaincinv") as pool:
        list(pool.map(part, range(workers)))
    return out


def fit_gamma_prior(
    counts: pd.Series,
    exposure: pd.Series,
    *,
    min_exposure: float = 1.0,
    fallback_rate: float = 0.01,
    max_strength: float = _MAX_STRENGTH,
) -> GammaPrior:
    """Fit a Gamma prior to event rates ``counts / exposure`` by the method of moments.

    The Poisson part of the observed variance (mean / exposure) is removed, as in
    :func:`fit_beta_prior`; strength is bounded the same way (in units of exposure).
    """
    c = counts.to_numpy(dtype="float64")
    e = exposure.to_numpy(dtype="float64")
    keep = e >= min_exposure
    c, e = c[keep], e[keep]
    total = float(e.sum())
    if total <= 0:
        return GammaPrior(fallback_rate * _MIN_STRENGTH, _MIN_STRENGTH)
    mean = max(float(c.sum() / total), _EPS)
    observed_var = float(np.sum(e * (c / e - mean) ** 2) / total)
    between = observed_var - mean * len(e) / total
    rate = max_strength if between <= 0 else mean / between
    rate = float(np.clip(rate, _MIN_STRENGTH, max_strength))
    return GammaPrior(mean * rate, rate)


def gamma_posterior_mean(counts: np.ndarray, exposure: np.ndarray, prior: GammaPrior) -> np.ndarray:
    """Posterior mean rate ``(c + shape) / (e + rate)``."""
    return (counts + prior.shape) / (exposure + prior.rate)
