"""LambdaMART ranker: a thin, schema-checked wrapper over ``lightgbm.train``.

The wrapper adds what a production ranker needs around LightGBM and nothing else: a
validated config, the feature schema (names, order, categorical codes, monotone
constraints) saved beside the model text and checked at prediction time, early stopping on
NDCG@10 with the per-iteration curve kept for MLflow, and unbiased LambdaMART (LightGBM's
``position`` field) to learn from a feed whose clicks are inflated at the top slots.

NDCG note: LightGBM scores a query without any positive label as 1, while trustfeed's
metrics (docs/contract.md section 4) skip such lists. For early stopping the two agree: LightGBM's
value is an increasing affine function of ours (the all-zero queries add the same constant
at every iteration), so the best iteration is the same.

Requests without a positive label carry no LambdaRank gradient (every pair in them is a
tie), so by default they are left out of LightGBM's training and validation sets
(``LambdaMARTConfig.skip_requests_without_positives``): on a logged feed where about a third
of the requests get no click, that removes a third of the boosting work, and the validation
NDCG LightGBM reports then skips them as trustfeed's metric does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
import pandas as pd

from ..features.config import Choice, Config, Constraints, Flag, Integer, Items, JSONMapping, Real
from ..features.errors import ModelIntegrityError, NotFittedError, SchemaError
from ..features.io import atomic_dir

__all__ = ["LambdaMARTConfig", "LambdaMART", "MODEL_FILE", "SCHEMA_FILE", "requests_with_positives", "warm_best_round"]

MODEL_FILE = "model.txt"
SCHEMA_FILE = "schema.json"
MODEL_FORMAT_VERSION = 1

_OBJECTIVES = ("lambdarank", "rank_xendcg")
# Keys the config sets itself; extra_params may not override them silently.
_MANAGED_KEYS = frozenset(
    {
        "objective",
        "learning_rate",
        "num_leaves",
        "min_data_in_leaf",
        "min_sum_hessian_in_leaf",
        "feature_fraction",
        "bagging_fraction",
        "bagging_freq",
        "lambda_l2",
        "max_bin",
        "lambdarank_truncation_level",
        "label_gain",
        "lambdarank_position_bias_regularization",
        "num_threads",
        "deterministic",
        "seed",
        "metric",
        "eval_at",
        "monotone_constraints",
        "monotone_constraints_method",
        "verbosity",
    }
)


@dataclass(frozen=True)
class LambdaMARTConfig(Config):
    """Hyper-parameters of the ranker (frozen, validated, JSON round-trip).

    Parameters
    ----------
    objective
        ``"lambdarank"`` (pairwise LambdaMART) or ``"rank_xendcg"`` (listwise XE-NDCG).
    learning_rate, num_leaves, min_data_in_leaf, min_sum_hessian_in_leaf, feature_fraction,
    bagging_fraction, bagging_freq, lambda_l2, max_bin
        Tree-growing parameters, as in LightGBM.
    num_rounds
        Maximum boosting rounds.
    early_stopping_rounds
        Stop when validation NDCG@``eval_at[0]`` has not improved for this many rounds
        (``0``: never stop early). Needs validation data.
    min_rounds
        Rounds always kept before early stopping may stop or pick a best round. Logged
        NDCG is biased toward the logging policy's order: clicks pile up at the top slots
        whatever is shown there, and a model of a few trees scores many candidates alike,
        so ties fall back to the logged order. On the simulator the logged NDCG peaks at the
        first tree while the counterfactual value of the ranking keeps improving for tens
        of rounds (``benchmarks/position_bias.py``); early stopping therefore only guards
        against over-fitting after this warm-up.
    eval_at
        NDCG cut-offs evaluated each round; the first drives early stopping.
    lambdarank_truncation_level
        Pairs considered per query for ``lambdarank``.
    max_label
        Highest relevance grade; ``label_gain`` defaults to ``2**l - 1`` for ``l`` in
        ``0..max_label`` (the gain of docs/contract.md section 4).
    label_gain
        Explicit gains per grade (``None``: ``2**l - 1``).
    position_bias
        Learn position-bias factors jointly with the ranker (unbiased LambdaMART, LightGBM's
        ``position`` field) when ``fit`` receives logged positions. Only for ``lambdarank``.
    position_bias_regularization
        LightGBM's ``lambdarank_position_bias_regularization``.
    monotone_method
        LightGBM's ``monotone_constraints_method``.
    num_threads
        Threads (``0``: LightGBM's default, all cores).
    deterministic, seed
        Reproducibility controls.
    skip_requests_without_positives
        Leave requests whose impressions are all labelled 0 out of the data LightGBM sees
        (training and validation). They add no gradient (LambdaRank learns from pairs of
        different grades), only work; what changes is that ``min_data_in_leaf`` and the
        feature bins count rows of informative requests only. When no request has a
        positive label, nothing is left out.
    extra_params
        Further LightGBM parameters passed through unchanged (not one of those above).

    Examples
    --------
    >>> config = LambdaMARTConfig(learning_rate=0.1, num_rounds=50)
    >>> LambdaMARTConfig.from_dict(config.to_dict()) == config
    True
    """

    objective: str = "lambdarank"
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    min_sum_hessian_in_leaf: float = 1e-3
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    lambda_l2: float = 0.0
    max_bin: int = 255
    num_rounds: int = 300
    early_stopping_rounds: int = 30
    min_rounds: int = 50
    eval_at: tuple[int, ...] = (10,)
    lambdarank_truncation_level: int = 20
    max_label: int = 4
    label_gain: tuple[float, ...] | None = None
    position_bias: bool = True
    position_bias_regularization: float = 0.0
    monotone_method: str = "intermediate"
    num_threads: int = 1
    deterministic: bool = True
    seed: int = 0
    skip_requests_without_positives: bool = True
    extra_params: Mapping[str, Any] = field(default_factory=dict)

    constraints: ClassVar[Constraints] = {
        "objective": Choice(*_OBJECTIVES),
        "learning_rate": Real(0, strict_low=True),
        "num_leaves": Integer(low=2),
        "min_data_in_leaf": Integer(low=0),
        "min_sum_hessian_in_leaf": Real(0),
        "feature_fraction": Real(0, 1, strict_low=True),
        "bagging_fraction": Real(0, 1, strict_low=True),
        "bagging_freq": Integer(low=0),
        "lambda_l2": Real(0),
        "max_bin": Integer(low=2),
        "num_rounds": Integer(low=1),
        "early_stopping_rounds": Integer(low=0),
        "min_rounds": Integer(low=1),
        "eval_at": Items(Integer(low=1), min_len=1),
        "lambdarank_truncation_level": Integer(low=1),
        "max_label": Integer(low=1),
        "label_gain": Items(Real(), optional=True),
        "position_bias": Flag(),
        "position_bias_regularization": Real(0),
        "monotone_method": Choice("basic", "intermediate", "advanced"),
        "num_threads": Integer(low=0),
        "deterministic": Flag(),
        "seed": Integer(),
        "skip_requests_without_positives": Flag(),
        "extra_params": JSONMapping(),
    }

    def check(self) -> None:
        if self.label_gain is not None and len(self.label_gain) <= self.max_label:
            raise self.reject("label_gain", f"{self.max_label + 1} gains (grades 0..{self.max_label})")
        if self.position_bias and self.objective != "lambdarank":
            raise self.reject("position_bias", "false unless objective='lambdarank' (LightGBM learns position factors only there)")
        clash = sorted(set(self.extra_params) & _MANAGED_KEYS)
        if clash:
            raise self.reject("extra_params", f"no key the config sets itself ({', '.join(clash)}: use the config fields)")

    @property
    def gains(self) -> tuple[float, ...]:
        """Gain of each grade ``0..max_label``."""
        if self.label_gain is not None:
            return self.label_gain
        return tuple(float(2**grade - 1) for grade in range(self.max_label + 1))

    def lgb_params(self) -> dict[str, Any]:
        """The parameter dict handed to ``lightgbm.train`` (monotone constraints added by fit)."""
        params: dict[str, Any] = {
            "objective": self.objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "min_sum_hessian_in_leaf": self.min_sum_hessian_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin,
            "label_gain": list(self.gains),
            "metric": "ndcg",
            "eval_at": list(self.eval_at),
            "num_threads": self.num_threads,
            "deterministic": self.deterministic,
            "seed": self.seed,
            "verbosity": -1,
        }
        if self.objective == "lambdarank":
            params["lambdarank_truncation_level"] = self.lambdarank_truncation_level
            params["lambdarank_position_bias_regularization"] = self.position_bias_regularization
        params.update(self.extra_params)
        return params


def requests_with_positives(labels: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which requests hold at least one positive label: ``(row mask, request mask)``.

    ``labels`` are the rows' grades, ``sizes`` the request sizes in row order. When no
    request has a positive label, every row and request is kept (nothing to learn either way).

    Examples
    --------
    >>> rows, requests = requests_with_positives(np.array([0, 0, 1, 0, 0, 2]), np.array([2, 2, 2]))
    >>> rows.tolist(), requests.tolist()
    ([False, False, True, True, True, True], [False, True, True])
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    positive = np.maximum.reduceat(np.asarray(labels) > 0, starts)
    if not positive.any():
        positive = np.ones(sizes.size, dtype=bool)
    return np.repeat(positive, sizes), positive


def _group_sizes(group: ArrayLike, n_rows: int, what: str) -> np.ndarray:
    sizes = np.asarray(group, dtype=np.int64)
    if sizes.ndim != 1 or (sizes <= 0).any() or int(sizes.sum()) != n_rows:
        raise SchemaError(
            what, "group", f"positive query sizes summing to {n_rows} rows", f"{len(sizes)} sizes summing to {int(sizes.sum())}"
        )
    return sizes


class LambdaMART:
    """Learning-to-rank with LightGBM LambdaMART, with a checked feature schema.

    Parameters
    ----------
    config
        :class:`LambdaMARTConfig` (defaults when ``None``).

    Attributes
    ----------
    booster_
        The fitted ``lightgbm.Booster`` (after :meth:`fit` or :meth:`load`).
    feature_names_, categorical_, monotone_
        The feature schema the model was trained with.
    best_iteration_
        Number of trees used by :meth:`predict`.
    evals_result_
        Per-iteration validation metrics, ``{"valid": {"ndcg@10": [...]}}``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3)); y = (X[:, 0] > 0.5).astype(int) + (X[:, 0] > 1).astype(int)
    >>> model = LambdaMART(LambdaMARTConfig(num_rounds=20, min_data_in_leaf=5, early_stopping_rounds=0))
    >>> model = model.fit(X, y, group=[20] * 20, feature_names=["a", "b", "c"], monotone=[1, 0, 0])
    >>> scores = model.predict(X[:20])
    >>> bool(np.corrcoef(scores, X[:20, 0])[0, 1] > 0.5)
    True
    """

    def __init__(self, config: LambdaMARTConfig | None = None) -> None:
        self.config = config or LambdaMARTConfig()
        self.booster_: Any = None
        self.feature_names_: tuple[str, ...] = ()
        self.categorical_: tuple[str, ...] = ()
        self.monotone_: tuple[int, ...] = ()
        self.feature_schema_: dict[str, Any] = {}
        self.best_iteration_: int = 0
        self.evals_result_: dict[str, dict[str, list[float]]] = {}

    # ------------------------------------------------------------------ training

    def fit(
        self,
        X: np.ndarray,
        y: ArrayLike,
        group: Sequence[int] | np.ndarray,
        position: ArrayLike | None = None,
        X_valid: np.ndarray | None = None,
        y_valid: ArrayLike | None = None,
        group_valid: Sequence[int] | np.ndarray | None = None,
        feature_names: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        monotone: Sequence[int] | None = None,
        feature_schema: Mapping[str, Any] | None = None,
    ) -> LambdaMART:
        """Train on query groups of rows (rows of one query contiguous, in ``group`` order).

        Parameters
        ----------
        X, y, group
            Feature matrix, graded labels (integers ``0..max_label``) and query sizes.
        position
            Logged 1-based position of each row. Used for unbiased LambdaMART when
            ``config.position_bias`` is on; ignored otherwise.
        X_valid, y_valid, group_valid
            Validation queries for NDCG tracking and early stopping.
        feature_names, categorical, monotone
            The feature schema: names in column order, the categorical features (integer
            codes, negative or NaN = missing) and a monotone direction per feature (+1: the
            score never drops when the feature rises).
        feature_schema
            The assembler's full schema (``FeatureAssembler.schema()``), stored with the model
            so serving rebuilds the same features.

        Returns
        -------
        LambdaMART
            ``self``.
        """
        import lightgbm as lgb

        X = _as_matrix(X, "training features")
        n_rows, n_features = X.shape
        labels = np.asarray(y, dtype=np.float64)
        if labels.shape != (n_rows,):
            raise SchemaError("training data", "label", f"{n_rows} labels", f"shape {labels.shape}")
        if not np.isfinite(labels).all() or (labels < 0).any() or (labels > self.config.max_label).any() or (labels != np.round(labels)).any():
            raise SchemaError("training data", "label", f"integer grades 0..{self.config.max_label}", "other values")
        sizes = _group_sizes(group, n_rows, "training data")
        names = tuple(feature_names) if feature_names is not None else tuple(f"f{j}" for j in range(n_features))
        if len(names) != n_features or len(set(names)) != n_features:
            raise SchemaError("training data", "feature_names", f"{n_features} distinct names", f"{len(names)} names")
        directions = tuple(int(d) for d in monotone) if monotone is not None else (0,) * n_features
        if len(directions) != n_features or any(d not in (-1, 0, 1) for d in directions):
            raise SchemaError("training data", "monotone", f"{n_features} directions in {{-1, 0, 1}}", repr(directions))
        categorical = tuple(categorical)
        unknown = [c for c in categorical if c not in names]
        if unknown:
            raise SchemaError("training data", "categorical", "names of features", repr(unknown))

        params = self.config.lgb_params()
        if any(directions):
            params["monotone_constraints"] = list(directions)
            params["monotone_constraints_method"] = self.config.monotone_method
        positions = None
        if position is not None and self.config.position_bias:
            positions = np.asarray(position, dtype=np.int64)
            if positions.shape != (n_rows,):
                raise SchemaError("training data", "position", f"{n_rows} positions", f"shape {positions.shape}")
        if self.config.skip_requests_without_positives:
            rows, kept = requests_with_positives(labels, sizes)
            if not rows.all():
                X, labels, sizes = X[rows], labels[rows], sizes[kept]
                positions = positions[rows] if positions is not None else None
        train_set = lgb.Dataset(
            X,
            label=labels,
            group=sizes,
            position=positions,
            feature_name=list(names),
            categorical_feature=list(categorical) if categorical else "auto",
            free_raw_data=True,
        )
        valid_sets = []
        valid_names = []
        if X_valid is not None:
            if y_valid is None or group_valid is None:
                raise SchemaError("validation data", None, "X_valid, y_valid and group_valid together", "a partial set")
            X_valid = _as_matrix(X_valid, "validation features")
            if X_valid.shape[1] != n_features:
                raise SchemaError("validation data", None, f"{n_features} feature columns", f"{X_valid.shape[1]}")
            valid_sizes = _group_sizes(group_valid, X_valid.shape[0], "validation data")
            valid_labels = np.asarray(y_valid, dtype=np.float64)
            if valid_labels.shape != (X_valid.shape[0],):
                raise SchemaError("validation data", "label", f"{X_valid.shape[0]} labels", f"shape {valid_labels.shape}")
            if self.config.skip_requests_without_positives:
                rows, kept = requests_with_positives(valid_labels, valid_sizes)
                if not rows.all():
                    X_valid, valid_labels, valid_sizes = X_valid[rows], valid_labels[rows], valid_sizes[kept]
            valid_sets.append(lgb.Dataset(X_valid, label=valid_labels, group=valid_sizes, reference=train_set))
            valid_names.append("valid")
        evals: dict[str, Any] = {}
        callbacks: list[Any] = [lgb.record_evaluation(evals)]
        stopper: _WarmEarlyStopping | None = None
        if valid_sets and self.config.early_stopping_rounds > 0:
            stopper = _WarmEarlyStopping(
                f"ndcg@{self.config.eval_at[0]}", self.config.early_stopping_rounds, self.config.min_rounds
            )
            callbacks.append(stopper)
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=self.config.num_rounds,
            valid_sets=valid_sets,
            valid_names=valid_names,
            callbacks=callbacks,
        )
        self.booster_ = booster
        self.feature_names_ = names
        self.categorical_ = categorical
        self.monotone_ = directions
        self.feature_schema_ = dict(feature_schema) if feature_schema is not None else {}
        best = stopper.best_round if stopper is not None else 0
        self.best_iteration_ = best if best > 0 else int(booster.current_iteration())
        self.evals_result_ = {name: {metric: [float(v) for v in values] for metric, values in curves.items()} for name, curves in evals.items()}
        return self

    # ------------------------------------------------------------------ inference

    def _check_fitted(self) -> None:
        if self.booster_ is None:
            raise NotFittedError("LambdaMART is not fitted: call fit() or LambdaMART.load() first")

    def predict(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Relevance scores (higher = better), one per row.

        ``X`` is a matrix in :attr:`feature_names_` order, or a DataFrame whose columns are
        exactly those names in that order; anything else raises :class:`SchemaError`.
        """
        self._check_fitted()
        if isinstance(X, pd.DataFrame):
            columns = tuple(str(c) for c in X.columns)
            if columns != self.feature_names_:
                raise SchemaError("features", None, f"columns {list(self.feature_names_)}", f"{list(columns)}")
        matrix = _as_matrix(X, "features")
        if matrix.shape[1] != len(self.feature_names_):
            raise SchemaError(
                "features", None, f"{len(self.feature_names_)} columns ({', '.join(self.feature_names_)})", f"{matrix.shape[1]} columns"
            )
        if matrix.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        scores = self.booster_.predict(matrix, num_iteration=self.best_iteration_, num_threads=self.config.num_threads)
        return np.asarray(scores, dtype=np.float64)

    def feature_importance(self, importance_type: str = "gain") -> pd.Series:
        """Importance per feature (``"gain"`` or ``"split"``), largest first."""
        self._check_fitted()
        values = self.booster_.feature_importance(importance_type=importance_type, iteration=self.best_iteration_)
        return pd.Series(values, index=list(self.feature_names_), name=importance_type).sort_values(ascending=False)

    @property
    def validation_ndcg(self) -> list[float]:
        """Validation NDCG at ``eval_at[0]`` per boosting round (empty without validation data)."""
        return list(self.evals_result_.get("valid", {}).get(f"ndcg@{self.config.eval_at[0]}", []))

    # ------------------------------------------------------------------ persistence

    def schema(self) -> dict[str, Any]:
        """The JSON written to ``schema.json``."""
        self._check_fitted()
        return {
            "kind": "trustfeed.lambdamart",
            "format_version": MODEL_FORMAT_VERSION,
            "feature_names": list(self.feature_names_),
            "categorical": list(self.categorical_),
            "monotone": list(self.monotone_),
            "best_iteration": self.best_iteration_,
            "config": self.config.to_dict(),
            "feature_schema": self.feature_schema_,
            "evals_result": self.evals_result_,
            "lightgbm_version": _lightgbm_version(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``model.txt`` (LightGBM text) and ``schema.json`` atomically into ``path``."""
        self._check_fitted()
        with atomic_dir(path, "lambdamart-model") as tmp:
            (tmp / MODEL_FILE).write_text(self.booster_.model_to_string(num_iteration=self.best_iteration_))
            (tmp / SCHEMA_FILE).write_text(json.dumps(self.schema(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LambdaMART:
        """Read a directory written by :meth:`save`, checking the model against its schema.

        Raises :class:`ModelIntegrityError` naming the file when a file is missing, of
        another format, or the model's features disagree with the schema.
        """
        import lightgbm as lgb

        root = Path(path)
        model_path, schema_path = root / MODEL_FILE, root / SCHEMA_FILE
        for file in (model_path, schema_path):
            if not file.is_file():
                raise ModelIntegrityError(str(file), "missing")
        try:
            schema = json.loads(schema_path.read_text())
        except json.JSONDecodeError as error:
            raise ModelIntegrityError(str(schema_path), f"not JSON: {error}") from None
        if schema.get("kind") != "trustfeed.lambdamart" or schema.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelIntegrityError(
                str(schema_path), f"expected trustfeed.lambdamart format {MODEL_FORMAT_VERSION}, got {schema.get('kind')!r} {schema.get('format_version')!r}"
            )
        try:
            booster = lgb.Booster(model_str=model_path.read_text())
        except lgb.basic.LightGBMError as error:
            raise ModelIntegrityError(str(model_path), f"not a LightGBM model: {error}") from None
        names = tuple(schema["feature_names"])
        if tuple(booster.feature_name()) != names:
            raise ModelIntegrityError(
                str(model_path), f"model features {booster.feature_name()} differ from schema.json {list(names)}"
            )
        model = cls(LambdaMARTConfig.from_dict(schema["config"]))
        model.booster_ = booster
        model.feature_names_ = names
        model.categorical_ = tuple(schema.get("categorical", ()))
        model.monotone_ = tuple(int(d) for d in schema.get("monotone", (0,) * len(names)))
        model.feature_schema_ = dict(schema.get("feature_schema", {}))
        model.best_iteration_ = int(booster.current_iteration())
        model.evals_result_ = schema.get("evals_result", {})
        return model

    @classmethod
    def from_booster(
        cls,
        config: LambdaMARTConfig,
        booster: Any,
        *,
        feature_schema: Mapping[str, Any],
        monotone: Sequence[int],
        evals_result: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    ) -> LambdaMART:
        """A fitted ranker around a Booster trained elsewhere (e.g. by LightGBM's distributed learner).

        The best iteration follows the same warm early-stopping rule :meth:`fit` applies, on
        the ``"valid"`` curve of ``evals_result`` (all trees when there is none).
        """
        names = tuple(booster.feature_name())
        if list(names) != list(feature_schema.get("feature_names", names)):
            raise ModelIntegrityError("booster", f"features {list(names)} differ from the schema {feature_schema.get('feature_names')}")
        model = cls(config)
        model.booster_ = booster
        model.feature_names_ = names
        model.categorical_ = tuple(feature_schema.get("categorical", ()))
        model.monotone_ = tuple(int(d) for d in monotone)
        model.feature_schema_ = dict(feature_schema)
        curves = {name: {metric: [float(v) for v in values] for metric, values in c.items()} for name, c in (evals_result or {}).items()}
        model.evals_result_ = curves
        curve = curves.get("valid", {}).get(f"ndcg@{config.eval_at[0]}")
        best = 0
        if curve and config.early_stopping_rounds > 0:
            best = warm_best_round(curve, config.early_stopping_rounds, config.min_rounds)
        model.best_iteration_ = best if best > 0 else int(booster.current_iteration())
        return model


def warm_best_round(scores: Sequence[float], patience: int, min_rounds: int) -> int:
    """The round (1-based) warm early stopping keeps for a validation curve (0: none).

    The rule of :meth:`LambdaMART.fit`: the best score from round ``min_rounds`` on, stopping
    once it has not improved for ``patience`` rounds.

    Examples
    --------
    >>> warm_best_round([0.9, 0.5, 0.6, 0.7, 0.65, 0.64, 0.8], patience=2, min_rounds=2)
    4
    """
    best_round, best_score = 0, -np.inf
    for rounds, score in enumerate(scores, start=1):
        if rounds >= min_rounds and (score > best_score or best_round == 0):
            best_round, best_score = rounds, float(score)
        if best_round and rounds - best_round >= patience:
            break
    return best_round


class _WarmEarlyStopping:
    """Early stopping on one validation metric that ignores the first ``min_rounds`` rounds.

    LightGBM's own ``early_stopping`` callback may pick any round as the best, including the
    first; see :attr:`LambdaMARTConfig.min_rounds` for why the ranker must not.
    """

    order = 30  # after record_evaluation (order 20), like LightGBM's callback

    def __init__(self, metric: str, patience: int, min_rounds: int) -> None:
        self.metric = metric
        self.patience = patience
        self.min_rounds = min_rounds
        self.best_round = 0
        self.best_score = -np.inf
        self.best_results: list[Any] = []

    def __call__(self, env: Any) -> None:
        import lightgbm as lgb

        rounds = env.iteration + 1
        score = next(
            (float(r[2]) for r in env.evaluation_result_list if r[0] == "valid" and r[1] == self.metric), None
        )
        if score is None:
            return
        if rounds >= self.min_rounds and (score > self.best_score or self.best_round == 0):
            self.best_round, self.best_score = rounds, score
            self.best_results = list(env.evaluation_result_list)
        if self.best_round and rounds - self.best_round >= self.patience:
            raise lgb.callback.EarlyStopException(self.best_round - 1, self.best_results)


def _as_matrix(X: ArrayLike, what: str) -> np.ndarray:
    matrix = np.asarray(X.to_numpy(dtype=np.float64, na_value=np.nan) if isinstance(X, pd.DataFrame) else X, dtype=np.float64)
    if matrix.ndim != 2:
        raise SchemaError(what, None, "a 2-D matrix (rows x features)", f"{matrix.ndim}-D input")
    return matrix


def _lightgbm_version() -> str:
    import lightgbm as lgb

    return str(lgb.__version__)
