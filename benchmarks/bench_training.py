"""Cost curve of features + training over data sizes: wall time and peak memory per stage.

For each size a platform is simulated (``--merchants``, 60 days: the merchant count sets the
size) or read from disk (``--events DIR ...``, e.g. written by ``trustfeed simulate``), and
the stages run in a fresh process per size and backend, one after the other:

``--backend pandas`` (the in-process job's heavy stages)

* ``load``: read and validate the event log;
* ``frame``: the point-in-time training frame (trust snapshots, context, features, labels);
* ``lambdamart``: the trust-aware LambdaMART (early stopping on the validation window);
* ``plain``: the plain LambdaMART without trust features;
* ``purchase``: the purchase model (its click stage on at most ``max_click_rows`` rows).

``--backend dask`` (``fit_on_dask`` on a local cluster of two one-thread worker processes,
each limited to ``--worker-memory``)

* ``load``: as above, on the driver (its snapshots need the whole log);
* ``snapshots``: the driver builds the trust snapshots and context tables and hands each to
  a worker, while the workers read their row groups of ``impressions.parquet`` and shuffle
  them into partitions of whole requests by snapshot period;
* ``frame``: each partition joined with its period's snapshot and labelled on a worker, and
  gathered what the driver needs (validation requests, clicked rows and the click stage's
  sample);
* ``lambdamart`` + ``purchase``: LightGBM's distributed ranker on the workers while the
  driver fits the purchase model (one stage: they overlap);
* ``plain``: the distributed plain ranker.

Peak memory is the highest resident set size of the benchmark process and all its child
processes (the Dask workers) while the stage ran, sampled every 50 ms, so it includes what
earlier stages keep alive, as in the real job; with Dask also the driver's own peak and the
workers' (their sum, with the scheduler's small share in it). The growth exponent ``b`` of each stage is
the least-squares slope of ``log(seconds)`` on ``log(impressions)``: ``b = 1`` is linear.

Run::

    python benchmarks/bench_training.py --merchants 70 680                    # ~0.1M and ~1M impressions
    python benchmarks/bench_training.py --merchants 70 680 --backend pandas dask
    trustfeed simulate --out /tmp/d10m --merchants 6800 --days 60              # ~10M impressions
    flock /tmp/trustfeed-bigmem.lock python benchmarks/bench_training.py --events /tmp/d10m --backend dask

Times on a shared machine are noisy: the script prints the load average next to each size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DAYS = 60
STAGES = {
    "pandas": ("load", "frame", "lambdamart", "plain", "purchase"),
    "dask": ("load", "snapshots", "frame", "lambdamart+purchase", "plain"),
}
# Dask progress message prefix -> the stage it starts
_DASK_MARKS = (
    ("Dask: reading and shuffling", "snapshots"),
    ("Dask: joining", "frame"),
    ("Dask: training LambdaMART", "lambdamart+purchase"),
    ("Dask: training the plain", "plain"),
)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss_bytes(root: int) -> int:
    """Resident bytes of process ``root`` and all its descendants (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(children.get(pid, []))
    return total


def _own_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


class _PeakMemory:
    """The highest RSS of this process tree since the last :meth:`take` (and of this process
    alone, and of its descendants together: ``driver`` and ``workers``)."""

    def __init__(self) -> None:
        self.peak = _tree_rss_bytes(os.getpid())
        self.driver = self.workers = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            now, own = _tree_rss_bytes(os.getpid()), _own_rss_bytes()
            with self._lock:
                self.peak = max(self.peak, now)
                self.driver = max(self.driver, own)
                self.workers = max(self.workers, now - own)

    def take(self) -> float:
        """Peak MB since the previous call; the next window starts at the current RSS."""
        return self.take_split()["peak_mb"]

    def take_split(self) -> dict[str, float]:
        """Peak MB of the tree, the driver and the workers since the previous call."""
        now, own = _tree_rss_bytes(os.getpid()), _own_rss_bytes()
        with self._lock:
            peaks = {"peak_mb": max(self.peak, now), "driver_mb": max(self.driver, own),
                     "workers_mb": max(self.workers, now - own)}
            self.peak, self.driver, self.workers = now, own, now - own
        return {name: value / 2**20 for name, value in peaks.items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _report(stage: str, figures: dict[str, float]) -> None:
    """A finished stage on stderr at once (the parent passes it through), so a long run that is
    stopped still tells what it measured."""
    split = (f" (driver {figures['driver_mb']:.0f}, workers {figures['workers_mb']:.0f})"
             if "workers_mb" in figures else "")
    print(f"stage {stage}: {figures['seconds']:.1f} s, peak {figures['peak_mb']:.0f} MB{split} "
          f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)


def _pandas_stages(events_dir: Path, out: dict[str, Any], memory: _PeakMemory) -> None:
    from trustfeed.features.events import load_events
    from trustfeed.ranker.lambdamart import LambdaMART
    from trustfeed.training.dataset import build_training_frame, time_split
    from trustfeed.training.train import TrainJobConfig, _windows, fit_purchase_model, plain_feature_schema

    config = TrainJobConfig(events=events_dir)

    def stage(name: str, action: Any) -> Any:
        memory.take()
        start = time.perf_counter()
        result = action()
        out[name] = {"seconds": time.perf_counter() - start, "peak_mb": memory.take()}
        _report(name, out[name])
        return result

    events = stage("load", lambda: load_events(events_dir))
    windows = _windows(events, None, config.validation_fraction, config.evaluation.holdout_fraction)
    frame = stage("frame", lambda: build_training_frame(events, end=windows.holdout_start, config=config.dataset))
    fit, valid = time_split(frame, valid_from=windows.valid_start)
    out["impressions"] = len(events["impressions"])
    out["frame_rows"] = len(frame)

    def fit_model(schema: dict[str, Any]) -> Any:
        columns = [frame.feature_names.index(n) for n in schema["feature_names"]]
        return LambdaMART(config.model).fit(
            fit.features()[:, columns], fit.labels, fit.groups(), position=fit.positions,
            X_valid=valid.features()[:, columns], y_valid=valid.labels, group_valid=valid.groups(),
            feature_names=schema["feature_names"], categorical=schema["categorical"], monotone=schema["monotone"],
            feature_schema=schema,
        )

    model = stage("lambdamart", lambda: fit_model(frame.schema))
    stage("plain", lambda: fit_model(plain_feature_schema(frame.schema)))
    assert config.purchase_model is not None
    purchase, _ = stage("purchase", lambda: fit_purchase_model(config.purchase_model, fit, valid, events["impressions"]))
    out["best_iteration"] = model.best_iteration_
    out["purchase_model"] = purchase is not None


def _dask_stages(events_dir: Path, out: dict[str, Any], memory: _PeakMemory, worker_memory: str) -> None:
    import logging

    from distributed import LocalCluster

    from trustfeed.features.events import load_events
    from trustfeed.training._dask_training import fit_on_dask
    from trustfeed.training.train import _MIN_PURCHASES, TrainJobConfig, _windows, plain_feature_schema

    config = TrainJobConfig(events=events_dir, backend="dask")
    memory.take()
    start = time.perf_counter()
    events = load_events(events_dir)
    out["load"] = {"seconds": time.perf_counter() - start, **memory.take_split()}
    _report("load", out["load"])
    out["impressions"] = len(events["impressions"])
    windows = _windows(events, None, config.validation_fraction, config.evaluation.holdout_fraction)
    current: list[Any] = [None, 0.0]  # stage, its start
    lambdamart_start = [0.0]

    def close_stage(now: float) -> None:
        if current[0] is not None:
            out[current[0]] = {"seconds": now - current[1], **memory.take_split()}
            _report(current[0], out[current[0]])

    def progress(message: str, *_: Any) -> None:
        for prefix, name in _DASK_MARKS:
            if message.startswith(prefix) and current[0] != name:
                now = time.perf_counter()
                close_stage(now)
                current[0], current[1] = name, now
        if message.startswith("Dask: training LambdaMART"):
            lambdamart_start[0] = time.perf_counter()
        if message.startswith("purchase model:"):
            out["purchase_end"] = time.perf_counter()

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=worker_memory, silence_logs=logging.ERROR)
    try:
        on_dask = fit_on_dask(
            events, end=windows.holdout_start, valid_from=windows.valid_start, config=config.dataset,
            model_config=config.model, plain_config=config.plain_model or config.model,
            plain_schema_of=plain_feature_schema, scheduler=cluster.scheduler_address, progress=progress,
            purchase_config=config.purchase_model, min_purchases=_MIN_PURCHASES, events_dir=events_dir,
        )
        close_stage(time.perf_counter())
    finally:
        cluster.close()
    if "purchase_end" in out and "lambdamart+purchase" in out:  # its share of the overlapped stage
        out["purchase_seconds"] = out.pop("purchase_end") - lambdamart_start[0]
    out["frame_rows"] = on_dask.train_rows + len(on_dask.valid_part)
    out["best_iteration"] = on_dask.model.best_iteration_
    out["purchase_model"] = on_dask.purchase_model is not None


def run_stages(events_dir: Path, backend: str, worker_memory: str) -> dict[str, Any]:
    """One size and backend, in this process: seconds and peak RSS (MB) of each stage."""
    out: dict[str, Any] = {}
    memory = _PeakMemory()
    try:
        if backend == "dask":
            _dask_stages(events_dir, out, memory, worker_memory)
        else:
            _pandas_stages(events_dir, out, memory)
    finally:
        memory.close()
    return out


def _exponent(sizes: list[float], values: list[float]) -> float:
    import numpy as np

    if len(sizes) < 2 or len(set(sizes)) < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(slope)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, nargs="*", default=None, help="one simulated size per merchant count")
    parser.add_argument("--events", type=Path, nargs="*", default=[], help="event logs on disk, one size each")
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", nargs="+", choices=sorted(STAGES), default=["pandas"])
    parser.add_argument("--worker-memory", default="4GB", help="memory limit of each Dask worker")
    parser.add_argument("--stages-of", metavar="DIR", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--stages-backend", default="pandas", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stages_of:
        print(json.dumps(run_stages(Path(args.stages_of), args.stages_backend, args.worker_memory)))
        return 0
    merchants = args.merchants if args.merchants is not None else ([] if args.events else [70, 680])

    from trustfeed.training.simulate import SimConfig, simulate, write_dataset

    rows: dict[str, list[dict[str, Any]]] = {backend: [] for backend in args.backend}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as root:
        sizes: list[tuple[str, Path, bool]] = [(str(d), d, False) for d in args.events]
        sizes += [(f"{m} merchants", Path(root) / f"m{m}", True) for m in merchants]
        for label, events_dir, simulated in sizes:
            if simulated:
                write_dataset(simulate(SimConfig(seed=args.seed, merchants=int(label.split()[0]), days=args.days)),
                              events_dir)
            for backend in args.backend:
                load = os.getloadavg()[0]
                done = subprocess.run([sys.executable, __file__, "--stages-of", str(events_dir), "--stages-backend",
                                       backend, "--worker-memory", args.worker_memory],
                                      stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    print(f"{label} {backend}: failed with exit code {done.returncode} (its error is above)", flush=True)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["load_average"] = load
                result["total"] = {"seconds": sum(result[s]["seconds"] for s in STAGES[backend] if s in result),
                                   **{key: max(result[s][key] for s in STAGES[backend] if s in result)
                                      for key in ("peak_mb", "driver_mb", "workers_mb")
                                      if all(key in result[s] for s in STAGES[backend] if s in result)}}
                rows[backend].append(result)
                print(f"{backend:6s} {label}  {result['impressions']:>11,} impressions  load {load:4.1f}  "
                      + "  ".join(f"{s} {result[s]['seconds']:7.1f} s {result[s]['peak_mb']:6.0f} MB"
                                  + (f" (driver {result[s]['driver_mb']:.0f}, workers {result[s]['workers_mb']:.0f})"
                                     if "workers_mb" in result[s] else "")
                                  for s in (*STAGES[backend], "total") if s in result)
                      + (f"  (purchase model {result['purchase_seconds']:.1f} s of it)" if "purchase_seconds" in result else ""),
                      flush=True)
            if simulated:
                shutil.rmtree(events_dir)
    for backend, done_rows in rows.items():
        stages = [s for s in (*STAGES[backend], "total") if all(s in r for r in done_rows)]
        sizes_n = [float(r["impressions"]) for r in done_rows]
        print(f"{backend}: growth exponent b (seconds ~ impressions^b): "
              + "  ".join(f"{s} {_exponent(sizes_n, [r[s]['seconds'] for r in done_rows]):.2f}" for s in stages))
        print(f"{backend}: memory growth exponent: "
              + "  ".join(f"{s} {_exponent(sizes_n, [r[s]['peak_mb'] for r in done_rows]):.2f}" for s in stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
