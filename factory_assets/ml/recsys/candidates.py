"""Candidate sources for the learned ranker, fitted point-in-time on one frame of ``user_item_daily`` rows.

Every source is computed from the rows it is given and an ``as_of`` day (the last day of those rows), so a
ranker whose sources were fitted on the inner-train days can never see an inner-validation day:

- own history: recency-weighted conversions (``BlendModel.history``) and the recency of the user's last
  interaction with the item, ``0.5 ** (age / recency_half_life_days)`` (:attr:`SourceArrays.recency`);
- ALS (``BlendModel.user_factors`` / ``item_factors``);
- popularity: recency-weighted conversions (``BlendModel.popularity``), all-window distinct converters
  (``converters``) and its trend, distinct converters in the last 7 days vs the 7 days before
  (``converters_7d`` / ``converters_prev_7d``);
- co-purchase: item-item cosine similarity of the binary user x item interaction matrix, keeping the
  ``neighbours`` most similar items per item (``neighbours`` CSR ``(n_items, n_items)``); a user's
  co-purchase score for an item is ``sum_j sim(i, j) * [user interacted with j]``.

- long purchase history (optional, ``ModelParams.history_days``): per (user, item) over the ``history_days``
  days ending ``as_of``, which may reach before the frame: distinct conversion days, conversions, recency of
  the last one, and how "due" a re-order is (days since the last conversion over the mean gap between the
  user's conversion days of the item), plus each item's distinct converters (:func:`long_history`); the
  co-purchase matrix and a user's co-purchase score then also count these items.

A candidate is any item in the top ``n_per_source`` of one source for the user, or one the user interacted
with in the frame or converted on in the long history (:func:`candidate_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import scipy.sparse as sp

from factory_assets.ml.recsys.matrix import Interactions


@dataclass(frozen=True)
class SourceArrays:
    """The non-ALS source arrays over a model's id space (all float32; CSR matrices).

    ``recency`` ``(n_users, n_items)``: last-interaction decay (0 where never); ``converters``,
    ``converters_7d``, ``converters_prev_7d`` ``(n_items,)``; ``neighbours`` ``(n_items, n_items)``.
    """

    recency: sp.csr_matrix
    converters: np.ndarray
    converters_7d: np.ndarray
    converters_prev_7d: np.ndarray
    neighbours: sp.csr_matrix
    days_count: sp.csr_matrix | None = None  # (n_users, n_items): distinct days with a conversion
    item_repeat_rate: np.ndarray | None = None  # (n_items,): share of the item's converters converting on >= 2 days
    user_days: np.ndarray | None = None  # (n_users,): distinct days the user converted
    # Long purchase history (``history_days`` before ``as_of``, :func:`long_history`); None = not fitted.
    long_days: sp.csr_matrix | None = None  # (n_users, n_items): distinct days with a conversion
    long_conversions: sp.csr_matrix | None = None  # (n_users, n_items): conversions (the repeat baseline's count)
    long_recency: sp.csr_matrix | None = None  # (n_users, n_items): 0.5 ** (days since the last conversion / 28)
    long_due: sp.csr_matrix | None = None  # (n_users, n_items): days since the last conversion / mean days between
    long_converters: np.ndarray | None = None  # (n_items,): distinct converters in the long history


def fit_sources(
    frame: pd.DataFrame,
    as_of: date,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    recency_half_life_days: float = 7.0,
    n_neighbours: int = 30,
    history: pd.DataFrame | None = None,
    history_days: int = 0,
) -> SourceArrays:
    """Fit the history-recency, popularity-trend and co-purchase sources on ``frame`` (days <= ``as_of``), and
    with ``history`` the long purchase history of the ``history_days`` days ending ``as_of`` (:func:`long_history`)."""
    days = pd.to_datetime(frame["day"])
    age = (pd.Timestamp(as_of) - days).dt.days.to_numpy(dtype=np.float64)
    if len(age) and age.min() < 0:
        raise ValueError("frame holds rows after as_of: sources would read the future")
    decay = np.power(0.5, age / recency_half_life_days)
    work = pd.DataFrame({"user_id": frame["user_id"].astype(str).to_numpy(), "item_id": frame["item_id"].astype(str).to_numpy(),
                         "decay": decay, "conv": frame["n_conversions"].to_numpy() > 0, "age": age})
    last = work.groupby(["user_id", "item_id"], sort=False)["decay"].max().reset_index()
    recency = Interactions.from_frame(last, "decay", user_ids, item_ids).matrix

    conv = work[work["conv"]]
    item_pos = Interactions(sp.csr_matrix((0, len(item_ids))), np.asarray(user_ids), np.asarray(item_ids)).item_index

    def distinct_converters(rows: pd.DataFrame) -> np.ndarray:
        counts = rows.groupby("item_id")["user_id"].nunique()
        out = np.zeros(len(item_ids), dtype=np.float32)
        pos = item_pos(counts.index.to_numpy(dtype=str))
        keep = pos >= 0
        out[pos[keep]] = counts.to_numpy(dtype=np.float32)[keep]
        return out

    converters = distinct_converters(conv)
    last7 = distinct_converters(conv[conv["age"] < 7])
    prev7 = distinct_converters(conv[(conv["age"] >= 7) & (conv["age"] < 14)])

    conv_days = conv.assign(one=1.0).drop_duplicates(["user_id", "item_id", "age"])
    days_count = Interactions.from_frame(conv_days, "one", user_ids, item_ids).matrix
    repeaters = days_count.copy()
    repeaters.data = (repeaters.data >= 2).astype(np.float32)
    n_rep = np.asarray(repeaters.sum(axis=0)).ravel()
    n_buy = np.asarray((days_count > 0).sum(axis=0)).ravel()
    item_repeat_rate = ((n_rep + 0.1) / (n_buy + 1.0)).astype(np.float32)
    user_active = conv.drop_duplicates(["user_id", "age"]).assign(one=1.0)
    user_days = np.zeros(len(user_ids), dtype=np.float32)
    upos = Interactions(sp.csr_matrix((len(user_ids), 0)), np.asarray(user_ids), np.asarray(item_ids)).user_index
    counts = user_active.groupby("user_id")["one"].sum()
    pos = upos(counts.index.to_numpy(dtype=str))
    user_days[pos[pos >= 0]] = counts.to_numpy(dtype=np.float32)[pos >= 0]

    long = {} if history is None or history_days <= 0 else long_history(history, as_of, history_days, user_ids, item_ids)
    binary = recency.copy() if not long else (recency + long["long_days"]).tocsr()
    binary.data[:] = 1.0
    neighbours = item_neighbours(binary, n_neighbours)
    return SourceArrays(recency=recency.astype(np.float32), converters=converters, converters_7d=last7,
                        converters_prev_7d=prev7, neighbours=neighbours, days_count=days_count.astype(np.float32),
                        item_repeat_rate=item_repeat_rate, user_days=user_days, **long)


LONG_RECENCY_HALF_LIFE_DAYS = 28.0


def history_as_of(history: pd.DataFrame, as_of: date, days: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``history`` in the ``days`` days ending ``as_of`` (inclusive), what a fit as of that day
    reads, and their ages in days before ``as_of`` (int64, 0 on ``as_of``)."""
    age = (pd.Timestamp(as_of) - pd.to_datetime(history["day"])).dt.days.to_numpy()
    keep = (age >= 0) & (age < days)
    return history[keep], age[keep]


def long_history(history: pd.DataFrame, as_of: date, days: int, user_ids: np.ndarray, item_ids: np.ndarray) -> dict:
    """Point-in-time long purchase history: the conversions of the ``days`` days ending ``as_of`` (inclusive).

    ``history``: ``user_item_daily`` rows (``day``, ``user_id``, ``item_id``, ``n_conversions``) of any days;
    rows after ``as_of`` or before its first day are ignored, so one frame serves every as-of day of a
    candidate (label slices, evaluation model, served model).  Users and items outside the model's id space
    are dropped.  Returns the :class:`SourceArrays` fields ``long_days``, ``long_conversions``, ``long_recency``
    and ``long_due`` (CSR float32 ``(len(user_ids), len(item_ids))``) and ``long_converters`` (``(n_items,)``).
    """
    rows, age = history_as_of(history, as_of, days)
    keep = rows["n_conversions"].to_numpy() > 0
    rows = rows.loc[keep, ["user_id", "item_id", "n_conversions"]].assign(age=age[keep])
    rows = rows.assign(user_id=rows["user_id"].astype(str), item_id=rows["item_id"].astype(str))
    per = rows.groupby(["user_id", "item_id"], sort=False).agg(n_days=("age", "nunique"), conv=("n_conversions", "sum"),
                                                              last=("age", "min"), first=("age", "max")).reset_index()
    last = per["last"].to_numpy(dtype=np.float64)
    per["recency"] = np.power(0.5, last / LONG_RECENCY_HALF_LIFE_DAYS)
    gap = (per["first"].to_numpy(dtype=np.float64) - last) / np.maximum(per["n_days"].to_numpy(dtype=np.float64) - 1, 1)
    # stored + 1e-3 so that an item bought today (due 0) is still a stored entry
    per["due"] = np.where(per["n_days"].to_numpy() >= 2, last / np.maximum(gap, 1.0), 0.0) + 1e-3
    mat = lambda col: Interactions.from_frame(per, col, user_ids, item_ids).matrix.astype(np.float32)  # noqa: E731
    buyers = per.groupby("item_id")["user_id"].nunique()
    converters = np.zeros(len(item_ids), dtype=np.float32)
    pos = Interactions(sp.csr_matrix((0, len(item_ids))), np.asarray(user_ids), np.asarray(item_ids)).item_index(
        buyers.index.to_numpy(dtype=str))
    converters[pos[pos >= 0]] = buyers.to_numpy(dtype=np.float32)[pos >= 0]
    return {"long_days": mat("n_days"), "long_conversions": mat("conv"), "long_recency": mat("recency"),
            "long_due": mat("due"), "long_converters": converters}


def item_neighbours(binary: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Top-``k`` cosine neighbours per item (diagonal excluded) of a binary user x item matrix, CSR float32."""
    n_items = binary.shape[1]
    if n_items == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    x = binary.tocsc().astype(np.float32)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    xn = x @ sp.diags(1.0 / norms)
    sim = (xn.T @ xn).tocsr()
    sim.setdiag(0)
    sim.eliminate_zeros()
    rows, cols, vals = [], [], []
    for i in range(n_items):
        start, end = sim.indptr[i], sim.indptr[i + 1]
        if end == start:
            continue
        idx, data = sim.indices[start:end], sim.data[start:end]
        if len(data) > k:
            best = np.argpartition(-data, k - 1)[:k]
            idx, data = idx[best], data[best]
        rows.append(np.full(len(idx), i, dtype=np.int64))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))
    out.sort_indices()
    return out.astype(np.float32)


def rank_of(scores: np.ndarray) -> np.ndarray:
    """0-based rank of each column in its row (0 = highest score; ties by column), int64."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], axis=0), axis=1)
    return ranks


def candidate_mask(source_ranks: list[np.ndarray], seen: np.ndarray, n_per_source: int) -> np.ndarray:
    """Boolean ``(n_rows, n_items)``: in the top ``n_per_source`` of any source, or already interacted with."""
    mask = seen.copy()
    for ranks in source_ranks:
        mask |= ranks < n_per_source
    return mask


def window_days(as_of: date, days: int) -> tuple[date, date]:
    """Inclusive day range of the ``days`` days ending on ``as_of``."""
    return as_of - timedelta(days=days - 1), as_of
