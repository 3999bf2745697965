"""Smoke test of examples/feed_service: 2 uvicorn workers with the Redis ledger, redis-server killed mid-run."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from trustfeed.ranker.bundle import save_bundle

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "feed_service"
MISSING = [name for name in ("uvicorn", "starlette", "redis") if importlib.util.find_spec(name) is None]
if shutil.which("redis-server") is None:
    MISSING.append("redis-server")
if MISSING and os.environ.get("CI"):
    pytest.fail(f"the feed service example needs {MISSING} (.ci/run installs them)", pytrace=False)
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {MISSING}")


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("trustfeed_example_feed_service_load", EXAMPLE / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feed_service_two_workers_survive_redis_dying(fx: Any, tmp_path: Path) -> None:
    load = _load_script()
    bundle = tmp_path / "bundle"
    save_bundle(fx.make_pipeline(fx.trained_parts()), bundle)
    requests = load.make_requests(str(bundle), 50, 8, seed=0, k=5)
    with load.redis_server() as (url, redis_process), load.feed_service(str(bundle), 2, url) as port:
        health = load._get(port, "/health")
        assert health["ledger"] in ("redis", "redis unreachable: local") and health["predictor"] == "lightgbm"
        result = load.drive(port, requests, 2.0, 2, midway=redis_process.kill)
        assert result["requests"] > 0 and result["failed"] == []
        response = result["responses"][0]
        sent = next(r for r in requests if r["request_id"] == response["request_id"])
        assert len(response["items"]) + len(response["filtered"]) == len(sent["candidates"])

        status, body = load.post(port, "/rank", {"request_id": "bad", "user_id": "u", "ts": "not a time",
                                                 "candidates": []})
        assert status == 400 and "ts" in body["error"]
        rows = [{"request_id": "r1", "creator_id": i["creator_id"], "merchant_id": i["merchant_id"], "position": p}
                for p, i in enumerate(response["items"][:3], start=1)]
        assert load.post(port, "/impressions", rows) == (200, {"recorded": len(rows)})
        status, body = load.post(port, "/reload", {})
        assert status == 200 and body["model"] == response["model"]
        status, body = load.post(port, "/reload", {"model": str(tmp_path / "nowhere")})
        assert status == 409 and body["model"] == response["model"]  # the old model keeps serving
