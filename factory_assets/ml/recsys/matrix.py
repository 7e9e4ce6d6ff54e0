"""A sparse user x item matrix that carries its id indexes, so the row/column <-> id mapping is never lost."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass(frozen=True)
class Interactions:
    """``matrix[u, i]`` (CSR, float32, shape ``(len(user_ids), len(item_ids))``) with its id indexes.

    ``user_ids`` and ``item_ids`` are sorted, unique ``str`` arrays (NumPy unicode dtype, never
    ``object``, so they can be saved without pickle).
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        value: str,
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
    ) -> "Interactions":
        """Sum ``frame[value]`` per (``user_id``, ``item_id``) into a CSR matrix.

        Args:
            frame: columns ``user_id``, ``item_id`` (str) and ``value`` (numeric).
            value: name of the column to sum.
            user_ids, item_ids: fixed indexes; rows whose ids are not in them are dropped.  By default the
                sorted unique ids of ``frame``.
        """
        users, rows = _index_and_positions(frame["user_id"], user_ids)
        items, cols = _index_and_positions(frame["item_id"], item_ids)
        return cls(_csr(rows, cols, frame[value].to_numpy(), len(users), len(items)), np.asarray(users, dtype=str),
                   np.asarray(items, dtype=str))

    @classmethod
    def many(cls, frame: pd.DataFrame, values: dict[str, np.ndarray]) -> dict[str, "Interactions"]:
        """One matrix per value array (each ``len(frame)`` long) over one shared index: the frame's sorted
        unique ids.  The same as ``from_frame`` per value with the first one's indexes (bit for bit), mapping the
        ids once and building the sparse structure once per pair of values (:func:`_csr_pair`)."""
        users, rows = _index_and_positions(frame["user_id"], None)
        items, cols = _index_and_positions(frame["item_id"], None)
        names, out = list(values), {}
        for k in range(0, len(names) - 1, 2):
            a, b = names[k], names[k + 1]
            out[a], out[b] = (cls(m, users, items) for m in
                              _csr_pair(rows, cols, values[a], values[b], len(users), len(items)))
        if len(names) % 2:
            out[names[-1]] = cls(_csr(rows, cols, values[names[-1]], len(users), len(items)), users, items)
        return {name: out[name] for name in names}

    def user_index(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """Row of each id (``-1`` where unknown), int64."""
        return _positions(self.user_ids, np.asarray(ids, dtype=str))

    def item_index(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """Column of each id (``-1`` where unknown), int64."""
        return _positions(self.item_ids, np.asarray(ids, dtype=str))


def _csr(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """Sum ``values`` per (row, col) into a float32 CSR matrix; negative positions (unknown ids) and zeros dropped."""
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.coo_matrix(
        (np.asarray(values, dtype=np.float32)[keep], (rows[keep], cols[keep])), shape=(n_rows, n_cols)
    ).tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix.astype(np.float32)


def _csr_pair(rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray, n_rows: int,
              n_cols: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(_csr(rows, cols, a, ...), _csr(rows, cols, b, ...))``, bit for bit, for the price of one sparse build.

    The two value arrays travel as the real and imaginary parts of one complex64 array: SciPy's COO -> CSR
    conversion orders and sums duplicates the same way whatever the payload (its sort compares column indexes
    only), and a complex64 sum is two float32 sums, so each part holds exactly the float32 sums ``_csr`` makes.
    """
    keep = (rows >= 0) & (cols >= 0)
    every = bool(keep.all())  # the usual case (the frame's own index): no masked copies
    data = np.empty(len(rows) if every else int(keep.sum()), dtype=np.complex64)
    data.real = a if every else np.asarray(a)[keep]  # cast to float32 on assignment, as ``astype`` rounds
    data.imag = b if every else np.asarray(b)[keep]
    index = np.int32 if max(n_rows, n_cols) < np.iinfo(np.int32).max else np.int64  # SciPy's own choice
    rows, cols = (np.asarray(x if every else x[keep], dtype=index) for x in (rows, cols))
    both = sp.coo_matrix((data, (rows, cols)), shape=(n_rows, n_cols)).tocsr()
    both.sum_duplicates()
    out = []
    for part in (both.data.real, both.data.imag):
        matrix = sp.csr_matrix((np.ascontiguousarray(part, dtype=np.float32), both.indices.copy(), both.indptr.copy()),
                               shape=(n_rows, n_cols))
        matrix.eliminate_zeros()
        out.append(matrix)
    return out[0], out[1]


def _as_str(ids: pd.Series) -> pd.Series:
    """The ids as ``str`` values (a no-op copy-free pass for the usual object column of str)."""
    return ids if ids.dtype == object else ids.astype(str)


def _index_and_positions(ids: pd.Series, fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The sorted unique index (``fixed`` if given) and each id's position in it (-1 where absent).

    Hash-based (:func:`factorize`, ``Index.get_indexer``): a binary search over NumPy unicode arrays was half of
    a fit's time on a 1.2M-row window.
    """
    values = _as_str(ids)
    if fixed is None:
        codes, uniques = factorize(values, sort=True)
        return np.asarray(uniques, dtype=str), codes
    return fixed, _positions(fixed, values.to_numpy())


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in the sorted, unique array ``sorted_ids``, -1 where absent (int64)."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    index = pd.Index(np.asarray(sorted_ids, dtype=object))
    codes, uniques = factorize(np.asarray(ids, dtype=object), sort=False)
    found = np.append(index.get_indexer(np.asarray(uniques, dtype=object)).astype(np.int64), -1)
    return found[codes]  # code -1 (a missing value) -> the appended -1


_SHARED_SAMPLE = 16_384  # ids sampled to decide whether a column's equal values are mostly the same objects


def factorize(values: pd.Series | np.ndarray, sort: bool = True, use_na_sentinel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``pandas.factorize(values, sort=sort, use_na_sentinel=use_na_sentinel)`` as ``(int64 codes, uniques)``,
    the same codes, faster for an object column whose equal values are mostly one shared object.

    ``store.read_window`` returns such columns (one ``str`` per distinct id, one ``date`` per day).  Then the
    column is first factorized by object address (integer hashing, ~5x faster than hashing and comparing the
    values) and only the distinct objects by value, so equal values held by different objects still get one
    code.  A column of mostly distinct objects (decided on a sample) goes straight to ``pandas.factorize``.
    """
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.dtype != object or arr.ndim != 1 or len(arr) < 4 * _SHARED_SAMPLE:
        return _factorize_values(arr, sort, use_na_sentinel)
    arr = np.ascontiguousarray(arr)
    addresses = _addresses(arr)
    if len(pd.unique(addresses[:: len(arr) // _SHARED_SAMPLE])) > 0.9 * _SHARED_SAMPLE:
        return _factorize_values(arr, sort, use_na_sentinel)  # mostly distinct objects: by value directly
    change = addresses[1:] != addresses[:-1]
    if 4 * (1 + int(np.count_nonzero(change))) <= len(arr):
        # long runs of one object (a frame sorted by this column, e.g. read_window's days): one row per run
        starts = np.concatenate(([0], np.flatnonzero(change) + 1))
        run_object, objects = pd.factorize(addresses[starts])
        one = np.empty(len(objects), dtype=np.intp)
        one[run_object] = starts  # a position of each distinct object (any one of them)
        codes, uniques = _factorize_values(arr[one], sort, use_na_sentinel)
        return np.repeat(codes[run_object], np.diff(np.append(starts, len(arr)))), uniques
    by_object, _ = pd.factorize(addresses)
    # objects are numbered by first appearance, so each one's first row is where the running maximum grows
    running = np.maximum.accumulate(by_object)
    first = np.flatnonzero(np.concatenate(([True], running[1:] > running[:-1])))
    codes, uniques = _factorize_values(arr[first], sort, use_na_sentinel)
    return codes[by_object], uniques


def _addresses(arr: np.ndarray) -> np.ndarray:
    """The PyObject pointers of a contiguous object array as integers: a read-only view, valid while ``arr``
    (which holds the references) is alive; used only to compare objects by identity."""
    return np.frombuffer((ctypes.c_ssize_t * len(arr)).from_address(arr.ctypes.data), dtype=np.intp)


def _factorize_values(objects: np.ndarray, sort: bool, use_na_sentinel: bool) -> tuple[np.ndarray, np.ndarray]:
    """``pandas.factorize`` of the distinct objects, by value.  Objects are numbered by first appearance (factorize
    without sort), so first appearances keep their order and the codes are pandas' own also for sort=False."""
    codes, uniques = pd.factorize(objects, sort=sort, use_na_sentinel=use_na_sentinel)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques)
