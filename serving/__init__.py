"""In-process serving: the ranker a feed service calls per request.

``FeedRanker.load(model_uri)`` loads and verifies a model bundle (a local directory, an
MLflow model directory, ``runs:/...`` or ``models:/name@alias``); ``rank(request)`` returns the
response of docs/contract.md section 3. ``rank_file`` is ``trustfeed rank``: the same calls over a
JSON-lines file. See ``docs/serving.md``.
"""

from ..features.errors import ModelIntegrityError, RequestError
from ._batch import rank_file
from ._compiled import default_compile_cache
from ._feed_ranker import FeedRanker
from ._mapped_tables import MappedTables, open_mapped_tables, write_mapped_tables
from ._serving_tables import build_serving_tables
from ._shared_ledger import RedisLedger, SharedLedgerConfig

__all__ = [
    "FeedRanker",
    "MappedTables",
    "ModelIntegrityError",
    "RedisLedger",
    "RequestError",
    "SharedLedgerConfig",
    "build_serving_tables",
    "default_compile_cache",
    "open_mapped_tables",
    "rank_file",
    "write_mapped_tables",
]
