"""What the service serves: verified models behind one atomically swapped reference, and their top-k lists.

A :class:`LoadedModel` is a :class:`~factory_assets.ml.recsys.model.BlendModel` loaded through
:func:`~factory_assets.ml.recsys.artefact.load_manifest_model` (manifest and artefact sha256 verified, never
unpickled) plus the arrays scoring needs, precomputed once.  :class:`ModelHolder` keeps the champion and the
shadow as plain attributes: a request reads the reference once and keeps using that object, so a swap
(one attribute assignment, atomic in CPython) never changes the model under a request in flight, and no lock
is taken on the request path.

Scoring (:meth:`LoadedModel.recommend`) reproduces :meth:`BlendModel.scores` exactly, then applies, *after*
scoring, the post-processing filters: optional exclusion of the items the user already converted on (the
model's ``history``), and the business filters of :class:`ItemFilter` (items outside the catalogue, banned
items).  Filtered items never appear; a list can therefore be shorter than ``k``.  An unknown user (cold
start) gets the documented fallback: ``BlendModel.scores`` of row ``-1`` (the popularity term), ``fallback =
True``.  Ties always break towards the lower item index.

A learned-ranker model (``BlendModel.ranker``) is too slow to score per request (candidate generation and
~20 features per (user, item)), so it is scored once, when the model is loaded and before it is swapped in
(:class:`RankedLists`): every known user's row of :meth:`BlendModel.scores`, in the ranker's own batches of
:data:`~factory_assets.ml.recsys.ranker.BATCH` rows, is split into the items whose score differs from the score
every non-candidate gets (``log1p(popularity) - NON_CANDIDATE_PENALTY``; in practice the ranker's candidates,
~100-200 per user) and the rest, which share one global order.  A request is then a lookup, the exclusions,
and a merge of two short sorted arrays: bit-identical to the scores ``BlendModel.scores(np.arange(n_users))``
gives, for any ``k`` (a list longer than the user's candidates continues with the non-candidates, best first).

The live path (:mod:`factory_assets.serving.live`, ``recsys.live``): given a
:class:`~factory_assets.serving.live.LiveView` of the champion, :meth:`LoadedModel.recommend` scores the users active
today with ``recsys.live.live_scores`` (a dense row each: the folded-in vector for a blend, the ranker's own scores
for a ranker, plus today's weights and, when set, the category trend); everyone else is served exactly as without
it, plus the trend when it is non-zero (a ranker's precomputed lists stay a lookup and a merge: the trend is added
to the user's own candidates, re-sorted, and to one shared non-candidate ranking built when the state is loaded).
Without a live view, or for users not active today while the trend is zero, the lists are bit-identical to the
nightly ones.

Cost (one core, the small simulated shop: 400 users x 120 items, a ranker champion, 248 users active by noon;
measured once with a throw-away script, not a test): a request of a user not active today, no trend, ~5 us as
without a state (one dict lookup more, then the nightly code); with a trend ~20-35 us (the user's candidates
re-sorted and merged); a user active today ~0.5-0.75 ms on a ranker champion, whose precomputed lists are left for
``BlendModel.scores`` of one row (candidate generation and ~20 features per candidate: it grows with the
candidates and the catalogue), and on a blend champion what a dense row always costs (``O(n_items x factors)``)
plus the float64 copy of the item factors ``recsys.live.live_scores`` makes per call.  Only users with an event
today pay it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from factory_assets.ml.recsys.artefact import ArtefactIntegrityError, load_manifest_model, read_manifest, sha256_file
from factory_assets.ml.recsys.model import BlendModel
from factory_assets.ml import registry

if TYPE_CHECKING:
    from factory_assets.serving.live import LiveView

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """An alias could not be turned into a verified model (missing, unreadable, or failing its digests)."""


@dataclass(frozen=True)
class ItemFilter:
    """Business filters applied after scoring.

    Args:
        catalogue: when given, only these item ids may be recommended (out-of-catalogue items are removed).
        excluded: item ids never recommended (e.g. recalled products).
    """

    catalogue: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()

    @classmethod
    def from_files(cls, catalogue: str | Path | None = None, excluded: str | Path | None = None) -> "ItemFilter":
        """Read one item id per line (blank lines and ``#`` comments skipped)."""

        def read(path):
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            return frozenset(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))

        return cls(read(catalogue) if catalogue else None, read(excluded) if excluded else frozenset())

    def mask(self, item_ids: np.ndarray) -> np.ndarray:
        """Boolean ``(n_items,)``: True where the item must not be shown."""
        out = np.zeros(len(item_ids), dtype=bool)
        if self.catalogue is not None:
            out |= ~np.isin(item_ids, np.asarray(sorted(self.catalogue), dtype=str))
        if self.excluded:
            out |= np.isin(item_ids, np.asarray(sorted(self.excluded), dtype=str))
        return out


@dataclass(frozen=True)
class Ranking:
    """One ranking of item positions, best first (score descending, ties towards the lower position).

    ``items`` int64 ``(n,)`` item positions (blocked items and non-finite scores left out), ``scores`` float64
    ``(n,)`` their scores; ``best`` is ``scores[0]`` (``-inf`` when empty).
    """

    items: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, allowed: np.ndarray) -> "Ranking":
        """Rank the ``allowed`` (bool ``(n_items,)``) entries of ``scores`` (float64 ``(n_items,)``)."""
        pos = np.flatnonzero(allowed & np.isfinite(scores))
        order = np.argsort(-scores[pos], kind="stable")  # positions are ascending: ties keep the lower one first
        return cls(pos[order], scores[pos][order])

    @property
    def best(self) -> float:
        return float(self.scores[0]) if len(self.scores) else -np.inf


@dataclass(frozen=True)
class RankedLists:
    """A ranker model's scores for every known user, precomputed: a per-user ranking plus one shared ranking.

    For user row ``u``, ``items[indptr[u]:indptr[u + 1]]`` (int32 item positions) and ``scores[...]`` (float64)
    are the items whose score differs from ``default`` (the score the model gives any non-candidate item),
    ordered as :class:`Ranking`; every other allowed item has score ``default[item]``, in the order of
    ``rest`` (a :class:`Ranking` of ``default``).  Blocked items appear in neither.

    Memory: 12 bytes per (user, candidate) pair, plus ``O(n_items)``.  ``seconds``: wall time the build took
    (for :meth:`build_out_of_process`, including the child interpreter's start).
    """

    indptr: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    rest: Ranking
    seconds: float = 0.0

    @classmethod
    def build(cls, model: BlendModel, blocked: np.ndarray) -> "RankedLists":
        """Score every known user of a ranker ``model`` (``blocked``: bool ``(n_items,)``, items never shown).

        Raises:
            ValueError: a known user got a non-finite score (a broken model is refused, not served).
        """
        from factory_assets.ml.recsys.ranker import BATCH, NON_CANDIDATE_PENALTY

        started = time.perf_counter()
        n_users = len(model.user_ids)
        default = np.log1p(model.popularity.astype(np.float64)) - NON_CANDIDATE_PENALTY  # as ranker_scores
        allowed = ~blocked
        counts = np.zeros(n_users, dtype=np.int64)
        item_parts, score_parts = [], []
        for start in range(0, n_users, BATCH):  # the ranker's own batches: the same BLAS calls as scores(all)
            rows = np.arange(start, min(start + BATCH, n_users))
            block = model.scores(rows)
            if not np.isfinite(block).all():
                raise ValueError(f"the ranker gives non-finite scores to users {start}..{rows[-1]}")
            own = (block != default) & allowed
            for j in range(len(rows)):
                pos = np.flatnonzero(own[j])
                val = block[j, pos]
                order = np.argsort(-val, kind="stable")
                item_parts.append(pos[order].astype(np.int32))
                score_parts.append(val[order])
                counts[start + j] = len(pos)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        items = np.concatenate(item_parts) if item_parts else np.zeros(0, np.int32)
        scores = np.concatenate(score_parts) if score_parts else np.zeros(0, np.float64)
        return cls(indptr, items, scores, Ranking.of(default, allowed), time.perf_counter() - started)

    @classmethod
    def build_out_of_process(cls, manifest_path: str, manifest_sha256: str, blocked: np.ndarray, n_users: int,
                             timeout_s: float = 900.0) -> "RankedLists":
        """:meth:`build` in a child interpreter at lower CPU priority (``nice`` +10), for hot reloads.

        The serving process keeps its GIL and most of the CPU while thousands of users are scored, and the
        precompute's transient memory (dense feature blocks) is the child's, not the server's.  The child
        loads the manifest itself (sha256 verified again), writes the arrays as an ``.npz`` in a private
        temporary directory, and this process reads them back with ``allow_pickle=False`` and checks them
        (:meth:`from_arrays`).  Same library, same BLAS settings (the environment is inherited): the same
        scores, bit for bit.

        Raises:
            ValueError: the child failed (its stderr's tail is in the message), timed out, or wrote arrays
                that do not fit a model of ``n_users`` users and ``len(blocked)`` items.
        """
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="factory-precompute-") as tmp:
            blocked_path, out_path = Path(tmp) / "blocked.npy", Path(tmp) / "lists.npz"
            np.save(blocked_path, np.asarray(blocked, dtype=bool), allow_pickle=False)
            package_root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
            cmd = [sys.executable, "-m", "factory_assets.serving.scorer", str(manifest_path), manifest_sha256,
                   str(blocked_path), str(out_path)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
            except subprocess.TimeoutExpired as exc:
                raise ValueError(f"the precompute did not finish in {timeout_s:.0f} s") from exc
            if proc.returncode != 0:
                raise ValueError(f"the precompute failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            with np.load(out_path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        return cls.from_arrays(arrays, n_users, len(blocked), time.perf_counter() - started)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays (the inverse of :meth:`from_arrays`)."""
        return {"indptr": self.indptr, "items": self.items, "scores": self.scores,
                "rest_items": self.rest.items, "rest_scores": self.rest.scores}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_users: int, n_items: int, seconds: float = 0.0) -> "RankedLists":
        """Rebuild from :meth:`arrays`, checking they fit ``n_users`` x ``n_items``.

        Raises:
            ValueError: missing arrays, wrong dtypes or shapes, positions out of range, non-finite scores.
        """
        try:
            indptr, items = arrays["indptr"].astype(np.int64), arrays["items"]
            scores, rest_items, rest_scores = arrays["scores"], arrays["rest_items"], arrays["rest_scores"]
        except KeyError as exc:
            raise ValueError(f"precomputed lists lack {exc}") from exc
        ok = (indptr.shape == (n_users + 1,) and indptr[0] == 0 and np.all(np.diff(indptr) >= 0)
              and indptr[-1] == len(items) == len(scores) and len(rest_items) == len(rest_scores)
              and items.dtype.kind == "i" and rest_items.dtype.kind == "i"
              and scores.dtype == np.float64 and rest_scores.dtype == np.float64
              and all(len(a) == 0 or (a.min() >= 0 and a.max() < n_items) for a in (items, rest_items))
              and np.isfinite(scores).all() and np.isfinite(rest_scores).all())
        if not ok:
            raise ValueError(f"precomputed lists do not fit a model of {n_users} users x {n_items} items")
        return cls(indptr, items.astype(np.int32), scores, Ranking(rest_items.astype(np.int64), rest_scores), seconds)

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.items.nbytes + self.scores.nbytes + self.rest.items.nbytes + self.rest.scores.nbytes


def merge_top(own_items: np.ndarray, own_scores: np.ndarray, rest: Ranking, skip: np.ndarray, n_items: int,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one user's own sorted (items, scores) and ``rest`` without the ``skip`` positions.

    ``skip`` (int ``(s,)``) must hold every item in the user's own list (their score is not ``rest``'s) and any
    item excluded for this request.  Returns (item positions int64 ``(<= k,)``, scores float64), best first,
    ties towards the lower position: the same list as a stable sort of the user's full score row.
    """
    if len(own_items) >= k and own_scores[k - 1] > rest.best:  # the usual case: candidates beat the rest
        return own_items[:k].astype(np.int64), own_scores[:k]
    take = rest.items[: k + len(skip)]
    if len(skip):
        skipped = np.zeros(n_items, dtype=bool)
        skipped[skip] = True
        keep = ~skipped[take]
        pad_items, pad_scores = take[keep][:k], rest.scores[: len(take)][keep][:k]
    else:
        pad_items, pad_scores = take[:k], rest.scores[:k]
    items = np.concatenate([own_items[:k].astype(np.int64), pad_items])
    scores = np.concatenate([own_scores[:k], pad_scores])
    order = np.lexsort((items, -scores))[:k]
    return items[order], scores[order]


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    item_ids: list[str]
    scores: list[float]
    fallback: bool
    live: bool = False  # scored with today's events (the user was active today: recsys.live); not in the JSON


@dataclass
class LoadedModel:
    """A verified model plus its precomputed scoring arrays (treat as immutable once built).

    Building one is the expensive part of a (re)load and happens before the model is swapped in: for a
    ranker model every known user is scored (:class:`RankedLists`, in this thread unless ``lists`` is
    given, e.g. built out of process with the same ``item_filter``; ``precompute_s`` seconds in all,
    ``precompute_bytes`` bytes kept), for a blend the factor matrices are laid out for one dot product.

    Raises:
        ValueError: the model gives a known user a non-finite score (refused rather than served), or
            ``lists`` do not fit the model.
    """

    model: BlendModel
    version: int
    sha256: str
    manifest_path: str
    role: str = registry.CHAMPION
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    lists: RankedLists | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        started = time.perf_counter()
        m = self.model
        self.item_ids = np.asarray(m.item_ids, dtype=str)
        self._item_list = self.item_ids.tolist()
        self._user_index = {u: i for i, u in enumerate(np.asarray(m.user_ids, dtype=str).tolist())}
        pop = m.popularity.astype(np.float64)
        pop_norm = pop / pop.max() if len(pop) and pop.max() > 0 else np.zeros_like(pop)
        self._pop_term = m.params.popularity_weight * pop_norm
        self._user_factors = np.ascontiguousarray(m.user_factors, dtype=np.float64)
        self._item_factors_t = np.ascontiguousarray(m.item_factors.T, dtype=np.float64)
        self._history = m.history.tocsr()
        self._blocked = self.item_filter.mask(self.item_ids)
        self._fallback = Ranking.of(self.scores(np.array([-1]))[0], ~self._blocked)  # cold start, as scores(-1)
        given = self.lists
        if m.ranker is None:
            if given is not None:
                raise ValueError("precomputed lists are only for ranker models")
        elif given is None:
            self.lists = RankedLists.build(m, self._blocked)
        elif len(given.indptr) != len(self._user_index) + 1 or not np.array_equal(
                np.sort(given.rest.items), np.flatnonzero(~self._blocked)):  # built for another item filter
            raise ValueError("the precomputed lists do not fit this model and item filter")
        self.precompute_s = time.perf_counter() - started + (given.seconds if given is not None else 0.0)
        self.precompute_bytes = self.lists.nbytes if self.lists is not None else 0
        if self.lists is not None:
            log.info("ranker scores of %d users precomputed in %.2f s (%.1f MiB, %.0f items per user)",
                     len(self._user_index), self.precompute_s, self.precompute_bytes / 2**20,
                     len(self.lists.items) / max(len(self._user_index), 1))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def blocked(self) -> np.ndarray:
        """Bool ``(n_items,)``: the items the business filters never show."""
        return self._blocked

    def row(self, user_id: str) -> int:
        return self._user_index.get(user_id, -1)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Exactly :meth:`BlendModel.scores` (float64 ``(len(rows), n_items)``), scored now (the reference).

        A learned-ranker model is scored by :meth:`BlendModel.scores` itself: the service must rank exactly as
        the model that was evaluated and promoted (:meth:`recommend` serves the same scores, precomputed).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self.model.ranker is not None:
            return self.model.scores(rows)
        out = np.tile(self._pop_term, (len(rows), 1))
        known = np.flatnonzero(rows >= 0)
        if len(known):
            r = rows[known]
            als = np.clip(self._user_factors[r] @ self._item_factors_t, 0, None)
            als_max = als.max(axis=1, keepdims=True)
            als_norm = np.divide(als, als_max, out=np.zeros_like(als), where=als_max > 0)
            if len(r) == 1:  # one user: slicing the CSR arrays beats scipy's fancy indexing
                hist = np.zeros_like(als)
                a, b = self._history.indptr[r[0]], self._history.indptr[r[0] + 1]
                hist[0, self._history.indices[a:b]] = np.log1p(self._history.data[a:b].astype(np.float64))
            else:
                hist = np.log1p(self._history[r].toarray().astype(np.float64))
            out[known] += hist + self.model.als_weight * als_norm
        return self.model.add_regime_terms(out, rows)  # a drift regime's trend and recent terms (recsys.regime)

    def recommend(self, user_ids: list[str], k: int, exclude_purchased: bool = False,
                  live: "LiveView | None" = None) -> list[Recommendation]:
        """Top-``k`` (item, score) lists per user, best first; filters applied after scoring.

        Ties break towards the lower item index (as :func:`factory_assets.ml.recsys.metrics.top_k`).  Filtered
        items never appear, so a list may be shorter than ``k``; every score is finite.  Unknown users get the
        cold-start ranking; a ranker model's known users their precomputed lists (:class:`RankedLists`); a
        blend model's known users are scored now, in one vectorised call.  With ``live`` (a view built for this
        model: the caller checks :meth:`LiveView.fits`), today's additions (:meth:`_recommend_live`).

        Raises:
            ValueError: ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.n_items)
        rows = [self._user_index.get(u, -1) for u in user_ids]
        if live is not None:
            live_rows = [live.index.get(u, -1) for u in user_ids]
            if live.trend is not None or max(live_rows, default=-1) >= 0:
                return self._recommend_live(user_ids, rows, live_rows, k, exclude_purchased, live)
            # nobody here was active today and there is no trend: exactly the nightly path below
        found: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)
        if self.lists is None:
            dense = [j for j, r in enumerate(rows) if r >= 0]
            if dense:
                for j, top in zip(dense, self._top_dense(np.asarray([rows[j] for j in dense], dtype=np.int64), k, exclude_purchased)):
                    found[j] = top
        items = self._item_list
        out: list[Recommendation] = []
        for j, (user, r) in enumerate(zip(user_ids, rows)):
            idx, val = found[j] if found[j] is not None else self._top_precomputed(r, k, exclude_purchased)
            out.append(Recommendation(user, [items[i] for i in idx.tolist()], val.tolist(), r < 0))
        return out

    def _recommend_live(self, user_ids: list[str], rows: list[int], live_rows: list[int], k: int,
                        exclude_purchased: bool, live: "LiveView") -> list[Recommendation]:
        """:meth:`recommend` with today's additions (module docstring): users with an event today get a dense
        ``recsys.live.live_scores`` row (and their conversions of today count as purchased for
        ``exclude_purchased``); the others their usual list, plus the trend when it is non-zero."""
        from factory_assets.ml.recsys.live import live_scores

        state, trend = live.state, live.trend
        rows_arr, live_rows = np.asarray(rows, dtype=np.int64), np.asarray(live_rows, dtype=np.int64)
        found: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rows)
        active = np.flatnonzero(live_rows >= 0)
        if len(active):
            scores = live_scores(self.model, rows_arr[active], state, live_rows[active])
            bought = ([self._bought_live(rows_arr[j], state.conversions, live_rows[j]) for j in active]
                      if exclude_purchased else None)
            for j, top in zip(active.tolist(), self._top_of_scores(scores, bought, k)):
                found[j] = top
        if self.lists is None:  # a blend: the known users not active today are scored now, as without the state
            dense = np.flatnonzero((live_rows < 0) & (rows_arr >= 0))
            if len(dense):
                if trend is None:
                    tops = self._top_dense(rows_arr[dense], k, exclude_purchased)
                else:
                    scores = self.scores(rows_arr[dense])
                    scores += trend[None, :]
                    bought = [self._bought(u) for u in rows_arr[dense]] if exclude_purchased else None
                    tops = self._top_of_scores(scores, bought, k)
                for j, top in zip(dense.tolist(), tops):
                    found[j] = top
        items = self._item_list
        out: list[Recommendation] = []
        for j, (user, r) in enumerate(zip(user_ids, rows)):
            idx, val = found[j] if found[j] is not None else self._top_precomputed(r, k, exclude_purchased, live)
            is_live = bool(live_rows[j] >= 0)
            out.append(Recommendation(user, [items[i] for i in idx.tolist()], val.tolist(), r < 0 and not is_live, is_live))
        return out

    def _bought(self, row: int) -> np.ndarray:
        h = self._history
        a, b = h.indptr[row], h.indptr[row + 1]
        return h.indices[a:b][h.data[a:b] > 0]

    def _bought_live(self, row: int, conversions, live_row: int) -> np.ndarray:
        """Items converted on in the window (the model's history, ``row >= 0``) or today (``conversions``: the
        live state's CSR, its row ``live_row``)."""
        a, b = conversions.indptr[live_row], conversions.indptr[live_row + 1]
        today = conversions.indices[a:b][conversions.data[a:b] > 0].astype(np.int64)
        return today if row < 0 else np.union1d(self._bought(row), today)

    def _top_precomputed(self, row: int, k: int, exclude_purchased: bool,
                         live: "LiveView | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (positions, scores) of an unknown user (``row < 0``) or a ranker model's known user; with a
        ``live`` view whose trend is non-zero, the trend added (its own rankings: :class:`LiveView`)."""
        trended = live is not None and live.trend is not None
        if row < 0:
            fallback = live.fallback if trended else self._fallback
            return fallback.items[:k], fallback.scores[:k]
        lists = self.lists
        a, b = lists.indptr[row], lists.indptr[row + 1]
        own_items, own_scores = lists.items[a:b], lists.scores[a:b]
        rest = lists.rest
        if trended:  # every score moves by its item's trend: re-sort the user's own, merge with the trended rest
            own_scores = own_scores + live.trend[own_items]
            order = np.lexsort((own_items, -own_scores))
            own_items, own_scores, rest = own_items[order], own_scores[order], live.rest
        skip = own_items
        if exclude_purchased:
            bought = self._bought(row)
            if len(bought):
                hit = np.zeros(self.n_items, dtype=bool)
                hit[bought] = True
                keep = ~hit[own_items]
                own_items, own_scores = own_items[keep], own_scores[keep]
                skip = np.concatenate([skip, bought])
        return merge_top(own_items, own_scores, rest, skip, self.n_items, k)

    def _top_dense(self, rows: np.ndarray, k: int, exclude_purchased: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-``k`` (positions, scores) per known row, scoring the full rows now (blend models)."""
        return self._top_of_scores(self.scores(rows), [self._bought(u) for u in rows] if exclude_purchased else None, k)

    def _top_of_scores(self, scores: np.ndarray, bought: list[np.ndarray] | None,
                       k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-``k`` (positions, scores) of each row of ``scores`` (float64 ``(n, n_items)``, changed in place):
        blocked items and each row's ``bought`` positions (when given) left out."""
        scores[:, self._blocked] = -np.inf
        if bought is not None:
            for j, positions in enumerate(bought):
                scores[j, positions] = -np.inf
        if k < self.n_items:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(self.n_items), scores.shape)
        part = np.sort(part, axis=1)  # by item index, so the stable sort below breaks ties towards it
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx, val = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
        n = np.isfinite(val).sum(axis=1)  # -inf (filtered) sort last
        return [(idx[j, : n[j]], val[j, : n[j]]) for j in range(len(scores))]


@dataclass(frozen=True)
class AliasPointer:
    """What an alias file says: the registry ``version`` and the manifest (``manifest`` path, its ``sha256``)."""

    alias: str
    file: Path
    version: int
    manifest: str
    sha256: str


def read_pointer(aliases_dir: Path, alias: str = registry.CHAMPION) -> AliasPointer | None:
    """The pointer an alias file holds (no manifest or artefact is opened), or None when the file does not exist.

    Raises:
        ModelLoadError: the alias file is unreadable or incomplete.
    """
    path = registry.alias_path(Path(aliases_dir), alias)
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
        return AliasPointer(alias, path, int(pointer["version"]), str(pointer["path"]), str(pointer["sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{alias} alias {path} is unreadable: {exc}") from exc


def verify_pointer(pointer: AliasPointer) -> None:
    """Check the manifest and its served artefact against their sha256 without loading the model.

    The cheap half of :func:`load_alias` (two file hashes, no arrays read, nothing precomputed): what a reload
    of an alias that still names the loaded manifest does to make sure the files were not changed since.

    Raises:
        ModelLoadError: the manifest or the artefact is missing or fails its sha256 (same message as
            :func:`load_alias`).
    """
    try:
        entry = read_manifest(pointer.manifest, pointer.sha256)["artefacts"]["served"]
        artefact = Path(pointer.manifest).parent / entry["file"]
        actual = sha256_file(artefact)
        if actual != entry["sha256"]:
            raise ArtefactIntegrityError(f"{artefact}: sha256 {actual} does not match the expected {entry['sha256']}")
    except (ArtefactIntegrityError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{pointer.alias} v{pointer.version} ({pointer.manifest}) failed verification: {exc}") from exc


def load_alias(aliases_dir: Path, alias: str = registry.CHAMPION, item_filter: ItemFilter | None = None,
               out_of_process: bool = False) -> LoadedModel | None:
    """The verified model an alias names, or None when the alias file does not exist.

    Verifies, then builds the :class:`LoadedModel` (a ranker's per-user precompute: seconds for thousands of
    users; in a niced child interpreter with ``out_of_process``, :meth:`RankedLists.build_out_of_process`);
    call it off the event loop once serving, and swap the result in only when it returns.

    Raises:
        ModelLoadError: the alias is unreadable or incomplete, or the manifest/artefact is missing or fails
            its sha256 (tampered, corrupted).
    """
    pointer = read_pointer(aliases_dir, alias)
    if pointer is None:
        return None
    version, manifest, digest = pointer.version, pointer.manifest, pointer.sha256
    try:
        model = load_manifest_model(manifest, "served", digest)
    except (ArtefactIntegrityError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{alias} v{version} ({manifest}) failed verification: {exc}") from exc
    item_filter = item_filter or ItemFilter()
    try:
        lists = None
        if out_of_process and model.ranker is not None:
            blocked = item_filter.mask(np.asarray(model.item_ids, dtype=str))
            lists = RankedLists.build_out_of_process(manifest, digest, blocked, len(model.user_ids))
        return LoadedModel(model, version, digest, manifest, alias, item_filter, lists)
    except ValueError as exc:
        raise ModelLoadError(f"{alias} v{version} ({manifest}) cannot be served: {exc}") from exc


def alias_stamp(aliases_dir: Path, alias: str) -> tuple | None:
    """A cheap change detector for an alias file: ``(mtime_ns, size, sha256 of the bytes)``, None if absent."""
    path = registry.alias_path(Path(aliases_dir), alias)
    try:
        data = path.read_bytes()
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, hashlib.sha256(data).hexdigest())


class ModelHolder:
    """The champion and the shadow, each one reference swapped whole (no lock on the request path), and the live
    view of today (:class:`~factory_assets.serving.live.LiveView`, None without one), used only while it
    :meth:`fits <factory_assets.serving.live.LiveView.fits>` the champion a request read."""

    def __init__(self) -> None:
        self.champion: LoadedModel | None = None
        self.shadow: LoadedModel | None = None
        self.live: LiveView | None = None

    def live_for(self, champion: LoadedModel | None) -> "LiveView | None":
        """The live view when it was built for ``champion`` (version and manifest sha256), else None."""
        live = self.live  # read once
        return live if live is not None and live.fits(champion) else None

    def swap(self, role: str, loaded: LoadedModel | None) -> None:
        setattr(self, role, loaded)


def _precompute_main(argv: list[str]) -> int:
    """Child side of :meth:`RankedLists.build_out_of_process`: ``MANIFEST SHA256 BLOCKED.npy OUT.npz``."""
    manifest, digest, blocked_path, out_path = argv
    try:
        os.nice(10)
    except OSError:
        pass
    model = load_manifest_model(manifest, "served", digest)
    blocked = np.load(blocked_path, allow_pickle=False)
    if blocked.shape != (len(model.item_ids),):
        raise SystemExit(f"blocked mask of shape {blocked.shape} for {len(model.item_ids)} items")
    np.savez(out_path, **RankedLists.build(model, blocked).arrays())
    return 0


if __name__ == "__main__":
    raise SystemExit(_precompute_main(sys.argv[1:]))
