"""A learned-ranker champion is served from lists precomputed at load time: the same lists as direct scoring."""

from __future__ import annotations

import numpy as np
import pytest

from factory_assets.ml.recsys.metrics import top_k
from factory_assets.serving.scorer import ItemFilter, LoadedModel, ModelLoadError, RankedLists, load_alias
from factory_assets_tests.service.conftest import SOURCE, TOKEN, hand_ranker_model, publish
from factory_assets_tests.service.test_reload_and_logs import tamper

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PENALTY = 1e6  # ranker.NON_CANDIDATE_PENALTY, as documented


def direct_top(model, full: np.ndarray, row: int, k: int, blocked: set[str], exclude: bool) -> tuple[list[str], list[float]]:
    """Top-k straight from a dense score row (``full[row]``, or the cold-start row when ``row < 0``)."""
    s = (model.scores(np.array([-1]))[0] if row < 0 else full[row]).copy()
    s[np.isin(model.item_ids, sorted(blocked))] = -np.inf
    if exclude and row >= 0:
        h = model.history
        a, b = h.indptr[row], h.indptr[row + 1]
        s[h.indices[a:b][h.data[a:b] > 0]] = -np.inf
    idx = [int(i) for i in top_k(s[None, :], min(k, len(s)))[0] if i >= 0 and np.isfinite(s[i])]
    return [str(model.item_ids[i]) for i in idx], [float(s[i]) for i in idx]


@pytest.mark.parametrize("blocked", [set(), {"i1", "i7", "i12"}], ids=["no-filter", "filtered"])
def test_precomputed_lists_equal_direct_scoring(blocked):
    model = hand_ranker_model(seed=1, n_users=20, n_items=30, n_candidates=3)
    loaded = LoadedModel(model, 1, "x", "m.json", item_filter=ItemFilter(excluded=frozenset(blocked)))
    assert int(loaded._blocked.sum()) == len(blocked)
    full = model.scores(np.arange(20))  # the whole model at once: the ranker's own batch
    assert loaded.lists is not None and loaded.precompute_bytes > 0
    users = [str(u) for u in model.user_ids] + ["stranger"]
    for k in (1, 5, 6, 10, 30, 1000):  # 5-6 candidates per user: longer lists continue with the rest
        for exclude in (False, True):
            for user, rec in zip(users, loaded.recommend(users, k, exclude)):
                row = int(model.user_rows([user])[0])
                ids, scores = direct_top(model, full, row, k, blocked, exclude)
                assert rec.item_ids == ids and rec.scores == scores, (user, k, exclude)  # exactly, not close
                assert rec.fallback == (row < 0) and len(set(rec.item_ids)) == len(rec.item_ids)
    # one user's full list against single-row direct scoring (BLAS may differ in the last bit: close)
    single = model.scores(model.user_rows(["u4"]))[0]
    rec = loaded.recommend(["u4"], 30)[0]
    np.testing.assert_allclose(rec.scores, np.sort(single[~np.isin(model.item_ids, sorted(blocked))])[::-1], rtol=1e-12)


def test_lists_longer_than_the_candidates_continue_in_popularity_order():
    model = hand_ranker_model()  # 8 items, popularity 8, 7, ..., 1: i0 most popular
    loaded = LoadedModel(model, 1, "x", "m.json")
    rec = loaded.recommend(["u2"], 8)[0]
    candidates = [i for i, s in zip(rec.item_ids, rec.scores) if s > -PENALTY / 2]
    assert 0 < len(candidates) < 8 and rec.item_ids[: len(candidates)] == candidates  # candidates first
    rest = rec.item_ids[len(candidates):]
    assert rest == sorted(set(str(i) for i in model.item_ids) - set(candidates))  # then i0, i1, ... (popularity)
    pops = {f"i{n}": 8.0 - n for n in range(8)}
    assert rec.scores[len(candidates):] == [np.log1p(pops[i]) - PENALTY for i in rest]
    assert len(set(rec.item_ids)) == 8
    # excluding u0's purchases (i0, i3) removes them from both parts
    ids = loaded.recommend(["u0"], 8, exclude_purchased=True)[0].item_ids
    assert len(ids) == 6 and not {"i0", "i3"} & set(ids)


def test_unknown_users_get_the_popularity_fallback_from_a_ranker():
    loaded = LoadedModel(hand_ranker_model(), 1, "x", "m.json")
    rec = loaded.recommend(["newcomer"], 3, exclude_purchased=True)[0]
    assert rec.fallback and rec.item_ids == ["i0", "i1", "i2"]
    assert rec.scores == [float(np.log1p(8.0)), float(np.log1p(7.0)), float(np.log1p(6.0))]


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        LoadedModel(hand_ranker_model(), 1, "x", "m.json").recommend(["u0"], 0)


def test_out_of_process_precompute_is_identical_and_checked(home):
    publish(home, hand_ranker_model(seed=3, n_users=20, n_items=30, n_candidates=3), 1)
    aliases = home / SOURCE / "aliases"
    item_filter = ItemFilter(excluded=frozenset({"i2"}))
    here = load_alias(aliases, item_filter=item_filter)
    child = load_alias(aliases, item_filter=item_filter, out_of_process=True)
    for name, array in here.lists.arrays().items():
        assert array.dtype == child.lists.arrays()[name].dtype and np.array_equal(array, child.lists.arrays()[name]), name
    assert child.precompute_s >= child.lists.seconds > 0
    arrays = here.lists.arrays()
    with pytest.raises(ValueError):
        RankedLists.from_arrays({**arrays, "items": arrays["items"] + 30}, 20, 30)  # positions out of range
    with pytest.raises(ValueError):
        RankedLists.from_arrays(arrays, 21, 30)  # another user count
    with pytest.raises(ValueError):
        LoadedModel(here.model, 1, "x", "m.json", lists=here.lists)  # built with another item filter


def test_a_ranker_with_non_finite_scores_is_refused(home):
    model = hand_ranker_model()
    broken = model.ranker.linear.__class__(model.ranker.linear.coef * np.nan, 0.0, model.ranker.linear.mean, model.ranker.linear.scale)
    from dataclasses import replace

    publish(home, replace(model, ranker=replace(model.ranker, linear=broken)), 1)
    with pytest.raises(ModelLoadError, match="non-finite"):
        load_alias(home / SOURCE / "aliases")
    with pytest.raises(ModelLoadError, match="non-finite"):
        load_alias(home / SOURCE / "aliases", out_of_process=True)


def served(client, user: str, k: int) -> tuple[int, list[str], list[float]]:
    body = client.get(f"/recommendations/{user}", params={"k": k}).json()
    return body["model_version"], [x["item_id"] for x in body["items"]], [x["score"] for x in body["items"]]


def test_reload_recomputes_the_lists_and_a_tampered_ranker_is_refused(home, make_client):
    models = {1: hand_ranker_model(seed=1, n_users=20, n_items=30, n_candidates=3),
              2: hand_ranker_model(seed=2, n_users=20, n_items=30, n_candidates=3)}
    full = {v: m.scores(np.arange(20)) for v, m in models.items()}
    want = {v: {u: direct_top(m, full[v], int(m.user_rows([u])[0]), 10, set(), False) for u in ("u3", "u11")}
            for v, m in models.items()}
    assert want[1] != want[2]
    publish(home, models[1], 1)
    client = make_client(precompute_process=True)  # as `factory serve`: the lists come from a child interpreter
    for user in ("u3", "u11"):
        assert served(client, user, 10) == (1, *want[1][user])
    publish(home, models[2], 2)
    assert client.post("/admin/reload", headers=AUTH).json()["reload"]["champion"]["version"] == 2
    for user in ("u3", "u11"):
        assert served(client, user, 10) == (2, *want[2][user])  # the new model's own precomputed scores
    text = client.get("/metrics").text
    assert 'factory_serve_model_version{role="champion"} 2' in text
    line = next(x for x in text.splitlines() if x.startswith('factory_serve_model_precomputed_bytes{role="champion"}'))
    assert float(line.split()[-1]) > 0
    tamper(publish(home, models[1], 3))
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 409 and "failed verification" in r.json()["reload"]["champion"]["error"]
    assert served(client, "u3", 10) == (2, *want[2]["u3"])  # the old lists keep serving
