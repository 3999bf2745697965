"""Every subcommand has --help and exits 0 with it; unknown input is a usage error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trustfeed.training.cli import build_parser, main

SUBCOMMANDS = ("demo", "validate", "simulate", "features", "train", "evaluate", "rank", "promote")


def test_parser_knows_every_contract_command() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(SUBCOMMANDS) <= set(sub.choices)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_exits_zero(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_console_script_runs_outside_the_repository(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trustfeed.training.cli", "--version"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("trustfeed ")


def test_bad_option_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--out", "x", "--merchants", "-3"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_simulate_population_and_traffic_options(tmp_path) -> None:
    # the options a platform-scale world needs reach the simulator's config
    import json

    out = tmp_path / "world"
    assert main(["simulate", "--out", str(out), "--merchants", "5", "--days", "2", "--users", "30", "--creators", "7",
                 "--requests-per-day", "3", "--orders-per-merchant-day", "0.25"]) == 0
    config = json.loads((out / "truth" / "meta.json").read_text())["config"]
    assert (config["users"], config["creators"], config["requests_per_day"], config["orders_per_merchant_day"]) == (
        30, 7, 3, 0.25)
    assert (config["merchants"], config["days"]) == (5, 2)


def test_simulate_world_option_sets_the_named_world(tmp_path) -> None:
    import json

    from trustfeed.training.cli import _WORLDS
    from trustfeed.training.simulate import WORLD_SETTINGS, SimConfig

    # the parser's choices are the simulator's named settings (spelled twice so that the
    # parser imports no simulator)
    assert set(_WORLDS) == set(WORLD_SETTINGS)
    out = tmp_path / "risky"
    assert main(["simulate", "--out", str(out), "--merchants", "5", "--days", "2", "--world", "risky"]) == 0
    config = json.loads((out / "truth" / "meta.json").read_text())["config"]
    risky = WORLD_SETTINGS["risky"]
    assert {name: config[name] for name in risky} == risky
    assert any(value != getattr(SimConfig(), name) for name, value in risky.items())


def test_unknown_world_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", "x", "--world", "calm"])
    assert exit_info.value.code == 2
    assert "--world" in capsys.readouterr().err
