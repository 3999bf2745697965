"""Adapter: the public Olist e-commerce sample as contract event-log tables.

Olist is a Brazilian marketplace; its sellers are our merchants. The mapping:

- seller -> merchant (``category``: the seller's most frequent product category, in
  English; ``registered_at``: the seller's first purchase timestamp, as the data has no
  sign-up date; no ``entity_id``);
- one contract order per (Olist order, seller): ``order_id`` is the Olist id, suffixed with
  ``~<seller_id>`` only when an Olist order has items from several sellers; ``amount`` is
  the sum of item prices; ``promised_ship_by`` the earliest ``shipping_limit_date``;
  ``status`` ``cancelled`` for canceled / unavailable orders, else ``paid``;
  ``shipped_at`` = carrier date, ``delivered_at`` = customer delivery date;
  ``user_id`` = ``customer_unique_id`` (the real buyer across orders);
- each Olist review -> one review per contract order of its Olist order (``rating`` =
  ``review_score``).

There are no after-sales cases, reports, violations, guarantees, NPS, creators, streams or
impressions: those tables are absent, and the trust snapshot says so.

Sampling bias: the sample keeps every non-delivered order but only ~5.4% of delivered ones;
:data:`DELIVERED_WEIGHT` re-weights delivered orders to population rates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..features.errors import SchemaError

__all__ = ["load_olist", "DELIVERED_WEIGHT", "OLIST_FILES"]

DELIVERED_WEIGHT = 96_478 / 5_172
"""How many population orders one delivered order of the sample stands for (~18.65)."""

OLIST_FILES = (
    "olist_orders_dataset.csv",
    "olist_order_items_dataset.csv",
    "olist_order_reviews_dataset.csv",
    "olist_customers_dataset.csv",
    "olist_products_dataset.csv",
    "product_category_name_translation.csv",
)
_CANCELLED = ("canceled", "unavailable")


def _read(directory: Path, name: str, **kwargs: Any) -> pd.DataFrame:
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Olist file missing (expected {', '.join(OLIST_FILES)})")
    return pd.read_csv(path, **kwargs)


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True, errors="coerce")


def load_olist(directory: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Read the Olist CSVs under ``directory`` as contract tables (``merchants``, ``orders``, ``reviews``).

    The frames are raw contract tables: pass them to
    :func:`trustfeed.features.events.validate_events`. Orders also carry a ``delivered``
    flag and a ``sample_weight`` column (ignored by validation) for evaluations that correct
    the sampling bias.
    """
    root = Path(directory)
    orders_raw = _read(root, "olist_orders_dataset.csv", dtype=str)
    items = _read(root, "olist_order_items_dataset.csv", dtype={"order_id": str, "seller_id": str, "product_id": str})
    reviews_raw = _read(root, "olist_order_reviews_dataset.csv", dtype={"review_id": str, "order_id": str})
    customers = _read(root, "olist_customers_dataset.csv", dtype=str)
    products = _read(root, "olist_products_dataset.csv", dtype=str)
    translation = _read(root, "product_category_name_translation.csv", dtype=str)

    for frame, name, columns in (
        (orders_raw, "olist_orders_dataset", ("order_id", "customer_id", "order_status", "order_purchase_timestamp")),
        (items, "olist_order_items_dataset", ("order_id", "seller_id", "price", "shipping_limit_date")),
        (reviews_raw, "olist_order_reviews_dataset", ("review_id", "order_id", "review_score", "review_creation_date")),
    ):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise SchemaError(name, ", ".join(absent), "the Olist columns", "no such column")

    english = translation.set_index("product_category_name")["product_category_name_english"]
    products["category"] = products["product_category_name"].map(english).fillna(products["product_category_name"])
    items = items.merge(products[["product_id", "category"]], on="product_id", how="left")
    items["price"] = pd.to_numeric(items["price"], errors="coerce").fillna(0.0)
    items["shipping_limit_date"] = _utc(items["shipping_limit_date"])

    per_seller = (
        items.groupby(["order_id", "seller_id"], sort=True)
        .agg(amount=("price", "sum"), promised_ship_by=("shipping_limit_date", "min"))
        .reset_index()
    )
    sellers_per_order = per_seller.groupby("order_id")["seller_id"].transform("size")
    per_seller["contract_order_id"] = per_seller["order_id"].where(
        sellers_per_order == 1, per_seller["order_id"] + "~" + per_seller["seller_id"]
    )
    buyer = customers.set_index("customer_id")["customer_unique_id"]
    orders_raw["user_id"] = orders_raw["customer_id"].map(buyer).fillna(orders_raw["customer_id"])
    joined = per_seller.merge(orders_raw, on="order_id", how="inner")
    status = joined["order_status"].str.lower()
    orders = pd.DataFrame(
        {
            "order_id": joined["contract_order_id"],
            "user_id": joined["user_id"],
            "merchant_id": joined["seller_id"],
            "created_at": _utc(joined["order_purchase_timestamp"]),
            "amount": joined["amount"].astype("float64"),
            "status": status.isin(_CANCELLED).map({True: "cancelled", False: "paid"}),
            "promised_ship_by": joined["promised_ship_by"],
            "shipped_at": _utc(joined["order_delivered_carrier_date"]),
            "delivered_at": _utc(joined["order_delivered_customer_date"]),
            "delivered": (status == "delivered").to_numpy(),
        }
    )
    orders["sample_weight"] = orders["delivered"].map({True: DELIVERED_WEIGHT, False: 1.0}).astype("float64")
    orders = orders[orders["created_at"].notna()].reset_index(drop=True)

    category = (
        items.dropna(subset=["category"])
        .groupby(["seller_id", "category"], sort=True)
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["seller_id", "n", "category"], ascending=[True, False, True], kind="stable")
        .drop_duplicates("seller_id")
        .set_index("seller_id")["category"]
    )
    first_order = orders.groupby("merchant_id")["created_at"].min()
    merchants = pd.DataFrame({"merchant_id": first_order.index, "registered_at": first_order.to_numpy()})
    merchants["category"] = merchants["merchant_id"].map(category)

    contract_of = orders[["order_id", "merchant_id", "user_id"]].assign(
        olist_order_id=orders["order_id"].str.split("~").str[0]
    )
    reviews = reviews_raw.merge(contract_of, left_on="order_id", right_on="olist_order_id", suffixes=("_olist", ""))
    reviews = pd.DataFrame(
        {
            "review_id": reviews["review_id"] + ":" + reviews["order_id"],
            "order_id": reviews["order_id"],
            "user_id": reviews["user_id"],
            "created_at": _utc(reviews["review_creation_date"]),
            "rating": pd.to_numeric(reviews["review_score"], errors="coerce"),
        }
    )
    reviews = reviews.dropna(subset=["created_at", "rating"]).drop_duplicates("review_id").reset_index(drop=True)
    reviews["rating"] = reviews["rating"].astype("int64")
    return {"merchants": merchants, "orders": orders, "reviews": reviews}
