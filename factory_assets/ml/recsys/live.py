"""The live path: the nightly model's scores with what happened today, for the service at request time.

A :class:`LiveState` is built from the feature store's intraday tables (``data.intraday``: today's events up to
``as_of``, by the daily views' SQL) for one champion, and holds, for the users active today:

* ``factors``: each user's ALS vector **folded in** from their interactions of the window *and* of today, with
  the champion's item factors fixed: ``implicit``'s ``recalculate_user`` (the exact least-squares solve of Hu,
  Koren & Volinsky 2008, eq. 4) on the confidence row a refit today would give the user
  (``log1p(weight * recency decay * regime weight)`` summed per item, as ``model.fit_model``; today's rows at age
  0).  A user new today gets a vector too.  ``factory_assets_tests/recsys/test_live.py`` checks it against the
  closed form and against a full refit;
* ``today`` / ``conversions``: their interaction weight and conversions of today on the model's item index;
* ``trend``: ``log r_c(i)`` of today's category shares against yesterday's (``regime.category_log_ratio``),
  only when the intraday drift check flagged today's category mix (``intraday_status.drifted``), zeros otherwise.

:func:`live_scores` is then, for a blend champion, the model formula with the folded vector and today's
conversions added to the history, plus ``regime_recent_weight * log1p(today's weight)`` and the trend; for a
ranker champion (whose candidate features are fitted nightly) the ranker's scores plus the same two terms.
Users not active today and the trend-free case score exactly as the nightly model.

Stored as a byte-reproducible ``.npz`` (``artefact.npz_bytes``; never pickled), named by the champion it was
built for: a state for another version is ignored by the service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from factory_assets.ml.recsys.matrix import Interactions
from factory_assets.ml.recsys.model import BlendModel, _DayIndex, _recency_decay, _regime_weights
from factory_assets.ml.recsys.regime import category_log_ratio

FORMAT = "factory_assets.live/1"


@dataclass(frozen=True)
class LiveState:
    """Today's additions to one champion (module docstring).

    Shapes: ``user_ids`` ``(n,)`` str sorted; ``today``, ``conversions`` CSR ``(n, n_items)`` float32 on the
    model's item index; ``factors`` ``(n, f)`` float32 (``(n, 0)`` for a ranker champion); ``trend``
    ``(n_items,)`` float32.  ``as_of``: UTC, events strictly before it are in.
    """

    model_version: int
    model_sha256: str
    day: date
    as_of: datetime
    data_version: str
    drifted: bool
    user_ids: np.ndarray
    today: sp.csr_matrix
    conversions: sp.csr_matrix
    factors: np.ndarray
    trend: np.ndarray

    def rows(self, user_ids) -> np.ndarray:
        """Row of each user id in this state, ``-1`` for users without an event today (int64)."""
        ids = np.asarray(user_ids, dtype=str)
        pos = np.searchsorted(self.user_ids, ids)
        pos = np.minimum(pos, max(len(self.user_ids) - 1, 0))
        found = (self.user_ids[pos] == ids) if len(self.user_ids) else np.zeros(len(ids), dtype=bool)
        return np.where(found, pos, -1).astype(np.int64)

    def describe(self) -> dict:
        """JSON-able summary (metadata, ``/readyz``)."""
        return {"model_version": self.model_version, "day": self.day.isoformat(), "as_of": self.as_of.isoformat(),
                "data_version": self.data_version, "users": len(self.user_ids), "drifted": self.drifted,
                "trend_items": int(np.count_nonzero(self.trend))}


def confidence_rows(frame: pd.DataFrame, as_of: date, model: BlendModel, user_ids: np.ndarray) -> sp.csr_matrix:
    """The confidence rows ``(len(user_ids), n_items)`` float32 a refit on ``frame`` with as-of ``as_of`` would
    give these users: ``log1p(weight * 0.5 ** (age / half_life) * regime weight)`` summed per (user, item), as
    :func:`~factory_assets.ml.recsys.model.fit_model`, on the model's item index (unknown items dropped)."""
    if frame.empty:
        return sp.csr_matrix((len(user_ids), len(model.item_ids)), dtype=np.float32)
    days = _DayIndex(frame["day"])
    decay = _recency_decay(days, as_of, model.params.half_life_days)
    if model.params.regime_start is not None:
        decay = decay * _regime_weights(days, as_of, model.params)
    work = pd.DataFrame({"user_id": frame["user_id"].to_numpy(), "item_id": frame["item_id"].to_numpy(),
                         "c": np.log1p(frame["weight"].to_numpy(dtype=np.float64) * decay)})
    return Interactions.from_frame(work, "c", np.asarray(user_ids, dtype=str), model.item_ids).matrix


def fold_in(model: BlendModel, confidence: sp.csr_matrix) -> np.ndarray:
    """User factors ``(n, f)`` float32 for confidence rows ``(n, n_items)``, the model's item factors fixed.

    ``implicit``'s CPU ``recalculate_user``: per row the exact solve of ``(Y'Y + Y'(C_u - I)Y + lambda I) x =
    Y'C_u p_u`` with ``C_u = alpha * confidence`` (implicit's convention, as in the nightly fit).
    """
    from implicit.cpu.als import AlternatingLeastSquares

    n = confidence.shape[0]
    if n == 0:
        return np.zeros((0, model.item_factors.shape[1]), dtype=np.float32)
    als = AlternatingLeastSquares(factors=model.item_factors.shape[1], regularization=model.params.regularization,
                                  alpha=model.params.alpha, num_threads=model.params.num_threads,
                                  random_state=model.params.seed, dtype=np.float32)
    als.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    als.user_factors = np.zeros((1, model.item_factors.shape[1]), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        return np.asarray(als.recalculate_user(np.arange(n), sp.csr_matrix(confidence, dtype=np.float32)), dtype=np.float32)


def build_live_state(model: BlendModel, version: int, sha256: str, status: dict, today_rows: pd.DataFrame,
                     window_rows: pd.DataFrame, yesterday_weights: pd.Series,
                     categories: pd.Series | None) -> LiveState:
    """The :class:`LiveState` of ``model`` (registry ``version``, manifest ``sha256``) for today.

    Args:
        status: ``contract.read_intraday``'s status (``day``, ``as_of``, ``data_version``, ``drifted``).
        today_rows: ``intraday_user_item`` rows (``user_item_daily``'s columns: ``user_id``, ``item_id``,
            ``weight``, ``n_conversions``).
        window_rows: ``user_item_daily`` rows of the champion's window (days < today) of today's users:
            ``day``, ``user_id``, ``item_id``, ``weight``.
        yesterday_weights: item id -> yesterday's summed ``weight`` (the trend's reference).
        categories: item id -> category, None when the source has none (no trend).
    """
    day = status["day"]
    users = np.sort(today_rows["user_id"].astype(str).unique()).astype(str)
    per_item = lambda value: Interactions.from_frame(today_rows[["user_id", "item_id", value]], value, users,  # noqa: E731
                                                     model.item_ids).matrix.astype(np.float32)
    today, conversions = per_item("weight"), per_item("n_conversions")
    if model.ranker is None:
        rows = pd.concat([window_rows[["day", "user_id", "item_id", "weight"]],
                          today_rows.assign(day=day)[["day", "user_id", "item_id", "weight"]]], ignore_index=True)
        factors = fold_in(model, confidence_rows(rows, day, model, users))
    else:
        factors = np.zeros((len(users), 0), dtype=np.float32)
    trend = np.zeros(len(model.item_ids), dtype=np.float32)
    if status["drifted"] and categories is not None and len(yesterday_weights):
        current = today_rows.groupby("item_id")["weight"].sum()
        trend = category_log_ratio(current, yesterday_weights, categories, model.item_ids).astype(np.float32)
    return LiveState(model_version=int(version), model_sha256=sha256, day=day, as_of=status["as_of"],
                     data_version=str(status["data_version"]), drifted=bool(status["drifted"]), user_ids=users,
                     today=today, conversions=conversions, factors=factors, trend=trend)


def live_scores(model: BlendModel, rows: np.ndarray, state: LiveState | None, live_rows: np.ndarray | None) -> np.ndarray:
    """Scores ``(len(rows), n_items)`` float64 with today's additions (module docstring).

    ``rows``: the users' rows in ``model`` (``-1`` unknown); ``live_rows``: their rows in ``state`` (``-1``: no
    event today).  Without a state (or none of the users active today) exactly ``model.scores(rows)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if state is None or live_rows is None or not (np.asarray(live_rows) >= 0).any():
        scores = model.scores(rows)
        if state is not None:
            scores += state.trend.astype(np.float64)[None, :]
        return scores
    live_rows = np.asarray(live_rows, dtype=np.int64)
    active = live_rows >= 0
    if model.ranker is not None:
        scores = model.scores(rows)
    else:
        safe = np.maximum(rows, 0)
        factors = np.where(active[:, None], state.factors[np.maximum(live_rows, 0)], model.user_factors[safe])
        history = model.history[safe].multiply((rows >= 0)[:, None]).tocsr() + state.conversions[np.maximum(live_rows, 0)].multiply(active[:, None]).tocsr()
        effective = np.where(active, np.maximum(rows, 0), rows)  # a user new today is scored as known
        scores = model.add_regime_terms(model.blend_scores(effective, factors, history), rows)
    weight = model.params.regime_recent_weight
    if weight:
        idx = np.flatnonzero(active)
        scores[idx] += weight * np.log1p(state.today[live_rows[idx]].toarray().astype(np.float64))
    scores += state.trend.astype(np.float64)[None, :]
    return scores


def state_arrays(state: LiveState) -> dict[str, np.ndarray]:
    """The arrays of a :class:`LiveState` (the inverse of :func:`state_from_arrays`)."""
    meta = {"format": FORMAT, "model_version": state.model_version, "model_sha256": state.model_sha256,
            "day": state.day.isoformat(), "as_of": state.as_of.isoformat(), "data_version": state.data_version,
            "drifted": state.drifted}
    out = {"meta_json": np.asarray([json.dumps(meta, sort_keys=True)]), "user_ids": np.asarray(state.user_ids, dtype=str),
           "factors": state.factors.astype(np.float32), "trend": state.trend.astype(np.float32)}
    for name in ("today", "conversions"):
        m = getattr(state, name).tocsr()
        out |= {f"{name}_data": m.data.astype(np.float32), f"{name}_indices": m.indices.astype(np.int32),
                f"{name}_indptr": m.indptr.astype(np.int64), f"{name}_shape": np.asarray(m.shape, dtype=np.int64)}
    return out


def state_from_arrays(arrays: dict[str, np.ndarray]) -> LiveState:
    """Rebuild a :class:`LiveState`.

    Raises:
        ValueError: not a live state of this format.
    """
    if "meta_json" not in arrays:
        raise ValueError("not a live state: no meta_json member")
    meta = json.loads(str(arrays["meta_json"][0]))
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a live state of format {FORMAT}: {meta.get('format')!r}")
    def csr(name):
        """A CSR member, its structure checked first: out-of-range indices would crash scipy's C code later."""
        shape = tuple(int(v) for v in arrays[f"{name}_shape"])
        data, indices, indptr = (np.asarray(arrays[f"{name}_{part}"]) for part in ("data", "indices", "indptr"))
        if len(shape) != 2 or min(shape) < 0:
            raise ValueError(f"{name}: bad shape {shape}")
        n_rows, n_cols = shape
        ok = (indptr.ndim == 1 and len(indptr) == n_rows + 1 and indices.ndim == 1 and data.ndim == 1
              and len(indices) == len(data) and (len(indptr) == 0 or (indptr[0] == 0 and indptr[-1] == len(indices)))
              and bool(np.all(np.diff(indptr) >= 0)) and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < n_cols)))
        if not ok:
            raise ValueError(f"{name}: not a valid {n_rows} x {n_cols} CSR matrix (index pointer or column indices out of range)")
        return sp.csr_matrix((data, indices, indptr), shape=shape)
    return LiveState(model_version=int(meta["model_version"]), model_sha256=meta["model_sha256"],
                     day=date.fromisoformat(meta["day"]), as_of=datetime.fromisoformat(meta["as_of"]),
                     data_version=meta["data_version"], drifted=bool(meta["drifted"]),
                     user_ids=arrays["user_ids"].astype(str), today=csr("today"), conversions=csr("conversions"),
                     factors=arrays["factors"], trend=arrays["trend"])


def save_state(state: LiveState, path: Path) -> str:
    """Write ``state`` atomically to ``path`` (``.npz``); return its sha256."""
    import hashlib

    from factory_assets.ml.recsys.artefact import atomic_write_bytes, npz_bytes

    data = npz_bytes(state_arrays(state))
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_state(path: Path) -> LiveState:
    """Read a state written by :func:`save_state` (``allow_pickle=False``).

    Raises:
        FileNotFoundError: no state at ``path``; ValueError: not a live state (not even an ``.npz``, a member
            missing, a CSR structure out of range).
    """
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":  # np.load would call any other bytes "pickled data"
            raise ValueError(f"{path} is not an .npz file")
    with np.load(Path(path), allow_pickle=False) as archive:
        return state_from_arrays({name: archive[name] for name in archive.files})
