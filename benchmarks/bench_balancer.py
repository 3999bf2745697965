"""Benchmark and steady-state simulation of the exposure balancer.

Run: ``python benchmarks/bench_balancer.py [--quick] [--lift value|position]``

1. Latency: median / p99 microseconds per ``ExposureBalancer.rerank`` for 50, 200, 500 and
   1000 candidates (string ids, a warm ledger of 20k creators), next to a plain
   ``np.argsort`` of the relevance and the other lift rule, measured in the same process.
2. Steady state: many requests whose candidates come from a heavy-tailed (Zipf) creator
   population with popularity-biased relevance; the ledger's Gini of creator exposure with the
   controller (for two targets) and without it.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
from trustfeed.ranker.metrics import gini


def _creator_world(rng: np.random.Generator, n_creators: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = [f"c{i}" for i in range(n_creators)]
    popularity = 1.0 / np.arange(1, n_creators + 1) ** 1.1
    popularity = popularity / popularity.sum()
    trust = rng.beta(5.0, 2.0, size=n_creators)
    return ids, popularity, trust


def _request(rng: np.random.Generator, ids: list[str], popularity: np.ndarray, trust: np.ndarray,
             n: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    picked = rng.choice(len(ids), size=n, replace=True, p=popularity)
    creators = [ids[i] for i in picked.tolist()]
    merchants = [f"m{i % 997}" for i in picked.tolist()]
    relevance = np.log(popularity[picked]) + rng.normal(0.0, 1.0, size=n)
    return creators, merchants, relevance, trust[picked]


def latency(quick: bool, lift: str) -> None:
    rng = np.random.default_rng(7)
    ids, popularity, trust = _creator_world(rng, 20_000)
    balancer = ExposureBalancer(BalancerConfig(initial_strength=4.0, lift=lift))
    # warm the ledger so lookups hit a realistically large dict and the strength is non-zero
    balancer.record(ids, [f"m{i % 997}" for i in range(len(ids))], np.arange(1, len(ids) + 1))
    repeats = 300 if quick else 2000
    recording = ExposureBalancer.from_state(
        BalancerConfig(initial_strength=4.0, auto_record=True, record_k=10, lift=lift), balancer.state_dict())
    other_lift = "position" if lift == "value" else "value"
    other = ExposureBalancer.from_state(BalancerConfig(initial_strength=4.0, lift=other_lift), balancer.state_dict())
    print(f"rerank latency (microseconds, string ids, ledger of 20k creators; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"{'n':>6} {'median':>9} {'p99':>9} {'min':>7} {'argsort median':>15} {'ratio':>7}"
          f" {'+auto_record median':>20} {other_lift + ' rule median':>20}")
    for n in (50, 200, 500, 1000):
        requests = [_request(rng, ids, popularity, trust, n) for _ in range(50)]
        times = np.empty(repeats)
        base_times = np.empty(repeats)
        recording_times = np.empty(repeats)
        other_times = np.empty(repeats)
        for r in range(repeats):
            creators, merchants, relevance, tr = requests[r % len(requests)]
            start = time.perf_counter()
            balancer.rerank(creators, merchants, relevance, tr)
            times[r] = time.perf_counter() - start
            start = time.perf_counter()
            np.argsort(-relevance, kind="stable")
            base_times[r] = time.perf_counter() - start
            start = time.perf_counter()
            recording.rerank(creators, merchants, relevance, tr)
            recording_times[r] = time.perf_counter() - start
            start = time.perf_counter()
            other.rerank(creators, merchants, relevance, tr)
            other_times[r] = time.perf_counter() - start
        med, p99, fastest = np.median(times) * 1e6, np.percentile(times, 99) * 1e6, times.min() * 1e6
        base = np.median(base_times) * 1e6
        print(f"{n:>6} {med:>9.1f} {p99:>9.1f} {fastest:>7.1f} {base:>15.1f} {med / base:>7.1f}"
              f" {np.median(recording_times) * 1e6:>20.1f} {np.median(other_times) * 1e6:>20.1f}")


def steady_state(quick: bool, lift: str) -> None:
    n_requests = 2000 if quick else 6000
    rng = np.random.default_rng(11)
    n_creators = 1000
    ids, popularity, trust = _creator_world(rng, n_creators)
    # recall is flatter than popularity (tail creators do become candidates), relevance is not
    recall = popularity**0.4 / (popularity**0.4).sum()
    world = []
    for _ in range(n_requests):
        picked = rng.choice(n_creators, size=60, p=recall)
        creators = [ids[i] for i in picked.tolist()]
        relevance = np.log(popularity[picked]) + rng.normal(0.0, 1.0, size=60)
        world.append((creators, creators, relevance, trust[picked]))
    common = dict(record_k=10, auto_record=True, half_life=1000.0, max_move=30, relevance_floor=60, lift=lift)
    runs = {"no controller": BalancerConfig(kp=0.0, ki=0.0, **common)}
    for target in (0.85, 0.8, 0.75):
        runs[f"controller, target {target}"] = BalancerConfig(target_gini=target, **common)
    checkpoints = np.linspace(n_requests // 6, n_requests, 6).astype(int)
    print(f"\nsteady state: {n_requests} requests x 60 candidates from {n_creators} Zipf creators,"
          f" top 10 served, half-life 1000 requests, max_move 30, relevance_floor 60, {lift} rule")
    print("ledger Gini of creator exposure (creators seen) after N requests; final strength")
    print(f"{'run':<28}" + "".join(f"{c:>8}" for c in checkpoints) + f"{'strength':>10}")
    for name, config in runs.items():
        balancer = ExposureBalancer(config)
        row = []
        for r, (creators, merchants, relevance, tr) in enumerate(world, start=1):
            balancer.rerank(creators, merchants, relevance, tr)
            if r in checkpoints:
                row.append(gini(balancer.creator_exposure().to_numpy()))
        print(f"{name:<28}" + "".join(f"{g:>8.3f}" for g in row) + f"{balancer.strength:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and requests")
    parser.add_argument("--lift", choices=("value", "position"), default="value", help="the rule measured")
    args = parser.parse_args()
    latency(args.quick, args.lift)
    steady_state(args.quick, args.lift)


if __name__ == "__main__":
    main()
