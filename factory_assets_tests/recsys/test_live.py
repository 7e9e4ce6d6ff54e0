"""The live path's pure code (``recsys.live``): the fold-in against the closed form and against a full refit, the
live scores' terms, and the state file.  No Dagster, no service.

The data: 40 users x 30 items in three blocks of ten, three days; each user interacts mostly (85 %) inside block
``user % 3``.  "Today", every fourth user (10 users) moves to the next block: eight heavy events there.  Fits are
seeded and single-threaded, so every number below is reproducible bit for bit.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from factory_assets.ml.recsys.artefact import model_arrays, npz_bytes
from factory_assets.ml.recsys.live import (
    LiveState,
    build_live_state,
    confidence_rows,
    fold_in,
    live_scores,
    load_state,
    save_state,
    state_arrays,
)
from factory_assets.ml.recsys.model import ModelParams, fit_model

N_USERS, N_ITEMS, BLOCK = 40, 30, 10
DAYS = [date(2024, 11, 1) + timedelta(days=i) for i in range(3)]
TODAY = date(2024, 11, 4)
AS_OF = datetime(2024, 11, 4, 15, 0, tzinfo=timezone.utc)
PARAMS = ModelParams(factors=8, iterations=15, seed=7, num_threads=1, model_kind="blend")
COLUMNS = ["day", "user_id", "item_id", "weight", "n_conversions"]


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS).groupby(["day", "user_id", "item_id"], as_index=False).sum()


def window_frame(seed: int = 0) -> pd.DataFrame:
    """``user_item_daily`` rows of the three days (weights 1 view / 3 cart / 5 purchase, a purchase converts)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        for day in DAYS:
            for _ in range(4):
                item = (u % 3) * BLOCK + rng.integers(BLOCK) if rng.random() > 0.15 else rng.integers(N_ITEMS)
                weight = float(rng.choice([1.0, 3.0, 5.0]))
                rows.append((day, f"u{u:02d}", f"i{item:02d}", weight, int(weight == 5.0)))
    return _frame(rows)


def shifted(user: str) -> int:
    """The block a shifted user moves to today."""
    return (int(user[1:]) % 3 + 1) % 3


def today_frame(seed: int = 1) -> pd.DataFrame:
    """Today's rows: every fourth user, eight carts or purchases in the next block."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(0, N_USERS, 4):
        for _ in range(8):
            weight = float(rng.choice([3.0, 5.0]))
            rows.append((TODAY, f"u{u:02d}", f"i{shifted(f'u{u:02d}') * BLOCK + rng.integers(BLOCK):02d}", weight,
                         int(weight == 5.0)))
    return _frame(rows)


@pytest.fixture(scope="module")
def data():
    window, today = window_frame(), today_frame()
    return {"window": window, "today": today, "model": fit_model(window, DAYS[-1], PARAMS, als_weight=1.0)}


def status(drifted: bool = False) -> dict:
    return {"day": TODAY, "as_of": AS_OF, "n_events": 80, "data_version": "d" * 64, "psi_categories": None,
            "drifted": drifted}


def state_of(data, today: pd.DataFrame | None = None, **changes) -> LiveState:
    today = data["today"] if today is None else today
    window = data["window"][data["window"]["user_id"].isin(today["user_id"])]
    state = build_live_state(data["model"], 3, "s" * 64, status(), today, window, pd.Series(dtype=float), None)
    return replace(state, **changes) if changes else state


# --------------------------------------------------------------------------------------------- fold-in


def test_confidence_rows_are_what_a_refit_today_would_use(data):
    """One (user, item) worked out by hand: sum over its days of log1p(weight * 0.5 ** (age / half-life))."""
    rows = pd.concat([data["window"], data["today"]], ignore_index=True)
    user = "u00"
    conf = confidence_rows(rows[rows["user_id"] == user], TODAY, data["model"], np.asarray([user]))
    mine = rows[rows["user_id"] == user]
    item = mine.groupby("item_id")["weight"].count().idxmax()  # an item on several days
    expected = sum(np.log1p(r.weight * 0.5 ** ((TODAY - r.day).days / PARAMS.half_life_days))
                   for r in mine[mine["item_id"] == item].itertuples())
    col = int(np.searchsorted(data["model"].item_ids, item))
    assert conf[0, col] == pytest.approx(expected, rel=1e-6)
    assert conf.nnz == mine["item_id"].nunique()


def test_fold_in_is_the_closed_form_least_squares_solve(data):
    """x = (Y'Y + Y'(C - I)Y + reg I)^-1 Y'C p with C = alpha * confidence on the observed items (Hu et al. eq. 4),
    solved here in float64 with numpy, for users with and without an event today."""
    model = data["model"]
    rows = pd.concat([data["window"], data["today"]], ignore_index=True)
    users = np.asarray(["u00", "u01", "u04", "u13"])
    conf = confidence_rows(rows[rows["user_id"].isin(users)], TODAY, model, users)
    folded = fold_in(model, conf)
    Y = model.item_factors.astype(np.float64)
    for j in range(len(users)):
        c = PARAMS.alpha * conf[j].toarray().ravel().astype(np.float64)
        seen = c > 0
        A = Y.T @ Y + (Y[seen].T * (c[seen] - 1.0)) @ Y[seen] + PARAMS.regularization * np.eye(Y.shape[1])
        b = Y[seen].T @ c[seen]  # p = 1 on the observed items
        np.testing.assert_allclose(folded[j], np.linalg.solve(A, b), rtol=1e-4, atol=1e-6)
    assert fold_in(model, sp.csr_matrix((0, N_ITEMS), dtype=np.float32)).shape == (0, PARAMS.factors)


def _top10(vector: np.ndarray, item_factors: np.ndarray) -> set[int]:
    return set(np.argsort(-(vector @ item_factors.T), kind="stable")[:10].tolist())


def test_fold_in_follows_a_full_refit_on_window_and_today(data):
    """The folded vectors of today's users against a refit on window + today (same parameters and seed).

    Measured over 20 data seeds (``window_frame(s)``, ``today_frame(s + 1)``; this test is seed 0): mean top-10
    Jaccard folded vs refit 0.62 (worst seed 0.56; seed 0: 0.60), the stale nightly vector vs refit 0.45 (best
    0.50; seed 0: 0.46), the gap at least 0.09 (mean 0.18); the share of the top-10 in the block the user moved to:
    refit 0.45, folded 0.43 (worst 0.37, never more than 0.07 from the refit's), stale at most 0.12.  The ceiling is
    not 1: two refits with different seeds agree at 0.85 (inside a block near-tied items swap places), and the
    nightly item factors have not seen today's co-occurrences.  Thresholds leave a margin below the worst seed.
    """
    model, window, today = data["model"], data["window"], data["today"]
    users = np.sort(today["user_id"].unique())
    rows = pd.concat([window, today], ignore_index=True)
    folded = fold_in(model, confidence_rows(rows[rows["user_id"].isin(users)], TODAY, model, users))
    refit = fit_model(rows, TODAY, PARAMS, als_weight=1.0)

    def jaccard(a: set, b: set) -> float:
        return len(a & b) / len(a | b)

    def new_block_share(top: set, user: str) -> float:
        return float(np.mean([i // BLOCK == shifted(user) for i in top]))

    live, stale, share = [], [], {"folded": [], "refit": [], "stale": []}
    for j, user in enumerate(users):
        want = _top10(refit.user_factors[np.searchsorted(refit.user_ids, user)], refit.item_factors)
        got = _top10(folded[j], model.item_factors)
        old = _top10(model.user_factors[np.searchsorted(model.user_ids, user)], model.item_factors)
        live.append(jaccard(got, want))
        stale.append(jaccard(old, want))
        for name, top in (("folded", got), ("refit", want), ("stale", old)):
            share[name].append(new_block_share(top, user))
    assert len(users) == 10
    assert np.mean(live) >= 0.5, live
    assert np.mean(live) >= np.mean(stale) + 0.05, (live, stale)
    assert np.mean(share["folded"]) >= 0.3 and np.mean(share["stale"]) <= 0.2, share
    assert abs(np.mean(share["folded"]) - np.mean(share["refit"])) <= 0.15, share


# --------------------------------------------------------------------------------------------- live scores


def test_without_active_users_live_scores_are_the_models_exactly(data):
    model, state = data["model"], state_of(data)
    rows = np.asarray([1, 2, 3, -1, 39])  # u01 u02 u03 (no event today), a stranger, u39
    live_rows = state.rows(model.user_ids[[1, 2, 3]].tolist() + ["stranger", "u39"])
    assert (live_rows == -1).all()
    np.testing.assert_array_equal(live_scores(model, rows, state, live_rows), model.scores(rows))
    np.testing.assert_array_equal(live_scores(model, rows, None, None), model.scores(rows))


def test_a_purchase_today_adds_its_history_term_and_nothing_else(data):
    """The same state with and without u00's conversions of today: the scores differ exactly by
    ``log1p(h + c) - log1p(h)`` on those items (h: the window's history, c: today's conversions), 0 elsewhere."""
    model, state = data["model"], state_of(data)
    row, live_row = np.asarray([0]), state.rows(["u00"])
    assert live_row[0] >= 0
    bought = state.conversions[live_row[0]].toarray().ravel().astype(np.float64)
    assert (bought > 0).any()
    without = replace(state, conversions=sp.csr_matrix(state.conversions.shape, dtype=np.float32))
    delta = live_scores(model, row, state, live_row)[0] - live_scores(model, row, without, live_row)[0]
    history = model.history[0].toarray().ravel().astype(np.float64)
    np.testing.assert_allclose(delta, np.log1p(history + bought) - np.log1p(history), rtol=1e-12, atol=1e-12)
    assert (delta[bought == 0] == 0).all() and (delta[bought > 0] > 0).all()


def test_todays_weight_and_the_folded_vector_move_the_active_user(data):
    model, state = data["model"], state_of(data)
    user = "u00"
    scores = live_scores(model, np.asarray([0]), state, state.rows([user]))[0]
    nightly = model.scores(np.asarray([0]))[0]
    top_live = set(np.argsort(-scores, kind="stable")[:10].tolist())
    top_nightly = set(np.argsort(-nightly, kind="stable")[:10].tolist())
    # today's block gains places in the list (the nightly list is the user's old block)
    in_block = lambda top: sum(i // BLOCK == shifted(user) for i in top)  # noqa: E731
    assert in_block(top_live) > in_block(top_nightly)


def test_the_trend_is_added_to_every_row(data):
    model = data["model"]
    trend = np.linspace(-0.5, 0.5, N_ITEMS).astype(np.float32)
    state = state_of(data)
    trended = replace(state, trend=trend)
    users = ["u00", "u01", "stranger"]  # active, inactive, unknown
    rows, live_rows = model.user_rows(users), trended.rows(users)
    got = live_scores(model, rows, trended, live_rows)
    np.testing.assert_allclose(got - live_scores(model, rows, state, live_rows), np.tile(trend.astype(np.float64), (3, 1)),
                               rtol=0, atol=1e-12)
    inactive = live_scores(model, rows[1:], trended, live_rows[1:])  # nobody active: nightly + trend
    np.testing.assert_array_equal(inactive, model.scores(rows[1:]) + trend.astype(np.float64)[None, :])


def test_a_user_new_today_gets_a_folded_vector_not_the_fallback(data):
    model = data["model"]
    newcomer = pd.DataFrame({"day": [TODAY] * 3, "user_id": ["zz-new"] * 3, "item_id": ["i20", "i21", "i22"],
                             "weight": [5.0, 5.0, 3.0], "n_conversions": [1, 1, 0]})
    state = state_of(data, pd.concat([data["today"], newcomer], ignore_index=True))
    live_row = state.rows(["zz-new"])
    assert live_row[0] >= 0 and np.any(state.factors[live_row[0]] != 0)
    got = live_scores(model, np.asarray([-1]), state, live_row)[0]
    assert not np.array_equal(got, model.scores(np.asarray([-1]))[0])
    assert {20, 21, 22} <= set(np.argsort(-got, kind="stable")[:5].tolist())


# --------------------------------------------------------------------------------------------- the state file


def test_state_round_trip_is_byte_reproducible(data, tmp_path):
    state = state_of(data, trend=np.linspace(0, 1, N_ITEMS).astype(np.float32))
    first, second = tmp_path / "a" / "state.npz", tmp_path / "b" / "state.npz"
    digest = save_state(state, first)
    assert save_state(state, second) == digest and first.read_bytes() == second.read_bytes()
    loaded = load_state(first)
    assert save_state(loaded, tmp_path / "c.npz") == digest  # what is read writes the same bytes again
    assert loaded.describe() == state.describe() and loaded.model_sha256 == state.model_sha256
    np.testing.assert_array_equal(loaded.user_ids, state.user_ids)
    np.testing.assert_array_equal(loaded.factors, state.factors)
    np.testing.assert_array_equal(loaded.trend, state.trend)
    for name in ("today", "conversions"):
        assert (getattr(loaded, name) != getattr(state, name)).nnz == 0
    assert loaded.as_of == AS_OF and loaded.day == TODAY
    with zipfile.ZipFile(first) as archive:  # plain arrays, never a pickle
        assert all(name.endswith(".npy") for name in archive.namelist())


def test_load_state_refuses_what_is_not_a_live_state(data, tmp_path):
    model_file = tmp_path / "model.npz"
    model_file.write_bytes(npz_bytes(model_arrays(data["model"])))
    with pytest.raises(ValueError, match="no meta_json"):  # a model artefact
        load_state(model_file)
    other = tmp_path / "other.npz"
    other.write_bytes(npz_bytes({"meta_json": np.asarray(['{"format": "something.else/1"}'])}))
    with pytest.raises(ValueError, match="not a live state"):
        load_state(other)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="is not an .npz file"):  # not numpy's advice to allow pickle
        load_state(garbage)
    pickled = io.BytesIO()
    np.savez(pickled, meta_json=np.asarray([{"format": "factory_assets.live/1"}], dtype=object))
    (tmp_path / "pickled.npz").write_bytes(pickled.getvalue())
    with pytest.raises(ValueError):  # allow_pickle=False
        load_state(tmp_path / "pickled.npz")


@pytest.mark.parametrize("damage", ["index_too_large", "negative_index", "indptr_too_short", "indptr_decreasing"])
def test_a_state_whose_sparse_structure_is_out_of_range_is_refused_not_loaded(data, tmp_path, damage):
    # scipy would accept such arrays and crash in C at the first row slice (a segfault of the service)
    arrays = state_arrays(state_of(data))
    indices, indptr = arrays["today_indices"].copy(), arrays["today_indptr"].copy()
    if damage == "index_too_large":
        indices[0] = 10**6
    elif damage == "negative_index":
        indices[0] = -1
    elif damage == "indptr_too_short":
        indptr = indptr[:-1]
    else:
        indptr[1] = indptr[-1] + 1
    arrays |= {"today_indices": indices, "today_indptr": indptr}
    (tmp_path / "bad.npz").write_bytes(npz_bytes(arrays))
    with pytest.raises(ValueError, match="not a valid .* CSR matrix"):
        load_state(tmp_path / "bad.npz")
