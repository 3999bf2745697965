"""Time and peak memory of ``build_snapshot`` at 1M / 3M / 10M orders.

The project simulator models a feed in detail (about eight impressions per order), which
is too slow and too large at ten million orders, so this benchmark has its own vectorised
generator. It keeps the simulator's proportions per order for the tables the trust builder
reads (reviews 25%, after-sales cases 10%, reports 2%, NPS 4%, one impression per order by
default), with one merchant per 200 orders, one user per 10 orders and one stream per 20.

Each size is generated once into ``--data-dir`` as Parquet, then built in a fresh
subprocess whose peak RSS (``ru_maxrss``, which includes the input tables held in memory),
wall and CPU time are reported, and per stage of the build (``stages``: encoding, fitting (the
index fit's earlier cuts, built first), evidence (at the cut, and the fit), scoring) its wall
and CPU seconds, the main thread's CPU seconds and the time it was blocked (neither running
nor queued for a core: waiting for the interpreter lock or a helper thread's result; Linux
only), the resident memory at its end and the highest resident memory sampled during it
(every 20 ms). On a shared machine the wall clock is mostly waiting for a core; the main
thread's CPU seconds are the build's critical path on an idle one (helper threads run beside it).

Usage::

    python benchmarks/bench_features.py --orders 1000000 3000000 10000000 [--backend dask]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 90


def _ids(prefix: str, values: np.ndarray) -> pd.Series:
    return pd.Series(np.char.add(prefix, values.astype("U12")), dtype=pd.StringDtype("pyarrow"))


def _times(rng: np.random.Generator, n: int, lo: float = 0.0, hi: float = DAYS) -> pd.Series:
    seconds = (rng.uniform(lo, hi, n) * 86_400).astype("int64")
    return pd.Series(START + pd.to_timedelta(seconds, unit="s"))


def generate(n_orders: int, seed: int = 0, impressions_per_order: float = 1.0) -> dict[str, pd.DataFrame]:
    """Synthetic contract tables with ``n_orders`` orders (vectorised, seconds per million)."""
    from trustfeed.features.events import table_dtypes

    rng = np.random.default_rng(seed)
    n_merchants = max(n_orders // 200, 10)
    n_users = max(n_orders // 10, 10)
    n_creators = 2 * n_merchants
    n_streams = max(n_orders // 20, 10)
    quality = rng.beta(8, 2, n_merchants)
    tables: dict[str, pd.DataFrame] = {}
    tables["merchants"] = pd.DataFrame(
        {
            "merchant_id": _ids("m", np.arange(n_merchants)),
            "registered_at": _times(rng, n_merchants, -200, 60),
            "entity_id": _ids("e", rng.integers(0, int(n_merchants * 0.95), n_merchants)),
            "category": _ids("c", rng.integers(0, 12, n_merchants)),
        }
    )
    creator_merchant = rng.integers(0, n_merchants, n_creators)
    tables["creators"] = pd.DataFrame(
        {
            "creator_id": _ids("k", np.arange(n_creators)),
            "registered_at": _times(rng, n_creators, -200, 0),
            "merchant_id": _ids("m", creator_merchant),
            "followers": rng.lognormal(7, 2, n_creators).round(),
        }
    )
    stream_creator = rng.integers(0, n_creators, n_streams)
    stream_start = _times(rng, n_streams)
    tables["livestreams"] = pd.DataFrame(
        {
            "stream_id": _ids("s", np.arange(n_streams)),
            "creator_id": _ids("k", stream_creator),
            "merchant_id": _ids("m", creator_merchant[stream_creator]),
            "started_at": stream_start,
            "ended_at": stream_start + pd.Timedelta(hours=2),
            "category": _ids("c", rng.integers(0, 12, n_streams)),
        }
    )
    order_stream = rng.integers(0, n_streams, n_orders)
    order_merchant = creator_merchant[stream_creator[order_stream]]
    created = _times(rng, n_orders)
    promised = created + pd.Timedelta(days=2)
    late = rng.random(n_orders) < 0.3 * (1 - quality[order_merchant])
    shipped = promised + pd.to_timedelta(np.where(late, 86_400, -43_200), unit="s")
    tables["orders"] = pd.DataFrame(
        {
            "order_id": _ids("o", np.arange(n_orders)),
            "user_id": _ids("u", rng.integers(0, n_users, n_orders)),
            "merchant_id": _ids("m", order_merchant),
            "created_at": created,
            "amount": rng.lognormal(4, 1, n_orders).round(2),
            "creator_id": _ids("k", stream_creator[order_stream]),
            "stream_id": _ids("s", order_stream),
            "status": pd.Categorical(np.where(rng.random(n_orders) < 0.05, "cancelled", "paid"), categories=["paid", "cancelled"]),
            "promised_ship_by": promised,
            "shipped_at": shipped,
            "delivered_at": shipped + pd.Timedelta(days=2),
            "presale": pd.array(rng.random(n_orders) < 0.05, dtype="boolean"),
        }
    )
    n_cases = n_orders // 10
    case_order = rng.integers(0, n_orders, n_cases)
    opened = pd.Series(created.iloc[case_order].to_numpy()) + pd.Timedelta(days=3)
    reasons = ["quality", "not_as_described", "counterfeit", "logistics", "no_reason", "other"]
    tables["after_sales"] = pd.DataFrame(
        {
            "case_id": _ids("a", np.arange(n_cases)),
            "order_id": _ids("o", case_order),
            "opened_at": opened,
            "type": pd.Categorical(rng.choice(["return", "refund_only", "refund_without_return", "exchange"], n_cases)),
            "reason": pd.Categorical(rng.choice(reasons, n_cases), categories=reasons),
            "resolved_at": opened + pd.Timedelta(days=2),
            "outcome": pd.Categorical(rng.choice(["buyer_favor", "merchant_favor", "withdrawn"], n_cases)),
            "platform_intervened": pd.array(rng.random(n_cases) < 0.1, dtype="boolean"),
        }
    )
    n_reviews = n_orders // 4
    review_order = rng.choice(n_orders, n_reviews, replace=False)
    review_q = quality[order_merchant[review_order]]
    rating = np.clip(np.round(1 + 4 * review_q + rng.normal(0, 0.8, n_reviews)), 1, 5).astype("int64")
    tables["reviews"] = pd.DataFrame(
        {
            "review_id": _ids("r", np.arange(n_reviews)),
            "order_id": _ids("o", review_order),
            "user_id": tables["orders"]["user_id"].to_numpy()[review_order],
            "created_at": pd.Series(created.iloc[review_order].to_numpy()) + pd.Timedelta(days=5),
            "rating": rating,
            "quality": pd.array(rating, dtype="Int64"),
            "service": pd.array(rating, dtype="Int64"),
            "logistics": pd.array(rating, dtype="Int64"),
        }
    )
    n_reports = n_orders // 50
    tables["reports"] = pd.DataFrame(
        {
            "report_id": _ids("p", np.arange(n_reports)),
            "reporter_id": _ids("u", rng.integers(0, n_users, n_reports)),
            "created_at": _times(rng, n_reports),
            "category": pd.Categorical(rng.choice(["false_advertising", "counterfeit", "inducement", "vulgar", "other"], n_reports)),
            "merchant_id": _ids("m", rng.integers(0, n_merchants, n_reports)),
            "creator_id": _ids("k", rng.integers(0, n_creators, n_reports)),
            "stream_id": _ids("s", rng.integers(0, n_streams, n_reports)),
            "verified": pd.array(rng.choice([True, False, None], n_reports), dtype="boolean"),
        }
    )
    n_violations = max(n_merchants // 5, 1)
    tables["violations"] = pd.DataFrame(
        {
            "violation_id": _ids("v", np.arange(n_violations)),
            "merchant_id": _ids("m", rng.integers(0, n_merchants, n_violations)),
            "created_at": _times(rng, n_violations),
            "severity": rng.integers(1, 4, n_violations),
            "creator_id": pd.Series([None] * n_violations, dtype=pd.StringDtype("pyarrow")),
            "type": _ids("t", rng.integers(0, 5, n_violations)),
            "penalty": pd.Categorical(rng.choice(["warning", "restriction", "suspension", "ban"], n_violations, p=[0.6, 0.2, 0.15, 0.05])),
        }
    )
    tables["guarantees"] = pd.DataFrame(
        {
            "merchant_id": _ids("m", np.arange(n_merchants)),
            "benefit": pd.Categorical(rng.choice(["refund_without_return", "return_freight", "fake_one_pay_ten", "seven_day_no_reason", "fast_refund"], n_merchants)),
            "enrolled_at": _times(rng, n_merchants, -100, 30),
            "left_at": pd.Series(pd.NaT, index=range(n_merchants), dtype="datetime64[ns, UTC]"),
        }
    )
    n_nps = n_orders // 25
    tables["nps"] = pd.DataFrame(
        {
            "response_id": _ids("n", np.arange(n_nps)),
            "user_id": _ids("u", rng.integers(0, n_users, n_nps)),
            "merchant_id": _ids("m", rng.integers(0, n_merchants, n_nps)),
            "created_at": _times(rng, n_nps),
            "score": rng.integers(0, 11, n_nps),
        }
    )
    n_follows = n_orders // 5
    tables["follows"] = pd.DataFrame(
        {
            "user_id": _ids("u", rng.integers(0, n_users, n_follows)),
            "creator_id": _ids("k", rng.integers(0, n_creators, n_follows)),
            "followed_at": _times(rng, n_follows, -30, DAYS) + pd.to_timedelta(np.arange(n_follows) % 1000, unit="ns"),
        }
    ).drop_duplicates(["user_id", "creator_id", "followed_at"])
    n_imp = int(n_orders * impressions_per_order)
    imp_stream = rng.integers(0, n_streams, n_imp)
    tables["impressions"] = pd.DataFrame(
        {
            "request_id": _ids("q", np.arange(n_imp)),
            "user_id": _ids("u", rng.integers(0, n_users, n_imp)),
            "ts": _times(rng, n_imp),
            "stream_id": _ids("s", imp_stream),
            "creator_id": _ids("k", stream_creator[imp_stream]),
            "merchant_id": _ids("m", creator_merchant[stream_creator[imp_stream]]),
            "position": rng.integers(1, 30, n_imp),
            "clicked": pd.array(rng.random(n_imp) < 0.1, dtype="boolean"),
            "watch_seconds": rng.exponential(20, n_imp),
            "purchased": pd.array(rng.random(n_imp) < 0.01, dtype="boolean"),
            "order_id": pd.Series([None] * n_imp, dtype=pd.StringDtype("pyarrow")),
        }
    )
    out = {}
    for name, frame in tables.items():
        dtypes = table_dtypes(name)
        out[name] = frame.astype({c: t for c, t in dtypes.items() if c in frame.columns and not isinstance(t, pd.CategoricalDtype)})
        for column, dtype in dtypes.items():
            if isinstance(dtype, pd.CategoricalDtype):
                out[name][column] = out[name][column].astype(dtype)
    return out


def _run_one(data_dir: Path, backend: str) -> dict[str, float]:
    """Load a generated dataset and build the snapshot; runs in its own process."""
    from trustfeed.features.events import TABLES, EventLog
    from trustfeed.features.trust import build_snapshot

    tables = {name: pd.read_parquet(data_dir / f"{name}.parquet") for name in TABLES}
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    events = EventLog(tables)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    cpu_start = time.process_time()
    thread_start = time.thread_time()
    queued_start = _queued_seconds()
    marks: list[tuple[str, float, float, float, float, float]] = []
    # Highest resident memory seen during each stage (sampled every 20 ms by a thread): the
    # memory at a stage's end hides which stage holds the build's peak.
    stage_peak: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            if stage_peak:
                stage_peak[-1] = max(stage_peak[-1], _current_rss_mb())

    def progress(message: str) -> None:
        rss = _current_rss_mb()
        if stage_peak:
            stage_peak[-1] = max(stage_peak[-1], rss)
        # the main thread's CPU too: its work is the build's critical path on an idle machine
        # (helper threads run beside it), and it is less sensitive to load than the wall clock
        marks.append(
            (
                message, time.perf_counter() - start, time.process_time() - cpu_start, rss,
                time.thread_time() - thread_start, _queued_seconds() - queued_start,
            )
        )  # fmt: skip
        stage_peak.append(rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    snapshot = build_snapshot(events, START + pd.Timedelta(days=DAYS), backend=backend, progress=progress)
    main_cpu = time.thread_time() - thread_start
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds as well as wall time: on a shared machine the wall clock includes waiting.
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    # Each stage runs from its progress message to the next: wall and CPU seconds, and the
    # resident memory when it ended.
    stages = {
        name.removeprefix("trust: ").split(" ")[0]: {
            "seconds": round(end_wall - wall, 2),
            "cpu_seconds": round(end_cpu - cpu_used, 2),
            "main_cpu_seconds": round(end_main - main_used, 2),
            # the main thread neither running nor waiting for a core: waiting for the
            # interpreter lock or for a helper thread's result (NaN off Linux)
            "main_blocked_seconds": round((end_wall - wall) - (end_main - main_used) - (end_queued - queued), 2),
            "rss_mb_at_end": round(rss_end, 1),
            "peak_rss_mb": round(peak, 1),
        }
        for (name, wall, cpu_used, _, main_used, queued), (_, end_wall, end_cpu, rss_end, end_main, end_queued), peak in zip(
            marks, marks[1:], stage_peak
        )
    }
    return {
        "orders": len(tables["orders"]),
        "merchants": len(snapshot.merchants),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "main_cpu_seconds": round(main_cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "input_rss_mb": round(rss_loaded, 1),
        "index_model": snapshot.manifest["index_model"]["source"],
        "stages": stages,
    }


def _queued_seconds() -> float:
    """Seconds this thread has waited for a core (Linux ``/proc``; NaN elsewhere).

    On a shared machine the wall clock of a stage is its thread's CPU time, plus time queued
    for a core (the load), plus time blocked (the interpreter lock, a helper's result).
    """
    try:
        with open("/proc/thread-self/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):  # not Linux
        return float("nan")


def _current_rss_mb() -> float:
    """Resident memory now (Linux ``/proc``; the peak alone hides which stage holds it)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # not Linux
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--backend", choices=("pandas", "dask"), default="pandas")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/trustfeed-bench"))
    parser.add_argument("--impressions-per-order", type=float, default=1.0)
    parser.add_argument("--_child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child is not None:
        print(json.dumps(_run_one(args._child, args.backend)))
        return 0
    for n in args.orders:
        target = args.data_dir / f"orders_{n}_imp{args.impressions_per_order:g}"
        if not (target / "orders.parquet").is_file():
            started = time.perf_counter()
            tables = generate(n, impressions_per_order=args.impressions_per_order)
            target.mkdir(parents=True, exist_ok=True)
            for name, frame in tables.items():
                frame.to_parquet(target / f"{name}.parquet", index=False)
            del tables
            print(f"generated {n:,} orders in {time.perf_counter() - started:.1f}s -> {target}", file=sys.stderr)
        child = subprocess.run(
            [sys.executable, __file__, "--backend", args.backend, "--_child", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return child.returncode
        print(child.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
