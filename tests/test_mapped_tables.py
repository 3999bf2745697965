"""Memory-mapped serving tables: the id index, the mapped assembler and FeedRanker on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features._id_index import HashedIds
from trustfeed.features.context import FeatureAssembler
from trustfeed.features.errors import ModelIntegrityError, SchemaError
from trustfeed.ranker.bundle import save_bundle
from trustfeed.serving import FeedRanker, open_mapped_tables, write_mapped_tables

_ID_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(stored=st.lists(_ID_TEXT, unique=True, max_size=200), others=st.lists(_ID_TEXT, max_size=30))
def test_every_stored_id_finds_its_row_and_nothing_else_matches(stored: list[str], others: list[str]) -> None:
    index = HashedIds.build(stored)
    row_of = {v: i for i, v in enumerate(stored)}
    queries = stored[::-1] + others + ["a\x00", ""]
    expected = [row_of.get(q, -1) if "\x00" not in q else -1 for q in queries]
    assert index.lookup(queries).tolist() == expected
    assert [index.lookup_one(q) for q in queries] == expected


def test_id_index_edge_cases() -> None:
    index = HashedIds.build(["m1", "a" * 40, "ü-7"])
    # longer than any stored id, missing values, a NUL, a lone surrogate: unknown, never an error
    assert index.lookup(["a" * 41, None, "m1\x00", "\ud800", "ü-7", "m1"]).tolist() == [-1, -1, -1, -1, 2, 0]
    with pytest.raises(SchemaError, match="appears twice"):
        HashedIds.build(["a", "b", "a"])
    with pytest.raises(SchemaError, match="NUL"):
        HashedIds.build(["a\x00b"])
    assert HashedIds.build([]).lookup(["x"]).tolist() == [-1]


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture(scope="module")
def mapped_dir(parts: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assembler = FeatureAssembler(parts.snapshot, parts.context, schema=parts.feature_schema)
    path = tmp_path_factory.mktemp("mapped") / "tables"
    write_mapped_tables(assembler, path)
    return path


def test_mapped_assembler_gives_the_heap_assembler_features(parts: Any, mapped_dir: Path) -> None:
    heap = FeatureAssembler(parts.snapshot, parts.context, schema=parts.feature_schema)
    mapped = open_mapped_tables(mapped_dir)
    rows = parts.impressions  # many users, creators and merchants, some unknown to the tables
    expected, expected_status = heap.transform_with_status(rows)
    got, status = mapped.assembler.transform_with_status(rows)
    assert np.array_equal(got, expected, equal_nan=True)
    for a, b in zip(status, expected_status, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    # one request: one user, one time, cold-start ids included
    request = {"user_id": str(rows["user_id"].iloc[0]), "ts": rows["ts"].iloc[0],
               "creator_id": np.array(["c-new", *rows["creator_id"].astype(str).iloc[:5]], dtype=object),
               "merchant_id": np.array(["m-new", *rows["merchant_id"].astype(str).iloc[:5]], dtype=object)}
    assert np.array_equal(mapped.assembler.transform(request), heap.transform(request), equal_nan=True)
    # the arrays are the read-only file mappings, not heap copies
    table = mapped.assembler.served_arrays()["creator_table"]
    assert not table.flags.writeable and not table.flags.owndata


def test_feed_ranker_on_mapped_tables_ranks_like_the_bundle(fx: Any, parts: Any, mapped_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    save_bundle(fx.make_pipeline(parts), bundle)
    plain = FeedRanker.load(bundle)
    mapped = FeedRanker.load(bundle, tables=mapped_dir)
    assert mapped.model_id.startswith(f"{plain.model_id}+tables-")
    for request in parts.requests[:20]:
        a, b = plain.rank(request), mapped.rank(request)
        assert a["items"] == b["items"] and a["filtered"] == b["filtered"]
    assert mapped.reload(bundle) == mapped.model_id  # reloads keep the tables
    with pytest.raises(Exception, match="not both"):
        FeedRanker.load(bundle, snapshot=tmp_path, tables=mapped_dir)


def test_over_mapped_tables_the_bundles_own_tables_are_not_read(
    fx: Any, parts: Any, mapped_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustfeed.features.context import ContextTables
    from trustfeed.features.trust import TrustSnapshot

    bundle = tmp_path / "bundle"
    save_bundle(fx.make_pipeline(parts), bundle)
    expected = FeedRanker.load(bundle, tables=mapped_dir, predictor="lightgbm")

    def unread(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the bundle's own snapshot or history was read")

    monkeypatch.setattr(TrustSnapshot, "load", unread)
    monkeypatch.setattr(ContextTables, "load", unread)
    ranker = FeedRanker.load(bundle, tables=mapped_dir, predictor="lightgbm")
    assert ranker.model_id == expected.model_id and ranker.pipeline.snapshot is None
    assert ranker.rank(parts.requests[0]) == expected.rank(parts.requests[0])
    # the bundle is still verified whole: a changed snapshot file is refused
    snapshot_file = next((bundle / "snapshot").glob("*.parquet"))
    snapshot_file.write_bytes(snapshot_file.read_bytes() + b"x")
    with pytest.raises(ModelIntegrityError):
        FeedRanker.load(bundle, tables=mapped_dir, predictor="lightgbm")


def test_files_are_checked_by_blake3_and_sha256_tables_still_open(mapped_dir: Path, tmp_path: Path) -> None:
    import hashlib
    import json
    import shutil

    from blake3 import blake3

    manifest = json.loads((mapped_dir / "MANIFEST.json").read_text())
    assert manifest["format_version"] == 2
    for entry in manifest["arrays"].values():
        assert entry["blake3"] == blake3((mapped_dir / entry["file"]).read_bytes()).hexdigest()
    # a directory of the first format (SHA-256 per file) opens and is checked the same way
    old = tmp_path / "v1"
    shutil.copytree(mapped_dir, old)
    for entry in manifest["arrays"].values():
        entry.pop("blake3")
        entry["sha256"] = hashlib.sha256((old / entry["file"]).read_bytes()).hexdigest()
    manifest["format_version"] = 1
    (old / "MANIFEST.json").write_text(json.dumps(manifest))
    reference = open_mapped_tables(mapped_dir).assembler.served_arrays()
    opened = open_mapped_tables(old).assembler.served_arrays()
    assert all(np.array_equal(opened[name], reference[name], equal_nan=True) for name in reference)
    target = old / manifest["arrays"]["creator_table"]["file"]
    data = bytearray(target.read_bytes())
    data[-64] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        open_mapped_tables(old)
    manifest["format_version"] = 3
    (old / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="format 1 or 2"):
        open_mapped_tables(old)


def test_tampered_missing_or_foreign_tables_are_refused(fx: Any, parts: Any, mapped_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tables"
    shutil.copytree(mapped_dir, copy)
    target = copy / "status_trust.arrow"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch") as error:
        open_mapped_tables(copy)
    assert error.value.path.endswith("status_trust.arrow")
    (copy / "status_trust.arrow").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        open_mapped_tables(copy)
    # tables built with another feature layout do not serve this model
    other = FeatureAssembler(parts.snapshot, parts.context, merchant_columns=("gmv",))
    write_mapped_tables(other, tmp_path / "other")
    bundle = tmp_path / "bundle"
    save_bundle(fx.make_pipeline(parts), bundle)
    with pytest.raises(ModelIntegrityError, match="feature layout"):
        FeedRanker.load(bundle, tables=tmp_path / "other")


def test_trustfeed_features_writes_the_serving_tables(fx: Any, parts: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # the CLI path: the same simulated platform on disk, its snapshot and the model's tables
    from trustfeed.training.cli import main
    from trustfeed.training.simulate import SimConfig, simulate, write_dataset

    events = tmp_path / "events"
    write_dataset(simulate(SimConfig(seed=5, merchants=40, days=16)), events)
    bundle = tmp_path / "bundle"
    save_bundle(fx.make_pipeline(parts), bundle)
    as_of = parts.snapshot.as_of.isoformat()
    base = ["features", "--events", str(events), "--as-of", as_of, "--out", str(tmp_path / "snapshot")]

    # a model that does not verify fails before the snapshot is built (nothing written)
    import shutil

    shutil.copytree(bundle, tmp_path / "tampered")
    (tmp_path / "tampered" / "policy.json").write_text((bundle / "policy.json").read_text() + " ")
    assert main([*base, "--serving-tables", str(tmp_path / "tables"), "--model", str(tmp_path / "tampered")]) == 2
    assert "policy.json" in capsys.readouterr().err
    assert not (tmp_path / "snapshot").exists() and not (tmp_path / "tables").exists()

    assert main([*base, "--serving-tables", str(tmp_path / "tables"), "--model", str(bundle)]) == 0
    plain, mapped = FeedRanker.load(bundle), FeedRanker.load(bundle, tables=tmp_path / "tables")
    assert mapped.model_id.startswith(f"{plain.model_id}+tables-")
    for request in parts.requests[:10]:
        a, b = plain.rank(request), mapped.rank(request)
        assert a["items"] == b["items"] and a["filtered"] == b["filtered"]


@pytest.mark.parametrize("extra, problem", [
    (["--serving-tables", "t"], "go together"),
    (["--model", "m"], "go together"),
    (["--serving-tables", "t", "--model", "m", "--incremental", "--from", "s"], "not with --incremental"),
])
def test_serving_tables_options_are_checked_first(extra: list[str], problem: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from trustfeed.training.cli import main

    argv = ["features", "--events", str(tmp_path / "missing"), "--as-of", "2026-01-05", "--out", str(tmp_path / "s")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1
