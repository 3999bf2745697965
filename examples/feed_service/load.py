"""Bounded loopback load test of the feed service (see README.md).

For each worker count it starts ``uvicorn app:app --workers N`` on 127.0.0.1, sends requests
of ``--candidates`` candidates from ``--clients`` client threads for ``--seconds`` seconds, and
reports throughput, p50 and p99 latency and failed requests. Each worker keeps its own
exposure ledger; with ``--ledgers`` every worker count serves the same traffic once more with
the shared Redis ledger (a ``redis-server`` it starts itself). Every run reports the platform
Gini of creator exposure over the responses it received, computed as the metric defines it:
the top ``k`` of each response, exposure ``1 / log2(position + 1)``, over every creator sent
as a candidate. ``--kill-redis`` adds a shared run with the most workers that kills the
redis-server halfway through: the service must go on with no failed request.

Run from the repository root::

    python examples/feed_service/load.py --model DIR/bundle --workers 1 2 4 --ledgers --kill-redis
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 2.0) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def post(port: int, path: str, payload: Any, timeout: float = 30.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway redis-server on 127.0.0.1 (no persistence); yields its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close(), "redis-server")
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.kill()
        process.wait(timeout=10)


def _wait_for(probe: Any, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            probe()
            return
        except (OSError, ValueError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up within {seconds:.0f} s") from None
            time.sleep(0.1)


@contextmanager
def feed_service(model: str, workers: int, redis_url: str | None = None, predictor: str = "lightgbm",
                 compile_cache: str | None = None, target_gini: float | None = None,
                 sync_interval: float | None = None) -> Iterator[int]:
    """``uvicorn app:app --workers N`` on a free loopback port, as README.md starts it; yields the port."""
    port = free_port()
    env = dict(os.environ, TRUSTFEED_MODEL=model, TRUSTFEED_PREDICTOR=predictor)
    env.pop("TRUSTFEED_REDIS", None)
    if redis_url:
        env["TRUSTFEED_REDIS"] = redis_url
    if compile_cache:
        env["TRUSTFEED_COMPILE_CACHE"] = compile_cache
    if target_gini is not None:
        env["TRUSTFEED_TARGET_GINI"] = str(target_gini)
    if sync_interval is not None:
        env["TRUSTFEED_SYNC_INTERVAL"] = str(sync_interval)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(HERE), "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        env=env, start_new_session=True,
    )
    try:
        _wait_for(lambda: _get(port, "/health"), "the feed service")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def make_requests(model: str, n_candidates: int, count: int, seed: int, k: int) -> list[dict[str, Any]]:
    """Requests over the bundle's own merchants and creators (a few unknown ones, as in a live feed)."""
    snapshot = Path(model) / "snapshot"
    merchants = pd.read_parquet(snapshot / "merchants.parquet", columns=["merchant_id"])["merchant_id"].astype(str)
    creators = pd.read_parquet(snapshot / "creators.parquet", columns=["creator_id"])["creator_id"].astype(str)
    rng = np.random.default_rng(seed)
    ts = json.loads((snapshot / "manifest.json").read_text())["as_of"]
    out = []
    for r in range(count):
        m = rng.choice(merchants.to_numpy(), n_candidates)
        c = rng.choice(creators.to_numpy(), n_candidates)
        out.append({"request_id": f"load-{r}", "user_id": f"u{rng.integers(0, 1000)}", "ts": ts, "k": k,
                    "candidates": [{"stream_id": f"s{r}-{i}", "creator_id": ci, "merchant_id": mi}
                                   for i, (ci, mi) in enumerate(zip(c.tolist(), m.tolist(), strict=True))]})
    return out


def drive(port: int, requests: list[dict[str, Any]], seconds: float, clients: int,
          midway: Any = None) -> dict[str, Any]:
    """Send requests from ``clients`` threads for ``seconds``; ``midway()`` runs halfway through."""
    bodies = [json.dumps(r).encode() for r in requests]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[list[str]] = [[] for _ in range(clients)]
    responses: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        j = i
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("POST", "/rank", body=bodies[j % len(bodies)],
                             headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                payload = reply.read()
                latencies[i].append(time.perf_counter() - started)
                if reply.status != 200:
                    failures[i].append(f"HTTP {reply.status}: {payload[:200]!r}")
                else:
                    responses[i].append(json.loads(payload))
            except (OSError, http.client.HTTPException) as error:
                failures[i].append(f"{type(error).__name__}: {error}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            j += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    if midway is not None:
        time.sleep(seconds / 2)
        midway()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat = np.asarray([x for part in latencies for x in part]) * 1e3
    return {
        "requests": int(lat.size),
        "throughput": lat.size / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "failed": [f for part in failures for f in part],
        "responses": [r for part in responses for r in part],
    }


def platform_gini(responses: list[dict[str, Any]], requests: list[dict[str, Any]], k: int) -> float:
    """Gini of creator exposure over the served top k, every candidate creator counted."""
    from trustfeed.ranker.metrics import gini

    population = {c["creator_id"] for r in requests for c in r["candidates"]}
    exposure = dict.fromkeys(population, 0.0)
    for response in responses:
        for position, item in enumerate(response["items"][:k], start=1):
            exposure[item["creator_id"]] += 1.0 / np.log2(position + 1.0)
    return float(gini(np.fromiter(exposure.values(), np.float64, len(exposure))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory (its snapshot provides the ids)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--k", type=int, default=20, help="slots shown per response")
    parser.add_argument("--predictor", default="auto", choices=["auto", "lightgbm", "compiled"],
                        help="auto (default: compiled, LightGBM when lleaves is missing), compiled or lightgbm")
    parser.add_argument("--ledgers", action="store_true",
                        help="run every worker count with the shared Redis ledger too (platform Gini: shared "
                             "against per-worker ledgers)")
    parser.add_argument("--kill-redis", action="store_true",
                        help="one more shared run with the most workers, killing redis-server halfway through")
    parser.add_argument("--target-gini", type=float, help="override the balancer's target Gini in every worker")
    parser.add_argument("--sync-interval", type=float, help="seconds between two Redis syncs of a worker (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    requests = make_requests(args.model, args.candidates, 64, args.seed, args.k)
    cache = str(Path(args.model).resolve().parent / ".compiled") if args.predictor != "lightgbm" else None
    print(f"{args.candidates} candidates per request, {args.clients} client connections, {args.seconds:g} s per run, "
          f"{os.cpu_count()} CPUs; ms are client-side latencies")
    print(f"{'workers':>7} {'ledger':>24} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6} {'platform Gini':>13}")
    runs: list[tuple[int, str | None, bool]] = []
    for w in args.workers:
        runs += [(w, None, False)] + ([(w, "redis", False)] if args.ledgers else [])
    if args.kill_redis:
        runs.append((max(args.workers), "redis", True))
    for workers, ledger, kill in runs:
        with redis_server() if ledger else _nothing() as redis:
            url, process = redis if redis else (None, None)
            with feed_service(args.model, workers, url, args.predictor, cache, args.target_gini,
                              args.sync_interval) as port:
                drive(port, requests[:8], 2.0, args.clients)  # warm-up: every worker has served
                midway = process.kill if kill and process is not None else None
                result = drive(port, requests, args.seconds, args.clients, midway)
        label = "per-worker" if ledger is None else ("shared, redis killed" if kill else "shared (redis)")
        gini = platform_gini(result["responses"], requests, args.k)
        print(f"{workers:>7} {label:>24} {result['throughput']:>8.1f} {result['p50_ms']:>8.1f} "
              f"{result['p99_ms']:>8.1f} {len(result['failed']):>6} {gini:>13.3f}")
        for failure in result["failed"][:3]:
            print(f"        failed: {failure}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
