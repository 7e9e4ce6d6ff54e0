"""Cost bounds of a candidate at scale: the hash sample of users, candidate-only training rows, and the warm start
of the ranker's search from the champion (issue "Scale")."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd
import pytest

from factory_assets.ml.candidate_day import FULL_SEARCH_EVERY_DAYS, MODEL_CODE_VERSION, search_plan
from factory_assets.ml.recsys import ranker
from factory_assets.ml.recsys.evaluation import EvalSet, sample_users
from factory_assets.ml.recsys.metrics import ranking_metrics, top_k
from factory_assets.ml.recsys.model import ModelParams
from factory_assets.ml.training import ranker_slices, train_candidate
from factory_assets_tests.recsys.test_ranker import SMALL, day, synthetic


# --- the users' sample ------------------------------------------------------------------------------------------
def eval_set(n: int) -> EvalSet:
    users = np.array(sorted(f"user-{i:05d}" for i in range(n)), dtype=str)
    return EvalSet(catalogue=np.array(["a", "b"]), user_ids=users, truth=[{i % 2} for i in range(n)])


def test_the_sample_keeps_everyone_under_the_cap_and_the_smallest_hashes_over_it():
    small = eval_set(50)
    assert sample_users(small, 50) is small and sample_users(small, 0) is small
    full = eval_set(1000)
    got = sample_users(full, 100)
    # by a second method: hash each id on its own and take the 100 smallest
    hashes = {u: int(pd.util.hash_array(np.array([u], dtype=object))[0]) for u in full.user_ids.tolist()}
    expected = sorted(sorted(hashes, key=hashes.get)[:100])
    assert got.user_ids.tolist() == expected
    assert [got.truth[k] for k in range(100)] == [{int(u[-5:]) % 2} for u in expected]  # truth follows its user
    # the same users whatever else is in the population: a user's inclusion depends on its own id only
    wider = sample_users(eval_set(2000), 200)
    assert set(got.user_ids) <= set(wider.user_ids)


def test_label_slices_are_capped_and_the_sizes_recorded():
    window = synthetic(n_users=60)
    everyone = ranker_slices(window, (day(0), day(27)), 7)
    assert len(everyone) == 3 and all(len(sl.label_users) > 10 for sl in everyone)
    sampled: list = []
    slices = ranker_slices(window, (day(0), day(27)), 7, max_label_users=10, sampled=sampled)
    # the newest slice had more label users than the cap: it is sampled, and the older slices are not built
    assert len(slices) == len(sampled) == 1 and slices[0].as_of == everyone[0].as_of
    assert sampled[0] == {"as_of": everyone[0].as_of.isoformat(), "label_users": len(everyone[0].label_users),
                          "label_users_sampled": 10}
    assert set(slices[0].label_users) <= set(everyone[0].label_users) and len(slices[0].label_items) == 10
    # a cap that does not bind keeps every slice and every user
    assert [len(sl.label_users) for sl in ranker_slices(window, (day(0), day(27)), 7, max_label_users=10_000)] == \
        [len(sl.label_users) for sl in everyone]


def test_the_caps_are_recorded_and_do_not_change_a_model_under_them():
    window = synthetic()
    base = train_candidate(window, (day(0), day(27)), 7, SMALL)
    assert base.sampling["eval_users"] == base.sampling["eval_users_sampled"] == len(base.eval_set.user_ids)
    capped = train_candidate(window, (day(0), day(27)), 7, replace(SMALL, max_eval_users=5))
    assert len(capped.eval_set.user_ids) == capped.sampling["eval_users_sampled"] == 5
    assert capped.sampling["eval_users"] == len(base.eval_set.user_ids)
    assert capped.model_report.n_users == 5
    # the defaults are not written into params: a model under the caps keeps the bytes it had before them
    assert "max_eval_users" not in SMALL.as_dict() and replace(SMALL, max_eval_users=7).as_dict()["max_eval_users"] == 7


# --- the search's validation without the dense matrices -----------------------------------------------------------
def test_validation_ndcg_from_candidate_rows_equals_the_dense_ranking():
    window = synthetic()
    (sl, *_) = ranker_slices(window, (day(0), day(27)), 7)
    model, sources = ranker.fit_base(sl.rows, sl.as_of, SMALL)
    col = {item: j for j, item in enumerate(model.item_ids.tolist())}
    truth = [{col[i] for i in items if i in col} for items in sl.label_items]
    ex = ranker.build_examples(model, sources, sl.label_users, truth, SMALL.n_candidates)
    linear = ranker.fit_linear(ex.x, ex.y, 1.0, 0)
    users = np.arange(0, len(sl.label_users), 2)
    # reference: the whole catalogue's features per user, non-candidates at -penalty, ranked densely
    x, mask = ranker.features(model, sources, model.user_rows(sl.label_users), SMALL.n_candidates)
    dense = np.full(mask.shape, -ranker.NON_CANDIDATE_PENALTY)
    dense[mask] = linear.logit(x[mask])
    expected = ranking_metrics(top_k(dense[users], 10), [truth[u] for u in users], len(model.item_ids), 10).ndcg
    assert ranker._ndcg(linear, ex, users, len(model.item_ids)) == pytest.approx(expected, abs=1e-12)
    assert len(ex.x) == int(mask.sum())  # only candidates are kept
    assert np.array_equal(ex.col, np.nonzero(mask)[1])


# --- warm start or full search -------------------------------------------------------------------------------
SEARCHING = ModelParams()  # the defaults: ranker, search on
DAY = date(2024, 11, 20)


def champion(searched_on: str = "2024-11-18", mode: str = "full", **params) -> dict:
    chosen = {"factors": 32, "regularization": 0.1, "alpha": 5.0, "iterations": 15, "ranker_c": 1.0}
    return {"code_version": MODEL_CODE_VERSION, "search": {"mode": mode, "searched_on": searched_on},
            "params": {**SEARCHING.as_dict(), **chosen, "search_budget": 0, **params}}


def test_a_warm_start_takes_the_champions_choice_and_searches_nothing():
    params, search = search_plan(SEARCHING, DAY, champion(), champion_version=4)
    assert search == {"mode": "warm_start", "searched_on": "2024-11-18", "from_version": 4,
                      "reason": "the parameters of champion v4, searched on 2024-11-18"}
    assert (params.factors, params.regularization, params.alpha, params.ranker_c, params.search_budget) == (32, 0.1, 5.0, 1.0, 0)
    # neither the thread count (same factors) nor the caps ask for a search
    assert search_plan(SEARCHING, DAY, champion(num_threads=1, max_eval_users=7), 4)[1]["mode"] == "warm_start"
    # a chain of warm starts keeps the day of the full search it came from
    assert search_plan(SEARCHING, DAY, champion(mode="warm_start"), 5)[1]["searched_on"] == "2024-11-18"


@pytest.mark.parametrize("case, expected", [
    ({"manifest": None}, "no champion"),
    ({"params": replace(SEARCHING, regime_start="2024-11-11")}, "behaviour drift since 2024-11-11 (the champion's: none)"),
    ({"manifest": champion(regime_start="2024-11-11")}, "drift regime (2024-11-11) left the window"),
    ({"params": replace(SEARCHING, regime_start="2024-11-15"), "manifest": champion(regime_start="2024-11-11")},
     "behaviour drift since 2024-11-15 (the champion's: 2024-11-11)"),
    ({"manifest": {**champion(), "code_version": "1"}}, "model code version 1 -> "),
    ({"tainted": True}, "trained on data since erased"),
    ({"manifest": champion(model_kind="blend")}, "records no ranker search"),
    ({"manifest": champion(n_candidates=20)}, "parameters changed since the champion: n_candidates"),
    ({"manifest": champion(searched_on="2024-11-21")}, "searched on 2024-11-21, not before this day"),  # a backtest
    ({"manifest": champion(searched_on=DAY.isoformat())}, "not before this day"),  # a re-run of the searching day
    ({"manifest": champion(searched_on=(DAY.replace(day=DAY.day - FULL_SEARCH_EVERY_DAYS)).isoformat())}, "days old"),
    ({"warm": False}, "warm start off"),
])
def test_a_full_search_when_something_asks_for_it(case, expected):
    params_in = case.get("params", SEARCHING)
    params, search = search_plan(params_in, DAY, case.get("manifest", champion()), 4, case.get("tainted", False),
                                 case.get("warm", True))
    assert search["mode"] == "full" and expected in search["reason"] and search["searched_on"] == DAY.isoformat()
    assert params == params_in


def test_the_same_drift_regime_as_the_champions_warm_starts():
    drifting = replace(SEARCHING, regime_start="2024-11-11")
    params, search = search_plan(drifting, DAY, champion(regime_start="2024-11-11"), 4)
    assert search["mode"] == "warm_start" and params.regime_start == "2024-11-11" and params.search_budget == 0


def test_fixed_parameters_are_never_replaced():
    fixed = replace(SEARCHING, ranker_c=0.1)
    assert search_plan(fixed, DAY, champion(), 4) == (fixed, {"mode": "fixed", "searched_on": None, "from_version": None,
                                                              "reason": "the parameters are fixed by the run config (no search)"})


def test_als_factors_do_not_depend_on_the_thread_count():
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    matrix = sp.random(400, 120, density=0.05, random_state=1, format="csr", dtype=np.float32)
    matrix.data = np.log1p(rng.random(matrix.nnz).astype(np.float32) * 5)
    factors = []
    for threads in (1, 2):
        als = AlternatingLeastSquares(factors=8, iterations=4, random_state=3, num_threads=threads,
                                      calculate_training_loss=False, use_gpu=False)
        with threadpool_limits(limits=1, user_api="blas"):
            als.fit(matrix, show_progress=False)
        factors.append((als.user_factors.tobytes(), als.item_factors.tobytes()))
    assert factors[0] == factors[1]


def test_a_rerun_of_every_day_records_the_search_it_recorded_first():
    """A first run of days D, D+1, D+2 then the same days again with the last champion: the manifests' ``search``
    (and so the manifests and registry versions) come out the same."""
    from datetime import timedelta

    from factory_assets.ml.candidate_day import manifest_search

    days = [DAY + timedelta(days=i) for i in range(3)]
    first, champ = [], None
    for i, d in enumerate(days):
        params, search = search_plan(SEARCHING, d, champ, i or None)
        first.append(manifest_search(search))
        champ = {"code_version": MODEL_CODE_VERSION, "search": manifest_search(search),
                 "params": {**params.as_dict(), "ranker_c": params.ranker_c or 0.1}}
    assert [s["mode"] for s in first] == ["full", "warm_start", "warm_start"]
    again = [manifest_search(search_plan(SEARCHING, d, champ, 3)[1]) for d in days]
    assert again == first == [{"mode": m, "searched_on": DAY.isoformat()} for m in ("full", "warm_start", "warm_start")]
