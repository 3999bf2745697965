"""Memory-mapped serving tables at platform scale: load time, memory per worker, lookup cost.

Writes the serving tables (``trustfeed.serving.write_served_arrays``) of a synthetic platform
with 1M merchants, 5M creators and 20M buyers (each buyer with one follow, one past merchant
and one category affinity), column by column: the feature layout is the one a small simulated
platform gives, the values are random. Then it starts worker processes that each open the
tables (checksums verified) and rank-like lookups run in them, and reports:

- write time and size of the tables;
- per worker: time to open (with and without verifying the checksums), and memory from
  ``/proc/<pid>/smaps_rollup`` while two workers hold the tables: RSS, PSS (shared pages
  split between the processes that map them) and USS (pages only this process has), each
  against a worker that imports the same libraries but opens no tables;
- lookup cost of 500 ids: the mapped hash index against a pandas ``Index`` (the heap index
  an assembler built from Parquet uses) over the same 1M merchant ids, interleaved;
- features of a 500-candidate request (one user) from the mapped tables at full scale.

Run (about 3.5 GB of files, peak memory about 2 GB)::

    python benchmarks/bench_mapped_tables.py --out /tmp/mapped-bench
    python benchmarks/bench_mapped_tables.py --merchants 100000 --creators 500000 --buyers 2000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_NS_DAY = 86_400 * 10**9


def _ids(prefix: bytes, n: int) -> np.ndarray:
    """``prefix`` + a 15-digit number, as ``S16`` bytes built column-wise (no Python strings)."""
    digits = np.empty((n, 16), dtype=np.uint8)
    digits[:, 0] = prefix[0]
    value = np.arange(n, dtype=np.int64)
    for position in range(15, 0, -1):
        digits[:, position] = 48 + value % 10
        value //= 10
    return digits.view("S16").ravel()


def _schema_and_widths() -> tuple[dict[str, Any], int, int, int]:
    from trustfeed.features.context import FeatureAssembler, build_context_tables
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import build_snapshot
    from trustfeed.training.simulate import SimConfig, simulate

    platform = simulate(SimConfig(seed=3, merchants=40, days=12))
    events = validate_events(platform.tables)
    as_of = platform.config.end_time.floor("D")
    assembler = FeatureAssembler(build_snapshot(events, as_of), build_context_tables(events, as_of))
    arrays = assembler.served_arrays()
    categories = len(assembler.schema()["categories"]["merchant_category"])
    return assembler.schema(), arrays["merchant_table"].shape[1], arrays["creator_table"].shape[1], categories


def write_tables(out: Path, merchants: int, creators: int, buyers: int, seed: int) -> dict[str, float]:
    from trustfeed.features._id_index import HashedIds
    from trustfeed.serving._mapped_tables import write_served_arrays

    rng = np.random.default_rng(seed)
    schema, merchant_width, creator_width, categories = _schema_and_widths()
    started = time.perf_counter()
    indexes = {"merchant": HashedIds.from_encoded(_ids(b"m", merchants)),
               "creator": HashedIds.from_encoded(_ids(b"c", creators)),
               "user": HashedIds.from_encoded(_ids(b"u", buyers))}
    index_seconds = time.perf_counter() - started
    users = np.arange(buyers, dtype=np.int64)

    def pairs(width: int, values: np.ndarray, default: Any, part: str) -> np.ndarray:
        # one pair per buyer: keys ascending by buyer, then the sentinel; values end with the default row
        if part == "keys":
            return np.append(users * np.int64(max(width, 1)) + rng.integers(0, max(width, 1), buyers),
                             np.iinfo(np.int64).max)
        return np.concatenate([values, np.full((1, *values.shape[1:]), default, dtype=values.dtype)])

    never = np.iinfo(np.int64).max
    build = {
        "merchant_table": lambda: rng.random((merchants + 1, merchant_width)),
        "creator_table": lambda: rng.random((creators + 1, creator_width)),
        "status_trust": lambda: rng.random(merchants + 1),
        "status_banned_merchant": lambda: rng.random(merchants + 1) < 0.01,
        "status_banned_entity": lambda: np.zeros(merchants + 1, dtype=bool),
        "status_known": lambda: np.append(np.ones(merchants, dtype=bool), False),
        "status_guarantees": lambda: rng.integers(0, 3, merchants + 1).astype(np.float64),
        "category_code": lambda: rng.integers(-1, max(categories, 1), merchants + 1),
        "user_activity": lambda: rng.integers(0, 20, (buyers + 1, 2)).astype(np.float64),
        "follows_keys": lambda: pairs(creators, users, never, "keys"),
        "follows_values": lambda: pairs(creators, rng.integers(0, 400 * _NS_DAY, buyers) + 1_700_000_000 * 10**9,
                                        never, "values"),
        "user_merchant_keys": lambda: pairs(merchants, users, 0.0, "keys"),
        "user_merchant_values": lambda: pairs(merchants, rng.integers(0, 5, (buyers, 2)).astype(np.float64), 0.0, "values"),
        "user_category_keys": lambda: pairs(categories, users, 0.0, "keys"),
        "user_category_values": lambda: pairs(categories, rng.random(buyers), 0.0, "values"),
        "user_taste_keys": lambda: pairs(categories, users, 0.0, "keys"),
        "user_taste_values": lambda: pairs(categories, rng.random(buyers), 0.0, "values"),
    }
    arrays = _OnAccess(build)  # each array is built when the writer asks for it, then dropped
    started = time.perf_counter()
    write_served_arrays(out, schema, arrays, indexes)
    write_seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"index_seconds": index_seconds, "write_seconds": write_seconds, "gigabytes": size / 1e9}


class _OnAccess(Mapping[str, np.ndarray]):
    """A mapping that builds each value when it is read (so only one array lives at a time)."""

    def __init__(self, builders: dict[str, Any]) -> None:
        self._builders = builders

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self._builders[name]())

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def _memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) in MB from smaps_rollup."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = float(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"],
            "anon": fields["Anonymous"]}


def worker(path: str | None, verify: bool, requests: int, seed: int, model: str | None = None) -> None:
    """One worker: open the tables, rank-like feature lookups, report, then wait for stdin.

    With ``model``: ``FeedRanker.load(model, tables=path)`` (without ``path``: the model on its
    own bundle tables, the baseline) and whole 500-candidate requests over ids of the tables.
    """
    import pyarrow  # noqa: F401  (the same libraries in the baseline worker)

    from trustfeed.serving import FeedRanker, open_mapped_tables

    report: dict[str, Any] = {"pid": os.getpid()}
    if model is not None:
        # what loading imports lazily is process start-up, not loading: imported first
        import lightgbm  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        import trustfeed.ranker.bundle  # noqa: F401
        from trustfeed.serving._compiled import compiled_available

        compiled_available()  # imports lleaves when installed (FeedRanker.load compiles by default)

        started = time.perf_counter()
        ranker = FeedRanker.load(model, tables=path) if path is not None else FeedRanker.load(model)
        report["open_seconds"] = time.perf_counter() - started
        report["predictor"] = ranker.predictor
        if path is not None and requests:
            gc.freeze()
            times = [_timed_rank(ranker, request) for request in _requests_over(Path(path), requests, seed)]
            report["rank_ms_p50"] = float(np.median(times) * 1e3)
            report["rank_ms_p99"] = float(np.percentile(times, 99) * 1e3)
    elif path is not None:
        started = time.perf_counter()
        mapped = open_mapped_tables(path, verify=verify)
        report["open_seconds"] = time.perf_counter() - started
        counts = mapped.manifest["ids"]
        rng = np.random.default_rng(seed)
        ts = pd.Timestamp("2026-03-01 20:00", tz="UTC")
        times = []
        for _ in range(requests):
            m = rng.integers(0, counts["merchant"], 500)
            c = rng.integers(0, counts["creator"], 500)
            candidates = {
                "user_id": f"u{rng.integers(0, counts['user']):015d}", "ts": ts,
                "merchant_id": np.array([f"m{i:015d}" for i in m.tolist()], dtype=object),
                "creator_id": np.array([f"c{i:015d}" for i in c.tolist()], dtype=object),
            }
            started = time.perf_counter()
            mapped.assembler.transform_with_status(candidates)
            times.append(time.perf_counter() - started)
        if times:
            report["features_ms_p50"] = float(np.median(times) * 1e3)
            report["features_ms_p99"] = float(np.percentile(times, 99) * 1e3)
    gc.collect()
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # hold the mapping until the parent has measured


def _timed_rank(ranker: Any, request: dict[str, Any]) -> float:
    started = time.perf_counter()
    ranker.rank(request)
    return time.perf_counter() - started


def _requests_over(path: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """500-candidate requests over ids the tables hold (a few unknown ones, as in a live feed)."""
    import pyarrow as pa

    def some(vocabulary: str, n: int) -> list[str]:
        with pa.memory_map(str(path / f"{vocabulary}_ids.arrow"), "r") as source:
            ids = pa.ipc.open_file(source).get_batch(0).column(0)
            picked = ids.take(pa.array(rng.integers(0, len(ids), n)))
            return [value.rstrip(b"\0").decode() for value in picked.to_pylist()]

    rng = np.random.default_rng(seed)
    as_of = "2026-01-03T12:00:00+00:00"  # any time: the lookups do not depend on it
    out = []
    for r in range(count):
        merchants = some("merchant", 500)
        merchants[::20] = [f"m-new-{r}-{i}" for i in range(25)]
        out.append({"request_id": f"bench-{r}", "user_id": some("user", 1)[0], "ts": as_of, "k": 20,
                    "candidates": [{"stream_id": f"s{r}-{i}", "creator_id": c, "merchant_id": m}
                                   for i, (c, m) in enumerate(zip(some("creator", 500), merchants, strict=True))]})
    return out


def _start(path: Path | None, verify: bool, requests: int, seed: int,
           model: str | None = None) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [sys.executable, __file__, "--worker", str(path) if path else "-", "--requests", str(requests),
               "--seed", str(seed)] + ([] if verify else ["--no-verify"]) + (["--model", model] if model else [])
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise SystemExit("worker failed")
    return process, json.loads(line)


def _stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("\n")
    process.stdin.flush()
    process.wait(timeout=60)


def lookup_cost(n: int, iterations: int, seed: int) -> dict[str, float]:
    """500-id lookups, mapped hash index against a pandas Index over the same ids (interleaved)."""
    from trustfeed.features._id_index import HashedIds
    from trustfeed.features.context import _lookup_ids

    encoded = _ids(b"m", n)
    hashed = HashedIds.from_encoded(encoded)
    heap = pd.Index(np.array([v.decode() for v in encoded.tolist()], dtype=object), dtype=object)
    rng = np.random.default_rng(seed)
    hashed_ns, heap_ns = [], []
    for _ in range(iterations):
        # fresh strings per request, as a decoded request brings (their hashes are not cached)
        ids = [f"m{i:015d}" for i in rng.integers(0, int(n * 1.05), 500).tolist()]
        a = np.array(ids, dtype=object)
        started = time.perf_counter_ns()
        hashed.lookup(ids)
        hashed_ns.append(time.perf_counter_ns() - started)
        b = np.array([f"m{i:015d}" for i in rng.integers(0, int(n * 1.05), 500).tolist()], dtype=object)
        started = time.perf_counter_ns()
        _lookup_ids(heap, b)
        heap_ns.append(time.perf_counter_ns() - started)
        del a
    return {"mapped_us_p50": float(np.median(hashed_ns) / 1e3), "pandas_us_p50": float(np.median(heap_ns) / 1e3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/trustfeed-mapped-bench")
    parser.add_argument("--merchants", type=int, default=1_000_000)
    parser.add_argument("--creators", type=int, default=5_000_000)
    parser.add_argument("--buyers", type=int, default=20_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep the written tables")
    parser.add_argument("--reuse", action="store_true", help="time the tables already in --out (written with --keep)")
    parser.add_argument("--model", help="with --reuse: time FeedRanker.load(MODEL, tables=OUT) and whole requests "
                                        "(tables written by trustfeed features --serving-tables)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(None if args.worker == "-" else args.worker, not args.no_verify, args.requests, args.seed, args.model)
        return

    out = Path(args.out)
    if args.reuse and (out / "MANIFEST.json").is_file():
        print(f"reusing the tables in {out}")
    else:
        if out.exists():
            shutil.rmtree(out)
        print(f"writing {args.merchants:,} merchants, {args.creators:,} creators, {args.buyers:,} buyers to {out}")
        written = write_tables(out, args.merchants, args.creators, args.buyers, args.seed)
        gc.collect()
        print(f"  id indexes built in {written['index_seconds']:.1f} s, written in {written['write_seconds']:.1f} s, "
              f"{written['gigabytes']:.2f} GB")
    try:
        base, base_report = _start(None, True, 0, args.seed, args.model)
        first, first_report = _start(out, True, args.requests, args.seed, args.model)
        second, second_report = _start(out, True, args.requests, args.seed + 1, args.model)
        memory = {"baseline": _memory(base_report["pid"]), "worker 1": _memory(first_report["pid"]),
                  "worker 2": _memory(second_report["pid"])}
        for process in (base, first, second):
            _stop(process)
        unverified, unverified_report = _start(out, False, 0, args.seed)
        _stop(unverified)
        what = f"FeedRanker.load({args.model}, tables=...)" if args.model else "open"
        print(f"{what} with checksums verified: worker 1 {first_report['open_seconds']:.2f} s, "
              + (f"predictor {first_report['predictor']}, " if "predictor" in first_report else "") +
              f"worker 2 {second_report['open_seconds']:.2f} s; open without: {unverified_report['open_seconds']:.2f} s")
        if args.model:
            print(f"  (baseline worker: FeedRanker.load({args.model}) on its bundle's own tables, "
                  f"{base_report['open_seconds']:.2f} s)")
        print("memory while two workers hold the tables (MB; 'added' = minus a worker with no tables):")
        for name in ("baseline", "worker 1", "worker 2"):
            m = memory[name]
            added = "" if name == "baseline" else (
                f"   added: RSS {m['rss'] - memory['baseline']['rss']:.0f}, PSS {m['pss'] - memory['baseline']['pss']:.0f}, "
                f"USS {m['uss'] - memory['baseline']['uss']:.0f}, anonymous {m['anon'] - memory['baseline']['anon']:.0f}")
            print(f"  {name:<9} RSS {m['rss']:7.0f}  PSS {m['pss']:7.0f}  USS {m['uss']:7.0f}  anonymous {m['anon']:6.0f}{added}")
        print("  (file pages of the tables are page cache, one copy per host; USS counts a mapped page as private\n"
              "   while only one process maps it; 'anonymous' is the worker's own heap)")
        for name, report in (("worker 1", first_report), ("worker 2", second_report)):
            if "rank_ms_p50" in report:
                print(f"  {name}: FeedRanker.rank of a 500-candidate request p50 {report['rank_ms_p50']:.3f} ms, "
                      f"p99 {report['rank_ms_p99']:.3f} ms")
            elif "features_ms_p50" in report:
                print(f"  {name}: features of a 500-candidate request p50 {report['features_ms_p50']:.3f} ms, "
                      f"p99 {report['features_ms_p99']:.3f} ms")
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(out, ignore_errors=True)
    cost = lookup_cost(args.merchants, 2000, args.seed)
    print(f"500-id lookup over {args.merchants:,} merchant ids, p50: mapped hash index {cost['mapped_us_p50']:.1f} us, "
          f"pandas Index {cost['pandas_us_p50']:.1f} us (ratio {cost['mapped_us_p50'] / cost['pandas_us_p50']:.2f})")


if __name__ == "__main__":
    main()
