"""The purchase model: how likely a candidate is to be bought if the viewer looks at it.

The expected-value policy (:mod:`trustfeed.ranker.policy`) ranks by
``P(purchase | examined) x (1 - (1 + bad_cost) p_bad)``. Its first factor used to be a
calibration of the LambdaMART score, but that score is a ranking score trained on graded labels
(a click counts, a bad purchase counts like a click), not a purchase probability. The purchase
model estimates the probability directly, in two stages that follow how a purchase happens::

    P(purchase | examined) = P(click | examined) x P(purchase | click)

* the click stage is a binary LightGBM model over every logged impression (a click is any label
  >= 1), with the logged position as a fixed offset ``g x log(position)`` in its log-odds: the
  position bias of the log is taken out, and the model describes a candidate at the top of the
  list. ``g`` and the trees are fitted in turn (``position_passes`` times): ``g`` by logistic
  regression with the trees as an offset, the trees with ``g`` as an offset;
* the purchase stage is a binary LightGBM model over the clicked impressions only.

Clicks are some ten times more frequent than purchases, so splitting the probability lets most
of it be learned from the larger sample. :meth:`PurchaseModel.predict` returns
``log P(click | examined at position 1) + log P(purchase | click)``, the log of the purchase
probability; the policy's calibration then maps it to a probability on the validation days
(its slope and intercept absorb what the two stages get wrong on average).

With ``monotone=True`` both stages keep the monotone directions of the feature schema (the
merchant trust signals), so a candidate's estimated purchase probability never falls when one of
its merchant's trust signals rises; with the policy's value factor the served score stays
monotone in trust.

Both stages are LightGBM text models saved beside a JSON schema (nothing is pickled)::

    click_model.txt        the click stage
    purchase_model.txt     the purchase-given-click stage
    purchase_model.json    kind, format version, features, categorical, monotone, g, config
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..features.config import Config, Constraints, Flag, Integer, Real
from ..features.errors import ConfigError, ModelIntegrityError, NotFittedError, SchemaError
from ..features.io import atomic_dir
from ._expected_value import logistic_regression

__all__ = ["PurchaseModelConfig", "PurchaseModel", "in_request_sample", "CLICK_FILE", "PURCHASE_FILE",
           "PURCHASE_SCHEMA_FILE"]

CLICK_FILE = "click_model.txt"
PURCHASE_FILE = "purchase_model.txt"
PURCHASE_SCHEMA_FILE = "purchase_model.json"
_KIND = "trustfeed.purchase_model"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PurchaseModelConfig(Config):
    """Settings of the two LightGBM stages (frozen, validated, JSON round-trip).

    Parameters
    ----------
    learning_rate, num_leaves, lambda_l2
        Tree-growing parameters of both stages, as in LightGBM. Small, strongly regularised
        trees (7 leaves, L2 30): a click or a purchase is a noisy outcome of a few signals
        (the viewer's taste for the category, follows, the host, the merchant), and larger
        trees fit the noise. 7 leaves / L2 10 against 15 leaves / L2 1 ranked held-out requests to
        0.7-1.5% more expected orders on each of six simulated platforms (both world
        settings, ``benchmarks/bench_relevance_gap.py``) and had a lower validation log-loss
        of both stages on the 1.48M-impression frame of ``benchmarks/bench_purchase_fit.py``,
        at the same training cost. Learning rate 0.15 rather than 0.1: about half the trees
        for the same validation log-loss (within 0.1%) and the same expected orders on those
        six platforms (within 0.4% each, mean unchanged). L2 30 rather than 10 (session 8):
        +0.3 points of the truth's expected orders on the mean of twelve held-out platforms
        (impulse, no impulse and risky settings; up on 9, down on 3 by at most 0.35), and in the
        closed loop more expected orders on 8 of 9 platforms (-0.1 to +1.1%) and more
        expected net value on 7 (-1.1 to +1.3%, mean +0.34%); it grows a few more trees
        (about 1 CPU s more on the 1.48M-impression frame).
    min_data_in_leaf
        Smallest leaf of the click stage (every impression).
    min_data_in_leaf_purchase
        Smallest leaf of the purchase stage (clicked impressions only, a smaller sample).
    num_rounds
        Most trees per stage.
    early_stopping_rounds
        Each stage stops when its validation log-loss has not improved for this many trees
        (``0``: never; then ``num_rounds`` trees). The log-loss curve is smooth near its
        minimum: on the 1.48M-impression frame of ``benchmarks/bench_purchase_fit.py`` 10 and
        30 pick the same trees, and 10 trains 60 fewer.
    position_passes
        Alternations of the click stage's position coefficient and trees (``>= 1``).
    first_pass_learning_rate
        Learning rate of the click stage's passes before the last (``0``: ``learning_rate``).
        Those passes only estimate the position coefficient ``g`` that the last pass takes
        as its offset; their trees are dropped, so coarser, fewer trees serve as well.
    click_offset
        Start the purchase stage from the click stage's score: its log-odds begin at
        ``intercept + h x`` the click stage's log-odds at the top position (both fitted by
        logistic regression of purchase on the training clicks, ``h >= 0``), and its trees fit
        what is left. What makes a viewer click a candidate (the taste for its category, a
        followed host) largely also makes them buy it once clicked, and the click stage learns
        it from ten times as many outcomes. ``h`` is saved with the model; ``h >= 0`` keeps the
        score monotone in the trust signals.
    purchase_learning_rate
        Learning rate of the purchase stage (``0``: ``learning_rate``). Started from the click
        score, the purchase stage's trees fit a smaller remainder, in smaller steps. Session 9,
        both together (``click_offset`` with 0.05) against neither, on the held-out requests of
        ``benchmarks/bench_relevance_gap.py``: the truth's expected orders up on 9 of 14
        simulated platforms (-0.13 to +1.06 points, mean +0.31), the validation log-loss lower
        on 13 (docs/ranker.md).
    max_bin
        Most histogram bins per feature (LightGBM's ``max_bin``), both stages.
    max_click_rows
        Most training rows of the click stage (``0``: all): beyond it a uniform random sample
        of whole requests (``groups`` given to :meth:`fit`, else of rows), drawn with ``seed``.
        A uniform sample leaves the logistic click model unbiased; the purchase stage still
        sees every clicked row, and validation rows are never sampled.
    monotone
        Keep the feature schema's monotone directions (the trust signals) in both stages.
    num_threads, seed
        LightGBM threads (``0``: all cores) and seed; fits are deterministic.

    Examples
    --------
    >>> PurchaseModelConfig.from_dict(PurchaseModelConfig(num_leaves=7).to_dict()).num_leaves
    7
    """

    learning_rate: float = 0.15
    num_leaves: int = 7
    min_data_in_leaf: int = 100
    min_data_in_leaf_purchase: int = 50
    lambda_l2: float = 30.0
    num_rounds: int = 1000
    early_stopping_rounds: int = 10
    position_passes: int = 2
    first_pass_learning_rate: float = 0.3
    click_offset: bool = True
    purchase_learning_rate: float = 0.05
    max_bin: int = 255
    max_click_rows: int = 300_000
    monotone: bool = True
    num_threads: int = 1
    seed: int = 0

    constraints: ClassVar[Constraints] = {
        "learning_rate": Real(0, strict_low=True),
        "num_leaves": Integer(low=2),
        "min_data_in_leaf": Integer(low=1),
        "min_data_in_leaf_purchase": Integer(low=1),
        "lambda_l2": Real(0),
        "num_rounds": Integer(low=1),
        "early_stopping_rounds": Integer(low=0),
        "position_passes": Integer(1, 10),
        "first_pass_learning_rate": Real(0),
        "click_offset": Flag(),
        "purchase_learning_rate": Real(0),
        "max_bin": Integer(low=2),
        "max_click_rows": Integer(low=0),
        "monotone": Flag(),
        "num_threads": Integer(low=0),
        "seed": Integer(),
    }

    def lgb_params(self, min_data_in_leaf: int) -> dict[str, Any]:
        """LightGBM parameters of one stage."""
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": min_data_in_leaf,
            "lambda_l2": self.lambda_l2,
            "max_bin": self.max_bin,
            "num_threads": self.num_threads,
            "deterministic": True,
            "seed": self.seed,
            "verbosity": -1,
        }


class PurchaseModel:
    """``log P(purchase | examined)`` of a candidate: a click stage times a purchase stage.

    Parameters
    ----------
    config
        :class:`PurchaseModelConfig` (defaults when ``None``).

    Attributes
    ----------
    feature_names_, categorical_, monotone_
        The feature layout (the ranker's: the same assembler feeds both).
    position_coef_
        ``g``: the click stage's log-odds per unit of ``log(position)`` in the log (negative).
    click_offset_coef_
        ``(intercept, h)`` of the purchase stage's start from the click stage's log-odds
        (``(0, 0)`` without ``click_offset``).
    click_booster_, purchase_booster_
        The fitted LightGBM boosters (truncated at their best iteration when loaded).
    fit_info_
        Trees per stage, rows and validation log-loss of the last :meth:`fit`, for logging.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 6000
    >>> X = rng.normal(size=(n, 2)); position = rng.integers(1, 11, n)
    >>> clicked = rng.random(n) < 1 / (1 + np.exp(-(-1.0 + X[:, 0] - 0.7 * np.log(position))))
    >>> bought = clicked & (rng.random(n) < 1 / (1 + np.exp(-(-1.5 + X[:, 1]))))
    >>> half = n // 2
    >>> model = PurchaseModel(PurchaseModelConfig(min_data_in_leaf=50, min_data_in_leaf_purchase=20)).fit(
    ...     X[:half], clicked[:half], bought[:half], position[:half], X[half:], clicked[half:], bought[half:],
    ...     position[half:], feature_names=["a", "b"])
    >>> abs(model.position_coef_ - (-0.7)) < 0.2  # the log's position bias, taken out
    True
    >>> score = model.predict(X[half:])
    >>> bool(np.corrcoef(score, X[half:, 0] + X[half:, 1])[0, 1] > 0.8)
    True
    """

    def __init__(self, config: PurchaseModelConfig | None = None) -> None:
        self.config = config or PurchaseModelConfig()
        self.click_booster_: Any = None
        self.purchase_booster_: Any = None
        self.feature_names_: tuple[str, ...] = ()
        self.categorical_: tuple[str, ...] = ()
        self.monotone_: tuple[int, ...] = ()
        self.position_coef_: float = 0.0
        self.click_offset_coef_: tuple[float, float] = (0.0, 0.0)
        self.fit_info_: dict[str, Any] = {}

    def __repr__(self) -> str:
        trees = (self._trees(self.click_booster_), self._trees(self.purchase_booster_))
        return f"PurchaseModel({len(self.feature_names_)} features, trees {trees}, g={self.position_coef_:.3f})"

    # ------------------------------------------------------------------ training

    def fit(
        self,
        X: np.ndarray,
        clicked: ArrayLike,
        purchased: ArrayLike,
        position: ArrayLike,
        X_valid: np.ndarray,
        clicked_valid: ArrayLike,
        purchased_valid: ArrayLike,
        position_valid: ArrayLike,
        *,
        feature_names: Sequence[str],
        categorical: Sequence[str] = (),
        monotone: Sequence[int] | None = None,
        groups: ArrayLike | None = None,
        request_ids: ArrayLike | None = None,
    ) -> PurchaseModel:
        """Fit both stages on logged impressions; the validation rows stop each stage early.

        ``clicked``/``purchased`` are per impression (a purchase is also a click: a purchased
        row that is not flagged clicked counts as clicked); ``position`` is the logged 1-based
        position. ``groups`` (request sizes, rows of a request together, as LambdaMART takes
        them) makes the ``max_click_rows`` sample one of whole requests. ``request_ids`` (one per
        row) does too, and draws each request by :func:`in_request_sample`: the sample the Dask
        backend draws on its workers, so both backends fit the same model; it takes precedence
        over ``groups``. Returns ``self``.

        Raises
        ------
        SchemaError
            Shapes disagree, a position is below 1, or a stage has only one outcome (no click,
            no purchase, or nothing else) in its training or validation rows.
        """
        names = tuple(str(n) for n in feature_names)
        X, buy, click, log_position = _stage_inputs(X, purchased, clicked, position, names, "training data")
        valid = _stage_inputs(X_valid, purchased_valid, clicked_valid, position_valid, names, "validation data")
        sample = _click_sample(X.shape[0], self.config.max_click_rows, groups, self.config.seed, request_ids)
        click_rows = (X, click, log_position) if sample is None else (X[sample], click[sample], log_position[sample])
        seen = click > 0
        return self._fit_stages(click_rows, (X[seen], buy[seen]), valid, names, categorical, monotone,
                                train_rows=int(X.shape[0]), train_purchases=int(buy.sum()))

    def fit_sampled(
        self,
        sample: tuple[np.ndarray, ArrayLike, ArrayLike],
        clicked_rows: tuple[np.ndarray, ArrayLike],
        valid: tuple[np.ndarray, ArrayLike, ArrayLike, ArrayLike],
        *,
        train_rows: int,
        feature_names: Sequence[str],
        categorical: Sequence[str] = (),
        monotone: Sequence[int] | None = None,
    ) -> PurchaseModel:
        """Fit both stages from rows drawn by the caller, for training data no process holds whole.

        :meth:`fit` draws the click stage's sample and picks the clicked rows itself; a caller
        whose rows are spread over machines (the Dask backend) draws them where the rows live
        and hands in only these: ``sample`` is ``(X, clicked, position)`` of a
        uniform sample of whole training requests (the click stage's rows, used as given:
        ``max_click_rows`` is the caller's to apply), ``clicked_rows`` is ``(X, purchased)`` of
        every clicked training row (the purchase stage's rows), ``valid`` is
        ``(X, clicked, purchased, position)`` of the validation rows, and ``train_rows`` the
        number of training rows the sample was drawn from (logged). Given the same rows in the
        same order, the model equals the one :meth:`fit` learns from them.

        Raises
        ------
        SchemaError
            As :meth:`fit`; also when a clicked row's purchase flags do not fit its matrix.
        """
        names = tuple(str(n) for n in feature_names)
        X_sample, clicked_sample, position_sample = sample
        X, _, click, log_position = _stage_inputs(X_sample, np.zeros(len(X_sample), dtype=bool), clicked_sample,
                                                  position_sample, names, "the click sample", purchases=False)
        X_clicked, buy_clicked = clicked_rows
        matrix = np.asarray(X_clicked, dtype=np.float64)
        bought = np.asarray(buy_clicked, dtype=bool)
        if matrix.ndim != 2 or matrix.shape[1] != len(names) or bought.shape != (matrix.shape[0],):
            raise SchemaError("the clicked rows", None, f"a matrix of {len(names)} columns and one flag per row",
                              f"shapes {matrix.shape} and {bought.shape}")
        if bought.all() or not bought.any():
            raise SchemaError("the clicked rows", "purchased", "both outcomes", f"{int(bought.sum())} of {bought.size}")
        X_valid, clicked_valid, purchased_valid, position_valid = valid
        valid_inputs = _stage_inputs(X_valid, purchased_valid, clicked_valid, position_valid, names, "validation data")
        return self._fit_stages((X, click, log_position), (matrix, bought.astype(np.float64)), valid_inputs, names,
                                categorical, monotone, train_rows=int(train_rows), train_purchases=int(bought.sum()))

    def _fit_stages(
        self,
        click_rows: tuple[np.ndarray, np.ndarray, np.ndarray],
        purchase_rows: tuple[np.ndarray, np.ndarray],
        valid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        names: tuple[str, ...],
        categorical_names: Sequence[str],
        monotone: Sequence[int] | None,
        *,
        train_rows: int,
        train_purchases: int,
    ) -> PurchaseModel:
        import lightgbm as lgb

        Xc, click_c, log_position_c = click_rows
        X_bought, buy_bought = purchase_rows
        Xv, buy_v, click_v, log_position_v = valid
        directions = tuple(int(d) for d in monotone) if monotone is not None else (0,) * len(names)
        if len(directions) != len(names) or any(d not in (-1, 0, 1) for d in directions):
            raise SchemaError("training data", "monotone", f"{len(names)} directions in {{-1, 0, 1}}", repr(directions))
        categorical = tuple(str(c) for c in categorical_names)
        unknown = [c for c in categorical if c not in names]
        if unknown:
            raise SchemaError("training data", "categorical", "names of features", repr(unknown))
        config = self.config
        use_monotone = config.monotone and any(directions)

        params_of = {}
        for min_leaf in (config.min_data_in_leaf, config.min_data_in_leaf_purchase):
            params_of[min_leaf] = config.lgb_params(min_leaf)
            if use_monotone:
                params_of[min_leaf].update(monotone_constraints=list(directions),
                                           monotone_constraints_method="intermediate")

        def datasets(rows_x: np.ndarray, y: np.ndarray, valid_x: np.ndarray, valid_y: np.ndarray,
                     offset: np.ndarray | None, valid_offset: np.ndarray | None) -> tuple[Any, Any]:
            train_set = lgb.Dataset(rows_x, label=y, init_score=offset, feature_name=list(names),
                                    categorical_feature=list(categorical) if categorical else "auto")
            return train_set, lgb.Dataset(valid_x, label=valid_y, init_score=valid_offset, reference=train_set)

        def stage(sets: tuple[Any, Any], min_leaf: int, learning_rate: float | None = None) -> Any:
            callbacks: list[Any] = ([lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False)]
                                    if config.early_stopping_rounds > 0 else [])
            params = params_of[min_leaf] if learning_rate is None else {**params_of[min_leaf], "learning_rate": learning_rate}
            return lgb.train(params, sets[0], num_boost_round=config.num_rounds, valid_sets=[sets[1]],
                             valid_names=["valid"], callbacks=callbacks)

        ones = np.ones_like(log_position_c)
        g = float(logistic_regression(np.column_stack([ones, log_position_c]), click_c)[1])
        # the click stage's binned data are built once: each pass changes only the position offset
        click_sets = datasets(Xc, click_c, Xv, click_v, g * log_position_c, g * log_position_v)
        click_booster = None
        for done in range(config.position_passes):
            if done:
                click_sets[0].set_init_score(g * log_position_c)
                click_sets[1].set_init_score(g * log_position_v)
            last = done == config.position_passes - 1
            # the passes before the last only estimate g: their trees are dropped
            click_booster = stage(click_sets, config.min_data_in_leaf,
                                  None if last or config.first_pass_learning_rate <= 0 else config.first_pass_learning_rate)
            trees = click_booster.predict(Xc, raw_score=True, num_iteration=_best(click_booster))
            g = float(logistic_regression(np.column_stack([ones, log_position_c]), click_c, offset=trees)[1])
        del click_sets
        if click_booster is None:  # position_passes >= 1 is validated; this keeps the type narrow
            raise ConfigError("PurchaseModelConfig.position_passes: expected at least 1, got 0")
        seen_v = click_v > 0
        offset = offset_v = None
        start = (0.0, 0.0)
        if config.click_offset:
            click_bought = click_booster.predict(X_bought, raw_score=True, num_iteration=_best(click_booster))
            design = np.column_stack([np.ones_like(click_bought), click_bought])
            intercept, h = (float(v) for v in logistic_regression(design, buy_bought)[:2])
            if h < 0:  # a negative slope would turn a trust rise's click gain into a purchase loss
                intercept, h = float(logistic_regression(design[:, :1], buy_bought)[0]), 0.0
            start = (intercept, h)
            offset = intercept + h * click_bought
            offset_v = intercept + h * click_booster.predict(Xv[seen_v], raw_score=True, num_iteration=_best(click_booster))
        purchase_booster = stage(datasets(X_bought, buy_bought, Xv[seen_v], buy_v[seen_v], offset, offset_v),
                                 config.min_data_in_leaf_purchase, config.purchase_learning_rate or None)
        self.click_offset_coef_ = start

        self.click_booster_, self.purchase_booster_ = click_booster, purchase_booster
        self.feature_names_, self.categorical_, self.monotone_ = names, categorical, directions if use_monotone else (0,) * len(names)
        self.position_coef_ = g
        score_v = self.predict(Xv) + g * log_position_v
        probability = np.clip(np.exp(score_v), 1e-12, 1 - 1e-12)
        self.fit_info_ = {
            "click_trees": _best(click_booster), "purchase_trees": _best(purchase_booster), "position_coef": g,
            "click_offset_intercept": start[0], "click_offset_slope": start[1],
            "train_rows": train_rows, "click_rows": int(Xc.shape[0]), "train_clicks": int(X_bought.shape[0]),
            "train_purchases": train_purchases,
            "valid_purchase_logloss": float(-np.mean(buy_v * np.log(probability) + (1 - buy_v) * np.log1p(-probability))),
        }
        return self

    # ------------------------------------------------------------------ inference

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``log P(click | examined at the top) + log P(purchase | click)`` per row (higher = likelier bought).

        ``X`` is a matrix in :attr:`feature_names_` order.
        """
        if self.click_booster_ is None or self.purchase_booster_ is None:
            raise NotFittedError("PurchaseModel is not fitted: call fit() or PurchaseModel.load() first")
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names_):
            raise SchemaError("features", None, f"{len(self.feature_names_)} columns", f"shape {matrix.shape}")
        if matrix.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        threads = self.config.num_threads
        click = self.click_booster_.predict(matrix, raw_score=True, num_iteration=_best(self.click_booster_),
                                            num_threads=threads)
        buy = self.purchase_booster_.predict(matrix, raw_score=True, num_iteration=_best(self.purchase_booster_),
                                             num_threads=threads)
        return self.score_from_stages(click, buy)

    def score_from_stages(self, click: np.ndarray, buy: np.ndarray) -> np.ndarray:
        """:meth:`predict` from the two stages' raw tree scores (LightGBM's or compiled ones).

        ``log sigmoid(click) + log sigmoid(buy + intercept + h x click)``, with
        :attr:`click_offset_coef_` ``(intercept, h)`` (both 0 without ``click_offset``).
        """
        intercept, h = self.click_offset_coef_
        purchase = buy + (intercept + h * click) if (h or intercept) else buy
        # log sigmoid, computed without overflow
        return np.asarray(-np.logaddexp(0.0, -click) - np.logaddexp(0.0, -purchase), dtype=np.float64)

    # ------------------------------------------------------------------ persistence

    def schema(self) -> dict[str, Any]:
        """The JSON written to ``purchase_model.json``."""
        return {
            "kind": _KIND,
            "format_version": _FORMAT_VERSION,
            "feature_names": list(self.feature_names_),
            "categorical": list(self.categorical_),
            "monotone": list(self.monotone_),
            "position_coef": self.position_coef_,
            "click_offset_coef": list(self.click_offset_coef_),
            "config": self.config.to_dict(),
            "fit_info": self.fit_info_,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write both stages and the schema atomically into the directory ``path``."""
        if self.click_booster_ is None or self.purchase_booster_ is None:
            raise NotFittedError("PurchaseModel is not fitted: nothing to save")
        with atomic_dir(path, "purchase-model") as tmp:
            (tmp / CLICK_FILE).write_text(self.click_booster_.model_to_string(num_iteration=_best(self.click_booster_)))
            (tmp / PURCHASE_FILE).write_text(
                self.purchase_booster_.model_to_string(num_iteration=_best(self.purchase_booster_)))
            (tmp / PURCHASE_SCHEMA_FILE).write_text(json.dumps(self.schema(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PurchaseModel:
        """Read a directory written by :meth:`save`.

        Raises :class:`ModelIntegrityError` naming the file when one is missing, of another
        format, or a stage's features differ from the schema's.
        """
        import lightgbm as lgb

        root = Path(path)
        for name in (CLICK_FILE, PURCHASE_FILE, PURCHASE_SCHEMA_FILE):
            if not (root / name).is_file():
                raise ModelIntegrityError(str(root / name), "missing")
        try:
            schema = json.loads((root / PURCHASE_SCHEMA_FILE).read_text())
        except json.JSONDecodeError as error:
            raise ModelIntegrityError(str(root / PURCHASE_SCHEMA_FILE), f"not JSON: {error}") from None
        if not isinstance(schema, Mapping) or schema.get("kind") != _KIND or schema.get("format_version") != _FORMAT_VERSION:
            found = (schema.get("kind"), schema.get("format_version")) if isinstance(schema, Mapping) else type(schema).__name__
            raise ModelIntegrityError(str(root / PURCHASE_SCHEMA_FILE), f"expected {_KIND} format {_FORMAT_VERSION}, got {found!r}")
        names = tuple(str(n) for n in schema["feature_names"])
        boosters = []
        for name in (CLICK_FILE, PURCHASE_FILE):
            try:
                booster = lgb.Booster(model_str=(root / name).read_text())
            except lgb.basic.LightGBMError as error:
                raise ModelIntegrityError(str(root / name), f"not a LightGBM model: {error}") from None
            if tuple(booster.feature_name()) != names:
                raise ModelIntegrityError(str(root / name), f"model features {booster.feature_name()} differ from "
                                                            f"{PURCHASE_SCHEMA_FILE} {list(names)}")
            boosters.append(booster)
        # settings a model saved before session 9 lacks had these values then
        legacy = {"click_offset": False, "purchase_learning_rate": 0.0}
        model = cls(PurchaseModelConfig.from_dict({**legacy, **schema["config"]}))
        model.click_booster_, model.purchase_booster_ = boosters
        model.feature_names_ = names
        model.categorical_ = tuple(str(c) for c in schema.get("categorical", ()))
        model.monotone_ = tuple(int(d) for d in schema.get("monotone", (0,) * len(names)))
        model.position_coef_ = float(schema["position_coef"])
        # models saved before the purchase stage could start from the click stage's score: none
        intercept, h = (float(v) for v in schema.get("click_offset_coef", (0.0, 0.0)))
        model.click_offset_coef_ = (intercept, h)
        model.fit_info_ = dict(schema.get("fit_info", {}))
        return model

    @staticmethod
    def _trees(booster: Any) -> int:
        return 0 if booster is None else _best(booster)


def _best(booster: Any) -> int:
    """Trees used: the early-stopping best iteration, else all."""
    best = int(getattr(booster, "best_iteration", 0) or 0)
    return best if best > 0 else int(booster.current_iteration())


def in_request_sample(request_ids: Any, share: float, seed: int) -> np.ndarray:
    """Which rows belong to the sample of whole requests (a flag per row).

    Each request is drawn with chance ``share``, decided by a seeded hash of its
    ``request_id``, so a request's rows are drawn together and the sample is the same however
    the rows are partitioned or ordered, on any worker and in any run.

    >>> ids = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)
    >>> flags = in_request_sample(ids, 0.5, seed=3)
    >>> bool((flags[:2] == flags[0]).all() and (flags[3:] == flags[3]).all())
    True
    >>> bool(in_request_sample(ids, 1.0, seed=3).all()), bool(in_request_sample(ids, 0.0, seed=3).any())
    (True, False)
    """
    ids = np.asarray(request_ids, dtype=object).astype(str).astype(object)
    if share >= 1.0:
        return np.ones(len(ids), dtype=bool)
    hashed = pd.util.hash_array(ids, hash_key=f"{seed % 2**64:016x}")
    return np.asarray((hashed >> np.uint64(11)).astype(np.float64) / 2.0**53 < share, dtype=bool)


def _click_sample(n: int, cap: int, groups: ArrayLike | None, seed: int,
                  request_ids: ArrayLike | None = None) -> np.ndarray | None:
    """Sorted row indices of a uniform sample of at most about ``cap`` rows (whole requests when
    ``request_ids`` or ``groups`` is given), or ``None`` when every row is kept.

    With ``request_ids`` each request is drawn by :func:`in_request_sample` (the Dask
    backend's draw); with ``groups`` only (request sizes) by a seeded generator."""
    if cap <= 0 or n <= cap:
        return None
    if request_ids is not None:
        ids = np.asarray(request_ids, dtype=object)
        if ids.shape != (n,):
            raise SchemaError("training data", "request_ids", f"one request id per row ({n})", f"shape {ids.shape}")
        return np.flatnonzero(in_request_sample(ids, cap / n, seed))
    rng = np.random.default_rng(seed)
    if groups is None:
        return np.sort(rng.choice(n, size=cap, replace=False))
    sizes = np.asarray(groups, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != n:
        raise SchemaError("training data", "groups", f"request sizes summing to {n}", f"{int(sizes.sum())} rows")
    keep = rng.random(sizes.size) < cap / n  # each request with the same chance: about cap rows
    return np.flatnonzero(np.repeat(keep, sizes))


def _stage_inputs(
    X: np.ndarray, purchased: ArrayLike, clicked: ArrayLike, position: ArrayLike, names: tuple[str, ...], what: str,
    purchases: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked stage inputs; ``purchases=False``: rows that feed the click stage only."""
    matrix = np.asarray(X, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise SchemaError(what, None, f"a matrix of {len(names)} feature columns", f"shape {matrix.shape}")
    n = matrix.shape[0]
    buy = np.asarray(purchased, dtype=bool)
    click = np.asarray(clicked, dtype=bool) | buy
    pos = np.asarray(position, dtype=np.float64)
    for name, values in (("purchased", buy), ("clicked", click), ("position", pos)):
        if values.shape != (n,):
            raise SchemaError(what, name, f"{n} values", f"shape {values.shape}")
    if not (np.isfinite(pos).all() and (pos >= 1).all()):
        raise SchemaError(what, "position", "1-based positions", "a value below 1 or not finite")
    checks = [("clicked", click)] + ([("purchased among the clicked rows", buy[click])] if purchases else [])
    for name, values in checks:
        if values.size == 0 or values.all() or not values.any():
            raise SchemaError(what, name, "both outcomes", f"{int(values.sum())} of {values.size}")
    return matrix, buy.astype(np.float64), click.astype(np.float64), np.log(pos)
