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
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..features.errors import ConfigError, ModelIntegrityError
from ..ranker.bundle import MANIFEST_NAME

__all__ = ["TRACKING_RETRIES_ENV", "TRACKING_TIMEOUT_ENV", "bounded_mlflow_http", "check_tracking_store",
           "find_bundle_dir", "local_model_dir", "tracking_uri_set_to"]

TRACKING_RETRIES_ENV = "TRUSTFEED_TRACKING_RETRIES"
TRACKING_TIMEOUT_ENV = "TRUSTFEED_TRACKING_TIMEOUT"
_DEFAULT_RETRIES = 2
_DEFAULT_TIMEOUT_SECONDS = 8

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

    if tracking_uri is not None:
        check_tracking_store(tracking_uri)
    scratch = Path(tempfile.mkdtemp(prefix="trustfeed-model-"))
    try:
        try:
            with bounded_mlflow_http(), _quiet_downloads(), (
                tracking_uri_set_to(tracking_uri) if tracking_uri is not None else contextlib.nullcontext()
            ):
                source = uri
                if tracking_uri is not None and urlparse(uri).scheme == "models":
                    source = _registry_download_uri(uri, tracking_uri)
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(scratch), tracking_uri=tracking_uri
                )
        except (MlflowException, OSError) as error:  # OSError: the server or store is unreachable
            message = " ".join(str(error).split())[:500]
            raise ModelIntegrityError(uri, f"MLflow could not resolve the model: {message}") from error
        except (ValueError, TypeError, KeyError) as error:
            # MLflow's artifact repositories fail this way on URIs they half-understand (e.g. a
            # plain http:// URL that is not an mlflow-artifacts endpoint): bad input, not a bug here
            message = " ".join(str(error).split())[:300]
            raise ModelIntegrityError(
                uri, f"MLflow could not resolve the model ({type(error).__name__}: {message})"
            ) from error
        yield find_bundle_dir(Path(local))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_tracking_store(tracking_uri: str) -> None:
    """Fail fast on a local sqlite tracking store that cannot be opened.

    MLflow retries opening a database ten times with growing sleeps (about 100 s) before it
    gives up; a file that cannot be created (a read-only or pseudo file system, a path under a
    regular file) is known at once. Other URIs are left to MLflow.

    Raises
    ------
    ConfigError
        Naming the store and the reason.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    location = unquote(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
    if not location or location == ":memory:":
        return
    database = Path(location)
    for parent in database.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"tracking store {tracking_uri}: {parent} is a file, not a directory")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow itself would
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=rwc", uri=True, timeout=10)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except (OSError, sqlite3.Error) as error:
        reason = getattr(error, "strerror", None) or " ".join(str(error).split())
        raise ConfigError(f"tracking store {tracking_uri}: cannot open {database} ({reason})") from None


@contextlib.contextmanager
def tracking_uri_set_to(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's global (fluent) tracking URI at ``tracking_uri`` for a block.

    Needed beside explicit ``tracking_uri=`` arguments: in MLflow 3.17,
    ``mlflow.artifacts.download_artifacts("runs:/<id>/model", tracking_uri=...)`` looks the
    logged model up through the *global* URI (and creates ``./mlflow.db`` when none is set).
    The global URI is process-wide: concurrent loads from different stores must not overlap.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri  # None when MLflow is on its own default
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri rewrites it
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None restores the default
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


@contextlib.contextmanager
def bounded_mlflow_http(retries: int | None = None, timeout: float | None = None) -> Iterator[None]:
    """Bound MLflow's HTTP retries and timeout for a block, so a dead server fails in seconds.

    MLflow's own defaults retry for minutes (7 retries, exponential backoff). Here: ``retries``
    (default ``$TRUSTFEED_TRACKING_RETRIES``, else 2) with a backoff factor of 1, and
    ``timeout`` seconds per request (default ``$TRUSTFEED_TRACKING_TIMEOUT``, else 8; it
    bounds waiting for a reply, not a whole download). MLflow's own variables
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._TIMEOUT``, ``..._BACKOFF_FACTOR``) win when set.

    Raises
    ------
    ConfigError
        A setting that is not a non-negative number.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(_setting(TRACKING_RETRIES_ENV, retries, _DEFAULT_RETRIES, int)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(_setting(TRACKING_TIMEOUT_ENV, timeout, _DEFAULT_TIMEOUT_SECONDS, int)),
    }
    added = [key for key in wanted if key not in os.environ]
    for key in added:
        os.environ[key] = wanted[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _setting(env: str, given: float | None, default: int, kind: type) -> int:
    raw: object = given if given is not None else os.environ.get(env, default)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{env}: expected a whole number >= 0, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{env}: expected a whole number >= 0, got {raw!r}")
    return int(value)


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
