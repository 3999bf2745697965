"""Hostile requests: every malformed value is a RequestError naming the field, and a batch file
of bad lines still gets one answer per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.features.events import to_utc
from trustfeed.ranker._request import parse_request
from trustfeed.serving import FeedRanker, RequestError, rank_file


def _request(**changes: Any) -> dict[str, Any]:
    request = {
        "request_id": "r1",
        "user_id": "u1",
        "ts": "2026-01-05T12:00:00Z",
        "candidates": [
            {"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"},
            {"stream_id": "s2", "creator_id": "c2", "merchant_id": "m2"},
        ],
    }
    request.update(changes)
    return request


def _candidate(**changes: Any) -> list[dict[str, Any]]:
    return [{"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1", **changes}]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ts": "now"}, "ts"),
        ({"ts": "today"}, "ts"),
        ({"ts": "9999-12-31T00:00:00Z"}, "ts"),
        ({"ts": "1500-01-01T00:00:00Z"}, "ts"),
        ({"ts": "2262-04-11T23:47:16.854775807-05:00"}, "ts"),  # in range before the UTC shift only
        ({"ts": "２０２６-01-05"}, "ts"),  # full-width digits are not ISO 8601
        ({"request_id": "\ud800"}, "request_id"),
        ({"user_id": "a\udfffb"}, "user_id"),
        ({"k": 10**5000}, "k"),
        ({"k": 2**63}, "k"),
        ({"k": 1e300}, "k"),
        ({"candidates": _candidate(stream_id="s\ud800")}, "candidates[0].stream_id"),
        ({"candidates": [*_candidate(), {"stream_id": "s2", "creator_id": "\udc80", "merchant_id": "m2", "x": 1}]},
         "candidates[1].creator_id"),
    ],
)
def test_malformed_values_name_their_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as error:
        parse_request(_request(**changes))
    assert error.value.field == field
    message = str(error.value)
    assert "\n" not in message and len(message) < 300
    message.encode("utf-8")  # the message itself can be written anywhere


@pytest.mark.parametrize("value", ["2026-01-05", "2026-01-05T12:00", "2026-01-05 12:00:00.123+08:00", "20260105T120000Z"])
def test_iso_8601_forms_are_accepted(value: str) -> None:
    assert parse_request(_request(ts=value)).ts == to_utc(value)


def test_out_of_range_times_are_config_errors_for_the_cli() -> None:
    with pytest.raises(ConfigError, match="between 1677"):
        to_utc("9999-01-01")


@pytest.fixture
def live_pipeline(fx: Any) -> Any:
    """A tiny pipeline whose model uses the live field ``viewers`` (its own ledger per test)."""
    return fx.tiny_live_pipeline()


def test_a_live_value_beyond_float_range_is_a_request_error(live_pipeline: Any) -> None:
    with pytest.raises(RequestError) as error:
        live_pipeline.rank(_request(candidates=[*_candidate(viewers=3), *_candidate(viewers=2**1100)]))
    assert error.value.field == "candidates[1].viewers"
    response = live_pipeline.rank(_request(candidates=_candidate(viewers=2**60)), record=False)
    assert [item["stream_id"] for item in response["items"]] == ["s1"]


def _bad_lines() -> list[bytes]:
    good = _request()
    return [
        b"\xef\xbb\xbf" + json.dumps({**good, "request_id": "bom"}).encode(),
        json.dumps(good).replace('"r1"', '"digits", "k": ' + "9" * 5000).encode(),
        b"[" * 100_000,
        json.dumps({**good, "request_id": "lone", "user_id": "\ud800"}).encode(),
        json.dumps({**good, "request_id": "far", "ts": "9999-12-31T00:00:00Z"}).encode(),
        b'{"request_id": "\xff\xfe"}',
        json.dumps({**good, "request_id": "now", "ts": "now"}).encode(),
        b"   \t",
        b"",
        json.dumps({**good, "request_id": "big", "candidates": _candidate(viewers=2**1100)}).encode(),
        json.dumps({**good, "request_id": "\ud800x"}).encode(),
        b"not json at all",
        json.dumps([good]).encode(),
        json.dumps({**good, "request_id": "last"}).encode(),
    ]


def test_a_file_of_bad_lines_gets_one_answer_per_non_blank_line(live_pipeline: Any, tmp_path: Path) -> None:
    lines = _bad_lines()
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"\r\n".join(lines) + b"\n")
    out = tmp_path / "responses.jsonl"
    summary = rank_file(None, requests, out, ranker=FeedRanker(live_pipeline))  # type: ignore[arg-type]
    answers = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(answers) == len([line for line in lines if line.strip()])
    ranked = [a["request_id"] for a in answers if "error" not in a]
    assert ranked == ["bom", "last"]
    errors = [a for a in answers if "error" in a]
    assert len(errors) == len(answers) - 2 and f"({len(errors)} errors)" in summary
    for answer in errors:
        assert answer["error"].startswith("line ") and "\n" not in answer["error"]
    by_id = {a["request_id"]: a["error"] for a in errors if a["request_id"]}
    assert "'ts'" in by_id["far"] and "'ts'" in by_id["now"] and "'user_id'" in by_id["lone"]
    assert "candidates[0].viewers" in by_id["big"]


def test_impressions_with_a_missing_id_or_position_leave_the_ledger_unchanged(live_pipeline: Any) -> None:
    ranker = FeedRanker(live_pipeline)
    ranker.record_impressions([{"request_id": "r0", "creator_id": "c1", "merchant_id": "m1", "position": 1}])
    before = json.dumps(live_pipeline.balancer.state_dict(), sort_keys=True)
    good = {"request_id": "r1", "creator_id": "c2", "merchant_id": "m2", "position": 1}
    for bad in ({"creator_id": None}, {"merchant_id": float("nan")}, {"request_id": ""}, {"position": None},
                {"position": 0}, {"position": 1.5}):
        with pytest.raises(SchemaError) as error:
            ranker.record_impressions([good, {**good, "position": 2, **bad}])
        assert error.value.column == next(iter(bad))
        assert json.dumps(live_pipeline.balancer.state_dict(), sort_keys=True) == before
    ranker.record_impressions([good])
    assert json.dumps(live_pipeline.balancer.state_dict(), sort_keys=True) != before
