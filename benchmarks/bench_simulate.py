"""Benchmark of the platform simulator: wall time and peak memory at a target order count.

Scales ``SimConfig.merchants`` (and with it users, creators and feed requests, which derive
from it) so that about ``--orders`` orders are generated, then times :func:`simulate`
(and :func:`write_dataset` with ``--write DIR``).

Usage::

    python benchmarks/bench_simulate.py --orders 10000000

Measured 2026-11-22 on the shared 2-core build machine (load average 8-11 from other jobs):
26,649 merchants, 60 days -> 9.6M orders, 39.9M impressions, 2.3M livestreams;
``simulate`` 140.6 s wall, 62 s CPU (29.7 s user + 32.3 s system), peak RSS 9.8 GB. The
simulator is single-threaded, so on an idle machine wall time is about the CPU time. The feed
log (40M candidate rows) takes about three quarters of it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from trustfeed.training.simulate import SimConfig, simulate, write_dataset

_PILOT_MERCHANTS = 400


def _peak_rss_gb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class _StageClock:
    """Progress callback printing wall and CPU time at each stage boundary.

    CPU time is reported beside wall time because the benchmark machine is shared: wall time
    alone says as much about the neighbours as about the simulator.
    """

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._cpu = sum(_cpu_seconds())

    def __call__(self, step: str, done: int | None = None, total: int | None = None) -> None:
        wall = time.perf_counter() - self._start
        cpu = sum(_cpu_seconds()) - self._cpu
        print(f"  [{wall:7.1f}s wall {cpu:7.1f}s cpu] {step}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000_000, help="target number of orders")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", metavar="DIR", help="also write the dataset (validated Parquet + truth)")
    args = parser.parse_args(argv)

    # Orders grow linearly with merchants at a fixed window: calibrate on a small pilot run.
    pilot = simulate(SimConfig(seed=args.seed, merchants=_PILOT_MERCHANTS, days=args.days))
    per_merchant = len(pilot.tables["orders"]) / _PILOT_MERCHANTS
    merchants = max(1, round(args.orders / per_merchant))
    config = SimConfig(seed=args.seed, merchants=merchants, days=args.days)
    print(f"config: merchants={merchants} days={args.days} users={config.n_users} "
          f"creators={config.n_creators} requests/day={config.n_requests_per_day}", flush=True)

    started = time.perf_counter()
    user0, sys0 = _cpu_seconds()
    platform = simulate(config, progress=_StageClock())
    elapsed = time.perf_counter() - started
    user1, sys1 = _cpu_seconds()
    rows = {name: len(frame) for name, frame in platform.tables.items()}
    print(
        f"simulate: {elapsed:.1f} s wall, {user1 - user0:.1f} s user + {sys1 - sys0:.1f} s system CPU, "
        f"peak RSS {_peak_rss_gb():.2f} GB",
        flush=True,
    )
    for name, count in rows.items():
        print(f"  {name:12s} {count:>12,}")
    if args.write:
        started = time.perf_counter()
        write_dataset(platform, Path(args.write))
        print(f"write_dataset: {time.perf_counter() - started:.1f} s, peak RSS {_peak_rss_gb():.2f} GB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
