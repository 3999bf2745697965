"""The model bundle: round trip, checksums, tampering, snapshot override, atomic writes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trustfeed.features.errors import ConfigError, ModelIntegrityError
from trustfeed.features.io import OUTPUT_MARKER
from trustfeed.ranker.bundle import MANIFEST_NAME, load_bundle, save_bundle, verify_bundle


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture(scope="module")
def saved(fx: Any, parts: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A pipeline that has served some traffic, and its bundle."""
    pipeline = fx.make_pipeline(parts)
    pipeline.rank_many(parts.requests[:30])
    path = tmp_path_factory.mktemp("bundles") / "bundle"
    save_bundle(pipeline, path)
    return pipeline, path


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def _bundle_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_round_trip_gives_identical_rankings_and_state(saved: tuple[Any, Path], parts: Any) -> None:
    pipeline, path = saved
    loaded = load_bundle(path)
    requests = parts.requests[30:60]
    expected = pipeline.rank_many(requests, record=False, log_features=True)
    got = loaded.rank_many(requests, record=False, log_features=True)
    for want, have in zip(expected, got, strict=True):
        assert have["model"] == loaded.model_id and want["model"] is None
        assert {**have, "model": None} == want
    assert loaded.balancer.state_dict() == pipeline.balancer.state_dict()
    assert loaded.policy == pipeline.policy
    assert loaded.balancer.config == pipeline.balancer.config
    assert loaded.feature_names == pipeline.feature_names


def test_layout_is_explicit_formats_only(saved: tuple[Any, Path]) -> None:
    _, path = saved
    files = _bundle_files(path)
    for required in ("MANIFEST.json", "model.txt", "schema.json", "policy.json", "balancer.json",
                     "balancer_state.json", "snapshot/merchants.parquet", "snapshot/manifest.json",
                     "context/follows.parquet"):
        assert required in files
    assert {Path(f).suffix for f in files} <= {".json", ".txt", ".parquet"}
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["format"] == "trustfeed-bundle" and manifest["format_version"] == 1
    # everything is listed but the manifest and the marker saying trustfeed wrote the directory
    assert sorted(manifest["files"]) == [f for f in files if f not in (MANIFEST_NAME, OUTPUT_MARKER)]
    assert (path / "model.txt").read_text().startswith("tree")


def test_save_is_reproducible_in_content(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    again = tmp_path / "again"
    save_bundle(load_bundle(path), again)
    first = json.loads((path / MANIFEST_NAME).read_text())["files"]
    second = json.loads((again / MANIFEST_NAME).read_text())["files"]
    assert first["model.txt"] == second["model.txt"]
    assert first["balancer_state.json"] == second["balancer_state.json"]




@pytest.mark.parametrize(
    "relative",
    [
        "MANIFEST.json",
        "model.txt",
        "schema.json",
        "features.json",
        "pipeline.json",
        "policy.json",
        "balancer.json",
        "balancer_state.json",
        "snapshot/manifest.json",
        "snapshot/merchants.parquet",
        "snapshot/creators.parquet",
        "context/manifest.json",
        "context/user_merchant.parquet",
    ],
)
@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_one_changed_byte_is_refused_naming_the_file(
    saved: tuple[Any, Path], tmp_path: Path, relative: str, where: float
) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    target = bundle / relative
    data = bytearray(target.read_bytes())
    offset = min(int(where * len(data)), len(data) - 1)
    data[offset] = (data[offset] + 1) % 256
    target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == relative
    assert relative in str(error.value)


def test_every_file_of_the_bundle_is_covered(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    # the output marker is the one file left out: nothing reads it when loading
    for relative in [f for f in _bundle_files(path) if f != OUTPUT_MARKER]:
        bundle = _copy(path, tmp_path / relative.replace("/", "_"))
        target = bundle / relative
        data = bytearray(target.read_bytes())
        data[len(data) // 3] ^= 0x01
        target.write_bytes(bytes(data))
        with pytest.raises(ModelIntegrityError) as error:
            verify_bundle(bundle)
        assert error.value.path == relative


@pytest.mark.parametrize("relative", ["model.txt", "balancer_state.json", "snapshot/creators.parquet", MANIFEST_NAME])
def test_missing_file_is_refused_naming_it(saved: tuple[Any, Path], tmp_path: Path, relative: str) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    (bundle / relative).unlink()
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == relative


def test_unlisted_extra_file_is_refused(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    (bundle / "snapshot" / "smuggled.parquet").write_bytes(b"PAR1")
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == "snapshot/smuggled.parquet"
    assert "not listed" in str(error.value)


def _rewrite_manifest(bundle: Path, change: Any) -> None:
    """Alter the manifest *consistently* (self-checksum and layout recomputed)."""
    from trustfeed.ranker import bundle as bundle_module

    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    change(body)
    import hashlib

    body["manifest_sha256"] = hashlib.sha256(bundle_module._canonical_body(body)).hexdigest()
    (bundle / MANIFEST_NAME).write_text(bundle_module._render(body))


def test_unknown_format_version_is_refused(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    _rewrite_manifest(bundle, lambda body: body.update(format_version=99))
    with pytest.raises(ModelIntegrityError, match="format_version") as error:
        load_bundle(bundle)
    assert error.value.path == MANIFEST_NAME


def test_listed_but_unknown_file_must_match_its_checksum(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    (bundle / "notes.txt").write_text("hello")
    _rewrite_manifest(bundle, lambda body: body["files"].update({"notes.txt": "0" * 64}))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == "notes.txt"


def test_required_file_dropped_from_the_manifest_is_refused(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    (bundle / "policy.json").unlink()
    _rewrite_manifest(bundle, lambda body: body["files"].pop("policy.json"))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == "policy.json"


def test_path_escaping_the_bundle_is_refused(saved: tuple[Any, Path], tmp_path: Path) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    _rewrite_manifest(bundle, lambda body: body["files"].update({"../outside.txt": "0" * 64}))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == "../outside.txt"


def test_verified_but_invalid_config_is_reported_against_its_file(saved: tuple[Any, Path], tmp_path: Path) -> None:
    from trustfeed.features.io import sha256_file

    _, path = saved
    bundle = _copy(path, tmp_path)
    (bundle / "policy.json").write_text(json.dumps({"trust_weight": -3}))
    _rewrite_manifest(bundle, lambda body: body["files"].update({"policy.json": sha256_file(bundle / "policy.json")}))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(bundle)
    assert error.value.path == "policy.json" and "trust_weight" in str(error.value)


def test_extra_files_are_bundled_and_checked(fx: Any, parts: Any, tmp_path: Path) -> None:
    notes = tmp_path / "importance.csv"
    notes.write_text("feature,gain\nmerchant_trust_index,1.0\n")
    path = tmp_path / "bundle"
    save_bundle(fx.make_pipeline(parts), path, extra_files={"reports/importance.csv": notes})
    assert (path / "reports" / "importance.csv").read_text() == notes.read_text()
    load_bundle(path)
    (path / "reports" / "importance.csv").write_text("feature,gain\nmerchant_trust_index,9.0\n")
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(path)
    assert error.value.path == "reports/importance.csv"
    with pytest.raises(ConfigError):
        save_bundle(fx.make_pipeline(parts), tmp_path / "b2", extra_files={"model.txt": notes})


def test_failed_save_leaves_the_previous_bundle_intact(fx: Any, saved: tuple[Any, Path], parts: Any, tmp_path: Path) -> None:
    _, path = saved
    bundle = _copy(path, tmp_path)
    before = (bundle / MANIFEST_NAME).read_bytes()
    with pytest.raises(FileNotFoundError):
        save_bundle(fx.make_pipeline(parts), bundle, extra_files={"x.txt": tmp_path / "does-not-exist"})
    assert (bundle / MANIFEST_NAME).read_bytes() == before
    load_bundle(bundle)
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no temporary left behind


def test_pipeline_without_snapshot_cannot_be_saved(fx: Any, parts: Any, tmp_path: Path) -> None:
    pipeline = fx.make_pipeline(parts)
    pipeline.snapshot = None
    with pytest.raises(ConfigError, match="snapshot"):
        save_bundle(pipeline, tmp_path / "b")


def test_pipeline_without_balancer_round_trips(fx: Any, parts: Any, tmp_path: Path) -> None:
    pipeline = fx.make_pipeline(parts, balancer=False)
    save_bundle(pipeline, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.balancer is None
    assert not (tmp_path / "b" / "balancer.json").exists()
    request = parts.requests[0]
    assert {**loaded.rank(request), "model": None} == pipeline.rank(request)


# --------------------------------------------------------------------------- snapshot override


def test_snapshot_override_changes_trust_and_the_model_id(saved: tuple[Any, Path], parts: Any, tmp_path: Path) -> None:
    _, path = saved
    merchants = parts.snapshot.merchants.copy()
    merchants["trust_index"] = 1.0 - merchants["trust_index"].astype(float)
    fresh = tmp_path / "fresh-snapshot"
    replace(parts.snapshot, merchants=merchants).save(fresh)
    bundled = load_bundle(path)
    overridden = load_bundle(path, snapshot=fresh)
    assert overridden.model_id.startswith(bundled.model_id + "+snapshot-")
    request = parts.requests[0]
    trust = {i["stream_id"]: i["trust"] for i in bundled.rank(request, record=False)["items"]}
    flipped = {i["stream_id"]: i["trust"] for i in overridden.rank(request, record=False)["items"]}
    assert trust.keys() == flipped.keys()
    assert all(abs(flipped[s] - (1.0 - trust[s])) < 1e-9 for s in trust)
    assert overridden.feature_names == bundled.feature_names


def test_broken_snapshot_override_is_refused_naming_the_file(saved: tuple[Any, Path], parts: Any, tmp_path: Path) -> None:
    _, path = saved
    snapshot_dir = tmp_path / "snap"
    parts.snapshot.save(snapshot_dir)
    manifest = json.loads((snapshot_dir / "manifest.json").read_text())
    manifest["row_counts"]["merchants"] += 1
    (snapshot_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(path, snapshot=snapshot_dir)
    assert error.value.path.endswith("merchants.parquet")
    (snapshot_dir / "creators.parquet").unlink()
    with pytest.raises(ModelIntegrityError) as error:
        load_bundle(path, snapshot=snapshot_dir)
    assert error.value.path.endswith("creators.parquet")
    with pytest.raises(ModelIntegrityError):
        load_bundle(path, snapshot=tmp_path / "nowhere")


def test_scores_survive_the_round_trip_bit_for_bit(saved: tuple[Any, Path], parts: Any) -> None:
    pipeline, path = saved
    loaded = load_bundle(path)
    from trustfeed.features.context import FeatureAssembler

    frame = parts.impressions.head(300)
    X = FeatureAssembler(parts.snapshot, parts.context, schema=parts.feature_schema).transform(frame)
    np.testing.assert_array_equal(loaded.model.predict(loaded.assembler.transform(frame)), pipeline.model.predict(X))
