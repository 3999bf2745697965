"""Parsing and validation of ranking requests (docs/contract.md section 3).

A request arrives as Python objects (decoded JSON). :func:`parse_request` checks it and turns
the candidate list into columns, so everything after parsing is vectorised. A problem raises
:class:`~trustfeed.features.errors.RequestError` naming the field the way a caller would write
it, e.g. ``candidates[3].merchant_id``.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from operator import itemgetter
from typing import Any

import pandas as pd

from ..features.errors import ConfigError, RequestError
from ..features.events import to_utc

__all__ = ["ParsedRequest", "parse_request", "CANDIDATE_ID_FIELDS", "RequestError"]

CANDIDATE_ID_FIELDS: tuple[str, ...] = ("stream_id", "creator_id", "merchant_id")
"""The fields every candidate must carry (non-empty strings)."""


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request, its candidates held as columns.

    Attributes
    ----------
    request_id, user_id
        As sent.
    ts
        The request time, a timezone-aware UTC ``pandas.Timestamp``.
    k
        How many slots the feed shows (``None`` when the request did not say).
    stream_id, creator_id, merchant_id
        One entry per candidate, in the order sent.
    live
        Optional live-context fields, by name; each list is aligned with the candidates and
        holds ``None`` where a candidate did not send the field.
    """

    request_id: str
    user_id: str
    ts: pd.Timestamp
    k: int | None
    stream_id: list[str]
    creator_id: list[str]
    merchant_id: list[str]
    live: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def n_candidates(self) -> int:
        """Number of candidates sent (duplicates included)."""
        return len(self.stream_id)


def parse_request(request: Any) -> ParsedRequest:
    """Validate a ranking request and return its candidates as columns.

    Parameters
    ----------
    request
        ``{"request_id": str, "user_id": str, "ts": ISO 8601, "k": int (optional),
        "candidates": [{"stream_id": str, "creator_id": str, "merchant_id": str, ...}]}``.
        Unknown top-level fields are ignored; unknown candidate fields are kept as live
        context (numbers, booleans, strings or null).

    Returns
    -------
    ParsedRequest

    Raises
    ------
    RequestError
        Naming the first offending field, e.g. ``candidates[3].merchant_id``.

    Examples
    --------
    >>> parsed = parse_request({"request_id": "r1", "user_id": "u1", "ts": "2024-05-01T12:00:00+08:00",
    ...                         "candidates": [{"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"}]})
    >>> parsed.ts.isoformat(), parsed.merchant_id
    ('2024-05-01T04:00:00+00:00', ['m1'])
    >>> parse_request({"request_id": "r1", "user_id": "u1", "ts": "yesterday", "candidates": []})
    Traceback (most recent call last):
    ...
    trustfeed.features.errors.RequestError: request field 'ts': expected an ISO 8601 time, got 'yesterday'
    """
    if not isinstance(request, Mapping):
        raise RequestError("request", f"expected a JSON object, got {_kind(request)}")
    request_id = _required_str(request, "request_id")
    user_id = _required_str(request, "user_id")
    ts = _parse_ts(request.get("ts", _MISSING))
    k = _parse_k(request.get("k"))
    candidates = request.get("candidates", _MISSING)
    if candidates is _MISSING:
        raise RequestError("candidates", "missing")
    if not isinstance(candidates, Sequence) or isinstance(candidates, (str, bytes)):
        raise RequestError("candidates", f"expected a list of objects, got {_kind(candidates)}")
    # The request is Python objects: one pass per field to turn it into columns cannot be
    # avoided; everything downstream works on whole columns. map/set run these passes in C.
    # The common request (plain dicts holding exactly the three ids, all non-empty strings)
    # is recognised in a few such passes; anything else takes the field-by-field path below,
    # which finds and names the first bad field.
    columns = _plain_id_columns(candidates)
    if columns is not None:
        stream_id, creator_id, merchant_id = columns
        return ParsedRequest(
            request_id=request_id, user_id=user_id, ts=ts, k=k,
            stream_id=stream_id, creator_id=creator_id, merchant_id=merchant_id, live={},
        )
    if not _all_types(candidates, dict) and (
        not_objects := [i for i, c in enumerate(candidates) if not isinstance(c, Mapping)]
    ):
        i = not_objects[0]
        raise RequestError(f"candidates[{i}]", f"expected an object, got {_kind(candidates[i])}")
    ids = {name: _id_column(candidates, name) for name in CANDIDATE_ID_FIELDS}
    _check_id_columns(tuple(ids.values()))
    live = _live_columns(candidates)
    return ParsedRequest(
        request_id=request_id,
        user_id=user_id,
        ts=ts,
        k=k,
        stream_id=ids["stream_id"],
        creator_id=ids["creator_id"],
        merchant_id=ids["merchant_id"],
        live=live,
    )


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, int):
        # str() of a huge int is slow and may be refused (sys.int_info.str_digits_check_threshold)
        return f"int {value!r}" if -(10**18) < value < 10**18 else f"int of {value.bit_length()} bits"
    if isinstance(value, (str, float)):
        return f"{type(value).__name__} {_clip(repr(value))}"
    return type(value).__name__


def _clip(text: str, limit: int = 80) -> str:
    """A value quoted in an error message, cut short so the message stays one short line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_id_columns(columns: Sequence[Sequence[str]]) -> None:
    """The candidate id columns hold valid Unicode text (one pass over all of them when ASCII)."""
    if all("".join(column).isascii() for column in columns):
        return  # the common case (one C pass per column): nothing can be a surrogate
    for name, column in zip(CANDIDATE_ID_FIELDS, columns, strict=True):
        _check_encodable(column, lambda i, name=name: f"candidates[{i}].{name}")


def _check_encodable(values: Sequence[str], where: Any) -> None:
    """Raise RequestError for the first string holding a lone surrogate (not valid Unicode text).

    JSON allows ``"\\ud800"``; such a string cannot be written as UTF-8, logged or stored.
    ``where(i)`` names the field of the ``i``-th value.
    """
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        for i, value in enumerate(values):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise RequestError(
                    where(i), f"not valid Unicode text (lone surrogate at character {error.start})"
                ) from None


def _required_str(request: Mapping[str, Any], name: str) -> str:
    value = request.get(name, _MISSING)
    if value is _MISSING:
        raise RequestError(name, "missing")
    if not isinstance(value, str):
        raise RequestError(name, f"expected a string, got {_kind(value)}")
    if not value:
        raise RequestError(name, "expected a non-empty string, got ''")
    if not value.isascii():
        _check_encodable((value,), lambda _: name)
    return value


# ISO 8601 as JSON encoders write it: a date, optionally a time (seconds and fraction
# optional) and a UTC offset. Words pandas also understands ("now", "today") are not times
# a request can carry: they would rank differently on every call.
_ISO_8601 = re.compile(
    r"(?:\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?"  # extended format
    r"|\d{8}(?:T\d{4}(?:\d{2}(?:[.,]\d{1,9})?)?)?)"  # basic format
    r"(?:Z|z|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)


def _parse_ts(value: Any) -> pd.Timestamp:
    if value is _MISSING:
        raise RequestError("ts", "missing")
    # Epoch numbers are ambiguous (seconds or milliseconds?): the contract says ISO 8601.
    if isinstance(value, str):
        if not _ISO_8601.fullmatch(value):
            raise RequestError("ts", f"expected an ISO 8601 time, got {_clip(value)!r}")
    elif not isinstance(value, _dt.datetime):
        raise RequestError("ts", f"expected an ISO 8601 time, got {_kind(value)}")
    if isinstance(value, str) and (fast := _iso_utc(value)) is not None:
        return fast
    # Times are UTC: a time without an offset is read as UTC (the one parser, to_utc).
    try:
        return to_utc(value)
    except ConfigError as error:
        raise RequestError("ts", str(error)) from None


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_NS_RANGE = (pd.Timestamp.min.value, pd.Timestamp.max.value)
_LONG_FRACTION = re.compile(r"[.,]\d{7}")


def _iso_utc(value: str) -> pd.Timestamp | None:
    """The request time read by the standard library's ISO 8601 parser (a C call), or ``None``.

    Gives exactly :func:`~trustfeed.features.events.to_utc`'s answer, a few times faster; ``None``
    for whatever it might read differently (fractions finer than microseconds, which it would
    truncate), cannot read, or that lies outside the representable range, so that ``to_utc``
    decides (and names the problem).
    """
    if _LONG_FRACTION.search(value):
        return None
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    delta = moment - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if not _NS_RANGE[0] <= ns <= _NS_RANGE[1]:
        return None
    return pd.Timestamp(ns, tz="UTC")


_MAX_K = 2**31 - 1


def _parse_k(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and 0 < value <= _MAX_K:
            return int(value)  # JSON encoders may write 10 as 10.0
        raise RequestError("k", f"expected a positive integer, got {_kind(value)}")
    if value <= 0:
        raise RequestError("k", f"expected a positive integer, got {_kind(value)}")
    if value > _MAX_K:
        raise RequestError("k", f"expected a positive integer up to {_MAX_K}, got {_kind(value)}")
    return value


_ID_GETTERS = tuple(itemgetter(name) for name in CANDIDATE_ID_FIELDS)


def _plain_id_columns(candidates: Sequence[Any]) -> tuple[list[str], list[str], list[str]] | None:
    """The id columns when every candidate is a dict of exactly the three ids, all non-empty
    strings holding valid text; ``None`` when anything is different (the caller then validates
    field by field and names the first bad field)."""
    if not candidates or set(map(type, candidates)) != {dict} or set(map(len, candidates)) != {len(CANDIDATE_ID_FIELDS)}:
        return None
    try:
        stream_id, creator_id, merchant_id = columns = tuple(list(map(get, candidates)) for get in _ID_GETTERS)
        # one C pass per column checks types and text at once: joining refuses anything but
        # strings, and ASCII text cannot hold a lone surrogate
        ascii_text = all(["".join(column).isascii() for column in columns])
    except (KeyError, TypeError):
        return None
    if "" in stream_id or "" in creator_id or "" in merchant_id:
        return None
    if not ascii_text:
        _check_id_columns(columns)
    return stream_id, creator_id, merchant_id


def _all_types(values: Sequence[Any], kind: type) -> bool:
    return set(map(type, values)) <= {kind}


def _id_column(candidates: Sequence[Mapping[str, Any]], name: str) -> list[str]:
    try:
        column = list(map(itemgetter(name), candidates))
    except KeyError:
        column = [c.get(name, _MISSING) for c in candidates]
    if _all_types(column, str) and "" not in column:
        return column
    bad = [(i, v) for i, v in enumerate(column) if not (isinstance(v, str) and v)]
    if not bad:
        # str subclasses (e.g. numpy.str_) are accepted and stored as plain str
        return [str(v) for v in column]
    i, value = bad[0]
    where = f"candidates[{i}].{name}"
    if value is _MISSING:
        raise RequestError(where, "missing")
    if isinstance(value, str):
        raise RequestError(where, "expected a non-empty string, got ''")
    raise RequestError(where, f"expected a string, got {_kind(value)}")


def _live_columns(candidates: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    names = set().union(*candidates).difference(CANDIDATE_ID_FIELDS) if candidates else set()
    live: dict[str, list[Any]] = {}
    for name in sorted(names, key=str):
        if not isinstance(name, str):
            raise RequestError("candidates", f"field names must be strings, got {_kind(name)}")
        column = [c.get(name) for c in candidates]
        if set(map(type, column)) <= _LIVE_TYPES:
            live[name] = column
            continue
        bad = [i for i, v in enumerate(column) if not _is_live_scalar(v)]
        if bad:
            i = bad[0]
            raise RequestError(
                f"candidates[{i}].{name}",
                f"expected a number, boolean, string or null, got {_kind(column[i])}",
            )
        live[name] = column
    return live


_LIVE_TYPES = {type(None), str, bool, int}  # float is checked value by value (infinities)


def _is_live_scalar(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, Real):
        # NaN means "unknown" and is tolerated; infinities are not a measurement
        return not math.isinf(float(value))
    return False


def coerce_live_numeric(parsed: ParsedRequest, name: str) -> list[float]:
    """A live field as floats (``nan`` where absent), or ``RequestError`` naming the candidate.

    The feature assembler decides which live fields it uses; this is how the pipeline checks
    that those fields are numeric before handing them over.
    """
    column = parsed.live.get(name)
    if column is None:
        return [math.nan] * parsed.n_candidates
    bad = [i for i, v in enumerate(column) if isinstance(v, str)]
    if bad:
        i = bad[0]
        raise RequestError(f"candidates[{i}].{name}", f"expected a number or null, got {_kind(column[i])}")
    try:
        return [math.nan if v is None else float(v) for v in column]
    except OverflowError:  # an integer beyond the float range (about 1.8e308)
        i = next(i for i, v in enumerate(column) if isinstance(v, int) and not _fits_float(v))
        raise RequestError(
            f"candidates[{i}].{name}", f"expected a number within the float range, got {_kind(column[i])}"
        ) from None


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True
