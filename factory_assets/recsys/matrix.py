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
        users = np.sort(frame["user_id"].astype(str).unique()).astype(str) if user_ids is None else user_ids
        items = np.sort(frame["item_id"].astype(str).unique()).astype(str) if item_ids is None else item_ids
        rows = _positions(users, frame["user_id"].astype(str).to_numpy())
        cols = _positions(items, frame["item_id"].astype(str).to_numpy())
        keep = (rows >= 0) & (cols >= 0)
        matrix = sp.coo_matrix(
            (frame[value].to_numpy(dtype=np.float32)[keep], (rows[keep], cols[keep])),
            shape=(len(users), len(items)),
        ).tocsr()
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        return cls(matrix=matrix.astype(np.float32), user_ids=np.asarray(users, dtype=str), item_ids=np.asarray(items, dtype=str))

    def user_index(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """Row of each id (``-1`` where unknown), int64."""
        return _positions(self.user_ids, np.asarray(ids, dtype=str))

    def item_index(self, ids: np.ndarray | list[str]) -> np.ndarray:
        """Column of each id (``-1`` where unknown), int64."""
        return _positions(self.item_ids, np.asarray(ids, dtype=str))


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each of ``ids`` in the sorted array ``sorted_ids``, -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == ids
    return np.where(found, pos, -1).astype(np.int64)
