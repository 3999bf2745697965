"""The registry of ranking policies that evaluations compare.

Each entry of :data:`POLICIES` is a :class:`PolicySpec`: a label and a builder that turns a
:class:`PolicyContext` (the served pipeline of a model bundle, its plain LambdaMART, the
simulated world, the bad-order cost) into an object a feed service could hold: anything with
``rank_many(requests)``, ``record_impressions(frame)`` and ``reload_snapshot(snapshot,
context)`` (:class:`FeedPolicy`), usually a :class:`~trustfeed.serving.FeedRanker`. Adding a
policy is adding one entry.

Examples
--------
>>> {"oracle", "plain", "trust_aware_balanced"} <= set(POLICIES)
True
>>> POLICIES["trust_aware_balanced"].label
'trust-aware + balancer'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from ...features.errors import ConfigError
from ...ranker.balancer import ExposureBalancer
from ...ranker.baselines import (
    CreatorCapReranker,
    DetConstSortReranker,
    FairCoReranker,
    FairQuotaReranker,
    PMMFReranker,
    PopularityReranker,
)
from ...ranker.pipeline import RankingPipeline
from ...ranker.policy import Policy, PolicyConfig
from ...serving import FeedRanker
from ..world import World
from .static import EvalConfig

if TYPE_CHECKING:
    from ...features.history import ContextTables
    from ...features.trust import TrustSnapshot
    from ...ranker.lambdamart import LambdaMART

__all__ = ["FeedPolicy", "OracleRanker", "POLICIES", "PolicyContext", "PolicySpec", "followers_of", "lever_policy",
           "reranker_policy", "resolve_policies", "served_pipeline"]


class FeedPolicy(Protocol):
    """What the rollout needs of a policy: the calls a feed service makes."""

    def rank_many(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...

    def record_impressions(self, impressions: pd.DataFrame) -> None: ...

    def reload_snapshot(self, snapshot: TrustSnapshot, context: ContextTables | None = None) -> object: ...


@dataclass
class PolicyContext:
    """What a policy builder may use.

    Attributes
    ----------
    served
        The model bundle's pipeline as loaded (never ranked with: builders copy it, so every
        run starts from the bundle's exposure ledger).
    plain_model
        The plain LambdaMART trained without trust features, when the bundle has one.
    world
        The simulated world this policy will serve (the oracle reads its truth).
    bad_cost
        Cost of a bad order, in good orders.
    """

    served: RankingPipeline
    plain_model: LambdaMART | None
    world: World
    bad_cost: float


@dataclass(frozen=True)
class PolicySpec:
    """One registered policy.

    Attributes
    ----------
    label
        Human name for reports.
    build
        ``build(context) -> FeedPolicy``.
    uses_snapshot
        Whether the policy reads the trust snapshot and context tables (they are rebuilt and
        swapped in on the rollout's schedule only for those that do).
    """

    label: str
    build: Callable[[PolicyContext], FeedPolicy]
    uses_snapshot: bool = True


def served_pipeline(served: RankingPipeline, *, balancer: bool = True) -> RankingPipeline:
    """A fresh copy of the served pipeline: same features, model and policy, own ledger."""
    fresh_balancer = None
    if balancer and served.balancer is not None:
        fresh_balancer = ExposureBalancer.from_state(served.balancer.config, served.balancer.state_dict())
    return RankingPipeline(
        served.assembler, served.model, served.policy, fresh_balancer,
        snapshot=served.snapshot, context=served.context, model_id=served.model_id, purchase_model=served.purchase_model,
    )


def plain_pipeline(context: PolicyContext) -> RankingPipeline:
    """The plain LambdaMART without trust features, under the same hard rules as the served model."""
    plain = context.plain_model
    if plain is None:
        raise ConfigError("policy 'plain': the model carries no plain LambdaMART (plain_model/ beside the bundle)")
    served = context.served
    return RankingPipeline.from_tables(
        served.snapshot, served.context, plain,
        # a ban is a platform decision every ranker respects: the comparison isolates trust
        PolicyConfig(trust_weight=0.0, filter_banned=served.policy.config.filter_banned), None,
        schema=plain.feature_schema_, model_id=f"{served.model_id}:plain",
    )


class OracleRanker:
    """Ranks each request by the simulator's true expected net value (the upper bound)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def rank_many(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Responses in the contract's shape, every candidate ranked by true net value."""
        rows = self.world.today_candidates()
        value = self.world.true_net_value(rows)
        trust = self.world.latent_trust()
        frame = pd.DataFrame({
            "request_id": rows["request_id"].to_numpy(), "stream_id": rows["stream_id"].to_numpy(),
            "creator_id": self.world.base.creator_ids[rows["creator"].to_numpy()],
            "merchant_id": self.world.merchant_ids[rows["merchant"].to_numpy()],
            "score": value, "relevance": value,
            "trust": trust.to_numpy()[rows["merchant"].to_numpy()],
        })
        order = np.lexsort((-value, rows["request"].to_numpy()))
        request_ids = frame["request_id"].to_numpy()[order]
        records = frame.drop(columns="request_id").iloc[order].to_dict("records")
        starts = np.flatnonzero(np.r_[True, request_ids[1:] != request_ids[:-1]])
        bounds = np.r_[starts, len(request_ids)]
        by_request = {request_ids[a]: records[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())}
        out = []
        for request in requests:
            items = by_request.get(request["request_id"])
            if items is None:
                raise ConfigError(f"oracle: request {request['request_id']!r} is not one the world drew today")
            out.append({"request_id": request["request_id"], "model": "oracle", "items": items, "filtered": []})
        return out

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        """Nothing to record: the oracle keeps no ledger."""

    def reload_snapshot(self, snapshot: TrustSnapshot, context: ContextTables | None = None) -> None:
        """Nothing to reload: the oracle reads the world's truth."""


GUARANTEE_BOOST = 0.5
"""``guarantee_boost`` of the ``guarantee_priority`` entry (a 65% larger value for guaranteed merchants)."""
FAIRCO_STRENGTH = 0.1
PMMF_STRENGTH = 0.5
"""Strengths of the amortised fairness baselines (the middle of the static evaluation's sweeps)."""


def _with_policy(pipeline: RankingPipeline, **levers: Any) -> RankingPipeline:
    """``pipeline`` with its policy's config changed (the fitted state kept)."""
    pipeline.policy = Policy(replace(pipeline.policy.config, **levers), pipeline.policy.state)
    return pipeline


def _with_reranker(served: RankingPipeline, reranker: Any) -> RankingPipeline:
    """The served features, model and policy score, re-ranked by ``reranker`` instead of the balancer."""
    # Any: the baseline re-rankers keep no savable state (no state_dict), so they are not
    # full ranker.interfaces.Reranker objects; they only serve inside the rollout
    pipeline = served_pipeline(served, balancer=False)
    pipeline.balancer = reranker
    return pipeline


def _followers(context: PolicyContext) -> pd.Series:
    # the platform's follower counts: the head / long tail split the rollout's metrics use too
    return context.world.creator_followers()


# the baselines' settings are the static evaluation's, so both evaluations compare the same policies
_BASELINES = EvalConfig()


def _ranker(pipeline: RankingPipeline) -> FeedRanker:
    # the loop reports what was shown through record_impressions, so serving must not record too
    return FeedRanker(pipeline, record_served=False)


def lever_policy(label: str, *, balancer: Mapping[str, Any] | None = None, **policy_changes: Any) -> PolicySpec:
    """The served pipeline with some policy levers (``PolicyConfig`` fields) and balancer settings changed.

    ``balancer``: ``BalancerConfig`` fields to change (e.g. ``target_gini``); the ledger starts
    from the bundle's, as in ``trust_aware_balanced``.

    Examples
    --------
    >>> lever_policy("boost 1", guarantee_boost=1.0).label
    'boost 1'
    """
    def build(context: PolicyContext) -> FeedPolicy:
        pipeline = served_pipeline(context.served, balancer=True)
        if balancer and pipeline.balancer is not None:
            current = pipeline.balancer
            base = current.config
            if "target_gini" in balancer and "fill_targets" not in balancer:
                # the fill schedule stays the same share of the ledger's Gini for the new target
                base = base.retargeted(float(balancer["target_gini"]))
            config = replace(base, **balancer)
            state = current.state_dict()
            if "initial_strength" in balancer:
                # the saved controller state carries its own strength: start from the one asked for
                state["strength"] = config.initial_strength
                state["integral"] = config.initial_strength / config.ki if config.ki > 0 else 0.0
            pipeline.balancer = ExposureBalancer.from_state(config, state)
        return _ranker(_with_policy(pipeline, **policy_changes) if policy_changes else pipeline)

    return PolicySpec(label, build)


def reranker_policy(label: str, make: Callable[[PolicyContext], Any]) -> PolicySpec:
    """The served features, model and policy score re-ranked by ``make(context)`` instead of the balancer."""
    return PolicySpec(label, lambda context: _ranker(_with_reranker(context.served, make(context))))


def followers_of(context: PolicyContext) -> pd.Series:
    """The platform's follower counts per creator (the head / long-tail split of the baselines)."""
    return _followers(context)


POLICIES: dict[str, PolicySpec] = {
    "trust_aware_balanced": PolicySpec(
        "trust-aware + balancer", lambda context: _ranker(served_pipeline(context.served, balancer=True))
    ),
    "trust_aware": PolicySpec(
        "trust-aware, no balancer", lambda context: _ranker(served_pipeline(context.served, balancer=False))
    ),
    "plain": PolicySpec("plain LambdaMART (no trust features)", lambda context: _ranker(plain_pipeline(context))),
    "relevance_only": PolicySpec(
        "relevance only", lambda context: _ranker(_with_policy(served_pipeline(context.served, balancer=False),
                                                               trust_weight=0.0))
    ),
    "creator_cap": PolicySpec(
        "per-creator cap", lambda context: _ranker(_with_reranker(context.served, CreatorCapReranker(
            cap=_BASELINES.cap_per_creator, k=_BASELINES.cap_k)))
    ),
    "fair_quota": PolicySpec(
        "FA*IR long-tail quota", lambda context: _ranker(_with_reranker(context.served, FairQuotaReranker(
            _followers(context), head_fraction=_BASELINES.head_fraction, k=_BASELINES.fair_k,
            p=_BASELINES.fair_p, alpha=_BASELINES.fair_alpha)))
    ),
    "det_const_sort": PolicySpec(
        "DetConstSort long-tail share", lambda context: _ranker(_with_reranker(context.served, DetConstSortReranker(
            _followers(context), head_fraction=_BASELINES.head_fraction, k=_BASELINES.fair_k, p=_BASELINES.fair_p)))
    ),
    "popularity": PolicySpec(
        "popularity (followers + noise)", lambda context: _ranker(_with_reranker(context.served, PopularityReranker(
            _followers(context), seed=context.world.seed)))
    ),
    "oracle": PolicySpec("oracle (true expected net value)", lambda context: OracleRanker(context.world), uses_snapshot=False),
    "guarantee_priority": PolicySpec(
        "trust-aware + balancer, guarantee priority", lambda context: _ranker(_with_policy(
            served_pipeline(context.served), guarantee_boost=GUARANTEE_BOOST))
    ),
    "fairco": PolicySpec(
        "trust-aware + FairCo controller", lambda context: _ranker(_with_reranker(context.served, FairCoReranker(FAIRCO_STRENGTH)))
    ),
    "pmmf": PolicySpec(
        "trust-aware + P-MMF dual prices", lambda context: _ranker(_with_reranker(context.served, PMMFReranker(PMMF_STRENGTH)))
    ),
}
"""Every policy an evaluation can run, by name."""


def resolve_policies(names: Sequence[str] | None, registry: Mapping[str, PolicySpec] | None = None) -> list[str]:
    """The policy names to run (``None``: all), checked against ``registry`` (default :data:`POLICIES`)."""
    known = POLICIES if registry is None else registry
    if names is None:
        return list(known)
    if isinstance(names, str):
        names = [names]
    chosen = []
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown policy {name!r}; known policies: {', '.join(known)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError(f"no policy chosen; known policies: {', '.join(known)}")
    return chosen
