"""End-to-end serving latency of ``FeedRanker.rank`` against raw ``Booster.predict``.

For 50, 200, 500 and 1000 candidates per request, one thread, after warm-up, LightGBM with
``num_threads=1``: p50 and p99 of

- ``FeedRanker.rank(request)``: parsing, feature assembly, prediction, policy, balancer
  (re-ranking and recording the served top k in the ledger) and the response objects;
- raw ``Booster.predict`` on the same requests' feature matrices (numpy, float64), timed in
  the same run, interleaved with the end-to-end calls so both see the same machine load;

and their ratio (target: end-to-end at most 1.3 x raw predict), for two models. Each time is
given as wall clock and, in brackets, as the thread's CPU time, which a busy shared machine
disturbs less (in a VM it still counts stolen time):

- ``demo``: trained like ``trustfeed demo`` does (simulated platform of 150 merchants over
  42 days, LambdaMART with up to 120 rounds and early stopping), or an existing bundle / MLflow
  model given with ``--bundle``;
- ``reference``: 200 trees x 63 leaves on the same features (fixed size, no early stopping).

A per-stage breakdown at 500 candidates shows where the time beyond ``predict`` goes.

With ``--lleaves`` (optional, ``pip install lleaves``; compiling takes a while) each model is
also compiled to native code with lleaves; its scores are checked against LightGBM's to 1e-9
and it is timed as raw predict and end to end (the same pipeline with the compiled predictor).

Run::

    python benchmarks/bench_serving.py                 # about a minute of setup on 2 cores
    python benchmarks/bench_serving.py --bundle trustfeed-demo/.../bundle --iterations 2000
    python benchmarks/bench_serving.py --lleaves
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustfeed.serving import FeedRanker

SIZES = (50, 200, 500, 1000)


def _train_parts(seed: int) -> dict[str, Any]:
    from trustfeed.features.context import FeatureAssembler, build_context_tables
    from trustfeed.features.events import validate_events
    from trustfeed.features.trust import build_snapshot
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.training.dataset import DatasetConfig, build_training_frame
    from trustfeed.training.simulate import SimConfig, simulate

    started = time.perf_counter()
    platform = simulate(SimConfig(seed=seed, merchants=150, days=42))
    events = validate_events(platform.tables)
    start, end = platform.config.start_time, platform.config.end_time
    frame = build_training_frame(events, start=start + pd.Timedelta(days=7), end=end,
                                 config=DatasetConfig(snapshot_every_days=7))
    requests = frame.frame["request_id"].to_numpy()
    cut = int(len(requests) * 0.85)
    while 0 < cut < len(requests) and requests[cut] == requests[cut - 1]:
        cut += 1  # keep whole requests on one side
    fit, valid = frame.subset(np.arange(len(requests)) < cut), frame.subset(np.arange(len(requests)) >= cut)
    schema = dict(feature_names=frame.feature_names, categorical=frame.categorical, monotone=frame.monotone,
                  feature_schema=frame.schema)
    demo = LambdaMART(LambdaMARTConfig(num_rounds=120, early_stopping_rounds=20)).fit(
        fit.features(), fit.labels, fit.groups(), position=fit.positions,
        X_valid=valid.features(), y_valid=valid.labels, group_valid=valid.groups(), **schema,
    )
    # fixed size: random labels keep every tree growing to its 63 leaves
    rng = np.random.default_rng(seed)
    reference = LambdaMART(LambdaMARTConfig(
        num_rounds=200, num_leaves=63, min_data_in_leaf=5, early_stopping_rounds=0, position_bias=False,
        max_label=4,
    )).fit(frame.features(), rng.integers(0, 5, len(frame)), frame.groups(), **schema)
    as_of = end.floor("D")
    snapshot = build_snapshot(events, as_of)
    context = build_context_tables(events, as_of)
    print(f"setup: {len(frame)} training rows, demo model {demo.best_iteration_} trees, "
          f"reference {reference.best_iteration_} trees, {time.perf_counter() - started:.0f} s")
    return {"snapshot": snapshot, "context": context, "demo": demo, "reference": reference,
            "assembler": lambda: FeatureAssembler(snapshot, context, schema=frame.schema)}


def _save(parts: dict[str, Any], model: Any, path: Path) -> Path:
    from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
    from trustfeed.ranker.bundle import save_bundle
    from trustfeed.ranker.pipeline import RankingPipeline

    pipeline = RankingPipeline(parts["assembler"](), model, None, ExposureBalancer(BalancerConfig()),
                               snapshot=parts["snapshot"], context=parts["context"])
    save_bundle(pipeline, path)
    return path


def _bundles(seed: int, root: Path, demo_uri: str | None) -> tuple[Any, Path]:
    parts = _train_parts(seed)
    demo = demo_uri or _save(parts, parts["demo"], root / "demo")
    return demo, _save(parts, parts["reference"], root / "reference")


def _requests(ranker: FeedRanker, n: int, count: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    snapshot = ranker.pipeline.snapshot
    merchants = snapshot.merchants["merchant_id"].astype(str).to_numpy()
    creators = snapshot.creators["creator_id"].astype(str).to_numpy()
    users = snapshot.extras.get("users", pd.DataFrame({"user_id": ["u0"]}))["user_id"].astype(str).to_numpy()
    ts = (pd.Timestamp(snapshot.as_of) + pd.Timedelta(hours=13)).isoformat()
    out = []
    for r in range(count):
        m = rng.choice(merchants, n)
        c = rng.choice(creators, n)
        unknown = rng.random(n) < 0.05  # a few cold-start candidates, as in a live feed
        m = np.where(unknown, "merchant-new", m)
        out.append({
            "request_id": f"bench-{n}-{r}", "user_id": str(rng.choice(users)), "ts": ts, "k": 20,
            "candidates": [{"stream_id": f"s{r}-{i}", "creator_id": ci, "merchant_id": mi}
                           for i, (ci, mi) in enumerate(zip(c.tolist(), m.tolist(), strict=True))],
        })
    return out


def _matrix(ranker: FeedRanker, request: dict[str, Any]) -> np.ndarray:
    frame = pd.DataFrame(request["candidates"]).assign(user_id=request["user_id"], ts=request["ts"])
    return np.ascontiguousarray(ranker.pipeline.assembler.transform(frame), dtype=np.float64)


def _timed(fn: Any, *args: Any) -> tuple[int, int]:
    """(wall, thread CPU) nanoseconds of one call."""
    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    fn(*args)
    c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
    return w1 - w0, c1 - c0


def _stats(samples: list[tuple[int, int]]) -> dict[str, float]:
    wall = np.asarray([w for w, _ in samples], dtype=np.float64) / 1e6
    cpu = np.asarray([c for _, c in samples], dtype=np.float64) / 1e6
    return {f"{clock}_{name}": float(np.percentile(values, q))
            for clock, values in (("wall", wall), ("cpu", cpu))
            for name, q in (("p10", 10), ("p50", 50), ("p99", 99))}


def _cell(stats: dict[str, float], q: str) -> str:
    return f"{stats[f'wall_{q}']:6.3f} [{stats[f'cpu_{q}']:6.3f}]"


def _ratio(top: dict[str, float], bottom: dict[str, float], q: str) -> str:
    return f"{top[f'wall_{q}'] / bottom[f'wall_{q}']:5.2f} [{top[f'cpu_{q}'] / bottom[f'cpu_{q}']:4.2f}]"


class _PredictProbe:
    """The pipeline's model, timing each ``predict`` call (thread CPU nanoseconds)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.feature_names_ = model.feature_names_
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, X: np.ndarray) -> np.ndarray:
        c0 = time.thread_time_ns()
        out = self._model.predict(X)
        self.calls.append(time.thread_time_ns() - c0)
        return out


def _inside(ranker: FeedRanker, requests: list[dict[str, Any]], matrices: list[np.ndarray],
            raw_predict: Any, iterations: int) -> tuple[float, float]:
    """Median thread CPU ms of ``predict`` inside ``rank`` and of the rest of ``rank``.

    A second pass, same interleaving, with the model wrapped in a probe (so the main
    end-to-end figures carry no probe).
    """
    pipeline = ranker.pipeline
    probe = _PredictProbe(pipeline.model)
    pipeline.model = probe
    rest: list[int] = []
    try:
        for i in range(iterations):
            _, cpu = _timed(ranker.rank, requests[i % len(requests)])
            rest.append(cpu - probe.calls[-1])
            raw_predict(matrices[i % len(requests)])
    finally:
        pipeline.model = probe._model
    return float(np.median(probe.calls)) / 1e6, float(np.median(rest)) / 1e6


def bench_model(name: str, ranker: FeedRanker, iterations: int, warmup: int, seed: int) -> dict[int, dict[str, Any]]:
    """Interleaved end-to-end and raw-predict timings per request size.

    Two more columns split the end-to-end CPU time: ``predict`` inside ``rank`` (it runs
    slower there than raw ``predict`` timed right after another ``predict``, because the rest
    of the request has pushed the trees out of the CPU caches) and everything else.
    """
    booster = ranker.pipeline.model.booster_
    trees = ranker.pipeline.model.best_iteration_

    def raw_predict(matrix: np.ndarray) -> None:
        booster.predict(matrix, num_threads=1, num_iteration=trees)

    results: dict[int, dict[str, Any]] = {}
    rng = np.random.default_rng(seed)
    print(f"\n{name}: {trees} trees, {booster.num_feature()} features; ms, wall clock [thread CPU time]")
    print(f"{'candidates':>10} {'e2e p50':>15} {'e2e p99':>15} {'raw p50':>15} {'raw p99':>15} "
          f"{'ratio p50':>13} {'ratio p99':>13} {'cpu: predict in rank':>20} {'rest of rank':>12}")
    for n in SIZES:
        requests = _requests(ranker, n, 16, rng)
        matrices = [_matrix(ranker, r) for r in requests]
        for i in range(warmup):
            ranker.rank(requests[i % len(requests)])
            raw_predict(matrices[i % len(requests)])
        e2e: list[tuple[int, int]] = []
        raw: list[tuple[int, int]] = []
        gc.collect()
        for i in range(iterations):
            e2e.append(_timed(ranker.rank, requests[i % len(requests)]))
            raw.append(_timed(raw_predict, matrices[i % len(requests)]))
        e, r = _stats(e2e), _stats(raw)
        inside, rest = _inside(ranker, requests, matrices, raw_predict, max(iterations // 2, 1))
        results[n] = {"e2e": e, "raw": r, "predict_in_rank": inside, "rest_of_rank": rest}
        print(f"{n:>10} {_cell(e, 'p50'):>15} {_cell(e, 'p99'):>15} {_cell(r, 'p50'):>15} {_cell(r, 'p99'):>15} "
              f"{_ratio(e, r, 'p50'):>13} {_ratio(e, r, 'p99'):>13} {inside:>20.3f} {rest:>12.3f}")
    return results


class CompiledModel:
    """The pipeline's model with predictions from an lleaves-compiled copy of its trees."""

    def __init__(self, model: Any, cache_dir: Path) -> None:
        import lleaves

        self.feature_names_ = model.feature_names_
        self.best_iteration_ = model.best_iteration_
        self.booster_ = model.booster_
        model_file = cache_dir / "model.txt"
        model_file.write_text(model.booster_.model_to_string(num_iteration=model.best_iteration_))
        started = time.perf_counter()
        self._compiled = lleaves.Model(model_file=str(model_file))
        self._compiled.compile(cache=str(cache_dir / "model.so"), raw_score=True)
        self.compile_seconds = time.perf_counter() - started

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._compiled.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1))


def bench_lleaves(name: str, ranker: FeedRanker, iterations: int, warmup: int, seed: int, cache_dir: Path) -> None:
    """LightGBM against the lleaves-compiled trees: same scores, raw and end-to-end time."""
    from trustfeed.ranker.pipeline import RankingPipeline

    pipeline = ranker.pipeline
    compiled = CompiledModel(pipeline.model, cache_dir)
    fast = FeedRanker(RankingPipeline(pipeline.assembler, compiled, pipeline.policy, pipeline.balancer,
                                      model_id=pipeline.model_id))
    booster, trees = pipeline.model.booster_, pipeline.model.best_iteration_

    def lightgbm_predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(matrix, num_threads=1, num_iteration=trees))

    rng = np.random.default_rng(seed)
    print(f"\n{name} compiled with lleaves in {compiled.compile_seconds:.0f} s; ms, wall [thread CPU]")
    print(f"{'candidates':>10} {'max |diff|':>10} {'lightgbm p50':>15} {'lleaves p50':>15} {'speed-up':>8} "
          f"{'e2e p50':>15} {'e2e p99':>15} {'e2e/lleaves p50':>15}")
    for n in SIZES:
        requests = _requests(ranker, n, 16, rng)
        matrices = [_matrix(ranker, r) for r in requests]
        diff = max(float(np.max(np.abs(compiled.predict(X) - lightgbm_predict(X)))) for X in matrices)
        for i in range(warmup):
            fast.rank(requests[i % len(requests)])
            compiled.predict(matrices[i % len(requests)])
        lgb: list[tuple[int, int]] = []
        ll: list[tuple[int, int]] = []
        e2e: list[tuple[int, int]] = []
        gc.collect()
        for i in range(iterations):
            lgb.append(_timed(lightgbm_predict, matrices[i % len(requests)]))
            ll.append(_timed(compiled.predict, matrices[i % len(requests)]))
            e2e.append(_timed(fast.rank, requests[i % len(requests)]))
        g, lv, e = _stats(lgb), _stats(ll), _stats(e2e)
        print(f"{n:>10} {diff:>10.1e} {_cell(g, 'p50'):>15} {_cell(lv, 'p50'):>15} "
              f"{g['cpu_p50'] / lv['cpu_p50']:>8.2f} {_cell(e, 'p50'):>15} {_cell(e, 'p99'):>15} "
              f"{_ratio(e, lv, 'p50'):>15}")
        if diff > 1e-9:
            print(f"  WARNING: lleaves scores differ from LightGBM's by {diff:.2e} (> 1e-9)")


def breakdown(ranker: FeedRanker, n: int, iterations: int, seed: int) -> None:
    """Median cost of each stage of one request, in the order the pipeline runs them.

    Each stage is timed alone, in a loop, so its data stay in cache: inside a full request
    (after ``predict`` has walked the trees) the same stages take longer.
    """
    pipeline = ranker.pipeline
    request = _requests(ranker, n, 1, np.random.default_rng(seed))[0]
    parsed = pipeline.parse(request)
    ids = {k: np.array(getattr(parsed, k), dtype=object) for k in ("stream_id", "creator_id", "merchant_id")}
    columns = {**ids, "user_id": parsed.user_id, "ts": parsed.ts}
    X, status = pipeline.assembler.transform_with_status(columns)
    relevance = pipeline.model.predict(X)
    score = pipeline.policy.score(relevance, status.trust, group=[n])
    creators, merchants = ids["creator_id"].tolist(), ids["merchant_id"].tolist()
    order = pipeline.balancer.rerank(creators, merchants, score, status.trust, record=False)
    stages = {
        "parse + validate": lambda: pipeline.parse(request),
        "features + merchant status": lambda: pipeline.assembler.transform_with_status(columns),
        "predict (LambdaMART.predict)": lambda: pipeline.model.predict(X),
        "policy (rules + score)": lambda: (
            pipeline.policy.rule_codes(status.banned_merchant, status.banned_entity, status.trust),
            pipeline.policy.score(relevance, status.trust, group=[n]),
        ),
        "balancer rerank": lambda: pipeline.balancer.rerank(creators, merchants, score, status.trust, record=False),
        "item dicts": lambda: [
            {"stream_id": s, "creator_id": c, "merchant_id": m, "score": a, "relevance": r, "trust": t}
            for s, c, m, a, r, t in zip(ids["stream_id"][order].tolist(), ids["creator_id"][order].tolist(),
                                        ids["merchant_id"][order].tolist(), score[order].tolist(),
                                        relevance[order].tolist(), status.trust[order].tolist(), strict=True)
        ],
        "whole rank, ledger off": lambda: pipeline.rank(request, record=False),
    }
    print(f"\nbreakdown at {n} candidates, demo model, each stage alone (median ms, wall [thread CPU]):")
    for label, stage in stages.items():
        stats = _stats([_timed(stage) for _ in range(iterations)])
        print(f"  {label:<30} {_cell(stats, 'p50')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="model URI to time as the demo model (default: train one)")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lleaves", action="store_true", help="also time an lleaves-compiled predictor")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        demo_uri, reference_uri = _bundles(args.seed, Path(tmp), args.bundle)
        gc.collect()  # the training data is gone: the process holds what a service would
        rankers = {"demo": FeedRanker.load(demo_uri), "reference (200 x 63)": FeedRanker.load(reference_uri)}
        results = {name: bench_model(name, r, args.iterations, args.warmup, args.seed) for name, r in rankers.items()}
        breakdown(rankers["demo"], 500, 300, args.seed)
        if args.lleaves:
            for i, (name, ranker) in enumerate(rankers.items()):
                cache = Path(tmp) / f"lleaves-{i}"
                cache.mkdir()
                bench_lleaves(name, ranker, args.iterations, args.warmup, args.seed, cache)

    print("\nsummary at 500 candidates (wall [thread CPU]):")
    demo = results["demo"][500]["e2e"]
    print(f"  demo end-to-end p99: {demo['wall_p99']:.2f} ms [{demo['cpu_p99']:.2f}] (target <= 5 ms)")
    for name, by_size in results.items():
        e, r = by_size[500]["e2e"], by_size[500]["raw"]
        print(f"  {name}: end-to-end / raw predict p50 {_ratio(e, r, 'p50')}, p99 {_ratio(e, r, 'p99')} "
              f"(target <= 1.3); p10 {_ratio(e, r, 'p10')}, the least disturbed calls on a shared machine")
        at = by_size[500]
        print(f"    CPU: predict inside rank {at['predict_in_rank']:.3f} ms (raw {r['cpu_p50']:.3f}), rest of rank "
              f"{at['rest_of_rank']:.3f} ms = {at['rest_of_rank'] / r['cpu_p50']:.0%} of raw predict (target <= 30%)")


if __name__ == "__main__":
    main()
