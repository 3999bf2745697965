"""A feed service: FeedRanker inside a Starlette app, for uvicorn with several workers.

Configuration (environment, read by every worker at start):

- ``TRUSTFEED_MODEL``: the model URI (bundle directory, ``runs:/...``, ``models:/name@alias``);
- ``TRUSTFEED_REDIS``: a Redis URL for the platform-wide exposure ledger (unset: each worker
  keeps its own ledger);
- ``TRUSTFEED_SYNC_INTERVAL``: seconds between two syncs of a worker's ledger with Redis
  (default 1);
- ``TRUSTFEED_PREDICTOR``: ``auto`` (default: the trees as native code, LightGBM with one
  logged line when lleaves is not installed or cannot compile the model), ``compiled`` or
  ``lightgbm``;
- ``TRUSTFEED_COMPILE_CACHE``: directory where workers share compiled models (default
  ``~/.cache/trustfeed/compiled``);
- ``TRUSTFEED_TABLES``: a directory of memory-mapped serving tables
  (``trustfeed.serving.write_mapped_tables``): every worker reads features from the same
  mapped files instead of building its own copy of the snapshot and history;
- ``TRUSTFEED_TARGET_GINI``: override the bundle balancer's target Gini (to see the
  controller work on a platform whose exposure is already more equal than the bundle's
  target; a reload goes back to the bundle's config).

Endpoints: ``POST /rank`` (a request, the response as JSON), ``POST /impressions`` (a list of
impression rows), ``POST /reload`` (``{"model": uri}`` or nothing: reload this worker),
``GET /health``. ``SIGHUP`` to the uvicorn master restarts every worker (each loads the model
again); see README.md.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustfeed.features.errors import ModelIntegrityError, RequestError, SchemaError
from trustfeed.ranker.balancer import ExposureBalancer
from trustfeed.serving import FeedRanker, RedisLedger

STATE: dict[str, Any] = {}


def _json(payload: Any, status: int = 200) -> Response:
    # allow_nan=False would turn a NaN into an error; the dict response has none (None instead)
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    model = os.environ["TRUSTFEED_MODEL"]
    redis_url = os.environ.get("TRUSTFEED_REDIS")
    sync_interval = float(os.environ.get("TRUSTFEED_SYNC_INTERVAL") or 1.0)
    ledger = RedisLedger(url=redis_url, sync_interval=sync_interval) if redis_url else None
    STATE["ranker"] = FeedRanker.load(
        model,
        predictor=os.environ.get("TRUSTFEED_PREDICTOR") or "auto",
        shared_ledger=ledger,
        tables=os.environ.get("TRUSTFEED_TABLES") or None,
    )
    target = os.environ.get("TRUSTFEED_TARGET_GINI")
    balancer = STATE["ranker"].pipeline.balancer
    if target and balancer is not None:
        retargeted = ExposureBalancer.from_state(replace(balancer.config, target_gini=float(target)),
                                                 balancer.state_dict())
        STATE["ranker"].pipeline.balancer = ledger.attach(retargeted) if ledger is not None else retargeted
    STATE["ledger"] = ledger
    gc.freeze()  # the model and snapshot live as long as the process: keep the collector off them
    yield
    if ledger is not None:
        ledger.close()


async def rank(request: Request) -> Response:
    try:
        body = await request.json()
    except ValueError as error:
        return _json({"error": f"request body is not JSON: {error}"}, 400)
    if not isinstance(body, dict):
        return _json({"error": "request body must be a JSON object"}, 400)
    try:
        # ranking is CPU work: a thread keeps the event loop answering meanwhile
        return _json(await run_in_threadpool(STATE["ranker"].rank, body))
    except RequestError as error:
        return _json({"request_id": body.get("request_id"), "error": str(error)}, 400)


async def impressions(request: Request) -> Response:
    try:
        rows = await request.json()
        if not isinstance(rows, list):
            raise ValueError("expected a JSON list of impression rows")
        await run_in_threadpool(STATE["ranker"].record_impressions, rows)
    except (ValueError, SchemaError) as error:
        return _json({"error": str(error)}, 400)
    return _json({"recorded": len(rows)})


async def reload(request: Request) -> Response:
    body = await request.body()
    target = json.loads(body).get("model") if body else None
    ranker: FeedRanker = STATE["ranker"]
    try:
        model_id = await run_in_threadpool(ranker.reload, target or ranker.model_uri or os.environ["TRUSTFEED_MODEL"])
    except (ModelIntegrityError, FileNotFoundError) as error:
        return _json({"error": str(error), "model": ranker.model_id}, 409)  # the old model keeps serving
    return _json({"model": model_id, "pid": os.getpid()})


async def health(request: Request) -> Response:
    ranker: FeedRanker = STATE["ranker"]
    ledger: RedisLedger | None = STATE["ledger"]
    balancer = ranker.pipeline.balancer
    gini = None if balancer is None else balancer.measured_gini
    return JSONResponse({
        "pid": os.getpid(),
        "model": ranker.model_id,
        "predictor": ranker.predictor,
        "ledger": "local" if ledger is None else ("redis" if ledger.connected else "redis unreachable: local"),
        "pending": 0 if ledger is None else ledger.pending,
        "gini": None if gini is None or gini != gini else gini,
    })


app = Starlette(
    routes=[
        Route("/rank", rank, methods=["POST"]),
        Route("/impressions", impressions, methods=["POST"]),
        Route("/reload", reload, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ],
    lifespan=lifespan,
)
