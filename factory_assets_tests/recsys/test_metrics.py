"""Tests of factory_assets.ml.recsys.metrics: hand-worked cases and implicit's evaluator as a second method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from factory_assets.ml.recsys.metrics import METRIC_NAMES, ranking_metrics, top_k


def log2(x: float) -> float:
    return math.log(x, 2)


# --------------------------------------------------------------------------- ranking_metrics by hand
def test_three_users_k3_by_hand():
    recommended = np.array(
        [
            [1, 5, 2],  # truth {1, 2}: hits at ranks 1 and 3
            [3, -1, -1],  # truth {3, 7, 8, 9}: hit at rank 1, two pads
            [4, 6, 0],  # truth {9}: no hit
        ]
    )
    truth = [{1, 2}, {3, 7, 8, 9}, {9}]
    report = ranking_metrics(recommended, truth, n_items=10, k=3)

    # precision = hits / k:            2/3, 1/3, 0       -> mean 1/3
    assert report.precision == pytest.approx(1 / 3)
    # recall = hits / |T|:             2/2, 1/4, 0       -> mean (1 + 1/4) / 3 = 5/12
    assert report.recall == pytest.approx(5 / 12)
    # NDCG user 0: DCG = 1/log2(2) + 1/log2(4); IDCG = 2 hits at the top = 1/log2(2) + 1/log2(3)
    ndcg0 = (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3))
    # NDCG user 1: DCG = 1/log2(2); IDCG = min(4, 3) = 3 hits = 1/log2(2) + 1/log2(3) + 1/log2(4)
    ndcg1 = (1 / log2(2)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4))
    ndcg2 = 0.0
    np.testing.assert_allclose(report.per_user_ndcg, [ndcg0, ndcg1, ndcg2])
    assert report.ndcg == pytest.approx((ndcg0 + ndcg1 + ndcg2) / 3)
    # AP user 0: (P@1 + P@3) / min(2, 3) = (1/1 + 2/3) / 2 = 5/6
    # AP user 1: (P@1) / min(4, 3) = 1/3;  AP user 2: 0   -> MAP = (5/6 + 1/3) / 3 = 7/18
    assert report.map == pytest.approx(7 / 18)
    # coverage: distinct shown items {0, 1, 2, 3, 4, 5, 6} (pads excluded) = 7 of 10
    assert report.coverage == pytest.approx(7 / 10)
    assert report.n_users == 3


def test_k10_uses_only_first_k_columns():
    # 12 columns; only the first 10 count.  Item 11 (column 12) is relevant but beyond the cut-off.
    recommended = np.arange(12)[None, :]
    truth = [{0, 9, 11}]
    report = ranking_metrics(recommended, truth, n_items=20, k=10)
    # hits at ranks 1 (item 0) and 10 (item 9)
    assert report.precision == pytest.approx(2 / 10)
    assert report.recall == pytest.approx(2 / 3)
    # DCG = 1/log2(2) + 1/log2(11); IDCG = min(3, 10) = 3 hits = 1/log2(2) + 1/log2(3) + 1/log2(4)
    assert report.ndcg == pytest.approx((1 + 1 / log2(11)) / (1 + 1 / log2(3) + 1 / log2(4)))
    # AP = (1/1 + 2/10) / 3 = 0.4
    assert report.map == pytest.approx(0.4)
    # coverage: items 0..9 shown = 10 of 20
    assert report.coverage == pytest.approx(0.5)
    d = report.as_dict(10)
    assert set(d) == {*METRIC_NAMES, "coverage", "n_users"}
    assert d["map_at_10"] == 0.4 and d["n_users"] == 1


def test_same_lists_at_k1_and_k3():
    recommended = np.array([[7, 2, 3]])
    truth = [{2, 3}]
    # k = 1: item 7 is no hit -> everything 0; coverage 1 item of 8
    r1 = ranking_metrics(recommended, truth, n_items=8, k=1)
    assert (r1.precision, r1.recall, r1.ndcg, r1.map) == (0.0, 0.0, 0.0, 0.0)
    assert r1.coverage == pytest.approx(1 / 8)
    # k = 3: hits at ranks 2, 3; P = 2/3, R = 1, AP = (1/2 + 2/3) / 2 = 7/12
    # NDCG = (1/log2(3) + 1/log2(4)) / (1/log2(2) + 1/log2(3))
    r3 = ranking_metrics(recommended, truth, n_items=8, k=3)
    assert r3.precision == pytest.approx(2 / 3)
    assert r3.recall == pytest.approx(1.0)
    assert r3.map == pytest.approx(7 / 12)
    assert r3.ndcg == pytest.approx((1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3)))


def test_perfect_list_scores_one():
    report = ranking_metrics(np.array([[4, 2, 9]]), [{2, 4, 9}], n_items=10, k=3)
    assert report.precision == pytest.approx(1.0)
    assert report.recall == pytest.approx(1.0)
    assert report.ndcg == pytest.approx(1.0)
    assert report.map == pytest.approx(1.0)


def test_padding_never_counts():
    # A relevant set that (wrongly) contains -1 still gets no credit for pads, and pads are not coverage.
    report = ranking_metrics(np.array([[-1, -1, 5]]), [{-1, 5}], n_items=10, k=3)
    # only the rank-3 item 5 is a hit: P = 1/3, R = 1/2, AP = (1/3) / 2 = 1/6
    assert report.precision == pytest.approx(1 / 3)
    assert report.recall == pytest.approx(1 / 2)
    assert report.map == pytest.approx(1 / 6)
    # NDCG = (1/log2(4)) / (1/log2(2) + 1/log2(3))
    assert report.ndcg == pytest.approx((1 / log2(4)) / (1 + 1 / log2(3)))
    assert report.coverage == pytest.approx(1 / 10)

    all_pads = ranking_metrics(np.full((2, 3), -1), [{1}, {2}], n_items=4, k=3)
    assert (all_pads.precision, all_pads.recall, all_pads.ndcg, all_pads.map, all_pads.coverage) == (0, 0, 0, 0, 0)


def test_errors():
    with pytest.raises(ValueError, match="truth"):
        ranking_metrics(np.array([[1, 2]]), [{1}, {2}], n_items=3, k=2)
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(np.array([[1, 2], [0, 1]]), [{1}, set()], n_items=3, k=2)
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(np.array([[1, 2]]), [{1}], n_items=3, k=0)


def test_no_users_gives_zero_report():
    report = ranking_metrics(np.zeros((0, 10), dtype=np.int64), [], n_items=5, k=10)
    assert report.n_users == 0
    assert len(report.per_user_ndcg) == 0


# --------------------------------------------------------------------------- second method: implicit
def test_agrees_with_implicit_ranking_metrics_at_k():
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k

    rng = np.random.default_rng(0)
    n_users, n_items = 40, 60
    dense = (rng.random((n_users, n_items)) < 0.2).astype(np.float32)
    in_test = rng.random((n_users, n_items)) < 0.3
    train = sp.csr_matrix(np.where(in_test, 0, dense).astype(np.float32))
    test = sp.csr_matrix(np.where(in_test, dense, 0).astype(np.float32))

    model = AlternatingLeastSquares(factors=8, iterations=3, random_state=0, num_threads=1)
    model.fit(train, show_progress=False)

    k = 10
    users = np.flatnonzero(np.diff(test.indptr) > 0)  # implicit evaluates users with test items
    assert len(users) > 20
    ids, _ = model.recommend(users, train[users], N=k, filter_already_liked_items=True)
    truth = [set(test[u].indices.tolist()) for u in users]

    ours = ranking_metrics(np.asarray(ids), truth, n_items, k=k)
    theirs = ranking_metrics_at_k(model, train, test, K=k, show_progress=False)

    assert ours.n_users == len(users)
    assert ours.ndcg == pytest.approx(theirs["ndcg"], rel=1e-9)
    assert ours.map == pytest.approx(theirs["map"], rel=1e-9)
    # implicit's precision is total hits / sum(min(|T|, k)); total hits = our precision * k * n_users
    total_hits = ours.precision * k * ours.n_users
    assert total_hits / sum(min(len(t), k) for t in truth) == pytest.approx(theirs["precision"], rel=1e-9)
    assert ours.ndcg > 0  # the comparison is not between two zeros


# --------------------------------------------------------------------------- top_k
def test_top_k_order_and_stable_ties():
    scores = np.array(
        [
            [0.1, 0.5, 0.5, 0.9, 0.3],  # 0.9 (3), then the tie 0.5 at 1 and 2 -> lower index first
            [2.0, 2.0, 2.0, 2.0, 2.0],  # all tied -> 0, 1, 2
        ]
    )
    out = top_k(scores, 3)
    np.testing.assert_array_equal(out, [[3, 1, 2], [0, 1, 2]])
    assert out.dtype == np.int64


def test_top_k_neg_inf_becomes_pad():
    scores = np.array([[-np.inf, 2.0, -np.inf, 1.0], [-np.inf] * 4])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 3, -1], [-1, -1, -1]])


def test_top_k_k_larger_than_catalogue():
    scores = np.array([[0.2, 0.7, 0.1]])
    out = top_k(scores, 10)
    assert out.shape == (1, 3)
    np.testing.assert_array_equal(out, [[1, 0, 2]])


def test_top_k_negative_finite_scores_are_not_pads():
    np.testing.assert_array_equal(top_k(np.array([[-5.0, -1.0, -np.inf]]), 3), [[1, 0, -1]])
