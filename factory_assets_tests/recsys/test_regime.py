"""The drift regime's terms and its validated choice (``recsys.regime``): by hand, and on a simulated shift."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets.ml.recsys import regime
from factory_assets.ml.recsys.artefact import load_model, model_arrays, npz_bytes, save_model
from factory_assets.ml.recsys.model import ModelParams, fit_model

WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def _daily(events: pd.DataFrame, day: date) -> pd.DataFrame:
    """user_item_daily's weight and n_conversions by pandas (a second method to the store's SQL)."""
    work = events.assign(w=events["event_type"].map(WEIGHTS), conv=(events["event_type"] == "purchase").astype(int))
    out = work.groupby(["user_id", "item_id"], as_index=False).agg(weight=("w", "sum"), n_conversions=("conv", "sum"))
    return out.assign(day=day)


def test_the_category_log_ratio_by_hand():
    categories = pd.Series({"a": "x", "b": "x", "c": "y", "d": "z"})
    current = pd.Series({"a": 30.0, "c": 10.0})          # x 30, y 10, z 0
    reference = pd.Series({"b": 49.0, "c": 149.0, "d": 99.0})  # x 49, y 149, z 99 (+1 each: 50, 150, 100 of 300)
    got = regime.category_log_ratio(current, reference, categories, np.array(["a", "b", "c", "d", "e"]), prior=60.0)
    ref = {"x": 50 / 300, "y": 150 / 300, "z": 100 / 300}
    cur = {c: (w + 60.0 * ref[c]) / (40.0 + 60.0) for c, w in {"x": 30.0, "y": 10.0, "z": 0.0}.items()}
    expected = [np.log(cur[c] / ref[c]) for c in ("x", "x", "y", "z")] + [0.0]  # "e" has no category
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] > 0 > got[2] and got[3] < 0


def _frame(shop: ShopSimulator, days: list[date]) -> pd.DataFrame:
    return pd.concat([_daily(shop.generate_day(d), d) for d in days], ignore_index=True)


@pytest.fixture(scope="module")
def shifted():
    """A small shop with a strong shift on its 22nd day, 23 days of user_item_daily rows."""
    shift = date(2024, 10, 22)
    shop = ShopSimulator(n_users=600, n_items=150, n_categories=6, events_per_day=6000, seed=5, shift_date=shift,
                         shift_strength=3.0)
    days = [date(2024, 10, 1) + timedelta(days=k) for k in range(23)]
    categories = pd.Series(shop.item_categories().astype(str), index=shop.item_ids().astype(str))
    return shop, shift, _frame(shop, days), categories


def test_a_model_without_a_change_point_keeps_its_exact_bytes(shifted, tmp_path):
    _, _, frame, categories = shifted
    params = ModelParams(model_kind="blend", factors=8, iterations=3)
    model = fit_model(frame, date(2024, 10, 23), params, 1.0)
    same = regime.with_regime_terms(model, frame, categories)
    assert same.trend is None and same.recent is None
    assert npz_bytes(model_arrays(same)) == npz_bytes(model_arrays(model))
    assert "regime_trend" not in params.as_dict() and "regime_decay_grid" not in params.as_dict()


def test_the_regime_terms_are_added_to_the_scores_and_survive_the_artefact(shifted, tmp_path):
    shop, shift, frame, categories = shifted
    params = ModelParams(model_kind="blend", factors=8, iterations=3, regime_start=shift.isoformat(), regime_trend=1.0)
    model = fit_model(frame, date(2024, 10, 23), params, 1.0)
    with_terms = regime.with_regime_terms(model, frame, categories)
    rows = with_terms.user_rows(np.array(["u000", "u001", "nobody"]))
    plain = model.scores(rows)  # the same model without the terms
    since = frame[pd.to_datetime(frame["day"]) >= pd.Timestamp(shift)]
    recent = since.groupby(["user_id", "item_id"])["weight"].sum()
    expected = plain + with_terms.trend[None, :]
    for j, user in enumerate(["u000", "u001"]):
        for item, w in recent.get(user, pd.Series(dtype=float)).items():
            expected[j, list(model.item_ids).index(item)] += np.log1p(w)
    assert with_terms.scores(rows) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # the boosted categories' items rise, the others fall
    boosted = set(shop.boosted_categories().astype(str))
    item_cats = categories.reindex(model.item_ids).to_numpy()
    assert (with_terms.trend[np.isin(item_cats, list(boosted))] > 0).all()
    assert (with_terms.trend[~np.isin(item_cats, list(boosted))] < 0).all()
    path, sha = save_model(with_terms, tmp_path)
    back = load_model(path, sha)
    assert np.array_equal(back.trend, with_terms.trend) and (back.recent != with_terms.recent).nnz == 0
    assert back.scores(rows) == pytest.approx(with_terms.scores(rows))
    assert back.params.regime_trend == 1.0


def test_the_choice_is_validated_on_held_out_users_and_takes_the_trend_after_a_strong_shift(shifted):
    _, shift, frame, categories = shifted
    params = ModelParams(model_kind="blend", factors=8, iterations=3, regime_start=shift.isoformat())
    chosen, record = regime.choose_regime(frame, date(2024, 10, 23), params, 1.0, categories)
    assert record["method"].startswith("leave-users-out")
    assert len(record["trace"]) == len(params.regime_decay_grid) * 2 and record["n_users"] >= 20
    best = max(record["trace"], key=lambda r: r["validation_ndcg_at_10"])
    assert record["chosen"] == {"decay": best["decay"], "trend": best["trend"]}
    assert (chosen.regime_decay, chosen.regime_trend) == (best["decay"], best["trend"])
    # a strength-3 shift: re-weighting by the categories' new shares beats ignoring it at every decay
    for decay in params.regime_decay_grid:
        by_trend = {r["trend"]: r["validation_ndcg_at_10"] for r in record["trace"] if r["decay"] == decay}
        assert by_trend[1.0] > by_trend[0.0], record["trace"]
    assert chosen.regime_trend == 1.0
    # without categories only the decay is chosen; without a change point nothing is
    _, no_cats = regime.choose_regime(frame, date(2024, 10, 23), params, 1.0, None)
    assert {r["trend"] for r in no_cats["trace"]} == {0.0}
    same, none = regime.choose_regime(frame, date(2024, 10, 23), replace(params, regime_start=None), 1.0, categories)
    assert same == replace(params, regime_start=None) and none["trace"] == []
