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
    purchase_model/        click_model.txt, purchase_model.txt, purchase_model.json
                           (when the pipeline has a purchase model, :mod:`trustfeed.ranker.purchase`)
    snapshot/              the trust snapshot: merchants.parquet, creators.parquet, extras, manifest.json
    context/               user and engagement history tables (Parquet) + manifest.json
    <extra files>          anything the training job adds (``extra_files``)
    MANIFEST.sig           optional: an Ed25519 signature of MANIFEST.json's bytes (see
                           :mod:`trustfeed.ranker.signing`), made after the manifest

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
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from ..features.errors import ConfigError, ModelIntegrityError, TrustfeedError
from ..features.io import OUTPUT_MARKER, atomic_dir, sha256_file
from .pipeline import RankingPipeline
from .signing import SIGNATURE_NAME, load_signing_key, load_verify_key, verify_signature, write_signature

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KeyPath = str | os.PathLike[str]

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "bundle_id",
    "load_bundle",
    "save_bundle",
    "sign_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT = "trustfeed-bundle"
BUNDLE_FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MANIFEST_NAME = "MANIFEST.json"
# Not covered by the manifest: the manifest itself, its signature (made after it) and the
# marker every trustfeed output directory carries (written when the directory is published;
# it only says "trustfeed wrote this" and nothing reads it when loading).
_UNLISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME, OUTPUT_MARKER})
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
PURCHASE_DIR = "purchase_model"
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
    *,
    signing_key: KeyPath | Ed25519PrivateKey | None = None,
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
    signing_key
        An Ed25519 private key (a ``signing.key`` file from ``trustfeed keygen``, or the key
        object): the manifest is signed (``MANIFEST.sig``) before the bundle is published.

    Returns
    -------
    str
        The bundle id (what responses report as ``model``).
    """
    if pipeline.snapshot is None:
        raise ConfigError("save_bundle: the pipeline has no trust snapshot (build it with snapshot=...)")
    private_key = load_signing_key(signing_key) if isinstance(signing_key, (str, os.PathLike)) else signing_key
    extra = dict(extra_files or {})
    for rel in extra:
        _check_relative(rel)
        if rel == MANIFEST_NAME or rel in _own_files() or rel.split("/")[0] in (SNAPSHOT_DIR, CONTEXT_DIR, PURCHASE_DIR):
            raise ConfigError(f"save_bundle: extra file {rel!r} would overwrite a part of the bundle")
    with atomic_dir(path, "model-bundle") as tmp:
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
                "purchase_model": pipeline.purchase_model is not None,
            },
        )
        if pipeline.purchase_model is not None:
            pipeline.purchase_model.save(tmp / PURCHASE_DIR)
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
        if private_key is not None:
            write_signature(tmp, private_key, (tmp / MANIFEST_NAME).read_bytes())
    return str(manifest[_SELF_KEY][:_ID_LENGTH])


def sign_bundle(path: str | os.PathLike[str], signing_key: KeyPath | Ed25519PrivateKey) -> str:
    """Sign an existing bundle (e.g. once it has been reviewed); returns the key id.

    The bundle is verified first: only an intact bundle is signed. An earlier signature is
    replaced. The bundle id does not change (it is the manifest's checksum).

    Raises
    ------
    ModelIntegrityError
        The bundle is incomplete or altered.
    ConfigError
        ``signing_key`` is not an Ed25519 private key.
    """
    private_key = load_signing_key(signing_key) if isinstance(signing_key, (str, os.PathLike)) else signing_key
    root = Path(path)
    verify_bundle(root)
    raw = _read_bounded(root / MANIFEST_NAME, MANIFEST_NAME, _MAX_MANIFEST_BYTES)
    return write_signature(root, private_key, raw)


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
            if rel not in _UNLISTED:
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


_MAX_MANIFEST_BYTES = 4 << 20  # ~40,000 listed files; a real bundle lists a few dozen
_MAX_JSON_BYTES = 256 << 20  # the other JSON parts (features.json holds categorical codes)
_MAX_JSON_DEPTH = 64
_MAX_NUMBER_CHARS = 32
_MANIFEST_KEYS = frozenset({"format", "format_version", "created_at", "files", _SELF_KEY})
_HEX = frozenset("0123456789abcdef")


def parse_manifest(raw: bytes) -> dict[str, Any]:
    """Parse and check the bytes of a ``MANIFEST.json``; every problem is a ModelIntegrityError.

    The parser is bounded: at most 4 MiB of ASCII, nesting at most 64 levels deep, numbers
    of at most 32 characters, exactly the documented keys with their types (``files`` maps
    plain relative paths to 64 hex digits), the known format and version, the self-checksum
    and the canonical layout. Nothing about the files it lists is checked here.

    Examples
    --------
    >>> parse_manifest(b"[" * 100_000)
    Traceback (most recent call last):
    ...
    trustfeed.features.errors.ModelIntegrityError: MANIFEST.json: not valid JSON (nested more than 64 levels deep)
    """
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ModelIntegrityError(MANIFEST_NAME, f"{len(raw)} bytes, more than a manifest can be ({_MAX_MANIFEST_BYTES})")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as error:
        raise ModelIntegrityError(MANIFEST_NAME, f"not ASCII (byte {error.start})") from None
    manifest = _bounded_json(text, MANIFEST_NAME)
    if not isinstance(manifest, dict):
        raise ModelIntegrityError(MANIFEST_NAME, f"expected a JSON object, got {_json_kind(manifest)}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ModelIntegrityError(MANIFEST_NAME, f"format: expected {BUNDLE_FORMAT!r}, got {_short(manifest.get('format'))}")
    version = manifest.get("format_version")
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelIntegrityError(
            MANIFEST_NAME,
            f"format_version: expected one of {sorted(SUPPORTED_FORMAT_VERSIONS)}, got {_short(version)} "
            "(a bundle written by another trustfeed version?)",
        )
    unknown = sorted(set(manifest) - _MANIFEST_KEYS)
    if unknown:
        raise ModelIntegrityError(MANIFEST_NAME, f"unknown keys {_short(unknown)}")
    if not isinstance(manifest.get("created_at"), str):
        raise ModelIntegrityError(MANIFEST_NAME, f"created_at: expected a string, got {_json_kind(manifest.get('created_at'))}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(_is_sha256(v) for v in files.values()):
        raise ModelIntegrityError(MANIFEST_NAME, "files: expected an object {relative path: sha256 as 64 hex digits}")
    for rel in files:
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts or rel != pure.as_posix() or rel in _UNLISTED:
            raise ModelIntegrityError(_clip(rel), "listed path is not a plain relative path inside the bundle")
    self_sum = manifest.get(_SELF_KEY)
    body = {key: value for key, value in manifest.items() if key != _SELF_KEY}
    if not _is_sha256(self_sum) or self_sum != hashlib.sha256(_canonical_body(body)).hexdigest():
        raise ModelIntegrityError(MANIFEST_NAME, "checksum mismatch: the manifest was altered")
    if text != _render(manifest):
        raise ModelIntegrityError(MANIFEST_NAME, "not in its canonical layout: the manifest was altered")
    return manifest


def _bounded_json(text: str, rel: str) -> Any:
    """``json.loads`` with the nesting depth and the length of numbers bounded."""
    depth = _max_depth(text)
    if depth > _MAX_JSON_DEPTH:
        raise ModelIntegrityError(rel, f"not valid JSON (nested more than {_MAX_JSON_DEPTH} levels deep)")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise ModelIntegrityError(rel, f"not valid JSON ({_clip(str(error))})") from None


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def _max_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text (strings ignored), computed without recursion."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    if not brackets:
        return 0
    steps = [1 if c in "[{" else -1 for c in brackets]
    return max(itertools.accumulate(steps))


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} characters")
    return float(text)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` of a value read from a bundle, cut short: the message stays one short line."""
    return _clip(repr(value), limit)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bounded(path: Path, rel: str, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ModelIntegrityError(rel, f"{size} bytes, more than expected (at most {limit})")
        with open(path, "rb") as handle:
            return handle.read(limit + 1)[:limit]
    except OSError as error:
        raise ModelIntegrityError(rel, f"unreadable ({error.strerror or error})") from None


def bundle_id(manifest: Mapping[str, Any]) -> str:
    """The short id of a verified bundle (reported as ``model`` in responses)."""
    return str(manifest[_SELF_KEY])[:_ID_LENGTH]


def verify_bundle(
    path: str | os.PathLike[str],
    required: tuple[str, ...] = _REQUIRED,
    *,
    verify_key: KeyPath | Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """Check a bundle directory against its manifest; returns the manifest.

    With ``verify_key`` (an Ed25519 public key: a ``verify.key`` file or the key object) the
    manifest's signature is checked first, before the manifest is even parsed: a bundle that
    is unsigned, signed by another key or whose manifest changed after signing is refused.
    Without it, the manifest only proves the bundle is complete and unchanged *relative to its
    own manifest*: it catches corruption and careless edits, not someone who can rewrite the
    whole directory.

    Raises
    ------
    ModelIntegrityError
        Naming the file: a missing, unparsable or altered manifest; an unknown format or
        format version; a listed file that is missing or whose sha256 differs; a file present
        but not listed; a required file not listed; a listed path leaving the bundle; with
        ``verify_key``, a missing, foreign or broken signature.
    ConfigError
        ``verify_key`` is not an Ed25519 public key.
    """
    public_key = load_verify_key(verify_key) if isinstance(verify_key, (str, os.PathLike)) else verify_key
    root = Path(path)
    if not root.is_dir():
        raise ModelIntegrityError(str(root), "not a directory")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelIntegrityError(MANIFEST_NAME, "missing: not a trustfeed model bundle, or an incomplete one")
    raw = _read_bounded(manifest_path, MANIFEST_NAME, _MAX_MANIFEST_BYTES)
    if public_key is not None:
        verify_signature(root, raw, public_key)
    manifest = parse_manifest(raw)
    files = manifest["files"]
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


def load_bundle(
    path: str | os.PathLike[str],
    snapshot: str | os.PathLike[str] | None = None,
    *,
    verify_key: KeyPath | Ed25519PublicKey | None = None,
    assembler: Any = None,
) -> RankingPipeline:
    """Verify and load a bundle directory as a :class:`RankingPipeline`.

    Parameters
    ----------
    path
        A directory written by :func:`save_bundle`.
    snapshot
        A trust snapshot directory (as written by ``trustfeed features``) to use instead of
        the bundled one, e.g. a fresher one; the model's feature layout is kept (see
        :class:`~trustfeed.features.context.FeatureAssembler`'s ``schema``). The bundled
        context tables are still used. (It is not covered by the bundle's signature: it is
        checked against its own manifest only.)
    verify_key
        Refuse the bundle unless its manifest is signed by this key (see :func:`verify_bundle`).
    assembler
        A feature assembler built elsewhere (e.g. over serving's memory-mapped tables) to serve
        with instead of the bundled snapshot and context tables, which are then not read at
        all (they are still verified with the rest of the bundle). Its feature layout must be
        the model's (``features.json``).

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
    from .purchase import PURCHASE_SCHEMA_FILE, PurchaseModel

    root = Path(path)
    manifest = verify_bundle(root, verify_key=verify_key)
    files = manifest["files"]
    layout = _read_json(root, PIPELINE_FILE)
    has_balancer = bool(layout.get("balancer"))
    has_context = bool(layout.get("context"))
    # bundles written before the policy's fitted state had its own file keep it in policy.json
    has_policy_state = bool(layout.get("policy_state"))
    # bundles written before the purchase model existed have none
    has_purchase_model = bool(layout.get("purchase_model"))
    purchase_schema = f"{PURCHASE_DIR}/{PURCHASE_SCHEMA_FILE}"
    for rel in ((BALANCER_FILE, BALANCER_STATE_FILE) if has_balancer else ()) + (
        (f"{CONTEXT_DIR}/manifest.json",) if has_context else ()
    ) + ((POLICY_STATE_FILE,) if has_policy_state else ()) + ((purchase_schema,) if has_purchase_model else ()):
        if rel not in files:
            raise ModelIntegrityError(rel, f"required by {PIPELINE_FILE} but not listed in MANIFEST.json")

    model = _parse(MODEL_FILE, lambda: LambdaMART.load(root))
    purchase_model = _parse(purchase_schema, lambda: PurchaseModel.load(root / PURCHASE_DIR)) if has_purchase_model else None
    feature_schema = _read_json(root, FEATURES_FILE)
    policy_state = _read_json(root, POLICY_STATE_FILE) if has_policy_state else None
    policy = _parse(POLICY_STATE_FILE if has_policy_state else POLICY_FILE,
                    lambda: Policy.from_dict(_read_json(root, POLICY_FILE), policy_state))
    balancer = None
    if has_balancer:
        balancer_config = _parse(BALANCER_FILE, lambda: BalancerConfig.from_dict(_read_json(root, BALANCER_FILE)))
        state = _read_json(root, BALANCER_STATE_FILE)
        balancer = _parse(BALANCER_STATE_FILE, lambda: ExposureBalancer.from_state(balancer_config, state))
    context = None
    if has_context and assembler is None:
        context = _parse(f"{CONTEXT_DIR}/manifest.json", lambda: ContextTables.load(root / CONTEXT_DIR))

    model_id = bundle_id(manifest)
    if assembler is not None:
        if snapshot is not None:
            raise ConfigError("give a snapshot directory or an assembler, not both")
        if json.loads(json.dumps(assembler.schema())) != json.loads(json.dumps(feature_schema)):
            raise ModelIntegrityError(
                FEATURES_FILE, "the feature layout of the tables given is not the model's (build them with its schema)"
            )
        return _parse(FEATURES_FILE, lambda: RankingPipeline(
            assembler, model, policy, balancer, model_id=model_id, purchase_model=purchase_model))
    if snapshot is None:
        trust_snapshot = _parse(f"{SNAPSHOT_DIR}/manifest.json", lambda: TrustSnapshot.load(root / SNAPSHOT_DIR))
    else:
        trust_snapshot, snapshot_digest = load_snapshot(snapshot)
        model_id = f"{model_id}+snapshot-{snapshot_digest[:8]}"
    # the feature layout (features.json) over the tables, checked against the model's features
    return _parse(
        FEATURES_FILE,
        lambda: RankingPipeline.from_tables(
            trust_snapshot, context, model, policy, balancer, schema=feature_schema, model_id=model_id,
            purchase_model=purchase_model,
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
    raw = _read_bounded(root / rel, rel, _MAX_JSON_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelIntegrityError(rel, f"unreadable JSON (not UTF-8 at byte {error.start})") from None
    return _bounded_json(text, rel)


_Loaded = TypeVar("_Loaded")


def _parse(rel: str, build: Callable[[], _Loaded]) -> _Loaded:
    """Run ``build``; a parse failure of a verified file is reported against that file."""
    try:
        return build()
    except ModelIntegrityError:
        raise
    except (TrustfeedError, KeyError, TypeError, ValueError, OSError, RecursionError, OverflowError) as error:
        message = " ".join(str(error).split())
        raise ModelIntegrityError(rel, f"cannot be loaded: {type(error).__name__}: {message}") from error
