"""``trustfeed demo``: the whole job on a small platform, through the command line.

The CLI runs the real demo (simulate, features, train, evaluate) at a reduced size so the
test stays short; everything else (wiring, output layout, console) is exactly the command's.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path

import pytest

from trustfeed.features.errors import ConfigError
from trustfeed.training import demo as demo_module
from trustfeed.training.cli import main
from trustfeed.training.demo import DemoConfig

SMALL = {"merchants": 40, "days": 21, "num_rounds": 15, "early_stopping_rounds": 5, "sweep_strengths": (0.0, 4.0),
         "rollout_days": 2, "rollout_seeds": 2, "rollout_policies": ("trust_aware_balanced", "plain")}
PROGRESS_LINE = re.compile(r"^\[\s*\d+\.\ds\] \S")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """Run ``trustfeed demo --out DIR`` once (small size) from an empty working directory."""
    workdir = tmp_path_factory.mktemp("demo-cwd")
    out = tmp_path_factory.mktemp("demo") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_module, "DemoConfig", functools.partial(DemoConfig, **SMALL))
        patch.chdir(workdir)
        capture = _Capture()
        with capture:
            status = main(["demo", "--out", str(out), "--seed", "5"])
    assert status == 0, capture.err
    return workdir, out, capture.out, capture.err


class _Capture:
    """Capture file descriptors 1 and 2 and ``sys.stdout``/``sys.stderr`` on them.

    MLflow and LightGBM may write to the descriptors directly, Python code to the streams:
    both are what a user of the command sees.
    """

    def __enter__(self) -> _Capture:
        import io
        import os
        import sys
        import tempfile

        sys.stdout.flush()
        sys.stderr.flush()
        self._files = [tempfile.TemporaryFile(mode="w+b") for _ in range(2)]
        self._saved_fds = [os.dup(1), os.dup(2)]
        self._saved_streams = (sys.stdout, sys.stderr)
        for fd, file in zip((1, 2), self._files):
            os.dup2(file.fileno(), fd)
        sys.stdout, sys.stderr = (io.TextIOWrapper(open(fd, "wb", closefd=False), write_through=True) for fd in (1, 2))
        return self

    def __exit__(self, *exc: object) -> None:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in zip((1, 2), self._saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        texts = []
        for file in self._files:
            file.seek(0)
            texts.append(file.read().decode("utf-8", errors="replace"))
            file.close()
        self.out, self.err = texts


def test_demo_prints_the_report_and_the_mlflow_ui_command(demo_run: tuple[Path, Path, str, str]) -> None:
    _, out, stdout, _ = demo_run
    lines = stdout.strip().splitlines()
    assert lines[0] == f"report: {out / 'report.html'}"
    assert lines[1] == f"rollout: {out / 'rollout.html'}"
    assert lines[2] == f"mlflow ui: mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db"
    # the headline: the served policy against the plain LambdaMART over the rollout, one line per metric
    assert lines[3].startswith("closed loop over 2 days, trust-aware + balancer against the plain LambdaMART")
    metrics = ("net value", "expected net value", "orders", "bad-order rate", "buyer retention",
               "buyers' visits a day at the end")
    for line, metric in zip(lines[4:], metrics, strict=True):
        assert line.strip().startswith(metric) and "2 seeds" in line
        assert line.rsplit(": ", 1)[1] in ("better", "worse", "no clear difference")
    assert len(lines) == 10  # nothing else reaches stdout (no MLflow registry or URL chatter)


def test_demo_console_shows_only_progress_lines(demo_run: tuple[Path, Path, str, str]) -> None:
    _, _, _, stderr = demo_run
    lines = [line for line in stderr.splitlines() if line.strip()]
    noise = [line for line in lines if not PROGRESS_LINE.match(line)]
    assert not noise, noise[:5]
    for step in ("demo 1/5", "demo 2/5", "demo 3/5", "demo 4/5", "demo 5/5", "training LambdaMART",
                 "logging the run to MLflow", "rollout: plain, seed 1"):
        assert any(step in line for line in lines), step
    assert not any("iteration" in line.lower() or "INFO" in line for line in lines)


def test_demo_keeps_everything_inside_out(demo_run: tuple[Path, Path, str, str]) -> None:
    workdir, out, _, _ = demo_run
    assert list(workdir.iterdir()) == []  # no mlflow.db, mlruns or models in the working directory
    assert (out / "mlflow.db").is_file() and (out / "mlruns").is_dir()
    assert (out / "events" / "truth").is_dir() and (out / "features" / "manifest.json").is_file()
    assert len(list((out / "models").glob("*/bundle/MANIFEST.json"))) == 1


def test_demo_report_is_self_contained(demo_run: tuple[Path, Path, str, str]) -> None:
    _, out, _, _ = demo_run
    document = (out / "report.html").read_text(encoding="utf-8")
    assert (out / "metrics.json").is_file()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", document, re.IGNORECASE)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', document)
    assert len(images) == 6
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    # the report links the rollout page written beside it, which is self-contained too
    assert '<a href="rollout.html">' in document
    page = (out / "rollout.html").read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert json.loads((out / "rollout.json").read_text())["policies"] == list(SMALL["rollout_policies"])


def test_demo_run_is_in_its_own_store_with_the_evaluation(demo_run: tuple[Path, Path, str, str]) -> None:
    from mlflow import MlflowClient

    _, out, _, _ = demo_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("trustfeed-demo")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert "ndcg_at_10" in run.data.metrics and "eval.ndcg_at_10" in run.data.metrics
    assert experiment.artifact_location.startswith((out / "mlruns").as_uri())


@pytest.mark.parametrize("changes", [{"merchants": 0}, {"days": 7}, {"num_rounds": True}, {"target_gini": 1.0},
                                     {"rollout_days": -1}, {"rollout_seeds": 0}, {"rollout_policies": ()},
                                     {"balancer_max_move": 0}, {"target_gini_ratio": 0.0}, {"world": "calm"}])
def test_demo_config_rejects_bad_sizes(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DemoConfig(**changes)


def test_runs_uri_loads_with_an_explicit_sqlite_tracking_uri(
    demo_run: tuple[Path, Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tracking_uri=`` / ``--tracking-uri`` resolve ``runs:/`` as MLFLOW_TRACKING_URI would."""
    from mlflow import MlflowClient

    from trustfeed.ranker.bundle import load_bundle
    from trustfeed.serving import FeedRanker

    _, out, _, _ = demo_run
    store = f"sqlite:///{out}/mlflow.db"
    client = MlflowClient(tracking_uri=store)
    run = client.search_runs([client.get_experiment_by_name("trustfeed-demo").experiment_id])[0]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing here: MLflow's default store would be ./mlflow.db
    model_uri = f"runs:/{run.info.run_id}/model"
    ranker = FeedRanker.load(model_uri, tracking_uri=store, predictor="lightgbm")
    local = load_bundle(next((out / "models").glob("*/bundle")))
    assert ranker.model_id == local.model_id
    (tmp_path / "requests.jsonl").write_text(json.dumps({
        "request_id": "r1", "user_id": "u1", "ts": "2026-01-05T12:00:00Z",
        "candidates": [{"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"}]}) + "\n")
    status = main(["rank", "--model", model_uri, "--tracking-uri", store, "--requests", "requests.jsonl", "--out", "o.jsonl"])
    assert status == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o.jsonl").read_text())["model"] == local.model_id
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_demo_ships_the_product_defaults(demo_run: tuple[Path, Path, str, str]) -> None:
    """The demo's report shows what ``trustfeed train`` ships: the balancer's own guards and the job's Gini ratio."""
    from mlflow import MlflowClient

    from trustfeed.ranker.balancer import BalancerConfig
    from trustfeed.ranker.bundle import load_bundle
    from trustfeed.training.train import TrainJobConfig

    _, out, _, _ = demo_run
    served = load_bundle(next((out / "models").glob("*/bundle")))
    assert served.balancer is not None
    assert served.balancer.config.max_move == BalancerConfig().max_move
    assert served.balancer.config.relevance_floor == BalancerConfig().relevance_floor
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    params = client.search_runs([client.get_experiment_by_name("trustfeed-demo").experiment_id])[0].data.params
    target = float(params["fitted.balancer.target_gini"])
    assert served.balancer.config.target_gini == pytest.approx(target)
    assert target / float(params["fitted.balancer.unbalanced_ledger_gini"]) == pytest.approx(TrainJobConfig.target_gini_ratio)
