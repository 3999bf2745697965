"""Offline evaluation: rank held-out feed requests and measure quality, fairness and trust.

The held-out requests are the logged impressions' slates in a time window. Each is sent,
as a docs/contract.md section 3 request, through the same :class:`~trustfeed.ranker.pipeline.RankingPipeline`
that serving uses (``rank_many``), with and without the exposure balancer; the plain
LambdaMART trained without trust features goes through a pipeline of its own. The
baselines (relevance only, per-creator cap, FA*IR quota) and a sweep of balancer strength
re-rank the same relevance scores. Every policy's lists are then measured with
:mod:`trustfeed.ranker.metrics` (docs/contract.md section 4), and, when the events come from the
simulator (``truth/`` present), with the simulator's counterfactual expected outcomes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import pandas as pd

from ...features.config import Config, Constraints, Flag, Integer, Items, Real
from ...features.errors import ConfigError, SchemaError
from ...features.events import TimeLike
from ...features.io import atomic_file
from ...features.outcomes import net_value
from ...features.progress import NullProgress, Progress
from ._models import load_models_for_evaluation, pipelines_as_of
from .frontier import BALANCER_SWEEP, frontier_summary, pareto_verdicts
from .report import ReportContent, render_report

if TYPE_CHECKING:
    from ...features.events import EventLog
    from ...features.trust import TrustSnapshot
    from ...ranker.interfaces import Reranker
    from ...ranker.lambdamart import LambdaMART
    from ...ranker.pipeline import RankingPipeline

__all__ = [
    "EvalConfig",
    "EvalResult",
    "Evaluation",
    "POLICY_LABELS",
    "evaluate",
    "evaluate_pipeline",
    "held_out_window",
    "requests_from_impressions",
    "write_evaluation",
]

REPORT_NAME = "report.html"
METRICS_NAME = "metrics.json"

# policy key -> label shown in the report (keys are used in metric names)
POLICY_LABELS: dict[str, str] = {
    "logging": "logging policy",
    "plain": "plain LambdaMART (no trust features)",
    "relevance_only": "relevance only",
    "trust_aware": "trust-aware, no balancer",
    "served": "trust-aware + balancer",
    "creator_cap": "per-creator cap",
    "fair_quota": "FA*IR long-tail quota",
    "det_const_sort": "DetConstSort long-tail share",
}

TRADEOFF_COLUMNS = ["policy", "kind", "strength", "ndcg_at_10", "gini", "expected_orders", "net_value", "bad_order_rate"]

# the served configuration's metrics are logged without a prefix (promotion compares them)
SERVED = "served"


@dataclass(frozen=True)
class EvalConfig(Config):
    """What the offline evaluation measures.

    Parameters
    ----------
    holdout_fraction
        The latest share of the impressions' time span that is held out: the training job
        evaluates on it (and trains before it), and ``evaluate`` uses it when neither dates
        nor the training run give the window.
    sweep_strengths
        Fixed balancer strengths of the quality/fairness sweep (the controller is off).
    other_lift_sweep
        Also sweep the balancer with its other lift rule (``"position"`` when the served one
        lifts on the score, and the reverse), labelled ``balancer sweep (<rule> lift)``: the
        two rules on the same requests.
    quota_sweep_ps
        Target long-tail shares ``p`` of the FA*IR and DetConstSort sweeps (each in (0, 1);
        empty: not run).
    levers
        Measure the operator levers' table (each lever at a few values; see
        :mod:`~trustfeed.training.evaluation.levers`).
    fairco_strengths, pmmf_strengths
        Strengths of the FairCo-style and P-MMF-style baselines swept on the same axes
        (:class:`~trustfeed.ranker.baselines.FairCoReranker`,
        :class:`~trustfeed.ranker.baselines.PMMFReranker`; empty: not run).
    cap_per_creator, cap_k
        Per-creator cap baseline: at most ``cap_per_creator`` items per creator in the top ``cap_k``.
    fair_k, fair_p, fair_alpha
        FA*IR baseline: long-tail creators (outside the top 20% by followers) protected with
        target proportion ``fair_p`` at significance ``fair_alpha`` in the top ``fair_k``.
    head_fraction
        Share of creators (by followers) that form the head.
    new_merchant_days
        Merchants registered less than this many days before the window start are "new".
    low_trust_quantile
        Candidates whose merchant trust is in the bottom this-fraction of the window's
        (unfiltered) candidates are "low trust". A quantile, not an absolute cut, because
        trust indexes are skewed: most merchants score high and an absolute cut such as
        0.5 leaves the low segment empty once banned merchants are filtered.
    max_requests
        Evaluate at most this many requests (the latest ones); ``None``: all.

    Examples
    --------
    >>> EvalConfig.from_dict(EvalConfig(max_requests=100).to_dict()).max_requests
    100
    """

    holdout_fraction: float = 0.2
    sweep_strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    other_lift_sweep: bool = False
    fairco_strengths: tuple[float, ...] = (0.01, 0.1, 1.0)
    quota_sweep_ps: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    levers: bool = True
    pmmf_strengths: tuple[float, ...] = (0.1, 0.5, 2.0)
    cap_per_creator: int = 1
    cap_k: int = 10
    fair_k: int = 10
    fair_p: float = 0.5
    fair_alpha: float = 0.1
    head_fraction: float = 0.2
    new_merchant_days: float = 30.0
    low_trust_quantile: float = 0.25
    max_requests: int | None = None

    constraints: ClassVar[Constraints] = {
        "holdout_fraction": Real(0, 1, strict_low=True, strict_high=True),
        "sweep_strengths": Items(Real(0), min_len=1),
        "fairco_strengths": Items(Real(0)),
        "pmmf_strengths": Items(Real(0)),
        "quota_sweep_ps": Items(Real(0, 1, strict_low=True, strict_high=True)),
        "levers": Flag(),
        "other_lift_sweep": Flag(),
        **dict.fromkeys(("cap_per_creator", "cap_k", "fair_k"), Integer(low=1)),
        **dict.fromkeys(("fair_p", "fair_alpha", "head_fraction", "low_trust_quantile"), Real(0, 1, strict_low=True, strict_high=True)),
        "new_merchant_days": Real(0, strict_low=True),
        "max_requests": Integer(low=1, optional=True),
    }


@dataclass(frozen=True)
class EvalResult:
    """Where :func:`evaluate` wrote its outputs, and the flat metrics."""

    report_path: Path
    metrics_path: Path
    metrics: dict[str, float]
    run_id: str | None = None


@dataclass
class Evaluation:
    """Everything one evaluation measured (before it is written)."""

    window: tuple[pd.Timestamp, pd.Timestamp]
    n_requests: int
    policies: dict[str, dict[str, float]]
    tradeoff: pd.DataFrame
    segments: pd.DataFrame
    counterfactual: pd.DataFrame | None
    content: ReportContent
    notes: list[str] = field(default_factory=list)
    comparison: pd.DataFrame | None = None
    frontier: pd.DataFrame | None = None
    levers: pd.DataFrame | None = None

    def flat_metrics(self) -> dict[str, float]:
        """Metrics as MLflow keys: the served policy's unprefixed, the others ``<policy>.<metric>``."""
        flat: dict[str, float] = {}
        for policy, values in self.policies.items():
            for name, value in values.items():
                key = name if policy == SERVED else f"{policy}.{name}"
                flat[key] = float(value)
        # the "without balancer" numbers under the names the issue uses
        for name in ("ndcg_at_5", "ndcg_at_10", "gini", "long_tail_share", "bad_order_exposure", "trust_weighted_exposure"):
            if name in self.policies.get("trust_aware", {}):
                flat[f"{name}_no_balancer"] = float(self.policies["trust_aware"][name])
        if self.counterfactual is not None:
            for cf_policy, row in self.counterfactual.iterrows():
                for cf_name, value in row.items():
                    flat[f"counterfactual.{cf_policy}.{cf_name}"] = float(value)
        if self.comparison is not None:
            keys = {"net value": "net_value", "bad-order rate": "bad_order_rate",
                    "Gini of creator exposure": "gini", "expected orders": "expected_orders"}
            for label, row in self.comparison.iterrows():
                flat[f"vs_plain.{keys.get(str(label), str(label))}_ratio"] = float(row["ratio"])
        flat["heldout_requests"] = float(self.n_requests)
        return {k: v for k, v in flat.items() if math.isfinite(v)}

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` document."""
        return {
            "format_version": 1,
            "window": {"start": self.window[0].isoformat(), "end": self.window[1].isoformat()},
            "n_requests": self.n_requests,
            "policies": {p: {k: _json_float(v) for k, v in m.items()} for p, m in self.policies.items()},
            "policy_labels": {p: POLICY_LABELS.get(p, p) for p in self.policies},
            "tradeoff": _records(self.tradeoff),
            "segments": _records(self.segments),
            "counterfactual": None if self.counterfactual is None else {
                str(p): {k: _json_float(v) for k, v in row.items()} for p, row in self.counterfactual.iterrows()
            },
            "against_plain": None if self.comparison is None else {
                str(k): {c: (_json_float(v) if isinstance(v, float) else v) for c, v in row.items()}
                for k, row in self.comparison.iterrows()
            },
            "frontier": None if self.frontier is None else _records(self.frontier),
            "levers": None if self.levers is None else _records(self.levers),
            "notes": list(self.notes),
        }


def _json_float(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{str(k): (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()} for r in out]


# ----------------------------------------------------------------------------- held-out data


def held_out_window(events: EventLog, start: TimeLike | None = None, end: TimeLike | None = None, holdout_fraction: float = 0.2) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The evaluation window ``[start, end)`` over the impressions.

    Missing bounds default to the latest ``holdout_fraction`` of the impressions' time span
    (start) and just after the last impression (end).
    """
    from ...features.events import to_utc

    ts = events["impressions"]["ts"]
    if ts.empty:
        raise SchemaError("impressions", "ts", "logged impressions to evaluate on", "an empty table")
    first, last = ts.min(), ts.max()
    stop = to_utc(end) if end is not None else last + pd.Timedelta(microseconds=1)
    if start is not None:
        begin = to_utc(start)
    else:
        begin = (first + (stop - first) * (1.0 - holdout_fraction)).floor("D")
        begin = max(begin, first)
    if not begin < stop:
        raise ConfigError(f"evaluation window: start {begin.isoformat()} is not before end {stop.isoformat()}")
    return begin, stop


def _logged_slates(events: EventLog, window: tuple[pd.Timestamp, pd.Timestamp], max_requests: int | None) -> pd.DataFrame:
    """Impressions of the requests that started inside ``window``, with graded labels."""
    from ..dataset import graded_labels

    impressions = events["impressions"]
    request_start = impressions.groupby("request_id", sort=False, observed=True)["ts"].transform("min")
    inside = ((request_start >= window[0]) & (request_start < window[1])).to_numpy(dtype=bool, na_value=False)
    logged = impressions.loc[inside].reset_index(drop=True)
    if logged.empty:
        raise SchemaError(
            "impressions", "ts", f"requests in [{window[0].isoformat()}, {window[1].isoformat()})", "none"
        )
    logged = logged.drop_duplicates(["request_id", "stream_id"], keep="first").reset_index(drop=True)
    logged["request_ts"] = logged.groupby("request_id", sort=False, observed=True)["ts"].transform("min")
    if max_requests is not None:
        starts = logged.drop_duplicates("request_id").sort_values(["request_ts", "request_id"])
        keep = starts["request_id"].iloc[-max_requests:]
        logged = logged.loc[logged["request_id"].isin(keep)].reset_index(drop=True)
    labels = graded_labels(logged, events)
    frame = pd.DataFrame(
        {
            "request_id": logged["request_id"].astype(str).to_numpy(),
            "user_id": logged["user_id"].astype(str).to_numpy(),
            "ts": logged["request_ts"].to_numpy(),
            "stream_id": logged["stream_id"].astype(str).to_numpy(),
            "creator_id": logged["creator_id"].astype(str).to_numpy(),
            "merchant_id": logged["merchant_id"].astype(str).to_numpy(),
            "logged_position": logged["position"].to_numpy(dtype=np.int64),
            "label": labels,
        }
    )
    return frame.sort_values(["ts", "request_id", "logged_position"], kind="stable").reset_index(drop=True)


def requests_from_impressions(slates: pd.DataFrame) -> list[dict[str, Any]]:
    """docs/contract.md section 3 requests from logged slates (one per ``request_id``, in row order).

    ``slates`` needs ``request_id``, ``user_id``, ``ts`` and the candidate ids, rows of a
    request together. Requests are Python objects, so building them is one pass over rows;
    everything after works on whole columns.

    Examples
    --------
    >>> slates = pd.DataFrame({"request_id": ["r1", "r1"], "user_id": ["u1", "u1"],
    ...                        "ts": pd.Timestamp("2026-01-05 12:00", tz="UTC"),
    ...                        "stream_id": ["s1", "s2"], "creator_id": ["c1", "c2"], "merchant_id": ["m1", "m1"]})
    >>> [r["candidates"][1]["stream_id"] for r in requests_from_impressions(slates)]
    ['s2']
    """
    if slates.empty:
        return []
    ids = slates["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    bounds = np.r_[starts, len(ids)]
    candidates = slates[["stream_id", "creator_id", "merchant_id"]].astype(str).to_dict(orient="records")
    heads = slates.iloc[starts]
    times = pd.to_datetime(heads["ts"], utc=True).map(lambda t: t.isoformat()).tolist()
    return [
        {"request_id": str(rid), "user_id": str(uid), "ts": ts, "candidates": candidates[a:b]}
        for rid, uid, ts, a, b in zip(heads["request_id"], heads["user_id"], times, bounds[:-1], bounds[1:], strict=True)
    ]


def _flatten(responses: Sequence[Mapping[str, Any]], part: str, columns: list[str]) -> pd.DataFrame:
    """The ``part`` lists (``items`` or ``filtered``) of many responses as one long frame."""
    counts = np.fromiter((len(r.get(part) or ()) for r in responses), dtype=np.int64, count=len(responses))
    rows = list(itertools.chain.from_iterable(r.get(part) or () for r in responses))
    frame = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    request_ids = np.array([str(r.get("request_id")) for r in responses], dtype=object)
    frame.insert(0, "request_id", np.repeat(request_ids, counts))
    return frame


def _responses_frame(responses: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Served items of many responses as a long frame with 1-based positions."""
    items = _flatten(responses, "items", ["stream_id", "creator_id", "merchant_id", "score", "relevance", "trust"])
    items["position"] = items.groupby("request_id", sort=False).cumcount().to_numpy() + 1
    for name in ("score", "relevance", "trust"):
        items[name] = pd.to_numeric(items[name], errors="coerce").astype(np.float64)
    return items


def _filtered_frame(responses: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return _flatten(responses, "filtered", ["stream_id", "reason"])


def _order_to_positions(frame: pd.DataFrame, key: np.ndarray) -> np.ndarray:
    """1-based position of each row when each request is sorted by ``key`` ascending."""
    order = np.lexsort((key, frame["request_id"].to_numpy()))
    ranked = frame.iloc[order]
    positions = np.empty(len(frame), dtype=np.int64)
    positions[order] = ranked.groupby("request_id", sort=False).cumcount().to_numpy() + 1
    return positions


def _per_request_order(base: pd.DataFrame, rerank: Any) -> pd.DataFrame:
    """Apply ``rerank(a, b) -> order`` to the rows ``a:b`` of every request of ``base``.

    ``base`` rows of one request are contiguous, in time order. The re-rankers are
    per-request by nature (the balancer's ledger carries state from one request to the
    next), so this is one call per request over array slices of its candidates.
    """
    ids = base["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    bounds = np.r_[starts, len(ids)]
    positions = np.empty(len(base), dtype=np.int64)
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        order = np.asarray(rerank(a, b), dtype=np.int64)
        positions[a + order] = np.arange(1, b - a + 1)
    out = base.copy()
    out["position"] = positions
    return out


# ----------------------------------------------------------------------------- pipelines


def _pipeline_parts(pipeline: RankingPipeline) -> tuple[TrustSnapshot | None, LambdaMART, Reranker | None]:
    """(snapshot, model, balancer) of a ranking pipeline (the evaluation reports the model's importances)."""
    return pipeline.snapshot, cast("LambdaMART", pipeline.model), pipeline.balancer


def _without_balancer(pipeline: RankingPipeline) -> RankingPipeline:
    """The same assembler, model and policy, ranking by the policy score alone."""
    from ...ranker.pipeline import RankingPipeline

    return RankingPipeline(pipeline.assembler, pipeline.model, pipeline.policy, None,
                           snapshot=pipeline.snapshot, context=pipeline.context, model_id=pipeline.model_id,
                           purchase_model=pipeline.purchase_model)


def _rank_all(pipeline: RankingPipeline, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # record=True: the balancer's ledger follows the held-out traffic as it would in serving
    return list(pipeline.rank_many(requests, record=True))


# ----------------------------------------------------------------------------- measuring


def _measure(
    ranked: pd.DataFrame,
    population: pd.Index,
    followers: pd.Series | None,
    head_fraction: float,
) -> dict[str, float]:
    from ...ranker import metrics as m

    ndcg5 = m.mean_ndcg(ranked, 5)
    ndcg10 = m.mean_ndcg(ranked, 10)
    exposure = m.exposure_by(ranked, "creator_id", population=population)
    values = {
        "ndcg_at_5": ndcg5.mean,
        "ndcg_at_10": ndcg10.mean,
        "gini": m.gini(exposure.to_numpy()),
        "long_tail_share": m.long_tail_share(exposure, followers=followers, head_fraction=head_fraction),
        "creator_coverage": m.creator_coverage(exposure),
        "bad_order_exposure": m.bad_order_exposure(ranked, "p_bad"),
        "trust_weighted_exposure": m.exposure_weighted_trust(ranked, "trust"),
        "lists_without_positive": float(ndcg10.n_skipped),
    }
    if "relevance_position" in ranked.columns and ranked["relevance_position"].notna().all():
        values["kendall_tau_vs_relevance"] = m.mean_kendall_tau(ranked, "relevance_position")
    return {k: float(v) for k, v in values.items()}


def _counterfactual(
    ranked_by_policy: Mapping[str, pd.DataFrame], truth_impressions: pd.DataFrame, meta: Mapping[str, Any], bad_cost: float
) -> pd.DataFrame:
    """Expected orders, good and bad orders and net value (at ``bad_cost``) of each policy's rankings."""
    from ..simulate import expected_outcomes

    rows = {}
    for policy, ranked in ranked_by_policy.items():
        outcome = expected_outcomes(ranked[["request_id", "stream_id", "position"]], truth_impressions, meta)
        orders = float(outcome["expected_orders"].sum())
        bad = float(outcome["expected_bad_orders"].sum())
        good = orders - bad
        rows[policy] = {
            "expected_orders": orders,
            "good_orders": good,
            "bad_orders": bad,
            "bad_order_rate": bad / orders if orders > 0 else float("nan"),
            "net_value": net_value(good, bad, bad_cost),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["bad_cost"] = float(bad_cost)  # the report states the cost its net value used
    return table


def _segments(
    ranked_by_policy: Mapping[str, pd.DataFrame],
    membership: pd.DataFrame,
) -> pd.DataFrame:
    """Exposure share and lift per segment; ``membership`` has one boolean-ish column per kind."""
    from ...ranker.metrics import position_exposure

    kinds = [c for c in membership.columns if c not in ("request_id", "stream_id")]
    candidates = membership[kinds]
    rows = []
    for policy, ranked in ranked_by_policy.items():
        joined = ranked[["request_id", "stream_id", "position"]].merge(membership, on=["request_id", "stream_id"], how="left")
        exposure = position_exposure(joined["position"].to_numpy())
        total = exposure.sum()
        for kind in kinds:
            candidate_share = candidates[kind].value_counts(normalize=True).sort_index()
            # every segment of the candidates, with zero exposure where a policy showed none
            exposed = pd.Series(exposure).groupby(joined[kind].to_numpy()).sum()
            share = exposed.reindex(candidate_share.index, fill_value=0.0) / total if total > 0 else exposed.iloc[:0]
            base_share = dict(zip(map(str, candidate_share.index), candidate_share.to_numpy(dtype=float)))
            for segment, value in share.items():
                base = float(base_share[str(segment)])
                rows.append({
                    "segment_kind": kind,
                    "segment": str(segment),
                    "policy": POLICY_LABELS.get(policy, policy),
                    "exposure_share": float(value),
                    "candidate_share": base,
                    "exposure_lift": float(value) / base if base > 0 else float("nan"),
                })
    return pd.DataFrame(rows, columns=["segment_kind", "segment", "policy", "exposure_share", "candidate_share", "exposure_lift"])


def evaluate_pipeline(
    pipeline: RankingPipeline,
    events: EventLog,
    window: tuple[pd.Timestamp, pd.Timestamp],
    *,
    plain_pipeline: RankingPipeline | None = None,
    truth: Mapping[str, pd.DataFrame] | None = None,
    truth_meta: Mapping[str, Any] | None = None,
    config: EvalConfig | None = None,
    facts: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Rank the held-out requests of ``window`` with every policy and measure them.

    Parameters
    ----------
    pipeline
        The trust-aware :class:`~trustfeed.ranker.pipeline.RankingPipeline` as served.
    events
        The event log (its impressions give the held-out slates and their labels).
    window
        ``[start, end)`` of request times (see :func:`held_out_window`).
    plain_pipeline
        The pipeline of the plain LambdaMART without trust features (``None``: left out).
    truth, truth_meta
        The simulator's hidden truth (``load_truth``/``load_truth_meta``); enables the
        counterfactual outcomes and the true bad-order exposure.
    config
        :class:`EvalConfig`.
    facts
        Extra key facts for the top of the report (model URI, run id, ...).
    progress
        Receives one call per step.
    """
    from ...ranker.balancer import ExposureBalancer
    from ...ranker.baselines import FairCoReranker, PMMFReranker, creator_cap, det_const_sort, fair_quota, long_tail_mask

    config = config or EvalConfig()
    progress = progress or NullProgress()
    notes: list[str] = []
    logged = _logged_slates(events, window, config.max_requests)
    requests = requests_from_impressions(logged)
    progress(f"evaluate: ranking {len(requests)} held-out requests")

    snapshot, model, balancer = _pipeline_parts(pipeline)
    if snapshot is None:  # pipelines built as of a time always carry theirs
        raise ConfigError("evaluate: the pipeline has no trust snapshot to evaluate against")
    followers = _followers(snapshot)
    truth_impressions = None if truth is None else truth.get("impressions")
    if truth_impressions is not None:
        # every outcome below reads only the evaluated requests' rows of the truth table
        truth_impressions = _truth_of_requests(truth_impressions, logged)
    item_bad = _item_bad_probability(logged, truth_impressions, snapshot)
    facts_table = logged.assign(p_bad=item_bad)

    served = _responses_frame(_rank_all(pipeline, requests))
    progress("evaluate: trust-aware pipeline without the balancer")
    unbalanced_responses = _rank_all(_without_balancer(pipeline), requests)
    trust_aware = _responses_frame(unbalanced_responses)
    filtered = _filtered_frame(unbalanced_responses)

    def with_facts(ranked: pd.DataFrame, carry_trust: bool = True) -> pd.DataFrame:
        keep = ["request_id", "stream_id", "position"] + (["trust", "relevance", "score"] if carry_trust else [])
        ranked = ranked[[c for c in keep if c in ranked.columns]]
        out = ranked.merge(facts_table, on=["request_id", "stream_id"], how="left", validate="one_to_one")
        if "trust" not in out.columns:
            out = out.merge(trust_aware[["request_id", "stream_id", "trust"]], on=["request_id", "stream_id"], how="left")
        return out

    # the relevance order of the trust-aware model's scores, the reference for Kendall tau
    trust_aware = trust_aware.assign(relevance_position=_order_to_positions(trust_aware, -trust_aware["relevance"].to_numpy()))
    ranked: dict[str, pd.DataFrame] = {}
    ranked["logging"] = with_facts(
        logged[["request_id", "stream_id"]].assign(position=logged["logged_position"].to_numpy()), carry_trust=False
    )
    if plain_pipeline is not None:
        progress("evaluate: plain LambdaMART without trust features")
        ranked["plain"] = with_facts(_responses_frame(_rank_all(plain_pipeline, requests)), carry_trust=False)
    ranked["relevance_only"] = with_facts(trust_aware.assign(position=trust_aware["relevance_position"].to_numpy()))
    ranked["trust_aware"] = with_facts(trust_aware)
    ranked["served"] = with_facts(served)

    progress("evaluate: baselines and balancer sweep")
    head_mask_followers = followers if followers is not None else pd.Series(dtype=float)
    score = trust_aware["score"].to_numpy(dtype=float)
    trust = trust_aware["trust"].to_numpy(dtype=float)
    creators = trust_aware["creator_id"].to_numpy(dtype=object)
    merchants = trust_aware["merchant_id"].to_numpy(dtype=object)
    tail = long_tail_mask(creators, head_mask_followers, config.head_fraction)
    request_time = logged.drop_duplicates("request_id").set_index("request_id")["ts"]
    seconds = pd.to_datetime(request_time.reindex(trust_aware["request_id"].to_numpy()), utc=True)
    now = (seconds.astype("int64").to_numpy() / 1e9).astype(float)
    ranked["creator_cap"] = with_facts(_per_request_order(
        trust_aware, lambda a, b: creator_cap(score[a:b], creators[a:b], cap=config.cap_per_creator, k=config.cap_k),
    ))
    ranked["fair_quota"] = with_facts(_per_request_order(
        trust_aware,
        lambda a, b: fair_quota(score[a:b], tail[a:b], k=config.fair_k, p=config.fair_p, alpha=config.fair_alpha),
    ))
    tail_codes = tail.astype(np.int64)
    ranked["det_const_sort"] = with_facts(_per_request_order(
        trust_aware,
        lambda a, b: det_const_sort(score[a:b], tail_codes[a:b], [1.0 - config.fair_p, config.fair_p], k=config.fair_k),
    ))
    for frame in ranked.values():
        if "relevance_position" not in frame.columns:
            frame["relevance_position"] = frame.merge(
                trust_aware[["request_id", "stream_id", "relevance_position"]], on=["request_id", "stream_id"], how="left"
            )["relevance_position"].to_numpy()

    population = pd.Index(pd.unique(logged["creator_id"]), name="creator_id")
    policies = {
        policy: _measure(frame, population, followers, config.head_fraction) for policy, frame in ranked.items()
    }

    # the static frontier: each method's strength swept on the same requests and axes (NDCG@10
    # and Gini, plus expected orders and net value when the simulator's truth is there)
    bad_cost = pipeline.policy.config.bad_cost

    counterfactual = None
    if truth_impressions is not None and truth_meta is not None:
        progress("evaluate: counterfactual outcomes from the simulator's truth")
        counterfactual = _counterfactual(
            {p: ranked[p] for p in ("logging", "plain", "relevance_only", "trust_aware", "creator_cap", "fair_quota",
                                    "det_const_sort", SERVED) if p in ranked},
            truth_impressions, truth_meta, bad_cost,
        )

    def outcome_columns(row: pd.Series) -> dict[str, float]:
        return {"expected_orders": float(row["expected_orders"]), "net_value": float(row["net_value"]),
                "bad_order_rate": float(row["bad_order_rate"])}

    def outcomes(frame: pd.DataFrame) -> dict[str, float]:
        if truth_impressions is None or truth_meta is None:
            return {}
        return outcome_columns(_counterfactual({"point": frame}, truth_impressions, truth_meta, bad_cost).iloc[0])

    def point(label: str, strength: float, frame: pd.DataFrame, kind: str = "sweep") -> dict[str, Any]:
        measured = _measure(frame, population, followers, config.head_fraction)
        return {"policy": label, "kind": kind, "strength": strength, "ndcg_at_10": measured["ndcg_at_10"],
                "gini": measured["gini"], **outcomes(frame)}

    def policy_point(policy: str) -> dict[str, Any]:
        # a policy measured above: its row of the counterfactual table, not a second pass over the truth
        measured = policies[policy]
        known = {} if counterfactual is None else outcome_columns(cast("pd.Series", counterfactual.loc[policy]))
        return {"policy": POLICY_LABELS[policy], "kind": "served" if policy == SERVED else "baseline",
                "strength": float("nan"), "ndcg_at_10": measured["ndcg_at_10"], "gini": measured["gini"], **known}

    base_config = balancer.config if balancer is not None else None
    sweep_rows: list[dict[str, Any]] = []
    swept_configs = []
    if base_config is not None:
        swept_configs.append((BALANCER_SWEEP, base_config))
        if config.other_lift_sweep:
            other = "position" if base_config.lift == "value" else "value"
            swept_configs.append((f"{BALANCER_SWEEP} ({other} lift)", replace(base_config, lift=other)))
    for (label, swept_config), strength in ((c, s) for c in swept_configs for s in config.sweep_strengths):
        # strength 0 is the balancer's base order: one slot per creator in the first diversity_k,
        # the same lists as the per-creator cap when cap_k = diversity_k (not a bug)
        fixed = replace(swept_config, kp=0.0, ki=0.0, strength_min=0.0,
                        strength_max=max(strength, swept_config.strength_min, 0.0), initial_strength=strength, auto_record=True)
        sweep_balancer = ExposureBalancer(fixed)
        swept = with_facts(_per_request_order(
            trust_aware,
            lambda a, b, balancer=sweep_balancer: balancer.rerank(
                creators[a:b].tolist(), merchants[a:b].tolist(), relevance=score[a:b], trust=trust[a:b], now=now[a], record=True,
            ),
        ))
        sweep_rows.append(point(label, strength, swept))
    # the quota baselines at several target long-tail shares p
    for p in config.quota_sweep_ps:
        sweep_rows.append(point("FA*IR sweep", p, with_facts(_per_request_order(
            trust_aware, lambda a, b, p=p: fair_quota(score[a:b], tail[a:b], k=config.fair_k, p=p, alpha=config.fair_alpha),
        ))))
        proportions = np.array([1.0 - p, p])
        sweep_rows.append(point("DetConstSort sweep", p, with_facts(_per_request_order(
            trust_aware, lambda a, b, proportions=proportions: det_const_sort(
                score[a:b], tail_codes[a:b], proportions, k=config.fair_k),
        ))))
    # the amortised fairness baselines (FairCo, P-MMF) on the policy score, swept on the same axes
    amortised: list[tuple[str, Any, float]] = [("FairCo sweep", FairCoReranker, s) for s in config.fairco_strengths]
    amortised += [("P-MMF sweep", PMMFReranker, s) for s in config.pmmf_strengths]
    for label, kind, strength in amortised:
        reranker = kind(strength)

        def served_by(a: int, b: int, reranker: Any = reranker) -> np.ndarray:
            order = reranker.rerank(creators[a:b].tolist(), merchants[a:b].tolist(), score[a:b], trust[a:b])
            shown = order[: config.cap_k]
            reranker.record(creators[a:b][shown].tolist(), merchants[a:b][shown].tolist(), np.arange(1, shown.size + 1))
            return order

        sweep_rows.append(point(label, strength, with_facts(_per_request_order(trust_aware, served_by))))
    baseline_rows = [
        policy_point(p) for p in ("plain", "relevance_only", "creator_cap", "fair_quota", "det_const_sort", SERVED) if p in ranked
    ]
    tradeoff = pd.DataFrame(sweep_rows + baseline_rows)
    tradeoff = tradeoff[[c for c in TRADEOFF_COLUMNS if c in tradeoff.columns]]
    verdicts = pareto_verdicts(tradeoff)
    notes.extend(frontier_summary(verdicts))

    levers = None
    if config.levers:
        progress("evaluate: operator levers")
        levers = _lever_effects(pipeline, trust_aware, with_facts, outcomes, population, followers, config, now)

    membership = _segment_membership(logged, events, window, followers, trust_aware, config)
    segment_policies = {p: ranked[p] for p in ("plain", "relevance_only", "trust_aware", SERVED) if p in ranked}
    segments = _segments(segment_policies, membership)

    if counterfactual is None:
        notes.append("No simulator truth (truth/) beside the events: counterfactual outcomes are not shown, "
                     "and bad-order exposure uses each merchant's estimated bad-order rate.")
    comparison = _against_plain(policies, counterfactual)
    if len(filtered):
        reasons = filtered["reason"].value_counts().to_dict()
        notes.append("Filtered by hard rules (all trust-aware policies): "
                     + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    notes.append(
        "Policies: logging policy = the logged order; plain LambdaMART = a model trained without trust "
        "features, ranked by relevance, with the served hard rules (bans); relevance only = the trust-aware model's relevance "
        "order (trust features, no trust weight in the score, hard rules applied); trust-aware = the policy "
        "score (relevance combined with trust); per-creator cap and FA*IR re-rank that score; trust-aware + "
        "balancer = the served pipeline with its exposure controller."
    )
    skipped = int(policies[SERVED]["lists_without_positive"])
    notes.append(f"NDCG skips lists without any positive label ({skipped} of {len(requests)} requests), per docs/contract.md section 4.")

    headline = pd.DataFrame.from_dict(policies, orient="index")
    headline.index = [POLICY_LABELS.get(p, p) for p in headline.index]
    headline = headline[[c for c in ("ndcg_at_5", "ndcg_at_10", "gini", "long_tail_share", "creator_coverage",
                                     "bad_order_exposure", "trust_weighted_exposure", "kendall_tau_vs_relevance")
                         if c in headline.columns]]
    cf_table = None
    if counterfactual is not None:
        cf_table = counterfactual.copy()
        cf_table.index = [POLICY_LABELS.get(p, p) for p in cf_table.index]
    importance = model.feature_importance("gain")
    all_facts = {
        "window": f"{window[0].isoformat()} to {window[1].isoformat()}",
        "held-out requests": f"{len(requests):,}",
        "candidates": f"{len(logged):,}",
        "creators in the population": f"{len(population):,}",
        **dict(facts or {}),
    }
    content = ReportContent(
        title="trustfeed offline evaluation",
        facts=all_facts,
        headline=headline,
        creator_exposure={
            POLICY_LABELS["relevance_only"]: _creator_exposure(ranked["relevance_only"], population),
            POLICY_LABELS[SERVED]: _creator_exposure(ranked[SERVED], population),
        },
        tradeoff=tradeoff,
        merchants=snapshot.merchants,
        feature_importance=pd.DataFrame({"feature": importance.index.astype(str), "gain": importance.to_numpy(dtype=float)}),
        segments=segments,
        counterfactual=cf_table,
        comparison=comparison,
        frontier=verdicts,
        levers=levers,
        notes=tuple(notes),
    )
    return Evaluation(window, len(requests), policies, tradeoff, segments, counterfactual, content, notes, comparison,
                      frontier=verdicts, levers=levers)


def _lever_effects(
    pipeline: Any, trust_aware: pd.DataFrame, with_facts: Any, outcomes: Any, population: pd.Index,
    followers: pd.Series | None, config: EvalConfig, now: np.ndarray,
) -> pd.DataFrame:
    """The lever table (see :mod:`.levers`): each lever at a few values against the served policy."""
    from ...ranker.balancer import ExposureBalancer
    from .levers import LEVER_COLUMNS, lever_row, lever_settings, policy_lever_ranking

    merchant_ids = trust_aware["merchant_id"].to_numpy(dtype=object)
    creators = trust_aware["creator_id"].to_numpy(dtype=object)
    guarantees = np.asarray(pipeline.assembler.merchant_status(merchant_ids).guarantees, dtype=np.float64)
    guaranteed = pd.Series(guarantees > 0, index=merchant_ids)
    guaranteed = guaranteed[~guaranteed.index.duplicated()]

    def measure(frame: pd.DataFrame) -> dict[str, float]:
        return _measure(frame, population, followers, config.head_fraction)

    # what the served policy already shows in the positions the trust-exposure target counts
    depth = pipeline.policy.config.trust_exposure_depth
    position = trust_aware["position"].to_numpy(float)
    exposure = np.where(position <= depth, 1.0 / np.log2(position + 1.0), 0.0)
    trust = trust_aware["trust"].to_numpy(float)
    clean = np.where(np.isnan(trust), 0.5, trust)
    per_request = (pd.Series(exposure * clean).groupby(trust_aware["request_id"].to_numpy()).sum()
                   / pd.Series(exposure).groupby(trust_aware["request_id"].to_numpy()).sum())
    rows = []
    for lever, value, changes in lever_settings(trust, float(per_request.mean())):
        ranked = with_facts(policy_lever_ranking(pipeline.policy, trust_aware, guarantees, changes))
        rows.append(lever_row(lever, value, ranked, guaranteed, len(trust_aware), measure, outcomes))
    balancer = pipeline.balancer
    if balancer is not None and hasattr(balancer, "config") and hasattr(balancer.config, "target_gini"):
        unbalanced = measure(with_facts(trust_aware))["gini"]
        score = trust_aware["score"].to_numpy(float)
        for ratio in (0.7, 0.8, 0.9, 1.0):
            target = float(np.clip(ratio * unbalanced, 0.01, 0.99))
            controlled = ExposureBalancer(replace(balancer.config.retargeted(target), auto_record=True))
            swept = with_facts(_per_request_order(trust_aware, lambda a, b, c=controlled: c.rerank(
                creators[a:b].tolist(), merchant_ids[a:b].tolist(), relevance=score[a:b], trust=trust[a:b],
                now=now[a], record=True)))
            rows.append(lever_row("target_gini", f"{target:.3f} ({ratio:g} x unbalanced)", swept, guaranteed,
                                  len(trust_aware), measure, outcomes))
    return pd.DataFrame(rows, columns=LEVER_COLUMNS)


# the ranker issue's acceptance criteria: served policy against the plain model
_AGAINST_PLAIN = (
    ("net value", "counterfactual", "net_value", ">=", 1.25),
    ("bad-order rate", "counterfactual", "bad_order_rate", "<=", 0.8),
    ("Gini of creator exposure", "policies", "gini", "<=", 0.8),
    ("expected orders", "counterfactual", "expected_orders", ">=", 0.95),
)


def _against_plain(policies: Mapping[str, Mapping[str, float]], counterfactual: pd.DataFrame | None) -> pd.DataFrame | None:
    """Ratios served / plain with the targets they are held to (``None`` without both arms)."""
    if "plain" not in policies:
        return None
    rows = {}
    for label, source, metric, direction, target in _AGAINST_PLAIN:
        if source == "counterfactual":
            if counterfactual is None or "plain" not in counterfactual.index:
                continue
            served, plain = counterfactual.loc[SERVED, metric], counterfactual.loc["plain", metric]
        else:
            served, plain = policies[SERVED][metric], policies["plain"][metric]
        served_value, plain_value = float(cast(float, served)), float(cast(float, plain))
        ratio = served_value / plain_value if plain_value else float("nan")
        met = ratio >= target if direction == ">=" else ratio <= target
        rows[label] = {"served": served_value, "plain": plain_value, "ratio": ratio,
                       "target": f"{direction} {target:g}", "met": "yes" if met else "no"}
    return pd.DataFrame.from_dict(rows, orient="index") if rows else None


def _creator_exposure(ranked: pd.DataFrame, population: pd.Index) -> np.ndarray:
    from ...ranker.metrics import exposure_by

    return exposure_by(ranked, "creator_id", population=population).to_numpy()


def _followers(snapshot: TrustSnapshot) -> pd.Series | None:
    creators = snapshot.creators
    if "followers" not in creators.columns:
        return None
    values = pd.to_numeric(creators["followers"], errors="coerce")
    return pd.Series(values.to_numpy(dtype=float), index=creators["creator_id"].astype(str).to_numpy())


def _truth_of_requests(truth_impressions: pd.DataFrame, logged: pd.DataFrame) -> pd.DataFrame:
    """The simulator's truth rows of the evaluated requests, ids as strings (like ``logged``'s)."""
    ids = truth_impressions["request_id"].astype(str)
    keep = ids.isin(pd.unique(logged["request_id"])).to_numpy(dtype=bool)
    rows = truth_impressions.loc[keep].reset_index(drop=True)
    return rows.assign(request_id=ids.loc[keep].to_numpy(dtype=object), stream_id=rows["stream_id"].astype(str).to_numpy(dtype=object))


def _item_bad_probability(logged: pd.DataFrame, truth_impressions: pd.DataFrame | None, snapshot: TrustSnapshot) -> np.ndarray:
    """The simulator's true bad-order probability per item, else the merchant's estimated rate."""
    if truth_impressions is not None:
        probs = truth_impressions[["request_id", "stream_id", "p_bad"]].astype({"request_id": str, "stream_id": str})
        merged = logged[["request_id", "stream_id"]].merge(probs, on=["request_id", "stream_id"], how="left")
        return merged["p_bad"].to_numpy(dtype=float)
    merchants = snapshot.merchants
    column = next((c for c in ("expected_bad_rate", "bad_case_rate") if c in merchants.columns), None)
    if column is None:
        return np.full(len(logged), np.nan)
    rates = pd.Series(pd.to_numeric(merchants[column], errors="coerce").to_numpy(dtype=float),
                      index=merchants["merchant_id"].astype(str).to_numpy())
    return rates.reindex(logged["merchant_id"].to_numpy()).to_numpy(dtype=float)


def _segment_membership(
    logged: pd.DataFrame, events: EventLog, window: tuple[pd.Timestamp, pd.Timestamp],
    followers: pd.Series | None, trust_aware: pd.DataFrame, config: EvalConfig,
) -> pd.DataFrame:
    from ...ranker.baselines import long_tail_mask

    merchants = events["merchants"]
    registered = pd.Series(merchants["registered_at"].to_numpy(), index=merchants["merchant_id"].astype(str).to_numpy())
    registered = registered[~registered.index.duplicated()]
    cutoff = window[0] - pd.Timedelta(days=config.new_merchant_days)
    reg = pd.to_datetime(registered.reindex(logged["merchant_id"].to_numpy()), utc=True)
    is_new = (reg >= cutoff).to_numpy(dtype=bool, na_value=True)  # unknown merchants are new to us
    tail = long_tail_mask(logged["creator_id"].to_numpy(), followers if followers is not None else pd.Series(dtype=float),
                          config.head_fraction)
    trust = logged[["request_id", "stream_id"]].merge(
        trust_aware[["request_id", "stream_id", "trust"]], on=["request_id", "stream_id"], how="left"
    )["trust"].to_numpy(dtype=float)
    served_trust = trust[~np.isnan(trust)]
    low_cut = float(np.quantile(served_trust, config.low_trust_quantile)) if served_trust.size else np.inf
    return pd.DataFrame({
        "request_id": logged["request_id"].to_numpy(),
        "stream_id": logged["stream_id"].to_numpy(),
        "merchant age": np.where(is_new, "new", "established"),
        "creator reach": np.where(tail, "tail", "head"),
        "merchant trust": np.where(np.isnan(trust), "filtered", np.where(trust <= low_cut, "low", "high")),
    })


# ----------------------------------------------------------------------------- writing


def write_evaluation(evaluation: Evaluation, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.html`` and ``metrics.json`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_NAME
    document = evaluation.to_json()
    document["flat"] = evaluation.flat_metrics()
    with atomic_file(metrics_path) as tmp:
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    report_path = render_report(evaluation.content, out / REPORT_NAME)
    return report_path, metrics_path


def evaluate(
    events: str | os.PathLike[str],
    model_uri: str,
    out_dir: str | os.PathLike[str],
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    progress: Progress | None = None,
    tracking_uri: str | None = None,
    config: EvalConfig | None = None,
    links: Mapping[str, str] | None = None,
    *,
    verify_key: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Offline evaluation of a model on held-out requests: ``report.html`` + ``metrics.json``.

    Parameters
    ----------
    events
        Dataset directory (docs/contract.md section 1); ``truth/`` beside it enables counterfactuals.
    model_uri
        Anything MLflow resolves (``runs:/<id>/model``, ``models:/name@alias``) or a bundle directory.
    out_dir
        Where to write the report and metrics.
    start, end
        Window of request times; by default the training run's held-out window (tags of the
        run), else the latest ``config.holdout_fraction`` of the impressions.
    progress
        Receives one call per step.
    tracking_uri
        MLflow tracking URI for ``runs:/`` and ``models:/`` URIs (default: as ``train``).
    config
        :class:`EvalConfig`.
    links
        Companion pages the report links to (text -> address relative to ``out_dir``), e.g.
        the closed-loop rollout page.
    verify_key
        An Ed25519 public key file: the bundle must be signed by its private key (see
        :meth:`trustfeed.serving.FeedRanker.load`). The plain comparison model beside the
        bundle is not covered by the signature.

    Returns
    -------
    EvalResult
        When the model URI belongs to an MLflow run, both files are also logged to that run
        (under ``evaluations/<window>/``) with the flat metrics prefixed ``eval.``.

    Examples
    --------
    Evaluating needs a trained model (see :func:`trustfeed.training.train.train`):

    >>> result = evaluate("events/", "models:/feed-ranker@challenger", "out/")  # doctest: +SKIP
    >>> result.report_path.name, round(result.metrics["ndcg_at_10"], 3)  # doctest: +SKIP
    ('report.html', 0.412)
    """
    from ...features.events import load_events
    from ..registry import quiet_mlflow, resolve_tracking_uri, run_id_of_model_uri, trained_windows_from_run
    from ..simulate import load_truth, load_truth_meta

    config = config or EvalConfig()
    progress = progress or NullProgress()
    events_dir = Path(events)
    progress(f"loading events from {events_dir}")
    event_log = load_events(events_dir)
    uri = resolve_tracking_uri(tracking_uri)
    with quiet_mlflow():
        run_id = run_id_of_model_uri(str(model_uri), uri)
        progress(f"loading model {model_uri}")
        served, plain = load_models_for_evaluation(str(model_uri), uri, verify_key=verify_key)
        if start is None and end is None and run_id is not None:
            recorded = trained_windows_from_run(run_id, uri)
            if recorded is not None:
                start, end = recorded
    window = held_out_window(event_log, start, end, config.holdout_fraction)
    progress(f"building the trust snapshot as of {window[0].isoformat()} (the window start)")
    pipeline, plain_pipeline = pipelines_as_of(served, plain, event_log, window[0])
    evaluation = evaluate_pipeline(
        pipeline, event_log, window, plain_pipeline=plain_pipeline,
        truth=load_truth(events_dir), truth_meta=load_truth_meta(events_dir), config=config,
        facts={"model": str(model_uri), **({"run id": run_id} if run_id else {})}, progress=progress,
    )
    if plain_pipeline is None:
        evaluation.notes.append("The model carries no plain LambdaMART (plain_model/): that comparison is left out.")
    if links:
        evaluation.content = replace(evaluation.content, links=dict(links))
    report_path, metrics_path = write_evaluation(evaluation, out_dir)
    metrics = evaluation.flat_metrics()
    if run_id is not None:
        progress(f"logging the report and metrics to MLflow run {run_id}")
        _log_to_run(run_id, uri, report_path, metrics_path, metrics, window)
    return EvalResult(report_path, metrics_path, metrics, run_id)


def _log_to_run(
    run_id: str, tracking_uri: str, report_path: Path, metrics_path: Path, metrics: Mapping[str, float],
    window: tuple[pd.Timestamp, pd.Timestamp],
) -> None:
    import time

    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from ..registry import TrackingUnavailableError, client_for, quiet_mlflow

    folder = f"evaluations/{window[0].strftime('%Y%m%dT%H%M')}-{window[1].strftime('%Y%m%dT%H%M')}"
    now = int(time.time() * 1000)
    batch = [Metric(f"eval.{k}", float(v), now, 0) for k, v in sorted(metrics.items())]
    try:
        with quiet_mlflow():
            client = client_for(tracking_uri)
            client.log_artifact(run_id, str(report_path), folder)
            client.log_artifact(run_id, str(metrics_path), folder)
            for i in range(0, len(batch), 1000):
                client.log_batch(run_id, metrics=batch[i : i + 1000])
    except (MlflowException, OSError) as error:
        raise TrackingUnavailableError(
            f"MLflow tracking at {tracking_uri} failed while logging the evaluation to run {run_id}: "
            f"{' '.join(str(error).split())[:240]}; the report is at {report_path}"
        ) from error
