"""The candidate recommender: implicit ALS blended with the user's own recency-weighted history.

On retail logs a customer's own past purchases are the strongest single signal (the repeat-purchase
baseline), so a plain ALS often loses to it.  The model scores every item as

    score(u, i) = (1 - b) * als(u, i) / max_j als(u, j)  +  b * log1p(h(u, i)) / log1p(max_j h(u, j))
                  + 1e-3 * pop(i) / max_j pop(j)

where ``als`` is the ALS dot product (clipped at 0), ``h`` the user's recency-weighted conversions
(purchases, or ratings >= 4 stars) and ``pop`` the recency-weighted conversions of all users (a tie-breaker
and the cold-start fallback).  The history weight ``b`` is chosen on an inner validation split carved from
the training days only (never the held-out test days).  ALS is Hu, Koren & Volinsky (2008), "Collaborative
Filtering for Implicit Feedback Datasets", as implemented by ``implicit``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import date

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from factory_assets.recsys.matrix import Interactions

log = logging.getLogger(__name__)

POPULARITY_TIE_BREAK = 1e-3


@dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters; everything that changes the artefact's bytes is here (and in the manifest)."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    seed: int = 42
    num_threads: int = 1
    half_life_days: float = 14.0
    history_weight: float | None = None
    history_weight_grid: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["history_weight_grid"] = list(self.history_weight_grid)
        return out


@dataclass(frozen=True)
class BlendModel:
    """A fitted model: ALS factors, per-user history and item popularity over one id space.

    Shapes: ``user_factors`` ``(n_users, f)`` float32, ``item_factors`` ``(n_items, f)`` float32,
    ``history`` CSR ``(n_users, n_items)`` float32, ``popularity`` ``(n_items,)`` float32.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    history: sp.csr_matrix
    popularity: np.ndarray
    history_weight: float
    params: ModelParams = field(default_factory=ModelParams)

    def user_rows(self, user_ids: np.ndarray | list[str]) -> np.ndarray:
        """Row of each user id, ``-1`` for users the model has never seen (cold start)."""
        return Interactions(self.history, self.user_ids, self.item_ids).user_index(user_ids)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Blended scores ``(len(rows), n_items)`` float64; rows ``-1`` get the popularity fallback."""
        rows = np.asarray(rows, dtype=np.int64)
        pop = self.popularity.astype(np.float64)
        pop_norm = pop / pop.max() if len(pop) and pop.max() > 0 else np.zeros_like(pop)
        out = np.tile(pop_norm, (len(rows), 1))
        known = rows >= 0
        if known.any():
            r = rows[known]
            als = np.clip(self.user_factors[r].astype(np.float64) @ self.item_factors.T.astype(np.float64), 0, None)
            als_max = als.max(axis=1, keepdims=True)
            als_norm = np.divide(als, als_max, out=np.zeros_like(als), where=als_max > 0)
            hist = np.log1p(self.history[r].toarray().astype(np.float64))
            hist_max = hist.max(axis=1, keepdims=True)
            hist_norm = np.divide(hist, hist_max, out=np.zeros_like(hist), where=hist_max > 0)
            b = self.history_weight
            out[known] = (1 - b) * als_norm + b * hist_norm + POPULARITY_TIE_BREAK * pop_norm
        return out


def recency_decay(days: pd.Series, as_of: date, half_life_days: float) -> np.ndarray:
    """Weight ``0.5 ** (age / half_life)`` per row, age in whole days before ``as_of`` (0 on ``as_of``)."""
    age = (pd.Timestamp(as_of) - pd.to_datetime(days)).dt.days.to_numpy(dtype=np.float64)
    return np.power(0.5, age / half_life_days)


def fit_model(train: pd.DataFrame, as_of: date, params: ModelParams, history_weight: float) -> BlendModel:
    """Fit ALS and the history/popularity terms on user x item daily features.

    Args:
        train: rows of the ``user_item_daily`` feature view: ``day`` (date), ``user_id``, ``item_id``
            (str), ``weight`` (float, event-type weighted interactions), ``n_conversions`` (int).
        as_of: the last training day; recency ages are counted from it (days, UTC).
        params: hyper-parameters (seeded, fixed thread count: fits are bit-reproducible).
        history_weight: ``b`` in the module formula, in ``[0, 1]``.

    Raises:
        ValueError: if ``train`` is empty (nothing to learn from).
    """
    if train.empty:
        raise ValueError("cannot fit a model on an empty training frame")
    import implicit  # imported lazily: it pulls in its BLAS setup

    decay = recency_decay(train["day"], as_of, params.half_life_days)
    frame = train.assign(
        confidence=np.log1p(train["weight"].to_numpy(dtype=np.float64) * decay),
        history=train["n_conversions"].to_numpy(dtype=np.float64) * decay,
    )
    conf = Interactions.from_frame(frame, "confidence")
    hist = Interactions.from_frame(frame, "history", conf.user_ids, conf.item_ids)
    als = implicit.als.AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        random_state=params.seed,
        num_threads=params.num_threads,
        calculate_training_loss=False,
    )
    with threadpool_limits(limits=1, user_api="blas"):
        als.fit(conf.matrix, show_progress=False)
    popularity = np.asarray(hist.matrix.sum(axis=0)).ravel() + 1e-3 * np.asarray(conf.matrix.sum(axis=0)).ravel()
    return BlendModel(
        user_ids=conf.user_ids,
        item_ids=conf.item_ids,
        user_factors=np.ascontiguousarray(als.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(als.item_factors, dtype=np.float32),
        history=hist.matrix,
        popularity=popularity.astype(np.float32),
        history_weight=float(history_weight),
        params=replace(params, history_weight=float(history_weight)),
    )
