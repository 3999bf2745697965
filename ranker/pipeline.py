"""The in-process scorer: request in, ranked response out (docs/contract.md section 3).

:class:`RankingPipeline` joins the four parts of a trained ranker: the feature assembler
(the one feature code path of training and serving), the LambdaMART model, the policy (hard
rules, then relevance combined with trust) and the exposure balancer. Serving
(:class:`trustfeed.serving.FeedRanker`), ``trustfeed rank`` and offline evaluation all call
this object.

One code path
-------------
:meth:`RankingPipeline.rank` is ``rank_many([request])[0]``. ``rank_many`` lays the
candidates of all requests end to end, assembles features and predicts once for all of them,
applies the policy once (vectorised per request), then runs the balancer request by request
in input order. So a batch gives exactly what the same requests give one at a time, including
the balancer's exposure ledger.

Response
--------
``{"request_id", "model", "items": [...], "filtered": [...]}``. Every candidate sent comes
back exactly once:

- ``filtered`` (input order) holds each candidate a rule removed, with its ``reason``: a
  repeated ``stream_id`` within the request is ``"duplicate"`` (the first occurrence is
  ranked), then the policy's hard rules (``banned_merchant``, ``banned_entity``,
  ``trust_floor``);
- ``items`` holds every other candidate, best first. ``k`` does not truncate ``items`` (that
  would drop candidates): it says how many slots the feed shows, and only those first ``k``
  items are recorded in the balancer's exposure ledger as served. A service shows
  ``items[:k]``. Without ``k`` every item counts as shown, unless the balancer config sets
  ``record_k``.

Relevance
---------
The policy ranks on one relevance score per candidate: the LambdaMART score, or, when the
pipeline has a purchase model (:mod:`trustfeed.ranker.purchase`, what ``trustfeed train``
fits by default), the purchase model's log probability that the candidate is bought when
looked at. With a purchase model LambdaMART is not evaluated when ranking: it stays the
NDCG-trained ranker the report measures, and the fallback when no purchase model is fitted.

Items
-----
Each item carries ``stream_id``, ``creator_id``, ``merchant_id``, ``score`` (the policy's
score: with the default ``combine="expected_value"`` the expected net value of showing the
item, P(purchase | examined) x (1 - (1 + bad_cost) x p_bad), in ``[-bad_cost, 1]``; taken
before the balancer's re-ranking, so the order of ``items`` is
authoritative, not the order of ``score``), ``relevance`` (the relevance score above) and
``trust`` (the merchant's ``trust_index``, the snapshot median for an unknown merchant), and
with ``log_features=True`` also ``features``: ``{feature name: value}`` (``None`` for a
missing value) exactly as the model saw them, for logging the next training set. ``model``
is the id of the bundle the pipeline was loaded from (``None`` for an unsaved pipeline).

Column form
-----------
``columns=True`` returns the same response with ``items`` as columns instead of one dict per
item: ``{"stream_id": [...], "creator_id": [...], "merchant_id": [...]}`` as lists and
``score``, ``relevance``, ``trust`` as float64 arrays (NaN for a missing trust), all best
first, plus ``features`` (a matrix, rows in item order) with ``log_features=True``. It is the
same code path up to the last step, which skips building a Python dict per candidate: a
service that serialises the response itself (JSON, MessagePack, Arrow) saves that cost.
"""

from __future__ import annotations

import itertools
import math
from operator import itemgetter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..features.errors import ConfigError, RequestError
from ._request import ParsedRequest, coerce_live_numeric, parse_request
from .interfaces import FeatureSource, Reranker, Scorer
from .policy import REASONS, Policy, PolicyConfig

if TYPE_CHECKING:  # pragma: no cover
    from ..features.context import ContextConfig, ContextTables
    from ..features.events import EventLog, TimeLike
    from ..features.trust import TrustConfig, TrustSnapshot

__all__ = ["RankingPipeline", "REASON_DUPLICATE"]

REASON_DUPLICATE = "duplicate"

_NO_ROWS = np.zeros(0, dtype=np.int64)
_REASON_NAMES = np.array(REASONS, dtype=object)  # by policy rule code


class RankingPipeline:
    """Assembler + model + policy + balancer: the one in-process scorer.

    Parameters
    ----------
    assembler
        A :class:`~trustfeed.features.context.FeatureAssembler` (``transform_with_status``,
        ``schema``, ``feature_names``).
    model
        A fitted :class:`~trustfeed.ranker.lambdamart.LambdaMART` (anything with ``predict``
        and ``feature_names_``); its features must be the assembler's, in the same order.
    policy
        The :class:`~trustfeed.ranker.policy.Policy` (fitted or not); a
        :class:`~trustfeed.ranker.policy.PolicyConfig` is taken as an unfitted policy with that
        config (``None``: defaults).
    balancer
        An :class:`~trustfeed.ranker.balancer.ExposureBalancer`, or ``None`` to rank by the
        policy score alone.
    snapshot, context
        The trust snapshot and context tables the assembler was built from; needed only to
        save the pipeline as a bundle (:func:`trustfeed.ranker.bundle.save_bundle`).
    model_id
        Identifier reported in every response's ``model`` field (the bundle id when loaded
        from a bundle).
    purchase_model
        A fitted :class:`~trustfeed.ranker.purchase.PurchaseModel` (``None``: none). When
        given, its log purchase probability is what the policy ranks on and what responses
        report as ``relevance``, instead of the LambdaMART score (see "Relevance" in the
        module docstring). A fitted policy must have been calibrated on the score the
        pipeline computes (:attr:`~trustfeed.ranker.policy.PolicyState.relevance_source`).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> from trustfeed.features.context import FeatureAssembler
    >>> from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig
    >>> snapshot = SimpleNamespace(
    ...     merchants=pd.DataFrame({"merchant_id": ["m1", "m2", "m3"], "trust_index": [0.9, 0.2, 0.6],
    ...                             "banned": [False, False, True]}),
    ...     creators=pd.DataFrame({"creator_id": ["c1", "c2"], "followers": [10.0, 500.0]}))
    >>> assembler = FeatureAssembler(snapshot)
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, len(assembler.feature_names)))
    >>> model = LambdaMART(LambdaMARTConfig(num_rounds=5, min_data_in_leaf=5, early_stopping_rounds=0))
    >>> model = model.fit(X, (X[:, 0] > 0).astype(int), group=[20] * 10,
    ...                   feature_names=assembler.feature_names, feature_schema=assembler.schema())
    >>> pipeline = RankingPipeline(assembler, model, None)
    >>> response = pipeline.rank({"request_id": "r1", "user_id": "u1", "ts": "2026-01-05T12:00:00Z",
    ...     "candidates": [{"stream_id": s, "creator_id": "c1", "merchant_id": m}
    ...                    for s, m in [("s1", "m1"), ("s2", "m3"), ("s1", "m2"), ("s3", "m-new")]]})
    >>> sorted(item["stream_id"] for item in response["items"])
    ['s1', 's3']
    >>> response["filtered"]
    [{'stream_id': 's2', 'reason': 'banned_merchant'}, {'stream_id': 's1', 'reason': 'duplicate'}]
    """

    def __init__(
        self,
        assembler: FeatureSource,
        model: Scorer,
        policy: Policy | PolicyConfig | None = None,
        balancer: Reranker | None = None,
        *,
        snapshot: TrustSnapshot | None = None,
        context: ContextTables | None = None,
        model_id: str | None = None,
        purchase_model: Scorer | None = None,
    ) -> None:
        self.assembler = assembler
        self.model = model
        self.policy = policy if isinstance(policy, Policy) else Policy(policy)
        self.balancer = balancer
        self.snapshot = snapshot
        self.context = context
        self.model_id = model_id
        self.purchase_model = purchase_model
        self.feature_names: tuple[str, ...] = tuple(assembler.feature_names)
        for name, scorer in (("model", model), ("purchase model", purchase_model)):
            features = tuple(getattr(scorer, "feature_names_", self.feature_names)) if scorer is not None else self.feature_names
            if features != self.feature_names:
                raise ConfigError(
                    f"the {name}'s features differ from the assembler's: "
                    f"{name} {list(features)}, assembler {list(self.feature_names)}"
                )
        state = self.policy.state
        computed = "purchase_model" if purchase_model is not None else "ranker"
        if state is not None and state.relevance_source != computed:
            raise ConfigError(
                f"the policy was calibrated on the {state.relevance_source.replace('_', ' ')} score, but this pipeline "
                + ("has a purchase model" if purchase_model is not None else "has no purchase model")
            )
        schema = assembler.schema() if hasattr(assembler, "schema") else {}
        # live-context fields the model uses: checked to be numeric before ranking
        self.live_fields: tuple[str, ...] = tuple(
            source.split(":", 1)[1] for source in schema.get("sources", ()) if source.startswith("live:")
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_tables(
        cls,
        snapshot: TrustSnapshot | None,
        context: ContextTables | None,
        model: Scorer,
        policy: Policy | PolicyConfig | None = None,
        balancer: Reranker | None = None,
        *,
        schema: Mapping[str, Any] | None = None,
        model_id: str | None = None,
        purchase_model: Scorer | None = None,
    ) -> RankingPipeline:
        """The pipeline over a trust snapshot and context tables: the one way to build one.

        The feature assembler is built from ``snapshot`` and ``context`` with the feature
        layout ``schema`` (the model's, saved beside it; ``None``: derived from the tables).
        Training, evaluation, bundle loading, snapshot reloads and the closed loop all come
        through here (or through :meth:`as_of`, which builds the tables first).
        """
        from ..features.context import FeatureAssembler

        if snapshot is None:
            raise ConfigError("a ranking pipeline needs a trust snapshot (got None)")
        assembler = FeatureAssembler(snapshot, context, schema=schema)
        return cls(assembler, model, policy, balancer, snapshot=snapshot, context=context, model_id=model_id,
                   purchase_model=purchase_model)

    @classmethod
    def as_of(
        cls,
        events: EventLog,
        t: TimeLike,
        model: Scorer,
        policy: Policy | PolicyConfig | None = None,
        balancer: Reranker | None = None,
        *,
        schema: Mapping[str, Any] | None = None,
        trust: TrustConfig | None = None,
        context: ContextConfig | None = None,
        model_id: str | None = None,
        index: Mapping[str, Any] | None = None,
        purchase_model: Scorer | None = None,
    ) -> RankingPipeline:
        """The pipeline as of time ``t``: trust snapshot and history built from events before ``t``.

        Parameters
        ----------
        events
            A validated :class:`~trustfeed.features.events.EventLog` (later events are cut).
        t
            The cut (any time :func:`~trustfeed.features.events.to_utc` reads).
        model, policy, balancer, schema, model_id, purchase_model
            As for :meth:`from_tables`.
        trust, context
            :class:`~trustfeed.features.trust.TrustConfig` and
            :class:`~trustfeed.features.context.ContextConfig` (``None``: defaults).
        index
            Trust index weights to carry instead of fitting them (an earlier snapshot's
            ``manifest["index_model"]``; see ``build_snapshot``).
        """
        from ..features.context import build_context_tables
        from ..features.events import to_utc
        from ..features.trust import build_snapshot

        cut = to_utc(t)
        snapshot = build_snapshot(events, cut, config=trust, index=index)
        tables = build_context_tables(events, cut, context)
        return cls.from_tables(snapshot, tables, model, policy, balancer, schema=schema, model_id=model_id,
                               purchase_model=purchase_model)

    def rebuilt_as_of(
        self, events: EventLog, t: TimeLike, *, balancer: Reranker | None = None, index: Mapping[str, Any] | None = None
    ) -> RankingPipeline:
        """This pipeline's models, policy and feature layout with trust and history as of ``t``.

        The trust and history settings are the ones this pipeline's tables were built with;
        ``balancer`` (``None``: none) is the new pipeline's own, so nothing ranked with the
        new pipeline touches this one's exposure ledger. ``index``: trust index weights to
        carry instead of refitting them (see :meth:`as_of`).
        """
        from ..features.trust import TrustConfig as _TrustConfig

        settings = (self.snapshot.manifest or {}).get("config") if self.snapshot is not None else None
        return type(self).as_of(
            events,
            t,
            self.model,
            self.policy,
            balancer,
            schema=self.assembler.schema(),
            trust=_TrustConfig.from_dict(settings) if settings else None,
            context=self.context.config if self.context is not None else None,
            model_id=self.model_id,
            index=index,
            purchase_model=self.purchase_model,
        )

    # ------------------------------------------------------------------ public API

    def rank(
        self,
        request: Mapping[str, Any],
        *,
        log_features: bool = False,
        record: bool = True,
        columns: bool = False,
    ) -> dict[str, Any]:
        """Rank one request (see the module docstring for the response).

        Parameters
        ----------
        request
            A request of docs/contract.md section 3.
        log_features
            Add each item's feature vector (``features``) to the response.
        record
            Record the served top ``k`` in the balancer's exposure ledger.
        columns
            Return ``items`` as columns (see "Column form" in the module docstring).

        Raises
        ------
        RequestError
            The request is malformed; ``field`` names the offending field.
        """
        return self.rank_parsed([self.parse(request)], log_features=log_features, record=record, columns=columns)[0]

    def rank_many(
        self,
        requests: Sequence[Mapping[str, Any]],
        *,
        log_features: bool = False,
        record: bool = True,
        columns: bool = False,
    ) -> list[dict[str, Any]]:
        """Rank many requests at once: the vectorised form of :meth:`rank`.

        Every request is validated before any is ranked, so a malformed one changes nothing
        (its :class:`RequestError` names it, e.g. ``requests[4].candidates[0].stream_id``).
        """
        parsed = []
        for i, request in enumerate(requests):
            try:
                parsed.append(self.parse(request))
            except RequestError as error:
                raise RequestError(f"requests[{i}].{error.field}", error.problem) from None
        return self.rank_parsed(parsed, log_features=log_features, record=record, columns=columns)

    def parse(self, request: Mapping[str, Any]) -> ParsedRequest:
        """Validate a request, including the live-context fields this model uses."""
        parsed = parse_request(request)
        for name in self.live_fields:
            coerce_live_numeric(parsed, name)
        return parsed

    # ------------------------------------------------------------------ the one code path

    def rank_parsed(
        self,
        requests: Sequence[ParsedRequest],
        *,
        log_features: bool = False,
        record: bool = True,
        columns: bool = False,
    ) -> list[dict[str, Any]]:
        """Rank validated requests (what :meth:`rank` and :meth:`rank_many` call)."""
        if not requests:
            return []
        size_list = [r.n_candidates for r in requests]
        total = sum(size_list)
        sizes = np.asarray(size_list, dtype=np.int64)
        # stream ids are only ever picked from (no lookups): a Python list is enough
        stream_ids = _chain([r.stream_id for r in requests])
        creator_ids = _object_array(_chain([r.creator_id for r in requests]), total)
        merchant_ids = _object_array(_chain([r.merchant_id for r in requests]), total)

        duplicate = _duplicated_within(sizes, stream_ids)
        if duplicate is None:  # the common case: every candidate is ranked, no index copies
            unique = np.arange(total)
            unique_sizes = sizes
        else:
            unique = np.flatnonzero(~duplicate)
            unique_sizes = np.bincount(np.repeat(np.arange(len(requests)), sizes)[unique], minlength=len(requests))
        candidates = self._candidate_columns(requests, sizes, unique, creator_ids, merchant_ids)
        # one id lookup serves both the features and the policy's merchant status
        features, status = self.assembler.transform_with_status(candidates)
        relevance = np.asarray((self.purchase_model or self.model).predict(features), dtype=np.float64)
        trust = np.asarray(status.trust, dtype=np.float64)
        # the policy's vectorised parts (what Policy.rank_many runs, without its per-request
        # sort: the balancer orders each request itself)
        codes = self.policy.rule_codes(status.banned_merchant, status.banned_entity, trust)
        passed = codes == 0
        # one request needs no group bookkeeping (the policy scores it alike either way)
        group = None if len(requests) == 1 else unique_sizes
        score = self.policy.score(relevance, trust, group=group, guarantees=status.guarantees, kept=passed,
                                  orders=status.orders)
        if not passed.all():
            score = np.where(passed, score, -np.inf)

        responses = []
        starts = [0, *itertools.accumulate(size_list)]
        unique_starts = starts if duplicate is None else [0, *itertools.accumulate(unique_sizes.tolist())]
        for i, request in enumerate(requests):
            rows = slice(unique_starts[i], unique_starts[i + 1])
            responses.append(
                self._respond(
                    request,
                    candidate_rows=unique[rows],
                    duplicate_rows=(
                        _NO_ROWS if duplicate is None
                        else np.flatnonzero(duplicate[starts[i] : starts[i + 1]]) + starts[i]
                    ),
                    stream_ids=stream_ids,
                    creator_ids=creator_ids,
                    merchant_ids=merchant_ids,
                    relevance=relevance[rows],
                    trust=trust[rows],
                    score=score[rows],
                    codes=codes[rows],
                    passed=passed[rows],
                    features=features[rows] if log_features else None,
                    record=record,
                    columns=columns,
                )
            )
        return responses

    def _candidate_columns(
        self,
        requests: Sequence[ParsedRequest],
        sizes: np.ndarray,
        unique: np.ndarray,
        creator_ids: np.ndarray,
        merchant_ids: np.ndarray,
    ) -> dict[str, Any]:
        everything = unique.size == creator_ids.size  # no duplicates: no copies
        columns: dict[str, Any] = {
            "creator_id": creator_ids if everything else creator_ids[unique],
            "merchant_id": merchant_ids if everything else merchant_ids[unique],
        }
        if len(requests) == 1:
            # one user and one time for the whole request: the assembler looks them up once
            columns["user_id"] = requests[0].user_id
            columns["ts"] = requests[0].ts
        else:
            user_ids = np.array([r.user_id for r in requests], dtype=object)
            ts_ns = np.array([r.ts.value for r in requests], dtype=np.int64)
            columns["user_id"] = np.repeat(user_ids, sizes)[unique]
            columns["ts"] = _utc_series(np.repeat(ts_ns, sizes)[unique])
        total = len(creator_ids)
        for name in self.live_fields:
            values = np.fromiter(
                itertools.chain.from_iterable(coerce_live_numeric(r, name) for r in requests),
                dtype=np.float64,
                count=total,
            )
            columns[name] = values[unique]
        return columns

    def _respond(
        self,
        request: ParsedRequest,
        *,
        candidate_rows: np.ndarray,
        duplicate_rows: np.ndarray,
        stream_ids: list[str],
        creator_ids: np.ndarray,
        merchant_ids: np.ndarray,
        relevance: np.ndarray,
        trust: np.ndarray,
        score: np.ndarray,
        codes: np.ndarray,
        passed: np.ndarray,
        features: np.ndarray | None,
        record: bool,
        columns: bool,
    ) -> dict[str, Any]:
        if duplicate_rows.size == 0 and passed.all():
            # every candidate is ranked, in request order: the balancer reads the request's
            # own id lists, and its order indexes the candidates directly
            kept = None
            creators, merchants = request.creator_id, request.merchant_id
            kept_score, kept_trust = score, trust
        else:
            kept = np.flatnonzero(passed)
            kept_rows = candidate_rows[kept]
            creators, merchants = creator_ids[kept_rows].tolist(), merchant_ids[kept_rows].tolist()
            kept_score, kept_trust = score[kept], trust[kept]
        if self.balancer is not None and kept_score.size:
            now = request.ts.value / 1e9
            local = self.balancer.rerank(creators, merchants, kept_score, kept_trust, now=now, record=False)
        else:
            local = np.argsort(-kept_score, kind="stable")
        order = local if kept is None else kept[local]
        rows = candidate_rows[order]

        if record and self.balancer is not None and order.size:
            shown = request.k if request.k is not None else getattr(self.balancer.config, "record_k", None)
            served = rows if shown is None else rows[:shown]
            self.balancer.record(
                creator_ids[served].tolist(),
                merchant_ids[served].tolist(),
                np.arange(1, served.size + 1),
                now=request.ts.value / 1e9,
            )

        items: Any
        if columns:
            items = {
                "stream_id": _pick(stream_ids, rows),
                "creator_id": creator_ids[rows].tolist(),
                "merchant_id": merchant_ids[rows].tolist(),
                "score": score[order],
                "relevance": relevance[order],
                "trust": trust[order],
            }
            if features is not None:
                items["features"] = features[order]
        else:
            # JSON-shaped Python objects: one dict per item is the contract's output format.
            # The ids are picked from Python lists by one C call each (no object-array gather).
            id_lists: tuple[Sequence[str] | np.ndarray, ...]
            if kept is None:
                id_lists = (request.stream_id, request.creator_id, request.merchant_id)
                picked = order
            else:
                id_lists = (stream_ids, creator_ids, merchant_ids)
                picked = rows
            items = self._item_dicts(
                id_lists, picked, score[order], relevance[order], trust[order],
                None if features is None else features[order],
            )

        if kept is None:
            return {"request_id": request.request_id, "model": self.model_id, "items": items, "filtered": []}
        filtered_local = np.flatnonzero(~passed)
        if duplicate_rows.size == 0:
            # only rule-filtered candidates: candidate_rows ascend, so they are in input order
            filtered_rows = candidate_rows[filtered_local]
            filtered_reasons = _REASON_NAMES.take(codes[filtered_local])
        else:
            filtered_rows = np.concatenate([candidate_rows[filtered_local], duplicate_rows])
            filtered_reasons = np.concatenate(
                [_REASON_NAMES.take(codes[filtered_local]), np.full(duplicate_rows.size, REASON_DUPLICATE, dtype=object)]
            )
            by_input = np.argsort(filtered_rows, kind="stable")
            filtered_rows, filtered_reasons = filtered_rows[by_input], filtered_reasons[by_input]
        filtered = [
            {"stream_id": s, "reason": r}
            for s, r in zip(_pick(stream_ids, filtered_rows), filtered_reasons.tolist(), strict=True)
        ]
        return {"request_id": request.request_id, "model": self.model_id, "items": items, "filtered": filtered}

    def _item_dicts(
        self,
        id_lists: tuple[Sequence[str] | np.ndarray, ...],
        picked: np.ndarray,
        score: np.ndarray,
        relevance: np.ndarray,
        trust: np.ndarray,
        features: np.ndarray | None,
    ) -> list[dict[str, Any]]:
        """One dict per item, best first: ``picked`` indexes the three id sequences."""
        stream_ids, creator_ids, merchant_ids = (_picked(ids, picked) for ids in id_lists)
        # the per-item work is one dict display: the zip yields ready values (C-level
        # tolist and picks), and the lists are equally long by construction
        items = [
            {"stream_id": s, "creator_id": c, "merchant_id": m, "score": sc, "relevance": rl, "trust": tr}
            for s, c, m, sc, rl, tr in zip(
                stream_ids, creator_ids, merchant_ids, score.tolist(), relevance.tolist(), _json_floats(trust)
            )
        ]
        if features is not None:
            names = self.feature_names
            for item, vector in zip(items, features.tolist(), strict=True):
                item["features"] = {n: (None if math.isnan(v) else v) for n, v in zip(names, vector, strict=True)}
        return items


def _pick(values: Sequence[str] | np.ndarray, positions: np.ndarray) -> list[str]:
    """``values`` at ``positions``, in that order, as a list (one C call for a Python list)."""
    if isinstance(values, np.ndarray):
        return values[positions].tolist()  # type: ignore[no-any-return]
    if positions.size > 1:
        return list(itemgetter(*positions.tolist())(values))
    return [values[i] for i in positions.tolist()]


def _picked(values: Sequence[str] | np.ndarray, positions: np.ndarray) -> Sequence[str]:
    """:func:`_pick` for one pass over the result: the picked tuple itself, not a list copy of it."""
    if positions.size > 1 and not isinstance(values, np.ndarray):
        return itemgetter(*positions.tolist())(values)  # type: ignore[no-any-return]
    return _pick(values, positions)


def _chain(columns: list[list[str]]) -> list[str]:
    return columns[0] if len(columns) == 1 else list(itertools.chain.from_iterable(columns))


def _object_array(values: list[str], total: int) -> np.ndarray:
    # filling an empty object array is the fast way (np.array infers, and would make a 2-D
    # array of equal-length strings' characters for some inputs)
    out = np.empty(total, dtype=object)
    out[:] = values
    return out


def _duplicated_within(sizes: np.ndarray, stream_ids: list[str]) -> np.ndarray | None:
    """True for every repeat of a ``stream_id`` within its request (the first is kept).

    ``None`` when there is none, the common case, found in one C pass over the ids.
    """
    if len(set(stream_ids)) == len(stream_ids):
        return None
    import pandas as pd

    request_of = np.repeat(np.arange(len(sizes)), sizes)
    codes, uniques = pd.factorize(np.asarray(stream_ids, dtype=object))
    key = request_of.astype(np.int64) * np.int64(len(uniques)) + codes
    _, first = np.unique(key, return_index=True)
    duplicate = np.ones(len(stream_ids), dtype=bool)
    duplicate[first] = False
    return duplicate


def _utc_series(ns: np.ndarray) -> Any:
    import pandas as pd

    return pd.Series(pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC"))


def _json_floats(values: np.ndarray) -> list[float | None]:
    """Floats for JSON: a missing value (NaN) becomes ``None``."""
    out: list[float | None] = values.tolist()
    if np.isnan(values).any():
        out = [None if math.isnan(v) else v for v in out]  # type: ignore[arg-type]
    return out
