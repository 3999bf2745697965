"""How the trust snapshot is computed: :class:`TrustConfig`.

Its own module so that the snapshot builder (``trust.py``) and the signal and index modules it
calls (``_signals.py``, ``_trust_index.py``) all read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import Config, Constraints, Flag, Integer, Items, Real

__all__ = ["TrustConfig"]

_DAYS = Items(Integer(low=1), min_len=1, distinct=True)
_POSITIVE = Real(0, strict_low=True)
_UNIT = Real(0, 1)


@dataclass(frozen=True)
class TrustConfig(Config):
    """How the trust snapshot is computed.

    Parameters
    ----------
    windows
        Rolling windows (days) of the ``_<k>d`` count columns.
    half_life_days
        Half-life of the exponential time decay applied to every main (undecorated) count.
    horizon_days
        The trust index is fitted on the cut ``as_of - horizon_days`` to predict the
        bad-order rate of the following ``horizon_days``.
    fit_cuts
        How many earlier cuts (``as_of - k * horizon_days``, k = 1..fit_cuts) contribute rows
        to the fit (cuts with no orders before them are skipped).
    min_label_orders
        A merchant enters the fit only with this many (credible) orders in the horizon.
    min_fit_merchants
        Fewer eligible merchants than this: documented default weights are used instead.
    bound_level
        Posterior level of the pessimistic bound (upper bound of a bad rate, lower bound of a
        good one) used to rank when ``rank_by_bound``.
    rank_by_bound
        Feed the bounds (True) or the posterior means (False) to the trust index.
    min_prior_trials, min_category_merchants
        Merchants with fewer trials do not inform the prior fit; a category needs this many
        informative merchants for its own prior (else the pooled prior is used).
    max_prior_strength
        Cap of a prior's strength (pseudo-trials). The moment estimate is infinite when
        merchants look no more different than binomial noise; a merchant with this many
        effective trials weighs its record as much as the prior.
    per_buyer_cap
        One buyer's orders (and reviews) at one merchant count for at most this many.
    isolated_buyer_suspicion
        Brushing suspicion of an order whose buyer has no other platform history.
    ring_buyer_suspicion, ring_prior_orders
        Brushing suspicion of a buyer of several shops whose shops are, by the median, ones
        where other buyers look fake: ``ring_buyer_suspicion * (1 - 1 / ratio)`` with
        ``ratio`` the shops' first-pass suspicious share (without this buyer, shrunk towards
        the platform norm with ``ring_prior_orders`` pseudo-orders) over the norm.
    tiny_amount_fraction, tiny_amount_suspicion
        An order below this fraction of its category's median amount is this suspicious.
    unverified_report_weight
        Weight of a report the platform has not reviewed (verified reports weigh 1,
        rejected ones 0).
    non_buyer_report_weight
        Further factor on an unreviewed report whose author never bought from the merchant
        (report bombing comes from fresh accounts).
    report_burst_hours
        Unreviewed reports against one merchant from accounts that never bought from it, filed
        within the same bucket of this many hours, are one campaign and share a single report's
        weight (0: every such report counts on its own).
    premature_praise_weight
        Credibility of an order that got a 4-5 star review before it was delivered, and of
        that review (when the log records deliveries): praise for goods not yet received says
        nothing about them, and is what paid-for reviews look like.
    fast_refund_days, slow_resolution_days
        A refund resolved within ``fast_refund_days`` is fast; a case taking longer than
        ``slow_resolution_days`` is slow.
    repurchase_days
        Horizons of the repurchase counts; the last one is the ``repurchase_rate`` signal.
    cold_start_orders
        Merchants with fewer paid orders are flagged ``cold_start``.
    ban_multiplier
        Trust of a banned merchant (or one whose entity is banned) is multiplied by this.
    brushing_penalty
        Trust is multiplied by ``1 - brushing_penalty * brushing_score``: fabricated volume is
        a violation in itself, whatever the other signals say. The default 0.2 demotes
        brushers beyond the bad orders their record predicts (gaming the index costs trust);
        it is the smallest setting that keeps them at or below the 0.25 mean percentile on
        every measured world (docs/trust.md).
    alarm_recent_days, alarm_baseline_days
        Early warning: the recent window compared against the merchant's own preceding
        baseline window (days).
    overdue_days
        Orders whose promised ship time passed within this many days count as due.
    new_buyer_days
        An account is a new buyer while its first order on the platform is younger than this.
    alarm_surprise
        Surprise (``-log10`` tail probability) at which an early-warning part starts to count;
        it counts fully at twice this.
    alarm_penalty
        Trust is multiplied by ``1 - alarm_penalty * early_warning``.
    n_reasons
        How many signals ``top_reasons`` names.
    fit_index
        Fit the index weights from the data (False: always the documented defaults).
    label_delay_correction
        Count each order of the fit's label windows for the share of bad outcomes known by
        its age, read from the log's own delays between an order and its bad outcome (the
        chain ladder's correction of the not yet reported). False (the default): every
        order counts in full, and the youngest orders of the window, not yet complained
        about, pull the fitted bad-order rate down. Off by default: the index it fits is
        better calibrated, but the policy reading it as a bad-order probability then gave up
        more orders than the bad ones it cut were worth on 6 of 8 simulated platforms in the
        closed loop (docs/trust.md).
    ridge
        Ridge penalty of the index fit, relative to the total row weight, on standardised
        signals (keeps collinear or nearly constant signals from getting wild weights). The
        default 1.0 spreads weight over the correlated signals instead of betting on a few:
        cross-validation of the fit on its own rows picks 1-5 on every measured world, and
        the lighter 0.05 of earlier versions gave weak signals large weights on short logs
        (docs/trust.md, "Where the rank errors come from").

    Examples
    --------
    >>> TrustConfig(half_life_days=14).half_life_days
    14.0
    >>> TrustConfig.from_dict(TrustConfig().to_dict()) == TrustConfig()
    True
    """

    windows: tuple[int, ...] = (7, 30, 90)
    half_life_days: float = 45.0
    horizon_days: float = 30.0
    fit_cuts: int = 2
    min_label_orders: float = 5.0
    min_fit_merchants: int = 100
    bound_level: float = 0.7
    rank_by_bound: bool = True
    min_prior_trials: float = 3.0
    max_prior_strength: float = 200.0
    min_category_merchants: int = 10
    per_buyer_cap: float = 3.0
    isolated_buyer_suspicion: float = 0.5
    ring_buyer_suspicion: float = 1.0
    ring_prior_orders: float = 5.0
    tiny_amount_fraction: float = 0.2
    tiny_amount_suspicion: float = 0.7
    unverified_report_weight: float = 0.1
    non_buyer_report_weight: float = 0.3
    report_burst_hours: float = 24.0
    premature_praise_weight: float = 0.0
    fast_refund_days: float = 1.0
    slow_resolution_days: float = 3.0
    repurchase_days: tuple[int, ...] = (30, 90)
    cold_start_orders: float = 5.0
    ban_multiplier: float = 0.1
    brushing_penalty: float = 0.2
    alarm_recent_days: float = 2.0
    alarm_baseline_days: float = 28.0
    overdue_days: float = 14.0
    new_buyer_days: float = 7.0
    alarm_surprise: float = 2.0
    alarm_penalty: float = 0.5
    n_reasons: int = 3
    fit_index: bool = True
    ridge: float = 1.0
    label_delay_correction: bool = False

    constraints: ClassVar[Constraints] = {
        "windows": _DAYS,
        "repurchase_days": _DAYS,
        **dict.fromkeys(
            ("half_life_days", "horizon_days", "min_label_orders", "min_prior_trials", "max_prior_strength",
             "per_buyer_cap", "ring_prior_orders", "fast_refund_days", "slow_resolution_days", "cold_start_orders",
             "ridge", "alarm_recent_days", "alarm_baseline_days", "overdue_days", "new_buyer_days", "alarm_surprise"),
            _POSITIVE,
        ),
        **dict.fromkeys(("min_fit_merchants", "min_category_merchants", "n_reasons", "fit_cuts"), Integer(low=1)),
        "bound_level": Real(0, 1, strict_low=True, strict_high=True),
        **dict.fromkeys(
            ("isolated_buyer_suspicion", "ring_buyer_suspicion", "tiny_amount_fraction", "tiny_amount_suspicion",
             "unverified_report_weight", "non_buyer_report_weight", "premature_praise_weight", "ban_multiplier",
             "brushing_penalty", "alarm_penalty"),
            _UNIT,
        ),
        **dict.fromkeys(("rank_by_bound", "fit_index", "label_delay_correction"), Flag()),
        "report_burst_hours": Real(0),
    }
