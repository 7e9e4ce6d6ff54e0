"""Temporal evaluation protocol: one held-out block of later days, the same users for every model.

Protocol (used for the candidate, both baselines and the champion alike):

- train = the window's first ``len(days) - holdout_days`` days, test = its last ``holdout_days`` days;
- catalogue = items with any interaction in the training days (a model cannot know later items);
- evaluated users = users with at least one conversion (purchase, or rating >= 4 stars) in the training
  days AND in the test days;
- truth = the distinct catalogue items a user converted on in the test days (users whose test
  conversions are all outside the catalogue are left out);
- every model ranks the whole catalogue for each evaluated user; metrics at k=10 (see ``metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from factory_assets.ml.recsys import baselines
from factory_assets.ml.recsys.matrix import factorize
from factory_assets.ml.recsys.metrics import RankingReport, ranking_metrics, top_k
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model

K = 10


@dataclass(frozen=True)
class TemporalSplit:
    """Training and test rows of a window, with their (inclusive) day ranges."""

    train: pd.DataFrame
    test: pd.DataFrame
    train_days: tuple[date, date]
    test_days: tuple[date, date]


def temporal_split(frame: pd.DataFrame, window: tuple[date, date], holdout_days: int) -> TemporalSplit:
    """Split ``user_item_daily`` rows of the inclusive ``window`` into train (earlier) and test (last days).

    Raises:
        ValueError: if the window is not longer than ``holdout_days``.
    """
    start, end = window
    n_days = (end - start).days + 1
    if n_days <= holdout_days:
        raise ValueError(f"a window of {n_days} days cannot hold out {holdout_days} test days")
    test_start = end - timedelta(days=holdout_days - 1)
    # ``pd.to_datetime(frame["day"]).dt.date`` compared per distinct day, not per row (a 28-day window at 1M
    # events/day has ~6M rows and 28 days); a missing day (NaT) is in neither part, as per row
    codes, distinct = factorize(frame["day"], sort=False, use_na_sentinel=False)
    days = pd.to_datetime(pd.Series(distinct)).dt.date
    return TemporalSplit(
        train=frame[(days < test_start).to_numpy(dtype=bool)[codes]].reset_index(drop=True),
        test=frame[(days >= test_start).to_numpy(dtype=bool)[codes]].reset_index(drop=True),
        train_days=(start, test_start - timedelta(days=1)),
        test_days=(test_start, end),
    )


@dataclass(frozen=True)
class EvalSet:
    """Who is evaluated and what counts as a hit.

    ``catalogue``: sorted str array of the items seen in training; ``user_ids``: sorted str array;
    ``truth[u]``: set of catalogue indexes user ``u`` converted on in the test days.
    """

    catalogue: np.ndarray
    user_ids: np.ndarray
    truth: list[set[int]]


def build_eval_set(train: pd.DataFrame, test: pd.DataFrame) -> EvalSet:
    """The evaluated users and their truth sets, per the module's protocol."""
    catalogue = np.sort(train["item_id"].astype(str).unique()).astype(str)
    buyers_train = train.loc[train["n_conversions"] > 0, "user_id"].astype(str).unique()
    bought = test[(test["n_conversions"] > 0) & test["user_id"].astype(str).isin(buyers_train)]
    users = bought["user_id"].astype(str).to_numpy(dtype=str)
    items = bought["item_id"].astype(str).to_numpy(dtype=str)
    col = np.searchsorted(catalogue, items)
    known = (col < len(catalogue)) & (catalogue[np.minimum(col, len(catalogue) - 1)] == items) if len(catalogue) else \
        np.zeros(len(items), dtype=bool)
    user_ids, truth = truth_sets(users[known], col[known])
    return EvalSet(catalogue=catalogue, user_ids=user_ids, truth=truth)


def truth_sets(users: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, list[set[int]]]:
    """``(user_ids, truth)`` from aligned (user id, catalogue column) pairs: the sorted distinct users (str) and each
    one's set of columns, built from the sorted pairs (no per-row Python)."""
    user_ids, u_codes = np.unique(np.asarray(users, dtype=str), return_inverse=True)
    pairs = np.unique(np.stack([u_codes.astype(np.int64).ravel(), np.asarray(columns, dtype=np.int64)]), axis=1)
    starts = np.searchsorted(pairs[0], np.arange(len(user_ids) + 1))
    cols = pairs[1].tolist()
    return user_ids.astype(str), [set(cols[starts[k]:starts[k + 1]]) for k in range(len(user_ids))]


def sample_users(eval_set: EvalSet, max_users: int) -> EvalSet:
    """At most ``max_users`` of the evaluated users (all of them when there are not more).

    The users kept are those with the smallest 64-bit hash of their id (``pandas.util.hash_array``, fixed key):
    a sample that is the same whatever the day, the window or the process, and independent of activity, so
    metrics on it estimate the whole population's without bias.  Order and truth sets follow ``user_ids``.
    """
    n = len(eval_set.user_ids)
    if max_users <= 0 or n <= max_users:
        return eval_set
    hashes = pd.util.hash_array(np.asarray(eval_set.user_ids, dtype=object))
    keep = np.sort(np.argsort(hashes, kind="stable")[:max_users])
    return EvalSet(catalogue=eval_set.catalogue, user_ids=eval_set.user_ids[keep],
                   truth=[eval_set.truth[i] for i in keep])


def model_scores(model: BlendModel, eval_set: EvalSet) -> np.ndarray:
    """The model's scores re-indexed to the eval catalogue ``(n_users, len(catalogue))``.

    Catalogue items the model does not know get ``-inf`` (never recommended); items the model knows
    outside the catalogue are ignored.  This lets a champion trained on another window be scored fairly.
    """
    scores = model.scores(model.user_rows(eval_set.user_ids))
    columns = np.searchsorted(model.item_ids, eval_set.catalogue)
    columns = np.clip(columns, 0, max(len(model.item_ids) - 1, 0))
    known = (model.item_ids[columns] == eval_set.catalogue) if len(model.item_ids) else np.zeros(len(eval_set.catalogue), bool)
    out = np.full((len(eval_set.user_ids), len(eval_set.catalogue)), -np.inf)
    out[:, known] = scores[:, columns[known]]
    return out


def evaluate(scores: np.ndarray, eval_set: EvalSet, k: int = K) -> RankingReport:
    """Metrics of a score matrix aligned with ``eval_set`` (see :func:`model_scores`)."""
    return ranking_metrics(top_k(scores, k), eval_set.truth, len(eval_set.catalogue), k)


def evaluate_baselines(train: pd.DataFrame, eval_set: EvalSet, k: int = K) -> dict[str, RankingReport]:
    """Exactly the two reference baselines, ``popularity`` and ``repeat``, on ``eval_set``."""
    return {
        "popularity": evaluate(baselines.popularity_scores(train, eval_set.user_ids, eval_set.catalogue), eval_set, k),
        "repeat": evaluate(baselines.repeat_scores(train, eval_set.user_ids, eval_set.catalogue), eval_set, k),
    }


@dataclass(frozen=True)
class Tuning:
    """The chosen ALS weight and the search trace (inner-validation NDCG@10 per grid value)."""

    als_weight: float
    trace: list[dict[str, float]]


def tune_als_weight(train: pd.DataFrame, train_days: tuple[date, date], params: ModelParams, holdout_days: int) -> Tuning:
    """Choose the ALS weight ``a`` on an inner split of the TRAINING days only (its last ``holdout_days`` as validation).

    One ALS fit on the inner-train days; every grid value is scored on the same inner-validation users.
    Falls back to the grid's middle value when the inner split has no evaluable users.
    """
    if params.als_weight is not None:
        return Tuning(params.als_weight, [])
    grid = params.als_weight_grid
    inner = temporal_split(train, train_days, holdout_days)
    eval_set = build_eval_set(inner.train, inner.test)
    if len(eval_set.user_ids) == 0 or inner.train.empty:
        return Tuning(grid[len(grid) // 2], [])
    model = fit_model(inner.train, inner.train_days[1], params, als_weight=0.0)
    trace = []
    for weight in grid:
        report = evaluate(model_scores(replace(model, als_weight=weight), eval_set), eval_set)
        trace.append({"als_weight": weight, "validation_ndcg_at_10": round(report.ndcg, 6), "n_users": report.n_users})
    best = max(trace, key=lambda row: row["validation_ndcg_at_10"])  # first maximum: smallest weight on ties
    return Tuning(float(best["als_weight"]), trace)
