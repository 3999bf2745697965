"""Cost of the incremental trust update against a full rebuild, at growing history sizes.

For each size the data of ``bench_features.py`` (its generator and its Parquet cache) is used.
One subprocess builds the snapshot as of one hour before the end in full and indexes its
history (``LiveTrust.start``, timed: the baseline), writes it with its live state (timed, and
its size), and writes the last hour's changes (:func:`~trustfeed.features.changes_since`) as
a dataset directory. A second, fresh subprocess then runs what ``trustfeed features
--incremental`` runs: load the stored state (memory-mapped), apply the hour, write the new
snapshot and state (timed, with the time of each step, the peak RSS and the megabytes of state
files written rather than linked).

A third subprocess times :class:`~trustfeed.features.LiveTrust`: a full build kept in memory
(``start``, timed), then the last hour applied to it (``update``, timed, with the time of each
step, the buyers recomputed and their rows): the update whose cost follows the new events.
``--check`` also builds the full snapshot with the live state's weights and references and
reports the largest relative difference of any float column (one more full build). Each
update also reports the CPU seconds of each step (``live_steps_cpu_s``): on a shared machine
the wall times mostly measure the other jobs. The CLI update also reports the CPU seconds of
its main thread (``incremental_main_cpu_s``): the update runs parts in helper threads, and on
an idle machine its wall time is close to the main thread's work, not to the process's.

``--new-orders N`` holds the update's size fixed while the history grows: the new events are
those of the last stretch of time whose changes hold ``N`` order rows (new orders and orders
sent again because they shipped or arrived: the ``new_orders`` of an ordinary run), so every
size applies about the same number of new rows; the stretch is shorter the denser the history. With two
or more sizes the last line is the fitted growth exponent ``k`` of each cost in the history's
orders (cost ~ orders ** k; 0: flat, 1: linear).

Usage::

    python benchmarks/bench_incremental.py --orders 1000000 3000000 [--hours 1] [--check]
    python benchmarks/bench_incremental.py --orders 10000000 --only live --steps 0.3 1   # live updates alone, chained
    python benchmarks/bench_incremental.py --orders 1000000 3000000 10000000 --new-orders 13798   # fixed update size
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd


def _bench_features() -> Any:
    spec = importlib.util.spec_from_file_location("bench_features", Path(__file__).with_name("bench_features.py"))
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/bench_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Steps:
    """Progress that remembers when each step started."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.main_start = time.thread_time()
        self.marks: list[tuple[float, str]] = []
        self.cpu_marks: list[float] = []

    def __call__(self, step: str, done: int | None = None, total: int | None = None) -> None:
        self.marks.append((time.perf_counter() - self.start, step))
        self.cpu_marks.append(time.process_time() - self.cpu_start)

    def durations(self, end: float) -> dict[str, float]:
        times = [t for t, _ in self.marks] + [end]
        return {step.split(" ")[1] if step.startswith("trust:") else step: round(times[i + 1] - t, 2)
                for i, (t, step) in enumerate(self.marks)}

    def cpu_durations(self) -> dict[str, float]:
        """CPU seconds per step (the measure that holds on a loaded machine)."""
        times = [*self.cpu_marks, time.process_time() - self.cpu_start]
        return {step.split(" ")[1] if step.startswith("trust:") else step: round(times[i + 1] - times[i], 2)
                for i, (_, step) in enumerate(self.marks)}


def _usage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _prepare(data_dir: Path, work: Path, hours: float) -> dict[str, Any]:
    from trustfeed.features import LiveTrust, changes_since
    from trustfeed.features.events import TABLES, EventLog, write_events

    bench = _bench_features()
    end = bench.START + pd.Timedelta(days=bench.DAYS)
    t0 = end - pd.Timedelta(hours=hours)
    events = EventLog({name: pd.read_parquet(data_dir / f"{name}.parquet") for name in TABLES})
    cpu0, _ = _usage()
    started = time.perf_counter()
    live = LiveTrust.start(events, t0)
    full_seconds = time.perf_counter() - started
    cpu1, rss = _usage()
    started = time.perf_counter()
    live.save(work / "state", force=True)
    save_seconds = time.perf_counter() - started
    cpu2, _ = _usage()
    new = changes_since(events, t0, end)
    write_events(new, work / "new")
    state_bytes = sum(p.stat().st_size for p in (work / "state" / "state").rglob("*") if p.is_file())
    return {
        "orders": len(events["orders"]),
        "full_build_and_index_s": round(full_seconds, 2),
        "full_build_and_index_cpu_s": round(cpu1 - cpu0, 2),
        "full_peak_rss_mb": round(rss, 1),
        "write_state_s": round(save_seconds, 2),
        "write_state_cpu_s": round(cpu2 - cpu1, 2),
        "state_mb": round(state_bytes / 2**20, 1),
        "new_rows": sum(len(new[name]) for name in TABLES),
        "new_orders": len(new["orders"]),
    }


def _incremental(work: Path, hours: float) -> dict[str, Any]:
    from trustfeed.features._live import write_incremental

    bench = _bench_features()
    end = bench.START + pd.Timedelta(days=bench.DAYS)
    steps = _Steps()
    cpu0, _ = _usage()
    steps("load state")
    write_incremental(work / "state", work / "new", end, work / "out", force=True, progress=steps)
    steps("write output")  # the last step reported before the save is "trust: done"
    seconds = time.perf_counter() - steps.start
    cpu1, rss = _usage()
    main = time.thread_time() - steps.main_start
    written = sum(p.stat().st_size for p in (work / "out" / "state").rglob("*") if p.is_file() and p.stat().st_nlink == 1)
    return {
        "incremental_s": round(seconds, 2),
        "incremental_cpu_s": round(cpu1 - cpu0, 2),
        "incremental_main_cpu_s": round(main, 2),
        "incremental_peak_rss_mb": round(rss, 1),
        "steps_s": steps.durations(seconds),
        "steps_cpu_s": steps.cpu_durations(),
        "state_files_written_mb": round(written / 2**20, 1),
    }


def _max_difference(a: Any, b: Any) -> float:
    """Largest relative difference over the float columns of two snapshots (inf: shapes differ)."""
    import numpy as np

    worst = 0.0
    for x, y in ((a.merchants, b.merchants), (a.creators, b.creators), (a.extras["users"], b.extras["users"])):
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return float("inf")
        for column in x.columns:
            if pd.api.types.is_float_dtype(x[column]):
                u, v = x[column].to_numpy(float), y[column].to_numpy(float)
                if not np.array_equal(np.isnan(u), np.isnan(v)):
                    return float("inf")
                ok = ~np.isnan(u)
                scale = np.maximum(np.abs(u[ok]), np.abs(v[ok]))
                diff = np.abs(u[ok] - v[ok]) / np.where(scale > 1e-12, scale, 1.0)
                worst = max(worst, float(diff.max(initial=0.0)))
            elif not x[column].equals(y[column]):
                return float("inf")
    return worst


def _live(data_dir: Path, hours: float, check: bool, steps_h: list[float] | None = None) -> dict[str, Any]:
    from trustfeed.features import LiveTrust, changes_since
    from trustfeed.features.events import TABLES, EventLog
    from trustfeed.features.trust import build_snapshot

    bench = _bench_features()
    end = bench.START + pd.Timedelta(days=bench.DAYS)
    spans = steps_h or [hours]
    t0 = end - pd.Timedelta(hours=sum(spans))
    events = EventLog({name: pd.read_parquet(data_dir / f"{name}.parquet") for name in TABLES})
    n_orders = len(events["orders"])
    cuts = [t0 + pd.Timedelta(hours=sum(spans[: i + 1])) for i in range(len(spans))]
    news = [changes_since(events, a, b) for a, b in zip([t0, *cuts[:-1]], cuts)]
    cpu0, _ = _usage()
    started = time.perf_counter()
    live = LiveTrust.start(events, t0)
    start_seconds = time.perf_counter() - started
    cpu1, _ = _usage()
    if not check:
        del events  # the live state holds its own (encoded) copy of the history
        gc.collect()
    result: dict[str, Any] = {
        "orders": n_orders,
        "live_start_s": round(start_seconds, 2),
        "live_start_cpu_s": round(cpu1 - cpu0, 2),
        "updates": [],
    }
    for span, new, cut in zip(spans, news, cuts):
        steps = _Steps()
        cpu2, _ = _usage()
        snapshot = live.update(new, cut, progress=steps)
        seconds = time.perf_counter() - steps.start
        cpu3, rss = _usage()
        result["updates"].append({
            "hours": round(span, 4),
            "new_orders": len(new["orders"]),
            "new_rows": sum(len(new[name]) for name in TABLES),
            "live_update_s": round(seconds, 2),
            "live_update_cpu_s": round(cpu3 - cpu2, 2),
            "live_steps_s": steps.durations(seconds),
            "live_steps_cpu_s": steps.cpu_durations(),
            "buyers_recomputed": snapshot.manifest["incremental"]["buyers_recomputed"],
            "buyers": len(snapshot.extras["users"]),
        })  # fmt: skip
    result["live_peak_rss_mb"] = round(rss, 1)
    if check:
        full = build_snapshot(events, cuts[-1], live.config, index=live.index, references=live.references)
        result["max_relative_difference"] = _max_difference(snapshot, full)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--hours", type=float, default=1.0, help="new events: the last HOURS of the log")
    parser.add_argument(
        "--new-orders", type=int, help="new events: the last stretch whose changes hold N order rows (fixed update size)"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/trustfeed-bench"))
    parser.add_argument("--check", action="store_true", help="compare the live update with a full build (one more build)")
    parser.add_argument("--steps", type=float, nargs="+", help="live: chained updates of these many hours each (default: --hours)")
    parser.add_argument("--only", choices=["all", "live"], default="all", help="live: only the LiveTrust measurement")
    parser.add_argument("--_child", nargs=2, metavar=("STEP", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child is not None:
        step, data = args._child
        if step == "prepare":
            result = _prepare(Path(data), args._work, args.hours)
        elif step == "live":
            result = _live(Path(data), args.hours, args.check, args.steps)
        else:
            result = _incremental(args._work, args.hours)
        print(json.dumps(result))
        return 0
    bench = _bench_features()
    results: list[dict[str, Any]] = []
    for n in args.orders:
        target = args.data_dir / f"orders_{n}_imp1"
        if not (target / "orders.parquet").is_file():
            tables = bench.generate(n)
            target.mkdir(parents=True, exist_ok=True)
            for name, frame in tables.items():
                frame.to_parquet(target / f"{name}.parquet", index=False)
            del tables
        work = args.data_dir / f"incremental_{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        hours = args.hours if args.new_orders is None else _hours_of_last(target, args.new_orders)
        result: dict[str, Any] = {}
        for step in ("live",) if args.only == "live" else ("prepare", "incremental", "live"):
            extra = (["--check"] if args.check else []) + (["--steps", *map(str, args.steps)] if args.steps else [])
            child = subprocess.run(
                [sys.executable, __file__, "--hours", repr(hours), *extra, "--_work", str(work), "--_child", step, str(target)],
                capture_output=True, text=True, check=False,
            )
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return child.returncode
            result.update(json.loads(child.stdout.strip().splitlines()[-1]))
        result["hours"] = round(hours, 4)
        print(json.dumps(result), flush=True)
        results.append(result)
        shutil.rmtree(work, ignore_errors=True)
    if len(results) >= 2:
        print(json.dumps({"growth_exponent": growth_exponents(results)}))
    return 0


# The costs whose growth in the history's size is fitted (a live entry: its last update).
_COSTS = ("incremental_s", "incremental_cpu_s", "incremental_main_cpu_s", "live_update_s", "live_update_cpu_s")


def growth_exponents(results: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares slope of log(cost) on log(history orders), per cost measured at every size."""
    import numpy as np

    out: dict[str, float] = {}
    orders = np.log([float(r["orders"]) for r in results])
    for name in _COSTS:
        values = [r.get(name, r["updates"][-1].get(name) if r.get("updates") else None) for r in results]
        if all(v is not None and v > 0 for v in values):
            out[name] = round(float(np.polyfit(orders, np.log(np.asarray(values, dtype=float)), 1)[0]), 3)
    return out


def _hours_of_last(data_dir: Path, n: int) -> float:
    """Hours before the end of the log whose changes hold ``n`` order rows (new or re-sent).

    An order row is in the changes since ``t0`` when its creation or a time revealed later
    (shipped, delivered) falls in ``[t0, end)`` (:func:`~trustfeed.features.changes_since`):
    when the latest of its times before the end is at or after ``t0``.
    """
    from trustfeed.features._schema import TABLE_SPECS

    bench = _bench_features()
    end = bench.START + pd.Timedelta(days=bench.DAYS)
    spec = TABLE_SPECS["orders"]
    columns = [spec.event_time, *(revealed for _, revealed in spec.resolution)]
    frame = pd.read_parquet(data_dir / "orders.parquet", columns=columns)
    latest = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    for column in columns:
        times = pd.to_datetime(frame[column], utc=True).astype("datetime64[ns, UTC]")
        times = times.where(times < end)
        latest = latest.where(latest.notna() & ~(times > latest), times)
    ordered = latest.dropna().sort_values(ignore_index=True)
    if n <= 0 or n > len(ordered):
        raise SystemExit(f"--new-orders {n}: the data set has {len(ordered)} orders")
    return float((end - ordered.iloc[len(ordered) - n]).total_seconds() / 3600.0)


if __name__ == "__main__":
    sys.exit(main())
