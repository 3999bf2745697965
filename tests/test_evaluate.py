"""Offline evaluation and its report.

The report renderer is checked on synthetic content (fast); the evaluation itself on the
session's trained model (see ``_training_support.py``), through the library and the CLI.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError
from trustfeed.training.cli import main
from trustfeed.training.evaluation import EvalConfig, evaluate, held_out_window, requests_from_impressions
from trustfeed.training.evaluation.report import ReportContent, lorenz_curve, render_html, render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def evaluated(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``trustfeed evaluate`` of the registered model (an MLflow run) on its held-out window."""
    out = tmp_path_factory.mktemp("evaluation")
    return evaluate(trained.events_dir, f"models:/{trained.registered_name}@challenger", out,
                    tracking_uri=trained.server.uri, config=EvalConfig(sweep_strengths=(0.0, 4.0)))


def assert_self_contained(document: str) -> int:
    """No external reference of any kind; every image an embedded PNG. Returns the image count."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", document, re.IGNORECASE)
    assert "<script" not in document.lower()
    assert not re.search(r"@import|url\(", document, re.IGNORECASE)
    sources = re.findall(r"""<img[^>]*\ssrc\s*=\s*["']([^"']+)["']""", document, re.IGNORECASE)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
    return len(sources)


# ----------------------------------------------------------------------------- report (synthetic)


def _content(rng: np.random.Generator, **overrides: Any) -> ReportContent:
    dims = ["commodity_quality", "service_quality", "host_attitude", "product_experience",
            "after_sales_guarantees", "social_evaluation"]
    merchants = pd.DataFrame({"merchant_id": [f"m{i}" for i in range(40)], "trust_index": rng.uniform(size=40),
                              **{f"trust_{d}": rng.uniform(size=40) for d in dims}})
    headline = pd.DataFrame({"ndcg_at_10": [0.41, 0.40], "gini": [0.6, 0.4]},
                            index=["relevance only", "trust-aware + balancer"])
    values = dict(
        title="report <test> & co",
        facts={"model": "runs:/abc/model", "note": "<script>alert(1)</script>"},
        headline=headline,
        creator_exposure={"relevance only": rng.pareto(1.0, 200), "trust-aware + balancer": rng.pareto(3.0, 200)},
        tradeoff=pd.DataFrame({"policy": ["balancer sweep"] * 3 + ["per-creator cap"], "kind": ["sweep"] * 3 + ["baseline"],
                               "strength": [0.0, 2.0, 8.0, np.nan], "ndcg_at_10": [0.41, 0.40, 0.38, 0.39],
                               "gini": [0.6, 0.5, 0.4, 0.55]}),
        merchants=merchants,
        feature_importance=pd.DataFrame({"feature": ["a", "b", "c"], "gain": [3.0, 2.0, 1.0]}),
        segments=pd.DataFrame({"segment_kind": ["creator reach"] * 4, "segment": ["head", "head", "tail", "tail"],
                               "policy": ["relevance only", "trust-aware + balancer"] * 2,
                               "exposure_share": [0.7, 0.5, 0.3, 0.5], "exposure_lift": [3.5, 2.5, 0.4, 0.6]}),
        counterfactual=pd.DataFrame({"expected_orders": [10.0, 9.8], "good_orders": [8.0, 9.0],
                                     "bad_order_rate": [0.2, 0.08], "net_value": [4.0, 7.4]},
                                    index=["plain", "trust-aware + balancer"]),
        notes=("a note",),
    )
    values.update(overrides)
    return ReportContent(**values)


def test_report_is_self_contained_with_one_figure_per_section(rng: np.random.Generator, tmp_path: Path) -> None:
    path = render_report(_content(rng), tmp_path / "report.html")
    document = path.read_text(encoding="utf-8")
    assert assert_self_contained(document) == 6  # lorenz, trade-off, trust, importance, segments, counterfactual
    for heading in ("Lorenz", "Quality against fairness", "Trust across merchants", "Feature importance",
                    "Metrics by segment", "Counterfactual outcomes"):
        assert heading in document
    assert "<script>alert" not in document and "&lt;script&gt;" in document  # text is escaped
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no temporary left


def test_report_leaves_out_sections_without_data(rng: np.random.Generator) -> None:
    document = render_html(_content(rng, counterfactual=None, segments=None, tradeoff=None, creator_exposure={}))
    assert assert_self_contained(document) == 2  # trust and feature importance remain
    assert "Counterfactual outcomes" not in document and "Lorenz" not in document


def test_report_links_to_companion_pages_by_relative_address(rng: np.random.Generator) -> None:
    document = render_html(_content(rng, links={"closed-loop rollout <28 days>": "rollout.html"}))
    assert '<a href="rollout.html">closed-loop rollout &lt;28 days&gt;</a>' in document
    assert_self_contained(document)
    assert "See also" not in render_html(_content(rng))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_lorenz_curve_is_a_monotone_path_below_equality(values: list[float]) -> None:
    from trustfeed.ranker.metrics import gini

    x, y = lorenz_curve(np.array(values))
    assert x[0] == 0 and y[0] == 0 and x[-1] == pytest.approx(1) and y[-1] == pytest.approx(1)
    assert np.all(np.diff(y) >= -1e-12)
    assert np.all(y <= x + 1e-9)
    # the area between equality and the curve is half the Gini (trapezoid rule is exact here)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    assert 1 - 2 * area == pytest.approx(gini(np.array(values)), abs=1e-9)


# ----------------------------------------------------------------------------- windows and requests


def test_requests_from_impressions_keeps_every_candidate_in_order() -> None:
    slates = pd.DataFrame({
        "request_id": ["a", "a", "a", "b"], "user_id": ["u1"] * 3 + ["u2"],
        "ts": pd.to_datetime(["2026-01-02T10:00Z"] * 3 + ["2026-01-02T11:00Z"]),
        "stream_id": ["s3", "s1", "s2", "s9"], "creator_id": ["c", "c", "d", "e"], "merchant_id": ["m"] * 4,
    })
    requests = requests_from_impressions(slates)
    assert [r["request_id"] for r in requests] == ["a", "b"]
    assert [c["stream_id"] for c in requests[0]["candidates"]] == ["s3", "s1", "s2"]
    assert pd.Timestamp(requests[1]["ts"]) == pd.Timestamp("2026-01-02T11:00Z")
    assert requests_from_impressions(slates.iloc[:0]) == []


def test_held_out_window_defaults_and_errors() -> None:
    events = {"impressions": pd.DataFrame({"ts": pd.to_datetime(["2026-01-01T00:00Z", "2026-01-11T00:00Z"])})}
    start, end = held_out_window(events, holdout_fraction=0.2)
    assert start == pd.Timestamp("2026-01-09T00:00Z") and end > pd.Timestamp("2026-01-11T00:00Z")
    assert held_out_window(events, "2026-01-05", "2026-01-06")[0] == pd.Timestamp("2026-01-05T00:00Z")
    with pytest.raises(ConfigError):
        held_out_window(events, "2026-01-06", "2026-01-05")


@pytest.mark.parametrize("changes", [{"holdout_fraction": 1.0}, {"sweep_strengths": ()}, {"sweep_strengths": (-1.0,)},
                                     {"cap_k": 0}, {"fair_p": 1.5}, {"max_requests": 0}, {"low_trust_quantile": 1.0}])
def test_eval_config_rejects_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EvalConfig(**changes)


# ----------------------------------------------------------------------------- evaluation end to end


def test_evaluate_writes_report_and_metrics(evaluated: Any) -> None:
    assert evaluated.report_path.name == "report.html" and evaluated.metrics_path.name == "metrics.json"
    document = evaluated.report_path.read_text(encoding="utf-8")
    assert assert_self_contained(document) == 6
    metrics = json.loads(evaluated.metrics_path.read_text())
    assert set(metrics["policies"]) >= {"logging", "plain", "relevance_only", "trust_aware", "served",
                                         "creator_cap", "fair_quota", "det_const_sort"}
    assert set(metrics["counterfactual"]) == {"logging", "plain", "relevance_only", "trust_aware", "served",
                                              "creator_cap", "fair_quota", "det_const_sort"}
    for values in metrics["policies"].values():
        assert 0.0 <= values["gini"] < 1.0
        assert 0.0 <= values["ndcg_at_10"] <= 1.0
    kinds = {row["segment_kind"] for row in metrics["segments"]}
    assert kinds == {"merchant age", "creator reach", "merchant trust"}
    # the static frontier: the balancer's sweep and the amortised fairness baselines' sweeps
    tradeoff = pd.DataFrame(metrics["tradeoff"])
    sweeps = tradeoff[tradeoff["kind"] == "sweep"].groupby("policy")["strength"].apply(list).to_dict()
    assert sweeps == {"balancer sweep": [0.0, 4.0], "FairCo sweep": [0.01, 0.1, 1.0], "P-MMF sweep": [0.1, 0.5, 2.0],
                      "FA*IR sweep": [0.3, 0.5, 0.7, 0.9], "DetConstSort sweep": [0.3, 0.5, 0.7, 0.9]}
    fairco = tradeoff[tradeoff["policy"] == "FairCo sweep"].sort_values("strength")
    assert fairco["gini"].iloc[-1] < fairco["gini"].iloc[0]  # a stronger controller spreads exposure
    assert tradeoff.loc[tradeoff["kind"] == "sweep", "expected_orders"].notna().all()  # truth is there
    # the balancer at strength 0 is its base order; without the one-slot rule (diversity_k 0, the
    # default) that is the policy's own order: the trust-aware pipeline without the balancer
    zero = tradeoff[(tradeoff["policy"] == "balancer sweep") & (tradeoff["strength"] == 0.0)].iloc[0]
    unbalanced = metrics["policies"]["trust_aware"]
    assert zero["gini"] == pytest.approx(unbalanced["gini"]) and zero["ndcg_at_10"] == pytest.approx(unbalanced["ndcg_at_10"])
    # (the sweep point's outcomes are computed from its lists, the policy's taken from the counterfactual table)
    same = metrics["counterfactual"]["trust_aware"]
    assert zero["expected_orders"] == pytest.approx(same["expected_orders"]) and zero["net_value"] == pytest.approx(same["net_value"])
    for label, policy in (("per-creator cap", "creator_cap"), ("trust-aware + balancer", "served")):
        row = tradeoff[tradeoff["policy"] == label].iloc[0]
        assert row["expected_orders"] == pytest.approx(metrics["counterfactual"][policy]["expected_orders"])
    # every other sweep point has a verdict against the balancer's sweep
    frontier = pd.DataFrame(metrics["frontier"])
    assert len(frontier) == int((tradeoff["kind"] == "sweep").sum()) - 2
    assert frontier.loc[frontier["dominated"], "dominated_by"].notna().all()
    assert (frontier.loc[~frontier["dominated"], "short_on"] != "").all()  # the axis the balancer loses on
    assert any(note.startswith("DetConstSort sweep: the balancer dominates") for note in metrics["notes"])
    # the levers: a stronger guarantee priority never lowers the guaranteed merchants' exposure share
    levers = pd.DataFrame(metrics["levers"])
    assert {"none (served policy)", "guarantee_boost", "trust_floor", "trust_exposure_target", "target_gini"} <= set(levers["lever"])
    boost = levers[levers["lever"].isin(["none (served policy)", "guarantee_boost"])]["guaranteed_exposure_share"].to_numpy()
    assert (np.diff(boost) >= -1e-12).all() and boost[-1] > boost[0]
    floors = levers[levers["lever"] == "trust_floor"]["shown_share"].to_numpy()
    assert (np.diff(floors) <= 1e-12).all() and floors[-1] < 1.0
    targets = levers[levers["lever"].isin(["none (served policy)", "trust_exposure_target"])]
    # (over the whole list, unknown trust left out, so only the ends are compared)
    assert targets["trust_weighted_exposure"].iloc[-1] >= targets["trust_weighted_exposure"].iloc[0] - 1e-9
    against = metrics["against_plain"]
    assert set(against) == {"net value", "bad-order rate", "Gini of creator exposure", "expected orders"}
    served, plain = metrics["counterfactual"]["served"], metrics["counterfactual"]["plain"]
    assert against["net value"]["ratio"] == pytest.approx(served["net_value"] / plain["net_value"])
    assert against["Gini of creator exposure"]["ratio"] == pytest.approx(
        metrics["policies"]["served"]["gini"] / metrics["policies"]["plain"]["gini"])
    assert against["bad-order rate"]["met"] == ("yes" if against["bad-order rate"]["ratio"] <= 0.8 else "no")


def test_evaluation_defaults_to_the_runs_held_out_window(trained: Any, evaluated: Any) -> None:
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=trained.server.uri).get_run(trained.result.run_id).data.tags
    window = json.loads(evaluated.metrics_path.read_text())["window"]
    assert pd.Timestamp(window["start"]) == pd.Timestamp(tags["trustfeed.heldout_start"])
    assert pd.Timestamp(window["end"]) == pd.Timestamp(tags["trustfeed.heldout_end"])


def test_every_held_out_request_is_ranked(trained: Any, evaluated: Any) -> None:
    from trustfeed.features.events import load_events

    impressions = load_events(trained.events_dir)["impressions"]
    window = json.loads(evaluated.metrics_path.read_text())["window"]
    starts = impressions.groupby("request_id")["ts"].min()
    expected = int(((starts >= pd.Timestamp(window["start"])) & (starts < pd.Timestamp(window["end"]))).sum())
    assert json.loads(evaluated.metrics_path.read_text())["n_requests"] == expected == evaluated.metrics["heldout_requests"]


def test_evaluation_is_logged_to_the_models_run(trained: Any, evaluated: Any) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained.server.uri)
    assert evaluated.run_id == trained.result.run_id
    folders = [a.path for a in client.list_artifacts(trained.result.run_id, "evaluations")]
    assert len(folders) == 1
    files = {Path(a.path).name for a in client.list_artifacts(trained.result.run_id, folders[0])}
    assert files == {"report.html", "metrics.json"}
    logged = client.get_run(trained.result.run_id).data.metrics
    assert logged["eval.ndcg_at_10"] == pytest.approx(evaluated.metrics["ndcg_at_10"])


def test_evaluating_the_same_window_reproduces_the_training_runs_metrics(trained: Any, evaluated: Any) -> None:
    """The evaluation the job ran and `trustfeed evaluate` go through one code path."""
    for name in ("ndcg_at_10", "gini_no_balancer", "plain.ndcg_at_10", "logging.gini"):
        assert evaluated.metrics[name] == pytest.approx(trained.result.metrics[name], rel=1e-9)


def test_cli_evaluate_on_a_local_bundle(trained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["evaluate", "--events", str(trained.events_dir), "--model", str(trained.result.bundle_dir),
                   "--out", str(tmp_path / "out")])
    assert status == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'out' / 'report.html'}" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "plain" in metrics["policies"]  # plain_model/ sits beside the local bundle


def test_cli_evaluate_bad_model_is_one_line_exit_2(trained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["evaluate", "--events", str(trained.events_dir), "--model", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("trustfeed evaluate: error:")
    assert not (tmp_path / "out" / "report.html").exists()


def test_segment_shares_add_up_per_policy(evaluated: Any) -> None:
    segments = pd.DataFrame(json.loads(evaluated.metrics_path.read_text())["segments"])
    sums = segments.groupby(["segment_kind", "policy"])[["exposure_share", "candidate_share"]].sum()
    assert np.allclose(sums["exposure_share"], 1.0)
    assert np.allclose(sums["candidate_share"], 1.0)
    lift = segments["exposure_share"] / segments["candidate_share"]
    assert np.allclose(lift, segments["exposure_lift"])


def test_evaluation_pipelines_see_trust_as_of_the_window_start(trained: Any) -> None:
    """The bundle's snapshot is as of the end of its data; evaluating inside that data must not use it."""
    from trustfeed.features.events import load_events
    from trustfeed.training.evaluation import load_models_for_evaluation, pipelines_as_of

    served, plain = load_models_for_evaluation(str(trained.result.bundle_dir))
    events = load_events(trained.events_dir)
    start = pd.Timestamp("2026-01-20", tz="UTC")
    pipeline, plain_pipeline = pipelines_as_of(served, plain, events, start)
    assert served.snapshot.as_of > start
    assert pipeline.snapshot.as_of == start and pipeline.context.as_of == start
    assert pipeline.model is served.model and pipeline.feature_names == served.feature_names
    assert plain_pipeline is not None and plain_pipeline.policy.config.trust_weight == 0.0
    assert not any(name.startswith("merchant_trust") for name in plain_pipeline.feature_names)


def test_evaluation_without_simulator_truth(trained: Any, tmp_path: Path) -> None:
    """Real logs have no truth/: no counterfactual section, bad-order exposure from estimated rates."""
    import shutil

    events = tmp_path / "events"
    shutil.copytree(trained.events_dir, events, ignore=shutil.ignore_patterns("truth"))
    result = evaluate(events, str(trained.result.bundle_dir), tmp_path / "out",
                      config=EvalConfig(sweep_strengths=(0.0,), max_requests=60))
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["counterfactual"] is None and metrics["against_plain"] is not None
    assert metrics["n_requests"] == 60
    assert all(np.isfinite(p["bad_order_exposure"]) for p in metrics["policies"].values())
    document = result.report_path.read_text(encoding="utf-8")
    assert assert_self_contained(document) == 5 and "Counterfactual outcomes" not in document
    assert "No simulator truth" in document


def test_trust_segments_hold_both_low_and_high_candidates(evaluated: Any) -> None:
    segments = pd.DataFrame(json.loads(evaluated.metrics_path.read_text())["segments"])
    trust = segments[segments["segment_kind"] == "merchant trust"]
    shares = trust.groupby("segment")["candidate_share"].first()
    # the low segment is a quantile of the unfiltered candidates, so it is never empty
    assert {"low", "high"} <= set(shares.index)
    assert 0.1 < shares["low"] / (shares["low"] + shares["high"]) < 0.4


@pytest.mark.parametrize("bad_cost", [0.0, 2.0, 5.0])
def test_counterfactual_net_value_follows_the_policy_bad_cost(bad_cost: float) -> None:
    """Net value is good - bad_cost x bad with the served policy's cost, not a fixed 2."""
    from trustfeed.training.evaluation.static import _counterfactual

    truth = pd.DataFrame({"request_id": ["q1", "q1"], "stream_id": ["a", "b"],
                          "p_click": [0.5, 0.2], "p_purchase": [0.1, 0.5], "p_bad": [0.0, 1.0]})
    slate = pd.DataFrame({"request_id": ["q1", "q1"], "stream_id": ["b", "a"], "position": [1, 2]})
    table = _counterfactual({"served": slate}, truth, {"position_bias": {"eta": 1.0}}, bad_cost)
    row = table.loc["served"]
    assert row["good_orders"] > 0 and row["bad_orders"] > 0
    assert row["net_value"] == pytest.approx(row["good_orders"] - bad_cost * row["bad_orders"])
    assert table.attrs["bad_cost"] == bad_cost


def test_frontier_margin_is_the_balancer_line_at_the_points_gini():
    from trustfeed.training.evaluation.frontier import frontier_summary, pareto_verdicts

    points = pd.DataFrame({"policy": ["balancer sweep"] * 3 + ["FA*IR sweep"] * 3, "kind": "sweep",
                           "strength": [0.0, 1.0, 2.0, 0.5, 0.7, 0.9], "gini": [0.40, 0.30, 0.20, 0.35, 0.25, 0.10],
                           "net_value": [100.0, 90.0, 60.0, 96.0, 70.0, 10.0]})
    verdicts = pareto_verdicts(points, quality=("net_value",)).set_index("strength")
    # between two balancer points: neither dominates, the line (95 at 0.35, 75 at 0.25) says how far apart
    assert not verdicts.loc[0.5, "dominated"] and verdicts.loc[0.5, "margin_net_value"] == pytest.approx(-1.0)
    assert not verdicts.loc[0.7, "dominated"] and verdicts.loc[0.7, "margin_net_value"] == pytest.approx(5.0)
    assert np.isnan(verdicts.loc[0.9, "margin_net_value"])  # below the balancer's lowest Gini
    assert "its line at that Gini: net_value -1" in frontier_summary(verdicts.reset_index())[0]
