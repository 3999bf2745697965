"""The training job: what it records in MLflow, the model it logs, and its config.

The end-to-end checks share one model trained once per session against a real
``mlflow server`` (see ``_training_support.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from trustfeed.features.errors import ConfigError
from trustfeed.training.evaluation import EvalConfig
from trustfeed.training.train import TrainJobConfig, flatten_params, plain_feature_schema


@pytest.fixture(scope="session")
def client(trained: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=trained.server.uri, registry_uri=trained.server.uri)


@pytest.fixture(scope="session")
def run(trained: Any, client: Any) -> Any:
    return client.get_run(trained.result.run_id)


# ----------------------------------------------------------------------------- MLflow run


def test_every_config_value_is_a_param(trained: Any, run: Any) -> None:
    expected = flatten_params(trained.config.to_dict())
    logged = run.data.params
    assert set(expected) <= set(logged)
    for key in ("model.learning_rate", "model.num_rounds", "policy.trust_weight", "balancer.target_gini",
                "dataset.snapshot_every_days", "dataset.context.engagement_prior_strength", "evaluation.fair_p"):
        assert logged[key] == expected[key]
    assert logged["model.num_rounds"] == str(trained.config.model.num_rounds)


def test_validation_ndcg_is_logged_per_boosting_round(trained: Any, client: Any, run: Any) -> None:
    history = client.get_metric_history(trained.result.run_id, "valid_ndcg_at_10")
    steps = sorted(m.step for m in history)
    assert len(steps) >= 2
    assert steps == list(range(1, len(steps) + 1))
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert 1 <= run.data.metrics["best_iteration"] <= len(steps)


@pytest.mark.parametrize(
    "name",
    ["ndcg_at_5", "ndcg_at_10", "gini", "gini_no_balancer", "long_tail_share", "long_tail_share_no_balancer",
     "bad_order_exposure", "trust_weighted_exposure", "plain.ndcg_at_10", "plain.gini"],
)
def test_final_held_out_metrics_are_logged(run: Any, name: str) -> None:
    value = run.data.metrics[name]
    assert math.isfinite(value) and 0.0 <= value <= 1.0


def test_counterfactual_outcomes_are_consistent(run: Any) -> None:
    metrics = run.data.metrics
    for policy in ("logging", "plain", "trust_aware", "served"):
        orders = metrics[f"counterfactual.{policy}.expected_orders"]
        good = metrics[f"counterfactual.{policy}.good_orders"]
        bad = metrics[f"counterfactual.{policy}.bad_orders"]
        assert orders > 0 and good >= 0 and bad >= 0
        assert good + bad == pytest.approx(orders)
        assert metrics[f"counterfactual.{policy}.net_value"] == pytest.approx(good - 2 * bad)
        assert metrics[f"counterfactual.{policy}.bad_order_rate"] == pytest.approx(bad / orders)


def test_tags_record_data_range_snapshot_and_commit(trained: Any, client: Any, run: Any, tmp_path: Path) -> None:
    import pandas as pd

    tags = run.data.tags
    start, valid, held, end = (pd.Timestamp(tags[f"trustfeed.{k}"]) for k in
                               ("data_start", "valid_start", "heldout_start", "data_end"))
    assert start < valid < held < end
    local = client.download_artifacts(trained.result.run_id, "snapshot_manifest.json", str(tmp_path))
    digest = hashlib.sha256(Path(local).read_text().rstrip("\n").encode()).hexdigest()
    assert tags["trustfeed.snapshot_manifest_sha256"] == digest
    manifest = json.loads(Path(local).read_text())
    assert pd.Timestamp(manifest["as_of"]) == end  # the bundle is ready to serve the present
    commit = tags.get("mlflow.source.git.commit")
    repo_is_git = (Path(__file__).resolve().parents[1] / ".git").exists()
    assert (commit is not None and len(commit) == 40) == repo_is_git


def test_artifacts_hold_importance_manifest_report_and_models(trained: Any, client: Any) -> None:
    run_id = trained.result.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"feature_importance.csv", "snapshot_manifest.json", "evaluation", "plain_model"} <= top
    evaluation = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/metrics.json"} <= evaluation


def test_feature_importance_covers_the_models_features(trained: Any, client: Any, tmp_path: Path) -> None:
    import pandas as pd

    from trustfeed.ranker.bundle import load_bundle

    local = client.download_artifacts(trained.result.run_id, "feature_importance.csv", str(tmp_path))
    table = pd.read_csv(local)
    pipeline = load_bundle(trained.result.bundle_dir)
    assert sorted(table["feature"]) == sorted(pipeline.feature_names)
    assert table["gain_share"].sum() == pytest.approx(1.0)


def test_local_bundle_is_a_verified_bundle(trained: Any) -> None:
    from trustfeed.ranker.bundle import verify_bundle

    manifest = verify_bundle(trained.result.bundle_dir)
    assert "model.txt" in manifest["files"]
    assert trained.result.bundle_dir.is_relative_to(trained.output_dir)
    assert trained.result.report_path is not None and trained.result.report_path.is_file()


# ----------------------------------------------------------------------------- the model


def _request(trained: Any) -> dict[str, Any]:
    from trustfeed.features.events import load_events
    from trustfeed.training.evaluation import requests_from_impressions

    impressions = load_events(trained.events_dir)["impressions"]
    last = impressions.sort_values(["ts", "request_id", "position"]).iloc[-40:]
    request_id = last["request_id"].iloc[-1]
    slate = last.loc[last["request_id"] == request_id]
    return requests_from_impressions(slate)[0]


def _accounted(request: dict[str, Any], response: dict[str, Any]) -> None:
    sent = sorted(c["stream_id"] for c in request["candidates"])
    back = sorted([i["stream_id"] for i in response["items"]] + [f["stream_id"] for f in response["filtered"]])
    assert back == sent
    assert response["request_id"] == request["request_id"]


def test_pyfunc_model_ranks_requests_like_the_feed_ranker(trained: Any) -> None:
    import mlflow

    from trustfeed.serving import FeedRanker

    request = _request(trained)
    with _support_tracking(trained):
        model = mlflow.pyfunc.load_model(trained.result.model_uri)
        responses = model.predict([request])
    assert isinstance(responses, list) and len(responses) == 1
    _accounted(request, responses[0])
    expected = FeedRanker.load(trained.result.bundle_dir).rank(request)
    assert [i["stream_id"] for i in responses[0]["items"]] == [i["stream_id"] for i in expected["items"]]
    assert [i["score"] for i in responses[0]["items"]] == pytest.approx([i["score"] for i in expected["items"]])


def test_pyfunc_signature_and_input_example(trained: Any) -> None:
    import mlflow

    with _support_tracking(trained):
        info = mlflow.models.get_model_info(trained.result.model_uri)
    inputs = info.signature.inputs.input_names()
    assert {"request_id", "user_id", "ts", "candidates", "k"} <= set(inputs)
    assert info.saved_input_example_info is not None


@pytest.mark.filterwarnings("ignore:.*validate_serving_input.*:FutureWarning")
def test_serving_input_example_goes_through_mlflow_serving(trained: Any, tmp_path: Path) -> None:
    """What ``mlflow models serve`` does with a request: parse, enforce the signature, predict."""
    import mlflow

    request = _request(trained)
    body = json.dumps({"dataframe_records": [request, {**request, "request_id": "again", "k": 3}]})
    with _support_tracking(trained):
        predictions = mlflow.models.validate_serving_input(trained.result.model_uri, body)
        saved = Path(mlflow.artifacts.download_artifacts(f"{trained.result.model_uri}/serving_input_example.json",
                                                         dst_path=str(tmp_path)))
        example = mlflow.models.validate_serving_input(trained.result.model_uri, saved.read_text())
    assert [p["request_id"] for p in predictions] == [request["request_id"], "again"]
    for response in predictions:
        _accounted({**request, "request_id": response["request_id"]}, response)
    assert len(example) == 1 and example[0]["items"]


def test_pyfunc_accepts_json_strings_and_reports_bad_requests_in_place(trained: Any) -> None:
    import pandas as pd

    from trustfeed.training._pyfunc_model import TrustfeedPyfuncModel

    model = TrustfeedPyfuncModel()
    model.load_context(type("Context", (), {"artifacts": {"bundle": str(trained.result.bundle_dir)}})())
    request = _request(trained)
    broken = {**request, "request_id": "broken", "candidates": [{"stream_id": "s1"}]}
    responses = model.predict(None, pd.DataFrame({"request": [json.dumps(request), json.dumps(broken)]}))
    assert responses[0]["request_id"] == request["request_id"] and responses[0]["items"]
    assert responses[1]["request_id"] == "broken" and "candidates[0]" in responses[1]["error"]


def test_logged_booster_scores_like_the_bundle_model(trained: Any) -> None:
    import mlflow.lightgbm
    import numpy as np

    from trustfeed.ranker.bundle import load_bundle

    pipeline = load_bundle(trained.result.bundle_dir)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, len(pipeline.feature_names)))
    with _support_tracking(trained):
        booster = mlflow.lightgbm.load_model(f"runs:/{trained.result.run_id}/booster")
    assert np.allclose(booster.predict(X), pipeline.model.predict(X))


def test_the_logged_models_carry_the_runs_final_metrics(trained: Any, client: Any, run: Any) -> None:
    # the job logs the models before the metrics and links the final (step 0) metrics to each
    # model itself, as MLflow does for a model logged after them; the curves stay on the run
    models = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])
              if m.source_run_id == run.info.run_id]
    assert sorted(m.name for m in models) == ["booster", "model"]
    # (`trustfeed evaluate` on the shared run, in other test files, adds eval.* metrics later)
    curves = {k for k in run.data.metrics if k.startswith(("valid_ndcg", "plain.valid_ndcg"))}
    final = {k for k in run.data.metrics if not k.startswith("eval.")} - curves
    assert curves and "ndcg_at_10" in final
    for logged in models:
        linked = {m.key: m.value for m in logged.metrics or []}
        assert set(linked) == final
        assert all(linked[k] == run.data.metrics[k] for k in linked)


def test_registered_version_has_the_challenger_alias(trained: Any, client: Any) -> None:
    version = client.get_model_version_by_alias(trained.registered_name, "challenger")
    assert version.version == trained.result.registered_version
    assert version.run_id == trained.result.run_id


def _support_tracking(trained: Any) -> Any:
    """MLflow's fluent API pointed at the test server for the duration of a block."""
    from trustfeed.training.registry import tracking_uri_set_to

    return tracking_uri_set_to(trained.server.uri)


# ----------------------------------------------------------------------------- config and helpers


def test_config_round_trips_and_rejects_unknown_keys(tmp_path: Path) -> None:
    config = TrainJobConfig(events=tmp_path, register="feed", evaluation=EvalConfig(holdout_fraction=0.25))
    again = TrainJobConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ConfigError, match="unknown"):
        TrainJobConfig.from_dict({**config.to_dict(), "learning_rate": 0.1})


@pytest.mark.parametrize(
    "changes",
    [{"evaluation": {"holdout_fraction": 0.0}}, {"evaluation": EvalConfig(holdout_fraction=0.5)},
     {"validation_fraction": 0.6}, {"validation_fraction": 0.4, "evaluation": EvalConfig(holdout_fraction=0.45)},
     {"experiment": ""}, {"register": " "}, {"until": "not a date"}, {"tracking_retries": -1},
     {"dataset": {"trust": {"no_such_setting": 1}}}, {"scheduler": "tcp://127.0.0.1:8786"}],
)
def test_config_rejects_bad_values(tmp_path: Path, changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        TrainJobConfig(events=tmp_path, **changes)


def test_flatten_params_reaches_every_leaf() -> None:
    nested = {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None, "f": {}}
    assert flatten_params(nested) == {"a.b.c": "1", "a.d": "[1, 2]", "e": "None", "f": "{}"}


def test_plain_schema_drops_every_trust_signal(trained: Any) -> None:
    from trustfeed.ranker.bundle import load_bundle

    schema = load_bundle(trained.result.bundle_dir).assembler.schema()
    plain = plain_feature_schema(schema)
    assert plain["feature_names"], "the plain model keeps engagement, user and request features"
    assert not any(s.startswith("merchant:") for s in plain["sources"])
    assert not any("trust" in n for n in plain["feature_names"])
    assert set(plain["feature_names"]) < set(schema["feature_names"])
    assert all(d == 0 for d in plain["monotone"])


def test_too_short_a_log_is_a_clear_error(tmp_path: Path) -> None:
    from trustfeed.features.errors import SchemaError
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset
    from trustfeed.training.train import train

    write_dataset(simulate(SimConfig(seed=1, merchants=10, days=2)), tmp_path / "events")
    with pytest.raises(SchemaError, match="impressions"):
        train(TrainJobConfig(events=tmp_path / "events", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))


def test_bundle_serves_trust_and_history_as_of_the_end_of_the_data(trained: Any) -> None:
    # the job builds these tables in a background thread while it trains; they must be the ones
    # RankingPipeline.as_of builds from the same events and settings
    from trustfeed.features.events import load_events
    from trustfeed.ranker.bundle import load_bundle
    from trustfeed.ranker.pipeline import RankingPipeline

    served = load_bundle(trained.result.bundle_dir)
    assert served.snapshot is not None and served.context is not None
    end = served.snapshot.as_of
    events = load_events(trained.events_dir)
    assert end == events["impressions"]["ts"].max().floor("D") + pd.Timedelta(days=1)
    rebuilt = served.rebuilt_as_of(events, end, balancer=served.balancer)
    assert isinstance(rebuilt, RankingPipeline) and rebuilt.snapshot is not None
    pd.testing.assert_frame_equal(served.snapshot.merchants, rebuilt.snapshot.merchants)
    pd.testing.assert_frame_equal(served.snapshot.creators, rebuilt.snapshot.creators)
    request = _request(trained)
    assert served.rank(request, record=False) == rebuilt.rank(request, record=False)


def test_the_bundle_serves_the_purchase_model_its_policy_was_calibrated_on(trained: Any, client: Any) -> None:
    from trustfeed.ranker.bundle import load_bundle

    pipeline = load_bundle(trained.result.bundle_dir)
    params = client.get_run(trained.result.run_id).data.params
    assert pipeline.purchase_model is not None, params.get("fitted.purchase_model.skipped")
    assert pipeline.policy.state is not None and pipeline.policy.state.relevance_source == "purchase_model"
    assert params["fitted.policy.relevance_source"] == "purchase_model"
    assert int(params["fitted.purchase_model.click_trees"]) >= 1
    assert float(params["fitted.purchase_model.position_coef"]) < 0  # the log's position bias


def test_the_policy_fit_takes_the_scores_and_cost_computed_alongside_the_fits(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The job scores the validation rows and measures the bad-order cost while LightGBM trains,
    and hands both to the policy fit: the policy, the balancer target and every fitted value must
    be those the policy fit computes itself."""
    from trustfeed.training import train as job

    monkeypatch.setattr(job, "_MIN_PURCHASES", 3)  # a tiny platform: fit the policy on few purchases
    from trustfeed.features.events import validate_events
    from trustfeed.ranker.purchase import PurchaseModelConfig
    from trustfeed.training.dataset import DatasetConfig, build_training_frame, time_split
    from trustfeed.training.simulate import SimConfig, simulate
    from trustfeed.training.train import (_fit_models, _purchase_model_and_scores, fit_policy_and_target,
                                          measure_bad_order_cost)

    platform = simulate(SimConfig(seed=5, merchants=40, days=16))
    events = validate_events(platform.tables)
    end = platform.config.start_time.floor("D") + pd.Timedelta(days=14)
    frame = build_training_frame(events, end=end, config=DatasetConfig(snapshot_every_days=7))
    fit_part, valid_part = time_split(frame, valid_from=end - pd.Timedelta(days=4))
    config = TrainJobConfig.from_dict({"events": str(tmp_path), "train_plain": False, "model": {
        "num_rounds": 8, "min_rounds": 1, "early_stopping_rounds": 0, "min_data_in_leaf": 10, "num_leaves": 7}})
    features = (fit_part.features(), valid_part.features())
    model, _ = _fit_models(config, frame, fit_part, valid_part, lambda *_: None, features)
    purchase = PurchaseModelConfig(min_data_in_leaf=20, min_data_in_leaf_purchase=10, num_rounds=8)
    purchase_model, _, valid_score, rows = _purchase_model_and_scores(purchase, fit_part, valid_part, events["impressions"],
                                                                      lambda *_: None, features)
    assert purchase_model is not None and valid_score is not None
    assert (rows[0] >= 0).sum() >= 3 and (rows[1] >= 0).sum() >= 3  # purchases matched in both parts
    cost = measure_bad_order_cost(config, events, end)
    assert cost is not None
    inside = fit_policy_and_target(config, model, fit_part, valid_part, events, data_end=end,
                                   purchase_model=purchase_model)
    handed = fit_policy_and_target(config, model, fit_part, valid_part, events, data_end=end,
                                   purchase_model=purchase_model, valid_score=valid_score, bad_order_cost=cost,
                                   purchase_rows=rows)
    assert inside[0].is_fitted and inside[2]["policy.relevance_source"] == "purchase_model"
    assert handed[0].state == inside[0].state
    assert handed[1] == inside[1]
    assert json.dumps(handed[2], sort_keys=True, default=str) == json.dumps(inside[2], sort_keys=True, default=str)


def test_bad_order_model_is_fitted_on_trust_of_the_serving_scale() -> None:
    """Early snapshots of a short log carry a default-weight trust index (another scale):
    once the latest training snapshot's index is fitted, only purchases scored with a fitted
    index fit the bad-order model, or the index's own calibration when they are too few."""
    import numpy as np

    from trustfeed.training import train as job
    from trustfeed.training.dataset import TrainingFrame

    days = pd.date_range("2026-01-01", periods=10, freq="D", tz="UTC")
    at = np.repeat(days, 30)
    part = TrainingFrame(frame=pd.DataFrame({"snapshot_at": at}), feature_names=(), categorical=(), monotone=(), schema={})
    bought = np.ones(len(at), dtype=bool)
    bought[::2] = False  # 150 purchases, 15 a day
    late = {t: ("fitted" if i >= 2 else "default") for i, t in enumerate(days)}
    rows, why = job._bad_model_rows(part, bought, late)
    assert rows is not None and rows.sum() == 120 and not rows[at < days[2]].any() and "fitted index" in why
    rows, why = job._bad_model_rows(part, bought, {t: ("fitted" if i >= 8 else "default") for i, t in enumerate(days)})
    assert rows is None and why.startswith("index calibration")  # 30 purchases: too few
    # a short log: every training snapshot has the default-weight index, the serving one
    # (the latest, added by the job) a fitted one: the index's own calibration
    serving = {**dict.fromkeys(days, "default"), days[-1] + pd.Timedelta(days=7): "fitted"}
    rows, why = job._bad_model_rows(part, bought, serving)
    assert rows is None and why.startswith("index calibration (0 purchases")
    for sources in (None, {}, dict.fromkeys(days, "default")):
        rows, _ = job._bad_model_rows(part, bought, sources)
        assert rows is not None and np.array_equal(rows, bought)
    # the index's own calibration is p_bad = 1 - trust
    from trustfeed.ranker._expected_value import bad_probability

    trust = np.array([0.6, 0.9, 0.99])
    np.testing.assert_allclose(bad_probability(trust, job.INDEX_CALIBRATION), 1 - trust, atol=1e-12)


def test_the_trained_policy_says_which_purchases_fitted_its_bad_order_model(run: Any) -> None:
    source = run.data.params["fitted.policy.bad_model_source"]
    assert source.startswith(("purchases scored with a fitted index", "index calibration", "all purchases"))
    assert float(run.data.params["fitted.policy.purchase_risk_term"]) <= max(
        0.0, float(run.data.params["fitted.policy.purchase_risk_term_estimate"])) + 1e-9


def test_the_purchase_fit_is_skipped_for_too_few_purchases_or_one_outcome_and_reported_otherwise() -> None:
    """Both backends record the purchase model's fit through ``fit_or_skip``: the same reasons to skip
    it, the same figures logged."""
    from types import SimpleNamespace

    from trustfeed.features.errors import SchemaError
    from trustfeed.training._purchase_fit import fit_or_skip

    said: list[str] = []
    calls: list[int] = []

    def fitted() -> Any:
        calls.append(1)
        return SimpleNamespace(fit_info_={"click_trees": 7, "purchase_trees": 3, "position_coef": -0.5, "train_rows": 9})

    def one_outcome() -> Any:
        raise SchemaError("impressions", "purchased", "both outcomes", "purchases only")

    model, info = fit_or_skip(fitted, (19, 40), 20, lambda m, *_: said.append(m), "starting")
    assert model is None and info == {"purchase_model.skipped": "too few purchases (19 training, 40 validation)"}
    assert not calls and not said  # not even started
    model, info = fit_or_skip(one_outcome, (20, 20), 20, lambda m, *_: said.append(m), "starting")
    assert model is None and "purchased" in info["purchase_model.skipped"] and said == ["starting"]
    said.clear()
    model, info = fit_or_skip(fitted, (20, 20), 20, lambda m, *_: said.append(m), "starting")
    assert model is not None and calls == [1]
    assert info == {"purchase_model.click_trees": 7, "purchase_model.purchase_trees": 3,
                    "purchase_model.position_coef": -0.5, "purchase_model.train_rows": 9}
    assert said == ["starting", "purchase model: 7 click and 3 purchase trees, position coefficient -0.500"]
