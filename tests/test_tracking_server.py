"""Training against a real ``mlflow server`` (sqlite backend, served local artifact root).

The shared session model is trained against the server and registered; here it is loaded
back by ``models:/NAME@challenger``. A job that reaches the server through a TCP relay
loses it mid-run (the relay closes): the job must fail with one clear line and keep the
trained bundle on disk.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from trustfeed.training.cli import main
from trustfeed.training.registry import TrackingUnavailableError, tracking_uri_set_to


def _request(events_dir: Path) -> dict[str, Any]:
    from trustfeed.features.events import load_events
    from trustfeed.training.evaluation import requests_from_impressions

    impressions = load_events(events_dir)["impressions"].sort_values(["ts", "request_id", "position"])
    request_id = impressions["request_id"].iloc[-1]
    return requests_from_impressions(impressions.loc[impressions["request_id"] == request_id])[0]


def test_server_artifacts_live_in_the_served_root(trained: Any) -> None:
    """The run's artifacts went through the server into its --artifacts-destination."""
    stored = list((trained.server.root / "artifacts").rglob("MANIFEST.json"))
    assert stored, "the bundle was uploaded through the server"


def test_model_loads_back_by_alias_and_ranks_a_request(trained: Any) -> None:
    import mlflow

    request = _request(trained.events_dir)
    with tracking_uri_set_to(trained.server.uri):
        model = mlflow.pyfunc.load_model(f"models:/{trained.registered_name}@challenger")
        response = model.predict([request])[0]
    sent = sorted(c["stream_id"] for c in request["candidates"])
    back = sorted([i["stream_id"] for i in response["items"]] + [f["stream_id"] for f in response["filtered"]])
    assert back == sent
    for item in response["items"]:
        assert set(item) >= {"stream_id", "creator_id", "merchant_id", "score", "relevance", "trust"}
    scores = [i["relevance"] for i in response["items"]]
    assert all(isinstance(s, float) for s in scores)


def test_feed_ranker_loads_the_alias_from_the_server(trained: Any) -> None:
    from trustfeed.serving import FeedRanker

    request = _request(trained.events_dir)
    by_alias = FeedRanker.load(f"models:/{trained.registered_name}@challenger", tracking_uri=trained.server.uri,
                               predictor="lightgbm")
    local = FeedRanker.load(trained.result.bundle_dir, predictor="lightgbm")
    assert by_alias.model_id == local.model_id
    assert [i["stream_id"] for i in by_alias.rank(request)["items"]] == [i["stream_id"] for i in local.rank(request)["items"]]


def test_server_going_away_mid_run_fails_clearly_and_keeps_the_bundle(training_support: Any, trained: Any, tmp_path: Path) -> None:
    from trustfeed.ranker.bundle import verify_bundle
    from trustfeed.ranker.lambdamart import LambdaMARTConfig
    from trustfeed.training.evaluation import EvalConfig
    from trustfeed.training.train import TrainJobConfig, train

    support = training_support
    # the job reaches the real server through a relay; closing the relay is the server
    # disappearing (connections dropped, new ones refused) while the shared server lives on
    relay = support.TcpProxy(trained.server.port)
    steps: list[str] = []

    def progress(step: str, done: int | None = None, total: int | None = None) -> None:
        steps.append(step)
        if step.startswith("training LambdaMART"):
            relay.close()  # the run and its params exist; everything after must fail cleanly

    config = TrainJobConfig(
        events=trained.events_dir, tracking_uri=relay.uri, output_dir=tmp_path / "models", train_plain=False,
        model=LambdaMARTConfig(**support.TINY_MODEL),
        evaluation=EvalConfig(sweep_strengths=(0.0,), max_requests=40), tracking_retries=1,
    )
    started = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailableError) as failure:
            train(config, progress=progress)
    finally:
        relay.close()
    assert time.monotonic() - started < 180
    message = str(failure.value)
    assert "\n" not in message
    assert relay.uri in message
    bundles = list((tmp_path / "models").glob("*/bundle"))
    assert len(bundles) == 1
    assert str(bundles[0]) in message
    verify_bundle(bundles[0])
    assert any(s.startswith("training LambdaMART") for s in steps)
    assert not any(s.startswith("registering") for s in steps)


def test_unreachable_server_fails_before_training_with_one_line(training_support: Any, 
    trained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    support = training_support
    monkeypatch.chdir(tmp_path)
    dead = f"http://127.0.0.1:{support.free_port()}"
    started = time.monotonic()
    status = main(["train", "--events", str(trained.events_dir), "--tracking-uri", dead])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1
    assert err[-1].startswith("trustfeed train: error:") and dead in err[-1]
    assert not (tmp_path / "trustfeed-models").exists()  # nothing trained, nothing to keep
    assert time.monotonic() - started < 60


def test_runs_uri_loads_from_the_server_with_an_explicit_tracking_uri(
    trained: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustfeed.serving import FeedRanker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    ranker = FeedRanker.load(trained.result.model_uri, tracking_uri=trained.server.uri, predictor="lightgbm")
    assert trained.result.model_uri.startswith("runs:/")
    assert ranker.model_id == FeedRanker.load(trained.result.bundle_dir, predictor="lightgbm").model_id
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["promote", "rank"])
def test_a_dead_tracking_server_fails_in_seconds_with_one_line(
    training_support: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    # no MLflow retry settings from outside: the command's own bounds are what is tested
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    dead = f"http://127.0.0.1:{training_support.free_port()}"
    argv = {
        "promote": ["promote", "feed", "--tracking-uri", dead],
        "rank": ["rank", "--model", "models:/feed@champion", "--tracking-uri", dead,
                 "--requests", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "o.jsonl")],
    }[command]
    started = time.monotonic()
    status = main(argv)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"trustfeed {command}: error:"), err
    assert elapsed < 30
