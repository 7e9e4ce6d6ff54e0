"""recsys.matrix: the id factorisation by object and the paired sparse build give exactly what pandas / SciPy give.

Both are speed-ups that must never change a model's bytes (artefact digests are compared on re-training), so
each is checked against the plain computation it replaces, on inputs that exercise every path: ids shared as
one object per value (what ``store.read_window`` returns), fresh objects per row, a mix of both, runs and no
runs, missing values, and rows long enough that SciPy's duplicate summing order is not the input order.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from factory_assets.ml.recsys.matrix import _SHARED_SAMPLE, Interactions, _csr, _csr_pair, _positions, factorize

N = 5 * _SHARED_SAMPLE  # long enough for the by-object path


def _fresh(values) -> np.ndarray:
    """An object array of new, equal-valued ``str`` objects (never the same object twice)."""
    out = np.empty(len(values), dtype=object)
    out[:] = ["".join(["", str(v)]) if v is not None else None for v in values]
    for v, o in zip(values[:50], out[:50]):
        assert v is None or (o == v and (o is not v or len(o) <= 1))  # 1-character strings are cached singletons
    return out


def _shared(ids: list, codes: np.ndarray) -> np.ndarray:
    distinct = np.empty(len(ids), dtype=object)
    distinct[:] = ids
    return distinct[codes]


def _id_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    ids = [f"u{i}" for i in range(700)] + ["é", "Z", "a", "ab", "日本"]
    codes = rng.integers(0, len(ids), N)
    shared = _shared(ids, codes)
    sorted_runs = _shared(ids, np.sort(codes))
    mixed = shared.copy()
    mixed[::3] = _fresh(shared[::3])  # equal values held by different objects
    missing = shared.copy()
    missing[rng.integers(0, N, 40)] = None
    missing[rng.integers(0, N, 40)] = np.nan
    days = _shared([date(2024, 10, 1) + timedelta(days=i) for i in range(28)], np.sort(rng.integers(0, 28, N)))
    return {"shared": shared, "runs": sorted_runs, "fresh": _fresh(shared), "mixed": mixed, "missing": missing,
            "days": days, "small": shared[:100], "numeric": codes}


@pytest.mark.parametrize("name", list(_id_arrays()))
@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("sentinel", [True, False])
def test_factorize_gives_pandas_codes_and_uniques(name, sort, sentinel):
    values = _id_arrays()[name]
    codes, uniques = factorize(pd.Series(values), sort=sort, use_na_sentinel=sentinel)
    want_codes, want_uniques = pd.factorize(values, sort=sort, use_na_sentinel=sentinel)
    assert codes.dtype == np.int64
    assert np.array_equal(codes, want_codes)
    same = [a == b or (a is None and b is None) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a)
                                                     and math.isnan(b)) for a, b in zip(uniques, want_uniques)]
    assert len(uniques) == len(want_uniques) and all(same)


def _frame(id_kind: str, n_users: int = 40, n_items: int = 30, n_days: int = 25) -> pd.DataFrame:
    """Random user_item_daily-like rows: ~half of all (day, user, item) cells, so each user has hundreds of
    entries over many days (SciPy's per-row sort then scrambles the order of duplicates)."""
    rng = np.random.default_rng(11)
    day, user, item = (a.ravel() for a in np.meshgrid(np.arange(n_days), np.arange(n_users), np.arange(n_items), indexing="ij"))
    keep = rng.random(len(day)) < 0.5
    day, user, item = day[keep], user[keep], item[keep]
    users, items = [f"user-{i}" for i in range(n_users)], [f"i{i}" for i in range(n_items)]
    frame = pd.DataFrame({"day": day, "weight": rng.gamma(1.0, 2.0, len(day)) * (rng.random(len(day)) < 0.9),
                          "n_conversions": rng.poisson(0.3, len(day)).astype(np.int64)})
    if id_kind == "shared":
        frame["user_id"], frame["item_id"] = _shared(users, user), _shared(items, item)
    elif id_kind == "fresh":
        frame["user_id"], frame["item_id"] = _fresh(_shared(users, user)), _fresh(_shared(items, item))
    elif id_kind == "categorical":
        frame["user_id"] = pd.Categorical(_shared(users, user), categories=users[::-1])
        frame["item_id"] = pd.Categorical(_shared(items, item))
    else:
        raise ValueError(id_kind)
    return frame


def _bits(m: sp.csr_matrix) -> tuple:
    return (m.shape, m.data.dtype, m.data.view(np.uint32).tobytes(), m.indices.tobytes(), m.indptr.tobytes())


@pytest.mark.parametrize("id_kind", ["shared", "fresh", "categorical"])
def test_many_is_from_frame_bit_for_bit_and_sums_like_a_dense_accumulation(id_kind):
    frame = _frame(id_kind)
    conf = np.log1p(frame["weight"].to_numpy() * 0.37)
    hist = frame["n_conversions"].to_numpy() * 0.61
    got = Interactions.many(frame, {"confidence": conf, "history": hist, "odd": conf * 3.0})
    reference = _frame("fresh")  # the same rows with plain str ids
    for name, values in (("confidence", conf), ("history", hist), ("odd", conf * 3.0)):
        one = Interactions.from_frame(reference.assign(v=values), "v")
        assert _bits(got[name].matrix) == _bits(one.matrix), name
        assert got[name].user_ids.tolist() == one.user_ids.tolist() and got[name].item_ids.tolist() == one.item_ids.tolist()
        assert got[name].user_ids.dtype.kind == "U"
        # second method: a dense float64 accumulation, zeros dropped
        dense = np.zeros(one.matrix.shape)
        np.add.at(dense, (one.user_index(reference["user_id"]), one.item_index(reference["item_id"])), values)
        np.testing.assert_allclose(got[name].matrix.toarray(), dense, rtol=2e-6)
        assert got[name].matrix.nnz == np.count_nonzero(dense.astype(np.float32))
        # the test has teeth: float32 sums in the rows' input order differ from SciPy's order in many cells
        in_order = np.zeros(one.matrix.shape, dtype=np.float32)
        np.add.at(in_order, (one.user_index(reference["user_id"]), one.item_index(reference["item_id"])),
                  values.astype(np.float32))
        assert (in_order != got[name].matrix.toarray()).sum() > 10
    assert len(set(zip(frame["user_id"], frame["item_id"]))) > got["history"].matrix.nnz  # zeros were dropped


def test_the_paired_build_drops_unknown_positions_like_the_single_one():
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(-1, 20, 5000), rng.integers(-1, 15, 5000)
    a, b = rng.random(5000) * (rng.random(5000) < 0.8), rng.random(5000) * (rng.random(5000) < 0.3)
    pair = _csr_pair(rows, cols, a, b, 20, 15)
    assert _bits(pair[0]) == _bits(_csr(rows, cols, a, 20, 15))
    assert _bits(pair[1]) == _bits(_csr(rows, cols, b, 20, 15))


@pytest.mark.parametrize("id_kind", ["shared", "fresh"])
def test_positions_are_index_lookups_with_minus_one_for_unknown_and_missing(id_kind):
    frame = _frame(id_kind, n_users=3000, n_items=10, n_days=4)
    known = np.sort(frame["user_id"].astype(str).unique())[::2].astype(str)
    ids = frame["user_id"].to_numpy().copy()
    ids[:5] = None
    got = _positions(known, ids)
    lookup = {u: i for i, u in enumerate(known.tolist())}
    assert got.tolist() == [lookup.get(u, -1) if u is not None else -1 for u in ids]
    assert _positions(np.array([], dtype=str), ids).tolist() == [-1] * len(ids)
