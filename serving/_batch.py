"""``rank_file``: ``trustfeed rank`` over a JSON-lines file, through the serving API."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..features.errors import RequestError
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
        An already loaded ranker to use instead of loading ``model_uri``.
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
    ranker = ranker if ranker is not None else FeedRanker.load(model_uri, snapshot=snapshot)
    source = Path(requests_path)
    counts = {"requests": 0, "errors": 0, "items": 0, "filtered": 0}
    with open(source, encoding="utf-8") as lines, atomic_file(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for chunk in _chunks(_read_lines(lines), _CHUNK):
            for response in _rank_chunk(ranker, chunk, log_features):
                if "error" in response:
                    counts["errors"] += 1
                else:
                    counts["requests"] += 1
                    counts["items"] += len(response["items"])
                    counts["filtered"] += len(response["filtered"])
                out.write(json.dumps(_json_safe(response), allow_nan=False, ensure_ascii=False) + "\n")
    return (
        f"ranked {counts['requests']} requests ({counts['errors']} errors): "
        f"{counts['items']} items, {counts['filtered']} filtered -> {out_path}"
    )


def _read_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


def _chunks(lines: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for item in lines:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rank_chunk(ranker: FeedRanker, chunk: list[tuple[int, str]], log_features: bool) -> list[dict[str, Any]]:
    """Parse each line on its own, rank the valid ones together, keep the file order."""
    pipeline = ranker.pipeline  # one model for the whole chunk, even during a reload
    results: list[dict[str, Any] | None] = [None] * len(chunk)
    parsed: list[ParsedRequest] = []
    slots: list[int] = []
    for i, (number, line) in enumerate(chunk):
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            results[i] = {"request_id": None, "error": f"line {number}: not valid JSON ({error.msg} at column {error.colno})"}
            continue
        try:
            parsed.append(pipeline.parse(request))
            slots.append(i)
        except RequestError as error:
            request_id = request.get("request_id") if isinstance(request, dict) else None
            results[i] = {
                "request_id": request_id if isinstance(request_id, str) else None,
                "error": f"line {number}: {' '.join(str(error).split())}",
            }
    ranked = pipeline.rank_parsed(parsed, log_features=log_features, record=ranker.record_served)
    for slot, response in zip(slots, ranked, strict=True):
        results[slot] = response
    return [r for r in results if r is not None]


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
