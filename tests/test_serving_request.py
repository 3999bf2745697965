"""Request parsing: valid requests become columns, malformed ones name the field."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.ranker._request import parse_request
from trustfeed.serving import RequestError


def _valid(**changes: Any) -> dict[str, Any]:
    request = {
        "request_id": "r1",
        "user_id": "u1",
        "ts": "2026-01-05T12:00:00Z",
        "k": 5,
        "candidates": [
            {"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"},
            {"stream_id": "s2", "creator_id": "c2", "merchant_id": "m2", "viewers": 120},
        ],
    }
    request.update(changes)
    return request


def test_valid_request_becomes_columns() -> None:
    parsed = parse_request(_valid())
    assert parsed.request_id == "r1" and parsed.user_id == "u1" and parsed.k == 5
    assert parsed.stream_id == ["s1", "s2"] and parsed.creator_id == ["c1", "c2"] and parsed.merchant_id == ["m1", "m2"]
    assert parsed.live == {"viewers": [None, 120]}
    assert parsed.ts == pd.Timestamp("2026-01-05T12:00:00", tz="UTC")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T20:00:00+08:00", "2026-01-05T12:00:00+00:00"),
        ("2026-01-05T12:00:00", "2026-01-05T12:00:00+00:00"),  # no offset: UTC
        ("2026-01-05", "2026-01-05T00:00:00+00:00"),
        ("2026-01-05T12:00:00.250Z", "2026-01-05T12:00:00.250000+00:00"),
    ],
)
def test_times_are_read_as_utc(text: str, expected: str) -> None:
    assert parse_request(_valid(ts=text)).ts.isoformat() == expected


def test_k_is_optional() -> None:
    request = _valid()
    del request["k"]
    assert parse_request(request).k is None
    assert parse_request(_valid(k=None)).k is None
    assert parse_request(_valid(k=3.0)).k == 3


def _with_candidate(index: int, **changes: Any) -> dict[str, Any]:
    request = _valid()
    candidate = dict(request["candidates"][index])
    for key, value in changes.items():
        if value is _DROP:
            candidate.pop(key)
        else:
            candidate[key] = value
    request["candidates"][index] = candidate
    return request


_DROP = object()


@pytest.mark.parametrize(
    ("request_", "field", "problem"),
    [
        ([], "request", "expected a JSON object"),
        ("{}", "request", "expected a JSON object"),
        ({k: v for k, v in _valid().items() if k != "request_id"}, "request_id", "missing"),
        (_valid(request_id=7), "request_id", "expected a string, got int 7"),
        (_valid(request_id=""), "request_id", "non-empty"),
        (_valid(user_id=None), "user_id", "expected a string, got null"),
        ({k: v for k, v in _valid().items() if k != "ts"}, "ts", "missing"),
        (_valid(ts="next tuesday"), "ts", "ISO 8601"),
        (_valid(ts="NaT"), "ts", "ISO 8601"),
        (_valid(ts=1767614400), "ts", "ISO 8601"),
        (_valid(ts="2026-13-45"), "ts", "ISO 8601"),
        (_valid(k=0), "k", "positive integer"),
        (_valid(k=-2), "k", "positive integer"),
        (_valid(k=True), "k", "positive integer"),
        (_valid(k="10"), "k", "positive integer"),
        (_valid(k=2.5), "k", "positive integer"),
        ({k: v for k, v in _valid().items() if k != "candidates"}, "candidates", "missing"),
        (_valid(candidates="s1,s2"), "candidates", "expected a list"),
        (_valid(candidates={"stream_id": "s1"}), "candidates", "expected a list"),
        (_valid(candidates=[{"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"}, "s2"]), "candidates[1]", "expected an object"),
        (_with_candidate(1, merchant_id=_DROP), "candidates[1].merchant_id", "missing"),
        (_with_candidate(0, stream_id=12), "candidates[0].stream_id", "expected a string, got int 12"),
        (_with_candidate(1, creator_id=""), "candidates[1].creator_id", "non-empty"),
        (_with_candidate(0, merchant_id=None), "candidates[0].merchant_id", "expected a string, got null"),
        (_with_candidate(1, viewers=[1, 2]), "candidates[1].viewers", "number, boolean, string or null"),
        (_with_candidate(0, viewers={"n": 1}), "candidates[0].viewers", "number, boolean, string or null"),
        (_with_candidate(0, viewers=float("inf")), "candidates[0].viewers", "number, boolean, string or null"),
    ],
)
def test_malformed_requests_name_the_field(request_: Any, field: str, problem: str) -> None:
    with pytest.raises(RequestError) as error:
        parse_request(request_)
    assert error.value.field == field
    assert problem in error.value.problem
    assert field in str(error.value)


def test_the_first_bad_candidate_is_named() -> None:
    request = _valid(candidates=[{"stream_id": f"s{i}", "creator_id": "c", "merchant_id": "m"} for i in range(10)])
    request["candidates"][7]["merchant_id"] = 3
    request["candidates"][9]["merchant_id"] = 4
    with pytest.raises(RequestError) as error:
        parse_request(request)
    assert error.value.field == "candidates[7].merchant_id"


def test_nan_live_fields_and_unknown_top_level_fields_are_accepted() -> None:
    parsed = parse_request(_valid(session="abc", candidates=[
        {"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1", "viewers": float("nan"), "is_live": True},
    ]))
    assert math.isnan(parsed.live["viewers"][0]) and parsed.live["is_live"] == [True]


_ids = st.text(min_size=1, max_size=8)


@st.composite
def _requests(draw: Any) -> dict[str, Any]:
    candidates = draw(st.lists(
        st.fixed_dictionaries(
            {"stream_id": _ids, "creator_id": _ids, "merchant_id": _ids},
            optional={"viewers": st.one_of(st.none(), st.integers(0, 10**6), st.floats(allow_infinity=False)),
                      "title": st.text(max_size=5)},
        ),
        max_size=30,
    ))
    ts = draw(st.datetimes(min_value=pd.Timestamp("2000-01-01").to_pydatetime(),
                           max_value=pd.Timestamp("2100-01-01").to_pydatetime(),
                           timezones=st.sampled_from([None, pd.Timestamp("2026-01-01", tz="Asia/Shanghai").tzinfo])))
    return {"request_id": draw(_ids), "user_id": draw(_ids), "ts": ts.isoformat(), "candidates": candidates}


@settings(max_examples=80, deadline=None)
@given(request=_requests())
def test_every_valid_request_parses_into_aligned_columns(request: dict[str, Any]) -> None:
    parsed = parse_request(request)
    n = len(request["candidates"])
    assert parsed.n_candidates == n
    assert parsed.stream_id == [c["stream_id"] for c in request["candidates"]]
    assert parsed.merchant_id == [c["merchant_id"] for c in request["candidates"]]
    assert all(len(column) == n for column in parsed.live.values())
    assert str(parsed.ts.tz) == "UTC"
    assert parsed.ts == pd.Timestamp(request["ts"]).tz_localize("UTC") if pd.Timestamp(request["ts"]).tzinfo is None \
        else parsed.ts == pd.Timestamp(request["ts"])


@st.composite
def _iso_times(draw: st.DrawFn) -> str:
    """ISO 8601 times in every form a request may use, including the edges of the range."""
    moment = draw(st.datetimes(min_value=pd.Timestamp.min.ceil("us").to_pydatetime().replace(tzinfo=None),
                               max_value=pd.Timestamp.max.floor("us").to_pydatetime().replace(tzinfo=None)))
    basic = draw(st.booleans())
    date = moment.strftime("%Y%m%d" if basic else "%Y-%m-%d")
    form = draw(st.sampled_from(["date", "minutes", "seconds", "fraction"]))
    if form == "date":
        return date
    clock = moment.strftime("%H%M" if basic else "%H:%M")
    if form != "minutes":
        clock += moment.strftime("%S" if basic else ":%S")
    if form == "fraction":
        digits = draw(st.integers(1, 9))
        clock += draw(st.sampled_from(".,")) + str(draw(st.integers(0, 10**digits - 1))).zfill(digits)
    offset = draw(st.sampled_from(["", "Z", "z", "+{h}", "-{h}", "+{h}{m}", "-{h}:{m}", "+{h}:{m}"]))
    offset = offset.format(h=f"{draw(st.integers(0, 23)):02d}", m=f"{draw(st.integers(0, 59)):02d}")
    separator = "T" if basic else draw(st.sampled_from("T "))
    return f"{date}{separator}{clock}{offset}"


@settings(max_examples=150, deadline=None)
@given(text=_iso_times())
def test_request_time_fast_path_reads_exactly_what_to_utc_reads(text: str) -> None:
    # the standard library parses the common forms; to_utc (pandas) stays the definition
    from trustfeed.features.errors import ConfigError
    from trustfeed.features.events import to_utc

    try:
        expected = to_utc(text)
    except ConfigError:
        with pytest.raises(RequestError, match="ts"):
            parse_request(_valid(ts=text))
        return
    got = parse_request(_valid(ts=text)).ts
    assert got == expected and got.value == expected.value
    assert got.unit == expected.unit == "ns" and got.tz == expected.tz
