"""A small crafted platform for the trust tests: merchants of known quality, real buyers.

Vectorised (no loop over rows); every merchant's bad-order probability is known, so tests
can check that the trust index orders merchants by it and that attacks do not move it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 60
AS_OF = START + pd.Timedelta(days=DAYS)


def craft_tables(
    rng: np.random.Generator, n_merchants: int = 40, orders_per_merchant: int = 80, n_users: int = 400
) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """Contract tables of a small platform and each merchant's true bad-order probability."""
    merchant_ids = np.array([f"m{i:03d}" for i in range(n_merchants)])
    p_bad = pd.Series(np.linspace(0.02, 0.4, n_merchants), index=merchant_ids)
    merchants = pd.DataFrame(
        {
            "merchant_id": merchant_ids,
            "registered_at": START - pd.Timedelta(days=100),
            "entity_id": np.char.add("e", merchant_ids),
            "category": np.where(np.arange(n_merchants) % 2 == 0, "beauty", "food"),
        }
    )
    creators = pd.DataFrame(
        {
            "creator_id": np.char.add("c", merchant_ids),
            "registered_at": START - pd.Timedelta(days=100),
            "merchant_id": merchant_ids,
            "followers": rng.integers(100, 10_000, n_merchants).astype(float),
        }
    )
    n_orders = n_merchants * orders_per_merchant
    merchant_of = np.repeat(np.arange(n_merchants), orders_per_merchant)
    created = START + pd.to_timedelta(rng.uniform(0, DAYS, n_orders) * 86_400, unit="s")
    bad = rng.random(n_orders) < p_bad.to_numpy()[merchant_of]
    late = rng.random(n_orders) < p_bad.to_numpy()[merchant_of]
    order_ids = np.array([f"o{i:06d}" for i in range(n_orders)])
    users = np.array([f"u{i:04d}" for i in range(n_users)])
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "user_id": users[rng.integers(0, n_users, n_orders)],
            "merchant_id": merchant_ids[merchant_of],
            "created_at": created,
            "amount": np.round(rng.lognormal(4.0, 0.5, n_orders), 2),
            "creator_id": np.char.add("c", merchant_ids[merchant_of]),
            "status": "paid",
            "promised_ship_by": created + pd.Timedelta(days=2),
            "shipped_at": created + pd.to_timedelta(np.where(late, 3.0, 1.0), unit="D"),
        }
    )
    case_rows = np.flatnonzero(bad & (rng.random(n_orders) < 0.7))
    after_sales = pd.DataFrame(
        {
            "case_id": [f"a{i:06d}" for i in range(len(case_rows))],
            "order_id": order_ids[case_rows],
            "opened_at": created[case_rows] + pd.Timedelta(days=3),
            "type": "return",
            "reason": "quality",
            "resolved_at": created[case_rows] + pd.Timedelta(days=5),
            "outcome": "buyer_favor",
            "platform_intervened": False,
        }
    )
    review_rows = np.flatnonzero(rng.random(n_orders) < 0.6)
    rating = np.where(bad[review_rows], rng.integers(1, 3, len(review_rows)), rng.integers(4, 6, len(review_rows)))
    reviews = pd.DataFrame(
        {
            "review_id": [f"r{i:06d}" for i in range(len(review_rows))],
            "order_id": order_ids[review_rows],
            "user_id": orders["user_id"].to_numpy()[review_rows],
            "created_at": created[review_rows] + pd.Timedelta(days=4),
            "rating": rating,
        }
    )
    # Every real buyer follows a creator: real accounts have platform history.
    follows = pd.DataFrame(
        {
            "user_id": users,
            "creator_id": np.char.add("c", merchant_ids[rng.integers(0, n_merchants, n_users)]),
            "followed_at": START - pd.Timedelta(days=10),
        }
    )
    tables = {
        "merchants": merchants,
        "creators": creators,
        "orders": orders,
        "after_sales": after_sales,
        "reviews": reviews,
        "follows": follows,
    }
    return tables, p_bad


def add_rows(tables: dict[str, pd.DataFrame], name: str, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A copy of ``tables`` with ``rows`` appended to table ``name`` (created if absent)."""
    out = dict(tables)
    out[name] = pd.concat([tables[name], rows], ignore_index=True) if name in tables else rows
    return out
