"""Property tests over hostile input: requests, request files, manifests, event tables, the ledger.

The invariants: a one-line project error or a valid result, never another exception; every
candidate comes back exactly once; nothing is written outside the target; a refused ledger
update leaves the ledger as it was.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ModelIntegrityError, SchemaError, TrustfeedError
from trustfeed.serving import FeedRanker, RequestError, rank_file

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# any text, lone surrogates included (JSON can carry them as "\ud800")
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**1200), max_value=2**1200),
    st.floats(allow_nan=True, allow_infinity=True),
    _ANY_TEXT,
    st.sampled_from(["", "now", "2026-01-05T12:00:00Z", "9999-12-31T00:00:00Z", "1500-01-01", "s1", "m1", "c1"]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
                       max_leaves=8)
_IDS = st.one_of(st.sampled_from(["s1", "s2", "c1", "c2", "m1", "m2", "m-new"]), _VALUES)


@st.composite
def _requests(draw: st.DrawFn) -> Any:
    """Mostly request-shaped objects with hostile values, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_VALUES)
    candidate = st.fixed_dictionaries(
        {},
        optional={
            "stream_id": _IDS, "creator_id": _IDS, "merchant_id": _IDS,
            "viewers": _SCALARS, draw(_ANY_TEXT): _VALUES,
        },
    )
    return draw(st.fixed_dictionaries(
        {},
        optional={
            "request_id": st.one_of(st.just("r1"), _VALUES),
            "user_id": st.one_of(st.just("u1"), _VALUES),
            "ts": st.one_of(st.just("2026-01-05T12:00:00Z"), _VALUES),
            "k": st.one_of(st.integers(), _SCALARS),
            "candidates": st.one_of(st.lists(candidate, max_size=5), _VALUES),
        },
    ))


def _one_line(error: BaseException) -> None:
    message = str(error)
    assert message and "\n" not in message and len(message) < 2000  # one line, samples included
    message.encode("utf-8")


@_SETTINGS
@given(request=_requests())
def test_any_request_gets_a_response_with_every_candidate_once_or_a_request_error(fx: Any, request: Any) -> None:
    pipeline = fx.tiny_live_pipeline()
    before = json.dumps(pipeline.balancer.state_dict(), sort_keys=True)
    try:
        response = pipeline.rank(request)
    except RequestError as error:
        _one_line(error)
        assert json.dumps(pipeline.balancer.state_dict(), sort_keys=True) == before
        return
    sent = sorted(c["stream_id"] for c in request["candidates"])
    back = [i["stream_id"] for i in response["items"]] + [f["stream_id"] for f in response["filtered"]]
    assert sorted(back) == sent
    assert all(math.isfinite(i["score"]) for i in response["items"])
    json.dumps(response, allow_nan=True).encode("utf-8")


_GOOD_LINE = json.dumps({"request_id": "g", "user_id": "u", "ts": "2026-01-05T12:00:00Z",
                         "candidates": [{"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"}]}).encode()
_LINES = st.one_of(
    st.just(_GOOD_LINE),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
    _requests().map(lambda r: json.dumps(r, allow_nan=True).encode("utf-8", "surrogatepass")),
    st.sampled_from([b"[" * 5000, b"\xef\xbb\xbf" + _GOOD_LINE, b"   ", b"", b"{", b'"\\ud800"', b"1" * 5000]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINES, min_size=1, max_size=8))
def test_a_request_file_gets_one_line_per_non_blank_line_and_writes_nothing_else(
    fx: Any, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    root = tmp_path_factory.mktemp("rank")
    (root / "in.jsonl").write_bytes(b"\n".join(lines))
    rank_file(None, root / "in.jsonl", root / "out.jsonl", ranker=FeedRanker(fx.tiny_live_pipeline()))  # type: ignore[arg-type]
    # a line is blank if it is whitespace once decoded (a BOM only counts at the very start)
    text_lines = b"\n".join(lines).split(b"\n")
    if text_lines and text_lines[0].startswith(b"\xef\xbb\xbf"):
        text_lines[0] = text_lines[0][3:]
    expected = sum(1 for line in text_lines if line.decode("utf-8", "replace").strip())
    written = (root / "out.jsonl").read_text(encoding="utf-8")
    answers = written.split("\n")[:-1]  # JSON lines are split on "\n" only (U+2028 may sit in an id)
    assert written.endswith("\n") or not written
    assert len(answers) == expected
    for answer in map(json.loads, answers):
        assert ("error" in answer) != ("items" in answer)
    assert sorted(p.name for p in root.iterdir()) == ["in.jsonl", "out.jsonl"]


def _valid_manifest() -> bytes:
    import hashlib

    body = {"format": "trustfeed-bundle", "format_version": 1, "created_at": "2026-01-01T00:00:00+00:00",
            "files": {"model.txt": "a" * 64, "snapshot/merchants.parquet": "b" * 64}}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    full = {**body, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}
    return (json.dumps(full, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


_MANIFEST = _valid_manifest()


@st.composite
def _manifests(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:  # a few bytes of a real manifest changed
        raw = bytearray(_MANIFEST)
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    if kind == 2:  # any JSON value
        return json.dumps(draw(_VALUES), allow_nan=True).encode("utf-8", "surrogatepass")
    # a real manifest with one key replaced by any value
    manifest = json.loads(_MANIFEST)
    manifest[draw(st.sampled_from(sorted(manifest)))] = draw(_VALUES)
    return json.dumps(manifest, sort_keys=True, indent=2, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=200, deadline=None)
@given(raw=_manifests())
def test_any_manifest_bytes_parse_or_give_a_model_integrity_error(raw: bytes) -> None:
    from trustfeed.ranker.bundle import parse_manifest

    try:
        manifest = parse_manifest(raw)
    except ModelIntegrityError as error:
        _one_line(error)
        return
    assert raw == _MANIFEST and manifest["format_version"] == 1  # only the untouched one passes


# table cells hold text a file can hold (pandas' Arrow strings refuse lone surrogates outright)
_TEXT = st.text(max_size=12)
_CELLS = st.one_of(
    st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), _TEXT,
    st.sampled_from(["2026-01-02", "9999-12-31", "now", "paid", "cancelled", "m1", "1e400", ""]),
)


@st.composite
def _event_tables(draw: st.DrawFn) -> dict[str, pd.DataFrame]:
    n = draw(st.integers(1, 4))

    def column(good: list[Any]) -> list[Any]:
        return [draw(st.one_of(st.sampled_from(good), _CELLS)) for _ in range(n)]

    merchants = {"merchant_id": column(["m1", "m2"]), "registered_at": column(["2026-01-01"])}
    orders = {
        "order_id": column(["o1", "o2", "o3"]), "user_id": column(["u1"]), "merchant_id": column(["m1"]),
        "created_at": column(["2026-01-02T10:00:00Z"]), "amount": column([12.5, 0.0]),
        "status": column(["paid", "cancelled", None]),
    }
    tables = {"merchants": pd.DataFrame(merchants), "orders": pd.DataFrame(orders)}
    if draw(st.booleans()):
        tables["reviews"] = pd.DataFrame({
            "review_id": column(["r1", "r2"]), "order_id": column(["o1"]), "user_id": column(["u1"]),
            "created_at": column(["2026-01-03"]), "rating": column([1, 5]),
        })
    return tables


@settings(max_examples=60, deadline=None)
@given(tables=_event_tables())
def test_any_event_tables_validate_or_give_a_schema_error(tables: dict[str, pd.DataFrame]) -> None:
    from trustfeed.features.events import validate_events

    try:
        events = validate_events(tables)
    except TrustfeedError as error:
        _one_line(error)
        return
    assert events["orders"]["amount"].ge(0).all()
    assert str(events["orders"]["created_at"].dtype) == "datetime64[ns, UTC]"


_IMPRESSION = st.fixed_dictionaries({
    "request_id": st.one_of(st.sampled_from(["r1", "r2"]), _CELLS),
    "creator_id": st.one_of(st.sampled_from(["c1", "c2"]), _CELLS, _ANY_TEXT),
    "merchant_id": st.one_of(st.sampled_from(["m1", "m2"]), _CELLS),
    "position": st.one_of(st.integers(1, 20), _CELLS),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_IMPRESSION, min_size=1, max_size=5))
def test_a_refused_impression_batch_leaves_the_ledger_unchanged(fx: Any, rows: list[dict[str, Any]]) -> None:
    ranker = FeedRanker(fx.tiny_live_pipeline())
    before = json.dumps(ranker.pipeline.balancer.state_dict(), sort_keys=True)
    try:
        ranker.record_impressions(rows)
    except SchemaError as error:
        _one_line(error)
        assert json.dumps(ranker.pipeline.balancer.state_dict(), sort_keys=True) == before
        return
    for row in rows:  # accepted: every row named its ids and a valid position
        assert all(row[c] != "" and row[c] is not None and not _is_nan(row[c])
                   for c in ("request_id", "creator_id", "merchant_id"))
        assert float(row["position"]) >= 1


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)

