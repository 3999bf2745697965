"""``trustfeed train`` and ``trustfeed promote`` from the command line, against the test server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from trustfeed.training.cli import main


@pytest.fixture(scope="module")
def cli_run(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path, str]:
    """`trustfeed train --until ... --register ...` once, from an empty working directory."""
    workdir = tmp_path_factory.mktemp("cli-train")
    until = "2026-01-24"  # a few days before the tiny platform's end: fewer snapshots, and --until shows
    capture = pytest.MonkeyPatch()
    capture.chdir(workdir)
    try:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["train", "--events", str(trained.events_dir), "--until", until,
                           "--experiment", "cli-tests", "--tracking-uri", trained.server.uri, "--register", "cli-model"])
    finally:
        capture.undo()
    return status, out.getvalue(), err.getvalue(), workdir, until


def test_train_prints_run_id_and_model_uri(cli_run: tuple[int, str, str, Path, str]) -> None:
    status, out, err, _, _ = cli_run
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("run id: ")
    run_id = lines[0].removeprefix("run id: ")
    assert lines[1] == f"model uri: runs:/{run_id}/model"


def test_train_progress_is_readable(cli_run: tuple[int, str, str, Path, str]) -> None:
    _, _, err, _, _ = cli_run
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("[") for line in lines), [l for l in lines if not l.startswith("[")][:3]
    assert any("training LambdaMART" in line for line in lines)


def test_train_until_cuts_the_data_and_keeps_the_bundle_in_the_working_directory(
    trained: Any, cli_run: tuple[int, str, str, Path, str]
) -> None:
    from mlflow import MlflowClient

    _, out, _, workdir, until = cli_run
    run_id = out.splitlines()[0].removeprefix("run id: ")
    tags = MlflowClient(tracking_uri=trained.server.uri).get_run(run_id).data.tags
    assert pd.Timestamp(tags["trustfeed.data_end"]) == pd.Timestamp(until, tz="UTC")
    assert (workdir / "trustfeed-models" / run_id / "bundle" / "MANIFEST.json").is_file()


def test_promote_moves_champion_to_the_cli_trained_challenger(
    trained: Any, cli_run: tuple[int, str, str, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    assert main(["promote", "cli-model", "--tracking-uri", trained.server.uri]) == 0
    assert "there was no champion" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=trained.server.uri, registry_uri=trained.server.uri)
    champion = client.get_model_version_by_alias("cli-model", "champion")
    challenger = client.get_model_version_by_alias("cli-model", "challenger")
    assert champion.version == challenger.version


def test_train_bad_events_dir_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "--events", str(tmp_path / "missing"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("trustfeed train: error:") and "missing" in err[-1]
