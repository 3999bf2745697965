"""Where the time of one ``trustfeed train`` job goes: wall and CPU seconds per stage.

Runs the whole job in this process on an existing dataset (``trustfeed simulate --out DIR
--merchants 1000 --days 60`` gives about 1.4 million impressions) and groups its progress
lines into stages. CPU seconds are the process's (all threads, so the two LambdaMART fits
that run side by side count twice); on a shared machine they say more than wall seconds,
which grow with the neighbours' load (printed beside each stage). Stages are read from the
main thread's progress lines; the work that runs alongside them in other threads (the fits,
the snapshots built while LightGBM trains) is listed as tasks with their own thread's CPU
seconds and the wall clock at which each started and ended, so the critical path can be read
off: on two free cores the job cannot end before the main thread's serial work plus the
longest chain of tasks it waits for, nor before its CPU seconds / 2.

Run::

    python benchmarks/bench_train_job.py DIR [--evaluation quick|full|off] [--lines] [--purchase KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# progress message prefix -> stage (the first stage whose prefix matches; order matters)
STAGES = (
    ("loading events", "load and validate events"),
    ("tracking:", "MLflow run start"),
    ("building training data", "training frame"),
    ("building trust snapshot", "training frame"),
    ("building the serving", "fits (LambdaMART, plain; tasks alongside)"),
    ("training the plain", "fits (LambdaMART, plain; tasks alongside)"),
    ("training LambdaMART", "fits (LambdaMART, plain; tasks alongside)"),
    ("waiting for the purchase", "fits (LambdaMART, plain; tasks alongside)"),
    ("measuring the cost", "bad-order cost, policy fit, balancer target"),
    ("bad-order cost", "bad-order cost, policy fit, balancer target"),
    ("fitting the expected", "bad-order cost, policy fit, balancer target"),
    ("balancer target", "serving snapshot and bundle"),
    ("building the serving pipeline", "serving snapshot and bundle"),
    ("waiting for the serving", "serving snapshot and bundle"),
    ("saving the model", "serving snapshot and bundle"),
    ("evaluating", "in-job evaluation"),
    ("evaluate:", "in-job evaluation"),
    ("in-job evaluation off", "in-job evaluation"),
    ("logging", "MLflow logging"),
    ("done", "MLflow logging"),
)


# (module, attribute, task label): the calls timed as tasks, in whichever thread they run
TASKS = (
    ("trustfeed.training.dataset", "build_training_frame", "training frame"),
    ("trustfeed.ranker.lambdamart.LambdaMART", "fit", "LambdaMART fit"),
    ("trustfeed.ranker.purchase.PurchaseModel", "fit", "purchase model fit"),
    ("trustfeed.training.train", "_start_run", "MLflow run start"),
    ("trustfeed.training.train", "_tables_as_of", "serving/evaluation snapshots"),
    ("trustfeed.training.train", "_purchase_model_and_scores", "purchase model, all of it"),
    ("trustfeed.training.train", "write_evaluation", "evaluation report"),
    ("trustfeed.training.train", "measure_bad_order_cost", "bad-order cost"),
    ("trustfeed.training.train", "fit_policy_and_target", "policy fit, balancer target"),
    ("trustfeed.training.train", "evaluate_pipeline", "in-job evaluation"),
    ("trustfeed.training.train", "_log_models", "MLflow model logging"),
)


def _timed_tasks(wall0: float) -> list[tuple[str, str, float, float, float]]:
    """Wrap the TASKS; each call appends ``(label, thread, wall start, wall end, thread CPU)``."""
    import importlib

    done: list[tuple[str, str, float, float, float]] = []

    def wrap(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter() - wall0, time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                done.append((label, threading.current_thread().name, start, time.perf_counter() - wall0,
                             time.thread_time() - cpu))
        return timed

    for path, attribute, label in TASKS:
        module_name, _, class_name = path.rpartition(".") if path.endswith(("LambdaMART", "PurchaseModel")) else (path, "", "")
        owner = getattr(importlib.import_module(module_name), class_name) if class_name else importlib.import_module(path)
        setattr(owner, attribute, wrap(label, getattr(owner, attribute)))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--evaluation", choices=("quick", "full", "off"), default="quick")
    parser.add_argument("--lines", action="store_true", help="also print every progress line with its wall/CPU clock")
    parser.add_argument("--purchase", nargs="*", default=[], metavar="KEY=VALUE",
                        help="PurchaseModelConfig overrides, e.g. learning_rate=0.1 first_pass_learning_rate=0 "
                             "(the settings before session 7)")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from trustfeed.training.evaluation import EvalConfig
    from trustfeed.training.train import TrainJobConfig, train

    marks: list[tuple[float, float, float, str]] = []
    background: list[tuple[float, float, str, str]] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tasks = _timed_tasks(wall0)

    def progress(step: str, done: int | None = None, total: int | None = None) -> None:
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if threading.current_thread() is threading.main_thread():
            marks.append((wall, cpu, os.getloadavg()[0], step))
        else:
            background.append((wall, cpu, threading.current_thread().name, step))

    with tempfile.TemporaryDirectory(prefix="bench-train-job-") as root:
        config = TrainJobConfig(events=args.events, tracking_uri=f"sqlite:///{root}/mlflow.db",
                                output_dir=Path(root) / "models")
        if args.purchase:
            from trustfeed.ranker.purchase import PurchaseModelConfig

            overrides = dict(item.split("=", 1) for item in args.purchase)
            base = PurchaseModelConfig().to_dict()
            config = replace(config, purchase_model=PurchaseModelConfig.from_dict(
                {**base, **{k: (v.lower() in ("1", "true") if isinstance(base[k], bool) else type(base[k])(v))
                            for k, v in overrides.items()}}))
        if args.evaluation == "off":
            config = replace(config, evaluate=False)
        elif args.evaluation == "full":
            config = replace(config, evaluation=EvalConfig())
        train(config, progress=progress)
    wall_end, cpu_end = time.perf_counter() - wall0, time.process_time() - cpu0

    if args.lines:
        lines = [(wall, cpu, "main", step) for wall, cpu, _, step in marks] + background
        for wall, cpu, thread, step in sorted(lines):
            print(f"{wall:7.1f} {cpu:7.1f}  {thread:14.14s} {step}")
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
    print(f"\n{'task (any thread)':32s} {'thread':14s} {'start':>7s} {'end':>7s} {'cpu s':>7s}")
    for label, thread, start, end, cpu in sorted(tasks, key=lambda task: task[2]):
        print(f"{label:32s} {thread[:14]:14s} {start:7.1f} {end:7.1f} {cpu:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
