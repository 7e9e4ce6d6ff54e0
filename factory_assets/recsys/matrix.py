"""A sparse user x item matrix that carries its id indexes, so the row/column <-> id mapping is never lost."""

from __future__ import annotations

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
        unique ids.  The same as ``from_frame`` per value with the first one's indexes, mapping the ids once."""
        users, rows = _index_and_positions(frame["user_id"], None)
        items, cols = _index_and_positions(frame["item_id"], None)
        return {name: cls(_csr(rows, cols, v, len(users), len(items)), users, items) for name, v in values.items()}

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


def _as_str(ids: pd.Series) -> pd.Series:
    """The ids as ``str`` values (a no-op copy-free pass for the usual object column of str)."""
    return ids if ids.dtype == object else ids.astype(str)


def _index_and_positions(ids: pd.Series, fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The sorted unique index (``fixed`` if given) and each id's position in it (-1 where absent).

    Hash-based (``pandas.factorize`` / ``Index.get_indexer``): a binary search over NumPy unicode arrays
    was half of a fit's time on a 1.2M-row window.
    """
    values = _as_str(ids)
    if fixed is None:
        codes, uniques = pd.factorize(values, sort=True)
        return np.asarray(uniques, dtype=str), codes.astype(np.int64)
    return fixed, _positions(fixed, values.to_numpy())


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in the sorted, unique array ``sorted_ids``, -1 where absent (int64)."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    return pd.Index(np.asarray(sorted_ids, dtype=object)).get_indexer(np.asarray(ids, dtype=object)).astype(np.int64)
