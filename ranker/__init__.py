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
from .policy import PolicyConfig, apply_policy, final_score, hard_rules

__all__ = [
    "BalancerConfig",
    "ExposureBalancer",
    "LambdaMART",
    "LambdaMARTConfig",
    "PolicyConfig",
    "RankingPipeline",
    "apply_policy",
    "creator_cap",
    "exposure_by",
    "exposure_summary",
    "fair_quota",
    "final_score",
    "gini",
    "hard_rules",
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
