"""The Dask training backend against a real scheduler and two worker processes on 127.0.0.1.

Tiny data (one small simulated platform) so the whole module stays within seconds of
cluster start-up: the frame built on the cluster equals the in-process one, the models
trained both ways rank held-out requests alike, an unreachable scheduler is a one-line
error, and a worker killed during training is survived by a retry on the worker left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("distributed", reason="the dask extra (distributed) is part of the test extra")

START_TIMEOUT = 60.0
# held-out NDCG@10 of the Dask-trained ranker within this of the in-process one (absolute):
# data-parallel LightGBM bins features per worker and sums histograms, so trees differ slightly,
# and which partitions land on which worker changes from run to run. On this tiny dataset two
# fresh-clone runs differed from the in-process model by 0.005 and 0.041, so 0.03 was flaky;
# 0.06 is the stated tolerance for this size (docs/training.md), not the 3% bar on real sizes.
NDCG_TOLERANCE = 0.06
# the kill lands while LightGBM's workers boost: enough rounds that training outlasts the delay
KILL_AFTER_SECONDS = 2.0
KILLED_RUN_ROUNDS = 3000
# snapshot cadence of the frame: two snapshot times in the 14-day training window, so each
# partition still joins rows of more than one snapshot (the driver builds each of them)
SNAPSHOT_EVERY_DAYS = 7
# a cap below the training rows, so the Dask path really samples the click stage's requests
PURCHASE_ROWS = 3000


def _purchase_config() -> Any:
    from trustfeed.ranker.purchase import PurchaseModelConfig

    return PurchaseModelConfig(max_click_rows=PURCHASE_ROWS, min_data_in_leaf=20, min_data_in_leaf_purchase=10,
                               num_rounds=40, early_stopping_rounds=10)


PURCHASE = _purchase_config()
MODEL = {"num_rounds": 20, "early_stopping_rounds": 0, "min_rounds": 1, "min_data_in_leaf": 20, "num_leaves": 15,
         "position_bias": False}


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalDaskCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (each in its own process group)."""

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = root
        self.workers = workers
        self.processes: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.root / log, "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.root)
        self.processes.append(process)
        return process

    def start(self) -> LocalDaskCluster:
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self._spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                    "--dashboard-address", ":0", "--no-show", log="scheduler.log")
        for i in range(self.workers):
            self._spawn("distributed.cli.dask_worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                        "--nworkers", "1", "--no-dashboard", "--no-nanny", "--memory-limit", "1GB",
                        log=f"worker{i}.log")
        from distributed import Client

        deadline = time.monotonic() + START_TIMEOUT
        with Client(self.address, timeout=f"{START_TIMEOUT:.0f}s") as client:
            client.wait_for_workers(self.workers, timeout=max(1.0, deadline - time.monotonic()))
        return self

    def kill_worker(self) -> None:
        """SIGKILL the first worker process (no goodbye to the scheduler)."""
        os.killpg(self.processes[1].pid, signal.SIGKILL)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def events() -> Any:
    from trustfeed.features.events import validate_events
    from trustfeed.training.simulate import SimConfig, simulate

    return validate_events(simulate(SimConfig(seed=5, merchants=40, days=18)).tables)


# the impressions file the workers read, in row groups of this many rows (several per worker)
ROW_GROUP_ROWS = 1000


@pytest.fixture(scope="module")
def events_dir(events: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``events`` written as a dataset directory, its impressions in several row groups."""
    import pyarrow.parquet as pq

    from trustfeed.features.events import write_events

    directory = tmp_path_factory.mktemp("events") / "events"
    write_events(events, directory)
    table = pq.read_table(directory / "impressions.parquet")
    pq.write_table(table, directory / "impressions.parquet", row_group_size=ROW_GROUP_ROWS)
    return directory


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalDaskCluster]:
    """A cluster of the test's own (a test that kills a worker)."""
    running = LocalDaskCluster(tmp_path)
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDaskCluster]:
    """One cluster for the tests that leave it as they found it (each start costs seconds)."""
    running = LocalDaskCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        yield running.start()
    finally:
        running.stop()


def _windows(events: Any) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    ts = events["impressions"]["ts"]
    end = ts.max().floor("D") + pd.Timedelta(days=1)
    return ts.min().floor("D") + pd.Timedelta(days=11), ts.min().floor("D") + pd.Timedelta(days=14), end


def _fit_on_dask(events: Any, scheduler: str, progress: Any = None, rounds: int = MODEL["num_rounds"],
                 snapshot_every_days: int = SNAPSHOT_EVERY_DAYS, purchase_config: Any = None,
                 fresh_viewer_history: bool = False, events_dir: Path | None = None) -> Any:
    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.training._dask_training import fit_on_dask
    from trustfeed.training.dataset import DatasetConfig
    from trustfeed.training.train import plain_feature_schema

    valid_from, holdout, _ = _windows(events)
    config = DatasetConfig(snapshot_every_days=snapshot_every_days, fresh_viewer_history=fresh_viewer_history)
    return fit_on_dask(events, end=holdout, valid_from=valid_from, config=config,
                       model_config=LambdaMARTConfig(**{**MODEL, "num_rounds": rounds}), plain_config=None, plain_schema_of=plain_feature_schema,
                       scheduler=scheduler, partitions=3, progress=progress, purchase_config=purchase_config,
                       events_dir=events_dir)


def _held_out_ndcg(model: Any, frame: Any) -> float:
    from trustfeed.ranker.metrics import mean_ndcg

    score = model.predict(frame.features())
    ranked = frame.frame[["request_id", "label"]].assign(score=score)
    ranked["position"] = ranked.groupby("request_id", sort=False)["score"].rank(ascending=False, method="first")
    return float(mean_ndcg(ranked, 10).mean)


def test_dask_frame_and_model_match_in_process(events: Any, events_dir: Path, shared_cluster: LocalDaskCluster) -> None:
    from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    from trustfeed.training.dataset import DatasetConfig, build_training_frame, time_split

    said: list[str] = []
    # weekly snapshots with the viewer's history of each row's own day (each partition
    # advances its own cursor over the history the driver ships)
    on_dask = _fit_on_dask(events, shared_cluster.address, lambda message, *_: said.append(message),
                           purchase_config=PURCHASE, fresh_viewer_history=True, events_dir=events_dir)
    # the workers read the impressions file themselves, in parts (not the driver's copy)
    read = [m for m in said if "the workers read" in m]
    assert read and int(read[0].split("the workers read ")[1].split()[0]) > 2, said
    valid_from, holdout, end = _windows(events)
    config = DatasetConfig(snapshot_every_days=SNAPSHOT_EVERY_DAYS, fresh_viewer_history=True)
    frame = build_training_frame(events, end=holdout, config=config)
    fit_part, valid_part = time_split(frame, valid_from=valid_from)

    # the frame built per partition on the workers is the in-process frame, row for row
    columns = list(valid_part.frame.columns)
    pd.testing.assert_frame_equal(on_dask.valid_part.frame[columns], valid_part.frame)
    assert on_dask.train_rows == len(fit_part) and on_dask.train_requests == fit_part.groups().size
    assert on_dask.partitions >= 2  # the training really was spread over partitions

    local = LambdaMART(LambdaMARTConfig(**MODEL)).fit(
        fit_part.features(), fit_part.labels, fit_part.groups(), X_valid=valid_part.features(),
        y_valid=valid_part.labels, group_valid=valid_part.groups(), feature_names=frame.feature_names,
        categorical=frame.categorical, monotone=frame.monotone, feature_schema=frame.schema,
    )
    held_out = build_training_frame(events, start=holdout, end=end, config=config)
    distributed, in_process = _held_out_ndcg(on_dask.model, held_out), _held_out_ndcg(local, held_out)
    assert abs(distributed - in_process) <= NDCG_TOLERANCE, (distributed, in_process)
    # and both learned something: better than a random order of the same lists
    shuffled = held_out.frame[["request_id", "label"]].assign(score=np.random.default_rng(0).random(len(held_out)))
    shuffled["position"] = shuffled.groupby("request_id", sort=False)["score"].rank(method="first")
    from trustfeed.ranker.metrics import mean_ndcg

    assert min(distributed, in_process) > float(mean_ndcg(shuffled, 10).mean) + 0.05

    # the purchase model fitted from rows drawn on the workers is the one the same draw of the
    # in-process frame gives, exactly (the sample is a hash of request_id, not of the placement)
    from trustfeed.ranker.purchase import PurchaseModel
    from trustfeed.training._dask_training import in_request_sample
    from trustfeed.training.train import _purchase_rows, _purchased

    assert on_dask.purchase_model is not None, on_dask.purchase_fitted
    flags = _purchased(events["impressions"])
    bought = _purchase_rows(fit_part, events["impressions"], flags) >= 0
    bought_valid = _purchase_rows(valid_part, events["impressions"], flags) >= 0
    clicked = (fit_part.labels >= 1) | bought
    drawn = in_request_sample(fit_part.frame["request_id"].to_numpy(), PURCHASE.max_click_rows / len(fit_part),
                              PURCHASE.seed)
    assert 0 < drawn.sum() < len(fit_part)  # the cap really sampled
    X = fit_part.features()
    local_purchase = PurchaseModel(PURCHASE).fit_sampled(
        (X[drawn], clicked[drawn], fit_part.positions[drawn]), (X[clicked], bought[clicked]),
        (valid_part.features(), valid_part.labels >= 1, bought_valid, valid_part.positions), train_rows=len(fit_part),
        feature_names=frame.feature_names, categorical=frame.categorical, monotone=frame.monotone)
    assert np.array_equal(on_dask.purchase_model.predict(held_out.features()), local_purchase.predict(held_out.features()))
    assert on_dask.purchase_fitted["purchase_model.click_rows"] == int(drawn.sum())
    # and the pandas backend's purchase model is that one too (same hash sample of requests)
    from trustfeed.training.train import fit_purchase_model

    pandas_purchase, pandas_fitted = fit_purchase_model(PURCHASE, fit_part, valid_part, events["impressions"])
    assert pandas_purchase is not None, pandas_fitted
    assert np.array_equal(pandas_purchase.predict(held_out.features()), local_purchase.predict(held_out.features()))
    assert pandas_fitted["purchase_model.click_rows"] == int(drawn.sum())
    assert on_dask.purchase_fitted["purchase_model.train_purchases"] == int(bought.sum()) == len(on_dask.fit_purchases)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=1, max_size=40), cut=st.integers(0, 40),
       share=st.floats(0.0, 1.0), more=st.floats(0.0, 1.0), seed=st.integers(0, 3))
def test_the_request_sample_takes_whole_requests_wherever_they_are_partitioned(
        sizes: list[int], cut: int, share: float, more: float, seed: int) -> None:
    from trustfeed.training._dask_training import in_request_sample

    ids = np.repeat(np.array([f"r{i}" for i in range(len(sizes))], dtype=object), sizes)
    drawn = in_request_sample(ids, share, seed)
    for request in np.unique(ids):  # all rows of a request or none
        assert len(set(drawn[ids == request])) == 1
    # two partitions draw what the whole does
    assert np.array_equal(np.r_[in_request_sample(ids[:cut], share, seed), in_request_sample(ids[cut:], share, seed)],
                          drawn)
    # a larger share keeps every request a smaller one drew
    assert not (drawn & ~in_request_sample(ids, min(1.0, share + more), seed)).any()


def test_a_worker_killed_during_training_stops_the_job_with_one_line(events: Any, cluster: LocalDaskCluster) -> None:
    from trustfeed.features.errors import ClusterError

    def progress(message: str, *_: Any) -> None:
        if message.startswith("Dask: training LambdaMART"):
            threading.Timer(KILL_AFTER_SECONDS, cluster.kill_worker).start()

    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ left while training LambdaMART") as caught:
        # one snapshot: this test is about training, not the frame
        _fit_on_dask(events, cluster.address, progress, rounds=KILLED_RUN_ROUNDS, snapshot_every_days=30)
    assert cluster.processes[1].poll() is not None  # the worker really is gone
    assert "\n" not in str(caught.value)
    # well before LightGBM's own network timeout: the driver noticed the worker leave
    assert time.monotonic() - started < 60


def test_an_impressions_file_unlike_the_loaded_log_is_a_one_line_error(
        events: Any, events_dir: Path, shared_cluster: LocalDaskCluster, tmp_path: Path) -> None:
    """The workers read the file the driver loaded: one that lost rows since, or that they cannot
    read, stops the job with one line before any training."""
    import shutil

    import pyarrow.parquet as pq

    from trustfeed.features.errors import ClusterError, SchemaError

    changed = tmp_path / "events"
    shutil.copytree(events_dir, changed)
    table = pq.read_table(events_dir / "impressions.parquet")
    pq.write_table(table.slice(0, table.num_rows // 2), changed / "impressions.parquet", row_group_size=ROW_GROUP_ROWS)
    with pytest.raises(SchemaError, match=r"read by the workers \(the file changed since\)") as caught:
        _fit_on_dask(events, shared_cluster.address, snapshot_every_days=30, events_dir=changed)
    assert "\n" not in str(caught.value)

    (changed / "impressions.parquet").write_bytes(b"not parquet")
    with pytest.raises((SchemaError, ClusterError), match=r"impressions\.parquet") as unreadable:
        _fit_on_dask(events, shared_cluster.address, snapshot_every_days=30, events_dir=changed)
    assert "\n" not in str(unreadable.value)


def test_unreachable_scheduler_is_a_one_line_error(events: Any) -> None:
    from trustfeed.features.errors import ClusterError
    from trustfeed.training._dask_training import dask_client

    with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9") as caught:
        with dask_client("tcp://127.0.0.1:9", connect_timeout="2s"):
            pass
    assert "\n" not in str(caught.value)



def test_dask_and_pandas_jobs_fit_the_same_policy_and_rank_alike(
        shared_cluster: LocalDaskCluster, events: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's fitting on both backends, same data and config: every fitted value (purchase model,
    the purchases the bad-order model is fitted on, calibration, bad-order cost, balancer target) is
    the same, the bundles differ in LambdaMART's files only and rank requests the same (the policy
    ranks on the purchase model; the Dask LambdaMART differs and is not deterministic)."""
    from trustfeed.features._trust_config import TrustConfig
    from trustfeed.ranker.balancer import ExposureBalancer
    from trustfeed.ranker.bundle import save_bundle
    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.ranker.pipeline import RankingPipeline
    from trustfeed.serving import FeedRanker
    from trustfeed.training import train as job
    from trustfeed.training.dataset import DatasetConfig
    from trustfeed.training.evaluation import requests_from_impressions

    monkeypatch.setattr(job, "_MIN_PURCHASES", 5)  # a tiny platform: fit the policy on few purchases
    # a trust index fitted on a week's horizon: the serving snapshot's is fitted, the training
    # snapshots' are not, so which purchases fit the bad-order model depends on the index sources
    trust = TrustConfig(min_fit_merchants=10, horizon_days=7)
    config = job.TrainJobConfig(
        events=tmp_path, train_plain=False, evaluate=False, model=LambdaMARTConfig(**MODEL), purchase_model=PURCHASE,
        dataset=DatasetConfig(snapshot_every_days=SNAPSHOT_EVERY_DAYS, trust=trust),
    )
    windows = job._windows(events, None, config.validation_fraction, config.evaluation.holdout_fraction)
    fits = {backend: job._fit_job(replace(config, backend=backend, scheduler=scheduler), events, windows, lambda *_: None)
            for backend, scheduler in (("pandas", None), ("dask", shared_cluster.address))}
    pandas_fit, dask_fit = fits["pandas"], fits["dask"]
    # as MLflow logs them (repr: NaN is a value here, e.g. a bad-order cost not measured)
    assert {k: repr(v) for k, v in dask_fit.fitted.items()} == {k: repr(v) for k, v in pandas_fit.fitted.items()}
    # the sample path and the serving-scale choice of bad-order rows were really exercised
    assert pandas_fit.fitted["purchase_model.click_rows"] < pandas_fit.fitted["purchase_model.train_rows"]
    assert pandas_fit.fitted["policy.bad_model_source"].startswith("index calibration")
    assert pandas_fit.policy.is_fitted and dask_fit.policy.state == pandas_fit.policy.state
    assert dask_fit.balancer == pandas_fit.balancer

    bundles = {}
    for backend, fit in fits.items():
        snapshot, context = fit.tables_later[0]
        pipeline = RankingPipeline.from_tables(snapshot, context, fit.model, fit.policy, ExposureBalancer(fit.balancer),
                                               schema=fit.model.feature_schema_, purchase_model=fit.purchase_model)
        bundles[backend] = tmp_path / backend
        save_bundle(pipeline, bundles[backend])
    files = sorted(str(p.relative_to(bundles["pandas"])) for p in bundles["pandas"].rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(bundles["dask"])) for p in bundles["dask"].rglob("*") if p.is_file())
    assert any(f.startswith("purchase_model/") for f in files) and "policy_state.json" in files
    differ = [f for f in files if (bundles["pandas"] / f).read_bytes() != (bundles["dask"] / f).read_bytes()]
    assert set(differ) <= {"model.txt", "schema.json", "MANIFEST.json"}, differ

    impressions = events["impressions"]
    latest = impressions.sort_values("ts")["request_id"].drop_duplicates().iloc[-5:]
    requests = requests_from_impressions(impressions.loc[impressions["request_id"].isin(latest)])
    pandas_ranker, dask_ranker = FeedRanker.load(bundles["pandas"]), FeedRanker.load(bundles["dask"])
    for request in requests:
        served, other = pandas_ranker.rank(request), dask_ranker.rank(request)
        assert len(served["items"]) > 1
        assert [(i["stream_id"], i["score"]) for i in served["items"]] == [(i["stream_id"], i["score"]) for i in other["items"]]


@settings(max_examples=25, deadline=None)
@given(starts=st.lists(st.integers(0, 10 * 24 * 60), min_size=1, max_size=30), spans=st.lists(st.integers(0, 600), min_size=30,
       max_size=30), every=st.integers(1, 4), per_period=st.integers(1, 3))
def test_a_request_goes_whole_to_a_partition_of_the_period_it_starts_in(
        starts: list[int], spans: list[int], every: int, per_period: int) -> None:
    from trustfeed.training._dask_training import _period_key, _plan_window, _window_rows
    from trustfeed.training.dataset import DatasetConfig

    # each request: two impressions, the second up to 10 hours after the first (past midnight too)
    first = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.array(starts), unit="min")
    ts = np.r_[first, first + pd.to_timedelta(np.array(spans[:len(starts)]), unit="min")]
    ids = np.r_[[f"r{i}" for i in range(len(starts))] * 2]
    impressions = pd.DataFrame({"request_id": ids, "ts": pd.DatetimeIndex(ts)})
    end = impressions["ts"].max() + pd.Timedelta(seconds=1)

    class Log:
        tables = {"impressions": impressions, "merchants": pd.DataFrame({"registered_at": pd.Series([], dtype="datetime64[ns, UTC]")})}

        def __getitem__(self, name: str) -> pd.DataFrame:
            return self.tables[name]

    window = _plan_window(Log(), end, DatasetConfig(snapshot_every_days=every))  # type: ignore[arg-type]
    keyed = _period_key(_window_rows(impressions, window), window, per_period)
    parts = keyed.groupby("request_id")["_part"].agg(["nunique", "first"])
    assert (parts["nunique"] == 1).all()  # whole requests
    assert keyed["_part"].between(0, len(window.times) * per_period - 1).all()
    # the period of the request's first impression; every row reads that snapshot or the next
    start = keyed.groupby("request_id")["ts"].min()
    period = parts["first"] // per_period
    expected = pd.Index(window.times).get_indexer(pd.Index(start.loc[parts.index].dt.floor("D").map(
        lambda t: window.anchor.floor("D") + pd.Timedelta(days=((t - window.anchor.floor("D")).days // every) * every))))
    assert np.array_equal(period.to_numpy(), expected)
    row_period = pd.Index(window.times).get_indexer(pd.Index(keyed["snapshot_at"]))
    assert ((row_period - keyed["_part"].to_numpy() // per_period) >= 0).all()
    assert ((row_period - keyed["_part"].to_numpy() // per_period) <= 1).all()


def test_a_partition_without_the_snapshot_its_rows_read_is_a_one_line_error(events: Any) -> None:
    from trustfeed.features.errors import SchemaError
    from trustfeed.training._dask_training import _label_events, _partition_frame, _plan_window, _window_rows
    from trustfeed.training.dataset import DatasetConfig

    config = DatasetConfig(snapshot_every_days=SNAPSHOT_EVERY_DAYS)
    _, holdout, _ = _windows(events)
    window = _plan_window(events, holdout, config)
    rows = _window_rows(events["impressions"], window).iloc[:50]
    with pytest.raises(SchemaError, match="two snapshot periods") as caught:
        _partition_frame(rows, {}, _label_events(events), {"feature_names": ["x"]}, config)
    assert "\n" not in str(caught.value)
