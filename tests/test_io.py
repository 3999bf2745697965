"""Atomic writers: all or nothing, and finished outputs readable like any other file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trustfeed.features.io import OUTPUT_MARKER, atomic_dir, atomic_file, sha256_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_file_leaves_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_atomic_dir_replaces_whole_directory_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "snapshot"
    with atomic_dir(target) as tmp:
        (tmp / "a.parquet").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.parquet").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "a.parquet"]
    with atomic_dir(target) as tmp:
        (tmp / "c.parquet").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "c.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot"]


def test_finished_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "metrics.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x.txt").write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "metrics.json") == 0o644
    assert _mode(tmp_path / "out") == 0o755
    assert _mode(tmp_path / "out" / "sub") == 0o755
    assert _mode(tmp_path / "out" / "sub" / "x.txt") == 0o644


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    payload = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_umask_is_read_without_changing_it(mask: int) -> None:
    from trustfeed.features.io import _umask

    old = os.umask(mask)
    try:
        assert _umask() == mask
        assert os.umask(mask) == mask  # still in force after the read
    finally:
        os.umask(old)
