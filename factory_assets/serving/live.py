"""The live path in the service: today's state of the champion (``recsys.live.LiveState``), loaded next to it.

The MLOps location's ``live_state`` asset rewrites ``<home>/<source>/live/state.npz`` (``HomeLayout.live_state``)
after each intraday refresh (~15 minutes).  The alias watcher polls that file's ``(mtime_ns, size, inode)`` with the
aliases (:func:`state_stamp`), loads a changed file with ``recsys.live.load_state`` (``allow_pickle=False``) and
keeps it, as a :class:`LiveView`, only when it was built for the champion being served (``model_version`` *and*
``model_sha256``).  A missing file, a state for another champion, or a file that does not load or does not fit the
model (one ERROR line, ``factory_serve_live_state_failures_total``) leaves the service on the nightly scores; what
happened is ``live_detail`` on ``/readyz``.

A request uses the view only while :meth:`LiveView.fits` the champion object it read (one reference each, no lock):
a champion swapped in before its state never borrows the previous one's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory_assets.ml.recsys.live import LiveState
from factory_assets.serving.scorer import LoadedModel, Ranking


def state_stamp(path: Path) -> tuple[int, int, int] | None:
    """A cheap change detector for the state file: ``(mtime_ns, size, inode)`` (the writer replaces the file
    atomically, so a new file is a new inode), None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class LiveView:
    """A :class:`LiveState` checked against one loaded champion, with what its requests need precomputed.

    ``trend``: the state's category trend as float64 ``(n_items,)``, None when it is all zero (then the users not
    active today are served exactly the nightly lists).  With a trend: ``fallback``, the cold-start ranking plus the
    trend; ``rest`` (ranker champions), the shared ranking of the non-candidate items plus the trend.  ``index``:
    user id -> row in the state (one dict lookup per request; ``LiveState.rows`` is the vectorised equivalent).
    ``loaded_at``: UNIX seconds when it was loaded; ``file`` / ``stamp``: where from.
    """

    state: LiveState
    version: int
    sha256: str
    file: str
    stamp: tuple | None
    loaded_at: float
    trend: np.ndarray | None
    fallback: Ranking | None
    rest: Ranking | None
    index: dict[str, int]

    @classmethod
    def build(cls, state: LiveState, champion: LoadedModel, file: str = "", stamp: tuple | None = None) -> "LiveView":
        """The view of ``state`` for ``champion``.

        Raises:
            ValueError: the state was built for another model (version or manifest sha256), or its arrays do not fit
                the champion's users x items (shapes, non-finite values).
        """
        if state.model_version != champion.version or state.model_sha256 != champion.sha256:
            raise ValueError(f"built for v{state.model_version} ({state.model_sha256[:12]}), the champion is "
                             f"v{champion.version} ({champion.sha256[:12]})")
        n, n_items = len(state.user_ids), champion.n_items
        factors = 0 if champion.model.ranker is not None else champion.model.item_factors.shape[1]
        problems = [
            f"{name} has shape {getattr(state, name).shape}, not {want}"
            for name, want in (("today", (n, n_items)), ("conversions", (n, n_items)), ("factors", (n, factors)),
                               ("trend", (n_items,)))
            if getattr(state, name).shape != want
        ]
        if not problems and not all(np.isfinite(a).all() for a in (state.today.data, state.conversions.data,
                                                                     state.factors, state.trend)):
            problems.append("non-finite values")
        if not problems and n and not (np.all(state.user_ids[1:] > state.user_ids[:-1])):
            problems.append("user ids not sorted and unique")
        if problems:
            raise ValueError("does not fit the champion: " + "; ".join(problems))
        trend = state.trend.astype(np.float64) if np.any(state.trend) else None
        fallback = rest = None
        if trend is not None:
            allowed = ~champion.blocked
            fallback = Ranking.of(champion.scores(np.array([-1], dtype=np.int64))[0] + trend, allowed)
            if champion.lists is not None:
                shared = champion.lists.rest
                scores = np.full(n_items, -np.inf)
                scores[shared.items] = shared.scores + trend[shared.items]
                rest = Ranking.of(scores, allowed)
        index = {user: row for row, user in enumerate(state.user_ids.tolist())}
        return cls(state, champion.version, champion.sha256, str(file), stamp, time.time(), trend, fallback, rest, index)

    def fits(self, champion: LoadedModel | None) -> bool:
        """Whether this view was built for ``champion`` (the same version and manifest sha256)."""
        return champion is not None and champion.version == self.version and champion.sha256 == self.sha256

    def describe(self) -> dict:
        """``LiveState.describe()`` (``/readyz``)."""
        return self.state.describe()

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the state's ``as_of`` (how old "today so far" is)."""
        return (time.time() if now is None else now) - self.state.as_of.timestamp()
