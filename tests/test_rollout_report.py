"""``trustfeed rollout``: the command, rollout.json, the page, the headline, bad input."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from trustfeed.training.cli import main
from trustfeed.training.evaluation.rollout_report import rollout_headline

POLICIES = ["trust_aware_balanced", "plain", "oracle", "popularity"]
DAYS, SEEDS = 2, 2
PROGRESS_LINE = re.compile(r"^\[\s*\d+\.\ds\] \S")


@pytest.fixture(scope="module")
def rolled_out(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, Any]:
    """``trustfeed rollout`` of the session's registered model (an MLflow run), a few days."""
    out = tmp_path_factory.mktemp("rollout")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main([
            "rollout", "--model", f"models:/{trained.registered_name}@challenger", "--events", str(trained.events_dir),
            "--out", str(out), "--days", str(DAYS), "--seeds", str(SEEDS), "--policies", ",".join(POLICIES),
            "--tracking-uri", trained.server.uri,
        ])
    assert status == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue(), trained


def test_rollout_json_follows_the_schema(rolled_out: tuple[Path, str, str, Any]) -> None:
    from trustfeed.training.evaluation.rollout import METRICS

    out = rolled_out[0]
    document = json.loads((out / "rollout.json").read_text(encoding="utf-8"))
    assert document["format_version"] == 1
    assert document["policies"] == POLICIES and document["days"] == DAYS and document["seeds"] == list(range(SEEDS))
    assert document["bad_cost"] > 0 and isinstance(document["model"], str) and document["model_uri"].startswith("models:/")
    keys = {(row["policy"], row["seed"], row["day"]) for row in document["daily"]}
    assert keys == {(p, s, d) for p in POLICIES for s in range(SEEDS) for d in range(DAYS)}
    assert len(document["cumulative"]) == len(POLICIES) * SEEDS
    for row in document["daily"] + document["cumulative"]:
        assert set(METRICS) <= set(row)
    for policy in POLICIES:
        assert set(document["summary"][policy]) == set(METRICS)
        net = document["summary"][policy]["net_value"]
        assert net["ci_low"] <= net["mean"] <= net["ci_high"]
        assert set(document["timing"][policy]) == {"ranking", "outcomes", "snapshot", "total"}
    # the oracle captures all of its own gain over plain, plain none of it
    shares = {row["policy"]: row["oracle_gain_share"] for row in document["cumulative"] if row["seed"] == 0}
    if shares["oracle"] is not None:
        assert shares["oracle"] == pytest.approx(1.0) and shares["plain"] == pytest.approx(0.0)


def test_rollout_page_is_self_contained_with_static_numbers(rolled_out: tuple[Path, str, str, Any]) -> None:
    out = rolled_out[0]
    page = (out / "rollout.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2  # gain over plain, the four trajectories
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    # the training run recorded its static evaluation: the page shows it beside the rollout
    assert "one-shot net value" in page and "No static evaluation" not in page
    for label in ("Against the plain LambdaMART", "Trajectories", "Summary over the whole rollout"):
        assert label in page
    assert not list(out.glob(".*tmp*"))


def test_rollout_prints_paths_and_headline_and_logs_to_the_run(rolled_out: tuple[Path, str, str, Any]) -> None:
    from mlflow import MlflowClient

    out, stdout, stderr, trained = rolled_out
    lines = stdout.strip().splitlines()
    assert lines[0] == f"rollout: {out / 'rollout.json'}" and lines[1] == f"page: {out / 'rollout.html'}"
    assert lines[2].startswith(f"closed loop over {DAYS} days")
    assert {line.split()[0] for line in lines[3:]} == {"net", "expected", "orders", "bad-order", "buyer", "buyers'"}
    assert "rollout: trust_aware_balanced, seed 1" in stderr  # progress on stderr
    client = MlflowClient(tracking_uri=trained.server.uri)
    logged = {Path(item.path).name for item in client.list_artifacts(trained.result.run_id, "rollout")}
    assert logged == {"rollout.json", "rollout.html"}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"--policies": "plain,nonsense"}, "unknown policy 'nonsense'"),
        ({"--days": "0"}, "days must be an integer >= 1"),
        ({"--seeds": "-1"}, "seeds must be an integer >= 1"),
        ({"--model": "{missing}"}, "does not resolve"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    trained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, str], problem: str
) -> None:
    arguments = {"--model": str(trained.result.bundle_dir), "--events": str(trained.events_dir),
                 "--out": str(tmp_path / "out"), "--days": "2", "--seeds": "1"}
    arguments.update({k: v.format(missing=tmp_path / "no-such-model") for k, v in changes.items()})
    status = main(["rollout", *[part for pair in arguments.items() for part in pair]])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert status == 2
    assert len(err) == 1 and err[0].startswith("trustfeed rollout: error:") and problem in err[0], err
    assert not (tmp_path / "out").exists()


def _document(net: dict[str, list[float]], retention: dict[str, list[float]] | None = None) -> dict[str, Any]:
    seeds = len(next(iter(net.values())))
    rows = [
        {"policy": policy, "seed": seed, "net_value": value, "orders": 100.0 + value, "bad_order_rate": 0.1,
         "buyer_retention": (retention or {}).get(policy, [0.5] * seeds)[seed]}
        for policy, values in net.items() for seed, value in enumerate(values)
    ]
    return {"days": 28, "seeds": list(range(seeds)), "policies": list(net), "labels": {}, "cumulative": rows}


def _verdict(headline: str, words: str) -> str:
    line = next(line for line in headline.splitlines() if line.strip().startswith(words))
    return line.rsplit(": ", 1)[1]


def test_headline_says_better_worse_or_unclear_honestly() -> None:
    ahead = _document({"trust_aware_balanced": [110.0, 112.0, 111.0], "plain": [100.0, 101.0, 100.5]})
    behind = _document({"trust_aware_balanced": [100.0, 101.0, 100.5], "plain": [110.0, 112.0, 111.0]})
    noisy = _document({"trust_aware_balanced": [110.0, 90.0, 101.0], "plain": [100.0, 100.0, 100.0]})
    assert _verdict(rollout_headline(ahead), "net value") == "better"
    assert _verdict(rollout_headline(behind), "net value") == "worse"
    assert _verdict(rollout_headline(noisy), "net value") == "no clear difference"
    # a lower bad-order rate is better: the same numbers flip the verdict's direction
    rates = _document({"trust_aware_balanced": [1.0, 1.0, 1.0], "plain": [1.0, 1.0, 1.0]})
    for row in rates["cumulative"]:
        row["bad_order_rate"] = {"trust_aware_balanced": 0.05, "plain": 0.1}[row["policy"]] + 0.001 * row["seed"]
    assert _verdict(rollout_headline(rates), "bad-order rate") == "better"
    # one seed has no interval: never a verdict
    single = _document({"trust_aware_balanced": [120.0], "plain": [100.0]})
    assert _verdict(rollout_headline(single), "net value") == "no clear difference"
    assert "not run" in rollout_headline(_document({"trust_aware_balanced": [1.0], "oracle": [2.0]}))
