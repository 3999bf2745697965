"""Feature sources: typed objects, written to and read back from the schema's text form."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustfeed.features.errors import SchemaError
from trustfeed.features.sources import (
    ENGAGEMENT_COLUMNS,
    CreatorColumn,
    CreatorKnown,
    Engagement,
    Hour,
    Live,
    MerchantCategory,
    MerchantColumn,
    MerchantKnown,
    Source,
    UserActivity,
    UserCategory,
    UserFollows,
    UserMerchant,
    parse_source,
)

_NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
SOURCES = st.one_of(
    _NAMES.map(MerchantColumn), _NAMES.map(CreatorColumn), _NAMES.map(Live),
    st.sampled_from(ENGAGEMENT_COLUMNS).map(Engagement),
    st.sampled_from(["orders", "bad_orders"]).map(UserMerchant),
    st.sampled_from(["orders", "clicks"]).map(UserActivity),
    st.sampled_from([MerchantKnown(), MerchantCategory(), CreatorKnown(), UserFollows(), UserCategory(), Hour()]),
)


@given(SOURCES)
def test_the_schema_text_reads_back_as_the_same_source(source: Source) -> None:
    again = parse_source(source.text())
    assert again == source and type(again) is type(source)
    assert source.entity in ("merchant", "creator", "request")


@given(SOURCES)
def test_a_source_is_read_either_per_entity_or_per_request_row(source: Source) -> None:
    wrong = source.request_values if source.entity != "request" else source.entity_values
    with pytest.raises(TypeError, match=re.escape(source.text())):
        wrong(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text", ["merchants:gmv", "", "merchant:", "hour:utc", "user_merchant:returns", "engagement:views", "live:"]
)
def test_an_unknown_or_malformed_source_is_a_schema_error(text: str) -> None:
    with pytest.raises(SchemaError, match="feature schema.sources"):
        parse_source(text)
