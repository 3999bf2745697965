"""``FeedRanker``: the object a feed service holds and calls per request."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..features.errors import ConfigError, ModelIntegrityError, SchemaError
from ..ranker.bundle import load_bundle
from ..ranker.signing import load_verify_key
from ..ranker.pipeline import RankingPipeline
from ._compiled import CompiledModel, CompiledPurchaseModel, compile_model, default_compile_cache
from ._mapped_tables import open_mapped_tables
from ._resolve import local_model_dir
from ._shared_ledger import RedisLedger

__all__ = ["FeedRanker"]


class FeedRanker:
    """In-process ranking service over one loaded model bundle (docs/contract.md section 3).

    Every call goes through one :class:`~trustfeed.ranker.pipeline.RankingPipeline`: the same
    scorer ``trustfeed rank`` and offline evaluation use. Calls are thread-safe. Each call
    reads the current pipeline reference once, so a concurrent :meth:`reload` never mixes two
    models within one response (the response's ``model`` field says which bundle ranked it).

    Parameters
    ----------
    pipeline
        The pipeline to serve.
    record_served
        Record the top ``k`` of every response in the balancer's exposure ledger. Set it to
        ``False`` when the service reports what users really saw through
        :meth:`record_impressions` instead, so exposure is not counted twice.
    source
        Where the pipeline came from (the model URI), for :attr:`model_uri`.
    predictor
        ``"compiled"`` compiles the model's trees to native code with lleaves (the optional
        ``compiled`` extra) when the pipeline is set up and on every reload, before the new
        model is swapped in: the same scores (to 1e-9), about twice as fast a request. Without
        lleaves it warns and keeps LightGBM. ``"lightgbm"`` scores with LightGBM's
        ``Booster.predict``. ``"auto"`` compiles when lleaves is installed and compiles the
        model, and otherwise ranks with LightGBM after one logged line. :attr:`predictor`
        says which one ranks. The constructor defaults to ``"lightgbm"`` (a pipeline built
        in memory, e.g. by an offline evaluation, is rarely served long enough to pay back a
        compilation); :meth:`load` defaults to ``"auto"``.
    compile_cache
        Directory of compiled models, so that workers and restarts serving the same model
        compile it once. Entries are keyed by the checksum of the verified model text and
        checked before use; see ``docs/serving.md``. ``True`` (the default) is
        :func:`~trustfeed.serving.default_compile_cache` (``$TRUSTFEED_COMPILE_CACHE`` or
        ``~/.cache/trustfeed/compiled``); ``None`` compiles in memory every time.
    shared_ledger
        A :class:`~trustfeed.serving.RedisLedger`: the balancer's exposure ledger is then the
        platform's, shared by every worker through Redis (synced in the background; ranking
        never waits on it). It is attached again after every reload.

    Examples
    --------
    A tiny model saved as a bundle, loaded and asked to rank:

    >>> import tempfile, numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from trustfeed.features.context import FeatureAssembler
    >>> from trustfeed.ranker.bundle import save_bundle
    >>> from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    >>> from trustfeed.ranker.pipeline import RankingPipeline
    >>> from trustfeed.features.trust import TrustSnapshot
    >>> snapshot = TrustSnapshot(pd.Timestamp("2026-01-05", tz="UTC"),
    ...     merchants=pd.DataFrame({"merchant_id": ["m1", "m2"], "trust_index": [0.9, 0.2]}),
    ...     creators=pd.DataFrame({"creator_id": ["c1", "c2"], "followers": [10.0, 500.0]}),
    ...     manifest={"as_of": "2026-01-05T00:00:00+00:00", "format_version": 1})
    >>> assembler = FeatureAssembler(snapshot)
    >>> X = np.random.default_rng(0).normal(size=(200, len(assembler.feature_names)))
    >>> model = LambdaMART(LambdaMARTConfig(num_rounds=5, min_data_in_leaf=5, early_stopping_rounds=0)).fit(
    ...     X, (X[:, 0] > 0).astype(int), group=[20] * 10, feature_names=assembler.feature_names,
    ...     feature_schema=assembler.schema())
    >>> bundle_dir = tempfile.mkdtemp() + "/bundle"
    >>> bundle_id = save_bundle(RankingPipeline(assembler, model, snapshot=snapshot), bundle_dir)
    >>> ranker = FeedRanker.load(bundle_dir)
    >>> response = ranker.rank({"request_id": "r1", "user_id": "u1", "ts": "2026-01-05T12:00:00Z",
    ...     "candidates": [{"stream_id": "s1", "creator_id": "c1", "merchant_id": "m1"},
    ...                    {"stream_id": "s2", "creator_id": "c9", "merchant_id": "m-new"}]})
    >>> response["model"] == bundle_id, sorted(item["stream_id"] for item in response["items"])
    (True, ['s1', 's2'])
    """

    def __init__(
        self,
        pipeline: RankingPipeline,
        *,
        record_served: bool = True,
        source: str | None = None,
        predictor: str = "lightgbm",
        compile_cache: str | os.PathLike[str] | bool | None = True,
        shared_ledger: RedisLedger | None = None,
        verify_key: str | os.PathLike[str] | None = None,
        tables: str | os.PathLike[str] | None = None,
    ) -> None:
        self._tables = tables
        compile_cache = _cache_dir(compile_cache)
        _compile_scorers(pipeline, predictor, compile_cache)
        self.shared_ledger = shared_ledger
        if shared_ledger is not None:
            pipeline.balancer = shared_ledger.attach(pipeline.balancer)
        self._predictor = predictor
        self._compile_cache = compile_cache
        self._pipeline = pipeline
        self._source = source
        self._verify_key = verify_key
        self.record_served = record_served
        # serialises reloads (not ranking): ranking only reads one reference
        self._reload_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_uri: str | os.PathLike[str],
        snapshot: str | os.PathLike[str] | None = None,
        *,
        record_served: bool = True,
        tracking_uri: str | None = None,
        predictor: str = "auto",
        compile_cache: str | os.PathLike[str] | bool | None = True,
        shared_ledger: RedisLedger | None = None,
        verify_key: str | os.PathLike[str] | None = None,
        tables: str | os.PathLike[str] | None = None,
    ) -> FeedRanker:
        """Load and verify a model bundle.

        Parameters
        ----------
        model_uri
            A bundle directory, an MLflow model directory holding one (``artifacts/bundle``),
            or an MLflow URI: ``runs:/<run id>/<path>``, ``models:/<name>@<alias>``,
            ``models:/<name>/<version>``.
        snapshot
            A trust snapshot directory (``trustfeed features``) to use instead of the bundled
            one.
        record_served, predictor, compile_cache, shared_ledger
            See the class parameters.
        tracking_uri
            MLflow tracking URI for ``runs:/`` and ``models:/`` (default: MLflow's own).
        verify_key
            An Ed25519 public key file (``verify.key`` from ``trustfeed keygen``): the bundle
            must be signed by its private key and unchanged since. It is kept, and every
            :meth:`reload` checks against it too. Without it, the bundle is only checked
            against its own manifest, which anyone able to write the directory can rewrite.
        tables
            A directory of memory-mapped serving tables (:func:`~trustfeed.serving.write_mapped_tables`)
            to read features from instead of the bundle's snapshot and history: every worker
            process on a host then shares one copy of them. Their feature layout must be the
            model's. Kept for :meth:`reload`. The response's ``model`` gets a
            ``+tables-<digest>`` suffix.

        Raises
        ------
        ModelIntegrityError
            The bundle is incomplete, altered or of an unknown format (the message names the
            file), or MLflow cannot resolve the URI; with ``verify_key``, it is unsigned,
            signed by another key or changed after signing.
        ConfigError
            ``verify_key`` is not a readable Ed25519 public key.
        FileNotFoundError
            A local path that does not exist.
        """
        return cls(
            _load_pipeline(model_uri, snapshot, tracking_uri, verify_key, tables),
            record_served=record_served,
            source=os.fspath(model_uri),
            predictor=predictor,
            compile_cache=compile_cache,
            shared_ledger=shared_ledger,
            verify_key=verify_key,
            tables=tables,
        )

    # ------------------------------------------------------------------ ranking

    @property
    def pipeline(self) -> RankingPipeline:
        """The pipeline currently serving."""
        return self._pipeline

    @property
    def model_id(self) -> str | None:
        """Id of the bundle currently serving (the ``model`` field of responses)."""
        return self._pipeline.model_id

    @property
    def predictor(self) -> str:
        """Which predictor ranks: ``"compiled"`` when the scorer ranking runs (the purchase model
        when the bundle has one, else the LambdaMART model) uses compiled trees, else
        ``"lightgbm"`` (also what ``predictor="auto"`` fell back to)."""
        pipeline = self._pipeline
        scorer = pipeline.purchase_model if pipeline.purchase_model is not None else pipeline.model
        return "compiled" if isinstance(scorer, (CompiledModel, CompiledPurchaseModel)) else "lightgbm"

    @property
    def model_uri(self) -> str | None:
        """The URI the current model was loaded from."""
        return self._source

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the features the current model uses (the keys of logged ``features``)."""
        return self._pipeline.feature_names

    def rank(self, request: Mapping[str, Any], *, log_features: bool = False, columns: bool = False) -> dict[str, Any]:
        """Rank one request; see :class:`~trustfeed.ranker.pipeline.RankingPipeline`.

        ``columns=True`` gives ``items`` as columns (lists and float arrays, best first)
        instead of one dict per item: the same ranking, without the per-item objects.

        Raises
        ------
        RequestError
            The request is malformed; the message names the field.
        """
        pipeline = self._pipeline  # one read: a reload cannot swap it mid-request
        return pipeline.rank(request, log_features=log_features, record=self.record_served, columns=columns)

    def rank_many(
        self, requests: Sequence[Mapping[str, Any]], *, log_features: bool = False, columns: bool = False
    ) -> list[dict[str, Any]]:
        """Rank many requests in one vectorised pass (same results as :meth:`rank` in turn)."""
        pipeline = self._pipeline
        return pipeline.rank_many(requests, log_features=log_features, record=self.record_served, columns=columns)

    def record_impressions(self, impressions: pd.DataFrame | Sequence[Mapping[str, Any]]) -> None:
        """Report what users really saw; it goes into the balancer's exposure ledger.

        Parameters
        ----------
        impressions
            Rows (a DataFrame or a list of dicts) with ``request_id``, ``creator_id``,
            ``merchant_id``, ``position`` (1-based) and ``ts`` (when the balancer decays by
            time), as in the ``impressions`` table of docs/contract.md section 1.

        Raises
        ------
        SchemaError
            A required column is missing, an id is null or empty, a position is not an
            integer >= 1, or a string is not valid text; the ledger is left unchanged.
        """
        balancer = self._pipeline.balancer
        if balancer is None:
            return
        if isinstance(impressions, pd.DataFrame):
            frame = impressions
        else:
            rows = list(impressions)
            try:
                frame = pd.DataFrame(rows)
            except UnicodeEncodeError:  # pandas' Arrow strings refuse lone surrogates
                raise SchemaError("impressions", _column_with_surrogate(rows), "valid Unicode text",
                                  "a string with a lone surrogate") from None
        balancer.record_impressions(frame)

    # ------------------------------------------------------------------ reload

    def reload(
        self,
        model_uri: str | os.PathLike[str],
        snapshot: str | os.PathLike[str] | None = None,
        *,
        keep_ledger: bool = True,
        tracking_uri: str | None = None,
    ) -> str | None:
        """Swap in another model (and its snapshot and config) while other threads rank.

        The new bundle is loaded and verified completely first (against the verify key given
        to :meth:`load`, if any); only then is the one pipeline reference replaced. A failed
        load raises and leaves the current model serving.

        Parameters
        ----------
        model_uri, snapshot, tracking_uri
            As for :meth:`load`.
        keep_ledger
            Carry the live exposure ledger (and controller state) over to the new model's
            balancer config: exposure already served is a fact about the feed, not about the
            model. With the same balancer config the live balancer object itself serves on,
            so nothing recorded during the swap is lost; with another config its state is
            copied (exposure that requests still running on the old model record during the
            swap then stays in the old ledger). ``False`` starts from the ledger stored in
            the new bundle.

        Returns
        -------
        str or None
            The id of the model now serving.
        """
        with self._reload_lock:
            fresh = _load_pipeline(model_uri, snapshot, tracking_uri, self._verify_key,
                                   self._tables if snapshot is None else None)
            _compile_scorers(fresh, self._predictor, self._compile_cache)
            current = self._pipeline
            if keep_ledger and fresh.balancer is not None and current.balancer is not None:
                if fresh.balancer.config == current.balancer.config:
                    # The live balancer itself: exposure that requests still running on the
                    # old pipeline record lands in the ledger that keeps serving.
                    fresh.balancer = current.balancer
                else:
                    from ..ranker.balancer import ExposureBalancer

                    fresh.balancer = ExposureBalancer.from_state(fresh.balancer.config, current.balancer.state_dict())
                    if self.shared_ledger is not None:
                        fresh.balancer = self.shared_ledger.attach(fresh.balancer)
            elif self.shared_ledger is not None:
                fresh.balancer = self.shared_ledger.attach(fresh.balancer)
            self._pipeline = fresh
            self._source = os.fspath(model_uri)
            return fresh.model_id

    def reload_snapshot(self, snapshot: Any, context: Any = None) -> str | None:
        """Swap in a freshly built trust snapshot (and context tables) for the current model.

        The production loop rebuilds the snapshot on a schedule from the latest events; the
        model did not change, so nothing is re-read or re-verified: a new pipeline with the
        current model, feature layout, policy and balancer is built in memory around the new
        snapshot, then swapped in as one reference (as :meth:`reload` does). The balancer and
        its exposure ledger carry over as they are.

        Parameters
        ----------
        snapshot
            A :class:`~trustfeed.features.trust.TrustSnapshot` (e.g. ``build_snapshot(events, now)``)
            or a snapshot directory (``trustfeed features``, also ``--incremental``).
        context
            :class:`~trustfeed.features.context.ContextTables` built at the same time
            (``None``: keep the current ones).

        Returns
        -------
        str or None
            The id of the model now serving (unchanged).
        """
        if isinstance(snapshot, (str, os.PathLike)):
            from ..features.trust import TrustSnapshot

            snapshot = TrustSnapshot.load(snapshot)  # read before the lock: ranking goes on meanwhile
        with self._reload_lock:
            current = self._pipeline
            tables = context if context is not None else current.context
            fresh = RankingPipeline.from_tables(
                snapshot, tables, current.model, current.policy, current.balancer,
                schema=current.assembler.schema(), model_id=current.model_id, purchase_model=current.purchase_model,
            )
            self._pipeline = fresh
            return fresh.model_id


def _cache_dir(cache: str | os.PathLike[str] | bool | None) -> str | os.PathLike[str] | None:
    if cache is True:
        return default_compile_cache()
    if cache is False or cache is None:
        return None
    return cache


def _compile_scorers(pipeline: RankingPipeline, predictor: str, cache: str | os.PathLike[str] | None) -> None:
    """Put the compiled form of the pipeline's model and purchase model (if any) in their place."""
    pipeline.model = compile_model(pipeline.model, predictor, cache)
    if pipeline.purchase_model is not None:
        pipeline.purchase_model = compile_model(pipeline.purchase_model, predictor, cache)


def _load_pipeline(
    model_uri: str | os.PathLike[str],
    snapshot: str | os.PathLike[str] | None,
    tracking_uri: str | None,
    verify_key: str | os.PathLike[str] | None = None,
    tables: str | os.PathLike[str] | None = None,
) -> RankingPipeline:
    if snapshot is not None and tables is not None:
        raise ConfigError("give a snapshot directory or memory-mapped tables, not both")
    # a bad key file fails before anything is downloaded
    public_key = load_verify_key(verify_key) if verify_key is not None else None
    with local_model_dir(model_uri, tracking_uri=tracking_uri) as bundle_dir:
        if tables is None:
            return load_bundle(bundle_dir, snapshot=snapshot, verify_key=public_key)
        # over memory-mapped tables the bundle's own snapshot and history are never read (at a
        # million merchants, building their assembler was most of a worker's load time)
        mapped = open_mapped_tables(tables)
        try:
            pipeline = load_bundle(bundle_dir, verify_key=public_key, assembler=mapped.assembler)
        except ModelIntegrityError as error:
            if "feature layout" in error.problem:
                raise ModelIntegrityError(os.fspath(tables), error.problem) from None
            raise
    pipeline.model_id = f"{pipeline.model_id}+tables-{mapped.digest[:8]}"
    return pipeline


def _column_with_surrogate(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The first column holding a string that cannot be encoded (only run on that error)."""
    for row in rows:
        for name, value in dict(row).items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return str(name)
    return None
