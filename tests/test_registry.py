"""Champion promotion and the MLflow plumbing of trustfeed.training.registry.

Runs and model versions are created directly with the MLflow client on a throwaway sqlite
store (no model training), so every promotion rule is checked in isolation.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from trustfeed.training.cli import main
from trustfeed.training.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    default_tracking_uri,
    local_artifact_root,
    promote,
    quiet_mlflow,
    resolve_tracking_uri,
    run_id_of_model_uri,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    # one store for the module: creating a sqlite store runs MLflow's migrations (seconds)
    return default_tracking_uri(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A registered-model name of this test alone (the store is shared)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)


def _register(store: str, name: str, metrics: dict[str, float], alias: str | None = CHALLENGER) -> str:
    """A run with ``metrics`` registered as a new version of ``name``; returns the version."""
    from mlflow import MlflowClient

    with quiet_mlflow():
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        experiment = client.get_experiment_by_name("promote-test")
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment("promote-test", artifact_location=local_artifact_root(store)))
        run = client.create_run(experiment_id)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - already exists
            pass
        version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)


def _alias(store: str, name: str, alias: str) -> str:
    from mlflow import MlflowClient

    with quiet_mlflow():
        return str(MlflowClient(tracking_uri=store, registry_uri=store).get_model_version_by_alias(name, alias).version)


GOOD = {"ndcg_at_10": 0.50, "gini": 0.30, "bad_order_exposure": 0.05}


def test_first_challenger_becomes_champion(store: str, name: str) -> None:
    version = _register(store, name, GOOD)
    decision = promote(name, tracking_uri=store)
    assert decision.promoted
    assert "no champion" in decision.reason
    assert _alias(store, name, CHAMPION) == version


def test_better_challenger_replaces_champion(store: str, name: str) -> None:
    _register(store, name, GOOD, alias=CHAMPION)
    better = _register(store, name, {**GOOD, "ndcg_at_10": 0.55, "gini": 0.25})
    decision = promote(name, tracking_uri=store)
    assert decision.promoted
    assert _alias(store, name, CHAMPION) == better
    assert {c.metric for c in decision.comparisons} == {"ndcg_at_10", "gini", "bad_order_exposure"}
    assert not any(c.worse for c in decision.comparisons)


@pytest.mark.parametrize(
    "metric, value",
    [("ndcg_at_10", 0.49), ("gini", 0.31), ("bad_order_exposure", 0.06)],
)
def test_worse_challenger_is_refused_and_reason_names_the_metric(store: str, name: str, metric: str, value: float) -> None:
    champion = _register(store, name, GOOD, alias=CHAMPION)
    _register(store, name, {**GOOD, metric: value})
    decision = promote(name, tracking_uri=store)
    assert not decision.promoted
    assert metric in decision.reason and "worse" in decision.reason
    assert _alias(store, name, CHAMPION) == champion


def test_equal_metrics_count_as_not_worse(store: str, name: str) -> None:
    _register(store, name, GOOD, alias=CHAMPION)
    same = _register(store, name, dict(GOOD))
    assert promote(name, tracking_uri=store).promoted
    assert _alias(store, name, CHAMPION) == same


def test_force_promotes_a_worse_challenger_and_says_so(store: str, name: str) -> None:
    _register(store, name, GOOD, alias=CHAMPION)
    worse = _register(store, name, {**GOOD, "ndcg_at_10": 0.1})
    decision = promote(name, force=True, tracking_uri=store)
    assert decision.promoted
    assert "forced" in decision.reason and "ndcg_at_10" in decision.reason
    assert _alias(store, name, CHAMPION) == worse


def test_missing_challenger_alias_is_a_clear_error(store: str, name: str) -> None:
    _register(store, name, GOOD, alias=None)
    with pytest.raises(RegistryError, match="challenger"):
        promote(name, tracking_uri=store)


def test_challenger_without_metrics_is_refused_unless_forced(store: str, name: str) -> None:
    _register(store, name, {})
    with pytest.raises(RegistryError, match="lacks held-out metrics"):
        promote(name, tracking_uri=store)
    assert promote(name, force=True, tracking_uri=store).promoted


def test_already_champion_is_a_no_op(store: str, name: str) -> None:
    version = _register(store, name, GOOD)
    promote(name, tracking_uri=store)
    decision = promote(name, tracking_uri=store)
    assert not decision.promoted and "already" in decision.reason
    assert _alias(store, name, CHAMPION) == version


def test_cli_promote_prints_the_reason_and_exit_codes(store: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promote", "nothing-here", "--tracking-uri", store]) == 2
    assert "nothing-here" in capsys.readouterr().err
    _register(store, name, GOOD)
    assert main(["promote", name, "--tracking-uri", store]) == 0
    assert f"promoted {name} version" in capsys.readouterr().out
    # promoting again is refused (already champion): a decision, exit status 1, reason printed
    assert main(["promote", name, "--tracking-uri", store]) == 1
    assert "already" in capsys.readouterr().out


def test_run_id_of_model_uri_resolves_aliases_and_versions(store: str, name: str) -> None:
    from mlflow import MlflowClient

    version = _register(store, name, GOOD)
    with quiet_mlflow():
        run_id = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(name, version).run_id
    assert run_id_of_model_uri(f"models:/{name}@challenger", store) == run_id
    assert run_id_of_model_uri(f"models:/{name}/{version}", store) == run_id
    assert run_id_of_model_uri(f"runs:/{run_id}/model", store) == run_id
    assert run_id_of_model_uri("/some/local/dir", store) is None
    with pytest.raises(RegistryError):
        run_id_of_model_uri(f"models:/{name}@no-such-alias", store)


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.absolute()}/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:1") == "http://127.0.0.1:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert resolve_tracking_uri(None) == "sqlite:////elsewhere/x.db"
    assert local_artifact_root("sqlite:////elsewhere/x.db") == "file:///elsewhere/mlruns"
    assert local_artifact_root("http://127.0.0.1:5000") is None


def test_default_matches_mlflow_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our explicit default is the store MLflow itself picks with nothing configured."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    monkeypatch.chdir(tmp_path)
    assert utils.get_tracking_uri() == default_tracking_uri(tmp_path)


def test_quiet_mlflow_restores_logger_levels() -> None:
    logger = logging.getLogger("mlflow")
    before = logger.level
    with quiet_mlflow():
        assert logger.level == logging.ERROR
    assert logger.level == before


def test_tracking_uri_set_to_restores_uri_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import mlflow

    from trustfeed.training.registry import tracking_uri_set_to

    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)  # as in a fresh process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    inside = default_tracking_uri(tmp_path)
    with tracking_uri_set_to(inside):
        assert mlflow.get_tracking_uri() == inside
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////somewhere/else.db"
    assert mlflow.get_tracking_uri() == "sqlite:////somewhere/else.db"
