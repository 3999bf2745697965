"""`trustfeed validate`: a summary on success, one clean line and exit 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from trustfeed.training.cli import main

EXIT_BAD_INPUT = 2


def _merchants() -> pd.DataFrame:
    return pd.DataFrame(
        {"merchant_id": ["m1", "m2"], "registered_at": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]}
    )


def _orders() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order_id": ["o1", "o2", "o3"],
            "user_id": ["u1", "u2", "u1"],
            "merchant_id": ["m1", "m2", "m9"],
            "created_at": ["2026-01-03T10:00:00Z", "2026-01-04T11:00:00Z", "2026-01-05T12:00:00Z"],
            "amount": [19.9, 5.0, 7.5],
            "status": ["paid", "paid", "cancelled"],
        }
    )


def _write(directory: Path, merchants: pd.DataFrame, orders: pd.DataFrame) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    merchants.to_csv(directory / "merchants.csv", index=False)
    orders.to_csv(directory / "orders.csv", index=False)
    return directory


def _missing_required_column(root: Path) -> tuple[Path, str]:
    # a mis-capitalised header: the message must show both the expected and the found name
    orders = _orders().rename(columns={"amount": "Amount"})
    expected = (
        "orders.amount: expected required column, got no such column "
        "(columns present: order_id, user_id, merchant_id, created_at, Amount, status)"
    )
    return _write(root / "d", _merchants(), orders), expected


def _bad_enum(root: Path) -> tuple[Path, str]:
    return _write(root / "d", _merchants(), _orders().assign(status=["paid", "shipped", "paid"])), "orders.status"


def _negative_amount(root: Path) -> tuple[Path, str]:
    return _write(root / "d", _merchants(), _orders().assign(amount=[1.0, -2.0, 3.0])), "orders.amount"


def _text_in_timestamp(root: Path) -> tuple[Path, str]:
    merchants = _merchants().assign(registered_at=["2026-01-01", "last spring"])
    return _write(root / "d", merchants, _orders()), "merchants.registered_at"


def _missing_directory(root: Path) -> tuple[Path, str]:
    return root / "no-such-dataset", "does not exist"


CORRUPTIONS: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "missing required column": _missing_required_column,
    "bad enum value": _bad_enum,
    "negative amount": _negative_amount,
    "text in timestamp": _text_in_timestamp,
    "missing directory": _missing_directory,
}


def test_validate_prints_summary_and_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _write(tmp_path / "ok", _merchants(), _orders())
    status = main(["validate", "--events", str(directory)])
    captured = capsys.readouterr()
    assert status == 0
    lines = captured.out.splitlines()
    assert any(line.split()[:2] == ["orders", "3"] for line in lines)
    assert any(line.split()[:2] == ["merchants", "2"] for line in lines)
    assert any(line.split()[:2] == ["reviews", "missing"] for line in lines)
    # the unknown merchant m9 is a warning, not an error
    assert any("orders.merchant_id" in line and "m9" in line for line in lines)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_validate_bad_input_in_process(corruption: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory, names = CORRUPTIONS[corruption](tmp_path)
    status = main(["validate", "--events", str(directory)])
    captured = capsys.readouterr()
    assert status == EXIT_BAD_INPUT
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("trustfeed validate: error:")
    assert names in lines[0]
    assert "Traceback" not in captured.err


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("trustfeed")
    if script.exists() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "trustfeed.training.cli"]


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_validate_bad_input_console_script(corruption: str, tmp_path: Path) -> None:
    directory, names = CORRUPTIONS[corruption](tmp_path)
    result = subprocess.run(
        [*_console_script(), "validate", "--events", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr
