"""Logged impressions -> learning-to-rank training frame (features, graded labels, groups).

Every impression of the window becomes one row: its features come from
:class:`~trustfeed.features.context.FeatureAssembler` (the same code serving runs) over the
trust snapshot and context tables built as of the start of the impression's day (UTC), so no
row ever sees an event at or after its own day began; its label is the graded outcome of
docs/contract.md section 4; its group is its ``request_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..features.context import (
    ContextConfig, ContextTables, FeatureAssembler, SnapshotFrames, ViewerHistory, build_context_tables,
)
from ..features.config import Config, Constraints, Flag, Integer, Nested, Real
from ..features.errors import ConfigError, SchemaError
from ..features.events import EventLog, TimeLike, to_utc
from ..features.trust import TrustConfig
from ..features.outcomes import order_outcomes, went_bad
from ..features.progress import NullProgress, Progress

__all__ = [
    "DatasetConfig",
    "TrainingFrame",
    "build_training_frame",
    "graded_labels",
    "purchase_outcomes",
    "time_split",
    "LABEL_SHOWN",
    "LABEL_CLICKED",
    "LABEL_WATCHED",
    "LABEL_PURCHASED",
    "LABEL_KEPT",
]

LABEL_SHOWN, LABEL_CLICKED, LABEL_WATCHED, LABEL_PURCHASED, LABEL_KEPT = 0, 1, 2, 3, 4
ID_COLUMNS = ("request_id", "user_id", "ts", "stream_id", "creator_id", "merchant_id", "position")
POLICY_TRUST = "policy_trust"
"""Frame column: the merchant trust the ranking policy reads (the snapshot's trust index), not a feature."""


@dataclass(frozen=True)
class DatasetConfig(Config):
    """How the training frame is built.

    Parameters
    ----------
    snapshot_every_days
        Build a trust snapshot every this many days (1: one per impression day). An
        impression uses the latest snapshot at or before the start of its day, so a larger
        value is cheaper and only makes features staler, never leaky.
    watch_seconds
        Watch time that makes an impression a "watched" (grade 2).
    label_horizon_days
        After-sales cases and verified reports count against a purchase when they come
        within this many days of the impression; fixing the horizon keeps a row's label
        stable as the log grows.
    low_rating_is_bad
        Also score a purchase with a 1-2 star review as 1 (docs/contract.md section 4 counts only
        bad after-sales cases and verified reports; the bad-order *rate* also counts low
        ratings).
    bad_purchase_grade
        Label of a purchase that ended badly (1: scored like a click, the default: a purchase
        that ended badly is not a success; 4: it keeps its purchase grade, so the relevance
        model predicts purchase and only the serving policy's bad-order model prices the
        risk). A bad purchase whose order was also not kept gets ``min(3, grade)``.
    fresh_viewer_history
        Read the viewer's history (follows, orders with each merchant, category taste,
        activity) as of the start of each impression's own day instead of the snapshot's
        time; the merchant trust snapshot and the creators' engagement stay as of the
        snapshot. The history is advanced day by day
        (:class:`~trustfeed.features._viewer_history.ViewerHistory`), not rebuilt, and gives
        the tables :func:`~trustfeed.features.history.build_context_tables` gives at that
        time. Needs ``context.lookback_days`` unset.
    context
        :class:`~trustfeed.features.context.ContextConfig` for the user history tables.
    trust
        :class:`~trustfeed.features.trust.TrustConfig` of the snapshots (``None``: its defaults).
    """

    snapshot_every_days: int = 1
    watch_seconds: float = 30.0
    label_horizon_days: float = 30.0
    low_rating_is_bad: bool = False
    bad_purchase_grade: int = 1
    fresh_viewer_history: bool = False
    context: ContextConfig = ContextConfig()
    trust: TrustConfig | None = None

    constraints: ClassVar[Constraints] = {
        "snapshot_every_days": Integer(low=1),
        "watch_seconds": Real(0),
        "label_horizon_days": Real(0, strict_low=True),
        "low_rating_is_bad": Flag(),
        "bad_purchase_grade": Integer(low=0, high=4),
        "fresh_viewer_history": Flag(),
        "context": Nested(ContextConfig),
        "trust": Nested(TrustConfig, optional=True),
    }


@dataclass(frozen=True)
class TrainingFrame:
    """A learning-to-rank dataset: one row per logged impression, rows of a request together.

    Attributes
    ----------
    frame
        ``request_id, user_id, ts, stream_id, creator_id, merchant_id, position, label,
        snapshot_at``, ``policy_trust`` (the trust the policy reads; frames built before it
        existed lack it) and the feature columns; sorted by request time, ``request_id`` and
        ``position``.
    feature_names, categorical, monotone
        The feature schema (column order of :meth:`features`).
    schema
        The assembler schema (``FeatureAssembler.schema()``) to save with the model.
    """

    frame: pd.DataFrame
    feature_names: tuple[str, ...]
    categorical: tuple[str, ...]
    monotone: tuple[int, ...]
    schema: dict[str, Any]

    def __len__(self) -> int:
        return len(self.frame)

    def features(self) -> np.ndarray:
        """Feature matrix (float64) in :attr:`feature_names` order."""
        return self.frame[list(self.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)

    @property
    def labels(self) -> np.ndarray:
        """Graded labels 0..4."""
        return self.frame["label"].to_numpy(dtype=np.int64)

    @property
    def positions(self) -> np.ndarray:
        """Logged 1-based positions."""
        return self.frame["position"].to_numpy(dtype=np.int64)

    def groups(self) -> np.ndarray:
        """Query sizes in row order (for ``lgb.Dataset(group=...)``)."""
        ids = self.frame["request_id"].to_numpy()
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        return np.diff(np.r_[starts, len(ids)]).astype(np.int64)

    def subset(self, mask: np.ndarray) -> TrainingFrame:
        """The rows where ``mask`` holds (keep whole requests in it)."""
        return TrainingFrame(
            self.frame.loc[np.asarray(mask, dtype=bool)].reset_index(drop=True),
            self.feature_names,
            self.categorical,
            self.monotone,
            self.schema,
        )


def _flag(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    # copy=True: without nulls, pandas may hand back a view of the event table's own
    # buffer, and graded_labels updates the result in place
    return frame[column].astype("boolean").fillna(False).to_numpy(dtype=bool, copy=True)


def purchase_outcomes(
    impressions: pd.DataFrame, events: EventLog, config: DatasetConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How each purchase of ``impressions`` turned out, within the label horizon.

    Reads the order outcomes (:func:`~trustfeed.features.outcomes.order_outcomes`) of each
    impression's order.

    Returns
    -------
    (purchased, bad, not_kept)
        Boolean arrays over the rows: ``purchased`` (flagged as purchased and the order not
        cancelled); ``bad``: an after-sales case for quality / not_as_described / counterfeit
        (or, with ``low_rating_is_bad``, a 1-2 star review) within ``label_horizon_days`` of
        the impression, or a report by the buyer against the merchant or stream within the
        horizon that the platform verified; ``not_kept``: an after-sales case decided in the
        buyer's favour within the horizon.
    """
    config = config or DatasetConfig()
    n = len(impressions)
    purchased = _flag(impressions, "purchased")
    horizon = pd.Timedelta(days=config.label_horizon_days)
    ts = impressions["ts"]

    order_ids = impressions["order_id"].astype("string") if "order_id" in impressions.columns else pd.Series(pd.NA, index=impressions.index, dtype="string")
    # .array keeps the time zone: to_numpy() of a tz-aware column builds a Timestamp object per row
    rows = pd.DataFrame({"row": np.arange(n), "order_id": order_ids.array, "ts": ts.array})
    bought = rows.loc[purchased & order_ids.notna().to_numpy()]

    bad = np.zeros(n, dtype=bool)
    not_kept = np.zeros(n, dtype=bool)
    if len(bought):
        outcomes = order_outcomes(events)
        outcomes = outcomes.assign(order_id=outcomes["order_id"].astype("string"))
        linked = bought.merge(outcomes, on="order_id", how="left")
        cancelled = linked["cancelled"].fillna(False).to_numpy(dtype=bool)
        purchased[linked["row"].to_numpy()[cancelled]] = False
        linked = linked.loc[~cancelled]
        end = linked["ts"] + horizon
        row = linked["row"].to_numpy()
        bad[row[went_bad(linked, end, low_rating=config.low_rating_is_bad)]] = True
        not_kept[row[(linked["buyer_favor_at"] < end).to_numpy(dtype=bool, na_value=False)]] = True

    reports = events["reports"]
    if len(reports) and purchased.any() and "verified" in reports.columns:
        verified = reports.loc[_flag(reports, "verified")]
        if len(verified):
            chosen = impressions.loc[purchased]
            buyers = pd.DataFrame(
                {
                    "row": np.flatnonzero(purchased),
                    "user_id": chosen["user_id"].astype("string").array,
                    "merchant_id": chosen["merchant_id"].astype("string").array,
                    "stream_id": chosen["stream_id"].astype("string").array,
                    "ts": chosen["ts"].array,
                }
            )
            filed = pd.DataFrame(
                {
                    "user_id": verified["reporter_id"].astype("string"),
                    "merchant_id": verified["merchant_id"].astype("string"),
                    "stream_id": verified["stream_id"].astype("string"),
                    "created_at": verified["created_at"],
                }
            )
            hits = []
            for key in ("merchant_id", "stream_id"):
                pairs = buyers.merge(filed.dropna(subset=[key])[["user_id", key, "created_at"]], on=["user_id", key])
                window = (pairs["created_at"] >= pairs["ts"]) & (pairs["created_at"] < pairs["ts"] + horizon)
                hits.append(pairs.loc[window.to_numpy(dtype=bool, na_value=False), "row"].to_numpy())
            bad[np.concatenate(hits).astype(np.int64)] = True
    return purchased, bad, not_kept


def graded_labels(impressions: pd.DataFrame, events: EventLog, config: DatasetConfig | None = None) -> np.ndarray:
    """Graded label of each impression (see ``docs/contract.md``, metric definitions).

    0 shown, 1 clicked, 2 watched >= ``watch_seconds``, 3 purchased but not kept (an
    after-sales case decided in the buyer's favour), 4 purchased and kept. A purchase that
    ended badly (:func:`purchase_outcomes`: a bad after-sales case or a verified report
    within ``label_horizon_days``) scores ``bad_purchase_grade`` (default 1: a purchase that
    ended badly is not a success; capped at 3 when the order was also not kept).
    A purchase whose order was cancelled counts as not purchased.

    Parameters
    ----------
    impressions
        Rows of the ``impressions`` table.
    events
        The event log (orders, after_sales, reports, reviews are read).
    config
        :class:`DatasetConfig` (defaults when ``None``).
    """
    config = config or DatasetConfig()
    n = len(impressions)
    clicked = _flag(impressions, "clicked")
    watch = pd.to_numeric(impressions.get("watch_seconds", pd.Series(np.nan, index=impressions.index)), errors="coerce")
    watched = (watch >= config.watch_seconds).to_numpy(dtype=bool, na_value=False)
    purchased, bad, not_kept = purchase_outcomes(impressions, events, config)

    label = np.full(n, LABEL_SHOWN, dtype=np.int64)
    label[clicked] = LABEL_CLICKED
    label[watched] = LABEL_WATCHED
    label[purchased] = LABEL_KEPT
    label[purchased & not_kept] = LABEL_PURCHASED
    label[purchased & bad] = config.bad_purchase_grade
    label[purchased & bad & not_kept] = min(config.bad_purchase_grade, LABEL_PURCHASED)
    return label


def _snapshot_times(ts: pd.Series, anchor: pd.Timestamp, every: int) -> pd.Series:
    """Start of the ``every``-day block (counted from ``anchor``'s day) of each time."""
    day0 = anchor.floor("D")
    days = ((ts - day0) // pd.Timedelta(days=1)).astype("int64")
    return day0 + pd.to_timedelta((days // every) * every, unit="D")


def build_training_frame(
    events: EventLog,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    config: DatasetConfig | None = None,
    progress: Progress | None = None,
    snapshot_builder: Callable[[EventLog, pd.Timestamp], Any] | None = None,
) -> TrainingFrame:
    """Features, labels and groups for the impressions with ``start <= ts < end``.

    Parameters
    ----------
    events
        A validated :class:`~trustfeed.features.events.EventLog` with an ``impressions`` table.
    start, end
        The window (``None``: the first / after the last impression).
    config
        :class:`DatasetConfig` (defaults when ``None``).
    progress
        Receives one step per snapshot.
    snapshot_builder
        ``(events, as_of) -> TrustSnapshot``; defaults to
        :func:`trustfeed.features.trust.build_snapshot` with ``config.trust``.

    Returns
    -------
    TrainingFrame

    Raises
    ------
    SchemaError
        When the window holds no impressions.

    Examples
    --------
    >>> from trustfeed.training.simulate import SimConfig, simulate
    >>> from trustfeed.features.events import validate_events
    >>> events = validate_events(simulate(SimConfig(seed=1, merchants=30, days=6)).tables)
    >>> data = build_training_frame(events, start="2026-01-04", config=DatasetConfig(snapshot_every_days=3))
    >>> bool((data.frame["snapshot_at"] <= data.frame["ts"]).all()), int(data.groups().sum()) == len(data)
    (True, True)
    """
    config = config or DatasetConfig()
    progress = progress or NullProgress()
    builder = snapshot_builder or default_snapshot_builder(config)
    plan = plan_training_frame(events, start, end, config)
    history = viewer_history(events, config)

    def tables() -> Iterator[tuple[pd.Timestamp, Any, Any]]:
        # one snapshot alive at a time: each is used for its rows, then dropped
        for i, as_of in enumerate(plan.times):
            progress("building trust snapshot and context", i + 1, len(plan.times))
            # with the fresh history, the context's own viewer tables would be replaced: not built
            yield as_of, builder(events, as_of), build_context_tables(events, as_of, config.context, viewer=history is None)

    schema: dict[str, Any] | None = None
    blocks: list[np.ndarray] = []
    trusts: list[np.ndarray] = []
    rows_of: list[np.ndarray] = []
    for as_of, snapshot, context in tables():
        if schema is None:
            schema = feature_schema(snapshot, context, plan.categories)
        rows = np.flatnonzero((plan.window["snapshot_at"] == as_of).to_numpy())
        block, trust = snapshot_features(plan.window.iloc[rows], snapshot, context, schema, history)
        blocks.append(block)
        trusts.append(trust)
        rows_of.append(rows)
    if schema is None:  # unreachable: the window is non-empty, so there is a snapshot time
        raise SchemaError("impressions", "ts", "at least one snapshot time", "none")
    features = np.empty((len(plan.window), len(schema["feature_names"])), dtype=np.float64)
    policy_trust = np.empty(len(plan.window), dtype=np.float64)
    for rows, block, trust in zip(rows_of, blocks, trusts, strict=True):
        features[rows] = block
        policy_trust[rows] = trust
    frame = assemble_rows(plan.window, features, schema, events, config, policy_trust=policy_trust)
    return TrainingFrame(
        frame=frame,
        feature_names=tuple(schema["feature_names"]),
        categorical=tuple(schema["categorical"]),
        monotone=tuple(int(d) for d in schema["monotone"]),
        schema=schema,
    )


# ----------------------------------------------------------------------------- shared by both backends
# (the Dask backend, training/_dask_training.py, runs the same steps per partition of requests)


@dataclass(frozen=True)
class FramePlan:
    """The impressions of a training window with the snapshot time of each row.

    Attributes
    ----------
    window
        The impressions with ``start <= ts < end`` (index reset) and a ``snapshot_at`` column.
    times
        The snapshot times, ascending.
    categories
        Merchant categories in code order (see :func:`feature_schema`).
    """

    window: pd.DataFrame
    times: tuple[pd.Timestamp, ...]
    categories: list[str]


def viewer_history(events: EventLog, config: DatasetConfig) -> ViewerHistory | None:
    """The running viewer history the frame reads when ``config.fresh_viewer_history`` (else ``None``)."""
    return ViewerHistory(events, config.context) if config.fresh_viewer_history else None


def snapshot_features(
    rows: pd.DataFrame, snapshot: SnapshotFrames, context: ContextTables | None, schema: Mapping[str, Any],
    history: ViewerHistory | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and policy trust of the window's ``rows`` that read one snapshot and context.

    With a ``history`` (:func:`viewer_history`), each day's rows read the viewer's history as
    of the start of their own day: one assembler per snapshot, its viewer tables swapped day
    by day (:meth:`~trustfeed.features.context.FeatureAssembler.with_viewer`). The result
    equals ``FeatureAssembler(snapshot, context')`` where ``context'`` is ``context`` with its
    viewer tables built as of that day, which is what serving computes from such tables.
    """
    if history is None or len(rows) == 0:
        features, status = FeatureAssembler(snapshot, context, schema=dict(schema)).transform_with_status(rows)
        return features, status.trust
    day = rows["ts"].dt.floor("D")
    days = sorted(day.unique())
    cursor = history.cursor()
    base = FeatureAssembler(snapshot, context, schema=dict(schema), viewer=cursor.at(days[0]))
    features = np.empty((len(rows), len(schema["feature_names"])), dtype=np.float64)
    trust = np.empty(len(rows), dtype=np.float64)
    for i, at in enumerate(days):
        assembler = base if i == 0 else base.with_viewer(cursor.at(at))
        chosen = np.flatnonzero((day == at).to_numpy())
        features[chosen], status = assembler.transform_with_status(rows.iloc[chosen])
        trust[chosen] = status.trust
    return features, trust


def default_snapshot_builder(config: DatasetConfig) -> Callable[[EventLog, pd.Timestamp], Any]:
    """``(events, as_of) -> TrustSnapshot`` with ``config.trust``."""
    from ..features.trust import build_snapshot

    trust_config = config.trust

    def snapshot_builder(log: EventLog, as_of: pd.Timestamp) -> Any:
        return build_snapshot(log, as_of, config=trust_config)

    return snapshot_builder


def plan_training_frame(events: EventLog, start: TimeLike | None, end: TimeLike | None, config: DatasetConfig) -> FramePlan:
    """The window's impressions and the as-of time of the snapshot each one reads."""
    impressions = events["impressions"]
    keep = np.ones(len(impressions), dtype=bool)
    if start is not None:
        keep &= (impressions["ts"] >= to_utc(start)).to_numpy(dtype=bool, na_value=False)
    if end is not None:
        keep &= (impressions["ts"] < to_utc(end)).to_numpy(dtype=bool, na_value=False)
    window = impressions.loc[keep].reset_index(drop=True)
    if window.empty:
        raise SchemaError("impressions", "ts", f"impressions in [{start}, {end})", "none")

    anchor = to_utc(start) if start is not None else window["ts"].min()
    snapshot_at = _snapshot_times(window["ts"], anchor, config.snapshot_every_days)
    times = tuple(sorted(snapshot_at.unique()))
    return FramePlan(window.assign(snapshot_at=snapshot_at.array), times, _category_order(events, max(times)))


def feature_schema(snapshot: SnapshotFrames, context: ContextTables | None, categories: list[str]) -> dict[str, Any]:
    """The assembler schema of the frame, with merchant category codes fixed for all snapshots."""
    schema = FeatureAssembler(snapshot, context).schema()
    schema["categories"] = {"merchant_category": categories}
    return schema


def assemble_rows(
    window: pd.DataFrame, features: np.ndarray, schema: Mapping[str, Any], events: EventLog, config: DatasetConfig,
    policy_trust: np.ndarray | None = None,
) -> pd.DataFrame:
    """Ids, graded label, snapshot time and features of ``window``'s rows, sorted by request.

    Rows come out in request-time order, the rows of a request together by position.
    ``policy_trust``: the merchant trust the ranking policy reads for each row (the trust
    index of the row's snapshot, :meth:`~trustfeed.features.context.FeatureAssembler.merchant_status`),
    kept as the column ``policy_trust`` (not a feature) for fitting the policy.
    """
    frame = pd.DataFrame({column: window[column].array for column in ID_COLUMNS})
    frame["label"] = graded_labels(window, events, config)
    frame["snapshot_at"] = window["snapshot_at"].array
    if policy_trust is not None:
        frame[POLICY_TRUST] = np.asarray(policy_trust, dtype=np.float64)
    frame = pd.concat([frame, pd.DataFrame(features, columns=list(schema["feature_names"]))], axis=1)
    request_time = frame.groupby("request_id", sort=False)["ts"].transform("min")
    return (
        frame.assign(_request_time=request_time)
        .sort_values(["_request_time", "request_id", "position"], kind="stable")
        .drop(columns="_request_time")
        .reset_index(drop=True)
    )


def _category_order(events: EventLog, until: pd.Timestamp) -> list[str]:
    """Merchant categories in order of first appearance (registration) before ``until``.

    Codes in order of appearance, not alphabetical, so a category first seen later gets a
    new code at the end and never renumbers the ones earlier rows were built with.
    """
    merchants = events["merchants"]
    if "category" not in merchants.columns:
        return []
    known = merchants.loc[(merchants["registered_at"] < until).to_numpy(dtype=bool, na_value=False)]
    seen = (
        pd.DataFrame({"category": known["category"].astype("string"), "at": known["registered_at"]})
        .dropna(subset=["category"])
        .sort_values(["at", "category"], kind="stable")
    )
    return seen["category"].drop_duplicates().tolist()


def time_split(
    data: TrainingFrame, valid_fraction: float = 0.2, valid_from: TimeLike | None = None
) -> tuple[TrainingFrame, TrainingFrame]:
    """Split by request time: the latest requests validate, whole requests on one side.

    Parameters
    ----------
    data
        A :class:`TrainingFrame`.
    valid_fraction
        Share of requests (by time) in the validation part, when ``valid_from`` is ``None``.
    valid_from
        Requests starting at or after this time validate.
    """
    if valid_from is None and not 0 < valid_fraction < 1:
        raise ConfigError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    request_time = data.frame.groupby("request_id", sort=False)["ts"].transform("min")
    if valid_from is not None:
        cut = to_utc(valid_from)
    else:
        starts = np.sort(data.frame.groupby("request_id", sort=False)["ts"].min().to_numpy())
        cut = to_utc(starts[int(np.floor(len(starts) * (1 - valid_fraction)))])
    valid = (request_time >= cut).to_numpy(dtype=bool)
    return data.subset(~valid), data.subset(valid)
