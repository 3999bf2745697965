"""Cost curve of the training job's heavy stages over data sizes: wall time and peak memory.

For each size a platform is simulated (60 days, the merchant count sets the size) and the
stages run in a fresh process, one after the other:

* ``load``: read and validate the event log;
* ``frame``: the point-in-time training frame (trust snapshots, context, features, labels);
* ``lambdamart``: the trust-aware LambdaMART (early stopping on the validation window);
* ``plain``: the plain LambdaMART without trust features.

Peak memory is the highest resident set size of the process while the stage ran (sampled
every 20 ms), so it includes what earlier stages left alive, as in the real job. The growth
exponent ``b`` of each stage is the least-squares slope of ``log(seconds)`` on
``log(impressions)``: ``b = 1`` is linear.

Run::

    python benchmarks/bench_training.py --merchants 70 680            # ~0.1M and ~1M impressions
    python benchmarks/bench_training.py --merchants 70 680 6800       # adds ~10M (well over 8 GB)

Times on a shared machine are noisy: the script prints the load average next to each size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DAYS = 60
STAGES = ("load", "frame", "lambdamart", "plain")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakMemory:
    """The highest RSS seen while the ``with`` block ran."""

    def __enter__(self) -> _PeakMemory:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def run_stages(events_dir: Path) -> dict[str, Any]:
    """One size, in this process: seconds and peak RSS (MB) of each stage."""
    from trustfeed.features.events import load_events
    from trustfeed.ranker.lambdamart import LambdaMART
    from trustfeed.training.dataset import time_split
    from trustfeed.training.train import TrainJobConfig, _windows, plain_feature_schema
    from trustfeed.training.dataset import build_training_frame

    config = TrainJobConfig(events=events_dir)
    out: dict[str, Any] = {}

    def stage(name: str, action: Any) -> Any:
        start = time.perf_counter()
        with _PeakMemory() as memory:
            result = action()
        out[name] = {"seconds": time.perf_counter() - start, "peak_mb": memory.peak / 2**20}
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
    out["best_iteration"] = model.best_iteration_
    return out


def _exponent(sizes: list[float], seconds: list[float]) -> float:
    import numpy as np

    if len(sizes) < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(slope)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, nargs="+", default=[70, 680], help="one size per merchant count")
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages-of", metavar="DIR", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.stages_of:
        print(json.dumps(run_stages(Path(args.stages_of))))
        return 0

    from trustfeed.training.simulate import SimConfig, simulate, write_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as root:
        for merchants in args.merchants:
            events_dir = Path(root) / f"m{merchants}"
            write_dataset(simulate(SimConfig(seed=args.seed, merchants=merchants, days=args.days)), events_dir)
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, __file__, "--stages-of", str(events_dir)], capture_output=True,
                                  text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["merchants"], result["load_average"] = merchants, load
            rows.append(result)
            print(f"{merchants:>6} merchants  {result['impressions']:>11,} impressions  load {load:4.1f}  "
                  + "  ".join(f"{s} {result[s]['seconds']:7.1f} s {result[s]['peak_mb']:6.0f} MB" for s in STAGES),
                  flush=True)
            import shutil

            shutil.rmtree(events_dir)
    sizes = [float(r["impressions"]) for r in rows]
    print("growth exponent b (seconds ~ impressions^b): "
          + "  ".join(f"{s} {_exponent(sizes, [r[s]['seconds'] for r in rows]):.2f}" for s in STAGES))
    print("memory growth exponent: "
          + "  ".join(f"{s} {_exponent(sizes, [r[s]['peak_mb'] for r in rows]):.2f}" for s in STAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
