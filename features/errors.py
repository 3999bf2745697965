"""The exception types of trustfeed.

Every package raises these; the command line turns them into a one-line message and a
non-zero exit status. They live in ``trustfeed.features`` because it is the lowest layer:
everything else may import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "TrustfeedError",
    "SchemaError",
    "ConfigError",
    "NotFittedError",
    "ModelIntegrityError",
    "RequestError",
    "OutputError",
    "ClusterError",
    "reject_unknown_keys",
]

_MAX_SAMPLE_ROWS = 5


class TrustfeedError(Exception):
    """Base class of every error trustfeed raises on purpose."""


class SchemaError(TrustfeedError, ValueError):
    """An event-log table does not match the documented schema.

    Parameters
    ----------
    table, column
        Where the problem is (``column`` may be ``None`` for table-level problems).
    expected, got
        What the schema asks for and what was found.
    sample
        Up to five offending rows (any object with a readable ``repr``; DataFrames are
        rendered compactly on one line).
    """

    def __init__(
        self,
        table: str,
        column: str | None,
        expected: str,
        got: str,
        sample: Any = None,
    ) -> None:
        self.table = table
        self.column = column
        self.expected = expected
        self.got = got
        self.sample = sample
        where = f"{table}.{column}" if column else table
        message = f"{where}: expected {expected}, got {got}"
        rendered = _render_sample(sample)
        if rendered:
            message += f"; sample bad rows: {rendered}"
        super().__init__(message)


class ConfigError(TrustfeedError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class NotFittedError(TrustfeedError, ValueError, AttributeError):
    """A learned component was used before ``fit`` (or ``load``)."""


class ModelIntegrityError(TrustfeedError):
    """A model bundle is incomplete, tampered with or of an unknown format.

    ``path`` names the file that failed verification.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ClusterError(TrustfeedError):
    """A compute cluster (a Dask scheduler and its workers) could not be reached or failed mid-job."""


class RequestError(TrustfeedError, ValueError):
    """A ranking request is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"request field {field!r}: {problem}")


class OutputError(TrustfeedError):
    """An output path cannot be written without destroying something trustfeed did not create.

    ``path`` names the target; ``problem`` says why (a foreign non-empty directory, a
    regular file where a directory goes, ...).
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def reject_unknown_keys(config_name: str, values: Iterable[str], known: Iterable[str]) -> None:
    """The ``from_dict`` check of every config: keys outside ``known`` are a :class:`ConfigError`.

    Examples
    --------
    >>> reject_unknown_keys("DemoConfig", ["seed"], ["seed", "days"])
    >>> reject_unknown_keys("DemoConfig", ["sed"], ["seed", "days"])
    Traceback (most recent call last):
    ...
    trustfeed.features.errors.ConfigError: DemoConfig: unknown keys ['sed']; known keys are ['days', 'seed']
    """
    known_keys = set(known)
    unknown = sorted(set(values) - known_keys)
    if unknown:
        raise ConfigError(f"{config_name}: unknown keys {unknown}; known keys are {sorted(known_keys)}")


def _render_sample(sample: Any) -> str:
    if sample is None:
        return ""
    try:
        import pandas as pd

        if isinstance(sample, pd.DataFrame):
            if sample.empty:
                return ""
            rows = sample.head(_MAX_SAMPLE_ROWS).astype(object).where(sample.head(_MAX_SAMPLE_ROWS).notna(), None)
            return "; ".join(
                "{" + ", ".join(f"{k}={v!r}" for k, v in rec.items()) + "}"
                for rec in rows.to_dict(orient="records")
            )
        if isinstance(sample, pd.Series):
            return ", ".join(repr(v) for v in sample.head(_MAX_SAMPLE_ROWS).tolist())
    except ImportError:  # pragma: no cover - pandas is a hard dependency
        pass
    if isinstance(sample, (list, tuple)):
        return ", ".join(repr(v) for v in sample[:_MAX_SAMPLE_ROWS])
    return repr(sample)
