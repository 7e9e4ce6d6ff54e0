"""Tests of factory_assets.ml.recsys.evaluation, baselines and the BlendModel scoring formula."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from factory_assets.ml.recsys import baselines
from factory_assets.ml.recsys.evaluation import EvalSet, build_eval_set, model_scores, temporal_split
from factory_assets.ml.recsys.metrics import top_k
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model

D1 = date(2024, 10, 1)


def day(i: int) -> date:
    return D1 + timedelta(days=i - 1)


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of ``(day_number, user_id, item_id, n_conversions, n_views)`` as a user_item_daily frame."""
    out = pd.DataFrame(rows, columns=["day", "user_id", "item_id", "n_conversions", "n_views"])
    out["day"] = out["day"].map(day)
    out["weight"] = 5.0 * out["n_conversions"] + 1.0 * out["n_views"]
    out["n_carts"] = 0
    out["n_returns"] = 0
    return out[["day", "user_id", "item_id", "weight", "n_conversions", "n_views", "n_carts", "n_returns"]]


# --------------------------------------------------------------------------- temporal_split
def test_temporal_split_day_boundaries():
    rows = frame([(i, f"u{i}", "a", 1, 0) for i in range(1, 6)])  # one row on each of days 1..5
    split = temporal_split(rows, (day(1), day(5)), holdout_days=2)
    # 5 days, hold out the last 2: train = days 1..3, test = days 4..5
    assert split.train_days == (day(1), day(3))
    assert split.test_days == (day(4), day(5))
    assert list(split.train["user_id"]) == ["u1", "u2", "u3"]
    assert list(split.test["user_id"]) == ["u4", "u5"]
    assert list(split.train.index) == [0, 1, 2] and list(split.test.index) == [0, 1]


def test_temporal_split_accepts_timestamp_days_and_one_day_holdout():
    rows = frame([(1, "u1", "a", 1, 0), (2, "u2", "a", 1, 0), (3, "u3", "a", 1, 0)])
    rows["day"] = pd.to_datetime(rows["day"])  # datetime64 instead of date objects
    split = temporal_split(rows, (day(1), day(3)), holdout_days=1)
    assert split.train_days == (day(1), day(2)) and split.test_days == (day(3), day(3))
    assert list(split.train["user_id"]) == ["u1", "u2"] and list(split.test["user_id"]) == ["u3"]


def test_temporal_split_window_too_short():
    rows = frame([(1, "u1", "a", 1, 0)])
    with pytest.raises(ValueError, match="cannot hold out"):
        temporal_split(rows, (day(1), day(3)), holdout_days=3)


# --------------------------------------------------------------------------- build_eval_set
def test_build_eval_set_users_and_truth():
    train = frame(
        [
            (1, "uA", "i1", 1, 0),
            (1, "uB", "i2", 0, 1),  # uB only viewed in train
            (2, "uC", "i3", 2, 0),
            (2, "uD", "i1", 1, 0),
            (2, "uE", "i2", 1, 0),
        ]
    )
    test = frame(
        [
            (4, "uA", "i2", 1, 0),
            (4, "uA", "i3", 1, 0),
            (5, "uA", "i9", 1, 0),  # i9 never seen in training: not in the catalogue
            (4, "uA", "i1", 0, 2),  # a view is no conversion
            (4, "uB", "i1", 1, 0),  # uB did not convert in train -> not evaluated
            (4, "uC", "i1", 0, 1),  # uC only viewed in test -> not evaluated
            (5, "uD", "i9", 1, 0),  # uD's only test conversion is outside the catalogue -> left out
            (4, "uE", "i1", 1, 0),
            (5, "uE", "i1", 2, 0),  # same item twice -> one truth entry
            (4, "uF", "i1", 1, 0),  # new user -> not evaluated
        ]
    )
    ev = build_eval_set(train, test)
    # catalogue = items with any training interaction, sorted: i1, i2, i3 (i9 is test-only)
    assert ev.catalogue.tolist() == ["i1", "i2", "i3"]
    assert ev.catalogue.dtype.kind == "U"
    # evaluated: converted in train (uA, uC, uD, uE) AND converted on a catalogue item in test (uA, uE)
    assert ev.user_ids.tolist() == ["uA", "uE"]
    # uA: i2, i3 -> {1, 2};  uE: i1 -> {0}
    assert ev.truth == [{1, 2}, {0}]


def test_build_eval_set_nobody_evaluable():
    train = frame([(1, "uA", "i1", 0, 1)])
    test = frame([(3, "uA", "i1", 1, 0)])
    ev = build_eval_set(train, test)
    assert ev.catalogue.tolist() == ["i1"]
    assert len(ev.user_ids) == 0 and ev.truth == []


# --------------------------------------------------------------------------- baselines
BASELINE_TRAIN = frame(
    [
        (1, "uA", "i1", 3, 0),
        (1, "uA", "i3", 1, 0),
        (1, "uB", "i2", 1, 0),
        (2, "uB", "i3", 1, 0),
        (1, "uC", "i2", 1, 0),
        (2, "uC", "i2", 1, 0),  # uC converts on i2 on two days: 2 own conversions, 1 distinct user
        (2, "uC", "i3", 1, 0),
        (2, "uD", "i4", 0, 5),  # views only: not a converter
    ]
)
CATALOGUE = np.array(["i1", "i2", "i3", "i4"])
# popularity = distinct converting users: i1 {uA} = 1, i2 {uB, uC} = 2, i3 {uA, uB, uC} = 3, i4 {} = 0
POPULARITY = [1.0, 2.0, 3.0, 0.0]


def test_popularity_scores_by_hand():
    scores = baselines.popularity_scores(BASELINE_TRAIN, np.array(["uA", "uZ"]), CATALOGUE)
    assert scores.shape == (2, 4) and scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [POPULARITY, POPULARITY])
    # ranking: i3, i2, i1, i4 for everyone
    np.testing.assert_array_equal(top_k(scores, 4), [[2, 1, 0, 3], [2, 1, 0, 3]])


def test_repeat_scores_by_hand():
    users = np.array(["uA", "uB", "uC", "uD", "uZ"])
    scores = baselines.repeat_scores(BASELINE_TRAIN, users, CATALOGUE)
    # base = popularity / (max + 1) = [1, 2, 3, 0] / 4 = [0.25, 0.5, 0.75, 0]
    expected = np.array(
        [
            [3.25, 0.5, 1.75, 0.0],  # uA: own i1 = 3, i3 = 1
            [0.25, 1.5, 1.75, 0.0],  # uB: own i2 = 1, i3 = 1 (tie, popularity puts i3 first)
            [0.25, 2.5, 1.75, 0.0],  # uC: own i2 = 1 + 1 = 2, i3 = 1
            [0.25, 0.5, 0.75, 0.0],  # uD: no conversions -> popularity only
            [0.25, 0.5, 0.75, 0.0],  # uZ: unknown -> popularity only
        ]
    )
    np.testing.assert_allclose(scores, expected)
    np.testing.assert_array_equal(
        top_k(scores, 4),
        [[0, 2, 1, 3], [2, 1, 0, 3], [1, 2, 0, 3], [2, 1, 0, 3], [2, 1, 0, 3]],
    )


def test_unfilled_repeat_reference_recommends_only_own_items():
    users = np.array(["uA", "uB", "uD"])
    scores = baselines.repeat_unfilled_scores(BASELINE_TRAIN, users, CATALOGUE)
    inf = -np.inf
    # the filled scores above, with every non-own item removed (-inf): uD converted on nothing
    np.testing.assert_array_equal(scores, [[3.25, inf, 1.75, inf], [inf, 1.5, 1.75, inf], [inf, inf, inf, inf]])
    np.testing.assert_array_equal(top_k(scores, 3), [[0, 2, -1], [2, 1, -1], [-1, -1, -1]])


def test_repeat_ignores_items_outside_catalogue():
    # uA's i1 is not in this catalogue; only i3 (own 1) stays.  popularity over [i2, i3] = [2, 3] -> base /4
    scores = baselines.repeat_scores(BASELINE_TRAIN, np.array(["uA"]), np.array(["i2", "i3"]))
    np.testing.assert_allclose(scores, [[0.5, 1.75]])


# --------------------------------------------------------------------------- BlendModel and model_scores
def hand_model(a: float = 0.5, p: float = 1.0) -> BlendModel:
    """Two users, four items, two factors; every score is computable by hand (see the tests)."""
    history = sp.csr_matrix(np.array([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    return BlendModel(
        user_ids=np.array(["u1", "u2"]),
        item_ids=np.array(["a", "b", "c", "x"]),
        user_factors=np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32),
        item_factors=np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, 3.0], [4.0, 0.0]], dtype=np.float32),
        history=history,
        popularity=np.array([1.0, 2.0, 4.0, 0.0], dtype=np.float32),
        als_weight=a,
        params=ModelParams(factors=2, popularity_weight=p, als_weight=a),
    )


# Module formula: score = log1p(h) + p * pop / max pop + a * als / max als  (unknown users: p * pop / max pop)
# u1: als = [2, 1, -1, 4] -> clip [2, 1, 0, 4] -> / 4 = [0.5, 0.25, 0, 1]
#     log1p(h) = log1p([3, 1, 0, 0]) = [ln 4, ln 2, 0, 0]
# u2: als = [0, 1, 3, 0] -> / 3 = [0, 1/3, 1, 0]; no history
# pop_norm = [1, 2, 4, 0] / 4 = [0.25, 0.5, 1, 0]
# a = 0.5, p = 1:
LN2, LN4 = math.log(2), math.log(4)
U1 = [LN4 + 0.25 + 0.25, LN2 + 0.5 + 0.125, 0 + 1.0 + 0.0, 0 + 0.0 + 0.5]
U2 = [0.25 + 0.0, 0.5 + 0.5 / 3, 1.0 + 0.5, 0.0]
POP = [0.25, 0.5, 1.0, 0.0]


def test_blend_scores_by_hand():
    model = hand_model(a=0.5, p=1.0)
    scores = model.scores(np.array([0, 1, -1]))
    np.testing.assert_allclose(scores, [U1, U2, POP], rtol=1e-6)
    ranked = top_k(scores, 4)
    # u1: a (1.886), b (1.318), c (1.0), x (0.5)
    np.testing.assert_array_equal(ranked[0], [0, 1, 2, 3])
    # u2: c (1.5), b (0.667), a (0.25), x (0)
    np.testing.assert_array_equal(ranked[1], [2, 1, 0, 3])
    # unknown user (row -1): the popularity ranking c, b, a, x
    np.testing.assert_array_equal(ranked[2], [2, 1, 0, 3])


def test_blend_scores_other_weights():
    # a = 2, p = 2: u1 = [ln4 + 0.5 + 1, ln2 + 1 + 0.5, 2 + 0, 0 + 0 + 2]; unknown = 2 * pop_norm
    scores = hand_model(a=2.0, p=2.0).scores(np.array([0, -1]))
    np.testing.assert_allclose(scores, [[LN4 + 1.5, LN2 + 1.5, 2.0, 2.0], [0.5, 1.0, 2.0, 0.0]], rtol=1e-6)
    # a = 0, p = 0: history only
    np.testing.assert_allclose(hand_model(a=0.0, p=0.0).scores(np.array([0]))[0], [LN4, LN2, 0.0, 0.0], rtol=1e-6)


def test_als_only_drops_history_and_popularity():
    ref = hand_model(a=0.5, p=1.0).als_only()
    # u1: plain normalised ALS [0.5, 0.25, 0, 1]; unknown: 0 * popularity = zeros
    np.testing.assert_allclose(ref.scores(np.array([0, -1])), [[0.5, 0.25, 0.0, 1.0], [0.0] * 4], rtol=1e-6)


def test_user_rows_marks_unknown_users():
    np.testing.assert_array_equal(hand_model().user_rows(["u2", "nobody", "u1"]), [1, -1, 0])


def test_model_scores_reindexes_to_eval_catalogue():
    model = hand_model(a=0.5, p=1.0)
    # "0" sorts before every model item, "z" after; "d" falls between; "b" and "x" are model-only
    ev = EvalSet(catalogue=np.array(["0", "a", "c", "d", "z"]), user_ids=np.array(["u1", "u9"]), truth=[{1}, {2}])
    out = model_scores(model, ev)
    ninf = -np.inf
    expected = np.array(
        [
            [ninf, U1[0], U1[2], ninf, ninf],  # u1: a, c from the formula above
            [ninf, POP[0], POP[2], ninf, ninf],  # u9 unknown: popularity of a and c
        ]
    )
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # unknown items are never recommended
    np.testing.assert_array_equal(top_k(out, 5), [[1, 2, -1, -1, -1], [2, 1, -1, -1, -1]])


# --------------------------------------------------------------------------- fit_model
def random_train(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 300
    conv = rng.integers(0, 3, n)
    views = rng.integers(0, 4, n)
    out = pd.DataFrame(
        {
            "day": [day(int(d)) for d in rng.integers(1, 8, n)],
            "user_id": [f"u{u:02d}" for u in rng.integers(0, 30, n)],
            "item_id": [f"i{i:02d}" for i in rng.integers(0, 25, n)],
            "weight": (5.0 * conv + views + 1.0).astype(float),
            "n_conversions": conv.astype(np.int64),
        }
    )
    return out


def test_fit_model_is_bit_reproducible():
    train = random_train()
    params = ModelParams(factors=4, iterations=3, seed=7)
    m1 = fit_model(train, day(7), params, als_weight=0.4)
    m2 = fit_model(train, day(7), params, als_weight=0.4)
    assert m1.user_factors.tobytes() == m2.user_factors.tobytes()
    assert m1.item_factors.tobytes() == m2.item_factors.tobytes()
    assert m1.popularity.tobytes() == m2.popularity.tobytes()
    assert (m1.history != m2.history).nnz == 0
    assert m1.user_factors.shape == (train["user_id"].nunique(), 4)
    assert m1.item_factors.shape == (train["item_id"].nunique(), 4)
    assert m1.als_weight == 0.4 and m1.params.als_weight == 0.4
    # a different seed gives different factors (the equality above is not vacuous)
    m3 = fit_model(train, day(7), ModelParams(factors=4, iterations=3, seed=8), als_weight=0.4)
    assert m3.user_factors.tobytes() != m1.user_factors.tobytes()


def test_fit_model_history_and_popularity_by_hand():
    # history = n_conversions * 0.5 ** (age / half_life); half-life 2 days, as_of day 5
    train = frame([(5, "u1", "a", 2, 0), (3, "u1", "a", 4, 0), (1, "u2", "b", 1, 1), (5, "u2", "a", 0, 3)])
    m = fit_model(train, day(5), ModelParams(factors=2, iterations=1, half_life_days=2.0), als_weight=0.0)
    assert m.user_ids.tolist() == ["u1", "u2"] and m.item_ids.tolist() == ["a", "b"]
    # u1/a: 2 * 1 + 4 * 0.5 = 4;  u2/b: 1 * 0.5 ** 2 = 0.25;  u2/a: 0 conversions
    np.testing.assert_allclose(m.history.toarray(), [[4.0, 0.0], [0.0, 0.25]])
    # popularity = history column sums + 1e-3 * confidence column sums, confidence = log1p(weight * decay)
    # weights: u1/a day5 = 10, u1/a day3 = 20 (decay 0.5 -> 10), u2/b day1 = 6 (decay 0.25 -> 1.5), u2/a day5 = 3
    pop_a = 4.0 + 1e-3 * (math.log1p(10) + math.log1p(10) + math.log1p(3))
    pop_b = 0.25 + 1e-3 * math.log1p(1.5)
    np.testing.assert_allclose(m.popularity, [pop_a, pop_b], rtol=1e-6)


def test_fit_model_rejects_empty_frame():
    with pytest.raises(ValueError, match="empty"):
        fit_model(frame([]), day(1), ModelParams(factors=2, iterations=1), als_weight=0.0)
