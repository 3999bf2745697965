"""MLflow plumbing: tracking URIs, a quiet console, run lookup, and champion promotion.

Models are registered with the alias ``challenger`` by ``trustfeed train --register NAME``;
:func:`promote` moves the alias ``champion`` to the challenger only if its held-out
metrics are not worse than the current champion's (or when forced), and says why.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ..features.errors import ConfigError, TrustfeedError
from ..serving._resolve import bounded_mlflow_http, check_tracking_store, tracking_uri_set_to

if TYPE_CHECKING:  # mlflow is imported lazily: it is slow to import
    import pandas as pd
    from mlflow import MlflowClient

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "TAG_PREFIX",
    "PROMOTION_METRICS",
    "MetricComparison",
    "PromotionDecision",
    "RegistryError",
    "TrackingUnavailableError",
    "default_tracking_uri",
    "local_artifact_root",
    "promote",
    "quiet_mlflow",
    "resolve_tracking_uri",
    "run_id_of_model_uri",
    "tracking_uri_set_to",
    "trained_windows_from_run",
]

# prefix of the run tags a training job writes (data windows, versions) and evaluations read back
TAG_PREFIX = "trustfeed."

CHALLENGER = "challenger"
CHAMPION = "champion"

# Held-out metrics that decide a promotion, with the direction that is better. These are
# the served configuration's numbers (trust-aware + balancer) as logged by ``train``.
PROMOTION_METRICS: tuple[tuple[str, str], ...] = (
    ("ndcg_at_10", "higher"),
    ("gini", "lower"),
    ("bad_order_exposure", "lower"),
)

# loggers whose INFO chatter would drown the progress lines
_NOISY_LOGGERS = ("mlflow", "alembic", "urllib3", "httpx", "lightgbm", "git", "py4j", "waitress")


class TrackingUnavailableError(TrustfeedError):
    """The MLflow tracking server (or store) could not be reached or refused a write."""


class RegistryError(TrustfeedError):
    """A registered model, version or alias that a command needs does not exist."""


def default_tracking_uri(base_dir: str | os.PathLike[str] | None = None) -> str:
    """MLflow's embedded default store, made explicit: ``sqlite:///<base_dir>/mlflow.db``.

    MLflow 3 defaults to ``sqlite:///mlflow.db`` relative to the working directory (with
    artifacts under ``./mlruns``); spelling out the absolute path keeps runs in one place
    even if a later step changes directory.

    Examples
    --------
    >>> default_tracking_uri("/tmp/x")
    'sqlite:////tmp/x/mlflow.db'
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return f"sqlite:///{base.absolute() / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None, base_dir: str | os.PathLike[str] | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded default."""
    if uri:
        return uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return default_tracking_uri(base_dir)


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifact root beside a local sqlite store (``<dir>/mlruns``), else ``None``.

    A server decides its own artifact location; for a local sqlite file the artifacts live
    next to it, exactly where MLflow's default would put them, but by absolute path.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = Path(unquote(tracking_uri[len("sqlite:///"):]))
    return (db_path.parent / "mlruns").absolute().as_uri()


def is_local_store(tracking_uri: str) -> bool:
    """True for stores that need no server (sqlite file or plain directory)."""
    scheme = urlparse(tracking_uri).scheme
    return scheme in ("", "file", "sqlite")


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's INFO lines, download progress bars and advisory warnings.

    The previous logger levels and environment are restored on exit.
    """
    import mlflow  # noqa: F401 - its first import configures the "mlflow" logger: do it before adjusting

    saved_levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",)}
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
            warnings.filterwarnings("ignore", message=r".*type hint.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client_for(tracking_uri: str) -> MlflowClient:
    """An :class:`mlflow.MlflowClient` on ``tracking_uri`` (registry on the same store)."""
    from mlflow import MlflowClient

    check_tracking_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def run_id_of_model_uri(model_uri: str, tracking_uri: str | None = None) -> str | None:
    """The MLflow run that produced ``model_uri``, or ``None`` for a plain directory.

    Understands ``runs:/<run_id>/...``, ``models:/<name>@<alias>``,
    ``models:/<name>/<version>`` and MLflow 3 logged-model URIs ``models:/m-<id>``.
    """
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].strip("/").split("/")[0] or None
    if not model_uri.startswith("models:/"):
        return None
    client = client_for(resolve_tracking_uri(tracking_uri))
    rest = model_uri[len("models:/"):].strip("/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        parts = rest.split("/")
        if len(parts) >= 2 and parts[1]:
            return client.get_model_version(parts[0], parts[1]).run_id
        return client.get_logged_model(parts[0]).source_run_id
    except Exception as error:  # noqa: BLE001 - MLflow raises many types for "not found"
        raise RegistryError(f"cannot resolve {model_uri!r}: {_one_line(error)}") from error


def trained_windows_from_run(run_id: str, tracking_uri: str | None = None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The held-out window a training run recorded in its tags (``None`` if it has none)."""
    import pandas as pd

    client = client_for(resolve_tracking_uri(tracking_uri))
    try:
        tags = client.get_run(run_id).data.tags
    except Exception:  # noqa: BLE001 - an unknown run simply has no window
        return None
    start, end = tags.get(f"{TAG_PREFIX}heldout_start"), tags.get(f"{TAG_PREFIX}heldout_end")
    if not start or not end:
        return None
    return pd.Timestamp(start), pd.Timestamp(end)


@dataclass(frozen=True)
class MetricComparison:
    """One held-out metric of challenger against champion."""

    metric: str
    direction: str
    challenger: float
    champion: float

    @property
    def worse(self) -> bool:
        """True if the challenger is strictly worse beyond float noise."""
        tolerance = 1e-9 * max(1.0, abs(self.champion))
        if self.direction == "higher":
            return self.challenger < self.champion - tolerance
        return self.challenger > self.champion + tolerance

    def describe(self) -> str:
        sign = "<" if self.challenger < self.champion else (">" if self.challenger > self.champion else "=")
        verdict = "worse" if self.worse else "ok"
        return (f"{self.metric} {self.challenger:.4f} {sign} {self.champion:.4f} "
                f"({self.direction} is better: {verdict})")


@dataclass(frozen=True)
class PromotionDecision:
    """The outcome of :func:`promote`; ``reason`` is the human explanation."""

    name: str
    promoted: bool
    challenger_version: str
    previous_champion_version: str | None
    comparisons: tuple[MetricComparison, ...]
    reason: str


def promote(
    name: str,
    force: bool = False,
    tracking_uri: str | None = None,
    metrics: tuple[tuple[str, str], ...] = PROMOTION_METRICS,
) -> PromotionDecision:
    """Move the ``champion`` alias of ``name`` to its ``challenger`` if it is not worse.

    Every metric in ``metrics`` (held-out, logged by the training run) must be at least as
    good for the challenger as for the current champion. Without a champion the challenger
    is promoted. ``force`` promotes regardless and says which metrics were worse.

    Raises
    ------
    RegistryError
        If the model or its ``challenger`` alias does not exist, or (without ``force``)
        the challenger's run lacks a metric to compare.
    TrackingUnavailableError
        If the tracking store cannot be reached.

    Examples
    --------
    >>> decision = promote("feed-ranker")  # doctest: +SKIP
    >>> print(decision.reason)  # doctest: +SKIP
    promoted feed-ranker version 3 to champion (replacing version 2): not worse on any held-out metric (...)
    """
    for metric, direction in metrics:
        if direction not in ("higher", "lower"):
            raise ConfigError(f"promotion metric {metric!r}: direction must be 'higher' or 'lower', got {direction!r}")
    uri = resolve_tracking_uri(tracking_uri)
    with quiet_mlflow(), bounded_mlflow_http():
        client = client_for(uri)
        challenger = _version_by_alias(client, name, CHALLENGER)
        if challenger is None:
            raise RegistryError(f"model {name!r} has no {CHALLENGER!r} alias: train with --register {name} first")
        champion = _version_by_alias(client, name, CHAMPION)
        if champion is not None and champion.version == challenger.version:
            return PromotionDecision(name, False, challenger.version, champion.version, (),
                                     f"{name} version {challenger.version} is already the {CHAMPION}; nothing to do")
        challenger_metrics = _run_metrics(client, challenger.run_id)
        missing = [m for m, _ in metrics if m not in challenger_metrics]
        if missing and not force:
            raise RegistryError(f"{name} version {challenger.version} lacks held-out metrics {missing}; "
                                f"use --force to promote anyway")
        comparisons: tuple[MetricComparison, ...] = ()
        if champion is not None:
            champion_metrics = _run_metrics(client, champion.run_id)
            comparisons = tuple(
                MetricComparison(m, d, float(challenger_metrics[m]), float(champion_metrics[m]))
                for m, d in metrics
                if m in challenger_metrics and m in champion_metrics
                and math.isfinite(challenger_metrics[m]) and math.isfinite(champion_metrics[m])
            )
        worse = [c for c in comparisons if c.worse]
        detail = "; ".join(c.describe() for c in comparisons)
        if champion is None:
            reason = f"promoted {name} version {challenger.version} to {CHAMPION}: there was no {CHAMPION}"
        elif worse and not force:
            return PromotionDecision(
                name, False, challenger.version, champion.version, comparisons,
                f"kept {name} version {champion.version} as {CHAMPION}: challenger version "
                f"{challenger.version} is worse on {', '.join(c.metric for c in worse)} ({detail})",
            )
        elif worse:
            reason = (f"promoted {name} version {challenger.version} to {CHAMPION} (forced, replacing version "
                      f"{champion.version}) although worse on {', '.join(c.metric for c in worse)} ({detail})")
        else:
            reason = (f"promoted {name} version {challenger.version} to {CHAMPION} (replacing version "
                      f"{champion.version}): not worse on any held-out metric ({detail})")
        _call(lambda: client.set_registered_model_alias(name, CHAMPION, challenger.version), uri)
        return PromotionDecision(name, True, challenger.version,
                                 None if champion is None else champion.version, comparisons, reason)


def _version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        code = getattr(error, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise TrackingUnavailableError(f"MLflow registry: {_one_line(error)}") from error
    except OSError as error:
        raise TrackingUnavailableError(f"MLflow registry unreachable: {_one_line(error)}") from error


def _run_metrics(client: Any, run_id: str) -> Mapping[str, float]:
    return dict(_call(lambda: client.get_run(run_id), "").data.metrics)


def _call(action: Any, where: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return action()
    except (MlflowException, OSError) as error:
        raise TrackingUnavailableError(f"MLflow {where or 'tracking'}: {_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
