"""Ranking: LambdaMART relevance, the relevance x trust policy and the Gini exposure balancer.

:class:`RankingPipeline` is the one in-process scorer; serving, ``trustfeed rank`` and offline
evaluation all go through it. :func:`save_bundle` / :func:`load_bundle` write and verify the
model bundle.
"""

from .balancer import BalancerConfig, ExposureBalancer
from .baselines import creator_cap, fair_quota, relevance_only
from .bundle import load_bundle, save_bundle, verify_bundle
from .lambdamart import LambdaMART, LambdaMARTConfig
from .metrics import (
    exposure_by,
    exposure_summary,
    gini,
    kendall_tau,
    long_tail_share,
    mean_ndcg,
    ndcg_at_k,
    position_exposure,
)
from .pipeline import RankingPipeline
from .policy import Policy, PolicyConfig, PolicyState

__all__ = [
    "BalancerConfig",
    "ExposureBalancer",
    "LambdaMART",
    "LambdaMARTConfig",
    "Policy",
    "PolicyConfig",
    "PolicyState",
    "RankingPipeline",
    "creator_cap",
    "exposure_by",
    "exposure_summary",
    "fair_quota",
    "gini",
    "kendall_tau",
    "load_bundle",
    "long_tail_share",
    "mean_ndcg",
    "ndcg_at_k",
    "position_exposure",
    "relevance_only",
    "save_bundle",
    "verify_bundle",
]
