"""Outputs never destroy what trustfeed did not write, and a directory swap is crash-safe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trustfeed.features import io as output_io
from trustfeed.features.errors import OutputError
from trustfeed.features.io import atomic_dir, atomic_file, output_kind
from trustfeed.training.cli import main


def _write(target: Path, kind: str, content: str, *, force: bool = False) -> None:
    with atomic_dir(target, kind, force=force) as tmp:
        (tmp / "data.txt").write_text(content)


def _content(target: Path) -> str:
    return (target / "data.txt").read_text()


def test_a_foreign_directory_is_never_replaced_even_with_force(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(OutputError, match="not written by trustfeed"):
            _write(target, "trust-snapshot", "new", force=force)
    assert sorted(p.name for p in target.iterdir()) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_same_kind_is_replaced_other_kind_only_with_force(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()  # an empty directory is fine
    _write(target, "trust-snapshot", "one")
    assert output_kind(target) == "trust-snapshot"
    _write(target, "trust-snapshot", "two")
    assert _content(target) == "two"
    with pytest.raises(OutputError, match="--force"):
        _write(target, "simulated-dataset", "three")
    assert _content(target) == "two"
    _write(target, "simulated-dataset", "three", force=True)
    assert _content(target) == "three" and output_kind(target) == "simulated-dataset"


@pytest.mark.parametrize("where", ["file", "under-file", "empty", "cwd", "parent-of-cwd"])
def test_impossible_targets_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "work" / "inner").mkdir(parents=True)
    (tmp_path / "work" / "inner" / "x").write_text("x")
    monkeypatch.chdir(tmp_path / "work" / "inner")
    target = {
        "file": str(tmp_path / "notes.txt"),
        "under-file": str(tmp_path / "notes.txt" / "out"),
        "empty": "",
        "cwd": ".",
        "parent-of-cwd": str(tmp_path / "work"),
    }[where]
    with pytest.raises(OutputError) as error:
        _write(Path(target) if target else target, "trust-snapshot", "new")  # type: ignore[arg-type]
    assert "\n" not in str(error.value)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "work" / "inner" / "x").read_text() == "x"


def test_atomic_file_refuses_a_directory_target(tmp_path: Path) -> None:
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        with atomic_file(tmp_path / "out.jsonl") as tmp:
            tmp.write_text("x")
    assert (tmp_path / "out.jsonl").is_dir()


def _fail(*_: object) -> None:
    raise OSError(5, "injected failure")


@pytest.mark.parametrize("step", ["exchange", "after-exchange", "fallback-second-rename"])
def test_a_failure_between_the_swap_steps_leaves_old_or_new_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "snapshot"
    _write(target, "trust-snapshot", "old")
    if step == "exchange":
        monkeypatch.setattr(output_io, "_exchange", _fail)
        expected = "old"
    elif step == "after-exchange":
        monkeypatch.setattr(output_io, "_remove_tree", _fail)
        expected = "new"
    else:  # where no atomic exchange exists: rename aside, rename in (fails), rename back
        real_replace = os.replace

        def replace(src: object, dst: object) -> None:
            if Path(str(dst)) == target:
                if Path(str(src)).name.endswith(".tmp"):
                    raise OSError(28, "No space left on device")
            real_replace(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(output_io, "_exchange", lambda *_: False)
        monkeypatch.setattr(output_io.os, "replace", replace)
        expected = "old"
    with pytest.raises(OSError):
        _write(target, "trust-snapshot", "new")
    assert _content(target) == expected
    assert output_kind(target) == "trust-snapshot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot"]


def test_a_process_killed_between_the_swap_steps_leaves_the_new_content(tmp_path: Path) -> None:
    target = tmp_path / "snapshot"
    _write(target, "trust-snapshot", "old")
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from trustfeed.features import io
        io._remove_tree = lambda path: os._exit(9)  # killed right after the exchange
        with io.atomic_dir(Path({str(target)!r}), "trust-snapshot") as tmp:
            (tmp / "data.txt").write_text("new")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert _content(target) == "new"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "snapshot"]
    assert len(leftovers) == 1 and (tmp_path / leftovers[0] / "data.txt").read_text() == "old"


def test_cli_features_into_a_foreign_directory_keeps_it_and_fails_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.csv").write_text("a,b\n1,2\n")
    # the events directory does not even exist: the output is checked before any work
    status = main(["features", "--events", str(tmp_path / "none"), "--as-of", "2026-01-01", "--out", str(out), "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("trustfeed features: error:")
    assert (out / "unrelated.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in out.iterdir()) == ["unrelated.csv"]


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--out", "{file}"],
        ["simulate", "--out", "{file}/sub"],
        ["rank", "--model", "{tmp}", "--requests", "{file}", "--out", "{tmp}"],
        ["rank", "--model", "{tmp}", "--requests", "{tmp}", "--out", "{tmp}/o.jsonl"],
        ["promote", "x", "--tracking-uri", "bogus://nowhere"],
        ["rank", "--model", "http://127.0.0.1:9/x", "--requests", "{file}", "--out", "{tmp}/o.jsonl"],
        ["rank", "--model", "runs:/0123/model", "--tracking-uri", "sqlite:///{file}/x.db", "--requests", "{file}",
         "--out", "{tmp}/o.jsonl"],
    ],
)
def test_cli_failures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    (tmp_path / "file.txt").write_text("keep")
    filled = [a.format(file=tmp_path / "file.txt", tmp=tmp_path) for a in argv]
    status = main(filled)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith(f"trustfeed {argv[0]}: error:"), err
    assert (tmp_path / "file.txt").read_text() == "keep"


def test_ctrl_c_at_any_moment_is_one_line_and_leaves_no_output(tmp_path: Path) -> None:
    import signal
    import time

    script = Path(sys.executable).with_name("trustfeed")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "trustfeed.training.cli"]
    out = tmp_path / "data"
    # the child gets Ctrl-C's default disposition: a test run started in the background of a
    # non-interactive shell (nohup ... &) inherits SIGINT ignored, and the CLI rightly keeps it so
    child = subprocess.Popen([*command, "simulate", "--out", str(out), "--merchants", "4000", "--days", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # while it imports pandas or simulates: both must end the same way (the world takes about 10 s
    # to simulate, so 1.5 s lands well before the final write on any machine)
    time.sleep(1.5)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("[")]  # progress lines start with [
    assert child.returncode == 130, err
    assert lines == ["trustfeed simulate: interrupted"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("store", ["/proc/trustfeed-test.db", "{tmp}/file.txt/mlflow.db"])
def test_an_unopenable_sqlite_store_fails_at_once(tmp_path: Path, store: str) -> None:
    from trustfeed.features.errors import ConfigError
    from trustfeed.serving._resolve import check_tracking_store

    (tmp_path / "file.txt").write_text("keep")
    uri = "sqlite:///" + store.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match="tracking store") as error:
        check_tracking_store(uri)  # MLflow alone retries such a store for about 100 s
    assert "\n" not in str(error.value)
    check_tracking_store(f"sqlite:///{tmp_path}/ok/mlflow.db")
    assert (tmp_path / "ok" / "mlflow.db").is_file() and (tmp_path / "file.txt").read_text() == "keep"
