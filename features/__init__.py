"""Trust signals from live-commerce event logs.

Loading and validating event logs, point-in-time trust snapshots per merchant and
creator, and the per-request feature assembly shared by training and serving.
"""

from .errors import (
    ConfigError,
    ModelIntegrityError,
    NotFittedError,
    RequestError,
    SchemaError,
    TrustfeedError,
)

__all__ = [
    "ConfigError",
    "ModelIntegrityError",
    "NotFittedError",
    "RequestError",
    "SchemaError",
    "TrustfeedError",
]
