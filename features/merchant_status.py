"""What the policy's hard rules and score read about each merchant: trust, bans, guarantees.

One owner for "is this merchant banned, is its legal entity banned, how much is it trusted"
as the ranking policy (:class:`trustfeed.ranker.policy.Policy`, rules ``banned_merchant``,
``banned_entity``, ``trust_floor``) sees it. The feature assembler lays the table out over its
merchant vocabulary and hands one row per candidate to the policy
(:meth:`~trustfeed.features.context.FeatureAssembler.merchant_status`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ._columns import _as_float, _bool, _ids

__all__ = ["MerchantStatus", "merchant_status_table"]


class MerchantStatus(NamedTuple):
    """What the policy needs to know about each candidate's merchant (aligned to candidates)."""

    trust: np.ndarray
    """``trust_index`` in [0, 1]; the snapshot median for unknown merchants."""
    banned_merchant: np.ndarray
    """The merchant account is banned."""
    banned_entity: np.ndarray
    """Another account of the same legal entity is banned (the merchant itself is not)."""
    known: np.ndarray
    """The merchant is in the snapshot."""
    guarantees: np.ndarray
    """Buyer-protection ("trusted purchase") benefits the merchant offers (0 when unknown)."""
    orders: np.ndarray
    """The merchant's effective orders in the snapshot (``n_orders``): how much its record shows
    (0 for an unknown merchant, a new account; NaN when the snapshot has no such column)."""


def merchant_status_table(merchants: pd.DataFrame, rows: np.ndarray, n: int, prior_trust: float) -> MerchantStatus:
    """The status of ``n`` merchant rows plus a final cold-start row, from the snapshot's merchants.

    Parameters
    ----------
    merchants
        The snapshot's merchants (``trust_index``; ``banned``; ``entity_banned`` /
        ``banned_entity`` or ``entity_id``; ``n_benefits``; each optional).
    rows
        The row of each snapshot merchant in the table (``-1``: not laid out).
    n
        Rows of the table before the cold-start row.
    prior_trust
        Trust of merchants without a finite ``trust_index`` (NaN: the median of the known
        ones, 0.5 when there are none).

    Examples
    --------
    >>> merchants = pd.DataFrame({"merchant_id": ["m1", "m2", "m3"], "trust_index": [0.9, 0.2, None],
    ...                           "banned": [False, True, False], "entity_id": ["e1", "e2", "e2"]})
    >>> status = merchant_status_table(merchants, np.array([0, 1, 2]), 3, np.nan)
    >>> status.trust.tolist(), status.banned_merchant.tolist(), status.banned_entity.tolist()
    ([0.9, 0.2, 0.55, 0.55], [False, True, False, False], [False, False, True, False])
    """
    trust = np.full(n + 1, np.nan)
    banned = np.zeros(n + 1, dtype=bool)
    banned_entity = np.zeros(n + 1, dtype=bool)
    known = np.zeros(n + 1, dtype=bool)
    valid = rows >= 0
    known[rows[valid]] = True
    if "trust_index" in merchants.columns:
        trust[rows[valid]] = _as_float(merchants["trust_index"])[valid]
    if not np.isfinite(prior_trust):
        prior_trust = float(np.nanmedian(trust[:-1])) if np.isfinite(trust[:-1]).any() else 0.5
    trust[~np.isfinite(trust)] = prior_trust
    if "banned" in merchants.columns:
        banned[rows[valid]] = _bool(merchants["banned"])[valid]
        entity_flag = next((c for c in ("entity_banned", "banned_entity") if c in merchants.columns), None)
        if entity_flag is not None:
            banned_entity[rows[valid]] = _bool(merchants[entity_flag])[valid]
        elif "entity_id" in merchants.columns:
            entity = _ids(merchants["entity_id"])
            any_banned = (
                pd.Series(_bool(merchants["banned"]), index=merchants.index).groupby(entity.to_numpy(), dropna=True).transform("any")
            )
            flag = any_banned.reindex(merchants.index).fillna(False).to_numpy(dtype=bool)
            banned_entity[rows[valid]] = flag[valid]
        banned_entity &= ~banned
    guarantees = np.zeros(n + 1)
    if "n_benefits" in merchants.columns:
        guarantees[rows[valid]] = np.nan_to_num(_as_float(merchants["n_benefits"])[valid])
    orders = np.full(n + 1, np.nan)
    if "n_orders" in merchants.columns:
        orders[:] = 0.0
        orders[rows[valid]] = np.nan_to_num(_as_float(merchants["n_orders"])[valid])
    return MerchantStatus(np.clip(trust, 0.0, 1.0), banned, banned_entity, known, guarantees, orders)

