"""The purchase model: fit, monotone in trust, saved and verified in the bundle, served by the policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfeed.features.errors import ConfigError, ModelIntegrityError, SchemaError
from trustfeed.ranker.policy import Policy, PolicyConfig, PolicyState
from trustfeed.ranker.purchase import CLICK_FILE, PURCHASE_SCHEMA_FILE, PurchaseModel, PurchaseModelConfig

_SMALL = PurchaseModelConfig(min_data_in_leaf=40, min_data_in_leaf_purchase=20, num_rounds=60, early_stopping_rounds=10)


def _logged(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Impressions whose click rate rises with feature 0 and falls with the position, and whose
    purchase-given-click rate rises with feature 1 (``k`` features)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    position = rng.integers(1, 11, n)
    clicked = rng.random(n) < 1 / (1 + np.exp(-(-1.0 + X[:, 0] - 0.8 * np.log(position))))
    bought = clicked & (rng.random(n) < 1 / (1 + np.exp(-(-1.0 + 1.5 * X[:, 1]))))
    return X, clicked, bought, position


def _fit(names: list[str], monotone: list[int] | None = None, seed: int = 0, n: int = 4000) -> PurchaseModel:
    X, clicked, bought, position = _logged(n, len(names), seed)
    half = n // 2
    return PurchaseModel(_SMALL).fit(X[:half], clicked[:half], bought[:half], position[:half], X[half:], clicked[half:],
                                     bought[half:], position[half:], feature_names=names, monotone=monotone)


@pytest.fixture(scope="module")
def model() -> PurchaseModel:
    return _fit(["a", "b", "c"], monotone=[0, 1, 0])


def test_the_score_orders_candidates_by_their_true_purchase_probability(model: PurchaseModel) -> None:
    X, _, _, _ = _logged(3000, 3, seed=9)
    truth = np.log(1 / (1 + np.exp(-(-1.0 + X[:, 0])))) + np.log(1 / (1 + np.exp(-(-1.0 + 1.5 * X[:, 1]))))
    fit = np.corrcoef(model.predict(X), truth)[0, 1]
    # both stages count: the score follows the truth better than either stage's feature alone
    assert fit > 0.8
    assert fit > max(np.corrcoef(X[:, j], truth)[0, 1] for j in (0, 1)) + 0.05
    # the log's position bias is taken out, not learned as a property of the candidates
    assert -1.1 < model.position_coef_ < -0.5
    assert model.fit_info_["click_trees"] >= 1 and model.fit_info_["purchase_trees"] >= 1


@settings(max_examples=25, deadline=None)
@given(row=st.lists(st.floats(-3, 3), min_size=3, max_size=3), steps=st.lists(st.floats(0, 2), min_size=1, max_size=4))
def test_a_monotone_feature_never_lowers_the_purchase_score_as_it_rises(model: PurchaseModel, row: list[float],
                                                                       steps: list[float]) -> None:
    rows = np.tile(np.asarray(row), (len(steps) + 1, 1))
    rows[1:, 1] += np.cumsum(steps)
    score = model.predict(rows)
    assert (np.diff(score) >= -1e-12).all()


def test_save_and_load_give_the_same_scores_and_a_changed_file_is_refused(model: PurchaseModel, tmp_path: Path) -> None:
    model.save(tmp_path / "pm")
    loaded = PurchaseModel.load(tmp_path / "pm")
    X, _, _, _ = _logged(200, 3, seed=3)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.position_coef_ == model.position_coef_ and loaded.monotone_ == (0, 1, 0)
    schema = json.loads((tmp_path / "pm" / PURCHASE_SCHEMA_FILE).read_text())
    (tmp_path / "pm" / PURCHASE_SCHEMA_FILE).write_text(json.dumps({**schema, "feature_names": ["a", "b", "x"]}))
    with pytest.raises(ModelIntegrityError, match=CLICK_FILE):
        PurchaseModel.load(tmp_path / "pm")
    (tmp_path / "pm" / CLICK_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        PurchaseModel.load(tmp_path / "pm")


def test_bad_training_data_is_a_one_line_error() -> None:
    X, clicked, bought, position = _logged(400, 2, seed=1)
    with pytest.raises(SchemaError, match="purchased among the clicked rows"):
        PurchaseModel(_SMALL).fit(X, clicked, np.zeros(400, bool), position, X, clicked, bought, position,
                                  feature_names=["a", "b"])
    with pytest.raises(SchemaError, match="position"):
        PurchaseModel(_SMALL).fit(X, clicked, bought, position - 1, X, clicked, bought, position, feature_names=["a", "b"])
    with pytest.raises(SchemaError, match="2 feature columns"):
        PurchaseModel(_SMALL).fit(X, clicked, bought, position, X[:, :1], clicked, bought, position, feature_names=["a", "b"])


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 8), min_size=1, max_size=60), cap=st.integers(1, 200), seed=st.integers(0, 5))
def test_the_click_sample_keeps_whole_requests(sizes: list[int], cap: int, seed: int) -> None:
    from trustfeed.ranker.purchase import _click_sample

    n = sum(sizes)
    rows = _click_sample(n, cap, sizes, seed)
    if n <= cap:
        assert rows is None
        return
    assert rows is not None
    request = np.repeat(np.arange(len(sizes)), sizes)
    kept = np.zeros(len(sizes), bool)
    kept[request[rows]] = True
    assert np.array_equal(rows, np.flatnonzero(kept[request]))  # every row of a sampled request, in order
    assert np.array_equal(rows, _click_sample(n, cap, sizes, seed))  # the same seed, the same sample


def test_a_capped_click_stage_fits_on_a_request_sample_and_keeps_the_position_bias() -> None:
    n = 8000
    X, clicked, bought, position = _logged(n, 2, seed=3)
    half = n // 2
    sizes = np.full(half // 8, 8)
    config = PurchaseModelConfig.from_dict({**_SMALL.to_dict(), "max_click_rows": 2000})
    model = PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], X[half:], clicked[half:],
                                      bought[half:], position[half:], feature_names=["a", "b"], groups=sizes)
    assert model.fit_info_["train_rows"] == half
    assert 1500 < model.fit_info_["click_rows"] < 2500 and model.fit_info_["click_rows"] % 8 == 0
    assert abs(model.position_coef_ - (-0.8)) < 0.25
    with pytest.raises(SchemaError, match="groups"):
        PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], X[half:], clicked[half:],
                                  bought[half:], position[half:], feature_names=["a", "b"], groups=sizes[1:])


def test_fitting_on_rows_drawn_elsewhere_gives_the_model_fit_learns_from_them() -> None:
    # the Dask backend draws the click sample and the clicked rows on its workers: handed the
    # rows fit() would pick, fit_sampled() learns the same model
    n = 8000
    X, clicked, bought, position = _logged(n, 2, seed=4)
    half = n // 2
    sizes = np.full(half // 8, 8)
    config = PurchaseModelConfig.from_dict({**_SMALL.to_dict(), "max_click_rows": 2000})
    valid = (X[half:], clicked[half:], bought[half:], position[half:])
    whole = PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], *valid,
                                      feature_names=["a", "b"], groups=sizes)
    from trustfeed.ranker.purchase import _click_sample

    rows = _click_sample(half, config.max_click_rows, sizes, config.seed)
    assert rows is not None
    seen = np.flatnonzero(clicked[:half] | bought[:half])
    drawn = PurchaseModel(config).fit_sampled(
        (X[rows], clicked[rows] | bought[rows], position[rows]), (X[seen], bought[seen]), valid, train_rows=half,
        feature_names=["a", "b"])
    assert np.array_equal(drawn.predict(X[half:]), whole.predict(X[half:]))
    assert drawn.fit_info_ == whole.fit_info_
    with pytest.raises(SchemaError, match="clicked rows"):
        PurchaseModel(config).fit_sampled((X[rows], clicked[rows], position[rows]), (X[seen], np.zeros(seen.size, bool)),
                                          valid, train_rows=half, feature_names=["a", "b"])
    with pytest.raises(SchemaError, match="clicked rows"):
        PurchaseModel(config).fit_sampled((X[rows], clicked[rows], position[rows]), (X[seen, :1], bought[seen]),
                                          valid, train_rows=half, feature_names=["a", "b"])


def test_request_ids_draw_the_click_sample_by_the_request_hash() -> None:
    # the pandas path draws what the Dask workers draw (in_request_sample at share cap / rows)
    from trustfeed.ranker.purchase import _click_sample, in_request_sample

    n = 8000
    X, clicked, bought, position = _logged(n, 2, seed=5)
    half = n // 2
    ids = np.repeat(np.array([f"q{i}" for i in range(half // 8)], dtype=object), 8)
    config = PurchaseModelConfig.from_dict({**_SMALL.to_dict(), "max_click_rows": 2000})
    valid = (X[half:], clicked[half:], bought[half:], position[half:])
    whole = PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], *valid,
                                      feature_names=["a", "b"], groups=np.full(half // 8, 8), request_ids=ids)
    drawn = in_request_sample(ids, config.max_click_rows / half, config.seed)
    assert 0 < drawn.sum() < half and whole.fit_info_["click_rows"] == int(drawn.sum())
    seen = np.flatnonzero(clicked[:half] | bought[:half])
    sampled = PurchaseModel(config).fit_sampled(
        (X[:half][drawn], (clicked | bought)[:half][drawn], position[:half][drawn]), (X[seen], bought[seen]), valid,
        train_rows=half, feature_names=["a", "b"])
    assert np.array_equal(sampled.predict(X[half:]), whole.predict(X[half:]))
    # the same requests whatever order the rows come in
    order = np.random.default_rng(1).permutation(half)
    rows = _click_sample(half, config.max_click_rows, None, config.seed, ids[order])
    assert rows is not None and set(ids[order][rows]) == set(ids[drawn])
    with pytest.raises(SchemaError, match="request_ids"):
        _click_sample(half, config.max_click_rows, None, config.seed, ids[1:])



def test_later_position_passes_reuse_the_binned_data_and_fit_what_fresh_data_would() -> None:
    """The click stage's data are binned once; each pass only changes the position offset. The
    trees must be those of a stage fitted from scratch with that pass's offset (and, before the
    last pass, the first passes' learning rate)."""
    import lightgbm as lgb

    from trustfeed.ranker._expected_value import logistic_regression

    n = 4000
    X, clicked, bought, position = _logged(n, 2, seed=5)
    half = n // 2
    config = PurchaseModelConfig.from_dict({**_SMALL.to_dict(), "position_passes": 3})
    model = PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], X[half:], clicked[half:],
                                      bought[half:], position[half:], feature_names=["a", "b"])
    click, click_v = clicked[:half].astype(float), clicked[half:].astype(float)
    log_position, log_position_v = np.log(position[:half]), np.log(position[half:])
    design = np.column_stack([np.ones(half), log_position])
    g = float(logistic_regression(design, click)[1])
    booster = None
    assert 0 < config.first_pass_learning_rate != config.learning_rate
    for done in range(config.position_passes):  # every pass from freshly binned data
        train_set = lgb.Dataset(X[:half], label=click, init_score=g * log_position, feature_name=["a", "b"])
        valid_set = lgb.Dataset(X[half:], label=click_v, init_score=g * log_position_v, reference=train_set)
        params = config.lgb_params(config.min_data_in_leaf)
        if done < config.position_passes - 1:
            params["learning_rate"] = config.first_pass_learning_rate
        booster = lgb.train(params, train_set, num_boost_round=config.num_rounds,
                            valid_sets=[valid_set], callbacks=[lgb.early_stopping(config.early_stopping_rounds,
                                                                                  first_metric_only=True, verbose=False)])
        trees = booster.predict(X[:half], raw_score=True, num_iteration=booster.best_iteration)
        g = float(logistic_regression(design, click, offset=trees)[1])
    assert booster is not None and model.position_coef_ == g
    np.testing.assert_array_equal(model.click_booster_.predict(X[half:], raw_score=True),
                                  booster.predict(X[half:], raw_score=True, num_iteration=booster.best_iteration))


def test_the_first_passes_learning_rate_leaves_the_kept_trees_alone_with_one_pass() -> None:
    """With a single pass that pass is the last: its trees (the kept ones) are grown at
    ``learning_rate`` whatever ``first_pass_learning_rate`` says; with two passes it moves
    only the position coefficient the last pass starts from."""
    n = 4000
    X, clicked, bought, position = _logged(n, 2, seed=7)
    half = n // 2

    def fitted(**overrides: object) -> PurchaseModel:
        config = PurchaseModelConfig.from_dict({**_SMALL.to_dict(), **overrides})
        return PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], X[half:],
                                         clicked[half:], bought[half:], position[half:], feature_names=["a", "b"])

    one = fitted(position_passes=1, first_pass_learning_rate=0.0)
    one_coarse = fitted(position_passes=1, first_pass_learning_rate=0.5)
    assert np.array_equal(one.predict(X[half:]), one_coarse.predict(X[half:]))
    two, two_coarse = fitted(first_pass_learning_rate=0.0), fitted(first_pass_learning_rate=0.5)
    assert two.position_coef_ != two_coarse.position_coef_
    assert abs(two.position_coef_ - two_coarse.position_coef_) < 0.1  # both estimate the same bias


# ----------------------------------------------------------------------------- in the pipeline and the bundle


@pytest.fixture(scope="module")
def served(fx: Any) -> tuple[Any, Any]:
    """A pipeline whose policy ranks on a purchase model over the fixture's features."""
    from trustfeed.features.context import FeatureAssembler
    from trustfeed.ranker.pipeline import RankingPipeline

    parts = fx.trained_parts()
    assembler = FeatureAssembler(parts.snapshot, parts.context, schema=parts.feature_schema)
    names = list(assembler.feature_names)
    purchase = _fit(names, monotone=list(assembler.monotone), n=3000)
    state = PolicyState((1.0, 0.5), (-1.0, -1.0), 0.5, relevance_source="purchase_model")
    pipeline = RankingPipeline(assembler, parts.model, Policy(PolicyConfig(), state), None, snapshot=parts.snapshot,
                               context=parts.context, purchase_model=purchase)
    return parts, pipeline


def test_the_policy_ranks_on_the_purchase_model_and_the_bundle_keeps_it(served: tuple[Any, Any], tmp_path: Path) -> None:
    from trustfeed.ranker.bundle import load_bundle, save_bundle, verify_bundle

    parts, pipeline = served
    requests = parts.requests[:20]
    responses = pipeline.rank_many(requests, record=False, log_features=True)
    item = responses[0]["items"][0]
    X = np.array([[np.nan if v is None else v for v in item["features"].values()]])
    assert item["relevance"] == pytest.approx(float(pipeline.purchase_model.predict(X)[0]))
    save_bundle(pipeline, tmp_path / "bundle")
    assert {f"purchase_model/{name}" for name in (CLICK_FILE, PURCHASE_SCHEMA_FILE)} <= set(
        verify_bundle(tmp_path / "bundle")["files"])
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.policy == pipeline.policy and loaded.purchase_model is not None
    assert [{**r, "model": None} for r in loaded.rank_many(requests, record=False, log_features=True)] == responses
    # a reloaded snapshot keeps the purchase model (the closed loop and serving swap snapshots)
    fresh = type(loaded).from_tables(loaded.snapshot, loaded.context, loaded.model, loaded.policy, None,
                                     schema=loaded.assembler.schema(), purchase_model=loaded.purchase_model)
    assert [{**r, "model": None} for r in fresh.rank_many(requests, record=False, log_features=True)] == responses
    # the purchase model's files are checksummed like every other part of the bundle
    copy = tmp_path / "tampered"
    shutil.copytree(tmp_path / "bundle", copy)
    path = copy / "purchase_model" / CLICK_FILE
    path.write_text(path.read_text().replace("tree_sizes", "tree_sizes ", 1))
    with pytest.raises(ModelIntegrityError, match="purchase_model"):
        load_bundle(copy)


def test_a_policy_calibrated_on_another_score_is_refused(served: tuple[Any, Any]) -> None:
    from trustfeed.ranker.pipeline import RankingPipeline

    parts, pipeline = served
    with pytest.raises(ConfigError, match="purchase model score, but this pipeline has no purchase model"):
        RankingPipeline(pipeline.assembler, parts.model, pipeline.policy, None)
    ranker_state = PolicyState((1.0, 0.5), (-1.0, -1.0))
    with pytest.raises(ConfigError, match="ranker score, but this pipeline has a purchase model"):
        RankingPipeline(pipeline.assembler, parts.model, Policy(PolicyConfig(), ranker_state), None,
                        purchase_model=pipeline.purchase_model)


@settings(max_examples=20, deadline=None)
@given(steps=st.lists(st.floats(0.0, 0.3), min_size=1, max_size=4), start=st.floats(0.01, 0.95))
def test_the_served_score_never_falls_as_a_merchant_trust_signal_rises(served: tuple[Any, Any], steps: list[float],
                                                                       start: float) -> None:
    """End to end: purchase model (monotone in the trust signals) x the policy's value factor.

    Over the whole trust range, including merchants whose sales are a net loss (value factor
    below 0, scored by the factor alone: times the purchase estimate, a trust rise that lifts
    the estimate would lower the score).
    """
    _, pipeline = served
    names = list(pipeline.feature_names)
    trust_columns = [i for i, d in enumerate(pipeline.purchase_model.monotone_) if d == 1]
    assert "merchant_trust_percentile" in [names[i] for i in trust_columns]
    levels = np.minimum(start + np.r_[0.0, np.cumsum(steps)], 0.999)
    rows = np.zeros((levels.size, len(names)))
    rows[:, trust_columns] = levels[:, None]
    relevance = pipeline.purchase_model.predict(rows)
    score = pipeline.policy.score(relevance, levels)
    assert (np.diff(score) >= -1e-12).all()


# ----------------------------------------------------------------------------- the purchase stage's start


def _shared(n: int, seed: int, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Impressions whose click and purchase-given-click rates both rise with feature 0 (the
    viewer's interest; ``sign`` -1: the purchase rate falls with it), the purchase rate also
    with feature 1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    position = rng.integers(1, 11, n)
    clicked = rng.random(n) < 1 / (1 + np.exp(-(-0.5 + 1.2 * X[:, 0] - 0.7 * np.log(position))))
    bought = clicked & (rng.random(n) < 1 / (1 + np.exp(-(-2.0 + sign * 0.9 * X[:, 0] + 0.6 * X[:, 1]))))
    return X, clicked, bought, position


def _fit_shared(config: PurchaseModelConfig, n: int, seed: int, sign: float = 1.0) -> PurchaseModel:
    X, clicked, bought, position = _shared(n, seed, sign)
    half = n // 2
    return PurchaseModel(config).fit(X[:half], clicked[:half], bought[:half], position[:half], X[half:],
                                     clicked[half:], bought[half:], position[half:], feature_names=["interest", "b"])


def test_the_purchase_stage_starts_from_the_click_score_and_keeps_its_slope_on_reload(tmp_path: Path) -> None:
    from dataclasses import replace

    with_start = _fit_shared(replace(_SMALL, click_offset=True), 6000, seed=4)
    without = _fit_shared(replace(_SMALL, click_offset=False), 6000, seed=4)
    intercept, h = with_start.click_offset_coef_
    # the click stage's score says most of what the purchase stage needs about feature 0
    # (0.9 / 1.2 of the click's log-odds per unit of it)
    assert 0.3 < h < 1.2 and without.click_offset_coef_ == (0.0, 0.0)
    assert with_start.fit_info_["click_offset_slope"] == h
    X, clicked, bought, _ = _shared(20000, seed=11)
    truth = (np.log(1 / (1 + np.exp(-(-0.5 + 1.2 * X[:, 0])))) + np.log(1 / (1 + np.exp(-(-2.0 + 0.9 * X[:, 0] + 0.6 * X[:, 1])))))
    # on fresh rows the score follows the true purchase probability more closely with the start
    assert np.corrcoef(with_start.predict(X), truth)[0, 1] > np.corrcoef(without.predict(X), truth)[0, 1]
    # the stages combine by one function: predict is score_from_stages of the boosters' raw scores
    click = with_start.click_booster_.predict(X[:50], raw_score=True)
    buy = with_start.purchase_booster_.predict(X[:50], raw_score=True)
    np.testing.assert_array_equal(with_start.score_from_stages(click, buy), with_start.predict(X[:50]))
    with_start.save(tmp_path / "pm")
    loaded = PurchaseModel.load(tmp_path / "pm")
    assert loaded.click_offset_coef_ == (intercept, h)
    np.testing.assert_array_equal(loaded.predict(X[:200]), with_start.predict(X[:200]))
    # a model saved before the start existed has none
    schema = json.loads((tmp_path / "pm" / PURCHASE_SCHEMA_FILE).read_text())
    del schema["click_offset_coef"]
    for key in ("click_offset", "purchase_learning_rate"):
        del schema["config"][key]
    (tmp_path / "pm" / PURCHASE_SCHEMA_FILE).write_text(json.dumps(schema))
    old = PurchaseModel.load(tmp_path / "pm")
    assert old.click_offset_coef_ == (0.0, 0.0)
    assert (old.config.click_offset, old.config.purchase_learning_rate) == (False, 0.0)  # its settings then
    np.testing.assert_allclose(old.predict(X[:50]), with_start.score_from_stages(click, buy - intercept - h * click),
                               rtol=0, atol=1e-12)


@settings(max_examples=6, deadline=None)
@given(sign=st.sampled_from([-1.0, 1.0]), seed=st.integers(0, 50))
def test_the_click_score_slope_is_never_negative(sign: float, seed: int) -> None:
    """A negative slope would turn a trust rise that lifts the click stage into a purchase loss."""
    from dataclasses import replace

    model = _fit_shared(replace(_SMALL, click_offset=True), 3000, seed=seed, sign=sign)
    intercept, h = model.click_offset_coef_
    assert h >= 0.0 and np.isfinite(intercept)
    if sign < 0:  # buying falls with what makes viewers click: no start from the click score
        assert h == 0.0
