"""ranker.lambdamart: config, schema checks, persistence, monotonicity, parity with LightGBM."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, ModelIntegrityError, NotFittedError, SchemaError
from trustfeed.features.io import OUTPUT_MARKER
from trustfeed.ranker import lambdamart as lambdamart_module
from trustfeed.ranker.lambdamart import LambdaMART, LambdaMARTConfig

LGBM_RANK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lgbm_rank"


def synthetic_queries(rng: np.random.Generator, n_queries: int = 60, size: int = 15):
    """Queries where relevance rises with feature 0, falls with 1, and 2 is a category."""
    n = n_queries * size
    X = rng.normal(size=(n, 4))
    X[:, 2] = rng.integers(0, 4, n)
    utility = 1.5 * X[:, 0] - X[:, 1] + 0.5 * (X[:, 2] == 1) + rng.normal(0, 0.5, n)
    y = np.digitize(utility, [0.5, 1.5, 2.5, 3.5])
    return X, y, np.full(n_queries, size)


def small_config(**overrides) -> LambdaMARTConfig:
    values = dict(num_rounds=40, min_data_in_leaf=5, early_stopping_rounds=0, learning_rate=0.2, position_bias=False)
    values.update(overrides)
    return LambdaMARTConfig(**values)


def test_doctests():
    result = doctest.testmod(lambdamart_module)
    assert result.attempted > 0 and result.failed == 0


def test_config_validation_and_round_trip():
    config = LambdaMARTConfig(objective="rank_xendcg", position_bias=False, eval_at=(5, 10), extra_params={"max_depth": 6})
    assert LambdaMARTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.lgb_params()["max_depth"] == 6
    assert LambdaMARTConfig().gains == (0.0, 1.0, 3.0, 7.0, 15.0)
    for bad in (
        {"objective": "regression"},
        {"learning_rate": 0},
        {"num_leaves": 1},
        {"objective": "rank_xendcg", "position_bias": True},
        {"eval_at": ()},
        {"label_gain": (0.0, 1.0)},
        {"extra_params": {"objective": "binary"}},
        {"feature_fraction": 1.5},
    ):
        with pytest.raises(ConfigError):
            LambdaMARTConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        LambdaMARTConfig.from_dict({"leaves": 3})


def test_unfitted_model_raises(tmp_path):
    model = LambdaMART()
    with pytest.raises(NotFittedError):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "m")
    with pytest.raises(NotFittedError):
        model.feature_importance()


def test_fit_learns_and_tracks_validation(rng):
    X, y, group = synthetic_queries(rng)
    Xv, yv, gv = synthetic_queries(rng, n_queries=20)
    model = LambdaMART(small_config(num_rounds=200, early_stopping_rounds=10, min_rounds=20)).fit(
        X, y, group, X_valid=Xv, y_valid=yv, group_valid=gv, feature_names=["a", "b", "cat", "noise"], categorical=["cat"]
    )
    curve = model.validation_ndcg
    assert 20 <= model.best_iteration_ <= len(curve) <= 200
    # the best round is the best after the warm-up, and training stopped 10 rounds later
    assert max(curve[19:]) == curve[model.best_iteration_ - 1]
    assert len(curve) == 200 or 9 <= len(curve) - model.best_iteration_ <= 10
    assert model.booster_.num_trees() >= model.best_iteration_
    scores = model.predict(Xv)
    assert np.corrcoef(scores, 1.5 * Xv[:, 0] - Xv[:, 1])[0, 1] > 0.8
    importance = model.feature_importance()
    assert set(importance.index[:2]) == {"a", "b"} and set(importance.index) == {"a", "b", "cat", "noise"}


def test_bad_inputs_are_schema_errors(rng):
    X, y, group = synthetic_queries(rng, n_queries=10)
    model = LambdaMART(small_config())
    with pytest.raises(SchemaError, match="group"):
        model.fit(X, y, [5] * 3)
    with pytest.raises(SchemaError, match="label"):
        model.fit(X, y + 10, group)
    with pytest.raises(SchemaError, match="monotone"):
        model.fit(X, y, group, monotone=[1, 0])
    model.fit(X, y, group, feature_names=["a", "b", "c", "d"])
    with pytest.raises(SchemaError, match="4 columns"):
        model.predict(X[:, :3])
    frame = pd.DataFrame(X, columns=["b", "a", "c", "d"])
    with pytest.raises(SchemaError):
        model.predict(frame)  # right count, wrong order
    np.testing.assert_array_equal(model.predict(frame[["a", "b", "c", "d"]].rename(columns=str)), model.predict(X[:, [1, 0, 2, 3]]))
    assert model.predict(np.zeros((0, 4))).shape == (0,)


def test_save_load_identical_predictions_and_integrity(tmp_path, rng):
    X, y, group = synthetic_queries(rng)
    model = LambdaMART(small_config()).fit(
        X, y, group, feature_names=["a", "b", "cat", "noise"], categorical=["cat"], monotone=[1, -1, 0, 0], feature_schema={"kind": "x"}
    )
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [OUTPUT_MARKER, "model.txt", "schema.json"]
    loaded = LambdaMART.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.feature_names_ == model.feature_names_ and loaded.monotone_ == (1, -1, 0, 0)
    assert loaded.categorical_ == ("cat",) and loaded.feature_schema_ == {"kind": "x"}
    assert loaded.config == model.config

    schema_path = tmp_path / "model" / "schema.json"
    schema = json.loads(schema_path.read_text())
    schema["feature_names"] = ["b", "a", "cat", "noise"]
    schema_path.write_text(json.dumps(schema))
    with pytest.raises(ModelIntegrityError, match="model.txt"):
        LambdaMART.load(tmp_path / "model")
    (tmp_path / "model" / "model.txt").unlink()
    with pytest.raises(ModelIntegrityError, match="model.txt"):
        LambdaMART.load(tmp_path / "model")


@pytest.fixture(scope="module")
def monotone_model():
    """Trust (feature 0) helps only up to 0.5 and then hurts in the data; the constraint wins."""
    rng = np.random.default_rng(5)
    n_queries, size = 80, 12
    X = rng.random((n_queries * size, 3))
    utility = -np.abs(X[:, 0] - 0.5) * 4 + X[:, 1] * 2 + rng.normal(0, 0.3, len(X))
    y = np.digitize(utility, [-0.5, 0.5, 1.2, 1.8])
    model = LambdaMART(small_config(num_rounds=60)).fit(
        X, y, np.full(n_queries, size), feature_names=["trust", "relevance", "other"], monotone=[1, 0, 0]
    )
    return model


@settings(max_examples=50, deadline=None)
@given(
    row=st.lists(st.floats(-0.5, 1.5, allow_nan=False), min_size=3, max_size=3),
    raise_by=st.floats(0.0, 2.0, allow_nan=False),
)
def test_raising_trust_never_lowers_the_score(monotone_model, row, raise_by):
    before = np.array([row])
    after = before.copy()
    after[0, 0] += raise_by
    assert monotone_model.predict(after)[0] >= monotone_model.predict(before)[0]


def test_position_is_passed_to_lightgbm(rng):
    """With positions, LightGBM learns position factors: the model changes, and without them it does not."""
    X, y, group = synthetic_queries(rng)
    position = np.tile(np.arange(1, 16), len(group))
    plain = LambdaMART(small_config(position_bias=False)).fit(X, y, group, position=position).predict(X)
    ignored = LambdaMART(small_config(position_bias=False)).fit(X, y, group).predict(X)
    unbiased = LambdaMART(small_config(position_bias=True)).fit(X, y, group, position=position).predict(X)
    np.testing.assert_array_equal(plain, ignored)
    assert not np.array_equal(plain, unbiased)
    with pytest.raises(SchemaError, match="position"):
        LambdaMART(small_config(position_bias=True)).fit(X, y, group, position=position[:10])


def _read_libsvm(path: Path, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense matrix, labels and query sizes of a LightGBM LibSVM ranking file (+ .query)."""
    text = path.read_text().split()
    tokens = np.array(text, dtype=object)
    is_label = np.array([":" not in t for t in text])
    row = np.cumsum(is_label) - 1
    labels = tokens[is_label].astype(np.float64)
    pairs = np.array([t.split(":") for t in tokens[~is_label]], dtype=object)
    X = np.zeros((len(labels), n_features))
    X[row[~is_label], pairs[:, 0].astype(np.int64)] = pairs[:, 1].astype(np.float64)
    groups = np.loadtxt(f"{path}.query", dtype=np.int64)
    return X, labels, groups


def _train_conf(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            entries[key] = value
    return entries


@pytest.mark.realdata
def test_parity_with_plain_lightgbm_on_upstream_rank_example():
    if not LGBM_RANK.is_dir():
        pytest.fail(f"{LGBM_RANK} is missing: the parity test needs ../shared/data/lgbm_rank")
    conf = _train_conf(LGBM_RANK / "train.conf")
    eval_at = tuple(int(k) for k in conf["ndcg_eval_at"].split(","))
    upstream = {
        "objective": conf["objective"],
        "metric": conf["metric"],
        "ndcg_eval_at": list(eval_at),
        "max_bin": int(conf["max_bin"]),
        "learning_rate": float(conf["learning_rate"]),
        "num_leaves": int(conf["num_leaves"]),
        "feature_fraction": float(conf["feature_fraction"]),
        "bagging_freq": int(conf["bagging_freq"]),
        "bagging_fraction": float(conf["bagging_fraction"]),
        "min_data_in_leaf": int(conf["min_data_in_leaf"]),
        "min_sum_hessian_in_leaf": float(conf["min_sum_hessian_in_leaf"]),
        "num_threads": 1,
        "deterministic": True,
        "seed": 0,
        "verbosity": -1,
    }
    rounds = int(conf["num_trees"])
    # plain LightGBM straight from the upstream files
    train_file = lgb.Dataset(str(LGBM_RANK / conf["data"]))
    valid_file = lgb.Dataset(str(LGBM_RANK / conf["valid_data"]), reference=train_file)
    plain_evals: dict = {}
    plain = lgb.train(
        upstream, train_file, rounds, valid_sets=[valid_file], valid_names=["valid"],
        callbacks=[lgb.record_evaluation(plain_evals)],
    )

    n_features = plain.num_feature()
    X, y, group = _read_libsvm(LGBM_RANK / conf["data"], n_features)
    Xv, yv, gv = _read_libsvm(LGBM_RANK / conf["valid_data"], n_features)
    config = LambdaMARTConfig(
        objective=upstream["objective"],
        learning_rate=upstream["learning_rate"],
        num_leaves=upstream["num_leaves"],
        min_data_in_leaf=upstream["min_data_in_leaf"],
        min_sum_hessian_in_leaf=upstream["min_sum_hessian_in_leaf"],
        feature_fraction=upstream["feature_fraction"],
        bagging_fraction=upstream["bagging_fraction"],
        bagging_freq=upstream["bagging_freq"],
        max_bin=upstream["max_bin"],
        num_rounds=rounds,
        early_stopping_rounds=0,
        eval_at=eval_at,
        lambdarank_truncation_level=30,  # LightGBM's default, which train.conf leaves unset
        max_label=int(max(y.max(), yv.max())),
        position_bias=False,
        skip_requests_without_positives=False,  # LightGBM keeps every query
    )
    model = LambdaMART(config).fit(X, y, group, X_valid=Xv, y_valid=yv, group_valid=gv)
    for k in eval_at:
        assert model.evals_result_["valid"][f"ndcg@{k}"] == plain_evals["valid"][f"ndcg@{k}"]
    np.testing.assert_array_equal(model.predict(Xv), plain.predict(Xv))
    assert plain_evals["valid"][f"ndcg@{eval_at[-1]}"][-1] > 0.6  # it is a real model, not a constant


def test_requests_without_positives_change_nothing_but_the_cost(rng):
    """Unlabelled requests add no LambdaRank gradient: the model and its validation curve are
    those of the informative requests alone, and the curve skips unlabelled lists (the
    project's NDCG) instead of scoring them 1 as LightGBM does."""
    X, y, group = synthetic_queries(rng, n_queries=40, size=10)
    Xv, yv, gv = synthetic_queries(rng, n_queries=20, size=10)
    position = np.tile(np.arange(1, 11), 40)

    def with_unlabelled(X, y, group, n, extra=None):
        # interleave n all-zero requests of random features between the labelled ones
        blocks, labels, sizes, extras = [], [], [], []
        for q, start in enumerate(np.r_[0, np.cumsum(group)[:-1]]):
            blocks.append(X[start:start + group[q]]); labels.append(y[start:start + group[q]]); sizes.append(group[q])
            extras.append(extra[start:start + group[q]] if extra is not None else None)
            if q < n:
                blocks.append(rng.normal(size=(7, X.shape[1]))); labels.append(np.zeros(7, dtype=int)); sizes.append(7)
                extras.append(np.arange(1, 8))
        return (np.vstack(blocks), np.concatenate(labels), np.array(sizes),
                np.concatenate(extras) if extra is not None else None)

    assert (np.maximum.reduceat(y, np.r_[0, np.cumsum(group)[:-1]]) > 0).all()
    config = small_config(num_rounds=15, position_bias=True, min_data_in_leaf=20)
    clean = LambdaMART(config).fit(X, y, group, position=position, X_valid=Xv, y_valid=yv, group_valid=gv)
    Xn, yn, gn, pn = with_unlabelled(X, y, group, 25, position)
    Xvn, yvn, gvn, _ = with_unlabelled(Xv, yv, gv, 10)
    noisy = LambdaMART(config).fit(Xn, yn, gn, position=pn, X_valid=Xvn, y_valid=yvn, group_valid=gvn)
    np.testing.assert_array_equal(noisy.predict(Xn), clean.predict(Xn))
    assert noisy.validation_ndcg == clean.validation_ndcg
    # kept, the unlabelled rows count towards min_data_in_leaf and LightGBM scores their lists 1
    kept = LambdaMART(small_config(num_rounds=15, position_bias=True, min_data_in_leaf=20,
                                   skip_requests_without_positives=False)).fit(
        Xn, yn, gn, position=pn, X_valid=Xvn, y_valid=yvn, group_valid=gvn)
    assert kept.validation_ndcg != clean.validation_ndcg


def test_all_unlabelled_training_data_keeps_every_request(rng):
    X, _, group = synthetic_queries(rng, n_queries=10, size=10)
    model = LambdaMART(small_config(num_rounds=3)).fit(X, np.zeros(len(X), dtype=int), group)
    assert model.predict(X[:10]).shape == (10,)


def test_nan_features_score_without_error(rng):
    X, y, group = synthetic_queries(rng, n_queries=20)
    X[::7, 1] = np.nan  # LightGBM's missing value, learned as such
    model = LambdaMART(small_config()).fit(X, y, group)
    scores = model.predict(np.full((3, 4), np.nan))
    assert np.isfinite(scores).all() and scores.shape == (3,)
