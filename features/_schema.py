"""The declarative schema of the event-log tables (docs/contract.md section 1).

This module only describes the tables; :mod:`trustfeed.features.events` loads, coerces and
checks them against it. Keeping the description as data means the docs, the validator and
``EventLog.before`` cannot drift apart: they all read the same specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "ColumnKind",
    "ColumnSpec",
    "Reference",
    "TableSpec",
    "TABLE_SPECS",
    "ORDER_STATUSES",
    "AFTER_SALES_TYPES",
    "AFTER_SALES_REASONS",
    "AFTER_SALES_OUTCOMES",
    "REPORT_CATEGORIES",
    "PENALTIES",
    "BENEFITS",
]

ColumnKind = Literal["id", "time", "float", "int", "bool", "enum", "text"]
"""How a column is stored after validation.

``id``: ``string`` (pyarrow); ``time``: ``datetime64[ns, UTC]``; ``float``: ``float64``;
``int``: ``int64`` when required, nullable ``Int64`` when optional; ``bool``: nullable
``boolean``; ``enum``: ``category`` with the fixed category list; ``text``: ``string``.
"""

ORDER_STATUSES = ("paid", "cancelled")
AFTER_SALES_TYPES = ("return", "refund_only", "refund_without_return", "exchange")
AFTER_SALES_REASONS = ("quality", "not_as_described", "counterfeit", "logistics", "no_reason", "other")
AFTER_SALES_OUTCOMES = ("buyer_favor", "merchant_favor", "withdrawn")
REPORT_CATEGORIES = ("false_advertising", "counterfeit", "inducement", "vulgar", "other")
PENALTIES = ("warning", "restriction", "suspension", "ban")
BENEFITS = (
    "refund_without_return",
    "return_freight",
    "fake_one_pay_ten",
    "seven_day_no_reason",
    "fast_refund",
)


@dataclass(frozen=True)
class ColumnSpec:
    """One column of an event-log table.

    Parameters
    ----------
    name
        Column name as it appears in the files.
    kind
        Storage kind after validation (see :data:`ColumnKind`).
    required
        The column must be present and may not hold nulls.
    categories
        The allowed values of an ``enum`` column (the category order of the validated dtype).
    minimum, maximum
        Inclusive bounds of a numeric column (``None``: unbounded).
    doc
        One line for ``docs/schema.md`` and error messages.
    """

    name: str
    kind: ColumnKind
    required: bool = False
    categories: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""

    @property
    def expected(self) -> str:
        """What a value of this column must look like, in words (used by error messages)."""
        if self.kind == "enum":
            return "one of {" + ", ".join(self.categories) + "}"
        if self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            if self.minimum is not None and self.maximum is not None:
                return f"{noun} in {_fmt(self.minimum)}..{_fmt(self.maximum)}"
            if self.minimum is not None:
                return f"{noun} >= {_fmt(self.minimum)}"
            return noun
        return {
            "id": "an id (string)",
            "time": "an ISO 8601 timestamp (UTC)",
            "bool": "a boolean (true/false/1/0 or empty)",
            "text": "text",
        }[self.kind]


@dataclass(frozen=True)
class Reference:
    """``column`` of this table should name a row of ``table`` (by that table's ``target``).

    Broken references are warnings, not errors: logs are often cut from larger systems.
    """

    column: str
    table: str
    target: str


@dataclass(frozen=True)
class TableSpec:
    """One event-log table.

    Parameters
    ----------
    name
        Table name; the file is ``<name>.parquet`` or ``<name>.csv``.
    columns
        The declared columns, in output order.
    required
        Whether a dataset without this table is invalid.
    key
        Columns that identify a row (duplicates are an error).
    event_time
        The column that says when the row became known (the point-in-time cut filters on it).
    resolution
        Columns known only later, each mapped to the time column that says when: ``before(t)``
        nulls them unless that time is set and earlier than ``t``.
    references
        Soft foreign keys, checked as warnings.
    doc
        One line for ``docs/schema.md``.
    """

    name: str
    columns: tuple[ColumnSpec, ...]
    required: bool
    key: tuple[str, ...]
    event_time: str
    resolution: tuple[tuple[str, str], ...] = ()
    references: tuple[Reference, ...] = ()
    doc: str = ""
    _by_name: dict[str, ColumnSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {column.name: column for column in self.columns}
        # A wrong spec is a programming error in this file; fail at import, loudly.
        if len(by_name) != len(self.columns):
            raise ValueError(f"{self.name}: duplicate column names in the spec")
        for name in (*self.key, self.event_time, *(c for pair in self.resolution for c in pair)):
            if name not in by_name:
                raise ValueError(f"{self.name}: {name!r} is not a declared column")
        if not by_name[self.event_time].required or by_name[self.event_time].kind != "time":
            raise ValueError(f"{self.name}: event time {self.event_time!r} must be a required time column")
        object.__setattr__(self, "_by_name", by_name)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Declared column names, in order."""
        return tuple(column.name for column in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns that must be present and non-null."""
        return tuple(column.name for column in self.columns if column.required)

    def column(self, name: str) -> ColumnSpec:
        """The spec of one column (``KeyError`` if undeclared)."""
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _id(name: str, required: bool = False, doc: str = "") -> ColumnSpec:
    return ColumnSpec(name, "id", required=required, doc=doc)


def _time(name: str, required: bool = False, doc: str = "") -> ColumnSpec:
    return ColumnSpec(name, "time", required=required, doc=doc)


def _enum(name: str, categories: tuple[str, ...], required: bool = False, doc: str = "") -> ColumnSpec:
    return ColumnSpec(name, "enum", required=required, categories=categories, doc=doc)


def _rating(name: str, required: bool = False, doc: str = "") -> ColumnSpec:
    return ColumnSpec(name, "int", required=required, minimum=1, maximum=5, doc=doc)


_TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "merchants",
        (
            _id("merchant_id", True),
            _time("registered_at", True, "when the shop account was opened"),
            _id(
                "entity_id",
                doc="legal entity / verified identity behind the account; merchants sharing one "
                "are the same business (a banned entity that re-registers keeps its record)",
            ),
            ColumnSpec("category", "text", doc="main product category (free text)"),
        ),
        required=True,
        key=("merchant_id",),
        event_time="registered_at",
        doc="one row per shop account",
    ),
    TableSpec(
        "creators",
        (
            _id("creator_id", True),
            _time("registered_at", True),
            _id("merchant_id", doc="set when the host sells for one merchant (self-operated)"),
            ColumnSpec("followers", "float", minimum=0, doc="follower count"),
        ),
        required=False,
        key=("creator_id",),
        event_time="registered_at",
        references=(Reference("merchant_id", "merchants", "merchant_id"),),
        doc="the livestream hosts",
    ),
    TableSpec(
        "livestreams",
        (
            _id("stream_id", True),
            _id("creator_id", True),
            _id("merchant_id", True),
            _time("started_at", True),
            _time("ended_at", doc="null while live; known only once the stream ends"),
            ColumnSpec("category", "text", doc="product category of the stream (free text)"),
        ),
        required=False,
        key=("stream_id",),
        event_time="started_at",
        resolution=(("ended_at", "ended_at"),),
        references=(
            Reference("creator_id", "creators", "creator_id"),
            Reference("merchant_id", "merchants", "merchant_id"),
        ),
        doc="live sessions",
    ),
    TableSpec(
        "orders",
        (
            _id("order_id", True),
            _id("user_id", True),
            _id("merchant_id", True),
            _time("created_at", True),
            ColumnSpec("amount", "float", required=True, minimum=0, doc="order value, >= 0"),
            _id("creator_id", doc="the host the order was placed through, if any"),
            _id("stream_id", doc="the live session the order was placed in, if any"),
            _enum("status", ORDER_STATUSES),
            _time("promised_ship_by"),
            _time("shipped_at", doc="known only once shipped"),
            _time("delivered_at", doc="known only once delivered"),
            ColumnSpec("presale", "bool", doc="pre-sale order (ships later by design)"),
        ),
        required=True,
        key=("order_id",),
        event_time="created_at",
        resolution=(("shipped_at", "shipped_at"), ("delivered_at", "delivered_at")),
        references=(
            Reference("merchant_id", "merchants", "merchant_id"),
            Reference("creator_id", "creators", "creator_id"),
            Reference("stream_id", "livestreams", "stream_id"),
        ),
        doc="one row per order",
    ),
    TableSpec(
        "after_sales",
        (
            _id("case_id", True),
            _id("order_id", True),
            _time("opened_at", True),
            _enum("type", AFTER_SALES_TYPES, True),
            _enum("reason", AFTER_SALES_REASONS),
            _time("resolved_at", doc="known only once resolved"),
            _enum("outcome", AFTER_SALES_OUTCOMES, doc="known only once resolved (at resolved_at)"),
            ColumnSpec("platform_intervened", "bool", doc="the platform arbitrated the case"),
        ),
        required=False,
        key=("case_id",),
        event_time="opened_at",
        resolution=(("resolved_at", "resolved_at"), ("outcome", "resolved_at")),
        references=(Reference("order_id", "orders", "order_id"),),
        doc="returns, refunds and exchanges",
    ),
    TableSpec(
        "reviews",
        (
            _id("review_id", True),
            _id("order_id", True),
            _id("user_id", True),
            _time("created_at", True),
            _rating("rating", True, "overall stars, integer 1..5"),
            _rating("quality", doc="detail rating 1..5, may be null"),
            _rating("service", doc="detail rating 1..5, may be null"),
            _rating("logistics", doc="detail rating 1..5, may be null"),
        ),
        required=False,
        key=("review_id",),
        event_time="created_at",
        references=(Reference("order_id", "orders", "order_id"),),
        doc="buyer reviews of orders",
    ),
    TableSpec(
        "reports",
        (
            _id("report_id", True),
            _id("reporter_id", True),
            _time("created_at", True),
            _enum("category", REPORT_CATEGORIES, True),
            _id("merchant_id"),
            _id("creator_id"),
            _id("stream_id"),
            ColumnSpec("verified", "bool", doc="null = not yet reviewed by the platform"),
        ),
        required=False,
        key=("report_id",),
        event_time="created_at",
        references=(
            Reference("merchant_id", "merchants", "merchant_id"),
            Reference("creator_id", "creators", "creator_id"),
            Reference("stream_id", "livestreams", "stream_id"),
        ),
        doc="user reports and complaints",
    ),
    TableSpec(
        "violations",
        (
            _id("violation_id", True),
            _id("merchant_id", True),
            _time("created_at", True),
            ColumnSpec("severity", "int", required=True, minimum=1, maximum=3, doc="integer 1..3"),
            _id("creator_id"),
            ColumnSpec("type", "text", doc="the platform's violation code (free text)"),
            _enum("penalty", PENALTIES),
        ),
        required=False,
        key=("violation_id",),
        event_time="created_at",
        references=(
            Reference("merchant_id", "merchants", "merchant_id"),
            Reference("creator_id", "creators", "creator_id"),
        ),
        doc="platform enforcement records",
    ),
    TableSpec(
        "guarantees",
        (
            _id("merchant_id", True),
            _enum("benefit", BENEFITS, True),
            _time("enrolled_at", True),
            _time("left_at", doc="known only once the merchant leaves the programme"),
        ),
        required=False,
        key=("merchant_id", "benefit", "enrolled_at"),
        event_time="enrolled_at",
        resolution=(("left_at", "left_at"),),
        references=(Reference("merchant_id", "merchants", "merchant_id"),),
        doc="buyer-protection (trusted purchase) enrolments",
    ),
    TableSpec(
        "nps",
        (
            _id("response_id", True),
            _id("user_id", True),
            _id("merchant_id", True),
            _time("created_at", True),
            ColumnSpec("score", "int", required=True, minimum=0, maximum=10, doc="integer 0..10"),
        ),
        required=False,
        key=("response_id",),
        event_time="created_at",
        references=(Reference("merchant_id", "merchants", "merchant_id"),),
        doc="net-promoter survey answers",
    ),
    TableSpec(
        "follows",
        (
            _id("user_id", True),
            _id("creator_id", True),
            _time("followed_at", True),
        ),
        required=False,
        key=("user_id", "creator_id", "followed_at"),
        event_time="followed_at",
        references=(Reference("creator_id", "creators", "creator_id"),),
        doc="user -> creator follow events",
    ),
    TableSpec(
        "impressions",
        (
            _id("request_id", True),
            _id("user_id", True),
            _time("ts", True),
            _id("stream_id", True),
            _id("creator_id", True),
            _id("merchant_id", True),
            ColumnSpec("position", "int", required=True, minimum=1, doc="1-based slot in the feed"),
            ColumnSpec("clicked", "bool"),
            ColumnSpec("watch_seconds", "float", minimum=0),
            ColumnSpec("purchased", "bool"),
            _id("order_id", doc="the order the impression led to, if any"),
        ),
        required=False,
        key=("request_id", "stream_id"),
        event_time="ts",
        references=(
            Reference("stream_id", "livestreams", "stream_id"),
            Reference("creator_id", "creators", "creator_id"),
            Reference("merchant_id", "merchants", "merchant_id"),
            Reference("order_id", "orders", "order_id"),
        ),
        doc="the feed log the ranker learns from: one row per shown candidate",
    ),
)

TABLE_SPECS: MappingProxyType[str, TableSpec] = MappingProxyType({spec.name: spec for spec in _TABLES})
"""Every table of the schema, by name, in documentation order."""
