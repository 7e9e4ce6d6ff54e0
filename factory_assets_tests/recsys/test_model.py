"""The drift re-weighting: days before the regime start weigh ``max(regime_decay ** n_new_days, regime_floor)``."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from factory_assets.recsys.model import ModelParams, fit_model, regime_weights


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(date(2024, 11, 1) + timedelta(days=int(rng.integers(0, 10))), f"u{rng.integers(0, 30)}", f"i{rng.integers(0, 20)}")
            for _ in range(400)]
    frame = pd.DataFrame(rows, columns=["day", "user_id", "item_id"])
    frame = frame.groupby(["day", "user_id", "item_id"]).size().rename("weight").reset_index()
    frame["weight"] = frame["weight"].astype(float)
    frame["n_conversions"] = (frame["weight"] > 1).astype(float)
    return frame


def test_regime_weights_shrink_the_old_days_with_each_new_day_and_only_when_the_frame_reaches_them():
    days = pd.Series([date(2024, 11, 1), date(2024, 11, 5), date(2024, 11, 6)])
    params = ModelParams(regime_decay=0.5, regime_floor=0.1)
    assert regime_weights(days, date(2024, 11, 6), params).tolist() == [1, 1, 1]  # no regime start
    start = replace(params, regime_start="2024-11-05")
    # new regime 11-05 .. as_of: 2 days -> 0.5 ** 2; 4 days -> 0.0625, floored at 0.1
    assert regime_weights(days, date(2024, 11, 6), start).tolist() == [0.25, 1, 1]
    assert regime_weights(days, date(2024, 11, 8), start).tolist() == [0.1, 1, 1]
    later = replace(params, regime_start="2024-11-07")
    assert regime_weights(days, date(2024, 11, 6), later).tolist() == [1, 1, 1]  # only the old regime: unchanged


def test_fit_with_a_regime_start_equals_a_fit_on_rows_scaled_by_hand():
    frame, as_of = _frame(), date(2024, 11, 10)
    params = ModelParams(model_kind="blend", factors=8, iterations=5)
    shifted = fit_model(frame, as_of, replace(params, regime_start="2024-11-08", regime_decay=0.6, regime_floor=0.01), 1.0)
    # second method: scale the old rows' weight and conversions ourselves (3 new days: 0.6 ** 3), fit without a regime
    old = pd.to_datetime(frame["day"]) < pd.Timestamp("2024-11-08")
    w = 0.6 ** 3
    by_hand = frame.assign(weight=np.where(old, frame["weight"] * w, frame["weight"]),
                           n_conversions=np.where(old, frame["n_conversions"] * w, frame["n_conversions"]))
    plain = fit_model(by_hand, as_of, params, 1.0)
    np.testing.assert_allclose(shifted.history.toarray(), plain.history.toarray(), rtol=1e-6)
    np.testing.assert_allclose(shifted.popularity, plain.popularity, rtol=1e-6)
    # ALS confidence is log1p(weight * decay): not the same as scaling afterwards, but the same as scaling the input
    np.testing.assert_allclose(shifted.user_factors, plain.user_factors, rtol=1e-4, atol=1e-5)
    # and a regime start after the frame changes nothing at all
    untouched = fit_model(frame, as_of, replace(params, regime_start="2024-11-20"), 1.0)
    reference = fit_model(frame, as_of, params, 1.0)
    assert np.array_equal(untouched.user_factors, reference.user_factors)
