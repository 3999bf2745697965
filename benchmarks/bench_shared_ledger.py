"""Platform Gini of N workers with per-worker exposure ledgers against one shared Redis ledger.

The feed-service load test (examples/feed_service/load.py) serves a few hundred requests per
run, too few for the controllers to settle, and on a shared machine its runs differ by more
than the ledgers do. This benchmark takes the HTTP server and the clock out: N
:class:`~trustfeed.serving.FeedRanker` objects in one process stand for N workers and take
the same stream of 500-candidate requests in turn, thousands of them. With the shared ledger
each worker syncs with a real ``redis-server`` (started here on 127.0.0.1) every
``--sync-every`` of its own requests, which stands for the sync interval at a given request
rate. It reports the platform Gini of creator exposure over the served top ``k`` of every
response (as load.py computes it), over the whole stream, its first quarter (how fast the
controllers get there) and its second half, and each worker's own controller strength at the
end. The shared ledger runs twice: without the platform controller (each worker's controller
steps on its own requests only, the default) and with it (each worker's integral step scaled
by the inverse of its share of the platform's exposure).

Run::

    python benchmarks/bench_shared_ledger.py --model DIR/bundle --workers 4 --requests 4000 --target-gini 0.2
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _load_example() -> Any:
    """examples/feed_service/load.py: its request maker, redis-server and Gini of the responses."""
    spec = importlib.util.spec_from_file_location("feed_service_load", HERE.parent / "examples" / "feed_service" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _workers(model: str, n: int, target: float | None, predictor: str, cache: str | None,
             redis_url: str | None, prefix: str, platform_controller: bool = True) -> tuple[list[Any], list[Any]]:
    from trustfeed.ranker.balancer import ExposureBalancer
    from trustfeed.serving import FeedRanker, RedisLedger

    rankers, ledgers = [], []
    for _ in range(n):
        ledger = (RedisLedger(url=redis_url, prefix=prefix, start=False, platform_controller=platform_controller)
                  if redis_url else None)
        ranker = FeedRanker.load(model, predictor=predictor, compile_cache=cache, shared_ledger=ledger)
        balancer = ranker.pipeline.balancer
        if target is not None and balancer is not None:  # as the example service retargets
            retargeted = ExposureBalancer.from_state(replace(balancer.config, target_gini=target), balancer.state_dict())
            ranker.pipeline.balancer = ledger.attach(retargeted) if ledger is not None else retargeted
        rankers.append(ranker)
        ledgers.append(ledger)
    return rankers, ledgers


def serve(rankers: list[Any], ledgers: list[Any], requests: list[dict[str, Any]], total: int,
          sync_every: int) -> list[dict[str, Any]]:
    """``total`` requests, worker by worker in turn; a shared worker syncs every ``sync_every`` of its own."""
    responses = []
    for i in range(total):
        w = i % len(rankers)
        responses.append(rankers[w].rank(requests[i % len(requests)]))
        ledger = ledgers[w]
        if ledger is not None and (i // len(rankers)) % sync_every == sync_every - 1:
            ledger.sync()
    return responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundle directory")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--sync-every", type=int, default=10,
                        help="a shared worker syncs after this many of its own requests (10 = every second at "
                             "10 requests a second per worker)")
    parser.add_argument("--target-gini", type=float)
    parser.add_argument("--predictor", default="auto", choices=["auto", "lightgbm", "compiled"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load = _load_example()
    requests = load.make_requests(args.model, args.candidates, 256, args.seed, args.k)
    cache = str(Path(args.model).resolve().parent / ".compiled") if args.predictor != "lightgbm" else None
    half, quarter = args.requests // 2, args.requests // 4
    print(f"{args.requests} requests of {args.candidates} candidates, top {args.k} served, target Gini "
          f"{args.target_gini}, shared workers sync every {args.sync_every} of their requests")
    print(f"{'workers':>7} {'ledger':>22} {'Gini all':>9} {'1st quarter':>11} {'2nd half':>9} "
          f"{'strength per worker':>28} {'s':>6}")
    kinds = {"per-worker": (False, False), "shared, own steps": (True, False), "shared, platform": (True, True)}
    with load.redis_server() as (url, _):
        for n in args.workers:
            for ledger, (shared, platform) in kinds.items():
                if n == 1 and shared:
                    continue  # one worker: its ledger is the platform's
                started = time.perf_counter()
                rankers, ledgers = _workers(args.model, n, args.target_gini, args.predictor, cache,
                                            url if shared else None, f"bench:{n}:{time.time_ns()}", platform)
                responses = serve(rankers, ledgers, requests, args.requests, args.sync_every)
                strengths = " ".join(f"{r.pipeline.balancer.strength:.2f}" for r in rankers)
                print(f"{n:>7} {ledger:>22} {load.platform_gini(responses, requests, args.k):>9.3f} "
                      f"{load.platform_gini(responses[:quarter], requests, args.k):>11.3f} "
                      f"{load.platform_gini(responses[half:], requests, args.k):>9.3f} {strengths:>28} "
                      f"{time.perf_counter() - started:>6.0f}", flush=True)
                for ledger_ in ledgers:
                    if ledger_ is not None:
                        ledger_.close(flush=False)
    sys.stdout.flush()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
