"""Closed-loop evaluation: serve a simulated platform day by day with each ranking policy.

One-shot evaluation scores fixed held-out requests; it cannot see that a buyer who got a
counterfeit comes back less, or that a starved creator stops streaming. :func:`run_rollout`
runs the production loop instead, after the end of a simulated dataset
(:class:`~trustfeed.training.world.World`):

1. each day the world's active buyers issue feed requests (contract request dicts) with
   candidates retrieved upstream as in the simulator;
2. the policy ranks them through the objects a feed service holds
   (:class:`~trustfeed.serving.FeedRanker` -> ``RankingPipeline.rank_many``: one code path);
3. the world draws clicks, orders and bad orders, appends the new events to its log in the
   contract's tables, and the shown impressions go to ``record_impressions`` (the balancer's
   exposure ledger);
4. on the schedule (daily by default) the trust snapshot and context tables are rebuilt from
   the log as of that day and swapped in with ``FeedRanker.reload_snapshot``.

Every policy of :data:`~trustfeed.training.evaluation.policies.POLICIES` sees the same world
and, through keyed random numbers, the same draws for the same (day, buyer, candidate); each
seed is a separate trajectory and the summary gives 95% t-intervals across seeds.

Metrics (per day and over the whole rollout)
--------------------------------------------
``requests``; ``orders`` (feed orders placed), ``good_orders`` and ``bad_orders`` (truth:
the order went wrong for the buyer), ``bad_order_rate``; ``gmv`` (amount of orders not
cancelled); ``net_value`` = good - ``bad_cost`` x bad; ``active_buyers`` (buyers who opened
the feed; over the rollout: at least once); ``buyer_retention`` (buyers active in the first
7 days who are active in the last 7; the windows shrink to half the rollout when it is
shorter than 14 days); ``visits_per_day_end`` (feed requests a day over the same last
window: how often buyers still come at the end; cumulative only); ``mean_buyer_trust``
(platform trust of all buyers at the end of the day); ``active_creators`` and their ``_head`` / ``_tail`` split (top 20% of creators by
followers; creators who streamed that day, over the rollout: in its last 7 days); ``gini``
of creator exposure (``1 / log2(position + 1)``, over every creator that was a candidate in
the day / the rollout); ``long_tail_share`` (exposure share of creators outside the top 20%
by followers among those candidates); ``trust_weighted_exposure`` (exposure-weighted mean
latent merchant trust); ``oracle_gain_share`` = (net value - plain's) / (oracle's -
plain's), cumulative to that day, ``None`` without both arms or when the oracle gains
nothing; ``expected_orders``, ``expected_bad_orders``, ``expected_net_value``: the same
slates' expected outcomes (the world's click, purchase and bad-order probabilities at the
positions shown), which the drawn counts above average to: the same comparison without the
draw noise, and what a one-shot evaluation of the same slates would give.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...features.errors import ConfigError, SchemaError
from ...features.progress import NullProgress, Progress
from ...ranker import metrics as m
from ..world import DayOutcome, DynamicsConfig, World, WorldBase
from .policies import POLICIES, PolicyContext, PolicySpec, resolve_policies

if TYPE_CHECKING:
    from ...features.events import EventLog
    from ...features.history import ContextTables
    from ...features.trust import TrustSnapshot
    from ...ranker.pipeline import RankingPipeline

__all__ = ["METRICS", "RolloutResult", "run_rollout"]

ROLLOUT_FORMAT_VERSION = 1
DEFAULT_BAD_COST = 2.0
HEAD_FRACTION = 0.2
_WEEK = 7

METRICS: tuple[str, ...] = (
    "requests", "orders", "good_orders", "bad_orders", "bad_order_rate", "gmv", "net_value",
    "active_buyers", "buyer_retention", "mean_buyer_trust", "active_creators", "active_creators_head",
    "active_creators_tail", "gini", "long_tail_share", "trust_weighted_exposure", "oracle_gain_share",
    "expected_orders", "expected_bad_orders", "expected_net_value", "visits_per_day_end",
)
"""Metric keys of every daily and cumulative row."""

_STAGES = ("ranking", "outcomes", "snapshot", "total")


@dataclass
class RolloutResult:
    """The outcome of :func:`run_rollout`; :meth:`to_json` is ``rollout.json``."""

    model: str | None
    model_uri: str
    start: pd.Timestamp
    days: int
    seeds: list[int]
    bad_cost: float
    dynamics: DynamicsConfig
    policies: list[str]
    daily: pd.DataFrame
    cumulative: pd.DataFrame
    timing: dict[str, dict[str, float]]
    rebuild_every_days: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """Per policy and metric: mean over seeds and its 95% t-interval (``None`` for one seed)."""
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for policy in self.policies:
            rows = self.cumulative.loc[self.cumulative["policy"] == policy]
            out[policy] = {metric: _t_interval(rows[metric].to_numpy(np.float64)) for metric in METRICS}
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``rollout.json`` document (plain JSON: no NaN, ``None`` instead)."""
        return {
            "format_version": ROLLOUT_FORMAT_VERSION,
            "model": self.model,
            "model_uri": self.model_uri,
            "start": self.start.isoformat(),
            "days": self.days,
            "seeds": list(self.seeds),
            "bad_cost": self.bad_cost,
            "rebuild_every_days": self.rebuild_every_days,
            "dynamics": self.dynamics.to_dict(),
            "policies": list(self.policies),
            "labels": dict(self.labels),
            "daily": _records(self.daily),
            "cumulative": _records(self.cumulative),
            "summary": self.summary(),
            "timing": self.timing,
        }


def _t_interval(values: np.ndarray) -> dict[str, float | None]:
    from scipy import stats

    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None}
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict("records"):
        out.append({str(key): _plain(value) for key, value in row.items()})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------- inputs


def _check_arguments(days: Any, seeds: Any, rebuild_every_days: Any, bad_cost: Any) -> None:
    for name, value in (("days", days), ("seeds", seeds), ("rebuild_every_days", rebuild_every_days)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"rollout: {name} must be an integer >= 1, got {value!r}")
    if bad_cost is not None and (
        not isinstance(bad_cost, (int, float)) or isinstance(bad_cost, bool) or not 0.0 <= bad_cost < math.inf
    ):
        raise ConfigError(f"rollout: bad_cost must be a finite number >= 0, got {bad_cost!r}")


def _load_model(model_uri: str, tracking_uri: str | None) -> tuple[Any, Any]:
    from ...features.errors import ModelIntegrityError
    from ._models import load_models_for_evaluation

    try:
        return load_models_for_evaluation(model_uri, tracking_uri)
    except FileNotFoundError as error:
        raise ModelIntegrityError(model_uri, f"does not resolve to a model ({error.strerror or error})") from None


def _snapshot_builder(
    served: RankingPipeline,
) -> Callable[[EventLog, pd.Timestamp, Mapping[str, Any] | None], tuple[TrustSnapshot, ContextTables | None]]:
    """``build(events, as_of, index) -> (snapshot, context)`` with the served model's trust settings.

    ``index``: trust index weights to carry (an earlier snapshot's ``index_model``) instead
    of refitting them, as the incremental trust update does (``None``: refit).
    """

    def build(
        events: EventLog, as_of: pd.Timestamp, index: Mapping[str, Any] | None = None
    ) -> tuple[TrustSnapshot, ContextTables | None]:
        rebuilt = served.rebuilt_as_of(events, as_of, index=index)
        if rebuilt.snapshot is None:  # rebuilt_as_of always builds one
            raise ConfigError(f"rollout: no trust snapshot could be built as of {as_of.isoformat()}")
        return rebuilt.snapshot, rebuilt.context

    return build


# ----------------------------------------------------------------------------- metrics


class _Recorder:
    """Per-day metrics of one (policy, seed) trajectory and what the cumulative ones need."""

    def __init__(self, world: World) -> None:
        followers = world.creators["followers"]
        n = len(followers)
        head_n = math.ceil(HEAD_FRACTION * n)
        order = np.lexsort((np.arange(n), -followers))
        self.head = np.zeros(n, dtype=bool)
        self.head[order[:head_n]] = True
        self.followers = world.creator_followers()
        self.creator_ids = world.base.creator_ids
        self.exposure = np.zeros(n)
        self.candidates = np.zeros(n, dtype=bool)
        self.active_buyers: list[np.ndarray] = []
        self.active_creators: list[np.ndarray] = []
        self.rows: list[dict[str, float]] = []

    def record(self, outcome: DayOutcome, candidates: pd.DataFrame, active_creators: np.ndarray) -> dict[str, float]:
        shown = outcome.shown
        creator = shown["creator"].to_numpy()
        exposure = np.bincount(creator, weights=shown["exposure"].to_numpy(), minlength=len(self.head))
        population = np.zeros(len(self.head), dtype=bool)
        population[candidates["creator"].to_numpy()] = True
        self.exposure += exposure
        self.candidates |= population
        self.active_buyers.append(np.unique(candidates["user"].to_numpy()))
        self.active_creators.append(active_creators)
        row = dict(outcome.metrics)
        row.update(self._exposure_metrics(exposure, population))
        row["active_creators_head"] = float(self.head[active_creators].sum())
        row["active_creators_tail"] = float((~self.head[active_creators]).sum())
        self.rows.append(row)
        return row

    def _exposure_metrics(self, exposure: np.ndarray, population: np.ndarray) -> dict[str, float]:
        ids = self.creator_ids[population]
        series = pd.Series(exposure[population], index=ids)
        if series.sum() <= 0:
            return {"gini": float("nan"), "long_tail_share": float("nan")}
        return {
            "gini": float(m.gini(series.to_numpy())),
            "long_tail_share": float(m.long_tail_share(series, followers=self.followers, head_fraction=HEAD_FRACTION)),
        }

    def cumulative(self) -> dict[str, float]:
        frame = pd.DataFrame(self.rows)
        summed = ("requests", "orders", "good_orders", "bad_orders", "gmv", "net_value",
                  "expected_orders", "expected_bad_orders", "expected_net_value")
        out = {key: float(frame[key].sum()) for key in summed}
        out["bad_order_rate"] = out["bad_orders"] / out["orders"] if out["orders"] else 0.0
        out["active_buyers"] = float(len(np.unique(np.concatenate(self.active_buyers))))
        week = min(_WEEK, max(1, len(self.rows) // 2))
        first = np.unique(np.concatenate(self.active_buyers[:week]))
        last = np.unique(np.concatenate(self.active_buyers[-week:]))
        out["buyer_retention"] = float(np.isin(first, last).mean()) if len(first) else float("nan")
        out["visits_per_day_end"] = float(frame["requests"].iloc[-week:].mean())
        out["mean_buyer_trust"] = float(frame["mean_buyer_trust"].iloc[-1])
        recent = np.unique(np.concatenate(self.active_creators[-min(_WEEK, len(self.rows)):]))
        out["active_creators"] = float(len(recent))
        out["active_creators_head"] = float(self.head[recent].sum())
        out["active_creators_tail"] = float((~self.head[recent]).sum())
        out.update(self._exposure_metrics(self.exposure, self.candidates))
        shown_weight = frame["trust_weighted_exposure"].to_numpy()
        out["trust_weighted_exposure"] = float(np.nanmean(shown_weight)) if len(shown_weight) else float("nan")
        return out


def _oracle_gain_share(frame: pd.DataFrame, value: str = "net_value") -> np.ndarray:
    """``(v - plain) / (oracle - plain)`` per row, matched on every other key column."""
    keys = [c for c in ("seed", "day") if c in frame.columns]
    plain = frame.loc[frame["policy"] == "plain", [*keys, value]].rename(columns={value: "_plain"})
    oracle = frame.loc[frame["policy"] == "oracle", [*keys, value]].rename(columns={value: "_oracle"})
    if plain.empty or oracle.empty:
        return np.full(len(frame), np.nan)
    joined = frame[[*keys, value]].merge(plain, on=keys, how="left").merge(oracle, on=keys, how="left")
    gain = joined["_oracle"].to_numpy() - joined["_plain"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (joined[value].to_numpy() - joined["_plain"].to_numpy()) / gain
    return np.where(gain > 0, share, np.nan)


# ----------------------------------------------------------------------------- the loop


def run_rollout(
    model_uri: str,
    events_dir: str | Path,
    *,
    days: int = 28,
    seeds: int = 3,
    policies: Sequence[str] | None = None,
    bad_cost: float | None = None,
    dynamics: DynamicsConfig | None = None,
    tracking_uri: str | None = None,
    rebuild_every_days: int = 1,
    refit_index_every_days: int | None = None,
    progress: Progress | None = None,
    registry: Mapping[str, PolicySpec] | None = None,
) -> RolloutResult:
    """Serve the simulated platform behind ``events_dir`` for ``days`` days with each policy.

    Parameters
    ----------
    model_uri
        The trained model (a bundle directory, an MLflow model directory, ``runs:/...``,
        ``models:/name@alias``); its plain LambdaMART is used by the ``plain`` policy.
    events_dir
        A dataset written by ``trustfeed simulate`` (with ``truth/``); the rollout starts at
        its end.
    days, seeds
        Length of each trajectory and number of seeds (trajectories per policy: 0, 1, ...).
    policies
        Names from :data:`~trustfeed.training.evaluation.policies.POLICIES` (default: all).
    bad_cost
        Cost of a bad order in net value (default: the served policy's ``bad_cost``, else 2).
    dynamics
        :class:`~trustfeed.training.world.DynamicsConfig` (default: every dynamic on).
    tracking_uri
        MLflow tracking URI for ``runs:/`` and ``models:/`` URIs.
    rebuild_every_days
        Rebuild the trust snapshot and context tables every this many days.
    refit_index_every_days
        ``None``: every rebuild refits the trust index weights (a full rebuild). A number:
        rebuilds carry the weights of the trajectory's last refit (the rollout-start
        snapshot's at first) and refit only every this many days, as a service that updates
        trust incrementally and rebuilds in full on a slower schedule does (faster: the fit
        costs two extra evidence passes over the log).
    progress
        Receives a call per policy, seed and day.
    registry
        Where ``policies`` are looked up (default:
        :data:`~trustfeed.training.evaluation.policies.POLICIES`); a sweep passes its own
        entries, e.g. one per lever value.

    Raises
    ------
    ConfigError
        An unknown policy name, ``days`` or ``seeds`` below 1, a policy the model cannot
        serve (``plain`` without a plain LambdaMART).
    SchemaError
        The events are not a simulated dataset (no ``truth/``).
    ModelIntegrityError
        The model URI does not resolve to a valid model.

    Examples
    --------
    >>> result = run_rollout("models:/feed-ranker@champion", "events/", days=28, seeds=3)  # doctest: +SKIP
    >>> result.summary()["trust_aware_balanced"]["net_value"]["mean"]  # doctest: +SKIP
    412.0
    """
    from ..simulate import load_truth_meta

    _check_arguments(days, seeds, rebuild_every_days, bad_cost)
    every = refit_index_every_days
    if every is not None and (not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1):
        raise ConfigError(f"rollout: refit_index_every_days must be None or an integer >= 1, got {every!r}")
    specs = POLICIES if registry is None else registry
    names = resolve_policies(policies, specs)
    report = progress if progress is not None else NullProgress()
    if load_truth_meta(events_dir) is None:
        raise SchemaError("truth", None, "a dataset written by `trustfeed simulate` (truth/meta.json)", f"no truth/ in {events_dir}")
    report(f"rollout: loading model {model_uri}")
    served, plain_model = _load_model(str(model_uri), tracking_uri)
    if "plain" in names and plain_model is None:
        raise ConfigError("policy 'plain': the model carries no plain LambdaMART (plain_model/ beside the bundle)")
    cost = float(bad_cost) if bad_cost is not None else float(getattr(served.policy.config, "bad_cost", DEFAULT_BAD_COST))
    dynamics = dynamics if dynamics is not None else DynamicsConfig()
    report(f"rollout: rebuilding the platform behind {events_dir}")
    base = WorldBase.from_events(events_dir)
    build = _snapshot_builder(served)
    report(f"rollout: trust snapshot as of {base.start.isoformat()}")
    first_snapshot = build(base.events, base.start, None)

    daily: list[dict[str, Any]] = []
    cumulative: list[dict[str, Any]] = []
    timing = {name: dict.fromkeys(_STAGES, 0.0) for name in names}
    total = len(names) * seeds
    done = 0
    for seed in range(seeds):
        for name in names:
            spec = specs[name]
            report(f"rollout: {name}, seed {seed}", done, total)
            started = time.perf_counter()
            world = World(base, seed=seed, dynamics=dynamics, bad_cost=cost)
            ranker = spec.build(PolicyContext(served=served, plain_model=plain_model, world=world, bad_cost=cost))
            clock = timing[name]
            if spec.uses_snapshot:
                ranker.reload_snapshot(*first_snapshot)
            weights = first_snapshot[0].manifest.get("index_model")
            recorder = _Recorder(world)
            for day in range(days):
                if spec.uses_snapshot and day > 0 and day % rebuild_every_days == 0:
                    t = time.perf_counter()
                    refit = refit_index_every_days is None or day % refit_index_every_days == 0
                    snapshot, context = build(world.events(), world.now, None if refit else weights)
                    if refit:
                        weights = snapshot.manifest.get("index_model")
                    ranker.reload_snapshot(snapshot, context)
                    clock["snapshot"] += time.perf_counter() - t
                t = time.perf_counter()
                requests = world.next_requests()
                clock["outcomes"] += time.perf_counter() - t
                t = time.perf_counter()
                responses = ranker.rank_many(requests.requests)
                clock["ranking"] += time.perf_counter() - t
                t = time.perf_counter()
                active_creators = world.today_active_creators()
                outcome = world.serve(requests, responses)
                ranker.record_impressions(outcome.impressions)
                row = recorder.record(outcome, requests.candidates, active_creators)
                clock["outcomes"] += time.perf_counter() - t
                daily.append({"policy": name, "seed": seed, "day": day, **row})
            cumulative.append({"policy": name, "seed": seed, **recorder.cumulative()})
            clock["total"] += time.perf_counter() - started
            done += 1
    report("rollout: done", done, total)

    daily_frame = pd.DataFrame(daily)
    # the oracle's share is taken on net value accumulated to each day
    running = daily_frame.assign(net_value=daily_frame.groupby(["policy", "seed"])["net_value"].cumsum())
    daily_frame["oracle_gain_share"] = _oracle_gain_share(running)
    cumulative_frame = pd.DataFrame(cumulative)
    cumulative_frame["oracle_gain_share"] = _oracle_gain_share(cumulative_frame)
    columns = [c for c in METRICS if c in daily_frame.columns]
    daily_frame = daily_frame[["policy", "seed", "day", *columns]]
    for metric in METRICS:
        if metric not in daily_frame.columns:
            daily_frame[metric] = np.nan  # e.g. buyer_retention only exists over the rollout
    daily_frame = daily_frame[["policy", "seed", "day", *METRICS]]
    cumulative_frame = cumulative_frame[["policy", "seed", *METRICS]]
    return RolloutResult(
        model=served.model_id, model_uri=os.fspath(model_uri), start=base.start, days=days,
        seeds=list(range(seeds)), bad_cost=cost, dynamics=dynamics, policies=names,
        daily=daily_frame, cumulative=cumulative_frame,
        timing={name: {stage: round(value, 4) for stage, value in clocks.items()} for name, clocks in timing.items()},
        rebuild_every_days=rebuild_every_days, labels={name: specs[name].label for name in names},
    )
