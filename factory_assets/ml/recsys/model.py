"""The candidate recommender: the user's own recency-weighted history, item popularity and implicit ALS.

On retail logs a customer's own past purchases are the strongest single signal (the repeat-purchase
baseline), so a plain ALS often loses to it.  The model scores every item as

    score(u, i) = log1p(h(u, i))  +  p * pop(i) / max_j pop(j)  +  a * als(u, i) / max_j als(u, j)

where ``h`` is the user's recency-weighted conversions (purchases, or ratings >= 4 stars; half-life
``half_life_days``), ``pop`` the recency-weighted conversions of all users (also the cold-start fallback), and
``als`` the ALS dot product clipped at 0.  An item the user converted on outranks unseen items unless the
collaborative and popularity evidence is strong (``a + p`` exceeds ``log1p`` of the history weight).  The ALS
weight ``a`` is chosen on an inner validation split carved from the training days only (never the held-out
test days).  ALS is Hu, Koren & Volinsky (2008), "Collaborative Filtering for Implicit Feedback Datasets",
as implemented by ``implicit``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from factory_assets.ml.recsys.matrix import Interactions, factorize

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters; everything that changes the artefact's bytes is here (and in the manifest)."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    seed: int = 42
    # implicit's ALS threads (0 = every core): each user's and item's row is solved on its own, so the factors are
    # the same bit for bit whatever the count (factory_assets_tests/recsys/test_bounded_cost.py)
    num_threads: int = 0
    half_life_days: float = 56.0
    popularity_weight: float = 1.0
    als_weight: float | None = None
    als_weight_grid: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    # The learned ranker (``recsys.ranker``, the default); ``model_kind="blend"`` is the formula above.
    model_kind: str = "ranker"
    n_candidates: int = 50
    ranker_c: float | None = None
    search_budget: int = 4
    recency_half_life_days: float = 7.0
    n_neighbours: int = 30
    ranker_kind: str = "linear"  # "linear" (logistic regression) or "trees" (gradient-boosted trees)
    tree_iterations: int = 100
    tree_leaves: int = 15
    ranker_user_weighting: bool = False  # weight each user's positives / negatives to sum to 1 (listwise-like)
    # Drift-triggered re-weighting (see ``regime_weights``): set by ``candidate_model`` from the drift monitor.
    regime_start: str | None = None  # ISO day: first day of the current behaviour regime, None = no change seen
    regime_decay: float = 0.7  # days before ``regime_start`` weigh regime_decay ** (days of the new regime) ...
    regime_floor: float = 0.05  # ... but at least this much (``regime_weights``)
    # The regime's own terms (``regime_terms``; only with a change point and item categories): the category trend's
    # exponent (1 = re-weight by the ratio of shares, 0 = off; chosen by ``recsys.regime.choose_regime``) and the weight
    # of each user's own interactions since the change point.
    regime_trend: float = 0.0
    regime_recent_weight: float = 1.0
    regime_decay_grid: tuple[float, ...] = (0.7, 0.3, 0.05)
    use_gpu: bool = False  # implicit's CUDA ALS (settings.als_gpu, FACTORY_ALS_GPU); GPU factors differ from CPU ones
    # The ranker's long purchase history (recsys.candidates.long_history): days before each fit's as-of day, 0 = off.
    history_days: int = 0
    # Bounded cost (evaluation.sample_users, a fixed hash sample): at most this many evaluated users, and label
    # users per ranker training slice; 0 = all.  The sizes sampled are in the manifest's ``sampling``.
    max_eval_users: int = 10_000
    max_label_users: int = 5_000

    def as_dict(self) -> dict:
        out = asdict(self)
        out["als_weight_grid"] = list(self.als_weight_grid)
        out["regime_decay_grid"] = list(self.regime_decay_grid)
        if not self.history_days:  # added later: a model without it keeps the exact bytes (and manifest) it had
            del out["history_days"]
        for name in ("max_eval_users", "max_label_users", "regime_trend", "regime_recent_weight", "regime_decay_grid"):
            # likewise, at their defaults
            if out[name] in (default := type(self).__dataclass_fields__[name].default, list(default) if isinstance(default, tuple) else default):
                del out[name]
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
    als_weight: float
    params: ModelParams = field(default_factory=ModelParams)
    ranker: Any = None  # a ``recsys.ranker.RankerPart`` (extra sources + coefficients), None for the blend
    # The regime's terms (``regime_terms``), None without a change point: ``trend`` ``(n_items,)`` float32, the
    # log-ratio of each item's category share since the change point to before it (times ``params.regime_trend``);
    # ``recent`` CSR ``(n_users, n_items)`` float32, each user's interaction weight since the change point.
    trend: np.ndarray | None = None
    recent: sp.csr_matrix | None = None

    def user_rows(self, user_ids: np.ndarray | list[str]) -> np.ndarray:
        """Row of each user id, ``-1`` for users the model has never seen (cold start)."""
        return Interactions(self.history, self.user_ids, self.item_ids).user_index(user_ids)

    def als_only(self) -> "BlendModel":
        """The plain-ALS reference: the same factors without the history and popularity terms."""
        empty = sp.csr_matrix(self.history.shape, dtype=np.float32)
        return replace(self, history=empty, als_weight=1.0, ranker=None, trend=None, recent=None,
                       params=replace(self.params, popularity_weight=0.0))

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Scores ``(len(rows), n_items)`` float64 per the module formula; rows ``-1`` get popularity only."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.ranker is not None:
            from factory_assets.ml.recsys.ranker import ranker_scores

            return self.add_regime_terms(ranker_scores(self, rows), rows)
        return self.add_regime_terms(self.blend_scores(rows, self.user_factors[np.maximum(rows, 0)], self.history[np.maximum(rows, 0)]), rows)

    def add_regime_terms(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``scores`` (float64 ``(len(rows), n_items)``, changed in place) plus the regime's terms: ``trend`` for
        every row and ``regime_recent_weight * log1p(recent)`` for known rows; unchanged without a regime."""
        if self.trend is not None:
            scores += self.trend.astype(np.float64)[None, :]
        if self.recent is not None and self.params.regime_recent_weight:
            known = np.flatnonzero(rows >= 0)
            if len(known):
                scores[known] += self.params.regime_recent_weight * np.log1p(self.recent[rows[known]].toarray().astype(np.float64))
        return scores

    def blend_scores(self, rows: np.ndarray, user_factors: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """The module formula for ``rows`` (``-1``: popularity only) with the given user factors ``(len(rows), f)``
        and history rows ``(len(rows), n_items)`` (the model's own, or folded in: ``recsys.live``)."""
        rows = np.asarray(rows, dtype=np.int64)
        pop = self.popularity.astype(np.float64)
        pop_norm = pop / pop.max() if len(pop) and pop.max() > 0 else np.zeros_like(pop)
        out = np.tile(self.params.popularity_weight * pop_norm, (len(rows), 1))
        known = rows >= 0
        if known.any():
            als = np.clip(np.asarray(user_factors)[known].astype(np.float64) @ self.item_factors.T.astype(np.float64), 0, None)
            als_max = als.max(axis=1, keepdims=True)
            als_norm = np.divide(als, als_max, out=np.zeros_like(als), where=als_max > 0)
            hist = np.log1p(sp.csr_matrix(history)[np.flatnonzero(known)].toarray().astype(np.float64))
            out[known] += hist + self.als_weight * als_norm
        return out


def recency_decay(days: pd.Series, as_of: date, half_life_days: float) -> np.ndarray:
    """Weight ``0.5 ** (age / half_life)`` per row, age in whole days before ``as_of`` (0 on ``as_of``)."""
    return _recency_decay(_DayIndex(days), as_of, half_life_days)


class _DayIndex:
    """A day column as its distinct values and each row's code, so per-day arithmetic runs once per day.

    ``per_row(values)`` spreads one value per distinct day (``pd.to_datetime(distinct)``-based, in the
    order of :attr:`distinct`) back to the rows: the same numbers as computing it on every row.
    """

    def __init__(self, days: pd.Series):
        self.codes, distinct = factorize(days, sort=False, use_na_sentinel=False)
        self.distinct = pd.to_datetime(pd.Series(distinct))
        self.n_rows = len(self.codes)

    def per_row(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)[self.codes]


def _recency_decay(days: "_DayIndex", as_of: date, half_life_days: float) -> np.ndarray:
    age = (pd.Timestamp(as_of) - days.distinct).dt.days.to_numpy(dtype=np.float64)
    return days.per_row(np.power(0.5, age / half_life_days))  # elementwise: the same numbers as per row


def _host(factors) -> np.ndarray:
    """Factors as a host NumPy array (implicit's GPU model keeps them on the device)."""
    return factors.to_numpy() if hasattr(factors, "to_numpy") else np.asarray(factors)


def regime_weights(days: pd.Series, as_of: date, params: "ModelParams") -> np.ndarray:
    """Per-row weight of the drift re-weighting: old-regime rows ``max(decay ** n, floor)``, others 1.

    ``n`` = days of the new regime in the fit (``regime_start`` .. ``as_of``, inclusive).  The old regime's
    days are shrunk gradually, not cut: one day of new behaviour is thin evidence, so right after a change
    point the old days still carry most of the weight (0.7 with the default decay), a week later almost none
    (0.7 ** 8 = 0.058, floored at 0.05).  Measured on the simulator's default shift (strength 1.5), hit-rate@10
    as a share of the oracle's on the 1st / 3rd / 7th / 11th day after the shift: none 0.606 / 0.664 / 0.689 /
    0.735, a constant 0.05 0.585 / 0.693 / 0.728 / 0.759, this schedule 0.609 / 0.674 / 0.731 / 0.756.

    All 1 when ``regime_start`` is None or no row is on or after it: a frame that holds only the old regime
    (e.g. the evaluation model's training days, when the change point falls in the test days) is fitted
    exactly as without a change point.  Shape ``(len(days),)`` float64.
    """
    return _regime_weights(_DayIndex(days), as_of, params)


def _regime_weights(days: "_DayIndex", as_of: date, params: "ModelParams") -> np.ndarray:
    if params.regime_start is None or days.n_rows == 0:
        return np.ones(days.n_rows)
    start = pd.Timestamp(params.regime_start)
    old = days.per_row((days.distinct < start).to_numpy())
    if old.all():
        return np.ones(days.n_rows)
    n_new = (pd.Timestamp(as_of) - start).days + 1
    return np.where(old, max(params.regime_decay ** n_new, params.regime_floor), 1.0)


def fit_model(train: pd.DataFrame, as_of: date, params: ModelParams, als_weight: float) -> BlendModel:
    """Fit ALS and the history/popularity terms on user x item daily features.

    Args:
        train: rows of the ``user_item_daily`` feature view: ``day`` (date), ``user_id``, ``item_id``
            (str), ``weight`` (float, event-type weighted interactions), ``n_conversions`` (int).
        as_of: the last training day; recency ages are counted from it (days, UTC).  Rows before
            ``params.regime_start`` are further down-weighted by :func:`regime_weights` (drift re-weighting).
        params: hyper-parameters (seeded: fits are bit-reproducible, whatever ``num_threads``).
        als_weight: ``a`` in the module formula (>= 0).

    Raises:
        ValueError: if ``train`` is empty (nothing to learn from).
    """
    if train.empty:
        raise ValueError("cannot fit a model on an empty training frame")
    import implicit  # imported lazily: it pulls in its BLAS setup

    days = _DayIndex(train["day"])  # the day column is parsed once, per distinct day
    decay = _recency_decay(days, as_of, params.half_life_days)
    if params.regime_start is not None:  # otherwise the weights are all 1 (x * 1.0 is x, bit for bit)
        decay = decay * _regime_weights(days, as_of, params)
    matrices = Interactions.many(train, {
        "confidence": np.log1p(train["weight"].to_numpy(dtype=np.float64) * decay),
        "history": train["n_conversions"].to_numpy(dtype=np.float64) * decay,
    })
    conf, hist = matrices["confidence"], matrices["history"]
    als = implicit.als.AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
        random_state=params.seed,
        num_threads=params.num_threads,
        calculate_training_loss=False,
        use_gpu=params.use_gpu,  # explicit: implicit's own default is use_gpu=HAS_CUDA
    )
    with threadpool_limits(limits=1, user_api="blas"):
        als.fit(conf.matrix, show_progress=False)
    popularity = np.asarray(hist.matrix.sum(axis=0)).ravel() + 1e-3 * np.asarray(conf.matrix.sum(axis=0)).ravel()
    return BlendModel(
        user_ids=conf.user_ids,
        item_ids=conf.item_ids,
        user_factors=np.ascontiguousarray(_host(als.user_factors), dtype=np.float32),
        item_factors=np.ascontiguousarray(_host(als.item_factors), dtype=np.float32),
        history=hist.matrix,
        popularity=popularity.astype(np.float32),
        als_weight=float(als_weight),
        params=replace(params, als_weight=float(als_weight)),
    )
