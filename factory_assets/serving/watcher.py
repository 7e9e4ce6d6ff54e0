"""Hot reload: :class:`AliasWatcher` polls the champion and shadow aliases and swaps in verified models.

A watcher thread polls ``champion.json`` / ``shadow.json`` (mtime, size and sha256 of the pointer bytes) every
``poll_interval_s``.  A changed pointer is loaded, verified (manifest and artefact sha256) and prepared for serving
*before* the reference is swapped; a failure is logged and counted (``factory_serve_reload_failures_total``) and
the old model keeps serving.  Preparing a learned-ranker model means scoring every known user once
(:class:`~factory_assets.serving.scorer.RankedLists`, in a niced child interpreter by default,
``factory_serve_model_load_seconds``), so a request is a lookup and a short merge.  A pointer that still names
the loaded manifest (same sha256; e.g. the file rewritten, or ``POST /admin/reload`` with nothing promoted) is
not loaded again: its manifest and artefact are only re-hashed
(:func:`~factory_assets.serving.scorer.verify_pointer`) and the answer is ``"changed": false``.

A champion alias file that disappears while serving is reported, not ignored: one WARNING line when it goes (and
an INFO line when it comes back), ``last_error.champion`` on ``/readyz`` naming the missing file, and
``factory_serve_alias_missing{role="champion"} 1``; the last loaded champion keeps serving meanwhile.  (A missing
*shadow* alias is normal: the shadow was promoted or withdrawn, and is unloaded.)

After the aliases, each check looks at the live state file (``HomeLayout.live_state``, :mod:`factory_assets.serving.live`)
when its ``(mtime_ns, size, inode)`` or the champion changed: it is loaded and kept (``ModelHolder.live``) only when
it was built for the champion being served; a state for another champion is dropped with one INFO line, a broken
one with one ERROR line (``factory_serve_live_state_failures_total``), and the nightly scores keep serving.
``live_detail`` says why no state is in use (``/readyz``).  The live check never changes what :meth:`check` returns.
"""

from __future__ import annotations

import logging
import threading

from factory_assets.ml import registry
from factory_assets.ml.recsys.live import load_state
from factory_assets.serving.config import ServiceConfig
from factory_assets.serving.live import LiveView, state_stamp
from factory_assets.serving.metrics import Metrics
from factory_assets.serving.scorer import (
    AliasPointer,
    LoadedModel,
    ModelHolder,
    ModelLoadError,
    alias_stamp,
    load_alias,
    read_pointer,
    verify_pointer,
)

log = logging.getLogger("factory.serve")


class AliasWatcher:
    """Polls the alias files and swaps in verified models; a refused change leaves the old model serving.

    ``last_error[role]``: why the role's alias is not what is served (refused, or the champion's file gone),
    None when it is; shown by ``/readyz``.
    """

    def __init__(self, config: ServiceConfig, holder: ModelHolder, metrics: Metrics) -> None:
        self.config = config
        self.holder = holder
        self.metrics = metrics
        self._stamps: dict[str, tuple | None] = {}
        self.last_error: dict[str, str | None] = {registry.CHAMPION: None, registry.SHADOW: None}
        self._missing = False  # the champion's alias file is gone (reported once per change)
        self._live_key: tuple | None = None  # (state file stamp, champion sha256) last acted on
        self.live_detail: str | None = None  # why no live state is in use (None: one is, or there is no file)
        self._lock = threading.Lock()  # serialises checks (watcher thread vs /admin/reload), not requests
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serve-alias-watcher", daemon=True)

    def check(self, force: bool = False) -> dict:
        """Look at each alias whose file changed (every alias when ``force``); return what happened per role.

        Per role: ``changed`` (a model was swapped in or the shadow unloaded), ``version`` (the one serving
        now), ``previous_version`` on a swap, ``detail`` when the alias still names the loaded manifest
        (nothing was loaded), ``error`` when the alias was refused or the champion's file is gone.
        """
        out = {}
        with self._lock:
            for role in (registry.CHAMPION, registry.SHADOW):
                stamp = alias_stamp(self.config.layout.aliases, role)
                if not force and role in self._stamps and stamp == self._stamps[role]:
                    continue
                self._stamps[role] = stamp
                out[role] = self._reload(role)
            self._check_live(force)
        return out

    def _check_live(self, force: bool = False) -> None:
        """Load the live state file when it or the champion changed (every time when ``force``); keep it only
        for the champion being served.  Never raises: a broken file is logged once and the nightly scores serve."""
        path = self.config.layout.live_state
        stamp = state_stamp(path)
        champion = self.holder.champion
        key = (stamp, champion.sha256 if champion is not None else None)
        if not force and key == self._live_key:
            return
        self._live_key = key
        if stamp is None or champion is None:
            self.holder.live = None
            self.live_detail = None if stamp is None else "no champion loaded"
            return
        try:
            state = load_state(path)
            other = state.model_version != champion.version or state.model_sha256 != champion.sha256
            view = None if other else LiveView.build(state, champion, str(path), stamp)
        except Exception as exc:  # noqa: BLE001 -- an optional file: whatever is wrong with it, keep serving
            self.holder.live = None
            self.live_detail = f"live state {path} is unusable ({type(exc).__name__}: {exc}); serving the nightly scores"
            log.error("%s", " ".join(self.live_detail.split()))  # one line
            self.metrics.bump("live_failures")
            return
        if view is None:  # normal for a moment after a promotion, while the new champion's state is built
            self.holder.live = None
            self.live_detail = (f"live state {path} ignored: built for v{state.model_version} "
                                f"({state.model_sha256[:12]}), the champion is v{champion.version} ({champion.sha256[:12]})")
            log.info("%s", self.live_detail)
            return
        self.holder.live = view
        self.live_detail = None
        described = view.describe()
        log.info("live state for v%s as of %s: %d users active today, %d trend items", view.version,
                 described["as_of"], described["users"], described["trend_items"])

    def _reload(self, role: str) -> dict:
        """Act on the role's alias as it is now: load a changed pointer, re-verify an unchanged one."""
        current = getattr(self.holder, role)
        try:
            pointer = read_pointer(self.config.layout.aliases, role)
            if role == registry.CHAMPION and pointer is not None:
                self._champion_alias_present()
            if pointer is not None and current is not None and pointer.sha256 == current.sha256:
                return self._unchanged(role, current, pointer)
            loaded = None if pointer is None else load_alias(
                self.config.layout.aliases, role, self.config.item_filter, self.config.precompute_process)
        except ModelLoadError as exc:
            if role == registry.CHAMPION:
                self._champion_alias_present()  # an alias file is there (read_pointer returns None when not)
            log.error("refusing the new %s: %s; %s keeps serving", role, exc,
                      f"v{current.version}" if current else "nothing")
            self.metrics.bump("reload_failures")
            self.last_error[role] = str(exc)
            return {"changed": False, "error": str(exc), "version": current.version if current else None}
        if loaded is None and role == registry.CHAMPION:
            return self._champion_alias_missing(current)
        self.last_error[role] = None
        if loaded is None:
            if role == registry.SHADOW and current is not None:
                self.holder.swap(role, None)  # the shadow was promoted or withdrawn
                return {"changed": True, "version": None}
            return {"changed": False, "version": current.version if current else None}
        if current is not None and current.sha256 == loaded.sha256:
            return {"changed": False, "version": current.version}
        self.holder.swap(role, loaded)
        self.metrics.bump("reloads")
        log.info("%s now v%s (%s)", role, loaded.version, loaded.sha256[:12])
        return {"changed": True, "version": loaded.version, "previous_version": current.version if current else None}

    def _unchanged(self, role: str, current: LoadedModel, pointer: AliasPointer) -> dict:
        """The alias names the manifest already loaded: re-hash its files, load and precompute nothing."""
        try:
            verify_pointer(pointer)
        except ModelLoadError as exc:
            error = f"{exc}; v{current.version} keeps serving (verified when it was loaded)"
            log.error("the files of the serving %s changed on disk: %s", role, error)
            self.metrics.bump("reload_failures")
            self.last_error[role] = error
            return {"changed": False, "error": error, "version": current.version}
        self.last_error[role] = None
        return {"changed": False, "version": current.version,
                "detail": f"the alias still names manifest {pointer.sha256[:12]} (artefact verified): nothing reloaded"}

    def _champion_alias_missing(self, current: LoadedModel | None) -> dict:
        """The champion's alias file does not exist: keep what is served, and say so (logged once per change)."""
        path = registry.alias_path(self.config.layout.aliases, registry.CHAMPION)
        if current is not None:
            error = f"champion alias {path} is gone; still serving the last loaded model v{current.version} ({current.sha256[:12]})"
        else:
            error = f"champion alias {path} does not exist; nothing is served (503) until a champion is promoted"
        if not self._missing:
            self._missing = True
            self.metrics.set_alias_missing(registry.CHAMPION, True)
            log.warning("%s", error)
        self.last_error[registry.CHAMPION] = error
        return {"changed": False, "version": current.version if current else None, "error": error}

    def _champion_alias_present(self) -> None:
        if self._missing:
            self._missing = False
            self.metrics.set_alias_missing(registry.CHAMPION, False)
            log.info("champion alias %s is back", registry.alias_path(self.config.layout.aliases, registry.CHAMPION))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.check()
            except Exception:
                log.exception("alias watcher: check failed")
