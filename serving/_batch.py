"""``rank_file``: ``trustfeed rank`` over a JSON-lines file, through the serving API."""

from __future__ import annotations

import codecs
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ..features.errors import OutputError, RequestError
from ..features.io import atomic_file
from ..ranker._request import ParsedRequest
from ._feed_ranker import FeedRanker

__all__ = ["rank_file"]

_CHUNK = 256  # requests ranked per vectorised pass


def rank_file(
    model_uri: str | os.PathLike[str],
    requests_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    snapshot: str | os.PathLike[str] | None = None,
    *,
    ranker: FeedRanker | None = None,
    log_features: bool = False,
) -> str:
    """Rank every request of a JSON-lines file and write one response per line.

    Output line ``i`` answers input line ``i`` (blank lines are skipped). A line that is not
    JSON or not a valid request becomes ``{"request_id": <id or null>, "error": "..."}`` and
    the others are ranked as usual. Requests go through
    :meth:`FeedRanker.rank_many` in chunks, in file order, so the results (balancer ledger
    included) equal ranking the same requests one by one through the Python API. The output
    is written to a temporary file and renamed into place.

    Parameters
    ----------
    model_uri, snapshot
        As for :meth:`FeedRanker.load`.
    requests_path, out_path
        Input and output JSON-lines files.
    ranker
        An already loaded ranker to use instead of loading ``model_uri`` (which is loaded with
        the LightGBM predictor: a one-shot batch rarely pays back a compilation; pass a
        ranker loaded with ``predictor="compiled"`` for a long file).
    log_features
        Add each item's feature vector to the responses.

    Returns
    -------
    str
        A one-line summary: requests ranked, requests refused, candidates ranked and filtered.

    Examples
    --------
    With ``bundle_dir`` a saved bundle (see :class:`FeedRanker`)::

        >>> print(rank_file(bundle_dir, "requests.jsonl", "responses.jsonl"))   # doctest: +SKIP
        ranked 120 requests (1 errors): 3011 items, 42 filtered -> responses.jsonl
    """
    ranker = ranker if ranker is not None else FeedRanker.load(model_uri, snapshot=snapshot, predictor="lightgbm")
    source = Path(requests_path)
    counts = {"requests": 0, "errors": 0, "items": 0, "filtered": 0}
    if source.is_dir():
        raise OutputError(str(source), "is a directory, expected a JSON-lines file of requests")
    with open(source, "rb") as lines, atomic_file(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for chunk in _chunks(_read_lines(lines), _CHUNK):
            for response in _rank_chunk(ranker, chunk, log_features):
                if "error" in response:
                    counts["errors"] += 1
                else:
                    counts["requests"] += 1
                    counts["items"] += len(response["items"])
                    counts["filtered"] += len(response["filtered"])
                _write_line(out, response)
    return (
        f"ranked {counts['requests']} requests ({counts['errors']} errors): "
        f"{counts['items']} items, {counts['filtered']} filtered -> {out_path}"
    )


def _read_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """Non-blank lines as text, numbered from 1; a line that is not UTF-8 comes as its error.

    Lines are decoded one by one so one bad byte spoils one line, not the file. A UTF-8 byte
    order mark at the start of the file (some editors write one) is not part of the first line.
    """
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield number, error
            continue
        if line.strip():
            yield number, line


_Line = tuple[int, "str | UnicodeDecodeError"]


def _chunks(lines: Iterator[_Line], size: int) -> Iterator[list[_Line]]:
    chunk: list[_Line] = []
    for item in lines:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rank_chunk(ranker: FeedRanker, chunk: list[_Line], log_features: bool) -> list[dict[str, Any]]:
    """Parse each line on its own, rank the valid ones together, keep the file order."""
    pipeline = ranker.pipeline  # one model for the whole chunk, even during a reload
    results: list[dict[str, Any] | None] = [None] * len(chunk)
    parsed: list[ParsedRequest] = []
    slots: list[int] = []
    for i, (number, line) in enumerate(chunk):
        if isinstance(line, UnicodeDecodeError):
            results[i] = {"request_id": None, "error": f"line {number}: not valid UTF-8 (byte {line.start + 1})"}
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            results[i] = {"request_id": None, "error": f"line {number}: not valid JSON ({error.msg} at column {error.colno})"}
            continue
        except RecursionError:
            results[i] = {"request_id": None, "error": f"line {number}: not valid JSON (nested too deeply)"}
            continue
        except ValueError as error:  # e.g. an integer of more digits than Python converts
            results[i] = {"request_id": None, "error": f"line {number}: not valid JSON ({_one_line(error)})"}
            continue
        try:
            parsed.append(pipeline.parse(request))
            slots.append(i)
        except RequestError as error:
            results[i] = {"request_id": _echoed_id(request), "error": f"line {number}: {_one_line(error)}"}
    ranked = pipeline.rank_parsed(parsed, log_features=log_features, record=ranker.record_served)
    for slot, response in zip(slots, ranked, strict=True):
        results[slot] = response
    return [r for r in results if r is not None]


def _echoed_id(request: Any) -> str | None:
    """The request's id for its error line, if it is one that can be written back."""
    request_id = request.get("request_id") if isinstance(request, dict) else None
    if not isinstance(request_id, str) or len(request_id) > _MAX_ECHOED_ID:
        return None
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return request_id


_MAX_ECHOED_ID = 1024


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 500 else text[:497] + "..."


def _write_line(out: TextIO, response: dict[str, Any]) -> None:
    safe = _json_safe(response)
    try:
        out.write(json.dumps(safe, allow_nan=False, ensure_ascii=False) + "\n")
    except UnicodeEncodeError:  # a lone surrogate got through: escape it rather than lose the line
        out.write(json.dumps(safe, allow_nan=False, ensure_ascii=True) + "\n")


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
