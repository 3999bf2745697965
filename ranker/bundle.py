"""The model bundle: a trained :class:`~trustfeed.ranker.pipeline.RankingPipeline` on disk.

Layout (every file listed with its sha256 in ``MANIFEST.json``; nothing is pickled)::

    MANIFEST.json          {"format": "trustfeed-bundle", "format_version": 1, "created_at",
                            "files": {relative path: sha256}, "manifest_sha256"}
    model.txt              LightGBM model text
    schema.json            the model's feature schema (names, order, categorical, monotone)
    features.json          the feature assembler's schema (sources, categorical codes)
    pipeline.json          which optional parts the bundle holds
    policy.json            PolicyConfig (what is configured)
    policy_state.json      PolicyState (what the policy learned; when it is fitted)
    balancer.json          BalancerConfig              (when the pipeline has a balancer)
    balancer_state.json    the balancer's exposure ledger and controller state
    snapshot/              the trust snapshot: merchants.parquet, creators.parquet, extras, manifest.json
    context/               user and engagement history tables (Parquet) + manifest.json
    <extra files>          anything the training job adds (``extra_files``)

Loading verifies every checksum *before* parsing anything: a missing, altered or unlisted
file, an altered manifest or an unknown format version raises
:class:`~trustfeed.features.errors.ModelIntegrityError` naming the file. The manifest checks
itself too (``manifest_sha256`` over its canonical content, and its exact byte layout), so
one changed byte anywhere is refused. The bundle id reported in responses is the start of
``manifest_sha256``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..features.errors import ConfigError, ModelIntegrityError, TrustfeedError
from ..features.io import atomic_dir, sha256_file
from .pipeline import RankingPipeline

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "bundle_id",
    "load_bundle",
    "save_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT = "trustfeed-bundle"
BUNDLE_FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MANIFEST_NAME = "MANIFEST.json"
_SELF_KEY = "manifest_sha256"
_ID_LENGTH = 16

MODEL_FILE = "model.txt"
MODEL_SCHEMA_FILE = "schema.json"
FEATURES_FILE = "features.json"
PIPELINE_FILE = "pipeline.json"
POLICY_FILE = "policy.json"
POLICY_STATE_FILE = "policy_state.json"
BALANCER_FILE = "balancer.json"
BALANCER_STATE_FILE = "balancer_state.json"
SNAPSHOT_DIR = "snapshot"
CONTEXT_DIR = "context"
_REQUIRED = (
    MODEL_FILE,
    MODEL_SCHEMA_FILE,
    FEATURES_FILE,
    PIPELINE_FILE,
    POLICY_FILE,
    f"{SNAPSHOT_DIR}/manifest.json",
    f"{SNAPSHOT_DIR}/merchants.parquet",
    f"{SNAPSHOT_DIR}/creators.parquet",
)


# --------------------------------------------------------------------------- saving


def save_bundle(
    pipeline: RankingPipeline,
    path: str | os.PathLike[str],
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> str:
    """Write ``pipeline`` as a bundle directory at ``path`` (atomically: all or nothing).

    Parameters
    ----------
    pipeline
        A pipeline that knows its trust snapshot (and context tables, if its assembler uses
        them): built with ``snapshot=`` / ``context=`` or loaded from a bundle.
    path
        The bundle directory; an existing one is replaced only once the new one is complete.
    extra_files
        ``{relative path in the bundle: source file}``, e.g. a feature-importance table;
        they are checksummed like every other file.

    Returns
    -------
    str
        The bundle id (what responses report as ``model``).
    """
    if pipeline.snapshot is None:
        raise ConfigError("save_bundle: the pipeline has no trust snapshot (build it with snapshot=...)")
    extra = dict(extra_files or {})
    for rel in extra:
        _check_relative(rel)
        if rel == MANIFEST_NAME or rel in _own_files() or rel.split("/")[0] in (SNAPSHOT_DIR, CONTEXT_DIR):
            raise ConfigError(f"save_bundle: extra file {rel!r} would overwrite a part of the bundle")
    with atomic_dir(path) as tmp:
        # LambdaMART.save writes its directory atomically (it replaces it): it goes first
        pipeline.model.save(tmp)
        _write_json(tmp / FEATURES_FILE, pipeline.assembler.schema())
        _write_json(
            tmp / PIPELINE_FILE,
            {
                "feature_names": list(pipeline.feature_names),
                "balancer": pipeline.balancer is not None,
                "context": pipeline.context is not None,
                "policy_state": pipeline.policy.state is not None,
            },
        )
        _write_json(tmp / POLICY_FILE, pipeline.policy.config.to_dict())
        if pipeline.policy.state is not None:
            _write_json(tmp / POLICY_STATE_FILE, pipeline.policy.state.to_dict())
        if pipeline.balancer is not None:
            _write_json(tmp / BALANCER_FILE, pipeline.balancer.config.to_dict())
            _write_json(tmp / BALANCER_STATE_FILE, pipeline.balancer.state_dict())
        pipeline.snapshot.save(tmp / SNAPSHOT_DIR)
        if pipeline.context is not None:
            pipeline.context.save(tmp / CONTEXT_DIR)
        for rel, source in extra.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        manifest = _write_manifest(tmp)
    return str(manifest[_SELF_KEY][:_ID_LENGTH])


def _own_files() -> set[str]:
    return {MODEL_FILE, MODEL_SCHEMA_FILE, FEATURES_FILE, PIPELINE_FILE, POLICY_FILE, POLICY_STATE_FILE, BALANCER_FILE,
            BALANCER_STATE_FILE}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def _check_relative(rel: str) -> None:
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or rel != pure.as_posix():
        raise ConfigError(f"save_bundle: {rel!r} is not a plain relative path")


# --------------------------------------------------------------------------- the manifest


def _canonical_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _render(manifest: Mapping[str, Any]) -> str:
    # One fixed layout: loading re-renders the parsed manifest and compares the bytes, so even
    # a changed space is refused, not just a changed value.
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def _bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` as a POSIX relative path, the manifest excluded."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                found.append(rel)
    return sorted(found)


def _write_manifest(root: Path) -> dict[str, Any]:
    body: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "files": {rel: sha256_file(root / rel) for rel in _bundle_files(root)},
    }
    manifest = {**body, _SELF_KEY: hashlib.sha256(_canonical_body(body)).hexdigest()}
    (root / MANIFEST_NAME).write_text(_render(manifest), encoding="ascii")
    return manifest


def bundle_id(manifest: Mapping[str, Any]) -> str:
    """The short id of a verified bundle (reported as ``model`` in responses)."""
    return str(manifest[_SELF_KEY])[:_ID_LENGTH]


def verify_bundle(path: str | os.PathLike[str], required: tuple[str, ...] = _REQUIRED) -> dict[str, Any]:
    """Check a bundle directory against its manifest; returns the manifest.

    Raises
    ------
    ModelIntegrityError
        Naming the file: a missing, unparsable or altered manifest; an unknown format or
        format version; a listed file that is missing or whose sha256 differs; a file present
        but not listed; a required file not listed; a listed path leaving the bundle.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelIntegrityError(str(root), "not a directory")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelIntegrityError(MANIFEST_NAME, "missing: not a trustfeed model bundle, or an incomplete one")
    raw = manifest_path.read_bytes()
    try:
        text = raw.decode("ascii")
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelIntegrityError(MANIFEST_NAME, f"not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ModelIntegrityError(MANIFEST_NAME, f"expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ModelIntegrityError(MANIFEST_NAME, f"format: expected {BUNDLE_FORMAT!r}, got {manifest.get('format')!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelIntegrityError(
            MANIFEST_NAME,
            f"format_version: expected one of {sorted(SUPPORTED_FORMAT_VERSIONS)}, got {version!r} "
            "(a bundle written by another trustfeed version?)",
        )
    body = {key: value for key, value in manifest.items() if key != _SELF_KEY}
    if manifest.get(_SELF_KEY) != hashlib.sha256(_canonical_body(body)).hexdigest():
        raise ModelIntegrityError(MANIFEST_NAME, "checksum mismatch: the manifest was altered")
    if text != _render(manifest):
        raise ModelIntegrityError(MANIFEST_NAME, "not in its canonical layout: the manifest was altered")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ModelIntegrityError(MANIFEST_NAME, "files: expected an object {relative path: sha256}")
    for rel in files:
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or rel != pure.as_posix() or rel == MANIFEST_NAME:
            raise ModelIntegrityError(rel, "listed path is not a plain relative path inside the bundle")
    for rel in required:
        if rel not in files:
            raise ModelIntegrityError(rel, "required file not listed in MANIFEST.json")
    for rel, expected in sorted(files.items()):
        file = root / rel
        if not file.is_file():
            raise ModelIntegrityError(rel, "listed in MANIFEST.json but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ModelIntegrityError(rel, f"sha256 mismatch: the file was altered (manifest {expected[:12]}, file {actual[:12]})")
    unlisted = sorted(set(_bundle_files(root)).difference(files))
    if unlisted:
        raise ModelIntegrityError(unlisted[0], "present in the bundle but not listed in MANIFEST.json")
    return manifest


# --------------------------------------------------------------------------- loading


def load_bundle(path: str | os.PathLike[str], snapshot: str | os.PathLike[str] | None = None) -> RankingPipeline:
    """Verify and load a bundle directory as a :class:`RankingPipeline`.

    Parameters
    ----------
    path
        A directory written by :func:`save_bundle`.
    snapshot
        A trust snapshot directory (as written by ``trustfeed features``) to use instead of
        the bundled one, e.g. a fresher one; the model's feature layout is kept (see
        :class:`~trustfeed.features.context.FeatureAssembler`'s ``schema``). The bundled
        context tables are still used.

    Raises
    ------
    ModelIntegrityError
        The bundle (or the override snapshot) is incomplete, altered or of an unknown format;
        the message names the file.
    """
    from ..features.context import ContextTables
    from ..features.trust import TrustSnapshot
    from .balancer import BalancerConfig, ExposureBalancer
    from .lambdamart import LambdaMART
    from .policy import Policy

    root = Path(path)
    manifest = verify_bundle(root)
    files = manifest["files"]
    layout = _read_json(root, PIPELINE_FILE)
    has_balancer = bool(layout.get("balancer"))
    has_context = bool(layout.get("context"))
    # bundles written before the policy's fitted state had its own file keep it in policy.json
    has_policy_state = bool(layout.get("policy_state"))
    for rel in ((BALANCER_FILE, BALANCER_STATE_FILE) if has_balancer else ()) + (
        (f"{CONTEXT_DIR}/manifest.json",) if has_context else ()
    ) + ((POLICY_STATE_FILE,) if has_policy_state else ()):
        if rel not in files:
            raise ModelIntegrityError(rel, f"required by {PIPELINE_FILE} but not listed in MANIFEST.json")

    model = _parse(MODEL_FILE, lambda: LambdaMART.load(root))
    feature_schema = _read_json(root, FEATURES_FILE)
    policy_state = _read_json(root, POLICY_STATE_FILE) if has_policy_state else None
    policy = _parse(POLICY_STATE_FILE if has_policy_state else POLICY_FILE,
                    lambda: Policy.from_dict(_read_json(root, POLICY_FILE), policy_state))
    balancer = None
    if has_balancer:
        balancer_config = _parse(BALANCER_FILE, lambda: BalancerConfig.from_dict(_read_json(root, BALANCER_FILE)))
        state = _read_json(root, BALANCER_STATE_FILE)
        balancer = _parse(BALANCER_STATE_FILE, lambda: ExposureBalancer.from_state(balancer_config, state))
    context = _parse(f"{CONTEXT_DIR}/manifest.json", lambda: ContextTables.load(root / CONTEXT_DIR)) if has_context else None

    model_id = bundle_id(manifest)
    if snapshot is None:
        trust_snapshot = _parse(f"{SNAPSHOT_DIR}/manifest.json", lambda: TrustSnapshot.load(root / SNAPSHOT_DIR))
    else:
        trust_snapshot, snapshot_digest = load_snapshot(snapshot)
        model_id = f"{model_id}+snapshot-{snapshot_digest[:8]}"
    # the feature layout (features.json) over the tables, checked against the model's features
    return _parse(
        FEATURES_FILE,
        lambda: RankingPipeline.from_tables(
            trust_snapshot, context, model, policy, balancer, schema=feature_schema, model_id=model_id
        ),
    )


def load_snapshot(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """Load a trust snapshot directory, checked against its own manifest.

    Returns the snapshot and the sha256 of its ``manifest.json``. The manifest's format
    version and its row counts must match the tables.

    Raises
    ------
    ModelIntegrityError
        Naming the snapshot file that is missing, unreadable or disagrees with the manifest.
    """
    from ..features.trust import TrustSnapshot

    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ModelIntegrityError(str(manifest_path), "missing: not a trust snapshot directory")
    for name in ("merchants.parquet", "creators.parquet"):
        if not (root / name).is_file():
            raise ModelIntegrityError(str(root / name), "missing from the trust snapshot")
    digest = sha256_file(manifest_path)
    snapshot = _parse(str(manifest_path), lambda: TrustSnapshot.load(root))
    counts = snapshot.manifest.get("row_counts", {}) if isinstance(snapshot.manifest, dict) else {}
    for name, frame in (("merchants", snapshot.merchants), ("creators", snapshot.creators), *snapshot.extras.items()):
        expected = counts.get(name)
        if expected is not None and int(expected) != len(frame):
            raise ModelIntegrityError(
                str(root / f"{name}.parquet"), f"{len(frame)} rows, the snapshot manifest says {expected}"
            )
    return snapshot, digest


def _read_json(root: Path, rel: str) -> Any:
    try:
        return json.loads((root / rel).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelIntegrityError(rel, f"unreadable JSON ({error})") from None


def _parse(rel: str, build: Any) -> Any:
    """Run ``build``; a parse failure of a verified file is reported against that file."""
    try:
        return build()
    except ModelIntegrityError:
        raise
    except (TrustfeedError, KeyError, TypeError, ValueError, OSError) as error:
        message = " ".join(str(error).split())
        raise ModelIntegrityError(rel, f"cannot be loaded: {type(error).__name__}: {message}") from error
