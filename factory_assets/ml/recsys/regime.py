"""A faster response to a behaviour shift: the regime's terms and a validated choice of how much to forget.

When the drift monitor has flagged a change point (``ModelParams.regime_start``, the first day of the new
*regime*), a model gets two extra terms (:func:`with_regime_terms`, added by ``BlendModel.scores`` to the
blend's or the ranker's score):

* the **category trend** ``kappa * log(r_c(i))``: ``r_c`` is the share of category ``c`` in the interaction
  weight since the change point over its share before it, the share since shrunk towards the share before by
  :data:`TREND_PRIOR` pseudo-weight units.  ``kappa = 1`` re-weights each item's odds by how much more (or less)
  its category is chosen now: the prior-shift correction of Saerens, Latinne & Decaestecker (2002), "Adjusting
  the outputs of a classifier to new a priori probabilities", with categories as the classes;
* the user's **own interactions since the change point**: ``regime_recent_weight * log1p(w)``, ``w`` the
  user x item interaction weight (``user_item_daily.weight``) of the regime's days: what a user did since the
  shift reveals their new favourites before they are bought.

How strongly to forget the days before the change point (``regime_decay``, :func:`~factory_assets.ml.recsys.model.regime_weights`)
and whether the trend helps (``kappa`` 0 or 1) are chosen by :func:`choose_regime` on the newest days, by a
leave-users-out split: half of the users who converted since the change point (a fixed hash, as
``evaluation.sample_users``) lose their rows since it; each grid decay is fitted on the rest and scores those
users' conversions since the change point by NDCG@10.  One day of the new regime is enough to validate on: the
held-out users are in the situation of a user who has not come back since the shift.

Without item categories (a source that has none) the trend is off and only the decay is chosen.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd

from factory_assets.ml.recsys.matrix import Interactions
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model

TREND_PRIOR = 200.0  # pseudo-weight (interaction-weight units, a view = 1) of the old share in the new one
TREND_GRID = (0.0, 1.0)


def regime_mask(frame: pd.DataFrame, params: ModelParams) -> np.ndarray:
    """Bool ``(len(frame),)``: rows on or after ``params.regime_start`` (all False without one)."""
    if params.regime_start is None or frame.empty:
        return np.zeros(len(frame), dtype=bool)
    days = pd.to_datetime(pd.Series(frame["day"].unique()))
    new = dict(zip(frame["day"].unique(), (days >= pd.Timestamp(params.regime_start)).to_numpy()))
    return frame["day"].map(new).to_numpy(dtype=bool)


def category_log_ratio(current: pd.Series, reference: pd.Series, categories: pd.Series, item_ids: np.ndarray,
                       prior: float = TREND_PRIOR) -> np.ndarray:
    """``log r_c(i)`` per item (float64 ``(len(item_ids),)``, 0 for an item without a category).

    Args:
        current, reference: interaction weight per item id (float), now and before.
        categories: item id -> category (str).
        prior: pseudo-weight of the reference share in the current one (shrinkage of a thin current sample).

    The reference share of a category is Laplace-smoothed (+1 weight per category) so a category new since the
    change point gets a finite ratio.
    """
    cats = categories.astype(str)
    names = np.sort(cats.unique())
    def per_category(weights: pd.Series) -> np.ndarray:
        frame = pd.DataFrame({"c": cats.reindex(weights.index).to_numpy(), "w": weights.to_numpy(dtype=np.float64)})
        return frame.dropna().groupby("c")["w"].sum().reindex(names).fillna(0.0).to_numpy()
    cur, ref = per_category(current), per_category(reference)
    ref_share = (ref + 1.0) / (ref.sum() + len(names))
    cur_share = (cur + prior * ref_share) / (cur.sum() + prior)
    log_ratio = pd.Series(np.log(cur_share / ref_share), index=names)
    return log_ratio.reindex(cats.reindex(np.asarray(item_ids, dtype=str)).to_numpy()).fillna(0.0).to_numpy()


def with_regime_terms(model: BlendModel, frame: pd.DataFrame, categories: pd.Series | None) -> BlendModel:
    """``model`` with its regime terms from ``frame`` (the rows it was fitted on), or unchanged (``trend`` and
    ``recent`` None) when there is no change point or no row since it: such a model scores exactly as before.

    ``trend`` is ``params.regime_trend * log r`` (None when the exponent is 0 or ``categories`` is None);
    ``recent`` the users' summed ``weight`` since the change point on the model's ``(user, item)`` index.
    """
    new = regime_mask(frame, model.params)
    if not new.any():
        return replace(model, trend=None, recent=None)
    since = frame[new]
    recent = Interactions.from_frame(since[["user_id", "item_id", "weight"]], "weight", model.user_ids, model.item_ids).matrix
    trend = None
    if categories is not None and model.params.regime_trend:
        weight = lambda rows: rows.groupby("item_id", observed=True)["weight"].sum()  # noqa: E731
        trend = (model.params.regime_trend * category_log_ratio(weight(since), weight(frame[~new]), categories,
                                                                model.item_ids)).astype(np.float32)
    return replace(model, trend=trend, recent=recent.astype(np.float32))


def _held_out(users: np.ndarray) -> np.ndarray:
    """A fixed half of ``users`` (str): those whose ``pandas.util.hash_array`` is even."""
    return pd.util.hash_array(np.asarray(users, dtype=object)) % 2 == 0


def choose_regime(frame: pd.DataFrame, as_of: date, params: ModelParams, als_weight: float,
                  categories: pd.Series | None, k: int = 10) -> tuple[ModelParams, dict]:
    """``params`` with ``regime_decay`` and ``regime_trend`` chosen on the regime's days (module docstring).

    Returns ``(params, record)``; ``record`` (JSON-able, the manifest's ``"regime"``): ``start``, ``chosen``
    (``{"decay", "trend"}``), ``method``, ``n_users`` (held-out users evaluated) and ``trace`` (one row per grid
    point with ``validation_ndcg_at_10``); ``chosen`` keeps the configured values (``method`` says why) when
    there is no change point, no row since it, or fewer than 20 held-out users with a conversion since it.
    Ties go to the first grid point (the configured decay first, then trend 0).
    """
    from factory_assets.ml.recsys.evaluation import EvalSet, evaluate, model_scores, truth_sets

    record = {"start": params.regime_start, "chosen": {"decay": params.regime_decay, "trend": params.regime_trend},
              "method": "configured", "n_users": 0, "trace": []}
    new = regime_mask(frame, params)
    if not new.any():
        return params, record | {"method": "no day of the new regime in the window"}
    converted = frame[new & (frame["n_conversions"].to_numpy() > 0)]
    users = np.sort(converted["user_id"].astype(str).unique()).astype(str)
    held = users[_held_out(users)]
    truth_rows = converted[converted["user_id"].astype(str).isin(held)]
    if len(held) < 20:
        return params, record | {"method": f"only {len(held)} held-out users converted since the change point"}
    train = frame[~(new & frame["user_id"].astype(str).isin(held).to_numpy())]
    catalogue = np.sort(train["item_id"].astype(str).unique()).astype(str)
    truth_rows = truth_rows[truth_rows["item_id"].astype(str).isin(catalogue)]
    eval_users, truth = truth_sets(truth_rows["user_id"].astype(str).to_numpy(),
                                   np.searchsorted(catalogue, truth_rows["item_id"].astype(str).to_numpy()))
    eval_set = EvalSet(user_ids=eval_users, catalogue=catalogue, truth=truth)
    grid_trend = TREND_GRID if categories is not None else (0.0,)
    decays = (params.regime_decay, *[d for d in params.regime_decay_grid if d != params.regime_decay])
    best = None
    for decay in decays:
        base = fit_model(train, as_of, replace(params, regime_decay=decay, model_kind="blend"), als_weight)
        for kappa in grid_trend:
            model = with_regime_terms(replace(base, params=replace(base.params, regime_trend=kappa)), train, categories)
            ndcg = evaluate(model_scores(model, eval_set), eval_set, k).ndcg
            record["trace"].append({"decay": decay, "trend": kappa, "validation_ndcg_at_10": round(float(ndcg), 6)})
            if best is None or ndcg > best[0]:
                best = (ndcg, decay, kappa)
    _, decay, kappa = best
    record |= {"chosen": {"decay": decay, "trend": kappa}, "n_users": len(eval_users),
               "method": "leave-users-out validation on the days since the change point"}
    return replace(params, regime_decay=decay, regime_trend=kappa), record
