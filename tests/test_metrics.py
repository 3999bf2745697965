"""Metrics of docs/contract.md section 4: hand-computed fixtures, independent cross-checks, properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from trustfeed.features.errors import ConfigError, SchemaError
from trustfeed.ranker import metrics as m

# ---------------------------------------------------------------- exposure


def test_position_exposure_hand_values() -> None:
    got = m.position_exposure([1, 2, 3, 7])
    assert got == pytest.approx([1.0, 1 / math.log2(3), 0.5, 1 / 3])
    assert m.position_exposure([1, 4], kind="reciprocal") == pytest.approx([1.0, 0.25])
    assert m.position_exposure([1, 3], kind="rbp", patience=0.5) == pytest.approx([1.0, 0.25])


@pytest.mark.parametrize("bad", [[0], [-1], [float("nan")]])
def test_position_exposure_rejects_bad_positions(bad: list[float]) -> None:
    with pytest.raises(SchemaError, match="position"):
        m.position_exposure(bad)


def test_position_exposure_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="exposure kind"):
        m.position_exposure([1], kind="linear")


@pytest.fixture
def two_lists() -> pd.DataFrame:
    # request a: x@1, y@2, x@3 ; request b: z@1, y@2
    return pd.DataFrame(
        {
            "request_id": ["a", "a", "a", "b", "b"],
            "position": [1, 2, 3, 1, 2],
            "creator_id": ["x", "y", "x", "z", "y"],
            "merchant_id": ["m1", "m2", "m1", "m1", "m2"],
            "trust": [0.9, 0.1, 0.9, 0.5, 0.1],
            "p_bad": [0.0, 0.4, 0.0, 0.1, 0.4],
        }
    )


def test_exposure_by_sums_items_and_adds_zero_population(two_lists: pd.DataFrame) -> None:
    l2, l3 = 1 / math.log2(3), 1 / math.log2(4)
    got = m.exposure_by(two_lists, population=["x", "y", "z", "never"])
    assert got.to_dict() == pytest.approx({"never": 0.0, "x": 1 + l3, "y": 2 * l2, "z": 1.0})
    merchants = m.exposure_by(two_lists, "merchant_id")
    assert merchants.to_dict() == pytest.approx({"m1": 2 + l3, "m2": 2 * l2})


def test_exposure_by_cutoff_k(two_lists: pd.DataFrame) -> None:
    got = m.exposure_by(two_lists, k=1)
    assert got.to_dict() == pytest.approx({"x": 1.0, "y": 0.0, "z": 1.0})


def test_missing_column_is_a_schema_error(two_lists: pd.DataFrame) -> None:
    with pytest.raises(SchemaError, match="creator_id"):
        m.exposure_by(two_lists.drop(columns="creator_id"))


# ---------------------------------------------------------------- Gini


def test_gini_hand_values() -> None:
    # x sorted = [0, 1, 3], N = 3, sum 4: ((-2)*0 + 0*1 + 2*3) / (3*4) = 0.5
    assert m.gini([3.0, 0.0, 1.0]) == pytest.approx(0.5)
    assert m.gini([0.0, 0.0, 0.0, 5.0]) == pytest.approx(0.75)
    assert m.gini([2.0, 2.0]) == 0.0
    assert m.gini([]) == 0.0
    assert m.gini([0.0, 0.0]) == 0.0


def test_gini_rejects_negative() -> None:
    with pytest.raises(SchemaError):
        m.gini([1.0, -1.0])


def _gini_mean_difference(x: np.ndarray) -> float:
    # independent formula: mean absolute difference over all ordered pairs / (2 * mean); the
    # Gini is scale-free, so the values are scaled to a maximum of 1 first (with subnormal
    # inputs such as [0, 5e-324] the mean itself underflows to 0)
    x = x / x.max()
    diffs = np.abs(x[:, None] - x[None, :]).mean()
    return float(diffs / (2.0 * x.mean()))


exposures = st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(exposures)
@example([0.0, 5e-324])  # the reference's mean underflows here (found by hypothesis)
def test_gini_matches_mean_difference_formula(values: list[float]) -> None:
    x = np.asarray(values)
    if x.sum() <= 0:
        assert m.gini(x) == 0.0
        return
    assert m.gini(x) == pytest.approx(_gini_mean_difference(x), abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(exposures, st.randoms(use_true_random=False), st.floats(min_value=1e-3, max_value=1e3))
def test_gini_bounds_permutation_and_scale_invariance(values: list[float], rnd, scale: float) -> None:
    x = np.asarray(values)
    g = m.gini(x)
    assert 0.0 <= g < 1.0
    shuffled = list(values)
    rnd.shuffle(shuffled)
    assert m.gini(shuffled) == pytest.approx(g, abs=1e-12)
    assert m.gini(x * scale) == pytest.approx(g, abs=1e-9)


@given(st.integers(min_value=1, max_value=500), st.floats(min_value=1e-6, max_value=1e6))
def test_gini_equal_is_zero_and_one_hot_is_max(n: int, value: float) -> None:
    assert m.gini(np.full(n, value)) == pytest.approx(0.0, abs=1e-9)
    one_hot = np.zeros(n)
    one_hot[n // 2] = value
    assert m.gini(one_hot) == pytest.approx((n - 1) / n)


def test_gini_one_hot_among_many_is_near_one() -> None:
    x = np.zeros(10_000)
    x[0] = 1.0
    assert m.gini(x) > 0.999


def test_gini_counts_eligible_creators_with_zero_exposure(two_lists: pd.DataFrame) -> None:
    served_only = m.gini(m.exposure_by(two_lists))
    with_population = m.gini(m.exposure_by(two_lists, population=[f"c{i}" for i in range(20)]))
    assert with_population > served_only


# ---------------------------------------------------------------- long tail, coverage, weighted


def test_long_tail_share_by_followers() -> None:
    exposure = pd.Series({"a": 5.0, "b": 3.0, "c": 1.0, "d": 1.0, "e": 0.0, "f": 0.0,
                          "g": 0.0, "h": 0.0, "i": 0.0, "j": 0.0})
    followers = pd.Series({"a": 10, "b": 1000, "c": 900, "d": 1, "e": 0, "f": 0,
                           "g": 0, "h": 0, "i": 0, "j": 0})
    # head = top 20% of 10 = b, c  -> tail exposure a + d = 6 of 10
    assert m.long_tail_share(exposure, followers=followers) == pytest.approx(0.6)


def test_long_tail_share_falls_back_to_past_exposure() -> None:
    exposure = pd.Series({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.0, "e": 0.0})
    past = pd.Series({"c": 100.0, "a": 1.0})
    # no follower counts at all -> head by past exposure = c (ceil(0.2 * 5) = 1)
    assert m.long_tail_share(exposure, followers=pd.Series({"a": np.nan}), past_exposure=past) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        m.long_tail_share(exposure)


def test_coverage_and_exposure_weighted(two_lists: pd.DataFrame) -> None:
    exposure = m.exposure_by(two_lists, population=["x", "y", "z", "w"])
    assert m.creator_coverage(exposure) == 0.75
    e = m.position_exposure(two_lists["position"])
    expected_trust = float((e * two_lists["trust"]).sum() / e.sum())
    assert m.exposure_weighted_trust(two_lists) == pytest.approx(expected_trust)
    expected_bad = float((e * two_lists["p_bad"]).sum() / e.sum())
    assert m.bad_order_exposure(two_lists) == pytest.approx(expected_bad)
    # a top-1 feed only shows x and z
    assert m.exposure_weighted_trust(two_lists, k=1) == pytest.approx((0.9 + 0.5) / 2)


def test_exposure_summary(two_lists: pd.DataFrame) -> None:
    summary = m.exposure_summary(two_lists, ["x", "y", "z", "w", "v"],
                                 followers=pd.Series({"x": 100, "y": 1, "z": 2}))
    exposure = m.exposure_by(two_lists, population=["x", "y", "z", "w", "v"])
    assert summary.gini == pytest.approx(m.gini(exposure))
    assert summary.coverage == pytest.approx(0.6)
    assert summary.n_creators == 5
    assert summary.long_tail_share == pytest.approx(1 - exposure["x"] / exposure.sum())
    assert set(summary.to_dict()) == {"gini", "long_tail_share", "coverage", "n_creators", "total_exposure"}


# ---------------------------------------------------------------- NDCG


def test_ndcg_hand_computed() -> None:
    # labels in served order [1, 0, 3]: DCG = 1 + 0 + 7/2 = 4.5;
    # ideal [3, 1, 0]: 7 + 1/log2(3)
    ideal = 7 + 1 / math.log2(3)
    assert m.ndcg_at_k([1, 0, 3], k=3) == pytest.approx(4.5 / ideal)
    # @2 the 3 is cut off: DCG 1, IDCG 7 + 1/log2(3)
    assert m.ndcg_at_k([1, 0, 3], k=2) == pytest.approx(1 / ideal)
    assert m.ndcg_at_k([2, 1, 0], k=10) == pytest.approx(1.0)
    assert math.isnan(m.ndcg_at_k([0, 0, 0], k=3))


def test_mean_ndcg_skips_and_counts_lists_without_positive() -> None:
    frame = pd.DataFrame(
        {
            "request_id": ["a"] * 3 + ["b"] * 2 + ["c"] * 2,
            # positions deliberately out of row order: only the order within a request matters
            "position": [3, 1, 2, 1, 2, 2, 1],
            "label": [3, 1, 0, 0, 0, 2, 0],
        }
    )
    res = m.mean_ndcg(frame, k=3)
    expected_a = m.ndcg_at_k([1, 0, 3], 3)
    expected_c = m.ndcg_at_k([0, 2], 3)
    assert res.n_lists == 3 and res.n_scored == 2 and res.n_skipped == 1
    assert res.mean == pytest.approx((expected_a + expected_c) / 2)
    assert math.isnan(res.per_list["b"])
    # LightGBM would score b as 1 and ranx as 0: either would move the mean
    assert res.mean != pytest.approx((expected_a + expected_c + 1) / 3)
    assert res.mean != pytest.approx((expected_a + expected_c) / 3)


def test_mean_ndcg_hand_computed() -> None:
    # labels in shown order; gain 2^label - 1, discount log2(position + 1), ideal = the list's
    # labels sorted, cut at k (what trec_eval's and ranx's ndcg_burges compute)
    frame = pd.DataFrame(
        {
            "request_id": ["a"] * 3 + ["b"] * 4 + ["c"] * 2,
            "position": [1, 2, 3, 1, 2, 3, 4, 2, 1],
            "label": [3, 0, 2, 0, 1, 0, 4, 0, 0],
        }
    )
    log2_3, log2_5 = math.log2(3), math.log2(5)
    a = {1: 1.0, 3: (7 + 3 / 2) / (7 + 3 / log2_3), 5: (7 + 3 / 2) / (7 + 3 / log2_3)}
    b = {1: 0.0, 3: (1 / log2_3) / (15 + 1 / log2_3), 5: (1 / log2_3 + 15 / log2_5) / (15 + 1 / log2_3)}
    for k in (1, 3, 5):
        res = m.mean_ndcg(frame, k=k)
        assert (res.n_scored, res.n_skipped) == (2, 1)  # c has no positive label
        assert res.per_list["a"] == pytest.approx(a[k], abs=1e-12)
        assert res.per_list["b"] == pytest.approx(b[k], abs=1e-12)
        assert res.mean == pytest.approx((a[k] + b[k]) / 2, abs=1e-12)
    assert a[3] == pytest.approx(0.955830, abs=1e-6) and b[3] == pytest.approx(0.040365, abs=1e-6)


def test_ndcg_rejects_bad_k_and_missing_labels() -> None:
    with pytest.raises(ConfigError):
        m.ndcg_at_k([1], k=0)
    frame = pd.DataFrame({"request_id": ["a"], "position": [1], "label": [np.nan]})
    with pytest.raises(SchemaError, match="label"):
        m.mean_ndcg(frame)


# ---------------------------------------------------------------- Kendall tau


def test_kendall_tau_hand_values() -> None:
    assert m.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert m.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped adjacent pair out of 6: (5 - 1) / 6
    assert m.kendall_tau([1, 2, 3, 4], [2, 1, 3, 4]) == pytest.approx(4 / 6)
    assert math.isnan(m.kendall_tau([1], [1]))


def test_mean_kendall_tau_matches_scipy_per_request(rng: np.random.Generator) -> None:
    sizes = rng.integers(1, 12, size=30)
    request = np.repeat(np.arange(30), sizes)
    frame = pd.DataFrame({"request_id": request})
    frame["position"] = frame.groupby("request_id").cumcount() + 1
    frame["base_position"] = rng.permutation(request.size)  # only order within request matters
    frame["base_position"] = frame.groupby("request_id")["base_position"].rank()
    expected = [
        stats.kendalltau(g["position"], g["base_position"]).statistic
        for _, g in frame.groupby("request_id") if len(g) > 1
    ]
    assert m.mean_kendall_tau(frame) == pytest.approx(float(np.mean(expected)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), min_size=2, max_size=20), st.randoms(use_true_random=False))
def test_kendall_tau_b_with_ties_matches_scipy(scores: list[int], rnd) -> None:
    other = list(scores)
    rnd.shuffle(other)
    expected = stats.kendalltau(scores, other).statistic
    got = m.kendall_tau(scores, other)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected)
