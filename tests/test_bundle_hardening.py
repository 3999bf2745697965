"""A hostile bundle: every malformed manifest is a ModelIntegrityError, never another error."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from trustfeed.features.errors import ConfigError, ModelIntegrityError
from trustfeed.ranker.bundle import MANIFEST_NAME, load_bundle, parse_manifest, verify_bundle


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


# --------------------------------------------------------------------------- signed bundles


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    from trustfeed.ranker.signing import generate_keypair

    root = tmp_path_factory.mktemp("keys")
    return {"ours": generate_keypair(root / "ours"), "theirs": generate_keypair(root / "theirs")}


@pytest.fixture(scope="module")
def signed(fx: Any, keys: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from trustfeed.ranker.bundle import save_bundle

    path = tmp_path_factory.mktemp("signed") / "bundle"
    bundle_id = save_bundle(fx.make_pipeline(fx.trained_parts()), path, signing_key=keys["ours"][0])
    return path, bundle_id


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    from trustfeed.ranker.signing import generate_keypair

    private, public = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k")
    assert private.read_bytes() == before


def test_a_signed_bundle_loads_with_its_key_and_keeps_its_id(signed: tuple[Path, str], keys: Any) -> None:
    path, bundle_id = signed
    assert load_bundle(path, verify_key=keys["ours"][1]).model_id == bundle_id
    assert load_bundle(path).model_id == bundle_id  # without a key: as before


def test_unsigned_foreign_and_changed_bundles_are_refused(
    fx: Any, signed: tuple[Path, str], keys: Any, tmp_path: Path
) -> None:
    from trustfeed.ranker import bundle as bundle_module
    from trustfeed.ranker.bundle import save_bundle

    path, _ = signed
    ours = keys["ours"][1]
    with pytest.raises(ModelIntegrityError, match="signed by another key") as error:
        load_bundle(path, verify_key=keys["theirs"][1])
    assert error.value.path == "MANIFEST.sig"

    unsigned = tmp_path / "unsigned"
    save_bundle(fx.make_pipeline(fx.trained_parts()), unsigned)
    with pytest.raises(ModelIntegrityError, match="unsigned"):
        load_bundle(unsigned, verify_key=ours)

    # the attack of the issue: change the policy, then rewrite the manifest consistently
    changed = _copy(path, tmp_path / "changed")
    policy = json.loads((changed / "policy.json").read_text())
    policy["filter_banned"] = not policy.get("filter_banned", True)
    (changed / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(changed, verify_key=ours)
    assert error.value.path == "policy.json"  # the manifest still says otherwise
    bundle_module._write_manifest(changed)
    load_bundle(changed)  # self-consistent: only the signature can tell
    with pytest.raises(ModelIntegrityError, match="changed after signing") as error:
        load_bundle(changed, verify_key=ours)
    assert error.value.path == MANIFEST_NAME

    forged = _copy(path, tmp_path / "forged")
    (forged / "MANIFEST.sig").write_text('{"algorithm": "ed25519", "key_id": "x", "signature": "' + "A" * 5000 + '"}')
    with pytest.raises(ModelIntegrityError, match="MANIFEST.sig"):
        load_bundle(forged, verify_key=ours)


def test_sign_an_existing_bundle_and_reload_checks_the_key(
    fx: Any, signed: tuple[Path, str], keys: Any, tmp_path: Path
) -> None:
    from trustfeed.ranker.bundle import save_bundle, sign_bundle
    from trustfeed.serving import FeedRanker

    path, bundle_id = signed
    reviewed = tmp_path / "reviewed"
    save_bundle(fx.make_pipeline(fx.trained_parts(), trust_weight=0.5), reviewed)
    ranker = FeedRanker.load(path, verify_key=keys["ours"][1])
    with pytest.raises(ModelIntegrityError, match="unsigned"):
        ranker.reload(reviewed)
    assert ranker.model_id == bundle_id  # the signed model keeps serving
    sign_bundle(reviewed, keys["ours"][0])
    assert ranker.reload(reviewed) == load_bundle(reviewed).model_id
    (reviewed / "model.txt").write_text("tree\n")
    with pytest.raises(ModelIntegrityError):
        sign_bundle(reviewed, keys["ours"][0])  # only an intact bundle is signed


def test_cli_keygen_sign_and_rank_with_the_verify_key_from_the_environment(
    fx: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustfeed.ranker.bundle import save_bundle
    from trustfeed.training.cli import main

    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    parts = fx.trained_parts()
    save_bundle(fx.make_pipeline(parts), tmp_path / "bundle")
    (tmp_path / "requests.jsonl").write_text("\n".join(json.dumps(r) for r in parts.requests[:3]) + "\n")
    monkeypatch.setenv("TRUSTFEED_VERIFY_KEY", str(tmp_path / "keys" / "verify.key"))
    argv = ["rank", "--model", str(tmp_path / "bundle"), "--requests", str(tmp_path / "requests.jsonl"),
            "--out", str(tmp_path / "out.jsonl")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsigned" in err[0] and not (tmp_path / "out.jsonl").exists()
    assert main(["sign", "--bundle", str(tmp_path / "bundle"), "--key", str(tmp_path / "keys" / "signing.key")]) == 0
    assert main(argv) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    monkeypatch.setenv("TRUSTFEED_VERIFY_KEY", str(tmp_path / "keys" / "signing.key"))  # the wrong half
    capsys.readouterr()
    assert main(argv) == 2
    assert "private key" in capsys.readouterr().err


def test_a_bad_signing_key_fails_when_the_training_job_is_configured(tmp_path: Path) -> None:
    from trustfeed.training.train import TrainJobConfig

    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="signing key"):
        TrainJobConfig(events=tmp_path, signing_key=tmp_path / "key.pem")
