"""Where the time of one ``trustfeed train`` job goes: wall and CPU seconds per stage.

Runs the whole job in this process on an existing dataset (``trustfeed simulate --out DIR
--merchants 1000 --days 60`` gives about 1.4 million impressions) and groups its progress
lines into stages. CPU seconds are the process's (all threads, so the two LambdaMART fits
that run side by side count twice); on a shared machine they say more than wall seconds,
which grow with the neighbours' load (printed beside each stage). On two free cores the
job's wall time is about its CPU time minus the shorter of the two fits.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_train_job.py DIR [--evaluation quick|full|off]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# progress message prefix -> stage (the first stage whose prefix matches; order matters)
STAGES = (
    ("loading events", "load and validate events"),
    ("tracking:", "MLflow run start"),
    ("building training data", "training frame"),
    ("building trust snapshot", "training frame"),
    ("training the plain", "trust-aware + plain LambdaMART"),
    ("training LambdaMART", "trust-aware + plain LambdaMART"),
    ("measuring the cost", "bad-order cost, policy fit, balancer target"),
    ("bad-order cost", "bad-order cost, policy fit, balancer target"),
    ("fitting the expected", "bad-order cost, policy fit, balancer target"),
    ("balancer target", "serving snapshot and bundle"),
    ("building the serving", "serving snapshot and bundle"),
    ("waiting for the serving", "serving snapshot and bundle"),
    ("saving the model", "serving snapshot and bundle"),
    ("evaluating", "in-job evaluation"),
    ("evaluate:", "in-job evaluation"),
    ("in-job evaluation off", "in-job evaluation"),
    ("logging", "MLflow logging"),
    ("done", "MLflow logging"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--evaluation", choices=("quick", "full", "off"), default="quick")
    parser.add_argument("--lines", action="store_true", help="also print every progress line with its wall/CPU clock")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from trustfeed.training.evaluation import EvalConfig
    from trustfeed.training.train import TrainJobConfig, train

    marks: list[tuple[float, float, float, str]] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def progress(step: str, done: int | None = None, total: int | None = None) -> None:
        marks.append((time.perf_counter() - wall0, time.process_time() - cpu0, os.getloadavg()[0], step))

    with tempfile.TemporaryDirectory(prefix="bench-train-job-") as root:
        config = TrainJobConfig(events=args.events, tracking_uri=f"sqlite:///{root}/mlflow.db",
                                output_dir=Path(root) / "models")
        if args.evaluation == "off":
            config = replace(config, evaluate=False)
        elif args.evaluation == "full":
            config = replace(config, evaluation=EvalConfig())
        train(config, progress=progress)
    wall_end, cpu_end = time.perf_counter() - wall0, time.process_time() - cpu0

    if args.lines:
        for wall, cpu, load, step in marks:
            print(f"{wall:7.1f} {cpu:7.1f}  {step}")
    totals: dict[str, list[float]] = {}
    for i, (wall, cpu, load, step) in enumerate(marks):
        stage = next((name for prefix, name in STAGES if step.startswith(prefix)), "other")
        next_wall, next_cpu = (marks[i + 1][0], marks[i + 1][1]) if i + 1 < len(marks) else (wall_end, cpu_end)
        entry = totals.setdefault(stage, [0.0, 0.0, 0.0, 0])
        entry[0] += next_wall - wall
        entry[1] += next_cpu - cpu
        entry[2] += load
        entry[3] += 1
    print(f"{'stage':46s} {'wall s':>8s} {'cpu s':>8s} {'load':>6s}")
    for stage, (wall, cpu, load, n) in totals.items():
        print(f"{stage:46s} {wall:8.1f} {cpu:8.1f} {load / n:6.1f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'whole job':46s} {wall_end:8.1f} {cpu_end:8.1f}   peak RSS {peak:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
