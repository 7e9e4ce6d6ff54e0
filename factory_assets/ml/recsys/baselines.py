"""The two simple baselines every candidate must beat, as score matrices over a catalogue.

- ``popularity``: the same list for everyone, items ranked by the number of distinct users who converted on
  them in the training days.
- ``repeat``: a user's own most frequently converted items (by conversion count in the training days), the
  rest of the list filled by popularity (the stronger variant of the baseline: an unfilled list would give it
  fewer than k items).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _popularity(train: pd.DataFrame, catalogue: np.ndarray) -> np.ndarray:
    buyers = train[train["n_conversions"] > 0].groupby(train["item_id"].astype(str))["user_id"].nunique()
    return buyers.reindex(catalogue, fill_value=0).to_numpy(dtype=np.float64)


def popularity_scores(train: pd.DataFrame, user_ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """``(len(user_ids), len(catalogue))`` float64: distinct converting users per item, same row for all."""
    return np.tile(_popularity(train, catalogue), (len(user_ids), 1))


def repeat_scores(train: pd.DataFrame, user_ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """``(len(user_ids), len(catalogue))`` float64: own conversion count, ties and the rest by popularity.

    Score = own_count + popularity / (max_popularity + 1), so any own conversion outranks every item the
    user never converted on, and popularity only orders within equal own counts.
    """
    pop = _popularity(train, catalogue)
    base = pop / (pop.max() + 1.0) if len(pop) else pop
    scores = np.tile(base, (len(user_ids), 1))
    own = train[train["n_conversions"] > 0]
    counts = own.groupby([own["user_id"].astype(str), own["item_id"].astype(str)])["n_conversions"].sum()
    if counts.empty:
        return scores
    users = counts.index.get_level_values(0).to_numpy(dtype=str)
    items = counts.index.get_level_values(1).to_numpy(dtype=str)
    row_of = {u: r for r, u in enumerate(np.asarray(user_ids, dtype=str))}
    col_of = {i: c for c, i in enumerate(np.asarray(catalogue, dtype=str))}
    for u, i, n in zip(users, items, counts.to_numpy(dtype=np.float64)):
        r, c = row_of.get(u), col_of.get(i)
        if r is not None and c is not None:
            scores[r, c] += n
    return scores


def repeat_unfilled_scores(train: pd.DataFrame, user_ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """The weaker, unfilled variant of ``repeat`` (a *reference*, never a gate): own conversion count, ties by
    popularity, and ``-inf`` (not recommended) for every item the user never converted on, so a user with
    fewer than k own items gets a short list.  Shape and dtype as :func:`repeat_scores`."""
    scores = repeat_scores(train, user_ids, catalogue)
    return np.where(scores >= 1.0, scores, -np.inf)
