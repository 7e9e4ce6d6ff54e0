"""The drift re-weighting: days before the regime start weigh ``max(regime_decay ** n_new_days, regime_floor)``."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from factory_assets.ml.recsys.model import ModelParams, fit_model, recency_decay, regime_weights


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


# --------------------------------------------------------------------------- per-distinct-day arithmetic
def _day_columns() -> dict[str, pd.Series]:
    """The same days as fresh date objects, as one shared object per day (read_window's columns, long enough for
    the by-object path), as datetime64, with missing days."""
    rng = np.random.default_rng(2)
    offsets = np.sort(rng.integers(0, 40, 90_000))
    distinct = np.empty(40, dtype=object)
    distinct[:] = [date(2024, 10, 1) + timedelta(days=i) for i in range(40)]
    fresh = pd.Series([date(2024, 10, 1) + timedelta(days=int(i)) for i in offsets], dtype=object)
    missing = fresh.copy()
    missing[rng.integers(0, len(fresh), 30)] = None
    return {"fresh": fresh, "shared": pd.Series(distinct[offsets]), "shuffled": pd.Series(distinct[rng.permutation(offsets)]),
            "datetime64": pd.to_datetime(fresh), "missing": missing, "small": fresh[:50]}


@pytest.mark.parametrize("kind", list(_day_columns()))
def test_decay_regime_weights_and_split_per_distinct_day_equal_the_per_row_formulas(kind):
    from factory_assets.ml.recsys.evaluation import temporal_split

    days, as_of = _day_columns()[kind], date(2024, 11, 9)
    # second method: the formulas on every row (the code before the per-distinct-day computation)
    age = (pd.Timestamp(as_of) - pd.to_datetime(days)).dt.days.to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(recency_decay(days, as_of, 56.0), np.power(0.5, age / 56.0))
    params = ModelParams(regime_start="2024-10-20", regime_decay=0.7, regime_floor=0.05)
    old = (pd.to_datetime(days) < pd.Timestamp("2024-10-20")).to_numpy()
    want = np.ones(len(days)) if old.all() else np.where(old, max(0.7 ** 21, 0.05), 1.0)  # only the old regime: 1
    np.testing.assert_array_equal(regime_weights(days, as_of, params), want)
    frame = pd.DataFrame({"day": days, "row": np.arange(len(days))})
    split = temporal_split(frame, (date(2024, 10, 1), as_of), 7)
    per_row = pd.to_datetime(days).dt.date
    assert split.train["row"].tolist() == frame["row"][per_row < date(2024, 11, 3)].tolist()
    assert split.test["row"].tolist() == frame["row"][per_row >= date(2024, 11, 3)].tolist()


def test_fit_is_the_same_bytes_whatever_objects_or_dtype_hold_the_ids():
    """read_window's shared objects, fresh str objects per row and categorical ids: one artefact."""
    from factory_assets.ml.recsys.artefact import model_arrays, npz_bytes

    rng = np.random.default_rng(4)
    n = 80_000  # long enough for the by-object factorisation
    users, items = [f"u{i}" for i in range(300)], [f"i{i}" for i in range(60)]
    distinct_days = np.empty(20, dtype=object)
    distinct_days[:] = [date(2024, 11, 1) + timedelta(days=i) for i in range(20)]
    u, i, d = rng.integers(0, 300, n), rng.integers(0, 60, n), np.sort(rng.integers(0, 20, n))
    shared_u, shared_i = np.empty(300, dtype=object), np.empty(60, dtype=object)
    shared_u[:], shared_i[:] = users, items
    base = pd.DataFrame({"day": distinct_days[d], "user_id": shared_u[u], "item_id": shared_i[i],
                         "weight": rng.gamma(1.0, 2.0, n), "n_conversions": rng.poisson(0.2, n)})
    base = base.drop_duplicates(["day", "user_id", "item_id"]).reset_index(drop=True)
    from factory_assets.ml.recsys.matrix import _SHARED_SAMPLE

    assert len(base) > 4 * _SHARED_SAMPLE  # the by-object path of recsys.matrix.factorize
    fresh = base.assign(day=[date.fromordinal(x.toordinal()) for x in base["day"]],
                        user_id=["".join(["", x]) for x in base["user_id"]], item_id=["".join(["", x]) for x in base["item_id"]])
    categorical = base.assign(user_id=base["user_id"].astype("category"), item_id=base["item_id"].astype("category"))
    params = ModelParams(model_kind="blend", factors=8, iterations=3, regime_start="2024-11-15")
    digests = {name: npz_bytes(model_arrays(fit_model(f, date(2024, 11, 20), params, 1.0)))
               for name, f in (("shared", base), ("fresh", fresh), ("categorical", categorical))}
    assert digests["shared"] == digests["fresh"] == digests["categorical"]
