"""The recommendation service: FastAPI app, alias watcher, background log writer, Prometheus metrics.

Endpoints (OpenAPI at ``/openapi.json``, browsable at ``/docs`` (Swagger UI) and ``/redoc``; both pages load
their JavaScript, CSS and icon from ``/docs-assets/``, the files the ``fastapi-offline`` package ships, so
they work without internet):

=================================  ===========================================================================
``GET /recommendations/{user_id}``  ``?k=10&exclude_purchased=false`` ->
                                    ``{"user_id", "items": [{"item_id", "score"}], "model_version", "fallback"}``
``POST /recommendations``           ``{"user_ids": [...], "k": 10, "exclude_purchased": false}`` ->
                                    ``{"results": [<one answer per user, as above>], "model_version"}``
``GET /healthz``                    200 while the process runs
``GET /readyz``                     200 only when a verified champion is loaded, else 503
``GET /metrics``                    Prometheus text: requests, latency histogram, model versions, fallbacks
``POST /admin/reload``              re-read the aliases now (bearer token); an unchanged alias is a no-op
``POST /admin/rollback``            ``{"reason", "to_version"?}``: registry rollback, then reload (bearer token)
=================================  ===========================================================================

Validation: a user id is 1-128 printable characters; ``1 <= k <= MAX_K``; a batch holds at most
``MAX_BATCH`` users and its body at most ``MAX_BODY_BYTES``.  Every error answer is JSON
``{"error": <short code>, "detail": <message>}`` with a 4xx status (401 admin auth, 404 unknown route,
405 wrong method, 400 body not JSON, 413 body too large, 422 invalid parameters, 503 not ready).

Cold start: a user id the champion never saw gets the popularity ranking (the model's popularity term alone,
the same fallback the factory evaluates as its baseline) with ``"fallback": true``.

Hot reload: a watcher thread polls ``champion.json`` / ``shadow.json`` (mtime, size and sha256 of the pointer
bytes) every ``poll_interval_s``.  A changed pointer is loaded, verified (manifest and artefact sha256) and
prepared for serving *before* the reference is swapped; a failure is logged and counted
(``factory_serve_reload_failures_total``) and the old model keeps serving.  Preparing a learned-ranker model
means scoring every known user once (:class:`~factory_assets.serving.scorer.RankedLists`, in a niced child
interpreter by default, ``factory_serve_model_load_seconds``), so a request is a lookup and a short merge.
A pointer that still names the loaded manifest (same sha256; e.g. the file rewritten, or ``POST
/admin/reload`` with nothing promoted) is not loaded again: its manifest and artefact are only re-hashed
(:func:`~factory_assets.serving.scorer.verify_pointer`) and the answer is ``"changed": false``.
A champion alias file that disappears while serving is reported, not ignored: one WARNING line when it goes
(and an INFO line when it comes back), ``last_error.champion`` on ``/readyz`` naming the missing file, and
``factory_serve_alias_missing{role="champion"} 1``; the last loaded champion keeps serving meanwhile.  (A
missing *shadow* alias is normal: the shadow was promoted or withdrawn, and is unloaded.)

Logs: every answer is queued for a background thread that (1) scores the shadow model, when one is loaded, on
the same request (never on the response path), (2) writes both lists to ``<home>/<source>/served_log/``
with :func:`factory_assets.ml.served_log.write_log_file` in batches, and (3) writes the champion's lists as
*impression events* into the folder source's landing directory (when configured): one ``view`` event per
shown item, ``event_id = "imp-<request_id>-<position>"``, quantity 1, value 0.  The event schema has no
impression type; ``view`` is the closest (the item was put in front of the user), and the ``imp-`` prefix
lets any consumer tell impressions from organic views.  Impression files are Parquet, written as
``.<name>.part`` and renamed, so the folder source never reads half a file.

Admin calls need ``Authorization: Bearer <FACTORY_ADMIN_TOKEN>`` (compared with :func:`hmac.compare_digest`);
with no token configured every admin call gets 401.  The token is checked for every ``/admin/...`` path before
the request reaches FastAPI (:class:`_AdminGuard`), so a caller without it gets 401 whatever the body: never
400 (malformed JSON), 413 (too large) or 422 (invalid fields), and the body is not even read.
"""

from __future__ import annotations

import hmac
import io
import itertools
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from factory_assets.ml import served_log as serving_log
from factory_assets.ml.recsys.artefact import atomic_write_bytes
from factory_assets.ml import registry
from factory_assets.serving.scorer import (
    AliasPointer,
    ItemFilter,
    LoadedModel,
    ModelHolder,
    ModelLoadError,
    Recommendation,
    alias_stamp,
    load_alias,
    read_pointer,
    verify_pointer,
)
from factory_assets.platform.settings import HomeLayout

log = logging.getLogger("factory.serve")

MAX_K = 1000
MAX_BATCH = 1000
MAX_BODY_BYTES = 256 * 1024
MAX_USER_ID = 128
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
ADMIN_PREFIX = "/admin"
DOCS_ASSETS_URL = "/docs-assets"  # where the Swagger UI / ReDoc files of fastapi-offline are served


@dataclass
class ServiceConfig:
    """Where the service reads its models and writes its logs (see :meth:`from_env`)."""

    home: Path
    source: str = "simulator"
    admin_token: str | None = None
    landing_dir: Path | None = None
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    exclude_purchased: bool = False
    poll_interval_s: float = 1.0
    flush_rows: int = 5000
    flush_interval_s: float = 5.0
    drain_interval_s: float = 0.05  # the log thread wakes this often, not per request (no GIL hand-off per request)
    watch: bool = True
    log_process: bool = True  # write the logs from a forked child process (see LogWriter)
    precompute_process: bool = True  # score a ranker's users in a niced child interpreter (models.RankedLists)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc), repr=False)  # tests fix it

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.home), self.source)

    @classmethod
    def from_env(cls, **overrides) -> "ServiceConfig":
        """``FACTORY_HOME``, ``FACTORY_SOURCE``, ``FACTORY_ADMIN_TOKEN``; landing directory from
        ``FACTORY_SERVE_LANDING`` (or ``FACTORY_SOURCE_PATH`` when the source is ``folder``); business filters
        from ``FACTORY_SERVE_CATALOGUE`` / ``FACTORY_SERVE_EXCLUDED`` (files, one item id per line)."""
        from factory_assets.platform import settings

        source = overrides.get("source") or settings.source_name()  # raises SettingsError for an unknown name
        landing = os.environ.get("FACTORY_SERVE_LANDING") or (
            os.environ.get("FACTORY_SOURCE_PATH") if source == "folder" else None
        )
        values = {
            "home": settings.factory_home(),
            "source": source,
            "admin_token": os.environ.get("FACTORY_ADMIN_TOKEN") or None,
            "landing_dir": Path(landing) if landing else None,
            "item_filter": ItemFilter.from_files(
                os.environ.get("FACTORY_SERVE_CATALOGUE"), os.environ.get("FACTORY_SERVE_EXCLUDED")
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# --------------------------------------------------------------------------------------------- metrics
class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text format (no client library)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.recommendations = 0
        self.fallbacks = 0
        self.reloads = 0
        self.reload_failures = 0
        self.shadow_scored = 0
        self.log_rows = 0
        self.log_errors = 0
        self.alias_missing: dict[str, int] = {registry.CHAMPION: 0}  # 1 while the alias file is gone

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            counts = self.buckets.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds

    def served(self, n: int, fallbacks: int) -> None:
        with self._lock:
            self.recommendations += n
            self.fallbacks += fallbacks

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def set_alias_missing(self, role: str, missing: bool) -> None:
        with self._lock:
            self.alias_missing[role] = int(missing)

    def render(self, holder: ModelHolder) -> str:
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        with self._lock:
            out = ["# HELP factory_serve_requests_total HTTP requests answered.", "# TYPE factory_serve_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                out.append(f'factory_serve_requests_total{{method="{method}",route="{esc(route)}",status="{status}"}} {n}')
            out += ["# HELP factory_serve_request_duration_seconds Request latency.",
                    "# TYPE factory_serve_request_duration_seconds histogram"]
            for route, counts in sorted(self.buckets.items()):
                cum = 0
                for bound, c in zip((*LATENCY_BUCKETS, "+Inf"), counts):
                    cum += c
                    out.append(f'factory_serve_request_duration_seconds_bucket{{route="{esc(route)}",le="{bound}"}} {cum}')
                out.append(f'factory_serve_request_duration_seconds_sum{{route="{esc(route)}"}} {self.latency_sum[route]:.6f}')
                out.append(f'factory_serve_request_duration_seconds_count{{route="{esc(route)}"}} {cum}')
            rate = self.fallbacks / self.recommendations if self.recommendations else 0.0
            out += ["# HELP factory_serve_alias_missing 1 while the role's alias file is missing "
                    "(the last loaded model keeps serving).", "# TYPE factory_serve_alias_missing gauge"]
            out += [f'factory_serve_alias_missing{{role="{role}"}} {n}' for role, n in sorted(self.alias_missing.items())]
            simple = [
                ("recommendations_total", "counter", "Recommendation lists served.", self.recommendations),
                ("fallback_total", "counter", "Lists served with the cold-start fallback.", self.fallbacks),
                ("fallback_rate", "gauge", "fallback_total / recommendations_total.", rate),
                ("reloads_total", "counter", "Models swapped in after verification.", self.reloads),
                ("reload_failures_total", "counter", "Alias changes refused (unverifiable artefact).", self.reload_failures),
                ("shadow_scored_total", "counter", "Requests scored by the shadow model.", self.shadow_scored),
                ("served_log_rows_total", "counter", "Served-log rows written.", self.log_rows),
                ("log_write_errors_total", "counter", "Failed log or impression writes.", self.log_errors),
            ]
        for name, kind, text, value in simple:
            out += [f"# HELP factory_serve_{name} {text}", f"# TYPE factory_serve_{name} {kind}", f"factory_serve_{name} {value}"]
        gauges = (
            ("model_version", "Registry version loaded per role (0: none).", lambda m: m.version),
            ("model_load_seconds", "Seconds spent preparing the loaded model for serving (a ranker's precompute).",
             lambda m: round(m.precompute_s, 6)),
            ("model_precomputed_bytes", "Bytes of precomputed per-user rankings kept for the loaded model.",
             lambda m: m.precompute_bytes),
        )
        for name, text, value in gauges:
            out += [f"# HELP factory_serve_{name} {text}", f"# TYPE factory_serve_{name} gauge"]
            for role in (registry.CHAMPION, registry.SHADOW):
                loaded = getattr(holder, role)
                out.append(f'factory_serve_{name}{{role="{role}"}} {value(loaded) if loaded else 0}')
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- logging
@dataclass(frozen=True)
class _Served:
    request_id: str
    ts: datetime  # timezone-aware, as ``ServiceConfig.clock`` returns it (converted in the log thread)
    lists: list[Recommendation]
    champion: LoadedModel
    shadow: LoadedModel | None
    k: int
    exclude_purchased: bool


def write_impressions(columns: dict, landing_dir: Path) -> Path:
    """Write impression events (event-schema columns) as one Parquet file, atomically (``.name.part``, rename)."""
    frame = pd.DataFrame(columns, columns=["event_id", "user_id", "item_id", "event_type", "ts", "quantity", "value"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    frame = frame.astype({"quantity": "int64", "value": "float64"})
    first = frame["ts"].min()
    name = f"impressions_{first:%Y%m%dT%H%M%S%f}_{uuid.uuid4().hex[:12]}.parquet"
    landing_dir.mkdir(parents=True, exist_ok=True)
    final = landing_dir / name
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(final, buffer.getvalue())  # a hidden .tmp first: the folder source never reads half a file
    return final


LOG_FIELDS = ("request_id", "ts", "user_id", "model_version", "role", "item_id", "position", "score")
IMPRESSION_FIELDS = ("event_id", "user_id", "item_id", "ts")


def write_batch(log_cols: dict, imp_cols: dict, served_dir: Path, landing_dir: Path | None) -> tuple[int, int]:
    """Write one batch (column lists; ``ts`` as int64 ns since the epoch, UTC); return ``(log rows, errors)``."""
    rows = errors = 0
    if log_cols["request_id"]:
        try:
            frame = pd.DataFrame(log_cols)
            frame["ts"] = pd.to_datetime(frame["ts"], unit="ns", utc=True)
            serving_log.write_log_file(frame, served_dir)
            rows = len(frame)
        except Exception:
            log.exception("served-log: writing %d rows failed", len(log_cols["request_id"]))
            errors += 1
    if imp_cols["event_id"] and landing_dir is not None:
        try:
            n = len(imp_cols["event_id"])
            write_impressions({**imp_cols, "ts": pd.to_datetime(imp_cols["ts"], unit="ns", utc=True),
                               "event_type": ["view"] * n, "quantity": [1] * n, "value": [0.0] * n}, landing_dir)
        except Exception:
            log.exception("impressions: writing %d events failed", len(imp_cols["event_id"]))
            errors += 1
    return rows, errors


def _writer_process(jobs, acks, served_dir: Path, landing_dir: Path | None) -> None:
    """Child process: Parquet encoding and validation (pandas holds the GIL) never stall request handling."""
    while True:
        job = jobs.get()
        if job is None:
            return
        token, log_cols, imp_cols = job
        acks.put((token, *write_batch(log_cols, imp_cols, served_dir, landing_dir)))


class LogWriter:
    """Background thread: scores the shadow off the response path, then batches the served log and impressions.

    The thread wakes every ``ServiceConfig.drain_interval_s`` (and on :meth:`flush`) and handles everything
    queued since, rather than waking for each request: a per-request wake-up would hand the GIL to this thread
    in the middle of the next request.  With ``ServiceConfig.log_process`` (the default for ``factory
    serve``) the batches are encoded and written by a forked child process, so pandas/pyarrow work does not
    hold the server's GIL; otherwise in this thread.
    """

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.queue: queue.SimpleQueue[_Served | None] = queue.SimpleQueue()
        self._log = {f: [] for f in LOG_FIELDS}
        self._imp = {f: [] for f in IMPRESSION_FIELDS}
        self._thread = threading.Thread(target=self._run, name="serve-log-writer", daemon=True)
        self._flush_now = threading.Event()
        self._flushed = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._process = None
        self._pending: set[int] = set()
        self._token = 0

    def start(self) -> None:
        if self.config.log_process:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self._jobs, self._acks = ctx.Queue(), ctx.Queue()
            self._process = ctx.Process(
                target=_writer_process, name="serve-log-process", daemon=True,
                args=(self._jobs, self._acks, serving_log.log_directory(self.config.layout.root), self.config.landing_dir),
            )
            self._process.start()
        self._thread.start()

    def submit(self, item: _Served) -> None:
        self.queue.put(item)

    def flush(self, timeout: float = 30.0) -> None:
        """Process everything queued so far and write it (blocks until written; for tests and shutdown)."""
        if not self._thread.is_alive():
            self._drain()
            self._write()
            self._wait_acks(timeout)
            return
        self._flushed.clear()
        self._flush_now.set()
        self._wake.set()
        self._flushed.wait(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.flush()
            self._stopping = True
            self._wake.set()
            self._thread.join(5)
        if self._process is not None:
            self._jobs.put(None)
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
            self._process = None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopping:
            self._wake.wait(min(self.config.drain_interval_s, self.config.flush_interval_s))
            self._wake.clear()
            self._drain()
            self._wait_acks(0)
            due = time.monotonic() - last >= self.config.flush_interval_s
            if self._flush_now.is_set() or due or len(self._log["request_id"]) >= self.config.flush_rows:
                self._write()
                last = time.monotonic()
                if self._flush_now.is_set():
                    self._wait_acks(30.0)
                    self._flush_now.clear()
                    self._flushed.set()

    def _drain(self) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._handle(item)

    def _handle(self, item: _Served) -> None:
        try:
            ts = pd.Timestamp(item.ts).tz_convert("UTC").value  # int64 ns since the epoch
            self._add(item, ts, registry.CHAMPION, item.champion.version, item.lists)
            if item.shadow is not None:
                shadow = item.shadow.recommend([r.user_id for r in item.lists], item.k, item.exclude_purchased)
                self._add(item, ts, registry.SHADOW, item.shadow.version, shadow)
                self.metrics.bump("shadow_scored", len(shadow))
            if self.config.landing_dir is not None:
                imp = self._imp
                for n, rec in enumerate(item.lists):
                    prefix = f"imp-{item.request_id}-{n}" if len(item.lists) > 1 else f"imp-{item.request_id}"
                    for pos, item_id in enumerate(rec.item_ids, start=1):
                        imp["event_id"].append(f"{prefix}-{pos}")
                        imp["user_id"].append(rec.user_id)
                        imp["item_id"].append(item_id)
                        imp["ts"].append(ts)
        except Exception:  # never let one bad item stop the writer
            log.exception("served-log: could not process request %s", item.request_id)
            self.metrics.bump("log_errors")

    def _add(self, item: _Served, ts: int, role: str, version: int, lists: list[Recommendation]) -> None:
        cols = self._log
        for n, rec in enumerate(lists):
            request_id = item.request_id if len(lists) == 1 else f"{item.request_id}-{n}"
            m = len(rec.item_ids)
            cols["request_id"].extend([request_id] * m)
            cols["ts"].extend([ts] * m)
            cols["user_id"].extend([rec.user_id] * m)
            cols["model_version"].extend([version] * m)
            cols["role"].extend([role] * m)
            cols["item_id"].extend(rec.item_ids)
            cols["position"].extend(range(1, m + 1))
            cols["score"].extend(rec.scores)

    def _write(self) -> None:
        log_cols, self._log = self._log, {f: [] for f in LOG_FIELDS}
        imp_cols, self._imp = self._imp, {f: [] for f in IMPRESSION_FIELDS}
        if not log_cols["request_id"] and not imp_cols["event_id"]:
            return
        if self._process is not None:
            self._token += 1
            self._pending.add(self._token)
            self._jobs.put((self._token, log_cols, imp_cols))
            return
        rows, errors = write_batch(log_cols, imp_cols, serving_log.log_directory(self.config.layout.root), self.config.landing_dir)
        self.metrics.bump("log_rows", rows)
        self.metrics.bump("log_errors", errors)

    def _wait_acks(self, timeout: float) -> None:
        """Collect the child's acknowledgements (all pending ones, up to ``timeout`` s, when ``timeout`` > 0)."""
        if self._process is None:
            return
        deadline = time.monotonic() + timeout
        while self._pending:
            try:
                left = deadline - time.monotonic()
                token, rows, errors = self._acks.get(timeout=left) if left > 0 else self._acks.get_nowait()
            except queue.Empty:
                return
            self._pending.discard(token)
            self.metrics.bump("log_rows", rows)
            self.metrics.bump("log_errors", errors)


# --------------------------------------------------------------------------------------------- the watcher
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
        return out

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


# --------------------------------------------------------------------------------------------- the app
class TimingMiddleware:
    """Pure ASGI middleware: per-route request counts and latency (cheaper than ``BaseHTTPMiddleware``)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status[0], time.perf_counter() - started)


class BatchRequest(BaseModel):
    user_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_purchased: bool | None = None


class RollbackRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)
    to_version: int | None = Field(None, ge=1)


class Item(BaseModel):
    item_id: str
    score: float


class RecommendationOut(BaseModel):
    user_id: str
    items: list[Item]
    model_version: int
    fallback: bool


class BatchOut(BaseModel):
    results: list[RecommendationOut]
    model_version: int


def _error(status: int, code: str, detail) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def valid_user_id(user_id: str) -> bool:
    return 1 <= len(user_id) <= MAX_USER_ID and user_id.isprintable()


def admin_refusal(token: str | None, authorization: str) -> str | None:
    """Why an admin call with this ``Authorization`` header value is refused (401), or None when it may go on."""
    scheme, _, given = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    if not token:
        return "the admin API is disabled: the server was started without FACTORY_ADMIN_TOKEN"
    return "admin calls need 'Authorization: Bearer <FACTORY_ADMIN_TOKEN>'"


class Service:
    """The parts of a running service; ``app.state.service`` in the FastAPI app."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.holder = ModelHolder()
        self.metrics = Metrics()
        self.watcher = AliasWatcher(config, self.holder, self.metrics)
        self.writer = LogWriter(config, self.metrics)
        # request ids: a random per-process prefix and a counter (no urandom syscall, which drops the GIL, per request)
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

    def start(self) -> None:
        self.watcher.check(force=True)
        self.writer.start()
        if self.config.watch:
            self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.writer.stop()

    def answer(self, user_ids: list[str], k: int, exclude_purchased: bool | None) -> tuple[LoadedModel, list[Recommendation]]:
        champion = self.holder.champion  # read the reference once: the whole request uses this model
        shadow = self.holder.shadow
        exclude = self.config.exclude_purchased if exclude_purchased is None else exclude_purchased
        lists = champion.recommend(user_ids, k, exclude)
        self.metrics.served(len(lists), sum(r.fallback for r in lists))
        request_id = f"{self._id_prefix}{next(self._id_counter):012x}"  # 32 hex digits, unique per process start
        self.writer.submit(_Served(request_id, self.config.clock(), lists, champion, shadow, k, exclude))
        return champion, lists


def _as_json(rec: Recommendation, version: int) -> dict:
    return {
        "user_id": rec.user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(rec.item_ids, rec.scores)],
        "model_version": version,
        "fallback": rec.fallback,
    }


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app; its lifespan loads the champion, starts the watcher and the log writer, and stops
    them (flushing the logs) on shutdown."""
    from contextlib import asynccontextmanager

    service = Service(config or ServiceConfig.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    # /docs, /redoc: the Swagger UI and ReDoc pages with their files served from DOCS_ASSETS_URL (no CDN);
    # validatorUrl null: Swagger UI must not ask validator.swagger.io about the schema either
    app = FastAPIOffline(title="factory_assets recommendations", version="1", lifespan=lifespan,
                         static_url=DOCS_ASSETS_URL, swagger_ui_parameters={"validatorUrl": None})
    app.state.service = service
    app.add_middleware(TimingMiddleware, metrics=service.metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}
        headers = getattr(exc, "headers", None)
        resp = _error(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail)
        if headers:
            resp.headers.update(headers)
        return resp

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "invalid_json", "the request body is not valid JSON")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return _error(422, "invalid_request", detail)

    def not_ready() -> JSONResponse:
        return _error(503, "not_ready", "no verified champion is loaded")

    @app.get("/recommendations/{user_id}", response_model=RecommendationOut, tags=["recommendations"])
    async def recommend_one(
        user_id: str, k: int = Query(10, ge=1, le=MAX_K), exclude_purchased: bool | None = Query(None)
    ):
        """Top-k for one user; unknown (valid) ids get the popularity fallback with ``fallback: true``."""
        if not valid_user_id(user_id):
            return _error(422, "invalid_user_id", f"a user id is 1-{MAX_USER_ID} printable characters")
        if service.holder.champion is None:
            return not_ready()
        champion, lists = service.answer([user_id], k, exclude_purchased)
        return JSONResponse(_as_json(lists[0], champion.version))

    @app.post("/recommendations", response_model=BatchOut, tags=["recommendations"])
    async def recommend_batch(request: Request, body: BatchRequest):
        """Top-k for up to ``MAX_BATCH`` users in one call (body at most ``MAX_BODY_BYTES``)."""
        bad = [u for u in body.user_ids if not valid_user_id(u)]
        if bad:
            return _error(422, "invalid_user_id", f"{len(bad)} user id(s) are not 1-{MAX_USER_ID} printable characters")
        if service.holder.champion is None:
            return not_ready()
        champion, lists = service.answer(body.user_ids, body.k, body.exclude_purchased)
        return JSONResponse({"results": [_as_json(r, champion.version) for r in lists], "model_version": champion.version})

    @app.get("/healthz", tags=["operations"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz():
        """200 only when a verified champion is loaded."""
        champion, shadow = service.holder.champion, service.holder.shadow
        body = {
            "ready": champion is not None,
            "champion": None if champion is None else {"version": champion.version, "sha256": champion.sha256},
            "shadow": None if shadow is None else {"version": shadow.version, "sha256": shadow.sha256},
            "last_error": service.watcher.last_error,
        }
        return JSONResponse(body, status_code=200 if champion is not None else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics():
        return PlainTextResponse(service.metrics.render(service.holder), media_type="text/plain; version=0.0.4")

    def admin_guard(request: Request) -> None:
        """Route dependency of every admin route, behind :class:`_AdminGuard` (which refuses a request without
        the token before FastAPI parses its body): the same check again, should a route ever be reached
        another way."""
        refusal = admin_refusal(service.config.admin_token, request.headers.get("authorization", ""))
        if refusal is not None:
            raise StarletteHTTPException(401, refusal, headers={"WWW-Authenticate": "Bearer"})

    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(admin_guard)])
    def admin_reload(request: Request):
        """Re-read and verify both aliases now; 409 when the champion alias is refused (old keeps serving)."""
        result = service.watcher.check(force=True)
        status = 409 if result.get(registry.CHAMPION, {}).get("error") else 200
        return JSONResponse({"reload": result}, status_code=status)

    @app.post("/admin/rollback", tags=["admin"], dependencies=[Depends(admin_guard)])
    def admin_rollback(request: Request, body: RollbackRequest):
        """Roll the registry back (previous eligible champion or ``to_version``), then reload."""
        from factory_assets.ml.models_cli import CommandError, rollback_champion

        try:
            result = rollback_champion(service.config.layout, body.reason, "service", body.to_version)
        except CommandError as exc:
            return _error(409, exc.kind, str(exc))
        result["reload"] = service.watcher.check(force=True)
        return JSONResponse(json.loads(json.dumps(result, default=str)))

    return _AdminGuard(_BodyLimit(_FastRecommend(app, service), MAX_BODY_BYTES, service.metrics), app, service)


_RECOMMEND_PREFIX = "/recommendations/"
_RECOMMEND_ROUTE = "/recommendations/{user_id}"


def json_bytes(content) -> bytes:
    """JSON bytes exactly as Starlette's ``JSONResponse`` renders them (UTF-8, compact, no NaN)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


class _FastRecommend:
    """ASGI wrapper answering the common ``GET /recommendations/{user_id}`` itself, byte for byte as the route.

    FastAPI's parameter machinery (dependency solving, pydantic) costs several times what serving a
    precomputed list does.  This layer answers only requests it can validate trivially: a GET whose user id
    passes :func:`valid_user_id`, whose query string holds at most one ``k`` (plain decimal ``1..MAX_K``) and
    one ``exclude_purchased`` (``true`` / ``false``) and nothing else, while a champion is loaded.  Anything
    else (invalid or unusual values, other routes, not ready) goes on to the FastAPI app, so every error answer
    and the OpenAPI schema stay FastAPI's.  What it answers is what the route answers: the same JSON bytes, the
    same ``content-length`` / ``content-type`` headers, and a latency observation under the route
    ``/recommendations/{user_id}``.
    """

    def __init__(self, app: FastAPI, service: "Service") -> None:
        self.app = app
        self.service = service
        self.state = app.state

    def __getattr__(self, name):  # behave like the FastAPI app (openapi, routes, ...)
        return getattr(self.app, name)

    @staticmethod
    def parse(scope) -> tuple[str, int, bool | None] | None:
        """``(user_id, k, exclude_purchased)`` of a plainly valid request, None for anything else."""
        if scope["method"] != "GET" or scope.get("root_path") or not scope["path"].startswith(_RECOMMEND_PREFIX):
            return None
        user_id = scope["path"][len(_RECOMMEND_PREFIX):]
        if "/" in user_id or not valid_user_id(user_id):
            return None
        k, exclude, seen = 10, None, set()
        query = scope.get("query_string", b"")
        for part in query.split(b"&") if query else ():
            key, eq, value = part.partition(b"=")
            if key in seen or not eq:
                return None
            seen.add(key)
            if key == b"k" and value.isdigit() and len(value) <= len(str(MAX_K)) and not value.startswith(b"0"):
                k = int(value)
            elif key == b"exclude_purchased" and value in (b"true", b"false"):
                exclude = value == b"true"
            else:
                return None
        return (user_id, k, exclude) if k <= MAX_K else None

    async def __call__(self, scope, receive, send):
        parsed = self.parse(scope) if scope["type"] == "http" else None
        if parsed is None or self.service.holder.champion is None:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        try:
            champion, lists = self.service.answer([parsed[0]], parsed[1], parsed[2])
            body = json_bytes(_as_json(lists[0], champion.version))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            status = 200
        finally:
            self.service.metrics.observe("GET", _RECOMMEND_ROUTE, status, time.perf_counter() - started)


class _AdminGuard:
    """ASGI wrapper answering 401 to every ``/admin`` or ``/admin/...`` request without the bearer token.

    It runs before anything else looks at the request: FastAPI parses a JSON body (400 for malformed JSON)
    before it solves a route's dependencies, and :class:`_BodyLimit` reads the body to bound it (413), so a
    check in the route would let a caller without the token learn about its body.  Here the body is never
    read; unknown admin paths get 401 as well (404 only with the token).  A refusal is counted in the request
    metrics under the admin route it matches (``unmatched`` for an unknown path), as the route would be.
    """

    def __init__(self, app, fastapi_app: FastAPI, service: "Service") -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.service = service
        self.state = app.state

    def __getattr__(self, name):  # behave like the FastAPI app (openapi, routes, ...)
        return getattr(self.app, name)

    @staticmethod
    def is_admin(scope) -> bool:
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.is_admin(scope):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        refusal = admin_refusal(self.service.config.admin_token, header.decode("latin-1"))
        if refusal is None:
            return await self.app(scope, receive, send)
        body = json_bytes({"error": "unauthorized", "detail": refusal})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
        route = next((r.path for r in self.fastapi_app.router.routes if r.matches(scope)[0] is not Match.NONE), "unmatched")
        self.service.metrics.observe(scope["method"], route, 401, time.perf_counter() - started)


class _BodyLimit:
    """ASGI wrapper refusing request bodies over ``limit`` bytes with 413 (declared or streamed)."""

    def __init__(self, app: FastAPI, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.state = app.state

    def __getattr__(self, name):  # behave like the FastAPI app (openapi, routes, ...)
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    return await self._too_large(scope, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        # read the whole (bounded) body first, so a chunked upload cannot exceed the limit either
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await self._too_large(scope, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, send):
        self.metrics.observe(scope["method"], "body_too_large", 413, 0.0)
        body = json.dumps({"error": "payload_too_large", "detail": f"request bodies are limited to {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def serve(host: str = "127.0.0.1", port: int = 8000, config: ServiceConfig | None = None, log_level: str = "info") -> int:
    """Run the service with uvicorn until interrupted (``factory serve``)."""
    import uvicorn

    config = config or ServiceConfig.from_env()
    if not config.layout.aliases.exists():
        log.warning("no champion alias under %s (nothing trained for source %r in this home?): the service answers "
                    "503 until one is promoted", config.layout.aliases, config.source)
    if not config.admin_token:
        log.warning("FACTORY_ADMIN_TOKEN is not set: every admin call is refused with 401")
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    return 0

