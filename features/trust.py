"""Point-in-time trust snapshots: per-merchant and per-creator trust from event logs.

:func:`build_snapshot` computes, as of a time T and from events before T only, every
merchant's evidence (orders, after-sales cases, reviews, reports, violations, guarantees,
NPS, streams), shrinks each rate towards a prior fitted from all merchants (empirical-Bayes,
per category), and combines the oriented signals into ``trust_index`` and six
``trust_<dimension>`` scores with non-negative weights fitted to predict each merchant's
later bad-order rate. See ``docs/trust.md`` for every column, the statistics and the
defences against gaming.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from ._dask_backend import make_aggregator
from ._early_warning import early_warning_scores
from ._schema import BENEFITS
from ._shrinkage import beta_posterior_mean, fit_beta_prior, fit_gamma_prior, gamma_posterior_mean
from ._signals import FOLLOWED_COLUMN, CredibilityReferences, Encoding, SignalCounts, build_counts, encode_ids, with_followed
from ._trust_config import TrustConfig
from ._trust_index import IndexModel, RiskRows, derive_signals, top_reasons
from .errors import ConfigError, SchemaError
from .io import atomic_dir
from .progress import NullProgress, Progress

if TYPE_CHECKING:  # pragma: no cover
    from .events import EventLog, TimeLike

_T = TypeVar("_T")

__all__ = ["DIMENSIONS", "FORMAT_VERSION", "TrustConfig", "TrustReferences", "TrustSnapshot", "build_snapshot"]

DIMENSIONS: tuple[str, ...] = (
    "commodity_quality",
    "service_quality",
    "host_attitude",
    "product_experience",
    "after_sales_guarantees",
    "social_evaluation",
)
"""The six trust dimensions; each has a ``trust_<dimension>`` column in [0, 1]."""

FORMAT_VERSION = 1
_SNAPSHOT_TABLES = ("merchants", "creators")
# Keys of a manifest's ``index_model`` that IndexModel.to_dict writes (the rest is fit info).
_MODEL_KEYS = ("source", "fitted_on_merchants", "standing_reference", "fit_quality", "models")


@dataclass(frozen=True)
class TrustSnapshot:
    """Trust as of one time: per-merchant and per-creator tables plus a manifest.

    Attributes
    ----------
    as_of
        The cut (UTC): only events strictly before it were used.
    merchants
        One row per merchant (columns in ``docs/trust.md``).
    creators
        One row per creator.
    extras
        Further tables by name (``users``: per-buyer history for the feature assembler).
    manifest
        ``as_of``, ``format_version``, ``row_counts``, ``missing_tables``, ``warnings``,
        ``config``, ``index_model``, ``priors``.
    """

    as_of: pd.Timestamp
    merchants: pd.DataFrame
    creators: pd.DataFrame
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    def save(
        self, path: str | os.PathLike[str], *, force: bool = False, also: Callable[[Path], None] | None = None
    ) -> None:
        """Write the snapshot directory atomically (Parquet tables + ``manifest.json``).

        An existing ``path`` is replaced only if it is empty or an earlier snapshot (with
        ``force``: any trustfeed output); anything else raises
        :class:`~trustfeed.features.errors.OutputError` (see :func:`~trustfeed.features.io.atomic_dir`).
        ``also`` writes more files into the staging directory before it is put in place (the
        incremental state), so they appear together with the snapshot or not at all.
        """
        # ``also`` and the smaller tables are written in helper threads while the merchants
        # table is written here (Parquet encoding, Arrow writing and hashing run mostly
        # without the interpreter lock); every error is raised before the swap.
        with atomic_dir(path, "trust-snapshot", force=force) as tmp, ThreadPoolExecutor(3, "snapshot-write") as side:
            parts = [side.submit(also, tmp)] if also is not None else []
            parts += [side.submit(_write_parquet, frame, tmp / f"{name}.parquet") for name, frame in self.extras.items()]
            parts.append(side.submit(_write_parquet, self.creators, tmp / "creators.parquet"))
            _write_parquet(self.merchants, tmp / "merchants.parquet")
            for part in parts:
                part.result()
            manifest = dict(self.manifest)
            manifest["extras"] = sorted(self.extras)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrustSnapshot:
        """Read a directory written by :meth:`save` (no pickle anywhere)."""
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: not a trust snapshot (no manifest.json)")
        manifest = json.loads(manifest_path.read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise SchemaError(
                "snapshot", "format_version", f"format version {FORMAT_VERSION}", repr(version)
            )
        merchants = _restore(pd.read_parquet(root / "merchants.parquet"))
        creators = _restore(pd.read_parquet(root / "creators.parquet"))
        extras = {name: _restore(pd.read_parquet(root / f"{name}.parquet")) for name in manifest.get("extras", [])}
        manifest.pop("extras", None)
        return cls(pd.Timestamp(manifest["as_of"]), merchants, creators, extras, manifest)


@dataclass(frozen=True)
class TrustReferences:
    """Credibility references by id, as a build computed them (see ``docs/trust.md``).

    What an order's credibility weight compares it with beyond its own buyer: the median paid
    amount of its category (the tiny-order cue) and, for the ring association, the platform's
    first-pass suspicious share and each shop's first-pass totals. A full build computes them
    from its own orders; :class:`~trustfeed.features.LiveTrust` carries them between full
    builds, and ``build_snapshot(..., references=...)`` uses given ones.
    """

    category_median: dict[str | None, float]  # category name (None: no category) -> median paid amount
    overall_median: float
    logs_activity: bool
    records_deliveries: bool
    ring_norm: float
    shops: pd.DataFrame  # merchant_id, suspicion, orders (merchants with paid orders)

    @classmethod
    def of(cls, refs: CredibilityReferences, enc: Encoding) -> TrustReferences:
        """The id-keyed form of a build's code-indexed references."""
        names = enc.vocab["category"]
        codes = refs.category_median.index.to_numpy(dtype="int64")
        values = refs.category_median.to_numpy(dtype="float64")
        medians = {(None if code < 0 else str(names[code])): float(v) for code, v in zip(codes.tolist(), values.tolist())}
        orders = np.asarray(refs.shop_orders)
        held = np.flatnonzero(orders > 0)
        shops = pd.DataFrame(
            {
                "merchant_id": _vocab_strings(enc, "merchant", held).to_numpy(),
                "suspicion": np.asarray(refs.shop_suspicion)[held],
                "orders": orders[held],
            }
        )
        return cls(
            medians, float(refs.overall_median), bool(refs.logs_activity), bool(refs.records_deliveries),
            float(refs.ring_norm), shops,
        )  # fmt: skip

    def codes(self, enc: Encoding) -> CredibilityReferences:
        """The references indexed by this encoding's codes (ids it does not know are dropped)."""
        categories = pd.Index(enc.vocab["category"])
        medians: dict[int, float] = {}
        for name, value in self.category_median.items():
            slot = -1 if name is None else int(categories.get_indexer(pd.Index([name]))[0])
            if name is None or slot >= 0:
                medians[slot] = value
        merchants = pd.Index(enc.vocab["merchant"])
        code = merchants.get_indexer(pd.Index(self.shops["merchant_id"].astype("string")))
        found = code >= 0
        suspicion = np.zeros(enc.size("merchant"))
        orders = np.zeros(enc.size("merchant"))
        suspicion[code[found]] = self.shops["suspicion"].to_numpy(dtype="float64")[found]
        orders[code[found]] = self.shops["orders"].to_numpy(dtype="float64")[found]
        median = pd.Series(medians, dtype="float64")
        return CredibilityReferences(
            median, self.overall_median, self.logs_activity, self.records_deliveries, self.ring_norm, suspicion, orders
        )


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """One snapshot table as Parquet, dictionary-encoded only in its text columns.

    The float columns are nearly all distinct values, so a dictionary is built for each and
    then dropped: at 50,000 merchants (167 columns) that was three quarters of the write
    (0.82 -> 0.27 CPU s, and a smaller file). The values read back are the same.
    """
    text = [str(c) for c in frame.columns if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)]
    frame.to_parquet(path, index=False, use_dictionary=text)


def _restore(frame: pd.DataFrame) -> pd.DataFrame:
    """Give text columns the snapshot's one string dtype (``string``, null = ``pd.NA``).

    Applied when building and when loading, so a round trip through Parquet is exact.
    """
    for name in frame.columns:
        if frame[name].dtype == object or isinstance(frame[name].dtype, pd.StringDtype):
            frame[name] = frame[name].astype("string")
    return frame


def _vocab_strings(enc: Encoding, kind: str, codes: np.ndarray) -> pd.Series:
    """Id strings of ``codes`` (null where the code is -1)."""
    codes = np.asarray(codes, dtype="int64")
    vocab = enc.vocab[kind]
    if not len(vocab):
        return pd.Series([pd.NA] * len(codes), dtype="string")
    return pd.Series(vocab.take(np.where(codes >= 0, codes, -1), allow_fill=True), dtype="string")


def _merchant_meta(merchants: pd.DataFrame, as_of: pd.Timestamp, enc: Encoding) -> pd.DataFrame:
    """Entity, category and account age per merchant code (merchants table rows only)."""
    codes = merchants["merchant_id"].to_numpy(dtype="int64")
    age = (as_of - merchants["registered_at"]).dt.total_seconds().to_numpy(dtype="float64") / 86_400.0
    category = merchants["category"].to_numpy(dtype="int64")
    meta = pd.DataFrame(
        {
            "entity": merchants["entity_id"].to_numpy(dtype="int64"),
            # Per-category priors group on this; unknown category -> NaN -> the pooled prior.
            "category": pd.Series(np.where(category >= 0, category, np.nan), dtype="float64").to_numpy(),
            "account_age_days": np.maximum(age, 0.0),
        },
        index=pd.Index(codes, name="merchant"),
    )
    return meta.sort_index()


def _entity_rollup(counts: pd.DataFrame, meta: pd.DataFrame, n_entities: int) -> pd.DataFrame:
    """Violations and bans of the legal entity, as inherited by each of its accounts.

    A merchant without an ``entity_id`` is its own entity. ``entity_*`` columns hold what the
    *other* accounts of the entity did, so a re-registered shop starts with its old record.
    """
    entity = meta["entity"].to_numpy()
    key = np.where(entity >= 0, entity, n_entities + np.arange(len(entity)))
    key = pd.factorize(key, sort=True)[0]
    out = counts.copy()
    for column in ("violation_severity", "n_bans", "n_violations"):
        own = counts[column].to_numpy()
        total = np.bincount(key, weights=own)[key]
        out[f"entity_{column}"] = np.maximum(total - own, 0.0)
    out["entity_merchants"] = np.bincount(key)[key].astype("float64")
    return out


def _raw_evidence(
    events: EventLog,
    as_of: pd.Timestamp,
    config: TrustConfig,
    backend: str,
    enc: Encoding,
    references: CredibilityReferences | None = None,
    *,
    risk_only: bool = False,
) -> tuple[SignalCounts, pd.DataFrame]:
    """Evidence counts of every merchant code (before the registry selection), and the meta.

    ``risk_only``: only what the risk signals read (see :func:`._signals.build_counts`).
    """
    tables = {name: events[name] for name in events.tables}
    meta = _merchant_meta(tables["merchants"], as_of, enc)
    agg = make_aggregator(backend)
    counts = build_counts(tables, as_of, config, agg, enc, _category_codes(meta, enc), references, risk_only=risk_only)
    return counts, meta


def _category_codes(meta: pd.DataFrame, enc: Encoding) -> np.ndarray:
    """Category code of every merchant code (-1: unknown or not registered)."""
    category = np.full(enc.size("merchant"), -1, dtype="int64")
    category[meta.index.to_numpy()] = np.nan_to_num(meta["category"].to_numpy(), nan=-1).astype("int64")
    return category


def _registered(counts: SignalCounts, meta: pd.DataFrame, enc: Encoding) -> SignalCounts:
    """The counts of the registered merchants, with what their legal entity did."""
    merchants = counts.merchants.iloc[meta.index.to_numpy()]
    merchants.index = meta.index
    return replace(counts, merchants=_entity_rollup(merchants, meta, enc.size("entity")))


def _risk_evidence(
    events: EventLog, as_of: pd.Timestamp, config: TrustConfig, backend: str, enc: Encoding
) -> tuple[SignalCounts, pd.DataFrame]:
    """The registered merchants' counts that the risk signals read (an earlier fit cut's)."""
    counts, meta = _raw_evidence(events, as_of, config, backend, enc, risk_only=True)
    return _registered(counts, meta, enc), meta


# Columns the builders never read; dropping them up front keeps every later copy (the
# point-in-time cuts) small. At ten million impressions request ids alone are ~0.5 GB.
_UNUSED_COLUMNS: dict[str, tuple[str, ...]] = {
    "livestreams": ("category",),
    "orders": ("stream_id",),
    "after_sales": ("case_id",),
    "reviews": ("review_id",),
    "reports": ("report_id",),
    "violations": ("violation_id", "type"),
    "nps": ("response_id",),
    "impressions": ("request_id", "stream_id", "merchant_id", "position", "watch_seconds", "order_id"),
}


def _project(events: EventLog) -> EventLog:
    """The log with only the columns the trust builders read (no data is copied)."""
    from .events import EventLog

    tables = {}
    for name in events.tables:
        frame = events[name]
        drop = [c for c in _UNUSED_COLUMNS.get(name, ()) if c in frame.columns]
        tables[name] = frame.drop(columns=drop) if drop else frame
    return EventLog(tables, events.missing, events.warnings, getattr(events, "missing_columns", {}))


def _named_priors(priors: dict[str, Any], enc: Encoding) -> dict[str, Any]:
    """Per-category priors keyed by category name (they are fitted on category codes)."""
    names = enc.vocab["category"]
    for prior in priors.get("beta", {}).values():
        groups = prior.get("groups", {})
        prior["groups"] = {str(names[int(float(code))]): value for code, value in groups.items()}
    return priors


def _absent(events: EventLog) -> tuple[str, ...]:
    """Missing optional tables and ``table.column`` names of missing optional columns."""
    columns = getattr(events, "missing_columns", {}) or {}
    return tuple(events.missing) + tuple(f"{t}.{c}" for t, cols in columns.items() for c in cols)


def _signals(
    counts: SignalCounts, meta: pd.DataFrame, config: TrustConfig, host_exposure: str, missing: tuple[str, ...],
    *, overlap: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    return derive_signals(
        counts.merchants,
        meta["category"],
        meta["account_age_days"].to_numpy(),
        config,
        host_exposure=host_exposure,
        missing=missing,
        overlap=overlap,
    )


def _index_rows(
    risk: pd.DataFrame, meta: pd.DataFrame, priors: Any, config: TrustConfig, host_exposure: str,
    missing: tuple[str, ...], enc: Encoding,
) -> tuple[RiskRows, pd.DataFrame]:
    """What the trust index reads, and the no-evidence reference of ``top_reasons``.

    The reference is the risk of a merchant of the same category and age with no evidence at
    all (the priors of this cut). The index reads each signal in excess of it, except the
    account's age (``newness``), which is a fact about the account, not evidence.
    """
    empty = pd.DataFrame(0.0, index=risk.index, columns=["n_orders"])
    _, reference, _ = derive_signals(
        empty, meta["category"], meta["account_age_days"].to_numpy(), config,
        host_exposure=host_exposure, missing=missing, priors=priors,
    )  # fmt: skip
    codes = np.nan_to_num(meta["category"].to_numpy(), nan=-1).astype("int64")
    names = _vocab_strings(enc, "category", codes).astype(object).where(codes >= 0, None).to_numpy()
    return RiskRows(risk, reference.assign(newness=0.0), names), reference


class _LaterBad:
    """The fit's labels: credible orders placed in a window and how many of them went bad, per merchant code.

    Bad = a bad order (:func:`~trustfeed.features.outcomes.went_bad`: a quality /
    not_as_described / counterfeit case or a 1-2 star review), as known at the snapshot time; verified counterfeit or
    false-advertising reports filed in the window count as bad outcomes too (the target
    rate is capped at 1 by the caller).

    An order's outcome becomes known days after it is placed (delivery, then the case or
    the review), so at the snapshot time the window's youngest orders have not had the time
    to go bad in the log. Given ``as_of`` (the snapshot time) each order counts in the denominator
    for the share of bad outcomes known by its age (:func:`_reporting_delay`): the chain
    ladder's correction of claims incurred but not yet reported. Without it a window whose
    last ten days are young reads a bad-order rate about a quarter low, and the index fitted
    to it prices risk low by as much.

    The per-order and per-report columns are read once and each window is a comparison of
    their times (the fit reads three windows of ten million orders at 10M).
    """

    def __init__(self, orders: pd.DataFrame, reports: pd.DataFrame, as_of: pd.Timestamp | None = None, horizon_days: float = 30.0) -> None:
        # numpy times (UTC; NaT compares False, as a null time was never in a window)
        self.created = pd.to_datetime(orders["created_at"], utc=True).to_numpy(dtype="datetime64[ns]")
        self.bad = orders["bad"].to_numpy()
        self.weight = orders["order_weight"].to_numpy()
        self.merchant = orders["merchant"].to_numpy()
        report_merchant = reports["merchant_id"].to_numpy(dtype="int64")
        verified = reports["verified"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        serious = reports["category"].astype("string").isin(("counterfeit", "false_advertising")).to_numpy(dtype=bool, na_value=False)
        counted = verified & serious & (report_merchant >= 0)
        self.report_merchant = report_merchant[counted]
        self.filed = pd.to_datetime(reports["created_at"], utc=True).to_numpy(dtype="datetime64[ns]")[counted]
        self.known = np.ones(len(self.created))  # share of each order's outcome known at the snapshot
        self.delay: dict[str, float] = {}
        if as_of is not None and "bad_at" in orders:
            bad_at = pd.to_datetime(orders["bad_at"], utc=True).to_numpy(dtype="datetime64[ns]")
            self.known, self.delay = _reporting_delay(self.created, bad_at, self.bad, self.weight, as_of, horizon_days)

    def rate(self, start: pd.Timestamp, end: pd.Timestamp | None = None) -> pd.DataFrame:
        """Columns ``w`` (credible orders placed since ``start``, before ``end``, each counted
        for the share of its outcome known) and ``bad``."""
        later = _window(self.created, start, end)
        bad = self.bad[later]
        weight = self.weight[later]
        merchant = self.merchant[later]
        reported = self.report_merchant[_window(self.filed, start, end)]
        size = int(max(merchant.max() if len(merchant) else -1, reported.max() if len(reported) else -1)) + 1
        known = merchant >= 0
        return pd.DataFrame(
            {
                "w": np.bincount(merchant[known], weights=(weight * self.known[later])[known], minlength=size),
                "bad": np.bincount(merchant[known], weights=(bad * weight)[known], minlength=size)
                + np.bincount(reported, minlength=size),
            }
        )


# Fewer bad orders than this with a fully observed delay: the delay is not estimated and
# every order counts in full (no correction).
_MIN_DELAY_ORDERS = 50


def _reporting_delay(
    created: np.ndarray, bad_at: np.ndarray, bad: np.ndarray, weight: np.ndarray, as_of: pd.Timestamp, horizon_days: float
) -> tuple[np.ndarray, dict[str, float]]:
    """Per order, the share of bad outcomes known by its age at ``as_of``; and the delay's quantiles.

    The delay from an order to the moment it is known to be bad is read from the orders
    placed between two horizons and one horizon before ``as_of``: every delay up to a
    horizon is observed for them. ``F(a)`` is the credibility-weighted share of their delays
    at most ``a``; an order of age ``a`` counts ``F(a)`` (1 from a horizon on). Point in time:
    only outcomes known before ``as_of`` are read.
    """
    cut = as_of.to_datetime64()
    horizon = np.timedelta64(int(horizon_days * 86400e9), "ns")
    known = np.ones(len(created))
    mature = bad & (created >= cut - 2 * horizon) & (created < cut - horizon) & ~np.isnat(bad_at)
    delays = (bad_at[mature] - created[mature]).astype("int64") / 86400e9
    keep = delays <= horizon_days
    delays, w = delays[keep], weight[mature][keep]
    if len(delays) < _MIN_DELAY_ORDERS or w.sum() <= 0:
        return known, {}
    order = np.argsort(delays, kind="stable")
    delays, cum = delays[order], np.cumsum(w[order]) / w.sum()
    young = ~np.isnat(created) & (created > cut - horizon)
    age = (cut - created[young]).astype("int64") / 86400e9
    known[young] = np.where(age >= horizon_days, 1.0, np.concatenate(([0.0], cum))[np.searchsorted(delays, age, side="right")])
    quantile = {f"p{q}": float(delays[min(np.searchsorted(cum, q / 100), len(delays) - 1)]) for q in (50, 90)}
    return known, {"orders": float(len(delays)), **quantile}


def _window(times: np.ndarray, start: pd.Timestamp, end: pd.Timestamp | None) -> np.ndarray:
    """``start <= times < end`` (no end: from ``start`` on); null times are in no window."""
    inside = times >= start.to_datetime64()
    if end is not None:
        inside &= times < end.to_datetime64()
    return inside


def build_snapshot(
    events: EventLog,
    as_of: TimeLike,
    config: TrustConfig | None = None,
    backend: str = "pandas",
    progress: Progress | None = None,
    *,
    index: Mapping[str, Any] | None = None,
    references: TrustReferences | None = None,
) -> TrustSnapshot:
    """Build the trust snapshot as of ``as_of`` from events strictly before it.

    Parameters
    ----------
    events
        A validated event log (:func:`trustfeed.features.events.load_events`). Later events
        may be present: they are cut away, so the result is the same with or without them.
    as_of
        The cut (date string, ISO 8601 or timestamp; naive = UTC).
    config
        :class:`TrustConfig` (default settings if None).
    backend
        ``"pandas"`` or ``"dask"``: who runs the grouped reductions (same results).
    progress
        Receives one call per step.
    index
        Index weights to use instead of fitting them (the ``index_model`` of an earlier
        snapshot's manifest, as the incremental update carries them); the priors and the
        standing reference are still computed from this build's own evidence.
    references
        Credibility references to use instead of this build's own (category median amounts,
        the ring association's norm and shop totals: what :class:`~trustfeed.features.LiveTrust`
        carries between its full builds).

    Returns
    -------
    TrustSnapshot

    Examples
    --------
    >>> import pandas as pd
    >>> from trustfeed.features.events import validate_events
    >>> events = validate_events({
    ...     "merchants": pd.DataFrame({"merchant_id": ["m1", "m2"], "registered_at": ["2026-01-01"] * 2}),
    ...     "orders": pd.DataFrame({"order_id": ["o1", "o2", "o3"], "user_id": ["u1", "u2", "u1"],
    ...                             "merchant_id": ["m1", "m1", "m2"], "amount": [10.0, 12.0, 9.0],
    ...                             "created_at": ["2026-01-02", "2026-01-03", "2026-01-04"]}),
    ... })
    >>> snapshot = build_snapshot(events, "2026-02-01")
    >>> snapshot.merchants[["merchant_id", "n_orders_raw"]].values.tolist()
    [['m1', 2.0], ['m2', 1.0]]
    >>> bool(snapshot.merchants["trust_index"].between(0, 1).all())
    True
    """
    config = config if config is not None else TrustConfig()
    if not isinstance(config, TrustConfig):
        raise ConfigError(f"config: expected a TrustConfig, got {type(config).__name__}")
    make_aggregator(backend)  # validate early
    progress = progress if progress is not None else NullProgress()
    from .events import to_utc

    cut = to_utc(as_of)
    progress(f"trust: encoding events before {cut.isoformat()}")
    known, enc = encode_ids(_project(events).before(cut))
    if index is None and config.fit_index:
        # One order-level flag the earlier cuts would each compute again (same in every cut)
        known = with_followed(known, enc)
    earlier: list[tuple[pd.Timestamp, Future[RiskRows]]] | None = None
    # One helper thread derives each earlier cut's signals from its merchant counts (per
    # merchant: small, and mostly the inverse incomplete beta, which runs without the
    # interpreter lock) while this thread goes on with the next cut's per-order evidence.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trust-cut") as tails:
        if index is None:
            # The earlier cuts first: while they are built, nothing of the evidence at the cut is
            # held yet (their risk rows are small; the evidence's per-order labels are not).
            progress("trust: fitting the index on earlier cuts (their evidence)")
            earlier = _earlier_risk_futures(known, cut, config, backend, _host_exposure(known), enc, tails) if config.fit_index else []
        progress("trust: evidence")
        refs = None if references is None else references.codes(enc)
        raw, meta = _raw_evidence(known, cut, config, backend, enc, refs)
        return _finish(
            known, enc, _registered(raw, meta, enc), meta, cut, config, backend, progress, index, events.warnings, earlier=earlier
        )


def _host_exposure(known: EventLog) -> str:
    """Exposure of the host report rate: streams when the log has any, else orders."""
    return "n_streams" if len(known["livestreams"]) else "n_orders"


def _finish(
    known: EventLog,
    enc: Encoding,
    counts: SignalCounts,
    meta: pd.DataFrame,
    cut: pd.Timestamp,
    config: TrustConfig,
    backend: str,
    progress: Progress,
    index: Mapping[str, Any] | None,
    input_warnings: tuple[str, ...] | list[str],
    user_order: np.ndarray | None = None,
    *,
    earlier: list[tuple[pd.Timestamp, Future[RiskRows]]] | None = None,
) -> TrustSnapshot:
    """Shrink, fit (or carry) the index and score: the snapshot from the registered merchants' counts.

    ``user_order``: the user codes in id order, when the caller keeps them (a live update:
    the users table is then taken in that order instead of sorted again). ``earlier``: the
    earlier cuts' risk rows (:func:`_earlier_risks`) when already built; ``None``: built here
    if the index is fitted.
    """
    # The users table depends on nothing below. A live update (``user_order`` given) builds it
    # in a helper thread meanwhile: its takes run mostly without the interpreter lock (a million
    # buyers at 10M orders). A full build sorts the ids' strings, which holds the lock: beside
    # the merchants' scoring that slowed the 10M build by about 7 s (bench_features), so it is
    # built here, first.
    if user_order is None:
        users_table = _done(_users_table(counts.users, enc, None))
    else:
        side = ThreadPoolExecutor(1, "trust-users")
        users_table = side.submit(_users_table, counts.users, enc, user_order)
        side.shutdown(wait=False)  # the one task still runs; its result is waited for below
    host_exposure = _host_exposure(known)
    rates, risk, priors = _signals(counts, meta, config, host_exposure, _absent(known))
    rows, reference = _index_rows(risk, meta, priors, config, host_exposure, _absent(known), enc)
    with_orders = (counts.merchants["n_orders_raw"] > 0).to_numpy()
    population = rows.select(with_orders) if with_orders.any() else rows

    if index is None:
        if earlier is None:
            progress("trust: fitting the index on an earlier cut")
            cuts = _earlier_risks(known, cut, config, backend, host_exposure, enc) if config.fit_index else []
        else:
            cuts = [(start, rows.result()) for start, rows in earlier]
        model, fit_info = _fit_index(known, counts, cut, config, cuts, population)
    else:
        progress("trust: index weights carried from an earlier snapshot")
        model = IndexModel.from_dict(index, list(risk.columns))
        fit_info = {k: v for k, v in index.items() if k not in _MODEL_KEYS}
    # Dimension scores are standings among the merchants with evidence at the snapshot (data
    # before the cut only). Not the fit rows of the earlier cuts: signals drift as a log
    # grows (benefits enrolled, cases resolved), and a standing against a past population
    # would pile today's merchants up at one end.
    model.calibrate(population)

    progress("trust: scoring merchants")
    merchants = _merchant_table(counts, meta, rates, rows, reference, priors, model, config, enc)
    # Code order is id order after a fresh encoding; codes appended by a live update are not.
    merchants = merchants.sort_values("merchant_id", kind="stable").reset_index(drop=True)
    creators = _creator_table(counts, known, merchants, model, config, enc)
    users = users_table.result()
    warnings = list(input_warnings)
    for table in known.missing:
        warnings.append(f"{table}: table missing, its signals sit at their priors")
    if model.source != "fitted":
        warnings.append(f"trust index: default weights ({fit_info.get('reason', 'carried')})")
    manifest = {
        "as_of": cut.isoformat(),
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "row_counts": {
            "merchants": len(merchants),
            "creators": len(creators),
            "users": len(users),
            **{f"events.{name}": len(known[name]) for name in known.tables},
        },
        "missing_tables": list(known.missing),
        "warnings": warnings,
        "config": config.to_dict(),
        "index_model": {**model.to_dict(), **fit_info},
        "priors": _named_priors(priors.to_dict(), enc),
        "dimensions": list(DIMENSIONS),
    }
    progress("trust: done")
    return TrustSnapshot(cut, _restore(merchants), _restore(creators), {"users": users}, manifest)


def _users_table(users: pd.DataFrame, enc: Encoding, user_order: np.ndarray | None) -> pd.DataFrame:
    """The snapshot's users table: each user's counters with its id, in id order."""
    if user_order is None:
        out = users.copy()
        out.insert(0, "user_id", _vocab_strings(enc, "user", np.arange(len(out))).to_numpy())
        out = out.sort_values("user_id", kind="stable").reset_index(drop=True)
    else:
        out = users.take(user_order).reset_index(drop=True)
        out.insert(0, "user_id", _vocab_strings(enc, "user", user_order).to_numpy())
    return _restore(out)


def _earlier_risks(
    known: EventLog, cut: pd.Timestamp, config: TrustConfig, backend: str, host_exposure: str, enc: Encoding
) -> list[tuple[pd.Timestamp, RiskRows]]:
    """What the index reads at each earlier cut ``T - k * horizon`` (k = 1..fit_cuts) with orders before it."""
    return [(start, rows.result()) for start, rows in _earlier_risk_futures(known, cut, config, backend, host_exposure, enc)]


def _earlier_risk_futures(
    known: EventLog, cut: pd.Timestamp, config: TrustConfig, backend: str, host_exposure: str, enc: Encoding,
    tails: Executor | None = None,
) -> list[tuple[pd.Timestamp, Future[RiskRows]]]:
    """:func:`_earlier_risks`, with each cut's signals derived by ``tails`` (None: here, in turn).

    The cuts' evidence is built here one at a time (the per-order work, and the memory);
    only the per-merchant rest goes to ``tails``, so at most one cut's orders are held.
    """
    created = known["orders"]["created_at"]
    starts = [cut - pd.Timedelta(days=k * config.horizon_days) for k in range(1, config.fit_cuts + 1)]
    # A cut with no orders before it ends the list (every earlier cut has none either).
    starts = [s for s in starts if (created < s).to_numpy(dtype=bool, na_value=False).any()]
    risk_log = _risk_columns(known)
    missing = _absent(known)
    out: list[tuple[pd.Timestamp, Future[RiskRows]]] = []
    for start in starts:
        then, meta_then = _risk_evidence(risk_log.before(start), start, config, backend, enc)
        args = (then, meta_then, config, host_exposure, missing, enc)
        out.append((start, tails.submit(_risk_rows_of, *args) if tails is not None else _done(_risk_rows_of(*args))))
    return out


# Columns of the encoded log that no risk signal reads (the earlier cuts copy the rows before
# each cut of every column they keep): the creators' engagement, and the follows' and orders'
# creators once the orders carry their follower flag (with_followed).
_NOT_RISK_COLUMNS: dict[str, tuple[str, ...]] = {
    "impressions": ("creator_id", "clicked", "purchased"),
    "follows": ("creator_id",),
    "orders": ("creator_id",),
}


def _risk_columns(known: EventLog) -> EventLog:
    """The encoded log without the columns the risk-only evidence never reads (no copy)."""
    from .events import EventLog

    if FOLLOWED_COLUMN not in known["orders"].columns:
        return known  # the follower flag still needs the follows' and orders' creators
    tables = {}
    for name in known.tables:
        frame = known[name]
        drop = [c for c in _NOT_RISK_COLUMNS.get(name, ()) if c in frame.columns]
        tables[name] = frame.drop(columns=drop) if drop else frame
    return EventLog(tables, known.missing, known.warnings, known.missing_columns)


def _risk_rows_at(
    known: EventLog, start: pd.Timestamp, config: TrustConfig, backend: str, host_exposure: str, enc: Encoding
) -> RiskRows:
    """What the index reads as of the earlier cut ``start`` (from the events before it)."""
    then, meta_then = _risk_evidence(known.before(start), start, config, backend, enc)
    return _risk_rows_of(then, meta_then, config, host_exposure, _absent(known), enc)


def _risk_rows_of(
    then: SignalCounts, meta_then: pd.DataFrame, config: TrustConfig, host_exposure: str, missing: tuple[str, ...], enc: Encoding
) -> RiskRows:
    """What the index reads, from an earlier cut's registered merchants' counts."""
    # the earlier cuts run side by side already: no extra thread for their quantiles
    _, risk_then, priors_then = _signals(then, meta_then, config, host_exposure, missing, overlap=False)
    return _index_rows(risk_then, meta_then, priors_then, config, host_exposure, missing, enc)[0]


def _done(value: _T) -> Future[_T]:
    """``value`` as a finished future (work done in this thread where others use a helper)."""
    future: Future[_T] = Future()
    future.set_result(value)
    return future


def _fit_index(
    known: EventLog,
    counts: SignalCounts,
    cut: pd.Timestamp,
    config: TrustConfig,
    earlier_risks: list[tuple[pd.Timestamp, RiskRows]],
    scored: RiskRows,
) -> tuple[IndexModel, dict[str, Any]]:
    """Fit the index weights on the earlier cuts' risks (:func:`_earlier_risks`) and later outcomes.

    ``scored``: what the index reads for the snapshot's merchants with orders (sets the
    penalty scale of the fit, :meth:`IndexModel.fit`).
    """
    model = IndexModel()
    fit_cut = cut - pd.Timedelta(days=config.horizon_days)
    info: dict[str, Any] = {"fit_as_of": fit_cut.isoformat(), "horizon_days": config.horizon_days}
    later_bad = _LaterBad(counts.orders, known["reports"], cut if config.label_delay_correction else None, config.horizon_days)
    if later_bad.delay:
        info["reporting_delay_days"] = later_bad.delay
    labels = later_bad.rate(fit_cut)
    base_rate = float(min(labels["bad"].sum() / labels["w"].sum(), 1.0)) if labels["w"].sum() > 0 else 0.0
    info["later_bad_rate"] = base_rate
    if not config.fit_index:
        info["reason"] = "fit_index is off"
        return model.use_defaults(list(scored.risk.columns), base_rate), info
    # Stack one block of rows per earlier cut (T - H, T - 2H, ...): more merchants-periods
    # to fit the weights on, each with features strictly before its own label window.
    risks: list[RiskRows] = []
    targets: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for k, (start, rows_then) in enumerate(earlier_risks, start=1):
        end = None if k == 1 else start + pd.Timedelta(days=config.horizon_days)
        block = later_bad.rate(start, end)
        block = block.reindex(rows_then.risk.index).fillna(0.0)
        eligible = (block["w"] >= config.min_label_orders).to_numpy()
        if eligible.any():
            risks.append(rows_then.select(eligible))
            weights.append(block["w"].to_numpy()[eligible])
            targets.append(np.minimum(block["bad"].to_numpy()[eligible] / weights[-1], 1.0))
    n_rows = int(sum(len(w) for w in weights))
    info["eligible_merchants"] = n_rows
    info["fit_cuts_used"] = len(risks)
    if n_rows == 0:
        info["reason"] = "no orders before the fit cut"
        return model.use_defaults(list(scored.risk.columns), base_rate), info
    if n_rows < config.min_fit_merchants:
        info["reason"] = (
            f"{n_rows} merchants with >= {config.min_label_orders:g} orders in the horizon,"
            f" fewer than min_fit_merchants={config.min_fit_merchants}"
        )
        return model.use_defaults(list(scored.risk.columns), base_rate), info
    stacked = RiskRows(
        pd.concat([r.risk for r in risks], ignore_index=True),
        pd.concat([r.baseline for r in risks if r.baseline is not None], ignore_index=True),
        np.concatenate([np.asarray(r.category, dtype=object) for r in risks]),
    )
    model.fit(stacked, np.concatenate(targets), np.concatenate(weights), ridge=config.ridge, scored=scored)
    info["reason"] = "fitted"
    return model, info


def _merchant_table(
    counts: SignalCounts,
    meta: pd.DataFrame,
    rates: pd.DataFrame,
    rows: RiskRows,
    reference: pd.DataFrame,
    priors: Any,
    model: IndexModel,
    config: TrustConfig,
    enc: Encoding,
) -> pd.DataFrame:
    c = counts.merchants
    risk = rows.risk
    expected_bad = model.predict(rows, "trust_index")
    banned = ((c["n_bans"] > 0) | (c["entity_n_bans"] > 0)).to_numpy()
    # Only brushing beyond the platform's norm is penalised: every platform has one-off
    # buyers with no other history, and they are not evidence against any one merchant.
    prior = priors.beta["brushing_score"]
    norm = prior.pooled_alpha / (prior.pooled_alpha + prior.pooled_beta)
    brushing = np.clip((rates["brushing_score"].to_numpy() - norm) / (1.0 - norm), 0.0, 1.0)
    warning = early_warning_scores(c, rates["late_shipment_rate"].to_numpy(), config)
    alarm = warning["early_warning"].to_numpy()
    multiplier = np.where(banned, config.ban_multiplier, 1.0) * (1.0 - config.brushing_penalty * brushing)
    trust_index = np.clip((1.0 - expected_bad) * multiplier * (1.0 - config.alarm_penalty * alarm), 0.0, 1.0)

    # Reference: a merchant of the same category and age with no evidence at all.
    contributions = model.contributions(risk, reference)
    rule_moves = {
        "banned": np.where(banned, (1.0 - expected_bad) * (1.0 - config.brushing_penalty * brushing) * (config.ban_multiplier - 1.0), 0.0),
        "brushing_penalty": -(1.0 - expected_bad) * config.brushing_penalty * brushing * np.where(banned, config.ban_multiplier, 1.0),
        "early_warning": -(1.0 - expected_bad) * multiplier * config.alarm_penalty * alarm,
    }
    reasons = top_reasons(contributions, config.n_reasons, rule_moves)

    out: dict[str, Any] = {}
    out["entity_id"] = _vocab_strings(enc, "entity", meta["entity"].to_numpy()).to_numpy()
    category = np.nan_to_num(meta["category"].to_numpy(), nan=-1).astype("int64")
    out["category"] = _vocab_strings(enc, "category", category).to_numpy()
    out["account_age_days"] = meta["account_age_days"]
    out["trust_index"] = trust_index
    for dimension in DIMENSIONS:
        out[f"trust_{dimension}"] = model.standing(risk, dimension) if dimension in model.models else np.nan
    out["expected_bad_rate"] = expected_bad
    out["n_orders"] = c["n_orders"]
    out["n_orders_raw"] = c["n_orders_raw"]
    for days in config.windows:
        out[f"n_orders_{days}d"] = c[f"n_orders_{days}d"]
    out["gmv"] = c["gmv"]
    for column in rates.columns:
        out[column] = rates[column]
    for days in config.windows:
        for name, num, den in (
            ("bad_case_rate", "n_bad_cases", "n_orders"),
            ("low_rating_rate", "n_low_ratings", "n_reviews"),
            ("cancellation_rate", "n_cancelled", "n_orders_all"),
            ("late_shipment_rate", "n_late", "n_due"),
        ):
            n = c.get(f"{den}_{days}d", pd.Series(0.0, index=c.index)).to_numpy()
            k = c.get(f"{num}_{days}d", pd.Series(0.0, index=c.index)).to_numpy()
            out[f"{name}_{days}d"] = np.where(n > 0, k / np.where(n > 0, n, 1.0), np.nan)
            out[f"{name}_{days}d_n"] = n
    for column in (
        "n_cases", "n_no_reason_cases", "n_reviews", "n_reviews_raw", "n_reports_raw",
        "n_rejected_reports_raw", "n_violations", "n_bans", "n_suspensions", "n_benefits",
        "n_streams", "entity_violation_severity", "entity_n_bans", "entity_n_violations", "entity_merchants",
    ):  # fmt: skip
        out[column] = c[column] if column in c.columns else 0.0
    for benefit in BENEFITS:
        out[f"benefit_{benefit}"] = (c.get(f"benefit_{benefit}", pd.Series(0.0, index=c.index)) > 0).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        raw_rating = c.get("rating_sum_raw", 0.0) / c.get("n_reviews_raw", 0.0)
    out["mean_rating_raw"] = np.where(out["n_reviews_raw"] > 0, raw_rating, np.nan)
    out["brushing_excess"] = brushing
    for column in warning.columns:
        out[column] = warning[column].to_numpy()
    out["banned"] = banned
    out["entity_banned"] = (c["entity_n_bans"] > 0).to_numpy()
    out["inherited_record"] = ((c["entity_violation_severity"] > 0) | (c["entity_n_bans"] > 0)).to_numpy()
    out["cold_start"] = (c["n_orders_raw"] < config.cold_start_orders).to_numpy()
    out["prior_only"] = (c["n_orders_raw"] <= 0).to_numpy()
    out["top_reasons"] = reasons
    frame = pd.DataFrame(out, index=c.index)
    frame.insert(0, "merchant_id", _vocab_strings(enc, "merchant", c.index.to_numpy()).to_numpy())
    frame = frame.reset_index(drop=True)
    for name in ("entity_id", "category", "top_reasons"):
        frame[name] = frame[name].astype("string")
    return frame


def _creator_merchant(known: EventLog, n_creators: int) -> tuple[np.ndarray, np.ndarray]:
    """Each creator code's merchant code and followers (NaN: unknown).

    The creators table says who is self-operated; otherwise the merchant the creator
    streamed for most often stands in (ties broken by the lower merchant code, i.e. id).
    """
    table = known["creators"]
    merchant = np.full(n_creators, -1, dtype="int64")
    followers = np.full(n_creators, np.nan)
    codes = table["creator_id"].to_numpy(dtype="int64")
    merchant[codes] = table["merchant_id"].to_numpy(dtype="int64")
    followers[codes] = table["followers"].to_numpy(dtype="float64", na_value=np.nan)
    streams = known["livestreams"]
    if len(streams):
        pairs = (
            pd.DataFrame({"creator": streams["creator_id"].to_numpy(), "merchant": streams["merchant_id"].to_numpy(), "n": 1})
            .groupby(["creator", "merchant"], sort=True)["n"]
            .sum()
            .reset_index()
            .sort_values(["creator", "n", "merchant"], ascending=[True, False, True], kind="stable")
            .drop_duplicates("creator")
        )
        most = np.full(n_creators, -1, dtype="int64")
        most[pairs["creator"].to_numpy()] = pairs["merchant"].to_numpy()
        merchant = np.where(merchant >= 0, merchant, most)
    return merchant, followers


def _creator_table(
    counts: SignalCounts, known: EventLog, merchants: pd.DataFrame, model: IndexModel, config: TrustConfig, enc: Encoding
) -> pd.DataFrame:
    c = counts.creators
    out = pd.DataFrame(index=c.index)
    merchant, followers = _creator_merchant(known, len(c))
    out["merchant_id"] = _vocab_strings(enc, "merchant", merchant).to_numpy()
    out["followers"] = np.nan_to_num(followers, nan=0.0)
    out["followers_known"] = ~np.isnan(followers)
    out["popularity"] = np.log1p(out["followers"].to_numpy())
    n_imp = c["n_impressions"].to_numpy()
    clicks = c["n_clicks"].to_numpy()
    purchases = c["n_purchases"].to_numpy()
    ctr_prior = fit_beta_prior(c["n_clicks"], c["n_impressions"], min_trials=config.min_prior_trials, max_strength=config.max_prior_strength)
    conv_prior = fit_beta_prior(c["n_purchases"], c["n_impressions"], min_trials=config.min_prior_trials, max_strength=config.max_prior_strength)
    out["ctr"] = beta_posterior_mean(clicks, n_imp, ctr_prior.pooled_alpha, ctr_prior.pooled_beta)
    out["conversion_rate"] = beta_posterior_mean(purchases, n_imp, conv_prior.pooled_alpha, conv_prior.pooled_beta)
    exposure = c["n_streams"]
    report_prior = fit_gamma_prior(c["n_host_reports"], exposure, min_exposure=config.min_prior_trials, max_strength=config.max_prior_strength)
    out["host_report_rate"] = gamma_posterior_mean(c["n_host_reports"].to_numpy(), exposure.to_numpy(), report_prior)
    out["host_violation_severity"] = c["host_violation_severity"]
    risk = pd.DataFrame(
        {
            "host_report_rate": out["host_report_rate"].to_numpy(),
            "host_violation_severity": np.log1p(c["host_violation_severity"].to_numpy()),
        },
        index=c.index,
    )
    out["trust_host"] = model.standing(risk, "host_attitude") if "host_attitude" in model.models else np.nan
    out["n_streams"] = c["n_streams_raw"]
    out["n_impressions"] = c["n_impressions_raw"]
    out["n_impressions_decayed"] = c["n_impressions"]
    out["violations"] = c["n_violations"]
    banned = merchants.set_index("merchant_id")["banned"]
    out["merchant_banned"] = out["merchant_id"].map(banned).astype("boolean").fillna(False).astype(bool).to_numpy()
    out["cold_start"] = (c["n_impressions_raw"] <= 0).to_numpy() & (c["n_streams_raw"] <= 0).to_numpy()
    out.insert(0, "creator_id", _vocab_strings(enc, "creator", np.arange(len(c))).to_numpy())
    return out.sort_values("creator_id", kind="stable").reset_index(drop=True)
