"""The ranker's long purchase history: values by hand, point-in-time reads, safe round trips, old artefacts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from factory_assets.ml.recsys import artefact, baselines, ranker
from factory_assets.ml.recsys.candidates import LONG_RECENCY_HALF_LIFE_DAYS, fit_sources, history_as_of, long_history
from factory_assets.ml.recsys.evaluation import evaluate
from factory_assets.ml.training import train_candidate
from factory_assets_tests.recsys.test_ranker import SMALL, day, frame, synthetic

USERS, ITEMS = np.array(["u1", "u2"]), np.array(["a", "b", "c"])


def _history():
    # (day index, user, item, conversions); as of day 10 with 8 days the history is days 3..10
    return frame([(1, "u1", "a", 5), (4, "u1", "a", 1), (8, "u1", "a", 2), (9, "u1", "b", 1),
                  (10, "u2", "a", 1), (11, "u2", "c", 7), (6, "u2", "b", 0), (7, "zz", "a", 1)])


def test_long_history_values_by_hand():
    out = long_history(_history(), day(10), 8, USERS, ITEMS)
    days_, conv, rec, due = (out[k].toarray() for k in ("long_days", "long_conversions", "long_recency", "long_due"))
    # u1/a: days 4 and 8 (day 1 is 9 days old, outside the 8 days), 1 + 2 conversions, last 2 days ago,
    # mean gap (6 - 2) / (2 - 1) = 4 days, so due = 2 / 4
    assert days_[0].tolist() == [2, 1, 0] and conv[0].tolist() == [3, 1, 0]
    assert rec[0, 0] == pytest.approx(0.5 ** (2 / LONG_RECENCY_HALF_LIFE_DAYS))
    assert rec[0, 1] == pytest.approx(0.5 ** (1 / LONG_RECENCY_HALF_LIFE_DAYS))
    assert due[0, 0] == pytest.approx(0.5 + 1e-3) and due[0, 1] == pytest.approx(1e-3)  # one day only: no gap
    # u2: day 11 is after as_of, day 6 has no conversion; the unknown user zz has no row
    assert days_[1].tolist() == [1, 0, 0] and rec[1, 0] == pytest.approx(1.0)
    # item popularity counts every converter, also zz who is outside the model's users: a: u1, u2, zz; b: u1
    assert out["long_converters"].tolist() == [3, 1, 0]


def test_rows_outside_the_as_of_range_change_nothing():
    hist = _history()
    later = frame([(11, "u1", "c", 3), (12, "u1", "a", 9), (2, "u2", "b", 4)])  # after as_of, or too old
    base = long_history(hist, day(10), 8, USERS, ITEMS)
    more = long_history(pd.concat([hist, later], ignore_index=True), day(10), 8, USERS, ITEMS)
    for key, value in base.items():
        got = more[key]
        assert np.array_equal(value.toarray() if hasattr(value, "toarray") else value,
                              got.toarray() if hasattr(got, "toarray") else got), key


def test_sources_without_history_have_no_long_arrays():
    src = fit_sources(frame([(0, "u1", "a", 1)]), day(0), np.array(["u1"]), np.array(["a"]))
    assert src.long_days is None and src.long_converters is None
    with_h = fit_sources(frame([(0, "u1", "a", 1)]), day(0), np.array(["u1"]), np.array(["a"]),
                         history=frame([(0, "u1", "a", 1)]), history_days=5)
    assert with_h.long_days.toarray().tolist() == [[1.0]]


@pytest.fixture(scope="module")
def with_history():
    window = synthetic(n_days=28, seed=5)
    older = synthetic(n_days=60, seed=6)  # days 0..59; shifted so that it ends the day before the window
    older = older.assign(day=[d - (day(60) - day(0)) for d in older["day"]])
    history = pd.concat([older, window], ignore_index=True)
    history = history[history["n_conversions"] > 0].reset_index(drop=True)
    params = replace(SMALL, history_days=30)
    return window, history, params, train_candidate(window, (day(0), day(27)), 7, params, history=history)


def test_the_evaluation_model_never_reads_a_test_day(with_history):
    window, history, params, result = with_history
    ev_src = result.eval_model.ranker.sources
    expected = long_history(history, result.split.train_days[1], 30, result.eval_model.user_ids, result.eval_model.item_ids)
    assert np.array_equal(ev_src.long_days.toarray(), expected["long_days"].toarray())
    # and the served model (as of the window's end) does read the test days
    served = long_history(history, day(27), 30, result.served_model.user_ids, result.served_model.item_ids)
    assert np.array_equal(result.served_model.ranker.sources.long_conversions.toarray(), served["long_conversions"].toarray())
    # pairs converted in the test days only: absent from the evaluation model, present in the served one
    end = result.split.train_days[1]
    before = {(r.user_id, r.item_id) for r in history.itertuples() if 0 <= (end - r.day).days < 30}
    test_only = {(r.user_id, r.item_id) for r in history.itertuples() if r.day > end} - before
    known = [(user, item) for user, item in test_only
             if result.eval_model.user_rows([user])[0] >= 0 and item in set(result.eval_model.item_ids.tolist())]
    assert known
    for user, item in known:
        u, i = result.eval_model.user_rows([user])[0], int(np.flatnonzero(result.eval_model.item_ids == item)[0])
        assert ev_src.long_days[u, i] == 0
        su, si = result.served_model.user_rows([user])[0], int(np.flatnonzero(result.served_model.item_ids == item)[0])
        assert result.served_model.ranker.sources.long_days[su, si] >= 1


def test_repeat_history_reference_by_a_second_method(with_history):
    window, history, params, result = with_history
    # second method: count the conversions of days train_end-29 .. train_end per (user, item) by hand
    end = result.split.train_days[1]
    rows = [r for r in history.itertuples() if 0 <= (end - r.day).days < 30]
    assert len(history_as_of(history, end, 30)[0]) == len(rows)
    expected = evaluate(baselines.repeat_scores(history.iloc[[r.Index for r in rows]], result.eval_set.user_ids,
                                                result.eval_set.catalogue), result.eval_set)
    got = result.evaluation()["references"]["repeat_history"]
    assert got["ndcg_at_10"] == pytest.approx(expected.ndcg)
    assert set(result.evaluation()["baselines"]) == {"popularity", "repeat"}


def test_a_ranker_with_long_history_round_trips_and_keeps_its_scores(with_history, tmp_path):
    *_, result = with_history
    model = result.served_model
    path, sha = artefact.save_model(model, tmp_path)
    loaded = artefact.load_model(path, sha)
    rows = np.arange(len(model.user_ids))
    assert np.array_equal(ranker.ranker_scores(loaded, rows), ranker.ranker_scores(model, rows))
    assert "ranker__long_days_data" in artefact.model_arrays(model)
    assert loaded.params.history_days == 30


def test_a_ranker_saved_before_the_long_features_still_scores(with_history):
    *_, result = with_history
    model = result.served_model
    part = model.ranker
    n_old = len(ranker.FEATURES) - 7  # the 21 features of the first ranker
    old = ranker.LinearRanker(part.linear.coef[:n_old], part.linear.intercept, part.linear.mean[:n_old], part.linear.scale[:n_old])
    x, mask = ranker.features(model, part.sources, np.array([0]), part.n_candidates)
    z = (x[0][mask[0]][:, :n_old].astype(np.float64) - old.mean) / old.scale
    assert np.allclose(old.logit(x[0][mask[0]]), z @ old.coef + old.intercept)
    old_model = replace(model, ranker=replace(part, linear=old, sources=replace(part.sources, long_days=None)))
    assert np.isfinite(ranker.ranker_scores(old_model, np.array([0, 1]))).all()
