"""Where each feature's value comes from: one small typed object per kind of source.

A feature of :class:`~trustfeed.features.context.FeatureAssembler` is read either

* per merchant or per creator (a column of the trust snapshot, "is the id known", the
  merchant's category code, the creator's engagement): the assembler lays these out as one
  table per entity and gathers a request's rows with a single ``take``;
* per request row (the user's history with the merchant, follows, category affinity and
  taste, overall activity, the hour of the request, a live field the request sends).

Each source says which of the two it is (:attr:`Source.entity`) and reads its values through
the assembler's lookups (:class:`EntityTables`, :class:`RequestRows`), so the assembler never
dispatches on names. In the saved feature schema a source is written as text (``"merchant:gmv"``,
``"user_follows"``); :func:`parse_source` reads it back and refuses unknown kinds.

Examples
--------
>>> parse_source("merchant:trust_index")
MerchantColumn(column='trust_index')
>>> parse_source("user_merchant:bad_orders").text()
'user_merchant:bad_orders'
>>> parse_source("hour").entity
'request'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from .errors import SchemaError

__all__ = [
    "Source",
    "EntityTables",
    "RequestRows",
    "MerchantColumn",
    "MerchantPercentile",
    "MerchantKnown",
    "MerchantCategory",
    "CreatorColumn",
    "CreatorKnown",
    "Engagement",
    "UserMerchant",
    "UserFollows",
    "UserCategory",
    "UserTaste",
    "UserActivity",
    "Hour",
    "Live",
    "ENGAGEMENT_COLUMNS",
    "parse_source",
]

ENGAGEMENT_COLUMNS: tuple[str, ...] = ("ctr", "cvr", "coec", "log_impressions")
"""Creator engagement values of the history tables (``log_impressions`` = ``log1p(impressions)``)."""


class EntityTables(Protocol):
    """Per-entity values of an assembler: one row per known id plus a final cold-start row."""

    def merchant_column(self, column: str) -> np.ndarray:
        """A snapshot merchant column (cold start: the prior)."""
        ...

    def merchant_percentile(self, column: str) -> np.ndarray:
        """A numeric merchant column as its standing among the snapshot's merchants (see :class:`MerchantPercentile`)."""
        ...

    def merchant_known(self) -> np.ndarray:
        """1 for merchants in the snapshot, else 0."""
        ...

    def merchant_category(self) -> np.ndarray:
        """Category code of each merchant (NaN when none)."""
        ...

    def creator_column(self, column: str) -> np.ndarray:
        """A snapshot creator column (cold start: the prior)."""
        ...

    def creator_known(self) -> np.ndarray:
        """1 for creators in the snapshot, else 0."""
        ...

    def engagement(self, column: str) -> np.ndarray:
        """A creator engagement value (one of :data:`ENGAGEMENT_COLUMNS`)."""
        ...


class RequestRows(Protocol):
    """The rows of one :meth:`~trustfeed.features.context.FeatureAssembler.transform` call."""

    def user_merchant(self, column: str) -> np.ndarray:
        """The user's past ``orders`` / ``bad_orders`` with each candidate's merchant."""
        ...

    def user_follows(self) -> np.ndarray:
        """1 when the user followed the candidate's creator before the request time."""
        ...

    def user_category(self) -> np.ndarray:
        """The user's affinity to the candidate merchant's category."""
        ...

    def user_taste(self) -> np.ndarray:
        """The user's taste (orders, clicks and followed creators) for the candidate merchant's category."""
        ...

    def user_activity(self, column: str) -> np.ndarray:
        """The user's overall past ``orders`` / ``clicks``."""
        ...

    def hour(self) -> np.ndarray:
        """Hour of day (UTC) of the request (NaN for an unreadable time)."""
        ...

    def live(self, field: str) -> np.ndarray:
        """A live-context field the request sends (NaN when absent)."""
        ...


@dataclass(frozen=True)
class Source:
    """Base of the feature sources; ``column`` is empty for kinds that take none."""

    column: str = ""

    kind: ClassVar[str] = ""
    """The kind's name in the saved schema."""
    entity: ClassVar[str] = ""
    """``"merchant"``, ``"creator"`` (per-entity tables) or ``"request"`` (per row)."""
    columns: ClassVar[tuple[str, ...] | None] = ()
    """Allowed columns: ``()`` none, ``None`` any non-empty name, else these."""

    def __post_init__(self) -> None:
        allowed = type(self).columns
        fits = (not self.column) if allowed == () else (bool(self.column) if allowed is None else self.column in allowed)
        if not fits:
            expected = "no column" if allowed == () else ("a column name" if allowed is None else f"one of {allowed}")
            raise SchemaError("feature schema", "sources", f"{self.kind} with {expected}", repr(self.text()))

    def text(self) -> str:
        """The schema form, ``kind`` or ``kind:column``."""
        return f"{self.kind}:{self.column}" if self.column else self.kind

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        """Value per entity row (``merchant`` and ``creator`` sources)."""
        raise TypeError(f"{self.text()} is read per request row, not per {self.entity}")

    def request_values(self, rows: RequestRows) -> np.ndarray:
        """Value per request row (``request`` sources)."""
        raise TypeError(f"{self.text()} is read per {self.entity}, not per request row")


@dataclass(frozen=True)
class MerchantColumn(Source):
    """A numeric column of the snapshot's merchants (cold start: the prior of unseen ids)."""

    kind: ClassVar[str] = "merchant"
    entity: ClassVar[str] = "merchant"
    columns: ClassVar[tuple[str, ...] | None] = None

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.merchant_column(self.column)


@dataclass(frozen=True)
class MerchantPercentile(Source):
    """A numeric merchant column as its standing among the snapshot's merchants, in [0, 1].

    The mid-rank share of the snapshot's merchants with a lower value (ties count half), so
    the feature has the same scale in every snapshot, whatever the column's own scale there:
    a trust index made with default weights early in a log and with fitted weights later
    (another scale) gives a model the same feature in training and serving. Non-decreasing in
    the value; an unknown merchant gets the standing of the column's cold-start prior.
    """

    kind: ClassVar[str] = "merchant_percentile"
    entity: ClassVar[str] = "merchant"
    columns: ClassVar[tuple[str, ...] | None] = None

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.merchant_percentile(self.column)


@dataclass(frozen=True)
class MerchantKnown(Source):
    """1 when the merchant is in the snapshot."""

    kind: ClassVar[str] = "merchant_known"
    entity: ClassVar[str] = "merchant"

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.merchant_known()


@dataclass(frozen=True)
class MerchantCategory(Source):
    """Categorical code of the merchant's category (codes fixed by the schema)."""

    kind: ClassVar[str] = "merchant_category"
    entity: ClassVar[str] = "merchant"

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.merchant_category()


@dataclass(frozen=True)
class CreatorColumn(Source):
    """A numeric column of the snapshot's creators (cold start: likewise)."""

    kind: ClassVar[str] = "creator"
    entity: ClassVar[str] = "creator"
    columns: ClassVar[tuple[str, ...] | None] = None

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.creator_column(self.column)


@dataclass(frozen=True)
class CreatorKnown(Source):
    """1 when the creator is in the snapshot."""

    kind: ClassVar[str] = "creator_known"
    entity: ClassVar[str] = "creator"

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.creator_known()


@dataclass(frozen=True)
class Engagement(Source):
    """The creator's engagement from the history tables (cold start: the platform prior)."""

    kind: ClassVar[str] = "engagement"
    entity: ClassVar[str] = "creator"
    columns: ClassVar[tuple[str, ...] | None] = ENGAGEMENT_COLUMNS

    def entity_values(self, tables: EntityTables) -> np.ndarray:
        return tables.engagement(self.column)


@dataclass(frozen=True)
class UserMerchant(Source):
    """Past orders / bad orders of the user with the merchant (0 when none)."""

    kind: ClassVar[str] = "user_merchant"
    entity: ClassVar[str] = "request"
    columns: ClassVar[tuple[str, ...] | None] = ("orders", "bad_orders")

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.user_merchant(self.column)


@dataclass(frozen=True)
class UserFollows(Source):
    """The user followed the creator before the request time."""

    kind: ClassVar[str] = "user_follows"
    entity: ClassVar[str] = "request"

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.user_follows()


@dataclass(frozen=True)
class UserCategory(Source):
    """The user's affinity to the merchant's category (0 when none)."""

    kind: ClassVar[str] = "user_category"
    entity: ClassVar[str] = "request"

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.user_category()


@dataclass(frozen=True)
class UserTaste(Source):
    """The user's taste for the merchant's category: the share of the user's orders, clicks
    and followed creators' streams in it (0 when none; see :func:`~trustfeed.features.history.taste_of`)."""

    kind: ClassVar[str] = "user_taste"
    entity: ClassVar[str] = "request"

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.user_taste()


@dataclass(frozen=True)
class UserActivity(Source):
    """The user's overall past orders / clicks."""

    kind: ClassVar[str] = "user_activity"
    entity: ClassVar[str] = "request"
    columns: ClassVar[tuple[str, ...] | None] = ("orders", "clicks")

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.user_activity(self.column)


@dataclass(frozen=True)
class Hour(Source):
    """Hour of day (UTC) of the request."""

    kind: ClassVar[str] = "hour"
    entity: ClassVar[str] = "request"

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.hour()


@dataclass(frozen=True)
class Live(Source):
    """An optional live-context field of the candidate (NaN when the request lacks it)."""

    kind: ClassVar[str] = "live"
    entity: ClassVar[str] = "request"
    columns: ClassVar[tuple[str, ...] | None] = None

    def request_values(self, rows: RequestRows) -> np.ndarray:
        return rows.live(self.column)


_KINDS: dict[str, type[Source]] = {
    kind.kind: kind
    for kind in (MerchantColumn, MerchantPercentile, MerchantKnown, MerchantCategory, CreatorColumn, CreatorKnown, Engagement,
                 UserMerchant, UserFollows, UserCategory, UserTaste, UserActivity, Hour, Live)
}


def parse_source(text: str) -> Source:
    """The source a schema names (``kind`` or ``kind:column``); unknown kinds are a SchemaError."""
    if not isinstance(text, str):
        raise SchemaError("feature schema", "sources", "a known feature source", repr(text))
    kind, _, column = text.partition(":")
    source = _KINDS.get(kind)
    if source is None:
        raise SchemaError("feature schema", "sources", "a known feature source", repr(text))
    return source(column)
