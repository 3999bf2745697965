"""FeedRanker: loading from every kind of URI, thread-safe reloads, the ledger, rank_file."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from trustfeed.features.errors import ModelIntegrityError
from trustfeed.ranker.bundle import save_bundle
from trustfeed.serving import FeedRanker, RequestError, rank_file


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture(scope="module")
def bundles(fx: Any, parts: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bundles of different models over the same snapshot ("a": 12 trees, "b": 4)."""
    root = tmp_path_factory.mktemp("serving")
    other = fx.trained_parts(num_rounds=4)
    save_bundle(fx.make_pipeline(parts), root / "a")
    save_bundle(fx.make_pipeline(other), root / "b")
    return {"a": root / "a", "b": root / "b"}


def _reference_relevance(bundle: Path, requests: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    ranker = FeedRanker.load(bundle, record_served=False)
    return {
        (r["request_id"], item["stream_id"]): item["relevance"]
        for r in ranker.rank_many(requests)
        for item in r["items"]
    }


# --------------------------------------------------------------------------- loading


def test_load_a_bundle_directory_and_rank(bundles: dict[str, Path], parts: Any) -> None:
    ranker = FeedRanker.load(bundles["a"])
    response = ranker.rank(parts.requests[0])
    assert response["model"] == ranker.model_id and len(ranker.model_id) == 16
    assert len(response["items"]) + len(response["filtered"]) == len(parts.requests[0]["candidates"])
    assert ranker.model_uri == str(bundles["a"])


def test_load_an_mlflow_model_directory(bundles: dict[str, Path], tmp_path: Path, parts: Any) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(bundles["a"], model_dir / "artifacts" / "bundle")
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    shutil.copytree(bundles["a"] / "snapshot", model_dir / "artifacts" / "plain_model")  # no MANIFEST: ignored
    ranker = FeedRanker.load(model_dir)
    assert ranker.model_id == FeedRanker.load(bundles["a"]).model_id


def test_a_bundle_one_level_down_is_found(bundles: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(bundles["b"], tmp_path / "outer" / "whatever")
    assert FeedRanker.load(tmp_path / "outer").model_id == FeedRanker.load(bundles["b"]).model_id
    assert FeedRanker.load(f"file://{tmp_path / 'outer'}").model_id == FeedRanker.load(bundles["b"]).model_id


def test_no_bundle_or_two_bundles_is_an_integrity_error(bundles: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelIntegrityError, match="MANIFEST.json"):
        FeedRanker.load(tmp_path / "empty")
    shutil.copytree(bundles["a"], tmp_path / "two" / "x")
    shutil.copytree(bundles["b"], tmp_path / "two" / "y")
    with pytest.raises(ModelIntegrityError, match="ambiguous"):
        FeedRanker.load(tmp_path / "two")
    with pytest.raises(FileNotFoundError):
        FeedRanker.load(tmp_path / "does-not-exist")


def test_tampered_bundle_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["a"], bundle)
    model = bundle / "model.txt"
    model.write_text(model.read_text().replace("learning_rate", "learning_ratf", 1))
    with pytest.raises(ModelIntegrityError) as error:
        FeedRanker.load(bundle)
    assert error.value.path == "model.txt"


@pytest.mark.slow
def test_load_from_mlflow_runs_and_registry_uris(
    bundles: dict[str, Path], tmp_path: Path, parts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's defaults must not touch the repository
    from mlflow.tracking import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    experiment = client.create_experiment("serving-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(bundles["a"]), "model/artifacts/bundle")
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "MLmodel"), "model")
    client.set_terminated(run.info.run_id)
    expected = FeedRanker.load(bundles["a"]).rank(parts.requests[0], log_features=False)

    by_run = FeedRanker.load(f"runs:/{run.info.run_id}/model", tracking_uri=tracking)
    assert by_run.rank(parts.requests[0]) == expected

    client.create_registered_model("feed")
    version = client.create_model_version("feed", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("feed", "champion", version.version)
    by_alias = FeedRanker.load("models:/feed@champion", tracking_uri=tracking)
    assert by_alias.rank(parts.requests[0]) == expected
    with pytest.raises(ModelIntegrityError):
        FeedRanker.load(f"runs:/{'0' * 32}/model", tracking_uri=tracking)


# --------------------------------------------------------------------------- reload


@pytest.mark.parametrize("predictor", ["lightgbm", "compiled"])
def test_reload_under_concurrent_ranking_never_mixes_models(
    bundles: dict[str, Path], parts: Any, predictor: str, tmp_path: Path
) -> None:
    from trustfeed.serving._compiled import compiled_available

    if predictor == "compiled" and not compiled_available():
        pytest.skip("the compiled extra (lleaves) is not installed")
    requests = parts.requests[:24]
    reference = {
        FeedRanker.load(path).model_id: _reference_relevance(path, requests) for path in bundles.values()
    }
    assert len(reference) == 2
    # 8 threads rank while another reloads 6 times; compiled: every reload compiles (cached)
    ranker = FeedRanker.load(bundles["a"], predictor=predictor, compile_cache=tmp_path / "compiled")
    assert ranker.predictor == predictor
    errors: list[BaseException] = []
    responses: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def rank_loop(offset: int) -> None:
        try:
            i = offset
            while not stop.is_set() or i < offset + len(requests):
                response = ranker.rank(requests[i % len(requests)])
                with lock:
                    responses.append(response)
                i += 1
        except BaseException as error:  # noqa: BLE001 - the test reports any failure
            errors.append(error)

    def reload_loop() -> None:
        try:
            for i in range(6):
                ranker.reload(bundles["b" if i % 2 == 0 else "a"])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
        finally:
            stop.set()

    threads = [threading.Thread(target=rank_loop, args=(3 * n,)) for n in range(8)]
    reloader = threading.Thread(target=reload_loop)
    for thread in threads + [reloader]:
        thread.start()
    for thread in threads + [reloader]:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads + [reloader])
    seen_models = {r["model"] for r in responses}
    assert seen_models == set(reference)  # both models served
    for response in responses:
        relevance = reference[response["model"]]
        for item in response["items"]:
            # compiled trees give LightGBM's scores to 1e-9 (exactly, with LightGBM itself)
            assert item["relevance"] == pytest.approx(relevance[(response["request_id"], item["stream_id"])],
                                                      abs=1e-9 if predictor == "compiled" else 0.0, rel=0.0)


def test_failed_reload_keeps_the_old_model(bundles: dict[str, Path], tmp_path: Path, parts: Any) -> None:
    ranker = FeedRanker.load(bundles["a"])
    before = ranker.model_id
    broken = tmp_path / "broken"
    shutil.copytree(bundles["b"], broken)
    (broken / "policy.json").write_text("{}")
    with pytest.raises(ModelIntegrityError) as error:
        ranker.reload(broken)
    assert error.value.path == "policy.json"
    assert ranker.model_id == before and ranker.model_uri == str(bundles["a"])
    assert ranker.rank(parts.requests[0])["model"] == before


def test_reload_carries_the_exposure_ledger_over(bundles: dict[str, Path], parts: Any) -> None:
    ranker = FeedRanker.load(bundles["a"])
    ranker.rank_many(parts.requests[:10])
    ledger = ranker.pipeline.balancer.creator_exposure()
    assert ranker.reload(bundles["b"]) == FeedRanker.load(bundles["b"]).model_id
    pd.testing.assert_series_equal(ranker.pipeline.balancer.creator_exposure(), ledger)
    ranker.reload(bundles["a"], keep_ledger=False)
    fresh = FeedRanker.load(bundles["a"]).pipeline.balancer.creator_exposure()
    pd.testing.assert_series_equal(ranker.pipeline.balancer.creator_exposure(), fresh)


def test_record_impressions_feeds_the_ledger(bundles: dict[str, Path]) -> None:
    ranker = FeedRanker.load(bundles["a"], record_served=False)
    before = ranker.pipeline.balancer.creator_exposure()
    ranker.record_impressions([
        {"request_id": "r9", "creator_id": "creator-seen", "merchant_id": "m1", "position": 1},
        {"request_id": "r9", "creator_id": "creator-seen", "merchant_id": "m1", "position": 3},
    ])
    after = ranker.pipeline.balancer.creator_exposure()
    assert after["creator-seen"] == pytest.approx(1.0 + 0.5)
    assert after.drop("creator-seen").sum() == pytest.approx(before.sum())


def test_record_served_false_ranks_without_touching_the_ledger(bundles: dict[str, Path], parts: Any) -> None:
    ranker = FeedRanker.load(bundles["a"], record_served=False)
    balancer = ranker.pipeline.balancer
    before = balancer.creator_exposure()
    ranker.rank_many(parts.requests[:5])
    # candidates join the population the Gini is measured over, but no exposure is added
    after = balancer.creator_exposure()
    assert after.reindex(before.index).equals(before) and after.sum() == before.sum()
    assert balancer.state_dict()["requests"] == 0


def test_feature_logging_through_the_ranker(bundles: dict[str, Path], parts: Any) -> None:
    ranker = FeedRanker.load(bundles["a"])
    response = ranker.rank(parts.requests[0], log_features=True)
    assert all(list(item["features"]) == list(ranker.feature_names) for item in response["items"])


def test_rank_raises_request_error(bundles: dict[str, Path]) -> None:
    ranker = FeedRanker.load(bundles["a"])
    with pytest.raises(RequestError) as error:
        ranker.rank({"request_id": "r", "user_id": "u", "ts": "2026-01-01", "candidates": [{"stream_id": "s"}]})
    assert error.value.field == "candidates[0].creator_id"


# --------------------------------------------------------------------------- rank_file


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_rank_file_matches_the_python_api_and_survives_bad_lines(bundles: dict[str, Path], parts: Any, tmp_path: Path) -> None:
    requests = parts.requests[:12]
    bad_request = dict(requests[3], ts="yesterday", request_id="bad-ts")
    lines = [json.dumps(r) for r in requests[:5]] + ["{not json", json.dumps(bad_request), "", json.dumps([1, 2])]
    lines += [json.dumps(r) for r in requests[5:]]
    _write_lines(tmp_path / "in.jsonl", lines)
    summary = rank_file(bundles["a"], tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert summary.startswith("ranked 12 requests (3 errors)")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == 15  # one line per non-blank input line, in order
    assert out[5]["request_id"] is None and "line 6" in out[5]["error"] and "JSON" in out[5]["error"]
    assert out[6] == {"request_id": "bad-ts", "error": out[6]["error"]} and "'ts'" in out[6]["error"]
    assert out[7]["request_id"] is None and "request" in out[7]["error"]
    ranked = [o for o in out if "error" not in o]
    api = FeedRanker.load(bundles["a"])
    expected = [json.loads(json.dumps(api.rank(r))) for r in requests]
    assert ranked == expected
    for request, response in zip(requests, ranked, strict=True):
        returned = [i["stream_id"] for i in response["items"]] + [f["stream_id"] for f in response["filtered"]]
        assert sorted(returned) == sorted(c["stream_id"] for c in request["candidates"])


def test_rank_file_does_not_leave_output_when_the_model_is_bad(tmp_path: Path) -> None:
    _write_lines(tmp_path / "in.jsonl", ["{}"])
    with pytest.raises(ModelIntegrityError):
        rank_file(tmp_path, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_trustfeed_rank_command(bundles: dict[str, Path], parts: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trustfeed.training.cli import main

    snapshot = tmp_path / "snapshot"
    parts.snapshot.save(snapshot)
    _write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in parts.requests[:4]] + ["oops"])
    status = main(["rank", "--model", str(bundles["a"]), "--requests", str(tmp_path / "in.jsonl"),
                   "--out", str(tmp_path / "out.jsonl"), "--snapshot", str(snapshot)])
    assert status == 0
    assert "ranked 4 requests (1 errors)" in capsys.readouterr().out
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[0]["model"].startswith(FeedRanker.load(bundles["a"]).model_id + "+snapshot-")
    status = main(["rank", "--model", str(tmp_path / "nowhere"), "--requests", str(tmp_path / "in.jsonl"),
                   "--out", str(tmp_path / "out2.jsonl")])
    assert status == 2 and not (tmp_path / "out2.jsonl").exists()


def test_rank_file_across_chunks_equals_ranking_in_turn(
    bundles: dict[str, Path], parts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustfeed.serving import _batch

    monkeypatch.setattr(_batch, "_CHUNK", 4)  # several chunks, a bad line inside one
    requests = parts.requests[:11]
    lines = [json.dumps(r) for r in requests]
    lines.insert(6, '{"request_id": "half"')
    _write_lines(tmp_path / "in.jsonl", lines)
    rank_file(bundles["a"], tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "error" in out[6] and len(out) == 12
    api = FeedRanker.load(bundles["a"])
    assert [o for o in out if "error" not in o] == [json.loads(json.dumps(api.rank(r))) for r in requests]
