"""A learned ranker over multi-source candidates: logistic regression on point-in-time features.

Pipeline (no held-out test day is ever read; see ``training.train_candidate``):

1. inner split of the training rows: ``inner_train`` (earlier) and ``inner_val`` (later; for Online Retail the
   last ``holdout_days`` training days, for a per-user split each user's last ratings);
2. candidate sources (``recsys.candidates`` + ALS from ``recsys.model.fit_model``) are fitted on
   ``inner_train`` only; features per (user, item) come from them (:data:`FEATURES`, :func:`features`);
3. labels = 1 for the items a user converted on in ``inner_val`` (the evaluation protocol's truth), 0 for
   every other candidate; only the candidates (:func:`candidates.candidate_mask`) of users converting in both
   are training rows;
4. a small budgeted search (:data:`ALS_GRID` x :data:`C_GRID`, at most ``search_budget`` ALS fits): the
   inner-validation users are split in two seeded halves, the ranker is fitted on one half and scored
   (NDCG@10) on the other; the trace is returned for the manifest;
5. the chosen coefficients are attached to a model whose sources are refitted on all the rows it is given
   (the evaluation model on the train days, the served model on the whole window).

Scoring: ``logit = standardised features @ coef + intercept`` for candidates, ``logit - 1e6`` for
non-candidates (never above a candidate, but still ordered).  Cold-start users (unknown to the model) get the
documented fallback: recency-weighted popularity (``BlendModel.popularity``), the same list for all.

The ranker is a linear model: its whole state is the arrays ``coef``, ``intercept``, ``mean``, ``scale``
(float64), stored in the model's ``.npz`` (no pickle).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from factory_assets.ml.recsys.candidates import SourceArrays, candidate_mask, fit_sources, rank_of
from factory_assets.ml.recsys.metrics import ranking_metrics, top_k
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model

log = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = (
    "hist_log",          # log1p(recency-weighted own conversions)
    "seen",              # the user interacted with the item (any event)
    "recency",           # 0.5 ** (days since the user's last interaction with it / recency half-life)
    "seen_x_activity",   # seen * log1p(number of items the user interacted with)
    "als",               # ALS dot product
    "als_rank_log",      # log1p(rank of the item in the user's ALS scores)
    "pop_log",           # log1p(recency-weighted conversions of all users)
    "pop_rank_log",      # log1p(popularity rank)
    "converters_log",    # log1p(distinct converters in the rows)
    "conv_7d_log",       # log1p(distinct converters in the last 7 days)
    "conv_prev_7d_log",  # log1p(distinct converters in the 7 days before)
    "cooc_log",          # log1p(sum of co-purchase similarities with the user's items)
    "cooc_rank_log",     # log1p(rank of the item by that score)
    "activity_log",      # log1p(number of items the user interacted with)
    "n_days_log",        # log1p(distinct days the user converted on the item)
    "repeat_rate",       # share of the item's converters who converted on it on >= 2 days
    "user_days_log",     # log1p(distinct days the user converted)
    "seen_x_repeat",     # seen * repeat_rate
    "share",             # own recency-weighted conversions of the item / of all the user's items
    "als_norm",          # ALS clipped at 0 / the user's maximum (the blend's ALS term)
    "cooc_norm",         # co-purchase score / the user's maximum
    # long purchase history (``ModelParams.history_days`` ending as_of; zeros when it is off):
    "long_days_log",     # log1p(distinct days the user converted on the item)
    "long_conv_log",     # log1p(the user's conversions of the item)
    "long_recency",      # 0.5 ** (days since the user's last conversion of it / 28)
    "long_share",        # the item's share of the user's conversions
    "long_due_log",      # log1p(days since the last conversion / the user's mean days between conversions of it)
    "long_converters_log",  # log1p(distinct converters of the item)
    "long_user_items_log",  # log1p(distinct items the user converted on)
)
NON_CANDIDATE_PENALTY = 1e6
BATCH = 256

# Budgeted search space (fixed, so a re-run from a manifest repeats the same search); the first entries are tried first.
ALS_GRID: tuple[dict, ...] = (
    {"factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15},
    {"factors": 32, "regularization": 0.1, "alpha": 5.0, "iterations": 15},
    {"factors": 128, "regularization": 0.05, "alpha": 1.0, "iterations": 10},
    {"factors": 16, "regularization": 0.5, "alpha": 10.0, "iterations": 15},
    {"factors": 64, "regularization": 1.0, "alpha": 20.0, "iterations": 20},
)
C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0)


@dataclass(frozen=True)
class LinearRanker:
    """``logit(x) = ((x - mean) / scale) @ coef + intercept``; all float64 arrays of length ``len(FEATURES)``."""

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray

    def logit(self, x: np.ndarray) -> np.ndarray:
        # a ranker saved before features were appended to FEATURES reads only the first len(coef) columns
        z = (x[:, : len(self.coef)].astype(np.float64) - self.mean) / self.scale
        return z @ self.coef + self.intercept


@dataclass(frozen=True)
class TreeRanker:
    """A gradient-boosted tree ensemble as plain arrays (exported from sklearn's HistGradientBoosting).

    Nodes of all trees are concatenated; ``roots[t]`` is tree ``t``'s root.  Per node: ``feature`` (int64),
    ``threshold`` (float64; go left when ``x <= threshold``), ``missing_left`` (bool), ``left`` / ``right``
    (int64, global node indexes), ``is_leaf`` (bool), ``value`` (float64, leaf output).  ``logit`` =
    ``baseline + sum of the leaves reached``.  No pickle: every field is a numeric array.
    """

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    baseline: float
    max_depth: int

    @classmethod
    def from_sklearn(cls, model) -> "TreeRanker":
        roots, parts, offset, depth = [], [], 0, 0
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if np.any(nodes["is_categorical"]):
                raise ValueError("categorical splits are not supported")
            roots.append(offset)
            parts.append((nodes, offset))
            depth = max(depth, int(nodes["depth"].max()))
            offset += len(nodes)
        cat = lambda f, dtype: np.concatenate([n[f].astype(dtype) for n, _ in parts]) if parts else np.zeros(0, dtype)  # noqa: E731
        left = np.concatenate([n["left"].astype(np.int64) + o for n, o in parts]) if parts else np.zeros(0, np.int64)
        right = np.concatenate([n["right"].astype(np.int64) + o for n, o in parts]) if parts else np.zeros(0, np.int64)
        return cls(roots=np.asarray(roots, dtype=np.int64), feature=cat("feature_idx", np.int64),
                   threshold=cat("num_threshold", np.float64), missing_left=cat("missing_go_to_left", bool),
                   left=left, right=right, is_leaf=cat("is_leaf", bool), value=cat("value", np.float64),
                   baseline=float(np.ravel(model._baseline_prediction)[0]), max_depth=depth)

    def logit(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.full(len(x), self.baseline)
        idx = np.arange(len(x))
        for root in self.roots:
            node = np.full(len(x), root, dtype=np.int64)
            for _ in range(self.max_depth + 1):
                leaf = self.is_leaf[node]
                if leaf.all():
                    break
                v = x[idx, self.feature[node]]
                go_left = np.where(np.isnan(v), self.missing_left[node], v <= self.threshold[node])
                node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
            out += self.value[node]
        return out


def fit_trees(x: np.ndarray, y: np.ndarray, params: ModelParams) -> TreeRanker:
    """HistGradientBoostingClassifier (sklearn), exported to arrays (:class:`TreeRanker`)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if len(np.unique(y)) < 2:
        return TreeRanker(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool),
                          np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0), 0.0, 0)
    with threadpool_limits(limits=2):
        hgb = HistGradientBoostingClassifier(max_iter=params.tree_iterations, learning_rate=0.05,
                                             max_leaf_nodes=params.tree_leaves, min_samples_leaf=40,
                                             l2_regularization=1.0, random_state=params.seed).fit(x, y)
    return TreeRanker.from_sklearn(hgb)


@dataclass(frozen=True)
class RankerPart:
    """What a ranker model adds to a :class:`BlendModel`: the extra sources and the linear ranker."""

    sources: SourceArrays
    linear: LinearRanker
    n_candidates: int


def features(model: BlendModel, sources: SourceArrays, rows: np.ndarray, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(len(rows), n_items, len(FEATURES))`` float32 and the candidate mask, for known ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    n, m = len(rows), len(model.item_ids)
    hist = model.history[rows].toarray().astype(np.float64)
    rec_sp = sources.recency[rows]
    rec = rec_sp.toarray().astype(np.float64)
    seen = rec > 0
    activity = np.log1p(seen.sum(axis=1, keepdims=True)).astype(np.float64)
    als = model.user_factors[rows].astype(np.float64) @ model.item_factors.T.astype(np.float64)
    als_rank = rank_of(als)
    pop = model.popularity.astype(np.float64)
    pop_rank = rank_of(pop[None, :])
    seen_sp = rec_sp.copy() if sources.long_days is None else (rec_sp + sources.long_days[rows]).tocsr()
    seen_sp.data[:] = 1.0
    cooc = np.asarray((seen_sp @ sources.neighbours.T).todense(), dtype=np.float64) if m else np.zeros((n, 0))
    cooc_rank = rank_of(cooc)
    trend_rank = rank_of(sources.converters_7d.astype(np.float64)[None, :])
    x = np.empty((n, m, len(FEATURES)), dtype=np.float32)
    x[..., 0] = np.log1p(hist)
    x[..., 1] = seen
    x[..., 2] = rec
    x[..., 3] = seen * activity
    x[..., 4] = als
    x[..., 5] = np.log1p(als_rank)
    x[..., 6] = np.log1p(pop)[None, :]
    x[..., 7] = np.log1p(pop_rank)
    x[..., 8] = np.log1p(sources.converters.astype(np.float64))[None, :]
    x[..., 9] = np.log1p(sources.converters_7d.astype(np.float64))[None, :]
    x[..., 10] = np.log1p(sources.converters_prev_7d.astype(np.float64))[None, :]
    x[..., 11] = np.log1p(cooc)
    x[..., 12] = np.log1p(cooc_rank)
    x[..., 13] = activity
    ndays = sources.days_count[rows].toarray().astype(np.float64)
    x[..., 14] = np.log1p(ndays)
    x[..., 15] = sources.item_repeat_rate.astype(np.float64)[None, :]
    x[..., 16] = np.log1p(sources.user_days[rows].astype(np.float64))[:, None]
    x[..., 17] = seen * sources.item_repeat_rate.astype(np.float64)[None, :]
    total = hist.sum(axis=1, keepdims=True)
    x[..., 18] = np.divide(hist, total, out=np.zeros_like(hist), where=total > 0)
    als_pos = np.clip(als, 0, None)
    als_max = als_pos.max(axis=1, keepdims=True) if m else np.zeros((n, 1))
    x[..., 19] = np.divide(als_pos, als_max, out=np.zeros_like(als_pos), where=als_max > 0)
    cooc_max = cooc.max(axis=1, keepdims=True) if m else np.zeros((n, 1))
    x[..., 20] = np.divide(cooc, cooc_max, out=np.zeros_like(cooc), where=cooc_max > 0)
    if sources.long_days is None:
        x[..., 21:] = 0.0
        bought = seen
    else:
        long_days = sources.long_days[rows].toarray().astype(np.float64)
        long_conv = sources.long_conversions[rows].toarray().astype(np.float64)
        x[..., 21] = np.log1p(long_days)
        x[..., 22] = np.log1p(long_conv)
        x[..., 23] = sources.long_recency[rows].toarray()
        long_total = long_conv.sum(axis=1, keepdims=True)
        x[..., 24] = np.divide(long_conv, long_total, out=np.zeros_like(long_conv), where=long_total > 0)
        x[..., 25] = np.log1p(sources.long_due[rows].toarray())
        x[..., 26] = np.log1p(sources.long_converters.astype(np.float64))[None, :]
        x[..., 27] = np.log1p((long_days > 0).sum(axis=1, keepdims=True))
        bought = seen | (long_days > 0)
    mask = candidate_mask([als_rank, np.broadcast_to(pop_rank, (n, m)), cooc_rank, np.broadcast_to(trend_rank, (n, m))],
                          bought, n_candidates)
    return x, mask


def ranker_scores(model: BlendModel, rows: np.ndarray) -> np.ndarray:
    """Scores ``(len(rows), n_items)`` float64 of a ranker model; rows ``-1`` get the popularity fallback."""
    part: RankerPart = model.ranker
    rows = np.asarray(rows, dtype=np.int64)
    pop = model.popularity.astype(np.float64)
    out = np.tile(np.log1p(pop), (len(rows), 1))
    known = np.flatnonzero(rows >= 0)
    for start in range(0, len(known), BATCH):
        idx = known[start:start + BATCH]
        x, mask = features(model, part.sources, rows[idx], part.n_candidates)
        block = out[idx] - NON_CANDIDATE_PENALTY  # non-candidates: below every candidate, by popularity
        block[mask] = part.linear.logit(x[mask])
        out[idx] = block
    return out


def fit_base(frame: pd.DataFrame, as_of: date, params: ModelParams,
             history: pd.DataFrame | None = None) -> tuple[BlendModel, SourceArrays]:
    """ALS + history + popularity (``fit_model``) and the other sources, all fitted on ``frame`` only; the long
    purchase history from ``history`` rows of the ``params.history_days`` days ending ``as_of``."""
    model = fit_model(frame, as_of, params, als_weight=0.0)
    sources = fit_sources(frame, as_of, model.user_ids, model.item_ids, params.recency_half_life_days, params.n_neighbours,
                          history=history, history_days=params.history_days)
    return model, sources


def attach(model: BlendModel, sources: SourceArrays, linear: LinearRanker, params: ModelParams) -> BlendModel:
    """The ranker model: ``model``'s arrays plus the sources and the linear ranker."""
    return replace(model, ranker=RankerPart(sources=sources, linear=linear, n_candidates=params.n_candidates),
                   params=replace(params, model_kind="ranker", als_weight=0.0))


@dataclass(frozen=True)
class _Examples:
    x: np.ndarray          # (n_rows, F) candidate features
    y: np.ndarray          # (n_rows,) labels
    group: np.ndarray      # (n_rows,) index of the user in ``users`` (ascending: a user's rows are contiguous)
    col: np.ndarray        # (n_rows,) the candidate's item column (ascending within a user)
    truth: list[set[int]]  # per user: converted columns in the label rows


def build_examples(model: BlendModel, sources: SourceArrays, label_users: np.ndarray, truth: list[set[int]],
                   n_candidates: int) -> _Examples:
    """Training rows: candidates of ``label_users`` (known to ``model``) with labels from ``truth`` (column sets).

    Only the candidates' rows are kept (``x[mask]``, their columns in ``col``): memory follows the candidates,
    not users x catalogue."""
    rows = model.user_rows(label_users)
    xs, ys, groups, cols = [], [], [], []
    for start in range(0, len(rows), BATCH):
        r = rows[start:start + BATCH]
        x, mask = features(model, sources, r, n_candidates)
        u_idx, c_idx = np.nonzero(mask)  # row-major: users ascending, columns ascending within a user
        label = np.zeros(mask.shape, dtype=np.int8)
        for j in range(len(r)):
            label[j, list(truth[start + j])] = 1
        xs.append(x[u_idx, c_idx])
        ys.append(label[u_idx, c_idx])
        groups.append(u_idx.astype(np.int64) + start)
        cols.append(c_idx.astype(np.int64))
    if not xs:
        f = len(FEATURES)
        return _Examples(np.zeros((0, f), np.float32), np.zeros(0, np.int8), np.zeros(0, np.int64),
                         np.zeros(0, np.int64), truth)
    return _Examples(np.concatenate(xs), np.concatenate(ys), np.concatenate(groups), np.concatenate(cols), truth)


def fit_linear(x: np.ndarray, y: np.ndarray, c: float, seed: int, weight: np.ndarray | None = None) -> LinearRanker:
    """Logistic regression (sklearn, lbfgs) on standardised features; the fitted arrays only are kept."""
    from sklearn.linear_model import LogisticRegression

    mean = x.astype(np.float64).mean(axis=0)
    scale = x.astype(np.float64).std(axis=0)
    scale[scale == 0] = 1.0
    f = x.shape[1]
    if len(np.unique(y)) < 2:
        return LinearRanker(np.zeros(f), 0.0, mean, scale)
    z = (x.astype(np.float64) - mean) / scale
    with threadpool_limits(limits=1, user_api="blas"):
        lr = LogisticRegression(C=c, max_iter=500, random_state=seed).fit(z, y, sample_weight=weight)
    return LinearRanker(coef=lr.coef_[0].astype(np.float64), intercept=float(lr.intercept_[0]), mean=mean, scale=scale)


def _ndcg(linear: LinearRanker, ex: _Examples, users: np.ndarray, n_items: int) -> float:
    """NDCG@10 of ``users`` ranking the whole catalogue: candidates by the ranker's logit, the other items at
    ``-NON_CANDIDATE_PENALTY`` (as :func:`ranker_scores`, without the popularity order among those)."""
    if len(users) == 0:
        return 0.0
    users = np.asarray(users, dtype=np.int64)
    bounds = np.searchsorted(ex.group, np.stack([users, users + 1]))
    tops = []
    for start in range(0, len(users), BATCH):
        lo, hi = bounds[0, start:start + BATCH], bounds[1, start:start + BATCH]
        take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(lo) else np.zeros(0, np.int64)
        scores = np.full((len(lo), n_items), -NON_CANDIDATE_PENALTY)
        scores[np.repeat(np.arange(len(lo)), hi - lo), ex.col[take]] = linear.logit(ex.x[take])
        tops.append(top_k(scores, 10))
    return ranking_metrics(np.concatenate(tops), [ex.truth[u] for u in users], n_items, 10).ndcg


@dataclass(frozen=True)
class RankerFit:
    """The chosen ALS parameters and ranker, with the search trace (validation NDCG@10 per configuration)."""

    params: ModelParams
    linear: LinearRanker
    trace: list[dict]


def _user_weights(parts) -> np.ndarray:
    """Per-row weights so that each (slice, user)'s positives sum to 1 and its negatives sum to 1."""
    out = []
    for ex, _, _ in parts:
        w = np.zeros(len(ex.y))
        for label in (0, 1):
            sel = ex.y == label
            counts = np.bincount(ex.group[sel], minlength=int(ex.group.max()) + 1 if len(ex.group) else 0)
            w[sel] = 1.0 / counts[ex.group[sel]]
        out.append(w)
    w = np.concatenate(out)
    return w * (len(w) / w.sum()) if len(w) and w.sum() > 0 else w


@dataclass(frozen=True)
class LabelSlice:
    """One training slice: features from ``rows`` (days <= ``as_of``), labels = ``label_items`` of ``label_users``."""

    rows: pd.DataFrame
    as_of: date
    label_users: np.ndarray
    label_items: list[set[str]]
    history: pd.DataFrame | None = None  # long purchase history rows (any days: only those <= as_of are read)


def train_ranker(slices: list[LabelSlice], params: ModelParams) -> RankerFit:
    """Search ALS / ranker parameters and fit the ranker on the slices (features before labels in each).

    ``label_users`` / ``label_items`` of a slice: users converting in both parts and the items they converted
    on in the label rows (:func:`evaluation.build_eval_set` of that split).  The search fits on the examples of
    half of the users (seeded, by user id) and scores NDCG@10 on the other half's users of every slice.
    """
    budget = max(int(params.search_budget), 0)
    configs = list(ALS_GRID[:budget]) if budget else [{}]
    c_grid = C_GRID if params.ranker_c is None else (params.ranker_c,)
    if params.ranker_kind == "trees":
        c_grid = (0.0,)  # unused by the trees
    all_users = np.unique(np.concatenate([np.asarray(sl.label_users, dtype=str) for sl in slices]))
    rng = np.random.default_rng(params.seed)
    in_half_a = set(all_users[rng.permutation(len(all_users))[: len(all_users) // 2]].tolist())
    trace: list[dict] = []
    best = None
    search = len(c_grid) > 1 or len(configs) > 1  # only a search scores the dense candidate matrices
    for config in configs:
        p = replace(params, **config)
        parts = []
        for sl in slices:
            model, sources = fit_base(sl.rows, sl.as_of, p, sl.history)
            col = {item: j for j, item in enumerate(model.item_ids.tolist())}
            truth = [{col[i] for i in items if i in col} for items in sl.label_items]
            ex = build_examples(model, sources, sl.label_users, truth, p.n_candidates)
            a_users = np.array([u in in_half_a for u in np.asarray(sl.label_users, dtype=str).tolist()], dtype=bool)
            parts.append((ex, a_users, len(model.item_ids)))
        x = np.concatenate([ex.x for ex, _, _ in parts])
        y = np.concatenate([ex.y for ex, _, _ in parts])
        in_a = np.concatenate([a[ex.group] if len(ex.group) else np.zeros(0, bool) for ex, a, _ in parts])
        w = _user_weights(parts) if p.ranker_user_weighting else None
        for c in c_grid:
            linear = fit_trees(x[in_a], y[in_a], p) if p.ranker_kind == "trees" else fit_linear(x[in_a], y[in_a], c, p.seed, None if w is None else w[in_a])
            score, n_b = float("nan"), 0
            if search:
                scores = []
                for ex, a, m in parts:
                    users_b = np.flatnonzero(~a)
                    if len(users_b):
                        scores.append((_ndcg(linear, ex, users_b, m), len(users_b)))
                n_b = sum(n for _, n in scores)
                score = sum(v * n for v, n in scores) / n_b if n_b else 0.0
            trace.append({**{k: getattr(p, k) for k in ("factors", "regularization", "alpha", "iterations")},
                          "ranker_c": c, "validation_ndcg_at_10": round(score, 6), "n_users": int(n_b),
                          "n_train_rows": int(in_a.sum())})
            if best is None or score > best[0]:
                best = (score, p, c, x, y, w)
    _, p, c, x, y, w = best
    linear = fit_trees(x, y, p) if p.ranker_kind == "trees" else fit_linear(x, y, c, p.seed, w)  # refit on all the users
    return RankerFit(params=replace(p, ranker_c=c), linear=linear, trace=trace)


def fit_ranker_model(frame: pd.DataFrame, as_of: date, fit: RankerFit, history: pd.DataFrame | None = None) -> BlendModel:
    """Refit the sources on ``frame`` (days <= ``as_of``; ``history`` as :func:`fit_base`) and attach the ranker."""
    model, sources = fit_base(frame, as_of, fit.params, history)
    return attach(model, sources, fit.linear, fit.params)
