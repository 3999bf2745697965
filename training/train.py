"""The training job: events -> trust-aware LambdaMART -> bundle -> MLflow run (and registry).

One call of :func:`train` does, in order:

1. load and validate the events (cut at ``until``) and split the impressions by time into
   train / validation / held-out windows (whole days, so daily snapshots never straddle);
2. start the MLflow run (a tracking store that cannot be reached fails here, before any work)
   and log every config, flattened, as params;
3. build the training frame (point-in-time features, graded labels), fit LambdaMART with early
   stopping on validation NDCG@10, and the plain LambdaMART without trust features that the
   evaluation compares against; fit the purchase model (:func:`fit_purchase_model`) and the
   expected-value policy (purchase calibration on the validation window, bad-order model on
   the training window's purchases) and set the
   balancer's target Gini relative to the validation window (:func:`fit_policy_and_target`);
4. save the model bundle **locally first** (trust snapshot and context as of the end of the
   data, so it is ready to serve), so a tracking failure later loses nothing;
5. evaluate on the held-out window (snapshot as of its start: no leakage) and write the report;
6. log step metrics (validation NDCG per boosting round), final metrics, tags, artifacts, the
   LightGBM Booster and the pyfunc model (whose artifact ``bundle`` is the bundle directory),
   and with ``register`` a new registered-model version under the alias ``challenger``.

A tracking server that goes away mid-run makes the job fail with
:class:`~trustfeed.training.registry.TrackingUnavailableError` (one line, saying where the
local bundle is).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..features.config import Choice, Config, Constraints, FilePath, Flag, Integer, Nested, Real, Text, Time
from ..features.errors import ConfigError, SchemaError
from ..features.events import EventLog, TimeLike
from ..features.io import atomic_file
from ..features.progress import NullProgress, Progress
from ..ranker.balancer import BalancerConfig
from ..ranker.lambdamart import LambdaMART, LambdaMARTConfig
from ..ranker.policy import Policy, PolicyConfig
from ..ranker.purchase import PurchaseModel, PurchaseModelConfig
from ._purchase_fit import fit_or_skip
from .bad_order_cost import BadOrderCost, BadOrderCostConfig
from .dataset import POLICY_TRUST, DatasetConfig, TrainingFrame
from .evaluation import (
    EVALUATION_DIR,
    PLAIN_MODEL_DIR,
    EvalConfig,
    evaluate_pipeline,
    pipelines_as_of,
    requests_from_impressions,
    write_evaluation,
)
from .registry import (
    CHALLENGER,
    TAG_PREFIX,
    TrackingUnavailableError,
    check_tracking_store,
    client_for,
    local_artifact_root,
    quiet_mlflow,
    resolve_tracking_uri,
    tracking_uri_set_to,
)

if TYPE_CHECKING:
    from ..features.history import ContextTables
    from ..features.trust import TrustSnapshot

__all__ = ["TrainJobConfig", "TrainResult", "train", "flatten_params", "plain_feature_schema", "fit_policy_and_target",
           "fit_purchase_model", "MODEL_ARTIFACT"]

BACKENDS = ("pandas", "dask")
MODEL_ARTIFACT = "model"
BOOSTER_ARTIFACT = "booster"
BUNDLE_DIR = "bundle"


_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


# held-out requests the in-job evaluation ranks by default (the latest ones): enough for
# stable headline metrics, a fraction of the cost of ranking every held-out request with
# every policy; `trustfeed evaluate` (or evaluation=EvalConfig()) measures them all
IN_JOB_EVAL_REQUESTS = 3000


def _default_evaluation() -> EvalConfig:
    # the quality/fairness sweeps (balancer strengths, FairCo, P-MMF) re-rank every request
    # once per strength and feed only the report's frontier, not the metrics promotion reads:
    # the in-job default keeps the unbalanced point; `trustfeed evaluate` draws the frontier
    return EvalConfig(max_requests=IN_JOB_EVAL_REQUESTS, sweep_strengths=(0.0,), fairco_strengths=(), pmmf_strengths=(),
                      quota_sweep_ps=(), levers=False)


def _default_model() -> LambdaMARTConfig:
    # the logged validation NDCG falls after the first trees (see LambdaMARTConfig.min_rounds),
    # so the best round is nearly always min_rounds and the patience after it only confirms the
    # fall: 10 rounds of it instead of 30 keep the same trees there and train a quarter fewer
    return LambdaMARTConfig(early_stopping_rounds=10)


def _default_dataset() -> DatasetConfig:
    # a weekly snapshot keeps training minutes, not hours; features are staler, never leaky.
    # The viewer's history is as of each impression's day (advanced day by day, about 1 CPU s
    # on the 1.5M-impression d60 frame): more expected orders in bench_relevance_gap and the loop
    return DatasetConfig(snapshot_every_days=7, fresh_viewer_history=True)


@dataclass(frozen=True)
class TrainJobConfig(Config):
    """Everything one training job needs (every field is logged to MLflow as a param).

    Parameters
    ----------
    events
        Dataset directory (docs/contract.md section 1).
    until
        Use only events before this time (``None``: all).
    experiment
        MLflow experiment name.
    tracking_uri
        MLflow tracking URI; ``None``: ``$MLFLOW_TRACKING_URI``, else MLflow's embedded
        default made explicit (``sqlite:///<cwd>/mlflow.db``, artifacts in ``<cwd>/mlruns``).
    register
        Registered-model name; the new version gets the alias ``challenger``.
    output_dir
        Where the local copy of each run is kept (``<output_dir>/<run id>/bundle``, ...);
        ``None``: ``./trustfeed-models``.
    validation_fraction
        Share of the impressions' time span used for early stopping, just before the
        held-out window (``evaluation.holdout_fraction``, the latest share of the span);
        boundaries are rounded down to whole days.
    dataset, model, plain_model, policy, balancer, evaluation
        Component configs; ``plain_model`` (``None``: same as ``model``) trains the
        comparison LambdaMART without trust features. The dataset's ``context`` and
        ``trust`` configs also build the served snapshot and history tables. The job's
        ``model`` default stops 10 rounds after the best (LambdaMARTConfig's own default: 30).
    evaluate
        Evaluate on the held-out window inside the job (report, held-out metrics for
        promotion). ``evaluation.max_requests`` bounds its cost: by default the latest
        ``IN_JOB_EVAL_REQUESTS`` held-out requests.
    backend
        ``"pandas"``: the training frame and both models in this process. ``"dask"``: the
        training frame built per partition on a Dask cluster and the ranker trained with
        LightGBM's distributed learner (see ``docs/training.md`` for what differs).
    scheduler
        Address of a running Dask scheduler (``backend="dask"`` only); ``None``: a local
        cluster started for the job.
    train_plain
        Train the plain model (the evaluation's comparison arm).
    tracking_retries
        HTTP retries per MLflow request (MLflow's own default waits minutes against a dead
        server); applies unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set.
    run_name
        MLflow run name (``None``: MLflow picks one).
    target_gini_ratio
        The balancer's target Gini relative to the data: ``target_gini_ratio`` x the
        creator-exposure Gini of the unbalanced trust-aware ranking of the validation window,
        as the balancer's ledger (with its decay) measures it, and the same ratio of that
        ledger's Gini while it fills (``BalancerConfig.fill_requests`` / ``fill_targets``).
        ``None``: ``balancer.target_gini`` is taken as an absolute target. The default 0.9 was
        chosen by the closed-loop net value after the data's end on two simulated platforms
        (``benchmarks/sweep_levers.py``, docs/balancer.md section 8).
    bad_cost_estimate
        How the cost of a bad order is measured from the training data's orders
        (:mod:`trustfeed.training.bad_order_cost`); a usable estimate adds the value of the
        orders a bad order loses to ``policy.bad_cost`` (``BadOrderCost.policy_cost``), otherwise
        ``policy.bad_cost`` stays (and the run says why). ``None``: always ``policy.bad_cost``.
    signing_key
        An Ed25519 private key file (``trustfeed keygen``): the bundle's manifest is signed
        before the bundle is published or logged, so a serving host with the matching
        ``verify.key`` can refuse anything else. Checked when the config is made.
    purchase_model
        The purchase model (:mod:`trustfeed.ranker.purchase`) fitted beside LambdaMART on the
        same training and validation days when the policy is ``"expected_value"``: the
        policy then calibrates and ranks on its purchase probability instead of the
        LambdaMART score, and the bundle serves it. ``None``: the LambdaMART score, as
        before. The Dask backend fits it too, from rows drawn on the workers (docs/training.md).
    """

    events: Path
    until: str | None = None
    experiment: str = "trustfeed"
    tracking_uri: str | None = None
    register: str | None = None
    output_dir: Path | None = None
    validation_fraction: float = 0.15
    dataset: DatasetConfig = field(default_factory=_default_dataset)
    model: LambdaMARTConfig = field(default_factory=_default_model)
    plain_model: LambdaMARTConfig | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    evaluation: EvalConfig = field(default_factory=_default_evaluation)
    evaluate: bool = True
    backend: str = "pandas"
    scheduler: str | None = None
    train_plain: bool = True
    tracking_retries: int = 2
    run_name: str | None = None
    target_gini_ratio: float | None = 0.9
    bad_cost_estimate: BadOrderCostConfig | None = field(default_factory=BadOrderCostConfig)
    signing_key: Path | None = None
    purchase_model: PurchaseModelConfig | None = field(default_factory=PurchaseModelConfig)

    constraints: ClassVar[Constraints] = {
        "events": FilePath(),
        "until": Time(optional=True),
        "experiment": Text(),
        "tracking_uri": Text(optional=True),
        "register": Text(optional=True),
        "output_dir": FilePath(optional=True),
        "validation_fraction": Real(0, 0.5, strict_low=True, strict_high=True),
        "dataset": Nested(DatasetConfig),
        "model": Nested(LambdaMARTConfig),
        "plain_model": Nested(LambdaMARTConfig, optional=True),
        "policy": Nested(PolicyConfig),
        "balancer": Nested(BalancerConfig),
        "evaluation": Nested(EvalConfig),
        "evaluate": Flag(),
        "backend": Choice(*BACKENDS),
        "scheduler": Text(optional=True),
        "train_plain": Flag(),
        "tracking_retries": Integer(low=0),
        "run_name": Text(optional=True),
        "target_gini_ratio": Real(0, 1, strict_low=True, optional=True),
        "bad_cost_estimate": Nested(BadOrderCostConfig, optional=True),
        "signing_key": FilePath(optional=True),
        "purchase_model": Nested(PurchaseModelConfig, optional=True),
    }

    def check(self) -> None:
        holdout = self.evaluation.holdout_fraction
        if not holdout < 0.5:
            raise ConfigError(f"TrainJobConfig.evaluation.holdout_fraction: expected a value in (0, 0.5), got {holdout!r}")
        if self.validation_fraction + holdout >= 0.8:
            raise ConfigError("TrainJobConfig: validation_fraction + evaluation.holdout_fraction must leave >= 20% for training")
        if self.scheduler is not None and self.backend != "dask":
            raise self.reject("scheduler", "None unless backend='dask'")
        if self.signing_key is not None:
            from ..ranker.signing import load_signing_key

            load_signing_key(self.signing_key)  # a bad key fails now, not after the training


@dataclass(frozen=True)
class TrainResult:
    """What a training job produced.

    Attributes
    ----------
    run_id
        The MLflow run.
    model_uri
        ``runs:/<run_id>/model``: the pyfunc model (loadable by ``mlflow.pyfunc.load_model``,
        ``trustfeed evaluate``, ``trustfeed rank`` and ``FeedRanker.load``).
    bundle_dir
        The local copy of the model bundle.
    metrics
        Final held-out metrics as logged.
    registered_version
        The new version of ``config.register`` (``None`` without registration).
    report_path
        The local copy of the evaluation report.
    """

    run_id: str
    model_uri: str
    bundle_dir: Path
    metrics: dict[str, float]
    registered_version: str | None = None
    report_path: Path | None = None


# ----------------------------------------------------------------------------- params


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dicts -> ``{"model.learning_rate": "0.05", ...}`` (MLflow params).

    Lists and tuples become JSON; ``None`` becomes ``"None"``; nested mappings recurse.

    Examples
    --------
    >>> flatten_params({"model": {"eval_at": (5, 10), "lr": 0.1}, "register": None})
    {'model.eval_at': '[5, 10]', 'model.lr': '0.1', 'register': 'None'}
    """
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value), default=str)
        elif isinstance(value, Mapping):
            flat[name] = "{}"
        else:
            flat[name] = str(value)
    return flat


# ----------------------------------------------------------------------------- data windows


@dataclass(frozen=True)
class _Windows:
    data_start: pd.Timestamp
    valid_start: pd.Timestamp
    holdout_start: pd.Timestamp
    end: pd.Timestamp


def _windows(events: EventLog, until: pd.Timestamp | None, valid_fraction: float, holdout_fraction: float) -> _Windows:
    ts = events["impressions"]["ts"]
    if ts.empty:
        raise SchemaError("impressions", "ts", "logged impressions to learn from", "an empty table"
                          + (f" before {until.isoformat()}" if until is not None else ""))
    first = ts.min()
    end = ts.max().floor("D") + pd.Timedelta(days=1)
    if until is not None:
        end = min(end, until)
    span = end - first
    holdout_start = (first + span * (1.0 - holdout_fraction)).floor("D")
    valid_start = (first + span * (1.0 - holdout_fraction - valid_fraction)).floor("D")
    if not first < valid_start < holdout_start < end:
        raise SchemaError(
            "impressions", "ts",
            "a span of several days (train, validation and held-out windows of whole days)",
            f"impressions from {first.isoformat()} to {ts.max().isoformat()}",
        )
    return _Windows(first, valid_start, holdout_start, end)


# ----------------------------------------------------------------------------- plain model


def _is_trust_feature(name: str, source: str) -> bool:
    """Trust signals the plain model must not see: the merchant trust snapshot, creator
    trust/violation/report signals and the user's past bad experiences with a merchant."""
    if source.startswith(("merchant:", "merchant_percentile:")):
        return True
    lowered = f"{name} {source}".lower()
    return any(word in lowered for word in ("trust", "violation", "report", "banned", "bad"))


def plain_feature_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The assembler schema without trust features (for the plain LambdaMART).

    Examples
    --------
    >>> schema = {"kind": "trustfeed.features", "format_version": 1,
    ...           "feature_names": ["merchant_trust_index", "creator_ctr", "hour"],
    ...           "sources": ["merchant:trust_index", "engagement:ctr", "hour"],
    ...           "monotone": [1, 0, 0], "categorical": [], "categories": {}}
    >>> plain_feature_schema(schema)["feature_names"]
    ['creator_ctr', 'hour']
    """
    keep = [i for i, (name, source) in enumerate(zip(schema["feature_names"], schema["sources"], strict=True))
            if not _is_trust_feature(str(name), str(source))]
    plain = dict(schema)
    plain["feature_names"] = [schema["feature_names"][i] for i in keep]
    plain["sources"] = [schema["sources"][i] for i in keep]
    plain["monotone"] = [0 for _ in keep]
    plain["categorical"] = [c for c in schema.get("categorical", []) if c in plain["feature_names"]]
    return plain


# ----------------------------------------------------------------------------- fitted policy


# fewer purchases than this in either window leave the expected-value policy unfitted
_MIN_PURCHASES = 20
# purchases scored with a fitted trust index needed to fit the bad-order model on them alone
_MIN_FITTED_INDEX_PURCHASES = 100
# the trust index's own calibration (trust_index = 1 - expected bad-order rate): p_bad = 1 - trust
INDEX_CALIBRATION = (0.0, -1.0)


def _index_source(snapshot: TrustSnapshot) -> str:
    """How a snapshot's trust index was made: its manifest's ``index_model.source`` (``"unknown"`` without one)."""
    return str((snapshot.manifest.get("index_model") or {}).get("source", "unknown"))


def index_source_recorder(config: DatasetConfig, sources: dict[pd.Timestamp, str]) -> Callable[[EventLog, pd.Timestamp], Any]:
    """The training frame's snapshot builder, noting in ``sources`` how each snapshot's trust index was made.

    ``sources[as_of]`` is the manifest's ``index_model.source`` (``"fitted"``: weights fitted
    on the log's outcomes, on the bad-order-rate scale; ``"default"``: documented weights, too
    little history), which :func:`fit_policy_and_target` reads to fit the bad-order model on
    trust of the scale serving will see.
    """
    from .dataset import default_snapshot_builder

    inner = default_snapshot_builder(config)

    def build(events: EventLog, as_of: pd.Timestamp) -> Any:
        snapshot = inner(events, as_of)
        sources[as_of] = _index_source(snapshot)
        return snapshot

    return build


def _bad_model_rows(fit_part: TrainingFrame, bought: np.ndarray, index_sources: Mapping[pd.Timestamp, str] | None) -> tuple[np.ndarray | None, str]:
    """Which training purchases the bad-order model is fitted on, and why.

    The trust index of a short log's early snapshots is made with default weights (too little
    history to fit them), a different scale from the fitted index of the later snapshots and
    of the serving snapshot (on a 45-day simulated log: median 0.87 against 0.97). A map from
    trust to bad-order probability fitted on the first prices risk at serving time several
    times too low. So when the latest snapshot in ``index_sources`` (the serving one, as of
    the end of the data, when the job adds it) has a fitted index, only purchases scored with
    a fitted index count; with fewer than
    ``_MIN_FITTED_INDEX_PURCHASES`` of them the index's own calibration is used
    (``None``: :data:`INDEX_CALIBRATION`). Without sources: every purchase.
    """
    if not index_sources:
        return bought, "all purchases (index sources unknown)"
    at = fit_part.frame["snapshot_at"]
    latest = index_sources[max(index_sources)]
    if latest != "fitted":
        return bought, f"all purchases (latest index: {latest})"
    fitted = (at.map(index_sources) == "fitted").to_numpy(dtype=bool, na_value=False)
    rows = bought & fitted
    if rows.sum() < _MIN_FITTED_INDEX_PURCHASES:
        return None, f"index calibration ({int(rows.sum())} purchases scored with a fitted index)"
    return rows, f"purchases scored with a fitted index ({int(rows.sum())} of {int(bought.sum())})"


def _policy_trust_column(part: TrainingFrame) -> str:
    """The frame column holding the trust the policy reads: ``policy_trust`` (the snapshot's
    trust index, what serving scores with), or in frames without it the raw index feature of
    older schemas; the models' scale-free trust standing is not what the policy scores."""
    return POLICY_TRUST if POLICY_TRUST in part.frame.columns else "merchant_trust_index"


def _purchased(impressions: pd.DataFrame) -> np.ndarray:
    if "purchased" not in impressions.columns or impressions.empty:
        return np.zeros(len(impressions), dtype=bool)
    return impressions["purchased"].astype("boolean").fillna(False).to_numpy(dtype=bool)


def _row_keys(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": frame["request_id"].astype(str).to_numpy(),
        "stream_id": frame["stream_id"].astype(str).to_numpy(),
        "position": frame["position"].to_numpy(dtype=np.int64),
    })


def _purchase_rows(part: TrainingFrame, impressions: pd.DataFrame, purchased: np.ndarray) -> np.ndarray:
    """Row of ``impressions`` behind each purchased row of a training frame part (-1 for the rest).

    Only the requests with a purchase are matched (a few percent of the rows), on
    ``(request_id, stream_id, position)``; a duplicated key resolves to its first logged row.
    """
    out = np.full(len(part), -1, dtype=np.int64)
    if not purchased.any() or len(part) == 0:
        return out
    buying = pd.unique(impressions["request_id"].loc[purchased])
    in_log = np.flatnonzero(impressions["request_id"].isin(buying).to_numpy(dtype=bool, na_value=False))
    in_part = np.flatnonzero(part.frame["request_id"].isin(buying).to_numpy(dtype=bool, na_value=False))
    table = _row_keys(impressions.iloc[in_log]).assign(_row=in_log)
    table = table.drop_duplicates(["request_id", "stream_id", "position"], keep="first")
    table = table.loc[purchased[table["_row"].to_numpy()]]
    joined = _row_keys(part.frame.iloc[in_part]).merge(table, on=["request_id", "stream_id", "position"], how="left")
    out[in_part] = joined["_row"].fillna(-1).to_numpy(dtype=np.int64)
    return out


def purchase_rows_of(fit_part: TrainingFrame, valid_part: TrainingFrame, impressions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row of ``impressions`` behind each purchased row of the training and of the validation
    part (``-1`` for the rest): what the purchase model and the policy fit both learn from, so
    the job matches the rows once and hands them to both."""
    flags = _purchased(impressions)
    return _purchase_rows(fit_part, impressions, flags), _purchase_rows(valid_part, impressions, flags)


def _bad_purchases(impressions: pd.DataFrame, events: EventLog, horizon_days: float) -> np.ndarray:
    """Bad outcome of purchased impressions, as the bad-order rate counts it.

    A bad order (an after-sales case for quality / not_as_described / counterfeit, or a 1-2
    star review) or a verified report, within the label horizon, as the graded labels read
    them (:func:`~trustfeed.training.dataset.purchase_outcomes`). A cancelled order is a
    purchase that did not go bad (the simulator's outcome model counts it the same way).
    """
    from .dataset import DatasetConfig, purchase_outcomes

    purchased, bad, _ = purchase_outcomes(
        impressions, events, DatasetConfig(label_horizon_days=horizon_days, low_rating_is_bad=True)
    )
    return purchased & bad


def _request_positions(part: TrainingFrame, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(request code, 1-based position) of every row of ``part`` when each request is ranked by ``score``."""
    codes = pd.factorize(part.frame["request_id"])[0]
    order = np.lexsort((np.arange(len(codes)), -score, codes))
    starts = np.searchsorted(codes[order], codes[order], side="left")
    position = np.empty(len(codes), dtype=np.int64)
    position[order] = np.arange(len(codes)) - starts + 1
    return codes, position


def _creator_gini(part: TrainingFrame, score: np.ndarray) -> float:
    """Creator-exposure Gini (docs/contract.md section 4) of ranking each request of ``part`` by ``score``."""
    from ..ranker.metrics import exposure_by, gini

    _, position = _request_positions(part, score)
    ranked = pd.DataFrame({"creator_id": part.frame["creator_id"].astype(str).to_numpy(), "position": position})
    exposure = exposure_by(ranked, "creator_id", population=pd.unique(ranked["creator_id"]))
    return float(gini(exposure.to_numpy()))


def _ledger_fill(part: TrainingFrame, score: np.ndarray, balancer: BalancerConfig
                 ) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """The balancer's ledger Gini of the unbalanced ranking as the ledger fills: (request counts, Ginis).

    The requests of ``part``, ranked by ``score`` and replayed in time order into a ledger of
    the balancer's own decay and exposure (every ranked candidate recorded at its position, as
    :func:`_creator_gini` counts them), measured after 2, 4, 8, ... x ``control_interval``
    requests and after the last. ``None`` when there are too few requests for two points.
    """
    from ..ranker.balancer import ExposureBalancer

    frame = part.frame
    if len(frame) == 0:
        return None
    codes, position = _request_positions(part, score)
    n_requests = int(codes.max()) + 1
    # epoch seconds (the ledger's clock when its half-life is in seconds); requests in the order
    # they were served, ties as logged
    seconds = (pd.to_datetime(frame["ts"], utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    first = np.full(n_requests, np.inf)
    np.minimum.at(first, codes, seconds)
    served_order = np.argsort(first, kind="stable")
    rank_of = np.empty(n_requests, dtype=np.int64)
    rank_of[served_order] = np.arange(n_requests)
    request_rank = rank_of[codes]
    rows = np.argsort(request_rank, kind="stable")
    ranked = pd.DataFrame({"request_id": request_rank[rows], "creator_id": frame["creator_id"].to_numpy()[rows],
                           "merchant_id": frame["merchant_id"].to_numpy()[rows], "position": position[rows],
                           "ts": seconds[rows]})
    request_codes = request_rank[rows]
    counts, count = [], 2 * balancer.control_interval
    while count < n_requests:
        counts.append(count)
        count *= 2
    counts.append(n_requests)
    if len(counts) < 2:
        return None
    replay = ExposureBalancer(replace(balancer, kp=0.0, ki=0.0, fill_requests=None, fill_targets=None))
    bounds = np.searchsorted(request_codes, np.asarray(counts), side="left")
    ginis, done = [], 0
    for end in bounds.tolist():
        replay.record_impressions(ranked.iloc[done:end])
        done = end
        ginis.append(float(replay.measured_gini))
    return tuple(counts), tuple(ginis)


def fit_purchase_model(
    config: PurchaseModelConfig, fit_part: TrainingFrame, valid_part: TrainingFrame, impressions: pd.DataFrame,
    progress: Progress | None = None, *, features: tuple[np.ndarray, np.ndarray] | None = None,
    purchase_rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[PurchaseModel | None, dict[str, Any]]:
    """The purchase model on the training rows, stopped early on the validation rows.

    ``features``: the two parts' feature matrices when the caller already holds them
    (``None``: built here from the parts). ``purchase_rows``: :func:`purchase_rows_of` the
    two parts when the caller already holds them (``None``: matched here).

    A click is a row labelled 1 or more, a purchase a logged purchase that was not cancelled
    (the rows the policy's calibration counts). Fewer than ``_MIN_PURCHASES`` purchases in
    either window, or a window without both outcomes, leave no purchase model (``None``) and
    the returned dict says why; otherwise it holds the fit's figures (logged as MLflow params
    ``fitted.purchase_model.*``).
    """
    progress = progress or NullProgress()
    train_rows, valid_rows = purchase_rows if purchase_rows is not None else purchase_rows_of(fit_part, valid_part, impressions)
    bought, bought_valid = train_rows >= 0, valid_rows >= 0

    def fit() -> PurchaseModel:
        X_fit, X_valid = features if features is not None else (fit_part.features(), valid_part.features())
        return PurchaseModel(config).fit(
            X_fit, fit_part.labels >= 1, bought, fit_part.positions,
            X_valid, valid_part.labels >= 1, bought_valid, valid_part.positions,
            feature_names=fit_part.feature_names, categorical=fit_part.categorical, monotone=fit_part.monotone,
            groups=fit_part.groups(), request_ids=fit_part.frame["request_id"].to_numpy(),
        )

    return fit_or_skip(fit, (int(bought.sum()), int(bought_valid.sum())), _MIN_PURCHASES, progress,
                       f"training the purchase model (click x purchase given click) on {len(fit_part):,} impressions")


def measure_bad_order_cost(
    config: TrainJobConfig, events: EventLog, data_end: TimeLike | None = None, progress: Progress | None = None
) -> BadOrderCost | None:
    """The cost of a bad order measured from the orders before ``data_end`` (``None``: all), as
    :func:`fit_policy_and_target` uses it; ``None`` when the job does not measure it
    (``bad_cost_estimate`` unset or a policy other than ``"expected_value"``)."""
    if config.bad_cost_estimate is None or config.policy.combine != "expected_value":
        return None
    from .bad_order_cost import estimate_bad_order_cost

    (progress or NullProgress())("measuring the cost of a bad order from the buyers' later orders")
    return estimate_bad_order_cost(events if data_end is None else events.before(data_end), config.bad_cost_estimate,
                                   end=data_end)


def fit_policy_and_target(
    config: TrainJobConfig, model: LambdaMART, fit_part: TrainingFrame, valid_part: TrainingFrame, events: EventLog, progress: Progress | None = None,
    *, data_end: TimeLike | None = None, purchase_model: PurchaseModel | None = None,
    valid_score: np.ndarray | None = None, bad_order_cost: BadOrderCost | None = None,
    index_sources: Mapping[pd.Timestamp, str] | None = None, purchase_rows: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Policy, BalancerConfig, dict[str, Any]]:
    """The policy and balancer to serve, with what was fitted from the data.

    * ``bad_cost_estimate`` set (and ``combine="expected_value"``): the cost of a bad order
      measured from the orders before ``data_end`` (the end of the training data; ``None``:
      the whole of ``events``) by :func:`~trustfeed.training.bad_order_cost.estimate_bad_order_cost`
      is added to ``policy.bad_cost`` (the cost of the bad order itself) when the estimate is
      usable (:meth:`~trustfeed.training.bad_order_cost.BadOrderCost.policy_cost`); ``fitted``
      holds the estimate, the cost used and where it came from (``policy.bad_cost_source``).

    * ``combine="expected_value"``: :meth:`Policy.fit <trustfeed.ranker.policy.Policy.fit>`
      learns the purchase calibration ``(a, b)`` and its risk term ``d`` from ``purchased``
      against the model score, ``log(position)`` and the merchant's bad-order probability
      over the validation window, and the bad-order model ``(c0, c1)``
      from bad outcomes against ``logit(trust)`` over the purchases of the training window
      (trust as of each impression's snapshot; ``c1 <= 0``; purchases from cold-start
      merchants, whose trust is only the prior, are left out; with ``index_sources``, the
      ``index_model.source`` of each snapshot by its time (:func:`index_source_recorder`; the
      job adds the serving snapshot's), only purchases scored with a fitted trust index when
      the latest snapshot's is fitted, or
      the index's own calibration ``p_bad = 1 - trust`` when they are too few: the early
      snapshots of a short log carry a default-weight index on another scale, see
      :func:`_bad_model_rows`). Too few purchases, no trust
      feature, or a slope ``a <= 0`` (a model whose score does not predict purchases) leave
      the policy unfitted, which falls back to the ``"logit"`` formula, and ``fitted`` says so.
      With ``purchase_model`` the calibration is fitted on its log purchase probability instead
      of the model score (the state's ``relevance_source`` says which).
    * ``valid_score`` (the validation rows' scores of ``purchase_model``, else of ``model``),
      ``bad_order_cost`` (:func:`measure_bad_order_cost`) and ``purchase_rows``
      (:func:`purchase_rows_of` the two parts) are computed here when ``None``; the job
      computes them while LightGBM trains.
    * ``target_gini_ratio`` set: ``balancer.target_gini = ratio x`` the creator-exposure
      Gini of the unbalanced policy ranking of the validation requests (hard rules are not
      applied there: the frame keeps no ban flags, and bans remove few candidates) as the
      balancer's own ledger measures it, replayed in time order from empty, and
      ``fill_requests`` / ``fill_targets`` the ratio x that ledger's Gini while it fills
      (with too few requests to replay, the window's Gini and no fill schedule).

    Returns
    -------
    (Policy, BalancerConfig, dict)
        The third item holds the fitted values (logged as MLflow params ``fitted.*``).
    """
    progress = progress or NullProgress()
    policy, balancer = Policy(config.policy), config.balancer
    fitted: dict[str, Any] = {}
    trust_column = _policy_trust_column(fit_part)
    impressions = events["impressions"]
    if valid_score is None:
        valid_score = (purchase_model or model).predict(valid_part.features())
    valid_score = np.asarray(valid_score, dtype=np.float64)
    source = "purchase_model" if purchase_model is not None else "ranker"
    cost = bad_order_cost if bad_order_cost is not None else measure_bad_order_cost(config, events, data_end, progress)
    if cost is not None:
        configured = policy.config.bad_cost
        bad_cost = cost.policy_cost(configured)
        cost_source = (f"measured: configured {configured:g} + {cost.lost_orders:.3g} orders lost after a bad order"
                       if cost.usable else f"configured: {cost.reason}")
        fitted.update({**{f"policy.{k}": v for k, v in cost.to_metrics().items()},
                       "policy.bad_cost": bad_cost, "policy.bad_cost_source": cost_source})
        progress(f"bad-order cost {bad_cost:.3g} good orders ({cost_source})")
        policy = Policy(replace(policy.config, bad_cost=bad_cost))
    if policy.config.combine == "expected_value":
        progress("fitting the expected-value policy: purchase calibration and bad-order model")
        train_rows, valid_rows = purchase_rows if purchase_rows is not None else purchase_rows_of(fit_part, valid_part, impressions)
        purchased = valid_rows >= 0
        bought = train_rows >= 0
        if "merchant_cold_start" in fit_part.frame.columns:
            # a cold-start merchant's trust is the prior, not evidence (the whole first
            # snapshot of the log is cold): it says nothing about how trust predicts bad orders
            cold = fit_part.frame["merchant_cold_start"].to_numpy(dtype=np.float64) > 0.5
            fitted["policy.cold_start_purchases_left_out"] = int((bought & cold).sum())
            bought &= ~cold
        if trust_column not in fit_part.frame.columns or purchased.sum() < _MIN_PURCHASES or bought.sum() < _MIN_PURCHASES:
            fitted.update({"policy.valid_purchases": int(purchased.sum()),
                           "policy.fallback": "logit (no trust feature, or too few purchases)"})
        else:
            bad_rows, bad_source = _bad_model_rows(fit_part, bought, index_sources)
            model_rows = bought if bad_rows is None else bad_rows
            purchases = impressions.iloc[train_rows[model_rows]].reset_index(drop=True)
            bad = _bad_purchases(purchases, events, config.dataset.label_horizon_days)
            trust = fit_part.frame[trust_column].to_numpy(dtype=np.float64)[model_rows]
            # the trust each validation impression was scored with: the calibration learns how
            # much merchant risk the model's score already priced in (its risk term)
            valid_trust = valid_part.frame[trust_column].to_numpy(dtype=np.float64)
            policy.fit(valid_score, purchased, valid_part.positions, trust, bad, impression_trust=valid_trust,
                       relevance_source=source, bad_model=None if bad_rows is not None else INDEX_CALIBRATION)
            fitted.update({f"policy.{k}": v for k, v in policy.fit_info_.items()})
            fitted["policy.relevance_source"] = source
            fitted["policy.bad_model_source"] = bad_source
    if config.target_gini_ratio is not None:
        trust = (valid_part.frame[trust_column].to_numpy(dtype=np.float64) if trust_column in valid_part.frame.columns
                 else np.full(len(valid_part), np.nan))
        valid_policy_score = policy.score(valid_score, trust, group=valid_part.groups())
        ratio = config.target_gini_ratio
        unbalanced = _creator_gini(valid_part, valid_policy_score)
        fitted["balancer.unbalanced_valid_gini"] = unbalanced
        # the reference is what the balancer's own ledger measures for the unbalanced ranking
        # (its decay forgets what a whole window's Gini keeps: on a window of many half-lives the
        # window's Gini is far lower and would be out of the controller's reach), filled from
        # empty as a new deployment's ledger is; too few requests to replay: the window's Gini
        fill = _ledger_fill(valid_part, valid_policy_score, balancer)
        reference = unbalanced if fill is None else fill[1][-1]
        target = float(np.clip(ratio * reference, 0.01, 0.99))
        if fill is None:
            balancer = replace(balancer, target_gini=target, fill_requests=None, fill_targets=None)
        else:
            targets = tuple(float(np.clip(ratio * g, 0.01, 0.99)) for g in fill[1])
            balancer = replace(balancer, target_gini=target, fill_requests=fill[0], fill_targets=targets)
            fitted.update({"balancer.unbalanced_ledger_gini": reference, "balancer.fill_requests": list(fill[0]),
                           "balancer.fill_targets": [round(v, 4) for v in targets]})
        fitted["balancer.target_gini"] = target
        progress(f"balancer target Gini {target:.3f} ({ratio:g} x {reference:.3f} unbalanced)")
    return policy, balancer, fitted


# ----------------------------------------------------------------------------- MLflow run


class _Run:
    """The MLflow side of one job; every failure becomes :class:`TrackingUnavailableError`."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None) -> None:
        self.tracking_uri = tracking_uri
        self.client = client_for(tracking_uri)
        self.run_id = ""
        self.local_copy: Path | None = None
        experiment_id = self._call("finding the experiment", lambda: self._experiment_id(experiment))
        run = self._call("starting the run", lambda: self.client.create_run(experiment_id, run_name=run_name))
        self.run_id = run.info.run_id

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        # a local store keeps artifacts beside the database, as MLflow's default does, but by
        # absolute path so a later change of directory cannot scatter them
        return str(self.client.create_experiment(name, artifact_location=local_artifact_root(self.tracking_uri)))

    def _call(self, what: str, action: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return action()
        except (MlflowException, OSError) as error:
            where = f"; the trained model bundle is saved at {self.local_copy}" if self.local_copy else ""
            run = f" (run {self.run_id})" if self.run_id else ""
            detail = " ".join(str(error).split())
            if len(detail) > 240:
                detail = detail[:237] + "..."
            raise TrackingUnavailableError(
                f"MLflow tracking at {self.tracking_uri} failed while {what}{run}: {detail}{where}"
            ) from error

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            chunk = items[i : i + _MAX_PARAMS_PER_BATCH]
            self._call("logging params", lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def log_metrics(self, values: Mapping[str, float], step: int = 0, series: Mapping[str, list[float]] | None = None,
                    models: Sequence[str] = ()) -> None:
        """Log ``values`` at ``step`` and each curve of ``series`` at steps 1, 2, ...; ``models``:
        ids of models logged in this run that the ``values`` are linked to as well (what MLflow
        does itself for a model logged after the metrics)."""
        from mlflow.entities import Metric

        now = int(_dt.datetime.now(tz=_dt.timezone.utc).timestamp() * 1000)
        metrics = [Metric(_metric_key(k), float(v), now, step) for k, v in sorted(values.items()) if math.isfinite(v)]
        for model_id in models:
            metrics += [Metric(m.key, m.value, m.timestamp, m.step, run_id=self.run_id, model_id=model_id)
                        for m in metrics if m.model_id is None and m.step == step]
        for key, curve in (series or {}).items():
            metrics += [Metric(_metric_key(key), float(v), now, i + 1) for i, v in enumerate(curve) if math.isfinite(v)]
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            chunk = metrics[i : i + _MAX_METRICS_PER_BATCH]
            self._call("logging metrics", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            chunk = items[i : i + _MAX_PARAMS_PER_BATCH]
            self._call("setting tags", lambda c=chunk: self.client.log_batch(self.run_id, tags=c))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self._call(f"uploading {path.name}", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path))
        else:
            self._call(f"uploading {path.name}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str) -> None:
        self._call("ending the run", lambda: self.client.set_terminated(self.run_id, status))

    def fail_quietly(self) -> None:
        """Mark the run failed if the store still answers (it may be the thing that failed)."""
        try:
            self.client.set_terminated(self.run_id, "FAILED")
        except Exception:  # noqa: BLE001 - best effort on the way out of an error
            pass


def _metric_key(name: str) -> str:
    # MLflow metric names allow letters, digits, _ - . space / ; keep everything else out
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


@contextmanager
def _mlflow_session(config: TrainJobConfig, tracking_uri: str) -> Iterator[None]:
    """Quiet console, bounded HTTP retries and the tracking URI for MLflow's fluent API."""
    defaults = {
        # MLflow's own default retries for minutes against a dead server
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(config.tracking_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        # the CLI prints the run id and model URI itself
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }
    check_tracking_store(tracking_uri)  # MLflow would retry an unopenable sqlite file for ~100 s
    saved_env = {k: os.environ.get(k) for k in defaults}
    for key, value in defaults.items():
        if saved_env[key] is None:
            os.environ[key] = value
    try:
        with tracking_uri_set_to(tracking_uri), quiet_mlflow():
            yield
    finally:
        for key, saved in saved_env.items():
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved


# ----------------------------------------------------------------------------- the job


def train(config: TrainJobConfig, progress: Progress | None = None) -> TrainResult:
    """Train the trust-aware ranker, evaluate it on held-out days and log it all to MLflow.

    Parameters
    ----------
    config
        :class:`TrainJobConfig`.
    progress
        Receives one call per step (the CLI prints them).

    Returns
    -------
    TrainResult

    Raises
    ------
    SchemaError
        The events are invalid or too short to split by time.
    TrackingUnavailableError
        MLflow cannot be reached or fails during the run (the message says where the local
        bundle is when one was saved).

    Examples
    --------
    A full job takes tens of seconds, so the example is not run by the doctests:

    >>> import tempfile, pathlib
    >>> from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> write_dataset(simulate(SimConfig(seed=1, merchants=40, days=21)), root / "events")
    >>> result = train(TrainJobConfig(events=root / "events", tracking_uri=f"sqlite:///{root}/mlflow.db",
    ...                               output_dir=root / "models", train_plain=False,
    ...                               model=LambdaMARTConfig(num_rounds=10, min_data_in_leaf=20)))  # doctest: +SKIP
    >>> result.model_uri == f"runs:/{result.run_id}/model"  # doctest: +SKIP
    True
    """
    from ..features.events import load_events, to_utc

    progress = progress or NullProgress()
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    # importing MLflow takes about a second of Python work; reading the Parquet files mostly
    # runs outside Python's lock, so the import is done alongside instead of after them
    importing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-mlflow")
    imported = importing.submit(_import_mlflow)
    importing.shutdown(wait=False)
    progress(f"loading events from {config.events}")
    events = load_events(config.events)
    imported.result()
    until = to_utc(config.until) if config.until is not None else None
    if until is not None:
        events = events.before(until)
    windows = _windows(events, until, config.validation_fraction, config.evaluation.holdout_fraction)

    with _mlflow_session(config, tracking_uri):
        progress(f"tracking: {tracking_uri} (experiment {config.experiment!r})")
        # the run is started (a new local store creates its tables first: mostly waiting on
        # the disk) while the training frame is built; the job waits for it before the fits
        starting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-run")
        run_later = starting.submit(_start_run, config, tracking_uri, windows)
        starting.shutdown(wait=False)
        try:
            job = _fit_job(config, events, windows, progress, before_fits=run_later.result)
            run = run_later.result()
        except BaseException:
            if run_later.exception() is None:  # waits for the start; a store that failed has no run to mark
                run_later.result().fail_quietly()
            raise
        try:
            return _bundle_evaluate_log(config, events, windows, run, progress, job.model, job.plain_model, job.policy,
                                        job.balancer, job.fitted, job.valid_part, job.train_requests, job.tables_later,
                                        job.purchase_model, job.truth)
        except BaseException:
            run.fail_quietly()
            raise


def _import_mlflow() -> None:
    import mlflow  # noqa: F401
    import mlflow.entities  # noqa: F401
    import mlflow.pyfunc  # noqa: F401

    # Logging a model checks its pip requirements against the installed packages, and the
    # first check maps every installed distribution to its modules (about 1.7 CPU s of
    # reading package metadata, then cached for the process). Done here, it overlaps the
    # Parquet reads instead of adding to the job's serial end. A private MLflow helper: if a
    # later MLflow lacks it, the check simply runs at logging time as before.
    try:
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map
    except ImportError:
        return
    _init_packages_to_modules_map()


def _start_run(config: TrainJobConfig, tracking_uri: str, windows: _Windows) -> _Run:
    """The job's MLflow run, with the config's params and the data's tags logged."""
    run = _Run(tracking_uri, config.experiment, config.run_name)
    try:
        run.log_params(flatten_params(config.to_dict()))
        run.set_tags(_data_tags(config, windows))
    except BaseException:
        run.fail_quietly()
        raise
    return run


@dataclass(frozen=True)
class _FittedJob:
    """What the job fitted from the events, before anything is saved or logged."""

    model: LambdaMART
    plain_model: LambdaMART | None
    policy: Policy
    balancer: BalancerConfig
    fitted: dict[str, Any]
    valid_part: TrainingFrame
    train_requests: int
    tables_later: list[tuple[TrustSnapshot, ContextTables]]
    purchase_model: PurchaseModel | None
    truth: _Truth | None


def _fit_job(config: TrainJobConfig, events: EventLog, windows: _Windows, progress: Progress,
             before_fits: Callable[[], Any] | None = None) -> _FittedJob:
    """The models, policy and balancer of one job on either backend, and the later snapshots.

    ``before_fits`` is called once the training frame is built (in process) or before the
    cluster is asked for anything (Dask), before any model is trained: the job waits there
    for its MLflow run, so a store that cannot be reached fails the job before training.

    Everything but LambdaMART is meant to be the same on both backends: they build the same
    snapshots with the same recorder of index sources, fit the same purchase model and hand
    the same rows to :func:`fit_policy_and_target`.
    """
    from .dataset import build_training_frame, time_split

    dataset_config = config.dataset
    # the trust snapshots and context tables of the serving bundle (as of the end of the data)
    # and of the evaluation (as of the held-out start) need only the events: they are built
    # in a background thread while LightGBM trains (it boosts without holding the GIL), not
    # one after the other once it is done
    later_times = [windows.end] + ([windows.holdout_start] if config.evaluate else [])
    # GIL-bound work that needs only the events (snapshots, the bad-order cost) runs in these
    # threads while LightGBM boosts in others without holding the GIL; so does the purchase model
    background = ThreadPoolExecutor(max_workers=3, thread_name_prefix="alongside")
    wants_purchase_model = config.purchase_model is not None and config.policy.combine == "expected_value"
    purchase_later: Future[tuple[PurchaseModel | None, dict[str, Any], np.ndarray | None,
                                 tuple[np.ndarray, np.ndarray]]] | None = None
    purchase_rows: tuple[np.ndarray, np.ndarray] | None = None
    truth_later: Future[_Truth] | None = None
    dask_purchase: tuple[PurchaseModel | None, dict[str, Any]] = (None, {})
    # how each training snapshot's trust index was made: both backends build their snapshots with it
    index_sources: dict[pd.Timestamp, str] = {}
    snapshot_builder = index_source_recorder(dataset_config, index_sources)
    try:
        progress(f"building training data from {windows.data_start.date()} to {windows.holdout_start.date()}")
        if config.backend == "dask":
            from ._dask_training import fit_on_dask

            if before_fits is not None:
                before_fits()
            if config.model.position_bias:
                progress("Dask: LightGBM's distributed ranker learns no position bias; training without it")
            # the driver mostly waits for the cluster
            later = background.submit(_tables_as_of, events, later_times, dataset_config)
            cost_later = background.submit(measure_bad_order_cost, config, events, windows.holdout_start, progress)
            on_dask = fit_on_dask(
                events, end=windows.holdout_start, valid_from=windows.valid_start, config=dataset_config,
                model_config=config.model, plain_config=(config.plain_model or config.model) if config.train_plain else None,
                plain_schema_of=plain_feature_schema, scheduler=config.scheduler, progress=progress,
                purchase_config=config.purchase_model if wants_purchase_model else None, min_purchases=_MIN_PURCHASES,
                snapshot_builder=snapshot_builder, events_dir=config.events,
            )
            model, plain_model = on_dask.model, on_dask.plain_model
            dask_purchase = (on_dask.purchase_model, dict(on_dask.purchase_fitted))
            # the policy fit reads only the purchased rows of the training part
            fit_part, valid_part, train_requests = on_dask.fit_purchases, on_dask.valid_part, on_dask.train_requests
        else:
            frame = build_training_frame(events, start=None, end=windows.holdout_start, config=dataset_config, progress=progress,
                                         snapshot_builder=snapshot_builder)
            fit_part, valid_part = time_split(frame, valid_from=windows.valid_start)
            if len(fit_part) == 0 or len(valid_part) == 0:
                raise SchemaError("impressions", "ts", "impressions in both the training and validation windows",
                                  f"{len(fit_part)} training and {len(valid_part)} validation rows")
            if before_fits is not None:
                before_fits()
            progress(f"building the serving{' and evaluation' if config.evaluate else ''} snapshots alongside the fits")
            later = background.submit(_tables_as_of, events, later_times, dataset_config)
            # one feature matrix per part, shared by every fit (each would otherwise copy its own)
            features = (fit_part.features(), valid_part.features())
            if wants_purchase_model and config.purchase_model is not None:
                # the purchase model needs only the frame: it trains alongside the two LambdaMARTs,
                # and scores the validation rows for the policy's calibration there too
                purchase_later = background.submit(_purchase_model_and_scores, config.purchase_model, fit_part,
                                                   valid_part, events["impressions"], progress, features)
            cost_later = background.submit(measure_bad_order_cost, config, events, windows.holdout_start, progress)
            if config.evaluate:  # the evaluation's outcome truth (a simulated dataset's) is read meanwhile too
                truth_later = background.submit(_load_truth, config.events)
                background.submit(_import_report_drawing)
            model, plain_model = _fit_models(config, frame, fit_part, valid_part, progress, features)
            del features, frame
            train_requests = int(fit_part.groups().size)
        schema = model.feature_schema_

        purchase_model: PurchaseModel | None = None
        purchase_fitted: dict[str, Any] = {}
        valid_score: np.ndarray | None = None
        if wants_purchase_model:
            if purchase_later is None:  # the Dask backend fitted it on the driver from gathered rows
                purchase_model, purchase_fitted = dask_purchase
            else:
                if not purchase_later.done():
                    progress("waiting for the purchase model")
                purchase_model, purchase_fitted, valid_score, purchase_rows = purchase_later.result()
        if not later.done():
            progress("waiting for the serving snapshot")
        tables_later = later.result()
        if index_sources:
            # the bad-order model is fitted on trust of the scale the serving snapshot has
            index_sources[windows.end] = _index_source(tables_later[0][0])
        policy, balancer_config, fitted = fit_policy_and_target(config, model, fit_part, valid_part, events, progress,
                                                                data_end=windows.holdout_start,
                                                                purchase_model=purchase_model, valid_score=valid_score,
                                                                bad_order_cost=cost_later.result(),
                                                                index_sources=index_sources, purchase_rows=purchase_rows)
        if purchase_model is not None and not policy.is_fitted:
            # an unfitted policy ranks on the LambdaMART score (its logit fallback)
            purchase_model = None
            purchase_fitted["purchase_model.skipped"] = "the policy was left unfitted"
        fitted.update(purchase_fitted)
        truth = truth_later.result() if truth_later is not None else None
    finally:
        background.shutdown(wait=True, cancel_futures=True)
    return _FittedJob(model, plain_model, policy, balancer_config, fitted, valid_part, train_requests, tables_later,
                      purchase_model, truth)


def _purchase_model_and_scores(
    config: PurchaseModelConfig, fit_part: TrainingFrame, valid_part: TrainingFrame, impressions: pd.DataFrame,
    progress: Progress, features: tuple[np.ndarray, np.ndarray],
) -> tuple[PurchaseModel | None, dict[str, Any], np.ndarray | None, tuple[np.ndarray, np.ndarray]]:
    """:func:`fit_purchase_model`, the fitted model's scores of the validation rows, and the
    purchased rows it learned from (:func:`purchase_rows_of`, for the policy fit)."""
    rows = purchase_rows_of(fit_part, valid_part, impressions)
    model, fitted = fit_purchase_model(config, fit_part, valid_part, impressions, progress, features=features,
                                       purchase_rows=rows)
    return model, fitted, None if model is None else model.predict(features[1]), rows


_Truth = tuple[Mapping[str, pd.DataFrame] | None, Mapping[str, Any] | None]


def _import_report_drawing() -> None:
    """Import what the evaluation report draws with (matplotlib's figure and PNG canvas).

    About 1.5 s of Python work that the report would otherwise do after the fits, on the
    job's one busy thread; here it runs while LightGBM boosts without holding the lock.
    """
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def _load_truth(events_dir: Path) -> _Truth:
    """The simulator's hidden truth and its meta beside a simulated dataset (``None``s otherwise)."""
    from .simulate import load_truth, load_truth_meta

    return load_truth(events_dir), load_truth_meta(events_dir)


def _tables_as_of(
    events: EventLog, times: list[pd.Timestamp], config: DatasetConfig
) -> list[tuple[TrustSnapshot, ContextTables]]:
    """The trust snapshot and context tables as of each time (what ``RankingPipeline.as_of`` builds)."""
    from ..features.history import build_context_tables
    from ..features.trust import build_snapshot

    return [(build_snapshot(events, t, config=config.trust), build_context_tables(events, t, config.context)) for t in times]


def _bundle_evaluate_log(
    config: TrainJobConfig, events: EventLog, windows: _Windows, run: _Run, progress: Progress, model: LambdaMART,
    plain_model: LambdaMART | None, policy: Policy, balancer_config: BalancerConfig, fitted: dict[str, Any],
    valid_part: TrainingFrame, train_requests: int, tables_later: list[tuple[TrustSnapshot, ContextTables]],
    purchase_model: PurchaseModel | None = None, truth: _Truth | None = None,
) -> TrainResult:
    import lightgbm as lgb

    from ..ranker.balancer import ExposureBalancer
    from ..ranker.bundle import save_bundle
    from ..ranker.pipeline import RankingPipeline

    schema = model.feature_schema_

    # --- the bundle, saved locally before anything else goes to the tracking store
    local = _local_run_dir(config, run.run_id)
    progress(f"building the serving pipeline as of {windows.end.isoformat()}")
    serving_tables = tables_later[0]
    pipeline = RankingPipeline.from_tables(serving_tables[0], serving_tables[1], model, policy,
                                           ExposureBalancer(balancer_config), schema=schema, purchase_model=purchase_model)
    serving_snapshot = pipeline.snapshot
    bundle_dir = local / BUNDLE_DIR
    progress(f"saving the model bundle to {bundle_dir}")
    save_bundle(pipeline, bundle_dir, signing_key=config.signing_key)
    run.local_copy = bundle_dir
    plain_dir = None
    if plain_model is not None:
        plain_dir = local / PLAIN_MODEL_DIR
        plain_model.save(plain_dir)

    # --- held-out evaluation: snapshot and context as of the window start (no leakage)
    metrics: dict[str, float] = {}
    report_path = None
    if config.evaluate:
        scope = "all" if config.evaluation.max_requests is None else f"the latest {config.evaluation.max_requests:,}"
        progress(f"evaluating on {scope} held-out requests from {windows.holdout_start.date()}")
        eval_pipeline, plain_pipeline = pipelines_as_of(pipeline, plain_model, events, windows.holdout_start,
                                                        tables=tables_later[1])
        truth_tables, truth_meta = truth if truth is not None else _load_truth(config.events)
        evaluation = evaluate_pipeline(
            eval_pipeline, events, (windows.holdout_start, windows.end), plain_pipeline=plain_pipeline,
            truth=truth_tables, truth_meta=truth_meta, config=config.evaluation,
            facts={"run id": run.run_id, "model": f"runs:/{run.run_id}/{MODEL_ARTIFACT}",
                   "training window": f"{windows.data_start.isoformat()} to {windows.holdout_start.isoformat()}"},
            progress=progress,
        )
        report_path, _ = write_evaluation(evaluation, local / EVALUATION_DIR)
        metrics = evaluation.flat_metrics()
    else:
        progress("in-job evaluation off: run `trustfeed evaluate` on this model for held-out metrics")
    importance = _importance_table(model)
    importance_path = local / "feature_importance.csv"
    with atomic_file(importance_path) as tmp:
        importance.to_csv(tmp, index=False)
    manifest_path = local / "snapshot_manifest.json"
    manifest_text = json.dumps(serving_snapshot.manifest if serving_snapshot is not None else {}, indent=2,
                               sort_keys=True, default=str)
    with atomic_file(manifest_path) as tmp:
        tmp.write_text(manifest_text + "\n")

    # --- everything to MLflow
    progress("logging the run to MLflow")
    if fitted:  # repr: the params hold the exact floats the bundle's policy.json serves
        run.log_params({f"fitted.{k}": repr(v) if isinstance(v, float) else str(v) for k, v in fitted.items()})
    # The models are logged before the metrics: MLflow links the run's metrics to each model it
    # logs by reading every metric's history back (two queries per metric and model); the
    # job links them itself below, from the values it has, in one batch per model.
    progress("logging the model (pyfunc + LightGBM booster)")
    model_uri, model_ids = _log_models(run, model, bundle_dir, plain_dir, eval_requests_example(events, windows),
                                       pipeline.live_fields)
    curves = {f"valid_{name.replace('@', '_at_')}": values for name, values in model.evals_result_.get("valid", {}).items()}
    if plain_model is not None:
        curves.update({f"plain.valid_{name.replace('@', '_at_')}": values
                       for name, values in plain_model.evals_result_.get("valid", {}).items()})
    cost_metrics = {k: float(v) for k, v in fitted.items() if k.startswith("policy.bad_order_cost.")}
    run.log_metrics({**metrics, **cost_metrics, "best_iteration": float(model.best_iteration_),
                     "train_requests": float(train_requests), "valid_requests": float(valid_part.groups().size)},
                    series=curves, models=model_ids)
    run.set_tags({
        f"{TAG_PREFIX}snapshot_manifest_sha256": hashlib.sha256(manifest_text.encode()).hexdigest(),
        f"{TAG_PREFIX}local_bundle": str(bundle_dir),
        f"{TAG_PREFIX}lightgbm_version": lgb.__version__,
    })
    run.log_artifact(importance_path)
    run.log_artifact(manifest_path)
    if report_path is not None:
        run.log_artifact(local / EVALUATION_DIR, EVALUATION_DIR)
    if plain_dir is not None:
        run.log_artifact(plain_dir, PLAIN_MODEL_DIR)
    version = None
    if config.register:
        progress(f"registering {config.register!r} with alias {CHALLENGER!r}")
        version = _register(run, config.register, model_uri)
    run.end("FINISHED")
    progress(f"done: run {run.run_id}")
    return TrainResult(run.run_id, model_uri, bundle_dir, metrics, version, report_path)


def _fit_models(
    config: TrainJobConfig, frame: TrainingFrame, fit_part: TrainingFrame, valid_part: TrainingFrame, progress: Progress,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[LambdaMART, LambdaMART | None]:
    """The trust-aware LambdaMART and (with ``train_plain``) the plain one, fitted side by side.

    Each fit runs LightGBM with its own ``num_threads`` and LightGBM releases the GIL while it
    boosts, so the plain model trains in a second thread at the same time instead of after the
    first one; each model is the same as when trained alone (LightGBM is deterministic per fit).
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    X_fit, X_valid = features if features is not None else (fit_part.features(), valid_part.features())
    fit_groups, valid_groups = fit_part.groups(), valid_part.groups()

    def fit_plain() -> Any:
        plain_schema = plain_feature_schema(frame.schema)
        columns = [frame.feature_names.index(n) for n in plain_schema["feature_names"]]
        return LambdaMART(config.plain_model or config.model).fit(
            X_fit[:, columns], fit_part.labels, fit_groups, position=fit_part.positions,
            X_valid=X_valid[:, columns], y_valid=valid_part.labels, group_valid=valid_groups,
            feature_names=plain_schema["feature_names"], categorical=plain_schema["categorical"],
            monotone=plain_schema["monotone"], feature_schema=plain_schema,
        )

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plain-lambdamart") as pool:
        plain_future = None
        if config.train_plain:
            progress("training the plain LambdaMART without trust features (alongside)")
            plain_future = pool.submit(fit_plain)
        progress(f"training LambdaMART on {fit_groups.size:,} requests ({len(fit_part):,} impressions)")
        model = LambdaMART(config.model).fit(
            X_fit, fit_part.labels, fit_groups, position=fit_part.positions,
            X_valid=X_valid, y_valid=valid_part.labels, group_valid=valid_groups,
            feature_names=frame.feature_names, categorical=frame.categorical, monotone=frame.monotone,
            feature_schema=frame.schema,
        )
        plain_model = plain_future.result() if plain_future is not None else None
    return model, plain_model


def _local_run_dir(config: TrainJobConfig, run_id: str) -> Path:
    root = config.output_dir if config.output_dir is not None else Path.cwd() / "trustfeed-models"
    path = (root / run_id).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _importance_table(model: LambdaMART) -> pd.DataFrame:
    gain = model.feature_importance("gain")
    split = model.feature_importance("split")
    table = pd.DataFrame({"feature": gain.index.astype(str), "gain": gain.to_numpy(dtype=float)})
    table["split"] = split.reindex(gain.index).to_numpy(dtype=float)
    total = table["gain"].sum()
    table["gain_share"] = table["gain"] / total if total > 0 else 0.0
    return table


def _data_tags(config: TrainJobConfig, windows: _Windows) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tags = {
        f"{TAG_PREFIX}data_start": windows.data_start.isoformat(),
        f"{TAG_PREFIX}data_end": windows.end.isoformat(),
        f"{TAG_PREFIX}train_start": windows.data_start.isoformat(),
        f"{TAG_PREFIX}valid_start": windows.valid_start.isoformat(),
        f"{TAG_PREFIX}heldout_start": windows.holdout_start.isoformat(),
        f"{TAG_PREFIX}heldout_end": windows.end.isoformat(),
        f"{TAG_PREFIX}events": str(config.events.absolute()),
    }
    try:
        tags[f"{TAG_PREFIX}version"] = version("trustfeed")
    except PackageNotFoundError:
        pass
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    """The commit of the trustfeed source tree, when it is a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def eval_requests_example(events: EventLog, windows: _Windows, n_candidates: int = 3) -> dict[str, Any]:
    """One held-out request (a few candidates) as the model's input example."""
    impressions = events["impressions"]
    later = impressions.loc[(impressions["ts"] >= windows.holdout_start).to_numpy(dtype=bool, na_value=False)]
    first = later["request_id"].iloc[0]
    slate = later.loc[later["request_id"] == first].sort_values("position").head(n_candidates)
    request = requests_from_impressions(slate.assign(request_id=slate["request_id"].astype(str)))[0]
    return request


def _signature(live_fields: tuple[str, ...] = ()) -> Any:
    """Request in, response out (docs/contract.md section 3), as MLflow schema types.

    MLflow enforces the input schema before ``predict`` (also in ``mlflow models serve``):
    candidate fields beyond the ids are accepted only if the model uses them as live context.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

    candidate = Object(
        [Property("stream_id", "string"), Property("creator_id", "string"), Property("merchant_id", "string")]
        + [Property(name, "double", required=False) for name in live_fields]
    )
    inputs = Schema([
        ColSpec("string", "request_id"),
        ColSpec("string", "user_id"),
        ColSpec("string", "ts"),
        # double, not long: in a batch where some requests omit k the column holds NaN,
        # which MLflow cannot convert to int64 (the request parser accepts 10.0 as 10)
        ColSpec("double", "k", required=False),
        ColSpec(Array(candidate), "candidates"),
    ])
    item = Object([
        Property("stream_id", "string"), Property("creator_id", "string"), Property("merchant_id", "string"),
        Property("score", "double"), Property("relevance", "double"), Property("trust", "double", required=False),
    ])
    dropped = Object([Property("stream_id", "string"), Property("reason", "string")])
    outputs = Schema([
        ColSpec("string", "request_id"),
        ColSpec(Array(item), "items"),
        ColSpec(Array(dropped), "filtered", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("lightgbm", "numpy", "pandas", "pyarrow", "scipy", "mlflow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _log_models(
    run: _Run, model: LambdaMART, bundle_dir: Path, plain_dir: Path | None, example: dict[str, Any], live_fields: tuple[str, ...]
) -> tuple[str, list[str]]:
    """Log the pyfunc model and the raw booster; their model URI and the logged models' ids."""
    import mlflow
    import mlflow.lightgbm

    code = str(Path(__file__).with_name("_pyfunc_model.py"))
    artifacts = {"bundle": str(bundle_dir)}
    if plain_dir is not None:
        artifacts[PLAIN_MODEL_DIR] = str(plain_dir)
    requirements = _pip_requirements()

    def log() -> list[str]:
        with mlflow.start_run(run_id=run.run_id):
            served = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=code, artifacts=artifacts, signature=_signature(live_fields),
                input_example=[example], pip_requirements=requirements,
            )
            # the raw Booster (LightGBM text format) for tools that want the trees alone
            booster = mlflow.lightgbm.log_model(
                model.booster_, name=BOOSTER_ARTIFACT,
                pip_requirements=[r for r in requirements if r.startswith(("lightgbm", "numpy"))])
        return [info.model_id for info in (served, booster) if getattr(info, "model_id", None)]

    model_ids: list[str] = run._call("logging the model", lambda: _silently(log))
    return f"runs:/{run.run_id}/{MODEL_ARTIFACT}", model_ids


def _silently(action: Any) -> Any:
    """Run ``action`` with stdout/stderr captured: MLflow prints registry news with print()."""
    import contextlib
    import io

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return action()


def _register(run: _Run, name: str, model_uri: str) -> str:
    def register() -> str:
        import mlflow

        version = mlflow.register_model(model_uri, name)
        run.client.set_registered_model_alias(name, CHALLENGER, version.version)
        return str(version.version)

    result: str = run._call(f"registering {name!r}", lambda: _silently(register))
    return result
