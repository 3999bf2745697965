"""Ed25519 signatures over a bundle's manifest.

The manifest lists the sha256 of every file of a bundle and checks itself, so it catches a
changed byte, but anyone who can write the directory can also rewrite the manifest to match.
A signature closes that gap: the training job (or a reviewer, with ``trustfeed sign``) signs
the manifest's exact bytes with a private key, and the serving host holds only the public key.
With the public key it can tell a bundle it may trust from one that is unsigned, signed by
another key or changed after signing, and it holds no secret that could forge one.

Keys are PEM files (``trustfeed keygen --out DIR`` writes ``signing.key``, PKCS #8, readable by
its owner only, and ``verify.key``, SubjectPublicKeyInfo). The signature is ``MANIFEST.sig``
beside ``MANIFEST.json``: ``{"algorithm": "ed25519", "key_id": ..., "signature": base64}``,
where ``key_id`` is the start of the sha256 of the raw public key (it names the key in
messages; the signature itself is what is checked).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..features.errors import ConfigError, ModelIntegrityError
from ..features.io import atomic_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SIGNATURE_NAME",
    "SIGNING_KEY_NAME",
    "VERIFY_KEY_NAME",
    "generate_keypair",
    "key_id",
    "load_signing_key",
    "load_verify_key",
    "signature_document",
    "verify_signature",
]

SIGNATURE_NAME = "MANIFEST.sig"
SIGNING_KEY_NAME = "signing.key"
VERIFY_KEY_NAME = "verify.key"
_ALGORITHM = "ed25519"
_MAX_KEY_BYTES = 16 << 10
_MAX_SIGNATURE_BYTES = 4 << 10
_KEY_ID_LENGTH = 16


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``out_dir/signing.key`` (private) and ``out_dir/verify.key``.

    The private key file is created readable by its owner only. An existing key file is never
    overwritten (that would orphan every bundle signed with it).

    Returns
    -------
    (signing key path, verify key path)

    Raises
    ------
    ConfigError
        A key file already exists in ``out_dir``, or ``out_dir`` is a file.

    Examples
    --------
    >>> import tempfile
    >>> private, public = generate_keypair(tempfile.mkdtemp())
    >>> key_id(load_verify_key(public)) == key_id(load_signing_key(private).public_key())
    True
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"keygen: {root} is a file, expected a directory")
    private_path, public_path = root / SIGNING_KEY_NAME, root / VERIFY_KEY_NAME
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise ConfigError(f"keygen: {path} exists; refusing to overwrite a key (bundles signed with it would be orphaned)")
    root.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL: never follow or replace something created meanwhile; 0600 from the start
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    descriptor = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(public_pem)
    return private_path, public_path


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    file = Path(path)
    try:
        if file.is_dir():
            raise ConfigError(f"{what} {file}: is a directory, expected a PEM key file")
        size = file.stat().st_size
        if size > _MAX_KEY_BYTES:
            raise ConfigError(f"{what} {file}: {size} bytes, not a key file")
        return file.read_bytes()
    except OSError as error:
        raise ConfigError(f"{what} {file}: cannot be read ({error.strerror or error})") from None


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key written by :func:`generate_keypair`; ``ConfigError`` if it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"signing key {path}: not an unencrypted PEM private key ({_first_line(error)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_verify_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a public key written by :func:`generate_keypair`; ``ConfigError`` if it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = _read_key_file(path, "verify key")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as error:
        hint = " (that is a private key: give the verify.key)" if b"PRIVATE KEY" in raw else ""
        raise ConfigError(f"verify key {path}: not a PEM public key{hint} ({_first_line(error)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"verify key {path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (start of the sha256 of its raw bytes)."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_LENGTH]


def signature_document(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``MANIFEST.sig`` content signing ``manifest_bytes`` with ``key``."""
    document = {
        "algorithm": _ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("ascii")


def write_signature(bundle_dir: Path, key: Ed25519PrivateKey, manifest_bytes: bytes) -> str:
    """Write ``MANIFEST.sig`` for ``manifest_bytes`` into ``bundle_dir``; returns the key id."""
    with atomic_file(bundle_dir / SIGNATURE_NAME, "wb") as tmp:
        tmp.write_bytes(signature_document(manifest_bytes, key))
    return key_id(key.public_key())


def verify_signature(bundle_dir: Path, manifest_bytes: bytes, key: Ed25519PublicKey) -> str:
    """Check ``MANIFEST.sig`` against ``manifest_bytes`` and ``key``; returns the key id.

    Raises
    ------
    ModelIntegrityError
        Naming ``MANIFEST.sig`` or ``MANIFEST.json``: the bundle is unsigned, the signature
        file is malformed, it was made with another key, or the manifest changed after signing.
    """
    from cryptography.exceptions import InvalidSignature

    expected_id = key_id(key)
    path = bundle_dir / SIGNATURE_NAME
    if not path.is_file():
        raise ModelIntegrityError(SIGNATURE_NAME, f"missing: the bundle is unsigned and a verify key ({expected_id}) is configured")
    try:
        raw = path.read_bytes() if path.stat().st_size <= _MAX_SIGNATURE_BYTES else None
    except OSError as error:
        raise ModelIntegrityError(SIGNATURE_NAME, f"unreadable ({error.strerror or error})") from None
    document = _parse_signature(raw)
    signed_by = document["key_id"]
    try:
        key.verify(document["signature"], manifest_bytes)
    except InvalidSignature:
        if signed_by != expected_id:
            raise ModelIntegrityError(
                SIGNATURE_NAME, f"signed by another key ({signed_by}), not by the verify key ({expected_id})"
            ) from None
        raise ModelIntegrityError(
            "MANIFEST.json", f"changed after signing: the signature by key {expected_id} does not match it"
        ) from None
    return expected_id


def _parse_signature(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise ModelIntegrityError(SIGNATURE_NAME, f"larger than {_MAX_SIGNATURE_BYTES} bytes: not a signature")
    try:
        document = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelIntegrityError(SIGNATURE_NAME, "not valid JSON") from None
    if not isinstance(document, dict) or document.get("algorithm") != _ALGORITHM:
        raise ModelIntegrityError(SIGNATURE_NAME, f"expected an object with algorithm {_ALGORITHM!r}")
    signed_by, encoded = document.get("key_id"), document.get("signature")
    if not isinstance(signed_by, str) or not isinstance(encoded, str) or len(encoded) > 200:
        raise ModelIntegrityError(SIGNATURE_NAME, "expected string fields key_id and signature")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ModelIntegrityError(SIGNATURE_NAME, "signature: not base64") from None
    if len(signature) != 64:
        raise ModelIntegrityError(SIGNATURE_NAME, f"signature: expected 64 bytes, got {len(signature)}")
    return {"key_id": signed_by[:_KEY_ID_LENGTH], "signature": signature}


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:150]
