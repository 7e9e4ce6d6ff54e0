"""Tests of the learned ranker: point-in-time features (no label leakage), safe export round trips, scoring."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from factory_assets.ml.recsys import artefact, ranker
from factory_assets.ml.recsys.candidates import candidate_mask, fit_sources, item_neighbours, rank_of
from factory_assets.ml.recsys.evaluation import build_eval_set, evaluate, model_scores
from factory_assets.ml.recsys.model import ModelParams
from factory_assets.ml.training import ranker_slices, train_candidate

D0 = date(2024, 10, 1)
SMALL = ModelParams(factors=3, iterations=2, search_budget=1, ranker_c=1.0, n_candidates=5, model_kind="ranker")


def day(i: int) -> date:
    return D0 + timedelta(days=i)


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows ``(day index, user, item, n_conversions)``."""
    return pd.DataFrame(
        {
            "day": [day(d) for d, *_ in rows],
            "user_id": [u for _, u, _, _ in rows],
            "item_id": [i for _, _, i, _ in rows],
            "weight": [1.0 + 4.0 * c for *_, c in rows],
            "n_conversions": [c for *_, c in rows],
        }
    )


def synthetic(n_days: int = 28, n_users: int = 40, n_items: int = 25, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        favourites = rng.choice(n_items, 4, replace=False)
        for d in range(n_days):
            if rng.random() < 0.35:
                for i in rng.choice(favourites, 2, replace=False):
                    rows.append((d, f"u{u:02d}", f"i{i:02d}", 1))
                rows.append((d, f"u{u:02d}", f"i{int(rng.integers(n_items)):02d}", int(rng.random() < 0.5)))
    return frame(rows).groupby(["day", "user_id", "item_id"], as_index=False).sum()


@pytest.fixture(scope="module")
def result():
    window = synthetic()
    return train_candidate(window, (day(0), day(27)), 7, SMALL)


# --- leakage -------------------------------------------------------------------------------------------------


def test_label_day_conversion_never_in_features():
    # u1 buys "a" on days 0..9 and "new" only on day 12 (a label day of the slice ending on day 13).
    rows = [(d, "u1", "a", 1) for d in range(10)] + [(d, "u2", "a", 1) for d in range(0, 14, 2)]
    rows += [(d, "u2", "b", 1) for d in range(1, 14, 3)] + [(12, "u1", "new", 1), (12, "u1", "b", 1)]
    train = frame(rows)
    slices = ranker_slices(train, (day(0), day(13)), holdout_days=3, offsets=(0,))
    assert len(slices) == 1
    sl = slices[0]
    assert max(sl.rows["day"]) < day(11)  # features stop before the label days 11..13
    assert sl.as_of == day(10)
    u1 = list(sl.label_users).index("u1")
    assert sl.label_items[u1] == {"b"}  # "new" is not in the inner catalogue: never a label
    model, sources = ranker.fit_base(sl.rows, sl.as_of, replace(SMALL, factors=2))
    assert "new" not in model.item_ids.tolist()
    x, _ = ranker.features(model, sources, model.user_rows(["u1"]), 5)
    b = model.item_ids.tolist().index("b")
    f = {name: x[0, b, k] for k, name in enumerate(ranker.FEATURES)}
    assert f["seen"] == 0 and f["hist_log"] == 0 and f["recency"] == 0 and f["n_days_log"] == 0 and f["share"] == 0
    # and the label rows do not move any feature: the same slice without them gives the same features
    x_without, _ = ranker.features(*ranker.fit_base(sl.rows, sl.as_of, replace(SMALL, factors=2)), model.user_rows(["u1"]), 5)
    np.testing.assert_array_equal(x, x_without)


def test_features_do_not_change_when_label_days_change():
    window = synthetic(n_days=21)
    base = ranker_slices(window, (day(0), day(20)), 7, offsets=(0,))[0]
    shuffled = window.copy()
    later = pd.to_datetime(shuffled["day"]).dt.date >= day(14)
    shuffled.loc[later, "item_id"] = "i00"  # rewrite every label-day row
    other = ranker_slices(shuffled, (day(0), day(20)), 7, offsets=(0,))[0]
    pd.testing.assert_frame_equal(base.rows, other.rows)
    m1, s1 = ranker.fit_base(base.rows, base.as_of, SMALL)
    m2, s2 = ranker.fit_base(other.rows, other.as_of, SMALL)
    rows = np.arange(len(m1.user_ids))
    np.testing.assert_array_equal(ranker.features(m1, s1, rows, 5)[0], ranker.features(m2, s2, rows, 5)[0])


def test_sources_refuse_rows_after_as_of():
    train = frame([(0, "u", "a", 1), (5, "u", "b", 1)])
    with pytest.raises(ValueError, match="future"):
        fit_sources(train, day(4), np.array(["u"]), np.array(["a", "b"]))


# --- sources and candidates by hand --------------------------------------------------------------------------


def test_sources_by_hand():
    train = frame([(0, "u1", "a", 1), (3, "u1", "a", 1), (3, "u1", "b", 0), (1, "u2", "a", 1), (3, "u2", "c", 1)])
    src = fit_sources(train, day(3), np.array(["u1", "u2"]), np.array(["a", "b", "c"]), recency_half_life_days=1.0)
    np.testing.assert_allclose(src.recency.toarray(), [[1.0, 1.0, 0.0], [0.25, 0.0, 1.0]])
    np.testing.assert_array_equal(src.converters, [2, 0, 1])
    np.testing.assert_array_equal(src.days_count.toarray(), [[2, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(src.user_days, [2, 2])
    np.testing.assert_allclose(src.item_repeat_rate, [(1 + 0.1) / 3, 0.1 / 1, 0.1 / 2])


def test_item_neighbours_cosine_top_k():
    import scipy.sparse as sp

    binary = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.float32))
    nb = item_neighbours(binary, 1).toarray()
    assert nb[0, 1] == pytest.approx(1.0) and nb[0, 2] == 0 and nb[1, 0] == pytest.approx(1.0)
    assert nb[2].argmax() in (0, 1) and (nb > 0).sum(axis=1).tolist() == [1, 1, 1]


def test_rank_and_candidate_mask():
    ranks = rank_of(np.array([[0.1, 0.9, 0.5], [3.0, 3.0, 1.0]]))
    np.testing.assert_array_equal(ranks, [[2, 0, 1], [0, 1, 2]])
    seen = np.array([[True, False, False], [False, False, False]])
    np.testing.assert_array_equal(candidate_mask([ranks], seen, 1), [[True, True, False], [True, False, False]])


# --- scoring and metrics -------------------------------------------------------------------------------------


def _hand_model():
    """A ranker model whose logit is 2 * seen (all other coefficients 0)."""
    train = frame([(0, "u1", "a", 1), (0, "u2", "b", 1), (1, "u2", "c", 1), (1, "u3", "c", 1), (1, "u1", "c", 0)])
    model, sources = ranker.fit_base(train, day(1), replace(SMALL, factors=2))
    coef = np.zeros(len(ranker.FEATURES))
    coef[ranker.FEATURES.index("seen")] = 2.0
    lin = ranker.LinearRanker(coef=coef, intercept=0.0, mean=np.zeros(len(coef)), scale=np.ones(len(coef)))
    return ranker.attach(model, sources, lin, replace(SMALL, n_candidates=0)), train


def test_scores_by_hand_candidates_and_cold_start():
    model, _ = _hand_model()
    scores = model.scores(model.user_rows(["u1", "nobody"]))
    items = model.item_ids.tolist()  # a, b, c
    # u1 saw a and c (candidates, logit 2); b is no candidate (n_candidates=0): log1p(pop) - 1e6
    assert scores[0, items.index("a")] == 2.0 and scores[0, items.index("c")] == 2.0
    assert scores[0, items.index("b")] < -1e5
    # the cold-start fallback: recency-weighted popularity, log1p
    np.testing.assert_allclose(scores[1], np.log1p(model.popularity.astype(np.float64)))


def test_metrics_on_hand_built_case():
    model, train = _hand_model()
    test = frame([(2, "u1", "a", 1), (2, "u2", "a", 1)])
    eval_set = build_eval_set(train, test)
    assert eval_set.user_ids.tolist() == ["u1", "u2"]
    report = evaluate(model_scores(model, eval_set), eval_set)
    # u1: a is in its history (rank 1 or 2 of two tied candidates a, c; ties by column: a first) -> NDCG 1
    # u2: candidates b, c (seen); a is not a candidate -> rank 3 -> NDCG 1/log2(4) = 0.5
    np.testing.assert_allclose(report.per_user_ndcg, [1.0, 0.5])
    assert report.ndcg == pytest.approx(0.75)


# --- export / import ------------------------------------------------------------------------------------------


def test_linear_export_import_reproduces_scores_exactly(result, tmp_path):
    served = result.served_model
    assert served.ranker is not None and isinstance(served.ranker.linear, ranker.LinearRanker)
    path, digest = artefact.save_model(served, tmp_path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert "ranker__coef.npy" in names and all(n.endswith(".npy") for n in names)
    with np.load(path, allow_pickle=False) as npz:  # no member needs pickle
        assert all(npz[n].dtype != object for n in npz.files)
    loaded = artefact.load_model(path, digest)
    rows = np.arange(len(served.user_ids))
    np.testing.assert_array_equal(loaded.scores(rows), served.scores(rows))
    np.testing.assert_array_equal(loaded.ranker.linear.coef, served.ranker.linear.coef)
    assert artefact.npz_bytes(artefact.model_arrays(loaded)) == artefact.npz_bytes(artefact.model_arrays(served))


def test_tree_export_matches_sklearn_and_round_trips(tmp_path):
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4))
    x[::17, 2] = np.nan
    y = ((x[:, 0] + np.nan_to_num(x[:, 2]) * x[:, 1]) > 0).astype(int)
    hgb = HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=7, random_state=0).fit(x, y)
    trees = ranker.TreeRanker.from_sklearn(hgb)
    np.testing.assert_allclose(trees.logit(x), hgb.decision_function(x), rtol=1e-12, atol=1e-12)
    model, _ = _hand_model()
    tree_model = replace(model, ranker=replace(model.ranker, linear=trees))
    path, digest = artefact.save_model(tree_model, tmp_path)
    loaded = artefact.load_model(path, digest)
    assert isinstance(loaded.ranker.linear, ranker.TreeRanker)
    np.testing.assert_array_equal(loaded.ranker.linear.logit(x), trees.logit(x))


def test_blend_artefact_unchanged_without_ranker(tmp_path):
    model, _ = _hand_model()
    blend = replace(model, ranker=None)
    arrays = artefact.model_arrays(blend)
    assert not any(k.startswith("ranker__") for k in arrays)
    path, digest = artefact.save_model(blend, tmp_path)
    assert artefact.load_model(path, digest).ranker is None


# --- the factory's candidate ---------------------------------------------------------------------------------


def test_train_candidate_ranker_summary(result):
    ev = result.evaluation()
    assert set(ev["baselines"]) == {"popularity", "repeat"}
    assert set(ev["references"]) == {"als"}
    assert result.eval_model.params.model_kind == "ranker"
    assert result.tuning.trace and all("validation_ndcg_at_10" in t for t in result.tuning.trace)
    assert max(result.eval_model.user_ids) <= max(result.served_model.user_ids)
    # the eval model never saw a test day: its sources end on the last training day
    assert result.split.train_days[1] == day(20)


def test_ranker_is_deterministic():
    window = synthetic(seed=9)
    a = train_candidate(window, (day(0), day(27)), 7, SMALL)
    b = train_candidate(window, (day(0), day(27)), 7, SMALL)
    assert artefact.npz_bytes(artefact.model_arrays(a.served_model)) == artefact.npz_bytes(artefact.model_arrays(b.served_model))


def test_cold_start_users_counted_with_the_fallback():
    window = synthetic()
    extra = frame([(24, "newcomer", "i01", 1), (25, "newcomer2", "i02", 1), (25, "newcomer2", "zzz", 1)])
    result = train_candidate(pd.concat([window, extra], ignore_index=True), (day(0), day(27)), 7, SMALL)
    model = result.evaluation()["model"]
    assert model["cold_start_users"] == 2  # "zzz" is outside the catalogue, newcomer2 still counts through i02
    assert "newcomer" not in result.eval_set.user_ids.tolist()
    cold = result.cold_start
    pop_order = np.argsort(-np.log1p(result.eval_model.popularity.astype(np.float64)), kind="stable")
    assert model["cold_start_ndcg_at_10"] == pytest.approx(cold.ndcg)
    assert cold.n_users == 2 and len(pop_order) == len(result.eval_model.item_ids)
