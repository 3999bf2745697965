"""Trust signals from live-commerce event logs.

Loading and validating event logs (:func:`load_events`), point-in-time trust snapshots per
merchant and creator (:func:`build_snapshot`, updated from a stored state by
:func:`update_snapshot`, or kept live in memory by :class:`LiveTrust`), and the per-request
feature assembly that training and serving share (:class:`FeatureAssembler`).
"""

from ._incremental import TrustState, changes_since, update_snapshot
from ._live import LiveTrust
from .context import ContextConfig, ContextTables, FeatureAssembler, build_context_tables
from .errors import (
    ConfigError,
    ModelIntegrityError,
    NotFittedError,
    RequestError,
    SchemaError,
    TrustfeedError,
)
from .events import TABLES, EventLog, load_events, validate_events, write_events
from .trust import DIMENSIONS, TrustConfig, TrustSnapshot, build_snapshot

__all__ = [
    "DIMENSIONS",
    "TABLES",
    "ConfigError",
    "ContextConfig",
    "ContextTables",
    "EventLog",
    "FeatureAssembler",
    "LiveTrust",
    "ModelIntegrityError",
    "NotFittedError",
    "RequestError",
    "SchemaError",
    "TrustConfig",
    "TrustSnapshot",
    "TrustState",
    "TrustfeedError",
    "build_context_tables",
    "build_snapshot",
    "changes_since",
    "load_events",
    "update_snapshot",
    "validate_events",
    "write_events",
]
