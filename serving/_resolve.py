"""Model URI -> local bundle directory.

A model URI is a local directory, a ``file://`` URI, or anything MLflow resolves
(``runs:/<run>/<path>``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``mlflow-artifacts:/...``). The directory found may be the bundle itself (it holds
``MANIFEST.json``) or an MLflow model directory that carries the bundle as its pyfunc
artifact ``bundle`` (``<model>/artifacts/bundle/``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..features.errors import ModelIntegrityError
from ..ranker.bundle import MANIFEST_NAME

__all__ = ["find_bundle_dir", "local_model_dir"]

# Where the training job's MLflow model keeps the bundle (pyfunc artifact named "bundle").
_MLFLOW_BUNDLE_PATHS = ("artifacts/bundle", "bundle")


def _is_remote(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    # a one-letter scheme is a Windows drive, not a URI scheme
    return len(scheme) > 1 and scheme != "file"


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri).expanduser()


@contextlib.contextmanager
def local_model_dir(
    model_uri: str | os.PathLike[str],
    tracking_uri: str | None = None,
) -> Iterator[Path]:
    """Yield a local directory holding the model bundle of ``model_uri``.

    Remote artifacts are downloaded into a temporary directory that is removed when the
    context exits: a loaded bundle keeps everything it needs in memory.

    Raises
    ------
    FileNotFoundError
        A local path that does not exist.
    ModelIntegrityError
        Nothing under the URI looks like a trustfeed bundle, or MLflow cannot resolve it.
    """
    uri = os.fspath(model_uri)
    if not _is_remote(uri):
        path = _local_path(uri)
        if not path.exists():
            raise FileNotFoundError(f"model {uri!r}: no such directory")
        yield find_bundle_dir(path)
        return
    import mlflow.artifacts  # imported here: loading a local bundle never needs MLflow
    from mlflow.exceptions import MlflowException

    scratch = Path(tempfile.mkdtemp(prefix="trustfeed-model-"))
    try:
        try:
            source = uri
            if tracking_uri is not None and urlparse(uri).scheme == "models":
                source = _registry_download_uri(uri, tracking_uri)
            with _quiet_downloads():
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(scratch), tracking_uri=tracking_uri
                )
        except MlflowException as error:
            message = " ".join(str(error).split())
            raise ModelIntegrityError(uri, f"MLflow could not resolve the model: {message}") from error
        yield find_bundle_dir(Path(local))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No per-file progress bars: a service log or ``trustfeed rank`` output stays readable."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _registry_download_uri(uri: str, tracking_uri: str) -> str:
    """Where ``models:/<name>@<alias>[/path]`` or ``models:/<name>/<version>[/path]`` lives.

    MLflow resolves ``models:/`` URIs against the process-wide registry only; with an
    explicit tracking URI (the registry lives in the tracking store unless configured apart,
    as in MLflow's own default) the version is looked up here.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    parts = uri[len("models:") :].lstrip("/").split("/")
    if "@" in parts[0]:
        name, alias = parts[0].split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
        rest = parts[1:]
    elif len(parts) >= 2 and parts[1].isdigit():
        name, version, rest = parts[0], parts[1], parts[2:]
    else:
        raise ModelIntegrityError(uri, "expected models:/<name>@<alias> or models:/<name>/<version>")
    base = client.get_model_version_download_uri(name, str(version)).rstrip("/")
    return "/".join([base, *rest]) if rest else base


def find_bundle_dir(path: Path) -> Path:
    """The bundle directory at or just under ``path``.

    Looks at ``path`` itself, then at the MLflow model layout (``artifacts/bundle``), then one
    level down (and one level below each ``artifacts`` folder) for a ``MANIFEST.json``.

    Raises
    ------
    ModelIntegrityError
        No bundle, or more than one candidate bundle, under ``path``.
    """
    if path.is_file():
        raise ModelIntegrityError(str(path), "expected a model directory, got a file")
    if (path / MANIFEST_NAME).is_file():
        return path
    for rel in _MLFLOW_BUNDLE_PATHS:
        if (path / rel / MANIFEST_NAME).is_file():
            return path / rel
    found = sorted({m.parent for m in path.glob(f"*/{MANIFEST_NAME}")} | {m.parent for m in path.glob(f"*/*/{MANIFEST_NAME}")})
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelIntegrityError(
            MANIFEST_NAME,
            f"missing under {path}: neither a trustfeed bundle nor an MLflow model holding one",
        )
    listing = ", ".join(str(p.relative_to(path)) for p in found)
    raise ModelIntegrityError(str(path), f"ambiguous: several bundles found ({listing})")
