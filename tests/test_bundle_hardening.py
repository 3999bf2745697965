"""A hostile bundle: every malformed manifest is a ModelIntegrityError, never another error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trustfeed.features.errors import ModelIntegrityError
from trustfeed.ranker.bundle import MANIFEST_NAME, parse_manifest, verify_bundle


def _manifest(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "format": "trustfeed-bundle",
        "format_version": 1,
        "created_at": "2026-01-01T00:00:00+00:00",
        "files": {"model.txt": "0" * 64},
    }
    body.update(changes)
    return body


def _render(body: dict[str, object]) -> bytes:
    """Written the way the bundle writer does: self-checksum and canonical layout."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    full = {**body, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}
    return (json.dumps(full, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def test_a_well_formed_manifest_parses() -> None:
    assert parse_manifest(_render(_manifest()))["files"] == {"model.txt": "0" * 64}


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"format_version": ' + b"9" * 5000 + b"}",
        b"{" * 50 + b"}" * 50,
        b"\xff\xfe{}",
        b" " * (5 << 20),
        b'{"format": NaN}',
        _render(_manifest(format_version={})),
        _render(_manifest(format_version=True)),
        _render(_manifest(format_version=1.0)),
        _render(_manifest(files=[])),
        _render(_manifest(files={"model.txt": 5})),
        _render(_manifest(files={"model.txt": "xyz"})),
        _render(_manifest(files={"/etc/passwd": "0" * 64})),
        _render(_manifest(files={"": "0" * 64})),
        _render(_manifest(files={"MANIFEST.sig": "0" * 64})),
        _render(_manifest(created_at=None)),
        _render(_manifest(extra={"a": 1})),
        _render(_manifest())[:-3] + b"}\n",
        _render(_manifest()).replace(b"  ", b"   ", 1),
    ],
)
def test_every_malformed_manifest_is_an_integrity_error(raw: bytes, tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError) as error:
        parse_manifest(raw)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400
    (tmp_path / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(ModelIntegrityError):
        verify_bundle(tmp_path)
