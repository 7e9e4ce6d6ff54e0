"""What the service serves: verified models behind one atomically swapped reference, and their top-k lists.

A :class:`LoadedModel` is a :class:`~factory_assets.recsys.model.BlendModel` loaded through
:func:`~factory_assets.recsys.artefact.load_manifest_model` (manifest and artefact sha256 verified, never
unpickled) plus the arrays scoring needs, precomputed once.  :class:`ModelHolder` keeps the champion and the
shadow as plain attributes: a request reads the reference once and keeps using that object, so a swap
(one attribute assignment, atomic in CPython) never changes the model under a request in flight, and no lock
is taken on the request path.

Scoring (:meth:`LoadedModel.recommend`) reproduces :meth:`BlendModel.scores` exactly, then applies, *after*
scoring, the post-processing filters: optional exclusion of the items the user already converted on (the
model's ``history``), and the business filters of :class:`ItemFilter` (items outside the catalogue, banned
items).  Filtered items get ``-inf`` and never appear; a list can therefore be shorter than ``k``.  An unknown
user (cold start) gets the documented fallback: the popularity term alone, ``fallback = True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from factory_assets.recsys.artefact import ArtefactIntegrityError, load_manifest_model
from factory_assets.recsys.model import BlendModel
from factory_assets.registry import registry

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
class Recommendation:
    user_id: str
    item_ids: list[str]
    scores: list[float]
    fallback: bool


@dataclass
class LoadedModel:
    """A verified model plus its precomputed scoring arrays (treat as immutable once built)."""

    model: BlendModel
    version: int
    sha256: str
    manifest_path: str
    role: str = registry.CHAMPION
    item_filter: ItemFilter = field(default_factory=ItemFilter)

    def __post_init__(self) -> None:
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
        self._pop_filtered = np.where(self._blocked, -np.inf, self._pop_term)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def row(self, user_id: str) -> int:
        return self._user_index.get(user_id, -1)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Exactly :meth:`BlendModel.scores` (float64 ``(len(rows), n_items)``), from precomputed arrays.

        A learned-ranker model is scored by :meth:`BlendModel.scores` itself: the service must rank exactly as
        the model that was evaluated and promoted.
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
        return out

    def recommend(self, user_ids: list[str], k: int, exclude_purchased: bool = False) -> list[Recommendation]:
        """Top-``k`` (item, score) lists per user, best first; filters applied after scoring.

        Ties break towards the lower item index (as :func:`factory_assets.recsys.metrics.top_k`).  Filtered
        items never appear, so a list may be shorter than ``k``; every score is finite.
        """
        rows = np.fromiter((self.row(u) for u in user_ids), dtype=np.int64, count=len(user_ids))
        scores = self.scores(rows)
        scores[:, self._blocked] = -np.inf
        if exclude_purchased:
            h = self._history
            for j, u in enumerate(rows):
                if u >= 0:
                    a, b = h.indptr[u], h.indptr[u + 1]
                    bought = h.indices[a:b][h.data[a:b] > 0]
                    scores[j, bought] = -np.inf
        k = min(k, self.n_items)
        if k < self.n_items:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(self.n_items), scores.shape)
        part = np.sort(part, axis=1)  # by item index, so the stable sort below breaks ties towards it
        top = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx, val = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)
        finite = np.isfinite(val)
        items, idx_rows, val_rows = self._item_list, idx.tolist(), val.tolist()
        out: list[Recommendation] = []
        for j, user in enumerate(user_ids):
            n = int(finite[j].sum())  # -inf (filtered) sort last
            out.append(Recommendation(user, [items[i] for i in idx_rows[j][:n]], val_rows[j][:n], bool(rows[j] < 0)))
        return out


def load_alias(aliases_dir: Path, alias: str = registry.CHAMPION, item_filter: ItemFilter | None = None) -> LoadedModel | None:
    """The verified model an alias names, or None when the alias file does not exist.

    Raises:
        ModelLoadError: the alias is unreadable or incomplete, or the manifest/artefact is missing or fails
            its sha256 (tampered, corrupted).
    """
    path = registry.alias_path(Path(aliases_dir), alias)
    if not path.exists():
        return None
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
        version, manifest, digest = int(pointer["version"]), str(pointer["path"]), str(pointer["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{alias} alias {path} is unreadable: {exc}") from exc
    try:
        model = load_manifest_model(manifest, "served", digest)
    except (ArtefactIntegrityError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{alias} v{version} ({manifest}) failed verification: {exc}") from exc
    return LoadedModel(model, version, digest, manifest, alias, item_filter or ItemFilter())


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
    """The champion and the shadow, each one reference swapped whole (no lock on the request path)."""

    def __init__(self) -> None:
        self.champion: LoadedModel | None = None
        self.shadow: LoadedModel | None = None

    def swap(self, role: str, loaded: LoadedModel | None) -> None:
        setattr(self, role, loaded)
