"""The compiled predictor: LightGBM's scores to 1e-9, its cache trusted only when verified, the fallback."""

from __future__ import annotations

import builtins
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trustfeed.ranker.bundle import save_bundle
from trustfeed.serving import FeedRanker
from trustfeed.serving._compiled import CompiledModel, compile_model, compiled_available

lleaves_only = pytest.mark.skipif(not compiled_available(), reason="the compiled extra (lleaves) is not installed")


@pytest.fixture(scope="module")
def parts(fx: Any) -> Any:
    return fx.trained_parts()


@pytest.fixture(scope="module")
def compiled(parts: Any) -> CompiledModel:
    return CompiledModel(parts.model)


@pytest.fixture(scope="module")
def bundle(fx: Any, parts: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compiled") / "bundle"
    save_bundle(fx.make_pipeline(parts), path)
    return path


def _feature_rows(parts: Any, fx: Any) -> np.ndarray:
    pipeline = fx.make_pipeline(parts)
    return pipeline.assembler.transform(parts.impressions)


@lleaves_only
def test_compiled_scores_equal_lightgbm_on_served_rows(compiled: CompiledModel, parts: Any, fx: Any) -> None:
    served = _feature_rows(parts, fx)
    # the same rows with values missing (LightGBM's NaN routing) are part of the check
    missing = served.copy()
    missing[np.random.default_rng(3).random(missing.shape) < 0.2] = np.nan
    X = np.vstack([served, missing])
    np.testing.assert_allclose(compiled.predict(X), parts.model.predict(X), rtol=0, atol=1e-9)
    assert compiled.predict(X[:0]).shape == (0,)


@lleaves_only
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_compiled_scores_equal_lightgbm_on_any_values(compiled: CompiledModel, parts: Any, data: st.DataObject) -> None:
    # any finite or missing value in any feature, categorical codes outside the vocabulary included
    shape = (data.draw(st.integers(1, 8)), len(compiled.feature_names_))
    values = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan")), st.integers(-3, 60).map(float))
    X = data.draw(arrays(np.float64, shape, elements=values))
    np.testing.assert_allclose(compiled.predict(X), parts.model.predict(X), rtol=0, atol=1e-9)


@lleaves_only
def test_feed_ranker_compiled_gives_the_lightgbm_response(bundle: Path, parts: Any) -> None:
    plain = FeedRanker.load(bundle, record_served=False, predictor="lightgbm")
    fast = FeedRanker.load(bundle, record_served=False, predictor="compiled")
    assert (plain.predictor, fast.predictor) == ("lightgbm", "compiled")
    for request in parts.requests[:20]:
        expected, got = plain.rank(request), fast.rank(request)
        assert [i["stream_id"] for i in got["items"]] == [i["stream_id"] for i in expected["items"]]
        np.testing.assert_allclose(
            [i["relevance"] for i in got["items"]], [i["relevance"] for i in expected["items"]], rtol=0, atol=1e-9
        )
        assert got["filtered"] == expected["filtered"]
    # a reload compiles the new model too
    fast.reload(bundle)
    assert fast.predictor == "compiled"


@lleaves_only
def test_compile_cache_is_keyed_by_the_model_and_verified(parts: Any, fx: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    X = _feature_rows(parts, fx)[:50]
    first = CompiledModel(parts.model, cache)
    assert not first.cached and len(list(cache.glob("*.o"))) == 1
    second = CompiledModel(parts.model, cache)
    assert second.cached
    np.testing.assert_array_equal(second.predict(X), first.predict(X))

    other = fx.trained_parts(num_rounds=4).model  # another model: another entry, never the first's code
    third = CompiledModel(other, cache)
    assert not third.cached and len(list(cache.glob("*.o"))) == 2
    np.testing.assert_allclose(third.predict(X), other.predict(X), rtol=0, atol=1e-9)

    # a tampered object is refused (recompiled), never loaded
    obj = _entry(cache, first)
    obj.write_bytes(obj.read_bytes()[:-16] + b"\0" * 16)
    with pytest.warns(RuntimeWarning, match="checksum"):
        again = CompiledModel(parts.model, cache)
    assert not again.cached
    np.testing.assert_allclose(again.predict(X), parts.model.predict(X), rtol=0, atol=1e-9)


def _entry(cache: Path, model: CompiledModel) -> Path:
    from trustfeed.serving._compiled import _Cache

    return _Cache(cache, model.model_sha256).object_path


@lleaves_only
def test_a_cache_others_can_write_is_not_used(parts: Any, tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.warns(RuntimeWarning, match="writable by other users"):
        model = CompiledModel(parts.model, cache)
    assert not model.cached and not list(cache.glob("*.o"))


def test_without_lleaves_compiled_falls_back_to_lightgbm(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_lleaves(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "lleaves" or name.startswith("lleaves."):
            raise ImportError("no lleaves here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    assert not compiled_available()
    with pytest.warns(RuntimeWarning, match="lleaves"):
        model = compile_model(parts.model, "compiled")
    assert model is parts.model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_model(parts.model, "lightgbm") is parts.model


@lleaves_only
def test_load_compiles_by_default_into_the_default_cache(bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from trustfeed.serving import default_compile_cache

    monkeypatch.setenv("TRUSTFEED_COMPILE_CACHE", str(tmp_path / "cache"))
    assert default_compile_cache() == tmp_path / "cache"
    first = FeedRanker.load(bundle, record_served=False)
    assert first.predictor == "compiled" and not first.pipeline.model.cached
    assert len(list((tmp_path / "cache").glob("*.o"))) == 1
    second = FeedRanker.load(bundle, record_served=False)  # another worker, or a restart: no compilation
    assert second.predictor == "compiled" and second.pipeline.model.cached
    in_memory = FeedRanker.load(bundle, record_served=False, compile_cache=None)
    assert in_memory.predictor == "compiled" and not in_memory.pipeline.model.cached
    # the in-memory constructor keeps LightGBM unless asked
    assert FeedRanker(_plain_pipeline(bundle)).predictor == "lightgbm"
    monkeypatch.delenv("TRUSTFEED_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache() == tmp_path / "xdg" / "trustfeed" / "compiled"


def _plain_pipeline(bundle: Path) -> Any:
    from trustfeed.ranker.bundle import load_bundle

    return load_bundle(bundle)


def _fallback_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "predictor 'auto' ranks with LightGBM" in r.getMessage()]


def test_auto_without_lleaves_ranks_with_lightgbm_after_one_logged_line(
    bundle: Path, parts: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trustfeed.serving import _compiled

    real_import = builtins.__import__

    def no_lleaves(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "lleaves" or name.startswith("lleaves."):
            raise ImportError("no lleaves here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    monkeypatch.setattr(_compiled, "_fallback_logged", False)
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="trustfeed.serving"):
        warnings.simplefilter("error")  # a logged line, not a warning
        ranker = FeedRanker.load(bundle, record_served=False)
        ranker.reload(bundle)
        again = FeedRanker.load(bundle, record_served=False)
    assert ranker.predictor == again.predictor == "lightgbm"
    lines = _fallback_lines(caplog)
    assert len(lines) == 1 and "lleaves is not installed" in lines[0]
    assert ranker.rank(parts.requests[0])["items"]


@lleaves_only
def test_auto_keeps_lightgbm_when_the_model_does_not_compile(
    bundle: Path, parts: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trustfeed.serving import _compiled

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("LLVM says no")

    monkeypatch.setattr(_compiled, "_CompiledTrees", broken)
    monkeypatch.setattr(_compiled, "_fallback_logged", False)
    with caplog.at_level("WARNING", logger="trustfeed.serving"):
        ranker = FeedRanker.load(bundle, record_served=False)
    assert ranker.predictor == "lightgbm"
    assert [line for line in _fallback_lines(caplog) if "LLVM says no" in line]
    with pytest.raises(RuntimeError, match="LLVM says no"):  # asked for explicitly, the failure is the caller's
        FeedRanker.load(bundle, record_served=False, predictor="compiled")


def test_unknown_predictor_is_a_config_error(parts: Any) -> None:
    from trustfeed.features.errors import ConfigError

    with pytest.raises(ConfigError, match="predictor"):
        compile_model(parts.model, "treelite")


@pytest.fixture(scope="module")
def purchase_bundle(fx: Any, parts: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A bundle whose policy ranks on a small purchase model fitted on the served feature rows."""
    from trustfeed.ranker.policy import Policy, PolicyConfig, PolicyState
    from trustfeed.ranker.purchase import PurchaseModel, PurchaseModelConfig

    pipeline = fx.make_pipeline(parts)
    X = _feature_rows(parts, fx)
    rng = np.random.default_rng(5)
    X = X[rng.integers(0, X.shape[0], 3000)]
    signal = np.nan_to_num((X - np.nanmean(X, axis=0)) / (np.nanstd(X, axis=0) + 1e-9))
    position = rng.integers(1, 11, X.shape[0])
    clicked = rng.random(X.shape[0]) < 1 / (1 + np.exp(-(-1.0 + signal[:, 0] - 0.8 * np.log(position))))
    bought = clicked & (rng.random(X.shape[0]) < 1 / (1 + np.exp(-(-1.0 + signal[:, 1]))))
    half = X.shape[0] // 2
    config = PurchaseModelConfig(min_data_in_leaf=40, min_data_in_leaf_purchase=20, num_rounds=40,
                                 early_stopping_rounds=10)
    purchase = PurchaseModel(config).fit(
        X[:half], clicked[:half], bought[:half], position[:half], X[half:], clicked[half:], bought[half:],
        position[half:], feature_names=list(pipeline.feature_names))
    state = PolicyState((1.0, 0.5), (-1.0, -1.0), 0.5, relevance_source="purchase_model")
    pipeline = type(pipeline)(pipeline.assembler, pipeline.model, Policy(PolicyConfig(), state), None,
                              snapshot=pipeline.snapshot, context=pipeline.context, purchase_model=purchase)
    path = tmp_path_factory.mktemp("compiled-purchase") / "bundle"
    save_bundle(pipeline, path)
    return path, purchase


@lleaves_only
def test_compiled_purchase_model_scores_equal_lightgbm_and_reload_keeps_it(
    purchase_bundle: tuple[Path, Any], parts: Any, fx: Any, tmp_path: Path
) -> None:
    from trustfeed.serving._compiled import CompiledPurchaseModel

    path, purchase = purchase_bundle
    cache = tmp_path / "cache"
    compiled = compile_model(purchase, "compiled", cache)
    assert isinstance(compiled, CompiledPurchaseModel) and not compiled.cached
    assert len(list(cache.glob("*.o"))) == 2  # one entry per stage, each keyed by its own model text
    served = _feature_rows(parts, fx)
    missing = served.copy()
    missing[np.random.default_rng(3).random(missing.shape) < 0.2] = np.nan
    X = np.vstack([served, missing])
    np.testing.assert_allclose(compiled.predict(X), purchase.predict(X), rtol=0, atol=1e-9)
    click, buy = compiled.stage_scores(X)
    np.testing.assert_allclose(click, purchase.click_booster_.predict(X, raw_score=True), rtol=0, atol=1e-9)
    np.testing.assert_allclose(buy, purchase.purchase_booster_.predict(X, raw_score=True), rtol=0, atol=1e-9)
    assert compile_model(purchase, "compiled", cache).cached

    plain = FeedRanker.load(path, record_served=False, predictor="lightgbm")
    fast = FeedRanker.load(path, record_served=False, predictor="compiled", compile_cache=cache)
    assert (plain.predictor, fast.predictor) == ("lightgbm", "compiled")
    assert isinstance(fast._pipeline.purchase_model, CompiledPurchaseModel)
    for request in parts.requests[:10]:
        expected, got = plain.rank(request), fast.rank(request)
        assert [i["stream_id"] for i in got["items"]] == [i["stream_id"] for i in expected["items"]]
        np.testing.assert_allclose(
            [i["relevance"] for i in got["items"]], [i["relevance"] for i in expected["items"]], rtol=0, atol=1e-9
        )
    fast.reload(path)
    assert isinstance(fast._pipeline.purchase_model, CompiledPurchaseModel) and fast.predictor == "compiled"
    fast.reload_snapshot(fast._pipeline.snapshot)
    assert isinstance(fast._pipeline.purchase_model, CompiledPurchaseModel)
