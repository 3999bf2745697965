"""The training frame and the rankers on a Dask cluster (``trustfeed train --backend dask``).

The same steps as the in-process job, spread over workers:

* the workers read their own row groups of ``impressions.parquet`` (when the job reads a
  dataset directory; an event log held in memory is sent in partitions instead), keep the
  training window and shuffle the rows by ``request_id``, so a request never spans two
  partitions; each request then goes to the partitions of the snapshot period it starts in
  (a second shuffle, by that period), so a partition reads one or two as-of snapshots, not
  all of them;
* the driver builds the as-of trust snapshots and context tables one at a time (small per
  merchant, creator and user tables next to the impressions) and hands each one to a worker
  as soon as it is built; a partition's join runs where its snapshot is;
* each partition joins its rows against the snapshot of their day and computes the graded
  labels on the worker (:func:`~.dataset.assemble_rows`, the code the in-process frame
  uses), and the frame stays on the workers;
* ``lightgbm.dask.DaskLGBMRanker`` trains data-parallel on the training requests, with the
  validation requests as its evaluation set; the warm early-stopping rule then picks the
  best round from the recorded curve. A worker lost while the frame is built or while
  LightGBM trains stops the job with a :class:`~trustfeed.features.errors.ClusterError`
  (the snapshots it held and LightGBM's network cannot be rebuilt without it).

Only what the rest of the job needs comes back to the driver: the validation requests (for
the purchase calibration and the balancer's target Gini), the purchased training rows (for
the bad-order model) and, when the job fits the purchase model, the rows its two stages
learn from: a uniform sample of whole training requests, drawn on the workers by a hash of
``request_id`` (at most about ``PurchaseModelConfig.max_click_rows`` rows, the same cap the
in-process fit applies), for the click stage, and the clicked training rows for the purchase
stage. The purchase model is fitted on the driver while the workers train LambdaMART. See
``docs/training.md`` for the limits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..features.errors import ClusterError, SchemaError
from ..features.events import EventLog, empty_table, to_utc, validate_table
from ..features.progress import NullProgress, Progress
from ..ranker.lambdamart import LambdaMART, LambdaMARTConfig, requests_with_positives
from ..ranker.purchase import PurchaseModel, PurchaseModelConfig, in_request_sample
from ..features.context import ViewerHistory, build_context_tables
from ._purchase_fit import fit_or_skip
from .dataset import (
    DatasetConfig,
    TrainingFrame,
    _category_order,
    _snapshot_times,
    assemble_rows,
    default_snapshot_builder,
    feature_schema,
    snapshot_features,
    viewer_history,
)

__all__ = ["DaskFit", "dask_client", "fit_on_dask", "in_request_sample"]

# rows per partition the frame aims at: big enough to amortise a task, small enough that
# a worker holds a few partitions of the ~40 float feature columns at once
ROWS_PER_PARTITION = 250_000
# the impressions the workers read: the columns the frame and its labels use
_IMPRESSIONS_FILE = "impressions.parquet"
# the label tables every worker needs; impressions travel partitioned, the rest stays behind
_LABEL_TABLES = ("orders", "after_sales", "reports", "reviews")
# seconds LightGBM's workers wait for each other before giving up (its default is 2 hours)
_NETWORK_TIMEOUT_MINUTES = 2
_CONNECT_TIMEOUT = "10s"
# how often the driver checks that every worker is still there while LightGBM trains
_WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class DaskFit:
    """What the distributed part of a training job hands back to the driver.

    Attributes
    ----------
    model, plain_model
        The fitted rankers (``plain_model`` ``None`` when not asked for).
    valid_part
        The validation requests, gathered (the policy calibration reads them).
    fit_purchases
        The purchased rows of the training requests, gathered (the bad-order model reads them).
    train_requests, train_rows, partitions
        Size of the training part and the number of partitions it was trained from.
    purchase_model, purchase_fitted
        The purchase model (``None`` when not asked for or not fitted) and its figures, or why
        it was skipped (``purchase_model.*`` keys, logged as the in-process job logs them).
    """

    model: LambdaMART
    plain_model: LambdaMART | None
    valid_part: TrainingFrame
    fit_purchases: TrainingFrame
    train_requests: int
    train_rows: int
    partitions: int
    purchase_model: PurchaseModel | None = None
    purchase_fitted: Mapping[str, Any] = field(default_factory=dict)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2, connect_timeout: str = _CONNECT_TIMEOUT) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler``, or to a local cluster of ``workers`` processes.

    Raises
    ------
    ClusterError
        ``distributed`` is not installed or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ClusterError("the Dask backend needs the 'distributed' package: pip install 'trustfeed[dask]'") from error

    import logging

    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(scheduler, timeout=connect_timeout)
    except (OSError, TimeoutError, ValueError) as error:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(error).split())}") from None
    try:
        yield client
    finally:
        client.close()


def _label_events(events: EventLog) -> EventLog:
    """The tables the graded labels read; the rest (impressions above all) left empty."""
    tables = {name: frame if name in _LABEL_TABLES else frame.iloc[:0] for name, frame in events.tables.items()}
    return replace(events, tables=tables)


def _rows_naming(table: pd.DataFrame, column: str, ids: pd.Series) -> pd.DataFrame:
    """The rows of ``table`` whose ``column`` is one of ``ids``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.empty or column not in table.columns:
        return table
    values = pa.array(table[column], type=pa.large_string(), from_pandas=True)
    wanted = pa.array(ids.dropna().unique(), type=pa.large_string(), from_pandas=True)
    return table.loc[pc.is_in(values, value_set=wanted).to_numpy(zero_copy_only=False)]


def _labels_of(part: pd.DataFrame, events: EventLog) -> EventLog:
    """The label tables cut to what ``part``'s labels read: the outcomes of its orders and the
    reports its buyers filed (a label reads nothing else, so it comes out the same)."""
    order_ids = part["order_id"] if "order_id" in part.columns else pd.Series([], dtype="string")
    tables = dict(events.tables)
    for name in ("orders", "after_sales", "reviews"):
        tables[name] = _rows_naming(tables[name], "order_id", order_ids)
    tables["reports"] = _rows_naming(tables["reports"], "reporter_id", part["user_id"])
    return replace(events, tables=tables)


@dataclass(frozen=True)
class _Window:
    """The training window as the driver plans it, without a copy of its impressions.

    ``anchor``, ``every`` and ``end`` give each impression its snapshot time as
    :func:`~.dataset.plan_training_frame` does; ``times`` are the snapshot times, ``rows``
    the window's impressions, ``categories`` the merchant category codes.
    """

    end: pd.Timestamp
    anchor: pd.Timestamp
    every: int
    times: tuple[pd.Timestamp, ...]
    rows: int
    categories: list[str]


def _plan_window(events: EventLog, end: pd.Timestamp, config: DatasetConfig) -> _Window:
    """Snapshot times of the impressions before ``end`` (reads their ``ts`` column only)."""
    ts = events["impressions"]["ts"]
    in_window = ts.loc[(ts < to_utc(end)).to_numpy(dtype=bool, na_value=False)]
    if in_window.empty:
        raise SchemaError("impressions", "ts", f"impressions in [None, {end})", "none")
    anchor = in_window.min()
    times = tuple(sorted(_snapshot_times(in_window, anchor, config.snapshot_every_days).unique()))
    return _Window(to_utc(end), anchor, config.snapshot_every_days, times, len(in_window),
                   _category_order(events, max(times)))


def _window_rows(impressions: pd.DataFrame, window: _Window) -> pd.DataFrame:
    """The impressions in ``window`` with the snapshot time each one reads (``snapshot_at``)."""
    keep = (impressions["ts"] < window.end).to_numpy(dtype=bool, na_value=False)
    rows = impressions.loc[keep].reset_index(drop=True)
    return rows.assign(snapshot_at=_snapshot_times(rows["ts"], window.anchor, window.every).array)


def _read_impressions(source: tuple[str, tuple[int, ...]], window: _Window) -> pd.DataFrame:
    """Row groups of an impressions Parquet file, validated, cut to ``window`` (on a worker)."""
    import pyarrow.parquet as pq

    path, groups = source
    try:
        parquet = pq.ParquetFile(path)
        wanted = [name for name in parquet.schema_arrow.names if name in empty_table("impressions").columns]
        part = parquet.read_row_groups(list(groups), columns=wanted).to_pandas()
    except Exception as error:  # noqa: BLE001 - OSError or pyarrow's own: the worker cannot read its part
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise ClusterError(f"a Dask worker cannot read row groups {list(groups)} of {path}: {detail}") from None
    return _window_rows(validate_table("impressions", part), window)


def _parquet_parts(path: Path, window: _Window) -> list[tuple[str, tuple[int, ...]]]:
    """The row groups of ``path`` that may hold impressions before the window's end, one per part."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
        ts_column = metadata.schema.to_arrow_schema().get_field_index("ts")
    except Exception as error:  # noqa: BLE001 - OSError or pyarrow's own
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise SchemaError("impressions", None, f"a readable {path.name}", detail) from None
    parts: list[tuple[str, tuple[int, ...]]] = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(ts_column).statistics if ts_column >= 0 else None
        if stats is not None and stats.has_min_max:
            first = pd.Timestamp(stats.min)
            if (first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC")) >= window.end:
                continue  # every impression of this group is after the window (a log written in time order)
        parts.append((str(path), (group,)))
    return parts


def _impressions_on_workers(events: EventLog, events_dir: Path | None, window: _Window, dd: Any) -> tuple[Any, str]:
    """The window's impressions as a Dask frame (read by the workers when there is a Parquet file)."""
    path = None if events_dir is None else Path(events_dir) / _IMPRESSIONS_FILE
    meta = _window_rows(empty_table("impressions"), window)
    if path is not None and path.is_file():
        parts = _parquet_parts(path, window)
        if parts:
            return (dd.from_map(_read_impressions, parts, window=window, meta=meta, enforce_metadata=False,
                                label="read-impressions"),
                    f"the workers read {len(parts)} row groups of {path}")
    # an event log held in memory (or CSV files): its window travels in the task graph
    rows = _window_rows(events["impressions"], window)
    return (dd.from_pandas(rows, npartitions=max(1, math.ceil(len(rows) / ROWS_PER_PARTITION)), sort=False),
            "the driver sends the window's impressions")


def _period_key(part: pd.DataFrame, window: _Window, per_period: int) -> pd.DataFrame:
    """``_part``: the partition of each row's request (whole requests: ``part`` holds them whole).

    A request goes to one of the ``per_period`` partitions of the snapshot period its first
    impression falls in, chosen by a hash of its ``request_id``.
    """
    request_time = part.groupby("request_id", sort=False)["ts"].transform("min")
    period = pd.Index(window.times).get_indexer(pd.Index(_snapshot_times(request_time, window.anchor, window.every)))
    spread = (pd.util.hash_pandas_object(part["request_id"], index=False).to_numpy() % np.uint64(per_period)).astype(np.int64)
    return part.assign(_part=period.astype(np.int64) * per_period + spread)


def _partition_frame(
    part: pd.DataFrame, tables: Mapping[pd.Timestamp, tuple[Any, Any]], events: EventLog,
    schema: Mapping[str, Any], config: DatasetConfig, history: ViewerHistory | None = None,
) -> pd.DataFrame:
    """One partition of impressions (whole requests) -> its rows of the training frame.

    ``history``: the viewer history of ``config.fresh_viewer_history`` (the frame's own
    :func:`~.dataset.viewer_history`); each partition advances its own cursor over it.
    """
    # in the frame's row order up front, so the rows assemble_rows returns line up with these
    part = part.reset_index(drop=True)
    request_time = part.groupby("request_id", sort=False)["ts"].transform("min")
    part = (part.assign(_request_time=request_time)
            .sort_values(["_request_time", "request_id", "position"], kind="stable")
            .drop(columns=["_request_time", *(["_part"] if "_part" in part.columns else [])])
            .reset_index(drop=True))
    features = np.empty((len(part), len(schema["feature_names"])), dtype=np.float64)
    policy_trust = np.empty(len(part), dtype=np.float64)
    for as_of in pd.unique(part["snapshot_at"]):
        rows = np.flatnonzero((part["snapshot_at"] == as_of).to_numpy())
        if pd.Timestamp(as_of) not in tables:
            raise SchemaError("impressions", "ts", "requests whose impressions fall within two snapshot periods",
                              f"a request with an impression as of {pd.Timestamp(as_of)} (e.g. "
                              f"{part['request_id'].iloc[rows[0]]!r})")
        snapshot, context = tables[pd.Timestamp(as_of)]
        features[rows], policy_trust[rows] = snapshot_features(part.iloc[rows], snapshot, context, schema, history)
    # every partition would otherwise work out the outcome of every order of the log
    frame = assemble_rows(part, features, schema, _labels_of(part, events), config, policy_trust=policy_trust)
    purchased = (part["purchased"].astype("boolean").fillna(False).to_numpy(dtype=bool) if "purchased" in part.columns
                 else np.zeros(len(part), dtype=bool))
    return frame.assign(purchased=purchased)


def _request_split(part: pd.DataFrame, valid_from: pd.Timestamp, validation: bool) -> pd.DataFrame:
    request_time = part.groupby("request_id", sort=False)["ts"].transform("min")
    keep = (request_time >= valid_from).to_numpy(dtype=bool) == validation
    return part.loc[keep].reset_index(drop=True)


def _group_sizes(part: pd.DataFrame) -> pd.Series:
    ids = part["request_id"].to_numpy()
    if len(ids) == 0:
        return pd.Series(np.zeros(0, dtype=np.int64))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return pd.Series(np.diff(np.r_[starts, len(ids)]).astype(np.int64))


def _requests_with_positives(part: pd.DataFrame) -> pd.DataFrame:
    """The requests of a partition with a positive label (the rest add no gradient: see
    ``LambdaMARTConfig.skip_requests_without_positives``)."""
    rows, _ = requests_with_positives(part["label"].to_numpy(), _group_sizes(part).to_numpy())
    return part if rows.all() else part.loc[rows].reset_index(drop=True)


def _same(part: pd.DataFrame) -> pd.DataFrame:
    return part


def _spread_non_empty(client: Any, frame: Any, meta: pd.DataFrame, dd: Any) -> tuple[Any, int]:
    """The partitions of persisted ``frame`` that hold rows, on every worker where there are enough.

    An empty partition would stall LightGBM's network. Each LightGBM worker evaluates only
    the validation rows it holds, and the frame's partitions sit where their snapshots were
    sent (one period's on one worker), so a worker without partitions gets some moved to it,
    and the partitions are ordered so that consecutive ones sit on different workers.
    """
    from distributed import futures_of

    # a persisted frame's futures, in partition order (keys are (name, index))
    parts = sorted(futures_of(frame), key=lambda future: future.key[-1] if isinstance(future.key, tuple) else 0)
    sizes = client.gather([client.submit(len, part, pure=False) for part in parts])
    kept = [part for part, size in zip(parts, sizes, strict=True) if size > 0]
    if not kept:
        return frame, 0
    holders = {part.key: sorted(where)[0] for part, where in
               ((part, client.who_has([part]).get(part.key, ())) for part in kept) if where}
    load: dict[str, list[int]] = {worker: [] for worker in sorted(_workers(client))}
    for i, part in enumerate(kept):
        load.setdefault(holders.get(part.key, ""), []).append(i)
    load.pop("", None)
    for worker in [w for w, held in load.items() if not held]:
        richest = max(load, key=lambda w: len(load[w]))
        if len(load[richest]) < 2:
            break
        i = load[richest].pop()
        kept[i] = client.submit(_same, kept[i], workers=[worker], allow_other_workers=False, pure=False)
        load[worker].append(i)
    # workers taken in turn: LightGBM adds validation part j to training part j (modulo their
    # number), so the first training parts must sit on different workers
    turns = [held for held in load.values() if held]
    order = [held[k] for k in range(max(map(len, turns), default=0)) for held in turns if k < len(held)]
    order += [i for i in range(len(kept)) if i not in set(order)]  # parts of no known holder
    return dd.from_delayed([kept[i] for i in order], meta=meta, verify_meta=False), len(kept)


def _fit_ranker(
    client: Any, config: LambdaMARTConfig, fit: Any, valid: Any, columns: list[str], schema: Mapping[str, Any],
    monotone: tuple[int, ...], what: str,
) -> LambdaMART:
    from lightgbm.dask import DaskLGBMRanker

    params = config.lgb_params()
    for key in ("num_threads", "metric", "eval_at"):  # set by the Dask estimator / fit below
        params.pop(key, None)
    if any(monotone):
        params["monotone_constraints"] = list(monotone)
        params["monotone_constraints_method"] = config.monotone_method
    params["time_out"] = _NETWORK_TIMEOUT_MINUTES
    ranker = DaskLGBMRanker(client=client, n_estimators=config.num_rounds, **params)
    categorical = [c for c in schema.get("categorical", []) if c in columns]

    def fit_and_fetch() -> Any:
        with warnings.catch_warnings():
            # "n_jobs will be ignored": the estimator's default, Dask sets threads per worker
            warnings.filterwarnings("ignore", message=".*will be ignored", category=UserWarning)
            ranker.fit(
                fit[columns], fit["label"], group=fit.map_partitions(_group_sizes, meta=("group", "int64")),
                eval_X=(valid[columns],), eval_y=(valid["label"],),
                eval_group=[valid.map_partitions(_group_sizes, meta=("group", "int64"))],
                eval_names=["valid"], eval_metric="ndcg", eval_at=list(config.eval_at),
                categorical_feature=categorical or "auto",
            )
        return ranker.to_local()

    local = _watched(client, fit_and_fetch, what)
    return LambdaMART.from_booster(config, local.booster_, feature_schema=schema, monotone=monotone,
                                   evals_result=getattr(local, "evals_result_", None))


def _sampled_requests(part: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    return part.loc[in_request_sample(part["request_id"].to_numpy(), share, seed)]


def _clicked_rows(part: pd.DataFrame) -> pd.DataFrame:
    """Rows with a click (a label of 1 or more) or a purchase: the purchase stage's rows."""
    return part.loc[(part["label"].to_numpy() >= 1) | part["purchased"].to_numpy(dtype=bool)]


def _fit_purchase(
    config: PurchaseModelConfig, sample: TrainingFrame, clicked: TrainingFrame, valid_part: TrainingFrame,
    train_rows: int, min_purchases: int, progress: Progress,
) -> tuple[PurchaseModel | None, dict[str, Any]]:
    """The purchase model from the gathered sample and clicked rows (as ``train.fit_purchase_model``)."""
    bought = clicked.frame["purchased"].to_numpy(dtype=bool)
    bought_valid = valid_part.frame["purchased"].to_numpy(dtype=bool)
    clicked_sample = (sample.labels >= 1) | sample.frame["purchased"].to_numpy(dtype=bool)

    def fit() -> PurchaseModel:
        return PurchaseModel(config).fit_sampled(
            (sample.features(), clicked_sample, sample.positions), (clicked.features(), bought),
            (valid_part.features(), valid_part.labels >= 1, bought_valid, valid_part.positions),
            train_rows=train_rows, feature_names=valid_part.feature_names, categorical=valid_part.categorical,
            monotone=valid_part.monotone,
        )

    return fit_or_skip(fit, (int(bought.sum()), int(bought_valid.sum())), min_purchases, progress,
                       f"Dask: training the purchase model on the driver ({len(sample):,} sampled and "
                       f"{len(clicked):,} clicked rows of {train_rows:,})")


def _gather(frame: Any, plan_schema: Mapping[str, Any], table: pd.DataFrame | None = None) -> TrainingFrame:
    """``frame`` collected to the driver in the in-process frame's row order (``table``: already computed)."""
    table = (frame.compute() if table is None else table).reset_index(drop=True)
    request_time = table.groupby("request_id", sort=False)["ts"].transform("min")
    table = (table.assign(_request_time=request_time)
             .sort_values(["_request_time", "request_id", "position"], kind="stable")
             .drop(columns="_request_time").reset_index(drop=True))
    return TrainingFrame(table, tuple(plan_schema["feature_names"]), tuple(plan_schema["categorical"]),
                         tuple(int(d) for d in plan_schema["monotone"]), dict(plan_schema))


def fit_on_dask(
    events: EventLog,
    *,
    end: pd.Timestamp,
    valid_from: pd.Timestamp,
    config: DatasetConfig,
    model_config: LambdaMARTConfig,
    plain_config: LambdaMARTConfig | None,
    plain_schema_of: Any,
    scheduler: str | None = None,
    partitions: int | None = None,
    progress: Progress | None = None,
    purchase_config: PurchaseModelConfig | None = None,
    min_purchases: int = 20,
    snapshot_builder: Callable[[EventLog, pd.Timestamp], Any] | None = None,
    events_dir: Path | None = None,
) -> DaskFit:
    """Build the training frame on a Dask cluster and train the ranker(s) there.

    Parameters
    ----------
    events
        The validated event log (cut at the job's ``until``).
    end, valid_from
        Training requests are those before ``valid_from``; validation requests from there to ``end``.
    config
        :class:`~trustfeed.training.dataset.DatasetConfig` of the frame.
    model_config, plain_config
        The ranker's config and the plain model's (``None``: no plain model).
    plain_schema_of
        ``schema -> schema`` without trust features (the job's ``plain_feature_schema``).
    scheduler
        A Dask scheduler address; ``None``: a local cluster for the job.
    partitions
        Partitions of the frame (``None``: about ``ROWS_PER_PARTITION`` rows each, at least two).
    progress
        Receives one call per step.
    purchase_config
        Fit the purchase model with this config (``None``: no purchase model); it is skipped,
        with the reason in ``DaskFit.purchase_fitted``, when either window has fewer than
        ``min_purchases`` purchases or a stage sees one outcome only.
    snapshot_builder
        ``(events, as_of) -> TrustSnapshot`` run on the driver for each snapshot time, as
        :func:`~trustfeed.training.dataset.build_training_frame` takes it (``None``:
        :func:`~trustfeed.training.dataset.default_snapshot_builder`); the job passes
        :func:`~trustfeed.training.train.index_source_recorder`'s, so both backends know how
        each snapshot's trust index was made.
    events_dir
        The dataset directory ``events`` was loaded from: the workers read their parts of its
        ``impressions.parquet`` themselves (every worker must see the file at this path).
        ``None``, or no such file: the driver sends the window's impressions.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached or has no workers, a worker cannot read the
        impressions file, or a worker left while the frame was built or LightGBM trained.
    SchemaError
        No complete training or validation request, the impressions file no longer holds
        the impressions ``events`` was loaded with, or a request whose impressions fall
        more than one snapshot period apart.
    """
    import dask
    import dask.dataframe as dd

    progress = progress or NullProgress()
    window = _plan_window(events, end, config)
    with dask_client(scheduler) as client, dask.config.set({"dataframe.shuffle.method": "tasks"}):
        workers = client.scheduler_info().get("workers", {})
        progress(f"Dask: {len(workers)} workers at {client.scheduler.address}")
        if not workers:
            raise ClusterError(f"the Dask scheduler at {client.scheduler.address} has no workers")
        # the workers import what the frame needs (pandas, LightGBM, the feature code: seconds
        # each) while the driver plans
        warming = [client.submit(_ready, pure=False, workers=[address], allow_other_workers=False)
                   for address in workers]
        n_periods = len(window.times)
        # at least one partition per worker and period: LightGBM's workers each need validation rows
        per_period = max(len(workers), math.ceil((partitions or math.ceil(window.rows / ROWS_PER_PARTITION)) / n_periods))
        n_parts = n_periods * per_period
        impressions, how = _impressions_on_workers(events, events_dir, window, dd)
        progress(f"Dask: reading and shuffling {window.rows:,} impressions into {n_parts} partitions of whole "
                 f"requests by snapshot period ({how})")
        by_request = impressions.shuffle("request_id", npartitions=max(2, math.ceil(window.rows / ROWS_PER_PARTITION)))
        keyed = by_request.map_partitions(_period_key, window, per_period,
                                          meta=by_request._meta.assign(_part=np.zeros(0, dtype=np.int64)))
        # range partitions of the key: partition i holds the requests of period i // per_period
        keyed = keyed.set_index("_part", divisions=list(range(n_parts + 1)))
        # started now: the workers read and shuffle while the driver builds the snapshots
        [keyed] = client.persist([keyed])
        futures, schema = _snapshots_to_workers(client, events, window, config, snapshot_builder, progress)
        label_log = _label_events(events)
        history = viewer_history(events, config)
        meta = _partition_frame(_window_rows(empty_table("impressions"), window), {}, label_log, schema, config, history)
        joined = [_joined(client, keyed, futures, label_log, history, window, per_period, meta, schema, config, dd)]
        # from here only ``joined`` holds the shuffled impressions and the snapshots: the workers
        # drop them once the frame's parts are built
        del keyed, futures
        progress(f"Dask: joining {window.rows:,} impressions with their snapshots and labelling them on the workers")
        fitted = _fit_with_client(client, joined, window.rows, schema, tuple(int(d) for d in schema["monotone"]),
                                  meta, valid_from, model_config, plain_config, plain_schema_of, progress,
                                  purchase_config, min_purchases)
        del warming
        return fitted


def _joined(
    client: Any, keyed: Any, futures: list[Any], label_log: EventLog, history: ViewerHistory | None,
    window: _Window, per_period: int, meta: pd.DataFrame, schema: Mapping[str, Any], config: DatasetConfig, dd: Any,
) -> Any:
    """The training frame: each partition of ``keyed`` joined on a worker with the snapshots of
    its period and the next (whose futures alone it depends on) and labelled; the label tables
    and the viewer history (``fresh_viewer_history``) go to every worker."""
    import dask

    [labels_on_workers, history_on_workers] = client.scatter([label_log, history], broadcast=True, hash=False)

    def tables_of(index: int) -> dict[pd.Timestamp, Any]:
        period = index // per_period  # and the next one, for requests that run past its end
        return {window.times[q]: futures[q] for q in (period, period + 1) if q < len(window.times)}

    return dd.from_delayed(
        [dask.delayed(_partition_frame, pure=False)(part, tables_of(i), labels_on_workers, schema, config,
                                                    history_on_workers)
         for i, part in enumerate(keyed.to_delayed())],
        meta=meta, verify_meta=False)


def _snapshots_to_workers(
    client: Any, events: EventLog, window: _Window, config: DatasetConfig,
    snapshot_builder: Callable[[EventLog, pd.Timestamp], Any] | None, progress: Progress,
) -> tuple[list[Any], dict[str, Any]]:
    """The trust snapshot and context tables of each snapshot time, built on the driver one at a
    time and each handed to a worker at once (the driver keeps none): their futures, and the
    frame's feature schema."""
    builder = snapshot_builder or default_snapshot_builder(config)
    futures: list[Any] = []
    schema: dict[str, Any] | None = None
    for i, as_of in enumerate(window.times):
        progress("building trust snapshot and context", i + 1, len(window.times))
        # the workers read the viewer's history as of each day when it is fresh: no viewer tables then
        tables = (builder(events, as_of),
                  build_context_tables(events, as_of, config.context, viewer=not config.fresh_viewer_history))
        if schema is None:
            schema = feature_schema(tables[0], tables[1], window.categories)
        futures.append(client.scatter([tables], hash=False)[0])
        del tables
    if schema is None:  # unreachable: the window is non-empty, so there is a snapshot time
        raise SchemaError("impressions", "ts", "at least one snapshot time", "none")
    return futures, schema


def _ready() -> bool:
    """A task that makes a worker import this module and LightGBM (see :func:`fit_on_dask`)."""
    import lightgbm  # noqa: F401

    return True


def _workers(client: Any) -> set[str]:
    return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.workers)))


def _watched(client: Any, action: Any, what: str) -> Any:
    """Run ``action`` (a distributed LightGBM fit) and fail fast when a worker leaves meanwhile.

    LightGBM's workers talk to each other directly: when one dies, the others wait on its
    socket and Dask hands the dead worker's task to a busy survivor, so the fit would hang
    until LightGBM's network timeout. Losing a worker during training is therefore a
    :class:`ClusterError` at once. The frame is built under the same watch: the snapshots a
    worker held were sent by the driver, so Dask cannot recompute them elsewhere.
    """
    import threading

    before = _workers(client)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="dask-lightgbm-fit", daemon=True)
    worker.start()
    def stop_if_a_worker_left() -> None:
        lost = before - _workers(client)
        if lost:
            raise ClusterError(f"Dask worker {sorted(lost)[0]} left while {what}; the job stopped "
                               f"(no bundle written): restart the workers and run it again")

    while worker.is_alive():
        worker.join(_WATCH_SECONDS)
        if not worker.is_alive():
            break
        stop_if_a_worker_left()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, (ClusterError, SchemaError)):
            raise error
        # a fit that failed because a worker died (e.g. its task was cancelled before the next
        # watch tick) reports the real cause, not Dask's follow-on error
        stop_if_a_worker_left()
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise ClusterError(f"distributed training failed while {what}: {type(error).__name__}: {detail}") from None
    return outcome["value"]


def _frame_parts(
    client: Any, frame: Any, window_rows: int, meta: pd.DataFrame, valid_from: pd.Timestamp,
    model_config: LambdaMARTConfig, schema: Mapping[str, Any], progress: Progress,
    purchase_config: PurchaseModelConfig | None,
) -> tuple[Any, Any, int, int, int, list[TrainingFrame]]:
    """The frame's training and validation parts persisted on the workers (as LightGBM reads
    them), their sizes, and what the driver gathers of them."""
    import dask
    import dask.dataframe as dd

    fit = frame.map_partitions(_request_split, valid_from, False, meta=meta)
    valid = frame.map_partitions(_request_split, valid_from, True, meta=meta)
    fit, valid = client.persist([fit, valid])
    # what LightGBM sees: with the trust-aware model's setting, for both models
    fit_lgb, valid_lgb = fit, valid
    if model_config.skip_requests_without_positives:
        fit_lgb = fit.map_partitions(_requests_with_positives, meta=meta)
        valid_lgb = valid.map_partitions(_requests_with_positives, meta=meta)
        fit_lgb, valid_lgb = client.persist([fit_lgb, valid_lgb])
    sizes = fit.map_partitions(lambda p: pd.Series([len(p), p["request_id"].nunique()]), meta=(None, "int64"))
    valid_sizes = valid.map_partitions(len, meta=(None, "int64"))
    sizes, valid_sizes = dask.compute(sizes, valid_sizes)
    train_rows, train_requests = int(sizes.iloc[0::2].sum()), int(sizes.iloc[1::2].sum())
    if train_rows + int(valid_sizes.sum()) != window_rows:
        raise SchemaError("impressions", None, f"the {window_rows:,} impressions of the training window loaded",
                          f"{train_rows + int(valid_sizes.sum()):,} read by the workers (the file changed since)")
    fit_lgb, fit_partitions = _spread_non_empty(client, fit_lgb, meta, dd)
    valid_lgb, valid_partitions = _spread_non_empty(client, valid_lgb, meta, dd)
    if fit_partitions == 0 or valid_partitions == 0:
        raise SchemaError("impressions", "ts", "complete requests in both the training and validation windows",
                          f"{fit_partitions} training and {valid_partitions} validation partitions with rows")
    # what the driver needs, gathered before the boosting so the purchase model can train on
    # the driver meanwhile: the validation requests, and the purchased training rows or, for
    # the purchase model, the click stage's sample of requests and every clicked row (the
    # purchased rows among them)
    wanted = [valid]
    if purchase_config is None:
        progress("Dask: gathering the validation requests and the purchased training rows")
        wanted.append(fit.map_partitions(lambda p: p.loc[p["purchased"].to_numpy(dtype=bool)], meta=meta))
    else:
        cap = purchase_config.max_click_rows
        share = 1.0 if cap <= 0 or train_rows <= cap else cap / train_rows
        progress(f"Dask: gathering the validation requests, the clicked training rows and a {share:.1%} sample "
                 f"of the training requests for the purchase model")
        wanted += [fit.map_partitions(_clicked_rows, meta=meta),
                   fit.map_partitions(_sampled_requests, share, purchase_config.seed, meta=meta)]
    gathered = [_gather(None, schema, table) for table in dask.compute(*wanted)]
    return fit_lgb, valid_lgb, fit_partitions, train_rows, train_requests, gathered


def _fit_with_client(
    client: Any, frame: list[Any], window_rows: int, schema: Mapping[str, Any], monotone: tuple[int, ...],
    meta: pd.DataFrame, valid_from: pd.Timestamp, model_config: LambdaMARTConfig,
    plain_config: LambdaMARTConfig | None, plain_schema_of: Any, progress: Progress,
    purchase_config: PurchaseModelConfig | None = None, min_purchases: int = 20,
) -> DaskFit:
    from concurrent.futures import ThreadPoolExecutor

    parts = _watched(client, lambda: _frame_parts(client, frame[0], window_rows, meta, valid_from, model_config,
                                                  schema, progress, purchase_config),
                     "building the training frame")
    frame.clear()  # the last reference to the shuffled impressions and the snapshots on the workers
    fit_lgb, valid_lgb, fit_partitions, train_rows, train_requests, gathered = parts
    valid_part = gathered[0]
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purchase-model")
    try:
        purchase_later = None
        if purchase_config is None:
            purchases = gathered[1]
        else:
            clicked, sample = gathered[1], gathered[2]
            bought = clicked.frame["purchased"].to_numpy(dtype=bool)
            purchases = TrainingFrame(clicked.frame.loc[bought].reset_index(drop=True), clicked.feature_names,
                                      clicked.categorical, clicked.monotone, clicked.schema)
            purchase_later = background.submit(_fit_purchase, purchase_config, sample, clicked, valid_part, train_rows,
                                               min_purchases, progress)
        progress(f"Dask: training LambdaMART on {train_requests:,} requests ({train_rows:,} impressions, "
                 f"{fit_partitions} partitions)")
        names = list(schema["feature_names"])
        model = _fit_ranker(client, model_config, fit_lgb, valid_lgb, names, schema, monotone, "training LambdaMART")
        plain_model = None
        if plain_config is not None:
            progress("Dask: training the plain LambdaMART without trust features")
            plain_schema = plain_schema_of(schema)
            plain_model = _fit_ranker(client, plain_config, fit_lgb, valid_lgb, list(plain_schema["feature_names"]),
                                      plain_schema, tuple(int(d) for d in plain_schema["monotone"]),
                                      "training the plain LambdaMART")
        purchase_model, purchase_fitted = purchase_later.result() if purchase_later is not None else (None, {})
    finally:
        background.shutdown(wait=False, cancel_futures=True)
    return DaskFit(model, plain_model, valid_part, purchases, train_requests, train_rows, fit_partitions,
                   purchase_model, purchase_fitted)
