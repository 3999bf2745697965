"""End-to-end serving latency of ``FeedRanker.rank`` against raw ``Booster.predict``.

For 50, 200, 500 and 1000 candidates per request, one thread, after warm-up, LightGBM with
``num_threads=1``: p50 and p99 of

- ``FeedRanker.rank(request)``: parsing, feature assembly, prediction, policy, balancer
  (re-ranking and recording the served top k in the ledger) and the response objects;
- raw ``Booster.predict`` on the same requests' feature matrices (numpy, float64), timed in
  the same run, interleaved with the end-to-end calls so both see the same machine load;

and their ratio (target: end-to-end no slower than raw predict), for two models and three
ways of serving: the LightGBM predictor, the compiled predictor (lleaves; when installed, with
its scores checked against LightGBM's to 1e-9) and the compiled predictor returning the
column form of the response. Each time is given as wall clock and, in brackets, as the
thread's CPU time, which a busy shared machine disturbs less (in a VM it still counts stolen
time):

- ``demo``: the bundle ``trustfeed demo`` trains: its simulated platform (200 merchants over
  56 days, ``--seed``) and its training job (``trustfeed train`` with the demo's sizes:
  LambdaMART, the purchase model and the fitted policy; the in-job evaluation and the plain
  comparison model are skipped, they do not change the bundle), or an existing bundle / MLflow
  model given with ``--bundle``. A bundle with a purchase model ranks on it, so the raw
  predict it is compared with is both purchase stages' ``Booster.predict``; the raw
  LambdaMART predict is printed beside it;
- ``reference``: 200 trees x 63 leaves on the same platform's features (fixed size, no early
  stopping), ranked on LambdaMART.

After loading, the process calls ``gc.freeze()`` as a service would (``--no-gc-freeze`` to
skip it). A per-stage breakdown at 500 candidates shows where the time beyond ``predict`` goes.

Run::

    python benchmarks/bench_serving.py                 # one to two minutes of setup on 2 cores
    python benchmarks/bench_serving.py --bundle trustfeed-demo/.../bundle --iterations 2000
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


def _simulate(seed: int, root: Path) -> Path:
    """The demo's platform (``trustfeed demo``'s size), written as an event log."""
    from trustfeed.training.demo import DemoConfig
    from trustfeed.training.simulate import WORLD_SETTINGS, SimConfig, simulate, write_dataset

    demo = DemoConfig()
    events_dir = root / "events"
    config = SimConfig(seed=seed, merchants=demo.merchants, days=demo.days, **WORLD_SETTINGS[demo.world])
    write_dataset(simulate(config), events_dir)
    return events_dir


def _train_demo(events_dir: Path, root: Path) -> Path:
    """The bundle ``trustfeed demo`` trains (its training job on the same events), without the
    job's in-job evaluation and comparison model, which do not change the served bundle."""
    from trustfeed.training.demo import DemoConfig, demo_train_config
    from trustfeed.training.train import train

    started = time.perf_counter()
    result = train(demo_train_config(DemoConfig(), events_dir, f"sqlite:///{root / 'mlflow.db'}", root / "models",
                                     experiment="bench-serving", evaluate=False, train_plain=False))
    print(f"setup: demo bundle trained by the demo's training job in {time.perf_counter() - started:.0f} s")
    return result.bundle_dir


def _train_reference(seed: int, events_dir: Path, root: Path) -> Path:
    """200 trees x 63 leaves on the same platform's features (fixed size, no early stopping)."""
    from trustfeed.features.context import FeatureAssembler, build_context_tables
    from trustfeed.features.events import load_events
    from trustfeed.features.trust import build_snapshot
    from trustfeed.ranker.balancer import BalancerConfig, ExposureBalancer
    from trustfeed.ranker.bundle import save_bundle
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.ranker.pipeline import RankingPipeline
    from trustfeed.training.dataset import DatasetConfig, build_training_frame

    started = time.perf_counter()
    events = load_events(events_dir)
    end = events["impressions"]["ts"].max().floor("D") + pd.Timedelta(days=1)
    frame = build_training_frame(events, start=None, end=end, config=DatasetConfig(snapshot_every_days=7))
    # fixed size: random labels keep every tree growing to its 63 leaves
    rng = np.random.default_rng(seed)
    reference = LambdaMART(LambdaMARTConfig(
        num_rounds=200, num_leaves=63, min_data_in_leaf=5, early_stopping_rounds=0, position_bias=False,
        max_label=4,
    )).fit(frame.features(), rng.integers(0, 5, len(frame)), frame.groups(), feature_names=frame.feature_names,
           categorical=frame.categorical, monotone=frame.monotone, feature_schema=frame.schema)
    snapshot = build_snapshot(events, end)
    context = build_context_tables(events, end)
    pipeline = RankingPipeline(FeatureAssembler(snapshot, context, schema=frame.schema), reference, None,
                               ExposureBalancer(BalancerConfig()), snapshot=snapshot, context=context)
    path = root / "reference"
    save_bundle(pipeline, path)
    print(f"setup: reference {reference.best_iteration_} trees on {len(frame)} training rows, "
          f"{time.perf_counter() - started:.0f} s")
    return path


def _bundles(seed: int, root: Path, demo_uri: str | None, reference: bool) -> tuple[Any, Path | None]:
    if demo_uri is not None and not reference:
        return demo_uri, None
    events_dir = _simulate(seed, root)
    demo = demo_uri or _train_demo(events_dir, root)
    return demo, _train_reference(seed, events_dir, root) if reference else None


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


def bench_model(name: str, ranker: FeedRanker, iterations: int, warmup: int, seed: int,
                compile_cache: Path) -> dict[int, dict[str, Any]]:
    """Interleaved end-to-end and raw-predict timings per request size, for each predictor.

    Per request: raw LightGBM ``predict`` on its feature matrix, then ``rank`` with the LightGBM
    predictor, with the compiled predictor (when lleaves is installed), and with the compiled
    predictor returning the column form. Ratios are against the raw ``predict`` of the same loop.
    """
    from trustfeed.ranker.balancer import ExposureBalancer
    from trustfeed.ranker.pipeline import RankingPipeline
    from trustfeed.ranker.purchase import _best
    from trustfeed.serving._compiled import compiled_available

    pipeline = ranker.pipeline
    booster = pipeline.model.booster_
    trees = pipeline.model.best_iteration_
    purchase = pipeline.purchase_model

    def lambdamart_predict(matrix: np.ndarray) -> None:
        booster.predict(matrix, num_threads=1, num_iteration=trees)

    raw_predict = lambdamart_predict
    if purchase is not None:
        # what rank evaluates: both purchase stages on the same rows (LambdaMART is not run)
        stages = [(b, _best(b)) for b in (purchase.click_booster_, purchase.purchase_booster_)]

        def raw_predict(matrix: np.ndarray) -> None:
            for stage, stage_trees in stages:
                stage.predict(matrix, raw_score=True, num_threads=1, num_iteration=stage_trees)

    variants: dict[str, Any] = {"lightgbm": ranker.rank}
    compiled: FeedRanker | None = None
    if compiled_available():
        started = time.perf_counter()
        balancer = ExposureBalancer.from_state(pipeline.balancer.config, pipeline.balancer.state_dict())
        compiled = FeedRanker(RankingPipeline(pipeline.assembler, pipeline.model, pipeline.policy, balancer,
                                              model_id=pipeline.model_id, purchase_model=purchase),
                              predictor="compiled", compile_cache=compile_cache)
        print(f"\n{name}: compiled with lleaves in {time.perf_counter() - started:.1f} s")
        fast = compiled
        variants["compiled"] = fast.rank
        variants["compiled, columns"] = lambda request: fast.rank(request, columns=True)
    else:
        print("\nlleaves is not installed: LightGBM predictor only (pip install 'trustfeed[compiled]')")

    results: dict[int, dict[str, Any]] = {}
    rng = np.random.default_rng(seed)
    if purchase is None:
        print(f"{name}: {trees} trees, {booster.num_feature()} features; ms, wall clock [thread CPU time]")
    else:
        print(f"{name}: purchase model, {stages[0][1]} + {stages[1][1]} trees (rank's scorer; raw = both stages' "
              f"Booster.predict), LambdaMART {trees} trees (not run by rank), {booster.num_feature()} features; "
              "ms, wall clock [thread CPU time]")
    print(f"{'candidates':>10} {'predictor':>18} {'e2e p50':>15} {'e2e p99':>15} {'raw p50':>15} {'raw p99':>15} "
          f"{'ratio p50':>13} {'ratio p99':>13}")
    for n in SIZES:
        requests = _requests(ranker, n, 16, rng)
        matrices = [_matrix(ranker, r) for r in requests]
        diff = 0.0
        if compiled is not None:
            served = compiled.pipeline.purchase_model or compiled.pipeline.model
            reference = purchase or pipeline.model
            diff = max(float(np.max(np.abs(served.predict(X) - reference.predict(X)))) for X in matrices)
        for i in range(warmup):
            raw_predict(matrices[i % len(requests)])
            for rank in variants.values():
                rank(requests[i % len(requests)])
        raw: list[tuple[int, int]] = []
        raw_lm: list[tuple[int, int]] = []
        e2e: dict[str, list[tuple[int, int]]] = {v: [] for v in variants}
        gc.collect()
        for i in range(iterations):
            raw.append(_timed(raw_predict, matrices[i % len(requests)]))
            if purchase is not None:
                raw_lm.append(_timed(lambdamart_predict, matrices[i % len(requests)]))
            for v, rank in variants.items():
                e2e[v].append(_timed(rank, requests[i % len(requests)]))
        r = _stats(raw)
        results[n] = {"raw": r, "max_diff": diff}
        lm = _stats(raw_lm) if raw_lm else None
        if lm is not None:
            results[n]["raw_lambdamart"] = lm
        for v in variants:
            e = _stats(e2e[v])
            results[n][v] = e
            print(f"{n:>10} {v:>18} {_cell(e, 'p50'):>15} {_cell(e, 'p99'):>15} {_cell(r, 'p50'):>15} "
                  f"{_cell(r, 'p99'):>15} {_ratio(e, r, 'p50'):>13} {_ratio(e, r, 'p99'):>13}")
            if lm is not None:
                print(f"{'':>10} {'vs LambdaMART raw':>18} {'':>15} {'':>15} {_cell(lm, 'p50'):>15} "
                      f"{_cell(lm, 'p99'):>15} {_ratio(e, lm, 'p50'):>13} {_ratio(e, lm, 'p99'):>13}")
        if compiled is not None:
            print(f"{'':>10} compiled scores: largest |difference| from LightGBM {diff:.1e}"
                  + ("  WARNING: above 1e-9" if diff > 1e-9 else ""))
    return results


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
    scorer = pipeline.purchase_model or pipeline.model
    relevance = scorer.predict(X)
    score = pipeline.policy.score(relevance, status.trust, group=[n])
    creators, merchants = ids["creator_id"].tolist(), ids["merchant_id"].tolist()
    order = pipeline.balancer.rerank(creators, merchants, score, status.trust, record=False)
    stages = {
        "parse + validate": lambda: pipeline.parse(request),
        "features + merchant status": lambda: pipeline.assembler.transform_with_status(columns),
        f"predict ({type(scorer).__name__}.predict)": lambda: scorer.predict(X),
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
    parser.add_argument("--no-reference", action="store_true",
                        help="time only the demo model / --bundle (no 200 x 63 reference: no training here, and "
                             "no cold compile of it, minutes on a busy machine)")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="leave the collector as it is (default: gc.freeze() after loading, as a service does)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        demo_uri, reference_uri = _bundles(args.seed, Path(tmp), args.bundle, not args.no_reference)
        gc.collect()  # the training data is gone: the process holds what a service would
        rankers = {"demo": FeedRanker.load(demo_uri, predictor="lightgbm")}
        if reference_uri is not None:
            rankers["reference (200 x 63)"] = FeedRanker.load(reference_uri, predictor="lightgbm")
        if not args.no_gc_freeze:
            gc.freeze()
        results = {name: bench_model(name, r, args.iterations, args.warmup, args.seed, Path(tmp) / "compiled")
                   for name, r in rankers.items()}
        # the breakdown of what serves by default: compiled trees when lleaves is installed (the
        # cache already holds them, from the timings above)
        breakdown(FeedRanker.load(demo_uri, predictor="auto", compile_cache=Path(tmp) / "compiled"), 500, 300,
                  args.seed)

    print(f"\nsummary at 500 candidates, ms, wall [thread CPU]; gc.freeze() after load: {not args.no_gc_freeze}")
    for name, by_size in results.items():
        at = by_size[500]
        r = at["raw"]
        lm = at.get("raw_lambdamart")
        what = "both purchase stages'" if lm is not None else "LightGBM"
        print(f"  {name}: raw {what} predict p50 {_cell(r, 'p50')}, p99 {_cell(r, 'p99')}")
        if lm is not None:
            print(f"  {name}: raw LambdaMART Booster.predict (not run by rank) p50 {_cell(lm, 'p50')}, "
                  f"p99 {_cell(lm, 'p99')}")
        for v in (k for k in at if k not in ("raw", "max_diff", "raw_lambdamart")):
            e = at[v]
            print(f"    rank, {v:<18} p50 {_cell(e, 'p50')} p99 {_cell(e, 'p99')}; end-to-end / raw predict "
                  f"p50 {_ratio(e, r, 'p50')}, p99 {_ratio(e, r, 'p99')}, p10 {_ratio(e, r, 'p10')} (target <= 1.0)")
            if lm is not None:
                print(f"      end-to-end / raw LambdaMART predict p50 {_ratio(e, lm, 'p50')}, p99 {_ratio(e, lm, 'p99')}")


if __name__ == "__main__":
    main()
